//! Running VMs: asked through QEMU's monitor (QMP) and guest agent, never
//! read behind QEMU's back. `capture` takes one instant of all of a VM's
//! disks and exports it over NBD; `bitmap` decides which dirty bitmap a
//! backup may trust.

pub mod agent;
pub mod bitmap;
pub mod capture;
pub mod offline;
pub mod qmp;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;

/// How a VM's running QEMU is reached (`qmp`, `guest_agent` in its
/// `[[vm]]` entry).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub qmp: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    /// How long the agent may take to answer or to freeze.
    pub freeze_timeout: Duration,
    /// Track changes with dirty bitmaps (running VMs and offline qcow2).
    pub bitmaps: bool,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            qmp: None,
            agent: None,
            freeze_timeout: Duration::from_secs(10),
            bitmaps: true,
        }
    }
}

/// A line-oriented peer: both directions time out, and the reading half
/// is buffered.
fn split(
    stream: std::os::unix::net::UnixStream,
    timeout: Duration,
) -> std::io::Result<(
    std::os::unix::net::UnixStream,
    std::io::BufReader<std::os::unix::net::UnixStream>,
)> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok((stream.try_clone()?, std::io::BufReader::new(stream)))
}

/// The answer to `cmd` in QMP's reply shape (the guest agent's too):
/// `{"return": …}`, or `{"error": {"desc": …}}` as escaped text.
fn reply(cmd: &str, v: &serde_json::Value) -> std::result::Result<serde_json::Value, String> {
    if let Some(e) = v.get("error") {
        let desc = e
            .get("desc")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown error");
        return Err(format!("{cmd}: {}", crate::text::escape(desc)));
    }
    Ok(v.get("return").cloned().unwrap_or(serde_json::Value::Null))
}

/// Why a VM's disks are read whole when its config turns bitmaps off.
pub const BITMAPS_OFF: &str = "dirty bitmaps are off for this VM (bitmaps = false)";

/// QMP commands wait at most this long for QEMU.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a VM runs, as its monitor says.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunState {
    pub running: bool,
    /// QEMU's status (running, paused, …) or why the VM counts as stopped.
    pub status: String,
}

/// Asks the VM's monitor whether it runs; the connection is kept for
/// further questions. None when the VM has no `qmp`.
fn run_state(cfg: &LiveConfig) -> (Option<RunState>, Option<qmp::Qmp>) {
    let Some(path) = &cfg.qmp else {
        return (None, None);
    };
    let asked = qmp::Qmp::connect(path, Duration::from_secs(3)).and_then(|c| match c {
        Err(qmp::Absent(why)) => Ok((format!("not running ({why})"), None)),
        Ok(mut q) => {
            let v = q.execute("query-status", serde_json::json!({}))?;
            let status = v
                .get("status")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown");
            Ok((crate::text::escape(status).into_owned(), Some(q)))
        }
    });
    match asked {
        Ok((status, q)) => (
            Some(RunState {
                running: q.is_some(),
                status,
            }),
            q,
        ),
        Err(e) => (
            Some(RunState {
                running: false,
                status: format!("unknown: {e}"),
            }),
            None,
        ),
    }
}

/// What the next backup of a VM will be, without changing anything.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outlook {
    /// None when the VM has no `qmp` configured.
    pub run: Option<RunState>,
    pub volumes: Vec<VolumeOutlook>,
    /// What a killed backup left in the running QEMU (`repair` removes it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeOutlook {
    pub volume: String,
    /// Whether the next backup reads only what a bitmap marks.
    pub incremental: bool,
    /// Why it reads the whole disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One volume of a VM for `outlook`: name, path, claimed format, and the
/// previous backup in the repository asked about.
pub struct VolumeRef {
    pub name: String,
    pub path: PathBuf,
    pub format: crate::source::FormatChoice,
    pub previous: Option<capture::PreviousBackup>,
}

fn verdict(name: &str, read: bitmap::Read) -> VolumeOutlook {
    match read {
        bitmap::Read::Incremental { .. } => VolumeOutlook {
            volume: name.to_string(),
            incremental: true,
            reason: None,
        },
        bitmap::Read::Full { reason } => VolumeOutlook {
            volume: name.to_string(),
            incremental: false,
            reason: Some(reason),
        },
    }
}

