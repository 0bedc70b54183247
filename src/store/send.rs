//! The send path's statements: claim due enrollments, commit `sending` before SMTP,
//! record outcomes, and turn messages whose daemon died mid-send into `in_doubt`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};
use tracing::warn;

use super::{
    contact_from_row, enrollment_from_row, from_ms, ms, parse_fields, BeginWrite, Contact,
    Enrollment, EnrollmentUpdate, NewEvent, Pool, Result, Store, CHUNK, CONTACT_COLUMNS,
    ENROLLMENT_COLUMNS,
};
use crate::engine;
use crate::model::MessageStatus;

/// The body of [`Store::begin_sends`] inside a transaction of the caller's: inserts the
/// `sending` rows (with their links) of the items that may be sent and pushes what was
/// begun onto `$out`. A macro, as `update_enrollments!`, so that one text serves both
/// databases' transaction types.
macro_rules! begin_in_tx {
    ($tx:expr, $items:expr, $owner:expr, $now:expr, $lease_until:expr, $out:expr) => {
        let items: &[Begin] = $items;
        let owner: &str = $owner;
        let by_enrollment: HashMap<i64, &Begin> =
            items.iter().map(|i| (i.enrollment_id, i)).collect();
        let any_links = items.iter().any(|i| !i.links.is_empty());
        for chunk in items.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO messages (message_id, enrollment_id, contact_id, sequence, step_id, step_index, mailbox, \
                 subject, content_hash, variant, track_key, status, attempts, began_by, locked_until, sent_at, created_at, updated_at) \
                 SELECT v.column2, e.id, e.contact_id, e.sequence, e.step_id, e.step_index, e.mailbox, v.column3, v.column4, \
                 v.column6, v.column7, 'sending', 1, ",
            );
            qb.push_bind(owner.to_string()).push(", ");
            qb.push_bind(ms($lease_until)).push(", ").push_bind(ms($now)).push(", ").push_bind(ms($now)).push(", ").push_bind(ms($now));
            qb.push(" FROM (");
            qb.push_values(chunk.iter(), |mut b, i| {
                b.push_bind(i.enrollment_id)
                    .push_bind(i.message_id.clone())
                    .push_bind(i.subject.clone())
                    .push_bind(i.content_hash.clone())
                    .push_bind(i.step_id.clone())
                    .push_bind(i.variant.clone())
                    .push_bind(i.track_key.clone());
            });
            qb.push(
                ") AS v JOIN enrollments e ON e.id = v.column1 JOIN contacts c ON c.id = e.contact_id \
                 WHERE e.state = 'active' AND e.step_id = v.column5 \
                 AND EXISTS (SELECT 1 FROM claims k WHERE k.enrollment_id = e.id AND k.owner = ",
            );
            qb.push_bind(owner.to_string());
            qb.push(
                ") AND c.suppressed_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.pattern = c.email OR s.pattern = '@' || c.domain) \
                 ON CONFLICT (enrollment_id, step_id) DO UPDATE SET status = 'sending', \
                 attempts = messages.attempts + 1, locked_until = excluded.locked_until, wire = NULL, began_by = excluded.began_by, \
                 sent_at = excluded.sent_at, updated_at = excluded.updated_at, \
                 track_key = excluded.track_key, variant = excluded.variant \
                 WHERE messages.status IN ('deferred', 'cancelled') \
                 RETURNING id, enrollment_id, message_id, attempts",
            );
            let rows = qb.build().fetch_all(&mut *$tx).await?;
            let mut begun = Vec::with_capacity(rows.len());
            for r in rows {
                begun.push(Begun {
                    row_id: r.try_get("id")?,
                    enrollment_id: r.try_get("enrollment_id")?,
                    message_id: r.try_get("message_id")?,
                    attempts: r.try_get("attempts")?,
                });
            }
            // In the same transaction as its `sending` row, so that a message never goes
            // out without the URLs its clicks lead to.
            if any_links {
                // A retry's earlier links belonged to a key that never went out.
                let retried: Vec<i64> = begun.iter().filter(|b| b.attempts > 1).map(|b| b.row_id).collect();
                for ids in retried.chunks(CHUNK) {
                    let mut qb = QueryBuilder::new("DELETE FROM links WHERE message_id IN (");
                    let mut sep = qb.separated(", ");
                    for id in ids {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    qb.build().execute(&mut *$tx).await?;
                }
                let links: Vec<(i64, i64, &str)> = begun
                    .iter()
                    .filter_map(|b| by_enrollment.get(&b.enrollment_id).map(|i| (b.row_id, *i)))
                    .flat_map(|(row, i)| i.links.iter().enumerate().map(move |(n, u)| (row, n as i64, u.as_str())))
                    .collect();
                for part in links.chunks(CHUNK) {
                    let mut qb = QueryBuilder::new("INSERT INTO links (message_id, idx, url) ");
                    qb.push_values(part.iter(), |mut b, (row, n, url)| {
                        b.push_bind(*row).push_bind(*n).push_bind(url.to_string());
                    });
                    qb.build().execute(&mut *$tx).await?;
                }
            }
            $out.extend(begun);
        }
    };
}

