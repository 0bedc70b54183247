//! OAuth2 mailboxes (`auth = "oauth2"`) against real servers on 127.0.0.1: Dovecot
//! with its `oauth2` passdb and Postfix submission with SASL through Dovecot
//! (tests/support/mailworld.sh with MAILWORLD_OAUTH2_URL), both checking each bearer
//! token against a token-introspection endpoint that this test serves, next to the
//! token and device-authorization endpoints of a small authorization server. The real
//! `followup` binary logs in (`mailbox check`, `run --once`, `mailbox login`).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::mailworld::{World, LI, REP};
use crate::support::{Db, Options, Project};

const CLIENT_ID: &str = "followup-test";
/// The refresh token the server honours from the start.
const GOOD_REFRESH: &str = "rt-good-0001";
const DEVICE_REFRESH: &str = "rt-from-device-0002";
const BROWSER_REFRESH: &str = "rt-from-browser-0004";

/// What the authorization server knows and saw.
#[derive(Default)]
struct State {
    /// `expires_in` of the access tokens it issues.
    expires_in: u64,
    /// Access tokens issued, in order (`at-1`, `at-2`...).
    issued: Vec<String>,
    /// Issued tokens the introspection endpoint calls inactive (revoked early).
    refused: HashSet<String>,
    /// Refresh tokens it honours.
    refresh_tokens: HashSet<String>,
    /// Tokens Dovecot asked about, in order.
    introspected: Vec<String>,
    /// Answers to the device-code polls so far.
    device_polls: Vec<&'static str>,
    /// client_id of every token request.
    client_ids: Vec<String>,
    /// The PKCE challenge and redirect of the browser login under way, as its URL
    /// carried them.
    pkce_challenge: Option<String>,
    redirect_uri: Option<String>,
    /// Each refresh spends its refresh token and gives a new one (Microsoft's way).
    rotate: bool,
}

/// The authorization server: `/token`, `/device`, `/introspect`. Its thread serves
/// until the test binary ends; each request gets one connection.
struct AuthServer {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl AuthServer {
    fn start() -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            expires_in: 3600,
            refresh_tokens: [GOOD_REFRESH, DEVICE_REFRESH, BROWSER_REFRESH]
                .map(String::from)
                .into(),
            ..State::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &state, port);
                });
            }
        });
        AuthServer { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

/// `a=b&c=d`, percent-decoded.
fn form(body: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn serve(conn: TcpStream, state: &Mutex<State>, port: u16) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let params = form(&String::from_utf8_lossy(&body));
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (code, json) = answer(path, &params, &mut state.lock().unwrap(), port);
    let body = json.to_string();
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn answer(
    path: &str,
    p: &HashMap<String, String>,
    s: &mut State,
    port: u16,
) -> (u16, serde_json::Value) {
    use serde_json::json;
    let param = |k: &str| p.get(k).cloned().unwrap_or_default();
    match path {
        "/introspect" => {
            let token = param("token");
            s.introspected.push(token.clone());
            if s.issued.contains(&token) && !s.refused.contains(&token) {
                (200, json!({"active": true, "username": REP}))
            } else {
                (200, json!({"active": false}))
            }
        }
        "/device" => (
            200,
            json!({
                "device_code": "dc-1",
                "user_code": "WDJB-MJHT",
                "verification_uri": format!("http://127.0.0.1:{port}/activate"),
                "expires_in": 600,
                "interval": 1,
            }),
        ),
        "/token" => {
            s.client_ids.push(param("client_id"));
            let issue = |s: &mut State| {
                let token = format!("at-{}", s.issued.len() + 1);
                s.issued.push(token.clone());
                token
            };
            match param("grant_type").as_str() {
                "refresh_token" => {
                    if !s.refresh_tokens.contains(&param("refresh_token")) {
                        return (
                            400,
                            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
                        );
                    }
                    let token = issue(s);
                    if s.rotate {
                        // Rotation: the old refresh token is spent, a new one given.
                        let old = param("refresh_token");
                        s.refresh_tokens.remove(&old);
                        let new = format!("rt-rotated-{}", s.issued.len());
                        s.refresh_tokens.insert(new.clone());
                        return (
                            200,
                            json!({"access_token": token, "token_type": "Bearer", "expires_in": s.expires_in, "refresh_token": new}),
                        );
                    }
                    (
                        200,
                        json!({"access_token": token, "token_type": "Bearer", "expires_in": s.expires_in}),
                    )
                }
                "authorization_code" => {
                    // PKCE: the verifier must hash to the challenge the login URL
                    // carried (RFC 7636 §4.6), and the code must be the one given.
                    use base64::Engine as _;
                    use sha2::Digest as _;
                    let hashed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(sha2::Sha256::digest(param("code_verifier").as_bytes()));
                    if param("code") != "code-1"
                        || s.pkce_challenge.as_deref() != Some(hashed.as_str())
                        || s.redirect_uri.as_deref() != Some(param("redirect_uri").as_str())
                    {
                        return (400, json!({"error": "invalid_grant"}));
                    }
                    let token = issue(s);
                    (
                        200,
                        json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "refresh_token": BROWSER_REFRESH}),
                    )
                }
                "urn:ietf:params:oauth:grant-type:device_code" => {
                    // The rep takes a while: pending, then the client is told to slow
                    // down, then the grant.
                    let next = match s.device_polls.len() {
                        0 => "authorization_pending",
                        1 => "slow_down",
                        _ => "granted",
                    };
                    s.device_polls.push(next);
                    if next != "granted" {
                        return (400, json!({"error": next}));
                    }
                    let token = issue(s);
                    (
                        200,
                        json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "refresh_token": DEVICE_REFRESH}),
                    )
                }
                _ => (400, json!({"error": "unsupported_grant_type"})),
            }
        }
        _ => (404, json!({"error": "not_found"})),
    }
}

