//! The pure state machine of an enrollment: given where it is and what just happened
//! (a send succeeded, the server said "try later" or "never", the contact lacks a
//! field), decide its next state, the message's status and the events to record. No
//! I/O: the scheduler carries the decision out through the store.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::json;

use crate::config::SendSettings;
use crate::model::{Enrollment, EnrollmentUpdate, NewEvent};
use crate::schedule::{next_in_window, step_due, Holidays, Window};
use crate::sequence::{Rule, Sequence};

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

/// What happened to the step the enrollment is at.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The SMTP server accepted the message (or it was written to the outbox).
    Sent {
        at: DateTime<Utc>,
        message_id: String,
        subject: String,
        reply: String,
    },
    /// 4xx or a connection failure: try again later. `attempts` counts this one.
    Transient {
        at: DateTime<Utc>,
        reply: String,
        attempts: i64,
    },
    /// 5xx: the server will never take it.
    Permanent { at: DateTime<Utc>, reply: String },
    /// The contact lacks a field the template needs: hold, never send a mail with a hole.
    Held { at: DateTime<Utc>, reason: String },
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

/// The message status an outcome leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageOutcome {
    pub status: &'static str,
    pub reply: Option<String>,
}

/// The engine's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub enrollment: EnrollmentUpdate,
    pub message: Option<MessageOutcome>,
    pub events: Vec<NewEvent>,
    /// A lifecycle rule to apply to the contact (the sequence's `on_finish`).
    pub rule: Option<Rule>,
}

fn event(e: &Enrollment, kind: &str, data: serde_json::Value) -> NewEvent {
    NewEvent {
        contact_id: Some(e.contact_id),
        enrollment_id: Some(e.id),
        message_id: None,
        kind: kind.to_string(),
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

/// Decides what follows `outcome` for enrollment `e`, which is at step `index`.
pub fn after(cx: &Context<'_>, e: &Enrollment, index: usize, outcome: &Outcome) -> Transition {
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
                "sent",
                json!({ "sequence": cx.sequence.name, "step": step_id, "message_id": message_id, "mailbox": e.mailbox }),
            )];
            if next.thread_message_id.is_none() {
                next.thread_message_id = Some(message_id.clone());
                next.thread_subject = Some(subject.clone());
            }
            next.last_sent_at = Some(*at);
            let rule = advance(cx, e, &mut next, index, *at, &mut events);
            Transition {
                enrollment: next,
                message: Some(MessageOutcome {
                    status: "sent",
                    reply: Some(reply.clone()),
                }),
                events,
                rule,
            }
        }
        Outcome::Transient {
            at,
            reply,
            attempts,
        } => {
            if *attempts >= cx.send.max_attempts as i64 {
                let reason = format!("gave up after {attempts} attempts: {reply}");
                return stop_failed(e, next, &step_id, *at, reason, reply);
            }
            let retry_at = *at + backoff(cx.send, *attempts);
            next.attempts = *attempts;
            next.state = "active".into();
            next.next_run_at =
                Some(next_in_window(retry_at, cx.window, cx.tz, cx.holidays).unwrap_or(retry_at));
            next.reason = Some(format!("retrying: {reply}"));
            Transition {
                enrollment: next.clone(),
                message: Some(MessageOutcome {
                    status: "deferred",
                    reply: Some(reply.clone()),
                }),
                events: vec![event(
                    e,
                    "deferred",
                    json!({ "step": step_id, "reply": reply, "attempts": attempts, "retry_at": next.next_run_at }),
                )],
                rule: None,
            }
        }
        Outcome::Permanent { at, reply } => {
            stop_failed(e, next, &step_id, *at, format!("smtp: {reply}"), reply)
        }
        Outcome::Cancelled { reason, .. } => Transition {
            // The enrollment is someone else's now: left as they set it.
            enrollment: next,
            message: Some(MessageOutcome {
                status: "cancelled",
                reply: Some(reason.clone()),
            }),
            events: vec![event(
                e,
                "cancelled",
                json!({ "step": step_id, "reason": reason }),
            )],
            rule: None,
        },
        Outcome::InDoubt {
            message_id, reply, ..
        } => {
            next.state = "held".into();
            next.next_run_at = None;
            next.reason = Some(format!("in doubt: {message_id} may have been sent"));
            Transition {
                enrollment: next,
                message: Some(MessageOutcome {
                    status: "in_doubt",
                    reply: Some(reply.clone()),
                }),
                events: vec![event(
                    e,
                    "in_doubt",
                    json!({ "message_id": message_id, "reply": reply }),
                )],
                rule: None,
            }
        }
        Outcome::Held { reason, .. } => {
            next.state = "held".into();
            next.next_run_at = None;
            next.reason = Some(reason.clone());
            Transition {
                enrollment: next,
                message: None,
                events: vec![event(
                    e,
                    "held",
                    json!({ "step": step_id, "reason": reason }),
                )],
                rule: None,
            }
        }
    }
}

