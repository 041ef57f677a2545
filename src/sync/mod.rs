//! Push and pull: one algorithm with the roles swapped. Plan what the
//! destination lacks (in batches), move chunks with bounded concurrency and
//! retries, verifying every object read from the source, then indexes, then
//! manifests. Re-running after an interruption moves only what is missing.

pub mod select;
pub mod status;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};
use crate::repo::{chunk, Id, Index, Manifest, ManifestKey, Repo, RepoConfig, CONFIG_FILE};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub concurrency: usize,
    pub retries: u32,
    /// Create the destination repository (with the source's chunk size).
    pub init: bool,
    /// Copy manifests too (push/pull); restore --from copies only data.
    pub manifests: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            concurrency: 8,
            retries: 5,
            init: false,
            manifests: true,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub destination: String,
    pub manifests_selected: usize,
    pub manifests_sent: usize,
    pub indexes_sent: usize,
    pub chunks_sent: usize,
    pub chunks_skipped: usize,
    /// Bytes of objects as stored (compressed), i.e. what crossed the wire.
    pub bytes_sent: u64,
    pub seconds: f64,
}

/// Reads and verifies a store's repository config.
pub async fn read_config(store: &dyn Store) -> Result<Option<RepoConfig>> {
    match with_retry(5, || store.get(CONFIG_FILE)).await? {
        Some(data) => Ok(Some(RepoConfig::parse(
            std::path::Path::new(&store.describe()),
            &data,
        )?)),
        None => Ok(None),
    }
}

/// Every manifest key a store lists.
pub async fn list_manifests(store: &dyn Store) -> Result<Vec<ManifestKey>> {
    let keys = with_retry(5, || store.list("manifests/")).await?;
    let mut out: Vec<ManifestKey> = keys
        .iter()
        .filter_map(|k| ManifestKey::parse(k).ok())
        .collect();
    out.sort_by_key(|a| (a.time, a.id));
    Ok(out)
}

