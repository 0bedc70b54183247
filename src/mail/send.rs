//! Hands messages over: a small pool of SMTP connections per mailbox ([`super::smtp`],
//! pipelined, `TCP_NODELAY`), or a file outbox.
//!
//! Up to `connections` connections are kept open per mailbox and reused across
//! messages; one that ended a transaction in an unknown state is dropped.
//!
//! Retry policy is not decided here: a send returns what the server said, classified by
//! its first digit (4xx transient, 5xx permanent), and the engine decides.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::extension::ClientId;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use super::oauth::TokenSource;
use super::smtp::{self, Connection, Login, Security, Told};
use super::tls::Trust;
use super::watch::SentFolder;
use crate::config::{Mailbox, SendSettings, Transport};

/// How long connecting (with greeting, EHLO, STARTTLS and AUTH) may take.
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
    /// Its end of data was written and no answer came: the server may have it.
    InDoubt {
        reply: String,
    },
    /// The server refused the mailbox's login: nothing is wrong with the message, and
    /// no message of this mailbox goes until its login is fixed.
    LoginRefused {
        reply: String,
    },
}

/// One message for [`Sender::send_all`]. `message_id` names the outbox file.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    pub envelope: &'a Envelope,
    pub raw: &'a [u8],
    pub message_id: &'a str,
}

/// Sends for one mailbox.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
    /// Where copies of what is sent go (`append_sent`).
    sent: Option<Arc<SentFolder>>,
}

enum Inner {
    Smtp(Box<SmtpPool>),
    File(PathBuf),
}

struct SmtpPool {
    transport: Transport,
    /// How long an end of data's answer may take (`[send] data_timeout`).
    data_timeout: Duration,
    /// The mailbox's login (it is the IMAP login too).
    login: Option<(String, SecretString)>,
    /// `auth = "oauth2"`: the user and the mailbox's tokens, used instead of `login`.
    oauth: Option<(String, TokenSource)>,
    hello: ClientId,
    /// The certificates its server is checked against.
    trust: Trust,
    /// Idle connections. A std Mutex: it is never held across an `.await`.
    idle: Mutex<Vec<Connection>>,
    /// Bounds open connections (idle + in use) to the mailbox's `connections`.
    permits: Semaphore,
}

