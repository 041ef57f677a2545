//! `cloud ls`, `cloud-restore` and `export`: the faces of `lifeboat_core::cloud`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use lifeboat_core::cloud::{self, export, CloudPlan};
use lifeboat_core::text::escape;

use super::progress::{run_job_async, run_job_async_lines};
use super::{print_json, Ctx, Outcome};
use crate::output::{bytes, duration};

#[derive(Debug, clap::Args)]
pub struct CloudRestoreArgs {
    /// The VM set to bring up: VM@latest, VM@~1, VM@2026-11-20.
    #[arg(required_unless_present = "plan")]
    pub reference: Option<String>,
    /// Bring up every VM of this recovery plan, in start order, on the
    /// target's network; a failure removes all of them.
    #[arg(long, value_name = "NAME", conflicts_with = "reference")]
    pub plan: Option<String>,
    /// With --plan: each VM's newest backup at or before this time.
    #[arg(long, value_name = "TIME", requires = "plan")]
    pub at: Option<String>,
    /// The `[cloud.NAME]` target.
    #[arg(long)]
    pub target: String,
    /// Read the backups from this remote (name or URL) instead of the
    /// local repository; nothing is written locally.
    #[arg(long, value_name = "REMOTE")]
    pub from: Option<String>,
    /// Show the plan and create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// On failure or cancel, leave what was created (for a look) instead
    /// of removing it.
    #[arg(long)]
    pub keep_on_failure: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// One backed-up volume: VM/VOLUME@latest or a backup id.
    pub reference: String,
    /// Where the image goes: s3://bucket/path/disk.vhd
    pub url: String,
    #[arg(long, value_parser = ["raw", "qcow2", "vmdk", "vhd"], default_value = "raw")]
    pub format: String,
    /// Read the backup from this remote instead of the local repository.
    #[arg(long, value_name = "REMOTE")]
    pub from: Option<String>,
    /// Take the endpoint, region, path style and key variables from this
    /// configured S3 remote.
    #[arg(long, value_name = "REMOTE")]
    pub s3_remote: Option<String>,
    #[command(flatten)]
    pub s3: super::remote_cmds::S3Args,
    /// Scratch space for converted formats (default $TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Show the plan and upload nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn target<'a>(ctx: &'a Ctx, name: &str) -> anyhow::Result<&'a cloud::CloudConfig> {
    ctx.config.clouds.get(name).ok_or_else(|| {
        let known: Vec<&str> = ctx.config.clouds.keys().map(|s| s.as_str()).collect();
        anyhow::anyhow!(
            "no cloud target named {} in the config (configured: {}); add a [cloud.NAME] table",
            escape(name),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    })
}

/// The store backups are read from: a remote, or the local repository.
pub(super) fn source(
    ctx: &Ctx,
    from: Option<&str>,
) -> anyhow::Result<(String, lifeboat_core::store::DynStore)> {
    Ok(match from {
        Some(r) => ctx.remote(r)?,
        None => ("local".into(), ctx.target(None)?.0),
    })
}

pub async fn cloud_ls(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let checks = futures::future::join_all(ctx.config.clouds.iter().map(|(n, c)| async move {
        match tokio::time::timeout(
            std::time::Duration::from_secs(60),
            cloud::check_target(n, c),
        )
        .await
        {
            Ok(c) => c,
            Err(_) => cloud::TargetCheck {
                target: n.clone(),
                provider: c.provider,
                ok: false,
                checks: vec!["failed: no answer within 60 s".into()],
            },
        }
    }))
    .await;
    let all_ok = checks.iter().all(|c| c.ok);
    if ctx.json {
        print_json(&checks)?;
    } else if checks.is_empty() {
        println!("no cloud targets: add a [cloud.NAME] table to the config");
    } else {
        for c in &checks {
            println!(
                "{}  {}  {}",
                c.target,
                c.provider.as_str(),
                if c.ok { "ok" } else { "FAILED" }
            );
            for l in &c.checks {
                println!("    {}", escape(l));
            }
        }
    }
    Ok(if all_ok {
        Outcome::Ok
    } else {
        Outcome::Unreachable
    })
}

/// A cloud restore's result: what it made, or a cancel (said, with what
/// its cleanup removed) as the command's outcome.
pub fn finished<T>(ctx: &Ctx, out: lifeboat_core::Result<T>) -> anyhow::Result<Result<T, Outcome>> {
    match out {
        Ok(o) => Ok(Ok(o)),
        Err(lifeboat_core::Error::Cancelled) => Ok(Err(Outcome::Cancelled)),
        Err(e @ lifeboat_core::Error::CloudCancelled { .. }) => {
            if ctx.json {
                print_json(&serde_json::json!({"cancelled": true, "error": e.to_string()}))?;
            } else {
                eprintln!("{e}");
            }
            Ok(Err(Outcome::Cancelled))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn print_plan(p: &CloudPlan, upload_limit: Option<u64>) {
    for line in p.lines(upload_limit) {
        println!("{line}");
    }
}

pub async fn cloud_restore(ctx: &Ctx, a: CloudRestoreArgs) -> anyhow::Result<Outcome> {
    if let Some(plan) = &a.plan {
        return super::plan_cmd::cloud_restore(
            ctx,
            plan,
            a.at.clone(),
            &a.target,
            a.from.clone(),
            a.dry_run,
            a.keep_on_failure,
        )
        .await;
    }
    let reference = a.reference.clone().unwrap_or_default();
    let cfg = target(ctx, &a.target)?.clone();
    let provider: Arc<dyn cloud::Provider> = Arc::from(cloud::open(&a.target, &cfg)?);
    let (from, store) = source(ctx, a.from.as_deref())?;
    let plan = cloud::plan(
        &a.target,
        provider.as_ref(),
        cfg.provider,
        &store,
        &from,
        &reference,
    )
    .await?;
    if a.dry_run {
        if ctx.json {
            print_json(&serde_json::json!({"dry_run": true, "plan": plan}))?;
        } else {
            print_plan(&plan, ctx.config.overrides.limits.upload);
            println!("dry run: nothing was created");
        }
        return Ok(Outcome::Ok);
    }
    if !ctx.json {
        print_plan(&plan, ctx.config.overrides.limits.upload);
    }
    let opts = cloud::ExecOptions {
        keep_on_failure: a.keep_on_failure,
        ready_timeout: Some(cfg.ready_timeout()),
        upload_limit: ctx.config.overrides.limits.upload,
    };
    let (p2, prov) = (plan.clone(), provider.clone());
    let out = run_job_async_lines("cloud-restore", ctx.json, move |c, p| async move {
        cloud::execute(&p2, prov.as_ref(), opts, &c, &p).await
    })
    .await;
    let out = match finished(ctx, out)? {
        Ok(o) => o,
        Err(outcome) => return Ok(outcome),
    };
    if ctx.json {
        print_json(&out)?;
    } else {
        println!(
            "server {} ({}) is {}",
            out.server.id, out.server.name, out.server.status
        );
        if out.server.addresses.is_empty() {
            println!("  addresses: none reported yet");
        }
        for a in &out.server.addresses {
            println!("  address: {a}");
        }
        println!("  console: {}", out.server.console);
        println!(
            "  uploaded {} in {} ({}/s); whole restore {}",
            bytes(out.uploaded_bytes),
            duration(out.upload_seconds),
            bytes((out.uploaded_bytes as f64 / out.upload_seconds.max(0.001)) as u64),
            duration(out.seconds)
        );
        println!("  created:");
        for r in &out.created {
            println!("    {r}");
        }
    }
    Ok(Outcome::Ok)
}

pub async fn export_cmd(ctx: &Ctx, a: ExportArgs) -> anyhow::Result<Outcome> {
    let format: export::ExportFormat = a.format.parse()?;
    let mut t = export::ExportTarget {
        url: a.url.clone(),
        endpoint: a.s3.endpoint.clone(),
        region: a.s3.region.clone(),
        path_style: a.s3.path_style,
        access_key_id_env: a.s3.access_key_id_env.clone(),
        secret_access_key_env: a.s3.secret_access_key_env.clone(),
    };
    if let Some(r) = &a.s3_remote {
        let rc = ctx
            .config
            .remote(r)
            .with_context(|| format!("no remote named {} in the config", escape(r)))?;
        if !rc.url.starts_with("s3://") {
            anyhow::bail!("remote {} is not an S3 remote", escape(r));
        }
        t.endpoint = t.endpoint.or(rc.endpoint.clone());
        t.region = t.region.or(rc.region.clone());
        t.path_style |= rc.path_style;
        t.access_key_id_env = t.access_key_id_env.or(rc.access_key_id_env.clone());
        t.secret_access_key_env = t.secret_access_key_env.or(rc.secret_access_key_env.clone());
    }
    let (from, store) = source(ctx, a.from.as_deref())?;
    let mut plan = export::plan(
        &store,
        &from,
        &a.reference,
        format,
        &t,
        a.scratch.as_deref(),
    )
    .await?;
    plan.upload_limit = ctx.config.overrides.limits.upload;
    if a.dry_run || !ctx.json {
        if ctx.json {
            print_json(&serde_json::json!({"dry_run": true, "plan": plan}))?;
            return Ok(Outcome::Ok);
        }
        println!(
            "export {}/{} backup {} ({}) from {} to s3://{}/{} as {}{}",
            plan.vm,
            plan.volume,
            plan.manifest.get(..12).unwrap_or(&plan.manifest),
            bytes(plan.image_size),
            escape(&plan.from),
            plan.bucket,
            plan.key,
            a.format,
            if plan.scratch_bytes > 0 {
                format!(
                    " (needs about {} of scratch space in {})",
                    bytes(plan.scratch_bytes),
                    plan.scratch_dir
                        .as_ref()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                )
            } else {
                " (streamed, no scratch space)".into()
            }
        );
        if a.dry_run {
            println!("dry run: nothing was uploaded");
            return Ok(Outcome::Ok);
        }
    }
    let p2 = plan.clone();
    let out = run_job_async("export", ctx.json, move |c, p| async move {
        export::execute(&p2, &c, &p).await
    })
    .await;
    let out = match out {
        Ok(o) => o,
        Err(lifeboat_core::Error::Cancelled) => return Ok(Outcome::Cancelled),
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        print_json(&out)?;
    } else {
        println!(
            "uploaded {} to {} in {} parts, {} ({}/s); SHA-256 {}",
            bytes(out.bytes),
            out.url,
            out.parts,
            duration(out.seconds),
            bytes((out.bytes as f64 / out.seconds.max(0.001)) as u64),
            out.sha256
        );
    }
    Ok(Outcome::Ok)
}
