//! Who holds which lock on the server. Every lock document a token writes
//! is stamped by the server with that token's name and scope and when the
//! server first saw the lock (`"served"`, by the server's clock), so that:
//!
//! - a token can refresh and release only its own locks (an admin can
//!   break any, and a broken lock cannot be refreshed back to life);
//! - a scoped token sees its own scope's locks and the gc's, never another
//!   site's hosts, pids and paths;
//! - a token holds a bounded number of live locks;
//! - a push's session has a start the client cannot forge: a new backup
//!   may be dated at most `--max-backup-lag` before the oldest live lock of
//!   the token that sends it (see `mod.rs`, `check_place_in_time`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use lifeboat_core::lock::STALE;
use lifeboat_core::store::DocKey;

use super::tokens::{Grant, Role};

/// Live locks one token may hold at once (a push holds one; a daemon a
/// few at a time).
pub const MAX_LOCKS_PER_TOKEN: usize = 16;
/// Broken locks remembered (refreshes of older ones are refused as
/// unknown owners anyway once the file is gone and re-created by another).
const BROKEN_KEPT: usize = 1024;

/// What the server stamps into a lock document it stores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stamp {
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub first_seen: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Record {
    /// None: written on the server's host (a local lifeboat), not through
    /// a token; only an admin may change it.
    stamp: Option<Stamp>,
    last_put: DateTime<Utc>,
}

/// Why a lock change is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotYours,
    Broken(DateTime<Utc>),
    TooMany,
}

/// How a lock document looks to a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Sight {
    Full,
    /// Another site's gc lock: its existence, not its details.
    Redacted,
    Hidden,
}

#[derive(Default)]
pub struct LockRegistry {
    records: Mutex<HashMap<String, Record>>,
    broken: Mutex<VecDeque<(String, DateTime<Utc>)>>,
}

fn name_of(key: &DocKey) -> &str {
    match key {
        DocKey::Lock(n) => n,
        DocKey::Protection(_) => "",
    }
}

impl LockRegistry {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns a lock found on disk (at start, or written locally since).
    pub fn learn(&self, key: &DocKey, body: &[u8], modified: DateTime<Utc>) {
        let stamp = stamp_of(body);
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name_of(key).to_string())
            .or_insert(Record {
                stamp,
                last_put: modified,
            });
    }

    pub fn knows(&self, key: &DocKey) -> bool {
        self.records().contains_key(name_of(key))
    }

    /// May `grant` write this lock? Returns the stamp to store with it.
    pub fn check_put(
        &self,
        key: &DocKey,
        grant: &Grant,
        now: DateTime<Utc>,
    ) -> Result<Stamp, Refusal> {
        let name = name_of(key);
        if let Some((_, at)) = self
            .broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(n, _)| n == name)
        {
            return Err(Refusal::Broken(*at));
        }
        let records = self.records();
        match records.get(name) {
            Some(r) => match &r.stamp {
                Some(s) if s.token == grant.name => Ok(s.clone()),
                _ if grant.role == Role::Admin => Ok(r.stamp.clone().unwrap_or(Stamp {
                    token: grant.name.clone(),
                    scope: grant.scope.clone(),
                    first_seen: now,
                })),
                _ => Err(Refusal::NotYours),
            },
            None => {
                let live = records
                    .values()
                    .filter(|r| {
                        r.stamp.as_ref().is_some_and(|s| s.token == grant.name) && is_live(r, now)
                    })
                    .count();
                if live >= MAX_LOCKS_PER_TOKEN {
                    return Err(Refusal::TooMany);
                }
                Ok(Stamp {
                    token: grant.name.clone(),
                    scope: grant.scope.clone(),
                    first_seen: now,
                })
            }
        }
    }

    pub fn put_done(&self, key: &DocKey, stamp: Stamp, now: DateTime<Utc>) {
        self.records().insert(
            name_of(key).to_string(),
            Record {
                stamp: Some(stamp),
                last_put: now,
            },
        );
    }

    /// May `grant` remove this lock? An admin removing another's breaks
    /// it: the holder's refreshes are refused from then on.
    pub fn check_delete(&self, key: &DocKey, grant: &Grant) -> Result<(), Refusal> {
        let name = name_of(key);
        let records = self.records();
        match records.get(name).and_then(|r| r.stamp.as_ref()) {
            Some(s) if s.token == grant.name => Ok(()),
            _ if grant.role == Role::Admin => Ok(()),
            // A lock gone already: nothing to refuse.
            _ if !records.contains_key(name) => Ok(()),
            _ => Err(Refusal::NotYours),
        }
    }

    pub fn deleted(&self, key: &DocKey, grant: &Grant, now: DateTime<Utc>) {
        let name = name_of(key);
        let removed = self.records().remove(name);
        let theirs = removed
            .as_ref()
            .and_then(|r| r.stamp.as_ref())
            .is_some_and(|s| s.token != grant.name);
        if theirs && grant.role == Role::Admin {
            let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
            broken.push_back((name.to_string(), now));
            while broken.len() > BROKEN_KEPT {
                broken.pop_front();
            }
        }
    }

    /// Forgets locks whose files are gone (released by a local process).
    pub fn retain(&self, present: &std::collections::HashSet<String>) {
        self.records().retain(|n, _| present.contains(n));
    }

    pub fn sight(&self, key: &DocKey, grant: &Grant) -> Sight {
        if grant.role == Role::Admin {
            return Sight::Full;
        }
        let name = name_of(key);
        let records = self.records();
        let stamp = records.get(name).and_then(|r| r.stamp.as_ref());
        let same_site = match (&grant.scope, stamp) {
            // An unscoped token sees the whole repository anyway.
            (None, _) => true,
            (Some(scope), Some(s)) => s.scope.as_deref() == Some(scope.as_str()),
            (Some(_), None) => false,
        };
        if same_site {
            Sight::Full
        } else if name.starts_with("gc-") {
            Sight::Redacted
        } else {
            Sight::Hidden
        }
    }

    /// When the token's push session began: the server's first sight of
    /// the oldest lock the token still holds live.
    pub fn session_start(&self, token: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.records()
            .values()
            .filter(|r| is_live(r, now))
            .filter_map(|r| r.stamp.as_ref())
            .filter(|s| s.token == token)
            .map(|s| s.first_seen)
            .min()
    }
}

