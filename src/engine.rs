//! The pure state machine of an enrollment. [`step`] is the one function that decides
//! every change of an enrollment and of its current message: given where the enrollment
//! is and what just happened (the server accepted or refused its mail, a reply, an
//! out-of-office, a bounce, an operator's command, a pause that ended), it returns the
//! enrollment's next state, the message's status, the events to record and the rule to
//! run. No I/O: callers persist the [`Transition`] exactly as computed (the store writes
//! it only if the enrollment is still in the state it was computed from).

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::json;

use crate::config::SendSettings;
use crate::model::{
    Cause, CauseKind, Enrollment, EnrollmentState, EnrollmentUpdate, EventKind, MessageStatus,
    NewEvent, Wire,
};
use crate::schedule::{next_in_window, step_due, Holidays, Window};
use crate::sequence::Sequence;

use EnrollmentState as S;

/// What the engine needs to know about the world.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub sequence: &'a Sequence,
    /// The send window in the contact's time zone.
    pub window: &'a Window,
    pub tz: Tz,
    pub holidays: &'a Holidays,
    pub send: &'a SendSettings,
}

/// What the caller knows of an enrollment's world: inputs on the send path and a
/// resume need the sequence and the contact's schedule; a reply, a suppression or an
/// operator's stop need nothing (an enrollment whose sequence is gone can still be
/// stopped).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Nothing,
    All(Context<'a>),
}

impl<'a> Scope<'a> {
    fn context(&self) -> Option<&Context<'a>> {
        match self {
            Scope::All(cx) => Some(cx),
            _ => None,
        }
    }
}

/// What happened to the step the enrollment is at, on the send path.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The SMTP server accepted the message (or it was written to the outbox).
    Sent {
        at: DateTime<Utc>,
        message_id: String,
        subject: String,
        reply: String,
    },
    /// 4xx or a connection failure before the end of data: try again later.
    /// `attempts` counts this one.
    Transient {
        at: DateTime<Utc>,
        reply: String,
        attempts: i64,
    },
    /// 5xx: the server will never take it.
    Permanent { at: DateTime<Utc>, reply: String },
    /// Not sendable as it stands (a field the template needs is missing, the step is
    /// gone, the window never opens): hold for a person, never send a mail with a hole.
    Held { at: DateTime<Utc>, cause: Cause },
    /// Not sent: while it waited its turn for SMTP the enrollment was stopped or paused
    /// by someone else (a reply, an unsubscribe, an operator), who took the claim.
    Cancelled { at: DateTime<Utc>, reason: String },
    /// Its end of data was written and no answer came: the server may have it. Never
    /// sent again blindly: held until the Sent folder or an operator settles it.
    InDoubt {
        at: DateTime<Utc>,
        message_id: String,
        reply: String,
    },
}

/// Something that arrived and concerns an enrollment (decided by the watcher from
/// the classification and the matching).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A person answered: the contact, or a colleague at the contact's company.
    Reply {
        intent: ReplyIntent,
        colleague: bool,
    },
    /// An out-of-office answer: pause until `until` (the return date plus a day, or the
    /// default pause), then resume where it was.
    AutoReply { until: DateTime<Utc> },
    /// The address bounced for good, complained, or asked to be removed: suppressed
    /// everywhere. `cause` is `Bounced`, `Complained` or `Unsubscribed`.
    Suppressed { cause: CauseKind },
    /// The rep wrote to the contact by hand (seen in the Sent folder).
    Manual,
}

/// What a reply's new text asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyIntent {
    Reply,
    Declined,
    Unsubscribe,
}

/// What a person or a timer asks of an enrollment.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `followup pause`.
    Pause,
    /// `followup resume`: where it was, its step's wait counted from the last send.
    /// `suppressed` says whether the address is on the suppression list now.
    Resume { suppressed: bool },
    /// `followup unenroll`.
    Unenroll,
    /// The address was suppressed (by an operator, an unsubscribe link, the watcher):
    /// every live enrollment of it stops. `cause` is the suppression's kind.
    Suppress { cause: CauseKind },
    /// An out-of-office pause whose date has come.
    PauseEnded,
    /// The contact's fields changed: an enrollment held for a missing field tries again.
    FieldsChanged,
    /// A message in doubt did not arrive (or an operator says send it): send it again
    /// under the same Message-ID, now.
    SendAgain { message_id: String, why: String },
    /// A message in doubt did arrive (found in the Sent folder, or an operator says so):
    /// count it as sent, exactly as if the server's answer had been recorded.
    SettleSent {
        at: DateTime<Utc>,
        message_id: String,
        subject: String,
        why: String,
    },
}

/// Everything that can happen to an enrollment.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The outcome of sending its current step.
    Send(Outcome),
    /// Its current step's `if:` does not hold: skipped, as if sent now.
    Skip { why: String },
    /// Due, but the send window opens later: due again at `at`.
    Later { at: DateTime<Utc> },
    /// A message arrived that concerns it; `data` is recorded with the event.
    Inbound {
        inbound: Inbound,
        data: serde_json::Value,
    },
    /// An operator's command, or a timer.
    Command(Command),
}

/// Why a command cannot be applied; the enrollment stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("already {0}")]
    Already(EnrollmentState),
    #[error("cannot pause: {0}")]
    CannotPause(EnrollmentState),
    #[error("cannot resume: {0}")]
    CannotResume(EnrollmentState),
    #[error("a message is in doubt: decide with `followup in-doubt release|drop`")]
    InDoubt,
    #[error("the address is suppressed")]
    Suppressed,
    #[error("not held for a message in doubt")]
    NotInDoubt,
    #[error("its sequence or step is no longer in sequences/")]
    NoSequence,
}

/// The message status an outcome leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageOutcome {
    pub status: MessageStatus,
    pub reply: Option<String>,
}

/// The engine's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub enrollment: EnrollmentUpdate,
    pub message: Option<MessageOutcome>,
    pub events: Vec<NewEvent>,
}

impl Transition {
    /// The transition that changes nothing.
    pub fn unchanged(e: &Enrollment) -> Self {
        Self::only(e, Vec::new())
    }

