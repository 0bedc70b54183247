//! Send timing: when a follow-up step is due and when a mailbox may send next.
//!
//! This module owns followup's pure time logic: parsing waits (`3d`), weekly send windows
//! (`Mon-Fri 09:00-17:00`) and holiday lists, moving an instant into a window in a time zone,
//! and pacing a mailbox's daily limit across its own window. It does no I/O and never reads
//! the clock: every function takes the current instant as an argument, and randomness (jitter)
//! comes in as a caller-supplied sample.
//!
//! Conventions, decided once here so callers need not think about them:
//! - **Waits are elapsed time.** `1d` is 24 hours of real time, not "the same wall-clock time
//!   tomorrow": across a DST change a 1d wait from 10:00 lands at 11:00 (spring) or 09:00 (fall)
//!   local time. A wait promises the contact "at least this long"; pinning sends to working
//!   hours is the window's job, and it runs after the wait.
//! - **Windows are wall-clock time** in a zone, each range half-open `[start, end)`. An instant
//!   is inside a window when its local weekday and time of day are.
//! - **DST.** A window opening at a local time that does not exist (spring-forward gap) opens
//!   at the first instant after the gap. A local time that occurs twice (fall back) opens at
//!   its first occurrence; because membership is by wall clock, the repeated hour may be
//!   inside the window twice.
//! - **Holidays** are local dates: a holiday closes the whole local day, whatever the window.

use std::cmp::{max, min};
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;

/// Seconds in a local day as the window sees it; `24:00` is this value.
const DAY_SECS: u32 = 86_400;

/// How far `next_in_window` looks before giving up: "within 3 years" from the contract,
/// rounded up so that three leap-year-containing years are covered.
const SEARCH_HORIZON_DAYS: i64 = 3 * 366;

/// Longest accepted wait. Nobody means a longer one, and the cap keeps
/// `previous + wait` far from chrono's representable range.
const MAX_WAIT_DAYS: u64 = 36_500;

/// Three-letter day names, indexed by `Weekday::num_days_from_monday`.
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Why a wait, window or holiday text was rejected. Each variant carries the text as written,
/// so the message stands on its own (the caller adds file and line).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ScheduleError {
    /// A wait such as `3d` could not be read.
    #[error("bad wait '{input}': {reason}")]
    Wait {
        /// The wait as written.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A send window such as `Mon-Fri 09:00-17:00` could not be read.
    #[error("bad window '{input}': {reason}")]
    Window {
        /// The whole window as written.
        input: String,
        /// What is wrong, naming the offending part.
        reason: String,
    },
    /// A holiday item such as `2026-10-01..2026-10-07` could not be read.
    #[error("bad holiday '{item}': {reason}")]
    Holiday {
        /// The one item (of the list) that is wrong.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Waits
// ---------------------------------------------------------------------------------------------

/// Parses a wait such as `30s`, `10m`, `2h`, `3d` or `2w`, or a combination written from the
/// largest unit to the smallest, each at most once (`1d12h`, `1w2d`). `0` alone is accepted
/// because zero needs no unit. A day is 24 hours of real time (see the module docs).
pub fn parse_wait(s: &str) -> Result<Duration, ScheduleError> {
    let err = |reason: String| ScheduleError::Wait {
        input: s.to_string(),
        reason,
    };
    const UNITS: &str = "unit must be s, m, h, d or w";
    let text = s.trim();
    if text.is_empty() {
        return Err(err(
            "empty; expected a number and a unit, like 3d or 1d12h".into()
        ));
    }
    if text == "0" {
        return Ok(Duration::zero());
    }

    let mut total_secs: u64 = 0;
    // Rank of the previous unit (w=4 .. s=0); units must strictly descend so that `1h1d`
    // and `1d1d`, which are almost certainly typos, are caught.
    let mut previous: Option<(usize, char)> = None;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let digits_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_len);
        if digits.is_empty() {
            return Err(err(match (c, previous) {
                ('-', _) => "negative waits are not allowed".into(),
                (_, None) => format!("expected a number before '{rest}', like 3d"),
                (_, Some((_, unit))) => {
                    format!("unexpected '{rest}' after '{unit}'; write parts like 1d12h")
                }
            }));
        }
        let Some(unit) = after.chars().next() else {
            return Err(err(format!("missing unit after {digits}; {UNITS}")));
        };
        let (rank, unit_secs) = match unit {
            's' => (0, 1),
            'm' => (1, 60),
            'h' => (2, 3_600),
            'd' => (3, 86_400),
            'w' => (4, 7 * 86_400),
            '.' | ',' => {
                return Err(err(
                    "fractions are not supported; write 1d12h instead of 1.5d".into(),
                ))
            }
            other => return Err(err(format!("{UNITS}, not '{other}'"))),
        };
        if let Some((previous_rank, previous_unit)) = previous {
            if rank >= previous_rank {
                return Err(err(format!(
                    "'{unit}' after '{previous_unit}': write units from largest to smallest, \
                     each once, like 1d12h"
                )));
            }
        }
        previous = Some((rank, unit));
        let too_long = || err(format!("too long; the longest wait is {MAX_WAIT_DAYS}d"));
        // A digit string too long for u64 is too long a wait, not a different error.
        let amount: u64 = digits.parse().map_err(|_| too_long())?;
        total_secs = amount
            .checked_mul(unit_secs)
            .and_then(|secs| total_secs.checked_add(secs))
            .filter(|&secs| secs <= MAX_WAIT_DAYS * 86_400)
            .ok_or_else(too_long)?;
        rest = &after[unit.len_utf8()..];
    }
    i64::try_from(total_secs)
        .ok()
        .and_then(Duration::try_seconds)
        .ok_or_else(|| err(format!("too long; the longest wait is {MAX_WAIT_DAYS}d")))
}

// ---------------------------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------------------------

/// A weekly send window in local wall-clock time, e.g. `Mon-Fri 09:00-12:00,13:30-17:00`.
///
/// Parsed with [`str::parse`] from `always` or from day groups separated by `;`, each a day
/// list (`Mon`, `Mon-Fri`, `Mon,Wed,Fri`, wrapping ranges like `Fri-Mon`; names are three
/// letters, any case) followed by comma-separated `HH:MM-HH:MM` ranges. `24:00` may end a
/// range; a range may not cross midnight (write two groups instead). Overlapping and touching
/// ranges are merged, so two windows that open at the same times compare equal.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Open ranges per weekday (index 0 = Monday) as `[start, end)` seconds after local
    /// midnight, `end <= DAY_SECS`; sorted, and merged so no two overlap or touch.
    days: [Vec<(u32, u32)>; 7],
}

impl Window {
    /// The window that is always open: every day, `00:00-24:00`.
    pub fn always() -> Window {
        Window {
            days: std::array::from_fn(|_| vec![(0, DAY_SECS)]),
        }
    }

    /// True when the window never closes, so callers can skip time-zone work.
    pub fn is_always(&self) -> bool {
        self.days.iter().all(|ranges| ranges[..] == [(0, DAY_SECS)])
    }

    /// True when the window never opens; only constructible inside this module.
    fn is_empty(&self) -> bool {
        self.days.iter().all(Vec::is_empty)
    }

    /// The open ranges on the weekday of `date`.
    fn ranges_on(&self, date: NaiveDate) -> &[(u32, u32)] {
        &self.days[date.weekday().num_days_from_monday() as usize]
    }

    /// Sorts and merges each day's ranges (the invariant documented on `days`).
    fn normalize(&mut self) {
        for ranges in &mut self.days {
            ranges.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
            for &(start, end) in ranges.iter() {
                match merged.last_mut() {
                    Some(last) if start <= last.1 => last.1 = max(last.1, end),
                    _ => merged.push((start, end)),
                }
            }
            *ranges = merged;
        }
    }
}

impl FromStr for Window {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Window, ScheduleError> {
        let err = |reason: String| ScheduleError::Window {
            input: s.to_string(),
            reason,
        };
        let text = s.trim();
        if text.eq_ignore_ascii_case("always") {
            return Ok(Window::always());
        }
        if text.is_empty() {
            return Err(err(
                "empty; expected days and times like \"Mon-Fri 09:00-17:00\", \
                 or \"always\""
                    .into(),
            ));
        }
        let mut window = Window {
            days: Default::default(),
        };
        for group in text.split(';') {
            parse_group(group.trim(), &mut window).map_err(err)?;
        }
        window.normalize();
        Ok(window)
    }
}

/// One entry of a day list: a single day or an inclusive, possibly week-wrapping, range.
/// Kept as written so an error can suggest the corrected text.
#[derive(Clone, Copy)]
enum DayItem {
    One(usize),
    Range(usize, usize),
}

impl DayItem {
    /// Weekday indexes (0 = Monday) this item covers.
    fn days(self) -> Vec<usize> {
        match self {
            DayItem::One(d) => vec![d],
            // `Fri-Mon` wraps over the weekend: walk forward from the first day.
            DayItem::Range(from, to) => (0..7)
                .map(|i| (from + i) % 7)
                .take((to + 7 - from) % 7 + 1)
                .collect(),
        }
    }

    /// The same item one day later, for the "split at midnight" suggestion.
    fn next_day(self) -> DayItem {
        match self {
            DayItem::One(d) => DayItem::One((d + 1) % 7),
            DayItem::Range(from, to) => DayItem::Range((from + 1) % 7, (to + 1) % 7),
        }
    }

    fn render(self) -> String {
        match self {
            DayItem::One(d) => DAY_NAMES[d].to_string(),
            DayItem::Range(from, to) => format!("{}-{}", DAY_NAMES[from], DAY_NAMES[to]),
        }
    }
}

