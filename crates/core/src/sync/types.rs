//! What a transfer plan and its report hold, and the step both end with,
//! shared by the plain transfer (`sync`) and the re-encrypting one
//! (`sync::transcode`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::{Id, Index, Manifest, ManifestKey};
use crate::jobs::CancellationToken;
use crate::retry::with_retry;
use crate::store::{Store, Verified};

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub concurrency: usize,
    pub retries: u32,
    /// Create the destination repository (with the source's chunk size).
    pub init: bool,
    /// Copy manifests too (push/pull); restore --from copies only data.
    pub manifests: bool,
    /// Hold a writer lock on the destination from planning to the end
    /// (see `lock`); off for a dry run, which writes nothing.
    pub lock: bool,
    /// How long to wait for a garbage collection that is deleting.
    pub lock_wait: std::time::Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            concurrency: 8,
            retries: 5,
            init: false,
            manifests: true,
            lock: true,
            lock_wait: crate::lock::WRITER_WAIT,
        }
    }
}

/// What a transfer will do, for a confirmation dialog or `--dry-run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanSummary {
    pub source: String,
    pub destination: String,
    /// The destination holds no repository; one is created first.
    pub creates_repository: bool,
    /// Both sides are encrypted with one key: objects are copied sealed,
    /// as they are (never decrypted on the way out, never re-encrypted).
    pub sealed: bool,
    /// The two sides have different keys (or one is unencrypted): every
    /// object is opened and made again for the destination.
    pub reencrypted: bool,
    pub manifests_selected: usize,
    pub manifests_to_send: usize,
    pub indexes_to_send: usize,
    pub chunks_referenced: usize,
    pub chunks_to_send: usize,
    pub chunks_already_there: usize,
    /// Image bytes of the chunks to send (before compression).
    pub data_bytes_to_send: u64,
}

impl PlanSummary {
    /// What the plan does about encryption, when there is something to say.
    pub fn key_note(&self) -> Option<&'static str> {
        if self.reencrypted {
            Some("re-encrypted: the two repositories have different keys (or one is unencrypted), so every object is opened and made again for the destination; backups are matched by VM, volume and time; protection marks are not copied")
        } else if self.sealed {
            Some("encrypted: objects are copied sealed, as they are")
        } else {
            None
        }
    }
}

/// A planned transfer. Holds the verified manifests and indexes fetched
/// while planning, so executing it fetches only chunks.
#[derive(Clone)]
pub struct TransferPlan {
    pub summary: PlanSummary,
    pub(super) create_config: Option<Verified>,
    /// Every selected manifest the destination lacks (or, without
    /// `manifests`, every selected one), oldest first, with its bytes.
    pub(super) manifests: Vec<(ManifestKey, Manifest, Verified)>,
    pub(super) indexes: Vec<Verified>,
    /// Every index the selected manifests reference, parsed.
    pub(super) index_of: BTreeMap<Id, Index>,
    pub(super) chunks: Vec<(Id, u64)>,
    pub(super) send_manifests: bool,
    /// Every selected manifest, also those the destination holds (their
    /// protection is copied).
    pub(super) selected: Vec<ManifestKey>,
    /// The destination's writer lock, held from before the destination
    /// was asked what it lacks until the plan is dropped: a gc cannot
    /// delete an object this plan counts as "already there".
    pub(super) lock: Option<std::sync::Arc<crate::lock::Held>>,
    /// Set when objects are re-encrypted on the way (`transcode`).
    pub(super) transcode: Option<Transcode>,
}

impl std::fmt::Debug for TransferPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferPlan")
            .field("summary", &self.summary)
            .field("locked", &self.lock.is_some())
            .finish_non_exhaustive()
    }
}

impl TransferPlan {
    /// Releases the destination's writer lock now (call when done with the
    /// plan, failed or not: a process that exits right after would never
    /// run the background removal that dropping does).
    pub async fn finish(&self) {
        if let Some(l) = &self.lock {
            if let Err(e) = l.release_shared().await {
                tracing::warn!(
                    "releasing the writer lock on {}: {e}",
                    self.summary.destination
                );
            }
        }
    }

    /// The selected manifests, as fetched and verified from the source.
    pub fn manifests(&self) -> Vec<(ManifestKey, Manifest)> {
        self.manifests
            .iter()
            .map(|(k, m, _)| (k.clone(), m.clone()))
            .collect()
    }

    /// An index one of the selected manifests references.
    pub fn index(&self, id: &Id) -> Option<&Index> {
        self.index_of.get(id)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub destination: String,
    pub manifests_selected: usize,
    pub manifests_sent: usize,
    pub indexes_sent: usize,
    pub chunks_sent: usize,
    pub chunks_skipped: usize,
    /// Bytes of objects as stored (compressed), i.e. what crossed the wire.
    pub bytes_sent: u64,
    /// Protection marks copied along.
    pub protections_sent: usize,
    /// Backups the destination refused for their place in time or their
    /// set (a server's rules for append tokens), with its reason: the
    /// rest was sent; sending these again never helps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
    pub seconds: f64,
}

/// A backup the destination refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    #[serde(skip)]
    pub key: ManifestKey,
    /// `vm/volume@time (id …)`.
    pub backup: String,
    pub reason: String,
}

/// What a re-encrypting transfer needs besides a plan's lists.
#[derive(Clone)]
pub(super) struct Transcode {
    /// The destination's keys; None for an unencrypted destination.
    pub(super) keys: Option<Arc<crate::crypto::Keys>>,
    pub(super) level: i32,
    /// The destination's chunks by plaintext id (as far as the plan found).
    pub(super) known: HashMap<Id, Id>,
}

pub(crate) fn check_cancel(cancel: &CancellationToken) -> Result<()> {
    if cancel.is_cancelled() {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

impl SyncReport {
    /// A report to fill in while executing `s`.
    pub(super) fn for_plan(s: &PlanSummary) -> SyncReport {
        SyncReport {
            source: s.source.clone(),
            destination: s.destination.clone(),
            manifests_selected: s.manifests_selected,
            chunks_skipped: s.chunks_already_there,
            ..Default::default()
        }
    }
}

/// Writes one manifest; a backup the destination refuses on purpose (late,
/// set closed, out of scope) is recorded in the report, not an error.
pub(super) async fn send_manifest(
    dst: &dyn Store,
    key: &ManifestKey,
    obj: &Verified,
    opts: &SyncOptions,
    report: &mut SyncReport,
) -> Result<()> {
    match with_retry(opts.retries, || dst.put_if_absent(obj)).await {
        Ok(_) => {
            report.bytes_sent += obj.data().len() as u64;
            report.manifests_sent += 1;
            Ok(())
        }
        Err(Error::LateBackup { reason, .. }) => {
            tracing::warn!("{} refused {}: {reason}", dst.describe(), key.object_key());
            report.refused.push(Refused {
                key: key.clone(),
                backup: crate::format::refs::describe_backup(key),
                reason,
            });
            Ok(())
        }
        Err(e) => Err(e),
    }
}
