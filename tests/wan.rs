//! A push over a bad WAN link: latency, a rate cap and connections dropped
//! mid-transfer (the in-test proxy on loopback). The push completes and
//! the server's copy verifies deep; a bandwidth limit keeps a push slow
//! and its result whole.

mod common;

use std::time::Duration;

use common::proxy::{Link, Proxy};
use common::remote::Server;
use common::{manifest_files, World};

fn world(mib: usize) -> (World, String, Server) {
    let w = World::new();
    w.init("256K");
    w.backup_noise("vm", "d.raw", mib << 20, 7);
    let (srv, tokens, token) = common::remote::server_dir(w.dir.path(), "site", "append");
    let server = Server::start(&srv, &tokens, "127.0.0.1:0");
    (w, token, server)
}

fn push(w: &World, token: &str, url: &str, extra: &[&str]) -> std::process::Output {
    w.cmd()
        .arg("-r")
        .arg(w.repo())
        .env("LIFEBOAT_TOKEN", token)
        .args(["push", url, "--init"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn push_over_a_slow_lossy_link_completes_and_verifies() {
    let (w, token, server) = world(6);
    let proxy = Proxy::start(
        &server.addr,
        Link {
            one_way: Duration::from_millis(20),
            rate: Some(8 << 20),
            drop_after: Some(300 << 10),
            max_drops: 4,
        },
    );
    let url = format!("http://{}/", proxy.addr);
    // Dropped connections are transient: the push retries them; a push
    // that still gives up is resumed by running it again.
    let mut out = push(&w, &token, &url, &[]);
    for _ in 0..3 {
        if out.status.success() {
            break;
        }
        out = push(&w, &token, &url, &[]);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        proxy.drops.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "no connection was dropped"
    );
    assert_eq!(manifest_files(&w.path("srv")).len(), 1);
    // The server's copy is whole: deep verify there.
    let out = w
        .cmd()
        .arg("-r")
        .arg(w.path("srv"))
        .args(["verify", "--deep"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // And a pull of it through the same link restores the same bytes.
    let back = w.path("back");
    let out = w
        .cmd()
        .arg("-r")
        .arg(&back)
        .env("LIFEBOAT_TOKEN", &token)
        .args(["pull", &url, "--init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.restore_equals(&back, "vm/root", &w.path("d.raw"));
}

#[test]
fn a_limited_push_reports_its_limit_and_arrives_whole() {
    let (w, token, server) = world(2);
    // 2 MiB at 4 MiB/s: about half a second; the figure is measured in
    // benches/wan_bench.rs, here only the result is checked.
    let out = push(&w, &token, &server.url, &["--limit-upload", "4M", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifests_sent"], 1, "{v}");
    let out = w
        .cmd()
        .arg("-r")
        .arg(w.path("srv"))
        .args(["verify", "--deep"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // A bad limit is refused before anything moves.
    let out = push(&w, &token, &server.url, &["--limit-upload", "fast"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
