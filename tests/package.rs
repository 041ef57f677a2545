//! The Debian package: built by `scripts/package.sh` (cargo-deb) from the
//! binary this test run built, checked with dpkg's own tools, installed
//! into a scratch root with dpkg (maintainer scripts honouring DPKG_ROOT,
//! so nothing on the host changes), its units checked by systemd-analyze,
//! and the installed binary run.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::BIN;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the package from the test binary into `dir`.
fn build_package(dir: &Path) -> PathBuf {
    let deb = dir.join("lifeboat.deb");
    run(Command::new(repo_root().join("scripts/package.sh"))
        .current_dir(repo_root())
        // Its own target dir: the test binary is copied there, and the
        // suite's own target dir (locked by cargo test) is not touched.
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .arg("--binary")
        .arg(BIN)
        .arg("--fast")
        .arg("--output")
        .arg(&deb));
    assert!(deb.is_file(), "no package at {}", deb.display());
    deb
}

/// `Key: value` fields of `dpkg-deb --field`.
fn control(deb: &Path) -> BTreeMap<String, String> {
    let text = stdout(Command::new("dpkg-deb").arg("--field").arg(deb));
    let mut fields = BTreeMap::new();
    let mut last = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(' ') {
            if let Some(v) = fields.get_mut(&last) {
                let v: &mut String = v;
                v.push('\n');
                v.push_str(rest);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            last = k.to_string();
            fields.insert(last.clone(), v.trim().to_string());
        }
    }
    fields
}

/// Path → (mode string, owner/group) from `dpkg-deb --contents`.
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let text = stdout(Command::new("dpkg-deb").arg("--contents").arg(deb));
    text.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 6 {
                return None;
            }
            let path = cols[5].trim_start_matches('.').trim_end_matches('/');
            Some((path.to_string(), (cols[0].to_string(), cols[1].to_string())))
        })
        .collect()
}

/// Every subcommand, nested ones too, as `lifeboat help` lists them:
/// `["backup", "key add", …]`.
fn subcommands(path: &[&str]) -> Vec<String> {
    let mut args: Vec<&str> = path.to_vec();
    args.push("--help");
    let help = stdout(Command::new(BIN).args(&args));
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.trim_end() == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !line.starts_with("  ") {
                break;
            }
            // A wrapped description's lines are indented further.
            let name = line.split_whitespace().next().unwrap_or("");
            if line.starts_with("   ") || name == "help" {
                continue;
            }
            let mut full: Vec<&str> = path.to_vec();
            full.push(name);
            names.push(full.join(" "));
            names.extend(subcommands(&full));
        }
    }
    names
}

