//! Restoring a plan: every VM of its consistent point into one new
//! directory (`DIR/VM/` with its disks and domain XML, every NIC on the
//! plan's libvirt network, whose XML is `DIR/NETWORK.network.xml`), or
//! into a cloud (the VMs created in start order on the target's network).
//! Either the whole service is restored or nothing is left: a failure
//! removes the directory (or what the cloud restore created).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::point::{self, Point};
use super::Plan;
use crate::error::{Error, Result};
use crate::format::manifest::ManifestKey;
use crate::jobs::{CancellationToken, Progress};
use crate::repo::Repo;
use crate::restore::{self, RestoreRequest};
use crate::store::Store;
use crate::vm::restore::{validate_as, write_vm, DomainChoices, Validation};
use crate::vm::Definition;

#[derive(Debug, Clone)]
pub struct PlanRestoreRequest {
    pub plan: Plan,
    pub at: Option<String>,
    /// A new directory (or an empty one).
    pub to: PathBuf,
    /// The config's definitions, for backups that carry none.
    pub definitions: BTreeMap<String, Definition>,
    /// Hand the restored plan to libvirt (None: only the files).
    pub define: Option<Define>,
}

/// What `restore --plan --define [--start]` asks of libvirt.
#[derive(Debug, Clone, Default)]
pub struct Define {
    /// libvirt's URI (`[libvirt] uri`; None: its default).
    pub uri: Option<String>,
    /// Start the VMs too, in start order.
    pub start: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberRestore {
    pub vm: String,
    pub set: String,
    pub backup_time: String,
    pub dir: PathBuf,
    pub domain_xml: PathBuf,
    pub mac: String,
    pub address: Option<String>,
    pub after: Vec<String>,
    pub bytes_written: u64,
    pub validation: Validation,
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanRestoreReport {
    pub plan: String,
    pub to: PathBuf,
    pub point: Point,
    pub network: String,
    pub network_xml: PathBuf,
    pub network_validation: Validation,
    /// In start order.
    pub vms: Vec<MemberRestore>,
    /// What to run where libvirt runs, in order.
    pub commands: Vec<String>,
    /// With --define: what libvirt was handed, in order.
    pub libvirt: Vec<String>,
}

/// Restores the plan into `req.to`. `remote`: the store to take the
/// backups from (fetched into the local repository first); None: local.
pub async fn to_directory(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &PlanRestoreRequest,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<PlanRestoreReport> {
    let virsh = req
        .define
        .as_ref()
        .map(|d| crate::live::virsh::Virsh::new(d.uri.clone()));
    if let Some(v) = &virsh {
        preflight(v, &req.plan)?;
    }
    let made = new_target(&req.to)?;
    let mut res = restore_all(local_repo, remote, req, cancel, progress).await;
    if let (Ok(report), Some(v), Some(d)) = (&mut res, &virsh, &req.define) {
        progress.set_phase("libvirt: defining the network and the VMs");
        match hand_to_libvirt(v, report, d.start) {
            Ok(said) => report.libvirt = said,
            Err(e) => res = Err(e),
        }
    }
    if res.is_err() {
        // Half a service is no restore: nothing of it stays.
        if made {
            let _ = std::fs::remove_dir_all(&req.to);
        } else if let Ok(entries) = std::fs::read_dir(&req.to) {
            for e in entries.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    }
    res
}

/// Before anything is written: libvirt answers, and holds no domain or
/// network of the plan's names.
fn preflight(virsh: &crate::live::virsh::Virsh, plan: &Plan) -> Result<()> {
    virsh.run(None, &["uri"]).map_err(|e| {
        Error::BadInput(format!(
            "--define: libvirt {} does not answer ({e}); restore without --define and run the printed commands where libvirt runs",
            virsh.describe()
        ))
    })?;
    for m in &plan.members {
        crate::vm::restore::no_clash(virsh, &m.vm)?;
    }
    if virsh.run(None, &["net-info", "--", &plan.network]).is_ok() {
        return Err(Error::BadInput(format!(
            "a network named {} is defined on libvirt {} already: give the plan another network = \"…\", or remove the old one first (virsh net-destroy and net-undefine)",
            plan.network,
            virsh.describe()
        )));
    }
    Ok(())
}

/// Defines the network and every domain (and starts them, in order);
/// on any failure, what was defined goes again.
fn hand_to_libvirt(
    virsh: &crate::live::virsh::Virsh,
    r: &PlanRestoreReport,
    start: bool,
) -> Result<Vec<String>> {
    if let Some(v) = r
        .vms
        .iter()
        .find(|v| matches!(v.validation, Validation::Invalid(_)))
    {
        return Err(Error::BadInput(format!(
            "not handed to libvirt: the domain XML of {} does not validate",
            v.vm
        )));
    }
    if let Validation::Invalid(why) = &r.network_validation {
        return Err(Error::BadInput(format!(
            "not handed to libvirt: the network XML does not validate: {why}"
        )));
    }
    // libvirt runs QEMU as its own user and gives it the disk files while
    // a VM runs; the directories on the way must let it pass (0711: no
    // listing). Without --define they stay 0700.
    for dir in std::iter::once(&r.to).chain(r.vms.iter().map(|v| &v.dir)) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| Error::io("letting libvirt's QEMU reach", dir, e))?;
    }
    let mut said = Vec::new();
    let mut domains: Vec<&str> = Vec::new();
    let mut network = false;
    let res = (|| -> Result<()> {
        let file = r.network_xml.display().to_string();
        virsh.run(None, &["net-define", "--file", &file])?;
        network = true;
        virsh.run(None, &["net-start", "--", &r.network])?;
        said.push(format!("network {} defined and started", r.network));
        for v in &r.vms {
            crate::vm::restore::define(virsh, &v.domain_xml)?;
            domains.push(&v.vm);
            said.push(format!("domain {} defined", v.vm));
        }
        if start {
            for v in &r.vms {
                virsh.run(Some(&v.vm), &["start", "--", &v.vm])?;
                said.push(format!("domain {} started", v.vm));
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        for d in domains.iter().rev() {
            let _ = virsh.run(Some(d), &["destroy", "--", d]);
            let _ = virsh.run(Some(d), &["undefine", "--", d]);
        }
        if network {
            let _ = virsh.run(None, &["net-destroy", "--", &r.network]);
            let _ = virsh.run(None, &["net-undefine", "--", &r.network]);
        }
        return Err(Error::BadInput(format!(
            "libvirt refused the plan ({e}); what was defined was removed again"
        )));
    }
    Ok(said)
}

/// Makes the target private; true when it was made here. A directory
/// with anything in it is refused: a plan never mixes with other files.
fn new_target(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::BadInput(format!(
                    "{} is not empty: a plan is restored into a new or empty directory; give another --to",
                    crate::text::escape(&dir.display().to_string())
                )));
            }
            crate::durable::private_dir(dir)?;
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::durable::private_dir(dir)?;
            Ok(true)
        }
        Err(e) => Err(Error::io("reading", dir, e)),
    }
}

async fn restore_all(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &PlanRestoreRequest,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<PlanRestoreReport> {
    let plan = &req.plan;
    progress.set_phase("plan: picking each VM's backup");
    let local_store = crate::store::local::LocalStore::new(local_repo);
    let store: &dyn Store = remote.unwrap_or(&local_store);
    let point = point::pick(store, plan, req.at.as_deref()).await?;
    let mut vms = Vec::new();
    let mut macs: Vec<String> = Vec::new();
    for m in plan.order() {
        let pick = point
            .pick(&m.vm)
            .ok_or_else(|| Error::Internal(format!("no backup picked for {}", m.vm)))?;
        let dir = req.to.join(&m.vm);
        progress.set_phase(&format!("restore: {}", m.vm));
        let rreq = RestoreRequest {
            reference: pick.reference.clone(),
            to: dir.clone(),
            format: None,
            force: false,
            ceph: Default::default(),
            name: None,
        };
        let mut set = match remote {
            Some(r) => restore::plan_remote(r, local_repo, &rreq, true, cancel, progress).await?,
            None => restore::plan_local(&Repo::open(local_repo)?, &rreq)?,
        };
        if let Some(r) = remote {
            if let Err(e) = restore::fetch(&mut set, r, local_repo, cancel, progress).await {
                set.release().await;
                return Err(e);
            }
        }
        let picked: Vec<(ManifestKey, crate::format::Manifest)> = set.picked.clone();
        let outcomes = restore::execute(set, remote, local_repo, cancel, progress).await?;
        let repo = Repo::open(local_repo)?;
        let (def, from) =
            crate::vm::restore::definition_of(&repo, &picked, req.definitions.get(&m.vm).cloned())?;
        let v = write_vm(
            &def,
            from,
            &picked,
            &outcomes,
            &dir,
            &DomainChoices {
                // The plan's network is private to it: the VMs keep the
                // MACs their own settings may be tied to.
                keep_macs: true,
                name: None,
                networks: None,
            },
        )?;
        let own = def.spec.nics.first().and_then(|n| n.mac.clone());
        let mac = match own.map(|m| m.to_ascii_lowercase()) {
            Some(m) if !macs.contains(&m) => m,
            _ => super::drill::derived_mac(&plan.name, &m.vm),
        };
        macs.push(mac.clone());
        let xml = std::fs::read_to_string(&v.domain_xml)
            .map_err(|e| Error::io("reading", &v.domain_xml, e))?;
        let (xml, mut changes) = crate::vm::domain::onto_network(&xml, &plan.network, &mac)?;
        crate::durable::write_atomic(&v.domain_xml, xml.as_bytes())?;
        let mut all_changes = v.changes.clone();
        all_changes.append(&mut changes);
        vms.push(MemberRestore {
            vm: m.vm.clone(),
            set: pick.set.clone(),
            backup_time: crate::format::refs::exact_time(pick.time),
            dir: dir.clone(),
            validation: validate_as(&v.domain_xml, "domain"),
            domain_xml: v.domain_xml,
            mac,
            address: m.address.map(|a| a.to_string()),
            after: m.after.clone(),
            bytes_written: outcomes.iter().map(|o| o.bytes_written).sum(),
            changes: all_changes,
        });
    }
    let network_xml = req.to.join(format!("{}.network.xml", plan.network));
    crate::durable::write_atomic(&network_xml, network_xml_text(plan).as_bytes())?;
    let mut commands = vec![
        format!(
            "virsh net-define {}",
            crate::text::shell_quote(&network_xml.display().to_string())
        ),
        format!("virsh net-start {}", plan.network),
    ];
    for v in &vms {
        commands.push(format!(
            "virsh define {}",
            crate::text::shell_quote(&v.domain_xml.display().to_string())
        ));
    }
    for v in &vms {
        let wait = if v.after.is_empty() {
            String::new()
        } else {
            format!("   # once {} answers", v.after.join(", "))
        };
        commands.push(format!("virsh start {}{wait}", v.vm));
    }
    crate::durable::sync_filesystem(&req.to)?;
    Ok(PlanRestoreReport {
        plan: plan.name.clone(),
        to: req.to.clone(),
        point,
        network: plan.network.clone(),
        network_validation: validate_as(&network_xml, "network"),
        network_xml,
        vms,
        commands,
        libvirt: Vec::new(),
    })
}

/// An isolated libvirt network: no `<forward>` (nothing leaves it), no
/// host address on it, no DHCP — the VMs keep the addresses their own
/// settings give them, as the plan says they expect.
pub fn network_xml_text(plan: &Plan) -> String {
    let mut x = String::from("<network>\n");
    x.push_str(&format!("  <name>{}</name>\n", plan.network));
    x.push_str("  <!-- A recovery plan's private network, written by lifeboat: no forward element, so isolated. -->\n");
    for m in &plan.members {
        if let Some(a) = m.address {
            x.push_str(&format!("  <!-- {} expects {a} -->\n", m.vm));
        }
    }
    x.push_str("</network>\n");
    x
}

/// The cloud plans of a plan's VMs, in start order, from one point.
pub async fn cloud_plans(
    plan: &Plan,
    at: Option<&str>,
    target: &str,
    provider: &dyn crate::cloud::Provider,
    kind: crate::cloud::ProviderKind,
    store: &crate::store::DynStore,
    from: &str,
) -> Result<(Point, Vec<crate::cloud::CloudPlan>)> {
    let point = point::pick(store.as_ref(), plan, at).await?;
    let mut out = Vec::new();
    for m in plan.order() {
        let pick = point
            .pick(&m.vm)
            .ok_or_else(|| Error::Internal(format!("no backup picked for {}", m.vm)))?;
        out.push(crate::cloud::plan(target, provider, kind, store, from, &pick.reference).await?);
    }
    Ok((point, out))
}
