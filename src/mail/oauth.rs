//! OAuth2 mailboxes (`auth = "oauth2"`): Google Workspace and Microsoft 365 accept no
//! account password over IMAP and SMTP, only a bearer token (SASL XOAUTH2, or
//! OAUTHBEARER of RFC 7628).
//!
//! The mailbox's `oauth = { ... }` table is parsed here ([`RawOAuth`] → [`Settings`]);
//! a [`TokenSource`] turns the stored refresh token into access tokens through the
//! `oauth2` crate over reqwest, caches the access token and refreshes it before it
//! expires, and once more when a server refuses it. The refresh token itself is read
//! from its file (or systemd credential) when it is needed, never at load: `followup
//! mailbox login` writes it after the configuration was read, and a provider that
//! rotates refresh tokens gets the new one written back.
//!
//! Tokens are `SecretString`s from the moment they arrive: they are written to the
//! server's socket and the token file, and nowhere else (no `Debug`, no error text).

use std::fmt;
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    ClientId, ClientSecret, DeviceAuthorizationUrl, RefreshToken, RequestTokenError, Scope,
    StandardErrorResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;

pub mod browser;
pub mod device;

/// An access token that expires within this is refreshed before use: a connection
/// opened with it may run for a while, and a token must not run out between the
/// refresh and the login.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// How long the token endpoint may take to accept a connection, and to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a token without `expires_in` is taken to last (an hour, as both
/// providers issue them).
const LIFETIME_WITHOUT_EXPIRY: Duration = Duration::from_secs(3600);

/// Which SASL mechanism carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Google's and Microsoft's `XOAUTH2`.
    XOAuth2,
    /// RFC 7628 `OAUTHBEARER`.
    OAuthBearer,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The client's first (and only) message, before base64. XOAUTH2's form comes from
    /// lettre; OAUTHBEARER's is RFC 7628 §3.1 (a GS2 header naming the user, then
    /// `auth=Bearer`).
    pub fn initial_response(self, user: &str, token: &SecretString) -> SecretString {
        match self {
            Mechanism::XOAuth2 => {
                let credentials = lettre::transport::smtp::authentication::Credentials::new(
                    user.to_string(),
                    token.expose_secret().to_string(),
                );
                // XOAUTH2 takes no challenge, so lettre cannot refuse it.
                SecretString::from(
                    lettre::transport::smtp::authentication::Mechanism::Xoauth2
                        .response(&credentials, None)
                        .unwrap_or_default(),
                )
            }
            Mechanism::OAuthBearer => SecretString::from(format!(
                "n,a={},\x01auth=Bearer {}\x01\x01",
                user.replace('=', "=3D").replace(',', "=2C"),
                token.expose_secret()
            )),
        }
    }

    /// What the client answers to a server's error challenge (a JSON status) so that
    /// the server can end the exchange with its refusal: an empty line for XOAUTH2,
    /// a single ^A for OAUTHBEARER (RFC 7628 §3.2.3).
    pub fn after_error(self) -> &'static [u8] {
        match self {
            Mechanism::XOAuth2 => b"",
            Mechanism::OAuthBearer => b"\x01",
        }
    }

    /// The initial response, base64-encoded, as SMTP's AUTH command carries it.
    pub fn initial_response_b64(self, user: &str, token: &SecretString) -> SecretString {
        let raw = self.initial_response(user, token);
        SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(raw.expose_secret().as_bytes()),
        )
    }
}

/// The `oauth = { ... }` table of a mailbox, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    /// `google` or `microsoft`: fills in the endpoints and the scopes.
    provider: Option<Spanned<String>>,
    /// Microsoft's directory (tenant): `common` unless set.
    tenant: Option<String>,
    token_url: Option<Spanned<String>>,
    device_url: Option<Spanned<String>>,
    auth_url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<String>>,
    client_secret_env: Option<Spanned<String>>,
    /// Only here to say clearly why it is refused.
    client_secret: Option<Spanned<String>>,
    /// Only here to say clearly why it is refused.
    refresh_token: Option<Spanned<String>>,
    scopes: Option<Vec<String>>,
    refresh_token_file: Option<Spanned<String>>,
    /// A systemd credential's name: the file of that name in `$CREDENTIALS_DIRECTORY`.
    refresh_token_credential: Option<Spanned<String>>,
    mechanism: Option<Spanned<String>>,
}

