//! The one prune planner: the rules (given, or each VM's policy for that
//! repository) applied to whole sets, then what must stay whatever the
//! rules say held — a server's immutability window on a remote, and
//! locally every set an off-site copy of its VM's policy still lacks
//! (docs/ARCHITECTURE.md, "Off-site copies"). `lifeboat prune`, the
//! console and the daemon all plan here and execute the `PrunePlan`.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{Manifest, ManifestKey};
use crate::prune::PrunePlan;
use crate::retention::{self, Decision, Rules};
use crate::store::DynStore;

use super::offsite::{self, Offsite};

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneRequest {
    /// VMs to prune; empty: every VM in the repository.
    pub vms: Vec<String>,
    /// Rules for every chosen VM; None: each VM's policy.
    pub rules: Option<Rules>,
    /// The remote the store is (None: the local repository).
    pub remote: Option<String>,
}

/// Plans a prune of `store`, whose backups (protection applied) are
/// `backups`.
pub async fn plan(
    config: &Config,
    store: &DynStore,
    backups: &[(ManifestKey, Manifest)],
    req: &PruneRequest,
) -> Result<PrunePlan> {
    for vm in &req.vms {
        if !backups.iter().any(|(k, _)| &k.vm == vm) {
            return Err(Error::BadInput(format!(
                "no backups of VM {vm:?} in {}",
                store.describe()
            )));
        }
    }
    let chosen: Vec<(ManifestKey, Manifest)> = backups
        .iter()
        .filter(|(k, _)| req.vms.is_empty() || req.vms.contains(&k.vm))
        .cloned()
        .collect();
    let decisions = match &req.rules {
        Some(rules) => {
            rules.check()?;
            // Buckets in the host's time zone: a "day" is the admin's day.
            retention::plan(&chosen, rules, &chrono::Local)?
        }
        None => by_policy(config, &chosen, req.remote.as_deref())?,
    };
    let mut plan = PrunePlan::new(store.describe(), decisions);
    match &req.remote {
        Some(_) => plan.hold_immutable(store.as_ref()).await?,
        None => {
            for vm in vms_of(&plan.sets) {
                let Some(policy) = config.policy_for(&vm).filter(|p| !p.push.is_empty()) else {
                    continue;
                };
                let remotes =
                    offsite::ask_remotes(config, &vm, backups, policy, offsite::ASK_LIMIT).await;
                for (name, o) in &remotes {
                    if let Offsite::Unknown(why) = o {
                        tracing::warn!(
                            "{vm}: remote {name} could not be asked ({why}): nothing of {vm} is removed"
                        );
                    }
                }
                hold_vm(&mut plan, &vm, &remotes);
            }
        }
    }
    Ok(plan)
}

/// Holds the sets of `vm` that `remotes` lack, counting them in
/// `held_offsite` (the daemon, which has just asked its remotes, plans its
/// local prune with this).
pub fn hold_vm(
    plan: &mut PrunePlan,
    vm: &str,
    remotes: &std::collections::BTreeMap<String, Offsite>,
) {
    let before = plan.removed_sets();
    let (mut mine, rest): (Vec<Decision>, Vec<Decision>) = std::mem::take(&mut plan.sets)
        .into_iter()
        .partition(|d| d.vm == vm);
    offsite::hold_unsent(&mut mine, remotes);
    plan.sets = rest;
    plan.sets.extend(mine);
    plan.held_offsite += before - plan.removed_sets();
}

fn vms_of(sets: &[Decision]) -> Vec<String> {
    let mut vms: Vec<String> = sets.iter().map(|d| d.vm.clone()).collect();
    vms.sort();
    vms.dedup();
    vms
}

/// Each VM under its policy's retention (for this remote, when the policy
/// gives one), in the policy's time zone.
fn by_policy(
    config: &Config,
    backups: &[(ManifestKey, Manifest)],
    remote: Option<&str>,
) -> Result<Vec<Decision>> {
    let mut vms: Vec<&str> = backups.iter().map(|(k, _)| k.vm.as_str()).collect();
    vms.sort();
    vms.dedup();
    let mut out = Vec::new();
    let mut covered = 0;
    for vm in vms {
        let group: Vec<(ManifestKey, Manifest)> = backups
            .iter()
            .filter(|(k, _)| k.vm == vm)
            .cloned()
            .collect();
        let Some((p, rules)) = config
            .policy_for(vm)
            .and_then(|p| p.retention_for(remote).map(|r| (p, r)))
        else {
            tracing::warn!("VM {vm}: no retention in its policy (or no policy): nothing pruned");
            continue;
        };
        covered += 1;
        out.extend(p.plan_retention(&group, rules)?);
    }
    if covered == 0 {
        return Err(Error::BadInput(
            "nothing to prune by: give --keep-last/--keep-daily/… or a policy with keep_* in the config (default_policy, or policy on a [[vm]])".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, image, memory, put_set};

    /// Backups of two VMs interleaved in time are planned once per set
    /// (a policy plan used to take a VM once per run of its backups).
    #[tokio::test]
    async fn each_set_is_planned_once_by_policy() {
        let config = Config::parse(
            std::path::Path::new("c.toml"),
            "default_policy = \"p\"\n[policy.p]\nkeep_last = 1\n",
        )
        .unwrap();
        let (_, store) = memory();
        testkit::init(store.as_ref()).await;
        let mut backups = Vec::new();
        for (i, (vm, set, at)) in [
            ("web", "a1", "2026-12-01T02:00:00Z"),
            ("db", "b1", "2026-12-01T03:00:00Z"),
            ("web", "a2", "2026-12-02T02:00:00Z"),
            ("db", "b2", "2026-12-02T03:00:00Z"),
        ]
        .into_iter()
        .enumerate()
        {
            backups
                .extend(put_set(store.as_ref(), vm, set, at, &[("root", image(i as u8, 1))]).await);
        }
        let plan = plan(&config, &store, &backups, &PruneRequest::default())
            .await
            .unwrap();
        let mut sets: Vec<&str> = plan.sets.iter().map(|d| d.set.as_str()).collect();
        sets.sort();
        assert_eq!(sets, ["a1", "a2", "b1", "b2"]);
        assert_eq!(plan.removed_sets(), 2);
        let done = plan
            .execute(store.as_ref(), &testkit::cancel())
            .await
            .unwrap();
        assert_eq!((done.sets, done.backups), (2, 2));
    }
}
