//! `lifeboat serve`: a repository server over a local repository.
//!
//! REST under /v1 (docs/SERVER.md). Every pushed object is verified against
//! its key before it becomes visible; a manifest is accepted only when its
//! index and every chunk it references are already stored, so the commit
//! order holds on the server too, whatever a client does.

pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::sync::{RwLock, Semaphore};

use crate::error::{Error, Result};
use crate::repo::{chunk, Index, Manifest, RepoConfig, CONFIG_FILE};
use crate::store::http::{ListResponse, MissingRequest, MissingResponse};
use crate::store::keys::{check_prefix, ObjectKey};
use crate::store::local::LocalStore;
use crate::store::Store;
use tokens::{Role, TokenFile};

pub struct ServeOptions {
    pub repo: PathBuf,
    pub listen: SocketAddr,
    pub tokens: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_uploads: usize,
}

struct AppState {
    store: LocalStore,
    root: PathBuf,
    config: RwLock<Option<RepoConfig>>,
    tokens: TokenFile,
    uploads: Semaphore,
}

type Shared = Arc<AppState>;

/// Chunks are at most 64 MiB plus a header; nothing else is larger.
const MAX_BODY: usize = (64 << 20) + 4096;
const MAX_MISSING_KEYS: usize = 100_000;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::CorruptObject { .. } | Error::BadName { .. } | Error::Invalid(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::MissingObject { .. } => StatusCode::CONFLICT,
            Error::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn need(role: Role, have: Role) -> ApiResult<()> {
    if have >= role {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this token's role ({have:?}) cannot do this; it needs {role:?}")
                .to_lowercase(),
        ))
    }
}

async fn auth(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|t| st.tokens.check(t)) {
        Some((name, role)) => {
            tracing::debug!(token = %name, ?role, "authenticated");
            req.extensions_mut().insert(role);
            next.run(req).await
        }
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            if presented.is_some() {
                "unknown token"
            } else {
                "missing bearer token"
            }
            .into(),
        )
        .into_response(),
    }
}

async fn health(State(st): State<Shared>) -> Json<serde_json::Value> {
    let cfg = st.config.read().await;
    Json(serde_json::json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "initialised": cfg.is_some(),
        "chunk_size": cfg.as_ref().map(|c| c.chunk_size),
    }))
}

async fn get_object(State(st): State<Shared>, Path(key): Path<String>) -> ApiResult<Response> {
    let key = ObjectKey::parse(&key)?.key();
    match st.store.get(&key).await? {
        Some(data) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
        }
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no object {key}"))),
    }
}

async fn put_object(
    State(st): State<Shared>,
    Extension(role): Extension<Role>,
    Path(key): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    need(Role::Append, role)?;
    let parsed = ObjectKey::parse(&key)?;
    let key = parsed.key();
    let _permit = tokio::time::timeout(Duration::from_secs(60), st.uploads.acquire())
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many uploads at once; retry".into(),
            )
        })?
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    if let ObjectKey::Config = parsed {
        return put_config(&st, body).await;
    }
    let chunk_size = match st.config.read().await.as_ref() {
        Some(c) => c.chunk_size,
        None => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "this server's repository is not initialised: push with --init".into(),
            ))
        }
    };
    let root = st.root.clone();
    let data = body.clone();
    tokio::task::spawn_blocking(move || verify_upload(&root, &parsed, &data, chunk_size))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let created = st.store.put_if_absent(&key, body).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
    .into_response())
}

async fn put_config(st: &AppState, body: Bytes) -> ApiResult<Response> {
    let cfg = RepoConfig::parse(FsPath::new(CONFIG_FILE), &body)?;
    let mut slot = st.config.write().await;
    if let Some(existing) = slot.as_ref() {
        if existing.chunk_size != cfg.chunk_size {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "chunk size mismatch: this repository uses {} bytes per chunk, yours {}",
                    existing.chunk_size, cfg.chunk_size
                ),
            ));
        }
        return Ok(StatusCode::OK.into_response());
    }
    let root = st.root.clone();
    let c = cfg.clone();
    tokio::task::spawn_blocking(move || crate::repo::Repo::init(&root, c))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    *slot = Some(cfg);
    Ok(StatusCode::CREATED.into_response())
}

