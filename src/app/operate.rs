//! Changes applied to many enrollments at once: a suppression (by an operator or an
//! unsubscribe link), out-of-office pauses that ended, holds for a missing field
//! after a re-import. The engine decides each enrollment's change; the store writes
//! it only if the enrollment is still where the engine saw it.

use chrono::{DateTime, Utc};

use super::ports::Enrollments;
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
pub async fn suppress<S: Enrollments>(
    store: &S,
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
pub async fn end_pauses<S: Enrollments>(
    store: &S,
    now: DateTime<Utc>,
) -> Result<u64, store::Error> {
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
pub async fn fields_changed<S: Enrollments>(
    store: &S,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ports::fake::Fake;
    use crate::model::{EnrollmentState as S, EventKind};
    use chrono::TimeZone as _;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, 0, 0)
            .single()
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn suppressing_a_domain_stops_only_its_live_enrollments() {
        let f = Fake::default();
        let active = f.enroll("a@acme.example", "intro", S::Active);
        let paused = f.enroll("b@acme.example", "intro", S::Paused);
        let finished = f.enroll("c@acme.example", "intro", S::Finished);
        let elsewhere = f.enroll("d@other.example", "intro", S::Active);
        let stopped = suppress(&f, "@acme.example", "suppressed by operator", at(9))
            .await
            .unwrap_or_default();
        assert_eq!(stopped, 2);
        assert_eq!(f.state(active), Some(S::Stopped));
        assert_eq!(f.state(paused), Some(S::Stopped));
        assert_eq!(f.state(finished), Some(S::Finished), "history stays");
        assert_eq!(f.state(elsewhere), Some(S::Active));
        assert!(f.suppressed.borrow().contains(&"@acme.example".to_string()));
        assert!(
            f.event_kinds().iter().all(|k| *k == EventKind::Stopped)
                && f.events.borrow().len() == 2,
            "one stop event per enrollment stopped: {:?}",
            f.event_kinds()
        );
    }

    #[tokio::test]
    async fn ended_pauses_are_all_resumed_a_page_at_a_time() {
        let f = Fake::default();
        let n = PAUSES_PER_ROUND * 2 + PAUSES_PER_ROUND / 2;
        let mut ids = Vec::new();
        for i in 0..n {
            let id = f.enroll(&format!("c{i}@example.com"), "intro", S::Paused);
            if let Some(e) = f.enrollments.borrow_mut().get_mut(&id) {
                e.paused_until = Some(at(8));
            }
            ids.push(id);
        }
        // One pause that has not ended yet stays.
        let later = f.enroll("later@example.com", "intro", S::Paused);
        if let Some(e) = f.enrollments.borrow_mut().get_mut(&later) {
            e.paused_until = Some(at(12));
        }
        let resumed = end_pauses(&f, at(9)).await.unwrap_or_default();
        assert_eq!(resumed, n as u64);
        assert!(ids.iter().all(|id| f.state(*id) == Some(S::Active)));
        assert_eq!(f.state(later), Some(S::Paused));
        assert_eq!(
            *f.pages.borrow(),
            3,
            "three pages of at most {PAUSES_PER_ROUND}"
        );
    }

    #[tokio::test]
    async fn new_fields_release_only_enrollments_held_for_them() {
        let f = Fake::default();
        let held = f.enroll("a@example.com", "intro", S::Held);
        if let Some(e) = f.enrollments.borrow_mut().get_mut(&held) {
            e.cause = Some(crate::model::Cause::with(
                CauseKind::MissingField,
                "'company'",
            ));
        }
        let doubt = f.enroll("a@example.com", "other", S::Held);
        if let Some(e) = f.enrollments.borrow_mut().get_mut(&doubt) {
            e.cause = Some(crate::model::Cause::new(CauseKind::InDoubt));
        }
        let contact = f.contact("a@example.com").id;
        let retried = fields_changed(&f, &[contact], at(9))
            .await
            .unwrap_or_default();
        assert_eq!(retried, 1);
        assert_eq!(f.state(held), Some(S::Active));
        assert_eq!(
            f.state(doubt),
            Some(S::Held),
            "a message in doubt waits for the operator, whatever the fields"
        );
    }
}
