//! Fixtures for the engines' unit tests: small repositories written into
//! any store (the in-memory one with faults, mostly), object by object as
//! a backup or push would: chunks, then indexes, then manifests.

use std::sync::Arc;

use bytes::Bytes;

use crate::format::chunk::Encoder;
use crate::format::manifest::{ImageFormat, Labels, Role, SourceInfo, Stats, VmInfo, VolumeInfo};
use crate::format::repo_config::RepoConfig;
use crate::format::{Id, Index, Manifest, ManifestKey, ObjectKey, Verified};
use crate::jobs::{CancellationToken, Progress};
use crate::store::memory::{Faults, MemoryStore};
use crate::store::{DynStore, Store};

/// The smallest chunk size a repository allows.
pub const CHUNK: u64 = 64 << 10;

pub fn memory() -> (Arc<MemoryStore>, DynStore) {
    memory_with(Faults::default())
}

pub fn memory_with(faults: Faults) -> (Arc<MemoryStore>, DynStore) {
    let m = Arc::new(MemoryStore::with_faults(faults));
    let d: DynStore = m.clone();
    (m, d)
}

pub fn cancel() -> CancellationToken {
    CancellationToken::new()
}

pub fn progress() -> Arc<Progress> {
    Arc::new(Progress::new())
}

/// Writes a repository config.
pub async fn init(store: &dyn Store) {
    let cfg = RepoConfig::new(CHUNK, 1).expect("config");
    let data = cfg.to_bytes().expect("config bytes");
    store
        .put_if_absent(&Verified::check(ObjectKey::Config, Bytes::from(data)).expect("config"))
        .await
        .expect("config written");
}

/// A volume image of `chunks` whole chunks; no chunk is all zeros, and
/// different seeds share no chunk.
pub fn image(seed: u8, chunks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks * CHUNK as usize);
    for i in 0..chunks {
        let fill = [seed, i as u8, 0x5a, 1];
        out.extend(fill.iter().cycle().take(CHUNK as usize));
    }
    out
}

/// The objects of one volume's backup: its chunks (encoded), its index,
/// and its manifest.
pub struct VolumeObjects {
    pub chunks: Vec<Verified>,
    pub index: Verified,
    pub manifest: (ManifestKey, Manifest, Verified),
}

pub fn volume(vm: &str, set: &str, at: &str, name: &str, data: &[u8]) -> VolumeObjects {
    let mut enc = Encoder::new(1).expect("encoder");
    let mut ids = Vec::new();
    let mut chunks = Vec::new();
    for raw in data.chunks(CHUNK as usize) {
        let id = Id::of(raw);
        let encoded = enc.encode(raw).expect("encode");
        chunks.push(Verified::check(ObjectKey::Chunk(id), Bytes::from(encoded)).expect("chunk"));
        ids.push(id);
    }
    let index = Index {
        chunk_size: CHUNK,
        image_size: data.len() as u64,
        chunks: ids,
        plain: Vec::new(),
    };
    let index_bytes = index.to_bytes();
    let index_id = Id::of(&index_bytes);
    let m = Manifest {
        format: 1,
        vm: VmInfo { name: vm.into() },
        volume: VolumeInfo {
            name: name.into(),
            role: if name == "root" {
                Role::Root
            } else {
                Role::Data
            },
            format: ImageFormat::Raw,
            virtual_size: data.len() as u64,
        },
        created_at: at.parse().expect("time"),
        chunk_size: CHUNK,
        index: index_id,
        parent: None,
        set: set.into(),
        source: SourceInfo {
            host: "test".into(),
            path: format!("/vm/{vm}-{name}.img"),
        },
        stats: Stats {
            logical_bytes: data.len() as u64,
            nonzero_bytes: data.len() as u64,
            new_chunks: 0,
            new_stored_bytes: 0,
        },
        labels: Labels::default(),
        definition: None,
        capture: None,
    };
    let key = m.key();
    let mv = Verified::check(ObjectKey::Manifest(key.clone()), Bytes::from(m.to_bytes()))
        .expect("manifest");
    VolumeObjects {
        chunks,
        index: Verified::check(ObjectKey::Index(index_id), Bytes::from(index_bytes))
            .expect("index"),
        manifest: (key, m, mv),
    }
}

/// Writes one backup set into `store` the way a writer does (data first,
/// manifests last) and returns its manifests.
pub async fn put_set(
    store: &dyn Store,
    vm: &str,
    set: &str,
    at: &str,
    volumes: &[(&str, Vec<u8>)],
) -> Vec<(ManifestKey, Manifest)> {
    let objs: Vec<VolumeObjects> = volumes
        .iter()
        .map(|(name, data)| volume(vm, set, at, name, data))
        .collect();
    put_data(store, &objs).await;
    let mut out = Vec::new();
    for o in &objs {
        store.put_if_absent(&o.manifest.2).await.expect("manifest");
        out.push((o.manifest.0.clone(), o.manifest.1.clone()));
    }
    out
}

/// Writes only the data of some volumes' backups (an interrupted writer).
pub async fn put_data(store: &dyn Store, objs: &[VolumeObjects]) {
    for o in objs {
        for c in &o.chunks {
            store.put_if_absent(c).await.expect("chunk");
        }
        store.put_if_absent(&o.index).await.expect("index");
    }
    store.commit().await.expect("commit");
}

/// Every object key a store lists, all prefixes.
pub async fn all_keys(store: &dyn Store) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    for p in ["chunks/", "indexes/", "manifests/"] {
        out.extend(store.list(p).await.expect("list"));
    }
    out.sort();
    out
}

/// Reads a backup back whole through its index, verifying every chunk.
pub async fn read_back(store: &dyn Store, m: &Manifest) -> crate::Result<Vec<u8>> {
    let (index, _) = crate::repository::fetch_index(store, &m.index).await?;
    let mut out = Vec::new();
    for id in &index.chunks {
        let key = ObjectKey::Chunk(*id);
        let data = store.get(&key).await?.ok_or_else(|| key.missing())?;
        out.extend(crate::format::chunk::decode(id, &data)?);
    }
    Ok(out)
}
