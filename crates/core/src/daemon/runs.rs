//! The run history of policy runs (`state/runs.jsonl`) and the daemon's
//! own state (`state/daemon.json`: which slot each VM last covered). Both
//! survive restarts; the console, `status --rpo` and `/metrics` read them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::durable;
use crate::error::{Error, Result};

/// Records kept; older ones are dropped when the file is rewritten.
pub const MAX_RUNS: usize = 2000;
const MAX_FILE: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Ok,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub vm: String,
    pub policy: String,
    /// The schedule slot the run covered (None: run by hand, `--now`).
    pub slot: Option<DateTime<Utc>>,
    pub attempt: usize,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    /// New bytes stored by the backup, and bytes sent to remotes.
    pub bytes_new: u64,
    pub bytes_pushed: u64,
    pub seconds: f64,
    /// What each step did ("backup: 2 volumes, 3 MiB new", "push offsite: …").
    pub steps: Vec<String>,
    pub error: Option<String>,
    /// The set the run's backup committed, if it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<String>,
}

fn dir(root: &Path) -> PathBuf {
    root.join("state")
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    crate::repo::state::read_record(
        path,
        MAX_FILE,
        "remove the file: it holds only the run history",
    )
}

/// The run history, oldest first (damaged lines are skipped).
pub fn load_runs(root: &Path) -> Result<Vec<RunRecord>> {
    let Some(data) = read(&dir(root).join("runs.jsonl"))? else {
        return Ok(Vec::new());
    };
    Ok(data
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

pub fn append_run(root: &Path, rec: RunRecord) -> Result<()> {
    let _held = crate::repo::state::lock_state(root)?;
    let mut runs = load_runs(root).unwrap_or_default();
    runs.push(rec);
    let skip = runs.len().saturating_sub(MAX_RUNS);
    let mut out = Vec::new();
    for r in &runs[skip..] {
        serde_json::to_writer(&mut out, r).map_err(|e| Error::Internal(e.to_string()))?;
        out.push(b'\n');
    }
    durable::write_atomic(&dir(root).join("runs.jsonl"), &out)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonState {
    /// The slot each VM's last run covered.
    #[serde(default)]
    pub last_slot: BTreeMap<String, DateTime<Utc>>,
    /// Deep verify rotation per VM: the next slice, and when the last ran.
    #[serde(default)]
    pub deep_slice: BTreeMap<String, (u32, DateTime<Utc>)>,
    #[serde(default)]
    pub last_gc: Option<DateTime<Utc>>,
    /// When each VM's drill schedule last fired (or was first seen).
    #[serde(default)]
    pub last_drill: BTreeMap<String, DateTime<Utc>>,
    /// When each recovery plan's drill schedule last fired (or was first seen).
    #[serde(default)]
    pub last_plan_drill: BTreeMap<String, DateTime<Utc>>,
}

pub fn load_state(root: &Path) -> Result<DaemonState> {
    match read(&dir(root).join("daemon.json"))? {
        None => Ok(DaemonState::default()),
        Some(d) => serde_json::from_slice(&d).map_err(|e| {
            Error::BadInput(format!(
                "{}: {e}; remove the file and the daemon starts from the backups the repository holds",
                dir(root).join("daemon.json").display()
            ))
        }),
    }
}

pub fn save_state(root: &Path, s: &DaemonState) -> Result<()> {
    let _held = crate::repo::state::lock_state(root)?;
    let data = serde_json::to_vec_pretty(s).map_err(|e| Error::Internal(e.to_string()))?;
    durable::write_atomic(&dir(root).join("daemon.json"), &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_survive_and_concurrent_appends_keep_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let rec = |i: usize| RunRecord {
            vm: format!("vm{i}"),
            policy: "p".into(),
            slot: None,
            attempt: 1,
            started_at: Utc::now(),
            ended_at: Utc::now(),
            outcome: RunOutcome::Ok,
            bytes_new: i as u64,
            bytes_pushed: 0,
            seconds: 0.1,
            steps: vec![],
            error: None,
            committed: None,
        };
        std::thread::scope(|s| {
            for t in 0..4 {
                let root = &root;
                s.spawn(move || {
                    for i in 0..10 {
                        append_run(root, rec(t * 10 + i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(load_runs(&root).unwrap().len(), 40);
        let mut st = DaemonState::default();
        st.last_slot.insert("vm".into(), Utc::now());
        save_state(&root, &st).unwrap();
        assert_eq!(load_state(&root).unwrap(), st);
    }
}
