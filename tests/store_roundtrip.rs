//! Backup and restore round trips with images made by the real qemu-img,
//! dedup, hashes, references.

mod common;

use common::*;

fn backup_json(w: &World, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["backup"];
    a.extend_from_slice(args);
    w.json(&a)
}

fn restore_both_ways(w: &World, reference: &str, original: &std::path::Path) {
    let raw = w.path("restored.raw");
    let qcow = w.path("restored.qcow2");
    w.ok(&[
        "restore",
        reference,
        "--to",
        raw.to_str().unwrap(),
        "--force",
    ]);
    assert_same_image(original, &raw);
    w.ok(&[
        "restore",
        reference,
        "--to",
        qcow.to_str().unwrap(),
        "--format",
        "qcow2",
        "--force",
    ]);
    assert!(qemu_img(&["info", "--output=json", qcow.to_str().unwrap()]).contains("\"qcow2\""));
    assert_same_image(original, &qcow);
}

#[test]
fn raw_and_sparse_raw_round_trip() {
    let w = World::new();
    w.init("64K");
    let img = w.path("disk.raw");
    write_at(&img, 0, &noise(1_000_000, 1));
    write_at(&img, 1_000_000, &text(2_000_000));
    write_at(&img, 5_000_000, &vec![0u8; 1_000_000]); // written zeros
    write_at(&img, 6_000_000, &noise(123_457, 2)); // odd tail length
    let b = backup_json(
        &w,
        &[
            "vm1",
            "--volume",
            &format!("root={}", img.display()),
            "--format",
            "raw",
        ],
    );
    let vol = &b["volumes"][0];
    assert_eq!(vol["stats"]["logical_bytes"], 6_123_457);
    restore_both_ways(&w, "vm1/root@latest", &img);

    let sparse = w.path("sparse.raw");
    sparse_raw(&sparse, 64 << 20, 7);
    w.ok(&[
        "backup",
        "vm1",
        "--volume",
        &format!("data={}", sparse.display()),
    ]);
    restore_both_ways(&w, "vm1/data", &sparse);
    // The restored raw file is sparse again: far fewer blocks than its size.
    let out = w.path("sparse-out.raw");
    w.ok(&["restore", "vm1/data", "--to", out.to_str().unwrap()]);
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap());
    assert!(
        blocks * 512 < 8 << 20,
        "restore is not sparse: {} bytes allocated",
        blocks * 512
    );
}

#[test]
fn huge_sparse_file_reads_only_its_data() {
    let w = World::new();
    w.init("4M");
    let img = w.path("huge.raw");
    // 100 GiB of address space holding about 100 MiB of data.
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(100 << 30).unwrap();
    for i in 0..25u64 {
        write_at(&img, i * (4 << 30), &noise(4 << 20, i));
    }
    let b = backup_json(
        &w,
        &[
            "big",
            "--volume",
            &format!("root={}", img.display()),
            "--format",
            "raw",
        ],
    );
    let stats = &b["volumes"][0]["stats"];
    assert_eq!(stats["logical_bytes"], 100u64 << 30);
    assert_eq!(stats["nonzero_bytes"], 25u64 * (4 << 20));
    assert_eq!(stats["new_chunks"], 25);
    let digest = w.json(&["hash", img.to_str().unwrap(), "--format", "raw"]);
    assert_eq!(digest["digest"], b["volumes"][0]["index"]);
}

