//! The tracking endpoint's statements: find a message by its tracking key, the URL of
//! one of its links, record opens and clicks in batches, unsubscribe, and read what a
//! contact did for branches (`if: clicked`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{QueryBuilder, Row};

use super::{from_ms, ms, BeginWrite, EnrollmentUpdate, NewEvent, Pool, Result, Store, CHUNK};
use crate::model::EventKind;
use crate::sequence::Engagement;

/// A sent message as the endpoint knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedMessage {
    pub row_id: i64,
    pub key: String,
    pub contact_id: i64,
    pub enrollment_id: i64,
    pub email: String,
    pub sequence: String,
    pub step_id: String,
    pub mailbox: String,
    pub sent_at: Option<DateTime<Utc>>,
    /// How many tracked links it has.
    pub links: i64,
}

/// One open or click to append to the history.
#[derive(Debug, Clone, PartialEq)]
pub struct HitEvent {
    pub message_row: i64,
    pub contact_id: i64,
    pub enrollment_id: i64,
    /// `opened` or `clicked`.
    pub kind: EventKind,
    pub link: Option<i64>,
    /// Why it is a machine's; None: a person.
    pub machine: Option<String>,
    pub at: DateTime<Utc>,
    pub data: Value,
}

/// What an unsubscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribed {
    /// False when the address was already suppressed (the page says the same).
    pub new: bool,
    pub stopped: u64,
}

const MESSAGE_COLUMNS: &str = "m.id, m.track_key, m.contact_id, m.enrollment_id, c.email, m.sequence, m.step_id, m.mailbox, m.sent_at, \
     (SELECT count(*) FROM links l WHERE l.message_id = m.id) AS links";

fn tracked_from_row<R: Row>(r: &R) -> Result<TrackedMessage>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'d> i64: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> Option<i64>: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> String: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TrackedMessage {
        row_id: r.try_get("id")?,
        key: r.try_get("track_key")?,
        contact_id: r.try_get("contact_id")?,
        enrollment_id: r.try_get("enrollment_id")?,
        email: r.try_get("email")?,
        sequence: r.try_get("sequence")?,
        step_id: r.try_get("step_id")?,
        mailbox: r.try_get("mailbox")?,
        sent_at: r.try_get::<Option<i64>, _>("sent_at")?.map(from_ms),
        links: r.try_get("links")?,
    })
}

