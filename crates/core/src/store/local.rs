//! A repository directory as a store. Writes are atomic, durable and
//! private; reads are bounded by each object kind's size limit.
//!
//! Chunks and indexes arriving through the store (a pull, a restore from a
//! remote, a server's uploads) are committed in groups, with the protocol
//! the backup writer uses: staged in `tmp/`, made durable by one file-system
//! sync per batch, and only then renamed under their names. A visible
//! object is therefore always complete, and one sync per batch replaces an
//! fsync per object. A batch is committed when it is full, before any
//! manifest is written (so a manifest never refers to an object that is not
//! durable), on `commit`, and by a server on a short timer. Staged objects
//! of a store that is dropped uncommitted are removed: nothing refers to
//! them, and a re-run sends them again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{too_many_keys, Store, MAX_LIST_KEYS};
use crate::durable::{self, Limited};
use crate::error::{Error, Result};
use crate::format::docs::{check_size, Doc, DocKey, DocKind, MAX_DOC_BYTES};
use crate::format::keys::{check_prefix, ObjectKey, Verified, MAX_CONFIG_BYTES};
use crate::format::repo_config::{RepoConfig, CONFIG_FILE, REPO_FORMAT};

/// Objects staged per batch before one sync commits them.
const BATCH: usize = 64;

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    staged: Arc<Staging>,
    /// The repository's config is known to be the newest format: manifests
    /// need not look at it again.
    current_format: Arc<std::sync::atomic::AtomicBool>,
}

/// The durability protocol, in one place (the backup's `ChunkWriter` and
/// every object arriving through the store use it): an object is written
/// to a private temp file in `tmp/` (no fsync), a batch is made durable by
/// one file-system sync, and only then renamed to its name — so an object
/// visible under its name is always complete and durable, and a crash
/// leaves at most temp files. Pending temp files are removed when the
/// staging is dropped uncommitted (nothing refers to them yet).
pub struct Staging {
    root: PathBuf,
    /// Destination → temp file.
    pending: Mutex<HashMap<PathBuf, PathBuf>>,
    /// Serialises commits, so a batch is renamed only after a sync that
    /// covers it.
    commit: Mutex<()>,
}

impl Staging {
    pub fn new(root: impl Into<PathBuf>) -> Staging {
        Staging {
            root: root.into(),
            pending: Mutex::default(),
            commit: Mutex::default(),
        }
    }

