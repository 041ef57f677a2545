//! The config file: where the local repository is and what the inventory
//! holds. Errors name the file, the line and what is wrong.

pub mod remotes;
pub mod requests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::format::manifest::Role;
use crate::names::is_valid_name;
use crate::source::FormatChoice;

pub const ENV_CONFIG: &str = "LIFEBOAT_CONFIG";
pub const ENV_REPO: &str = "LIFEBOAT_REPO";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The local repository.
    pub repository: Option<PathBuf>,
    #[serde(default, rename = "vm")]
    pub vms: Vec<VmConfig>,
    #[serde(default, rename = "remote")]
    pub remotes: std::collections::BTreeMap<String, RemoteConfig>,
    /// Clouds a VM can be restored into (`[cloud.NAME]`).
    #[serde(default, rename = "cloud")]
    pub clouds: std::collections::BTreeMap<String, crate::cloud::CloudConfig>,
    /// The policy of VMs that name none.
    pub default_policy: Option<toml::Spanned<String>>,
    #[serde(default, rename = "policy")]
    pub policy_configs:
        std::collections::BTreeMap<String, toml::Spanned<crate::policy::PolicyConfig>>,
    /// When the daemon collects garbage in the local repository (a
    /// schedule like a policy's, in the host's time zone).
    pub gc_schedule: Option<toml::Spanned<String>>,
    /// The host's libvirt (`[libvirt]`): its domains are listed and backed
    /// up by name without a `[[vm]]` entry.
    pub libvirt: Option<LibvirtConfig>,
    /// The Ceph cluster of `rbd:POOL/IMAGE` volumes (`[ceph]`: conf, id,
    /// keyring; the key is read from the keyring file by Ceph itself).
    pub ceph: Option<crate::source::rbd::CephConfig>,
    /// Recovery plans (`[plan.NAME]`): several VMs recovered together.
    #[serde(default, rename = "plan")]
    pub plan_configs: std::collections::BTreeMap<String, toml::Spanned<crate::plan::PlanConfig>>,
    /// The plans, checked at load.
    #[serde(skip)]
    pub plans: std::collections::BTreeMap<String, crate::plan::Plan>,
    /// The policies, checked at load.
    #[serde(skip)]
    pub policies: std::collections::BTreeMap<String, crate::policy::Policy>,
    #[serde(skip)]
    pub gc: Option<crate::policy::Schedule>,
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// What the command line says about every remote (limits, timeout,
    /// plain HTTP); never read from the file.
    #[serde(skip)]
    pub overrides: Overrides,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: toml::Spanned<String>,
    /// A `[policy.NAME]` (default: `default_policy`).
    pub policy: Option<toml::Spanned<String>>,
    #[serde(default, rename = "volume")]
    pub volumes: Vec<VolumeConfig>,
    /// lifeboat's VM spec (used when the VM has no libvirt domain).
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub firmware: Option<crate::vm::Firmware>,
    pub machine: Option<String>,
    #[serde(default, rename = "nic")]
    pub nics: Vec<crate::vm::NicSpec>,
    /// A saved copy of the libvirt domain XML (relative: to this file).
    pub domain_xml: Option<PathBuf>,
    /// The libvirt domain this VM is: its definition is read from libvirt
    /// at each backup, and while it runs its disks are read through
    /// libvirt's backup API (never together with `qmp`). Volumes may be
    /// left out: then every disk of the domain is one, named by its device.
    pub libvirt_domain: Option<String>,
    /// What proves a booted copy works (`[vm.check]`).
    pub check: Option<crate::vm::CheckConfig>,
    /// Restore drills of this VM (`[vm.drill]`).
    pub drill: Option<DrillConfig>,
    /// The running VM's QMP monitor socket (relative: to this file). A
    /// running VM is then backed up through QEMU at one instant, never by
    /// reading its disks behind QEMU's back.
    pub qmp: Option<PathBuf>,
    /// The host end of the VM's qemu-guest-agent channel (a chardev
    /// socket): filesystems are frozen for the instant of a backup.
    pub guest_agent: Option<PathBuf>,
    /// Seconds the guest agent may take to answer and to freeze (default 10).
    pub freeze_timeout: Option<u64>,
    /// Track changes with persistent dirty bitmaps (default true): running
    /// VMs and qcow2 images then read only what changed.
    pub bitmaps: Option<bool>,
}

