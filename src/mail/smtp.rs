//! The SMTP client of the send path: one connection, one mail transaction at a time,
//! in one round trip per message where the server offers PIPELINING (RFC 2920).
//!
//! Why not lettre's `AsyncSmtpConnection`: it waits for the reply to MAIL FROM before
//! it sends RCPT TO, and for that before DATA, so every message costs four round trips
//! and four wake-ups on each side. Pipelined, MAIL FROM, RCPT TO and DATA go out in one
//! write and their replies come back in one read; then the content and its final dot,
//! and with them the next message's MAIL FROM, RCPT TO and DATA ([`Connection::send_all`]).
//! On loopback that cuts what the server and this process do per message; across a WAN
//! to a relay it cuts the time each message holds a connection to one round trip. lettre still
//! builds every message (typed headers, encodings) and formats every command here
//! (`Mail`, `Rcpt`, `Ehlo`, with their parameters).
//!
//! Replies are parsed here (RFC 5321 §4.2: `NNN-text` continues, `NNN text` ends), and
//! classified by their first digit: 4xx transient, 5xx permanent. After a refused
//! transaction the connection is reset (RSET) and stays usable; after anything that
//! leaves the conversation in an unknown state it is marked broken and dropped.

use std::fmt::{self, Write as _};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use lettre::address::Envelope;
use lettre::transport::smtp::commands::{Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use memchr::memchr;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::mail::tls::Trust;

/// A reply longer than this is not SMTP (RFC 5321 allows 512 bytes per line; EHLO
/// answers run to a few dozen lines).
const MAX_REPLY: usize = 64 * 1024;

/// The longest the client waits for the server to take a write or send a reply: a
/// stall detector, per step, so that a long run of messages on one connection is not
/// cut off as a whole (the results of those already sent would be lost with it).
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the server may take to answer a message's end of data: RFC 5321
/// §4.5.3.2.6 asks clients to wait 10 minutes, since the server may be filtering or
/// delivering it meanwhile (and giving up early would leave it in doubt).
pub const DATA_TIMEOUT: Duration = Duration::from_secs(600);

/// A message whose commands ran ahead is asked about again before its content goes if
/// the server took longer than this over the message before it (see
/// [`Connection::send_all`]).
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(50);

fn timed_out(what: &str, after: Duration) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out after {} {what} the server", human(after)),
    ))
}

/// `60 s`, or `100 ms` below a second.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP (loopback relays, tests).
    Plain,
    /// Plain TCP upgraded with STARTTLS, which the server must offer.
    StartTls,
    /// TLS from the first byte (RFC 8314).
    Tls,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the SMTP connection failed: {0}")]
    Io(#[from] io::Error),
    /// The server answered with a 4xx or 5xx. Worded as lettre words it, which is
    /// what `status` has always shown.
    #[error("{} error ({}): {}", if reply.code >= 500 { "permanent" } else { "transient" }, reply.code, reply.text())]
    Refused { reply: Reply },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// The server lacks something this message or mailbox needs; trying again will
    /// not help until its configuration or ours changes.
    #[error("{0}")]
    Unsupported(String),
    /// The end of data was written and no answer came (the connection broke, or the
    /// wait ran out): the server may have taken the message. Never retried blindly.
    #[error("no answer after the end of data ({0}): the server may have taken it")]
    InDoubt(String),
    /// The caller could not record that the message was leaving, so its content was
    /// not sent (see [`Connection::send_all`]).
    #[error("not sent: {0}")]
    NotLeaving(String),
    /// The server refused the mailbox's login (535 and kin, or no mechanism in common):
    /// a problem of the mailbox, its password or account, never of the messages.
    #[error("login refused by {server}: {reply}")]
    Login {
        /// `host:port`.
        server: String,
        /// The server's answer, or what it lacks.
        reply: String,
    },
}

impl Error {
    /// Whether trying again cannot help: a 5xx, or an extension the server lacks.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Refused { reply } => reply.code >= 500,
            Error::Unsupported(_) => true,
            _ => false,
        }
    }
}

/// One server reply: its code and its lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The lines joined by spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// What the server offers, from its EHLO reply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub auth_xoauth2: bool,
    pub auth_oauthbearer: bool,
    /// Any AUTH mechanism at all, including ones followup does not speak.
    pub auth_any: bool,
}

impl Extensions {
    fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        // The first line is the server's name; each further line is one keyword with
        // its parameters. `AUTH=` is an old spelling some servers still send.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            let (keyword, first) = match keyword.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (keyword, None),
            };
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "AUTH" => {
                    for m in first.into_iter().chain(words.map(str::to_string)) {
                        ext.auth_any = true;
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => ext.auth_plain = true,
                            "LOGIN" => ext.auth_login = true,
                            "XOAUTH2" => ext.auth_xoauth2 = true,
                            "OAUTHBEARER" => ext.auth_oauthbearer = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        ext
    }
}

/// A login for AUTH.
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a SecretString,
    /// Some: `password` is an OAuth2 access token, sent with this SASL mechanism.
    pub oauth: Option<crate::mail::oauth::Mechanism>,
}

/// Plain TCP or TLS.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How message `k` ended, if the server answered its content: a message with no
/// answer is not told, and stays in doubt.
fn told(k: usize, results: &[Option<Result<Reply, Error>>]) -> Option<Told> {
    match results.get(k)? {
        Some(Ok(_)) => Some(Told {
            index: k,
            accepted: true,
        }),
        Some(Err(Error::Refused { .. })) => Some(Told {
            index: k,
            accepted: false,
        }),
        _ => None,
    }
}

/// How a message ended, told to [`Connection::send_all`]'s `leaving` with the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    pub index: usize,
    /// The server took it (2xx to its content).
    pub accepted: bool,
}

/// One message for [`Connection::send_all`]: its envelope and its formatted bytes.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub envelope: &'a Envelope,
    pub raw: &'a [u8],
}

