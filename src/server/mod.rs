//! `lifeboat serve`: a repository server over a local repository.
//!
//! REST under /v1 (docs/SERVER.md). Every pushed object is verified against
//! its key before it becomes visible; a manifest is accepted only when its
//! index and every chunk it references are already stored, so the commit
//! order holds on the server too, whatever a client does.

mod catalog;
pub mod cert;
mod docs;
mod locks;
pub mod metrics;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::sync::{RwLock, Semaphore};

use lifeboat_core::error::{Error, Result};
use lifeboat_core::format::keys::{check_prefix, ObjectKey, Verified};
use lifeboat_core::format::manifest::Refs;
use lifeboat_core::format::refs::exact_time;
use lifeboat_core::format::repo_config::{RepoConfig, CONFIG_FILE};
use lifeboat_core::format::{chunk, Index, Manifest, ManifestKey};
use lifeboat_core::store::http::{
    ImmutableResponse, ListResponse, MissingRequest, MissingResponse, LIST_PAGE, MAX_MISSING_BODY,
    MISSING_BATCH,
};
use lifeboat_core::store::local::LocalStore;
use lifeboat_core::store::throttle::RateLimit;
use lifeboat_core::store::Store;

mod limits;
use tokens::{Denied, Grant, Role, TokenFile};

pub struct ServeOptions {
    pub repo: PathBuf,
    pub listen: SocketAddr,
    pub tokens: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_uploads: usize,
    /// Open connections at once; more are refused.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how
    /// long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a connection may stay with no request in progress.
    pub idle_timeout: Duration,
    /// RPO thresholds for `/metrics` (the policies).
    pub config: Arc<lifeboat_core::config::Config>,
    pub rules: Rules,
}

impl ServeOptions {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
}

/// What the server enforces on tokens that are not admin (docs/SERVER.md,
/// "Threat model").
#[derive(Debug, Clone)]
pub struct Rules {
    /// A new backup may be dated at most this long before its push began
    /// (the server's first sight of the pushing token's oldest live lock).
    pub max_backup_lag: Duration,
    /// Prune and gc never remove a backup that arrived less than this ago.
    pub immutable_for: Duration,
    /// Request bodies held in memory at once, across every request.
    pub max_body_memory: u64,
    /// How long a request waits for room in that memory (the header
    /// timeout), then 503.
    pub body_wait: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_backup_lag: Duration::from_secs(3600),
            immutable_for: Duration::from_secs(7 * 86_400),
            max_body_memory: 256 << 20,
            body_wait: ServeOptions::DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// How far ahead of the server's clock a backup from a token that is not
/// admin may be dated (clocks drift; more is a forged date).
const MAX_AHEAD: Duration = Duration::from_secs(600);
/// How long after its first volume arrived a set may still gain the
/// others (one push sends them within seconds); then it is closed.
const SET_WINDOW: Duration = Duration::from_secs(3600);

struct AppState {
    store: LocalStore,
    root: PathBuf,
    config: RwLock<Option<RepoConfig>>,
    tokens: Arc<Tokens>,
    uploads: Semaphore,
    metrics: metrics::MetricsSource,
    catalog: Arc<catalog::Catalog>,
    locks: Arc<locks::LockRegistry>,
    budget: limits::BodyBudget,
    rules: Rules,
}

/// The tokens the server accepts: re-read when the file changes (checked
/// every `TOKENS_CHECK`) or on SIGHUP, so adding, removing or rotating a
/// token needs no restart. When each was last used is kept beside the file.
pub struct Tokens {
    path: Option<PathBuf>,
    current: std::sync::RwLock<(TokenFile, Option<std::time::SystemTime>)>,
    /// Per-token bandwidth caps (upload, download), rebuilt on reload.
    caps: std::sync::RwLock<std::collections::HashMap<String, Caps>>,
    used: std::sync::Mutex<(
        std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
        bool,
    )>,
}

type Caps = (Option<Arc<RateLimit>>, Option<Arc<RateLimit>>);

fn caps_of(file: &TokenFile) -> std::collections::HashMap<String, Caps> {
    let mut out = std::collections::HashMap::new();
    for t in &file.tokens {
        match t.limits() {
            Ok((up, down)) => {
                let make =
                    |r: Option<u64>| r.and_then(|r| RateLimit::new(r, None).ok()).map(Arc::new);
                out.insert(t.name.clone(), (make(up), make(down)));
            }
            Err(e) => tracing::error!("{e}; this token is not capped"),
        }
    }
    out
}

const TOKENS_CHECK: Duration = Duration::from_secs(2);
const LAST_USED_EVERY: Duration = Duration::from_secs(30);

impl Tokens {
    pub fn new(path: Option<PathBuf>, file: TokenFile) -> Tokens {
        let mtime = path.as_deref().and_then(mtime);
        let used = path
            .as_deref()
            .map(tokens::load_last_used)
            .unwrap_or_default();
        Tokens {
            path,
            caps: std::sync::RwLock::new(caps_of(&file)),
            current: std::sync::RwLock::new((file, mtime)),
            used: std::sync::Mutex::new((used, false)),
        }
    }

