//! Restore to a cloud, whole flows through the real binary: a two-volume
//! VM set (raw root, qcow2 data) backed up, pushed to a real `lifeboat
//! serve` on loopback, and brought up
//! - in OpenStack: against `tests/support/openstack_standin.py`, a
//!   STAND-IN written to the OpenStack API reference (no third-party
//!   emulator of Keystone/Glance/Nova/Cinder exists), which keeps the
//!   uploaded bytes so the test compares them with the backup;
//! - in AWS: against moto in server mode (a third-party emulator of EC2 and
//!   the EBS direct APIs, installed by scripts/test.sh), the snapshot
//!   blocks read back through moto's GetSnapshotBlock with boto3;
//!
//! and `export` into the Garage cluster, read back with an independent S3
//! client.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::remote::{add_token, Server};
use common::{noise, qemu_img, write_at, BIN};
use sha2::Digest;

const OS_PASSWORD: &str = "s3cret-pw";

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A site: a config, a local repository with one backup of VM `web`
/// (root raw 24 MiB, data qcow2 12 MiB), pushed to a served remote.
struct Site {
    dir: tempfile::TempDir,
    _server: Server,
    token: String,
    root: PathBuf,
    data: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let p = |r: &str| dir.path().join(r);
        // Root: data, a zero stretch (no chunks), more data, a sparse tail.
        let root = p("web-root.raw");
        write_at(&root, 0, &noise(4 << 20, 1));
        write_at(&root, 12 << 20, &noise(1 << 20, 2));
        write_at(
            &root,
            (20 << 20) + 4096,
            b"the root filesystem's last words",
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&root)
            .unwrap()
            .set_len(24 << 20)
            .unwrap();
        let data = p("web-data.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", data.to_str().unwrap(), "12M"]);
        let raw = p("data-src.raw");
        write_at(&raw, 0, &noise(3 << 20, 3));
        write_at(&raw, 9 << 20, &noise(700 << 10, 4));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&raw)
            .unwrap()
            .set_len(12 << 20)
            .unwrap();
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            data.to_str().unwrap(),
        ]);
        let tokens = p("tokens.toml");
        let token = add_token(&tokens, "site", "admin");
        let out = Command::new(BIN)
            .args(["init", "--chunk-size", "1M"])
            .arg(p("offsite"))
            .env_remove("LIFEBOAT_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = Server::start(&p("offsite"), &tokens, "127.0.0.1:0");
        std::fs::write(
            p("lifeboat.toml"),
            format!(
                r#"repository = "repo"

[remote.offsite]
url = "{}/"
token_env = "LB_TOKEN"

[[vm]]
name = "web"
[[vm.volume]]
name = "root"
role = "root"
path = "{}"
format = "raw"
[[vm.volume]]
name = "data"
role = "data"
path = "{}"
format = "qcow2"
"#,
                server.url,
                root.display(),
                data.display()
            ),
        )
        .unwrap();
        let s = Site {
            dir,
            _server: server,
            token,
            root,
            data,
        };
        s.ok(&["init", "--chunk-size", "1M"]);
        s.ok(&["backup", "web"]);
        s.ok(&["push", "offsite"]);
        s.ok(&["restore", "web/root@latest", "--to", "expect-root.raw"]);
        s.ok(&["restore", "web/data@latest", "--to", "expect-data.raw"]);
        s
    }

    fn path(&self, r: &str) -> PathBuf {
        self.dir.path().join(r)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .env_remove("LIFEBOAT_REPO")
            .env("LIFEBOAT_CONFIG", self.path("lifeboat.toml"))
            .env("HOME", self.dir.path())
            .env("LB_TOKEN", &self.token)
            .env("OS_PASSWORD", OS_PASSWORD)
            .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
            .env(
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            )
            .env_remove("AWS_SESSION_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "lifeboat {args:?} failed:\n{text}");
        assert_no_secrets(&text);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "lifeboat {args:?} should fail:\n{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
        assert_no_secrets(&text);
        text
    }

    /// Replaces (or adds) the `[cloud.NAME]` table.
    fn set_cloud(&self, name: &str, table: &str) {
        let cfg = std::fs::read_to_string(self.path("lifeboat.toml")).unwrap();
        let head = format!("[cloud.{name}]");
        let mut kept = String::new();
        let mut skipping = false;
        for l in cfg.lines() {
            if l.starts_with('[') {
                skipping = l == head;
            }
            if !skipping {
                kept.push_str(l);
                kept.push('\n');
            }
        }
        kept.push_str(&format!("\n{head}\n{table}\n"));
        std::fs::write(self.path("lifeboat.toml"), kept).unwrap();
    }
}

fn assert_no_secrets(text: &str) {
    for s in [OS_PASSWORD, "wJalrXUtnFEMI", "app-s3cret"] {
        assert!(!text.contains(s), "a secret reached the output: {text}");
    }
}

// ---------------------------------------------------------------- OpenStack

