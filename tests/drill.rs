//! Restore drills and VM restores against the demo's world: real Linux
//! guests booted under qemu-system-x86_64 (TCG), fetched from a real
//! `lifeboat serve` on loopback, domain XML checked by libvirt's own
//! virt-xml-validate.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::remote::Server;
use common::BIN;

/// The demo world, built once per run (`lifeboat demo --no-tui`).
fn demo() -> &'static Path {
    static WORLD: OnceLock<PathBuf> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("drill-demo");
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(BIN)
            .args(["demo", "--no-tui", "--keep"])
            .arg(&dir)
            .env("LIBVIRT_DEFAULT_URI", common::NO_LIBVIRT)
            .env_remove("LIFEBOAT_CONFIG")
            .env_remove("LIFEBOAT_REPO")
            .output()
            .expect("run the demo");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "demo failed: {err}");
        assert!(
            !err.contains("will not boot"),
            "the demo's guests must boot here (scripts/test.sh installs what they need): {err}"
        );
        dir
    })
}

/// A test's own place: a config copied from the demo's (so its relative
/// `repository` is a fresh local repository here), with the off-site
/// remote at a server started for this test.
struct Drill {
    dir: tempfile::TempDir,
    server: Server,
}

impl Drill {
    fn new() -> Drill {
        Drill::with_config(|c| c)
    }

