//! The reply watcher's statements: checkpoints per IMAP folder, matching what arrived
//! to enrollments, and recording each inbound message with its effects in one
//! transaction (so a message is acted on exactly once, even across restarts and
//! UIDVALIDITY changes).

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};

use super::{
    contact_from_row, enrollment_from_row, events_of_applied, ms, BeginWrite, Contact, Enrollment,
    EnrollmentUpdate, NewEvent, Pool, Result, Store, CHUNK, CONTACT_COLUMNS, ENROLLMENT_COLUMNS,
};

/// Moves a folder's checkpoint: ($1 mailbox, $2 folder, $3 uidvalidity, $4 last UID,
/// $5 now).
const SET_CHECKPOINT: &str = "INSERT INTO mailbox_state (mailbox, folder, uidvalidity, last_uid, updated_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (mailbox, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity, \
     last_uid = excluded.last_uid, updated_at = excluded.updated_at";

/// Where a watcher is in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub uidvalidity: i64,
    pub last_uid: i64,
}

/// One inbound message and everything it changes.
#[derive(Debug, Clone, Default)]
pub struct InboundRecord {
    pub mailbox: String,
    pub folder: String,
    pub uid: i64,
    pub message_id: String,
    pub kind: String,
    pub from: Option<String>,
    pub contact_id: Option<i64>,
    pub enrollment_id: Option<i64>,
    /// What was decided and why, for `status` and the timeline.
    pub decision: String,
    pub updates: Vec<EnrollmentUpdate>,
    pub events: Vec<NewEvent>,
    /// (address or @domain, reason)
    pub suppress: Vec<(String, String)>,
    /// Contacts whose soft-bounce count goes up by one.
    pub soft_bounces: Vec<i64>,
}

/// A message a watcher could not process and set aside, for `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SetAside {
    pub mailbox: String,
    pub folder: String,
    pub uidvalidity: i64,
    pub uid: i64,
    pub attempts: i64,
    /// The last attempt's error.
    pub error: String,
    pub at: DateTime<Utc>,
}

