//! Repository locks: how garbage collection stays safe while backups and
//! pushes run, on a local disk, behind `lifeboat serve` and on S3 (which
//! has no flock and, portably, no conditional writes).
//!
//! Every writer (a backup, a push or pull into a repository, a restore
//! drill's fetch) holds a *writer lock* for its whole run: a small document
//! `locks/writer-<id>.json` it rewrites every `REFRESH`. A gc marks while
//! writers run, but deletes only under a *gc lock*, and only while no live
//! writer lock exists. Both sides use the same two-step handshake: write
//! your own lock, then list the locks. A writer that sees a live gc lock
//! withdraws and waits; a gc that sees a live writer lock withdraws and
//! waits. Stores list what was written before (local disks, the server,
//! and S3 since its strong consistency), so of two racing parties at
//! least one sees the other and no writer ever runs beside a sweep.
//!
//! A lock not rewritten for `STALE` belongs to a dead process (kill -9, a
//! lost host) and no longer counts; one on this host whose process is gone
//! is dead at once. Ages use the store's clock: a party compares another
//! lock's time with its own lock's, written a moment before, so the hosts'
//! clocks never matter. A writer that could not refresh its lock for
//! longer than `STALE` (suspended, cut off) may have been outlived by a
//! sweep; `Held::check` tells it to re-check what it relies on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{DocKey, DocKind, DynStore};

pub const REFRESH: Duration = Duration::from_secs(60);
pub const STALE: Duration = Duration::from_secs(300);
/// Polling while waiting starts fast and backs off to this.
const POLL: Duration = Duration::from_secs(2);
const FIRST_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Writer,
    Gc,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    /// What the holder does ("backup web", "push to offsite").
    pub what: String,
    pub since: DateTime<Utc>,
    /// The kernel boot and pid namespace the pid belongs to: only a party
    /// in the same one may judge the holder dead by its pid (hostnames
    /// repeat across containers and machines; pids repeat across
    /// namespaces). Absent: only staleness counts.
    #[serde(default)]
    pub pid_space: Option<String>,
}

/// This process's boot id and pid namespace, when the system tells them.
fn pid_space() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), ns.display()))
}

/// The longest host name and description a lock may carry.
const MAX_LOCK_TEXT: usize = 512;

impl LockInfo {
    /// Reads a lock document: a lock this lifeboat understands, whose kind
    /// matches its name and whose texts are bounded, or None (junk: it is
    /// ignored and reported, never taken for a live holder).
    pub fn from_doc(key: &DocKey, body: &[u8]) -> Option<LockInfo> {
        let info: LockInfo = serde_json::from_slice(body).ok()?;
        let kind = match key {
            DocKey::Lock(n) if n.starts_with("gc-") => LockKind::Gc,
            DocKey::Lock(_) => LockKind::Writer,
            DocKey::Protection(_) => return None,
        };
        let bounded = |t: &str| !t.is_empty() && t.len() <= MAX_LOCK_TEXT;
        (info.kind == kind
            && bounded(&info.host)
            && bounded(&info.what)
            && info.pid_space.as_deref().is_none_or(bounded))
        .then_some(info)
    }

    fn new(kind: LockKind, what: &str) -> LockInfo {
        LockInfo {
            kind,
            host: crate::sys::hostname(),
            pid: std::process::id(),
            what: what.to_string(),
            since: Utc::now(),
            pid_space: pid_space(),
        }
    }

    /// "backup web (pid 42 on host-a since 2026-11-27 03:00 UTC)", escaped:
    /// a lock is read from a repository and is hostile text.
    pub fn describe(&self) -> String {
        crate::text::escape(&format!(
            "{} (pid {} on {} since {})",
            self.what,
            self.pid,
            self.host,
            self.since.format("%Y-%m-%d %H:%M:%S UTC")
        ))
        .into_owned()
    }
}

/// Another party's lock as seen now.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: DocKey,
    /// None: the document is not a lock this lifeboat understands (junk:
    /// written by something else, or damaged). Junk never counts as a
    /// holder — otherwise one junk file refreshed now and then would block
    /// every gc — and is reported so an admin can remove it.
    pub info: Option<LockInfo>,
    /// Since its last refresh, by the store's clock.
    pub age: Duration,
    pub live: bool,
}