    /// A transition that changes nothing but records `events`.
    fn only(e: &Enrollment, events: Vec<NewEvent>) -> Self {
        Self {
            enrollment: e.unchanged(),
            message: None,
            events,
        }
    }
}

fn event(e: &Enrollment, kind: EventKind, data: serde_json::Value) -> NewEvent {
    NewEvent {
        contact_id: Some(e.contact_id),
        enrollment_id: Some(e.id),
        message_id: None,
        kind,
        data,
    }
}

/// Delay before retry number `attempts` (1-based): base · 2^(attempts-1), capped.
pub fn backoff(settings: &SendSettings, attempts: i64) -> Duration {
    let exp = (attempts.max(1) - 1).min(30) as u32;
    let factor = 2i64.saturating_pow(exp);
    let secs = settings
        .retry_base
        .num_seconds()
        .max(1)
        .saturating_mul(factor);
    Duration::seconds(secs.min(settings.retry_max.num_seconds().max(1)))
}

/// Decides what `input` does to enrollment `e` at `now`. `scope` is what the caller
/// knows: the enrollment's sequence and the contact's schedule, or less (then inputs
/// that need more are refused with [`Refusal::NoSequence`]). `Ok(None)`: nothing changes (a reply to an
/// enrollment already stopped). `Err`: an operator's command that does not apply, and
/// why.
pub fn step(
    scope: Scope<'_>,
    e: &Enrollment,
    input: &Input,
    now: DateTime<Utc>,
) -> Result<Option<Transition>, Refusal> {
    let cx = scope.context();
    let index = || {
        cx.and_then(|cx| cx.sequence.step(&e.step_id).map(|(i, _)| (cx, i)))
            .ok_or(Refusal::NoSequence)
    };
    match input {
        Input::Send(outcome) => {
            if e.state != S::Active {
                if matches!(outcome, Outcome::Held { .. }) {
                    return Ok(None);
                }
                // Someone else (a reply, an operator) moved it while its mail was in
                // flight: the message's outcome is recorded, the enrollment stays.
                return Ok(Some(outcome_only(e, outcome)));
            }
            let (cx, i) = match (index(), outcome) {
                (Ok(x), _) => x,
                // A hold needs no schedule: it is how a gone sequence is reported.
                (Err(_), Outcome::Held { cause, .. }) => return Ok(Some(hold(e, cause))),
                (
                    Err(_),
                    Outcome::InDoubt {
                        message_id, reply, ..
                    },
                ) => return Ok(Some(in_doubt(e, message_id, reply))),
                (Err(r), _) => return Err(r),
            };
            Ok(Some(after(cx, e, i, outcome)))
        }
        // Only a due enrollment is skipped or put off; one that moved since is left.
        Input::Skip { .. } | Input::Later { .. } if e.state != S::Active => Ok(None),
        Input::Skip { why } => {
            let (cx, i) = index()?;
            Ok(Some(skip(cx, e, i, now, why)))
        }
        Input::Later { at } => {
            let mut next = e.unchanged();
            next.next_run_at = Some(*at);
            Ok(Some(Transition {
                enrollment: next,
                message: None,
                events: vec![],
            }))
        }
        Input::Inbound { inbound, data } => Ok(on_inbound(e, inbound, data)),
        Input::Command(c) => command(cx, e, c, now),
    }
}

