//! The tracking endpoint (axum): `/o/{token}` answers the open pixel, `/c/{token}`
//! redirects to a link's stored URL, `/u/{token}` shows the unsubscribe page and takes
//! its POST (also RFC 8058 one-click). `/healthz` and `/metrics` are on the admin
//! router, served on a listener of their own (`admin_listen`), never on the public one:
//! anyone on the internet could otherwise read the send queue and message counts.
//! [`super::serve`] serves both with timeouts and a connection cap.
//!
//! It faces the internet, so every handler starts by checking the token's signature,
//! which costs no database access: a tampered, truncated or foreign token gets the same
//! bare 404 and writes nothing. A redirect goes only to the URL stored for that message
//! and link when it was sent; nothing in the request can choose it.
//!
//! Opens and clicks are not written by the request that sees them: they go into a
//! bounded channel that [`super::record`] drains in batched transactions, so a burst
//! of pixel hits costs one commit per batch, not one per hit. When the channel is full
//! the hit is still answered, and counted as dropped in `/metrics`. An unsubscribe is
//! the exception: it is committed before the page says it worked.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::machine::HitKind;
use super::pages::{self, Lang};
use super::serve::ConnStats;
use super::token::{Kind, Signer};
use super::{key_hex, HONEYPOT};
use crate::project::Project;
use crate::store::{Store, TrackedMessage};

/// One open or click, as the request saw it; resolved and classified by the recorder.
#[derive(Debug, Clone)]
pub struct RawHit {
    pub kind: HitKind,
    pub key: [u8; 8],
    pub link: u16,
    pub at: DateTime<Utc>,
    pub head: bool,
    pub user_agent: Option<String>,
    pub ip: Option<IpAddr>,
}

/// The 43-byte transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

const ROUTES: [&str; 6] = [
    "open",
    "click",
    "unsubscribe",
    "healthz",
    "metrics",
    "other",
];
const STATUSES: [u16; 8] = [200, 204, 302, 400, 404, 405, 503, 500];
/// Upper bounds (seconds) of the request-duration histogram's buckets.
const DURATION_BUCKETS: [f64; 6] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5];

/// Counters for `/metrics`. Plain atomics in fixed arrays: the pixel path takes no
/// lock to count itself.
#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    /// Request durations by route: counts per bucket of [`DURATION_BUCKETS`] (not
    /// cumulative; the last is +Inf) and the sum in microseconds.
    durations: [[AtomicU64; DURATION_BUCKETS.len() + 1]; ROUTES.len()],
    duration_sum_us: [AtomicU64; ROUTES.len()],
    /// Hits answered but not recorded because the channel was full.
    pub dropped: AtomicU64,
    /// Recorded events by kind: opened/clicked × human/machine, unsubscribed.
    pub opened_human: AtomicU64,
    pub opened_machine: AtomicU64,
    pub clicked_human: AtomicU64,
    pub clicked_machine: AtomicU64,
    pub unsubscribed: AtomicU64,
    /// Hits whose key matched no message (a database restored from an older backup).
    pub unknown: AtomicU64,
    /// Connections of the public and the admin listener.
    pub public_connections: Arc<ConnStats>,
    pub admin_connections: Arc<ConnStats>,
}

impl Metrics {
    fn count(&self, route: usize, status: StatusCode) {
        let s = STATUSES
            .iter()
            .position(|c| *c == status.as_u16())
            .unwrap_or(STATUSES.len() - 1);
        self.requests[route][s].fetch_add(1, Ordering::Relaxed);
    }
}

struct AppState {
    signer: Signer,
    store: Store,
    project: Arc<Project>,
    hits: mpsc::Sender<RawHit>,
    queue: usize,
    metrics: Arc<Metrics>,
    /// Peers whose X-Forwarded-For is believed.
    trusted_proxies: Vec<IpNet>,
}

type Shared = State<Arc<AppState>>;

/// The public endpoint and the admin pages, sharing one state.
pub struct Routers {
    pub public: Router,
    pub admin: Router,
}

/// The endpoint's routers.
pub fn routers(
    project: Arc<Project>,
    store: Store,
    signer: Signer,
    hits: mpsc::Sender<RawHit>,
    metrics: Arc<Metrics>,
    trusted_proxies: Vec<IpNet>,
) -> Routers {
    let queue = hits.max_capacity();
    let state = Arc::new(AppState {
        signer,
        store,
        project,
        hits,
        queue,
        metrics: metrics.clone(),
        trusted_proxies,
    });
    let count = || axum::middleware::from_fn_with_state(metrics.clone(), count_requests);
    let public = Router::new()
        .route("/o/{token}", get(open))
        .route("/c/{token}", get(click))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .fallback(fallback)
        // The one-click body is 26 bytes; nothing here needs more than a little.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(count())
        .with_state(state.clone());
    let admin = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(count())
        .with_state(state);
    Routers { public, admin }
}

