//! A point-in-time read of a running VM's disks through QEMU itself.
//!
//! For every disk, in one QMP `transaction` (so all disks share one
//! instant): a `blockdev-backup sync=none` job from the disk to a
//! temporary qcow2 overlay whose backing is the disk (image fleecing:
//! before the guest overwrites a cluster, QEMU copies the old one into the
//! overlay), the previous backup's bitmap disabled, and a new bitmap
//! started. The overlays are exported read-only by QEMU's NBD server, with
//! the old bitmap, and lifeboat reads them like any NBD source. The guest
//! runs and writes throughout; the optional agent freeze lasts only for
//! the transaction.
//!
//! Why this and not copy-before-write + snapshot-access: inserting a CBW
//! filter into a running disk's graph in QEMU 7.2 takes a `qom-set` on the
//! device per disk, which is not part of a transaction, so several disks
//! would be captured at different instants unless the VM is paused.
//! `blockdev-backup sync=none` runs the same CBW filter internally and is
//! transactional from QEMU 2.x to today.
//!
//! Least privilege towards QEMU, which may run as another user: the
//! overlay file and the NBD listening socket are created by lifeboat in a
//! private directory and handed to QEMU as descriptors (`add-fd`,
//! `getfd`); the overlay is unlinked at once, so even a SIGKILL leaves no
//! file behind. Everything lifeboat adds to QEMU is named `lifeboat-…`, and
//! the next run removes what a killed one left.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bitmap::{decide, BitmapState, Previous, Read, Repair};
use super::qmp::{err, Qmp};
use super::settings::LiveConfig;
use crate::error::{Error, Result};
use crate::format::manifest::{Consistency, ImageFormat};
use crate::source::nbd::{NbdClient, Want};
use crate::source::{Extents, VolumeReader};

const PREFIX: &str = "lifeboat-";
const FLEECE_PREFIX: &str = "lifeboat-fleece-";
const NBD_FD_NAME: &str = "lifeboat-nbd";
const FDSET_OPAQUE: &str = "lifeboat-fleece";
/// How long QEMU may take to finish cancelling a job or closing an export.
const SETTLE: Duration = Duration::from_secs(30);

/// One disk of the running VM, as the backup sees it.
#[derive(Debug, Clone)]
pub struct LiveDisk {
    pub volume: String,
    pub path: PathBuf,
    /// QEMU's format node for the disk.
    pub node: String,
    pub size: u64,
    pub format: ImageFormat,
    pub read: Read,
    /// The bitmap started at this backup's instant.
    pub new_bitmap: Option<String>,
    fleece: String,
    export: String,
    job: String,
}

/// What the volume's previous backup in this repository offers.
#[derive(Debug, Clone)]
pub struct PreviousBackup {
    pub bitmap: Option<String>,
    pub chunk_size: u64,
    pub size: u64,
}

impl PreviousBackup {
    pub fn of(m: &crate::format::manifest::Manifest) -> PreviousBackup {
        PreviousBackup {
            bitmap: m.capture.as_ref().and_then(|c| c.bitmap.clone()),
            chunk_size: m.chunk_size,
            size: m.volume.virtual_size,
        }
    }
}

pub struct Session {
    qmp: Qmp,
    dir: tempfile::TempDir,
    sock: PathBuf,
    pub disks: Vec<LiveDisk>,
    pub consistency: Consistency,
    pub note: Option<String>,
    /// Whether this session started QEMU's NBD server. Everything else it
    /// adds is named `lifeboat-…` and found again by `clear_ours` (the VM
    /// lock makes it this session's).
    server: bool,
    captured: bool,
    finished: bool,
    /// What was repaired from an earlier run (said in the backup's log).
    pub repaired: Vec<String>,
}

/// A running VM's disk as QEMU knows it.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// The format node (bitmaps live there).
    pub node: String,
    pub format: ImageFormat,
    pub size: u64,
    pub bitmaps: Vec<BitmapState>,
}

