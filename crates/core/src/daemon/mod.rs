//! Unattended operation: the scheduler (`schedule`), the run history
//! (`runs`) and the daemon that runs each VM's policy (`runner`).

pub mod runner;
pub mod runs;
pub mod schedule;
