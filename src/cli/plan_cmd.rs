//! Recovery plans on the command line: `plans`, `drill --plan`, `drills
//! --plans`, `restore --plan` and `cloud-restore --plan`. The core makes
//! every plan; these only show and dispatch.

use std::path::PathBuf;
use std::sync::Arc;

use lifeboat_core::drill::{age, DrillOutcome, DrillOverrides};
use lifeboat_core::plan::report::{self, PlanReport};
use lifeboat_core::plan::{point, Plan};
use lifeboat_core::text::escape;

use super::progress::{run_job_async, run_job_async_lines};
use super::{print_json, Ctx, Outcome};

pub async fn drill(ctx: &Ctx, name: &str, overrides: DrillOverrides) -> anyhow::Result<Outcome> {
    let req = lifeboat_core::config::requests::plan_drill_request(&ctx.config, name, &overrides)?;
    let store = lifeboat_core::config::requests::open_drill_source(&ctx.config, &req.source)?;
    let local = ctx.repo_path();
    let r = req.clone();
    let report: PlanReport = run_job_async("plan drill", ctx.json, move |c, p| async move {
        Ok(lifeboat_core::plan::drill::run_recorded(&local, store.as_deref(), &r, &c, &p).await)
    })
    .await?;
    if report.outcome == DrillOutcome::NotStarted {
        anyhow::bail!(
            "the drill of plan {} could not start: {}",
            escape(&report.plan),
            escape(report.error.as_deref().unwrap_or("no reason given"))
        );
    }
    if ctx.json {
        print_json(&report)?;
    } else {
        for line in report::describe(&report) {
            println!("{line}");
        }
    }
    Ok(match report.outcome {
        DrillOutcome::Pass | DrillOutcome::NotStarted => Outcome::Ok,
        DrillOutcome::Fail => Outcome::DrillFailed,
        DrillOutcome::Cancelled => Outcome::Cancelled,
    })
}

pub fn history(ctx: &Ctx, plan: Option<&str>, last: usize) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let all = report::load(repo.root())?;
    let Some(shown) = super::drill_cmd::newest(
        ctx,
        &all,
        |r| plan.is_none_or(|p| r.plan == p),
        last,
        "no plan drills yet: run `lifeboat drill --plan NAME`",
    )?
    else {
        return Ok(Outcome::Ok);
    };
    for r in shown {
        println!(
            "{}  {:<12} {:<9} from {:<10} RTO {:>6.1}s  RPO {:<8} spread {:<8}{}",
            r.started_at.format("%Y-%m-%d %H:%M"),
            escape(&r.plan),
            r.outcome.to_string(),
            escape(&r.source),
            r.rto_secs,
            r.rpo_secs.map(age).unwrap_or_else(|| "-".into()),
            r.point
                .as_ref()
                .map(|p| age(p.spread_secs))
                .unwrap_or_else(|| "-".into()),
            match (&r.failed_vm, &r.failed_phase) {
                (vm, Some(p)) => format!(
                    "  failed{} in {p}: {}",
                    vm.as_deref()
                        .map(|v| format!(" at {}", escape(v)))
                        .unwrap_or_default(),
                    escape(r.error.as_deref().unwrap_or(""))
                ),
                _ => String::new(),
            }
        );
    }
    Ok(Outcome::Ok)
}

#[derive(serde::Serialize)]
struct PlanRow<'a> {
    name: &'a str,
    network: &'a str,
    subnet: Option<String>,
    from: String,
    schedule: Option<String>,
    vms: Vec<MemberRow<'a>>,
    checks: Vec<String>,
    /// The newest consistent point in the repository read.
    point: Option<point::Point>,
    rpo_secs: Option<i64>,
    point_error: Option<String>,
    last_drill: Option<&'a PlanReport>,
}

#[derive(serde::Serialize)]
struct MemberRow<'a> {
    vm: &'a str,
    address: Option<String>,
    after: &'a [String],
}

