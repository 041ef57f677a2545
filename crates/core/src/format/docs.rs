//! Small mutable documents beside the immutable objects: repository locks
//! (`locks/<name>.json`) and backup protection marks
//! (`protected/<vm>/<volume>/<manifest file>`). Objects are named by their
//! hash and never change; these are named by what they are about, may be
//! replaced or removed, and are bounded in size. Every name is parsed here
//! before it becomes a path or a URL.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::format::ManifestKey;

/// The largest document accepted from anyone.
pub const MAX_DOC_BYTES: u64 = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    Lock,
    Protection,
}

impl DocKind {
    pub fn dir(self) -> &'static str {
        match self {
            DocKind::Lock => "locks",
            DocKind::Protection => "protected",
        }
    }

    pub fn parse(s: &str) -> Result<DocKind> {
        match s {
            "locks" => Ok(DocKind::Lock),
            "protected" => Ok(DocKind::Protection),
            _ => Err(Error::BadInput(format!(
                "no document kind {:?}: use locks or protected",
                crate::text::escape(s)
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKey {
    /// A lock's name: `writer-<hex>` or `gc-<hex>`.
    Lock(String),
    /// The protection of one backup (one manifest).
    Protection(ManifestKey),
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl DocKey {
    pub fn kind(&self) -> DocKind {
        match self {
            DocKey::Lock(_) => DocKind::Lock,
            DocKey::Protection(_) => DocKind::Protection,
        }
    }

    /// The store key: `locks/<name>.json` or `protected/<vm>/<vol>/<file>`.
    pub fn key(&self) -> String {
        match self {
            DocKey::Lock(n) => format!("locks/{n}.json"),
            DocKey::Protection(m) => {
                let k = m.object_key();
                format!("protected/{}", k.strip_prefix("manifests/").unwrap_or(&k))
            }
        }
    }

    pub fn parse(key: &str) -> Result<DocKey> {
        let bad = || {
            Error::BadInput(format!(
                "not a lock or protection key: {:?}",
                crate::text::escape(key)
            ))
        };
        if let Some(rest) = key.strip_prefix("locks/") {
            let name = rest.strip_suffix(".json").ok_or_else(bad)?;
            return Self::lock(name).map_err(|_| bad());
        }
        if let Some(rest) = key.strip_prefix("protected/") {
            return ManifestKey::parse(&format!("manifests/{rest}"))
                .map(DocKey::Protection)
                .map_err(|_| bad());
        }
        Err(bad())
    }

    /// A lock name: `writer-` or `gc-` and 1 to 64 lowercase hex digits.
    pub fn lock(name: &str) -> Result<DocKey> {
        let ok = ["writer-", "gc-"].iter().any(|p| {
            name.strip_prefix(p).is_some_and(|h| {
                !h.is_empty()
                    && h.len() <= 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
        });
        if ok {
            Ok(DocKey::Lock(name.to_string()))
        } else {
            Err(Error::BadInput(format!(
                "not a lock name: {:?}",
                crate::text::escape(name)
            )))
        }
    }

    /// The VM a document is about (a scoped token sees only its own).
    pub fn vm(&self) -> Option<&str> {
        match self {
            DocKey::Lock(_) => None,
            DocKey::Protection(m) => Some(&m.vm),
        }
    }
}

/// A document as a store holds it. `modified` is the store's own clock
/// (file mtime, S3 LastModified, the server's file), so ages computed
/// against another document of the same store need no synchronised clocks.
#[derive(Debug, Clone)]
pub struct Doc {
    pub key: DocKey,
    pub body: Bytes,
    pub modified: DateTime<Utc>,
}

pub fn check_size(key: &DocKey, len: u64) -> Result<()> {
    if len > MAX_DOC_BYTES {
        return Err(Error::TooLarge {
            what: format!("document {key}"),
            size: len,
            limit: MAX_DOC_BYTES,
            hint: "locks and protection marks are small JSON documents; this one is damaged or hostile",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_hostile_names_are_refused() {
        let l = DocKey::lock("writer-0a1b").unwrap();
        assert_eq!(DocKey::parse(&l.key()).unwrap(), l);
        let m = ManifestKey::parse(&format!(
            "manifests/web/root/20260101T000000Z-{}.json",
            "ab".repeat(32)
        ))
        .unwrap();
        let p = DocKey::Protection(m);
        assert!(p.key().starts_with("protected/web/root/"));
        assert_eq!(DocKey::parse(&p.key()).unwrap(), p);
        for bad in [
            "locks/../x.json",
            "locks/writer-.json",
            "locks/writer-XYZ.json",
            "locks/other-00.json",
            "protected/../../etc/passwd",
            "protected/a/b/c",
            "chunks/00/00",
        ] {
            assert!(DocKey::parse(bad).is_err(), "{bad}");
        }
    }
}
