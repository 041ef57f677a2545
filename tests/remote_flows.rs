//! Push, pull, status and restore --from through the real binary against
//! the real server on loopback and a real Garage cluster, with faults.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::remote::{add_token, garage, unique, Server};
use common::*;

/// A world with a local repository holding two backups of vm/root and a
/// server with an append token in OFFSITE_TOKEN.
struct Setup {
    w: World,
    server: Server,
    token: String,
    cfg: std::path::PathBuf,
    img: std::path::PathBuf,
}

fn setup(chunk: &str, image_mib: usize) -> Setup {
    let w = World::new();
    w.init(chunk);
    let img = w.path("disk.raw");
    write_at(&img, 0, &noise(image_mib << 20, 1));
    write_at(&img, (image_mib << 20) as u64, &text(1 << 20));
    w.ok(&[
        "backup",
        "vm",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    write_at(&img, 4096, &noise(100_000, 2));
    w.ok(&[
        "backup",
        "vm",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
        "--note",
        "second",
    ]);
    let srv_repo = w.path("srv");
    std::fs::create_dir(&srv_repo).unwrap();
    let tokens = w.path("tokens.toml");
    let token = add_token(&tokens, "client", "append");
    let server = Server::start(&srv_repo, &tokens, "127.0.0.1:0");
    let cfg = w.path("lifeboat.toml");
    common::remote::offsite_config(&cfg, &server.url);
    Setup {
        w,
        server,
        token,
        cfg,
        img,
    }
}

/// Damages a stored object in place; returns its file name (the id).
fn flip_last_byte(path: &std::path::Path) -> String {
    let mut d = std::fs::read(path).unwrap();
    let n = d.len() - 1;
    d[n] ^= 0x55;
    std::fs::write(path, &d).unwrap();
    path.file_name().unwrap().to_str().unwrap().to_string()
}

impl Setup {
    fn run(&self, repo: &std::path::Path, args: &[&str]) -> std::process::Output {
        self.w
            .cmd()
            .arg("--config")
            .arg(&self.cfg)
            .arg("-r")
            .arg(repo)
            .env("OFFSITE_TOKEN", &self.token)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, repo: &std::path::Path, args: &[&str]) -> String {
        let out = self.run(repo, args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, repo: &std::path::Path, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(repo, &a)).unwrap()
    }
}

#[test]
fn push_status_pull_and_restore_from_server() {
    let s = setup("64K", 2);
    let local = s.w.repo();
    let (_, e) =
        s.w.fails(&["--config", s.cfg.to_str().unwrap(), "push", "offsite"]);
    assert!(e.contains("OFFSITE_TOKEN") && e.contains("not set"), "{e}");
    let out = s.run(&local, &["push", "offsite"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--init"));
    // Push only the older backup first: status shows one in both, one local.
    let r = s.json(&local, &["push", "offsite", "vm/root@~1", "--init"]);
    assert_eq!(r["manifests_sent"], 1);
    let st = s.json(&local, &["status", "offsite"]);
    assert_eq!(st[0]["volumes"][0]["both"].as_array().unwrap().len(), 1);
    assert_eq!(
        st[0]["volumes"][0]["only_local"].as_array().unwrap().len(),
        1
    );
    // The second push sends only the chunks the 100 kB rewrite touched.
    let r = s.json(&local, &["push", "offsite"]);
    assert_eq!(r["manifests_sent"], 1);
    assert_eq!(r["chunks_sent"], 2);
    let r = s.json(&local, &["push", "offsite"]);
    assert_eq!(r["manifests_sent"], 0);
    assert_eq!(r["chunks_sent"], 0);
    let ls = s.json(&local, &["remote", "ls"]);
    assert_eq!(ls[0]["reachable"], true);
    assert_eq!(ls[0]["backups"], 2);

    // The disaster case: a fresh machine with no repository restores from the remote.
    let fresh = s.w.path("fresh");
    let target = s.w.path("restored.raw");
    s.ok(
        &fresh,
        &[
            "restore",
            "vm/root@latest",
            "--from",
            "offsite",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    assert_same_file(&target, &s.img);
    // Chunks were kept: restoring the older backup fetches only the difference.
    let out = s.run(
        &fresh,
        &[
            "restore",
            "vm/root@~1",
            "--from",
            "offsite",
            "--to",
            s.w.path("old.raw").to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fetched from offsite: 2 chunks"), "{err}");
    // pull brings the manifests too.
    let r = s.json(&fresh, &["pull", "offsite"]);
    assert_eq!(r["manifests_sent"], 2);
    assert_eq!(r["chunks_sent"], 0);
    let tl = s.json(&fresh, &["timeline", "vm", "root"]);
    assert_eq!(tl.as_array().unwrap().len(), 2);
    assert_eq!(
        s.w.cmd()
            .arg("-r")
            .arg(&fresh)
            .args(["verify", "--deep"])
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
}

#[test]
fn pull_rejects_corrupt_objects_from_the_remote() {
    let s = setup("64K", 1);
    let local = s.w.repo();
    s.ok(&local, &["push", "offsite", "--init"]);
    // The server's copy of one chunk is damaged: the server serves it as is.
    let chunks = files_under(&s.w.path("srv/chunks"));
    let victim = &chunks[chunks.len() / 2];
    let name = flip_last_byte(victim);
    let fresh = s.w.path("fresh");
    let out = s.run(&fresh, &["pull", "offsite", "--init"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains(&name) && e.contains("corrupt"), "{e}");
    assert!(
        manifest_files(&fresh).is_empty(),
        "a manifest was written despite the bad chunk"
    );
    assert!(!files_under(&fresh.join("chunks"))
        .iter()
        .any(|p| p.ends_with(&name)));
    let out = s.run(
        &fresh,
        &[
            "restore",
            "vm/root",
            "--from",
            "offsite",
            "--to",
            s.w.path("x.raw").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(!s.w.path("x.raw").exists());
}

#[test]
fn server_killed_mid_push_then_rerun_sends_only_the_rest() {
    let mut s = setup("64K", 48);
    let local = s.w.repo();
    let total_chunks = objects_under(&local.join("chunks"));
    let child =
        s.w.cmd()
            .arg("--config")
            .arg(&s.cfg)
            .arg("-r")
            .arg(&local)
            .env("OFFSITE_TOKEN", &s.token)
            .args(["push", "offsite", "--init", "--concurrency", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let srv_chunks = s.w.path("srv/chunks");
    let deadline = Instant::now() + Duration::from_secs(60);
    while objects_under(&srv_chunks) < 20 {
        assert!(Instant::now() < deadline, "push never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    let addr = s.server.addr.clone();
    s.server.kill();
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "push must fail when the server dies: {e}"
    );
    assert!(
        e.contains("cannot connect") || e.contains("connection") || e.contains("closed"),
        "{e}"
    );
    // A killed server may leave temp files (never read); count objects only.
    let before = objects_under(&srv_chunks);
    assert!(before < total_chunks, "everything arrived before the kill");
    assert!(
        manifest_files(&s.w.path("srv")).is_empty(),
        "no manifest before its chunks"
    );
    // Restart on the same address and push again.
    let tokens = s.w.path("tokens.toml");
    s.server = Server::start(&s.w.path("srv"), &tokens, &addr);
    let r = s.json(&local, &["push", "offsite"]);
    assert_eq!(
        r["chunks_sent"].as_u64().unwrap() as usize,
        total_chunks - before
    );
    assert_eq!(r["manifests_sent"], 2);
    let check =
        s.w.cmd()
            .arg("-r")
            .arg(s.w.path("srv"))
            .args(["verify", "--deep"])
            .status()
            .unwrap();
    assert_eq!(check.code(), Some(0));
}

#[test]
fn hanging_remote_times_out() {
    let w = World::new();
    w.init("64K");
    let img = w.path("d.raw");
    write_at(&img, 0, &noise(100_000, 1));
    w.ok(&[
        "backup",
        "vm",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept connections and never answer.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let cfg = w.path("c.toml");
    std::fs::write(
        &cfg,
        format!("[remote.hang]\nurl = \"http://{addr}/\"\ntimeout_secs = 2\n"),
    )
    .unwrap();
    let started = Instant::now();
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("-r")
        .arg(w.repo())
        .args(["push", "hang"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("timed out"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("-r")
        .arg(w.repo())
        .args(["--json", "remote", "ls"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["reachable"], false);
}

#[test]
fn push_and_pull_through_s3_with_a_node_stopped_mid_push() {
    let Some(g) = garage() else { return };
    let w = World::new();
    w.init("64K");
    let img = w.path("disk.raw");
    write_at(&img, 0, &noise(24 << 20, 9));
    w.ok(&[
        "backup",
        "vm",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    let prefix = unique("flow");
    let cfg = w.path("c.toml");
    let remote = |endpoint: &str| {
        format!(
            "url = \"s3://{}/{prefix}\"\nendpoint = \"{endpoint}\"\nregion = \"{}\"\npath_style = true\naccess_key_id_env = \"GK\"\nsecret_access_key_env = \"GS\"\ntimeout_secs = 30\n",
            g.bucket, g.region
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "[remote.cloud]\n{}\n[remote.cloud2]\n{}",
            remote(&g.endpoints[0]),
            remote(&g.endpoints[1])
        ),
    )
    .unwrap();
    let run = |repo: &std::path::Path, args: &[&str]| {
        let mut c = w.cmd();
        c.arg("--config")
            .arg(&cfg)
            .arg("-r")
            .arg(repo)
            .env("GK", &g.key_id)
            .env("GS", &g.secret)
            .args(args);
        c
    };
    // Stop the third node once the push is under way; quorum (2 of 3) keeps writes going.
    let mut child = run(
        &w.repo(),
        &["push", "cloud", "--init", "--concurrency", "2"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pidfile = format!("{}/n3.pid", g.dir);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    // Bring node 3 back for the other tests; scripts/garage.sh stops it
    // through its pid file, so it is deliberately not waited for here.
    #[allow(clippy::zombie_processes)]
    let restarted = Command::new(&g.bin)
        .args(["-c", &format!("{}/n3.toml", g.dir), "server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(&pidfile, restarted.id().to_string()).unwrap();
    assert!(status.success(), "push failed with one node down: {err}");
    // Pull back through another node into a fresh repository and compare.
    let fresh = w.path("fresh");
    let out = run(&fresh, &["--json", "pull", "cloud2", "--init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = w.path("back.raw");
    let out = w
        .cmd()
        .arg("-r")
        .arg(&fresh)
        .args(["restore", "vm/root", "--to", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_same_file(&target, &img);
    // Refused credentials: a clear error, no retry storm, no secret printed.
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("-r")
        .arg(w.repo())
        .env("GK", &g.key_id)
        .env("GS", "definitely-wrong")
        .args(["push", "cloud"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        e.contains("credentials refused") && !e.contains("definitely-wrong"),
        "{e}"
    );
    // A bucket that does not exist.
    std::fs::write(
        &cfg,
        format!(
            "[remote.nobucket]\n{}",
            remote(&g.endpoints[0]).replace(&g.bucket, "no-such-bucket-here")
        ),
    )
    .unwrap();
    let out = run(&w.repo(), &["push", "nobucket", "--init"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("no-such-bucket-here"), "{e}");
}

/// `verify --remote`: the remote's copy through its API. Quick finds a
/// missing chunk, deep a damaged one, each naming the backups it breaks.
#[test]
fn verify_a_remote_through_its_api() {
    let s = setup("64K", 1);
    let local = s.w.repo();
    s.ok(&local, &["push", "offsite", "--init"]);
    let v = s.json(&local, &["verify", "--remote", "offsite", "--deep"]);
    assert_eq!(v["manifests"], 2);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["bytes_read"].as_u64().unwrap() > 0);

    let chunks = files_under(&s.w.path("srv/chunks"));
    // Damage one chunk: the quick check (presence) passes, the deep one
    // re-hashes it and fails.
    let victim = &chunks[chunks.len() / 2];
    let damaged = flip_last_byte(victim);
    s.ok(&local, &["verify", "--remote", "offsite"]);
    let out = s.run(&local, &["verify", "--remote", "offsite", "--deep"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains(&damaged) && text.contains("breaks vm/root@"),
        "{text}"
    );

    // Remove another: the quick check finds it missing.
    let gone = chunks.iter().find(|c| **c != *victim).unwrap();
    std::fs::remove_file(gone).unwrap();
    let out = s.run(&local, &["verify", "--remote", "offsite"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("missing"), "{text}");
    // The local repository is not what was checked: it stays clean.
    s.ok(&local, &["verify", "--deep"]);
}

/// `serve token ls`: names, roles, when made and last used; never a token
/// or its hash. The server records use on shutdown (and every 30 s).
#[test]
fn token_ls_shows_last_use_and_no_secrets() {
    let mut s = setup("64K", 1);
    let local = s.w.repo();
    s.ok(&local, &["push", "offsite", "--init"]);
    let pid = s.server.child.id().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let status = s.server.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown: {status:?}");
    let tokens = s.w.path("tokens.toml");
    let token_cmd = |args: &[&str]| {
        let out =
            s.w.cmd()
                .args(["serve", "token"])
                .args(args)
                .arg("--tokens")
                .arg(&tokens)
                .output()
                .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = token_cmd(&["ls"]);
    assert!(text.contains("client") && text.contains("append"), "{text}");
    assert!(
        !text.contains(&s.token) && !text.contains("blake3"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&token_cmd(&["ls", "--json"])).unwrap();
    assert_eq!(v[0]["name"], "client");
    assert!(v[0]["last_used"].is_string(), "{v}");
    assert!(v[0]["created"].is_string(), "{v}");
    // rm: gone from the list.
    token_cmd(&["rm", "client"]);
    let v: serde_json::Value = serde_json::from_str(&token_cmd(&["ls", "--json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);
}
