//! Prometheus metrics of a repository, built at each scrape from what the
//! repository records (backups, verify marks, policy runs), so `lifeboat
//! serve` and the daemon report the same figures. Encoded by the
//! prometheus-client crate (the Prometheus project's Rust client).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::rpo::RpoState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Volume {
    vm: String,
    volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Vm {
    vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmState {
    vm: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmRemote {
    vm: String,
    remote: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanLabel {
    plan: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

type FGauge = Gauge<f64, AtomicU64>;

fn family<L>(reg: &mut Registry, name: &str, help: &str) -> Family<L, FGauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, FGauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// Sizes and counts of chunk and index files (a local repository).
fn repository_size(root: &Path) -> (BTreeMap<&'static str, (u64, u64)>, u64) {
    let mut out = BTreeMap::new();
    let mut total = 0;
    for (kind, dir) in [("chunk", "chunks"), ("index", "indexes")] {
        let (mut n, mut bytes) = (0u64, 0u64);
        if let Ok(fans) = std::fs::read_dir(root.join(dir)) {
            for fan in fans.flatten() {
                if let Ok(files) = std::fs::read_dir(fan.path()) {
                    for f in files.flatten() {
                        if let Ok(m) = f.metadata() {
                            if m.is_file() && !f.file_name().to_string_lossy().starts_with('.') {
                                n += 1;
                                bytes += m.len();
                            }
                        }
                    }
                }
            }
        }
        total += bytes;
        out.insert(kind, (n, bytes));
    }
    (out, total)
}

/// The last completed drill of each recovery plan whose VMs a scrape may
/// all see.
fn plan_drills(reg: &mut Registry, root: &Path, admits: &dyn Fn(&str) -> bool) {
    let ok = family::<PlanLabel>(
        reg,
        "plan_drill_success",
        "1 when the recovery plan's last drill passed, 0 otherwise",
    );
    let at = family::<PlanLabel>(
        reg,
        "plan_drill_timestamp_seconds",
        "End of the recovery plan's last drill (Unix time)",
    );
    let rto = family::<PlanLabel>(
        reg,
        "plan_drill_rto_seconds",
        "Service recovery time the plan's last drill measured (first fetch to last check)",
    );
    let rpo = family::<PlanLabel>(
        reg,
        "plan_drill_rpo_seconds",
        "Age of the oldest member's backup the plan's last drill used",
    );
    let spread = family::<PlanLabel>(
        reg,
        "plan_drill_spread_seconds",
        "Time between the oldest and newest member backups the plan's last drill used",
    );
    for (plan, d) in crate::plan::report::last_per_plan(root).unwrap_or_default() {
        let mut vms = d.members.iter().map(|m| m.vm.as_str()).peekable();
        let mut picked = d
            .point
            .iter()
            .flat_map(|p| p.picks.iter().map(|k| k.vm.as_str()));
        let known = vms.peek().is_some() || d.point.as_ref().is_some_and(|p| !p.picks.is_empty());
        if !known || !vms.all(admits) || !picked.all(admits) {
            continue;
        }
        let l = PlanLabel { plan };
        ok.get_or_create(&l).set(if d.passed() { 1.0 } else { 0.0 });
        at.get_or_create(&l).set(d.ended_at.timestamp() as f64);
        rto.get_or_create(&l).set(d.rto_secs);
        if let Some(r) = d.rpo_secs {
            rpo.get_or_create(&l).set(r as f64);
        }
        if let Some(p) = &d.point {
            spread.get_or_create(&l).set(p.spread_secs as f64);
        }
    }
}

/// The metrics text (OpenMetrics text format, which Prometheus scrapes).
pub fn render(config: &Config, root: &Path, now: DateTime<Utc>) -> Result<String> {
    render_for(config, root, now, None)
}

/// Which VMs a scrape may see (a server's scoped token sees its own).
pub type VmFilter<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// The metrics of the VMs `only` admits (all with None). A filtered scrape
/// leaves out the repository-wide totals, which describe other VMs too.
pub fn render_for(
    config: &Config,
    root: &Path,
    now: DateTime<Utc>,
    only: Option<VmFilter<'_>>,
) -> Result<String> {
    let admits = |vm: &str| only.is_none_or(|f| f(vm));
    let repo = crate::repo::Repo::open(root)?;
    let mut backups = match repo.load_all() {
        // A server holding an encrypted repository has no key: what the
        // manifests' clear envelopes say (ages, counts, sizes).
        Err(crate::error::Error::Locked(_)) => repo.outlines()?,
        other => other?,
    };
    backups.retain(|(k, _)| admits(&k.vm));
    // The same snapshot the console and `status --rpo` read.
    let snap = crate::rpo::snapshot(config, root, &backups, now);
    for p in &snap.problems {
        tracing::warn!("metrics: {p}");
    }
    let verify = snap.verify;
    let mut runs = snap.runs;
    runs.retain(|r| admits(&r.vm));
    let mut status = snap.vms;
    status.retain(|s| admits(&s.vm));

    let mut reg = Registry::with_prefix("lifeboat");
    let age = family::<Volume>(
        &mut reg,
        "backup_age_seconds",
        "Age of the newest backup of each volume",
    );
    let logical = family::<Volume>(
        &mut reg,
        "backup_logical_bytes",
        "Image size of the newest backup of each volume",
    );
    let new = family::<Volume>(
        &mut reg,
        "backup_new_bytes",
        "Bytes the newest backup of each volume added to the repository",
    );
    let count = family::<Vm>(
        &mut reg,
        "backups",
        "Backups held per VM (volumes count one each)",
    );
    let verified = family::<Volume>(
        &mut reg,
        "verify_ok",
        "1 when the newest verify of the volume's newest backup passed, 0 when it failed",
    );
    let verify_age = family::<Volume>(
        &mut reg,
        "verify_age_seconds",
        "Age of the newest verify of the volume's newest backup",
    );
    let rpo = family::<VmState>(&mut reg, "rpo_state", "1 for the VM's recovery-point state (ok, late, stale, last_job_failed, verify_failed, never_backed_up)");
    let run_ok = family::<Vm>(
        &mut reg,
        "last_run_success",
        "1 when the VM's last policy run succeeded, 0 otherwise",
    );
    let run_secs = family::<Vm>(
        &mut reg,
        "last_run_duration_seconds",
        "Duration of the VM's last policy run",
    );
    let run_at = family::<Vm>(
        &mut reg,
        "last_run_timestamp_seconds",
        "Start of the VM's last policy run (Unix time)",
    );
    let run_bytes = family::<Vm>(
        &mut reg,
        "last_run_new_bytes",
        "Bytes the VM's last policy run added",
    );
    let drill_ok = family::<Vm>(
        &mut reg,
        "drill_success",
        "1 when the VM's last restore drill passed, 0 otherwise",
    );
    let drill_at = family::<Vm>(
        &mut reg,
        "drill_timestamp_seconds",
        "End of the VM's last restore drill (Unix time)",
    );
    let drill_rto = family::<Vm>(
        &mut reg,
        "drill_rto_seconds",
        "Recovery time the VM's last restore drill measured",
    );
    let drill_rpo = family::<Vm>(
        &mut reg,
        "drill_rpo_seconds",
        "Age of the backup the VM's last restore drill used",
    );
    let remote_age = family::<VmRemote>(
        &mut reg,
        "remote_backup_age_seconds",
        "Age of the newest backup of the VM on each of its policy's push remotes, as its last run found it",
    );
    let remote_owed = family::<VmRemote>(
        &mut reg,
        "remote_owed_sets",
        "Backup sets the remote lacks that its retention would keep, after the VM's last run",
    );
    let remote_refused = family::<VmRemote>(
        &mut reg,
        "remote_refused_sets",
        "Of the owed sets, those the remote refused as late (an admin must copy them)",
    );
    let remote_ok = family::<VmRemote>(
        &mut reg,
        "remote_reachable",
        "1 when the VM's last run could ask and send to the remote, 0 when it could not",
    );
    let remote_checked = family::<VmRemote>(
        &mut reg,
        "remote_check_timestamp_seconds",
        "When the VM's last run asked the remote (Unix time)",
    );
    // The newest backup of each volume, with its id (for its verify mark).
    let mut newest: BTreeMap<(String, String), (crate::format::Id, &crate::format::Manifest)> =
        BTreeMap::new();
    for (k, m) in &backups {
        count.get_or_create(&Vm { vm: k.vm.clone() }).inc_by(1.0);
        let e = newest
            .entry((k.vm.clone(), k.volume.clone()))
            .or_insert((k.id, m));
        if m.created_at >= e.1.created_at {
            *e = (k.id, m);
        }
    }
    for ((vm, volume), (id, m)) in &newest {
        let l = Volume {
            vm: vm.clone(),
            volume: volume.clone(),
        };
        age.get_or_create(&l)
            .set((now - m.created_at).num_milliseconds() as f64 / 1000.0);
        logical.get_or_create(&l).set(m.stats.logical_bytes as f64);
        new.get_or_create(&l).set(m.stats.new_stored_bytes as f64);
        if let Some(mark) = verify.get(id) {
            verified
                .get_or_create(&l)
                .set(if mark.ok { 1.0 } else { 0.0 });
            verify_age
                .get_or_create(&l)
                .set((now - mark.at).num_seconds() as f64);
        }
    }
    for s in &status {
        for st in RpoState::ALL {
            let v = if st == s.state { 1.0 } else { 0.0 };
            rpo.get_or_create(&VmState {
                vm: s.vm.clone(),
                state: serde_json::to_value(st)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            })
            .set(v);
        }
    }
    for r in &runs {
        let l = Vm { vm: r.vm.clone() };
        run_ok
            .get_or_create(&l)
            .set(if r.outcome == crate::daemon::runs::RunOutcome::Ok {
                1.0
            } else {
                0.0
            });
        run_secs.get_or_create(&l).set(r.seconds);
        run_at
            .get_or_create(&l)
            .set(r.started_at.timestamp() as f64);
        run_bytes.get_or_create(&l).set(r.bytes_new as f64);
    }
    for (vm, d) in snap.drills {
        if !admits(&vm) {
            continue;
        }
        let l = Vm { vm };
        drill_ok
            .get_or_create(&l)
            .set(if d.passed() { 1.0 } else { 0.0 });
        drill_at
            .get_or_create(&l)
            .set(d.ended_at.timestamp() as f64);
        drill_rto.get_or_create(&l).set(d.rto_secs);
        if let Some(r) = d.rpo_secs {
            drill_rpo.get_or_create(&l).set(r as f64);
        }
    }
    plan_drills(&mut reg, root, &admits);
    for (vm, remotes) in snap.offsite {
        if !admits(&vm) {
            continue;
        }
        for (remote, o) in remotes {
            let l = VmRemote {
                vm: vm.clone(),
                remote,
            };
            if let Some(t) = o.newest {
                remote_age
                    .get_or_create(&l)
                    .set((now - t).num_milliseconds() as f64 / 1000.0);
            }
            remote_owed.get_or_create(&l).set(o.owed as f64);
            remote_refused.get_or_create(&l).set(o.refused as f64);
            remote_ok
                .get_or_create(&l)
                .set(if o.error.is_none() { 1.0 } else { 0.0 });
            if let Some(t) = o.checked_at {
                remote_checked.get_or_create(&l).set(t.timestamp() as f64);
            }
        }
    }
    // Totals describe every VM: not for a scrape that sees only some.
    if only.is_none() {
        let objects = family::<Kind>(
            &mut reg,
            "repository_objects",
            "Chunk and index objects stored",
        );
        let obj_bytes = family::<Kind>(
            &mut reg,
            "repository_object_bytes",
            "Bytes of chunk and index objects stored",
        );
        let total = FGauge::default();
        reg.register(
            "repository_bytes",
            "Bytes of all chunks and indexes stored",
            total.clone(),
        );
        let (sizes, sum) = repository_size(root);
        for (kind, (n, b)) in sizes {
            let l = Kind { kind: kind.into() };
            objects.get_or_create(&l).set(n as f64);
            obj_bytes.get_or_create(&l).set(b as f64);
        }
        total.set(sum as f64);
    }

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::{DrillOutcome, DrillReport, PhaseTime};

    #[test]
    fn the_last_drill_of_each_vm_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        crate::repo::Repo::init(&root, crate::repo::RepoConfig::new(1 << 20, 1).unwrap()).unwrap();
        let now = Utc::now();
        let report = |outcome, rto| DrillReport {
            vm: "web01".into(),
            source: "offsite".into(),
            reference: "latest".into(),
            started_at: now,
            ended_at: now,
            outcome,
            failed_phase: None,
            error: None,
            backup_time: Some(now - chrono::Duration::hours(5)),
            set: Some("ab".into()),
            manifests: Vec::new(),
            rpo_secs: Some(5 * 3600),
            rto_secs: rto,
            phases: vec![PhaseTime {
                name: crate::drill::Phase::Boot,
                secs: rto,
                bytes: 0,
            }],
            definition: Some("backup".into()),
            boot: None,
        };
        crate::drill::history::record(&root, &report(DrillOutcome::Fail, 2.0)).unwrap();
        crate::drill::history::record(&root, &report(DrillOutcome::Pass, 7.5)).unwrap();
        // A cancelled drill proves nothing: the last completed one stands.
        crate::drill::history::record(&root, &report(DrillOutcome::Cancelled, 0.5)).unwrap();
        let text = render(&Config::default(), &root, now).unwrap();
        assert!(
            text.contains("lifeboat_drill_success{vm=\"web01\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_drill_rto_seconds{vm=\"web01\"} 7.5"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_drill_rpo_seconds{vm=\"web01\"} 18000"),
            "{text}"
        );
        // A plan's last drill, for scrapes that may see all its VMs.
        let plan = crate::plan::report::PlanReport {
            plan: "shop".into(),
            source: "offsite".into(),
            at: None,
            started_at: now,
            ended_at: now,
            outcome: DrillOutcome::Fail,
            failed_vm: Some("db01".into()),
            failed_phase: Some(crate::drill::Phase::Boot),
            error: Some("db01: the console showed \"database is corrupt\"".into()),
            point: Some(crate::plan::point::Point {
                picks: Vec::new(),
                spread_secs: 7200,
                oldest: now - chrono::Duration::hours(5),
            }),
            rpo_secs: Some(5 * 3600),
            rto_secs: 9.5,
            members: vec![report(DrillOutcome::Pass, 9.0), {
                let mut db = report(DrillOutcome::Fail, 4.0);
                db.vm = "db01".into();
                db
            }],
            network: Vec::new(),
            checks: Vec::new(),
        };
        crate::plan::report::record(&root, &plan).unwrap();
        let text = render(&Config::default(), &root, now).unwrap();
        for want in [
            "lifeboat_plan_drill_success{plan=\"shop\"} 0",
            "lifeboat_plan_drill_rto_seconds{plan=\"shop\"} 9.5",
            "lifeboat_plan_drill_rpo_seconds{plan=\"shop\"} 18000",
            "lifeboat_plan_drill_spread_seconds{plan=\"shop\"} 7200",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let web_only = |vm: &str| vm == "web01";
        let text = render_for(&Config::default(), &root, now, Some(&web_only)).unwrap();
        assert!(!text.contains("plan=\"shop\""), "{text}");
    }
}
