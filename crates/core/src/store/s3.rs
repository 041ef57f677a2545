//! S3-compatible object storage (AWS S3, Aliyun OSS, MinIO, Ceph RGW,
//! Garage) through the `object_store` crate. No server-side verification
//! exists here, so every reader verifies what it fetches (as always).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as OsPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::{too_many_keys, Store};
use crate::error::{Error, Result};
use crate::format::docs::{check_size, Doc, DocKey, DocKind};
use crate::format::keys::{check_prefix, ObjectKey, Verified};

#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub timeout: Option<Duration>,
}

impl S3Options {
    /// Parses `s3://bucket/prefix`.
    pub fn from_url(url: &str) -> Result<S3Options> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::BadInput(format!("not an s3:// URL: {url:?}")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(Error::BadInput(format!(
                "invalid bucket name {bucket:?}: S3 bucket names are 3 to 63 of a-z 0-9 . -"
            )));
        }
        Ok(S3Options {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            ..Default::default()
        })
    }
}

pub struct S3Store {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    name: String,
}

/// An `object_store` S3 client for a bucket (the prefix is not applied).
pub fn client(opts: &S3Options) -> Result<Arc<dyn ObjectStore>> {
    // Credentials must be given: without them the client would ask a
    // cloud instance-metadata service, which is never what an admin
    // meant on a recovery box (and hangs where there is none).
    let key_id = opts
        .access_key_id
        .clone()
        .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
    let secret = opts
        .secret_access_key
        .clone()
        .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
    let (Some(key_id), Some(secret)) = (key_id, secret) else {
        return Err(Error::BadInput(format!(
                "S3 remote s3://{}/{}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                 or name other variables with access_key_id_env / secret_access_key_env in the remote's config",
                opts.bucket, opts.prefix
            )));
    };
    super::tls::install_crypto();
    // from_env picks up the other standard AWS_* settings; explicit options win.
    let mut b = AmazonS3Builder::from_env()
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_metadata_endpoint("http://127.0.0.1:9")
        .with_bucket_name(&opts.bucket)
        .with_virtual_hosted_style_request(!opts.path_style)
        // The one retry layer for S3: object_store retries what can
        // pass (5xx, 429, dropped connections) with backoff and never a
        // 4xx, so `err` marks what still fails as final and sync's own
        // retry does not multiply the attempts.
        .with_retry(RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_timeout(opts.timeout.unwrap_or(Duration::from_secs(120)))
                .with_connect_timeout(Duration::from_secs(10))
                .with_allow_http(true),
        );
    if let Some(e) = &opts.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &opts.region {
        b = b.with_region(r);
    }
    let inner = b.build().map_err(|e| {
        Error::BadInput(format!(
            "S3 remote s3://{}: {}",
            opts.bucket,
            scrub(&e.to_string())
        ))
    })?;
    Ok(Arc::new(inner))
}

impl S3Store {
    pub fn new(opts: &S3Options) -> Result<S3Store> {
        let inner = client(opts)?;
        let name = format!(
            "s3://{}/{}{}",
            opts.bucket,
            opts.prefix,
            opts.endpoint
                .as_ref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        );
        Ok(S3Store {
            inner,
            prefix: opts.prefix.clone(),
            name,
        })
    }

    fn path(&self, key: &str) -> OsPath {
        // Keys are parsed `ObjectKey`s or checked prefixes; never raw input.
        if self.prefix.is_empty() {
            OsPath::from(key)
        } else {
            OsPath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Maps a client error by its variant. `missing_means_bucket`: on a
    /// write or a listing, "not found" can only mean the bucket.
    fn err(&self, e: object_store::Error, missing_means_bucket: bool) -> Error {
        use object_store::Error as E;
        let text = scrub(&e.to_string());
        // object_store maps a 401/403 to its own variants on object calls,
        // but a failed listing arrives as `Generic`, whose HTTP status it
        // does not expose. There the S3 error code of the response body
        // (a protocol field, not message text) says what happened.
        let code = s3_code(&text);
        let denied_code = matches!(
            code.as_deref(),
            Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
        );
        let no_bucket = code.as_deref() == Some("NoSuchBucket");
        match e {
            E::Generic { .. } if denied_code => Error::Denied {
                remote: self.name.clone(),
                reason: format!(
                    "credentials refused ({}): check the access key and secret the config names",
                    summary(&text)
                ),
            },
            E::Generic { .. } | E::NotFound { .. } if no_bucket => Error::Remote {
                remote: self.name.clone(),
                reason: "the bucket does not exist: create it with the provider's tools first"
                    .into(),
                transient: false,
            },
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::Denied {
                remote: self.name.clone(),
                reason: format!(
                    "credentials refused ({}): check the access key and secret the config names",
                    summary(&text)
                ),
            },
            E::NotFound { .. } if missing_means_bucket => Error::Remote {
                remote: self.name.clone(),
                reason: "the bucket does not exist: create it with the provider's tools first"
                    .into(),
                transient: false,
            },
            _ => Error::Remote {
                remote: self.name.clone(),
                reason: summary(&text),
                // Already retried by the client (see `new`).
                transient: false,
            },
        }
    }

    /// Every object key under `dir` with its size; entries that are not
    /// object keys are skipped, and more than `max_keys` is refused.
    async fn list_sized(&self, dir: &str) -> Result<Vec<(ObjectKey, u64)>> {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut stream = self.inner.list(Some(&self.path(dir)));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.err(e, true))?;
            if let Some(k) = meta
                .location
                .as_ref()
                .strip_prefix(&strip)
                .and_then(|k| ObjectKey::parse(k).ok())
            {
                out.push((k, meta.size));
            }
            if out.len() > super::max_keys(dir) {
                return Err(too_many_keys(&self.name, dir));
            }
        }
        Ok(out)
    }

