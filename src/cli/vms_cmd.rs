//! `lifeboat vms`: per VM, whether it runs (its QMP monitor says), how
//! consistent its newest backup is, and whether the next backup reads only
//! what changed.

use lifeboat_core::format::manifest::Capture;
use lifeboat_core::live::{self, Outlook};
use lifeboat_core::text::escape;
use serde::Serialize;

use super::{print_json, Ctx, Outcome};

#[derive(Serialize)]
struct VmState {
    vm: String,
    /// The libvirt domain it is (from the config or found in `[libvirt]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    libvirt_domain: Option<String>,
    /// The policy that backs it up (None: no policy covers it).
    policy: Option<String>,
    /// Its volumes and the files they are read from.
    volumes: Vec<VolumeState>,
    /// When its newest backup in this repository was taken.
    last_backup_at: Option<String>,
    /// Why a libvirt domain cannot be backed up by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    /// None: no `qmp` configured.
    run: Option<live::RunState>,
    /// The newest backup's capture record (None before the first backup,
    /// or for a backup by an older lifeboat).
    last_backup: Option<Capture>,
    next: Vec<live::VolumeOutlook>,
    /// What a killed backup left in the running QEMU.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    leftovers: Vec<String>,
    /// What `--repair` removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repaired: Vec<String>,
}

#[derive(Serialize)]
struct VolumeState {
    name: String,
    path: String,
}

pub async fn vms(ctx: &Ctx, only: Option<String>, repair: bool) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let mut config = ctx.config.clone();
    let states = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<VmState>> {
        // The host's libvirt domains join the config's VMs.
        let domains = match &only {
            Some(vm) => {
                config.adopt_libvirt_domain(vm)?;
                if config.vm(vm).is_none() {
                    anyhow::bail!("VM {} is not in the config", escape(vm));
                }
                None
            }
            // The config's VMs are still shown when libvirt does not answer.
            None => config.adopt_libvirt_domains().unwrap_or_else(|e| {
                eprintln!(
                    "warning: libvirt: cannot list domains: {}",
                    escape(&e.to_string())
                );
                None
            }),
        };
        let backups = repo.load_all()?;
        let mut out = Vec::new();
        for v in &config.vms {
            let name = v.name.get_ref();
            if only.as_ref().is_some_and(|o| o != name) {
                continue;
            }
            let Some(Outlook {
                run,
                volumes,
                mut leftovers,
            }) = lifeboat_core::config::requests::live_outlook(
                &config,
                name,
                &backups,
                repo.chunk_size(),
            )
            else {
                continue;
            };
            let mut repaired = Vec::new();
            if repair && !leftovers.is_empty() {
                repaired = lifeboat_core::config::requests::live_repair(
                    &config,
                    name,
                    &backups,
                    repo.chunk_size(),
                )?;
                leftovers.clear();
            }
            let newest = backups.iter().rev().find(|(k, _)| &k.vm == name);
            let last_backup = newest.and_then(|(_, m)| m.capture.clone());
            out.push(VmState {
                vm: name.clone(),
                libvirt_domain: v.libvirt_domain.clone(),
                policy: v
                    .policy
                    .as_ref()
                    .or(config.default_policy.as_ref())
                    .map(|p| p.get_ref().clone())
                    .filter(|_| config.policy_for(name).is_some()),
                volumes: v
                    .volumes
                    .iter()
                    .map(|x| VolumeState {
                        name: x.name.get_ref().clone(),
                        path: config.resolve(&x.path).display().to_string(),
                    })
                    .collect(),
                last_backup_at: newest.map(|(_, m)| {
                    m.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                }),
                problem: None,
                run,
                last_backup,
                next: volumes,
                leftovers,
                repaired,
            });
        }
        for d in domains.into_iter().flatten() {
            let Some(problem) = d.problem else { continue };
            out.push(VmState {
                vm: d.name.clone(),
                libvirt_domain: Some(d.name),
                policy: None,
                volumes: Vec::new(),
                last_backup_at: None,
                problem: Some(problem),
                run: Some(live::RunState {
                    running: lifeboat_core::live::libvirt::is_live(&d.state),
                    status: format!("libvirt: {}", d.state),
                }),
                last_backup: None,
                next: Vec::new(),
                leftovers: Vec::new(),
                repaired: Vec::new(),
            });
        }
        Ok(out)
    })
    .await??;
    if ctx.json {
        print_json(&states)?;
        return Ok(Outcome::Ok);
    }
    if states.is_empty() {
        println!("no VMs in the config: list them as [[vm]] entries");
    }
    for s in &states {
        let run = match &s.run {
            None => "no qmp or libvirt_domain configured".to_string(),
            Some(r) => escape(&r.status).into_owned(),
        };
        let last = match &s.last_backup {
            None => "no capture record".to_string(),
            Some(c) => format!(
                "{}{}",
                c.consistency,
                c.note
                    .as_deref()
                    .map(|n| format!(" ({})", escape(n)))
                    .unwrap_or_default()
            ),
        };
        println!(
            "{}{}",
            escape(&s.vm),
            match &s.libvirt_domain {
                Some(d) if d != &s.vm => format!(" (libvirt domain {})", escape(d)),
                Some(_) => " (libvirt domain)".into(),
                None => String::new(),
            }
        );
        if let Some(p) = &s.problem {
            println!("  running:     {run}");
            println!("  not backed up by name: {}", escape(p));
            continue;
        }
        println!("  running:     {run}");
        println!(
            "  policy:      {}",
            s.policy
                .as_deref()
                .map(|p| escape(p).into_owned())
                .unwrap_or_else(|| "none covers it (backed up only by hand)".into())
        );
        for v in &s.volumes {
            println!("  volume {}: {}", escape(&v.name), escape(&v.path));
        }
        println!(
            "  last backup: {}{last}",
            s.last_backup_at
                .as_deref()
                .map(|t| format!("{t}, "))
                .unwrap_or_else(|| "never, ".into())
        );
        if !s.leftovers.is_empty() {
            let cost = if s.leftovers.iter().all(|l| l.starts_with("RBD snapshot")) {
                "they keep the data they held in Ceph"
            } else {
                "QEMU copies every guest write into them and the guest's writes are slower"
            };
            println!(
                "  LEFTOVERS of a killed backup: {} — {cost}; `lifeboat vms {} --repair` removes them (the next backup would too)",
                s.leftovers.join(", "),
                escape(&s.vm)
            );
        }
        for r in &s.repaired {
            println!("  repaired: removed {r}");
        }
        for v in &s.next {
            match &v.reason {
                None => println!(
                    "  next {}: incremental ({})",
                    escape(&v.volume),
                    if s.libvirt_domain.is_some() {
                        "libvirt checkpoint"
                    } else {
                        "dirty bitmap"
                    }
                ),
                Some(r) => println!("  next {}: full read: {}", escape(&v.volume), escape(r)),
            }
        }
    }
    Ok(Outcome::Ok)
}
