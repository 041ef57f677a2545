//! What a VM's off-site copies lack, and what local retention must
//! therefore keep.
//!
//! A set is **owed** to a remote when the local repository holds it, the
//! remote does not hold all of its volumes, and the remote's retention
//! (the policy's `remote.NAME` rules, or the policy's own) would keep it
//! were it there — decided by running that retention over everything the
//! remote holds plus the set. A policy run sends every owed set, not only
//! its own (an outage leaves no permanent gap), and **local prune never
//! removes a set owed to any of the policy's remotes**, nor any set while a
//! remote cannot be asked (nobody can tell whether a copy exists). A set
//! the remote's retention would drop anyway is not owed: the remote would
//! remove it on its next prune, so no off-site copy is lost by not
//! sending it. A set a server refused (an append token cannot add a
//! backup older than the push that sends it, docs/SERVER.md) stays owed —
//! and kept locally — until an admin copies it over or it falls out of the
//! remote's retention; runs, `status --rpo` and `/metrics` say so.
//!
//! What each run found is kept in `state/offsite.json`, for `status` and
//! `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::durable;
use crate::error::{Error, Result};
use crate::format::{Manifest, ManifestKey};
use crate::policy::Policy;
use crate::retention::Decision;
use crate::store::Store;

/// One remote's side of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    /// Sets (by id) the remote holds whole.
    pub held: BTreeSet<String>,
    /// Sets the local repository holds, the remote lacks and its retention
    /// would keep.
    pub owed: BTreeSet<String>,
    /// The newest backup of the VM on the remote.
    pub newest: Option<DateTime<Utc>>,
}

/// What the remote holds of `vm` and owes, against the local backups of
/// `vm` (`local`, as `Repo::load_all` gives them).
pub async fn holding(
    remote: &dyn Store,
    remote_name: &str,
    vm: &str,
    local: &[(ManifestKey, Manifest)],
    policy: &Policy,
) -> Result<Holding> {
    let prefix = format!("manifests/{vm}/");
    let listed = crate::retry::with_retry(3, || remote.list(&prefix)).await?;
    let keys: BTreeSet<ManifestKey> = listed
        .into_iter()
        .filter_map(|k| match k {
            crate::store::ObjectKey::Manifest(m) if m.vm == vm => Some(m),
            _ => None,
        })
        .collect();
    let newest = keys.iter().map(|k| k.time).max();
    let mine: Vec<&(ManifestKey, Manifest)> = local.iter().filter(|(k, _)| k.vm == vm).collect();
    let mut sets: BTreeMap<&str, Vec<&ManifestKey>> = BTreeMap::new();
    for (k, m) in &mine {
        sets.entry(m.set.as_str()).or_default().push(k);
    }
    let held: BTreeSet<String> = sets
        .iter()
        .filter(|(_, members)| members.iter().all(|k| keys.contains(*k)))
        .map(|(s, _)| s.to_string())
        .collect();
    let lacking: BTreeSet<&str> = sets
        .keys()
        .copied()
        .filter(|s| !held.contains(*s))
        .collect();
    let owed = match policy.retention_for(Some(remote_name)) {
        // The remote keeps everything: every set it lacks is owed.
        None => lacking.iter().map(|s| s.to_string()).collect(),
        Some(rules) => {
            // Its retention over what it holds plus what it lacks: the
            // sets it would keep are owed. What it holds that the local
            // repository does not (pruned here, kept there) counts too.
            let local_ids: BTreeSet<&ManifestKey> = mine.iter().map(|(k, _)| k).collect();
            let mut union: Vec<(ManifestKey, Manifest)> =
                mine.iter().map(|(k, m)| (k.clone(), m.clone())).collect();
            for k in keys.iter().filter(|k| !local_ids.contains(k)) {
                match crate::repository::fetch_manifest(remote, k).await {
                    Ok((m, _)) => union.push((k.clone(), m)),
                    Err(e @ (Error::CorruptObject { .. } | Error::MissingObject { .. })) => {
                        tracing::warn!("{remote_name}: skipping {}: {e}", k.object_key())
                    }
                    Err(e) => return Err(e),
                }
            }
            let decisions = policy.plan_retention(&union, rules)?;
            decisions
                .iter()
                .filter(|d| d.keep && lacking.contains(d.set.as_str()))
                .map(|d| d.set.clone())
                .collect()
        }
    };
    Ok(Holding { held, owed, newest })
}

