//! Manifests: one backup of one volume, named by VM, volume, time and hash.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::id::Id;
use crate::error::{Error, Result};
use crate::names::{check_name, is_valid_name};

pub const FORMAT_VERSION: u32 = 1;
/// Key times carry milliseconds: two backups of a volume within one second
/// must still order correctly from a key listing alone.
const KEY_TIME: &str = "%Y%m%dT%H%M%S%.3fZ";
const KEY_TIME_SECONDS: &str = "%Y%m%dT%H%M%SZ";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Data => "data",
        })
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub role: Role,
    pub format: ImageFormat,
    pub virtual_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub host: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub logical_bytes: u64,
    pub nonzero_bytes: u64,
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub policy: Option<String>,
    pub note: Option<String>,
    pub protected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub vm: VmInfo,
    pub volume: VolumeInfo,
    pub created_at: DateTime<Utc>,
    pub chunk_size: u64,
    pub index: Id,
    pub parent: Option<Id>,
    pub set: String,
    pub source: SourceInfo,
    pub stats: Stats,
    pub labels: Labels,
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn key(&self) -> ManifestKey {
        let bytes = self.to_bytes();
        ManifestKey {
            vm: self.vm.name.clone(),
            volume: self.volume.name.clone(),
            time: self.created_at.trunc_subsecs(3),
            id: Id::of(&bytes),
        }
    }

    /// Parses a manifest fetched under `key`, checking hash, names and format.
    pub fn from_bytes(key: &ManifestKey, data: &[u8]) -> Result<Manifest> {
        let bad = |why: String| Error::corrupt("manifest", key.id, why);
        let actual = Id::of(data);
        if actual != key.id {
            return Err(bad(format!("content hashes to {}", actual.short())));
        }
        let m: Manifest =
            serde_json::from_slice(data).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        if m.format != FORMAT_VERSION {
            return Err(bad(format!("unsupported manifest format {}", m.format)));
        }
        if m.vm.name != key.vm || m.volume.name != key.volume {
            return Err(bad(format!(
                "names {}/{} do not match its key {}/{}",
                m.vm.name, m.volume.name, key.vm, key.volume
            )));
        }
        check_name("VM", &m.vm.name).map_err(|e| bad(e.to_string()))?;
        check_name("volume", &m.volume.name).map_err(|e| bad(e.to_string()))?;
        Ok(m)
    }
}

/// What a manifest's object key says, so that one listing builds timelines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManifestKey {
    pub vm: String,
    pub volume: String,
    pub time: DateTime<Utc>,
    pub id: Id,
}

impl ManifestKey {
    /// `manifests/<vm>/<volume>/<time>-<hex>.json`
    pub fn object_key(&self) -> String {
        format!(
            "manifests/{}/{}/{}-{}.json",
            self.vm,
            self.volume,
            self.time.format(KEY_TIME),
            self.id
        )
    }

    pub fn file_name(&self) -> String {
        format!("{}-{}.json", self.time.format(KEY_TIME), self.id)
    }

    /// Parses an object key; anything that is not exactly a manifest key
    /// (bad names, path tricks, other files) is rejected.
    pub fn parse(key: &str) -> Result<ManifestKey> {
        let bad = || Error::Invalid(format!("not a manifest key: {key:?}"));
        let rest = key.strip_prefix("manifests/").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (vm, volume, file) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c), None) => (a, b, c),
            _ => return Err(bad()),
        };
        if !is_valid_name(vm) || !is_valid_name(volume) {
            return Err(bad());
        }
        Self::parse_file_name(vm, volume, file).ok_or_else(bad)
    }

    pub fn parse_file_name(vm: &str, volume: &str, file: &str) -> Option<ManifestKey> {
        let stem = file.strip_suffix(".json")?;
        let (time, hex) = stem.split_once('-')?;
        let time = NaiveDateTime::parse_from_str(time, KEY_TIME)
            .or_else(|_| NaiveDateTime::parse_from_str(time, KEY_TIME_SECONDS))
            .ok()?
            .and_utc();
        let id = Id::parse(hex).ok()?;
        Some(ManifestKey {
            vm: vm.to_string(),
            volume: volume.to_string(),
            time,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        Manifest {
            format: 1,
            vm: VmInfo {
                name: "web01".into(),
            },
            volume: VolumeInfo {
                name: "root".into(),
                role: Role::Root,
                format: ImageFormat::Qcow2,
                virtual_size: 1 << 30,
            },
            created_at: "2026-11-25T22:10:00.123Z".parse().unwrap(),
            chunk_size: 4 << 20,
            index: Id::of(b"idx"),
            parent: None,
            set: "abcd".into(),
            source: SourceInfo {
                host: "h".into(),
                path: "/x".into(),
            },
            stats: Stats::default(),
            labels: Labels::default(),
        }
    }

    #[test]
    fn key_round_trip_and_verification() {
        let m = sample();
        let key = m.key();
        assert_eq!(
            key.object_key(),
            format!("manifests/web01/root/20261125T221000.123Z-{}.json", key.id)
        );
        assert_eq!(ManifestKey::parse(&key.object_key()).unwrap(), key);
        assert_eq!(Manifest::from_bytes(&key, &m.to_bytes()).unwrap(), m);
        let mut tampered = m.to_bytes();
        tampered[10] ^= 1;
        assert!(Manifest::from_bytes(&key, &tampered).is_err());
    }

    #[test]
    fn accepts_whole_second_keys() {
        let id = Id::of(b"x");
        let k = ManifestKey::parse(&format!("manifests/a/b/20261125T221000Z-{id}.json")).unwrap();
        assert_eq!(k.time.to_rfc3339(), "2026-11-25T22:10:00+00:00");
    }

    #[test]
    fn rejects_odd_keys() {
        let id = Id::of(b"x");
        for k in [
            format!("manifests/../root/20261125T221000Z-{id}.json"),
            format!("manifests/a/b/c/20261125T221000Z-{id}.json"),
            format!("manifests/a/b/2026-11-25-{id}.json"),
            "manifests/a/b/20261125T221000Z-zz.json".to_string(),
            format!("chunks/a/b/20261125T221000Z-{id}.json"),
        ] {
            assert!(ManifestKey::parse(&k).is_err(), "{k}");
        }
    }
}
