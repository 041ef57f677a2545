//! `lifeboat gc`: frees what prune left, removes stale temp files, and is
//! safe while backups and pushes write to the same repository — locally,
//! through `lifeboat serve` and on S3 (Garage). The race tests repeat
//! prune + gc against a backup loop and a push loop whose contents recur,
//! so new backups keep finding chunks that a prune just made garbage (the
//! interleaving that loses data without the lock handshake); afterwards
//! every backup verifies deep and the newest restores bit for bit.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::remote::{add_token, garage, unique, Server};
use common::{noise, write_at, World};

fn run(w: &World, cfg: Option<&Path>, repo: &Path, args: &[&str]) -> std::process::Output {
    let mut c = w.cmd();
    if let Some(cfg) = cfg {
        c.arg("--config").arg(cfg);
    }
    if let Some(g) = garage_env() {
        c.env("GK", g.0).env("GS", g.1);
    }
    c.arg("-r").arg(repo).args(args).output().unwrap()
}

fn garage_env() -> Option<(String, String)> {
    Some((
        std::env::var("LIFEBOAT_TEST_S3_KEY_ID").ok()?,
        std::env::var("LIFEBOAT_TEST_S3_SECRET").ok()?,
    ))
}

fn ok(w: &World, cfg: Option<&Path>, repo: &Path, args: &[&str]) -> String {
    let out = run(w, cfg, repo, args);
    assert!(
        out.status.success(),
        "lifeboat {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes the image for round `i`: one chunk of 64 KiB new in every round,
/// then 15 from two patterns that alternate, so each round brings back the
/// chunks that the prune after the round before made garbage.
fn image_for(path: &Path, i: u64) {
    let mut data = noise(64 << 10, 1000 + i);
    for c in 1..16u64 {
        data.extend(noise(64 << 10, (i % 2) * 100 + c));
    }
    write_at(path, 0, &data);
}

fn backup(w: &World, repo: &Path, vm: &str, img: &Path) {
    ok(
        w,
        None,
        repo,
        &[
            "backup",
            vm,
            "--format",
            "raw",
            "--volume",
            &format!("root={}", img.display()),
        ],
    );
}

fn set_old(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(7200);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(old).unwrap();
}

#[test]
fn gc_frees_what_prune_left_and_temp_files_of_killed_processes() {
    let w = World::new();
    w.init("64K");
    let img = w.path("disk.raw");
    for i in 0..4 {
        image_for(&img, i);
        backup(&w, &w.repo(), "vm", &img);
    }
    let repo = w.repo();
    // A killed backup's leftovers: an old temp file, and a fresh one that
    // may belong to a writer still running.
    let stale = repo.join("tmp/.chunk.tmp-1-1-deadbeef");
    let fresh = repo.join("tmp/.chunk.tmp-2-2-cafef00d");
    std::fs::write(&stale, vec![1u8; 1000]).unwrap();
    std::fs::write(&fresh, vec![2u8; 1000]).unwrap();
    set_old(&stale);

    let v = w.json(&["gc", "--dry-run"]);
    assert_eq!(v["chunks_deleted"], 0, "nothing is garbage yet: {v}");
    assert_eq!(v["tmp_files_deleted"], 1, "{v}");
    assert!(stale.exists(), "a dry run deleted a file");

    w.ok(&["prune", "--keep-last", "1"]);
    let dry = w.json(&["gc", "--dry-run"]);
    let n = dry["chunks_deleted"].as_u64().unwrap();
    assert!(n > 0, "{dry}");
    assert!(dry["bytes_freed"].as_u64().unwrap() > 0, "{dry}");
    let chunks_before = common::objects_under(&repo.join("chunks"));

    let done = w.json(&["gc"]);
    assert_eq!(done["chunks_deleted"].as_u64().unwrap(), n, "{done}");
    assert_eq!(done["indexes_deleted"].as_u64().unwrap(), 3, "{done}");
    assert_eq!(
        common::objects_under(&repo.join("chunks")),
        chunks_before - n as usize
    );
    assert!(!stale.exists() && fresh.exists());
    w.ok(&["verify", "--deep"]);
    w.restore_equals(&repo, "vm/root@latest", &img);
    let again = w.json(&["gc"]);
    assert_eq!(again["chunks_deleted"], 0, "{again}");
    // Nothing holds the repository afterwards.
    assert!(w.ok(&["locks"]).contains("no locks"));
}

#[test]
fn gc_refuses_to_guess_when_a_backup_cannot_be_read() {
    let w = World::new();
    w.init("64K");
    let img = w.path("disk.raw");
    image_for(&img, 1);
    backup(&w, &w.repo(), "vm", &img);
    image_for(&img, 2);
    backup(&w, &w.repo(), "vm", &img);
    // Lose one index: its chunks would look like garbage.
    let idx = common::files_under(&w.repo().join("indexes"));
    std::fs::remove_file(&idx[0]).unwrap();
    let chunks = common::objects_under(&w.repo().join("chunks"));
    let (_, err) = w.fails(&["gc"]);
    assert!(
        err.contains("gc stopped") && err.contains("nothing was deleted") && err.contains("verify"),
        "{err}"
    );
    assert_eq!(common::objects_under(&w.repo().join("chunks")), chunks);
}

#[test]
fn a_writer_lock_keeps_gc_from_deleting_and_names_the_holder() {
    let w = World::new();
    w.init("64K");
    let img = w.path("disk.raw");
    image_for(&img, 1);
    backup(&w, &w.repo(), "vm", &img);
    w.ok(&["prune", "--keep-last", "1"]);
    // A live writer on this host: this test process.
    let lock = w.repo().join("locks/writer-0123abcd.json");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(
        &lock,
        format!(
            r#"{{"kind":"writer","host":"{}","pid":{},"what":"backup web","since":"2026-01-01T00:00:00Z"}}"#,
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(),
            std::process::id()
        ),
    )
    .unwrap();
    let (_, err) = w.fails(&["gc", "--wait", "0"]);
    assert!(err.contains("busy") && err.contains("backup web"), "{err}");
    assert!(w.ok(&["locks"]).contains("backup web"));
    // Its holder is gone: the lock is dead and gc removes it.
    std::fs::write(
        &lock,
        r#"{"kind":"writer","host":"elsewhere","pid":1,"what":"backup web","since":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    set_old(&lock);
    let v = w.json(&["gc", "--wait", "0"]);
    assert_eq!(v["dead_locks_removed"].as_array().unwrap().len(), 1, "{v}");
    assert!(!lock.exists());
}

/// The race: a backup loop into `local`, a push loop from `local` into the
/// target, and prune + gc on the target, at once; then deep verify.
/// One prune to the last backup and one gc; the chunks it deleted.
fn collect(w: &World, cfg: Option<&Path>, local: &Path, extra: &[&str]) -> u64 {
    let mut prune = vec!["prune", "--keep-last", "1"];
    prune.extend(extra);
    ok(w, cfg, local, &prune);
    let mut gc = vec!["--json", "gc", "--wait", "5"];
    gc.extend(extra);
    let v: serde_json::Value = serde_json::from_str(&ok(w, cfg, local, &gc)).unwrap();
    v["chunks_deleted"].as_u64().unwrap()
}

fn race(w: &World, cfg: Option<&Path>, target: Option<&str>, rounds: u64) {
    let local = w.repo();
    let img = w.path("race.raw");
    image_for(&img, 0);
    backup(w, &local, "vm", &img);
    if let Some(t) = target {
        ok(w, cfg, &local, &["push", t, "--init"]);
    }
    // For the local repository, the "push" comes from a second repository.
    let side = w.path("side");
    let side_img = w.path("side.raw");
    if target.is_none() {
        ok(w, None, &side, &["init", "--chunk-size", "64K"]);
    }
    let local_url = local.display().to_string();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            // Stops the collector even when this loop fails.
            struct Done<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let _done = Done(&done);
            for i in 1..=rounds {
                image_for(&img, i);
                backup(w, &local, "vm", &img);
                match target {
                    // Slow pushes (a quarter of a second per chunk sent) hold
                    // the window between "already there" and the manifest
                    // open long enough for a gc to strike.
                    Some(t) => {
                        ok(
                            w,
                            cfg,
                            &local,
                            &["--limit-upload", "256K", "--limit-burst", "16K", "push", t],
                        );
                    }
                    None => {
                        image_for(&side_img, i + 1);
                        backup(w, &side, "side", &side_img);
                        ok(
                            w,
                            None,
                            &side,
                            &[
                                "--limit-upload",
                                "256K",
                                "--limit-burst",
                                "16K",
                                "push",
                                &local_url,
                            ],
                        );
                    }
                }
            }
        });
        let collector = s.spawn(|| {
            let mut deleted = 0u64;
            let mut extra: Vec<&str> = Vec::new();
            if let Some(t) = target {
                extra = vec!["--remote", t];
            }
            // At least one round, however the threads are scheduled; how
            // many overlap a push is up to the machine, and nothing below
            // depends on it.
            loop {
                deleted += collect(w, cfg, &local, &extra);
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
            deleted
        });
        writer.join().unwrap();
        let mut deleted = collector.join().unwrap();
        // Every round backed up a new image and kept only the last backup:
        // garbage exists now whatever the timing was, and a gc after the
        // race frees what the racing ones did not (on a loaded machine the
        // race may have had no gc between a push and the next prune).
        let extra: Vec<&str> = target.map(|t| vec!["--remote", t]).unwrap_or_default();
        deleted += collect(w, cfg, &local, &extra);
        assert!(
            deleted > 0,
            "no gc freed anything, though every round left garbage"
        );
    });
    // Everything the target holds verifies deep, and the newest restores.
    match target {
        Some(t) => {
            ok(w, cfg, &local, &["verify", "--deep", "--remote", t]);
            let back = w.path("back");
            ok(w, cfg, &back, &["pull", t, "--init"]);
            ok(w, None, &back, &["verify", "--deep"]);
            w.restore_equals(&back, "vm/root@latest", &img);
        }
        None => {
            ok(w, None, &local, &["verify", "--deep"]);
            w.restore_equals(&local, "vm/root@latest", &img);
            w.restore_equals(&local, "side/root@latest", &side_img);
        }
    }
}

