//! The SMTP client of the send path: one connection, one mail transaction at a time,
//! in two round trips where the server offers PIPELINING (RFC 2920).
//!
//! Why not lettre's `AsyncSmtpConnection`: it waits for the reply to MAIL FROM before
//! it sends RCPT TO, and for that before DATA, so every message costs four round trips
//! and four wake-ups on each side. Pipelined, MAIL FROM, RCPT TO and DATA go out in one
//! write and their replies come back in one read; then the content and its final dot.
//! On loopback that halves what the server and this process do per message; across a
//! WAN to a relay it halves the time each message holds a connection. lettre still
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

use base64::Engine as _;
use lettre::address::Envelope;
use lettre::transport::smtp::commands::{Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use memchr::memchr;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A reply longer than this is not SMTP (RFC 5321 allows 512 bytes per line; EHLO
/// answers run to a few dozen lines).
const MAX_REPLY: usize = 64 * 1024;

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
    #[error("network: {0}")]
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
        hello: &ClientId,
        login: Option<Login<'_>>,
    ) -> Result<Connection, Error> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let stream = match security {
            Security::Tls => Stream::Tls(Box::new(
                crate::mail::tls::connect(host, tcp)
                    .await
                    .map_err(Error::Tls)?,
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
            conn = conn.start_tls(host).await?;
            conn.ehlo(hello).await?;
        }
        if let Some(login) = login {
            if conn.extensions.auth_any {
                conn.auth(&login).await?;
            }
        }
        Ok(conn)
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Whether the last transaction left the conversation in an unknown state.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends one message to the envelope's recipients. Every recipient must be
    /// accepted. Returns the server's reply to the content.
    pub async fn send(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<Reply, Error> {
        let mut params = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !self.extensions.smtputf8 {
                return Err(Error::Unsupported(
                    "the server does not offer SMTPUTF8, which a non-ASCII address needs".into(),
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !raw.is_ascii() {
            if !self.extensions.eight_bit_mime {
                return Err(Error::Unsupported(
                    "the server does not offer 8BITMIME, which this message needs".into(),
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        self.broken = true;
        let mut commands = String::with_capacity(128);
        // Writing into a String cannot fail.
        let _ = write!(commands, "{}", Mail::new(envelope.from().cloned(), params));
        for to in envelope.to() {
            let _ = write!(commands, "{}", Rcpt::new(to.clone(), Vec::new()));
        }
        commands.push_str("DATA\r\n");
        let n_replies = 2 + envelope.to().len();

        let data = if self.extensions.pipelining {
            self.write_all(commands.as_bytes()).await?;
            // Every reply is read, whatever came before, so that the conversation stays
            // in step; the first refusal is the one reported.
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
                // DATA was accepted although something before it was not: the server
                // waits for content that must not come. Only dropping the connection
                // ends that (it stays marked broken).
                (Some(r), Some(l)) if l.code == 354 => return Err(Error::Refused { reply: r }),
                (Some(r), _) => return Err(self.refused_then_reset(r).await),
                (None, Some(l)) => l,
                (None, None) => return Err(Error::Protocol("no reply to DATA".into())),
            }
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
        };
        if data.code != 354 {
            // A 2xx to DATA is not the go-ahead; the state is unknown.
            return Err(Error::Protocol(format!("unexpected reply to DATA: {data}")));
        }

        let mut out = std::mem::take(&mut self.write);
        out.clear();
        dot_stuff(raw, &mut out);
        let written = self.write_all(&out).await;
        self.write = out;
        written?;
        let reply = self.read_reply().await?;
        if !(200..300).contains(&reply.code) {
            // The transaction is over either way; the connection is fine.
            self.broken = false;
            return Err(Error::Refused { reply });
        }
        self.broken = false;
        Ok(reply)
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

    async fn start_tls(self, host: &str) -> Result<Connection, Error> {
        // Anything the server sent after its 220 came before TLS and could be an
        // attacker's (the STARTTLS injection of CVE-2011-0411): refuse it.
        if self.read_pos < self.read.len() {
            return Err(Error::Protocol("data after the reply to STARTTLS".into()));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(Error::Protocol("STARTTLS on a TLS connection".into()));
        };
        let tls = crate::mail::tls::connect(host, tcp)
            .await
            .map_err(Error::Tls)?;
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls)),
            read: self.read,
            read_pos: 0,
            write: self.write,
            extensions: Extensions::default(),
            broken: false,
        })
    }

    /// AUTH PLAIN if offered, else AUTH LOGIN. The password is written to the socket
    /// and nowhere else.
    async fn auth(&mut self, login: &Login<'_>) -> Result<(), Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
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
        self.stream.write_all(bytes).await?;
        // A no-op on TCP; on TLS it pushes the records out.
        self.stream.flush().await?;
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<Reply, Error> {
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
            if self.stream.read_buf(&mut self.read).await? == 0 {
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
    /// content (after a 354) with 250 at its final dot. With `hold`, the replies to
    /// MAIL and RCPT are held back until the next other command, as a client that
    /// waited for each reply would wait forever. Returns its port and what it received,
    /// line by line, once the client hangs up.
    async fn scripted(
        hold: bool,
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
            let mut line = String::new();
            while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                let l = line.trim_end().to_string();
                line.clear();
                if in_data {
                    if l == "." {
                        in_data = false;
                        seen.push("<content>".to_string());
                        w.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                    }
                    continue;
                }
                let a = answer(&l);
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

    async fn client(port: u16) -> Connection {
        let hello = ClientId::Domain("client.example".into());
        Connection::connect("127.0.0.1", port, Security::Plain, &hello, None)
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
        let mut refused = false;
        let (port, server) = scripted(true, move |l| match l {
            l if l.starts_with("EHLO") => "250-test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            l if l.starts_with("RCPT") => {
                refused = l.starts_with("RCPT TO:<gone@");
                if refused {
                    "550 5.1.1 no such user\r\n"
                } else {
                    "250 ok\r\n"
                }
            }
            "DATA" if refused => "503 5.5.1 no valid recipients\r\n",
            "DATA" => "354 go ahead\r\n",
            _ => "250 ok\r\n",
        })
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
        let e = Connection::connect("127.0.0.1", port, Security::StartTls, &hello, None)
            .await
            .err()
            .unwrap();
        assert!(
            e.is_permanent() && e.to_string().contains("does not offer STARTTLS"),
            "{e}"
        );
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