/// `plans [NAME] [--from R]`: each plan, its VMs in start order, its
/// service RPO (the newest point in the repository read) and last drill.
pub async fn list(ctx: &Ctx, name: Option<&str>, from: Option<&str>) -> anyhow::Result<Outcome> {
    let plans: Vec<&Plan> = match name {
        Some(n) => vec![lifeboat_core::config::requests::plan(&ctx.config, n)?],
        None => ctx.config.plans.values().collect(),
    };
    let local = ctx.repo_path();
    let last = report::last_per_plan(&local).unwrap_or_default();
    let (label, store): (String, lifeboat_core::store::DynStore) = match from {
        Some(r) => ctx.remote(r)?,
        None => (
            "local".into(),
            Arc::new(lifeboat_core::store::local::LocalStore::new(&local)),
        ),
    };
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for p in &plans {
        let (pt, err) = match point::pick(store.as_ref(), p, None).await {
            Ok(pt) => (Some(pt), None),
            Err(e) => (None, Some(e.to_string())),
        };
        rows.push(PlanRow {
            name: &p.name,
            network: &p.network,
            subnet: p.subnet.map(|s| s.to_string()),
            from: lifeboat_core::config::requests::plan_source(&ctx.config, p),
            schedule: ctx
                .config
                .plan_configs
                .get(&p.name)
                .and_then(|c| c.get_ref().schedule.as_ref())
                .map(|s| s.get_ref().clone()),
            vms: p
                .order()
                .into_iter()
                .map(|m| MemberRow {
                    vm: &m.vm,
                    address: m.address.map(|a| a.to_string()),
                    after: &m.after,
                })
                .collect(),
            checks: p.checks.iter().map(|c| c.name()).collect(),
            rpo_secs: pt.as_ref().map(|pt| pt.rpo_secs(now)),
            point: pt,
            point_error: err,
            last_drill: last.get(&p.name),
        });
    }
    if ctx.json {
        print_json(&rows)?;
        return Ok(Outcome::Ok);
    }
    if rows.is_empty() {
        println!("no recovery plans: add a [plan.NAME] table to the config (see docs/PLANS.md)");
    }
    for r in &rows {
        println!(
            "{}  network {}{}  drilled from {}{}",
            escape(r.name),
            escape(r.network),
            r.subnet
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            escape(&r.from),
            r.schedule
                .as_deref()
                .map(|s| format!(", on schedule {}", escape(s)))
                .unwrap_or_default()
        );
        for m in &r.vms {
            println!(
                "    {:<14} {:<15} {}",
                escape(m.vm),
                m.address.as_deref().unwrap_or("-"),
                if m.after.is_empty() {
                    "starts at once".to_string()
                } else {
                    format!("starts after {}", escape(&m.after.join(", ")))
                }
            );
        }
        for c in &r.checks {
            println!("    check {c}");
        }
        match (&r.point, &r.point_error) {
            (Some(pt), _) => println!(
                "    service RPO {} in {} (oldest member; spread {})",
                age(r.rpo_secs.unwrap_or(0)),
                escape(&label),
                age(pt.spread_secs)
            ),
            (None, Some(e)) => println!(
                "    no consistent point in {}: {}",
                escape(&label),
                escape(e)
            ),
            _ => {}
        }
        match r.last_drill {
            Some(d) => println!(
                "    last drill {}: {} (service RTO {:.1}s){}",
                d.started_at.format("%Y-%m-%d %H:%M"),
                d.outcome,
                d.rto_secs,
                d.failed_vm
                    .as_deref()
                    .map(|v| format!(", failed at {}", escape(v)))
                    .unwrap_or_default()
            ),
            None => println!(
                "    never drilled: lifeboat drill --plan {}",
                escape(r.name)
            ),
        }
    }
    Ok(Outcome::Ok)
}

/// `restore --plan NAME --to DIR [--define [--start]]`: every VM of the
/// plan's point (and, asked, handed to libvirt).
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    ctx: &Ctx,
    name: &str,
    at: Option<String>,
    to: PathBuf,
    from: Option<String>,
    dry_run: bool,
    define: bool,
    start: bool,
) -> anyhow::Result<Outcome> {
    let p = lifeboat_core::config::requests::plan(&ctx.config, name)?.clone();
    if dry_run {
        let (_, s) = super::cloud_cmd::source(ctx, from.as_deref())?;
        let pt = point::pick(s.as_ref(), &p, at.as_deref()).await?;
        if ctx.json {
            print_json(
                &serde_json::json!({"dry_run": true, "plan": p.name, "point": pt, "to": to}),
            )?;
        } else {
            for m in p.order() {
                if let Some(pk) = pt.pick(&m.vm) {
                    println!(
                        "would restore {} (set {} of {}) to {}",
                        escape(&m.vm),
                        escape(&pk.set[..pk.set.len().min(12)]),
                        pk.time.format("%Y-%m-%d %H:%M:%S UTC"),
                        escape(&to.join(&m.vm).display().to_string())
                    );
                }
            }
            println!(
                "would write the isolated network {} to {}",
                escape(&p.network),
                escape(
                    &to.join(format!("{}.network.xml", p.network))
                        .display()
                        .to_string()
                )
            );
            if define {
                println!(
                    "would define the network and the VMs with virsh{}",
                    if start {
                        ", then start the VMs in order"
                    } else {
                        ""
                    }
                );
            }
            println!("dry run: nothing was written");
        }
        return Ok(Outcome::Ok);
    }
    let local = ctx.repo_path();
    let store = match &from {
        Some(r) => Some(ctx.remote(r)?.1),
        None => None,
    };
    let req = lifeboat_core::plan::restore::PlanRestoreRequest {
        definitions: p
            .members
            .iter()
            .filter_map(|m| {
                ctx.config
                    .definition_for_backup(&m.vm)
                    .map(|d| (m.vm.clone(), d))
            })
            .collect(),
        plan: p,
        at,
        to,
        define: define.then(|| lifeboat_core::plan::restore::Define {
            uri: ctx.config.libvirt.as_ref().and_then(|l| l.uri.clone()),
            start,
        }),
    };
    let out = run_job_async("plan restore", ctx.json, move |c, pr| async move {
        lifeboat_core::plan::restore::to_directory(&local, store.as_deref(), &req, &c, &pr).await
    })
    .await?;
    if ctx.json {
        print_json(&out)?;
        return Ok(Outcome::Ok);
    }
    println!(
        "restored plan {} into {} (RPO {}, spread {}):",
        escape(&out.plan),
        escape(&out.to.display().to_string()),
        age(out.point.rpo_secs(chrono::Utc::now())),
        age(out.point.spread_secs)
    );
    for v in &out.vms {
        println!(
            "  {}: {} ({} written), NIC {} on {}{}",
            escape(&v.vm),
            escape(&v.domain_xml.display().to_string()),
            crate::output::bytes(v.bytes_written),
            v.mac,
            escape(&out.network),
            v.address
                .as_deref()
                .map(|a| format!(", expects {a}"))
                .unwrap_or_default()
        );
        show_validation(&v.validation);
    }
    println!(
        "  network: {} (isolated: no forward, no host address)",
        escape(&out.network_xml.display().to_string())
    );
    show_validation(&out.network_validation);
    if out.libvirt.is_empty() {
        println!("where libvirt runs, in this order:");
        for c in &out.commands {
            println!("  {}", escape(c));
        }
    }
    for l in &out.libvirt {
        println!("  libvirt: {}", escape(l));
    }
    Ok(Outcome::Ok)
}

