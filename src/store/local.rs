//! A repository directory as a store. Writes are atomic and durable.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use super::keys::{check_prefix, ObjectKey};
use super::Store;
use crate::error::{Error, Result};
use crate::repo::durable;

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        // Parsing guarantees the key is one of ours, never `..` or absolute.
        Ok(self.root.join(ObjectKey::parse(key)?.key()))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("local store task failed: {e}")))?
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        blocking(move || match std::fs::read(&path) {
            Ok(d) => Ok(Some(Bytes::from(d))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &path, e)),
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        blocking(move || {
            if path.exists() {
                return Ok(false);
            }
            if let Some(dir) = path.parent() {
                if !dir.exists() {
                    durable::create_dir_all(dir)?;
                }
            }
            durable::write_atomic(&path, &data)?;
            Ok(true)
        })
        .await
    }

    async fn missing(&self, keys: &[String]) -> Result<Vec<String>> {
        let paths: Vec<(String, PathBuf)> = keys
            .iter()
            .map(|k| self.path(k).map(|p| (k.clone(), p)))
            .collect::<Result<_>>()?;
        blocking(move || {
            Ok(paths
                .into_iter()
                .filter(|(_, p)| !p.exists())
                .map(|(k, _)| k)
                .collect())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        check_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let base = root.join(&prefix);
            let mut out = Vec::new();
            walk(&root, &base, &mut out)?;
            out.retain(|k| ObjectKey::parse(k).is_ok());
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting", &path, e)),
        })
        .await
    }
}

fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) -> Result<()> {
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
    }
    Ok(())
}
