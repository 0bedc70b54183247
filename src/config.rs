//! `followup.toml`: where the database is, the default time zone and send window, the
//! days off, and the mailboxes that send. Every connection setting can be overridden by a
//! `FOLLOWUP_*` environment variable, and passwords come from the environment or a file
//! (a systemd credential), never from the files a team keeps in git.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono::Duration;
use chrono_tz::Tz;
use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::schedule::{parse_wait, Holidays, Pacing, Window};
use crate::track::token::Signer;

/// The file name looked for when `FOLLOWUP_CONFIG` is not set.
pub const DEFAULT_FILE: &str = "followup.toml";

/// How a mailbox hands its mail over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `smtp://host:port`: plain SMTP (loopback relays, tests).
    Smtp { host: String, port: u16 },
    /// `smtp+starttls://host:port`: SMTP upgraded with STARTTLS, which is required.
    StartTls { host: String, port: u16 },
    /// `smtps://host:port`: implicit TLS (RFC 8314).
    Smtps { host: String, port: u16 },
    /// `file://DIR`: each message written as an .eml file into DIR (relative to the project).
    File { dir: PathBuf },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Smtp { host, port } => write!(f, "smtp://{host}:{port}"),
            Transport::StartTls { host, port } => write!(f, "smtp+starttls://{host}:{port}"),
            Transport::Smtps { host, port } => write!(f, "smtps://{host}:{port}"),
            Transport::File { dir } => write!(f, "file://{}", dir.display()),
        }
    }
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("'{s}' is not a URL: expected smtp://, smtp+starttls://, smtps:// or file://")
        })?;
        if scheme == "file" {
            if rest.is_empty() {
                return Err("file:// needs a directory, e.g. file://outbox".into());
            }
            return Ok(Transport::File {
                dir: PathBuf::from(rest),
            });
        }
        let default_port = match scheme {
            "smtp" => 25,
            "smtp+starttls" => 587,
            "smtps" => 465,
            other => {
                return Err(format!(
                "unknown scheme '{other}': expected smtp://, smtp+starttls://, smtps:// or file://"
            ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('@') {
            return Err("put the user in `user` and the password in `password_env` or `password_file`, not in the URL".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("bad port '{p}'"))?;
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    port,
                )
            }
            _ => (authority.to_string(), default_port),
        };
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        Ok(match scheme {
            "smtp" => Transport::Smtp { host, port },
            "smtp+starttls" => Transport::StartTls { host, port },
            _ => Transport::Smtps { host, port },
        })
    }
}

/// One sending identity: a rep's mailbox.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub name: String,
    pub from: lettre::message::Mailbox,
    pub transport: Transport,
    pub user: Option<String>,
    /// Resolved from `password_env`, `password_file` or `FOLLOWUP_MAILBOX_<NAME>_PASSWORD`;
    /// `SecretString` keeps it out of `Debug` output and logs.
    pub password: Option<SecretString>,
    /// `auth = "oauth2"`: its access tokens (see [`crate::mail::oauth`]), used instead
    /// of the password on SMTP and IMAP.
    pub oauth: Option<crate::mail::oauth::TokenSource>,
    /// Connections kept open to the SMTP server.
    pub connections: usize,
    pub pacing: Pacing,
    /// Where replies arrive; None: no reply detection for this mailbox.
    pub imap: Option<Imap>,
    /// The certificates its SMTP and IMAP servers are checked against: the public
    /// roots, plus those of `ca_file`.
    pub tls: crate::mail::tls::Trust,
}

/// How the IMAP watcher reaches a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imap {
    pub host: String,
    pub port: u16,
    pub security: ImapSecurity,
    /// The Sent folder's name; None: the folder with the `\Sent` special-use flag.
    pub sent_folder: Option<String>,
    /// Also APPEND each message the daemon sends to the Sent folder, so the rep sees
    /// the whole conversation in the mail client.
    pub append_sent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapSecurity {
    /// `imap://`: plain, no TLS at all (loopback servers, tests).
    Plain,
    /// `imap+starttls://`: STARTTLS required.
    StartTls,
    /// `imaps://`: implicit TLS.
    Tls,
}

