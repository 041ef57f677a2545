//! Running VMs: a real Linux guest under qemu-system-x86_64 (TCG) writes a
//! self-checking pattern to two disks in a loop while lifeboat backs it up
//! through QMP, fleecing and dirty bitmaps.
//!
//! The pattern: record `seq` goes to slot `seq % 256` of /dev/vda, then of
//! /dev/vdb, each a 4 KiB direct write of 128 copies of the line
//! `LBREC <seq> <slot>`. A disk captured at one instant therefore holds, in
//! every slot, the newest record written to it up to one highest `seq`
//! (a torn record has mixed lines; a read spread over time shows an older
//! record after a newer one), and vdb is at most one record behind vda.

mod common;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::guest::{one_instant, parse_records, records, Guest, RECORD, SLOTS};
use common::BIN;
use lifeboat_core::live::agent::Agent;
use lifeboat_core::live::qmp::Qmp;
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

/// The two disks lifeboat backs up: vda, a 1 GiB qcow2 image, and vdb, a
/// 256 MiB raw one; and QEMU's arguments for them and its monitor.
fn make_disks(dir: &Path) -> Vec<String> {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.join("va.qcow2"))
        .arg("1G")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    std::fs::File::create(dir.join("vb.raw"))
        .and_then(|f| f.set_len(256 << 20))
        .expect("vb");
    let d = |f: &str| dir.join(f).display().to_string();
    vec![
        "-accel".into(),
        "tcg".into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2,id=vda", d("va.qcow2")),
        "-drive".into(),
        format!("file={},if=virtio,format=raw,id=vdb", d("vb.raw")),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", d("qmp.sock")),
    ]
}

struct Host {
    dir: tempfile::TempDir,
    /// An encrypted repository's passphrase file (every command gets it).
    pass: Option<PathBuf>,
}

impl Host {
    fn new(guest: &Path, agent: Option<&str>, qmp: Option<&Path>) -> Host {
        Host::with_repo(guest, agent, qmp, false)
    }

    /// A host whose repository is encrypted (`init --encrypt`).
    fn encrypted(guest: &Path, agent: Option<&str>) -> Host {
        Host::with_repo(guest, agent, None, true)
    }

    fn with_repo(guest: &Path, agent: Option<&str>, qmp: Option<&Path>, encrypt: bool) -> Host {
        let dir = common::test_dir();
        let pass = encrypt.then(|| {
            let p = dir.path().join("pass");
            common::secret_file(&p, "live passphrase\n");
            p
        });
        let h = Host { dir, pass };
        h.write_config(guest, agent, qmp);
        let rk = h.dir.path().join("recovery.txt");
        let rk = rk.to_str().expect("path");
        let init: &[&str] = if encrypt {
            &["init", "repo", "--encrypt", "--recovery-key-out", rk]
        } else {
            &["init", "repo"]
        };
        let out = h.lb(init);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        h
    }

    fn write_config(&self, guest: &Path, agent: Option<&str>, qmp: Option<&Path>) {
        let qmp = qmp
            .map(Path::to_path_buf)
            .unwrap_or_else(|| guest.join("qmp.sock"));
        let agent = agent
            .map(|a| {
                format!(
                    "guest_agent = \"{}\"\nfreeze_timeout = 3\n",
                    guest.join(a).display()
                )
            })
            .unwrap_or_default();
        let cfg = format!(
            r#"repository = "repo"
[[vm]]
name = "vm1"
qmp = "{qmp}"
{agent}
[[vm.volume]]
name = "vda"
role = "root"
path = "{va}"
format = "qcow2"

[[vm.volume]]
name = "vdb"
path = "{vb}"
format = "raw"
"#,
            qmp = qmp.display(),
            va = guest.join("va.qcow2").display(),
            vb = guest.join("vb.raw").display(),
        );
        std::fs::write(self.dir.path().join("cfg.toml"), cfg).expect("config");
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("LIBVIRT_DEFAULT_URI", common::NO_LIBVIRT);
        c.current_dir(self.dir.path())
            .env_remove("LIFEBOAT_REPO")
            .env("HOME", self.dir.path())
            .arg("--config")
            .arg(self.dir.path().join("cfg.toml"))
            .args(args);
        if let Some(p) = &self.pass {
            c.env("LIFEBOAT_PASSPHRASE_FILE", p);
        }
        c
    }

