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

use crate::project::Project;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::track::serve;

/// Runs until `shutdown` is cancelled. `config`: the file to read again on SIGHUP.
pub async fn run(
    project: Arc<Project>,
    store: Store,
    shutdown: CancellationToken,
    config: std::path::PathBuf,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let reloader = crate::ops::reload::Reloader::new(config.clone(), project.clone());
    let scheduler =
        Scheduler::new(project.clone(), store.clone()).with_reloads(reloader.subscribe());
    info!(
        owner = scheduler.owner(),
        mailboxes = project.config.mailboxes.len(),
        sequences = project.sequences.len(),
        "followup daemon started"
    );
    let mut watchers = crate::ops::reload::Watchers::start(&project, &store, &shutdown);
    let mut admin_parts = (None, Arc::default(), crate::ops::admin::LIMITS);
    if let Some(http) = &project.config.http {
        let secrets = http
            .secrets
            .as_ref()
            .context("[http] has no secret: set secret_env or secret_file")?;
        let signer =
            crate::track::token::Signer::new(&secrets.current, secrets.previous.as_deref())?;
        let listener = tokio::net::TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("cannot listen on {} ([http] listen)", http.listen))?;
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
        admin_parts = (
            Some(routers.admin),
            metrics.admin_connections.clone(),
            limits,
        );
    }
    // Always running, so that webhooks a reload adds get the events from then on.
    let client = crate::webhook::Client::new().context("webhook HTTP client")?;
    tracker.spawn(crate::app::webhooks::run(
        reloader.subscribe(),
        store.clone(),
        client,
        shutdown.child_token(),
    ));
    // The admin pages, with or without tracking (their figures included when there).
    let (track_admin, admin_stats, admin_limits) = admin_parts;
    crate::ops::admin::start(
        project.config.admin,
        crate::ops::admin::Admin {
            store: store.clone(),
            project: reloader.subscribe(),
            track: track_admin,
        },
        admin_stats,
        admin_limits,
        &tracker,
        shutdown.child_token(),
    )
    .await?;
    let token = shutdown.child_token();
    let mut sched = tracker.spawn(async move { scheduler.run(token).await });
    tracker.spawn(crate::ops::notify::watchdog(shutdown.child_token()));
    let pid_path = crate::ops::pidfile::path(&config);
    let _pid_file = match crate::ops::pidfile::PidFile::write(pid_path.clone()) {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(path = %pid_path.display(), error = %e, "cannot write the pid file; `followup reload` will not find this daemon (SIGHUP still reloads)");
            None
        }
    };
    // Migrations ran (the store is open), the project loaded, the listeners are bound.
    crate::ops::notify::ready("sending");
    tracker.close();
    let mut hups = crate::ops::reload::sighup();
    // Once stopping, the messages in hand get DRAIN to finish: under systemd's
    // TimeoutStopSec (60 s in deploy/followup.service), so that the daemon records what
    // it can rather than being killed mid-write.
    let drain_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::pin!(drain_over);
    let mut forced = false;
    let result = loop {
        tokio::select! {
            r = &mut sched => break r.context("scheduler task panicked")?,
            _ = &mut drain_over => {
                error!(seconds = DRAIN.as_secs(), "the messages in hand did not finish in time; stopping without them (the next start marks what may have left as in doubt)");
                sched.abort();
                forced = true;
                break Ok(());
            }
            Some(()) = hups.recv() => {
                // The send loop takes the new project itself; the watchers restart on it.
                if let Some(p) = reloader.reload().await {
                    watchers.stop().await;
                    watchers = crate::ops::reload::Watchers::start(&p, &store, &shutdown);
                }
            }
        }
    };
    if let Err(e) = &result {
        error!("scheduler stopped: {e}");
    }
    // The scheduler ends on shutdown or on a fatal error: either way, stop the rest.
    crate::ops::notify::stopping();
    shutdown.cancel();
    let stopped = async {
        watchers.stop().await;
        tracker.wait().await;
    };
    if tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .is_err()
    {
        error!("tasks did not stop within 30 s");
    }
    store.close().await;
    info!("followup daemon stopped");
    if forced {
        anyhow::bail!("stopped before the messages in hand finished");
    }
    result.map_err(anyhow::Error::from)
}

/// How long the messages in hand may take to finish once the daemon is stopping.
const DRAIN: Duration = Duration::from_secs(45);

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
