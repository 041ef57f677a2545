//! gc and prune at scale, against baselines run here and now:
//!
//! - gc of a repository of 1,000 backups over 100,000 chunks (half of the
//!   backups pruned first), dry run and real, against `du -s` of the same
//!   repository (the cost of merely visiting every file) and, when
//!   `RESTIC_BENCH_REPO` names a restic repository of comparable shape
//!   (benches/gc_bench.sh builds one: 1,000 snapshots, ~100,000 blobs),
//!   restic's `prune` on a copy of it;
//! - `lifeboat prune --dry-run` over 10,000 backups, against restic's
//!   `forget --dry-run` over that repository's 1,000 snapshots (reported
//!   per snapshot too, since the counts differ).
//!
//! Run: `cargo bench --bench gc_bench` (or benches/gc_bench.sh for the
//! restic side). Figures go to docs/bench-gc-latest.md.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use lifeboat_core::format::chunk::Encoder;
use lifeboat_core::format::manifest::{
    ImageFormat, Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
};
use lifeboat_core::format::repo_config::RepoConfig;
use lifeboat_core::format::{Id, Index};
use lifeboat_core::gc::{self, GcOptions};
use lifeboat_core::jobs::{CancellationToken, Progress};
use lifeboat_core::repo::Repo;
use lifeboat_core::store::local::LocalStore;
use lifeboat_core::store::DynStore;

const CHUNK: u64 = 64 << 10;

fn manifest(vm: &str, i: usize, index: &Index) -> Manifest {
    Manifest {
        format: 1,
        vm: VmInfo { name: vm.into() },
        volume: VolumeInfo {
            name: "root".into(),
            role: Role::Root,
            format: ImageFormat::Raw,
            virtual_size: index.image_size,
        },
        created_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + Duration::hours(i as i64),
        chunk_size: CHUNK,
        index: index.id(),
        parent: None,
        set: format!("{i:032x}"),
        source: SourceInfo {
            host: "bench".into(),
            path: "/dev/null".into(),
        },
        stats: Stats::default(),
        labels: Labels::default(),
        definition: None,
        capture: None,
    }
}

