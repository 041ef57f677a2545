//! Commands that write: init, backup, restore; and verify.

use std::path::PathBuf;

use lifeboat_core::format::manifest::ImageFormat;
use lifeboat_core::format::refs;
use lifeboat_core::format::repo_config::RepoConfig;
use lifeboat_core::repo::verify::{self, VerifyReport};
use lifeboat_core::repo::Repo;
use lifeboat_core::restore::{self, RestorePlan, RestoreRequest, SetRestorePlan};
use lifeboat_core::source::FormatChoice;

use super::progress::{run_job, run_job_async};
use super::{print_json, Ctx, OutFormat, Outcome};
use crate::output::{bytes, duration};

pub fn init(
    ctx: &Ctx,
    path: Option<PathBuf>,
    chunk_size: u64,
    level: i32,
) -> anyhow::Result<Outcome> {
    let path = path.unwrap_or_else(|| ctx.repo_path());
    let repo = Repo::init(&path, RepoConfig::new(chunk_size, level)?)?;
    if ctx.json {
        print_json(&serde_json::json!({"path": path, "config": repo.config}))?;
    } else {
        println!(
            "created repository {} at {} (chunk size {}, zstd level {})",
            repo.config.id,
            path.display(),
            bytes(chunk_size),
            level
        );
    }
    Ok(Outcome::Ok)
}
pub async fn backup(
    ctx: &Ctx,
    vm: String,
    volumes: Vec<String>,
    format: FormatChoice,
    note: Option<String>,
) -> anyhow::Result<Outcome> {
    let mut req =
        lifeboat_core::config::requests::backup_request(&ctx.config, &vm, &volumes, format)?;
    let repo = ctx.open_repo()?;
    req.note = note;
    req.definition = ctx.config.definition_for_backup(&vm);
    let result = run_job("backup", ctx.json, move |c, p| {
        lifeboat_core::backup::backup(&repo, &req, c, p)
    })
    .await?;
    if ctx.json {
        print_json(&result)?;
    } else {
        for v in &result.volumes {
            println!(
                "{}/{}: backup {} — {} image, {} data, {} new in {} chunks, {}",
                result.vm,
                v.volume,
                v.manifest.short(),
                bytes(v.stats.logical_bytes),
                bytes(v.stats.nonzero_bytes),
                bytes(v.stats.new_stored_bytes),
                v.stats.new_chunks,
                duration(v.seconds)
            );
            if let Some(c) = &v.capture {
                println!("  {}", lifeboat_core::text::escape(&c.summary()));
            }
        }
    }
    Ok(Outcome::Ok)
}

pub async fn verify(ctx: &Ctx, deep: bool, references: Vec<String>) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let keys = if references.is_empty() {
        None
    } else {
        let all = repo.load_all()?;
        let mut keys = Vec::new();
        for r in &references {
            for (k, _) in refs::resolve_many(&all, r)? {
                keys.push(k.clone());
            }
        }
        Some(keys)
    };
    let root = repo.root().to_path_buf();
    let report: VerifyReport = run_job("verify", ctx.json, move |c, p| {
        verify::verify(&repo, keys, deep, c, p)
    })
    .await?;
    // The console shows each backup's verify state from this record.
    if let Err(e) =
        lifeboat_core::repo::state::record_verify(&root, &report.marks(chrono::Utc::now()))
    {
        tracing::warn!("could not record the verify result: {e}");
    }
    print_verify(ctx, &report, None)
}

/// `verify --remote`: the remote's copy, read through its API.
pub async fn verify_remote(ctx: &Ctx, deep: bool, name: &str) -> anyhow::Result<Outcome> {
    let (_, store) = ctx.remote(name)?;
    let report: VerifyReport = run_job_async("verify", ctx.json, move |c, p| async move {
        lifeboat_core::sync::verify::verify_remote(store.as_ref(), deep, &c, &p).await
    })
    .await?;
    print_verify(ctx, &report, Some(name))
}

