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

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::jobs::CancellationToken;

mod export;
mod wire;

pub use export::{Chunks, Export};

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

/// Where a backup is read from.
pub enum Source {
    /// The local repository at this path.
    Local(PathBuf),
    /// A remote (served or S3): chunks fetched on demand, nothing stored
    /// locally.
    Remote(crate::repository::Repository),
}

/// One volume of a backup (`reference`: a backup id or VM/VOLUME@WHEN),
/// readable at any offset: what `lifeboat nbd` serves and `lifeboat
/// files` reads. With its name for people (`vm/root@1a2b3c4d`).
pub async fn open(
    source: Source,
    reference: &str,
    cache_chunks: usize,
) -> Result<(Export, String)> {
    use crate::format::refs;
    let (chunks, key, index) = match source {
        Source::Local(root) => {
            let repo = crate::repo::Repo::open(&root)?;
            let all = repo.load_all()?;
            let (key, m) = refs::resolve_one(&all, reference)?.clone();
            let index = repo.read_index(&m.index)?;
            (Chunks::Local(repo), key, index)
        }
        Source::Remote(repo) => {
            let all = repo.backups().await?;
            let (key, m) = refs::resolve_one(&all, reference)?.clone();
            let index = repo.index(&m.index).await?;
            let rt = tokio::runtime::Handle::current();
            (Chunks::Remote { repo, rt }, key, index)
        }
    };
    let name = format!("{}/{}@{}", key.vm, key.volume, key.id.short());
    Ok((Export::new(chunks, index, name.clone(), cache_chunks), name))
}

/// A unix socket path under `dir` that does not exist yet.
pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.nbd"))
}
