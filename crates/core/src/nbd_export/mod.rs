//! A backup as a block device: one volume of a backup served as a
//! read-only NBD export (`lifeboat nbd REF`), on a private unix socket or
//! a loopback TCP port, for QEMU, `qemu-img`, `qemu-nbd -c` or `nbdfuse`
//! to read without restoring it first.
//!
//! Chunks are read from the repository when asked for, decoded and
//! verified against their hash before a byte is served (a corrupt chunk
//! answers EIO for its range, never wrong bytes), and kept in a small
//! cache of decoded chunks (`cache_chunks`, 16 by default: 64 MiB of 4 MiB
//! chunks). Zero chunks are holes: `base:allocation` block status says so,
//! and structured reads answer them without data.
//!
//! No NBD server crate fits: `nbd` (crates.io) speaks only simple replies
//! without block status, and `nbdkit`'s bindings build a plugin for the C
//! nbdkit, not a server inside lifeboat. The protocol is the subset QEMU
//! and qemu-img use (see `wire.rs`), with every client message bounded.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::{Id, Index};
use crate::jobs::CancellationToken;
use crate::repo::Repo;

mod wire;

/// Where the chunks come from.
pub enum Chunks {
    /// The local repository: read when asked for.
    Local(Repo),
    /// A remote (a served or S3 repository): fetched when asked for, with
    /// the next `READ_AHEAD - 1` non-zero chunks fetched alongside, so a
    /// reader going forward finds them in the cache instead of waiting a
    /// round trip each.
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
        }
    }

    fn cached(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        let c = self.cache.lock().ok()?;
        c.iter().find(|(k, _)| *k == i).map(|(_, d)| d.clone())
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

    /// The length check every source shares.
    fn checked(&self, i: usize, id: &Id, data: Vec<u8>) -> Result<Arc<Vec<u8>>> {
        let len = self.index.chunk_len(i);
        if data.len() as u64 != len {
            return Err(Error::corrupt(
                "chunk",
                id,
                format!("holds {} bytes where the index expects {len}", data.len()),
            ));
        }
        Ok(Arc::new(data))
    }

    pub fn size(&self) -> u64 {
        self.index.image_size
    }

    fn is_zero(&self, i: usize) -> bool {
        self.index.chunks.get(i).is_none_or(Id::is_zero)
    }

    /// Chunk `i` decoded and verified (from the cache, or the repository).
    fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(d) = self.cached(i) {
            return Ok(d);
        }
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
                let data = self.checked(i, &id, data)?;
                self.remember(i, data.clone());
                Ok(data)
            }
            Chunks::Remote { repo, rt } => {
                let batch: Vec<(usize, Id)> = std::iter::once((i, id))
                    .chain(
                        (i + 1..self.index.chunks.len())
                            .filter(|&j| !self.is_zero(j) && self.cached(j).is_none())
                            .take(READ_AHEAD - 1)
                            .map(|j| (j, self.index.chunks[j])),
                    )
                    .collect();
                let fetched = rt.block_on(futures::future::join_all(
                    batch.iter().map(|(_, id)| repo.chunk(id)),
                ));
                let mut asked = None;
                for ((j, id), got) in batch.into_iter().zip(fetched) {
                    let got = got.and_then(|d| self.checked(j, &id, d));
                    if j == i {
                        asked = Some(got);
                    } else if let Ok(d) = got {
                        // A read-ahead that failed is fetched again when asked.
                        self.remember(j, d);
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

/// Where the export listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A unix socket, created private (0600) in a directory that exists.
    Unix(PathBuf),
    /// A loopback TCP address (NBD has no authentication here).
    Tcp(std::net::SocketAddr),
}

impl Listen {
    /// How a client names the export (`qemu-img info URI`).
    pub fn uri(&self) -> String {
        match self {
            Listen::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
            Listen::Tcp(a) => format!("nbd://{a}"),
        }
    }
}

enum Listener {
    Unix(std::os::unix::net::UnixListener, PathBuf),
    Tcp(std::net::TcpListener),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn bind(at: &Listen) -> Result<Listener> {
    match at {
        Listen::Unix(p) => {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(Error::BadInput(format!(
                    "{} exists: give a new socket path (or remove a stale one)",
                    p.display()
                )));
            }
            // Private from its first moment: the umask decides the
            // socket's mode at bind time.
            let old = unsafe { libc::umask(0o077) };
            let l = std::os::unix::net::UnixListener::bind(p);
            unsafe { libc::umask(old) };
            let l = l.map_err(|e| Error::io("listening on", p, e))?;
            Ok(Listener::Unix(l, p.clone()))
        }
        Listen::Tcp(a) => {
            if !a.ip().is_loopback() {
                return Err(Error::BadInput(format!(
                    "{a} is not a loopback address: an NBD export has no authentication or encryption here; listen on 127.0.0.1 (or a unix socket) and tunnel it (ssh -L)"
                )));
            }
            let l = std::net::TcpListener::bind(a)
                .map_err(|e| Error::BadInput(format!("cannot listen on {a}: {e}")))?;
            Ok(Listener::Tcp(l))
        }
    }
}

/// Serves `export` at `at` until `cancel`; each client in a thread of its
/// own. `ready` gets the address actually bound (a TCP port 0 picks one).
pub fn serve(
    export: &Export,
    at: &Listen,
    cancel: &CancellationToken,
    ready: impl FnOnce(&Listen),
) -> Result<()> {
    let listener = bind(at)?;
    let bound = match &listener {
        Listener::Tcp(l) => Listen::Tcp(
            l.local_addr()
                .map_err(|e| Error::BadInput(format!("no local address: {e}")))?,
        ),
        Listener::Unix(_, p) => Listen::Unix(p.clone()),
    };
    match &listener {
        Listener::Unix(l, _) => l.set_nonblocking(true),
        Listener::Tcp(l) => l.set_nonblocking(true),
    }
    .map_err(|e| Error::BadInput(format!("cannot set up the listener: {e}")))?;
    ready(&bound);
    std::thread::scope(|s| {
        while !cancel.is_cancelled() {
            let accepted: std::io::Result<Box<dyn wire::Stream>> = match &listener {
                Listener::Unix(l, _) => l.accept().map(|(c, _)| Box::new(c) as _),
                Listener::Tcp(l) => l.accept().map(|(c, _)| {
                    let _ = c.set_nodelay(true);
                    Box::new(c) as _
                }),
            };
            match accepted {
                Ok(conn) => {
                    s.spawn(move || {
                        if let Err(e) = wire::session(conn, export, cancel) {
                            tracing::warn!("nbd: a client's session ended: {e}");
                        }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!("nbd: accepting a client: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    });
    Ok(())
}

/// A unix socket path under `dir` that does not exist yet.
pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.nbd"))
}
