//! Recovery-point status per VM: the newest backup's age against its
//! policy's thresholds, the newest verify of it, the last policy run and
//! the next slot. `status --rpo`, `/metrics` and the console read it.

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

/// `backups` holds manifests or shared ones (the console's `Arc`s).
pub fn assess<M: std::borrow::Borrow<Manifest>>(
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
    vms.into_iter()
        .map(|vm| {
            let policy = config.policy_for(&vm);
            let (late, stale) = thresholds(config, &vm);
            let mine: Vec<(&ManifestKey, &Manifest)> = backups
                .iter()
                .filter(|(k, _)| k.vm == vm)
                .map(|(k, m)| (k, m.borrow()))
                .collect();
            let newest = mine.iter().map(|(_, m)| m.created_at).max();
            let newest_set = mine
                .iter()
                .max_by_key(|(_, m)| m.created_at)
                .map(|(_, m)| m.set.clone());
            let marks: Vec<&VerifyMark> = mine
                .iter()
                .filter(|(_, m)| Some(&m.set) == newest_set.as_ref())
                .filter_map(|(k, _)| verify.get(&k.id))
                .collect();
            let verify = marks
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
            let next_run = policy.and_then(|p| {
                match schedule::next(p, daemon.last_slot.get(&vm).copied(), newest, now) {
                    Next::Due { .. } => Some(now),
                    Next::At(t) => Some(t),
                    Next::Never => None,
                }
            });
            let age = newest.map(|t| (now - t).num_seconds());
            let state = match (newest, age) {
                (None, _) => RpoState::NeverBackedUp,
                _ if verify.as_ref().is_some_and(|v| !v.ok) => RpoState::VerifyFailed,
                _ if last_run
                    .as_ref()
                    .is_some_and(|r| r.outcome == RunOutcome::Failed) =>
                {
                    RpoState::LastJobFailed
                }
                (_, Some(a)) => by_age(a, late, stale),
                (_, None) => RpoState::Ok,
            };
            VmRpo {
                vm,
                policy: policy.map(|p| p.name.clone()),
                newest,
                age_seconds: age,
                late_after_seconds: late.num_seconds(),
                stale_after_seconds: stale.num_seconds(),
                verify,
                last_run,
                next_run,
                remotes: BTreeMap::new(),
                offsite: BTreeMap::new(),
                state,
            }
        })
        .collect()
}

/// Loads what `assess` needs from a local repository.
pub fn assess_repo(
    config: &Config,
    root: &std::path::Path,
    now: DateTime<Utc>,
) -> crate::Result<Vec<VmRpo>> {
    let repo = crate::repo::Repo::open(root)?;
    let backups = repo.load_all()?;
    let verify = crate::repo::state::load_verify(root).unwrap_or_default();
    let runs = crate::daemon::runs::load_runs(root).unwrap_or_default();
    let daemon = crate::daemon::runs::load_state(root).unwrap_or_default();
    let offsite = crate::daemon::offsite::load(root).unwrap_or_default();
    let mut out = assess(config, &backups, &verify, &runs, &daemon, now);
    for v in &mut out {
        if let Some(o) = offsite.get(&v.vm) {
            v.offsite = o.clone();
        }
    }
    Ok(out)
}
