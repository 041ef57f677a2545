//! The lifeboat application's library: the `lifeboat serve` repository
//! server, kept in a library so that whole-flow tests can run it in-process
//! on loopback. The engine is the `lifeboat_core` crate; the CLI and the
//! console are in the binary.

pub mod server;
