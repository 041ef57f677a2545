//! A `lifeboat serve` server as a store (REST under /v1, bearer token).
//! See docs/SERVER.md for the routes.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{too_many_keys, Store};
use crate::error::{Error, Result};
use crate::format::docs::{check_size, Doc, DocKey, DocKind};
use crate::format::keys::{check_prefix, ObjectKey, Verified};

/// Keys per `/v1/missing` request, and the most keys a server answers per
/// `/v1/list` page. Both bound what either side buffers for one request.
pub const MISSING_BATCH: usize = 4096;
pub const LIST_PAGE: usize = 10_000;
/// The most bytes of a JSON answer (a list page, a missing answer, an
/// error): a page of 10,000 keys is about 1 MB.
pub const MAX_JSON_BYTES: u64 = 4 << 20;
/// The most bytes of a `/v1/missing` request body.
pub const MAX_MISSING_BODY: u64 = 1 << 20;
/// The `code` of a server's refusal of a backup for its place in time or
/// its set (`Error::LateBackup`).
pub const CODE_LATE: &str = "late";

pub struct HttpStore {
    base: reqwest::Url,
    token: Option<String>,
    client: reqwest::Client,
    name: String,
}

#[derive(Serialize, Deserialize)]
pub struct MissingRequest {
    pub keys: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub struct MissingResponse {
    pub missing: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub struct ListResponse {
    pub keys: Vec<String>,
    /// Where the next page starts (pass as `after`), or None at the end.
    #[serde(default)]
    pub next: Option<String>,
    /// Each key's stored size, when asked for (`sizes=1`; gc's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Vec<u64>>,
}

/// `GET /v1/immutable`: the backups a server keeps whatever prune says,
/// and until when (object key → time).
#[derive(Serialize, Deserialize, Default)]
pub struct ImmutableResponse {
    pub until: std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
}

/// Documents per `/v1/docs` page: 100 of at most 16 KiB each, escaped,
/// stay under `MAX_JSON_BYTES`.
pub const DOCS_PAGE: usize = 100;

#[derive(Serialize, Deserialize)]
pub struct DocEntry {
    pub key: String,
    /// The document (locks and protection marks are UTF-8 JSON).
    pub body: String,
    pub modified: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, Deserialize)]
pub struct DocsResponse {
    pub docs: Vec<DocEntry>,
    #[serde(default)]
    pub next: Option<String>,
}

pub struct HttpOptions {
    pub token: Option<String>,
    /// PEM file of an extra CA to trust (a private CA).
    pub ca_cert: Option<std::path::PathBuf>,
    /// Trust exactly the certificate with this fingerprint (checked
    /// instead of a CA chain; a self-signed certificate works).
    pub fingerprint: Option<super::tls::Fingerprint>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Send the token over plain http:// to a host other than loopback.
    pub insecure_http: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            ca_cert: None,
            fingerprint: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            insecure_http: false,
        }
    }
}

/// Whether a URL's host is this machine (where plain HTTP crosses no
/// network).
fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
    })
}

