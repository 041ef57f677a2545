//! `lifeboat daemon` on a file clock the test moves: a VM never backed up
//! runs at once; nothing runs between slots; after "downtime" one run
//! covers every missed slot; a failing run is retried with backoff and the
//! history says so; a second daemon names the first; SIGTERM mid-backup
//! leaves no half-visible backup. `/metrics` is parsed by the Prometheus
//! project's own Python parser, and `status --rpo` exits 5 when a VM is at
//! risk.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{noise, write_at, World, BIN};

struct Daemon {
    child: Child,
    metrics: Option<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(w: &World, vms: &[(&str, &Path)], extra: &str) -> PathBuf {
    let mut s = format!(
        "repository = \"{}\"\ndefault_policy = \"hourly\"\n\n[policy.hourly]\nschedule = \"every 1h\"\ntimezone = \"UTC\"\nkeep_last = 2\nrpo_late = \"2h\"\nrpo_stale = \"6h\"\n{extra}\n",
        w.repo().display()
    );
    for (vm, img) in vms {
        s.push_str(&format!(
            "\n[[vm]]\nname = \"{vm}\"\n[[vm.volume]]\nname = \"root\"\npath = \"{}\"\nformat = \"raw\"\n",
            img.display()
        ));
    }
    let p = w.path("lifeboat.toml");
    std::fs::write(&p, s).unwrap();
    p
}

fn start(w: &World, cfg: &Path, clock: &Path) -> Daemon {
    let mut child = w
        .cmd()
        .arg("--config")
        .arg(cfg)
        .args([
            "daemon",
            "--tick",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--clock-file",
        ])
        .arg(clock)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let metrics = line.trim().strip_prefix("metrics on ").map(String::from);
    Daemon { child, metrics }
}

fn set_clock(clock: &Path, t: &str) {
    std::fs::write(clock, t).unwrap();
}

fn runs(w: &World) -> Vec<serde_json::Value> {
    std::fs::read_to_string(w.repo().join("state/runs.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET /metrics: the status line and the body.
fn get_metrics(url: &str, token: Option<&str>) -> (String, String) {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Parses the metrics with prometheus_client's OpenMetrics parser and
/// returns `name{labels} value` lines.
fn scrape(url: &str) -> Vec<String> {
    parse(&get_metrics(url, None).1)
}

fn parse(body: &str) -> Vec<String> {
    let py = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", py])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/test.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_daemon_runs_on_its_clock_catches_up_once_and_retries() {
    let w = World::new();
    w.init("64K");
    let img = w.path("web.raw");
    write_at(&img, 0, &noise(1 << 20, 1));
    let cfg = config(&w, &[("web", &img)], "");
    // A top-level key: it goes before the tables.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("gc_schedule = \"every 1h\"\n{text}")).unwrap();
    let clock = w.path("clock");
    set_clock(&clock, "2026-11-27T10:00:00Z");
    let d = start(&w, &cfg, &clock);

    // Never backed up: runs at once, stamped with the daemon's clock.
    wait_for("the first run", || runs(&w).len() == 1);
    let r = &runs(&w)[0];
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["vm"], "web");
    assert!(r["steps"].to_string().contains("quick verify"), "{r}");
    // Between slots nothing runs.
    set_clock(&clock, "2026-11-27T10:30:00Z");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&w).len(), 1);
    // Five hours "down": one run for the newest missed slot.
    set_clock(&clock, "2026-11-27T15:10:00Z");
    wait_for("the catch-up run", || runs(&w).len() == 2);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&w).len(), 2, "catch-up ran more than once");
    assert_eq!(runs(&w)[1]["slot"], "2026-11-27T15:00:00Z");
    // gc ran on its own schedule (at start, then for the catch-up hour).
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.repo().join("state/daemon.json")).unwrap())
            .unwrap();
    assert_eq!(state["last_gc"], "2026-11-27T15:10:00Z", "{state}");

    // A second daemon on the same repository refuses and names the first.
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["daemon", "--clock-file"])
        .arg(&clock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("already runs") && err.contains(&format!("pid {}", d.child.id())),
        "{err}"
    );

    // The source vanishes: the 16:00 run fails, is retried a minute later
    // (failing again), and once the disk is back the third attempt works.
    let saved = w.path("web.saved");
    std::fs::rename(&img, &saved).unwrap();
    set_clock(&clock, "2026-11-27T16:00:30Z");
    wait_for("the failed run", || runs(&w).len() == 3);
    assert_eq!(runs(&w)[2]["outcome"], "failed");
    assert!(runs(&w)[2]["error"].as_str().unwrap().contains("web.raw"));
    set_clock(&clock, "2026-11-27T16:01:00Z");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs(&w).len(), 3, "retried before its backoff");
    set_clock(&clock, "2026-11-27T16:01:40Z");
    wait_for("the first retry", || runs(&w).len() == 4);
    assert_eq!(runs(&w)[3]["attempt"], 2);
    std::fs::rename(&saved, &img).unwrap();
    set_clock(&clock, "2026-11-27T16:07:00Z");
    wait_for("the second retry", || runs(&w).len() == 5);
    let r = &runs(&w)[4];
    assert_eq!(
        (r["attempt"].as_u64(), r["outcome"].as_str()),
        (Some(3), Some("ok")),
        "{r}"
    );
    assert_eq!(r["slot"], "2026-11-27T16:00:00Z");

    // The run history, as the CLI shows it.
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["runs", "web"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(text.matches("failed").count(), 2, "{text}");
    assert!(text.contains("does not exist"), "{text}");

    // Metrics, through an independent parser.
    let m = scrape(d.metrics.as_deref().unwrap());
    let has = |s: &str| m.iter().any(|l| l.starts_with(s));
    assert!(has("lifeboat_backups{vm=web} 2.0"), "keep_last 2: {m:#?}");
    assert!(has("lifeboat_last_run_success{vm=web} 1.0"), "{m:#?}");
    assert!(
        has("lifeboat_backup_age_seconds{vm=web,volume=root}"),
        "{m:#?}"
    );
    assert!(
        has("lifeboat_rpo_state{state=ok,vm=web}") || has("lifeboat_rpo_state{state=stale,vm=web}"),
        "{m:#?}"
    );
    assert!(has("lifeboat_repository_bytes"), "{m:#?}");
    drop(d);

    // The same metrics from `lifeboat serve`, behind a token.
    let tokens = w.path("tokens.json");
    let token = common::remote::add_token(&tokens, "prom", "read");
    let server = common::remote::Server::start(&w.repo(), &tokens, "127.0.0.1:0");
    let (status, _) = get_metrics(&server.url, None);
    assert!(status.contains("401"), "{status}");
    let (status, body) = get_metrics(&server.url, Some(&token));
    assert!(status.contains("200"), "{status}");
    let m = parse(&body);
    assert!(
        m.iter()
            .any(|l| l.starts_with("lifeboat_backups{vm=web} 2.0")),
        "{m:#?}"
    );
}

