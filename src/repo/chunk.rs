//! The chunk codec. A stored chunk is a 12-byte header and a payload:
//!
//! ```text
//! "LBCK" | version u8 = 1 | codec u8 (0 stored, 1 zstd) | 0u16 | raw length u32 LE | payload
//! ```
//!
//! The chunk's id is the BLAKE3 of the raw (uncompressed) bytes, so a
//! reader can check any chunk against its name whatever codec was used.

use super::id::Id;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"LBCK";
pub const HEADER_LEN: usize = 12;
pub const MAX_CHUNK: usize = 64 << 20;
const CODEC_STORED: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// A chunk whose sample compresses worse than this ratio is stored as is:
/// random or already-compressed data would only cost CPU.
const SAMPLE: usize = 64 << 10;
const SAMPLE_MAX_RATIO: f64 = 0.92;

/// Encodes chunks; holds a zstd context so that one worker thread reuses it.
pub struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    probe: zstd::bulk::Compressor<'static>,
}

impl Encoder {
    pub fn new(level: i32) -> Result<Self> {
        let mk = |l| {
            zstd::bulk::Compressor::new(l)
                .map_err(|e| Error::Invalid(format!("zstd level {l}: {e}")))
        };
        Ok(Encoder {
            zstd: mk(level)?,
            probe: mk(1)?,
        })
    }

    pub fn encode(&mut self, raw: &[u8]) -> Result<Vec<u8>> {
        if raw.len() > MAX_CHUNK {
            return Err(Error::Invalid(format!(
                "chunk of {} bytes exceeds the 64 MiB limit",
                raw.len()
            )));
        }
        if raw.len() > SAMPLE * 2 {
            let mid = raw.len() / 2;
            let sample = &raw[mid..mid + SAMPLE];
            let probe = self
                .probe
                .compress(sample)
                .map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
            if probe.len() as f64 > sample.len() as f64 * SAMPLE_MAX_RATIO {
                return Ok(frame(CODEC_STORED, raw.len(), raw));
            }
        }
        let packed = self
            .zstd
            .compress(raw)
            .map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
        if packed.len() + packed.len() / 32 >= raw.len() {
            Ok(frame(CODEC_STORED, raw.len(), raw))
        } else {
            Ok(frame(CODEC_ZSTD, raw.len(), &packed))
        }
    }
}

fn frame(codec: u8, raw_len: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(1);
    out.push(codec);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(raw_len as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a stored chunk and checks it against `id`. Any mismatch is an
/// error naming the chunk: a reader never returns unverified bytes.
pub fn decode(id: &Id, data: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: String| Error::corrupt("chunk", id, why);
    if data.len() < HEADER_LEN || &data[..4] != MAGIC {
        return Err(bad(format!("bad header ({} bytes)", data.len())));
    }
    if data[4] != 1 {
        return Err(bad(format!("unknown chunk version {}", data[4])));
    }
    let raw_len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    if raw_len > MAX_CHUNK {
        return Err(bad(format!(
            "claims {raw_len} bytes, over the 64 MiB limit"
        )));
    }
    let payload = &data[HEADER_LEN..];
    let raw = match data[5] {
        CODEC_STORED => payload.to_vec(),
        CODEC_ZSTD => {
            zstd::bulk::decompress(payload, raw_len).map_err(|e| bad(format!("zstd: {e}")))?
        }
        c => return Err(bad(format!("unknown codec {c}"))),
    };
    if raw.len() != raw_len {
        return Err(bad(format!(
            "holds {} bytes, header says {raw_len}",
            raw.len()
        )));
    }
    let actual = Id::of(&raw);
    if actual != *id {
        return Err(bad(format!("content hashes to {}", actual.short())));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_compressible_and_random() {
        let mut enc = Encoder::new(3).unwrap();
        let text: Vec<u8> = (0..1_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let random: Vec<u8> = (0..1_000_000).map(|_| rand::random::<u8>()).collect();
        for raw in [&text, &random] {
            let id = Id::of(raw);
            let stored = enc.encode(raw).unwrap();
            assert_eq!(&decode(&id, &stored).unwrap(), raw);
        }
        assert!(enc.encode(&text).unwrap().len() < text.len() / 4);
        assert_eq!(enc.encode(&random).unwrap()[5], CODEC_STORED);
    }

    #[test]
    fn rejects_corruption_and_truncation() {
        let mut enc = Encoder::new(3).unwrap();
        let raw = vec![7u8; 100_000];
        let id = Id::of(&raw);
        let mut stored = enc.encode(&raw).unwrap();
        assert!(decode(&id, &stored[..stored.len() - 3]).is_err());
        assert!(decode(&id, &stored[..5]).is_err());
        let last = stored.len() - 1;
        stored[last] ^= 0xff;
        let e = decode(&id, &stored).unwrap_err().to_string();
        assert!(e.contains(&id.to_hex()), "{e}");
        assert!(decode(&Id::of(b"other"), &enc.encode(&raw).unwrap()).is_err());
    }
}
