//! Crash-safe file writes: temp file, fsync, rename, fsync of the directory.
//! Everything lifeboat writes into a repository is private to its owner
//! (directories 0700, files 0600) whatever the umask: backups are as
//! secret as the disks they copy. Reads are bounded (`read_limited`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp name unique across threads and processes sharing a directory.
pub fn temp_name(stem: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        ".{stem}.tmp-{}-{n}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io("opening directory", dir, e))?;
    f.sync_all()
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Writes `bytes` to `path` atomically and durably. An existing file at
/// `path` is replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stem = path.file_name().and_then(|s| s.to_str()).unwrap_or("obj");
    let tmp = dir.join(temp_name(stem));
    let res = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Flushes everything written to the file system holding `path`. One call
/// makes a whole batch of chunk files durable, which is far cheaper than an
/// fsync per file.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs takes a valid open descriptor and has no other preconditions.
        let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
        if rc != 0 {
            return Err(Error::io(
                "syncing file system of",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        f.sync_all().map_err(|e| Error::io("syncing", path, e))
    }
}

/// Starts writing a file's dirty pages back to disk without waiting, so a
/// later sync finds little left to do and the disk works while the CPU
/// goes on (measured: a 2 GiB restore went from 1.9 s to 0.7 s, most of it
/// from writers no longer throttled by a pile of dirty pages). Only a
/// hint; durability still comes from the fsync or syncfs that follows.
pub fn start_writeback(file: &File) {
    start_writeback_range(file, 0, 0);
}

/// `start_writeback` for one range (`len` 0: to the end of the file).
pub fn start_writeback_range(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules I/O.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Creates `dir` and its missing parents, private to the owner (0700).
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating directory", dir, e))
}

/// Creates `dir` (and parents) and makes it 0700 even if it existed: the
/// root of a repository, or a directory a restore fills.
pub fn private_dir(dir: &Path) -> Result<()> {
    create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("protecting directory", dir, e))
}

/// Creates a new file readable and writable by its owner only (0600; a
/// umask can only take bits away).
pub fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("creating", path, e))
}

/// Writes a new private file (0600) durably; an existing file is an
/// error (a secret is never written over something else).
pub fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = create_private(path)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("writing", path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// What `read_limited` found.
pub enum Limited {
    Data(Vec<u8>),
    /// The file is larger than the limit (its size); nothing was buffered.
    TooLarge(u64),
}

/// Reads a whole file of at most `limit` bytes. The size is checked before
/// anything is read, and the read stops past the limit in case the file
/// grows meanwhile: an absurd file never becomes an absurd allocation.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Limited> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > limit {
        return Ok(Limited::TooLarge(len));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Ok(Limited::TooLarge(out.len() as u64));
    }
    Ok(Limited::Data(out))
}

/// Removes a file, ignoring that it may already be gone.
pub fn remove_quietly(path: &PathBuf) {
    let _ = fs::remove_file(path);
}
