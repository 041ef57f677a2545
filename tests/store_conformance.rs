//! One conformance suite run against every store: local, the real server
//! on loopback (in-process), and S3 on a real Garage cluster.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_core::format::chunk::Encoder;
use lifeboat_core::format::manifest::{
    ImageFormat, Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
};
use lifeboat_core::format::repo_config::RepoConfig;
use lifeboat_core::format::{Id, Index};
use lifeboat_core::store::http::{HttpOptions, HttpStore};
use lifeboat_core::store::local::LocalStore;
use lifeboat_core::store::s3::{S3Options, S3Store};
use lifeboat_core::store::{DynStore, ObjectKey, Store, Verified};

struct Objects {
    config: Verified,
    chunk_key: ObjectKey,
    chunk: Verified,
    index_key: ObjectKey,
    index: Verified,
    manifest_key: ObjectKey,
    manifest: Verified,
}

fn objects() -> Objects {
    objects_for("web")
}

/// A chunk, index and manifest for a backup of `vm`.
fn objects_for(vm: &str) -> Objects {
    let cfg = RepoConfig::new(128 << 10, 1).unwrap();
    let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let id = Id::of(&raw);
    let chunk = Encoder::new(1).unwrap().encode(&raw).unwrap();
    let index = Index {
        chunk_size: 128 << 10,
        image_size: 100_000,
        chunks: vec![id],
        plain: Vec::new(),
    };
    let m = Manifest {
        format: 1,
        vm: VmInfo { name: vm.into() },
        volume: VolumeInfo {
            name: "root".into(),
            role: Role::Root,
            format: ImageFormat::Raw,
            virtual_size: 100_000,
        },
        created_at: chrono::Utc::now(),
        chunk_size: 128 << 10,
        index: index.id(),
        parent: None,
        set: "ab".into(),
        source: SourceInfo {
            host: "h".into(),
            path: "/p".into(),
        },
        stats: Stats::default(),
        labels: Labels::default(),
        definition: None,
        capture: None,
    };
    let v = |k: ObjectKey, b: Vec<u8>| Verified::check(k, Bytes::from(b)).unwrap();
    Objects {
        config: v(ObjectKey::Config, serde_json::to_vec(&cfg).unwrap()),
        chunk_key: ObjectKey::Chunk(id),
        chunk: v(ObjectKey::Chunk(id), chunk),
        index_key: ObjectKey::Index(index.id()),
        index: v(ObjectKey::Index(index.id()), index.to_bytes()),
        manifest_key: ObjectKey::Manifest(m.key()),
        manifest: v(ObjectKey::Manifest(m.key()), m.to_bytes()),
    }
}

async fn suite(store: &dyn Store) {
    let o = objects();
    assert_eq!(
        store.get(&o.chunk_key).await.unwrap(),
        None,
        "missing object reads as None"
    );
    assert!(store.put_if_absent(&o.config).await.unwrap());
    assert!(store.put_if_absent(&o.chunk).await.unwrap());
    assert!(
        !store.put_if_absent(&o.chunk).await.unwrap(),
        "second put is a no-op"
    );
    assert_eq!(
        &store.get(&o.chunk_key).await.unwrap().unwrap(),
        o.chunk.data()
    );
    let other = ObjectKey::Chunk(Id::of(b"other"));
    assert_eq!(
        store
            .missing(&[o.chunk_key.clone(), other.clone()])
            .await
            .unwrap(),
        vec![other.clone()]
    );
    assert!(store.put_if_absent(&o.index).await.unwrap());
    assert!(store.put_if_absent(&o.manifest).await.unwrap());
    assert_eq!(
        store.list("manifests/").await.unwrap(),
        vec![o.manifest_key.clone()]
    );
    assert_eq!(
        store.list("manifests/web/").await.unwrap(),
        vec![o.manifest_key.clone()]
    );
    assert!(store.list("manifests/other/").await.unwrap().is_empty());
    assert_eq!(
        store.list("chunks/").await.unwrap(),
        vec![o.chunk_key.clone()]
    );
    assert_eq!(
        store.list("indexes/").await.unwrap(),
        vec![o.index_key.clone()]
    );
    // Keys that are not ours cannot even be named, and bytes that do not
    // match their key cannot become an object a store accepts.
    for bad in [
        "../etc/passwd",
        "chunks/00/zz",
        "manifests/a/../../x.json",
        "tmp/x",
    ] {
        assert!(ObjectKey::parse(bad).is_err(), "{bad}");
    }
    assert!(Verified::check(other.clone(), o.chunk.data().clone()).is_err());
    assert!(store.list("tmp/").await.is_err());
    docs_suite(store, &o).await;
    store.delete(&o.manifest_key).await.unwrap();
    // A listing may lag a delete on a distributed store (seen once on a
    // 3-node Garage); it must catch up within seconds.
    let mut listed = store.list("manifests/").await.unwrap();
    for _ in 0..50 {
        if listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        listed = store.list("manifests/").await.unwrap();
    }
    assert!(listed.is_empty(), "still listed after delete: {listed:?}");
    assert_eq!(store.get(&o.manifest_key).await.unwrap(), None);
    store.delete(&o.manifest_key).await.unwrap();
}

