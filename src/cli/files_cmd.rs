//! `lifeboat files REF [PATH]`: the files of a backup's volume, listed,
//! searched or extracted without restoring the disk or mounting anything.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lifeboat_core::files::{Entry, Extracted, Kind, Listing, Volume};
use lifeboat_core::nbd_export::Export;
use lifeboat_core::text::escape;
use serde::Serialize;

use super::nbd_cmd::open_export;
use super::progress::run_job;
use super::{print_json, Ctx, Outcome};
use crate::output::{bytes, table, time};

/// What a `files` run asks for.
pub struct Ask {
    pub path: Option<String>,
    pub get: Option<String>,
    pub to: Option<PathBuf>,
    pub find: Option<String>,
    pub from: Option<String>,
}

#[derive(Serialize)]
struct FsRow {
    name: String,
    filesystem: &'static str,
    size: u64,
    offset: u64,
    label: String,
    partition: String,
    readable: bool,
    note: Option<&'static str>,
}

#[derive(Serialize)]
struct EntryRow {
    path: String,
    name: String,
    kind: &'static str,
    size: u64,
    mode: String,
    uid: u32,
    gid: u32,
    modified: Option<DateTime<Utc>>,
    target: Option<String>,
}

fn row(path: String, e: &Entry) -> EntryRow {
    EntryRow {
        path,
        name: e.name_text(),
        kind: e.kind.word(),
        size: e.size,
        mode: format!("{:04o}", e.mode),
        uid: e.uid,
        gid: e.gid,
        modified: DateTime::from_timestamp(e.mtime.0, e.mtime.1),
        target: e
            .target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
    }
}

fn human(r: &EntryRow, e: &Entry, show: &str) -> Vec<String> {
    let mut name = escape(show).into_owned();
    if e.kind == Kind::Dir {
        name.push('/');
    }
    if let Some(t) = &r.target {
        name = format!("{name} -> {}", escape(t));
    }
    vec![
        e.mode_text(),
        format!("{}:{}", e.uid, e.gid),
        bytes(e.size),
        r.modified.as_ref().map(time).unwrap_or_else(|| "?".into()),
        name,
    ]
}

fn count(n: u64, what: &str) -> String {
    match (n, what) {
        (1, _) => format!("1 {what}"),
        (_, "directory") => format!("{n} directories"),
        _ => format!("{n} {what}s"),
    }
}

fn cost(export: &Export) -> (u64, u64, String) {
    let (read, total) = export.chunks_read();
    let pct = if total == 0 {
        0.0
    } else {
        read as f64 * 100.0 / total as f64
    };
    (
        read,
        total,
        format!("read {read} of the volume's {total} chunks ({pct:.1}%)"),
    )
}

pub async fn files(ctx: &Ctx, reference: &str, ask: Ask) -> anyhow::Result<Outcome> {
    let (export, name) = open_export(ctx, reference, ask.from.as_deref(), 16).await?;
    let export = Arc::new(export);
    let json = ctx.json;
    if let (Some(get), Some(to)) = (ask.get.clone(), ask.to.clone()) {
        let image = export.clone();
        let got: Extracted = run_job("extract", json, move |cancel, progress| {
            progress.set_phase("extracting");
            let vol = Volume::open(image)?;
            vol.extract(&get, &to, cancel, &mut |n| progress.add(n, 0))
        })
        .await?;
        let (read, total, said) = cost(&export);
        if json {
            print_json(&serde_json::json!({
                "backup": name, "extracted": got.path, "files": got.files, "dirs": got.dirs,
                "symlinks": got.symlinks, "bytes": got.bytes, "skipped": got.skipped,
                "owners_kept": got.owners_kept, "chunks_read": read, "chunks_total": total,
            }))?;
        } else {
            println!(
                "extracted {} from {}: {}, {}, {}, {}",
                escape(&got.path.display().to_string()),
                escape(&name),
                count(got.files, "file"),
                count(got.dirs, "directory"),
                count(got.symlinks, "symlink"),
                bytes(got.bytes)
            );
            if !got.owners_kept {
                println!("owners not kept: only root can give files to other users (modes and times are kept)");
            }
            for s in &got.skipped {
                println!("skipped {}", escape(s));
            }
            println!("{said}");
        }
        return Ok(Outcome::Ok);
    }
    let image = export.clone();
    let path = ask.path.clone();
    let find = ask.find.clone();
    let listing = tokio::task::spawn_blocking(move || -> lifeboat_core::Result<_> {
        let vol = Volume::open(image)?;
        let fs: Vec<FsRow> = vol
            .filesystems
            .iter()
            .map(|f| FsRow {
                name: f.name.clone(),
                filesystem: f.detected.word(),
                size: f.len,
                offset: f.start,
                label: f.label.clone(),
                partition: f.partition_kind.clone(),
                readable: f.detected.not_readable().is_none(),
                note: f.detected.not_readable(),
            })
            .collect();
        let entries = match vol.browse(path.as_deref(), find.as_deref())? {
            Listing::Filesystems(_) => None,
            Listing::Entries(e) => Some(e),
        };
        Ok((vol.scheme, fs, entries))
    })
    .await??;
    let (scheme, fs, entries) = listing;
    let (read, total, said) = cost(&export);
    match entries {
        None => {
            if json {
                print_json(&serde_json::json!({
                    "backup": name, "partition_table": scheme, "filesystems": fs,
                    "chunks_read": read, "chunks_total": total,
                }))?;
            } else {
                println!("{} · partition table: {scheme}", escape(&name));
                let rows: Vec<Vec<String>> = fs
                    .iter()
                    .map(|f| {
                        vec![
                            f.name.clone(),
                            f.filesystem.to_string(),
                            bytes(f.size),
                            escape(&f.label).into_owned(),
                            f.partition.clone(),
                            f.note.unwrap_or("").to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["NAME", "FILESYSTEM", "SIZE", "LABEL", "PARTITION", "NOTE"],
                        &rows
                    )
                );
                if let Some(f) = fs.iter().find(|f| f.readable) {
                    println!(
                        "list one with: lifeboat files {} {}/",
                        escape(reference),
                        f.name
                    );
                }
            }
        }
        Some(entries) => {
            let rows: Vec<(EntryRow, &Entry, String)> = entries
                .iter()
                .map(|(p, e)| {
                    let show = if ask.find.is_some() {
                        p.clone()
                    } else {
                        e.name_text()
                    };
                    (row(p.clone(), e), e, show)
                })
                .collect();
            if json {
                let list: Vec<&EntryRow> = rows.iter().map(|(r, _, _)| r).collect();
                print_json(&serde_json::json!({
                    "backup": name, "entries": list, "chunks_read": read, "chunks_total": total,
                }))?;
            } else {
                let table_rows: Vec<Vec<String>> =
                    rows.iter().map(|(r, e, show)| human(r, e, show)).collect();
                print!(
                    "{}",
                    table(&["MODE", "OWNER", "SIZE", "MODIFIED", "NAME"], &table_rows)
                );
                if rows.is_empty() {
                    println!("(nothing)");
                }
                println!("{said}");
            }
        }
    }
    Ok(Outcome::Ok)
}