struct Standin {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Standin {
    fn start() -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/openstack_standin.py"
            ))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the OpenStack stand-in");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap()
            .parse()
            .unwrap();
        Standin { child, port, dir }
    }

    fn url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}{p}", self.port)
    }

    fn state(&self) -> serde_json::Value {
        http_json("GET", &self.url("/_standin/state"), None)
    }

    fn fault(&self, name: &str) {
        http_json(
            "POST",
            &self.url("/_standin/fault"),
            Some(serde_json::json!({ "fault": name })),
        );
    }

    fn table(&self, extra: &str) -> String {
        format!(
            "provider = \"openstack\"\nendpoint = \"{}\"\nusername = \"admin\"\nproject = \"dr\"\npassword_env = \"OS_PASSWORD\"\nflavor = \"m1.small\"\nnetwork = \"dr-net\"\nkey_pair = \"admin-key\"\nsecurity_group = \"default\"\nready_timeout_secs = 4\n{extra}",
            self.url("/identity/v3")
        )
    }

    /// Nothing left in the cloud.
    fn assert_empty(&self) {
        let s = self.state();
        for k in ["images", "servers", "volumes"] {
            assert!(
                s[k].as_object().unwrap().is_empty(),
                "left behind in the cloud: {s:#}"
            );
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

fn http_json(method: &str, url: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = common::http();
        let mut r = c.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap().json().await.unwrap()
    })
}