impl Imap {
    pub fn parse(url: &str) -> Result<Imap, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("'{url}' is not a URL: expected imap://, imap+starttls:// or imaps://")
        })?;
        let (security, default_port) = match scheme {
            "imap" => (ImapSecurity::Plain, 143),
            "imap+starttls" => (ImapSecurity::StartTls, 143),
            "imaps" => (ImapSecurity::Tls, 993),
            other => {
                return Err(format!(
                    "unknown scheme '{other}': expected imap://, imap+starttls:// or imaps://"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('@') {
            return Err("put the user in `user` and the password in `password_env` or `password_file`, not in the URL".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| format!("bad port '{p}'"))?,
            ),
            None => (authority.to_string(), default_port),
        };
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        Ok(Imap {
            host,
            port,
            security,
            sent_folder: None,
            append_sent: false,
        })
    }
}

/// What the reply watcher does with what it finds.
#[derive(Debug, Clone)]
pub struct ReplySettings {
    /// How long an out-of-office reply pauses a contact when no return date can be read.
    pub default_pause: Duration,
    /// Temporary bounces of one address before it is suppressed.
    pub soft_bounce_limit: u32,
    /// A mailbox is paused when more than `bounce_max_rate` of its last `bounce_window`
    /// sends bounced permanently.
    pub bounce_window: u32,
    pub bounce_max_rate: f64,
    /// IDLE is re-issued before this (RFC 2177: servers may drop it after 30 minutes).
    pub idle_renew: Duration,
    /// How often to look for new mail on servers without IDLE.
    pub poll: Duration,
}

impl Default for ReplySettings {
    fn default() -> Self {
        ReplySettings {
            default_pause: Duration::days(7),
            soft_bounce_limit: 3,
            bounce_window: 100,
            bounce_max_rate: 0.05,
            idle_renew: Duration::minutes(25),
            poll: Duration::seconds(60),
        }
    }
}

impl Mailbox {
    /// The domain of the From address: Message-IDs are made at it.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }
}

/// How the scheduler works through due enrollments.
#[derive(Debug, Clone)]
pub struct SendSettings {
    /// Enrollments claimed per round and mailbox.
    pub batch: usize,
    /// How long a claim (and a message in `sending`) is held before another daemon may
    /// take the enrollment back; a `sending` message whose lease ran out is in doubt.
    pub lease: Duration,
    /// First retry delay after a 4xx or connection failure; doubled each attempt.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// After this many temporary failures the message fails for good.
    pub max_attempts: u32,
    /// How often the daemon looks for due work when nothing is scheduled sooner.
    pub poll: Duration,
    /// How long the server may take to answer a message's end of data before the
    /// message is in doubt (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub data_timeout: Duration,
}

impl Default for SendSettings {
    fn default() -> Self {
        SendSettings {
            batch: 100,
            lease: Duration::seconds(120),
            retry_base: Duration::seconds(60),
            retry_max: Duration::hours(2),
            max_attempts: 12,
            poll: Duration::seconds(1),
            data_timeout: Duration::minutes(10),
        }
    }
}

/// The tracking secrets as read, long enough to sign with (checked here, where the
/// error can point at the setting). The tracking adapter builds its signer from them.
#[derive(Clone)]
pub struct TrackingSecrets {
    pub current: Vec<u8>,
    /// The one before a rotation: links in mails already sent still verify.
    pub previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for TrackingSecrets {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackingSecrets")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// The tracking and unsubscribe endpoint (`[http]`).
#[derive(Debug, Clone)]
pub struct Http {
    pub listen: std::net::SocketAddr,
    /// What links in mails start with: `https://t.example.com` (no trailing slash); may
    /// be a custom tracking domain that proxies to `listen`.
    pub public_url: String,
    /// What tokens are signed and checked with. None only when secrets were not asked
    /// for (`check`, `preview`): `run` refuses to start without them.
    pub secrets: Option<TrackingSecrets>,
    /// Events waiting to be written; when full, hits are answered but not recorded
    /// (counted in /metrics).
    pub queue: usize,
    /// How often queued events are written at the latest.
    pub flush: Duration,
    /// Where `/healthz` and `/metrics` are served; None: nowhere.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// From a request's first byte to the end of its head.
    pub header_timeout: std::time::Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: std::time::Duration,
    /// How long a request's whole body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// Open connections at most on the public listener (lowered at start to fit the
    /// open-file limit).
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The project directory: sequences/, templates/ and relative paths are found here.
    pub root: PathBuf,
    pub path: PathBuf,
    pub database: String,
    pub timezone: Tz,
    pub window: Window,
    /// The project's contacts CSV, used by `check` to see which fields contacts have.
    pub contacts: Option<PathBuf>,
    /// The senders' days off.
    pub holidays: Holidays,
    /// Days off by contact country (ISO code as in the contacts' `country` column).
    pub country_holidays: BTreeMap<String, Holidays>,
    pub mailboxes: BTreeMap<String, Mailbox>,
    pub send: SendSettings,
    pub replies: ReplySettings,
    /// None: no endpoint; mails carry no tracking and `{{unsubscribe_url}}` is a
    /// mailto: to the sender, which the reply watcher honours.
    pub http: Option<Http>,
    /// The sender's postal address, `{{postal_address}}` in templates (CAN-SPAM).
    pub postal_address: Option<String>,
    pub limits: Limits,
    /// The admin listener (/healthz, /readyz, /metrics); see `ops::admin`.
    pub admin: crate::ops::admin::Listen,
    /// Where events are POSTed (`[[webhooks]]`), in the file's order.
    pub webhooks: Vec<Webhook>,
}

/// A receiver of events (`[[webhooks]]`): each event of the kinds it wants is POSTed
/// to `url` as JSON, signed with `secret`.
#[derive(Clone)]
pub struct Webhook {
    /// How `status` and `webhooks replay` name it; unique.
    pub name: String,
    pub url: String,
    /// The event kinds it wants; empty: every kind.
    pub events: Vec<crate::model::EventKind>,
    /// Signs each delivery (HMAC-SHA256). None only when secrets were not asked for.
    pub secret: Option<Vec<u8>>,
    /// How long one delivery may take, connect to last byte.
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for Webhook {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Bounds on what the project's files and the contacts CSV may hold (`[limits]`), so
/// that a hostile or broken file gets an error instead of exhausting memory or stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes a sequence, template or config file may have; larger ones are refused.
    pub max_file_size: u64,
    /// Characters one contact field (CSV cell) may have; a longer one rejects its row.
    pub max_field_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 1024 * 1024,
            max_field_length: 1000,
        }
    }
}

impl Config {
    pub fn sequences_dir(&self) -> PathBuf {
        self.root.join("sequences")
    }

    pub fn templates_dir(&self) -> PathBuf {
        self.root.join("templates")
    }

    /// Holidays that apply to a contact: the senders' plus those of the contact's country.
    pub fn holidays_for(&self, country: Option<&str>) -> Holidays {
        match country.and_then(|c| self.country_holidays.get(&c.to_ascii_uppercase())) {
            Some(h) => self.holidays.merged(h),
            None => self.holidays.clone(),
        }
    }
}

/// Where the config file is: `FOLLOWUP_CONFIG`, else `./followup.toml`.
pub fn locate(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os("FOLLOWUP_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_FILE),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    contacts: Option<String>,
    #[serde(default)]
    holidays: Vec<Spanned<String>>,
    #[serde(default)]
    country_holidays: BTreeMap<String, Vec<Spanned<String>>>,
    #[serde(default)]
    send: RawSend,
    #[serde(default)]
    replies: RawReplies,
    #[serde(default)]
    mailboxes: BTreeMap<String, Spanned<RawMailbox>>,
    http: Option<Spanned<RawHttp>>,
    postal_address: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    admin_listen: Option<Spanned<String>>,
    #[serde(default)]
    webhooks: Vec<Spanned<RawWebhook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Option<Spanned<String>>,
    url: Spanned<String>,
    #[serde(default)]
    events: Vec<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_file_size: Option<Spanned<u64>>,
    max_field_length: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    previous_secret_env: Option<Spanned<String>>,
    previous_secret_file: Option<Spanned<String>>,
    /// Only here to say clearly why it is refused.
    secret: Option<Spanned<String>>,
    queue: Option<usize>,
    flush: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    header_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    body_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSend {
    batch: Option<usize>,
    lease: Option<Spanned<String>>,
    retry_base: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
    max_attempts: Option<u32>,
    poll: Option<Spanned<String>>,
    data_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReplies {
    default_pause: Option<Spanned<String>>,
    soft_bounce_limit: Option<u32>,
    bounce_window: Option<u32>,
    bounce_max_rate: Option<f64>,
    idle_renew: Option<Spanned<String>>,
    poll: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailbox {
    from: Spanned<String>,
    smtp: Spanned<String>,
    user: Option<String>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    /// Only here to say clearly why it is refused.
    password: Option<Spanned<String>>,
    daily_limit: Option<u32>,
    min_gap: Option<Spanned<String>>,
    jitter: Option<f64>,
    window: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    connections: Option<usize>,
    imap: Option<Spanned<String>>,
    sent_folder: Option<String>,
    append_sent: Option<bool>,
    ca_file: Option<Spanned<String>>,
    /// Lets the login cross a network unencrypted (smtp://, imap:// to another host).
    allow_plaintext_login: Option<bool>,
    /// `"password"` (the default) or `"oauth2"`, with the `oauth` table.
    auth: Option<Spanned<String>>,
    oauth: Option<Spanned<crate::mail::oauth::RawOAuth>>,
}

/// Turns byte offsets in one file into line/column locations for diagnostics.
struct SourceMap<'a> {
    path: &'a Path,
    text: Arc<str>,
}

impl SourceMap<'_> {
    fn location(&self, span: Range<usize>) -> Location {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        let end = span.end.clamp(start, self.text.len());
        let len = self.text[start..end]
            .lines()
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(1);
        Location::new(line, column, len)
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.path, message).at(self.location(span), &self.text)
    }
}

/// Reads the configuration, with its warnings. Secrets are resolved when `need_secrets`
/// is set (`check` and `run`, which must agree); other commands (`status`, `enroll`...)
/// only warn about missing ones, since they often run where the secrets are not.
pub fn load(path: &Path, need_secrets: bool) -> Result<(Config, Diagnostics), Diagnostics> {
    let mut diags = Diagnostics::default();
    // Read with the default bound: the file's own `[limits]` are not known yet.
    let text = match crate::project::read_bounded(path, Limits::default().max_file_size) {
        Ok(t) => t,
        Err(e) => {
            diags.push(
                Diagnostic::error(path, format!("cannot read the configuration: {e}")).with_help(
                    "run `followup init` to make a starter project, or set FOLLOWUP_CONFIG",
                ),
            );
            return Err(diags);
        }
    };
    let root = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let map = SourceMap {
        path,
        // Diagnostics show lines of this copy: a password in a database URL is masked.
        text: Arc::from(mask_url_passwords_in(&text).as_str()),
    };
    let raw: RawConfig = match toml::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            let d = match e.span() {
                Some(span) => map.error(span, e.message().trim().to_string()),
                None => Diagnostic::error(path, e.message().trim().to_string()),
            };
            diags.push(d);
            return Err(diags);
        }
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());

    let database = env("FOLLOWUP_DATABASE")
        .or_else(|| raw.database.as_ref().map(|d| d.get_ref().clone()))
        .unwrap_or_else(|| "sqlite://followup.db".to_string());
    let database = resolve_sqlite_path(&database, &root);

    let timezone = match &raw.timezone {
        Some(tz) => tz.get_ref().parse::<Tz>().unwrap_or_else(|_| {
            diags.push(unknown_tz(&map, tz));
            Tz::UTC
        }),
        None => Tz::UTC,
    };
    let window = parse_window(&map, raw.window.as_ref(), &mut diags).unwrap_or_else(Window::always);

    let holidays = parse_holidays(&map, &raw.holidays, &mut diags);
    let mut country_holidays = BTreeMap::new();
    for (country, items) in &raw.country_holidays {
        country_holidays.insert(
            country.to_ascii_uppercase(),
            parse_holidays(&map, items, &mut diags),
        );
    }

    let defaults = SendSettings::default();
    let wait_or = |v: &Option<Spanned<String>>, d: Duration, diags: &mut Diagnostics| match v {
        Some(s) => parse_wait(s.get_ref()).unwrap_or_else(|e| {
            diags.push(map.error(s.span(), e.to_string()));
            d
        }),
        None => d,
    };
    let send = SendSettings {
        batch: raw.send.batch.unwrap_or(defaults.batch).max(1),
        lease: wait_or(&raw.send.lease, defaults.lease, &mut diags),
        retry_base: wait_or(&raw.send.retry_base, defaults.retry_base, &mut diags),
        retry_max: wait_or(&raw.send.retry_max, defaults.retry_max, &mut diags),
        max_attempts: raw
            .send
            .max_attempts
            .unwrap_or(defaults.max_attempts)
            .max(1),
        poll: wait_or(&raw.send.poll, defaults.poll, &mut diags),
        data_timeout: wait_or(&raw.send.data_timeout, defaults.data_timeout, &mut diags),
    };

    let rd = ReplySettings::default();
    let replies = ReplySettings {
        default_pause: wait_or(&raw.replies.default_pause, rd.default_pause, &mut diags),
        soft_bounce_limit: raw
            .replies
            .soft_bounce_limit
            .unwrap_or(rd.soft_bounce_limit)
            .max(1),
        bounce_window: raw.replies.bounce_window.unwrap_or(rd.bounce_window).max(1),
        bounce_max_rate: raw
            .replies
            .bounce_max_rate
            .unwrap_or(rd.bounce_max_rate)
            .clamp(0.0, 1.0),
        idle_renew: wait_or(&raw.replies.idle_renew, rd.idle_renew, &mut diags),
        poll: wait_or(&raw.replies.poll, rd.poll, &mut diags),
    };

    let mut mailboxes = BTreeMap::new();
    for (name, spanned) in &raw.mailboxes {
        let m = spanned.get_ref();
        let var = |suffix: &str| env(&format!("FOLLOWUP_MAILBOX_{}_{suffix}", env_name(name)));
        // Where to point for a setting: its own line, or the section's when a
        // `FOLLOWUP_MAILBOX_*` variable gave it.
        let at = |s: &Option<Spanned<String>>| {
            s.as_ref()
                .map(|s| s.span())
                .unwrap_or_else(|| spanned.span())
        };
        let from = match m.from.get_ref().parse::<lettre::message::Mailbox>() {
            Ok(f) => Some(f),
            Err(e) => {
                diags.push(
                    map.error(
                        m.from.span(),
                        format!("bad From address '{}': {e}", m.from.get_ref()),
                    )
                    .with_help("write it as \"Iris Zhang <iris@example.com>\""),
                );
                None
            }
        };
        let smtp_text = var("SMTP").unwrap_or_else(|| m.smtp.get_ref().clone());
        let transport = match smtp_text.parse::<Transport>() {
            Ok(Transport::File { dir }) => Some(Transport::File {
                dir: root.join(dir),
            }),
            Ok(t) => Some(t),
            Err(e) => {
                diags.push(map.error(m.smtp.span(), format!("bad smtp URL: {e}")));
                None
            }
        };
        if let Some(p) = &m.password {
            diags.push(
                map.error(p.span(), "passwords are never written in followup.toml")
                    .with_help(
                        "use password_env = \"VAR\" or password_file = \"/run/credentials/...\"",
                    ),
            );
        }
        let password = match resolve_password(&map, name, m, &var) {
            Ok(p) => p,
            Err(d) => {
                if need_secrets {
                    diags.push(d);
                } else {
                    let mut w = d;
                    w.severity = crate::diagnostic::Severity::Warning;
                    diags.push(w);
                }
                None
            }
        };
        let oauth = parse_oauth(&map, name, m, &root, need_secrets, &mut diags);
        let mailbox_window =
            parse_window(&map, m.window.as_ref(), &mut diags).unwrap_or_else(|| window.clone());
        let mailbox_tz = match &m.timezone {
            Some(tz) => tz.get_ref().parse::<Tz>().unwrap_or_else(|_| {
                diags.push(unknown_tz(&map, tz));
                timezone
            }),
            None => timezone,
        };
        let min_gap = wait_or(&m.min_gap, Duration::zero(), &mut diags);
        let imap_text = var("IMAP").or_else(|| m.imap.as_ref().map(|i| i.get_ref().clone()));
        let imap = match imap_text.map(|t| Imap::parse(&t)) {
            None => None,
            Some(Ok(mut i)) => {
                i.sent_folder = m.sent_folder.clone();
                i.append_sent = m.append_sent.unwrap_or(false);
                Some(i)
            }
            Some(Err(e)) => {
                let span = at(&m.imap);
                diags.push(map.error(span, format!("bad imap URL: {e}")));
                None
            }
        };
        // A private CA for this mailbox's servers, in addition to the public roots; a
        // relative path is the project's.
        let tls = match var("CA_FILE").or_else(|| m.ca_file.as_ref().map(|c| c.get_ref().clone())) {
            None => crate::mail::tls::Trust::public(),
            Some(file) => match crate::mail::tls::Trust::with_ca_file(&root.join(&file)) {
                Ok(t) => t,
                Err(e) => {
                    let span = at(&m.ca_file);
                    diags.push(
                        map.error(span, format!("mailbox '{name}': ca_file: {e}")).with_help(
                            "a PEM file of the CA certificates that signed your SMTP and IMAP servers' certificates",
                        ),
                    );
                    crate::mail::tls::Trust::public()
                }
            },
        };
        // The password never crosses a network in clear unless the file says so: plain
        // smtp:// and imap:// with a login are for a server on this host. Decided on
        // the keys, not the resolved secret, so that `check` says it without the secret.
        let has_login = m.password_env.is_some()
            || m.password_file.is_some()
            || var("PASSWORD").is_some()
            || m.oauth.is_some()
            || crate::ops::credentials::read(&crate::ops::credentials::name_for(&format!(
                "FOLLOWUP_MAILBOX_{}_PASSWORD",
                env_name(name)
            )))
            .is_some();
        if has_login && !m.allow_plaintext_login.unwrap_or(false) {
            let in_clear = |scheme: &str, host: &str, span: Range<usize>, secure: &str| {
                map.error(
                    span,
                    format!(
                        "mailbox '{name}': {scheme}://{host} has no TLS, so the password would cross the network unencrypted"
                    ),
                )
                .with_help(format!(
                    "use {secure}, or set allow_plaintext_login = true if the network to {host} is yours"
                ))
            };
            if let Some(Transport::Smtp { host, .. }) = &transport {
                if !is_loopback(host) {
                    diags.push(in_clear(
                        "smtp",
                        host,
                        m.smtp.span(),
                        "smtp+starttls:// (port 587) or smtps:// (465)",
                    ));
                }
            }
            if let Some(i) = imap.as_ref().filter(|i| i.security == ImapSecurity::Plain) {
                if !is_loopback(&i.host) {
                    let span = at(&m.imap);
                    diags.push(in_clear(
                        "imap",
                        &i.host,
                        span,
                        "imap+starttls:// or imaps://",
                    ));
                }
            }
        }
        let jitter = m.jitter.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&jitter) {
            diags.push(map.error(
                spanned.span(),
                format!("mailbox '{name}': jitter must be between 0 and 1, not {jitter}"),
            ));
        }
        if let (Some(from), Some(transport)) = (from, transport) {
            mailboxes.insert(
                name.clone(),
                Mailbox {
                    name: name.clone(),
                    from,
                    transport,
                    user: var("USER").or_else(|| m.user.clone()),
                    password,
                    oauth,
                    connections: m.connections.unwrap_or(4).clamp(1, 64),
                    imap,
                    tls,
                    pacing: Pacing {
                        daily_limit: m.daily_limit,
                        min_gap,
                        jitter: jitter.clamp(0.0, 1.0),
                        window: mailbox_window,
                        tz: mailbox_tz,
                        holidays: holidays.clone(),
                    },
                },
            );
        }
    }
    if raw.mailboxes.is_empty() {
        diags.push(
            Diagnostic::error(
                path,
                "no mailboxes: add at least one [mailboxes.NAME] section",
            )
            .with_help(
                "for a trial, smtp = \"file://outbox\" writes .eml files instead of sending",
            ),
        );
    }

    let http = raw
        .http
        .as_ref()
        .and_then(|h| parse_http(&map, h, need_secrets, &mut diags));

    let limits = parse_limits(&map, &raw.limits, &mut diags);
    let webhooks = parse_webhooks(&map, &raw.webhooks, need_secrets, &mut diags);

    let admin_text = std::env::var("FOLLOWUP_ADMIN_LISTEN")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| raw.admin_listen.as_ref().map(|l| l.get_ref().clone()));
    let admin = match crate::ops::admin::Listen::parse(
        admin_text.as_deref(),
        http.as_ref().and_then(|h| h.admin_listen),
    ) {
        Ok(a) => a,
        Err(e) => {
            let at = raw.admin_listen.as_ref().map(|l| l.span()).unwrap_or(0..0);
            diags.push(
                map.error(at, e)
                    .with_help("an IP address and a port, e.g. \"127.0.0.1:9417\", or \"off\""),
            );
            crate::ops::admin::Listen::Off
        }
    };

    if diags.has_errors() {
        return Err(diags);
    }
    let config = Config {
        admin,
        http,
        postal_address: raw
            .postal_address
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty()),
        contacts: raw.contacts.map(|c| root.join(c)),
        root,
        path: path.to_path_buf(),
        database,
        timezone,
        window,
        holidays,
        country_holidays,
        mailboxes,
        send,
        replies,
        limits,
        webhooks,
    };
    // Only warnings: the caller decides who sees them (`check`, and `run` once).
    Ok((config, diags))
}

