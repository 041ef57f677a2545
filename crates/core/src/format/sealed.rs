//! Sealed objects: how an encrypted repository stores a chunk, an index
//! or a manifest.
//!
//! ```text
//! "LBSE" | version u8 = 1 | kind u8 | 0u16 | key id (16) | nonce (24) | XChaCha20-Poly1305(inner) with its tag
//! ```
//!
//! The object is named by the BLAKE3 of these bytes, so whoever holds no
//! key (a repository server, an S3 reader) still checks every object
//! against its name. The nonce is a keyed hash of the plaintext
//! (`crypto::Keys::nonce`): equal plaintexts seal to equal objects (dedup
//! holds), and an opened object's plaintext must hash back to its nonce
//! (SIV-style), which binds the content to the name. The first 24 bytes
//! (magic to key id) are the AEAD's associated data: kind and key cannot
//! be swapped. `inner` is what an unencrypted repository stores (a
//! chunk's `LBCK` encoding, an index's or manifest's bytes).

use std::sync::Arc;

use crate::crypto::{self, KeyId, Keys};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"LBSE";
pub const HEADER_LEN: usize = 48;
/// Bytes a sealed object adds to its inner bytes.
pub const OVERHEAD: usize = HEADER_LEN + 16;
const AAD_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Chunk = 1,
    Index = 2,
    Manifest = 3,
}

pub fn is_sealed(data: &[u8]) -> bool {
    data.len() >= 4 && &data[..4] == MAGIC
}

/// Seals `inner`, whose plaintext hashes to `plain_hash`.
pub fn seal(keys: &Keys, kind: Kind, plain_hash: &[u8; 32], inner: &[u8]) -> Result<Vec<u8>> {
    let nonce = keys.nonce(kind as u8, plain_hash);
    let mut out = Vec::with_capacity(OVERHEAD + inner.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, kind as u8, 0, 0]);
    out.extend_from_slice(keys.id());
    out.extend_from_slice(&nonce);
    let ct = keys.encrypt(&nonce, &out[..AAD_LEN], inner)?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// `plain` as the repository stores it: sealed when it has keys, as is
/// otherwise.
pub fn seal_if(keys: Option<&Keys>, kind: Kind, plain: Vec<u8>) -> Result<Vec<u8>> {
    match keys {
        Some(k) => seal(k, kind, blake3::hash(&plain).as_bytes(), &plain),
        None => Ok(plain),
    }
}

/// The header's checks, for a reader without the key (a server): the
/// object is a sealed object of this kind. Returns its key id.
pub fn check_header(kind: Kind, data: &[u8]) -> std::result::Result<KeyId, String> {
    if data.len() < OVERHEAD || !is_sealed(data) {
        return Err(format!("not a sealed object ({} bytes)", data.len()));
    }
    if data[4] != 1 {
        return Err(format!("unknown sealed-object version {}", data[4]));
    }
    if data[5] != kind as u8 {
        return Err(format!(
            "sealed as kind {} where kind {} was expected",
            data[5], kind as u8
        ));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&data[8..24]);
    Ok(id)
}

/// An opened object: its inner bytes, and what checks its plaintext.
pub struct Opened {
    pub inner: Vec<u8>,
    keys: Arc<Keys>,
    nonce: [u8; 24],
    kind: Kind,
}

impl Opened {
    /// Whether the plaintext (hashing to `plain_hash`) is the one the
    /// object was sealed from.
    pub fn matches(&self, plain_hash: &[u8; 32]) -> bool {
        self.keys.nonce(self.kind as u8, plain_hash) == self.nonce
    }
}

/// Opens a sealed object whose bytes were already checked against its
/// name. `what`/`name` name it in errors.
pub fn open(kind: Kind, what: &'static str, name: &str, data: &[u8]) -> Result<Opened> {
    let key_id = check_header(kind, data).map_err(|why| Error::corrupt(what, name, why))?;
    let keys = crypto::unlocked(&key_id).ok_or_else(|| {
        Error::Locked(format!(
            "{what} {name} (sealed with key {})",
            &hex::encode(key_id)[..8]
        ))
    })?;
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&data[AAD_LEN..HEADER_LEN]);
    let inner = keys
        .decrypt(&nonce, &data[..AAD_LEN], &data[HEADER_LEN..])
        .ok_or_else(|| {
            Error::corrupt(
                what,
                name,
                "it fails authentication: its bytes were changed after it was sealed",
            )
        })?;
    Ok(Opened {
        inner,
        keys,
        nonce,
        kind,
    })
}

/// Opens a sealed index or manifest and checks its plaintext.
pub fn open_doc(kind: Kind, what: &'static str, name: &str, data: &[u8]) -> Result<Vec<u8>> {
    let o = open(kind, what, name, data)?;
    if !o.matches(blake3::hash(&o.inner).as_bytes()) {
        return Err(Error::corrupt(
            what,
            name,
            "its plaintext does not match its nonce",
        ));
    }
    Ok(o.inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn sealed_objects_open_only_with_their_key_and_kind() {
        let keys = crypto::unlock(&MasterKey::generate());
        let s = seal_if(Some(&keys), Kind::Index, b"index bytes".to_vec()).unwrap();
        assert!(is_sealed(&s));
        assert_eq!(
            s,
            seal_if(Some(&keys), Kind::Index, b"index bytes".to_vec()).unwrap()
        );
        assert_eq!(
            open_doc(Kind::Index, "index", "x", &s).unwrap(),
            b"index bytes"
        );
        assert!(open_doc(Kind::Manifest, "manifest", "x", &s).is_err());
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        let e = open_doc(Kind::Index, "index", "x", &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fails authentication"), "{e}");
        // A key this process never unlocked.
        let other = MasterKey::generate();
        let mut foreign = s.clone();
        foreign[8..24].copy_from_slice(&other.key_id());
        assert!(matches!(
            open_doc(Kind::Index, "index", "x", &foreign),
            Err(Error::Locked(_))
        ));
    }
}