fn command(
    cx: Option<&Context<'_>>,
    e: &Enrollment,
    c: &Command,
    now: DateTime<Utc>,
) -> Result<Option<Transition>, Refusal> {
    let in_doubt = e.state == S::Held
        && e.cause
            .as_ref()
            .is_some_and(|c| c.kind == CauseKind::InDoubt);
    let mut next = e.unchanged();
    match c {
        Command::Unenroll => {
            if !e.state.is_live() {
                return Err(Refusal::Already(e.state));
            }
            stop(&mut next, Cause::new(CauseKind::Unenrolled));
            Ok(Some(Transition::with_events(
                next,
                vec![event(
                    e,
                    EventKind::Stopped,
                    json!({ "reason": "unenrolled" }),
                )],
            )))
        }
        Command::Pause => match e.state {
            S::Active | S::Held => {
                next.state = S::Paused;
                next.cause = Some(Cause::new(CauseKind::Operator));
                next.next_run_at = None;
                Ok(Some(Transition::with_events(
                    next,
                    vec![event(e, EventKind::Paused, json!({}))],
                )))
            }
            s => Err(Refusal::CannotPause(s)),
        },
        Command::Resume { suppressed } => {
            if !matches!(e.state, S::Paused | S::Held) {
                return Err(Refusal::CannotResume(e.state));
            }
            if in_doubt {
                return Err(Refusal::InDoubt);
            }
            if *suppressed {
                return Err(Refusal::Suppressed);
            }
            let cx = cx.ok_or(Refusal::NoSequence)?;
            // Resume where it was: the step's wait counts from the last send.
            let wait = cx
                .sequence
                .step(&e.step_id)
                .map(|(_, s)| s.wait)
                .unwrap_or_default();
            let from = e.last_sent_at.map(|t| t + wait).unwrap_or(now).max(now);
            next.state = S::Active;
            next.cause = None;
            next.paused_until = None;
            next.next_run_at = Some(
                step_due(from, Duration::zero(), cx.window, cx.tz, cx.holidays).unwrap_or(from),
            );
            Ok(Some(Transition::with_events(
                next,
                vec![event(e, EventKind::Resumed, json!({}))],
            )))
        }
        Command::Suppress { cause } => {
            if !e.state.is_live() {
                return Ok(None);
            }
            stop(&mut next, Cause::new(*cause));
            Ok(Some(Transition::with_events(
                next,
                vec![event(
                    e,
                    EventKind::Stopped,
                    json!({ "reason": cause.as_str() }),
                )],
            )))
        }
        Command::PauseEnded => {
            if e.state != S::Paused || e.paused_until.is_none_or(|t| t > now) {
                return Ok(None);
            }
            next.state = S::Active;
            next.cause = None;
            next.paused_until = None;
            // Due now: the send window still decides the hour.
            next.next_run_at = Some(now);
            Ok(Some(Transition::with_events(
                next,
                vec![event(
                    e,
                    EventKind::Resumed,
                    json!({ "after": "pause ended" }),
                )],
            )))
        }
        Command::FieldsChanged => {
            let missing = e
                .cause
                .as_ref()
                .is_some_and(|c| c.kind == CauseKind::MissingField);
            if e.state != S::Held || !missing {
                return Ok(None);
            }
            next.state = S::Active;
            next.cause = None;
            next.next_run_at = Some(now);
            Ok(Some(Transition::with_events(
                next,
                vec![event(
                    e,
                    EventKind::Resumed,
                    json!({ "after": "fields changed" }),
                )],
            )))
        }
        Command::SendAgain { message_id, why } => {
            if !in_doubt {
                // Stopped meanwhile (a reply, an operator): not sent again.
                return Ok(Some(Transition {
                    enrollment: e.unchanged(),
                    message: Some(MessageOutcome {
                        status: MessageStatus::Cancelled,
                        reply: Some(format!(
                            "released ({why}), but the enrollment is {}: not sent",
                            e.state
                        )),
                    }),
                    events: vec![event(
                        e,
                        EventKind::Cancelled,
                        json!({ "message_id": message_id, "reason": format!("enrollment {}", e.state) }),
                    )],
                }));
            }
            next.state = S::Active;
            next.cause = None;
            next.next_run_at = Some(now);
            Ok(Some(Transition {
                enrollment: next,
                message: Some(MessageOutcome {
                    status: MessageStatus::Deferred,
                    reply: Some(format!("released: {why}")),
                }),
                events: vec![event(
                    e,
                    EventKind::Released,
                    json!({ "message_id": message_id, "why": why }),
                )],
            }))
        }
        Command::SettleSent {
            at,
            message_id,
            subject,
            why,
        } => {
            let sent = Outcome::Sent {
                at: *at,
                message_id: message_id.clone(),
                subject: subject.clone(),
                reply: why.clone(),
            };
            if !in_doubt {
                // Stopped meanwhile (a reply): the message did leave, and counts; the
                // enrollment stays as it is.
                return Ok(Some(Transition {
                    enrollment: e.unchanged(),
                    message: Some(MessageOutcome {
                        status: MessageStatus::Sent,
                        reply: Some(why.clone()),
                    }),
                    events: vec![event(
                        e,
                        EventKind::Sent,
                        json!({ "sequence": e.sequence, "step": e.step_id, "message_id": message_id, "mailbox": e.mailbox }),
                    )],
                }));
            }
            let (cx, i) = match cx.and_then(|cx| cx.sequence.step(&e.step_id).map(|(i, _)| (cx, i)))
            {
                Some(x) => x,
                None => return Err(Refusal::NoSequence),
            };
            // Held only because of the doubt: decided as for the active enrollment it was.
            let mut was = e.clone();
            was.state = S::Active;
            was.cause = None;
            let mut tr = after(cx, &was, i, &sent);
            tr.enrollment.from = e.state;
            Ok(Some(tr))
        }
    }
}

impl Transition {
    fn with_events(enrollment: EnrollmentUpdate, events: Vec<NewEvent>) -> Self {
        Self {
            enrollment,
            message: None,
            events,
        }
    }
}

/// The outcome of a message whose enrollment is no longer active: its status and the
/// event that says what the server did; the enrollment as it is.
fn outcome_only(e: &Enrollment, outcome: &Outcome) -> Transition {
    let (status, kind, reply, data) = match outcome {
        Outcome::Sent {
            message_id, reply, ..
        } => (
            MessageStatus::Sent,
            EventKind::Sent,
            reply,
            json!({ "sequence": e.sequence, "step": e.step_id, "message_id": message_id, "mailbox": e.mailbox }),
        ),
        Outcome::Transient {
            reply, attempts, ..
        } => (
            MessageStatus::Deferred,
            EventKind::Deferred,
            reply,
            json!({ "step": e.step_id, "reply": reply, "attempts": attempts }),
        ),
        Outcome::Permanent { reply, .. } => (
            MessageStatus::Failed,
            EventKind::Failed,
            reply,
            json!({ "step": e.step_id, "reply": reply }),
        ),
        Outcome::Cancelled { reason, .. } => (
            MessageStatus::Cancelled,
            EventKind::Cancelled,
            reason,
            json!({ "step": e.step_id, "reason": reason }),
        ),
        Outcome::InDoubt {
            message_id, reply, ..
        } => (
            MessageStatus::InDoubt,
            EventKind::InDoubt,
            reply,
            json!({ "message_id": message_id, "reply": reply }),
        ),
        Outcome::Held { .. } => return Transition::unchanged(e),
    };
    Transition {
        enrollment: e.unchanged(),
        message: Some(MessageOutcome {
            status,
            reply: Some(reply.clone()),
        }),
        events: vec![event(e, kind, data)],
    }
}

fn stop(next: &mut EnrollmentUpdate, cause: Cause) {
    next.state = S::Stopped;
    next.cause = Some(cause);
    next.next_run_at = None;
    next.paused_until = None;
}

fn hold(e: &Enrollment, cause: &Cause) -> Transition {
    let mut next = e.unchanged();
    next.state = S::Held;
    next.next_run_at = None;
    next.cause = Some(cause.clone());
    Transition {
        enrollment: next,
        message: None,
        events: vec![event(
            e,
            EventKind::Held,
            json!({ "step": e.step_id, "reason": cause.to_string() }),
        )],
    }
}

fn in_doubt(e: &Enrollment, message_id: &str, reply: &str) -> Transition {
    let mut next = e.unchanged();
    next.state = S::Held;
    next.next_run_at = None;
    next.cause = Some(Cause::with(CauseKind::InDoubt, message_id));
    Transition {
        enrollment: next,
        message: Some(MessageOutcome {
            status: MessageStatus::InDoubt,
            reply: Some(reply.to_string()),
        }),
        events: vec![event(
            e,
            EventKind::InDoubt,
            json!({ "message_id": message_id, "reply": reply }),
        )],
    }
}

