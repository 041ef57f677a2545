//! Object keys shared by every store. A key from a URL, a listing or a
//! remote is parsed here before it is used; nothing else becomes a path.

use crate::error::{Error, Result};
use crate::repo::{Id, ManifestKey, Repo, CONFIG_FILE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKey {
    Config,
    Chunk(Id),
    Index(Id),
    Manifest(ManifestKey),
}

impl ObjectKey {
    pub fn parse(key: &str) -> Result<ObjectKey> {
        if key == CONFIG_FILE {
            return Ok(ObjectKey::Config);
        }
        if key.starts_with("manifests/") {
            return ManifestKey::parse(key).map(ObjectKey::Manifest);
        }
        let bad = || Error::Invalid(format!("not an object key: {key:?}"));
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
            ObjectKey::Chunk(id) => Repo::chunk_key(id),
            ObjectKey::Index(id) => Repo::index_key(id),
            ObjectKey::Manifest(k) => k.object_key(),
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
        Err(Error::Invalid(format!(
            "invalid list prefix {prefix:?}: use chunks/, indexes/, manifests/ or manifests/VM/[VOLUME/]"
        )))
    }
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
}