/// The body of [`Store::finish_sends`] inside a transaction of the caller's.
macro_rules! finish_in_tx {
    ($tx:expr, $items:expr, $owner:expr, $now:expr) => {
        let items: &[Finish] = $items;
        let owner: Option<&str> = $owner;
        let updates: Vec<EnrollmentUpdate> = items.iter().map(|f| f.enrollment.clone()).collect();
        let events: Vec<NewEvent> = items
            .iter()
            .flat_map(|f| f.events.iter().cloned())
            .collect();
        let (sent, unsent): (Vec<&MessageUpdate>, Vec<&MessageUpdate>) = items
            .iter()
            .filter_map(|f| f.message.as_ref())
            // A message in doubt may have been sent: it keeps its `sent_at`, so that it
            // still counts against the daily limit, and has it if it is settled as sent.
            .partition(|m| matches!(m.status, MessageStatus::Sent | MessageStatus::InDoubt));
        // Two statements rather than one with a CASE: SQLite rewrites an index entry
        // for every column named in SET, changed or not.
        for (group, set_sent_at) in [(sent, ""), (unsent, ", sent_at = NULL")] {
            for chunk in group.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(format!(
                    "UPDATE messages SET status = v.column2, smtp_reply = v.column3{set_sent_at}, \
                     locked_until = NULL, updated_at = v.column4 FROM ("
                ));
                qb.push_values(chunk.iter(), |mut b, m| {
                    b.push_bind(m.row_id)
                        .push_bind(m.status.as_str())
                        .push_bind(m.smtp_reply.clone())
                        .push_bind(ms($now));
                });
                qb.push(") AS v WHERE messages.id = v.column1");
                qb.build().execute(&mut *$tx).await?;
            }
        }
        update_enrollments!($tx, updates, $now, owner);
        insert_events!($tx, events, $now);
    };
}

/// A due enrollment this daemon now holds, with its contact.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub enrollment: Enrollment,
    pub contact: Contact,
}

/// A message about to be handed to SMTP.
#[derive(Debug, Clone)]
pub struct Begin {
    pub enrollment_id: i64,
    pub step_id: String,
    pub step_index: i64,
    /// The Message-ID to use if this is the step's first attempt; a retry keeps the
    /// Message-ID of its first attempt.
    pub message_id: String,
    pub subject: String,
    pub content_hash: String,
    pub variant: Option<String>,
    /// The message's tracking key (hex); a retry gets this fresh one too.
    pub track_key: String,
    /// Original URLs of its tracked links, by index.
    pub links: Vec<String>,
}

/// A message committed as `sending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    pub row_id: i64,
    pub enrollment_id: i64,
    pub message_id: String,
    pub attempts: i64,
}

/// A message's new status. A `sent` message, or one in doubt, keeps the `sent_at`
/// committed with its `sending` row, the moment before SMTP (so that it counted against
/// the daily limit from then on, and the settling update leaves the mailbox's send-time
/// index alone); any other status clears it: that attempt did not reach anyone.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageUpdate {
    pub row_id: i64,
    pub status: MessageStatus,
    pub smtp_reply: Option<String>,
}

/// The outcome of one send (or of a claim that did not lead to a send).
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub message: Option<MessageUpdate>,
    pub enrollment: EnrollmentUpdate,
    pub events: Vec<NewEvent>,
}

/// A message that may or may not have reached the SMTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct InDoubt {
    pub row_id: i64,
    pub message_id: String,
    pub enrollment_id: i64,
    pub email: String,
    pub sequence: String,
    pub step_id: String,
    pub mailbox: String,
    pub since: DateTime<Utc>,
}