    fn pending(&self) -> Result<std::sync::MutexGuard<'_, HashMap<PathBuf, PathBuf>>> {
        self.pending
            .lock()
            .map_err(|_| Error::Internal("staging state poisoned by a panicked writer".into()))
    }

    pub fn is_pending(&self, dest: &Path) -> bool {
        self.pending()
            .map(|p| p.contains_key(dest))
            .unwrap_or(false)
    }

    /// Objects waiting for a commit.
    pub fn len(&self) -> usize {
        self.pending().map(|p| p.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `data` for `dest` to a temp file named after `label`. Staged
    /// twice at once, one copy is kept.
    pub fn stage(&self, dest: PathBuf, label: &str, data: &[u8]) -> Result<()> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tmp_dir.join(durable::temp_name(label));
        let file = match durable::create_private(&tmp) {
            // A repository made by an older lifeboat may lack tmp/.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                durable::create_dir_all(&tmp_dir)?;
                durable::create_private(&tmp)
            }
            other => other,
        };
        let written = file.and_then(|mut f| {
            use std::io::Write;
            f.write_all(data)
                .map_err(|e| Error::io("writing", &tmp, e))?;
            durable::start_writeback(&f);
            Ok(())
        });
        if let Err(e) = written {
            durable::remove_quietly(&tmp);
            return Err(e);
        }
        if let Some(dup) = self.pending()?.insert(dest, tmp) {
            durable::remove_quietly(&dup);
        }
        Ok(())
    }

    /// Makes every staged object durable, then visible under its name.
    pub fn commit(&self) -> Result<()> {
        let _one = self
            .commit
            .lock()
            .map_err(|_| Error::Internal("staging state poisoned by a panicked writer".into()))?;
        let batch: Vec<(PathBuf, PathBuf)> = self.pending()?.drain().collect();
        if batch.is_empty() {
            return Ok(());
        }
        let res = (|| {
            durable::sync_filesystem(&self.root)?;
            for (dest, tmp) in &batch {
                if let Some(dir) = dest.parent() {
                    if !dir.exists() {
                        durable::create_dir_all(dir)?;
                    }
                }
                std::fs::rename(tmp, dest).map_err(|e| Error::io("renaming into", dest, e))?;
            }
            Ok(())
        })();
        if res.is_err() {
            for (_, tmp) in &batch {
                durable::remove_quietly(tmp);
            }
        }
        res
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Ok(p) = self.pending.get_mut() {
            for tmp in p.values() {
                durable::remove_quietly(tmp);
            }
        }
    }
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        let root: PathBuf = root.into();
        LocalStore {
            staged: Arc::new(Staging::new(root.clone())),
            root,
            current_format: Arc::default(),
        }
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        // A parsed key is one of ours, never `..` or absolute.
        self.root.join(key.key())
    }

    /// Commits the staged batch if `key` is in it, so that the object can
    /// be read from its path (a server streaming it from disk).
    pub async fn make_visible(&self, key: &ObjectKey) -> Result<()> {
        if !self.is_staged(key) {
            return Ok(());
        }
        let this = self.clone();
        blocking(move || this.commit_staged()).await
    }

    /// Whether objects wait for a commit (a server commits them on a timer).
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    fn is_staged(&self, key: &ObjectKey) -> bool {
        self.staged.is_pending(&self.path(key))
    }

    /// Writes a chunk or index to `tmp/` (synced later, with its batch).
    /// Returns whether it was staged (false: already there or staged).
    fn stage(&self, key: &ObjectKey, data: &[u8]) -> Result<bool> {
        if self.path(key).exists() || self.is_staged(key) {
            return Ok(false);
        }
        self.staged
            .stage(self.path(key), &key.kind().replace(' ', "-"), data)?;
        if self.staged.len() >= BATCH {
            self.commit_staged()?;
        }
        Ok(true)
    }

    /// Makes every staged object durable, then visible under its name.
    fn commit_staged(&self) -> Result<()> {
        self.staged.commit()
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

impl LocalStore {
    /// The documents of a kind with their modification times, without
    /// reading them (a server pages through many and reads only a page).
    pub async fn doc_names(
        &self,
        kind: DocKind,
    ) -> Result<Vec<(DocKey, chrono::DateTime<chrono::Utc>)>> {
        let root = self.root.clone();
        blocking(move || {
            let mut names = Vec::new();
            walk(&root, &root.join(kind.dir()), &mut names)?;
            let mut out = Vec::new();
            for name in names {
                let Ok(key) = DocKey::parse(&name) else {
                    continue;
                };
                let path = root.join(&name);
                match std::fs::metadata(&path).and_then(|m| m.modified()) {
                    Ok(t) => out.push((key, t.into())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("reading the time of", &path, e)),
                }
            }
            out.sort_by_key(|a| a.0.key());
            Ok(out)
        })
        .await
    }

    /// One document's body (empty when it is larger than any document may
    /// be: junk), or None when it is gone.
    pub async fn read_doc(&self, key: &DocKey) -> Result<Option<Bytes>> {
        let path = self.root.join(key.key());
        blocking(move || match durable::read_limited(&path, MAX_DOC_BYTES) {
            Ok(Limited::Data(d)) => Ok(Some(Bytes::from(d))),
            Ok(Limited::TooLarge(_)) => Ok(Some(Bytes::new())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &path, e)),
        })
        .await
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
        let this = self.clone();
        blocking(move || {
            if this.is_staged(&key) {
                this.commit_staged()?;
            }
            read_object(&path, &key)
        })
        .await
    }

    async fn put_if_absent(&self, obj: &Verified) -> Result<bool> {
        let path = self.path(obj.key());
        let key = obj.key().clone();
        let data = obj.data().clone();
        let this = self.clone();
        blocking(move || match key {
            // Data objects: staged, committed with their batch.
            ObjectKey::Chunk(_) | ObjectKey::Index(_) => this.stage(&key, &data),
            ObjectKey::Manifest(mk) => {
                if path.exists() {
                    return Ok(false);
                }
                // A newer manifest marks the repository newer first, as a
                // backup does (an older lifeboat then refuses the whole
                // repository, not single manifests).
                use std::sync::atomic::Ordering;
                if !this.current_format.load(Ordering::Relaxed) {
                    let mut config = read_repo_config(&this.root)?;
                    // An encrypted repository (format 4) is current, and its
                    // sealed manifests are not readable here.
                    if config.format < REPO_FORMAT {
                        let format = crate::format::Manifest::from_bytes(&mk, &data)?.format;
                        config = upgrade_format(&this.root, &config, format)?.unwrap_or(config);
                    }
                    if config.format >= REPO_FORMAT {
                        this.current_format.store(true, Ordering::Relaxed);
                    }
                }
                // Everything staged so far becomes durable and visible, and
                // the renames durable, before the manifest can exist.
                this.commit_staged()?;
                durable::sync_filesystem(&this.root)?;
                if let Some(dir) = path.parent() {
                    durable::create_dir_all(dir)?;
                }
                durable::write_atomic(&path, &data)?;
                Ok(true)
            }
            ObjectKey::Config => {
                if path.exists() {
                    return Ok(false);
                }
                // Never turn a directory that holds other things (a home,
                // a mount point given by mistake) into a repository.
                let layout = ["chunks", "indexes", "manifests", "tmp", "locks"];
                let foreign = std::fs::read_dir(&this.root)
                    .map(|d| {
                        d.flatten()
                            .any(|e| !layout.iter().any(|n| e.file_name() == *n))
                    })
                    .unwrap_or(false);
                if foreign {
                    return Err(Error::BadInput(format!(
                        "{} is not empty and holds no lifeboat repository: give a new or empty directory",
                        this.root.display()
                    )));
                }
                // The config is what makes a directory a repository: lay
                // out the whole repository (private) before it exists.
                create_layout(&this.root)?;
                durable::write_atomic(&path, &data)?;
                Ok(true)
            }
        })
        .await
    }

    async fn commit(&self) -> Result<()> {
        let this = self.clone();
        blocking(move || {
            this.commit_staged()?;
            durable::sync_filesystem(&this.root)
        })
        .await
    }

    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>> {
        let paths: Vec<(ObjectKey, PathBuf)> =
            keys.iter().map(|k| (k.clone(), self.path(k))).collect();
        let this = self.clone();
        blocking(move || {
            // A staged object counts as held: it is committed before any
            // manifest that refers to it.
            Ok(paths
                .into_iter()
                .filter(|(k, p)| !p.exists() && !this.is_staged(k))
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
        blocking(move || remove(&path)).await
    }

    async fn put_doc(&self, key: &DocKey, body: Bytes) -> Result<()> {
        check_size(key, body.len() as u64)?;
        let path = self.root.join(key.key());
        blocking(move || {
            if let Some(dir) = path.parent() {
                durable::create_dir_all(dir)?;
            }
            durable::write_atomic(&path, &body)
        })
        .await
    }

    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Doc>> {
        let root = self.root.clone();
        blocking(move || {
            let mut names = Vec::new();
            walk(&root, &root.join(kind.dir()), &mut names)?;
            let mut out = Vec::new();
            for name in names {
                let Ok(key) = DocKey::parse(&name) else {
                    continue;
                };
                let path = root.join(&name);
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    // Removed since the listing (a lock released).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("reading", &path, e)),
                };
                // An oversized document is junk: listed with no body (a
                // lock nobody understands), never read whole, never an
                // error that would hide every other document.
                let body = match durable::read_limited(&path, MAX_DOC_BYTES) {
                    Ok(Limited::Data(d)) => Bytes::from(d),
                    Ok(Limited::TooLarge(n)) => {
                        tracing::warn!(
                            "{}",
                            check_size(&key, n)
                                .err()
                                .map(|e| e.to_string())
                                .unwrap_or_default()
                        );
                        Bytes::new()
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("reading", &path, e)),
                };
                let modified = meta
                    .modified()
                    .map_err(|e| Error::io("reading the time of", &path, e))?;
                out.push(Doc {
                    key,
                    body,
                    modified: modified.into(),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn delete_doc(&self, key: &DocKey) -> Result<()> {
        let path = self.root.join(key.key());
        blocking(move || remove(&path)).await
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("deleting", path, e)),
    }
}

/// The keys (paths relative to `root`, dot files left out) of every file
/// under `dir`.
/// Lays out a repository's directories, private to its owner, before its
/// config makes it a repository.
pub fn create_layout(root: &Path) -> Result<()> {
    durable::private_dir(root)?;
    for sub in ["chunks", "indexes", "manifests", "tmp"] {
        durable::create_dir_all(&root.join(sub))?;
    }
    for b in 0..=255u8 {
        let h = format!("{b:02x}");
        durable::create_dir_all(&root.join("chunks").join(&h))?;
        durable::create_dir_all(&root.join("indexes").join(&h))?;
    }
    Ok(())
}

/// Reads and checks the config document of the repository at `root`.
pub fn read_repo_config(root: &Path) -> Result<RepoConfig> {
    if !root.exists() {
        return Err(Error::NoRepository(root.to_path_buf()));
    }
    let cfg = root.join(CONFIG_FILE);
    let data = match durable::read_limited(&cfg, MAX_CONFIG_BYTES) {
        Ok(Limited::Data(d)) => d,
        Ok(Limited::TooLarge(n)) => {
            return Err(ObjectKey::Config.too_large(n, "this is not a lifeboat repository config"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository(root.to_path_buf()))
        }
        Err(e) => return Err(Error::io("reading", &cfg, e)),
    };
    RepoConfig::parse(&cfg, &data)
}

/// Writes a repository's config document durably.
pub fn write_repo_config(root: &Path, config: &RepoConfig) -> Result<()> {
    durable::write_atomic(&root.join(CONFIG_FILE), &config.to_bytes()?)
}

/// Marks the repository at least `format` (the format of a manifest about
/// to go into it), so an older lifeboat refuses the repository as a whole
/// instead of meeting manifests it cannot read. The new config, if it
/// changed.
pub fn upgrade_format(root: &Path, config: &RepoConfig, format: u32) -> Result<Option<RepoConfig>> {
    if config.format >= format || format > REPO_FORMAT {
        return Ok(None);
    }
    let mut cfg = config.clone();
    cfg.format = format;
    write_repo_config(root, &cfg)?;
    tracing::info!(
        "repository {} upgraded from format {} to {format}",
        root.display(),
        config.format
    );
    Ok(Some(cfg))
}

pub(crate) fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunk::Encoder;
    use crate::format::Id;

    fn chunk(seed: u8) -> Verified {
        let raw = vec![seed; 70_000];
        let enc = Encoder::new(1).unwrap().encode(&raw).unwrap();
        Verified::check(ObjectKey::Chunk(Id::of(&raw)), Bytes::from(enc)).unwrap()
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn uploads_are_committed_in_groups() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        create_layout(&root).unwrap();
        let store = LocalStore::new(&root);
        let c = chunk(1);
        assert!(store.put_if_absent(&c).await.unwrap());
        assert!(
            !store.put_if_absent(&c).await.unwrap(),
            "staged counts as held"
        );
        // Staged: not at its path yet, but held for `missing`.
        assert!(!root.join(c.key().key()).exists());
        assert!(store.missing(&[c.key().clone()]).await.unwrap().is_empty());
        store.commit().await.unwrap();
        assert!(root.join(c.key().key()).exists());
        assert_eq!(files(&root.join("tmp")), 0);
        // A full batch commits by itself.
        for i in 0..BATCH as u8 {
            store.put_if_absent(&chunk(i + 10)).await.unwrap();
        }
        assert!(!store.has_staged());
        // A store dropped uncommitted leaves no temp files and no objects.
        let other = LocalStore::new(&root);
        let d = chunk(200);
        other.put_if_absent(&d).await.unwrap();
        assert_eq!(files(&root.join("tmp")), 1);
        drop(other);
        assert_eq!(files(&root.join("tmp")), 0);
        assert!(!root.join(d.key().key()).exists());
        // Reading a staged object commits its batch first.
        let e = chunk(201);
        store.put_if_absent(&e).await.unwrap();
        assert_eq!(store.get(e.key()).await.unwrap().as_ref(), Some(e.data()));
    }
}
