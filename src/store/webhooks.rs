//! The webhook queue (`webhook_deliveries`): rows added in the transaction that moves
//! the dispatcher's cursor over the events table, taken in order per contact, marked
//! delivered or retried later.

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};

use super::{from_ms, ms, BeginWrite, Error, Pool, Result, Store, CHUNK};
use crate::model::EventCursor;

/// A delivery to add to the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub webhook: String,
    pub event_id: i64,
    pub contact_id: Option<i64>,
    pub kind: String,
    pub payload: String,
}

/// A queued delivery, due now.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub webhook: String,
    pub contact_id: Option<i64>,
    pub payload: String,
    pub attempts: i64,
}

/// One webhook's queue, for `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WebhookQueue {
    pub webhook: String,
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
    /// When the oldest pending delivery was queued.
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Columns per queued row: the statement's variables stay under SQLite's limit.
const DELIVERY_COLUMNS: usize = 8;

macro_rules! insert_deliveries {
    ($tx:expr, $rows:expr, $now:expr) => {
        for chunk in $rows.chunks(CHUNK / DELIVERY_COLUMNS) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO webhook_deliveries (webhook, event_id, contact_id, kind, payload, state, next_at, created_at) ",
            );
            qb.push_values(chunk, |mut b, d| {
                b.push_bind(&d.webhook)
                    .push_bind(d.event_id)
                    .push_bind(d.contact_id)
                    .push_bind(&d.kind)
                    .push_bind(&d.payload)
                    .push_bind("pending")
                    .push_bind(ms($now))
                    .push_bind(ms($now));
            });
            qb.build().execute(&mut *$tx).await?;
        }
    };
}

impl Store {
    /// Moves cursor `name` from `from` to `to` and queues `rows`, in one transaction.
    /// `Error::Moved` if another dispatcher moved the cursor first (nothing is queued).
    pub async fn queue_deliveries(
        &self,
        name: &str,
        from: EventCursor,
        to: EventCursor,
        rows: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if !move_cursor!(tx, name, from, to, now) {
                return Err(Error::Moved);
            }
            insert_deliveries!(tx, rows, now);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Queues `rows` again (a replay), beside whatever is queued.
    pub async fn requeue_deliveries(&self, rows: &[NewDelivery], now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            insert_deliveries!(tx, rows, now);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Up to `limit` pending deliveries due at `now`, oldest first, each the first
    /// pending one of its (webhook, contact): a contact's events arrive in order.
    pub async fn due_deliveries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT d.id, d.webhook, d.contact_id, d.payload, d.attempts FROM webhook_deliveries d \
                 WHERE d.state = 'pending' AND d.next_at <= $1 AND NOT EXISTS ( \
                   SELECT 1 FROM webhook_deliveries e WHERE e.state = 'pending' AND e.webhook = d.webhook \
                   AND e.contact_id = d.contact_id AND e.id < d.id) \
                 ORDER BY d.id LIMIT $2",
            )
            .bind(ms(now))
            .bind(limit as i64)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Delivery {
                        id: r.try_get("id")?,
                        webhook: r.try_get("webhook")?,
                        contact_id: r.try_get("contact_id")?,
                        payload: r.try_get("payload")?,
                        attempts: r.try_get("attempts")?,
                    })
                })
                .collect()
        })
    }

    /// Records what became of deliveries: delivered, retried at a time, or given up.
    pub async fn record_deliveries(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let delivered: Vec<i64> = outcomes
                .iter()
                .filter(|(_, o)| matches!(o, DeliveryOutcome::Delivered))
                .map(|(id, _)| *id)
                .collect();
            for chunk in delivered.chunks(CHUNK) {
                let mut qb = QueryBuilder::new("UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = ");
                qb.push_bind(ms(now)).push(" WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            for (id, o) in outcomes {
                let (state, next_at, error) = match o {
                    DeliveryOutcome::Delivered => continue,
                    DeliveryOutcome::Retry { at, error } => ("pending", ms(*at), error),
                    DeliveryOutcome::GiveUp { error } => ("failed", ms(now), error),
                };
                sqlx::query("UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, next_at = $2, last_error = $3 WHERE id = $4")
                    .bind(state)
                    .bind(next_at)
                    .bind(error)
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Each webhook's queue: pending, delivered and given-up rows, the oldest pending,
    /// the last error.
    pub async fn webhook_queues(&self) -> Result<Vec<WebhookQueue>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT webhook, \
                   sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, \
                   sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered, \
                   sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed, \
                   min(CASE WHEN state = 'pending' THEN created_at END) AS oldest \
                 FROM webhook_deliveries GROUP BY webhook ORDER BY webhook",
            )
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let webhook: String = r.try_get("webhook")?;
                let last_error: Option<String> = sqlx::query_scalar(
                    "SELECT last_error FROM webhook_deliveries WHERE webhook = $1 AND last_error IS NOT NULL \
                     AND state <> 'delivered' ORDER BY id DESC LIMIT 1",
                )
                .bind(&webhook)
                .fetch_optional(p)
                .await?
                .flatten();
                out.push(WebhookQueue {
                    pending: r.try_get::<Option<i64>, _>("pending")?.unwrap_or(0),
                    delivered: r.try_get::<Option<i64>, _>("delivered")?.unwrap_or(0),
                    failed: r.try_get::<Option<i64>, _>("failed")?.unwrap_or(0),
                    oldest_pending: r.try_get::<Option<i64>, _>("oldest")?.map(from_ms),
                    last_error,
                    webhook,
                });
            }
            Ok(out)
        })
    }
}

impl Store {
    /// The addresses of these contacts.
    pub async fn contact_emails(
        &self,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, String>> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new("SELECT id, email FROM contacts WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for r in qb.build().fetch_all(p).await? {
                    out.insert(r.try_get("id")?, r.try_get("email")?);
                }
            });
        }
        Ok(out)
    }

    /// Up to `limit` events recorded at or after `since`, with an id above `after`, in
    /// id order (a replay).
    pub async fn events_since(
        &self,
        since: DateTime<Utc>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::model::StoredEvent>> {
        let sql = format!(
            "SELECT {} FROM events WHERE at >= $1 AND id > $2 ORDER BY id LIMIT $3",
            super::rules::EVENT_COLUMNS
        );
        with_read_pool!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(ms(since))
                .bind(after)
                .bind(limit as i64)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                if let Some(e) = super::rules::event_from_row(r)? {
                    out.push(e);
                }
            }
            Ok(out)
        })
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Delivered,
    Retry { at: DateTime<Utc>, error: String },
    GiveUp { error: String },
}