fn dpkg_field(deps: &str) -> Vec<String> {
    deps.split(',')
        .map(|d| d.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_debian_package_installs_what_an_admin_expects() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(dir.path());

    // The control file: name, architecture, and what each feature needs.
    let fields = control(&deb);
    assert_eq!(fields.get("Package").map(String::as_str), Some("lifeboat"));
    assert_eq!(
        fields.get("Architecture").map(String::as_str),
        Some("amd64")
    );
    assert_eq!(
        fields.get("Version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let depends = dpkg_field(fields.get("Depends").expect("Depends"));
    for want in ["libc6", "qemu-utils"] {
        assert!(
            depends.iter().any(|d| d == want),
            "Depends lacks {want}: {depends:?}"
        );
    }
    let recommends = dpkg_field(fields.get("Recommends").expect("Recommends"));
    for want in [
        "qemu-system-x86",
        "busybox-static",
        "syslinux",
        "libvirt-clients",
    ] {
        assert!(
            recommends.iter().any(|d| d == want),
            "Recommends lacks {want}: {recommends:?}"
        );
    }

    // The files, with their modes.
    let files = contents(&deb);
    let mode = |p: &str| -> &str {
        &files
            .get(p)
            .unwrap_or_else(|| panic!("the package has no {p}: {:?}", files.keys()))
            .0
    };
    assert_eq!(mode("/usr/bin/lifeboat"), "-rwxr-xr-x");
    for f in [
        "/lib/systemd/system/lifeboat-serve.service",
        "/lib/systemd/system/lifeboat-daemon.service",
        "/usr/share/bash-completion/completions/lifeboat",
        "/usr/share/zsh/vendor-completions/_lifeboat",
        "/usr/share/fish/vendor_completions.d/lifeboat.fish",
        "/usr/share/doc/lifeboat/examples/config.toml",
        "/usr/share/doc/lifeboat/copyright",
        "/usr/share/doc/lifeboat/SERVER.md",
        "/usr/share/man/man1/lifeboat.1.gz",
    ] {
        assert_eq!(mode(f), "-rw-r--r--", "{f}");
    }
    for (path, (_, owner)) in &files {
        assert!(
            owner == "root/root" || owner == "0/0",
            "{path} is not root's: {owner}"
        );
    }
    let subs = subcommands(&[]);
    assert!(subs.len() > 30, "too few subcommands found: {subs:?}");
    for sub in &subs {
        let page = format!(
            "/usr/share/man/man1/lifeboat-{}.1.gz",
            sub.replace(' ', "-")
        );
        assert_eq!(
            mode(&page),
            "-rw-r--r--",
            "no man page for `lifeboat {sub}`"
        );
    }
    // The binary in the package carries no debuginfo.
    let extracted = dir.path().join("extract");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted));
    let sections = stdout(
        Command::new("readelf")
            .arg("-S")
            .arg(extracted.join("usr/bin/lifeboat")),
    );
    assert!(
        !sections.contains(".debug_info"),
        "the packaged binary carries debuginfo"
    );
    run(Command::new("bash")
        .arg("-n")
        .arg(extracted.join("usr/share/bash-completion/completions/lifeboat")));

    // Installed into a scratch root: dpkg runs the maintainer scripts
    // without chrooting, with DPKG_ROOT set; they must touch only the root.
    let root = dir.path().join("root");
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    scratch_root(&root);
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            "--force-depends",
            "--log=/dev/null",
            "--install",
        ])
        .arg(&deb));
    assert_eq!(
        std::fs::read("/etc/passwd").unwrap(),
        host_passwd,
        "installing into a scratch root changed the host's users"
    );
    let status = stdout(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Status}", "lifeboat"]),
    );
    assert_eq!(status, "install ok installed");

    // The system user the server runs as, and its private directories.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("lifeboat:"))
        .unwrap_or_else(|| panic!("no lifeboat user in {passwd}"))
        .split(':')
        .collect();
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system uid: {uid}");
    assert_eq!(user[5], "/var/lib/lifeboat-serve");
    assert_eq!(user[6], "/usr/sbin/nologin");
    for (d, owner) in [
        ("var/lib/lifeboat-serve", uid),
        ("etc/lifeboat/serve", uid),
        ("var/lib/lifeboat", 0),
    ] {
        let meta = std::fs::metadata(root.join(d)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{d}");
        assert_eq!(meta.uid(), owner, "{d}");
    }

    // systemd's own check of the installed units.
    let units: Vec<PathBuf> = ["lifeboat-serve.service", "lifeboat-daemon.service"]
        .iter()
        .map(|u| root.join("lib/systemd/system").join(u))
        .collect();
    systemd_basics(&root);
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        // Documentation= names man pages; the scratch root has no man-db.
        .arg("--man=no")
        .args(&units)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !said.contains("lifeboat"),
        "systemd-analyze verify: {said}"
    );

    // The installed binary runs, and its demo builds its world.
    let lifeboat = root.join("usr/bin/lifeboat");
    let version = stdout(Command::new(&lifeboat).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let world = common::World::new();
    let out = run(Command::new(&lifeboat)
        .current_dir(world.dir.path())
        .env("HOME", world.dir.path())
        .env("XDG_CONFIG_HOME", world.path("xdg-config"))
        .env("XDG_DATA_HOME", world.path("xdg-data"))
        .env_remove("LIFEBOAT_CONFIG")
        .env_remove("LIFEBOAT_REPO")
        .env("LIBVIRT_DEFAULT_URI", common::NO_LIBVIRT)
        .args(["demo", "--no-tui", "--keep"])
        .arg(world.path("demo")));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        world.path("demo").is_dir(),
        "the demo made no world: {said}"
    );
}

/// What every Debian system with systemd has and the units refer to:
/// systemd's targets (the systemd package) and /bin/kill (procps), taken
/// from this machine. Any warning about our units still fails the test:
/// systemd-analyze verify exits 0 on an unknown key, so its output is read.
fn systemd_basics(root: &Path) {
    let units = root.join("lib/systemd/system");
    for entry in
        std::fs::read_dir("/lib/systemd/system").expect("systemd's units (the systemd package)")
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "target") && path.is_file() {
            std::fs::copy(&path, units.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
}

/// The least a root needs for dpkg and useradd: dpkg's database and the
/// account files.
fn scratch_root(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (f, text) in [
        ("var/lib/dpkg/status", ""),
        ("var/lib/dpkg/available", ""),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:20000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\n"),
    ] {
        std::fs::write(root.join(f), text).unwrap();
    }
}
