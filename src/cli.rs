//! The command line: parse, load what the command needs, call one function per
//! subcommand. Results go to stdout, diagnostics to stderr.
//!
//! Exit codes: 0 done; 1 problems found (check errors, rejected CSV rows, unknown
//! contacts); 2 could not run (unreadable config, database down).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use chrono::Utc;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::app::status::{FunnelRow, StepRow};
use crate::config;
use crate::contacts;
use crate::diagnostic::Diagnostics;
use crate::mail::compose::{self, subject_for, Draft, Thread};
use crate::model::Contact;
use crate::project::Project;
use crate::schedule::step_due_explained;
use crate::scheduler::Scheduler;
use crate::store::Store;

mod helpers;

/// `println!` that returns a write error instead of panicking on it, so that a closed
/// pipe (`followup status | head`) ends the command quietly (see `main`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod mailbox;

#[derive(Parser, Debug)]
#[command(
    name = "followup",
    version,
    about = "Email sequences that stop when people answer"
)]
pub struct Cli {
    /// The project's configuration file [default: ./followup.toml]
    #[arg(long, short = 'c', global = true, env = "FOLLOWUP_CONFIG")]
    pub config: Option<PathBuf>,
    /// How log lines look on stderr (auto: journald style when not on a terminal)
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: crate::ops::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a starter project (config, a three-step sequence, templates, sample contacts)
    Init {
        /// The folder to write it into (created if missing)
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Overwrite existing starter files
        #[arg(long)]
        force: bool,
    },
    /// Validate config, sequences and templates; print every problem; exit 1 if any
    Check {
        /// Print the problems as JSON (file, line, column, severity, message)
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon
    Run {
        /// Send what is due now, then exit
        #[arg(long)]
        once: bool,
    },
    /// Apply database migrations (run does it too)
    Migrate {
        /// List the migrations that would run; change nothing
        #[arg(long)]
        check: bool,
    },
    /// Copy the SQLite database consistently, even while the daemon runs (PostgreSQL: pg_dump)
    Backup {
        /// The copy to write (must not exist)
        file: PathBuf,
    },
    /// Replace the SQLite database with a backup (the daemon must be stopped)
    Restore {
        /// A file `followup backup` wrote
        file: PathBuf,
    },
    /// Make the running daemon re-read config, sequences and templates (SIGHUP through its pid file)
    Reload,
    /// Import and inspect contacts
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Put contacts into a sequence (never twice, unless --again)
    Enroll {
        /// The sequence's name (its `name:` in sequences/)
        sequence: String,
        /// Contacts' email addresses, as imported
        #[arg(required = true)]
        emails: Vec<String>,
        /// Also enroll contacts whose earlier enrollment in it stopped or finished (it stays as history)
        #[arg(long)]
        again: bool,
    },
    /// Take contacts out of a sequence for good
    Unenroll {
        /// The sequence's name (its `name:` in sequences/)
        sequence: String,
        /// Contacts' email addresses, as imported
        #[arg(required = true)]
        emails: Vec<String>,
    },
    /// Pause contacts in a sequence
    Pause {
        /// The sequence's name (its `name:` in sequences/)
        sequence: String,
        /// Contacts' email addresses, as imported
        #[arg(required = true)]
        emails: Vec<String>,
    },
    /// Resume paused or held contacts, or a mailbox paused for bouncing too much
    Resume {
        /// The sequence's name
        #[arg(required_unless_present = "mailbox")]
        sequence: Option<String>,
        /// Contacts' email addresses
        emails: Vec<String>,
        /// Lift a mailbox's pause
        #[arg(long, conflicts_with_all = ["sequence", "emails"])]
        mailbox: Option<String>,
    },
    /// Never mail an address (or @domain) again
    Suppress {
        /// An email address, or @domain for every address there
        target: String,
    },
    /// Take an address (or @domain) off the suppression list
    Unsuppress {
        /// An email address, or @domain
        target: String,
    },
    /// Show what the reply watcher would decide for a message
    Classify {
        /// A message as a file (.eml, RFC 5322)
        file: PathBuf,
        /// Print the classification as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the exact message a step would send
    Preview {
        /// The sequence's name
        sequence: String,
        /// The step's id (default: the first step)
        #[arg(long)]
        step: Option<String>,
        /// Render for this contact (from the database or the contacts CSV; default: the CSV's first)
        #[arg(long)]
        contact: Option<String>,
    },
    /// Print when each step would be sent
    Simulate {
        /// The sequence's name
        sequence: String,
        /// Simulate for this contact's time zone and fields (default: the CSV's first)
        #[arg(long)]
        contact: Option<String>,
    },
    /// Per-step counts
    Status {
        /// Only this sequence
        sequence: Option<String>,
        /// Print the same report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Messages that may or may not have been sent (the daemon died mid-send)
    #[command(name = "in-doubt", subcommand)]
    InDoubt(InDoubtCommand),
    /// Webhook deliveries
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// A mailbox's login: OAuth2 device login, and a check of its SMTP and IMAP logins
    #[command(subcommand)]
    Mailbox(mailbox::MailboxCommand),
}

#[derive(Subcommand, Debug)]
pub enum ContactsCommand {
    /// Import a CSV (header row, an `email` column)
    Import {
        /// The CSV file
        file: PathBuf,
        /// Also enroll the imported contacts in this sequence
        #[arg(long)]
        sequence: Option<String>,
        /// With --sequence: also enroll contacts whose earlier enrollment in it stopped or finished
        #[arg(long, requires = "sequence")]
        again: bool,
        /// Show what would happen; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// One contact's fields and timeline
    Show {
        /// The contact's email address
        email: String,
        /// Print the timeline as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Queue again every event since a date, for every webhook or one
    Replay {
        /// From this date (YYYY-MM-DD, UTC) or time (RFC 3339)
        #[arg(long)]
        since: String,
        /// Only this webhook (its name in followup.toml)
        #[arg(long)]
        webhook: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum InDoubtCommand {
    /// List them
    List,
    /// Send it again (same Message-ID, so a client that got the first copy can tell)
    Release {
        /// Its Message-ID, as `in-doubt list` prints it (with the angle brackets)
        message_id: String,
    },
    /// Count it as delivered and move on to the next step
    Drop {
        /// Its Message-ID, as `in-doubt list` prints it
        message_id: String,
    },
}

/// Entry point: runs the command, prints errors as `followup: ...`, maps exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::ops::logging::init(matches!(cli.command, Command::Run { .. }), cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("followup: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`followup status | head`) is not an error.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("followup: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_diagnostics(d: &Diagnostics) {
    let mut err = std::io::stderr().lock();
    for item in &d.items {
        let error = item.severity == crate::diagnostic::Severity::Error;
        let _ = write!(
            err,
            "{}",
            crate::ops::logging::block(&item.to_string(), error)
        );
    }
}

/// Loads the project; on errors prints them all and returns None (the command could
/// not run: exit 2). `for_run`: the secrets must resolve, as `check` demands, and the
/// warnings `check` prints are printed once; other commands keep quiet about them.
fn load_project(config: &Path, for_run: bool) -> Option<Project> {
    match Project::load(config, for_run) {
        Ok((p, warnings)) => {
            if for_run {
                print_diagnostics(&warnings);
            }
            Some(p)
        }
        Err(mut d) => {
            // Only what stops the command; `check` shows the warnings as well.
            if !for_run {
                d.items
                    .retain(|i| i.severity == crate::diagnostic::Severity::Error);
            }
            print_diagnostics(&d);
            eprintln!(
                "followup: {} error(s) in the project; nothing was changed (see `followup check`)",
                d.error_count()
            );
            None
        }
    }
}

async fn open_store(p: &Project) -> anyhow::Result<Store> {
    Store::open(&p.config.database)
        .await
        .context("opening the database")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_path = config::locate(cli.config.as_deref());
    match cli.command {
        Command::Init { dir, force } => cmd_init(&dir, force).await,
        Command::Check { json } => Ok(cmd_check(&config_path, json)),
        Command::Run { once } => {
            let Some(p) = load_project(&config_path, true) else {
                return Ok(ExitCode::from(2));
            };
            let store = open_store(&p).await?;
            let project = Arc::new(p);
            if once {
                let r = Scheduler::new(project.clone(), store.clone())
                    .run_once()
                    .await?;
                if !project.config.webhooks.is_empty() {
                    let client = crate::webhook::Client::new()?;
                    let w = crate::app::webhooks::round(&store, &project.config.webhooks, &client)
                        .await?;
                    if w.failed > 0 {
                        eprintln!(
                            "webhooks: {} delivered, {} failed (retried by the daemon)",
                            w.delivered, w.failed
                        );
                    }
                }
                out!(
                    "sent {}, deferred {}, failed {}, held {}",
                    r.sent,
                    r.deferred,
                    r.failed,
                    r.held
                );
                store.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            let token = CancellationToken::new();
            crate::daemon::cancel_on_signals(token.clone());
            crate::daemon::run(project, store, token, config_path.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload => Ok(crate::ops::reload::command(&config_path)),
        Command::Migrate { check: true } | Command::Backup { .. } | Command::Restore { .. } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            let db = &p.config.database;
            match cli.command {
                Command::Backup { file } => crate::ops::backup::backup(db, &file).await,
                Command::Restore { file } => {
                    crate::ops::backup::restore(db, &config_path, &file).await
                }
                _ => crate::ops::backup::migrate_check(db).await,
            }
        }
        Command::Migrate { check: false } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            let store = open_store(&p).await?;
            store.close().await;
            out!("database is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Contacts(ContactsCommand::Import {
            file,
            sequence,
            again,
            dry_run,
        }) => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            let enroll = sequence.as_deref().map(|s| (s, again));
            cmd_import(&p, &file, enroll, dry_run).await
        }
        Command::Contacts(ContactsCommand::Show { email, json }) => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            cmd_show(&p, &email, json).await
        }
        Command::Enroll {
            sequence,
            emails,
            again,
        } => with_contacts(&config_path, &sequence, &emails, Action::Enroll { again }).await,
        Command::Unenroll { sequence, emails } => {
            with_contacts(&config_path, &sequence, &emails, Action::Unenroll).await
        }
        Command::Pause { sequence, emails } => {
            with_contacts(&config_path, &sequence, &emails, Action::Pause).await
        }
        Command::Resume {
            mailbox: Some(m), ..
        } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            if !p.config.mailboxes.contains_key(&m) {
                bail!("unknown mailbox '{m}'");
            }
            let store = open_store(&p).await?;
            let lifted = store.resume_mailbox(&m).await?;
            store.close().await;
            out!("{m}: {}", if lifted { "resumed" } else { "was not paused" });
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume {
            sequence, emails, ..
        } => {
            let sequence = sequence.unwrap_or_default();
            if emails.is_empty() {
                bail!("name the contacts to resume: followup resume {sequence} EMAIL...");
            }
            with_contacts(&config_path, &sequence, &emails, Action::Resume).await
        }
        Command::Suppress { target } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            let pattern = suppression_pattern(&target)?;
            let store = open_store(&p).await?;
            let stopped = crate::app::operate::suppress(
                &store,
                &pattern,
                "suppressed by operator",
                Utc::now(),
            )
            .await?;
            store.close().await;
            out!("{pattern}: suppressed; {stopped} enrollment(s) stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Unsuppress { target } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            let pattern = suppression_pattern(&target)?;
            let store = open_store(&p).await?;
            let removed = store.unsuppress(&pattern).await?;
            store.close().await;
            if removed {
                out!("{pattern}: no longer suppressed (stopped enrollments stay stopped; enroll again if meant)");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{pattern}: was not suppressed");
                Ok(ExitCode::from(1))
            }
        }
        Command::Classify { file, json } => {
            let raw =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let c = crate::mail::classify::classify(&raw);
            if json {
                out!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                out!("{}: {}", crate::inbound::kind_name(&c.kind), c.reason);
                if let Some(i) = &c.intent {
                    out!(
                        "intent: {}",
                        serde_json::to_value(i)?.as_str().unwrap_or("")
                    );
                }
                if !c.recipients.is_empty() {
                    out!("recipients: {}", c.recipients.join(", "));
                }
                if let Some(p) = c.permanent {
                    out!("permanent: {p}");
                }
                if let Some(r) = c.bounce_reason {
                    out!("bounce reason: {}", r.as_str());
                }
                if let Some(m) = c.mta {
                    out!("mta: {}", m.as_str());
                }
                if let Some(d) = c.return_date {
                    out!("back on: {d}");
                }
                if !c.references.is_empty() {
                    out!("refers to: {}", c.references.join(" "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preview {
            sequence,
            step,
            contact,
        } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            cmd_preview(&p, &sequence, step.as_deref(), contact.as_deref()).await
        }
        Command::Simulate { sequence, contact } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            cmd_simulate(&p, &sequence, contact.as_deref()).await
        }
        Command::Status { sequence, json } => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            cmd_status(&p, sequence.as_deref(), json).await
        }
        Command::Webhooks(WebhooksCommand::Replay { since, webhook }) => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            let since = helpers::parse_since(&since)?;
            let hooks: Vec<_> = p
                .config
                .webhooks
                .iter()
                .filter(|w| webhook.as_deref().is_none_or(|n| n == w.name))
                .cloned()
                .collect();
            if hooks.is_empty() {
                match webhook {
                    Some(n) => bail!("no webhook named '{n}' in followup.toml"),
                    None => bail!("no [[webhooks]] in followup.toml"),
                }
            }
            let store = open_store(&p).await?;
            let n = crate::app::webhooks::replay(&store, &hooks, since, Utc::now()).await?;
            store.close().await;
            out!("{n} deliveries queued; the running daemon sends them");
            Ok(ExitCode::SUCCESS)
        }
        Command::Mailbox(c) => mailbox::run(&config_path, c).await,
        Command::InDoubt(c) => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            cmd_in_doubt(&p, c).await
        }
    }
}

async fn cmd_init(dir: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let written = crate::init::write(dir, force)?;
    for w in &written {
        out!("wrote {}", w.display());
    }
    // Enroll the sample contacts, so that `followup run` sends at once.
    let config_path = dir.join(config::DEFAULT_FILE);
    let Some(p) = load_project(&config_path, false) else {
        return Ok(ExitCode::from(2));
    };
    let code = cmd_import(&p, &dir.join("contacts.csv"), Some(("intro", false)), false).await?;
    let cfg = if dir == Path::new(".") {
        String::new()
    } else {
        format!(" --config {}", config_path.display())
    };
    out!(
        "\nnext: followup{cfg} run     (mails appear in {} as .eml files)",
        dir.join("outbox").display()
    );
    Ok(code)
}

fn cmd_check(config_path: &Path, json: bool) -> ExitCode {
    // With the secrets, as `run` loads it: what `run` would refuse, `check` reports.
    let (diags, mut ok) = match Project::load(config_path, true) {
        Ok((p, w)) => (check_database_files(&p.config, config_path, w), true),
        Err(d) => match config::load(config_path, false) {
            // The project has other errors; its database's folder is still checked.
            Ok(config) => (check_database_files(&config.0, config_path, d), false),
            Err(_) => (d, false),
        },
    };
    ok &= !diags.has_errors();
    if json {
        let items: Vec<Value> = diags
            .items
            .iter()
            .map(|d| {
                json!({
                    "severity": d.severity,
                    "path": d.path.display().to_string(),
                    "line": d.location.as_ref().map(|l| l.line),
                    "column": d.location.as_ref().map(|l| l.column),
                    "message": d.message,
                    "help": d.help,
                })
            })
            .collect();
        // A closed pipe ends it quietly: the exit code says the rest.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&json!({ "ok": ok, "problems": items }))
                .unwrap_or_default()
        );
    } else {
        print_diagnostics(&diags);
        if ok {
            let _ = writeln!(std::io::stdout(), "ok: {} warning(s)", diags.items.len());
        } else {
            eprintln!("{} error(s)", diags.error_count());
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Adds an error when a daemon could not keep its lock file and wire journal beside a
/// SQLite database (`run` would stop on it).
fn check_database_files(
    config: &config::Config,
    config_path: &Path,
    mut diags: Diagnostics,
) -> Diagnostics {
    if let Err(e) = crate::store::check_nodes_dir(&config.database) {
        diags.push(
            crate::diagnostic::Diagnostic::error(config_path, e.to_string()).with_help(
                "a daemon on a SQLite database keeps a lock file and a journal in the folder \
                 FILE.nodes beside it: make it writable by the user followup runs as",
            ),
        );
    }
    diags
}

/// `enroll`: the sequence and whether to enroll again those who ended it.
async fn cmd_import(
    p: &Project,
    file: &Path,
    enroll: Option<(&str, bool)>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let seq = match enroll {
        Some((name, _)) => Some(helpers::sequence(p, name)?),
        None => None,
    };
    let again = enroll.is_some_and(|(_, again)| again);
    let parsed = contacts::read_csv(file, &p.config.limits)
        .with_context(|| format!("reading {}", file.display()))?;
    for r in &parsed.rejected {
        eprintln!("{}: {r}", file.display());
    }
    for m in &parsed.merged {
        eprintln!("{}: {m}", file.display());
    }
    if dry_run {
        let store = Store::connect(&p.config.database).await.ok();
        let new = crate::app::import::dry_run(store.as_ref(), &parsed)
            .await
            .unwrap_or(parsed.contacts.len());
        out!(
            "dry run: {} contact(s) would be imported ({} new, {} updated), {} row(s) rejected{}",
            parsed.contacts.len(),
            new,
            parsed.contacts.len() - new,
            parsed.rejected.len(),
            seq.map(|s| format!(", and enrolled in '{}'", s.name))
                .unwrap_or_default()
        );
        return Ok(if parsed.rejected.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let store = open_store(p).await?;
    let r = crate::app::import::import(
        p,
        &store,
        &parsed,
        seq.map(|s| (s, again)),
        &mut helpers::Bar::new(),
        Utc::now(),
    )
    .await?;
    store.close().await;
    out!(
        "imported {} contact(s): {} new, {} updated, {} unchanged; {} row(s) rejected",
        r.stored,
        r.created,
        r.updated,
        r.unchanged(),
        parsed.rejected.len()
    );
    if r.retried > 0 {
        out!(
            "{} held enrollment(s) will be tried again with the new fields",
            r.retried
        );
    }
    if let Some((name, e)) = &r.enrolled {
        out!(
            "enrolled {} in '{name}' ({} already in it)",
            e.enrolled,
            e.already
        );
        helpers::print_not_again_summary(e);
        for s in &e.suppressed {
            eprintln!("{s}: suppressed, not enrolled");
        }
    }
    Ok(if parsed.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// An address (normalised) or `@domain` (lower-cased).
fn suppression_pattern(target: &str) -> anyhow::Result<String> {
    match target.trim().strip_prefix('@') {
        Some(domain) if domain.contains('.') && !domain.contains('@') => {
            Ok(format!("@{}", domain.to_lowercase()))
        }
        Some(_) => bail!("'{target}' is not a domain: write @example.com"),
        None => contacts::normalise_email(target).map_err(anyhow::Error::msg),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Enroll { again: bool },
    Unenroll,
    Pause,
    Resume,
}

async fn with_contacts(
    config_path: &Path,
    sequence: &str,
    emails: &[String],
    action: Action,
) -> anyhow::Result<ExitCode> {
    use crate::app::enroll::{self, Operator};
    let Some(p) = load_project(config_path, false) else {
        return Ok(ExitCode::from(2));
    };
    let seq = helpers::sequence(&p, sequence)?;
    let store = open_store(&p).await?;
    let now = Utc::now();
    let op = match action {
        Action::Enroll { again } => {
            let r = enroll::enroll_addresses(&p, &store, seq, emails, again, now).await?;
            store.close().await;
            for (e, why) in &r.invalid {
                eprintln!("{e}: {why}");
            }
            for e in &r.unknown {
                eprintln!(
                    "{e}: no such contact (import it first: followup contacts import FILE.csv)"
                );
            }
            out!(
                "enrolled {} in '{}' ({} already in it)",
                r.enrolled.enrolled,
                seq.name,
                r.enrolled.already
            );
            // Each one left out says why; nothing done for it is a problem (exit 1).
            for n in &r.enrolled.not_again {
                eprintln!("{n}");
            }
            for s in &r.enrolled.suppressed {
                eprintln!("{s}: suppressed, not enrolled");
            }
            return Ok(if r.problems() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Action::Unenroll => Operator::Unenroll,
        Action::Pause => Operator::Pause,
        Action::Resume => Operator::Resume,
    };
    let done = enroll::operate(&p, &store, seq, emails, op, now).await?;
    store.close().await;
    let mut problems = 0;
    for d in &done {
        if d.is_problem() {
            eprintln!("{d}");
            problems += 1;
        } else {
            out!("{d}");
        }
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The contact a preview or simulation is for: stored, else from the project's CSV,
/// else the CSV's first row, else a placeholder with only an address.
async fn sample_contact(p: &Project, email: Option<&str>) -> anyhow::Result<Contact> {
    if let Some(email) = email {
        let email = contacts::normalise_email(email).map_err(anyhow::Error::msg)?;
        if let Ok(store) = Store::connect(&p.config.database).await {
            if let Ok(Some(c)) = store.contact(&email).await {
                return Ok(c);
            }
        }
        if let Some(csv) = &p.config.contacts {
            if let Ok(parsed) = contacts::read_csv(csv, &p.config.limits) {
                if let Some(c) = parsed.contacts.into_iter().find(|c| c.email == email) {
                    return Ok(from_new(c));
                }
            }
        }
        bail!("no contact {email} in the database or the contacts CSV");
    }
    if let Some(csv) = &p.config.contacts {
        if let Ok(parsed) = contacts::read_csv(csv, &p.config.limits) {
            if let Some(c) = parsed.contacts.into_iter().next() {
                return Ok(from_new(c));
            }
        }
    }
    Ok(from_new(crate::model::NewContact {
        email: "someone@example.com".into(),
        name: None,
        fields: Default::default(),
        timezone: None,
        country: None,
    }))
}

fn from_new(c: crate::model::NewContact) -> Contact {
    Contact {
        id: 0,
        email: c.email,
        name: c.name,
        fields: c.fields,
        timezone: c.timezone,
        country: c.country,
        stage: "lead".into(),
        owner_mailbox: None,
        suppressed_reason: None,
    }
}

async fn cmd_preview(
    p: &Project,
    sequence: &str,
    step: Option<&str>,
    contact: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let seq = helpers::sequence(p, sequence)?;
    let (index, step) = match step {
        Some(id) => seq.step(id).with_context(|| {
            format!(
                "no step '{id}' in '{sequence}' (steps: {})",
                seq.steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
        None => (0, seq.steps.first().context("the sequence has no steps")?),
    };
    let c = sample_contact(p, contact).await?;
    let mailbox_name = c
        .owner_mailbox
        .clone()
        .filter(|m| seq.senders.contains(m))
        .or_else(|| seq.senders.first().cloned());
    let mailbox = mailbox_name
        .and_then(|m| p.config.mailboxes.get(&m))
        .context("the sequence has no mailbox")?;
    let links = crate::track::Links::new(p.config.http.as_ref());
    let key = crate::track::token::new_key();
    let fields = crate::scheduler::send_fields(p, &links, &c, mailbox, key);
    let (variant, template) = step.choose(&seq.name, &c.email);
    if let Some(v) = variant {
        eprintln!(
            "{}: step '{}', variant '{v}' ({template})",
            c.email, step.id
        );
    }
    let rendered = p
        .templates
        .render(template, &fields)
        .map_err(|e| anyhow::anyhow!("{}: {e}", c.email))?;
    let thread = if step.thread && index > 0 {
        let first = &seq.steps[0];
        let root = p
            .templates
            .render(first.choose(&seq.name, &c.email).1, &fields)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Some(Thread {
            root_message_id: format!("<first-step@{}>", mailbox.domain()),
            root_subject: root.subject,
            earlier: Vec::new(),
        })
    } else {
        None
    };
    let subject = subject_for(&rendered.subject, thread.as_ref());
    let tracked = links.track(seq, key, &mailbox.from, &rendered.html);
    let rendered = crate::template::Rendered {
        subject,
        text: rendered.text,
        html: tracked.html,
    };
    let message_id = compose::new_message_id(mailbox.domain());
    let msg = compose::compose(&Draft {
        from: &mailbox.from,
        to_email: &c.email,
        to_name: c.name.as_deref(),
        message_id: &message_id,
        date: std::time::SystemTime::now(),
        rendered: &rendered,
        thread: thread.as_ref(),
        list_unsubscribe: tracked.list_unsubscribe.as_deref(),
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(&msg.formatted())?;
    Ok(ExitCode::SUCCESS)
}

async fn cmd_simulate(
    p: &Project,
    sequence: &str,
    contact: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let seq = helpers::sequence(p, sequence)?;
    let c = sample_contact(p, contact).await?;
    let (window, tz, holidays) = p.contact_schedule(seq, &c);
    let now = Utc::now();
    out!(
        "{} ({}), enrolled now; times in the contact's zone and UTC",
        c.email,
        tz
    );
    out!("{:<16} {:<26} {:<21} why later", "step", "local", "UTC");
    let mut at = now;
    for (i, step) in seq.steps.iter().enumerate() {
        let base = if i == 0 { now } else { at };
        match step_due_explained(base, step.wait, &window, tz, &holidays) {
            Some(mut due) => {
                if i == 0 {
                    // Today's sends of the mailbox are known; later days' are not.
                    helpers::mailbox_pacing(p, seq, &c, &mut due).await;
                }
                out!(
                    "{:<16} {:<26} {:<21} {}",
                    step.id,
                    due.at.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z"),
                    due.at.format("%Y-%m-%d %H:%M UTC"),
                    helpers::why_moved(p, &c, &due.moved)
                );
                at = due.at;
            }
            None => {
                out!("{:<16} never: the window never opens", step.id);
                break;
            }
        }
    }
    out!("(other contacts due first can move sends later within a mailbox's daily limit)");
    Ok(ExitCode::SUCCESS)
}

/// The funnel table: per step and variant, people first, then all hits.
fn print_funnel(out: &mut impl std::io::Write, rows: &[StepRow]) -> std::io::Result<()> {
    const HEAD: [&str; 12] = [
        "sent", "opened", "rate", "all", "clicked", "rate", "all", "replied", "rate", "bounced",
        "unsub", "skipped",
    ];
    let pct = |r: f64| format!("{:.1}%", r * 100.0);
    let line = |out: &mut dyn std::io::Write, label: &str, f: &FunnelRow, skipped: String| {
        let cells = [
            f.counts.sent.to_string(),
            f.counts.opened_human.to_string(),
            pct(f.rates.opened_human),
            f.counts.opened_total.to_string(),
            f.counts.clicked_human.to_string(),
            pct(f.rates.clicked_human),
            f.counts.clicked_total.to_string(),
            f.counts.replied.to_string(),
            pct(f.rates.replied),
            f.counts.bounced.to_string(),
            f.counts.unsubscribed.to_string(),
            skipped,
        ];
        write!(out, "  {label:<16}")?;
        for (c, h) in cells.iter().zip(HEAD) {
            write!(out, " {c:>w$}", w = h.len().max(6))?;
        }
        writeln!(out)
    };
    if rows
        .iter()
        .all(|r| r.funnel.counts.sent == 0 && r.skipped == 0)
    {
        return Ok(());
    }
    write!(out, "  {:<16}", "funnel")?;
    for h in HEAD {
        write!(out, " {h:>w$}", w = h.len().max(6))?;
    }
    writeln!(out)?;
    for r in rows {
        line(out, &r.step, &r.funnel, r.skipped.to_string())?;
        for v in &r.variants {
            line(
                out,
                &format!("  variant {}", v.counts.variant.as_deref().unwrap_or("")),
                v,
                String::new(),
            )?;
        }
        for l in &r.links {
            writeln!(
                out,
                "    {}: {} clicked by {} people ({} with machines)",
                r.step, l.url, l.clicked_human, l.clicked_total
            )?;
        }
    }
    writeln!(
        out,
        "  (opened, clicked: people, unique per mail; all: with image proxies and link scanners)"
    )
}

async fn cmd_status(
    p: &Project,
    sequence: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(s) = sequence {
        helpers::sequence(p, s)?;
    }
    let store = open_store(p).await?;
    let report = crate::app::status::report(p, &store, sequence).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for seq in &report.sequences {
        writeln!(out, "{}", seq.sequence)?;
        type Column = (&'static str, fn(&StepRow) -> i64);
        let cols: [Column; 14] = [
            ("scheduled", |r| r.scheduled),
            ("sending", |r| r.sending),
            ("sent", |r| r.sent),
            ("deferred", |r| r.deferred),
            ("failed", |r| r.failed),
            ("in_doubt", |r| r.in_doubt),
            ("held", |r| r.held),
            ("paused", |r| r.paused),
            ("stopped", |r| r.stopped),
            ("finished", |r| r.finished),
            ("replied", |r| r.replied),
            ("auto_replied", |r| r.auto_replied),
            ("bounced", |r| r.bounced),
            ("unsubscribed", |r| r.unsubscribed),
        ];
        write!(out, "  {:<16}", "step")?;
        for (c, _) in cols {
            write!(out, " {:>w$}", c.replace('_', " "), w = c.len().max(7))?;
        }
        writeln!(out)?;
        for r in &seq.steps {
            write!(out, "  {:<16}", r.step)?;
            for (c, value) in cols {
                write!(out, " {:>w$}", value(r), w = c.len().max(7))?;
            }
            writeln!(out)?;
        }
        print_funnel(&mut out, &seq.steps)?;
        if !seq.machine_hits.is_empty() {
            let parts: Vec<String> = seq
                .machine_hits
                .iter()
                .map(|m| format!("{} {} x{}", m.kind, m.reason, m.count))
                .collect();
            writeln!(
                out,
                "  machine hits (counted in 'all' only): {}",
                parts.join(", ")
            )?;
        }
        for r in &seq.reasons {
            writeln!(out, "  {} x{}: {}", r.state, r.count, r.reason)?;
        }
        writeln!(out)?;
    }
    for w in &report.watchers {
        writeln!(
            out,
            "watcher {}/{}: {}{}",
            w.mailbox,
            w.folder,
            w.state,
            w.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        )?;
    }
    for m in &report.paused_mailboxes {
        writeln!(out, "mailbox {} PAUSED: {}", m.mailbox, m.reason)?;
    }
    for w in &report.webhooks {
        writeln!(
            out,
            "webhook {}: {} delivered, {} pending{}, {} given up{}",
            w.webhook,
            w.delivered,
            w.pending,
            w.oldest_pending
                .map(|t| format!(" (oldest queued {})", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default(),
            w.failed,
            w.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        )?;
    }
    for a in &report.set_aside {
        writeln!(
            out,
            "set aside: {}/{} UID {} (UIDVALIDITY {}), failed {} times, last: {}",
            a.mailbox, a.folder, a.uid, a.uidvalidity, a.attempts, a.error
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_show(p: &Project, email: &str, json: bool) -> anyhow::Result<ExitCode> {
    let email = contacts::normalise_email(email).map_err(anyhow::Error::msg)?;
    let store = open_store(p).await?;
    let timeline = crate::app::timeline::of(&store, &email).await?;
    store.close().await;
    let Some(t) = timeline else {
        eprintln!("{email}: no such contact");
        return Ok(ExitCode::from(1));
    };
    if json {
        out!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{}{}",
        t.email,
        t.name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    out!(
        "  stage: {}  owner: {}",
        t.stage,
        t.owner.as_deref().unwrap_or("-")
    );
    if let Some(r) = &t.suppressed {
        out!("  suppressed: {r}");
    }
    for (k, v) in &t.fields {
        out!("  {k}: {}", v.as_str().unwrap_or(&v.to_string()));
    }
    out!("timeline:");
    let tz = t.zone(p.config.timezone);
    for e in &t.events {
        let when = e.at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z");
        out!("  {when}  {:<12} {}", e.kind, e.describe());
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_in_doubt(p: &Project, c: InDoubtCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(p).await?;
    let list = store.in_doubt().await?;
    let code = match c {
        InDoubtCommand::List => {
            if list.is_empty() {
                out!("no messages in doubt");
            }
            for d in &list {
                out!(
                    "{}  {}  {}/{}  via {}  since {}",
                    d.message_id,
                    d.email,
                    d.sequence,
                    d.step_id,
                    d.mailbox,
                    d.since.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            ExitCode::SUCCESS
        }
        InDoubtCommand::Release { message_id } | InDoubtCommand::Drop { message_id }
            if !list.iter().any(|d| d.message_id == message_id) =>
        {
            eprintln!("{message_id}: not in doubt (see `followup in-doubt list`)");
            ExitCode::from(1)
        }
        InDoubtCommand::Release { message_id } => {
            let d = list
                .iter()
                .find(|d| d.message_id == message_id)
                .context("listed above")?;
            crate::app::doubt::release(&store, d, "operator", Utc::now()).await?;
            out!("{message_id}: will be sent again (same Message-ID)");
            ExitCode::SUCCESS
        }
        InDoubtCommand::Drop { message_id } => {
            let d = list
                .iter()
                .find(|d| d.message_id == message_id)
                .context("listed above")?;
            crate::app::doubt::settle_as_sent(
                p,
                &store,
                d,
                "counted as sent by operator",
                Utc::now(),
            )
            .await?;
            out!("{message_id}: counted as sent; the next step is scheduled");
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}
