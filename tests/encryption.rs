//! Encrypted repositories through the real binary: what is stored, what
//! the server checks, and what a wrong or missing key gets.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::remote::Server;
use common::*;

const MARKER: &[u8] = b"LIFEBOAT-PLAINTEXT-MARKER-7f3a9c";
const PASS: &str = "correct horse battery staple";

/// A world whose repository is encrypted with PASS; returns the paths of
/// the passphrase file and the recovery key file `init` wrote.
fn encrypted(w: &World) -> (PathBuf, PathBuf) {
    encrypted_with(w, PASS)
}

/// As `encrypted`, with another passphrase.
fn encrypted_with(w: &World, passphrase: &str) -> (PathBuf, PathBuf) {
    let pass = w.path("pass");
    secret_file(&pass, &format!("{passphrase}\n"));
    let recovery = w.path("recovery.txt");
    let said = ok(&run(
        w,
        &[("LIFEBOAT_PASSPHRASE_FILE", pass.as_path())],
        &[
            "init",
            "--chunk-size",
            "64K",
            "--encrypt",
            "--recovery-key-out",
            recovery.to_str().unwrap(),
        ],
    ));
    assert!(
        said.contains("recovery key") && !said.contains("lbk1-"),
        "{said}"
    );
    (pass, recovery)
}

/// An image whose every 64 KiB chunk holds the marker among noise.
fn marked_image(w: &World, name: &str, seed: u64) -> PathBuf {
    let img = w.path(name);
    let mut data = noise(1 << 20, seed);
    for at in (0..data.len()).step_by(64 << 10) {
        data[at + 100..at + 100 + MARKER.len()].copy_from_slice(MARKER);
    }
    // A compressible stretch too: text compresses before it is sealed.
    data.extend(std::iter::repeat_n(MARKER, 4096).flatten());
    std::fs::write(&img, &data).unwrap();
    img
}

/// A marked image `name` backed up as volume `root` of `vm`, unlocked
/// with the passphrase file `pass`; returns the image.
fn backed_up(w: &World, pass: &Path, vm: &str, name: &str, seed: u64) -> PathBuf {
    let img = marked_image(w, name, seed);
    let spec = format!("root={}", img.display());
    ok(&run(
        w,
        &[("LIFEBOAT_PASSPHRASE_FILE", pass)],
        &["backup", vm, "--format", "raw", "--volume", &spec],
    ));
    img
}

/// `lifeboat -r REPO ARGS` in the world with these variables set.
fn run_in(w: &World, repo: &Path, env: &[(&str, &OsStr)], args: &[&str]) -> Output {
    let mut c = w.cmd();
    c.envs(env.iter().copied());
    c.arg("-r").arg(repo).args(args).output().unwrap()
}

