//! TLS in one step: the server makes its own certificate, clients pin its
//! fingerprint; a wrong fingerprint sends nothing; a CA-signed leaf keeps
//! working; an `openssl req -x509` certificate works pinned and is refused
//! with an explanation otherwise; plain HTTP off loopback needs a flag.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::remote::add_token;
use common::{files_under, manifest_files, World, BIN};

struct Tls {
    child: Child,
    url: String,
    fingerprint: Option<String>,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` with `extra` arguments; reads the address and, for
/// HTTPS, the fingerprint line.
fn serve(repo: &Path, tokens: &Path, listen: &str, extra: &[&str]) -> Tls {
    std::fs::create_dir_all(repo).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(tokens.parent().unwrap().parent().unwrap())
        .arg("-r")
        .arg(repo)
        .args(["serve", "--listen", listen, "--tokens"])
        .arg(tokens)
        .args(extra)
        .env_remove("LIFEBOAT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no address line: {line:?}"))
        .replace("0.0.0.0", "127.0.0.1");
    let mut fingerprint = None;
    if url.starts_with("https://") {
        line.clear();
        out.read_line(&mut line).unwrap();
        fingerprint = line
            .trim()
            .strip_prefix("certificate fingerprint (SHA-256): ")
            .map(str::to_string);
        assert!(fingerprint.is_some(), "no fingerprint line: {line:?}");
    }
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in out.lines() {});
    Tls {
        child,
        url: format!("{url}/"),
        fingerprint,
    }
}

fn world() -> (World, String, std::path::PathBuf) {
    let w = World::new();
    w.init("64K");
    w.backup_noise("vm", "d.raw", 600_000, 3);
    let tokens = w.path("etc/tokens.toml");
    let token = add_token(&tokens, "site", "append");
    (w, token, tokens)
}

fn push(w: &World, token: &str, url: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = w.cmd();
    c.arg("-r")
        .arg(w.repo())
        .env("LIFEBOAT_TOKEN", token)
        .args(["push", url, "--init"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A config with the remote `off` at `url` (token from $T) and `trust`
/// (a `ca_cert` or `fingerprint` line).
fn remote_config(path: &Path, url: &str, trust: &str) {
    std::fs::write(
        path,
        format!("[remote.off]\nurl = \"{url}\"\ntoken_env = \"T\"\n{trust}\n"),
    )
    .unwrap();
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

#[test]
fn first_start_makes_a_certificate_and_clients_pin_it() {
    let (w, token, tokens) = world();
    let srv = w.path("srv");
    let s = serve(&srv, &tokens, "127.0.0.1:0", &["--tls"]);
    let fp = s.fingerprint.clone().unwrap();
    // Kept next to the tokens, private.
    let dir = w.path("etc/tls");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    // `serve fingerprint` prints the same.
    let out = w
        .cmd()
        .args(["serve", "fingerprint", "--tokens"])
        .arg(&tokens)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), fp);

    // A wrong fingerprint: refused, both shown, nothing sent.
    let mut wrong = fp.clone();
    wrong.replace_range(0..2, if &fp[..2] == "00" { "11" } else { "00" });
    let out = push(&w, &token, &s.url, &[("LIFEBOAT_FINGERPRINT", &wrong)]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&fp) && e.contains(&wrong) && e.contains("Nothing was sent"),
        "{e}"
    );
    assert!(
        !srv.join("lifeboat.json").exists(),
        "the repository was created"
    );
    assert!(
        files_under(&srv).is_empty(),
        "something was sent: {:?}",
        files_under(&srv)
    );
    // No pin and no CA: refused with what to do.
    let out = push(&w, &token, &s.url, &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("serve fingerprint"),
        "{e}"
    );
    assert!(!e.contains("ERROR"), "a duplicate log line: {e}");

    // The printed fingerprint, through the config: the push works.
    let cfg = w.path("lifeboat.toml");
    let add = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args([
            "remote",
            "add",
            "offsite",
            &s.url,
            "--token-env",
            "OFF_TOKEN",
        ])
        .args(["--fingerprint", &fp.to_uppercase()])
        .output()
        .unwrap();
    assert!(add.status.success(), "{add:?}");
    assert!(
        std::fs::read_to_string(&cfg).unwrap().contains(&fp),
        "stored canonical"
    );
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("-r")
        .arg(w.repo())
        .env("OFF_TOKEN", &token)
        .args(["push", "offsite", "--init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(manifest_files(&srv).len(), 1);
    // A bad fingerprint in `remote add` is refused at once.
    let bad = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["remote", "add", "x", &s.url, "--fingerprint", "12:34"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("64 hex digits"));
}

#[test]
fn openssl_certificates_self_signed_pinned_and_ca_signed() {
    let (w, token, tokens) = world();
    let d = w.dir.path();
    // The usual self-signed certificate: a CA certificate used as a leaf.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        d,
    );
    let s = serve(
        &w.path("srv1"),
        &tokens,
        "127.0.0.1:0",
        &["--tls-cert", "self.pem", "--tls-key", "self.key"],
    );
    // As --ca-cert: refused, with the reason and the way out.
    let cfg = w.path("c1.toml");
    remote_config(
        &cfg,
        &s.url,
        &format!("ca_cert = \"{}\"", w.path("self.pem").display()),
    );
    let run = |cfg: &Path| {
        w.cmd()
            .arg("--config")
            .arg(cfg)
            .arg("-r")
            .arg(w.repo())
            .env("T", &token)
            .args(["push", "off", "--init"])
            .output()
            .unwrap()
    };
    let out = run(&cfg);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("CA certificate used as its own") && e.contains("--fingerprint"),
        "{e}"
    );
    // Pinned with openssl's own fingerprint output: accepted.
    let fp = Command::new("openssl")
        .args([
            "x509",
            "-in",
            "self.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout).trim().to_string();
    assert!(
        fp.starts_with("sha256 Fingerprint=") || fp.starts_with("SHA256 Fingerprint="),
        "{fp}"
    );
    remote_config(&cfg, &s.url, &format!("fingerprint = \"{fp}\""));
    let out = run(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(s);

    // A private CA and a leaf it signed: --ca-cert works as before.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Test CA",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
        d,
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
        ],
        d,
    );
    let s = serve(
        &w.path("srv2"),
        &tokens,
        "127.0.0.1:0",
        &["--tls-cert", "leaf.pem", "--tls-key", "leaf.key"],
    );
    let cfg2 = w.path("c2.toml");
    remote_config(
        &cfg2,
        &s.url,
        &format!("ca_cert = \"{}\"", w.path("ca.pem").display()),
    );
    let out = run(&cfg2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(manifest_files(&w.path("srv2")).len(), 1);
}

#[test]
fn off_loopback_https_is_the_default_and_plain_http_needs_a_flag() {
    let (w, token, tokens) = world();
    let s = serve(&w.path("srv"), &tokens, "0.0.0.0:0", &[]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let fp = s.fingerprint.clone().unwrap();
    let out = push(&w, &token, &s.url, &[("LIFEBOAT_FINGERPRINT", &fp)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(s);
    let s = serve(&w.path("srv2"), &tokens, "0.0.0.0:0", &["--insecure-http"]);
    assert!(s.url.starts_with("http://"), "{}", s.url);
}
