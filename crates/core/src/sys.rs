//! Calls into the operating system that the rest of the core shares.

/// Makes a child process die with this process: the kernel sends it
/// SIGKILL when the parent goes, however it goes (SIGKILL included), so a
/// drill's QEMU or a backup's qemu-nbd never outlives lifeboat. A child
/// whose parent is already gone by the time it starts exits at once.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe, and so is what runs in the child
    // between fork and exec: prctl, getppid and _exit, with no allocation.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// `die_with_parent` for tokio's command.
pub fn die_with_parent_async(cmd: &mut tokio::process::Command) {
    die_with_parent(cmd.as_std_mut());
}

/// Whether a process with this pid exists (on this host, in this pid
/// namespace).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The file in a scratch directory that names the process owning it.
const OWNER: &str = "lifeboat-owner";

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Ends a helper process the way it can clean up (SIGTERM: qemu-nbd then
/// closes its image, so an RBD image keeps no stale watch that would make
/// the next snapshot or rename wait), and kills it if it has not exited
/// within 5 s. Always reaps it.
pub fn terminate(child: &mut std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A private (0700) scratch directory `prefix*` in `parent` that names its
/// owner, after removing those of owners that are gone: what a process
/// killed with SIGKILL (or a reboot) left is removed by the next one.
pub fn scratch_dir(parent: &std::path::Path, prefix: &str) -> crate::Result<tempfile::TempDir> {
    remove_abandoned(parent, prefix);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .map_err(|e| crate::Error::io("creating a scratch directory in", parent, e))?;
    crate::durable::private_dir(dir.path())?;
    let owner = format!("{} {}\n", std::process::id(), boot_id());
    crate::durable::write_atomic(&dir.path().join(OWNER), owner.as_bytes())?;
    Ok(dir)
}

/// Removes `prefix*` directories in `parent` whose owner is gone.
pub fn remove_abandoned(parent: &std::path::Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(e.path().join(OWNER)) else {
            continue;
        };
        let mut parts = owner.split_whitespace();
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if parts.next().unwrap_or("") == boot_id() && process_exists(pid) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => tracing::warn!(
                "removed {}, left by a lifeboat that was killed (pid {pid})",
                e.path().display()
            ),
            Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
        }
    }
}

/// This host's name (recorded in backups, locks and protection marks).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
