//! Small pieces the commands share: finding a sequence by name with a did-you-mean,
//! telling who was left out of an enrollment and why, and why `simulate` moved a step.

use anyhow::bail;
use chrono::{TimeZone as _, Utc};

use crate::app::enroll::Enrolled;
use crate::app::import::{Phase, Progress, SLICE};
use crate::diagnostic::did_you_mean;
use crate::model::Contact;
use crate::project::Project;
use crate::schedule::{mailbox_day, next_slot, Due, MailboxUsage, Moved};
use crate::sequence::Sequence;
use crate::store::Store;

/// The sequence named `name`, or an error that suggests the closest name.
pub(super) fn sequence<'a>(p: &'a Project, name: &str) -> anyhow::Result<&'a Sequence> {
    if let Some(s) = p.sequence(name) {
        return Ok(s);
    }
    let known: Vec<&str> = p.sequences.keys().map(String::as_str).collect();
    match did_you_mean(name, known.iter().copied()) {
        Some(close) => bail!("unknown sequence '{name}': did you mean '{close}'?"),
        None if known.is_empty() => {
            bail!("unknown sequence '{name}': there are none in sequences/ yet")
        }
        None => bail!("unknown sequence '{name}' (known: {})", known.join(", ")),
    }
}

/// For an import: how many were left out because they are or were in the sequence, and
/// how `--again` would take those who ended it. The first few are named.
pub(super) fn print_not_again_summary(r: &Enrolled) {
    const NAMED: usize = 5;
    let ended: Vec<_> = r.not_again.iter().filter(|n| n.ended()).collect();
    for n in ended.iter().take(NAMED) {
        eprintln!("{n}");
    }
    if ended.len() > NAMED {
        eprintln!(
            "... and {} more who stopped or finished it; use --again to enroll them again",
            ended.len() - NAMED
        );
    }
}

/// `simulate`'s "why later": each reason the schedule gave, a holiday with the calendar
/// it is in (`holidays`, or the contact's country's `country_holidays`).
pub(super) fn why_moved(p: &Project, c: &Contact, moved: &[Moved]) -> String {
    if moved.is_empty() {
        return "-".into();
    }
    let country = c.country.as_deref().map(str::to_ascii_uppercase);
    let parts: Vec<String> = moved
        .iter()
        .map(|m| match m {
            Moved::OutsideWindow => "outside the send window".to_string(),
            Moved::ClosedDays(_) if m.is_weekend() => "weekend".to_string(),
            Moved::ClosedDays(days) => {
                let names: Vec<String> = days.iter().map(|d| d.to_string()).collect();
                format!("window closed on {}", names.join(", "))
            }
            Moved::Holiday(date) => {
                let calendar = match country
                    .as_ref()
                    .and_then(|k| Some((k, p.config.country_holidays.get(k)?)))
                {
                    Some((k, h)) if h.contains(*date) => format!("country_holidays.{k}"),
                    _ => "holidays".to_string(),
                };
                format!("holiday {date} ({calendar})")
            }
            Moved::DailyLimit(n) => format!("mailbox's daily limit of {n} reached today"),
            Moved::Spacing => "mailbox spaces its sends (min_gap, daily limit)".to_string(),
        })
        .collect();
    parts.join("; ")
}

/// Moves the first step's time by the mailbox's pacing, as the scheduler would for a
/// contact due now: the daily limit against what the mailbox sent today. Without a
/// database (a project not run yet) nothing was sent, and nothing moves.
pub(super) async fn mailbox_pacing(p: &Project, seq: &Sequence, c: &Contact, due: &mut Due) {
    let Some(mailbox) = c
        .owner_mailbox
        .clone()
        .filter(|m| seq.senders.contains(m))
        .or_else(|| seq.senders.first().cloned())
    else {
        return;
    };
    let Some(mb) = p.config.mailboxes.get(&mailbox) else {
        return;
    };
    let pacing = &mb.pacing;
    if pacing.daily_limit.is_none() && pacing.min_gap <= chrono::Duration::zero() {
        return;
    }
    let Ok(store) = Store::connect(&p.config.database).await else {
        return;
    };
    let day = mailbox_day(pacing, due.at);
    let start = day
        .and_hms_opt(0, 0, 0)
        .and_then(|m| pacing.tz.from_local_datetime(&m).earliest())
        .map(|t| t.with_timezone(&Utc));
    let usage = match start {
        Some(start) => store.mailbox_usage(&mailbox, start).await.ok(),
        None => None,
    };
    store.close().await;
    let Some((sent, last_send)) = usage else {
        return;
    };
    let usage = MailboxUsage {
        last_send,
        sent_today: u32::try_from(sent).unwrap_or(u32::MAX),
    };
    if let Some(slot) = next_slot(pacing, &usage, due.at, 0.0).filter(|s| *s > due.at) {
        due.at = slot;
        due.moved.push(match pacing.daily_limit {
            Some(limit) if usage.sent_today >= limit => Moved::DailyLimit(limit),
            _ => Moved::Spacing,
        });
    }
}

/// An import's progress as a bar on stderr, drawn only on a terminal: in pipes, logs
/// and tests it stays hidden and prints nothing.
pub(super) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub(super) fn new() -> Bar {
        Bar(None)
    }
}

impl Progress for Bar {
    fn start(&mut self, phase: Phase, total: usize) {
        use std::io::IsTerminal as _;
        if !std::io::stderr().is_terminal() || total < SLICE {
            self.0 = None;
            return;
        }
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} rows ({eta} left)")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(match phase {
            Phase::Storing => "importing",
            Phase::Enrolling => "enrolling",
        });
        self.0 = Some(bar);
    }
    fn done(&mut self, n: usize) {
        if let Some(b) = &self.0 {
            b.inc(n as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

/// `--since`: a date (midnight UTC) or an RFC 3339 time.
pub(super) fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => Ok(Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN))),
        Err(_) => bail!("'{s}' is not a date: write 2026-12-01 or 2026-12-01T09:00:00Z"),
    }
}
