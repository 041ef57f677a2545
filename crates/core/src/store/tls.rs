//! TLS for `lifeboat serve` remotes: certificate fingerprints, and a
//! client that trusts exactly the pinned certificate (as Proxmox Backup
//! Server's clients do with its fingerprint option) instead of a CA chain.
//! A self-signed certificate — ours, or one made with `openssl req -x509`,
//! which is a CA certificate used as its own leaf — works once pinned.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The SHA-256 of a certificate's DER bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The fingerprint of the first certificate in a PEM file.
    pub fn of_pem_file(path: &Path) -> Result<Fingerprint> {
        let cert = CertificateDer::from_pem_file(path).map_err(|e| {
            Error::BadInput(format!(
                "{}: no PEM certificate could be read ({e})",
                path.display()
            ))
        })?;
        Ok(Fingerprint::of_der(&cert))
    }
}

/// `aa:bb:…` (32 bytes, lowercase), the form `serve` prints.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&parts.join(":"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Accepts what admins paste: colons or not, any case, an optional
/// `sha256:` / `SHA256=` prefix (openssl's `-fingerprint -sha256` output).
impl FromStr for Fingerprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Fingerprint> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256 Fingerprint=")
            .or_else(|| t.strip_prefix("SHA256 Fingerprint="))
            .unwrap_or(t);
        let t = ["sha256:", "SHA256:", "sha256=", "SHA256="]
            .iter()
            .find_map(|p| t.strip_prefix(p))
            .unwrap_or(t);
        let hex_digits: String = t.chars().filter(|c| *c != ':').collect();
        let bad = || {
            Error::BadInput(format!(
                "{s:?} is not a SHA-256 certificate fingerprint: expected 64 hex digits, \
                 with or without colons (as `lifeboat serve fingerprint` prints it)"
            ))
        };
        let bytes = hex::decode(&hex_digits).map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Fingerprint(arr))
    }
}

/// Trusts the one certificate whose fingerprint is pinned; the handshake
/// signatures are still verified (the peer must hold the certificate's key).
#[derive(Debug)]
struct Pinned {
    want: Fingerprint,
    provider: Arc<CryptoProvider>,
}

/// The prefix of the error a mismatch produces, for the client's message.
pub const MISMATCH: &str = "certificate fingerprint mismatch";

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_der(end_entity);
        if got == self.want {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "{MISMATCH}: the server presented {got}, the remote is pinned to {}",
                self.want
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Makes ring the process's TLS crypto provider, once. Every HTTP client
/// and TLS listener is built after this: reqwest is built without a
/// provider of its own (its default, aws-lc-rs, is a C library built with
/// cmake: most of a cold build) and would panic without one.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when one is installed already: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client TLS configuration that trusts only the pinned certificate.
pub fn pinned_client_config(want: Fingerprint) -> Result<rustls::ClientConfig> {
    install_crypto();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { want, provider }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// What to tell the admin when a TLS handshake failed, from the error's
/// text (rustls reports these as strings through the HTTP client).
pub fn explain(cause: &str) -> Option<String> {
    if let Some(at) = cause.find(MISMATCH) {
        let cause = &cause[at..];
        return Some(format!(
            "{cause}. Nothing was sent. If the server's certificate was replaced on purpose, \
             run `lifeboat serve fingerprint` on the server and update the remote's fingerprint \
             (`fingerprint = \"…\"` in the config, or `lifeboat remote add NAME URL --fingerprint …`); \
             otherwise something between you and the server may be intercepting the connection"
        ));
    }
    if cause.contains("CaUsedAsEndEntity") {
        return Some(
            "the server's certificate is a CA certificate used as its own server certificate \
             (what `openssl req -x509` makes), which TLS chain checks refuse. Pin it instead: \
             `lifeboat remote add NAME URL --fingerprint $(openssl x509 -in CERT -noout -fingerprint -sha256)` \
             (or `lifeboat serve fingerprint` on the server), or sign a separate server \
             certificate with that CA and pass the CA as --ca-cert"
                .to_string(),
        );
    }
    if cause.contains("UnknownIssuer") || cause.contains("unknown issuer") {
        return Some(
            "the server's certificate is not signed by a CA this machine trusts (a self-signed \
             certificate?). Pin it: `lifeboat serve fingerprint` on the server prints its \
             fingerprint; give it to `lifeboat remote add NAME URL --fingerprint …` (or \
             `fingerprint = \"…\"` in the config). For a private CA, pass its certificate as \
             --ca-cert"
                .to_string(),
        );
    }
    if cause.contains("NotValidForName") || cause.contains("not valid for name") {
        return Some(format!(
            "{cause}: the certificate does not name the host in the remote's URL; use the name \
             the certificate was made for, or pin its fingerprint"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_pasted_form() {
        let f = Fingerprint::of_der(b"cert");
        let shown = f.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        for s in [
            shown.clone(),
            shown.to_uppercase(),
            shown.replace(':', ""),
            format!("sha256:{shown}"),
            format!("SHA256 Fingerprint={}", shown.to_uppercase()),
        ] {
            assert_eq!(s.parse::<Fingerprint>().unwrap(), f, "{s}");
        }
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!(format!("{shown}:00")
            .parse::<Fingerprint>()
            .unwrap_err()
            .to_string()
            .contains("64 hex digits"));
    }

    #[test]
    fn explains_the_usual_tls_failures() {
        assert!(
            explain("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))")
                .unwrap()
                .contains("--fingerprint")
        );
        assert!(explain("invalid peer certificate: UnknownIssuer")
            .unwrap()
            .contains("serve fingerprint"));
        assert!(explain(&format!("{MISMATCH}: a, b"))
            .unwrap()
            .contains("Nothing was sent"));
        assert!(explain("connection refused").is_none());
    }
}
