//! Manifests: one backup of one volume, named by VM, volume, time and hash.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::id::Id;
use crate::error::{Error, Result};
use crate::names::{check_name, is_valid_name};

/// The largest definition document accepted (a domain XML is a few KiB).
pub const MAX_DEFINITION_BYTES: usize = 1 << 20;

/// Format 2 added `definition` (the VM's definition, stored as a chunk),
/// format 3 `capture` (how the disk was read: consistency, dirty bitmap).
/// Older manifests are still read.
pub const FORMAT_VERSION: u32 = 3;
pub const OLDEST_FORMAT: u32 = 1;
/// Key times carry milliseconds: two backups of a volume within one second
/// must still order correctly from a key listing alone.
const KEY_TIME: &str = "%Y%m%dT%H%M%S%.3fZ";
const KEY_TIME_SECONDS: &str = "%Y%m%dT%H%M%SZ";
/// How far ahead of this machine's clock a backup may be dated. More is a
/// forged or broken manifest: it would become `@latest` for years.
pub const MAX_CLOCK_SKEW_HOURS: i64 = 24;

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

/// The VM's definition of a backup set: a JSON document
/// (`vm::Definition`) stored as a chunk, so it is content addressed,
/// compressed, verified on every read and moved by push and pull with the
/// volumes; identical definitions are stored once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionRef {
    pub chunk: Id,
    pub size: u64,
}

impl DefinitionRef {
    /// A definition document as the chunk that stores it: its reference
    /// and its encoded bytes. Refuses a document no manifest may name.
    pub fn encode(
        doc: &[u8],
        level: i32,
        keys: Option<&crate::crypto::Keys>,
    ) -> Result<(DefinitionRef, Vec<u8>)> {
        if doc.is_empty() || doc.len() > MAX_DEFINITION_BYTES {
            return Err(Error::BadInput(format!(
                "a VM definition of {} bytes is outside 1 to {} bytes",
                doc.len(),
                MAX_DEFINITION_BYTES
            )));
        }
        let encoded = crate::format::chunk::Encoder::new(level)?.encode(doc)?;
        let plain = Id::of(doc);
        // A chunk's name: the hash of its plaintext, or of its sealed bytes.
        let (chunk, stored) = match keys {
            Some(k) => {
                let sealed =
                    super::sealed::seal(k, super::sealed::Kind::Chunk, &plain.0, &encoded)?;
                (Id::of(&sealed), sealed)
            }
            None => (plain, encoded),
        };
        Ok((
            DefinitionRef {
                chunk,
                size: doc.len() as u64,
            },
            stored,
        ))
    }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<DefinitionRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
}

/// How consistent the captured disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read while no QEMU ran it (a stopped VM, or a disk image).
    Offline,
    /// A running VM's disks at one instant, as after a power cut.
    Crash,
    /// A running VM's disks at one instant with the guest's filesystems
    /// frozen by its agent.
    Application,
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::Offline => "offline",
            Consistency::Crash => "crash-consistent",
            Consistency::Application => "application-consistent",
        })
    }
}

/// How a volume was read for this backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    pub consistency: Consistency,
    /// Why not application-consistent, or how long the guest was frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The dirty bitmap (on the disk, in QEMU or the qcow2 file) that
    /// records changes since this backup: the next backup's fast path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
    /// Whether only the clusters a bitmap marked were read.
    pub incremental: bool,
    /// Why the whole disk was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    /// Guest bytes read from the disk.
    pub bytes_read: u64,
}

/// Text fields of a capture are shown to people: bounded.
const MAX_CAPTURE_TEXT: usize = 512;