/// What a remote means for local retention.
#[derive(Debug, Clone)]
pub enum Offsite {
    Known(Holding),
    /// The remote could not be asked; the reason.
    Unknown(String),
}

/// Keeps every set a remote is owed, and every set at all while a remote
/// cannot be asked, whatever the local rules said.
pub fn hold_unsent(decisions: &mut [Decision], remotes: &BTreeMap<String, Offsite>) {
    crate::retention::hold(decisions, |d| {
        let why: Vec<String> = remotes
            .iter()
            .filter_map(|(name, o)| match o {
                Offsite::Known(h) if h.owed.contains(&d.set) => Some(format!("not yet on {name}")),
                Offsite::Unknown(_) if !d.keep => Some(format!(
                    "{name} unreachable: cannot tell whether it holds this set"
                )),
                _ => None,
            })
            .collect();
        (!why.is_empty()).then(|| why.join(", "))
    });
}

/// Asks each of the policy's push remotes what it holds of `vm`.
pub async fn ask_remotes(
    config: &crate::config::Config,
    vm: &str,
    local: &[(ManifestKey, Manifest)],
    policy: &Policy,
    limit: std::time::Duration,
) -> BTreeMap<String, Offsite> {
    let mut out = BTreeMap::new();
    for name in &policy.push {
        let r = tokio::time::timeout(limit, async {
            let (_, store) = crate::config::remotes::resolve(config, name)?;
            holding(store.as_ref(), name, vm, local, policy).await
        })
        .await;
        let o = match r {
            Ok(Ok(h)) => Offsite::Known(h),
            Ok(Err(e)) => Offsite::Unknown(crate::text::describe(&e)),
            Err(_) => Offsite::Unknown(format!("no answer within {} s", limit.as_secs())),
        };
        out.insert(name.clone(), o);
    }
    out
}

/// How long a prune plan waits for each remote's listing.
pub const ASK_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the last policy run found on one remote for one VM
/// (`state/offsite.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OffsiteRecord {
    pub checked_at: Option<DateTime<Utc>>,
    /// The newest backup of the VM the remote holds.
    pub newest: Option<DateTime<Utc>>,
    /// Sets owed after the run's push.
    pub owed: usize,
    /// Of those, sets the remote refused (late for an append token).
    pub refused: usize,
    /// The remote's reason for the newest refusal.
    pub refused_reason: Option<String>,
    /// Why the remote could not be asked or sent to, if so.
    pub error: Option<String>,
}

/// VM → remote → record.
pub type OffsiteState = BTreeMap<String, BTreeMap<String, OffsiteRecord>>;

const FILE: &str = "offsite.json";

pub fn load(root: &Path) -> Result<OffsiteState> {
    let path = root.join("state").join(FILE);
    match crate::repo::state::read_record(
        &path,
        4 << 20,
        "remove the file: the next run writes it again",
    )? {
        None => Ok(OffsiteState::default()),
        // A damaged record is as good as none: the next run rewrites it.
        Some(d) => Ok(serde_json::from_slice(&d).unwrap_or_default()),
    }
}