    fn check(&self, token: &str) -> std::result::Result<Grant, Denied> {
        let now = chrono::Utc::now();
        let res = match self.current.read() {
            Ok(c) => c.0.check(token, now),
            Err(_) => Err(Denied::Unknown),
        };
        if let Ok(g) = &res {
            if let Ok(mut u) = self.used.lock() {
                u.0.insert(g.name.clone(), now);
                u.1 = true;
            }
        }
        res
    }

    /// Re-reads the file if it changed (or `force`); a bad file is
    /// reported and the tokens in use are kept.
    pub fn reload(&self, force: bool) {
        let Some(path) = &self.path else { return };
        let m = mtime(path);
        let changed = self.current.read().map(|c| c.1 != m).unwrap_or(true);
        if !changed && !force {
            return;
        }
        match TokenFile::load(path) {
            Ok(f) => {
                let n = f.tokens.len();
                if let Ok(mut c) = self.caps.write() {
                    *c = caps_of(&f);
                }
                if let Ok(mut c) = self.current.write() {
                    *c = (f, m);
                }
                if n == 0 {
                    tracing::warn!(
                        "tokens reloaded from {}: no tokens left, every request is refused",
                        path.display()
                    );
                } else {
                    tracing::info!("tokens reloaded from {}: {n} token(s)", path.display());
                }
            }
            Err(e) => {
                if let Ok(mut c) = self.current.write() {
                    c.1 = m;
                }
                tracing::error!("keeping the tokens in use: {e}");
            }
        }
    }

    /// The token's caps (upload, download).
    fn caps(&self, name: &str) -> Caps {
        self.caps
            .read()
            .ok()
            .and_then(|c| c.get(name).cloned())
            .unwrap_or_default()
    }

    /// Writes when each token was last used, if that changed.
    pub fn save_used(&self) {
        let Some(path) = &self.path else { return };
        let snapshot = match self.used.lock() {
            Ok(mut u) if u.1 => {
                u.1 = false;
                u.0.clone()
            }
            _ => return,
        };
        if let Err(e) = tokens::save_last_used(path, &snapshot) {
            tracing::warn!("recording when tokens were last used: {e}");
        }
    }
}

fn mtime(p: &FsPath) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

type Shared = Arc<AppState>;

/// How often staged uploads are committed when no manifest commits them.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// How long one request body may take to arrive: a 64 MiB chunk at
/// 256 KiB/s. A client slower than that holds an upload slot for nothing.
const BODY_TIMEOUT: Duration = Duration::from_secs(256);

pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// A machine-readable reason a client acts on (`late`: a backup the
    /// server will never take from this token).
    code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> ApiError {
        ApiError {
            status,
            message,
            code: None,
        }
    }