/// A mail world whose Dovecot and Postfix submission take bearer tokens checked at
/// `introspect`.
fn world(introspect: &str) -> World {
    World::start_with(&[("MAILWORLD_OAUTH2_URL", introspect)])
}

/// A project whose mailbox `sales` logs in as the rep with OAuth2 (`mechanism`),
/// sending through `smtp_port` and watching `imap` (an `imap = ...` line, or "").
fn project(auth: &AuthServer, smtp_port: u16, imap: &str, mechanism: &str) -> Project {
    let login = format!("device_url = \"{}\"", auth.url("/device"));
    project_with(auth, smtp_port, imap, mechanism, &login)
}

/// The same, with `login` (`device_url = ...` or `auth_url = ...`) for `mailbox login`.
fn project_with(
    auth: &AuthServer,
    smtp_port: u16,
    imap: &str,
    mechanism: &str,
    login: &str,
) -> Project {
    Project::new(
        Db::Sqlite,
        &Options {
            smtp_port,
            extra_mailbox: &format!(
                "user = \"{REP}\"\n{imap}auth = \"oauth2\"\n\
                 oauth = {{ token_url = \"{}\", {login}, client_id = \"{CLIENT_ID}\", \
                 scopes = [\"mail\"], refresh_token_file = \"secrets/sales.token\", mechanism = \"{mechanism}\" }}\n",
                auth.url("/token"),
            ),
            ..Options::default()
        },
    )
}

fn set_refresh_token(p: &Project, token: &str) {
    p.write("secrets/sales.token", &format!("{token}\n"));
}

