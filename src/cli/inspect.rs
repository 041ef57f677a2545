//! Commands that only read: ls, timeline, show, hash, diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use chrono::Utc;
use lifeboat_core::format::diff::{self, Change};
use lifeboat_core::format::index::DEFAULT_CHUNK_SIZE;
use lifeboat_core::format::refs;
use lifeboat_core::format::{Index, Manifest, ManifestKey};
use lifeboat_core::source::{self, FormatChoice};
use serde::Serialize;

use lifeboat_core::text::escape;

use super::progress::run_job;
use super::{print_json, Ctx, Outcome};
use crate::output::{age, bytes, table, time};

#[derive(Serialize)]
struct LsRow {
    vm: String,
    volume: String,
    role: Option<String>,
    format: Option<String>,
    virtual_size: Option<u64>,
    backups: usize,
    latest: Option<String>,
    latest_time: Option<chrono::DateTime<Utc>>,
}

pub fn ls(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let all = repo.load_all()?;
    let mut rows: BTreeMap<(String, String), LsRow> = BTreeMap::new();
    for vm in &ctx.config.vms {
        for v in &vm.volumes {
            rows.insert(
                (vm.name.get_ref().clone(), v.name.get_ref().clone()),
                LsRow {
                    vm: vm.name.get_ref().clone(),
                    volume: v.name.get_ref().clone(),
                    role: Some(v.role.to_string()),
                    format: None,
                    virtual_size: None,
                    backups: 0,
                    latest: None,
                    latest_time: None,
                },
            );
        }
    }
    for (k, m) in &all {
        let row = rows
            .entry((k.vm.clone(), k.volume.clone()))
            .or_insert_with(|| LsRow {
                vm: k.vm.clone(),
                volume: k.volume.clone(),
                role: None,
                format: None,
                virtual_size: None,
                backups: 0,
                latest: None,
                latest_time: None,
            });
        row.backups += 1;
        row.role = Some(m.volume.role.to_string());
        row.format = Some(m.volume.format.to_string());
        row.virtual_size = Some(m.volume.virtual_size);
        row.latest = Some(k.id.to_hex());
        row.latest_time = Some(m.created_at);
    }
    let rows: Vec<LsRow> = rows.into_values().collect();
    if ctx.json {
        print_json(&rows)?;
        return Ok(Outcome::Ok);
    }
    if rows.is_empty() {
        println!("no backups yet, and no VMs in the inventory");
        return Ok(Outcome::Ok);
    }
    let now = Utc::now();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.vm.clone(),
                r.volume.clone(),
                r.role.clone().unwrap_or_default(),
                r.format.clone().unwrap_or_else(|| "-".into()),
                r.virtual_size.map(bytes).unwrap_or_else(|| "-".into()),
                r.backups.to_string(),
                r.latest
                    .as_ref()
                    .map(|l| l[..12].to_string())
                    .unwrap_or_else(|| "never".into()),
                r.latest_time
                    .map(|t| format!("{} ({} ago)", time(&t), age(&t, now)))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["VM", "VOLUME", "ROLE", "FORMAT", "SIZE", "BACKUPS", "LATEST", "TIME"],
            &cells
        )
    );
    Ok(Outcome::Ok)
}

#[derive(Serialize)]
struct TimelineRow<'a> {
    id: String,
    key: String,
    vm: &'a str,
    volume: &'a str,
    created_at: chrono::DateTime<Utc>,
    set: &'a str,
    virtual_size: u64,
    nonzero_bytes: u64,
    new_stored_bytes: u64,
    new_chunks: u64,
    note: Option<&'a str>,
    /// offline, crash or application (None: made before it was recorded).
    consistency: Option<lifeboat_core::format::manifest::Consistency>,
    protected: bool,
}

