//! Bandwidth limits: a store that sends and receives at most a given rate
//! (a WAN link shared with the business's own traffic). Token buckets
//! from `governor`, counted in KiB; an object larger than the burst takes
//! its tokens in pieces, so a small burst still passes a 4 MiB chunk.
//! Uploads take their tokens before they are sent, downloads after they
//! arrived; progress is counted when an object is done, so rates and ETAs
//! shown under a limit are the limited ones.

use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::{Doc, DocKey, DocKind, DynStore, ObjectKey, Store, Verified};
use crate::error::{Error, Result};

/// Rates in bytes per second; the burst is how much may go at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub upload: Option<u64>,
    pub download: Option<u64>,
    pub burst: Option<u64>,
}

impl Limits {
    pub fn is_none(&self) -> bool {
        self.upload.is_none() && self.download.is_none()
    }

    /// `↑8.0 MiB/s ↓2.0 MiB/s`, for job titles and logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = self.upload {
            parts.push(format!("↑{}/s", crate::text::bytes(u)));
        }
        if let Some(d) = self.download {
            parts.push(format!("↓{}/s", crate::text::bytes(d)));
        }
        parts.join(" ")
    }

    /// The later setting wins where it is given (the command line over the
    /// config).
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            upload: self.upload.or(fallback.upload),
            download: self.download.or(fallback.download),
            burst: self.burst.or(fallback.burst),
        }
    }
}

/// One direction's bucket.
pub struct RateLimit {
    limiter: DefaultDirectRateLimiter,
    burst_kib: u32,
}

impl RateLimit {
    /// `rate` bytes per second, `burst` bytes at once (default a quarter
    /// second of traffic, at least 64 KiB).
    pub fn new(rate: u64, burst: Option<u64>) -> Result<RateLimit> {
        let kib = |b: u64| u32::try_from(b.div_ceil(1024)).unwrap_or(u32::MAX);
        let rate_kib = NonZeroU32::new(kib(rate)).ok_or_else(|| {
            Error::BadInput("a bandwidth limit must be at least 1K per second".into())
        })?;
        let burst_kib = kib(burst.unwrap_or(rate / 4)).max(64);
        let quota = Quota::per_second(rate_kib)
            .allow_burst(NonZeroU32::new(burst_kib).unwrap_or(NonZeroU32::MIN));
        Ok(RateLimit {
            limiter: RateLimiter::direct(quota),
            burst_kib,
        })
    }

    /// Waits until `bytes` may pass.
    pub async fn take(&self, bytes: u64) {
        let mut left = bytes.div_ceil(1024);
        while left > 0 {
            let n = left.min(u64::from(self.burst_kib)) as u32;
            if let Some(n) = NonZeroU32::new(n) {
                // n never exceeds the burst, so this cannot fail.
                let _ = self.limiter.until_n_ready(n).await;
            }
            left -= u64::from(n);
        }
    }
}

pub struct Throttled {
    inner: DynStore,
    up: Option<RateLimit>,
    down: Option<RateLimit>,
}

/// `store` under `limits` (returned as is when there are none).
pub fn throttle(store: DynStore, limits: Limits) -> Result<DynStore> {
    if limits.is_none() {
        return Ok(store);
    }
    Ok(Arc::new(Throttled {
        inner: store,
        up: limits
            .upload
            .map(|r| RateLimit::new(r, limits.burst))
            .transpose()?,
        down: limits
            .download
            .map(|r| RateLimit::new(r, limits.burst))
            .transpose()?,
    }))
}

impl Throttled {
    /// Waits until `obj` may be sent.
    async fn before_upload(&self, obj: &Verified) {
        if let Some(u) = &self.up {
            u.take(obj.data().len() as u64).await;
        }
    }
}

#[async_trait]
impl Store for Throttled {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>> {
        let got = self.inner.get(key).await?;
        if let (Some(d), Some(b)) = (&self.down, &got) {
            d.take(b.len() as u64).await;
        }
        Ok(got)
    }

    async fn put_if_absent(&self, obj: &Verified) -> Result<bool> {
        self.before_upload(obj).await;
        self.inner.put_if_absent(obj).await
    }

    async fn put_new(&self, obj: &Verified) -> Result<()> {
        self.before_upload(obj).await;
        self.inner.put_new(obj).await
    }

    async fn commit(&self) -> Result<()> {
        self.inner.commit().await
    }

    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>> {
        self.inner.missing(keys).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn probe(&self) -> Result<()> {
        self.inner.probe().await
    }

    async fn sizes(&self) -> Result<Option<std::collections::HashMap<ObjectKey, u64>>> {
        self.inner.sizes().await
    }

    async fn put_doc(&self, key: &DocKey, body: Bytes) -> Result<()> {
        self.inner.put_doc(key, body).await
    }

    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Doc>> {
        self.inner.list_docs(kind).await
    }

    async fn delete_doc(&self, key: &DocKey) -> Result<()> {
        self.inner.delete_doc(key).await
    }

    async fn immutable(&self) -> Result<super::Immutable> {
        self.inner.immutable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_combine_and_describe() {
        let cli = Limits {
            upload: Some(8 << 20),
            ..Default::default()
        };
        let cfg = Limits {
            upload: Some(1 << 20),
            download: Some(2 << 20),
            burst: None,
        };
        let l = cli.or(cfg);
        assert_eq!((l.upload, l.download), (Some(8 << 20), Some(2 << 20)));
        assert_eq!(l.describe(), "↑8.0 MiB/s ↓2.0 MiB/s");
        assert!(RateLimit::new(0, None).is_err());
    }

    #[tokio::test]
    async fn a_large_object_passes_a_small_burst() {
        // 1 MiB/s with a 64 KiB burst: 256 KiB takes about 0.19 s, not forever.
        let r = RateLimit::new(1 << 20, Some(64 << 10)).unwrap();
        let t = std::time::Instant::now();
        r.take(256 << 10).await;
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