/// `[libvirt]`: where the host's libvirt is, and what its domains get.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtConfig {
    /// `qemu:///system` (libvirt's default when unset), `qemu+ssh://…`.
    pub uri: Option<String>,
    /// The policy of domains without a `[[vm]]` entry (default:
    /// `default_policy`).
    pub policy: Option<toml::Spanned<String>>,
}

/// `[vm.drill]`: scheduled restore drills.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// When the daemon drills (a schedule like a policy's).
    pub schedule: Option<String>,
    /// The repository drilled from: a remote's name, or "local".
    pub from: Option<String>,
    /// tcg (default), kvm or auto.
    pub accel: Option<String>,
    /// Where restored images go while a drill runs (default: $TMPDIR).
    pub scratch: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: toml::Spanned<String>,
    #[serde(default = "default_role")]
    pub role: Role,
    pub path: PathBuf,
    #[serde(default)]
    pub format: FormatChoice,
    /// The bus the VM sees it on (virtio, ide, sata, scsi).
    pub bus: Option<crate::vm::Bus>,
}

/// An off-site repository. Secrets are never stored here: the config names
/// the environment variable or file that holds them.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// A path or file:///path, http(s)://host:port/ (lifeboat serve), or s3://bucket/prefix.
    pub url: String,
    /// lifeboat serve: the variable holding the bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// lifeboat serve: a file holding the bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// An encrypted remote repository whose key differs from the local
    /// one's: a file holding its recovery key, or one of its passphrases
    /// (a push or pull then re-encrypts on the way; docs/ENCRYPTION.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    /// lifeboat serve over TLS with a private CA: its certificate (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// lifeboat serve over TLS: the SHA-256 fingerprint of its certificate
    /// (`lifeboat serve fingerprint`), trusted instead of a CA chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Bandwidth limits towards this remote: `8M` (bytes per second, K/M/G),
    /// and how much may go at once (default a quarter second's worth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_upload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_download: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_burst: Option<String>,
    /// S3: the endpoint (e.g. https://oss-cn-hangzhou.aliyuncs.com, http://127.0.0.1:3900).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3: path-style addressing (MinIO, Garage, Ceph RGW).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_style: bool,
    /// S3: variables holding the keys (default AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_env: Option<String>,
    /// Request timeout in seconds (default 120).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// lifeboat serve over plain http:// on a host other than loopback:
    /// the token crosses the network in clear. Refused unless this says
    /// the network is trusted (or `--insecure-http` is given).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

fn default_role() -> Role {
    Role::Data
}

/// Where the config lives when neither `--config` nor `LIFEBOAT_CONFIG` says.
pub fn default_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "lifeboat").map(|d| d.config_dir().join("config.toml"))
}

