//! Bad input and faults: each gets a clear error naming the problem, never
//! a panic, and nothing is left half-written.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn one_backup(w: &World) -> (std::path::PathBuf, serde_json::Value) {
    let img = w.path("v.raw");
    write_at(&img, 0, &noise(600_000, 1));
    write_at(&img, 600_000, &text(400_000));
    let b = w.json(&[
        "backup",
        "vm",
        "--volume",
        &format!("root={}", img.display()),
        "--format",
        "raw",
    ]);
    (img, b)
}

#[test]
fn missing_and_uninitialised_repository() {
    let w = World::new();
    let (code, e) = w.fails(&["ls"]);
    assert_eq!(code, 1);
    assert!(
        e.contains("no repository at") && e.contains("lifeboat init"),
        "{e}"
    );
    std::fs::create_dir(w.repo()).unwrap();
    std::fs::write(w.repo().join("junk"), b"x").unwrap();
    let (_, e) = w.fails(&["ls"]);
    assert!(e.contains("not a lifeboat repository"), "{e}");
    let (_, e) = w.fails(&["init"]);
    assert!(e.contains("not empty"), "{e}");
    let w2 = World::new();
    w2.init("64K");
    let (_, e) = w2.fails(&["init"]);
    assert!(e.contains("already exists"), "{e}");
    let (_, e) = World::new().fails(&["init", "--chunk-size", "3M"]);
    assert!(e.contains("power of two"), "{e}");
    std::fs::write(w2.repo().join("lifeboat.json"), b"{\"format\": 9}").unwrap();
    let (_, e) = w2.fails(&["ls"]);
    assert!(e.contains("lifeboat.json") && e.contains("invalid"), "{e}");
}

#[test]
fn bad_names_are_rejected_before_touching_disk() {
    let w = World::new();
    w.init("64K");
    let img = w.path("v.raw");
    write_at(&img, 0, &noise(1000, 1));
    for (vm, vol) in [
        ("a/b", "root"),
        ("..", "root"),
        ("vm", "../etc"),
        ("vm", "a b"),
        ("", "root"),
    ] {
        let (code, e) = w.fails(&[
            "backup",
            vm,
            "--volume",
            &format!("{vol}={}", img.display()),
        ]);
        assert_eq!(code, 1);
        assert!(e.contains("A-Z a-z 0-9"), "{vm}/{vol}: {e}");
    }
    assert!(manifest_files(&w.repo()).is_empty());
    let (_, e) = w.fails(&["timeline", "../x"]);
    assert!(e.contains("invalid VM name"), "{e}");
    let (_, e) = w.fails(&["show", "../../etc/passwd@latest"]);
    assert!(e.contains("invalid"), "{e}");
}

#[test]
fn bad_sources() {
    let w = World::new();
    w.init("64K");
    let (_, e) = w.fails(&["backup", "vm", "--volume", "root=/nonexistent/disk.raw"]);
    assert!(
        e.contains("/nonexistent/disk.raw") && e.contains("does not exist"),
        "{e}"
    );
    let (_, e) = w.fails(&[
        "backup",
        "vm",
        "--volume",
        &format!("root={}", w.dir.path().display()),
    ]);
    assert!(e.contains("is a directory"), "{e}");
    let raw = w.path("plain.raw");
    write_at(&raw, 0, &noise(70_000, 1));
    let (_, e) = w.fails(&[
        "backup",
        "vm",
        "--volume",
        &format!("root={}", raw.display()),
        "--format",
        "qcow2",
    ]);
    assert!(e.contains("plain.raw") && e.contains("qcow2"), "{e}");
    let q = w.path("real.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"]);
    let (_, e) = w.fails(&[
        "backup",
        "vm",
        "--volume",
        &format!("root={}", q.display()),
        "--format",
        "raw",
    ]);
    assert!(
        e.contains("is a qcow2 image, but the format given is raw"),
        "{e}"
    );
    // A truncated qcow2 (header only) is refused by qemu with its reason.
    let t = w.path("trunc.qcow2");
    std::fs::write(&t, &std::fs::read(&q).unwrap()[..100]).unwrap();
    let (_, e) = w.fails(&[
        "backup",
        "vm",
        "--volume",
        &format!("root={}", t.display()),
        "--format",
        "qcow2",
    ]);
    assert!(e.contains("trunc.qcow2"), "{e}");
    // A VM that is not in the inventory, with no --volume.
    let (_, e) = w.fails(&["backup", "ghost"]);
    assert!(
        e.contains("not in") && e.contains("--volume NAME=PATH"),
        "{e}"
    );
    assert!(manifest_files(&w.repo()).is_empty());
}

