//! Instant restore: a VM runs from its backup within seconds, its disks
//! copied into place while it runs.
//!
//! Each volume is served from the repository as a read-only NBD export
//! (chunks fetched on demand and verified, as `lifeboat nbd` serves them)
//! on a private socket; QEMU starts in the background on a qcow2 overlay
//! per disk whose backing file is that export (the guest's writes land in
//! the overlay, the backup is only read). QEMU's own `blockdev-mirror`
//! then copies each disk — overlay and backing together — into a raw file
//! at its final place, keeps it in step with the guest's writes, and on
//! `block-job-complete` switches the running VM onto it. The exports and
//! overlays go; the VM keeps running on local disks after lifeboat exits.
//!
//! A read the repository cannot answer (a remote gone) pauses the VM
//! (`rerror=stop`) and the copy (`on-source-error=stop`) — the guest never
//! sees an error, never wrong bytes — and both are resumed every few
//! seconds until it answers again. Cancel stops the VM and removes every
//! file the restore made: a half-copied disk never stays behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::durable;
use crate::error::{Error, Result};
use crate::format::manifest::ImageFormat;
use crate::jobs::{CancellationToken, Progress};
use crate::live::qmp::{err as qmp_err, Qmp};
pub use crate::nbd_export::Source;
use crate::nbd_export::{serve, Export, Listen};

use super::domain::RestoredDisk;
use super::qemu::{self, BootArgs, Daemon, Forward};
use super::Definition;

/// What the admin chose besides the backup.
pub struct Choices {
    pub dir: PathBuf,
    /// The VM's name (default: the backup's).
    pub name: Option<String>,
    pub accel: String,
    pub forwards: Vec<Forward>,
}

/// The request for the VM set `reference` names: its definition (the
/// backup's, else `config_def`'s, else a plain one) and an export per
/// volume. Only a VM@WHEN set is taken.
pub async fn prepare(
    source: Source,
    reference: &str,
    config_def: impl Fn(&str) -> Option<Definition>,
    choices: Choices,
) -> Result<InstantRequest> {
    use crate::format::refs::{self, Ref};
    use crate::nbd_export::Chunks;
    if !matches!(Ref::parse(reference)?, Ref::Set { .. }) {
        return Err(Error::BadInput(format!(
            "an instant restore brings back a whole VM (VM@WHEN); to read one volume without restoring it, use `lifeboat nbd {reference}`"
        )));
    }
    let vm_of = |p: &[(crate::format::ManifestKey, crate::format::Manifest)]| {
        p.first().map(|(k, _)| k.vm.clone()).unwrap_or_default()
    };
    let name_of =
        |k: &crate::format::ManifestKey| format!("{}/{}@{}", k.vm, k.volume, k.id.short());
    let (def, exports, vm) = match source {
        Source::Local(root) => {
            let repo = crate::repo::Repo::open(&root)?;
            let all = repo.load_all()?;
            let picked: Vec<_> = refs::resolve_many(&all, reference)?
                .into_iter()
                .cloned()
                .collect();
            let vm = vm_of(&picked);
            let (def, _) = super::restore::definition_of(&repo, &picked, config_def(&vm))?;
            let mut exports = Vec::new();
            for (k, m) in &picked {
                let index = repo.read_index(&m.index)?;
                let chunks = Chunks::Local(crate::repo::Repo::open(&root)?);
                exports.push((k.volume.clone(), Export::new(chunks, index, name_of(k), 16)));
            }
            (def, exports, vm)
        }
        Source::Remote(repo) => {
            let all = repo.backups().await?;
            let picked: Vec<_> = refs::resolve_many(&all, reference)?
                .into_iter()
                .cloned()
                .collect();
            let vm = vm_of(&picked);
            let stored = match picked.iter().find_map(|(_, m)| m.definition) {
                Some(d) => Some(repo.chunk(&d.chunk).await?),
                None => None,
            };
            let (def, _) =
                super::restore::definition_with(&picked, config_def(&vm), |d| match &stored {
                    Some(data) => Definition::from_chunk(d, data),
                    None => Err(Error::Internal("no stored definition".into())),
                })?;
            let rt = tokio::runtime::Handle::current();
            let mut exports = Vec::new();
            for (k, m) in &picked {
                let index = repo.index(&m.index).await?;
                let chunks = Chunks::Remote {
                    repo: repo.clone(),
                    rt: rt.clone(),
                };
                exports.push((k.volume.clone(), Export::new(chunks, index, name_of(k), 16)));
            }
            (def, exports, vm)
        }
    };
    Ok(InstantRequest {
        def,
        exports,
        dir: choices.dir,
        name: choices.name.unwrap_or(vm),
        accel: choices.accel,
        forwards: choices.forwards,
    })
}

