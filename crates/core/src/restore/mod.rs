//! Restore: materialise a backup as a file. Everything is written to a temp
//! file next to the target and renamed at the end, so a failed or cancelled
//! restore leaves nothing behind, and every chunk is verified as it is read.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::durable::{fsync_dir, remove_quietly, temp_name};
use crate::error::{Error, Result};
use crate::format::manifest::ImageFormat;
use crate::format::refs::{self, Ref};
use crate::format::{Id, ManifestKey};
use crate::format::{Index, Manifest};
use crate::jobs::{CancellationToken, Progress};
use crate::repo::Repo;
use crate::repository;
use crate::source::qemu::convert_raw_to_qcow2;
use crate::source::rbd::RbdImage;
use crate::store::local::LocalStore;
use crate::store::Store;
use crate::sync::{self, PlanSummary, SyncOptions, TransferPlan};

mod chunks;
mod rbd;

#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub manifest: Id,
    pub vm: String,
    pub volume: String,
    pub target: PathBuf,
    pub format: ImageFormat,
    pub image_size: u64,
    pub bytes_to_write: u64,
    pub overwrites: bool,
    /// The restored file's mode: 0600, or the replaced file's with --force.
    pub mode: u32,
    /// An `rbd:` target's cluster.
    #[serde(skip)]
    pub ceph: Option<crate::source::rbd::CephConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub target: PathBuf,
    pub format: ImageFormat,
    pub image_size: u64,
    pub bytes_written: u64,
    pub index: Id,
}

/// Checks what is at a restore target. Only a missing path or (with
/// `force`) a regular file is acceptable; returns the mode of the file
/// being replaced. Symlinks are refused: following one could write a disk
/// image wherever the link points, and replacing it would surprise the
/// admin who made it. Devices are refused: a rename cannot write onto a
/// disk, and writing in place is not supported yet.
pub fn check_target(target: &Path, force: bool) -> Result<Option<u32>> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let md = match fs::symlink_metadata(target) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("checking", target, e)),
    };
    let ft = md.file_type();
    let refuse = |what: &str, hint: &str| {
        Err(Error::BadInput(format!(
            "cannot restore to {}: it is {what}; {hint}",
            target.display()
        )))
    };
    if ft.is_symlink() {
        let to = fs::read_link(target)
            .map(|p| format!(" (to {})", p.display()))
            .unwrap_or_default();
        return refuse(
            &format!("a symbolic link{to}"),
            "give the real path, or remove the link first",
        );
    }
    if ft.is_dir() {
        return refuse(
            "a directory",
            "give a file path to restore one volume, or VM@latest to restore a set into a directory",
        );
    }
    let device = "restore to a file, then copy it onto the device (e.g. `dd if=FILE of=DEVICE bs=4M conv=sparse`)";
    if ft.is_block_device() {
        return refuse(
            "a block device, and restoring onto devices is not supported yet",
            device,
        );
    }
    if ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
        return refuse("not a regular file", device);
    }
    // Replacing a running VM's disk would leave the VM writing to a
    // deleted file while its restored disk sits unseen under the name.
    if crate::source::qemu::held_for_writing(target) {
        return refuse(
            "the disk of a running QEMU (it holds the image's write lock)",
            "shut the VM down first, or restore next to it and point the VM at the restored file",
        );
    }
    if !force {
        return Err(Error::TargetExists(target.to_path_buf()));
    }
    Ok(Some(md.permissions().mode() & 0o7777))
}