#[test]
fn bad_config_names_file_and_line() {
    let w = World::new();
    let cfg = w.path("bad.toml");
    std::fs::write(&cfg, "repository = \"r\"\n[[vm]]\nname = \"ok\"\n[[vm.volume]]\nname = \"x\"\npath = \"/x\"\nformat = \"vmdk\"\n").unwrap();
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("ls")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(e.contains("bad.toml") && e.contains("line 7"), "{e}");
    // A named config that does not exist yet is not an error: commands
    // that do not need it ignore it, and `remote add` creates it.
    let none = w.path("none.toml");
    let out = w
        .cmd()
        .arg("--config")
        .arg(&none)
        .args(["init", w.path("fresh").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w
        .cmd()
        .env("LIFEBOAT_CONFIG", &none)
        .args(["remote", "add", "off", "/srv/offsite"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&none)
        .unwrap()
        .contains("/srv/offsite"));
}

#[test]
fn corrupt_and_truncated_chunks_are_named_by_verify_and_restore() {
    let w = World::new();
    w.init("64K");
    let (_img, b) = one_backup(&w);
    let index_id = b["volumes"][0]["index"].as_str().unwrap().to_string();
    let chunks = files_under(&w.repo().join("chunks"));
    assert!(chunks.len() >= 4);
    // Flip a byte in one chunk, truncate another.
    let mut data = std::fs::read(&chunks[0]).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x40;
    std::fs::write(&chunks[0], &data).unwrap();
    let data = std::fs::read(&chunks[1]).unwrap();
    std::fs::write(&chunks[1], &data[..data.len() / 2]).unwrap();
    let name0 = chunks[0].file_name().unwrap().to_str().unwrap().to_string();
    let name1 = chunks[1].file_name().unwrap().to_str().unwrap().to_string();

    // Quick verify sees the objects present; deep verify names both.
    assert_eq!(w.lb(&["verify"]).status.code(), Some(0));
    let out = w.lb(&["verify", "--deep"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&name0) && text.contains(&name1) && text.contains("breaks vm/root@"),
        "{text}"
    );

    // Restore fails naming a bad chunk and leaves no file, not even a temp.
    let target = w.path("out");
    std::fs::create_dir(&target).unwrap();
    let (_, e) = w.fails(&[
        "restore",
        "vm/root",
        "--to",
        target.join("disk.raw").to_str().unwrap(),
    ]);
    assert!(e.contains(&name0) || e.contains(&name1), "{e}");
    assert!(
        files_under(&target).is_empty(),
        "restore left files: {:?}",
        files_under(&target)
    );

    // A missing chunk: quick verify catches it.
    std::fs::remove_file(&chunks[2]).unwrap();
    let out = w.lb(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"));

    // A corrupt index.
    let idx = w
        .repo()
        .join("indexes")
        .join(&index_id[..2])
        .join(&index_id);
    let mut d = std::fs::read(&idx).unwrap();
    d[30] ^= 1;
    std::fs::write(&idx, &d).unwrap();
    let out = w.lb(&["verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("BAD index {index_id}")));
    let (_, e) = w.fails(&[
        "restore",
        "vm/root",
        "--to",
        target.join("disk.raw").to_str().unwrap(),
    ]);
    assert!(e.contains(&index_id) && e.contains("corrupt"), "{e}");
    assert!(files_under(&target).is_empty());
}

#[test]
fn corrupt_manifest_is_reported_and_others_stay_usable() {
    let w = World::new();
    w.init("64K");
    let (img, _) = one_backup(&w);
    w.ok(&[
        "backup",
        "vm2",
        "--volume",
        &format!("root={}", img.display()),
        "--format",
        "raw",
    ]);
    let m = files_under(&w.repo().join("manifests").join("vm"))[0].clone();
    let mut d = std::fs::read(&m).unwrap();
    d[20] ^= 1;
    std::fs::write(&m, &d).unwrap();
    let out = w.lb(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BAD manifest") && text.contains("corrupt"),
        "{text}"
    );
    // vm2 still lists and restores.
    let ls = w.ok(&["ls"]);
    assert!(ls.contains("vm2"), "{ls}");
    w.ok(&[
        "restore",
        "vm2/root",
        "--to",
        w.path("r.raw").to_str().unwrap(),
    ]);
}

#[test]
fn restore_refuses_existing_target_and_missing_directory() {
    let w = World::new();
    w.init("64K");
    one_backup(&w);
    let t = w.path("exists.raw");
    std::fs::write(&t, b"precious").unwrap();
    let (_, e) = w.fails(&["restore", "vm/root", "--to", t.to_str().unwrap()]);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&t).unwrap(), b"precious");
    let plan = w.json(&[
        "restore",
        "vm/root",
        "--to",
        t.to_str().unwrap(),
        "--force",
        "--dry-run",
    ]);
    assert_eq!(plan["plan"]["volumes"][0]["overwrites"], true);
    assert_eq!(std::fs::read(&t).unwrap(), b"precious", "dry run wrote");
    w.ok(&["restore", "vm/root", "--to", t.to_str().unwrap(), "--force"]);
    assert_ne!(std::fs::read(&t).unwrap(), b"precious");
    let (_, e) = w.fails(&[
        "restore",
        "vm/root",
        "--to",
        w.path("no/such/dir/x.raw").to_str().unwrap(),
    ]);
    assert!(e.contains("does not exist"), "{e}");
}

/// Ctrl-C mid-backup: exit 130, no manifest, no temp files; the re-run
/// resumes and stores only what is missing.
#[test]
fn interrupted_backup_commits_nothing_and_resumes() {
    let w = World::new();
    w.init("64K");
    let img = w.path("big.raw");
    write_at(&img, 0, &noise(384 << 20, 5));
    let spec = format!("root={}", img.display());
    let mut child = w
        .cmd()
        .arg("-r")
        .arg(w.repo())
        .args(["backup", "vm", "--format", "raw", "--volume", &spec])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until chunks are being written, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_under(&w.repo().join("tmp")).is_empty()
        && files_under(&w.repo().join("chunks")).is_empty()
    {
        assert!(Instant::now() < deadline, "backup never started writing");
        if child.try_wait().unwrap().is_some() {
            panic!("backup finished before it could be interrupted; make the image bigger");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(
        manifest_files(&w.repo()).is_empty(),
        "a manifest was written"
    );
    assert!(
        files_under(&w.repo().join("tmp")).is_empty(),
        "temp files left"
    );
    let before = files_under(&w.repo().join("chunks")).len();
    assert!(
        before < 6144,
        "the whole image was stored before the interrupt"
    );
    assert_eq!(w.lb(&["verify", "--deep"]).status.code(), Some(0));
    let b = w.json(&["backup", "vm", "--format", "raw", "--volume", &spec]);
    assert_eq!(b["volumes"][0]["stats"]["new_chunks"], 6144 - before as u64);
    assert_eq!(w.lb(&["verify", "--deep"]).status.code(), Some(0));
}

/// A small tmpfs under the test's directory, unmounted when dropped; None
/// (the test says it was skipped) where mounting needs root.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(w: &World, size: &str, test: &str) -> Option<SmallDisk> {
        let mnt = w.path("small");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "lifeboat-test",
            ])
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !mounted {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs (not root)");
            return None;
        }
        Some(SmallDisk(mnt))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk during backup: a clear error, no manifest, a consistent
/// repository. Needs root to mount a small tmpfs (CI runs as root).
#[test]
fn full_disk_during_backup() {
    let w = World::new();
    let Some(small) = SmallDisk::mount(&w, "24m", "full_disk_during_backup") else {
        return;
    };
    let mnt = small.0.clone();
    let repo = mnt.join("repo");
    let run = |args: &[&str]| w.cmd().arg("-r").arg(&repo).args(args).output().unwrap();
    assert!(run(&["init", "--chunk-size", "64K"]).status.success());
    let img = w.path("big.raw");
    write_at(&img, 0, &noise(48 << 20, 8));
    let out = run(&[
        "backup",
        "vm",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("is full") && e.contains("nothing was committed"),
        "{e}"
    );
    assert!(!e.contains("panicked"));
    assert!(manifest_files(&repo).is_empty());
    assert!(
        files_under(&repo.join("tmp")).is_empty(),
        "temp files left on the full disk"
    );
    assert!(run(&["verify", "--deep"]).status.success());
}

/// A set restore that cannot fit is refused before anything is written,
/// as a whole (each volume alone would fit). Needs root for the tmpfs.
#[test]
fn a_set_restore_that_does_not_fit_is_refused_up_front() {
    let w = World::new();
    w.init("64K");
    let (a, b) = (w.path("a.raw"), w.path("b.raw"));
    write_at(&a, 0, &noise(12 << 20, 1));
    write_at(&b, 0, &noise(12 << 20, 2));
    w.ok(&[
        "backup",
        "vm",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", a.display()),
        "--volume",
        &format!("data={}", b.display()),
    ]);
    let Some(small) = SmallDisk::mount(&w, "20m", "a_set_restore_that_does_not_fit") else {
        return;
    };
    let mnt = small.0.clone();
    for to in [mnt.join("new-dir"), mnt.clone()] {
        let (code, e) = w.fails(&["restore", "vm@latest", "--to", to.to_str().unwrap()]);
        assert_eq!(code, 1, "{e}");
        assert!(e.contains("not enough space"), "{e}");
        assert!(files_under(&mnt).is_empty(), "something was written: {e}");
    }
}

/// A disk a running QEMU holds is refused, not read torn; once QEMU is
/// gone the same backup runs. (raw and qcow2; QEMU locks both.)
#[test]
fn a_disk_held_by_a_running_qemu_is_refused() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED a_disk_held_by_a_running_qemu: qemu-system-x86_64 is not installed");
        return;
    }
    let w = World::new();
    w.init("64K");
    let raw = w.path("live.raw");
    write_at(&raw, 0, &noise(1 << 20, 3));
    let qcow = w.path("live.qcow2");
    common::qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "4M"]);
    for (img, fmt) in [(&raw, "raw"), (&qcow, "qcow2")] {
        // Paused at start (-S): it holds its disk like any running VM.
        let mut vm = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-S",
                "-display",
                "none",
                "-nodefaults",
                "-drive",
            ])
            .arg(format!("file={},format={fmt},if=virtio", img.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let args = [
            "backup",
            "live",
            "--format",
            fmt,
            "--volume",
            &format!("root={}", img.display()),
        ];
        // QEMU takes its locks as it opens the disk: wait for them
        // (/proc/locks lists them by device and inode).
        // Device and inode: an inode number alone can be another file's on
        // another file system (other tests' QEMUs lock files too).
        let meta = std::fs::metadata(img).unwrap();
        let dev = std::os::unix::fs::MetadataExt::dev(&meta);
        let ino = std::os::unix::fs::MetadataExt::ino(&meta);
        let key = format!(" {:02x}:{:02x}:{ino} ", libc::major(dev), libc::minor(dev));
        let t = std::time::Instant::now();
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains(&key))
        {
            assert!(t.elapsed().as_secs() < 20, "QEMU never locked {fmt}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = w.lb(&args);
        let (code, e) = (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        let _ = vm.kill();
        let _ = vm.wait();
        assert_eq!(code, Some(1), "{fmt}: {e}");
        assert!(
            e.contains("in use by a running QEMU") && e.contains("shut the VM down"),
            "{e}"
        );
        w.ok(&args);
    }
}
