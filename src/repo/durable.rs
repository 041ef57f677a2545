//! Crash-safe file writes: temp file, fsync, rename, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
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
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("creating", &tmp, e))?;
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

/// Creates `dir` and its parents, naming the directory on failure.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))
}

/// Removes a file, ignoring that it may already be gone.
pub fn remove_quietly(path: &PathBuf) {
    let _ = fs::remove_file(path);
}
