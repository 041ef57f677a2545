//! WAN benchmark: `lifeboat push` of a 64 MiB backup to `lifeboat serve` on
//! loopback, (a) directly, (b) under `--limit-upload 8M` (target 8 s ±15 %),
//! (c) through the in-test proxy adding 25 ms each way (50 ms RTT), and
//! (d) through it with the 8 MiB/s limit. Each push goes to a fresh
//! server repository. Ratios, not absolute times, are the result.
//!     cargo bench --bench wan_bench

#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 64;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lifeboat")
}

fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(bin());
    c.args(args).env_remove("LIFEBOAT_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Srv(Child, String);
impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(repo: &Path, tokens: &Path) -> Srv {
    std::fs::create_dir_all(repo).unwrap();
    let mut child = Command::new(bin())
        .arg("-r")
        .arg(repo)
        .args(["serve", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(tokens)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .trim_start_matches("listening on http://")
        .to_string();
    Srv(child, addr)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    run(&["init", repo.to_str().unwrap()], &[]);
    let img = d.join("d.raw");
    {
        let mut f = std::fs::File::create(&img).unwrap();
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..MIB {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            f.write_all(&buf).unwrap();
        }
    }
    let vol = format!("root={}", img.display());
    let r = repo.to_str().unwrap();
    run(
        &["-r", r, "backup", "vm", "--format", "raw", "--volume", &vol],
        &[],
    );
    let tokens = d.join("tokens.toml");
    let out = run(
        &[
            "serve",
            "token",
            "add",
            "b",
            "--role",
            "append",
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // A token the server caps at 8 MiB/s for what it fetches.
    let out = run(
        &[
            "serve",
            "token",
            "add",
            "capped",
            "--role",
            "read",
            "--cap-download",
            "8M",
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    let capped = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut n = 0;
    let mut push = |via_proxy: Option<proxy::Link>, limit: Option<&str>| -> Duration {
        n += 1;
        let srv = server(&d.join(format!("srv{n}")), &tokens);
        let _p;
        let addr = match via_proxy {
            Some(link) => {
                _p = proxy::Proxy::start(&srv.1, link);
                _p.addr.clone()
            }
            None => srv.1.clone(),
        };
        let url = format!("http://{addr}/");
        let mut args = vec!["-r", r, "push", &url, "--init"];
        if let Some(l) = limit {
            args.extend(["--limit-upload", l]);
        }
        let t = Instant::now();
        run(&args, &[("LIFEBOAT_TOKEN", &token)]);
        t.elapsed()
    };
    let wan = proxy::Link {
        one_way: Duration::from_millis(25),
        ..Default::default()
    };
    let direct = push(None, None);
    let limited = push(None, Some("8M"));
    let over_wan = push(Some(wan), None);
    let wan_limited = push(Some(wan), Some("8M"));
    // Pull the direct push's copy back with the capped token.
    let pulled = {
        let srv = server(&d.join("srv1"), &tokens);
        let url = format!("http://{}/", srv.1);
        let back = d.join("back");
        let t = Instant::now();
        run(
            &["-r", back.to_str().unwrap(), "pull", &url, "--init"],
            &[("LIFEBOAT_TOKEN", &capped)],
        );
        t.elapsed()
    };
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mbs = |d: Duration| format!("{:.1} MiB/s", MIB as f64 / d.as_secs_f64());
    println!("| push of {MIB} MiB (one backup, 4 MiB chunks) to lifeboat serve on loopback | time | rate | ratio |");
    println!("|---|---|---|---|");
    println!("| direct | {} | {} | 1.00 |", s(direct), mbs(direct));
    println!(
        "| --limit-upload 8M (target 8 s ±15 %) | {} | {} | {:.2} of 8 s |",
        s(limited),
        mbs(limited),
        limited.as_secs_f64() / 8.0
    );
    println!(
        "| through the proxy, 50 ms RTT | {} | {} | {:.2}x the direct rate |",
        s(over_wan),
        mbs(over_wan),
        direct.as_secs_f64() / over_wan.as_secs_f64()
    );
    println!(
        "| 50 ms RTT and --limit-upload 8M | {} | {} | {:.2} of 8 s |",
        s(wan_limited),
        mbs(wan_limited),
        wan_limited.as_secs_f64() / 8.0
    );
    println!(
        "| pull with a token the server caps at 8M (token add --cap-download 8M) | {} | {} | {:.2} of 8 s |",
        s(pulled),
        mbs(pulled),
        pulled.as_secs_f64() / 8.0
    );
}
