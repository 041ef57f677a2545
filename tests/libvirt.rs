//! libvirt domains: a real libvirtd of the test's own (libvirt 9.0, QEMU
//! 7.2 TCG) runs the running-VM tests' guest, which writes its record
//! pattern to two qcow2 disks while lifeboat, told only `[libvirt] uri`,
//! finds the domain, backs it up by name through libvirt's backup API
//! (pull mode, checkpoints) and restores it. See tests/common/guest.rs for
//! the pattern and how a restored pair is checked for one instant.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::guest::{initrd, kit, one_instant, records};
use common::libvirtd::{qemu_dir, Libvirtd};
use common::BIN;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The guest's serial console, a unix socket QEMU listens on.
struct Console {
    stream: UnixStream,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Console {
    fn connect(path: &Path) -> Console {
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("console {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (sink, read) = (lines.clone(), stream.try_clone().expect("clone"));
        std::thread::spawn(move || {
            for l in BufReader::new(read).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(l);
            }
        });
        Console { stream, lines }
    }

    fn count(&self, pat: &str) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    fn wait_for(&self, pat: &str, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.count(pat) < n {
            if Instant::now() > deadline {
                let tail = self.lines.lock().expect("lines").join("\n");
                panic!("the guest never printed {pat:?} ({n}x); its console:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stream, "{cmd}").expect("console");
    }
}

/// The live guest as a TCG domain: vda and vdb (qcow2) get the records,
/// vdc (raw) holds the filesystem its agent freezes.
fn live_domain(name: &str, dir: &Path) -> String {
    for (f, size) in [("va.qcow2", "1G"), ("vb.qcow2", "256M")] {
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(dir.join(f))
            .arg(size)
            .status()
            .expect("qemu-img");
        assert!(st.success());
    }
    std::fs::File::create(dir.join("fs.raw"))
        .and_then(|f| f.set_len(16 << 20))
        .expect("fs");
    std::fs::copy(kit().join("vmlinuz"), dir.join("vmlinuz")).expect("kernel");
    std::fs::copy(initrd(), dir.join("initrd.gz")).expect("initrd");
    let d = |f: &str| dir.join(f).display().to_string();
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 lifeboat.agent=1</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{va}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{vb}'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{fs}'/><target dev='vdc' bus='virtio'/></disk>
    <serial type='unix'><source mode='bind' path='{console}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"#,
        kernel = d("vmlinuz"),
        initrd = d("initrd.gz"),
        va = d("va.qcow2"),
        vb = d("vb.qcow2"),
        fs = d("fs.raw"),
        console = d("console.sock"),
    )
}

/// An admin's host: a config with only `[libvirt] uri`, and a repository.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(uri: &str) -> Host {
        let h = Host {
            dir: tempfile::tempdir().expect("dir"),
        };
        std::fs::write(
            h.dir.path().join("cfg.toml"),
            format!("repository = \"repo\"\n\n[libvirt]\nuri = \"{uri}\"\n"),
        )
        .expect("config");
        let out = h.lb(&["init", "repo"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        h
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        // Only the config's URI reaches libvirt.
        c.env("LIBVIRT_DEFAULT_URI", common::NO_LIBVIRT)
            .current_dir(self.dir.path())
            .env_remove("LIFEBOAT_REPO")
            .env("HOME", self.dir.path())
            .arg("--config")
            .arg(self.dir.path().join("cfg.toml"))
            .args(args);
        c
    }

    fn lb(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run lifeboat")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.lb(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "lifeboat {args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        text
    }

    /// `backup VM --json`: the volumes by name, and what it said on stderr.
    fn backup(&self, vm: &str) -> (Value, String) {
        let out = self.lb(&["backup", vm, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "backup failed: {text}\n{err}");
        let result = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .last()
            .expect("a JSON result");
        let mut by_name = serde_json::Map::new();
        for v in result["volumes"].as_array().expect("volumes") {
            by_name.insert(
                v["volume"].as_str().expect("name").into(),
                v["capture"].clone(),
            );
        }
        (Value::Object(by_name), err)
    }

    fn manifests(&self, vm: &str) -> usize {
        ["vda", "vdb"]
            .iter()
            .map(|v| {
                std::fs::read_dir(self.dir.path().join("repo/manifests").join(vm).join(v))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn restore(&self, vm: &str, volume: &str) -> PathBuf {
        let to = self.dir.path().join(format!("{volume}.restored"));
        let _ = std::fs::remove_file(&to);
        self.ok(&[
            "restore",
            &format!("{vm}/{volume}@latest"),
            "--to",
            to.to_str().expect("path"),
        ]);
        to
    }

    /// Both restored record disks hold one instant, the same one.
    fn assert_consistent(&self, vm: &str) -> u64 {
        let a = one_instant(&records(&self.restore(vm, "vda")).expect("vda records")).expect("vda");
        let b = one_instant(&records(&self.restore(vm, "vdb")).expect("vdb records")).expect("vdb");
        let (a, b) = (a.expect("vda has records"), b.unwrap_or(0));
        assert!(
            a == b || a == b + 1,
            "vda is at seq {a} and vdb at {b}: the disks were captured at different instants"
        );
        a
    }
}

fn scratch_dirs() -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("lifeboat-libvirt-")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// A backup stopped (SIGSTOP) while libvirt's backup job exports the
/// disks and before any manifest is written.
fn backup_caught_mid_read(host: &Host, lv: &Libvirtd, vm: &str) -> Child {
    for _ in 0..30 {
        let before = host.manifests(vm);
        let mut child = host
            .cmd(&["backup", vm])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("backup");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if lv.virsh(&["backup-dumpxml", vm]).status.success() {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
                if host.manifests(vm) == before {
                    return child;
                }
                // SAFETY: as above.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
        }
        let _ = child.wait();
    }
    panic!("never caught a backup while libvirt's job exported the disks");
}

#[test]
fn a_libvirt_domain_is_found_and_backed_up_by_name_at_one_instant_incrementally_through_checkpoints(
) {
    let lv = Libvirtd::start();
    let g = qemu_dir();
    lv.define(g.path(), &live_domain("lbtest", g.path()));
    lv.ok(&["start", "lbtest"]);
    let mut con = Console::connect(&g.path().join("console.sock"));
    con.wait_for("live-guest: up", 1, 300);
    con.wait_for("live-guest: agent on", 1, 60);
    con.wait_for("live-guest: seq 64", 1, 300);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lv.ok(&["dumpxml", "lbtest"]).contains("state='connected'") {
        assert!(Instant::now() < deadline, "the guest agent never connected");
        std::thread::sleep(Duration::from_millis(200));
    }
    let host = Host::new(&lv.uri);

    // Discovery: no [[vm]] entry, every disk from libvirt.
    let vms: Value = serde_json::from_str(&host.ok(&["vms", "--json"])).expect("json");
    let vm = vms
        .as_array()
        .and_then(|a| a.iter().find(|v| v["vm"] == "lbtest"))
        .unwrap_or_else(|| panic!("lbtest not listed: {vms}"));
    assert_eq!(vm["libvirt_domain"], "lbtest");
    assert_eq!(vm["run"]["running"], true, "{vm}");
    let vols: Vec<&str> = vm["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(vols, ["vda", "vdb", "vdc"]);
    assert!(vm["last_backup_at"].is_null());

    // Full: all disks at one instant, the guest frozen through libvirt.
    let (b1, _) = host.backup("lbtest");
    for v in ["vda", "vdb", "vdc"] {
        assert_eq!(b1[v]["consistency"], "application", "{b1}");
        assert_eq!(b1[v]["incremental"], false, "{b1}");
    }
    assert!(
        b1["vda"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("1 guest filesystems frozen through libvirt")),
        "{b1}"
    );
    assert!(
        b1["vdc"]["full_reason"]
            .as_str()
            .is_some_and(|r| r.contains("raw disk")),
        "{b1}"
    );
    let cp1 = b1["vda"]["bitmap"]
        .as_str()
        .expect("a checkpoint")
        .to_string();
    assert_eq!(b1["vdb"]["bitmap"], cp1.as_str());
    assert!(b1["vdc"]["bitmap"].is_null());
    assert_eq!(lv.checkpoints("lbtest"), std::slice::from_ref(&cp1));
    let seq1 = host.assert_consistent("lbtest");

    // An admin's checkpoint, which lifeboat leaves alone.
    lv.ok(&[
        "checkpoint-create-as",
        "lbtest",
        "--name",
        "admin-cp",
        "--diskspec",
        "vda,checkpoint=bitmap",
        "--diskspec",
        "vdb,checkpoint=no",
        "--diskspec",
        "vdc,checkpoint=no",
    ]);

    // Incremental: the guest rewrites 10 MiB of vda at scattered places
    // (and keeps writing its 1 MiB of records on both disks).
    con.send("dirty 7");
    con.wait_for("live-guest: dirty done", 1, 300);
    let (b2, _) = host.backup("lbtest");
    assert_eq!(b2["vda"]["incremental"], true, "{b2}");
    assert_eq!(b2["vdb"]["incremental"], true, "{b2}");
    let read = b2["vda"]["bytes_read"].as_u64().expect("bytes_read");
    let changed = 10 * MIB + MIB;
    assert!(
        read >= 10 * MIB && read as f64 <= 1.1 * changed as f64,
        "the incremental read {read} bytes of vda; the guest changed at most {changed}"
    );
    assert!(
        b2["vdb"]["bytes_read"].as_u64().expect("read") <= MIB + MIB / 10,
        "{b2}"
    );
    let cp2 = b2["vda"]["bitmap"]
        .as_str()
        .expect("checkpoint")
        .to_string();
    let mut want = vec!["admin-cp".to_string(), cp2.clone()];
    want.sort();
    assert_eq!(
        lv.checkpoints("lbtest"),
        want,
        "the old checkpoint goes, the admin's stays"
    );
    let seq2 = host.assert_consistent("lbtest");
    assert!(seq2 > seq1);

    // A backup killed mid-read leaves libvirt's job running.
    let before = scratch_dirs();
    let mut child = backup_caught_mid_read(&host, &lv, "lbtest");
    let left: Vec<PathBuf> = scratch_dirs()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert!(
        !left.is_empty(),
        "the stopped backup has a scratch directory"
    );
    child.kill().expect("kill");
    let _ = child.wait();
    let vms: Value = serde_json::from_str(&host.ok(&["vms", "lbtest", "--json"])).expect("json");
    assert!(
        vms[0]["leftovers"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "vms names the killed backup's job: {vms}"
    );
    let (b3, said) = host.backup("lbtest");
    assert!(
        said.contains("aborted the backup job a killed lifeboat left"),
        "{said}"
    );
    assert!(
        said.contains("removed checkpoint lifeboat-"),
        "the killed run's checkpoint: {said}"
    );
    assert_eq!(
        b3["vda"]["incremental"], true,
        "still incremental from {cp2}: {b3}"
    );
    let cp3 = b3["vda"]["bitmap"]
        .as_str()
        .expect("checkpoint")
        .to_string();
    let mut want = vec!["admin-cp".to_string(), cp3.clone()];
    want.sort();
    assert_eq!(lv.checkpoints("lbtest"), want);
    for d in &left {
        assert!(!d.exists(), "{} was left", d.display());
    }
    assert!(
        !lv.virsh(&["backup-dumpxml", "lbtest"]).status.success(),
        "no job runs"
    );
    host.assert_consistent("lbtest");

    // A checkpoint that went missing: a full read that says why.
    lv.ok(&["checkpoint-delete", "lbtest", &cp3]);
    let (b4, _) = host.backup("lbtest");
    assert_eq!(b4["vda"]["incremental"], false);
    assert!(
        b4["vda"]["full_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("no checkpoint {cp3}"))),
        "{b4}"
    );

    // Shut off: the disk files, read whole.
    lv.ok(&["destroy", "lbtest"]);
    let (b5, _) = host.backup("lbtest");
    assert_eq!(b5["vda"]["consistency"], "offline", "{b5}");
    assert!(
        b5["vda"]["full_reason"]
            .as_str()
            .is_some_and(|r| r.contains("shut off")),
        "{b5}"
    );
    assert_eq!(
        lv.checkpoints("lbtest"),
        {
            let mut w = vec![
                "admin-cp".to_string(),
                b4["vda"]["bitmap"].as_str().expect("cp").to_string(),
            ];
            w.sort();
            w
        },
        "an offline read leaves libvirt's checkpoints alone"
    );
    let human = host.ok(&["vms"]);
    assert!(human.contains("lbtest (libvirt domain)"), "{human}");
    assert!(human.contains("libvirt: shut off"), "{human}");
}

/// The path of a running domain's serial pty.
fn serial_pty(lv: &Libvirtd, domain: &str) -> PathBuf {
    let xml = lv.ok(&["dumpxml", domain]);
    let at = xml.find("<serial type='pty'>").expect("a pty serial");
    let rest = &xml[at..];
    let p = rest
        .split("path='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("pty path");
    PathBuf::from(p)
}

/// Reads a pty until `marker` shows.
fn wait_on_pty(pty: &Path, marker: &str, secs: u64) {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(pty)
        .expect("pty");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        assert!(
            Instant::now() < deadline,
            "{marker:?} never showed: {}",
            String::from_utf8_lossy(&seen)
        );
        match f.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn a_backed_up_domain_is_defined_into_libvirt_started_and_boots() {
    let lv = Libvirtd::start();
    let g = qemu_dir();
    // The demo's bootable guest, as a qcow2 disk.
    let raw = g.path().join("boot.raw");
    common::guest::demo_disk(&raw, "lbboot");
    let disk = g.path().join("boot.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&disk)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let data = g.path().join("data.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&data)
        .arg("8M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    lv.define(
        g.path(),
        &format!(
            r#"<domain type='qemu'>
  <name>lbboot</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>"#,
            disk.display()
        ),
    );
    // Never started: its NIC's network does not exist on this libvirt.
    lv.define(
        g.path(),
        &format!(
            r#"<domain type='qemu'>
  <name>lbnet</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>
    <interface type='network'><source network='nowhere'/><model type='virtio'/></interface>
  </devices>
</domain>"#,
            data.display()
        ),
    );
    lv.ok(&["start", "lbboot"]);
    wait_on_pty(&serial_pty(&lv, "lbboot"), "lifeboat-guest lbboot: up", 300);
    let host = Host::new(&lv.uri);
    let (b, _) = host.backup("lbboot");
    assert_eq!(b["vda"]["consistency"], "crash", "{b}");
    assert!(
        b["vda"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("no guest agent channel")),
        "{b}"
    );
    let (n, _) = host.backup("lbnet");
    assert_eq!(n["vda"]["consistency"], "offline", "{n}");

    // The console lists both domains with their disks (the real binary
    // in a pseudo-terminal).
    let mut c = common::pty::console_in(host.dir.path());
    c.wait_until("both domains in the tree", 60, |s| {
        s.contains("lbboot") && s.contains("lbnet")
    });
    c.wait_for("libvirt: 2 domains listed", 30);
    c.keys("q");
    c.wait_exit();

    // The name is taken: refused before anything is written.
    let to = qemu_dir();
    let out = host.lb(&[
        "restore",
        "lbboot@latest",
        "--to",
        to.path().to_str().expect("path"),
        "--define",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("a domain named lbboot is defined") && err.contains("--name"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(to.path()).expect("dir").count(),
        0,
        "nothing restored"
    );

    // The VM is lost; restored, defined and started, it boots.
    lv.ok(&["destroy", "lbboot"]);
    lv.ok(&["undefine", "lbboot", "--checkpoints-metadata"]);
    let said = host.ok(&[
        "restore",
        "lbboot@latest",
        "--to",
        to.path().to_str().expect("path"),
        "--define",
        "--start",
    ]);
    assert!(
        said.contains("defined with virsh") && said.contains("started"),
        "{said}"
    );
    assert_eq!(lv.ok(&["domstate", "lbboot"]).trim(), "running");
    assert!(lv
        .ok(&["dumpxml", "lbboot"])
        .contains(&to.path().display().to_string()));
    wait_on_pty(&serial_pty(&lv, "lbboot"), "lifeboat-guest lbboot: up", 300);

    // A network this libvirt lacks: the NIC is removed, and said.
    let to2 = qemu_dir();
    let said = host.ok(&[
        "restore",
        "lbnet@latest",
        "--to",
        to2.path().to_str().expect("path"),
        "--define",
        "--name",
        "lbnet2",
    ]);
    assert!(
        said.contains("removed the NIC on network nowhere"),
        "{said}"
    );
    assert!(!lv.ok(&["dumpxml", "lbnet2"]).contains("<interface"));

    // One volume attached to the running domain.
    let file = to2.path().join("extra.qcow2");
    host.ok(&[
        "restore",
        "lbnet/vda@latest",
        "--to",
        file.to_str().expect("path"),
        "--attach",
        "lbboot",
        "--target",
        "vdb",
    ]);
    assert!(lv.ok(&["domblklist", "lbboot"]).contains("vdb"), "attached");
    // An unknown domain is refused before the restore writes anything.
    let out = host.lb(&[
        "restore",
        "lbnet/vda@latest",
        "--to",
        to2.path().join("x.qcow2").to_str().expect("p"),
        "--attach",
        "nosuch",
    ]);
    assert!(!out.status.success());
    assert!(!to2.path().join("x.qcow2").exists());
}
