//! Which dirty bitmap a backup may trust, and what to repair first.
//!
//! Each backup of a disk starts a bitmap named `lifeboat-<set>` at its
//! instant and records that name in its manifest. The next backup into
//! the same repository reads only what that bitmap marks, provided the
//! bitmap is still there, still recording and consistent. A backup that
//! failed or was killed leaves the old bitmap disabled and the new one
//! recording: their union is exactly what changed since the last good
//! backup, so it is merged back rather than thrown away.

use crate::format::manifest::is_bitmap_name;

/// A bitmap as QEMU (`query-named-block-nodes`) or `qemu-img info` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapState {
    pub name: String,
    pub recording: bool,
    /// Saved badly (QEMU stopped without writing it back): untrustworthy.
    pub inconsistent: bool,
    /// In use by another export or job.
    pub busy: bool,
}

/// What the previous backup of this volume in this repository left.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    /// Its bitmap, if it started one.
    pub bitmap: Option<String>,
    /// Whether its index can stand in for unread chunks (same chunk size
    /// and disk size).
    pub reusable: bool,
    /// Why not, when it cannot.
    pub why_not: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// Merge these recording bitmaps into `into`, enable it, remove them.
    MergeBack {
        into: String,
        from: Vec<String>,
    },
    Remove(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Read only what this bitmap marks.
    Incremental {
        bitmap: String,
    },
    Full {
        reason: String,
    },
}

/// Decides how to read a disk and which lifeboat bitmaps to repair or drop
/// first. Bitmaps not named like lifeboat's are never touched.
pub fn decide(prev: &Previous, bitmaps: &[BitmapState]) -> (Read, Vec<Repair>) {
    let ours: Vec<&BitmapState> = bitmaps.iter().filter(|b| is_bitmap_name(&b.name)).collect();
    let drop_all = |keep: Option<&str>| -> Vec<Repair> {
        ours.iter()
            .filter(|b| Some(b.name.as_str()) != keep)
            .map(|b| Repair::Remove(b.name.clone()))
            .collect()
    };
    let full = |reason: String| (Read::Full { reason }, drop_all(None));
    let Some(k) = prev.bitmap.as_deref() else {
        return full(match prev.why_not.as_deref() {
            Some(w) => w.to_string(),
            None if prev.reusable => {
                "the last backup started no bitmap (it was read offline or by an older lifeboat)"
                    .into()
            }
            None => "no earlier backup of this volume in this repository".into(),
        });
    };
    if !prev.reusable {
        return full(
            prev.why_not
                .clone()
                .unwrap_or_else(|| "the last backup cannot stand in for unread data".into()),
        );
    }
    let Some(mine) = ours.iter().find(|b| b.name == k) else {
        let other = ours
            .first()
            .map(|b| format!("; the disk's bitmap {} belongs to a backup this repository does not have (another lineage)", b.name))
            .unwrap_or_default();
        return full(format!(
            "the disk has no bitmap {k}: QEMU stopped without saving it (killed, or a raw disk, whose bitmap lives only while QEMU runs), or something removed it{other}"
        ));
    };
    if mine.inconsistent {
        return full(format!(
            "bitmap {k} is marked inconsistent (QEMU stopped without saving it)"
        ));
    }
    if mine.busy {
        return (
            Read::Full {
                reason: format!("bitmap {k} is in use by another job or export"),
            },
            Vec::new(),
        );
    }
    let others: Vec<&&BitmapState> = ours.iter().filter(|b| b.name != k).collect();
    let mut repairs = Vec::new();
    if !mine.recording {
        let from: Vec<String> = others
            .iter()
            .filter(|b| b.recording && !b.inconsistent && !b.busy)
            .map(|b| b.name.clone())
            .collect();
        if from.is_empty() {
            return full(format!(
                "bitmap {k} stopped recording and no bitmap took over (an interrupted backup)"
            ));
        }
        repairs.push(Repair::MergeBack {
            into: k.to_string(),
            from: from.clone(),
        });
        repairs.extend(
            others
                .iter()
                .filter(|b| !from.contains(&b.name))
                .map(|b| Repair::Remove(b.name.clone())),
        );
    } else {
        repairs.extend(others.iter().map(|b| Repair::Remove(b.name.clone())));
    }
    (
        Read::Incremental {
            bitmap: k.to_string(),
        },
        repairs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(c: char) -> String {
        format!("lifeboat-{}", c.to_string().repeat(32))
    }

    fn bm(c: char, recording: bool) -> BitmapState {
        BitmapState {
            name: name(c),
            recording,
            inconsistent: false,
            busy: false,
        }
    }

    fn prev(c: char) -> Previous {
        Previous {
            bitmap: Some(name(c)),
            reusable: true,
            why_not: None,
        }
    }

    #[test]
    fn first_backup_reads_everything_and_leaves_foreign_bitmaps() {
        let foreign = BitmapState {
            name: "backup-vda".into(),
            ..bm('a', true)
        };
        let (read, repairs) = decide(&Previous::default(), &[foreign]);
        assert!(matches!(read, Read::Full { reason } if reason.contains("no earlier backup")));
        assert!(repairs.is_empty());
    }

    #[test]
    fn the_recorded_bitmap_is_used_and_strays_removed() {
        let (read, repairs) = decide(&prev('a'), &[bm('a', true), bm('b', true)]);
        assert_eq!(read, Read::Incremental { bitmap: name('a') });
        assert_eq!(repairs, vec![Repair::Remove(name('b'))]);
    }

    #[test]
    fn an_interrupted_backup_is_merged_back() {
        let (read, repairs) = decide(&prev('a'), &[bm('a', false), bm('c', true)]);
        assert_eq!(read, Read::Incremental { bitmap: name('a') });
        assert_eq!(
            repairs,
            vec![Repair::MergeBack {
                into: name('a'),
                from: vec![name('c')]
            }]
        );
        let (read, _) = decide(&prev('a'), &[bm('a', false)]);
        assert!(matches!(read, Read::Full { .. }));
    }

    #[test]
    fn missing_inconsistent_or_foreign_lineage_reads_everything() {
        let (read, repairs) = decide(&prev('a'), &[bm('b', true)]);
        assert!(matches!(&read, Read::Full { reason } if reason.contains("another lineage")));
        assert_eq!(repairs, vec![Repair::Remove(name('b'))]);
        let mut bad = bm('a', true);
        bad.inconsistent = true;
        let (read, repairs) = decide(&prev('a'), &[bad]);
        assert!(matches!(&read, Read::Full { reason } if reason.contains("inconsistent")));
        assert_eq!(repairs, vec![Repair::Remove(name('a'))]);
        let p = Previous {
            reusable: false,
            why_not: Some("the disk grew".into()),
            ..prev('a')
        };
        let (read, _) = decide(&p, &[bm('a', true)]);
        assert_eq!(
            read,
            Read::Full {
                reason: "the disk grew".into()
            }
        );
    }
}