    fn lb(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run lifeboat")
    }

    /// `backup vm1 --json`, asserting success; the volumes by name.
    fn backup(&self) -> Value {
        let out = self.lb(&["backup", "vm1", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "backup failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .last()
            .expect("a JSON result");
        let mut by_name = serde_json::Map::new();
        for v in result["volumes"].as_array().expect("volumes") {
            by_name.insert(v["volume"].as_str().expect("name").into(), v.clone());
        }
        Value::Object(by_name)
    }

    fn fails(&self) -> String {
        let out = self.lb(&["backup", "vm1"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!out.status.success(), "backup should fail: {text}");
        assert!(!text.contains("panicked"), "{text}");
        text
    }

    /// Restores a volume's newest backup to a raw file.
    fn restore(&self, volume: &str) -> PathBuf {
        let to = self.dir.path().join(format!("{volume}.restored"));
        let _ = std::fs::remove_file(&to);
        let r = self
            .cmd(&["restore", &format!("vm1/{volume}@latest"), "--to"])
            .arg(&to)
            .output()
            .expect("restore");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        to
    }

    fn backups(&self, volume: &str) -> usize {
        let dir = self.dir.path().join("repo/manifests/vm1").join(volume);
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }
}

/// Both restored disks hold one instant, the same one.
fn assert_consistent(host: &Host) -> u64 {
    let a = one_instant(&records(&host.restore("vda")).expect("vda records")).expect("vda");
    let b = one_instant(&records(&host.restore("vdb")).expect("vdb records")).expect("vdb");
    let (a, b) = (a.expect("vda has records"), b.unwrap_or(0));
    assert!(
        a == b || a == b + 1,
        "vda is at seq {a} and vdb at {b}: the disks were captured at different instants"
    );
    a
}

fn lifeboat_state(q: &mut Qmp) -> Vec<String> {
    let mut left = Vec::new();
    for (query, key) in [
        ("query-block-exports", "id"),
        ("query-block-jobs", "device"),
        ("query-named-block-nodes", "node-name"),
    ] {
        let v = q.execute(query, json!({})).expect(query);
        for x in v.as_array().into_iter().flatten() {
            let name = x[key].as_str().unwrap_or("");
            if name.starts_with("lifeboat-") {
                left.push(format!("{query}: {name}"));
            }
        }
    }
    let sets = q.execute("query-fdsets", json!({})).expect("fdsets");
    if sets.as_array().is_some_and(|s| !s.is_empty()) {
        left.push(format!("fdsets: {sets}"));
    }
    left
}

/// lifeboat's bitmaps on a disk's format node: (name, recording).
fn bitmaps(q: &mut Qmp, file: &str) -> Vec<(String, bool)> {
    let nodes = q
        .execute("query-named-block-nodes", json!({"flat": true}))
        .expect("nodes");
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["drv"] == "qcow2" && n["file"].as_str().is_some_and(|f| f.ends_with(file)))
        .and_then(|n| n["dirty-bitmaps"].as_array())
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("").to_string(),
                b["recording"].as_bool().unwrap_or(false),
            )
        })
        .filter(|(n, _)| n.starts_with("lifeboat-"))
        .collect()
}