/// What [`Claimed`] is read from, after [`ENROLLMENT_COLUMNS`]: its contact's columns.
const CLAIMED_CONTACT_COLUMNS: &str =
    "c.name AS c_name, c.fields AS c_fields, c.timezone AS c_timezone, \
     c.country AS c_country, c.stage AS c_stage, c.owner_mailbox AS c_owner_mailbox, \
     c.suppressed_reason AS c_suppressed_reason";

fn claimed_from_row<R: Row>(row: &R) -> Result<Claimed>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let enrollment = enrollment_from_row(row)?;
    let fields: String = row.try_get("c_fields")?;
    let contact = Contact {
        id: enrollment.contact_id,
        email: enrollment.email.clone(),
        name: row.try_get("c_name")?,
        fields: parse_fields(&fields)?,
        timezone: row.try_get("c_timezone")?,
        country: row.try_get("c_country")?,
        stage: row.try_get("c_stage")?,
        owner_mailbox: row.try_get("c_owner_mailbox")?,
        suppressed_reason: row.try_get("c_suppressed_reason")?,
    };
    Ok(Claimed {
        enrollment,
        contact,
    })
}

/// How long the row of a scheduler start is kept in `nodes` (for an operator who wants
/// to know which process made a tracking key).
pub const NODES_KEPT: chrono::Duration = chrono::Duration::days(30);

/// Where a claim stopped: the next claim of the same round may start after it (see
/// [`Store::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimCursor {
    priority: i64,
    next_run_at: i64,
    id: i64,
}

impl ClaimCursor {
    /// The cursor just after a claim: after the last of its rows in the order claims walk
    /// (priority, due time, id), whatever order `claimed` is in.
    pub fn after(claimed: &[Claimed]) -> Option<ClaimCursor> {
        claimed
            .iter()
            .map(|c| ClaimCursor {
                priority: super::priority(c.enrollment.step_index),
                next_run_at: c.enrollment.next_run_at.map_or(i64::MIN, ms),
                id: c.enrollment.id,
            })
            .max()
    }
}

pub use crate::model::Wire;

/// What [`Store::take_over`] and [`Store::mark_in_doubt`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Messages whose end of data may have reached the server: in doubt.
    pub in_doubt: Vec<InDoubt>,
    /// Messages the server accepted before their daemon died: to be counted as sent.
    pub accepted: Vec<InDoubt>,
    /// Messages that never left: due again.
    pub unsent: usize,
}

