//! The content-addressed repository on a local disk (format v1, see
//! docs/ARCHITECTURE.md): config, chunk/index/manifest I/O, listings.

pub mod state;
pub mod verify;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::durable;
use crate::error::{Error, Result};
use crate::format::keys::{self, ObjectKey};
pub use crate::format::repo_config::{
    Compression, RepoConfig, CONFIG_FILE, DEFAULT_ZSTD_LEVEL, OLDEST_REPO_FORMAT, REPO_FORMAT,
};
use crate::format::{chunk, manifest};
pub use crate::format::{Id, Index, Manifest, ManifestKey};
use crate::names::is_valid_name;

/// Chunks written between two file-system syncs during a backup.
const FLUSH_EVERY: usize = 64;
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
    pub config: RepoConfig,
}

impl Repo {
    /// Creates a repository in `path`, which must be missing or empty.
    pub fn init(path: &Path, config: RepoConfig) -> Result<Repo> {
        if path.join(CONFIG_FILE).exists() {
            return Err(Error::RepositoryExists(path.to_path_buf()));
        }
        if path.exists() {
            let entries = fs::read_dir(path).map_err(|e| Error::io("reading", path, e))?;
            // A writer's lock may be there first: a push with --init locks
            // the destination before the repository exists.
            let mut entries = entries.flatten().filter(|e| e.file_name() != "locks");
            if entries.next().is_some() {
                return Err(Error::BadInput(format!(
                    "{} is not empty: initialise a repository in a new or empty directory",
                    path.display()
                )));
            }
        }
        crate::store::local::create_layout(path)?;
        crate::store::local::write_repo_config(path, &config)?;
        durable::sync_filesystem(path)?;
        Ok(Repo {
            root: path.to_path_buf(),
            config,
        })
    }

    /// Opens a repository; an encrypted one's key is unlocked from the
    /// environment when it is given there (a server opens one without).
    pub fn open(path: &Path) -> Result<Repo> {
        let config = crate::store::local::read_repo_config(path)?;
        if let Some(enc) = &config.encryption {
            crate::crypto::unlock_from_env(enc)?;
        }
        Ok(Repo {
            root: path.to_path_buf(),
            config,
        })
    }

    /// Fails when the repository is encrypted and its key is not held: a
    /// command that reads backups says so before it lists nothing.
    pub fn require_key(&self) -> Result<()> {
        self.config
            .sealing_keys()
            .map(|_| ())
            .map_err(|_| Error::Locked(format!("the repository at {}", self.root.display())))
    }

    /// Replaces an encrypted repository's key record (its slots changed):
    /// the config is rewritten atomically; objects are untouched.
    pub fn set_encryption(&mut self, enc: crate::crypto::Encryption) -> Result<()> {
        if self.config.encryption.as_ref().map(|e| &e.key_id) != Some(&enc.key_id) {
            return Err(Error::BadInput(
                "a key record is replaced only by one for the same key".into(),
            ));
        }
        let mut cfg = self.config.clone();
        cfg.encryption = Some(enc);
        crate::store::local::write_repo_config(&self.root, &cfg)?;
        self.config = cfg;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunk_size(&self) -> u64 {
        self.config.chunk_size
    }

    /// The path of an object key; keys are built from checked ids and names only.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub fn has_chunk(&self, id: &Id) -> bool {
        id.is_zero() || self.path_of(&keys::chunk_key(id)).exists()
    }

    pub fn has_index(&self, id: &Id) -> bool {
        self.path_of(&keys::index_key(id)).exists()
    }