impl HttpStore {
    pub fn new(url: &str, opts: HttpOptions) -> Result<HttpStore> {
        let mut base = reqwest::Url::parse(url)
            .map_err(|e| Error::BadInput(format!("invalid URL {url:?}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        if base.scheme() == "http"
            && opts.token.is_some()
            && !is_loopback(&base)
            && !opts.insecure_http
        {
            return Err(Error::BadInput(format!(
                "refusing to send a token in clear to {}: use https:// (lifeboat serve makes its own certificate; pin it with --fingerprint), or, on a trusted network only, pass --insecure-http or set insecure_http = true on the remote",
                base.host_str().unwrap_or("?")
            )));
        }
        super::tls::install_crypto();
        let mut b = reqwest::Client::builder()
            // A repository server never redirects; following one could
            // carry the token or the data to another host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(opts.timeout)
            .connect_timeout(opts.connect_timeout)
            .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")));
        if let Some(fp) = opts.fingerprint {
            if base.scheme() != "https" {
                return Err(Error::BadInput(format!(
                    "a fingerprint is given for {url}, which is not https://: the fingerprint pins a TLS certificate"
                )));
            }
            b = b.tls_backend_preconfigured(super::tls::pinned_client_config(fp)?);
        } else if let Some(ca) = &opts.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| Error::io("reading CA certificate", ca, e))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Error::BadInput(format!("CA certificate {}: {e}", ca.display())))?;
            b = b.add_root_certificate(cert);
        }
        let client = b
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        let mut shown = base.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        Ok(HttpStore {
            name: shown.to_string(),
            base,
            token: opts.token,
            client,
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url> {
        self.base
            .join(path)
            .map_err(|e| Error::BadInput(format!("bad URL path {path:?}: {e}")))
    }

    fn req(&self, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let mut r = self.client.request(method, self.url(path)?);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        Ok(r)
    }

    fn transport(&self, e: reqwest::Error) -> Error {
        // A refused certificate is not a passing fault: say why and what to
        // do, and do not retry.
        let chain = crate::text::describe(&e);
        if let Some(why) = super::tls::explain(&chain) {
            return Error::Remote {
                remote: self.name.clone(),
                reason: why,
                transient: false,
            };
        }
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            format!("cannot connect ({})", root_cause(&e))
        } else {
            root_cause(&e)
        };
        Error::Remote {
            remote: self.name.clone(),
            reason: what,
            transient: true,
        }
    }

    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = self
            .read_capped(resp, 64 << 10, "an error answer")
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let json = serde_json::from_str::<serde_json::Value>(&body).ok();
        let code = json
            .as_ref()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(String::from));
        let msg: String = json
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body)
            .chars()
            .take(1000)
            .collect();
        // A server's words are hostile text until escaped.
        let msg = crate::text::escape(&msg).into_owned();
        if code.as_deref() == Some(CODE_LATE) {
            return Err(Error::LateBackup {
                remote: self.name.clone(),
                reason: msg,
            });
        }
        Err(match status {
            StatusCode::UNAUTHORIZED => Error::Denied {
                remote: self.name.clone(),
                reason: format!("authentication failed ({msg}): check the token the config names"),
            },
            StatusCode::FORBIDDEN => Error::Denied {
                remote: self.name.clone(),
                reason: format!("not allowed ({msg})"),
            },
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Error::Remote {
                remote: self.name.clone(),
                reason: format!("{s}: {msg}"),
                transient: true,
            },
            s => Error::Remote {
                remote: self.name.clone(),
                reason: format!("{s}: {msg}"),
                transient: false,
            },
        })
    }

    /// GET /v1/health: the server's answer, for `remote ls`.
    pub async fn health(&self) -> Result<serde_json::Value> {
        let resp = self
            .req(reqwest::Method::GET, "v1/health")?
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let resp = self.check(resp).await?;
        self.json(resp, "the health answer").await
    }

    /// Reads a body of at most `limit` bytes. The length a server claims is
    /// checked first, and the read stops as soon as the body passes the
    /// limit: a hostile server cannot make the client buffer more.
    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        limit: u64,
        what: &str,
    ) -> Result<Bytes> {
        let too_large = |size: u64| Error::TooLarge {
            what: format!("{what} from {}", self.name),
            size,
            limit,
            hint: "the server is broken or hostile; nothing of it was kept",
        };
        if let Some(n) = resp.content_length() {
            if n > limit {
                return Err(too_large(n));
            }
        }
        let mut buf = bytes::BytesMut::new();
        while let Some(part) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if (buf.len() + part.len()) as u64 > limit {
                return Err(too_large((buf.len() + part.len()) as u64));
            }
            buf.extend_from_slice(&part);
        }
        Ok(buf.freeze())
    }

    /// One page of a paged listing (`/v1/list`, `/v1/docs`), as JSON.
    async fn page<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        after: Option<&str>,
        what: &str,
    ) -> Result<T> {
        let mut url = self.url(path)?;
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        if let Some(a) = after {
            url.query_pairs_mut().append_pair("after", a);
        }
        let mut req = self.client.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let resp = self.check(resp).await?;
        self.json(resp, what).await
    }

    /// Where the next page starts. Pages must move forward and hold
    /// something (a server sending empty pages that "advance" forever is
    /// as hostile as one that repeats itself) and no more than a page
    /// holds, or a server could loop us forever or fill our memory.
    fn advance(
        &self,
        after: &Option<String>,
        next: Option<String>,
        page_len: usize,
        page_max: usize,
    ) -> Result<Option<String>> {
        if page_len > page_max {
            return Err(Error::Remote {
                remote: self.name.clone(),
                reason: format!(
                    "it sent a listing page of {page_len} entries (at most {page_max} are allowed): the server is broken or hostile"
                ),
                transient: false,
            });
        }
        if page_len == 0 && next.is_some() {
            return Err(Error::Remote {
                remote: self.name.clone(),
                reason: "it sent an empty listing page that is not the last: the server is broken or hostile".into(),
                transient: false,
            });
        }
        match next {
            Some(n) if after.as_ref().is_none_or(|a| n > *a) => Ok(Some(n)),
            Some(_) => Err(Error::Remote {
                remote: self.name.clone(),
                reason: "its listing does not advance from page to page".into(),
                transient: false,
            }),
            None => Ok(None),
        }
    }

    /// A bounded JSON answer.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<T> {
        let body = self.read_capped(resp, MAX_JSON_BYTES, what).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Remote {
            remote: self.name.clone(),
            reason: format!("{what} is not valid JSON: {e}"),
            transient: false,
        })
    }
}

pub(crate) fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

#[async_trait]
impl Store for HttpStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn probe(&self) -> Result<()> {
        self.health().await.map(|_| ())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>> {
        let resp = self
            .req(reqwest::Method::GET, &format!("v1/objects/{key}"))?
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check(resp).await?;
        let what = format!("{} {key}", key.kind());
        self.read_capped(resp, key.max_size(), &what)
            .await
            .map(Some)
    }

