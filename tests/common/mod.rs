//! Helpers for whole-flow tests: run the real binary, make images with the
//! real qemu-img.
#![allow(dead_code)]

pub mod guest;
pub mod libvirtd;
pub mod proxy;
pub mod pty;
pub mod remote;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

/// Where every test's virsh connects: a socket no daemon listens on. A
/// test never reaches the host's own libvirtd (it would define domains
/// there and leave them behind); tests that need libvirt start their own.
pub const NO_LIBVIRT: &str = "qemu+unix:///system?socket=/nonexistent/lifeboat-tests/libvirt-sock";

pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        World {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// A command for the binary, isolated from the user's config and repo.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .env_remove("LIFEBOAT_CONFIG")
            .env_remove("LIFEBOAT_REPO")
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .env("LIBVIRT_DEFAULT_URI", NO_LIBVIRT);
        c
    }

    /// Runs `lifeboat -r repo ARGS`.
    pub fn lb(&self, args: &[&str]) -> Output {
        let repo = self.repo();
        let mut c = self.cmd();
        c.arg("-r").arg(&repo).args(args);
        c.output().expect("run lifeboat")
    }

    /// Runs `lifeboat --config CFG ARGS` (the repository is the config's).
    pub fn with_config(&self, cfg: &Path, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.arg("--config").arg(cfg).args(args);
        c.output().expect("run lifeboat")
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.lb(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs, asserts failure, returns stderr + stdout.
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.lb(args);
        assert!(
            !out.status.success(),
            "lifeboat {args:?} should fail but succeeded"
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !text.contains("panicked"),
            "panic in lifeboat {args:?}: {text}"
        );
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("valid JSON output")
    }

    /// A `lifeboat serve` on loopback with everything the local repository
    /// holds pushed to it (with an append token), and a read-only token.
    pub fn offsite(&self) -> remote::Offsite {
        let (srv, tokens, append) = remote::server_dir(self.dir.path(), "site", "append");
        let reader = remote::add_token(&tokens, "reader", "read");
        let server = remote::Server::start(&srv, &tokens, "127.0.0.1:0");
        let push = self
            .cmd()
            .arg("-r")
            .arg(self.repo())
            .env("LIFEBOAT_TOKEN", &append)
            .args(["push", &server.url, "--init"])
            .output()
            .expect("push");
        assert!(
            push.status.success(),
            "{}",
            String::from_utf8_lossy(&push.stderr)
        );
        remote::Offsite {
            server,
            srv,
            tokens,
            reader,
        }
    }

    pub fn init(&self, chunk: &str) {
        self.ok(&["init", "--chunk-size", chunk]);
    }

    /// Writes `len` bytes of noise to the file `name` and backs it up as
    /// `vm`'s raw root volume; returns the image's path.
    pub fn backup_noise(&self, vm: &str, name: &str, len: usize, seed: u64) -> PathBuf {
        let img = self.path(name);
        write_at(&img, 0, &noise(len, seed));
        self.backup_file(vm, &img);
        img
    }

    /// Backs up the raw file `img` as `vm`'s root volume.
    pub fn backup_file(&self, vm: &str, img: &Path) {
        self.ok(&[
            "backup",
            vm,
            "--format",
            "raw",
            "--volume",
            &format!("root={}", img.display()),
        ]);
    }

    /// Restores `reference` from the repository `repo` to a new file and
    /// checks it equals `expected`.
    pub fn restore_equals(&self, repo: &Path, reference: &str, expected: &Path) {
        let target = self.path(&format!("restored-{}.raw", unique_suffix()));
        let out = self
            .cmd()
            .arg("-r")
            .arg(repo)
            .args(["restore", reference, "--to", target.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_file(&target, expected);
    }
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_io(file: &Path, fmt: &str, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(file).output().expect("qemu-io runs");
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Identical guest content, as qemu itself judges it.
pub fn assert_same_image(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img compare");
    assert!(
        out.status.success(),
        "images differ: {} vs {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible bytes, like text or binaries.
pub fn text(len: usize) -> Vec<u8> {
    let words = b"lifeboat restores virtual machines from content addressed backups ";
    words.iter().cycle().take(len).copied().collect()
}

/// Writes `data` at `offset`, creating the file and growing it as needed.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .expect("open");
    f.write_all_at(data, offset).expect("write");
}

/// A sparse raw image of `size` bytes with a few data regions.
pub fn sparse_raw(path: &Path, size: u64, seed: u64) {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .expect("create");
    f.set_len(size).expect("size");
    write_at(path, 0, &noise(300_000, seed));
    write_at(path, size / 3, &text(700_000));
    write_at(path, size - 100_000, &noise(100_000, seed + 1));
}

pub fn manifest_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(&repo.join("manifests"), &mut out);
    out.retain(|p| p.extension().is_some_and(|e| e == "json"));
    out
}

/// Writes a passphrase or key file as an admin would: private to its
/// owner (lifeboat refuses one others may read).
/// An HTTP client for talking to servers directly. reqwest is built
/// without a TLS provider of its own: lifeboat installs ring first.
pub fn http() -> reqwest::Client {
    lifeboat_core::store::tls::install_crypto();
    reqwest::Client::new()
}

pub fn secret_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("mode 0600");
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Object files (not temp files) under a directory.
pub fn objects_under(dir: &Path) -> usize {
    files_under(dir)
        .iter()
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .count()
}

/// Same bytes, compared by hash so a failure does not print the files.
pub fn assert_same_file(a: &Path, b: &Path) {
    let h = |p: &Path| {
        blake3::hash(&std::fs::read(p).expect("read"))
            .to_hex()
            .to_string()
    };
    assert_eq!(h(a), h(b), "{} and {} differ", a.display(), b.display());
}

/// A temporary directory that stays after the test when
/// `LIFEBOAT_TEST_KEEP` is set, to look into a failure that is hard to
/// reproduce (the path is printed).
#[allow(dead_code)]
pub fn test_dir() -> tempfile::TempDir {
    let mut d = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("LIFEBOAT_TEST_KEEP").is_some() {
        d.disable_cleanup(true);
        eprintln!("kept: {}", d.path().display());
    }
    d
}
