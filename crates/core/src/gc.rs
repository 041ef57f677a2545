//! Garbage collection: removes chunks and indexes no manifest reaches, and
//! temp files a killed process left. Safe beside running backups and
//! pushes on every store (see `lock` for the handshake):
//!
//! 1. **Mark**, beside running writers: list every manifest, read and
//!    verify each and every index they name, and list every chunk and
//!    index. Unreferenced objects are candidates. A manifest or index that
//!    cannot be read stops the gc: deciding what is garbage from a partial
//!    picture could delete what a backup needs.
//! 2. **Sweep**, under the gc lock (taken only while no writer runs, and
//!    keeping writers out until it ends): list the manifests again and
//!    un-condemn whatever those written since the mark reference, remove
//!    dead locks, then delete the candidates and stale temp files.
//!
//! A writer that found an object "already there" during the mark holds its
//! writer lock until its manifest is written, so either that manifest is
//! seen by the re-list, or the writer is dead and its manifest never comes.
//! Interrupted at any point, the repository stays whole: every candidate is
//! unreferenced, so deleting any subset of them breaks nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::manifest::Refs;
use crate::format::{Id, Manifest, ManifestKey};
use crate::jobs::{CancellationToken, Progress};
use crate::lock::{self, LockKind};
use crate::repository::fetch_index_refs;
use crate::retry::with_retry;
use crate::store::{DynStore, ObjectKey};
use crate::sync::check_cancel as check;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// How long the sweep waits for running writers to finish.
    pub wait: Duration,
    /// Temp files younger than this may belong to a live writer.
    pub tmp_age: Duration,
    pub concurrency: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            wait: Duration::from_secs(600),
            tmp_age: Duration::from_secs(3600),
            concurrency: 16,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub repository: String,
    pub dry_run: bool,
    pub manifests: usize,
    pub indexes_kept: usize,
    pub chunks_kept: usize,
    pub indexes_deleted: usize,
    pub chunks_deleted: usize,
    /// Stored bytes of the deleted objects, when the store tells sizes.
    pub bytes_freed: Option<u64>,
    pub tmp_files_deleted: usize,
    pub tmp_bytes_freed: u64,
    /// Locks of dead processes that were removed.
    pub dead_locks_removed: Vec<String>,
    /// Candidates spared because a manifest written during the mark
    /// referenced them.
    pub rescued: usize,
    pub seconds: f64,
}

/// What the mark phase found.
struct Marked {
    manifests: BTreeSet<ManifestKey>,
    indexes: HashSet<Id>,
    chunks: HashSet<Id>,
}

/// Every manifest key, including those a listing would skip as dated in
/// the future: gc must not treat their objects as garbage.
async fn manifest_keys(store: &DynStore) -> Result<BTreeSet<ManifestKey>> {
    let keys = with_retry(5, || store.list("manifests/")).await?;
    Ok(keys
        .into_iter()
        .filter_map(|k| match k {
            ObjectKey::Manifest(m) => Some(m),
            _ => None,
        })
        .collect())
}

