//! `lifeboat nbd REF`: one volume of a backup as a read-only NBD export.

use std::path::PathBuf;

use lifeboat_core::jobs::CancellationToken;
use lifeboat_core::nbd_export::{self, serve, Export, Listen, Source};
use lifeboat_core::repository::Repository;
use lifeboat_core::text::{bytes, escape};

use super::{Ctx, Outcome};

/// A volume of a backup (local, or on a remote), readable at any offset.
pub async fn open_export(
    ctx: &Ctx,
    reference: &str,
    from: Option<&str>,
    cache_chunks: usize,
) -> anyhow::Result<(Export, String)> {
    let source = match from {
        None => Source::Local(ctx.repo_path()),
        Some(r) => Source::Remote(Repository::open(ctx.remote(r)?.1).await?),
    };
    Ok(nbd_export::open(source, reference, cache_chunks).await?)
}

pub async fn nbd(
    ctx: &Ctx,
    reference: &str,
    socket: Option<PathBuf>,
    tcp: Option<std::net::SocketAddr>,
    cache_chunks: usize,
    from: Option<String>,
) -> anyhow::Result<Outcome> {
    let (export, name) = open_export(ctx, reference, from.as_deref(), cache_chunks).await?;
    // The default socket lives in a directory of its own, private.
    let (listen, _dir) = match (socket, tcp) {
        (_, Some(a)) => (Listen::Tcp(a), None),
        (Some(p), None) => (Listen::Unix(p), None),
        (None, None) => {
            let dir = tempfile::Builder::new().prefix("lifeboat-nbd-").tempdir()?;
            (Listen::Unix(dir.path().join("nbd.sock")), Some(dir))
        }
    };
    let size = export.size();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        super::stop_requested().await;
        stop.cancel();
    });
    let json = ctx.json;
    tokio::task::spawn_blocking(move || {
        serve(&export, &listen, &cancel, |bound| {
            if json {
                // One line: a script reads it while the export runs.
                println!(
                    "{}",
                    serde_json::json!({"serving": name, "uri": bound.uri(), "size": size})
                );
            } else {
                println!(
                    "serving {} ({}) read-only at {}",
                    escape(&name),
                    bytes(size),
                    bound.uri()
                );
                println!("e.g. qemu-img info '{}'; Ctrl-C stops", bound.uri());
            }
        })
    })
    .await??;
    Ok(Outcome::Ok)
}