/// Finds each volume's node in QEMU by its file.
pub fn disk_info(qmp: &mut Qmp, volumes: &[(String, PathBuf)]) -> Result<Vec<DiskInfo>> {
    let blocks = qmp.execute("query-block", json!({}))?;
    let nodes = qmp.execute("query-named-block-nodes", json!({"flat": true}))?;
    let mut out = Vec::new();
    for (volume, path) in volumes {
        let inserted = blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("inserted"))
            .find(|ins| same_file(Path::new(&s(ins, "file")), path))
            .ok_or_else(|| {
                err(
                    qmp.path(),
                    format!(
                        "this QEMU has no disk {} (volume {volume}): check the volume's path against `query-block`",
                        path.display()
                    ),
                )
            })?;
        let node = s(inserted, "node-name");
        let format = match s(inserted, "drv").as_str() {
            "qcow2" => ImageFormat::Qcow2,
            "raw" => ImageFormat::Raw,
            other => {
                return Err(err(
                    qmp.path(),
                    format!(
                        "volume {volume} is a {} disk; lifeboat reads raw and qcow2",
                        crate::text::escape(other)
                    ),
                ))
            }
        };
        let info = nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| s(n, "node-name") == node)
            .ok_or_else(|| err(qmp.path(), format!("QEMU lists no node {node}")))?;
        let size = info
            .get("image")
            .and_then(|im| im.get("virtual-size"))
            .and_then(Value::as_u64)
            .ok_or_else(|| err(qmp.path(), format!("node {node} has no size")))?;
        let bitmaps = info
            .get("dirty-bitmaps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|b| BitmapState {
                name: s(b, "name"),
                recording: b.get("recording").and_then(Value::as_bool).unwrap_or(false),
                inconsistent: b
                    .get("inconsistent")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                busy: b.get("busy").and_then(Value::as_bool).unwrap_or(false),
            })
            .collect();
        out.push(DiskInfo {
            node,
            format,
            size,
            bitmaps,
        });
    }
    Ok(out)
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Session {
    /// Connects the session to a running QEMU: repairs what an earlier run
    /// left, finds every volume's node and decides per disk whether its
    /// bitmap can be trusted. Nothing is captured yet.
    pub fn begin(
        mut qmp: Qmp,
        volumes: &[(String, PathBuf)],
        previous: &[Option<PreviousBackup>],
        chunk_size: u64,
        set: &str,
        cfg: &LiveConfig,
    ) -> Result<Session> {
        // Owned and private; what a killed run left in the temp
        // directory goes with the next one.
        let dir =
            crate::sys::scratch_dir(&std::env::temp_dir(), "lifeboat-live-").map_err(|e| {
                err(
                    qmp.path(),
                    format!("cannot create a private directory: {e}"),
                )
            })?;
        let sock = dir.path().join("nbd.sock");
        let (removed, failed) = clear_ours(&mut qmp);
        if let Some(e) = failed.into_iter().next() {
            return Err(err(
                qmp.path(),
                format!("removing what an earlier run left: {e}"),
            ));
        }
        let mut repaired: Vec<String> = removed
            .into_iter()
            .map(|r| format!("removed {r} an earlier run left"))
            .collect();
        let infos = disk_info(&mut qmp, volumes)?;
        let mut disks = Vec::new();
        for (i, ((volume, path), info)) in volumes.iter().zip(infos).enumerate() {
            let DiskInfo {
                node,
                format,
                size,
                bitmaps,
            } = info;
            let prev = previous_for(previous.get(i).and_then(Option::as_ref), chunk_size, size);
            let (read, repairs) = if cfg.bitmaps {
                decide(&prev, &bitmaps)
            } else {
                // Neither used nor touched: another repository's lineage
                // may rely on them.
                let reason = super::settings::BITMAPS_OFF.to_string();
                (Read::Full { reason }, Vec::new())
            };
            for r in repairs {
                apply_repair(&mut qmp, &node, &r)?;
                repaired.push(match r {
                    Repair::MergeBack { into, .. } => {
                        format!("{volume}: merged an interrupted backup's bitmap back into {into}")
                    }
                    Repair::Remove(b) => format!("{volume}: removed stale bitmap {b}"),
                });
            }
            disks.push(LiveDisk {
                volume: volume.clone(),
                path: path.clone(),
                node,
                size,
                format,
                read,
                new_bitmap: cfg.bitmaps.then(|| format!("{PREFIX}{set}")),
                fleece: format!("{FLEECE_PREFIX}{i}"),
                export: format!("lifeboat-export-{i}"),
                job: format!("lifeboat-job-{i}"),
            });
        }
        Ok(Session {
            qmp,
            dir,
            sock,
            disks,
            consistency: Consistency::Crash,
            note: None,
            server: false,
            captured: false,
            finished: false,
            repaired,
        })
    }

    /// Takes the instant: overlays ready, the guest frozen if an agent
    /// answers, one transaction for every disk, the guest thawed at once.
    pub fn capture(&mut self, cfg: &LiveConfig) -> Result<()> {
        for i in 0..self.disks.len() {
            self.add_overlay(i)?;
        }
        let (result, freeze) =
            super::agent::frozen_around(cfg.agent.as_deref(), cfg.freeze_timeout, |_| {
                self.transaction()
            });
        self.repaired.extend(freeze.repaired.clone());
        if freeze.application() {
            self.consistency = Consistency::Application;
        }
        self.note = freeze.note();
        result?;
        self.captured = true;
        self.export_all()
    }

    fn add_overlay(&mut self, i: usize) -> Result<()> {
        let d = self.disks[i].clone();
        let file = self.dir.path().join(format!("fleece-{i}.qcow2"));
        crate::source::qemu::run_qemu_img_then(
            &["create", "-q", "-f", "qcow2"],
            &file,
            &[&d.size.to_string()],
        )?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .map_err(|e| Error::Qemu(format!("opening the fleecing overlay: {e}")))?;
        // QEMU keeps its own descriptor; the name is not needed any more.
        let _ = std::fs::remove_file(&file);
        let r =
            self.qmp
                .execute_with_fd("add-fd", json!({"opaque": FDSET_OPAQUE}), f.as_raw_fd())?;
        let set = r
            .get("fdset-id")
            .and_then(Value::as_i64)
            .ok_or_else(|| err(self.qmp.path(), "add-fd returned no fdset-id"))?;
        self.qmp.execute(
            "blockdev-add",
            json!({
                "driver": "qcow2",
                "node-name": d.fleece,
                "file": {"driver": "file", "filename": format!("/dev/fdset/{set}")},
                "backing": d.node,
            }),
        )?;
        Ok(())
    }

    fn transaction(&mut self) -> Result<()> {
        let mut actions = Vec::new();
        for d in &self.disks {
            actions.push(json!({"type": "blockdev-backup", "data": {
                "job-id": d.job, "device": d.node, "target": d.fleece, "sync": "none",
            }}));
            if let Read::Incremental { bitmap } = &d.read {
                actions.push(json!({"type": "block-dirty-bitmap-disable", "data": {
                    "node": d.node, "name": bitmap,
                }}));
            }
            if let Some(b) = &d.new_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                    "node": d.node, "name": b,
                    "persistent": d.format == ImageFormat::Qcow2,
                }}));
            }
        }
        self.qmp
            .execute("transaction", json!({"actions": actions}))?;
        Ok(())
    }

    fn export_all(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.sock);
        let listener = UnixListener::bind(&self.sock).map_err(|e| {
            err(
                self.qmp.path(),
                format!("cannot create the NBD socket: {e}"),
            )
        })?;
        self.qmp.execute_with_fd(
            "getfd",
            json!({"fdname": NBD_FD_NAME}),
            listener.as_raw_fd(),
        )?;
        // nbd-server-start takes the legacy socket address form (`data`).
        let start = json!({"addr": {"type": "fd", "data": {"str": NBD_FD_NAME}}});
        if let Err(e) = self.qmp.execute("nbd-server-start", start.clone()) {
            if !e.to_string().contains("already running") {
                return Err(e);
            }
            // A server with no exports is a killed run's; one with
            // exports belongs to someone else and is left alone.
            let exports = self.qmp.execute("query-block-exports", json!({}))?;
            let foreign: Vec<String> = exports
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| s(x, "id"))
                .collect();
            if !foreign.is_empty() {
                return Err(err(
                    self.qmp.path(),
                    format!(
                        "QEMU's NBD server already runs with exports {} that are not lifeboat's; lifeboat needs that server: remove those exports or back up when they are done",
                        crate::text::escape(&foreign.join(", "))
                    ),
                ));
            }
            self.qmp.execute("nbd-server-stop", json!({}))?;
            self.repaired
                .push("stopped an NBD server an earlier run left".into());
            self.qmp.execute_with_fd(
                "getfd",
                json!({"fdname": NBD_FD_NAME}),
                listener.as_raw_fd(),
            )?;
            self.qmp.execute("nbd-server-start", start)?;
        }
        self.server = true;
        drop(listener);
        for d in self.disks.clone() {
            let mut args = json!({
                "type": "nbd", "id": d.export, "node-name": d.fleece,
                "name": d.export, "writable": false,
            });
            if let Read::Incremental { bitmap } = &d.read {
                args["bitmaps"] = json!([bitmap]);
            }
            self.qmp.execute("block-export-add", args)?;
        }
        Ok(())
    }

    /// A reader of disk `i` as it was at the instant.
    pub fn reader(&self, i: usize) -> Result<LiveReader> {
        let d = &self.disks[i];
        let bitmap = match &d.read {
            Read::Incremental { bitmap } => Some(bitmap.as_str()),
            Read::Full { .. } => None,
        };
        // QEMU may have died since the capture: say so, whatever broke.
        let gone = |e: Error| Error::Source {
            path: d.path.clone(),
            reason: format!("opening the running VM's disk through QEMU: {e} (did the VM exit?)"),
        };
        LiveReader::connect(&self.sock, &d.export, bitmap, d.size, &d.path, gone)
    }

    /// After every manifest is durable: the previous bitmaps are history.
    pub fn commit(mut self) -> Vec<String> {
        let mut warnings = self.teardown();
        for d in self.disks.clone() {
            if let Read::Incremental { bitmap } = &d.read {
                if let Err(e) = self.qmp.execute(
                    "block-dirty-bitmap-remove",
                    json!({"node": d.node, "name": bitmap}),
                ) {
                    warnings.push(format!("{}: {e} (the next backup removes it)", d.volume));
                }
            }
        }
        self.finished = true;
        warnings
    }

    /// The backup failed: changes since the previous backup stay tracked
    /// by its bitmap (the new bitmap's marks merged back), so the next
    /// backup can still read only what changed.
    pub fn abort(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let _ = self.teardown();
        if !self.captured {
            return;
        }
        for d in self.disks.clone() {
            let Some(new) = &d.new_bitmap else { continue };
            let repair = match &d.read {
                Read::Incremental { bitmap } => Repair::MergeBack {
                    into: bitmap.clone(),
                    from: vec![new.clone()],
                },
                Read::Full { .. } => Repair::Remove(new.clone()),
            };
            let _ = apply_repair(&mut self.qmp, &d.node, &repair);
        }
    }

    /// Removes exports, the NBD server, jobs, overlays and descriptors.
    fn teardown(&mut self) -> Vec<String> {
        let (_, mut warnings) = clear_ours(&mut self.qmp);
        if std::mem::take(&mut self.server) {
            if let Err(e) = self.qmp.execute("nbd-server-stop", json!({})) {
                warnings.push(e.to_string());
            }
        }
        // A listening socket handed over but never taken by a server (an
        // error in between) would stay open in QEMU; if the server took
        // it, there is nothing to close and QEMU says so.
        let _ = self.qmp.execute("closefd", json!({"fdname": NBD_FD_NAME}));
        warnings
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.abort();
    }
}

