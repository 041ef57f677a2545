//! Running VMs: asked through QEMU's monitor (QMP) and guest agent, never
//! read behind QEMU's back. `capture` takes one instant of all of a VM's
//! disks and exports it over NBD; `bitmap` decides which dirty bitmap a
//! backup may trust.

pub mod agent;
pub mod bitmap;
pub mod capture;
pub mod libvirt;
pub mod offline;
mod outlook;
pub mod qmp;
pub mod rbd;
pub mod settings;
pub mod virsh;
pub mod vmlock;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Result;
use outlook::verdict;
pub use outlook::{Outlook, RunState, VolumeOutlook, VolumeRef};
pub use settings::{LibvirtDomain, LiveConfig, BITMAPS_OFF, QMP_TIMEOUT};
pub use vmlock::VmLock;

/// Asks the VM's monitor whether it runs; the connection is kept for
/// further questions. None when the VM has no `qmp`.
fn run_state(cfg: &LiveConfig) -> (Option<RunState>, Option<qmp::Qmp>) {
    let Some(path) = &cfg.qmp else {
        return (None, None);
    };
    let asked = qmp::Qmp::connect(path, Duration::from_secs(3)).and_then(|c| match c {
        Err(qmp::Absent(why)) => Ok((format!("not running ({why})"), None)),
        Ok(mut q) => {
            let v = q.execute("query-status", serde_json::json!({}))?;
            let status = v
                .get("status")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown");
            Ok((crate::text::escape(status).into_owned(), Some(q)))
        }
    });
    match asked {
        Ok((status, q)) => (
            Some(RunState {
                running: q.is_some(),
                status,
            }),
            q,
        ),
        Err(e) => (
            Some(RunState {
                running: false,
                status: format!("unknown: {e}"),
            }),
            None,
        ),
    }
}

/// Asks QEMU (running) or the images (stopped) whether each volume's next
/// backup can read only what changed; read-only (no repairs).
pub fn outlook(
    cfg: &LiveConfig,
    ceph: &crate::source::rbd::CephConfig,
    volumes: &[VolumeRef],
    chunk_size: u64,
) -> Outlook {
    if let Some(d) = &cfg.libvirt {
        return libvirt::outlook(d, volumes, chunk_size, cfg.bitmaps);
    }
    // The monitor serves one client at a time: while a backup drives it,
    // asking would only wait.
    if cfg.qmp.as_deref().is_some_and(VmLock::held) {
        return Outlook {
            run: Some(RunState {
                running: true,
                status: "being backed up now".into(),
            }),
            volumes: Vec::new(),
            leftovers: Vec::new(),
        };
    }
    let (run, monitor) = run_state(cfg);
    let off = |why: &str| -> Vec<VolumeOutlook> {
        volumes
            .iter()
            .map(|v| VolumeOutlook {
                volume: v.name.clone(),
                incremental: false,
                reason: Some(why.to_string()),
            })
            .collect()
    };
    let mut monitor = monitor;
    let leftovers = monitor
        .as_mut()
        .map(|q| capture::leftovers(q).unwrap_or_default())
        .unwrap_or_default();
    if !cfg.bitmaps {
        return Outlook {
            run,
            volumes: off(BITMAPS_OFF),
            leftovers,
        };
    }
    if volumes
        .iter()
        .any(|v| crate::source::rbd::RbdImage::is_rbd(&v.path))
    {
        // Their lineage is in RBD snapshots, running or not.
        let mut leftovers = leftovers;
        let volumes = volumes
            .iter()
            .map(|v| {
                let read = match rbd::plan(&v.path, ceph, v.previous.as_ref(), chunk_size, true) {
                    Ok(p) => {
                        leftovers.extend(p.strays());
                        p.read
                    }
                    Err(e) => bitmap::Read::Full {
                        reason: format!("cannot tell: {e}"),
                    },
                };
                verdict(&v.name, read)
            })
            .collect();
        return Outlook {
            run,
            volumes,
            leftovers,
        };
    }
    if let Some(mut q) = monitor {
        let pairs: Vec<(String, PathBuf)> = volumes
            .iter()
            .map(|v| (v.name.clone(), v.path.clone()))
            .collect();
        let volumes = match capture::disk_info(&mut q, &pairs) {
            Ok(infos) => volumes
                .iter()
                .zip(infos)
                .map(|(v, d)| {
                    let prev = capture::previous_for(v.previous.as_ref(), chunk_size, d.size);
                    verdict(&v.name, bitmap::decide(&prev, &d.bitmaps).0)
                })
                .collect(),
            Err(e) => off(&format!("cannot tell: {e}")),
        };
        return Outlook {
            run,
            volumes,
            leftovers,
        };
    }
    let volumes = volumes
        .iter()
        .map(|v| {
            let qcow2 = match v.format {
                crate::source::FormatChoice::Qcow2 => true,
                crate::source::FormatChoice::Raw => false,
                crate::source::FormatChoice::Auto => {
                    crate::source::raw::looks_like_qcow2(&v.path).unwrap_or(false)
                }
            };
            if !qcow2 {
                return verdict(
                    &v.name,
                    bitmap::Read::Full {
                        reason: "a raw image keeps no dirty bitmap while no QEMU runs it".into(),
                    },
                );
            }
            match crate::source::qemu::info(
                &v.path,
                Some(crate::format::manifest::ImageFormat::Qcow2),
            ) {
                Ok(info) => {
                    let prev =
                        capture::previous_for(v.previous.as_ref(), chunk_size, info.virtual_size);
                    verdict(
                        &v.name,
                        bitmap::decide(&prev, &offline::bitmaps_of(&info)).0,
                    )
                }
                Err(e) => verdict(
                    &v.name,
                    bitmap::Read::Full {
                        reason: format!("cannot tell: {e}"),
                    },
                ),
            }
        })
        .collect();
    Outlook {
        run,
        volumes,
        leftovers,
    }
}

