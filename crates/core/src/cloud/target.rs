//! `[cloud.NAME]`: a cloud a VM can be restored into. Secrets are never in
//! the config: it names the environment variable or file that holds each,
//! and a [`Secret`] never prints its value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openstack,
    Aws,
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Openstack => "openstack",
            ProviderKind::Aws => "aws",
        }
    }
}

/// One `[cloud.NAME]` table. Fields that belong to the other provider are
/// refused at load, so a typo cannot silently fall back to a default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    pub provider: ProviderKind,
    /// OpenStack: Keystone v3 (`https://keystone.example:5000/v3`). AWS:
    /// one endpoint for EC2 and EBS (emulators, private endpoints); the
    /// default is AWS's regional endpoints.
    pub endpoint: Option<String>,
    /// OpenStack: the catalog region (default: the first). AWS: required.
    pub region: Option<String>,
    /// Request timeout in seconds (default 120).
    pub timeout_secs: Option<u64>,
    /// How long an image, snapshot, volume or server may take to become
    /// ready (default 1800 s).
    pub ready_timeout_secs: Option<u64>,
    /// A private CA's certificate (PEM) for the cloud's endpoints.
    pub ca_cert: Option<PathBuf>,

    // OpenStack credentials: a user's password, or an application credential.
    pub username: Option<String>,
    pub user_domain: Option<String>,
    pub project: Option<String>,
    pub project_domain: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub application_credential_id: Option<String>,
    pub application_credential_secret_env: Option<String>,
    pub application_credential_secret_file: Option<PathBuf>,

    // AWS credentials (default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    // AWS_SESSION_TOKEN).
    pub access_key_id_env: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_env: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub session_token_env: Option<String>,

    // What a restored VM gets.
    /// OpenStack: a flavor's name or id.
    pub flavor: Option<String>,
    /// OpenStack: a network's name or id.
    pub network: Option<String>,
    /// AWS: an instance type (t3.small).
    pub instance_type: Option<String>,
    /// AWS: a subnet id.
    pub subnet: Option<String>,
    /// A security group (OpenStack: name; AWS: id).
    pub security_group: Option<String>,
    /// A key pair's name.
    pub key_pair: Option<String>,
    /// OpenStack: Cinder's availability zone for data volumes.
    pub availability_zone: Option<String>,

    // Secrets written into the config by mistake: read only to be refused
    // with a message that says where they belong (never echoed).
    #[serde(default, skip_serializing)]
    password: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    application_credential_secret: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    access_key_id: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    secret_access_key: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    session_token: Option<serde::de::IgnoredAny>,
}

/// A secret read from where the config says. Its `Debug` and `Display`
/// never show the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `"{label} {value}"` for a setting that is set, else nothing (plan lines).
pub fn shown_if(label: &str, value: &Option<String>) -> String {
    value
        .as_deref()
        .map(|v| format!("{label} {v}"))
        .unwrap_or_default()
}

/// The largest secret file read: a token or key is a few hundred bytes.
const MAX_SECRET_FILE: u64 = 64 << 10;

/// Reads a secret from the variable or file the config names. Errors say
/// where it was looked for, never what it holds. A file others can read is
/// refused: it would leak the cloud's keys to every user of the host.
pub fn read_secret(
    target: &str,
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
    default_env: Option<&str>,
) -> Result<Secret> {
    let bad = |reason: String| Error::BadInput(format!("cloud {target}: the {what} {reason}"));
    if let Some(f) = file {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let file_h =
            std::fs::File::open(f).map_err(|e| bad(format!("file {}: {e}", f.display())))?;
        let md = file_h
            .metadata()
            .map_err(|e| bad(format!("file {}: {e}", f.display())))?;
        if md.permissions().mode() & 0o007 != 0 {
            return Err(bad(format!(
                "file {} can be read by every user of this host: chmod o-rwx it",
                f.display()
            )));
        }
        let mut text = String::new();
        file_h
            .take(MAX_SECRET_FILE)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("file {}: {e}", f.display())))?;
        let v = text.trim();
        if v.is_empty() {
            return Err(bad(format!("file {} is empty", f.display())));
        }
        return Ok(Secret(v.to_string()));
    }
    let Some(var) = env.or(default_env) else {
        return Err(bad("is not configured: name a variable or a file".into()));
    };
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
        _ => Err(bad(format!(
            "is read from the environment variable {var}, which is not set"
        ))),
    }
}

