//! Return dates in out-of-office text: a tokenizer, month names in nine languages,
//! return cues, and the rules that pick one date.

use chrono::{Datelike, NaiveDate};

use super::scan::{char_floor, lower};
use super::words::{return_cues_after, return_cues_before};

/// The date an out-of-office text says the person is back (or away until).
///
/// Reads, in the nine languages: "back on 15 December", "December 15th", "until
/// 2026-12-03", "zurück am 3.12.", "bis 03.12.2026", "de retour le 3 décembre",
/// "regreso el 3 de diciembre", "volto em 3 de dezembro", "di ritorno il 3 dicembre",
/// "terug op 3 december", "休假至12月3日", "2026年12月3日", "12月3日まで", "12/3".
///
/// - A date without a year is the next such date on or after `received`.
/// - Dates before `received`, or more than 400 days after it, are ignored.
/// - "d.m." with dots is always day first (German, Dutch... usage). "a/b" is ambiguous
///   (US month first, most of the world day first): both readings are tried and the
///   one nearer after `received` wins — a return is days or weeks away, not months.
/// - A date next to a return word ("back", "until", "bis", "jusqu'au", "hasta", "até",
///   "fino al", "tot", "至", "まで"...) wins over other dates; among those the latest
///   ("from 1 to 5 December, back on 8 December" → 8 December). Without any return
///   word, only month-name, CJK and ISO dates count (a bare "3/4" could be anything).
/// - Weekdays alone ("back on Monday") are not read.
pub fn return_date(text: &str, received: NaiveDate) -> Option<NaiveDate> {
    find_return_date(&lower(text), Some(received))
}

pub(super) fn find_return_date(low: &str, received: Option<NaiveDate>) -> Option<NaiveDate> {
    let toks = tokenize(low);
    let mut cued: Option<NaiveDate> = None;
    let mut plain: Option<NaiveDate> = None;
    let mut k = 0;
    while k < toks.len() {
        let Some(m) = match_date(&toks, k) else {
            k += 1;
            continue;
        };
        let is_cued = has_return_cue(low, m.start, m.end);
        for spec in &m.specs {
            if let Some(d) = resolve(*spec, received) {
                if is_cued {
                    cued = cued.max(Some(d));
                } else if m.strong {
                    plain = plain.max(Some(d));
                }
            }
        }
        k = m.next.max(k + 1);
    }
    cued.or(plain)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Tk<'a> {
    Num(u32, usize),
    Word(&'a str),
    Sym(char),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Tok<'a> {
    pub(super) t: Tk<'a>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// Whitespace right before this token.
    pub(super) gap: bool,
}

pub(super) fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF)
}

pub(super) fn tokenize(low: &str) -> Vec<Tok<'_>> {
    let mut toks = Vec::new();
    let mut gap = false;
    let mut iter = low.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if c.is_whitespace() {
            gap = true;
            continue;
        }
        let (t, end) = if c.is_ascii_digit() {
            let mut end = i + 1;
            let mut v = u32::from(c as u8 - b'0');
            while let Some(&(j, d)) = iter.peek() {
                if !d.is_ascii_digit() {
                    break;
                }
                v = v
                    .saturating_mul(10)
                    .saturating_add(u32::from(d as u8 - b'0'));
                end = j + 1;
                iter.next();
            }
            (Tk::Num(v, end - i), end)
        } else if c.is_alphabetic() && !is_cjk(c) {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = iter.peek() {
                if !d.is_alphabetic() || is_cjk(d) {
                    break;
                }
                end = j + d.len_utf8();
                iter.next();
            }
            (Tk::Word(&low[i..end]), end)
        } else {
            (Tk::Sym(c), i + c.len_utf8())
        };
        toks.push(Tok {
            t,
            start: i,
            end,
            gap,
        });
        gap = false;
    }
    toks
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Spec {
    Full(i32, u32, u32),
    YearLess(u32, u32),
    /// "a/b" (and "a/b/y"): month/day or day/month.
    Ambiguous(u32, u32, Option<i32>),
}

