//! Reload (SIGHUP, `followup reload`, `systemctl reload`): read the project again and,
//! if every file is valid, swap it in whole; if anything is invalid, log every problem
//! and keep the running version.
//!
//! The new project reaches its users at points where nothing is half done: the send
//! loop takes it between two rounds (a batch is rendered and sent with one version),
//! the IMAP watchers and the reply handler are restarted on it (after the message in
//! hand), the lifecycle rules take it before their next pass. What a reload cannot
//! change in a running daemon (the database, the listeners' addresses, the tracking
//! secret) is logged and takes effect at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::diagnostic::Severity;
use crate::inbound::Folder;
use crate::mail::watch::Watcher;
use crate::project::Project;
use crate::store::Store;

/// The IMAP watchers (INBOX and Sent of every mailbox with IMAP) and the task that
/// handles what they find, started together on one project and stopped together.
pub struct Watchers {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Watchers {
    pub fn start(project: &Arc<Project>, store: &Store, shutdown: &CancellationToken) -> Watchers {
        let stop = shutdown.child_token();
        let tasks = TaskTracker::new();
        let (arrivals, arrived) = tokio::sync::mpsc::channel(16);
        tasks.spawn(crate::inbound::serve(
            project.clone(),
            store.clone(),
            arrived,
        ));
        // One watcher per mailbox with IMAP for INBOX, and one for Sent (mail the rep
        // writes by hand stops that contact's sequence too).
        for mailbox in project
            .config
            .mailboxes
            .values()
            .filter(|m| m.imap.is_some())
        {
            for folder in [Folder::Inbox, Folder::Sent] {
                let w = Watcher {
                    arrivals: arrivals.clone(),
                    timing: project.config.replies.clone(),
                    store: store.clone(),
                    mailbox: mailbox.clone(),
                    folder,
                };
                tasks.spawn(w.run(stop.child_token()));
            }
        }
        // The watchers hold the only senders: when they stop, `serve` ends.
        drop(arrivals);
        tasks.close();
        Watchers { stop, tasks }
    }

    /// Stops them: each finishes the message in hand and logs out; waits for that.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// Loads the project for a reload, off the runtime's threads (it reads files).
pub async fn load(config: &Path) -> Result<Project, crate::diagnostic::Diagnostics> {
    let path = config.to_path_buf();
    match tokio::task::spawn_blocking(move || Project::load(&path, true)).await {
        Ok(r) => r.map(|(p, _warnings)| p),
        Err(e) => {
            let mut d = crate::diagnostic::Diagnostics::default();
            d.push(crate::diagnostic::Diagnostic::error(
                config,
                format!("loading panicked: {e}"),
            ));
            Err(d)
        }
    }
}

/// Logs each problem on one line (the journal keeps a line per entry).
fn log_problems(d: &crate::diagnostic::Diagnostics) {
    for item in &d.items {
        let at = match &item.location {
            Some(l) => format!("{}:{}:{}", item.path.display(), l.line, l.column),
            None => item.path.display().to_string(),
        };
        let help = item
            .help
            .as_deref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        match item.severity {
            Severity::Error => error!(at, "reload: {}{help}", item.message),
            Severity::Warning => warn!(at, "reload: {}{help}", item.message),
        }
    }
}

/// What a running daemon cannot take from a reload, by name, if it changed.
fn needs_restart(old: &Project, new: &Project) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.config.database != new.config.database {
        out.push("database");
    }
    let listen = |p: &Project| p.config.http.as_ref().map(|h| (h.listen, h.admin_listen));
    if listen(old) != listen(new) {
        out.push("[http] listen and admin_listen");
    }
    out
}

static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reloads taken and refused since the start, for /metrics.
pub fn counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (TAKEN.load(Relaxed), REFUSED.load(Relaxed))
}

/// Reads the project again on request and hands a valid one to the daemon's parts.
pub struct Reloader {
    config: PathBuf,
    current: watch::Sender<Arc<Project>>,
}

impl Reloader {
    pub fn new(config: PathBuf, project: Arc<Project>) -> Reloader {
        Reloader {
            config,
            current: watch::Sender::new(project),
        }
    }

    /// For the parts that take a reloaded project themselves (the send loop).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Project>> {
        self.current.subscribe()
    }

    pub fn current(&self) -> Arc<Project> {
        self.current.borrow().clone()
    }

    /// One reload. Some(project) if it was taken (then the caller restarts what holds
    /// the old one), None if it was refused.
    pub async fn reload(&self) -> Option<Arc<Project>> {
        crate::ops::notify::reloading();
        info!(config = %self.config.display(), "reloading the project");
        let result = load(&self.config).await;
        let taken = match result {
            Err(d) => {
                REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log_problems(&d);
                error!(
                    errors = d.error_count(),
                    "reload refused: the project has errors; still running the previous version"
                );
                None
            }
            Ok(p) => {
                let old = self.current();
                for what in needs_restart(&old, &p) {
                    warn!(
                        setting = what,
                        "reload: this setting changed; it takes effect at the next restart"
                    );
                }
                let p = Arc::new(p);
                info!(
                    sequences = p.sequences.len(),
                    mailboxes = p.config.mailboxes.len(),
                    "reloaded"
                );
                self.current.send_replace(p.clone());
                TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(p)
            }
        };
        crate::ops::notify::ready("sending");
        taken
    }
}

/// SIGHUP, as a stream of reload requests. Without SIGHUP (not Unix) it never yields.
pub fn sighup() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot listen for SIGHUP; reload needs a restart: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            // A reload already waiting covers this one too.
            let _ = tx.try_send(());
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// `followup reload`: checks the project as the daemon will, then signals the daemon
/// through its pid file. Exit 1 when the project has errors (nothing is signalled: the
/// daemon would refuse it anyway), 2 when no daemon could be signalled.
pub fn command(config: &Path) -> std::process::ExitCode {
    // Secrets are the daemon's: this user may not have its credentials.
    if let Err(d) = Project::load(config, false) {
        for item in d.items.iter().filter(|i| i.severity == Severity::Error) {
            eprintln!("{item}\n");
        }
        eprintln!(
            "followup: {} error(s) in the project; the daemon was not asked to reload and keeps running the previous version",
            d.error_count()
        );
        return std::process::ExitCode::from(1);
    }
    let path = crate::ops::pidfile::path(config);
    match crate::ops::pidfile::signal_reload(&path) {
        Ok(pid) => {
            println!("asked the daemon (pid {pid}) to reload; its log says when it has");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("followup: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