/// Checks the target and builds the plan without writing anything.
pub fn plan(
    manifest_id: Id,
    m: &Manifest,
    index: &Index,
    target: &Path,
    format: ImageFormat,
    force: bool,
    ceph: &crate::source::rbd::CephConfig,
) -> Result<RestorePlan> {
    if RbdImage::is_rbd(target) {
        let image = RbdImage::parse(target)?;
        if format != ImageFormat::Raw {
            return Err(Error::BadInput(
                "an RBD image holds the guest's bytes as they are: drop --format qcow2".into(),
            ));
        }
        let exists = rbd::exists(ceph, &image)?;
        if exists && !force {
            return Err(Error::TargetExists(target.to_path_buf()));
        }
        return Ok(RestorePlan {
            manifest: manifest_id,
            vm: m.vm.name.clone(),
            volume: m.volume.name.clone(),
            target: target.to_path_buf(),
            format,
            image_size: index.image_size,
            bytes_to_write: index.nonzero_bytes(),
            overwrites: exists,
            mode: 0o600,
            ceph: Some(ceph.clone()),
        });
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::BadInput(format!(
            "cannot restore to {}: directory {} does not exist",
            target.display(),
            parent.display()
        )));
    }
    let replaced = check_target(target, force)?;
    check_writable(&parent, target)?;
    let need = index.nonzero_bytes();
    check_space(&parent, need)?;
    Ok(RestorePlan {
        manifest: manifest_id,
        vm: m.vm.name.clone(),
        volume: m.volume.name.clone(),
        target: target.to_path_buf(),
        format,
        image_size: index.image_size,
        bytes_to_write: need,
        overwrites: replaced.is_some(),
        mode: replaced.unwrap_or(0o600),
        ceph: None,
    })
}

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// A REF: one backup, or `VM@…` for every volume of a set.
    pub reference: String,
    /// A file for one volume; a directory for a set.
    pub to: PathBuf,
    /// The output format; None: qcow2 for a `.qcow2` target, the volume's
    /// own format within a set, raw otherwise.
    pub format: Option<ImageFormat>,
    pub force: bool,
    /// How to reach the Ceph cluster of an `rbd:POOL/IMAGE` target.
    pub ceph: crate::source::rbd::CephConfig,
    /// A set restored onto RBD (`rbd:POOL`): its images are NAME-VOLUME
    /// (`--name`); without, each volume backed up from an RBD image gets
    /// that image's name, any other VM-VOLUME.
    pub name: Option<String>,
}

/// A whole restore: one plan per volume, and for a restore from a remote,
/// what has to be fetched into the local repository first.
#[derive(Debug, Clone, Serialize)]
pub struct SetRestorePlan {
    pub volumes: Vec<RestorePlan>,
    /// The set's directory does not exist yet and is created (0700).
    pub creates_directory: Option<PathBuf>,
    /// From a remote: the chunks to fetch (verified, kept locally).
    pub fetch: Option<PlanSummary>,
    #[serde(skip)]
    indexes: Vec<Index>,
    #[serde(skip)]
    transfer: Option<TransferPlan>,
    /// The backups restored, in the order of `volumes`.
    #[serde(skip)]
    pub picked: Vec<(ManifestKey, Manifest)>,
    /// The remote's chunks are in already (`fetch` ran).
    #[serde(skip)]
    fetched: bool,
}

fn plan_volumes(
    req: &RestoreRequest,
    picked: &[(ManifestKey, Manifest)],
    index: impl Fn(&Id) -> Result<Index>,
) -> Result<SetRestorePlan> {
    let is_set = matches!(Ref::parse(&req.reference)?, Ref::Set { .. });
    if is_set && RbdImage::is_rbd(&req.to) {
        return plan_onto_rbd(req, picked, index);
    }
    let mut creates_directory = None;
    if is_set {
        match fs::symlink_metadata(&req.to) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(Error::BadInput(format!(
                    "{} is not a directory: a VM set restores into a directory",
                    req.to.display()
                )))
            }
            Err(_) => {
                let parent = match req.to.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if !parent.is_dir() {
                    return Err(Error::BadInput(format!(
                        "cannot restore into {}: directory {} does not exist",
                        req.to.display(),
                        parent.display()
                    )));
                }
                check_writable(&parent, &req.to)?;
                creates_directory = Some(req.to.clone())
            }
        }
    }
    let chosen = |orig: ImageFormat, path: &Path| match req.format {
        Some(f) => f,
        None if is_set => orig,
        None if path.extension().is_some_and(|e| e == "qcow2") => ImageFormat::Qcow2,
        None => ImageFormat::Raw,
    };
    let mut volumes = Vec::new();
    let mut indexes = Vec::new();
    for (key, m) in picked {
        let idx = index(&m.index)?;
        let target = if is_set {
            let ext = match chosen(m.volume.format, &req.to) {
                ImageFormat::Raw => "raw",
                ImageFormat::Qcow2 => "qcow2",
            };
            req.to.join(format!("{}.{ext}", m.volume.name))
        } else {
            req.to.clone()
        };
        let fmt = chosen(m.volume.format, &target);
        let plan = if creates_directory.is_some() {
            // A new directory holds nothing to check yet.
            RestorePlan {
                manifest: key.id,
                vm: m.vm.name.clone(),
                volume: m.volume.name.clone(),
                target,
                format: fmt,
                image_size: idx.image_size,
                bytes_to_write: idx.nonzero_bytes(),
                overwrites: false,
                mode: 0o600,
                ceph: None,
            }
        } else {
            plan(key.id, m, &idx, &target, fmt, req.force, &req.ceph)?
        };
        volumes.push(plan);
        indexes.push(idx);
    }
    // A set must fit as a whole (each volume was checked alone, and one
    // going into a new directory not at all).
    if is_set {
        let dir = match &creates_directory {
            Some(d) => d
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            None => req.to.clone(),
        };
        check_space(&dir, volumes.iter().map(|v| v.bytes_to_write).sum())?;
    }
    Ok(SetRestorePlan {
        volumes,
        creates_directory,
        fetch: None,
        indexes,
        transfer: None,
        picked: picked.to_vec(),
        fetched: false,
    })
}

