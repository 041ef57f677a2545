//! Drill history: every drill's report in the local repository's
//! `state/drills.jsonl` (the newest 500), read leniently like the other
//! records of `state/`.

use std::collections::BTreeMap;
use std::path::Path;

use super::report::DrillReport;
use crate::error::Result;
use crate::repo::state::{append_jsonl, load_jsonl};

pub const MAX_DRILLS: usize = 500;
const FILE: &str = "drills.jsonl";

pub fn record(root: &Path, report: &DrillReport) -> Result<()> {
    append_jsonl(root, FILE, report.clone(), MAX_DRILLS)
}

/// Every kept report, oldest first.
pub fn load(root: &Path) -> Result<Vec<DrillReport>> {
    Ok(load_jsonl(root, FILE)?.0)
}

/// The newest completed drill of each VM (passed or failed): a cancelled
/// drill proves nothing either way, so it never replaces the last mark.
pub fn last_per_vm(root: &Path) -> Result<BTreeMap<String, DrillReport>> {
    let mut out = BTreeMap::new();
    for r in load(root)? {
        if matches!(
            r.outcome,
            super::report::DrillOutcome::Pass | super::report::DrillOutcome::Fail
        ) {
            out.insert(r.vm.clone(), r);
        }
    }
    Ok(out)
}