/// An open, greeted (and, if asked, secured and authenticated) SMTP connection.
pub struct Connection {
    stream: Stream,
    /// Bytes read and not yet parsed start at `read_pos`.
    read: Vec<u8>,
    read_pos: usize,
    /// Reused for every write, so that a connection allocates once.
    write: Vec<u8>,
    extensions: Extensions,
    /// Set while a transaction is under way; still set afterwards if it did not end
    /// cleanly, and then the connection must not be reused.
    broken: bool,
    /// How long the answer to an end of data may take ([`DATA_TIMEOUT`] by default).
    data_timeout: Duration,
}

impl Connection {
    /// Connects to `host:port` with `TCP_NODELAY` (without it the content's last write
    /// waits for the server's delayed ACK, ~40 ms: see NOTES.md), reads the greeting,
    /// says EHLO, upgrades with STARTTLS when asked, and logs in when given a login and
    /// the server offers AUTH. A relay that offers no AUTH at all (a local Postfix
    /// trusting 127.0.0.1) gets the mail without it, and answers with a 5xx if it
    /// wanted a login after all.
    pub async fn connect(
        host: &str,
        port: u16,
        security: Security,
        trust: &Trust,
        hello: &ClientId,
        login: Option<Login<'_>>,
    ) -> Result<Connection, Error> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let stream = match security {
            Security::Tls => Stream::Tls(Box::new(
                trust.connect(host, tcp).await.map_err(Error::Tls)?,
            )),
            Security::Plain | Security::StartTls => Stream::Plain(tcp),
        };
        let mut conn = Connection {
            stream,
            read: Vec::with_capacity(1024),
            read_pos: 0,
            write: Vec::with_capacity(8 * 1024),
            extensions: Extensions::default(),
            broken: false,
            data_timeout: DATA_TIMEOUT,
        };
        let greeting = conn.read_reply().await?;
        if greeting.code != 220 {
            return Err(Error::Refused { reply: greeting });
        }
        conn.ehlo(hello).await?;
        if security == Security::StartTls {
            if !conn.extensions.starttls {
                return Err(Error::Unsupported(format!(
                    "{host}:{port} does not offer STARTTLS (use smtps:// or smtp:// if that is intended)"
                )));
            }
            conn.expect("STARTTLS\r\n", 220).await?;
            conn = conn.start_tls(host, trust).await?;
            conn.ehlo(hello).await?;
        }
        if let Some(login) = login {
            if conn.extensions.auth_any {
                let server = format!("{host}:{port}");
                conn.auth(&login).await.map_err(|e| match e {
                    Error::Refused { reply } => Error::Login {
                        server,
                        reply: reply.to_string(),
                    },
                    Error::Unsupported(reply) => Error::Login { server, reply },
                    e => e,
                })?;
            }
        }
        Ok(conn)
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// How long the answer to an end of data may take (`[send] data_timeout`).
    pub fn set_data_timeout(&mut self, timeout: Duration) {
        self.data_timeout = timeout;
    }

    /// Whether the last transaction left the conversation in an unknown state.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends one message to the envelope's recipients. Every recipient must be
    /// accepted. Returns the server's reply to the content.
    pub async fn send(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<Reply, Error> {
        let one = [Outgoing { envelope, raw }];
        let mut results = self
            .send_all(&one, |_| async { true }, |_, _| async { true })
            .await;
        match results.pop() {
            Some(Some(result)) => result,
            _ => Err(Error::Protocol("no result".into())),
        }
    }

    /// Sends messages one after another, each to all of its envelope's recipients, and
    /// returns one result per message, in order: the server's reply to the content, or
    /// why it was not accepted; `None` for a message `wanted` turned down.
    ///
    /// Where the server offers PIPELINING, a message's content and final dot go out in
    /// one write with the next message's MAIL FROM, RCPT TO and DATA (RFC 2920 allows a
    /// command group after the end of data; its example sends QUIT so), and their
    /// replies come back together: after the first, a message costs one round trip.
    /// Only commands run ahead, never content, so whatever happens to one message, the
    /// next has not been sent: a refusal ends only its own transaction, and after a
    /// broken connection the messages left fail as not sent (worth a retry).
    ///
    /// `wanted(i)` is asked about each message just before its commands are written
    /// (where they run ahead, that is just before the content of the message before
    /// it), so that the caller can take back one that waited its turn. A message whose
    /// commands ran ahead is asked again before its content if the server took more
    /// than 50 ms over the message before it; turned down then, the server is waiting
    /// for its content, so the connection is dropped and the messages after it fail as
    /// not sent.
    ///
    /// `leaving(Some(i), told)` is awaited just before message `i`'s content and final
    /// dot are written, with how the message before it on this connection ended (if the
    /// server answered it): the caller makes both durable, so that after a crash at
    /// most the one message whose end of data is on the wire can be in doubt. If it
    /// returns false the content is not written: the message fails as not sent
    /// ([`Error::NotLeaving`]), and the connection is dropped. At the end of the run
    /// `leaving(None, told)` tells how the last message ended. A message whose end of
    /// data was written and got no answer fails with [`Error::InDoubt`].
    pub async fn send_all<F, Fut, L, LFut>(
        &mut self,
        messages: &[Outgoing<'_>],
        mut wanted: F,
        mut leaving: L,
    ) -> Vec<Option<Result<Reply, Error>>>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = bool>,
        L: FnMut(Option<usize>, Option<Told>) -> LFut,
        LFut: std::future::Future<Output = bool>,
    {
        let mut results: Vec<Option<Result<Reply, Error>>> =
            (0..messages.len()).map(|_| None).collect();
        // The next message wanted, from `from` on.
        async fn next_wanted<F, Fut>(from: usize, n: usize, wanted: &mut F) -> Option<usize>
        where
            F: FnMut(usize) -> Fut,
            Fut: std::future::Future<Output = bool>,
        {
            for i in from..n {
                if wanted(i).await {
                    return Some(i);
                }
            }
            None
        }
        let n = messages.len();
        let aborted = || {
            Some(Err(Error::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection broke before this message was sent",
            ))))
        };
        // How many replies are owed to the commands already written for the message
        // whose turn is next, and when it was last asked about.
        let mut ahead: Option<usize> = None;
        let mut asked = std::time::Instant::now();
        let mut current = next_wanted(0, n, &mut wanted).await;
        // The last message marked leaving whose end `leaving` has not been told yet (a
        // message that never reached its content was never marked: nothing to tell).
        let mut untold: Option<usize> = None;
        while let Some(i) = current {
            let rode_along = ahead.is_some();
            let opened = self.open(&messages[i], &mut ahead).await;
            // Its commands went out with the content before it, and the server took its
            // time over that one: ask again before this content goes. Turned down now,
            // the server is waiting for content that must not come; only dropping the
            // connection ends that.
            if opened.is_ok() && rode_along && asked.elapsed() > ASK_AGAIN_AFTER && !wanted(i).await
            {
                self.broken = true;
                for r in results.iter_mut().skip(i + 1) {
                    *r = aborted();
                }
                break;
            }
            // The next message is asked about just before its commands are written:
            // here, with this content, when they can run ahead, or else when its turn
            // comes.
            let mut next = None;
            let mut looked_ahead = false;
            let result = match opened {
                Ok(()) => {
                    if self.extensions.pipelining {
                        next = next_wanted(i + 1, n, &mut wanted).await;
                        looked_ahead = true;
                        asked = std::time::Instant::now();
                    }
                    let told = untold.take().and_then(|k| told(k, &results));
                    if leaving(Some(i), told).await {
                        untold = Some(i);
                        self.close(&messages[i], next.map(|j| &messages[j]), &mut ahead)
                            .await
                    } else {
                        // The server waits for content that must not come: only dropping
                        // the connection ends that.
                        self.broken = true;
                        Err(Error::NotLeaving(
                            "could not record that it was leaving".into(),
                        ))
                    }
                }
                Err(e) => Err(e),
            };
            results[i] = Some(result);
            if self.broken {
                for r in results.iter_mut().skip(i + 1) {
                    *r = aborted();
                }
                break;
            }
            current = if looked_ahead {
                next
            } else {
                next_wanted(i + 1, n, &mut wanted).await
            };
        }
        // How the last message ended is told before the connection can be used again,
        // so that its next run's first message is the only one left.
        if let Some(t) = untold.and_then(|k| told(k, &results)) {
            leaving(None, Some(t)).await;
        }
        results
    }

