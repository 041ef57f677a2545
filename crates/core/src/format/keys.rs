//! Object keys shared by every store, their size limits, and verified
//! objects. A key from a URL, a listing or a remote is parsed here before
//! it is used; nothing else becomes a path. Bytes reach a store only as a
//! [`Verified`] object, which can only be made by checking them against
//! their key, so no store can be handed bytes that do not hash to their name.

use std::fmt;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::repo_config::{RepoConfig, CONFIG_FILE};
use crate::format::{chunk, index, Id, Index, Manifest, ManifestKey};

/// Where a chunk lives in a repository (relative key).
pub fn chunk_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("chunks/{}/{}", &h[..2], h)
}

/// Where an index lives in a repository (relative key).
pub fn index_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("indexes/{}/{}", &h[..2], h)
}

/// The largest repository config and manifest accepted. Both are small JSON
/// documents; the bound only stops a hostile peer or a damaged file.
pub const MAX_CONFIG_BYTES: u64 = 64 << 10;
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    Config,
    Chunk(Id),
    Index(Id),
    Manifest(ManifestKey),
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl ObjectKey {
    pub fn parse(key: &str) -> Result<ObjectKey> {
        if key == CONFIG_FILE {
            return Ok(ObjectKey::Config);
        }
        if key.starts_with("manifests/") {
            return ManifestKey::parse(key).map(ObjectKey::Manifest);
        }
        let bad = || Error::BadInput(format!("not an object key: {key:?}"));
        let mut parts = key.split('/');
        let (kind, fan, hex) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(f), Some(h), None) => (k, f, h),
            _ => return Err(bad()),
        };
        let id = Id::parse(hex).map_err(|_| bad())?;
        if fan != &hex[..2] {
            return Err(bad());
        }
        match kind {
            "chunks" => Ok(ObjectKey::Chunk(id)),
            "indexes" => Ok(ObjectKey::Index(id)),
            _ => Err(bad()),
        }
    }

    pub fn key(&self) -> String {
        match self {
            ObjectKey::Config => CONFIG_FILE.to_string(),
            ObjectKey::Chunk(id) => chunk_key(id),
            ObjectKey::Index(id) => index_key(id),
            ObjectKey::Manifest(k) => k.object_key(),
        }
    }

    /// What kind of object, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectKey::Config => "repository config",
            ObjectKey::Chunk(_) => "chunk",
            ObjectKey::Index(_) => "index",
            ObjectKey::Manifest(_) => "manifest",
        }
    }

    /// The most bytes an object of this kind may hold as stored. Every
    /// reader checks this before it reads or buffers an object.
    pub fn max_size(&self) -> u64 {
        match self {
            ObjectKey::Config => MAX_CONFIG_BYTES,
            ObjectKey::Chunk(_) => {
                (super::sealed::OVERHEAD + chunk::HEADER_LEN + chunk::MAX_CHUNK) as u64
            }
            ObjectKey::Index(_) => index::MAX_INDEX_BYTES,
            ObjectKey::Manifest(_) => MAX_MANIFEST_BYTES,
        }
    }

    /// The error for an object over its limit.
    pub fn too_large(&self, size: u64, hint: &'static str) -> Error {
        Error::TooLarge {
            what: format!("{} {}", self.kind(), self),
            size,
            limit: self.max_size(),
            hint,
        }
    }

    /// What errors call the object: its id (the config: its file name).
    pub fn name(&self) -> String {
        match self {
            ObjectKey::Config => CONFIG_FILE.to_string(),
            ObjectKey::Chunk(id) | ObjectKey::Index(id) => id.to_hex(),
            ObjectKey::Manifest(k) => k.id.to_hex(),
        }
    }

    /// The error for an object that is not there.
    pub fn missing(&self) -> Error {
        Error::MissingObject {
            kind: self.kind(),
            id: self.name(),
        }
    }
}

/// Allowed list prefixes: the three object families, optionally narrowed
/// to a VM or a VM's volume for manifests.
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = match prefix {
        "chunks/" | "indexes/" | "manifests/" => true,
        p if p.starts_with("manifests/") && p.ends_with('/') => {
            let inner = &p["manifests/".len()..p.len() - 1];
            let parts: Vec<&str> = inner.split('/').collect();
            parts.len() <= 2 && parts.iter().all(|n| crate::names::is_valid_name(n))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::BadInput(format!(
            "invalid list prefix {prefix:?}: use chunks/, indexes/, manifests/ or manifests/VM/[VOLUME/]"
        )))
    }
}

/// An object whose bytes were checked against its key: a config that
/// parses, a chunk that decodes and hashes to its id, an index or manifest
/// whose bytes hash to its id and parse. Stores take only these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    key: ObjectKey,
    data: Bytes,
}