#[test]
fn sigterm_mid_backup_leaves_no_half_visible_backup() {
    let w = World::new();
    w.init("64K");
    let img = w.path("big.raw");
    write_at(&img, 0, &noise(768 << 20, 7));
    let cfg = config(&w, &[("big", &img)], "");
    let clock = w.path("clock");
    set_clock(&clock, "2026-11-27T10:00:00Z");
    let mut d = start(&w, &cfg, &clock);
    // The backup runs once its writer lock is there.
    wait_for("the backup to start", || {
        common::files_under(&w.repo().join("locks"))
            .iter()
            .any(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("writer-"))
            })
    });
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(30));
    let r = runs(&w);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["outcome"], "cancelled", "{:?}", r[0]);
    assert!(
        common::manifest_files(&w.repo()).is_empty(),
        "a half-done backup is visible"
    );
    assert!(
        common::files_under(&w.repo().join("locks")).is_empty(),
        "a lock was left"
    );
    // The next start runs it again, to the end.
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["daemon", "--now", "big", "--clock-file"])
        .arg(&clock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::manifest_files(&w.repo()).len(), 1);
    w.restore_equals(&w.repo(), "big/root@latest", &img);
}

#[test]
fn status_rpo_states_and_exit_codes() {
    let w = World::new();
    w.init("64K");
    let img = w.path("a.raw");
    write_at(&img, 0, &noise(200_000, 1));
    let never = w.path("b.raw");
    write_at(&never, 0, &noise(200_000, 2));
    let cfg = config(&w, &[("fresh", &img), ("never", &never)], "");
    let lb = |args: &[&str]| w.with_config(&cfg, args);
    let out = lb(&["backup", "fresh"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lb(&["--json", "status", "--rpo"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a VM never backed up is at risk"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = |vm: &str| {
        v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vm"] == vm)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state("fresh"), "ok", "{v}");
    assert_eq!(state("never"), "never_backed_up");
    let out = lb(&["backup", "never"]);
    assert!(out.status.success());
    let out = lb(&["status", "--rpo"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A failed verify puts the VM at risk; so does a backup older than rpo_late.
    let out = lb(&["verify"]);
    assert!(out.status.success());
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.repo().join("state/verify.json")).unwrap())
            .unwrap();
    for (_, m) in record.as_object_mut().unwrap().iter_mut() {
        m["ok"] = serde_json::Value::Bool(false);
    }
    std::fs::write(w.repo().join("state/verify.json"), record.to_string()).unwrap();
    let out = lb(&["--json", "status", "--rpo"]);
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vms"][0]["state"], "verify_failed", "{v}");
    let _ = BIN;
}

/// A set the server refuses as late (made while the link was down, older
/// than the server's `--max-backup-lag` when the link is back) is said by
/// the run, `status --rpo` and `/metrics`, with what to do.
#[test]
fn a_set_the_server_refuses_as_late_is_said_everywhere() {
    let w = World::new();
    w.init("64K");
    let img = w.path("web.raw");
    write_at(&img, 0, &noise(150_000, 1));
    let (srv, tokens, token) = common::remote::server_dir(w.dir.path(), "site", "append");
    let server = common::remote::Server::start_with(
        &srv,
        &tokens,
        "127.0.0.1:0",
        &["--max-backup-lag", "2s"],
    );
    let token_file = w.path("offsite.token");
    std::fs::write(&token_file, &token).unwrap();
    let cfg = config(
        &w,
        &[("web", &img)],
        &format!(
            "push = [\"offsite\"]\nremote.offsite = {{ keep_last = 5 }}\n\n[remote.offsite]\nurl = \"{}/\"\ntoken_file = \"{}\"\n",
            server.url,
            token_file.display()
        ),
    );
    let lb = |args: &[&str]| w.with_config(&cfg, args);
    // Made while the link was down (a plain backup pushes nothing)…
    let out = lb(&["backup", "web"]);
    assert!(out.status.success(), "{out:?}");
    // …and older than the server takes from an append token by the time
    // the link is back.
    std::thread::sleep(Duration::from_secs(3));
    write_at(&img, 0, &noise(150_000, 2));
    let out = lb(&["daemon", "--now", "web"]);
    let last = runs(&w).last().cloned().unwrap();
    assert!(
        last.to_string().contains("REFUSED as late"),
        "{last:#}\n{out:?}"
    );

    let out = lb(&["--json", "status", "--rpo"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = v["vms"][0]["offsite"]["offsite"]["refused"]
        .as_u64()
        .unwrap();
    assert!(refused >= 1, "{v:#}");
    let out = lb(&["status", "--rpo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REFUSED as late") && text.contains("Catching up after an outage"),
        "{text}"
    );

    // /metrics: the daemon's clock at the last run, so nothing is due.
    let clock = w.path("clock");
    set_clock(&clock, last["started_at"].as_str().unwrap());
    let d = start(&w, &cfg, &clock);
    let lines = scrape(d.metrics.as_deref().unwrap());
    let line = lines
        .iter()
        .find(|l| l.starts_with("lifeboat_remote_refused_sets{remote=offsite,vm=web}"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{line}");
    assert!(
        lines.contains(&"lifeboat_remote_reachable{remote=offsite,vm=web} 1.0".to_string()),
        "{lines:#?}"
    );
}
