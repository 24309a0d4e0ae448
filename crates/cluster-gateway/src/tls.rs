//! Serving TLS to clients (`gateway.tls`), with rustls on the aws-lc-rs
//! provider — the one provider of the whole binary (reqwest's rustls uses
//! it too; see DEPENDENCIES.md "TLS providers").
//!
//! [`install_crypto_provider`] makes aws-lc-rs the process default once at
//! start-up (the CLI calls it first thing); [`server_config`] does not
//! depend on it and names its provider explicitly. Connections speak
//! HTTP/1.1 (ALPN `http/1.1`), TLS 1.2 and 1.3. The handshake must finish
//! within `gateway.header_read_timeout`, like a plain request head.

use std::path::Path;
use std::sync::Arc;

use cluster_types::TlsConfig;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::GatewayError;

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent: a
/// provider already installed (by an earlier call) is kept.
pub(crate) fn install_crypto_provider() {
    let _ = aws_lc_rs::default_provider().install_default();
}

fn tls_error(path: &Path, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::Config {
        message: format!("gateway.tls ({}): {message}", path.display()),
    }
}

/// The rustls server configuration for `tls`: the certificate chain and key
/// read from their PEM files, ALPN `http/1.1`.
///
/// # Errors
/// [`GatewayError::Config`] naming the file when a file cannot be read,
/// holds no certificate or key, or the key does not fit the certificate.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, GatewayError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| tls_error(&tls.cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(&tls.cert, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(&tls.cert, "no CERTIFICATE in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| tls_error(&tls.key, format!("cannot read a private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&tls.cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(&tls.key, format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("mlx-cluster-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = TlsConfig {
            cert: dir.join("nope.pem"),
            key: empty.clone(),
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let no_cert = TlsConfig {
            cert: empty.clone(),
            key: empty,
        };
        let e = server_config(&no_cert).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
