//! What a drill is asked to do and what it reports (kept in the history,
//! shown by the CLI, console and metrics).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::vm::boot::BootReport;
use crate::vm::qemu::Accel;
use crate::vm::{BootChecks, Definition};

pub use crate::vm::phase::Phase;

/// Phases whose times add up to the RTO, in order, as their words (the
/// console matches progress phases against them).
pub const PHASES: [&str; 5] = [
    Phase::TIMED[0].as_str(),
    Phase::TIMED[1].as_str(),
    Phase::TIMED[2].as_str(),
    Phase::TIMED[3].as_str(),
    Phase::TIMED[4].as_str(),
];

#[derive(Debug, Clone)]
pub struct DrillRequest {
    pub vm: String,
    /// A set: `VM@latest` (default), `VM@~1`, `@2026-11-20T00:00:00Z`.
    pub at: Option<String>,
    /// "local" or the remote's name (for the report).
    pub source: String,
    pub accel: Accel,
    /// The directory under which a private scratch directory is made.
    pub scratch: PathBuf,
    /// The local config's checks, over the ones stored with the backup.
    pub checks: Option<BootChecks>,
    /// A host command check (local config only) and its forwarded ports.
    pub command: Option<(Vec<String>, Vec<u16>)>,
    /// The local config's definition, for backups that carry none.
    pub local_definition: Option<Definition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillOutcome {
    Pass,
    Fail,
    Cancelled,
    /// The drill could not start: no such VM, or no backup matches the
    /// reference. The admin's input, not the backup, is wrong: not a FAIL,
    /// and not kept in the history.
    NotStarted,
}

impl std::fmt::Display for DrillOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DrillOutcome::Pass => "PASS",
            DrillOutcome::Fail => "FAIL",
            DrillOutcome::Cancelled => "CANCELLED",
            DrillOutcome::NotStarted => "COULD NOT START",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub name: Phase,
    pub secs: f64,
    /// Bytes moved (fetch), written (restore) or read (verify).
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub vm: String,
    pub source: String,
    pub reference: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub outcome: DrillOutcome,
    pub failed_phase: Option<Phase>,
    pub error: Option<String>,
    /// The backup drilled: its time, set and manifests.
    pub backup_time: Option<DateTime<Utc>>,
    pub set: Option<String>,
    pub manifests: Vec<String>,
    /// Age of the backup when the drill started.
    pub rpo_secs: Option<i64>,
    /// The phases' sum: how long recovering this VM took.
    pub rto_secs: f64,
    pub phases: Vec<PhaseTime>,
    /// Where the VM's definition came from: backup, config or fallback.
    pub definition: Option<String>,
    pub boot: Option<BootReport>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.outcome == DrillOutcome::Pass
    }
}
