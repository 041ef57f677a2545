//! The parallel loop every restore target shares: each worker takes the
//! next chunk of the index, reads, decodes and verifies it (its length
//! too), and hands the bytes to a writer of its own. Zero chunks are never
//! written: the target starts as holes (a sized file, a new thin image).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::Index;
use crate::jobs::{CancellationToken, Progress};
use crate::repo::Repo;

/// Where one worker writes.
pub trait ChunkSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// After the worker's last chunk (not after an error).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Writes every non-zero chunk of `index` through sinks `open` makes, one
/// per worker (`workers` of them). The first error stops every worker and
/// is returned; a cancel returns `Error::Cancelled`.
pub fn write_chunks<S: ChunkSink>(
    repo: &Repo,
    index: &Index,
    workers: usize,
    cancel: &CancellationToken,
    progress: &Progress,
    open: impl Fn() -> Result<S> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let failed = || first_err.lock().map(|e| e.is_some()).unwrap_or(true);
    let fail = |e: Error| {
        if let Ok(mut slot) = first_err.lock() {
            slot.get_or_insert(e);
        }
    };
    let worker = || -> Result<()> {
        let mut sink = open()?;
        let (mut file_buf, mut raw_buf) = (AlignedBuf::new(), AlignedBuf::new());
        loop {
            if cancel.is_cancelled() || failed() {
                return Ok(());
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(id) = index.chunks.get(i) else {
                return sink.finish();
            };
            let len = index.chunk_len(i);
            if !id.is_zero() {
                let data =
                    repo.read_chunk_into(id, index.plain_id(i), &mut file_buf, &mut raw_buf)?;
                index.check_chunk_len(i, data.len())?;
                sink.write_at(i as u64 * index.chunk_size, data)?;
            }
            progress.add(len, 1);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                if let Err(e) = worker() {
                    fail(e);
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or(None) {
        return Err(e);
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    Ok(())
}
