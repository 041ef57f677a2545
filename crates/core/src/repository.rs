//! Reading a repository through any store (local disk, `lifeboat serve`,
//! S3): its config, its manifests and indexes, each verified against the
//! name it was asked for, and its backups with their protection marks.
//! Engines and faces read repositories through these, never a store's
//! raw listing.

use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::format::repo_config::RepoConfig;
use crate::format::{Id, Index, Manifest, ManifestKey};
use crate::retry::with_retry;
use crate::store::{ObjectKey, Store, Verified};

/// Reads and verifies a store's repository config.
pub async fn read_config(store: &dyn Store) -> Result<Option<RepoConfig>> {
    match with_retry(5, || store.get(&ObjectKey::Config)).await? {
        Some(data) => Ok(Some(RepoConfig::parse(
            std::path::Path::new(&store.describe()),
            &data,
        )?)),
        None => Ok(None),
    }
}

/// Every manifest key a store lists, oldest first; keys dated implausibly
/// far in the future are skipped with a warning.
pub async fn list_manifests(store: &dyn Store) -> Result<Vec<ManifestKey>> {
    let keys = with_retry(5, || store.list("manifests/")).await?;
    let now = chrono::Utc::now();
    let mut out: Vec<ManifestKey> = keys
        .into_iter()
        .filter_map(|k| match k {
            ObjectKey::Manifest(m) if m.is_plausible(now) => Some(m),
            ObjectKey::Manifest(m) => {
                tracing::warn!(
                    "skipping {} on {}: dated in the future",
                    m.object_key(),
                    store.describe()
                );
                None
            }
            _ => None,
        })
        .collect();
    crate::format::manifest::sort_dedup(&mut out);
    Ok(out)
}

/// Every manifest a store holds, fetched and verified (16 at a time).
/// Damaged ones are skipped with a warning, as locally.
pub async fn load_manifests(store: &dyn Store) -> Result<Vec<(ManifestKey, Manifest)>> {
    let keys = list_manifests(store).await?;
    let loaded: Vec<Option<(ManifestKey, Manifest)>> = futures::stream::iter(keys)
        .map(|k| async move {
            match fetch_manifest(store, &k).await {
                Ok((m, _)) => Ok(Some((k, m))),
                Err(
                    e @ (Error::CorruptObject { .. }
                    | Error::MissingObject { .. }
                    | Error::TooLarge { .. }),
                ) => {
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

/// Fetches a manifest and verifies it against its key; returns it parsed
/// and as the exact bytes fetched.
pub async fn fetch_manifest(store: &dyn Store, key: &ManifestKey) -> Result<(Manifest, Verified)> {
    let okey = ObjectKey::Manifest(key.clone());
    let data = with_retry(5, || store.get(&okey))
        .await?
        .ok_or_else(|| okey.missing())?;
    let m = Manifest::from_bytes(key, &data)?;
    Ok((m, Verified::check(okey, data)?))
}

/// Fetches an index and verifies it against its id.
pub async fn fetch_index(store: &dyn Store, id: &Id) -> Result<(Index, Verified)> {
    let okey = ObjectKey::Index(*id);
    let data = with_retry(5, || store.get(&okey))
        .await?
        .ok_or_else(|| okey.missing())?;
    let idx = Index::from_bytes(Some(id), &data)?;
    Ok((idx, Verified::check(okey, data)?))
}

/// Every backup a store holds, verified, with exactly the protection its
/// marks give (what a manifest claims about itself never counts).
pub async fn load_backups(store: &dyn Store) -> Result<Vec<(ManifestKey, Manifest)>> {
    let mut all = load_manifests(store).await?;
    let marks = crate::protect::protected(store).await?;
    crate::protect::apply(&mut all, &marks);
    Ok(all)
}