/// A whole set onto images of one RBD pool (`rbd:POOL`), named as
/// `RestoreRequest::name` says; each refused when it exists, unless
/// `force`.
fn plan_onto_rbd(
    req: &RestoreRequest,
    picked: &[(ManifestKey, Manifest)],
    index: impl Fn(&Id) -> Result<Index>,
) -> Result<SetRestorePlan> {
    let pool = RbdImage::parse_pool(&req.to)?;
    let mut volumes: Vec<RestorePlan> = Vec::new();
    let mut indexes = Vec::new();
    for (key, m) in picked {
        let image = match (&req.name, RbdImage::parse(Path::new(&m.source.path))) {
            (Some(n), _) => format!("{n}-{}", m.volume.name),
            (None, Ok(orig)) => orig.image,
            (None, Err(_)) => format!("{}-{}", m.vm.name, m.volume.name),
        };
        let target = RbdImage {
            pool: pool.clone(),
            image,
        }
        .path();
        if let Some(other) = volumes.iter().find(|v| v.target == target) {
            return Err(Error::BadInput(format!(
                "volumes {} and {} would both be restored to {}: give --name NAME (images NAME-VOLUME)",
                other.volume,
                m.volume.name,
                target.display()
            )));
        }
        let idx = index(&m.index)?;
        volumes.push(plan(
            key.id,
            m,
            &idx,
            &target,
            // `plan` refuses anything but raw for an RBD image.
            req.format.unwrap_or(ImageFormat::Raw),
            req.force,
            &req.ceph,
        )?);
        indexes.push(idx);
    }
    Ok(SetRestorePlan {
        volumes,
        creates_directory: None,
        fetch: None,
        indexes,
        transfer: None,
        picked: picked.to_vec(),
        fetched: false,
    })
}

/// Plans a restore from the local repository. Writes nothing.
pub fn plan_local(repo: &Repo, req: &RestoreRequest) -> Result<SetRestorePlan> {
    let all = repo.load_all()?;
    let picked: Vec<(ManifestKey, Manifest)> = refs::resolve_many(&all, &req.reference)?
        .into_iter()
        .cloned()
        .collect();
    plan_volumes(req, &picked, |id| repo.read_index(id))
}