/// `followup mailbox check sales`: (exit code, stdout, stderr).
fn check(p: &Project) -> (i32, String, String) {
    let out = p.run(&["mailbox", "check", "sales"]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No token the server issued, nor a refresh token, in what followup printed.
fn assert_no_secrets(auth: &AuthServer, text: &str) {
    let s = auth.state();
    for t in s
        .issued
        .iter()
        .map(String::as_str)
        .chain([GOOD_REFRESH, DEVICE_REFRESH])
    {
        assert!(!text.contains(t), "{t} shown: {text}");
    }
}

#[test]
fn xoauth2_and_oauthbearer_log_in_to_imap_and_submission_and_a_step_goes_out() {
    let auth = AuthServer::start();
    let world = world(&auth.url("/introspect"));
    let imap = format!("imap = \"imap://127.0.0.1:{}\"\n", world.port("IMAP_PORT"));
    let submission = world.port("SUBMISSION_PORT");
    for mechanism in ["xoauth2", "oauthbearer"] {
        let p = project(&auth, submission, &imap, mechanism);
        set_refresh_token(&p, GOOD_REFRESH);
        let (code, out, err) = check(&p);
        let name = mechanism.to_ascii_uppercase();
        assert_eq!(code, 0, "{out}\n{err}\n{}", world.logs());
        assert!(out.contains("ok   oauth: access token from"), "{out}");
        assert!(
            out.contains(&format!(
                "ok   smtp: smtp://127.0.0.1:{submission}: logged in as {REP} with {name}"
            )),
            "{out}"
        );
        assert!(out.contains("ok   imap: 127.0.0.1:"), "{out}");
        assert!(
            world
                .log("dovecot.log")
                .contains(&format!("Login: user=<{REP}>, method={name}")),
            "Dovecot logged the {name} login: {}",
            world.logs()
        );
        assert_no_secrets(&auth, &format!("{out}{err}"));
    }
    // One access token per run, sent as the rep's client.
    assert_eq!(auth.state().issued.len(), 2);
    assert!(auth.state().client_ids.iter().all(|c| c == CLIENT_ID));

    // The daemon sends through the submission server with the token; its SMTP
    // connections (and watchers) share one access token.
    let p = project(&auth, submission, &imap, "xoauth2");
    let colleague = "colleague@prospect.test";
    set_refresh_token(&p, GOOD_REFRESH);
    p.write(
        "contacts.csv",
        &format!("email,first_name,company\n{LI},Li,Prospect\n{colleague},Cole,Prospect\n"),
    );
    p.ok(&[
        "contacts",
        "import",
        p.path("contacts.csv").to_str().unwrap(),
        "--sequence",
        "intro",
    ]);
    p.ok(&["run", "--once"]);
    world.wait_mail(LI, "the first step", |m| m.raw.contains("STEP=first"));
    world.wait_mail(colleague, "the first step", |m| {
        m.raw.contains("STEP=first")
    });
    assert_eq!(auth.state().issued.len(), 3, "one token for the whole run");
    assert!(world
        .log("postfix.log")
        .contains(&format!("sasl_method=XOAUTH2, sasl_username={REP}")));
}

#[test]
fn a_token_near_expiry_is_refreshed_before_use_and_a_refused_one_once_more() {
    let auth = AuthServer::start();
    let world = world(&auth.url("/introspect"));
    let imap = format!("imap = \"imap://127.0.0.1:{}\"\n", world.port("IMAP_PORT"));
    let p = project(&auth, world.port("SUBMISSION_PORT"), &imap, "xoauth2");
    set_refresh_token(&p, GOOD_REFRESH);

    // A token good for an hour serves the token check, SMTP and IMAP alike.
    let (code, out, err) = check(&p);
    assert_eq!(code, 0, "{out}\n{err}\n{}", world.logs());
    assert_eq!(auth.state().issued, ["at-1"]);
    assert!(auth.state().introspected.iter().all(|t| t == "at-1"));

    // Tokens that expire within the refresh margin are never used as they are: each
    // login gets a fresh one.
    auth.state().expires_in = 60;
    auth.state().introspected.clear();
    let (code, out, err) = check(&p);
    assert_eq!(code, 0, "{out}\n{err}\n{}", world.logs());
    assert_eq!(auth.state().issued, ["at-1", "at-2", "at-3", "at-4"]);
    assert_eq!(auth.state().introspected, ["at-3", "at-4"]);

    // A token the provider revoked before its time: the server refuses it, followup
    // refreshes once and the login goes through.
    auth.state().expires_in = 3600;
    auth.state().refused.insert("at-5".into());
    auth.state().introspected.clear();
    let (code, out, err) = check(&p);
    assert_eq!(code, 0, "{out}\n{err}\n{}", world.logs());
    assert_eq!(
        auth.state().issued.len(),
        6,
        "one refresh after the refusal"
    );
    assert_eq!(auth.state().introspected, ["at-5", "at-6", "at-6"]);

    // Refused again after the refresh: reported as the server's refusal, no loop.
    // (IMAP, next, has its own one more try, with a token that works.)
    auth.state()
        .refused
        .extend(["at-7".to_string(), "at-8".to_string()]);
    auth.state().introspected.clear();
    let (code, out, _) = check(&p);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL smtp: login refused by 127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("ok   imap: 127.0.0.1:"), "{out}");
    assert_eq!(auth.state().introspected, ["at-7", "at-8", "at-8", "at-9"]);
    assert_no_secrets(&auth, &out);
}

#[test]
fn a_revoked_refresh_token_pauses_the_mailbox_and_says_to_log_in_again() {
    let auth = AuthServer::start();
    // No server is reached: the token endpoint refuses first.
    let p = project(&auth, 9, "", "xoauth2");
    set_refresh_token(&p, "rt-revoked-0003");
    let expected = "mailbox 'sales': the provider refused its refresh token (invalid_grant: Token has been expired or revoked.); run `followup mailbox login sales`";
    let (code, out, _) = check(&p);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("FAIL oauth: {expected}")), "{out}");

    p.import_contacts(2);
    let out = p.run(&["run", "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mailbox paused"), "{err}");
    let status = p.ok(&["status"]);
    assert!(
        status.contains(&format!("mailbox sales PAUSED: {expected}")),
        "{status}"
    );
    let first = &p.counts()["first"];
    assert_eq!(first.get("failed").copied().unwrap_or(0), 0, "{first:?}");
    assert!(!status.contains("rt-revoked-0003") && !err.contains("rt-revoked-0003"));
}

