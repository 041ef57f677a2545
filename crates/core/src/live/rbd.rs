//! RBD volumes: each backup reads an RBD snapshot `lifeboat-<set>` it
//! takes itself, and keeps it as the base of the next backup into the same
//! repository, which then reads only the extents `rbd diff --from-snap`
//! reports (the same lineage rules as dirty bitmaps, `bitmap::decide`): a
//! missing base snapshot means a full read with the reason; the base is
//! removed once the next backup is durable; a killed backup's snapshot (or
//! another repository's) is removed by the next backup; snapshots with
//! other names are never touched. A failed backup removes the snapshot it
//! took, so the previous one stays the base.
//!
//! Snapshots of several RBD volumes of one VM are taken one after another,
//! not in a Ceph consistency group: each volume is crash-consistent on its
//! own, and the manifest says so.

use std::path::Path;

use super::bitmap::{decide, BitmapState, Read, Repair};
use super::capture::{previous_for, PreviousBackup};
use crate::error::Result;
use crate::format::manifest::{is_bitmap_name, ImageFormat};
use crate::source::qemu::Qcow2Reader;
use crate::source::rbd::{CephConfig, RbdImage};
use crate::source::Source;

/// The snapshot a backup took, removed again unless committed.
pub struct RbdSnapshots {
    cluster: CephConfig,
    image: RbdImage,
    pub new_snap: String,
    base: Option<String>,
    strays: Vec<String>,
    done: bool,
}

pub struct Opened {
    pub source: Source,
    pub snapshots: RbdSnapshots,
    pub read: Read,
}

/// Takes the snapshot and opens it for reading: the whole image's data,
/// or only what changed since the previous backup's snapshot.
pub fn open(
    path: &Path,
    cluster: &CephConfig,
    prev: Option<&PreviousBackup>,
    chunk_size: u64,
    set: &str,
) -> Result<Opened> {
    let image = RbdImage::parse(path)?;
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
    let new_snap = format!("lifeboat-{set}");
    cluster.snap_create(&image, &new_snap)?;
    let snapshots = RbdSnapshots {
        cluster: cluster.clone(),
        image: image.clone(),
        new_snap: new_snap.clone(),
        base: match &read {
            Read::Incremental { bitmap } => Some(bitmap.clone()),
            Read::Full { .. } => None,
        },
        strays,
        done: false,
    };
    let extents = cluster.diff(&image, &new_snap, None)?;
    let dirty = match &snapshots.base {
        Some(b) => Some(cluster.diff(&image, &new_snap, Some(b))?),
        None => None,
    };
    let reader = Qcow2Reader::open_rbd(
        path,
        &cluster.qemu_filename(&image, Some(&new_snap)),
        extents,
        dirty,
    )?;
    Ok(Opened {
        source: Source {
            path: path.to_path_buf(),
            format: ImageFormat::Raw,
            reader: Box::new(reader),
        },
        snapshots,
        read,
    })
}

impl RbdSnapshots {
    /// After the manifests are durable: the new snapshot is the base of
    /// the next backup; the old base and strays go. Returns warnings.
    pub fn commit(mut self) -> Vec<String> {
        self.done = true;
        let mut warnings = Vec::new();
        for s in self.base.iter().chain(&self.strays) {
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
