//! The `status` report as data: per sequence and step, where enrollments are, what
//! their mails did and what people did with them; then the watchers, paused mailboxes
//! and messages set aside. The command line prints it as a table or as JSON (this
//! type's serialisation); an HTTP API would return the same JSON.

use serde::Serialize;

use crate::project::Project;
use crate::store::{self, Count, Funnel, SetAside, Store, WebhookQueue};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sequences: Vec<SequenceReport>,
    pub watchers: Vec<Watcher>,
    pub paused_mailboxes: Vec<PausedMailbox>,
    pub set_aside: Vec<SetAside>,
    pub webhooks: Vec<WebhookQueue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SequenceReport {
    pub sequence: String,
    pub steps: Vec<StepRow>,
    /// Held, stopped and failed enrollments grouped by cause.
    pub reasons: Vec<Reason>,
    /// Opens and clicks by machines, by what gave them away.
    pub machine_hits: Vec<MachineHits>,
}

/// One step: enrollments scheduled there, its messages by status, enrollments by state,
/// responses, and its funnel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepRow {
    pub step: String,
    /// Active enrollments at this step: each is scheduled to send it.
    pub scheduled: i64,
    pub sending: i64,
    pub sent: i64,
    pub deferred: i64,
    pub failed: i64,
    pub in_doubt: i64,
    pub cancelled: i64,
    pub held: i64,
    pub paused: i64,
    pub stopped: i64,
    pub finished: i64,
    pub replied: i64,
    pub auto_replied: i64,
    pub bounced: i64,
    pub unsubscribed: i64,
    /// Enrollments that skipped it because its `if:` did not hold.
    pub skipped: i64,
    pub funnel: FunnelRow,
    pub variants: Vec<FunnelRow>,
    pub links: Vec<LinkRow>,
}

/// What the mails of a step (or of one of its variants) led to, with rates of sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FunnelRow {
    #[serde(flatten)]
    pub counts: Funnel,
    pub rates: Rates,
}