/// Where data lives (default repository, logs).
pub fn data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "lifeboat")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".lifeboat"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Loads the config. A file that does not exist yet is an empty config
    /// that remembers its path: commands that write the config (`remote
    /// add`) create it there, the others do not need it.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        Self::load_assuming(explicit, &[])
    }

    /// Loads the config as if the remotes `adding` existed already: what
    /// `remote add` is about to add may be named by a policy or a drill
    /// before it is (that is often why it is added).
    pub fn load_assuming(explicit: Option<&Path>, adding: &[&str]) -> Result<Config> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_config_path() {
                Some(p) => p,
                None => return Ok(Config::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!("no config file at {} (yet): using defaults", path.display());
                return Ok(Config {
                    path: Some(path),
                    ..Default::default()
                });
            }
            Err(e) => {
                return Err(Error::Config {
                    path,
                    reason: format!("cannot read: {e}"),
                })
            }
        };
        let mut cfg = Self::parse_assuming(&path, &text, adding)?;
        cfg.path = Some(path);
        Ok(cfg)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        Self::parse_assuming(path, text, &[])
    }

    fn parse_assuming(path: &Path, text: &str, adding: &[&str]) -> Result<Config> {
        let err = |line: Option<usize>, reason: String| Error::Config {
            path: path.to_path_buf(),
            reason: match line {
                Some(l) => format!("line {l}: {reason}"),
                None => reason,
            },
        };
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            err(line, e.message().trim().to_string())
        })?;
        let mut vm_names = BTreeSet::new();
        for vm in &cfg.vms {
            let line = Some(line_of(text, vm.name.span().start));
            if !is_valid_name(vm.name.get_ref()) {
                return Err(err(
                    line,
                    format!(
                        "VM name {:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -",
                        vm.name.get_ref()
                    ),
                ));
            }
            if !vm_names.insert(vm.name.get_ref().clone()) {
                return Err(err(
                    line,
                    format!("VM {:?} is listed twice", vm.name.get_ref()),
                ));
            }
            let mut vol_names = BTreeSet::new();
            for v in &vm.volumes {
                let line = Some(line_of(text, v.name.span().start));
                if !is_valid_name(v.name.get_ref()) {
                    return Err(err(
                        line,
                        format!(
                            "volume name {:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -",
                            v.name.get_ref()
                        ),
                    ));
                }
                if crate::source::rbd::RbdImage::is_rbd(&v.path) {
                    crate::source::rbd::RbdImage::parse(&v.path)
                        .map_err(|e| err(line, e.to_string()))?;
                    if v.format == FormatChoice::Qcow2 {
                        return Err(err(
                            line,
                            "an RBD image holds the guest's bytes as they are: use format = \"raw\" (or leave it out)".into(),
                        ));
                    }
                }
                if !vol_names.insert(v.name.get_ref().clone()) {
                    return Err(err(
                        line,
                        format!(
                            "volume {:?} of VM {:?} is listed twice",
                            v.name.get_ref(),
                            vm.name.get_ref()
                        ),
                    ));
                }
            }
        }
        if let Some(p) = cfg.libvirt.as_ref().and_then(|l| l.policy.as_ref()) {
            if !cfg.policy_configs.contains_key(p.get_ref()) {
                return Err(err(
                    Some(line_of(text, p.span().start)),
                    format!("[libvirt] policy {:?}: no such [policy.NAME]", p.get_ref()),
                ));
            }
        }
        if let Some(c) = &cfg.ceph {
            c.check().map_err(|e| err(None, e))?;
        }
        if let Some(u) = cfg.libvirt.as_ref().and_then(|l| l.uri.as_ref()) {
            if u.is_empty() || u.chars().any(char::is_control) || !u.contains(':') {
                return Err(err(
                    None,
                    format!("[libvirt] uri {u:?} is not a libvirt URI like qemu:///system"),
                ));
            }
        }
        for vm in &cfg.vms {
            let line = Some(line_of(text, vm.name.span().start));
            let whose = format!("VM {}", vm.name.get_ref());
            if vm.qmp.is_some() && vm.libvirt_domain.is_some() {
                return Err(err(
                    line,
                    format!("{whose}: qmp and libvirt_domain both say how to reach the running VM: keep libvirt_domain for a libvirt domain (backed up through libvirt's backup API), qmp for a QEMU lifeboat reaches directly"),
                ));
            }
            if let Some(c) = &vm.check {
                crate::vm::check_config(c)
                    .map_err(|e| err(line, format!("{whose}: check: {e}")))?;
            }
            for n in &vm.nics {
                if n.mac.as_ref().is_some_and(|m| !crate::vm::is_mac(m)) {
                    return Err(err(
                        line,
                        format!("{whose}: a nic's mac is not like 52:54:00:12:34:56"),
                    ));
                }
            }
            if let Some(d) = &vm.drill {
                if let Some(f) = &d.from {
                    if f != "local" && !cfg.remotes.contains_key(f) && !adding.contains(&f.as_str())
                    {
                        return Err(err(
                            line,
                            format!("{whose}: drill from {f:?}: no such remote (or use \"local\")"),
                        ));
                    }
                }
                if let Some(a) = &d.accel {
                    a.parse::<crate::vm::qemu::Accel>()
                        .map_err(|e| err(line, format!("{whose}: drill: {e}")))?;
                }
                if let Some(s) = &d.schedule {
                    s.parse::<crate::policy::Schedule>()
                        .map_err(|e| err(line, format!("{whose}: drill schedule: {e}")))?;
                }
            }
            if let Some(t) = vm.freeze_timeout {
                if !(1..=600).contains(&t) {
                    return Err(err(
                        line,
                        format!("{whose}: freeze_timeout = {t}: give 1 to 600 seconds"),
                    ));
                }
            }
            // A spec that cannot be stored is refused now, not at backup.
            let def = crate::vm::Definition {
                format: 1,
                vm: vm.name.get_ref().clone(),
                spec: crate::vm::VmSpec {
                    vcpus: vm.vcpus.unwrap_or(1),
                    memory_mib: vm.memory_mib.unwrap_or(1024),
                    firmware: vm.firmware.unwrap_or_default(),
                    machine: vm.machine.clone().unwrap_or_else(|| "pc".into()),
                    disks: Vec::new(),
                    nics: vm.nics.clone(),
                },
                domain_xml: None,
                checks: None,
            };
            def.check()
                .map_err(|e| err(line, format!("{whose}: {e}")))?;
        }
        for (name, r) in &cfg.remotes {
            if !is_valid_name(name) {
                return Err(err(
                    None,
                    format!("remote name {name:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -"),
                ));
            }
            if name == "local" {
                return Err(err(
                    None,
                    "a remote may not be named \"local\": that name means the local repository (drill --from local); rename it".into(),
                ));
            }
            crate::store::url::check_url(&r.url)
                .map_err(|e| err(None, format!("remote {name}: {e}")))?;
        }
        for (name, c) in &cfg.clouds {
            if !is_valid_name(name) {
                return Err(err(
                    None,
                    format!("cloud name {name:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -"),
                ));
            }
            c.check()
                .map_err(|e| err(None, format!("cloud {name}: {e}")))?;
        }
        let mut remotes: Vec<&str> = cfg.remotes.keys().map(|s| s.as_str()).collect();
        remotes.extend(adding);
        let mut policies = std::collections::BTreeMap::new();
        for (name, pc) in &cfg.policy_configs {
            let line = Some(line_of(text, pc.span().start));
            if !is_valid_name(name) {
                return Err(err(line, format!("policy name {name:?} is invalid")));
            }
            let p = crate::policy::Policy::check(name, pc.get_ref(), &remotes)
                .map_err(|e| err(line, format!("policy {name}: {e}")))?;
            policies.insert(name.clone(), p);
        }
        let known = |n: &toml::Spanned<String>, whose: &str| {
            if policies.contains_key(n.get_ref()) {
                Ok(())
            } else {
                Err(err(
                    Some(line_of(text, n.span().start)),
                    format!(
                        "{whose}: no policy named {:?} (defined: {})",
                        n.get_ref(),
                        if policies.is_empty() {
                            "none".to_string()
                        } else {
                            policies.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ),
                ))
            }
        };
        if let Some(d) = &cfg.default_policy {
            known(d, "default_policy")?;
        }
        for vm in &cfg.vms {
            if let Some(p) = &vm.policy {
                known(p, &format!("VM {}", vm.name.get_ref()))?;
            }
        }
        cfg.policies = policies;
        for (name, pc) in &cfg.plan_configs {
            let p = crate::plan::check(name, pc.get_ref(), &remotes).map_err(|(at, why)| {
                err(Some(line_of(text, at.unwrap_or(pc.span().start))), why)
            })?;
            cfg.plans.insert(name.clone(), p);
        }
        if let Some(g) = &cfg.gc_schedule {
            let line = Some(line_of(text, g.span().start));
            let sched: crate::policy::Schedule = g
                .get_ref()
                .parse()
                .map_err(|e: Error| err(line, format!("gc_schedule: {e}")))?;
            if sched
                .next_after(chrono::Utc::now(), &chrono::Local)
                .is_none()
            {
                return Err(err(line, "gc_schedule never fires".into()));
            }
            cfg.gc = Some(sched);
        }
        Ok(cfg)
    }

    /// The policy that applies to a VM: its own, else the default.
    pub fn policy_for(&self, vm: &str) -> Option<&crate::policy::Policy> {
        let name = self
            .vm(vm)
            .and_then(|v| v.policy.as_ref())
            .or(self.default_policy.as_ref())?;
        self.policies.get(name.get_ref())
    }

    fn virsh(&self) -> crate::live::virsh::Virsh {
        crate::live::virsh::Virsh::new(self.libvirt.as_ref().and_then(|l| l.uri.clone()))
    }

    /// The `[[vm]]` entry of a libvirt domain that has none: its disks
    /// (each a volume named by its device; the first in boot order the
    /// root) and definition come from libvirt. None when it cannot be
    /// backed up by name (the reason in `DomainSummary::problem`).
    fn entry_for_domain(
        &self,
        name: &str,
        facts: &crate::vm::libvirt_xml::DomainFacts,
    ) -> Option<VmConfig> {
        if !is_valid_name(name) {
            return None;
        }
        let volumes = volumes_of(facts);
        if volumes.is_empty() {
            return None;
        }
        Some(VmConfig {
            name: toml::Spanned::new(0..0, name.to_string()),
            policy: self.libvirt.as_ref().and_then(|l| l.policy.clone()),
            volumes,
            vcpus: None,
            memory_mib: None,
            firmware: None,
            machine: None,
            nics: Vec::new(),
            domain_xml: None,
            libvirt_domain: Some(name.to_string()),
            check: None,
            drill: None,
            qmp: None,
            guest_agent: None,
            freeze_timeout: None,
            bitmaps: None,
        })
    }

    /// Makes a libvirt domain without a `[[vm]]` entry a VM of this config
    /// (for this run), so it is backed up, drilled and shown by name; a
    /// `[[vm]]` entry with a `libvirt_domain` and no volumes gets the
    /// domain's disks. Ok(false): nothing to take from libvirt.
    pub fn adopt_libvirt_domain(&mut self, name: &str) -> Result<bool> {
        if let Some(i) = self.vms.iter().position(|v| v.name.get_ref() == name) {
            let Some(dom) = self.vms[i].libvirt_domain.clone() else {
                return Ok(false);
            };
            if !self.vms[i].volumes.is_empty() {
                return Ok(false);
            }
            let xml = crate::live::libvirt::definition_xml(&self.virsh(), &dom)?;
            let volumes = volumes_of(&crate::vm::libvirt_xml::domain_facts(&xml)?);
            if volumes.is_empty() {
                return Err(Error::BadInput(format!(
                    "libvirt domain {} of VM {name} has no disk lifeboat can read (files and block devices)",
                    crate::text::escape(&dom)
                )));
            }
            self.vms[i].volumes = volumes;
            return Ok(true);
        }
        if self.libvirt.is_none() {
            return Ok(false);
        }
        let v = self.virsh();
        let xml = crate::live::libvirt::definition_xml(&v, name).map_err(|e| {
            Error::BadInput(format!(
                "VM {} is not in the config, and libvirt does not know it either: {e}",
                crate::text::escape(name)
            ))
        })?;
        let facts = crate::vm::libvirt_xml::domain_facts(&xml)?;
        let entry = self.entry_for_domain(name, &facts).ok_or_else(|| {
            Error::BadInput(format!(
                "libvirt domain {} cannot be backed up by name: {}",
                crate::text::escape(name),
                if is_valid_name(name) {
                    "it has no disk lifeboat can read (files and block devices)".to_string()
                } else {
                    "lifeboat names are 1 to 128 of A-Z a-z 0-9 . _ -: add a [[vm]] entry with libvirt_domain".to_string()
                }
            ))
        })?;
        self.vms.push(entry);
        Ok(true)
    }
}

