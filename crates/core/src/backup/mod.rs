//! Backup: turn volumes into chunks, an index and (last) a manifest.

pub mod pipeline;

use std::path::PathBuf;

use chrono::Utc;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};
use crate::names::check_name;
use crate::repo::manifest::{
    Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo, FORMAT_VERSION,
};
use crate::repo::Id;
use crate::repo::{ManifestKey, Repo};
use crate::source::{self, FormatChoice};

#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub name: String,
    pub role: Role,
    pub path: PathBuf,
    pub format: FormatChoice,
}

#[derive(Debug, Clone)]
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
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
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
    // Held until the manifests are written: a gc cannot delete a chunk
    // this backup found already stored (see `lock`).
    if let Some(d) = &req.definition {
        d.check()?;
    }
    let lock = crate::lock::LocalWriter::start(repo.root(), &format!("backup {}", req.vm))?;
    let set = hex::encode(rand::random::<[u8; 16]>());
    let existing = repo.load_all()?;
    let host = hostname();
    let mut staged: Vec<(Manifest, f64)> = Vec::new();
    for spec in &req.volumes {
        let started = std::time::Instant::now();
        progress.set_phase(&format!("opening {}", spec.name));
        // A disk a running VM writes would be read torn: refuse it rather
        // than store a backup that may not restore.
        if source::qemu::held_for_writing(&spec.path) {
            return Err(Error::Source {
                path: spec.path.clone(),
                reason: source::qemu::IN_USE.into(),
            });
        }
        let mut src = source::open(&spec.path, spec.format)?;
        progress.set_phase(&format!("backing up {}", spec.name));
        let writer = repo.chunk_writer();
        let level = repo.config.compression.level;
        let scan = pipeline::scan(
            src.reader.as_mut(),
            repo.chunk_size(),
            Some(pipeline::Store {
                writer: &writer,
                level,
            }),
            cancel,
            progress,
        )?;
        progress.set_phase(&format!("committing {}", spec.name));
        writer.commit()?;
        let index_id = repo.write_index(&scan.index)?;
        let parent = existing
            .iter()
            .rev()
            .find(|(k, _)| k.vm == req.vm && k.volume == spec.name)
            .map(|(k, _)| k.id);
        let manifest = Manifest {
            format: FORMAT_VERSION,
            vm: VmInfo {
                name: req.vm.clone(),
            },
            volume: VolumeInfo {
                name: spec.name.clone(),
                role: spec.role,
                format: src.format,
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
        };
        staged.push((manifest, started.elapsed().as_secs_f64()));
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    // The definition is durable before any manifest names it.
    let definition = match &req.definition {
        Some(d) => Some(repo.write_definition(&d.to_bytes())?),
        None => None,
    };
    lock.check()?;
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
        });
    }
    Ok(BackupResult {
        vm: req.vm.clone(),
        set,
        volumes,
    })
}
