//! `lifeboat drill` and `lifeboat drills`: restore drills and their history.

use std::path::PathBuf;

use lifeboat_core::drill::{self, DrillOutcome, DrillOverrides, DrillReport};

use super::progress::run_job_async;
use super::{print_json, Ctx, Outcome};

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    #[arg(required_unless_present = "plan")]
    pub vm: Option<String>,
    /// Drill a recovery plan (`[plan.NAME]`): all its VMs from one point,
    /// booted in order on a private network, with the plan's checks.
    #[arg(long, value_name = "NAME", conflicts_with = "vm")]
    pub plan: Option<String>,
    /// The repository to drill from: a remote (name or URL) or "local".
    /// Default: the VM's `[vm.drill] from`, else its policy's first push
    /// target, else the only remote, else local.
    #[arg(long, value_name = "REMOTE")]
    pub from: Option<String>,
    /// The backup set: latest (default), @~N (N sets back), or a time
    /// (@2026-11-20T00:00:00Z: the newest set at or before it). With
    /// --plan: a time; each VM's newest set at or before it.
    #[arg(long, value_name = "REF")]
    pub at: Option<String>,
    /// tcg (default), kvm, or auto (KVM when it works, else TCG).
    #[arg(long, value_name = "ACCEL")]
    pub accel: Option<String>,
    /// Where restored images go while the drill runs (default: $TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Seconds from power-on for every check to pass (over the VM's own).
    #[arg(long, value_name = "SECS")]
    pub boot_timeout: Option<u64>,
}

pub async fn drill(ctx: &Ctx, a: DrillArgs) -> anyhow::Result<Outcome> {
    let overrides = DrillOverrides {
        from: a.from,
        at: a.at,
        accel: a.accel.as_deref().map(str::parse).transpose()?,
        scratch: a.scratch,
        timeout_secs: a.boot_timeout,
    };
    if let Some(plan) = &a.plan {
        return super::plan_cmd::drill(ctx, plan, overrides).await;
    }
    let vm = a.vm.unwrap_or_default();
    let req = lifeboat_core::config::requests::drill_request(&ctx.config, &vm, &overrides)?;
    let remote = match req.source.as_str() {
        "local" => None,
        name => Some(ctx.remote(name)?),
    };
    let local = ctx.repo_path();
    let store = remote.as_ref().map(|(_, s)| s.clone());
    let r = req.clone();
    let report: DrillReport = run_job_async("drill", ctx.json, move |c, p| async move {
        Ok(drill::run_recorded(&local, store.as_deref(), &r, &c, &p).await)
    })
    .await?;
    if report.outcome == DrillOutcome::NotStarted {
        anyhow::bail!(
            "the drill of {} could not start: {}",
            report.vm,
            report.error.as_deref().unwrap_or("no reason given")
        );
    }
    if ctx.json {
        print_json(&report)?;
    } else {
        for line in drill::describe(&report) {
            println!("{line}");
        }
    }
    Ok(match report.outcome {
        DrillOutcome::Pass => Outcome::Ok,
        DrillOutcome::Fail => Outcome::DrillFailed,
        DrillOutcome::Cancelled => Outcome::Cancelled,
        DrillOutcome::NotStarted => Outcome::Ok,
    })
}

/// The newest `last` reports `keep` takes: printed as JSON (then None),
/// or returned for lines (`empty` said when there are none).
pub fn newest<'a, T: serde::Serialize>(
    ctx: &Ctx,
    all: &'a [T],
    keep: impl Fn(&T) -> bool,
    last: usize,
    empty: &str,
) -> anyhow::Result<Option<Vec<&'a T>>> {
    let mut mine: Vec<&T> = all.iter().filter(|r| keep(r)).collect();
    let shown = mine.split_off(mine.len().saturating_sub(last));
    if ctx.json {
        print_json(&shown)?;
        return Ok(None);
    }
    if shown.is_empty() {
        println!("{empty}");
    }
    Ok(Some(shown))
}

pub fn history(ctx: &Ctx, vm: Option<&str>, last: usize) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let all = drill::history::load(repo.root())?;
    let Some(shown) = newest(
        ctx,
        &all,
        |r: &DrillReport| vm.is_none_or(|v| r.vm == v),
        last,
        "no drills yet: run `lifeboat drill VM`",
    )?
    else {
        return Ok(Outcome::Ok);
    };
    for r in shown {
        println!(
            "{}  {:<12} {:<9} from {:<10} RTO {:>6.1}s  RPO {:<8} backup {}{}",
            r.started_at.format("%Y-%m-%d %H:%M"),
            lifeboat_core::text::escape(&r.vm),
            r.outcome.to_string(),
            lifeboat_core::text::escape(&r.source),
            r.rto_secs,
            r.rpo_secs.map(drill::age).unwrap_or_else(|| "-".into()),
            r.backup_time
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "-".into()),
            r.failed_phase
                .as_ref()
                .map(|p| format!(
                    "  failed in {p}: {}",
                    lifeboat_core::text::escape(r.error.as_deref().unwrap_or(""))
                ))
                .unwrap_or_default()
        );
    }
    Ok(Outcome::Ok)
}
