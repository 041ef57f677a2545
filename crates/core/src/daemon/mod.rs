//! Unattended operation: the scheduler (`schedule`), the run history
//! (`runs`), what off-site copies lack (`offsite`) and the daemon that
//! runs each VM's policy (`runner`).

pub mod offsite;
pub mod prune;
pub mod runner;
pub mod runs;
pub mod schedule;
