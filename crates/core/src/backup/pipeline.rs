//! The chunking pipeline. Workers on every core zero-check, hash, skip
//! known chunks, and compress and stage new ones; the caller's thread
//! collects ids in order.
//!
//! Reading: a source that allows parallel reads (files) is read by the
//! workers themselves, each chunk in 256 KiB pieces that are zero-checked
//! and hashed while still in the CPU cache (copying whole 4 MiB chunks
//! through memory first costs more than the hashing). A sequential source
//! (one NBD connection) gets one reader thread feeding whole chunks, with
//! buffers circulating through a free list.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::chunk::Encoder;
use crate::format::id::{is_all_zero, Id};
use crate::format::index::{check_chunk_size, chunk_count, Index};
use crate::jobs::{CancellationToken, Progress};
use crate::repo::verify::worker_threads;
use crate::source::{overlaps, SharedRead, VolumeReader};

use super::target::ChunkSink;

/// Sorted byte ranges, as in `source::Extents`.
type Extents = [(u64, u64)];

const PIECE: usize = 256 << 10;
static ZEROS: [u8; PIECE] = [0u8; PIECE];

/// Where new chunks go; `None` in `scan` only hashes (for `lifeboat hash`).
pub struct Store<'a> {
    pub writer: &'a dyn ChunkSink,
    pub level: i32,
    /// An encrypted repository's keys: every new chunk is sealed and
    /// named by the hash of its sealed bytes.
    pub seal: Option<Sealing<'a>>,
}

/// How an encrypted repository's new chunks are sealed.
pub struct Sealing<'a> {
    pub keys: std::sync::Arc<crate::crypto::Keys>,
    /// Plaintext id to sealed id of the chunks the previous backup's index
    /// lists: an unchanged chunk is found without being compressed and
    /// sealed again.
    pub known: &'a std::collections::HashMap<Id, Id>,
}

pub struct ScanResult {
    pub index: Index,
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    /// Guest bytes read from the source (less than the disk when a dirty
    /// bitmap let unchanged chunks come from the previous index).
    pub bytes_read: u64,
}

struct Done {
    i: usize,
    id: Id,
    /// The plaintext id (the id itself unless the chunk is sealed).
    plain: Id,
    stored: Option<u64>,
    read: bool,
}

impl Done {
    fn read(i: usize, id: Id, stored: Option<u64>) -> Done {
        Done {
            i,
            id,
            plain: id,
            stored,
            read: true,
        }
    }

    fn unread(i: usize, (id, plain): (Id, Id)) -> Done {
        Done {
            i,
            id,
            plain,
            stored: None,
            read: false,
        }
    }

    fn sealed_from(self, plain: Id) -> Done {
        Done { plain, ..self }
    }
}

struct Layout<'e> {
    size: u64,
    chunk_size: u64,
    n: usize,
    extents: &'e [(u64, u64)],
    /// With a dirty bitmap: what changed, and the previous backup's index.
    reuse: Option<(&'e Extents, &'e Index)>,
    fill: Option<&'e ChunkFill<'e>>,
}

/// Reads a chunk of the previous backup back from the repository.
pub type ChunkFill<'a> = dyn Fn(&Id) -> Result<Vec<u8>> + Sync + 'a;

impl Layout<'_> {
    fn span(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.chunk_size;
        (start, self.chunk_size.min(self.size - start))
    }

    fn may_hold_data(&self, i: usize) -> bool {
        let (start, len) = self.span(i);
        overlaps(self.extents, start, start + len)
    }

    /// The previous backup's chunk (its id and plaintext id) when the
    /// bitmap says this one did not change since and the repository still
    /// holds it.
    fn unchanged(&self, i: usize, store: Option<&Store<'_>>) -> Option<(Id, Id)> {
        let (dirty, base) = self.reuse?;
        let (start, len) = self.span(i);
        if overlaps(dirty, start, start + len) {
            return None;
        }
        let id = *base.chunks.get(i)?;
        let plain = base.plain_id(i).copied().unwrap_or(id);
        match store {
            _ if id.is_zero() => Some((id, plain)),
            Some(st) if st.writer.known(&id) => Some((id, plain)),
            _ => None,
        }
    }
}