pub struct InstantRequest {
    pub def: Definition,
    /// Each volume of the set, and the export that serves it.
    pub exports: Vec<(String, Export)>,
    /// Where the disks end up (`VOLUME.raw`), with the VM's monitor
    /// socket, serial log and pid file.
    pub dir: PathBuf,
    /// The VM's name (QEMU's `-name`, and the files' stem).
    pub name: String,
    pub accel: String,
    pub forwards: Vec<Forward>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstantReport {
    pub vm: String,
    pub disks: Vec<PathBuf>,
    pub pid: u32,
    pub qmp: PathBuf,
    pub serial: PathBuf,
    pub forwards: Vec<Forward>,
    /// From the start of the restore until QEMU ran the VM.
    pub running_after_secs: f64,
    /// From the start until the VM ran on its local disks.
    pub local_after_secs: f64,
    /// Bytes QEMU copied (the disks' sizes, and what the guest wrote
    /// meanwhile).
    pub copied_bytes: u64,
    /// Times the repository did not answer and the VM waited.
    pub waits: Vec<String>,
}

/// How often a paused VM or copy is resumed while the repository does
/// not answer.
const RETRY: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(200);
/// The copy's speed while the guest is busy reading its disks (booting,
/// warming up): a copy at full speed starves a booting guest of I/O and,
/// on a small host, of CPU (measured on 2 cores: the demo's guest
/// answered after 6.3 s instead of 3.8 s). The copy goes at full speed
/// once the guest has not read for `QUIET_POLLS` polls (5 s): a guest
/// between two bursts of boot reads is still booting.
const YIELD_SPEED: u64 = 32 << 20;
const QUIET_POLLS: u32 = 25;

struct Disk {
    volume: String,
    /// The QEMU drive (`diskN`), and its copy job.
    drive: String,
    job: String,
    target: PathBuf,
    overlay: PathBuf,
    size: u64,
}

pub fn run(
    mut req: InstantRequest,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<InstantReport> {
    let t0 = Instant::now();
    // QEMU runs from / once it daemonizes: every path it gets is absolute.
    req.dir = std::path::absolute(&req.dir).map_err(|e| Error::io("resolving", &req.dir, e))?;
    durable::private_dir(&req.dir)?;
    let qmp_path = req.dir.join(format!("{}.qmp", req.name));
    let serial = req.dir.join(format!("{}.serial.log", req.name));
    let pidfile = req.dir.join(format!("{}.pid", req.name));
    let work = tempfile::Builder::new()
        .prefix(".lifeboat-instant-")
        .tempdir_in(&req.dir)
        .map_err(|e| Error::io("creating a work directory in", &req.dir, e))?;
    let mut disks = Vec::new();
    for (i, d) in req.def.spec.disks.iter().enumerate() {
        let Some((_, export)) = req.exports.iter().find(|(v, _)| *v == d.volume) else {
            continue;
        };
        disks.push(Disk {
            volume: d.volume.clone(),
            drive: format!("disk{i}"),
            job: format!("lifeboat-copy{i}"),
            target: req.dir.join(format!("{}.raw", d.volume)),
            overlay: work.path().join(format!("{}.qcow2", d.volume)),
            size: export.size(),
        });
    }
    for p in disks
        .iter()
        .map(|d| &d.target)
        .chain([&qmp_path, &serial, &pidfile])
    {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(Error::BadInput(format!(
                "{} exists: an instant restore never overwrites; give another --to or move it away",
                p.display()
            )));
        }
    }
    // QEMU sets its own umask (027) when it daemonizes: the serial log
    // exists, private, before it opens it.
    durable::create_private(&serial)?;
    let stop_exports = CancellationToken::new();
    std::thread::scope(|s| {
        let mut sockets = Vec::new();
        for d in &disks {
            let Some((_, export)) = req.exports.iter().find(|(v, _)| *v == d.volume) else {
                continue;
            };
            let sock = work.path().join(format!("{}.sock", d.volume));
            let (tx, rx) = std::sync::mpsc::channel();
            let at = Listen::Unix(sock.clone());
            let stop = &stop_exports;
            let server = s.spawn(move || {
                serve(export, &at, stop, |_| {
                    let _ = tx.send(());
                })
            });
            if rx.recv().is_err() {
                // The server ended before it listened: its error says why.
                stop_exports.cancel();
                return match server.join() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(Error::Internal("the NBD export did not start".into())),
                };
            }
            sockets.push(sock);
        }
        let paths = Paths {
            qmp: &qmp_path,
            serial: &serial,
            pidfile: &pidfile,
        };
        let res = boot_and_copy(&req, &disks, &sockets, paths, t0, cancel, progress);
        // The VM no longer reads the exports (or was stopped): end them.
        stop_exports.cancel();
        res
    })
}