impl Seen {
    pub fn kind(&self) -> LockKind {
        match &self.key {
            DocKey::Lock(n) if n.starts_with("gc-") => LockKind::Gc,
            _ => LockKind::Writer,
        }
    }

    pub fn describe(&self) -> String {
        match &self.info {
            Some(i) => i.describe(),
            None => format!("a junk lock document {} (ignored)", self.key),
        }
    }

    pub fn is_junk(&self) -> bool {
        self.info.is_none()
    }
}

/// A lock this process holds. Dropping it stops the refresh and removes
/// it in the background; `release` removes it and waits.
pub struct Held {
    store: DynStore,
    key: DocKey,
    refresher: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Held {
    /// Err when the lock could not be kept fresh: a gc may have taken the
    /// repository meanwhile, so the holder must not rely on objects it
    /// found before (a writer re-checks them before its manifest).
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::Busy {
                repo: self.store.describe(),
                holder: "this process could not refresh its lock for longer than it stays valid"
                    .into(),
                hint: "objects found earlier may have been collected; run the command again".into(),
            });
        }
        Ok(())
    }

    /// Whether this lock's document is still in the store: an admin may
    /// have broken it (`locks --break`), a restored bucket lost it. A
    /// writer that finds it gone re-checks what it relies on before its
    /// manifests.
    pub async fn present(&self) -> Result<bool> {
        Ok(self
            .store
            .list_docs(DocKind::Lock)
            .await?
            .iter()
            .any(|d| d.key == self.key))
    }

    /// Releases a lock that others may still hold a reference to (a plan
    /// shared with a confirmation dialog). Dropping alone removes the lock
    /// in the background, which a process about to exit may never run.
    pub async fn release_shared(&self) -> Result<()> {
        self.refresher.abort();
        self.store.delete_doc(&self.key).await
    }

    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        let (store, key) = (self.store.clone(), self.key.clone());
        std::mem::forget(self);
        store.delete_doc(&key).await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.refresher.abort();
        let (store, key) = (self.store.clone(), self.key.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store.delete_doc(&key).await;
            });
        }
    }
}

fn body(info: &LockInfo) -> Result<Bytes> {
    serde_json::to_vec(info)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(e.to_string()))
}

fn process_gone(info: &LockInfo) -> bool {
    let same_space = info.pid_space.is_some() && info.pid_space == pid_space();
    same_space
        && info.pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{}", info.pid)).exists()
}

/// Every lock but `own`, with ages against `own`'s time of writing.
pub async fn others(store: &DynStore, own: &DocKey) -> Result<Vec<Seen>> {
    let docs = store.list_docs(DocKind::Lock).await?;
    let now = docs
        .iter()
        .find(|d| &d.key == own)
        .map(|d| d.modified)
        .ok_or_else(|| Error::Busy {
            repo: store.describe(),
            holder: format!("its lock {own} vanished right after it was written"),
            hint: "another process removes locks; check for an old lifeboat or a cleanup job"
                .into(),
        })?;
    Ok(docs
        .into_iter()
        .filter(|d| &d.key != own)
        .map(|d| seen(d, now))
        .collect())
}

/// Every lock, for `lifeboat locks`: ages against a probe lock written
/// and removed at once (the store's clock), or, where this client may not
/// write (a read-only token), against this host's clock.
pub async fn list(store: &DynStore) -> Result<Vec<Seen>> {
    let probe = new_key(LockKind::Writer);
    let info = LockInfo::new(LockKind::Writer, "listing locks");
    if store.put_doc(&probe, body(&info)?).await.is_ok() {
        let seen = others(store, &probe).await;
        let _ = store.delete_doc(&probe).await;
        return seen;
    }
    let now = Utc::now();
    Ok(store
        .list_docs(DocKind::Lock)
        .await?
        .into_iter()
        .map(|d| seen(d, now))
        .collect())
}

fn seen(d: crate::store::Doc, now: DateTime<Utc>) -> Seen {
    let info = LockInfo::from_doc(&d.key, &d.body);
    let age = (now - d.modified).to_std().unwrap_or_default();
    let dead = info.as_ref().is_some_and(process_gone);
    Seen {
        live: info.is_some() && age < STALE && !dead,
        key: d.key,
        info,
        age,
    }
}

fn new_key(kind: LockKind) -> DocKey {
    let prefix = match kind {
        LockKind::Writer => "writer",
        LockKind::Gc => "gc",
    };
    DocKey::Lock(format!(
        "{prefix}-{}",
        hex::encode(rand::random::<[u8; 12]>())
    ))
}

