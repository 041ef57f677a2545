//! Chunk-level comparison of two images (backups or live files).

use serde::Serialize;

use super::index::Index;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Same,
    Changed,
    Added,
    Removed,
}

/// A run of consecutive chunks with the same kind of change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Range {
    pub change: Change,
    pub offset: u64,
    pub length: u64,
    pub chunks: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    pub chunk_size: u64,
    pub size_a: u64,
    pub size_b: u64,
    pub same_bytes: u64,
    pub changed_bytes: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    pub ranges: Vec<Range>,
}

impl DiffSummary {
    pub fn identical(&self) -> bool {
        self.size_a == self.size_b
            && self.changed_bytes == 0
            && self.added_bytes == 0
            && self.removed_bytes == 0
    }
}

pub fn diff(a: &Index, b: &Index) -> Result<DiffSummary> {
    if a.chunk_size != b.chunk_size {
        return Err(Error::ChunkSizeMismatch {
            left: "A".into(),
            left_size: a.chunk_size,
            right: "B".into(),
            right_size: b.chunk_size,
        });
    }
    let mut out = DiffSummary {
        chunk_size: a.chunk_size,
        size_a: a.image_size,
        size_b: b.image_size,
        ..Default::default()
    };
    let n = a.chunks.len().max(b.chunks.len());
    for i in 0..n {
        // Plaintext ids: an encrypted repository's chunk names differ from
        // a live file's hashes (and from another key's) for equal data.
        let (change, len) = match (a.content_id(i), b.content_id(i)) {
            (Some(x), Some(y)) if x == y && a.chunk_len(i) == b.chunk_len(i) => {
                (Change::Same, b.chunk_len(i))
            }
            (Some(_), Some(_)) => (Change::Changed, b.chunk_len(i).max(a.chunk_len(i))),
            (None, Some(_)) => (Change::Added, b.chunk_len(i)),
            (Some(_), None) => (Change::Removed, a.chunk_len(i)),
            (None, None) => break,
        };
        match change {
            Change::Same => out.same_bytes += len,
            Change::Changed => out.changed_bytes += len,
            Change::Added => out.added_bytes += len,
            Change::Removed => out.removed_bytes += len,
        }
        let offset = i as u64 * a.chunk_size;
        match out.ranges.last_mut() {
            Some(r) if r.change == change => {
                r.length += len;
                r.chunks += 1;
            }
            _ => out.ranges.push(Range {
                change,
                offset,
                length: len,
                chunks: 1,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;

    #[test]
    fn runs_and_bytes() {
        let cs = 1 << 16;
        let a = Index {
            chunk_size: cs,
            image_size: cs * 3,
            chunks: vec![Id::of(b"1"), Id::of(b"2"), Id::ZERO],
            plain: Vec::new(),
        };
        let b = Index {
            chunk_size: cs,
            image_size: cs * 4,
            chunks: vec![Id::of(b"1"), Id::of(b"x"), Id::of(b"y"), Id::of(b"z")],
            plain: Vec::new(),
        };
        let d = diff(&a, &b).unwrap();
        assert_eq!(d.same_bytes, cs);
        assert_eq!(d.changed_bytes, cs * 2);
        assert_eq!(d.added_bytes, cs);
        assert_eq!(d.ranges.len(), 3);
        assert!(!d.identical());
        assert!(diff(&a, &a).unwrap().identical());
    }
}
