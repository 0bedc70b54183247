//! Settling messages in doubt: a daemon died after handing a message to SMTP and before
//! recording the server's answer. Either it arrived (count it as sent, move on) or it
//! did not (send it again, under the same Message-ID, so that a client that did get the
//! first copy can tell). An operator decides with `followup in-doubt`; with IMAP the
//! daemon decides by looking the Message-ID up in the mailbox's Sent folder.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::engine::{self, Context, Outcome};
use crate::model::NewEvent;
use crate::project::Project;
use crate::store::{self, Finish, InDoubt, MessageUpdate, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Store(#[from] store::Error),
    #[error("{0}")]
    Gone(String),
}

/// Sends it again: the message becomes `deferred` (same Message-ID) and the enrollment
/// active, due now.
pub async fn release(
    store: &Store,
    d: &InDoubt,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let e = store
        .enrollments_by_id(&[d.enrollment_id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Gone(format!("enrollment {} vanished", d.enrollment_id)))?;
    let mut u = e.unchanged();
    u.state = "active".into();
    u.reason = None;
    u.next_run_at = Some(now);
    let ev = NewEvent {
        contact_id: Some(e.contact_id),
        enrollment_id: Some(e.id),
        message_id: Some(d.row_id),
        kind: "released".into(),
        data: json!({ "message_id": d.message_id, "why": why }),
    };
    let message = MessageUpdate {
        row_id: d.row_id,
        status: "deferred".into(),
        smtp_reply: Some(format!("released: {why}")),
    };
    store
        .finish_sends(
            &[Finish {
                message: Some(message),
                enrollment: u,
                events: vec![ev],
            }],
            None,
            now,
        )
        .await?;
    Ok(())
}

/// Counts it as sent: the message becomes `sent` and the enrollment moves to its next
/// step (or finishes), exactly as if the server's reply had been recorded.
pub async fn settle_as_sent(
    project: &Project,
    store: &Store,
    d: &InDoubt,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let e = store
        .enrollments_by_id(&[d.enrollment_id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Gone(format!("enrollment {} vanished", d.enrollment_id)))?;
    let seq = project
        .sequence(&e.sequence)
        .ok_or_else(|| Error::Gone(format!("sequence '{}' is gone", e.sequence)))?;
    let (index, _) = seq
        .step(&e.step_id)
        .ok_or_else(|| Error::Gone(format!("step '{}' is gone", e.step_id)))?;
    let contact = store
        .contact(&e.email)
        .await?
        .ok_or_else(|| Error::Gone(format!("contact {} vanished", e.email)))?;
    let (window, tz, holidays) = project.contact_schedule(seq, &contact);
    let subject = store
        .step_message(e.id, &e.step_id)
        .await?
        .map(|m| m.subject)
        .unwrap_or_default();
    let cx = Context {
        sequence: seq,
        window: &window,
        tz,
        holidays: &holidays,
        send: &project.config.send,
    };
    // Held only because of the doubt: decide as for the active enrollment it was.
    let mut was = e.clone();
    if was.state == "held" {
        was.state = "active".into();
    }
    let tr = engine::after(
        &cx,
        &was,
        index,
        &Outcome::Sent {
            at: d.since,
            message_id: d.message_id.clone(),
            subject,
            reply: why.to_string(),
        },
    );
    let events = tr
        .events
        .into_iter()
        .map(|mut ev| {
            ev.message_id = Some(d.row_id);
            ev
        })
        .collect();
    let message = tr.message.map(|m| MessageUpdate {
        row_id: d.row_id,
        status: m.status.into(),
        smtp_reply: m.reply,
    });
    // If the enrollment was stopped meanwhile (a reply), keep it stopped.
    let mut enrollment = tr.enrollment;
    if e.state != "held" {
        enrollment = e.unchanged();
    }
    store
        .finish_sends(
            &[Finish {
                message,
                enrollment,
                events,
            }],
            None,
            now,
        )
        .await?;
    if let Some(rule) = tr.rule {
        crate::lifecycle::apply(project, store, &[(e.contact_id, rule)], now).await?;
    }
    Ok(())
}
