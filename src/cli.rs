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
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::contacts;
use crate::diagnostic::Diagnostics;
use crate::mail::compose::{self, subject_for, Draft, Thread};
use crate::model::{Contact, Enrollment};
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
                let r = Scheduler::new(project, store.clone()).run_once().await?;
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
        Command::Contacts(ContactsCommand::Show { email }) => {
            let Some(p) = load_project(&config_path, false) else {
                return Ok(ExitCode::from(2));
            };
            cmd_show(&p, &email).await
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
        let mut new = 0;
        for c in &parsed.contacts {
            let exists = match &store {
                Some(s) => s.contact(&c.email).await.ok().flatten().is_some(),
                None => false,
            };
            if !exists {
                new += 1;
            }
        }
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
    let now = Utc::now();
    let bar = helpers::progress(parsed.contacts.len(), "importing");
    let mut upserted = Vec::with_capacity(parsed.contacts.len());
    for slice in parsed.contacts.chunks(helpers::PROGRESS_STEP) {
        upserted.extend(store.upsert_contacts(slice, now).await?);
        bar.inc(slice.len() as u64);
    }
    bar.finish_and_clear();
    let created = upserted.iter().filter(|u| u.created).count();
    let changed: Vec<i64> = upserted
        .iter()
        .filter(|u| u.changed && !u.created)
        .map(|u| u.id)
        .collect();
    let retried = crate::app::operate::fields_changed(&store, &changed, now).await?;
    out!(
        "imported {} contact(s): {} new, {} updated, {} unchanged; {} row(s) rejected",
        upserted.len(),
        created,
        changed.len(),
        upserted.len() - created - changed.len(),
        parsed.rejected.len()
    );
    if retried > 0 {
        out!("{retried} held enrollment(s) will be tried again with the new fields");
    }
    if let Some(seq) = seq {
        let emails: Vec<String> = upserted.iter().map(|u| u.email.clone()).collect();
        let stored = store.contacts_by_email(&emails).await?;
        let bar = helpers::progress(stored.len(), "enrolling");
        let mut r = contacts::Enrolled::default();
        for slice in stored.chunks(helpers::PROGRESS_STEP) {
            r.add(contacts::enroll(p, &store, seq, slice, again, now).await?);
            bar.inc(slice.len() as u64);
        }
        bar.finish_and_clear();
        out!(
            "enrolled {} in '{}' ({} already in it)",
            r.enrolled,
            seq.name,
            r.already
        );
        helpers::print_not_again_summary(&r);
        for s in &r.suppressed {
            eprintln!("{s}: suppressed, not enrolled");
        }
    }
    store.close().await;
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
    let Some(p) = load_project(config_path, false) else {
        return Ok(ExitCode::from(2));
    };
    let seq = helpers::sequence(&p, sequence)?;
    let store = open_store(&p).await?;
    let now = Utc::now();
    let mut problems = 0;
    let mut normalised = Vec::new();
    for e in emails {
        match contacts::normalise_email(e) {
            Ok(n) => normalised.push(n),
            Err(msg) => {
                eprintln!("{e}: {msg}");
                problems += 1;
            }
        }
    }
    if let Action::Enroll { again } = action {
        let found = store.contacts_by_email(&normalised).await?;
        for e in &normalised {
            if !found.iter().any(|c| &c.email == e) {
                eprintln!(
                    "{e}: no such contact (import it first: followup contacts import FILE.csv)"
                );
                problems += 1;
            }
        }
        let r = contacts::enroll(&p, &store, seq, &found, again, now).await?;
        out!(
            "enrolled {} in '{}' ({} already in it)",
            r.enrolled,
            seq.name,
            r.already
        );
        // Each one left out says why; nothing done for it is a problem (exit 1).
        for n in &r.not_again {
            eprintln!("{n}");
            problems += 1;
        }
        for s in &r.suppressed {
            eprintln!("{s}: suppressed, not enrolled");
            problems += 1;
        }
    } else {
        let mut updates = Vec::new();
        let mut events = Vec::new();
        for email in &normalised {
            let Some(e) = store.enrollment(sequence, email).await? else {
                eprintln!("{email}: not in '{sequence}'");
                problems += 1;
                continue;
            };
            match change(&p, seq, &store, &e, action, now).await? {
                Ok(t) => {
                    out!("{email}: {} -> {}", e.state, t.enrollment.state);
                    updates.push(t.enrollment);
                    events.extend(t.events);
                }
                Err(msg) => {
                    eprintln!("{email}: {msg}");
                    problems += 1;
                }
            }
        }
        store.apply(&updates, &events, now).await?;
    }
    store.close().await;
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The change an operator command makes to one enrollment, as the engine decides it.
async fn change(
    p: &Project,
    seq: &crate::sequence::Sequence,
    store: &Store,
    e: &Enrollment,
    action: Action,
    now: DateTime<Utc>,
) -> anyhow::Result<Result<crate::engine::Transition, crate::engine::Refusal>> {
    use crate::engine::{self, Command, Context, Input};
    let command = match action {
        Action::Unenroll => Command::Unenroll,
        Action::Pause => Command::Pause,
        Action::Resume => Command::Resume {
            suppressed: store.is_suppressed(&e.email).await?,
        },
        Action::Enroll { .. } => bail!("internal: enroll is not a change"),
    };
    let contact = store.contact(&e.email).await?.context("contact vanished")?;
    let (window, tz, holidays) = p.contact_schedule(seq, &contact);
    let cx = Context {
        sequence: seq,
        window: &window,
        tz,
        holidays: &holidays,
        send: &p.config.send,
    };
    Ok(
        engine::step(engine::Scope::All(cx), e, &Input::Command(command), now)
            .map(|t| t.unwrap_or_else(|| engine::Transition::unchanged(e))),
    )
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

const MESSAGE_COLUMNS: &[&str] = &[
    "sending",
    "sent",
    "deferred",
    "failed",
    "in_doubt",
    "cancelled",
];
const RESPONSE_COLUMNS: &[&str] = &["replied", "auto_replied", "bounced", "unsubscribed"];
const STATE_COLUMNS: &[&str] = &["active", "held", "paused", "stopped", "finished"];

/// A rate of sent mails, as a fraction (JSON) rounded to 4 places.
fn rate(n: i64, sent: i64) -> f64 {
    if sent <= 0 {
        0.0
    } else {
        (n as f64 / sent as f64 * 10_000.0).round() / 10_000.0
    }
}

fn funnel_json(f: &crate::store::Funnel) -> Value {
    json!({
        "sent": f.sent,
        "opened_human": f.opened_human,
        "opened_total": f.opened_total,
        "clicked_human": f.clicked_human,
        "clicked_total": f.clicked_total,
        "replied": f.replied,
        "auto_replied": f.auto_replied,
        "bounced": f.bounced,
        "unsubscribed": f.unsubscribed,
        "rates": {
            "opened_human": rate(f.opened_human, f.sent),
            "opened_total": rate(f.opened_total, f.sent),
            "clicked_human": rate(f.clicked_human, f.sent),
            "clicked_total": rate(f.clicked_total, f.sent),
            "replied": rate(f.replied, f.sent),
            "bounced": rate(f.bounced, f.sent),
            "unsubscribed": rate(f.unsubscribed, f.sent),
        }
    })
}

/// The funnel table: per step and variant, people first, then all hits.
fn print_funnel(out: &mut impl std::io::Write, rows: &[Value]) -> std::io::Result<()> {
    const HEAD: [&str; 12] = [
        "sent", "opened", "rate", "all", "clicked", "rate", "all", "replied", "rate", "bounced",
        "unsub", "skipped",
    ];
    let n = |v: &Value, k: &str| v[k].as_i64().unwrap_or(0).to_string();
    let pct = |v: &Value, k: &str| format!("{:.1}%", v["rates"][k].as_f64().unwrap_or(0.0) * 100.0);
    let line = |out: &mut dyn std::io::Write, label: &str, f: &Value, skipped: String| {
        let cells = [
            n(f, "sent"),
            n(f, "opened_human"),
            pct(f, "opened_human"),
            n(f, "opened_total"),
            n(f, "clicked_human"),
            pct(f, "clicked_human"),
            n(f, "clicked_total"),
            n(f, "replied"),
            pct(f, "replied"),
            n(f, "bounced"),
            n(f, "unsubscribed"),
            skipped,
        ];
        write!(out, "  {label:<16}")?;
        for (c, h) in cells.iter().zip(HEAD) {
            write!(out, " {c:>w$}", w = h.len().max(6))?;
        }
        writeln!(out)
    };
    if rows.iter().all(|r| {
        r["funnel"]["sent"].as_i64().unwrap_or(0) == 0 && r["skipped"].as_i64().unwrap_or(0) == 0
    }) {
        return Ok(());
    }
    write!(out, "  {:<16}", "funnel")?;
    for h in HEAD {
        write!(out, " {h:>w$}", w = h.len().max(6))?;
    }
    writeln!(out)?;
    for r in rows {
        let step = r["step"].as_str().unwrap_or("");
        line(out, step, &r["funnel"], n(r, "skipped"))?;
        for v in r["variants"].as_array().into_iter().flatten() {
            line(
                out,
                &format!("  variant {}", v["variant"].as_str().unwrap_or("")),
                v,
                String::new(),
            )?;
        }
        for l in r["links"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "    {step}: {} clicked by {} people ({} with machines)",
                l["url"].as_str().unwrap_or(""),
                l["clicked_human"],
                l["clicked_total"]
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
    let st = store.status(sequence).await?;
    store.close().await;
    let mut seqs: Vec<&str> = p
        .sequences
        .keys()
        .map(String::as_str)
        .filter(|s| sequence.is_none_or(|x| x == *s))
        .collect();
    for c in st.messages.iter().chain(st.enrollments.iter()) {
        if !seqs.contains(&c.sequence.as_str()) {
            seqs.push(&c.sequence);
        }
    }
    let count = |list: &[crate::store::Count], seq: &str, step: &str, what: &str| -> i64 {
        list.iter()
            .filter(|c| c.sequence == seq && c.step_id == step && c.what == what)
            .map(|c| c.n)
            .sum()
    };
    let mut out_json = Vec::new();
    let mut out = std::io::stdout().lock();
    for seq in seqs {
        let mut steps: Vec<String> = p
            .sequence(seq)
            .map(|s| s.steps.iter().map(|st| st.id.clone()).collect())
            .unwrap_or_default();
        for c in st
            .messages
            .iter()
            .chain(st.enrollments.iter())
            .filter(|c| c.sequence == seq)
        {
            if !steps.contains(&c.step_id) {
                steps.push(c.step_id.clone());
            }
        }
        let mut rows = Vec::new();
        for step in &steps {
            let mut row = serde_json::Map::new();
            row.insert("step".into(), json!(step));
            // An active enrollment at a step is scheduled to send it.
            row.insert(
                "scheduled".into(),
                json!(count(&st.enrollments, seq, step, "active")),
            );
            for m in MESSAGE_COLUMNS {
                row.insert((*m).into(), json!(count(&st.messages, seq, step, m)));
            }
            for s in &STATE_COLUMNS[1..] {
                row.insert((*s).into(), json!(count(&st.enrollments, seq, step, s)));
            }
            for r in RESPONSE_COLUMNS {
                row.insert((*r).into(), json!(count(&st.responses, seq, step, r)));
            }
            row.insert(
                "skipped".into(),
                json!(count(&st.skipped, seq, step, "skipped")),
            );
            let of_step: Vec<&crate::store::Funnel> = st
                .funnel
                .iter()
                .filter(|f| f.sequence == seq && &f.step_id == step)
                .collect();
            let mut total = crate::store::Funnel::default();
            for f in &of_step {
                total += f;
            }
            row.insert("funnel".into(), funnel_json(&total));
            let variants: Vec<Value> = of_step
                .iter()
                .filter(|f| f.variant.is_some())
                .map(|f| {
                    let mut v = funnel_json(f);
                    v["variant"] = json!(f.variant);
                    v
                })
                .collect();
            row.insert("variants".into(), Value::Array(variants));
            let links: Vec<Value> = st
                .links
                .iter()
                .filter(|l| l.sequence == seq && &l.step_id == step)
                .map(
                    |l| json!({ "url": l.url, "clicked_human": l.human, "clicked_total": l.total }),
                )
                .collect();
            row.insert("links".into(), Value::Array(links));
            rows.push(Value::Object(row));
        }
        let machine: Vec<Value> = st
            .machine
            .iter()
            .filter(|m| m.0 == seq)
            .map(|m| json!({ "kind": m.1, "reason": m.2, "count": m.3 }))
            .collect();
        let reasons: Vec<Value> = st
            .reasons
            .iter()
            .filter(|r| r.0 == seq)
            .map(|r| json!({ "state": r.1, "reason": r.2, "count": r.3 }))
            .collect();
        if as_json {
            out_json.push(json!({ "sequence": seq, "steps": rows, "reasons": reasons, "machine_hits": machine }));
            continue;
        }
        writeln!(out, "{seq}")?;
        let cols = [
            "scheduled",
            "sending",
            "sent",
            "deferred",
            "failed",
            "in_doubt",
            "held",
            "paused",
            "stopped",
            "finished",
            "replied",
            "auto_replied",
            "bounced",
            "unsubscribed",
        ];
        write!(out, "  {:<16}", "step")?;
        for c in cols {
            write!(out, " {:>w$}", c.replace('_', " "), w = c.len().max(7))?;
        }
        writeln!(out)?;
        for r in &rows {
            write!(out, "  {:<16}", r["step"].as_str().unwrap_or(""))?;
            for c in cols {
                write!(
                    out,
                    " {:>w$}",
                    r[c].as_i64().unwrap_or(0),
                    w = c.len().max(7)
                )?;
            }
            writeln!(out)?;
        }
        print_funnel(&mut out, &rows)?;
        if !machine.is_empty() {
            let parts: Vec<String> = machine
                .iter()
                .map(|m| {
                    format!(
                        "{} {} x{}",
                        m["kind"].as_str().unwrap_or(""),
                        m["reason"].as_str().unwrap_or(""),
                        m["count"]
                    )
                })
                .collect();
            writeln!(
                out,
                "  machine hits (counted in 'all' only): {}",
                parts.join(", ")
            )?;
        }
        for r in &reasons {
            writeln!(
                out,
                "  {} x{}: {}",
                r["state"].as_str().unwrap_or(""),
                r["count"],
                r["reason"].as_str().unwrap_or("")
            )?;
        }
        writeln!(out)?;
    }
    let watchers: Vec<Value> = st
        .watchers
        .iter()
        .map(|(m, f, s, d)| json!({ "mailbox": m, "folder": f, "state": s, "detail": d }))
        .collect();
    let paused: Vec<Value> = st
        .paused_mailboxes
        .iter()
        .map(|(m, r)| json!({ "mailbox": m, "reason": r }))
        .collect();
    if as_json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &json!({ "sequences": out_json, "watchers": watchers, "paused_mailboxes": paused, "set_aside": st.set_aside })
            )?
        )?;
    } else {
        for (m, f, s, d) in &st.watchers {
            writeln!(
                out,
                "watcher {m}/{f}: {s}{}",
                d.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
            )?;
        }
        for (m, r) in &st.paused_mailboxes {
            writeln!(out, "mailbox {m} PAUSED: {r}")?;
        }
        for a in &st.set_aside {
            writeln!(
                out,
                "set aside: {}/{} UID {} (UIDVALIDITY {}), failed {} times, last: {}",
                a.mailbox, a.folder, a.uid, a.uidvalidity, a.attempts, a.error
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_show(p: &Project, email: &str) -> anyhow::Result<ExitCode> {
    let email = contacts::normalise_email(email).map_err(anyhow::Error::msg)?;
    let store = open_store(p).await?;
    let Some(c) = store.contact(&email).await? else {
        eprintln!("{email}: no such contact");
        return Ok(ExitCode::from(1));
    };
    out!(
        "{}{}",
        c.email,
        c.name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    out!(
        "  stage: {}  owner: {}",
        c.stage,
        c.owner_mailbox.as_deref().unwrap_or("-")
    );
    if let Some(r) = &c.suppressed_reason {
        out!("  suppressed: {r}");
    }
    for (k, v) in &c.fields {
        out!("  {k}: {}", v.as_str().unwrap_or(&v.to_string()));
    }
    out!("timeline:");
    for (at, kind, data) in store.timeline(c.id).await? {
        let tz: Tz = c
            .timezone
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(p.config.timezone);
        let when = at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z");
        let what = match kind.as_str() {
            // Opens and clicks read as what they were, not as their raw record.
            "opened" | "clicked" => {
                let mut w = format!(
                    "{}/{}",
                    data["sequence"].as_str().unwrap_or("?"),
                    data["step"].as_str().unwrap_or("?")
                );
                if let Some(u) = data["url"].as_str() {
                    w.push_str(&format!(" {u}"));
                } else if kind == "clicked" {
                    w.push_str(" (hidden trap link)");
                }
                match data["machine"].as_str() {
                    Some(m) => {
                        let d = m
                            .parse::<crate::track::machine::Reason>()
                            .map(|r| r.describe().to_string())
                            .unwrap_or_else(|_| m.to_string());
                        w.push_str(&format!("  [machine: {d}]"));
                    }
                    None => w.push_str("  [person]"),
                }
                w
            }
            _ => data.to_string(),
        };
        out!("  {when}  {kind:<12} {what}");
    }
    store.close().await;
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
            crate::doubt::release(&store, d, "operator", Utc::now()).await?;
            out!("{message_id}: will be sent again (same Message-ID)");
            ExitCode::SUCCESS
        }
        InDoubtCommand::Drop { message_id } => {
            let d = list
                .iter()
                .find(|d| d.message_id == message_id)
                .context("listed above")?;
            crate::doubt::settle_as_sent(p, &store, d, "counted as sent by operator", Utc::now())
                .await?;
            out!("{message_id}: counted as sent; the next step is scheduled");
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}
