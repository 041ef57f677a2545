//! What a plan drill reports (kept in the local repository's
//! `state/plan-drills.jsonl`, shown by the CLI, the console and metrics).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::point::Point;
use crate::drill::{DrillOutcome, DrillReport, Phase};
use crate::error::Result;
use crate::repo::state::{append_jsonl, load_jsonl};
use crate::vm::boot::CheckResult;

pub const MAX_PLAN_DRILLS: usize = 500;
const FILE: &str = "plan-drills.jsonl";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    pub plan: String,
    pub source: String,
    /// The time asked for (None: the newest backups).
    pub at: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub outcome: DrillOutcome,
    /// Where it failed first: which VM (none: the plan's own checks or
    /// network) and which phase.
    pub failed_vm: Option<String>,
    pub failed_phase: Option<Phase>,
    pub error: Option<String>,
    pub point: Option<Point>,
    /// The service's RPO: its oldest member's backup's age at the start.
    pub rpo_secs: Option<i64>,
    /// First fetch to last check, wall clock (members run side by side).
    pub rto_secs: f64,
    /// Each VM's own drill, in start order.
    pub members: Vec<DrillReport>,
    /// Which VM holds each planned address on the private network.
    pub network: Vec<AddressCheck>,
    /// The plan's own checks.
    pub checks: Vec<CheckResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddressCheck {
    pub vm: String,
    pub address: String,
    pub ok: bool,
    pub detail: String,
}

impl PlanReport {
    pub fn passed(&self) -> bool {
        self.outcome == DrillOutcome::Pass
    }
}

pub fn record(root: &Path, report: &PlanReport) -> Result<()> {
    append_jsonl(root, FILE, report.clone(), MAX_PLAN_DRILLS)
}

/// Every kept report, oldest first.
pub fn load(root: &Path) -> Result<Vec<PlanReport>> {
    Ok(load_jsonl(root, FILE)?.0)
}

/// The newest completed drill of each plan.
pub fn last_per_plan(root: &Path) -> Result<BTreeMap<String, PlanReport>> {
    let mut out = BTreeMap::new();
    for r in load(root)? {
        if matches!(r.outcome, DrillOutcome::Pass | DrillOutcome::Fail) {
            out.insert(r.plan.clone(), r);
        }
    }
    Ok(out)
}

/// The report as lines for a terminal or a job log (everything from a
/// repository or a guest is escaped).
pub fn describe(r: &PlanReport) -> Vec<String> {
    use crate::drill::age;
    use crate::text::escape;
    let mut out = vec![format!(
        "plan drill {} from {}: {}{}",
        escape(&r.plan),
        escape(&r.source),
        r.outcome,
        match (&r.failed_vm, &r.failed_phase) {
            (Some(vm), Some(p)) => format!(" ({} in {p})", escape(vm)),
            (None, Some(p)) => format!(" (in {p})"),
            _ => String::new(),
        }
    )];
    if let Some(e) = &r.error {
        out.push(format!("  why: {}", escape(e)));
    }
    if let Some(p) = &r.point {
        out.push(format!(
            "  point{}: RPO {} (oldest member), spread {} between the members' backups",
            r.at.as_deref()
                .map(|a| format!(" at or before {}", escape(a)))
                .unwrap_or_default(),
            age(r.rpo_secs.unwrap_or(0)),
            age(p.spread_secs)
        ));
        for pk in &p.picks {
            out.push(format!(
                "    {}: set {} of {}",
                escape(&pk.vm),
                escape(&pk.set[..pk.set.len().min(12)]),
                pk.time.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
    }
    if r.outcome == DrillOutcome::NotStarted {
        return out;
    }
    out.push(format!(
        "  service RTO {:.1}s (first fetch to last check)",
        r.rto_secs
    ));
    for m in &r.members {
        let phases: Vec<String> = m
            .phases
            .iter()
            .map(|p| format!("{} {:.1}s", p.name, p.secs))
            .collect();
        out.push(format!(
            "  {}: {}{} {}",
            escape(&m.vm),
            m.outcome,
            m.failed_phase
                .map(|p| format!(" in {p}"))
                .unwrap_or_default(),
            if phases.is_empty() {
                String::new()
            } else {
                format!("({})", phases.join(", "))
            }
        ));
        if !m.passed() {
            if let Some(e) = &m.error {
                out.push(format!("    why: {}", escape(e)));
            }
        }
        if let Some(b) = &m.boot {
            for c in &b.checks {
                out.push(format!(
                    "    check {}: {} ({})",
                    c.name,
                    if c.ok { "ok" } else { "FAILED" },
                    escape(&c.detail)
                ));
            }
            if !m.passed() && !b.serial_tail.is_empty() {
                out.push("    serial console (last lines):".into());
                out.extend(
                    b.serial_tail
                        .iter()
                        .skip(b.serial_tail.len().saturating_sub(8))
                        .map(|l| format!("      | {l}")),
                );
            }
        }
    }
    for a in &r.network {
        out.push(format!(
            "  network: {} at {}: {} ({})",
            escape(&a.vm),
            a.address,
            if a.ok { "ok" } else { "FAILED" },
            escape(&a.detail)
        ));
    }
    for c in &r.checks {
        out.push(format!(
            "  plan check {}: {} ({}, at {:.1}s)",
            c.name,
            if c.ok { "ok" } else { "FAILED" },
            escape(&c.detail),
            c.secs
        ));
    }
    out
}
