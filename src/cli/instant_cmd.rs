//! `restore VM@REF --instant`: the VM runs from its backup at once, its
//! disks copied into place while it runs (see `vm::instant`).

use std::path::PathBuf;

use lifeboat_core::repository::Repository;
use lifeboat_core::text::escape;
use lifeboat_core::vm::instant::{self, Choices, InstantReport, Source};
use lifeboat_core::vm::qemu::{Accel, Forward};

use super::backup_restore::VmRestoreArgs;
use super::progress::run_job_lines;
use super::{print_json, Ctx, OutFormat, Outcome};
use crate::output::bytes;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct InstantArgs {
    /// A VM@... set: start the VM now, under QEMU in the background, on
    /// overlays backed by the backup (read on demand, verified; with
    /// --from, straight from the remote, nothing stored locally), and copy
    /// its disks into --to DIR while it runs; then switch it onto them.
    /// It keeps running after lifeboat exits (DIR/NAME.qmp is its
    /// monitor). Ctrl-C during the copy stops the VM and removes its
    /// half-copied disks
    #[arg(long)]
    pub instant: bool,
    /// With --instant: forward loopback port HOST to the guest's port
    /// GUEST (HOST:GUEST, repeatable); the VM gets user-mode networking
    #[arg(long, value_name = "HOST:GUEST", requires = "instant", value_parser = parse_forward)]
    pub forward: Vec<Forward>,
    /// With --instant: tcg, kvm or auto (KVM when usable)
    #[arg(long, default_value = "auto", requires = "instant")]
    pub accel: String,
}

fn parse_forward(s: &str) -> Result<Forward, String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: give HOST:GUEST ports, e.g. 8080:80"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port (1-65535)"))
    };
    Ok(Forward {
        host: port(h)?,
        guest: port(g)?,
    })
}

/// Flags of `restore` that do not apply to an instant restore: refused,
/// never silently ignored.
fn refuse_others(vm: &VmRestoreArgs, plain: (Option<OutFormat>, bool, bool)) -> anyhow::Result<()> {
    let (format, force, dry_run) = plain;
    let given: Vec<&str> = [
        (format.is_some(), "--format (the disks are raw)"),
        (force, "--force (an instant restore never overwrites)"),
        (dry_run, "--dry-run"),
        (vm.define, "--define"),
        (vm.start, "--start"),
        (vm.keep_macs, "--keep-macs"),
        (vm.attach.is_some(), "--attach"),
        (vm.target.is_some(), "--target"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if !given.is_empty() {
        anyhow::bail!(
            "--instant does not take {}: it runs the VM under QEMU from DIR",
            given.join(", ")
        );
    }
    Ok(())
}

pub async fn instant(
    ctx: &Ctx,
    reference: &str,
    to: PathBuf,
    from: Option<String>,
    vm: VmRestoreArgs,
    args: InstantArgs,
    plain: (Option<OutFormat>, bool, bool),
) -> anyhow::Result<Outcome> {
    refuse_others(&vm, plain)?;
    let accel = lifeboat_core::vm::boot::accel_name(args.accel.parse::<Accel>()?);
    let source = match &from {
        None => Source::Local(ctx.repo_path()),
        Some(r) => Source::Remote(Repository::open(ctx.remote(r)?.1).await?),
    };
    let choices = Choices {
        dir: to,
        name: vm.name.clone(),
        accel: accel.to_string(),
        forwards: args.forward.clone(),
    };
    let req = instant::prepare(
        source,
        reference,
        |vm| ctx.config.definition_for_backup(vm),
        choices,
    )
    .await?;
    let res = run_job_lines("instant restore", ctx.json, move |cancel, progress| {
        instant::run(req, cancel, progress)
    })
    .await;
    let report: InstantReport = match res {
        Ok(r) => r,
        Err(lifeboat_core::Error::Cancelled) => {
            eprintln!("cancelled: the VM was stopped and the disks it was copying to removed");
            return Ok(Outcome::Cancelled);
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        print_json(&report)?;
    } else {
        let disks: Vec<String> = report
            .disks
            .iter()
            .map(|d| escape(&d.display().to_string()).into_owned())
            .collect();
        println!(
            "VM {} runs on {} (pid {}, {accel})",
            escape(&report.vm),
            disks.join(", "),
            report.pid
        );
        println!(
            "it ran on its backup after {:.1}s and on its local disks after {:.1}s ({} copied)",
            report.running_after_secs,
            report.local_after_secs,
            bytes(report.copied_bytes)
        );
        for w in &report.waits {
            println!("{w}");
        }
        for f in &report.forwards {
            println!("guest port {} is at 127.0.0.1:{}", f.guest, f.host);
        }
        println!(
            "monitor (QMP): {}; serial console log: {}; stop it with `quit` on the monitor or kill {}",
            escape(&report.qmp.display().to_string()),
            escape(&report.serial.display().to_string()),
            report.pid
        );
    }
    Ok(Outcome::Ok)
}