/// Every manifest a store holds, fetched and verified (16 at a time).
/// Damaged ones are skipped with a warning, as locally.
pub async fn load_manifests(store: &dyn Store) -> Result<Vec<(ManifestKey, Manifest)>> {
    let keys = list_manifests(store).await?;
    let loaded: Vec<Option<(ManifestKey, Manifest)>> = futures::stream::iter(keys)
        .map(|k| async move {
            match fetch_manifest(store, &k).await {
                Ok(m) => Ok(Some((k, m))),
                Err(e @ (Error::CorruptObject { .. } | Error::MissingObject { .. })) => {
                    tracing::warn!("skipping {} on {}: {e}", k.object_key(), store.describe());
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut out: Vec<_> = loaded.into_iter().flatten().collect();
    out.sort_by_key(|(k, m)| (m.created_at, k.id));
    Ok(out)
}

pub async fn fetch_manifest(store: &dyn Store, key: &ManifestKey) -> Result<Manifest> {
    let okey = key.object_key();
    let data = with_retry(5, || store.get(&okey))
        .await?
        .ok_or_else(|| Error::MissingObject {
            kind: "manifest",
            id: key.id.to_hex(),
        })?;
    Manifest::from_bytes(key, &data)
}

pub async fn fetch_index(store: &dyn Store, id: &Id) -> Result<(Index, Bytes)> {
    let ikey = Repo::index_key(id);
    let data = with_retry(5, || store.get(&ikey))
        .await?
        .ok_or_else(|| Error::MissingObject {
            kind: "index",
            id: id.to_hex(),
        })?;
    let idx = Index::from_bytes(Some(id), &data)?;
    Ok((idx, data))
}

/// Retries transient failures with exponential backoff (0.2 s, 0.4 s, …).
pub async fn with_retry<T, F, Fut>(retries: u32, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < retries => {
                let wait = Duration::from_millis(200 << attempt.min(6));
                tracing::warn!("{e}; retrying in {:.1}s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Copies the given manifests (and everything they reference) from `src`
/// to `dst`.
pub async fn transfer(
    src: &dyn Store,
    dst: &dyn Store,
    selected: Vec<ManifestKey>,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<SyncReport> {
    let started = std::time::Instant::now();
    let mut report = SyncReport {
        source: src.describe(),
        destination: dst.describe(),
        manifests_selected: selected.len(),
        ..Default::default()
    };
    progress.set_phase("checking repositories");
    let src_cfg = read_config(src).await?.ok_or_else(|| {
        Error::Invalid(format!("{} holds no lifeboat repository", src.describe()))
    })?;
    match read_config(dst).await? {
        Some(d) if d.chunk_size != src_cfg.chunk_size => {
            return Err(Error::ChunkSizeMismatch {
                left: src.describe(),
                left_size: src_cfg.chunk_size,
                right: dst.describe(),
                right_size: d.chunk_size,
            })
        }
        Some(_) => {}
        None if opts.init => {
            let cfg = RepoConfig::new(src_cfg.chunk_size, src_cfg.compression.level)?;
            let mut bytes =
                serde_json::to_vec_pretty(&cfg).map_err(|e| Error::Invalid(e.to_string()))?;
            bytes.push(b'\n');
            with_retry(opts.retries, || {
                dst.put_if_absent(CONFIG_FILE, Bytes::from(bytes.clone()))
            })
            .await?;
        }
        None => {
            return Err(Error::Invalid(format!(
                "{} holds no lifeboat repository: pass --init to create one with chunk size {}",
                dst.describe(),
                src_cfg.chunk_size
            )))
        }
    }

    progress.set_phase("planning");
    let have: BTreeSet<ManifestKey> = if opts.manifests {
        list_manifests(dst).await?.into_iter().collect()
    } else {
        BTreeSet::new()
    };
    let todo: Vec<ManifestKey> = selected.into_iter().filter(|k| !have.contains(k)).collect();
    let mut manifests = Vec::new();
    let mut index_ids = BTreeSet::new();
    for k in &todo {
        check_cancel(cancel)?;
        let m = fetch_manifest(src, k).await?;
        index_ids.insert(m.index);
        manifests.push((k.clone(), m));
    }
    let index_keys: Vec<String> = index_ids.iter().map(Repo::index_key).collect();
    let missing_indexes: BTreeSet<String> = with_retry(opts.retries, || dst.missing(&index_keys))
        .await?
        .into_iter()
        .collect();
    let mut chunk_len = std::collections::BTreeMap::new();
    let mut index_bytes = Vec::new();
    for id in &index_ids {
        check_cancel(cancel)?;
        let (idx, data) = fetch_index(src, id).await?;
        for (i, c) in idx.chunks.iter().enumerate() {
            if !c.is_zero() {
                chunk_len.insert(*c, idx.chunk_len(i));
            }
        }
        if missing_indexes.contains(&Repo::index_key(id)) {
            index_bytes.push((Repo::index_key(id), data));
        }
    }
    let chunk_keys: Vec<String> = chunk_len.keys().map(Repo::chunk_key).collect();
    let mut missing_chunks = Vec::new();
    for batch in chunk_keys.chunks(2048) {
        check_cancel(cancel)?;
        missing_chunks.extend(with_retry(opts.retries, || dst.missing(batch)).await?);
    }
    report.chunks_skipped = chunk_keys.len() - missing_chunks.len();
    let total: u64 = missing_chunks
        .iter()
        .filter_map(|k| crate::store::keys::ObjectKey::parse(k).ok())
        .filter_map(|k| match k {
            crate::store::keys::ObjectKey::Chunk(id) => chunk_len.get(&id).copied(),
            _ => None,
        })
        .sum();

    progress.set_phase("sending chunks");
    progress.set_totals(total, missing_chunks.len() as u64);
    let sent: Vec<u64> = futures::stream::iter(missing_chunks.iter().cloned())
        .map(|key| async move {
            check_cancel(cancel)?;
            let data = with_retry(opts.retries, || src.get(&key))
                .await?
                .ok_or_else(|| Error::MissingObject {
                    kind: "chunk",
                    id: key.rsplit('/').next().unwrap_or_default().to_string(),
                })?;
            let raw_len = verify_chunk(&key, data.clone()).await?;
            check_cancel(cancel)?;
            let n = data.len() as u64;
            with_retry(opts.retries, || dst.put_if_absent(&key, data.clone())).await?;
            progress.add(raw_len, 1);
            Ok::<u64, Error>(n)
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    report.chunks_sent = sent.len();
    report.bytes_sent = sent.iter().sum();

    progress.set_phase("sending indexes");
    for (key, data) in index_bytes {
        check_cancel(cancel)?;
        report.bytes_sent += data.len() as u64;
        with_retry(opts.retries, || dst.put_if_absent(&key, data.clone())).await?;
        report.indexes_sent += 1;
    }
    if opts.manifests {
        progress.set_phase("sending manifests");
        manifests.sort_by_key(|a| a.1.created_at);
        for (k, m) in manifests {
            check_cancel(cancel)?;
            let data = Bytes::from(m.to_bytes());
            report.bytes_sent += data.len() as u64;
            let mkey = k.object_key();
            with_retry(opts.retries, || dst.put_if_absent(&mkey, data.clone())).await?;
            report.manifests_sent += 1;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn check_cancel(cancel: &CancellationToken) -> Result<()> {
    if cancel.is_cancelled() {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// Decodes and re-hashes a chunk off the async threads; returns its raw length.
async fn verify_chunk(key: &str, data: Bytes) -> Result<u64> {
    let id = match crate::store::keys::ObjectKey::parse(key)? {
        crate::store::keys::ObjectKey::Chunk(id) => id,
        _ => return Err(Error::Invalid(format!("{key} is not a chunk key"))),
    };
    tokio::task::spawn_blocking(move || chunk::decode(&id, &data).map(|raw| raw.len() as u64))
        .await
        .map_err(|e| Error::Invalid(format!("verification task failed: {e}")))?
}
