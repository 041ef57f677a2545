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
    AtOrBefore(DateTime<Utc>),
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
            Some(s) => {
                let t = DateTime::parse_from_rfc3339(s).map_err(|_| {
                    bad("expected @latest, @~N or an RFC 3339 time such as @2026-11-25T08:00:00Z")
                })?;
                Selector::AtOrBefore(t.with_timezone(&Utc))
            }
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

/// Picks from candidates sorted newest first.
fn select<'a, T>(
    items: &'a [T],
    time: impl Fn(&T) -> DateTime<Utc>,
    sel: &Selector,
) -> Option<&'a T> {
    match sel {
        Selector::Latest => items.first(),
        Selector::Back(n) => items.get(*n),
        Selector::AtOrBefore(t) => items.iter().find(|i| time(i) <= *t),
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
            cands.sort_by_key(|c| std::cmp::Reverse(c.1.created_at));
            select(&cands, |c| c.1.created_at, &sel)
                .copied()
                .ok_or_else(|| Error::NotFound(input.to_string()))
        }
        Ref::Set { .. } => Err(Error::BadRef {
            input: input.to_string(),
            reason: "names a whole VM backup set; give VM/VOLUME@... or a backup id".into(),
        }),
    }
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

/// Resolves a reference to the set of backups to restore: a set reference
/// gives every volume of that set, a volume reference gives one backup.
pub fn resolve_many<'a>(
    all: &'a [(ManifestKey, Manifest)],
    input: &str,
) -> Result<Vec<&'a (ManifestKey, Manifest)>> {
    match Ref::parse(input)? {
        Ref::Set { vm, sel } => {
            let sets = sets_of(all, &vm);
            select(&sets, |s| s.time, &sel)
                .map(|s| s.members.clone())
                .ok_or_else(|| Error::NotFound(input.to_string()))
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
                sel: Selector::AtOrBefore(_),
                ..
            }
        ));
        for bad in [
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
}