    async fn put_if_absent(&self, obj: &Verified) -> Result<bool> {
        let resp = self
            .req(reqwest::Method::PUT, &format!("v1/objects/{}", obj.key()))?
            .body(obj.data().clone())
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let resp = self.check(resp).await?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>> {
        let mut out = Vec::new();
        for batch in keys.chunks(MISSING_BATCH) {
            let asked: std::collections::HashMap<String, &ObjectKey> =
                batch.iter().map(|k| (k.key(), k)).collect();
            let resp = self
                .req(reqwest::Method::POST, "v1/missing")?
                .json(&MissingRequest {
                    keys: batch.iter().map(|k| k.key()).collect(),
                })
                .send()
                .await
                .map_err(|e| self.transport(e))?;
            let resp = self.check(resp).await?;
            let resp: MissingResponse = self.json(resp, "the missing-objects answer").await?;
            // Only keys that were asked about count; anything else is ignored.
            out.extend(
                resp.missing
                    .iter()
                    .filter_map(|k| asked.get(k).map(|k| (*k).clone())),
            );
        }
        Ok(out)
    }

    async fn sizes(&self) -> Result<Option<std::collections::HashMap<ObjectKey, u64>>> {
        let mut out = std::collections::HashMap::new();
        for prefix in ["chunks/", "indexes/"] {
            let mut after: Option<String> = None;
            loop {
                let page: ListResponse = self
                    .page(
                        "v1/list",
                        &[("prefix", prefix), ("sizes", "1")],
                        after.as_deref(),
                        "a listing page",
                    )
                    .await?;
                // A server older than sizes sends none: no byte count then.
                let Some(sizes) = page.sizes.filter(|s| s.len() == page.keys.len()) else {
                    return Ok(None);
                };
                let n = page.keys.len();
                for (k, size) in page.keys.iter().zip(sizes) {
                    if let Ok(k) = ObjectKey::parse(k) {
                        out.insert(k, size);
                    }
                }
                if out.len() > super::max_keys(prefix) {
                    return Err(too_many_keys(&self.name, prefix));
                }
                after = match self.advance(&after, page.next, n, LIST_PAGE)? {
                    Some(n) => Some(n),
                    None => break,
                };
            }
        }
        Ok(Some(out))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        check_prefix(prefix)?;
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: ListResponse = self
                .page(
                    "v1/list",
                    &[("prefix", prefix)],
                    after.as_deref(),
                    "a listing page",
                )
                .await?;
            // Never trust a listing: every key is parsed before use.
            let n = page.keys.len();
            out.extend(page.keys.iter().filter_map(|k| ObjectKey::parse(k).ok()));
            if out.len() > super::max_keys(prefix) {
                return Err(too_many_keys(&self.name, prefix));
            }
            after = match self.advance(&after, page.next, n, LIST_PAGE)? {
                Some(n) => Some(n),
                None => break,
            };
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let resp = self
            .req(reqwest::Method::DELETE, &format!("v1/objects/{key}"))?
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.check(resp).await.map(|_| ())
    }

    async fn put_doc(&self, key: &DocKey, body: Bytes) -> Result<()> {
        check_size(key, body.len() as u64)?;
        let resp = self
            .req(reqwest::Method::PUT, &format!("v1/docs/{key}"))?
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.check(resp).await.map(|_| ())
    }

    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Doc>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: DocsResponse = self
                .page(
                    "v1/docs",
                    &[("kind", kind.dir())],
                    after.as_deref(),
                    "a document listing",
                )
                .await?;
            let n = page.docs.len();
            for d in page.docs {
                // Parsed and bounded like anything else from a peer.
                let Ok(key) = DocKey::parse(&d.key) else {
                    continue;
                };
                if key.kind() != kind {
                    continue;
                }
                let body = match check_size(&key, d.body.len() as u64) {
                    Ok(()) => Bytes::from(d.body),
                    // Junk: kept as an empty document, reported by its reader.
                    Err(_) => Bytes::new(),
                };
                out.push(Doc {
                    key,
                    body,
                    modified: d.modified,
                });
            }
            if out.len() > super::MAX_DOCS {
                return Err(too_many_keys(&self.name, kind.dir()));
            }
            after = match self.advance(&after, page.next, n, DOCS_PAGE)? {
                Some(n) => Some(n),
                None => break,
            };
        }
        Ok(out)
    }

    async fn immutable(&self) -> Result<super::Immutable> {
        let resp = self
            .req(reqwest::Method::GET, "v1/immutable")?
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        // A server older than the window has none.
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(super::Immutable::new());
        }
        let resp = self.check(resp).await?;
        let r: ImmutableResponse = self.json(resp, "the immutable backups").await?;
        // Keys from a peer are parsed before use, like any listing.
        Ok(r.until
            .into_iter()
            .filter_map(|(k, t)| match ObjectKey::parse(&k) {
                Ok(ObjectKey::Manifest(m)) => Some((m, t)),
                _ => None,
            })
            .collect())
    }

    async fn delete_doc(&self, key: &DocKey) -> Result<()> {
        let resp = self
            .req(reqwest::Method::DELETE, &format!("v1/docs/{key}"))?
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.check(resp).await.map(|_| ())
    }
}