/// A problem with the table: where, what, and how to fix it. `secret` marks a secret
/// that could not be read, which only `check` and `run` insist on.
#[derive(Debug)]
pub struct Problem {
    pub span: Option<Range<usize>>,
    pub message: String,
    pub help: Option<String>,
    pub secret: bool,
}

impl Problem {
    fn at(span: Range<usize>, message: impl Into<String>) -> Problem {
        Problem {
            span: Some(span),
            message: message.into(),
            help: None,
            secret: false,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }
}

/// Where the refresh token is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStore {
    /// A file followup reads, and writes at `mailbox login` and when the provider
    /// rotates the token.
    File(PathBuf),
    /// A systemd credential: read-only, so a rotated token is kept in memory only.
    Credential(PathBuf),
}

impl TokenStore {
    pub fn path(&self) -> &Path {
        match self {
            TokenStore::File(p) | TokenStore::Credential(p) => p,
        }
    }
}

/// The validated `oauth` table.
#[derive(Clone)]
pub struct Settings {
    pub token_url: String,
    /// The device authorization endpoint (RFC 8628), for `mailbox login`.
    pub device_url: Option<String>,
    /// The authorization endpoint, for `mailbox login` in a browser where the
    /// provider has no device grant for mail (Google).
    pub auth_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub scopes: Vec<String>,
    pub refresh_token: TokenStore,
    pub mechanism: Mechanism,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("token_url", &self.token_url)
            .field("device_url", &self.device_url)
            .field("auth_url", &self.auth_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("scopes", &self.scopes)
            .field("refresh_token", &self.refresh_token)
            .field("mechanism", &self.mechanism)
            .finish()
    }
}

const GOOGLE_TOKEN: &str = "https://oauth2.googleapis.com/token";
/// Google's device grant does not cover the mail scope, so its login goes through the
/// browser (authorization code with PKCE, RFC 7636).
const GOOGLE_AUTH: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const GOOGLE_SCOPES: &[&str] = &["https://mail.google.com/"];
const MICROSOFT_SCOPES: &[&str] = &[
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];

