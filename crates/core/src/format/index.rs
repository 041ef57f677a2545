//! A volume image's chunk list. Its id is the image digest.
//!
//! ```text
//! "LBIX" | version u8 = 1 | 0u8 x3 | chunk size u64 LE | image size u64 LE | 32-byte id per chunk
//! ```
//!
//! The last chunk may be short. An all-zero chunk is `Id::ZERO`.
//!
//! An encrypted repository's index (always sealed) is version 2: after the
//! chunk ids, one plaintext id per chunk (the BLAKE3 of its raw bytes,
//! `Id::ZERO` for a zero chunk). With them a restore checks a chunk
//! against its plaintext without hashing its sealed bytes, and the next
//! backup finds a chunk it already sealed without compressing and sealing
//! it again. They are secret: an unsealed index with them is refused.
//!
//! A sealed index's envelope (in the clear, for a repository server) is
//! `chunk size u64 LE | the distinct non-zero chunk ids, sorted`: what it
//! references, not where (`Refs`).

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
/// The stored bound: plaintext ids, a seal's header and envelope included.
pub const MAX_INDEX_BYTES: u64 =
    HEADER_LEN as u64 + 3 * 32 * MAX_CHUNKS + super::sealed::OVERHEAD as u64 + 12;

/// What an index references, as a reader without the key sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refs {
    pub chunk_size: u64,
    /// Distinct non-zero chunk ids, sorted.
    pub chunks: Vec<Id>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub chunk_size: u64,
    pub image_size: u64,
    pub chunks: Vec<Id>,
    /// An encrypted repository's plaintext ids, one per chunk; empty in
    /// an unencrypted one (where a chunk's id is its plaintext id).
    pub plain: Vec<Id>,
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
        let version = if self.plain.is_empty() { 1 } else { 2 };
        let mut out = Vec::with_capacity(HEADER_LEN + 32 * (self.chunks.len() + self.plain.len()));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[version, 0, 0, 0]);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        for c in self.chunks.iter().chain(&self.plain) {
            out.extend_from_slice(&c.0);
        }
        out
    }

    pub fn id(&self) -> Id {
        Id::of(&self.to_bytes())
    }

    /// The image digest: the id of the unencrypted index of the same
    /// content (what `lifeboat hash` prints for the image). For an
    /// unencrypted repository's index it is its id; for a sealed one, the
    /// id its plaintext ids would have — so a restored image checks
    /// against its backup whatever key stored it.
    pub fn digest(&self) -> Id {
        if self.plain.is_empty() {
            return self.id();
        }
        Index {
            chunk_size: self.chunk_size,
            image_size: self.image_size,
            chunks: self.plain.clone(),
            plain: Vec::new(),
        }
        .id()
    }

    /// The index as a repository stores it (sealed with `keys` in an
    /// encrypted one), and its id there.
    pub fn stored(&self, keys: Option<&crate::crypto::Keys>) -> Result<(Id, Vec<u8>)> {
        let bytes = super::sealed::seal_doc(
            keys,
            super::sealed::Kind::Index,
            || self.refs().to_bytes(),
            self.to_bytes(),
        )?;
        Ok((Id::of(&bytes), bytes))
    }

    pub fn refs(&self) -> Refs {
        let mut chunks: Vec<Id> = self
            .chunks
            .iter()
            .filter(|c| !c.is_zero())
            .copied()
            .collect();
        chunks.sort_unstable_by_key(|a| a.0);
        chunks.dedup();
        Refs {
            chunk_size: self.chunk_size,
            chunks,
        }
    }

    /// What a stored index (named `id`, already checked against its bytes)
    /// references: parsed from an unsealed index, read from a sealed
    /// one's envelope without the key.
    pub fn refs_of(id: &Id, data: &[u8]) -> Result<Refs> {
        if !super::sealed::is_sealed(data) {
            return Index::from_bytes(Some(id), data).map(|i| i.refs());
        }
        let bad = |why: String| Error::corrupt("index", id, why);
        let env = super::sealed::envelope(super::sealed::Kind::Index, data).map_err(bad)?;
        Refs::parse(env).map_err(bad)
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
            let index = Index::parse(&plain, true).map_err(bad)?;
            let env = super::sealed::envelope(super::sealed::Kind::Index, data).map_err(bad)?;
            if Refs::parse(env).map_err(bad)? != index.refs() {
                return Err(bad(
                    "its clear references differ from its sealed content".into()
                ));
            }
            return Ok(index);
        }
        Index::parse(data, false).map_err(bad)
    }

    fn parse(data: &[u8], sealed: bool) -> std::result::Result<Index, String> {
        if data.len() < HEADER_LEN || &data[..4] != MAGIC {
            return Err("bad header".into());
        }
        let per_chunk: u64 = match (data[4], sealed) {
            (1, _) => 1,
            (2, true) => 2,
            (2, false) => {
                return Err(
                    "an unsealed index lists plaintext ids (version 2 is only sealed)".into(),
                )
            }
            (v, _) => return Err(format!("unknown index version {v}")),
        };
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
        if body.len() as u64 != n.saturating_mul(32 * per_chunk) {
            return Err(format!(
                "{} id bytes for {n} chunks (truncated?)",
                body.len()
            ));
        }
        let mut ids = body.chunks_exact(32).map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            Id(b)
        });
        let chunks: Vec<Id> = ids.by_ref().take(n as usize).collect();
        let plain: Vec<Id> = ids.collect();
        if plain
            .iter()
            .zip(&chunks)
            .any(|(p, c)| p.is_zero() != c.is_zero())
        {
            return Err("a zero chunk's plaintext id is not zero, or the reverse".into());
        }
        Ok(Index {
            chunk_size,
            image_size,
            chunks,
            plain,
        })
    }

    /// Byte length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.chunk_size;
        self.chunk_size.min(self.image_size.saturating_sub(start))
    }

    /// A decoded chunk `i` must be as long as the index says (its hash
    /// was checked; its length is the index's word): every reader asks.
    pub fn check_chunk_len(&self, i: usize, got: usize) -> crate::error::Result<()> {
        let len = self.chunk_len(i);
        match self.chunks.get(i) {
            Some(id) if got as u64 != len => Err(crate::error::Error::corrupt(
                "chunk",
                id,
                format!("holds {got} bytes where the index expects {len}"),
            )),
            _ => Ok(()),
        }
    }

    /// Chunk `i`'s plaintext id when the index records it (sealed
    /// indexes).
    pub fn plain_id(&self, i: usize) -> Option<&Id> {
        self.plain.get(i)
    }

    /// Chunk `i`'s plaintext id: what equal data has wherever it is
    /// stored (the chunk id itself in an unencrypted repository).
    pub fn content_id(&self, i: usize) -> Option<&Id> {
        self.plain.get(i).or_else(|| self.chunks.get(i))
    }

    pub fn nonzero_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|&i| !self.chunks[i].is_zero())
            .map(|i| self.chunk_len(i))
            .sum()
    }
}

