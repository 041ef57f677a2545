//! Backup references: `<id prefix>`, `VM/VOLUME@latest`, `VM/VOLUME@~N`,
//! `VM/VOLUME@<RFC 3339>`, and for whole sets `VM@latest` (and `@~N`, `@time`).

use chrono::{DateTime, Utc};

use super::{Manifest, ManifestKey};
use crate::error::{Error, Result};
use crate::names::check_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Back(usize),
    /// A time as written. It covers the whole span its precision names
    /// (`…T13:05` the minute, `…T13:05:12` the second): a time copied from
    /// a listing that shows whole seconds selects the backup shown, not the
    /// one before it.
    At(TimeSpan),
}

/// The span of time a written time covers: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSpan {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl TimeSpan {
    /// Parses `2026-11-30`, `2026-11-30T13:05`, `2026-11-30 13:05:12`,
    /// `2026-11-30T13:05:12.345Z`, `…+01:00`, and the compact form of
    /// manifest keys (`20261130T130512.345Z`). No zone means UTC, the zone
    /// every listing prints.
    pub fn parse(s: &str) -> Option<TimeSpan> {
        let s = s.trim();
        let (date, rest) = if s.len() >= 10 && s.as_bytes().get(4) == Some(&b'-') {
            (
                chrono::NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()?,
                &s[10..],
            )
        } else {
            // Compact: 20261130T130512[.345]Z
            let d = chrono::NaiveDate::parse_from_str(s.get(..8)?, "%Y%m%d").ok()?;
            let rest = s.get(8..)?;
            let t = rest.strip_prefix('T')?;
            let digits = t.get(..6)?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let expanded = format!(
                "T{}:{}:{}{}",
                &digits[..2],
                &digits[2..4],
                &digits[4..6],
                &t[6..]
            );
            return TimeSpan::parse(&format!("{}{expanded}", d.format("%Y-%m-%d")));
        };
        let day = chrono::Duration::days(1);
        if rest.is_empty() {
            let start = date.and_hms_opt(0, 0, 0)?.and_utc();
            return Some(TimeSpan {
                start,
                end: start + day,
            });
        }
        let rest = rest
            .strip_prefix(['T', 't', ' '])
            .filter(|r| !r.is_empty())?;
        // The zone: Z, ±HH:MM, or none (UTC).
        let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if rest.len() > 6
            && matches!(rest.as_bytes()[rest.len() - 6], b'+' | b'-')
            && rest.as_bytes()[rest.len() - 3] == b':'
        {
            let (c, z) = rest.split_at(rest.len() - 6);
            let h: i32 = z[1..3].parse().ok()?;
            let m: i32 = z[4..6].parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            (c, if z.starts_with('-') { -secs } else { secs })
        } else {
            (rest, 0)
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (clock, None),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        let num = |p: &str| -> Option<u32> {
            (p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        };
        let (h, m, sec, mut span) = match parts.as_slice() {
            [h, m] if frac.is_none() => (num(h)?, num(m)?, 0, chrono::Duration::minutes(1)),
            [h, m, s] => (num(h)?, num(m)?, num(s)?, chrono::Duration::seconds(1)),
            _ => return None,
        };
        let mut nanos = 0u32;
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            nanos = format!("{f:0<9}").parse().ok()?;
            span = chrono::Duration::nanoseconds(10i64.pow(9 - f.len() as u32));
        }
        let local = date.and_hms_nano_opt(h, m, sec, nanos)?;
        let start = local.and_utc() - chrono::Duration::seconds(i64::from(offset));
        Some(TimeSpan {
            start,
            end: start + span,
        })
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

impl Selector {
    /// Picks from `items`, sorted newest first. A time picks the one
    /// backup inside the span it covers, or else the newest before it;
    /// two or more inside the span are ambiguous, and the error lists them
    /// with what selects each exactly.
    pub fn pick<'a, T>(
        &self,
        items: &'a [T],
        time: impl Fn(&T) -> DateTime<Utc>,
        describe: impl Fn(&T) -> String,
        input: &str,
    ) -> Result<&'a T> {
        let found = match self {
            Selector::Latest => items.first(),
            Selector::Back(n) => items.get(*n),
            Selector::At(span) => {
                let inside: Vec<&T> = items.iter().filter(|i| span.contains(time(i))).collect();
                if inside.len() > 1 {
                    return Err(Error::AmbiguousTime {
                        input: input.to_string(),
                        count: inside.len(),
                        matches: inside.iter().take(5).map(|i| describe(i)).collect(),
                    });
                }
                inside
                    .first()
                    .copied()
                    .or_else(|| items.iter().find(|i| time(i) < span.start))
            }
        };
        found.ok_or_else(|| Error::NotFound(input.to_string()))
    }
}

