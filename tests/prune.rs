//! `lifeboat prune` on the demo world's two weeks of backups: the dry run
//! is a simulator (every set, the rule that keeps it, or removed), the real
//! run removes exactly what it said, sets go whole, and what stays
//! verifies. A served remote needs an admin token to be pruned.

mod common;

use common::remote::{add_token, Server};
use common::{manifest_files, World, BIN};

fn demo_world(w: &World) -> std::path::PathBuf {
    let dir = w.path("demo");
    let out = std::process::Command::new(BIN)
        .args(["demo", "--no-tui", "--keep", dir.to_str().unwrap()])
        .env("HOME", w.dir.path())
        .env("XDG_DATA_HOME", w.path("xdg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("lifeboat.toml")
}

#[test]
fn prune_simulates_then_removes_whole_sets() {
    let w = World::new();
    let cfg = demo_world(&w);
    let run = |args: &[&str]| {
        let out = w
            .cmd()
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let repo = cfg.parent().unwrap().join("repo");
    let before = manifest_files(&repo).len();
    let v: serde_json::Value =
        serde_json::from_str(&run(&["--json", "prune", "--keep-daily", "3", "--dry-run"])).unwrap();
    let sets = v["sets"].as_array().unwrap();
    assert!(!sets.is_empty());
    // Every set is listed, kept with its rule or removed.
    for s in sets {
        let reasons = s["reasons"].as_array().unwrap();
        assert_eq!(s["keep"].as_bool().unwrap(), !reasons.is_empty(), "{s}");
    }
    // Per VM: at most 3 days kept, or the newest set alone (always kept).
    let mut vms: std::collections::BTreeMap<String, usize> = Default::default();
    for s in sets.iter().filter(|s| s["keep"] == true) {
        *vms.entry(s["vm"].as_str().unwrap().into()).or_default() += 1;
    }
    assert!(vms.values().all(|n| (1..=3).contains(n)), "{vms:?}");
    let would: usize = v["removed_backups"].as_u64().unwrap() as usize;
    assert!(would > 0);
    assert_eq!(
        manifest_files(&repo).len(),
        before,
        "a dry run removed something"
    );
    // The human table names the rule.
    let text = run(&["prune", "--keep-daily", "3", "--dry-run"]);
    assert!(
        text.contains("daily 20") && text.contains("removed"),
        "{text}"
    );

    // The real run removes exactly that, whole sets at a time.
    let v: serde_json::Value =
        serde_json::from_str(&run(&["--json", "prune", "--keep-daily", "3"])).unwrap();
    assert_eq!(v["removed_backups"].as_u64().unwrap() as usize, would);
    assert_eq!(manifest_files(&repo).len(), before - would);
    let kept_sets: Vec<&str> = sets
        .iter()
        .filter(|s| s["keep"] == true)
        .map(|s| s["set"].as_str().unwrap())
        .collect();
    for f in manifest_files(&repo) {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert!(
            kept_sets.contains(&m["set"].as_str().unwrap()),
            "a backup of a removed set remains: {}",
            f.display()
        );
    }
    run(&["verify"]);
    // Without flags and without a policy there is nothing to prune by.
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["prune", "--dry-run"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to prune by"),
        "{out:?}"
    );

    // With a policy in the config, prune follows it per VM.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("default_policy = \"p\"\n{text}\n[policy.p]\nschedule = \"daily 02:30\"\nkeep_last = 1\n"),
    )
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&run(&["--json", "prune", "--dry-run"])).unwrap();
    let sets = v["sets"].as_array().unwrap();
    assert!(
        sets.iter()
            .filter(|s| s["keep"] == true)
            .all(|s| s["reasons"][0] == "last 1"),
        "{v}"
    );
    // A policy that keeps nothing is refused when the config loads.
    std::fs::write(
        &cfg,
        format!("default_policy = \"p\"\n{text}\n[policy.p]\nkeep_last = 0\n"),
    )
    .unwrap();
    let out = w
        .cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["ls"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("policy p") && e.contains("keeps nothing") && e.contains("line "),
        "{e}"
    );
}

#[test]
fn pruning_a_served_remote_needs_an_admin_token() {
    let w = World::new();
    w.init("64K");
    w.backup_noise("vm", "a.raw", 200_000, 1);
    w.backup_noise("vm", "a.raw", 200_000, 2);
    let (srv, tokens, append) = common::remote::server_dir(w.dir.path(), "site", "append");
    let admin = add_token(&tokens, "ops", "admin");
    let server = Server::start(&srv, &tokens, "127.0.0.1:0");
    let lb = |token: &str, args: &[&str]| {
        w.cmd()
            .arg("-r")
            .arg(w.repo())
            .env("LIFEBOAT_TOKEN", token)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(lb(&append, &["push", &server.url, "--init"])
        .status
        .success());
    let out = lb(
        &append,
        &["prune", "--remote", &server.url, "--keep-last", "1"],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("needs admin"), "{e}");
    let out = lb(
        &admin,
        &["prune", "--remote", &server.url, "--keep-last", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(manifest_files(&srv).len(), 1);
    assert_eq!(
        manifest_files(&w.repo()).len(),
        2,
        "the local repository is untouched"
    );
}

/// `protect` keeps a set from prune, the mark travels with push, an
/// append-only token may protect but not unprotect, and `unprotect` lets
/// prune remove it again.
#[test]
fn protection_keeps_a_set_and_travels_with_push() {
    let w = World::new();
    w.init("64K");
    let first = w.backup_noise("vm", "a.raw", 200_000, 1);
    w.backup_noise("vm", "a.raw", 200_000, 2);
    w.backup_noise("vm", "a.raw", 200_000, 3);
    let out = w.ok(&["protect", "vm@~2", "--note", "before the upgrade"]);
    assert!(out.contains("protected vm/root"), "{out}");

    let served = w.path("served");
    std::fs::create_dir_all(&served).unwrap();
    let tokens = w.path("tokens.json");
    let append = add_token(&tokens, "site", "append");
    let admin = add_token(&tokens, "ops", "admin");
    let server = Server::start(&served, &tokens, "127.0.0.1:0");
    let cfg = w.path("c.toml");
    let tf = |name: &str, t: &str| {
        let p = w.path(name);
        std::fs::write(&p, t).unwrap();
        p.display().to_string()
    };
    std::fs::write(
        &cfg,
        format!(
            "[remote.site]\nurl = \"{u}\"\ntoken_file = \"{}\"\n[remote.ops]\nurl = \"{u}\"\ntoken_file = \"{}\"\n",
            tf("t1", &append),
            tf("t2", &admin),
            u = server.url
        ),
    )
    .unwrap();
    let lb = |args: &[&str]| {
        w.cmd()
            .arg("--config")
            .arg(&cfg)
            .arg("-r")
            .arg(w.repo())
            .args(args)
            .output()
            .unwrap()
    };
    let out = lb(&["--json", "push", "site", "--init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["protections_sent"], 1, "{v}");
    assert_eq!(common::files_under(&served.join("protected")).len(), 1);

    // The remote keeps the protected (oldest) set and the newest.
    let out = lb(&["--json", "prune", "--keep-last", "1", "--remote", "ops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept: Vec<&serde_json::Value> = v["sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["keep"] == true)
        .collect();
    assert_eq!(kept.len(), 2, "{v}");
    assert!(kept.iter().any(|s| s["reasons"][0] == "protected"), "{v}");

    // An append-only token cannot lift a protection; admin can.
    // (The remote holds two sets now: the protected one is vm@~1.)
    let out = lb(&["unprotect", "vm@~1", "--remote", "site"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin"));
    let out = lb(&["unprotect", "vm@~1", "--remote", "ops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Locally: kept while protected, removed once unprotected.
    w.ok(&["prune", "--keep-last", "1"]);
    assert_eq!(manifest_files(&w.repo()).len(), 2);
    w.restore_equals(&w.repo(), "vm/root@~1", &{
        let p = w.path("first.raw");
        std::fs::write(&p, common::noise(200_000, 1)).unwrap();
        p
    });
    let _ = first;
    w.ok(&["unprotect", "vm@~1"]);
    w.ok(&["prune", "--keep-last", "1"]);
    assert_eq!(manifest_files(&w.repo()).len(), 1);
}
