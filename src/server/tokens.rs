//! Bearer tokens for `lifeboat serve`: kept as BLAKE3 hashes in a TOML
//! file, each with a role, when it was made, an optional expiry and an
//! optional scope (a VM name prefix). The token itself is shown once, when
//! added. When each token was last used is kept beside the file
//! (`<file>.last-used.json`), written by the server, never in the file the
//! admin edits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use lifeboat_core::durable;
use lifeboat_core::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List, pull, verify.
    Read,
    /// Read, and add new objects; never delete or overwrite.
    Append,
    /// Everything, including deletes.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "read" => Ok(Role::Read),
            "append" => Ok(Role::Append),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::BadInput(format!(
                "unknown role {s:?}: use read, append or admin"
            ))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// "blake3:<hex>" of the token.
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// Refused from this time on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// Only backups of VMs whose names start with this are visible and
    /// writable (one server holding several sites' backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Bandwidth caps for this token, bytes per second (`8M`): what it
    /// may send to the server and fetch from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_upload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_download: Option<String>,
}

impl TokenEntry {
    /// The token's caps in bytes per second (upload, download).
    pub fn limits(&self) -> Result<(Option<u64>, Option<u64>)> {
        let size = |v: &Option<String>| {
            v.as_deref()
                .map(|s| {
                    lifeboat_core::text::parse_size(s).map_err(|e| {
                        Error::BadInput(format!("token {}: bandwidth limit: {e}", self.name))
                    })
                })
                .transpose()
        };
        Ok((size(&self.limit_upload)?, size(&self.limit_download)?))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

/// What a valid token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub role: Role,
    pub scope: Option<String>,
}

impl Grant {
    /// Whether this token may see and write backups of `vm`.
    pub fn may_see(&self, vm: &str) -> bool {
        self.scope.as_deref().is_none_or(|p| scope_covers(p, vm))
    }

    /// The scope, as the key under which the server keeps what that scope
    /// may read (None: the token sees the whole repository).
    pub fn scope_key(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

/// A scope names a site: `site1` covers the VM `site1` and VMs named
/// `site1-…`, `site1.…` or `site1_…`, never `site10`. A scope that ends
/// with one of those separators (`a-`) covers the names it starts.
pub fn scope_covers(scope: &str, vm: &str) -> bool {
    let sep = |c: char| matches!(c, '-' | '.' | '_');
    match vm.strip_prefix(scope) {
        None => false,
        Some("") => true,
        Some(rest) => scope.ends_with(sep) || rest.starts_with(sep),
    }
}

/// Why a token was refused (the message names no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unknown,
    Expired { name: String, at: DateTime<Utc> },
}

pub fn hash_token(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.as_bytes()).to_hex())
}

/// Options of a new token.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub expires: Option<DateTime<Utc>>,
    pub scope: Option<String>,
    pub limit_upload: Option<String>,
    pub limit_download: Option<String>,
}

/// `90d`, `12h`, `4w` from now, or a date (`2027-01-31`) or RFC 3339 time.
pub fn parse_expiry(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d)
            .map_err(|_| Error::BadInput(format!("expiry {s:?} is too far away")))?;
        return Ok(now + d);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(Error::BadInput(format!(
        "expiry {s:?}: give a duration (90d, 12h, 4w) or a date (2027-01-31)"
    )))
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<TokenFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
            Err(e) => return Err(Error::io("reading tokens file", path, e)),
        };
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })
    }

    fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            durable::create_dir_all(dir)?;
        }
        // write_atomic creates the file 0600 from the start: the hashes
        // are never readable by others, not even for a moment; a running
        // server sees the old file or the new one, never half of one.
        durable::write_atomic(path, text.as_bytes())
    }

    /// What a presented token allows at `now`. BLAKE3 hash comparison of
    /// hex strings of equal length leaks nothing useful about the token.
    pub fn check(&self, token: &str, now: DateTime<Utc>) -> std::result::Result<Grant, Denied> {
        let h = hash_token(token);
        let t = self
            .tokens
            .iter()
            .find(|t| blake3_eq(&t.hash, &h))
            .ok_or(Denied::Unknown)?;
        match t.expires {
            Some(at) if at <= now => Err(Denied::Expired {
                name: t.name.clone(),
                at,
            }),
            _ => Ok(Grant {
                name: t.name.clone(),
                role: t.role,
                scope: t.scope.clone(),
            }),
        }
    }

    /// Adds a token and writes the file (mode 0600); returns the new token.
    pub fn add(path: &Path, name: &str, role: Role, opts: NewToken) -> Result<String> {
        lifeboat_core::names::check_name("token", name)?;
        if let Some(s) = &opts.scope {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(Error::BadInput(format!(
                    "scope {s:?}: give the start of the VM names this token may see (letters, digits, . _ -)"
                )));
            }
        }
        let mut file = Self::load(path)?;
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(Error::BadInput(format!(
                "a token named {name:?} already exists in {}: to rotate it, add a new one, move the clients, then `serve token rm {name}`",
                path.display()
            )));
        }
        let token = format!("lbt_{}", hex::encode(rand::random::<[u8; 32]>()));
        let entry = TokenEntry {
            name: name.to_string(),
            role,
            hash: hash_token(&token),
            created: Some(Utc::now()),
            expires: opts.expires,
            scope: opts.scope,
            limit_upload: opts.limit_upload,
            limit_download: opts.limit_download,
        };
        entry.limits()?;
        file.tokens.push(entry);
        file.save(path)?;
        Ok(token)
    }

    /// Removes a token; a running server stops accepting it within seconds.
    pub fn remove(path: &Path, name: &str) -> Result<()> {
        let mut file = Self::load(path)?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.name != name);
        if file.tokens.len() == before {
            return Err(Error::BadInput(format!(
                "no token named {name:?} in {}",
                path.display()
            )));
        }
        file.save(path)
    }
}

