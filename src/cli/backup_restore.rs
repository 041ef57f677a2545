//! Commands that write: init, backup, restore; and verify.

use std::path::PathBuf;

use anyhow::{bail, Context};
use lifeboat::backup::{BackupRequest, VolumeSpec};
use lifeboat::repo::manifest::{ImageFormat, Role};
use lifeboat::repo::refs::{self, Ref};
use lifeboat::repo::verify::{self, VerifyReport};
use lifeboat::repo::{Repo, RepoConfig};
use lifeboat::restore::{self, RestorePlan};
use lifeboat::source::FormatChoice;

use super::output::{bytes, duration};
use super::progress::run_job;
use super::{print_json, Ctx, OutFormat, Outcome};

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

fn volume_specs(
    ctx: &Ctx,
    vm: &str,
    args: &[String],
    format: FormatChoice,
) -> anyhow::Result<Vec<VolumeSpec>> {
    let inv = ctx.config.vm(vm);
    let where_ = || {
        ctx.config
            .path
            .as_ref()
            .map(|p| format!("the config {}", p.display()))
            .unwrap_or_else(|| "the config (none loaded)".into())
    };
    let from_inventory = |name: &str| -> anyhow::Result<VolumeSpec> {
        let Some(vmc) = inv else {
            bail!(
                "VM {vm:?} is not in {}: pass --volume NAME=PATH to back up a file directly",
                where_()
            )
        };
        let v = vmc
            .volumes
            .iter()
            .find(|v| v.name.get_ref() == name)
            .with_context(|| format!("VM {vm:?} has no volume {name:?} in {}", where_()))?;
        Ok(VolumeSpec {
            name: v.name.get_ref().clone(),
            role: v.role,
            path: v.path.clone(),
            format: v.format,
        })
    };
    if args.is_empty() {
        let Some(vmc) = inv else {
            bail!(
                "VM {vm:?} is not in {}: pass --volume NAME=PATH to back up a file directly",
                where_()
            )
        };
        return vmc
            .volumes
            .iter()
            .map(|v| from_inventory(v.name.get_ref()))
            .collect();
    }
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((name, path)) => Ok(VolumeSpec {
                name: name.to_string(),
                role: if name == "root" {
                    Role::Root
                } else {
                    Role::Data
                },
                path: PathBuf::from(path),
                format,
            }),
            None => from_inventory(a),
        })
        .collect()
}

pub async fn backup(
    ctx: &Ctx,
    vm: String,
    volumes: Vec<String>,
    format: FormatChoice,
    note: Option<String>,
) -> anyhow::Result<Outcome> {
    lifeboat::names::check_name("VM", &vm)?;
    let repo = ctx.open_repo()?;
    let req = BackupRequest {
        volumes: volume_specs(ctx, &vm, &volumes, format)?,
        vm,
        note,
        created_at: None,
    };
    let result = run_job("backup", ctx.json, move |c, p| {
        lifeboat::backup::backup(&repo, &req, c, p)
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
                &v.manifest[..12],
                bytes(v.stats.logical_bytes),
                bytes(v.stats.nonzero_bytes),
                bytes(v.stats.new_stored_bytes),
                v.stats.new_chunks,
                duration(v.seconds)
            );
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
    let report: VerifyReport = run_job("verify", ctx.json, move |c, p| {
        verify::verify(&repo, keys, deep, c, p)
    })
    .await?;
    if ctx.json {
        print_json(&report)?;
    } else {
        println!(
            "{} check: {} backups, {} indexes, {} chunks{}",
            if deep { "deep" } else { "quick" },
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

pub async fn restore(
    ctx: &Ctx,
    reference: &str,
    to: PathBuf,
    format: Option<OutFormat>,
    force: bool,
    dry_run: bool,
    from: Option<String>,
) -> anyhow::Result<Outcome> {
    let is_set = matches!(Ref::parse(reference)?, Ref::Set { .. });
    let all = match &from {
        Some(remote) => super::remote_cmds::fetch_for_restore(ctx, remote, reference).await?,
        None => ctx.open_repo()?.load_all()?,
    };
    let repo = ctx.open_repo()?;
    let picked: Vec<&(lifeboat::repo::ManifestKey, lifeboat::repo::Manifest)> = match &from {
        Some(_) => all.iter().collect(),
        None => refs::resolve_many(&all, reference)?,
    };
    let chosen = |orig: ImageFormat, path: &std::path::Path| match format {
        Some(OutFormat::Raw) => ImageFormat::Raw,
        Some(OutFormat::Qcow2) => ImageFormat::Qcow2,
        None if is_set => orig,
        None if path.extension().is_some_and(|e| e == "qcow2") => ImageFormat::Qcow2,
        None => ImageFormat::Raw,
    };
    if is_set && !to.is_dir() {
        if to.exists() {
            bail!(
                "{} is not a directory: a VM set restores into a directory",
                to.display()
            );
        }
        if !dry_run {
            std::fs::create_dir(&to)
                .with_context(|| format!("creating directory {}", to.display()))?;
        }
    }
    let mut plans: Vec<(RestorePlan, lifeboat::repo::Index)> = Vec::new();
    for (key, m) in picked {
        let index = repo.read_index(&m.index)?;
        let target = if is_set {
            let ext = match chosen(m.volume.format, &to) {
                ImageFormat::Raw => "raw",
                ImageFormat::Qcow2 => "qcow2",
            };
            to.join(format!("{}.{ext}", m.volume.name))
        } else {
            to.clone()
        };
        let fmt = chosen(m.volume.format, &target);
        let plan = if dry_run && is_set && !to.exists() {
            RestorePlan {
                manifest: key.id.to_hex(),
                vm: m.vm.name.clone(),
                volume: m.volume.name.clone(),
                target: target.clone(),
                format: fmt,
                image_size: index.image_size,
                bytes_to_write: index.nonzero_bytes(),
                overwrites: false,
            }
        } else {
            restore::plan(&key.id.to_hex(), m, &index, &target, fmt, force)?
        };
        plans.push((plan, index));
    }
    if dry_run {
        if ctx.json {
            let p: Vec<_> = plans.iter().map(|(p, _)| p).collect();
            print_json(&serde_json::json!({"dry_run": true, "plan": p}))?;
        } else {
            for (p, _) in &plans {
                println!(
                    "would restore {}/{} ({}) to {} as {}: {} image, {} to write{}",
                    p.vm,
                    p.volume,
                    &p.manifest[..12],
                    p.target.display(),
                    p.format,
                    bytes(p.image_size),
                    bytes(p.bytes_to_write),
                    if p.overwrites {
                        ", REPLACING the existing file"
                    } else {
                        ""
                    }
                );
            }
        }
        return Ok(Outcome::Ok);
    }
    let mut outcomes = Vec::new();
    for (plan, index) in plans {
        let r = repo.clone();
        let pl = plan.clone();
        let out = run_job("restore", ctx.json, move |c, p| {
            restore::restore(&r, &index, &pl, c, p)
        })
        .await?;
        if !ctx.json {
            println!(
                "restored {}/{} ({}) to {} as {}: {} image, {} written",
                plan.vm,
                plan.volume,
                &plan.manifest[..12],
                out.target.display(),
                out.format,
                bytes(out.image_size),
                bytes(out.bytes_written)
            );
        }
        outcomes.push(out);
    }
    if ctx.json {
        print_json(&outcomes)?;
    }
    Ok(Outcome::Ok)
}