#[test]
fn gc_races_backups_and_pushes_locally() {
    let w = World::new();
    w.init("64K");
    race(&w, None, None, 8);
}

#[test]
fn gc_races_pushes_through_the_server() {
    let w = World::new();
    w.init("64K");
    let served = w.path("served");
    std::fs::create_dir_all(&served).unwrap();
    let tokens = w.path("tokens.json");
    let token = add_token(&tokens, "admin", "admin");
    let server = Server::start(&served, &tokens, "127.0.0.1:0");
    let cfg = w.path("c.toml");
    let token_file = w.path("token");
    std::fs::write(&token_file, &token).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[remote.site]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            server.url,
            token_file.display()
        ),
    )
    .unwrap();
    race(&w, Some(&cfg), Some("site"), 8);
}

#[test]
fn gc_races_pushes_on_s3() {
    let Some(g) = garage() else { return };
    let w = World::new();
    w.init("64K");
    let cfg = w.path("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[remote.cloud]\nurl = \"s3://{}/{}\"\nendpoint = \"{}\"\nregion = \"{}\"\npath_style = true\naccess_key_id_env = \"GK\"\nsecret_access_key_env = \"GS\"\ntimeout_secs = 30\n",
            g.bucket,
            unique("gc"),
            g.endpoints[0],
            g.region
        ),
    )
    .unwrap();
    race(&w, Some(&cfg), Some("cloud"), 6);
}

