//! Sealed objects: how an encrypted repository stores a chunk, an index
//! or a manifest.
//!
//! ```text
//! chunk:             "LBSE" | version u8 = 2 | kind u8 | 0u16 | key id (16) | SIV (24) | AES-256-CTR(inner)
//! index or manifest: the same 48 bytes | envelope length u32 LE | envelope | AES-256-CTR(inner)
//! ```
//!
//! The object is named by the BLAKE3 of these bytes, so whoever holds no
//! key (a repository server, an S3 reader) still checks every object
//! against its name. The SIV is a keyed hash of the first 24 bytes (magic
//! to key id), the envelope's BLAKE3 and the plaintext's BLAKE3
//! (`crypto::Keys::siv`): equal plaintexts seal to equal objects (dedup
//! holds), and an opened object's plaintext must hash back to its SIV,
//! which authenticates plaintext and envelope and binds kind and key.
//!
//! The envelope is what a repository server must read without the key to
//! check an upload: the objects an index or a manifest references (see
//! `Index::envelope`, `manifest::Refs`). It is in the clear; a key holder
//! checks it against the sealed content when it opens the object. `inner` is what an unencrypted repository stores (a
//! chunk's `LBCK` encoding, an index's or manifest's bytes); a chunk's
//! plaintext is its raw bytes, checked after decompressing.

use std::sync::Arc;

use crate::crypto::{self, KeyId, Keys, Siv};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"LBSE";
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 48;
/// Bytes a sealed chunk adds to its inner bytes (a document adds its
/// envelope and its length too).
pub const OVERHEAD: usize = HEADER_LEN;
const HEAD_LEN: usize = 24;
/// What the SIV binds besides the plaintext: the head and the envelope's hash.
type Bound = [u8; HEAD_LEN + 32];

fn bound(head: &[u8], envelope: &[u8]) -> Bound {
    let mut b = [0u8; HEAD_LEN + 32];
    b[..HEAD_LEN].copy_from_slice(&head[..HEAD_LEN]);
    b[HEAD_LEN..].copy_from_slice(blake3::hash(envelope).as_bytes());
    b
}

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

fn head(id: &KeyId, kind: Kind) -> [u8; HEAD_LEN] {
    let mut h = [0u8; HEAD_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[5] = kind as u8;
    h[8..].copy_from_slice(id);
    h
}

/// Seals `inner`, whose plaintext hashes to `plain_hash`, into `out`,
/// which is `OVERHEAD` bytes longer than `inner` (a worker's reusable,
/// page-aligned buffer; see `buf`).
pub fn seal_to(
    keys: &Keys,
    kind: Kind,
    plain_hash: &[u8; 32],
    inner: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if out.len() != OVERHEAD + inner.len() {
        return Err(Error::Internal("a sealing buffer of the wrong size".into()));
    }
    if kind != Kind::Chunk {
        return Err(Error::Internal(
            "only chunks are sealed without an envelope".into(),
        ));
    }
    let head = head(keys.id(), kind);
    let siv = keys.siv(&bound(&head, &[]), plain_hash);
    out[..HEAD_LEN].copy_from_slice(&head);
    out[HEAD_LEN..HEADER_LEN].copy_from_slice(&siv);
    keys.apply_to(&siv, inner, &mut out[HEADER_LEN..])
}

pub fn seal(keys: &Keys, kind: Kind, plain_hash: &[u8; 32], inner: &[u8]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; OVERHEAD + inner.len()];
    seal_to(keys, kind, plain_hash, inner, &mut out)?;
    Ok(out)
}

/// An index or manifest as the repository stores it: sealed with its
/// envelope when it has keys (`envelope` is called only then), as is
/// otherwise.
pub fn seal_doc(
    keys: Option<&Keys>,
    kind: Kind,
    envelope: impl FnOnce() -> Vec<u8>,
    plain: Vec<u8>,
) -> Result<Vec<u8>> {
    let Some(keys) = keys else {
        return Ok(plain);
    };
    let envelope = envelope();
    let head = head(keys.id(), kind);
    let siv = keys.siv(&bound(&head, &envelope), blake3::hash(&plain).as_bytes());
    let at = HEADER_LEN + 4 + envelope.len();
    let mut out = Vec::with_capacity(at + plain.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&siv);
    out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    out.extend_from_slice(&envelope);
    out.resize(at + plain.len(), 0);
    keys.apply_to(&siv, &plain, &mut out[at..])?;
    Ok(out)
}

