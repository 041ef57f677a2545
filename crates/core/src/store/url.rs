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
        reqwest::Url::parse(url)
            .map_err(|e| Error::BadInput(format!("invalid URL {url:?}: {e}")))?;
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