/// A time exactly as the key stores it (to the millisecond, UTC): what
/// selects one backup without doubt.
pub fn exact_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    IdPrefix(String),
    Volume {
        vm: String,
        volume: String,
        sel: Selector,
    },
    Set {
        vm: String,
        sel: Selector,
    },
}

pub const MIN_PREFIX: usize = 8;

impl Ref {
    pub fn parse(input: &str) -> Result<Ref> {
        let bad = |reason: &str| Error::BadRef {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (target, sel) = match input.split_once('@') {
            Some((t, s)) => (t, Some(s)),
            None => (input, None),
        };
        if sel.is_none() && !target.contains('/') {
            if target.len() >= MIN_PREFIX
                && target.len() <= 64
                && target
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Ok(Ref::IdPrefix(target.to_string()));
            }
            return Err(bad(
                "expected a backup id (8 to 64 lowercase hex), VM/VOLUME[@latest|@~N|@TIME] or VM@latest",
            ));
        }
        let sel = match sel {
            None | Some("latest") => Selector::Latest,
            Some(s) if s.starts_with('~') => {
                let n = s[1..]
                    .parse::<usize>()
                    .map_err(|_| bad("@~N takes a whole number of backups back, e.g. @~1"))?;
                Selector::Back(n)
            }
            Some(s) => Selector::At(TimeSpan::parse(s).ok_or_else(|| {
                bad("expected @latest, @~N or a UTC time such as @2026-11-25T08:00:00Z, @2026-11-25 08:00 or @2026-11-25")
            })?),
        };
        let mut parts = target.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(vm), None, _) => {
                check_name("VM", vm)?;
                Ok(Ref::Set {
                    vm: vm.to_string(),
                    sel,
                })
            }
            (Some(vm), Some(volume), None) => {
                check_name("VM", vm)?;
                check_name("volume", volume)?;
                Ok(Ref::Volume {
                    vm: vm.to_string(),
                    volume: volume.to_string(),
                    sel,
                })
            }
            _ => Err(bad("expected VM/VOLUME")),
        }
    }
}

/// Resolves a reference to one backup among `all` (as `Repo::load_all` returns).
pub fn resolve_one<'a>(
    all: &'a [(ManifestKey, Manifest)],
    input: &str,
) -> Result<&'a (ManifestKey, Manifest)> {
    match Ref::parse(input)? {
        Ref::IdPrefix(p) => {
            let hits: Vec<_> = all
                .iter()
                .filter(|(k, _)| k.id.to_hex().starts_with(&p))
                .collect();
            match hits.len() {
                0 => Err(Error::NotFound(input.to_string())),
                1 => Ok(hits[0]),
                n => Err(Error::Ambiguous {
                    input: input.to_string(),
                    count: n,
                }),
            }
        }
        Ref::Volume { vm, volume, sel } => {
            let mut cands: Vec<_> = all
                .iter()
                .filter(|(k, _)| k.vm == vm && k.volume == volume)
                .collect();
            cands.sort_by_key(|c| std::cmp::Reverse((c.1.created_at, c.0.id)));
            sel.pick(&cands, |c| c.1.created_at, |c| describe_backup(&c.0), input)
                .copied()
        }
        Ref::Set { .. } => Err(Error::BadRef {
            input: input.to_string(),
            reason: "names a whole VM backup set; give VM/VOLUME@... or a backup id".into(),
        }),
    }
}

