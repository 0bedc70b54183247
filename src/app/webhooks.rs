//! Webhook dispatch: events go from the events table to a durable queue (one row per
//! event and webhook that wants it, added in the transaction that moves the cursor),
//! and from the queue to the receivers, in order per contact, retried with backoff.
//! It runs as its own task: a slow or dead receiver never slows sending.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use tracing::{info, warn};

use crate::config::Webhook;
use crate::model::StoredEvent;
use crate::store::{self, DeliveryOutcome, NewDelivery, Store};
use crate::webhook::{self, Client, MAX_ATTEMPTS};

/// The cursor's name in the `cursors` table.
pub const CURSOR: &str = "webhooks";
/// Events read per page.
const PAGE: usize = 1_000;
/// Deliveries taken per round, and POSTs in flight at once.
const TAKE: usize = 500;
const IN_FLIGHT: usize = 32;

/// The rows to queue for these events: one per event and webhook that wants its kind.
async fn rows_for(
    store: &Store,
    hooks: &[Webhook],
    events: &[StoredEvent],
) -> Result<Vec<NewDelivery>, store::Error> {
    if hooks.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i64> = events.iter().filter_map(|e| e.contact_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let emails = store.contact_emails(&ids).await?;
    let mut rows = Vec::new();
    for e in events {
        let email = e
            .contact_id
            .and_then(|c| emails.get(&c))
            .map(String::as_str);
        let mut body = None;
        for w in hooks
            .iter()
            .filter(|w| w.events.is_empty() || w.events.contains(&e.kind))
        {
            let payload = body
                .get_or_insert_with(|| webhook::payload(e, email))
                .clone();
            rows.push(NewDelivery {
                webhook: w.name.clone(),
                event_id: e.id,
                contact_id: e.contact_id,
                kind: e.kind.as_str().to_string(),
                payload,
            });
        }
    }
    Ok(rows)
}

/// Queues every event after the cursor, page by page; returns how many rows.
pub async fn queue(
    store: &Store,
    hooks: &[Webhook],
    now: DateTime<Utc>,
) -> Result<usize, store::Error> {
    let mut queued = 0;
    loop {
        let from = store.cursor(CURSOR).await?;
        let page = store.events_after(from, PAGE).await?;
        if page.end == from {
            return Ok(queued);
        }
        let rows = rows_for(store, hooks, &page.events).await?;
        match store
            .queue_deliveries(CURSOR, from, page.end, &rows, now)
            .await
        {
            Ok(()) => queued += rows.len(),
            // Another daemon queued this page first: read on from where it left off.
            Err(store::Error::Moved) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Queues again every event since `since` for the webhook named `only` (or all).
pub async fn replay(
    store: &Store,
    hooks: &[Webhook],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<usize, store::Error> {
    let mut after = 0;
    let mut queued = 0;
    loop {
        let events = store.events_since(since, after, PAGE).await?;
        let Some(last) = events.last() else {
            return Ok(queued);
        };
        after = last.id;
        let rows = rows_for(store, hooks, &events).await?;
        store.requeue_deliveries(&rows, now).await?;
        queued += rows.len();
    }
}

/// What a round of deliveries did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub delivered: usize,
    pub failed: usize,
}

/// POSTs the deliveries due, at most [`TAKE`], [`IN_FLIGHT`] at a time, and records
/// what became of each.
pub async fn deliver(
    store: &Store,
    hooks: &[Webhook],
    client: &Client,
    now: DateTime<Utc>,
) -> Result<Delivered, store::Error> {
    let due = store.due_deliveries(now, TAKE).await?;
    let by_name: HashMap<&str, &Webhook> = hooks.iter().map(|w| (w.name.as_str(), w)).collect();
    let outcomes: Vec<(i64, DeliveryOutcome)> = futures_util::stream::iter(due)
        .map(|d| {
            let hook = by_name.get(d.webhook.as_str()).copied();
            async move {
                let Some(hook) = hook else {
                    return (
                        d.id,
                        DeliveryOutcome::GiveUp {
                            error: format!("webhook '{}' is no longer configured", d.webhook),
                        },
                    );
                };
                match client.post(hook, d.id, &d.payload).await {
                    Ok(()) => (d.id, DeliveryOutcome::Delivered),
                    Err(error) if d.attempts + 1 >= MAX_ATTEMPTS => {
                        warn!(webhook = %hook.name, delivery = d.id, %error, "webhook delivery given up");
                        (d.id, DeliveryOutcome::GiveUp { error })
                    }
                    Err(error) => {
                        info!(webhook = %hook.name, delivery = d.id, attempt = d.attempts + 1, %error, "webhook delivery failed; will retry");
                        let at = webhook::retry_at(d.attempts, Utc::now());
                        (d.id, DeliveryOutcome::Retry { at, error })
                    }
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut r = Delivered::default();
    for (_, o) in &outcomes {
        match o {
            DeliveryOutcome::Delivered => r.delivered += 1,
            _ => r.failed += 1,
        }
    }
    store.record_deliveries(&outcomes, now).await?;
    Ok(r)
}

/// The dispatcher task of `followup run`: queues new events and delivers what is due,
/// every half second, until `shutdown`. A database error is logged and tried again:
/// it never ends the daemon.
pub async fn run(
    project: tokio::sync::watch::Receiver<std::sync::Arc<crate::project::Project>>,
    store: Store,
    client: Client,
    shutdown: tokio_util::sync::CancellationToken,
) {
    while !shutdown.is_cancelled() {
        // The project as last (re)loaded: a reload's webhooks take effect here.
        let current = project.borrow().clone();
        if let Err(e) = round(&store, &current.config.webhooks, &client).await {
            warn!("webhooks: {e}; trying again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// Queues what is new and delivers until nothing more is due now.
pub async fn round(
    store: &Store,
    hooks: &[Webhook],
    client: &Client,
) -> Result<Delivered, store::Error> {
    queue(store, hooks, Utc::now()).await?;
    let mut total = Delivered::default();
    loop {
        let r = deliver(store, hooks, client, Utc::now()).await?;
        total.delivered += r.delivered;
        total.failed += r.failed;
        // Failures wait for their retry time; only deliveries free the next in line.
        if r.delivered == 0 {
            return Ok(total);
        }
    }
}
