//! Restore drills: take a backup set from a repository (a remote by
//! default, as in a real disaster), fetch only what the local repository
//! lacks, restore every volume into a private scratch directory, check
//! each image's digest, boot-check it, clean up, and report pass or fail
//! with the RPO (age of the backup) and the RTO by phase. Reports are kept
//! in the local repository's `state/drills.jsonl`.
//!
//! A drill never returns half a result: whatever phase fails, the report
//! says which and why, QEMU is gone and the scratch directory removed.

pub mod history;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::format::manifest::{ImageFormat, Role};
use crate::format::refs::Ref;
use crate::jobs::{CancellationToken, Progress};
use crate::repo::Repo;
use crate::restore::{self, RestoreRequest, SetRestorePlan};
use crate::store::Store;
use crate::vm::boot;
use crate::vm::domain::RestoredDisk;
use crate::vm::qemu::Accel;
use crate::vm::Definition;
pub use report::{DrillOutcome, DrillReport, DrillRequest, Phase, PhaseTime, PHASES};

/// What the admin may say about one drill (the rest comes from the config).
#[derive(Debug, Clone, Default)]
pub struct DrillOverrides {
    pub from: Option<String>,
    pub at: Option<String>,
    pub accel: Option<Accel>,
    pub scratch: Option<PathBuf>,
    pub timeout_secs: Option<u64>,
}

