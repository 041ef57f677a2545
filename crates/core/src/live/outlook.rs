//! What the next backup of a VM will be, as `lifeboat vms` and the
//! console show it (the types; `live::outlook` and `libvirt::outlook` fill
//! them in).

use std::path::PathBuf;

use serde::Serialize;

use super::bitmap;
use super::capture;

/// Whether a VM runs, as its monitor says.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunState {
    pub running: bool,
    /// QEMU's status (running, paused, …) or why the VM counts as stopped.
    pub status: String,
}

/// What the next backup of a VM will be, without changing anything.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outlook {
    /// None when the VM has no `qmp` configured.
    pub run: Option<RunState>,
    pub volumes: Vec<VolumeOutlook>,
    /// What a killed backup left in the running QEMU (`repair` removes it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeOutlook {
    pub volume: String,
    /// Whether the next backup reads only what a bitmap marks.
    pub incremental: bool,
    /// Why it reads the whole disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One volume of a VM for `outlook`: name, path, claimed format, and the
/// previous backup in the repository asked about.
pub struct VolumeRef {
    pub name: String,
    pub path: PathBuf,
    pub format: crate::source::FormatChoice,
    pub previous: Option<capture::PreviousBackup>,
}

pub(super) fn verdict(name: &str, read: bitmap::Read) -> VolumeOutlook {
    match read {
        bitmap::Read::Incremental { .. } => VolumeOutlook {
            volume: name.to_string(),
            incremental: true,
            reason: None,
        },
        bitmap::Read::Full { reason } => VolumeOutlook {
            volume: name.to_string(),
            incremental: false,
            reason: Some(reason),
        },
    }
}
