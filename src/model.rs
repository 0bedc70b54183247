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
    pub state: EnrollmentState,
    pub cause: Option<Cause>,
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
    pub kind: EventKind,
    pub data: Value,
}

/// A change to one enrollment, as decided by the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentUpdate {
    pub id: i64,
    /// The state it was decided from: the store writes the change only if the
    /// enrollment is still in it, so that two writers never undo each other.
    pub from: EnrollmentState,
    pub state: EnrollmentState,
    pub cause: Option<Cause>,
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
            from: self.state,
            state: self.state,
            cause: self.cause.clone(),
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

/// Declares an enum whose variants are stored in the database and printed under stable
/// names: renaming a variant in Rust never changes what is stored.
macro_rules! stable_names {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant,)* }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)* }
            }
            /// The value a stored name stands for; `None` for a name this build does
            /// not know.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)* _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

stable_names! {
    /// Where an enrollment is. `Active`, `Held` and `Paused` are live: at most one live
    /// enrollment per contact and sequence.
    pub enum EnrollmentState {
        /// Due at `next_run_at`.
        Active = "active",
        /// Waits for a person: a missing field, a message in doubt, a step that is gone.
        Held = "held",
        /// Paused by an operator or an out-of-office answer (until `paused_until`).
        Paused = "paused",
        /// Ended before its last step: a reply, a bounce, an unsubscribe, an operator.
        Stopped = "stopped",
        /// Every step sent or skipped.
        Finished = "finished",
    }
}

impl EnrollmentState {
    pub fn is_live(self) -> bool {
        matches!(self, Self::Active | Self::Held | Self::Paused)
    }
}

stable_names! {
    /// Where an outbound message is.
    pub enum MessageStatus {
        /// Committed before it is handed to SMTP; its outcome not recorded yet.
        Sending = "sending",
        /// Accepted by the server (or written to the outbox).
        Sent = "sent",
        /// A temporary failure, or released from doubt: sent again under the same
        /// Message-ID when the enrollment is next due.
        Deferred = "deferred",
        /// Refused for good.
        Failed = "failed",
        /// Its end of data may have reached the server and no answer was recorded.
        InDoubt = "in_doubt",
        /// Not sent: the enrollment was stopped or paused while it waited its turn.
        Cancelled = "cancelled",
    }
}

stable_names! {
    /// What an event records. Statistics, timelines and rules read these names.
    pub enum EventKind {
        Enrolled = "enrolled",
        Sent = "sent",
        Deferred = "deferred",
        Failed = "failed",
        Cancelled = "cancelled",
        InDoubt = "in_doubt",
        Released = "released",
        Held = "held",
        Skipped = "skipped",
        Finished = "finished",
        Stopped = "stopped",
        Paused = "paused",
        Resumed = "resumed",
        Replied = "replied",
        AutoReplied = "auto_replied",
        Unsubscribed = "unsubscribed",
        Bounced = "bounced",
        SoftBounced = "soft_bounced",
        Complained = "complained",
        Manual = "manual",
        Opened = "opened",
        Clicked = "clicked",
        StageChanged = "stage_changed",
        Tagged = "tagged",
    }
}

stable_names! {
    /// Why an enrollment is held, paused or stopped (or, for `Retrying`, why an active
    /// one is due later than planned). Stored in `enrollments.cause`; the detail a cause
    /// carries (a field's name, a Message-ID, the server's reply) in `cause_detail`.
    pub enum CauseKind {
        MissingField = "missing_field",
        TemplateError = "template_error",
        SequenceGone = "sequence_gone",
        StepGone = "step_gone",
        NoSendTime = "no_send_time",
        InDoubt = "in_doubt",
        Operator = "operator",
        OutOfOffice = "out_of_office",
        Retrying = "retrying",
        Replied = "replied",
        Declined = "declined",
        Unsubscribed = "unsubscribed",
        Bounced = "bounced",
        Complained = "complained",
        Suppressed = "suppressed",
        Manual = "manual",
        Unenrolled = "unenrolled",
        Rejected = "rejected",
        GaveUp = "gave_up",
        /// A reason written by an older version that this one cannot map.
        Other = "other",
    }
}