#[derive(Clone, Copy)]
struct Paths<'a> {
    qmp: &'a Path,
    serial: &'a Path,
    pidfile: &'a Path,
}

fn qemu_img(args: &[&str]) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| Error::Qemu(format!("running qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(Error::Qemu(format!(
            "qemu-img {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn boot_and_copy(
    req: &InstantRequest,
    disks: &[Disk],
    sockets: &[PathBuf],
    paths: Paths,
    t0: Instant,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<InstantReport> {
    progress.set_phase("starting the VM on the backup");
    for (d, sock) in disks.iter().zip(sockets) {
        // The backing file names the export: -u, because it is only read
        // once QEMU opens the overlay.
        let backing = format!(
            "json:{}",
            json!({"driver": "raw", "file": {"driver": "nbd",
                "server": {"type": "unix", "path": sock}}})
        );
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-F",
            "raw",
            "-b",
            &backing,
            &d.overlay.display().to_string(),
            &d.size.to_string(),
        ])?;
    }
    let restored: Vec<RestoredDisk> = disks
        .iter()
        .map(|d| RestoredDisk {
            volume: d.volume.clone(),
            path: d.overlay.clone(),
            format: ImageFormat::Qcow2,
        })
        .collect();
    let args = qemu::args(&BootArgs {
        def: &req.def,
        disks: &restored,
        accel: &req.accel,
        name: Some(&req.name),
        check: None,
        forwards: &req.forwards,
        lan: None,
        daemon: Some(Daemon {
            serial: paths.serial,
            qmp: paths.qmp,
            pidfile: paths.pidfile,
        }),
    })?;
    // -daemonize: QEMU returns once the VM is set up and runs on after
    // lifeboat exits (it is in a session of its own).
    let mut cmd = Command::new(qemu::QEMU);
    cmd.args(&args).stdin(std::process::Stdio::null());
    // Its monitor socket, serial log and pid file are the owner's alone,
    // whatever the umask (the console log may show the guest's secrets).
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let out = cmd
        .output()
        .map_err(|e| Error::Qemu(format!("running {}: {e}", qemu::QEMU)))?;
    if !out.status.success() {
        remove_made(disks, paths);
        return Err(Error::BadInput(format!(
            "QEMU did not start the VM: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for p in [paths.qmp, paths.pidfile, paths.serial] {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }
    let pid: u32 = std::fs::read_to_string(paths.pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let running_after = t0.elapsed().as_secs_f64();
    progress.push_line(&format!(
        "the VM runs on its backup after {running_after:.1}s (pid {pid}); copying its disks"
    ));
    let mut qmp = match Qmp::connect(paths.qmp, Duration::from_secs(30)) {
        Ok(Ok(q)) => q,
        Ok(Err(absent)) => {
            stop_vm(None, pid);
            remove_made(disks, paths);
            return Err(qmp_err(paths.qmp, absent.0));
        }
        Err(e) => {
            stop_vm(None, pid);
            remove_made(disks, paths);
            return Err(e);
        }
    };
    match copy(&mut qmp, disks, cancel, progress) {
        Ok((copied, waits)) => {
            // What QEMU wrote is on disk before the restore says done.
            durable::sync_filesystem(&req.dir)?;
            Ok(InstantReport {
                vm: req.name.clone(),
                disks: disks.iter().map(|d| d.target.clone()).collect(),
                pid,
                qmp: paths.qmp.to_path_buf(),
                serial: paths.serial.to_path_buf(),
                forwards: req.forwards.clone(),
                running_after_secs: running_after,
                local_after_secs: t0.elapsed().as_secs_f64(),
                copied_bytes: copied,
                waits,
            })
        }
        Err(e) => {
            stop_vm(Some(&mut qmp), pid);
            remove_made(disks, paths);
            Err(e)
        }
    }
}

fn job_field<'a>(job: &'a Value, key: &str) -> &'a Value {
    job.get(key).unwrap_or(&Value::Null)
}

/// Mirrors every disk to its target, waits until all are in step,
/// switches the VM onto them and checks it did. Returns the bytes copied
/// and the waits for the repository.
fn copy(
    qmp: &mut Qmp,
    disks: &[Disk],
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<(u64, Vec<String>)> {
    for (i, d) in disks.iter().enumerate() {
        durable::create_private(&d.target)?
            .set_len(d.size)
            .map_err(|e| Error::io("sizing", &d.target, e))?;
        let node = format!("lifeboat-target{i}");
        qmp.execute(
            "blockdev-add",
            json!({"driver": "file", "node-name": node, "filename": d.target}),
        )?;
        qmp.execute(
            "blockdev-mirror",
            json!({"job-id": d.job, "device": d.drive, "target": node, "sync": "full",
                   "on-source-error": "stop", "on-target-error": "stop",
                   "auto-dismiss": false, "speed": YIELD_SPEED}),
        )?;
    }
    progress.set_phase("copying the disks (the VM runs)");
    let total: u64 = disks.iter().map(|d| d.size).sum();
    progress.set_job_total(total);
    let (mut shown, mut switched) = (0u64, false);
    let mut waits = Vec::new();
    // The guest's reads so far, and how long it has been quiet: the copy
    // yields while the guest reads.
    let (mut guest_reads, mut quiet, mut yielding) = (0u64, 0u32, true);
    // Since when, and at how many bytes copied.
    let mut waiting_since: Option<(Instant, u64)> = None;
    let mut last_retry = Instant::now();
    loop {
        if cancel.is_cancelled() {
            // The caller says what that means (the VM stopped, its
            // half-copied disks removed): by then both are done.
            return Err(Error::Cancelled);
        }
        let jobs = qmp.execute("query-jobs", json!({}))?;
        let ours: Vec<&Value> = jobs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| disks.iter().any(|d| job_field(j, "id") == d.job.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if ours.len() != disks.len() {
            return Err(qmp_err(
                qmp.path(),
                format!(
                    "QEMU lost a copy job ({} of {} left)",
                    ours.len(),
                    disks.len()
                ),
            ));
        }
        for j in &ours {
            if let Some(e) = j.get("error").and_then(Value::as_str) {
                let why = format!("copying {} failed: {e}", job_field(j, "id"));
                return Err(qmp_err(qmp.path(), why));
            }
        }
        let (done, all): (u64, u64) = ours.iter().fold((0, 0), |(d, t), j| {
            (
                d + job_field(j, "current-progress").as_u64().unwrap_or(0),
                t + job_field(j, "total-progress").as_u64().unwrap_or(0),
            )
        });
        if all > total {
            progress.set_job_total(all);
        }
        if done > shown {
            progress.add(done - shown, 0);
            shown = done;
        }
        let status = |s: &str| ours.iter().all(|j| job_field(j, "status") == s);
        if status("concluded") {
            break;
        }
        if !switched && status("ready") {
            progress.set_phase("switching the VM to its local disks");
            for d in disks {
                qmp.execute("block-job-complete", json!({"device": d.job}))?;
            }
            switched = true;
        }
        let reads = guest_reads_of(qmp, disks)?;
        quiet = if reads > guest_reads { 0 } else { quiet + 1 };
        guest_reads = reads;
        let yield_now = quiet < QUIET_POLLS && !switched;
        if yield_now != yielding {
            let speed = if yield_now { YIELD_SPEED } else { 0 };
            // Only a running job takes a speed (one may have finished its
            // copy already); the speed is a courtesy to the guest, so a
            // job that refuses it does not fail the restore.
            for j in ours.iter().filter(|j| job_field(j, "status") == "running") {
                if let Some(id) = job_field(j, "id").as_str() {
                    let args = json!({"device": id, "speed": speed});
                    let _ = qmp.execute("block-job-set-speed", args);
                }
            }
            yielding = yield_now;
        }
        // A read the repository could not answer paused the VM or a copy.
        let vm = qmp.execute("query-status", json!({}))?;
        let vm_waits = job_field(&vm, "status") == "io-error";
        let paused: Vec<&str> = ours
            .iter()
            .filter(|j| job_field(j, "status") == "paused")
            .filter_map(|j| job_field(j, "id").as_str())
            .collect();
        if vm_waits || !paused.is_empty() {
            if waiting_since.is_none() {
                waiting_since = Some((Instant::now(), shown));
                progress.set_phase("waiting for the repository (the VM is paused, nothing lost)");
                progress.push_line(
                    "the repository did not answer a read: the VM and the copy wait and resume when it does",
                );
            }
            if last_retry.elapsed() >= RETRY {
                last_retry = Instant::now();
                for id in &paused {
                    let _ = qmp.execute("job-resume", json!({"id": id}));
                }
                if vm_waits {
                    let _ = qmp.execute("cont", json!({}));
                }
            }
        } else if let Some((since, _)) = waiting_since.filter(|(_, at)| shown > *at || switched) {
            // Over once the copy moves again (a resumed job may only be
            // waiting inside the next read).
            waiting_since = None;
            let w = format!(
                "waited {:.1}s for the repository, then went on",
                since.elapsed().as_secs_f64()
            );
            progress.push_line(&w);
            progress.set_phase("copying the disks (the VM runs)");
            waits.push(w);
        }
        std::thread::sleep(POLL);
    }
    for d in disks {
        qmp.execute("job-dismiss", json!({"id": d.job}))?;
    }
    // The switch happened: each drive now reads its local file.
    let blocks = qmp.execute("query-block", json!({}))?;
    for d in disks {
        let file = blocks
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|b| job_field(b, "device") == d.drive.as_str())
            })
            .and_then(|b| b.pointer("/inserted/file"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !file.contains(&*d.target.display().to_string()) {
            let why = format!(
                "after the copy, drive {} reads {file:?}, not {}",
                d.drive,
                d.target.display()
            );
            return Err(qmp_err(qmp.path(), why));
        }
    }
    Ok((shown, waits))
}

/// Read requests the guest has made on its disks (not the copy's).
fn guest_reads_of(qmp: &mut Qmp, disks: &[Disk]) -> Result<u64> {
    let stats = qmp.execute("query-blockstats", json!({}))?;
    Ok(stats
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|b| {
                    disks
                        .iter()
                        .any(|d| job_field(b, "device") == d.drive.as_str())
                })
                .filter_map(|b| b.pointer("/stats/rd_operations").and_then(Value::as_u64))
                .sum()
        })
        .unwrap_or(0))
}

/// Stops the VM: `quit` through its monitor, else SIGKILL; waits until
/// the process is gone so its files can be removed.
fn stop_vm(qmp: Option<&mut Qmp>, pid: u32) {
    if let Some(q) = qmp {
        let _ = q.execute("quit", json!({}));
    }
    if pid == 0 {
        return;
    }
    let alive = || unsafe { libc::kill(pid as i32, 0) } == 0;
    for _ in 0..100 {
        if !alive() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling the QEMU this restore started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    for _ in 0..50 {
        if !alive() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file a failed or cancelled restore made (the work directory with
/// the overlays goes with its guard).
fn remove_made(disks: &[Disk], paths: Paths) {
    for p in
        disks
            .iter()
            .map(|d| d.target.as_path())
            .chain([paths.qmp, paths.pidfile, paths.serial])
    {
        let _ = std::fs::remove_file(p);
    }
}