    /// A mail transaction's first half: MAIL FROM, RCPT TO and DATA (or, if they ran
    /// ahead, their replies), up to the server's go-ahead for the content.
    async fn open(&mut self, m: &Outgoing<'_>, ahead: &mut Option<usize>) -> Result<(), Error> {
        let data = match ahead.take() {
            Some(n_replies) => {
                self.broken = true;
                self.pipelined_replies(n_replies).await?
            }
            None => {
                // Checked before a byte is written: a message this server cannot take
                // leaves the connection as it was.
                let (commands, n_replies) = self.commands(m)?;
                self.broken = true;
                if self.extensions.pipelining {
                    self.write_all(commands.as_bytes()).await?;
                    self.pipelined_replies(n_replies).await?
                } else {
                    let mut last = None;
                    for line in commands.split_inclusive("\r\n") {
                        self.write_all(line.as_bytes()).await?;
                        let reply = self.read_reply().await?;
                        if !reply.positive() {
                            return Err(self.refused_then_reset(reply).await);
                        }
                        last = Some(reply);
                    }
                    match last {
                        Some(l) => l,
                        None => return Err(Error::Protocol("no reply to DATA".into())),
                    }
                }
            }
        };
        if data.code != 354 {
            // A 2xx to DATA is not the go-ahead; the state is unknown.
            return Err(Error::Protocol(format!("unexpected reply to DATA: {data}")));
        }
        Ok(())
    }

    /// Its second half: the content and its final dot, with `next`'s commands if they
    /// can run ahead, and the server's reply to the content.
    async fn close(
        &mut self,
        m: &Outgoing<'_>,
        next: Option<&Outgoing<'_>>,
        ahead: &mut Option<usize>,
    ) -> Result<Reply, Error> {
        let mut out = std::mem::take(&mut self.write);
        out.clear();
        dot_stuff(m.raw, &mut out);
        let run_ahead = match next {
            Some(next) if self.extensions.pipelining => self.commands(next).ok(),
            _ => None,
        };
        if let Some((commands, _)) = &run_ahead {
            out.extend_from_slice(commands.as_bytes());
        }
        let written = self.write_all(&out).await;
        self.write = out;
        // A write that failed never handed its last bytes, the final dot, to the
        // network: the server cannot have taken the message.
        written?;
        *ahead = run_ahead.map(|(_, n)| n);
        // From here the server may have the whole message: without its answer, it is
        // in doubt.
        let reply = self
            .read_reply_within(self.data_timeout)
            .await
            .map_err(|e| Error::InDoubt(e.to_string()))?;
        // The transaction is over either way; the connection is fine.
        self.broken = false;
        if !(200..300).contains(&reply.code) {
            return Err(Error::Refused { reply });
        }
        Ok(reply)
    }

