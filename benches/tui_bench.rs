//! Console benchmark: a repository of 20,000 backups (generated here), the
//! real binary in a pseudo-terminal. Reports the first frame, the time until
//! the 20,000 backups are shown, keypress-to-redraw latency (median of 40),
//! resident memory after load and after 120 refreshes (an hour of the 30 s
//! auto-refresh, each forced with R; every tenth finds a new backup, as when
//! a daemon backs up during that hour), and CPU used while idle.
//!     cargo bench --bench tui_bench

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_core::format::manifest::{
    ImageFormat, Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
};
use lifeboat_core::format::repo_config::RepoConfig;
use lifeboat_core::format::{Id, Index};
use lifeboat_core::repo::Repo;
use portable_pty::{native_pty_system, CommandBuilder, PtySize};

const BACKUPS: usize = 20_000;

fn generate(root: &Path) -> Id {
    let repo = Repo::init(root, RepoConfig::new(4 << 20, 1).unwrap()).unwrap();
    let index = Index {
        chunk_size: 4 << 20,
        image_size: 8 << 20,
        chunks: vec![Id::ZERO, Id::ZERO],
        plain: Vec::new(),
    };
    let index_id = repo.write_index(&index).unwrap();
    // 50 VMs x 2 volumes x 200 backups. Files are written directly (no
    // fsync per file): this is a generator, not a backup.
    for i in 0..BACKUPS {
        write_backup(root, index_id, i);
    }
    index_id
}

/// The i-th generated backup (the index is the same for all).
fn write_backup(root: &Path, index_id: Id, i: usize) {
    let start: chrono::DateTime<chrono::Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
    let vm = format!("vm{:03}", i % 50);
    let vol = if (i / 50).is_multiple_of(2) {
        "root"
    } else {
        "data"
    };
    let m = Manifest {
        format: 1,
        vm: VmInfo { name: vm },
        volume: VolumeInfo {
            name: vol.into(),
            role: Role::Data,
            format: ImageFormat::Raw,
            virtual_size: 8 << 20,
        },
        created_at: start + chrono::Duration::minutes(i as i64 * 30),
        chunk_size: 4 << 20,
        index: index_id,
        parent: None,
        set: format!("{:032x}", i / 2),
        source: SourceInfo {
            host: "bench".into(),
            path: "/dev/null".into(),
        },
        stats: Stats {
            logical_bytes: 8 << 20,
            nonzero_bytes: 0,
            new_chunks: (i % 7) as u64,
            new_stored_bytes: ((i % 13) as u64) << 20,
        },
        labels: Labels::default(),
        definition: None,
        capture: None,
    };
    let key = m.key();
    let path = root.join(key.object_key());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, m.to_bytes()).unwrap();
}

fn ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let t = Instant::now();
    let index_id = generate(&repo);
    eprintln!(
        "generated {BACKUPS} backups in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let bin = env!("CARGO_BIN_EXE_lifeboat");
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 48,
            cols: 160,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(bin);
    cmd.args(["-r", repo.to_str().unwrap(), "tui"]);
    cmd.env("TERM", "xterm-256color");
    cmd.env("HOME", dir.path());
    cmd.env("XDG_DATA_HOME", dir.path().join("data"));
    cmd.env("XDG_CONFIG_HOME", dir.path().join("cfg"));
    let started = Instant::now();
    let mut child = pair.slave.spawn_command(cmd).unwrap();
    let pid = child.process_id().unwrap_or(0);
    drop(pair.slave);
    let parser = Arc::new(Mutex::new(vt100::Parser::new(48, 160, 0)));
    let mut reader = pair.master.try_clone_reader().unwrap();
    let p = parser.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            p.lock().unwrap().process(&buf[..n]);
        }
    });
    let mut writer = pair.master.take_writer().unwrap();
    let screen = || parser.lock().unwrap().screen().contents();
    let wait = |what: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = screen();
            if what(&s) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out; screen:\n{s}");
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    wait(&|s| s.contains("lifeboat"));
    let first_frame = started.elapsed();
    wait(&|s| s.contains(&format!("({BACKUPS} backups)")));
    let loaded = started.elapsed();
    wait(&|s| s.contains("Timeline vm000"));
    // Keypress to redraw: move down the tree (which also reselects the timeline).
    let mut lat = Vec::new();
    for i in 0..40 {
        // Keys 50 ms apart, like fast typing: each press is measured on its
        // own rather than queued behind the 16 ms frame cap of the last one.
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let key: &[u8] = if i % 2 == 0 { b"j" } else { b"k" };
        writer.write_all(key).unwrap();
        writer.flush().unwrap();
        // Wait for the whole redraw: the timeline title names the new selection.
        if i % 2 == 0 {
            wait(&|s| s.contains("Timeline vm000/data"));
        } else {
            wait(&|s| s.contains("Timeline vm000 ") && !s.contains("Timeline vm000/data"));
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let rss = rss_kib(pid);
    // An hour of auto-refreshes (every 30 s), forced: R, then wait for the
    // header to say it refreshed just now.
    let mut after_refreshes = Vec::new();
    for i in 1..=120 {
        if i % 10 == 0 {
            write_backup(&repo, index_id, BACKUPS + i / 10);
        }
        writer.write_all(b"R").unwrap();
        writer.flush().unwrap();
        std::thread::sleep(Duration::from_millis(250));
        if i % 40 == 0 {
            after_refreshes.push(rss_kib(pid));
        }
    }
    let t0 = ticks(pid);
    std::thread::sleep(Duration::from_secs(5));
    let idle_ticks = ticks(pid) - t0;
    writer.write_all(b"q").unwrap();
    writer.flush().unwrap();
    let _ = child.wait();
    println!("| console, {BACKUPS} backups, 160x48 pty | measured | target |");
    println!("|---|---|---|");
    println!(
        "| first frame after start | {:.0} ms | <= 300 ms |",
        first_frame.as_secs_f64() * 1000.0
    );
    println!(
        "| all {BACKUPS} backups loaded and shown | {:.0} ms | - |",
        loaded.as_secs_f64() * 1000.0
    );
    println!(
        "| keypress to redraw, median of 40 presses 50 ms apart (p90) | {:.1} ms ({:.1} ms) | <= 16 ms |",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10]
    );
    println!(
        "| resident memory after load | {:.1} MB | < 100 MB |",
        rss as f64 / 1024.0
    );
    println!(
        "| resident memory after 40 / 80 / 120 refreshes | {} MB | < 100 MB |",
        after_refreshes
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!("| CPU while idle for 5 s | {idle_ticks} ticks (1 tick = 10 ms) | none measurable |");
}
