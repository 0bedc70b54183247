//! Putting contacts into a sequence, and the operator's commands on their enrollments
//! (pause, resume, unenroll). Each returns what happened to every address it was
//! given, as data: the command line prints it, an HTTP API would serialise it.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};

use super::ports::Enrollments;
use crate::engine::{self, Command, Context, Input, Refusal, Scope};
use crate::model::{Contact, EnrollmentState, NewEnrollment};
use crate::project::Project;
use crate::schedule::step_due;
use crate::sequence::Sequence;
use crate::store::{self, Store};

/// The result of enrolling contacts into a sequence.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Enrolled {
    pub enrolled: usize,
    pub already: usize,
    pub suppressed: Vec<String>,
    /// Those left out because of an enrollment there, with why, in the order given.
    pub not_again: Vec<NotAgain>,
}

impl Enrolled {
    /// Adds up the results of enrolling contacts a slice at a time.
    pub fn add(&mut self, other: Enrolled) {
        self.enrolled += other.enrolled;
        self.already += other.already;
        self.suppressed.extend(other.suppressed);
        self.not_again.extend(other.not_again);
    }
}

/// A contact left out of a sequence it is, or was, in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAgain {
    pub email: String,
    pub sequence: String,
    pub existing: store::Existing,
}

impl NotAgain {
    /// Whether `--again` would enroll it: its enrollment there has ended.
    pub fn ended(&self) -> bool {
        matches!(
            self.existing.state,
            EnrollmentState::Stopped | EnrollmentState::Finished
        )
    }
}

impl fmt::Display for NotAgain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.existing;
        let on = e.since.format("%Y-%m-%d %H:%M UTC");
        let seq = &self.sequence;
        match e.state {
            EnrollmentState::Finished => write!(
                f,
                "{}: already finished sequence '{seq}' on {on}",
                self.email
            )?,
            EnrollmentState::Stopped => write!(
                f,
                "{}: already stopped in sequence '{seq}' on {on} ({})",
                self.email,
                e.reason.as_deref().unwrap_or("no reason recorded")
            )?,
            state => write!(f, "{}: already in sequence '{seq}' ({state})", self.email)?,
        }
        if self.ended() {
            write!(f, "; use --again to enroll again")?;
        }
        Ok(())
    }
}

