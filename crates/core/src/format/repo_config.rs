//! The repository's config document (`lifeboat.json`): format version,
//! chunk size, hash and compression. Parsed and checked here; read and
//! written on disk by the local store, which owns the layout.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::index;
use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "lifeboat.json";
/// Format 2: manifests may name a VM definition. Format-1 repositories are
/// read as they are and upgraded when a backup writes into them.
pub const REPO_FORMAT: u32 = 3;
/// Format 4: an encrypted repository (objects sealed, see `sealed`). An
/// unencrypted repository stays at `REPO_FORMAT`; a lifeboat that reads
/// only up to 3 refuses an encrypted one as a whole.
pub const ENCRYPTED_FORMAT: u32 = 4;
pub const OLDEST_REPO_FORMAT: u32 = 1;
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format: u32,
    pub id: String,
    pub chunk_size: u64,
    pub hash: String,
    pub compression: Compression,
    /// Present in an encrypted repository (format 4), absent otherwise
    /// (so an unencrypted config's bytes are what they always were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypto::Encryption>,
}

impl RepoConfig {
    pub fn new(chunk_size: u64, level: i32) -> Result<RepoConfig> {
        index::check_chunk_size(chunk_size)?;
        if !(-7..=19).contains(&level) || level == 0 {
            return Err(Error::BadInput(format!(
                "zstd level {level} is not allowed: use 1 to 19, or -1 to -7 for zstd's fast modes"
            )));
        }
        Ok(RepoConfig {
            format: REPO_FORMAT,
            id: hex::encode(rand::random::<[u8; 16]>()),
            chunk_size,
            hash: "blake3".into(),
            compression: Compression {
                algorithm: "zstd".into(),
                level,
            },
            encryption: None,
        })
    }

    /// A config for an encrypted repository.
    pub fn encrypted(mut self, enc: crate::crypto::Encryption) -> RepoConfig {
        self.format = ENCRYPTED_FORMAT;
        self.encryption = Some(enc);
        self
    }

    /// The keys new objects are sealed with: None for an unencrypted
    /// repository; an error when it is encrypted and its key is not held.
    pub fn sealing_keys(&self) -> Result<Option<std::sync::Arc<crate::crypto::Keys>>> {
        let Some(enc) = &self.encryption else {
            return Ok(None);
        };
        enc.held()
            .map(Some)
            .ok_or_else(|| Error::Locked(format!("repository {}", self.id)))
    }

    /// The config document's bytes (pretty JSON, a final newline).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<RepoConfig> {
        let bad = |reason: String| Error::BadRepoConfig {
            path: path.to_path_buf(),
            reason,
        };
        let c: RepoConfig = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        if !(OLDEST_REPO_FORMAT..=ENCRYPTED_FORMAT).contains(&c.format) {
            return Err(bad(format!(
                "format {} is not supported by this lifeboat (it reads v{OLDEST_REPO_FORMAT} to v{ENCRYPTED_FORMAT}; upgrade lifeboat)",
                c.format
            )));
        }
        match (&c.encryption, c.format == ENCRYPTED_FORMAT) {
            (Some(e), true) => e.check().map_err(bad)?,
            (None, false) => {}
            (Some(_), false) => {
                return Err(bad(format!(
                    "it names an encryption key but is format {} (an encrypted repository is format {ENCRYPTED_FORMAT})",
                    c.format
                )))
            }
            (None, true) => {
                return Err(bad(format!(
                    "format {ENCRYPTED_FORMAT} is an encrypted repository, and it names no key"
                )))
            }
        }
        if c.hash != "blake3" || c.compression.algorithm != "zstd" {
            return Err(bad(
                "only blake3 hashing and zstd compression are supported".into(),
            ));
        }
        index::check_chunk_size(c.chunk_size).map_err(|e| bad(e.to_string()))?;
        Ok(c)
    }
}
