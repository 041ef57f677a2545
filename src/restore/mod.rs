//! Restore: materialise a backup as a file. Everything is written to a temp
//! file next to the target and renamed at the end, so a failed or cancelled
//! restore leaves nothing behind, and every chunk is verified as it is read.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};
use crate::repo::buf::AlignedBuf;
use crate::repo::durable::{fsync_dir, remove_quietly, temp_name};
use crate::repo::manifest::ImageFormat;
use crate::repo::verify::worker_threads;
use crate::repo::{Index, Manifest, Repo};
use crate::source::qemu::convert_raw_to_qcow2;

#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub manifest: String,
    pub vm: String,
    pub volume: String,
    pub target: PathBuf,
    pub format: ImageFormat,
    pub image_size: u64,
    pub bytes_to_write: u64,
    pub overwrites: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub target: PathBuf,
    pub format: ImageFormat,
    pub image_size: u64,
    pub bytes_written: u64,
    pub index: String,
}

/// Checks the target and builds the plan without writing anything.
pub fn plan(
    manifest_id: &str,
    m: &Manifest,
    index: &Index,
    target: &Path,
    format: ImageFormat,
    force: bool,
) -> Result<RestorePlan> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Invalid(format!(
            "cannot restore to {}: directory {} does not exist",
            target.display(),
            parent.display()
        )));
    }
    let overwrites = target.exists();
    if target.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a directory: give a file path to restore one volume, or VM@latest to restore a set into a directory",
            target.display()
        )));
    }
    if overwrites && !force {
        return Err(Error::TargetExists(target.to_path_buf()));
    }
    let need = index.nonzero_bytes();
    if let Some(avail) = available_bytes(&parent) {
        if avail < need {
            return Err(Error::Invalid(format!(
                "not enough space in {}: the restore needs {} bytes, {} are free",
                parent.display(),
                need,
                avail
            )));
        }
    }
    Ok(RestorePlan {
        manifest: manifest_id.to_string(),
        vm: m.vm.name.clone(),
        volume: m.volume.name.clone(),
        target: target.to_path_buf(),
        format,
        image_size: index.image_size,
        bytes_to_write: need,
        overwrites,
    })
}

fn available_bytes(dir: &Path) -> Option<u64> {
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
        index: index.id().to_hex(),
    })
}

fn write_raw(
    repo: &Repo,
    index: &Index,
    path: &Path,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("creating", path, e))?;
    // Zero chunks become holes: the file is sized first and never written there.
    file.set_len(index.image_size)
        .map_err(|e| Error::io("sizing", path, e))?;
    progress.set_phase("restoring");
    progress.set_totals(index.image_size, index.chunks.len() as u64);
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let failed = || first_err.lock().map(|e| e.is_some()).unwrap_or(true);
    std::thread::scope(|s| {
        for _ in 0..worker_threads() {
            s.spawn(|| {
                let (mut file_buf, mut raw_buf) = (AlignedBuf::new(), AlignedBuf::new());
                loop {
                    if cancel.is_cancelled() || failed() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = index.chunks.get(i) else {
                        return;
                    };
                    let len = index.chunk_len(i);
                    let off = i as u64 * index.chunk_size;
                    let res = if id.is_zero() {
                        Ok(())
                    } else {
                        repo.read_chunk_into(id, &mut file_buf, &mut raw_buf)
                            .and_then(|data| {
                                if data.len() as u64 != len {
                                    return Err(Error::corrupt(
                                        "chunk",
                                        id,
                                        format!(
                                            "holds {} bytes where the index expects {len}",
                                            data.len()
                                        ),
                                    ));
                                }
                                file.write_all_at(data, off)
                                    .map_err(|e| Error::io("writing", path, e))
                            })
                    };
                    match res {
                        Ok(()) => progress.add(len, 1),
                        Err(e) => {
                            if let Ok(mut slot) = first_err.lock() {
                                slot.get_or_insert(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or(None) {
        return Err(e);
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    progress.set_phase("syncing");
    file.sync_all().map_err(|e| Error::io("syncing", path, e))
}
