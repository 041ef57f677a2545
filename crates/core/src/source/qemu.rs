//! qcow2 through the real qemu tools: `qemu-img info`/`map` for metadata,
//! `qemu-nbd` for guest-visible data (backing chains and compressed
//! clusters are qemu's business, not ours).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::nbd::NbdClient;
use super::reader::{Extents, VolumeReader};
use crate::error::{Error, Result};
use crate::format::manifest::ImageFormat;

#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<FormatSpecific>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FormatSpecific {
    pub data: Option<FormatData>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FormatData {
    /// A qcow2 image's persistent dirty bitmaps.
    #[serde(default)]
    pub bitmaps: Vec<QcowBitmap>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QcowBitmap {
    pub name: String,
    /// `auto` (recording), `in-use` (not saved properly).
    #[serde(default)]
    pub flags: Vec<String>,
}

impl ImageInfo {
    pub fn bitmaps(&self) -> &[QcowBitmap] {
        self.format_specific
            .as_ref()
            .and_then(|f| f.data.as_ref())
            .map(|d| d.bitmaps.as_slice())
            .unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
struct MapEntry {
    start: u64,
    length: u64,
    data: bool,
    #[serde(default)]
    zero: bool,
}

fn run_qemu_img(args: &[&str], path: &Path) -> Result<Vec<u8>> {
    run_qemu_img_then(args, path, &[])
}

/// `qemu-img ARGS PATH AFTER...`; a failure names the image and says what
/// qemu-img said.
pub(crate) fn run_qemu_img_then(args: &[&str], path: &Path, after: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(path)
        .args(after)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Qemu(format!("cannot run qemu-img ({e}); install qemu-utils")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Source {
            path: path.to_path_buf(),
            reason: format!(
                "qemu-img {}: {}",
                args[0],
                msg.trim().trim_start_matches("qemu-img: ")
            ),
        });
    }
    Ok(out.stdout)
}

fn fmt_arg(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    }
}

/// `qemu-img info`. With no format given qemu probes it; callers warn that
/// probing is unsafe for images a guest could have written.
pub fn info(path: &Path, format: Option<ImageFormat>) -> Result<ImageInfo> {
    let mut args = vec!["info", "--output=json", "-U"];
    if let Some(f) = format {
        args.extend(["-f", fmt_arg(f)]);
    }
    let out = run_qemu_img(&args, path)?;
    serde_json::from_slice(&out)
        .map_err(|e| Error::Qemu(format!("unexpected qemu-img info output: {e}")))
}

/// Why a disk a running QEMU holds is refused.
pub const IN_USE: &str = "is in use by a running QEMU (it holds the image's write lock): reading it behind QEMU's back could store a torn image; set the VM's `qmp` to its monitor socket so lifeboat asks QEMU for a point-in-time copy, or shut the VM down";

/// Whether a process (a running QEMU) has the image open for writing.
///
/// QEMU's file driver announces the permissions it holds on an image as
/// OFD read locks on single bytes: byte 100+n for permission n held, and
/// 200+n for permission n it will not share (`raw_apply_lock_bytes` in
/// block/file-posix.c); n = 1 is WRITE. Asking the kernel whether a write
/// lock on byte 101 would conflict tells, for raw and qcow2 alike, whether
/// some QEMU may be writing the disk, without taking any lock ourselves.
/// False when it cannot tell (no such lock support).
pub fn held_for_writing(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    const QEMU_WRITE_PERM_BYTE: i64 = 101;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: an all-zero flock is a valid value to fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = QEMU_WRITE_PERM_BYTE;
    fl.l_len = 1;
    // SAFETY: the fd is open for the call's duration and `fl` is a valid
    // flock the kernel writes into.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Ranges of a qcow2 image (whole backing chain) that hold data.
pub fn data_map(path: &Path) -> Result<Extents> {
    let out = run_qemu_img(&["map", "--output=json", "-U", "-f", "qcow2"], path)?;
    let entries: Vec<MapEntry> = serde_json::from_slice(&out)
        .map_err(|e| Error::Qemu(format!("unexpected qemu-img map output: {e}")))?;
    let mut extents: Extents = Vec::new();
    for e in entries.into_iter().filter(|e| e.data && !e.zero) {
        match extents.last_mut() {
            Some(last) if last.1 == e.start => last.1 = e.start + e.length,
            _ => extents.push((e.start, e.start + e.length)),
        }
    }
    Ok(extents)
}

/// A qcow2 image served read-only by a private `qemu-nbd` process.
/// An image read through a private `qemu-nbd`: a qcow2 file, or an RBD
/// snapshot through QEMU's rbd driver.
pub struct Qcow2Reader {
    path: PathBuf,
    size: u64,
    child: Child,
    client: NbdClient,
    dirty: Option<Extents>,
    /// Where the image holds data, when known without `qemu-img map`.
    extents: Option<Extents>,
    _dir: tempfile::TempDir,
}

impl Qcow2Reader {
    /// With `bitmap`, qemu-nbd exports that persistent dirty bitmap too.
    pub fn open(path: &Path, bitmap: Option<&str>) -> Result<Qcow2Reader> {
        Self::serve(path, "qcow2", path.as_os_str(), bitmap)
    }

    /// An RBD snapshot (QEMU's `rbd:` filename, credentials included):
    /// `extents` where it holds data, `dirty` what changed since the
    /// previous backup's snapshot (both from `rbd diff`).
    pub fn open_rbd(
        display: &Path,
        filename: &str,
        extents: Extents,
        dirty: Option<Extents>,
    ) -> Result<Qcow2Reader> {
        let mut r = Self::serve(display, "raw", std::ffi::OsStr::new(filename), None)?;
        r.extents = Some(extents);
        r.dirty = dirty;
        Ok(r)
    }

    fn serve(
        path: &Path,
        format: &str,
        target: &std::ffi::OsStr,
        bitmap: Option<&str>,
    ) -> Result<Qcow2Reader> {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-nbd-")
            .tempdir()
            .map_err(|e| Error::Qemu(format!("cannot create a socket directory: {e}")))?;
        let sock = dir.path().join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        crate::sys::die_with_parent(&mut cmd);
        let mut child = cmd
            .args(["--read-only", "--shared=1", "--persistent"])
            .arg(format!("--format={format}"))
            .arg(format!("--socket={}", sock.display()))
            .args(bitmap.map(|b| format!("--bitmap={b}")))
            .arg(target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Qemu(format!("cannot run qemu-nbd ({e}); install qemu-utils")))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut msg = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut msg);
                }
                let reason = if msg.contains("\"write\" lock") {
                    IN_USE.to_string()
                } else {
                    format!("qemu-nbd exited ({status}): {}", msg.trim())
                };
                return Err(Error::Source {
                    path: path.to_path_buf(),
                    reason,
                });
            }
            if sock.exists() {
                let want = super::nbd::Want {
                    dirty_bitmap: bitmap,
                    ..Default::default()
                };
                match NbdClient::connect_with(&sock, &want) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => {
                        let _ = child.kill();
                        return Err(e);
                    }
                    Err(_) => {}
                }
            } else if Instant::now() > deadline {
                let _ = child.kill();
                return Err(Error::Qemu("qemu-nbd did not start within 20 s".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut reader = Qcow2Reader {
            path: path.to_path_buf(),
            size: client.size(),
            child,
            client,
            dirty: None,
            extents: None,
            _dir: dir,
        };
        reader.dirty = reader.client.dirty_extents()?;
        Ok(reader)
    }
}

impl VolumeReader for Qcow2Reader {
    fn size(&self) -> u64 {
        self.size
    }

    fn data_extents(&mut self) -> Result<Extents> {
        match &self.extents {
            Some(e) => Ok(e.clone()),
            None => data_map(&self.path),
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.client.read_at(offset, buf).map_err(|e| Error::Source {
            path: self.path.clone(),
            reason: format!("reading guest data at {offset}: {e}"),
        })
    }

    fn bytes_read(&self) -> Option<u64> {
        Some(self.client.bytes_read)
    }

    fn dirty_extents(&self) -> Option<&Extents> {
        self.dirty.as_ref()
    }
}

impl Drop for Qcow2Reader {
    fn drop(&mut self) {
        self.client.disconnect();
        crate::sys::terminate(&mut self.child);
    }
}

/// Converts a raw image file into a qcow2 file with the real qemu-img. The
/// file qemu-img creates is private (umask 077 in the child) from its
/// first byte: a restored disk is as secret as the backup.
pub fn convert_raw_to_qcow2(raw: &Path, out: &Path) -> Result<()> {
    convert_raw(raw, out, "qcow2", &[])
}

/// `qemu-img convert` of a raw image into `format` (qemu-img's name: raw,
/// qcow2, vmdk, vpc) with `-o` options; the output is private.
pub fn convert_raw(raw: &Path, out: &Path, format: &str, options: &[&str]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-q", "-W", "-f", "raw", "-O", format]);
    for o in options {
        cmd.args(["-o", o]);
    }
    cmd.arg(raw).arg(out).stdin(Stdio::null());
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let res = cmd
        .output()
        .map_err(|e| Error::Qemu(format!("cannot run qemu-img ({e}); install qemu-utils")))?;
    if !res.status.success() {
        return Err(Error::Qemu(format!(
            "convert to {format} failed: {}",
            crate::text::escape(String::from_utf8_lossy(&res.stderr).trim())
        )));
    }
    Ok(())
}