/// A libvirt domain's disks as volumes: each named by its device, the
/// first in boot order the root.
fn volumes_of(facts: &crate::vm::libvirt_xml::DomainFacts) -> Vec<VolumeConfig> {
    let mut disks: Vec<&crate::vm::libvirt_xml::DomainDisk> = facts
        .backup_disks()
        .filter(|d| crate::live::libvirt::disk_skipped(d).is_none())
        .collect();
    disks.sort_by_key(|d| d.boot_order.unwrap_or(u32::MAX));
    disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            Some(VolumeConfig {
                name: toml::Spanned::new(0..0, d.target.clone()),
                role: if i == 0 { Role::Root } else { Role::Data },
                path: d.source.clone()?,
                format: match d.format.as_deref() {
                    Some("qcow2") => FormatChoice::Qcow2,
                    Some("raw") => FormatChoice::Raw,
                    _ => FormatChoice::Auto,
                },
                bus: None,
            })
        })
        .collect()
}

impl Config {
    /// Every domain of `[libvirt]` (None without one), each one without a
    /// `[[vm]]` entry adopted as in `adopt_libvirt_domain`.
    pub fn adopt_libvirt_domains(
        &mut self,
    ) -> Result<Option<Vec<crate::live::libvirt::DomainSummary>>> {
        let bare: Vec<String> = self
            .vms
            .iter()
            .filter(|v| v.libvirt_domain.is_some() && v.volumes.is_empty())
            .map(|v| v.name.get_ref().clone())
            .collect();
        for name in bare {
            if let Err(e) = self.adopt_libvirt_domain(&name) {
                tracing::warn!("VM {name}: {e}");
            }
        }
        if self.libvirt.is_none() {
            return Ok(None);
        }
        let domains = crate::live::libvirt::list(&self.virsh())?;
        for d in &domains {
            let configured = self.vms.iter().any(|v| {
                v.libvirt_domain.as_deref() == Some(d.name.as_str()) || v.name.get_ref() == &d.name
            });
            if configured || d.problem.is_some() {
                continue;
            }
            // The definition the listing read: not asked for twice.
            if let Some(e) = d
                .facts
                .as_ref()
                .and_then(|f| self.entry_for_domain(&d.name, f))
            {
                self.vms.push(e);
            }
        }
        Ok(Some(domains))
    }

