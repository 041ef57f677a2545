//! Dirty bitmaps of a qcow2 image no QEMU runs: the same lineage as a
//! running VM's (`bitmap::decide`), kept in the image's persistent bitmaps
//! with `qemu-img bitmap` and read through `qemu-nbd -B`. A VM whose qcow2
//! disks carry lifeboat's bitmap (QEMU keeps persistent bitmaps up to date
//! while it runs) is backed up incrementally whether it runs or not.

use std::path::{Path, PathBuf};

use super::bitmap::{decide, BitmapState, Read, Repair};
use super::capture::PreviousBackup;
use super::settings::LiveConfig;
use crate::error::Result;
use crate::format::manifest::ImageFormat;
use crate::source::{self, qemu, FormatChoice, Source};

pub struct Opened {
    pub source: Source,
    pub bitmaps: Option<OfflineBitmaps>,
    pub full_reason: Option<String>,
}

impl Opened {
    pub fn incremental(&self) -> bool {
        self.full_reason.is_none()
    }
}

/// The bitmap changes a backup made to an image, undone unless committed.
pub struct OfflineBitmaps {
    _lock: super::vmlock::VmLock,
    path: PathBuf,
    read: Read,
    pub new_bitmap: Option<String>,
    done: bool,
}

/// `qemu-img bitmap OPS -f qcow2 IMAGE BITMAP`.
fn bitmap_cmd(path: &Path, ops: &[&str], bitmap: &str) -> Result<()> {
    let mut args = vec!["bitmap"];
    args.extend_from_slice(ops);
    args.extend(["-f", "qcow2"]);
    qemu::run_qemu_img_then(&args, path, &[bitmap]).map(|_| ())
}

/// A qcow2 image's persistent bitmaps as the lineage sees them.
pub(crate) fn bitmaps_of(info: &qemu::ImageInfo) -> Vec<BitmapState> {
    info.bitmaps()
        .iter()
        .map(|b| BitmapState {
            recording: b.flags.iter().any(|f| f == "auto"),
            inconsistent: b.flags.iter().any(|f| f == "in-use"),
            busy: false,
            name: b.name.clone(),
        })
        .collect()
}

fn apply(path: &Path, r: &Repair) -> Result<()> {
    match r {
        Repair::MergeBack { into, from } => {
            // The same order as with a running VM (capture.rs), though
            // nothing writes here: qemu-img holds the image's lock.
            bitmap_cmd(path, &["--enable"], into)?;
            for f in from {
                bitmap_cmd(path, &["--merge", f], into)?;
            }
            for f in from {
                bitmap_cmd(path, &["--remove"], f)?;
            }
            Ok(())
        }
        Repair::Remove(b) => bitmap_cmd(path, &["--remove"], b),
    }
}

/// Opens a stopped VM's volume; a qcow2 image gets lifeboat's bitmap
/// lineage (read only what changed, start the next bitmap).
pub fn open(
    path: &Path,
    claimed: FormatChoice,
    prev: Option<&PreviousBackup>,
    chunk_size: u64,
    set: &str,
    cfg: &LiveConfig,
) -> Result<Opened> {
    // Anything but a plain readable image gets `source::open`'s own error.
    let plain = std::fs::metadata(path).is_ok_and(|m| !m.is_dir());
    let is_qcow2 = plain
        && match claimed {
            FormatChoice::Qcow2 => true,
            FormatChoice::Raw => false,
            FormatChoice::Auto => source::raw::looks_like_qcow2(path).unwrap_or(false),
        };
    if !is_qcow2 || !cfg.bitmaps || qemu::held_for_writing(path) {
        let source = source::open(path, claimed)?;
        let full_reason = Some(
            if source.format == ImageFormat::Raw {
                "a raw image keeps no dirty bitmap while no QEMU runs it: read whole"
            } else {
                super::settings::BITMAPS_OFF
            }
            .to_string(),
        );
        return Ok(Opened {
            source,
            bitmaps: None,
            full_reason,
        });
    }
    // Two backups must not rotate one image's bitmaps at once.
    let lock = super::vmlock::VmLock::acquire(path)?;
    let info = qemu::info(path, Some(ImageFormat::Qcow2))?;
    let prev = super::capture::previous_for(prev, chunk_size, info.virtual_size);
    let states = bitmaps_of(&info);
    let (bitmaps, read) = match start_lineage(lock, path, &prev, &states, set) {
        Ok(x) => x,
        // A read-only image, say: back it up whole rather than not at all.
        Err(e) => {
            tracing::warn!("{e}; reading the whole image");
            let source = source::open(path, FormatChoice::Qcow2)?;
            return Ok(Opened {
                source,
                bitmaps: None,
                full_reason: Some(format!("its dirty bitmaps cannot be updated: {e}")),
            });
        }
    };
    let (bitmap, full_reason) = match &read {
        Read::Incremental { bitmap } => (Some(bitmap.as_str()), None),
        Read::Full { reason } => (None, Some(reason.clone())),
    };
    let source = match source::open_with_bitmap(path, FormatChoice::Qcow2, bitmap) {
        Ok(s) => s,
        Err(e) => {
            drop(bitmaps);
            return Err(e);
        }
    };
    Ok(Opened {
        source,
        bitmaps: Some(bitmaps),
        full_reason,
    })
}

/// Repairs the image's lifeboat bitmaps, starts the new one and stops the
/// one this backup reads.
fn start_lineage(
    lock: super::vmlock::VmLock,
    path: &Path,
    prev: &super::bitmap::Previous,
    states: &[BitmapState],
    set: &str,
) -> Result<(OfflineBitmaps, Read)> {
    let (read, repairs) = decide(prev, states);
    for r in &repairs {
        apply(path, r)?;
    }
    let new = format!("lifeboat-{set}");
    bitmap_cmd(path, &["--add"], &new)?;
    let bitmaps = OfflineBitmaps {
        _lock: lock,
        path: path.to_path_buf(),
        read: read.clone(),
        new_bitmap: Some(new),
        done: false,
    };
    if let Read::Incremental { bitmap } = &read {
        // On failure `bitmaps` is dropped, which removes the new bitmap.
        bitmap_cmd(path, &["--disable"], bitmap)?;
    }
    Ok((bitmaps, read))
}

impl OfflineBitmaps {
    pub fn commit(mut self) {
        self.done = true;
        if let Read::Incremental { bitmap } = &self.read {
            if let Err(e) = bitmap_cmd(&self.path, &["--remove"], bitmap) {
                tracing::warn!("{e} (the next backup removes it)");
            }
        }
    }

    fn abort(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let Some(new) = self.new_bitmap.clone() else {
            return;
        };
        let repair = match &self.read {
            Read::Incremental { bitmap } => Repair::MergeBack {
                into: bitmap.clone(),
                from: vec![new],
            },
            Read::Full { .. } => Repair::Remove(new),
        };
        if let Err(e) = apply(&self.path, &repair) {
            tracing::warn!("{e} (the next backup repairs it)");
        }
    }
}

impl Drop for OfflineBitmaps {
    fn drop(&mut self) {
        self.abort();
    }
}