/// `lifeboat ARGS` on the world's repository, with files in variables.
fn run(w: &World, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    run_in(w, &w.repo(), &env, args)
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn no_marker_under(dir: &Path) {
    for f in files_under(dir) {
        let data = std::fs::read(&f).unwrap();
        assert!(
            !data.windows(MARKER.len()).any(|w| w == MARKER),
            "{} holds the plaintext marker",
            f.display()
        );
    }
}

#[test]
fn an_encrypted_repository_stores_no_plaintext_and_restores_with_its_key_only() {
    let w = World::new();
    let (pass, recovery) = encrypted(&w);
    let env = [("LIFEBOAT_PASSPHRASE_FILE", pass.as_path())];
    let img = marked_image(&w, "disk.raw", 1);
    let spec = format!("root={}", img.display());
    let first = ok(&run(
        &w,
        &env,
        &[
            "--json", "backup", "vm", "--format", "raw", "--volume", &spec,
        ],
    ));
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(first["volumes"][0]["stats"]["new_chunks"].as_u64().unwrap() > 0);
    no_marker_under(&w.repo());
    // Dedup holds: the same disk again stores no chunk.
    let again = ok(&run(
        &w,
        &env,
        &[
            "--json", "backup", "vm", "--format", "raw", "--volume", &spec,
        ],
    ));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["volumes"][0]["stats"]["new_chunks"], 0, "{again}");

    // Restore with the passphrase, and with the recovery key alone.
    let to = w.path("restored.raw");
    ok(&run(
        &w,
        &env,
        &["restore", "vm/root", "--to", to.to_str().unwrap()],
    ));
    assert_same_file(&to, &img);
    let to2 = w.path("restored2.raw");
    ok(&run(
        &w,
        &[("LIFEBOAT_KEY_FILE", recovery.as_path())],
        &["restore", "vm/root", "--to", to2.to_str().unwrap()],
    ));
    assert_same_file(&to2, &img);
    ok(&run(&w, &env, &["verify", "--deep"]));
    // A live file compares with the encrypted backup by plaintext.
    let d = ok(&run(
        &w,
        &env,
        &["--json", "diff", img.to_str().unwrap(), "vm/root"],
    ));
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["identical"], true, "{d}");
    // A third backup of another disk, pruned to the last one and
    // collected: the kept backup still restores, the others are gone.
    let img3 = backed_up(&w, &pass, "vm", "disk3.raw", 9);
    let chunks_before = files_under(&w.repo().join("chunks")).len();
    ok(&run(&w, &env, &["prune", "--keep-last", "1"]));
    ok(&run(&w, &env, &["gc"]));
    assert!(files_under(&w.repo().join("chunks")).len() < chunks_before);
    assert_eq!(files_under(&w.repo().join("manifests")).len(), 1);
    let to4 = w.path("restored-after-gc.raw");
    ok(&run(
        &w,
        &env,
        &["restore", "vm/root", "--to", to4.to_str().unwrap()],
    ));
    assert_same_file(&to4, &img3);

    // Without a key: said, nothing listed.
    let out = run(&w, &[], &["timeline", "vm"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("encrypted") && e.contains("LIFEBOAT_PASSPHRASE_FILE"),
        "{e}"
    );
    // A wrong passphrase: a clear error, nothing written.
    let wrong = w.path("wrong");
    secret_file(&wrong, "not the passphrase at all");
    let before = files_under(&w.repo()).len();
    let out = run(
        &w,
        &[("LIFEBOAT_PASSPHRASE_FILE", wrong.as_path())],
        &["backup", "vm", "--format", "raw", "--volume", &spec],
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("passphrase opens none"), "{e}");
    assert_eq!(files_under(&w.repo()).len(), before, "nothing written");
    // Another repository's recovery key: refused.
    let other = World::new();
    let (_, other_recovery) = encrypted(&other);
    let out = run(
        &w,
        &[("LIFEBOAT_KEY_FILE", other_recovery.as_path())],
        &["timeline", "vm"],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("another repository"),
        "{e}"
    );

    // One bit of one chunk flipped: verify names it, restore refuses.
    let chunk = files_under(&w.repo().join("chunks"))
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .unwrap();
    let mut d = std::fs::read(&chunk).unwrap();
    let n = d.len() / 2;
    d[n] ^= 1;
    std::fs::write(&chunk, &d).unwrap();
    let name = chunk.file_name().unwrap().to_str().unwrap().to_string();
    let out = run(&w, &env, &["verify", "--deep"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && said.contains(&name[..8]), "{said}");
    let to3 = w.path("restored3.raw");
    let out = run(
        &w,
        &env,
        &["restore", "vm/root", "--to", to3.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(!to3.exists(), "no partial restore left behind");
}

/// Push to a real `lifeboat serve`: the objects arrive sealed, as they
/// are; the server, holding no key, still refuses wrong bytes and a
/// manifest whose index it lacks, and collects garbage without the key.
/// A repository of another key is refused while the server's key is not
/// at hand. Then through Garage (S3): a
/// fresh machine holding only the recovery key pulls and restores.
#[test]
fn an_encrypted_repository_is_pushed_sealed_and_restores_from_s3_with_the_recovery_key() {
    let w = World::new();
    let (pass, recovery) = encrypted(&w);
    let img = backed_up(&w, &pass, "vm", "disk.raw", 2);
    let (srv, tokens, token) = common::remote::server_dir(w.dir.path(), "client", "append");
    let server = Server::start(&srv, &tokens, "127.0.0.1:0");
    let cfg = w.path("lifeboat.toml");
    common::remote::offsite_config(&cfg, &server.url);
    let push = |repo: &Path, key: (&str, &Path), extra: &[&str]| {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "push", "offsite"];
        args.extend_from_slice(extra);
        run_in(
            &w,
            repo,
            &[
                (key.0, key.1.as_os_str()),
                ("OFFSITE_TOKEN", OsStr::new(&token)),
            ],
            &args,
        )
    };
    let said = ok(&push(
        &w.repo(),
        ("LIFEBOAT_PASSPHRASE_FILE", &pass),
        &["--init"],
    ));
    assert!(said.contains("1 of 1 backups sent"), "{said}");
    no_marker_under(&srv);
    let srv_cfg = std::fs::read_to_string(srv.join("lifeboat.json")).unwrap();
    assert!(srv_cfg.contains("\"encryption\""), "{srv_cfg}");
    // Pushed again: nothing to send.
    let again = ok(&push(
        &w.repo(),
        ("LIFEBOAT_KEY_FILE", &recovery),
        &["--dry-run"],
    ));
    assert!(
        again.contains("0 of 1 backups") && again.contains("copied sealed"),
        "{again}"
    );

    // The server's /metrics without the key: what the envelopes say.
    let metrics = get_text(
        &format!("{}/metrics", server.url.trim_end_matches('/')),
        &token,
    );
    let age = metrics
        .lines()
        .find(|l| l.starts_with("lifeboat_backup_age_seconds{") && l.contains("vm=\"vm\""))
        .unwrap_or_else(|| panic!("no backup age for vm:\n{metrics}"));
    assert!(age.contains("volume=\"root\""), "{age}");
    let logical = metrics
        .lines()
        .find(|l| l.starts_with("lifeboat_backup_logical_bytes{") && l.contains("vm=\"vm\""))
        .unwrap_or_else(|| panic!("no logical bytes for vm:\n{metrics}"));
    let size = std::fs::metadata(&img).unwrap().len();
    assert!(logical.ends_with(&format!(" {size}.0")), "{logical}");

    // Another key's repository, without the server's key: refused with
    // where that key goes, nothing sent.
    let other = World::new();
    let (other_pass, _) = encrypted_with(&other, "another site's passphrase");
    backed_up(&other, &other_pass, "other", "disk.raw", 3);
    let manifests_before = files_under(&srv.join("manifests")).len();
    let out = push(
        &other.repo(),
        ("LIFEBOAT_PASSPHRASE_FILE", &other_pass),
        &[],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("passphrase_file"),
        "{e}"
    );
    assert_eq!(files_under(&srv.join("manifests")).len(), manifests_before);
    drop(server);

    // A server over a copy without one chunk and without the index,
    // holding no key: it takes the sealed chunk back (its bytes hash to
    // its name), refuses the same bytes under another name, and refuses
    // the manifest until its index is there.
    let held = w.path("held");
    copy_dir(&w.repo(), &held);
    let chunk = files_under(&held.join("chunks")).pop().unwrap();
    let bytes = std::fs::read(&chunk).unwrap();
    let name = chunk.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&chunk).unwrap();
    let index = files_under(&held.join("indexes")).pop().unwrap();
    let index_bytes = std::fs::read(&index).unwrap();
    let index_name = index.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&index).unwrap();
    let manifest = files_under(&held.join("manifests")).pop().unwrap();
    let manifest_bytes = std::fs::read(&manifest).unwrap();
    let manifest_key = manifest
        .strip_prefix(&held)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(&manifest).unwrap();
    let keyless = Server::start(&held, &tokens, "127.0.0.1:0");
    let wrong = lifeboat_core::format::Id::of(b"not these bytes").to_hex();
    let status = put_raw(
        &keyless.url,
        &token,
        &format!("chunks/{}/{wrong}", &wrong[..2]),
        bytes.clone(),
    );
    assert_eq!(status, 422, "the server took wrong bytes");
    let status = put_raw(
        &keyless.url,
        &token,
        &format!("chunks/{}/{name}", &name[..2]),
        bytes,
    );
    assert!(
        (200..300).contains(&status),
        "a sealed chunk refused: {status}"
    );
    let status = put_raw(&keyless.url, &token, &manifest_key, manifest_bytes.clone());
    assert_eq!(status, 409, "a manifest whose index is missing was taken");
    let status = put_raw(
        &keyless.url,
        &token,
        &format!("indexes/{}/{index_name}", &index_name[..2]),
        index_bytes,
    );
    assert!(
        (200..300).contains(&status),
        "a sealed index refused: {status}"
    );
    let status = put_raw(&keyless.url, &token, &manifest_key, manifest_bytes);
    assert!(
        (200..300).contains(&status),
        "a sealed manifest refused: {status}"
    );
    drop(keyless);
    // The server's admin collects garbage without the key: nothing of a
    // backup is garbage.
    let chunks_before = files_under(&srv.join("chunks")).len();
    let gc = ok(&run_in(&w, &srv, &[], &["gc"]));
    assert_eq!(
        files_under(&srv.join("chunks")).len(),
        chunks_before,
        "{gc}"
    );

    // Through Garage: push, then a fresh machine with only the recovery key.
    let Some(g) = common::remote::garage() else {
        return;
    };
    let prefix = common::remote::unique("enc");
    let s3cfg = w.path("s3.toml");
    std::fs::write(
        &s3cfg,
        format!(
            "[remote.cloud]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"{}\"\nregion = \"{}\"\npath_style = true\naccess_key_id_env = \"GK\"\nsecret_access_key_env = \"GS\"\ntimeout_secs = 30\n",
            g.bucket, g.endpoints[0], g.region
        ),
    )
    .unwrap();
    let s3 = |w: &World, repo: &Path, key: Option<&Path>, args: &[&str]| {
        let mut env = vec![("GK", OsStr::new(&g.key_id)), ("GS", OsStr::new(&g.secret))];
        if let Some(k) = key {
            env.push(("LIFEBOAT_KEY_FILE", k.as_os_str()));
        }
        let mut all = vec!["--config", s3cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        run_in(w, repo, &env, &all)
    };
    ok(&s3(
        &w,
        &w.repo(),
        Some(&recovery),
        &["push", "cloud", "--init"],
    ));
    let fresh = World::new();
    let key_copy = fresh.path("recovery.txt");
    std::fs::copy(&recovery, &key_copy).unwrap();
    let out = s3(&fresh, &fresh.repo(), None, &["pull", "cloud", "--init"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("LIFEBOAT_KEY_FILE"),
        "{e}"
    );
    ok(&s3(
        &fresh,
        &fresh.repo(),
        Some(&key_copy),
        &["pull", "cloud", "--init"],
    ));
    // Pulled as they are: the S3 objects were sealed.
    no_marker_under(&fresh.repo());
    let to = fresh.path("from-s3.raw");
    ok(&s3(
        &fresh,
        &fresh.repo(),
        Some(&key_copy),
        &["restore", "vm/root", "--to", to.to_str().unwrap()],
    ));
    assert_same_file(&to, &img);
    // Exported to object storage: decrypted on the way, the disk's bytes.
    let url = format!("s3://{}/{prefix}-export/disk.raw", g.bucket);
    let out = run_in(
        &fresh,
        &fresh.repo(),
        &[
            ("AWS_ACCESS_KEY_ID", OsStr::new(&g.key_id)),
            ("AWS_SECRET_ACCESS_KEY", OsStr::new(&g.secret)),
            ("LIFEBOAT_KEY_FILE", key_copy.as_os_str()),
        ],
        &[
            "--json",
            "export",
            "vm/root",
            &url,
            "--endpoint",
            &g.endpoints[0],
            "--region",
            &g.region,
            "--path-style",
        ],
    );
    let r: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(std::fs::read(&img).unwrap()));
    assert_eq!(r["sha256"].as_str(), Some(want.as_str()), "{r}");
}

fn get_text(url: &str, token: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = common::http()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        r.text().await.unwrap()
    })
}

