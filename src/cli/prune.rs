//! `lifeboat prune`: applies a retention to the local repository or a
//! remote, whole backup sets at a time; `--dry-run` is the simulator,
//! listing every set with the rule that keeps it, or "removed".

use lifeboat_core::daemon::prune::PruneRequest;
use lifeboat_core::jobs::CancellationToken;
use lifeboat_core::retention::{self, Rules};

use super::{print_json, Ctx, Outcome};
use crate::output::table;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// VMs to prune (default: every VM).
    pub vms: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: usize,
    /// Keep every set newer than this (14d, 36h, 2w).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Prune this remote (name or URL; a server needs an admin token).
    #[arg(long, value_name = "REMOTE")]
    pub remote: Option<String>,
    /// List what would be kept (and by which rule) and what removed;
    /// remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn prune(ctx: &Ctx, a: PruneArgs) -> anyhow::Result<Outcome> {
    let rules = Rules {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a
            .keep_within
            .as_deref()
            .map(retention::parse_within)
            .transpose()?,
    };
    let from_flags = rules != Rules::default();
    let (store, backups) = ctx.backups_of(a.remote.as_deref()).await?;
    let req = PruneRequest {
        vms: a.vms.clone(),
        rules: from_flags.then_some(rules.clone()),
        remote: a.remote.clone(),
    };
    let plan = lifeboat_core::daemon::prune::plan(&ctx.config, &store, &backups, &req).await?;
    let done = if a.dry_run {
        None
    } else {
        Some(
            plan.execute(store.as_ref(), &CancellationToken::new())
                .await?,
        )
    };
    if ctx.json {
        print_json(&serde_json::json!({
            "repository": plan.repository,
            "dry_run": a.dry_run,
            "rules": if from_flags { serde_json::to_value(&rules)? } else { serde_json::json!("per VM policy") },
            "sets": plan.sets,
            "removed_sets": plan.removed_sets(),
            "removed_backups": done.map_or(plan.removed_backups(), |d| d.backups),
        }))?;
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = plan
        .sets
        .iter()
        .map(|d| {
            vec![
                d.vm.clone(),
                d.local_time.clone(),
                d.manifests.len().to_string(),
                if d.keep {
                    d.reasons.join(", ")
                } else {
                    "removed".into()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["VM", "SET TIME", "VOLUMES", "KEPT BY"], &rows)
    );
    match done {
        None => println!("dry run: {}", plan.summary(false)),
        Some(_) => println!("{}", plan.summary(true)),
    }
    Ok(Outcome::Ok)
}
