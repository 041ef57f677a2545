//! Whole flows for what a hands-on review of the last round found (the
//! console's, cloud's and drills' findings live with their own tests):
//! times as shown select what they show, the daemon sends everything a
//! remote lacks and never prunes the only copy, global flags never do
//! nothing silently, and the small things a user sees.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::remote::{add_token, Server};
use common::{noise, write_at, World, BIN};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A time copied from `timeline` (whole seconds) selects the backup shown
/// on that line, for `show`, `restore` and `protect` alike; a time that
/// covers two backups says so and offers what selects each.
#[test]
fn a_time_as_shown_selects_the_backup_shown() {
    let w = World::new();
    w.init("64K");
    // Two backups more than a second apart, then two within one second.
    let img = w.backup_noise("web", "d.raw", 100_000, 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_at(&img, 0, &noise(100_000, 2));
    w.ok(&[
        "backup",
        "web",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    let tl = w.json(&["timeline", "web"]);
    let rows = tl.as_array().unwrap();
    // Newest first: the second backup's time, to the second, as printed.
    let shown = w.ok(&["timeline", "web"]);
    let line = shown.lines().nth(1).unwrap();
    let time: String = line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let id = rows[0]["id"].as_str().unwrap();
    assert_eq!(
        w.json(&["show", &format!("web/root@{time}")])["id"],
        id,
        "{time} selected another backup"
    );
    let older = rows[1]["id"].as_str().unwrap();
    let line = shown.lines().nth(2).unwrap();
    let time_old: String = line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let out = w.ok(&["protect", &format!("web@{time_old}")]);
    assert!(out.contains("protect"), "{out}");
    let all = w.json(&["timeline", "web"]);
    let protected: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protected"] == true)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(protected, vec![older], "protect marked the wrong backup");
    // A minute that holds both backups is ambiguous, and says how to pick.
    let minute = &time[..16];
    if time_old.starts_with(minute) {
        let (code, e) = w.fails(&["show", &format!("web/root@{minute}")]);
        assert_eq!(code, 1);
        assert!(e.contains("matches 2 backups"), "{e}");
        assert!(e.contains("(id "), "{e}");
    }
}

/// A config whose policy pushes to `offsite` at `url` (token in a file),
/// keeps the last set locally and five there.
fn daemon_config(w: &World, img: &Path, url: &str, token: &str) -> PathBuf {
    let token_file = w.path("offsite.token");
    std::fs::write(&token_file, token).unwrap();
    let cfg = w.path("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "repository = \"{}\"\ndefault_policy = \"p\"\n\n[remote.offsite]\nurl = \"{url}\"\ntoken_file = \"{}\"\ntimeout_secs = 5\n\n[policy.p]\nschedule = \"every 1h\"\nkeep_last = 1\npush = [\"offsite\"]\nremote.offsite = {{ keep_last = 5 }}\n\n[[vm]]\nname = \"web\"\n[[vm.volume]]\nname = \"root\"\npath = \"{}\"\nformat = \"raw\"\n",
            w.repo().display(),
            token_file.display(),
            img.display()
        ),
    )
    .unwrap();
    cfg
}

fn run_now(w: &World, cfg: &Path) -> Output {
    w.cmd()
        .arg("--config")
        .arg(cfg)
        .args(["daemon", "--now", "web"])
        .output()
        .unwrap()
}

fn local_sets(w: &World) -> usize {
    let mut sets: Vec<String> = common::manifest_files(&w.repo())
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["set"].as_str().unwrap().to_string()
        })
        .collect();
    sets.sort();
    sets.dedup();
    sets.len()
}