/// `backups` backups of `per` chunks each, sliding by `step` over a pool
/// of `chunks` distinct chunks (each chunk is referenced by ~per/step).
fn build(root: &Path, backups: usize, chunks: usize, per: usize, step: usize) -> Repo {
    let repo = Repo::init(root, RepoConfig::new(CHUNK, 1).unwrap()).unwrap();
    let mut enc = Encoder::new(1).unwrap();
    let mut ids = Vec::with_capacity(chunks);
    {
        let w = repo.chunk_writer();
        let mut raw = vec![0u8; CHUNK as usize];
        for c in 0..chunks {
            raw[..8].copy_from_slice(&(c as u64 + 1).to_le_bytes());
            let id = Id::of(&raw);
            w.put(&id, &enc.encode(&raw).unwrap()).unwrap();
            ids.push(id);
        }
        w.commit().unwrap();
    }
    for b in 0..backups {
        let start = (b * step) % chunks;
        let index = Index {
            chunk_size: CHUNK,
            image_size: per as u64 * CHUNK,
            chunks: (0..per).map(|k| ids[(start + k) % chunks]).collect(),
            plain: Vec::new(),
        };
        repo.write_index(&index).unwrap();
        repo.write_manifest(&manifest("vm", b, &index)).unwrap();
    }
    repo
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs(t)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = String::from("# gc and prune benchmark\n\n");
    let machine = format!(
        "{} cores; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        Utc::now().format("%Y-%m-%d")
    );
    report.push_str(&format!(
        "Machine: {machine}. Command: `benches/gc_bench.sh`.\n\n"
    ));

    // gc: 1,000 backups of 1,000 chunks sliding by 100 over 100,000 chunks.
    let root = dir.path().join("gc");
    let t = Instant::now();
    let repo = build(&root, 1000, 100_000, 1000, 100);
    let build_s = secs(t);
    // Prune the older half: the chunks only they reference become garbage.
    let keys = repo.list_manifests().unwrap();
    for k in &keys[..500] {
        std::fs::remove_file(root.join(k.object_key())).unwrap();
    }
    let store: DynStore = std::sync::Arc::new(LocalStore::new(&root));
    let cancel = CancellationToken::new();
    let t = Instant::now();
    let du = timed(Command::new("du").arg("-s").arg(&root));
    let _ = t;
    let t = Instant::now();
    let dry = gc::run(
        &store,
        Some(&root),
        &GcOptions {
            dry_run: true,
            ..Default::default()
        },
        &cancel,
        &Progress::new(),
    )
    .await
    .unwrap();
    let dry_s = secs(t);
    let t = Instant::now();
    let real = gc::run(
        &store,
        Some(&root),
        &GcOptions::default(),
        &cancel,
        &Progress::new(),
    )
    .await
    .unwrap();
    let real_s = secs(t);
    assert_eq!(dry.chunks_deleted, real.chunks_deleted);
    report.push_str(&format!(
        "## gc: 1,000 backups over 100,000 chunks (500 pruned first)\n\n\
         Built in {build_s:.1} s. The sweep deleted {} chunks and {} indexes ({:.1} MiB); {} chunks stay.\n\n\
         | run | seconds | vs `du -s` of the repository ({du:.2} s) |\n|---|---|---|\n\
         | lifeboat gc --dry-run | {dry_s:.2} | {:.1}x |\n\
         | lifeboat gc | {real_s:.2} | {:.1}x |\n",
        real.chunks_deleted,
        real.indexes_deleted,
        real.bytes_freed.unwrap_or(0) as f64 / (1 << 20) as f64,
        real.chunks_kept,
        dry_s / du,
        real_s / du,
    ));

    // prune --dry-run over 10,000 backups (hourly for ~14 months).
    let proot = dir.path().join("prune");
    build(&proot, 10_000, 100, 10, 1);
    let bin = env!("CARGO_BIN_EXE_lifeboat");
    let prune_s = timed(Command::new(bin).arg("-r").arg(&proot).args([
        "--json",
        "prune",
        "--dry-run",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "12",
    ]));
    report.push_str(&format!(
        "\n## prune --dry-run over 10,000 backups\n\n\
         | run | seconds | per backup |\n|---|---|---|\n\
         | lifeboat prune --dry-run (10,000 backups) | {prune_s:.2} | {:.0} µs |\n",
        prune_s / 10_000.0 * 1e6
    ));

    // restic on the comparable repository, when there is one.
    match std::env::var("RESTIC_BENCH_REPO") {
        Ok(r) if Path::new(&r).exists() => {
            let copy = dir.path().join("restic");
            assert!(Command::new("cp")
                .arg("-a")
                .arg(&r)
                .arg(&copy)
                .status()
                .unwrap()
                .success());
            let restic = |args: &[&str]| {
                let mut c = Command::new("restic");
                c.args(["-q", "--no-cache", "-r"])
                    .arg(&copy)
                    .args(args)
                    .env("RESTIC_PASSWORD", "bench");
                c
            };
            let snaps: serde_json::Value =
                serde_json::from_slice(&restic(&["snapshots", "--json"]).output().unwrap().stdout)
                    .unwrap_or_default();
            let n = snaps.as_array().map(|a| a.len()).unwrap_or(0).max(1);
            let forget = timed(&mut restic(&[
                "forget",
                "--dry-run",
                "--keep-daily",
                "7",
                "--keep-weekly",
                "4",
                "--keep-monthly",
                "12",
            ]));
            report.push_str(&format!(
                "| restic forget --dry-run ({n} snapshots) | {forget:.2} | {:.0} µs |\n\n\
                 Per backup, lifeboat's dry run costs {:.2}x restic's.\n",
                forget / n as f64 * 1e6,
                (prune_s / 10_000.0) / (forget / n as f64),
            ));
            // Drop the older half, then prune (restic's gc).
            let ids: Vec<String> = snaps
                .as_array()
                .map(|a| {
                    a.iter()
                        .take(n / 2)
                        .filter_map(|s| s["short_id"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let mut args = vec!["forget".to_string()];
            args.extend(ids);
            let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            timed(&mut restic(&refs));
            let prune = timed(&mut restic(&["prune"]));
            report.push_str(&format!(
                "\n## restic prune on its comparable repository\n\n\
                 {n} snapshots over ~100,000 blobs, the older half forgotten first: `restic prune` took {prune:.2} s; \
                 lifeboat gc took {real_s:.2} s on 1,000 backups over 100,000 chunks ({:.2}x restic).\n",
                real_s / prune
            ));
        }
        _ => report.push_str(
            "\n(restic comparison skipped: set RESTIC_BENCH_REPO, or run benches/gc_bench.sh)\n",
        ),
    }
    print!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench-gc-latest.md");
    std::fs::write(&out, &report).unwrap();
    eprintln!("written to {}", out.display());
}