/// Decides what follows `outcome` for enrollment `e`, which is at step `index`.
fn after(cx: &Context<'_>, e: &Enrollment, index: usize, outcome: &Outcome) -> Transition {
    let mut next = e.unchanged();
    let step_id = e.step_id.clone();
    match outcome {
        Outcome::Sent {
            at,
            message_id,
            subject,
            reply,
        } => {
            let mut events = vec![event(
                e,
                EventKind::Sent,
                json!({ "sequence": cx.sequence.name, "step": step_id, "message_id": message_id, "mailbox": e.mailbox }),
            )];
            if next.thread_message_id.is_none() {
                next.thread_message_id = Some(message_id.clone());
                next.thread_subject = Some(subject.clone());
            }
            next.last_sent_at = Some(*at);
            advance(cx, e, &mut next, index, *at, &mut events);
            Transition {
                enrollment: next,
                message: Some(MessageOutcome {
                    status: MessageStatus::Sent,
                    reply: Some(reply.clone()),
                }),
                events,
            }
        }
        Outcome::Transient {
            at,
            reply,
            attempts,
        } => {
            if *attempts >= cx.send.max_attempts as i64 {
                next.attempts = *attempts;
                let cause = Cause::with(CauseKind::GaveUp, format!("{attempts} attempts: {reply}"));
                return stop_failed(e, next, &step_id, cause, reply);
            }
            let retry_at = *at + backoff(cx.send, *attempts);
            next.attempts = *attempts;
            next.state = S::Active;
            next.next_run_at =
                Some(next_in_window(retry_at, cx.window, cx.tz, cx.holidays).unwrap_or(retry_at));
            next.cause = Some(Cause::with(CauseKind::Retrying, reply.clone()));
            Transition {
                enrollment: next.clone(),
                message: Some(MessageOutcome {
                    status: MessageStatus::Deferred,
                    reply: Some(reply.clone()),
                }),
                events: vec![event(
                    e,
                    EventKind::Deferred,
                    json!({ "step": step_id, "reply": reply, "attempts": attempts, "retry_at": next.next_run_at }),
                )],
            }
        }
        Outcome::Permanent { reply, .. } => stop_failed(
            e,
            next,
            &step_id,
            Cause::with(CauseKind::Rejected, reply.clone()),
            reply,
        ),
        Outcome::Cancelled { reason, .. } => Transition {
            // The enrollment is someone else's now: left as they set it.
            enrollment: next,
            message: Some(MessageOutcome {
                status: MessageStatus::Cancelled,
                reply: Some(reason.clone()),
            }),
            events: vec![event(
                e,
                EventKind::Cancelled,
                json!({ "step": step_id, "reason": reason }),
            )],
        },
        Outcome::InDoubt {
            message_id, reply, ..
        } => in_doubt(e, message_id, reply),
        Outcome::Held { cause, .. } => hold(e, cause),
    }
}

/// Moves `next` past step `index`, which was sent or skipped at `at`: to the next
/// step, due after its wait in the window, or to `finished` (whose event fires
/// `on_finish` through the rules runner).
fn advance(
    cx: &Context<'_>,
    e: &Enrollment,
    next: &mut EnrollmentUpdate,
    index: usize,
    at: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) {
    next.attempts = 0;
    next.cause = None;
    match cx.sequence.steps.get(index + 1) {
        Some(step) => {
            next.step_index = (index + 1) as i64;
            next.step_id = step.id.clone();
            match step_due(at, step.wait, cx.window, cx.tz, cx.holidays) {
                Some(t) => {
                    next.state = S::Active;
                    next.next_run_at = Some(t);
                }
                None => {
                    next.state = S::Held;
                    next.next_run_at = None;
                    next.cause = Some(Cause::new(CauseKind::NoSendTime));
                }
            }
        }
        None => {
            next.state = S::Finished;
            next.next_run_at = None;
            events.push(event(
                e,
                EventKind::Finished,
                json!({ "sequence": cx.sequence.name }),
            ));
        }
    }
}

/// Step `index` is not sent because its `if:` does not hold: recorded as skipped, and
/// the enrollment moves on as if it had been sent now (the next wait counts from here).
fn skip(
    cx: &Context<'_>,
    e: &Enrollment,
    index: usize,
    at: DateTime<Utc>,
    why: &str,
) -> Transition {
    let mut next = e.unchanged();
    let mut events = vec![event(
        e,
        EventKind::Skipped,
        json!({ "sequence": cx.sequence.name, "step": e.step_id, "because": why }),
    )];
    advance(cx, e, &mut next, index, at, &mut events);
    Transition {
        enrollment: next,
        message: None,
        events,
    }
}

fn stop_failed(
    e: &Enrollment,
    mut next: EnrollmentUpdate,
    step_id: &str,
    cause: Cause,
    reply: &str,
) -> Transition {
    let reason = cause.to_string();
    stop(&mut next, cause);
    Transition {
        enrollment: next,
        message: Some(MessageOutcome {
            status: MessageStatus::Failed,
            reply: Some(reply.to_string()),
        }),
        events: vec![
            event(
                e,
                EventKind::Failed,
                json!({ "step": step_id, "reply": reply }),
            ),
            event(e, EventKind::Stopped, json!({ "reason": reason })),
        ],
    }
}

