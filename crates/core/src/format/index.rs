//! A volume image's chunk list. Its id is the image digest.
//!
//! ```text
//! "LBIX" | version u8 = 1 | 0u8 x3 | chunk size u64 LE | image size u64 LE | 32-byte id per chunk
//! ```
//!
//! The last chunk may be short. An all-zero chunk is `Id::ZERO`.

use super::id::Id;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"LBIX";
pub const HEADER_LEN: usize = 24;
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// The most chunks one index may list: 8 Mi ids, a 256 MiB index, which is
/// a 32 TiB image at the default 4 MiB chunk size. A bound, so that no
/// reader holds an absurd index a peer or a damaged disk claims.
pub const MAX_CHUNKS: u64 = 8 << 20;
pub const MAX_INDEX_BYTES: u64 = HEADER_LEN as u64 + 32 * MAX_CHUNKS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub chunk_size: u64,
    pub image_size: u64,
    pub chunks: Vec<Id>,
}

pub fn check_chunk_size(size: u64) -> Result<()> {
    if size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(Error::BadInput(format!(
            "chunk size {size} is not allowed: use a power of two from 64 KiB to 64 MiB"
        )))
    }
}

pub fn chunk_count(image_size: u64, chunk_size: u64) -> u64 {
    image_size.div_ceil(chunk_size)
}

impl Index {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32 * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0, 0, 0]);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.0);
        }
        out
    }

    pub fn id(&self) -> Id {
        Id::of(&self.to_bytes())
    }

    /// The index as a repository stores it (sealed with `keys` in an
    /// encrypted one), and its id there.
    pub fn stored(&self, keys: Option<&crate::crypto::Keys>) -> Result<(Id, Vec<u8>)> {
        let bytes = super::sealed::seal_if(keys, super::sealed::Kind::Index, self.to_bytes())?;
        Ok((Id::of(&bytes), bytes))
    }

    /// Parses an index, checking it against its id when one is given.
    pub fn from_bytes(expect: Option<&Id>, data: &[u8]) -> Result<Index> {
        let name = expect
            .map(|i| i.to_hex())
            .unwrap_or_else(|| "(unnamed)".into());
        let bad = |why: String| Error::corrupt("index", &name, why);
        if let Some(id) = expect {
            let actual = Id::of(data);
            if actual != *id {
                return Err(bad(format!("content hashes to {}", actual.short())));
            }
        }
        if super::sealed::is_sealed(data) {
            let plain = super::sealed::open_doc(super::sealed::Kind::Index, "index", &name, data)?;
            return Index::parse(&plain).map_err(bad);
        }
        Index::parse(data).map_err(bad)
    }

    fn parse(data: &[u8]) -> std::result::Result<Index, String> {
        if data.len() < HEADER_LEN || &data[..4] != MAGIC {
            return Err("bad header".into());
        }
        if data[4] != 1 {
            return Err(format!("unknown index version {}", data[4]));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let chunk_size = word(8);
        let image_size = word(16);
        check_chunk_size(chunk_size).map_err(|e| e.to_string())?;
        let n = chunk_count(image_size, chunk_size);
        if n > MAX_CHUNKS {
            return Err(format!("lists {n} chunks, over the limit of {MAX_CHUNKS}"));
        }
        let body = &data[HEADER_LEN..];
        if body.len() as u64 != n.saturating_mul(32) {
            return Err(format!(
                "{} id bytes for {n} chunks (truncated?)",
                body.len()
            ));
        }
        let chunks = body
            .chunks_exact(32)
            .map(|c| {
                let mut b = [0u8; 32];
                b.copy_from_slice(c);
                Id(b)
            })
            .collect();
        Ok(Index {
            chunk_size,
            image_size,
            chunks,
        })
    }

    /// Byte length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.chunk_size;
        self.chunk_size.min(self.image_size.saturating_sub(start))
    }

    pub fn nonzero_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|&i| !self.chunks[i].is_zero())
            .map(|i| self.chunk_len(i))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let idx = Index {
            chunk_size: 1 << 16,
            image_size: (1 << 16) * 2 + 5,
            chunks: vec![Id::of(b"a"), Id::ZERO, Id::of(b"c")],
        };
        let bytes = idx.to_bytes();
        let id = Id::of(&bytes);
        assert_eq!(Index::from_bytes(Some(&id), &bytes).unwrap(), idx);
        assert_eq!(idx.chunk_len(2), 5);
        assert!(Index::from_bytes(None, &bytes[..bytes.len() - 1]).is_err());
        assert!(Index::from_bytes(Some(&id), &bytes[..bytes.len() - 32]).is_err());
        assert!(Index::from_bytes(Some(&Id::of(b"x")), &bytes).is_err());
    }

    #[test]
    fn chunk_sizes() {
        assert!(check_chunk_size(4 << 20).is_ok());
        assert!(check_chunk_size(3 << 20).is_err());
        assert!(check_chunk_size(32 << 10).is_err());
        assert!(check_chunk_size(128 << 20).is_err());
    }
}