/// The largest request body either listener reads.
pub const BODY_LIMIT: usize = 4096;

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        "not found\n",
    )
        .into_response()
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the
/// right-most address of X-Forwarded-For that is not a trusted proxy. Each proxy appends
/// the address it got the request from, so the entries right of the first untrusted one
/// were written by our own proxies, and everything left of it by whoever the client
/// is, who can write anything there. An entry that is not an address ends the walk at
/// the peer: the chain cannot be believed past it. When every entry is a trusted
/// proxy, the left-most is the farthest hop known.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut farthest = peer;
    for entry in forwarded_for.rev() {
        let entry = entry.trim();
        let Some(ip) = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        else {
            return peer;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        farthest = ip;
    }
    farthest
}

fn request_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() {
        return peer.ip();
    }
    // Several X-Forwarded-For fields are one list, in order (RFC 9110 §5.3).
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    client_ip(peer.ip(), entries.into_iter(), trusted)
}

fn raw_hit(
    s: &AppState,
    kind: HitKind,
    key: [u8; 8],
    link: u16,
    method: &Method,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> RawHit {
    RawHit {
        kind,
        key,
        link,
        at: Utc::now(),
        head: method == Method::HEAD,
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
        ip: Some(request_ip(peer, headers, &s.trusted_proxies)),
    }
}

impl AppState {
    fn enqueue(&self, hit: RawHit) {
        if self.hits.try_send(hit).is_err() {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn open(
    State(s): Shared,
    Path(token): Path<String>,
    method: Method,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    match s.signer.verify(&token) {
        Some(t) if t.kind == Kind::Open => {
            s.enqueue(raw_hit(
                &s,
                HitKind::Open,
                t.key,
                0,
                &method,
                &headers,
                peer,
            ));
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "image/gif"),
                    (
                        header::CACHE_CONTROL,
                        "no-store, no-cache, must-revalidate, private, max-age=0",
                    ),
                    (header::PRAGMA, "no-cache"),
                    (header::EXPIRES, "0"),
                ],
                PIXEL,
            )
                .into_response()
        }
        _ => not_found(),
    }
}

async fn click(
    State(s): Shared,
    Path(token): Path<String>,
    method: Method,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    click_inner(&s, &token, &method, &headers, peer).await
}

async fn click_inner(
    s: &AppState,
    token: &str,
    method: &Method,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Response {
    let Some(t) = s.signer.verify(token).filter(|t| t.kind == Kind::Click) else {
        return not_found();
    };
    if t.link == HONEYPOT {
        // No person can see this link: record who followed it, show nothing.
        s.enqueue(raw_hit(
            s,
            HitKind::Click,
            t.key,
            t.link,
            method,
            headers,
            peer,
        ));
        return (
            StatusCode::NO_CONTENT,
            [(header::CACHE_CONTROL, "no-store")],
        )
            .into_response();
    }
    let url = match s.store.link_url(&key_hex(t.key), i64::from(t.link)).await {
        Ok(Some(u)) => u,
        Ok(None) => return not_found(),
        Err(e) => {
            warn!(error = %e, "click: cannot look the link up");
            return unavailable();
        }
    };
    // Stored at send time from an http(s) href of the sequence's own template.
    let Ok(location) = HeaderValue::from_str(&url) else {
        return not_found();
    };
    s.enqueue(raw_hit(
        s,
        HitKind::Click,
        t.key,
        t.link,
        method,
        headers,
        peer,
    ));
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
    )
        .into_response()
}

/// The sequence's language and the sender's name, for the page.
fn page_context(s: &AppState, sequence: &str, mailbox: &str) -> (Lang, String) {
    let lang = Lang::parse(
        s.project
            .sequence(sequence)
            .and_then(|q| q.language.as_deref()),
    );
    let sender = s
        .project
        .config
        .mailboxes
        .get(mailbox)
        .map(|m| {
            m.from
                .name
                .clone()
                .unwrap_or_else(|| m.from.email.to_string())
        })
        .unwrap_or_default();
    (lang, sender)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        ],
        body,
    )
        .into_response()
}

