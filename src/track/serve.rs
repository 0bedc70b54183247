//! The HTTP server under the tracking and admin endpoints: hyper's HTTP/1 connection in
//! an accept loop of our own, because `axum::serve` has no timeouts and no cap, and the
//! tracking endpoint faces the internet. A client that connected and sent nothing, sent
//! a header line every few seconds, or declared a body it never sent used to hold a
//! file descriptor forever; enough of them ran the process out of descriptors, the
//! database could no longer open its files and the daemon stopped.
//!
//! Here every connection has a deadline that a watchdog enforces:
//! - a new connection, or one that has started a request, must deliver the whole
//!   request head within `header` (hyper's own `header_read_timeout` starts at the end
//!   of the previous response, so it cannot tell a slow head from an idle keep-alive);
//! - a connection waiting for its next request may stay idle for `idle`, and its
//!   head's clock starts at its first byte;
//! - a request's body must arrive whole within `body` (it is read before the handler
//!   runs; the endpoint's bodies are a few dozen bytes), else 408 and the connection
//!   closes.
//!
//! At most `max_connections` are open at once: over the cap a new connection is closed
//! as soon as it is accepted, so it costs a descriptor for an instant only, and idle
//! keep-alive connections are closed to make room for the next ones. If
//! `accept` fails for want of descriptors (EMFILE, ENFILE) the loop closes its idle
//! keep-alive connections and backs off (10 ms doubling to 1 s) instead of spinning or
//! ending; the daemon goes on. On shutdown the listener closes, idle connections close
//! at once, requests in progress get `drain` to finish, and then every connection is
//! dropped, stalled or not.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use tracing::{debug, warn};

/// The bounds one listener enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a request's first byte (or the connection's start) to the end of its head.
    pub header: Duration,
    /// Between the end of a response and the next request's first byte.
    pub idle: Duration,
    /// For the whole body of a request.
    pub body: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// On shutdown, how long requests in progress may take before connections are dropped.
    pub drain: Duration,
    /// The largest body read; a longer one is answered 413.
    pub body_limit: usize,
}

/// How long requests in progress get on shutdown. With the scheduler's and recorder's
/// own stops, SIGTERM completes within 5 s even with stalled clients connected.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Counters of one listener, for `/metrics`.
#[derive(Default, Debug)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed by a header, idle or body timeout.
    pub timed_out: AtomicU64,
    /// Failed `accept` calls (out of descriptors, mostly).
    pub accept_errors: AtomicU64,
}

/// Where a connection is in its request cycle.
const HEAD: u8 = 0;
const IDLE: u8 = 1;
const BUSY: u8 = 2;

/// One connection's state and deadline. The socket wrapper moves it from idle to
/// reading a head when bytes arrive; the service moves it to busy when hyper hands it a
/// request and back to idle when the response is ready; the watchdog closes the
/// connection once the deadline has passed. All of it runs in the connection's task;
/// atomics only because hyper wants the service to be `Send`.
struct Clock {
    origin: Instant,
    state: AtomicU8,
    /// Milliseconds since `origin`; `u64::MAX` while busy (the handler's own bounds
    /// apply: the body timeout, the database's).
    deadline: AtomicU64,
    changed: Notify,
    header: Duration,
    idle: Duration,
}

impl Clock {
    fn new(limits: &Limits) -> Clock {
        let c = Clock {
            origin: Instant::now(),
            state: AtomicU8::new(HEAD),
            deadline: AtomicU64::new(u64::MAX),
            changed: Notify::new(),
            header: limits.header,
            idle: limits.idle,
        };
        c.set(HEAD, Some(limits.header));
        c
    }

    fn set(&self, state: u8, within: Option<Duration>) {
        let deadline = within.map_or(u64::MAX, |d| {
            u64::try_from((self.origin.elapsed() + d).as_millis()).unwrap_or(u64::MAX)
        });
        self.state.store(state, Ordering::Relaxed);
        self.deadline.store(deadline, Ordering::Relaxed);
        // notify_one keeps a permit when the watchdog is not waiting yet: no change is lost.
        self.changed.notify_one();
    }

    /// Bytes arrived: if the connection was idle, a request has begun.
    fn on_read(&self) {
        if self.state.load(Ordering::Relaxed) == IDLE {
            self.set(HEAD, Some(self.header));
        }
    }

    fn on_request(&self) {
        self.set(BUSY, None);
    }

    fn on_response(&self) {
        self.set(IDLE, Some(self.idle));
    }

    fn idle(&self) -> bool {
        self.state.load(Ordering::Relaxed) == IDLE
    }

    fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(self.origin + Duration::from_millis(ms)),
        }
    }

    /// Returns once the connection has passed its deadline.
    async fn expired(&self) {
        loop {
            match self.deadline() {
                Some(d) if d <= Instant::now() => return,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// The socket, telling the clock when bytes arrive.
struct Watched {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Headers every response carries, whichever router or error made it.
pub fn secure_headers(headers: &mut axum::http::HeaderMap) {
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
}

/// An answer that also closes the connection (hyper honours `Connection: close`).
fn closing(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One request: the body is read whole within the body timeout, then the router answers.
async fn handle(
    req: Request<Incoming>,
    mut router: Router,
    peer: SocketAddr,
    clock: Arc<Clock>,
    limits: Limits,
    stats: Arc<ConnStats>,
) -> Result<Response<Body>, Infallible> {
    clock.on_request();
    let (mut parts, incoming) = req.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut response = if declared.is_some_and(|n| n > limits.body_limit as u64) {
        closing(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
    } else {
        let body = if incoming.is_end_stream() {
            Ok(Body::empty())
        } else {
            match tokio::time::timeout(
                limits.body,
                axum::body::to_bytes(Body::new(incoming), limits.body_limit),
            )
            .await
            {
                Ok(Ok(bytes)) => Ok(Body::from(bytes)),
                Ok(Err(_)) => Err(closing(StatusCode::BAD_REQUEST, "bad request body\n")),
                Err(_) => {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    Err(closing(
                        StatusCode::REQUEST_TIMEOUT,
                        "request body not received in time\n",
                    ))
                }
            }
        };
        match body {
            Ok(body) => match router.call(Request::from_parts(parts, body)).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Err(r) => r,
        }
    };
    secure_headers(response.headers_mut());
    clock.on_response();
    Ok(response)
}

/// Everything a connection task needs from its listener.
#[derive(Clone)]
struct Shared {
    router: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    /// Stop taking requests: close when idle, finish the one in progress.
    graceful: CancellationToken,
    /// Drop the connection now.
    hard: CancellationToken,
    /// Bumped when descriptors ran out or the cap was reached: idle keep-alive
    /// connections close.
    shed: watch::Receiver<u64>,
}

async fn connection(stream: TcpStream, peer: SocketAddr, mut s: Shared) {
    let clock = Arc::new(Clock::new(&s.limits));
    let io = TokioIo::new(Watched {
        inner: stream,
        clock: clock.clone(),
    });
    let service = {
        let (router, clock, limits, stats) =
            (s.router.clone(), clock.clone(), s.limits, s.stats.clone());
        hyper::service::service_fn(move |req| {
            handle(
                req,
                router.clone(),
                peer,
                clock.clone(),
                limits,
                stats.clone(),
            )
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        // The clock above bounds the head; hyper's timer would also cut idle keep-alive.
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = clock.expired() => {
                s.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "connection closed: timed out");
                return;
            }
            _ = s.graceful.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = s.hard.cancelled() => return,
            changed = s.shed.changed() => {
                if changed.is_err() || clock.idle() {
                    return;
                }
            }
        }
    }
}

/// Decrements the open-connection gauge however the task ends.
struct Open(Arc<ConnStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The errors of a connection that died in the backlog: nothing to wait for.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `router` on `listener` within `limits` until `shutdown`; then stops accepting,
/// lets requests in progress finish for `limits.drain` and drops every connection.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let (shed_tx, shed_rx) = watch::channel(0u64);
    let shared = Shared {
        router,
        limits,
        stats: stats.clone(),
        graceful: CancellationToken::new(),
        hard: CancellationToken::new(),
        shed: shed_rx,
    };
    let mut backoff = Duration::from_millis(10);
    let mut last_shed = Instant::now();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or kernel memory: close idle
                // connections, leave the pending ones in the backlog, try again shortly.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if backoff == Duration::from_millis(10) {
                    warn!(error = %e, open = stats.open.load(Ordering::Relaxed), "cannot accept connections; shedding idle ones and backing off");
                }
                shed_tx.send_modify(|n| *n += 1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            // Make room for the next ones: keep-alive connections waiting for a
            // request are the cheapest to give up (their clients reconnect). At most
            // every 100 ms, since each shed wakes every connection.
            if last_shed.elapsed() >= Duration::from_millis(100) {
                last_shed = Instant::now();
                shed_tx.send_modify(|n| *n += 1);
            }
            continue;
        };
        // Answers are one small write; don't let Nagle hold them for the client's ACK.
        let _ = stream.set_nodelay(true);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(stats.clone());
        let s = shared.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _open = open;
            connection(stream, peer, s).await;
        });
    }
    // New connections are refused from here on.
    drop(listener);
    shared.graceful.cancel();
    tracker.close();
    if tokio::time::timeout(limits.drain, tracker.wait())
        .await
        .is_err()
    {
        let left = stats.open.load(Ordering::Relaxed);
        debug!(left, "dropping connections still open after the drain");
        shared.hard.cancel();
        tracker.wait().await;
    }
}

/// Descriptors kept for everything but HTTP clients whatever the mailboxes: the
/// runtime (epoll, eventfd, the signal pipe), stdio and the log, SQLite's six
/// connections with their -wal and -shm files (or PostgreSQL's nine sockets), DNS
/// look-ups, files being written to an outbox, and some slack.
pub const RESERVE_BASE: u64 = 64;

/// Open connections the admin listener allows: Prometheus and health checks need a
/// few; 64 lets `cargo bench --bench http` load `/healthz` as hard as the pixel.
pub const ADMIN_CONNECTIONS: usize = 64;

/// Raises the soft limit on open files to the hard limit (systemd's default is 1,024
/// soft, 524,288 hard: a service that needs more is expected to raise it itself), and
/// returns the soft limit now in force, if the platform has one.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        let soft = limit.current?;
        // Never beyond a million: a listener does not need more, and some kernels
        // refuse an unlimited soft limit for open files.
        let target = limit.maximum.unwrap_or(1 << 20).min(1 << 20);
        if soft < target
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(target),
                    maximum: limit.maximum,
                },
            )
            .is_ok()
        {
            return Some(target);
        }
        Some(soft)
    }
    #[cfg(not(unix))]
    None
}

/// The connection cap in force: the configured one, lowered so that `reserve`
/// descriptors stay free for the database, SMTP and IMAP. Never below 8, so that a
/// listener still answers something at an absurdly low limit.
pub fn connection_cap(configured: usize, soft_limit: Option<u64>, reserve: u64) -> usize {
    match soft_limit {
        Some(soft) => {
            let room = usize::try_from(soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
            configured.min(room).max(8)
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_the_reserve() {
        assert_eq!(connection_cap(512, Some(1024), 100), 512);
        assert_eq!(connection_cap(512, Some(200), 100), 100);
        assert_eq!(connection_cap(512, Some(50), 100), 8);
        assert_eq!(connection_cap(512, None, 100), 512);
    }
}
