//! VM and volume names. A name may become a path component, so it is
//! checked before it is used anywhere, whether it came from the user, a
//! config file or a remote.

use crate::error::{Error, Result};

pub const MAX_NAME_LEN: usize = 128;

pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::BadName {
            what,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_allowed_names() {
        for n in ["web01", "a", "db.prod-1_x", "..."] {
            assert!(is_valid_name(n), "{n}");
        }
        assert!(is_valid_name(&"x".repeat(128)));
    }

    #[test]
    fn rejects_path_tricks_and_odd_characters() {
        for n in ["", ".", "..", "a/b", "../x", "a b", "é", "a\0b", "a\\b"] {
            assert!(!is_valid_name(n), "{n:?}");
        }
        assert!(!is_valid_name(&"x".repeat(129)));
        let e = check_name("VM", "a/b").unwrap_err().to_string();
        assert!(e.contains("A-Z a-z 0-9"), "{e}");
    }
}