    /// A new backup the server refuses for where it sits in time or in its
    /// set: a client must not retry it, and says what to do instead.
    fn late(message: String) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            message,
            code: Some(lifeboat_core::store::http::CODE_LATE),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(c) = self.code {
            body["code"] = c.into();
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::CorruptObject { .. } | Error::BadName { .. } | Error::BadInput(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::MissingObject { .. } => StatusCode::CONFLICT,
            Error::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        ApiError::new(status, e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn need(role: Role, have: Role) -> ApiResult<()> {
    if have >= role {
        Ok(())
    } else {
        Err(ApiError::new(
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
        .and_then(bearer_token);
    let Some(token) = presented else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token".into())
            .into_response();
    };
    match st.tokens.check(token) {
        Ok(grant) => {
            tracing::debug!(token = %grant.name, role = ?grant.role, "authenticated");
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
        Err(Denied::Unknown) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unknown token".into()).into_response()
        }
        Err(Denied::Expired { name, at }) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "token {name} expired at {}: ask the server's admin for a new one",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
        )
        .into_response(),
    }
}

/// A scoped token sees only its VMs' manifests (by name) and the chunks,
/// indexes and definitions those reference or that it sent itself (the
/// catalog's view): another site's backups do not exist for it — 404, not
/// 403, so neither names nor chunk hashes are confirmed.
async fn in_scope(st: &AppState, grant: &Grant, keys: Vec<ObjectKey>) -> ApiResult<Vec<bool>> {
    let by_name: Vec<bool> = keys
        .iter()
        .map(|k| match k {
            ObjectKey::Manifest(m) => grant.may_see(&m.vm),
            _ => true,
        })
        .collect();
    let Some(scope) = grant.scope_key().map(String::from) else {
        return Ok(by_name);
    };
    let catalog = st.catalog.clone();
    let data = tokio::task::spawn_blocking(move || catalog.allowed(&scope, &keys))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(by_name.into_iter().zip(data).map(|(a, b)| a && b).collect())
}

async fn one_in_scope(st: &AppState, grant: &Grant, key: &ObjectKey) -> ApiResult<bool> {
    Ok(in_scope(st, grant, vec![key.clone()]).await?[0])
}

fn out_of_scope(key: &ObjectKey) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no object {key}"))
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is
/// case-insensitive (RFC 9110, 11.1).
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Reads a request body of at most `limit` bytes within `BODY_TIMEOUT`,
/// once room for it is reserved in the server's body budget (what the
/// body claims to be, or the limit). Callers check the role and take
/// their slot first, so nobody can make the server buffer a body it would
/// refuse, and all bodies together stay within `--max-body-memory`.
async fn read_body(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    what: &str,
) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is larger than the {limit} bytes allowed"),
        )
    };
    let claimed = content_length(headers);
    if claimed.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let _room = st.budget.reserve(claimed.unwrap_or(limit)).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy: the memory it gives request bodies is in use (serve --max-body-memory); retry"
                .into(),
        )
    })?;
    // A body longer than it claimed is refused at its claim.
    let cap = claimed.unwrap_or(limit).min(limit);
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, cap as usize)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let length_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if length_limit {
                Err(too_large())
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading {what}: {e}"),
                ))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("{what} did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn health(State(st): State<Shared>) -> Json<serde_json::Value> {
    let cfg = st.config.read().await;
    Json(serde_json::json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "initialised": cfg.is_some(),
        "chunk_size": cfg.as_ref().map(|c| c.chunk_size),
        "immutable_secs": st.rules.immutable_for.as_secs(),
        "max_backup_lag_secs": st.rules.max_backup_lag.as_secs(),
    }))
}

/// The backups still inside the immutability window, with when each may
/// be removed: prune plans keep them (`GET /v1/immutable`).
async fn immutable(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
) -> ApiResult<Json<ImmutableResponse>> {
    let window = chrono::Duration::from_std(st.rules.immutable_for)
        .unwrap_or_else(|_| chrono::Duration::days(36500));
    let now = chrono::Utc::now();
    let catalog = st.catalog.clone();
    catalog_sync(&st).await?;
    let g = grant.clone();
    let until = catalog
        .arrived_since(now - window, |vm| g.may_see(vm))
        .into_iter()
        .map(|(k, at)| (k.object_key(), at + window))
        .collect();
    Ok(Json(ImmutableResponse { until }))
}

async fn catalog_sync(st: &AppState) -> ApiResult<()> {
    let catalog = st.catalog.clone();
    tokio::task::spawn_blocking(move || catalog.refresh())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(())
}

