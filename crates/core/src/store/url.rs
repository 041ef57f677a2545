//! Remote URLs: which kind of store a URL names. Kept apart from opening a
//! remote so that the config can check URLs without depending on stores.

use std::path::{Path, PathBuf};

use super::s3::S3Options;
use crate::error::{Error, Result};

pub enum Kind {
    Local(PathBuf),
    Http,
    S3,
}

pub fn check_url(url: &str) -> Result<Kind> {
    if let Some(p) = url.strip_prefix("file://") {
        return Ok(Kind::Local(PathBuf::from(p)));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        let u = reqwest::Url::parse(url)
            .map_err(|e| Error::BadInput(format!("invalid URL {url:?}: {e}")))?;
        if !u.username().is_empty() || u.password().is_some() {
            // Never echo the URL: it holds the secret.
            return Err(Error::BadInput(
                "a remote URL must not carry a user name or password: put the token in a \
                 variable or file the config names (token_env / token_file)"
                    .into(),
            ));
        }
        return Ok(Kind::Http);
    }
    if url.starts_with("s3://") {
        S3Options::from_url(url)?;
        return Ok(Kind::S3);
    }
    if Path::new(url).is_absolute() {
        return Ok(Kind::Local(PathBuf::from(url)));
    }
    Err(Error::BadInput(format!(
        "unsupported remote URL {url:?}: use an absolute path, file:///path, http(s)://host:port/ or s3://bucket/prefix"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_a_store_and_never_carry_secrets() {
        assert!(matches!(check_url("/srv/r"), Ok(Kind::Local(_))));
        assert!(matches!(check_url("file:///srv/r"), Ok(Kind::Local(_))));
        assert!(matches!(check_url("https://h:8473/"), Ok(Kind::Http)));
        assert!(matches!(check_url("s3://bucket/p"), Ok(Kind::S3)));
        assert!(check_url("relative/path").is_err());
        let e = check_url("https://admin:s3cret@h:8473/")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("token_env") && !e.contains("s3cret"), "{e}");
    }
}
