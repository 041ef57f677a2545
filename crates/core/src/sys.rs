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
    let parent = unsafe { libc::getpid() };
    // SAFETY: as above.
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

/// Whether a process with this pid exists (on this host, in this pid
/// namespace).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
