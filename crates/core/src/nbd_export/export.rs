//! The volume an NBD export serves: its index, where its chunks come
//! from (the local repository, or a remote with read-ahead), and a small
//! cache of decoded, verified chunks.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::{Id, Index};
use crate::repo::Repo;

/// Where the chunks come from.
pub enum Chunks {
    /// The local repository: read when asked for.
    Local(Repo),
    /// A remote (a served or S3 repository): fetched when asked for; while
    /// the reader goes forward (each chunk follows the last one it asked
    /// for), the next non-zero chunks are fetched alongside — 1, then 3,
    /// then `READ_AHEAD - 1` — so it finds them in the cache instead of
    /// waiting a round trip each. A reader jumping about (a filesystem's
    /// metadata, one small file) fetches little more than it asks for.
    Remote {
        repo: crate::repository::Repository,
        rt: tokio::runtime::Handle,
    },
}

/// Chunks fetched together from a remote (the one asked for and those
/// after it).
const READ_AHEAD: usize = 8;

/// The volume being served: its index, and where its chunks come from.
pub struct Export {
    repo: Chunks,
    index: Index,
    /// What the export is called (the backup it serves), for the log.
    pub name: String,
    cache: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    cache_chunks: usize,
    /// Chunks read from the repository (not the cache): what a reader of
    /// a few files costs.
    fetched: AtomicU64,
    /// The chunk asked for last, and how many chunks in a row went
    /// forward: how far to read ahead.
    last: AtomicU64,
    streak: AtomicU64,
    /// Chunks being fetched now: a reader wanting one waits for that fetch
    /// instead of starting another (several server threads often ask for
    /// parts of one chunk at once).
    inflight: Mutex<HashSet<usize>>,
    arrived: Condvar,
}

impl Export {
    pub fn new(repo: Chunks, index: Index, name: String, cache_chunks: usize) -> Export {
        let ahead = match repo {
            Chunks::Local(_) => 1,
            Chunks::Remote { .. } => READ_AHEAD,
        };
        Export {
            repo,
            index,
            name,
            cache: Mutex::new(VecDeque::new()),
            // Room for a whole read-ahead batch and the chunk before it.
            cache_chunks: cache_chunks.max(ahead + 1),
            fetched: AtomicU64::new(0),
            last: AtomicU64::new(u64::MAX),
            streak: AtomicU64::new(0),
            inflight: Mutex::new(HashSet::new()),
            arrived: Condvar::new(),
        }
    }

    /// A cached chunk, moved to the young end: least recently used goes
    /// first, so a copy streaming through does not push out what a
    /// booting guest reads again and again.
    fn cached(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        let mut c = self.cache.lock().ok()?;
        let at = c.iter().position(|(k, _)| *k == i)?;
        let hit = c.remove(at)?;
        let data = hit.1.clone();
        c.push_back(hit);
        Some(data)
    }

    fn remember(&self, i: usize, data: Arc<Vec<u8>>) {
        if let Ok(mut c) = self.cache.lock() {
            if c.iter().any(|(k, _)| *k == i) {
                return;
            }
            if c.len() >= self.cache_chunks {
                c.pop_front();
            }
            c.push_back((i, data));
        }
    }

    /// Decoded and checked against the index, as every source is.
    fn checked(&self, i: usize, data: Vec<u8>) -> Result<Arc<Vec<u8>>> {
        self.index.check_chunk_len(i, data.len())?;
        Ok(Arc::new(data))
    }

    pub fn size(&self) -> u64 {
        self.index.image_size
    }

