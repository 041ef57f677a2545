//! What the server knows of the backups it holds, kept in memory so that
//! the rules a client cannot subvert are cheap to apply on every request:
//!
//! - **when each backup arrived**, by the server's clock (the manifest
//!   file's modification time: the server writes it once and never again),
//!   for the immutability window;
//! - **each volume's newest backup and each set's members**, for the rules
//!   on a new manifest (no backup older than the newest, sets closed);
//! - **what each scope may read**: the chunks, indexes and definitions its
//!   own manifests reference, plus what its tokens sent and no manifest
//!   names yet (an interrupted push resuming). A scoped token can neither
//!   read another site's data nor learn that a chunk exists by its hash.
//!
//! The disk is the truth: the catalog re-reads the manifest listing before
//! a decision that depends on it (at most once a second, and on a miss),
//! so backups written or pruned by a local lifeboat on the server's host
//! are seen too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use lifeboat_core::error::{Error, Result};
use lifeboat_core::format::manifest::{DefinitionRef, Refs, Role};
use lifeboat_core::format::{Id, ManifestKey};
use lifeboat_core::repo::Repo;
use lifeboat_core::store::ObjectKey;

use super::tokens::scope_covers;

/// How old the catalog's view of the disk may be before a decision that
/// found nothing re-reads it.
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// One backup as the server holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub set: String,
    pub role: Role,
    pub definition: Option<DefinitionRef>,
    pub index: Id,
    /// When it arrived, by the server's clock.
    pub arrived: DateTime<Utc>,
}

/// What one scope may read.
#[derive(Default)]
struct View {
    chunks: HashSet<Id>,
    indexes: HashSet<Id>,
    /// Sent by the scope's tokens, named by no manifest yet.
    sent_chunks: HashSet<Id>,
    sent_indexes: HashSet<Id>,
    /// A backup of the scope was removed: rebuilt before the next use.
    stale: bool,
}

impl View {
    fn allows(&self, key: &ObjectKey) -> bool {
        match key {
            ObjectKey::Chunk(id) => {
                id.is_zero() || self.chunks.contains(id) || self.sent_chunks.contains(id)
            }
            ObjectKey::Index(id) => self.indexes.contains(id) || self.sent_indexes.contains(id),
            // Manifests are checked by name, the config is everyone's.
            ObjectKey::Manifest(_) | ObjectKey::Config => true,
        }
    }

