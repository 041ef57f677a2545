//! libvirt domains: discovery, and backups of running domains through
//! libvirt's own backup API (`virDomainBackupBegin` in pull mode, through
//! `virsh backup-begin`) with checkpoints.
//!
//! A pull-mode backup job makes libvirt's QEMU fleece every chosen disk at
//! one instant and export it read-only over NBD on a unix socket lifeboat
//! names; lifeboat reads the exports with the same NBD client as a QMP
//! capture, with `qemu:dirty-bitmap:…` for an incremental read. A
//! checkpoint (persistent bitmaps, one per qcow2 disk) is created at the
//! same instant and named `lifeboat-<set>`; the manifest records it, and
//! the next backup into the same repository is incremental from it.
//!
//! Lineage, as with QMP bitmaps (`bitmap::decide`): a checkpoint the last
//! backup named and the domain still has → incremental; a missing one →
//! a full read with the reason; other `lifeboat-…` checkpoints (a killed
//! backup's, another repository's lineage) are removed before the new one
//! is made; checkpoints with other names (virtnbdbackup's, an admin's) are
//! never touched. libvirt keeps every checkpoint's bitmap recording until
//! the checkpoint is deleted, so deleting one never loses another's
//! changes: the previous checkpoint goes once the manifests are durable,
//! the new one when the backup fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bitmap::{decide, BitmapState, Read, Repair};
use super::capture::{previous_for, LiveReader, PreviousBackup};
use super::outlook::{verdict, Outlook, RunState, VolumeOutlook, VolumeRef};
use super::settings::{LibvirtDomain, LiveConfig, BITMAPS_OFF};
use super::virsh::{names, Virsh};
use super::vmlock::VmLock;
use crate::error::{Error, Result};
use crate::format::manifest::{is_bitmap_name, Consistency, ImageFormat};
use crate::vm::libvirt_xml::{
    backup_job_facts, checkpoint_facts, checkpoint_xml, domain_facts, pull_backup_xml,
    AgentChannel, BackupJobFacts, DomainFacts, PullDisk,
};

/// Scratch directories of backup jobs (the NBD socket, libvirt's scratch
/// images); a killed run's is found by this prefix.
const DIR_PREFIX: &str = "lifeboat-libvirt-";