    fn with_config(edit: impl Fn(String) -> String) -> Drill {
        let world = demo();
        let server = Server::start(
            &world.join("offsite"),
            &world.join("offsite-tokens.toml"),
            "127.0.0.1:0",
        );
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(world.join("lifeboat.toml")).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("url = ") {
                    format!("url = \"{}/\"", server.url)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("lifeboat.toml"), edit(text)).unwrap();
        std::fs::create_dir(dir.path().join("scratch")).unwrap();
        Drill { dir, server }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .env_remove("LIFEBOAT_REPO")
            .env("LIFEBOAT_CONFIG", self.path("lifeboat.toml"))
            .env("HOME", self.dir.path())
            .env("LIBVIRT_DEFAULT_URI", common::NO_LIBVIRT);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `drill ... --json --scratch S`: (exit code, report).
    fn drill(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = vec!["--json", "drill"];
        a.extend_from_slice(args);
        let scratch = self.path("scratch");
        a.extend(["--scratch", scratch.to_str().unwrap()]);
        let out = self.run(&a);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "drill {args:?} printed no report ({e}):\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        self.assert_clean();
        (out.status.code().unwrap_or(-1), v)
    }

    /// Nothing left behind: the scratch directory is empty and no QEMU
    /// runs on a file in it.
    fn assert_clean(&self) {
        let scratch = self.path("scratch");
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
        assert!(left.is_empty(), "scratch files left: {left:?}");
        assert!(
            qemu_on(&scratch).is_empty(),
            "QEMU still runs: {:?}",
            qemu_on(&scratch)
        );
    }
}

/// Pids of processes whose command line mentions `dir`.
fn qemu_on(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("qemu-system") && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn phases(r: &serde_json::Value) -> Vec<String> {
    r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn drill_from_a_served_remote_boots_the_guest_and_passes_its_http_check() {
    let d = Drill::new();
    // web01 drills from offsite (its [vm.drill]); the local repository
    // does not exist yet: everything is fetched.
    let (code, r) = d.drill(&["web01"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["outcome"], "pass", "{r:#}");
    assert_eq!(r["source"], "offsite");
    assert_eq!(r["definition"], "backup");
    assert_eq!(
        phases(&r),
        ["fetch", "restore", "verify", "boot", "checks"],
        "{r:#}"
    );
    assert!(
        r["phases"][0]["bytes"].as_u64().unwrap() > 10 << 20,
        "{r:#}"
    );
    let boot = &r["boot"];
    assert_eq!(boot["accel"], "tcg");
    assert_eq!(boot["checks"][0]["name"], "http :8080/");
    assert_eq!(boot["checks"][0]["ok"], true);
    // Off-site holds backups older than three days: that is the RPO.
    assert!(r["rpo_secs"].as_i64().unwrap() > 3 * 86_400, "{r:#}");
    let rto = r["rto_secs"].as_f64().unwrap();
    let sum: f64 = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["secs"].as_f64().unwrap())
        .sum();
    assert!((rto - sum).abs() < 0.01);

    // Again: the chunks are local now, nothing is fetched.
    let (code, r2) = d.drill(&["web01"]);
    assert_eq!(code, 0, "{r2:#}");
    assert_eq!(r2["phases"][0]["bytes"], 0, "{r2:#}");
    assert_eq!(r2["set"], r["set"]);

    // The history keeps both, per VM.
    let out = d.run(&["--json", "drills", "web01"]);
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!(h[1]["outcome"], "pass");
}

#[test]
fn a_broken_boot_loader_fails_the_drill_and_an_earlier_backup_passes() {
    let d = Drill::new();
    // mail01's newest off-site backup was taken after its boot sector was
    // overwritten.
    let (code, r) = d.drill(&["mail01"]);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(r["outcome"], "fail");
    assert_eq!(r["failed_phase"], "boot", "{r:#}");
    let why = r["error"].as_str().unwrap();
    assert!(why.contains("boot"), "{why}");
    let fw: Vec<String> = r["boot"]["firmware_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(
        fw.iter()
            .any(|l| l.contains("Boot failed") || l.contains("No bootable")),
        "{fw:?}"
    );
    // The human report names the phase and shows the console's tail.
    let out = d.run(&[
        "drill",
        "mail01",
        "--scratch",
        d.path("scratch").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(6));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL in boot"), "{text}");
    assert!(text.contains("firmware log (last lines)"), "{text}");

    // One set earlier the VM boots and answers.
    let (code, ok) = d.drill(&["mail01", "--at", "@~1"]);
    assert_eq!(code, 0, "{ok:#}");
    assert_eq!(ok["outcome"], "pass");
    assert!(ok["backup_time"].as_str() < r["backup_time"].as_str());

    let out = d.run(&["drills", "mail01"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("FAIL") && lines[0].contains("failed in boot"));
    assert!(lines[2].contains("PASS"));
}

fn validates(xml: &Path) {
    let out = Command::new("virt-xml-validate")
        .arg(xml)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients) is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "{}: {}{}",
        xml.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vm_restore_writes_a_valid_domain_for_the_restored_disks() {
    let d = Drill::new();
    // web01 has a libvirt domain (rewritten); db01 only lifeboat's spec
    // (generated).
    for (vm, from) in [("web01", "a libvirt"), ("db01", "generated")] {
        let to = d.path(&format!("restored-{vm}"));
        let out = d.run(&[
            "--json",
            "restore",
            &format!("{vm}@latest"),
            "--from",
            "offsite",
            "--to",
            to.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["vm"]["validation"]["result"], "valid", "{v:#}");
        let xml_path = to.join(format!("{vm}.xml"));
        validates(&xml_path);
        let xml = std::fs::read_to_string(&xml_path).unwrap();
        for vol in v["volumes"].as_array().unwrap() {
            let t = vol["target"].as_str().unwrap();
            assert!(xml.contains(&format!("file=\"{t}\"")), "{t} not in {xml}");
        }
        assert!(!xml.contains("/images/"), "a source path survived: {xml}");
        assert!(!xml.contains("<mac "), "MACs are dropped by default: {xml}");
        assert!(v["vm"]["qemu_command"]
            .as_str()
            .unwrap()
            .starts_with("qemu-system-x86_64 "));
        let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&xml_path).unwrap());
        assert_eq!(mode & 0o777, 0o600);
    }
    // --keep-macs and --name; --define where no libvirt runs says what to do.
    let to = d.path("restored-keep");
    let out = d.run(&[
        "restore",
        "web01@latest",
        "--from",
        "offsite",
        "--to",
        to.to_str().unwrap(),
        "--keep-macs",
        "--name",
        "web01-dr",
        "--define",
    ]);
    let xml = std::fs::read_to_string(to.join("web01-dr.xml")).unwrap();
    validates(&to.join("web01-dr.xml"));
    assert!(
        xml.contains("<mac address=\"52:54:00:1b:0a:ff\"/>"),
        "{xml}"
    );
    assert!(xml.contains("<name>web01-dr</name>"));
    // No libvirtd is reachable from the tests (never the host's own):
    // the message says what to run where libvirt runs; the XML handed to
    // it is shown first.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("virsh define") && err.contains("web01-dr.xml"),
        "{err}"
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("the domain XML handed to virsh define")
            && shown
                .lines()
                .any(|l| l.starts_with("  |") && l.contains("<name>web01-dr</name>")),
        "{shown}"
    );
    // One data volume to attach to a running domain.
    let file = d.path("data-only.raw");
    let out = d.run(&[
        "restore",
        "web01/data@latest",
        "--from",
        "offsite",
        "--to",
        file.to_str().unwrap(),
        "--attach",
        "web01",
    ]);
    assert!(file.exists());
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            err.contains("virsh attach-disk web01") && err.contains(" vdb "),
            "{err}"
        );
    }
}

#[test]
fn drill_faults_name_their_phase_and_leave_nothing_behind() {
    let d = Drill::new();
    // No qemu-system binary on PATH.
    let empty = d.path("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let out = d
        .cmd()
        .env("PATH", &empty)
        .args(["--json", "drill", "db01", "--scratch"])
        .arg(d.path("scratch"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["failed_phase"], "boot");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("qemu-system-x86_64 is not installed"),
        "{r:#}"
    );
    d.assert_clean();

    // A VM whose backup has no root volume, and whose domain XML does not
    // parse: the backup warns and stores the config's spec instead.
    let img = d.path("only-data.raw");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    let xml = d.path("nodisk.xml");
    std::fs::write(&xml, "<domain><name>nodisk</name><devices>").unwrap();
    let mut cfg = std::fs::read_to_string(d.path("lifeboat.toml")).unwrap();
    cfg.push_str(&format!(
        "\n[[vm]]\nname = \"nodisk\"\ndomain_xml = \"{}\"\n[[vm.volume]]\nname = \"data\"\nrole = \"data\"\npath = \"{}\"\nformat = \"raw\"\n",
        xml.display(),
        img.display()
    ));
    std::fs::write(d.path("lifeboat.toml"), cfg).unwrap();
    // (The local repository exists: the drill above fetched into it.)
    let out = d.run(&["-v", "backup", "nodisk"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("does not parse") && err.contains("storing the config's VM spec"),
        "{err}"
    );
    let out = d.run(&["--json", "show", "nodisk/data@latest"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["manifest"]["definition"]["chunk"].is_string(), "{v:#}");
    assert_eq!(v["manifest"]["format"], 3);
    let (code, r) = d.drill(&["nodisk", "--from", "local"]);
    assert_eq!(code, 6);
    assert_eq!(r["failed_phase"], "plan");
    assert!(
        r["error"].as_str().unwrap().contains("no root volume"),
        "{r:#}"
    );

    // A bad reference and an unknown remote are usage errors.
    let out = d.run(&["drill", "web01", "--at", "db01@latest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not name a backup set of VM web01"));
    let out = d.run(&["drill", "web01", "--from", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    // An unknown VM, or a time no backup is at or before, could not start:
    // exit 1 and no FAIL in the history.
    let before = d.run(&["--json", "drills"]);
    for args in [
        vec!["drill", "nosuchvm", "--from", "local"],
        vec!["drill", "web01", "--from", "local", "--at", "2001-01-01"],
    ] {
        let out = d.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("could not start"), "{err}");
        assert!(!err.contains("RTO"), "{err}");
    }
    let after = d.run(&["--json", "drills"]);
    assert_eq!(before.stdout, after.stdout, "nothing recorded");
}

#[test]
fn a_failing_application_check_fails_the_drill_with_its_answer() {
    let d = Drill::with_config(|c| {
        c.replace("the application answers", "text the guest never serves")
            .replace("timeout_secs = 90", "timeout_secs = 40")
    });
    let (code, r) = d.drill(&["db01"]);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(r["failed_phase"], "checks", "{r:#}");
    let why = r["error"].as_str().unwrap();
    assert!(
        why.contains("http :8080/") && why.contains("does not contain"),
        "{why}"
    );
    // And what it got instead.
    assert!(why.contains("it said"), "{why}");
    // It booted: the boot phase is timed, the checks ran until the timeout.
    assert_eq!(phases(&r), ["fetch", "restore", "verify", "boot", "checks"]);
    assert!(r["boot"]["serial_tail"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().contains("db01 login:")));
}

#[test]
fn a_boot_that_never_shows_its_marker_fails_with_the_console_tail() {
    let d = Drill::with_config(|c| {
        c.replace(
            "serial = \"db01 login:\"",
            "serial = \"a banner db01 never prints\"",
        )
        .replace("timeout_secs = 90", "timeout_secs = 20")
    });
    let (code, r) = d.drill(&["db01"]);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(r["failed_phase"], "boot", "{r:#}");
    let why = r["error"].as_str().unwrap();
    assert!(
        why.contains("a banner db01 never prints") && why.contains("within 20 s"),
        "{why}"
    );
    // What the console did show is in the report.
    assert!(r["boot"]["serial_tail"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().contains("db01 login:")));
    let boot = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "boot")
        .unwrap()["secs"]
        .as_f64()
        .unwrap();
    assert!(boot >= 19.0, "the boot phase ran until the timeout: {boot}");
}

#[test]
fn a_remote_that_vanishes_mid_fetch_fails_the_fetch_phase() {
    let mut d = Drill::new();
    let scratch = d.path("scratch");
    let child = d
        .cmd()
        .args([
            "--json",
            "--limit-download",
            "1M",
            "drill",
            "db01",
            "--scratch",
        ])
        .arg(&scratch)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    d.server.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["failed_phase"], "fetch", "{r:#}");
    d.assert_clean();
}

/// A server that accepts and never answers: the drill fails its fetch
/// within the operation budget (`--io-timeout`, twice it for all tries),
/// not after every retry's full timeout.
#[test]
fn a_server_that_never_answers_fails_the_fetch_within_its_budget() {
    let d = Drill::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(64).flatten() {
            held.push(s);
        }
    });
    let out = d
        .cmd()
        .env("LIFEBOAT_TOKEN", "t")
        .args([
            "--json",
            "--io-timeout",
            "2",
            "drill",
            "db01",
            "--from",
            &url,
            "--scratch",
        ])
        .arg(d.path("scratch"))
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(6), "{r:#}");
    assert_eq!(r["failed_phase"], "fetch", "{r:#}");
    let why = r["error"].as_str().unwrap();
    assert!(
        why.contains("gave up after") || why.contains("timed out"),
        "{why}"
    );
    d.assert_clean();
    drop(hold);
}

