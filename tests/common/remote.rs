//! Helpers for remote tests: the real server binary on loopback, stores,
//! and the Garage cluster that scripts/test.sh starts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::BIN;

pub struct Server {
    pub child: Child,
    pub url: String,
    pub addr: String,
    /// The certificate's SHA-256 fingerprint, for an HTTPS server.
    pub fingerprint: Option<String>,
}

impl Server {
    /// Starts `lifeboat serve` on `listen` (e.g. 127.0.0.1:0) over `repo`,
    /// without an immutability window (the tests of prune and gc remove
    /// what they just pushed; the window has tests of its own).
    pub fn start(repo: &Path, tokens: &Path, listen: &str) -> Server {
        Server::start_with(repo, tokens, listen, &["--immutable-days", "0"])
    }

    /// Starts `lifeboat serve` with `extra` arguments.
    pub fn start_with(repo: &Path, tokens: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .arg("-r")
            .arg(repo)
            .args(["serve", "--listen", listen, "--tokens"])
            .arg(tokens)
            .args(extra)
            .env_remove("LIFEBOAT_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("server prints its address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        let mut fingerprint = None;
        if url.starts_with("https://") {
            line.clear();
            out.read_line(&mut line)
                .expect("server prints its fingerprint");
            fingerprint = line
                .trim()
                .strip_prefix("certificate fingerprint (SHA-256): ")
                .map(str::to_string);
            assert!(fingerprint.is_some(), "no fingerprint line: {line:?}");
        }
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in out.lines() {});
        let addr = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        Server {
            child,
            url,
            addr,
            fingerprint,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new, empty server repository `srv` under `dir` and a tokens file
/// `tokens.toml` beside it holding one token of `role` named `name`:
/// (srv, tokens, token).
pub fn server_dir(dir: &Path, name: &str, role: &str) -> (PathBuf, PathBuf, String) {
    let srv = dir.join("srv");
    std::fs::create_dir(&srv).expect("server repository directory");
    let tokens = dir.join("tokens.toml");
    let token = add_token(&tokens, name, role);
    (srv, tokens, token)
}

/// A `lifeboat serve` on loopback holding what a test's local repository
/// holds (`World::offsite`), and a read-only token for it.
pub struct Offsite {
    pub server: Server,
    pub srv: PathBuf,
    pub tokens: PathBuf,
    pub reader: String,
}

/// Writes a config at `cfg` naming the server at `url` as remote
/// `offsite`, its token taken from OFFSITE_TOKEN.
pub fn offsite_config(cfg: &Path, url: &str) {
    std::fs::write(
        cfg,
        format!(
            "[remote.offsite]\nurl = \"{url}\"\ntoken_env = \"OFFSITE_TOKEN\"\ntimeout_secs = 20\n"
        ),
    )
    .expect("config written");
}

/// Adds a token with `role` to `tokens`, returning it.
pub fn add_token(tokens: &Path, name: &str, role: &str) -> String {
    add_token_with(tokens, name, role, &[])
}

/// Adds a token with `role` and `extra` options (`--scope`, caps).
pub fn add_token_with(tokens: &Path, name: &str, role: &str, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["serve", "token", "add", name, "--role", role, "--tokens"])
        .arg(tokens)
        .args(extra)
        .output()
        .expect("token add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("token line")
        .trim()
        .to_string()
}

pub struct Garage {
    pub endpoints: Vec<String>,
    pub bucket: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
    pub dir: String,
    pub bin: String,
}

/// The Garage cluster from scripts/test.sh, or None (with a note) when the
/// tests run without it.
pub fn garage() -> Option<Garage> {
    let get = |k: &str| std::env::var(k).ok();
    match (
        get("LIFEBOAT_TEST_S3_ENDPOINTS"),
        get("LIFEBOAT_TEST_S3_BUCKET"),
        get("LIFEBOAT_TEST_S3_KEY_ID"),
        get("LIFEBOAT_TEST_S3_SECRET"),
    ) {
        (Some(e), Some(b), Some(k), Some(s)) => Some(Garage {
            endpoints: e.split(',').map(String::from).collect(),
            bucket: b,
            region: get("LIFEBOAT_TEST_S3_REGION").unwrap_or_else(|| "garage".into()),
            key_id: k,
            secret: s,
            dir: get("LIFEBOAT_TEST_GARAGE_DIR").unwrap_or_default(),
            bin: get("LIFEBOAT_TEST_GARAGE_BIN").unwrap_or_else(|| "garage".into()),
        }),
        _ => {
            if std::env::var("CI").is_ok() {
                panic!("CI must run the S3 tests: run scripts/test.sh, which starts Garage");
            }
            eprintln!("SKIPPED: no Garage cluster (run scripts/test.sh to start one)");
            None
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    n ^ std::process::id().rotate_left(16)
}
