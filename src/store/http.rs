//! A `lifeboat serve` server as a store (REST under /v1, bearer token).
//! See docs/SERVER.md for the routes.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::keys::{check_prefix, ObjectKey};
use super::Store;
use crate::error::{Error, Result};

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
}

pub struct HttpOptions {
    pub token: Option<String>,
    /// PEM file of an extra CA to trust (a self-signed server certificate).
    pub ca_cert: Option<std::path::PathBuf>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            ca_cert: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpStore {
    pub fn new(url: &str, opts: HttpOptions) -> Result<HttpStore> {
        let mut base = reqwest::Url::parse(url)
            .map_err(|e| Error::Invalid(format!("invalid URL {url:?}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let mut b = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.connect_timeout)
            .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &opts.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| Error::io("reading CA certificate", ca, e))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Error::Invalid(format!("CA certificate {}: {e}", ca.display())))?;
            b = b.add_root_certificate(cert);
        }
        let client = b
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the HTTP client: {e}")))?;
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
            .map_err(|e| Error::Invalid(format!("bad URL path {path:?}: {e}")))
    }

    fn req(&self, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let mut r = self.client.request(method, self.url(path)?);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        Ok(r)
    }

    fn transport(&self, e: reqwest::Error) -> Error {
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
        let body = resp.text().await.unwrap_or_default();
        let msg: String = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body)
            .chars()
            .take(500)
            .collect();
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
        resp.json().await.map_err(|e| self.transport(e))
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
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

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = ObjectKey::parse(key)?.key();
        let resp = self
            .req(reqwest::Method::GET, &format!("v1/objects/{key}"))?
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check(resp).await?;
        resp.bytes().await.map(Some).map_err(|e| self.transport(e))
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        let key = ObjectKey::parse(key)?.key();
        let resp = self
            .req(reqwest::Method::PUT, &format!("v1/objects/{key}"))?
            .body(data)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let resp = self.check(resp).await?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    async fn missing(&self, keys: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for batch in keys.chunks(4096) {
            let resp = self
                .req(reqwest::Method::POST, "v1/missing")?
                .json(&MissingRequest {
                    keys: batch.to_vec(),
                })
                .send()
                .await
                .map_err(|e| self.transport(e))?;
            let resp: MissingResponse = self
                .check(resp)
                .await?
                .json()
                .await
                .map_err(|e| self.transport(e))?;
            out.extend(resp.missing);
        }
        Ok(out)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        check_prefix(prefix)?;
        let mut url = self.url("v1/list")?;
        url.query_pairs_mut().append_pair("prefix", prefix);
        let mut req = self.client.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let resp: ListResponse = self
            .check(resp)
            .await?
            .json()
            .await
            .map_err(|e| self.transport(e))?;
        // Never trust a listing: every key is parsed before use.
        Ok(resp
            .keys
            .into_iter()
            .filter(|k| ObjectKey::parse(k).is_ok())
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = ObjectKey::parse(key)?.key();
        let resp = self
            .req(reqwest::Method::DELETE, &format!("v1/objects/{key}"))?
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.check(resp).await.map(|_| ())
    }
}