/// Moves `next` past step `index`, which was sent or skipped at `at`: to the next
/// step, due after its wait in the window, or to `finished` (with `on_finish`).
fn advance(
    cx: &Context<'_>,
    e: &Enrollment,
    next: &mut EnrollmentUpdate,
    index: usize,
    at: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Option<Rule> {
    next.attempts = 0;
    next.reason = None;
    match cx.sequence.steps.get(index + 1) {
        Some(step) => {
            next.step_index = (index + 1) as i64;
            next.step_id = step.id.clone();
            match step_due(at, step.wait, cx.window, cx.tz, cx.holidays) {
                Some(t) => {
                    next.state = "active".into();
                    next.next_run_at = Some(t);
                }
                None => {
                    next.state = "held".into();
                    next.next_run_at = None;
                    next.reason = Some("no send time: the window never opens".into());
                }
            }
            None
        }
        None => {
            next.state = "finished".into();
            next.next_run_at = None;
            events.push(event(
                e,
                "finished",
                json!({ "sequence": cx.sequence.name }),
            ));
            cx.sequence.on_finish.clone()
        }
    }
}

/// Step `index` is not sent because its `if:` does not hold: recorded as skipped, and
/// the enrollment moves on as if it had been sent now (the next wait counts from here).
pub fn skip(
    cx: &Context<'_>,
    e: &Enrollment,
    index: usize,
    at: DateTime<Utc>,
    why: &str,
) -> Transition {
    let mut next = e.unchanged();
    let mut events = vec![event(
        e,
        "skipped",
        json!({ "sequence": cx.sequence.name, "step": e.step_id, "because": why }),
    )];
    let rule = advance(cx, e, &mut next, index, at, &mut events);
    Transition {
        enrollment: next,
        message: None,
        events,
        rule,
    }
}

fn stop_failed(
    e: &Enrollment,
    mut next: EnrollmentUpdate,
    step_id: &str,
    at: DateTime<Utc>,
    reason: String,
    reply: &str,
) -> Transition {
    let _ = at;
    next.state = "stopped".into();
    next.next_run_at = None;
    next.reason = Some(reason.clone());
    Transition {
        enrollment: next,
        message: Some(MessageOutcome {
            status: "failed",
            reply: Some(reply.to_string()),
        }),
        events: vec![
            event(e, "failed", json!({ "step": step_id, "reply": reply })),
            event(e, "stopped", json!({ "reason": reason })),
        ],
        rule: None,
    }
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
    /// everywhere.
    Suppressed { reason: &'static str },
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

/// The effect of an inbound message on one live enrollment. `None` when nothing
/// changes (an enrollment already stopped or finished).
pub fn on_inbound(
    sequence: Option<&Sequence>,
    e: &Enrollment,
    inbound: &Inbound,
    data: &serde_json::Value,
) -> Option<Transition> {
    if !matches!(e.state.as_str(), "active" | "paused" | "held") {
        return None;
    }
    let mut next = e.unchanged();
    let stop = |next: &mut EnrollmentUpdate, reason: &str| {
        next.state = "stopped".into();
        next.reason = Some(reason.to_string());
        next.next_run_at = None;
        next.paused_until = None;
    };
    let mut rule = None;
    let events = match inbound {
        Inbound::Reply { intent, colleague } => {
            let (reason, kind) = match intent {
                ReplyIntent::Reply => ("replied", "replied"),
                ReplyIntent::Declined => ("declined", "replied"),
                ReplyIntent::Unsubscribe => ("unsubscribed", "unsubscribed"),
            };
            stop(&mut next, reason);
            if *intent == ReplyIntent::Reply && !colleague {
                rule = sequence.and_then(|s| s.on_reply.clone());
            }
            let mut d = data.clone();
            if let Some(o) = d.as_object_mut() {
                o.insert("colleague".into(), json!(colleague));
            }
            vec![
                event(e, kind, d),
                event(e, "stopped", json!({ "reason": reason })),
            ]
        }
        Inbound::AutoReply { until } => {
            let mut d = data.clone();
            if let Some(o) = d.as_object_mut() {
                o.insert("until".into(), json!(until));
            }
            if e.state == "held" {
                // Held for a person to look at: the pause must not release it.
                return Some(Transition {
                    enrollment: next,
                    message: None,
                    events: vec![event(e, "auto_replied", d)],
                    rule: None,
                });
            }
            next.state = "paused".into();
            next.paused_until = Some(*until);
            next.reason = Some(format!("out of office until {}", until.format("%Y-%m-%d")));
            vec![
                event(e, "auto_replied", d),
                event(e, "paused", json!({ "until": until })),
            ]
        }
        Inbound::Suppressed { reason } => {
            stop(&mut next, reason);
            // `bounced` and `unsubscribed` are counted per step by `status`.
            vec![
                event(e, reason, data.clone()),
                event(e, "stopped", json!({ "reason": reason })),
            ]
        }
        Inbound::Manual => {
            stop(&mut next, "manual");
            vec![
                event(e, "manual", data.clone()),
                event(e, "stopped", json!({ "reason": "manual" })),
            ]
        }
    };
    Some(Transition {
        enrollment: next,
        message: None,
        events,
        rule,
    })
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
    use crate::sequence::Step;
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
            state: "active".into(),
            reason: None,
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

    fn run(e: &Enrollment, index: usize, o: Outcome) -> Transition {
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
        after(&cx, e, index, &o)
    }

    #[test]
    fn sent_first_step_advances_and_starts_the_thread() {
        let tr = run(
            &enrollment(0, "first"),
            0,
            Outcome::Sent {
                at: t(10, 0),
                message_id: "<a@x>".into(),
                subject: "Hello".into(),
                reply: "250 ok".into(),
            },
        );
        assert_eq!(tr.enrollment.state, "active");
        assert_eq!(tr.enrollment.step_id, "bump");
        assert_eq!(
            tr.enrollment.next_run_at,
            Some(t(10, 0) + Duration::days(3))
        );
        assert_eq!(tr.enrollment.thread_message_id.as_deref(), Some("<a@x>"));
        assert_eq!(tr.message.unwrap().status, "sent");
        assert_eq!(tr.events[0].kind, "sent");
        assert!(tr.rule.is_none());
    }

    #[test]
    fn last_step_finishes_and_applies_on_finish() {
        let mut e = enrollment(1, "bump");
        e.thread_message_id = Some("<a@x>".into());
        let tr = run(
            &e,
            1,
            Outcome::Sent {
                at: t(10, 0),
                message_id: "<b@x>".into(),
                subject: "Re: Hello".into(),
                reply: "250".into(),
            },
        );
        assert_eq!(tr.enrollment.state, "finished");
        assert_eq!(
            tr.enrollment.thread_message_id.as_deref(),
            Some("<a@x>"),
            "the thread root is kept"
        );
        assert_eq!(
            tr.events
                .iter()
                .map(|e| e.kind.as_str())
                .collect::<Vec<_>>(),
            ["sent", "finished"]
        );
        assert_eq!(tr.rule.unwrap().stage.as_deref(), Some("nurture"));
    }

    #[test]
    fn temporary_failure_backs_off_then_gives_up() {
        let tr = run(
            &enrollment(0, "first"),
            0,
            Outcome::Transient {
                at: t(10, 0),
                reply: "451 later".into(),
                attempts: 3,
            },
        );
        assert_eq!(tr.enrollment.state, "active");
        assert_eq!(tr.enrollment.step_id, "first", "the same step is retried");
        assert_eq!(tr.enrollment.next_run_at, Some(t(10, 4)), "60s · 2^2");
        assert_eq!(tr.message.unwrap().status, "deferred");
        let tr = run(
            &enrollment(0, "first"),
            0,
            Outcome::Transient {
                at: t(10, 0),
                reply: "451 later".into(),
                attempts: 12,
            },
        );
        assert_eq!(tr.enrollment.state, "stopped");
        assert_eq!(
            tr.enrollment.reason.as_deref(),
            Some("gave up after 12 attempts: 451 later")
        );
    }

    #[test]
    fn a_reply_stops_and_applies_on_reply() {
        let mut s = seq();
        s.on_reply = Some(Rule {
            stage: Some("replied".into()),
            tags: vec!["warm".into()],
            ..Rule::default()
        });
        let e = enrollment(1, "bump");
        let tr = on_inbound(
            Some(&s),
            &e,
            &Inbound::Reply {
                intent: ReplyIntent::Reply,
                colleague: false,
            },
            &json!({}),
        )
        .unwrap();
        assert_eq!(tr.enrollment.state, "stopped");
        assert_eq!(tr.enrollment.reason.as_deref(), Some("replied"));
        assert_eq!(tr.enrollment.next_run_at, None);
        assert_eq!(tr.rule.unwrap().tags, ["warm"]);
        let tr = on_inbound(
            Some(&s),
            &e,
            &Inbound::Reply {
                intent: ReplyIntent::Declined,
                colleague: false,
            },
            &json!({}),
        )
        .unwrap();
        assert_eq!(tr.enrollment.reason.as_deref(), Some("declined"));
        assert!(tr.rule.is_none(), "a no is not a warm lead");
        let mut done = enrollment(1, "bump");
        done.state = "finished".into();
        assert!(on_inbound(Some(&s), &done, &Inbound::Manual, &json!({})).is_none());
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
        let tr = on_inbound(
            Some(&seq()),
            &enrollment(1, "bump"),
            &Inbound::AutoReply { until },
            &json!({}),
        )
        .unwrap();
        assert_eq!(tr.enrollment.state, "paused");
        assert_eq!(tr.enrollment.paused_until, Some(until));
        assert_eq!(tr.enrollment.step_id, "bump", "resumes where it was");
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
            0,
            Outcome::Permanent {
                at: t(10, 0),
                reply: "550 5.1.1 User unknown".into(),
            },
        );
        assert_eq!(tr.enrollment.state, "stopped");
        assert_eq!(
            tr.enrollment.reason.as_deref(),
            Some("smtp: 550 5.1.1 User unknown")
        );
        assert_eq!(tr.message.unwrap().status, "failed");
    }

    #[test]
    fn missing_field_holds_without_a_message() {
        let tr = run(
            &enrollment(0, "first"),
            0,
            Outcome::Held {
                at: t(10, 0),
                reason: "missing field 'company'".into(),
            },
        );
        assert_eq!(tr.enrollment.state, "held");
        assert_eq!(tr.enrollment.next_run_at, None);
        assert!(tr.message.is_none());
    }
}