fn show_validation(v: &lifeboat_core::vm::restore::Validation) {
    use lifeboat_core::vm::restore::Validation;
    match v {
        Validation::Valid => println!("    valid for libvirt (virt-xml-validate)"),
        Validation::Invalid(why) => println!("    NOT valid for libvirt: {}", escape(why)),
        Validation::Unchecked(why) => println!("    not checked: {}", escape(why)),
    }
}

/// `cloud-restore --plan NAME --target T`: the plan's VMs created in
/// start order on the target's network; a failure removes them all.
pub async fn cloud_restore(
    ctx: &Ctx,
    name: &str,
    at: Option<String>,
    target: &str,
    from: Option<String>,
    dry_run: bool,
    keep_on_failure: bool,
) -> anyhow::Result<Outcome> {
    use lifeboat_core::cloud;
    let p = lifeboat_core::config::requests::plan(&ctx.config, name)?.clone();
    let cfg = super::cloud_cmd::target(ctx, target)?.clone();
    let provider: Arc<dyn cloud::Provider> = Arc::from(cloud::open(target, &cfg)?);
    let (label, store) = super::cloud_cmd::source(ctx, from.as_deref())?;
    let (pt, plans) = lifeboat_core::plan::restore::cloud_plans(
        &p,
        at.as_deref(),
        target,
        provider.as_ref(),
        cfg.provider,
        &store,
        &label,
    )
    .await?;
    if dry_run || !ctx.json {
        for cp in &plans {
            super::cloud_cmd::print_plan(cp, ctx.config.overrides.limits.upload);
        }
    }
    if dry_run {
        if ctx.json {
            print_json(&serde_json::json!({"dry_run": true, "point": pt, "plans": plans}))?;
        } else {
            println!("dry run: nothing was created");
        }
        return Ok(Outcome::Ok);
    }
    let opts = cloud::ExecOptions {
        keep_on_failure,
        ready_timeout: Some(cfg.ready_timeout()),
        upload_limit: ctx.config.overrides.limits.upload,
    };
    let prov = provider.clone();
    let out = run_job_async_lines("plan cloud-restore", ctx.json, move |c, pr| async move {
        cloud::execute_all(&plans, prov.as_ref(), opts, &c, &pr).await
    })
    .await;
    let out = match super::cloud_cmd::finished(ctx, out)? {
        Ok(o) => o,
        Err(outcome) => return Ok(outcome),
    };
    if ctx.json {
        print_json(&serde_json::json!({"plan": p.name, "point": pt, "servers": out}))?;
        return Ok(Outcome::Ok);
    }
    println!("plan {} is up in {}:", escape(&p.name), escape(target));
    for o in &out {
        println!(
            "  {}: server {} ({}) is {}{}",
            escape(&o.vm),
            o.server.id,
            o.server.name,
            o.server.status,
            if o.server.addresses.is_empty() {
                String::new()
            } else {
                format!(" at {}", o.server.addresses.join(", "))
            }
        );
    }
    Ok(Outcome::Ok)
}