/// Fractions of sent mails, rounded to 4 places.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    pub opened_human: f64,
    pub opened_total: f64,
    pub clicked_human: f64,
    pub clicked_total: f64,
    pub replied: f64,
    pub bounced: f64,
    pub unsubscribed: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkRow {
    pub url: String,
    pub clicked_human: i64,
    pub clicked_total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    pub state: String,
    pub reason: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MachineHits {
    pub kind: String,
    pub reason: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Watcher {
    pub mailbox: String,
    pub folder: String,
    pub state: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PausedMailbox {
    pub mailbox: String,
    pub reason: String,
}

/// A rate of sent mails, as a fraction rounded to 4 places.
fn rate(n: i64, sent: i64) -> f64 {
    if sent <= 0 {
        0.0
    } else {
        (n as f64 / sent as f64 * 10_000.0).round() / 10_000.0
    }
}

impl From<&Funnel> for FunnelRow {
    fn from(f: &Funnel) -> FunnelRow {
        FunnelRow {
            counts: f.clone(),
            rates: Rates {
                opened_human: rate(f.opened_human, f.sent),
                opened_total: rate(f.opened_total, f.sent),
                clicked_human: rate(f.clicked_human, f.sent),
                clicked_total: rate(f.clicked_total, f.sent),
                replied: rate(f.replied, f.sent),
                bounced: rate(f.bounced, f.sent),
                unsubscribed: rate(f.unsubscribed, f.sent),
            },
        }
    }
}

/// The report for every sequence, or for `only` one. Sequences and steps are in the
/// project's order; those the database still has but the files no longer do follow.
pub async fn report(
    project: &Project,
    store: &Store,
    only: Option<&str>,
) -> Result<Report, store::Error> {
    let st = store.status(only).await?;
    let mut names: Vec<&str> = project
        .sequences
        .keys()
        .map(String::as_str)
        .filter(|s| only.is_none_or(|x| x == *s))
        .collect();
    for c in st.messages.iter().chain(st.enrollments.iter()) {
        if !names.contains(&c.sequence.as_str()) {
            names.push(&c.sequence);
        }
    }
    let count = |list: &[Count], seq: &str, step: &str, what: &str| -> i64 {
        list.iter()
            .filter(|c| c.sequence == seq && c.step_id == step && c.what == what)
            .map(|c| c.n)
            .sum()
    };
    let mut sequences = Vec::with_capacity(names.len());
    for seq in names {
        let mut steps: Vec<String> = project
            .sequence(seq)
            .map(|s| s.steps.iter().map(|st| st.id.clone()).collect())
            .unwrap_or_default();
        for c in st
            .messages
            .iter()
            .chain(st.enrollments.iter())
            .filter(|c| c.sequence == seq)
        {
            if !steps.contains(&c.step_id) {
                steps.push(c.step_id.clone());
            }
        }
        let rows = steps
            .into_iter()
            .map(|step| {
                let m = |what| count(&st.messages, seq, &step, what);
                let e = |what| count(&st.enrollments, seq, &step, what);
                let r = |what| count(&st.responses, seq, &step, what);
                let of_step: Vec<&Funnel> = st
                    .funnel
                    .iter()
                    .filter(|f| f.sequence == seq && f.step_id == step)
                    .collect();
                let mut total = Funnel::default();
                for f in &of_step {
                    total += f;
                }
                total.variant = None;
                let funnel = FunnelRow::from(&total);
                StepRow {
                    scheduled: e("active"),
                    sending: m("sending"),
                    sent: m("sent"),
                    deferred: m("deferred"),
                    failed: m("failed"),
                    in_doubt: m("in_doubt"),
                    cancelled: m("cancelled"),
                    held: e("held"),
                    paused: e("paused"),
                    stopped: e("stopped"),
                    finished: e("finished"),
                    replied: r("replied"),
                    auto_replied: r("auto_replied"),
                    bounced: r("bounced"),
                    unsubscribed: r("unsubscribed"),
                    skipped: count(&st.skipped, seq, &step, "skipped"),
                    funnel,
                    variants: of_step
                        .iter()
                        .filter(|f| f.variant.is_some())
                        .map(|f| FunnelRow::from(*f))
                        .collect(),
                    links: st
                        .links
                        .iter()
                        .filter(|l| l.sequence == seq && l.step_id == step)
                        .map(|l| LinkRow {
                            url: l.url.clone(),
                            clicked_human: l.human,
                            clicked_total: l.total,
                        })
                        .collect(),
                    step,
                }
            })
            .collect();
        sequences.push(SequenceReport {
            sequence: seq.to_string(),
            steps: rows,
            reasons: st
                .reasons
                .iter()
                .filter(|r| r.0 == seq)
                .map(|r| Reason {
                    state: r.1.clone(),
                    reason: r.2.clone(),
                    count: r.3,
                })
                .collect(),
            machine_hits: st
                .machine
                .iter()
                .filter(|m| m.0 == seq)
                .map(|m| MachineHits {
                    kind: m.1.clone(),
                    reason: m.2.clone(),
                    count: m.3,
                })
                .collect(),
        });
    }
    Ok(Report {
        sequences,
        watchers: st
            .watchers
            .iter()
            .map(|(mailbox, folder, state, detail)| Watcher {
                mailbox: mailbox.clone(),
                folder: folder.clone(),
                state: state.clone(),
                detail: detail.clone(),
            })
            .collect(),
        paused_mailboxes: st
            .paused_mailboxes
            .iter()
            .map(|(mailbox, reason)| PausedMailbox {
                mailbox: mailbox.clone(),
                reason: reason.clone(),
            })
            .collect(),
        set_aside: st.set_aside,
        webhooks: if project.config.webhooks.is_empty() {
            Vec::new()
        } else {
            store.webhook_queues().await?
        },
    })
}