/// A step's existing message, found when a claim could not begin a send.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMessage {
    pub row_id: i64,
    pub message_id: String,
    pub subject: String,
    pub status: MessageStatus,
    pub sent_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Claims up to `limit` due enrollments of one mailbox: follow-ups first (so that when
    /// a daily limit binds, threads already started are continued), then first steps,
    /// each in order of due time. The claim is a lease: another daemon may take the
    /// enrollment back after `lease_until`. On PostgreSQL concurrent daemons skip each
    /// other's rows (`FOR UPDATE SKIP LOCKED`); on SQLite the single writer serialises.
    pub async fn claim(
        &self,
        mailbox: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease_until: DateTime<Utc>,
        owner: &str,
        after: Option<ClaimCursor>,
    ) -> Result<Vec<Claimed>> {
        // A lease is a row in `claims`; an expired one is taken over. The ON CONFLICT
        // guard keeps a daemon whose snapshot predates another's commit from taking over
        // a live lease.
        //
        // Each pass walks the due index of one priority (or, on SQLite with no cursor,
        // of both, one after the other, already in the order asked for: EXPLAIN QUERY
        // PLAN shows no sort). With a cursor the walk starts after it: every row before
        // it is leased or sent, and walking past them again would cost a heap visit and
        // a lease lookup each (on PostgreSQL, 20 claims in a row grew from 29 to 54 ms).
        // A row that falls due before the cursor meanwhile waits for the next round.
        // (priority, or None for both; whether the walk starts after the cursor)
        let passes: Vec<(Option<i64>, bool)> = match (after, &self.pool) {
            (None, Pool::Sqlite(_)) => vec![(None, false)],
            (None, Pool::Postgres(_)) => vec![(Some(0), false), (Some(1), false)],
            (Some(c), _) if c.priority == 0 => vec![(Some(0), true), (Some(1), false)],
            (Some(_), _) => vec![(Some(1), true)],
        };
        let pick = |priority: Option<i64>, bounded: bool, columns: &str, skip_locked: &str| {
            let priority = match priority {
                None => "e.priority IN (0, 1)".to_string(),
                Some(p) => format!("e.priority = {p}"),
            };
            let bound = if bounded {
                " AND (e.next_run_at, e.id) > ($6, $7)"
            } else {
                ""
            };
            format!(
                "SELECT {columns} FROM enrollments e \
                 WHERE e.state = 'active' AND e.mailbox = $3 AND {priority} AND e.next_run_at <= $4{bound} \
                 AND NOT EXISTS (SELECT 1 FROM claims k WHERE k.enrollment_id = e.id AND k.until >= $4) \
                 ORDER BY e.priority, e.next_run_at, e.id LIMIT $5{skip_locked}"
            )
        };
        // (`WHERE true`: without a WHERE, SQLite reads the ON of ON CONFLICT as a join's.)
        let lease = |from: &str| {
            format!(
                "INSERT INTO claims (enrollment_id, owner, until) SELECT id, $1, $2 FROM {from} WHERE true \
                 ON CONFLICT (enrollment_id) DO UPDATE SET owner = excluded.owner, until = excluded.until \
                 WHERE claims.until < $4 \
                 RETURNING enrollment_id"
            )
        };
        let (cursor_due, cursor_id) = after.map_or((0, 0), |c| (c.next_run_at, c.id));
        let mut claimed: Vec<Claimed> = Vec::new();
        for (priority, bounded) in passes {
            let want = limit.saturating_sub(claimed.len());
            if want == 0 {
                break;
            }
            match &self.pool {
                // Each statement on the one write connection waits its turn behind the
                // outcome commits, so the leases are taken by one statement and the rows
                // loaded from a read connection (SQLite has no RETURNING inside a WITH).
                Pool::Sqlite(pools) => {
                    let sql = lease(&format!("({})", pick(priority, bounded, "e.id", "")));
                    let mut query = sqlx::query_scalar(&sql)
                        .bind(owner)
                        .bind(ms(lease_until))
                        .bind(mailbox)
                        .bind(ms(now))
                        .bind(want as i64);
                    if bounded {
                        query = query.bind(cursor_due).bind(cursor_id);
                    }
                    let ids: Vec<i64> = query.fetch_all(&pools.write).await?;
                    if ids.is_empty() {
                        continue;
                    }
                    let mut got = self.claimed_by_id(&ids).await?;
                    // In the order claimed: follow-ups first, then by due time.
                    let position: HashMap<i64, usize> =
                        ids.iter().enumerate().map(|(n, id)| (*id, n)).collect();
                    got.sort_by_key(|c| {
                        position
                            .get(&c.enrollment.id)
                            .copied()
                            .unwrap_or(usize::MAX)
                    });
                    claimed.extend(got);
                }
                // Concurrent daemons skip each other's rows (SKIP LOCKED). One round trip
                // picks the rows, takes their leases and returns them with their contacts:
                // the outer SELECT reads the rows the walk locked, so nothing is looked up
                // twice. (`IN (0, 1)` would sort the whole due set: one pass a priority.)
                Pool::Postgres(p) => {
                    let sql = format!(
                        "WITH picked AS ({}), got AS ({}) \
                         SELECT {ENROLLMENT_COLUMNS}, {CLAIMED_CONTACT_COLUMNS} \
                         FROM picked e JOIN got ON got.enrollment_id = e.id JOIN contacts c ON c.id = e.contact_id \
                         ORDER BY e.next_run_at, e.id",
                        pick(priority, bounded, "e.*", " FOR UPDATE OF e SKIP LOCKED"),
                        lease("picked"),
                    );
                    let mut query = sqlx::query(&sql)
                        .bind(owner)
                        .bind(ms(lease_until))
                        .bind(mailbox)
                        .bind(ms(now))
                        .bind(want as i64);
                    if bounded {
                        query = query.bind(cursor_due).bind(cursor_id);
                    }
                    for row in &query.fetch_all(p).await? {
                        claimed.push(claimed_from_row(row)?);
                    }
                }
            }
        }
        Ok(claimed)
    }

    /// Enrollments with their contacts, in one statement: what [`Store::claim`] loads
    /// after taking the leases (public for the claim bench).
    pub async fn claimed_by_id(&self, ids: &[i64]) -> Result<Vec<Claimed>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {ENROLLMENT_COLUMNS}, {CLAIMED_CONTACT_COLUMNS} FROM enrollments e JOIN contacts c ON c.id = e.contact_id WHERE e.id IN ("
                ));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for row in qb.build().fetch_all(p).await? {
                    out.push(claimed_from_row(&row)?);
                }
            });
        }
        Ok(out)
    }

    pub async fn contacts_by_id(&self, ids: &[i64]) -> Result<Vec<Contact>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE id IN ("));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for row in qb.build().fetch_all(p).await? {
                    out.push(contact_from_row(&row)?);
                }
            });
        }
        Ok(out)
    }

    /// Commits the batch's messages as `sending`, in one transaction that re-checks each
    /// enrollment is still active, still at that step, still held by this daemon, and
    /// that its address is not suppressed. Only the returned messages may be sent; the
    /// rest were stopped, paused or already sent meanwhile. A step that was deferred
    /// (4xx) goes back to `sending` under its first Message-ID.
    pub async fn begin_sends(
        &self,
        items: &[Begin],
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Begun>> {
        self.write_sends(&[], items, owner, now, lease_until).await
    }

    /// Records outcomes: message status, the enrollment's new state, events; one
    /// transaction per call. With `owner`, enrollments this daemon no longer holds are
    /// left as they are (their message status and events are still recorded).
    pub async fn finish_sends(
        &self,
        items: &[Finish],
        owner: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            finish_in_tx!(tx, items, owner, now);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Group commit: the outcomes of messages that went out ([`Store::finish_sends`]) and
    /// the `sending` rows of the next batch ([`Store::begin_sends`]), in one transaction.
    /// The order of durability holds for both (an outcome is only known after its SMTP,
    /// and the batch is sent only after this returns); on SQLite the one write connection
    /// is taken once for both. On an error none of the batch is `sending` (so none of it
    /// may be sent), and the outcomes have been committed on their own if they could be:
    /// they say what a server already did, and a failure of the batch's half (a
    /// Message-ID or tracking key taken, say) must not leave them to come back as in
    /// doubt. The caller must not hand the same outcomes in again after an error.
    pub async fn write_sends(
        &self,
        finishes: &[Finish],
        begins: &[Begin],
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Begun>> {
        if finishes.is_empty() && begins.is_empty() {
            return Ok(Vec::new());
        }
        let together = async {
            let mut out = Vec::with_capacity(begins.len());
            with_pool!(self, p => {
                let mut tx = p.begin_write().await?;
                if !finishes.is_empty() {
                    finish_in_tx!(tx, finishes, Some(owner), now);
                }
                if !begins.is_empty() {
                    begin_in_tx!(tx, begins, owner, now, lease_until, out);
                }
                tx.commit().await?;
            });
            Ok(out)
        };
        match together.await {
            Err(e) if !finishes.is_empty() && !begins.is_empty() => {
                match self.finish_held(finishes, owner, now).await {
                    Ok(n) => warn!(
                        error = %e,
                        outcomes = n,
                        "the next batch's `sending` rows could not be written; the outcomes were recorded on their own"
                    ),
                    Err(again) => {
                        warn!(error = %again, "outcomes could not be recorded either; those messages will come back as in doubt")
                    }
                }
                Err(e)
            }
            r => r,
        }
    }

    /// [`Store::finish_sends`] for the outcomes whose enrollments this daemon still
    /// holds. After a failed group commit that is all of them, unless the commit did
    /// land and only its answer was lost (a connection dropped during COMMIT): then the
    /// claims are gone with it, and recording the outcomes again would count each `sent`
    /// event twice. Returns how many were recorded.
    async fn finish_held(
        &self,
        finishes: &[Finish],
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut held = std::collections::HashSet::new();
        for chunk in finishes.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new("SELECT enrollment_id FROM claims WHERE owner = ");
                qb.push_bind(owner.to_string()).push(" AND enrollment_id IN (");
                let mut sep = qb.separated(", ");
                for f in chunk {
                    sep.push_bind(f.enrollment.id);
                }
                qb.push(")");
                let ids: Vec<i64> = qb.build_query_scalar().fetch_all(p).await?;
                held.extend(ids);
            });
        }
        let still: Vec<Finish> = finishes
            .iter()
            .filter(|f| held.contains(&f.enrollment.id))
            .cloned()
            .collect();
        self.finish_sends(&still, Some(owner), now).await?;
        Ok(still.len())
    }

    /// Whether this daemon still holds the claim on an enrollment: checked just before
    /// a message goes to SMTP, because whoever stops or pauses an enrollment meanwhile
    /// (the reply watcher, an unsubscribe, an operator, in any process) takes its claim
    /// away. One primary-key read, outside any write transaction.
    pub async fn holds_claim(&self, enrollment_id: i64, owner: &str) -> Result<bool> {
        with_read_pool!(self, p => {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM claims WHERE enrollment_id = $1 AND owner = $2")
                .bind(enrollment_id)
                .bind(owner)
                .fetch_one(p)
                .await?;
            Ok(n > 0)
        })
    }

    /// The message already recorded for an enrollment's step, if any.
    pub async fn step_message(
        &self,
        enrollment_id: i64,
        step_id: &str,
    ) -> Result<Option<StepMessage>> {
        with_read_pool!(self, p => {
            let row = sqlx::query(
                "SELECT id, message_id, subject, status, sent_at FROM messages WHERE enrollment_id = $1 AND step_id = $2",
            )
            .bind(enrollment_id)
            .bind(step_id)
            .fetch_optional(p)
            .await?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(StepMessage {
                    row_id: r.try_get("id")?,
                    message_id: r.try_get("message_id")?,
                    subject: r.try_get("subject")?,
                    status: {
                        let s: String = r.try_get("status")?;
                        MessageStatus::parse(&s).ok_or(super::Error::Corrupt {
                            what: "message status",
                            detail: format!("'{s}' is not one this version knows"),
                        })?
                    },
                    sent_at: r.try_get::<Option<i64>, _>("sent_at")?.map(from_ms),
                })),
            }
        })
    }

    /// Messages left in `sending` past their lease belong to a daemon that died between
    /// committing `sending` and committing the outcome: SMTP may have accepted them.
    /// They become `in_doubt` and their enrollments are held until an operator (or, with
    /// IMAP, a look into the Sent folder) decides. Never re-sent blindly.
    pub async fn mark_in_doubt(&self, now: DateTime<Utc>) -> Result<Recovered> {
        self.take_over(&[], now).await
    }

    /// Takes over the work of daemons known to be dead (see [`Store::dead_owners`]) at
    /// once, without waiting out their leases, and does what [`Store::mark_in_doubt`]
    /// does for theirs: of their messages in `sending`, one whose end of data may have
    /// reached the server becomes in doubt; one the server had accepted is returned to
    /// be counted as sent; one that never left is simply due again (same Message-ID).
    /// Their claims go, so that what they had claimed is due again.
    pub async fn take_over(&self, dead: &[String], now: DateTime<Utc>) -> Result<Recovered> {
        // On SQLite the dead daemons' marks are in their journals: into the column first.
        let journaled = self.dead_journals(dead);
        let (found, accepted, unsent) = with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            for chunk in journaled.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(
                    "UPDATE messages SET wire = CASE v.column2 WHEN 'refused' THEN NULL ELSE v.column2 END FROM (",
                );
                qb.push_values(chunk.iter(), |mut b, (id, w)| {
                    b.push_bind(*id).push_bind(w.as_str());
                });
                qb.push(") AS v WHERE messages.id = v.column1 AND messages.status = 'sending'");
                qb.build().execute(&mut *tx).await?;
            }
            // The facts: every `sending` row past its lease, claimed by a dead daemon,
            // or begun by one. What becomes of each is the engine's to decide.
            let mut qb = QueryBuilder::new(
                "SELECT m.id, m.enrollment_id, m.message_id, m.wire, m.began_by, m.locked_until, k.owner \
                 FROM messages m LEFT JOIN claims k ON k.enrollment_id = m.enrollment_id \
                 WHERE m.status = 'sending' AND (m.locked_until < ",
            );
            qb.push_bind(ms(now));
            for column in ["k.owner", "m.began_by"] {
                if !dead.is_empty() {
                    qb.push(format!(" OR {column} IN ("));
                    let mut sep = qb.separated(", ");
                    for owner in dead {
                        sep.push_bind(owner.clone());
                    }
                    qb.push(")");
                }
            }
            qb.push(") ORDER BY m.id");
            let is_dead = |o: &Option<String>| o.as_ref().is_some_and(|o| dead.contains(o));
            let mut unsent: Vec<(i64, i64)> = Vec::new();
            let mut doubtful: Vec<(i64, i64, String)> = Vec::new();
            let mut accepted = Vec::new();
            for r in qb.build().fetch_all(&mut *tx).await? {
                let wire: Option<String> = r.try_get("wire")?;
                let a = engine::Abandoned {
                    // A mark this build does not know may mean it left.
                    wire: wire.map(|w| Wire::parse(&w).unwrap_or(Wire::Left)),
                    began_by_dead: is_dead(&r.try_get("began_by")?),
                    claimed_by_dead: is_dead(&r.try_get("owner")?),
                    lease_expired: r
                        .try_get::<Option<i64>, _>("locked_until")?
                        .is_some_and(|t| t < ms(now)),
                };
                let row: (i64, i64) = (r.try_get("id")?, r.try_get("enrollment_id")?);
                match engine::recover(&a) {
                    engine::Recovery::Leave => {}
                    engine::Recovery::SendAgain => unsent.push(row),
                    engine::Recovery::Accepted => {
                        accepted.push(row.0);
                        doubtful.push((row.0, row.1, r.try_get("message_id")?));
                    }
                    engine::Recovery::InDoubt => {
                        doubtful.push((row.0, row.1, r.try_get("message_id")?))
                    }
                }
            }
            // A message that never left: due again, its attempt not counted (it made
            // none); its enrollment, still active, is due again once its claim goes.
            for chunk in unsent.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(
                    "UPDATE messages SET status = 'deferred', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, locked_until = NULL, \
                     smtp_reply = 'not sent: its daemon stopped before its end of data', updated_at = ",
                );
                qb.push_bind(ms(now)).push(" WHERE status = 'sending' AND id IN (");
                let mut sep = qb.separated(", ");
                for (id, _) in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
                let mut qb = QueryBuilder::new("DELETE FROM claims WHERE enrollment_id IN (");
                let mut sep = qb.separated(", ");
                for (_, e) in chunk {
                    sep.push_bind(*e);
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            // A message that may have left: the engine's in-doubt transition, for the
            // message and for its enrollment as it is now.
            let mut found = Vec::new();
            for chunk in doubtful.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {} FROM enrollments e JOIN contacts c ON c.id = e.contact_id WHERE e.id IN (",
                    super::ENROLLMENT_COLUMNS
                ));
                let mut sep = qb.separated(", ");
                for (_, e, _) in chunk {
                    sep.push_bind(*e);
                }
                qb.push(")");
                let mut enrollments = HashMap::new();
                for r in qb.build().fetch_all(&mut *tx).await? {
                    let e = super::enrollment_from_row(&r)?;
                    enrollments.insert(e.id, e);
                }
                let mut finishes = Vec::new();
                for (row_id, enrollment_id, message_id) in chunk {
                    let Some(e) = enrollments.get(enrollment_id) else { continue };
                    let outcome = engine::Outcome::InDoubt {
                        at: now,
                        message_id: message_id.clone(),
                        reply: "its daemon stopped after its end of data was written".into(),
                    };
                    let Ok(Some(tr)) = engine::step(engine::Scope::Nothing, e, &engine::Input::Send(outcome), now) else {
                        continue;
                    };
                    finishes.push(Finish {
                        message: tr.message.map(|m| MessageUpdate { row_id: *row_id, status: m.status, smtp_reply: m.reply }),
                        enrollment: tr.enrollment,
                        events: tr.events.into_iter().map(|mut ev| { ev.message_id = Some(*row_id); ev }).collect(),
                    });
                    found.push(*row_id);
                }
                finish_in_tx!(tx, &finishes, None, now);
            }
            if !dead.is_empty() {
                let mut qb = QueryBuilder::new("DELETE FROM claims WHERE owner IN (");
                let mut sep = qb.separated(", ");
                for owner in dead {
                    sep.push_bind(owner.clone());
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            (found, accepted, unsent)
        });
        self.remove_journals(dead);
        let mut recovered = Recovered {
            unsent: unsent.len(),
            ..Recovered::default()
        };
        if found.is_empty() {
            return Ok(recovered);
        }
        for d in self.in_doubt().await? {
            if accepted.contains(&d.row_id) {
                recovered.accepted.push(d);
            } else if found.contains(&d.row_id) {
                recovered.in_doubt.push(d);
            }
        }
        Ok(recovered)
    }

    /// Marks where messages stand on the wire (see [`Wire`]), in one statement: each
    /// connection's message about to write its end of data, with how the one before it
    /// ended. A message is marked `left` only while it is `sending`, not yet left, and
    /// its enrollment's claim is still `owner`'s; returns the ids so marked. The caller
    /// writes the end of data only for those.
    pub async fn mark_wire(
        &self,
        marks: &[(i64, Wire)],
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<std::collections::HashSet<i64>> {
        let mut left = std::collections::HashSet::new();
        for chunk in marks.chunks(CHUNK) {
            with_pool!(self, p => {
                let mut qb = QueryBuilder::new(
                    "UPDATE messages SET wire = CASE v.column2 WHEN 'refused' THEN NULL ELSE v.column2 END, updated_at = ",
                );
                qb.push_bind(ms(now)).push(" FROM (");
                qb.push_values(chunk.iter(), |mut b, (id, w)| {
                    b.push_bind(*id).push_bind(w.as_str());
                });
                qb.push(
                    ") AS v WHERE messages.id = v.column1 AND messages.status = 'sending' AND \
                     ((v.column2 = 'left' AND messages.wire IS NULL \
                       AND EXISTS (SELECT 1 FROM claims k WHERE k.enrollment_id = messages.enrollment_id AND k.owner = ",
                );
                qb.push_bind(owner.to_string());
                qb.push(")) OR (v.column2 <> 'left' AND messages.wire = 'left')) RETURNING messages.id, messages.wire");
                for r in qb.build().fetch_all(p).await? {
                    if r.try_get::<Option<String>, _>("wire")?.as_deref() == Some("left") {
                        left.insert(r.try_get::<i64, _>("id")?);
                    }
                }
            });
        }
        Ok(left)
    }

    /// Every message in doubt.
    pub async fn in_doubt(&self) -> Result<Vec<InDoubt>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT m.id, m.message_id, m.enrollment_id, c.email, m.sequence, m.step_id, m.mailbox, m.updated_at \
                 FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.status = 'in_doubt' ORDER BY m.id",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(InDoubt {
                        row_id: r.try_get("id")?,
                        message_id: r.try_get("message_id")?,
                        enrollment_id: r.try_get("enrollment_id")?,
                        email: r.try_get("email")?,
                        sequence: r.try_get("sequence")?,
                        step_id: r.try_get("step_id")?,
                        mailbox: r.try_get("mailbox")?,
                        since: from_ms(r.try_get("updated_at")?),
                    })
                })
                .collect()
        })
    }

    /// Sends counted against a mailbox's daily limit since `since` (the start of its
    /// local day), including those in flight, and the time of its latest send.
    pub async fn mailbox_usage(
        &self,
        mailbox: &str,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>)> {
        with_read_pool!(self, p => {
            let row = sqlx::query("SELECT count(*) AS n, max(sent_at) AS last FROM messages WHERE mailbox = $1 AND sent_at >= $2")
                .bind(mailbox)
                .bind(ms(since))
                .fetch_one(p)
                .await?;
            Ok((row.try_get("n")?, row.try_get::<Option<i64>, _>("last")?.map(from_ms)))
        })
    }

    /// When the mailbox's next enrollment falls due (ignoring claims).
    pub async fn next_due(&self, mailbox: &str) -> Result<Option<DateTime<Utc>>> {
        let mut best: Option<i64> = None;
        for priority in [0i64, 1] {
            let v: Option<i64> = with_read_pool!(self, p => sqlx::query_scalar(
                "SELECT min(next_run_at) FROM enrollments WHERE state = 'active' AND mailbox = $1 AND priority = $2",
            )
            .bind(mailbox)
            .bind(priority)
            .fetch_one(p)
            .await?);
            best = match (best, v) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(best.map(from_ms))
    }

    /// A node number for a scheduler that starts now (see migration 0006): it makes the
    /// tracking keys of this scheduler differ from those of any other that runs at the
    /// same time, unless 1,024 schedulers started while one of them kept running.
    ///
    /// Rows of starts older than [`NODES_KEPT`] go: ids are never reused (AUTOINCREMENT
    /// on SQLite, a sequence on PostgreSQL), so only the count matters, and without pruning `run --once`
    /// from cron every minute would add half a million rows a year.
    pub async fn allocate_node(&self, owner: &str, now: DateTime<Utc>) -> Result<u16> {
        let id: i64 = with_pool!(self, p => {
            let id = sqlx::query_scalar("INSERT INTO nodes (owner, started_at) VALUES ($1, $2) RETURNING id")
                .bind(owner)
                .bind(ms(now))
                .fetch_one(p)
                .await?;
            sqlx::query("DELETE FROM nodes WHERE started_at < $1")
                .bind(ms(now - NODES_KEPT))
                .execute(p)
                .await?;
            id
        });
        Ok((id.rem_euclid(1024)) as u16)
    }

    /// Releases claims this daemon holds without changing anything else (shutdown).
    pub async fn release_claims(&self, owner: &str) -> Result<()> {
        with_pool!(self, p => sqlx::query("DELETE FROM claims WHERE owner = $1")
            .bind(owner)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }
}
