//! The phases of recovering a VM (a drill's, and within it a boot's): an
//! enum, so no face or report compares strings to know where a drill
//! failed. Written to reports and history as the lowercase word.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Working out what to drill (the reference, the scratch directory).
    Plan,
    Fetch,
    Restore,
    Verify,
    /// QEMU starting (before the guest runs).
    Start,
    Boot,
    Checks,
    /// A recovery plan's VM waiting for the VMs it starts after.
    Wait,
    /// A recovery plan's VM answering for its address on the plan's network.
    Network,
    /// Removing the scratch files.
    Cleanup,
}

impl Phase {
    /// Phases whose times add up to the RTO, in order.
    pub const TIMED: [Phase; 5] = [
        Phase::Fetch,
        Phase::Restore,
        Phase::Verify,
        Phase::Boot,
        Phase::Checks,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Fetch => "fetch",
            Phase::Restore => "restore",
            Phase::Verify => "verify",
            Phase::Start => "start",
            Phase::Boot => "boot",
            Phase::Checks => "checks",
            Phase::Wait => "wait",
            Phase::Network => "network",
            Phase::Cleanup => "cleanup",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_read_and_write_as_their_words() {
        for p in [
            Phase::Plan,
            Phase::Start,
            Phase::Wait,
            Phase::Network,
            Phase::Cleanup,
        ]
        .into_iter()
        .chain(Phase::TIMED)
        {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), p);
        }
    }
}
