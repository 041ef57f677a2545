//! Protection: a backup that prune never removes. Manifests are immutable,
//! so protection is a document beside each manifest of the set
//! (`protected/<vm>/<volume>/<manifest file>`, see `store::docs`). It
//! travels with push and pull (additively: unprotecting is a deliberate
//! act on each repository, and an append-only client may not undo it).

use std::collections::BTreeSet;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{Manifest, ManifestKey};
use crate::store::{DocKey, DocKind, Store};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Protection {
    pub at: DateTime<Utc>,
    pub by: String,
    #[serde(default)]
    pub note: Option<String>,
}

impl Protection {
    pub fn new(note: Option<String>) -> Protection {
        Protection {
            at: Utc::now(),
            by: format!("{}@{}", user_name(), crate::sys::hostname()),
            note,
        }
    }

    pub fn to_bytes(&self) -> Result<Bytes> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

/// Who runs this process: the account's name (from the password database,
/// so an unset or forged `USER` does not matter), or `uid N`.
pub fn user_name() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes into our buffers only.
    unsafe {
        let uid = libc::getuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out);
        if rc == 0 && !out.is_null() && !pwd.pw_name.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr(pwd.pw_name).to_str() {
                if !name.is_empty() {
                    return name.to_string();
                }
            }
        }
        format!("uid {uid}")
    }
}

/// Every protected manifest of a store.
pub async fn protected(store: &dyn Store) -> Result<BTreeSet<ManifestKey>> {
    Ok(store
        .list_docs(DocKind::Protection)
        .await?
        .into_iter()
        .filter_map(|d| match d.key {
            DocKey::Protection(m) => Some(m),
            _ => None,
        })
        .collect())
}

/// Marks exactly the manifests protected by a document as such (prune and
/// the views read `labels.protected`; what a manifest itself claims never
/// counts).
pub fn apply(backups: &mut [(ManifestKey, Manifest)], marks: &BTreeSet<ManifestKey>) {
    for (k, m) in backups.iter_mut() {
        m.labels.protected = marks.contains(k);
    }
}

/// Protects (or with `on` false, unprotects) each backup in `keys`.
pub async fn set(
    store: &dyn Store,
    keys: &[ManifestKey],
    on: bool,
    note: Option<String>,
) -> Result<()> {
    let body = Protection::new(note).to_bytes()?;
    for k in keys {
        let doc = DocKey::Protection(k.clone());
        if on {
            store.put_doc(&doc, body.clone()).await?;
        } else {
            store.delete_doc(&doc).await?;
        }
    }
    Ok(())
}

/// Copies the protection of `keys` from `src` to `dst` where `dst` lacks
/// it (push and pull). Returns how many were copied.
pub async fn copy(src: &dyn Store, dst: &dyn Store, keys: &[ManifestKey]) -> Result<usize> {
    let wanted: BTreeSet<&ManifestKey> = keys.iter().collect();
    let from: Vec<crate::store::Doc> = src
        .list_docs(DocKind::Protection)
        .await?
        .into_iter()
        .filter(|d| matches!(&d.key, DocKey::Protection(m) if wanted.contains(m)))
        .collect();
    if from.is_empty() {
        return Ok(0);
    }
    let have = protected(dst).await?;
    let mut n = 0;
    for d in from {
        if let DocKey::Protection(m) = &d.key {
            if !have.contains(m) {
                dst.put_doc(&d.key, d.body.clone()).await?;
                n += 1;
            }
        }
    }
    Ok(n)
}