impl Refs {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.chunks.len());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.0);
        }
        out
    }

    fn parse(data: &[u8]) -> std::result::Result<Refs, String> {
        if data.len() < 8 || !(data.len() - 8).is_multiple_of(32) {
            return Err(format!("an envelope of {} bytes", data.len()));
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&data[..8]);
        let chunk_size = u64::from_le_bytes(w);
        check_chunk_size(chunk_size).map_err(|e| e.to_string())?;
        let chunks: Vec<Id> = data[8..]
            .chunks_exact(32)
            .map(|c| {
                let mut b = [0u8; 32];
                b.copy_from_slice(c);
                Id(b)
            })
            .collect();
        if chunks.len() as u64 > MAX_CHUNKS {
            return Err(format!("its envelope lists {} chunks", chunks.len()));
        }
        if chunks.windows(2).any(|w| w[0].0 >= w[1].0) || chunks.iter().any(|c| c.is_zero()) {
            return Err("its envelope's chunk ids are not sorted, distinct and non-zero".into());
        }
        Ok(Refs { chunk_size, chunks })
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
            plain: Vec::new(),
        };
        let bytes = idx.to_bytes();
        let id = Id::of(&bytes);
        assert_eq!(Index::from_bytes(Some(&id), &bytes).unwrap(), idx);
        assert_eq!(idx.chunk_len(2), 5);
        assert!(Index::from_bytes(None, &bytes[..bytes.len() - 1]).is_err());
        assert!(Index::from_bytes(Some(&id), &bytes[..bytes.len() - 32]).is_err());
        assert!(Index::from_bytes(Some(&Id::of(b"x")), &bytes).is_err());
        // Plaintext ids only inside a seal.
        let with_plain = Index {
            plain: vec![Id::of(b"A"), Id::ZERO, Id::of(b"C")],
            ..idx
        };
        let e = Index::from_bytes(None, &with_plain.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("only sealed"), "{e}");
        let keys = crate::crypto::unlock(&crate::crypto::MasterKey::generate());
        let (id, sealed) = with_plain.stored(Some(&keys)).unwrap();
        assert_eq!(Index::from_bytes(Some(&id), &sealed).unwrap(), with_plain);
        let refs = Index::refs_of(&id, &sealed).unwrap();
        assert_eq!(refs.chunk_size, 1 << 16);
        let mut want = vec![Id::of(b"a"), Id::of(b"c")];
        want.sort_by_key(|a| a.0);
        assert_eq!(refs.chunks, want);
    }

    /// Equal data compares equal whether its index is sealed or not.
    #[test]
    fn plain_ids_fall_back_to_the_chunk_ids() {
        let idx = Index {
            chunk_size: 1 << 16,
            image_size: 1 << 16,
            chunks: vec![Id::of(b"a")],
            plain: Vec::new(),
        };
        assert_eq!(idx.plain_id(0), None);
        assert_eq!(idx.content_id(0), Some(&Id::of(b"a")));
        let sealed = Index {
            chunks: vec![Id::of(b"sealed a")],
            plain: vec![Id::of(b"a")],
            ..idx.clone()
        };
        assert_eq!(sealed.content_id(0), Some(&Id::of(b"a")));
        assert!(crate::format::diff::diff(&idx, &sealed)
            .unwrap()
            .identical());
        assert_eq!(sealed.digest(), idx.id(), "one digest for one image");
    }

    #[test]
    fn chunk_sizes() {
        assert!(check_chunk_size(4 << 20).is_ok());
        assert!(check_chunk_size(3 << 20).is_err());
        assert!(check_chunk_size(32 << 10).is_err());
        assert!(check_chunk_size(128 << 20).is_err());
    }
}
