//! Policies: when a VM is backed up, what each repository keeps, where new
//! backups go and when a VM counts as late. Named in the config
//! (`[policy.NAME]`), attached per VM (`policy = "nightly"`) or as
//! `default_policy`. Everything is checked when the config loads, and a
//! bad policy is refused with the file, the line and the reason.
//!
//! ```toml
//! default_policy = "nightly"
//! [policy.nightly]
//! schedule = "daily 02:30"      # every 6h · weekly sun 03:00 · a cron expression
//! timezone = "Europe/Berlin"    # default: the host's
//! keep_last = 3
//! keep_daily = 7
//! keep_weekly = 4
//! keep_monthly = 6
//! push = ["offsite"]
//! rpo_late = "26h"
//! rpo_stale = "3d"
//! [policy.nightly.remote.offsite]   # what that remote keeps (default: the same)
//! keep_daily = 30
//! ```

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc, Weekday};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::retention::{parse_within, Rules};

/// A retention as the config writes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    pub keep_within: Option<String>,
}

impl RetentionConfig {
    /// None when no keep_* is given (the policy prunes nothing); an error
    /// when what is given keeps nothing.
    pub fn rules(&self) -> Result<Option<Rules>> {
        let given = self.keep_last.is_some()
            || self.keep_hourly.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
            || self.keep_yearly.is_some()
            || self.keep_within.is_some();
        if !given {
            return Ok(None);
        }
        let r = Rules {
            last: self.keep_last.unwrap_or(0),
            hourly: self.keep_hourly.unwrap_or(0),
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
            yearly: self.keep_yearly.unwrap_or(0),
            within: self.keep_within.as_deref().map(parse_within).transpose()?,
        };
        r.check()?;
        Ok(Some(r))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    pub keep_within: Option<String>,
    #[serde(default)]
    pub push: Vec<String>,
    /// Per remote: what it keeps (default: the policy's retention).
    #[serde(default)]
    pub remote: BTreeMap<String, RetentionConfig>,
    pub deep_verify_every: Option<String>,
    pub rpo_late: Option<String>,
    pub rpo_stale: Option<String>,
}

impl PolicyConfig {
    /// The policy's own retention (what the local repository keeps).
    pub fn retention(&self) -> RetentionConfig {
        RetentionConfig {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.clone(),
        }
    }
}

/// When a policy runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(chrono::Duration),
    Daily(NaiveTime),
    Weekly(Weekday, NaiveTime),
    Cron(Box<croner::Cron>),
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Schedule> {
        let t = s.trim();
        let bad = |why: &str| {
            Error::BadInput(format!(
                "schedule {s:?}: {why} (use `every 6h`, `daily 02:30`, `weekly sun 03:00` or a cron expression)"
            ))
        };
        let time = |hm: &str| {
            NaiveTime::parse_from_str(hm, "%H:%M")
                .map_err(|_| bad("the time must be HH:MM, 00:00 to 23:59"))
        };
        let words: Vec<&str> = t.split_whitespace().collect();
        match words.as_slice() {
            ["every", d] => {
                let d = humantime::parse_duration(d).map_err(|_| bad("not a duration"))?;
                if d < std::time::Duration::from_secs(60) {
                    return Err(bad("at most once a minute"));
                }
                Ok(Schedule::Every(
                    chrono::Duration::from_std(d).map_err(|_| bad("too long"))?,
                ))
            }
            ["daily", hm] => Ok(Schedule::Daily(time(hm)?)),
            ["weekly", day, hm] => {
                let wd = Weekday::from_str(day).map_err(|_| bad("not a weekday (mon … sun)"))?;
                Ok(Schedule::Weekly(wd, time(hm)?))
            }
            _ => {
                // `cron 30 2 * * *` reads as the cron expression it names.
                let expr = t.strip_prefix("cron ").map(str::trim).unwrap_or(t);
                let c = croner::Cron::from_str(expr)
                    .map_err(|e| bad(&format!("not a cron expression: {e}")))?;
                Ok(Schedule::Cron(Box::new(c)))
            }
        }
    }
}