impl RawOAuth {
    /// Validates the table of mailbox `name`. `root` is the project's folder (relative
    /// paths are its); `env` reads the environment.
    pub fn resolve(
        &self,
        name: &str,
        root: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        whole: Range<usize>,
    ) -> Result<Settings, Vec<Problem>> {
        let mut problems = Vec::new();
        for (key, v) in [
            ("client_secret", &self.client_secret),
            ("refresh_token", &self.refresh_token),
        ] {
            if let Some(v) = v {
                problems.push(
                    Problem::at(
                        v.span(),
                        format!(
                            "mailbox '{name}': secrets are never written in followup.toml ({key})"
                        ),
                    )
                    .help(format!(
                        "use {key}_file = \"/run/credentials/...\"{}",
                        if key == "client_secret" {
                            " or client_secret_env = \"VAR\""
                        } else {
                            ", or run `followup mailbox login` to write it"
                        }
                    )),
                );
            }
        }
        let (mut token_url, mut device_url, mut auth_url, preset_scopes): (
            Option<String>,
            Option<String>,
            Option<String>,
            &[&str],
        ) = match self
            .provider
            .as_ref()
            .map(|p| (p, p.get_ref().to_ascii_lowercase()))
        {
            None => (None, None, None, &[]),
            Some((_, p)) if p == "google" => (
                Some(GOOGLE_TOKEN.into()),
                None,
                Some(GOOGLE_AUTH.into()),
                GOOGLE_SCOPES,
            ),
            Some((_, p)) if p == "microsoft" => {
                let tenant = self.tenant.as_deref().unwrap_or("common");
                let at = |end: &str| {
                    Some(format!(
                        "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/{end}"
                    ))
                };
                (
                    at("token"),
                    at("devicecode"),
                    at("authorize"),
                    MICROSOFT_SCOPES,
                )
            }
            Some((s, p)) => {
                problems.push(
                        Problem::at(s.span(), format!("mailbox '{name}': unknown OAuth provider '{p}'"))
                            .help("use provider = \"google\" or \"microsoft\", or give token_url (and device_url or auth_url for `mailbox login`)"),
                    );
                (None, None, None, &[])
            }
        };
        // A URL given explicitly wins over the preset's.
        for (slot, given, key) in [
            (&mut token_url, &self.token_url, "token_url"),
            (&mut device_url, &self.device_url, "device_url"),
            (&mut auth_url, &self.auth_url, "auth_url"),
        ] {
            if let Some(u) = given {
                match reqwest::Url::parse(u.get_ref()) {
                    Ok(url) if matches!(url.scheme(), "https" | "http") => {
                        // Plain http only to this host: the endpoint gets the client
                        // secret and the refresh token.
                        if url.scheme() == "http"
                            && !url.host_str().is_some_and(crate::config::is_loopback)
                        {
                            problems.push(Problem::at(
                                u.span(),
                                format!("mailbox '{name}': {key} must be https:// (the refresh token would cross the network in clear)"),
                            ));
                        }
                        *slot = Some(u.get_ref().clone());
                    }
                    _ => problems.push(Problem::at(
                        u.span(),
                        format!(
                            "mailbox '{name}': {key} '{}' is not an https:// URL",
                            u.get_ref()
                        ),
                    )),
                }
            }
        }
        let token_url = token_url.unwrap_or_else(|| {
            problems.push(
                Problem::at(
                    whole.clone(),
                    format!("mailbox '{name}': oauth needs a provider or a token_url"),
                )
                .help("provider = \"google\" or \"microsoft\", or token_url = \"https://...\""),
            );
            String::new()
        });
        let client_id = match &self.client_id {
            Some(c) if !c.get_ref().trim().is_empty() => c.get_ref().trim().to_string(),
            _ => {
                problems.push(
                    Problem::at(whole.clone(), format!("mailbox '{name}': oauth needs a client_id"))
                        .help("the application (client) ID of the app you registered with the provider (see README: OAuth2 mailboxes)"),
                );
                String::new()
            }
        };
        let client_secret = match (&self.client_secret_env, &self.client_secret_file) {
            (Some(var), _) => match env(var.get_ref()) {
                Some(v) => Some(SecretString::from(v)),
                None => {
                    problems.push(Problem {
                        secret: true,
                        ..Problem::at(var.span(), format!("mailbox '{name}': client secret: environment variable {} is not set", var.get_ref()))
                    });
                    None
                }
            },
            (None, Some(file)) => match std::fs::read_to_string(root.join(file.get_ref())) {
                Ok(v) => Some(SecretString::from(
                    v.trim_end_matches(['\r', '\n']).to_string(),
                )),
                Err(e) => {
                    problems.push(Problem {
                        secret: true,
                        ..Problem::at(
                            file.span(),
                            format!(
                                "mailbox '{name}': cannot read client secret file {}: {e}",
                                file.get_ref()
                            ),
                        )
                    });
                    None
                }
            },
            (None, None) => None,
        };
        let refresh_token = match (&self.refresh_token_file, &self.refresh_token_credential) {
            (Some(f), None) => Some(TokenStore::File(root.join(f.get_ref()))),
            (None, Some(c)) => match env("CREDENTIALS_DIRECTORY") {
                Some(dir) => Some(TokenStore::Credential(Path::new(&dir).join(c.get_ref()))),
                None => {
                    problems.push(Problem {
                        secret: true,
                        ..Problem::at(c.span(), format!("mailbox '{name}': refresh_token_credential needs $CREDENTIALS_DIRECTORY (systemd's LoadCredential=)"))
                    });
                    None
                }
            },
            (Some(f), Some(_)) => {
                problems.push(Problem::at(f.span(), format!("mailbox '{name}': give refresh_token_file or refresh_token_credential, not both")));
                None
            }
            (None, None) => {
                problems.push(
                    Problem::at(whole.clone(), format!("mailbox '{name}': oauth needs refresh_token_file (or refresh_token_credential)"))
                        .help(format!("refresh_token_file = \"secrets/{name}.token\", then run `followup mailbox login {name}`")),
                );
                None
            }
        };
        let mechanism = match self
            .mechanism
            .as_ref()
            .map(|m| (m, m.get_ref().to_ascii_lowercase()))
        {
            None => Mechanism::XOAuth2,
            Some((_, m)) if m == "xoauth2" => Mechanism::XOAuth2,
            Some((_, m)) if m == "oauthbearer" => Mechanism::OAuthBearer,
            Some((s, m)) => {
                problems.push(Problem::at(s.span(), format!("mailbox '{name}': unknown SASL mechanism '{m}': use \"xoauth2\" or \"oauthbearer\"")));
                Mechanism::XOAuth2
            }
        };
        let scopes = match &self.scopes {
            Some(s) => s.clone(),
            None => preset_scopes.iter().map(|s| s.to_string()).collect(),
        };
        match refresh_token {
            Some(refresh_token) if problems.is_empty() => Ok(Settings {
                token_url,
                device_url,
                auth_url,
                client_id,
                client_secret,
                scopes,
                refresh_token,
                mechanism,
            }),
            _ => Err(problems),
        }
    }
}

