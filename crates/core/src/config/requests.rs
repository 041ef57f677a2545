//! Requests built from the config, once: what a drill of a VM is, where it
//! is drilled from, what a running VM's next backup will read. The CLI,
//! the console and the daemon all build them here, so the subsystems below
//! take their own settings and never read the config themselves.

use super::Config;
use crate::drill::{reference, DrillOverrides, DrillRequest};
use crate::error::Result;
use crate::vm::qemu::Accel;
use crate::vm::BootChecks;

/// Where a VM is drilled from when the admin does not say: its
/// `[vm.drill] from`, else its policy's first push target, else the only
/// configured remote (as in a real disaster, where the local copy is gone
/// too), else the local repository.
pub fn drill_source(config: &Config, vm: &str) -> String {
    if let Some(f) = config
        .vm(vm)
        .and_then(|v| v.drill.as_ref())
        .and_then(|d| d.from.clone())
    {
        return f;
    }
    if let Some(r) = config.policy_for(vm).and_then(|p| p.push.first()) {
        return r.clone();
    }
    match config.remotes.keys().collect::<Vec<_>>().as_slice() {
        [only] => (*only).clone(),
        _ => "local".into(),
    }
}

/// A drill of `vm` as the config describes it, with the admin's overrides.
pub fn drill_request(config: &Config, vm: &str, o: &DrillOverrides) -> Result<DrillRequest> {
    crate::names::check_name("VM", vm)?;
    reference(vm, o.at.as_deref())?;
    let vmc = config.vm(vm);
    let dc = vmc.and_then(|v| v.drill.clone()).unwrap_or_default();
    let accel = match (o.accel, &dc.accel) {
        (Some(a), _) => a,
        (None, Some(a)) => a.parse()?,
        (None, None) => Accel::Tcg,
    };
    let mut checks = vmc.and_then(|v| v.check.as_ref()).map(|c| c.checks());
    if let Some(t) = o.timeout_secs {
        let c = checks.get_or_insert_with(BootChecks::default);
        c.timeout_secs = t;
    }
    let command = vmc
        .and_then(|v| v.check.as_ref())
        .and_then(|c| c.command.clone().map(|cmd| (cmd, c.forward.clone())));
    Ok(DrillRequest {
        vm: vm.to_string(),
        at: o.at.clone(),
        source: o.from.clone().unwrap_or_else(|| drill_source(config, vm)),
        accel,
        scratch: o
            .scratch
            .clone()
            .or(dc.scratch.map(|p| config.resolve(&p)))
            .unwrap_or_else(std::env::temp_dir),
        checks,
        command,
        local_definition: config.definition_for_backup(vm),
    })
}

/// Where a plan is drilled from when the admin does not say: its `from`,
/// else where its first VM would be drilled from.
pub fn plan_source(config: &Config, plan: &crate::plan::Plan) -> String {
    plan.from.clone().unwrap_or_else(|| {
        plan.members
            .first()
            .map(|m| drill_source(config, &m.vm))
            .unwrap_or_else(|| "local".into())
    })
}

/// The plan named `name` from the config, or an error that lists the plans.
pub fn plan<'a>(config: &'a Config, name: &str) -> Result<&'a crate::plan::Plan> {
    config.plans.get(name).ok_or_else(|| {
        crate::error::Error::NotFound(format!(
            "plan {}: no [plan.{}] in the config (plans: {})",
            crate::text::escape(name),
            crate::text::escape(name),
            if config.plans.is_empty() {
                "none".to_string()
            } else {
                config.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        ))
    })
}

/// A drill of plan `name` as the config describes it, with the admin's
/// overrides (`timeout_secs` applies to every VM's checks and the plan's).
pub fn plan_drill_request(
    config: &Config,
    name: &str,
    o: &DrillOverrides,
) -> Result<crate::plan::drill::PlanDrillRequest> {
    let p = plan(config, name)?;
    crate::plan::point::bound(o.at.as_deref())?;
    let member_overrides = DrillOverrides {
        at: None,
        from: None,
        ..o.clone()
    };
    let members = p
        .order()
        .iter()
        .map(|m| drill_request(config, &m.vm, &member_overrides))
        .collect::<Result<Vec<_>>>()?;
    Ok(crate::plan::drill::PlanDrillRequest {
        source: o.from.clone().unwrap_or_else(|| plan_source(config, p)),
        at: o.at.clone(),
        accel: o.accel.unwrap_or(p.accel),
        scratch: o
            .scratch
            .clone()
            .or(p.scratch.as_ref().map(|s| config.resolve(s)))
            .unwrap_or_else(std::env::temp_dir),
        members,
        checks_timeout_secs: o.timeout_secs.unwrap_or(p.timeout_secs),
        plan: p.clone(),
    })
}

/// The store a drill takes its backup from: None for "local", else the
/// configured remote (the CLI opens remotes itself, under its bandwidth
/// limits).
pub fn open_drill_source(config: &Config, source: &str) -> Result<Option<crate::store::DynStore>> {
    match source {
        "local" => Ok(None),
        name => super::remotes::resolve(config, name).map(|(_, s)| Some(s)),
    }
}