/// Where a sealed object's ciphertext starts, and its envelope.
fn split(kind: Kind, data: &[u8]) -> std::result::Result<(usize, &[u8]), String> {
    if kind == Kind::Chunk {
        return Ok((HEADER_LEN, &[]));
    }
    let len_at = &data
        .get(HEADER_LEN..HEADER_LEN + 4)
        .ok_or("truncated before its envelope")?;
    let len = u32::from_le_bytes([len_at[0], len_at[1], len_at[2], len_at[3]]) as usize;
    let start = HEADER_LEN + 4;
    let envelope = data
        .get(start..start.saturating_add(len))
        .ok_or_else(|| format!("its envelope claims {len} bytes, more than the object holds"))?;
    Ok((start + len, envelope))
}

/// A sealed index's or manifest's envelope, for a reader without the key.
/// Checks the header first. The envelope is only as good as the object's
/// name: authenticated for a key holder, unchecked content for others.
pub fn envelope(kind: Kind, data: &[u8]) -> std::result::Result<&[u8], String> {
    check_header(kind, data)?;
    split(kind, data).map(|(_, e)| e)
}

/// The header's checks, for a reader without the key (a server): the
/// object is a sealed object of this kind. Returns its key id.
pub fn check_header(kind: Kind, data: &[u8]) -> std::result::Result<KeyId, String> {
    if data.len() < OVERHEAD || !is_sealed(data) {
        return Err(format!("not a sealed object ({} bytes)", data.len()));
    }
    match data[4] {
        VERSION => {}
        1 => {
            return Err(
                "sealed-object version 1 was written by a development build of lifeboat and is not readable: make the repository again".into(),
            )
        }
        v => return Err(format!("unknown sealed-object version {v} (a newer lifeboat?)")),
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

/// An opened object's SIV: what its decrypted plaintext must hash to.
/// Until `matches` says yes, the decrypted bytes are unauthenticated.
pub struct Opened {
    keys: Arc<Keys>,
    bound: Bound,
    siv: Siv,
}

impl Opened {
    /// Whether the plaintext (hashing to `plain_hash`) is the one the
    /// object was sealed from (a comparison that takes the same time
    /// wherever the first difference is).
    pub fn matches(&self, plain_hash: &[u8; 32]) -> bool {
        let want = self.keys.siv(&self.bound, plain_hash);
        want.iter()
            .zip(self.siv.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Decrypts a sealed object whose bytes were already checked against its
/// name into `out`. `what`/`name` name it in errors. The caller checks
/// the plaintext with `Opened::matches` before it trusts a byte of it.
pub fn open_into(
    kind: Kind,
    what: &'static str,
    name: &str,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<Opened> {
    let key_id = check_header(kind, data).map_err(|why| Error::corrupt(what, name, why))?;
    let keys = crypto::unlocked(&key_id).ok_or_else(|| {
        Error::Locked(format!(
            "{what} {name} (sealed with key {})",
            &hex::encode(key_id)[..8]
        ))
    })?;
    let (at, envelope) = split(kind, data).map_err(|why| Error::corrupt(what, name, why))?;
    let mut siv = [0u8; 24];
    siv.copy_from_slice(&data[HEAD_LEN..HEADER_LEN]);
    out.resize(data.len() - at, 0);
    keys.apply_to(&siv, &data[at..], out)?;
    Ok(Opened {
        keys,
        bound: bound(data, envelope),
        siv,
    })
}

/// The error for a plaintext that does not match its object's SIV.
pub fn tampered(what: &'static str, name: &str) -> Error {
    Error::corrupt(
        what,
        name,
        "it fails authentication: its bytes were changed after it was sealed, or it was sealed for another kind of object",
    )
}

/// Opens a sealed index or manifest and checks its plaintext.
pub fn open_doc(kind: Kind, what: &'static str, name: &str, data: &[u8]) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    let o = open_into(kind, what, name, data, &mut plain)?;
    if !o.matches(blake3::hash(&plain).as_bytes()) {
        return Err(tampered(what, name));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn sealed_objects_open_only_with_their_key_and_kind() {
        let keys = crypto::unlock(&MasterKey::generate());
        let env = || b"refs".to_vec();
        let s = seal_doc(Some(&keys), Kind::Index, env, b"index bytes".to_vec()).unwrap();
        assert!(is_sealed(&s));
        assert_eq!(
            s,
            seal_doc(Some(&keys), Kind::Index, env, b"index bytes".to_vec()).unwrap()
        );
        assert_eq!(envelope(Kind::Index, &s).unwrap(), b"refs");
        // The envelope is authenticated: changed, the object fails.
        let mut forged = s.clone();
        forged[HEADER_LEN + 4] ^= 1;
        let e = open_doc(Kind::Index, "index", "x", &forged)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fails authentication"), "{e}");
        let mut long = s.clone();
        long[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(envelope(Kind::Index, &long).is_err());
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
