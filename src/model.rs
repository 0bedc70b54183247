//! Plain data passed between the store, the engine and the command line. No I/O here:
//! the pure modules (engine, schedule) work on these types without depending on sqlx.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A contact as imported.
#[derive(Debug, Clone, PartialEq)]
pub struct NewContact {
    pub email: String,
    pub name: Option<String>,
    pub fields: Map<String, Value>,
    pub timezone: Option<String>,
    pub country: Option<String>,
}

/// What an upsert did to one contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    pub id: i64,
    pub email: String,
    pub created: bool,
    pub changed: bool,
}

/// A stored contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    pub fields: Map<String, Value>,
    pub timezone: Option<String>,
    pub country: Option<String>,
    pub stage: String,
    pub owner_mailbox: Option<String>,
    pub suppressed_reason: Option<String>,
}

/// A contact to put into a sequence.
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub contact_id: i64,
    pub sequence: String,
    pub mailbox: String,
    pub step_id: String,
    pub next_run_at: DateTime<Utc>,
}

/// An enrollment as `enroll`, `pause` and `status` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    pub id: i64,
    pub contact_id: i64,
    pub email: String,
    pub sequence: String,
    pub mailbox: String,
    pub state: String,
    pub reason: Option<String>,
    pub step_index: i64,
    pub step_id: String,
    pub next_run_at: Option<DateTime<Utc>>,
    pub paused_until: Option<DateTime<Utc>>,
    pub thread_message_id: Option<String>,
    pub thread_subject: Option<String>,
    pub last_sent_at: Option<DateTime<Utc>>,
    pub attempts: i64,
}

/// An append-only history entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub contact_id: Option<i64>,
    pub enrollment_id: Option<i64>,
    pub message_id: Option<i64>,
    pub kind: String,
    pub data: Value,
}

/// A change to one enrollment, as decided by the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentUpdate {
    pub id: i64,
    pub state: String,
    pub reason: Option<String>,
    pub step_index: i64,
    pub step_id: String,
    pub next_run_at: Option<DateTime<Utc>>,
    pub paused_until: Option<DateTime<Utc>>,
    pub attempts: i64,
    pub thread_message_id: Option<String>,
    pub thread_subject: Option<String>,
    pub last_sent_at: Option<DateTime<Utc>>,
}

impl Enrollment {
    /// The update that leaves this enrollment as it is; callers change what they mean to.
    pub fn unchanged(&self) -> EnrollmentUpdate {
        EnrollmentUpdate {
            id: self.id,
            state: self.state.clone(),
            reason: self.reason.clone(),
            step_index: self.step_index,
            step_id: self.step_id.clone(),
            next_run_at: self.next_run_at,
            paused_until: self.paused_until,
            attempts: self.attempts,
            thread_message_id: self.thread_message_id.clone(),
            thread_subject: self.thread_subject.clone(),
            last_sent_at: self.last_sent_at,
        }
    }
}
