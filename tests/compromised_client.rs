//! The off-site copy survives a compromised primary site. Each test plays
//! an attacker who holds everything a primary site has — its repository,
//! its config and the append token it pushes with (scoped to its site, or
//! not) — against a real `lifeboat serve` over TLS on loopback, and shows
//! that such a token adds new backups and nothing else (docs/SERVER.md,
//! "Threat model"). The client-side defences against a hostile server are
//! here too.

mod common;

use std::path::PathBuf;
use std::process::Output;

use bytes::Bytes;
use common::remote::{add_token_with, Server};
use common::{noise, write_at, World};
use lifeboat_core::format::manifest::{DefinitionRef, Role};
use lifeboat_core::format::{Id, Index};
use lifeboat_core::repo::Repo;
use lifeboat_core::store::http::{HttpOptions, HttpStore};
use lifeboat_core::store::{DocKey, DocKind, ObjectKey, Store, Verified};

/// The off-site server: TLS on loopback, tokens for its admin, site A
/// (append, scope `a-`), site B (append, scope `b-`) and a site-wide
/// append token.
struct Offsite {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    tokens: PathBuf,
    server: Server,
    admin: String,
    a: String,
    b: String,
    any: String,
}

fn offsite(extra: &[&str]) -> Offsite {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("srv");
    std::fs::create_dir_all(&repo).unwrap();
    let tokens = dir.path().join("etc/tokens.toml");
    let admin = add_token_with(&tokens, "admin", "admin", &[]);
    let a = add_token_with(&tokens, "site-a", "append", &["--scope", "a-"]);
    let b = add_token_with(&tokens, "site-b", "append", &["--scope", "b-"]);
    let any = add_token_with(&tokens, "site-any", "append", &[]);
    let mut args = vec!["--tls"];
    if !extra.contains(&"--immutable-days") {
        args.extend(["--immutable-days", "0"]);
    }
    args.extend(extra);
    let server = Server::start_with(&repo, &tokens, "127.0.0.1:0", &args);
    Offsite {
        _dir: dir,
        repo,
        tokens,
        server,
        admin,
        a,
        b,
        any,
    }
}

impl Offsite {
    fn url(&self) -> String {
        format!("{}/", self.server.url)
    }

    fn fingerprint(&self) -> String {
        self.server.fingerprint.clone().expect("an HTTPS server")
    }

