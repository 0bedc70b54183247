//! The IMAP watcher: one task per mailbox and folder (INBOX, and Sent), built on
//! async-imap. It catches up from its checkpoint (UIDVALIDITY + last UID), then waits
//! with IDLE (re-issued before RFC 2177's 29-minute limit) or polls where the server has
//! no IDLE, and hands each new message over the arrivals channel (`inbound::serve`
//! decides what it does; this adapter only waits for the answer before it moves its
//! checkpoint). Any error closes the connection; it reconnects with backoff, and logs each change of state once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_imap::extensions::idle::IdleResponse;
use async_imap::types::NameAttribute;
use chrono::Utc;
use futures_util::TryStreamExt;
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::config::{ImapSecurity, Mailbox};
use crate::inbound::{self, Folder, Processed};
use crate::store::{Checkpoint, Store};

/// Anything async-imap can talk over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> Io for T {}

type Session = async_imap::Session<Box<dyn Io>>;

/// Why the watcher (or a look into the Sent folder) failed, worded for `status` and
/// the log: each reads as a sentence naming the server where it can.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("{}", imap_sentence(.0))]
    Imap(#[from] async_imap::error::Error),
    #[error("login as {user} refused by {server}: {reply}")]
    Login {
        user: String,
        /// `host:port`.
        server: String,
        /// What the server said, as it said it.
        reply: String,
    },
    /// No OAuth2 access token could be had.
    #[error("{0}")]
    OAuth(#[from] crate::mail::oauth::Error),
    #[error("mailbox has no user or password for IMAP")]
    NoCredentials,
    #[error("no Sent folder: set sent_folder, or give a folder the \\Sent special-use flag")]
    NoSentFolder,
    #[error("{0}")]
    Store(#[from] crate::store::Error),
    #[error("{0}")]
    Inbound(#[from] inbound::Error),
    #[error("the IMAP server did not answer within {} s", COMMAND_TIMEOUT.as_secs())]
    Timeout,
}

/// async-imap's errors as sentences: its NO and BAD carry the server's response as
/// Rust debug text (`code: None, info: Some("…")`), which is turned back into what the
/// server said.
fn imap_sentence(e: &async_imap::error::Error) -> String {
    use async_imap::error::Error as E;
    match e {
        E::No(text) => format!("the IMAP server refused: {}", server_text(text)),
        E::Bad(text) => format!("the IMAP server rejected a command: {}", server_text(text)),
        E::ConnectionLost => "the IMAP server closed the connection".into(),
        E::Io(e) => format!("network error talking to the IMAP server: {e}"),
        E::Parse(e) => format!("cannot read the IMAP server's answer: {e}"),
        other => format!("IMAP: {other}"),
    }
}

/// `[CODE] information` from async-imap's `code: {:?}, info: {:?}` text; the text
/// itself when it is not in that form.
fn server_text(text: &str) -> String {
    let parsed = text.strip_prefix("code: ").and_then(|rest| {
        let (code, info) = rest.split_once(", info: ")?;
        let info = match info {
            "None" => String::new(),
            quoted => unescape_debug(quoted.strip_prefix("Some(")?.strip_suffix(')')?)?,
        };
        // A code async-imap knows (`Some(Alert)`, `Some(TryCreate)`) is shown as the
        // server sent it; a code with arguments says nothing an operator needs here.
        let code = code
            .strip_prefix("Some(")
            .and_then(|c| c.strip_suffix(')'))
            .filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric()))
            .map(|c| format!("[{}] ", c.to_ascii_uppercase()));
        Some(
            format!("{}{info}", code.unwrap_or_default())
                .trim()
                .to_string(),
        )
    });
    match parsed {
        Some(t) if !t.is_empty() => t,
        Some(_) => "no reason given".into(),
        None => text.to_string(),
    }
}

/// The string a Rust `{:?}` of a `&str` printed (quotes included), or None.
fn unescape_debug(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'u' => {
                let hex: String = chars
                    .by_ref()
                    .skip_while(|&c| c == '{')
                    .take_while(|&c| c != '}')
                    .collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// UIDs looked at in one round while catching up.
const FETCH_CHUNK: usize = 100;

/// The most one message contributes: headers and the first megabytes of text are all
/// that classifying needs, and a mailbox full of 10 MB mails must not fill memory.
pub const MAX_MESSAGE_BYTES: u32 = 2 << 20;

/// The most one FETCH of bodies brings in.
const FETCH_BYTES: u64 = 16 << 20;

/// How long one IMAP command may take.
const COMMAND_TIMEOUT: StdDuration = StdDuration::from_secs(60);

async fn timed<T, E: Into<Error>>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(Error::Timeout),
    }
}

/// Opens an authenticated session.
pub async fn connect(mailbox: &Mailbox) -> Result<Session, Error> {
    let imap = mailbox.imap.as_ref().ok_or(Error::NoCredentials)?;
    let addr = format!("{}:{}", imap.host, imap.port);
    let tcp = timed(async {
        TcpStream::connect((imap.host.as_str(), imap.port))
            .await
            .map_err(|e| Error::Connect(addr.clone(), e))
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match imap.security {
        ImapSecurity::Plain | ImapSecurity::StartTls => Box::new(tcp),
        ImapSecurity::Tls => Box::new(tls(&mailbox.tls, &imap.host, tcp).await?),
    };
    let mut client = async_imap::Client::new(stream);
    // The greeting.
    timed(async {
        client
            .read_response()
            .await
            .map_err(|e| Error::Connect(addr.clone(), e))
    })
    .await?;
    if imap.security == ImapSecurity::StartTls {
        timed(client.run_command_and_check_ok("STARTTLS", None)).await?;
        let inner = client.into_inner();
        // `inner` is the boxed TCP stream; TLS goes on top of it.
        let tls_stream = tls(&mailbox.tls, &imap.host, inner).await?;
        client = async_imap::Client::new(Box::new(tls_stream));
    }
    if let Some(tokens) = &mailbox.oauth {
        return oauth_login(client, mailbox, tokens, addr).await;
    }
    let user = mailbox.user.clone().ok_or(Error::NoCredentials)?;
    let password = mailbox.password.as_ref().ok_or(Error::NoCredentials)?;
    match timed(async { Ok::<_, Error>(client.login(&user, password.expose_secret()).await) })
        .await?
    {
        Ok(s) => Ok(s),
        Err((e, _)) => Err(login_refused(user, addr, &e)),
    }
}

/// A refused LOGIN or AUTHENTICATE, with what the server said.
fn login_refused(user: String, server: String, e: &async_imap::error::Error) -> Error {
    Error::Login {
        user,
        server,
        reply: match e {
            async_imap::error::Error::No(t) | async_imap::error::Error::Bad(t) => server_text(t),
            other => imap_sentence(other),
        },
    }
}

/// AUTHENTICATE with an OAuth2 access token (XOAUTH2 or OAUTHBEARER); a refused
/// token is refreshed and tried once more on the same connection.
async fn oauth_login(
    mut client: async_imap::Client<Box<dyn Io>>,
    mailbox: &Mailbox,
    tokens: &crate::mail::oauth::TokenSource,
    addr: String,
) -> Result<Session, Error> {
    let user = mailbox
        .user
        .clone()
        .unwrap_or_else(|| mailbox.from.email.to_string());
    let mechanism = tokens.mechanism();
    let mut token = tokens.token().await?;
    let mut refreshed = false;
    loop {
        let auth = crate::mail::oauth::ImapAuth::new(mechanism, &user, &token);
        let answer =
            timed(async { Ok::<_, Error>(client.authenticate(mechanism.name(), auth).await) })
                .await?;
        match answer {
            Ok(session) => return Ok(session),
            Err((async_imap::error::Error::No(_), c)) if !refreshed => {
                refreshed = true;
                client = c;
                token = tokens.refused(&token).await?;
            }
            Err((e, _)) => return Err(login_refused(user, addr, &e)),
        }
    }
}

/// A TLS handshake over plain TCP or an upgraded (STARTTLS) stream, within the
/// command timeout.
async fn tls<IO: AsyncRead + AsyncWrite + Unpin>(
    trust: &crate::mail::tls::Trust,
    host: &str,
    io: IO,
) -> Result<tokio_rustls::client::TlsStream<IO>, Error> {
    timed(async {
        trust
            .connect(host, io)
            .await
            .map_err(|e| Error::Tls(host.into(), e))
    })
    .await
}

/// The Sent folder: configured, or the one with the `\Sent` special-use flag (RFC 6154).
pub async fn sent_folder(session: &mut Session, mailbox: &Mailbox) -> Result<String, Error> {
    if let Some(name) = mailbox.imap.as_ref().and_then(|i| i.sent_folder.clone()) {
        return Ok(name);
    }
    let names: Vec<_> = timed(async {
        session
            .list(None, Some("*"))
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    names
        .iter()
        .find(|n| {
            n.attributes()
                .iter()
                .any(|a| matches!(a, NameAttribute::Sent))
        })
        .map(|n| n.name().to_string())
        .ok_or(Error::NoSentFolder)
}

/// Watches one folder of one mailbox until `shutdown`.
pub struct Watcher {
    /// Where found messages go (see [`inbound::serve`]).
    pub arrivals: inbound::Arrivals,
    /// How long an IDLE lasts, and how often a server without IDLE is polled.
    pub timing: crate::config::ReplySettings,
    pub store: Store,
    pub mailbox: Mailbox,
    pub folder: Folder,
}

impl Watcher {
    fn label(&self) -> &'static str {
        match self.folder {
            Folder::Inbox => "INBOX",
            Folder::Sent => "Sent",
        }
    }

    /// Where the first watch of a folder starts. Mail that was there before this
    /// mailbox sent anything cannot answer a sequence, and an old conversation with
    /// someone enrolled today must not stop them: so it starts at the mail since the
    /// mailbox's first send (a reply that came while IMAP was not yet configured is
    /// still seen), or at the end of the folder when nothing was ever sent.
    async fn first_start(
        &self,
        session: &mut Session,
        selected: &async_imap::types::Mailbox,
    ) -> Result<i64, Error> {
        let end = match selected.uid_next {
            Some(next) => i64::from(next) - 1,
            None => timed(session.uid_search("ALL"))
                .await?
                .into_iter()
                .max()
                .map_or(0, i64::from),
        };
        let Some(first) = self.store.first_send_at(&self.mailbox.name).await? else {
            return Ok(end.max(0));
        };
        // SINCE compares dates in the server's time zone: a day earlier covers it.
        let day = (first - chrono::Duration::days(1)).format("%d-%b-%Y");
        let since = timed(session.uid_search(format!("SINCE {day}"))).await?;
        Ok(since
            .into_iter()
            .min()
            .map_or(end, |u| i64::from(u) - 1)
            .max(0))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = StdDuration::from_secs(1);
        let mut last_error: Option<String> = None;
        // systemd's watchdog stops being pinged if this loop hangs outside its waits.
        // Each IMAP command has COMMAND_TIMEOUT; a catch-up of a full folder, message by
        // message, may take longer than one.
        let beat = crate::ops::notify::Beat::register(
            format!("watcher {}/{}", self.mailbox.name, self.label()),
            COMMAND_TIMEOUT * 10,
        );
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            beat.busy();
            match self.session(&shutdown, &mut last_error, &beat).await {
                Ok(()) => break,
                Err(e) => {
                    let text = e.to_string();
                    // `last_error` is clear after a session that got connected: this is
                    // a new outage, so the backoff starts over rather than where the
                    // last outage left it (up to a minute per reconnect, for good).
                    if last_error.is_none() {
                        backoff = StdDuration::from_secs(1);
                    }
                    // A refresh token the provider refused: nothing to send with either
                    // (the SMTP side would be refused the same), so the mailbox pauses
                    // as it does on a refused SMTP login, and `status` says what to run.
                    if let Error::OAuth(o) = &e {
                        if o.needs_person() {
                            let reason = format!(
                                "{text}; then `followup resume --mailbox {}`",
                                self.mailbox.name
                            );
                            if let Ok(true) = self
                                .store
                                .pause_mailbox(&self.mailbox.name, &reason, Utc::now())
                                .await
                            {
                                warn!(mailbox = %self.mailbox.name, "mailbox paused: {reason}");
                            }
                        }
                    }
                    // Log a state change once, not every retry.
                    if last_error.as_deref() != Some(text.as_str()) {
                        warn!(mailbox = %self.mailbox.name, folder = self.label(), error = %text, "IMAP watcher disconnected; reconnecting with backoff");
                        last_error = Some(text.clone());
                    }
                    let _ = self
                        .store
                        .set_watch_state(
                            &self.mailbox.name,
                            self.label(),
                            "reconnecting",
                            Some(&text),
                            Utc::now(),
                        )
                        .await;
                    beat.waiting();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(StdDuration::from_secs(60));
                }
            }
        }
        let _ = self
            .store
            .set_watch_state(
                &self.mailbox.name,
                self.label(),
                "stopped",
                None,
                Utc::now(),
            )
            .await;
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        last_error: &mut Option<String>,
        beat: &crate::ops::notify::Beat,
    ) -> Result<(), Error> {
        let mut session = connect(&self.mailbox).await?;
        let folder_name = match self.folder {
            Folder::Inbox => "INBOX".to_string(),
            Folder::Sent => sent_folder(&mut session, &self.mailbox).await?,
        };
        let caps = timed(session.capabilities()).await?;
        let idle = caps.has_str("IDLE");
        let selected = timed(session.select(&folder_name)).await?;
        let uidvalidity = selected.uid_validity.unwrap_or(0) as i64;
        let mode = if idle { "idle" } else { "polling" };
        if last_error.take().is_some() {
            info!(mailbox = %self.mailbox.name, folder = %folder_name, "IMAP watcher reconnected");
        } else {
            info!(mailbox = %self.mailbox.name, folder = %folder_name, mode, "IMAP watcher connected");
        }
        self.store
            .set_watch_state(&self.mailbox.name, self.label(), mode, None, Utc::now())
            .await?;

        let mut checkpoint = match self
            .store
            .checkpoint(&self.mailbox.name, self.label())
            .await?
        {
            Some(c) if c.uidvalidity == uidvalidity => c,
            // 0: the watcher's state was recorded, but no message yet (a server's
            // UIDVALIDITY is never 0, RFC 3501): nothing was renumbered.
            None
            | Some(Checkpoint {
                uidvalidity: 0,
                last_uid: 0,
            }) => {
                let c = Checkpoint {
                    uidvalidity,
                    last_uid: self.first_start(&mut session, &selected).await?,
                };
                info!(mailbox = %self.mailbox.name, folder = %folder_name, after_uid = c.last_uid, "first start on this folder: earlier mail is left alone");
                self.store
                    .set_checkpoint(&self.mailbox.name, self.label(), c, Utc::now())
                    .await?;
                c
            }
            Some(c) => {
                // The folder was renumbered: look at everything again; what was already
                // handled is recognised by its Message-ID.
                warn!(mailbox = %self.mailbox.name, folder = %folder_name, old = c.uidvalidity, new = uidvalidity, "UIDVALIDITY changed; rescanning the folder");
                Checkpoint {
                    uidvalidity,
                    last_uid: 0,
                }
            }
        };
        let renew = self
            .timing
            .idle_renew
            .to_std()
            .unwrap_or(StdDuration::from_secs(25 * 60));
        let poll = self
            .timing
            .poll
            .to_std()
            .unwrap_or(StdDuration::from_secs(60));
        loop {
            checkpoint = self
                .catch_up(&mut session, &folder_name, checkpoint, shutdown)
                .await?;
            if shutdown.is_cancelled() {
                let _ = timed(session.logout()).await;
                return Ok(());
            }
            if idle {
                let mut handle = session.idle();
                timed(handle.init()).await?;
                let (wait, _stop) = handle.wait_with_timeout(renew);
                beat.waiting();
                let outcome = tokio::select! {
                    r = wait => Some(r?),
                    _ = shutdown.cancelled() => None,
                };
                beat.busy();
                session = timed(handle.done()).await?;
                match outcome {
                    None => {
                        let _ = timed(session.logout()).await;
                        return Ok(());
                    }
                    Some(IdleResponse::NewData(_))
                    | Some(IdleResponse::Timeout)
                    | Some(IdleResponse::ManualInterrupt) => {}
                }
            } else {
                beat.waiting();
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = timed(session.logout()).await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(poll) => {}
                }
                beat.busy();
                timed(session.noop()).await?;
            }
        }
    }

    /// Fetches and handles every message after the checkpoint, advancing it one
    /// message at a time (each recorded with its effects in one transaction).
    ///
    /// Memory is bounded whatever the folder holds: UIDs are taken a chunk at a time,
    /// their sizes asked first, and bodies fetched in groups of at most
    /// [`FETCH_BYTES`], each message contributing at most [`MAX_MESSAGE_BYTES`] (a
    /// partial fetch: the headers and the first megabytes are all classifying needs).
    async fn catch_up(
        &self,
        session: &mut Session,
        folder_name: &str,
        mut checkpoint: Checkpoint,
        shutdown: &CancellationToken,
    ) -> Result<Checkpoint, Error> {
        loop {
            let range = format!("{}:*", checkpoint.last_uid + 1);
            let mut uids: Vec<u32> = timed(session.uid_search(format!("UID {range}")))
                .await?
                .into_iter()
                .filter(|u| i64::from(*u) > checkpoint.last_uid)
                .collect();
            if uids.is_empty() {
                return Ok(checkpoint);
            }
            uids.sort_unstable();
            uids.truncate(FETCH_CHUNK);
            let sizes = self.sizes(session, &uids).await?;
            for group in fetch_groups(&uids, &sizes) {
                // BODY.PEEK: looking must not mark the rep's mail as read.
                let set = uid_set(&group);
                let fetched: Vec<_> = timed(async {
                    session
                        .uid_fetch(&set, format!("(UID BODY.PEEK[]<0.{MAX_MESSAGE_BYTES}>)"))
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                })
                .await?;
                let mut messages: Vec<(i64, Arc<[u8]>)> = fetched
                    .iter()
                    .filter_map(|f| Some((i64::from(f.uid?), Arc::from(f.body()?))))
                    .filter(|(uid, _)| *uid > checkpoint.last_uid)
                    .collect();
                drop(fetched);
                messages.sort_by_key(|(uid, _)| *uid);
                // A UID searched but not fetched was expunged in between: nothing to do.
                for (uid, raw) in messages {
                    if let Some(size) = sizes.get(&(uid as u32)) {
                        if *size > MAX_MESSAGE_BYTES {
                            info!(mailbox = %self.mailbox.name, folder = folder_name, uid, size, "large message: classified on its first {} MB", MAX_MESSAGE_BYTES >> 20);
                        }
                    }
                    checkpoint = self
                        .process(folder_name, checkpoint, uid, raw, shutdown)
                        .await?;
                    if shutdown.is_cancelled() {
                        return Ok(checkpoint);
                    }
                }
            }
        }
    }

    /// Each UID's size (RFC822.SIZE).
    async fn sizes(&self, session: &mut Session, uids: &[u32]) -> Result<HashMap<u32, u32>, Error> {
        let set = uid_set(uids);
        let fetched: Vec<_> = timed(async {
            session
                .uid_fetch(&set, "(UID RFC822.SIZE)")
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        Ok(fetched
            .iter()
            .filter_map(|f| Some((f.uid?, f.size?)))
            .collect())
    }

    /// Handles one message, trying again after a pause while it fails, until it is
    /// handled or set aside. Returns the checkpoint past it, or the old one if the
    /// daemon is stopping.
    async fn process(
        &self,
        folder_name: &str,
        checkpoint: Checkpoint,
        uid: i64,
        raw: Arc<[u8]>,
        shutdown: &CancellationToken,
    ) -> Result<Checkpoint, Error> {
        let next = Checkpoint {
            uidvalidity: checkpoint.uidvalidity,
            last_uid: uid,
        };
        let span =
            tracing::info_span!("reply", mailbox = %self.mailbox.name, folder = folder_name, uid);
        let mut pause = StdDuration::from_secs(1);
        loop {
            let (done, answer) = tokio::sync::oneshot::channel();
            let delivered = inbound::Delivered {
                mailbox: self.mailbox.name.clone(),
                folder: self.folder,
                uid,
                raw: raw.clone(),
                checkpoint: next,
                done,
            };
            if self.arrivals.send(delivered).await.is_err() {
                // The daemon is stopping: the message is read again next time.
                return Ok(checkpoint);
            }
            let outcome = match answer.instrument(span.clone()).await {
                Ok(outcome) => outcome?,
                Err(_) => return Ok(checkpoint),
            };
            match outcome {
                Processed::Handled(_) | Processed::SetAside { .. } => return Ok(next),
                Processed::Failed { .. } => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(checkpoint),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(StdDuration::from_secs(30));
                }
            }
        }
    }
}

/// An IMAP sequence set of UIDs: `4,5,9`.
fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits UIDs (ascending) into groups whose bodies, each capped at
/// [`MAX_MESSAGE_BYTES`], add up to at most [`FETCH_BYTES`] (a group holds at least
/// one message). A UID whose size is unknown counts as the cap.
fn fetch_groups(uids: &[u32], sizes: &HashMap<u32, u32>) -> Vec<Vec<u32>> {
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut bytes = 0u64;
    for &uid in uids {
        let size = u64::from(
            sizes
                .get(&uid)
                .copied()
                .unwrap_or(MAX_MESSAGE_BYTES)
                .min(MAX_MESSAGE_BYTES),
        );
        match groups.last_mut() {
            Some(g) if bytes + size <= FETCH_BYTES => {
                g.push(uid);
                bytes += size;
            }
            _ => {
                groups.push(vec![uid]);
                bytes = size;
            }
        }
    }
    groups
}

/// The copies of sent mail in a mailbox's Sent folder (`append_sent`), over one IMAP
/// connection kept open between messages rather than a login per message.
pub struct SentFolder {
    mailbox: Mailbox,
    /// The open session and the Sent folder's name; None until the first append, and
    /// after an error (the next append logs in again).
    session: tokio::sync::Mutex<Option<(Session, String)>>,
}

impl SentFolder {
    pub fn new(mailbox: &Mailbox) -> SentFolder {
        SentFolder {
            mailbox: mailbox.clone(),
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// Appends a sent message, marked \Seen. A connection that has gone stale (the
    /// server logged it out while idle) is replaced once before giving up.
    pub async fn append(&self, raw: &[u8]) -> Result<(), Error> {
        let mut guard = self.session.lock().await;
        let reused = guard.is_some();
        match self.append_on(&mut guard, raw).await {
            Err(_) if reused => {
                *guard = None;
                self.append_on(&mut guard, raw).await
            }
            r => r,
        }
    }

    async fn append_on(
        &self,
        slot: &mut Option<(Session, String)>,
        raw: &[u8],
    ) -> Result<(), Error> {
        if slot.is_none() {
            let mut session = connect(&self.mailbox).await?;
            let folder = sent_folder(&mut session, &self.mailbox).await?;
            *slot = Some((session, folder));
        }
        let Some((session, folder)) = slot.as_mut() else {
            return Err(Error::NoSentFolder);
        };
        let appended = timed(session.append(folder.as_str(), Some("(\\Seen)"), None, raw)).await;
        if appended.is_err() {
            *slot = None;
        }
        appended
    }

    /// Logs out, if logged in.
    pub async fn close(&self) {
        if let Some((mut session, _)) = self.session.lock().await.take() {
            let _ = timed(session.logout()).await;
        }
    }
}

/// For each Message-ID, whether the Sent folder holds a message with it.
pub async fn find_in_sent(mailbox: &Mailbox, message_ids: &[String]) -> Result<Vec<bool>, Error> {
    let mut session = connect(mailbox).await?;
    let folder = sent_folder(&mut session, mailbox).await?;
    timed(session.select(&folder)).await?;
    let mut out = Vec::with_capacity(message_ids.len());
    for id in message_ids {
        // Our Message-IDs are `<hex.hex@domain>`: nothing in them needs quoting, but a
        // quote would end the IMAP string, so refuse rather than send it.
        if id.contains(['"', '\\', '\r', '\n']) {
            out.push(false);
            continue;
        }
        let found = timed(session.uid_search(format!("HEADER Message-ID \"{id}\""))).await?;
        out.push(!found.is_empty());
    }
    let _ = timed(session.logout()).await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap_refusals_read_as_the_server_said_them() {
        use async_imap::error::Error as E;
        let no = E::No(
            r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#.into(),
        );
        assert_eq!(
            Error::Imap(no).to_string(),
            "the IMAP server refused: [AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            server_text(r#"code: Some(TryCreate), info: Some("Mailbox \"Sent\" doesn't exist")"#),
            r#"[TRYCREATE] Mailbox "Sent" doesn't exist"#
        );
        assert_eq!(
            server_text(r#"code: Some(Alert), info: Some("caf\u{e9}")"#),
            "[ALERT] café"
        );
        assert_eq!(server_text("code: None, info: None"), "no reason given");
        assert_eq!(server_text("something else"), "something else");
        assert_eq!(
            Error::Imap(E::ConnectionLost).to_string(),
            "the IMAP server closed the connection"
        );
    }

    #[test]
    fn bodies_are_fetched_in_groups_bounded_in_bytes() {
        // Forty 10 MB messages: each counts as the cap, so a group holds eight.
        let uids: Vec<u32> = (1..=40).collect();
        let sizes: HashMap<u32, u32> = uids.iter().map(|u| (*u, 10 << 20)).collect();
        let groups = fetch_groups(&uids, &sizes);
        assert_eq!(groups.len(), 5);
        for g in &groups {
            let bytes: u64 = g.iter().map(|_| u64::from(MAX_MESSAGE_BYTES)).sum();
            assert!(bytes <= FETCH_BYTES, "{g:?}");
        }
        assert_eq!(groups.concat(), uids, "every UID once, in order");
        // Small messages go together; an unknown size counts as the cap.
        let mut sizes: HashMap<u32, u32> = (1..=100).map(|u| (u, 4_000)).collect();
        sizes.remove(&50);
        let uids: Vec<u32> = (1..=100).collect();
        assert_eq!(fetch_groups(&uids, &sizes), vec![uids.clone()]);
    }
}