/// A watcher's state for `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WatchState {
    pub mailbox: String,
    pub folder: String,
    pub state: String,
    pub detail: Option<String>,
    pub last_uid: i64,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    pub async fn checkpoint(&self, mailbox: &str, folder: &str) -> Result<Option<Checkpoint>> {
        with_read_pool!(self, p => {
            let row = sqlx::query("SELECT uidvalidity, last_uid FROM mailbox_state WHERE mailbox = $1 AND folder = $2")
                .bind(mailbox)
                .bind(folder)
                .fetch_optional(p)
                .await?;
            match row {
                Some(r) => Ok(Some(Checkpoint { uidvalidity: r.try_get("uidvalidity")?, last_uid: r.try_get("last_uid")? })),
                None => Ok(None),
            }
        })
    }

    pub async fn set_checkpoint(
        &self,
        mailbox: &str,
        folder: &str,
        c: Checkpoint,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, p => {
            sqlx::query(SET_CHECKPOINT)
            .bind(mailbox)
            .bind(folder)
            .bind(c.uidvalidity)
            .bind(c.last_uid)
            .bind(ms(now))
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Records the watcher's state (connected, idle, polling, reconnecting: error).
    pub async fn set_watch_state(
        &self,
        mailbox: &str,
        folder: &str,
        state: &str,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO mailbox_state (mailbox, folder, state, detail, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (mailbox, folder) DO UPDATE SET state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at",
            )
            .bind(mailbox)
            .bind(folder)
            .bind(state)
            .bind(detail)
            .bind(ms(now))
            .execute(p)
            .await?;
            Ok(())
        })
    }

    pub async fn watch_states(&self) -> Result<Vec<WatchState>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query("SELECT mailbox, folder, state, detail, last_uid, updated_at FROM mailbox_state ORDER BY mailbox, folder")
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(WatchState {
                        mailbox: r.try_get("mailbox")?,
                        folder: r.try_get("folder")?,
                        state: r.try_get("state")?,
                        detail: r.try_get("detail")?,
                        last_uid: r.try_get("last_uid")?,
                        updated_at: super::from_ms(r.try_get("updated_at")?),
                    })
                })
                .collect()
        })
    }

    /// Counts one failed attempt at processing the message at `uid`, with its error, and
    /// returns how many attempts have failed so far (in this folder's numbering).
    pub async fn count_inbound_failure(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: i64,
        uid: i64,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        with_pool!(self, p => {
            let attempts: i64 = sqlx::query_scalar(
                "INSERT INTO inbound_failures (mailbox, folder, uidvalidity, uid, attempts, error, first_at, last_at) \
                 VALUES ($1, $2, $3, $4, 1, $5, $6, $6) \
                 ON CONFLICT (mailbox, folder, uidvalidity, uid) DO UPDATE SET attempts = inbound_failures.attempts + 1, \
                 error = excluded.error, last_at = excluded.last_at RETURNING attempts",
            )
            .bind(mailbox)
            .bind(folder)
            .bind(uidvalidity)
            .bind(uid)
            .bind(error)
            .bind(ms(now))
            .fetch_one(p)
            .await?;
            Ok(attempts)
        })
    }

    /// Sets a message aside: marks its failure record and moves the folder's checkpoint
    /// past it, in one transaction, so the watcher goes on with the next message and a
    /// restart does not fetch this one again.
    pub async fn set_aside(
        &self,
        mailbox: &str,
        folder: &str,
        checkpoint: Checkpoint,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "UPDATE inbound_failures SET set_aside_at = $1 \
                 WHERE mailbox = $2 AND folder = $3 AND uidvalidity = $4 AND uid = $5",
            )
            .bind(ms(now))
            .bind(mailbox)
            .bind(folder)
            .bind(checkpoint.uidvalidity)
            .bind(checkpoint.last_uid)
            .execute(&mut *tx)
            .await?;
            sqlx::query(SET_CHECKPOINT)
            .bind(mailbox)
            .bind(folder)
            .bind(checkpoint.uidvalidity)
            .bind(checkpoint.last_uid)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Messages the watchers set aside, newest first (for `status`).
    pub async fn set_aside_messages(&self) -> Result<Vec<SetAside>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT mailbox, folder, uidvalidity, uid, attempts, error, set_aside_at FROM inbound_failures \
                 WHERE set_aside_at IS NOT NULL ORDER BY set_aside_at DESC, uid DESC",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(SetAside {
                        mailbox: r.try_get("mailbox")?,
                        folder: r.try_get("folder")?,
                        uidvalidity: r.try_get("uidvalidity")?,
                        uid: r.try_get("uid")?,
                        attempts: r.try_get("attempts")?,
                        error: r.try_get("error")?,
                        at: super::from_ms(r.try_get("set_aside_at")?),
                    })
                })
                .collect()
        })
    }

    /// Enrollment and contact ids of our messages with these Message-IDs.
    pub async fn our_messages(&self, message_ids: &[String]) -> Result<Vec<(String, i64, i64)>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for chunk in message_ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new("SELECT message_id, enrollment_id, contact_id FROM messages WHERE message_id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.clone());
                }
                qb.push(")");
                for r in qb.build().fetch_all(p).await? {
                    out.push((r.try_get("message_id")?, r.try_get("enrollment_id")?, r.try_get("contact_id")?));
                }
            });
        }
        Ok(out)
    }

    /// Enrollments of these contacts that can still send (active, paused or held).
    pub async fn live_enrollments(&self, contact_ids: &[i64]) -> Result<Vec<Enrollment>> {
        self.enrollments_where(
            "e.state IN ('active', 'paused', 'held') AND e.contact_id",
            contact_ids,
        )
        .await
    }

    /// Contacts at a domain (for a colleague's reply).
    pub async fn contacts_at_domain(&self, domain: &str) -> Result<Vec<Contact>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(&format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE domain = $1"))
                .bind(domain)
                .fetch_all(p)
                .await?;
            rows.iter().map(contact_from_row).collect()
        })
    }

    /// Records an inbound message, its effects and the folder checkpoint in one
    /// transaction. Returns false when this Message-ID was already recorded for this
    /// folder (nothing is applied twice; the checkpoint still advances).
    pub async fn record_inbound(
        &self,
        r: &InboundRecord,
        checkpoint: Checkpoint,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(SET_CHECKPOINT)
            .bind(&r.mailbox)
            .bind(&r.folder)
            .bind(checkpoint.uidvalidity)
            .bind(checkpoint.last_uid)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
            let inserted: u64 = sqlx::query(
                "INSERT INTO inbound (mailbox, folder, uid, message_id, kind, from_addr, contact_id, enrollment_id, decision, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (mailbox, folder, message_id) DO NOTHING",
            )
            .bind(&r.mailbox)
            .bind(&r.folder)
            .bind(r.uid)
            .bind(&r.message_id)
            .bind(&r.kind)
            .bind(&r.from)
            .bind(r.contact_id)
            .bind(r.enrollment_id)
            .bind(&r.decision)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                tx.commit().await?;
                return Ok(false);
            }
            // Replies win over claims: no lease guard, and the lease is cleared, so a
            // step claimed but not yet `sending` can no longer begin (begin_sends checks
            // the state and the claim in the transaction that writes `sending`).
            let mut applied = Vec::new();
            update_enrollments!(tx, r.updates, now, None, Some(&mut applied));
            if applied.len() < r.updates.len() {
                // An enrollment moved since it was read (a send finished it, an
                // operator paused it): nothing of this message is written, and the
                // caller decides again on what is there now.
                return Err(super::Error::Moved);
            }
            insert_events!(tx, r.events, now);
            for (pattern, reason) in &r.suppress {
                sqlx::query("INSERT INTO suppressions (pattern, reason, at) VALUES ($1, $2, $3) ON CONFLICT (pattern) DO NOTHING")
                    .bind(pattern)
                    .bind(reason)
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await?;
                if !pattern.starts_with('@') {
                    sqlx::query("UPDATE contacts SET suppressed_reason = $1, suppressed_at = $2 WHERE email = $3 AND suppressed_at IS NULL")
                        .bind(reason)
                        .bind(ms(now))
                        .bind(pattern)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for id in &r.soft_bounces {
                sqlx::query("UPDATE contacts SET soft_bounces = soft_bounces + 1 WHERE id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<bool, super::Error>(true)
        })?;
        Ok(true)
    }

    /// The soft-bounce count of a contact.
    pub async fn soft_bounces(&self, contact_id: i64) -> Result<i64> {
        with_read_pool!(self, p => Ok(sqlx::query_scalar("SELECT soft_bounces FROM contacts WHERE id = $1").bind(contact_id).fetch_one(p).await?))
    }

    /// Paused enrollments whose pause has ended (at most `limit`, oldest first).
    pub async fn pauses_ended(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Enrollment>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN contacts c ON c.id = e.contact_id \
                 WHERE e.state = 'paused' AND e.paused_until IS NOT NULL AND e.paused_until <= $1 \
                 ORDER BY e.paused_until LIMIT $2"
            ))
            .bind(ms(now))
            .bind(limit as i64)
            .fetch_all(p)
            .await?;
            rows.iter().map(enrollment_from_row).collect()
        })
    }

    /// The live enrollments of an address, or of every contact at `@domain`.
    pub async fn live_enrollments_matching(&self, pattern: &str) -> Result<Vec<Enrollment>> {
        let (col, val) = match pattern.strip_prefix('@') {
            Some(d) => ("c.domain", d),
            None => ("c.email", pattern),
        };
        with_read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN contacts c ON c.id = e.contact_id \
                 WHERE e.state IN ('active', 'paused', 'held') AND {col} = $1 ORDER BY e.id"
            ))
            .bind(val)
            .fetch_all(p)
            .await?;
            rows.iter().map(enrollment_from_row).collect()
        })
    }

    /// Adds an address or `@domain` to the suppression list, marks matching contacts,
    /// and writes the engine's changes to their live enrollments, in one transaction.
    /// Returns the enrollments stopped. An enrollment begun after the engine decided
    /// is stopped by the send path, which checks the list before every send.
    pub async fn suppress(
        &self,
        pattern: &str,
        reason: &str,
        updates: &[EnrollmentUpdate],
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let domain = pattern.strip_prefix('@');
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query("INSERT INTO suppressions (pattern, reason, at) VALUES ($1, $2, $3) ON CONFLICT (pattern) DO UPDATE SET reason = excluded.reason")
                .bind(pattern)
                .bind(reason)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
            if domain.is_none() {
                sqlx::query("UPDATE contacts SET suppressed_reason = $1, suppressed_at = $2 WHERE email = $3 AND suppressed_at IS NULL")
                    .bind(reason)
                    .bind(ms(now))
                    .bind(pattern)
                    .execute(&mut *tx)
                    .await?;
            }
            // Writing a change also drops its claim: a send in flight to the address
            // cannot write over the stop.
            let mut applied = Vec::new();
            update_enrollments!(tx, updates, now, None, Some(&mut applied));
            let events = events_of_applied(events, updates, &applied);
            insert_events!(tx, events, now);
            tx.commit().await?;
            Ok(applied.len() as u64)
        })
    }

    /// Removes an address or `@domain` from the suppression list (stopped enrollments
    /// stay stopped: enroll again by hand if that is meant).
    pub async fn unsuppress(&self, pattern: &str) -> Result<bool> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let n = sqlx::query("DELETE FROM suppressions WHERE pattern = $1").bind(pattern).execute(&mut *tx).await?.rows_affected();
            let m = if pattern.starts_with('@') { 0 } else {
                sqlx::query("UPDATE contacts SET suppressed_reason = NULL, suppressed_at = NULL WHERE email = $1 AND suppressed_at IS NOT NULL")
                    .bind(pattern)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            };
            tx.commit().await?;
            Ok(n + m > 0)
        })
    }
}

