//! `lifeboat prune`: applies a retention to the local repository or a
//! remote, whole backup sets at a time; `--dry-run` is the simulator,
//! listing every set with the rule that keeps it, or "removed".

use lifeboat_core::format::ManifestKey;
use lifeboat_core::retention::{self, Decision, Rules};
use lifeboat_core::store::{DynStore, ObjectKey};

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
    if from_flags {
        rules.check()?;
    }
    let (store, backups) = ctx.backups_of(a.remote.as_deref()).await?;
    for vm in &a.vms {
        if !backups.iter().any(|(k, _)| &k.vm == vm) {
            anyhow::bail!("no backups of VM {vm:?} in {}", store.describe());
        }
    }
    let chosen: Vec<_> = backups
        .iter()
        .filter(|(k, _)| a.vms.is_empty() || a.vms.contains(&k.vm))
        .cloned()
        .collect();
    let mut decisions = if from_flags {
        // Buckets in the host's time zone: a "day" is the admin's day.
        retention::plan(&chosen, &rules, &chrono::Local)?
    } else {
        by_policy(ctx, &chosen, a.remote.as_deref())?
    };
    match a.remote {
        // What the server keeps whatever a prune asks stays in the plan.
        Some(_) => {
            let until = store.immutable().await?;
            retention::hold(&mut decisions, |d| retention::immutable_reason(d, &until));
        }
        // Locally, a set an off-site copy of its VM's policy still lacks
        // is never removed (docs/ARCHITECTURE.md, "Off-site copies").
        None => {
            let mut vms: Vec<&str> = decisions.iter().map(|d| d.vm.as_str()).collect();
            vms.dedup();
            let vms: Vec<String> = vms.into_iter().map(String::from).collect();
            for vm in vms {
                let Some(policy) = ctx.config.policy_for(&vm).filter(|p| !p.push.is_empty()) else {
                    continue;
                };
                let remotes = lifeboat_core::daemon::offsite::ask_remotes(
                    &ctx.config,
                    &vm,
                    &backups,
                    policy,
                    lifeboat_core::daemon::offsite::ASK_LIMIT,
                )
                .await;
                for (name, o) in &remotes {
                    if let lifeboat_core::daemon::offsite::Offsite::Unknown(why) = o {
                        tracing::warn!("{vm}: remote {name} could not be asked ({why}): nothing of {vm} is removed");
                    }
                }
                let (mut mine, rest): (Vec<Decision>, Vec<Decision>) =
                    decisions.into_iter().partition(|d| d.vm == vm);
                lifeboat_core::daemon::offsite::hold_unsent(&mut mine, &remotes);
                decisions = rest;
                decisions.extend(mine);
            }
        }
    }
    let removed: Vec<&Decision> = decisions.iter().filter(|d| !d.keep).collect();
    let mut deleted = 0usize;
    if !a.dry_run {
        for d in &removed {
            for k in &d.manifests {
                delete(&store, k).await?;
                deleted += 1;
            }
        }
    }
    if ctx.json {
        print_json(&serde_json::json!({
            "repository": store.describe(),
            "dry_run": a.dry_run,
            "rules": if from_flags { serde_json::to_value(&rules)? } else { serde_json::json!("per VM policy") },
            "sets": decisions,
            "removed_sets": removed.len(),
            "removed_backups": if a.dry_run { removed.iter().map(|d| d.manifests.len()).sum::<usize>() } else { deleted },
        }))?;
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = decisions
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
    let n: usize = removed.iter().map(|d| d.manifests.len()).sum();
    if a.dry_run {
        println!(
            "dry run: {} of {} sets ({n} backups) would be removed from {}",
            removed.len(),
            decisions.len(),
            store.describe()
        );
    } else {
        println!(
            "removed {} of {} sets ({deleted} backups) from {}; `lifeboat gc` frees their data",
            removed.len(),
            decisions.len(),
            store.describe()
        );
    }
    Ok(Outcome::Ok)
}

/// Each VM under its policy's retention (for this remote, when the policy
/// gives one), in the policy's time zone.
fn by_policy(
    ctx: &Ctx,
    backups: &[(ManifestKey, lifeboat_core::format::Manifest)],
    remote: Option<&str>,
) -> anyhow::Result<Vec<Decision>> {
    let mut vms: Vec<&str> = backups.iter().map(|(k, _)| k.vm.as_str()).collect();
    vms.dedup();
    let mut out = Vec::new();
    let mut covered = 0;
    for vm in vms {
        let group: Vec<_> = backups
            .iter()
            .filter(|(k, _)| k.vm == vm)
            .cloned()
            .collect();
        let policy = ctx.config.policy_for(vm);
        let Some((p, rules)) = policy.and_then(|p| p.retention_for(remote).map(|r| (p, r))) else {
            tracing::warn!("VM {vm}: no retention in its policy (or no policy): nothing pruned");
            continue;
        };
        covered += 1;
        out.extend(p.plan_retention(&group, rules)?);
    }
    if covered == 0 {
        anyhow::bail!(
            "nothing to prune by: give --keep-last/--keep-daily/… or a policy with keep_* in the config (default_policy, or policy on a [[vm]])"
        );
    }
    Ok(out)
}

async fn delete(store: &DynStore, k: &ManifestKey) -> anyhow::Result<()> {
    store
        .delete(&ObjectKey::Manifest(k.clone()))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "removing {}: {}",
                k.object_key(),
                lifeboat_core::text::describe(&e)
            )
        })
}
