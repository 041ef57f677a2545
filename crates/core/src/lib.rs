//! lifeboat's engine: the content-addressed repository, the stores (local,
//! `lifeboat serve` over HTTP, S3), backup, restore, push/pull, sources and
//! jobs. Plans are made here; the faces (CLI, console, server) only show
//! and dispatch them.
//!
//! This crate's manifest lists no terminal, argument-parsing or
//! progress-bar crate, so the compiler keeps the engine free of them.

pub mod backup;
pub mod buf;
pub mod cloud;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod drill;
pub mod durable;
pub mod error;
pub mod files;
pub mod format;
pub mod gc;
pub mod jobs;
pub mod live;
pub mod lock;
pub mod metrics;
pub mod names;
pub mod nbd_export;
pub mod plan;
pub mod policy;
pub mod protect;
pub mod prune;
pub mod repo;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod rpo;
pub mod source;
pub mod store;
pub mod sync;
pub mod sys;
#[cfg(test)]
pub(crate) mod testkit;
pub mod text;
pub mod vm;

pub use error::{Error, Result};