/// Plans a restore straight from a remote: its manifests and indexes are
/// fetched and verified, and the local repository is asked which chunks it
/// lacks. With `lock`, takes the local repository's writer lock (held by
/// the plan until it is dropped); without, writes nothing, locally or
/// remotely (a dry run).
pub async fn plan_remote(
    remote: &dyn Store,
    local_repo: &Path,
    req: &RestoreRequest,
    lock: bool,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<SetRestorePlan> {
    progress.set_phase("listing remote backups");
    let keys = repository::list_manifests(remote).await?;
    let chosen = sync::select::select(remote, keys, Some(&req.reference), None).await?;
    if !matches!(Ref::parse(&req.reference)?, Ref::Set { .. }) && chosen.len() != 1 {
        return Err(Error::BadInput(format!(
            "{:?} names {} backups on the remote; give VM/VOLUME@latest, an id, or VM@latest for a set",
            req.reference,
            chosen.len()
        )));
    }
    let local: crate::store::DynStore = std::sync::Arc::new(LocalStore::new(local_repo));
    let opts = SyncOptions {
        init: true,
        manifests: false,
        lock,
        ..Default::default()
    };
    // The plan holds a writer lock on the local repository until the
    // restore ends: fetched chunks belong to no local manifest, and a gc
    // must not take them before they are read.
    let transfer = sync::plan(remote, &local, chosen, &opts, cancel, progress).await?;
    let picked = transfer.manifests();
    let mut set = plan_volumes(req, &picked, |id| {
        transfer
            .index(id)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("index {id} was not fetched while planning")))
    })?;
    set.fetch = Some(transfer.summary.clone());
    set.transfer = Some(transfer);
    Ok(set)
}

impl SetRestorePlan {
    /// What the plan will do, a line each (`restore --dry-run` and the
    /// console's confirmation show the same lines). `remote` names the
    /// remote a fetch comes from.
    pub fn lines(&self, remote: Option<&str>) -> Vec<String> {
        use crate::text::{bytes, escape};
        let mut out = Vec::new();
        if let (Some(f), Some(name)) = (&self.fetch, remote) {
            out.push(format!(
                "would fetch from {}: {} chunks ({} of data), {} already local{}",
                escape(name),
                f.chunks_to_send,
                bytes(f.data_bytes_to_send),
                f.chunks_already_there,
                if f.creates_repository {
                    format!(", creating the local repository {}", escape(&f.destination))
                } else {
                    String::new()
                }
            ));
        }
        if let Some(d) = &self.creates_directory {
            out.push(format!(
                "would create directory {}",
                escape(&d.display().to_string())
            ));
        }
        for p in &self.volumes {
            out.push(format!(
                "would restore {}/{} ({}) to {} as {}: {} image, {} to write{}",
                p.vm,
                p.volume,
                p.manifest.short(),
                escape(&p.target.display().to_string()),
                p.format,
                bytes(p.image_size),
                bytes(p.bytes_to_write),
                if p.overwrites {
                    format!(", REPLACING the existing file (mode {:04o} kept)", p.mode)
                } else {
                    String::new()
                }
            ));
        }
        out
    }

    /// Releases the local writer lock a remote plan holds, for a plan that
    /// will not be executed (see `TransferPlan::finish`).
    pub async fn release(self) {
        if let Some(t) = &self.transfer {
            t.finish().await;
        }
    }
}

/// Fetches what a restore from a remote needs into the local repository,
/// ahead of `execute` (which then only writes): a drill times the two
/// apart. The plan keeps its lock.
pub async fn fetch(
    set: &mut SetRestorePlan,
    remote: &dyn Store,
    local_repo: &Path,
    cancel: &CancellationToken,
    progress: &std::sync::Arc<Progress>,
) -> Result<()> {
    if let Some(t) = &set.transfer {
        let local = LocalStore::new(local_repo);
        let opts = SyncOptions {
            init: true,
            manifests: false,
            ..Default::default()
        };
        sync::execute(remote, &local, t, &opts, cancel, progress).await?;
    }
    set.fetched = true;
    Ok(())
}

/// Carries out a set plan: fetches what a remote restore needs into the
/// local repository (creating it on a fresh machine), then writes every
/// volume. `remote` must be the store the plan was made from.
pub async fn execute(
    mut set: SetRestorePlan,
    remote: Option<&dyn Store>,
    local_repo: &Path,
    cancel: &CancellationToken,
    progress: &std::sync::Arc<Progress>,
) -> Result<Vec<RestoreOutcome>> {
    let fetch = match (&set.transfer, remote) {
        (Some(t), Some(_)) if !set.fetched => t.summary.data_bytes_to_send,
        _ => 0,
    };
    let writes: u64 = set.volumes.iter().map(|v| v.image_size).sum();
    progress.set_job_total_if_unset(fetch + writes);
    // The fetch's plan holds the local writer lock until the volumes are
    // written (see `plan_remote`), then releases it.
    let transfer = set.transfer.take();
    let done = write_set(set, transfer.as_ref(), remote, local_repo, cancel, progress).await;
    if let Some(t) = &transfer {
        t.finish().await;
    }
    done
}

