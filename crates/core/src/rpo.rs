//! Recovery-point status per VM: the newest backup's age against its
//! policy's thresholds, the newest verify of it, the last policy run and
//! the next slot. `status --rpo`, `/metrics` and the console read it.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::daemon::runs::{DaemonState, RunOutcome, RunRecord};
use crate::daemon::schedule::{self, Next};
use crate::format::{Id, Manifest, ManifestKey};
use crate::repo::state::VerifyMark;

/// Thresholds for a VM without a policy (the console's defaults).
pub const DEFAULT_LATE_HOURS: i64 = 26;
pub const DEFAULT_STALE_HOURS: i64 = 72;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RpoState {
    Ok,
    Late,
    Stale,
    LastJobFailed,
    VerifyFailed,
    NeverBackedUp,
}

impl RpoState {
    pub const ALL: [RpoState; 6] = [
        RpoState::Ok,
        RpoState::Late,
        RpoState::Stale,
        RpoState::LastJobFailed,
        RpoState::VerifyFailed,
        RpoState::NeverBackedUp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RpoState::Ok => "ok",
            RpoState::Late => "late",
            RpoState::Stale => "stale",
            RpoState::LastJobFailed => "last job failed",
            RpoState::VerifyFailed => "verify failed",
            RpoState::NeverBackedUp => "never backed up",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifySummary {
    pub at: DateTime<Utc>,
    pub deep: bool,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub started_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    pub seconds: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmRpo {
    pub vm: String,
    pub policy: Option<String>,
    pub newest: Option<DateTime<Utc>>,
    pub age_seconds: Option<i64>,
    pub late_after_seconds: i64,
    pub stale_after_seconds: i64,
    /// The newest verify covering the newest backup set (the worst of its
    /// volumes' marks).
    pub verify: Option<VerifySummary>,
    pub last_run: Option<LastRun>,
    pub next_run: Option<DateTime<Utc>>,
    /// What each remote holds of the VM (filled by the caller that asked
    /// the remotes).
    pub remotes: BTreeMap<String, RemoteSight>,
    /// What the last policy run found on each of its push remotes: sets
    /// still owed there, and refused (`state/offsite.json`).
    pub offsite: BTreeMap<String, crate::daemon::offsite::OffsiteRecord>,
    pub state: RpoState,
}

/// One remote's answer about one VM: an unreachable remote is never shown
/// like an empty one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RemoteSight {
    Holds {
        newest: DateTime<Utc>,
    },
    /// It answered and holds no backup of the VM.
    Empty,
    Unreachable {
        reason: String,
    },
}

/// What a newest backup's age (seconds) makes of a volume or VM against
/// its thresholds: one rule for the console, `status --rpo` and
/// `/metrics` (late from `late` on, stale from `stale` on).
pub fn by_age(age_seconds: i64, late: Duration, stale: Duration) -> RpoState {
    if age_seconds > stale.num_seconds() {
        RpoState::Stale
    } else if age_seconds > late.num_seconds() {
        RpoState::Late
    } else {
        RpoState::Ok
    }
}

/// A VM's thresholds (late, stale): its policy's, or the defaults.
pub fn thresholds(config: &Config, vm: &str) -> (Duration, Duration) {
    config
        .policy_for(vm)
        .map(|p| (p.rpo_late, p.rpo_stale))
        .unwrap_or((
            Duration::hours(DEFAULT_LATE_HOURS),
            Duration::hours(DEFAULT_STALE_HOURS),
        ))
}

/// Each volume's newest backup, `(vm, volume)` → (time, id), in one pass.
pub fn newest_per_volume<M: Borrow<Manifest>>(
    backups: &[(ManifestKey, M)],
) -> BTreeMap<(String, String), (DateTime<Utc>, Id)> {
    let mut out: BTreeMap<(String, String), (DateTime<Utc>, Id)> = BTreeMap::new();
    for (k, m) in backups {
        let t = m.borrow().created_at;
        let e = out
            .entry((k.vm.clone(), k.volume.clone()))
            .or_insert((t, k.id));
        if t > e.0 {
            *e = (t, k.id);
        }
    }
    out
}

/// The volumes each VM's recovery point covers: the config's volumes of a
/// configured VM (so a volume never backed up counts), else those of the
/// VM's newest set (a volume dropped from a VM long ago does not keep it
/// stale forever).
pub fn current_volumes<M: Borrow<Manifest>>(
    configured: &BTreeMap<String, Vec<String>>,
    backups: &[(ManifestKey, M)],
) -> BTreeMap<String, Vec<String>> {
    let mut newest_set: BTreeMap<&str, (DateTime<Utc>, &str)> = BTreeMap::new();
    for (k, m) in backups {
        let m = m.borrow();
        let e = newest_set
            .entry(k.vm.as_str())
            .or_insert((m.created_at, m.set.as_str()));
        if m.created_at > e.0 {
            *e = (m.created_at, m.set.as_str());
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = configured
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(vm, v)| (vm.clone(), v.clone()))
        .collect();
    for (k, m) in backups {
        if configured.get(&k.vm).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        if newest_set.get(k.vm.as_str()).map(|e| e.1) == Some(m.borrow().set.as_str()) {
            let vols = out.entry(k.vm.clone()).or_default();
            if !vols.contains(&k.volume) {
                vols.push(k.volume.clone());
            }
        }
    }
    out
}

/// The one rule for a recovery point, shared by the console, `status
/// --rpo` and `/metrics`: `points` are the newest backups of the volumes
/// it covers (None: that volume has none). The point is the oldest of
/// them; never backed up when any is missing; then a failed verify of any
/// of them, then a failed last run, then the age.
pub fn judge(
    points: &[Option<(DateTime<Utc>, Id)>],
    verify: &BTreeMap<Id, VerifyMark>,
    last_run_failed: bool,
    now: DateTime<Utc>,
    late: Duration,
    stale: Duration,
) -> (Option<DateTime<Utc>>, RpoState) {
    let point = match points.iter().copied().collect::<Option<Vec<_>>>() {
        Some(ps) if !ps.is_empty() => ps.iter().map(|p| p.0).min(),
        _ => None,
    };
    let Some(t) = point else {
        return (None, RpoState::NeverBackedUp);
    };
    let state = if points
        .iter()
        .flatten()
        .any(|(_, id)| verify.get(id).is_some_and(|m| !m.ok))
    {
        RpoState::VerifyFailed
    } else if last_run_failed {
        RpoState::LastJobFailed
    } else {
        by_age((now - t).num_seconds(), late, stale)
    };
    (Some(t), state)
}

/// `backups` holds manifests or shared ones (the console's `Arc`s).
pub fn assess<M: Borrow<Manifest>>(
    config: &Config,
    backups: &[(ManifestKey, M)],
    verify: &BTreeMap<Id, VerifyMark>,
    runs: &[RunRecord],
    daemon: &DaemonState,
    now: DateTime<Utc>,
) -> Vec<VmRpo> {
    let mut vms: Vec<String> = config
        .vms
        .iter()
        .map(|v| v.name.get_ref().clone())
        .collect();
    for (k, _) in backups {
        if !vms.contains(&k.vm) {
            vms.push(k.vm.clone());
        }
    }
    let configured: BTreeMap<String, Vec<String>> = config
        .vms
        .iter()
        .map(|v| {
            (
                v.name.get_ref().clone(),
                v.volumes
                    .iter()
                    .map(|vol| vol.name.get_ref().clone())
                    .collect(),
            )
        })
        .collect();
    let newest = newest_per_volume(backups);
    let covered = current_volumes(&configured, backups);
    vms.into_iter()
        .map(|vm| {
            let policy = config.policy_for(&vm);
            let (late, stale) = thresholds(config, &vm);
            let points: Vec<Option<(DateTime<Utc>, Id)>> = covered
                .get(&vm)
                .map(|vols| {
                    vols.iter()
                        .map(|v| newest.get(&(vm.clone(), v.clone())).copied())
                        .collect()
                })
                .unwrap_or_default();
            let marks: Vec<&VerifyMark> = points
                .iter()
                .flatten()
                .filter_map(|(_, id)| verify.get(id))
                .collect();
            let verify_summary =
                marks
                    .iter()
                    .max_by_key(|m| (!m.ok, m.at))
                    .map(|m| VerifySummary {
                        at: m.at,
                        deep: m.deep,
                        ok: marks.iter().all(|m| m.ok),
                    });
            let last_run = runs.iter().rev().find(|r| r.vm == vm).map(|r| LastRun {
                started_at: r.started_at,
                outcome: r.outcome,
                seconds: r.seconds,
                error: r.error.clone(),
            });
            let failed = last_run
                .as_ref()
                .is_some_and(|r| r.outcome == RunOutcome::Failed);
            let (point, state) = judge(&points, verify, failed, now, late, stale);
            // The daemon schedules from the newest backup of any volume.
            let latest = newest
                .range((vm.clone(), String::new())..)
                .take_while(|((v, _), _)| *v == vm)
                .map(|(_, (t, _))| *t)
                .max();
            let next_run = policy.and_then(|p| {
                match schedule::next(p, daemon.last_slot.get(&vm).copied(), latest, now) {
                    Next::Due { .. } => Some(now),
                    Next::At(t) => Some(t),
                    Next::Never => None,
                }
            });
            VmRpo {
                vm,
                policy: policy.map(|p| p.name.clone()),
                newest: point,
                age_seconds: point.map(|t| (now - t).num_seconds()),
                late_after_seconds: late.num_seconds(),
                stale_after_seconds: stale.num_seconds(),
                verify: verify_summary,
                last_run,
                next_run,
                remotes: BTreeMap::new(),
                offsite: BTreeMap::new(),
                state,
            }
        })
        .collect()
}

/// Everything the faces show about a local repository's state besides its
/// backups, read in one call: the console, `status --rpo` and `/metrics`
/// all take it from here.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub verify: BTreeMap<Id, VerifyMark>,
    pub runs: Vec<RunRecord>,
    pub daemon: DaemonState,
    pub offsite: crate::daemon::offsite::OffsiteState,
    /// The last completed drill of each VM.
    pub drills: BTreeMap<String, crate::drill::DrillReport>,
    /// Each VM's recovery point, off-site records included.
    pub vms: Vec<VmRpo>,
    /// Records that could not be read (each is then taken as empty).
    pub problems: Vec<String>,
}

/// Reads the records of the repository at `root` and assesses `backups`
/// (its backups, as the caller loaded them) against them.
pub fn snapshot<M: Borrow<Manifest>>(
    config: &Config,
    root: &std::path::Path,
    backups: &[(ManifestKey, M)],
    now: DateTime<Utc>,
) -> StatusSnapshot {
    fn or_empty<T: Default>(problems: &mut Vec<String>, what: &str, r: crate::Result<T>) -> T {
        r.unwrap_or_else(|e| {
            problems.push(format!("{what}: {e}"));
            T::default()
        })
    }
    let mut p = Vec::new();
    let verify = or_empty(
        &mut p,
        "verify record",
        crate::repo::state::load_verify(root),
    );
    let runs = or_empty(&mut p, "run history", crate::daemon::runs::load_runs(root));
    let daemon = or_empty(
        &mut p,
        "daemon state",
        crate::daemon::runs::load_state(root),
    );
    let offsite = or_empty(
        &mut p,
        "off-site record",
        crate::daemon::offsite::load(root),
    );
    let drills = or_empty(
        &mut p,
        "drill history",
        crate::drill::history::last_per_vm(root),
    );
    let problems = p;
    let mut vms = assess(config, backups, &verify, &runs, &daemon, now);
    for v in &mut vms {
        if let Some(o) = offsite.get(&v.vm) {
            v.offsite = o.clone();
        }
    }
    StatusSnapshot {
        verify,
        runs,
        daemon,
        offsite,
        drills,
        vms,
        problems,
    }
}

/// Loads a local repository's backups and assesses them (`status --rpo`).
pub fn assess_repo(
    config: &Config,
    root: &std::path::Path,
    now: DateTime<Utc>,
) -> crate::Result<Vec<VmRpo>> {
    let backups = crate::repo::Repo::open(root)?.load_all()?;
    Ok(snapshot(config, root, &backups, now).vms)
}