impl Verified {
    /// Checks `data` against `key`. Decoding a chunk costs CPU: call it off
    /// the async threads for chunks (`check_blocking`).
    pub fn check(key: ObjectKey, data: Bytes) -> Result<Verified> {
        if data.len() as u64 > key.max_size() {
            return Err(key.too_large(data.len() as u64, "refusing the object"));
        }
        if super::sealed::is_sealed(&data) && key != ObjectKey::Config {
            check_sealed(&key, &data)?;
            return Ok(Verified { key, data });
        }
        match &key {
            ObjectKey::Config => {
                RepoConfig::parse(std::path::Path::new(CONFIG_FILE), &data)?;
            }
            ObjectKey::Chunk(id) => {
                chunk::decode(id, &data)?;
            }
            ObjectKey::Index(id) => {
                Index::from_bytes(Some(id), &data)?;
            }
            ObjectKey::Manifest(k) => {
                Manifest::from_bytes(k, &data)?;
            }
        }
        Ok(Verified { key, data })
    }

    /// `check` on tokio's blocking pool (chunk decoding is CPU work).
    pub async fn check_blocking(key: ObjectKey, data: Bytes) -> Result<Verified> {
        tokio::task::spawn_blocking(move || Verified::check(key, data))
            .await
            .map_err(|e| Error::Internal(format!("verification task failed: {e}")))?
    }

    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// A sealed object: its bytes hash to its name and its header is one of
/// its kind. A reader holding the key opens it too (a full check); one
/// that does not (a server) has checked all it can, which is enough to
/// refuse wrong bytes.
fn check_sealed(key: &ObjectKey, data: &[u8]) -> Result<()> {
    use super::sealed::{self, Kind};
    let (kind, id) = match key {
        ObjectKey::Chunk(id) => (Kind::Chunk, *id),
        ObjectKey::Index(id) => (Kind::Index, *id),
        ObjectKey::Manifest(k) => (Kind::Manifest, k.id),
        ObjectKey::Config => return Ok(()),
    };
    let key_id = sealed::check_header(kind, data)
        .map_err(|why| Error::corrupt(key.kind(), key.name(), why))?;
    if crate::crypto::unlocked(&key_id).is_some() {
        // The readers check the name against the bytes, then open.
        match key {
            ObjectKey::Chunk(id) => drop(chunk::decode(id, data)?),
            ObjectKey::Index(id) => drop(Index::from_bytes(Some(id), data)?),
            ObjectKey::Manifest(k) => drop(Manifest::from_bytes(k, data)?),
            ObjectKey::Config => {}
        }
        return Ok(());
    }
    let actual = Id::of(data);
    if actual != id {
        return Err(Error::corrupt(
            key.kind(),
            key.name(),
            format!("content hashes to {}", actual.short()),
        ));
    }
    // What a keyless reader relies on: the envelope parses and is sane.
    match key {
        ObjectKey::Index(id) => drop(Index::refs_of(id, data)?),
        ObjectKey::Manifest(k) => drop(Manifest::refs_of(k, data)?),
        ObjectKey::Chunk(_) | ObjectKey::Config => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_tricks() {
        let id = Id::of(b"x");
        for k in [
            ObjectKey::Chunk(id),
            ObjectKey::Index(id),
            ObjectKey::Config,
        ] {
            assert_eq!(ObjectKey::parse(&k.key()).unwrap(), k);
        }
        for bad in [
            "chunks/../etc/passwd".to_string(),
            format!("chunks/00/{id}"),
            format!("chunks/{}/{id}/x", &id.to_hex()[..2]),
            format!("other/{}/{id}", &id.to_hex()[..2]),
            "lifeboat.json/".into(),
            "".into(),
        ] {
            assert!(ObjectKey::parse(&bad).is_err(), "{bad}");
        }
        assert!(check_prefix("manifests/web/").is_ok());
        assert!(check_prefix("manifests/web/root/").is_ok());
        assert!(check_prefix("manifests/../").is_err());
        assert!(check_prefix("tmp/").is_err());
    }

    #[test]
    fn verified_objects_must_match_their_keys() {
        let raw = vec![3u8; 70_000];
        let id = Id::of(&raw);
        let enc = chunk::Encoder::new(1).unwrap().encode(&raw).unwrap();
        assert!(Verified::check(ObjectKey::Chunk(id), Bytes::from(enc.clone())).is_ok());
        let wrong = ObjectKey::Chunk(Id::of(b"other"));
        assert!(Verified::check(wrong, Bytes::from(enc)).is_err());
        let idx = Index {
            chunk_size: 1 << 16,
            image_size: 1 << 16,
            chunks: vec![id],
            plain: Vec::new(),
        };
        let bytes = Bytes::from(idx.to_bytes());
        assert!(Verified::check(ObjectKey::Index(Id::of(&bytes)), bytes.clone()).is_ok());
        assert!(Verified::check(ObjectKey::Index(id), bytes).is_err());
        let huge = Bytes::from(vec![0u8; (MAX_MANIFEST_BYTES + 1) as usize]);
        let mk =
            ManifestKey::parse(&format!("manifests/a/b/20261125T221000.000Z-{id}.json")).unwrap();
        let e = Verified::check(ObjectKey::Manifest(mk), huge).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    }
}
