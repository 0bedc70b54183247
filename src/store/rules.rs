//! The events table read in order by its consumers (the rules runner), each with a
//! durable cursor committed in the same transaction as what it did.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};

use super::{ms, BeginWrite, Error, Kind, Pool, Result, Store, CHUNK};
use crate::model::{EventCursor, EventKind, StoredEvent};
use crate::sequence::Rule;

/// Moves cursor `$name` from `$from` to `$to` inside transaction `$tx`; false if it
/// was not at `$from` (another consumer moved it first).
macro_rules! move_cursor {
    ($tx:expr, $name:expr, $from:expr, $to:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO cursors (name, tx, position, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET tx = excluded.tx, position = excluded.position, \
             updated_at = excluded.updated_at WHERE cursors.tx = $5 AND cursors.position = $6",
        )
        .bind($name)
        .bind($to.tx)
        .bind($to.id)
        .bind(ms($now))
        .bind($from.tx)
        .bind($from.id)
        .execute(&mut *$tx)
        .await?
        .rows_affected()
            > 0
    };
}

/// The columns of [`StoredEvent`].
pub(super) const EVENT_COLUMNS: &str =
    "id, tx, at, kind, contact_id, enrollment_id, message_id, link, machine, data";

pub(super) fn event_from_row<R: Row>(row: &R) -> Result<Option<StoredEvent>>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    // A kind this build does not know (written by a newer one) concerns no rule it has.
    let Some(kind) = EventKind::parse(&kind) else {
        return Ok(None);
    };
    let data: String = row.try_get("data")?;
    Ok(Some(StoredEvent {
        id: row.try_get("id")?,
        at: super::from_ms(row.try_get("at")?),
        cursor: EventCursor {
            tx: row.try_get("tx")?,
            id: row.try_get("id")?,
        },
        kind,
        contact_id: row.try_get("contact_id")?,
        enrollment_id: row.try_get("enrollment_id")?,
        message_id: row.try_get("message_id")?,
        link: row.try_get("link")?,
        machine: row.try_get("machine")?,
        data: serde_json::from_str(&data).unwrap_or_default(),
    }))
}

/// A page of events after a cursor.
#[derive(Debug, Default)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Where the cursor stands after this page (past events of kinds this build does
    /// not know, too).
    pub end: EventCursor,
}

impl Store {
    /// Where consumer `name` stands (the start, for one that never ran).
    pub async fn cursor(&self, name: &str) -> Result<EventCursor> {
        with_read_pool!(self, p => {
            let row = sqlx::query("SELECT tx, position FROM cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await?;
            Ok(match row {
                Some(r) => EventCursor { tx: r.try_get("tx")?, id: r.try_get("position")? },
                None => EventCursor::default(),
            })
        })
    }

    /// Up to `limit` events after `after`, in the order consumers read them. On
    /// PostgreSQL only transactions older than every one still running are read: no
    /// event can commit behind the cursor later.
    pub async fn events_after(&self, after: EventCursor, limit: usize) -> Result<EventPage> {
        let sql = match self.kind() {
            Kind::Postgres => format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE (tx > $1 OR (tx = $1 AND id > $2)) \
                 AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 ORDER BY tx, id LIMIT $3"
            ),
            // One writer, committing in id order: `tx` is always 0, and the rowid
            // alone orders the events (no index on `tx` to keep up at every send).
            Kind::Sqlite => format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE $1 = $1 AND id > $2 ORDER BY id LIMIT $3"
            ),
        };
        with_read_pool!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(after.tx)
                .bind(after.id)
                .bind(limit as i64)
                .fetch_all(p)
                .await?;
            let mut page = EventPage { events: Vec::with_capacity(rows.len()), end: after };
            for r in &rows {
                page.end = EventCursor { tx: r.try_get("tx")?, id: r.try_get("id")? };
                if let Some(e) = event_from_row(r)? {
                    page.events.push(e);
                }
            }
            Ok(page)
        })
    }

    /// For the messages given, the first hit of a person (not a machine) on each
    /// (message, kind, link), in cursor order: rules fire on that one only.
    pub async fn first_human_hits(
        &self,
        message_rows: &[i64],
    ) -> Result<HashMap<(i64, EventKind, Option<i64>), EventCursor>> {
        let mut out: HashMap<(i64, EventKind, Option<i64>), EventCursor> = HashMap::new();
        for chunk in message_rows.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(
                    "SELECT message_id, kind, link, tx, id FROM events WHERE kind IN ('opened', 'clicked') \
                     AND machine IS NULL AND message_id IN (",
                );
                let mut sep = qb.separated(", ");
                for m in chunk {
                    sep.push_bind(*m);
                }
                qb.push(")");
                for r in qb.build().fetch_all(p).await? {
                    let kind: String = r.try_get("kind")?;
                    let Some(kind) = EventKind::parse(&kind) else { continue };
                    let at = EventCursor { tx: r.try_get("tx")?, id: r.try_get("id")? };
                    let key = (r.try_get("message_id")?, kind, r.try_get("link")?);
                    out.entry(key).and_modify(|c| *c = (*c).min(at)).or_insert(at);
                }
            });
        }
        Ok(out)
    }

    /// Commits what consumer `name` did with the events from `from` to `to`: the
    /// stages and tags its rules set (with their events) and the cursor, in one
    /// transaction.
    /// If the cursor is no longer at `from` (another daemon's runner got there first),
    /// nothing is written and [`Error::Moved`] is returned.
    pub async fn commit_rules(
        &self,
        name: &str,
        from: EventCursor,
        to: EventCursor,
        rules: &[(i64, Rule)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if !move_cursor!(tx, name, from, to, now) {
                return Err(Error::Moved);
            }
            if !rules.is_empty() {
                apply_rules_in_tx!(tx, rules, now);
            }
            tx.commit().await?;
            Ok(())
        })
    }
}
