//! Repository verification. Quick: every referenced object is present and
//! every manifest and index hashes to its name. Deep: also read, decode and
//! re-hash every referenced chunk. Each bad object is reported with the
//! backups it breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::{Id, Manifest, ManifestKey, Repo};
use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: &'static str,
    pub id: String,
    pub problem: String,
    /// The backups this object breaks, as `vm/volume@time id`.
    pub breaks: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub deep: bool,
    pub manifests: usize,
    pub indexes: usize,
    pub chunks: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
    /// The backups checked, and those a problem breaks (manifest ids).
    #[serde(skip)]
    pub checked: Vec<Id>,
    #[serde(skip)]
    pub broken: BTreeSet<Id>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Reports bad chunks, each with the backups it breaks (through the
    /// indexes that use it).
    pub(crate) fn add_chunk_problems(
        &mut self,
        mut bad: Vec<(Id, Error)>,
        chunk_users: &BTreeMap<Id, BTreeSet<Id>>,
        index_users: &BTreeMap<Id, Vec<String>>,
    ) {
        bad.sort_by_key(|(id, _)| *id);
        for (id, e) in bad {
            let mut breaks: Vec<String> = chunk_users
                .get(&id)
                .into_iter()
                .flatten()
                .flat_map(|idx| index_users.get(idx).cloned().unwrap_or_default())
                .collect();
            breaks.sort();
            breaks.dedup();
            self.problems.push(problem("chunk", id, &e, breaks));
        }
    }

    /// Records which backups were checked and which a problem breaks.
    pub(crate) fn finish(&mut self, keys: &[ManifestKey]) {
        let by_name: BTreeMap<String, Id> = keys.iter().map(|k| (describe(k), k.id)).collect();
        self.checked = keys.iter().map(|k| k.id).collect();
        self.broken = self
            .problems
            .iter()
            .flat_map(|p| p.breaks.iter())
            .filter_map(|b| by_name.get(b).copied())
            .collect();
    }

    /// The verify state this run gives each backup it checked.
    pub fn marks(
        &self,
        at: chrono::DateTime<chrono::Utc>,
    ) -> BTreeMap<Id, super::state::VerifyMark> {
        self.checked
            .iter()
            .map(|id| {
                (
                    *id,
                    super::state::VerifyMark {
                        at,
                        deep: self.deep,
                        ok: !self.broken.contains(id),
                    },
                )
            })
            .collect()
    }
}

pub fn describe(k: &ManifestKey) -> String {
    format!(
        "{}/{}@{} {}",
        k.vm,
        k.volume,
        k.time.format("%Y-%m-%dT%H:%M:%SZ"),
        k.id.short()
    )
}

/// Verifies the given manifests (all when `keys` is None).
pub fn verify(
    repo: &Repo,
    keys: Option<Vec<ManifestKey>>,
    deep: bool,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<VerifyReport> {
    let keys = match keys {
        Some(k) => k,
        None => repo.list_manifests()?,
    };
    let mut report = VerifyReport {
        deep,
        ..Default::default()
    };
    progress.set_phase("checking manifests and indexes");
    // index id -> backups using it; chunk id -> indexes using it
    let mut index_users: BTreeMap<Id, Vec<String>> = BTreeMap::new();
    let mut definitions = DefinitionUsers::new();
    for k in &keys {
        report.manifests += 1;
        match repo.load_manifest(k) {
            Ok(m) => {
                note_definition(&mut definitions, k, &m);
                index_users.entry(m.index).or_default().push(describe(k))
            }
            Err(e) => report
                .problems
                .push(problem("manifest", k.id, &e, vec![describe(k)])),
        }
    }
    let mut chunk_users: BTreeMap<Id, BTreeSet<Id>> = BTreeMap::new();
    for (idx_id, users) in &index_users {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        report.indexes += 1;
        match repo.read_index(idx_id) {
            Ok(index) => {
                if index.chunk_size != repo.chunk_size() {
                    report.problems.push(Problem {
                        kind: "index",
                        id: idx_id.to_hex(),
                        problem: format!(
                            "chunk size {} differs from the repository's",
                            index.chunk_size
                        ),
                        breaks: users.clone(),
                    });
                }
                for c in index.chunks.iter().filter(|c| !c.is_zero()) {
                    chunk_users.entry(*c).or_default().insert(*idx_id);
                }
            }
            Err(e) => report
                .problems
                .push(problem("index", *idx_id, &e, users.clone())),
        }
    }
    report.chunks = chunk_users.len();
    progress.set_phase(if deep {
        "reading chunks"
    } else {
        "checking chunks"
    });
    progress.set_totals(0, chunk_users.len() as u64);
    let ids: Vec<Id> = chunk_users.keys().copied().collect();
    let bad: Mutex<Vec<(Id, Error)>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let threads = if deep { worker_threads() } else { 1 };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let (mut file_buf, mut raw_buf) = (AlignedBuf::new(), AlignedBuf::new());
                loop {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { return };
                    let res = if deep {
                        // No plaintext id: verify checks every object's name.
                        repo.read_chunk_into(id, None, &mut file_buf, &mut raw_buf)
                            .map(|_| {
                                let n = file_buf.len() as u64;
                                bytes.fetch_add(n, Ordering::Relaxed);
                                progress.add(n, 1);
                            })
                    } else {
                        progress.add(0, 1);
                        if repo.has_chunk(id) {
                            Ok(())
                        } else {
                            Err(Error::MissingObject {
                                kind: "chunk",
                                id: id.to_hex(),
                            })
                        }
                    };
                    if let Err(e) = res {
                        if let Ok(mut b) = bad.lock() {
                            b.push((*id, e));
                        }
                    }
                }
            });
        }
    });
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    report.bytes_read = bytes.into_inner();
    let bad = bad.into_inner().unwrap_or_default();
    report.add_chunk_problems(bad, &chunk_users, &index_users);
    // Definitions are small: always read, decoded and parsed.
    for (d, users) in definitions.into_values() {
        if let Err(e) = repo.read_definition(&d) {
            report
                .problems
                .push(problem("definition", d.chunk, &e, users));
        }
    }
    report.finish(&keys);
    Ok(report)
}

/// Each definition chunk and the backups naming it.
pub(crate) type DefinitionUsers =
    BTreeMap<Id, (crate::format::manifest::DefinitionRef, Vec<String>)>;

pub(crate) fn note_definition(users: &mut DefinitionUsers, k: &ManifestKey, m: &Manifest) {
    if let Some(d) = m.definition {
        users
            .entry(d.chunk)
            .or_insert((d, Vec::new()))
            .1
            .push(describe(k));
    }
}

pub(crate) fn problem(kind: &'static str, id: Id, e: &Error, breaks: Vec<String>) -> Problem {
    let text = match e {
        Error::MissingObject { .. } => "missing".to_string(),
        Error::CorruptObject { reason, .. } => format!("corrupt: {reason}"),
        other => other.to_string(),
    };
    Problem {
        kind,
        id: id.to_hex(),
        problem: text,
        breaks,
    }
}

pub fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}