/// Parses one `;`-separated group (`Mon-Fri 09:00-12:00,13:30-17:00`) into `window`.
/// Errors are reasons only; the caller wraps them with the whole window text.
fn parse_group(group: &str, window: &mut Window) -> Result<(), String> {
    if group.is_empty() {
        return Err("empty day group; remove the extra ';'".into());
    }
    // Day names contain no digits and times start with one, so the first digit splits them
    // (this also tolerates spaces in `Mon, Wed` or `09:00-12:00, 13:00-17:00`).
    let Some(split) = group.find(|c: char| c.is_ascii_digit()) else {
        parse_days(group)?;
        return Err(format!(
            "'{group}' has no time ranges; expected e.g. \"{group} 09:00-17:00\""
        ));
    };
    let (day_text, times_text) = (group[..split].trim(), group[split..].trim());
    if day_text.is_empty() {
        return Err(format!(
            "'{group}' has no days; expected e.g. \"Mon-Fri {group}\""
        ));
    }
    let items = parse_days(day_text)?;
    let mut ranges = Vec::new();
    for range_text in times_text.split(',') {
        let range_text = range_text.trim();
        if range_text.is_empty() {
            return Err(format!("empty time range in '{times_text}'"));
        }
        // `Mon-Fri 09:00-17:00, Sat 10:00-12:00` is a likely slip; say what was meant.
        if range_text.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!(
                "'{range_text}' is not a time range; separate day groups with ';', \
                 like \"Mon-Fri 09:00-17:00; Sat 10:00-12:00\""
            ));
        }
        let Some((start_text, end_text)) = range_text.split_once('-') else {
            return Err(format!(
                "time range '{range_text}' must look like 09:00-17:00"
            ));
        };
        let (start_text, end_text) = (start_text.trim(), end_text.trim());
        let start = parse_clock(start_text)?;
        let end = parse_clock(end_text)?;
        if start == DAY_SECS {
            return Err("24:00 can only end a range, not start one".into());
        }
        if start == end {
            return Err(format!("time range '{range_text}' is empty"));
        }
        if start > end {
            let render = |items: &[DayItem]| {
                items
                    .iter()
                    .map(|item| item.render())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let next: Vec<DayItem> = items.iter().map(|item| item.next_day()).collect();
            return Err(format!(
                "time range '{range_text}' crosses midnight; split it into two groups, \
                 e.g. \"{} {start_text}-24:00; {} 00:00-{end_text}\"",
                render(&items),
                render(&next),
            ));
        }
        ranges.push((start, end));
    }
    for item in items {
        for day in item.days() {
            window.days[day].extend_from_slice(&ranges);
        }
    }
    Ok(())
}

/// Parses a day list such as `Mon-Fri`, `Mon,Wed,Fri` or `Fri-Mon`.
fn parse_days(text: &str) -> Result<Vec<DayItem>, String> {
    text.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("empty day in '{text}'"));
            }
            match item.split_once('-') {
                Some((from, to)) => Ok(DayItem::Range(
                    parse_day(from.trim())?,
                    parse_day(to.trim())?,
                )),
                None => Ok(DayItem::One(parse_day(item)?)),
            }
        })
        .collect()
}

/// Parses a three-letter day name, any case, to its index (0 = Monday).
fn parse_day(name: &str) -> Result<usize, String> {
    DAY_NAMES
        .iter()
        .position(|day| day.eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("unknown day '{name}'; use Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

/// Parses `HH:MM` (one or two hour digits) to seconds after midnight; `24:00` is allowed here
/// and rejected as a start by the caller.
fn parse_clock(text: &str) -> Result<u32, String> {
    let shape = || format!("time '{text}' must be HH:MM, like 09:00");
    let (hours, minutes) = text.split_once(':').ok_or_else(shape)?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(hours) || hours.len() > 2 || !all_digits(minutes) || minutes.len() != 2 {
        return Err(shape());
    }
    let hours: u32 = hours.parse().map_err(|_| shape())?;
    let minutes: u32 = minutes.parse().map_err(|_| shape())?;
    if minutes > 59 || hours > 24 || (hours == 24 && minutes > 0) {
        return Err(format!("time '{text}' is out of range (00:00 to 24:00)"));
    }
    Ok(hours * 3_600 + minutes * 60)
}

// ---------------------------------------------------------------------------------------------
// Holidays
// ---------------------------------------------------------------------------------------------

/// Days off, as inclusive ranges of local dates. On a holiday the window stays closed all day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holidays {
    /// Inclusive `(first, last)` date ranges, sorted and merged so no two overlap or touch;
    /// this makes `contains` a binary search and equality mean "same days off".
    ranges: Vec<(NaiveDate, NaiveDate)>,
}

impl Holidays {
    /// Parses items like `2026-10-01` or `2026-10-01..2026-10-07` (inclusive). The error
    /// names the first bad item.
    pub fn parse(items: &[String]) -> Result<Holidays, ScheduleError> {
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let err = |reason: String| ScheduleError::Holiday {
                item: item.clone(),
                reason,
            };
            let text = item.trim();
            if text.is_empty() {
                return Err(err(
                    "empty; expected YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD".into()
                ));
            }
            let (first, last) = match text.split_once("..") {
                Some((first, last)) => (
                    parse_date(first.trim()).map_err(err)?,
                    parse_date(last.trim()).map_err(err)?,
                ),
                None => {
                    let day = parse_date(text).map_err(err)?;
                    (day, day)
                }
            };
            if last < first {
                return Err(err(format!(
                    "range ends ({last}) before it starts ({first})"
                )));
            }
            ranges.push((first, last));
        }
        Ok(Holidays::from_ranges(ranges))
    }

    /// The days off of both lists, e.g. a company calendar plus one mailbox owner's vacation.
    pub fn merged(&self, other: &Holidays) -> Holidays {
        Holidays::from_ranges(
            self.ranges
                .iter()
                .chain(other.ranges.iter())
                .copied()
                .collect(),
        )
    }

    /// True when `d` (a local date) is a day off.
    pub fn contains(&self, d: NaiveDate) -> bool {
        let i = self.ranges.partition_point(|&(_, last)| last < d);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= d)
    }

    /// Builds the sorted, merged form documented on `ranges`.
    fn from_ranges(mut ranges: Vec<(NaiveDate, NaiveDate)>) -> Holidays {
        ranges.sort_unstable();
        let mut merged: Vec<(NaiveDate, NaiveDate)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                // Touching ranges (Mon..Tue, Wed..Thu) merge too; at NaiveDate::MAX there is
                // no next day, and everything after it is already covered.
                Some(prev) if prev.1.succ_opt().is_none_or(|next| first <= next) => {
                    prev.1 = max(prev.1, last);
                }
                _ => merged.push((first, last)),
            }
        }
        Holidays { ranges: merged }
    }
}

fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("'{text}' is not a date; expected YYYY-MM-DD"))
}

// ---------------------------------------------------------------------------------------------
// Placing instants into windows
// ---------------------------------------------------------------------------------------------

/// The first instant `>= earliest` inside `window`, in `tz`, on a local day that is not in
/// `holidays`. DST is handled as the module docs describe. `None` when the window never opens
/// or no such instant exists within 3 years (for example every day is a holiday).
pub fn next_in_window(
    earliest: DateTime<Utc>,
    window: &Window,
    tz: Tz,
    holidays: &Holidays,
) -> Option<DateTime<Utc>> {
    if window.is_empty() {
        return None;
    }
    let horizon = earliest
        .checked_add_signed(Duration::days(SEARCH_HORIZON_DAYS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    open_intervals(window, holidays, tz, earliest, horizon)
        .next()
        .map(|(open, _)| open)
}

/// When a step is due: `previous + wait` (elapsed time, so a `1d` wait is 24 real hours even
/// across a DST change), then moved into the window with [`next_in_window`].
pub fn step_due(
    previous: DateTime<Utc>,
    wait: Duration,
    window: &Window,
    tz: Tz,
    holidays: &Holidays,
) -> Option<DateTime<Utc>> {
    next_in_window(previous.checked_add_signed(wait)?, window, tz, holidays)
}

/// Why a send time was moved later than asked for, as `simulate` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// The time asked for fell outside the window's hours on a day it is open.
    OutsideWindow,
    /// The window is closed all day on these consecutive local weekdays (e.g. Sat, Sun).
    ClosedDays(Vec<Weekday>),
    /// A day off (local date).
    Holiday(NaiveDate),
    /// The mailbox had sent its daily limit on the local day.
    DailyLimit(u32),
    /// The mailbox spaces its sends (`min_gap`, a daily limit spread over its window).
    Spacing,
}

impl Moved {
    /// True for Saturday and Sunday together (or alone): the usual weekend.
    pub fn is_weekend(&self) -> bool {
        matches!(self, Moved::ClosedDays(d) if !d.is_empty() && d.iter().all(|d| matches!(d, Weekday::Sat | Weekday::Sun)))
    }
}

/// A due time and why it is later than `previous + wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub at: DateTime<Utc>,
    pub moved: Vec<Moved>,
}

/// [`step_due`], with why the time moved: each local day it passed over, and whether the
/// hour asked for was outside the window. The time is [`step_due`]'s; the reasons read
/// the same window and days off for the days between.
pub fn step_due_explained(
    previous: DateTime<Utc>,
    wait: Duration,
    window: &Window,
    tz: Tz,
    holidays: &Holidays,
) -> Option<Due> {
    let asked = previous.checked_add_signed(wait)?;
    let at = next_in_window(asked, window, tz, holidays)?;
    Some(Due {
        at,
        moved: moved_between(asked, at, window, tz, holidays),
    })
}

/// Why `at` (a time in the window) is later than `asked`.
fn moved_between(
    asked: DateTime<Utc>,
    at: DateTime<Utc>,
    window: &Window,
    tz: Tz,
    holidays: &Holidays,
) -> Vec<Moved> {
    let mut out: Vec<Moved> = Vec::new();
    if at <= asked {
        return out;
    }
    let last = at.with_timezone(&tz).date_naive();
    let first = asked.with_timezone(&tz).date_naive();
    let mut date = first;
    while date <= last {
        let reason = if holidays.contains(date) {
            Some(Moved::Holiday(date))
        } else if window.ranges_on(date).is_empty() {
            Some(Moved::ClosedDays(vec![date.weekday()]))
        } else if date == first {
            // An open day, and the time was moved off it or later on it: the hour
            // asked for was outside its ranges. (Days after it were passed over only
            // for being closed; the day it lands on is where it opens.)
            Some(Moved::OutsideWindow)
        } else {
            None
        };
        match (out.last_mut(), reason) {
            (Some(Moved::ClosedDays(days)), Some(Moved::ClosedDays(d))) => days.extend(d),
            (_, Some(r)) => out.push(r),
            (_, None) => {}
        }
        match date.succ_opt() {
            Some(next) => date = next,
            None => break,
        }
    }
    out
}