/// `locks --remote` with a read-only token: listed against this host's
/// clock (it may not write a probe lock there).
#[test]
fn locks_are_listed_with_a_read_only_token() {
    let w = World::new();
    w.init("64K");
    let img = w.path("disk.raw");
    image_for(&img, 1);
    backup(&w, &w.repo(), "vm", &img);
    let served = w.path("served");
    std::fs::create_dir_all(&served).unwrap();
    let tokens = w.path("tokens.json");
    let admin = add_token(&tokens, "admin", "admin");
    let read = add_token(&tokens, "ro", "read");
    let server = Server::start(&served, &tokens, "127.0.0.1:0");
    let cfg = w.path("c.toml");
    let (ta, tr) = (w.path("ta"), w.path("tr"));
    std::fs::write(&ta, &admin).unwrap();
    std::fs::write(&tr, &read).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[remote.a]\nurl = \"{u}\"\ntoken_file = \"{}\"\n[remote.r]\nurl = \"{u}\"\ntoken_file = \"{}\"\n",
            ta.display(),
            tr.display(),
            u = server.url
        ),
    )
    .unwrap();
    ok(&w, Some(&cfg), &w.repo(), &["push", "a", "--init"]);
    let out = ok(&w, Some(&cfg), &w.repo(), &["locks", "--remote", "r"]);
    assert!(out.contains("no locks"), "{out}");
    // A read-only token cannot collect.
    let out = run(
        &w,
        Some(&cfg),
        &w.repo(),
        &["gc", "--remote", "r", "--wait", "0"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&ok(
        &w,
        Some(&cfg),
        &w.repo(),
        &["--json", "gc", "--remote", "r", "--dry-run"],
    ))
    .unwrap();
    assert_eq!(v["chunks_deleted"], 0, "{v}");
}

/// gc killed with SIGKILL while it deletes: every backup still verifies
/// deep, its dead lock does not hold up the next backup, and the next gc
/// finishes the job.
#[test]
fn a_killed_gc_leaves_the_repository_whole() {
    let w = World::new();
    w.init("64K");
    let img = w.path("big.raw");
    // 8 backups of 32 MiB of fresh noise: 3,584 chunks of garbage once 7
    // are pruned.
    for i in 0..8u64 {
        write_at(&img, 0, &noise(32 << 20, 500 + i));
        backup(&w, &w.repo(), "vm", &img);
    }
    w.ok(&["prune", "--keep-last", "1"]);
    let before = common::objects_under(&w.repo().join("chunks"));
    let mut child = w
        .cmd()
        .arg("-r")
        .arg(w.repo())
        .args(["gc"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has deleted some chunks, not all.
    let t = std::time::Instant::now();
    loop {
        let n = common::objects_under(&w.repo().join("chunks"));
        if n < before || t.elapsed() > Duration::from_secs(60) {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mid = common::objects_under(&w.repo().join("chunks"));
    eprintln!("chunks: {before} before, {mid} after the kill");
    w.ok(&["verify", "--deep"]);
    w.restore_equals(&w.repo(), "vm/root@latest", &img);
    // The killed gc's lock (this host, pid gone) does not block a writer.
    let t = std::time::Instant::now();
    write_at(&img, 0, &noise(32 << 20, 999));
    backup(&w, &w.repo(), "vm", &img);
    assert!(t.elapsed() < Duration::from_secs(60));
    let v = w.json(&["gc"]);
    // What the two remaining backups reference, 512 chunks each.
    assert_eq!(before, 8 * 512);
    assert_eq!(common::objects_under(&w.repo().join("chunks")), 1024, "{v}");
    w.ok(&["verify", "--deep"]);
}
