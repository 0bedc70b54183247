//! `mailbox login` for a provider whose device grant does not cover mail (Google's
//! allows a few scopes only): the authorization code grant with PKCE (RFC 7636) and a
//! loopback redirect (RFC 8252 §7.3). followup listens on 127.0.0.1 and prints the
//! provider's URL; the rep opens it, agrees, and the provider sends the browser back to
//! the listener with the code. When the browser runs on another machine than followup
//! (a server), the redirect fails to load there, and the rep pastes the address from
//! the browser's address bar into the terminal instead: either way ends the wait.

use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl, TokenResponse,
};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::device::{request_error, Error, Prompt};
use super::{one_line, Settings};

/// The most of a redirected request that is read: its request line is all that counts.
const MAX_REQUEST: usize = 16 * 1024;

/// Runs the grant; the refresh token it ended with, if the provider gave one.
pub(super) async fn authorize(
    mailbox: &str,
    settings: &Settings,
    show: impl FnOnce(&Prompt),
) -> Result<Option<SecretString>, Error> {
    let start = |reason: String| Error::Start {
        mailbox: mailbox.into(),
        reason,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| start(format!("cannot listen on 127.0.0.1 for the redirect: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| start(e.to_string()))?
        .port();
    let redirect = format!("http://127.0.0.1:{port}/");
    let auth_url = settings.auth_url.clone().unwrap_or_default();
    let client = settings
        .client()
        .map_err(start)?
        .set_auth_uri(AuthUrl::new(auth_url).map_err(|e| start(e.to_string()))?)
        .set_redirect_uri(RedirectUrl::new(redirect.clone()).map_err(|e| start(e.to_string()))?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(settings.scopes())
        .set_pkce_challenge(challenge)
        // Google gives a refresh token only for offline access, and again only when
        // the consent screen is shown.
        .add_extra_param("access_type", "offline")
        .add_extra_param("prompt", "consent")
        .url();
    show(&Prompt::Browser {
        url: url.to_string(),
        redirect,
    });
    let query = tokio::select! {
        q = redirected(&listener) => q,
        q = pasted() => q,
    };
    let denied = |reason: String| Error::Denied {
        mailbox: mailbox.into(),
        reason,
    };
    let params: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Some(error) = get("error") {
        return Err(denied(match get("error_description") {
            Some(d) => format!("{error} ({})", one_line(&d)),
            None => error,
        }));
    }
    // The state ties the answer to this request: a page that sent the browser to the
    // listener with a code of its own is not believed.
    if get("state").as_deref() != Some(state.secret().as_str()) {
        return Err(denied(
            "the answer is not for this login (state differs)".into(),
        ));
    }
    let code = get("code").ok_or_else(|| denied("the answer has no code".into()))?;
    let http = super::http_client().map_err(start)?;
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .map_err(|e| denied(request_error(e, super::server_said)))?;
    Ok(token
        .refresh_token()
        .map(|r| SecretString::from(r.secret().to_string())))
}

/// The query of the first request to the listener that carries a `code` or an
/// `error` (a browser may ask for /favicon.ico first); the browser is told it can
/// close the tab.
async fn redirected(listener: &tokio::net::TcpListener) -> String {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let mut buf = vec![0; MAX_REQUEST];
        let mut len = 0;
        // Up to the end of the request line; a client that sends nothing is dropped
        // after a while so that the next can come.
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while len < buf.len() && !buf[..len].contains(&b'\n') {
                match conn.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
            }
        });
        let _ = read.await;
        let head = String::from_utf8_lossy(&buf[..len]);
        let target = head.split_whitespace().nth(1).unwrap_or("");
        let query = target.split_once('?').map(|(_, q)| q.to_string());
        let useful = query
            .as_deref()
            .is_some_and(|q| q.contains("code=") || q.contains("error="));
        let body = if useful {
            "followup has what it needs: you can close this tab."
        } else {
            "followup is waiting for the provider's answer."
        };
        let _ = conn
            .write_all(
                format!(
                    "HTTP/1.1 {} \r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    if useful { "200 OK" } else { "404 Not Found" },
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        if let (true, Some(q)) = (useful, query) {
            return q;
        }
    }
}

/// The query of an address pasted into the terminal; never ends when standard input
/// is closed (the redirect must come then). Read on a thread of its own, not tokio's
/// blocking pool: a read left waiting there would hold up the runtime's shutdown, so
/// that a login ended by the redirect would not exit until Enter was pressed.
async fn pasted() -> String {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if let Some((_, q)) = line.trim().split_once('?') {
                if q.contains("code=") || q.contains("error=") {
                    let _ = tx.send(q.to_string());
                    return;
                }
            }
        }
    });
    match rx.await {
        Ok(q) => q,
        Err(_) => std::future::pending().await,
    }
}