/// A drill of build01 from the local repository, returned once its QEMU
/// runs (the guest is booting).
fn drill_booting(d: &Drill, scratch: &Path) -> std::process::Child {
    let child = d
        .cmd()
        .args(["--json", "drill", "build01", "--from", "local", "--scratch"])
        .arg(scratch)
        .env("LIFEBOAT_REPO", demo().join("repo"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while qemu_on(scratch).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(120), "QEMU never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn a_cancelled_drill_stops_qemu_and_removes_its_scratch_files() {
    let d = Drill::new();
    let scratch = d.path("scratch");
    // Wait until the guest is booting, then interrupt as Ctrl-C would.
    let mut child = drill_booting(&d, &scratch);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    d.assert_clean();
}

/// The daemon's unit ships with `MemoryDenyWriteExecute=yes`, under which
/// the kernel refuses memory that is writable and executable — what TCG
/// writes its code into. systemd applies it with PR_SET_MDWE where the
/// kernel has it; so does this test (children inherit it), and the drill
/// the daemon would run passes.
#[test]
fn a_drill_boots_under_the_daemon_units_memory_protection() {
    use std::os::unix::process::CommandExt;
    let d = Drill::new();
    let scratch = d.path("scratch");
    let mut cmd = d.cmd();
    cmd.args(["--json", "drill", "build01", "--from", "local", "--scratch"])
        .arg(&scratch)
        .env("LIFEBOAT_REPO", demo().join("repo"));
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            if libc::prctl(65, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: this kernel has no PR_SET_MDWE ({e})");
            return;
        }
    };
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["outcome"], "pass", "{r:#}");
    d.assert_clean();
}