/// "web/root@2026-11-30T13:05:12.345Z (id 1a2b3c4d)": a backup with what
/// selects it exactly.
pub fn describe_backup(k: &ManifestKey) -> String {
    format!(
        "{}/{}@{} (id {})",
        k.vm,
        k.volume,
        exact_time(k.time),
        short(&k.id.to_hex())
    )
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// A VM backup set: the volumes backed up together, newest first in `sets`.
#[derive(Debug, Clone)]
pub struct BackupSet<'a> {
    pub vm: String,
    pub set: String,
    pub time: DateTime<Utc>,
    pub members: Vec<&'a (ManifestKey, Manifest)>,
}

pub fn sets_of<'a>(all: &'a [(ManifestKey, Manifest)], vm: &str) -> Vec<BackupSet<'a>> {
    let mut sets: Vec<BackupSet<'a>> = Vec::new();
    for item in all.iter().filter(|(k, _)| k.vm == vm) {
        match sets.iter_mut().find(|s| s.set == item.1.set) {
            Some(s) => {
                s.time = s.time.max(item.1.created_at);
                s.members.push(item);
            }
            None => sets.push(BackupSet {
                vm: vm.to_string(),
                set: item.1.set.clone(),
                time: item.1.created_at,
                members: vec![item],
            }),
        }
    }
    sets.sort_by_key(|s| std::cmp::Reverse(s.time));
    sets
}

