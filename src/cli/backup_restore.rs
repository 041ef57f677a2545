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
    recovery_key_out: Option<PathBuf>,
) -> anyhow::Result<Outcome> {
    let path = path.unwrap_or_else(|| ctx.repo_path());
    let mut config = RepoConfig::new(chunk_size, level)?;
    if let Some(out) = &recovery_key_out {
        let pass = lifeboat_core::crypto::read_secret_file("LIFEBOAT_PASSPHRASE_FILE")?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--encrypt needs a passphrase: put it in a private file and name the file in LIFEBOAT_PASSPHRASE_FILE"
                )
            })?;
        let key = lifeboat_core::crypto::MasterKey::generate();
        config = config.encrypted(lifeboat_core::crypto::Encryption::new(&key, &pass)?);
        // The recovery key is on disk (private, new) before the repository
        // exists: no encrypted repository without a way back in.
        lifeboat_core::durable::write_new_private(
            out,
            format!("{}\n", key.recovery_text().as_str()).as_bytes(),
        )?;
        lifeboat_core::crypto::unlock(&key);
    }
    let repo = Repo::init(&path, config)?;
    if ctx.json {
        // The config without its key slots (wrapped keys stay in the repository).
        let mut shown = serde_json::to_value(&repo.config)?;
        if let Some(e) = shown.get_mut("encryption").and_then(|e| e.as_object_mut()) {
            e.remove("slots");
        }
        print_json(&serde_json::json!({"path": path, "config": shown}))?;
    } else {
        println!(
            "created repository {} at {} (chunk size {}, zstd level {})",
            repo.config.id,
            path.display(),
            bytes(chunk_size),
            level
        );
        if let (Some(out), Some(enc)) = (&recovery_key_out, &repo.config.encryption) {
            println!(
                "encrypted (key {}); its recovery key is in {}: print it, keep it offline, then delete the file — a repository whose key is lost is lost",
                &enc.key_id[..8],
                out.display()
            );
        }
    }
    Ok(Outcome::Ok)
}

/// `key export`: the recovery key, for paper.
fn key_export(ctx: &Ctx) -> anyhow::Result<Outcome> {
    if ctx.json {
        anyhow::bail!("key export prints a secret for paper: run it without --json");
    }
    let repo = ctx.open_repo()?;
    let Some(enc) = &repo.config.encryption else {
        anyhow::bail!("{} is not encrypted: it has no key", repo.root().display());
    };
    let key = lifeboat_core::crypto::key_from_env(enc)?.ok_or_else(|| {
        lifeboat_core::Error::Locked(format!("the repository at {}", repo.root().display()))
    })?;
    println!("{}", key.recovery_text().as_str());
    Ok(Outcome::Ok)
}
/// `key export`, and `key list`/`add`/`remove`: the passphrase slots of the local
/// repository's config (a pushed copy keeps the slots it was made with).
pub fn key(ctx: &Ctx, action: super::KeyAction) -> anyhow::Result<Outcome> {
    let mut repo = ctx.open_repo()?;
    let Some(mut enc) = repo.config.encryption.clone() else {
        anyhow::bail!(
            "{} is not encrypted: it has no key slots",
            repo.root().display()
        );
    };
    let locked =
        || lifeboat_core::Error::Locked(format!("the repository at {}", repo.root().display()));
    match action {
        super::KeyAction::Export => return key_export(ctx),
        super::KeyAction::List => {
            if ctx.json {
                let slots: Vec<_> = enc
                    .slots
                    .iter()
                    .map(|s| serde_json::json!({"name": s.name, "kdf": s.kdf, "m_kib": s.m_kib, "t": s.t, "p": s.p}))
                    .collect();
                print_json(&serde_json::json!({"key_id": enc.key_id, "slots": slots}))?;
            } else {
                println!(
                    "key {} — {} passphrase slot(s)",
                    &enc.key_id[..8],
                    enc.slots.len()
                );
                for s in &enc.slots {
                    println!(
                        "  {}  {} {} MiB, {} passes",
                        lifeboat_core::text::escape(&s.name),
                        s.kdf,
                        s.m_kib / 1024,
                        s.t
                    );
                }
            }
            return Ok(Outcome::Ok);
        }
        super::KeyAction::Add {
            name,
            passphrase_file,
        } => {
            let key = lifeboat_core::crypto::key_from_env(&enc)?.ok_or_else(locked)?;
            let pass = lifeboat_core::crypto::read_secret_path(&passphrase_file)?;
            enc.add_slot(&key, &name, &pass)?;
            repo.set_encryption(enc)?;
            say(ctx, &format!("added key slot {name}"), "added", &name)?;
        }
        super::KeyAction::Remove { name, force } => {
            // Only someone who can open the repository removes a way in.
            lifeboat_core::crypto::key_from_env(&enc)?.ok_or_else(locked)?;
            enc.remove_slot(&name, force)?;
            repo.set_encryption(enc)?;
            say(ctx, &format!("removed key slot {name}"), "removed", &name)?;
        }
    }
    Ok(Outcome::Ok)
}