/// Starts a backup and stops it (SIGSTOP) once QEMU exports the captured
/// disks and before any manifest is written, i.e. mid-read; retried when a
/// backup outruns the poll.
fn backup_caught_mid_read(host: &Host, q: &mut Qmp) -> Child {
    let manifests = || host.backups("vda") + host.backups("vdb");
    for _ in 0..10 {
        let before = manifests();
        let mut child = host
            .cmd(&["backup", "vm1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("backup");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let exports = q
                .execute("query-block-exports", json!({}))
                .expect("exports");
            if exports.as_array().is_some_and(|e| !e.is_empty()) {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
                if manifests() == before {
                    return child;
                }
                // Past its reads already: let it finish and try again.
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
    panic!("never caught a backup while QEMU exported the disks");
}

#[test]
fn the_pattern_check_catches_torn_and_mixed_time_reads() {
    let mut disk = vec![0u8; SLOTS * RECORD];
    let put = |disk: &mut Vec<u8>, seq: u64| {
        let slot = (seq % SLOTS as u64) as usize;
        let mut line = format!("LBREC {seq} {slot}");
        while line.len() < 31 {
            line.push('.');
        }
        line.push('\n');
        let rec = line.repeat(128);
        disk[slot * RECORD..(slot + 1) * RECORD].copy_from_slice(rec.as_bytes());
    };
    for seq in 0..600 {
        put(&mut disk, seq);
    }
    assert_eq!(one_instant(&parse_records(&disk).unwrap()), Ok(Some(599)));
    // A reader that copied slot 10 before the writer's seq 522 (= 10 + 2*256).
    let mut mixed = disk.clone();
    put(&mut mixed, 266);
    assert!(one_instant(&parse_records(&mixed).unwrap()).is_err());
    let mut torn = disk.clone();
    torn[5 * RECORD + 1024..5 * RECORD + 1056].copy_from_slice(&disk[6 * RECORD..6 * RECORD + 32]);
    assert!(parse_records(&torn).is_err());
}

#[test]
fn a_running_vm_is_backed_up_at_one_instant_then_incrementally_and_survives_a_killed_backup() {
    let gdir = common::test_dir();
    let mut guest = Guest::boot(gdir.path(), true, &make_disks(gdir.path()));
    let host = Host::new(gdir.path(), Some("qga.sock"), None);
    let mut q = guest.qmp();

    // 1. A full backup while the guest writes: application-consistent.
    let b1 = host.backup();
    for v in ["vda", "vdb"] {
        let c = &b1[v]["capture"];
        assert_eq!(c["consistency"], "application", "{b1:#}");
        assert_eq!(c["incremental"], false);
        assert!(
            c["note"].as_str().unwrap_or("").contains("frozen for"),
            "{c}"
        );
    }
    let at1 = assert_consistent(&host);
    assert!(at1 >= 64, "the guest was writing (seq {at1})");
    let seq_lines = guest.writes();
    guest.wait_for(&format!("live-guest: seq {}", (seq_lines + 1) * 64), 60);
    let mut agent =
        Agent::connect(&gdir.path().join("qga.sock"), Duration::from_secs(10)).expect("agent");
    assert_eq!(agent.freeze_status().expect("status"), "thawed");
    drop(agent);
    assert_eq!(lifeboat_state(&mut q), Vec::<String>::new());

    // 2. The guest rewrites 1% of vda; the next backup reads only that.
    guest.command("dirty 1", "live-guest: dirty done", 120);
    let b2 = host.backup();
    let c = &b2["vda"]["capture"];
    assert_eq!(c["incremental"], true, "{c}");
    let read = c["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read > 0 && read <= GIB / 50,
        "read {read} bytes of a 1 GiB disk"
    );
    assert_eq!(b2["vdb"]["capture"]["incremental"], true);
    assert!(b2["vdb"]["capture"]["bytes_read"].as_u64().unwrap() <= (256 << 20) / 50);
    let at2 = assert_consistent(&host);
    assert!(at2 > at1);

    // 3. Equal to a copy QEMU itself makes at the same point.
    guest.command("pause", "live-guest: paused", 60);
    q.execute("stop", json!({})).expect("stop");
    let reference = gdir.path().join("reference.raw");
    q.execute(
        "drive-backup",
        json!({"device": "vda", "job-id": "test-reference", "sync": "full",
               "target": reference.to_str().unwrap(), "format": "raw"}),
    )
    .expect("drive-backup");
    let deadline = Instant::now() + Duration::from_secs(120);
    while q
        .execute("query-block-jobs", json!({}))
        .expect("jobs")
        .as_array()
        .is_some_and(|j| !j.is_empty())
    {
        assert!(Instant::now() < deadline, "QEMU's own copy never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    let b3 = host.backup();
    assert_eq!(b3["vda"]["capture"]["incremental"], true);
    q.execute("cont", json!({})).expect("cont");
    guest.command("resume", "live-guest: resumed", 60);
    let restored = host.restore("vda");
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&restored)
        .arg(&reference)
        .output()
        .expect("qemu-img compare");
    assert!(
        cmp.status.success(),
        "the restored disk differs from QEMU's copy: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    // 4. lifeboat killed mid-read: QEMU keeps the leftovers until the next
    // backup removes them and merges the interrupted bitmap back.
    let before = bitmaps(&mut q, "va.qcow2");
    assert_eq!(before.len(), 1, "{before:?}");
    guest.command("dirty 2", "live-guest: dirty done", 120);
    // And it keeps writing, 1 MiB at a time, through the kill, the repair
    // and the next backup: a write between two of lifeboat's bitmap
    // commands must land in a bitmap that is kept (the offline backup
    // below is compared with the disk after it stopped).
    guest.send("dirty 4 30");
    let mut child = backup_caught_mid_read(&host, &mut q);
    let err = host.fails();
    assert!(err.contains("another lifeboat is backing up"), "{err}");
    assert_eq!(vms_json(&host)["run"]["status"], "being backed up now");
    // Its private directory in the temp directory names it as owner.
    let owned_by = |pid: u32| -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("lifeboat-live-")
            })
            .filter(|e| {
                std::fs::read_to_string(e.path().join("lifeboat-owner"))
                    .is_ok_and(|o| o.split_whitespace().next() == Some(&pid.to_string()))
            })
            .map(|e| e.path())
            .collect()
    };
    let killed = child.id();
    assert_eq!(owned_by(killed).len(), 1);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let left = lifeboat_state(&mut q);
    assert!(
        !left.is_empty(),
        "the killed backup left nothing to repair?"
    );
    // `vms` names the leftovers (not the disk format), and --repair
    // removes them at once, instead of at the next backup a day away.
    let v = vms_json(&host);
    assert!(
        !v["leftovers"]
            .as_array()
            .map(|a| a.is_empty())
            .unwrap_or(true),
        "{v}"
    );
    let out = host.lb(&["vms", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("repaired: removed"),
        "{text}"
    );
    assert_eq!(lifeboat_state(&mut q), Vec::<String>::new());
    // The interrupted bitmap stays, for the next backup to merge back.
    assert_eq!(bitmaps(&mut q, "va.qcow2").len(), 2);
    let b4 = host.backup();
    assert!(
        owned_by(killed).is_empty(),
        "the killed run's directory stays"
    );
    let c = &b4["vda"]["capture"];
    assert_eq!(
        c["incremental"], true,
        "the merged-back bitmap is trusted: {c}"
    );
    assert!(c["bytes_read"].as_u64().unwrap() <= GIB / 20);
    assert_consistent(&host);
    assert_eq!(lifeboat_state(&mut q), Vec::<String>::new());
    let after = bitmaps(&mut q, "va.qcow2");
    assert_eq!(
        after,
        vec![(c["bitmap"].as_str().unwrap().to_string(), true)],
        "one recording bitmap, the newest backup's"
    );

    // 5. The VM shuts down; its qcow2 disk keeps the persistent bitmap,
    // so an offline backup still reads only what changed. (The guest
    // answers `pause` once `dirty 4` is done: one command at a time.)
    guest.command("pause", "live-guest: paused", 300);
    guest.command("dirty 3", "live-guest: dirty done", 120);
    q.execute("quit", json!({})).expect("quit");
    let _ = guest.child.wait();
    let b5 = host.backup();
    let c = &b5["vda"]["capture"];
    assert_eq!(c["consistency"], "offline");
    assert_eq!(c["incremental"], true, "{c}");
    assert!(c["bytes_read"].as_u64().unwrap() <= GIB / 20);
    assert!(b5["vdb"]["capture"]["full_reason"]
        .as_str()
        .unwrap_or("")
        .contains("raw image"));
    let restored = host.restore("vda");
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&restored)
        .arg(gdir.path().join("va.qcow2"))
        .output()
        .expect("qemu-img compare");
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
}

#[test]
fn faults_a_hung_agent_a_missing_monitor_and_a_vm_that_exits_mid_backup() {
    let gdir = tempfile::tempdir().expect("dir");
    // The agent channel exists but no agent runs in the guest: it hangs.
    let guest = Guest::boot(gdir.path(), false, &make_disks(gdir.path()));
    let host = Host::new(gdir.path(), Some("qga.sock"), None);
    let mut q = guest.qmp();

    let t = Instant::now();
    let b1 = host.backup();
    let c = &b1["vda"]["capture"];
    assert_eq!(c["consistency"], "crash", "{c}");
    assert!(
        c["note"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer in time"),
        "{c}"
    );
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_consistent(&host);
    assert_eq!(lifeboat_state(&mut q), Vec::<String>::new());

    // A monitor path with no socket, then a stale socket nobody listens on:
    // the VM looks stopped, but its disk is locked, so nothing is read.
    for qmp in ["missing.sock", "stale.sock"] {
        let path = host.dir.path().join(qmp);
        if qmp == "stale.sock" {
            drop(UnixListener::bind(&path).expect("bind"));
        }
        host.write_config(gdir.path(), None, Some(&path));
        let err = host.fails();
        assert!(err.contains("in use by a running QEMU"), "{err}");
        assert!(err.contains("qmp"), "{err}");
    }
    host.write_config(gdir.path(), None, None);

    // The VM dies while lifeboat reads it.
    let before = host.backups("vda");
    let child = backup_caught_mid_read(&host, &mut q);
    drop(q);
    let mut guest = guest;
    guest.child.kill().expect("kill QEMU");
    let _ = guest.child.wait();
    // SAFETY: resuming our own stopped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    let out = child.wait_with_output().expect("backup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a backup of a VM that died mid-read succeeded"
    );
    assert!(
        err.contains("did the VM exit") || err.contains("closed the monitor"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        host.backups("vda"),
        before,
        "no manifest for a failed backup"
    );

    // QEMU died without saving its new bitmap: the next (offline) backup
    // reads the whole disk and says why.
    let b2 = host.backup();
    let c = &b2["vda"]["capture"];
    assert_eq!(c["consistency"], "offline");
    assert_eq!(c["incremental"], false);
    assert!(
        c["full_reason"]
            .as_str()
            .unwrap_or("")
            .contains("QEMU stopped without saving it"),
        "{c}"
    );
}

/// QEMU holding the disks with no guest to run (the firmware finds
/// nothing to boot): enough for what lifeboat asks a running VM.
struct BareQemu(Child);

impl BareQemu {
    fn start(dir: &Path) -> BareQemu {
        let child = Command::new("qemu-system-x86_64")
            .args(make_disks(dir))
            .args(["-m", "64"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("qmp.sock").exists() {
            assert!(Instant::now() < deadline, "QEMU never opened its monitor");
            std::thread::sleep(Duration::from_millis(20));
        }
        BareQemu(child)
    }
}

impl Drop for BareQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vms_json(host: &Host) -> Value {
    let out = host.lb(&["vms", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).expect("vms JSON")[0].clone()
}

#[test]
fn vms_and_the_console_show_running_state_last_consistency_and_next_read() {
    let gdir = tempfile::tempdir().expect("dir");
    let qemu = BareQemu::start(gdir.path());
    let host = Host::new(gdir.path(), None, None);

    let v = vms_json(&host);
    assert_eq!(v["run"]["running"], true, "{v}");
    assert!(v["last_backup"].is_null());
    assert!(v["next"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["incremental"] == false
            && n["reason"].as_str().unwrap().contains("no earlier backup")));

    let b = host.backup();
    assert_eq!(b["vda"]["capture"]["consistency"], "crash");
    assert!(b["vda"]["capture"]["note"]
        .as_str()
        .unwrap()
        .contains("no guest agent"));
    let v = vms_json(&host);
    assert_eq!(v["last_backup"]["consistency"], "crash");
    assert!(
        v["next"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["incremental"] == true),
        "{v}"
    );
    // The running VM's own disk is no restore target.
    let out = host
        .cmd(&["restore", "vm1/vda@latest", "--force", "--to"])
        .arg(gdir.path().join("va.qcow2"))
        .output()
        .expect("restore");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("disk of a running QEMU"),
        "{err}"
    );
    let human = String::from_utf8_lossy(&host.lb(&["vms"]).stdout).into_owned();
    assert!(human.contains("running:     running"), "{human}");
    assert!(human.contains("next vda: incremental"), "{human}");

    let mut cmd = portable_pty::CommandBuilder::new(BIN);
    cmd.arg("--config");
    cmd.arg(host.dir.path().join("cfg.toml"));
    cmd.cwd(host.dir.path());
    cmd.env("TERM", "xterm-256color");
    cmd.env("HOME", host.dir.path());
    let mut console = common::pty::open(cmd);
    console.wait_for("vm1 ●", 30);
    console.wait_for(
        "live    running · last crash-consistent · next incremental",
        30,
    );

    // Stopped: the qcow2 disk's bitmap still offers the fast path; the raw
    // one does not, and the console says why.
    let mut qemu = qemu;
    Qmp::connect(&gdir.path().join("qmp.sock"), Duration::from_secs(30))
        .expect("qmp")
        .expect("QEMU runs")
        .execute("quit", json!({}))
        .expect("quit");
    let _ = qemu.0.wait();
    console.keys("R");
    let screen = console.wait_for("live    not running", 30);
    assert!(!screen.contains("vm1 ●"), "{screen}");
    console.keys("q");
    console.wait_exit();
    let v = vms_json(&host);
    assert_eq!(v["run"]["running"], false);
    assert_eq!(v["next"][0]["incremental"], true, "{v}");
    assert_eq!(v["next"][1]["incremental"], false);
}

/// A running VM backed up into an encrypted repository: at one instant,
/// then incrementally from QEMU's dirty bitmap (unchanged chunks taken
/// from the sealed index by name, partly changed ones patched over the
/// previous backup's sealed chunks), and both restore consistent.
#[test]
fn a_running_vm_is_backed_up_into_an_encrypted_repository_and_incrementally() {
    let gdir = tempfile::tempdir().expect("dir");
    let mut guest = Guest::boot(gdir.path(), false, &make_disks(gdir.path()));
    let host = Host::encrypted(gdir.path(), None);
    let b1 = host.backup();
    assert_eq!(b1["vda"]["capture"]["consistency"], "crash", "{b1:#}");
    assert_eq!(b1["vda"]["capture"]["incremental"], false);
    let at1 = assert_consistent(&host);
    guest.command("dirty 1", "live-guest: dirty done", 120);
    let b2 = host.backup();
    let c = &b2["vda"]["capture"];
    assert_eq!(c["incremental"], true, "{c}");
    assert!(
        c["bytes_read"].as_u64().expect("bytes_read") <= GIB / 50,
        "{c}"
    );
    let at2 = assert_consistent(&host);
    assert!(at2 > at1, "{at2} after {at1}");
    // Nothing is readable without the key.
    let out = host
        .cmd(&["verify", "--deep"])
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .output()
        .expect("verify");
    assert!(!out.status.success());
    let out = host.lb(&["verify", "--deep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
