//! Push and pull between repositories of different keys (or an encrypted
//! and an unencrypted one): every object is opened with the source's key
//! and made again for the destination — chunks re-encoded and sealed with
//! its key (or left plain), indexes and manifests rewritten with the new
//! names. Objects named by content get new names, so a backup is matched
//! between the two sides by VM, volume and time, and the destination's
//! chunks by plaintext id (its sealed indexes record them).
//!
//! Planned and executed like a plain transfer (chunks, then indexes and
//! definitions, a commit, then manifests), under the destination's writer
//! lock. Protection marks are not copied (they name manifest ids, which
//! differ); a copy's manifests name no parent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::types::{
    check_cancel, send_manifest, PlanSummary, SyncOptions, SyncReport, Transcode, TransferPlan,
};
use crate::error::{Error, Result};
use crate::format::chunk::{self, Encoder};
use crate::format::manifest::DefinitionRef;
use crate::format::repo_config::RepoConfig;
use crate::format::sealed::{self, Kind};
use crate::format::{Id, Index, ManifestKey};
use crate::jobs::{CancellationToken, Progress};
use crate::repository::{fetch_index, fetch_manifest, list_manifests};
use crate::retry::with_retry;
use crate::store::{ObjectKey, Store, Verified};

/// A plan whose objects are made again for the destination. The keys of
/// both sides are held (see `super::key_mode`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn plan(
    src: &dyn Store,
    dst: &dyn Store,
    dst_cfg: &RepoConfig,
    selected: Vec<ManifestKey>,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    mut summary: PlanSummary,
    lock: Option<Arc<crate::lock::Held>>,
) -> Result<TransferPlan> {
    let keys = dst_cfg.sealing_keys()?;
    summary.reencrypted = true;
    let held_keys = list_manifests(dst).await?;
    let held: HashSet<(&str, &str, _)> = held_keys
        .iter()
        .map(|k| (k.vm.as_str(), k.volume.as_str(), k.time))
        .collect();
    let mut manifests = Vec::new();
    let mut index_ids = BTreeSet::new();
    for k in selected.iter() {
        check_cancel(cancel)?;
        if opts.manifests && held.contains(&(k.vm.as_str(), k.volume.as_str(), k.time)) {
            continue;
        }
        let (m, bytes) = fetch_manifest(src, k).await?;
        index_ids.insert(m.index);
        manifests.push((k.clone(), m, bytes));
    }
    manifests.sort_by_key(|a| (a.1.created_at, a.0.id));
    summary.manifests_to_send = if opts.manifests { manifests.len() } else { 0 };

    let mut index_of = BTreeMap::new();
    // Each distinct plaintext chunk: its source name and length.
    let mut wanted: BTreeMap<Id, (Id, u64)> = BTreeMap::new();
    for id in &index_ids {
        check_cancel(cancel)?;
        let (idx, _) = fetch_index(src, id).await?;
        for i in 0..idx.chunks.len() {
            if let Some(plain) = idx.content_id(i).filter(|p| !p.is_zero()) {
                wanted.insert(*plain, (idx.chunks[i], idx.chunk_len(i)));
            }
        }
        index_of.insert(*id, idx);
    }
    summary.indexes_to_send = index_of.len();

    // What the destination holds, by plaintext id.
    let mut known = HashMap::new();
    if keys.is_some() {
        // Its sealed indexes of the same volumes name their chunks' plaintext.
        let volumes: HashSet<(&str, &str)> = manifests
            .iter()
            .map(|(k, _, _)| (k.vm.as_str(), k.volume.as_str()))
            .collect();
        for k in held_keys
            .iter()
            .filter(|k| volumes.contains(&(k.vm.as_str(), k.volume.as_str())))
        {
            check_cancel(cancel)?;
            let (m, _) = fetch_manifest(dst, k).await?;
            let (idx, _) = fetch_index(dst, &m.index).await?;
            for (c, p) in idx.chunks.iter().zip(&idx.plain) {
                if !p.is_zero() {
                    known.insert(*p, *c);
                }
            }
        }
        let unknown: Vec<ObjectKey> = wanted
            .keys()
            .filter_map(|p| known.get(p).map(|c| ObjectKey::Chunk(*c)))
            .collect();
        // Named in an index but swept since: sent again.
        for batch in unknown.chunks(2048) {
            for gone in with_retry(opts.retries, || dst.missing(batch)).await? {
                if let ObjectKey::Chunk(c) = gone {
                    known.retain(|_, v| *v != c);
                }
            }
        }
    } else {
        // Unencrypted: a chunk's name is its plaintext id.
        let all: Vec<ObjectKey> = wanted.keys().map(|p| ObjectKey::Chunk(*p)).collect();
        let mut missing = HashSet::new();
        for batch in all.chunks(2048) {
            check_cancel(cancel)?;
            for k in with_retry(opts.retries, || dst.missing(batch)).await? {
                if let ObjectKey::Chunk(c) = k {
                    missing.insert(c);
                }
            }
        }
        known.extend(
            wanted
                .keys()
                .filter(|p| !missing.contains(p))
                .map(|p| (*p, *p)),
        );
    }
    let chunks: Vec<(Id, u64)> = wanted
        .iter()
        .filter(|(p, _)| !known.contains_key(p))
        .map(|(_, (src_id, len))| (*src_id, *len))
        .collect();
    summary.chunks_referenced = wanted.len();
    summary.chunks_to_send = chunks.len();
    summary.chunks_already_there = wanted.len() - chunks.len();
    summary.data_bytes_to_send = chunks.iter().map(|(_, l)| l).sum();
    Ok(TransferPlan {
        summary,
        create_config: None,
        manifests,
        indexes: Vec::new(),
        index_of,
        chunks,
        send_manifests: opts.manifests,
        selected,
        lock,
        transcode: Some(Transcode {
            keys,
            level: dst_cfg.compression.level,
            known,
        }),
    })
}

