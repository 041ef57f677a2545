//! `lifeboat files`: partitions and ext4 filesystems of a backed-up disk
//! listed, searched and extracted straight from the chunks — MBR with
//! logical partitions, GPT, a whole-disk filesystem — from the local
//! repository and from a served remote, with hostile names escaped,
//! damaged chunks refused and nothing half-made left behind.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{noise, write_at, World};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tree with what a real root filesystem has: nested directories, a
/// setuid binary, a private file owned by someone else, symlinks, a
/// sparse file, an empty directory, old times, and a name built to
/// attack a terminal.
fn tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    for d in ["etc/nginx/conf.d", "usr/bin", "var/empty", "data"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::write(t.join("etc/nginx/nginx.conf"), "events {}\nhttp {}\n").unwrap();
    std::fs::write(t.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(t.join("usr/bin/tool"), noise(50_000, 1)).unwrap();
    std::fs::set_permissions(t.join("usr/bin/tool"), PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::write(t.join("etc/shadow"), "root:*:1:0:99999:7:::\n").unwrap();
    std::fs::set_permissions(t.join("etc/shadow"), PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(t.join("data/one.bin"), noise(MIB as usize, 2)).unwrap();
    std::os::unix::fs::symlink("../etc/nginx/nginx.conf", t.join("data/conf-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", t.join("data/dangling")).unwrap();
    write_at(&t.join("data/sparse.img"), 20 * MIB, b"tail");
    std::fs::write(t.join("data/evil\x1b]0;pwned\x07\x1b[2J"), "x").unwrap();
    if root() {
        std::os::unix::fs::chown(t.join("etc/shadow"), Some(0), Some(42)).unwrap();
        std::os::unix::fs::chown(t.join("data/one.bin"), Some(1234), Some(2345)).unwrap();
    }
    run(Command::new("touch")
        .args(["-h", "-d", "2001-09-09 01:46:40 UTC"])
        .arg(t.join("etc/nginx/nginx.conf")));
    run(Command::new("touch")
        .args(["-h", "-d", "2010-01-01 00:00:00 UTC"])
        .arg(t.join("data/conf-link")));
    run(Command::new("touch")
        .args(["-d", "2005-05-05 05:05:05 UTC"])
        .arg(t.join("etc/nginx")));
    t
}

/// An ext4 filesystem made from `tree` at `sector` of `disk`, `sectors` long.
fn mkfs_at(disk: &Path, sector: u64, sectors: u64, label: &str, tree: &Path) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label])
        .arg("-E")
        .arg(format!("offset={}", sector * 512))
        .arg("-d")
        .arg(tree)
        .arg(disk)
        .arg(format!("{}k", sectors / 2)));
}

fn sfdisk(disk: &Path, script: &str) {
    use std::io::Write;
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The extracted tree matches the source: kinds, bytes, modes, times
/// (and owners when we are root); symlinks as symlinks.
fn assert_same_tree(src: &Path, got: &Path) {
    let (a, b) = (
        std::fs::symlink_metadata(src).unwrap(),
        std::fs::symlink_metadata(got).unwrap_or_else(|e| panic!("{}: {e}", got.display())),
    );
    let what = got.display();
    assert_eq!(a.file_type(), b.file_type(), "{what}: kind");
    assert_eq!(a.mtime(), b.mtime(), "{what}: mtime");
    if root() {
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{what}: owner");
    }
    if a.file_type().is_symlink() {
        assert_eq!(
            std::fs::read_link(src).unwrap(),
            std::fs::read_link(got).unwrap()
        );
        return;
    }
    assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{what}: mode");
    if a.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(src)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut theirs: Vec<_> = std::fs::read_dir(got)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        theirs.sort();
        assert_eq!(names, theirs, "{what}: entries");
        for n in names {
            assert_same_tree(&src.join(&n), &got.join(&n));
        }
    } else {
        assert_eq!(
            std::fs::read(src).unwrap(),
            std::fs::read(got).unwrap(),
            "{what}: bytes"
        );
    }
}

