//! Bearer tokens for `lifeboat serve`: kept as BLAKE3 hashes in a TOML
//! file, each with a role. The token itself is shown once, when added.

use std::path::Path;

use serde::{Deserialize, Serialize};

use lifeboat_core::error::{Error, Result};
use lifeboat_core::repo::durable;

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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

pub fn hash_token(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.as_bytes()).to_hex())
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

    /// The name and role of a presented token. BLAKE3 hash comparison of
    /// hex strings of equal length leaks nothing useful about the token.
    pub fn check(&self, token: &str) -> Option<(&str, Role)> {
        let h = hash_token(token);
        self.tokens
            .iter()
            .find(|t| blake3_eq(&t.hash, &h))
            .map(|t| (t.name.as_str(), t.role))
    }

    /// Adds a token and writes the file (mode 0600); returns the new token.
    pub fn add(path: &Path, name: &str, role: Role) -> Result<String> {
        lifeboat_core::names::check_name("token", name)?;
        let mut file = Self::load(path)?;
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(Error::BadInput(format!(
                "a token named {name:?} already exists in {}",
                path.display()
            )));
        }
        let token = format!("lbt_{}", hex::encode(rand::random::<[u8; 32]>()));
        file.tokens.push(TokenEntry {
            name: name.to_string(),
            role,
            hash: hash_token(&token),
        });
        let text = toml::to_string(&file).map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            durable::create_dir_all(dir)?;
        }
        // write_atomic creates the file 0600 from the start: the hashes
        // are never readable by others, not even for a moment.
        durable::write_atomic(path, text.as_bytes())?;
        Ok(token)
    }
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
    fn add_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        let t = TokenFile::add(&p, "ci", Role::Append).unwrap();
        let f = TokenFile::load(&p).unwrap();
        assert_eq!(f.check(&t), Some(("ci", Role::Append)));
        assert_eq!(f.check("lbt_wrong"), None);
        assert!(!std::fs::read_to_string(&p).unwrap().contains(&t));
        assert!(TokenFile::add(&p, "ci", Role::Read).is_err());
    }
}