pub fn record(root: &Path, vm: &str, remote: &str, rec: OffsiteRecord) -> Result<()> {
    let _held = crate::repo::state::lock_state(root)?;
    let mut all = load(root)?;
    all.entry(vm.to_string())
        .or_default()
        .insert(remote.to_string(), rec);
    let data = serde_json::to_vec_pretty(&all).map_err(|e| Error::Internal(e.to_string()))?;
    durable::private_dir(&root.join("state"))?;
    durable::write_atomic(&root.join("state").join(FILE), &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{
        ImageFormat, Labels, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
    };
    use crate::format::Id;
    use crate::retention::Rules;
    use crate::store::memory::MemoryStore;
    use crate::store::Verified;

    fn backup(vol: &str, t: &str, set: &str) -> (ManifestKey, Manifest) {
        let m = Manifest {
            format: 1,
            vm: VmInfo { name: "web".into() },
            volume: VolumeInfo {
                name: vol.into(),
                role: if vol == "root" {
                    Role::Root
                } else {
                    Role::Data
                },
                format: ImageFormat::Raw,
                virtual_size: 1,
            },
            created_at: t.parse().unwrap(),
            chunk_size: 1 << 20,
            index: Id::of(set.as_bytes()),
            parent: None,
            set: set.into(),
            source: SourceInfo {
                host: "h".into(),
                path: "/p".into(),
            },
            stats: Stats::default(),
            labels: Labels::default(),
            definition: None,
            capture: None,
        };
        (m.key(), m)
    }

    fn policy(remote_daily: Option<usize>) -> Policy {
        let mut p = Policy::check("p", &Default::default(), &[]).unwrap();
        p.push = vec!["off".into()];
        if let Some(n) = remote_daily {
            p.remote_retention.insert(
                "off".into(),
                Rules {
                    daily: n,
                    ..Default::default()
                },
            );
        }
        p
    }

    async fn put(store: &MemoryStore, b: &(ManifestKey, Manifest)) {
        let obj = Verified::check(
            crate::store::ObjectKey::Manifest(b.0.clone()),
            bytes::Bytes::from(b.1.to_bytes()),
        )
        .unwrap();
        store.put_if_absent(&obj).await.unwrap();
    }

    #[tokio::test]
    async fn owed_sets_follow_the_remote_retention() {
        let local = vec![
            backup("root", "2026-11-01T02:00:00Z", "a1"),
            backup("data", "2026-11-01T02:00:01Z", "a1"),
            backup("root", "2026-11-02T02:00:00Z", "b2"),
            backup("data", "2026-11-02T02:00:01Z", "b2"),
            backup("root", "2026-11-02T14:00:00Z", "c2"),
            backup("root", "2026-11-03T02:00:00Z", "d3"),
        ];
        let remote = MemoryStore::new();
        // The remote holds a1 whole and half of b2 (a push cut off).
        put(&remote, &local[0]).await;
        put(&remote, &local[1]).await;
        put(&remote, &local[2]).await;
        let h = holding(&remote, "off", "web", &local, &policy(None))
            .await
            .unwrap();
        assert_eq!(h.held, BTreeSet::from(["a1".to_string()]));
        let owed: Vec<&str> = h.owed.iter().map(|s| s.as_str()).collect();
        assert_eq!(owed, ["b2", "c2", "d3"]);
        // With keep_daily there, b2 (not the newest of its day: c2 is)
        // is not owed.
        let h = holding(&remote, "off", "web", &local, &policy(Some(7)))
            .await
            .unwrap();
        let owed: Vec<&str> = h.owed.iter().map(|s| s.as_str()).collect();
        assert_eq!(owed, ["c2", "d3"]);

        // Local prune keeping only the last set holds what is owed.
        let rules = Rules {
            last: 1,
            ..Default::default()
        };
        let mut d = policy(Some(7)).plan_retention(&local, &rules).unwrap();
        let remotes = BTreeMap::from([("off".to_string(), Offsite::Known(h))]);
        hold_unsent(&mut d, &remotes);
        let kept: Vec<(&str, bool)> = d.iter().map(|d| (d.set.as_str(), d.keep)).collect();
        assert_eq!(
            kept,
            [("d3", true), ("c2", true), ("b2", false), ("a1", false)]
        );
        assert!(d
            .iter()
            .any(|d| d.reasons.iter().any(|r| r == "not yet on off")));
        // Nothing is removed while the remote cannot be asked.
        let mut d = policy(Some(7)).plan_retention(&local, &rules).unwrap();
        let remotes = BTreeMap::from([("off".to_string(), Offsite::Unknown("down".into()))]);
        hold_unsent(&mut d, &remotes);
        assert!(d.iter().all(|d| d.keep));
    }
}