/// Runs a drill and keeps its report in the local repository's history
/// (when there is one: a drill from a remote on a fresh machine creates
/// it by fetching).
pub async fn run_recorded(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &DrillRequest,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> DrillReport {
    let report = run(local_repo, remote, req, cancel, progress).await;
    if report.outcome != DrillOutcome::NotStarted
        && local_repo.join(crate::repo::CONFIG_FILE).exists()
    {
        if let Err(e) = history::record(local_repo, &report) {
            tracing::warn!("the drill's report was not kept in the history: {e}");
        }
    }
    report
}

/// The reference of the set to drill.
pub fn reference(vm: &str, at: Option<&str>) -> Result<String> {
    let r = match at {
        None => format!("{vm}@latest"),
        Some(a) if a.starts_with('@') => format!("{vm}{a}"),
        Some(a) if a.contains('@') => a.to_string(),
        Some(a) => format!("{vm}@{a}"),
    };
    match Ref::parse(&r)? {
        Ref::Set { vm: v, .. } if v == vm => Ok(r),
        _ => Err(Error::BadRef {
            input: r.clone(),
            reason: format!(
                "it does not name a backup set of VM {vm}: use VM@latest, VM@~N or VM@TIME"
            ),
        }),
    }
}

/// Runs a drill. `remote` is the store to drill from (None: the local
/// repository). Never fails as a whole: every failure is in the report.
pub async fn run(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &DrillRequest,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> DrillReport {
    let mut report = new_report(req);
    let scratch = match make_scratch(&req.scratch, &req.vm) {
        Ok(s) => s,
        Err(e) => {
            report.failed_phase = Some(Phase::Plan);
            report.error = Some(e.to_string());
            report.ended_at = Utc::now();
            return report;
        }
    };
    let res = async {
        let prepared = prepare(
            local_repo,
            remote,
            req,
            scratch.path(),
            &mut report,
            cancel,
            progress,
        )
        .await?;
        let vm = VmBoot {
            lan: None,
            extra_ports: &[],
            hold: None,
        };
        boot_phase(
            req,
            &prepared,
            scratch.path(),
            vm,
            &mut report,
            cancel,
            progress,
        )
        .await
    }
    .await;
    progress.set_phase("cleanup: removing the scratch files");
    let cleanup = scratch.close();
    conclude(&mut report, res, cleanup.map_err(|e| e.to_string()));
    report
}

/// A report for `req` that says nothing has happened yet.
pub fn new_report(req: &DrillRequest) -> DrillReport {
    let started_at = Utc::now();
    DrillReport {
        vm: req.vm.clone(),
        source: req.source.clone(),
        reference: req.at.clone().unwrap_or_else(|| "latest".into()),
        started_at,
        ended_at: started_at,
        outcome: DrillOutcome::Fail,
        failed_phase: None,
        error: None,
        backup_time: None,
        set: None,
        manifests: Vec::new(),
        rpo_secs: None,
        rto_secs: 0.0,
        phases: Vec::new(),
        definition: None,
        boot: None,
    }
}

/// Puts the drill's result and its cleanup's into the report: the first
/// real reason wins, the RTO is the phases' sum.
pub fn conclude(
    report: &mut DrillReport,
    res: std::result::Result<(), PhaseError>,
    cleanup: std::result::Result<(), String>,
) {
    match res {
        Ok(()) => {}
        Err((_, Error::Cancelled)) => {
            report.outcome = DrillOutcome::Cancelled;
            report.error = Some("cancelled".into());
        }
        Err((
            Phase::Plan | Phase::Fetch,
            e @ (Error::NotFound(_)
            | Error::BadRef { .. }
            | Error::AmbiguousTime { .. }
            | Error::BadName { .. }),
        )) => {
            report.outcome = DrillOutcome::NotStarted;
            report.error = Some(e.to_string());
        }
        Err((phase, e)) => {
            report.failed_phase = Some(phase);
            report.error = Some(e.to_string());
        }
    }
    if let (Err(e), None) = (&cleanup, &report.error) {
        report.failed_phase = Some(Phase::Cleanup);
        report.error = Some(format!("could not remove the scratch directory: {e}"));
        report.outcome = DrillOutcome::Fail;
    }
    // A fold from +0.0: the sum of no phases is 0, not -0.0.
    report.rto_secs = report.phases.iter().fold(0.0, |a, p| a + p.secs);
    report.ended_at = Utc::now();
}

pub(crate) fn make_scratch(parent: &Path, vm: &str) -> Result<tempfile::TempDir> {
    if !parent.is_dir() {
        return Err(Error::BadInput(format!(
            "the drill's scratch directory {} does not exist: create it or pass --scratch DIR",
            parent.display()
        )));
    }
    // Any VM's drill killed earlier: its restored disks go now.
    crate::sys::remove_abandoned(parent, "lifeboat-drill-");
    crate::sys::scratch_dir(parent, &format!("lifeboat-drill-{vm}-"))
}

pub type PhaseError = (Phase, Error);

/// A VM's backup fetched, restored and verified: ready to boot.
pub struct Prepared {
    pub def: Definition,
    pub disks: Vec<RestoredDisk>,
}

/// How a drilled VM is networked and held (a recovery plan's member).
pub struct VmBoot<'a> {
    pub lan: Option<crate::vm::qemu::Lan<'a>>,
    pub extra_ports: &'a [u16],
    pub hold: Option<&'a boot::Hold>,
}

/// Fetch, restore and verify: the phases before the boot.
pub async fn prepare(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &DrillRequest,
    scratch: &Path,
    report: &mut DrillReport,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> std::result::Result<Prepared, PhaseError> {
    let reference = reference(&req.vm, req.at.as_deref()).map_err(|e| (Phase::Plan, e))?;
    let target = scratch.join("disks");
    let rreq = RestoreRequest {
        reference: reference.clone(),
        to: target.clone(),
        format: Some(ImageFormat::Raw),
        force: false,
        ceph: Default::default(),
        name: None,
    };
    // Fetch: planning a remote restore reads its manifests and indexes;
    // then only the chunks the local repository lacks move.
    let t = Instant::now();
    progress.set_phase("fetch: planning");
    let mut set: SetRestorePlan = match remote {
        Some(r) => restore::plan_remote(r, local_repo, &rreq, true, cancel, progress)
            .await
            .map_err(|e| (Phase::Fetch, e))?,
        None => {
            let repo = Repo::open(local_repo).map_err(|e| (Phase::Plan, e))?;
            restore::plan_local(&repo, &rreq).map_err(|e| (Phase::Plan, e))?
        }
    };
    let first = set.picked.first().map(|(_, m)| m.clone());
    if let Some(m) = &first {
        report.backup_time = Some(m.created_at);
        report.set = Some(m.set.clone());
        report.rpo_secs = Some((report.started_at - m.created_at).num_seconds().max(0));
    }
    report.manifests = set.picked.iter().map(|(k, _)| k.id.to_hex()).collect();
    if !set.picked.iter().any(|(_, m)| m.volume.role == Role::Root) {
        set.release().await;
        return Err((Phase::Plan,
            Error::BadInput(format!(
                "backup {reference} has no root volume: there is nothing to boot (mark the boot disk role = \"root\" in the config)"
            )),
        ));
    }
    let fetch_bytes = set
        .fetch
        .as_ref()
        .map(|f| f.data_bytes_to_send)
        .unwrap_or(0);
    let total: u64 = set.volumes.iter().map(|v| v.image_size).sum();
    progress.set_job_total(fetch_bytes + 2 * total);
    if let Some(r) = remote {
        progress.set_phase("fetch: chunks the local repository lacks");
        if let Err(e) = restore::fetch(&mut set, r, local_repo, cancel, progress).await {
            // The plan's lock on the local repository goes now, not in
            // the background of a process that may exit first.
            set.release().await;
            return Err((Phase::Fetch, e));
        }
    }
    report.phases.push(PhaseTime {
        name: Phase::Fetch,
        secs: t.elapsed().as_secs_f64(),
        bytes: fetch_bytes,
    });

    // The definition: the backup's, else the local config's, else a plain
    // one (root disk first).
    let picked = set.picked.clone();
    let defined = Repo::open(local_repo).and_then(|repo| {
        crate::vm::restore::definition_of(&repo, &picked, req.local_definition.clone())
            .map(|d| (repo, d))
    });
    let (repo, (def, from)) = match defined {
        Ok(x) => x,
        Err(e) => {
            set.release().await;
            return Err((Phase::Restore, e));
        }
    };
    report.definition = Some(from.into());

    // Restore every volume (raw: nothing to convert before booting).
    let t = Instant::now();
    progress.set_phase("restore");
    let outcomes = restore::execute(set, remote, local_repo, cancel, progress)
        .await
        .map_err(|e| (Phase::Restore, e))?;
    report.phases.push(PhaseTime {
        name: Phase::Restore,
        secs: t.elapsed().as_secs_f64(),
        bytes: outcomes.iter().map(|o| o.bytes_written).sum(),
    });

    // Verify: each restored image hashes to its backup's digest.
    let t = Instant::now();
    let mut read = 0;
    for o in &outcomes {
        progress.set_phase(&format!(
            "verify: {}",
            o.target.file_name().and_then(|n| n.to_str()).unwrap_or("")
        ));
        let (path, chunk, c, p) = (
            o.target.clone(),
            repo.chunk_size(),
            cancel.clone(),
            progress.clone(),
        );
        let digest = tokio::task::spawn_blocking(move || -> Result<crate::format::Id> {
            let mut src = crate::source::open(&path, crate::source::FormatChoice::Raw)?;
            let scan =
                crate::backup::pipeline::scan(src.reader.as_mut(), chunk, None, None, &c, &p)?;
            Ok(scan.index.digest())
        })
        .await
        .map_err(|e| (Phase::Verify, Error::Internal(format!("verify task: {e}"))))?
        .map_err(|e| (Phase::Verify, e))?;
        if digest != o.index {
            return Err((
                Phase::Verify,
                Error::corrupt(
                    "restored image",
                    o.index,
                    format!(
                        "{} hashes to {}, not to its backup's digest",
                        o.target.display(),
                        digest.short()
                    ),
                ),
            ));
        }
        read += o.image_size;
    }
    report.phases.push(PhaseTime {
        name: Phase::Verify,
        secs: t.elapsed().as_secs_f64(),
        bytes: read,
    });

    let disks: Vec<RestoredDisk> = outcomes
        .iter()
        .zip(&picked)
        .map(|(o, (_, m))| RestoredDisk {
            volume: m.volume.name.clone(),
            path: o.target.clone(),
            format: o.format,
        })
        .collect();
    Ok(Prepared { def, disks })
}

/// The checks a drilled VM must pass: the local config's, else the ones
/// stored with its backup.
pub fn checks_of(req: &DrillRequest, p: &Prepared) -> crate::vm::BootChecks {
    req.checks
        .clone()
        .or_else(|| p.def.checks.clone())
        .unwrap_or_default()
}

/// Boot and application checks.
#[allow(clippy::too_many_arguments)]
pub async fn boot_phase(
    req: &DrillRequest,
    prepared: &Prepared,
    scratch: &Path,
    vm: VmBoot<'_>,
    report: &mut DrillReport,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> std::result::Result<(), PhaseError> {
    let checks = checks_of(req, prepared);
    let command = req
        .command
        .as_ref()
        .map(|(c, f)| (c.as_slice(), f.as_slice()));
    let breq = boot::BootRequest {
        def: &prepared.def,
        disks: &prepared.disks,
        checks: &checks,
        command,
        accel: req.accel,
        scratch,
        lan: vm.lan,
        extra_ports: vm.extra_ports,
        hold: vm.hold,
    };
    let b = boot::run(&breq, cancel, progress)
        .await
        .map_err(|e| (Phase::Boot, e))?;
    let failed_phase = b.failed_phase;
    let failure = b.failure.clone();
    report.phases.push(PhaseTime {
        name: Phase::Boot,
        secs: b.boot_secs,
        bytes: 0,
    });
    if !matches!(failed_phase, Some(Phase::Boot | Phase::Start)) {
        report.phases.push(PhaseTime {
            name: Phase::Checks,
            secs: b.checks_secs,
            bytes: 0,
        });
    }
    report.boot = Some(b);
    match (failed_phase, failure) {
        (None, _) => {
            report.outcome = DrillOutcome::Pass;
            Ok(())
        }
        (Some(p), why) => {
            let phase = if p == Phase::Checks {
                Phase::Checks
            } else {
                Phase::Boot
            };
            Err((
                phase,
                Error::BadInput(why.unwrap_or_else(|| "failed".into())),
            ))
        }
    }
}

/// The report as lines for a terminal or a job log (everything from the
/// repository or the guest is escaped).
pub fn describe(r: &DrillReport) -> Vec<String> {
    use crate::text::escape;
    let mut out = vec![format!(
        "drill {} from {}: {}{}",
        escape(&r.vm),
        escape(&r.source),
        r.outcome,
        r.failed_phase
            .as_ref()
            .map(|p| format!(" in {p}"))
            .unwrap_or_default()
    )];
    if let Some(e) = &r.error {
        out.push(format!("  why: {}", escape(e)));
    }
    if let (Some(t), Some(set)) = (r.backup_time, &r.set) {
        out.push(format!(
            "  backup: set {} of {} (RPO {})",
            &set[..set.len().min(12)],
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            age(r.rpo_secs.unwrap_or(0))
        ));
    }
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|p| format!("{} {:.1}s", p.name, p.secs))
        .collect();
    if r.outcome == DrillOutcome::NotStarted {
        return out;
    }
    out.push(format!("  RTO {:.1}s: {}", r.rto_secs, phases.join(", ")));
    if let Some(b) = &r.boot {
        if b.failed_phase == Some(Phase::Start) {
            out.push(format!("  QEMU did not start ({})", b.accel));
        } else {
            out.push(format!("  booted under {}", b.accel));
        }
        for n in &b.notes {
            out.push(format!("  note: {}", escape(n)));
        }
        for c in &b.checks {
            out.push(format!(
                "  check {}: {} ({}, at {:.1}s)",
                c.name,
                if c.ok { "ok" } else { "FAILED" },
                escape(&c.detail),
                c.secs
            ));
        }
        if !r.passed() && !b.serial_tail.is_empty() {
            out.push("  serial console (last lines):".into());
            out.extend(b.serial_tail.iter().map(|l| format!("    | {l}")));
        }
        if !r.passed() && !b.firmware_tail.is_empty() {
            out.push("  firmware log (last lines):".into());
            out.extend(
                b.firmware_tail
                    .iter()
                    .skip(b.firmware_tail.len().saturating_sub(5))
                    .map(|l| format!("    | {l}")),
            );
        }
    }
    out
}

/// An age as the largest two units: 3d 4h, 2h 5m, 40s.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(reference("web", None).unwrap(), "web@latest");
        assert_eq!(reference("web", Some("@~1")).unwrap(), "web@~1");
        assert_eq!(reference("web", Some("web@latest")).unwrap(), "web@latest");
        assert!(reference("web", Some("db@latest")).is_err());
        assert!(reference("web", Some("web/root@latest")).is_err());
    }
}