impl CloudConfig {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.unwrap_or(120).clamp(1, 3600))
    }

    pub fn ready_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ready_timeout_secs.unwrap_or(1800).clamp(1, 86_400))
    }

    /// Checks the table for its provider; the error names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (set, field) in [
            (self.password.is_some(), "password"),
            (
                self.application_credential_secret.is_some(),
                "application_credential_secret",
            ),
            (self.access_key_id.is_some(), "access_key_id"),
            (self.secret_access_key.is_some(), "secret_access_key"),
            (self.session_token.is_some(), "session_token"),
        ] {
            if set {
                return Err(format!(
                    "{field} must not be written in the config (it would be in every copy and backup of it): put it in an environment variable ({field}_env) or a file only its owner can read ({field}_file)"
                ));
            }
        }
        fn set(v: bool, f: &str) -> Vec<&str> {
            if v {
                vec![f]
            } else {
                vec![]
            }
        }
        let os_only = [
            set(self.username.is_some(), "username"),
            set(self.user_domain.is_some(), "user_domain"),
            set(self.project.is_some(), "project"),
            set(self.project_domain.is_some(), "project_domain"),
            set(self.password_env.is_some(), "password_env"),
            set(self.password_file.is_some(), "password_file"),
            set(
                self.application_credential_id.is_some(),
                "application_credential_id",
            ),
            set(
                self.application_credential_secret_env.is_some(),
                "application_credential_secret_env",
            ),
            set(
                self.application_credential_secret_file.is_some(),
                "application_credential_secret_file",
            ),
            set(self.flavor.is_some(), "flavor"),
            set(self.network.is_some(), "network"),
            set(self.availability_zone.is_some(), "availability_zone"),
        ]
        .concat();
        let aws_only = [
            set(self.access_key_id_env.is_some(), "access_key_id_env"),
            set(self.access_key_id_file.is_some(), "access_key_id_file"),
            set(
                self.secret_access_key_env.is_some(),
                "secret_access_key_env",
            ),
            set(
                self.secret_access_key_file.is_some(),
                "secret_access_key_file",
            ),
            set(self.session_token_env.is_some(), "session_token_env"),
            set(self.instance_type.is_some(), "instance_type"),
            set(self.subnet.is_some(), "subnet"),
        ]
        .concat();
        if let Some(e) = &self.endpoint {
            let ok = (e.starts_with("https://") || e.starts_with("http://"))
                && reqwest::Url::parse(e).is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(format!("endpoint {e:?} is not an http(s) URL"));
            }
        }
        let need = |v: &Option<String>, f: &str| {
            if v.as_deref().is_some_and(|s| !s.trim().is_empty()) {
                Ok(())
            } else {
                Err(format!(
                    "{f} is required for a {} cloud",
                    self.provider.as_str()
                ))
            }
        };
        match self.provider {
            ProviderKind::Openstack => {
                if let Some(f) = aws_only.first() {
                    return Err(format!(
                        "{f} is an AWS setting; an OpenStack cloud uses flavor, network, and username/password or an application credential"
                    ));
                }
                need(
                    &self.endpoint,
                    "endpoint (Keystone v3, e.g. https://keystone.example:5000/v3)",
                )?;
                need(&self.flavor, "flavor")?;
                need(&self.network, "network")?;
                let app = self.application_credential_id.is_some();
                if app {
                    if self.application_credential_secret_env.is_none()
                        && self.application_credential_secret_file.is_none()
                    {
                        return Err("application_credential_id needs application_credential_secret_env or _file".into());
                    }
                } else {
                    need(&self.username, "username (or application_credential_id)")?;
                    need(&self.project, "project")?;
                    if self.password_env.is_none() && self.password_file.is_none() {
                        return Err("give password_env or password_file (the password itself never goes in the config)".into());
                    }
                }
            }
            ProviderKind::Aws => {
                if let Some(f) = os_only.first() {
                    return Err(format!(
                        "{f} is an OpenStack setting; an AWS cloud uses instance_type, subnet and access keys"
                    ));
                }
                need(&self.region, "region")?;
                need(&self.instance_type, "instance_type")?;
                if self.access_key_id_env.is_some() && self.access_key_id_file.is_some() {
                    return Err("give access_key_id_env or access_key_id_file, not both".into());
                }
                if self.secret_access_key_env.is_some() && self.secret_access_key_file.is_some() {
                    return Err(
                        "give secret_access_key_env or secret_access_key_file, not both".into(),
                    );
                }
            }
        }
        for (v, f) in [
            (&self.flavor, "flavor"),
            (&self.network, "network"),
            (&self.instance_type, "instance_type"),
            (&self.subnet, "subnet"),
            (&self.security_group, "security_group"),
            (&self.key_pair, "key_pair"),
            (&self.region, "region"),
            (&self.availability_zone, "availability_zone"),
        ] {
            if let Some(s) = v {
                if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control()) {
                    return Err(format!("{f} {s:?} is not a usable name"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os() -> CloudConfig {
        toml::from_str(
            r#"provider = "openstack"
endpoint = "http://127.0.0.1:5000/v3"
username = "admin"
project = "dr"
password_env = "OS_PASSWORD"
flavor = "m1.small"
network = "dr-net""#,
        )
        .unwrap()
    }

    #[test]
    fn provider_fields_are_checked() {
        assert_eq!(os().check(), Ok(()));
        let mut c = os();
        c.instance_type = Some("t3.small".into());
        assert!(c
            .check()
            .unwrap_err()
            .contains("instance_type is an AWS setting"));
        let mut c = os();
        c.password_env = None;
        assert!(c
            .check()
            .unwrap_err()
            .contains("password_env or password_file"));
        let mut c = os();
        c.endpoint = Some("keystone:5000".into());
        assert!(c.check().unwrap_err().contains("not an http(s) URL"));
        let mut c = os();
        c.password = Some(serde::de::IgnoredAny);
        let e = c.check().unwrap_err();
        assert!(
            e.contains("password must not be written in the config") && !e.contains("hunter2"),
            "{e}"
        );
        let aws: CloudConfig =
            toml::from_str("provider = \"aws\"\nregion = \"us-east-1\"\ninstance_type = \"t3.small\"\nflavor = \"x\"").unwrap();
        assert!(aws
            .check()
            .unwrap_err()
            .contains("flavor is an OpenStack setting"));
    }

    #[test]
    fn secrets_never_print_and_loose_files_are_refused() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret("c", "password", None, Some(&f), None).unwrap_err();
        assert!(e.to_string().contains("chmod o-rwx"), "{e}");
        assert!(!e.to_string().contains("hunter2"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = read_secret("c", "password", None, Some(&f), None).unwrap();
        assert_eq!(s.expose(), "hunter2");
        let e =
            read_secret("c", "password", Some("LIFEBOAT_TEST_UNSET_VAR"), None, None).unwrap_err();
        assert!(e.to_string().contains("LIFEBOAT_TEST_UNSET_VAR"));
    }
}