pub fn timeline(ctx: &Ctx, vm: &str, volume: Option<&str>) -> anyhow::Result<Outcome> {
    lifeboat_core::names::check_name("VM", vm)?;
    if let Some(v) = volume {
        lifeboat_core::names::check_name("volume", v)?;
    }
    let repo = ctx.open_repo()?;
    let all = repo.load_all()?;
    let mut items: Vec<&(ManifestKey, Manifest)> = all
        .iter()
        .filter(|(k, _)| k.vm == vm && volume.is_none_or(|v| k.volume == v))
        .collect();
    items.sort_by_key(|i| std::cmp::Reverse(i.1.created_at));
    if items.is_empty() && !ctx.json {
        bail!(
            "no backups of {vm}{}{} in {}",
            if volume.is_some() { "/" } else { "" },
            volume.unwrap_or(""),
            repo.root().display()
        );
    }
    let rows: Vec<TimelineRow> = items
        .iter()
        .map(|(k, m)| TimelineRow {
            id: k.id.to_hex(),
            key: k.object_key(),
            vm: &k.vm,
            volume: &k.volume,
            created_at: m.created_at,
            set: &m.set,
            virtual_size: m.volume.virtual_size,
            nonzero_bytes: m.stats.nonzero_bytes,
            new_stored_bytes: m.stats.new_stored_bytes,
            new_chunks: m.stats.new_chunks,
            note: m.labels.note.as_deref(),
            consistency: m.capture.as_ref().map(|c| c.consistency),
            protected: m.labels.protected,
        })
        .collect();
    if ctx.json {
        print_json(&rows)?;
        return Ok(Outcome::Ok);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                time(&r.created_at),
                r.volume.to_string(),
                r.id[..12].to_string(),
                bytes(r.virtual_size),
                bytes(r.nonzero_bytes),
                bytes(r.new_stored_bytes),
                // Application (guest frozen), crash (one instant, as a
                // power cut) or offline (not running); "-" for backups
                // made before lifeboat recorded it.
                match r.consistency {
                    Some(lifeboat_core::format::manifest::Consistency::Application) => "app",
                    Some(lifeboat_core::format::manifest::Consistency::Crash) => "crash",
                    Some(lifeboat_core::format::manifest::Consistency::Offline) => "offline",
                    None => "-",
                }
                .into(),
                escape(r.note.unwrap_or("")).into_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["TIME", "VOLUME", "ID", "SIZE", "DATA", "NEW", "CAPTURE", "NOTE"],
            &cells
        )
    );
    Ok(Outcome::Ok)
}

pub fn show(ctx: &Ctx, reference: &str) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let all = repo.load_all()?;
    let (k, m) = refs::resolve_one(&all, reference)?;
    if ctx.json {
        print_json(&serde_json::json!({"id": k.id, "key": k.object_key(), "manifest": m}))?;
        return Ok(Outcome::Ok);
    }
    let s = &m.stats;
    println!("backup      {}", k.id);
    println!("key         {}", k.object_key());
    println!(
        "vm/volume   {}/{} ({}, {})",
        m.vm.name, m.volume.name, m.volume.role, m.volume.format
    );
    println!("created     {}", m.created_at.to_rfc3339());
    println!(
        "size        {} ({} bytes)",
        bytes(m.volume.virtual_size),
        m.volume.virtual_size
    );
    println!("index       {}", m.index);
    println!("chunk size  {}", bytes(m.chunk_size));
    println!(
        "parent      {}",
        m.parent
            .map(|p| p.to_hex())
            .unwrap_or_else(|| "(none)".into())
    );
    println!("set         {}", escape(&m.set));
    println!(
        "source      {}:{}",
        escape(&m.source.host),
        escape(&m.source.path)
    );
    println!(
        "stats       {} data, {} new in {} chunks",
        bytes(s.nonzero_bytes),
        bytes(s.new_stored_bytes),
        s.new_chunks
    );
    println!(
        "note        {}",
        escape(m.labels.note.as_deref().unwrap_or(""))
    );
    println!("protected   {}", m.labels.protected);
    if let Some(c) = &m.capture {
        println!("capture     {}", escape(&c.summary()));
        if let Some(b) = &c.bitmap {
            println!("bitmap      {b} (tracks changes since this backup)");
        }
    }
    Ok(Outcome::Ok)
}

fn chunk_size_for(ctx: &Ctx, given: Option<u64>) -> u64 {
    given.unwrap_or_else(|| {
        ctx.open_repo()
            .map(|r| r.chunk_size())
            .unwrap_or(DEFAULT_CHUNK_SIZE)
    })
}