/// Enrolls stored contacts into `seq`. Each gets a mailbox now and keeps it: its owner
/// if that mailbox sends this sequence, else the least busy sender. The first step is
/// due after its wait, moved into the window in the contact's time zone. A contact is
/// never enrolled twice, unless `again`: then one whose enrollment there stopped or
/// finished (unenrolled, replied, suppressed and since unsuppressed...) starts over,
/// its earlier enrollment, messages and events kept as history.
pub async fn enroll(
    project: &Project,
    store: &Store,
    seq: &Sequence,
    contacts: &[Contact],
    again: bool,
    now: DateTime<Utc>,
) -> Result<Enrolled, store::Error> {
    let mut loads = store.mailbox_loads(&seq.name).await?;
    let mut out = Enrolled::default();
    let mut items = Vec::new();
    let Some(first) = seq.steps.first() else {
        return Ok(out);
    };
    for c in contacts {
        if c.suppressed_reason.is_some() {
            out.suppressed.push(c.email.clone());
            continue;
        }
        let mailbox = match &c.owner_mailbox {
            Some(m) if seq.senders.contains(m) => m.clone(),
            _ => seq
                .senders
                .iter()
                .min_by_key(|m| loads.get(*m).copied().unwrap_or(0))
                .cloned()
                .unwrap_or_default(),
        };
        *loads.entry(mailbox.clone()).or_default() += 1;
        let (window, tz, holidays) = project.contact_schedule(seq, c);
        let due = step_due(now, first.wait, &window, tz, &holidays).unwrap_or(now);
        items.push(NewEnrollment {
            contact_id: c.id,
            sequence: seq.name.clone(),
            mailbox,
            step_id: first.id.clone(),
            next_run_at: due,
        });
    }
    let created = store.enroll_with(&items, again, now).await?;
    out.enrolled = created.len();
    out.already = items.len() - created.len();
    if out.already > 0 {
        let new: HashSet<i64> = created.iter().map(|(_, c)| *c).collect();
        let left: Vec<i64> = items
            .iter()
            .map(|i| i.contact_id)
            .filter(|c| !new.contains(c))
            .collect();
        let existing = store.latest_enrollments(&seq.name, &left).await?;
        for c in contacts {
            if let Some(e) = existing.get(&c.id).filter(|_| !new.contains(&c.id)) {
                out.not_again.push(NotAgain {
                    email: c.email.clone(),
                    sequence: seq.name.clone(),
                    existing: e.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// What `followup enroll` did with the addresses it was given.
#[derive(Debug, Default)]
pub struct EnrollReport {
    pub enrolled: Enrolled,
    /// Addresses that are not addresses, with why.
    pub invalid: Vec<(String, String)>,
    /// Addresses with no stored contact.
    pub unknown: Vec<String>,
}

impl EnrollReport {
    /// Every address that was given and not enrolled, for whatever reason.
    pub fn problems(&self) -> usize {
        self.invalid.len()
            + self.unknown.len()
            + self.enrolled.not_again.len()
            + self.enrolled.suppressed.len()
    }
}

/// Enrolls the stored contacts with these addresses (as typed: they are normalised).
pub async fn enroll_addresses(
    project: &Project,
    store: &Store,
    seq: &Sequence,
    emails: &[String],
    again: bool,
    now: DateTime<Utc>,
) -> Result<EnrollReport, store::Error> {
    let mut report = EnrollReport::default();
    let normalised = normalise(emails, &mut report.invalid);
    let found = store.contacts_by_email(&normalised).await?;
    report.unknown = normalised
        .into_iter()
        .filter(|e| !found.iter().any(|c| &c.email == e))
        .collect();
    report.enrolled = enroll(project, store, seq, &found, again, now).await?;
    Ok(report)
}

fn normalise(emails: &[String], invalid: &mut Vec<(String, String)>) -> Vec<String> {
    let mut out = Vec::with_capacity(emails.len());
    for e in emails {
        match crate::contacts::normalise_email(e) {
            Ok(n) => out.push(n),
            Err(why) => invalid.push((e.clone(), why)),
        }
    }
    out
}

/// An operator's command on enrollments in one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Pause,
    Resume,
    Unenroll,
}

/// What an operator's command did for one address.
#[derive(Debug, Clone, PartialEq)]
pub enum Operated {
    /// The enrollment moved (or, for a command that changes nothing, stayed).
    Moved {
        email: String,
        from: EnrollmentState,
        to: EnrollmentState,
    },
    /// The engine refused: the command does not apply in the enrollment's state.
    Refused {
        email: String,
        why: Refusal,
    },
    /// Another writer moved the enrollment between the read and the write.
    Raced {
        email: String,
    },
    NotEnrolled {
        email: String,
        sequence: String,
    },
    Invalid {
        email: String,
        why: String,
    },
}

impl Operated {
    pub fn is_problem(&self) -> bool {
        !matches!(self, Operated::Moved { .. })
    }
}

impl fmt::Display for Operated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operated::Moved { email, from, to } => write!(f, "{email}: {from} -> {to}"),
            Operated::Refused { email, why } => write!(f, "{email}: {why}"),
            Operated::Raced { email } => write!(
                f,
                "{email}: changed by the daemon meanwhile; look again with `followup contacts show {email}`"
            ),
            Operated::NotEnrolled { email, sequence } => write!(f, "{email}: not in '{sequence}'"),
            Operated::Invalid { email, why } => write!(f, "{email}: {why}"),
        }
    }
}

/// Applies an operator's command to each address's enrollment in `seq`, as the engine
/// decides it; all changes are written together, each only if its enrollment is still
/// where the engine saw it.
pub async fn operate<S: Enrollments>(
    project: &Project,
    store: &S,
    seq: &Sequence,
    emails: &[String],
    op: Operator,
    now: DateTime<Utc>,
) -> Result<Vec<Operated>, store::Error> {
    let mut out = Vec::with_capacity(emails.len());
    let mut updates = Vec::new();
    let mut events = Vec::new();
    // Where in `out` each change decided goes, once the write says whether it held.
    let mut moved = Vec::new();
    for given in emails {
        let email = match crate::contacts::normalise_email(given) {
            Ok(e) => e,
            Err(why) => {
                out.push(Operated::Invalid {
                    email: given.clone(),
                    why,
                });
                continue;
            }
        };
        let (Some(e), Some(contact)) = (
            store.enrollment(&seq.name, &email).await?,
            store.contact(&email).await?,
        ) else {
            out.push(Operated::NotEnrolled {
                email,
                sequence: seq.name.clone(),
            });
            continue;
        };
        let command = match op {
            Operator::Unenroll => Command::Unenroll,
            Operator::Pause => Command::Pause,
            Operator::Resume => Command::Resume {
                suppressed: store.is_suppressed(&e.email).await?,
            },
        };
        // The contact's schedule decides when a resumed enrollment is next due.
        let (window, tz, holidays) = project.contact_schedule(seq, &contact);
        let cx = Context {
            sequence: seq,
            window: &window,
            tz,
            holidays: &holidays,
            send: &project.config.send,
        };
        match engine::step(Scope::All(cx), &e, &Input::Command(command), now) {
            Ok(Some(t)) => {
                moved.push((out.len(), e.id));
                out.push(Operated::Moved {
                    email,
                    from: e.state,
                    to: t.enrollment.state,
                });
                updates.push(t.enrollment);
                events.extend(t.events);
            }
            Ok(None) => out.push(Operated::Moved {
                email,
                from: e.state,
                to: e.state,
            }),
            Err(why) => out.push(Operated::Refused { email, why }),
        }
    }
    let applied = store.apply(&updates, &events, now).await?;
    for (at, id) in moved {
        if !applied.contains(&id) {
            if let Operated::Moved { email, .. } = &out[at] {
                out[at] = Operated::Raced {
                    email: email.clone(),
                };
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ports::fake::Fake;
    use crate::model::EnrollmentState as S;
    use chrono::TimeZone as _;

    /// The starter project `followup init` writes, loaded as `run` would (no secrets).
    fn starter() -> (tempfile::TempDir, Project) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        crate::init::write(dir.path(), false).unwrap_or_else(|e| panic!("init: {e}"));
        let (p, _) = Project::load(&dir.path().join("followup.toml"), false)
            .unwrap_or_else(|d| panic!("starter project: {d:?}"));
        (dir, p)
    }

    #[tokio::test]
    async fn operator_commands_say_what_happened_to_each_address() {
        let (_dir, p) = starter();
        let Some((name, seq)) = p.sequences.iter().next() else {
            panic!("the starter has a sequence")
        };
        let f = Fake::default();
        let active = f.enroll("a@example.com", name, S::Active);
        let finished = f.enroll("b@example.com", name, S::Finished);
        let now = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .unwrap_or_default();
        let emails: Vec<String> = [
            "A@Example.com",
            "b@example.com",
            "c@example.com",
            "not-mail",
        ]
        .map(String::from)
        .to_vec();
        let done = operate(&p, &f, seq, &emails, Operator::Pause, now)
            .await
            .unwrap_or_default();
        assert_eq!(done.len(), 4, "one answer per address given: {done:?}");
        assert!(
            matches!(&done[0], Operated::Moved { email, from: S::Active, to: S::Paused } if email == "a@example.com"),
            "{:?}",
            done[0]
        );
        assert!(
            matches!(&done[1], Operated::Refused { .. }),
            "{:?}",
            done[1]
        );
        assert!(
            matches!(&done[2], Operated::NotEnrolled { .. }),
            "{:?}",
            done[2]
        );
        assert!(
            matches!(&done[3], Operated::Invalid { .. }),
            "{:?}",
            done[3]
        );
        assert_eq!(f.state(active), Some(S::Paused));
        assert_eq!(f.state(finished), Some(S::Finished));
        assert_eq!(done.iter().filter(|d| d.is_problem()).count(), 3);

        let done = operate(&p, &f, seq, &emails[..1], Operator::Resume, now)
            .await
            .unwrap_or_default();
        assert!(
            matches!(&done[0], Operated::Moved { to: S::Active, .. }),
            "{done:?}"
        );
        assert_eq!(f.state(active), Some(S::Active));
    }

    #[tokio::test]
    async fn a_change_the_daemon_overtook_is_reported_not_written() {
        let (_dir, p) = starter();
        let Some((name, seq)) = p.sequences.iter().next() else {
            panic!("the starter has a sequence")
        };
        let f = Fake::default();
        let id = f.enroll("a@example.com", name, S::Active);
        // A reply stops the enrollment between the operator's read and write.
        *f.before_apply.borrow_mut() = Some((id, S::Stopped));
        let now = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .unwrap_or_default();
        let done = operate(&p, &f, seq, &["a@example.com".into()], Operator::Pause, now)
            .await
            .unwrap_or_default();
        assert!(matches!(&done[0], Operated::Raced { .. }), "{done:?}");
        assert_eq!(f.state(id), Some(S::Stopped), "the reply's stop stands");
        assert!(
            f.events.borrow().is_empty(),
            "no pause event for a pause not made"
        );
    }
}