impl Store {
    /// Messages by tracking key (hex), as many as are found.
    pub async fn tracked_messages(&self, keys: &[String]) -> Result<Vec<TrackedMessage>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.track_key IN ("
                ));
                let mut sep = qb.separated(", ");
                for k in chunk {
                    sep.push_bind(k.clone());
                }
                qb.push(")");
                for r in qb.build().fetch_all(p).await? {
                    out.push(tracked_from_row(&r)?);
                }
            });
        }
        Ok(out)
    }

    pub async fn tracked_message(&self, key: &str) -> Result<Option<TrackedMessage>> {
        Ok(self
            .tracked_messages(&[key.to_string()])
            .await?
            .into_iter()
            .next())
    }

    /// Where link `idx` of the message with tracking key `key` leads: the URL stored
    /// when it was sent. A read only: a bad request never writes.
    pub async fn link_url(&self, key: &str, idx: i64) -> Result<Option<String>> {
        with_read_pool!(self, p => Ok(sqlx::query_scalar(
            "SELECT l.url FROM links l JOIN messages m ON m.id = l.message_id WHERE m.track_key = $1 AND l.idx = $2",
        )
        .bind(key)
        .bind(idx)
        .fetch_optional(p)
        .await?))
    }

    /// The URLs of links, by (message row, index), for click rules and branches.
    pub async fn link_urls(&self, wanted: &[(i64, i64)]) -> Result<HashMap<(i64, i64), String>> {
        let mut out = HashMap::new();
        for chunk in wanted.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new("SELECT l.message_id, l.idx, l.url FROM links l JOIN (");
                qb.push_values(chunk.iter(), |mut b, (m, i)| {
                    b.push_bind(*m).push_bind(*i);
                });
                qb.push(") AS v ON l.message_id = v.column1 AND l.idx = v.column2");
                for r in qb.build().fetch_all(p).await? {
                    out.insert((r.try_get("message_id")?, r.try_get("idx")?), r.try_get("url")?);
                }
            });
        }
        Ok(out)
    }

    /// Appends opens and clicks in one transaction.
    pub async fn insert_hits(&self, hits: &[HitEvent]) -> Result<()> {
        if hits.is_empty() {
            return Ok(());
        }
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            for chunk in hits.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO events (at, contact_id, enrollment_id, message_id, kind, data, link, machine) ",
                );
                qb.push_values(chunk.iter(), |mut b, h| {
                    b.push_bind(ms(h.at))
                        .push_bind(h.contact_id)
                        .push_bind(h.enrollment_id)
                        .push_bind(h.message_row)
                        .push_bind(h.kind.as_str())
                        .push_bind(h.data.to_string())
                        .push_bind(h.link)
                        .push_bind(h.machine.clone());
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Unsubscribes the address a message went to: suppressed for every sequence, its
    /// live enrollments stopped, in one transaction. Idempotent: a second call finds
    /// it suppressed and changes nothing.
    pub async fn unsubscribe(
        &self,
        m: &TrackedMessage,
        via: &str,
        updates: &[EnrollmentUpdate],
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Unsubscribed> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let inserted = sqlx::query("INSERT INTO suppressions (pattern, reason, at) VALUES ($1, 'unsubscribed', $2) ON CONFLICT (pattern) DO NOTHING")
                .bind(&m.email)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let marked = sqlx::query("UPDATE contacts SET suppressed_reason = 'unsubscribed', suppressed_at = $1, updated_at = $1 WHERE id = $2 AND suppressed_at IS NULL")
                .bind(ms(now))
                .bind(m.contact_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // The engine's stops of the live enrollments; writing them drops their
            // claims, so that a send in flight cannot write over the stop.
            let mut stopped_ids = Vec::new();
            update_enrollments!(tx, updates, now, None, Some(&mut stopped_ids));
            let events = super::events_of_applied(events, updates, &stopped_ids);
            let new = inserted + marked > 0;
            if new {
                sqlx::query("INSERT INTO events (at, contact_id, enrollment_id, message_id, kind, data) VALUES ($1, $2, $3, $4, 'unsubscribed', $5)")
                    .bind(ms(now))
                    .bind(m.contact_id)
                    .bind(m.enrollment_id)
                    .bind(m.row_id)
                    .bind(json!({ "via": via, "sequence": m.sequence, "step": m.step_id }).to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            insert_events!(tx, events, now);
            tx.commit().await?;
            Ok(Unsubscribed { new, stopped: stopped_ids.len() as u64 })
        })
    }

    /// The Message-IDs each enrollment has sent, oldest first: a threaded step's
    /// `References` lists them (RFC 5322 §3.6.4) and its `In-Reply-To` names the last.
    pub async fn sent_message_ids(
        &self,
        enrollment_ids: &[i64],
    ) -> Result<HashMap<i64, Vec<String>>> {
        let mut out: HashMap<i64, Vec<String>> = HashMap::new();
        for chunk in enrollment_ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(
                    "SELECT enrollment_id, message_id FROM messages WHERE status = 'sent' AND enrollment_id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") ORDER BY enrollment_id, step_index, id");
                for r in qb.build().fetch_all(p).await? {
                    out.entry(r.try_get("enrollment_id")?)
                        .or_default()
                        .push(r.try_get("message_id")?);
                }
            });
        }
        Ok(out)
    }

    /// What each enrollment's contact did with its mails, people only: the steps
    /// opened and the (step, URL) clicked.
    pub async fn engagement(&self, enrollment_ids: &[i64]) -> Result<HashMap<i64, Engagement>> {
        let mut out: HashMap<i64, Engagement> = HashMap::new();
        for chunk in enrollment_ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(
                    "SELECT DISTINCT ev.enrollment_id, ev.kind, m.step_id, l.url FROM events ev \
                     JOIN messages m ON m.id = ev.message_id \
                     LEFT JOIN links l ON l.message_id = ev.message_id AND l.idx = ev.link \
                     WHERE ev.kind IN ('opened', 'clicked') AND ev.machine IS NULL AND ev.enrollment_id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for r in qb.build().fetch_all(p).await? {
                    let e = out.entry(r.try_get("enrollment_id")?).or_default();
                    let kind: String = r.try_get("kind")?;
                    let step: String = r.try_get("step_id")?;
                    if EventKind::parse(&kind) == Some(EventKind::Opened) {
                        e.opened.push(step);
                    } else if let Some(url) = r.try_get::<Option<String>, _>("url")? {
                        e.clicked.push((step, url));
                    }
                }
            });
        }
        Ok(out)
    }

    /// Messages by status and enrollments due now, for /metrics.
    pub async fn gauges(&self, now: DateTime<Utc>) -> Result<(Vec<(String, i64)>, i64)> {
        with_read_pool!(self, p => {
            let rows = sqlx::query("SELECT status, count(*) AS n FROM messages GROUP BY status").fetch_all(p).await?;
            let by_status = rows
                .iter()
                .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
                .collect::<Result<Vec<_>>>()?;
            let due: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE state = 'active' AND next_run_at <= $1")
                .bind(ms(now))
                .fetch_one(p)
                .await?;
            Ok((by_status, due))
        })
    }
}
