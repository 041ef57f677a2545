//! Chunk maps: a picture of two images chunk by chunk (same, changed,
//! zero, missing), grouped into at most `MAX_CELLS` cells so that a
//! terminal can draw them. Computed here so every face draws the same map.

use serde::Serialize;

use super::{Id, Index};

/// A 64 x 10 grid.
pub const MAX_CELLS: usize = 640;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    Same,
    Changed,
    Zero,
    Missing,
    /// Only the second image has this chunk (it is larger).
    Added,
    /// Only the first image has this chunk.
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkMap {
    pub cells: Vec<Cell>,
    /// Chunks per cell.
    pub per_cell: usize,
    /// Image bytes in chunks shown as missing (what a pull would fetch).
    pub missing_bytes: u64,
}

/// Groups `n` chunk states into at most `MAX_CELLS` cells. A cell shows
/// the most telling state of its run: changed, then missing, same, zero.
fn group(n: usize, state: impl Fn(usize) -> Cell) -> (Vec<Cell>, usize) {
    group_into(n, MAX_CELLS, state)
}

fn rank(c: Cell) -> u8 {
    match c {
        Cell::Changed => 5,
        Cell::Added => 4,
        Cell::Removed => 3,
        Cell::Missing => 2,
        Cell::Same => 1,
        Cell::Zero => 0,
    }
}

fn group_into(n: usize, max: usize, state: impl Fn(usize) -> Cell) -> (Vec<Cell>, usize) {
    let per = n.max(1).div_ceil(max.max(1)).max(1);
    let cells = (0..n)
        .step_by(per)
        .map(|start| {
            (start..(start + per).min(n))
                .map(&state)
                .max_by_key(|c| rank(*c))
                .unwrap_or(Cell::Zero)
        })
        .collect();
    (cells, per)
}

/// Cells grouped again to at most `max` (a small terminal), each showing
/// its most telling state; returns the cells and how many it merged per cell.
pub fn regroup(cells: &[Cell], max: usize) -> (Vec<Cell>, usize) {
    group_into(cells.len(), max, |i| cells[i])
}

/// Two images: where they hold the same chunk, a different one, zeros, or
/// where one image ends before the other.
pub fn between(a: &Index, b: &Index) -> ChunkMap {
    let n = a.chunks.len().max(b.chunks.len());
    let (cells, per_cell) = group(n, |i| match (a.chunks.get(i), b.chunks.get(i)) {
        (Some(x), Some(y)) if x == y && x.is_zero() => Cell::Zero,
        (Some(x), Some(y)) if x == y => Cell::Same,
        (Some(_), Some(_)) => Cell::Changed,
        (Some(_), None) => Cell::Removed,
        _ => Cell::Added,
    });
    ChunkMap {
        cells,
        per_cell,
        missing_bytes: 0,
    }
}

/// One image against a repository: which chunks it holds (`held`), which
/// it lacks.
pub fn held(index: &Index, held: impl Fn(&Id) -> bool) -> ChunkMap {
    let have: Vec<bool> = index
        .chunks
        .iter()
        .map(|c| c.is_zero() || held(c))
        .collect();
    let (cells, per_cell) = group(index.chunks.len(), |i| {
        match (index.chunks[i].is_zero(), have[i]) {
            (true, _) => Cell::Zero,
            (false, true) => Cell::Same,
            (false, false) => Cell::Missing,
        }
    });
    let missing_bytes = (0..index.chunks.len())
        .filter(|&i| !have[i])
        .map(|i| index.chunk_len(i))
        .sum();
    ChunkMap {
        cells,
        per_cell,
        missing_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(chunks: Vec<Id>) -> Index {
        Index {
            chunk_size: 1 << 16,
            image_size: (1 << 16) * chunks.len() as u64,
            chunks,
            plain: Vec::new(),
        }
    }

    #[test]
    fn maps_states_and_groups_large_images() {
        let (a, b) = (Id::of(b"a"), Id::of(b"b"));
        let m = between(&idx(vec![a, a, Id::ZERO]), &idx(vec![a, b, Id::ZERO, b]));
        assert_eq!(
            m.cells,
            vec![Cell::Same, Cell::Changed, Cell::Zero, Cell::Added]
        );
        let m = between(&idx(vec![a, a]), &idx(vec![a]));
        assert_eq!(m.cells, vec![Cell::Same, Cell::Removed]);
        let big = idx(vec![a; 6400]);
        let m = between(&big, &big);
        assert_eq!((m.cells.len(), m.per_cell), (640, 10));
        let h = held(&idx(vec![a, b, Id::ZERO]), |c| *c == a);
        assert_eq!(h.cells, vec![Cell::Same, Cell::Missing, Cell::Zero]);
        assert_eq!(h.missing_bytes, 1 << 16);
        let (r, k) = regroup(&[Cell::Same, Cell::Changed, Cell::Zero, Cell::Added], 2);
        assert_eq!((r, k), (vec![Cell::Changed, Cell::Added], 2));
    }
}
