//! Push and pull: one algorithm with the roles swapped, in two steps.
//! `plan` reads both sides and works out what the destination lacks (in
//! batches), fetching and verifying the selected manifests and their
//! indexes; nothing is written. `execute` moves the chunks with bounded
//! concurrency and retries, verifying every one read from the source, then
//! the indexes, then the manifests — byte for byte as fetched, so every
//! object keeps the name its content hashes to. Re-running after an
//! interruption moves only what is still missing.

pub mod select;
pub mod status;
mod transcode;
mod types;
pub mod verify;

pub(crate) use types::check_cancel;
use types::send_manifest;
pub use types::{PlanSummary, Refused, SyncOptions, SyncReport, TransferPlan};

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::format::repo_config::RepoConfig;
use crate::format::ManifestKey;
use crate::jobs::{CancellationToken, Progress};
use crate::repository::{fetch_index, fetch_manifest, list_manifests, read_config};
use crate::retry::with_retry;
use crate::store::{DynStore, ObjectKey, Store, Verified};

/// Works out what moving `selected` from `src` to `dst` takes. Reads both
/// sides; writes nothing.
pub async fn plan(
    src: &dyn Store,
    dst: &DynStore,
    selected: Vec<ManifestKey>,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<TransferPlan> {
    let mut summary = PlanSummary {
        source: src.describe(),
        destination: dst.describe(),
        manifests_selected: selected.len(),
        ..Default::default()
    };
    let lock = if opts.lock {
        progress.set_phase("locking the destination");
        let what = format!("copy from {}", src.describe());
        Some(std::sync::Arc::new(
            crate::lock::acquire(dst, crate::lock::LockKind::Writer, &what, opts.lock_wait).await?,
        ))
    } else {
        None
    };
    let dst: &dyn Store = dst.as_ref();
    progress.set_phase("checking repositories");
    let src_cfg = read_config(src).await?.ok_or_else(|| {
        Error::BadInput(format!("{} holds no lifeboat repository", src.describe()))
    })?;
    let dst_cfg = read_config(dst).await?;
    match key_mode(src, &src_cfg, dst, dst_cfg.as_ref())? {
        KeyMode::Same { sealed } => summary.sealed = sealed,
        KeyMode::Transcode => {
            if let Some(d) = &dst_cfg {
                if d.chunk_size != src_cfg.chunk_size {
                    return Err(Error::ChunkSizeMismatch {
                        left: src.describe(),
                        left_size: src_cfg.chunk_size,
                        right: dst.describe(),
                        right_size: d.chunk_size,
                    });
                }
                progress.set_phase("planning (re-encrypting)");
                return transcode::plan(src, dst, d, selected, opts, cancel, summary, lock).await;
            }
        }
    }
    let create_config = match dst_cfg {
        Some(d) if d.chunk_size != src_cfg.chunk_size => {
            return Err(Error::ChunkSizeMismatch {
                left: src.describe(),
                left_size: src_cfg.chunk_size,
                right: dst.describe(),
                right_size: d.chunk_size,
            })
        }
        Some(_) => None,
        None if opts.init => {
            let mut cfg = RepoConfig::new(src_cfg.chunk_size, src_cfg.compression.level)?;
            if let Some(enc) = &src_cfg.encryption {
                // The same key and slots: the copy opens as the original does.
                cfg = cfg.encrypted(enc.clone());
            }
            summary.creates_repository = true;
            Some(Verified::check(
                ObjectKey::Config,
                Bytes::from(cfg.to_bytes()?),
            )?)
        }
        None => {
            return Err(Error::BadInput(format!(
                "{} holds no lifeboat repository: pass --init to create one with chunk size {}",
                dst.describe(),
                src_cfg.chunk_size
            )))
        }
    };

    progress.set_phase("planning");
    let have: BTreeSet<ManifestKey> = if opts.manifests && create_config.is_none() {
        list_manifests(dst).await?.into_iter().collect()
    } else {
        BTreeSet::new()
    };
    let now = chrono::Utc::now();
    let all_selected = selected.clone();
    let mut manifests = Vec::new();
    let mut index_ids = BTreeSet::new();
    // VM definitions are chunks the manifests name directly.
    let mut definitions = BTreeMap::new();
    for k in selected.into_iter().filter(|k| !have.contains(k)) {
        check_cancel(cancel)?;
        if !k.is_plausible(now) {
            return Err(Error::corrupt(
                "manifest",
                k.id,
                format!("dated {}, in the future", k.time),
            ));
        }
        let (m, bytes) = fetch_manifest(src, &k).await?;
        index_ids.insert(m.index);
        if let Some(d) = m.definition {
            definitions.insert(d.chunk, d.size);
        }
        manifests.push((k, m, bytes));
    }
    manifests.sort_by_key(|a| (a.1.created_at, a.0.id));
    summary.manifests_to_send = if opts.manifests { manifests.len() } else { 0 };

    let index_keys: Vec<ObjectKey> = index_ids.iter().map(|i| ObjectKey::Index(*i)).collect();
    let missing_indexes: BTreeSet<ObjectKey> = if create_config.is_some() {
        index_keys.iter().cloned().collect()
    } else {
        with_retry(opts.retries, || dst.missing(&index_keys))
            .await?
            .into_iter()
            .collect()
    };
    let mut chunk_len = BTreeMap::new();
    let mut indexes = Vec::new();
    let mut index_of = BTreeMap::new();
    for id in &index_ids {
        check_cancel(cancel)?;
        let (idx, bytes) = fetch_index(src, id).await?;
        for (i, c) in idx.chunks.iter().enumerate() {
            if !c.is_zero() {
                chunk_len.insert(*c, idx.chunk_len(i));
            }
        }
        if missing_indexes.contains(bytes.key()) {
            indexes.push(bytes);
        }
        index_of.insert(*id, idx);
    }
    summary.indexes_to_send = indexes.len();
    chunk_len.extend(definitions);

    let chunk_keys: Vec<ObjectKey> = chunk_len.keys().map(|c| ObjectKey::Chunk(*c)).collect();
    let mut chunks = Vec::new();
    if create_config.is_some() {
        chunks.extend(chunk_len.iter().map(|(c, l)| (*c, *l)));
    } else {
        for batch in chunk_keys.chunks(2048) {
            check_cancel(cancel)?;
            for k in with_retry(opts.retries, || dst.missing(batch)).await? {
                if let ObjectKey::Chunk(id) = k {
                    if let Some(len) = chunk_len.get(&id) {
                        chunks.push((id, *len));
                    }
                }
            }
        }
    }
    summary.chunks_referenced = chunk_keys.len();
    summary.chunks_to_send = chunks.len();
    summary.chunks_already_there = chunk_keys.len() - chunks.len();
    summary.data_bytes_to_send = chunks.iter().map(|(_, l)| l).sum();
    Ok(TransferPlan {
        summary,
        create_config,
        manifests,
        indexes,
        index_of,
        chunks,
        send_manifests: opts.manifests,
        selected: all_selected,
        lock,
        transcode: None,
    })
}

enum KeyMode {
    /// Objects copied as they are (sealed or not).
    Same { sealed: bool },
    /// Different keys, or one side unencrypted: objects made again.
    Transcode,
}

/// How objects go from `src` to `dst`: as they are when both sides are
/// unencrypted or share one key (a new destination takes the source's
/// key), made again otherwise. Every key the transfer needs must be held:
/// the environment's, or a remote's `key_file`/`passphrase_file`.
fn key_mode(
    src: &dyn Store,
    src_cfg: &RepoConfig,
    dst: &dyn Store,
    dst_cfg: Option<&RepoConfig>,
) -> Result<KeyMode> {
    let dst_enc = dst_cfg.map(|c| c.encryption.as_ref());
    match (&src_cfg.encryption, dst_enc) {
        (None, None | Some(None)) => Ok(KeyMode::Same { sealed: false }),
        (Some(a), None) => unlocked(a, src).map(|_| KeyMode::Same { sealed: true }),
        (Some(a), Some(Some(b))) if a.key_id == b.key_id => {
            unlocked(a, src).map(|_| KeyMode::Same { sealed: true })
        }
        (a, Some(b)) => {
            if let Some(a) = a {
                unlocked(a, src)?;
            }
            if let Some(b) = b {
                unlocked(b, dst)?;
            }
            Ok(KeyMode::Transcode)
        }
    }
}

fn unlocked(enc: &crate::crypto::Encryption, at: &dyn Store) -> Result<()> {
    const HINT: &str = "for a remote whose key is not the local one's, name a file holding its recovery key or a passphrase as key_file or passphrase_file in its [remote.NAME] section";
    let key = &enc.key_id[..8.min(enc.key_id.len())];
    match crate::crypto::unlock_from_env(enc) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Locked(format!(
            "the repository at {} (key {key}; {HINT})",
            at.describe()
        ))),
        Err(Error::BadInput(why)) => Err(Error::BadInput(format!(
            "{} (key {key}): {why}; {HINT}",
            at.describe()
        ))),
        Err(e) => Err(e),
    }
}