/// Where the server keeps when each token was last used.
pub fn last_used_path(tokens: &Path) -> PathBuf {
    let mut name = tokens
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".last-used.json");
    tokens.with_file_name(name)
}

/// Token name → when it was last accepted.
pub fn load_last_used(tokens: &Path) -> BTreeMap<String, DateTime<Utc>> {
    durable::read_limited(&last_used_path(tokens), 4 << 20)
        .ok()
        .and_then(|l| match l {
            durable::Limited::Data(d) => serde_json::from_slice(&d).ok(),
            durable::Limited::TooLarge(_) => None,
        })
        .unwrap_or_default()
}

pub fn save_last_used(tokens: &Path, used: &BTreeMap<String, DateTime<Utc>>) -> Result<()> {
    let data = serde_json::to_vec_pretty(used).map_err(|e| Error::Internal(e.to_string()))?;
    durable::write_atomic(&last_used_path(tokens), &data)
}

fn blake3_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_check_expire_scope_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        let now = Utc::now();
        let t = TokenFile::add(&p, "ci", Role::Append, NewToken::default()).unwrap();
        let f = TokenFile::load(&p).unwrap();
        let g = f.check(&t, now).unwrap();
        assert_eq!((g.name.as_str(), g.role), ("ci", Role::Append));
        assert!(g.may_see("anything"));
        assert_eq!(f.check("lbt_wrong", now), Err(Denied::Unknown));
        assert!(!std::fs::read_to_string(&p).unwrap().contains(&t));
        assert!(TokenFile::add(&p, "ci", Role::Read, NewToken::default()).is_err());
        let s = TokenFile::add(
            &p,
            "site-a",
            Role::Read,
            NewToken {
                expires: Some(parse_expiry("1d", now).unwrap()),
                scope: Some("a-".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let f = TokenFile::load(&p).unwrap();
        let g = f.check(&s, now).unwrap();
        assert!(g.may_see("a-web") && !g.may_see("b-web"));
        assert!(scope_covers("site1", "site1") && scope_covers("site1", "site1-web"));
        assert!(scope_covers("site1", "site1.db") && scope_covers("site1", "site1_x"));
        assert!(!scope_covers("site1", "site10") && !scope_covers("site1", "site10-web"));
        assert!(scope_covers("a-", "a-web") && !scope_covers("a-", "ab"));
        assert!(matches!(
            f.check(&s, now + chrono::Duration::days(2)),
            Err(Denied::Expired { .. })
        ));
        TokenFile::remove(&p, "ci").unwrap();
        assert_eq!(
            TokenFile::load(&p).unwrap().check(&t, now),
            Err(Denied::Unknown)
        );
        assert!(TokenFile::remove(&p, "ci").is_err());
        assert!(parse_expiry("2027-01-31", now).is_ok());
        assert!(parse_expiry("soon", now).is_err());
        assert!(TokenFile::add(
            &p,
            "x",
            Role::Read,
            NewToken {
                scope: Some("a/b".into()),
                ..Default::default()
            }
        )
        .is_err());
    }
}
