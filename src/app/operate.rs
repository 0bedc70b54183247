//! Changes applied to many enrollments at once: a suppression (by an operator or an
//! unsubscribe link), out-of-office pauses that ended, holds for a missing field
//! after a re-import. The engine decides each enrollment's change; the store writes
//! it only if the enrollment is still where the engine saw it.

use chrono::{DateTime, Utc};

use crate::engine::{self, Command, Input, Scope};
use crate::model::{CauseKind, Enrollment, EnrollmentUpdate, NewEvent};
use crate::store::{self, Store, TrackedMessage, Unsubscribed};

/// Most enrollments one round of pauses handles; the next round takes the rest.
const PAUSES_PER_ROUND: usize = 1_000;

/// What the engine decides `command` does to each enrollment, as updates and events.
fn decide(
    enrollments: &[Enrollment],
    command: &Command,
    now: DateTime<Utc>,
) -> (Vec<EnrollmentUpdate>, Vec<NewEvent>) {
    let input = Input::Command(command.clone());
    let mut updates = Vec::new();
    let mut events = Vec::new();
    for e in enrollments {
        // These commands need no schedule and are never refused: they apply or not.
        if let Ok(Some(t)) = engine::step(Scope::Nothing, e, &input, now) {
            updates.push(t.enrollment);
            events.extend(t.events);
        }
    }
    (updates, events)
}

/// Suppresses an address or `@domain` for every sequence and stops its live
/// enrollments. Returns how many were stopped.
pub async fn suppress(
    store: &Store,
    pattern: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<u64, store::Error> {
    let live = store.live_enrollments_matching(pattern).await?;
    let (updates, events) = decide(
        &live,
        &Command::Suppress {
            cause: CauseKind::Suppressed,
        },
        now,
    );
    store
        .suppress(pattern, reason, &updates, &events, now)
        .await
}

/// Unsubscribes the address a tracked message went to (its link or List-Unsubscribe).
pub async fn unsubscribe(
    store: &Store,
    m: &TrackedMessage,
    via: &str,
    now: DateTime<Utc>,
) -> Result<Unsubscribed, store::Error> {
    let live = store.live_enrollments(&[m.contact_id]).await?;
    let (updates, events) = decide(
        &live,
        &Command::Suppress {
            cause: CauseKind::Unsubscribed,
        },
        now,
    );
    store.unsubscribe(m, via, &updates, &events, now).await
}

/// Out-of-office pauses whose date has come become active again, due now (the send
/// window still decides the hour). Returns how many resumed.
pub async fn end_pauses(store: &Store, now: DateTime<Utc>) -> Result<u64, store::Error> {
    let mut resumed = 0;
    loop {
        let due = store.pauses_ended(now, PAUSES_PER_ROUND).await?;
        let (updates, events) = decide(&due, &Command::PauseEnded, now);
        if updates.is_empty() {
            return Ok(resumed);
        }
        resumed += store.apply(&updates, &events, now).await?.len() as u64;
        if due.len() < PAUSES_PER_ROUND {
            return Ok(resumed);
        }
    }
}

/// Contacts whose fields changed (a re-import that fills a gap): their enrollments
/// held for a missing field try again now. Returns how many.
pub async fn fields_changed(
    store: &Store,
    contact_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<u64, store::Error> {
    let live = store.live_enrollments(contact_ids).await?;
    let (updates, events) = decide(&live, &Command::FieldsChanged, now);
    if updates.is_empty() {
        return Ok(0);
    }
    Ok(store.apply(&updates, &events, now).await?.len() as u64)
}
