//! What a filesystem reader reads from: a volume of a backup (an
//! [`Export`]: chunks fetched on demand and verified) or, in tests, bytes
//! in memory; and a window of it (one partition).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::nbd_export::Export;

/// Random access to a disk image.
pub trait Image: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl Image for Export {
    fn size(&self) -> u64 {
        Export::size(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        past_end(self.size(), offset, buf.len())?;
        Export::read_at(self, offset, buf)
    }
}

impl Image for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        past_end(self.size(), offset, buf.len())?;
        let at = offset as usize;
        buf.copy_from_slice(&self[at..at + buf.len()]);
        Ok(())
    }
}

fn past_end(size: u64, offset: u64, len: usize) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::BadInput(format!(
            "a read of {len} bytes at {offset} goes past the volume's end ({size} bytes): the filesystem points outside its disk (damaged)"
        ))),
    }
}

/// `len` bytes of an image from `start`: a partition.
#[derive(Clone)]
pub struct Window {
    pub image: Arc<dyn Image>,
    pub start: u64,
    pub len: u64,
}

impl Window {
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        past_end(self.len, offset, buf.len())?;
        self.image.read_at(self.start + offset, buf)
    }
}