    /// Chunks read from the repository so far, and how many the volume has.
    pub fn chunks_read(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.index.chunks.len() as u64,
        )
    }

    fn is_zero(&self, i: usize) -> bool {
        self.index.chunks.get(i).is_none_or(Id::is_zero)
    }

    /// Chunk `i` decoded and verified (from the cache, or the repository).
    fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let previous = self.last.swap(i as u64, Ordering::Relaxed);
        let streak = match previous.wrapping_add(1) == i as u64 {
            true => self.streak.fetch_add(1, Ordering::Relaxed) + 1,
            false if previous == i as u64 => self.streak.load(Ordering::Relaxed),
            false => {
                self.streak.store(0, Ordering::Relaxed);
                0
            }
        };
        let ahead = ((1usize << streak.min(3)) - 1).min(READ_AHEAD - 1);
        // Cached, or being fetched by another thread (wait for it), or ours
        // to fetch.
        loop {
            if let Some(d) = self.cached(i) {
                return Ok(d);
            }
            let Ok(mut busy) = self.inflight.lock() else {
                break;
            };
            if !busy.contains(&i) {
                busy.insert(i);
                break;
            }
            // A fetch that fails leaves it uncached: asked again below.
            let _ = self.arrived.wait_timeout(busy, Duration::from_millis(200));
        }
        let res = self.fetch(i, ahead);
        if let Ok(mut busy) = self.inflight.lock() {
            busy.remove(&i);
        }
        self.arrived.notify_all();
        res
    }

    /// Reads chunk `i` (and, from a remote, `ahead` chunks after it that
    /// nobody is fetching yet) from the repository.
    fn fetch(&self, i: usize, ahead: usize) -> Result<Arc<Vec<u8>>> {
        let id = *self
            .index
            .chunks
            .get(i)
            .ok_or_else(|| Error::Internal(format!("no chunk {i}")))?;
        match &self.repo {
            Chunks::Local(repo) => {
                let (mut file, mut raw) = (AlignedBuf::new(), AlignedBuf::new());
                let data = repo
                    .read_chunk_into(&id, self.index.plain_id(i), &mut file, &mut raw)?
                    .to_vec();
                let data = self.checked(i, data)?;
                self.fetched.fetch_add(1, Ordering::Relaxed);
                self.remember(i, data.clone());
                Ok(data)
            }
            Chunks::Remote { repo, rt } => {
                let batch: Vec<(usize, Id)> = {
                    let mut busy = self
                        .inflight
                        .lock()
                        .map_err(|_| Error::Internal("a fetch failed".into()))?;
                    let ahead: Vec<usize> = (i + 1..self.index.chunks.len())
                        .filter(|&j| !self.is_zero(j) && !busy.contains(&j))
                        .filter(|&j| self.cached(j).is_none())
                        .take(ahead)
                        .collect();
                    busy.extend(ahead.iter().copied());
                    std::iter::once((i, id))
                        .chain(ahead.into_iter().map(|j| (j, self.index.chunks[j])))
                        .collect()
                };
                let fetched = rt.block_on(futures::future::join_all(
                    batch.iter().map(|(_, id)| repo.chunk(id)),
                ));
                self.fetched
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let mut asked = None;
                for ((j, _), got) in batch.into_iter().zip(fetched) {
                    let got = got.and_then(|d| self.checked(j, d));
                    if j == i {
                        asked = Some(got);
                        continue;
                    }
                    if let Ok(d) = got {
                        // A read-ahead that failed is fetched again when asked.
                        self.remember(j, d);
                    }
                    if let Ok(mut busy) = self.inflight.lock() {
                        busy.remove(&j);
                    }
                }
                let data = asked.ok_or_else(|| Error::Internal("no fetch".into()))??;
                self.remember(i, data.clone());
                Ok(data)
            }
        }
    }

    /// Fills `buf` with the volume's bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cs = self.index.chunk_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = (pos / cs) as usize;
            let within = (pos % cs) as usize;
            let n = ((cs as usize) - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            if self.is_zero(i) {
                out.fill(0);
            } else {
                let c = self.chunk(i)?;
                let src = c.get(within..within + n).ok_or_else(|| {
                    Error::Internal(format!("chunk {i} is shorter than the image says"))
                })?;
                out.copy_from_slice(src);
            }
            done += n;
        }
        Ok(())
    }

    /// Runs of `[offset, offset+len)` that are holes (zero chunks) or data:
    /// (length, is_hole), at most `max` of them.
    pub fn extents(&self, offset: u64, len: u64, max: usize) -> Vec<(u64, bool)> {
        let cs = self.index.chunk_size;
        let end = offset.saturating_add(len).min(self.size());
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let chunk_end = ((i as u64 + 1) * cs).min(end);
            let hole = self.is_zero(i);
            let full = out.len() >= max;
            match out.last_mut() {
                Some((l, h)) if *h == hole => *l += chunk_end - pos,
                _ if full => break,
                _ => out.push((chunk_end - pos, hole)),
            }
            pos = chunk_end;
        }
        out
    }
}