/// Streams an object from disk: the server never holds a whole chunk in
/// memory for a reader, so many parallel downloads cost no more than their
/// socket buffers. The size is checked against the kind's limit first.
async fn get_object(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    let key = ObjectKey::parse(&key)?;
    if !one_in_scope(&st, &grant, &key).await? {
        return Err(out_of_scope(&key));
    }
    st.store.make_visible(&key).await?;
    let path = st.root.join(key.key());
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no object {key}"),
            ))
        }
        Err(e) => return Err(Error::io("reading", &path, e).into()),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| Error::io("reading", &path, e))?
        .len();
    if len > key.max_size() {
        return Err(key
            .too_large(
                len,
                "the server's copy is damaged; run `lifeboat verify` there",
            )
            .into());
    }
    if let (_, Some(down)) = st.tokens.caps(&grant.name) {
        down.take(len).await;
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::io::AsyncReadExt::take(file, len),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

async fn put_object(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Role, key, scope and slot before a byte of the body is read.
    need(Role::Append, grant.role)?;
    let parsed = ObjectKey::parse(&key)?;
    if let ObjectKey::Manifest(m) = &parsed {
        if !grant.may_see(&m.vm) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {} may only write backups of its scope {}",
                    grant.name,
                    grant.scope.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    // A capped token waits for its allowance before it takes a shared
    // upload slot (its body waits in the network meanwhile): a slow token
    // never holds up another.
    if let (Some(up), _) = st.tokens.caps(&grant.name) {
        up.take(content_length(&headers).unwrap_or(parsed.max_size()))
            .await;
    }
    let _permit = tokio::time::timeout(Duration::from_secs(60), st.uploads.acquire())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy: too many uploads at once (serve --max-uploads); retry".into(),
            )
        })?
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let what = format!("{} {parsed}", parsed.kind());
    let body = read_body(&st, &headers, body, parsed.max_size(), &what).await?;
    if let ObjectKey::Config = parsed {
        return put_config(&st, body).await;
    }
    let chunk_size = match st.config.read().await.as_ref() {
        Some(c) => c.chunk_size,
        None => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "this server's repository is not initialised: push with --init".into(),
            ))
        }
    };
    if let ObjectKey::Manifest(_) = parsed {
        // Staged chunks and indexes become visible (and durable) first:
        // the manifest's check looks for them on disk.
        st.store.commit().await?;
    }
    let root = st.root.clone();
    let (catalog, locks, rules) = (st.catalog.clone(), st.locks.clone(), st.rules.clone());
    let g = grant.clone();
    let (obj, manifest) = tokio::task::spawn_blocking(move || {
        let (obj, manifest) = verify_upload(&root, parsed, body, chunk_size)?;
        if let (Some((key, m, refs)), true) = (&manifest, g.role < Role::Admin) {
            check_new_backup(&root, &catalog, &locks, &rules, &g, key, m)?;
            // A scope's backup may reference only what the scope may read:
            // data it sent or its own backups hold. Anything else is
            // "missing", as if it did not exist — which for this token it
            // does not.
            if let Some(scope) = g.scope_key() {
                let allowed = catalog.allowed(scope, refs)?;
                if let Some((k, _)) = refs.iter().zip(allowed).find(|(_, a)| !a) {
                    return Err(Error::MissingObject {
                        kind: "object (referenced by the manifest; push chunks before manifests)",
                        id: k.key(),
                    }
                    .into());
                }
            }
        }
        Ok::<_, ApiError>((obj, manifest.map(|(k, m, _)| (k, m))))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let created = st.store.put_if_absent(&obj).await?;
    match (&manifest, grant.scope_key()) {
        (Some((key, m)), _) => {
            let (catalog, key, m) = (st.catalog.clone(), key.clone(), m.clone());
            tokio::task::spawn_blocking(move || catalog.accepted(key, &m))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        }
        // The scope sent it: it may read it back (a resumed push).
        (None, Some(scope)) => st.catalog.sent(scope, obj.key()),
        (None, None) => {}
    }
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
    .into_response())
}

