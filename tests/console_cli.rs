//! The CLI side of the console issue: `status` exit codes and time
//! bounds, JSON log lines on stderr with `--json`, restore errors that name
//! the real cause once, the different-volumes warning of `diff`, and the
//! generated completions and man page.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{noise, write_at, World};

fn two_volume_backup(w: &World) {
    let (root, data) = (w.path("root.raw"), w.path("data.raw"));
    write_at(&root, 0, &noise(400_000, 1));
    write_at(&data, 0, &noise(300_000, 2));
    w.ok(&[
        "backup",
        "db01",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", root.display()),
        "--volume",
        &format!("data={}", data.display()),
    ]);
}

/// Every non-empty stderr line is a JSON object.
fn assert_json_lines(stderr: &[u8]) {
    for line in String::from_utf8_lossy(stderr).lines() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line:?}"));
        assert!(v.is_object(), "{line}");
        assert!(!line.contains('\x1b'), "colour in a JSON line: {line:?}");
    }
}

#[test]
fn status_fails_for_unknown_and_silent_remotes_within_its_timeout() {
    let w = World::new();
    w.init("64K");
    two_volume_backup(&w);
    // A remote that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let cfg = w.path("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "repository = \"{}\"\n[remote.silent]\nurl = \"http://{addr}/\"\n",
            w.repo().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = w
            .cmd()
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let (out, took) = run(&["status", "--timeout", "2", "silent"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("silent: UNREACHABLE") && text.contains("no answer within 2 s"),
        "{text}"
    );
    // Bounded by the timeout, not by the HTTP client's own minute.
    assert!(took < Duration::from_secs(30), "status took {took:?}");

    let (out, _) = run(&["--json", "status", "--timeout", "2", "nosuch"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["remote"], "nosuch");
    assert!(v[0]["error"].as_str().unwrap().contains("nosuch"), "{v}");
    assert_json_lines(&out.stderr);
}

#[test]
fn json_mode_logs_json_lines_and_diff_warns_about_different_volumes() {
    let w = World::new();
    w.init("64K");
    two_volume_backup(&w);
    let out = w.lb(&["diff", "db01/root", "db01/data"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different volumes"), "{err}");
    assert!(!err.contains('\x1b'), "colour on a non-terminal: {err:?}");
    let out = w.lb(&["--json", "diff", "db01/root", "db01/data"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["different_volumes"], true);
    assert!(String::from_utf8_lossy(&out.stderr).contains("different volumes"));
    assert_json_lines(&out.stderr);
    let v = w.json(&["diff", "db01/root@latest", "db01/root"]);
    assert_eq!(v["different_volumes"], false);
}

#[test]
fn restore_to_an_unwritable_place_names_the_cause_once() {
    let w = World::new();
    w.init("64K");
    two_volume_backup(&w);
    for dry in [true, false] {
        let mut args = vec!["restore", "db01/root", "--to", "/proc/lifeboat-restore.raw"];
        if dry {
            args.push("--dry-run");
        }
        let (code, text) = w.fails(&args);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("files cannot be created in /proc"), "{text}");
        assert!(!text.contains("not enough space"), "wrong cause: {text}");
        assert!(!text.contains("88080384"), "raw byte count: {text}");
        assert!(
            !text.contains(".tmp"),
            "an internal temp file is named: {text}"
        );
        assert!(
            text.matches("os error").count() <= 1,
            "cause repeated: {text}"
        );
    }
    // A set into a new directory under an unwritable parent: refused at
    // plan time too.
    let (_, text) = w.fails(&[
        "restore",
        "db01@latest",
        "--to",
        "/proc/lifeboat-set",
        "--dry-run",
    ]);
    assert!(text.contains("files cannot be created in /proc"), "{text}");
}

#[test]
fn completions_and_man_page_come_from_the_argument_definitions() {
    let w = World::new();
    let out = |args: &[&str]| {
        let o = w.cmd().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let bash = out(&["completions", "bash"]);
    assert!(
        bash.contains("_lifeboat") && bash.contains("restore"),
        "{bash}"
    );
    assert!(out(&["completions", "zsh"]).contains("#compdef lifeboat"));
    assert!(out(&["completions", "fish"]).contains("complete -c lifeboat"));
    let man = out(&["man"]);
    assert!(
        man.contains(".TH lifeboat 1") && man.contains("restore"),
        "{man}"
    );
    // A pipe closed early is not an error.
    let mut child = w
        .cmd()
        .arg("man")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    assert!(child.wait().unwrap().code().is_some());
}

/// A VM restore's define or attach step is part of its plan: a dry run
/// shows it, the JSON plan carries it, and options that do not apply are
/// refused before anything is read.
#[test]
fn a_restore_plan_shows_what_happens_to_the_vm() {
    let w = World::new();
    w.init("64K");
    two_volume_backup(&w);
    let dir = w.dir.path().join("restored");
    let to = dir.to_string_lossy().to_string();
    let out = w.lb(&[
        "restore",
        "db01@latest",
        "--to",
        &to,
        "--define",
        "--name",
        "db01-dr",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("would write the domain XML") && text.contains("db01-dr.xml"),
        "{text}"
    );
    assert!(
        text.contains("then define it with virsh as db01-dr"),
        "{text}"
    );
    assert!(!dir.exists(), "a dry run created {}", dir.display());
    let v = w.json(&[
        "restore",
        "db01/root@latest",
        "--to",
        &format!("{to}.raw"),
        "--attach",
        "web-dr",
        "--dry-run",
    ]);
    assert_eq!(v["vm_step"]["step"], "attach");
    assert_eq!(v["vm_step"]["domain"], "web-dr");
    let (code, text) = w.fails(&[
        "restore",
        "db01/root@latest",
        "--to",
        &format!("{to}.raw"),
        "--define",
        "--dry-run",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("apply to a whole VM"), "{text}");
}