    /// Reads an object's bytes, bounded by its kind's size limit.
    fn read_object(&self, key: &ObjectKey) -> Result<Bytes> {
        // The store's bounded read; here a missing object is an error, and
        // an oversized file is a damaged object that `verify` names.
        match crate::store::local::read_object(&self.path_of(&key.key()), key) {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(key.missing()),
            Err(Error::TooLarge { size, limit, .. }) => Err(Error::corrupt(
                key.kind(),
                key.name(),
                format!("the file is {size} bytes, over the {limit} allowed"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Reads, decodes and verifies one chunk into `out`, reusing `file` as
    /// the read buffer (both page-aligned; see `buf`). `plain`: a sealed
    /// chunk's plaintext id from its sealed index (see `chunk::decode_checked`).
    pub fn read_chunk_into<'o>(
        &self,
        id: &Id,
        plain: Option<&Id>,
        file: &mut crate::buf::AlignedBuf,
        out: &'o mut crate::buf::AlignedBuf,
    ) -> Result<&'o [u8]> {
        let path = self.path_of(&keys::chunk_key(id));
        let key = ObjectKey::Chunk(*id);
        let data = file
            .read_file(&path, key.max_size())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => key.missing(),
                std::io::ErrorKind::FileTooLarge => Error::corrupt("chunk", id, e.to_string()),
                _ => Error::io("reading", &path, e),
            })?;
        chunk::decode_checked(id, plain, data, out)
    }

    /// Reads, decodes and verifies one chunk.
    pub fn read_chunk(&self, id: &Id) -> Result<Vec<u8>> {
        let data = self.read_object(&ObjectKey::Chunk(*id))?;
        chunk::decode(id, &data)
    }

    pub fn read_index(&self, id: &Id) -> Result<Index> {
        let data = self.read_object(&ObjectKey::Index(*id))?;
        Index::from_bytes(Some(id), &data)
    }

    /// Writes an index durably (no-op when it is already there).
    pub fn write_index(&self, index: &Index) -> Result<Id> {
        let (id, bytes) = index.stored(self.config.sealing_keys()?.as_deref())?;
        self.put_verified_object(&keys::index_key(&id), &bytes)?;
        Ok(id)
    }

    /// Stores a VM definition document as a chunk (durable before this
    /// returns, so a manifest may name it at once).
    pub fn write_definition(&self, doc: &[u8]) -> Result<manifest::DefinitionRef> {
        let (d, encoded) = manifest::DefinitionRef::encode(
            doc,
            self.config.compression.level,
            self.config.sealing_keys()?.as_deref(),
        )?;
        self.put_verified_object(&keys::chunk_key(&d.chunk), &encoded)?;
        Ok(d)
    }

    /// Reads a backup's VM definition (verified like every chunk).
    pub fn read_definition(&self, d: &manifest::DefinitionRef) -> Result<crate::vm::Definition> {
        crate::vm::Definition::from_chunk(d, &self.read_chunk(&d.chunk)?)
    }

    /// Marks the repository as this lifeboat's format before manifests of
    /// that format go into it, so an older lifeboat refuses the repository
    /// as a whole instead of meeting manifests it cannot read.
    pub fn upgrade_format(&mut self) -> Result<()> {
        self.upgrade_format_to(REPO_FORMAT)
    }

    /// Marks the repository at least `format` (the format of a manifest
    /// about to go into it).
    pub fn upgrade_format_to(&mut self, format: u32) -> Result<()> {
        if let Some(cfg) = crate::store::local::upgrade_format(&self.root, &self.config, format)? {
            self.config = cfg;
        }
        Ok(())
    }

    /// Writes a manifest durably. Callers must have made everything it
    /// references durable first.
    pub fn write_manifest(&self, m: &Manifest) -> Result<ManifestKey> {
        let (key, bytes) = m.stored(self.config.sealing_keys()?.as_deref())?;
        let path = self.path_of(&key.object_key());
        if let Some(dir) = path.parent() {
            durable::create_dir_all(dir)?;
        }
        durable::write_atomic(&path, &bytes)?;
        Ok(key)
    }

    /// Stores an object under `key` unless it exists; the caller has checked
    /// that the bytes match the key.
    pub fn put_verified_object(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.path_of(key);
        if path.exists() {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                durable::create_dir_all(dir)?;
            }
        }
        durable::write_atomic(&path, bytes)?;
        Ok(true)
    }

    pub fn load_manifest(&self, key: &ManifestKey) -> Result<Manifest> {
        let data = self.read_object(&ObjectKey::Manifest(key.clone()))?;
        Manifest::from_bytes(key, &data)
    }

    /// What a manifest references, readable without the key of an
    /// encrypted repository (a repository server's catalog and checks).
    pub fn manifest_refs(&self, key: &ManifestKey) -> Result<manifest::Refs> {
        let data = self.read_object(&ObjectKey::Manifest(key.clone()))?;
        Manifest::refs_of(key, &data)
    }

    /// Every backup as a keyless reader sees it (`Manifest::outline`): for
    /// the `/metrics` of a server holding an encrypted repository without
    /// its key. Unreadable envelopes are skipped with a warning.
    pub fn outlines(&self) -> Result<Vec<(ManifestKey, Manifest)>> {
        let mut out = Vec::new();
        for k in self.list_manifests()? {
            match self.manifest_refs(&k) {
                Ok(r) => {
                    let m = Manifest::outline(&k, r);
                    out.push((k, m));
                }
                Err(e) => tracing::warn!("skipping backup {}: {e}", k.object_key()),
            }
        }
        Ok(out)
    }

    /// What an index references, readable without the key.
    pub fn index_refs(&self, id: &Id) -> Result<crate::format::index::Refs> {
        let data = self.read_object(&ObjectKey::Index(*id))?;
        Index::refs_of(id, &data)
    }