/// A lock document as lifeboat writes one.
fn lock_body(kind: &str, what: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "kind": kind, "host": "test-host", "pid": 1, "what": what,
            "since": chrono::Utc::now(),
        })
        .to_string(),
    )
}

/// Locks and protection marks: written, replaced, listed with their body
/// and the store's time, removed; hostile names cannot be formed.
async fn docs_suite(store: &dyn Store, o: &Objects) {
    use lifeboat_core::store::{DocKey, DocKind};
    let lock = DocKey::lock("writer-00ff").unwrap();
    store
        .put_doc(&lock, lock_body("writer", "v1"))
        .await
        .unwrap();
    store
        .put_doc(&lock, lock_body("writer", "v2"))
        .await
        .unwrap();
    let listed = store.list_docs(DocKind::Lock).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let info = lifeboat_core::lock::LockInfo::from_doc(&lock, &listed[0].body)
        .unwrap_or_else(|| panic!("not a lock: {:?}", listed[0].body));
    assert_eq!(info.what, "v2");
    let age = chrono::Utc::now() - listed[0].modified;
    assert!(age.num_seconds().abs() < 120, "store time far off: {age}");
    let ObjectKey::Manifest(m) = &o.manifest_key else {
        unreachable!()
    };
    let mark = DocKey::Protection(m.clone());
    store
        .put_doc(&mark, Bytes::from_static(br#"{"note":"x"}"#))
        .await
        .unwrap();
    let marks = store.list_docs(DocKind::Protection).await.unwrap();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].key, mark);
    assert!(store.list_docs(DocKind::Lock).await.unwrap().len() == 1);
    let big = Bytes::from(vec![b' '; 20 << 10]);
    assert!(
        store.put_doc(&lock, big).await.is_err(),
        "oversized document"
    );
    store.delete_doc(&lock).await.unwrap();
    store.delete_doc(&mark).await.unwrap();
    store.delete_doc(&mark).await.unwrap();
    let mut left = store.list_docs(DocKind::Lock).await.unwrap().len();
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = store.list_docs(DocKind::Lock).await.unwrap().len();
    }
    assert_eq!(left, 0);
    for bad in [
        "locks/../x.json",
        "protected/../../etc/passwd",
        "locks/gc-ZZ.json",
    ] {
        assert!(DocKey::parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_store() {
    let dir = tempfile::tempdir().unwrap();
    suite(&LocalStore::new(dir.path().join("repo"))).await;
}

/// The in-memory store the engines' fault tests use behaves like the
/// real ones, without faults.
#[tokio::test(flavor = "multi_thread")]
async fn memory_store() {
    suite(&lifeboat_core::store::memory::MemoryStore::new()).await;
}

async fn start_server(dir: &std::path::Path) -> (String, String, String) {
    start_server_with(dir, "srv", |_| {}).await
}

/// Starts a server on a repository directory `name` under `dir`, with the
/// tokens file `dir/tokens.toml` (an admin and an append token are added).
async fn start_server_with(
    dir: &std::path::Path,
    name: &str,
    tweak: impl FnOnce(&mut lifeboat::server::ServeOptions),
) -> (String, String, String) {
    let repo = dir.join(name);
    std::fs::create_dir_all(&repo).unwrap();
    let tokens = dir.join("tokens.toml");
    let admin = lifeboat::server::tokens::TokenFile::add(
        &tokens,
        &format!("admin-{name}"),
        lifeboat::server::tokens::Role::Admin,
        Default::default(),
    )
    .unwrap();
    let append = lifeboat::server::tokens::TokenFile::add(
        &tokens,
        &format!("client-{name}"),
        lifeboat::server::tokens::Role::Append,
        Default::default(),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut opts = lifeboat::server::ServeOptions {
        repo,
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens,
        tls: None,
        max_uploads: 4,
        max_connections: lifeboat::server::ServeOptions::DEFAULT_MAX_CONNECTIONS,
        header_timeout: lifeboat::server::ServeOptions::DEFAULT_HEADER_TIMEOUT,
        idle_timeout: lifeboat::server::ServeOptions::DEFAULT_IDLE_TIMEOUT,
        config: Default::default(),
        // The suite deletes what it wrote; the window has its own tests.
        rules: lifeboat::server::Rules {
            immutable_for: std::time::Duration::ZERO,
            ..Default::default()
        },
    };
    tweak(&mut opts);
    tokio::spawn(lifeboat::server::serve(
        opts,
        move |addr, _| {
            let _ = tx.send(addr);
        },
        std::future::pending(),
    ));
    let addr = rx.await.unwrap();
    (format!("http://{addr}/"), admin, append)
}

fn http(url: &str, token: &str) -> HttpStore {
    HttpStore::new(
        url,
        HttpOptions {
            token: Some(token.into()),
            ..Default::default()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_store_against_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let (url, admin, _) = start_server(dir.path()).await;
    suite(&http(&url, &admin)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_verifies_and_enforces_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (url, admin, append) = start_server(dir.path()).await;
    let o = objects();
    let client = http(&url, &append);
    client.put_if_absent(&o.config).await.unwrap();
    // A manifest before its chunks: refused, commit order holds on the server.
    client.put_if_absent(&o.index).await.unwrap();
    let e = client
        .put_if_absent(&o.manifest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("409") && e.contains("push chunks before manifests"),
        "{e}"
    );
    // Wrong bytes for a chunk id (a raw client; ours cannot make them):
    // 422 naming the id, nothing stored.
    let raw = common::http();
    let wrong = ObjectKey::Chunk(Id::of(b"not these bytes"));
    let resp = raw
        .put(format!("{url}v1/objects/{wrong}"))
        .bearer_auth(&append)
        .body(o.chunk.data().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body = resp.text().await.unwrap();
    assert!(body.contains(&wrong.key()[10..]), "{body}");
    assert_eq!(http(&url, &admin).get(&wrong).await.unwrap(), None);
    client.put_if_absent(&o.chunk).await.unwrap();
    client.put_if_absent(&o.manifest).await.unwrap();
    // An append token can never delete.
    let e = client.delete(&o.manifest_key).await.unwrap_err();
    assert!(matches!(e, lifeboat_core::Error::Denied { .. }), "{e}");
    assert!(e.to_string().contains("needs admin"), "{e}");
    assert_eq!(
        client.list("manifests/").await.unwrap().len(),
        1,
        "nothing changed"
    );
    // No token, a wrong token: 401.
    let anon = HttpStore::new(&url, HttpOptions::default()).unwrap();
    let e = anon.list("manifests/").await.unwrap_err().to_string();
    assert!(
        e.contains("authentication failed") && e.contains("missing bearer token"),
        "{e}"
    );
    let e = http(&url, "lbt_wrong")
        .get(&o.chunk_key)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown token"), "{e}");
    assert!(
        !e.contains("lbt_wrong"),
        "the token must not appear in errors: {e}"
    );
    // The auth scheme is case-insensitive (RFC 9110).
    let resp = raw
        .get(format!("{url}v1/objects/{}", o.chunk_key))
        .header("Authorization", format!("bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Malformed keys in URLs are rejected before touching disk.
    for path in [
        "v1/objects/chunks/../../etc/passwd",
        "v1/objects/chunks/zz/abc",
        "v1/objects/tmp/x",
        "v1/objects/manifests/a%2F..%2Fb/x/y.json",
    ] {
        let resp = raw
            .get(format!("{url}{path}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
    }
    // A chunk-size mismatch on init is a clear error.
    let other = RepoConfig::new(1 << 20, 1).unwrap();
    let other = Verified::check(
        ObjectKey::Config,
        Bytes::from(serde_json::to_vec(&other).unwrap()),
    )
    .unwrap();
    let e = client.put_if_absent(&other).await.unwrap_err().to_string();
    assert!(e.contains("chunk size mismatch"), "{e}");
}

/// The server refuses what it would not keep before it reads it: a read
/// token's upload is answered while the body is still being sent, bodies
/// over a kind's limit get the documented JSON 413, and so does an
/// oversized `/v1/missing` request.
#[tokio::test(flavor = "multi_thread")]
async fn server_checks_role_and_size_before_reading_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (url, admin, append) = start_server(dir.path()).await;
    let tokens = dir.path().join("tokens.toml");
    let read = lifeboat::server::tokens::TokenFile::add(
        &tokens,
        "reader",
        lifeboat::server::tokens::Role::Read,
        Default::default(),
    )
    .unwrap();
    // The server loaded its tokens at start: restart with the reader.
    let (url2, _, _) = start_server_with(dir.path(), "srv2", |_| {}).await;
    let _ = (&url, &admin);
    http(&url2, &append)
        .put_if_absent(&objects().config)
        .await
        .unwrap();
    // An upload that announces 64 MiB and sends 1 MiB, then waits: only a
    // server that answers before reading the body can reply at all.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = ObjectKey::Chunk(Id::of(b"x"));
    let addr = url2.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/objects/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read}\r\nContent-Length: {}\r\n\r\n",
        64 << 20
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(&vec![0u8; 1 << 20]).await;
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut answer))
        .await
        .expect("the server answered a read token's upload without reading its body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Over the limit for the kind: 413 with the documented JSON, answered
    // from the request's head alone (no body is sent: a client still
    // writing one when the server answers and closes may see its write
    // fail first).
    let mk = objects().manifest_key;
    let (status, body) = head_only(
        addr,
        &format!(
            "PUT /v1/objects/{mk} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {append}\r\nContent-Length: {}\r\n\r\n",
            (1 << 20) + 1
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("larger than"), "{v}");
    let (status, body) = head_only(
        addr,
        &format!(
            "POST /v1/missing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            (1 << 20) + 1
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].is_string(), "{v}");
}

/// Sends a request's head (its body never follows) and reads the answer:
/// (status line, body).
async fn head_only(addr: &str, head: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("the server answered a request's head without its body");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (h.lines().next().unwrap_or("").to_string(), b.to_string())
}

/// An absurd file in a served repository is refused by the server's GET
/// (never read whole); the local store refuses it the same way.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_objects_are_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (url, admin, _) = start_server(dir.path()).await;
    let o = objects();
    let client = http(&url, &admin);
    client.put_if_absent(&o.config).await.unwrap();
    let path = dir.path().join("srv").join(o.chunk_key.key());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(40 << 30).unwrap(); // sparse: 40 GiB claimed, nothing stored
    let e = client.get(&o.chunk_key).await.unwrap_err().to_string();
    assert!(e.contains("413") || e.contains("limit"), "{e}");
    let local = LocalStore::new(dir.path().join("srv"));
    let e = local.get(&o.chunk_key).await.unwrap_err();
    assert!(matches!(e, lifeboat_core::Error::TooLarge { .. }), "{e}");
}

/// Listings come in pages; the client follows them to the end.
#[tokio::test(flavor = "multi_thread")]
async fn listings_are_paged() {
    let dir = tempfile::tempdir().unwrap();
    let (url, admin, _) = start_server(dir.path()).await;
    let client = http(&url, &admin);
    client.put_if_absent(&objects().config).await.unwrap();
    let n = lifeboat_core::store::http::LIST_PAGE * 2 + 17;
    for i in 0..n {
        let key = ObjectKey::Chunk(Id::of(&(i as u64).to_le_bytes())).key();
        let p = dir.path().join("srv").join(key);
        std::fs::write(p, b"").unwrap();
    }
    assert_eq!(client.list("chunks/").await.unwrap().len(), n);
}

/// A client that sends half a header is cut off after the header timeout,
/// and connections past the limit are refused, so idle sockets cannot
/// starve the server.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a busy test machine cannot let an idle connection
    // time out (and free its slot) before the extra one is tried.
    let (url, _, _) = start_server_with(dir.path(), "srv", |o| {
        o.header_timeout = std::time::Duration::from_secs(4);
        o.max_connections = 4;
    })
    .await;
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    // The server takes a connection's slot in that connection's own task:
    // give the four a moment to take theirs, so the fifth is the one over
    // the limit (under load it could otherwise overtake one of them).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Past the limit: answered 503 with the reason, then closed.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        extra.read_to_end(&mut answer),
    )
    .await
    .expect("a connection past the limit is answered and closed, not held")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("the server is full"), "{answer}");
    let mut buf = [0u8; 64];
    // The half-sent headers time out; the server closes those connections.
    for s in &mut idle {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the server closes a connection that never finishes its headers");
        assert!(matches!(r, Ok(_) | Err(_)));
    }
    drop(idle);
    // Then the server answers again.
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = common::http().get(format!("{url}v1/health")).send().await {
            ok = r.status() == 200;
            if ok {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "health answers once the slow clients are gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_against_garage() {
    let Some(g) = common::remote::garage() else {
        return;
    };
    let mut o = S3Options::from_url(&format!(
        "s3://{}/{}",
        g.bucket,
        common::remote::unique("conf")
    ))
    .unwrap();
    o.endpoint = Some(g.endpoints[0].clone());
    o.region = Some(g.region.clone());
    o.path_style = true;
    o.access_key_id = Some(g.key_id.clone());
    o.secret_access_key = Some(g.secret.clone());
    let store: DynStore = Arc::new(S3Store::new(&o).unwrap());
    suite(store.as_ref()).await;
    // Refused credentials are a clear, permanent error.
    o.secret_access_key = Some("wrong-secret".into());
    let bad = S3Store::new(&o).unwrap();
    let e = bad.list("manifests/").await.unwrap_err();
    assert!(matches!(e, lifeboat_core::Error::Denied { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-secret"));
}

/// A hostile "server" on loopback: answers every request with 200 and a
/// body that streams zeros (up to 2 GiB), or one that claims 1.5 GiB.
async fn hostile_server(claim_length: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let zeros = vec![b'0'; 1 << 20];
                if claim_length {
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1610612736\r\n\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..1536 {
                        if s.write_all(&zeros).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..2048 {
                        let mut part = format!("{:x}\r\n", zeros.len()).into_bytes();
                        part.extend_from_slice(&zeros);
                        part.extend_from_slice(b"\r\n");
                        if s.write_all(&part).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}/")
}

/// A peer cannot make the client hold a 1.5 GiB "chunk" or an endless
/// listing: reads stop at what the protocol allows, with a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_servers_cannot_make_the_client_buffer_without_bound() {
    for claim in [true, false] {
        let url = hostile_server(claim).await;
        let client = http(&url, "t");
        let key = ObjectKey::Chunk(Id::of(b"x"));
        let e = client.get(&key).await.unwrap_err();
        assert!(matches!(e, lifeboat_core::Error::TooLarge { .. }), "{e}");
        assert!(!e.is_transient(), "never retried: {e}");
        let e = client.list("manifests/").await.unwrap_err();
        assert!(matches!(e, lifeboat_core::Error::TooLarge { .. }), "{e}");
    }
}

/// Polls `f` for up to 10 s (the server notices a changed tokens file
/// within 2 s).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Tokens are added, removed (rotation), expire and are scoped to a set of
/// VMs, all while the server runs.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_rotate_expire_and_scope_without_a_restart() {
    use lifeboat::server::tokens::{NewToken, Role as TRole, TokenFile};
    let dir = tempfile::tempdir().unwrap();
    let (url, admin, append) = start_server(dir.path()).await;
    let tokens = dir.path().join("tokens.toml");
    let o = objects();
    http(&url, &admin).put_if_absent(&o.config).await.unwrap();

    // Rotation: a new token works, then the old one is removed.
    let new = TokenFile::add(&tokens, "client-2", TRole::Append, NewToken::default()).unwrap();
    eventually("the new token is accepted", async || {
        http(&url, &new).list("manifests/").await.is_ok()
    })
    .await;
    TokenFile::remove(&tokens, "client-srv").unwrap();
    eventually("the old token is refused", async || {
        http(&url, &append)
            .list("manifests/")
            .await
            .is_err_and(|e| e.to_string().contains("unknown token"))
    })
    .await;

    // Expiry: refused with the token's name and when.
    let old = TokenFile::add(
        &tokens,
        "temp",
        TRole::Read,
        NewToken {
            expires: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
            ..Default::default()
        },
    )
    .unwrap();
    eventually("the expired token is refused as expired", async || {
        http(&url, &old)
            .list("manifests/")
            .await
            .is_err_and(|e| e.to_string().contains("token temp expired at"))
    })
    .await;

    // Scope: site A sees and writes only a-* VMs.
    let site_a = TokenFile::add(
        &tokens,
        "site-a",
        TRole::Append,
        NewToken {
            scope: Some("a-".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let a = http(&url, &site_a);
    eventually("site A's token is accepted", async || {
        a.list("manifests/").await.is_ok()
    })
    .await;
    let mine = objects_for("a-web");
    a.put_if_absent(&mine.chunk).await.unwrap();
    a.put_if_absent(&mine.index).await.unwrap();
    a.put_if_absent(&mine.manifest).await.unwrap();
    let other = objects_for("web");
    let e = a
        .put_if_absent(&other.manifest)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("may only write backups of its scope a-"), "{e}");
    let adm = http(&url, &admin);
    adm.put_if_absent(&other.manifest).await.unwrap();
    assert_eq!(adm.list("manifests/").await.unwrap().len(), 2);
    assert_eq!(
        a.list("manifests/").await.unwrap(),
        vec![mine.manifest_key.clone()]
    );
    assert_eq!(a.get(&other.manifest_key).await.unwrap(), None);
    assert_eq!(
        a.missing(&[other.manifest_key.clone(), mine.manifest_key.clone()])
            .await
            .unwrap(),
        vec![other.manifest_key.clone()]
    );
}

/// Who may touch locks and protection marks on a server: append takes and
/// releases writer locks and protects; only admin takes a gc lock or lifts
/// a protection; a backup must exist to be protected; bodies are JSON.
#[tokio::test(flavor = "multi_thread")]
async fn server_enforces_roles_on_locks_and_protection() {
    use lifeboat_core::store::{DocKey, DocKind};
    let dir = tempfile::tempdir().unwrap();
    let (url, admin, append) = start_server(dir.path()).await;
    let (a, ad) = (http(&url, &append), http(&url, &admin));
    let o = objects();
    for obj in [&o.config, &o.chunk, &o.index, &o.manifest] {
        a.put_if_absent(obj).await.unwrap();
    }
    let body = lock_body("writer", "push");
    let gc_body = lock_body("gc", "gc");
    let w = DocKey::lock("writer-01").unwrap();
    a.put_doc(&w, body.clone()).await.unwrap();
    let gc = DocKey::lock("gc-01").unwrap();
    let e = a
        .put_doc(&gc, gc_body.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin"), "{e}");
    ad.put_doc(&gc, gc_body.clone()).await.unwrap();
    let e = a.delete_doc(&gc).await.unwrap_err().to_string();
    assert!(e.contains("admin"), "{e}");
    a.delete_doc(&w).await.unwrap();
    ad.delete_doc(&gc).await.unwrap();
    let e = a
        .put_doc(&w, Bytes::from_static(b"not json"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("JSON"), "{e}");

    let ObjectKey::Manifest(m) = &o.manifest_key else {
        unreachable!()
    };
    let mark = DocKey::Protection(m.clone());
    a.put_doc(&mark, body.clone()).await.unwrap();
    let e = a.delete_doc(&mark).await.unwrap_err().to_string();
    assert!(e.contains("admin"), "{e}");
    assert_eq!(ad.list_docs(DocKind::Protection).await.unwrap().len(), 1);
    let mut ghost = m.clone();
    ghost.vm = "ghost".into();
    let e = a
        .put_doc(&DocKey::Protection(ghost), body)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("push it before protecting"), "{e}");
}