async fn write_set(
    set: SetRestorePlan,
    transfer: Option<&sync::TransferPlan>,
    remote: Option<&dyn Store>,
    local_repo: &Path,
    cancel: &CancellationToken,
    progress: &std::sync::Arc<Progress>,
) -> Result<Vec<RestoreOutcome>> {
    if let (Some(t), Some(src), false) = (transfer, remote, set.fetched) {
        let local = LocalStore::new(local_repo);
        let opts = SyncOptions {
            init: true,
            manifests: false,
            ..Default::default()
        };
        sync::execute(src, &local, t, &opts, cancel, progress).await?;
    }
    let root = local_repo.to_path_buf();
    let cancel = cancel.clone();
    let progress = progress.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = &set.creates_directory {
            crate::durable::private_dir(dir)?;
        }
        let repo = Repo::open(&root)?;
        let mut out = Vec::new();
        for (plan, index) in set.volumes.iter().zip(&set.indexes) {
            out.push(restore(&repo, index, plan, &cancel, &progress)?);
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Internal(format!("restore task failed: {e}")))?
}

/// Whether files can be made in `dir`: tried, not inferred from mode bits
/// (root passes every permission check, yet cannot create files in /proc
/// or on a read-only mount). The probe is removed at once; it is the only
/// thing a plan writes.
fn check_writable(dir: &Path, target: &Path) -> Result<()> {
    match tempfile::Builder::new()
        .prefix(".lifeboat-probe-")
        .tempfile_in(dir)
    {
        Ok(probe) => {
            let _ = probe.close();
            Ok(())
        }
        Err(e) => Err(Error::BadInput(format!(
            "cannot restore to {}: files cannot be created in {} ({}); choose a directory you can write to",
            target.display(),
            dir.display(),
            io_reason(&e)
        ))),
    }
}

/// The OS's words for an I/O error without the `(os error N)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn check_space(dir: &Path, need: u64) -> Result<()> {
    match available_bytes(dir) {
        Some(avail) if avail < need => Err(Error::BadInput(format!(
            "not enough space in {}: the restore needs {}, {} are free; free some space or choose another place",
            dir.display(),
            crate::text::bytes(need),
            crate::text::bytes(avail)
        ))),
        _ => Ok(()),
    }
}

/// Free bytes for an unprivileged writer in `dir` (None: unknown).
pub(crate) fn available_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable struct.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Executes a plan.
pub fn restore(
    repo: &Repo,
    index: &Index,
    plan: &RestorePlan,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<RestoreOutcome> {
    if let Some(ceph) = &plan.ceph {
        rbd::restore(
            repo,
            index,
            &plan.target,
            plan.overwrites,
            ceph,
            cancel,
            progress,
        )?;
        return Ok(RestoreOutcome {
            target: plan.target.clone(),
            format: plan.format,
            image_size: index.image_size,
            bytes_written: index.nonzero_bytes(),
            index: index.digest(),
        });
    }
    let target = &plan.target;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = target
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("restore");
    let tmp_raw = dir.join(temp_name(stem));
    let tmp_final = dir.join(temp_name(stem));
    let res = (|| {
        write_raw(repo, index, &tmp_raw, cancel, progress)?;
        let staged = match plan.format {
            ImageFormat::Raw => &tmp_raw,
            ImageFormat::Qcow2 => {
                progress.set_phase("converting to qcow2");
                convert_raw_to_qcow2(&tmp_raw, &tmp_final)?;
                remove_quietly(&tmp_raw);
                let f =
                    fs::File::open(&tmp_final).map_err(|e| Error::io("opening", &tmp_final, e))?;
                f.sync_all()
                    .map_err(|e| Error::io("syncing", &tmp_final, e))?;
                &tmp_final
            }
        };
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(staged, fs::Permissions::from_mode(plan.mode))
                .map_err(|e| Error::io("setting the mode of", staged, e))?;
        }
        // The target was checked when planning; check again right before the
        // rename, in case something was put there meanwhile.
        check_target(target, plan.overwrites)?;
        fs::rename(staged, target).map_err(|e| Error::io("renaming into", target, e))?;
        fsync_dir(&dir)
    })();
    if res.is_err() {
        remove_quietly(&tmp_raw);
        remove_quietly(&tmp_final);
    }
    res?;
    Ok(RestoreOutcome {
        target: target.clone(),
        format: plan.format,
        image_size: index.image_size,
        bytes_written: index.nonzero_bytes(),
        index: index.digest(),
    })
}