pub(super) struct DateMatch {
    pub(super) specs: Vec<Spec>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) next: usize,
    /// Counts without a return word nearby.
    pub(super) strong: bool,
}

pub(super) fn month_of(word: &str) -> Option<u32> {
    const MONTHS: &[(&str, u32)] = &[
        ("january", 1),
        ("jan", 1),
        ("januar", 1),
        ("jänner", 1),
        ("janvier", 1),
        ("janv", 1),
        ("enero", 1),
        ("ene", 1),
        ("janeiro", 1),
        ("gennaio", 1),
        ("januari", 1),
        ("february", 2),
        ("feb", 2),
        ("februar", 2),
        ("février", 2),
        ("févr", 2),
        ("fév", 2),
        ("fevrier", 2),
        ("febrero", 2),
        ("fevereiro", 2),
        ("fev", 2),
        ("febbraio", 2),
        ("februari", 2),
        ("march", 3),
        ("mar", 3),
        ("märz", 3),
        ("mär", 3),
        ("mrz", 3),
        ("mars", 3),
        ("marzo", 3),
        ("março", 3),
        ("marco", 3),
        ("maart", 3),
        ("mrt", 3),
        ("april", 4),
        ("apr", 4),
        ("avril", 4),
        ("avr", 4),
        ("abril", 4),
        ("abr", 4),
        ("aprile", 4),
        ("may", 5),
        ("mai", 5),
        ("mayo", 5),
        ("maio", 5),
        ("maggio", 5),
        ("mei", 5),
        ("june", 6),
        ("jun", 6),
        ("juni", 6),
        ("juin", 6),
        ("junio", 6),
        ("junho", 6),
        ("giugno", 6),
        ("giu", 6),
        ("july", 7),
        ("jul", 7),
        ("juli", 7),
        ("juillet", 7),
        ("juil", 7),
        ("julio", 7),
        ("julho", 7),
        ("luglio", 7),
        ("lug", 7),
        ("august", 8),
        ("aug", 8),
        ("août", 8),
        ("aout", 8),
        ("agosto", 8),
        ("augustus", 8),
        ("september", 9),
        ("sep", 9),
        ("sept", 9),
        ("septembre", 9),
        ("septiembre", 9),
        ("setiembre", 9),
        ("setembro", 9),
        ("settembre", 9),
        ("october", 10),
        ("oct", 10),
        ("oktober", 10),
        ("okt", 10),
        ("octobre", 10),
        ("octubre", 10),
        ("outubro", 10),
        ("ottobre", 10),
        ("ott", 10),
        ("november", 11),
        ("nov", 11),
        ("novembre", 11),
        ("noviembre", 11),
        ("novembro", 11),
        ("december", 12),
        ("dec", 12),
        ("dezember", 12),
        ("dez", 12),
        ("décembre", 12),
        ("déc", 12),
        ("decembre", 12),
        ("diciembre", 12),
        ("dic", 12),
        ("dezembro", 12),
        ("dicembre", 12),
        // Russian, genitive (the form after a day number).
        ("января", 1),
        ("февраля", 2),
        ("марта", 3),
        ("апреля", 4),
        ("мая", 5),
        ("июня", 6),
        ("июля", 7),
        ("августа", 8),
        ("сентября", 9),
        ("октября", 10),
        ("ноября", 11),
        ("декабря", 12),
    ];
    MONTHS.iter().find(|(w, _)| *w == word).map(|(_, m)| *m)
}