/// `files REF --get PATH --to DIR`, which must succeed.
fn get(w: &World, reference: &str, path: &str, to: &Path) -> String {
    w.ok(&[
        "files",
        reference,
        "--get",
        path,
        "--to",
        to.to_str().unwrap(),
    ])
}

/// The result after a job's event lines.
fn last_json(stdout: &str) -> Value {
    let at = stdout
        .find("{\n")
        .unwrap_or_else(|| panic!("no result in {stdout}"));
    serde_json::from_str(&stdout[at..]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn entries(v: &Value) -> &Vec<Value> {
    v["entries"].as_array().expect("entries")
}

#[test]
fn files_are_listed_searched_and_extracted_without_restoring_the_disk() {
    let w = World::new();
    w.init("1M");
    let t = tree(w.dir.path());

    // MBR: p1 ext4, an extended partition holding p5 ext4 and p6 swap.
    let mbr = w.path("mbr.raw");
    std::fs::File::create(&mbr)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    sfdisk(
        &mbr,
        "start=2048, size=40960, type=83\nstart=43008, size=86016, type=5\nstart=45056, size=40960, type=83\nstart=88064, size=20480, type=82\n",
    );
    mkfs_at(&mbr, 2048, 40960, "first", &t);
    mkfs_at(&mbr, 45056, 40960, "logical", &t);
    let swap = w.path("swap.img");
    std::fs::File::create(&swap)
        .unwrap()
        .set_len(10 * MIB)
        .unwrap();
    run(Command::new("mkswap").arg("-q").arg(&swap));
    write_at(&mbr, 88064 * 512, &std::fs::read(&swap).unwrap());
    w.backup_file("mbrvm", &mbr);

    let v = w.json(&["files", "mbrvm/root@latest"]);
    assert_eq!(v["partition_table"], "mbr", "{v}");
    let fs: Vec<(String, String, String)> = v["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().into(),
                f["filesystem"].as_str().unwrap().into(),
                f["label"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        fs,
        [
            ("p1".into(), "ext2/3/4".into(), "first".into()),
            ("p5".into(), "ext2/3/4".into(), "logical".into()),
            ("p6".into(), "swap".into(), String::new())
        ],
        "{v}"
    );

    // A directory, as a person reads it: names escaped, links shown.
    let out = w.ok(&["files", "mbrvm/root@latest", "p5/data"]);
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    assert!(
        out.contains("conf-link -> ../etc/nginx/nginx.conf"),
        "{out}"
    );
    assert!(out.contains("one.bin"), "{out}");
    assert!(out.contains("read ") && out.contains("chunks"), "{out}");

    // One file's metadata.
    let v = w.json(&["files", "mbrvm/root@latest", "p1/etc/nginx/nginx.conf"]);
    let e = &entries(&v)[0];
    assert_eq!(e["kind"], "file", "{v}");
    assert_eq!(e["size"], 18, "{v}");
    assert_eq!(e["modified"], "2001-09-09T01:46:40Z", "{v}");
    if root() {
        let v = w.json(&["files", "mbrvm/root@latest", "p1/data/one.bin"]);
        assert_eq!(
            (
                entries(&v)[0]["uid"].as_u64(),
                entries(&v)[0]["gid"].as_u64()
            ),
            (Some(1234), Some(2345))
        );
    }

    // Search, in every filesystem.
    let v = w.json(&["files", "mbrvm/root@latest", "--find", "NGINX.CONF"]);
    let found: Vec<&str> = entries(&v)
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        found,
        ["p1/etc/nginx/nginx.conf", "p5/etc/nginx/nginx.conf"],
        "{v}"
    );

    // Extract a directory tree and a single file.
    let to = w.path("out");
    let v = last_json(&w.ok(&[
        "--json",
        "files",
        "mbrvm/root@latest",
        "--get",
        "p5/etc",
        "--to",
        to.to_str().unwrap(),
    ]));
    assert_eq!(
        (v["files"].as_u64(), v["dirs"].as_u64()),
        (Some(3), Some(3)),
        "{v}"
    );
    assert_same_tree(&t.join("etc"), &to.join("etc"));
    assert_eq!(
        std::fs::metadata(&to).unwrap().mode() & 0o777,
        0o700,
        "a new --to is private"
    );
    get(&w, "mbrvm/root@latest", "p1/data", &to);
    assert_same_tree(&t.join("data"), &to.join("data"));
    let sparse = std::fs::metadata(to.join("data/sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < MIB,
        "holes stay holes: {} blocks",
        sparse.blocks()
    );
    let tool = w.path("tool-out");
    get(&w, "mbrvm/root@latest", "p1/usr/bin/tool", &tool);
    assert_same_tree(&t.join("usr/bin/tool"), &tool.join("tool"));

    // The whole filesystem (its root comes out under the filesystem's name).
    let all = w.path("all");
    get(&w, "mbrvm/root@latest", "p1/", &all);
    assert_same_tree(&t.join("etc"), &all.join("p1/etc"));

    // Bad asks: clear errors, nothing written.
    let before = common::files_under(&to);
    let (code, err) = w.fails(&[
        "files",
        "mbrvm/root@latest",
        "--get",
        "p5/etc",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(code != 0 && err.contains("exists"), "{err}");
    let (_, err) = w.fails(&[
        "files",
        "mbrvm/root@latest",
        "--get",
        "p1/etc/nope",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(
        err.contains("p1/etc/nope") && err.contains("no such file"),
        "{err}"
    );
    let (_, err) = w.fails(&["files", "mbrvm/root@latest", "p6/"]);
    assert!(err.contains("swap"), "{err}");
    let (_, err) = w.fails(&["files", "mbrvm/root@latest", "p9/etc"]);
    assert!(
        err.contains("p1 (ext2/3/4), p5 (ext2/3/4), p6 (swap)"),
        "{err}"
    );
    assert_eq!(common::files_under(&to), before, "nothing changed");

    // GPT (a BIOS boot partition, then ext4 named "rootfs"), and a disk
    // that is one filesystem.
    let gpt = w.path("gpt.raw");
    std::fs::File::create(&gpt)
        .unwrap()
        .set_len(48 * MIB)
        .unwrap();
    sfdisk(
        &gpt,
        "label: gpt\nstart=2048, size=6144, type=21686148-6449-6E6F-744E-656564454649\nstart=8192, size=81920, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"rootfs\"\n",
    );
    mkfs_at(&gpt, 8192, 81920, "", &t);
    w.backup_file("gptvm", &gpt);
    let v = w.json(&["files", "gptvm/root@latest"]);
    assert_eq!(v["partition_table"], "gpt", "{v}");
    assert_eq!(v["filesystems"][0]["partition"], "GPT BIOS boot", "{v}");
    assert_eq!(
        v["filesystems"][1]["label"], "rootfs",
        "the GPT name when the filesystem has none: {v}"
    );
    let one = w.path("gpt-out");
    get(&w, "gptvm/root@latest", "p2/data/one.bin", &one);
    assert_same_tree(&t.join("data/one.bin"), &one.join("one.bin"));

    let whole = w.path("whole.raw");
    std::fs::File::create(&whole)
        .unwrap()
        .set_len(24 * MIB)
        .unwrap();
    mkfs_at(&whole, 0, 24 * 2048, "whole", &t);
    w.backup_file("wholevm", &whole);
    let v = w.json(&["files", "wholevm/root@latest", "disk/etc"]);
    let names: Vec<&str> = entries(&v)
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hosts", "nginx", "shadow"], "{v}");

    // A damaged chunk under the file: an error that says so; nothing left.
    let chunks = common::files_under(&w.repo().join("chunks"));
    for c in &chunks {
        let mut b = std::fs::read(c).unwrap();
        if b.len() > 500_000 {
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
            std::fs::write(c, &b).unwrap();
        }
    }
    let bad = w.path("bad-out");
    let (_, err) = w.fails(&[
        "files",
        "wholevm/root@latest",
        "--get",
        "disk/data/one.bin",
        "--to",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains("corrupt") || err.contains("hash"), "{err}");
    assert!(
        common::files_under(&bad).is_empty(),
        "nothing half-made left in {}",
        bad.display()
    );
}

#[test]
fn one_file_of_a_4_gib_disk_reads_under_one_percent_of_its_chunks_from_a_served_remote() {
    let w = World::new();
    w.init("4M");
    let dir = w.dir.path();
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("data")).unwrap();
    for i in 0..40 {
        std::fs::write(
            t.join(format!("data/fill-{i:02}.bin")),
            noise(4 * MIB as usize, 10 + i),
        )
        .unwrap();
    }
    std::fs::create_dir_all(t.join("srv/www")).unwrap();
    std::fs::write(t.join("srv/www/wanted.bin"), noise(MIB as usize, 99)).unwrap();
    let disk = w.path("big.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4096 * MIB)
        .unwrap();
    sfdisk(
        &disk,
        "label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    );
    mkfs_at(&disk, 2048, 4096 * 2048 - 2048 - 34, "big", &t);
    w.backup_file("big", &disk);

    let site = w.offsite();
    let (server, reader) = (&site.server, &site.reader);

    for from_remote in [false, true] {
        let to = w.path(if from_remote {
            "remote-out"
        } else {
            "local-out"
        });
        let mut cmd = w.cmd();
        cmd.arg("-r").arg(w.repo()).arg("--json").args([
            "files",
            "big/root@latest",
            "--get",
            "p1/srv/www/wanted.bin",
            "--to",
            to.to_str().unwrap(),
        ]);
        if from_remote {
            cmd.args(["--from", &server.url])
                .env("LIFEBOAT_TOKEN", reader);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = last_json(&String::from_utf8_lossy(&out.stdout));
        let (read, total) = (
            v["chunks_read"].as_u64().unwrap(),
            v["chunks_total"].as_u64().unwrap(),
        );
        assert_eq!(total, 1024, "{v}");
        eprintln!("remote {from_remote}: read {read} of {total} chunks");
        assert!(
            read * 100 <= total,
            "read {read} of {total} chunks (remote: {from_remote})"
        );
        assert_eq!(
            std::fs::read(to.join("wanted.bin")).unwrap(),
            noise(MIB as usize, 99)
        );
    }
}

/// An encrypted repository: files are listed and extracted with its key,
/// and refused with a clear error without it.
#[test]
fn files_of_an_encrypted_backup_need_its_key() {
    let w = World::new();
    let t = tree(w.dir.path());
    let pass = w.path("pass");
    common::secret_file(&pass, "correct horse battery staple\n");
    let with_key = |args: &[&str]| {
        w.cmd()
            .env("LIFEBOAT_PASSPHRASE_FILE", &pass)
            .arg("-r")
            .arg(w.repo())
            .args(args)
            .output()
            .unwrap()
    };
    let rk = w.path("recovery.txt");
    let out = with_key(&[
        "init",
        "--encrypt",
        "--recovery-key-out",
        rk.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = w.path("whole.raw");
    std::fs::File::create(&whole)
        .unwrap()
        .set_len(24 * MIB)
        .unwrap();
    mkfs_at(&whole, 0, 24 * 2048, "sealed", &t);
    let img = format!("root={}", whole.display());
    let out = with_key(&["backup", "vm", "--format", "raw", "--volume", &img]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let to = w.path("out");
    let out = with_key(&[
        "files",
        "vm/root@latest",
        "--get",
        "disk/etc",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&t.join("etc"), &to.join("etc"));
    let (_, err) = w.fails(&["files", "vm/root@latest", "disk/etc"]);
    assert!(
        err.contains("encrypted") && err.contains("LIFEBOAT_PASSPHRASE_FILE"),
        "{err}"
    );
}