/// Checks an uploaded object against its key, and for a manifest that
/// everything it references is here.
fn verify_upload(root: &FsPath, key: &ObjectKey, data: &[u8], chunk_size: u64) -> Result<()> {
    match key {
        ObjectKey::Config => Ok(()),
        ObjectKey::Chunk(id) => {
            let raw = chunk::decode(id, data)?;
            if raw.len() as u64 > chunk_size {
                return Err(Error::corrupt(
                    "chunk",
                    id,
                    "larger than the repository's chunk size",
                ));
            }
            Ok(())
        }
        ObjectKey::Index(id) => {
            let idx = Index::from_bytes(Some(id), data)?;
            if idx.chunk_size != chunk_size {
                return Err(Error::corrupt(
                    "index",
                    id,
                    "chunk size differs from the repository's",
                ));
            }
            Ok(())
        }
        ObjectKey::Manifest(mk) => {
            let m = Manifest::from_bytes(mk, data)?;
            if m.chunk_size != chunk_size {
                return Err(Error::corrupt(
                    "manifest",
                    mk.id,
                    "chunk size differs from the repository's",
                ));
            }
            let repo = crate::repo::Repo::open(root)?;
            let idx = repo.read_index(&m.index)?;
            if let Some(c) = idx.chunks.iter().find(|c| !repo.has_chunk(c)) {
                return Err(Error::MissingObject {
                    kind: "chunk (referenced by the manifest; push chunks before manifests)",
                    id: c.to_hex(),
                });
            }
            Ok(())
        }
    }
}

async fn delete_object(
    State(st): State<Shared>,
    Extension(role): Extension<Role>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    need(Role::Admin, role)?;
    let parsed = ObjectKey::parse(&key)?;
    if parsed == ObjectKey::Config {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the repository config is never deleted".into(),
        ));
    }
    st.store.delete(&parsed.key()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    prefix: String,
}

async fn list(
    State(st): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ListResponse>> {
    check_prefix(&q.prefix)?;
    Ok(Json(ListResponse {
        keys: st.store.list(&q.prefix).await?,
    }))
}

async fn missing(
    State(st): State<Shared>,
    Json(req): Json<MissingRequest>,
) -> ApiResult<Json<MissingResponse>> {
    if req.keys.len() > MAX_MISSING_KEYS {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_MISSING_KEYS} keys per request"),
        ));
    }
    for k in &req.keys {
        ObjectKey::parse(k)?;
    }
    Ok(Json(MissingResponse {
        missing: st.store.missing(&req.keys).await?,
    }))
}

pub fn router(repo: &FsPath, tokens: TokenFile, max_uploads: usize) -> Result<Router> {
    if !repo.is_dir() {
        return Err(Error::NoRepository(repo.to_path_buf()));
    }
    let config = match crate::repo::Repo::open(repo) {
        Ok(r) => Some(r.config),
        Err(Error::NotARepository(_)) => None,
        Err(e) => return Err(e),
    };
    let state = Arc::new(AppState {
        store: LocalStore::new(repo),
        root: repo.to_path_buf(),
        config: RwLock::new(config),
        tokens,
        uploads: Semaphore::new(max_uploads.max(1)),
    });
    let api = Router::new()
        .route(
            "/v1/objects/{*key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/list", get(list))
        .route("/v1/missing", post(missing))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Ok(Router::new()
        .route("/v1/health", get(health))
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state))
}

/// Runs the server until `shutdown` resolves, then drains requests for up to 10 s.
/// `on_bound` receives the bound address (useful with port 0).
pub async fn serve(
    opts: ServeOptions,
    on_bound: impl FnOnce(SocketAddr, bool),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tokens = TokenFile::load(&opts.tokens)?;
    if tokens.tokens.is_empty() {
        return Err(Error::Config {
            path: opts.tokens.clone(),
            reason:
                "no tokens: add one with `lifeboat serve token add NAME --role ROLE --tokens FILE`"
                    .into(),
        });
    }
    let app = router(&opts.repo, tokens, opts.max_uploads)?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let svc = app.into_make_service();
    let bind_err =
        |e: std::io::Error| Error::Invalid(format!("cannot listen on {}: {e}", opts.listen));
    match &opts.tls {
        Some((cert, key)) => {
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    Error::Invalid(format!(
                        "TLS certificate {} / key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
            let server = axum_server::bind_rustls(opts.listen, cfg).handle(handle.clone());
            let task = tokio::spawn(server.serve(svc));
            report_bound(&handle, on_bound, true).await?;
            task.await
                .map_err(|e| Error::Invalid(e.to_string()))?
                .map_err(bind_err)
        }
        None => {
            let server = axum_server::bind(opts.listen).handle(handle.clone());
            let task = tokio::spawn(server.serve(svc));
            report_bound(&handle, on_bound, false).await?;
            task.await
                .map_err(|e| Error::Invalid(e.to_string()))?
                .map_err(bind_err)
        }
    }
}

async fn report_bound(
    handle: &axum_server::Handle,
    on_bound: impl FnOnce(SocketAddr, bool),
    tls: bool,
) -> Result<()> {
    match handle.listening().await {
        Some(addr) => {
            on_bound(addr, tls);
            Ok(())
        }
        None => Err(Error::Invalid(
            "the server failed to start listening".into(),
        )),
    }
}