pub(super) fn match_date(toks: &[Tok<'_>], k: usize) -> Option<DateMatch> {
    let num = |i: usize| match toks.get(i).map(|t| t.t) {
        Some(Tk::Num(v, len)) => Some((v, len)),
        _ => None,
    };
    let sym = |i: usize| match toks.get(i).map(|t| t.t) {
        Some(Tk::Sym(c)) => Some(c),
        _ => None,
    };
    let word = |i: usize| match toks.get(i).map(|t| t.t) {
        Some(Tk::Word(w)) => Some(w),
        _ => None,
    };
    let adj = |i: usize| toks.get(i).is_some_and(|t| !t.gap);
    let start = toks.get(k)?.start;
    let end_of = |i: usize| toks.get(i).map_or(start, |t| t.end);
    let day_ok = |d: u32| (1..=31).contains(&d);
    let month_ok = |m: u32| (1..=12).contains(&m);
    let year_of = |v: u32, len: usize| match len {
        4 => Some(v as i32),
        2 => Some(2000 + v as i32),
        _ => None,
    };
    let done = |specs: Vec<Spec>, last: usize, strong: bool| DateMatch {
        specs,
        start,
        end: end_of(last),
        next: last + 1,
        strong,
    };

    if let Some((v, len)) = num(k) {
        // Part of a longer dotted number (IP address, version): not a date.
        if k >= 2 && adj(k) && sym(k - 1) == Some('.') && num(k - 2).is_some() {
            return None;
        }
        // 2026-12-03, 2026/12/03, 2026.12.03 (ISO 8601 order).
        if len == 4 {
            if let (Some(s), Some((m, _)), Some((d, _))) = (sym(k + 1), num(k + 2), num(k + 4)) {
                if matches!(s, '-' | '/' | '.')
                    && sym(k + 3) == Some(s)
                    && adj(k + 1)
                    && adj(k + 2)
                    && adj(k + 3)
                    && adj(k + 4)
                    && month_ok(m)
                    && day_ok(d)
                {
                    return Some(done(vec![Spec::Full(v as i32, m, d)], k + 4, true));
                }
            }
            // 2026年12月3日, 2026년 12월 3일 (Korean)
            if matches!(sym(k + 1), Some('年' | '년')) && matches!(sym(k + 3), Some('月' | '월'))
            {
                if let (Some((m, _)), Some((d, _))) = (num(k + 2), num(k + 4)) {
                    if month_ok(m) && day_ok(d) {
                        let last = if matches!(sym(k + 5), Some('日' | '号' | '일')) {
                            k + 5
                        } else {
                            k + 4
                        };
                        return Some(done(vec![Spec::Full(v as i32, m, d)], last, true));
                    }
                }
            }
        }
        // 12月3日, 12월 3일 (Korean)
        if matches!(sym(k + 1), Some('月' | '월')) && month_ok(v) {
            if let Some((d, _)) = num(k + 2) {
                if day_ok(d) {
                    let last = if matches!(sym(k + 3), Some('日' | '号' | '일')) {
                        k + 3
                    } else {
                        k + 2
                    };
                    return Some(done(vec![Spec::YearLess(v, d)], last, true));
                }
            }
        }
        // 3.12. / 3.12.2026 / 03.12.26: day first.
        if sym(k + 1) == Some('.') && adj(k + 1) && adj(k + 2) && day_ok(v) {
            if let Some((m, _)) = num(k + 2) {
                if month_ok(m) && sym(k + 3) == Some('.') && adj(k + 3) {
                    if let Some((y, ylen)) = num(k + 4).filter(|_| adj(k + 4)) {
                        // 1.2.3.4 is an IP address, 1.2.3 a version.
                        let more = sym(k + 5) == Some('.') && adj(k + 5) && num(k + 6).is_some();
                        return match year_of(y, ylen) {
                            Some(y) if !more => Some(done(vec![Spec::Full(y, m, v)], k + 4, true)),
                            _ => None,
                        };
                    }
                    return Some(done(vec![Spec::YearLess(m, v)], k + 3, true));
                }
            }
        }
        // 12-12-2025 (Dutch, day first with a four-digit year).
        if sym(k + 1) == Some('-') && adj(k + 1) && adj(k + 2) && day_ok(v) && len <= 2 {
            if let (Some((m, _)), Some((y, 4))) = (num(k + 2), num(k + 4)) {
                if month_ok(m) && sym(k + 3) == Some('-') && adj(k + 3) && adj(k + 4) {
                    return Some(done(vec![Spec::Full(y as i32, m, v)], k + 4, true));
                }
            }
        }
        // 12/3, 12/3/2026: ambiguous order.
        if sym(k + 1) == Some('/') && adj(k + 1) && adj(k + 2) {
            if let Some((b, _)) = num(k + 2) {
                let year = (sym(k + 3) == Some('/') && adj(k + 3) && adj(k + 4))
                    .then(|| num(k + 4))
                    .flatten()
                    .and_then(|(y, l)| year_of(y, l));
                let last = if year.is_some() { k + 4 } else { k + 2 };
                if (1..=31).contains(&b) {
                    return Some(done(
                        vec![Spec::Ambiguous(v, b, year)],
                        last,
                        year.is_some(),
                    ));
                }
            }
        }
        // 15 December, 15th of December, 3. Dezember 2026, 3 de diciembre de 2026, 1er décembre.
        if day_ok(v) && len <= 2 {
            let mut j = k + 1;
            if adj(j)
                && word(j).is_some_and(|w| {
                    matches!(w, "st" | "nd" | "rd" | "th" | "er" | "e" | "o" | "º")
                })
            {
                j += 1;
            }
            if sym(j) == Some('.') || sym(j) == Some('º') {
                j += 1;
            }
            if word(j).is_some_and(|w| matches!(w, "of" | "de" | "del")) {
                j += 1;
            }
            if let Some(m) = word(j).and_then(month_of) {
                let mut last = j;
                let mut y = None;
                let mut n = j + 1;
                if sym(n) == Some('.') {
                    n += 1;
                }
                if word(n).is_some_and(|w| matches!(w, "de" | "del")) {
                    n += 1;
                }
                if sym(n) == Some(',') {
                    n += 1;
                }
                if let Some((yv, 4)) = num(n) {
                    y = Some(yv as i32);
                    last = n;
                }
                let spec = y.map_or(Spec::YearLess(m, v), |y| Spec::Full(y, m, v));
                return Some(done(vec![spec], last, true));
            }
        }
        return None;
    }
    // December 15, Dec. 15th, 2026; December 1-5.
    let m = word(k).and_then(month_of)?;
    let mut j = k + 1;
    if sym(j) == Some('.') {
        j += 1;
    }
    let (d, dlen) = num(j)?;
    if !day_ok(d) || dlen > 2 || sym(j + 1) == Some(':') {
        return None;
    }
    let mut last = j;
    let mut n = j + 1;
    if adj(n) && word(n).is_some_and(|w| matches!(w, "st" | "nd" | "rd" | "th")) {
        n += 1;
        last += 1;
    }
    let mut days = vec![d];
    if matches!(sym(n), Some('-'))
        || word(n).is_some_and(|w| matches!(w, "to" | "bis" | "au" | "al" | "a" | "tot" | "until"))
    {
        if let Some((d2, l2)) = num(n + 1) {
            if day_ok(d2) && l2 <= 2 && d2 > d {
                days.push(d2);
                last = n + 1;
                n += 2;
            }
        }
    }
    let mut y = None;
    if sym(n) == Some(',') {
        n += 1;
    }
    if let Some((yv, 4)) = num(n) {
        y = Some(yv as i32);
        last = n;
    }
    let specs = days
        .into_iter()
        .map(|d| y.map_or(Spec::YearLess(m, d), |y| Spec::Full(y, m, d)))
        .collect();
    Some(done(specs, last, true))
}

pub(super) fn resolve(spec: Spec, received: Option<NaiveDate>) -> Option<NaiveDate> {
    let in_range = |d: NaiveDate| match received {
        Some(r) => d >= r && (d - r).num_days() <= 400,
        None => true,
    };
    let year_less = |m: u32, d: u32| {
        let r = received?;
        (r.year()..=r.year() + 4)
            .filter_map(|y| NaiveDate::from_ymd_opt(y, m, d))
            .find(|date| *date >= r)
            .filter(|date| in_range(*date))
    };
    match spec {
        Spec::Full(y, m, d) => NaiveDate::from_ymd_opt(y, m, d).filter(|d| in_range(*d)),
        Spec::YearLess(m, d) => year_less(m, d),
        Spec::Ambiguous(a, b, year) => {
            let read = |m: u32, d: u32| match year {
                Some(y) => NaiveDate::from_ymd_opt(y, m, d).filter(|d| in_range(*d)),
                None => year_less(m, d),
            };
            let month_first = read(a, b);
            let day_first = read(b, a);
            match (month_first, day_first) {
                (Some(x), Some(y)) if x != y => {
                    // Nearer after `received` wins; without `received`, no guess.
                    received.map(|_| x.min(y))
                }
                (x, y) => x.or(y),
            }
        }
    }
}

pub(super) fn has_return_cue(low: &str, start: usize, end: usize) -> bool {
    let before = &low[char_floor(low, start.saturating_sub(40))..start];
    let after = &low[end.min(low.len())..char_floor(low, end + 16)];
    return_cues_before().first(before).is_some() || return_cues_after().first(after).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn return_dates_in_nine_languages() {
        let r = d(2025, 12, 1);
        let cases = [
            ("I am back on 15 December.", d(2025, 12, 15)),
            ("Out of office until 2026-01-05.", d(2026, 1, 5)),
            ("Ich bin ab dem 8.12. wieder zurück.", d(2025, 12, 8)),
            (
                "Ich bin bis 03.12.2025 nicht im Büro, zurück am 4.12.",
                d(2025, 12, 4),
            ),
            ("我目前休假至12月3日，期间回复可能延迟。", d(2025, 12, 3)),
            ("12月3日まで休暇をいただいております。", d(2025, 12, 3)),
            ("Je serai de retour le 3 décembre.", d(2025, 12, 3)),
            (
                "Estaré fuera de la oficina; regreso el 3 de diciembre.",
                d(2025, 12, 3),
            ),
            ("Estou de férias e volto em 3 de dezembro.", d(2025, 12, 3)),
            ("Sono in ferie, di ritorno il 3 dicembre.", d(2025, 12, 3)),
            ("Ik ben afwezig en terug op 3 december.", d(2025, 12, 3)),
            ("Back December 8th, 2025.", d(2025, 12, 8)),
            (
                "I'm away from December 1-5 and back on December 8.",
                d(2025, 12, 8),
            ),
            ("I'm out until 12/3.", d(2025, 12, 3)),
            ("2025年12月10日に戻ります。", d(2025, 12, 10)),
            ("休假到１２月５日", d(2025, 12, 5)),
        ];
        for (text, want) in cases {
            assert_eq!(return_date(text, r), Some(want), "{text}");
        }
    }

    #[test]
    fn return_date_year_rolls_over_and_ambiguity_picks_the_nearer() {
        // A year-less date before `received` is next year's.
        assert_eq!(
            return_date("back on 3 January", d(2025, 12, 20)),
            Some(d(2026, 1, 3))
        );
        // 3/12 on 25 February: 12 March (month first) is nearer than 3 December.
        assert_eq!(
            return_date("back 3/12", d(2026, 2, 25)),
            Some(d(2026, 3, 12))
        );
        // 3/12 on 1 December: 3 December (day first) is nearer than 12 March.
        assert_eq!(
            return_date("back 3/12", d(2025, 12, 1)),
            Some(d(2025, 12, 3))
        );
        // 13/12 can only be day first.
        assert_eq!(
            return_date("until 13/12", d(2025, 12, 1)),
            Some(d(2025, 12, 13))
        );
        // A past explicit date is not a return date; an IP address is no date.
        assert_eq!(return_date("until 2024-01-05", d(2025, 12, 1)), None);
        assert_eq!(return_date("server 10.12.1.4 back", d(2025, 12, 1)), None);
        assert_eq!(return_date("back on Monday", d(2025, 12, 1)), None);
        // Without a return word, numeric "a/b" is ignored; month names still count.
        assert_eq!(return_date("call 3/4 of the team", d(2025, 12, 1)), None);
        assert_eq!(
            return_date("Vacation: December 8", d(2025, 12, 1)),
            Some(d(2025, 12, 8))
        );
    }
}
