//! Retention: which backups a policy keeps. Decided per VM over whole
//! backup sets (the volumes of one VM backup go or stay together), newest
//! first, in the manner of restic's `forget` and Proxmox Backup Server's
//! prune: keep-last N, then the newest set of each of the last N hours,
//! days, weeks (ISO), months and years that have a backup, and every set
//! within a duration. Buckets are taken in the given time zone, so a day
//! is a local day across DST changes. Protected sets and each VM's newest
//! set are always kept: a policy never deletes a VM's last recovery point.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::{Manifest, ManifestKey};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rules {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    /// Keep every set newer than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<chrono::Duration>,
}

impl Rules {
    /// A policy that keeps nothing is refused: it is always a mistake.
    pub fn check(&self) -> Result<()> {
        if self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly == 0
            && self.within.is_none()
        {
            return Err(Error::BadInput(
                "this retention keeps nothing: give at least one of keep-last, keep-hourly, \
                 keep-daily, keep-weekly, keep-monthly, keep-yearly, keep-within"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One backup set of a VM and what the policy does with it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub vm: String,
    pub set: String,
    /// The set's time: its newest volume's.
    pub time: DateTime<Utc>,
    /// The same time in the zone the buckets were taken in (a "day" is
    /// that zone's day), as listings show it.
    pub local_time: String,
    pub keep: bool,
    /// Why it is kept (`last 1`, `daily 2026-11-25`, `protected`, …);
    /// empty when it is removed.
    pub reasons: Vec<String>,
    /// The set's backups, as `vm/volume@time id`.
    pub backups: Vec<String>,
    #[serde(skip)]
    pub manifests: Vec<ManifestKey>,
}

/// One set while deciding: its time (its newest volume's), whether any of
/// its backups is protected, and its backups.
#[derive(Default)]
struct SetInfo {
    time: Option<DateTime<Utc>>,
    protected: bool,
    manifests: Vec<ManifestKey>,
}

/// How a bucket rule names a set's bucket from its local time.
type BucketKey = fn(&chrono::NaiveDateTime) -> String;

/// Decisions for every set of every VM in `backups` (newest first per VM).
pub fn plan<Tz: TimeZone>(
    backups: &[(ManifestKey, Manifest)],
    rules: &Rules,
    tz: &Tz,
) -> Result<Vec<Decision>>
where
    Tz::Offset: std::fmt::Display,
{
    rules.check()?;
    let mut sets: BTreeMap<&str, BTreeMap<&str, SetInfo>> = BTreeMap::new();
    for (k, m) in backups {
        let e = sets
            .entry(k.vm.as_str())
            .or_default()
            .entry(m.set.as_str())
            .or_default();
        e.time = Some(e.time.map_or(m.created_at, |t| t.max(m.created_at)));
        e.protected |= m.labels.protected;
        e.manifests.push(k.clone());
    }
    let mut out = Vec::new();
    for (vm, by_set) in sets {
        let mut list: Vec<(&str, DateTime<Utc>, SetInfo)> = by_set
            .into_iter()
            .map(|(s, i)| (s, i.time.unwrap_or_default(), i))
            .collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(a.0)));
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); list.len()];
        for (i, r) in reasons.iter_mut().enumerate().take(rules.last) {
            r.push(format!("last {}", i + 1));
        }
        let buckets: [(usize, &str, BucketKey); 5] = [
            (rules.hourly, "hourly", |t| {
                t.format("%Y-%m-%d %H:00").to_string()
            }),
            (rules.daily, "daily", |t| t.format("%Y-%m-%d").to_string()),
            (rules.weekly, "weekly", |t| {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }),
            (rules.monthly, "monthly", |t| t.format("%Y-%m").to_string()),
            (rules.yearly, "yearly", |t| t.year().to_string()),
        ];
        for (n, name, key) in buckets {
            let mut seen = BTreeSet::new();
            for (i, (_, t, _)) in list.iter().enumerate() {
                if seen.len() >= n {
                    break;
                }
                let b = key(&t.with_timezone(tz).naive_local());
                // The newest set of each bucket stands for it.
                if seen.insert(b.clone()) {
                    reasons[i].push(format!("{name} {b}"));
                }
            }
        }
        // Counted back from the VM's newest set, as restic does: if
        // backups stall, "keep 14 days" still keeps the last 14 days of
        // backups there are, instead of emptying the VM.
        if let (Some(d), Some(newest)) = (rules.within, list.first().map(|x| x.1)) {
            for (i, (_, t, _)) in list.iter().enumerate() {
                if newest - *t <= d {
                    reasons[i].push("within".into());
                }
            }
        }
        for (i, (_, _, info)) in list.iter().enumerate() {
            if info.protected {
                reasons[i].push("protected".into());
            }
        }
        if let Some(r) = reasons.first_mut() {
            if r.is_empty() {
                r.push("newest (always kept)".into());
            }
        }
        for ((set, time, info), reasons) in list.into_iter().zip(reasons) {
            let mut manifests = info.manifests;
            manifests.sort();
            out.push(Decision {
                vm: vm.to_string(),
                set: set.to_string(),
                local_time: time
                    .with_timezone(tz)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string(),
                time,
                keep: !reasons.is_empty(),
                reasons,
                backups: manifests
                    .iter()
                    .map(crate::repo::verify::describe)
                    .collect(),
                manifests,
            });
        }
    }
    Ok(out)
}