/// The message an unsubscribe token names, or the response that says it cannot be
/// found (404, or 503 when the database does not answer).
async fn unsubscribe_target(s: &AppState, token: &str) -> Result<TrackedMessage, Response> {
    let Some(t) = s
        .signer
        .verify(token)
        .filter(|t| t.kind == Kind::Unsubscribe)
    else {
        return Err(html(StatusCode::NOT_FOUND, pages::not_found(Lang::En)));
    };
    match s.store.tracked_message(&key_hex(t.key)).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(html(StatusCode::NOT_FOUND, pages::not_found(Lang::En))),
        Err(e) => {
            warn!(error = %e, "unsubscribe: cannot look the message up");
            Err(unavailable())
        }
    }
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
}

async fn unsubscribe_page(State(s): Shared, Path(token): Path<String>) -> Response {
    let r = match unsubscribe_target(&s, &token).await {
        Err(r) => r,
        Ok(m) => {
            let (lang, sender) = page_context(&s, &m.sequence, &m.mailbox);
            html(
                StatusCode::OK,
                // Relative to the page (…/u/TOKEN), so that a public_url with a
                // path prefix behind a proxy still posts to the right place.
                pages::confirm(lang, &token, &pages::mask_email(&m.email), &sender),
            )
        }
    };
    r
}

/// POST: from the page's button or from a mail provider's RFC 8058 one-click. Both
/// send `List-Unsubscribe=One-Click`; any body is accepted, because the token alone
/// says who, and a POST is what a link scanner does not do.
async fn unsubscribe(
    State(s): Shared,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = match unsubscribe_target(&s, &token).await {
        Err(r) => r,
        Ok(m) => {
            // The page's button posts the same body; a browser says where the form
            // was (Origin, Referer), a mail provider's one-click POST does not.
            let from_page =
                headers.contains_key(header::ORIGIN) || headers.contains_key(header::REFERER);
            let via = if body.as_ref() == b"List-Unsubscribe=One-Click" && !from_page {
                "one-click"
            } else {
                "page"
            };
            match crate::app::operate::unsubscribe(&s.store, &m, via, Utc::now()).await {
                Ok(u) => {
                    if u.new {
                        s.metrics.unsubscribed.fetch_add(1, Ordering::Relaxed);
                        info!(contact = %m.email, sequence = %m.sequence, step = %m.step_id, via, stopped = u.stopped, "unsubscribed");
                    }
                    let (lang, sender) = page_context(&s, &m.sequence, &m.mailbox);
                    html(
                        StatusCode::OK,
                        pages::done(lang, &pages::mask_email(&m.email), &sender),
                    )
                }
                Err(e) => {
                    warn!(error = %e, contact = %m.email, "cannot unsubscribe");
                    unavailable()
                }
            }
        }
    };
    r
}

async fn healthz(State(s): Shared) -> Response {
    let r = if s.store.ping().await {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
    };
    r
}

async fn fallback() -> Response {
    not_found()
}

/// Counts every answer by route and status, on the way out: one place, so that no
/// handler (nor axum's own 405s) can forget to.
async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = match request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str())
    {
        Some("/o/{token}") => 0,
        Some("/c/{token}") => 1,
        Some("/u/{token}") => 2,
        Some("/healthz") => 3,
        Some("/metrics") => 4,
        _ => 5,
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics.count(route, response.status());
    let took = started.elapsed();
    let secs = took.as_secs_f64();
    let bucket = DURATION_BUCKETS
        .iter()
        .position(|le| secs <= *le)
        .unwrap_or(DURATION_BUCKETS.len());
    metrics.durations[route][bucket].fetch_add(1, Ordering::Relaxed);
    metrics.duration_sum_us[route].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    response
}