/// Asks QEMU (running) or the images (stopped) whether each volume's next
/// backup can read only what changed; read-only (no repairs).
pub fn outlook(cfg: &LiveConfig, volumes: &[VolumeRef], chunk_size: u64) -> Outlook {
    // The monitor serves one client at a time: while a backup drives it,
    // asking would only wait.
    if cfg.qmp.as_deref().is_some_and(VmLock::held) {
        return Outlook {
            run: Some(RunState {
                running: true,
                status: "being backed up now".into(),
            }),
            volumes: Vec::new(),
            leftovers: Vec::new(),
        };
    }
    let (run, monitor) = run_state(cfg);
    let off = |why: &str| -> Vec<VolumeOutlook> {
        volumes
            .iter()
            .map(|v| VolumeOutlook {
                volume: v.name.clone(),
                incremental: false,
                reason: Some(why.to_string()),
            })
            .collect()
    };
    let mut monitor = monitor;
    let leftovers = monitor
        .as_mut()
        .map(|q| capture::leftovers(q).unwrap_or_default())
        .unwrap_or_default();
    if !cfg.bitmaps {
        return Outlook {
            run,
            volumes: off(BITMAPS_OFF),
            leftovers,
        };
    }
    if let Some(mut q) = monitor {
        let pairs: Vec<(String, PathBuf)> = volumes
            .iter()
            .map(|v| (v.name.clone(), v.path.clone()))
            .collect();
        let volumes = match capture::disk_info(&mut q, &pairs) {
            Ok(infos) => volumes
                .iter()
                .zip(infos)
                .map(|(v, d)| {
                    let prev = capture::previous_for(v.previous.as_ref(), chunk_size, d.size);
                    verdict(&v.name, bitmap::decide(&prev, &d.bitmaps).0)
                })
                .collect(),
            Err(e) => off(&format!("cannot tell: {e}")),
        };
        return Outlook {
            run,
            volumes,
            leftovers,
        };
    }
    let volumes = volumes
        .iter()
        .map(|v| {
            let qcow2 = match v.format {
                crate::source::FormatChoice::Qcow2 => true,
                crate::source::FormatChoice::Raw => false,
                crate::source::FormatChoice::Auto => {
                    crate::source::raw::looks_like_qcow2(&v.path).unwrap_or(false)
                }
            };
            if !qcow2 {
                return verdict(
                    &v.name,
                    bitmap::Read::Full {
                        reason: "a raw image keeps no dirty bitmap while no QEMU runs it".into(),
                    },
                );
            }
            match crate::source::qemu::info(
                &v.path,
                Some(crate::repo::manifest::ImageFormat::Qcow2),
            ) {
                Ok(info) => {
                    let prev =
                        capture::previous_for(v.previous.as_ref(), chunk_size, info.virtual_size);
                    verdict(
                        &v.name,
                        bitmap::decide(&prev, &offline::bitmaps_of(&info)).0,
                    )
                }
                Err(e) => verdict(
                    &v.name,
                    bitmap::Read::Full {
                        reason: format!("cannot tell: {e}"),
                    },
                ),
            }
        })
        .collect();
    Outlook {
        run,
        volumes,
        leftovers,
    }
}

/// Removes what a killed backup left in a running VM's QEMU, at once (not
/// at its next backup, a day away on a daily schedule): the overlays stop
/// growing and the guest's writes their slowdown. Refused while a backup
/// of the VM runs. Returns what was removed (empty: nothing was left).
pub fn repair(cfg: &LiveConfig) -> Result<Vec<String>> {
    let Some(path) = &cfg.qmp else {
        return Ok(Vec::new());
    };
    let _lock = VmLock::acquire(path)?;
    match qmp::Qmp::connect(path, QMP_TIMEOUT)? {
        Err(qmp::Absent(_)) => Ok(Vec::new()),
        Ok(mut q) => {
            if capture::leftovers(&mut q)?.is_empty() {
                return Ok(Vec::new());
            }
            capture::repair(&mut q)
        }
    }
}

/// The outlook of an inventory VM against the backups of a repository
/// (each volume's newest one is the base of the next).
pub fn outlook_for<M: std::borrow::Borrow<crate::repo::manifest::Manifest>>(
    config: &crate::config::Config,
    vm: &str,
    backups: &[(crate::repo::ManifestKey, M)],
    chunk_size: u64,
) -> Option<Outlook> {
    let v = config.vm(vm)?;
    let refs: Vec<VolumeRef> = v
        .volumes
        .iter()
        .map(|vol| {
            let name = vol.name.get_ref().clone();
            let previous = backups
                .iter()
                .rev()
                .find(|(k, _)| k.vm == vm && k.volume == name)
                .map(|(_, m)| capture::PreviousBackup::of(m.borrow()));
            VolumeRef {
                path: config.resolve(&vol.path),
                format: vol.format,
                previous,
                name,
            }
        })
        .collect();
    Some(outlook(&config.live_for(vm), &refs, chunk_size))
}

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