impl Schedule {
    /// The next run after `after` in `tz`; None when the schedule never
    /// fires (a cron expression for 31 February).
    pub fn next_after<Tz: TimeZone>(&self, after: DateTime<Utc>, tz: &Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(tz);
        match self {
            // Anchored to the Unix epoch: `every 6h` runs at 00, 06, 12 and
            // 18 UTC whatever ran before, as a timer on a calendar would.
            Schedule::Every(d) => {
                let step = d.num_seconds().max(60);
                let t = after.timestamp();
                let next = (t.div_euclid(step) + 1) * step;
                DateTime::from_timestamp(next, 0)
            }
            Schedule::Daily(t) => (0..3).find_map(|i| {
                let day = local.date_naive() + chrono::Days::new(i);
                let at = local_instant(tz, day.and_time(*t))?;
                (at > local).then(|| at.with_timezone(&Utc))
            }),
            Schedule::Weekly(wd, t) => (0..9).find_map(|i| {
                let day = local.date_naive() + chrono::Days::new(i);
                if day.weekday() != *wd {
                    return None;
                }
                let at = local_instant(tz, day.and_time(*t))?;
                (at > local).then(|| at.with_timezone(&Utc))
            }),
            Schedule::Cron(c) => c
                .find_next_occurrence(&local, false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// A local wall-clock time as an instant. A time that a DST change skips
/// (02:30 on the spring-forward night) runs at the same time an hour on,
/// as cron does: the slot is late, never lost. A repeated one runs once.
fn local_instant<Tz: TimeZone>(tz: &Tz, at: chrono::NaiveDateTime) -> Option<DateTime<Tz>> {
    tz.from_local_datetime(&at).earliest().or_else(|| {
        tz.from_local_datetime(&(at + chrono::Duration::hours(1)))
            .earliest()
    })
}

/// A policy, checked.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub schedule: Option<Schedule>,
    pub timezone: Option<chrono_tz::Tz>,
    pub retention: Option<Rules>,
    pub remote_retention: BTreeMap<String, Rules>,
    pub push: Vec<String>,
    pub deep_verify_every: Option<chrono::Duration>,
    pub rpo_late: chrono::Duration,
    pub rpo_stale: chrono::Duration,
}

impl Policy {
    /// Checks a policy against the configured remotes; the error is the
    /// reason (the caller adds file and line).
    pub fn check(
        name: &str,
        c: &PolicyConfig,
        remotes: &[&str],
    ) -> std::result::Result<Policy, String> {
        let msg = |e: Error| e.to_string();
        let timezone = c
            .timezone
            .as_deref()
            .map(|z| {
                z.parse::<chrono_tz::Tz>().map_err(|_| {
                    format!("timezone {z:?} is not a known zone (e.g. Europe/Berlin, UTC)")
                })
            })
            .transpose()?;
        let schedule = c
            .schedule
            .as_deref()
            .map(Schedule::from_str)
            .transpose()
            .map_err(msg)?;
        if let Some(s) = &schedule {
            let now = Utc::now();
            let next = match &timezone {
                Some(tz) => s.next_after(now, tz),
                None => s.next_after(now, &chrono::Local),
            };
            if next.is_none() {
                return Err(format!(
                    "schedule {:?} never fires",
                    c.schedule.as_deref().unwrap_or_default()
                ));
            }
        }
        let retention = c.retention().rules().map_err(msg)?;
        let mut remote_retention = BTreeMap::new();
        for (r, rc) in &c.remote {
            if !remotes.contains(&r.as_str()) {
                return Err(format!("remote {r:?} is not a configured remote"));
            }
            if let Some(rules) = rc.rules().map_err(|e| format!("remote {r}: {e}"))? {
                remote_retention.insert(r.clone(), rules);
            }
        }
        for p in &c.push {
            if !remotes.contains(&p.as_str()) {
                return Err(format!(
                    "push target {p:?} is not a configured remote (configured: {})",
                    if remotes.is_empty() {
                        "none".to_string()
                    } else {
                        remotes.join(", ")
                    }
                ));
            }
        }
        let dur = |v: &Option<String>, what: &str, default: Option<chrono::Duration>| match v {
            Some(s) => humantime::parse_duration(s)
                .ok()
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .map(Some)
                .ok_or_else(|| format!("{what} {s:?} is not a duration (e.g. 26h, 3d, 30d)")),
            None => Ok(default),
        };
        let rpo_late =
            dur(&c.rpo_late, "rpo_late", Some(chrono::Duration::hours(26)))?.unwrap_or_default();
        let rpo_stale = dur(&c.rpo_stale, "rpo_stale", Some(rpo_late * 3))?.unwrap_or_default();
        if rpo_stale < rpo_late {
            return Err("rpo_stale must not be shorter than rpo_late".into());
        }
        Ok(Policy {
            name: name.to_string(),
            schedule,
            timezone,
            retention,
            remote_retention,
            push: c.push.clone(),
            deep_verify_every: dur(&c.deep_verify_every, "deep_verify_every", None)?,
            rpo_late,
            rpo_stale,
        })
    }

    /// What `remote` keeps (None: the local repository).
    /// The next slot after `after`, in the policy's time zone (the host's
    /// when it names none).
    pub fn next_slot(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let s = self.schedule.as_ref()?;
        match &self.timezone {
            Some(tz) => s.next_after(after, tz),
            None => s.next_after(after, &chrono::Local),
        }
    }

    /// `retention::plan` in the policy's time zone (the host's when it
    /// names none).
    pub fn plan_retention(
        &self,
        backups: &[(crate::format::ManifestKey, crate::format::Manifest)],
        rules: &Rules,
    ) -> Result<Vec<crate::retention::Decision>> {
        match &self.timezone {
            Some(tz) => crate::retention::plan(backups, rules, tz),
            None => crate::retention::plan(backups, rules, &chrono::Local),
        }
    }

    pub fn retention_for(&self, remote: Option<&str>) -> Option<&Rules> {
        remote
            .and_then(|r| self.remote_retention.get(r))
            .or(self.retention.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> PolicyConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn schedules_parse_and_fire() {
        let now: DateTime<Utc> = "2026-11-27T10:00:00Z".parse().unwrap();
        let next = |s: &str| s.parse::<Schedule>().unwrap().next_after(now, &Utc);
        // Anchored: 00, 06, 12, 18 UTC.
        assert_eq!(next("every 6h").unwrap(), now + chrono::Duration::hours(2));
        assert_eq!(
            next("daily 02:30").unwrap().to_rfc3339(),
            "2026-11-28T02:30:00+00:00"
        );
        assert_eq!(
            next("daily 12:00").unwrap().to_rfc3339(),
            "2026-11-27T12:00:00+00:00"
        );
        assert_eq!(
            next("weekly sun 03:00").unwrap().to_rfc3339(),
            "2026-11-29T03:00:00+00:00"
        );
        assert_eq!(
            next("30 2 * * *").unwrap().to_rfc3339(),
            "2026-11-28T02:30:00+00:00"
        );
        // As the README writes it.
        assert_eq!(next("cron 30 2 * * *"), next("30 2 * * *"));
        for bad in [
            "daily 25:00",
            "every 10s",
            "weekly someday 03:00",
            "not a schedule at all",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policies_are_checked_against_the_config() {
        let remotes = ["offsite"];
        let ok = cfg("schedule = \"daily 02:30\"\ntimezone = \"Europe/Berlin\"\nkeep_daily = 7\npush = [\"offsite\"]\n[remote.offsite]\nkeep_daily = 30\n");
        let p = Policy::check("nightly", &ok, &remotes).unwrap();
        assert_eq!(p.retention_for(None).unwrap().daily, 7);
        assert_eq!(p.retention_for(Some("offsite")).unwrap().daily, 30);
        assert_eq!(p.rpo_late, chrono::Duration::hours(26));
        let cases = [
            ("push = [\"cloud\"]", "not a configured remote"),
            ("keep_last = 0", "keeps nothing"),
            ("schedule = \"daily 24:30\"", "HH:MM"),
            ("schedule = \"0 0 31 2 *\"", "never fires"),
            ("timezone = \"Mars/Olympus\"", "not a known zone"),
            ("rpo_late = \"3d\"\nrpo_stale = \"1d\"", "shorter"),
        ];
        for (text, want) in cases {
            let e = Policy::check("p", &cfg(text), &remotes).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(Policy::check("p", &cfg(""), &remotes)
            .unwrap()
            .retention
            .is_none());
        assert!(toml::from_str::<PolicyConfig>("schedul = \"daily 02:30\"").is_err());
    }
}
