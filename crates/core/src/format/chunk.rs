//! The chunk codec. A stored chunk is a 12-byte header and a payload:
//!
//! ```text
//! "LBCK" | version u8 = 1 | codec u8 (0 stored, 1 zstd) | 0u16 | raw length u32 LE | payload
//! ```
//!
//! The chunk's id is the BLAKE3 of the raw (uncompressed) bytes, so a
//! reader can check any chunk against its name whatever codec was used.

use super::id::Id;
use crate::buf::AlignedBuf;
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
                .map_err(|e| Error::Internal(format!("zstd level {l}: {e}")))
        };
        Ok(Encoder {
            zstd: mk(level)?,
            probe: mk(1)?,
        })
    }

    pub fn encode(&mut self, raw: &[u8]) -> Result<Vec<u8>> {
        let mut out = AlignedBuf::new();
        self.encode_into(raw, &mut out)?;
        Ok(out.as_slice().to_vec())
    }

    /// Encodes into `out` as the whole chunk file (header then payload), so
    /// that it can be written from an aligned buffer. Returns the length.
    pub fn encode_into(&mut self, raw: &[u8], out: &mut AlignedBuf) -> Result<usize> {
        if raw.len() > MAX_CHUNK {
            return Err(Error::BadInput(format!(
                "chunk of {} bytes exceeds the 64 MiB limit",
                raw.len()
            )));
        }
        let bound = zstd::zstd_safe::compress_bound(raw.len()).max(raw.len());
        let dst = out.resize(HEADER_LEN + bound);
        let incompressible = raw.len() > SAMPLE * 2 && {
            let mid = raw.len() / 2;
            let sample = &raw[mid..mid + SAMPLE];
            let probe = self
                .probe
                .compress_to_buffer(sample, &mut dst[HEADER_LEN..])
                .map_err(|e| Error::Internal(format!("zstd: {e}")))?;
            probe as f64 > sample.len() as f64 * SAMPLE_MAX_RATIO
        };
        let mut codec = CODEC_STORED;
        let mut payload = raw.len();
        if !incompressible {
            let n = self
                .zstd
                .compress_to_buffer(raw, &mut dst[HEADER_LEN..])
                .map_err(|e| Error::Internal(format!("zstd: {e}")))?;
            if n + n / 32 < raw.len() {
                codec = CODEC_ZSTD;
                payload = n;
            }
        }
        if codec == CODEC_STORED {
            dst[HEADER_LEN..HEADER_LEN + raw.len()].copy_from_slice(raw);
        }
        write_header(&mut dst[..HEADER_LEN], codec, raw.len());
        let total = HEADER_LEN + payload;
        out.resize(total);
        Ok(total)
    }
}

fn write_header(h: &mut [u8], codec: u8, raw_len: usize) {
    h[..4].copy_from_slice(MAGIC);
    h[4] = 1;
    h[5] = codec;
    h[6] = 0;
    h[7] = 0;
    h[8..12].copy_from_slice(&(raw_len as u32).to_le_bytes());
}

/// Decodes a stored chunk and checks it against `id`. Any mismatch is an
/// error naming the chunk: a reader never returns unverified bytes.
pub fn decode(id: &Id, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = AlignedBuf::new();
    decode_into(id, data, &mut out).map(|s| s.to_vec())
}

/// Decodes into `out` (page-aligned), verifying against `id`.
pub fn decode_into<'o>(id: &Id, data: &[u8], out: &'o mut AlignedBuf) -> Result<&'o [u8]> {
    decode_checked(id, None, data, out)
}

thread_local! {
    /// A sealed chunk's decrypted bytes: one buffer per thread, not one
    /// allocation per chunk.
    static OPENED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes into `out`, verifying. `plain` is a sealed chunk's plaintext id
/// as an authenticated (sealed) index lists it: the chunk is then checked
/// against it after opening, which proves the same as hashing its sealed
/// bytes against `id` without the second hash.
pub fn decode_checked<'o>(
    id: &Id,
    plain: Option<&Id>,
    data: &[u8],
    out: &'o mut AlignedBuf,
) -> Result<&'o [u8]> {
    let bad = |why: String| Error::corrupt("chunk", id, why);
    if !super::sealed::is_sealed(data) {
        decode_plain(id, data, out)?;
        let actual = Id::of(out.as_slice());
        if actual != *id {
            return Err(bad(format!("content hashes to {}", actual.short())));
        }
        return Ok(out.as_slice());
    }
    // Named by the hash of the sealed bytes; opened, its plaintext must
    // be the one its SIV was made from.
    if plain.is_none() {
        let actual = Id::of(data);
        if actual != *id {
            return Err(bad(format!("content hashes to {}", actual.short())));
        }
    }
    let name = id.to_hex();
    OPENED.with(|cell| {
        let mut inner = cell.borrow_mut();
        let opened =
            super::sealed::open_into(super::sealed::Kind::Chunk, "chunk", &name, data, &mut inner)?;
        // Undecodable decrypted bytes can only be tampered ones.
        decode_plain(id, &inner, out).map_err(|_| super::sealed::tampered("chunk", &name))?;
        let actual = Id::of(out.as_slice());
        if let Some(p) = plain {
            if actual != *p {
                return Err(bad(format!(
                    "its plaintext hashes to {}, its index says {}",
                    actual.short(),
                    p.short()
                )));
            }
        }
        if !opened.matches(&actual.0) {
            return Err(super::sealed::tampered("chunk", &name));
        }
        Ok(())
    })?;
    Ok(out.as_slice())
}

/// Decodes an `LBCK` chunk into `out` without checking its hash.
fn decode_plain(id: &Id, data: &[u8], out: &mut AlignedBuf) -> Result<()> {
    let bad = |why: String| Error::corrupt("chunk", id, why);
    let (codec, raw_len) = parse_header(id, data)?;
    let payload = &data[HEADER_LEN..];
    let dst = out.resize(raw_len);
    match codec {
        CODEC_STORED => {
            if payload.len() != raw_len {
                return Err(bad(format!(
                    "holds {} bytes, header says {raw_len}",
                    payload.len()
                )));
            }
            dst.copy_from_slice(payload);
        }
        CODEC_ZSTD => {
            let n = zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(payload, dst))
                .map_err(|e| bad(format!("zstd: {e}")))?;
            if n != raw_len {
                return Err(bad(format!("holds {n} bytes, header says {raw_len}")));
            }
        }
        c => return Err(bad(format!("unknown codec {c}"))),
    }
    Ok(())
}

/// The raw (uncompressed) length a stored chunk's header claims.
pub fn raw_len(data: &[u8]) -> Option<usize> {
    if data.len() < HEADER_LEN || &data[..4] != MAGIC {
        return None;
    }
    Some(u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize)
}

fn parse_header(id: &Id, data: &[u8]) -> Result<(u8, usize)> {
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
    Ok((data[5], raw_len))
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
