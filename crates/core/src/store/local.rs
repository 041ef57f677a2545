//! A repository directory as a store. Writes are atomic, durable and
//! private; reads are bounded by each object kind's size limit.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::keys::{check_prefix, ObjectKey, Verified};
use super::{too_many_keys, Store, MAX_LIST_KEYS};
use crate::error::{Error, Result};
use crate::repo::durable::{self, Limited};

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        // A parsed key is one of ours, never `..` or absolute.
        self.root.join(key.key())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("local store task failed: {e}")))?
}

/// Reads one object, refusing a file larger than its kind allows.
pub fn read_object(path: &Path, key: &ObjectKey) -> Result<Option<Bytes>> {
    match durable::read_limited(path, key.max_size()) {
        Ok(Limited::Data(d)) => Ok(Some(Bytes::from(d))),
        Ok(Limited::TooLarge(n)) => Err(key.too_large(
            n,
            "the file is damaged or was not written by lifeboat; `lifeboat verify` lists what it breaks",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>> {
        let path = self.path(key);
        let key = key.clone();
        blocking(move || read_object(&path, &key)).await
    }

    async fn put_if_absent(&self, obj: &Verified) -> Result<bool> {
        let path = self.path(obj.key());
        let root = self.root.clone();
        let key = obj.key().clone();
        let data = obj.data().clone();
        blocking(move || {
            if path.exists() {
                return Ok(false);
            }
            if key == ObjectKey::Config {
                // The config is what makes a directory a repository: lay
                // out the whole repository (private) before it exists.
                crate::repo::create_layout(&root)?;
            } else if let Some(dir) = path.parent() {
                if !dir.exists() {
                    durable::create_dir_all(dir)?;
                }
            }
            match key {
                // Data objects: synced, renamed into place; the renames are
                // made durable together by the sync below, before any
                // manifest can refer to them (one sync per manifest instead
                // of a directory sync per chunk).
                ObjectKey::Chunk(_) | ObjectKey::Index(_) => {
                    durable::write_atomic_deferred(&path, &data)?
                }
                ObjectKey::Manifest(_) => {
                    durable::sync_filesystem(&root)?;
                    durable::write_atomic(&path, &data)?
                }
                ObjectKey::Config => durable::write_atomic(&path, &data)?,
            }
            Ok(true)
        })
        .await
    }

    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>> {
        let paths: Vec<(ObjectKey, PathBuf)> =
            keys.iter().map(|k| (k.clone(), self.path(k))).collect();
        blocking(move || {
            Ok(paths
                .into_iter()
                .filter(|(_, p)| !p.exists())
                .map(|(k, _)| k)
                .collect())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        check_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let name = self.describe();
        blocking(move || {
            let base = root.join(&prefix);
            let mut out = Vec::new();
            walk(&root, &base, &mut out)?;
            if out.len() > MAX_LIST_KEYS {
                return Err(too_many_keys(&name, &prefix));
            }
            let mut keys: Vec<ObjectKey> = out
                .iter()
                .filter_map(|k| ObjectKey::parse(k).ok())
                .collect();
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let path = self.path(key);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting", &path, e)),
        })
        .await
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let p = entry.path();
        let ft = entry.file_type().map_err(|e| Error::io("listing", &p, e))?;
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else if ft.is_file() {
            if let Some(rel) = p.strip_prefix(root).ok().and_then(|r| r.to_str()) {
                if !rel.rsplit('/').next().is_some_and(|n| n.starts_with('.')) {
                    out.push(rel.to_string());
                }
            }
        }
        if out.len() > MAX_LIST_KEYS {
            return Ok(());
        }
    }
    Ok(())
}