    /// MAIL FROM (with the parameters the message needs), RCPT TO for each recipient
    /// and DATA, and how many replies they are owed; an error if this server cannot
    /// carry the message.
    fn commands(&self, m: &Outgoing<'_>) -> Result<(String, usize), Error> {
        let mut params = Vec::new();
        let non_ascii = m
            .envelope
            .from()
            .into_iter()
            .chain(m.envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !self.extensions.smtputf8 {
                return Err(Error::Unsupported(
                    "the server does not offer SMTPUTF8, which a non-ASCII address needs".into(),
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !m.raw.is_ascii() {
            if !self.extensions.eight_bit_mime {
                return Err(Error::Unsupported(
                    "the server does not offer 8BITMIME, which this message needs".into(),
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mut commands = String::with_capacity(128);
        // Writing into a String cannot fail.
        let _ = write!(
            commands,
            "{}",
            Mail::new(m.envelope.from().cloned(), params)
        );
        for to in m.envelope.to() {
            let _ = write!(commands, "{}", Rcpt::new(to.clone(), Vec::new()));
        }
        commands.push_str("DATA\r\n");
        Ok((commands, 2 + m.envelope.to().len()))
    }

    /// The replies to a pipelined MAIL FROM, RCPT TO… and DATA: every one is read,
    /// whatever came before, so that the conversation stays in step; the first refusal
    /// is the one reported. Returns the reply to DATA.
    async fn pipelined_replies(&mut self, n_replies: usize) -> Result<Reply, Error> {
        let mut refused = None;
        let mut last = None;
        for _ in 0..n_replies {
            let reply = self.read_reply().await?;
            if refused.is_none() && !reply.positive() {
                refused = Some(reply.clone());
            }
            last = Some(reply);
        }
        match (refused, last) {
            // DATA was accepted although something before it was not: the server waits
            // for content that must not come. Only dropping the connection ends that
            // (it stays marked broken).
            (Some(r), Some(l)) if l.code == 354 => Err(Error::Refused { reply: r }),
            (Some(r), _) => Err(self.refused_then_reset(r).await),
            (None, Some(l)) => Ok(l),
            (None, None) => Err(Error::Protocol("no reply to DATA".into())),
        }
    }

    /// Says goodbye; errors do not matter, the connection is closed either way.
    pub async fn quit(&mut self) {
        if self.write_all(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply().await;
        }
        let _ = self.stream.shutdown().await;
    }

    /// After a refused MAIL FROM, RCPT TO or DATA: RSET, so that the connection can
    /// carry the next message. If RSET fails too, the connection stays broken.
    async fn refused_then_reset(&mut self, reply: Reply) -> Error {
        if self.expect("RSET\r\n", 250).await.is_ok() {
            self.broken = false;
        }
        Error::Refused { reply }
    }

    async fn ehlo(&mut self, hello: &ClientId) -> Result<(), Error> {
        let ehlo = Ehlo::new(hello.clone()).to_string();
        self.write_all(ehlo.as_bytes()).await?;
        let reply = self.read_reply().await?;
        if reply.positive() {
            self.extensions = Extensions::from_ehlo(&reply);
            return Ok(());
        }
        // A server that does not speak ESMTP: HELO, and no extensions.
        self.expect(&format!("HELO {hello}\r\n"), 250).await?;
        self.extensions = Extensions::default();
        Ok(())
    }

    async fn start_tls(self, host: &str, trust: &Trust) -> Result<Connection, Error> {
        // Anything the server sent after its 220 came before TLS and could be an
        // attacker's (the STARTTLS injection of CVE-2011-0411): refuse it.
        if self.read_pos < self.read.len() {
            return Err(Error::Protocol("data after the reply to STARTTLS".into()));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(Error::Protocol("STARTTLS on a TLS connection".into()));
        };
        let tls = trust.connect(host, tcp).await.map_err(Error::Tls)?;
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls)),
            read: self.read,
            read_pos: 0,
            write: self.write,
            extensions: Extensions::default(),
            broken: false,
            data_timeout: self.data_timeout,
        })
    }

    /// AUTH PLAIN if offered, else AUTH LOGIN. The password is written to the socket
    /// and nowhere else.
    async fn auth(&mut self, login: &Login<'_>) -> Result<(), Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(mechanism) = login.oauth {
            return self.auth_oauth(mechanism, login).await;
        }
        if self.extensions.auth_plain {
            let token = format!("\0{}\0{}", login.user, login.password.expose_secret());
            let command = SecretString::from(format!("AUTH PLAIN {}\r\n", b64.encode(token)));
            return self.expect(command.expose_secret(), 235).await.map(drop);
        }
        if self.extensions.auth_login {
            self.expect("AUTH LOGIN\r\n", 334).await?;
            self.expect(&format!("{}\r\n", b64.encode(login.user)), 334)
                .await?;
            let password = SecretString::from(format!(
                "{}\r\n",
                b64.encode(login.password.expose_secret())
            ));
            return self.expect(password.expose_secret(), 235).await.map(drop);
        }
        Err(Error::Unsupported(
            "the server offers no AUTH mechanism followup speaks (PLAIN, LOGIN)".into(),
        ))
    }

    /// AUTH XOAUTH2 or OAUTHBEARER with the token as initial response (RFC 4954). A
    /// refused token gets a 334 with the server's JSON status first; the client
    /// answers it as the mechanism says, and the server then ends with its 5xx.
    async fn auth_oauth(
        &mut self,
        mechanism: crate::mail::oauth::Mechanism,
        login: &Login<'_>,
    ) -> Result<(), Error> {
        use crate::mail::oauth::Mechanism;
        let offered = match mechanism {
            Mechanism::XOAuth2 => self.extensions.auth_xoauth2,
            Mechanism::OAuthBearer => self.extensions.auth_oauthbearer,
        };
        if !offered {
            return Err(Error::Unsupported(format!(
                "the server does not offer AUTH {}",
                mechanism.name()
            )));
        }
        let command = SecretString::from(format!(
            "AUTH {} {}\r\n",
            mechanism.name(),
            mechanism
                .initial_response_b64(login.user, login.password)
                .expose_secret()
        ));
        self.write_all(command.expose_secret().as_bytes()).await?;
        let mut reply = self.read_reply().await?;
        if reply.code == 334 {
            let b64 = base64::engine::general_purpose::STANDARD;
            let answer = format!("{}\r\n", b64.encode(mechanism.after_error()));
            self.write_all(answer.as_bytes()).await?;
            reply = self.read_reply().await?;
        }
        match reply.code {
            235 => Ok(()),
            _ if reply.positive() => Err(Error::Protocol(format!("unexpected reply: {reply}"))),
            _ => Err(Error::Refused { reply }),
        }
    }

    /// Writes one command and wants `code` back.
    async fn expect(&mut self, command: &str, code: u16) -> Result<Reply, Error> {
        self.write_all(command.as_bytes()).await?;
        let reply = self.read_reply().await?;
        if reply.code == code {
            Ok(reply)
        } else if reply.positive() {
            Err(Error::Protocol(format!("unexpected reply: {reply}")))
        } else {
            Err(Error::Refused { reply })
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let write = async {
            self.stream.write_all(bytes).await?;
            // A no-op on TCP; on TLS it pushes the records out.
            self.stream.flush().await
        };
        match tokio::time::timeout(IO_TIMEOUT, write).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(timed_out("writing to", IO_TIMEOUT)),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, Error> {
        self.read_reply_within(IO_TIMEOUT).await
    }

    async fn read_reply_within(&mut self, timeout: Duration) -> Result<Reply, Error> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.read[self.read_pos..])? {
                self.read_pos += used;
                if self.read_pos == self.read.len() {
                    self.read.clear();
                    self.read_pos = 0;
                }
                return Ok(reply);
            }
            if self.read.len() - self.read_pos > MAX_REPLY {
                return Err(Error::Protocol("reply too long".into()));
            }
            if self.read_pos > 0 {
                self.read.drain(..self.read_pos);
                self.read_pos = 0;
            }
            self.read.reserve(1024);
            let read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.read));
            if read
                .await
                .map_err(|_| timed_out("waiting for", timeout))??
                == 0
            {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }
}

/// One complete reply from the start of `buf`, with the bytes it took; `None` while
/// its last line has not arrived.
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, Error> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    while let Some(nl) = memchr(b'\n', &buf[pos..]) {
        let raw = &buf[pos..pos + nl];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        let bad = || {
            Error::Protocol(format!(
                "not an SMTP reply: {:?}",
                String::from_utf8_lossy(line)
            ))
        };
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let this = line[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if *code.get_or_insert(this) != this {
            return Err(bad());
        }
        let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
        match line.get(3) {
            None | Some(b' ') => {
                lines.push(text);
                return Ok(Some((Reply { code: this, lines }, pos)));
            }
            Some(b'-') => lines.push(text),
            Some(_) => return Err(bad()),
        }
    }
    Ok(None)
}

/// Appends `raw` as DATA content: a dot doubled at the start of every line (RFC 5321
/// §4.5.2), a line end added if the message lacks its last one, then the final dot.
/// A line starts after every LF, bare or not, as servers that accept bare LFs see it.
fn dot_stuff(raw: &[u8], out: &mut Vec<u8>) {
    out.reserve(raw.len() + raw.len() / 64 + 5);
    let mut rest = raw;
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    while let Some(nl) = memchr(b'\n', rest) {
        out.extend_from_slice(&rest[..=nl]);
        rest = &rest[nl + 1..];
        if rest.first() == Some(&b'.') {
            out.push(b'.');
        }
    }
    out.extend_from_slice(rest);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Option<(Reply, usize)> {
        parse_reply(s.as_bytes()).unwrap()
    }

    #[test]
    fn replies_are_parsed_line_by_line_and_wait_for_their_last_line() {
        let (r, used) = reply("250 2.0.0 Ok: queued as X\r\n").unwrap();
        assert_eq!(
            (r.code, r.text().as_str(), used),
            (250, "2.0.0 Ok: queued as X", 27)
        );
        assert_eq!(reply("250-first\r\n250-sec"), None);
        let (r, used) = reply("250-first\r\n250 last\r\n354 next").unwrap();
        assert_eq!(
            (r.lines.len(), r.text().as_str(), used),
            (2, "first last", 21)
        );
        let (r, _) = reply("250\r\n").unwrap();
        assert_eq!((r.code, r.text().as_str()), (250, ""));
        // Bare LF line ends, as some servers send them.
        assert_eq!(reply("451 try later\n").unwrap().0.code, 451);
    }

    #[test]
    fn garbage_and_mixed_codes_are_protocol_errors() {
        for bad in ["hello\r\n", "25\r\n", "250-a\r\n550 b\r\n", "250xyz\r\n"] {
            assert!(
                matches!(parse_reply(bad.as_bytes()), Err(Error::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ehlo_extensions_are_read_whatever_their_case_or_spelling() {
        let r = Reply {
            code: 250,
            lines: [
                "mx.example Hello",
                "pipelining",
                "8BITMIME",
                "AUTH=LOGIN",
                "AUTH XOAUTH2 PLAIN",
                "STARTTLS",
                "SIZE 1000",
            ]
            .map(String::from)
            .to_vec(),
        };
        let e = Extensions::from_ehlo(&r);
        assert!(
            e.pipelining
                && e.eight_bit_mime
                && e.starttls
                && e.auth_plain
                && e.auth_login
                && e.auth_any
        );
        assert!(!e.smtputf8);
        // The greeting line is the server's name, never a keyword.
        let r = Reply {
            code: 250,
            lines: vec!["PIPELINING".into()],
        };
        assert!(!Extensions::from_ehlo(&r).pipelining);
    }

    #[test]
    fn content_is_dot_stuffed_and_ends_with_one_final_dot() {
        let mut out = Vec::new();
        dot_stuff(b".a\r\n..b\r\nc.\r\n.\r\n", &mut out);
        assert_eq!(out, b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n");
        out.clear();
        dot_stuff(b"no end", &mut out);
        assert_eq!(out, b"no end\r\n.\r\n");
        out.clear();
        dot_stuff(b"bare\n.lf\r\n", &mut out);
        assert_eq!(out, b"bare\n..lf\r\n.\r\n");
    }

    /// A scripted server on loopback: answers each command line by `answer`, and
    /// content (after a 354) at its final dot with `answer(".")` (after 300 ms if that
    /// starts with `~`). With `hold`, the
    /// replies to MAIL and RCPT are held back until the next other command, as a client
    /// that waited for each reply would wait forever. An empty answer hangs up. Returns
    /// its port and what it received, line by line, once the client hangs up.
    async fn scripted(
        hold: bool,
        answer: impl FnMut(&str) -> &'static str + Send + 'static,
    ) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        scripted_with(hold, false, answer).await
    }

    /// [`scripted`], and with `hold_dot` the reply to each final dot is held back too,
    /// until the next line comes or, if none comes within a second, until then. The
    /// received lines then say which: `<released by MAIL>` or `<released by wait>`.
    async fn scripted_with(
        hold: bool,
        hold_dot: bool,
        mut answer: impl FnMut(&str) -> &'static str + Send + 'static,
    ) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::AsyncBufReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut r = tokio::io::BufReader::new(r);
            w.write_all(b"220 test ESMTP\r\n").await.unwrap();
            let mut seen = Vec::new();
            let mut in_data = false;
            let mut held = String::new();
            let mut dot_held = false;
            let mut line = String::new();
            loop {
                let read = if dot_held {
                    let wait = Duration::from_secs(1);
                    match tokio::time::timeout(wait, r.read_line(&mut line)).await {
                        Ok(n) => n.unwrap_or(0),
                        Err(_) => {
                            seen.push("<released by wait>".to_string());
                            w.write_all(held.as_bytes()).await.unwrap();
                            held.clear();
                            dot_held = false;
                            continue;
                        }
                    }
                } else {
                    r.read_line(&mut line).await.unwrap_or(0)
                };
                if read == 0 {
                    break;
                }
                let l = line.trim_end().to_string();
                line.clear();
                if dot_held {
                    let by = l.split(' ').next().unwrap_or("");
                    seen.push(format!("<released by {by}>"));
                    dot_held = false;
                    // Not written yet: it goes out with the reply to this line.
                }
                if in_data {
                    if l == "." {
                        in_data = false;
                        seen.push("<content>".to_string());
                        let a = answer(".");
                        if a.is_empty() {
                            break;
                        }
                        // A leading `~`: a server that takes its time over this one.
                        let a = match a.strip_prefix('~') {
                            Some(a) => {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                a
                            }
                            None => a,
                        };
                        held.push_str(a);
                        if hold_dot {
                            dot_held = true;
                        } else {
                            w.write_all(held.as_bytes()).await.unwrap();
                            held.clear();
                        }
                    }
                    continue;
                }
                let a = answer(&l);
                if a.is_empty() {
                    break;
                }
                in_data = a.starts_with("354");
                held.push_str(a);
                if !(hold && (l.starts_with("MAIL") || l.starts_with("RCPT"))) {
                    w.write_all(held.as_bytes()).await.unwrap();
                    held.clear();
                }
                seen.push(l);
            }
            seen
        });
        (port, task)
    }

    /// Answers of a server that offers `ehlo`, refuses the recipient whose RCPT line
    /// starts with `refused` (550, then 503 to its DATA), answers each final dot with
    /// `dot()`, and everything else with 250.
    fn refusing(
        refused: &'static str,
        ehlo: &'static str,
        mut dot: impl FnMut() -> &'static str + Send + 'static,
    ) -> impl FnMut(&str) -> &'static str + Send + 'static {
        let mut refusing = false;
        move |l| match l {
            l if l.starts_with("EHLO") => ehlo,
            l if l.starts_with("RCPT") => {
                refusing = l.starts_with(refused);
                if refusing {
                    "550 5.1.1 no such user\r\n"
                } else {
                    "250 ok\r\n"
                }
            }
            "DATA" if refusing => "503 5.5.1 no valid recipients\r\n",
            "DATA" => "354 go ahead\r\n",
            "." => dot(),
            _ => "250 ok\r\n",
        }
    }

    async fn client(port: u16) -> Connection {
        let hello = ClientId::Domain("client.example".into());
        Connection::connect(
            "127.0.0.1",
            port,
            Security::Plain,
            &Trust::public(),
            &hello,
            None,
        )
        .await
        .unwrap()
    }

    fn envelope(to: &str) -> Envelope {
        Envelope::new(
            Some("rep@seller.example".parse().unwrap()),
            vec![to.parse().unwrap()],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_refused_recipient_is_reported_and_the_connection_reset_for_the_next_message() {
        let (port, server) = scripted(
            true,
            refusing(
                "RCPT TO:<gone@",
                "250-test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                || "250 ok\r\n",
            ),
        )
        .await;
        let mut c = client(port).await;
        assert!(c.extensions().pipelining);
        // A client that waited for each reply would hang here, the replies being held.
        let gone = envelope("gone@buyer.example");
        let sent = c.send(&gone, b"Subject: x\r\n\r\nhi\r\n");
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sent)
            .await
            .expect("MAIL, RCPT and DATA pipelined")
            .unwrap_err();
        assert_eq!(e.to_string(), "permanent error (550): 5.1.1 no such user");
        assert!(!c.is_broken(), "RSET made the connection usable again");
        let ok = c
            .send(&envelope("here@buyer.example"), b"Subject: x\r\n\r\nhi\r\n")
            .await
            .unwrap();
        assert_eq!(ok.code, 250);
        c.quit().await;
        let seen = server.await.unwrap();
        // The server held its replies to MAIL and RCPT until DATA came: the client
        // sent all three before reading any. After the refusal, RSET.
        assert_eq!(
            seen,
            [
                "EHLO client.example",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<gone@buyer.example>",
                "DATA",
                "RSET",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<here@buyer.example>",
                "DATA",
                "<content>",
                "QUIT",
            ]
        );
    }

    #[tokio::test]
    async fn a_go_ahead_after_a_refusal_sends_no_content_and_drops_the_connection() {
        // A server that says 354 to DATA although it refused the only recipient.
        let (port, server) = scripted(true, |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            l if l.starts_with("RCPT") => "451 4.3.0 try later\r\n",
            "DATA" => "354 go ahead\r\n",
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        let e = c
            .send(&envelope("a@buyer.example"), b"Subject: x\r\n\r\nhi\r\n")
            .await
            .unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(c.is_broken());
        drop(c);
        assert!(!server.await.unwrap().contains(&"<content>".to_string()));
    }

    #[tokio::test]
    async fn without_pipelining_each_command_waits_for_its_reply_and_a_refusal_stops_there() {
        let (port, server) = scripted(false, |l| match l {
            l if l.starts_with("EHLO") => "250 test\r\n",
            l if l.starts_with("MAIL") => "421 4.7.0 closing\r\n",
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        let e = c
            .send(&envelope("a@buyer.example"), b"x\r\n")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "transient error (421): 4.7.0 closing");
        c.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                "EHLO client.example",
                "MAIL FROM:<rep@seller.example>",
                "RSET",
                "QUIT"
            ]
        );
    }

    #[tokio::test]
    async fn starttls_that_the_server_does_not_offer_is_refused_before_any_mail() {
        let (port, _server) = scripted(false, |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            _ => "250 ok\r\n",
        })
        .await;
        let hello = ClientId::Domain("client.example".into());
        let e = Connection::connect(
            "127.0.0.1",
            port,
            Security::StartTls,
            &Trust::public(),
            &hello,
            None,
        )
        .await
        .err()
        .unwrap();
        assert!(
            e.is_permanent() && e.to_string().contains("does not offer STARTTLS"),
            "{e}"
        );
    }

    /// One envelope to `NAME@buyer.example` for each name.
    fn envelopes(names: &[&str]) -> Vec<Envelope> {
        names
            .iter()
            .map(|n| envelope(&format!("{n}@buyer.example")))
            .collect()
    }

    /// Every message wanted; every one has a result.
    async fn send_all(c: &mut Connection, messages: &[Outgoing<'_>]) -> Vec<Result<Reply, Error>> {
        let results = c
            .send_all(messages, |_| async { true }, |_, _| async { true })
            .await;
        results.into_iter().map(|r| r.unwrap()).collect()
    }

    fn outgoing<'a>(envelopes: &'a [Envelope], raw: &'a [u8]) -> Vec<Outgoing<'a>> {
        envelopes
            .iter()
            .map(|envelope| Outgoing { envelope, raw })
            .collect()
    }

    #[tokio::test]
    async fn each_end_of_data_carries_the_next_messages_commands() {
        // The server holds its reply to each final dot until more comes: a client
        // that waited for it before the next MAIL FROM would release it only by the
        // server's one-second wait.
        let (port, server) = scripted_with(true, true, |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            "DATA" => "354 go ahead\r\n",
            "." => "250 2.0.0 queued\r\n",
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        let to = envelopes(&["a", "b", "c"]);
        let results = send_all(&mut c, &outgoing(&to, b"Subject: x\r\n\r\nhi\r\n")).await;
        assert!(results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.code == 250)));
        assert!(!c.is_broken());
        c.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                "EHLO client.example",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<a@buyer.example>",
                "DATA",
                "<content>",
                "<released by MAIL>",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<b@buyer.example>",
                "DATA",
                "<content>",
                "<released by MAIL>",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<c@buyer.example>",
                "DATA",
                "<content>",
                // The last message has nothing to carry: its reply is waited for.
                "<released by wait>",
                "QUIT",
            ]
        );
    }

    #[tokio::test]
    async fn a_refusal_in_a_run_ends_only_its_own_transaction() {
        // b's recipient is refused; a's content is refused after its dot, with b's
        // commands already on their way. Each message gets its own answer.
        let mut dots = 0;
        let (port, server) = scripted(
            true,
            refusing("RCPT TO:<b@", "250-test\r\n250 PIPELINING\r\n", move || {
                dots += 1;
                if dots == 1 {
                    "554 5.7.1 content rejected\r\n"
                } else {
                    "250 2.0.0 queued\r\n"
                }
            }),
        )
        .await;
        let mut c = client(port).await;
        let to = envelopes(&["a", "b", "c"]);
        let results = send_all(&mut c, &outgoing(&to, b"Subject: x\r\n\r\nhi\r\n")).await;
        let said: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(r) => r.code.to_string(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(
            said,
            [
                "permanent error (554): 5.7.1 content rejected",
                "permanent error (550): 5.1.1 no such user",
                "250",
            ]
        );
        assert!(!c.is_broken());
        c.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                "EHLO client.example",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<a@buyer.example>",
                "DATA",
                "<content>",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<b@buyer.example>",
                "DATA",
                "RSET",
                "MAIL FROM:<rep@seller.example>",
                "RCPT TO:<c@buyer.example>",
                "DATA",
                "<content>",
                "QUIT",
            ]
        );
    }

    #[tokio::test]
    async fn a_message_taken_back_before_its_turn_is_never_begun() {
        let (port, server) = scripted(true, |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            "DATA" => "354 go ahead\r\n",
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        let to = envelopes(&["a", "b", "c", "d"]);
        let asked = std::sync::Mutex::new(Vec::new());
        let results = c
            .send_all(
                &outgoing(&to, b"Subject: x\r\n\r\nhi\r\n"),
                |i| {
                    asked.lock().unwrap().push(i);
                    async move { i != 1 && i != 3 }
                },
                |_, _| async { true },
            )
            .await;
        assert!(results[0].as_ref().is_some_and(|r| r.is_ok()));
        assert!(results[1].is_none(), "b was taken back");
        assert!(results[2].as_ref().is_some_and(|r| r.is_ok()));
        assert!(results[3].is_none(), "d was taken back");
        // Each asked about in turn; once, unless the server took longer than
        // ASK_AGAIN_AFTER over the message before (a loaded machine), when a message
        // whose commands ran ahead is asked again before its content.
        let asked = asked.lock().unwrap().clone();
        let mut first_asks = asked.clone();
        first_asks.dedup();
        assert_eq!(first_asks, [0, 1, 2, 3], "{asked:?}");
        for i in 0..4 {
            assert!(asked.iter().filter(|&&j| j == i).count() <= 2, "{asked:?}");
        }
        c.quit().await;
        let seen = server.await.unwrap();
        for gone in ["RCPT TO:<b@buyer.example>", "RCPT TO:<d@buyer.example>"] {
            assert!(!seen.contains(&gone.to_string()), "{seen:?}");
        }
        assert_eq!(seen.iter().filter(|l| *l == "<content>").count(), 2);
    }

    #[tokio::test]
    async fn a_message_taken_back_while_the_server_was_slow_is_not_sent_and_the_connection_dropped()
    {
        // The server takes 300 ms over a's content; b's commands are already there
        // when b is taken back, so b's content must not follow.
        let (port, server) = scripted(false, |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            "DATA" => "354 go ahead\r\n",
            "." => "~250 2.0.0 queued\r\n",
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        let to = envelopes(&["a", "b", "c"]);
        let asked = std::sync::Mutex::new(Vec::new());
        let results = c
            .send_all(
                &outgoing(&to, b"Subject: x\r\n\r\nhi\r\n"),
                |i| {
                    let mut asked = asked.lock().unwrap();
                    asked.push(i);
                    // b is wanted when first asked, no longer when asked again.
                    let yes = !(i == 1 && asked.iter().filter(|&&j| j == 1).count() > 1);
                    async move { yes }
                },
                |_, _| async { true },
            )
            .await;
        assert!(results[0].as_ref().is_some_and(|r| r.is_ok()));
        assert!(results[1].is_none(), "b was taken back");
        let e = results[2].as_ref().unwrap().as_ref().unwrap_err();
        assert!(!e.is_permanent(), "c is only not sent yet: {e}");
        assert!(c.is_broken());
        drop(c);
        let seen = server.await.unwrap();
        assert!(
            seen.contains(&"RCPT TO:<b@buyer.example>".to_string()),
            "{seen:?}"
        );
        assert_eq!(
            seen.iter().filter(|l| *l == "<content>").count(),
            1,
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_lost_after_the_end_of_data_is_in_doubt_and_the_rest_not_sent() {
        // The server hangs up instead of answering the first message's final dot: it
        // may have taken a (in doubt, never retried blindly); b never left.
        let (port, server) = scripted(false, |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            "DATA" => "354 go ahead\r\n",
            "." => "",
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        let to = envelopes(&["a", "b"]);
        let results = send_all(&mut c, &outgoing(&to, b"Subject: x\r\n\r\nhi\r\n")).await;
        assert!(c.is_broken());
        assert_eq!(results.len(), 2);
        let a = results[0].as_ref().unwrap_err();
        assert!(matches!(a, Error::InDoubt(_)), "{a}");
        let b = results[1].as_ref().unwrap_err();
        assert!(matches!(b, Error::Io(_)) && !b.is_permanent(), "{b}");
        // b's commands went out with a's dot, but its content never did.
        let seen = server.await.unwrap();
        assert_eq!(seen.iter().filter(|l| *l == "<content>").count(), 1);
    }

    #[tokio::test]
    async fn no_answer_to_the_end_of_data_within_the_wait_is_in_doubt() {
        // The server takes 300 ms over the dot; the client waits 100 ms.
        let (port, _server) = scripted(false, |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            "DATA" => "354 go ahead\r\n",
            "." => "~250 2.0.0 queued\r\n",
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        c.set_data_timeout(Duration::from_millis(100));
        let e = c
            .send(&envelope("a@buyer.example"), b"Subject: x\r\n\r\nhi\r\n")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InDoubt(_)), "{e}");
        assert!(c.is_broken());
    }

    #[tokio::test]
    async fn leaving_is_told_each_message_before_its_content_with_how_the_one_before_ended() {
        // b's content is refused; a and c are taken; d's leaving is refused by the
        // caller (its mark could not be recorded), so d's content never goes.
        let mut dots = 0;
        let (port, server) = scripted(true, move |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
            "DATA" => "354 go ahead\r\n",
            "." => {
                dots += 1;
                if dots == 2 {
                    "550 5.7.1 rejected as spam\r\n"
                } else {
                    "250 2.0.0 queued\r\n"
                }
            }
            _ => "250 ok\r\n",
        })
        .await;
        let mut c = client(port).await;
        let to = envelopes(&["a", "b", "c", "d"]);
        let told = std::sync::Mutex::new(Vec::new());
        let results = c
            .send_all(
                &outgoing(&to, b"Subject: x\r\n\r\nhi\r\n"),
                |_| async { true },
                |i, t| {
                    told.lock().unwrap().push((i, t));
                    async move { i != Some(3) }
                },
            )
            .await;
        assert!(results[0].as_ref().is_some_and(|r| r.is_ok()));
        assert!(results[1].as_ref().is_some_and(|r| r.is_err()));
        assert!(results[2].as_ref().is_some_and(|r| r.is_ok()));
        let d = results[3].as_ref().unwrap().as_ref().unwrap_err();
        assert!(matches!(d, Error::NotLeaving(_)), "{d}");
        assert_eq!(
            *told.lock().unwrap(),
            [
                (Some(0), None),
                (
                    Some(1),
                    Some(Told {
                        index: 0,
                        accepted: true
                    })
                ),
                (
                    Some(2),
                    Some(Told {
                        index: 1,
                        accepted: false
                    })
                ),
                (
                    Some(3),
                    Some(Told {
                        index: 2,
                        accepted: true
                    })
                ),
                // d never left; c's end was told with d's leaving: nothing left to tell.
            ]
        );
        assert!(c.is_broken());
        drop(c);
        let seen = server.await.unwrap();
        assert_eq!(seen.iter().filter(|l| *l == "<content>").count(), 3);
    }

    #[test]
    fn refusals_read_as_lettre_worded_them_and_classify_by_first_digit() {
        let e = Error::Refused {
            reply: Reply {
                code: 550,
                lines: vec!["5.1.1 <a@b.example>: no such user".into()],
            },
        };
        assert_eq!(
            e.to_string(),
            "permanent error (550): 5.1.1 <a@b.example>: no such user"
        );
        assert!(e.is_permanent());
        let e = Error::Refused {
            reply: Reply {
                code: 451,
                lines: vec!["later".into()],
            },
        };
        assert!(!e.is_permanent());
        assert!(!Error::Io(io::Error::other("reset")).is_permanent());
        assert!(Error::Unsupported("no 8BITMIME".into()).is_permanent());
    }
}