    /// The server as a store, seen with `token`.
    fn store(&self, token: &str) -> HttpStore {
        HttpStore::new(
            &self.url(),
            HttpOptions {
                token: Some(token.into()),
                fingerprint: Some(self.fingerprint().parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// A site whose config names this server as `offsite`, pushing with
    /// `token`.
    fn site(&self, token: &str) -> Site {
        let w = World::new();
        w.init("64K");
        let token_file = w.path("offsite.token");
        std::fs::write(&token_file, token).unwrap();
        let cfg = w.path("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "[remote.offsite]\nurl = \"{}\"\nfingerprint = \"{}\"\ntoken_file = \"{}\"\n",
                self.url(),
                self.fingerprint(),
                token_file.display()
            ),
        )
        .unwrap();
        Site { w, cfg }
    }
}

struct Site {
    w: World,
    cfg: PathBuf,
}

impl Site {
    fn lb(&self, args: &[&str]) -> Output {
        self.w
            .cmd()
            .arg("--config")
            .arg(&self.cfg)
            .arg("-r")
            .arg(self.w.repo())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.lb(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.lb(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "lifeboat {args:?} succeeded: {text}");
        assert!(!text.contains("panicked"), "{text}");
        text
    }

    /// A real backup of `vm` (one raw root volume), now.
    fn backup(&self, vm: &str, seed: u64) -> PathBuf {
        let img = self.w.path(&format!("{vm}-{seed}.raw"));
        write_at(&img, 0, &noise(200_000, seed));
        self.ok(&[
            "backup",
            vm,
            "--format",
            "raw",
            "--volume",
            &format!("root={}", img.display()),
        ]);
        img
    }

    /// A backup stamped with a time of the attacker's choosing (a faked
    /// clock on the compromised host).
    fn backup_at(&self, vm: &str, at: chrono::DateTime<chrono::Utc>, seed: u64) {
        use lifeboat_core::backup::{BackupRequest, VolumeSpec};
        let img = self.w.path(&format!("{vm}-forged-{seed}.raw"));
        write_at(&img, 0, &vec![0u8; 200_000]);
        let repo = Repo::open(&self.w.repo()).unwrap();
        let req = BackupRequest {
            vm: vm.into(),
            volumes: vec![VolumeSpec {
                name: "root".into(),
                role: Role::Root,
                path: img,
                format: lifeboat_core::source::FormatChoice::Raw,
            }],
            created_at: Some(at),
            ..Default::default()
        };
        lifeboat_core::backup::backup(
            &repo,
            &req,
            &lifeboat_core::jobs::CancellationToken::new(),
            &lifeboat_core::jobs::Progress::new(),
        )
        .unwrap();
    }

    fn repo(&self) -> Repo {
        Repo::open(&self.w.repo()).unwrap()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn lock_body(kind: &str, what: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "kind": kind, "host": "primary", "pid": 4242, "what": what,
            "since": chrono::Utc::now(),
        })
        .to_string(),
    )
}

/// Item 1: A site's token reads nothing of another site: not its manifests,
/// indexes, chunks (by listing or by hash), metrics or locks.
#[test]
fn a_site_token_reads_nothing_of_another_site() {
    let off = offsite(&[]);
    let site_b = off.site(&off.b);
    site_b.backup("b-db", 1);
    site_b.ok(&["push", "offsite", "--init"]);
    let site_a = off.site(&off.a);
    site_a.backup("a-web", 2);
    site_a.ok(&["push", "offsite"]);

    let b_backups = site_b.repo().load_all().unwrap();
    let (_, bm) = &b_backups[0];
    let b_index = bm.index;
    let b_chunks: Vec<Id> = site_b.repo().read_index(&b_index).unwrap().chunks;
    let a_index = site_a.repo().load_all().unwrap()[0].1.index;
    let attacker = off.store(&off.a);
    rt().block_on(async {
        // Listings hold only site A's objects.
        let indexes = attacker.list("indexes/").await.unwrap();
        assert_eq!(indexes, vec![ObjectKey::Index(a_index)]);
        let chunks = attacker.list("chunks/").await.unwrap();
        for c in &b_chunks {
            assert!(!chunks.contains(&ObjectKey::Chunk(*c)), "B's chunk listed");
        }
        let manifests = attacker.list("manifests/").await.unwrap();
        assert!(manifests
            .iter()
            .all(|k| matches!(k, ObjectKey::Manifest(m) if m.vm == "a-web")));
        // Reads by hash find nothing; asking whether they exist says no.
        assert_eq!(
            attacker.get(&ObjectKey::Index(b_index)).await.unwrap(),
            None
        );
        assert_eq!(
            attacker.get(&ObjectKey::Chunk(b_chunks[0])).await.unwrap(),
            None
        );
        let asked = vec![ObjectKey::Chunk(b_chunks[0]), ObjectKey::Index(b_index)];
        assert_eq!(attacker.missing(&asked).await.unwrap(), asked);
        // The admin sees both sites.
        let admin = off.store(&off.admin);
        assert_eq!(admin.list("indexes/").await.unwrap().len(), 2);

        // A manifest of A's naming B's index (learned somehow) is refused
        // as naming what does not exist, and B's data stays unreadable.
        let mut forged = site_a.repo().load_all().unwrap()[0].1.clone();
        forged.index = b_index;
        forged.created_at = chrono::Utc::now();
        forged.set = "f0".into();
        let obj = Verified::check(
            ObjectKey::Manifest(forged.key()),
            Bytes::from(forged.to_bytes()),
        )
        .unwrap();
        let e = attacker.put_if_absent(&obj).await.unwrap_err().to_string();
        assert!(e.contains("missing") || e.contains("409"), "{e}");
        assert_eq!(
            attacker.get(&ObjectKey::Index(b_index)).await.unwrap(),
            None
        );

        // B's lock is invisible to A and cannot be removed or taken by A.
        let site_b_store = off.store(&off.b);
        let lock = DocKey::lock("writer-0b0b").unwrap();
        site_b_store
            .put_doc(&lock, lock_body("writer", "push of site b from /srv/b"))
            .await
            .unwrap();
        let seen = attacker.list_docs(DocKind::Lock).await.unwrap();
        assert!(seen.iter().all(|d| d.key != lock), "A sees B's lock");
        let e = attacker.delete_doc(&lock).await.unwrap_err().to_string();
        assert!(e.contains("belongs to another token"), "{e}");
        let e = attacker
            .put_doc(&lock, lock_body("writer", "hijack"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to another token"), "{e}");
        assert_eq!(
            site_b_store.list_docs(DocKind::Lock).await.unwrap().len(),
            1
        );
    });
    // Metrics with A's token describe A's VMs only.
    let client = http_get::client(&off);
    let text = client(&format!("{}metrics", off.url()), &off.a);
    assert!(text.contains("a-web"), "{text}");
    assert!(!text.contains("b-db"), "B's VM in A's metrics: {text}");
    assert!(!text.contains("lifeboat_repository_bytes "), "{text}");
    let text = client(&format!("{}metrics", off.url()), &off.admin);
    assert!(text.contains("b-db") && text.contains("a-web"), "{text}");
}

/// A tiny blocking GET with a pinned certificate, for routes the store
/// trait does not cover (`/metrics`).
mod http_get {
    pub fn client(off: &super::Offsite) -> impl Fn(&str, &str) -> String {
        let fp = off.fingerprint();
        move |url: &str, token: &str| {
            let rt = super::rt();
            let (url, token, fp) = (url.to_string(), token.to_string(), fp.clone());
            rt.block_on(async move {
                let cfg =
                    lifeboat_core::store::tls::pinned_client_config(fp.parse().unwrap()).unwrap();
                let c = reqwest::Client::builder()
                    .tls_backend_preconfigured(cfg)
                    .build()
                    .unwrap();
                let r = c.get(url).bearer_auth(token).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                r.text().await.unwrap()
            })
        }
    }
}

/// Item 2: An append token cannot get real backups pruned: the server, not the
/// client, decides where a backup goes in time; backups that arrived
/// within the immutability window stay whatever a prune asks.
#[test]
fn an_append_token_cannot_date_backups_into_the_past() {
    let off = offsite(&["--immutable-days", "7"]);
    let site = off.site(&off.a);
    site.backup("a-web", 1);
    site.ok(&["push", "offsite", "--init"]);
    let real = site.repo().load_all().unwrap()[0].0.clone();

    // The attacker's faked clock: 23:00 on each of the last three days.
    let today = chrono::Utc::now().date_naive();
    for d in 1..=3 {
        let at = (today - chrono::Duration::days(d))
            .and_hms_opt(23, 0, 0)
            .unwrap()
            .and_utc();
        site.backup_at("a-web", at, d as u64);
    }
    // And a VM the server has never seen, dated two days ago.
    site.backup_at("a-new", chrono::Utc::now() - chrono::Duration::days(2), 9);
    let e = site.fails(&["push", "offsite"]);
    assert!(e.contains("refused 4 of"), "{e}");
    assert!(e.contains("not newer than the newest backup"), "{e}");
    assert!(e.contains("older than this push allows"), "{e}");
    assert!(e.contains("an admin token can add it"), "{e}");

    let admin = off.store(&off.admin);
    let held = rt().block_on(admin.list("manifests/")).unwrap();
    assert_eq!(held, vec![ObjectKey::Manifest(real.clone())]);

    // The admin's prune keeps the real backup; @latest is the real one.
    let admin_site = off.site(&off.admin);
    admin_site.ok(&["prune", "--remote", "offsite", "--keep-daily", "3"]);
    let out = admin_site.ok(&[
        "--json",
        "restore",
        "a-web@latest",
        "--from",
        "offsite",
        "--to",
        "x",
        "--dry-run",
    ]);
    assert!(out.contains(&real.id.to_hex()), "{out}");

    // Inside the immutability window nothing goes, whatever is asked:
    // the plan says why, and a direct delete is refused.
    site.backup("a-web", 20);
    site.ok(&["push", "offsite", "a-web@latest"]);
    let plan = admin_site.ok(&[
        "prune",
        "--remote",
        "offsite",
        "--keep-last",
        "1",
        "--dry-run",
    ]);
    assert!(plan.contains("immutable on the server until"), "{plan}");
    assert!(plan.contains("0 of 2 sets"), "{plan}");
    let e = rt()
        .block_on(admin.delete(&ObjectKey::Manifest(real.clone())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("immutable until"), "{e}");

    // The catch-up path: an admin token adds an older backup.
    let catchup = off.site(&off.admin);
    catchup.backup_at("a-old", chrono::Utc::now() - chrono::Duration::days(5), 30);
    catchup.ok(&["push", "offsite"]);
}

/// Item 3: A set is closed once its volumes are in: a manifest reusing a real
/// set's id with another volume and a hostile definition is refused. And
/// whatever definition a new backup carries, a restore keeps only what
/// lifeboat understands of it.
#[test]
fn a_backup_set_is_closed_and_a_restored_definition_is_allow_listed() {
    let off = offsite(&[]);
    let site = off.site(&off.a);
    site.backup("a-web", 1);
    site.ok(&["push", "offsite", "--init"]);
    let (real_key, real) = site.repo().load_all().unwrap()[0].clone();

    let hostile_xml = r#"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>a-web</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/tmp/attacker-qemu</emulator>
    <disk type='file' device='disk'><source file='/x.raw'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><source file='/y.raw'/><target dev='vdb' bus='virtio'/><boot order='1'/></disk>
    <filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='r'/></filesystem>
    <serial type='file'><source path='/root/.bashrc'/><target port='0'/></serial>
    <interface type='network'><source network='default'/><script path='/tmp/x.sh'/></interface>
  </devices>
  <qemu:commandline><qemu:arg value='-drive'/><qemu:arg value='file=/etc/shadow'/></qemu:commandline>
</domain>"#;
    let def = serde_json::json!({
        "format": 1, "vm": "a-web",
        "spec": {"vcpus": 1, "memory_mib": 256, "firmware": "bios", "machine": "pc",
                 "disks": [{"volume": "root", "bus": "virtio", "target": "vda"},
                           {"volume": "evil", "bus": "virtio", "target": "vdb"}],
                 "nics": []},
        "domain_xml": hostile_xml,
    })
    .to_string();
    let attacker = off.store(&off.a);
    let data = noise(65536, 77);
    let enc = lifeboat_core::format::chunk::Encoder::new(1)
        .unwrap()
        .encode(&data)
        .unwrap();
    let chunk_id = Id::of(&data);
    let index = Index {
        chunk_size: 64 << 10,
        image_size: 65536,
        chunks: vec![chunk_id],
        plain: Vec::new(),
    };
    let def_enc = lifeboat_core::format::chunk::Encoder::new(1)
        .unwrap()
        .encode(def.as_bytes())
        .unwrap();
    let def_ref = DefinitionRef {
        chunk: Id::of(def.as_bytes()),
        size: def.len() as u64,
    };
    let mut evil = real.clone();
    evil.volume.name = "evil".into();
    evil.index = index.id();
    evil.definition = Some(def_ref);
    evil.created_at = chrono::Utc::now();
    evil.parent = None;
    let put = |k: ObjectKey, b: Vec<u8>| {
        let obj = Verified::check(k, Bytes::from(b)).unwrap();
        rt().block_on(attacker.put_if_absent(&obj))
    };
    put(ObjectKey::Chunk(chunk_id), enc).unwrap();
    put(ObjectKey::Chunk(def_ref.chunk), def_enc).unwrap();
    put(ObjectKey::Index(index.id()), index.to_bytes()).unwrap();
    let e = put(ObjectKey::Manifest(evil.key()), evil.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("closed once its volumes are in"), "{e}");
    // Replacing the set's root volume is refused the same way.
    let mut again = real.clone();
    again.created_at = chrono::Utc::now();
    again.labels.note = Some("replaced".into());
    let e = put(ObjectKey::Manifest(again.key()), again.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("it has volume root"), "{e}");

    // A new set of the attacker's (which an append token may always add)
    // with the hostile definition: a restore of it keeps nothing hostile.
    let mut new_set = real.clone();
    new_set.set = "ee".into();
    new_set.created_at = chrono::Utc::now() + chrono::Duration::seconds(1);
    new_set.definition = Some(def_ref);
    new_set.parent = Some(real_key.id);
    put(ObjectKey::Manifest(new_set.key()), new_set.to_bytes()).unwrap();

    let dr = off.site(&off.a);
    let dir = dr.w.path("restored");
    let out = dr.ok(&[
        "restore",
        "a-web@latest",
        "--from",
        "offsite",
        "--to",
        dir.to_str().unwrap(),
    ]);
    let xml = std::fs::read_to_string(dir.join("a-web.xml")).unwrap();
    for bad in [
        "commandline",
        "/etc/shadow",
        "filesystem",
        ".bashrc",
        "attacker-qemu",
        "script",
    ] {
        assert!(!xml.contains(bad), "{bad} reached the restored XML:\n{xml}");
    }
    for listed in [
        "qemu:commandline",
        "emulator",
        "filesystem",
        "became a pty",
        "script",
    ] {
        assert!(out.contains(listed), "{listed} not listed:\n{out}");
    }
}

/// Item 4: Protection is a mark only an admin lifts, never a manifest field.
#[test]
fn a_manifest_cannot_protect_itself() {
    let off = offsite(&[]);
    let site = off.site(&off.a);
    site.backup("a-web", 1);
    site.ok(&["push", "offsite", "--init"]);
    let (_, real) = site.repo().load_all().unwrap()[0].clone();
    let mut claims = real.clone();
    claims.labels.protected = true;
    claims.set = "cc".into();
    claims.created_at = chrono::Utc::now();
    let obj = Verified::check(
        ObjectKey::Manifest(claims.key()),
        Bytes::from(claims.to_bytes()),
    )
    .unwrap();
    rt().block_on(off.store(&off.a).put_if_absent(&obj))
        .unwrap();
    site.backup("a-web", 2);
    site.ok(&["push", "offsite", "a-web@latest"]);
    let admin = off.site(&off.admin);
    let out = admin.ok(&["prune", "--remote", "offsite", "--keep-last", "1"]);
    assert!(out.contains("removed 2 of 3 sets"), "{out}");
    let left = rt()
        .block_on(off.store(&off.admin).list("manifests/"))
        .unwrap();
    assert!(
        !left.contains(&ObjectKey::Manifest(claims.key())),
        "{left:?}"
    );
}

/// Item 5: Locks: junk is refused and ignored, a token holds a bounded number,
/// an admin lists and breaks any, and a broken lock stays broken.
#[test]
fn locks_cannot_block_maintenance() {
    let off = offsite(&[]);
    let site = off.site(&off.any);
    site.backup("web", 1);
    site.ok(&["push", "offsite", "--init"]);
    let holder = off.store(&off.any);
    rt().block_on(async {
        let junk = DocKey::lock("writer-00aa").unwrap();
        let e = holder
            .put_doc(&junk, Bytes::from_static(br#"{"junk":true}"#))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a lock"), "{e}");
        for i in 0..16 {
            let k = DocKey::lock(&format!("writer-{i:02x}")).unwrap();
            holder
                .put_doc(&k, lock_body("writer", "push"))
                .await
                .unwrap();
        }
        let e = holder
            .put_doc(
                &DocKey::lock("writer-ff").unwrap(),
                lock_body("writer", "one too many"),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds 16 live locks"), "{e}");
    });
    // A junk document written behind the server's back (a foreign tool)
    // is listed as junk and does not block gc.
    std::fs::write(off.repo.join("locks/writer-0bad.json"), b"junk").unwrap();
    let admin = off.site(&off.admin);
    let listed = admin.ok(&["locks", "--remote", "offsite"]);
    assert!(listed.contains("JUNK"), "{listed}");
    assert!(listed.contains("writer-01"), "{listed}");
    // An admin breaks the holder's locks; the holder cannot bring one back.
    for i in 0..16 {
        admin.ok(&[
            "locks",
            "--remote",
            "offsite",
            "--break",
            &format!("writer-{i:02x}"),
        ]);
    }
    let e = rt()
        .block_on(holder.put_doc(
            &DocKey::lock("writer-01").unwrap(),
            lock_body("writer", "push"),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("was broken by the server's admin"), "{e}");
    let out = admin.ok(&["--json", "gc", "--remote", "offsite", "--wait", "0"]);
    assert!(out.contains("chunks_deleted"), "{out}");
}

/// Item 6: Connections with no request in progress are closed after the idle
/// timeout, HTTP/2 ones answering pings included; and past the connection
/// limit a client is told the server is full.
#[test]
fn idle_connections_do_not_fill_the_server() {
    for (idle, expect_full) in [("3600", true), ("2", false)] {
        let off = offsite(&["--max-connections", "4", "--idle-timeout-secs", idle]);
        let site = off.site(&off.any);
        site.backup("web", 1);
        let rt = rt();
        // Four clients that opened an HTTP/2 connection (ALPN) and then
        // only answer the server's pings.
        let idle_clients: Vec<HttpStore> = (0..4).map(|_| off.store(&off.any)).collect();
        rt.block_on(async {
            for c in &idle_clients {
                c.probe().await.unwrap();
            }
        });
        if expect_full {
            let e = site.fails(&["--io-timeout", "2", "status", "offsite"]);
            assert!(e.contains("the server is full"), "{e}");
        } else {
            // Once idle past the timeout, the server closes them and a
            // real client gets in.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let out = site.lb(&["push", "offsite", "--init"]);
                if out.status.success() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the idle connections were never closed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        drop(idle_clients);
    }
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Item 7: Request bodies of every route share one memory budget: a read
/// token's many unfinished `/v1/missing` bodies hold at most the budget,
/// and past it requests are answered 503 with the reason.
#[test]
fn request_bodies_share_one_memory_budget() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("srv");
    std::fs::create_dir_all(&repo).unwrap();
    let tokens = dir.path().join("tokens.toml");
    let reader = add_token_with(&tokens, "reader", "read", &[]);
    let server = Server::start_with(
        &repo,
        &tokens,
        "127.0.0.1:0",
        &["--max-body-memory", "65M", "--header-timeout-secs", "2"],
    );
    let before = rss_kib(server.child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let head = format!(
        "POST /v1/missing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
    );
    // 100 requests sending all but the last byte of 1 MiB bodies.
    let senders: Vec<_> = (0..100)
        .map(|_| {
            let (addr, head, done) = (server.addr.clone(), head.clone(), done.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                    return;
                };
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&vec![b' '; (1 << 20) - 1]);
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            })
        })
        .collect();
    // A request now waits for room, then is told why it cannot have it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let answer = loop {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.write_all(
            format!(
                "POST /v1/missing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{{\"keys\":[]}}"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        if answer.contains("503") || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(answer.contains("503"), "{answer}");
    assert!(
        answer.contains("memory it gives request bodies"),
        "{answer}"
    );
    let after = rss_kib(server.child.id());
    // 100 MiB was sent; at most the budget (65 MiB) may be held, plus
    // what the server needs besides.
    assert!(
        after.saturating_sub(before) < 100 << 10,
        "the server grew from {before} to {after} KiB"
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(server);
    for t in senders {
        let _ = t.join();
    }
}

/// Item 8: A capped token waits for its allowance without holding an upload
/// slot: an uncapped site pushes while it crawls.
#[test]
fn a_capped_token_does_not_hold_upload_slots() {
    let off = offsite(&["--max-uploads", "2"]);
    let slow_token = add_token_with(&off.tokens, "slow", "append", &["--cap-upload", "512K"]);
    let slow = off.site(&slow_token);
    let img = slow.w.path("big.raw");
    write_at(&img, 0, &noise(16 << 20, 5));
    slow.ok(&[
        "backup",
        "big",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    // The server re-reads its tokens within seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !slow.lb(&["status", "offsite"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token is never accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut crawling = slow
        .w
        .cmd()
        .arg("--config")
        .arg(&slow.cfg)
        .arg("-r")
        .arg(slow.w.repo())
        .args(["push", "offsite", "--init", "--concurrency", "16"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the crawling push has begun sending.
    let admin = off.store(&off.admin);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rt()
        .block_on(admin.list("chunks/"))
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the capped push never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let fast = off.site(&off.any);
    fast.backup("web", 2);
    fast.ok(&["push", "offsite"]);
    assert!(
        crawling.try_wait().unwrap().is_none(),
        "the capped push (16 MiB at 512 KiB/s) ended before the uncapped one"
    );
    let _ = crawling.kill();
    let _ = crawling.wait();
}

/// A server that lies: empty pages that "advance" forever, oversized
/// pages, one byte a second.
async fn lying_server(mode: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((mut s, _)) = listener.accept().await {
            n += 1;
            let page = n;
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let body = match mode {
                    "empty" => format!("{{\"keys\":[],\"next\":\"manifests/x{page:08}\"}}"),
                    "big" => {
                        let keys: Vec<String> = (0..10_001)
                            .map(|i| format!("\"chunks/00/{:064x}\"", i))
                            .collect();
                        format!("{{\"keys\":[{}],\"next\":null}}", keys.join(","))
                    }
                    _ => String::new(),
                };
                if mode == "slow" {
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
                    let _ = s.write_all(head.as_bytes()).await;
                    for _ in 0..100_000 {
                        if s.write_all(b"x").await.is_err() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/")
}

/// Item 9: The client defends itself against a hostile server.
#[test]
fn the_client_defends_itself_against_a_hostile_server() {
    let rt = rt();
    rt.block_on(async {
        for (mode, want) in [
            ("empty", "empty listing page"),
            ("big", "listing page of 10001 entries"),
        ] {
            let url = lying_server(mode).await;
            let c = HttpStore::new(
                &url,
                HttpOptions {
                    token: Some("t".into()),
                    ..Default::default()
                },
            )
            .unwrap();
            let e = c.list("manifests/").await.unwrap_err().to_string();
            assert!(e.contains(want), "{mode}: {e}");
        }
    });
    // One byte a second: the pull gives up within its budget instead of
    // being held through every retry.
    let url = rt.block_on(lying_server("slow"));
    let w = World::new();
    w.init("64K");
    let out = w
        .cmd()
        .arg("-r")
        .arg(w.repo())
        .env("LIFEBOAT_TOKEN", "t")
        .args(["--io-timeout", "2", "pull", &url])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("timed out") || e.contains("gave up after"),
        "{e}"
    );
    // A token is never sent in clear to another host unless allowed.
    let out = w
        .cmd()
        .arg("-r")
        .arg(w.repo())
        .env("LIFEBOAT_TOKEN", "t")
        .args(["push", "http://192.0.2.1:8473/"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("refusing to send a token in clear"), "{e}");
    assert!(!e.contains("lbt_"), "{e}");
    // A scope names a site: `site1` does not cover `site10`.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("srv");
    std::fs::create_dir_all(&repo).unwrap();
    let tokens = dir.path().join("tokens.toml");
    let ten = add_token_with(&tokens, "ten", "append", &["--scope", "site10"]);
    let one = add_token_with(&tokens, "one", "read", &["--scope", "site1"]);
    let server = Server::start(&repo, &tokens, "127.0.0.1:0");
    let site = World::new();
    site.init("64K");
    site.backup_noise("site10-web", "d.raw", 100_000, 1);
    let out = site
        .cmd()
        .arg("-r")
        .arg(site.repo())
        .env("LIFEBOAT_TOKEN", &ten)
        .args(["push", &server.url, "--init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = HttpStore::new(
        &format!("{}/", server.url),
        HttpOptions {
            token: Some(one),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(rt.block_on(c.list("manifests/")).unwrap().is_empty());
}
