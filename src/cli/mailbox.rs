//! `followup mailbox login NAME` (the OAuth2 device login) and `followup mailbox check
//! NAME` (log in to SMTP and IMAP as the daemon would, one line per part).

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::{self, Mailbox};
use crate::mail::oauth::device;
use crate::mail::send::Sender;

#[derive(Subcommand, Debug)]
pub enum MailboxCommand {
    /// Log a mailbox in with OAuth2 (device code): prints a code to enter at the provider's page, then stores the refresh token
    Login {
        /// The mailbox's name ([mailboxes.NAME] in followup.toml)
        name: String,
    },
    /// Log in to the mailbox's SMTP and IMAP servers and say what works
    Check {
        /// The mailbox's name
        name: String,
    },
}

/// The mailbox named `name` of the configuration at `path`, secrets resolved; None
/// (after printing why) when it cannot be had.
fn mailbox(path: &Path, name: &str) -> Option<Mailbox> {
    let config = match config::load(path, true) {
        Ok((c, _)) => c,
        Err(d) => {
            super::print_diagnostics(&d);
            eprintln!(
                "followup: {} error(s) in the configuration (see `followup check`)",
                d.error_count()
            );
            return None;
        }
    };
    match config.mailboxes.get(name) {
        Some(m) => Some(m.clone()),
        None => {
            let known: Vec<&str> = config.mailboxes.keys().map(String::as_str).collect();
            eprintln!(
                "followup: no mailbox '{name}' (known: {})",
                known.join(", ")
            );
            None
        }
    }
}

pub(super) async fn run(path: &Path, command: MailboxCommand) -> anyhow::Result<ExitCode> {
    match command {
        MailboxCommand::Login { name } => login(path, &name).await,
        MailboxCommand::Check { name } => check(path, &name).await,
    }
}

async fn login(path: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let Some(m) = mailbox(path, name) else {
        return Ok(ExitCode::from(2));
    };
    let Some(tokens) = &m.oauth else {
        eprintln!(
            "followup: mailbox '{name}' does not use OAuth2 (auth = \"oauth2\" and an oauth table)"
        );
        return Ok(ExitCode::from(2));
    };
    let shown = |p: &device::Prompt| {
        // stdout, flushed: whoever runs this must see it before the wait starts.
        let mut out = std::io::stdout().lock();
        let _ = match p {
            device::Prompt::Device {
                verification_uri,
                user_code,
                complete_uri,
                expires_in,
            } => writeln!(
                out,
                "To let followup use mailbox '{name}', open {verification_uri} and enter the code {user_code}{}\nWaiting for you to agree (the code is good for {} minutes)...",
                complete_uri
                    .as_ref()
                    .map(|c| format!("\n(or open {c})"))
                    .unwrap_or_default(),
                expires_in.as_secs().div_ceil(60)
            ),
            device::Prompt::Browser { url, redirect } => writeln!(
                out,
                "To let followup use mailbox '{name}', open this address in a browser and agree:\n\n{url}\n\n\
                 The provider then sends the browser to {redirect}. If that page does not load (the browser is on another machine), paste its full address here and press Enter.",
            ),
        };
        let _ = out.flush();
    };
    match device::login(name, tokens.settings(), shown).await {
        Ok(file) => {
            out!(
                "Logged in: the refresh token is in {} (mode 0600). `followup mailbox check {name}` tries it; if the mailbox was paused, `followup resume --mailbox {name}`.",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("followup: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn check(path: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let Some(m) = mailbox(path, name) else {
        return Ok(ExitCode::from(2));
    };
    let mut failed = false;
    let mut line = |ok: bool, what: &str, text: &str| -> std::io::Result<()> {
        failed |= !ok;
        writeln!(
            std::io::stdout(),
            "{} {what}: {text}",
            if ok { "ok  " } else { "FAIL" }
        )
    };
    if let Some(tokens) = &m.oauth {
        match tokens.token().await {
            Ok(_) => line(
                true,
                "oauth",
                &format!(
                    "access token from {} ({})",
                    tokens.settings().token_url,
                    tokens.mechanism().name()
                ),
            )?,
            Err(e) => line(false, "oauth", &e.to_string())?,
        }
    }
    let sender = Sender::new(&m, &config::SendSettings::default());
    match sender.login_check().await {
        Ok(t) => line(true, "smtp", &t)?,
        Err(t) => line(false, "smtp", &t)?,
    }
    match &m.imap {
        None => line(true, "imap", "none configured (no reply detection)")?,
        Some(i) => match crate::mail::watch::connect(&m).await {
            Ok(mut session) => {
                let inbox = session.examine("INBOX").await;
                let _ = session.logout().await;
                match inbox {
                    Ok(b) => line(
                        true,
                        "imap",
                        &format!(
                            "{}:{}: logged in, INBOX has {} message(s)",
                            i.host, i.port, b.exists
                        ),
                    )?,
                    Err(e) => line(
                        false,
                        "imap",
                        &format!("{}:{}: logged in, but INBOX: {e}", i.host, i.port),
                    )?,
                }
            }
            Err(e) => line(false, "imap", &e.to_string())?,
        },
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