#[test]
fn device_login_polls_until_agreed_and_stores_the_token_for_its_owner_only() {
    let auth = AuthServer::start();
    let p = project(&auth, 9, "", "xoauth2");
    let out = p.run(&["mailbox", "login", "sales"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "open http://127.0.0.1:{}/activate and enter the code WDJB-MJHT",
            auth.port
        )),
        "{text}"
    );
    // Pending and slow_down did not end it; the grant did.
    assert_eq!(
        auth.state().device_polls,
        ["authorization_pending", "slow_down", "granted"]
    );
    let file = p.path("secrets/sales.token");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        DEVICE_REFRESH
    );
    assert_mode_0600(&file);
    assert!(!text.contains(DEVICE_REFRESH), "{text}");
    // The stored token is the one followup then refreshes with.
    let (_, out, _) = check(&p);
    assert!(out.contains("ok   oauth: access token from"), "{out}");
}

fn assert_mode_0600(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
}

/// Where the provider has no device grant for mail (Google): the login URL goes to a
/// browser, which comes back to followup's listener on 127.0.0.1 with the code, or the
/// rep pastes the address it was sent to into the terminal; the code is exchanged with
/// its PKCE verifier and the refresh token stored, mode 0600. The terminal stays open
/// meanwhile (standard input is not closed): the login ends all the same.
#[test]
fn browser_login_takes_the_code_at_the_loopback_redirect_or_pasted() {
    let auth = AuthServer::start();
    let p = project_with(
        &auth,
        9,
        "",
        "xoauth2",
        &format!("auth_url = \"{}\"", auth.url("/auth")),
    );
    for paste in [false, true] {
        let _ = std::fs::remove_file(p.path("secrets/sales.token"));
        let mut child = p
            .cmd(&["mailbox", "login", "sales"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut terminal = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let prefix = auth.url("/auth?");
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.starts_with(&prefix))
            .expect("the login URL");
        let query = form(url.split_once('?').unwrap().1);
        assert_eq!(query["client_id"], CLIENT_ID);
        assert_eq!(query["scope"], "mail");
        assert_eq!(query["code_challenge_method"], "S256");
        let redirect = query["redirect_uri"].clone();
        assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
        {
            let mut s = auth.state();
            s.pkce_challenge = Some(query["code_challenge"].clone());
            s.redirect_uri = Some(redirect.clone());
        }
        let answer = format!("?code=code-1&state={}", query["state"]);
        if paste {
            writeln!(terminal, "{redirect}{answer}").unwrap();
        } else {
            // The browser, sent back by the provider.
            let addr = redirect.trim_start_matches("http://").trim_end_matches('/');
            let mut browser = TcpStream::connect(addr).unwrap();
            write!(browser, "GET /{answer} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut page = String::new();
            browser.read_to_string(&mut page).unwrap();
            assert!(page.contains("you can close this tab"), "{page}");
        }
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(child.wait().unwrap().success(), "{rest:?}");
        drop(terminal);
        let file = p.path("secrets/sales.token");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().trim(),
            BROWSER_REFRESH
        );
        assert_mode_0600(&file);
    }
}

/// The IMAP watcher meets a refused refresh token too (here before anything is sent):
/// the daemon pauses the mailbox with the same one line, and the watcher's line in
/// `status` says the same.
#[test]
fn a_revoked_refresh_token_met_by_the_watcher_pauses_the_mailbox() {
    let auth = AuthServer::start();
    let world = world(&auth.url("/introspect"));
    let imap = format!("imap = \"imap://127.0.0.1:{}\"\n", world.port("IMAP_PORT"));
    let p = project(&auth, world.port("SUBMISSION_PORT"), &imap, "xoauth2");
    set_refresh_token(&p, "rt-revoked-0005");
    // The database first, so that `status` never meets the daemon's migrations.
    p.ok(&["migrate"]);
    let daemon = p.daemon();
    let expected = "mailbox 'sales': the provider refused its refresh token (invalid_grant: Token has been expired or revoked.); run `followup mailbox login sales`";
    let start = std::time::Instant::now();
    let status = loop {
        let status = p.ok(&["status"]);
        if status.contains(&format!("mailbox sales PAUSED: {expected}"))
            && status.contains(&format!("watcher sales/INBOX: reconnecting ({expected})"))
        {
            break status;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{status}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.contains("rt-revoked-0005"), "{status}");
    assert!(!daemon.log_text().contains("rt-revoked-0005"));
    daemon.kill();
}

/// Secrets in followup.toml and unknown settings are refused by `check`, at their line.
#[test]
fn check_refuses_secrets_in_the_file_and_unknown_oauth_settings() {
    let auth = AuthServer::start();
    let p = project_with(
        &auth,
        9,
        "",
        "xoauth2",
        "device_url = \"https://example.com/device\", client_secret = \"s3cret-in-git\"",
    );
    let out = p.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("mailbox 'sales': secrets are never written in followup.toml (client_secret)"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret-in-git"),
        "the secret is masked: {err}"
    );

    let p = project_with(&auth, 9, "", "sasl-magic", "provider = \"yahoo\"");
    let err = String::from_utf8_lossy(&p.run(&["check"]).stderr).into_owned();
    assert!(err.contains("unknown OAuth provider 'yahoo'"), "{err}");
    assert!(err.contains("unknown SASL mechanism 'sasl-magic'"), "{err}");

    // No refresh token yet: a warning that says what to run.
    let p = project(&auth, 9, "", "xoauth2");
    let err = String::from_utf8_lossy(&p.run(&["check"]).stderr).into_owned();
    assert!(
        err.contains("warning: mailbox 'sales': no refresh token yet in")
            && err.contains("run `followup mailbox login sales`"),
        "{err}"
    );
}

/// A provider that rotates refresh tokens: the new one replaces the old in the token
/// file (still mode 0600), or, for a read-only systemd credential, is kept in memory
/// and used for the next refresh of the same process.
#[test]
fn rotated_refresh_tokens_replace_the_stored_one() {
    let auth = AuthServer::start();
    auth.state().rotate = true;
    let p = project(&auth, 9, "", "xoauth2");
    set_refresh_token(&p, GOOD_REFRESH);
    let (_, out, _) = check(&p);
    assert!(out.contains("ok   oauth"), "{out}");
    let file = p.path("secrets/sales.token");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        "rt-rotated-1"
    );
    assert_mode_0600(&file);
    // The old one is spent; the stored one works.
    let (_, out, _) = check(&p);
    assert!(out.contains("ok   oauth"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        "rt-rotated-2"
    );

    // A systemd credential: read from $CREDENTIALS_DIRECTORY, never written.
    let mut p = project(&auth, 9, "", "xoauth2");
    let config = std::fs::read_to_string(p.path("followup.toml"))
        .unwrap()
        .replace(
            "refresh_token_file = \"secrets/sales.token\"",
            "refresh_token_credential = \"sales-token\"",
        );
    p.write("followup.toml", &config);
    p.write("credentials/sales-token", "rt-rotated-2\n");
    let dir = p.path("credentials").to_str().unwrap().to_string();
    p.env.push(("CREDENTIALS_DIRECTORY".into(), dir));
    // Tokens within the refresh margin: the check refreshes twice (token, SMTP), the
    // second time with the token the first rotated to.
    auth.state().expires_in = 60;
    let (code, out, _) = check(&p);
    assert!(out.contains("ok   oauth"), "{code} {out}");
    assert!(
        !out.contains("invalid_grant"),
        "the rotated token was used: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("credentials/sales-token")).unwrap(),
        "rt-rotated-2\n"
    );
}

/// `mailbox check` serves password mailboxes too: a login that works, and one that the
/// server refuses, each on one line.
#[test]
fn mailbox_check_says_whether_a_password_login_works() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = crate::support::Smtp::start_with(
        &tmp.path().join("smtp"),
        "accept",
        &["--auth", "rep:s3cret-pw"],
    );
    let mut p = Project::new(
        Db::Sqlite,
        &Options {
            smtp_port: smtp.port,
            extra_mailbox: "user = \"rep\"\npassword_env = \"OAUTH_TEST_PASSWORD\"\n",
            ..Options::default()
        },
    );
    p.env = vec![("OAUTH_TEST_PASSWORD".into(), "s3cret-pw".into())];
    let (code, out, _) = check(&p);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "ok   smtp: smtp://127.0.0.1:{}: logged in as rep with a password",
            smtp.port
        )),
        "{out}"
    );
    assert!(out.contains("ok   imap: none configured"), "{out}");
    assert!(!out.contains("oauth"), "{out}");

    p.env = vec![("OAUTH_TEST_PASSWORD".into(), "wrong-pw".into())];
    let (code, out, _) = check(&p);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL smtp: login refused by 127.0.0.1:{}: 535",
            smtp.port
        )),
        "{out}"
    );
    assert!(
        !out.contains("wrong-pw") && !out.contains("s3cret-pw"),
        "{out}"
    );
}
