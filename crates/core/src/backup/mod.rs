//! Backup: turn volumes into chunks, an index and (last) a manifest.

pub mod pipeline;

use std::path::PathBuf;

use chrono::Utc;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::manifest::{
    Capture, Consistency, Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
    FORMAT_VERSION,
};
use crate::format::Id;
use crate::format::ManifestKey;
use crate::jobs::{CancellationToken, Progress};
use crate::live::bitmap::Read;
use crate::live::capture::{PreviousBackup, Session};
use crate::live::qmp::{Absent, Qmp};
use crate::live::LiveConfig;
use crate::names::check_name;
use crate::repo::Repo;
use crate::source::{self, FormatChoice};

#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub name: String,
    pub role: Role,
    pub path: PathBuf,
    pub format: FormatChoice,
}

#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    pub vm: String,
    pub volumes: Vec<VolumeSpec>,
    pub note: Option<String>,
    /// Backdates the manifests (the demo builds a history with it); None
    /// for every real backup, which is stamped with the current time.
    pub created_at: Option<chrono::DateTime<Utc>>,
    /// The VM's definition, stored with the set (None for volumes given
    /// on the command line outside the inventory).
    pub definition: Option<crate::vm::Definition>,
    /// How to reach the VM's QEMU when it runs.
    pub live: LiveConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupResult {
    pub vm: String,
    pub set: String,
    pub volumes: Vec<VolumeOutcome>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeOutcome {
    pub volume: String,
    pub manifest: Id,
    pub key: String,
    pub index: Id,
    pub stats: Stats,
    pub seconds: f64,
    /// How the volume was read (every backup records it).
    pub capture: Option<Capture>,
}

/// Backs up every volume of the request as one set. Manifests are written
/// only after every volume's chunks and index are durable, so the set is
/// either complete or absent.
pub fn backup(
    repo: &Repo,
    req: &BackupRequest,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<BackupResult> {
    check_name("VM", &req.vm)?;
    if req.volumes.is_empty() {
        return Err(Error::BadInput(format!(
            "VM {} has no volumes to back up: list them in the config or pass --volume NAME=PATH",
            req.vm
        )));
    }
    for v in &req.volumes {
        check_name("volume", &v.name)?;
    }
    if let Some(d) = &req.definition {
        d.check()?;
    }
    // Held until the manifests are written: a gc cannot delete a chunk
    // this backup found already stored (see `lock`).
    let lock = crate::lock::LocalWriter::start(repo.root(), &format!("backup {}", req.vm))?;
    let set = hex::encode(rand::random::<[u8; 16]>());
    let existing = repo.load_all()?;
    let host = crate::sys::hostname();
    let previous: Vec<Option<&(ManifestKey, Manifest)>> = req
        .volumes
        .iter()
        .map(|v| {
            existing
                .iter()
                .rev()
                .find(|(k, _)| k.vm == req.vm && k.volume == v.name)
        })
        .collect();
    let live = start_live(repo, req, &previous, &set, progress)?;
    let offline_note = match &live {
        Live::NotRunning(why) => Some(format!("the VM is not running: {why}")),
        _ => None,
    };
    let mut staged: Vec<(Manifest, f64)> = Vec::new();
    let mut offline_bitmaps = Vec::new();
    for (i, spec) in req.volumes.iter().enumerate() {
        let started = std::time::Instant::now();
        progress.set_phase(&format!("opening {}", spec.name));
        let (mut reader, format, mut capture) = match &live {
            Live::Running(session, _) => {
                let reader: Box<dyn source::VolumeReader> = Box::new(session.reader(i)?);
                let d = &session.disks[i];
                let capture = Capture {
                    consistency: session.consistency,
                    note: session.note.clone(),
                    bitmap: d.new_bitmap.clone(),
                    incremental: matches!(d.read, Read::Incremental { .. }),
                    full_reason: match &d.read {
                        Read::Full { reason } => Some(reason.clone()),
                        Read::Incremental { .. } => None,
                    },
                    bytes_read: 0,
                };
                (reader, d.format, capture)
            }
            Live::NotRunning(_) | Live::NotConfigured => {
                let prev = previous[i].map(|(_, m)| PreviousBackup::of(m));
                let opened = crate::live::offline::open(
                    &spec.path,
                    spec.format,
                    prev.as_ref(),
                    repo.chunk_size(),
                    &set,
                    &req.live,
                )?;
                let capture = Capture {
                    consistency: Consistency::Offline,
                    note: offline_note.clone(),
                    bitmap: opened.bitmaps.as_ref().and_then(|b| b.new_bitmap.clone()),
                    incremental: opened.incremental(),
                    full_reason: opened.full_reason.clone(),
                    bytes_read: 0,
                };
                if let Some(b) = opened.bitmaps {
                    offline_bitmaps.push(b);
                }
                (opened.source.reader, opened.source.format, capture)
            }
        };
        let dirty = reader.dirty_extents().cloned();
        let base_index = match (&dirty, previous[i]) {
            (Some(_), Some((_, m))) => Some(repo.read_index(&m.index)?),
            _ => None,
        };
        progress.set_phase(&format!(
            "backing up {}{}",
            spec.name,
            if base_index.is_some() {
                " (changed blocks only)"
            } else {
                ""
            }
        ));
        let writer = repo.chunk_writer();
        let level = repo.config.compression.level;
        let fill = |id: &crate::format::Id| repo.read_chunk(id);
        let base = match (&dirty, &base_index) {
            (Some(d), Some(index)) => Some(pipeline::Base {
                dirty: d,
                index,
                fill: &fill,
            }),
            _ => None,
        };
        let scan = pipeline::scan(
            reader.as_mut(),
            repo.chunk_size(),
            Some(pipeline::Store {
                writer: &writer,
                level,
            }),
            base,
            cancel,
            progress,
        )?;
        drop(reader);
        capture.bytes_read = scan.bytes_read;
        progress.set_phase(&format!("committing {}", spec.name));
        writer.commit()?;
        let index_id = repo.write_index(&scan.index)?;
        let parent = previous[i].map(|(k, _)| k.id);
        let manifest = Manifest {
            format: FORMAT_VERSION,
            vm: VmInfo {
                name: req.vm.clone(),
            },
            volume: VolumeInfo {
                name: spec.name.clone(),
                role: spec.role,
                format,
                virtual_size: scan.index.image_size,
            },
            created_at: req.created_at.unwrap_or_else(Utc::now),
            chunk_size: repo.chunk_size(),
            index: index_id,
            parent,
            set: set.clone(),
            source: SourceInfo {
                host: host.clone(),
                path: spec.path.display().to_string(),
            },
            stats: Stats {
                logical_bytes: scan.index.image_size,
                nonzero_bytes: scan.index.nonzero_bytes(),
                new_chunks: scan.new_chunks,
                new_stored_bytes: scan.new_stored_bytes,
            },
            labels: Labels {
                policy: None,
                note: req.note.clone(),
                protected: false,
            },
            definition: None,
            capture: Some(capture.bounded()),
        };
        staged.push((manifest, started.elapsed().as_secs_f64()));
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    // The definition is durable before any manifest names it. Every
    // volume of the set is one of its disks (a restore refuses a set
    // whose volumes its definition does not know).
    let definition = match &req.definition {
        Some(d) => {
            let mut d = d.clone();
            for v in &req.volumes {
                if !d.spec.disks.iter().any(|x| x.volume == v.name) {
                    let bus = crate::vm::Bus::default();
                    let target = crate::vm::domain::free_target(&d.spec.disks, bus);
                    d.spec.disks.push(crate::vm::DiskSpec {
                        volume: v.name.clone(),
                        bus,
                        target,
                    });
                }
            }
            Some(repo.write_definition(&d.to_bytes())?)
        }
        None => None,
    };
    lock.check()?;
    if !lock.present()? {
        // Broken by an admin or lost: a gc may have swept chunks this
        // backup found already there. Every one must still be in place
        // before a manifest names it.
        data_still_there(repo, staged.iter().map(|(m, _)| m))?;
    }
    progress.set_phase("writing manifests");
    if repo.config.format < crate::repo::REPO_FORMAT {
        let mut r = repo.clone();
        r.upgrade_format()?;
    }
    let mut volumes = Vec::new();
    for (mut m, seconds) in staged {
        m.definition = definition;
        let key: ManifestKey = repo.write_manifest(&m)?;
        volumes.push(VolumeOutcome {
            volume: m.volume.name.clone(),
            manifest: key.id,
            key: key.object_key(),
            index: m.index,
            stats: m.stats.clone(),
            seconds,
            capture: m.capture.clone(),
        });
    }
    // Every manifest is durable: the bitmaps they name take over.
    if let Live::Running(session, _lock) = live {
        for w in session.commit() {
            tracing::warn!("VM {}: cleaning up after the backup: {w}", req.vm);
        }
    }
    for b in offline_bitmaps {
        b.commit();
    }
    Ok(BackupResult {
        vm: req.vm.clone(),
        set,
        volumes,
    })
}

enum Live {
    NotConfigured,
    NotRunning(&'static str),
    Running(Box<Session>, crate::live::VmLock),
}

/// Connects to the VM's QEMU when it has a monitor and runs there, and
/// captures every disk at one instant.
fn start_live(
    repo: &Repo,
    req: &BackupRequest,
    previous: &[Option<&(ManifestKey, Manifest)>],
    set: &str,
    progress: &Progress,
) -> Result<Live> {
    let Some(path) = &req.live.qmp else {
        return Ok(Live::NotConfigured);
    };
    let lock = crate::live::VmLock::acquire(path)?;
    let qmp = match Qmp::connect(path, crate::live::QMP_TIMEOUT)? {
        Ok(q) => q,
        Err(Absent(why)) => return Ok(Live::NotRunning(why)),
    };
    progress.set_phase(&format!(
        "asking QEMU for a point-in-time copy (its monitor has {} s to answer each request)",
        crate::live::QMP_TIMEOUT.as_secs()
    ));
    let volumes: Vec<(String, PathBuf)> = req
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.path.clone()))
        .collect();
    let prevs: Vec<Option<PreviousBackup>> = previous
        .iter()
        .map(|p| p.map(|(_, m)| PreviousBackup::of(m)))
        .collect();
    let mut session = Session::begin(qmp, &volumes, &prevs, repo.chunk_size(), set, &req.live)?;
    session.capture(&req.live)?;
    for r in &session.repaired {
        progress.push_line(&format!("repaired: {r}"));
        tracing::warn!("VM {}: {r}", req.vm);
    }
    Ok(Live::Running(Box::new(session), lock))
}

/// After the writer lock vanished: every index and chunk the manifests
/// name must still be in the repository.
fn data_still_there<'a>(repo: &Repo, manifests: impl Iterator<Item = &'a Manifest>) -> Result<()> {
    let mut gone = 0usize;
    for m in manifests {
        if !repo.has_index(&m.index) {
            gone += 1;
            continue;
        }
        let index = repo.read_index(&m.index)?;
        gone += index.chunks.iter().filter(|c| !repo.has_chunk(c)).count();
    }
    if gone > 0 {
        return Err(Error::BadInput(format!(
            "this backup's writer lock on {} vanished (broken, or lost) and {gone} objects it relies on were removed meanwhile; no manifest was written: run the backup again",
            repo.root().display()
        )));
    }
    tracing::warn!(
        "{}: this backup's writer lock vanished; every object its manifests need is still there",
        repo.root().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::repo_config::RepoConfig;
    use crate::jobs::{CancellationToken, Progress};

    fn backed_up(dir: &std::path::Path) -> (Repo, Vec<(ManifestKey, Manifest)>) {
        let repo = Repo::init(&dir.join("repo"), RepoConfig::new(64 << 10, 1).unwrap()).unwrap();
        let img = dir.join("root.img");
        std::fs::write(&img, crate::testkit::image(7, 3)).unwrap();
        let req = BackupRequest {
            vm: "web".into(),
            volumes: vec![VolumeSpec {
                name: "root".into(),
                role: Role::Root,
                path: img,
                format: FormatChoice::Raw,
            }],
            ..Default::default()
        };
        backup(&repo, &req, &CancellationToken::new(), &Progress::new()).unwrap();
        let all = repo.load_all().unwrap();
        (repo, all)
    }

    /// What a backup whose writer lock vanished checks before its
    /// manifests: every index and chunk they name is still there.
    #[test]
    fn a_backup_whose_lock_vanished_finds_swept_data() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, all) = backed_up(dir.path());
        data_still_there(&repo, all.iter().map(|(_, m)| m)).unwrap();
        let index = repo.read_index(&all[0].1.index).unwrap();
        std::fs::remove_file(repo.path_of(&crate::format::keys::chunk_key(&index.chunks[1])))
            .unwrap();
        let e = data_still_there(&repo, all.iter().map(|(_, m)| m))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 objects") && e.contains("run the backup again"),
            "{e}"
        );
    }

    /// The lock a backup holds knows when its document is gone.
    #[test]
    fn a_local_writer_sees_its_lock_broken() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = backed_up(dir.path());
        let w = crate::lock::LocalWriter::start(repo.root(), "backup web").unwrap();
        assert!(w.present().unwrap());
        for e in std::fs::read_dir(repo.root().join("locks"))
            .unwrap()
            .flatten()
        {
            std::fs::remove_file(e.path()).unwrap();
        }
        assert!(!w.present().unwrap());
    }
}