fn is_live(r: &Record, now: DateTime<Utc>) -> bool {
    (now - r.last_put)
        .to_std()
        .map(|age| age < STALE)
        .unwrap_or(true)
}

fn stamp_of(body: &[u8]) -> Option<Stamp> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::from_value(v.get("served")?.clone()).ok()
}

/// The document with the server's stamp in it.
pub fn stamped(body: &[u8], stamp: &Stamp) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    obj.insert("served".into(), serde_json::to_value(stamp).ok()?);
    serde_json::to_vec(&v).ok()
}

/// The document as a token that is not its owner's admin sees it: the
/// stamp (token names) removed; a redacted one says only that a gc runs.
pub fn shown(body: &[u8], sight: &Sight, modified: DateTime<Utc>) -> String {
    match sight {
        Sight::Redacted => serde_json::json!({
            "kind": "gc",
            "host": "the server",
            "pid": 0,
            "what": "a garbage collection run by the server's admin",
            "since": modified,
        })
        .to_string(),
        _ => {
            let mut v: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return String::from_utf8_lossy(body).into_owned(),
            };
            if let Some(o) = v.as_object_mut() {
                o.remove("served");
            }
            v.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str, role: Role, scope: Option<&str>) -> Grant {
        Grant {
            name: name.into(),
            role,
            scope: scope.map(String::from),
        }
    }

    #[test]
    fn owners_breaks_and_sight() {
        let reg = LockRegistry::default();
        let now = Utc::now();
        let a = grant("site-a", Role::Append, Some("a-"));
        let b = grant("site-b", Role::Append, Some("b-"));
        let admin = grant("root", Role::Admin, None);
        let k = DocKey::lock("writer-0a").unwrap();
        let s = reg.check_put(&k, &a, now).unwrap();
        reg.put_done(&k, s.clone(), now);
        // A refresh keeps the first sighting.
        let later = now + chrono::Duration::seconds(60);
        assert_eq!(reg.check_put(&k, &a, later).unwrap().first_seen, now);
        assert_eq!(reg.check_put(&k, &b, later), Err(Refusal::NotYours));
        assert_eq!(reg.check_delete(&k, &b), Err(Refusal::NotYours));
        assert_eq!(reg.sight(&k, &b), Sight::Hidden);
        assert_eq!(reg.sight(&k, &a), Sight::Full);
        assert_eq!(reg.session_start("site-a", later), Some(now));
        assert_eq!(reg.session_start("site-b", later), None);
        // An admin breaks it; the holder cannot bring it back.
        reg.check_delete(&k, &admin).unwrap();
        reg.deleted(&k, &admin, later);
        assert!(matches!(
            reg.check_put(&k, &a, later),
            Err(Refusal::Broken(_))
        ));
        // A token's live locks are bounded.
        for i in 0..MAX_LOCKS_PER_TOKEN {
            let k = DocKey::lock(&format!("writer-{i:x}0")).unwrap();
            let s = reg.check_put(&k, &b, now).unwrap();
            reg.put_done(&k, s, now);
        }
        let k = DocKey::lock("writer-ff").unwrap();
        assert_eq!(reg.check_put(&k, &b, now), Err(Refusal::TooMany));
        // Stale ones do not count.
        let much_later = now + chrono::Duration::hours(1);
        assert!(reg.check_put(&k, &b, much_later).is_ok());
        let gc = DocKey::lock("gc-01").unwrap();
        let s = reg.check_put(&gc, &admin, now).unwrap();
        reg.put_done(&gc, s, now);
        assert_eq!(reg.sight(&gc, &a), Sight::Redacted);
    }

    #[test]
    fn stamps_are_added_and_hidden() {
        let stamp = Stamp {
            token: "site-a".into(),
            scope: Some("a-".into()),
            first_seen: Utc::now(),
        };
        let body =
            br#"{"kind":"writer","host":"h","pid":1,"what":"push","since":"2026-01-01T00:00:00Z"}"#;
        let s = stamped(body, &stamp).unwrap();
        assert_eq!(stamp_of(&s), Some(stamp));
        let shown = shown(&s, &Sight::Full, Utc::now());
        assert!(
            !shown.contains("site-a") && shown.contains("push"),
            "{shown}"
        );
    }
}
