//! TLS toward `https://` nodes: one rustls client configuration per
//! [`NodeTls`] setting, shared by the health probes, discovery's validation,
//! the cache coordinator and the gateway's proxy.
//!
//! Certificates are verified against the system roots (read once with
//! `rustls-native-certs`, which also honours `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`) plus the CA certificates of the setting's `ca_file`.
//! `insecure_skip_verify` installs a verifier that accepts any certificate
//! (signatures are still checked, so the handshake is a real one); every
//! configuration built with it is logged as a warning. The crypto provider
//! is aws-lc-rs, the one reqwest and the gateway's TLS serving use.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use cluster_types::{NodeSpec, NodeTls};
use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a TLS client configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// The system's root certificates, read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "while reading the system root certificates");
        }
        found.certs
    })
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let fail = |reason: String| TlsSetupError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

/// The rustls client configuration for `tls` (no ALPN: the HTTP client
/// that uses it sets its own).
///
/// # Errors
/// [`TlsSetupError`] when the CA file cannot be used.
pub fn client_config(tls: &NodeTls) -> Result<ClientConfig, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let config = if tls.insecure_skip_verify {
        tracing::warn!(
            "TLS certificate verification is OFF for some https:// nodes \
             (insecure_skip_verify): anyone on the path can read and change that traffic"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        let (_, _) = roots.add_parsable_certificates(system_roots().iter().cloned());
        if let Some(path) = &tls.ca_file {
            for cert in read_ca_file(path)? {
                roots.add(cert).map_err(|e| TlsSetupError::CaFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // ALPN is left to the HTTP client (hyper-rustls, reqwest) that uses it.
    Ok(config)
}

/// Accepts any server certificate (`insecure_skip_verify`), still checking
/// that the handshake is signed by the key the certificate carries.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// reqwest clients for `https://` nodes, one per distinct [`NodeTls`]
/// setting, built on first use and shared (cheap to clone). Without proxies
/// from the environment and without redirects, like every node client.
#[derive(Debug, Clone, Default)]
pub struct NodeClients {
    clients: Arc<Mutex<HashMap<NodeTls, reqwest::Client>>>,
}

impl NodeClients {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The client for `node`'s TLS settings.
    ///
    /// # Errors
    /// [`TlsSetupError`] when the settings cannot be used (unreadable CA
    /// file), or the client cannot be built.
    pub fn client_for(&self, node: &NodeSpec) -> Result<reqwest::Client, TlsSetupError> {
        if let Some(client) = self.clients.lock().get(&node.tls) {
            return Ok(client.clone());
        }
        let client = build_client(&node.tls)?;
        self.clients.lock().insert(node.tls.clone(), client.clone());
        Ok(client)
    }
}

#[cfg(feature = "rustls")]
fn build_client(tls: &NodeTls) -> Result<reqwest::Client, TlsSetupError> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(client_config(tls)?)
        .build()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))
}

#[cfg(not(feature = "rustls"))]
fn build_client(tls: &NodeTls) -> Result<reqwest::Client, TlsSetupError> {
    client_config(tls)?;
    Err(TlsSetupError::Rustls(
        "cluster-health was built without its `rustls` feature".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let tls = NodeTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            insecure_skip_verify: false,
        };
        let err = client_config(&tls).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("tls-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&NodeTls {
            ca_file: Some(empty),
            insecure_skip_verify: false,
        })
        .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn defaults_and_insecure_build() {
        let config = client_config(&NodeTls::default()).unwrap();
        assert!(config.alpn_protocols.is_empty());
        client_config(&NodeTls {
            ca_file: None,
            insecure_skip_verify: true,
        })
        .unwrap();
        let clients = NodeClients::new();
        let node = NodeSpec::new("n", "https://127.0.0.1:1");
        clients.client_for(&node).unwrap();
        assert_eq!(clients.clients.lock().len(), 1);
        clients.client_for(&node).unwrap();
        assert_eq!(clients.clients.lock().len(), 1);
    }
}