pub(crate) fn previous_for(prev: Option<&PreviousBackup>, chunk_size: u64, size: u64) -> Previous {
    let Some(p) = prev else {
        return Previous::default();
    };
    let why_not = if p.chunk_size != chunk_size {
        Some("the repository's chunk size differs from the last backup's".to_string())
    } else if p.size != size {
        Some(format!(
            "the disk is {size} bytes now and was {} at the last backup",
            p.size
        ))
    } else {
        None
    };
    Previous {
        bitmap: p.bitmap.clone(),
        reusable: why_not.is_none(),
        why_not,
    }
}

fn apply_repair(qmp: &mut Qmp, node: &str, r: &Repair) -> Result<()> {
    match r {
        Repair::MergeBack { into, from } => {
            qmp.execute(
                "transaction",
                json!({"actions": merge_back_actions(node, into, from)}),
            )?;
        }
        Repair::Remove(b) => {
            qmp.execute(
                "block-dirty-bitmap-remove",
                json!({"node": node, "name": b}),
            )?;
        }
    }
    Ok(())
}

/// The old bitmap is enabled *before* the newer ones are merged into it:
/// the guest writes on, and a write that landed between a merge and a
/// later enable would be marked only in a bitmap that is then removed —
/// a change the next incremental backup would silently miss. One
/// transaction, so a failure leaves both bitmaps as they were.
fn merge_back_actions(node: &str, into: &str, from: &[String]) -> Vec<Value> {
    let mut actions = vec![
        json!({"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": into}}),
        json!({"type": "block-dirty-bitmap-merge",
               "data": {"node": node, "target": into, "bitmaps": from}}),
    ];
    actions.extend(
        from.iter().map(
            |f| json!({"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": f}}),
        ),
    );
    actions
}

