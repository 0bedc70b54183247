//! Hands messages over: a small SMTP connection pool per mailbox, or a file outbox.
//!
//! Why our own pool: lettre 0.11's async client leaves Nagle's algorithm on, and the
//! final `CRLF.CRLF` then waits for the server's delayed ACK (about 23 messages/s per
//! connection, see NOTES.md). We open the TCP connection ourselves with `TCP_NODELAY`
//! and give it to lettre's `AsyncSmtpConnection`, keeping up to `connections` of them
//! open per mailbox and reusing them across messages.
//!
//! Retry policy is not decided here: a send returns what the server said, classified
//! with lettre's own predicates (4xx transient, 5xx permanent), and the engine decides.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use secrecy::ExposeSecret;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::{Mailbox, Transport};

/// How long one SMTP conversation step may take before the connection is given up.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Sent {
        reply: String,
    },
    /// 4xx, a timeout or a connection failure: try again later.
    Transient {
        reply: String,
    },
    /// 5xx: never.
    Permanent {
        reply: String,
    },
}

/// Sends for one mailbox.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

enum Inner {
    Smtp(SmtpPool),
    File(PathBuf),
}

struct SmtpPool {
    transport: Transport,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// Idle connections. A std Mutex: it is never held across an `.await`.
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    /// Bounds open connections (idle + in use) to the mailbox's `connections`.
    permits: Semaphore,
}

impl Sender {
    pub fn new(mailbox: &Mailbox) -> Sender {
        let inner = match &mailbox.transport {
            Transport::File { dir } => Inner::File(dir.clone()),
            t => Inner::Smtp(SmtpPool {
                transport: t.clone(),
                credentials: match (&mailbox.user, &mailbox.password) {
                    (Some(u), Some(p)) => {
                        Some(Credentials::new(u.clone(), p.expose_secret().to_string()))
                    }
                    _ => None,
                },
                hello: ClientId::default(),
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(mailbox.connections.max(1)),
            }),
        };
        Sender {
            inner: Arc::new(inner),
        }
    }

    /// How many messages this sender can usefully have in flight.
    pub fn parallelism(&self) -> usize {
        match &*self.inner {
            Inner::Smtp(p) => p.permits.available_permits().max(1),
            Inner::File(_) => 1,
        }
    }

    /// Sends one message. `message_id` names the outbox file.
    pub async fn send(&self, envelope: &Envelope, raw: &[u8], message_id: &str) -> SendOutcome {
        match &*self.inner {
            Inner::File(dir) => write_outbox(dir, raw, message_id).await,
            Inner::Smtp(pool) => pool.send(envelope, raw).await,
        }
    }

    /// Closes idle connections politely (QUIT).
    pub async fn close(&self) {
        if let Inner::Smtp(pool) = &*self.inner {
            let conns: Vec<_> = pool
                .idle
                .lock()
                .map(|mut v| v.drain(..).collect())
                .unwrap_or_default();
            for mut c in conns {
                let _ = tokio::time::timeout(Duration::from_secs(5), c.quit()).await;
            }
        }
    }
}

impl SmtpPool {
    async fn send(&self, envelope: &Envelope, raw: &[u8]) -> SendOutcome {
        let Ok(_permit) = self.permits.acquire().await else {
            return SendOutcome::Transient {
                reply: "sender closed".into(),
            };
        };
        let reused = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut conn = match reused {
            Some(c) => c,
            None => match tokio::time::timeout(TIMEOUT, self.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(outcome)) => return outcome,
                Err(_) => {
                    return SendOutcome::Transient {
                        reply: format!("timed out connecting to {}", self.transport),
                    }
                }
            },
        };
        match tokio::time::timeout(TIMEOUT, conn.send(envelope, raw)).await {
            Ok(Ok(resp)) => {
                let reply = format!(
                    "{} {}",
                    resp.code(),
                    resp.message().collect::<Vec<_>>().join(" ")
                );
                if !conn.has_broken() {
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(conn);
                    }
                }
                SendOutcome::Sent {
                    reply: reply.trim().to_string(),
                }
            }
            // The connection is dropped after any error: its state is unknown.
            Ok(Err(e)) => classify(&e),
            Err(_) => SendOutcome::Transient {
                reply: format!("timed out talking to {}", self.transport),
            },
        }
    }

    /// Opens an authenticated connection; a failure comes back already classified.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendOutcome> {
        let io_err = |e: std::io::Error| SendOutcome::Transient {
            reply: format!("cannot connect to {}: {e}", self.transport),
        };
        let smtp_err = |e: lettre::transport::smtp::Error| classify(&e);
        let mut conn = match &self.transport {
            Transport::Smtp { host, port } | Transport::StartTls { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io_err)?;
                // See the module comment: without this, each message waits ~40 ms.
                stream.set_nodelay(true).map_err(io_err)?;
                let mut conn =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                        .await
                        .map_err(smtp_err)?;
                if let Transport::StartTls { host, .. } = &self.transport {
                    let tls = TlsParameters::new(host.clone()).map_err(smtp_err)?;
                    conn.starttls(tls, &self.hello).await.map_err(smtp_err)?;
                }
                conn
            }
            Transport::Smtps { host, port } => {
                // Implicit TLS: lettre opens the socket here, so Nagle stays on; TLS
                // records coalesce the end of DATA, which hides most of the delay.
                let tls = TlsParameters::new(host.clone()).map_err(smtp_err)?;
                AsyncSmtpConnection::connect_tokio1(
                    (host.as_str(), *port),
                    Some(TIMEOUT),
                    &self.hello,
                    Some(tls),
                    None,
                )
                .await
                .map_err(smtp_err)?
            }
            Transport::File { .. } => unreachable!("file transports have no SMTP pool"),
        };
        // `user` and the password are the mailbox's, for IMAP too: a relay that offers
        // no AUTH at all (a local Postfix trusting 127.0.0.1) gets the mail without it,
        // and answers with a 5xx if it wanted a login after all.
        let offers_auth = [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
            .into_iter()
            .any(|m| conn.server_info().supports_auth_mechanism(m));
        if let (Some(creds), true) = (&self.credentials, offers_auth) {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                .await
                .map_err(smtp_err)?;
        }
        Ok(conn)
    }
}

/// Maps lettre's error onto retry or fail, with lettre's own predicates (never by
/// matching strings). Anything that is not a definite 5xx is worth another try.
fn classify(e: &lettre::transport::smtp::Error) -> SendOutcome {
    let reply = e.to_string();
    if e.is_permanent() {
        SendOutcome::Permanent { reply }
    } else {
        SendOutcome::Transient { reply }
    }
}

/// Writes `raw` as `DIR/<time>-<id>.eml`, through a temporary name so that a reader
/// never sees half a message.
async fn write_outbox(dir: &Path, raw: &[u8], message_id: &str) -> SendOutcome {
    let safe: String = message_id
        .trim_matches(['<', '>'])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '@' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ts = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f");
    let path = dir.join(format!("{ts}-{safe}.eml"));
    let tmp = dir.join(format!(".{safe}.tmp"));
    let result = async {
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::write(&tmp, raw).await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    match result {
        Ok(()) => SendOutcome::Sent {
            reply: format!("written to {}", path.display()),
        },
        // A full disk or a permission problem may clear up: retry like a 4xx.
        Err(e) => SendOutcome::Transient {
            reply: format!("cannot write {}: {e}", path.display()),
        },
    }
}
