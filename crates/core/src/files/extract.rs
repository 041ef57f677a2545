//! Writing files and directories out of a backup's filesystem: into a
//! private staging name beside the target, renamed into place only when
//! everything is written and flushed, so an interrupted or failed
//! extraction never leaves something that looks complete.
//!
//! The filesystem is hostile: every name is checked (no `/`, no `.`/`..`,
//! no NUL) and every path component is created here, exclusively, in this
//! run — so a symlink from the backup can never redirect a later write
//! (a name seen twice in one directory is an error, not an overwrite).

use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::durable;
use crate::error::{Error, Result};
use crate::jobs::CancellationToken;

use super::entry::{join, Entry, Filesystem, Kind, Time};

/// Deeper than any real tree (PATH_MAX is 4096): a deeper one loops.
const MAX_DEPTH: usize = 512;
/// Entries one extraction writes at most: a filesystem claiming more is
/// damaged or hostile.
const MAX_ENTRIES: u64 = 20_000_000;

#[derive(Debug, Default, Clone)]
pub struct Extracted {
    /// Where the extracted file or directory now is.
    pub path: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries not written, with why (device nodes, fifos, bad names).
    pub skipped: Vec<String>,
    /// Owners were set (only root can); modes and times always are.
    pub owners_kept: bool,
}

struct Run<'a> {
    fs: &'a dyn Filesystem,
    cancel: &'a CancellationToken,
    progress: &'a mut dyn FnMut(u64),
    root: bool,
    out: Extracted,
    entries: u64,
}

/// Extracts `entry` (found at `src` in `fs`) as `to/NAME`, NAME being the
/// entry's own name. `to` is created (0700) when missing; `to/NAME` must
/// not exist.
pub fn extract(
    fs: &dyn Filesystem,
    src: &[u8],
    entry: &Entry,
    to: &Path,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(u64),
) -> Result<Extracted> {
    check_name(&entry.name)?;
    durable::create_dir_all(to)?;
    let target = to.join(OsStr::from_bytes(&entry.name));
    if fs::symlink_metadata(&target).is_ok() {
        return Err(Error::BadInput(format!(
            "{} exists: extract into another --to directory, or move it away first",
            target.display()
        )));
    }
    let staging = to.join(durable::temp_name("lifeboat-files-partial"));
    let mut run = Run {
        fs,
        cancel,
        progress,
        root: unsafe { libc::geteuid() } == 0,
        out: Extracted::default(),
        entries: 0,
    };
    let res = run
        .put(src, entry, &staging, 0)
        .and_then(|()| durable::sync_filesystem(to))
        .and_then(|()| rename_new(&staging, &target))
        .and_then(|()| durable::fsync_dir(to));
    if let Err(e) = res {
        let _ = fs::remove_dir_all(&staging).or_else(|_| fs::remove_file(&staging));
        return Err(e);
    }
    run.out.path = target;
    run.out.owners_kept = run.root;
    Ok(run.out)
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::BadInput(format!(
            "the filesystem holds an entry named {:?}, which no file can be called (damaged or hostile)",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

impl Run<'_> {
    fn put(&mut self, src: &[u8], e: &Entry, dst: &Path, depth: usize) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::BadInput("cancelled: nothing was extracted".into()));
        }
        self.entries += 1;
        if depth > MAX_DEPTH || self.entries > MAX_ENTRIES {
            return Err(Error::BadInput(format!(
                "the filesystem is deeper than {MAX_DEPTH} directories or holds more than {MAX_ENTRIES} entries under what was asked for (damaged or hostile: a directory loop?)"
            )));
        }
        match e.kind {
            Kind::File => self.file(src, dst)?,
            Kind::Dir => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dst)
                    .map_err(|err| Error::io("creating directory", dst, err))?;
                for child in self.fs.list(src)? {
                    let path = join(src, &child.name);
                    if let Err(err) = check_name(&child.name) {
                        self.out.skipped.push(format!("{}: {err}", lossy(&path)));
                        continue;
                    }
                    self.put(
                        &path,
                        &child,
                        &dst.join(OsStr::from_bytes(&child.name)),
                        depth + 1,
                    )?;
                }
                self.out.dirs += 1;
            }
            Kind::Symlink => {
                let target = e.target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), dst)
                    .map_err(|err| Error::io("creating symlink", dst, err))?;
                self.out.symlinks += 1;
            }
            other => {
                self.out.skipped.push(format!(
                    "{}: a {} is not extracted",
                    lossy(src),
                    other.word()
                ));
                return Ok(());
            }
        }
        self.finish(e, dst)
    }

    fn file(&mut self, src: &[u8], dst: &Path) -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .map_err(|err| Error::io("creating", dst, err))?;
        let mut written = 0u64;
        let cancel = self.cancel;
        let progress = &mut *self.progress;
        self.fs.read(src, &mut |block| {
            if cancel.is_cancelled() {
                return Err(Error::BadInput("cancelled: nothing was extracted".into()));
            }
            // Holes stay holes: a file the filesystem stores sparse (or
            // claims is huge) does not become zeros on the disk.
            if block.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(block.len() as i64))
                    .map_err(|err| Error::io("writing", dst, err))?;
            } else {
                f.write_all(block)
                    .map_err(|err| Error::io("writing", dst, err))?;
            }
            written += block.len() as u64;
            progress(block.len() as u64);
            Ok(())
        })?;
        f.set_len(written)
            .map_err(|err| Error::io("writing", dst, err))?;
        self.out.files += 1;
        self.out.bytes += written;
        Ok(())
    }

    /// Owner, then mode (a chown clears setuid), then times — last, so
    /// filling a directory does not move its mtime.
    fn finish(&self, e: &Entry, dst: &Path) -> Result<()> {
        if self.root {
            std::os::unix::fs::lchown(dst, Some(e.uid), Some(e.gid))
                .map_err(|err| Error::io("setting the owner of", dst, err))?;
        }
        if e.kind != Kind::Symlink {
            fs::set_permissions(dst, fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(|err| Error::io("setting the mode of", dst, err))?;
        }
        set_times(dst, e.atime, e.mtime)
    }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn timespec(t: Time) -> libc::timespec {
    libc::timespec {
        tv_sec: t.0 as libc::time_t,
        tv_nsec: t.1.min(999_999_999) as libc::c_long,
    }
}

/// Times of the entry itself (a symlink's own, not its target's).
fn set_times(dst: &Path, atime: Time, mtime: Time) -> Result<()> {
    let c = CString::new(dst.as_os_str().as_bytes())
        .map_err(|_| Error::BadInput(format!("{} holds a NUL byte", dst.display())))?;
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: a NUL-terminated path and two initialised timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "setting the times of",
            dst,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Renames without replacing: a target that appeared meanwhile is kept.
fn rename_new(from: &Path, to: &Path) -> Result<()> {
    let (a, b) = (
        CString::new(from.as_os_str().as_bytes()),
        CString::new(to.as_os_str().as_bytes()),
    );
    let (Ok(a), Ok(b)) = (a, b) else {
        return Err(Error::BadInput(format!(
            "{} holds a NUL byte",
            to.display()
        )));
    };
    // SAFETY: two NUL-terminated paths relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "moving into place",
            to,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
