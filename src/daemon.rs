//! `followup run`: wires the long-running tasks and stops them cleanly.
//!
//! One `CancellationToken` is the stop signal; each task gets a child token and runs
//! on a `TaskTracker`. SIGTERM or Ctrl-C cancels; tasks finish what they have in hand
//! (the batch being sent is recorded before the scheduler returns) and the daemon
//! waits for them, logging if that takes long.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::inbound::Folder;
use crate::mail::watch::Watcher;
use crate::project::Project;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::track::serve;

/// Runs until `shutdown` is cancelled.
pub async fn run(
    project: Arc<Project>,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let scheduler = Scheduler::new(project.clone(), store.clone());
    info!(
        owner = scheduler.owner(),
        mailboxes = project.config.mailboxes.len(),
        sequences = project.sequences.len(),
        "followup daemon started"
    );
    // One watcher per mailbox with IMAP for INBOX, and one for Sent (mail the rep
    // writes by hand stops that contact's sequence too).
    let (arrivals, arrived) = tokio::sync::mpsc::channel(16);
    tracker.spawn(crate::inbound::serve(
        project.clone(),
        store.clone(),
        arrived,
    ));
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
            tracker.spawn(w.run(shutdown.child_token()));
        }
    }
    // The watchers hold the only senders: when they stop, `serve` ends.
    drop(arrivals);
    if let Some(http) = &project.config.http {
        let signer = http
            .signer
            .clone()
            .context("[http] has no secret: set secret_env or secret_file")?;
        let listener = tokio::net::TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("cannot listen on {} ([http] listen)", http.listen))?;
        let admin_listener = match http.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} ([http] admin_listen)"))?,
            ),
            None => None,
        };
        let (hits_tx, hits_rx) = tokio::sync::mpsc::channel(http.queue);
        let metrics = Arc::new(crate::track::http::Metrics::default());
        let routers = crate::track::http::routers(
            project.clone(),
            store.clone(),
            signer,
            hits_tx,
            metrics.clone(),
            http.trusted_proxies.clone(),
        );
        // HTTP clients may never take the descriptors the database, SMTP and IMAP need:
        // the public cap leaves a reserve below the open-file limit.
        let soft_limit = serve::raise_nofile_limit();
        let reserve = serve::RESERVE_BASE
            + serve::ADMIN_CONNECTIONS as u64
            + project
                .config
                .mailboxes
                .values()
                .map(|m| m.connections as u64 + 2)
                .sum::<u64>();
        let cap = serve::connection_cap(http.max_connections, soft_limit, reserve);
        if cap < http.max_connections {
            warn!(
                max_connections = http.max_connections,
                cap,
                open_files = soft_limit.unwrap_or_default(),
                reserve,
                "tracking endpoint: fewer connections than max_connections fit under the open-file limit; raise LimitNOFILE"
            );
        }
        let limits = serve::Limits {
            header: http.header_timeout,
            idle: http.idle_timeout,
            body: http.body_timeout,
            max_connections: cap,
            drain: serve::DRAIN,
            body_limit: crate::track::http::BODY_LIMIT,
        };
        info!(listen = %http.listen, public_url = %http.public_url, max_connections = cap, "tracking endpoint listening");
        let recorder =
            crate::track::record::Recorder::new(project.clone(), store.clone(), metrics.clone());
        tracker.spawn(recorder.run(hits_rx));
        tracker.spawn(serve::serve(
            listener,
            routers.public,
            limits,
            metrics.public_connections.clone(),
            shutdown.child_token(),
        ));
        if let (Some(admin), Some(addr)) = (admin_listener, http.admin_listen) {
            info!(listen = %addr, "admin pages (/healthz, /metrics) listening");
            tracker.spawn(serve::serve(
                admin,
                routers.admin,
                serve::Limits {
                    max_connections: serve::ADMIN_CONNECTIONS,
                    ..limits
                },
                metrics.admin_connections.clone(),
                shutdown.child_token(),
            ));
        }
    }
    let token = shutdown.child_token();
    let sched = tracker.spawn(async move { scheduler.run(token).await });
    tracker.spawn(crate::ops::notify::watchdog(shutdown.child_token()));
    // Migrations ran (the store is open), the project loaded, the listeners are bound.
    crate::ops::notify::ready("sending");
    tracker.close();
    let result = sched.await.context("scheduler task panicked")?;
    if let Err(e) = &result {
        error!("scheduler stopped: {e}");
    }
    // The scheduler ends on shutdown or on a fatal error: either way, stop the rest.
    crate::ops::notify::stopping();
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(30), tracker.wait())
        .await
        .is_err()
    {
        error!("tasks did not stop within 30 s");
    }
    store.close().await;
    info!("followup daemon stopped");
    result.map_err(anyhow::Error::from)
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        error!("cannot listen for SIGTERM: {e}");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("stopping: finishing the messages in hand");
        crate::ops::notify::stopping();
        token.cancel();
    });
}
