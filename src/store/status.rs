//! Counts for `followup status`: per sequence and step, messages by status and
//! enrollments by state, plus the reasons enrollments are held, stopped or failed.

use sqlx::Row;

use crate::model::{Cause, CauseKind};

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
    /// Messages the reply watchers could not process and set aside, newest first.
    pub set_aside: Vec<super::SetAside>,
    /// (sequence, state, reason, n) for held, stopped and failed enrollments.
    pub reasons: Vec<(String, String, String, i64)>,
    /// Per sequence, step and variant: what sent mails led to.
    pub funnel: Vec<Funnel>,
    /// Unique clicks per link.
    pub links: Vec<LinkClicks>,
    /// Steps skipped because their `if:` did not hold.
    pub skipped: Vec<Count>,
    /// Machine hits by reason: (sequence, kind, reason, n).
    pub machine: Vec<(String, String, String, i64)>,
}

/// What the mails of one step (and variant) led to. Counts are unique messages: a
/// person who opens five times is one open. `*_human` leave out hits labelled as
/// machines (image proxies, link scanners); a click counts as an open too, since
/// images are often blocked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Funnel {
    // Reports nest a funnel under its sequence and step; only the counts (and the
    // variant, if any) are its own.
    #[serde(skip)]
    pub sequence: String,
    #[serde(skip)]
    pub step_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub sent: i64,
    pub opened_human: i64,
    pub opened_total: i64,
    pub clicked_human: i64,
    pub clicked_total: i64,
    pub replied: i64,
    pub auto_replied: i64,
    pub bounced: i64,
    pub unsubscribed: i64,
}

