//! Automatic replies and list mail: RFC 3834 and vendor headers, RFC 2369/2919 list
//! headers, out-of-office subjects and bodies.

use chrono::NaiveDate;
use mail_parser::Message;

use super::dates::find_return_date;
use super::dsn::is_type;
use super::headers::Head;
use super::limits::MAX_PARTS;
use super::quote::{main_text, new_text, snippet};
use super::scan::{char_floor, lower, shorten};
use super::words::{auto_body, oof_body, oof_subject_prefixes, oof_subjects};
use super::{Classification, Kind};

pub(super) fn auto_reply(
    msg: &Message<'_>,
    c: Classification,
    reason: String,
    subject_low: &str,
    received: Option<NaiveDate>,
) -> Classification {
    let fresh = new_text(&main_text(msg, true));
    let fresh_low = lower(&fresh);
    finish_auto_reply(c, reason, subject_low, &fresh, &fresh_low, received)
}

pub(super) fn finish_auto_reply(
    mut c: Classification,
    reason: String,
    subject_low: &str,
    fresh: &str,
    fresh_low: &str,
    received: Option<NaiveDate>,
) -> Classification {
    c.kind = Kind::AutoReply;
    // The subject often carries the date ("Out of office until 8 December").
    let mut text = String::with_capacity(subject_low.len() + fresh_low.len() + 1);
    text.push_str(subject_low);
    text.push('\n');
    text.push_str(fresh_low);
    c.return_date = find_return_date(&text, received);
    c.snippet = snippet(fresh);
    c.reason = match c.return_date {
        Some(d) => format!("{reason}; back {d}"),
        None => reason,
    };
    c
}

/// Headers that say "an automatic responder sent this" outright.
pub(super) fn auto_reply_header(head: &Head) -> Option<String> {
    if let Some(v) = head.auto_submitted.as_deref() {
        // RFC 3834 §5: "no" means a person; anything else is automatic. Only
        // "auto-replied" (§5.2) is a response; "auto-generated" and others are handled
        // after the list check, since list software uses them too.
        let keyword = auto_submitted_keyword(v);
        if keyword == "auto-replied" {
            return Some(format!("Auto-Submitted: {}", shorten(v, 60)));
        }
    }
    if let Some(x) = &head.x_autoreply {
        return Some(x.clone());
    }
    if head.precedence.as_deref() == Some("auto_reply") {
        return Some("Precedence: auto_reply".to_string());
    }
    None
}

/// The keyword of an Auto-Submitted value (RFC 3834 §5), lower-cased.
fn auto_submitted_keyword(v: &str) -> String {
    v.split([';', '(', ' '])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Auto-reply signs that come after the list check.
pub(super) fn auto_reply_weak_header(msg: &Message<'_>, head: &Head) -> Option<String> {
    if let Some(v) = head.auto_submitted.as_deref() {
        let keyword = auto_submitted_keyword(v);
        if !keyword.is_empty() && keyword != "no" {
            return Some(format!("Auto-Submitted: {} (RFC 3834 §5)", shorten(v, 60)));
        }
    }
    if let Some(v) = head.x_auto_response_suppress.as_deref() {
        // Exchange stamps "X-Auto-Response-Suppress: All" on its own out-of-office
        // replies. Meeting responses are people answering, so those are left alone.
        let calendar = head.calendar
            || msg
                .parts
                .iter()
                .take(MAX_PARTS)
                .any(|p| is_type(p, "text", "calendar"));
        if v.split(',').any(|t| t.trim() == "all") && !calendar {
            return Some(
                "X-Auto-Response-Suppress: All (as Exchange marks its out-of-office replies)"
                    .to_string(),
            );
        }
    }
    if let Some(m) = head.mailer.as_deref() {
        const RESPONDERS: &[&str] = &[
            "vacation",
            "autorespond",
            "autoreply",
            "auto-reply",
            "auto reply",
            "out of office",
            "abwesenheit",
        ];
        if let Some(r) = RESPONDERS.iter().find(|r| m.contains(*r)) {
            return Some(format!("X-Mailer of an automatic responder ('{r}')"));
        }
    }
    None
}

/// RFC 2369 / RFC 2919 list headers mean a list or a newsletter. List-Unsubscribe
/// alone on a threaded message without Precedence is left to the reply path: sales
/// tools add it to one-to-one mail, and losing a reply is worse than a stray one.
pub(super) fn list_mail(head: &Head, threaded: bool) -> Option<String> {
    let precedence = head.precedence.as_deref().unwrap_or("");
    let bulk = matches!(precedence, "bulk" | "list" | "junk");
    if let Some(name) = head.list_header {
        let p = if bulk {
            format!(" and Precedence: {precedence}")
        } else {
            String::new()
        };
        return Some(format!("{name} header{p}: mailing-list or newsletter mail"));
    }
    if head.list_unsubscribe && (bulk || !threaded) {
        let p = if bulk {
            format!(" with Precedence: {precedence}")
        } else {
            " on an unthreaded message".to_string()
        };
        return Some(format!("List-Unsubscribe{p}: newsletter"));
    }
    None
}

pub(super) fn out_of_office_subject(subject: &str, subject_low: &str) -> Option<String> {
    let trimmed = subject_low.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '[' | '【' | '(' | '（' | '「' | '*')
    });
    let hit = oof_subjects()
        .first(subject_low)
        .or_else(|| oof_subject_prefixes().at_start(trimmed))?;
    // Quote the subject's own spelling when lower-casing kept the character count.
    let said = if subject.chars().count() == subject_low.chars().count() {
        let start = subject_low[..hit.start].chars().count();
        let len = subject_low[hit.start..hit.end].chars().count();
        subject.chars().skip(start).take(len).collect()
    } else {
        hit.pattern.to_string()
    };
    let said = said.trim_end_matches(':').trim().to_string();
    Some(if hit.label.starts_with("RFC") {
        format!("subject starts with '{said}' ({})", hit.label)
    } else {
        format!("{} out-of-office subject '{said}'", hit.label)
    })
}

/// The body-only rule, for responders that set no header and no telling subject
/// (Apple Mail and Thunderbird rules reply with "Re: ..."). Strict on purpose: the
/// text says it is automatic, or it is short, asks nothing, and uses two different
/// out-of-office phrases.
pub(super) fn out_of_office_body(fresh_low: &str) -> Option<String> {
    let head = &fresh_low[..char_floor(fresh_low, 2048)];
    if let Some(hit) = auto_body().first(head) {
        return Some(format!(
            "{} text says it is automatic ('{}')",
            hit.label, hit.pattern
        ));
    }
    let short = fresh_low.chars().count() <= 1000;
    let asks = fresh_low.contains('?') || fresh_low.contains('？');
    if !short || asks {
        return None;
    }
    let mut distinct: Vec<&'static str> = Vec::new();
    let mut label = "";
    for hit in oof_body().find_all(fresh_low) {
        if !distinct.contains(&hit.pattern) {
            distinct.push(hit.pattern);
            label = hit.label;
        }
    }
    (distinct.len() >= 2).then(|| {
        format!(
            "{label} out-of-office text without auto-reply headers ('{}', '{}')",
            distinct[0], distinct[1]
        )
    })
}