impl Layout<'_> {
    /// For a chunk the bitmap marks only in part: the changed ranges, to
    /// be read from the disk over the previous backup's bytes (so a 4 KiB
    /// write costs a 64 KiB read, not a whole chunk). None: read it all.
    fn changed_parts(&self, i: usize) -> Option<(Id, Vec<(u64, u64)>)> {
        let (dirty, base) = self.reuse?;
        let (start, len) = self.span(i);
        let end = start + len;
        let from = dirty.partition_point(|&(_, e)| e <= start);
        let parts: Vec<(u64, u64)> = dirty[from..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| (s.max(start), e.min(end)))
            .collect();
        let covered: u64 = parts.iter().map(|(s, e)| e - s).sum();
        if parts.is_empty() || covered >= len {
            return None;
        }
        Some((*base.chunks.get(i)?, parts))
    }
}

/// The previous backup a dirty bitmap is relative to.
pub struct Base<'a> {
    pub dirty: &'a [(u64, u64)],
    pub index: &'a Index,
    /// Where unchanged parts of a changed chunk come from.
    pub fill: &'a ChunkFill<'a>,
}

pub fn scan(
    reader: &mut dyn VolumeReader,
    chunk_size: u64,
    store: Option<Store<'_>>,
    base: Option<Base<'_>>,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<ScanResult> {
    check_chunk_size(chunk_size)?;
    let size = reader.size();
    let n = chunk_count(size, chunk_size) as usize;
    let extents = reader.data_extents()?;
    let base = base.filter(|b| {
        b.index.chunk_size == chunk_size && b.index.image_size == size && b.index.chunks.len() == n
    });
    let reuse = base.as_ref().map(|b| (b.dirty, b.index));
    let fill = base.as_ref().map(|b| b.fill);
    let layout = Layout {
        size,
        chunk_size,
        n,
        extents: &extents,
        reuse,
        fill,
    };
    progress.set_totals(size, n as u64);
    let workers = worker_threads();
    let store = store.as_ref();
    let mut chunks = vec![Id::ZERO; n];
    let sealed = store.is_some_and(|s| s.seal.is_some());
    let mut plain = if sealed {
        vec![Id::ZERO; n]
    } else {
        Vec::new()
    };
    let mut new_chunks = 0u64;
    let mut new_stored = 0u64;
    let mut read_bytes = 0u64;
    let next = AtomicUsize::new(0);

    let counted = &mut *reader;
    std::thread::scope(|s| -> Result<()> {
        let reader = counted;
        // Results are small: a deep queue lets workers keep going while the
        // collector is in a file-system sync.
        let (done_tx, done_rx) = bounded::<Result<Done>>(1024);
        let layout = &layout;
        let mut reader_thread = None;
        if reader.shared().is_some() {
            let next = &next;
            let shared = reader.shared();
            for _ in 0..workers {
                let tx = done_tx.clone();
                if let Some(src) = shared {
                    s.spawn(move || parallel_worker(src, layout, next, tx, store, cancel));
                }
            }
        } else {
            let (work_tx, work_rx) = bounded::<(usize, Vec<u8>)>(workers * 2);
            let (free_tx, free_rx) = bounded::<Vec<u8>>(workers * 3 + 2);
            for _ in 0..workers * 3 + 2 {
                let _ = free_tx.send(Vec::new());
            }
            for _ in 0..workers {
                let (rx, tx, free) = (work_rx.clone(), done_tx.clone(), free_tx.clone());
                s.spawn(move || fed_worker(rx, tx, free, store, cancel));
            }
            let tx = done_tx.clone();
            reader_thread = Some(
                s.spawn(move || read_loop(reader, layout, store, work_tx, tx, free_rx, cancel)),
            );
        }
        drop(done_tx);
        let mut first_err = None;
        for done in done_rx.iter() {
            match done {
                Ok(d) => {
                    chunks[d.i] = d.id;
                    if sealed {
                        plain[d.i] = d.plain;
                    }
                    if d.read {
                        read_bytes += layout.span(d.i).1;
                    }
                    if let Some(bytes) = d.stored {
                        new_chunks += 1;
                        new_stored += bytes;
                    }
                    progress.add(layout.span(d.i).1, 1);
                    if let Some(st) = store {
                        if let Err(e) = st.writer.flush_if_due() {
                            first_err = Some(e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        // Closing our end stops the workers, whose exit stops the reader.
        drop(done_rx);
        let read_res = match reader_thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the reader thread panicked".into()))),
            None => Ok(()),
        };
        match first_err {
            Some(e) => Err(e),
            None => read_res,
        }
    })?;
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    Ok(ScanResult {
        index: Index {
            chunk_size,
            image_size: size,
            chunks,
            plain,
        },
        new_chunks,
        new_stored_bytes: new_stored,
        bytes_read: reader.bytes_read().unwrap_or(read_bytes),
    })
}

fn parallel_worker(
    src: &dyn SharedRead,
    layout: &Layout<'_>,
    next: &AtomicUsize,
    done: Sender<Result<Done>>,
    store: Option<&Store<'_>>,
    cancel: &CancellationToken,
) {
    let mut scratch_mem = AlignedBuf::new();
    let scratch = scratch_mem.resize(PIECE);
    let mut ws = WorkerState::default();
    loop {
        if cancel.is_cancelled() {
            let _ = done.send(Err(Error::Cancelled));
            return;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= layout.n {
            return;
        }
        let res = if let Some(id) = layout
            .may_hold_data(i)
            .then(|| layout.unchanged(i, store))
            .flatten()
        {
            Ok(Done::unread(i, id))
        } else if layout.may_hold_data(i) {
            let (start, len) = layout.span(i);
            // Copy pieces aside while hashing when the last chunk was new
            // (a full backup); otherwise hash only and read a new chunk
            // again (an incremental backup, where few chunks are new).
            let copied = store.is_some() && ws.last_was_new;
            let keep_copy = copied.then(|| ws.chunk.resize(len as usize));
            read_hashed(src, start, len as usize, scratch, keep_copy).and_then(|id| match id {
                None => Ok(Done::read(i, Id::ZERO, None)),
                Some(id) => {
                    let done = keep(i, id, store, &mut ws, |buf: &mut AlignedBuf| {
                        if copied {
                            return Ok(());
                        }
                        let whole = buf.resize(len as usize);
                        src.read_at_shared(start, whole)?;
                        if Id::of(whole) != id {
                            return Err(Error::Source {
                                path: "volume".into(),
                                reason: format!(
                                    "bytes at {start} changed while being read; back up a stopped VM or a snapshot"
                                ),
                            });
                        }
                        Ok(())
                    });
                    if let Ok(d) = &done {
                        ws.last_was_new = d.stored.is_some();
                    }
                    done
                }
            })
        } else {
            Ok(Done::unread(i, (Id::ZERO, Id::ZERO)))
        };
        let failed = res.is_err();
        if done.send(res).is_err() || failed {
            return;
        }
    }
}

/// Reads a chunk piece by piece into a small buffer that stays in the CPU
/// cache, zero-checking and hashing each piece there (reading straight into
/// a 4 MiB buffer costs three times as much here). When given `keep`, each
/// piece is also copied there. Returns None for an
/// all-zero chunk, which is never hashed.
fn read_hashed(
    src: &dyn SharedRead,
    start: u64,
    len: usize,
    scratch: &mut [u8],
    mut keep: Option<&mut [u8]>,
) -> Result<Option<Id>> {
    let mut hasher: Option<blake3::Hasher> = None;
    let mut off = 0;
    while off < len {
        let end = (off + PIECE).min(len);
        let piece = &mut scratch[..end - off];
        src.read_at_shared(start + off as u64, piece)?;
        if let Some(k) = keep.as_deref_mut() {
            k[off..end].copy_from_slice(piece);
        }
        match &mut hasher {
            Some(h) => {
                h.update(piece);
            }
            None if !is_all_zero(piece) => {
                let mut h = blake3::Hasher::new();
                // Every earlier piece was zero: hash zeros from a cached buffer.
                let mut z = off;
                while z > 0 {
                    let k = z.min(PIECE);
                    h.update(&ZEROS[..k]);
                    z -= k;
                }
                h.update(piece);
                hasher = Some(h);
            }
            None => {}
        }
        off = end;
    }
    Ok(hasher.map(|h| h.finalize().into()))
}

fn read_loop(
    reader: &mut dyn VolumeReader,
    layout: &Layout<'_>,
    store: Option<&Store<'_>>,
    work: Sender<(usize, Vec<u8>)>,
    done: Sender<Result<Done>>,
    free: Receiver<Vec<u8>>,
    cancel: &CancellationToken,
) -> Result<()> {
    for i in 0..layout.n {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let unread = if !layout.may_hold_data(i) {
            Some((Id::ZERO, Id::ZERO))
        } else {
            layout.unchanged(i, store)
        };
        if let Some(id) = unread {
            if done.send(Ok(Done::unread(i, id))).is_err() {
                return Ok(());
            }
            continue;
        }
        let (start, len) = layout.span(i);
        let Ok(mut buf) = free.recv() else {
            return Ok(());
        };
        buf.resize(len as usize, 0);
        let patched = match (layout.changed_parts(i), layout.fill) {
            (Some((base_id, parts)), Some(fill)) => {
                let old = if base_id.is_zero() {
                    Ok(Vec::new())
                } else {
                    fill(&base_id)
                };
                match old {
                    Ok(old) if base_id.is_zero() || old.len() == buf.len() => {
                        if base_id.is_zero() {
                            buf.fill(0);
                        } else {
                            buf.copy_from_slice(&old);
                        }
                        for (s, e) in parts {
                            let at = (s - start) as usize;
                            reader.read_at(s, &mut buf[at..at + (e - s) as usize])?;
                        }
                        true
                    }
                    // The old chunk is unreadable: read the whole chunk.
                    _ => false,
                }
            }
            _ => false,
        };
        if !patched {
            reader.read_at(start, &mut buf)?;
        }
        if work.send((i, buf)).is_err() {
            // Workers stopped after an error; they report it.
            return Ok(());
        }
    }
    Ok(())
}

fn fed_worker(
    work: Receiver<(usize, Vec<u8>)>,
    done: Sender<Result<Done>>,
    free: Sender<Vec<u8>>,
    store: Option<&Store<'_>>,
    cancel: &CancellationToken,
) {
    let mut ws = WorkerState::default();
    for (i, buf) in work.iter() {
        let res = if is_all_zero(&buf) {
            Ok(Done::read(i, Id::ZERO, None))
        } else {
            let id = Id::of(&buf);
            keep(i, id, store, &mut ws, |chunk| {
                chunk.resize(buf.len()).copy_from_slice(&buf);
                Ok(())
            })
        };
        let _ = free.send(buf);
        let failed = res.is_err();
        if done.send(res).is_err() || failed || cancel.is_cancelled() {
            return;
        }
    }
}

/// A worker's reusable state: its zstd context and aligned buffers.
#[derive(Default)]
struct WorkerState {
    last_was_new: bool,
    encoder: Option<Encoder>,
    chunk: AlignedBuf,
    encoded: AlignedBuf,
    /// A sealed chunk, in an encrypted repository.
    sealed: AlignedBuf,
}

impl WorkerState {
    /// Encodes the chunk buffer into `encoded`.
    fn encode(&mut self, level: i32) -> Result<()> {
        let enc = match &mut self.encoder {
            Some(e) => e,
            None => self.encoder.insert(Encoder::new(level)?),
        };
        enc.encode_into(self.chunk.as_slice(), &mut self.encoded)
            .map(|_| ())
    }
}

/// Stores a non-zero chunk unless the repository already has it; `load`
/// fills the chunk buffer with its bytes when they are needed.
fn keep(
    i: usize,
    id: Id,
    store: Option<&Store<'_>>,
    ws: &mut WorkerState,
    load: impl FnOnce(&mut AlignedBuf) -> Result<()>,
) -> Result<Done> {
    let Some(store) = store else {
        return Ok(Done::read(i, id, None));
    };
    if let Some(sealing) = &store.seal {
        // An encrypted repository names a chunk by the hash of its sealed
        // bytes. A chunk the previous index lists is known by its
        // plaintext id; any other is known only once it is encoded and
        // sealed (equal plaintexts seal to equal objects: dedup holds).
        if let Some(named) = sealing.known.get(&id) {
            if store.writer.known(named) {
                return Ok(Done::read(i, *named, None).sealed_from(id));
            }
        }
        load(&mut ws.chunk)?;
        ws.encode(store.level)?;
        let inner = ws.encoded.as_slice();
        let sealed = ws
            .sealed
            .resize(crate::format::sealed::OVERHEAD + inner.len());
        crate::format::sealed::seal_to(
            &sealing.keys,
            crate::format::sealed::Kind::Chunk,
            &id.0,
            inner,
            sealed,
        )?;
        let named = Id::of(sealed);
        if store.writer.known(&named) {
            return Ok(Done::read(i, named, None).sealed_from(id));
        }
        return put(i, named, store, sealed).map(|d| d.sealed_from(id));
    }
    if store.writer.known(&id) {
        return Ok(Done::read(i, id, None));
    }
    load(&mut ws.chunk)?;
    ws.encode(store.level)?;
    put(i, id, store, ws.encoded.as_slice())
}

/// Puts an encoded chunk the store did not know a moment ago.
fn put(i: usize, id: Id, store: &Store<'_>, encoded: &[u8]) -> Result<Done> {
    let stored = store
        .writer
        .put(&id, encoded)?
        .then_some(encoded.len() as u64);
    Ok(Done::read(i, id, stored))
}