#[test]
fn openstack_two_volume_set_from_a_served_remote() {
    let site = Site::new();
    let cloud = Standin::start();
    site.set_cloud("osp", &cloud.table(""));

    // cloud ls: auth, flavor, network, security group, key pair.
    let ls = site.ok(&["cloud", "ls"]);
    for want in [
        "osp  openstack  ok",
        "auth: ok (password",
        "flavor m1.small: ok",
        "network dr-net: ok",
        "key pair admin-key: ok",
    ] {
        assert!(ls.contains(want), "{want:?} in {ls}");
    }

    // A dry run plans and creates nothing; the global upload limit is
    // taken (and said), not ignored.
    let plan = site.ok(&[
        "--limit-upload",
        "64M",
        "cloud-restore",
        "web@latest",
        "--target",
        "osp",
        "--from",
        "offsite",
        "--dry-run",
    ]);
    assert!(
        plan.contains("Glance image") && plan.contains("Cinder volume"),
        "{plan}"
    );
    assert!(
        plan.contains("target checked:") && plan.contains("network dr-net: ok"),
        "the plan checks the target read-only: {plan}"
    );
    assert!(
        plan.contains("bytes to upload: 36.0 MiB (at most 64.0 MiB/s: --limit-upload)"),
        "{plan}"
    );
    cloud.assert_empty();

    // Under the same limit the restore arrives whole (the limiter is the
    // push's `store::throttle`, whose rate benches/wan_bench.rs measures;
    // nothing is timed here).
    let out: serde_json::Value = serde_json::from_str(&site.ok(&[
        "--json",
        "--limit-upload",
        "64M",
        "cloud-restore",
        "web@latest",
        "--target",
        "osp",
        "--from",
        "offsite",
    ]))
    .unwrap();
    let sid = out["server"]["id"].as_str().unwrap();
    assert_eq!(out["server"]["status"], "ACTIVE");
    assert!(
        out["server"]["addresses"][0]
            .as_str()
            .unwrap()
            .starts_with("10.0.0."),
        "{out:#}"
    );
    assert!(
        out["server"]["console"]
            .as_str()
            .unwrap()
            .contains("vnc_auto.html"),
        "{out:#}"
    );
    assert_eq!(out["uploaded_bytes"], 36 << 20);

    // The cloud holds exactly the backup's bytes.
    let s = cloud.state();
    let srv = &s["servers"][sid];
    assert_eq!(srv["status"], "ACTIVE", "{s:#}");
    let root_img = &s["images"][srv["image"].as_str().unwrap()];
    assert_eq!(
        root_img["sha256"].as_str().unwrap(),
        sha256(&site.path("expect-root.raw"))
    );
    assert_eq!(sha256(&site.path("expect-root.raw")), sha256(&site.root));
    assert_eq!(
        s["images"].as_object().unwrap().len(),
        1,
        "the data volume's image is removed once the volume exists: {s:#}"
    );
    let vols = s["volumes"].as_object().unwrap();
    assert_eq!(vols.len(), 1);
    let (vid, vol) = vols.iter().next().unwrap();
    assert_eq!(vol["status"], "in-use");
    assert_eq!(srv["volumes"][0].as_str().unwrap(), vid);
    assert_eq!(
        vol["sha256"].as_str().unwrap(),
        sha256(&site.path("expect-data.raw"))
    );
    let _ = &site.data;

    // An application credential works too (and from the local repository).
    let cloud2 = Standin::start();
    site.set_cloud(
        "osp",
        &format!(
            "provider = \"openstack\"\nendpoint = \"{}\"\napplication_credential_id = \"app-cred-1\"\napplication_credential_secret_env = \"APP_SECRET\"\nflavor = \"2\"\nnetwork = \"dr-net\"\n",
            cloud2.url("/identity/v3")
        ),
    );
    let out = site
        .cmd()
        .env("APP_SECRET", "app-s3cret")
        .args(["cloud-restore", "web@latest", "--target", "osp"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_no_secrets(&text);
    for want in [
        "auth: ok (application credential",
        "upload root:",
        "server web-restored-",
        "is ACTIVE",
        "console: http://",
        "created:",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
}

/// A recovery plan into a cloud: its VMs created in start order on the
/// target's network; when the second cannot be created, the first goes
/// too and nothing is left.
#[test]
fn openstack_plan_brings_up_its_vms_in_order_or_nothing() {
    let site = Site::new();
    let db = site.path("db-root.raw");
    write_at(&db, 0, &noise(3 << 20, 9));
    let mut cfg = std::fs::read_to_string(site.path("lifeboat.toml")).unwrap();
    cfg.push_str(&format!(
        "\n[[vm]]\nname = \"db\"\n[[vm.volume]]\nname = \"root\"\nrole = \"root\"\npath = \"{}\"\nformat = \"raw\"\n\n[plan.svc]\n[[plan.svc.vm]]\nname = \"web\"\nafter = [\"db\"]\n[[plan.svc.vm]]\nname = \"db\"\n",
        db.display()
    ));
    std::fs::write(site.path("lifeboat.toml"), cfg).unwrap();
    site.ok(&["backup", "db"]);
    site.ok(&["push", "offsite"]);
    let cloud = Standin::start();
    site.set_cloud("osp", &cloud.table(""));
    let dry = site.ok(&[
        "cloud-restore",
        "--plan",
        "svc",
        "--target",
        "osp",
        "--from",
        "offsite",
        "--dry-run",
    ]);
    assert!(dry.contains("dry run: nothing was created"), "{dry}");
    cloud.assert_empty();
    let out = site.ok(&[
        "cloud-restore",
        "--plan",
        "svc",
        "--target",
        "osp",
        "--from",
        "offsite",
    ]);
    let (d, w) = (
        out.find("  db: server").unwrap(),
        out.find("  web: server").unwrap(),
    );
    assert!(d < w, "db starts before web, which waits for it: {out}");
    let s = cloud.state();
    assert_eq!(s["servers"].as_object().unwrap().len(), 2, "{s:#}");
    // Room for one server only: db is made, web is refused, db goes again.
    let cloud = osp_with_fault(&site, "quota-1", 4);
    let text = site.fails(&[
        "cloud-restore",
        "--plan",
        "svc",
        "--target",
        "osp",
        "--from",
        "offsite",
    ]);
    assert!(text.contains("Quota exceeded for instances"), "{text}");
    assert!(
        text.contains("removed: ") && text.contains("server "),
        "{text}"
    );
    cloud.assert_empty();
    // Options of one VM's restore are refused with a plan.
    let text = site.fails(&[
        "cloud-restore",
        "web@latest",
        "--plan",
        "svc",
        "--target",
        "osp",
    ]);
    assert!(text.contains("cannot be used with"), "{text}");
}

/// A fresh OpenStack stand-in as target `osp`, with `fault` on and the
/// target's `ready_timeout_secs` at `ready_secs`.
fn osp_with_fault(site: &Site, fault: &str, ready_secs: u64) -> Standin {
    let cloud = Standin::start();
    site.set_cloud(
        "osp",
        &cloud.table("").replace(
            "ready_timeout_secs = 4",
            &format!("ready_timeout_secs = {ready_secs}"),
        ),
    );
    cloud.fault(fault);
    cloud
}

/// Starts a restore into `target`, sends it Ctrl-C once `started()` holds,
/// and returns its stderr; it must exit 130 (cancelled).
/// Runs a restore and sends it `signal` once `started` holds: SIGINT is
/// Ctrl-C, SIGTERM what `timeout` and systemd send, SIGHUP a dropped SSH
/// session. Each must cancel and clean up alike.
fn cancelled_restore(
    site: &Site,
    target: &str,
    signal: libc::c_int,
    started: impl Fn() -> bool,
) -> String {
    let mut child = site
        .cmd()
        .args([
            "cloud-restore",
            "web@latest",
            "--target",
            target,
            "--from",
            "offsite",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started() {
        assert!(Instant::now() < deadline, "the restore never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert_no_secrets(&err);
    err
}

/// Runs a restore that must fail; returns its output. The cloud must be
/// left empty and the output must say what was removed.
fn restore_fails(site: &Site, cloud: &Standin, wants: &[&str]) -> String {
    let text = site.fails(&[
        "cloud-restore",
        "web@latest",
        "--target",
        "osp",
        "--from",
        "offsite",
    ]);
    for w in wants {
        assert!(text.contains(w), "{w:?} in:\n{text}");
    }
    cloud.assert_empty();
    text
}

#[test]
fn openstack_faults_are_reported_and_cleaned_up() {
    let site = Site::new();

    // Refused credentials: named, with the cloud's message; nothing created.
    let cloud = Standin::start();
    site.set_cloud("osp", &cloud.table(""));
    let out = site
        .cmd()
        .env("OS_PASSWORD", "wrong")
        .args(["cloud", "ls"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains("osp  openstack  FAILED")
            && text.contains("Keystone refused the password")
            && text.contains("requires authentication"),
        "{text}"
    );

    // A flavor and a network that do not exist.
    site.set_cloud("osp", &cloud.table("").replace("m1.small", "m9.huge"));
    restore_fails(&site, &cloud, &["cloud osp: flavor: flavor \"m9.huge\" does not exist (the cloud has: m1.tiny, m1.small)"]);
    site.set_cloud("osp", &cloud.table("").replace("dr-net", "no-net"));
    restore_fails(&site, &cloud, &["network \"no-net\" does not exist"]);
    site.set_cloud("osp", &cloud.table(""));

    // Quota: Nova's own words, the phase, and the uploaded images removed.
    cloud.fault("quota");
    restore_fails(&site, &cloud, &["cloud osp: server: Quota exceeded for instances: Requested 1, but already used 10 of 10 instances (HTTP 403)", "removed: image"]);
    http_json(
        "POST",
        &cloud.url("/_standin/fault"),
        Some(serde_json::json!({})),
    );

    // A server that goes to ERROR: the fault shown, server and images removed.
    cloud.fault("server-error");
    restore_fails(
        &site,
        &cloud,
        &[
            "went to ERROR: No valid host was found",
            "removed: server",
            "image",
        ],
    );
    // --keep-on-failure keeps them, and says so.
    let text = site.fails(&[
        "cloud-restore",
        "web@latest",
        "--target",
        "osp",
        "--from",
        "offsite",
        "--keep-on-failure",
    ]);
    assert!(text.contains("kept (--keep-on-failure): "), "{text}");
    assert_eq!(cloud.state()["servers"].as_object().unwrap().len(), 1);
    drop(cloud);

    // An image stuck in queued after its upload.
    let cloud = osp_with_fault(&site, "image-stuck", 4);
    restore_fails(
        &site,
        &cloud,
        &[
            "cloud osp: image root: image",
            "is still not active",
            "removed: image",
        ],
    );
    drop(cloud);

    // Bytes damaged on the way: the checksum Glance reports differs.
    let cloud = osp_with_fault(&site, "checksum", 4);
    restore_fails(
        &site,
        &cloud,
        &[
            "Glance reports checksum",
            "the upload was damaged on the way",
            "removed: image",
        ],
    );
    drop(cloud);

    // A connection dropped mid-upload: the upload starts over with a new
    // image, and the restore succeeds with the right bytes.
    let cloud = osp_with_fault(&site, "drop-upload", 4);
    let out = site.run(&[
        "cloud-restore",
        "web@latest",
        "--target",
        "osp",
        "--from",
        "offsite",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("starting over with a new image (try 2 of 3)"),
        "{text}"
    );
    let s = cloud.state();
    assert_eq!(s["uploads"], 3, "one dropped, then root and data: {s:#}");
    let img = s["images"].as_object().unwrap().values().next().unwrap();
    assert_eq!(
        img["sha256"].as_str().unwrap(),
        sha256(&site.path("expect-root.raw"))
    );
    drop(cloud);

    // Cancel (Ctrl-C) while the server builds: what was made is removed.
    let cloud = osp_with_fault(&site, "slow-build", 60);
    let err = cancelled_restore(&site, "osp", libc::SIGINT, || {
        !cloud.state()["servers"].as_object().unwrap().is_empty()
    });
    assert!(err.contains("removed: server"), "{err}");
    cloud.assert_empty();
    drop(cloud);

    // Cancel while a data volume is attaching (Cinder: reserved, then
    // attaching, no attachment recorded yet): the server goes first, which
    // ends the attachment, and the volume is removed too — nothing leaks.
    let cloud = osp_with_fault(&site, "slow-attach", 60);
    let err = cancelled_restore(&site, "osp", libc::SIGTERM, || {
        cloud.state()["volumes"]
            .as_object()
            .unwrap()
            .values()
            .any(|v| matches!(v["status"].as_str(), Some("reserved" | "attaching")))
    });
    assert!(err.contains("removed: server"), "{err}");
    assert!(err.contains("volume"), "{err}");
    assert!(!err.contains("NOT removed"), "{err}");
    cloud.assert_empty();
    drop(cloud);

    // A dropped SSH session (SIGHUP) during the last step, while Nova's
    // console proxy hangs: cancelled at once (not reported as a success
    // when the call returns), and the running server is removed.
    let cloud = osp_with_fault(&site, "slow-console", 4);
    let err = cancelled_restore(&site, "osp", libc::SIGHUP, || {
        cloud.state()["console_requests"].as_u64().unwrap_or(0) > 0
    });
    assert!(err.contains("removed: server"), "{err}");
    assert!(!err.contains("running: server"), "{err}");
    cloud.assert_empty();
    drop(cloud);

    // A flavor whose disk (1 GiB) is smaller than the root volume (a
    // sparse 1.2 GiB disk) is refused by the plan, before any byte is
    // uploaded.
    let cloud = Standin::start();
    site.set_cloud("osp", &cloud.table("").replace("m1.small", "m1.tiny"));
    let big = site.path("big.raw");
    write_at(&big, 0, b"boot sector");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(1_200 << 20)
        .unwrap();
    site.ok(&[
        "backup",
        "big",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", big.display()),
    ]);
    let text = site.fails(&["cloud-restore", "big@latest", "--target", "osp"]);
    assert!(
        text.contains("choose a flavor with a disk of at least"),
        "{text}"
    );
    assert_eq!(cloud.state()["uploads"], 0, "nothing uploaded");
    cloud.assert_empty();
}

// ---------------------------------------------------------------------- AWS

/// moto in server mode on loopback (scripts/test.sh installs it and names
/// its Python in LIFEBOAT_TEST_MOTO_PYTHON).
struct Moto {
    child: Child,
    url: String,
    python: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_python() -> Option<String> {
    match std::env::var("LIFEBOAT_TEST_MOTO_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("CI must run the AWS tests: run scripts/test.sh, which installs moto")
        }
        Err(_) => {
            let ok = Command::new("python3")
                .args(["-c", "import moto.server, boto3"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                Some("python3".into())
            } else {
                eprintln!("SKIPPED: no moto (run scripts/test.sh to install it)");
                None
            }
        }
    }
}

impl Moto {
    fn start(env: &[(&str, &str)]) -> Option<Moto> {
        let python = moto_python()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = Command::new(&python);
        c.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("start moto");
        let url = format!("http://127.0.0.1:{port}");
        let m = Moto { child, url, python };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(m)
    }

    fn client(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/moto_client.py"
            ))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn state(&self) -> serde_json::Value {
        self.client(&["state", &self.url])
    }

    fn table(&self, setup: &serde_json::Value, extra: &str) -> String {
        format!(
            "provider = \"aws\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\ninstance_type = \"t3.small\"\nsubnet = \"{}\"\nsecurity_group = \"{}\"\nkey_pair = \"admin-key\"\nready_timeout_secs = 30\n{extra}",
            self.url,
            setup["subnet"].as_str().unwrap(),
            setup["security_group"].as_str().unwrap()
        )
    }
}

/// The non-zero 512 KiB blocks of an image.
fn nonzero_blocks(path: &Path) -> usize {
    std::fs::read(path)
        .unwrap()
        .chunks(512 << 10)
        .filter(|b| b.iter().any(|&x| x != 0))
        .count()
}

/// Reads a snapshot back through moto and checks it holds `expect`.
fn assert_snapshot_holds(moto: &Moto, site: &Site, snap: &str, expect: &Path) {
    let out = site.path(&format!("{snap}.blocks"));
    let r = moto.client(&["blocks", &moto.url, snap, out.to_str().unwrap()]);
    assert_eq!(
        r["blocks"].as_u64().unwrap() as usize,
        nonzero_blocks(expect),
        "only non-zero blocks are written"
    );
    let mut got = std::fs::read(&out).unwrap();
    let want = std::fs::read(expect).unwrap();
    assert!(got.len() <= want.len().next_multiple_of(512 << 10));
    got.resize(want.len(), 0);
    assert!(
        got == want,
        "snapshot {snap} does not hold the backup's bytes"
    );
}

/// moto (validating instance types), a site, and what moto's setup made
/// (VPC, subnet, key pair). None when moto is not installed.
fn aws_site() -> Option<(Moto, Site, serde_json::Value)> {
    let moto = Moto::start(&[("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")])?;
    let site = Site::new();
    let setup = moto.client(&["setup", &moto.url]);
    Some((moto, site, setup))
}

#[test]
fn aws_two_volume_set_through_ebs_direct_on_moto() {
    let Some((moto, site, setup)) = aws_site() else {
        return;
    };
    site.set_cloud("aws", &moto.table(&setup, ""));

    let ls = site.ok(&["cloud", "ls"]);
    for want in [
        "aws  aws  ok",
        "auth: ok (region us-east-1)",
        "instance type t3.small: ok",
        "subnet subnet-",
        "key pair admin-key: ok",
    ] {
        assert!(ls.contains(want), "{want:?} in {ls}");
    }
    let plan = site.ok(&[
        "cloud-restore",
        "web@latest",
        "--target",
        "aws",
        "--from",
        "offsite",
        "--dry-run",
    ]);
    assert!(
        plan.contains("EBS snapshot of root") && plan.contains("AMI web-restored-"),
        "{plan}"
    );
    assert!(moto.state()["snapshots"].as_array().unwrap().is_empty());

    let out: serde_json::Value = serde_json::from_str(&site.ok(&[
        "--json",
        "cloud-restore",
        "web@latest",
        "--target",
        "aws",
        "--from",
        "offsite",
    ]))
    .unwrap();
    let iid = out["server"]["id"].as_str().unwrap();
    assert!(iid.starts_with("i-"), "{out:#}");
    assert_eq!(out["server"]["status"], "running");
    assert!(
        out["server"]["addresses"][0]
            .as_str()
            .unwrap()
            .ends_with("(private)"),
        "{out:#}"
    );
    let created = out["created"].as_array().unwrap();
    let of = |k: &str| -> Vec<String> {
        created
            .iter()
            .filter(|r| r["kind"] == k)
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let snaps = of("snapshot");
    assert_eq!(snaps.len(), 2, "{out:#}");
    assert_eq!(of("image").len(), 1);
    assert_eq!(of("volume").len(), 1);
    // Only non-zero blocks went up: less than the images' size.
    let sent = out["uploaded_bytes"].as_u64().unwrap() as usize;
    let blocks = nonzero_blocks(&site.path("expect-root.raw"))
        + nonzero_blocks(&site.path("expect-data.raw"));
    assert_eq!(sent, blocks * (512 << 10));
    assert!(sent < 36 << 20);

    // Read every block back through moto: the snapshots hold the backup.
    assert_snapshot_holds(&moto, &site, &snaps[0], &site.path("expect-root.raw"));
    assert_snapshot_holds(&moto, &site, &snaps[1], &site.path("expect-data.raw"));
    let st = moto.state();
    let inst = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == iid)
        .unwrap();
    assert_eq!(inst["state"], "running");
    let vol = st["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == of("volume")[0].as_str())
        .unwrap();
    assert_eq!(vol["snapshot"], snaps[1].as_str());
    assert_eq!(vol["attachments"][0], iid);
}

/// From an encrypted repository (the site's off-site backups pulled into
/// it, re-encrypted on the way): the EBS snapshots hold the disks' bytes,
/// decrypted on the client on the way out.
#[test]
fn aws_restore_from_an_encrypted_repository_on_moto() {
    let Some((moto, site, setup)) = aws_site() else {
        return;
    };
    site.set_cloud("aws", &moto.table(&setup, ""));
    let pass = site.path("pass");
    common::secret_file(&pass, "cloud passphrase\n");
    let enc = site.path("enc");
    let rk = site.path("recovery.txt");
    let run = |args: &[&str]| -> String {
        let out = site
            .cmd()
            .env("LIFEBOAT_PASSPHRASE_FILE", &pass)
            .arg("-r")
            .arg(&enc)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "lifeboat {args:?}: {text}");
        assert_no_secrets(&text);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "init",
        "--encrypt",
        "--chunk-size",
        "1M",
        "--recovery-key-out",
        rk.to_str().unwrap(),
    ]);
    run(&["pull", "offsite"]);
    let out: serde_json::Value = serde_json::from_str(&run(&[
        "--json",
        "cloud-restore",
        "web@latest",
        "--target",
        "aws",
    ]))
    .unwrap();
    assert_eq!(out["server"]["status"], "running", "{out:#}");
    let snaps: Vec<String> = out["created"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "snapshot")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(snaps.len(), 2, "{out:#}");
    assert_snapshot_holds(&moto, &site, &snaps[0], &site.path("expect-root.raw"));
    assert_snapshot_holds(&moto, &site, &snaps[1], &site.path("expect-data.raw"));
}

#[test]
fn aws_faults_on_moto() {
    let Some((moto, site, setup)) = aws_site() else {
        return;
    };

    // An instance type and a subnet that do not exist: moto's own words.
    site.set_cloud(
        "aws",
        &moto.table(&setup, "").replace("t3.small", "t9.enormous"),
    );
    let text = site.fails(&[
        "cloud-restore",
        "web@latest",
        "--target",
        "aws",
        "--from",
        "offsite",
    ]);
    assert!(
        text.contains("cloud aws: instance type: instance type \"t9.enormous\" does not exist"),
        "{text}"
    );
    let mut t = moto.table(&setup, "");
    t = t.replace(setup["subnet"].as_str().unwrap(), "subnet-0000dead");
    site.set_cloud("aws", &t);
    let text = site.fails(&[
        "cloud-restore",
        "web@latest",
        "--target",
        "aws",
        "--from",
        "offsite",
    ]);
    assert!(
        text.contains("cloud aws: subnet: InvalidSubnetID.NotFound"),
        "{text}"
    );
    assert!(moto.state()["snapshots"].as_array().unwrap().is_empty());

    // Connections dropped mid-upload (a proxy cuts them): the blocks are
    // sent again and the snapshots still hold exactly the backup.
    let proxy = common::proxy::Proxy::start(
        moto.url.trim_start_matches("http://"),
        common::proxy::Link {
            drop_after: Some(300 << 10),
            max_drops: 3,
            ..Default::default()
        },
    );
    let mut t = moto.table(&setup, "");
    t = t.replace(&moto.url, &format!("http://{}", proxy.addr));
    site.set_cloud("aws", &t);
    let out: serde_json::Value = serde_json::from_str(&site.ok(&[
        "--json",
        "cloud-restore",
        "web@latest",
        "--target",
        "aws",
        "--from",
        "offsite",
    ]))
    .unwrap();
    assert!(
        proxy.drops.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the proxy dropped no connection: {}",
        std::fs::read_to_string(site.path("lifeboat.toml")).unwrap()
    );
    let snaps: Vec<&str> = out["created"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "snapshot")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_snapshot_holds(&moto, &site, snaps[0], &site.path("expect-root.raw"));
    assert_snapshot_holds(&moto, &site, snaps[1], &site.path("expect-data.raw"));
    drop(proxy);

    // Cancel mid-upload (through a slow link): the snapshot is deleted.
    let before = moto.state()["snapshots"].as_array().unwrap().len();
    let proxy = common::proxy::Proxy::start(
        moto.url.trim_start_matches("http://"),
        common::proxy::Link {
            rate: Some(128 << 10),
            ..Default::default()
        },
    );
    let mut t = moto.table(&setup, "");
    t = t.replace(&moto.url, &format!("http://{}", proxy.addr));
    site.set_cloud("aws", &t);
    let err = cancelled_restore(&site, "aws", libc::SIGINT, || {
        moto.state()["snapshots"].as_array().unwrap().len() > before
    });
    assert!(
        err.contains("cancelled") && err.contains("removed: ") && err.contains("snapshot snap-"),
        "{err}"
    );
    assert!(
        !err.contains("server web-restored"),
        "cancelled during the upload: {err}"
    );
    assert_eq!(
        moto.state()["snapshots"].as_array().unwrap().len(),
        before,
        "{err}"
    );
    drop(proxy);

    // Refused keys: moto with IAM authentication on knows no such key.
    let Some(strict) = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else {
        return;
    };
    site.set_cloud(
        "aws",
        &moto.table(&setup, "").replace(&moto.url, &strict.url),
    );
    let out = site.run(&["cloud", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains("aws  aws  FAILED") && text.contains("AWS refused the access key"),
        "{text}"
    );
    assert_no_secrets(&text);
}

// ------------------------------------------------------------------- export

#[test]
fn export_to_garage_in_every_format() {
    let Some(g) = common::remote::garage() else {
        return;
    };
    let Some(python) = moto_python() else {
        return;
    };
    let site = Site::new();
    let prefix = common::remote::unique("export");
    let run = |args: &[&str]| {
        site.cmd()
            .env("AWS_ACCESS_KEY_ID", &g.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &g.secret)
            .args(args)
            .output()
            .unwrap()
    };
    let s3 = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--endpoint".into(),
            g.endpoints[0].clone(),
            "--region".into(),
            g.region.clone(),
            "--path-style".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let fetch = |key: &str, out: &Path| {
        let o = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/moto_client.py"
            ))
            .args(["s3get", &g.endpoints[0], &g.bucket, key])
            .arg(out)
            .env("AWS_ACCESS_KEY_ID", &g.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &g.secret)
            .env("AWS_REGION", &g.region)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };

    // raw: streamed from the served remote, byte for byte the backup.
    let key = format!("{prefix}/web-root.raw");
    let url = format!("s3://{}/{key}", g.bucket);
    let mut args = vec![
        "--json",
        "export",
        "web/root@latest",
        &url,
        "--from",
        "offsite",
    ];
    let extra = s3(&[]);
    args.extend(extra.iter().map(|s| s.as_str()));
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["bytes"], 24 << 20);
    let got = site.path("got.raw");
    fetch(&key, &got);
    assert_eq!(sha256(&got), sha256(&site.path("expect-root.raw")));
    assert_eq!(r["sha256"].as_str().unwrap(), sha256(&got));

    // qcow2, vmdk, vhd through qemu-img convert: the same disk when read back.
    for (fmt, qfmt) in [("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vhd", "vpc")] {
        let key = format!("{prefix}/web-data.{fmt}");
        let url = format!("s3://{}/{key}", g.bucket);
        let mut args = vec!["export", "web/data@latest", &url, "--format", fmt];
        args.extend(extra.iter().map(|s| s.as_str()));
        let out = run(&args);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("scratch space") && text.contains("uploaded"),
            "{text}"
        );
        let got = site.path(&format!("got.{fmt}"));
        fetch(&key, &got);
        let info = qemu_img(&["info", "-f", qfmt, "--output=json", got.to_str().unwrap()]);
        if fmt == "vhd" {
            // A fixed VHD is the disk plus a 512-byte footer ("conectix").
            let bytes = std::fs::read(&got).unwrap();
            assert_eq!(bytes.len(), (12 << 20) + 512, "{info}");
            assert_eq!(&bytes[bytes.len() - 512..][..8], b"conectix");
        } else {
            let probed = qemu_img(&["info", "--output=json", got.to_str().unwrap()]);
            assert!(
                probed.contains(&format!("\"format\": \"{qfmt}\"")),
                "{probed}"
            );
        }
        let cmp = Command::new("qemu-img")
            .args(["compare", "-f", qfmt, "-F", "raw"])
            .arg(&got)
            .arg(site.path("expect-data.raw"))
            .output()
            .unwrap();
        assert!(
            cmp.status.success(),
            "{fmt}: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );
    }

    // Azure takes a VHD only when its size is a whole number of MiB: a
    // disk of 5 MiB and 1000 bytes becomes a 6 MiB VHD, the rest zeros.
    let odd = site.path("odd.raw");
    write_at(&odd, 0, &noise((5 << 20) + 1000, 9));
    let out = site.run(&[
        "backup",
        "odd",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", odd.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = format!("{prefix}/odd.vhd");
    let odd_url = format!("s3://{}/{key}", g.bucket);
    let mut args = vec!["export", "odd/root@latest", &odd_url, "--format", "vhd"];
    args.extend(extra.iter().map(|s| s.as_str()));
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = site.path("got-odd.vhd");
    fetch(&key, &got);
    assert_eq!(std::fs::metadata(&got).unwrap().len(), (6 << 20) + 512);
    let info = qemu_img(&["info", "-f", "vpc", "--output=json", got.to_str().unwrap()]);
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 6 << 20)),
        "{info}"
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(&got)
        .arg(&odd)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    // Bad input: a set, no key, an unknown bucket (nothing left behind).
    let mut args = vec!["export", "web@latest", &url];
    args.extend(extra.iter().map(|s| s.as_str()));
    let out = run(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("names a VM set; export one volume"));
    let bucket_only = format!("s3://{}/", g.bucket);
    let mut args = vec!["export", "web/root@latest", &bucket_only];
    args.extend(extra.iter().map(|s| s.as_str()));
    let out = run(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("give the object's key"));
    let mut args = vec![
        "export",
        "web/root@latest",
        "s3://no-such-bucket-here/x.raw",
    ];
    args.extend(extra.iter().map(|s| s.as_str()));
    let out = run(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-bucket-here"), "{err}");
    assert!(!err.contains(&g.secret));
}

// ------------------------------------------------------------------ console

#[test]
fn console_restores_into_a_cloud_and_cancel_cleans_up() {
    use portable_pty::CommandBuilder;
    let site = Site::new();
    let cloud = Standin::start();
    site.set_cloud(
        "osp",
        &cloud
            .table("")
            .replace("ready_timeout_secs = 4", "ready_timeout_secs = 90"),
    );
    let mut cmd = CommandBuilder::new(BIN);
    cmd.cwd(site.dir.path());
    for (k, v) in [
        ("TERM", "xterm-256color".to_string()),
        ("HOME", site.dir.path().display().to_string()),
        ("XDG_CONFIG_HOME", site.path("cfg").display().to_string()),
        ("XDG_DATA_HOME", site.path("data").display().to_string()),
        (
            "LIFEBOAT_CONFIG",
            site.path("lifeboat.toml").display().to_string(),
        ),
        ("LB_TOKEN", site.token.clone()),
        ("OS_PASSWORD", OS_PASSWORD.to_string()),
    ] {
        cmd.env(k, v);
    }
    cmd.env_remove("LIFEBOAT_REPO");
    let mut c = common::pty::open(cmd);
    c.wait_for("web", 30);

    // The clouds and their state.
    c.keys("L");
    let s = c.wait_for("osp  openstack  ok", 30);
    assert!(
        s.contains("flavor m1.small: ok") && s.contains("network dr-net: ok"),
        "{s}"
    );
    assert_no_secrets(&s);
    c.keys("\x1b");
    // (Esc and the next key apart, or the terminal reads Alt-Enter.)
    c.wait_until("the dialog closed", 10, |s| {
        !s.contains("u on a backup brings")
    });

    // The newest set of web, into osp: target picker, plan, confirm.
    c.keys("\r");
    c.wait_for("Timeline web", 10);
    c.keys("u");
    let s = c.wait_for("Restore into which cloud?", 10);
    assert!(s.contains("> osp  (checked ok)"), "{s}");
    c.keys("\r");
    // The lines `cloud-restore --dry-run` prints.
    let s = c.wait_for("target checked:", 30);
    assert!(
        s.contains("Glance image")
            && s.contains("Nova server")
            && s.contains("bytes to upload: 36.0 MiB"),
        "{s}"
    );
    c.keys("y");
    let s = c.wait_until("the restore's result", 90, |s| {
        s.contains("ACTIVE at 10.0.0.")
    });
    assert!(s.contains("vnc_auto.html"), "{s}");
    let st = cloud.state();
    assert_eq!(st["servers"].as_object().unwrap().len(), 1, "{st:#}");
    assert_eq!(st["volumes"].as_object().unwrap().len(), 1, "{st:#}");

    // Again, with a slow build: cancel from the Jobs pane while the server
    // builds; what the job created is removed, the first restore stays.
    cloud.fault("slow-build");
    c.keys("u");
    c.wait_for("Restore into which cloud?", 10);
    c.keys("\r");
    c.wait_for("target checked:", 30);
    c.keys("y");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cloud.state()["servers"].as_object().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second server: {}",
            c.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The job's panel: phases done and running, and the cloud's states.
    let s = c.wait_for("▶ server", 30);
    assert!(
        s.contains("✓ auth") && s.contains("✓ upload") && s.contains("── cloud:"),
        "{s}"
    );
    c.keys("\t");
    c.keys("G");
    c.keys("x");
    c.wait_for("What it created in the cloud is removed", 10);
    c.keys("y");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = cloud.state();
        if st["servers"].as_object().unwrap().len() == 1
            && st["images"].as_object().unwrap().len() == 1
            && st["volumes"].as_object().unwrap().len() == 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not cleaned up: {st:#}\n{}",
            c.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait_for("cancelled", 30);
    // The job's log: its phases, then what the cancel removed.
    c.keys("\r");
    let s = c.wait_for("auth: ok (password", 10);
    assert!(s.contains("upload root:"), "{s}");
    c.keys("G");
    c.wait_for("removed: server", 10);
    c.keys("\x1b");
    c.wait_until("the log closed", 10, |s| !s.contains("Esc close"));

    // A third one, then quit while it builds: the console waits for the
    // cancelled job to remove what it made before it exits.
    c.keys("u");
    c.wait_for("Restore into which cloud?", 10);
    c.keys("\r");
    c.wait_for("target checked:", 30);
    c.keys("y");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cloud.state()["servers"].as_object().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no third server: {}", c.screen());
        std::thread::sleep(Duration::from_millis(50));
    }
    c.keys("q");
    c.wait_for("a cloud restore first removes what it created", 10);
    c.keys("y");
    c.wait_exit();
    let st = cloud.state();
    assert_eq!(st["servers"].as_object().unwrap().len(), 1, "{st:#}");
    assert_eq!(st["images"].as_object().unwrap().len(), 1, "{st:#}");
    assert_eq!(st["volumes"].as_object().unwrap().len(), 1, "{st:#}");
}