/// Takes a lock of `kind`, waiting up to `wait` (polling).
///
/// A writer holds once no live gc lock exists; seeing one, it withdraws
/// and waits. A gc keeps its lock while it waits for running writers to
/// finish, so new writers queue behind it and a busy repository cannot
/// starve it; if they do not finish within `wait`, it withdraws. A second
/// gc is refused at once.
pub async fn acquire(store: &DynStore, kind: LockKind, what: &str, wait: Duration) -> Result<Held> {
    let info = LockInfo::new(kind, what);
    let key = new_key(kind);
    let deadline = tokio::time::Instant::now() + wait;
    let mut poll = FIRST_POLL;
    loop {
        store.put_doc(&key, body(&info)?).await?;
        let held = start(store, &key, &info);
        let blocked = loop {
            let seen = others(store, &key).await?;
            let live = |k: LockKind| -> Vec<String> {
                seen.iter()
                    .filter(|s| s.live && s.kind() == k)
                    .map(|s| s.describe())
                    .collect()
            };
            match kind {
                LockKind::Writer => break live(LockKind::Gc),
                LockKind::Gc => {
                    let gcs = live(LockKind::Gc);
                    if !gcs.is_empty() {
                        held.release().await?;
                        return Err(busy(
                            store,
                            kind,
                            gcs,
                            "another gc runs; one at a time is enough",
                        ));
                    }
                    let writers = live(LockKind::Writer);
                    if writers.is_empty() || tokio::time::Instant::now() >= deadline {
                        break writers;
                    }
                    tracing::info!(
                        "{}: waiting for {} to finish",
                        store.describe(),
                        writers.join("; ")
                    );
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(POLL);
                }
            }
        };
        if blocked.is_empty() {
            return Ok(held);
        }
        held.release().await?;
        if kind == LockKind::Gc || tokio::time::Instant::now() >= deadline {
            let hint = match kind {
                LockKind::Writer => "a garbage collection is deleting unreferenced objects; run again when it ends".to_string(),
                LockKind::Gc => format!(
                    "gc deletes only while no backup or push writes; run it again later, or after {} min if the holder was killed",
                    STALE.as_secs() / 60
                ),
            };
            return Err(busy(store, kind, blocked, &hint));
        }
        tracing::info!(
            "{} is busy ({}); waiting",
            store.describe(),
            blocked.join("; ")
        );
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(POLL);
    }
}

fn busy(store: &DynStore, _kind: LockKind, holders: Vec<String>, hint: &str) -> Error {
    Error::Busy {
        repo: store.describe(),
        holder: format!("held by {}", holders.join("; ")),
        hint: hint.to_string(),
    }
}

/// A written lock, refreshed from now on.
fn start(store: &DynStore, key: &DocKey, info: &LockInfo) -> Held {
    let lost = Arc::new(AtomicBool::new(false));
    let refresher = tokio::spawn(refresh(
        store.clone(),
        key.clone(),
        info.clone(),
        lost.clone(),
    ));
    Held {
        store: store.clone(),
        key: key.clone(),
        refresher,
        lost,
    }
}

async fn refresh(store: DynStore, key: DocKey, info: LockInfo, lost: Arc<AtomicBool>) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(REFRESH).await;
        let written = match body(&info) {
            Ok(b) => store.put_doc(&key, b).await.is_ok(),
            Err(_) => false,
        };
        match written {
            true => last_ok = tokio::time::Instant::now(),
            false => {
                if last_ok.elapsed() >= STALE - REFRESH {
                    lost.store(true, Ordering::SeqCst);
                }
                tracing::warn!("cannot refresh lock {key} on {}", store.describe());
            }
        }
    }
}

/// How long a writer waits for a gc that is deleting.
pub const WRITER_WAIT: Duration = Duration::from_secs(3600);

/// A writer lock for synchronous code (a backup running on a blocking
/// thread), refreshed by a tokio runtime: the surrounding one, or a small
/// one of its own.
pub struct BlockingWriter {
    held: Option<Held>,
    handle: tokio::runtime::Handle,
    _own: Option<tokio::runtime::Runtime>,
}

