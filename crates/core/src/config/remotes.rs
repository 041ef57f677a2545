//! Opening a remote from its config: the URL picks the store, secrets come
//! from the environment variables or files the config names.

use std::sync::Arc;
use std::time::Duration;

pub use super::Overrides;
use super::RemoteConfig;
use crate::error::{Error, Result};
use crate::store::http::{HttpOptions, HttpStore};
use crate::store::local::LocalStore;
use crate::store::s3::{S3Options, S3Store};
use crate::store::throttle::{throttle, Limits};
use crate::store::url::{check_url, Kind};
use crate::store::DynStore;

fn secret_from_env(var: &str, what: &str, remote: &str) -> Result<String> {
    std::env::var(var).map_err(|_| {
        Error::BadInput(format!(
            "remote {remote}: the {what} is read from the environment variable {var}, which is not set"
        ))
    })
}

fn token(name: &str, cfg: &RemoteConfig) -> Result<Option<String>> {
    if let Some(var) = &cfg.token_env {
        return secret_from_env(var, "token", name).map(Some);
    }
    if let Some(file) = &cfg.token_file {
        let t = std::fs::read_to_string(file)
            .map_err(|e| Error::io(format!("remote {name}: reading the token file"), file, e))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("LIFEBOAT_TOKEN").ok())
}

/// The bandwidth limits the config sets for a remote.
pub fn config_limits(name: &str, cfg: &RemoteConfig) -> Result<Limits> {
    let size = |v: &Option<String>, what: &str| {
        v.as_deref()
            .map(|s| {
                crate::text::parse_size(s)
                    .map_err(|e| Error::BadInput(format!("remote {name}: {what}: {e}")))
            })
            .transpose()
    };
    Ok(Limits {
        upload: size(&cfg.limit_upload, "limit_upload")?,
        download: size(&cfg.limit_download, "limit_download")?,
        burst: size(&cfg.limit_burst, "limit_burst")?,
    })
}

/// The request timeout when neither the command line nor the remote's
/// config gives one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Opens a remote under its configured bandwidth limits.
pub fn open(name: &str, cfg: &RemoteConfig) -> Result<DynStore> {
    open_with(name, cfg, &Overrides::default())
}

/// Opens a remote; `overrides` (from the command line) win over the
/// config.
pub fn open_with(name: &str, cfg: &RemoteConfig, overrides: &Overrides) -> Result<DynStore> {
    // Offered to whatever opens an encrypted repository in this process
    // (the remote's own objects, or a re-encrypting transfer).
    if let Some(f) = &cfg.key_file {
        crate::crypto::offer(crate::crypto::KeySource::KeyFile(f.clone()));
    }
    if let Some(f) = &cfg.passphrase_file {
        crate::crypto::offer(crate::crypto::KeySource::PassphraseFile(f.clone()));
    }
    let limits = overrides.limits.or(config_limits(name, cfg)?);
    throttle(open_raw(name, cfg, overrides)?, limits)
}

fn open_raw(name: &str, cfg: &RemoteConfig, overrides: &Overrides) -> Result<DynStore> {
    let timeout = overrides
        .timeout
        .or(cfg.timeout_secs.map(Duration::from_secs))
        .unwrap_or(DEFAULT_TIMEOUT);
    Ok(match check_url(&cfg.url)? {
        Kind::Local(p) => Arc::new(LocalStore::new(p)),
        Kind::Http => Arc::new(HttpStore::new(
            &cfg.url,
            HttpOptions {
                token: token(name, cfg)?,
                ca_cert: cfg.ca_cert.clone(),
                fingerprint: cfg
                    .fingerprint
                    .as_deref()
                    .map(|f| {
                        f.parse().map_err(|e: Error| {
                            Error::BadInput(format!("remote {name}: fingerprint: {e}"))
                        })
                    })
                    .transpose()?,
                timeout,
                connect_timeout: timeout.min(Duration::from_secs(10)),
                insecure_http: cfg.insecure_http || overrides.insecure_http,
            },
        )?),
        Kind::S3 => {
            let mut o = S3Options::from_url(&cfg.url)?;
            o.endpoint = cfg.endpoint.clone();
            o.region = cfg.region.clone();
            o.path_style = cfg.path_style;
            o.timeout = Some(timeout);
            if let Some(v) = &cfg.access_key_id_env {
                o.access_key_id = Some(secret_from_env(v, "access key id", name)?);
            }
            if let Some(v) = &cfg.secret_access_key_env {
                o.secret_access_key = Some(secret_from_env(v, "secret access key", name)?);
            }
            Arc::new(S3Store::new(&o)?)
        }
    })
}

/// The limits that apply to a remote named in the config (for showing).
pub fn limits_of(config: &crate::config::Config, name: &str) -> Limits {
    config.overrides.limits.or(config
        .remote(name)
        .and_then(|c| config_limits(name, c).ok())
        .unwrap_or_default())
}

/// A remote given on the command line: a configured name, or a URL
/// (token from LIFEBOAT_TOKEN; S3 settings from the standard AWS_* variables).
/// Opens it with the command line's overrides (`Config::overrides`).
pub fn resolve(config: &crate::config::Config, arg: &str) -> Result<(String, DynStore)> {
    let overrides = &config.overrides;
    if let Some(cfg) = config.remote(arg) {
        return Ok((arg.to_string(), open_with(arg, cfg, overrides)?));
    }
    if check_url(arg).is_ok() {
        let cfg = RemoteConfig {
            url: arg.to_string(),
            fingerprint: std::env::var("LIFEBOAT_FINGERPRINT").ok(),
            endpoint: std::env::var("AWS_ENDPOINT_URL").ok(),
            path_style: std::env::var("AWS_ENDPOINT_URL").is_ok(),
            ..Default::default()
        };
        return Ok((arg.to_string(), open_with(arg, &cfg, overrides)?));
    }
    let known: Vec<&String> = config.remotes.keys().collect();
    Err(Error::BadInput(format!(
        "no remote named {arg:?} (configured: {}); add one with `lifeboat remote add NAME URL`",
        if known.is_empty() {
            "none".to_string()
        } else {
            known
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    )))
}
