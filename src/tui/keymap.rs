//! Key bindings: defaults plus an override file (`keys.toml` in the config
//! directory) that rebinds actions to other characters, e.g.
//!
//! ```toml
//! push = "P"
//! restore = "o"
//! ```
//!
//! The help screen and the bottom bar are generated from the result.

use std::collections::BTreeMap;
use std::path::Path;

/// (action name, default key, description)
pub const ACTIONS: &[(&str, char, &str)] = &[
    ("down", 'j', "move down (also ↓)"),
    ("up", 'k', "move up (also ↑)"),
    ("top", 'g', "first row (also Home)"),
    ("bottom", 'G', "last row (also End)"),
    ("filter", '/', "filter VMs (tree) / search the timeline"),
    ("next_match", 'n', "next timeline search match"),
    ("source", 's', "show local / each remote"),
    (
        "push",
        'p',
        "push (local) / pull (remote view): the backup, or the VM in the tree",
    ),
    (
        "push_all",
        'A',
        "push / pull everything the other side lacks",
    ),
    ("backup", 'b', "back up the VM now"),
    (
        "run_policy",
        'N',
        "run the VM's policy now (backup, verify, push, retention)",
    ),
    (
        "prune_plan",
        'K',
        "the VM's prune plan under its policy; confirm to prune",
    ),
    ("restore", 'r', "restore the backup to a file"),
    (
        "restore_vm",
        'W',
        "restore the backup's whole VM into a directory, with its domain XML (Tab: virsh define)",
    ),
    (
        "instant",
        'I',
        "instant restore: the backup's VM runs now, from the backup; its disks are copied into a directory as a job, then it runs on them",
    ),
    (
        "files",
        'f',
        "browse the backup's files (ext2/3/4 on MBR/GPT): Enter opens, Backspace up, / search, e extract",
    ),
    (
        "drill",
        'D',
        "restore drill of the VM: fetch, restore, verify, boot, check",
    ),
    (
        "plans",
        'S',
        "recovery plans (services of several VMs): members, service RPO, last drill; D drills one",
    ),
    (
        "cloud_restore",
        'u',
        "bring the backup's VM set up in a cloud (restore to cloud)",
    ),
    (
        "clouds",
        'L',
        "cloud targets: auth, flavor, network checked",
    ),
    (
        "compare",
        'c',
        "compare two backups (remote view: with local)",
    ),
    (
        "compare_live",
        'C',
        "compare the backup with the live volume",
    ),
    ("verify", 'v', "quick verify"),
    ("deep_verify", 'V', "deep verify"),
    ("cancel", 'x', "cancel the job (Jobs pane)"),
    ("zoom", 'z', "zoom the focused pane"),
    ("lower", 'o', "lower pane: jobs / log / details"),
    ("refresh", 'R', "refresh now"),
    ("help", '?', "help"),
    ("quit", 'q', "quit"),
];