/// The rules on a new backup from a token that is not admin: the server,
/// not the client, decides where a backup may go in time, and a set is
/// closed once its volumes are in. An attacker holding the primary site's
/// append token can add new backups and nothing else (docs/SERVER.md).
fn check_new_backup(
    root: &FsPath,
    catalog: &catalog::Catalog,
    locks: &locks::LockRegistry,
    rules: &Rules,
    grant: &Grant,
    key: &ManifestKey,
    m: &Refs,
) -> ApiResult<()> {
    let now = chrono::Utc::now();
    let what = format!("{}/{} dated {}", key.vm, key.volume, exact_time(key.time));
    let admin_hint = "an admin token can add it (docs/SERVER.md, \"Catching up after an outage\")";
    let ahead = chrono::Duration::from_std(MAX_AHEAD).unwrap_or_default();
    if key.time > now + ahead {
        return Err(ApiError::late(format!(
            "{what} is more than {} min ahead of the server's clock ({}): check the client's clock",
            MAX_AHEAD.as_secs() / 60,
            exact_time(now)
        )));
    }
    catalog.refresh()?;
    if let Some(newest) = catalog.newest(&key.vm, &key.volume) {
        if key.time <= newest {
            return Err(ApiError::late(format!(
                "{what} is not newer than the newest backup of that volume the server holds ({}): a backup cannot be added into the past; {admin_hint}",
                exact_time(newest)
            )));
        }
    }
    let lag = chrono::Duration::from_std(rules.max_backup_lag).unwrap_or_default();
    let began = locks
        .session_start(&grant.name, now)
        .unwrap_or(now)
        .min(now);
    if key.time < began - lag {
        return Err(ApiError::late(format!(
            "{what} is older than this push allows: the server takes backups dated at most {} before the push that sends them began ({} by its clock) (serve --max-backup-lag); {admin_hint}",
            lifeboat_core::text::duration_words(rules.max_backup_lag),
            exact_time(began)
        )));
    }
    let members = catalog.set_members(&key.vm, &m.set);
    if members.is_empty() {
        return Ok(());
    }
    let closed = |why: String| {
        Err(ApiError::late(format!(
            "{what} names set {} of {}, which the server holds already: {why}; a backup set is closed once its volumes are in",
            m.set, key.vm
        )))
    };
    if let Some((k, _)) = members.iter().find(|(k, _)| k.volume == key.volume) {
        return closed(format!("it has volume {} ({})", k.volume, k.id.short()));
    }
    if members.iter().any(|(_, e)| e.definition != m.definition) {
        return closed("its VM definition differs from the set's".into());
    }
    if m.role == lifeboat_core::format::manifest::Role::Root
        && members
            .iter()
            .any(|(_, e)| e.role == lifeboat_core::format::manifest::Role::Root)
    {
        return closed("the set has its root volume".into());
    }
    let window = chrono::Duration::from_std(SET_WINDOW).unwrap_or_default();
    if let Some(first) = members.iter().map(|(_, e)| e.arrived).min() {
        if first < now - window {
            return closed(format!(
                "its first volume arrived at {}, more than {} min ago",
                exact_time(first),
                SET_WINDOW.as_secs() / 60
            ));
        }
    }
    if let Some(d) = &m.definition {
        match lifeboat_core::repo::Repo::open(root)?.read_definition(d) {
            Ok(def) if !def.spec.disks.iter().any(|disk| disk.volume == key.volume) => {
                return closed(format!(
                    "its definition has no disk for volume {}",
                    key.volume
                ));
            }
            Ok(_) => {}
            // Sealed in an encrypted repository: the server holds no key.
            // The set's other rules still hold.
            Err(Error::Locked(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn put_config(st: &AppState, body: Bytes) -> ApiResult<Response> {
    let cfg = RepoConfig::parse(FsPath::new(CONFIG_FILE), &body)?;
    let mut slot = st.config.write().await;
    if let Some(existing) = slot.as_ref() {
        if existing.chunk_size != cfg.chunk_size {
            return Err(ApiError::new(
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
    tokio::task::spawn_blocking(move || lifeboat_core::repo::Repo::init(&root, c))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    *slot = Some(cfg);
    Ok(StatusCode::CREATED.into_response())
}

/// A manifest that passed `verify_upload` (what it references, which is
/// all the server reads of it: an encrypted repository's manifests are
/// sealed), with every object it references.
type Uploaded = (ManifestKey, Refs, Vec<ObjectKey>);

/// Checks an uploaded object against its key (`Verified::check`), that it
/// fits this repository, and for a manifest that it is not dated in the
/// future and that everything it references is here. Returns the manifest
/// parsed, for the rules on new backups.
fn verify_upload(
    root: &FsPath,
    key: ObjectKey,
    data: Bytes,
    chunk_size: u64,
) -> Result<(Verified, Option<Uploaded>)> {
    let obj = Verified::check(key, data)?;
    let mut manifest = None;
    match obj.key() {
        ObjectKey::Config => {}
        ObjectKey::Chunk(id) => {
            let raw_len = chunk::raw_len(obj.data()).unwrap_or(0);
            if raw_len as u64 > chunk_size {
                return Err(Error::corrupt(
                    "chunk",
                    id,
                    "larger than the repository's chunk size",
                ));
            }
        }
        ObjectKey::Index(id) => {
            let idx = Index::refs_of(id, obj.data())?;
            if idx.chunk_size != chunk_size {
                return Err(Error::corrupt(
                    "index",
                    id,
                    "chunk size differs from the repository's",
                ));
            }
        }
        ObjectKey::Manifest(mk) => {
            let m = Manifest::refs_of(mk, obj.data())?;
            let mut refs = vec![ObjectKey::Index(m.index)];
            if !mk.is_plausible(chrono::Utc::now()) {
                return Err(Error::corrupt(
                    "manifest",
                    mk.id,
                    "dated in the future: check the client's clock",
                ));
            }
            if m.chunk_size != chunk_size {
                return Err(Error::corrupt(
                    "manifest",
                    mk.id,
                    "chunk size differs from the repository's",
                ));
            }
            let repo = lifeboat_core::repo::Repo::open(root)?;
            let idx = repo.index_refs(&m.index)?;
            if let Some(d) = m.definition.filter(|d| !repo.has_chunk(&d.chunk)) {
                return Err(Error::MissingObject {
                    kind:
                        "VM definition (referenced by the manifest; push chunks before manifests)",
                    id: d.chunk.to_hex(),
                });
            }
            if let Some(c) = idx.chunks.iter().find(|c| !repo.has_chunk(c)) {
                return Err(Error::MissingObject {
                    kind: "chunk (referenced by the manifest; push chunks before manifests)",
                    id: c.to_hex(),
                });
            }
            refs.extend(idx.chunks.iter().map(|c| ObjectKey::Chunk(*c)));
            refs.extend(m.definition.map(|d| ObjectKey::Chunk(d.chunk)));
            manifest = Some((mk.clone(), m, refs));
        }
    }
    Ok((obj, manifest))
}

async fn delete_object(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    need(Role::Admin, grant.role)?;
    let parsed = ObjectKey::parse(&key)?;
    if !one_in_scope(&st, &grant, &parsed).await? {
        return Err(out_of_scope(&parsed));
    }
    if parsed == ObjectKey::Config {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the repository config is never deleted".into(),
        ));
    }
    if let ObjectKey::Manifest(m) = &parsed {
        // The immutability window, by arrival on this server: whatever a
        // client (even an admin's, from a compromised host) claims, a new
        // backup stays for the window.
        let catalog = st.catalog.clone();
        let k = m.clone();
        let arrived = tokio::task::spawn_blocking(move || catalog.arrived(&k))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        let window = chrono::Duration::from_std(st.rules.immutable_for).unwrap_or_default();
        if let Some(at) = arrived.filter(|at| *at + window > chrono::Utc::now()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} arrived at {} and is immutable until {} (serve --immutable-days)",
                    m.object_key(),
                    exact_time(at),
                    exact_time(at + window)
                ),
            ));
        }
    }
    st.store.delete(&parsed).await?;
    if let ObjectKey::Manifest(m) = &parsed {
        st.catalog.removed(m);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    prefix: String,
    /// Start after this key (the previous page's `next`).
    after: Option<String>,
    /// Also each object's stored size (gc's report of what it frees).
    #[serde(default)]
    sizes: Option<String>,
}

/// One page of keys (at most `LIST_PAGE`), so no answer is unbounded.
async fn list(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ListResponse>> {
    check_prefix(&q.prefix)?;
    let all = st.store.list(&q.prefix).await?;
    let visible = in_scope(&st, &grant, all.clone()).await?;
    let mut keys: Vec<String> = all
        .iter()
        .zip(visible)
        .filter(|(_, v)| *v)
        .map(|(k, _)| k.key())
        .collect();
    keys.sort();
    let start = match &q.after {
        Some(a) => keys.partition_point(|k| k <= a),
        None => 0,
    };
    let end = (start + LIST_PAGE).min(keys.len());
    let page = keys[start..end].to_vec();
    let next = (end < keys.len()).then(|| page.last().cloned()).flatten();
    let sizes = match q.sizes.as_deref() {
        Some("1") => {
            let (root, keys) = (st.root.clone(), page.clone());
            Some(
                tokio::task::spawn_blocking(move || {
                    keys.iter()
                        .map(|k| {
                            std::fs::metadata(root.join(k))
                                .map(|m| m.len())
                                .unwrap_or(0)
                        })
                        .collect::<Vec<u64>>()
                })
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
            )
        }
        _ => None,
    };
    Ok(Json(ListResponse {
        keys: page,
        next,
        sizes,
    }))
}

async fn missing(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<MissingResponse>> {
    let body = read_body(
        &st,
        &headers,
        body,
        MAX_MISSING_BODY,
        "the missing-objects request",
    )
    .await?;
    let req: MissingRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the missing-objects request is not valid JSON: {e}"),
        )
    })?;
    drop(body);
    if req.keys.len() > MISSING_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MISSING_BATCH} keys per request"),
        ));
    }
    let keys: Vec<ObjectKey> = req
        .keys
        .iter()
        .map(|k| ObjectKey::parse(k))
        .collect::<Result<_>>()?;
    // What the scope may not read is missing for it: its client sends the
    // bytes (proving it has them) instead of learning they exist.
    let visible = in_scope(&st, &grant, keys.clone()).await?;
    let mut missing: Vec<String> = Vec::new();
    let mut held: Vec<ObjectKey> = Vec::new();
    for (k, v) in keys.into_iter().zip(visible) {
        if v {
            held.push(k);
        } else {
            missing.push(k.key());
        }
    }
    missing.extend(st.store.missing(&held).await?.iter().map(|k| k.key()));
    Ok(Json(MissingResponse { missing }))
}