/// An unknown time zone at its place, with the name it most likely meant.
fn unknown_tz(map: &SourceMap<'_>, tz: &Spanned<String>) -> Diagnostic {
    let (message, help) = crate::diagnostic::unknown_time_zone(tz.get_ref());
    map.error(tz.span(), message).with_help(help)
}

/// `[limits]`: zero would refuse every file or field, so it is an error.
fn parse_limits(map: &SourceMap<'_>, raw: &RawLimits, diags: &mut Diagnostics) -> Limits {
    let d = Limits::default();
    let mut positive = |v: &Option<Spanned<u64>>, what: &str, default: u64| match v {
        Some(v) if *v.get_ref() == 0 => {
            diags.push(map.error(v.span(), format!("{what} must be at least 1")));
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    };
    let max_file_size = positive(&raw.max_file_size, "max_file_size", d.max_file_size);
    let field = raw
        .max_field_length
        .as_ref()
        .map(|v| Spanned::new(v.span(), *v.get_ref() as u64));
    let max_field_length = positive(&field, "max_field_length", d.max_field_length as u64);
    Limits {
        max_file_size,
        max_field_length: usize::try_from(max_field_length).unwrap_or(usize::MAX),
    }
}

/// A database URL without its password, for messages and logs: `user:pass@` and a
/// `password=` query parameter (libpq's keyword, which sqlx accepts too) are masked.
pub fn mask_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &base[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &base[..s + 3], &base[at..]),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    if let Some(q) = query {
        out.push('?');
        let masked: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&masked.join("&"));
    }
    out
}

