//! The chunking pipeline: one reader (sources are sequential, e.g. one NBD
//! connection), hashing and compressing workers on every core, and the
//! caller's thread collecting ids in order. Buffers circulate through a
//! free list so the hot loop does not allocate.

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};
use crate::repo::chunk::Encoder;
use crate::repo::id::{is_all_zero, Id};
use crate::repo::index::{check_chunk_size, chunk_count, Index};
use crate::repo::verify::worker_threads;
use crate::repo::ChunkWriter;
use crate::source::{overlaps, VolumeReader};

/// Where new chunks go; `None` in `scan` only hashes (for `lifeboat hash`).
pub struct Store<'a, 'r> {
    pub writer: &'a ChunkWriter<'r>,
    pub level: i32,
}

pub struct ScanResult {
    pub index: Index,
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
}

enum Work {
    Data(usize, Vec<u8>),
    Zero(usize),
}

struct Done {
    i: usize,
    id: Id,
    stored: Option<u64>,
}

pub fn scan(
    reader: &mut dyn VolumeReader,
    chunk_size: u64,
    store: Option<Store<'_, '_>>,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<ScanResult> {
    check_chunk_size(chunk_size)?;
    let size = reader.size();
    let n = chunk_count(size, chunk_size) as usize;
    let extents = reader.data_extents()?;
    progress.set_totals(size, n as u64);
    let workers = worker_threads();
    let store = store.as_ref();
    let mut chunks = vec![Id::ZERO; n];
    let mut new_chunks = 0u64;
    let mut new_stored = 0u64;

    std::thread::scope(|s| -> Result<()> {
        let (work_tx, work_rx) = bounded::<Work>(workers * 2);
        let (done_tx, done_rx) = bounded::<Result<Done>>(workers * 4);
        let (free_tx, free_rx) = bounded::<Vec<u8>>(workers * 3 + 2);
        for _ in 0..workers * 3 + 2 {
            let _ = free_tx.send(Vec::new());
        }
        let extents = &extents;
        let reader_thread =
            s.spawn(move || read_loop(reader, chunk_size, n, extents, work_tx, free_rx, cancel));
        for _ in 0..workers {
            let (rx, tx, free) = (work_rx.clone(), done_tx.clone(), free_tx.clone());
            s.spawn(move || work_loop(rx, tx, free, store, cancel));
        }
        drop((done_tx, work_rx, free_tx));
        let mut first_err = None;
        for done in done_rx.iter() {
            match done {
                Ok(d) => {
                    chunks[d.i] = d.id;
                    if let Some(bytes) = d.stored {
                        new_chunks += 1;
                        new_stored += bytes;
                    }
                    let start = d.i as u64 * chunk_size;
                    progress.add(chunk_size.min(size - start), 1);
                }
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        // Closing our end stops the workers, whose exit stops the reader.
        drop(done_rx);
        let read_res = reader_thread
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("the reader thread panicked".into())));
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
        },
        new_chunks,
        new_stored_bytes: new_stored,
    })
}

fn read_loop(
    reader: &mut dyn VolumeReader,
    chunk_size: u64,
    n: usize,
    extents: &[(u64, u64)],
    work: Sender<Work>,
    free: Receiver<Vec<u8>>,
    cancel: &CancellationToken,
) -> Result<()> {
    let size = reader.size();
    for i in 0..n {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let start = i as u64 * chunk_size;
        let len = chunk_size.min(size - start);
        let item = if overlaps(extents, start, start + len) {
            let Ok(mut buf) = free.recv() else {
                return Ok(());
            };
            buf.resize(len as usize, 0);
            reader.read_at(start, &mut buf)?;
            Work::Data(i, buf)
        } else {
            Work::Zero(i)
        };
        if work.send(item).is_err() {
            // Workers stopped after an error; they report it.
            return Ok(());
        }
    }
    Ok(())
}

fn work_loop(
    work: Receiver<Work>,
    done: Sender<Result<Done>>,
    free: Sender<Vec<u8>>,
    store: Option<&Store<'_, '_>>,
    cancel: &CancellationToken,
) {
    let mut encoder = None;
    for item in work.iter() {
        let res = match item {
            Work::Zero(i) => Ok(Done {
                i,
                id: Id::ZERO,
                stored: None,
            }),
            Work::Data(i, buf) => {
                let res = process(i, &buf, store, &mut encoder);
                let _ = free.send(buf);
                res
            }
        };
        let failed = res.is_err();
        if done.send(res).is_err() || failed || cancel.is_cancelled() {
            return;
        }
    }
}

fn process(
    i: usize,
    buf: &[u8],
    store: Option<&Store<'_, '_>>,
    encoder: &mut Option<Encoder>,
) -> Result<Done> {
    if is_all_zero(buf) {
        return Ok(Done {
            i,
            id: Id::ZERO,
            stored: None,
        });
    }
    let id = Id::of(buf);
    let Some(store) = store else {
        return Ok(Done {
            i,
            id,
            stored: None,
        });
    };
    if store.writer.known(&id) {
        return Ok(Done {
            i,
            id,
            stored: None,
        });
    }
    let enc = match encoder {
        Some(e) => e,
        None => encoder.insert(Encoder::new(store.level)?),
    };
    let data = enc.encode(buf)?;
    let stored = store.writer.put(&id, &data)?.then_some(data.len() as u64);
    Ok(Done { i, id, stored })
}
