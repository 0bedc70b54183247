//! The ports of the application layer: what its use cases need from storage, as a
//! trait. The store implements it over SQLite and PostgreSQL; the unit tests of the
//! use cases implement it over a few maps in memory (`fake`), so that what a use case
//! decides and hands on to be written is tested without a database. Integration tests
//! run the same use cases against the real store.

use chrono::{DateTime, Utc};

use crate::model::{Contact, Enrollment, EnrollmentUpdate, NewEvent};
use crate::store::{self, Store};

type Result<T> = std::result::Result<T, store::Error>;

/// Enrollments and suppressions as the operator and bulk use cases read and change them.
/// Writes are guarded: an update is written only while the enrollment is still in the
/// state it was decided from (`EnrollmentUpdate::from`), and `apply` returns the ids
/// written.
// Used only as a generic bound inside the crate (never `dyn`), so the futures' `Send`
// bound that `async fn` in a public trait cannot name is not needed.
#[allow(async_fn_in_trait)]
pub trait Enrollments {
    async fn contact(&self, email: &str) -> Result<Option<Contact>>;
    async fn is_suppressed(&self, email: &str) -> Result<bool>;
    /// The latest enrollment of `email` in `sequence`.
    async fn enrollment(&self, sequence: &str, email: &str) -> Result<Option<Enrollment>>;
    /// Active, paused and held enrollments of these contacts.
    async fn live_enrollments(&self, contact_ids: &[i64]) -> Result<Vec<Enrollment>>;
    /// Active, paused and held enrollments of an address or of everyone at `@domain`.
    async fn live_enrollments_matching(&self, pattern: &str) -> Result<Vec<Enrollment>>;
    /// Out-of-office pauses whose date has come, oldest first, at most `limit`.
    async fn pauses_ended(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Enrollment>>;
    async fn apply(
        &self,
        updates: &[EnrollmentUpdate],
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>>;
    /// Records the suppression of `pattern` and writes the updates in one transaction;
    /// returns how many updates were written.
    async fn suppress(
        &self,
        pattern: &str,
        reason: &str,
        updates: &[EnrollmentUpdate],
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<u64>;
}

impl Enrollments for Store {
    async fn contact(&self, email: &str) -> Result<Option<Contact>> {
        Store::contact(self, email).await
    }
    async fn is_suppressed(&self, email: &str) -> Result<bool> {
        Store::is_suppressed(self, email).await
    }
    async fn enrollment(&self, sequence: &str, email: &str) -> Result<Option<Enrollment>> {
        Store::enrollment(self, sequence, email).await
    }
    async fn live_enrollments(&self, contact_ids: &[i64]) -> Result<Vec<Enrollment>> {
        Store::live_enrollments(self, contact_ids).await
    }
    async fn live_enrollments_matching(&self, pattern: &str) -> Result<Vec<Enrollment>> {
        Store::live_enrollments_matching(self, pattern).await
    }
    async fn pauses_ended(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Enrollment>> {
        Store::pauses_ended(self, now, limit).await
    }
    async fn apply(
        &self,
        updates: &[EnrollmentUpdate],
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        Store::apply(self, updates, events, now).await
    }
    async fn suppress(
        &self,
        pattern: &str,
        reason: &str,
        updates: &[EnrollmentUpdate],
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        Store::suppress(self, pattern, reason, updates, events, now).await
    }
}

/// An in-memory [`Enrollments`] for the use cases' unit tests: contacts, enrollments
/// and suppressions in maps, the same guard on writes as the store, and every event
/// written kept in order.
#[cfg(test)]
pub mod fake {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{EnrollmentState, EventKind};

    #[derive(Default)]
    pub struct Fake {
        pub contacts: RefCell<Vec<Contact>>,
        pub enrollments: RefCell<BTreeMap<i64, Enrollment>>,
        pub suppressed: RefCell<Vec<String>>,
        pub events: RefCell<Vec<NewEvent>>,
        /// How many times `pauses_ended` was asked (each asks for one page).
        pub pages: RefCell<usize>,
        /// Another writer's change, made just before the next `apply`: a race.
        pub before_apply: RefCell<Option<(i64, EnrollmentState)>>,
    }

    impl Fake {
        pub fn contact(&self, email: &str) -> Contact {
            let mut contacts = self.contacts.borrow_mut();
            if let Some(c) = contacts.iter().find(|c| c.email == email) {
                return c.clone();
            }
            let c = Contact {
                id: contacts.len() as i64 + 1,
                email: email.into(),
                name: None,
                fields: Default::default(),
                timezone: None,
                country: None,
                stage: "lead".into(),
                owner_mailbox: None,
                suppressed_reason: None,
            };
            contacts.push(c.clone());
            c
        }

        /// Adds an enrollment of `email` in `sequence`, in `state`.
        pub fn enroll(&self, email: &str, sequence: &str, state: EnrollmentState) -> i64 {
            let c = self.contact(email);
            let mut all = self.enrollments.borrow_mut();
            let id = all.len() as i64 + 1;
            all.insert(
                id,
                Enrollment {
                    id,
                    contact_id: c.id,
                    email: email.into(),
                    sequence: sequence.into(),
                    mailbox: "rep".into(),
                    state,
                    cause: None,
                    step_index: 0,
                    step_id: "first".into(),
                    next_run_at: None,
                    paused_until: None,
                    thread_message_id: None,
                    thread_subject: None,
                    last_sent_at: None,
                    attempts: 0,
                },
            );
            id
        }

        pub fn state(&self, id: i64) -> Option<EnrollmentState> {
            self.enrollments.borrow().get(&id).map(|e| e.state)
        }

        pub fn event_kinds(&self) -> Vec<EventKind> {
            self.events.borrow().iter().map(|e| e.kind).collect()
        }

        fn live(&self, keep: impl Fn(&Enrollment) -> bool) -> Vec<Enrollment> {
            self.enrollments
                .borrow()
                .values()
                .filter(|e| {
                    matches!(
                        e.state,
                        EnrollmentState::Active | EnrollmentState::Paused | EnrollmentState::Held
                    ) && keep(e)
                })
                .cloned()
                .collect()
        }
    }

    impl Enrollments for Fake {
        async fn contact(&self, email: &str) -> Result<Option<Contact>> {
            Ok(self
                .contacts
                .borrow()
                .iter()
                .find(|c| c.email == email)
                .cloned())
        }
        async fn is_suppressed(&self, email: &str) -> Result<bool> {
            let domain = email.rsplit('@').next().unwrap_or_default();
            Ok(self
                .suppressed
                .borrow()
                .iter()
                .any(|p| p == email || p.strip_prefix('@') == Some(domain)))
        }
        async fn enrollment(&self, sequence: &str, email: &str) -> Result<Option<Enrollment>> {
            Ok(self
                .enrollments
                .borrow()
                .values()
                .rev()
                .find(|e| e.sequence == sequence && e.email == email)
                .cloned())
        }
        async fn live_enrollments(&self, contact_ids: &[i64]) -> Result<Vec<Enrollment>> {
            Ok(self.live(|e| contact_ids.contains(&e.contact_id)))
        }
        async fn live_enrollments_matching(&self, pattern: &str) -> Result<Vec<Enrollment>> {
            Ok(match pattern.strip_prefix('@') {
                Some(d) => self.live(|e| e.email.rsplit('@').next() == Some(d)),
                None => self.live(|e| e.email == pattern),
            })
        }
        async fn pauses_ended(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Enrollment>> {
            *self.pages.borrow_mut() += 1;
            let mut due = self.live(|e| {
                e.state == EnrollmentState::Paused && e.paused_until.is_some_and(|u| u <= now)
            });
            due.sort_by_key(|e| e.paused_until);
            due.truncate(limit);
            Ok(due)
        }
        async fn apply(
            &self,
            updates: &[EnrollmentUpdate],
            events: &[NewEvent],
            _now: DateTime<Utc>,
        ) -> Result<Vec<i64>> {
            let mut applied = Vec::new();
            let mut all = self.enrollments.borrow_mut();
            if let Some((id, state)) = self.before_apply.borrow_mut().take() {
                if let Some(e) = all.get_mut(&id) {
                    e.state = state;
                }
            }
            for u in updates {
                let Some(e) = all.get_mut(&u.id) else {
                    continue;
                };
                // The store's guard: a change decided from a state the enrollment has
                // left is not written.
                if e.state != u.from {
                    continue;
                }
                e.state = u.state;
                e.cause = u.cause.clone();
                e.step_index = u.step_index;
                e.step_id = u.step_id.clone();
                e.next_run_at = u.next_run_at;
                e.paused_until = u.paused_until;
                e.attempts = u.attempts;
                applied.push(u.id);
            }
            self.events
                .borrow_mut()
                .extend(store::events_of_applied(events, updates, &applied));
            Ok(applied)
        }
        async fn suppress(
            &self,
            pattern: &str,
            _reason: &str,
            updates: &[EnrollmentUpdate],
            events: &[NewEvent],
            now: DateTime<Utc>,
        ) -> Result<u64> {
            self.suppressed.borrow_mut().push(pattern.into());
            Ok(self.apply(updates, events, now).await?.len() as u64)
        }
    }
}