impl CauseKind {
    /// Whether `status` counts this kind per detail: a missing field and where it is
    /// used, or a server's reply, says what to fix; a Message-ID in doubt or a
    /// return date does not, and would make a line per enrollment.
    pub fn grouped_by_detail(self) -> bool {
        !matches!(self, Self::InDoubt | Self::OutOfOffice)
    }
}

/// Why an enrollment is where it is: a kind that logic matches on, and the detail a
/// person reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cause {
    pub kind: CauseKind,
    /// The field's quoted name and where the template uses it (`MissingField`), the Message-ID (`InDoubt`), the server's
    /// reply (`Retrying`, `Rejected`, `GaveUp`), the return date (`OutOfOffice`), the
    /// name that is gone, the template's error, or an older version's text (`Other`).
    pub detail: Option<String>,
}

impl Cause {
    pub fn new(kind: CauseKind) -> Self {
        Self { kind, detail: None }
    }

    pub fn with(kind: CauseKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: Some(detail.into()),
        }
    }

    /// Rebuilds a cause from its stored columns. A row written before causes were
    /// stored has only its text, kept as `Other`.
    pub fn from_stored(
        kind: Option<&str>,
        detail: Option<String>,
        text: Option<String>,
    ) -> Option<Self> {
        match kind.and_then(CauseKind::parse) {
            Some(kind) => Some(Self { kind, detail }),
            None => text.map(|t| Self::with(CauseKind::Other, t)),
        }
    }

    /// The line `status` counts under: the kind, with its detail where that says what
    /// to fix, so that a hundred messages in doubt are one line and not a hundred.
    pub fn group(&self) -> String {
        match self.kind {
            CauseKind::InDoubt => "in doubt".into(),
            CauseKind::OutOfOffice => "out of office".into(),
            _ => self.to_string(),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.detail.as_deref().unwrap_or("");
        match self.kind {
            CauseKind::MissingField => write!(f, "missing field {d}"),
            CauseKind::TemplateError => write!(f, "template error: {d}"),
            CauseKind::SequenceGone => write!(f, "sequence '{d}' is no longer in sequences/"),
            CauseKind::StepGone => write!(f, "step '{d}' is no longer in its sequence"),
            CauseKind::NoSendTime => f.write_str("no send time: the window never opens"),
            CauseKind::InDoubt => write!(f, "in doubt: {d} may have been sent"),
            CauseKind::Operator => f.write_str("paused by operator"),
            CauseKind::OutOfOffice => write!(f, "out of office until {d}"),
            CauseKind::Retrying => write!(f, "retrying: {d}"),
            CauseKind::Rejected => write!(f, "smtp: {d}"),
            CauseKind::GaveUp => write!(f, "gave up after {d}"),
            CauseKind::Other => f.write_str(d),
            other => f.write_str(other.as_str()),
        }
    }
}

stable_names! {
    /// Where a `sending` message stands on the wire (the `wire` column; NULL: its end
    /// of data has not been written).
    pub enum Wire {
        /// Its end of data is about to be written: from now on it may reach the server.
        Left = "left",
        /// The server took it (2xx); its outcome is not committed yet.
        Accepted = "accepted",
        /// The server refused its content: it did not leave after all.
        Refused = "refused",
    }
}

/// An event as stored, for the consumers that read the events table in order.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Where it stands in the order consumers read (see [`EventCursor`]).
    pub cursor: EventCursor,
    pub kind: EventKind,
    pub contact_id: Option<i64>,
    pub enrollment_id: Option<i64>,
    /// The `messages` row it concerns.
    pub message_id: Option<i64>,
    /// For a click: the link's index in the message.
    pub link: Option<i64>,
    /// For an open or click: why it looks like a machine's (a link scanner, a proxy).
    pub machine: Option<String>,
    pub data: Value,
}

/// A position in the events table, in the order consumers read it: by the writing
/// transaction (always 0 on SQLite, whose writes commit in id order), then by id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub tx: i64,
    pub id: i64,
}
