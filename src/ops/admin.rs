//! The admin listener: `/healthz` (the process answers and reaches its database),
//! `/readyz` (database reachable, every IMAP watcher connected, no mailbox paused) and
//! `/metrics` (Prometheus text), on an address of its own, 127.0.0.1:9417 unless
//! followup.toml says otherwise, whether or not tracking is configured. The public
//! tracking listener serves none of it.

use std::fmt::Write as _;
use std::net::SocketAddr;

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::project::Project;
use crate::store::Store;
use crate::track::serve;

/// The default address: loopback, and a port no common exporter uses (9187 is
/// postgres_exporter's).
pub const DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9417);

/// The admin listener's limits when there is no `[http]` to take them from.
pub const LIMITS: serve::Limits = serve::Limits {
    header: std::time::Duration::from_secs(10),
    idle: std::time::Duration::from_secs(60),
    body: std::time::Duration::from_secs(10),
    max_connections: serve::ADMIN_CONNECTIONS,
    drain: serve::DRAIN,
    body_limit: crate::track::http::BODY_LIMIT,
};

/// Where the admin listener listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// `admin_listen = "off"`.
    Off,
    /// Nothing configured: [`DEFAULT`]. If it is taken (a second daemon on the host),
    /// the daemon runs without it and says so.
    Default(SocketAddr),
    /// Configured: a failure to listen there stops the daemon.
    Explicit(SocketAddr),
}

impl Listen {
    /// `text`: top-level `admin_listen` (or FOLLOWUP_ADMIN_LISTEN); `http_admin`: the
    /// older `[http] admin_listen`, used when the former is not set.
    pub fn parse(text: Option<&str>, http_admin: Option<SocketAddr>) -> Result<Listen, String> {
        match text.map(str::trim) {
            Some("off") => Ok(Listen::Off),
            Some(t) => t
                .parse()
                .map(Listen::Explicit)
                .map_err(|_| format!("bad admin_listen address '{t}'")),
            None => Ok(http_admin.map_or(Listen::Default(DEFAULT), Listen::Explicit)),
        }
    }
}

/// What the admin pages look at.
pub struct Admin {
    pub store: Store,
    /// The running project (reloads included): which watchers there should be.
    pub project: watch::Receiver<Arc<Project>>,
    /// The tracking endpoint's admin router, whose /metrics this one's includes.
    pub track: Option<Router>,
}

pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(admin)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; version=0.0.4"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn healthz(State(a): State<Arc<Admin>>) -> Response {
    if a.store.ping().await {
        text(StatusCode::OK, "ok\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable\n".into(),
        )
    }
}

/// What keeps the daemon from doing its work, one line each; empty when ready.
async fn not_ready(a: &Admin) -> Vec<String> {
    let mut out = Vec::new();
    if !a.store.ping().await {
        out.push("database unreachable".to_string());
        return out;
    }
    let project = a.project.borrow().clone();
    match a.store.watch_states().await {
        Ok(states) => {
            for m in project
                .config
                .mailboxes
                .values()
                .filter(|m| m.imap.is_some())
            {
                for folder in ["INBOX", "Sent"] {
                    let s = states
                        .iter()
                        .find(|s| s.mailbox == m.name && s.folder == folder);
                    match s {
                        Some(s) if s.state == "idle" || s.state == "polling" => {}
                        Some(s) => out.push(format!(
                            "watcher {}/{folder}: {}{}",
                            m.name,
                            s.state,
                            s.detail
                                .as_deref()
                                .map(|d| format!(" ({d})"))
                                .unwrap_or_default()
                        )),
                        None => out.push(format!("watcher {}/{folder}: not connected yet", m.name)),
                    }
                }
            }
        }
        Err(e) => out.push(format!("cannot read watcher states: {e}")),
    }
    match a.store.mailbox_pauses().await {
        Ok(p) => out.extend(
            p.into_iter()
                .map(|(m, reason)| format!("mailbox {m} paused: {reason}")),
        ),
        Err(e) => out.push(format!("cannot read mailbox pauses: {e}")),
    }
    out
}

async fn readyz(State(a): State<Arc<Admin>>) -> Response {
    let problems = not_ready(&a).await;
    if problems.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            problems.iter().map(|p| format!("{p}\n")).collect(),
        )
    }
}