fn put_raw(url: &str, token: &str, key: &str, body: Vec<u8>) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        common::http()
            .put(format!("{}/v1/objects/{key}", url.trim_end_matches('/')))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// Passphrase slots come and go without touching an object; a secret file
/// others may read is refused; the last slot goes only with --force.
#[test]
fn passphrase_slots_are_added_and_removed_and_loose_secret_files_refused() {
    let w = World::new();
    let (pass, recovery) = encrypted(&w);
    let img = backed_up(&w, &pass, "vm", "disk.raw", 4);
    let objects = |w: &World| {
        let mut v: Vec<PathBuf> = files_under(&w.repo().join("chunks"));
        v.extend(files_under(&w.repo().join("manifests")));
        v.sort();
        v
    };
    let before = objects(&w);
    let loose = w.path("loose");
    std::fs::write(&loose, "a second passphrase").unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run(
        &w,
        &[("LIFEBOAT_PASSPHRASE_FILE", loose.as_path())],
        &["ls"],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("chmod 600"), "{e}");
    let second = w.path("second");
    secret_file(&second, "a second passphrase");
    let key = [("LIFEBOAT_KEY_FILE", recovery.as_path())];
    ok(&run(
        &w,
        &key,
        &[
            "key",
            "add",
            "oncall",
            "--passphrase-file",
            second.to_str().unwrap(),
        ],
    ));
    let out = run(
        &w,
        &key,
        &[
            "key",
            "add",
            "oncall",
            "--passphrase-file",
            second.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "a slot name twice");
    let listed = ok(&run(&w, &key, &["key", "list"]));
    assert!(
        listed.contains("default") && listed.contains("oncall"),
        "{listed}"
    );
    // The new passphrase opens it; the old one stops after its removal.
    let to = w.path("r1.raw");
    ok(&run(
        &w,
        &[("LIFEBOAT_PASSPHRASE_FILE", second.as_path())],
        &["restore", "vm/root", "--to", to.to_str().unwrap()],
    ));
    assert_same_file(&to, &img);
    ok(&run(
        &w,
        &[("LIFEBOAT_PASSPHRASE_FILE", second.as_path())],
        &["key", "remove", "default"],
    ));
    let out = run(&w, &[("LIFEBOAT_PASSPHRASE_FILE", pass.as_path())], &["ls"]);
    assert!(!out.status.success(), "a removed passphrase still opens it");
    let out = run(&w, &key, &["key", "remove", "oncall"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--force"), "{e}");
    // Without a key nothing changes.
    let out = run(&w, &[], &["key", "remove", "oncall", "--force"]);
    assert!(!out.status.success());
    assert_eq!(objects(&w), before, "no object was rewritten");
    ok(&run(&w, &key, &["verify", "--deep"]));
}

/// Between repositories of different keys, or into an unencrypted one, a
/// push re-encrypts: the plan says so, the other key comes from the
/// remote's `passphrase_file`, nothing leaves in the clear for an
/// encrypted destination, a second push sends nothing, and the copies
/// restore with their own keys (or none).
#[test]
fn pushes_between_keys_re_encrypt_and_into_an_unencrypted_repository_decrypt() {
    let w = World::new();
    let (pass, _) = encrypted(&w);
    let img = backed_up(&w, &pass, "vm", "disk.raw", 5);
    // The off-site server's repository has its own key and passphrase.
    let other = World::new();
    let (other_pass, other_recovery) = encrypted_with(&other, "the off-site passphrase");
    backed_up(&other, &other_pass, "other", "disk.raw", 6);
    let (srv, tokens, token) = common::remote::server_dir(w.dir.path(), "client", "append");
    let server = Server::start(&srv, &tokens, "127.0.0.1:0");
    let other_cfg = other.path("lifeboat.toml");
    common::remote::offsite_config(&other_cfg, &server.url);
    ok(&run_in(
        &other,
        &other.repo(),
        &[
            ("LIFEBOAT_PASSPHRASE_FILE", other_pass.as_os_str()),
            ("OFFSITE_TOKEN", OsStr::new(&token)),
        ],
        &[
            "--config",
            other_cfg.to_str().unwrap(),
            "push",
            "offsite",
            "--init",
        ],
    ));

    let plain_dir = w.path("plain");
    ok(&run_in(
        &w,
        &plain_dir,
        &[],
        &["init", "--chunk-size", "64K"],
    ));
    let cfg = w.path("lifeboat.toml");
    let with_key = |key_line: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[remote.offsite]\nurl = \"{}\"\ntoken_env = \"OFFSITE_TOKEN\"\ntimeout_secs = 20\n{key_line}\n[remote.plain]\nurl = \"{}\"\n",
                server.url,
                plain_dir.display()
            ),
        )
        .unwrap();
    };
    let push = |args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap(), "push"];
        all.extend_from_slice(args);
        run_in(
            &w,
            &w.repo(),
            &[
                ("LIFEBOAT_PASSPHRASE_FILE", pass.as_os_str()),
                ("OFFSITE_TOKEN", OsStr::new(&token)),
            ],
            &all,
        )
    };
    // Without the server's key: said, with where to put it.
    with_key("");
    let out = push(&["offsite"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("passphrase_file"),
        "{e} {}",
        String::from_utf8_lossy(&out.stdout)
    );
    with_key(&format!("passphrase_file = \"{}\"", other_pass.display()));
    let plan = ok(&push(&["offsite", "--dry-run"]));
    assert!(plan.contains("re-encrypted"), "{plan}");
    let said = ok(&push(&["offsite"]));
    assert!(said.contains("1 of 1 backups sent"), "{said}");
    no_marker_under(&srv);
    let again = ok(&push(&["offsite"]));
    assert!(again.contains("0 of 1 backups sent"), "{again}");
    drop(server);
    // The server's copy opens with the server repository's own key.
    let to = w.path("from-server.raw");
    ok(&run_in(
        &w,
        &srv,
        &[("LIFEBOAT_KEY_FILE", other_recovery.as_os_str())],
        &["restore", "vm/root", "--to", to.to_str().unwrap()],
    ));
    assert_same_file(&to, &img);
    ok(&run_in(
        &w,
        &srv,
        &[("LIFEBOAT_KEY_FILE", other_recovery.as_os_str())],
        &["verify", "--deep"],
    ));

    // Into an unencrypted repository: decrypted, said, restorable with no key.
    let plan = ok(&push(&["plain", "--dry-run"]));
    assert!(plan.contains("re-encrypted"), "{plan}");
    ok(&push(&["plain"]));
    let to = w.path("from-plain.raw");
    ok(&run_in(
        &w,
        &plain_dir,
        &[],
        &["restore", "vm/root", "--to", to.to_str().unwrap()],
    ));
    assert_same_file(&to, &img);
    ok(&run_in(&w, &plain_dir, &[], &["verify", "--deep"]));
}
