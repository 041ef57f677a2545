//! The repository format: ids, the chunk codec, indexes, manifests,
//! references, object and document keys, and the repository config
//! document. Bytes in, checked values out: no I/O, no VM model (a
//! manifest holds a definition's *reference* and its size bound only).

pub mod chunk;
pub mod chunkmap;
pub mod diff;
pub mod docs;
pub mod id;
pub mod index;
pub mod keys;
pub mod manifest;
pub mod refs;
pub mod repo_config;
pub mod sealed;

pub use docs::{Doc, DocKey, DocKind};
pub use id::Id;
pub use index::Index;
pub use keys::{ObjectKey, Verified};
pub use manifest::{Manifest, ManifestKey};