/// `lifeboat-` and 32 lowercase hex digits: the only bitmap names lifeboat
/// creates, removes or exports.
pub fn is_bitmap_name(s: &str) -> bool {
    s.strip_prefix("lifeboat-").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

impl Capture {
    /// Cuts text fields to what a reader accepts (QEMU's and qemu-img's
    /// messages can be long).
    pub fn bounded(mut self) -> Capture {
        for t in [&mut self.note, &mut self.full_reason]
            .into_iter()
            .flatten()
        {
            if t.len() > MAX_CAPTURE_TEXT {
                let mut end = MAX_CAPTURE_TEXT - 3;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
                t.push_str("...");
            }
        }
        self
    }

    /// One line for people (escape it before a terminal shows it).
    pub fn summary(&self) -> String {
        let read = if self.incremental {
            format!(
                "read {} changed (dirty bitmap)",
                crate::text::bytes(self.bytes_read)
            )
        } else {
            format!(
                "read {} in full{}",
                crate::text::bytes(self.bytes_read),
                self.full_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        };
        let note = self
            .note
            .as_deref()
            .map(|n| format!("; {n}"))
            .unwrap_or_default();
        format!("{}, {read}{note}", self.consistency)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if let Some(b) = &self.bitmap {
            if !is_bitmap_name(b) {
                return Err("its capture names a bitmap that is not lifeboat's".into());
            }
        }
        for t in [&self.note, &self.full_reason].into_iter().flatten() {
            if t.len() > MAX_CAPTURE_TEXT {
                return Err(format!("its capture text is over {MAX_CAPTURE_TEXT} bytes"));
            }
        }
        Ok(())
    }
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
        self.key_of(&bytes)
    }

    fn key_of(&self, stored: &[u8]) -> ManifestKey {
        ManifestKey {
            vm: self.vm.name.clone(),
            volume: self.volume.name.clone(),
            time: self.created_at.trunc_subsecs(3),
            id: Id::of(stored),
        }
    }

    /// The manifest as a repository stores it (sealed with `keys` in an
    /// encrypted one), and the key it is stored under.
    pub fn stored(&self, keys: Option<&crate::crypto::Keys>) -> Result<(ManifestKey, Vec<u8>)> {
        let bytes = super::sealed::seal_doc(
            keys,
            super::sealed::Kind::Manifest,
            // Serialising plain structs of strings and numbers cannot fail.
            || serde_json::to_vec(&self.refs()).unwrap_or_default(),
            self.to_bytes(),
        )?;
        Ok((self.key_of(&bytes), bytes))
    }

    pub fn refs(&self) -> Refs {
        Refs {
            index: self.index,
            definition: self.definition,
            set: self.set.clone(),
            role: self.volume.role,
            chunk_size: self.chunk_size,
            format: self.volume.format,
            stats: self.stats.clone(),
        }
    }

    /// A sealed backup as a keyless reader (a repository server) sees it:
    /// names and time from its key, the rest from its envelope; no
    /// source, note, policy or capture (sealed). For `/metrics` only.
    pub fn outline(key: &ManifestKey, refs: Refs) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            vm: VmInfo {
                name: key.vm.clone(),
            },
            volume: VolumeInfo {
                name: key.volume.clone(),
                role: refs.role,
                format: refs.format,
                virtual_size: refs.stats.logical_bytes,
            },
            created_at: key.time,
            chunk_size: refs.chunk_size,
            index: refs.index,
            parent: None,
            set: refs.set,
            source: SourceInfo {
                host: String::new(),
                path: String::new(),
            },
            stats: refs.stats,
            labels: Labels::default(),
            definition: refs.definition,
            capture: None,
        }
    }

    /// What a stored manifest references: parsed from an unsealed one, read
    /// from a sealed one's envelope without the key (a repository server).
    pub fn refs_of(key: &ManifestKey, data: &[u8]) -> Result<Refs> {
        if !super::sealed::is_sealed(data) {
            return Manifest::from_bytes(key, data).map(|m| m.refs());
        }
        let bad = |why: String| Error::corrupt("manifest", key.id, why);
        let actual = Id::of(data);
        if actual != key.id {
            return Err(bad(format!("content hashes to {}", actual.short())));
        }
        let env = super::sealed::envelope(super::sealed::Kind::Manifest, data).map_err(bad)?;
        let refs: Refs = serde_json::from_slice(env)
            .map_err(|e| bad(format!("its envelope is not valid: {e}")))?;
        refs.check().map_err(bad)?;
        Ok(refs)
    }

    /// Parses a manifest fetched under `key`, checking hash, names and format.
    pub fn from_bytes(key: &ManifestKey, data: &[u8]) -> Result<Manifest> {
        let bad = |why: String| Error::corrupt("manifest", key.id, why);
        let actual = Id::of(data);
        if actual != key.id {
            return Err(bad(format!("content hashes to {}", actual.short())));
        }
        let opened;
        let sealed_envelope = if super::sealed::is_sealed(data) {
            Some(super::sealed::envelope(super::sealed::Kind::Manifest, data).map_err(&bad)?)
        } else {
            None
        };
        let data = if super::sealed::is_sealed(data) {
            opened = super::sealed::open_doc(
                super::sealed::Kind::Manifest,
                "manifest",
                &key.id.to_hex(),
                data,
            )?;
            &opened[..]
        } else {
            data
        };
        let mut m: Manifest =
            serde_json::from_slice(data).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        // Protection is a mark beside the manifest (`protect`), which only
        // an admin removes; a manifest claiming it is a client's word,
        // never trusted (it would keep a set from every prune, and no
        // `unprotect` could lift it).
        m.labels.protected = false;
        if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&m.format) {
            return Err(bad(format!(
                "unsupported manifest format {} (this lifeboat reads {OLDEST_FORMAT} to {FORMAT_VERSION}; a newer lifeboat wrote it?)",
                m.format
            )));
        }
        if m.definition.is_some() && m.format < 2 {
            return Err(bad("a format-1 manifest cannot name a definition".into()));
        }
        if let Some(c) = &m.capture {
            if m.format < 3 {
                return Err(bad(format!(
                    "a format-{} manifest cannot carry a capture record",
                    m.format
                )));
            }
            c.check().map_err(bad)?;
        }
        if let Some(env) = sealed_envelope {
            let clear: Refs = serde_json::from_slice(env)
                .map_err(|e| bad(format!("its envelope is not valid: {e}")))?;
            if clear != m.refs() {
                return Err(bad(
                    "its clear references differ from its sealed content".into()
                ));
            }
        }
        if m.vm.name != key.vm || m.volume.name != key.volume {
            return Err(bad(format!(
                "names {}/{} do not match its key {}/{}",
                m.vm.name, m.volume.name, key.vm, key.volume
            )));
        }
        check_name("VM", &m.vm.name).map_err(|e| bad(e.to_string()))?;
        check_name("volume", &m.volume.name).map_err(|e| bad(e.to_string()))?;
        m.refs().check().map_err(bad)?;
        // The key's time is what listings sort and resolve `@latest` by, so
        // it must be the manifest's own time: otherwise the same backup
        // could be listed again under any date.
        if key.time != m.created_at.trunc_subsecs(3) {
            return Err(bad(format!(
                "its key is dated {} but it was created at {}",
                key.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                m.created_at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            )));
        }
        Ok(m)
    }
}

