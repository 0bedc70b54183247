//! Settling messages in doubt: a daemon died after handing a message to SMTP and before
//! recording the server's answer. Either it arrived (count it as sent, move on) or it
//! did not (send it again, under the same Message-ID, so that a client that did get the
//! first copy can tell). An operator decides with `followup in-doubt`; with IMAP the
//! daemon decides by looking the Message-ID up in the mailbox's Sent folder.

use crate::engine::{self, Command, Context, Input};
use crate::project::Project;
use crate::store::{self, Finish, InDoubt, MessageUpdate, Store};
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Store(#[from] store::Error),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Refused(#[from] engine::Refusal),
}

/// The enrollment a message in doubt belongs to.
async fn enrollment_of(store: &Store, d: &InDoubt) -> Result<crate::model::Enrollment, Error> {
    store
        .enrollments_by_id(&[d.enrollment_id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Gone(format!("enrollment {} vanished", d.enrollment_id)))
}

/// Writes what the engine decided for a message in doubt: its status and the
/// enrollment's change, with their events, in one transaction.
async fn persist(
    store: &Store,
    d: &InDoubt,
    tr: engine::Transition,
    now: DateTime<Utc>,
) -> Result<(), Error> {
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
        status: m.status,
        smtp_reply: m.reply,
    });
    store
        .finish_sends(
            &[Finish {
                message,
                enrollment: tr.enrollment,
                events,
            }],
            None,
            now,
        )
        .await?;
    Ok(())
}

/// Sends it again: the message becomes `deferred` (same Message-ID) and the enrollment
/// active, due now.
pub async fn release(
    store: &Store,
    d: &InDoubt,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let e = enrollment_of(store, d).await?;
    let input = Input::Command(Command::SendAgain {
        message_id: d.message_id.clone(),
        why: why.to_string(),
    });
    match engine::step(engine::Scope::Nothing, &e, &input, now)? {
        Some(tr) => persist(store, d, tr, now).await,
        None => Ok(()),
    }
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
    let e = enrollment_of(store, d).await?;
    let seq = project.sequence(&e.sequence);
    let contact = store
        .contact(&e.email)
        .await?
        .ok_or_else(|| Error::Gone(format!("contact {} vanished", e.email)))?;
    let subject = store
        .step_message(e.id, &e.step_id)
        .await?
        .map(|m| m.subject)
        .unwrap_or_default();
    let schedule = seq.map(|seq| (seq, project.contact_schedule(seq, &contact)));
    let cx = schedule
        .as_ref()
        .map(|(seq, (window, tz, holidays))| Context {
            sequence: seq,
            window,
            tz: *tz,
            holidays,
            send: &project.config.send,
        });
    let input = Input::Command(Command::SettleSent {
        at: d.since,
        message_id: d.message_id.clone(),
        subject,
        why: why.to_string(),
    });
    let scope = cx.map_or(engine::Scope::Nothing, engine::Scope::All);
    match engine::step(scope, &e, &input, now)? {
        Some(tr) => persist(store, d, tr, now).await,
        None => Ok(()),
    }
}