/// A set's backups must agree with each other: one VM definition for all
/// (or none), one backup per volume, one root volume at most. A set that
/// does not was changed behind its writer's back (a hostile client adding
/// a volume or a definition to a real set, on a store that cannot refuse
/// it): restoring it as a VM would follow the addition.
pub fn check_set(members: &[&(ManifestKey, Manifest)]) -> Result<()> {
    let tampered = |why: String| {
        let (k, m) = members[0];
        Err(Error::BadInput(format!(
            "backup set {} of {} is not consistent: {why}. Someone changed it after it was written; restore its volumes one by one (VM/VOLUME@…) and check them, and see docs/SERVER.md (\"If the primary site was compromised\")",
            m.set, k.vm
        )))
    };
    let Some((_, first)) = members.first().copied() else {
        return Ok(());
    };
    if members
        .iter()
        .any(|(_, m)| m.definition != first.definition)
    {
        return tampered("its backups name different VM definitions".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in members {
        if !seen.insert(k.volume.as_str()) {
            return tampered(format!("it holds volume {} twice", k.volume));
        }
    }
    let roots = members
        .iter()
        .filter(|(_, m)| m.volume.role == super::manifest::Role::Root)
        .count();
    if roots > 1 {
        return tampered(format!("it has {roots} root volumes"));
    }
    Ok(())
}

/// Resolves a reference to the set of backups to restore: a set reference
/// gives every volume of that set, a volume reference gives one backup.
pub fn resolve_many<'a>(
    all: &'a [(ManifestKey, Manifest)],
    input: &str,
) -> Result<Vec<&'a (ManifestKey, Manifest)>> {
    match Ref::parse(input)? {
        Ref::Set { vm, sel } => {
            let sets = sets_of(all, &vm);
            sel.pick(
                &sets,
                |s| s.time,
                |s| format!("{vm}@{} (set {})", exact_time(s.time), short(&s.set)),
                input,
            )
            .and_then(|s| {
                check_set(&s.members)?;
                Ok(s.members.clone())
            })
        }
        _ => Ok(vec![resolve_one(all, input)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            Ref::parse("deadbeef").unwrap(),
            Ref::IdPrefix("deadbeef".into())
        );
        assert!(matches!(
            Ref::parse("web/root@~2").unwrap(),
            Ref::Volume {
                sel: Selector::Back(2),
                ..
            }
        ));
        assert!(matches!(
            Ref::parse("web/root").unwrap(),
            Ref::Volume {
                sel: Selector::Latest,
                ..
            }
        ));
        assert!(matches!(Ref::parse("web@latest").unwrap(), Ref::Set { .. }));
        assert!(matches!(
            Ref::parse("web/root@2026-11-25T08:00:00Z").unwrap(),
            Ref::Volume {
                sel: Selector::At(_),
                ..
            }
        ));
        for bad in [
            "web/root@2026-11-25T8:00",
            "web/root@2026-11-25T08:00:00.",
            "web/root@2026-13-25",
            "dead",
            "web",
            "web/root@yesterday",
            "../x/y@latest",
            "a/b/c@latest",
            "web/root@~x",
        ] {
            assert!(Ref::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_cover_their_precision() {
        let t = |s: &str| TimeSpan::parse(s).unwrap_or_else(|| panic!("{s}"));
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let second = t("2026-11-30 13:05:12");
        assert_eq!(second.start, at("2026-11-30T13:05:12Z"));
        assert_eq!(second.end, at("2026-11-30T13:05:13Z"));
        assert_eq!(t("2026-11-30T13:05:12Z"), second);
        assert_eq!(t("2026-11-30 13:05:12Z"), second);
        assert_eq!(t("20261130T130512Z"), second);
        assert_eq!(t("2026-11-30T14:05:12+01:00"), second);
        let minute = t("2026-11-30 13:05");
        assert_eq!(minute.end - minute.start, chrono::Duration::minutes(1));
        let ms = t("2026-11-30T13:05:12.345Z");
        assert_eq!(ms.start, at("2026-11-30T13:05:12.345Z"));
        assert_eq!(ms.end - ms.start, chrono::Duration::milliseconds(1));
        assert_eq!(t("20261130T130512.345Z"), ms);
        let day = t("2026-11-30");
        assert_eq!(day.end - day.start, chrono::Duration::days(1));
        for bad in [
            "2026-11-30T",
            "2026-11-30T13",
            "2026-11-30T13:05:12.1234567890",
            "x",
        ] {
            assert!(TimeSpan::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_time_as_shown_selects_the_backup_shown() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // Newest first, as callers sort them.
        let items = [
            at("2026-11-30T13:06:40.100Z"),
            at("2026-11-30T13:05:40.500Z"),
            at("2026-11-30T13:05:12.345Z"),
            at("2026-11-29T02:00:00.900Z"),
        ];
        let pick = |r: &str| {
            let Ref::Volume { sel, .. } = Ref::parse(&format!("web/root@{r}")).unwrap() else {
                panic!()
            };
            sel.pick(&items, |t| *t, |t| exact_time(*t), r).copied()
        };
        // Whole seconds as a listing prints them select that backup.
        assert_eq!(pick("2026-11-30 13:05:12Z").unwrap(), items[2]);
        assert_eq!(pick("2026-11-30T13:05:40Z").unwrap(), items[1]);
        assert_eq!(pick("2026-11-29T02:00:00").unwrap(), items[3]);
        // A time between backups: the newest before it.
        assert_eq!(pick("2026-11-30T13:05:30Z").unwrap(), items[2]);
        assert_eq!(pick("2026-11-30T13:06").unwrap(), items[0]);
        // A minute that holds two backups is ambiguous, and says how to pick.
        let e = pick("2026-11-30 13:05").unwrap_err().to_string();
        assert!(e.contains("matches 2 backups"), "{e}");
        assert!(e.contains("2026-11-30T13:05:12.345Z"), "{e}");
        assert!(e.contains("2026-11-30T13:05:40.500Z"), "{e}");
        assert_eq!(
            pick("2026-11-30T13:05:40.500Z").unwrap(),
            items[1],
            "the exact time the error offers selects"
        );
        assert!(pick("2026-11-28").is_err(), "nothing at or before");
    }
}