/// Why no access token could be had. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider refused the refresh token (`invalid_grant`): revoked, expired, or
    /// the password changed. Only a new login helps.
    #[error("mailbox '{mailbox}': the provider refused its refresh token ({reason}); run `followup mailbox login {mailbox}`")]
    Revoked { mailbox: String, reason: String },
    /// No refresh token yet.
    #[error("mailbox '{mailbox}': no refresh token in {path}: {reason}; run `followup mailbox login {mailbox}`")]
    NoRefreshToken {
        mailbox: String,
        path: String,
        reason: String,
    },
    /// The provider refused the client (wrong id or secret, app not allowed).
    #[error("mailbox '{mailbox}': the token endpoint refused the client ({reason}); check client_id and the client secret")]
    Client { mailbox: String, reason: String },
    /// The endpoint could not be reached or answered nonsense: try again later.
    #[error("mailbox '{mailbox}': the token endpoint {url} failed: {reason}")]
    Endpoint {
        mailbox: String,
        url: String,
        reason: String,
    },
    #[error("mailbox '{mailbox}': cannot store the refresh token in {path}: {reason}")]
    Store {
        mailbox: String,
        path: String,
        reason: String,
    },
}

impl Error {
    /// Whether only a person can fix it (a login, or the client's settings): the
    /// mailbox pauses rather than retrying.
    pub fn needs_person(&self) -> bool {
        matches!(
            self,
            Error::Revoked { .. } | Error::NoRefreshToken { .. } | Error::Client { .. }
        )
    }
}

/// An access token and when it stops being worth using.
struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// Hands out access tokens for one mailbox: shared (it is cloned with the mailbox's
/// configuration) by its senders and watchers, so that they refresh once between them.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    mailbox: String,
    settings: Settings,
    http: OnceLock<reqwest::Client>,
    /// Held across the refresh, so that connections that want a token at once wait
    /// for one refresh instead of each making its own.
    cache: tokio::sync::Mutex<Option<Cached>>,
    /// A refresh token the provider rotated to, when the store is read-only.
    rotated: std::sync::Mutex<Option<SecretString>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("mailbox", &self.inner.mailbox)
            .field("settings", &self.inner.settings)
            .finish()
    }
}

