//! Running VMs: asked through QEMU's monitor (QMP) and guest agent, never
//! read behind QEMU's back. `capture` takes one instant of all of a VM's
//! disks and exports it over NBD; `bitmap` decides which dirty bitmap a
//! backup may trust.

pub mod agent;
pub mod bitmap;
pub mod capture;
pub mod offline;
pub mod qmp;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;

/// How a VM's running QEMU is reached (`qmp`, `guest_agent` in its
/// `[[vm]]` entry).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub qmp: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    /// How long the agent may take to answer or to freeze.
    pub freeze_timeout: Duration,
    /// Track changes with dirty bitmaps (running VMs and offline qcow2).
    pub bitmaps: bool,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            qmp: None,
            agent: None,
            freeze_timeout: Duration::from_secs(10),
            bitmaps: true,
        }
    }
}

/// QMP commands wait at most this long for QEMU.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a VM runs, as its monitor says.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunState {
    pub running: bool,
    /// QEMU's status (running, paused, …) or why the VM counts as stopped.
    pub status: String,
}

/// Asks the VM's monitor whether it runs (for the console and `status`).
pub fn run_state(cfg: &LiveConfig) -> Result<Option<RunState>> {
    let Some(path) = &cfg.qmp else {
        return Ok(None);
    };
    match qmp::Qmp::connect(path, Duration::from_secs(3))? {
        Err(qmp::Absent(why)) => Ok(Some(RunState {
            running: false,
            status: format!("not running ({why})"),
        })),
        Ok(mut q) => {
            let v = q.execute("query-status", serde_json::json!({}))?;
            let status = v
                .get("status")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown");
            Ok(Some(RunState {
                running: true,
                status: crate::text::escape(status).into_owned(),
            }))
        }
    }
}
