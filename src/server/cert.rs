//! The server's own certificate: made on first start when none is given
//! (a key and a self-signed certificate, private, next to the tokens), so
//! that HTTPS needs no CA and no openssl. Clients pin its fingerprint.

use std::path::{Path, PathBuf};

use lifeboat_core::durable;
use lifeboat_core::error::{Error, Result};
use lifeboat_core::store::tls::Fingerprint;

pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `<dir of the tokens file>/tls/`.
pub fn default_dir(tokens: &Path) -> PathBuf {
    tokens
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("tls")
}

/// The certificate and key in `dir`, made now if missing (returns whether
/// they were). `names`: DNS names and IP addresses the certificate names
/// (for clients that check names; pinned clients need none).
pub fn ensure(dir: &Path, names: &[String]) -> Result<(CertFiles, bool)> {
    let files = CertFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    match (files.cert.exists(), files.key.exists()) {
        (true, true) => return Ok((files, false)),
        (true, false) | (false, true) => {
            return Err(Error::BadInput(format!(
                "{} holds only one of server.crt and server.key: remove the other to make a new pair, or restore the missing file",
                dir.display()
            )))
        }
        (false, false) => {}
    }
    durable::private_dir(dir)?;
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| Error::Internal(format!("making a certificate: {e}")))?;
    // The key first: a certificate without its key would be useless.
    durable::write_atomic(&files.key, made.signing_key.serialize_pem().as_bytes())?;
    durable::write_atomic(&files.cert, made.cert.pem().as_bytes())?;
    Ok((files, true))
}

pub fn fingerprint(cert: &Path) -> Result<Fingerprint> {
    Fingerprint::of_pem_file(cert)
}

/// Names for a new certificate: localhost, this host's name, and the
/// listening address when it is a specific one.
pub fn names_for(listen: &std::net::SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && lifeboat_core::names::is_valid_name(h) {
            names.push(h.to_string());
        }
    }
    let ip = listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_private_and_stable() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tls");
        let (f, made) = ensure(&dir, &["localhost".into()]).unwrap();
        assert!(made);
        let fp = fingerprint(&f.cert).unwrap();
        let (f2, made) = ensure(&dir, &["localhost".into()]).unwrap();
        assert!(!made);
        assert_eq!(fingerprint(&f2.cert).unwrap(), fp);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f.key), 0o600);
        assert_eq!(mode(&dir), 0o700);
        std::fs::remove_file(&f.key).unwrap();
        assert!(ensure(&dir, &[]).is_err());
    }
}