/// Removes the lifeboat snapshots of a VM's RBD volumes that no backup of
/// this repository builds on (a killed or failed run's), at once: they
/// keep the data they held in Ceph. Under the VM's lock, as a backup.
pub fn repair_rbd(
    cfg: &LiveConfig,
    ceph: &crate::source::rbd::CephConfig,
    volumes: &[VolumeRef],
    chunk_size: u64,
) -> Result<Vec<String>> {
    let Some(first) = volumes.first() else {
        return Ok(Vec::new());
    };
    let key = cfg.qmp.clone().unwrap_or_else(|| first.path.clone());
    let _lock = VmLock::acquire(&key)?;
    let mut removed = Vec::new();
    for v in volumes {
        let p = rbd::plan(&v.path, ceph, v.previous.as_ref(), chunk_size, cfg.bitmaps)?;
        removed.extend(p.remove_strays(ceph)?);
    }
    Ok(removed)
}

/// Removes what a killed backup left in a running VM's QEMU, at once (not
/// at its next backup, a day away on a daily schedule): the overlays stop
/// growing and the guest's writes their slowdown. Refused while a backup
/// of the VM runs. Returns what was removed (empty: nothing was left).
pub fn repair(cfg: &LiveConfig) -> Result<Vec<String>> {
    if let Some(d) = &cfg.libvirt {
        return libvirt::repair(d);
    }
    let Some(path) = &cfg.qmp else {
        return Ok(Vec::new());
    };
    let _lock = VmLock::acquire(path)?;
    match qmp::Qmp::connect(path, QMP_TIMEOUT)? {
        Err(qmp::Absent(_)) => Ok(Vec::new()),
        Ok(mut q) => {
            if capture::leftovers(&mut q)?.is_empty() {
                return Ok(Vec::new());
            }
            capture::repair(&mut q)
        }
    }
}
