//! `lifeboat protect REF` / `unprotect REF`: keep a backup set from any
//! prune, in the local repository or on a remote (see core `protect`).

use lifeboat_core::format::{refs, ManifestKey};
use lifeboat_core::protect;

use super::{print_json, Ctx, Outcome};

#[derive(Debug, clap::Args)]
pub struct ProtectArgs {
    /// A backup (VM/VOLUME@…, an id) or a set (VM@…); the whole set is
    /// protected, since prune keeps or removes sets whole.
    pub reference: String,
    /// On this remote (a server needs append to protect, admin to unprotect).
    #[arg(long, value_name = "REMOTE")]
    pub remote: Option<String>,
    /// Why (kept with the mark).
    #[arg(long)]
    pub note: Option<String>,
}

pub async fn protect_cmd(ctx: &Ctx, a: ProtectArgs, on: bool) -> anyhow::Result<Outcome> {
    if let Some(n) = &a.note {
        if n.len() > 1000 {
            anyhow::bail!("a note is at most 1,000 bytes");
        }
    }
    let (store, all) = ctx.backups_of(a.remote.as_deref()).await?;
    let picked = refs::resolve_many(&all, &a.reference)?;
    let sets: std::collections::BTreeSet<(&str, &str)> = picked
        .iter()
        .map(|(k, m)| (k.vm.as_str(), m.set.as_str()))
        .collect();
    let keys: Vec<ManifestKey> = all
        .iter()
        .filter(|(k, m)| sets.contains(&(k.vm.as_str(), m.set.as_str())))
        .map(|(k, _)| k.clone())
        .collect();
    protect::set(store.as_ref(), &keys, on, a.note.clone()).await?;
    let verb = if on { "protected" } else { "unprotected" };
    if ctx.json {
        print_json(&serde_json::json!({
            "repository": store.describe(),
            "protected": on,
            "backups": keys.iter().map(|k| k.object_key()).collect::<Vec<_>>(),
        }))?;
    } else {
        for k in &keys {
            println!(
                "{verb} {}/{} {} ({})",
                k.vm,
                k.volume,
                k.id.short(),
                crate::output::time(&k.time)
            );
        }
        if on {
            println!(
                "prune keeps these until `lifeboat unprotect {}`",
                a.reference
            );
        }
    }
    Ok(Outcome::Ok)
}