/// `14d`, `36h`, `2w`: a duration for keep-within (counted back from
/// each VM's newest backup). Zero is refused: it keeps nothing but what
/// other rules keep, which is never what was meant.
pub fn parse_within(s: &str) -> Result<chrono::Duration> {
    let d = humantime::parse_duration(s)
        .map_err(|e| Error::BadInput(format!("keep-within {s:?}: {e} (e.g. 14d, 36h, 2w)")))?;
    if d.is_zero() {
        return Err(Error::BadInput(format!(
            "keep-within {s:?} keeps nothing: give a duration such as 14d, or leave keep-within out"
        )));
    }
    chrono::Duration::from_std(d)
        .map_err(|_| Error::BadInput(format!("keep-within {s:?} is too long")))
}

/// Keeps every set `why` has a reason for, whatever the rules said (a
/// server's immutability window, a set no off-site copy holds yet), and
/// records the reason.
pub fn hold(decisions: &mut [Decision], why: impl Fn(&Decision) -> Option<String>) {
    for d in decisions.iter_mut() {
        if let Some(r) = why(d) {
            d.keep = true;
            d.reasons.push(r);
        }
    }
}

/// The reason a set inside a server's immutability window stays: the
/// latest time one of its backups may be removed.
pub fn immutable_reason(
    d: &Decision,
    until: &std::collections::BTreeMap<ManifestKey, DateTime<Utc>>,
) -> Option<String> {
    d.manifests
        .iter()
        .filter_map(|k| until.get(k))
        .max()
        .map(|t| {
            format!(
                "immutable on the server until {}",
                t.format("%Y-%m-%d %H:%M UTC")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{
        ImageFormat, Labels, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
    };
    use crate::format::Id;
    use chrono::Timelike;

    fn backup(
        vm: &str,
        vol: &str,
        t: DateTime<Utc>,
        set: &str,
        protected: bool,
    ) -> (ManifestKey, Manifest) {
        let m = Manifest {
            format: 1,
            vm: VmInfo { name: vm.into() },
            volume: VolumeInfo {
                name: vol.into(),
                role: Role::Root,
                format: ImageFormat::Raw,
                virtual_size: 1,
            },
            created_at: t,
            chunk_size: 1 << 20,
            index: Id::of(set.as_bytes()),
            parent: None,
            set: set.into(),
            source: SourceInfo {
                host: "h".into(),
                path: "/p".into(),
            },
            stats: Stats::default(),
            labels: Labels {
                protected,
                ..Default::default()
            },
            definition: None,
            capture: None,
        };
        (m.key(), m)
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter(|d| d.keep)
            .map(|d| d.time.format("%Y-%m-%d %H:%M").to_string())
            .collect()
    }

    /// Hourly backups over 18 months with gaps; the survivors of a
    /// classic policy, as a table.
    #[test]
    fn hourly_backups_over_eighteen_months() {
        let start = t("2025-06-01T00:30:00Z");
        let mut b = Vec::new();
        let mut h = 0;
        while h < 24 * 548 {
            let at = start + chrono::Duration::hours(h);
            // Gaps: the whole of 2025-09, and every Sunday's nights.
            let gap = at.format("%Y-%m").to_string() == "2025-09"
                || (at.weekday() == chrono::Weekday::Sun && at.hour() < 6);
            if !gap {
                b.push(backup("vm", "root", at, &format!("s{h}"), false));
            }
            h += 1;
        }
        let rules = Rules {
            last: 3,
            daily: 7,
            weekly: 4,
            monthly: 6,
            yearly: 2,
            ..Default::default()
        };
        let d = plan(&b, &rules, &Utc).unwrap();
        // 2026-11-30 is a Monday: ISO week 48's newest (Sunday the 29th)
        // is already kept as a day.
        let expected = [
            "2026-11-30 23:30", // last 1, daily, weekly W49, monthly, yearly
            "2026-11-30 22:30", // last 2
            "2026-11-30 21:30", // last 3
            "2026-11-29 23:30", // daily, weekly W48
            "2026-11-28 23:30",
            "2026-11-27 23:30",
            "2026-11-26 23:30",
            "2026-11-25 23:30",
            "2026-11-24 23:30", // daily 7
            "2026-11-22 23:30", // weekly W47
            "2026-11-15 23:30", // weekly W46
            "2026-10-31 23:30", // monthly
            "2026-09-30 23:30",
            "2026-08-31 23:30",
            "2026-07-31 23:30",
            "2026-06-30 23:30", // monthly 6
            "2025-12-31 23:30", // yearly 2
        ];
        assert_eq!(kept(&d), expected);
        let by_time = |s: &str| {
            d.iter()
                .find(|d| d.time.format("%Y-%m-%d %H:%M").to_string() == s)
                .unwrap()
        };
        assert_eq!(
            by_time("2026-11-30 23:30").reasons,
            vec![
                "last 1",
                "daily 2026-11-30",
                "weekly 2026-W49",
                "monthly 2026-11",
                "yearly 2026"
            ]
        );
        assert!(!by_time("2026-11-30 20:30").keep);
        // Eighteen months back: September 2025 had no backup, so it is
        // not a month; August stands in its place.
        let all_months = Rules {
            monthly: 18,
            ..Default::default()
        };
        let d = plan(&b, &all_months, &Utc).unwrap();
        let k = kept(&d);
        assert_eq!(k.len(), 17, "{k:#?}");
        assert!(!k.iter().any(|s| s.starts_with("2025-09")), "{k:#?}");
        assert!(k.contains(&"2025-08-31 23:30".to_string()));
        assert!(k.contains(&"2025-06-30 23:30".to_string()));
    }

    #[test]
    fn days_are_local_days_across_dst() {
        // Europe/Berlin leaves DST on 2026-10-25 at 03:00 local (01:00 UTC).
        let tz = chrono_tz::Europe::Berlin;
        let b = vec![
            // 23:30 local on the 24th (CEST, UTC+2) = 21:30 UTC.
            backup("vm", "root", t("2026-10-24T21:30:00Z"), "a", false),
            // 00:30 local on the 25th (still CEST) = 22:30 UTC on the 24th.
            backup("vm", "root", t("2026-10-24T22:30:00Z"), "b", false),
            // 23:30 local on the 25th (CET, UTC+1) = 22:30 UTC.
            backup("vm", "root", t("2026-10-25T22:30:00Z"), "c", false),
            // 00:30 local on the 26th (CET) = 23:30 UTC on the 25th.
            backup("vm", "root", t("2026-10-25T23:30:00Z"), "d", false),
        ];
        let rules = Rules {
            daily: 10,
            ..Default::default()
        };
        let d = plan(&b, &rules, &tz).unwrap();
        let sets: Vec<(&str, bool)> = d.iter().map(|d| (d.set.as_str(), d.keep)).collect();
        // Local days: 24th {a}, 25th {b, c}, 26th {d}: c stands for the
        // 25th, b goes. In UTC days, b would have stood for the 24th.
        assert_eq!(
            sets,
            vec![("d", true), ("c", true), ("b", false), ("a", true)]
        );
        let utc = plan(&b, &rules, &Utc).unwrap();
        assert!(utc.iter().find(|d| d.set == "b").unwrap().keep);
    }

    /// Backups stalled a month ago: keep-within still keeps the last 14
    /// days of backups there are (restic's reference point), not one.
    #[test]
    fn keep_within_counts_from_the_newest_backup() {
        let b: Vec<_> = (0..20)
            .map(|d| {
                backup(
                    "vm",
                    "root",
                    t("2026-10-01T02:00:00Z") + chrono::Duration::days(d),
                    &format!("s{d:02}"),
                    false,
                )
            })
            .collect();
        let rules = Rules {
            within: Some(parse_within("14d").unwrap()),
            ..Default::default()
        };
        let d = plan(&b, &rules, &Utc).unwrap();
        assert_eq!(kept(&d).len(), 15, "{:?}", kept(&d));
    }

    #[test]
    fn sets_stay_whole_protected_and_newest_are_kept() {
        let b = vec![
            backup("db", "root", t("2026-11-01T02:00:00Z"), "old", true),
            backup("db", "data", t("2026-11-01T02:01:00Z"), "old", true),
            backup("db", "root", t("2026-11-10T02:00:00Z"), "mid", false),
            backup("db", "data", t("2026-11-10T02:01:00Z"), "mid", false),
            backup("db", "root", t("2026-11-20T02:00:00Z"), "new", false),
            backup("db", "data", t("2026-11-20T02:01:00Z"), "new", false),
            backup("web", "root", t("2026-01-01T00:00:00Z"), "only", false),
        ];
        let rules = Rules {
            within: Some(parse_within("3d").unwrap()),
            ..Default::default()
        };
        let d = plan(&b, &rules, &Utc).unwrap();
        let by = |s: &str| d.iter().find(|d| d.set == s).unwrap();
        assert_eq!(by("new").reasons, vec!["within"]);
        assert_eq!(by("new").manifests.len(), 2, "a set goes or stays whole");
        assert!(!by("mid").keep && by("mid").manifests.len() == 2);
        assert_eq!(by("old").reasons, vec!["protected"]);
        // keep-within counts from each VM's newest: web's only backup,
        // older than 3 d, is within 3 d of itself.
        assert_eq!(by("only").reasons, vec!["within"]);
        assert!(Rules::default().check().is_err());
        assert!(parse_within("soon").is_err());
        assert!(parse_within("0d").is_err() && parse_within("0s").is_err());
    }
}