impl Store {
    /// Why a mailbox is paused, if it is.
    pub async fn mailbox_pause(&self, mailbox: &str) -> Result<Option<String>> {
        with_read_pool!(self, p => Ok(sqlx::query_scalar("SELECT reason FROM mailbox_pauses WHERE mailbox = $1").bind(mailbox).fetch_optional(p).await?))
    }

    pub async fn mailbox_pauses(&self) -> Result<Vec<(String, String)>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query("SELECT mailbox, reason FROM mailbox_pauses ORDER BY mailbox").fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.try_get("mailbox")?, r.try_get("reason")?))).collect()
        })
    }

    pub async fn pause_mailbox(
        &self,
        mailbox: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        with_pool!(self, p => Ok(sqlx::query("INSERT INTO mailbox_pauses (mailbox, reason, at) VALUES ($1, $2, $3) ON CONFLICT (mailbox) DO NOTHING")
            .bind(mailbox)
            .bind(reason)
            .bind(ms(now))
            .execute(p)
            .await?
            .rows_affected() > 0))
    }

    pub async fn resume_mailbox(&self, mailbox: &str) -> Result<bool> {
        with_pool!(self, p => Ok(sqlx::query("DELETE FROM mailbox_pauses WHERE mailbox = $1").bind(mailbox).execute(p).await?.rows_affected() > 0))
    }

    /// Of the mailbox's last `window` sent messages, how many bounced permanently.
    pub async fn recent_bounces(&self, mailbox: &str, window: u32) -> Result<(i64, i64)> {
        with_read_pool!(self, p => {
            let row = sqlx::query(
                "SELECT count(*) AS sent, \
                 coalesce(sum(CASE WHEN EXISTS (SELECT 1 FROM contacts c WHERE c.id = recent.contact_id AND c.suppressed_reason = 'bounced') THEN 1 ELSE 0 END), 0) AS bounced \
                 FROM (SELECT contact_id FROM messages WHERE mailbox = $1 AND status = 'sent' ORDER BY sent_at DESC LIMIT $2) AS recent",
            )
            .bind(mailbox)
            .bind(window as i64)
            .fetch_one(p)
            .await?;
            Ok((row.try_get("sent")?, row.try_get("bounced")?))
        })
    }

    /// The latest sent message of each enrollment (replies are counted against it).
    pub async fn last_sent_messages(
        &self,
        enrollment_ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, i64>> {
        let mut out = std::collections::HashMap::new();
        for chunk in enrollment_ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new("SELECT enrollment_id, max(id) AS id FROM messages WHERE status = 'sent' AND enrollment_id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") GROUP BY enrollment_id");
                for r in qb.build().fetch_all(p).await? {
                    out.insert(r.try_get::<i64, _>("enrollment_id")?, r.try_get::<i64, _>("id")?);
                }
            });
        }
        Ok(out)
    }

    /// When the mailbox first tried to send a message (its oldest message row), if ever: a
    /// watcher's first start looks at mail from then on.
    pub async fn first_send_at(&self, mailbox: &str) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = with_pool!(self, p => sqlx::query_scalar(
            "SELECT min(created_at) FROM messages WHERE mailbox = $1",
        )
        .bind(mailbox)
        .fetch_one(p)
        .await?);
        Ok(v.map(super::from_ms))
    }
}
