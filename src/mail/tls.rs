//! TLS for the client side of SMTP and IMAP: rustls with the Mozilla root store.

use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// One client configuration for the process: building it parses the root store.
pub fn config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                // Only fails if ring offered no safe protocol version; then every
                // handshake fails, each with its own error, rather than the process.
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                }),
            )
        })
        .clone()
}

/// A TLS handshake over `io`, checking the certificate against `host`. The error is
/// rustls's reason, for the caller to wrap with what it was connecting to.
pub async fn connect<IO>(host: &str, io: IO) -> Result<TlsStream<IO>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(config())
        .connect(name, io)
        .await
        .map_err(|e| e.to_string())
}