fn write_raw(
    repo: &Repo,
    index: &Index,
    path: &Path,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    let file = crate::durable::create_private(path)?;
    // Zero chunks become holes: the file is sized first and never written there.
    file.set_len(index.image_size)
        .map_err(|e| Error::io("sizing", path, e))?;
    progress.set_phase("restoring");
    progress.set_totals(index.image_size, index.chunks.len() as u64);
    struct FileSink<'a>(&'a fs::File, &'a Path);
    impl chunks::ChunkSink for FileSink<'_> {
        fn write_at(&mut self, off: u64, data: &[u8]) -> Result<()> {
            self.0
                .write_all_at(data, off)
                .map_err(|e| Error::io("writing", self.1, e))?;
            crate::durable::start_writeback_range(self.0, off, data.len() as u64);
            Ok(())
        }
    }
    let workers = crate::repo::verify::worker_threads();
    chunks::write_chunks(repo, index, workers, cancel, progress, || {
        Ok(FileSink(&file, path))
    })?;
    progress.set_phase("syncing");
    file.sync_all().map_err(|e| Error::io("syncing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::Faults;
    use crate::testkit::{self, image, memory, put_set};

    async fn remote() -> (
        std::sync::Arc<crate::store::memory::MemoryStore>,
        crate::store::DynStore,
        Vec<(ManifestKey, Manifest)>,
    ) {
        let (mem, store) = memory();
        testkit::init(store.as_ref()).await;
        let all = put_set(
            store.as_ref(),
            "web",
            "a1",
            "2026-12-01T02:00:00Z",
            &[("root", image(1, 4))],
        )
        .await;
        (mem, store, all)
    }

    async fn restore_from(
        remote: &dyn Store,
        local: &Path,
        to: &Path,
    ) -> Result<Vec<RestoreOutcome>> {
        let req = RestoreRequest {
            reference: "web/root@latest".into(),
            to: to.to_path_buf(),
            format: Some(ImageFormat::Raw),
            force: false,
            ceph: Default::default(),
            name: None,
        };
        let (c, p) = (testkit::cancel(), testkit::progress());
        let plan = plan_remote(remote, local, &req, true, &c, &p).await?;
        execute(plan, Some(remote), local, &c, &p).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restore_from_a_flaky_remote_is_byte_exact() {
        let (mem, store, _) = remote().await;
        mem.set_faults(Faults {
            fail_gets: vec![2, 5, 7],
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("root.img");
        restore_from(store.as_ref(), &dir.path().join("repo"), &to)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), image(1, 4));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_corrupt_chunk_on_the_remote_fails_the_restore_and_leaves_no_image() {
        let (mem, store, all) = remote().await;
        let (index, _) = crate::repository::fetch_index(store.as_ref(), &all[0].1.index)
            .await
            .unwrap();
        // The third chunk's bytes replaced by another chunk's (bit rot, or
        // a hostile server): well-formed, wrong content.
        let other = store
            .get(&crate::store::ObjectKey::Chunk(index.chunks[0]))
            .await
            .unwrap()
            .unwrap();
        mem.corrupt(&crate::store::ObjectKey::Chunk(index.chunks[2]), other);
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("root.img");
        let e = restore_from(store.as_ref(), &dir.path().join("repo"), &to)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::CorruptObject { kind, id, .. } if *kind == "chunk" && *id == index.chunks[2].to_hex()),
            "{e}"
        );
        assert!(!to.exists(), "a partial image was left");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "repo")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
