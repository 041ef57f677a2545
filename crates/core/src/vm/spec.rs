//! The VM model: what lifeboat keeps of a VM besides its disks (spec,
//! boot checks, the domain XML) and the settings that describe one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::format::manifest::Role;

pub const DEFINITION_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    #[default]
    Virtio,
    Ide,
    Sata,
    Scsi,
}

impl Bus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Bus::Virtio => "virtio",
            Bus::Ide => "ide",
            Bus::Sata => "sata",
            Bus::Scsi => "scsi",
        }
    }

    /// libvirt's device name prefix for the bus.
    pub fn dev_prefix(&self) -> &'static str {
        match self {
            Bus::Virtio => "vd",
            Bus::Ide => "hd",
            Bus::Sata | Bus::Scsi => "sd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The backed-up volume this disk is.
    pub volume: String,
    pub bus: Bus,
    /// The guest's device name (vda, sdb): what a restored domain uses.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// virtio, e1000, e1000e or rtl8139.
    pub model: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// The libvirt network or bridge it was attached to (informational).
    #[serde(default)]
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// QEMU machine type: pc, q35, or a versioned one (pc-q35-7.2).
    pub machine: String,
    /// In boot order.
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
}

/// An HTTP check: GET `path` on `port` inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: u16,
    #[serde(default = "default_http_path")]
    pub path: String,
    /// Text the answer's body must contain.
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default = "default_http_status")]
    pub status: u16,
}

fn default_http_path() -> String {
    "/".into()
}

fn default_http_status() -> u16 {
    200
}

/// What proves a booted VM works. Stored in the definition, so a drill on
/// another site checks the same things; a host command is not (see
/// `CheckConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootChecks {
    /// Text the serial console must show (e.g. `login:` or a banner).
    #[serde(default)]
    pub serial: Option<String>,
    /// Text on the serial console or the firmware's log that fails the
    /// boot at once (besides the built-in ones: no bootable device, kernel
    /// panic).
    #[serde(default)]
    pub fail: Vec<String>,
    #[serde(default)]
    pub http: Option<HttpCheck>,
    /// TCP ports inside the guest that must accept a connection.
    #[serde(default)]
    pub tcp: Vec<u16>,
    /// Seconds from power-on until every check must have passed.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    120
}

impl Default for BootChecks {
    fn default() -> Self {
        BootChecks {
            serial: Some("login:".into()),
            fail: Vec::new(),
            http: None,
            tcp: Vec::new(),
            timeout_secs: default_timeout(),
        }
    }
}

/// `[vm.check]` in the config: the stored checks plus what only the local
/// host may say — a command whose exit code decides, run on this host
/// with the guest's forwarded ports in its environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub serial: Option<String>,
    #[serde(default)]
    pub fail: Vec<String>,
    pub http: Option<HttpCheck>,
    #[serde(default)]
    pub tcp: Vec<u16>,
    pub timeout_secs: Option<u64>,
    /// argv; `LIFEBOAT_GUEST_PORT_<N>` holds the loopback port that
    /// reaches guest port N (from `forward`, `tcp` and `http`).
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub forward: Vec<u16>,
}

impl CheckConfig {
    pub fn checks(&self) -> BootChecks {
        BootChecks {
            serial: self.serial.clone(),
            fail: self.fail.clone(),
            http: self.http.clone(),
            tcp: self.tcp.clone(),
            timeout_secs: self.timeout_secs.unwrap_or_else(default_timeout),
        }
    }
}

/// The document stored for a backup set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub format: u32,
    pub vm: String,
    pub spec: VmSpec,
    /// The libvirt domain XML as the VM's host had it.
    #[serde(default)]
    pub domain_xml: Option<String>,
    #[serde(default)]
    pub checks: Option<BootChecks>,
}

/// What the config says about a VM, for building its definition.
#[derive(Debug, Clone, Default)]
pub struct VmDescription {
    pub name: String,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub firmware: Option<Firmware>,
    pub machine: Option<String>,
    /// (volume, role, source path, bus) in the config's order.
    pub volumes: Vec<(String, Role, PathBuf, Option<Bus>)>,
    pub nics: Vec<NicSpec>,
    pub domain_xml: Option<PathBuf>,
    /// Ask `virsh dumpxml` for the domain (named so, or as the VM).
    pub libvirt_domain: Option<String>,
    /// The libvirt connection (None: libvirt's default).
    pub libvirt_uri: Option<String>,
    pub checks: Option<BootChecks>,
}

pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Hex of a fresh random UUID (version 4), for a restored domain.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