/// The UTC offset of `tz` at `t`, in seconds (local = UTC + offset).
fn offset_at(tz: Tz, t: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

/// Splits `[from, to)` into consecutive pieces during which `tz` keeps one UTC offset, as
/// `(start, end, offset_secs)`. Within a piece local time runs in step with UTC, so window
/// arithmetic can be done on local wall-clock times and shifted back exactly; the piece
/// boundaries are the DST transitions, which is what makes gaps and repeats come out right.
fn constant_offset_pieces(
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>, i64)> {
    let mut start = from;
    std::iter::from_fn(move || {
        if start >= to {
            return None;
        }
        let offset = offset_at(tz, start);
        // Probe a day ahead: zones change offset at most once a day (in practice twice a
        // year), so an equal offset a day later means no change in between.
        let probe = start
            .checked_add_signed(Duration::days(1))
            .map_or(to, |t| min(t, to));
        let end = if offset_at(tz, probe) == offset {
            probe
        } else {
            // Binary search on whole seconds for the first one with the new offset. Flooring
            // is safe: transitions fall on whole seconds, so floor(start) still has the old
            // offset and floor(probe) the new one.
            let (mut lo, mut hi) = (start.timestamp(), probe.timestamp());
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let has_old_offset =
                    DateTime::from_timestamp(mid, 0).is_some_and(|t| offset_at(tz, t) == offset);
                if has_old_offset {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            DateTime::from_timestamp(hi, 0).unwrap_or(probe)
        };
        let piece = (start, end, offset);
        start = end;
        Some(piece)
    })
}

/// The open parts of the window between the instants `from` and `to`, in order, as UTC
/// `[open, close)` intervals. Lazy, so `next()` stops at the first one. Intervals that touch
/// (a range ending at 24:00 and one starting at 00:00, or across a DST transition) are
/// reported separately.
fn open_intervals<'a>(
    window: &'a Window,
    holidays: &'a Holidays,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + 'a {
    constant_offset_pieces(tz, from, to).flat_map(move |(start, end, offset)| {
        let shift = Duration::seconds(offset);
        let local = |t: DateTime<Utc>| t.naive_utc().checked_add_signed(shift);
        let intervals = match (local(start), local(end)) {
            (Some(local_start), Some(local_end)) => {
                local_open_intervals(window, holidays, local_start, local_end)
            }
            // Only at the very ends of chrono's range; nothing to send there.
            _ => Vec::new(),
        };
        intervals.into_iter().filter_map(move |(open, close)| {
            Some((
                open.checked_sub_signed(shift)?.and_utc(),
                close.checked_sub_signed(shift)?.and_utc(),
            ))
        })
    })
}

/// The open parts of the window within the wall-clock span `[from, to)`, skipping holidays,
/// in order. Pure calendar arithmetic: time zones are handled by the caller.
fn local_open_intervals(
    window: &Window,
    holidays: &Holidays,
    from: NaiveDateTime,
    to: NaiveDateTime,
) -> Vec<(NaiveDateTime, NaiveDateTime)> {
    let mut out = Vec::new();
    let mut date = from.date();
    while date.and_time(NaiveTime::MIN) < to {
        if !holidays.contains(date) {
            for &(start, end) in window.ranges_on(date) {
                let at = |secs: u32| {
                    date.and_time(NaiveTime::MIN)
                        .checked_add_signed(Duration::seconds(i64::from(secs)))
                };
                let (Some(open), Some(close)) = (at(start), at(end)) else {
                    continue;
                };
                let (open, close) = (max(open, from), min(close, to));
                if open < close {
                    out.push((open, close));
                }
            }
        }
        match date.succ_opt() {
            Some(next) => date = next,
            None => break,
        }
    }
    out
}

/// The first instant whose local date (in `tz`) is `date` or later. Usually local midnight,
/// but not where midnight falls in a DST gap (America/Santiago starts DST at 00:00) or where
/// the whole day was skipped (Pacific/Apia, 2011-12-30).
fn local_day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN).and_utc().timestamp();
    // UTC offsets stay within ±16 hours, so 16 hours before "midnight read as UTC" the local
    // date is still earlier and 16 hours after it is already `date` or later; the local date
    // never decreases in between, so a binary search finds the boundary.
    const BOUND: i64 = 16 * 3_600;
    let local_date =
        |secs: i64| DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(&tz).date_naive());
    let (mut lo, mut hi) = (midnight - BOUND, midnight + BOUND);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_date(mid).is_some_and(|d| d >= date) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

// ---------------------------------------------------------------------------------------------
// Mailbox pacing
// ---------------------------------------------------------------------------------------------

/// Per-mailbox pacing, so a daily limit is spread over the mailbox's window instead of being
/// sent in a burst when the window opens (providers flag bursts).
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing {
    /// Most messages per local day of the mailbox; `None` = unlimited. `Some(0)` pauses it.
    pub daily_limit: Option<u32>,
    /// Centre of the time between two sends of one mailbox (may be zero; negative counts as
    /// zero). Jitter scales it, so actual gaps can be up to `jitter` shorter.
    pub min_gap: Duration,
    /// `0.0..=1.0`: the gap is multiplied by `1 + jitter * sample`, `sample` in `[-1, 1]`, so
    /// sends do not tick like a metronome. Values outside the range are clamped.
    pub jitter: f64,
    /// The mailbox's own window: its owner's working hours.
    pub window: Window,
    /// The mailbox's time zone; the local date here is the "day" the limit counts.
    pub tz: Tz,
    /// The mailbox owner's days off.
    pub holidays: Holidays,
}

/// What the scheduler knows about a mailbox right now.
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxUsage {
    /// When the mailbox last sent, if ever.
    pub last_send: Option<DateTime<Utc>>,
    /// Messages sent on the mailbox's current local day, `mailbox_day(p, now)`.
    pub sent_today: u32,
}

/// The local date (in `p.tz`) that `now` belongs to: the key for counting sends per day.
pub fn mailbox_day(p: &Pacing, now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&p.tz).date_naive()
}

/// The earliest instant `>= now` at which the mailbox may send its next message.
///
/// - Limit reached today: the first window instant of a later local day.
/// - Otherwise the gap is `max(min_gap, remaining window time today / remaining quota)`,
///   times `1 + jitter * sample`, and the result is `max(now, last_send + gap)` moved into the
///   window. With no previous send, or a zero gap (no limit, zero `min_gap`), it is `now`
///   moved into the window.
/// - One refinement: pacing by `remaining / quota` puts the day's last allowed send exactly at
///   closing time, which is outside the (end-exclusive) window, so the day would lose it to
///   the next morning. When the paced time spills past today's window while quota and window
///   time remain, the send goes in today's final minute instead, as long as `min_gap` allows.
///
/// `sample` is supplied by the caller (from fastrand) so this function stays pure; it is
/// clamped to `[-1, 1]`, and NaN counts as 0. `None` when the window never opens again
/// (see [`next_in_window`]).
pub fn next_slot(
    p: &Pacing,
    usage: &MailboxUsage,
    now: DateTime<Utc>,
    sample: f64,
) -> Option<DateTime<Utc>> {
    let place = |t: DateTime<Utc>| next_in_window(t, &p.window, p.tz, &p.holidays);
    let today = mailbox_day(p, now);
    let tomorrow_start = local_day_start(p.tz, today.succ_opt()?);
    let quota_left = match p.daily_limit {
        Some(limit) if usage.sent_today >= limit => return place(tomorrow_start),
        Some(limit) => Some(limit - usage.sent_today),
        None => None,
    };
    let Some(last_send) = usage.last_send else {
        return place(now);
    };

    let open_today: Vec<_> =
        open_intervals(&p.window, &p.holidays, p.tz, now, tomorrow_start).collect();
    let pace_secs = match quota_left {
        Some(quota) => {
            let remaining: Duration = open_today.iter().map(|&(open, close)| close - open).sum();
            seconds_f64(remaining) / f64::from(quota)
        }
        None => 0.0,
    };
    let jitter = if p.jitter.is_nan() {
        0.0
    } else {
        p.jitter.clamp(0.0, 1.0)
    };
    let sample = if sample.is_nan() {
        0.0
    } else {
        sample.clamp(-1.0, 1.0)
    };
    let factor = 1.0 + jitter * sample;
    let min_gap_secs = seconds_f64(p.min_gap).max(0.0);
    let gap = duration_from_secs(min_gap_secs.max(pace_secs) * factor)?;
    if gap.is_zero() {
        return place(now);
    }
    let due = place(max(now, last_send.checked_add_signed(gap)?))?;

    if quota_left.is_some() && due >= tomorrow_start {
        if let Some(&(last_open, close)) = open_today.last() {
            let floor = max(
                now,
                last_send.checked_add_signed(duration_from_secs(min_gap_secs * factor)?)?,
            );
            let last_minute = max(last_open, close - Duration::minutes(1));
            let at = max(last_minute, floor);
            if at < close {
                return Some(at);
            }
        }
    }
    Some(due)
}

/// A duration as fractional seconds (millisecond precision is plenty for pacing).
fn seconds_f64(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1_000.0
}

