//! Reading volumes as guest-visible bytes: raw files and block devices
//! directly, qcow2 through qemu (info and map through `qemu-img`, the data
//! through `qemu-nbd` on a private unix socket).

pub mod nbd;
pub mod qemu;
pub mod raw;
pub mod rbd;
pub mod reader;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::manifest::ImageFormat;
pub use reader::{Extents, SharedRead, VolumeReader};

/// The format an inventory or the command line claims for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    Raw,
    Qcow2,
    #[default]
    Auto,
}

pub struct Source {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub reader: Box<dyn VolumeReader>,
}

/// Opens a volume, checking that it is the format claimed.
pub fn open(path: &Path, claimed: FormatChoice) -> Result<Source> {
    open_with_bitmap(path, claimed, None)
}

/// Opens a volume where an `rbd:` path is read too (through a snapshot of
/// the live image taken for the read, with `ceph`'s credentials).
pub fn open_in(path: &Path, claimed: FormatChoice, ceph: &rbd::CephConfig) -> Result<Source> {
    if rbd::RbdImage::is_rbd(path) {
        if claimed == FormatChoice::Qcow2 {
            return Err(Error::Source {
                path: path.to_path_buf(),
                reason: "an RBD image holds the guest's bytes as they are: use --format raw".into(),
            });
        }
        return Ok(Source {
            path: path.to_path_buf(),
            format: ImageFormat::Raw,
            reader: Box::new(rbd::open_live(path, ceph)?),
        });
    }
    open(path, claimed)
}

/// Opens a volume; a qcow2 image's persistent dirty bitmap `bitmap` is
/// read too (the reader's `dirty_extents`).
pub fn open_with_bitmap(
    path: &Path,
    claimed: FormatChoice,
    bitmap: Option<&str>,
) -> Result<Source> {
    if rbd::RbdImage::is_rbd(path) {
        return Err(Error::Source {
            path: path.to_path_buf(),
            reason: "an RBD image is read through a snapshot with [ceph]'s credentials (backup, hash, compare)".into(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::Source {
        path: path.to_path_buf(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".into(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (run as a user that can read it)".into()
            }
            _ => e.to_string(),
        },
    })?;
    if meta.is_dir() {
        return Err(Error::Source {
            path: path.to_path_buf(),
            reason: "is a directory, not a volume image".into(),
        });
    }
    // A disk a running VM writes would be read torn: never read it behind
    // QEMU's back (a backup asks QEMU itself, see `live`).
    if qemu::held_for_writing(path) {
        return Err(Error::Source {
            path: path.to_path_buf(),
            reason: qemu::IN_USE.into(),
        });
    }
    let format = match claimed {
        FormatChoice::Raw => {
            if raw::looks_like_qcow2(path)? {
                return Err(Error::Source {
                    path: path.to_path_buf(),
                    reason: "is a qcow2 image, but the format given is raw: set format = \"qcow2\""
                        .into(),
                });
            }
            ImageFormat::Raw
        }
        FormatChoice::Qcow2 => {
            let info = qemu::info(path, Some(ImageFormat::Qcow2))?;
            if info.format != "qcow2" {
                return Err(Error::Source {
                    path: path.to_path_buf(),
                    reason: format!("is not a qcow2 image (qemu-img sees {})", info.format),
                });
            }
            ImageFormat::Qcow2
        }
        FormatChoice::Auto => match qemu::info(path, None)?.format.as_str() {
            "raw" => ImageFormat::Raw,
            "qcow2" => ImageFormat::Qcow2,
            other => {
                return Err(Error::Source {
                    path: path.to_path_buf(),
                    reason: format!("is a {other} image; lifeboat reads raw and qcow2"),
                })
            }
        },
    };
    let reader: Box<dyn VolumeReader> = match format {
        ImageFormat::Raw => Box::new(raw::RawReader::open(path)?),
        ImageFormat::Qcow2 => Box::new(qemu::Qcow2Reader::open(path, bitmap)?),
    };
    Ok(Source {
        path: path.to_path_buf(),
        format,
        reader,
    })
}

/// Whether `[start, end)` overlaps any extent (extents sorted by start).
pub fn overlaps(extents: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = extents.partition_point(|&(_, e)| e <= start);
    extents.get(i).is_some_and(|&(s, _)| s < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_lookup() {
        let ex = vec![(10, 20), (40, 50)];
        assert!(!overlaps(&ex, 0, 10));
        assert!(overlaps(&ex, 0, 11));
        assert!(overlaps(&ex, 19, 30));
        assert!(!overlaps(&ex, 20, 40));
        assert!(overlaps(&ex, 45, 46));
        assert!(!overlaps(&ex, 50, 100));
    }
}