/// `text` with the passwords of URLs in it (`user:PASS@`, `password=PASS`) replaced
/// byte for byte by `*`, so that byte offsets, and so diagnostics' places, stay right.
fn mask_url_passwords_in(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let end_of = |from: usize, delims: &[u8]| {
        text[from..]
            .bytes()
            .position(|b| delims.contains(&b))
            .map_or(text.len(), |n| from + n)
    };
    let mut spans = Vec::new();
    for (i, _) in text.to_ascii_lowercase().match_indices("password=") {
        let start = i + "password=".len();
        spans.push((start, end_of(start, b"\"'&# \t\r\n")));
    }
    for (i, _) in text.match_indices("://") {
        let start = i + 3;
        let end = end_of(start, b"\"'/?#@ \t\r\n");
        if text.as_bytes().get(end) == Some(&b'@') {
            if let Some(colon) = text[start..end].find(':') {
                spans.push((start + colon + 1, end));
            }
        }
    }
    // A secret written as a key of its own, which `load` refuses: the error shows its
    // line, and must not show the secret with it.
    let lower = text.to_ascii_lowercase();
    for key in ["password", "secret", "client_secret", "refresh_token"] {
        for (i, _) in lower.match_indices(key) {
            let word_start = i == 0 || {
                let b = text.as_bytes()[i - 1];
                !(b.is_ascii_alphanumeric() || b == b'_')
            };
            let rest = text[i + key.len()..].trim_start_matches([' ', '\t']);
            let Some(value) = rest.strip_prefix('=') else {
                continue;
            };
            let value = value.trim_start_matches([' ', '\t']);
            let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            if word_start {
                let start = text.len() - value.len() + 1;
                spans.push((start, end_of(start, &[quote as u8, b'\n'])));
            }
        }
    }
    for (from, to) in spans {
        bytes[from..to].iter_mut().for_each(|b| *b = b'*');
    }
    // Only whole characters were replaced, by ASCII: still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|_| text.to_string())
}