fn say(ctx: &Ctx, human: &str, what: &str, name: &str) -> anyhow::Result<()> {
    if ctx.json {
        print_json(&serde_json::json!({ what: name }))
    } else {
        println!("{human}");
        Ok(())
    }
}

/// Whether the command line names files (`--volume NAME=PATH`) rather
/// than the inventory's volumes.
fn volumes_given(volumes: &[String]) -> bool {
    volumes.iter().any(|v| v.contains('='))
}

pub async fn backup(
    ctx: &Ctx,
    vm: String,
    volumes: Vec<String>,
    format: FormatChoice,
    note: Option<String>,
) -> anyhow::Result<Outcome> {
    // A libvirt domain without a [[vm]] entry is backed up by name
    // (virsh, bounded: off the async threads).
    let mut config = ctx.config.clone();
    let name = vm.clone();
    let given = volumes_given(&volumes);
    let config = tokio::task::spawn_blocking(move || {
        if given {
            return Ok(config);
        }
        config.adopt_libvirt_domain(&name).map(|_| config)
    })
    .await??;
    let mut req = lifeboat_core::config::requests::backup_request(&config, &vm, &volumes, format)?;
    let repo = ctx.open_repo()?;
    req.note = note;
    req.definition = config.definition_for_backup(&vm);
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
    /// A VM@... set: define the restored VM with `virsh define` (on
    /// `[libvirt] uri`). Refused when a domain of that name exists (use
    /// --name); NICs on networks this host lacks are removed and listed.
    #[arg(long)]
    pub define: bool,
    /// With --define: start the defined VM (`virsh start`).
    #[arg(long, requires = "define")]
    pub start: bool,
    /// A VM@... set: the restored domain's name (default: the VM's); onto
    /// rbd:POOL, its images are NAME-VOLUME (default: each volume's own
    /// RBD image name, or VM-VOLUME).
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
    let onto_rbd = lifeboat_core::source::rbd::RbdImage::is_rbd(&to);
    let step = lifeboat_core::vm::restore::VmStep::for_request(
        is_set,
        onto_rbd,
        vm_args.define,
        vm_args.start,
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
        ceph: ctx.config.ceph.clone().unwrap_or_default(),
        name: vm_args.name.clone().filter(|_| is_set && onto_rbd),
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
    // A name clash or an unknown domain fails now, before a byte is written.
    if let Some(vm) = plan.volumes.first().map(|v| v.vm.clone()) {
        let (s, uri) = (
            step.clone(),
            ctx.config.libvirt.as_ref().and_then(|l| l.uri.clone()),
        );
        tokio::task::spawn_blocking(move || s.preflight(uri.as_deref(), &vm)).await??;
    }
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
    let fetch = plan.fetch.clone();
    let store = remote.as_ref().map(|(_, s)| s.clone());
    let outcomes = run_job_async("restore", ctx.json, move |c, p| async move {
        restore::execute(plan, store.as_deref(), &local_path, &c, &p).await
    })
    .await?;
    let repo = ctx.open_repo()?;
    let json = ctx.json;
    let done = lifeboat_core::vm::restore::finish(
        &step,
        ctx.config.libvirt.as_ref().and_then(|l| l.uri.as_deref()),
        &repo,
        &picked,
        &outcomes,
        |vm| ctx.config.definition_for_backup(vm),
        |lines| {
            if !json {
                for line in lines {
                    println!("{line}");
                }
            }
        },
    );
    if ctx.json {
        use lifeboat_core::vm::restore::StepDone;
        let (vm, defined, attached) = match &done {
            Ok(StepDone::Domain { vm, defined }) => (
                serde_json::to_value(vm)?,
                defined.as_ref().map(|d| match d {
                    Ok(out) => serde_json::json!({"ok": true, "output": out}),
                    Err(e) => serde_json::json!({"ok": false, "error": e}),
                }),
                None,
            ),
            Ok(a @ StepDone::Attached { .. }) => {
                (serde_json::Value::Null, None, a.lines().into_iter().next())
            }
            _ => (serde_json::Value::Null, None, None),
        };
        print_json(&serde_json::json!({
            "volumes": outcomes,
            "vm": vm,
            "defined": defined,
            "attached": attached,
        }))?;
    } else {
        print_restored(&fetch, &remote, &summary, &outcomes);
    }
    let failed = match done {
        Ok(d) => {
            if !ctx.json {
                for line in d.lines() {
                    println!("{line}");
                }
            }
            d.failure().map(|f| anyhow::anyhow!(f))
        }
        Err(e) => Some(anyhow::Error::new(e).context(match step {
            lifeboat_core::vm::restore::VmStep::Attach { .. } => {
                "the volume is restored, but not attached"
            }
            _ => "the volumes are restored, but the VM is not",
        })),
    };
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

fn print_restore_plan(plan: &SetRestorePlan, remote: Option<&str>) {
    for line in plan.lines(remote) {
        println!("{line}");
    }
}