/// Messages by status and the send queue, from the database; 503 when it does not
/// answer. Also on the admin listener without tracking (`ops::admin`).
pub async fn database_gauges(store: &Store, out: &mut String) -> StatusCode {
    use std::fmt::Write as _;
    match store.gauges(Utc::now()).await {
        Ok((by_status, due)) => {
            out.push_str(
                "# HELP followup_messages Messages by status.\n# TYPE followup_messages gauge\n",
            );
            for (st, n) in by_status {
                let _ = writeln!(out, "followup_messages{{status=\"{st}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP followup_enrollments_due Active enrollments due now (the send queue).\n# TYPE followup_enrollments_due gauge\nfollowup_enrollments_due {due}"
            );
            StatusCode::OK
        }
        Err(e) => {
            warn!(error = %e, "metrics: cannot read the database");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn metrics_page(State(s): Shared) -> Response {
    use std::fmt::Write as _;
    let m = &s.metrics;
    let mut out = String::with_capacity(2048);
    out.push_str("# HELP followup_http_requests_total HTTP requests by route and status.\n# TYPE followup_http_requests_total counter\n");
    for (r, route) in ROUTES.iter().enumerate() {
        for (i, status) in STATUSES.iter().enumerate() {
            let n = m.requests[r][i].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "followup_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }
    out.push_str("# HELP followup_http_request_duration_seconds Time from a request's head to its answer, by route.\n# TYPE followup_http_request_duration_seconds histogram\n");
    for (r, route) in ROUTES.iter().enumerate() {
        let counts: Vec<u64> = m.durations[r]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += counts[i];
            let _ = writeln!(
                out,
                "followup_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = m.duration_sum_us[r].load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "followup_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {total}\nfollowup_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}\nfollowup_http_request_duration_seconds_count{{route=\"{route}\"}} {total}"
        );
    }
    out.push_str("# HELP followup_events_total Events recorded by the endpoint, by kind; machine hits are labelled.\n# TYPE followup_events_total counter\n");
    for (kind, who, v) in [
        ("opened", "human", &m.opened_human),
        ("opened", "machine", &m.opened_machine),
        ("clicked", "human", &m.clicked_human),
        ("clicked", "machine", &m.clicked_machine),
        ("unsubscribed", "human", &m.unsubscribed),
    ] {
        let _ = writeln!(
            out,
            "followup_events_total{{kind=\"{kind}\",source=\"{who}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP followup_hits_dropped_total Hits answered but not recorded: the event queue was full.\n# TYPE followup_hits_dropped_total counter\nfollowup_hits_dropped_total {}",
        m.dropped.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP followup_hits_unknown_total Hits with a valid signature whose message is not in the database.\n# TYPE followup_hits_unknown_total counter\nfollowup_hits_unknown_total {}",
        m.unknown.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP followup_event_queue_depth Hits waiting to be written.\n# TYPE followup_event_queue_depth gauge\nfollowup_event_queue_depth {}",
        s.queue.saturating_sub(s.hits.capacity())
    );
    out.push_str("# HELP followup_http_connections Open connections by listener.\n# TYPE followup_http_connections gauge\n");
    let listeners = [
        ("public", &m.public_connections),
        ("admin", &m.admin_connections),
    ];
    for (l, c) in listeners {
        let _ = writeln!(
            out,
            "followup_http_connections{{listener=\"{l}\"}} {}",
            c.open.load(Ordering::Relaxed)
        );
    }
    for (name, help, get) in [
        (
            "followup_http_connections_refused_total",
            "Connections closed at once because max_connections were open.",
            (|c: &ConnStats| &c.refused) as fn(&ConnStats) -> &AtomicU64,
        ),
        (
            "followup_http_connections_timed_out_total",
            "Connections closed by the header, idle or body timeout.",
            |c| &c.timed_out,
        ),
        (
            "followup_http_accept_errors_total",
            "Failed accepts, mostly for want of file descriptors.",
            |c| &c.accept_errors,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, c) in listeners {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{l}\"}} {}",
                get(c).load(Ordering::Relaxed)
            );
        }
    }
    let status = database_gauges(&s.store, &mut out).await;
    m.count(4, status);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let xff = |v: &'static str| v.split(',');
        // No trusted proxies (the default): the header is never read.
        assert_eq!(
            client_ip(ip("127.0.0.1"), xff("203.0.113.9"), &[]),
            ip("127.0.0.1")
        );
        // An untrusted peer cannot choose its address.
        assert_eq!(
            client_ip(ip("198.51.100.7"), xff("203.0.113.9"), &trusted),
            ip("198.51.100.7")
        );
        // Behind our proxies: the right-most address that is not one of them, whatever
        // the client wrote further left.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                xff("1.1.1.1, 203.0.113.9, 10.0.0.5"),
                &trusted
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.2.3.4"), xff(" 203.0.113.9 "), &trusted),
            ip("203.0.113.9")
        );
        // A port or IPv6 brackets are tolerated; garbage ends the walk at the peer.
        assert_eq!(
            client_ip(ip("127.0.0.1"), xff("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), xff("1.1.1.1, unknown"), &trusted),
            ip("127.0.0.1")
        );
        // Only proxies in the chain: the farthest of them; no header: the peer.
        assert_eq!(
            client_ip(ip("127.0.0.1"), xff("10.9.9.9, 10.0.0.5"), &trusted),
            ip("10.9.9.9")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), std::iter::empty(), &trusted),
            ip("127.0.0.1")
        );
    }
}
