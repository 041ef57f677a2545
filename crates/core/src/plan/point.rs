//! A consistent point for a plan: for every VM, the newest backup set at
//! or before a time (a written time covers its span, as everywhere: a day
//! means up to its end). The service's RPO is its oldest member's; the
//! spread says how far apart the members' backups are.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Plan;
use crate::error::{Error, Result};
use crate::format::refs::{exact_time, TimeSpan};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub vm: String,
    pub set: String,
    pub time: DateTime<Utc>,
    /// `VM@<exact time>`: what selects this set and no other.
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub picks: Vec<Pick>,
    /// Newest member's backup minus the oldest's.
    pub spread_secs: i64,
    /// The oldest member's backup time: the service's recovery point.
    pub oldest: DateTime<Utc>,
}

impl Point {
    /// The service's RPO at `now`: the age of its oldest member's backup.
    pub fn rpo_secs(&self, now: DateTime<Utc>) -> i64 {
        (now - self.oldest).num_seconds().max(0)
    }

    pub fn pick(&self, vm: &str) -> Option<&Pick> {
        self.picks.iter().find(|p| p.vm == vm)
    }
}

/// The upper bound of `at` (exclusive); None: no bound (the newest sets).
pub fn bound(at: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    match at {
        None => Ok(None),
        Some("latest") => Ok(None),
        Some(a) => {
            let span = TimeSpan::parse(a.trim_start_matches('@')).ok_or_else(|| Error::BadRef {
                input: a.to_string(),
                reason: "a plan is drilled at a time: 2026-11-30, 2026-11-30T13:05 or 2026-11-30T13:05:12Z (each VM's newest backup at or before it)".into(),
            })?;
            Ok(Some(span.end))
        }
    }
}

/// Picks the point from what `store` holds.
pub async fn pick(store: &dyn Store, plan: &Plan, at: Option<&str>) -> Result<Point> {
    let b = bound(at)?;
    let all = crate::repository::load_manifests_where(store, |k| {
        plan.members.iter().any(|m| m.vm == k.vm) && b.is_none_or(|b| k.time < b)
    })
    .await?;
    pick_from(
        all.iter()
            .map(|(k, m)| (k.vm.as_str(), m.set.as_str(), m.created_at)),
        plan,
        at,
        &store.describe(),
    )
}

/// Picks the point from every backup known, as (VM, set, time); `place`
/// names where they are, for the error.
pub fn pick_from<'a>(
    backups: impl IntoIterator<Item = (&'a str, &'a str, DateTime<Utc>)>,
    plan: &Plan,
    at: Option<&str>,
    place: &str,
) -> Result<Point> {
    let b = bound(at)?;
    // A set's time is its newest volume's, as everywhere.
    let mut sets: std::collections::BTreeMap<(&str, &str), DateTime<Utc>> = Default::default();
    for (vm, set, t) in backups {
        if plan.members.iter().any(|m| m.vm == vm) {
            let e = sets.entry((vm, set)).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let mut picks = Vec::new();
    for m in &plan.members {
        let newest = sets
            .iter()
            .filter(|((vm, _), t)| *vm == m.vm && b.is_none_or(|b| **t < b))
            .max_by_key(|(_, t)| **t)
            .ok_or_else(|| {
                Error::NotFound(match at {
                    Some(a) => format!(
                        "plan {}: VM {} has no backup at or before {a} in {place}",
                        plan.name, m.vm
                    ),
                    None => format!("plan {}: VM {} has no backup in {place}", plan.name, m.vm),
                })
            })?;
        picks.push(Pick {
            vm: m.vm.clone(),
            set: newest.0 .1.to_string(),
            time: *newest.1,
            reference: format!("{}@{}", m.vm, exact_time(*newest.1)),
        });
    }
    let oldest = picks.iter().map(|p| p.time).min().unwrap_or_else(Utc::now);
    let newest = picks.iter().map(|p| p.time).max().unwrap_or(oldest);
    Ok(Point {
        spread_secs: (newest - oldest).num_seconds(),
        oldest,
        picks,
    })
}
