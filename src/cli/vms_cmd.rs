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

pub async fn vms(ctx: &Ctx, only: Option<String>, repair: bool) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let config = ctx.config.clone();
    if let Some(vm) = &only {
        if config.vm(vm).is_none() {
            anyhow::bail!("VM {} is not in the config", escape(vm));
        }
    }
    let states = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<VmState>> {
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
                repaired = live::repair(&config.live_for(name))?;
                leftovers.clear();
            }
            let last_backup = backups
                .iter()
                .rev()
                .find(|(k, _)| &k.vm == name)
                .and_then(|(_, m)| m.capture.clone());
            out.push(VmState {
                vm: name.clone(),
                run,
                last_backup,
                next: volumes,
                leftovers,
                repaired,
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
            None => "no qmp configured".to_string(),
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
        println!("{}", escape(&s.vm));
        println!("  running:     {run}");
        println!("  last backup: {last}");
        if !s.leftovers.is_empty() {
            println!(
                "  LEFTOVERS of a killed backup: {} — QEMU copies every guest write into them and the guest's writes are slower; `lifeboat vms {} --repair` removes them (the next backup would too)",
                s.leftovers.join(", "),
                escape(&s.vm)
            );
        }
        for r in &s.repaired {
            println!("  repaired: removed {r}");
        }
        for v in &s.next {
            match &v.reason {
                None => println!("  next {}: incremental (dirty bitmap)", escape(&v.volume)),
                Some(r) => println!("  next {}: full read: {}", escape(&v.volume), escape(r)),
            }
        }
    }
    Ok(Outcome::Ok)
}
