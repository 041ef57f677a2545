//! Verifying a remote repository through its store, as `repo::verify`
//! does a local one: quick (every manifest and index fetched and hashed,
//! every referenced chunk present) or deep (every chunk fetched, decoded
//! and re-hashed here — what a restore from that remote would read).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;

use super::{fetch_index, fetch_manifest, list_manifests, with_retry};
use crate::error::{Error, Result};
use crate::format::Id;
use crate::jobs::{CancellationToken, Progress};
use crate::repo::verify::{describe, problem, VerifyReport};
use crate::store::{ObjectKey, Store, Verified};

/// Keys asked about per `missing` call.
const BATCH: usize = 4096;
/// Chunks fetched at once in a deep verify.
const PARALLEL: usize = 16;

pub async fn verify_remote(
    store: &dyn Store,
    deep: bool,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<VerifyReport> {
    let check = || {
        if cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    };
    progress.set_phase("listing backups");
    let keys = list_manifests(store).await?;
    let mut report = VerifyReport {
        deep,
        ..Default::default()
    };
    progress.set_phase("checking manifests and indexes");
    let mut index_users: BTreeMap<Id, Vec<String>> = BTreeMap::new();
    let mut definitions = crate::repo::verify::DefinitionUsers::new();
    for k in &keys {
        check()?;
        report.manifests += 1;
        match fetch_manifest(store, k).await {
            Ok((m, _)) => {
                crate::repo::verify::note_definition(&mut definitions, k, &m);
                index_users.entry(m.index).or_default().push(describe(k))
            }
            Err(e) if is_damage(&e) => {
                report
                    .problems
                    .push(problem("manifest", k.id, &e, vec![describe(k)]))
            }
            Err(e) => return Err(e),
        }
    }
    let mut chunk_users: BTreeMap<Id, BTreeSet<Id>> = BTreeMap::new();
    let mut chunk_len: BTreeMap<Id, u64> = BTreeMap::new();
    for (idx_id, users) in &index_users {
        check()?;
        report.indexes += 1;
        match fetch_index(store, idx_id).await {
            Ok((index, _)) => {
                for (i, c) in index.chunks.iter().enumerate() {
                    if !c.is_zero() {
                        chunk_users.entry(*c).or_default().insert(*idx_id);
                        chunk_len.insert(*c, index.chunk_len(i));
                    }
                }
            }
            Err(e) if is_damage(&e) => {
                report
                    .problems
                    .push(problem("index", *idx_id, &e, users.clone()))
            }
            Err(e) => return Err(e),
        }
    }
    report.chunks = chunk_users.len();
    let ids: Vec<Id> = chunk_users.keys().copied().collect();
    let mut bad: Vec<(Id, Error)> = Vec::new();
    if deep {
        progress.set_phase("reading chunks");
        progress.set_totals(chunk_len.values().sum(), ids.len() as u64);
        let mut results = futures::stream::iter(ids.iter().copied())
            .map(|id| async move {
                if cancel.is_cancelled() {
                    return (id, Err(Error::Cancelled));
                }
                let key = ObjectKey::Chunk(id);
                let res = async {
                    let data = with_retry(5, || store.get(&key))
                        .await?
                        .ok_or_else(|| key.missing())?;
                    let n = data.len() as u64;
                    Verified::check_blocking(key.clone(), data).await?;
                    Ok::<u64, Error>(n)
                }
                .await;
                (id, res)
            })
            .buffer_unordered(PARALLEL);
        while let Some((id, res)) = results.next().await {
            match res {
                Ok(n) => {
                    report.bytes_read += n;
                    progress.add(chunk_len.get(&id).copied().unwrap_or(0), 1);
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) if is_damage(&e) => bad.push((id, e)),
                Err(e) => return Err(e),
            }
        }
    } else {
        progress.set_phase("checking chunks");
        progress.set_totals(0, ids.len() as u64);
        for batch in ids.chunks(BATCH) {
            check()?;
            let keys: Vec<ObjectKey> = batch.iter().map(|i| ObjectKey::Chunk(*i)).collect();
            for k in with_retry(5, || store.missing(&keys)).await? {
                if let ObjectKey::Chunk(id) = &k {
                    bad.push((*id, k.missing()));
                }
            }
            progress.add(0, batch.len() as u64);
        }
    }
    report.add_chunk_problems(bad, &chunk_users, &index_users);
    for (d, users) in definitions.into_values() {
        check()?;
        match fetch_definition(store, &d).await {
            Ok(_) => {}
            Err(e) if is_damage(&e) => report.problems.push(crate::repo::verify::problem(
                "definition",
                d.chunk,
                &e,
                users,
            )),
            Err(e) => return Err(e),
        }
    }
    report.finish(&keys);
    Ok(report)
}

/// Fetches, verifies and parses a backup's VM definition from a store.
pub async fn fetch_definition(
    store: &dyn Store,
    d: &crate::format::manifest::DefinitionRef,
) -> Result<crate::vm::Definition> {
    let key = ObjectKey::Chunk(d.chunk);
    let data = with_retry(5, || store.get(&key))
        .await?
        .ok_or_else(|| key.missing())?;
    let raw = crate::format::chunk::decode(&d.chunk, &data)?;
    crate::vm::Definition::from_chunk(d, &raw)
}

/// A damaged or absent object (reported), as opposed to a failing link
/// or a refused token (which stops the verify with its error).
fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::CorruptObject { .. } | Error::MissingObject { .. } | Error::TooLarge { .. }
    )
}
