//! Object ids: the BLAKE3 hash of an object's content, shown as 64 hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The id an index uses for an all-zero chunk; such chunks are never stored.
    pub const ZERO: Id = Id([0u8; 32]);

    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, enough to be unique in any real repository.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }

    pub fn parse(s: &str) -> Result<Id, Error> {
        let bad = || {
            Error::BadInput(format!(
                "invalid object id {s:?}: expected 64 lowercase hex digits"
            ))
        };
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(Id(out))
    }
}

impl From<blake3::Hash> for Id {
    fn from(h: blake3::Hash) -> Self {
        Id(*h.as_bytes())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::parse(s)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Id::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Fast all-zero test: a buffer is all zero when its first byte is zero and
/// it equals itself shifted by one, which runs as one optimised memcmp.
pub fn is_all_zero(buf: &[u8]) -> bool {
    match buf.first() {
        None => true,
        Some(0) => buf[..buf.len() - 1] == buf[1..],
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let id = Id::of(b"hello");
        assert_eq!(Id::parse(&id.to_hex()).unwrap(), id);
        assert!(Id::parse("abc").is_err());
        assert!(Id::parse(&"G".repeat(64)).is_err());
        assert!(Id::parse(&id.to_hex().to_uppercase()).is_err());
        assert!(Id::parse("../../../../etc/passwd").is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0; 4096]));
        let mut b = vec![0u8; 4096];
        b[4095] = 1;
        assert!(!is_all_zero(&b));
        b[4095] = 0;
        b[0] = 1;
        assert!(!is_all_zero(&b));
    }
}