/// Fractional seconds back to a duration, rounded to the millisecond; `None` if out of
/// chrono's range (only reachable with an absurd `min_gap`).
fn duration_from_secs(secs: f64) -> Option<Duration> {
    let millis = (secs * 1_000.0).round();
    // `as` saturates, so check the range first rather than silently capping.
    if !(0.0..=i64::MAX as f64).contains(&millis) {
        return None;
    }
    Duration::try_milliseconds(millis as i64)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_why_a_step_moved() {
        let window: Window = "Mon-Fri 09:00-17:00".parse().unwrap();
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let holidays = Holidays::parse(&["2026-12-24..2026-12-25".into()]).unwrap();
        let local = |s: &str| {
            tz.from_local_datetime(&NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap())
                .unwrap()
                .with_timezone(&Utc)
        };
        // Wednesday 2026-12-23 18:00: after hours, Thu and Fri off, then the weekend.
        let due = step_due_explained(
            local("2026-12-23 18:00"),
            Duration::zero(),
            &window,
            tz,
            &holidays,
        )
        .unwrap();
        assert_eq!(due.at, local("2026-12-28 09:00"));
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            due.moved,
            [
                Moved::OutsideWindow,
                Moved::Holiday(d("2026-12-24")),
                Moved::Holiday(d("2026-12-25")),
                Moved::ClosedDays(vec![Weekday::Sat, Weekday::Sun]),
            ]
        );
        assert!(due.moved[3].is_weekend());
        // Early on a Monday: only the hour.
        let due = step_due_explained(
            local("2026-12-28 07:00"),
            Duration::zero(),
            &window,
            tz,
            &holidays,
        )
        .unwrap();
        assert_eq!(
            (due.at, due.moved),
            (local("2026-12-28 09:00"), vec![Moved::OutsideWindow])
        );
        // In the window: not moved.
        let due = step_due_explained(
            local("2026-12-28 10:00"),
            Duration::hours(1),
            &window,
            tz,
            &holidays,
        )
        .unwrap();
        assert!(due.moved.is_empty());
    }
    use chrono::{Timelike, Weekday};
    use chrono_tz::America::{New_York, Santiago};
    use chrono_tz::Asia::Shanghai;
    use chrono_tz::Europe::Berlin;
    use chrono_tz::Pacific::Apia;

    // ---- helpers -----------------------------------------------------------------------

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap()
    }

    /// A local wall-clock time that exists exactly once in `tz`.
    fn local(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn win(s: &str) -> Window {
        s.parse().unwrap()
    }

    fn hol(items: &[&str]) -> Holidays {
        Holidays::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn hm(h: u32, m: u32) -> u32 {
        h * 3_600 + m * 60
    }

    fn wait_err(s: &str) -> String {
        parse_wait(s).unwrap_err().to_string()
    }

    fn window_err(s: &str) -> String {
        s.parse::<Window>().unwrap_err().to_string()
    }

    /// Independent oracle: is `t` inside the window by its local wall clock?
    fn inside(window: &Window, holidays: &Holidays, tz: Tz, t: DateTime<Utc>) -> bool {
        let l = t.with_timezone(&tz).naive_local();
        let secs = l.num_seconds_from_midnight();
        !holidays.contains(l.date())
            && window
                .ranges_on(l.date())
                .iter()
                .any(|&(s, e)| s <= secs && secs < e)
    }

    fn pacing(limit: Option<u32>, window: &str, tz: Tz) -> Pacing {
        Pacing {
            daily_limit: limit,
            min_gap: Duration::zero(),
            jitter: 0.0,
            window: win(window),
            tz,
            holidays: Holidays::default(),
        }
    }

    // ---- parse_wait ----------------------------------------------------------------------

    #[test]
    fn wait_single_units() {
        assert_eq!(parse_wait("30s"), Ok(Duration::seconds(30)));
        assert_eq!(parse_wait("10m"), Ok(Duration::minutes(10)));
        assert_eq!(parse_wait("2h"), Ok(Duration::hours(2)));
        assert_eq!(parse_wait("3d"), Ok(Duration::hours(72)));
        assert_eq!(parse_wait("2w"), Ok(Duration::days(14)));
        assert_eq!(parse_wait("90m"), Ok(Duration::seconds(5_400)));
        assert_eq!(parse_wait(" 3d "), Ok(Duration::days(3)));
    }

    #[test]
    fn wait_zero() {
        assert_eq!(parse_wait("0s"), Ok(Duration::zero()));
        assert_eq!(parse_wait("0d"), Ok(Duration::zero()));
        assert_eq!(parse_wait("0"), Ok(Duration::zero()));
    }

    #[test]
    fn wait_combined() {
        assert_eq!(parse_wait("1d12h"), Ok(Duration::hours(36)));
        assert_eq!(
            parse_wait("1w2d3h4m5s"),
            Ok(Duration::seconds(9 * 86_400 + 3 * 3_600 + 4 * 60 + 5))
        );
        assert_eq!(parse_wait("2h30m"), Ok(Duration::minutes(150)));
    }

    #[test]
    fn wait_longest_accepted() {
        assert_eq!(parse_wait("36500d"), Ok(Duration::days(36_500)));
    }

    #[test]
    fn wait_errors_say_what_is_wrong() {
        let cases = [
            (
                "",
                "bad wait '': empty; expected a number and a unit, like 3d or 1d12h",
            ),
            (
                "   ",
                "bad wait '   ': empty; expected a number and a unit, like 3d or 1d12h",
            ),
            ("3x", "bad wait '3x': unit must be s, m, h, d or w, not 'x'"),
            ("3D", "bad wait '3D': unit must be s, m, h, d or w, not 'D'"),
            (
                "3 d",
                "bad wait '3 d': unit must be s, m, h, d or w, not ' '",
            ),
            (
                "30",
                "bad wait '30': missing unit after 30; unit must be s, m, h, d or w",
            ),
            (
                "1d12",
                "bad wait '1d12': missing unit after 12; unit must be s, m, h, d or w",
            ),
            ("d", "bad wait 'd': expected a number before 'd', like 3d"),
            ("-1d", "bad wait '-1d': negative waits are not allowed"),
            (
                "1.5d",
                "bad wait '1.5d': fractions are not supported; write 1d12h instead of 1.5d",
            ),
            (
                "3days",
                "bad wait '3days': unexpected 'ays' after 'd'; write parts like 1d12h",
            ),
            (
                "1d 12h",
                "bad wait '1d 12h': unexpected ' 12h' after 'd'; write parts like 1d12h",
            ),
            (
                "1h1d",
                "bad wait '1h1d': 'd' after 'h': write units from largest to smallest, \
                 each once, like 1d12h",
            ),
            (
                "1d1d",
                "bad wait '1d1d': 'd' after 'd': write units from largest to smallest, \
                 each once, like 1d12h",
            ),
            (
                "36501d",
                "bad wait '36501d': too long; the longest wait is 36500d",
            ),
            (
                "36500d1s",
                "bad wait '36500d1s': too long; the longest wait is 36500d",
            ),
            (
                "99999999999999999999999s",
                "bad wait '99999999999999999999999s': too long; the longest wait is 36500d",
            ),
            (
                "9999999999999999w",
                "bad wait '9999999999999999w': too long; the longest wait is 36500d",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(wait_err(input), message, "input {input:?}");
        }
    }

    #[test]
    fn wait_error_variant_carries_input() {
        assert_eq!(
            parse_wait("3x"),
            Err(ScheduleError::Wait {
                input: "3x".into(),
                reason: "unit must be s, m, h, d or w, not 'x'".into(),
            })
        );
    }

    // ---- Window parsing ------------------------------------------------------------------

    #[test]
    fn window_always() {
        for text in ["always", "ALWAYS", "  Always "] {
            let w = win(text);
            assert!(w.is_always(), "{text}");
            assert_eq!(w, Window::always());
        }
        assert!(Window::always().is_always());
        // Spelled out, it is the same window.
        assert_eq!(win("Mon-Sun 00:00-24:00"), Window::always());
        assert!(win("Mon-Sun 00:00-12:00,12:00-24:00").is_always());
        assert!(!win("Mon-Sat 00:00-24:00").is_always());
        assert!(!win("Mon-Sun 00:00-23:59").is_always());
    }

    #[test]
    fn window_weekdays() {
        let w = win("Mon-Fri 09:00-17:00");
        for day in 0..5 {
            assert_eq!(w.days[day], vec![(hm(9, 0), hm(17, 0))]);
        }
        assert!(w.days[5].is_empty());
        assert!(w.days[6].is_empty());
    }

    #[test]
    fn window_several_ranges_and_groups() {
        let w = win("Mon-Fri 09:00-12:00,13:30-17:00; Sat 10:00-12:00");
        assert_eq!(
            w.days[0],
            vec![(hm(9, 0), hm(12, 0)), (hm(13, 30), hm(17, 0))]
        );
        assert_eq!(w.days[4], w.days[0]);
        assert_eq!(w.days[5], vec![(hm(10, 0), hm(12, 0))]);
        assert!(w.days[6].is_empty());
    }

    #[test]
    fn window_day_lists_and_wrapping_ranges() {
        let w = win("Mon,Wed,Fri 08:00-10:00");
        let open: Vec<bool> = w.days.iter().map(|d| !d.is_empty()).collect();
        assert_eq!(open, [true, false, true, false, true, false, false]);

        let w = win("Fri-Mon 09:00-17:00");
        let open: Vec<bool> = w.days.iter().map(|d| !d.is_empty()).collect();
        assert_eq!(open, [true, false, false, false, true, true, true]);

        // A range from a day to itself is that one day.
        let w = win("Wed-Wed 09:00-10:00");
        let open: Vec<bool> = w.days.iter().map(|d| !d.is_empty()).collect();
        assert_eq!(open, [false, false, true, false, false, false, false]);

        let w = win("Sat-Sun,Tue 10:00-11:00");
        let open: Vec<bool> = w.days.iter().map(|d| !d.is_empty()).collect();
        assert_eq!(open, [false, true, false, false, false, true, true]);
    }

    #[test]
    fn window_until_midnight_and_lenient_spelling() {
        assert_eq!(win("Sun 22:00-24:00").days[6], vec![(hm(22, 0), DAY_SECS)]);
        assert_eq!(
            win("mon-FRI 9:00-12:00 , 13:00-17:00"),
            win("Mon-Fri 09:00-12:00,13:00-17:00")
        );
        assert_eq!(win("Mon - Fri 09:00 - 17:00"), win("Mon-Fri 09:00-17:00"));
        assert_eq!(win("Mon, Wed 09:00-17:00"), win("Mon,Wed 09:00-17:00"));
    }

    #[test]
    fn window_merges_overlapping_and_touching_ranges() {
        let w = win("Mon 09:00-12:00,11:00-13:00; Mon 13:00-14:00; Mon-Tue 08:00-08:30");
        assert_eq!(
            w.days[0],
            vec![(hm(8, 0), hm(8, 30)), (hm(9, 0), hm(14, 0))]
        );
        assert_eq!(w.days[1], vec![(hm(8, 0), hm(8, 30))]);
        // Order of groups does not matter once merged.
        assert_eq!(
            win("Tue 10:00-11:00; Mon-Fri 09:00-17:00"),
            win("Mon-Fri 09:00-17:00")
        );
        assert_eq!(
            win("Mon 09:00-10:00,09:30-09:45").days[0],
            vec![(hm(9, 0), hm(10, 0))]
        );
    }

    #[test]
    fn window_errors_say_what_is_wrong() {
        let cases = [
            (
                "",
                "bad window '': empty; expected days and times like \"Mon-Fri 09:00-17:00\", \
                 or \"always\"",
            ),
            (
                "Mon-Fri",
                "bad window 'Mon-Fri': 'Mon-Fri' has no time ranges; expected e.g. \
                 \"Mon-Fri 09:00-17:00\"",
            ),
            (
                "alway",
                "bad window 'alway': unknown day 'alway'; use Mon, Tue, Wed, Thu, Fri, Sat or Sun",
            ),
            (
                "09:00-17:00",
                "bad window '09:00-17:00': '09:00-17:00' has no days; expected e.g. \
                 \"Mon-Fri 09:00-17:00\"",
            ),
            (
                "Mon-Fry 09:00-17:00",
                "bad window 'Mon-Fry 09:00-17:00': unknown day 'Fry'; use Mon, Tue, Wed, Thu, \
                 Fri, Sat or Sun",
            ),
            (
                "Monday 09:00-17:00",
                "bad window 'Monday 09:00-17:00': unknown day 'Monday'; use Mon, Tue, Wed, Thu, \
                 Fri, Sat or Sun",
            ),
            (
                "Mon,,Wed 09:00-17:00",
                "bad window 'Mon,,Wed 09:00-17:00': empty day in 'Mon,,Wed'",
            ),
            (
                "Mon-Fri 9-17",
                "bad window 'Mon-Fri 9-17': time '9' must be HH:MM, like 09:00",
            ),
            (
                "Mon-Fri 09:00",
                "bad window 'Mon-Fri 09:00': time range '09:00' must look like 09:00-17:00",
            ),
            (
                "Mon-Fri 09:00-17:00x",
                "bad window 'Mon-Fri 09:00-17:00x': time '17:00x' must be HH:MM, like 09:00",
            ),
            (
                "Mon 009:00-10:00",
                "bad window 'Mon 009:00-10:00': time '009:00' must be HH:MM, like 09:00",
            ),
            (
                "Mon 09:0-10:00",
                "bad window 'Mon 09:0-10:00': time '09:0' must be HH:MM, like 09:00",
            ),
            (
                "Mon 25:00-26:00",
                "bad window 'Mon 25:00-26:00': time '25:00' is out of range (00:00 to 24:00)",
            ),
            (
                "Mon 09:60-10:00",
                "bad window 'Mon 09:60-10:00': time '09:60' is out of range (00:00 to 24:00)",
            ),
            (
                "Mon 09:00-24:30",
                "bad window 'Mon 09:00-24:30': time '24:30' is out of range (00:00 to 24:00)",
            ),
            (
                "Mon 24:00-24:00",
                "bad window 'Mon 24:00-24:00': 24:00 can only end a range, not start one",
            ),
            (
                "Mon 10:00-10:00",
                "bad window 'Mon 10:00-10:00': time range '10:00-10:00' is empty",
            ),
            (
                "Fri 22:00-02:00",
                "bad window 'Fri 22:00-02:00': time range '22:00-02:00' crosses midnight; \
                 split it into two groups, e.g. \"Fri 22:00-24:00; Sat 00:00-02:00\"",
            ),
            (
                "Mon-Fri 22:00-02:00",
                "bad window 'Mon-Fri 22:00-02:00': time range '22:00-02:00' crosses midnight; \
                 split it into two groups, e.g. \"Mon-Fri 22:00-24:00; Tue-Sat 00:00-02:00\"",
            ),
            (
                "Sat,Sun 23:00-01:00",
                "bad window 'Sat,Sun 23:00-01:00': time range '23:00-01:00' crosses midnight; \
                 split it into two groups, e.g. \"Sat,Sun 23:00-24:00; Sun,Mon 00:00-01:00\"",
            ),
            (
                "Mon-Fri 09:00-17:00, Sat 10:00-12:00",
                "bad window 'Mon-Fri 09:00-17:00, Sat 10:00-12:00': 'Sat 10:00-12:00' is not a \
                 time range; separate day groups with ';', like \"Mon-Fri 09:00-17:00; \
                 Sat 10:00-12:00\"",
            ),
            (
                "Mon-Fri 09:00-17:00;",
                "bad window 'Mon-Fri 09:00-17:00;': empty day group; remove the extra ';'",
            ),
            (
                "Mon 09:00-12:00,,13:00-14:00",
                "bad window 'Mon 09:00-12:00,,13:00-14:00': empty time range in \
                 '09:00-12:00,,13:00-14:00'",
            ),
            (
                "Mon-Fri 09:00-17:00; Sat 10-12",
                "bad window 'Mon-Fri 09:00-17:00; Sat 10-12': time '10' must be HH:MM, like 09:00",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(window_err(input), message, "input {input:?}");
        }
    }

    // ---- Holidays ------------------------------------------------------------------------

    #[test]
    fn holidays_parse_and_contain() {
        let h = hol(&[
            "2026-10-01..2026-10-07",
            "2026-12-25",
            " 2026-02-16 .. 2026-02-22 ",
        ]);
        assert!(!h.contains(date(2026, 2, 15)));
        assert!(h.contains(date(2026, 2, 16)));
        assert!(h.contains(date(2026, 2, 22)));
        assert!(!h.contains(date(2026, 2, 23)));
        assert!(!h.contains(date(2026, 9, 30)));
        assert!(h.contains(date(2026, 10, 1)));
        assert!(h.contains(date(2026, 10, 4)));
        assert!(h.contains(date(2026, 10, 7)));
        assert!(!h.contains(date(2026, 10, 8)));
        assert!(h.contains(date(2026, 12, 25)));
        assert!(!h.contains(date(2026, 12, 24)));
        assert!(!h.contains(date(2027, 12, 25)));
        assert!(!Holidays::default().contains(date(2026, 12, 25)));
    }

    #[test]
    fn holidays_normalize_so_equal_sets_compare_equal() {
        // Overlapping and touching ranges merge; order does not matter.
        let a = hol(&[
            "2026-10-04..2026-10-07",
            "2026-10-01..2026-10-05",
            "2026-10-08",
        ]);
        let b = hol(&["2026-10-01..2026-10-08"]);
        assert_eq!(a, b);
        assert_eq!(a.ranges, vec![(date(2026, 10, 1), date(2026, 10, 8))]);
        assert_eq!(hol(&[]), Holidays::default());
    }

    #[test]
    fn holidays_merged() {
        let company = hol(&["2026-12-24..2026-12-26"]);
        let owner = hol(&["2026-12-27..2026-12-31", "2026-08-03"]);
        let both = company.merged(&owner);
        assert_eq!(
            both.ranges,
            vec![
                (date(2026, 8, 3), date(2026, 8, 3)),
                (date(2026, 12, 24), date(2026, 12, 31)),
            ]
        );
        assert!(both.contains(date(2026, 12, 28)));
        assert!(both.contains(date(2026, 8, 3)));
        assert_eq!(company.merged(&Holidays::default()), company);
    }

    #[test]
    fn holiday_errors_name_the_bad_item() {
        let err = |items: &[&str]| {
            Holidays::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&["2026-10-01", "2026-13-01"]),
            "bad holiday '2026-13-01': '2026-13-01' is not a date; expected YYYY-MM-DD"
        );
        assert_eq!(
            err(&["2026-02-30"]),
            "bad holiday '2026-02-30': '2026-02-30' is not a date; expected YYYY-MM-DD"
        );
        assert_eq!(
            err(&["01.10.2026"]),
            "bad holiday '01.10.2026': '01.10.2026' is not a date; expected YYYY-MM-DD"
        );
        assert_eq!(
            err(&["2026-10-01..oct 7"]),
            "bad holiday '2026-10-01..oct 7': 'oct 7' is not a date; expected YYYY-MM-DD"
        );
        assert_eq!(
            err(&["2026-10-07..2026-10-01"]),
            "bad holiday '2026-10-07..2026-10-01': range ends (2026-10-01) before it starts \
             (2026-10-07)"
        );
        assert_eq!(
            err(&[""]),
            "bad holiday '': empty; expected YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD"
        );
        assert_eq!(
            Holidays::parse(&["x".to_string()]),
            Err(ScheduleError::Holiday {
                item: "x".into(),
                reason: "'x' is not a date; expected YYYY-MM-DD".into(),
            })
        );
    }

    // ---- next_in_window: plain days --------------------------------------------------------

    #[test]
    fn inside_the_window_is_unchanged() {
        let w = win("Mon-Fri 09:00-17:00");
        let none = Holidays::default();
        // Tue 2026-03-03 10:17:42.5 EST, sub-second precision kept.
        let t = local(New_York, 2026, 3, 3, 10, 17) + Duration::milliseconds(42_500);
        assert_eq!(next_in_window(t, &w, New_York, &none), Some(t));
        // The opening instant is inside, the closing instant is not.
        let open = local(New_York, 2026, 3, 3, 9, 0);
        assert_eq!(next_in_window(open, &w, New_York, &none), Some(open));
        let close = local(New_York, 2026, 3, 3, 17, 0);
        assert_eq!(
            next_in_window(close, &w, New_York, &none),
            Some(local(New_York, 2026, 3, 4, 9, 0))
        );
    }

    #[test]
    fn before_opening_and_after_closing() {
        let w = win("Mon-Fri 09:00-17:00");
        let none = Holidays::default();
        assert_eq!(
            next_in_window(local(Berlin, 2026, 6, 3, 6, 30), &w, Berlin, &none),
            Some(utc(2026, 6, 3, 7, 0)) // 09:00 CEST
        );
        assert_eq!(
            next_in_window(local(Berlin, 2026, 6, 3, 20, 0), &w, Berlin, &none),
            Some(utc(2026, 6, 4, 7, 0))
        );
    }

    #[test]
    fn lunch_break_moves_to_afternoon() {
        let w = win("Mon-Fri 09:00-12:00,13:30-17:00");
        let none = Holidays::default();
        assert_eq!(
            next_in_window(local(New_York, 2026, 6, 3, 12, 15), &w, New_York, &none),
            Some(local(New_York, 2026, 6, 3, 13, 30))
        );
    }

    #[test]
    fn weekend_is_skipped() {
        let w = win("Mon-Fri 09:00-17:00");
        let none = Holidays::default();
        // Fri 2026-03-06 17:09 and Sat/Sun all go to Mon 2026-03-09 09:00 (EDT by then).
        let monday = local(New_York, 2026, 3, 9, 9, 0);
        for t in [
            local(New_York, 2026, 3, 6, 17, 9),
            local(New_York, 2026, 3, 7, 12, 0),
            local(New_York, 2026, 3, 8, 23, 59),
        ] {
            assert_eq!(next_in_window(t, &w, New_York, &none), Some(monday), "{t}");
        }
        assert_eq!(monday, utc(2026, 3, 9, 13, 0));
    }

    #[test]
    fn step_due_over_the_weekend() {
        // The wait is elapsed time, then the window applies: Fri 16:59 + 10m = Fri 17:09,
        // closed, so the step is due when the window next opens, Mon 09:00 (not 09:09: time
        // outside the window is not "saved up").
        let w = win("Mon-Fri 09:00-17:00");
        let due = step_due(
            local(New_York, 2026, 3, 6, 16, 59),
            parse_wait("10m").unwrap(),
            &w,
            New_York,
            &Holidays::default(),
        );
        assert_eq!(due, Some(local(New_York, 2026, 3, 9, 9, 0)));
        // Inside the window the wait is used as is.
        let due = step_due(
            local(New_York, 2026, 3, 6, 16, 40),
            Duration::minutes(10),
            &w,
            New_York,
            &Holidays::default(),
        );
        assert_eq!(due, Some(local(New_York, 2026, 3, 6, 16, 50)));
    }

    #[test]
    fn range_wrapping_the_week() {
        let w = win("Fri-Mon 09:00-17:00");
        let none = Holidays::default();
        // Tue 2026-06-02 -> Fri 2026-06-05.
        assert_eq!(
            next_in_window(local(Berlin, 2026, 6, 2, 10, 0), &w, Berlin, &none),
            Some(local(Berlin, 2026, 6, 5, 9, 0))
        );
        // Sat and Sun are open.
        let sat = local(Berlin, 2026, 6, 6, 12, 0);
        assert_eq!(next_in_window(sat, &w, Berlin, &none), Some(sat));
        // Sun evening -> Mon morning; Mon evening -> Fri.
        assert_eq!(
            next_in_window(local(Berlin, 2026, 6, 7, 18, 0), &w, Berlin, &none),
            Some(local(Berlin, 2026, 6, 8, 9, 0))
        );
        assert_eq!(
            next_in_window(local(Berlin, 2026, 6, 8, 18, 0), &w, Berlin, &none),
            Some(local(Berlin, 2026, 6, 12, 9, 0))
        );
    }

    #[test]
    fn window_until_midnight_runs_into_next_day() {
        let w = win("Sun 22:00-24:00; Mon 00:00-01:00");
        let none = Holidays::default();
        let sunday_late = local(Berlin, 2026, 6, 7, 23, 59);
        assert_eq!(
            next_in_window(sunday_late, &w, Berlin, &none),
            Some(sunday_late)
        );
        let monday_early = local(Berlin, 2026, 6, 8, 0, 30);
        assert_eq!(
            next_in_window(monday_early, &w, Berlin, &none),
            Some(monday_early)
        );
        assert_eq!(
            next_in_window(local(Berlin, 2026, 6, 8, 1, 0), &w, Berlin, &none),
            Some(local(Berlin, 2026, 6, 14, 22, 0))
        );
    }

    #[test]
    fn always_is_immediate_in_any_zone() {
        let t = utc(2026, 3, 8, 7, 0) + Duration::nanoseconds(1);
        for tz in [New_York, Berlin, Shanghai, Apia, Santiago, Tz::UTC] {
            assert_eq!(
                next_in_window(t, &Window::always(), tz, &Holidays::default()),
                Some(t)
            );
        }
    }

    #[test]
    fn empty_window_never_opens() {
        let empty = Window {
            days: Default::default(),
        };
        assert_eq!(
            next_in_window(utc(2026, 1, 1, 0, 0), &empty, Berlin, &Holidays::default()),
            None
        );
    }

    #[test]
    fn holidays_for_three_years_means_never() {
        let h = hol(&["2026-01-01..2029-12-31"]);
        assert_eq!(
            next_in_window(utc(2026, 1, 1, 0, 0), &Window::always(), Berlin, &h),
            None
        );
        // Two years of holidays is long but still within reach.
        let h = hol(&["2026-01-01..2027-12-31"]);
        assert_eq!(
            next_in_window(
                utc(2026, 1, 1, 0, 0),
                &win("Mon-Fri 09:00-17:00"),
                Berlin,
                &h
            ),
            Some(local(Berlin, 2028, 1, 3, 9, 0)) // Mon 2028-01-03
        );
    }

    #[test]
    fn chinese_new_year_in_shanghai() {
        let w = win("Mon-Fri 09:00-18:00");
        let h = hol(&["2026-02-16..2026-02-22"]);
        // Fri 2026-02-13 18:30 -> the whole holiday week is skipped -> Mon 2026-02-23 09:00.
        let due = next_in_window(local(Shanghai, 2026, 2, 13, 18, 30), &w, Shanghai, &h);
        assert_eq!(due, Some(utc(2026, 2, 23, 1, 0)));
        // In the middle of the holiday too.
        let due = next_in_window(local(Shanghai, 2026, 2, 18, 10, 0), &w, Shanghai, &h);
        assert_eq!(due, Some(utc(2026, 2, 23, 1, 0)));
        // A holiday is judged by the local date: 2026-02-15 17:00 UTC is already the 16th
        // in Shanghai.
        assert_eq!(
            next_in_window(utc(2026, 2, 15, 17, 0), &Window::always(), Shanghai, &h),
            Some(utc(2026, 2, 22, 16, 0)) // 2026-02-23 00:00 local
        );
    }

    #[test]
    fn golden_week_with_step_due() {
        let w = win("Mon-Fri 09:00-18:00");
        let h = hol(&["2026-10-01..2026-10-07"]);
        // Sent Mon 2026-09-28 10:00, wait 3d -> Thu 10-01, a holiday -> Thu 2026-10-08 09:00.
        let due = step_due(
            local(Shanghai, 2026, 9, 28, 10, 0),
            parse_wait("3d").unwrap(),
            &w,
            Shanghai,
            &h,
        );
        assert_eq!(due, Some(local(Shanghai, 2026, 10, 8, 9, 0)));
        assert_eq!(due, Some(utc(2026, 10, 8, 1, 0)));
    }

    #[test]
    fn step_due_zero_wait_and_overflow() {
        let w = win("Mon-Fri 09:00-17:00");
        let none = Holidays::default();
        let t = local(Berlin, 2026, 6, 3, 10, 0);
        assert_eq!(step_due(t, Duration::zero(), &w, Berlin, &none), Some(t));
        assert_eq!(
            step_due(
                DateTime::<Utc>::MAX_UTC,
                Duration::days(1),
                &w,
                Berlin,
                &none
            ),
            None
        );
    }

    // ---- next_in_window: DST ------------------------------------------------------------

    #[test]
    fn new_york_spring_forward_window_in_the_gap() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00 UTC.
        let none = Holidays::default();
        let saturday = local(New_York, 2026, 3, 7, 12, 0);
        // Opening at 02:30, which does not exist -> first valid instant, 03:00 EDT.
        assert_eq!(
            next_in_window(saturday, &win("Sun 02:30-04:00"), New_York, &none),
            Some(utc(2026, 3, 8, 7, 0))
        );
        // A window lying wholly in the gap never opens that day -> next Sunday 02:00 EDT.
        assert_eq!(
            next_in_window(saturday, &win("Sun 02:00-02:59"), New_York, &none),
            Some(utc(2026, 3, 15, 6, 0))
        );
        // A window across the gap: open before it, and still open after it.
        let w = win("Sun 01:30-02:30");
        let before_gap = utc(2026, 3, 8, 6, 45); // 01:45 EST
        assert_eq!(
            next_in_window(before_gap, &w, New_York, &none),
            Some(before_gap)
        );
        assert_eq!(
            next_in_window(saturday, &w, New_York, &none),
            Some(utc(2026, 3, 8, 6, 30)) // 01:30 EST
        );
        // 03:00 EDT is past the 02:30 close on the wall clock -> next week, 01:30 EDT.
        assert_eq!(
            next_in_window(utc(2026, 3, 8, 7, 0), &w, New_York, &none),
            Some(utc(2026, 3, 15, 5, 30))
        );
        // Normal working hours that day are 4 hours earlier in UTC than the day before.
        let w = win("Sat-Sun 09:00-17:00");
        assert_eq!(
            next_in_window(local(New_York, 2026, 3, 7, 18, 0), &w, New_York, &none),
            Some(utc(2026, 3, 8, 13, 0))
        );
    }

    #[test]
    fn new_york_fall_back_uses_first_occurrence() {
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST at 06:00 UTC; 01:00-02:00 occurs twice.
        let none = Holidays::default();
        let saturday = local(New_York, 2026, 10, 31, 12, 0);
        assert_eq!(
            next_in_window(saturday, &win("Sun 01:30-03:00"), New_York, &none),
            Some(utc(2026, 11, 1, 5, 30)) // 01:30 EDT, not 01:30 EST
        );
        // Past the first 01:00-01:20 but before the clock repeats it: the repeat is inside
        // the window by the wall clock, so the window reopens at 01:00 EST.
        let w = win("Sun 01:00-01:20");
        assert_eq!(
            next_in_window(utc(2026, 11, 1, 5, 30), &w, New_York, &none),
            Some(utc(2026, 11, 1, 6, 0))
        );
        // Inside the repeated range: unchanged.
        let second = utc(2026, 11, 1, 6, 10); // 01:10 EST
        assert_eq!(next_in_window(second, &w, New_York, &none), Some(second));
        // After both occurrences -> next Sunday 01:00 EST.
        assert_eq!(
            next_in_window(utc(2026, 11, 1, 6, 25), &w, New_York, &none),
            Some(utc(2026, 11, 8, 6, 0))
        );
    }

    #[test]
    fn berlin_spring_forward() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00 UTC.
        let none = Holidays::default();
        let saturday = local(Berlin, 2026, 3, 28, 12, 0);
        assert_eq!(
            next_in_window(saturday, &win("Sun 02:30-05:00"), Berlin, &none),
            Some(utc(2026, 3, 29, 1, 0)) // 03:00 CEST
        );
        assert_eq!(
            next_in_window(saturday, &win("Sun 02:15-02:45"), Berlin, &none),
            Some(utc(2026, 4, 5, 0, 15)) // next Sunday 02:15 CEST
        );
        assert_eq!(
            next_in_window(saturday, &win("Sun 01:00-02:00"), Berlin, &none),
            Some(utc(2026, 3, 29, 0, 0)) // 01:00 CET, closes at the jump
        );
        assert_eq!(
            next_in_window(
                utc(2026, 3, 29, 1, 0),
                &win("Sun 01:00-02:00"),
                Berlin,
                &none
            ),
            Some(utc(2026, 4, 4, 23, 0)) // 2026-04-05 01:00 CEST
        );
    }

    #[test]
    fn berlin_fall_back() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00 UTC; 02:00-03:00 twice.
        let none = Holidays::default();
        let saturday = local(Berlin, 2026, 10, 24, 12, 0);
        let w = win("Sun 02:30-03:30");
        assert_eq!(
            next_in_window(saturday, &w, Berlin, &none),
            Some(utc(2026, 10, 25, 0, 30)) // 02:30 CEST
        );
        // After 03:00 CEST the clock reads 02:00 again; the window is open through the
        // repeat until 03:30 CET.
        let during = utc(2026, 10, 25, 0, 59); // 02:59 CEST
        assert_eq!(next_in_window(during, &w, Berlin, &none), Some(during));
        // 02:10 CET, in the repeated hour but before 02:30 on the wall clock: the window
        // opens a second time at 02:30 CET.
        let repeat = utc(2026, 10, 25, 1, 10);
        assert_eq!(
            next_in_window(repeat, &w, Berlin, &none),
            Some(utc(2026, 10, 25, 1, 30))
        );
        let late = utc(2026, 10, 25, 2, 29); // 03:29 CET
        assert_eq!(next_in_window(late, &w, Berlin, &none), Some(late));
        assert_eq!(
            next_in_window(utc(2026, 10, 25, 2, 30), &w, Berlin, &none),
            Some(utc(2026, 11, 1, 1, 30)) // next Sunday 02:30 CET
        );
    }

    #[test]
    fn one_day_wait_is_24_real_hours_across_dst() {
        let none = Holidays::default();
        let w = win("Mon-Sun 08:00-20:00");
        let day = parse_wait("1d").unwrap();
        // New York spring: Sat 10:00 EST + 24h = Sun 11:00 EDT (a calendar day would be 10:00).
        let due = step_due(local(New_York, 2026, 3, 7, 10, 0), day, &w, New_York, &none);
        assert_eq!(due, Some(local(New_York, 2026, 3, 8, 11, 0)));
        // New York fall: Sat 10:00 EDT + 24h = Sun 09:00 EST.
        let due = step_due(
            local(New_York, 2026, 10, 31, 10, 0),
            day,
            &w,
            New_York,
            &none,
        );
        assert_eq!(due, Some(local(New_York, 2026, 11, 1, 9, 0)));
        // Berlin spring: Sat 10:00 CET + 24h = Sun 11:00 CEST.
        let due = step_due(local(Berlin, 2026, 3, 28, 10, 0), day, &w, Berlin, &none);
        assert_eq!(due, Some(local(Berlin, 2026, 3, 29, 11, 0)));
        // Berlin fall: Sat 10:00 CEST + 24h = Sun 09:00 CET.
        let due = step_due(local(Berlin, 2026, 10, 24, 10, 0), day, &w, Berlin, &none);
        assert_eq!(due, Some(local(Berlin, 2026, 10, 25, 9, 0)));
        // Sat 19:30 EDT + 24h = Sun 18:30 EST: still inside.
        let due = step_due(
            local(New_York, 2026, 10, 31, 19, 30),
            day,
            &w,
            New_York,
            &none,
        );
        assert_eq!(due, Some(local(New_York, 2026, 11, 1, 18, 30)));
        // Sat 19:30 EST + 24h = Sun 20:30 EDT: closed, so Monday 08:00.
        let due = step_due(
            local(New_York, 2026, 3, 7, 19, 30),
            day,
            &w,
            New_York,
            &none,
        );
        assert_eq!(due, Some(local(New_York, 2026, 3, 9, 8, 0)));
    }

    #[test]
    fn one_day_wait_landing_in_the_gap() {
        // Sat 02:30 EST + 24h = 07:30 UTC Sunday = 03:30 EDT, a real instant; nothing special.
        let due = step_due(
            local(New_York, 2026, 3, 7, 2, 30),
            Duration::days(1),
            &Window::always(),
            New_York,
            &Holidays::default(),
        );
        assert_eq!(due, Some(utc(2026, 3, 8, 7, 30)));
    }

    #[test]
    fn midnight_in_a_dst_gap() {
        // America/Santiago starts DST on 2026-09-06 at 00:00 -> 01:00 (04:00 UTC).
        let none = Holidays::default();
        assert_eq!(
            next_in_window(
                local(Santiago, 2026, 9, 5, 12, 0),
                &win("Sun 00:00-02:00"),
                Santiago,
                &none
            ),
            Some(utc(2026, 9, 6, 4, 0)) // 01:00 -03
        );
        assert_eq!(
            local_day_start(Santiago, date(2026, 9, 6)),
            utc(2026, 9, 6, 4, 0)
        );
        assert_eq!(
            local_day_start(Santiago, date(2026, 9, 7)),
            utc(2026, 9, 7, 3, 0)
        );
        // Santiago falls back at 24:00 to 23:00 the same Saturday: Sunday starts an hour
        // after the first "midnight".
        assert_eq!(
            local_day_start(Santiago, date(2026, 4, 5)),
            utc(2026, 4, 5, 4, 0)
        );
    }

    #[test]
    fn skipped_calendar_day() {
        // Samoa skipped Fri 2011-12-30 entirely (Thu 23:59:59 -10 -> Sat 00:00 +14).
        let w = win("Fri 09:00-17:00");
        let due = next_in_window(
            local(Apia, 2011, 12, 29, 12, 0),
            &w,
            Apia,
            &Holidays::default(),
        );
        assert_eq!(due, Some(local(Apia, 2012, 1, 6, 9, 0)));
        assert_eq!(due, Some(utc(2012, 1, 5, 19, 0)));
        assert_eq!(
            local_day_start(Apia, date(2011, 12, 30)),
            utc(2011, 12, 30, 10, 0)
        );
        assert_eq!(
            local_day_start(Apia, date(2011, 12, 31)),
            utc(2011, 12, 30, 10, 0)
        );
    }

    #[test]
    fn day_start_is_local_midnight_normally() {
        assert_eq!(
            local_day_start(Berlin, date(2026, 3, 29)),
            utc(2026, 3, 28, 23, 0)
        );
        assert_eq!(
            local_day_start(Berlin, date(2026, 3, 30)),
            utc(2026, 3, 29, 22, 0)
        );
        assert_eq!(
            local_day_start(New_York, date(2026, 11, 1)),
            utc(2026, 11, 1, 4, 0)
        );
        assert_eq!(
            local_day_start(New_York, date(2026, 11, 2)),
            utc(2026, 11, 2, 5, 0)
        );
        assert_eq!(
            local_day_start(Tz::UTC, date(2026, 1, 1)),
            utc(2026, 1, 1, 0, 0)
        );
    }

    // ---- property-style check ------------------------------------------------------------

    #[test]
    fn next_in_window_properties_hold_for_random_instants() {
        let zones: [Tz; 12] = [
            New_York,
            Berlin,
            Shanghai,
            Santiago,
            Apia,
            chrono_tz::Australia::Lord_Howe, // 30-minute DST
            chrono_tz::Asia::Kathmandu,      // +05:45
            chrono_tz::Pacific::Chatham,     // +12:45/+13:45
            chrono_tz::America::St_Johns,    // -03:30 with DST
            chrono_tz::Europe::London,
            chrono_tz::Australia::Sydney,
            Tz::UTC,
        ];
        let windows = [
            "always",
            "Mon-Fri 09:00-17:00",
            "Mon-Fri 09:00-12:00,13:30-17:00; Sat 10:00-12:00",
            "Sun 01:00-03:00",
            "Sun 00:00-02:30; Sat 23:00-24:00",
            "Fri-Mon 02:00-02:45,22:15-24:00",
            "Mon,Wed,Fri 00:00-00:01",
            "Tue-Thu 01:30-02:30; Sun 02:00-03:00",
        ];
        let mut checked = 0;
        for seed in 0..8u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..60 {
                let tz = zones[rng.usize(..zones.len())];
                let window = win(windows[rng.usize(..windows.len())]);
                // Random instants over 2011-2030, biased towards DST-change weekends.
                let earliest = if rng.bool() {
                    DateTime::from_timestamp(rng.i64(1_293_840_000..1_924_992_000), 0).unwrap()
                } else {
                    let base = [
                        utc(2026, 3, 8, 0, 0),
                        utc(2026, 11, 1, 0, 0),
                        utc(2026, 3, 29, 0, 0),
                        utc(2026, 10, 25, 0, 0),
                        utc(2026, 4, 4, 12, 0),
                        utc(2026, 9, 5, 12, 0),
                        utc(2011, 12, 29, 0, 0),
                    ][rng.usize(..7)];
                    base + Duration::seconds(rng.i64(-2 * 86_400..2 * 86_400))
                } + Duration::milliseconds(rng.i64(0..1_000));
                let holidays = if rng.u8(..4) == 0 {
                    let first = earliest.date_naive() + Duration::days(rng.i64(-3..4));
                    let last = first + Duration::days(rng.i64(0..10));
                    hol(&[&format!("{first}..{last}")])
                } else {
                    Holidays::default()
                };

                let found = next_in_window(earliest, &window, tz, &holidays)
                    .unwrap_or_else(|| panic!("nothing after {earliest} in {tz}"));
                let context = format!("{earliest} {tz} {window:?} {holidays:?} -> {found}");
                assert!(found >= earliest, "{context}");
                assert!(inside(&window, &holidays, tz, found), "{context}");
                // Minimal: no whole minute (window edges are whole minutes, transitions too)
                // between `earliest` and `found` is inside the window.
                if found > earliest {
                    assert!(!inside(&window, &holidays, tz, earliest), "{context}");
                    let mut t =
                        DateTime::from_timestamp(earliest.timestamp() / 60 * 60 + 60, 0).unwrap();
                    while t < found && t < earliest + Duration::days(16) {
                        assert!(!inside(&window, &holidays, tz, t), "{context}: open at {t}");
                        t += Duration::minutes(1);
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 480);
    }

    // ---- pacing --------------------------------------------------------------------------

    #[test]
    fn mailbox_day_is_the_local_date() {
        let p = pacing(Some(10), "Mon-Fri 09:00-17:00", New_York);
        // 03:00 UTC Monday is still Sunday evening in New York.
        assert_eq!(mailbox_day(&p, utc(2026, 3, 9, 3, 0)), date(2026, 3, 8));
        assert_eq!(mailbox_day(&p, utc(2026, 3, 9, 4, 0)), date(2026, 3, 9));
        let p = pacing(Some(10), "Mon-Fri 09:00-17:00", Shanghai);
        assert_eq!(mailbox_day(&p, utc(2026, 3, 8, 16, 0)), date(2026, 3, 9));
    }

    #[test]
    fn unlimited_always_sends_now() {
        let p = pacing(None, "always", Berlin);
        let now = utc(2026, 3, 29, 1, 30);
        for last_send in [None, Some(now), Some(now - Duration::seconds(1))] {
            let usage = MailboxUsage {
                last_send,
                sent_today: 500,
            };
            for sample in [-1.0, 0.0, 1.0] {
                assert_eq!(next_slot(&p, &usage, now, sample), Some(now));
            }
        }
    }

    #[test]
    fn unlimited_waits_for_its_window() {
        let p = pacing(None, "Mon-Fri 09:00-17:00", Berlin);
        let usage = MailboxUsage {
            last_send: Some(local(Berlin, 2026, 6, 5, 16, 59)),
            sent_today: 3,
        };
        // Fri 2026-06-05 18:00 -> Mon 09:00.
        assert_eq!(
            next_slot(&p, &usage, local(Berlin, 2026, 6, 5, 18, 0), 0.0),
            Some(local(Berlin, 2026, 6, 8, 9, 0))
        );
    }

    #[test]
    fn first_send_goes_at_opening() {
        let p = pacing(Some(40), "Mon-Fri 09:00-17:00", New_York);
        let usage = MailboxUsage {
            last_send: None,
            sent_today: 0,
        };
        assert_eq!(
            next_slot(&p, &usage, local(New_York, 2026, 3, 9, 7, 0), 0.0),
            Some(local(New_York, 2026, 3, 9, 9, 0))
        );
    }

    #[test]
    fn limit_reached_midday_waits_for_next_day() {
        let p = pacing(Some(10), "Mon-Fri 09:00-17:00", New_York);
        let usage = MailboxUsage {
            last_send: Some(local(New_York, 2026, 3, 10, 12, 55)),
            sent_today: 10,
        };
        // Tue 13:00 with 10 of 10 sent -> Wed 09:00, even with window time left today.
        assert_eq!(
            next_slot(&p, &usage, local(New_York, 2026, 3, 10, 13, 0), 0.0),
            Some(local(New_York, 2026, 3, 11, 9, 0))
        );
        // On a Friday -> Monday.
        let usage = MailboxUsage {
            last_send: Some(local(New_York, 2026, 3, 13, 12, 55)),
            sent_today: 12, // over the limit (the limit was lowered): same answer
        };
        assert_eq!(
            next_slot(&p, &usage, local(New_York, 2026, 3, 13, 13, 0), 1.0),
            Some(local(New_York, 2026, 3, 16, 9, 0))
        );
        // A limit of zero pauses the mailbox day after day.
        let p = pacing(Some(0), "always", New_York);
        let usage = MailboxUsage {
            last_send: None,
            sent_today: 0,
        };
        assert_eq!(
            next_slot(&p, &usage, local(New_York, 2026, 3, 10, 13, 0), 0.0),
            Some(local(New_York, 2026, 3, 11, 0, 0))
        );
    }

    #[test]
    fn pace_spreads_remaining_quota_over_remaining_window() {
        let p = pacing(Some(10), "Mon-Fri 09:00-17:00", New_York);
        let now = local(New_York, 2026, 3, 10, 13, 0);
        let usage = MailboxUsage {
            last_send: Some(now),
            sent_today: 5,
        };
        // 4h left, 5 to go -> 48 min.
        assert_eq!(
            next_slot(&p, &usage, now, 0.0),
            Some(now + Duration::minutes(48))
        );
        // Asked later than the last send: the gap still counts from the last send.
        // Asked at 13:10: 3h50m left / 5 = 46 min, counted from the last send.
        assert_eq!(
            next_slot(&p, &usage, now + Duration::minutes(10), 0.0),
            Some(now + Duration::minutes(46))
        );
        // A lunch break is closed time and does not count as window left.
        let p = pacing(Some(10), "Mon-Fri 09:00-12:00,13:30-17:00", New_York);
        let usage = MailboxUsage {
            last_send: Some(local(New_York, 2026, 3, 10, 11, 50)),
            sent_today: 5,
        };
        assert_eq!(
            next_slot(&p, &usage, local(New_York, 2026, 3, 10, 11, 50), 0.0),
            // 10 min + 3.5h = 220 min left / 5 = 44 min -> 12:34, in the break -> 13:30.
            Some(local(New_York, 2026, 3, 10, 13, 30))
        );
    }

    #[test]
    fn min_gap_wins_over_a_shorter_pace() {
        let mut p = pacing(Some(100), "Mon-Fri 09:00-17:00", Berlin);
        p.min_gap = Duration::minutes(5);
        let now = local(Berlin, 2026, 6, 2, 13, 0);
        let usage = MailboxUsage {
            last_send: Some(now),
            sent_today: 5,
        };
        // 240 min / 95 ≈ 2.5 min < 5 min.
        assert_eq!(
            next_slot(&p, &usage, now, 0.0),
            Some(now + Duration::minutes(5))
        );
        // And without a limit, min_gap alone.
        p.daily_limit = None;
        assert_eq!(
            next_slot(&p, &usage, now, 0.0),
            Some(now + Duration::minutes(5))
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut p = pacing(None, "always", Berlin);
        p.min_gap = Duration::minutes(10);
        p.jitter = 0.3;
        let last = utc(2026, 6, 2, 12, 0);
        let usage = MailboxUsage {
            last_send: Some(last),
            sent_today: 0,
        };
        let low = last + Duration::minutes(7);
        let high = last + Duration::minutes(13);
        assert_eq!(next_slot(&p, &usage, last, -1.0), Some(low));
        assert_eq!(next_slot(&p, &usage, last, 1.0), Some(high));
        assert_eq!(
            next_slot(&p, &usage, last, 0.5),
            Some(last + Duration::minutes(11) + Duration::seconds(30))
        );
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..1_000 {
            let sample = rng.f64() * 2.0 - 1.0;
            let t = next_slot(&p, &usage, last, sample).unwrap();
            assert!(low <= t && t <= high, "{t} for sample {sample}");
            seen_low |= t < last + Duration::minutes(8);
            seen_high |= t > last + Duration::minutes(12);
        }
        assert!(seen_low && seen_high, "jitter should use its whole range");
        // Out-of-range inputs are clamped, NaN is ignored.
        assert_eq!(next_slot(&p, &usage, last, 5.0), Some(high));
        assert_eq!(next_slot(&p, &usage, last, -5.0), Some(low));
        assert_eq!(
            next_slot(&p, &usage, last, f64::NAN),
            Some(last + Duration::minutes(10))
        );
        p.jitter = 3.0;
        assert_eq!(next_slot(&p, &usage, last, -1.0), Some(last));
        p.jitter = f64::NAN;
        assert_eq!(
            next_slot(&p, &usage, last, 1.0),
            Some(last + Duration::minutes(10))
        );
    }

    #[test]
    fn no_window_left_today_goes_to_next_opening() {
        let p = pacing(Some(40), "Mon-Fri 09:00-17:00", New_York);
        let usage = MailboxUsage {
            last_send: Some(local(New_York, 2026, 3, 10, 16, 30)),
            sent_today: 20,
        };
        assert_eq!(
            next_slot(&p, &usage, local(New_York, 2026, 3, 10, 18, 0), 0.0),
            Some(local(New_York, 2026, 3, 11, 9, 0))
        );
    }

    #[test]
    fn holiday_today_goes_to_next_working_day() {
        let mut p = pacing(Some(40), "Mon-Fri 09:00-18:00", Shanghai);
        p.holidays = hol(&["2026-10-01..2026-10-07"]);
        let usage = MailboxUsage {
            last_send: Some(local(Shanghai, 2026, 9, 30, 17, 0)),
            sent_today: 0,
        };
        assert_eq!(
            next_slot(&p, &usage, local(Shanghai, 2026, 10, 2, 10, 0), 0.0),
            Some(local(Shanghai, 2026, 10, 8, 9, 0))
        );
    }

    #[test]
    fn last_send_of_the_day_fits_before_closing() {
        let p = pacing(Some(10), "Mon-Fri 09:00-17:00", New_York);
        let now = local(New_York, 2026, 3, 10, 16, 50);
        let usage = MailboxUsage {
            last_send: Some(now),
            sent_today: 9,
        };
        // 10 min / 1 = 10 min -> 17:00, which is closed: the tenth goes at 16:59 instead.
        assert_eq!(
            next_slot(&p, &usage, now, 0.0),
            Some(local(New_York, 2026, 3, 10, 16, 59))
        );
        // ...unless min_gap forbids it: then tomorrow.
        let mut p = p;
        p.min_gap = Duration::minutes(15);
        assert_eq!(
            next_slot(&p, &usage, now, 0.0),
            Some(local(New_York, 2026, 3, 11, 9, 0))
        );
        // Without a limit there is no quota to fit in; plain placement.
        p.daily_limit = None;
        assert_eq!(
            next_slot(&p, &usage, now, 0.0),
            Some(local(New_York, 2026, 3, 11, 9, 0))
        );
    }

    /// Runs a mailbox for `days` of simulated time, sending whenever `next_slot` allows, and
    /// returns the send instants grouped by local day.
    fn simulate(
        p: &Pacing,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        seed: u64,
    ) -> std::collections::BTreeMap<NaiveDate, Vec<DateTime<Utc>>> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut by_day: std::collections::BTreeMap<NaiveDate, Vec<DateTime<Utc>>> =
            Default::default();
        let mut usage = MailboxUsage {
            last_send: None,
            sent_today: 0,
        };
        let mut now = start;
        loop {
            let day = mailbox_day(p, now);
            usage.sent_today = by_day.get(&day).map_or(0, |v| v.len() as u32);
            let slot = next_slot(p, &usage, now, rng.f64() * 2.0 - 1.0).unwrap();
            assert!(slot >= now);
            if slot >= end {
                break;
            }
            // The scheduler sleeps until `slot`, then sends (its day may be a new one).
            now = slot;
            let day = mailbox_day(p, now);
            usage.sent_today = by_day.get(&day).map_or(0, |v| v.len() as u32);
            if p.daily_limit.is_some_and(|limit| usage.sent_today >= limit) {
                continue; // woke at midnight: ask again with the new day's count
            }
            assert!(
                inside(&p.window, &p.holidays, p.tz, now),
                "sent outside at {now}"
            );
            by_day.entry(day).or_default().push(now);
            usage.last_send = Some(now);
        }
        by_day
    }

    #[test]
    fn pacing_spreads_a_day_of_sends() {
        for jitter in [0.0, 0.3] {
            let mut p = pacing(Some(40), "Mon-Fri 09:00-17:00", New_York);
            p.jitter = jitter;
            // Mon 2026-03-02 through Sun 2026-03-08 (the DST weekend), starting 08:00 Monday.
            let by_day = simulate(
                &p,
                local(New_York, 2026, 3, 2, 8, 0),
                local(New_York, 2026, 3, 9, 0, 0),
                42,
            );
            let days: Vec<NaiveDate> = by_day.keys().copied().collect();
            assert_eq!(days, (2..=6).map(|d| date(2026, 3, d)).collect::<Vec<_>>());
            for (day, sends) in &by_day {
                assert_eq!(sends.len(), 40, "jitter {jitter}, {day}");
                let span = *sends.last().unwrap() - sends[0];
                assert!(span >= Duration::hours(7), "{day}: span {span}");
                assert_eq!(
                    sends[0],
                    local(New_York, day.year(), day.month(), day.day(), 9, 0)
                );
                // No burst: apart from the squeeze into the final minute, sends stay more
                // than half the even spacing (8h / 40 = 12 min) apart.
                for pair in sends[..39].windows(2) {
                    assert!(
                        pair[1] - pair[0] >= Duration::minutes(6),
                        "{day}: {} -> {}",
                        pair[0],
                        pair[1]
                    );
                }
                assert!(sends
                    .iter()
                    .all(|t| t.with_timezone(&New_York).weekday() != Weekday::Sat));
            }
        }
    }

    #[test]
    fn pacing_never_exceeds_the_limit_with_lunch_break_and_min_gap() {
        let mut p = pacing(Some(25), "Mon-Fri 09:00-12:00,13:00-17:00", Berlin);
        p.min_gap = Duration::minutes(3);
        p.jitter = 0.5;
        p.holidays = hol(&["2026-10-06"]);
        let by_day = simulate(
            &p,
            local(Berlin, 2026, 10, 5, 0, 0),
            local(Berlin, 2026, 10, 12, 0, 0),
            9,
        );
        let days: Vec<NaiveDate> = by_day.keys().copied().collect();
        assert_eq!(
            days,
            [5, 7, 8, 9]
                .iter()
                .map(|&d| date(2026, 10, d))
                .collect::<Vec<_>>()
        );
        for (day, sends) in &by_day {
            assert!(sends.len() <= 25, "{day}: {}", sends.len());
            assert!(sends.len() >= 24, "{day}: only {}", sends.len());
            let span = *sends.last().unwrap() - sends[0];
            assert!(span >= Duration::hours(7), "{day}: span {span}");
        }
    }

    #[test]
    fn pacing_counts_the_mailbox_local_day() {
        // A Shanghai mailbox with 10 of 10 sent: the limit resets at Shanghai midnight
        // (16:00 UTC), not UTC midnight.
        let p = pacing(Some(10), "always", Shanghai);
        let usage = MailboxUsage {
            last_send: Some(utc(2026, 6, 2, 10, 0)),
            sent_today: 10,
        };
        assert_eq!(
            next_slot(&p, &usage, utc(2026, 6, 2, 11, 0), 0.0),
            Some(utc(2026, 6, 2, 16, 0))
        );
    }
}