    /// A path from the config, relative to the config file's directory
    /// (`rbd:POOL/IMAGE` is not a path).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if crate::source::rbd::RbdImage::is_rbd(p) {
            return p.to_path_buf();
        }
        match self.path.as_ref().and_then(|c| c.parent()) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// The definition a backup of this VM stores: its domain XML or spec,
    /// and its boot checks.
    pub fn definition_of(&self, vm: &VmConfig) -> Result<crate::vm::Definition> {
        let d = crate::vm::VmDescription {
            name: vm.name.get_ref().clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            firmware: vm.firmware,
            machine: vm.machine.clone(),
            volumes: vm
                .volumes
                .iter()
                .map(|v| {
                    (
                        v.name.get_ref().clone(),
                        v.role,
                        self.resolve(&v.path),
                        v.bus,
                    )
                })
                .collect(),
            nics: vm.nics.clone(),
            domain_xml: vm.domain_xml.as_ref().map(|p| self.resolve(p)),
            libvirt_domain: vm.libvirt_domain.clone(),
            libvirt_uri: self.libvirt.as_ref().and_then(|l| l.uri.clone()),
            checks: vm.check.as_ref().map(|c| c.checks()),
        };
        crate::vm::Definition::describe(&d)
    }

    /// The definition for a backup of `vm`: a VM outside the inventory has
    /// none; a domain XML that cannot be read (virsh down, file gone) is
    /// warned about and the config's spec is stored instead, so the backup
    /// itself still runs.
    pub fn definition_for_backup(&self, vm: &str) -> Option<crate::vm::Definition> {
        let vmc = self.vm(vm)?;
        match self.definition_of(vmc) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(
                    "VM {vm}: {e}; storing the config's VM spec instead of the domain XML"
                );
                let mut plain = vmc.clone();
                plain.domain_xml = None;
                plain.libvirt_domain = None;
                match self.definition_of(&plain) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!("VM {vm}: no definition stored: {e}");
                        None
                    }
                }
            }
        }
    }

    /// How a backup reaches the VM's QEMU.
    pub fn live_for(&self, vm: &str) -> crate::live::LiveConfig {
        let mut live = crate::live::LiveConfig::default();
        if let Some(v) = self.vm(vm) {
            live.qmp = v.qmp.as_ref().map(|p| self.resolve(p));
            live.agent = v.guest_agent.as_ref().map(|p| self.resolve(p));
            if let Some(t) = v.freeze_timeout {
                live.freeze_timeout = std::time::Duration::from_secs(t.clamp(1, 600));
            }
            live.bitmaps = v.bitmaps.unwrap_or(true);
            live.libvirt = v
                .libvirt_domain
                .as_ref()
                .map(|d| crate::live::LibvirtDomain {
                    uri: self.libvirt.as_ref().and_then(|l| l.uri.clone()),
                    domain: d.clone(),
                });
        }
        live
    }

    pub fn remote(&self, name: &str) -> Option<&RemoteConfig> {
        self.remotes.get(name)
    }

    /// Each configured VM with its volumes' names, in config order.
    pub fn inventory(&self) -> Vec<(String, Vec<String>)> {
        self.vms
            .iter()
            .map(|v| {
                (
                    v.name.get_ref().clone(),
                    v.volumes.iter().map(|x| x.name.get_ref().clone()).collect(),
                )
            })
            .collect()
    }

    pub fn vm(&self, name: &str) -> Option<&VmConfig> {
        self.vms.iter().find(|v| v.name.get_ref() == name)
    }

    /// The local repository: `--repo`/`LIFEBOAT_REPO`, else the config's,
    /// else one in the data directory.
    pub fn repo_path(&self, explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        if let Some(r) = &self.repository {
            // Relative paths in a config file are relative to that file.
            if r.is_relative() {
                if let Some(dir) = self.path.as_ref().and_then(|p| p.parent()) {
                    return dir.join(r);
                }
            }
            return r.clone();
        }
        data_dir().join("repo")
    }
}

