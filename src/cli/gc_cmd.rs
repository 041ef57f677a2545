//! `lifeboat gc` and `lifeboat locks`: garbage collection of the local
//! repository or a remote, and who holds a repository now.

use lifeboat_core::gc::{self, GcOptions};
use lifeboat_core::lock;

use super::progress::run_job_async;
use super::{print_json, Ctx, Outcome};
use crate::output::{duration, table};
use lifeboat_core::text::bytes;

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Collect on this remote (name or URL; a server needs an admin token).
    #[arg(long, value_name = "REMOTE")]
    pub remote: Option<String>,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Minutes to wait for running backups and pushes before deleting.
    #[arg(long, default_value_t = 10, value_name = "MINUTES")]
    pub wait: u64,
}

pub async fn gc_cmd(ctx: &Ctx, a: GcArgs) -> anyhow::Result<Outcome> {
    let (store, root) = ctx.target(a.remote.as_deref())?;
    let opts = GcOptions {
        dry_run: a.dry_run,
        wait: std::time::Duration::from_secs(a.wait * 60),
        ..Default::default()
    };
    let report = run_job_async("gc", ctx.json, move |cancel, progress| async move {
        gc::run(&store, root.as_deref(), &opts, &cancel, &progress).await
    })
    .await?;
    if ctx.json {
        print_json(&report)?;
        return Ok(Outcome::Ok);
    }
    let freed = report
        .bytes_freed
        .map(|b| format!(" ({})", bytes(b)))
        .unwrap_or_default();
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    println!(
        "{}: {} manifests reference {} indexes and {} chunks",
        report.repository, report.manifests, report.indexes_kept, report.chunks_kept
    );
    println!(
        "{verb} {} unreferenced indexes and {} chunks{freed}, {} stale temp files ({}) in {}",
        report.indexes_deleted,
        report.chunks_deleted,
        report.tmp_files_deleted,
        bytes(report.tmp_bytes_freed),
        duration(report.seconds)
    );
    if report.rescued > 0 {
        println!(
            "kept {} objects that backups written during the gc took up",
            report.rescued
        );
    }
    for l in &report.dead_locks_removed {
        println!("removed the lock of a process that is gone: {l}");
    }
    Ok(Outcome::Ok)
}

pub async fn locks_cmd(
    ctx: &Ctx,
    remote: Option<String>,
    break_lock: Option<String>,
) -> anyhow::Result<Outcome> {
    let (store, _) = ctx.target(remote.as_deref())?;
    if let Some(id) = break_lock {
        let key = lifeboat_core::store::DocKey::lock(&id).map_err(|_| {
            anyhow::anyhow!(
                "{id:?} is not a lock id: `lifeboat locks` lists them (writer-… or gc-…)"
            )
        })?;
        let seen = lock::list(&store).await?;
        let Some(found) = seen.iter().find(|s| s.key == key) else {
            anyhow::bail!(
                "{} holds no lock {id}: `lifeboat locks` lists those it holds",
                store.describe()
            );
        };
        let holder = found.describe();
        store.delete_doc(&key).await?;
        if ctx.json {
            print_json(&serde_json::json!({ "broken": id, "holder": holder }))?;
        } else {
            println!(
                "broke lock {id} ({holder}) on {}: its holder cannot refresh it and stops at its next check (a server refuses the lock from now on)",
                store.describe()
            );
        }
        return Ok(Outcome::Ok);
    }
    let seen = lock::list(&store).await?;
    if ctx.json {
        let rows: Vec<serde_json::Value> = seen
            .iter()
            .map(|s| {
                serde_json::json!({
                    "lock": s.key.key(),
                    "id": lock_id(s),
                    "kind": s.kind(),
                    "holder": s.info,
                    "age_seconds": s.age.as_secs(),
                    "live": s.live,
                    "junk": s.is_junk(),
                })
            })
            .collect();
        print_json(&serde_json::json!({ "repository": store.describe(), "locks": rows }))?;
        return Ok(Outcome::Ok);
    }
    if seen.is_empty() {
        println!(
            "{}: no locks (nothing writes or collects now)",
            store.describe()
        );
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = seen
        .iter()
        .map(|s| {
            vec![
                lock_id(s),
                format!("{:?}", s.kind()).to_lowercase(),
                s.describe(),
                duration(s.age.as_secs_f64()),
                if s.is_junk() {
                    "JUNK (ignored; --break removes it)"
                } else if s.live {
                    "live"
                } else {
                    "dead (ignored)"
                }
                .into(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "KIND", "HOLDER", "REFRESHED AGO", "STATE"], &rows)
    );
    Ok(Outcome::Ok)
}

fn lock_id(s: &lock::Seen) -> String {
    match &s.key {
        lifeboat_core::store::DocKey::Lock(n) => n.clone(),
        other => other.key(),
    }
}