/// Polls a query until no entry's `key` starts with `prefix`.
fn wait_gone(qmp: &mut Qmp, query: &str, key: &str, prefix: &str) {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        match qmp.execute(query, json!({})) {
            Ok(v) => {
                let left = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| s(x, key).starts_with(prefix));
                if !left {
                    return;
                }
            }
            Err(_) => return,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a killed backup left in QEMU — exports, jobs, overlay nodes and
/// descriptor sets named like lifeboat's — without touching it. While
/// they stay, QEMU keeps copying every guest write into an overlay file
/// nobody reads (deleted, so `du` does not see it) and the guest's writes
/// are slower.
pub fn leftovers(qmp: &mut Qmp) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let names = |v: Value, key: &str, prefix: &str| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| s(x, key))
            .filter(|n| n.starts_with(prefix))
            .collect()
    };
    for id in names(qmp.execute("query-block-exports", json!({}))?, "id", PREFIX) {
        out.push(format!("export {}", crate::text::escape(&id)));
    }
    for id in names(
        qmp.execute("query-block-jobs", json!({}))?,
        "device",
        PREFIX,
    ) {
        out.push(format!("job {}", crate::text::escape(&id)));
    }
    for n in names(
        qmp.execute("query-named-block-nodes", json!({}))?,
        "node-name",
        FLEECE_PREFIX,
    ) {
        out.push(format!("overlay {}", crate::text::escape(&n)));
    }
    Ok(out)
}