impl Sender {
    pub fn new(mailbox: &Mailbox, settings: &SendSettings) -> Sender {
        let inner = match &mailbox.transport {
            Transport::File { dir } => Inner::File(dir.clone()),
            t => Inner::Smtp(Box::new(SmtpPool {
                transport: t.clone(),
                data_timeout: settings.data_timeout.to_std().unwrap_or(smtp::DATA_TIMEOUT),
                login: match (&mailbox.user, &mailbox.password) {
                    (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                    _ => None,
                },
                oauth: mailbox.oauth.clone().map(|t| {
                    let user = mailbox
                        .user
                        .clone()
                        .unwrap_or_else(|| mailbox.from.email.to_string());
                    (user, t)
                }),
                hello: ClientId::default(),
                trust: mailbox.tls.clone(),
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(mailbox.connections.max(1)),
            })),
        };
        let sent = mailbox
            .imap
            .as_ref()
            .is_some_and(|i| i.append_sent)
            .then(|| Arc::new(SentFolder::new(mailbox)));
        Sender {
            inner: Arc::new(inner),
            sent,
        }
    }

    /// Copies a message the server accepted to the mailbox's Sent folder, if it keeps
    /// one (`append_sent`); false if it does not.
    pub async fn append_sent(&self, raw: &[u8]) -> Result<bool, super::watch::Error> {
        match &self.sent {
            Some(sent) => sent.append(raw).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Connects and logs in as a send would, then says goodbye (`mailbox check`):
    /// where it logged in, or why it could not.
    pub async fn login_check(&self) -> Result<String, String> {
        match &*self.inner {
            Inner::File(dir) => Ok(format!("writes to {} (no login)", dir.display())),
            Inner::Smtp(pool) => match tokio::time::timeout(TIMEOUT, pool.connect()).await {
                Err(_) => Err(format!(
                    "{}: timed out after {} s",
                    pool.transport,
                    TIMEOUT.as_secs()
                )),
                Ok(Err(outcome)) => Err(match outcome {
                    SendOutcome::Sent { reply }
                    | SendOutcome::Transient { reply }
                    | SendOutcome::Permanent { reply }
                    | SendOutcome::InDoubt { reply }
                    | SendOutcome::LoginRefused { reply } => reply,
                }),
                Ok(Ok(mut conn)) => {
                    let how = match (&pool.oauth, &pool.login) {
                        _ if !conn.extensions().auth_any => {
                            "no AUTH offered, none used".to_string()
                        }
                        (Some((user, t)), _) => {
                            format!("logged in as {user} with {}", t.mechanism().name())
                        }
                        (None, Some((user, _))) => format!("logged in as {user} with a password"),
                        (None, None) => "no login configured".to_string(),
                    };
                    conn.quit().await;
                    Ok(format!("{}: {how}", pool.transport))
                }
            },
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
        let one = [Message {
            envelope,
            raw,
            message_id,
        }];
        let mut outcomes = self
            .send_all(&one, |_| async { true }, |_, _| async { true })
            .await;
        match outcomes.pop() {
            Some(Some(outcome)) => outcome,
            _ => SendOutcome::Transient {
                reply: "not sent".into(),
            },
        }
    }

    /// Sends messages one after another on one connection, so that each message's
    /// end of data carries the next one's commands; one outcome per message, in order,
    /// `None` for one that `wanted`, asked just before it goes, turned down. `leaving`
    /// is awaited before each message's content goes, told how the one before ended
    /// (see [`Connection::send_all`]); the outbox asks it before writing a file.
    pub async fn send_all<F, Fut, L, LFut>(
        &self,
        messages: &[Message<'_>],
        mut wanted: F,
        mut leaving: L,
    ) -> Vec<Option<SendOutcome>>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = bool>,
        L: FnMut(Option<usize>, Option<Told>) -> LFut,
        LFut: std::future::Future<Output = bool>,
    {
        match &*self.inner {
            Inner::File(dir) => {
                let mut out = Vec::with_capacity(messages.len());
                let mut untold: Option<(usize, bool)> = None;
                for (i, m) in messages.iter().enumerate() {
                    if !wanted(i).await {
                        out.push(None);
                        continue;
                    }
                    let told = untold
                        .take()
                        .map(|(index, accepted)| Told { index, accepted });
                    if !leaving(Some(i), told).await {
                        out.push(Some(SendOutcome::Transient {
                            reply: "not written: could not record that it was leaving".into(),
                        }));
                        continue;
                    }
                    let outcome = write_outbox(dir, m.raw, m.message_id).await;
                    untold = Some((i, matches!(outcome, SendOutcome::Sent { .. })));
                    out.push(Some(outcome));
                }
                if let Some((index, accepted)) = untold {
                    leaving(None, Some(Told { index, accepted })).await;
                }
                out
            }
            Inner::Smtp(pool) => pool.send_all(messages, wanted, leaving).await,
        }
    }

    /// Closes idle connections politely (QUIT), and logs out of the Sent folder.
    pub async fn close(&self) {
        if let Some(sent) = &self.sent {
            sent.close().await;
        }
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
    async fn send_all<F, Fut, L, LFut>(
        &self,
        messages: &[Message<'_>],
        wanted: F,
        leaving: L,
    ) -> Vec<Option<SendOutcome>>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = bool>,
        L: FnMut(Option<usize>, Option<Told>) -> LFut,
        LFut: std::future::Future<Output = bool>,
    {
        let all = |outcome: SendOutcome| vec![Some(outcome); messages.len()];
        let Ok(_permit) = self.permits.acquire().await else {
            return all(SendOutcome::Transient {
                reply: "sender closed".into(),
            });
        };
        let reused = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut conn = match reused {
            Some(c) => c,
            None => match tokio::time::timeout(TIMEOUT, self.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(outcome)) => return all(outcome),
                Err(_) => {
                    return all(SendOutcome::Transient {
                        reply: format!(
                            "connecting to {} timed out after {} s",
                            self.transport,
                            TIMEOUT.as_secs()
                        ),
                    })
                }
            },
        };
        // Each step of the conversation has its own timeout inside the client, so that
        // a stall late in the run keeps the outcomes of the messages before it.
        let outgoing: Vec<smtp::Outgoing> = messages
            .iter()
            .map(|m| smtp::Outgoing {
                envelope: m.envelope,
                raw: m.raw,
            })
            .collect();
        conn.set_data_timeout(self.data_timeout);
        let results = conn.send_all(&outgoing, wanted, leaving).await;
        // A connection is kept after a transaction that ended cleanly, refused or not.
        if !conn.is_broken() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.map(|r| match r {
                    Ok(reply) => SendOutcome::Sent {
                        reply: reply.to_string().trim().to_string(),
                    },
                    Err(e) => classify(&e),
                })
            })
            .collect()
    }

    /// Opens a connection, authenticated if the mailbox has a login and the server
    /// offers AUTH; a failure comes back already classified.
    async fn connect(&self) -> Result<Connection, SendOutcome> {
        let (host, port, security) = match &self.transport {
            Transport::Smtp { host, port } => (host, *port, Security::Plain),
            Transport::StartTls { host, port } => (host, *port, Security::StartTls),
            Transport::Smtps { host, port } => (host, *port, Security::Tls),
            Transport::File { .. } => unreachable!("file transports have no SMTP pool"),
        };
        if let Some((user, tokens)) = &self.oauth {
            return self.connect_oauth(host, port, security, user, tokens).await;
        }
        let login = self.login.as_ref().map(|(user, password)| Login {
            user,
            password,
            oauth: None,
        });
        Connection::connect(host, port, security, &self.trust, &self.hello, login)
            .await
            .map_err(|e| match e {
                smtp::Error::Io(io) => SendOutcome::Transient {
                    reply: format!("cannot connect to {}: {io}", self.transport),
                },
                e => classify(&e),
            })
    }
}

impl SmtpPool {
    /// Connects with an OAuth2 access token; a refused token is refreshed and tried
    /// once more (the provider may have revoked it before its time). A refresh token
    /// the provider refused pauses the mailbox, as a refused password does.
    async fn connect_oauth(
        &self,
        host: &str,
        port: u16,
        security: Security,
        user: &str,
        tokens: &TokenSource,
    ) -> Result<Connection, SendOutcome> {
        let no_token = |e: super::oauth::Error| {
            let reply = e.to_string();
            if e.needs_person() {
                SendOutcome::LoginRefused { reply }
            } else {
                SendOutcome::Transient { reply }
            }
        };
        let mut token = tokens.token().await.map_err(no_token)?;
        let mut refreshed = false;
        loop {
            let login = Login {
                user,
                password: &token,
                oauth: Some(tokens.mechanism()),
            };
            match Connection::connect(host, port, security, &self.trust, &self.hello, Some(login))
                .await
            {
                Ok(c) => return Ok(c),
                Err(smtp::Error::Login { .. }) if !refreshed => {
                    refreshed = true;
                    token = tokens.refused(&token).await.map_err(no_token)?;
                }
                Err(smtp::Error::Io(io)) => {
                    return Err(SendOutcome::Transient {
                        reply: format!("cannot connect to {}: {io}", self.transport),
                    })
                }
                Err(e) => return Err(classify(&e)),
            }
        }
    }
}

/// Maps the client's error onto retry or fail. Anything that is not a definite 5xx (or
/// a missing extension) is worth another try.
fn classify(e: &smtp::Error) -> SendOutcome {
    let reply = e.to_string();
    if matches!(e, smtp::Error::InDoubt(_)) {
        SendOutcome::InDoubt { reply }
    } else if let smtp::Error::Login { .. } = e {
        SendOutcome::LoginRefused { reply }
    } else if e.is_permanent() {
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
        // Mode 0700 and 0600 whatever the umask: each file is a whole mail to a contact.
        let mut mkdir = tokio::fs::DirBuilder::new();
        mkdir.recursive(true);
        #[cfg(unix)]
        mkdir.mode(0o700);
        mkdir.create(dir).await?;
        let mut open = tokio::fs::OpenOptions::new();
        open.write(true).create(true).truncate(true);
        #[cfg(unix)]
        open.mode(0o600);
        let mut f = open.open(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, raw).await?;
        tokio::io::AsyncWriteExt::flush(&mut f).await?;
        drop(f);
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
