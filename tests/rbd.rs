//! Ceph RBD volumes: a real one-node Ceph 16.2 (scripts/ceph/start.sh: a
//! mon and a memstore OSD on loopback, cephx on), an image written with
//! known data through QEMU's rbd driver, backed up by lifeboat through a
//! restricted client's keyring, incrementally from its own snapshots.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{guest, BIN};
use serde_json::Value;

const MIB: u64 = 1 << 20;

struct Ceph {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/ceph")
        .join(name)
}

impl Ceph {
    fn start() -> Ceph {
        let dir = tempfile::Builder::new()
            .prefix("lb-ceph-")
            .tempdir_in("/tmp")
            .expect("dir");
        let out = Command::new("bash")
            .arg(script("start.sh"))
            .arg(dir.path().join("c"))
            .env("AUTH", "cephx")
            .output()
            .expect("start.sh");
        assert!(
            out.status.success(),
            "ceph did not start (scripts/test.sh installs ceph-mon ceph-osd ceph-common): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("c/ceph.conf");
        Ceph { dir, conf }
    }

    /// A tool run as the cluster's admin.
    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("CEPH_CONF", &self.conf);
        c
    }

    fn ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.cmd(tool).args(args).output().expect(tool);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `len` bytes of `pattern` at `offset`, then waits until the
    /// writer's watch on the image is gone (a snapshot waits for every
    /// watcher to acknowledge).
    fn write(&self, image: &str, offset: u64, len: u64, pattern: u8) {
        self.ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                &format!("rbd:{image}"),
                "-c",
                &format!("write -P {pattern} {offset} {len}"),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self
            .ok("rbd", &["status", image])
            .contains("Watchers: none")
        {
            assert!(Instant::now() < deadline, "the writer's watch never went");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn snaps(&self, image: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&self.ok("rbd", &["snap", "ls", "--format=json", image]))
                .expect("json");
        let mut s: Vec<String> = v
            .as_array()
            .expect("snaps")
            .iter()
            .map(|x| x["name"].as_str().expect("name").to_string())
            .collect();
        s.sort();
        s
    }

    /// The bytes `rbd diff --from-snap FROM SPEC` reports.
    fn diff_bytes(&self, from: &str, spec: &str) -> u64 {
        let v: Value = serde_json::from_str(
            &self.ok("rbd", &["diff", "--from-snap", from, "--format=json", spec]),
        )
        .expect("json");
        v.as_array()
            .expect("extents")
            .iter()
            .map(|e| e["length"].as_u64().expect("length"))
            .sum()
    }

    fn export(&self, spec: &str, to: &Path) {
        let _ = std::fs::remove_file(to);
        self.ok(
            "rbd",
            &["export", "--no-progress", spec, to.to_str().expect("path")],
        );
    }
}

impl Ceph {
    /// A restricted client, as an admin would give lifeboat: its keyring.
    fn backup_client(&self) -> PathBuf {
        let keyring = self.dir.path().join("backup.keyring");
        self.ok(
            "ceph",
            &[
                "auth",
                "get-or-create",
                "client.backup",
                "mon",
                "profile rbd",
                "osd",
                "profile rbd pool=rbd",
                "-o",
                keyring.to_str().expect("path"),
            ],
        );
        // Private, as lifeboat requires of a file holding a key.
        common::secret_file(
            &keyring,
            &std::fs::read_to_string(&keyring).expect("keyring"),
        );
        keyring
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("stop.sh"))
            .arg(self.dir.path().join("c"))
            .output();
    }
}

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(ceph: &Ceph, keyring: &Path) -> Host {
        let h = Host::bare();
        h.config(ceph, keyring);
        h.init();
        h
    }

    fn bare() -> Host {
        Host {
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    fn init(&self) {
        let out = self.lb(&["init", "repo"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn config(&self, ceph: &Ceph, keyring: &Path) {
        std::fs::write(
            self.dir.path().join("cfg.toml"),
            format!(
                r#"repository = "repo"

[ceph]
conf = "{}"
id = "backup"
keyring = "{}"

[[vm]]
name = "rv"
[[vm.volume]]
name = "root"
role = "root"
path = "rbd:rbd/disk"
"#,
                ceph.conf.display(),
                keyring.display()
            ),
        )
        .expect("config");
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .env_remove("LIFEBOAT_REPO")
            .env_remove("CEPH_CONF")
            .env("HOME", self.dir.path())
            .arg("--config")
            .arg(self.dir.path().join("cfg.toml"))
            .args(args);
        c
    }

    fn lb(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("lifeboat")
    }

    /// `backup rv --json`: the root volume's capture record.
    fn backup(&self) -> Value {
        self.backup_of("rv")["root"].clone()
    }

    /// `backup VM --json`: each volume's capture record by name.
    fn backup_of(&self, vm: &str) -> Value {
        let out = self.lb(&["backup", vm, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "backup failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .last()
            .expect("a JSON result");
        let mut by_name = serde_json::Map::new();
        for v in r["volumes"].as_array().expect("volumes") {
            by_name.insert(
                v["volume"].as_str().expect("name").into(),
                v["capture"].clone(),
            );
        }
        Value::Object(by_name)
    }

    fn restore(&self) -> PathBuf {
        let to = self.dir.path().join("restored.raw");
        let _ = std::fs::remove_file(&to);
        let out = self
            .cmd(&["restore", "rv/root@latest", "--to"])
            .arg(&to)
            .output()
            .expect("restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        to
    }

    fn manifests(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("repo/manifests/rv/root"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("a") == std::fs::read(b).expect("b")
}

/// A backup stopped (SIGSTOP) after it took its snapshot and before it
/// wrote a manifest.
fn backup_caught_with_its_snapshot(h: &Host, ceph: &Ceph) -> Child {
    for _ in 0..30 {
        let before = (h.manifests(), ceph.snaps("rbd/disk"));
        let mut child = h
            .cmd(&["backup", "rv"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("backup");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if ceph.snaps("rbd/disk") != before.1 {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
                if h.manifests() == before.0 {
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
    panic!("never caught a backup between its snapshot and its manifest");
}

#[test]
fn rbd_images_are_backed_up_from_their_own_snapshots_incrementally_by_extents() {
    let ceph = Ceph::start();
    let keyring = ceph.backup_client();
    ceph.ok("rbd", &["create", "rbd/disk", "--size", "256M"]);
    ceph.write("rbd/disk", 0, 16 * MIB, 0x11);
    ceph.write("rbd/disk", 100 * MIB, 8 * MIB, 0x22);
    let h = Host::new(&ceph, &keyring);

    // Full: everything the image holds, nothing it does not.
    let c = h.backup();
    assert_eq!(c["incremental"], false, "{c}");
    assert_eq!(c["consistency"], "crash", "{c}");
    assert_eq!(c["bytes_read"].as_u64(), Some(24 * MIB), "{c}");
    let s1 = c["bitmap"].as_str().expect("snapshot").to_string();
    assert_eq!(ceph.snaps("rbd/disk"), std::slice::from_ref(&s1));
    let exported = h.dir.path().join("export.raw");
    ceph.export(&format!("rbd/disk@{s1}"), &exported);
    assert!(
        same(&h.restore(), &exported),
        "the restore equals rbd export"
    );

    // An admin's snapshot, never touched.
    ceph.ok("rbd", &["snap", "create", "rbd/disk@admin"]);

    // Three incrementals with known changed extents.
    let mut base = s1;
    for k in 1..=3u64 {
        let (a, b) = (k * 37 * MIB, 200 * MIB + k * 64 * 1024);
        ceph.write("rbd/disk", a, MIB, 0x30 + k as u8);
        ceph.write("rbd/disk", b, 64 * 1024, 0x40 + k as u8);
        // What Ceph itself says changed (a new object's extent runs from
        // its start: a 1 MiB write at 37 MiB is reported as 36..38 MiB).
        let reported = ceph.diff_bytes(&base, "rbd/disk");
        let c = h.backup();
        assert_eq!(c["incremental"], true, "round {k}: {c}");
        let read = c["bytes_read"].as_u64().expect("bytes_read");
        let s = c["bitmap"].as_str().expect("snapshot").to_string();
        let written = MIB + 64 * 1024;
        assert!(
            read >= written && read as f64 <= 1.1 * reported as f64,
            "round {k}: read {read} bytes; {written} written, rbd diff reports {reported}"
        );
        let mut want = vec!["admin".to_string(), s.clone()];
        want.sort();
        assert_eq!(
            ceph.snaps("rbd/disk"),
            want,
            "round {k}: {base} removed, admin kept"
        );
        ceph.export(&format!("rbd/disk@{s}"), &exported);
        assert!(same(&h.restore(), &exported), "round {k}: byte-exact");
        base = s;
    }

    // The live image hashes like its newest backup (nothing changed since),
    // read through a snapshot of its own that is gone afterwards.
    let digest = |what: &str| -> Value {
        let out = h.lb(&["hash", what, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .last()
            .expect("json");
        v["digest"].clone()
    };
    let restored = h.restore();
    assert_eq!(
        digest("rbd:rbd/disk"),
        digest(restored.to_str().expect("path"))
    );
    assert!(
        !ceph.snaps("rbd/disk").iter().any(|s| s.contains("read")),
        "no read snapshot left"
    );

    // A backup killed between its snapshot and its manifest: the next one
    // is still incremental from the last good snapshot and removes the
    // killed one's.
    ceph.write("rbd/disk", 50 * MIB, MIB, 0x55);
    let mut child = backup_caught_with_its_snapshot(&h, &ceph);
    child.kill().expect("kill");
    let _ = child.wait();
    assert_eq!(
        ceph.snaps("rbd/disk").len(),
        3,
        "base, admin and the killed run's"
    );
    // `vms` names it, and `vms --repair` could remove it at once; here the
    // next backup does.
    let vms = |args: &[&str]| -> Value {
        let mut a = vec!["vms", "--json"];
        a.extend_from_slice(args);
        let out = h.lb(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("vms JSON")[0].clone()
    };
    let left = vms(&[])["leftovers"].to_string();
    assert!(left.contains("RBD snapshot rbd/disk@lifeboat-"), "{left}");
    let c = h.backup();
    assert_eq!(c["incremental"], true, "{c}");
    let s = c["bitmap"].as_str().expect("snapshot").to_string();
    let mut want = vec!["admin".to_string(), s.clone()];
    want.sort();
    assert_eq!(ceph.snaps("rbd/disk"), want);
    ceph.export(&format!("rbd/disk@{s}"), &exported);
    assert!(same(&h.restore(), &exported));

    // A stray lifeboat snapshot (another repository's, a failed run's):
    // `vms --repair` removes it now; the base and the admin's stay.
    let stray = format!("lifeboat-{}", "0".repeat(32));
    ceph.ok("rbd", &["snap", "create", &format!("rbd/disk@{stray}")]);
    let v = vms(&["--repair"]);
    assert!(
        v["repaired"].to_string().contains(&stray)
            && v["leftovers"].as_array().is_none_or(|a| a.is_empty()),
        "{v:#}"
    );
    assert_eq!(ceph.snaps("rbd/disk"), want);
    // The daemon's repair pass removes one too, without waiting for the
    // VM's next backup.
    ceph.ok("rbd", &["snap", "create", &format!("rbd/disk@{stray}")]);
    let mut daemon = h
        .cmd(&["daemon"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    let deadline = Instant::now() + Duration::from_secs(120);
    while ceph.snaps("rbd/disk") != want {
        if Instant::now() > deadline || matches!(daemon.try_wait(), Ok(Some(_))) {
            let _ = daemon.kill();
            let out = daemon.wait_with_output().expect("daemon output");
            panic!(
                "the daemon left {:?}: {}",
                ceph.snaps("rbd/disk"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling our own child; SIGTERM is its clean stop.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().expect("daemon").success());

    // Restored onto RBD: a new thin image, byte-exact; an existing one
    // only with --force.
    let to_rbd = |force: bool| {
        let mut a = vec!["restore", "rv/root@latest", "--to", "rbd:rbd/restored"];
        if force {
            a.push("--force");
        }
        h.lb(&a)
    };
    let out = to_rbd(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = h.dir.path().join("back.raw");
    ceph.export("rbd/restored", &back);
    assert!(
        same(&back, &exported),
        "the RBD restore equals the snapshot"
    );
    let du: Value = serde_json::from_str(&ceph.ok("rbd", &["du", "--format=json", "rbd/restored"]))
        .expect("json");
    let used = du["images"][0]["used_size"].as_u64().expect("used");
    // 11 chunks of 4 MiB hold data (6 written at first, one per round,
    // one at 200 MiB, one before the killed backup); the rest of the
    // 256 MiB must stay unallocated.
    assert!(
        used <= 11 * 4 * MIB,
        "zero chunks are never written: {used} bytes used of 256 MiB"
    );
    let out = to_rbd(false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    ceph.write("rbd/restored", 0, MIB, 0x77);
    let out = to_rbd(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ceph.export("rbd/restored", &back);
    assert!(same(&back, &exported), "--force replaced it");
    let images = ceph.ok("rbd", &["ls"]);
    assert!(
        !images.contains("lifeboat-restore"),
        "no restore image left: {images}"
    );

    // The base snapshot lost: a full read that says why.
    ceph.ok("rbd", &["snap", "rm", &format!("rbd/disk@{s}")]);
    let c = h.backup();
    assert_eq!(c["incremental"], false);
    assert!(
        c["full_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("no snapshot {s}"))),
        "{c}"
    );

    // A wrong key: a clear error, nothing written, no snapshot left.
    let before = (h.manifests(), ceph.snaps("rbd/disk"));
    let bad = h.dir.path().join("bad.keyring");
    common::secret_file(
        &bad,
        "[client.backup]\n\tkey = AQBq5jJlAAAAABAAoQ2nL0s8lZ3u9l2k8m0G5Q==\n",
    );
    h.config(&ceph, &bad);
    let out = h.lb(&["backup", "rv"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("rbd:rbd/disk") && err.contains("check [ceph] id and keyring"),
        "{err}"
    );
    assert_eq!((h.manifests(), ceph.snaps("rbd/disk")), before);
}

/// Both restored volumes of the newest backup hold one instant.
fn assert_one_instant(h: &Host) -> u64 {
    let mut seqs = Vec::new();
    for v in ["vda", "vdb"] {
        let to = h.dir.path().join(format!("{v}.raw"));
        let _ = std::fs::remove_file(&to);
        let out = h
            .cmd(&["restore", &format!("rv2/{v}@latest"), "--to"])
            .arg(&to)
            .output()
            .expect("restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recs = guest::records(&to).expect("records");
        seqs.push(guest::one_instant(&recs).expect("one instant within the volume"));
    }
    let (a, b) = (seqs[0].expect("vda has records"), seqs[1].unwrap_or(0));
    assert!(
        a == b || a == b + 1,
        "vda is at seq {a} and vdb at {b}: the volumes were snapshotted at different instants"
    );
    a
}

#[test]
fn a_running_vm_on_rbd_is_snapshotted_at_one_instant_frozen_or_paused() {
    let ceph = Ceph::start();
    let keyring = ceph.backup_client();
    for img in ["rbd/va", "rbd/vb"] {
        ceph.ok("rbd", &["create", img, "--size", "64M"]);
    }
    let gdir = common::test_dir();
    let conf = ceph.conf.display().to_string();
    let disk = |img: &str, id: &str| {
        format!("file=rbd:{img}:conf={conf},if=virtio,format=raw,id={id},cache=writeback")
    };
    let qmp = gdir.path().join("qmp.sock");
    let args: Vec<String> = [
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        &disk("rbd/va", "vda"),
        "-drive",
        &disk("rbd/vb", "vdb"),
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    // Declared after the cluster: it stops first.
    let guest = guest::Guest::boot(gdir.path(), true, &args);
    let h = Host::bare();
    let config = |agent: bool, extra: &str| {
        let agent = if agent {
            format!(
                "guest_agent = \"{}\"\nfreeze_timeout = 5\n",
                gdir.path().join("qga.sock").display()
            )
        } else {
            String::new()
        };
        std::fs::write(
            h.dir.path().join("cfg.toml"),
            format!(
                r#"repository = "repo"

[ceph]
conf = "{conf}"
id = "backup"
keyring = "{}"

[[vm]]
name = "rv2"
qmp = "{}"
{agent}
[[vm.volume]]
name = "vda"
role = "root"
path = "rbd:rbd/va"
[[vm.volume]]
name = "vdb"
path = "rbd:rbd/vb"
{extra}"#,
                keyring.display(),
                qmp.display()
            ),
        )
        .expect("config");
    };
    config(true, "");
    h.init();

    // Frozen by the agent while both snapshots are taken.
    let b1 = h.backup_of("rv2");
    for v in ["vda", "vdb"] {
        let c = &b1[v];
        assert_eq!(c["consistency"], "application", "{b1:#}");
        assert_eq!(c["incremental"], false, "{c}");
        let note = c["note"].as_str().unwrap_or("");
        assert!(
            note.contains(
                "2 RBD volumes were snapshotted one after another with the VM paused for"
            ) && note.contains("and the guest's filesystems frozen: one instant"),
            "{note}"
        );
    }
    let at1 = assert_one_instant(&h);

    // `vms` tells from the snapshots that the next backup is incremental.
    let out = h.lb(&["vms", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("vms JSON");
    let vols = v[0]["next"].as_array().expect("next reads").clone();
    assert_eq!(vols.len(), 2, "{v:#}");
    assert!(vols.iter().all(|x| x["incremental"] == true), "{v:#}");

    // The console shows the RBD VM like any other: running, how its last
    // backup was made, what the next one reads.
    let mut console = common::pty::console_in(h.dir.path());
    console.wait_for("rv2 ●", 60);
    console.wait_for(
        "live    running · last application-consistent · next incremental",
        60,
    );
    console.keys("q");
    console.wait_exit();

    // Without the agent: paused all the same, then it runs on.
    guest.wait_for(&format!("live-guest: seq {}", (at1 / 64 + 2) * 64), 120);
    config(false, "");
    let b2 = h.backup_of("rv2");
    for v in ["vda", "vdb"] {
        let c = &b2[v];
        assert_eq!(c["consistency"], "crash", "{b2:#}");
        assert_eq!(c["incremental"], true, "{c}");
        let note = c["note"].as_str().unwrap_or("");
        assert!(
            note.contains("with the VM paused for") && note.contains("no guest agent"),
            "{note}"
        );
        // Only the record area changed: at most one 4 MiB chunk.
        assert!(
            c["bytes_read"].as_u64().unwrap_or(u64::MAX) <= 4 * MIB,
            "{c}"
        );
    }
    let at2 = assert_one_instant(&h);
    assert!(at2 > at1, "the guest wrote on: {at1} then {at2}");
    let mut q = guest.qmp();
    let status = q
        .execute("query-status", serde_json::json!({}))
        .expect("status");
    assert_eq!(status["status"], "running", "resumed after the snapshots");
    let seen = guest.writes();
    guest.wait_for(&format!("live-guest: seq {}", (seen + 1) * 64), 120);
    // One snapshot per image: the newest backup's, the base of the next.
    for (img, v) in [("rbd/va", "vda"), ("rbd/vb", "vdb")] {
        assert_eq!(
            ceph.snaps(img),
            vec![b2[v]["bitmap"].as_str().expect("snapshot").to_string()]
        );
    }

    // The whole VM restored onto the pool: under the names the images had
    // (taken: refused, nothing written), or as NAME-VOLUME.
    let out = h.lb(&["restore", "rv2@latest", "--to", "rbd:rbd"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rbd:rbd/va"), "{err}");
    let out = h.lb(&[
        "restore",
        "rv2@latest",
        "--to",
        "rbd:rbd",
        "--name",
        "back",
        "--define",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no domain XML"),
        "{err}"
    );
    let out = h.lb(&["restore", "rv2@latest", "--to", "rbd:rbd", "--name", "back"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_one_instant(&h);
    for v in ["vda", "vdb"] {
        let exported = h.dir.path().join(format!("{v}.export"));
        ceph.export(&format!("rbd/back-{v}"), &exported);
        assert!(
            same(&exported, &h.dir.path().join(format!("{v}.raw"))),
            "rbd/back-{v} holds the backup"
        );
    }

    // A file among RBD volumes: refused, with the way out.
    let extra = format!(
        "[[vm.volume]]\nname = \"vdc\"\npath = \"{}\"\n",
        gdir.path().join("fs.raw").display()
    );
    config(false, &extra);
    let out = h.lb(&["backup", "rv2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is a file while others are RBD images"),
        "{err}"
    );
    drop(guest);
}

/// A VM whose disk lives in RBD drills like any other: backed up from its
/// snapshot, restored to scratch files, booted, checked.
#[test]
fn an_rbd_backed_vm_is_drilled_from_its_backup() {
    let ceph = Ceph::start();
    let keyring = ceph.backup_client();
    let h = Host::bare();
    // The demo's bootable guest, imported into the pool.
    let raw = h.dir.path().join("boot.raw");
    guest::demo_disk(&raw, "rbdvm");
    ceph.ok(
        "rbd",
        &[
            "import",
            "--no-progress",
            raw.to_str().expect("path"),
            "rbd/boot",
        ],
    );
    std::fs::remove_file(&raw).expect("rm");
    std::fs::create_dir(h.dir.path().join("scratch")).expect("scratch");
    std::fs::write(
        h.dir.path().join("cfg.toml"),
        format!(
            r#"repository = "repo"

[ceph]
conf = "{}"
id = "backup"
keyring = "{}"

[[vm]]
name = "rbdvm"
vcpus = 1
memory_mib = 256
[[vm.volume]]
name = "root"
role = "root"
path = "rbd:rbd/boot"
[vm.check]
serial = "rbdvm login:"
http = {{ port = 8080, path = "/", expect = "the application answers" }}
timeout_secs = 120
"#,
            ceph.conf.display(),
            keyring.display()
        ),
    )
    .expect("config");
    h.init();
    let out = h.lb(&["backup", "rbdvm"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scratch = h.dir.path().join("scratch");
    let out = h
        .cmd(&["--json", "drill", "rbdvm", "--scratch"])
        .arg(&scratch)
        .output()
        .expect("drill");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "no drill report ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(r["outcome"], "pass", "{r:#}");
    assert_eq!(r["boot"]["checks"][0]["ok"], true, "{r:#}");
    assert!(
        std::fs::read_dir(&scratch)
            .expect("scratch")
            .next()
            .is_none(),
        "the drill leaves its scratch directory empty"
    );
}
