//! One conformance suite run against every store: local, the real server
//! on loopback (in-process), and S3 on a real Garage cluster.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use lifeboat::repo::chunk::Encoder;
use lifeboat::repo::manifest::{
    ImageFormat, Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
};
use lifeboat::repo::{Id, Index, Repo, RepoConfig};
use lifeboat::store::http::{HttpOptions, HttpStore};
use lifeboat::store::local::LocalStore;
use lifeboat::store::s3::{S3Options, S3Store};
use lifeboat::store::{DynStore, Store};

struct Objects {
    config: Bytes,
    chunk_key: String,
    chunk: Bytes,
    index_key: String,
    index: Bytes,
    manifest_key: String,
    manifest: Bytes,
}

fn objects() -> Objects {
    let cfg = RepoConfig::new(128 << 10, 1).unwrap();
    let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let id = Id::of(&raw);
    let chunk = Encoder::new(1).unwrap().encode(&raw).unwrap();
    let index = Index {
        chunk_size: 128 << 10,
        image_size: 100_000,
        chunks: vec![id],
    };
    let m = Manifest {
        format: 1,
        vm: VmInfo { name: "web".into() },
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
        set: "s".into(),
        source: SourceInfo {
            host: "h".into(),
            path: "/p".into(),
        },
        stats: Stats::default(),
        labels: Labels::default(),
    };
    Objects {
        config: Bytes::from(serde_json::to_vec(&cfg).unwrap()),
        chunk_key: Repo::chunk_key(&id),
        chunk: Bytes::from(chunk),
        index_key: Repo::index_key(&index.id()),
        index: Bytes::from(index.to_bytes()),
        manifest_key: m.key().object_key(),
        manifest: Bytes::from(m.to_bytes()),
    }
}

async fn suite(store: &dyn Store) {
    let o = objects();
    assert_eq!(
        store.get(&o.chunk_key).await.unwrap(),
        None,
        "missing object reads as None"
    );
    assert!(store
        .put_if_absent("lifeboat.json", o.config.clone())
        .await
        .unwrap());
    assert!(store
        .put_if_absent(&o.chunk_key, o.chunk.clone())
        .await
        .unwrap());
    assert!(
        !store
            .put_if_absent(&o.chunk_key, o.chunk.clone())
            .await
            .unwrap(),
        "second put is a no-op"
    );
    assert_eq!(store.get(&o.chunk_key).await.unwrap().unwrap(), o.chunk);
    let other = Repo::chunk_key(&Id::of(b"other"));
    assert_eq!(
        store
            .missing(&[o.chunk_key.clone(), other.clone()])
            .await
            .unwrap(),
        vec![other.clone()]
    );
    assert!(store
        .put_if_absent(&o.index_key, o.index.clone())
        .await
        .unwrap());
    assert!(store
        .put_if_absent(&o.manifest_key, o.manifest.clone())
        .await
        .unwrap());
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
    // Keys that are not ours never reach the backend.
    for bad in [
        "../etc/passwd",
        "chunks/00/zz",
        "manifests/a/../../x.json",
        "tmp/x",
    ] {
        assert!(store.get(bad).await.is_err(), "{bad}");
        assert!(
            store
                .put_if_absent(bad, Bytes::from_static(b"x"))
                .await
                .is_err(),
            "{bad}"
        );
    }
    assert!(store.list("tmp/").await.is_err());
    store.delete(&o.manifest_key).await.unwrap();
    assert!(store.list("manifests/").await.unwrap().is_empty());
    store.delete(&o.manifest_key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn local_store() {
    let dir = tempfile::tempdir().unwrap();
    suite(&LocalStore::new(dir.path().join("repo"))).await;
}

async fn start_server(dir: &std::path::Path) -> (String, String, String) {
    let repo = dir.join("srv");
    std::fs::create_dir(&repo).unwrap();
    let tokens = dir.join("tokens.toml");
    let admin = lifeboat::server::tokens::TokenFile::add(
        &tokens,
        "admin",
        lifeboat::server::tokens::Role::Admin,
    )
    .unwrap();
    let append = lifeboat::server::tokens::TokenFile::add(
        &tokens,
        "client",
        lifeboat::server::tokens::Role::Append,
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let opts = lifeboat::server::ServeOptions {
        repo,
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens,
        tls: None,
        max_uploads: 4,
    };
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
    client
        .put_if_absent("lifeboat.json", o.config.clone())
        .await
        .unwrap();
    // A manifest before its chunks: refused, commit order holds on the server.
    client
        .put_if_absent(&o.index_key, o.index.clone())
        .await
        .unwrap();
    let e = client
        .put_if_absent(&o.manifest_key, o.manifest.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("409") && e.contains("push chunks before manifests"),
        "{e}"
    );
    // Wrong bytes for a chunk id: 4xx naming the id, nothing stored.
    let wrong = Repo::chunk_key(&Id::of(b"not these bytes"));
    let e = client
        .put_if_absent(&wrong, o.chunk.clone())
        .await
        .unwrap_err()
        .to_string();
    let wrong_hex = wrong.rsplit('/').next().unwrap();
    assert!(e.contains("422") && e.contains(wrong_hex), "{e}");
    assert_eq!(http(&url, &admin).get(&wrong).await.unwrap(), None);
    client
        .put_if_absent(&o.chunk_key, o.chunk.clone())
        .await
        .unwrap();
    client
        .put_if_absent(&o.manifest_key, o.manifest.clone())
        .await
        .unwrap();
    // An append token can never delete.
    let e = client.delete(&o.manifest_key).await.unwrap_err();
    assert!(matches!(e, lifeboat::Error::Denied { .. }), "{e}");
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
    // Malformed keys in URLs are rejected before touching disk.
    let raw = reqwest::Client::new();
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
    let e = client
        .put_if_absent(
            "lifeboat.json",
            Bytes::from(serde_json::to_vec(&other).unwrap()),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("chunk size mismatch"), "{e}");
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
    assert!(matches!(e, lifeboat::Error::Denied { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-secret"));
}