/// Whether `host` is this machine: `localhost` or a loopback address.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `FOLLOWUP_MAILBOX_<NAME>_...`: the mailbox name upper-cased, anything else than
/// letters and digits turned into `_`.
pub fn env_name(mailbox: &str) -> String {
    mailbox
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `auth = "oauth2"` and its `oauth` table (see [`crate::mail::oauth::RawOAuth`]).
/// A secret that cannot be read is an error only where secrets are needed.
fn parse_oauth(
    map: &SourceMap<'_>,
    name: &str,
    m: &RawMailbox,
    root: &Path,
    need_secrets: bool,
    diags: &mut Diagnostics,
) -> Option<crate::mail::oauth::TokenSource> {
    let auth = m
        .auth
        .as_ref()
        .map(|a| (a.span(), a.get_ref().to_ascii_lowercase()));
    match (&auth, &m.oauth) {
        (None, None) => return None,
        (Some((_, a)), None) if a == "password" => return None,
        (Some((span, a)), _) if a != "password" && a != "oauth2" => {
            diags.push(
                map.error(
                    span.clone(),
                    format!("mailbox '{name}': unknown auth '{a}'"),
                )
                .with_help("auth = \"password\" (the default) or \"oauth2\""),
            );
            return None;
        }
        (Some((span, _)), None) => {
            diags.push(map.error(span.clone(), format!("mailbox '{name}': auth = \"oauth2\" needs an oauth table")).with_help("oauth = { provider = \"google\", client_id = \"...\", refresh_token_file = \"...\" }"));
            return None;
        }
        (Some((_, a)), Some(o)) if a == "password" => {
            diags.push(
                map.error(
                    o.span(),
                    format!("mailbox '{name}': an oauth table with auth = \"password\""),
                )
                .with_help("set auth = \"oauth2\" to log in with it, or remove it"),
            );
            return None;
        }
        _ => {}
    }
    let raw = m.oauth.as_ref()?;
    if m.password_env.is_some() || m.password_file.is_some() {
        diags.push(map.error(
            raw.span(),
            format!("mailbox '{name}': give a password or oauth, not both"),
        ));
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match raw.get_ref().resolve(name, root, &env, raw.span()) {
        Ok(settings) => {
            // Not an error: `mailbox login` itself needs this configuration to load.
            let store = settings.refresh_token.path();
            if !store.exists() {
                let mut d = map
                    .error(
                        raw.span(),
                        format!(
                            "mailbox '{name}': no refresh token yet in {}",
                            store.display()
                        ),
                    )
                    .with_help(format!("run `followup mailbox login {name}`"));
                d.severity = crate::diagnostic::Severity::Warning;
                diags.push(d);
            }
            Some(crate::mail::oauth::TokenSource::new(name, settings))
        }
        Err(problems) => {
            for p in problems {
                let mut d = map.error(p.span.unwrap_or_else(|| raw.span()), p.message);
                if let Some(h) = p.help {
                    d = d.with_help(h);
                }
                if p.secret && !need_secrets {
                    d.severity = crate::diagnostic::Severity::Warning;
                }
                diags.push(d);
            }
            None
        }
    }
}

fn resolve_password(
    map: &SourceMap<'_>,
    name: &str,
    m: &RawMailbox,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SecretString>, Diagnostic> {
    let secret = resolve_secret(
        map,
        var("PASSWORD"),
        &m.password_env,
        &m.password_file,
        &format!("mailbox '{name}'"),
        "password file",
    )?
    .or_else(|| {
        crate::ops::credentials::read(&crate::ops::credentials::name_for(&format!(
            "FOLLOWUP_MAILBOX_{}_PASSWORD",
            env_name(name)
        )))
    });
    Ok(secret.map(SecretString::from))
}

/// A secret from, in this order: an override (a `FOLLOWUP_*` variable), the environment
/// variable the file names, or the file it names (a systemd credential, say). A trailing
/// newline in the file is an artefact of `echo > file`, never part of a secret. `what`
/// and `file_kind` name it in the error, which points at the line that named the source.
/// `[[webhooks]]`: names unique, URLs http(s), event kinds known (with a did-you-mean),
/// a secret of at least 16 bytes.
fn parse_webhooks(
    map: &SourceMap<'_>,
    raw: &[Spanned<RawWebhook>],
    need_secrets: bool,
    diags: &mut Diagnostics,
) -> Vec<Webhook> {
    use crate::model::EventKind;
    let mut out: Vec<Webhook> = Vec::new();
    for (i, spanned) in raw.iter().enumerate() {
        let w = spanned.get_ref();
        let name = w
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| format!("webhook{}", i + 1));
        if out.iter().any(|o| o.name == name) {
            let at = w.name.as_ref().map_or(spanned.span(), |n| n.span());
            diags.push(map.error(at, format!("a second webhook named '{name}'")));
        }
        let url = w.url.get_ref().trim().to_string();
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(' ') {
            diags.push(
                map.error(w.url.span(), format!("bad webhook url '{url}'"))
                    .with_help("an http(s) URL, e.g. https://crm.example.com/hooks/followup"),
            );
        }
        let mut events = Vec::new();
        for e in &w.events {
            match EventKind::parse(e.get_ref()) {
                Some(k) => events.push(k),
                None => {
                    let names = EventKind::ALL.iter().map(|k| k.as_str());
                    let help = match crate::diagnostic::did_you_mean(e.get_ref(), names) {
                        Some(close) => format!("did you mean '{close}'?"),
                        None => format!(
                            "known kinds: {}",
                            EventKind::ALL
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    diags.push(
                        map.error(e.span(), format!("unknown event kind '{}'", e.get_ref()))
                            .with_help(help),
                    );
                }
            }
        }
        let timeout = match &w.timeout {
            Some(t) => match parse_wait(t.get_ref()) {
                Ok(d) => d.to_std().unwrap_or(std::time::Duration::from_secs(10)),
                Err(e) => {
                    diags.push(map.error(t.span(), e.to_string()));
                    std::time::Duration::from_secs(10)
                }
            },
            None => std::time::Duration::from_secs(10),
        };
        let what = format!("the secret of webhook '{name}'");
        let secret = match resolve_secret(
            map,
            None,
            &w.secret_env,
            &w.secret_file,
            &what,
            "secret file",
        ) {
            Ok(Some(s)) if s.len() >= 16 => Some(s.into_bytes()),
            Ok(Some(s)) => {
                let at = w
                    .secret_env
                    .as_ref()
                    .or(w.secret_file.as_ref())
                    .map_or(spanned.span(), |s| s.span());
                diags.push(
                    map.error(
                        at,
                        format!("{what} has {} bytes; it needs at least 16", s.len()),
                    )
                    .with_help("make one with `openssl rand -hex 32`"),
                );
                None
            }
            Ok(None) => {
                let d = map
                    .error(spanned.span(), format!("webhook '{name}' needs a secret to sign its deliveries: secret_env or secret_file"))
                    .with_help("make one with `openssl rand -hex 32`");
                diags.push(if need_secrets { d } else { as_warning(d) });
                None
            }
            Err(d) => {
                diags.push(if need_secrets { d } else { as_warning(d) });
                None
            }
        };
        out.push(Webhook {
            name,
            url,
            events,
            secret,
            timeout,
        });
    }
    out
}

/// A missing secret is an error for `check` and `run`, a warning for the commands that
/// do not need it.
fn as_warning(mut d: Diagnostic) -> Diagnostic {
    d.severity = crate::diagnostic::Severity::Warning;
    d
}

fn resolve_secret(
    map: &SourceMap<'_>,
    overridden: Option<String>,
    env_var: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
    what: &str,
    file_kind: &str,
) -> Result<Option<String>, Diagnostic> {
    if let Some(v) = overridden.filter(|v| !v.is_empty()) {
        return Ok(Some(v));
    }
    if let Some(env_var) = env_var {
        return match std::env::var(env_var.get_ref()) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(map.error(
                env_var.span(),
                format!(
                    "{what}: environment variable {} is not set",
                    env_var.get_ref()
                ),
            )),
        };
    }
    if let Some(file) = file {
        return match std::fs::read_to_string(crate::ops::credentials::expand(file.get_ref())) {
            Ok(v) => Ok(Some(v.trim_end_matches(['\r', '\n']).to_string())),
            Err(e) => Err(map.error(
                file.span(),
                format!("{what}: cannot read {file_kind} {}: {e}", file.get_ref()),
            )),
        };
    }
    Ok(None)
}

fn parse_http(
    map: &SourceMap<'_>,
    spanned: &Spanned<RawHttp>,
    need_secrets: bool,
    diags: &mut Diagnostics,
) -> Option<Http> {
    let h = spanned.get_ref();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut ok = true;
    let listen_text = env("FOLLOWUP_HTTP_LISTEN")
        .or_else(|| h.listen.as_ref().map(|l| l.get_ref().clone()))
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let span = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.span()).unwrap_or(spanned.span());
    let listen = match listen_text.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            diags.push(
                map.error(
                    span(&h.listen),
                    format!("bad listen address '{listen_text}'"),
                )
                .with_help("an IP address and a port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\""),
            );
            None
        }
    };
    let public_url = match env("FOLLOWUP_HTTP_PUBLIC_URL")
        .or_else(|| h.public_url.as_ref().map(|u| u.get_ref().clone()))
    {
        None => {
            diags.push(
                map.error(
                    spanned.span(),
                    "[http] needs public_url: what links in mails start with",
                )
                .with_help("e.g. public_url = \"https://t.example.com\""),
            );
            ok = false;
            String::new()
        }
        Some(u) => {
            let u = u.trim().trim_end_matches('/').to_string();
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            match rest {
                Some(host)
                    if !host.is_empty() && !host.contains(['?', '#', ' ', '"', '<', '>']) => {}
                _ => {
                    diags.push(
                        map.error(span(&h.public_url), format!("bad public_url '{u}'"))
                            .with_help("an http(s) URL without query, e.g. https://t.example.com"),
                    );
                    ok = false;
                }
            }
            u
        }
    };
    if let Some(s) = &h.secret {
        diags.push(
            map.error(
                s.span(),
                "the tracking secret is never written in followup.toml",
            )
            .with_help("use secret_env = \"VAR\" or secret_file = \"/run/credentials/...\""),
        );
    }
    let secret = |env_key: &str,
                  var: &Option<Spanned<String>>,
                  file: &Option<Spanned<String>>,
                  what: &str|
     -> Result<Option<Vec<u8>>, Diagnostic> {
        resolve_secret(map, env(env_key), var, file, what, "secret file")
            .map(|s| {
                s.or_else(|| {
                    crate::ops::credentials::read(&crate::ops::credentials::name_for(env_key))
                })
            })
            .map(|s| s.map(String::into_bytes))
    };
    let report = |d: Diagnostic, diags: &mut Diagnostics| {
        if need_secrets {
            diags.push(d);
        } else {
            let mut w = d;
            w.severity = crate::diagnostic::Severity::Warning;
            diags.push(w);
        }
    };
    let current = match secret(
        "FOLLOWUP_HTTP_SECRET",
        &h.secret_env,
        &h.secret_file,
        "the tracking secret",
    ) {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            report(
                map.error(
                    spanned.span(),
                    "[http] needs a secret to sign links: secret_env or secret_file",
                )
                .with_help("make one with `openssl rand -hex 32`; FOLLOWUP_HTTP_SECRET works too"),
                diags,
            );
            None
        }
        Err(d) => {
            report(d, diags);
            None
        }
    };
    let previous = match secret(
        "FOLLOWUP_HTTP_PREVIOUS_SECRET",
        &h.previous_secret_env,
        &h.previous_secret_file,
        "the previous tracking secret",
    ) {
        Ok(p) => p,
        Err(d) => {
            report(d, diags);
            None
        }
    };
    let secrets = match current {
        Some(c) => match Signer::new(&c, previous.as_deref()) {
            Ok(_) => Some(TrackingSecrets {
                current: c,
                previous,
            }),
            Err(e) => {
                let at = h
                    .secret_env
                    .as_ref()
                    .or(h.secret_file.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(spanned.span());
                report(map.error(at, e.to_string()), diags);
                None
            }
        },
        None => None,
    };
    let flush = match &h.flush {
        Some(f) => parse_wait(f.get_ref()).unwrap_or_else(|e| {
            diags.push(map.error(f.span(), e.to_string()));
            Duration::seconds(1)
        }),
        None => Duration::seconds(1),
    };
    let admin_listen = match env("FOLLOWUP_HTTP_ADMIN_LISTEN")
        .or_else(|| h.admin_listen.as_ref().map(|l| l.get_ref().clone()))
    {
        None => None,
        Some(text) => match text.parse::<std::net::SocketAddr>() {
            Ok(a) if Some(a) == listen => {
                diags.push(
                    map.error(
                        span(&h.admin_listen),
                        format!("admin_listen '{text}' is the public listen address"),
                    )
                    .with_help(
                        "the admin pages need an address of their own, e.g. \"127.0.0.1:9187\"",
                    ),
                );
                ok = false;
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                diags.push(
                    map.error(
                        span(&h.admin_listen),
                        format!("bad admin_listen address '{text}'"),
                    )
                    .with_help("an IP address and a port, e.g. \"127.0.0.1:9187\""),
                );
                ok = false;
                None
            }
        },
    };
    let mut timeout = |key: &str, value: &Option<Spanned<String>>, default: u64| {
        let Some(v) = value else {
            return std::time::Duration::from_secs(default);
        };
        match parse_wait(v.get_ref()).map(|d| d.to_std()) {
            Ok(Ok(d)) if !d.is_zero() => d,
            Ok(_) => {
                diags.push(
                    map.error(v.span(), format!("{key} must be at least 1s"))
                        .with_help("e.g. \"10s\""),
                );
                std::time::Duration::from_secs(default)
            }
            Err(e) => {
                diags.push(map.error(v.span(), e.to_string()));
                std::time::Duration::from_secs(default)
            }
        }
    };
    let header_timeout = timeout("header_timeout", &h.header_timeout, 10);
    let idle_timeout = timeout("idle_timeout", &h.idle_timeout, 60);
    let body_timeout = timeout("body_timeout", &h.body_timeout, 10);
    let max_connections = match &h.max_connections {
        None => 512,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(v) if v >= 1 => v,
            _ => {
                diags.push(
                    map.error(
                        n.span(),
                        format!("max_connections must be at least 1, not {}", n.get_ref()),
                    )
                    .with_help("the default is 512"),
                );
                512
            }
        },
    };
    let mut trusted_proxies = Vec::new();
    for p in &h.trusted_proxies {
        let text = p.get_ref().trim();
        let net = text.parse::<ipnet::IpNet>().ok().or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        });
        match net {
            Some(n) => trusted_proxies.push(n.trunc()),
            None => diags.push(
                map.error(p.span(), format!("bad trusted proxy '{text}'"))
                    .with_help("an IP address or a network, e.g. \"127.0.0.1\" or \"10.0.0.0/8\""),
            ),
        }
    }
    if !ok {
        return None;
    }
    Some(Http {
        admin_listen,
        header_timeout,
        idle_timeout,
        body_timeout,
        max_connections,
        trusted_proxies,
        listen: listen?,
        public_url,
        secrets,
        queue: h.queue.unwrap_or(65_536).clamp(16, 10_000_000),
        flush: flush.clamp(Duration::milliseconds(10), Duration::seconds(1)),
    })
}