/// Removes a killed backup's leftovers from QEMU (`clear_ours`): what was
/// removed, or why not.
pub fn repair(qmp: &mut Qmp) -> Result<Vec<String>> {
    let (removed, failed) = clear_ours(qmp);
    match failed.into_iter().next() {
        Some(e) => Err(err(qmp.path(), format!("removing leftovers: {e}"))),
        None => Ok(removed),
    }
}

/// Removes everything named like lifeboat's from QEMU — exports, jobs,
/// overlay nodes, descriptor sets — in the order QEMU needs (an export
/// holds its node, a job its target). The end of every session, and the
/// repair of a killed one's leftovers. Best effort: returns what it
/// removed and what failed. Bitmaps are `decide`'s business.
fn clear_ours(qmp: &mut Qmp) -> (Vec<String>, Vec<String>) {
    let mut c = Clearing {
        qmp,
        removed: Vec::new(),
        failed: Vec::new(),
    };
    for id in c.list("query-block-exports", "id", PREFIX) {
        let args = json!({"id": id, "mode": "hard"});
        c.run(format!("export {id}"), "block-export-del", args);
    }
    wait_gone(c.qmp, "query-block-exports", "id", PREFIX);
    for id in c.list("query-block-jobs", "device", PREFIX) {
        let args = json!({"device": id, "force": true});
        c.run(format!("job {id}"), "block-job-cancel", args);
    }
    wait_gone(c.qmp, "query-block-jobs", "device", PREFIX);
    for name in c.list("query-named-block-nodes", "node-name", FLEECE_PREFIX) {
        let args = json!({"node-name": name});
        c.run(format!("overlay {name}"), "blockdev-del", args);
    }
    match c.qmp.execute("query-fdsets", json!({})) {
        Ok(sets) => {
            for set in sets.as_array().into_iter().flatten() {
                let ours = set
                    .get("fds")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|f| s(f, "opaque") == FDSET_OPAQUE);
                if let (true, Some(id)) = (ours, set.get("fdset-id").and_then(Value::as_i64)) {
                    let args = json!({"fdset-id": id});
                    c.run(format!("descriptor set {id}"), "remove-fd", args);
                }
            }
        }
        Err(e) => c.failed.push(e.to_string()),
    }
    (c.removed, c.failed)
}

