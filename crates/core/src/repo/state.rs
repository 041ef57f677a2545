//! A repository's own records, beside its content-addressed objects: the
//! history of jobs run against it and the verify state of each backup.
//! They live in `state/` (private, like everything in a repository), are
//! written atomically, and are read bounded and leniently: a damaged record
//! is skipped and counted, never a reason to refuse to open the console.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Id;
use crate::durable::{self, Limited};
use crate::error::{Error, Result};

/// Records kept; older ones are dropped when the file is rewritten.
pub const MAX_JOBS: usize = 500;
/// Neither file may grow past this (a job record carries its log tail).
const MAX_FILE: u64 = 8 << 20;
/// Log lines kept per job record.
pub const JOB_LOG_LINES: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobOutcome {
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub title: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub outcome: JobOutcome,
    /// The summary on success, the error otherwise.
    pub message: String,
    /// The job's log lines (the last `JOB_LOG_LINES`).
    #[serde(default)]
    pub log: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyMark {
    pub at: DateTime<Utc>,
    pub deep: bool,
    pub ok: bool,
}

fn dir(root: &Path) -> PathBuf {
    root.join("state")
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    read_record(
        path,
        MAX_FILE,
        "remove the file: it holds only the console's records",
    )
}

/// A record file of `state/`, at most `limit` bytes; None when absent.
pub(crate) fn read_record(path: &Path, limit: u64, hint: &'static str) -> Result<Option<Vec<u8>>> {
    match durable::read_limited(path, limit) {
        Ok(Limited::Data(d)) => Ok(Some(d)),
        Ok(Limited::TooLarge(n)) => Err(Error::TooLarge {
            what: format!("{}", path.display()),
            size: n,
            limit,
            hint,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// Holds `state/.lock` exclusively for a read-modify-write of a record:
/// a daemon, a console and a CLI command may record at once, and none may
/// lose another's record.
pub fn lock_state(root: &Path) -> Result<std::fs::File> {
    durable::private_dir(&dir(root))?;
    let path = dir(root).join(".lock");
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .mode(0o600)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening", &path, e))?;
    // One made by an older lifeboat may be 0644: private from now on.
    let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
    f.lock().map_err(|e| Error::io("locking", &path, e))?;
    Ok(f)
}

/// Records of a `state/*.jsonl` file, oldest first, and how many were
/// unreadable (skipped).
pub(crate) fn load_jsonl<T: serde::de::DeserializeOwned>(
    root: &Path,
    file: &str,
) -> Result<(Vec<T>, usize)> {
    let Some(data) = read(&dir(root).join(file))? else {
        return Ok((Vec::new(), 0));
    };
    let mut bad = 0;
    let mut recs = Vec::new();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<T>(line) {
            Ok(r) => recs.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((recs, bad))
}

/// Adds a record to a `state/*.jsonl` file, which keeps the newest `max`.
/// Rewritten whole and atomically, under the state lock: a crash leaves
/// the old history or the new one, and concurrent writers lose nothing.
pub(crate) fn append_jsonl<T: serde::Serialize + serde::de::DeserializeOwned>(
    root: &Path,
    file: &str,
    rec: T,
    max: usize,
) -> Result<()> {
    let _held = lock_state(root)?;
    let (mut recs, _) = load_jsonl::<T>(root, file).unwrap_or_default();
    recs.push(rec);
    let skip = recs.len().saturating_sub(max);
    let mut out = Vec::new();
    for r in &recs[skip..] {
        serde_json::to_writer(&mut out, r).map_err(|e| Error::Internal(e.to_string()))?;
        out.push(b'\n');
    }
    durable::write_atomic(&dir(root).join(file), &out)
}

/// The job history, oldest first, and how many records were unreadable.
pub fn load_jobs(root: &Path) -> Result<(Vec<JobRecord>, usize)> {
    load_jsonl(root, "jobs.jsonl")
}

/// Adds a record; the file keeps the newest `MAX_JOBS`.
pub fn append_job(root: &Path, mut rec: JobRecord) -> Result<()> {
    let keep = rec.log.len().saturating_sub(JOB_LOG_LINES);
    rec.log.drain(..keep);
    append_jsonl(root, "jobs.jsonl", rec, MAX_JOBS)
}

/// The newest verify of each backup (by manifest id).
pub fn load_verify(root: &Path) -> Result<BTreeMap<Id, VerifyMark>> {
    let Some(data) = read(&dir(root).join("verify.json"))? else {
        return Ok(BTreeMap::new());
    };
    let raw: BTreeMap<String, VerifyMark> = serde_json::from_slice(&data).map_err(|e| {
        Error::BadInput(format!(
            "{}: {e}; remove the file to start a new verify record",
            dir(root).join("verify.json").display()
        ))
    })?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| Id::parse(&k).ok().map(|id| (id, v)))
        .collect())
}

/// Records a verify's result for the backups it covered; returns the
/// whole record as now written.
pub fn record_verify(
    root: &Path,
    marks: &BTreeMap<Id, VerifyMark>,
) -> Result<BTreeMap<Id, VerifyMark>> {
    let _held = lock_state(root)?;
    let mut all = load_verify(root).unwrap_or_default();
    all.extend(marks.iter().map(|(k, v)| (*k, *v)));
    let raw: BTreeMap<String, VerifyMark> = all.iter().map(|(k, v)| (k.to_hex(), *v)).collect();
    let data = serde_json::to_vec_pretty(&raw).map_err(|e| Error::Internal(e.to_string()))?;
    durable::write_atomic(&dir(root).join("verify.json"), &data)?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(title: &str) -> JobRecord {
        JobRecord {
            title: title.into(),
            started_at: Utc::now(),
            ended_at: Utc::now(),
            outcome: JobOutcome::Done,
            message: "ok".into(),
            log: (0..300).map(|i| format!("line {i}")).collect(),
        }
    }

    #[test]
    fn jobs_round_trip_bounded_and_skip_damage() {
        let d = tempfile::tempdir().unwrap();
        append_job(d.path(), rec("a")).unwrap();
        append_job(d.path(), rec("b")).unwrap();
        let path = d.path().join("state/jobs.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{not json\n");
        std::fs::write(&path, text).unwrap();
        let (jobs, bad) = load_jobs(d.path()).unwrap();
        assert_eq!((jobs.len(), bad), (2, 1));
        assert_eq!(jobs[1].title, "b");
        assert_eq!(jobs[0].log.len(), JOB_LOG_LINES);
        assert_eq!(jobs[0].log[0], "line 100");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn verify_marks_merge() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (Id::of(b"a"), Id::of(b"b"));
        let m = |ok| VerifyMark {
            at: Utc::now(),
            deep: false,
            ok,
        };
        record_verify(d.path(), &BTreeMap::from([(a, m(true))])).unwrap();
        record_verify(d.path(), &BTreeMap::from([(b, m(false))])).unwrap();
        let all = load_verify(d.path()).unwrap();
        assert!(all[&a].ok && !all[&b].ok);
    }
}