fn parse_window(
    map: &SourceMap<'_>,
    w: Option<&Spanned<String>>,
    diags: &mut Diagnostics,
) -> Option<Window> {
    let w = w?;
    match w.get_ref().parse::<Window>() {
        Ok(w) => Some(w),
        Err(e) => {
            diags.push(map.error(w.span(), e.to_string()));
            None
        }
    }
}

fn parse_holidays(
    map: &SourceMap<'_>,
    items: &[Spanned<String>],
    diags: &mut Diagnostics,
) -> Holidays {
    let mut all = Holidays::default();
    for item in items {
        match Holidays::parse(std::slice::from_ref(item.get_ref())) {
            Ok(h) => all = all.merged(&h),
            Err(e) => diags.push(map.error(item.span(), e.to_string())),
        }
    }
    all
}

/// `sqlite://followup.db` is relative to the project directory, not to wherever the
/// daemon happens to be started from.
fn resolve_sqlite_path(url: &str, root: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    let (file, query) = rest
        .split_once('?')
        .map(|(f, q)| (f, Some(q)))
        .unwrap_or((rest, None));
    if file.is_empty() || file == ":memory:" || Path::new(file).is_absolute() {
        return url.to_string();
    }
    let joined = root.join(file);
    match query {
        Some(q) => format!("sqlite://{}?{q}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("followup.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn parses_transports() {
        assert_eq!(
            "smtp://127.0.0.1:2525".parse::<Transport>(),
            Ok(Transport::Smtp {
                host: "127.0.0.1".into(),
                port: 2525
            })
        );
        assert_eq!(
            "smtps://mail.example.com".parse::<Transport>(),
            Ok(Transport::Smtps {
                host: "mail.example.com".into(),
                port: 465
            })
        );
        assert_eq!(
            "smtp+starttls://mail.example.com".parse::<Transport>(),
            Ok(Transport::StartTls {
                host: "mail.example.com".into(),
                port: 587
            })
        );
        assert_eq!(
            "file://outbox".parse::<Transport>(),
            Ok(Transport::File {
                dir: "outbox".into()
            })
        );
        assert!("smtp://iris:secret@mail.example.com"
            .parse::<Transport>()
            .unwrap_err()
            .contains("password_env"));
        assert!("http://x"
            .parse::<Transport>()
            .unwrap_err()
            .contains("unknown scheme"));
    }

    /// What `check` says about a config file, one diagnostic a line.
    fn errors(p: &Path) -> String {
        let diags = load(p, false).unwrap_err();
        let text: Vec<String> = diags.items.iter().map(|d| d.to_string()).collect();
        text.join("\n")
    }

    #[test]
    fn http_limits_and_proxies() {
        let dir = tempfile::tempdir().unwrap();
        let head = "[http]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"https://t.example.com\"\n";
        let mailbox =
            "[mailboxes.sales]\nfrom = \"Iris <iris@example.com>\"\nsmtp = \"file://outbox\"\n";
        let p = write(dir.path(), &format!("{head}{mailbox}"));
        let h = load(&p, false).unwrap().0.http.unwrap();
        assert_eq!(h.header_timeout, std::time::Duration::from_secs(10));
        assert_eq!(h.idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(h.body_timeout, std::time::Duration::from_secs(10));
        assert_eq!(h.max_connections, 512);
        assert!(h.trusted_proxies.is_empty() && h.admin_listen.is_none());
        let p = write(
            dir.path(),
            &format!(
                "{head}admin_listen = \"127.0.0.1:9187\"\nheader_timeout = \"2s\"\nidle_timeout = \"1m\"\n\
                 body_timeout = \"3s\"\nmax_connections = 100\ntrusted_proxies = [\"127.0.0.1\", \"10.1.2.3/8\", \"::1\"]\n{mailbox}"
            ),
        );
        let h = load(&p, false).unwrap().0.http.unwrap();
        assert_eq!(h.admin_listen, Some("127.0.0.1:9187".parse().unwrap()));
        assert_eq!(h.header_timeout, std::time::Duration::from_secs(2));
        assert_eq!(h.idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(h.body_timeout, std::time::Duration::from_secs(3));
        assert_eq!(h.max_connections, 100);
        let nets: Vec<String> = h.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        let p = write(
            dir.path(),
            &format!(
                "{head}admin_listen = \"127.0.0.1:8080\"\nheader_timeout = \"0\"\nidle_timeout = \"soon\"\n\
                 max_connections = 0\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.example\"]\n{mailbox}"
            ),
        );
        let text = errors(&p);
        for want in [
            ":4:16: error: admin_listen '127.0.0.1:8080' is the public listen address",
            ":5:18: error: header_timeout must be at least 1s",
            ":6:16: error: ",
            ":7:19: error: max_connections must be at least 1, not 0",
            ":8:34: error: bad trusted proxy 'proxy.example'",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    #[test]
    fn reports_errors_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "timezone = \"Asia/Shangai\"\n[mailboxes.sales]\nfrom = \"Iris <iris@example.com>\"\nsmtp = \"smtp://127.0.0.1:2525\"\npassword = \"hunter2\"\n",
        );
        let diags = load(&p, true).unwrap_err();
        let text: Vec<String> = diags.items.iter().map(|d| d.to_string()).collect();
        assert!(
            text[0].contains("followup.toml:1:12: error: unknown time zone 'Asia/Shangai'"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains(":5:12: error: passwords are never written in followup.toml"),
            "{}",
            text[1]
        );
        assert!(
            !text.join("\n").contains("hunter2\n  |"),
            "the secret is not echoed under a caret"
        );
    }

    #[test]
    fn a_login_never_crosses_a_network_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = |smtp: &str, imap: &str, extra: &str| {
            format!(
                "[mailboxes.sales]\nfrom = \"Iris <iris@example.com>\"\nsmtp = \"{smtp}\"\nimap = \"{imap}\"\n\
                 user = \"iris\"\npassword_env = \"FOLLOWUP_TEST_CLEAR_PW\"\n{extra}"
            )
        };
        let p = write(
            dir.path(),
            &mailbox("smtp://relay.example.com:25", "imap://imap.example.com", ""),
        );
        // `check` (no secrets needed) says it too.
        let text = errors(&p);
        assert!(
            text.contains(":3:8: error: mailbox 'sales': smtp://relay.example.com has no TLS, so the password would cross the network unencrypted"),
            "{text}"
        );
        assert!(
            text.contains(":4:8: error: mailbox 'sales': imap://imap.example.com has no TLS"),
            "{text}"
        );
        assert!(
            text.contains("use smtp+starttls:// (port 587) or smtps:// (465)"),
            "{text}"
        );
        // On this host, with TLS, or allowed in so many words: accepted.
        for (smtp, imap, extra) in [
            ("smtp://127.0.0.1:2525", "imap://localhost:1143", ""),
            ("smtp://[::1]:2525", "imap://127.0.0.2", ""),
            (
                "smtp+starttls://relay.example.com",
                "imaps://imap.example.com",
                "",
            ),
            (
                "smtp://relay.lan:25",
                "imap://imap.lan",
                "allow_plaintext_login = true\n",
            ),
        ] {
            let p = write(dir.path(), &mailbox(smtp, imap, extra));
            assert!(load(&p, false).is_ok(), "{smtp} {imap} {extra}");
        }
        // Without a login nothing secret can leak: a relay that trusts this host.
        let p = write(
            dir.path(),
            "[mailboxes.sales]\nfrom = \"Iris <iris@example.com>\"\nsmtp = \"smtp://relay.lan:25\"\n",
        );
        assert!(load(&p, false).is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "databse = \"sqlite://x.db\"\n");
        let diags = load(&p, true).unwrap_err();
        let text = diags.items[0].to_string();
        assert!(
            text.starts_with(&format!(
                "{}:1:1: error: unknown field `databse`",
                p.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn env_overrides_connection_settings() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[mailboxes.eu-sales]\nfrom = \"Iris <iris@example.com>\"\nsmtp = \"smtp://127.0.0.1:2525\"\n",
        );
        // Unique variable names so parallel tests don't see each other.
        std::env::set_var(
            "FOLLOWUP_MAILBOX_EU_SALES_SMTP",
            "smtps://relay.example.com:4650",
        );
        std::env::set_var("FOLLOWUP_MAILBOX_EU_SALES_PASSWORD", "s3cret");
        let (c, _) = load(&p, true).unwrap();
        std::env::remove_var("FOLLOWUP_MAILBOX_EU_SALES_SMTP");
        std::env::remove_var("FOLLOWUP_MAILBOX_EU_SALES_PASSWORD");
        let m = &c.mailboxes["eu-sales"];
        assert_eq!(
            m.transport,
            Transport::Smtps {
                host: "relay.example.com".into(),
                port: 4650
            }
        );
        assert!(m.password.is_some());
        assert!(
            !format!("{m:?}").contains("s3cret"),
            "Debug never shows the password"
        );
    }

    #[test]
    fn missing_password_env_is_an_error_for_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[mailboxes.sales]\nfrom = \"Iris <iris@example.com>\"\nsmtp = \"smtp://127.0.0.1:2525\"\npassword_env = \"FOLLOWUP_TEST_UNSET_PASSWORD\"\n",
        );
        assert!(load(&p, false).is_ok());
        let d = load(&p, true).unwrap_err();
        assert!(d.items[0]
            .to_string()
            .contains("FOLLOWUP_TEST_UNSET_PASSWORD is not set"));
    }

    #[test]
    fn sqlite_paths_are_relative_to_the_project() {
        assert_eq!(
            resolve_sqlite_path("sqlite://f.db", Path::new("/p")),
            "sqlite:///p/f.db"
        );
        assert_eq!(
            resolve_sqlite_path("sqlite:///abs/f.db", Path::new("/p")),
            "sqlite:///abs/f.db"
        );
        assert_eq!(
            resolve_sqlite_path("postgres://u@h/db", Path::new("/p")),
            "postgres://u@h/db"
        );
    }

    #[test]
    fn database_passwords_are_masked_in_userinfo_and_query() {
        assert_eq!(
            mask_url("postgres://followup:secret@127.0.0.1/db"),
            "postgres://followup:***@127.0.0.1/db"
        );
        assert_eq!(
            mask_url("postgres://127.0.0.1/db?user=rep&password=secret&sslmode=require"),
            "postgres://127.0.0.1/db?user=rep&password=***&sslmode=require"
        );
        assert_eq!(
            mask_url("postgres://u:p@h/db?PASSWORD=x"),
            "postgres://u:***@h/db?PASSWORD=***"
        );
        assert_eq!(mask_url("sqlite://followup.db"), "sqlite://followup.db");
    }

    #[test]
    fn config_lines_shown_in_errors_mask_url_passwords() {
        let text = "database = \"postgres://u:pw1@h/db?password=pw2&x=1\"\nother = 1\n";
        let masked = mask_url_passwords_in(text);
        assert_eq!(
            masked,
            "database = \"postgres://u:***@h/db?password=***&x=1\"\nother = 1\n"
        );
        assert_eq!(masked.len(), text.len());
        let dir = tempfile::tempdir().unwrap();
        let e = load(
            &write(
                dir.path(),
                "database = \"postgres://h/db?password=hunter2\" oops\n",
            ),
            false,
        )
        .unwrap_err();
        let shown: String = e.items.iter().map(|d| d.to_string()).collect();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("password=*******"),
            "the line is shown: {shown}"
        );
    }

    #[test]
    fn limits_default_and_refuse_zero() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[mailboxes.sales]\nfrom = \"a@example.com\"\nsmtp = \"file://outbox\"\n";
        let (c, _) = load(&write(dir.path(), base), false).unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = load(
            &write(
                dir.path(),
                &format!("[limits]\nmax_file_size = 2048\nmax_field_length = 80\n{base}"),
            ),
            false,
        )
        .unwrap()
        .0;
        assert_eq!(
            (c.limits.max_file_size, c.limits.max_field_length),
            (2048, 80)
        );
        let e = load(
            &write(dir.path(), &format!("[limits]\nmax_file_size = 0\n{base}")),
            false,
        )
        .unwrap_err();
        assert!(e.items[0]
            .to_string()
            .contains("max_file_size must be at least 1"));
    }
}