/// Carries out a plan: chunks (each fetched, decoded and re-hashed before
/// it is written), then indexes, then manifests, so the destination never
/// holds a manifest whose data it lacks.
pub async fn execute(
    src: &dyn Store,
    dst: &dyn Store,
    plan: &TransferPlan,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<SyncReport> {
    if let Some(t) = &plan.transcode {
        return transcode::execute(src, dst, plan, t, opts, cancel, progress).await;
    }
    let started = std::time::Instant::now();
    let s = &plan.summary;
    let mut report = SyncReport::for_plan(s);
    if let Some(cfg) = &plan.create_config {
        with_retry(opts.retries, || dst.put_if_absent(cfg)).await?;
    }
    progress.set_phase("sending chunks");
    progress.set_job_total_if_unset(s.data_bytes_to_send);
    progress.set_totals(s.data_bytes_to_send, plan.chunks.len() as u64);
    let sent: Vec<u64> = futures::stream::iter(plan.chunks.iter().copied())
        .map(|(id, raw_len)| async move {
            check_cancel(cancel)?;
            let key = ObjectKey::Chunk(id);
            let data = with_retry(opts.retries, || src.get(&key))
                .await?
                .ok_or_else(|| key.missing())?;
            let n = data.len() as u64;
            let obj = Verified::check_blocking(key, data).await?;
            check_cancel(cancel)?;
            with_retry(opts.retries, || dst.put_new(&obj)).await?;
            progress.add(raw_len, 1);
            Ok::<u64, Error>(n)
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    report.chunks_sent = sent.len();
    report.bytes_sent = sent.iter().sum();

    progress.set_phase("sending indexes");
    for obj in &plan.indexes {
        check_cancel(cancel)?;
        report.bytes_sent += obj.data().len() as u64;
        with_retry(opts.retries, || dst.put_if_absent(obj)).await?;
        report.indexes_sent += 1;
    }
    with_retry(opts.retries, || dst.commit()).await?;
    if let Some(l) = &plan.lock {
        l.check()?;
        if plan.send_manifests && !with_retry(opts.retries, || l.present()).await? {
            data_still_there(dst, plan, opts).await?;
        }
    }
    if plan.send_manifests {
        progress.set_phase("sending manifests");
        for (key, _, obj) in &plan.manifests {
            check_cancel(cancel)?;
            send_manifest(dst, key, obj, opts, &mut report).await?;
        }
        // Protection travels with the backups it protects.
        let keys: Vec<ManifestKey> = plan.selected.clone();
        report.protections_sent = crate::protect::copy(src, dst, &keys).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// After the writer lock vanished, a gc may have swept objects the plan
/// found "already there": every object the manifests need must still be
/// in the destination before one of them is written.
async fn data_still_there(dst: &dyn Store, plan: &TransferPlan, opts: &SyncOptions) -> Result<()> {
    let mut keys: Vec<ObjectKey> = Vec::new();
    for (id, index) in &plan.index_of {
        keys.push(ObjectKey::Index(*id));
        keys.extend(
            index
                .chunks
                .iter()
                .filter(|c| !c.is_zero())
                .map(|c| ObjectKey::Chunk(*c)),
        );
    }
    keys.sort();
    keys.dedup();
    let mut gone = 0usize;
    for batch in keys.chunks(1000) {
        gone += with_retry(opts.retries, || dst.missing(batch)).await?.len();
    }
    if gone > 0 {
        return Err(Error::Remote {
            remote: dst.describe(),
            reason: format!(
                "this transfer's writer lock vanished (broken, or lost with the store) and {gone} objects it relies on were removed meanwhile; no manifest was written: run it again"
            ),
            transient: false,
        });
    }
    tracing::warn!(
        "{}: this transfer's writer lock vanished; every object its manifests need is still there",
        dst.describe()
    );
    Ok(())
}

/// Plans and executes in one go (the CLI's push and pull).
pub async fn transfer(
    src: &dyn Store,
    dst: &DynStore,
    selected: Vec<ManifestKey>,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<SyncReport> {
    let started = std::time::Instant::now();
    let p = plan(src, dst, selected, opts, cancel, progress).await?;
    let done = execute(src, dst.as_ref(), &p, opts, cancel, progress).await;
    p.finish().await;
    let mut report = done?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Manifest;
    use crate::store::memory::Faults;
    use crate::testkit::{self, image, memory, memory_with, put_set};
    use std::time::Duration;

    async fn source() -> (DynStore, Vec<(ManifestKey, Manifest)>) {
        let (_, src) = memory();
        testkit::init(src.as_ref()).await;
        let mut all = put_set(
            src.as_ref(),
            "web",
            "a1",
            "2026-12-01T02:00:00Z",
            &[("root", image(1, 4)), ("data", image(2, 4))],
        )
        .await;
        all.extend(
            put_set(
                src.as_ref(),
                "web",
                "b2",
                "2026-12-02T02:00:00Z",
                &[("root", image(3, 4)), ("data", image(2, 4))],
            )
            .await,
        );
        (src, all)
    }

    fn opts() -> SyncOptions {
        SyncOptions {
            init: true,
            retries: 2,
            concurrency: 2,
            lock_wait: Duration::from_secs(5),
            ..Default::default()
        }
    }

    async fn push(src: &DynStore, dst: &DynStore, keys: &[ManifestKey]) -> Result<SyncReport> {
        transfer(
            src.as_ref(),
            dst,
            keys.to_vec(),
            &opts(),
            &testkit::cancel(),
            &testkit::progress(),
        )
        .await
    }

    async fn same_backups(src: &DynStore, dst: &DynStore, all: &[(ManifestKey, Manifest)]) {
        for (_, m) in all {
            assert_eq!(
                testkit::read_back(dst.as_ref(), m).await.unwrap(),
                testkit::read_back(src.as_ref(), m).await.unwrap()
            );
        }
    }

    #[tokio::test]
    async fn a_full_destination_commits_no_manifest_and_the_next_run_sends_only_the_rest() {
        let (src, all) = source().await;
        let keys: Vec<ManifestKey> = all.iter().map(|(k, _)| k.clone()).collect();
        // The 6th object put fails for good (a full disk), half-way through
        // the chunks.
        let (mem, dst) = memory_with(Faults {
            full_from: Some(6),
            ..Default::default()
        });
        let e = push(&src, &dst, &keys).await.unwrap_err();
        assert!(matches!(e, Error::DiskFull(_)), "{e}");
        assert!(
            list_manifests(dst.as_ref()).await.unwrap().is_empty(),
            "a manifest was written before its data"
        );
        let stored = dst.list("chunks/").await.unwrap().len();
        assert!(stored > 0 && stored < 12, "{stored} chunks stored");
        mem.set_faults(Faults::default());
        let r = push(&src, &dst, &keys).await.unwrap();
        assert_eq!(r.manifests_sent, 4);
        // 12 distinct chunks in all (data is the same in both sets): the
        // ones stored before the disk filled are not sent again.
        assert_eq!(r.chunks_sent, 12 - stored);
        same_backups(&src, &dst, &all).await;
    }

    #[tokio::test]
    async fn transient_put_failures_are_retried() {
        let (src, all) = source().await;
        let keys: Vec<ManifestKey> = all.iter().map(|(k, _)| k.clone()).collect();
        let (mem, dst) = memory_with(Faults {
            fail_puts: vec![3, 4, 9],
            ..Default::default()
        });
        let r = push(&src, &dst, &keys).await.unwrap();
        assert_eq!(r.manifests_sent, 4);
        assert!(mem.puts() > testkit::all_keys(dst.as_ref()).await.len());
        same_backups(&src, &dst, &all).await;
    }

    #[tokio::test]
    async fn a_torn_write_is_caught_by_the_next_reader() {
        let (src, all) = source().await;
        let keys: Vec<ManifestKey> = all.iter().map(|(k, _)| k.clone()).collect();
        // The destination keeps half of its 3rd put and says it stored it.
        let (_, dst) = memory_with(Faults {
            tear_puts: vec![3],
            ..Default::default()
        });
        push(&src, &dst, &keys).await.unwrap();
        // Pulling from it into a third repository verifies every chunk:
        // the torn one stops the pull, naming it, before any manifest.
        let (_, third) = memory();
        let e = push(&dst, &third, &keys).await.unwrap_err();
        assert!(
            matches!(&e, Error::CorruptObject { kind, .. } if *kind == "chunk"),
            "{e}"
        );
        assert!(list_manifests(third.as_ref()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_listing_that_lags_a_write_is_caught_up_by_the_next_run() {
        let (src_mem, src) = {
            let (m, s) = memory();
            (m, s)
        };
        testkit::init(src.as_ref()).await;
        let all = put_set(
            src.as_ref(),
            "web",
            "a1",
            "2026-12-01T02:00:00Z",
            &[("root", image(1, 2))],
        )
        .await;
        let newer = put_set(
            src.as_ref(),
            "web",
            "b2",
            "2026-12-02T02:00:00Z",
            &[("root", image(2, 2))],
        )
        .await;
        // The source's listing does not show its newest object yet.
        src_mem.set_faults(Faults {
            list_lag: 1,
            ..Default::default()
        });
        let listed = list_manifests(src.as_ref()).await.unwrap();
        assert_eq!(listed, vec![all[0].0.clone()]);
        let (_, dst) = memory();
        push(&src, &dst, &listed).await.unwrap();
        // Once the listing shows it, the next run sends what is missing.
        src_mem.set_faults(Faults::default());
        let listed = list_manifests(src.as_ref()).await.unwrap();
        let r = push(&src, &dst, &listed).await.unwrap();
        assert_eq!(r.manifests_sent, 1);
        assert_eq!(r.chunks_sent, 2);
        same_backups(&src, &dst, &[all, newer].concat()).await;
    }

    /// A writer whose lock vanished (broken by an admin, or lost with the
    /// bucket) while a gc swept the objects it had found "already there"
    /// must not write manifests that name missing data.
    #[tokio::test]
    async fn a_push_whose_lock_vanished_under_a_gc_writes_no_broken_backup() {
        let (src, all) = source().await;
        let keys: Vec<ManifestKey> = all.iter().map(|(k, _)| k.clone()).collect();
        let (mem, dst) = memory();
        testkit::init(dst.as_ref()).await;
        // An earlier push was cut off after its data: orphans a gc may take.
        let objs: Vec<testkit::VolumeObjects> = all
            .iter()
            .map(|(_, m)| {
                let data = futures::executor::block_on(testkit::read_back(src.as_ref(), m))
                    .expect("source readable");
                testkit::volume(
                    &m.vm.name,
                    &m.set,
                    &m.created_at.to_rfc3339(),
                    &m.volume.name,
                    &data,
                )
            })
            .collect();
        testkit::put_data(dst.as_ref(), &objs).await;
        let p = plan(
            src.as_ref(),
            &dst,
            keys.clone(),
            &opts(),
            &testkit::cancel(),
            &testkit::progress(),
        )
        .await
        .unwrap();
        assert!(p.chunks.is_empty(), "the data was already there");
        for d in mem_docs(&mem).await {
            mem.vanish_doc(&d);
        }
        let gc = crate::gc::run(
            &dst,
            None,
            &crate::gc::GcOptions {
                wait: Duration::from_secs(1),
                ..Default::default()
            },
            &testkit::cancel(),
            &testkit::progress(),
        )
        .await
        .unwrap();
        assert!(gc.chunks_deleted > 0, "the gc took the orphans");
        let e = execute(
            src.as_ref(),
            dst.as_ref(),
            &p,
            &opts(),
            &testkit::cancel(),
            &testkit::progress(),
        )
        .await
        .unwrap_err();
        p.finish().await;
        assert!(e.to_string().contains("run it again"), "{e}");
        assert!(list_manifests(dst.as_ref()).await.unwrap().is_empty());
        // Run again: everything is sent and readable.
        push(&src, &dst, &keys).await.unwrap();
        same_backups(&src, &dst, &all).await;
    }

    async fn mem_docs(mem: &crate::store::memory::MemoryStore) -> Vec<crate::store::DocKey> {
        mem.list_docs(crate::store::DocKind::Lock)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.key)
            .collect()
    }
}
