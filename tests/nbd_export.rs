//! A backup served as a read-only NBD export (`lifeboat nbd REF`), read by
//! QEMU's own NBD client (qemu-img, qemu-io) on a unix socket and on
//! loopback TCP: byte-exact, zero chunks as holes, writes refused, a
//! corrupt chunk an I/O error for its range only.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{noise, text, write_at, World};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `lifeboat --json nbd ARGS` running, and the URI it printed.
struct Served {
    child: Child,
    uri: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM is its clean stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn serve(w: &World, args: &[&str]) -> Served {
    serve_with_token(w, args, None)
}

/// The same, with `LIFEBOAT_TOKEN` for a served remote.
fn serve_with_token(w: &World, args: &[&str], token: Option<&str>) -> Served {
    let mut cmd = w.cmd();
    cmd.arg("-r")
        .arg(w.repo())
        .arg("--json")
        .arg("nbd")
        .args(args);
    if let Some(t) = token {
        cmd.env("LIFEBOAT_TOKEN", t);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lifeboat nbd");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("a line");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    Served {
        child,
        uri: v["uri"].as_str().expect("uri").to_string(),
    }
}

fn qemu(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool).args(args).output().expect(tool)
}

/// `qemu-io -r` running one command on the export: what it said.
fn qemu_io(uri: &str, cmd: &str) -> String {
    let r = qemu("qemu-io", &["-r", "-f", "raw", uri, "-c", cmd]);
    String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr)
}

/// The export reads exactly as the image file, through qemu-img.
fn assert_same(uri: &str, img: &std::path::Path) {
    let cmp = qemu(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            uri,
            img.to_str().unwrap(),
        ],
    );
    assert!(
        cmp.status.success(),
        "{}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
}

#[test]
fn a_backup_is_served_as_a_read_only_nbd_export() {
    let w = World::new();
    w.init("1M");
    // 32 MiB: data at 0..3 MiB and 20..21 MiB, the rest zero.
    let img = w.path("disk.raw");
    write_at(&img, 0, &noise(3 * MIB as usize, 7));
    write_at(&img, 20 * MIB, &text(MIB as usize));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(32 * MIB))
        .expect("size");
    w.backup_file("vm", &img);

    let sock = w.path("x.sock");
    let s = serve(&w, &["vm/root@latest", "--socket", sock.to_str().unwrap()]);
    assert!(s.uri.starts_with("nbd+unix:///?socket="), "{}", s.uri);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the socket is private: {mode:o}");

    // Byte-exact through QEMU's NBD client.
    assert_same(&s.uri, &img);
    // Zero chunks are holes (base:allocation): qemu-img map sees data only
    // where the image has it.
    let map = qemu("qemu-img", &["map", "--output=json", "-f", "raw", &s.uri]);
    let map: Value = serde_json::from_slice(&map.stdout).expect("map JSON");
    let data: u64 = map
        .as_array()
        .expect("extents")
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(data, 4 * MIB, "{map:#}");
    // Read-only: a write is refused.
    let wr = qemu("qemu-io", &["-f", "raw", &s.uri, "-c", "write -P 1 0 4096"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&wr.stdout),
        String::from_utf8_lossy(&wr.stderr)
    );
    assert!(
        said.contains("read-only") || said.contains("Permission denied") || !wr.status.success(),
        "{said}"
    );
    drop(s);
    assert!(!sock.exists(), "the socket goes with the server");

    // A corrupt chunk: its range fails with an I/O error, others read.
    let chunks = common::files_under(&w.repo().join("chunks"));
    let victim = chunks
        .iter()
        .find(|p| {
            // One of the three noise chunks (text compresses far below).
            std::fs::metadata(p).is_ok_and(|m| m.len() > 1_000_000)
        })
        .expect("an incompressible chunk")
        .clone();
    let mut bytes = std::fs::read(&victim).expect("chunk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("corrupt");
    let s = serve(&w, &["vm/root@latest", "--tcp", "127.0.0.1:0"]);
    assert!(s.uri.starts_with("nbd://127.0.0.1:"), "{}", s.uri);
    let mut failed = 0;
    for m in 0..3u64 {
        let said = qemu_io(&s.uri, &format!("read {m}M 1M"));
        if said.contains("Input/output error") {
            failed += 1;
        } else {
            assert!(said.contains("read 1048576/1048576 bytes"), "{said}");
        }
    }
    assert_eq!(failed, 1, "exactly the corrupt chunk's MiB fails");
    let holes = qemu_io(&s.uri, "read -P 0 10M 1M");
    assert!(holes.contains("read 1048576/1048576 bytes"), "{holes}");
    drop(s);

    // Not on a network address: there is no authentication.
    let (_, err) = w.fails(&["nbd", "vm/root@latest", "--tcp", "0.0.0.0:0"]);
    assert!(err.contains("not a loopback address"), "{err}");
    let (_, err) = w.fails(&["nbd", "vm/nosuch@latest"]);
    assert!(err.contains("nosuch"), "{err}");
}