/// `virsh domstate`: running, paused, shut off, …
pub fn state(v: &Virsh, domain: &str) -> Result<String> {
    Ok(v.run(Some(domain), &["domstate", "--", domain])?
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Whether a domain in this state has a QEMU whose disks must be read
/// through it (never behind its back).
pub fn is_live(state: &str) -> bool {
    !matches!(state, "shut off" | "crashed" | "")
}

/// The domain as it runs now (live XML: QEMU's user, the agent's state).
pub fn live_facts(v: &Virsh, domain: &str) -> Result<DomainFacts> {
    domain_facts(&v.run(Some(domain), &["dumpxml", "--", domain])?)
}

/// The persistent definition, with what a restore needs to recreate it
/// (`--security-info`: VNC passwords and the like are part of it).
pub fn definition_xml(v: &Virsh, domain: &str) -> Result<String> {
    v.run(
        Some(domain),
        &["dumpxml", "--inactive", "--security-info", "--", domain],
    )
}

/// A domain as `lifeboat vms` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DomainSummary {
    pub name: String,
    pub state: String,
    pub disks: Vec<DiskSummary>,
    /// Why lifeboat cannot back it up by name (a name it does not accept,
    /// no disk it can read); None when it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The definition as read for the listing (None: it did not read).
    #[serde(skip)]
    pub facts: Option<DomainFacts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskSummary {
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Why this disk is not backed up (a network disk, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Why a disk of a domain is not backed up, if it is not.
pub fn disk_skipped(d: &crate::vm::libvirt_xml::DomainDisk) -> Option<String> {
    if d.device != "disk" {
        return Some(format!("a {} drive", d.device));
    }
    if !crate::names::is_valid_name(&d.target) {
        return Some("its device name is not a valid volume name".into());
    }
    match (d.kind.as_str(), &d.source) {
        ("file" | "block", Some(_)) => None,
        ("file" | "block", None) => Some("no medium".into()),
        (kind, _) => Some(format!(
            "a {kind} disk (lifeboat reads files and block devices)"
        )),
    }
}

/// Every domain of the connection, running or not, with its disks.
pub fn list(v: &Virsh) -> Result<Vec<DomainSummary>> {
    let mut out = Vec::new();
    for name in names(&v.run(None, &["list", "--all", "--name"])?) {
        let mut problem = None;
        if let Err(e) = crate::names::check_name("VM", &name) {
            problem = Some(format!(
                "{e}; a [[vm]] entry with libvirt_domain can name it"
            ));
        }
        let state = state(v, &name).unwrap_or_else(|e| format!("unknown: {e}"));
        let facts = match definition_xml(v, &name).and_then(|x| domain_facts(&x)) {
            Ok(f) => Some(f),
            Err(e) => {
                problem.get_or_insert_with(|| format!("its definition does not read: {e}"));
                None
            }
        };
        let disks: Vec<DiskSummary> = facts
            .iter()
            .flat_map(|f| &f.disks)
            .map(|d| DiskSummary {
                target: d.target.clone(),
                path: d.source.as_ref().map(|p| p.display().to_string()),
                format: d.format.clone(),
                skipped: disk_skipped(d),
            })
            .collect();
        if problem.is_none() && disks.iter().all(|d| d.skipped.is_some()) {
            problem = Some("no disk lifeboat can read".into());
        }
        out.push(DomainSummary {
            name,
            state,
            disks,
            problem,
            facts,
        });
    }
    Ok(out)
}

/// The backup job running on a domain, if any.
fn backup_job(v: &Virsh, domain: &str) -> Result<Option<BackupJobFacts>> {
    match v.run(Some(domain), &["backup-dumpxml", "--", domain]) {
        Ok(xml) => Ok(Some(backup_job_facts(&xml)?)),
        Err(Error::Libvirt { reason, .. })
            if reason.contains("no domain backup job") || reason.contains("no active") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether a backup job is one a lifeboat started (its socket is in one of
/// our scratch directories).
fn is_ours(job: &BackupJobFacts) -> bool {
    job.socket.as_deref().is_some_and(|s| {
        s.parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with(DIR_PREFIX))
    })
}

/// lifeboat's checkpoints of the domain: (name, disks with a bitmap).
/// Others are not read.
fn checkpoints(v: &Virsh, domain: &str) -> Result<Vec<(String, Vec<String>)>> {
    let all = names(&v.run(Some(domain), &["checkpoint-list", "--name", "--", domain])?);
    let mut ours = Vec::new();
    for name in all {
        if !is_bitmap_name(&name) {
            continue;
        }
        let xml = v.run(
            Some(domain),
            &["checkpoint-dumpxml", "--no-domain", "--", domain, &name],
        )?;
        ours.push((name, checkpoint_facts(&xml)?.bitmap_disks));
    }
    Ok(ours)
}

/// lifeboat's checkpoints that track `target`, as the lineage sees them:
/// libvirt keeps every checkpoint's bitmap recording until it is deleted.
fn states_for(ours: &[(String, Vec<String>)], target: &str) -> Vec<BitmapState> {
    ours.iter()
        .filter(|(_, disks)| disks.iter().any(|d| d == target))
        .map(|(name, _)| BitmapState {
            name: name.clone(),
            recording: true,
            inconsistent: false,
            busy: false,
        })
        .collect()
}

/// The running domain's disk that is the file `path`.
fn disk_at<'a>(
    facts: &'a DomainFacts,
    path: &Path,
) -> Option<&'a crate::vm::libvirt_xml::DomainDisk> {
    facts
        .backup_disks()
        .find(|x| x.source.as_deref().is_some_and(|s| same_file(s, path)))
}

/// What a killed backup left on a running domain (read-only).
pub fn leftovers(v: &Virsh, domain: &str) -> Vec<String> {
    match backup_job(v, domain) {
        Ok(Some(job)) if is_ours(&job) => {
            vec![
                "a backup job of a killed lifeboat (libvirt keeps its fleecing scratch growing)"
                    .into(),
            ]
        }
        _ => Vec::new(),
    }
}

/// Ends a killed backup's job on a running domain now.
pub fn repair(d: &LibvirtDomain) -> Result<Vec<String>> {
    let v = d.virsh();
    let _lock = VmLock::acquire(&d.lock_key())?;
    match backup_job(&v, &d.domain)? {
        Some(job) if is_ours(&job) => {
            v.run(Some(&d.domain), &["domjobabort", "--", &d.domain])?;
            Ok(vec!["aborted the backup job a killed lifeboat left".into()])
        }
        _ => Ok(Vec::new()),
    }
}

/// One disk of a pull-mode capture.
#[derive(Debug, Clone)]
pub struct PulledDisk {
    pub volume: String,
    pub path: PathBuf,
    pub target: String,
    pub size: u64,
    pub format: ImageFormat,
    pub read: Read,
    /// The checkpoint started at this backup's instant, if this disk is in it.
    pub new_bitmap: Option<String>,
    export: String,
    export_bitmap: Option<String>,
}

/// A running domain's disks captured by a libvirt pull-mode backup job.
pub struct PullSession {
    virsh: Virsh,
    domain: String,
    facts: DomainFacts,
    dir: Option<tempfile::TempDir>,
    sock: PathBuf,
    pub disks: Vec<PulledDisk>,
    pub consistency: Consistency,
    pub note: Option<String>,
    pub repaired: Vec<String>,
    /// The checkpoint this session made (deleted again if it fails).
    checkpoint: Option<String>,
    job: bool,
    finished: bool,
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// `virsh domblkinfo DOM DISK --bytes`'s capacity.
fn capacity(v: &Virsh, domain: &str, target: &str) -> Result<u64> {
    let out = v.run(Some(domain), &["domblkinfo", "--", domain, target])?;
    out.lines()
        .find_map(|l| l.strip_prefix("Capacity:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| Error::Libvirt {
            at: format!("{} domain {}", v.describe(), crate::text::escape(domain)),
            reason: format!("virsh domblkinfo {target} printed no capacity"),
        })
}

impl PullSession {
    /// Finds every volume's disk in the running domain, ends a killed
    /// run's job, and decides per disk whether its checkpoint can be
    /// trusted; stray lifeboat checkpoints are removed. Nothing is
    /// captured yet.
    pub fn begin(
        d: &LibvirtDomain,
        volumes: &[(String, PathBuf)],
        previous: &[Option<PreviousBackup>],
        chunk_size: u64,
        set: &str,
        cfg: &LiveConfig,
    ) -> Result<PullSession> {
        let v = d.virsh();
        let domain = d.domain.as_str();
        let fail = |reason: String| Error::Libvirt {
            at: format!("{} domain {}", v.describe(), crate::text::escape(domain)),
            reason,
        };
        if v.is_remote() {
            return Err(fail(
                "a running domain is read through an NBD socket on the host that runs it, and this URI names another host: run lifeboat there (qemu:///system)".into(),
            ));
        }
        let facts = live_facts(&v, domain)?;
        let mut repaired = Vec::new();
        if let Some(job) = backup_job(&v, domain)? {
            if !is_ours(&job) {
                return Err(fail(
                    "another backup job runs on this domain (another tool's; libvirt runs one at a time): wait until it ends".into(),
                ));
            }
            v.run(Some(domain), &["domjobabort", "--", domain])?;
            repaired.push("aborted the backup job a killed lifeboat left".into());
        }
        let ours = if cfg.bitmaps {
            checkpoints(&v, domain)?
        } else {
            Vec::new()
        };
        let mut disks = Vec::new();
        let mut strays: Vec<String> = Vec::new();
        let mut bases: Vec<String> = Vec::new();
        for (i, (volume, path)) in volumes.iter().enumerate() {
            let disk = disk_at(&facts, path).ok_or_else(|| {
                fail(format!(
                    "the running domain has no disk {} (volume {volume}): its disks are {}",
                    path.display(),
                    facts
                        .backup_disks()
                        .map(|x| format!(
                            "{} {}",
                            x.target,
                            x.source
                                .as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let format = match disk.format.as_deref() {
                Some("qcow2") => ImageFormat::Qcow2,
                Some("raw") | None => ImageFormat::Raw,
                Some(other) => {
                    return Err(fail(format!(
                        "disk {} is {other}; lifeboat reads raw and qcow2",
                        disk.target
                    )))
                }
            };
            let size = capacity(&v, domain, &disk.target)?;
            let prev = previous_for(previous.get(i).and_then(Option::as_ref), chunk_size, size);
            let states = states_for(&ours, &disk.target);
            let read = if !cfg.bitmaps {
                Read::Full {
                    reason: BITMAPS_OFF.to_string(),
                }
            } else if format != ImageFormat::Qcow2 {
                Read::Full {
                    reason:
                        "a raw disk holds no checkpoint bitmap (libvirt's checkpoints need qcow2)"
                            .into(),
                }
            } else {
                let (read, repairs) = decide(&prev, &states);
                for r in repairs {
                    if let Repair::Remove(name) = r {
                        strays.push(name);
                    }
                }
                match (&prev.bitmap, read) {
                    // decide's wording is about QEMU's bitmaps.
                    (Some(k), Read::Full { .. })
                        if prev.reusable && !states.iter().any(|s| &s.name == k) =>
                    {
                        Read::Full {
                            reason: format!(
                                "the domain has no checkpoint {k} on {}: deleted, or the domain was redefined without its checkpoints{}",
                                disk.target,
                                states
                                    .first()
                                    .map(|s| format!("; its checkpoint {} belongs to a backup this repository does not have (another lineage)", s.name))
                                    .unwrap_or_default()
                            ),
                        }
                    }
                    (_, read) => read,
                }
            };
            if let Read::Incremental { bitmap } = &read {
                bases.push(bitmap.clone());
            }
            let new_bitmap =
                (cfg.bitmaps && format == ImageFormat::Qcow2).then(|| format!("lifeboat-{set}"));
            disks.push(PulledDisk {
                volume: volume.clone(),
                path: path.clone(),
                target: disk.target.clone(),
                size,
                format,
                read,
                new_bitmap,
                export: disk.target.clone(),
                export_bitmap: None,
            });
        }
        strays.sort();
        strays.dedup();
        for s in strays.iter().filter(|s| !bases.contains(s)) {
            v.run(Some(domain), &["checkpoint-delete", "--", domain, s])?;
            repaired.push(format!(
                "removed checkpoint {s} (a killed backup's, or another repository's lineage)"
            ));
        }
        Ok(PullSession {
            virsh: v,
            domain: domain.to_string(),
            facts,
            dir: None,
            sock: PathBuf::new(),
            disks,
            consistency: Consistency::Crash,
            note: None,
            repaired,
            checkpoint: None,
            job: false,
            finished: false,
        })
    }

    fn fail(&self, reason: String) -> Error {
        Error::Libvirt {
            at: format!(
                "{} domain {}",
                self.virsh.describe(),
                crate::text::escape(&self.domain)
            ),
            reason,
        }
    }

    /// The agent's answer to `guest-fsfreeze-status`, if it answers.
    fn freeze_status(&self) -> Option<String> {
        let out = self
            .virsh
            .run_for(
                Some(&self.domain),
                &[
                    "qemu-agent-command",
                    "--",
                    &self.domain,
                    r#"{"execute":"guest-fsfreeze-status"}"#,
                ],
                Duration::from_secs(10),
            )
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
        v.get("return")?.as_str().map(str::to_string)
    }

    /// Takes the instant: the scratch directory QEMU can reach, the guest
    /// frozen through libvirt if its agent answers, the backup job and the
    /// checkpoint begun together, the guest thawed at once.
    pub fn capture(&mut self, cfg: &LiveConfig) -> Result<()> {
        let dir = crate::sys::scratch_dir(&std::env::temp_dir(), DIR_PREFIX)?;
        if let Some((uid, gid)) = self.facts.qemu_owner {
            // QEMU (libvirt-qemu) creates the socket and opens the scratch
            // images here; still private to everyone else.
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                Error::io(
                    "handing the scratch directory to QEMU's user",
                    dir.path(),
                    e,
                )
            })?;
        }
        self.sock = dir.path().join("nbd.sock");
        let pull: Vec<PullDisk> = self
            .disks
            .iter()
            .map(|d| PullDisk {
                target: d.target.clone(),
                incremental: match &d.read {
                    Read::Incremental { bitmap } => Some(bitmap.clone()),
                    Read::Full { .. } => None,
                },
                scratch: dir.path().join(format!("scratch-{}.qcow2", d.target)),
            })
            .collect();
        let skip: Vec<String> = self
            .facts
            .disks
            .iter()
            .filter(|x| !self.disks.iter().any(|d| d.target == x.target))
            .map(|x| x.target.clone())
            .filter(|t| !t.is_empty())
            .collect();
        let backup = pull_backup_xml(&self.sock, &pull, &skip);
        self.dir = Some(dir);
        let bitmap_disks: Vec<String> = self
            .disks
            .iter()
            .filter(|d| d.new_bitmap.is_some())
            .map(|d| d.target.clone())
            .collect();
        let new_cp = self.disks.iter().find_map(|d| d.new_bitmap.clone());
        let checkpoint = new_cp.as_ref().map(|name| {
            let others: Vec<String> = self
                .facts
                .disks
                .iter()
                .filter(|x| x.device == "disk" && !bitmap_disks.contains(&x.target))
                .map(|x| x.target.clone())
                .collect();
            checkpoint_xml(
                name,
                "made by lifeboat at a backup; the next backup into the same repository reads only what changed since, then removes it",
                &bitmap_disks,
                &others,
            )
        });

        let mut notes = Vec::new();
        let agent = match self.facts.agent {
            AgentChannel::None => {
                notes.push(
                    "the domain has no guest agent channel (org.qemu.guest_agent.0)".to_string(),
                );
                false
            }
            AgentChannel::Disconnected => {
                notes.push("the guest agent is not connected".to_string());
                false
            }
            AgentChannel::Connected => true,
        };
        if agent && self.freeze_status().as_deref() == Some("frozen") {
            let _ = self
                .virsh
                .run(Some(&self.domain), &["domfsthaw", "--", &self.domain]);
            self.repaired
                .push("the guest was left frozen by an earlier run: thawed".into());
        }
        let mut frozen = None;
        if agent {
            let t = Instant::now();
            match self.virsh.run_said(
                Some(&self.domain),
                &["domfsfreeze", "--", &self.domain],
                cfg.freeze_timeout + Duration::from_secs(5),
            ) {
                Ok(out) => {
                    let n = out
                        .split_whitespace()
                        .find_map(|w| w.parse::<u64>().ok())
                        .unwrap_or(0);
                    frozen = Some((t, n));
                }
                Err(e) => notes.push(format!("freeze failed: {e}")),
            }
        }
        let mut docs = vec![backup.as_str()];
        if let Some(c) = &checkpoint {
            docs.push(c);
        }
        let begun = self.virsh.run_with_files(
            Some(&self.domain),
            &["backup-begin", "--", &self.domain],
            &docs,
        );
        if agent {
            // Always thaw, even when the freeze seemed to fail: the agent
            // may have frozen some filesystems before it gave up.
            let thawed = self
                .virsh
                .run(Some(&self.domain), &["domfsthaw", "--", &self.domain]);
            match (&frozen, thawed) {
                (Some((t, n)), Ok(_)) if begun.is_ok() => {
                    self.consistency = Consistency::Application;
                    notes.push(format!(
                        "{n} guest filesystems frozen through libvirt for {} ms",
                        t.elapsed().as_millis()
                    ));
                }
                (Some(_), Err(e)) => notes.push(format!("thaw failed: {e}")),
                _ => {}
            }
        }
        self.note = Some(notes.join("; ")).filter(|n| !n.is_empty());
        begun?;
        self.job = true;
        self.checkpoint = new_cp;
        let job = backup_job(&self.virsh, &self.domain)?
            .ok_or_else(|| self.fail("the backup job ended at once".into()))?;
        for d in &mut self.disks {
            let j = job
                .disks
                .iter()
                .find(|j| j.name == d.target && j.backup)
                .ok_or_else(|| Error::Libvirt {
                    at: self.virsh.describe(),
                    reason: format!("the backup job does not export disk {}", d.target),
                })?;
            if let Some(e) = &j.export {
                d.export = e.clone();
            }
            d.export_bitmap = j.bitmap.clone();
            if matches!(d.read, Read::Incremental { .. }) && d.export_bitmap.is_none() {
                return Err(Error::Libvirt {
                    at: self.virsh.describe(),
                    reason: format!(
                        "the incremental export of {} names no dirty bitmap",
                        d.target
                    ),
                });
            }
        }
        Ok(())
    }

    /// A reader of disk `i` as it was at the instant.
    pub fn reader(&self, i: usize) -> Result<LiveReader> {
        let d = &self.disks[i];
        let bitmap = match &d.read {
            Read::Incremental { .. } => d.export_bitmap.as_deref(),
            Read::Full { .. } => None,
        };
        let gone = |e: Error| {
            Error::Source {
            path: d.path.clone(),
            reason: format!(
                "reading the running domain's disk through libvirt's export: {e} (did the domain stop, or the job end?)"
            ),
        }
        };
        LiveReader::connect(&self.sock, &d.export, bitmap, d.size, &d.path, gone)
    }

    fn end_job(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.job) {
            return None;
        }
        self.virsh
            .run(Some(&self.domain), &["domjobabort", "--", &self.domain])
            .err()
            .map(|e| format!("ending the backup job: {e} (the next backup ends it)"))
    }

    /// After every manifest is durable: the job ends and the previous
    /// checkpoints are history.
    pub fn commit(mut self) -> Vec<String> {
        let mut warnings: Vec<String> = self.end_job().into_iter().collect();
        let mut old: Vec<String> = self
            .disks
            .iter()
            .filter_map(|d| match &d.read {
                Read::Incremental { bitmap } => Some(bitmap.clone()),
                Read::Full { .. } => None,
            })
            .collect();
        old.sort();
        old.dedup();
        for cp in old.iter().filter(|c| Some(*c) != self.checkpoint.as_ref()) {
            if let Err(e) = self.virsh.run(
                Some(&self.domain),
                &["checkpoint-delete", "--", &self.domain, cp],
            ) {
                warnings.push(format!(
                    "removing checkpoint {cp}: {e} (the next backup removes it)"
                ));
            }
        }
        self.finished = true;
        warnings
    }

    /// The backup failed: the job ends and the checkpoint it made goes, so
    /// the previous one (still recording) stays the base of the next.
    pub fn abort(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let _ = self.end_job();
        if let Some(cp) = self.checkpoint.take() {
            let _ = self.virsh.run(
                Some(&self.domain),
                &["checkpoint-delete", "--", &self.domain, &cp],
            );
        }
    }
}

impl Drop for PullSession {
    fn drop(&mut self) {
        self.abort();
    }
}

/// What the next backup of a libvirt domain will be, without changing
/// anything (`lifeboat vms`, the console).
pub fn outlook(
    d: &LibvirtDomain,
    volumes: &[VolumeRef],
    chunk_size: u64,
    bitmaps: bool,
) -> Outlook {
    let full = |why: &str| -> Vec<VolumeOutlook> {
        volumes
            .iter()
            .map(|v| {
                verdict(
                    &v.name,
                    Read::Full {
                        reason: why.to_string(),
                    },
                )
            })
            .collect()
    };
    if VmLock::held(&d.lock_key()) {
        return Outlook {
            run: Some(RunState {
                running: true,
                status: "being backed up now".into(),
            }),
            volumes: Vec::new(),
            leftovers: Vec::new(),
        };
    }
    let v = d.virsh();
    let state = match state(&v, &d.domain) {
        Ok(s) => s,
        Err(e) => {
            return Outlook {
                run: Some(RunState {
                    running: false,
                    status: format!("unknown: {e}"),
                }),
                volumes: full(&format!("cannot tell: {e}")),
                leftovers: Vec::new(),
            }
        }
    };
    let run = Some(RunState {
        running: is_live(&state),
        status: format!("libvirt: {}", crate::text::escape(&state)),
    });
    if !is_live(&state) {
        return Outlook {
            run,
            volumes: full(
                "the libvirt domain is shut off: its checkpoints are read only while it runs",
            ),
            leftovers: Vec::new(),
        };
    }
    let leftovers = leftovers(&v, &d.domain);
    if !bitmaps {
        return Outlook {
            run,
            volumes: full(BITMAPS_OFF),
            leftovers,
        };
    }
    let known = live_facts(&v, &d.domain).and_then(|f| Ok((f, checkpoints(&v, &d.domain)?)));
    let (facts, ours) = match known {
        Ok(k) => k,
        Err(e) => {
            return Outlook {
                run,
                volumes: full(&format!("cannot tell: {e}")),
                leftovers,
            }
        }
    };
    let volumes = volumes
        .iter()
        .map(|vol| {
            let Some(disk) = disk_at(&facts, &vol.path) else {
                return verdict(
                    &vol.name,
                    Read::Full {
                        reason: "the running domain has no such disk".into(),
                    },
                );
            };
            if disk.format.as_deref() != Some("qcow2") {
                return verdict(
                    &vol.name,
                    Read::Full {
                        reason: "a raw disk holds no checkpoint bitmap (libvirt's checkpoints need qcow2)".into(),
                    },
                );
            }
            let size = match capacity(&v, &d.domain, &disk.target) {
                Ok(s) => s,
                Err(e) => {
                    return verdict(
                        &vol.name,
                        Read::Full {
                            reason: format!("cannot tell: {e}"),
                        },
                    )
                }
            };
            let prev = previous_for(vol.previous.as_ref(), chunk_size, size);
            verdict(&vol.name, decide(&prev, &states_for(&ours, &disk.target)).0)
        })
        .collect();
    Outlook {
        run,
        volumes,
        leftovers,
    }
}