/// Reads `keys` and the indexes they name (not already in `marked`),
/// adding what they reference. Any unreadable manifest or index is an
/// error that names it.
async fn mark(
    store: &DynStore,
    keys: impl IntoIterator<Item = ManifestKey>,
    marked: &mut Marked,
    opts: &GcOptions,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    let keys: Vec<ManifestKey> = keys
        .into_iter()
        .filter(|k| !marked.manifests.contains(k))
        .collect();
    let refuse = |what: String, e: Error| {
        Error::BadInput(format!(
        "gc stopped: {what} cannot be read ({e}); nothing was deleted. Run `lifeboat verify` to see what it breaks, then remove or restore the damaged object"
    ))
    };
    // References only (`refs_of`): an encrypted repository is collected
    // without its key, e.g. by the admin of the server that holds it.
    let manifests: Vec<(ManifestKey, Refs)> = futures::stream::iter(keys)
        .map(|k| async move {
            check(cancel)?;
            let okey = ObjectKey::Manifest(k.clone());
            let data = with_retry(5, || store.get(&okey))
                .await?
                .ok_or_else(|| okey.missing());
            // A manifest pruned since the listing is simply gone.
            let data = match data {
                Ok(d) => d,
                Err(_) => return Ok(None),
            };
            let m = Manifest::refs_of(&k, &data)
                .map_err(|e| refuse(format!("manifest {}", k.object_key()), e))?;
            progress.add(1, 1);
            Ok::<_, Error>(Some((k, m)))
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await?;
    let new_indexes: Vec<Id> = manifests
        .iter()
        .map(|(_, m)| m.index)
        .filter(|id| !marked.indexes.contains(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for (k, m) in manifests {
        if let Some(d) = m.definition {
            marked.chunks.insert(d.chunk);
        }
        marked.manifests.insert(k);
    }
    let chunk_lists: Vec<Vec<Id>> = futures::stream::iter(new_indexes.iter().copied())
        .map(|id| async move {
            check(cancel)?;
            let idx = fetch_index_refs(store.as_ref(), &id)
                .await
                .map_err(|e| refuse(format!("index {}", id.short()), e))?;
            Ok::<_, Error>(idx.chunks)
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    marked.indexes.extend(new_indexes);
    for list in chunk_lists {
        marked
            .chunks
            .extend(list.into_iter().filter(|c| !c.is_zero()));
    }
    Ok(())
}

/// Runs a gc on `store`; `tmp_root` is the repository directory when the
/// store is local (temp files exist only there).
pub async fn run(
    store: &DynStore,
    tmp_root: Option<&std::path::Path>,
    opts: &GcOptions,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<GcReport> {
    let started = std::time::Instant::now();
    let mut report = GcReport {
        repository: store.describe(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    progress.set_phase("listing objects");
    let (chunks, indexes) = tokio::try_join!(
        with_retry(5, || store.list("chunks/")),
        with_retry(5, || store.list("indexes/")),
    )?;
    progress.set_phase("marking what backups reference");
    let mut marked = Marked {
        manifests: BTreeSet::new(),
        indexes: HashSet::new(),
        chunks: HashSet::new(),
    };
    let keys = manifest_keys(store).await?;
    progress.set_totals(keys.len() as u64, keys.len() as u64);
    mark(store, keys, &mut marked, opts, cancel, progress).await?;
    let mut candidates = condemned(&chunks, &indexes, &marked);
    let held = if opts.dry_run {
        None
    } else {
        progress.set_phase("waiting for running backups and pushes to finish");
        let held = lock::acquire(store, LockKind::Gc, "garbage collection", opts.wait).await?;
        progress.set_phase("checking for backups written meanwhile");
        report.dead_locks_removed = lock::remove_dead(store, &held)
            .await?
            .iter()
            .map(|s| s.describe())
            .collect();
        let before = candidates.len();
        mark(
            store,
            manifest_keys(store).await?,
            &mut marked,
            opts,
            cancel,
            progress,
        )
        .await?;
        candidates.retain(|k| !referenced(k, &marked));
        report.rescued = before - candidates.len();
        Some(held)
    };
    report.manifests = marked.manifests.len();
    report.indexes_kept = indexes.len()
        - candidates
            .iter()
            .filter(|k| matches!(k, ObjectKey::Index(_)))
            .count();
    report.chunks_kept = chunks.len()
        - candidates
            .iter()
            .filter(|k| matches!(k, ObjectKey::Chunk(_)))
            .count();
    let sizes = store_sizes(store, tmp_root, &candidates).await;
    report.bytes_freed = sizes;
    if let Some(held) = &held {
        progress.set_phase("deleting unreferenced objects");
        progress.set_totals(candidates.len() as u64, candidates.len() as u64);
        // Indexes first: an index never outlives chunks it names that are kept.
        let (idx, chk): (Vec<ObjectKey>, Vec<ObjectKey>) = candidates
            .iter()
            .cloned()
            .partition(|k| matches!(k, ObjectKey::Index(_)));
        for batch in [idx, chk] {
            futures::stream::iter(batch)
                .map(|k| async move {
                    check(cancel)?;
                    held.check()?;
                    with_retry(5, || store.delete(&k)).await?;
                    progress.add(1, 1);
                    Ok::<_, Error>(())
                })
                .buffer_unordered(opts.concurrency.max(1))
                .try_collect::<Vec<()>>()
                .await?;
        }
    }
    for k in &candidates {
        match k {
            ObjectKey::Index(_) => report.indexes_deleted += 1,
            ObjectKey::Chunk(_) => report.chunks_deleted += 1,
            _ => {}
        }
    }
    if let Some(root) = tmp_root {
        let (n, bytes) = stale_temp_files(root, opts.tmp_age, !opts.dry_run)?;
        report.tmp_files_deleted = n;
        report.tmp_bytes_freed = bytes;
    }
    if let Some(held) = held {
        held.release().await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn referenced(k: &ObjectKey, m: &Marked) -> bool {
    match k {
        ObjectKey::Chunk(id) => m.chunks.contains(id),
        ObjectKey::Index(id) => m.indexes.contains(id),
        _ => true,
    }
}

fn condemned(chunks: &[ObjectKey], indexes: &[ObjectKey], m: &Marked) -> Vec<ObjectKey> {
    chunks
        .iter()
        .chain(indexes)
        .filter(|k| !referenced(k, m))
        .cloned()
        .collect()
}

/// The stored size of the candidates, where the store can tell cheaply.
async fn store_sizes(
    store: &DynStore,
    local_root: Option<&std::path::Path>,
    keys: &[ObjectKey],
) -> Option<u64> {
    if let Some(root) = local_root {
        return Some(
            keys.iter()
                .filter_map(|k| std::fs::metadata(root.join(k.key())).ok())
                .map(|m| m.len())
                .sum(),
        );
    }
    let sizes: HashMap<ObjectKey, u64> = store.sizes().await.ok()??;
    Some(keys.iter().filter_map(|k| sizes.get(k)).sum())
}

/// Temp files (`tmp/*` and `.NAME.tmp-*` beside objects) older than `age`:
/// counted, and removed when `delete`.
pub fn stale_temp_files(
    root: &std::path::Path,
    age: Duration,
    delete: bool,
) -> Result<(usize, u64)> {
    let mut found = (0usize, 0u64);
    let now = std::time::SystemTime::now();
    let mut visit = |path: &std::path::Path, meta: &std::fs::Metadata| -> Result<()> {
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|a| a >= age);
        if old {
            if delete {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(Error::io("deleting", path, e)),
                }
            }
            found.0 += 1;
            found.1 += meta.len();
        }
        Ok(())
    };
    walk_temp(&root.join("tmp"), true, &mut visit)?;
    for dir in [
        "chunks",
        "indexes",
        "manifests",
        "locks",
        "protected",
        "state",
    ] {
        walk_temp(&root.join(dir), false, &mut visit)?;
    }
    // The repository config's own temp files sit at the top.
    walk_shallow(root, &mut visit)?;
    Ok(found)
}

type Visit<'a> = dyn FnMut(&std::path::Path, &std::fs::Metadata) -> Result<()> + 'a;

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn walk_shallow(dir: &std::path::Path, visit: &mut Visit<'_>) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(meta) = e.metadata() {
            if meta.is_file() && is_temp_name(&name) {
                visit(&e.path(), &meta)?;
            }
        }
    }
    Ok(())
}

fn walk_temp(dir: &std::path::Path, all: bool, visit: &mut Visit<'_>) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| Error::io("listing", dir, e))?;
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            walk_temp(&e.path(), all, visit)?;
        } else if meta.is_file() && (all || is_temp_name(&e.file_name().to_string_lossy())) {
            visit(&e.path(), &meta)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::Faults;
    use crate::testkit::{self, image, memory, put_set};

    fn opts(dry_run: bool) -> GcOptions {
        GcOptions {
            dry_run,
            wait: Duration::from_secs(1),
            ..Default::default()
        }
    }

    async fn gc(store: &DynStore, dry_run: bool) -> Result<GcReport> {
        run(
            store,
            None,
            &opts(dry_run),
            &testkit::cancel(),
            &testkit::progress(),
        )
        .await
    }

    /// Two sets sharing their data volume; the older one's manifests gone.
    async fn pruned_repo() -> (
        std::sync::Arc<crate::store::memory::MemoryStore>,
        DynStore,
        Vec<(ManifestKey, Manifest)>,
    ) {
        let (mem, store) = memory();
        testkit::init(store.as_ref()).await;
        let old = put_set(
            store.as_ref(),
            "web",
            "a1",
            "2026-12-01T02:00:00Z",
            &[("root", image(1, 3)), ("data", image(2, 3))],
        )
        .await;
        let new = put_set(
            store.as_ref(),
            "web",
            "b2",
            "2026-12-02T02:00:00Z",
            &[("root", image(3, 3)), ("data", image(2, 3))],
        )
        .await;
        for (k, _) in &old {
            store.delete(&ObjectKey::Manifest(k.clone())).await.unwrap();
        }
        (mem, store, new)
    }

    #[tokio::test]
    async fn gc_removes_only_what_no_manifest_reaches() {
        let (_, store, kept) = pruned_repo().await;
        let before = testkit::all_keys(store.as_ref()).await;
        let dry = gc(&store, true).await.unwrap();
        assert_eq!((dry.chunks_deleted, dry.indexes_deleted), (3, 1));
        assert_eq!(testkit::all_keys(store.as_ref()).await, before);
        let r = gc(&store, false).await.unwrap();
        // The old root's 3 chunks and its index; the data volume's chunks
        // and index (the same bytes in both sets) stay.
        assert_eq!((r.chunks_deleted, r.indexes_deleted), (3, 1));
        assert_eq!(r.chunks_kept, 6);
        for (_, m) in &kept {
            testkit::read_back(store.as_ref(), m).await.unwrap();
        }
        // Nothing left to collect.
        let again = gc(&store, false).await.unwrap();
        assert_eq!((again.chunks_deleted, again.indexes_deleted), (0, 0));
    }

    #[tokio::test]
    async fn a_manifest_gc_cannot_read_stops_it_before_any_delete() {
        let (mem, store, kept) = pruned_repo().await;
        let before = testkit::all_keys(store.as_ref()).await;
        mem.corrupt(
            &ObjectKey::Manifest(kept[0].0.clone()),
            bytes::Bytes::from_static(b"{\"not\": \"a manifest\"}"),
        );
        let e = gc(&store, false).await.unwrap_err().to_string();
        assert!(
            e.contains("is corrupt") && e.contains("nothing was deleted"),
            "{e}"
        );
        assert_eq!(testkit::all_keys(store.as_ref()).await, before);
    }

    #[tokio::test]
    async fn a_live_writer_keeps_gc_from_deleting() {
        let (_, store, _) = pruned_repo().await;
        let before = testkit::all_keys(store.as_ref()).await;
        let writer = lock::acquire(&store, LockKind::Writer, "a push", Duration::from_secs(1))
            .await
            .unwrap();
        let e = gc(&store, false).await.unwrap_err();
        assert!(matches!(e, Error::Busy { .. }), "{e}");
        assert_eq!(testkit::all_keys(store.as_ref()).await, before);
        writer.release().await.unwrap();
        let r = gc(&store, false).await.unwrap();
        assert_eq!(r.chunks_deleted, 3);
    }

    #[tokio::test]
    async fn transient_read_failures_during_the_mark_are_retried() {
        let (mem, store, kept) = pruned_repo().await;
        mem.set_faults(Faults {
            fail_gets: vec![1, 2, 4],
            ..Default::default()
        });
        let r = gc(&store, false).await.unwrap();
        assert_eq!(r.chunks_deleted, 3);
        for (_, m) in &kept {
            testkit::read_back(store.as_ref(), m).await.unwrap();
        }
    }
}