#[test]
fn qcow2_plain_backing_chain_and_compressed() {
    let w = World::new();
    w.init("256K");
    // Plain qcow2 with data written by qemu-io.
    let plain = w.path("plain.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        plain.to_str().unwrap(),
        "48M",
    ]);
    qemu_io(
        &plain,
        "qcow2",
        &[
            "write -P 0xa5 0 3M".into(),
            "write -P 0x3c 20M 1M".into(),
            "write -z 40M 1M".into(),
        ],
    );
    // A backing chain: the overlay rewrites part of the base.
    let base = w.path("base.qcow2");
    let top = w.path("top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "32M"]);
    qemu_io(
        &base,
        "qcow2",
        &["write -P 0x11 0 8M".into(), "write -P 0x22 16M 4M".into()],
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    qemu_io(
        &top,
        "qcow2",
        &["write -P 0x33 2M 1M".into(), "write -z 17M 1M".into()],
    );
    // Compressed clusters: convert a raw image with -c.
    let src = w.path("src.raw");
    write_at(&src, 0, &text(3 << 20));
    write_at(&src, 5 << 20, &noise(1 << 20, 9));
    let comp = w.path("comp.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        comp.to_str().unwrap(),
    ]);
    // `qemu-img check` counts compressed clusters in every version a user
    // meets (Debian 12's 7.2 and 10.x); `qemu-img map` names them only
    // from 8.x on.
    let check: serde_json::Value = serde_json::from_str(&qemu_img(&[
        "check",
        "--output=json",
        comp.to_str().unwrap(),
    ]))
    .expect("qemu-img check --output=json");
    assert!(
        check["compressed-clusters"].as_u64().unwrap_or(0) > 0,
        "qemu-img made no compressed clusters: {check}"
    );

    for (vol, path) in [("plain", &plain), ("chain", &top), ("comp", &comp)] {
        let b = backup_json(
            &w,
            &["vm2", "--volume", &format!("{vol}={}", path.display())],
        );
        let digest = w.json(&["hash", path.to_str().unwrap()]);
        assert_eq!(digest["digest"], b["volumes"][0]["index"], "hash of {vol}");
        let shown = w.json(&["show", &format!("vm2/{vol}")]);
        assert_eq!(shown["manifest"]["volume"]["format"], "qcow2");
        restore_both_ways(&w, &format!("vm2/{vol}@latest"), path);
    }
    let verify = w.json(&["verify", "--deep"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn dedup_unchanged_and_rewritten_extents() {
    let w = World::new();
    w.init("1M");
    let img = w.path("vol.raw");
    write_at(&img, 0, &noise(32 << 20, 3));
    let spec = format!("data={}", img.display());
    let first = backup_json(
        &w,
        &[
            "db", "--volume", &spec, "--format", "raw", "--note", "first",
        ],
    );
    assert_eq!(first["volumes"][0]["stats"]["new_chunks"], 32);
    let second = backup_json(&w, &["db", "--volume", &spec, "--format", "raw"]);
    assert_eq!(second["volumes"][0]["stats"]["new_chunks"], 0);
    assert_eq!(second["volumes"][0]["stats"]["new_stored_bytes"], 0);
    assert_eq!(first["volumes"][0]["index"], second["volumes"][0]["index"]);
    // Rewrite three extents: one inside chunk 2, one straddling chunks 10/11, one in chunk 30.
    write_at(&img, (2 << 20) + 4096, &noise(8192, 100));
    write_at(&img, (11 << 20) - 1000, &noise(2000, 101));
    write_at(&img, (30 << 20) + 77, &noise(10, 102));
    let third = backup_json(&w, &["db", "--volume", &spec, "--format", "raw"]);
    assert_eq!(third["volumes"][0]["stats"]["new_chunks"], 4);
    // The parent chain links the backups.
    let shown = w.json(&["show", "db/data@latest"]);
    assert_eq!(
        shown["manifest"]["parent"],
        second["volumes"][0]["manifest"]
    );
    // diff against the previous backup names exactly the touched chunks.
    let d = w.json(&["diff", "db/data@~1", "db/data@latest"]);
    assert_eq!(d["diff"]["changed_bytes"], 4u64 << 20);
    let d = w.json(&["diff", "db/data@latest", img.to_str().unwrap()]);
    assert_eq!(d["identical"], true);
}

#[test]
fn references_timeline_and_sets() {
    let w = World::new();
    w.init("64K");
    let a = w.path("a.raw");
    let b = w.path("b.raw");
    write_at(&a, 0, &noise(300_000, 1));
    write_at(&b, 0, &noise(200_000, 2));
    let specs = [
        format!("root={}", a.display()),
        format!("data={}", b.display()),
    ];
    let s1 = backup_json(
        &w,
        &[
            "web", "--volume", &specs[0], "--volume", &specs[1], "--format", "raw",
        ],
    );
    write_at(&a, 0, &noise(1000, 3));
    let s2 = backup_json(
        &w,
        &[
            "web", "--volume", &specs[0], "--volume", &specs[1], "--format", "raw", "--note",
            "after",
        ],
    );
    assert!(s1["volumes"][0]["manifest"] != s2["volumes"][0]["manifest"]);
    assert_eq!(s2["volumes"][0]["stats"]["new_chunks"], 1);
    let tl = w.json(&["timeline", "web", "root"]);
    assert_eq!(tl.as_array().unwrap().len(), 2);
    assert_eq!(tl[0]["id"], s2["volumes"][0]["manifest"]);
    assert_eq!(tl[0]["note"], "after");
    let id1 = s1["volumes"][0]["manifest"].as_str().unwrap();
    assert_eq!(w.json(&["show", "web/root@~1"])["id"], id1);
    assert_eq!(w.json(&["show", &id1[..10]])["id"], id1);
    let t1 = w.json(&["show", id1])["manifest"]["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(w.json(&["show", &format!("web/root@{t1}")])["id"], id1);
    let (_, e) = w.fails(&["show", "web/root@~5"]);
    assert!(e.contains("no backup matches"), "{e}");
    let (_, e) = w.fails(&["show", "web/root@yesterday"]);
    assert!(e.contains("a UTC time such as"), "{e}");
    // A set restore writes every volume of the set.
    let dir = w.path("vmdir");
    w.ok(&["restore", "web@~1", "--to", dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(dir.join("data.raw")).unwrap(),
        std::fs::read(&b).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.join("root.raw")).unwrap()[..1000],
        noise(300_000, 1)[..1000]
    );
    let ls = w.json(&["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 2);
    assert_eq!(ls[0]["backups"], 2);
}

#[test]
fn inventory_from_config_file() {
    let w = World::new();
    let a = w.path("root.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "8M"]);
    qemu_io(&a, "qcow2", &["write -P 0x7 1M 1M".into()]);
    let cfg = w.path("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "repository = \"store\"\n[[vm]]\nname = \"app\"\n[[vm.volume]]\nname = \"root\"\nrole = \"root\"\npath = \"{}\"\nformat = \"qcow2\"\n",
            a.display()
        ),
    )
    .unwrap();
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
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["init"]);
    assert!(
        w.path("store/lifeboat.json").exists(),
        "relative repository path is relative to the config"
    );
    run(&["backup", "app"]);
    let ls = run(&["ls"]);
    assert!(ls.contains("app") && ls.contains("qcow2"), "{ls}");
    let out = w.path("back.qcow2");
    run(&["restore", "app/root", "--to", out.to_str().unwrap()]);
    assert_same_image(&a, &out);
}

/// Format-1 repositories (written before VM definitions) are read, and
/// the first newer manifest that goes into one, by a backup or by a push,
/// marks the repository with that manifest's format first.
#[test]
fn format_1_repositories_are_read_and_upgraded_by_the_first_newer_manifest() {
    let w = World::new();
    w.init("64K");
    let downgrade = |root: &std::path::Path| {
        let cfg = root.join("lifeboat.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains("\"format\": 3"), "{text}");
        std::fs::write(&cfg, text.replace("\"format\": 3", "\"format\": 1")).unwrap();
    };
    let format = |root: &std::path::Path| -> u64 {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("lifeboat.json")).unwrap()).unwrap();
        v["format"].as_u64().unwrap()
    };
    downgrade(&w.repo());
    w.ok(&["verify"]);
    let img = w.backup_noise("vm", "a.raw", 1 << 20, 7);
    assert_eq!(format(&w.repo()), 3, "a backup upgrades the repository");
    let dst = w.path("old");
    let out = w
        .cmd()
        .arg("-r")
        .arg(&dst)
        .args(["init", "--chunk-size", "64K"])
        .output()
        .unwrap();
    assert!(out.status.success());
    downgrade(&dst);
    w.ok(&["push", dst.to_str().unwrap()]);
    assert_eq!(format(&dst), 3, "a push upgrades its destination");
    w.restore_equals(&dst, "vm/root@latest", &img);
}
