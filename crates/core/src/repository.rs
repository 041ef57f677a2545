//! Reading a repository through any store (local disk, `lifeboat serve`,
//! S3): its config, its manifests and indexes, each verified against the
//! name it was asked for, and its backups with their protection marks.
//! Engines and faces read repositories through these, never a store's
//! raw listing.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::format::manifest::DefinitionRef;
use crate::format::repo_config::RepoConfig;
use crate::format::{chunk, Id, Index, Manifest, ManifestKey};
use crate::retry::with_retry;
use crate::store::{DynStore, ObjectKey, Store, Verified};

/// A repository in any store (local disk, `lifeboat serve`, S3, memory):
/// its config read once, and every object read verified against its name
/// and written only once verified. The local disk has a synchronous fast
/// path besides (`repo::Repo`: page-aligned reads, staged batches) for
/// the hot loops of backup and restore; everything else reads through
/// this type.
#[derive(Clone)]
pub struct Repository {
    store: DynStore,
    config: RepoConfig,
}

impl Repository {
    /// Opens the repository a store holds; a store without one is an error
    /// that says so.
    pub async fn open(store: DynStore) -> Result<Repository> {
        let config = read_config(store.as_ref()).await?.ok_or_else(|| {
            Error::BadInput(format!(
                "{} holds no lifeboat repository: create one with `lifeboat init` or `push --init`",
                store.describe()
            ))
        })?;
        if let Some(enc) = &config.encryption {
            crate::crypto::unlock_from_env(enc)?;
        }
        Ok(Repository { store, config })
    }

    /// Creates a repository in an empty store.
    pub async fn create(store: DynStore, config: RepoConfig) -> Result<Repository> {
        let obj = Verified::check(ObjectKey::Config, Bytes::from(config.to_bytes()?))?;
        if !with_retry(5, || store.put_if_absent(&obj)).await? {
            return Err(Error::BadInput(format!(
                "{} already holds a lifeboat repository",
                store.describe()
            )));
        }
        Ok(Repository { store, config })
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Every backup, verified, with its protection (see `load_backups`).
    pub async fn backups(&self) -> Result<Vec<(ManifestKey, Manifest)>> {
        load_backups(self.store.as_ref()).await
    }

    pub async fn manifest(&self, key: &ManifestKey) -> Result<Manifest> {
        Ok(fetch_manifest(self.store.as_ref(), key).await?.0)
    }

    pub async fn index(&self, id: &Id) -> Result<Index> {
        Ok(fetch_index(self.store.as_ref(), id).await?.0)
    }

    /// A chunk's data, decoded and checked against its id.
    pub async fn chunk(&self, id: &Id) -> Result<Vec<u8>> {
        let key = ObjectKey::Chunk(*id);
        let data = with_retry(5, || self.store.get(&key))
            .await?
            .ok_or_else(|| key.missing())?;
        let id = *id;
        tokio::task::spawn_blocking(move || chunk::decode(&id, &data))
            .await
            .map_err(|e| Error::Internal(format!("decoding task failed: {e}")))?
    }

    /// Whether the store holds an object.
    pub async fn has(&self, key: &ObjectKey) -> Result<bool> {
        let keys = std::slice::from_ref(key);
        Ok(with_retry(5, || self.store.missing(keys)).await?.is_empty())
    }

    /// Stores an object unless it is there, after checking its bytes
    /// against its key (whoever made them). Returns whether it was written.
    pub async fn put(&self, key: ObjectKey, data: Bytes) -> Result<bool> {
        let obj = Verified::check_blocking(key, data).await?;
        with_retry(5, || self.store.put_if_absent(&obj)).await
    }

    pub async fn write_index(&self, index: &Index) -> Result<Id> {
        let (id, bytes) = index.stored(self.config.sealing_keys()?.as_deref())?;
        self.put(ObjectKey::Index(id), Bytes::from(bytes)).await?;
        Ok(id)
    }

    pub async fn write_definition(&self, doc: &[u8]) -> Result<DefinitionRef> {
        let (d, encoded) = DefinitionRef::encode(
            doc,
            self.config.compression.level,
            self.config.sealing_keys()?.as_deref(),
        )?;
        self.put(ObjectKey::Chunk(d.chunk), Bytes::from(encoded))
            .await?;
        Ok(d)
    }

    /// Writes a manifest and makes everything put so far durable. Callers
    /// must have put everything it references first.
    pub async fn write_manifest(&self, m: &Manifest) -> Result<ManifestKey> {
        with_retry(5, || self.store.commit()).await?;
        let (key, bytes) = m.stored(self.config.sealing_keys()?.as_deref())?;
        self.put(ObjectKey::Manifest(key.clone()), Bytes::from(bytes))
            .await?;
        with_retry(5, || self.store.commit()).await?;
        Ok(key)
    }
}

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
    load_manifests_where(store, |_| true).await
}

/// The manifests whose keys `keep` takes, fetched and verified as
/// `load_manifests` does.
pub async fn load_manifests_where(
    store: &dyn Store,
    keep: impl Fn(&ManifestKey) -> bool,
) -> Result<Vec<(ManifestKey, Manifest)>> {
    let mut keys = list_manifests(store).await?;
    keys.retain(|k| keep(k));
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

/// What an index references, checked against its id; readable without
/// the key of an encrypted repository (gc needs no key).
pub async fn fetch_index_refs(store: &dyn Store, id: &Id) -> Result<crate::format::index::Refs> {
    let okey = ObjectKey::Index(*id);
    let data = with_retry(5, || store.get(&okey))
        .await?
        .ok_or_else(|| okey.missing())?;
    Index::refs_of(id, &data)
}

/// Every backup a store holds, verified, with exactly the protection its
/// marks give (what a manifest claims about itself never counts).
pub async fn load_backups(store: &dyn Store) -> Result<Vec<(ManifestKey, Manifest)>> {
    let mut all = load_manifests(store).await?;
    let marks = crate::protect::protected(store).await?;
    crate::protect::apply(&mut all, &marks);
    Ok(all)
}
