//! Sync status: per VM and volume, which backups are only local, only on a
//! remote, or in both (the same manifest id). Built from key listings
//! alone, so one LIST per repository answers it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::format::ManifestKey;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackupRef {
    pub id: String,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct VolumeSync {
    pub vm: String,
    pub volume: String,
    pub only_local: Vec<BackupRef>,
    pub only_remote: Vec<BackupRef>,
    pub both: Vec<BackupRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteSync {
    pub remote: String,
    pub newest: Option<BackupRef>,
    pub volumes: Vec<VolumeSync>,
}

fn r(k: &ManifestKey) -> BackupRef {
    BackupRef {
        id: k.id.to_hex(),
        time: k.time,
    }
}

pub fn compare(remote: &str, local: &[ManifestKey], remote_keys: &[ManifestKey]) -> RemoteSync {
    let l: BTreeSet<&ManifestKey> = local.iter().collect();
    let rk: BTreeSet<&ManifestKey> = remote_keys.iter().collect();
    let mut vols: BTreeMap<(String, String), VolumeSync> = BTreeMap::new();
    for k in l.union(&rk) {
        let v = vols
            .entry((k.vm.clone(), k.volume.clone()))
            .or_insert_with(|| VolumeSync {
                vm: k.vm.clone(),
                volume: k.volume.clone(),
                ..Default::default()
            });
        match (l.contains(k), rk.contains(k)) {
            (true, true) => v.both.push(r(k)),
            (true, false) => v.only_local.push(r(k)),
            _ => v.only_remote.push(r(k)),
        }
    }
    for v in vols.values_mut() {
        for list in [&mut v.only_local, &mut v.only_remote, &mut v.both] {
            list.sort_by_key(|b| std::cmp::Reverse(b.time));
        }
    }
    RemoteSync {
        remote: remote.to_string(),
        newest: remote_keys.iter().max_by_key(|k| k.time).map(r),
        volumes: vols.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;

    fn key(vm: &str, t: i64, seed: &[u8]) -> ManifestKey {
        ManifestKey {
            vm: vm.into(),
            volume: "root".into(),
            time: DateTime::from_timestamp(t, 0).unwrap(),
            id: Id::of(seed),
        }
    }

    #[test]
    fn splits_by_presence() {
        let a = key("web", 1, b"a");
        let b = key("web", 2, b"b");
        let c = key("web", 3, b"c");
        let s = compare("off", &[a.clone(), b.clone()], &[b.clone(), c.clone()]);
        assert_eq!(s.volumes.len(), 1);
        let v = &s.volumes[0];
        assert_eq!(v.only_local, vec![r(&a)]);
        assert_eq!(v.both, vec![r(&b)]);
        assert_eq!(v.only_remote, vec![r(&c)]);
        assert_eq!(s.newest, Some(r(&c)));
    }
}
