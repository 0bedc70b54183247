//! TLS for the client side of SMTP and IMAP: rustls with the Mozilla root store, plus
//! the certificates of a mailbox's own `ca_file` (a company's private CA, a relay with a
//! self-signed certificate), so that such a server is trusted without turning
//! certificate checks off.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The certificates one mailbox's connections trust. Cheap to clone (one shared rustls
/// configuration, built once).
#[derive(Clone)]
pub struct Trust {
    config: Arc<rustls::ClientConfig>,
    /// Certificates added to the public roots, for `Debug` and logs.
    extra: usize,
}

impl Trust {
    /// The public roots only; one configuration for the whole process, since building
    /// it parses the root store.
    pub fn public() -> Trust {
        static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
        let config = CONFIG.get_or_init(|| build(public_roots())).clone();
        Trust { config, extra: 0 }
    }

    /// The public roots and every certificate in the PEM file at `path`. The error says
    /// what is wrong with the file, for a diagnostic at the line that named it.
    pub fn with_ca_file(path: &Path) -> Result<Trust, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
                path.display()
            ));
        }
        let mut roots = public_roots();
        for (n, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "{}: certificate {} cannot be a trust anchor: {e}",
                    path.display(),
                    n + 1
                )
            })?;
        }
        Ok(Trust {
            config: build(roots),
            extra: certs.len(),
        })
    }

    /// A TLS handshake over `io`, checking the certificate against `host` (a name or an
    /// IP address). The error is rustls's reason, for the caller to wrap with what it was
    /// connecting to.
    pub async fn connect<IO>(&self, host: &str, io: IO) -> Result<TlsStream<IO>, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
            .map_err(|e| e.to_string())
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.extra {
            0 => write!(f, "Trust(public roots)"),
            n => write!(f, "Trust(public roots + {n} from ca_file)"),
        }
    }
}

fn public_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn build(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        // Only fails if ring offered no safe protocol version; then every handshake
        // fails, each with its own error, rather than the process.
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Trust::with_ca_file(&empty).unwrap_err();
        assert!(e.contains("ca.pem holds no certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = Trust::with_ca_file(&missing).unwrap_err();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.pem"),
            "{e}"
        );
        let garbled = dir.path().join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = Trust::with_ca_file(&garbled).unwrap_err();
        assert!(e.contains("garbled.pem: certificate 1"), "{e}");
    }
}