async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    let mut out = String::with_capacity(4096);
    let mut status = match &a.track {
        // The tracking endpoint's figures (requests, hits, connections, messages by
        // status, the queue), as its own /metrics gives them.
        Some(track) => {
            let req = axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap_or_default();
            let mut track = track.clone();
            let resp = match tower_service::Service::call(&mut track, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let status = resp.status();
            match axum::body::to_bytes(resp.into_body(), 1 << 20).await {
                Ok(b) => out.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => warn!(error = %e, "metrics: cannot read the tracking figures"),
            }
            status
        }
        None => crate::track::http::database_gauges(&a.store, &mut out).await,
    };
    let now = Utc::now();
    match a.store.ops_gauges(now).await {
        Ok(g) => {
            out.push_str("# HELP followup_mailbox_messages Messages by mailbox and status (sent, failed, deferred, in_doubt, sending, ...).\n# TYPE followup_mailbox_messages gauge\n");
            for (m, s, n) in &g.messages {
                let _ = writeln!(
                    out,
                    "followup_mailbox_messages{{mailbox=\"{}\",status=\"{}\"}} {n}",
                    label(m),
                    label(s)
                );
            }
            let age = g
                .oldest_due
                .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            let _ = writeln!(out, "# HELP followup_queue_oldest_due_seconds How long the longest-waiting due enrollment has waited (0: none due).\n# TYPE followup_queue_oldest_due_seconds gauge\nfollowup_queue_oldest_due_seconds {age}");
            let _ = writeln!(out, "# HELP followup_claims Enrollments claimed by a daemon now.\n# TYPE followup_claims gauge\nfollowup_claims {}", g.claims);
        }
        Err(e) => {
            warn!(error = %e, "metrics: cannot read the database");
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if let Ok(states) = a.store.watch_states().await {
        out.push_str("# HELP followup_watcher_connected 1 while the IMAP watcher of a mailbox folder is connected (IDLE or polling).\n# TYPE followup_watcher_connected gauge\n");
        for s in states.iter().filter(|s| s.state != "stopped") {
            let up = u8::from(s.state == "idle" || s.state == "polling");
            let _ = writeln!(
                out,
                "followup_watcher_connected{{mailbox=\"{}\",folder=\"{}\"}} {up}",
                label(&s.mailbox),
                label(&s.folder)
            );
        }
    }
    if let Ok(pauses) = a.store.mailbox_pauses().await {
        out.push_str("# HELP followup_mailbox_paused 1 for a mailbox paused for bouncing too much.\n# TYPE followup_mailbox_paused gauge\n");
        for (m, _) in pauses {
            let _ = writeln!(
                out,
                "followup_mailbox_paused{{mailbox=\"{}\"}} 1",
                label(&m)
            );
        }
    }
    let (ok, refused) = crate::ops::reload::counts();
    let _ = writeln!(out, "# HELP followup_reloads_total Reloads by result (taken, refused for errors).\n# TYPE followup_reloads_total counter\nfollowup_reloads_total{{result=\"taken\"}} {ok}\nfollowup_reloads_total{{result=\"refused\"}} {refused}");
    text(status, out)
}

/// A label value as Prometheus' text format writes it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds and serves the admin listener on `tracker` until `stop`.
pub async fn start(
    listen: Listen,
    admin: Admin,
    stats: Arc<serve::ConnStats>,
    limits: serve::Limits,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let addr = match listen {
        Listen::Off => return Ok(()),
        Listen::Default(a) | Listen::Explicit(a) => a,
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if matches!(listen, Listen::Default(_)) => {
            warn!(listen = %addr, error = %e, "admin pages (/healthz, /readyz, /metrics) not served: the default address is taken; set admin_listen");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr} (admin_listen)")),
    };
    info!(listen = %addr, "admin pages (/healthz, /readyz, /metrics) listening");
    tracker.spawn(serve::serve(
        listener,
        router(Arc::new(admin)),
        serve::Limits {
            max_connections: serve::ADMIN_CONNECTIONS,
            ..limits
        },
        stats,
        stop,
    ));
    Ok(())
}
