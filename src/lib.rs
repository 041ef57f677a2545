//! lifeboat: a disaster-recovery console for virtual machines.
//!
//! The library holds the engine (repository, sources, backup, restore,
//! jobs); the binary holds the two faces (CLI, and later the TUI), which
//! only observe the engine's jobs.

pub mod backup;
pub mod config;
pub mod error;
pub mod jobs;
pub mod names;
pub mod repo;
pub mod restore;
pub mod server;
pub mod source;
pub mod store;
pub mod sync;

pub use error::{Error, Result};