fn print_verify(ctx: &Ctx, report: &VerifyReport, remote: Option<&str>) -> anyhow::Result<Outcome> {
    let deep = report.deep;
    if ctx.json {
        print_json(report)?;
    } else {
        println!(
            "{} check{}: {} backups, {} indexes, {} chunks{}",
            if deep { "deep" } else { "quick" },
            remote.map(|r| format!(" of {r}")).unwrap_or_default(),
            report.manifests,
            report.indexes,
            report.chunks,
            if deep {
                format!(", {} read", bytes(report.bytes_read))
            } else {
                String::new()
            }
        );
        for p in &report.problems {
            println!("BAD {} {}: {}", p.kind, p.id, p.problem);
            for b in &p.breaks {
                println!("    breaks {b}");
            }
        }
        if report.ok() {
            println!("ok: no problems found");
        } else {
            println!("{} damaged objects", report.problems.len());
        }
    }
    Ok(if report.ok() {
        Outcome::Ok
    } else {
        Outcome::Damage
    })
}

/// What a VM restore does besides writing the volumes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmRestoreArgs {
    /// A VM@... set: keep the NICs' MAC addresses in the domain XML
    /// (default: removed, libvirt assigns new ones; keep them when the
    /// original VM is gone for good).
    #[arg(long)]
    pub keep_macs: bool,
    /// A VM@... set: define the restored VM with `virsh define`.
    #[arg(long)]
    pub define: bool,
    /// A VM@... set: the restored domain's name (default: the VM's).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// One volume: attach the restored file to this libvirt domain
    /// (`virsh attach-disk ... --persistent`).
    #[arg(long, value_name = "DOMAIN")]
    pub attach: Option<String>,
    /// With --attach: the guest device name (default: the volume's own
    /// from its backup's definition, else the first free vdX).
    #[arg(long, value_name = "DEV", requires = "attach")]
    pub target: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub async fn restore(
    ctx: &Ctx,
    reference: &str,
    to: PathBuf,
    format: Option<OutFormat>,
    force: bool,
    dry_run: bool,
    from: Option<String>,
    vm_args: VmRestoreArgs,
) -> anyhow::Result<Outcome> {
    let is_set = matches!(
        lifeboat_core::format::refs::Ref::parse(reference)?,
        lifeboat_core::format::refs::Ref::Set { .. }
    );
    let step = lifeboat_core::vm::restore::VmStep::for_request(
        is_set,
        vm_args.define,
        vm_args.keep_macs,
        vm_args.name.clone(),
        vm_args.attach.clone(),
        vm_args.target.clone(),
    )?;
    let req = RestoreRequest {
        reference: reference.to_string(),
        to,
        format: format.map(|f| match f {
            OutFormat::Raw => ImageFormat::Raw,
            OutFormat::Qcow2 => ImageFormat::Qcow2,
        }),
        force,
    };
    let local_path = ctx.repo_path();
    // Plan first, in the core; a dry run stops here having written nothing.
    let (plan, remote) = match &from {
        Some(remote_arg) => {
            let (name, store) = ctx.remote(remote_arg)?;
            let (r, lp) = (req.clone(), local_path.clone());
            let s = store.clone();
            let plan = run_job_async("plan", ctx.json, move |c, p| async move {
                restore::plan_remote(s.as_ref(), &lp, &r, !dry_run, &c, &p).await
            })
            .await?;
            (plan, Some((name, store)))
        }
        None => {
            let repo = ctx.open_repo()?;
            (restore::plan_local(&repo, &req)?, None)
        }
    };
    if dry_run {
        if ctx.json {
            print_json(&serde_json::json!({"dry_run": true, "plan": plan, "vm_step": step}))?;
        } else {
            print_restore_plan(&plan, remote.as_ref().map(|(n, _)| n.as_str()));
            for line in step.lines(&plan) {
                println!("{line}");
            }
        }
        return Ok(Outcome::Ok);
    }
    let summary: Vec<RestorePlan> = plan.volumes.clone();
    let picked = plan.picked.clone();
    let set_dir = plan
        .volumes
        .first()
        .and_then(|v| v.target.parent().map(|p| p.to_path_buf()));
    let fetch = plan.fetch.clone();
    let store = remote.as_ref().map(|(_, s)| s.clone());
    let outcomes = run_job_async("restore", ctx.json, move |c, p| async move {
        restore::execute(plan, store.as_deref(), &local_path, &c, &p).await
    })
    .await?;
    let repo = ctx.open_repo()?;
    let vm_done = match (&step, &set_dir) {
        (
            lifeboat_core::vm::restore::VmStep::Domain {
                define,
                keep_macs,
                name,
            },
            Some(dir),
        ) => Some(finish_vm(
            ctx,
            &repo,
            &picked,
            &outcomes,
            dir,
            (*define, *keep_macs, name.as_deref()),
        )),
        _ => None,
    };
    let attached = match (&step, picked.first(), outcomes.first()) {
        (lifeboat_core::vm::restore::VmStep::Attach { domain, target }, Some((_, m)), Some(o)) => {
            Some(attach_volume(&repo, m, o, domain, target.as_deref()))
        }
        _ => None,
    };
    if ctx.json {
        let vm = match &vm_done {
            Some(Ok(v)) => serde_json::to_value(&v.0)?,
            _ => serde_json::Value::Null,
        };
        print_json(&serde_json::json!({
            "volumes": outcomes,
            "vm": vm,
            "defined": vm_done
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .and_then(|v| v.1.as_ref())
                .map(|d| match d {
                    Ok(out) => serde_json::json!({"ok": true, "output": out}),
                    Err(e) => serde_json::json!({"ok": false, "error": e}),
                }),
            "attached": attached.as_ref().and_then(|r| r.as_ref().ok()),
        }))?;
    } else {
        print_restored(&fetch, &remote, &summary, &outcomes);
    }
    let mut failed = None;
    if let Some(r) = vm_done {
        match r {
            Ok((v, defined)) => {
                if !ctx.json {
                    print_vm_restore(&v, defined.as_ref());
                }
                if let lifeboat_core::vm::restore::Validation::Invalid(why) = &v.validation {
                    failed = Some(anyhow::anyhow!(
                        "the volumes are restored, but the domain XML {} does not validate against libvirt's schema: {why}",
                        v.domain_xml.display()
                    ));
                } else if let Some(Err(why)) = &defined {
                    failed = Some(anyhow::anyhow!(
                        "the volumes and the domain XML are restored, but the VM is not defined: {why}"
                    ));
                }
            }
            Err(e) => failed = Some(e.context("the volumes are restored, but the VM is not")),
        }
    }
    if let Some(r) = attached {
        match r {
            Ok(msg) if !ctx.json => println!("{msg}"),
            Ok(_) => {}
            Err(e) => failed = Some(e.context("the volume is restored, but not attached")),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(Outcome::Ok),
    }
}

fn print_restored(
    fetch: &Option<lifeboat_core::sync::PlanSummary>,
    remote: &Option<(String, lifeboat_core::store::DynStore)>,
    summary: &[RestorePlan],
    outcomes: &[lifeboat_core::restore::RestoreOutcome],
) {
    if let (Some(f), Some((name, _))) = (fetch, remote) {
        eprintln!(
            "fetched from {name}: {} chunks ({} of data), {} already local",
            f.chunks_to_send,
            bytes(f.data_bytes_to_send),
            f.chunks_already_there
        );
    }
    for (plan, out) in summary.iter().zip(outcomes) {
        println!(
            "restored {}/{} ({}) to {} as {}: {} image, {} written",
            plan.vm,
            plan.volume,
            plan.manifest.short(),
            out.target.display(),
            out.format,
            bytes(out.image_size),
            bytes(out.bytes_written)
        );
    }
}

/// The restored VM, and what `virsh define` said (None: not asked).
type VmDone = (
    lifeboat_core::vm::restore::VmRestore,
    Option<Result<String, String>>,
);

/// The domain XML (and `virsh define`) of a restored set.
fn finish_vm(
    ctx: &Ctx,
    repo: &Repo,
    picked: &[(
        lifeboat_core::format::ManifestKey,
        lifeboat_core::format::Manifest,
    )],
    outcomes: &[lifeboat_core::restore::RestoreOutcome],
    dir: &std::path::Path,
    (define, keep_macs, name): (bool, bool, Option<&str>),
) -> anyhow::Result<VmDone> {
    use lifeboat_core::vm::restore as vr;
    let vm = picked
        .first()
        .map(|(_, m)| m.vm.name.clone())
        .unwrap_or_default();
    let local = ctx.config.definition_for_backup(&vm);
    let (def, from) = vr::definition_of(repo, picked, local)?;
    let v = vr::write_vm(&def, from, picked, outcomes, dir, keep_macs, name)?;
    if define && !ctx.json {
        // The admin sees exactly what libvirt is handed, before it is.
        println!(
            "the domain XML handed to virsh define ({}):",
            v.domain_xml.display()
        );
        let xml = std::fs::read_to_string(&v.domain_xml).unwrap_or_default();
        for line in xml.lines() {
            println!("  | {}", lifeboat_core::text::escape(line));
        }
    }
    let defined = match (define, &v.validation) {
        (false, _) => None,
        (true, vr::Validation::Invalid(_)) => {
            Some(Err("not defined: the XML does not validate".to_string()))
        }
        (true, _) => Some(vr::define(&v.domain_xml).map_err(|e| e.to_string())),
    };
    Ok((v, defined))
}

fn print_vm_restore(
    v: &lifeboat_core::vm::restore::VmRestore,
    defined: Option<&Result<String, String>>,
) {
    use lifeboat_core::vm::restore::Validation;
    println!(
        "domain XML: {} (uuid {}, from the {} definition)",
        v.domain_xml.display(),
        v.uuid,
        v.definition
    );
    for c in &v.changes {
        println!("  {c}");
    }
    match &v.validation {
        Validation::Valid => println!("  valid against libvirt's schema (virt-xml-validate)"),
        Validation::Invalid(why) => println!("  INVALID against libvirt's schema: {why}"),
        Validation::Unchecked(why) => println!("  not validated: {why}"),
    }
    match defined {
        Some(Ok(out)) => println!("defined with virsh: {out}"),
        Some(Err(_)) | None => println!(
            "to define it where libvirt runs: virsh define {}",
            lifeboat_core::vm::qemu::shell_quote(&v.domain_xml.display().to_string())
        ),
    }
    println!(
        "without libvirt, boot it with (TCG emulation, which runs everywhere; where KVM works, -accel kvm runs it at full speed):\n  {}",
        v.qemu_command
    );
}

/// `--attach DOMAIN`: the restored volume attached with virsh.
fn attach_volume(
    repo: &Repo,
    m: &lifeboat_core::format::Manifest,
    o: &lifeboat_core::restore::RestoreOutcome,
    domain: &str,
    target: Option<&str>,
) -> anyhow::Result<String> {
    use lifeboat_core::vm::restore as vr;
    let from_def = m
        .definition
        .and_then(|d| repo.read_definition(&d).ok())
        .and_then(|d| d.spec.disks.into_iter().find(|x| x.volume == m.volume.name))
        .map(|d| d.target);
    let target = target
        .map(str::to_string)
        .or(from_def)
        .unwrap_or_else(|| "vdb".into());
    let args = vr::attach_command(domain, &o.target, &target, &o.format.to_string());
    let out = vr::attach(&args)?;
    Ok(format!("attached to {domain} as {target}: {out}"))
}

fn print_restore_plan(plan: &SetRestorePlan, remote: Option<&str>) {
    for line in plan.lines(remote) {
        println!("{line}");
    }
}