/// A source chunk opened and made again for the destination: its
/// plaintext id and the destination's object.
fn remake(
    keys: Option<&crate::crypto::Keys>,
    level: i32,
    id: &Id,
    data: &[u8],
) -> Result<(Id, Verified)> {
    let raw = chunk::decode(id, data)?;
    let plain = Id::of(&raw);
    let encoded = Encoder::new(level)?.encode(&raw)?;
    let (name, stored) = match keys {
        Some(k) => {
            let s = sealed::seal(k, Kind::Chunk, &plain.0, &encoded)?;
            (Id::of(&s), s)
        }
        None => (plain, encoded),
    };
    Ok((
        plain,
        Verified::check(ObjectKey::Chunk(name), stored.into())?,
    ))
}

pub(super) async fn execute(
    src: &dyn Store,
    dst: &dyn Store,
    plan: &TransferPlan,
    t: &Transcode,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<SyncReport> {
    let started = std::time::Instant::now();
    let s = &plan.summary;
    let mut report = SyncReport::for_plan(s);
    progress.set_phase("re-encrypting chunks");
    progress.set_job_total_if_unset(s.data_bytes_to_send);
    progress.set_totals(s.data_bytes_to_send, plan.chunks.len() as u64);
    let made: Vec<(Id, Id, u64)> = futures::stream::iter(plan.chunks.iter().copied())
        .map(|(id, raw_len)| async move {
            check_cancel(cancel)?;
            let key = ObjectKey::Chunk(id);
            let data = with_retry(opts.retries, || src.get(&key))
                .await?
                .ok_or_else(|| key.missing())?;
            let (keys, level) = (t.keys.clone(), t.level);
            let (plain, obj) =
                tokio::task::spawn_blocking(move || remake(keys.as_deref(), level, &id, &data))
                    .await
                    .map_err(|e| Error::Internal(format!("re-encrypting task failed: {e}")))??;
            check_cancel(cancel)?;
            with_retry(opts.retries, || dst.put_new(&obj)).await?;
            progress.add(raw_len, 1);
            let name = match obj.key() {
                ObjectKey::Chunk(c) => *c,
                _ => plain,
            };
            Ok::<_, Error>((plain, name, obj.data().len() as u64))
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    let mut known = t.known.clone();
    for (plain, name, n) in made {
        known.insert(plain, name);
        report.chunks_sent += 1;
        report.bytes_sent += n;
    }

    // Indexes and definitions for the destination, then a commit, then
    // the manifests that name them.
    progress.set_phase("re-encrypting indexes");
    let mut made_indexes: HashMap<Id, Id> = HashMap::new();
    for (src_id, idx) in &plan.index_of {
        check_cancel(cancel)?;
        let mut chunks = Vec::with_capacity(idx.chunks.len());
        for i in 0..idx.chunks.len() {
            let plain = idx.content_id(i).copied().unwrap_or(Id::ZERO);
            if plain.is_zero() {
                chunks.push(Id::ZERO);
                continue;
            }
            chunks.push(*known.get(&plain).ok_or_else(|| {
                Error::Internal(format!(
                    "chunk {} of index {} was not re-encrypted",
                    plain.short(),
                    src_id.short()
                ))
            })?);
        }
        let plain: Vec<Id> = match &t.keys {
            Some(_) => (0..idx.chunks.len())
                .map(|i| idx.content_id(i).copied().unwrap_or(Id::ZERO))
                .collect(),
            None => Vec::new(),
        };
        let new = Index {
            chunk_size: idx.chunk_size,
            image_size: idx.image_size,
            chunks,
            plain,
        };
        let (id, bytes) = new.stored(t.keys.as_deref())?;
        let obj = Verified::check(ObjectKey::Index(id), bytes.into())?;
        report.bytes_sent += obj.data().len() as u64;
        with_retry(opts.retries, || dst.put_if_absent(&obj)).await?;
        report.indexes_sent += 1;
        made_indexes.insert(*src_id, id);
    }
    let mut made_definitions: HashMap<Id, DefinitionRef> = HashMap::new();
    for (_, m, _) in &plan.manifests {
        let Some(d) = m.definition else { continue };
        if made_definitions.contains_key(&d.chunk) {
            continue;
        }
        let key = ObjectKey::Chunk(d.chunk);
        let data = with_retry(opts.retries, || src.get(&key))
            .await?
            .ok_or_else(|| key.missing())?;
        let doc = chunk::decode(&d.chunk, &data)?;
        let (dref, bytes) = DefinitionRef::encode(&doc, t.level, t.keys.as_deref())?;
        let obj = Verified::check(ObjectKey::Chunk(dref.chunk), bytes.into())?;
        with_retry(opts.retries, || dst.put_if_absent(&obj)).await?;
        made_definitions.insert(d.chunk, dref);
    }
    with_retry(opts.retries, || dst.commit()).await?;
    if let Some(l) = &plan.lock {
        l.check()?;
        if plan.send_manifests && !with_retry(opts.retries, || l.present()).await? {
            return Err(Error::Remote {
                remote: dst.describe(),
                reason: "this transfer's writer lock vanished (broken, or lost with the store); no manifest was written: run it again".into(),
                transient: false,
            });
        }
    }
    if plan.send_manifests {
        progress.set_phase("sending manifests");
        for (key, m, _) in &plan.manifests {
            check_cancel(cancel)?;
            let mut copy = m.clone();
            copy.index = *made_indexes
                .get(&m.index)
                .ok_or_else(|| Error::Internal("an index was not re-encrypted".into()))?;
            copy.definition = m
                .definition
                .and_then(|d| made_definitions.get(&d.chunk).copied());
            copy.parent = None;
            let (mk, bytes) = copy.stored(t.keys.as_deref())?;
            let obj = Verified::check(ObjectKey::Manifest(mk), bytes.into())?;
            send_manifest(dst, key, &obj, opts, &mut report).await?;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
