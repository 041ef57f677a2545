//! Which backups a push or pull moves: a REF, `VM`, `VM/VOLUME`, a set
//! `VM@…`, all, and optionally only the newest N per volume. Works on key
//! listings; only a set reference loads manifests (to read their set id).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::format::refs::{self, Ref};
use crate::format::ManifestKey;
use crate::names::is_valid_name;
use crate::store::Store;

pub async fn select(
    store: &dyn Store,
    keys: Vec<ManifestKey>,
    selection: Option<&str>,
    last: Option<usize>,
) -> Result<Vec<ManifestKey>> {
    let mut chosen: Vec<ManifestKey> = match selection {
        None => keys,
        Some(s) if is_valid_name(s) && keys.iter().any(|k| k.vm == s) => {
            keys.into_iter().filter(|k| k.vm == s).collect()
        }
        Some(s) => match Ref::parse(s)? {
            Ref::IdPrefix(p) => {
                let hits: Vec<_> = keys
                    .into_iter()
                    .filter(|k| k.id.to_hex().starts_with(&p))
                    .collect();
                match hits.len() {
                    0 => return Err(Error::NotFound(s.to_string())),
                    1 => hits,
                    n => {
                        return Err(Error::Ambiguous {
                            input: s.to_string(),
                            count: n,
                        })
                    }
                }
            }
            Ref::Volume { vm, volume, .. } if !s.contains('@') => keys
                .into_iter()
                .filter(|k| k.vm == vm && k.volume == volume)
                .collect(),
            Ref::Volume { vm, volume, sel } => {
                let mut cands: Vec<_> = keys
                    .into_iter()
                    .filter(|k| k.vm == vm && k.volume == volume)
                    .collect();
                cands.sort_by_key(|k| std::cmp::Reverse((k.time, k.id)));
                vec![sel
                    .pick(&cands, |k| k.time, refs::describe_backup, s)?
                    .clone()]
            }
            Ref::Set { vm, .. } => {
                let mut loaded = Vec::new();
                for k in keys.into_iter().filter(|k| k.vm == vm) {
                    let (m, _) = super::fetch_manifest(store, &k).await?;
                    loaded.push((k, m));
                }
                loaded.sort_by_key(|a| a.1.created_at);
                refs::resolve_many(&loaded, s)?
                    .into_iter()
                    .map(|(k, _)| k.clone())
                    .collect()
            }
        },
    };
    if chosen.is_empty() {
        return Err(Error::NotFound(
            selection.unwrap_or("any backup").to_string(),
        ));
    }
    if let Some(n) = last {
        let mut per: BTreeMap<(String, String), Vec<ManifestKey>> = BTreeMap::new();
        for k in chosen {
            per.entry((k.vm.clone(), k.volume.clone()))
                .or_default()
                .push(k);
        }
        chosen = per
            .into_values()
            .flat_map(|mut v| {
                v.sort_by_key(|k| std::cmp::Reverse((k.time, k.id)));
                v.truncate(n);
                v
            })
            .collect();
    }
    chosen.sort_by_key(|a| (a.time, a.id));
    Ok(chosen)
}