    fn limit_check(&self, key: &ObjectKey, size: u64) -> Result<()> {
        if size > key.max_size() {
            return Err(key.too_large(
                size,
                "the bucket holds something lifeboat did not write there; nothing of it was read",
            ));
        }
        Ok(())
    }
}

/// The `<Code>` of an S3 XML error body, if the text carries one.
fn s3_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + 6;
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].to_string())
}

/// A short form of a client error: the S3 code and message when present.
fn summary(text: &str) -> String {
    match (s3_code(text), text.find("<Message>")) {
        (Some(code), Some(m)) => {
            let rest = &text[m + 9..];
            let msg = &rest[..rest.find("</Message>").unwrap_or(rest.len())];
            format!("{code}: {msg}")
        }
        _ => text.to_string(),
    }
}

/// Error texts from the S3 client can quote request details; keep only the
/// first lines and never anything that looks like a signature or key.
pub(crate) fn scrub(s: &str) -> String {
    let kept: String = s
        .split_whitespace()
        .map(|w| {
            if w.contains("Signature=") || w.contains("Credential=") || w.contains("X-Amz-") {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(600)
        .collect();
    // A server's words are hostile text until escaped.
    crate::text::escape(&kept).into_owned()
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>> {
        match self.inner.get(&self.path(&key.key())).await {
            Ok(r) => {
                // The size is known before the body is read: an object over
                // its kind's limit is refused without buffering it.
                self.limit_check(key, r.meta.size)?;
                let data = r.bytes().await.map_err(|e| self.err(e, false))?;
                self.limit_check(key, data.len() as u64)?;
                Ok(Some(data))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e, false)),
        }
    }

    async fn put_if_absent(&self, obj: &Verified) -> Result<bool> {
        let path = self.path(&obj.key().key());
        // A HEAD first: conditional PUTs are not supported everywhere, and
        // objects are content-addressed, so a racing identical write is harmless.
        match self.inner.head(&path).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err(e, false)),
        }
        self.inner
            .put(&path, obj.data().clone().into())
            .await
            .map_err(|e| self.err(e, true))?;
        Ok(true)
    }

    /// One PUT, no HEAD: the plan already asked which objects are missing.
    async fn put_new(&self, obj: &Verified) -> Result<()> {
        self.inner
            .put(&self.path(&obj.key().key()), obj.data().clone().into())
            .await
            .map_err(|e| self.err(e, true))?;
        Ok(())
    }

    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>> {
        let checks = futures::stream::iter(keys.iter().cloned())
            .map(|k| async move {
                match self.inner.head(&self.path(&k.key())).await {
                    Ok(_) => Ok(None),
                    Err(object_store::Error::NotFound { .. }) => Ok(Some(k)),
                    Err(e) => Err(self.err(e, false)),
                }
            })
            .buffered(32);
        let found: Vec<Option<ObjectKey>> = checks.try_collect().await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        check_prefix(prefix)?;
        let mut out: Vec<ObjectKey> = self
            .list_sized(prefix.trim_end_matches('/'))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self.inner.delete(&self.path(&key.key())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e, false)),
        }
    }

    async fn sizes(&self) -> Result<Option<std::collections::HashMap<ObjectKey, u64>>> {
        let mut out = std::collections::HashMap::new();
        for dir in ["chunks", "indexes"] {
            out.extend(self.list_sized(dir).await?);
        }
        Ok(Some(out))
    }

    async fn put_doc(&self, key: &DocKey, body: Bytes) -> Result<()> {
        check_size(key, body.len() as u64)?;
        self.inner
            .put(&self.path(&key.key()), body.into())
            .await
            .map_err(|e| self.err(e, true))?;
        Ok(())
    }

    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Doc>> {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&self.path(kind.dir())))
            .try_collect()
            .await
            .map_err(|e| self.err(e, true))?;
        let found: Vec<(DocKey, object_store::ObjectMeta)> = metas
            .into_iter()
            .filter_map(|m| {
                let key = DocKey::parse(m.location.as_ref().strip_prefix(&strip)?).ok()?;
                Some((key, m))
            })
            .collect();
        let docs = futures::stream::iter(found)
            .map(|(key, meta)| async move {
                // An oversized document is junk: listed with no body, never
                // read whole, never an error that hides the others.
                if check_size(&key, meta.size).is_err() {
                    return Ok(Some(Doc {
                        key,
                        body: Bytes::new(),
                        modified: meta.last_modified,
                    }));
                }
                match self.inner.get(&meta.location).await {
                    Ok(r) => {
                        let body = r.bytes().await.map_err(|e| self.err(e, false))?;
                        let body = if check_size(&key, body.len() as u64).is_ok() {
                            body
                        } else {
                            Bytes::new()
                        };
                        Ok(Some(Doc {
                            key,
                            body,
                            modified: meta.last_modified,
                        }))
                    }
                    // Removed since the listing (a lock released).
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.err(e, false)),
                }
            })
            .buffered(16);
        let docs: Vec<Option<Doc>> = docs.try_collect().await?;
        Ok(docs.into_iter().flatten().collect())
    }

    async fn delete_doc(&self, key: &DocKey) -> Result<()> {
        match self.inner.delete(&self.path(&key.key())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e, false)),
        }
    }
}