/// The effect of an inbound message on one live enrollment. `None` when nothing
/// changes (an enrollment already stopped or finished).
fn on_inbound(e: &Enrollment, inbound: &Inbound, data: &serde_json::Value) -> Option<Transition> {
    if !e.state.is_live() {
        return None;
    }
    let mut next = e.unchanged();
    let events = match inbound {
        Inbound::Reply { intent, colleague } => {
            let (cause, kind) = match intent {
                ReplyIntent::Reply => (CauseKind::Replied, EventKind::Replied),
                ReplyIntent::Declined => (CauseKind::Declined, EventKind::Replied),
                ReplyIntent::Unsubscribe => (CauseKind::Unsubscribed, EventKind::Unsubscribed),
            };
            stop(&mut next, Cause::new(cause));
            let mut d = data.clone();
            if let Some(o) = d.as_object_mut() {
                o.insert("colleague".into(), json!(colleague));
                // The rules runner reads it: only a warm answer fires `on_reply`.
                let intent = match intent {
                    ReplyIntent::Reply => "reply",
                    ReplyIntent::Declined => "declined",
                    ReplyIntent::Unsubscribe => "unsubscribe",
                };
                o.insert("intent".into(), json!(intent));
            }
            vec![
                event(e, kind, d),
                event(e, EventKind::Stopped, json!({ "reason": cause.as_str() })),
            ]
        }
        Inbound::AutoReply { until } => {
            let mut d = data.clone();
            if let Some(o) = d.as_object_mut() {
                o.insert("until".into(), json!(until));
            }
            let operator = e
                .cause
                .as_ref()
                .is_some_and(|c| c.kind == CauseKind::Operator);
            if e.state == S::Held || (e.state == S::Paused && operator) {
                // Held for a person to look at, or paused by one: an out-of-office
                // pause, which ends by itself, must not release it.
                return Some(Transition::only(
                    e,
                    vec![event(e, EventKind::AutoReplied, d)],
                ));
            }
            next.state = S::Paused;
            next.paused_until = Some(*until);
            next.cause = Some(Cause::with(
                CauseKind::OutOfOffice,
                until.format("%Y-%m-%d").to_string(),
            ));
            vec![
                event(e, EventKind::AutoReplied, d),
                event(e, EventKind::Paused, json!({ "until": until })),
            ]
        }
        Inbound::Suppressed { cause } => {
            stop(&mut next, Cause::new(*cause));
            // `bounced` and `unsubscribed` are counted per step by `status`.
            let kind = match cause {
                CauseKind::Complained => EventKind::Complained,
                CauseKind::Unsubscribed => EventKind::Unsubscribed,
                _ => EventKind::Bounced,
            };
            vec![
                event(e, kind, data.clone()),
                event(e, EventKind::Stopped, json!({ "reason": cause.as_str() })),
            ]
        }
        Inbound::Manual => {
            stop(&mut next, Cause::new(CauseKind::Manual));
            vec![
                event(e, EventKind::Manual, data.clone()),
                event(e, EventKind::Stopped, json!({ "reason": "manual" })),
            ]
        }
    };
    Some(Transition {
        enrollment: next,
        message: None,
        events,
    })
}

/// A `sending` message found after a daemon died or a lease ran out, with what is
/// known of where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned {
    /// Its wire mark (`None`: its end of data was never written).
    pub wire: Option<Wire>,
    /// The daemon that began this attempt is dead (its liveness lock is free), so its
    /// journal has been read and `wire` is the whole truth.
    pub began_by_dead: bool,
    /// Its claim belongs to a dead daemon.
    pub claimed_by_dead: bool,
    /// Its lease ran out: its daemon may be alive but too slow, or dead unseen.
    pub lease_expired: bool,
}

/// What becomes of an abandoned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Its daemon may still be working on it: left alone.
    Leave,
    /// It never left: due again under the same Message-ID, its attempt not counted.
    SendAgain,
    /// It may have reached the server: in doubt, never sent again blindly.
    InDoubt,
    /// The server accepted it and its daemon died before recording it: in doubt first
    /// (in the same transaction as the others), then counted as sent.
    Accepted,
}

/// Decides what becomes of an abandoned `sending` message. Only a message its own dead
/// daemon began, with no mark, is known not to have left: one begun by another daemon
/// (whose claim the dead one took over) may have left under that daemon, whose journal
/// nobody read, and one whose lease ran out may belong to a daemon that lives.
pub fn recover(a: &Abandoned) -> Recovery {
    let wire = a.wire.filter(|w| *w != Wire::Refused);
    match wire {
        None if a.began_by_dead => Recovery::SendAgain,
        _ if !(a.lease_expired || a.claimed_by_dead) => Recovery::Leave,
        Some(Wire::Accepted) => Recovery::Accepted,
        _ => Recovery::InDoubt,
    }
}

