//! One lifeboat at a time per VM: an OFD lock per monitor socket or image.

use std::path::PathBuf;

use crate::error::Result;

/// One lifeboat at a time drives a VM's QEMU: a second backup would take
/// the first one's exports and jobs for a killed run's leftovers. An
/// exclusive OFD lock per monitor socket (or image), host-wide (a unix
/// socket is reached from this host only); the kernel drops it when the
/// holder dies, so a killed backup never blocks the next, which then
/// repairs its leftovers. `held` asks without taking it.
pub struct VmLock {
    file: std::fs::File,
    path: PathBuf,
}

impl Drop for VmLock {
    fn drop(&mut self) {
        // Removed while still held, so the next lifeboat makes a new one
        // (it checks it locked the file the path names): lock files do
        // not pile up, one per VM ever backed up.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

fn ofd_lock(
    file: &std::fs::File,
    kind: libc::c_int,
    cmd: libc::c_int,
) -> std::io::Result<libc::flock> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero flock is a valid value to fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    // SAFETY: the descriptor is open for the call and `fl` is a valid
    // flock the kernel reads and may fill in.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
    if rc == 0 {
        Ok(fl)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl VmLock {
    fn path(key: &std::path::Path) -> PathBuf {
        let canonical = std::fs::canonicalize(key).unwrap_or_else(|_| key.to_path_buf());
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes()).to_hex();
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        dir.join(format!("lifeboat-vm-{}.lock", &hash[..16]))
    }

    fn open(path: &std::path::Path) -> Result<std::fs::File> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| crate::Error::io("opening", path, e))?;
        // In a shared temp directory someone else could have made it.
        let meta = file
            .metadata()
            .map_err(|e| crate::Error::io("checking", path, e))?;
        // SAFETY: geteuid has no preconditions.
        if meta.uid() != unsafe { libc::geteuid() } {
            return Err(crate::Error::BadInput(format!(
                "the lock file {} belongs to another user: remove it, or set XDG_RUNTIME_DIR to a private directory",
                path.display()
            )));
        }
        Ok(file)
    }

    pub fn acquire(key: &std::path::Path) -> Result<VmLock> {
        let path = Self::path(key);
        loop {
            let file = Self::open(&path)?;
            Self::lock(key, &path, &file)?;
            // The file locked must still be the one the path names: a
            // holder that just finished removed it, and a newer one may
            // exist (whose lock counts, not ours on the old file).
            use std::os::unix::fs::MetadataExt;
            let same = match (std::fs::metadata(&path), file.metadata()) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if same {
                return Ok(VmLock { file, path });
            }
        }
    }

    fn lock(key: &std::path::Path, path: &std::path::Path, file: &std::fs::File) -> Result<()> {
        match ofd_lock(file, libc::F_WRLCK, libc::F_OFD_SETLK) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                Err(crate::Error::BadInput(format!(
                    "another lifeboat is backing up {} right now: wait for it to finish",
                    key.display()
                )))
            }
            Err(e) => Err(crate::Error::io("locking", path, e)),
        }
    }

    /// Whether some lifeboat holds the lock now (false when unsure).
    pub fn held(key: &std::path::Path) -> bool {
        let path = Self::path(key);
        let Ok(file) = std::fs::File::open(&path) else {
            return false;
        };
        ofd_lock(&file, libc::F_WRLCK, libc::F_OFD_GETLK)
            .is_ok_and(|fl| fl.l_type != libc::F_UNLCK as libc::c_short)
    }
}
