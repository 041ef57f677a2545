//! Restoring onto a Ceph RBD image (`--to rbd:POOL/IMAGE`).
//!
//! A new image `IMAGE.lifeboat-restore-<hex>` is created at the volume's
//! size (all zeros, nothing allocated), every non-zero chunk is decoded,
//! verified and written into it through a private writable `qemu-nbd`
//! (QEMU's rbd driver, one NBD connection per worker; zero chunks are never
//! written, so the image stays thin), each connection is flushed, and only
//! then is the image renamed to its name — replacing the old one only with
//! `--force`. A failure removes the new image: nothing half-written ever
//! carries the name.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::Index;
use crate::jobs::{CancellationToken, Progress};
use crate::repo::verify::worker_threads;
use crate::repo::Repo;
use crate::source::nbd::NbdClient;
use crate::source::rbd::{CephConfig, RbdImage};

use super::chunks::{write_chunks, ChunkSink};

/// Whether the image exists (None: it does not; an error: the cluster
/// could not say, e.g. wrong credentials).
pub fn exists(ceph: &CephConfig, image: &RbdImage) -> Result<bool> {
    match ceph.size(image) {
        Ok(_) => Ok(true),
        Err(Error::Source { reason, .. }) if reason.contains("No such file or directory") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        crate::sys::terminate(&mut self.child);
    }
}

fn serve(filename: &str, connections: usize, image: &RbdImage) -> Result<Server> {
    let dir = tempfile::Builder::new()
        .prefix("lifeboat-rbd-")
        .tempdir()
        .map_err(|e| Error::Qemu(format!("cannot create a socket directory: {e}")))?;
    let sock = dir.path().join("nbd.sock");
    let mut cmd = Command::new("qemu-nbd");
    crate::sys::die_with_parent(&mut cmd);
    let mut child = cmd
        .args(["--format=raw", "--persistent", "--cache=writeback"])
        .arg(format!("--shared={connections}"))
        .arg(format!("--socket={}", sock.display()))
        .arg(filename)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Qemu(format!(
                "cannot run qemu-nbd ({e}); install qemu-utils and qemu-block-extra"
            ))
        })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut msg = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut msg);
            }
            return Err(Error::Source {
                path: image.path(),
                reason: format!(
                    "qemu-nbd could not open the new image ({status}): {}",
                    crate::text::escape(msg.trim())
                ),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(Error::Qemu("qemu-nbd did not start within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Server {
        child,
        _dir: dir,
        sock,
    })
}

/// Writes the image `index` describes onto `target` (`rbd:POOL/IMAGE`);
/// an existing image there is replaced only when `overwrites`.
pub fn restore(
    repo: &Repo,
    index: &Index,
    target: &std::path::Path,
    overwrites: bool,
    ceph: &CephConfig,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    let image = RbdImage::parse(target)?;
    let tmp = RbdImage {
        pool: image.pool.clone(),
        image: format!(
            "{}.lifeboat-restore-{}",
            image.image,
            hex::encode(rand::random::<[u8; 4]>())
        ),
    };
    progress.set_phase("creating the RBD image");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(ceph.qemu_filename(&tmp, None))
        .arg(index.image_size.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Qemu(format!("cannot run qemu-img ({e}); install qemu-utils")))?;
    if !created.status.success() {
        return Err(Error::Source {
            path: image.path(),
            reason: format!(
                "creating {}: {}",
                tmp.spec(),
                crate::text::escape(String::from_utf8_lossy(&created.stderr).trim())
            ),
        });
    }
    let res = write_and_rename(
        repo, index, overwrites, ceph, &image, &tmp, cancel, progress,
    );
    if res.is_err() {
        let _ = ceph.rbd(&tmp, &["rm", &tmp.spec()]);
    }
    res
}

#[allow(clippy::too_many_arguments)]
fn write_and_rename(
    repo: &Repo,
    index: &Index,
    overwrites: bool,
    ceph: &CephConfig,
    image: &RbdImage,
    tmp: &RbdImage,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    // Each connection has one write in flight: more of them than cores
    // keep librbd busy while others decode (a wait, not CPU).
    let workers = (worker_threads() * 4).min(16);
    {
        let server = serve(&ceph.qemu_filename(tmp, None), workers, image)?;
        progress.set_phase("restoring");
        progress.set_totals(index.image_size, index.chunks.len() as u64);
        struct NbdSink(NbdClient);
        impl ChunkSink for NbdSink {
            fn write_at(&mut self, off: u64, data: &[u8]) -> Result<()> {
                self.0.write_at(off, data)
            }
            fn finish(&mut self) -> Result<()> {
                self.0.flush()?;
                self.0.disconnect();
                Ok(())
            }
        }
        write_chunks(repo, index, workers, cancel, progress, || {
            NbdClient::connect(&server.sock).map(NbdSink)
        })
        .map_err(|e| match e {
            Error::Cancelled => e,
            e => Error::Source {
                path: image.path(),
                reason: format!("writing the restored image: {e}"),
            },
        })?;
        drop(server);
    }
    progress.set_phase("renaming the RBD image into place");
    // Checked again: something may have made the image meanwhile.
    if exists(ceph, image)? {
        if !overwrites {
            return Err(Error::TargetExists(image.path()));
        }
        ceph.rbd(image, &["rm", &image.spec()]).map_err(|e| Error::Source {
            path: image.path(),
            reason: format!(
                "removing the image being replaced: {e} (an image with snapshots must have them purged first: rbd snap purge; the restored copy was removed)"
            ),
        })?;
    }
    ceph.rbd(image, &["rename", &tmp.spec(), &image.spec()])
        .map(|_| ())
}