/// SIGTERM (`timeout`, cron) and SIGHUP (a dropped SSH session) end a
/// drill as Ctrl-C does; SIGKILL cannot be caught, but QEMU dies with its
/// parent and the next drill removes the scratch files left.
#[test]
fn drills_ended_by_any_signal_leave_nothing_running() {
    let d = Drill::new();
    let scratch = d.path("scratch");
    let start = || drill_booting(&d, &scratch);
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let mut child = start();
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "signal {sig}");
        d.assert_clean();
    }
    let mut child = start();
    let qemu = qemu_on(&scratch);
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let t = Instant::now();
    while qemu
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "QEMU outlived its killed drill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
    assert_eq!(
        left.len(),
        1,
        "the killed drill's scratch directory stays: {left:?}"
    );
    // The next drill (even one that cannot start) removes it.
    let out = d
        .cmd()
        .args([
            "drill",
            "build01",
            "--from",
            "local",
            "--at",
            "2001-01-01",
            "--scratch",
        ])
        .arg(&scratch)
        .env("LIFEBOAT_REPO", demo().join("repo"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    d.assert_clean();
}

#[test]
fn the_daemon_drills_on_the_vm_drill_schedule() {
    let d = Drill::with_config(|c| {
        c.split("[[vm]]")
            .map(|block| {
                if block.contains("name = \"web01\"") {
                    block.replace(
                        "[vm.drill]\nfrom = \"offsite\"",
                        "[vm.drill]\nfrom = \"offsite\"\nschedule = \"every 1h\"",
                    )
                } else {
                    block.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("[[vm]]")
            .replace("[plan.shop]\n", "[plan.shop]\nschedule = \"every 1h\"\n")
    });
    let out = d.run(&["init", "--chunk-size", "1M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clock = d.path("clock");
    std::fs::write(&clock, "2026-11-27T10:00:00Z").unwrap();
    let mut daemon = d
        .cmd()
        .args(["daemon", "--tick", "1", "--clock-file"])
        .arg(&clock)
        .env("TMPDIR", d.path("scratch"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let history = d.path("repo/state/drills.jsonl");
    let plans = d.path("repo/state/plan-drills.jsonl");
    // First seen at 10:00: counting starts, nothing runs at start-up.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!history.exists(), "a drill ran at start-up");
    // The 11:00 slot passes: one drill of the VM, then one of the plan.
    std::fs::write(&clock, "2026-11-27T11:00:30Z").unwrap();
    let t = Instant::now();
    while !history.exists() || !plans.exists() {
        assert!(t.elapsed() < Duration::from_secs(360), "no scheduled drill");
        std::thread::sleep(Duration::from_millis(500));
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    let text = std::fs::read_to_string(&history).unwrap();
    let r: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(r["vm"], "web01");
    assert_eq!(r["source"], "offsite");
    assert_eq!(r["outcome"], "pass", "{r:#}");
    let text = std::fs::read_to_string(&plans).unwrap();
    let r: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(r["plan"], "shop");
    assert_eq!(r["outcome"], "pass", "{r:#}");
    d.assert_clean();
}

/// An encrypted local repository: the demo's off-site backups pulled into
/// it (re-encrypted on the way, the off-site repository being
/// unencrypted), then drilled from it with the passphrase from the
/// environment: restored, verified, booted, checked.
#[test]
fn a_drill_from_an_encrypted_repository_boots_and_passes() {
    let d = Drill::new();
    let pass = d.path("pass");
    common::secret_file(&pass, "drill passphrase\n");
    let with_key = |args: &[&str]| {
        let out = d
            .cmd()
            .env("LIFEBOAT_PASSPHRASE_FILE", &pass)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let recovery = d.path("recovery.txt");
    with_key(&[
        "init",
        "--encrypt",
        "--chunk-size",
        "1M",
        "--recovery-key-out",
        recovery.to_str().unwrap(),
    ]);
    let plan = with_key(&["pull", "offsite", "web01", "--dry-run"]);
    assert!(plan.contains("re-encrypted"), "{plan}");
    with_key(&["pull", "offsite", "web01"]);
    let mut a = vec!["--json", "drill", "web01", "--from", "local", "--scratch"];
    let scratch = d.path("scratch");
    a.push(scratch.to_str().unwrap());
    let out = d
        .cmd()
        .env("LIFEBOAT_PASSPHRASE_FILE", &pass)
        .args(&a)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no drill report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    d.assert_clean();
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(r["outcome"], "pass", "{r:#}");
    assert_eq!(r["source"], "local", "{r:#}");
    // Without the key: said before anything is restored.
    let out = d
        .cmd()
        .args(["drill", "web01", "--from", "local", "--scratch"])
        .arg(&scratch)
        .output()
        .unwrap();
    // A drill that fails in its plan phase, with what to set.
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{said}");
    assert!(
        said.contains("FAIL in plan") && said.contains("LIFEBOAT_PASSPHRASE_FILE"),
        "{said}"
    );
    d.assert_clean();
}

// ------------------------------------------------------------ recovery plans

/// The demo's shop: db01 and web01 from the off-site server, booted side
/// by side on the plan's private switch; web01's order page reads from
/// db01 over it, so the plan's check passes only when both work together.
#[test]
fn a_plan_drill_brings_up_the_service_on_its_private_network() {
    let d = Drill::new();
    let (code, r) = d.drill(&["--plan", "shop"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["outcome"], "pass", "{r:#}");
    let members = r["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{r:#}");
    for m in members {
        assert_eq!(m["outcome"], "pass", "{m:#}");
        assert!(phases(m).contains(&"boot".to_string()), "{m:#}");
    }
    let net = r["network"].as_array().unwrap();
    assert_eq!(net.len(), 2, "{r:#}");
    assert!(net.iter().all(|a| a["ok"] == true), "{r:#}");
    let check = &r["checks"][0];
    assert_eq!(check["name"], "web01 http :8080/cgi-bin/order", "{r:#}");
    assert_eq!(check["ok"], true, "{r:#}");
    // The point: one set per VM, the service's RPO its oldest member's.
    let picks = r["point"]["picks"].as_array().unwrap();
    assert_eq!(picks.len(), 2);
    assert!(r["rpo_secs"].as_i64().unwrap() >= 3 * 86_400, "{r:#}");
    assert!(r["point"]["spread_secs"].as_i64().unwrap() >= 0);
    assert!(r["rto_secs"].as_f64().unwrap() > 0.0);
    // Kept in the history, shown by `plans`.
    let out = d.run(&["--json", "drills", "--plans"]);
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 1, "{h:#}");
    let out = d.run(&["--json", "plans"]);
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p[0]["name"], "shop");
    assert_eq!(p[0]["last_drill"]["outcome"], "pass", "{p:#}");
}

/// db01's backup of an interrupted migration holds a torn table: the
/// service drilled at that point fails, and says it is db01's boot.
#[test]
fn a_plan_drilled_where_the_database_backup_is_torn_fails_at_the_database() {
    let d = Drill::new();
    let repo = demo().join("repo");
    let out = d.run(&["--json", "-r", repo.to_str().unwrap(), "timeline", "db01"]);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let torn = t
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["note"] == "schema migration (interrupted)")
        .expect("the demo's torn db01 backup")["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, r) = d.drill(&["--plan", "shop", "--at", &torn]);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(r["outcome"], "fail", "{r:#}");
    assert_eq!(r["failed_vm"], "db01", "{r:#}");
    assert_eq!(r["failed_phase"], "boot", "{r:#}");
    assert!(
        r["error"].as_str().unwrap().contains("database is corrupt"),
        "{r:#}"
    );
    assert!(r["checks"].as_array().unwrap().is_empty(), "{r:#}");
    let db = r["point"]["picks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["vm"] == "db01")
        .unwrap()
        .clone();
    assert!(
        torn.starts_with(&db["time"].as_str().unwrap()[..19]),
        "{db} {torn}"
    );
}

/// A plan drill cancelled while its VMs run: exit 130, every QEMU gone,
/// nothing left in the scratch directory.
#[test]
fn a_cancelled_plan_drill_stops_every_vm_and_removes_its_files() {
    let d = Drill::new();
    let scratch = d.path("scratch");
    let mut child = d
        .cmd()
        .args(["drill", "--plan", "shop", "--scratch"])
        .arg(&scratch)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while qemu_on(&scratch).len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the plan's VMs never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    d.assert_clean();
}

/// web01 waits for db01's checks; an address the VM does not hold is
/// found on the switch; a plan that cannot start is refused at load.
#[test]
fn plan_order_addresses_and_bad_plans() {
    let d = Drill::with_config(|c| {
        c.replace(
            "address = \"10.10.0.3\"",
            "address = \"10.10.0.3\"\nafter = [\"db01\"]",
        )
    });
    let (code, r) = d.drill(&["--plan", "shop"]);
    assert_eq!(code, 0, "{r:#}");
    let web = r["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["vm"] == "web01")
        .unwrap();
    let p = phases(web);
    assert!(
        p.iter().position(|x| x == "wait") < p.iter().position(|x| x == "boot"),
        "web01 waits, then boots: {p:?}"
    );
    let d = Drill::with_config(|c| c.replace("address = \"10.10.0.3\"", "address = \"10.10.0.9\""));
    let (code, r) = d.drill(&["--plan", "shop"]);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(r["failed_vm"], "web01", "{r:#}");
    assert_eq!(r["failed_phase"], "network", "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("does not answer for 10.10.0.9"),
        "{r:#}"
    );
    let d = Drill::with_config(|c| {
        c.replace(
            "address = \"10.10.0.2\"",
            "address = \"10.10.0.2\"\nafter = [\"web01\"]",
        )
        .replace(
            "address = \"10.10.0.3\"",
            "address = \"10.10.0.3\"\nafter = [\"db01\"]",
        )
    });
    let out = d.run(&["plans"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("lifeboat.toml") && err.contains("line ") && err.contains("in a circle"),
        "{err}"
    );
    let d = Drill::new();
    let out = d.run(&["drill", "--plan", "nosuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("plans: shop"),
        "{err}"
    );
}

/// `restore --plan`: every VM of the point into one directory, their NICs
/// on the plan's isolated libvirt network, all checked by libvirt's own
/// validator; never into a directory with files, never half a service.
#[test]
fn a_plan_restores_into_a_directory_for_libvirt() {
    use std::os::unix::fs::PermissionsExt;
    let d = Drill::new();
    let to = d.path("shop");
    let out = d.run(&[
        "restore",
        "--plan",
        "shop",
        "--from",
        "offsite",
        "--to",
        to.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("valid for libvirt").count(), 3, "{text}");
    assert!(text.contains("virsh net-define"), "{text}");
    let net = std::fs::read_to_string(to.join("shop-net.network.xml")).unwrap();
    assert!(
        net.contains("<name>shop-net</name>") && !net.contains("<forward"),
        "{net}"
    );
    for (vm, mac) in [
        ("db01", "52:54:00:1b:0a:01"),
        ("web01", "52:54:00:1b:0a:ff"),
    ] {
        let xml = std::fs::read_to_string(to.join(vm).join(format!("{vm}.xml"))).unwrap();
        assert!(xml.contains("<source network=\"shop-net\"/>"), "{xml}");
        assert!(xml.contains(&format!("<mac address=\"{mac}\"/>")), "{xml}");
        validates(&to.join(vm).join(format!("{vm}.xml")));
    }
    let mode = std::fs::metadata(&to).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // Again into the same directory: refused, nothing changed.
    let before = std::fs::read_dir(&to).unwrap().count();
    let out = d.run(&["restore", "--plan", "shop", "--to", to.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert_eq!(std::fs::read_dir(&to).unwrap().count(), before);
    // No backup that early: an error, and no directory left behind.
    let early = d.path("early");
    let out = d.run(&[
        "restore",
        "--plan",
        "shop",
        "--from",
        "offsite",
        "--at",
        "2001-01-01",
        "--to",
        early.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backup at or before 2001-01-01"));
    assert!(!early.exists());
    // What does not apply to a plan is refused, not ignored.
    let out = d.run(&[
        "restore",
        "--plan",
        "shop",
        "--format",
        "qcow2",
        "--to",
        early.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not apply"));
}

/// A VM that asks for its address with DHCP gets the one the plan says it
/// expects (from the switch, bound to its MAC), and answers for it.
#[test]
fn a_plan_vm_that_asks_with_dhcp_gets_its_planned_address() {
    let dir = tempfile::tempdir().unwrap();
    let p = |r: &str| dir.path().join(r);
    common::guest::demo_disk_as(&p("dhcp01.raw"), "dhcp01", &["plain", "dhcp", "-"]);
    std::fs::create_dir(p("scratch")).unwrap();
    std::fs::write(
        p("lifeboat.toml"),
        format!(
            "repository = \"repo\"\n[[vm]]\nname = \"dhcp01\"\nvcpus = 1\nmemory_mib = 256\n[[vm.nic]]\nmodel = \"virtio\"\nmac = \"52:54:00:aa:00:07\"\n[[vm.volume]]\nname = \"root\"\nrole = \"root\"\npath = \"{}\"\nformat = \"raw\"\n[vm.check]\nserial = \"dhcp01 login:\"\ntimeout_secs = 120\n\n[plan.solo]\nsubnet = \"10.20.0.0/24\"\nfrom = \"local\"\n[[plan.solo.vm]]\nname = \"dhcp01\"\naddress = \"10.20.0.7\"\n",
            p("dhcp01.raw").display()
        ),
    )
    .unwrap();
    let lb = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env("LIFEBOAT_CONFIG", p("lifeboat.toml"))
            .env_remove("LIFEBOAT_REPO")
            .env("LIBVIRT_DEFAULT_URI", common::NO_LIBVIRT)
            .output()
            .unwrap()
    };
    for args in [&["init", "--chunk-size", "1M"][..], &["backup", "dhcp01"]] {
        let out = lb(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let scratch = p("scratch");
    let out = lb(&[
        "--json",
        "drill",
        "--plan",
        "solo",
        "--scratch",
        scratch.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["outcome"], "pass", "{r:#}");
    assert_eq!(r["network"][0]["ok"], true, "{r:#}");
    assert!(
        r["network"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("52:54:00:aa:00:07"),
        "{r:#}"
    );
    let serial = r["members"][0]["boot"]["serial_tail"].to_string();
    assert!(serial.contains("dhcp: eth0 has 10.20.0.7/24"), "{serial}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
}

/// `restore --plan --define --start` on a libvirtd of the test's own: the
/// plan's isolated network defined and started, both VMs defined on it
/// and started in order; a second time refused before anything is written.
#[test]
fn a_plan_is_defined_into_libvirt_and_started() {
    let lv = common::libvirtd::Libvirtd::start();
    let d = Drill::with_config(|c| format!("{c}\n[libvirt]\nuri = \"{}\"\n", lv.uri));
    let parent = common::libvirtd::qemu_dir();
    let to = parent.path().join("shop");
    let out = d.run(&[
        "restore",
        "--plan",
        "shop",
        "--from",
        "offsite",
        "--to",
        to.to_str().unwrap(),
        "--define",
        "--start",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "libvirt: network shop-net defined and started",
        "libvirt: domain db01 started",
        "libvirt: domain web01 started",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(text.find("domain db01 defined") < text.find("domain web01 defined"));
    assert!(
        lv.ok(&["net-info", "shop-net"]).contains("Active"),
        "the network runs"
    );
    for vm in ["db01", "web01"] {
        assert_eq!(lv.ok(&["domstate", vm]).trim(), "running");
        assert!(lv.ok(&["dumpxml", vm]).contains("network='shop-net'"));
    }
    // Again: the names are taken; refused before anything is written.
    let again = parent.path().join("again");
    let out = d.run(&[
        "restore",
        "--plan",
        "shop",
        "--from",
        "offsite",
        "--to",
        again.to_str().unwrap(),
        "--define",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("a domain named db01 is defined"),
        "{err}"
    );
    assert!(!again.exists());
    // --start without --define is refused.
    let out = d.run(&[
        "restore",
        "--plan",
        "shop",
        "--to",
        again.to_str().unwrap(),
        "--start",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--define"));
    assert!(!out.status.success() && !again.exists());
    for vm in ["db01", "web01"] {
        lv.ok(&["destroy", vm]);
    }
}
