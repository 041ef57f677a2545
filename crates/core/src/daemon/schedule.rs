//! When a VM's policy runs: pure functions of the schedule, what ran
//! before and the time, so the scheduler is tested on any clock.
//!
//! A VM's *base* is the later of the slot its last run covered and its
//! newest backup (a manual backup counts). The next slot after the base
//! is due once the clock passes it. After downtime, one run covers every
//! missed slot (it takes the newest of them as its slot): catch-up runs
//! once, not once per slot.

use chrono::{DateTime, Duration, Utc};

use crate::policy::Policy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run now, for this slot; `missed` slots before it are covered too.
    Due { slot: DateTime<Utc>, missed: usize },
    /// Nothing before this time.
    At(DateTime<Utc>),
    /// No schedule, or one that never fires.
    Never,
}

/// The most slots walked when catching up (a minute schedule after two
/// months of downtime); beyond it the newest slot is taken as now.
const MAX_WALK: usize = 100_000;

pub fn next(
    policy: &Policy,
    last_slot: Option<DateTime<Utc>>,
    newest_backup: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Next {
    if policy.schedule.is_none() {
        return Next::Never;
    }
    let base = match (last_slot, newest_backup) {
        (None, None) => {
            return Next::Due {
                slot: now,
                missed: 0,
            }
        }
        (a, b) => a.max(b).unwrap_or(now),
    };
    let Some(first) = policy.next_slot(base) else {
        return Next::Never;
    };
    if first > now {
        return Next::At(first);
    }
    let mut slot = first;
    let mut missed = 0;
    for _ in 0..MAX_WALK {
        match policy.next_slot(slot) {
            Some(n) if n <= now => {
                slot = n;
                missed += 1;
            }
            _ => return Next::Due { slot, missed },
        }
    }
    Next::Due { slot: now, missed }
}

/// Waits before the retries of a failed run: 1, 5 and 15 minutes. A retry
/// that would land after the next slot is dropped: the slot runs instead.
pub const BACKOFF: [i64; 3] = [60, 300, 900];

/// When to retry after `attempt` failures (1-based), or None to give up
/// and leave the work to the next slot.
pub fn retry_at(
    policy: &Policy,
    slot: DateTime<Utc>,
    attempt: usize,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let wait = *BACKOFF.get(attempt.checked_sub(1)?)?;
    let at = now + Duration::seconds(wait);
    match policy.next_slot(slot) {
        Some(next_slot) if next_slot <= at => None,
        _ => Some(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn policy(schedule: &str) -> Policy {
        let c = PolicyConfig {
            schedule: Some(schedule.into()),
            timezone: Some("UTC".into()),
            keep_last: Some(3),
            ..Default::default()
        };
        Policy::check("p", &c, &[]).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_vm_never_backed_up_is_due_at_once() {
        let p = policy("daily 02:30");
        let now = t("2026-11-27T12:00:00Z");
        assert_eq!(
            next(&p, None, None, now),
            Next::Due {
                slot: now,
                missed: 0
            }
        );
    }

    #[test]
    fn the_next_slot_after_the_last_one() {
        let p = policy("daily 02:30");
        let last = t("2026-11-27T02:30:00Z");
        assert_eq!(
            next(&p, Some(last), None, t("2026-11-27T12:00:00Z")),
            Next::At(t("2026-11-28T02:30:00Z"))
        );
        // A manual backup after the slot moves nothing forward by itself:
        // the next slot still comes.
        assert_eq!(
            next(
                &p,
                Some(last),
                Some(t("2026-11-27T11:00:00Z")),
                t("2026-11-27T12:00:00Z")
            ),
            Next::At(t("2026-11-28T02:30:00Z"))
        );
    }

    #[test]
    fn downtime_catches_up_once() {
        let p = policy("every 6h");
        let last = t("2026-11-20T00:00:00Z");
        // Down for a week: 28 slots passed; one run, for the newest.
        let now = t("2026-11-27T01:00:00Z");
        match next(&p, Some(last), None, now) {
            Next::Due { slot, missed } => {
                assert_eq!(slot, t("2026-11-27T00:00:00Z"));
                assert_eq!(missed, 27);
                // Once it ran, the next is the following slot, not a backlog.
                assert_eq!(
                    next(&p, Some(slot), None, now),
                    Next::At(t("2026-11-27T06:00:00Z"))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retries_back_off_and_yield_to_the_next_slot() {
        let p = policy("every 1h");
        let slot = t("2026-11-27T10:00:00Z");
        let now = t("2026-11-27T10:01:00Z");
        assert_eq!(retry_at(&p, slot, 1, now), Some(t("2026-11-27T10:02:00Z")));
        assert_eq!(retry_at(&p, slot, 2, now), Some(t("2026-11-27T10:06:00Z")));
        assert_eq!(retry_at(&p, slot, 3, now), Some(t("2026-11-27T10:16:00Z")));
        assert_eq!(
            retry_at(&p, slot, 4, now),
            None,
            "three retries, then the next slot"
        );
        // Late in the hour: the next slot comes before the retry would.
        assert_eq!(retry_at(&p, slot, 3, t("2026-11-27T10:50:00Z")), None);
    }

    #[test]
    fn schedules_in_a_time_zone_across_dst() {
        let c = PolicyConfig {
            schedule: Some("daily 02:30".into()),
            timezone: Some("Europe/Berlin".into()),
            keep_last: Some(3),
            ..Default::default()
        };
        let p = Policy::check("p", &c, &[]).unwrap();
        // 2026-03-29: Berlin skips 02:00-03:00; that day's slot runs at
        // 03:30 CEST (01:30 UTC), late but not lost, and the next day's at
        // 02:30 CEST (00:30 UTC).
        let last = t("2026-03-28T01:30:00Z"); // 02:30 CET
        assert_eq!(
            next(&p, Some(last), None, t("2026-03-28T12:00:00Z")),
            Next::At(t("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            next(
                &p,
                Some(t("2026-03-29T01:30:00Z")),
                None,
                t("2026-03-29T12:00:00Z")
            ),
            Next::At(t("2026-03-30T00:30:00Z"))
        );
    }
}