/// A scoped token's metrics cover its own VMs only, without the
/// repository-wide totals.
async fn scrape(State(st): State<Shared>, Extension(grant): Extension<Grant>) -> Response {
    match grant.scope_key() {
        None => st.metrics.answer(None).await,
        Some(scope) => {
            let scope = scope.to_string();
            st.metrics
                .answer(Some(Arc::new(move |vm: &str| {
                    tokens::scope_covers(&scope, vm)
                })))
                .await
        }
    }
}

/// Unknown routes answer in the documented JSON form too.
async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route (see docs/SERVER.md)".into(),
    )
}

pub fn router(
    repo: &FsPath,
    tokens: Arc<Tokens>,
    max_uploads: usize,
    policies: Arc<lifeboat_core::config::Config>,
    rules: Rules,
) -> Result<Router> {
    if !repo.is_dir() {
        return Err(Error::NoRepository(repo.to_path_buf()));
    }
    let config = match lifeboat_core::repo::Repo::open(repo) {
        Ok(r) => Some(r.config),
        Err(Error::NotARepository(_)) => None,
        Err(e) => return Err(e),
    };
    let store = LocalStore::new(repo);
    // Uploads are committed in groups (see store::local); a client that
    // stops before its manifest still gets its objects committed soon.
    let ticker = store.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(COMMIT_EVERY);
        loop {
            every.tick().await;
            if ticker.has_staged() {
                if let Err(e) = ticker.commit().await {
                    tracing::error!("committing uploads: {e}");
                }
            }
        }
    });
    let catalog = Arc::new(catalog::Catalog::new(repo.to_path_buf()));
    let state = Arc::new(AppState {
        store,
        root: repo.to_path_buf(),
        config: RwLock::new(config),
        tokens,
        uploads: Semaphore::new(max_uploads.max(1)),
        metrics: metrics::MetricsSource {
            config: policies,
            root: repo.to_path_buf(),
        },
        catalog,
        locks: Arc::new(locks::LockRegistry::default()),
        budget: limits::BodyBudget::new(rules.max_body_memory, rules.body_wait),
        rules,
    });
    let api = Router::new()
        .route(
            "/v1/objects/{*key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/list", get(list))
        .route("/v1/missing", post(missing))
        .route("/v1/immutable", get(immutable))
        .route("/v1/docs", get(docs::list_docs))
        .route("/metrics", get(scrape))
        .route(
            "/v1/docs/{*key}",
            axum::routing::put(docs::put_doc).delete(docs::delete_doc),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Ok(Router::new()
        .route("/v1/health", get(health))
        .merge(api)
        .fallback(not_found)
        // Handlers read bodies themselves, with a limit per object kind,
        // after checking the token's role (`read_body`).
        .layer(DefaultBodyLimit::disable())
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
    let tokens = Arc::new(Tokens::new(Some(opts.tokens.clone()), tokens));
    let app = router(
        &opts.repo,
        tokens.clone(),
        opts.max_uploads,
        opts.config.clone(),
        opts.rules.clone(),
    )?;
    // Token changes take effect without a restart: on SIGHUP at once,
    // otherwise when the file's change is noticed.
    let watched = tokens.clone();
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut check = tokio::time::interval(TOKENS_CHECK);
        let mut save = tokio::time::interval(LAST_USED_EVERY);
        loop {
            tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => watched.reload(true),
                _ = check.tick() => watched.reload(false),
                _ = save.tick() => watched.save_used(),
            }
        }
    });
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    if let Some(n) = limits::raise_fd_limit() {
        tracing::debug!("open-files limit: {n}");
    }
    let svc = app.into_make_service();
    let bind_err =
        |e: std::io::Error| Error::BadInput(format!("cannot listen on {}: {e}", opts.listen));
    // Bound here, before anything is served: a port in use is said at once
    // ("address in use") instead of as a server that never comes up.
    let listener = bind(opts.listen).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            ": another program listens there (another lifeboat serve?); stop it or give another --listen port"
        } else {
            ""
        };
        Error::BadInput(format!("cannot listen on {}: {e}{hint}", opts.listen))
    })?;
    let limit = |a| limits::ConnectionLimit::new(a, opts.max_connections, opts.idle_timeout);
    let tune = |b: &mut hyper_util::server::conn::auto::Builder<_>| {
        b.http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(opts.header_timeout);
        b.http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(opts.header_timeout)
            .keep_alive_timeout(opts.header_timeout)
            .max_concurrent_streams(64);
    };
    let task = match &opts.tls {
        Some((cert, key)) => {
            lifeboat_core::store::tls::install_crypto();
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    Error::BadInput(format!(
                        "TLS certificate {} / key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(cfg)
                .handshake_timeout(opts.header_timeout)
                .acceptor(limit(axum_server::accept::DefaultAcceptor::new()));
            let mut server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle.clone());
            tune(server.http_builder());
            tokio::spawn(server.serve(svc))
        }
        None => {
            let mut server = axum_server::from_tcp(listener)
                .acceptor(limit(axum_server::accept::DefaultAcceptor::new()))
                .handle(handle.clone());
            tune(server.http_builder());
            tokio::spawn(server.serve(svc))
        }
    };
    report_bound(&handle, on_bound, opts.tls.is_some()).await?;
    let res = task
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(bind_err);
    tokens.save_used();
    res
}

/// A listening socket (address reuse on, as servers have it: a restart
/// does not wait for the old connections' TIME_WAIT).
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
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
        None => Err(Error::Internal(
            "the server failed to start listening".into(),
        )),
    }
}