impl BlockingWriter {
    /// A writer lock on a local repository.
    pub fn local(root: &std::path::Path, what: &str) -> Result<BlockingWriter> {
        let store: DynStore = Arc::new(crate::store::local::LocalStore::new(root));
        let (handle, own) = match tokio::runtime::Handle::try_current() {
            Ok(h) => (h, None),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Internal(format!("cannot start a runtime: {e}")))?;
                (rt.handle().clone(), Some(rt))
            }
        };
        BlockingWriter::acquire(store, handle, own, what)
    }

    /// A writer lock on any store, through `handle`'s runtime.
    pub fn start(
        store: DynStore,
        handle: tokio::runtime::Handle,
        what: &str,
    ) -> Result<BlockingWriter> {
        BlockingWriter::acquire(store, handle, None, what)
    }

    fn acquire(
        store: DynStore,
        handle: tokio::runtime::Handle,
        own: Option<tokio::runtime::Runtime>,
        what: &str,
    ) -> Result<BlockingWriter> {
        let held = handle.block_on(acquire(&store, LockKind::Writer, what, WRITER_WAIT))?;
        Ok(BlockingWriter {
            held: Some(held),
            handle,
            _own: own,
        })
    }

    pub fn check(&self) -> Result<()> {
        self.held.as_ref().map_or(Ok(()), Held::check)
    }

    /// Whether the lock's document is still there (see `Held::present`).
    pub fn present(&self) -> Result<bool> {
        match &self.held {
            Some(h) => self.handle.block_on(h.present()),
            None => Ok(true),
        }
    }
}

impl Drop for BlockingWriter {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            if let Err(e) = self.handle.block_on(h.release()) {
                tracing::warn!("releasing the writer lock: {e}");
            }
        }
    }
}

/// Removes locks that are no longer live (their holders died), for a gc
/// that holds its own lock. Returns what it removed.
pub async fn remove_dead(store: &DynStore, own: &Held) -> Result<Vec<Seen>> {
    let dead: Vec<Seen> = others(store, &own.key)
        .await?
        .into_iter()
        .filter(|s| !s.live)
        .collect();
    for s in &dead {
        store.delete_doc(&s.key).await?;
    }
    Ok(dead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    #[tokio::test(flavor = "multi_thread")]
    async fn writers_share_and_gc_excludes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(dir.path()));
        let w1 = acquire(&store, LockKind::Writer, "backup a", Duration::ZERO)
            .await
            .unwrap();
        let w2 = acquire(&store, LockKind::Writer, "push b", Duration::ZERO)
            .await
            .unwrap();
        let err = acquire(&store, LockKind::Gc, "gc", Duration::ZERO)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("backup a") || err.contains("push b"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        w1.release().await.unwrap();
        w2.release().await.unwrap();
        let g = acquire(&store, LockKind::Gc, "gc", Duration::ZERO)
            .await
            .unwrap();
        let err = acquire(&store, LockKind::Writer, "backup c", Duration::ZERO)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("garbage collection"), "{err}");
        // A refused party leaves no lock behind.
        assert_eq!(list(&store).await.unwrap().len(), 1);
        drop(g);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(list(&store).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_dead_holder_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(dir.path()));
        // A writer on this host whose process is gone (pid beyond pid_max).
        let mut info = LockInfo::new(LockKind::Writer, "backup killed");
        info.pid = 4_194_305;
        store
            .put_doc(&DocKey::lock("writer-dead").unwrap(), body(&info).unwrap())
            .await
            .unwrap();
        // The same host name in another pid namespace (a container): its
        // pid says nothing here, so only staleness could make it dead.
        let mut other = LockInfo::new(LockKind::Writer, "backup in a container");
        other.pid = 4_194_305;
        other.pid_space = Some("another-boot/pid:[1]".into());
        let k = DocKey::lock("writer-c0").unwrap();
        store.put_doc(&k, body(&other).unwrap()).await.unwrap();
        let err = acquire(&store, LockKind::Gc, "gc", Duration::ZERO)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("backup in a container"), "{err}");
        store.delete_doc(&k).await.unwrap();
        let g = acquire(&store, LockKind::Gc, "gc", Duration::ZERO)
            .await
            .unwrap();
        let removed = remove_dead(&store, &g).await.unwrap();
        assert_eq!(removed.len(), 1);
        assert!(removed[0].describe().contains("backup killed"));
        g.release().await.unwrap();
    }
}
