//! Raw images and block devices, with holes found by SEEK_DATA/SEEK_HOLE.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::reader::{Extents, SharedRead, VolumeReader};
use crate::error::{Error, Result};

pub struct RawReader {
    path: PathBuf,
    file: File,
    size: u64,
}

pub fn looks_like_qcow2(path: &Path) -> Result<bool> {
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"QFI\xfb"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

impl RawReader {
    pub fn open(path: &Path) -> Result<RawReader> {
        let file = File::open(path).map_err(|e| Error::Source {
            path: path.to_path_buf(),
            reason: format!("cannot open: {e}"),
        })?;
        // Block devices report a zero length in metadata; seek to the end instead.
        // SAFETY: lseek on a valid descriptor has no memory-safety preconditions.
        let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        if end < 0 {
            return Err(Error::io(
                "measuring",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(RawReader {
            path: path.to_path_buf(),
            file,
            size: end as u64,
        })
    }
}

impl VolumeReader for RawReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn data_extents(&mut self) -> Result<Extents> {
        let fd = self.file.as_raw_fd();
        let mut out = Vec::new();
        let mut pos: i64 = 0;
        while (pos as u64) < self.size {
            // SAFETY: as above.
            let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
            if data < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENXIO) => break,
                    // Block devices and some file systems do not support
                    // SEEK_DATA: then everything may hold data.
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => return Ok(vec![(0, self.size)]),
                    _ => return Err(Error::io("finding data in", &self.path, err)),
                }
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(Error::io(
                    "finding holes in",
                    &self.path,
                    std::io::Error::last_os_error(),
                ));
            }
            out.push((data as u64, (hole as u64).min(self.size)));
            pos = hole;
        }
        Ok(out)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at_shared(offset, buf)
    }

    fn shared(&self) -> Option<&dyn SharedRead> {
        Some(self)
    }
}

impl SharedRead for RawReader {
    fn read_at_shared(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::Source {
                path: self.path.clone(),
                reason: format!(
                    "read of {} bytes at {offset} failed: {e} (did the file shrink?)",
                    buf.len()
                ),
            })
    }
}
