//! Pruning as a plan and its execution. A `PrunePlan` lists every backup
//! set with the rule that keeps it, or none (removed); it is made once
//! (`daemon::prune::plan`, which knows policies and off-site copies) and
//! executed by value, by the CLI, the console and the daemon alike.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::ManifestKey;
use crate::jobs::CancellationToken;
use crate::retention::Decision;
use crate::store::{ObjectKey, Store};

/// What a prune will keep and remove in one repository.
#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    /// The repository, as its store describes itself.
    pub repository: String,
    /// Every set considered, oldest first per VM.
    pub sets: Vec<Decision>,
    /// Sets the rules would remove that are kept because an off-site copy
    /// lacks them (or cannot be asked).
    pub held_offsite: usize,
}

/// What an executed plan removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneDone {
    pub sets: usize,
    pub backups: usize,
}

impl PrunePlan {
    pub fn new(repository: String, sets: Vec<Decision>) -> PrunePlan {
        PrunePlan {
            repository,
            sets,
            held_offsite: 0,
        }
    }

    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.sets.iter().filter(|d| !d.keep)
    }

    pub fn removed_sets(&self) -> usize {
        self.removed().count()
    }

    pub fn removed_backups(&self) -> usize {
        self.removed().map(|d| d.manifests.len()).sum()
    }

    pub fn removed_keys(&self) -> Vec<ManifestKey> {
        self.removed().flat_map(|d| d.manifests.clone()).collect()
    }

    pub fn is_noop(&self) -> bool {
        self.removed_sets() == 0
    }

    /// Holds every set whose backups a store keeps whatever a prune asks
    /// (a server's immutability window).
    pub async fn hold_immutable(&mut self, store: &dyn Store) -> Result<()> {
        let until = store.immutable().await?;
        crate::retention::hold(&mut self.sets, |d| {
            crate::retention::immutable_reason(d, &until)
        });
        Ok(())
    }

    /// One line per set and a summary first (the console's confirmation
    /// and the daemon's log).
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![self.summary(false)];
        lines.extend(self.sets.iter().map(|d| {
            format!(
                "{}  {}  {} volumes  {}",
                d.vm,
                d.local_time,
                d.manifests.len(),
                if d.keep {
                    format!("kept: {}", d.reasons.join(", "))
                } else {
                    "REMOVED".into()
                }
            )
        }));
        lines
    }

    /// "N of M sets (K backups) would be removed from REPO", or, once done,
    /// "removed …".
    pub fn summary(&self, done: bool) -> String {
        let what = format!(
            "{} of {} sets ({} backups)",
            self.removed_sets(),
            self.sets.len(),
            self.removed_backups()
        );
        let held = match self.held_offsite {
            0 => String::new(),
            n => format!("; {n} sets kept because an off-site copy lacks them"),
        };
        if done {
            format!(
                "removed {what} from {}{held}; `lifeboat gc` frees their data",
                self.repository
            )
        } else {
            format!("{what} would be removed from {}{held}", self.repository)
        }
    }

    /// Removes the sets the plan does not keep, manifest by manifest (a
    /// set's data stays until `gc`). A cancel before the first removal
    /// removes nothing; once removing, the plan runs to its end (removals
    /// take milliseconds, and half a set is worse than a whole one). A
    /// failure says how far it got.
    pub async fn execute(
        &self,
        store: &dyn Store,
        cancel: &CancellationToken,
    ) -> Result<PruneDone> {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut done = PruneDone::default();
        for d in self.removed() {
            for k in &d.manifests {
                store
                    .delete(&ObjectKey::Manifest(k.clone()))
                    .await
                    .map_err(|e| match done.backups {
                        0 => e,
                        _ => Error::Remote {
                            remote: store.describe(),
                            reason: format!(
                                "removing {} failed after {} of {} backups were removed: {}",
                                k.object_key(),
                                done.backups,
                                self.removed_backups(),
                                crate::text::describe(&e)
                            ),
                            transient: false,
                        },
                    })?;
                done.backups += 1;
            }
            done.sets += 1;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::Rules;
    use crate::store::memory::Faults;
    use crate::testkit::{self, image, memory, put_set};

    async fn three_sets() -> (
        std::sync::Arc<crate::store::memory::MemoryStore>,
        crate::store::DynStore,
        Vec<(ManifestKey, crate::format::Manifest)>,
    ) {
        let (mem, store) = memory();
        testkit::init(store.as_ref()).await;
        let mut all = Vec::new();
        for (i, (set, at)) in [
            ("a1", "2026-12-01T02:00:00Z"),
            ("b2", "2026-12-02T02:00:00Z"),
            ("c3", "2026-12-03T02:00:00Z"),
        ]
        .iter()
        .enumerate()
        {
            all.extend(
                put_set(
                    store.as_ref(),
                    "web",
                    set,
                    at,
                    &[("root", image(i as u8, 1)), ("data", image(9, 1))],
                )
                .await,
            );
        }
        (mem, store, all)
    }

    fn keep_last(n: usize, all: &[(ManifestKey, crate::format::Manifest)]) -> PrunePlan {
        let rules = Rules {
            last: n,
            ..Default::default()
        };
        PrunePlan::new(
            "memory".into(),
            crate::retention::plan(all, &rules, &chrono::Utc).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_plan_removes_whole_sets_and_nothing_else() {
        let (_, store, all) = three_sets().await;
        let plan = keep_last(1, &all);
        assert_eq!((plan.removed_sets(), plan.removed_backups()), (2, 4));
        let done = plan
            .execute(store.as_ref(), &testkit::cancel())
            .await
            .unwrap();
        assert_eq!(
            done,
            PruneDone {
                sets: 2,
                backups: 4
            }
        );
        let left = crate::repository::list_manifests(store.as_ref())
            .await
            .unwrap();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|k| all[4..].iter().any(|(a, _)| a == k)));
        assert!(plan
            .summary(true)
            .starts_with("removed 2 of 3 sets (4 backups)"));
    }

    #[tokio::test]
    async fn a_cancelled_prune_removes_nothing() {
        let (_, store, all) = three_sets().await;
        let c = testkit::cancel();
        c.cancel();
        let e = keep_last(1, &all)
            .execute(store.as_ref(), &c)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Cancelled), "{e}");
        assert_eq!(
            crate::repository::list_manifests(store.as_ref())
                .await
                .unwrap()
                .len(),
            6
        );
    }

    #[tokio::test]
    async fn a_prune_that_fails_half_way_says_how_far_it_got() {
        let (mem, store, all) = three_sets().await;
        mem.set_faults(Faults {
            fail_deletes_from: Some(3),
            ..Default::default()
        });
        let e = keep_last(1, &all)
            .execute(store.as_ref(), &testkit::cancel())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("after 2 of 4 backups were removed"),
            "{e}"
        );
        // The first set went whole; the rest is still there.
        assert_eq!(
            crate::repository::list_manifests(store.as_ref())
                .await
                .unwrap()
                .len(),
            4
        );
    }
}