/// The reqwest client the token requests go through: rustls, timeouts, and no
/// redirects (a redirect would carry the refresh token to another host).
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

type Client = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointMaybeSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

impl Settings {
    pub(crate) fn client(&self) -> Result<Client, String> {
        let mut c = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_token_uri(TokenUrl::new(self.token_url.clone()).map_err(|e| e.to_string())?)
            .set_device_authorization_url_option(
                self.device_url
                    .clone()
                    .map(DeviceAuthorizationUrl::new)
                    .transpose()
                    .map_err(|e| e.to_string())?,
            );
        if let Some(secret) = &self.client_secret {
            c = c.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
        }
        // The client id (and secret) in the form body, as both providers take them; a
        // public client has no secret for HTTP Basic.
        Ok(c.set_auth_type(oauth2::AuthType::RequestBody))
    }

    pub(crate) fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.scopes.iter().map(|s| Scope::new(s.clone()))
    }
}

impl TokenSource {
    pub fn new(mailbox: &str, settings: Settings) -> TokenSource {
        TokenSource {
            inner: Arc::new(Inner {
                mailbox: mailbox.to_string(),
                settings,
                http: OnceLock::new(),
                cache: tokio::sync::Mutex::new(None),
                rotated: std::sync::Mutex::new(None),
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn mechanism(&self) -> Mechanism {
        self.inner.settings.mechanism
    }

    /// A token worth using: the cached one, or a fresh one when it expires within
    /// [`REFRESH_MARGIN`] (or there is none yet).
    pub async fn token(&self) -> Result<SecretString, Error> {
        let mut cache = self.inner.cache.lock().await;
        if let Some(c) = cache.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let fresh = self.refresh().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// After a server refused `refused`: a fresh token, once. When another
    /// connection has refreshed meanwhile, its token is the answer.
    pub async fn refused(&self, refused: &SecretString) -> Result<SecretString, Error> {
        let mut cache = self.inner.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if c.token.expose_secret() != refused.expose_secret() && Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        *cache = None;
        let fresh = self.refresh().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    fn endpoint_error(&self, reason: impl Into<String>) -> Error {
        Error::Endpoint {
            mailbox: self.inner.mailbox.clone(),
            url: self.inner.settings.token_url.clone(),
            reason: reason.into(),
        }
    }

    fn http(&self) -> Result<&reqwest::Client, Error> {
        if let Some(c) = self.inner.http.get() {
            return Ok(c);
        }
        let c = http_client().map_err(|e| self.endpoint_error(e))?;
        Ok(self.inner.http.get_or_init(|| c))
    }

    fn read_refresh_token(&self) -> Result<SecretString, Error> {
        if let Some(t) = self.inner.rotated.lock().ok().and_then(|r| r.clone()) {
            return Ok(t);
        }
        let path = self.inner.settings.refresh_token.path();
        let missing = |reason: String| Error::NoRefreshToken {
            mailbox: self.inner.mailbox.clone(),
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| missing(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(missing("the file is empty".into()));
        }
        Ok(SecretString::from(token.to_string()))
    }

    async fn refresh(&self) -> Result<Cached, Error> {
        let refresh_token = self.read_refresh_token()?;
        let client = self
            .inner
            .settings
            .client()
            .map_err(|e| self.endpoint_error(e))?;
        let http = self.http()?;
        let rt = RefreshToken::new(refresh_token.expose_secret().to_string());
        let asked = Instant::now();
        let response = client
            .exchange_refresh_token(&rt)
            .add_scopes(self.inner.settings.scopes())
            .request_async(http)
            .await
            .map_err(|e| self.token_error(e))?;
        if let Some(new) = response.refresh_token() {
            if new.secret() != refresh_token.expose_secret() {
                self.keep_rotated(SecretString::from(new.secret().to_string()))?;
            }
        }
        let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
        Ok(Cached {
            token: SecretString::from(response.access_token().secret().to_string()),
            // Counted from the request, not the answer: the provider's clock started
            // no later than that.
            refresh_at: asked + lifetime.saturating_sub(REFRESH_MARGIN),
        })
    }

    /// A rotated refresh token replaces the old one in the file, or in memory when
    /// the store is a read-only credential.
    fn keep_rotated(&self, new: SecretString) -> Result<(), Error> {
        match &self.inner.settings.refresh_token {
            TokenStore::File(path) => write_secret_file(path, &new).map_err(|e| Error::Store {
                mailbox: self.inner.mailbox.clone(),
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            TokenStore::Credential(_) => {
                if let Ok(mut r) = self.inner.rotated.lock() {
                    *r = Some(new);
                }
                Ok(())
            }
        }
    }

    fn token_error<RE: std::error::Error + 'static>(
        &self,
        e: RequestTokenError<RE, StandardErrorResponse<BasicErrorResponseType>>,
    ) -> Error {
        let mailbox = self.inner.mailbox.clone();
        match e {
            RequestTokenError::ServerResponse(r) => {
                let reason = server_said(&r);
                match r.error() {
                    BasicErrorResponseType::InvalidGrant => Error::Revoked { mailbox, reason },
                    BasicErrorResponseType::InvalidClient
                    | BasicErrorResponseType::UnauthorizedClient
                    | BasicErrorResponseType::InvalidScope => Error::Client { mailbox, reason },
                    _ => self.endpoint_error(reason),
                }
            }
            RequestTokenError::Request(e) => self.endpoint_error(error_chain(&e)),
            RequestTokenError::Parse(e, _) => {
                self.endpoint_error(format!("unreadable answer: {e}"))
            }
            RequestTokenError::Other(e) => self.endpoint_error(one_line(&e)),
        }
    }
}

/// An OAuth error answer as `error: description`.
pub(crate) fn server_said<T: oauth2::ErrorResponseType + fmt::Display>(
    r: &StandardErrorResponse<T>,
) -> String {
    match r.error_description() {
        Some(d) => format!("{}: {}", r.error(), one_line(d)),
        None => r.error().to_string(),
    }
}

/// A server's text on one line, and bounded: it goes into `status` and the log.
pub(crate) fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    s.trim().to_string()
}

/// An error with its causes, `a: b: c` (reqwest's own text is only the outermost).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = c.source();
    }
    one_line(&s)
}

/// Writes a secret to `path` through a temporary file created with mode 0600 (never
/// readable by others, not even for a moment), then renamed over the old one.
pub fn write_secret_file(path: &Path, secret: &SecretString) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let _ = std::fs::remove_file(&tmp);
    let mut f = options.open(&tmp)?;
    let written = f
        .write_all(secret.expose_secret().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// The SASL exchange for async-imap's `authenticate`: the initial response to the
/// first challenge (IMAP has the server speak first, with an empty `+`), and the
/// mechanism's "go on" to an error challenge, so that the server answers NO.
pub struct ImapAuth {
    first: Option<SecretString>,
    mechanism: Mechanism,
}

impl ImapAuth {
    pub fn new(mechanism: Mechanism, user: &str, token: &SecretString) -> ImapAuth {
        ImapAuth {
            first: Some(mechanism.initial_response(user, token)),
            mechanism,
        }
    }
}

impl async_imap::Authenticator for ImapAuth {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        match self.first.take() {
            Some(first) => first.expose_secret().as_bytes().to_vec(),
            None => self.mechanism.after_error().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_responses_are_the_documented_forms() {
        let token = SecretString::from("ya29.tok".to_string());
        assert_eq!(
            Mechanism::XOAuth2
                .initial_response("iris@example.com", &token)
                .expose_secret(),
            "user=iris@example.com\x01auth=Bearer ya29.tok\x01\x01"
        );
        // RFC 7628 §3.1: `=` and `,` in the authzid are escaped.
        assert_eq!(
            Mechanism::OAuthBearer
                .initial_response("a,b=c@example.com", &token)
                .expose_secret(),
            "n,a=a=2Cb=3Dc@example.com,\x01auth=Bearer ya29.tok\x01\x01"
        );
    }

    fn resolve(table: &str) -> Result<Settings, Vec<Problem>> {
        let raw: RawOAuth = toml::from_str(table).unwrap();
        let env = |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| "/run/creds".to_string());
        raw.resolve("iris", Path::new("/p"), &env, 0..1)
    }

    #[test]
    fn presets_fill_in_endpoints_and_scopes_and_what_is_given_wins() {
        let ms = resolve(
            "provider = \"microsoft\"\ntenant = \"contoso.com\"\nclient_id = \"c\"\nrefresh_token_file = \"t\"",
        )
        .unwrap();
        assert_eq!(
            ms.token_url,
            "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token"
        );
        assert!(ms.device_url.as_deref().unwrap().ends_with("/devicecode"));
        assert_eq!(ms.scopes, MICROSOFT_SCOPES);
        assert_eq!(ms.refresh_token, TokenStore::File("/p/t".into()));
        assert_eq!(ms.mechanism, Mechanism::XOAuth2);

        // Google's device grant does not cover mail: its login is the browser's.
        let g = resolve(
            "provider = \"Google\"\nclient_id = \"c\"\nrefresh_token_credential = \"iris\"\nscopes = [\"x\"]\nmechanism = \"OAUTHBEARER\"",
        )
        .unwrap();
        assert_eq!(g.device_url, None);
        assert_eq!(g.auth_url.as_deref(), Some(GOOGLE_AUTH));
        assert_eq!(g.scopes, ["x"]);
        assert_eq!(
            g.refresh_token,
            TokenStore::Credential("/run/creds/iris".into())
        );
        assert_eq!(g.mechanism, Mechanism::OAuthBearer);

        let own = resolve(
            "provider = \"google\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"c\"\nrefresh_token_file = \"t\"",
        )
        .unwrap();
        assert_eq!(own.token_url, "https://idp.example/token");
    }

    #[test]
    fn endpoints_take_the_refresh_token_over_https_only_except_to_this_host() {
        let messages = |t: &str| -> Vec<String> {
            resolve(t)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.message)
                .collect()
        };
        let m = messages(
            "token_url = \"http://idp.example/token\"\nclient_id = \"c\"\nrefresh_token_file = \"t\"",
        );
        assert!(m.iter().any(|m| m.contains("must be https://")), "{m:?}");
        assert!(resolve(
            "token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nrefresh_token_file = \"t\""
        )
        .is_ok());
        let m = messages("client_id = \"c\"");
        assert!(
            m.iter()
                .any(|m| m.contains("needs a provider or a token_url"))
                && m.iter().any(|m| m.contains("needs refresh_token_file")),
            "{m:?}"
        );
        let m = messages(
            "provider = \"google\"\nrefresh_token = \"1//abc\"\nrefresh_token_file = \"t\"",
        );
        assert!(
            m.iter()
                .any(|m| m.contains("never written in followup.toml (refresh_token)"))
                && m.iter().any(|m| m.contains("needs a client_id"))
                && !m.iter().any(|m| m.contains("1//abc")),
            "{m:?}"
        );
    }

    #[test]
    fn settings_never_show_the_client_secret() {
        let s = Settings {
            token_url: "https://t.example/token".into(),
            device_url: None,
            auth_url: None,
            client_id: "id".into(),
            client_secret: Some(SecretString::from("hunter2".to_string())),
            scopes: vec![],
            refresh_token: TokenStore::File("x".into()),
            mechanism: Mechanism::XOAuth2,
        };
        let shown = format!("{:?}", TokenSource::new("iris", s));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_is_created_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/iris.token");
        write_secret_file(&path, &SecretString::from("r1".to_string())).unwrap();
        write_secret_file(&path, &SecretString::from("r2".to_string())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "r2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
