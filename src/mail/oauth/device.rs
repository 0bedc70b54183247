//! `followup mailbox login NAME`: the OAuth 2.0 device authorization grant (RFC 8628),
//! or, where the provider has none for mail (Google), the browser ([`super::browser`]).
//! followup runs on a server without a browser: it asks the provider for a user code,
//! the rep enters it at the provider's page on any device, and followup polls the
//! token endpoint (at the interval the provider sets, slower when told `slow_down`;
//! the `oauth2` crate keeps to both) until the rep has agreed, then stores the refresh
//! token in the mailbox's token file, created with mode 0600.

use oauth2::DeviceCodeErrorResponseType;
use oauth2::{RequestTokenError, StandardDeviceAuthorizationResponse, TokenResponse};
use secrecy::SecretString;

use super::{error_chain, one_line, write_secret_file, Settings, TokenStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mailbox '{0}' has neither device_url nor auth_url: set provider = \"google\" or \"microsoft\", or one of them")]
    NoLoginUrl(String),
    #[error("mailbox '{mailbox}' keeps its refresh token in the systemd credential {path}, which is read-only: set refresh_token_file for the login, then make the credential from that file")]
    ReadOnly { mailbox: String, path: String },
    #[error("mailbox '{mailbox}': the device authorization endpoint failed: {reason}")]
    Start { mailbox: String, reason: String },
    #[error("mailbox '{mailbox}': the login was not completed: {reason}")]
    Denied { mailbox: String, reason: String },
    #[error("mailbox '{mailbox}': the provider gave no refresh token (is offline access among the scopes?)")]
    NoRefreshToken { mailbox: String },
    #[error("mailbox '{mailbox}': cannot write {path}: {reason}")]
    Write {
        mailbox: String,
        path: String,
        reason: String,
    },
}

/// What the rep must do, shown before the wait starts.
pub enum Prompt {
    /// Enter `user_code` at `verification_uri` on any device.
    Device {
        verification_uri: String,
        user_code: String,
        /// The URL with the code in it, where the provider offers one.
        complete_uri: Option<String>,
        expires_in: std::time::Duration,
    },
    /// Open `url` in a browser; the provider sends it back to `redirect`, a listener
    /// of this process on 127.0.0.1, or the rep pastes the address it was sent to.
    Browser { url: String, redirect: String },
}

/// The failures of both flows, worded alike.
pub(crate) fn request_error<RE: std::error::Error + 'static, T: oauth2::ErrorResponse>(
    e: RequestTokenError<RE, T>,
    server: impl FnOnce(&T) -> String,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => server(&r),
        RequestTokenError::Request(e) => error_chain(&e),
        RequestTokenError::Parse(e, _) => format!("unreadable answer: {e}"),
        RequestTokenError::Other(e) => one_line(&e),
    }
}

/// Runs the grant for `mailbox`: `show` is called once with what the rep must do;
/// returns the file the refresh token was written to.
pub async fn login(
    mailbox: &str,
    settings: &Settings,
    show: impl FnOnce(&Prompt),
) -> Result<std::path::PathBuf, Error> {
    let path = match &settings.refresh_token {
        TokenStore::File(p) => p.clone(),
        TokenStore::Credential(p) => {
            return Err(Error::ReadOnly {
                mailbox: mailbox.into(),
                path: p.display().to_string(),
            })
        }
    };
    let refresh = if settings.device_url.is_some() {
        device(mailbox, settings, show).await?
    } else if settings.auth_url.is_some() {
        super::browser::authorize(mailbox, settings, show).await?
    } else {
        return Err(Error::NoLoginUrl(mailbox.into()));
    };
    let refresh = refresh.ok_or_else(|| Error::NoRefreshToken {
        mailbox: mailbox.into(),
    })?;
    write_secret_file(&path, &refresh).map_err(|e| Error::Write {
        mailbox: mailbox.into(),
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(path)
}

/// The device grant: the refresh token it ended with, if the provider gave one.
async fn device(
    mailbox: &str,
    settings: &Settings,
    show: impl FnOnce(&Prompt),
) -> Result<Option<SecretString>, Error> {
    let start = |reason: String| Error::Start {
        mailbox: mailbox.into(),
        reason,
    };
    let client = settings.client().map_err(start)?;
    let http = super::http_client().map_err(start)?;
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .map_err(|e| start(e.to_string()))?
        .add_scopes(settings.scopes())
        .request_async(&http)
        .await
        .map_err(|e| start(request_error(e, super::server_said)))?;
    show(&Prompt::Device {
        verification_uri: details.verification_uri().to_string(),
        user_code: details.user_code().secret().to_string(),
        complete_uri: details
            .verification_uri_complete()
            .map(|u| u.secret().to_string()),
        expires_in: details.expires_in(),
    });
    let token = client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, None)
        .await
        .map_err(|e| Error::Denied {
            mailbox: mailbox.into(),
            reason: request_error(e, |r| {
                let what = match r.error() {
                    DeviceCodeErrorResponseType::AccessDenied => "access was denied".to_string(),
                    DeviceCodeErrorResponseType::ExpiredToken => {
                        "the code expired before it was entered".to_string()
                    }
                    other => other.to_string(),
                };
                match r.error_description() {
                    Some(d) => format!("{what} ({})", one_line(d)),
                    None => what,
                }
            }),
        })?;
    Ok(token
        .refresh_token()
        .map(|r| SecretString::from(r.secret().to_string())))
}