    /// Every manifest key in the repository, oldest first. Entries that are
    /// not manifest keys, and directories that cannot be read, are skipped
    /// with a warning, never followed: one damaged entry must not hide
    /// every other backup.
    pub fn list_manifests(&self) -> Result<Vec<ManifestKey>> {
        let mut out = Vec::new();
        let base = self.root.join("manifests");
        let now = chrono::Utc::now();
        for vm in read_dir_names(&base)? {
            if !is_valid_name(&vm) {
                tracing::warn!(
                    "skipping odd entry in manifests/: {}",
                    crate::text::escape(&vm)
                );
                continue;
            }
            for vol in read_dir_names_or_warn(&base.join(&vm)) {
                if !is_valid_name(&vol) {
                    tracing::warn!(
                        "skipping odd entry in manifests/{vm}/: {}",
                        crate::text::escape(&vol)
                    );
                    continue;
                }
                for file in read_dir_names_or_warn(&base.join(&vm).join(&vol)) {
                    if file.starts_with('.') {
                        continue;
                    }
                    match ManifestKey::parse_file_name(&vm, &vol, &file) {
                        Some(k) if k.is_plausible(now) => out.push(k),
                        Some(k) => {
                            tracing::warn!("skipping {}: dated in the future", k.object_key())
                        }
                        None => tracing::warn!(
                            "skipping odd file in manifests/{vm}/{vol}/: {}",
                            crate::text::escape(&file)
                        ),
                    }
                }
            }
        }
        manifest::sort_dedup(&mut out);
        Ok(out)
    }

    /// Loads every readable manifest (verified), oldest first by precise
    /// creation time. A manifest that cannot be read or is damaged is
    /// skipped and reported as a warning (`verify` names the backups it
    /// breaks); the others stay usable.
    pub fn load_all(&self) -> Result<Vec<(ManifestKey, Manifest)>> {
        let mut cache = ManifestCache::default();
        self.refresh(&mut cache)?;
        Ok(cache.into_backups())
    }

    /// Brings `cache` up to date with the repository: reads only the
    /// manifests it has not seen (a manifest never changes), forgets those
    /// gone, and takes the protection marks again. Returns whether anything
    /// changed. A console refreshing every 30 s reads nothing when nothing
    /// happened.
    pub fn refresh(&self, cache: &mut ManifestCache) -> Result<bool> {
        self.require_key()?;
        let keys = self.list_manifests()?;
        let listed: std::collections::HashSet<&ManifestKey> = keys.iter().collect();
        let before = cache.manifests.len();
        cache.manifests.retain(|k, _| listed.contains(k));
        let mut changed = cache.manifests.len() != before;
        for k in keys {
            if cache.manifests.contains_key(&k) || cache.damaged.contains(&k) {
                continue;
            }
            match self.load_manifest(&k) {
                Ok(m) => {
                    // (Its protection is set below, with the marks.)
                    cache.manifests.insert(k, std::sync::Arc::new(m));
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!("skipping backup {}: {e}", k.object_key());
                    cache.damaged.insert(k);
                }
            }
        }
        // Protection marks beside the manifests (see `protect`).
        let marks = self.protection_marks()?;
        if marks != cache.marks {
            cache.marks = marks;
            changed = true;
        }
        // Kept up to date in place: a shared manifest is copied only when
        // its mark changed.
        for (k, m) in cache.manifests.iter_mut() {
            let on = cache.marks.contains(k);
            if m.labels.protected != on {
                std::sync::Arc::make_mut(m).labels.protected = on;
            }
        }
        Ok(changed)
    }

    /// The backups protected by a mark in `protected/`.
    pub fn protection_marks(&self) -> Result<std::collections::BTreeSet<ManifestKey>> {
        let mut names = Vec::new();
        crate::store::local::walk(&self.root, &self.root.join("protected"), &mut names)?;
        Ok(names
            .iter()
            .filter_map(|n| match crate::store::DocKey::parse(n) {
                Ok(crate::store::DocKey::Protection(m)) => Some(m),
                _ => None,
            })
            .collect())
    }

    pub fn chunk_writer(&self) -> ChunkWriter<'_> {
        ChunkWriter {
            repo: self,
            seen: Mutex::default(),
            staging: crate::store::local::Staging::new(&self.root),
        }
    }
}

/// Names in a directory below `manifests/`; one that cannot be read is
/// reported and treated as empty.
fn read_dir_names_or_warn(dir: &Path) -> Vec<String> {
    read_dir_names(dir).unwrap_or_else(|e| {
        tracing::warn!("skipping {}: {e}", dir.display());
        Vec::new()
    })
}