/// From a `lifeboat serve` repository, with a read-only token: chunks are
/// fetched when a client asks (and the next ones with them), verified,
/// never written to the local disk.
#[test]
fn a_backup_on_a_served_remote_is_exported_with_chunks_fetched_on_demand() {
    let w = World::new();
    w.init("1M");
    let img = w.path("disk.raw");
    write_at(&img, 0, &noise(6 * MIB as usize, 3));
    write_at(&img, 30 * MIB, &text(MIB as usize));
    w.backup_file("vm", &img);
    let site = w.offsite();
    let (server, reader, srv) = (&site.server, &site.reader, &site.srv);
    // Nothing local is needed, or touched.
    std::fs::remove_dir_all(w.repo()).expect("rm local repo");
    let args = [
        "vm/root@latest",
        "--from",
        &server.url,
        "--tcp",
        "127.0.0.1:0",
    ];
    let s = serve_with_token(&w, &args, Some(reader));
    assert_same(&s.uri, &img);
    drop(s);
    assert!(!w.repo().exists(), "no local repository was made");

    // On demand: with the chunk at 30 MiB gone from the server, the
    // export still starts and serves the rest; only that range fails.
    let text_chunk = common::files_under(&srv.join("chunks"))
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() < 1_000_000))
        .expect("the text chunk");
    std::fs::remove_file(&text_chunk).expect("rm");
    let s = serve_with_token(&w, &args, Some(reader));
    let uri = s.uri.clone();
    let read = |at: &str| qemu_io(&uri, &format!("read {at} 1M"));
    let ok = read("0");
    assert!(ok.contains("read 1048576/1048576 bytes"), "{ok}");
    let gone = read("30M");
    assert!(gone.contains("Input/output error"), "{gone}");
}

/// Booting straight from a backup: a qcow2 overlay whose backing file is
/// the export takes the guest's writes, the backup is only read. The
/// demo's guest comes up this way without being restored first.
#[test]
fn a_vm_boots_from_a_backup_through_an_overlay_on_the_export() {
    let w = World::new();
    w.init("4M");
    let raw = w.path("boot.raw");
    common::guest::demo_disk(&raw, "nbdvm");
    w.backup_file("nbdvm", &raw);
    let before = std::fs::read(&raw).expect("disk");
    std::fs::remove_file(&raw).expect("the disk is lost");
    let sock = w.path("boot.sock");
    let s = serve(
        &w,
        &["nbdvm/root@latest", "--socket", sock.to_str().unwrap()],
    );
    let overlay = w.path("overlay.qcow2");
    let made = qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &s.uri,
            "-F",
            "raw",
            overlay.to_str().unwrap(),
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut vm = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-drive"])
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let lines = BufReader::new(vm.stdout.take().expect("stdout"));
    // A guest that never prints its marker must not hang the test: QEMU
    // is killed after 5 minutes unless the test is done first.
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let pid = vm.id() as i32;
    let watchdog = std::thread::spawn(move || {
        if watch
            .recv_timeout(std::time::Duration::from_secs(300))
            .is_err()
        {
            // SAFETY: our own child, still unreaped (the test waits below).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut seen = Vec::new();
    let mut up = false;
    for l in lines.lines().map_while(Result::ok) {
        if l.contains("lifeboat-guest nbdvm: up") {
            up = true;
            break;
        }
        seen.push(l);
    }
    let _ = done.send(());
    let _ = watchdog.join();
    let _ = vm.kill();
    let _ = vm.wait();
    assert!(up, "the guest never came up:\n{}", seen.join("\n"));
    drop(s);
    // The backup itself was only read: restored, it is the disk as it was.
    let back = w.path("back.raw");
    w.ok(&[
        "restore",
        "nbdvm/root@latest",
        "--to",
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).expect("restored") == before);
}
