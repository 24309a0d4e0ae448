//! A throwaway certificate authority for TLS tests: a CA and a server
//! certificate for `localhost` and `127.0.0.1` signed by it, written as PEM
//! files (made with rcgen, offline, on every run).

use std::path::{Path, PathBuf};

use crate::FixtureError;

/// PEM files of a test CA and a server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate (what clients trust).
    pub ca_pem: PathBuf,
    /// The server certificate (valid for `localhost` and `127.0.0.1`).
    pub cert_pem: PathBuf,
    /// The server certificate's private key (PKCS#8).
    pub key_pem: PathBuf,
}

impl TestCa {
    /// Generates a CA and a server certificate into `dir` (`ca.pem`,
    /// `cert.pem`, `key.pem`).
    ///
    /// # Errors
    /// [`FixtureError::Io`] when a file cannot be written,
    /// [`FixtureError::Tls`] when rcgen fails.
    pub fn generate(dir: &Path) -> Result<Self, FixtureError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let tls = |e: rcgen::Error| FixtureError::Tls {
            message: e.to_string(),
        };
        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: OpenSSL takes a leaf whose subject equals its
        // issuer for a self-signed certificate.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mlx-cluster test CA");
        let ca = ca_params.self_signed(&ca_key).map_err(tls)?;
        let key = KeyPair::generate().map_err(tls)?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params
            .signed_by(&key, &Issuer::new(ca_params, ca_key))
            .map_err(tls)?;
        let files = Self {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("cert.pem"),
            key_pem: dir.join("key.pem"),
        };
        for (path, text) in [
            (&files.ca_pem, ca.pem()),
            (&files.cert_pem, cert.pem()),
            (&files.key_pem, key.serialize_pem()),
        ] {
            std::fs::write(path, text).map_err(|source| FixtureError::Io {
                action: "write",
                path: path.clone(),
                source,
            })?;
        }
        Ok(files)
    }
}
