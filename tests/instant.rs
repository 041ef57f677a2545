//! `restore VM@REF --instant`: the demo's bootable guest (with a data
//! disk) starts from its backup on a `lifeboat serve` remote, answers its
//! HTTP check, and is switched onto local disks equal to a plain restore;
//! a repository that goes away mid-copy makes the VM wait, not fail; a
//! cancel stops the VM and leaves nothing half-made.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{noise, write_at, World};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Stops the restored VM however the test ends.
struct Vm(PathBuf);

impl Vm {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
    fn alive(&self) -> bool {
        self.pid().is_some_and(|p| unsafe { libc::kill(p, 0) } == 0)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(p) = self.pid() {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// One QMP command on the VM's monitor: its `return`.
fn qmp(sock: &Path, cmd: &str) -> Value {
    let s = UnixStream::connect(sock).expect("the VM's monitor");
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    for c in ["qmp_capabilities", cmd] {
        writeln!(w, "{{\"execute\":\"{c}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("return").is_some() || v.get("error").is_some() {
                if c == cmd {
                    return v["return"].clone();
                }
                break;
            }
        }
    }
    Value::Null
}

/// The guest's HTTP check, asked until it answers (it boots under TCG).
fn http_answers(port: u16) -> String {
    for _ in 0..600 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            if got.contains("answers") {
                return got;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the guest's HTTP check never answered");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Site {
    w: World,
    disk: PathBuf,
    data: PathBuf,
    server: common::remote::Server,
    reader: String,
    srv: PathBuf,
    tokens: PathBuf,
}

/// The demo guest's disk and a 192 MiB data disk, backed up as one VM and
/// pushed to a served remote.
fn site() -> Site {
    let w = World::new();
    w.init("1M");
    let disk = w.path("root.raw");
    common::guest::demo_disk(&disk, "web");
    let data = w.path("data.raw");
    std::fs::File::create(&data)
        .unwrap()
        .set_len(192 * MIB)
        .unwrap();
    write_at(&data, 0, &noise(96 * MIB as usize, 5));
    write_at(&data, 160 * MIB, &noise(8 * MIB as usize, 6));
    w.ok(&[
        "backup",
        "web",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", disk.display()),
        "--volume",
        &format!("data={}", data.display()),
    ]);
    let site = w.offsite();
    Site {
        w,
        disk,
        data,
        server: site.server,
        reader: site.reader,
        srv: site.srv,
        tokens: site.tokens,
    }
}

fn same_image(a: &Path, b: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} vs {}: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_vm_runs_from_a_remote_backup_at_once_and_moves_onto_local_disks() {
    let s = site();
    let to = s.w.path("restored");
    let port = free_port();
    let vm = Vm(to.join("web.pid"));
    let out =
        s.w.cmd()
            .env("LIFEBOAT_TOKEN", &s.reader)
            .args([
                "--json",
                "restore",
                "web@latest",
                "--instant",
                "--accel",
                "tcg",
            ])
            .args(["--from", &s.server.url, "--to", to.to_str().unwrap()])
            .args(["--forward", &format!("{port}:8080")])
            .output()
            .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        stderr.contains("the VM runs on its backup after"),
        "the job said when the VM started: {stderr}"
    );
    // It keeps running after lifeboat exits, on the local files.
    assert!(vm.alive(), "{report}");
    assert!(http_answers(port).contains("web"));
    let blocks = qmp(&to.join("web.qmp"), "query-block");
    let files: Vec<&str> = blocks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.pointer("/inserted/file").and_then(Value::as_str))
        .collect();
    assert_eq!(
        files,
        [
            to.join("root.raw").to_str().unwrap(),
            to.join("data.raw").to_str().unwrap()
        ],
        "the VM reads its local disks, no NBD: {blocks}"
    );
    let mut left = leftovers(&to);
    left.sort();
    assert_eq!(
        left,
        [
            "data.raw",
            "root.raw",
            "web.pid",
            "web.qmp",
            "web.serial.log"
        ]
    );
    for f in ["root.raw", "data.raw", "web.serial.log", "web.qmp"] {
        let mode = std::fs::metadata(to.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is private ({mode:o})");
    }
    assert!(
        report["copied_bytes"].as_u64().unwrap() >= 256 * MIB,
        "{report}"
    );
    // Stopped, the disks are those a plain restore writes.
    qmp(&to.join("web.qmp"), "quit");
    while vm.alive() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    same_image(&to.join("root.raw"), &s.disk);
    same_image(&to.join("data.raw"), &s.data);

    // What it refuses: overwriting, a single volume, flags it cannot honour.
    let (_, err) = s.w.fails(&[
        "restore",
        "web@latest",
        "--instant",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(
        err.contains("exists") && err.contains("never overwrites"),
        "{err}"
    );
    let other = s.w.path("other");
    let (_, err) = s.w.fails(&[
        "restore",
        "web/root@latest",
        "--instant",
        "--to",
        other.to_str().unwrap(),
    ]);
    assert!(err.contains("lifeboat nbd"), "{err}");
    let (_, err) = s.w.fails(&[
        "restore",
        "web@latest",
        "--instant",
        "--define",
        "--to",
        other.to_str().unwrap(),
    ]);
    assert!(err.contains("--define"), "{err}");
    assert!(!other.exists(), "nothing made for a refused restore");
}

/// A restore with its progress as JSON lines (on stderr), read as they come.
fn start_slow(
    s: &Site,
    to: &Path,
    port: u16,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child =
        s.w.cmd()
            .env("LIFEBOAT_TOKEN", &s.reader)
            // Slow enough that the copy is still going when the test acts.
            .args([
                "--json",
                "--limit-download",
                "8M",
                "restore",
                "web@latest",
                "--instant",
            ])
            .args([
                "--accel",
                "tcg",
                "--from",
                &s.server.url,
                "--to",
                to.to_str().unwrap(),
            ])
            .args(["--forward", &format!("{port}:8080")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (child, rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    let mut seen = Vec::new();
    loop {
        let Ok(l) = rx.recv() else {
            panic!("the restore ended before {what:?}: {seen:#?}");
        };
        if l.contains(what) {
            return l;
        }
        seen.push(l);
    }
}

#[test]
fn a_remote_gone_mid_copy_pauses_the_vm_until_it_is_back_and_cancel_leaves_nothing() {
    let mut s = site();
    let to = s.w.path("restored");
    let port = free_port();
    let vm = Vm(to.join("web.pid"));
    let (mut child, rx) = start_slow(&s, &to, port);
    wait_line(&rx, "the VM runs on its backup");
    // The server goes away mid-copy (about 110 MiB to fetch at 8 MiB/s), and comes back on the same address.
    let addr = s.server.addr.clone();
    s.server.kill();
    wait_line(&rx, "the repository did not answer a read");
    assert!(vm.alive(), "the VM waits, it is not stopped");
    s.server = common::remote::Server::start(&s.srv, &s.tokens, &addr);
    let status = child.wait().unwrap();
    let rest: Vec<String> = rx.iter().collect();
    assert!(status.success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("waited")), "{rest:?}");
    assert!(http_answers(port).contains("web"));
    qmp(&to.join("web.qmp"), "quit");
    while vm.alive() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    same_image(&to.join("data.raw"), &s.data);
    same_image(&to.join("root.raw"), &s.disk);

    // Cancel mid-copy: the VM is stopped, nothing it made is left.
    let to = s.w.path("cancelled");
    let vm = Vm(to.join("web.pid"));
    let (mut child, rx) = start_slow(&s, &to, free_port());
    wait_line(&rx, "the VM runs on its backup");
    let pid = vm.pid().expect("the VM runs");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "cancelled");
    assert!(unsafe { libc::kill(pid, 0) } != 0, "the VM was stopped");
    assert!(leftovers(&to).is_empty(), "{:?}", leftovers(&to));
}