/// Creates a repository's directories, private to the owner. Every path
/// that creates a repository (init, a pull or restore onto a fresh
/// machine, a server's first push) creates the whole layout.
/// The manifests of a repository as last read (`Repo::refresh`).
#[derive(Debug, Default, Clone)]
pub struct ManifestCache {
    /// Shared with whoever holds `shared()`: a refresh that finds one new
    /// backup copies pointers, not 20,000 manifests.
    manifests: std::collections::HashMap<ManifestKey, std::sync::Arc<Manifest>>,
    /// Unreadable ones, reported once and not read again.
    damaged: std::collections::HashSet<ManifestKey>,
    marks: std::collections::BTreeSet<ManifestKey>,
}

impl ManifestCache {
    /// Every backup, oldest first by precise creation time, with the
    /// protection marks applied; the manifests shared, not copied.
    pub fn shared(&self) -> Vec<(ManifestKey, std::sync::Arc<Manifest>)> {
        let mut all: Vec<(ManifestKey, std::sync::Arc<Manifest>)> = self
            .manifests
            .iter()
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect();
        all.sort_by_key(|a| (a.1.created_at, a.0.id));
        all
    }

    /// The same, owned (the cache is used up).
    pub fn into_backups(self) -> Vec<(ManifestKey, Manifest)> {
        let mut all: Vec<(ManifestKey, Manifest)> = self
            .manifests
            .into_iter()
            .map(|(k, m)| (k, std::sync::Arc::unwrap_or_clone(m)))
            .collect();
        all.sort_by_key(|a| (a.1.created_at, a.0.id));
        all
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        if let Some(n) = entry.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Writes new chunks for a backup from several threads, through the one
/// durability protocol (`store::local::Staging`): a chunk visible under
/// its id is always complete and durable; a crash leaves at most temp
/// files, never a short chunk that a later backup would trust.
pub struct ChunkWriter<'a> {
    repo: &'a Repo,
    /// Chunks this writer staged (known before they are visible).
    seen: Mutex<HashSet<Id>>,
    staging: crate::store::local::Staging,
}

impl ChunkWriter<'_> {
    /// Whether the chunk is already stored or being stored by this writer.
    pub fn known(&self, id: &Id) -> bool {
        if self.repo.has_chunk(id) {
            return true;
        }
        self.seen.lock().map(|s| s.contains(id)).unwrap_or(false)
    }

    /// Stages an encoded chunk. Returns false when another worker staged it first.
    pub fn put(&self, id: &Id, encoded: &[u8]) -> Result<bool> {
        let fresh = self
            .seen
            .lock()
            .map_err(|_| {
                Error::Internal("chunk writer state poisoned by a panicked worker".into())
            })?
            .insert(*id);
        if !fresh {
            return Ok(false);
        }
        self.staging.stage(
            self.repo.path_of(&keys::chunk_key(id)),
            &id.short(),
            encoded,
        )?;
        Ok(true)
    }

    /// Flushes when enough chunks are staged. Called by the thread that
    /// collects results, so that no worker stalls in a file-system sync.
    pub fn flush_if_due(&self) -> Result<()> {
        if self.staging.len() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes staged chunks durable, then visible under their ids.
    pub fn flush(&self) -> Result<()> {
        self.staging.commit()
    }

    /// Flushes and syncs so that every chunk written is durable under its id.
    pub fn commit(&self) -> Result<()> {
        self.flush()?;
        durable::sync_filesystem(&self.repo.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_repositories_are_read_and_upgraded_on_write() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        let mut cfg = RepoConfig::new(1 << 20, 1).unwrap();
        assert_eq!(cfg.format, REPO_FORMAT);
        cfg.format = 1;
        Repo::init(&root, cfg).unwrap();
        let mut repo = Repo::open(&root).unwrap();
        assert_eq!(repo.config.format, 1);
        let def = repo.write_definition(b"{}").unwrap();
        assert_eq!(repo.read_chunk(&def.chunk).unwrap(), b"{}");
        repo.upgrade_format_to(2).unwrap();
        assert_eq!(Repo::open(&root).unwrap().config.format, 2);
        repo.upgrade_format().unwrap();
        assert_eq!(Repo::open(&root).unwrap().config.format, REPO_FORMAT);
        // A format this lifeboat does not know is refused with what to do.
        let text = std::fs::read_to_string(root.join(CONFIG_FILE)).unwrap();
        std::fs::write(
            root.join(CONFIG_FILE),
            text.replace("\"format\": 3", "\"format\": 5"),
        )
        .unwrap();
        let e = Repo::open(&root).unwrap_err().to_string();
        assert!(e.contains("upgrade lifeboat"), "{e}");
        assert!(repo.write_definition(&[]).is_err());
    }
}