struct Clearing<'q> {
    qmp: &'q mut Qmp,
    removed: Vec<String>,
    failed: Vec<String>,
}

impl Clearing<'_> {
    /// The `key` of every entry a query lists that starts with `prefix`.
    fn list(&mut self, query: &str, key: &str, prefix: &str) -> Vec<String> {
        match self.qmp.execute(query, json!({})) {
            Ok(v) => v
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| s(x, key))
                .filter(|name| name.starts_with(prefix))
                .collect(),
            Err(e) => {
                self.failed.push(e.to_string());
                Vec::new()
            }
        }
    }

    fn run(&mut self, what: String, cmd: &str, args: Value) {
        match self.qmp.execute(cmd, args) {
            Ok(_) => self.removed.push(what),
            Err(e) => self.failed.push(e.to_string()),
        }
    }
}

/// A disk at the captured instant, read through QEMU's NBD export.
pub struct LiveReader {
    path: PathBuf,
    client: NbdClient,
    dirty: Option<Extents>,
}

impl LiveReader {
    /// Connects to one export of a point-in-time copy (QEMU's or
    /// libvirt's): its data extents, and for an incremental read the
    /// dirty bitmap's, which must answer. `gone` says what broke.
    pub(crate) fn connect(
        sock: &Path,
        export: &str,
        bitmap: Option<&str>,
        size: u64,
        path: &Path,
        gone: impl Fn(Error) -> Error,
    ) -> Result<LiveReader> {
        let mut client = NbdClient::connect_with(
            sock,
            &Want {
                export,
                allocation: true,
                dirty_bitmap: bitmap,
            },
        )
        .map_err(&gone)?;
        if client.size() != size {
            return Err(gone(Error::Nbd(format!(
                "the export {} is {} bytes, the disk {size}",
                crate::text::escape(export),
                client.size()
            ))));
        }
        let dirty = client.dirty_extents().map_err(&gone)?;
        if bitmap.is_some() && dirty.is_none() {
            return Err(gone(Error::Nbd(format!(
                "the export {} did not answer for its dirty bitmap",
                crate::text::escape(export)
            ))));
        }
        Ok(LiveReader::new(path.to_path_buf(), client, dirty))
    }

    fn new(path: PathBuf, client: NbdClient, dirty: Option<Extents>) -> LiveReader {
        LiveReader {
            path,
            client,
            dirty,
        }
    }
}

impl VolumeReader for LiveReader {
    fn size(&self) -> u64 {
        self.client.size()
    }

    fn data_extents(&mut self) -> Result<Extents> {
        let extents = self.client.data_extents().map_err(|e| Error::Source {
            path: self.path.clone(),
            reason: format!(
                "asking QEMU where the running VM's disk holds data: {e} (did the VM exit?)"
            ),
        })?;
        Ok(extents.unwrap_or_else(|| vec![(0, self.client.size())]))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.client.read_at(offset, buf).map_err(|e| Error::Source {
            path: self.path.clone(),
            reason: format!(
                "reading the running VM's disk at {offset} through QEMU: {e} (did the VM exit?)"
            ),
        })
    }

    fn bytes_read(&self) -> Option<u64> {
        Some(self.client.bytes_read)
    }

    fn dirty_extents(&self) -> Option<&Extents> {
        self.dirty.as_ref()
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        self.client.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_back_enables_the_old_bitmap_before_merging_and_removing() {
        let from = vec!["lifeboat-b".to_string(), "lifeboat-c".to_string()];
        let actions = merge_back_actions("n0", "lifeboat-a", &from);
        let kinds: Vec<&str> = actions
            .iter()
            .map(|a| a["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            kinds,
            [
                "block-dirty-bitmap-enable",
                "block-dirty-bitmap-merge",
                "block-dirty-bitmap-remove",
                "block-dirty-bitmap-remove"
            ]
        );
        assert_eq!(actions[0]["data"]["name"], "lifeboat-a");
        assert_eq!(actions[1]["data"]["target"], "lifeboat-a");
        assert_eq!(actions[1]["data"]["bitmaps"], json!(from));
        assert_eq!(actions[3]["data"]["name"], "lifeboat-c");
    }
}
