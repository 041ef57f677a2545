//! RBD volumes: each backup reads RBD snapshots `lifeboat-<set>` it takes
//! itself, and keeps them as the base of the next backup into the same
//! repository, which then reads only the extents `rbd diff --from-snap`
//! reports (the same lineage rules as dirty bitmaps, `bitmap::decide`): a
//! missing base snapshot means a full read with the reason; the base is
//! removed once the next backup is durable; a killed backup's snapshot (or
//! another repository's) is removed by the next backup; snapshots with
//! other names are never touched. A failed backup removes the snapshots it
//! took, so the previous ones stay the base.
//!
//! Every volume of a VM is snapshotted before any is read, one after
//! another — not in a Ceph consistency group: Pacific's group snapshots
//! live in the group namespace, which neither `rbd export`/`rbd diff` nor
//! QEMU's rbd driver can open by name. When the VM runs under QEMU (`qmp`)
//! it is paused for the moment the snapshots take (one instant; QEMU
//! drains and flushes its I/O when it stops), inside a freeze of the
//! guest's filesystems when its agent answers (application-consistent).
//! Without a monitor each volume is crash-consistent on its own, and the
//! manifest says so.

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::bitmap::{decide, BitmapState, Read, Repair};
use super::capture::{previous_for, PreviousBackup};
use super::qmp::Qmp;
use super::settings::{LiveConfig, BITMAPS_OFF};
use crate::error::Result;
use crate::format::manifest::{is_bitmap_name, Consistency};
use crate::source::rbd::{CephConfig, RbdImage};
use crate::source::VolumeReader;

/// One volume's lineage, decided before any snapshot is taken (read-only:
/// also what `vms` shows).
pub struct Planned {
    image: RbdImage,
    pub read: Read,
    /// Lifeboat snapshots no backup of this repository builds on.
    strays: Vec<String>,
    /// Keep the new snapshot as the next backup's base (not with
    /// `bitmaps = false`, which neither uses nor keeps a lineage).
    keep: bool,
}

pub fn plan(
    path: &Path,
    cluster: &CephConfig,
    prev: Option<&PreviousBackup>,
    chunk_size: u64,
    bitmaps: bool,
) -> Result<Planned> {
    let image = RbdImage::parse(path)?;
    if !bitmaps {
        return Ok(Planned {
            image,
            read: Read::Full {
                reason: BITMAPS_OFF.to_string(),
            },
            // Another repository's lineage may rely on them.
            strays: Vec::new(),
            keep: false,
        });
    }
    let size = cluster.size(&image)?;
    let snaps = cluster.snapshots(&image)?;
    let ours: Vec<BitmapState> = snaps
        .iter()
        .filter(|s| is_bitmap_name(s))
        .map(|s| BitmapState {
            name: s.clone(),
            recording: true,
            inconsistent: false,
            busy: false,
        })
        .collect();
    let p = previous_for(prev, chunk_size, size);
    let (read, repairs) = decide(&p, &ours);
    let read = match (&p.bitmap, read) {
        (Some(k), Read::Full { .. }) if p.reusable && !snaps.contains(k) => Read::Full {
            reason: format!(
                "the image has no snapshot {k} (removed, or the image was recreated){}",
                ours.first()
                    .map(|s| format!("; its snapshot {} belongs to a backup this repository does not have (another lineage)", s.name))
                    .unwrap_or_default()
            ),
        },
        (_, r) => r,
    };
    let strays = repairs
        .into_iter()
        .filter_map(|r| match r {
            Repair::Remove(s) => Some(s),
            Repair::MergeBack { .. } => None,
        })
        .collect();
    Ok(Planned {
        image,
        read,
        strays,
        keep: true,
    })
}

impl Planned {
    /// Lifeboat snapshots of this image no backup of the repository
    /// builds on (a killed or failed run's, or another repository's).
    pub fn strays(&self) -> impl Iterator<Item = String> + '_ {
        self.strays
            .iter()
            .map(|s| format!("RBD snapshot {}@{s}", self.image.spec()))
    }

    /// Removes them now (`vms --repair`) instead of at the next backup.
    pub fn remove_strays(&self, cluster: &CephConfig) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for s in &self.strays {
            cluster.snap_remove(&self.image, s)?;
            removed.push(format!("RBD snapshot {}@{s}", self.image.spec()));
        }
        Ok(removed)
    }
}

/// The snapshot a backup took, removed again unless committed.
pub struct RbdSnapshots {
    cluster: CephConfig,
    image: RbdImage,
    pub new_snap: String,
    base: Option<String>,
    strays: Vec<String>,
    keep: bool,
    done: bool,
}

impl RbdSnapshots {
    /// The snapshot the next backup builds on, when it is kept.
    pub fn kept(&self) -> Option<&str> {
        self.keep.then_some(self.new_snap.as_str())
    }

    /// After the manifests are durable: the new snapshot is the base of
    /// the next backup; the old base and strays go. Returns warnings.
    pub fn commit(mut self) -> Vec<String> {
        self.done = true;
        let mut warnings = Vec::new();
        let drop_new = (!self.keep).then_some(&self.new_snap);
        for s in self.base.iter().chain(&self.strays).chain(drop_new) {
            if let Err(e) = self.cluster.snap_remove(&self.image, s) {
                warnings.push(format!(
                    "{}: removing snapshot {s}: {e} (the next backup removes it)",
                    self.image.spec()
                ));
            }
        }
        warnings
    }
}

impl Drop for RbdSnapshots {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cluster.snap_remove(&self.image, &self.new_snap);
        }
    }
}