/// Keys that are not characters, for the help screen.
pub const FIXED_KEYS: &[(&str, &str)] = &[
    ("Tab", "next pane"),
    ("Shift-Tab", "previous pane"),
    ("Enter", "open timeline / job log; confirm"),
    ("Esc", "back, close, cancel; leaves zoom"),
    ("← →  h l", "tree / timeline"),
    ("PgUp PgDn", "ten rows up / down"),
    ("Home End", "first / last row (Log: oldest / follow)"),
    ("Ctrl-C", "quit (asks while jobs run)"),
    ("mouse", "click selects, wheel scrolls"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMap {
    /// Pressed character → the default character of its action.
    translate: BTreeMap<char, char>,
    /// Action's effective key, in ACTIONS order.
    effective: Vec<char>,
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap {
            translate: ACTIONS.iter().map(|(_, c, _)| (*c, *c)).collect(),
            effective: ACTIONS.iter().map(|(_, c, _)| *c).collect(),
        }
    }
}

impl KeyMap {
    /// Applies overrides (`action = "k"`); unknown actions, keys that are
    /// not one character, and clashes are errors naming the problem.
    pub fn with_overrides(text: &str) -> Result<KeyMap, String> {
        let table: BTreeMap<String, String> =
            toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut effective: Vec<char> = ACTIONS.iter().map(|(_, c, _)| *c).collect();
        for (action, key) in &table {
            let i = ACTIONS
                .iter()
                .position(|(a, _, _)| a == action)
                .ok_or_else(|| {
                    format!(
                        "unknown action {action:?}; known: {}",
                        ACTIONS.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")
                    )
                })?;
            let mut chars = key.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !c.is_control() => effective[i] = c,
                _ => return Err(format!("{action} = {key:?}: give exactly one character")),
            }
        }
        let mut translate = BTreeMap::new();
        for (i, c) in effective.iter().enumerate() {
            if let Some(prev) = translate.insert(*c, ACTIONS[i].1) {
                let other = ACTIONS
                    .iter()
                    .find(|a| a.1 == prev)
                    .map(|a| a.0)
                    .unwrap_or("?");
                return Err(format!(
                    "key {c:?} is bound to both {other} and {}",
                    ACTIONS[i].0
                ));
            }
        }
        Ok(KeyMap {
            translate,
            effective,
        })
    }

    /// Loads `keys.toml` from `dir` if present; a bad file is reported and
    /// the defaults are used.
    pub fn load(dir: Option<&Path>) -> (KeyMap, Option<String>) {
        let Some(path) = dir.map(|d| d.join("keys.toml")) else {
            return (KeyMap::default(), None);
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => match KeyMap::with_overrides(&text) {
                Ok(k) => (k, None),
                Err(e) => (
                    KeyMap::default(),
                    Some(format!("{}: {e}; using the default keys", path.display())),
                ),
            },
            Err(_) => (KeyMap::default(), None),
        }
    }

    /// The default character of the action bound to `c`. A character bound
    /// to no action passes through unchanged (h, l, …); None only for a
    /// default key whose action was rebound elsewhere (it is then unbound).
    pub fn translate(&self, c: char) -> Option<char> {
        match self.translate.get(&c) {
            Some(d) => Some(*d),
            None if ACTIONS.iter().any(|a| a.1 == c) => None,
            None => Some(c),
        }
    }

    /// The key the admin presses for `action` (after keys.toml).
    pub fn key(&self, action: &str) -> char {
        ACTIONS
            .iter()
            .zip(&self.effective)
            .find(|((a, _, _), _)| *a == action)
            .map(|(_, c)| *c)
            .unwrap_or('?')
    }

    /// (keys, description) of every key, for the help screen.
    pub fn help(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = FIXED_KEYS
            .iter()
            .map(|(k, d)| (k.to_string(), *d))
            .collect();
        out.extend(
            ACTIONS
                .iter()
                .zip(&self.effective)
                .map(|((_, _, d), c)| (c.to_string(), *d)),
        );
        out
    }

    /// `key word` hints for the bottom bar, from the effective keys.
    pub fn hints(&self, items: &[(&str, &'static str)]) -> Vec<String> {
        items
            .iter()
            .map(|(action, word)| match *action {
                "" => word.to_string(),
                a => format!("{} {word}", self.key(a)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_rebind_and_unbind() {
        let k = KeyMap::with_overrides("push = \"P\"\n").unwrap();
        assert_eq!(k.translate('P'), Some('p'));
        assert_eq!(k.translate('p'), None, "the old key is free");
        assert_eq!(k.translate('l'), Some('l'), "unmapped keys pass through");
        assert!(k
            .help()
            .iter()
            .any(|(c, d)| c == "P" && d.starts_with("push")));
        assert_eq!(k.key("push"), 'P');
        assert_eq!(k.hints(&[("push", "push")]), vec!["P push".to_string()]);
        assert!(KeyMap::with_overrides("launch = \"l\"")
            .unwrap_err()
            .contains("unknown action"));
        assert!(KeyMap::with_overrides("push = \"pp\"")
            .unwrap_err()
            .contains("one character"));
        assert!(KeyMap::with_overrides("push = \"r\"")
            .unwrap_err()
            .contains("bound to both"));
    }
}