    fn add_backup(&mut self, repo: &Repo, e: &Entry) {
        if let Some(d) = e.definition {
            self.sent_chunks.remove(&d.chunk);
            self.chunks.insert(d.chunk);
        }
        if self.indexes.insert(e.index) {
            self.sent_indexes.remove(&e.index);
            // References only: an encrypted repository's index is sealed,
            // and the server holds no key.
            match repo.index_refs(&e.index) {
                Ok(idx) => {
                    for c in idx.chunks.iter() {
                        if self.chunks.insert(*c) {
                            self.sent_chunks.remove(c);
                        }
                    }
                }
                // A damaged index: its chunks stay unreadable for the
                // scope, which `verify` on the server reports.
                Err(e) => tracing::warn!("catalog: {e}"),
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    manifests: HashMap<ManifestKey, Entry>,
    synced_at: Option<Instant>,
    views: HashMap<String, View>,
}

pub struct Catalog {
    root: PathBuf,
    inner: Mutex<Inner>,
}

fn arrival_of(path: &std::path::Path) -> Option<DateTime<Utc>> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .map(DateTime::<Utc>::from)
}

impl Catalog {
    pub fn new(root: PathBuf) -> Catalog {
        Catalog {
            root,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn repo(&self) -> Result<Option<Repo>> {
        match Repo::open(&self.root) {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotARepository(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Brings the catalog up to date with the disk (blocking I/O).
    pub fn sync(&self) -> Result<()> {
        let Some(repo) = self.repo()? else {
            return Ok(());
        };
        let keys = repo.list_manifests()?;
        let mut inner = self.lock();
        let on_disk: HashSet<&ManifestKey> = keys.iter().collect();
        let before = inner.manifests.len();
        inner.manifests.retain(|k, _| on_disk.contains(k));
        if inner.manifests.len() != before {
            // Backups were removed (a prune): what scopes may read shrinks.
            for v in inner.views.values_mut() {
                v.stale = true;
            }
        }
        for k in keys {
            if inner.manifests.contains_key(&k) {
                continue;
            }
            let m = match repo.manifest_refs(&k) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("catalog: skipping {}: {e}", k.object_key());
                    continue;
                }
            };
            let arrived = arrival_of(&repo.path_of(&k.object_key())).unwrap_or_else(Utc::now);
            add(&repo, &mut inner, k, &m, arrived);
        }
        inner.synced_at = Some(Instant::now());
        Ok(())
    }

    fn sync_if_old(&self) -> Result<()> {
        let fresh = self
            .lock()
            .synced_at
            .is_some_and(|t| t.elapsed() < RESYNC_AFTER);
        if fresh {
            Ok(())
        } else {
            self.sync()
        }
    }

    /// A manifest the server just wrote.
    pub fn accepted(&self, key: ManifestKey, m: &Refs) -> Result<()> {
        let Some(repo) = self.repo()? else {
            return Ok(());
        };
        let arrived = arrival_of(&repo.path_of(&key.object_key())).unwrap_or_else(Utc::now);
        let mut inner = self.lock();
        add(&repo, &mut inner, key, m, arrived);
        Ok(())
    }

    /// A manifest an admin removed.
    pub fn removed(&self, key: &ManifestKey) {
        let mut inner = self.lock();
        if inner.manifests.remove(key).is_some() {
            for v in inner.views.values_mut() {
                v.stale = true;
            }
        }
    }

    /// An object a scoped token sent: readable by that scope from now on.
    pub fn sent(&self, scope: &str, key: &ObjectKey) {
        let mut inner = self.lock();
        // A view not built yet is built (keeping this) before its first use.
        let v = inner
            .views
            .entry(scope.to_string())
            .or_insert_with(|| View {
                stale: true,
                ..Default::default()
            });
        match key {
            ObjectKey::Chunk(id) => {
                v.sent_chunks.insert(*id);
            }
            ObjectKey::Index(id) => {
                v.sent_indexes.insert(*id);
            }
            _ => {}
        }
    }

    /// Which of `keys` the scope may read (blocking I/O: it may build the
    /// scope's view, and re-reads the disk once when something is not
    /// found in it).
    pub fn allowed(&self, scope: &str, keys: &[ObjectKey]) -> Result<Vec<bool>> {
        let check = |this: &Catalog| -> Result<Vec<bool>> {
            let repo = this.repo()?;
            let mut inner = this.lock();
            let view = ensure_view(repo.as_ref(), &mut inner, scope);
            Ok(keys.iter().map(|k| view.allows(k)).collect())
        };
        let first = check(self)?;
        if first.iter().all(|a| *a) {
            return Ok(first);
        }
        self.sync_if_old()?;
        check(self)
    }

    /// The newest backup the server holds of a volume (after a sync).
    pub fn newest(&self, vm: &str, volume: &str) -> Option<DateTime<Utc>> {
        self.lock()
            .manifests
            .keys()
            .filter(|k| k.vm == vm && k.volume == volume)
            .map(|k| k.time)
            .max()
    }

    /// The backups of one set of a VM (after a sync).
    pub fn set_members(&self, vm: &str, set: &str) -> Vec<(ManifestKey, Entry)> {
        self.lock()
            .manifests
            .iter()
            .filter(|(k, e)| k.vm == vm && e.set == set)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// When a backup arrived (syncing first when it is not known).
    pub fn arrived(&self, key: &ManifestKey) -> Result<Option<DateTime<Utc>>> {
        if let Some(e) = self.lock().manifests.get(key) {
            return Ok(Some(e.arrived));
        }
        self.sync()?;
        Ok(self.lock().manifests.get(key).map(|e| e.arrived))
    }

    /// Backups that arrived after `since`, with when (the immutability
    /// window's members).
    pub fn arrived_since(
        &self,
        since: DateTime<Utc>,
        visible: impl Fn(&str) -> bool,
    ) -> BTreeMap<ManifestKey, DateTime<Utc>> {
        self.lock()
            .manifests
            .iter()
            .filter(|(k, e)| e.arrived > since && visible(&k.vm))
            .map(|(k, e)| (k.clone(), e.arrived))
            .collect()
    }

    /// Resyncs (for callers about to decide on a new manifest).
    pub fn refresh(&self) -> Result<()> {
        self.sync_if_old()
    }
}

fn add(repo: &Repo, inner: &mut Inner, key: ManifestKey, m: &Refs, arrived: DateTime<Utc>) {
    let entry = Entry {
        set: m.set.clone(),
        role: m.role,
        definition: m.definition,
        index: m.index,
        arrived,
    };
    for (scope, view) in inner.views.iter_mut() {
        if !view.stale && scope_covers(scope, &key.vm) {
            view.add_backup(repo, &entry);
        }
    }
    inner.manifests.insert(key, entry);
}

/// The scope's view, built (or rebuilt after a removal) from the backups
/// it covers.
fn ensure_view<'a>(repo: Option<&Repo>, inner: &'a mut Inner, scope: &str) -> &'a View {
    let rebuild = inner.views.get(scope).is_none_or(|v| v.stale);
    if rebuild {
        let sent = inner
            .views
            .remove(scope)
            .map(|v| (v.sent_chunks, v.sent_indexes))
            .unwrap_or_default();
        let mut view = View {
            sent_chunks: sent.0,
            sent_indexes: sent.1,
            ..Default::default()
        };
        if let Some(repo) = repo {
            for (k, e) in inner.manifests.iter() {
                if scope_covers(scope, &k.vm) {
                    view.add_backup(repo, e);
                }
            }
        }
        inner.views.insert(scope.to_string(), view);
    }
    // Just inserted above when it was missing.
    inner.views.entry(scope.to_string()).or_default()
}