/// An inventory VM's volumes with each one's newest backup in a
/// repository (the base of its next backup).
fn volume_refs<M: std::borrow::Borrow<crate::format::manifest::Manifest>>(
    config: &Config,
    vm: &str,
    backups: &[(crate::format::ManifestKey, M)],
) -> Option<Vec<crate::live::VolumeRef>> {
    let v = config.vm(vm)?;
    Some(
        v.volumes
            .iter()
            .map(|vol| {
                let name = vol.name.get_ref().clone();
                let previous = backups
                    .iter()
                    .rev()
                    .find(|(k, _)| k.vm == vm && k.volume == name)
                    .map(|(_, m)| crate::live::capture::PreviousBackup::of(m.borrow()));
                crate::live::VolumeRef {
                    path: config.resolve(&vol.path),
                    format: vol.format,
                    previous,
                    name,
                }
            })
            .collect(),
    )
}

/// The outlook of an inventory VM against the backups of a repository
/// (each volume's newest one is the base of its next backup).
pub fn live_outlook<M: std::borrow::Borrow<crate::format::manifest::Manifest>>(
    config: &Config,
    vm: &str,
    backups: &[(crate::format::ManifestKey, M)],
    chunk_size: u64,
) -> Option<crate::live::Outlook> {
    let refs = volume_refs(config, vm, backups)?;
    Some(crate::live::outlook(
        &config.live_for(vm),
        &config.ceph.clone().unwrap_or_default(),
        &refs,
        chunk_size,
    ))
}

/// Removes what killed backups of an inventory VM left (in its QEMU, or
/// its RBD images' snapshots): what was removed.
pub fn live_repair<M: std::borrow::Borrow<crate::format::manifest::Manifest>>(
    config: &Config,
    vm: &str,
    backups: &[(crate::format::ManifestKey, M)],
    chunk_size: u64,
) -> Result<Vec<String>> {
    let refs = volume_refs(config, vm, backups).unwrap_or_default();
    let live = config.live_for(vm);
    if refs
        .iter()
        .any(|r| crate::source::rbd::RbdImage::is_rbd(&r.path))
    {
        let ceph = config.ceph.clone().unwrap_or_default();
        return crate::live::repair_rbd(&live, &ceph, &refs, chunk_size);
    }
    crate::live::repair(&live)
}

/// A backup of `vm` as the config describes it: every volume of its
/// `[[vm]]` entry, or those `volumes` names — a NAME from the entry, or
/// NAME=PATH for a file outside the config (read as `format`). The
/// definition is left out: `definition_for_backup` may ask virsh, so the
/// caller sets it off the async threads.
pub fn backup_request(
    config: &Config,
    vm: &str,
    volumes: &[String],
    format: crate::source::FormatChoice,
) -> Result<crate::backup::BackupRequest> {
    use crate::backup::VolumeSpec;
    use crate::error::Error;
    use crate::format::manifest::Role;
    crate::names::check_name("VM", vm)?;
    let inv = config.vm(vm);
    let where_ = || {
        config
            .path
            .as_ref()
            .map(|p| format!("the config {}", p.display()))
            .unwrap_or_else(|| "the config (none loaded)".into())
    };
    let not_in_config = || {
        Error::BadInput(format!(
            "VM {vm:?} is not in {}: pass --volume NAME=PATH to back up a file directly",
            where_()
        ))
    };
    let from_inventory = |name: &str| -> Result<VolumeSpec> {
        let vmc = inv.ok_or_else(not_in_config)?;
        let v = vmc
            .volumes
            .iter()
            .find(|v| v.name.get_ref() == name)
            .ok_or_else(|| {
                Error::BadInput(format!("VM {vm:?} has no volume {name:?} in {}", where_()))
            })?;
        Ok(VolumeSpec {
            name: v.name.get_ref().clone(),
            role: v.role,
            path: v.path.clone(),
            format: v.format,
        })
    };
    let specs: Vec<VolumeSpec> = if volumes.is_empty() {
        inv.ok_or_else(not_in_config)?
            .volumes
            .iter()
            .map(|v| from_inventory(v.name.get_ref()))
            .collect::<Result<_>>()?
    } else {
        volumes
            .iter()
            .map(|a| match a.split_once('=') {
                Some((name, path)) => Ok(VolumeSpec {
                    name: name.to_string(),
                    role: if name == "root" {
                        Role::Root
                    } else {
                        Role::Data
                    },
                    path: std::path::PathBuf::from(path),
                    format,
                }),
                None => from_inventory(a),
            })
            .collect::<Result<_>>()?
    };
    Ok(crate::backup::BackupRequest {
        vm: vm.to_string(),
        volumes: specs,
        note: None,
        created_at: None,
        definition: None,
        live: config.live_for(vm),
        ceph: config.ceph.clone().unwrap_or_default(),
    })
}
