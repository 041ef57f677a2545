//! Whole flows for the security and data-safety findings of the review
//! (issue "Harden the foundation"): each test reproduces one finding
//! against the real binary and fails on the code before its fix.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::remote::{add_token, Server};
use common::{noise, text, write_at, World, BIN};

fn one_backup(w: &World, note: Option<&str>) -> serde_json::Value {
    let img = w.path("v.raw");
    write_at(&img, 0, &noise(300_000, 1));
    write_at(&img, 300_000, &text(200_000));
    let vol = format!("root={}", img.display());
    let mut args = vec!["backup", "vm", "--volume", &vol, "--format", "raw"];
    if let Some(n) = note {
        args.extend(["--note", n]);
    }
    w.json(&args)
}

/// Runs `sh -c 'umask U; exec lifeboat ARGS'`, so the binary starts with
/// that umask whatever the test runner's is.
fn with_umask(w: &World, umask: &str, args: &[&str]) -> std::process::Output {
    // The world's command, run through sh with its environment.
    let c = w.cmd();
    let mut sh = Command::new("sh");
    sh.current_dir(w.dir.path());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args);
    sh.output().expect("run lifeboat under sh")
}

/// `with_umask`, asserting success; returns stdout.
fn umask_ok(w: &World, umask: &str, args: &[&str]) -> String {
    let out = with_umask(w, umask, args);
    assert!(
        out.status.success(),
        "lifeboat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Every directory 0700 and every file 0600 below `root`.
fn assert_private(root: &Path) {
    assert_eq!(mode(root), 0o700, "{}", root.display());
    for e in walk(root) {
        let m = mode(&e);
        let want = if e.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:o}", e.display());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn repositories_and_restores_are_private_whatever_the_umask() {
    let w = World::new();
    let repo = w.repo();
    umask_ok(
        &w,
        "022",
        &["init", repo.to_str().unwrap(), "--chunk-size", "64K"],
    );
    let img = w.path("v.raw");
    write_at(&img, 0, &noise(300_000, 1));
    let vol = format!("root={}", img.display());
    let r = repo.to_str().unwrap();
    umask_ok(
        &w,
        "022",
        &["-r", r, "backup", "vm", "--volume", &vol, "--format", "raw"],
    );
    assert_private(&repo);

    // A restored file is 0600 by default (raw and qcow2)...
    for name in ["r.raw", "r.qcow2"] {
        let t = w.path(name);
        let to = t.to_str().unwrap();
        umask_ok(&w, "022", &["-r", r, "restore", "vm/root", "--to", to]);
        assert_eq!(mode(&t), 0o600, "{name}");
    }
    // ...and with --force keeps the replaced file's mode.
    let kept = w.path("kept.raw");
    std::fs::write(&kept, b"old").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    umask_ok(
        &w,
        "022",
        &[
            "-r",
            r,
            "restore",
            "vm/root",
            "--to",
            kept.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(mode(&kept), 0o640);
    // A set restores into a private directory.
    let set = w.path("set");
    umask_ok(
        &w,
        "022",
        &[
            "-r",
            r,
            "restore",
            "vm@latest",
            "--to",
            set.to_str().unwrap(),
        ],
    );
    assert_private(&set);

    // A served repository created by a push, and the tokens file.
    let tokens = w.path("tokens.toml");
    let printed = umask_ok(
        &w,
        "022",
        &[
            "serve",
            "token",
            "add",
            "ci",
            "--role",
            "append",
            "--tokens",
            tokens.to_str().unwrap(),
        ],
    );
    assert_eq!(mode(&tokens), 0o600);
    let token = printed.trim().to_string();
    let srv_repo = w.path("srv");
    std::fs::create_dir(&srv_repo).unwrap();
    std::fs::set_permissions(&srv_repo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(&srv_repo, &tokens, "127.0.0.1:0");
    let out = w
        .cmd()
        .env("LIFEBOAT_TOKEN", &token)
        .args(["-r", r, "push", &server.url, "--init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_private(&srv_repo);
    // A repository a pull creates on a fresh machine.
    let pulled = w.path("pulled");
    umask_ok(
        &w,
        "022",
        &["-r", pulled.to_str().unwrap(), "pull", r, "--init"],
    );
    assert_private(&pulled);
}

#[test]
fn restore_refuses_devices_fifos_and_symlinks() {
    let w = World::new();
    w.init("64K");
    one_backup(&w, None);
    // `restore --force` onto `target` fails; returns what it said.
    let forced = |target: &Path| {
        w.fails(&[
            "restore",
            "vm/root",
            "--to",
            target.to_str().unwrap(),
            "--force",
        ])
        .1
    };
    // A character device (our own node, like /dev/null: a buggy build
    // must not be able to replace the machine's): refused even with
    // --force, and left alone.
    let dev = w.path("null-dev");
    let made = Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let e = forced(&dev);
        assert!(e.contains("not a regular file"), "{e}");
        assert!(std::fs::symlink_metadata(&dev)
            .unwrap()
            .file_type()
            .is_char_device_like());
    } else {
        eprintln!("skipped the device-node part: mknod needs root");
    }
    // A FIFO.
    let fifo = w.path("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let e = forced(&fifo);
    assert!(e.contains("not a regular file"), "{e}");
    // A dangling symlink: refused without and with --force; the link stays.
    let link = w.path("link.raw");
    std::os::unix::fs::symlink(w.path("nowhere/x.raw"), &link).unwrap();
    for force in [false, true] {
        let mut args = vec!["restore", "vm/root", "--to", link.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        let (_, e) = w.fails(&args);
        assert!(e.contains("symbolic link"), "{e}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // A symlink to a real file is refused too: nothing is written through it.
    let real = w.path("real.raw");
    std::fs::write(&real, b"precious").unwrap();
    let link2 = w.path("link2.raw");
    std::os::unix::fs::symlink(&real, &link2).unwrap();
    let e = forced(&link2);
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read(&real).unwrap(), b"precious");
}

trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevice for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

/// A manifest whose JSON is valid but laid out differently from lifeboat's
/// own (compact): pull must store exactly the bytes it fetched.
#[test]
fn pull_moves_manifests_byte_for_byte() {
    let src = World::new();
    src.init("64K");
    one_backup(&src, Some("original"));
    let files = common::manifest_files(&src.repo());
    let orig = &files[0];
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(orig).unwrap()).unwrap();
    let compact = serde_json::to_vec(&v).unwrap();
    let id = blake3::hash(&compact).to_hex().to_string();
    let name = orig.file_name().unwrap().to_str().unwrap();
    let time = name.split('-').next().unwrap();
    let other = orig.with_file_name(format!("{time}-{id}.json"));
    std::fs::write(&other, &compact).unwrap();
    std::fs::remove_file(orig).unwrap();

    let dst = World::new();
    let out = dst
        .cmd()
        .args(["-r", dst.repo().to_str().unwrap(), "pull"])
        .arg(src.repo())
        .arg("--init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = common::manifest_files(&dst.repo());
    assert_eq!(got.len(), 1);
    assert_eq!(
        std::fs::read(&got[0]).unwrap(),
        compact,
        "bytes changed in transit"
    );
    let verify = dst.json(&["verify"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0, "{verify}");
    let tl = dst.json(&["timeline", "vm"]);
    assert_eq!(tl.as_array().unwrap().len(), 1, "{tl}");
}

/// Repositories made by `restore --from` and `pull --init` on a fresh
/// machine take new backups.
#[test]
fn repositories_made_by_pull_and_restore_from_take_backups() {
    let src = World::new();
    src.init("64K");
    one_backup(&src, None);
    let fresh = World::new();
    let t = fresh.path("r.raw");
    fresh.ok(&[
        "restore",
        "vm/root@latest",
        "--from",
        src.repo().to_str().unwrap(),
        "--to",
        t.to_str().unwrap(),
    ]);
    // New content, so the backup must write new chunks (through tmp/).
    let fresh_backup = |w: &World| {
        let img = w.path("new.raw");
        write_at(&img, 0, &noise(300_000, 77));
        let vol = format!("root={}", img.display());
        let b = w.json(&["backup", "vm2", "--volume", &vol, "--format", "raw"]);
        assert!(b["volumes"][0]["stats"]["new_chunks"].as_u64().unwrap() > 0);
    };
    fresh_backup(&fresh);
    let other = World::new();
    other.ok(&["pull", src.repo().to_str().unwrap(), "--init"]);
    fresh_backup(&other);
    // A directory holding other things never becomes a repository.
    let busy = World::new();
    std::fs::create_dir(busy.repo()).unwrap();
    std::fs::write(busy.repo().join("notes.txt"), b"mine").unwrap();
    let (_, e) = busy.fails(&["pull", src.repo().to_str().unwrap(), "--init"]);
    assert!(e.contains("not empty"), "{e}");
    assert!(!busy.repo().join("chunks").exists());
}

/// `restore --dry-run --from` changes nothing locally.
#[test]
fn a_dry_run_from_a_remote_writes_nothing() {
    let src = World::new();
    src.init("64K");
    one_backup(&src, None);
    let fresh = World::new();
    let t = fresh.path("r.raw");
    let plan = fresh.json(&[
        "restore",
        "vm/root@latest",
        "--from",
        src.repo().to_str().unwrap(),
        "--to",
        t.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(plan["plan"]["fetch"]["creates_repository"], true, "{plan}");
    assert!(plan["plan"]["fetch"]["chunks_to_send"].as_u64().unwrap() > 0);
    assert!(
        !fresh.repo().exists(),
        "a dry run created the local repository"
    );
    assert!(!t.exists());
    // Push has a dry run too.
    let dst = World::new();
    let p = src.json(&["push", dst.repo().to_str().unwrap(), "--init", "--dry-run"]);
    assert_eq!(p["plan"]["manifests_to_send"], 1, "{p}");
    assert!(!dst.repo().exists());
}

/// A second key for an existing manifest, dated 2999: refused by the
/// server, skipped in listings, and `@latest` stays the real newest.
#[test]
fn forged_manifest_dates_are_refused() {
    let w = World::new();
    w.init("64K");
    one_backup(&w, None);
    let files = common::manifest_files(&w.repo());
    let real = files[0].clone();
    let name = real.file_name().unwrap().to_str().unwrap().to_string();
    let hex = name.split_once('-').unwrap().1.to_string();
    let forged = real.with_file_name(format!("29990101T000000.000Z-{hex}"));
    std::fs::copy(&real, &forged).unwrap();
    let tl = w.json(&["timeline", "vm"]);
    assert_eq!(
        tl.as_array().unwrap().len(),
        1,
        "the forged key is listed: {tl}"
    );
    let show = w.json(&["show", "vm/root@latest"]);
    assert!(
        show["key"].as_str().unwrap().contains(&name[..15]),
        "{show}"
    );
    let verify = w.json(&["verify"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0);
    // The same key time as created_at but far in the future is refused by
    // the server on upload (an append token cannot plant it).
    let tokens = w.path("tokens.toml");
    let token = add_token(&tokens, "ci", "append");
    let srv = w.path("srv");
    std::fs::create_dir(&srv).unwrap();
    let server = Server::start(&srv, &tokens, "127.0.0.1:0");
    std::fs::remove_file(&forged).unwrap();
    let out = w
        .cmd()
        .env("LIFEBOAT_TOKEN", &token)
        .args([
            "-r",
            w.repo().to_str().unwrap(),
            "push",
            &server.url,
            "--init",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let body = std::fs::read(&real).unwrap();
    let url = format!(
        "{}/v1/objects/manifests/vm/root/29990101T000000.000Z-{hex}",
        server.url.trim_end_matches('/')
    );
    let (status, text) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let resp = common::http()
            .put(url)
            .bearer_auth(&token)
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(status, 422, "{text}");
}

/// Control bytes in a note never reach the terminal raw.
#[test]
fn control_bytes_from_the_repository_are_escaped() {
    let w = World::new();
    w.init("64K");
    one_backup(&w, Some("evil\x1b]0;owned\x07\x1b[2J\u{202e}note"));
    for args in [vec!["timeline", "vm"], vec!["show", "vm/root"]] {
        let out = w.ok(&args);
        assert!(
            !out.contains('\x1b') && !out.contains('\x07'),
            "raw control bytes: {out:?}"
        );
        assert!(!out.contains('\u{202e}'), "raw bidi override: {out:?}");
        assert!(out.contains("evil\\x1b]0;owned\\x07"), "{out}");
    }
    // JSON output keeps the note exact (JSON escapes it itself).
    let v = w.json(&["show", "vm/root"]);
    assert_eq!(
        v["manifest"]["labels"]["note"],
        "evil\x1b]0;owned\x07\x1b[2J\u{202e}note"
    );
}

/// One unreadable manifest (a directory in its place) does not hide the
/// others; it is reported.
#[test]
fn one_unreadable_manifest_does_not_hide_the_rest() {
    let w = World::new();
    w.init("64K");
    one_backup(&w, None);
    one_backup(&w, Some("second"));
    let files = common::manifest_files(&w.repo());
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::create_dir(&files[0]).unwrap();
    let out = w.lb(&["timeline", "vm"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        2,
        "header and the readable backup: {stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipping"));
    w.ok(&["ls"]);
    let t = w.path("r.raw");
    w.ok(&["restore", "vm/root@latest", "--to", t.to_str().unwrap()]);
}

/// A 40 GiB sparse file among the chunks: verify reports it, never tries
/// to read it into memory.
#[test]
fn an_absurd_chunk_file_is_reported_not_read() {
    let w = World::new();
    w.init("64K");
    one_backup(&w, None);
    let chunks = common::files_under(&w.repo().join("chunks"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&chunks[0])
        .unwrap();
    f.set_len(40 << 30).unwrap();
    let out = w.lb(&["--json", "verify", "--deep"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["problems"][0];
    assert!(p["problem"].as_str().unwrap().contains("over"), "{v}");
}

/// zstd's fast levels are negative numbers; the CLI must take them.
#[test]
fn fast_compression_levels_are_accepted() {
    let w = World::new();
    w.ok(&["init", "--compression-level", "-3"]);
    let cfg = std::fs::read_to_string(w.repo().join("lifeboat.json")).unwrap();
    assert!(cfg.contains("\"level\": -3"), "{cfg}");
    let (_, e) = w.fails(&[
        "init",
        "--compression-level",
        "-9",
        w.path("x").to_str().unwrap(),
    ]);
    assert!(e.contains("not allowed"), "{e}");
}