/// One volume's snapshot, taken and not yet read.
pub struct Taken {
    pub snapshots: RbdSnapshots,
    pub read: Read,
}

/// Every RBD volume of a VM, snapshotted before any is read.
pub struct SnapshotSet {
    pub disks: Vec<Taken>,
    pub consistency: Consistency,
    pub note: Option<String>,
    pub repaired: Vec<String>,
}

/// How the VM is held still while its snapshots are taken.
pub enum Hold<'a> {
    /// Stopped: nothing writes.
    Offline(String),
    /// Runs under QEMU: frozen through its agent, else paused.
    Running(&'a mut Qmp),
    /// No monitor to ask.
    Unknown,
}

impl SnapshotSet {
    pub fn take(
        planned: Vec<Planned>,
        cluster: &CephConfig,
        set: &str,
        hold: Hold<'_>,
        cfg: &LiveConfig,
    ) -> Result<SnapshotSet> {
        let n = planned.len();
        let name = format!("lifeboat-{set}");
        let snap_all = || -> Result<Vec<Taken>> {
            let mut taken = Vec::new();
            for p in planned {
                cluster.snap_create(&p.image, &name)?;
                // From here on a failure removes it again (Drop).
                taken.push(Taken {
                    snapshots: RbdSnapshots {
                        cluster: cluster.clone(),
                        image: p.image,
                        new_snap: name.clone(),
                        base: match &p.read {
                            Read::Incremental { bitmap } => Some(bitmap.clone()),
                            Read::Full { .. } => None,
                        },
                        strays: p.strays,
                        keep: p.keep,
                        done: false,
                    },
                    read: p.read,
                });
            }
            Ok(taken)
        };
        let several = if n > 1 {
            format!("its {n} RBD volumes were snapshotted one after another")
        } else {
            "its RBD volume was snapshotted".to_string()
        };
        match hold {
            Hold::Offline(why) => Ok(SnapshotSet {
                disks: snap_all()?,
                consistency: Consistency::Offline,
                note: Some(format!("the VM is not running: {why}")),
                repaired: Vec::new(),
            }),
            Hold::Unknown => Ok(SnapshotSet {
                disks: snap_all()?,
                consistency: Consistency::Crash,
                note: Some(if n > 1 {
                    format!("{several} with nothing holding the VM still (no `qmp` monitor): each volume is crash-consistent on its own")
                } else {
                    "read from an RBD snapshot: crash-consistent (the image may be in use)"
                        .to_string()
                }),
                repaired: Vec::new(),
            }),
            Hold::Running(qmp) => {
                // A freeze stops filesystems, not a program writing to a
                // device: several volumes need the VM paused too (QEMU
                // drains and flushes its I/O when it stops).
                let (taken, freeze) =
                    super::agent::frozen_around(cfg.agent.as_deref(), cfg.freeze_timeout, |_| {
                        if n < 2 {
                            return snap_all().map(|t| (t, None));
                        }
                        let (t, paused) = paused_around(qmp, snap_all)?;
                        t.map(|t| (t, Some(paused)))
                    });
                let (disks, paused) = taken?;
                let mut what = match paused {
                    Some(Some(ms)) => format!("{several} with the VM paused for {ms} ms"),
                    Some(None) => format!("{several} with the VM paused (it already was)"),
                    None => several.clone(),
                };
                if freeze.application() {
                    what.push_str(" and the guest's filesystems frozen");
                }
                if n > 1 {
                    what.push_str(": one instant");
                }
                let consistency = if freeze.application() {
                    Consistency::Application
                } else {
                    Consistency::Crash
                };
                let note = std::iter::once(what)
                    .chain(freeze.note())
                    .collect::<Vec<_>>();
                Ok(SnapshotSet {
                    disks,
                    consistency,
                    note: Some(note.join("; ")),
                    repaired: freeze.repaired.into_iter().collect(),
                })
            }
        }
    }

    /// A reader of volume `i` as its snapshot holds it: the whole image's
    /// data, or only what changed since the previous backup's snapshot.
    /// (`rbd export-diff` as one stream instead of qemu-nbd was tried: no
    /// faster on the benchmark's cluster, and slower with latency injected
    /// into the OSD, for it walks the diff before it reads.)
    pub fn reader(&self, i: usize) -> Result<Box<dyn VolumeReader>> {
        let s = &self.disks[i].snapshots;
        let reader = s
            .cluster
            .open_snapshot(&s.image, &s.new_snap, s.base.as_deref())?;
        Ok(Box::new(reader))
    }

    pub fn commit(self) -> Vec<String> {
        self.disks
            .into_iter()
            .flat_map(|t| t.snapshots.commit())
            .collect()
    }
}

/// Runs `action` with the VM's vCPUs stopped (`stop`, then `cont`, always)
/// when it runs; a VM already paused is left as it was. Returns how long
/// it was paused, or None when it already was.
fn paused_around<T>(
    qmp: &mut Qmp,
    action: impl FnOnce() -> Result<T>,
) -> Result<(Result<T>, Option<u128>)> {
    let status = qmp.execute("query-status", json!({}))?;
    if status.get("running").and_then(serde_json::Value::as_bool) != Some(true) {
        return Ok((action(), None));
    }
    let t = Instant::now();
    qmp.execute("stop", json!({}))?;
    let result = action();
    let resumed = qmp.execute("cont", json!({}));
    let ms = t.elapsed().as_millis();
    if let Err(e) = resumed {
        return Err(super::qmp::err(
            qmp.path(),
            format!("resuming the VM after its RBD snapshots failed: {e}; it may still be paused: send `cont` on its monitor (or `virsh resume`)"),
        ));
    }
    Ok((result, Some(ms)))
}
