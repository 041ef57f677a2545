//! How a running VM is reached, and the live engine's fixed limits.

use std::path::PathBuf;
use std::time::Duration;

/// How a VM's running QEMU is reached (`qmp`, `guest_agent` in its
/// `[[vm]]` entry).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub qmp: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    /// How long the agent may take to answer or to freeze.
    pub freeze_timeout: Duration,
    /// Track changes with dirty bitmaps (running VMs and offline qcow2;
    /// libvirt's checkpoints for a libvirt domain).
    pub bitmaps: bool,
    /// The libvirt domain the VM runs as: backed up through libvirt's
    /// backup API while it runs (never with `qmp`).
    pub libvirt: Option<LibvirtDomain>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            qmp: None,
            agent: None,
            freeze_timeout: Duration::from_secs(10),
            bitmaps: true,
            libvirt: None,
        }
    }
}

/// Why a VM's disks are read whole when its config turns bitmaps off.
pub const BITMAPS_OFF: &str = "dirty bitmaps are off for this VM (bitmaps = false)";

/// QMP commands wait at most this long for QEMU.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// A libvirt domain a VM is backed up through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtDomain {
    pub uri: Option<String>,
    pub domain: String,
}

impl LibvirtDomain {
    pub fn virsh(&self) -> super::virsh::Virsh {
        super::virsh::Virsh::new(self.uri.clone())
    }

    /// The key of the host-wide one-backup-at-a-time lock.
    pub fn lock_key(&self) -> PathBuf {
        PathBuf::from(format!(
            "libvirt:{}:{}",
            self.uri.as_deref().unwrap_or(""),
            self.domain
        ))
    }
}