/// While the off-site copy is down, local prune keeps what it lacks and
/// `status --rpo` says the remote is unreachable (not "none"); when it is
/// back, one run sends every set it lacks, not only its own, and local
/// prune then keeps only what the policy says.
#[test]
fn the_daemon_sends_what_an_outage_left_and_never_prunes_the_only_copy() {
    let w = World::new();
    w.init("64K");
    let img = w.path("web.raw");
    write_at(&img, 0, &noise(150_000, 1));
    let (srv, tokens, token) = common::remote::server_dir(w.dir.path(), "site", "append");
    // A port no server listens on while "down".
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    let cfg = daemon_config(&w, &img, &format!("http://{addr}/"), &token);
    for seed in 2..4 {
        write_at(&img, 0, &noise(150_000, seed));
        let out = run_now(&w, &cfg);
        assert!(
            !out.status.success(),
            "the push cannot succeed: {}",
            text(&out)
        );
    }
    assert_eq!(
        local_sets(&w),
        2,
        "nothing may be pruned while offsite is down"
    );
    let runs = std::fs::read_to_string(w.repo().join("state/runs.jsonl")).unwrap();
    assert!(
        runs.contains("unreachable: cannot tell whether it holds this set")
            || runs.contains("kept 1 sets an off-site copy lacks"),
        "{runs}"
    );
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["--json", "status", "--rpo", "--timeout", "3"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["vms"][0]["remotes"]["offsite"]["state"], "unreachable",
        "{v:#}"
    );

    // The remote is back (on the same address).
    let _server = Server::start(&srv, &tokens, &addr);
    write_at(&img, 0, &noise(150_000, 9));
    let out = run_now(&w, &cfg);
    assert!(out.status.success(), "{}", text(&out));
    let held: Vec<PathBuf> = common::manifest_files(&srv);
    assert_eq!(held.len(), 3, "every set it lacked was sent: {held:?}");
    assert_eq!(local_sets(&w), 1, "then local retention applies");
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["--json", "status", "--rpo"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vms"][0]["remotes"]["offsite"]["state"], "holds", "{v:#}");
    assert_eq!(v["vms"][0]["offsite"]["offsite"]["owed"], 0, "{v:#}");
}

/// A run whose backup committed and whose push was then cancelled says
/// so, instead of "nothing was committed".
#[test]
fn a_run_cancelled_after_its_backup_says_what_was_committed() {
    let w = World::new();
    w.init("64K");
    let img = w.path("web.raw");
    write_at(&img, 0, &noise(4 << 20, 1));
    let (srv, tokens, token) = common::remote::server_dir(w.dir.path(), "site", "append");
    let server = Server::start(&srv, &tokens, "127.0.0.1:0");
    let cfg = daemon_config(&w, &img, &format!("{}/", server.url), &token);
    // A slow push: the backup commits, then the push crawls.
    let mut child = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["--limit-upload", "64K", "daemon", "--now", "web"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while common::objects_under(&srv.join("chunks")) == 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the push never began"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let runs = std::fs::read_to_string(w.repo().join("state/runs.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(runs.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "cancelled", "{last:#}");
    let e = last["error"].as_str().unwrap();
    assert!(
        e.contains("after the backup") && e.contains("was committed"),
        "{e}"
    );
    assert!(!e.contains("nothing was committed"), "{e}");
}

/// A global flag given to a command it does nothing for is refused, with
/// what it applies to.
#[test]
fn global_flags_that_do_nothing_are_refused() {
    let w = World::new();
    w.init("64K");
    for args in [
        vec!["--limit-upload", "8M", "ls"],
        vec!["--limit-download", "8M", "push", "x"],
        vec!["--io-timeout", "5", "timeline", "web"],
        vec!["--json", "completions", "bash"],
        vec![
            "--limit-upload",
            "8M",
            "restore",
            "web/root@latest",
            "--to",
            "x",
        ],
    ] {
        let out = w.lb(&args);
        let e = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("does nothing for"), "{args:?}: {e}");
    }
    // …and taken where it applies.
    let out = w.lb(&[
        "--limit-download",
        "8M",
        "restore",
        "web/root@latest",
        "--to",
        "x",
        "--from",
        "nowhere",
    ]);
    assert!(!text(&out).contains("does nothing for"), "{}", text(&out));
    let (_, e) = w.fails(&["prune", "--keep-within", "0d"]);
    assert!(e.contains("keeps nothing"), "{e}");
}

/// `serve` on a port in use says so at once, every time.
#[test]
fn serve_on_a_port_in_use_says_address_in_use() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let w = World::new();
    w.init("64K");
    let tokens = w.path("tokens.toml");
    add_token(&tokens, "t", "read");
    for _ in 0..5 {
        let mut child = w
            .cmd()
            .arg("-r")
            .arg(w.repo())
            .args(["serve", "--listen", &addr, "--tokens"])
            .arg(&tokens)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("serve on a busy port hangs");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains("Address already in use") || err.contains("address in use"),
            "{err}"
        );
        assert!(!err.contains("internal error"), "{err}");
    }
}

/// The small things: completions into a closed pipe, private lock files,
/// who protected a backup without $USER, gc's byte count on a served
/// remote, the capture column, `remote add` of a remote a drill names.
#[test]
fn small_things_a_user_sees() {
    // completions | head -1: no panic.
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("'{BIN}' completions zsh | head -1; exit ${{PIPESTATUS:-0}}"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{out:?}"
    );

    let w = World::new();
    w.init("64K");
    w.backup_noise("web", "d.raw", 100_000, 1);
    // state/.lock is private whatever the umask.
    let mut verify = w.cmd();
    verify.arg("-r").arg(w.repo()).args(["--json", "verify"]);
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut verify, || {
            libc::umask(0);
            Ok(())
        });
    }
    assert!(verify.output().unwrap().status.success());
    let lock = w.repo().join("state/.lock");
    let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Who protected it, without $USER in the environment.
    let out = w
        .cmd()
        .env_remove("USER")
        .arg("-r")
        .arg(w.repo())
        .args(["protect", "web@latest"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let marks = common::files_under(&w.repo().join("protected"));
    let body = std::fs::read_to_string(&marks[0]).unwrap();
    assert!(!body.contains("unknown@"), "{body}");
    // The timeline says how each backup was captured.
    let tl = w.ok(&["timeline", "web"]);
    assert!(tl.contains("CAPTURE") && tl.contains("offline"), "{tl}");
    // gc --dry-run on a served remote counts the bytes it would free.
    let (srv, tokens, admin) = common::remote::server_dir(w.dir.path(), "ops", "admin");
    let server = Server::start(&srv, &tokens, "127.0.0.1:0");
    let lb = |args: &[&str]| {
        w.cmd()
            .arg("-r")
            .arg(w.repo())
            .env("LIFEBOAT_TOKEN", &admin)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(lb(&["push", &server.url, "--init"]).status.success());
    assert!(lb(&["prune", "--remote", &server.url, "--keep-last", "1"])
        .status
        .success());
    w.backup_noise("web", "e.raw", 100_000, 2);
    assert!(lb(&["push", &server.url]).status.success());
    assert!(lb(&["unprotect", "web@~1", "--remote", &server.url])
        .status
        .success());
    assert!(lb(&["prune", "--remote", &server.url, "--keep-last", "1"])
        .status
        .success());
    let out = lb(&["gc", "--remote", &server.url, "--dry-run"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("would delete") && t.contains("KiB)"), "{t}");
    // `remote add` of the remote a drill already names.
    let cfg = w.path("c.toml");
    std::fs::write(
        &cfg,
        "[[vm]]\nname = \"web\"\n[vm.drill]\nfrom = \"offsite\"\n",
    )
    .unwrap();
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["remote", "add", "offsite", &server.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