async fn index_of_file(
    ctx: &Ctx,
    path: PathBuf,
    format: FormatChoice,
    chunk_size: u64,
) -> anyhow::Result<Index> {
    let ceph = ctx.config.ceph.clone().unwrap_or_default();
    let scan = run_job("hash", ctx.json, move |c, p| {
        let mut src = source::open_in(&path, format, &ceph)?;
        lifeboat_core::backup::pipeline::scan(src.reader.as_mut(), chunk_size, None, None, c, p)
    })
    .await?;
    Ok(scan.index)
}

pub async fn hash(
    ctx: &Ctx,
    file: PathBuf,
    format: FormatChoice,
    chunk_size: Option<u64>,
) -> anyhow::Result<Outcome> {
    let cs = chunk_size_for(ctx, chunk_size);
    let index = index_of_file(ctx, file.clone(), format, cs).await?;
    let id = index.id();
    if ctx.json {
        print_json(&serde_json::json!({
            "file": file, "digest": id, "chunk_size": cs, "image_size": index.image_size,
            "nonzero_bytes": index.nonzero_bytes(),
        }))?;
    } else {
        println!("{id}  {}", file.display());
    }
    Ok(Outcome::Ok)
}

/// One side of a diff: its name, its index, and `vm/volume` when it is a
/// backup (to warn when two different volumes are compared).
async fn side(ctx: &Ctx, what: &str, cs: u64) -> anyhow::Result<(String, Index, Option<String>)> {
    if Path::new(what).is_file() {
        let idx = index_of_file(ctx, PathBuf::from(what), FormatChoice::Auto, cs).await?;
        return Ok((format!("file {what}"), idx, None));
    }
    let repo = ctx.open_repo()?;
    let all = repo.load_all()?;
    let (k, m) = refs::resolve_one(&all, what)?;
    Ok((
        format!(
            "{}/{}@{} {}",
            k.vm,
            k.volume,
            time(&m.created_at),
            k.id.short()
        ),
        repo.read_index(&m.index)?,
        Some(format!("{}/{}", k.vm, k.volume)),
    ))
}

pub async fn diff(ctx: &Ctx, a: &str, b: &str) -> anyhow::Result<Outcome> {
    let cs = chunk_size_for(ctx, None);
    let (name_a, ia, vol_a) = side(ctx, a, cs).await?;
    let (name_b, ib, vol_b) = side(ctx, b, cs).await?;
    let d = diff::diff(&ia, &ib)?;
    // Two different volumes share little; comparing them is usually a slip.
    let different = match (&vol_a, &vol_b) {
        (Some(x), Some(y)) => x != y,
        _ => false,
    };
    if different {
        tracing::warn!(
            "comparing different volumes ({} and {}): most of the map will differ",
            vol_a.as_deref().unwrap_or_default(),
            vol_b.as_deref().unwrap_or_default()
        );
    }
    if ctx.json {
        print_json(&serde_json::json!({
            "a": name_a,
            "b": name_b,
            "different_volumes": different,
            "identical": d.identical(),
            "diff": d
        }))?;
        return Ok(Outcome::Ok);
    }
    println!("A: {name_a}\nB: {name_b}");
    if d.identical() {
        println!("identical ({} image)", bytes(d.size_b));
        return Ok(Outcome::Ok);
    }
    println!(
        "same {}, changed {}, added {}, removed {}",
        bytes(d.same_bytes),
        bytes(d.changed_bytes),
        bytes(d.added_bytes),
        bytes(d.removed_bytes)
    );
    let shown: Vec<_> = d
        .ranges
        .iter()
        .filter(|r| r.change != Change::Same)
        .collect();
    for r in shown.iter().take(100) {
        println!(
            "  {:<8} {:>14} +{:<10} ({} chunks)",
            format!("{:?}", r.change).to_lowercase(),
            r.offset,
            bytes(r.length),
            r.chunks
        );
    }
    if shown.len() > 100 {
        println!("  … {} more ranges (use --json for all)", shown.len() - 100);
    }
    Ok(Outcome::Ok)
}
