//! The store trait and its three implementations: a local directory, a
//! `lifeboat serve` server over HTTP(S), and S3-compatible object storage.
//! The same object keys are used everywhere (see `keys`).

pub mod http;
pub mod local;
pub mod memory;
pub mod s3;
pub mod throttle;
pub mod tls;
pub mod url;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
pub use crate::format::docs::{Doc, DocKey, DocKind};
pub use crate::format::keys::{ObjectKey, Verified};

/// The most keys one listing may return. A listing is held in memory; a
/// peer that claims more is refused rather than trusted to stop. Chunks:
/// 10 M is a 40 TiB repository at 4 MiB chunks (about 400 MB of keys in
/// memory); manifests: a million backups (a manifest key with its names
/// takes a few hundred bytes); documents: locks and protection marks.
pub const MAX_LIST_KEYS: usize = 10_000_000;
pub const MAX_MANIFEST_KEYS: usize = 1_000_000;
pub const MAX_DOCS: usize = 1_000_000;

/// The most keys a listing of `prefix` may return.
pub fn max_keys(prefix: &str) -> usize {
    if prefix.starts_with("manifests/") {
        MAX_MANIFEST_KEYS
    } else {
        MAX_LIST_KEYS
    }
}

#[async_trait]
pub trait Store: Send + Sync {
    /// What to call this store in messages (never includes secrets).
    fn describe(&self) -> String;
    /// The object, or None when it does not exist. An object larger than
    /// its kind allows (`ObjectKey::max_size`) is an error, never read whole.
    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>>;
    /// Stores the object unless it exists. Returns whether it was written.
    async fn put_if_absent(&self, obj: &Verified) -> Result<bool>;
    /// Stores an object the caller found missing a moment ago (a planned
    /// transfer). A store may skip the existence check: objects are
    /// content-addressed, so a racing copy holds the same bytes.
    async fn put_new(&self, obj: &Verified) -> Result<()> {
        self.put_if_absent(obj).await.map(|_| ())
    }
    /// Makes everything put so far durable and visible (a store that
    /// commits writes in groups; others already have). Transfers call it
    /// when their data is in.
    async fn commit(&self) -> Result<()> {
        Ok(())
    }
    /// Which of `keys` the store lacks.
    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>>;
    /// Every key under a prefix (see `keys::check_prefix`), at most
    /// `MAX_LIST_KEYS`; entries that are not object keys are skipped.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>>;
    /// Removes an object (maintenance only; servers require admin).
    async fn delete(&self, key: &ObjectKey) -> Result<()>;
    /// A cheap "are you there" (a repository server's health route), so a
    /// dead remote is known in seconds while a long listing of a live one
    /// may take its time. Stores without one answer Ok.
    async fn probe(&self) -> Result<()> {
        Ok(())
    }
    /// The stored size of every chunk and index, when the store can tell
    /// in one listing (gc's report); None otherwise.
    async fn sizes(&self) -> Result<Option<std::collections::HashMap<ObjectKey, u64>>> {
        Ok(None)
    }
    /// Writes or replaces a small document (a lock, a protection mark;
    /// see `docs`). At most `docs::MAX_DOC_BYTES`.
    async fn put_doc(&self, key: &DocKey, body: Bytes) -> Result<()>;
    /// Every document of a kind, with its body and the store's time of
    /// its last write.
    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Doc>>;
    /// Removes a document; one already gone is not an error.
    async fn delete_doc(&self, key: &DocKey) -> Result<()>;
    /// The backups the store keeps whatever a prune asks (a server's
    /// immutability window, by arrival), with when each may go. Stores
    /// without such a window keep none this way.
    async fn immutable(&self) -> Result<Immutable> {
        Ok(Immutable::new())
    }
}

/// Backup → the time it may be removed from.
pub type Immutable =
    std::collections::BTreeMap<crate::format::ManifestKey, chrono::DateTime<chrono::Utc>>;

pub type DynStore = Arc<dyn Store>;

/// The error for a listing over `MAX_LIST_KEYS`.
pub fn too_many_keys(store: &str, prefix: &str) -> crate::Error {
    let limit = max_keys(prefix);
    crate::Error::TooLarge {
        what: format!("the listing of {prefix} on {store}"),
        size: limit as u64 + 1,
        limit: limit as u64,
        hint: "a peer sending more keys than any repository holds is broken or hostile",
    }
}
