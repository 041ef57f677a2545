//! Backup: turn volumes into chunks, an index and (last) a manifest.

pub mod pipeline;
pub mod target;

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
use crate::live::libvirt::PullSession;
use crate::live::qmp::{Absent, Qmp};
use crate::live::rbd::{Hold, SnapshotSet};
use crate::live::LiveConfig;
use crate::names::check_name;
use crate::source::rbd::RbdImage;
use crate::source::{self, FormatChoice};
use crate::store::ObjectKey;
pub use target::{ChunkSink, StoreTarget, Target};

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
    /// How to reach the Ceph cluster of `rbd:` volumes.
    pub ceph: crate::source::rbd::CephConfig,
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

/// An encrypted repository's index as plaintext id to sealed id.
fn sealed_names(
    index: &crate::format::Index,
) -> std::collections::HashMap<crate::format::Id, crate::format::Id> {
    index
        .plain
        .iter()
        .zip(&index.chunks)
        .filter(|(p, _)| !p.is_zero())
        .map(|(p, c)| (*p, *c))
        .collect()
}

/// Backs up every volume of the request as one set. Manifests are written
/// only after every volume's chunks and index are durable, so the set is
/// either complete or absent.
pub fn backup(
    repo: &dyn Target,
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
    // An encrypted repository without its key says so before anything is
    // locked or read.
    let seal = repo.config().sealing_keys()?;
    // Held until the manifests are written: a gc cannot delete a chunk
    // this backup found already stored (see `lock`).
    let lock = repo.writer_lock(&format!("backup {}", req.vm))?;
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
    // A libvirt domain's qcow2 images hold libvirt's checkpoint bitmaps,
    // which only libvirt may change: read whole while it is shut off.
    let offline_live = match &req.live.libvirt {
        Some(_) => LiveConfig {
            bitmaps: false,
            ..req.live.clone()
        },
        None => req.live.clone(),
    };
    let mut staged: Vec<(Manifest, f64)> = Vec::new();
    let mut offline_bitmaps = Vec::new();
    for (i, spec) in req.volumes.iter().enumerate() {
        let started = std::time::Instant::now();
        progress.set_phase(&format!("opening {}", spec.name));
        let (mut reader, format, mut capture) = match &live {
            Live::Running(session, _) => {
                let reader = session.reader(i)?;
                let (format, capture) = session.capture_of(i);
                (reader, format, capture)
            }
            Live::NotRunning(_) | Live::NotConfigured => {
                let prev = previous[i].map(|(_, m)| PreviousBackup::of(m));
                let opened = crate::live::offline::open(
                    &spec.path,
                    spec.format,
                    prev.as_ref(),
                    repo.config().chunk_size,
                    &set,
                    &offline_live,
                )?;
                let capture = Capture {
                    consistency: Consistency::Offline,
                    note: offline_note.clone(),
                    bitmap: opened.bitmaps.as_ref().and_then(|b| b.new_bitmap.clone()),
                    incremental: opened.incremental(),
                    full_reason: match (&req.live.libvirt, &opened.full_reason) {
                        (Some(_), Some(_)) => Some(
                            "the libvirt domain is shut off: its checkpoints are read only while it runs".into(),
                        ),
                        (_, r) => r.clone(),
                    },
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
        let writer = repo.chunk_sink();
        let level = repo.config().compression.level;
        let fill = |id: &crate::format::Id| repo.read_chunk(id);
        // Sealed chunks the previous backup already stored, by plaintext.
        let known_sealed = match (&seal, &base_index, previous[i]) {
            (None, _, _) | (_, _, None) => Default::default(),
            (Some(_), Some(index), _) => sealed_names(index),
            (Some(_), None, Some((_, m))) => match repo.read_index(&m.index) {
                Ok(index) => sealed_names(&index),
                // Only a shortcut: without it every chunk is sealed to be named.
                Err(_) => Default::default(),
            },
        };
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
            repo.config().chunk_size,
            Some(pipeline::Store {
                writer: writer.as_ref(),
                level,
                seal: seal.clone().map(|keys| pipeline::Sealing {
                    keys,
                    known: &known_sealed,
                }),
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
            chunk_size: repo.config().chunk_size,
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
    repo.upgrade_format()?;
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
    NotRunning(String),
    Running(Running, crate::live::VmLock),
}

/// A running VM's disks at one instant: through its QMP monitor, or
/// through libvirt's backup API.
enum Running {
    Qmp(Box<Session>),
    Libvirt(Box<PullSession>),
    /// RBD volumes: snapshots taken before any is read (running or not).
    Rbd(Box<SnapshotSet>),
}

impl Running {
    fn reader(&self, i: usize) -> Result<Box<dyn source::VolumeReader>> {
        Ok(match self {
            Running::Qmp(s) => Box::new(s.reader(i)?),
            Running::Libvirt(s) => Box::new(s.reader(i)?),
            Running::Rbd(s) => s.reader(i)?,
        })
    }

    /// The disk's format and how it was read, for its manifest.
    fn capture_of(&self, i: usize) -> (crate::format::manifest::ImageFormat, Capture) {
        let (format, read, bitmap, consistency, note) = match self {
            Running::Qmp(s) => {
                let d = &s.disks[i];
                (
                    d.format,
                    &d.read,
                    d.new_bitmap.clone(),
                    s.consistency,
                    &s.note,
                )
            }
            Running::Libvirt(s) => {
                let d = &s.disks[i];
                (
                    d.format,
                    &d.read,
                    d.new_bitmap.clone(),
                    s.consistency,
                    &s.note,
                )
            }
            Running::Rbd(s) => {
                let d = &s.disks[i];
                let kept = d.snapshots.kept().map(str::to_string);
                let raw = crate::format::manifest::ImageFormat::Raw;
                (raw, &d.read, kept, s.consistency, &s.note)
            }
        };
        let capture = Capture {
            consistency,
            note: note.clone(),
            bitmap,
            incremental: matches!(read, Read::Incremental { .. }),
            full_reason: match read {
                Read::Full { reason } => Some(reason.clone()),
                Read::Incremental { .. } => None,
            },
            bytes_read: 0,
        };
        (format, capture)
    }

    fn repaired(&self) -> &[String] {
        match self {
            Running::Qmp(s) => &s.repaired,
            Running::Libvirt(s) => &s.repaired,
            Running::Rbd(s) => &s.repaired,
        }
    }

    fn commit(self) -> Vec<String> {
        match self {
            Running::Qmp(s) => s.commit(),
            Running::Libvirt(s) => s.commit(),
            Running::Rbd(s) => s.commit(),
        }
    }
}

/// Connects to the VM's QEMU when it has a monitor and runs there, and
/// captures every disk at one instant.
fn start_live(
    repo: &dyn Target,
    req: &BackupRequest,
    previous: &[Option<&(ManifestKey, Manifest)>],
    set: &str,
    progress: &Progress,
) -> Result<Live> {
    let volumes: Vec<(String, PathBuf)> = req
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.path.clone()))
        .collect();
    let prevs: Vec<Option<PreviousBackup>> = previous
        .iter()
        .map(|p| p.map(|(_, m)| PreviousBackup::of(m)))
        .collect();
    if volumes.iter().any(|(_, p)| RbdImage::is_rbd(p)) {
        return rbd_snapshots(repo, req, &volumes, &prevs, set, progress);
    }
    if let Some(domain) = &req.live.libvirt {
        let lock = crate::live::VmLock::acquire(&domain.lock_key())?;
        let state = crate::live::libvirt::state(&domain.virsh(), &domain.domain)?;
        if !crate::live::libvirt::is_live(&state) {
            return Ok(Live::NotRunning(format!(
                "libvirt says the domain is {state}"
            )));
        }
        progress.set_phase("asking libvirt for a point-in-time copy (backup-begin, pull mode)");
        let mut session = PullSession::begin(
            domain,
            &volumes,
            &prevs,
            repo.config().chunk_size,
            set,
            &req.live,
        )?;
        session.capture(&req.live)?;
        let running = Running::Libvirt(Box::new(session));
        report_repairs(&running, req, progress);
        return Ok(Live::Running(running, lock));
    }
    let Some(path) = &req.live.qmp else {
        return Ok(Live::NotConfigured);
    };
    let lock = crate::live::VmLock::acquire(path)?;
    let qmp = match Qmp::connect(path, crate::live::QMP_TIMEOUT)? {
        Ok(q) => q,
        Err(Absent(why)) => return Ok(Live::NotRunning(why.to_string())),
    };
    progress.set_phase(&format!(
        "asking QEMU for a point-in-time copy (its monitor has {} s to answer each request)",
        crate::live::QMP_TIMEOUT.as_secs()
    ));
    let mut session = Session::begin(
        qmp,
        &volumes,
        &prevs,
        repo.config().chunk_size,
        set,
        &req.live,
    )?;
    session.capture(&req.live)?;
    let running = Running::Qmp(Box::new(session));
    report_repairs(&running, req, progress);
    Ok(Live::Running(running, lock))
}

/// A VM whose volumes are RBD images: every volume snapshotted before any
/// is read, the guest frozen or the VM paused meanwhile when it runs
/// under QEMU (see `live::rbd`).
fn rbd_snapshots(
    repo: &dyn Target,
    req: &BackupRequest,
    volumes: &[(String, PathBuf)],
    prevs: &[Option<PreviousBackup>],
    set: &str,
    progress: &Progress,
) -> Result<Live> {
    if let Some((name, path)) = volumes.iter().find(|(_, p)| !RbdImage::is_rbd(p)) {
        return Err(Error::BadInput(format!(
            "VM {}: volume {name} ({}) is a file while others are RBD images; lifeboat snapshots a VM's RBD images together and reads files through QEMU, not both in one backup: put them in separate [[vm]] entries",
            req.vm,
            path.display()
        )));
    }
    if req.live.libvirt.is_some() {
        return Err(Error::BadInput(format!(
            "VM {}: RBD volumes of a libvirt domain are not supported yet (libvirt's backup API reads files only here); give the [[vm]] entry its QEMU monitor as `qmp` instead of `libvirt_domain`",
            req.vm
        )));
    }
    let key = req.live.qmp.clone().unwrap_or_else(|| volumes[0].1.clone());
    let lock = crate::live::VmLock::acquire(&key)?;
    let mut planned = Vec::new();
    for (i, (_, path)) in volumes.iter().enumerate() {
        planned.push(crate::live::rbd::plan(
            path,
            &req.ceph,
            prevs.get(i).and_then(Option::as_ref),
            repo.config().chunk_size,
            req.live.bitmaps,
        )?);
    }
    progress.set_phase("taking RBD snapshots");
    let mut qmp = match &req.live.qmp {
        None => None,
        Some(path) => Some(Qmp::connect(path, crate::live::QMP_TIMEOUT)?),
    };
    let hold = match qmp.as_mut() {
        None => Hold::Unknown,
        Some(Err(Absent(why))) => Hold::Offline(why.to_string()),
        Some(Ok(q)) => Hold::Running(q),
    };
    let taken = SnapshotSet::take(planned, &req.ceph, set, hold, &req.live)?;
    let running = Running::Rbd(Box::new(taken));
    report_repairs(&running, req, progress);
    Ok(Live::Running(running, lock))
}

fn report_repairs(running: &Running, req: &BackupRequest, progress: &Progress) {
    for r in running.repaired() {
        progress.push_line(&format!("repaired: {r}"));
        tracing::warn!("VM {}: {r}", req.vm);
    }
}

/// After the writer lock vanished: every index and chunk the manifests
/// name must still be in the repository.
fn data_still_there<'a>(
    repo: &dyn Target,
    manifests: impl Iterator<Item = &'a Manifest>,
) -> Result<()> {
    let mut gone = 0usize;
    for m in manifests {
        if !repo.has(&ObjectKey::Index(m.index))? {
            gone += 1;
            continue;
        }
        let index = repo.read_index(&m.index)?;
        for c in index.chunks.iter().filter(|c| !c.is_zero()) {
            if !repo.has(&ObjectKey::Chunk(*c))? {
                gone += 1;
            }
        }
    }
    if gone > 0 {
        return Err(Error::BadInput(format!(
            "this backup's writer lock on {} vanished (broken, or lost) and {gone} objects it relies on were removed meanwhile; no manifest was written: run the backup again",
            repo.describe()
        )));
    }
    tracing::warn!(
        "{}: this backup's writer lock vanished; every object its manifests need is still there",
        repo.describe()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::repo_config::RepoConfig;
    use crate::jobs::{CancellationToken, Progress};
    use crate::repo::Repo;

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

    /// A backup into a `Repository` over the in-memory store, driven from
    /// this (non-runtime) thread as the CLI drives one from a blocking one.
    struct InMemory {
        rt: tokio::runtime::Runtime,
        mem: std::sync::Arc<crate::store::memory::MemoryStore>,
        target: StoreTarget,
        dir: tempfile::TempDir,
    }

    impl InMemory {
        fn new() -> InMemory {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (mem, store) = crate::testkit::memory();
            let repo = rt
                .block_on(crate::repository::Repository::create(
                    store,
                    RepoConfig::new(64 << 10, 1).unwrap(),
                ))
                .unwrap();
            let target = StoreTarget::new(repo, rt.handle().clone());
            InMemory {
                rt,
                mem,
                target,
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn backup(&self, image: &[u8]) -> Result<BackupResult> {
            let img = self.dir.path().join("root.img");
            std::fs::write(&img, image).unwrap();
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
            backup(
                &self.target,
                &req,
                &CancellationToken::new(),
                &Progress::new(),
            )
        }

        fn backups(&self) -> Vec<(ManifestKey, Manifest)> {
            self.rt.block_on(self.target.repo().backups()).unwrap()
        }

        fn restored(&self, m: &Manifest) -> Vec<u8> {
            self.rt
                .block_on(crate::testkit::read_back(
                    self.target.repo().store().as_ref(),
                    m,
                ))
                .unwrap()
        }

        fn locks(&self) -> usize {
            self.rt
                .block_on(
                    self.target
                        .repo()
                        .store()
                        .list_docs(crate::store::DocKind::Lock),
                )
                .unwrap()
                .len()
        }

        fn faults(&self, f: crate::store::memory::Faults) {
            self.mem.set_faults(f);
        }
    }

    /// A store that fills up half-way: the backup fails and says so, no
    /// manifest names the half-written data, the lock is released; the
    /// next run stores only what is missing and the set reads back whole.
    #[test]
    fn a_backup_into_a_store_that_fills_half_way_commits_nothing_and_the_next_run_resumes() {
        let t = InMemory::new();
        let image = crate::testkit::image(3, 8);
        t.faults(crate::store::memory::Faults {
            full_from: Some(t.mem.puts() + 4),
            ..Default::default()
        });
        let e = t.backup(&image).unwrap_err();
        assert!(matches!(e, Error::DiskFull(_)), "{e}");
        assert!(t.backups().is_empty());
        assert_eq!(t.locks(), 0, "the writer lock is released on failure");
        t.faults(Default::default());
        let done = t.backup(&image).unwrap();
        let stats = &done.volumes[0].stats;
        let all = t.backups();
        assert_eq!(all.len(), 1);
        let chunks = all[0].1.stats.logical_bytes.div_ceil(64 << 10);
        assert!(
            stats.new_chunks > 0 && stats.new_chunks < chunks,
            "the second run stores only what the first could not: {} of {chunks}",
            stats.new_chunks
        );
        assert_eq!(t.restored(&all[0].1), image);
    }

    /// Puts that fail once are retried; the backup completes.
    #[test]
    fn transient_put_failures_are_retried() {
        let t = InMemory::new();
        let image = crate::testkit::image(4, 4);
        let next = t.mem.puts() + 1;
        t.faults(crate::store::memory::Faults {
            fail_puts: vec![next, next + 2],
            ..Default::default()
        });
        t.backup(&image).unwrap();
        let all = t.backups();
        assert_eq!(all.len(), 1);
        assert_eq!(t.restored(&all[0].1), image);
    }

    /// A listing that lags behind the last write hides the previous
    /// backup: the next one has no parent, yet stores no chunk twice
    /// (existence is asked of each object, not read from the listing).
    #[test]
    fn a_lagging_listing_costs_the_parent_not_the_dedup() {
        let t = InMemory::new();
        let image = crate::testkit::image(5, 6);
        t.backup(&image).unwrap();
        t.faults(crate::store::memory::Faults {
            list_lag: 1,
            ..Default::default()
        });
        let second = t.backup(&image).unwrap();
        assert_eq!(second.volumes[0].stats.new_chunks, 0);
        t.faults(Default::default());
        let all = t.backups();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].1.parent, None, "the hidden backup is no parent");
        assert_eq!(t.restored(&all[1].1), image);
    }

    /// A gc breaks the lock while the backup runs and sweeps a chunk the
    /// backup found already stored: the backup writes no manifest and
    /// says to run it again; the next run puts the chunk back.
    #[test]
    fn a_lock_broken_while_the_backup_runs_with_data_swept_refuses_the_manifest() {
        let t = InMemory::new();
        let image = crate::testkit::image(6, 5);
        t.backup(&image).unwrap();
        let first = t.backups();
        let index =
            t.rt.block_on(t.target.repo().index(&first[0].1.index))
                .unwrap();
        let swept = index.chunks.iter().find(|c| !c.is_zero()).copied().unwrap();
        // The same image stores no chunk: its first put is the index,
        // after every chunk was found already there.
        t.faults(crate::store::memory::Faults {
            break_in: Some((t.mem.puts() + 1, vec![ObjectKey::Chunk(swept)])),
            ..Default::default()
        });
        let e = t.backup(&image).unwrap_err().to_string();
        assert!(
            e.contains("vanished") && e.contains("1 objects") && e.contains("run the backup again"),
            "{e}"
        );
        assert_eq!(t.backups().len(), 1, "no manifest was written");
        t.faults(Default::default());
        let again = t.backup(&image).unwrap();
        assert_eq!(again.volumes[0].stats.new_chunks, 1);
        let all = t.backups();
        assert_eq!(all.len(), 2);
        assert_eq!(t.restored(&all[1].1), image);
    }

    /// The lock broken, nothing swept: the backup commits (with a warning).
    #[test]
    fn a_lock_broken_with_nothing_swept_still_commits() {
        let t = InMemory::new();
        let image = crate::testkit::image(7, 4);
        t.backup(&image).unwrap();
        t.faults(crate::store::memory::Faults {
            break_in: Some((t.mem.puts() + 1, vec![])),
            ..Default::default()
        });
        t.backup(&image).unwrap();
        assert_eq!(t.backups().len(), 2);
    }

    /// The lock a backup holds knows when its document is gone.
    #[test]
    fn a_local_writer_sees_its_lock_broken() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = backed_up(dir.path());
        let w = crate::lock::BlockingWriter::local(repo.root(), "backup web").unwrap();
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