/// What a manifest references and the set it belongs to: what a repository
/// server needs to check an upload and keep its catalog, readable from a
/// sealed manifest's envelope without the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refs {
    pub index: Id,
    pub definition: Option<DefinitionRef>,
    pub set: String,
    pub role: Role,
    pub chunk_size: u64,
    /// For a keyless server's `/metrics` (sizes it could infer from the
    /// objects it holds anyway).
    pub format: ImageFormat,
    pub stats: Stats,
}

impl Refs {
    fn check(&self) -> std::result::Result<(), String> {
        if self.set.is_empty()
            || self.set.len() > 64
            || !self
                .set
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err("its set id is not 1 to 64 lowercase hex digits".into());
        }
        if let Some(d) = &self.definition {
            if d.size == 0 || d.size > MAX_DEFINITION_BYTES as u64 || d.chunk.is_zero() {
                return Err(format!(
                    "its definition is {} bytes (1 to {} allowed)",
                    d.size, MAX_DEFINITION_BYTES
                ));
            }
        }
        Ok(())
    }
}

/// Sorts keys oldest first and drops repeats of one manifest id (the same
/// backup named twice, e.g. with and without milliseconds).
pub fn sort_dedup(keys: &mut Vec<ManifestKey>) {
    keys.sort_by(|a, b| (a.time, &a.vm, &a.volume, a.id).cmp(&(b.time, &b.vm, &b.volume, b.id)));
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.id));
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

    /// Whether the key is not dated further ahead than clocks can be off.
    pub fn is_plausible(&self, now: DateTime<Utc>) -> bool {
        self.time <= now + chrono::Duration::hours(MAX_CLOCK_SKEW_HOURS)
    }

    pub fn file_name(&self) -> String {
        format!("{}-{}.json", self.time.format(KEY_TIME), self.id)
    }

    /// Parses an object key; anything that is not exactly a manifest key
    /// (bad names, path tricks, other files) is rejected.
    pub fn parse(key: &str) -> Result<ManifestKey> {
        let bad = || Error::BadInput(format!("not a manifest key: {key:?}"));
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
            definition: None,
            capture: None,
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
    fn format_1_is_read_and_definitions_need_format_2() {
        // A format-1 manifest as an older lifeboat wrote it (no field).
        let m = sample();
        let bytes = m.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("definition"));
        assert_eq!(Manifest::from_bytes(&m.key(), &bytes).unwrap(), m);
        let def = Some(DefinitionRef {
            chunk: Id::of(b"def"),
            size: 100,
        });
        let mut v1 = sample();
        v1.definition = def;
        assert!(Manifest::from_bytes(&v1.key(), &v1.to_bytes()).is_err());
        let mut v2 = v1.clone();
        v2.format = 2;
        assert_eq!(Manifest::from_bytes(&v2.key(), &v2.to_bytes()).unwrap(), v2);
        let mut v4 = v2.clone();
        v4.format = 4;
        let e = Manifest::from_bytes(&v4.key(), &v4.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("newer lifeboat"), "{e}");
        let mut huge = v2;
        huge.definition = Some(DefinitionRef {
            chunk: Id::of(b"def"),
            size: 1 << 30,
        });
        assert!(Manifest::from_bytes(&huge.key(), &huge.to_bytes()).is_err());
    }

    #[test]
    fn captures_are_checked_and_bounded() {
        let capture = Capture {
            consistency: Consistency::Application,
            note: Some("1 guest filesystems frozen for 12 ms".into()),
            bitmap: Some(format!("lifeboat-{}", "ab".repeat(16))),
            incremental: true,
            full_reason: None,
            bytes_read: 65536,
        };
        let mut m = sample();
        m.format = 3;
        m.capture = Some(capture.clone());
        assert_eq!(Manifest::from_bytes(&m.key(), &m.to_bytes()).unwrap(), m);
        assert!(capture
            .summary()
            .starts_with("application-consistent, read 64.0 KiB changed"));
        for older in [1, 2] {
            let mut v = m.clone();
            v.format = older;
            assert!(Manifest::from_bytes(&v.key(), &v.to_bytes()).is_err());
        }
        for bad in [
            "backup-vda",
            "lifeboat-../x",
            &format!("lifeboat-{}", "AB".repeat(16)),
        ] {
            let mut b = m.clone();
            b.capture = Some(Capture {
                bitmap: Some(bad.to_string()),
                ..capture.clone()
            });
            let e = Manifest::from_bytes(&b.key(), &b.to_bytes()).unwrap_err();
            assert!(e.to_string().contains("not lifeboat's"), "{bad}: {e}");
        }
        let long = Capture {
            full_reason: Some("é".repeat(600)),
            ..capture
        };
        let mut b = m.clone();
        b.capture = Some(long.clone());
        assert!(Manifest::from_bytes(&b.key(), &b.to_bytes()).is_err());
        b.capture = Some(long.bounded());
        let read = Manifest::from_bytes(&b.key(), &b.to_bytes()).unwrap();
        assert!(read.capture.unwrap().full_reason.unwrap().ends_with("..."));
    }

    #[test]
    fn key_time_must_be_created_at() {
        let m = sample();
        let good = m.key();
        let mut forged = good.clone();
        forged.time = "2999-01-01T00:00:00Z".parse().unwrap();
        let e = Manifest::from_bytes(&forged, &m.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("dated 2999"), "{e}");
        assert!(!forged.is_plausible(Utc::now()));
        assert!(good.is_plausible(Utc::now()));
        let mut keys = vec![good.clone(), good.clone()];
        sort_dedup(&mut keys);
        assert_eq!(keys.len(), 1);
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
