//! The store trait and its three implementations: a local directory, a
//! `lifeboat serve` server over HTTP(S), and S3-compatible object storage.
//! The same object keys are used everywhere (see `keys`).

pub mod http;
pub mod keys;
pub mod local;
pub mod remote;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

#[async_trait]
pub trait Store: Send + Sync {
    /// What to call this store in messages (never includes secrets).
    fn describe(&self) -> String;
    /// The object, or None when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Stores the object unless it exists. Returns whether it was written.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool>;
    /// Which of `keys` the store lacks.
    async fn missing(&self, keys: &[String]) -> Result<Vec<String>>;
    /// Every key under a prefix (see `keys::check_prefix`).
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes an object (maintenance only; servers require admin).
    async fn delete(&self, key: &str) -> Result<()>;
}

pub type DynStore = Arc<dyn Store>;