/// When an out-of-office pause ends: the day after the return date, at local midnight
/// in the contact's zone (the send window then decides the hour), or after the default
/// pause when no date could be read.
pub fn pause_until(
    return_date: Option<chrono::NaiveDate>,
    tz: Tz,
    now: DateTime<Utc>,
    default_pause: Duration,
) -> DateTime<Utc> {
    return_date
        .and_then(|d| d.succ_opt())
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|t| t.and_local_timezone(tz).earliest())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t > now)
        .unwrap_or(now + default_pause)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::{Rule, Step};
    use chrono::TimeZone;

    fn seq() -> Sequence {
        let step = |id: &str, wait: i64, thread: bool| Step {
            id: id.into(),
            wait: Duration::seconds(wait),
            template: id.into(),
            variants: vec![],
            thread,
            condition: None,
        };
        Sequence {
            name: "intro".into(),
            description: None,
            senders: vec!["sales".into()],
            window: None,
            steps: vec![step("first", 0, false), step("bump", 3 * 86400, true)],
            on_reply: None,
            stop_on_domain_reply: true,
            on_finish: Some(Rule {
                stage: Some("nurture".into()),
                ..Rule::default()
            }),
            on_open: vec![],
            on_click: vec![],
            track: Default::default(),
            unsubscribe: Default::default(),
            language: None,
            spans: Default::default(),
        }
    }

    fn enrollment(step_index: i64, step_id: &str) -> Enrollment {
        Enrollment {
            id: 7,
            contact_id: 3,
            email: "li@example.cn".into(),
            sequence: "intro".into(),
            mailbox: "sales".into(),
            state: S::Active,
            cause: None,
            step_index,
            step_id: step_id.into(),
            next_run_at: None,
            paused_until: None,
            thread_message_id: None,
            thread_subject: None,
            last_sent_at: None,
            attempts: 0,
        }
    }

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, h, m, 0).unwrap()
    }

    /// Runs `step` with a full scope: the sequence above, always open, UTC.
    fn decide(e: &Enrollment, input: Input) -> Result<Option<Transition>, Refusal> {
        let s = seq();
        let w = Window::always();
        let h = Holidays::default();
        let settings = SendSettings::default();
        let cx = Context {
            sequence: &s,
            window: &w,
            tz: chrono_tz::UTC,
            holidays: &h,
            send: &settings,
        };
        step(Scope::All(cx), e, &input, t(10, 0))
    }

    fn run(e: &Enrollment, o: Outcome) -> Transition {
        decide(e, Input::Send(o)).unwrap().unwrap()
    }

    fn sent(message_id: &str) -> Outcome {
        Outcome::Sent {
            at: t(10, 0),
            message_id: message_id.into(),
            subject: "Hello".into(),
            reply: "250 ok".into(),
        }
    }

    fn kinds(tr: &Transition) -> Vec<EventKind> {
        tr.events.iter().map(|e| e.kind).collect()
    }

    /// What a cell of the table expects.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        /// Changed to this state.
        To(EnrollmentState),
        /// Something recorded (a message's outcome, an event), the state as it was.
        Same,
        /// Nothing to do.
        Nothing,
        /// The command is refused.
        Refused,
    }

    /// Every input in every state: the engine is total, and each cell is what a user
    /// would expect (a reply never revives a finished enrollment; a resume never
    /// releases a message in doubt; a send outcome never moves an enrollment that a
    /// reply stopped while the mail was in flight).
    #[test]
    fn every_input_in_every_state() {
        use Expect::*;
        let states: Vec<(&str, Enrollment)> = {
            let base = enrollment(0, "first");
            let with = |state, cause: Option<Cause>, until: Option<DateTime<Utc>>| {
                let mut e = base.clone();
                e.state = state;
                e.cause = cause;
                e.paused_until = until;
                e
            };
            vec![
                ("active", with(S::Active, None, None)),
                (
                    "held: field",
                    with(
                        S::Held,
                        Some(Cause::with(CauseKind::MissingField, "company")),
                        None,
                    ),
                ),
                (
                    "held: doubt",
                    with(
                        S::Held,
                        Some(Cause::with(CauseKind::InDoubt, "<a@x>")),
                        None,
                    ),
                ),
                (
                    "paused: operator",
                    with(S::Paused, Some(Cause::new(CauseKind::Operator)), None),
                ),
                (
                    "paused: away",
                    with(
                        S::Paused,
                        Some(Cause::with(CauseKind::OutOfOffice, "2026-11-25")),
                        Some(t(9, 0)),
                    ),
                ),
                (
                    "stopped",
                    with(S::Stopped, Some(Cause::new(CauseKind::Replied)), None),
                ),
                ("finished", with(S::Finished, None, None)),
            ]
        };
        let cmd = Input::Command;
        let inbound = |i| Input::Inbound {
            inbound: i,
            data: json!({}),
        };
        let send = Input::Send;
        let settle = Command::SettleSent {
            at: t(9, 0),
            message_id: "<a@x>".into(),
            subject: "Hello".into(),
            why: "found in Sent".into(),
        };
        let again = Command::SendAgain {
            message_id: "<a@x>".into(),
            why: "not in Sent".into(),
        };
        let held = Outcome::Held {
            at: t(10, 0),
            cause: Cause::with(CauseKind::MissingField, "company"),
        };
        let doubt = Outcome::InDoubt {
            at: t(10, 0),
            message_id: "<a@x>".into(),
            reply: "timeout".into(),
        };
        let transient = |n| Outcome::Transient {
            at: t(10, 0),
            reply: "451 later".into(),
            attempts: n,
        };
        let permanent = Outcome::Permanent {
            at: t(10, 0),
            reply: "550 no".into(),
        };
        let cancelled = Outcome::Cancelled {
            at: t(10, 0),
            reason: "stopped".into(),
        };
        let reply = Inbound::Reply {
            intent: ReplyIntent::Reply,
            colleague: false,
        };
        let away = Inbound::AutoReply { until: t(23, 0) };
        let bounce = Inbound::Suppressed {
            cause: CauseKind::Bounced,
        };
        let (a, h, p, st, f) = (
            To(S::Active),
            To(S::Held),
            To(S::Paused),
            To(S::Stopped),
            To(S::Finished),
        );
        let _ = f;
        #[rustfmt::skip]
        let table: Vec<(&str, Input, [Expect; 7])> = vec![
            //                                              active  field   doubt   pausedO pausedA stopped finished
            ("sent",              send(sent("<b@x>")),      [a,      Same,   Same,   Same,   Same,   Same,   Same]),
            ("transient",         send(transient(1)),       [a,      Same,   Same,   Same,   Same,   Same,   Same]),
            ("transient, last",   send(transient(99)),      [st,     Same,   Same,   Same,   Same,   Same,   Same]),
            ("permanent",         send(permanent),          [st,     Same,   Same,   Same,   Same,   Same,   Same]),
            ("held",              send(held),               [h,      Nothing,Nothing,Nothing,Nothing,Nothing,Nothing]),
            ("cancelled",         send(cancelled),          [Same,   Same,   Same,   Same,   Same,   Same,   Same]),
            ("in doubt",          send(doubt),              [h,      Same,   Same,   Same,   Same,   Same,   Same]),
            ("skip",              Input::Skip { why: "no click".into() }, [a, Nothing, Nothing, Nothing, Nothing, Nothing, Nothing]),
            ("later",             Input::Later { at: t(11, 0) },          [a, Nothing, Nothing, Nothing, Nothing, Nothing, Nothing]),
            ("reply",             inbound(reply),           [st,     st,     st,     st,     st,     Nothing,Nothing]),
            ("auto-reply",        inbound(away),            [p,      Same,   Same,   Same,   p,      Nothing,Nothing]),
            ("bounce",            inbound(bounce),          [st,     st,     st,     st,     st,     Nothing,Nothing]),
            ("manual",            inbound(Inbound::Manual), [st,     st,     st,     st,     st,     Nothing,Nothing]),
            ("pause",             cmd(Command::Pause),      [p,      p,      p,      Refused,Refused,Refused,Refused]),
            ("resume",            cmd(Command::Resume { suppressed: false }), [Refused, a, Refused, a, a, Refused, Refused]),
            ("resume suppressed", cmd(Command::Resume { suppressed: true }),  [Refused, Refused, Refused, Refused, Refused, Refused, Refused]),
            ("unenroll",          cmd(Command::Unenroll),   [st,     st,     st,     st,     st,     Refused,Refused]),
            ("suppress",          cmd(Command::Suppress { cause: CauseKind::Suppressed }), [st, st, st, st, st, Nothing, Nothing]),
            ("pause ended",       cmd(Command::PauseEnded), [Nothing,Nothing,Nothing,Nothing,a,      Nothing,Nothing]),
            ("fields changed",    cmd(Command::FieldsChanged), [Nothing, a,  Nothing,Nothing,Nothing,Nothing,Nothing]),
            ("send again",        cmd(again),               [Same,   Same,   a,      Same,   Same,   Same,   Same]),
            ("settle as sent",    cmd(settle),              [Same,   Same,   a,      Same,   Same,   Same,   Same]),
        ];
        let mut wrong = Vec::new();
        for (name, input, expected) in &table {
            for ((state, e), want) in states.iter().zip(expected) {
                let got = match decide(e, input.clone()) {
                    Err(_) => Refused,
                    Ok(None) => Nothing,
                    Ok(Some(tr)) if tr.enrollment != e.unchanged() => To(tr.enrollment.state),
                    Ok(Some(tr)) => {
                        assert!(
                            tr.message.is_some()
                                || !tr.events.is_empty()
                                || tr.enrollment != e.unchanged(),
                            "{name} in {state}: a transition that records nothing should be None"
                        );
                        Same
                    }
                };
                if got != *want {
                    wrong.push(format!("{name} in {state}: expected {want:?}, got {got:?}"));
                }
                // Every transition is decided from the state it was read in, so that
                // the store can refuse to lay it over a change made meanwhile.
                if let Ok(Some(tr)) = decide(e, input.clone()) {
                    assert_eq!(tr.enrollment.from, e.state, "{name} in {state}");
                    assert!(
                        tr.enrollment.state.is_live() || tr.enrollment.next_run_at.is_none(),
                        "{name} in {state}: an ended enrollment is never due"
                    );
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn sent_first_step_advances_and_starts_the_thread() {
        let tr = run(&enrollment(0, "first"), sent("<a@x>"));
        assert_eq!(tr.enrollment.state, S::Active);
        assert_eq!(tr.enrollment.step_id, "bump");
        assert_eq!(
            tr.enrollment.next_run_at,
            Some(t(10, 0) + Duration::days(3))
        );
        assert_eq!(tr.enrollment.thread_message_id.as_deref(), Some("<a@x>"));
        assert_eq!(tr.message.as_ref().unwrap().status, MessageStatus::Sent);
        assert_eq!(kinds(&tr), [EventKind::Sent]);
    }

    #[test]
    fn last_step_finishes_and_applies_on_finish() {
        let mut e = enrollment(1, "bump");
        e.thread_message_id = Some("<a@x>".into());
        let tr = run(&e, sent("<b@x>"));
        assert_eq!(tr.enrollment.state, S::Finished);
        assert_eq!(
            tr.enrollment.thread_message_id.as_deref(),
            Some("<a@x>"),
            "the thread root is kept"
        );
        assert_eq!(
            kinds(&tr),
            [EventKind::Sent, EventKind::Finished],
            "the finished event is what fires on_finish"
        );
    }

    #[test]
    fn temporary_failure_backs_off_then_gives_up() {
        let transient = |attempts| Outcome::Transient {
            at: t(10, 0),
            reply: "451 later".into(),
            attempts,
        };
        let tr = run(&enrollment(0, "first"), transient(3));
        assert_eq!(tr.enrollment.state, S::Active);
        assert_eq!(tr.enrollment.step_id, "first", "the same step is retried");
        assert_eq!(tr.enrollment.next_run_at, Some(t(10, 4)), "60s · 2^2");
        assert_eq!(tr.message.unwrap().status, MessageStatus::Deferred);
        assert_eq!(tr.enrollment.cause.unwrap().kind, CauseKind::Retrying);
        let tr = run(&enrollment(0, "first"), transient(12));
        assert_eq!(tr.enrollment.state, S::Stopped);
        let cause = tr.enrollment.cause.unwrap();
        assert_eq!(cause.kind, CauseKind::GaveUp);
        assert_eq!(cause.to_string(), "gave up after 12 attempts: 451 later");
    }

    #[test]
    fn a_reply_stops_and_says_whether_it_was_a_yes() {
        let e = enrollment(1, "bump");
        let reply = |intent| Input::Inbound {
            inbound: Inbound::Reply {
                intent,
                colleague: false,
            },
            data: json!({}),
        };
        let tr = decide(&e, reply(ReplyIntent::Reply)).unwrap().unwrap();
        assert_eq!(tr.enrollment.state, S::Stopped);
        assert_eq!(tr.enrollment.cause, Some(Cause::new(CauseKind::Replied)));
        assert_eq!(tr.enrollment.next_run_at, None);
        assert_eq!(kinds(&tr), [EventKind::Replied, EventKind::Stopped]);
        // The rules runner reads the intent: only a yes fires `on_reply`.
        assert_eq!(tr.events[0].data["intent"], "reply");
        let tr = decide(&e, reply(ReplyIntent::Declined)).unwrap().unwrap();
        assert_eq!(tr.enrollment.cause, Some(Cause::new(CauseKind::Declined)));
        assert_eq!(tr.events[0].data["intent"], "declined");
    }

    #[test]
    fn an_auto_reply_pauses_until_the_day_after_the_return_date() {
        let now = t(10, 0);
        let d = chrono::NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        let until = pause_until(Some(d), chrono_tz::Asia::Shanghai, now, Duration::days(7));
        assert_eq!(
            until,
            Utc.with_ymd_and_hms(2026, 12, 3, 16, 0, 0).unwrap(),
            "Dec 4 00:00 in Shanghai"
        );
        assert_eq!(
            pause_until(None, chrono_tz::UTC, now, Duration::days(7)),
            now + Duration::days(7)
        );
        let past = chrono::NaiveDate::from_ymd_opt(2026, 1, 3).unwrap();
        assert_eq!(
            pause_until(Some(past), chrono_tz::UTC, now, Duration::days(7)),
            now + Duration::days(7)
        );
        let input = Input::Inbound {
            inbound: Inbound::AutoReply { until },
            data: json!({}),
        };
        let tr = decide(&enrollment(1, "bump"), input).unwrap().unwrap();
        assert_eq!(tr.enrollment.state, S::Paused);
        assert_eq!(tr.enrollment.paused_until, Some(until));
        assert_eq!(tr.enrollment.step_id, "bump", "resumes where it was");
        // The pause ends on its date, and not before.
        let mut paused = enrollment(1, "bump");
        paused.state = S::Paused;
        paused.paused_until = Some(until);
        let end = Input::Command(Command::PauseEnded);
        assert!(
            step(Scope::Nothing, &paused, &end, until - Duration::seconds(1))
                .unwrap()
                .is_none()
        );
        let tr = step(Scope::Nothing, &paused, &end, until).unwrap().unwrap();
        assert_eq!(tr.enrollment.state, S::Active);
        assert_eq!(tr.enrollment.next_run_at, Some(until));
    }

    #[test]
    fn backoff_is_capped() {
        let s = SendSettings::default();
        assert_eq!(backoff(&s, 1), Duration::seconds(60));
        assert_eq!(backoff(&s, 2), Duration::seconds(120));
        assert_eq!(backoff(&s, 40), Duration::hours(2));
    }

    #[test]
    fn permanent_failure_stops_with_the_server_reply() {
        let tr = run(
            &enrollment(0, "first"),
            Outcome::Permanent {
                at: t(10, 0),
                reply: "550 5.1.1 User unknown".into(),
            },
        );
        assert_eq!(tr.enrollment.state, S::Stopped);
        assert_eq!(
            tr.enrollment.cause.as_ref().unwrap().to_string(),
            "smtp: 550 5.1.1 User unknown"
        );
        assert_eq!(tr.message.as_ref().unwrap().status, MessageStatus::Failed);
        assert_eq!(kinds(&tr), [EventKind::Failed, EventKind::Stopped]);
    }

    #[test]
    fn missing_field_holds_without_a_message_even_when_the_sequence_is_gone() {
        let held = Input::Send(Outcome::Held {
            at: t(10, 0),
            cause: Cause::with(CauseKind::SequenceGone, "intro"),
        });
        let tr = step(Scope::Nothing, &enrollment(0, "first"), &held, t(10, 0))
            .unwrap()
            .unwrap();
        assert_eq!(tr.enrollment.state, S::Held);
        assert_eq!(tr.enrollment.next_run_at, None);
        assert!(tr.message.is_none());
        assert_eq!(kinds(&tr), [EventKind::Held]);
    }

    #[test]
    fn a_message_in_doubt_is_settled_or_sent_again_but_never_resumed_blindly() {
        let e = enrollment(0, "first");
        let doubt = Outcome::InDoubt {
            at: t(10, 0),
            message_id: "<a@x>".into(),
            reply: "no answer to the end of data".into(),
        };
        let held = step(Scope::Nothing, &e, &Input::Send(doubt), t(10, 0))
            .unwrap()
            .unwrap();
        assert_eq!(held.message.unwrap().status, MessageStatus::InDoubt);
        let mut e = e.clone();
        e.state = held.enrollment.state;
        e.cause = held.enrollment.cause.clone();
        assert_eq!(
            decide(&e, Input::Command(Command::Resume { suppressed: false })),
            Err(Refusal::InDoubt)
        );
        let again = Input::Command(Command::SendAgain {
            message_id: "<a@x>".into(),
            why: "operator".into(),
        });
        let tr = step(Scope::Nothing, &e, &again, t(11, 0)).unwrap().unwrap();
        assert_eq!(tr.enrollment.state, S::Active);
        assert_eq!(tr.enrollment.next_run_at, Some(t(11, 0)));
        assert_eq!(tr.message.unwrap().status, MessageStatus::Deferred);
        let settle = Input::Command(Command::SettleSent {
            at: t(10, 0),
            message_id: "<a@x>".into(),
            subject: "Hello".into(),
            why: "found in Sent".into(),
        });
        let tr = decide(&e, settle).unwrap().unwrap();
        assert_eq!(
            tr.enrollment.step_id, "bump",
            "moved on as if it had been sent"
        );
        assert_eq!(tr.enrollment.from, S::Held);
        assert_eq!(tr.message.unwrap().status, MessageStatus::Sent);
    }

    #[test]
    fn recovery_after_a_crash_puts_in_doubt_only_what_may_have_left() {
        let a = |wire, began_by_dead, claimed_by_dead, lease_expired| Abandoned {
            wire,
            began_by_dead,
            claimed_by_dead,
            lease_expired,
        };
        // The dead daemon's own message with no mark never left.
        assert_eq!(recover(&a(None, true, true, false)), Recovery::SendAgain);
        assert_eq!(
            recover(&a(Some(Wire::Refused), true, true, false)),
            Recovery::SendAgain
        );
        // Its end of data may have reached the server.
        assert_eq!(
            recover(&a(Some(Wire::Left), true, true, false)),
            Recovery::InDoubt
        );
        assert_eq!(
            recover(&a(Some(Wire::Accepted), true, true, false)),
            Recovery::Accepted
        );
        // Begun by another daemon whose journal nobody read: it may have left.
        assert_eq!(recover(&a(None, false, true, false)), Recovery::InDoubt);
        // A live daemon's message within its lease is its own business.
        assert_eq!(recover(&a(None, false, false, false)), Recovery::Leave);
        assert_eq!(
            recover(&a(Some(Wire::Left), false, false, false)),
            Recovery::Leave
        );
        // Past its lease, the daemon may be alive but slow: in doubt, never resent.
        assert_eq!(recover(&a(None, false, false, true)), Recovery::InDoubt);
    }
}
