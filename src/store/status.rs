//! Counts for `followup status`: per sequence and step, messages by status and
//! enrollments by state, plus the reasons enrollments are held, stopped or failed.

use sqlx::Row;

use super::{Pool, Result, Store};

/// One count: (sequence, step, what, n). `what` is a message status (`sent`, ...) or an
/// enrollment state (`active`, `held`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Count {
    pub sequence: String,
    pub step_id: String,
    pub what: String,
    pub n: i64,
}

/// Everything `status` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub messages: Vec<Count>,
    pub enrollments: Vec<Count>,
    /// Replies, auto-replies, bounces and unsubscribes per step whose mail they answered
    /// (distinct enrollments).
    pub responses: Vec<Count>,
    /// Reply watchers: (mailbox, folder, state, detail).
    pub watchers: Vec<(String, String, String, Option<String>)>,
    /// Mailboxes paused for bouncing too much: (mailbox, reason).
    pub paused_mailboxes: Vec<(String, String)>,
    /// (sequence, state, reason, n) for held, stopped and failed enrollments.
    pub reasons: Vec<(String, String, String, i64)>,
}

impl Store {
    pub async fn status(&self, sequence: Option<&str>) -> Result<Status> {
        let filter = if sequence.is_some() {
            " WHERE sequence = $1"
        } else {
            ""
        };
        let mut status = Status::default();
        let msg_sql = format!("SELECT sequence, step_id, status AS what, count(*) AS n FROM messages{filter} GROUP BY sequence, step_id, status");
        let enr_sql = format!("SELECT sequence, step_id, state AS what, count(*) AS n FROM enrollments{filter} GROUP BY sequence, step_id, state");
        let reason_sql = format!(
            "SELECT sequence, state, reason, count(*) AS n FROM enrollments{} reason IS NOT NULL GROUP BY sequence, state, reason ORDER BY n DESC",
            if sequence.is_some() { " WHERE sequence = $1 AND" } else { " WHERE" }
        );
        for (sql, out) in [
            (&msg_sql, &mut status.messages),
            (&enr_sql, &mut status.enrollments),
        ] {
            let rows = with_pool!(self, p => {
                let mut q = sqlx::query(sql);
                if let Some(s) = sequence {
                    q = q.bind(s);
                }
                let rows = q.fetch_all(p).await?;
                rows.iter()
                    .map(|r| Ok(Count { sequence: r.try_get("sequence")?, step_id: r.try_get("step_id")?, what: r.try_get("what")?, n: r.try_get("n")? }))
                    .collect::<Result<Vec<_>>>()?
            });
            out.extend(rows);
        }
        status.reasons = with_pool!(self, p => {
            let mut q = sqlx::query(&reason_sql);
            if let Some(s) = sequence {
                q = q.bind(s);
            }
            let rows = q.fetch_all(p).await?;
            rows.iter()
                .map(|r| Ok((r.try_get("sequence")?, r.try_get("state")?, r.try_get("reason")?, r.try_get("n")?)))
                .collect::<Result<Vec<_>>>()?
        });
        let resp_sql = format!(
            "SELECT m.sequence AS sequence, m.step_id AS step_id, ev.kind AS what, count(DISTINCT ev.enrollment_id) AS n \
             FROM events ev JOIN messages m ON m.id = ev.message_id \
             WHERE ev.kind IN ('replied', 'auto_replied', 'bounced', 'unsubscribed', 'manual'){} \
             GROUP BY m.sequence, m.step_id, ev.kind",
            if sequence.is_some() { " AND m.sequence = $1" } else { "" }
        );
        status.responses = with_pool!(self, p => {
            let mut q = sqlx::query(&resp_sql);
            if let Some(s) = sequence {
                q = q.bind(s);
            }
            let rows = q.fetch_all(p).await?;
            rows.iter()
                .map(|r| Ok(Count { sequence: r.try_get("sequence")?, step_id: r.try_get("step_id")?, what: r.try_get("what")?, n: r.try_get("n")? }))
                .collect::<Result<Vec<_>>>()?
        });
        status.watchers = self
            .watch_states()
            .await?
            .into_iter()
            .map(|w| (w.mailbox, w.folder, w.state, w.detail))
            .collect();
        status.paused_mailboxes = self.mailbox_pauses().await?;
        Ok(status)
    }
}