/// What the command line says about every remote it talks to: bandwidth
/// limits, the request timeout, and whether plain HTTP off loopback may
/// carry a token. Set once by the CLI into `Config::overrides`, so every
/// face and engine that opens a remote through the config (CLI, console,
/// daemon, drills, cloud restores) honours it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub limits: crate::store::throttle::Limits,
    pub timeout: Option<std::time::Duration>,
    pub insecure_http: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sample_config() {
        let text = include_str!("../../../../assets/config.sample.toml");
        let cfg = Config::parse(Path::new("sample.toml"), text).unwrap();
        assert!(!cfg.vms.is_empty());
    }

    #[test]
    fn libvirt_settings_are_checked_at_load() {
        let ok = Config::parse(
            Path::new("c.toml"),
            "[libvirt]\nuri = \"qemu:///system\"\n\n[[vm]]\nname = \"web\"\nlibvirt_domain = \"web.example\"\n",
        )
        .unwrap();
        let live = ok.live_for("web");
        let d = live.libvirt.expect("through libvirt");
        assert_eq!(
            (d.uri.as_deref(), d.domain.as_str()),
            (Some("qemu:///system"), "web.example")
        );
        assert!(live.qmp.is_none());
        for (text, want) in [
            (
                "[[vm]]\nname = \"a\"\nqmp = \"a.qmp\"\nlibvirt_domain = \"a\"\n",
                "qmp and libvirt_domain",
            ),
            ("[libvirt]\npolicy = \"nope\"\n", "no such [policy.NAME]"),
            ("[libvirt]\nuri = \"nonsense\"\n", "not a libvirt URI"),
            ("[libvirt]\nurl = \"qemu:///system\"\n", "url"),
        ] {
            let e = Config::parse(Path::new("c.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn a_remote_named_local_is_refused() {
        let text = "[remote.local]\nurl = \"/srv/x\"\n";
        let e = Config::parse(Path::new("/etc/lb.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not be named \"local\""), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "repository = \"/r\"\n\n[[vm]]\nname = \"web/01\"\n";
        let e = Config::parse(Path::new("/etc/lb.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/lb.toml") && e.contains("line 4") && e.contains("invalid"),
            "{e}"
        );
        let e = Config::parse(Path::new("c.toml"), "[[vm]]\nname = \"a\"\nflavour = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("flavour"), "{e}");
        let e = Config::parse(
            Path::new("c.toml"),
            "[[vm]]\nname = \"a\"\n[[vm.volume]]\nname = \"r\"\npath = \"/x\"\nrole = \"boot\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 6"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "[[vm]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = Config::parse(
            Path::new("c.toml"),
            "[[vm]]\nname = \"a\"\nqmp = \"a.qmp\"\nfreeze_timeout = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("freeze_timeout = 0"), "{e}");
        let mut c = Config::parse(
            Path::new("/etc/lifeboat/c.toml"),
            "[[vm]]\nname = \"a\"\nqmp = \"run/a.qmp\"\nguest_agent = \"/run/a.qga\"\nbitmaps = false\n",
        )
        .unwrap();
        c.path = Some(PathBuf::from("/etc/lifeboat/c.toml"));
        let live = c.live_for("a");
        assert_eq!(live.qmp, Some(PathBuf::from("/etc/lifeboat/run/a.qmp")));
        assert_eq!(live.agent, Some(PathBuf::from("/run/a.qga")));
        assert!(!live.bitmaps);
    }

    #[test]
    fn bad_policies_are_refused_with_line_and_reason() {
        let base = "[remote.offsite]\nurl = \"/srv/off\"\n";
        let cases = [
            (
                "[[vm]]\nname = \"web\"\npolicy = \"nightly\"\n",
                "line 3: VM web: no policy named \"nightly\"",
            ),
            (
                "default_policy = \"x\"\n",
                "line 1: default_policy: no policy named \"x\"",
            ),
            (
                "[policy.p]\nschedule = \"daily 25:00\"\n",
                "policy p: schedule",
            ),
            ("[policy.p]\nkeep_last = 0\n", "keeps nothing"),
            (
                "[policy.p]\npush = [\"cloud\"]\n",
                "push target \"cloud\" is not a configured remote",
            ),
            ("[policy.p]\nschedul = \"daily 02:00\"\n", "unknown field"),
            (
                "gc_schedule = \"weekly xyz 04:00\"\n",
                "line 1: gc_schedule",
            ),
            (
                "gc_schedule = \"0 0 31 2 *\"\n",
                "line 1: gc_schedule never fires",
            ),
        ];
        for (text, want) in cases {
            let full = format!("{text}{base}");
            let e = Config::parse(Path::new("/etc/lifeboat.toml"), &full)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/etc/lifeboat.toml") && e.contains(want),
                "{text}: {e}"
            );
        }
        let ok = Config::parse(
            Path::new("c.toml"),
            "default_policy = \"nightly\"\n[policy.nightly]\nschedule = \"daily 02:30\"\nkeep_daily = 7\n[[vm]]\nname = \"web\"\n",
        )
        .unwrap();
        assert_eq!(ok.policy_for("web").unwrap().name, "nightly");
    }
}