/// Adds another funnel's counts (a step's total over its variants); the names stay.
impl std::ops::AddAssign<&Funnel> for Funnel {
    fn add_assign(&mut self, other: &Funnel) {
        self.sent += other.sent;
        self.opened_human += other.opened_human;
        self.opened_total += other.opened_total;
        self.clicked_human += other.clicked_human;
        self.clicked_total += other.clicked_total;
        self.replied += other.replied;
        self.auto_replied += other.auto_replied;
        self.bounced += other.bounced;
        self.unsubscribed += other.unsubscribed;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkClicks {
    pub sequence: String,
    pub step_id: String,
    pub url: String,
    pub human: i64,
    pub total: i64,
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
        // Causes are counted by kind: a hundred messages in doubt are one line, not a
        // hundred Message-IDs. Only the kinds whose detail names what to fix (a
        // field, a sequence) keep it; a reason from before causes were stored is
        // counted as it was written.
        let by_detail = CauseKind::ALL
            .iter()
            .filter(|k| k.grouped_by_detail())
            .map(|k| format!("'{}'", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let reason_sql = format!(
            "SELECT sequence, state, cause, CASE WHEN cause IN ({by_detail}) THEN cause_detail \
             WHEN cause IS NULL THEN reason END AS detail, count(*) AS n FROM enrollments{} reason IS NOT NULL \
             GROUP BY sequence, state, cause, detail ORDER BY n DESC",
            if sequence.is_some() { " WHERE sequence = $1 AND" } else { " WHERE" }
        );
        for (sql, out) in [
            (&msg_sql, &mut status.messages),
            (&enr_sql, &mut status.enrollments),
        ] {
            let rows = with_read_pool!(self, p => {
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
        status.reasons = with_read_pool!(self, p => {
            let mut q = sqlx::query(&reason_sql);
            if let Some(s) = sequence {
                q = q.bind(s);
            }
            let rows = q.fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    let kind: Option<String> = r.try_get("cause")?;
                    let detail: Option<String> = r.try_get("detail")?;
                    let label = Cause::from_stored(kind.as_deref(), detail.clone(), detail)
                        .map(|c| c.group())
                        .unwrap_or_default();
                    Ok((r.try_get("sequence")?, r.try_get("state")?, label, r.try_get("n")?))
                })
                .collect::<Result<Vec<_>>>()?
        });
        let resp_sql = format!(
            "SELECT m.sequence AS sequence, m.step_id AS step_id, ev.kind AS what, count(DISTINCT ev.enrollment_id) AS n \
             FROM events ev JOIN messages m ON m.id = ev.message_id \
             WHERE ev.kind IN ('replied', 'auto_replied', 'bounced', 'unsubscribed', 'manual'){} \
             GROUP BY m.sequence, m.step_id, ev.kind",
            if sequence.is_some() { " AND m.sequence = $1" } else { "" }
        );
        status.responses = with_read_pool!(self, p => {
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
        status.set_aside = self.set_aside_messages().await?;
        self.funnel(sequence, &mut status).await?;
        Ok(status)
    }

    async fn funnel(&self, sequence: Option<&str>, status: &mut Status) -> Result<()> {
        let and_seq = if sequence.is_some() {
            " AND m.sequence = $1"
        } else {
            ""
        };
        let unique = |cond: &str| format!("count(DISTINCT CASE WHEN {cond} THEN m.id END)");
        let funnel_sql = format!(
            "SELECT m.sequence AS sequence, m.step_id AS step_id, m.variant AS variant, count(DISTINCT m.id) AS sent, \
             {} AS opened_human, {} AS opened_total, {} AS clicked_human, {} AS clicked_total, \
             {} AS replied, {} AS auto_replied, {} AS bounced, {} AS unsubscribed \
             FROM messages m LEFT JOIN events ev ON ev.message_id = m.id \
             WHERE m.status = 'sent'{and_seq} GROUP BY m.sequence, m.step_id, m.variant",
            unique("ev.kind IN ('opened', 'clicked') AND ev.machine IS NULL"),
            unique("ev.kind IN ('opened', 'clicked')"),
            unique("ev.kind = 'clicked' AND ev.machine IS NULL"),
            unique("ev.kind = 'clicked'"),
            unique("ev.kind = 'replied'"),
            unique("ev.kind = 'auto_replied'"),
            unique("ev.kind = 'bounced'"),
            unique("ev.kind = 'unsubscribed'"),
        );
        let links_sql = format!(
            "SELECT m.sequence AS sequence, m.step_id AS step_id, l.url AS url, \
             count(DISTINCT CASE WHEN ev.machine IS NULL THEN m.id END) AS human, count(DISTINCT m.id) AS total \
             FROM events ev JOIN messages m ON m.id = ev.message_id \
             JOIN links l ON l.message_id = ev.message_id AND l.idx = ev.link \
             WHERE ev.kind = 'clicked'{and_seq} GROUP BY m.sequence, m.step_id, l.url ORDER BY human DESC, total DESC"
        );
        let machine_sql = format!(
            "SELECT m.sequence AS sequence, ev.kind AS kind, ev.machine AS machine, count(*) AS n \
             FROM events ev JOIN messages m ON m.id = ev.message_id \
             WHERE ev.machine IS NOT NULL{and_seq} GROUP BY m.sequence, ev.kind, ev.machine ORDER BY n DESC"
        );
        with_read_pool!(self, p => {
            macro_rules! bind {
                ($sql:expr) => {{
                    let mut q = sqlx::query($sql);
                    if let Some(s) = sequence {
                        q = q.bind(s.to_string());
                    }
                    q
                }};
            }
            for r in bind!(&funnel_sql).fetch_all(p).await? {
                status.funnel.push(Funnel {
                    sequence: r.try_get("sequence")?,
                    step_id: r.try_get("step_id")?,
                    variant: r.try_get("variant")?,
                    sent: r.try_get("sent")?,
                    opened_human: r.try_get("opened_human")?,
                    opened_total: r.try_get("opened_total")?,
                    clicked_human: r.try_get("clicked_human")?,
                    clicked_total: r.try_get("clicked_total")?,
                    replied: r.try_get("replied")?,
                    auto_replied: r.try_get("auto_replied")?,
                    bounced: r.try_get("bounced")?,
                    unsubscribed: r.try_get("unsubscribed")?,
                });
            }
            for r in bind!(&links_sql).fetch_all(p).await? {
                status.links.push(LinkClicks {
                    sequence: r.try_get("sequence")?,
                    step_id: r.try_get("step_id")?,
                    url: r.try_get("url")?,
                    human: r.try_get("human")?,
                    total: r.try_get("total")?,
                });
            }
            for r in bind!(&machine_sql).fetch_all(p).await? {
                status.machine.push((r.try_get("sequence")?, r.try_get("kind")?, r.try_get("machine")?, r.try_get("n")?));
            }
            // Skips have no message: their step is in the event's data.
            let rows = sqlx::query("SELECT data FROM events WHERE kind = 'skipped'").fetch_all(p).await?;
            let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
            for r in rows {
                let data: String = r.try_get("data")?;
                let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                let (Some(seq), Some(step)) = (v["sequence"].as_str(), v["step"].as_str()) else { continue };
                if sequence.is_none_or(|s| s == seq) {
                    *counts.entry((seq.to_string(), step.to_string())).or_default() += 1;
                }
            }
            status.skipped = counts
                .into_iter()
                .map(|((sequence, step_id), n)| Count { sequence, step_id, what: "skipped".into(), n })
                .collect();
            Ok::<(), super::Error>(())
        })?;
        Ok(())
    }
}
