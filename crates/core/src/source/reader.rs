//! What every volume reader offers: size, data extents, reads.

use crate::error::Result;

/// Byte ranges `[start, end)` that may hold data; everything else reads as zero.
pub type Extents = Vec<(u64, u64)>;

pub trait VolumeReader: Send {
    fn size(&self) -> u64;
    /// Sorted, non-overlapping ranges that may hold non-zero data.
    fn data_extents(&mut self) -> Result<Extents>;
    /// Fills `buf` from `offset` (the caller never reads past the end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Sources that can be read from many threads at once (files, with
    /// pread) return themselves here, so every worker reads its own chunks.
    fn shared(&self) -> Option<&dyn SharedRead> {
        None
    }
    /// Guest bytes this reader fetched, when it counts them (NBD).
    fn bytes_read(&self) -> Option<u64> {
        None
    }
    /// What changed since the previous backup, when a dirty bitmap says
    /// so: everything outside is taken from that backup's index.
    fn dirty_extents(&self) -> Option<&Extents> {
        None
    }
}

pub trait SharedRead: Sync {
    fn read_at_shared(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}
