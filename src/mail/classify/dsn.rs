//! Machine-readable reports: RFC 6522 multipart/report carrying RFC 3464 delivery
//! status notifications or RFC 5965 feedback (ARF) reports; the returned original;
//! RFC 3463 and RFC 5321 status codes; the tail shared by every bounce.

use std::borrow::Cow;

use mail_parser::{HeaderName, Message, MessagePart, MimeHeaders, PartType};

use super::bounce_text::text_hints;
use super::headers::bracket_id;
use super::limits::{
    Unique, MAX_ADDRESSES, MAX_BODY_BYTES, MAX_PARTS, MAX_RECIPIENTS, MAX_REFERENCES,
};
use super::quote::main_text;
use super::reasons::{
    mta_family, reason_for, reason_in_text, reason_of_code, BounceReason, MtaFamily,
};
use super::scan::{addresses_in, cap, lower, shorten, strip_address_prefix};
use super::{Action, Classification, Kind, RecipientStatus};

pub(super) enum Report<'m> {
    /// message/delivery-status (RFC 3464 §2) or message/global-delivery-status (RFC 6533).
    Delivery(Cow<'m, str>),
    /// message/feedback-report (RFC 5965 §3).
    Feedback(Cow<'m, str>),
}

pub(super) fn find_report<'m>(msg: &'m Message<'m>) -> Option<Report<'m>> {
    find_report_in(msg, true)
}

fn find_report_in<'m>(msg: &'m Message<'m>, descend: bool) -> Option<Report<'m>> {
    for part in msg.parts.iter().take(MAX_PARTS) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        if !ct.ctype().eq_ignore_ascii_case("message") {
            continue;
        }
        let sub = ct.subtype().unwrap_or("");
        let delivery = sub.eq_ignore_ascii_case("delivery-status")
            || sub.eq_ignore_ascii_case("global-delivery-status");
        let feedback = sub.eq_ignore_ascii_case("feedback-report");
        if !delivery && !feedback {
            continue;
        }
        let text = match &part.body {
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                String::from_utf8_lossy(&b[..b.len().min(MAX_BODY_BYTES)])
            }
            PartType::Text(t) => Cow::Borrowed(cap(t, MAX_BODY_BYTES)),
            _ => continue,
        };
        return Some(if delivery {
            Report::Delivery(text)
        } else {
            Report::Feedback(text)
        });
    }
    // A filter (InterScan, Songbird) that wraps the MTA's report in a message/rfc822
    // keeps "report-type" on the wrapper: look one level in, no deeper.
    let wrapped = descend
        && msg
            .content_type()
            .is_some_and(|ct| ct.attribute("report-type").is_some());
    if wrapped {
        for part in msg.parts.iter().take(MAX_PARTS) {
            if let PartType::Message(m) = &part.body {
                if !m.parts.is_empty() {
                    if let Some(r) = find_report_in(m, false) {
                        return Some(r);
                    }
                }
            }
        }
    }
    None
}

/// Header-style fields of a report or a header block: names lower-cased, values
/// unfolded. Blank lines separate groups (RFC 3464 §2.1); a group boundary is
/// reported as ("", "").
pub(super) fn fields(text: &str) -> Vec<(String, String)> {
    fields_in(text, usize::MAX)
}

/// [`fields`] of the first `groups + 1` groups only (the rest is not read).
fn fields_in(text: &str, groups: usize) -> Vec<(String, String)> {
    let mut boundaries = 0;
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if out.last().is_some_and(|(n, _)| !n.is_empty()) {
                if boundaries == groups {
                    break;
                }
                boundaries += 1;
                out.push((String::new(), String::new()));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((n, v)) = out.last_mut() {
                if !n.is_empty() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(' ') {
                out.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    out
}

/// The header fields of an enclosed message, up to the first blank line after them
/// (the rest of the text is not read).
fn header_block(text: &str) -> Vec<(String, String)> {
    fields_in(text.trim_start_matches(['\r', '\n']), 0)
}

/// The returned original, as attached (message/rfc822 or text/rfc822-headers, RFC 6522)
/// or pasted inline after a "copy of the message" line.
#[derive(Default)]
pub(super) struct Original {
    pub(super) message_id: Option<String>,
    pub(super) to: Unique,
    pub(super) senders: Unique,
    /// The copy was list mail (List-*, X-BeenThere, Mailman headers): its To and Cc
    /// are the list's own addresses, never the one that failed.
    pub(super) list: bool,
    /// "for <addr>" of the copy's first Received line: the receiving MTA's envelope
    /// recipient, the last resort for naming the failed address.
    pub(super) received_for: Option<String>,
}

/// A list's own address by its local part (Mailman, Sympa, ezmlm conventions).
pub(super) fn is_list_address(a: &str) -> bool {
    let local = a.split('@').next().unwrap_or("");
    [
        "-request", "-bounces", "-bounce", "-owner", "-admin", "-confirm", "-join", "-leave",
    ]
    .iter()
    .any(|s| local.ends_with(s))
        || local.contains("-bounces+")
        || local.starts_with("owner-")
}

/// The address after "for" in a Received header value.
fn received_for(value: &str) -> Option<String> {
    let low = value.to_ascii_lowercase();
    let mut words = low.split_whitespace();
    words.find(|w| *w == "for")?;
    addresses_in(words.next()?)
        .into_iter()
        .next()
        .map(|(_, a)| a)
}

impl Original {
    pub(super) fn from_parts(msg: &Message<'_>) -> Original {
        for part in msg.parts.iter().take(MAX_PARTS) {
            match &part.body {
                // mail-parser never nests an empty message, but its accessors index
                // parts[0]: do not trust that with hostile input.
                PartType::Message(m) if !m.parts.is_empty() => {
                    let mut o = Original {
                        message_id: m.message_id().and_then(bracket_id),
                        ..Original::default()
                    };
                    o.list = ["List-Id", "List-Post", "X-BeenThere", "X-Mailman-Version"]
                        .into_iter()
                        .any(|h| m.header_raw(h).is_some());
                    // The first Received line (header_raw would give the last).
                    o.received_for = m
                        .root_part()
                        .headers
                        .iter()
                        .find(|h| h.name == HeaderName::Received)
                        .and_then(|h| {
                            m.raw_message
                                .get(h.offset_start as usize..h.offset_end as usize)
                        })
                        .and_then(|raw| received_for(&String::from_utf8_lossy(raw)));
                    let to = m.to().into_iter().flat_map(|a| a.iter());
                    for a in to.take(MAX_ADDRESSES) {
                        if let Some(addr) = a.address() {
                            o.to.push(addr.to_ascii_lowercase());
                        }
                    }
                    for a in [m.from(), m.sender(), m.reply_to()].into_iter().flatten() {
                        for addr in a.iter().take(MAX_ADDRESSES).filter_map(|a| a.address()) {
                            o.senders.push(addr.to_ascii_lowercase());
                        }
                    }
                    return o;
                }
                PartType::Text(t) if is_type(part, "text", "rfc822-headers") => {
                    return Original::from_header_text(t);
                }
                _ => {}
            }
        }
        Original::default()
    }

    pub(super) fn from_header_text(text: &str) -> Original {
        let mut o = Original::default();
        for (name, value) in header_block(text) {
            match name.as_str() {
                "message-id" if o.message_id.is_none() => {
                    o.message_id = value.split_whitespace().next().and_then(bracket_id);
                }
                "to" | "cc" => {
                    for (_, a) in addresses_in(&value.to_ascii_lowercase()) {
                        o.to.push(a);
                    }
                }
                "from" | "sender" | "reply-to" | "return-path" => {
                    for (_, a) in addresses_in(&value.to_ascii_lowercase()) {
                        o.senders.push(a);
                    }
                }
                "list-id" | "list-post" | "list-help" | "x-beenthere" | "x-mailman-version" => {
                    o.list = true;
                }
                "received" if o.received_for.is_none() => o.received_for = received_for(&value),
                _ => {}
            }
        }
        o
    }
}

pub(super) fn is_type(part: &MessagePart<'_>, ctype: &str, subtype: &str) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
    })
}

pub(super) fn complaint(msg: &Message<'_>, report: &str, c: &mut Classification) {
    let original = Original::from_parts(msg);
    let mut rcpts = Unique::new(MAX_RECIPIENTS);
    let mut feedback_type = None;
    for (name, value) in fields(report) {
        match name.as_str() {
            // RFC 5965 §3: Original-Rcpt-To; Removal-Recipient is its deprecated cousin
            // from the ARF drafts that some feedback loops still send.
            "original-rcpt-to" | "removal-recipient" => {
                for (_, a) in addresses_in(&value.to_ascii_lowercase()) {
                    rcpts.push(a);
                }
            }
            "feedback-type" if feedback_type.is_none() => {
                feedback_type = Some(value.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    let from_enclosed = rcpts.is_empty();
    let rcpts = if from_enclosed {
        original.to.into_vec()
    } else {
        rcpts.into_vec()
    };
    let ft = feedback_type.clone().unwrap_or_else(|| "abuse".to_string());
    if ft == "not-spam" {
        // RFC 6430 registers "not-spam": such a report is no complaint.
        c.kind = Kind::Unrelated;
        c.reason = "RFC 5965 feedback report of type not-spam: no complaint".to_string();
        return;
    }
    c.kind = Kind::Complaint;
    c.feedback_type = feedback_type;
    c.references = with_original(original.message_id, &mut c.references);
    c.reason = format!(
        "RFC 5965 feedback report ({ft}) for {}{}",
        list_or_unknown(&rcpts),
        if from_enclosed && !rcpts.is_empty() {
            " (To of the enclosed message)"
        } else {
            ""
        }
    );
    c.recipients = rcpts;
}

/// Fills `c` from an RFC 3464 delivery-status body. Returns false when the report
/// names no recipient at all (malformed), so the text heuristics get their turn.
pub(super) fn dsn_bounce(msg: &Message<'_>, report: &str, c: &mut Classification) -> bool {
    let records = dsn_records(report);
    if records.is_empty() {
        return false;
    }
    let mut failures: Vec<RecipientStatus> = Vec::new();
    let mut delivered = Vec::new();
    for r in &records {
        let code = r.status.as_deref().and_then(enhanced_code).or_else(|| {
            r.diagnostic
                .as_deref()
                .and_then(|d| first_enhanced_code(&d.to_ascii_lowercase()))
        });
        // Old MTAs put the reply in Status ("553 Exceeded maximum inbound message size").
        let basic = r
            .diagnostic
            .as_deref()
            .and_then(basic_code)
            .or_else(|| r.status.as_deref().and_then(basic_code));
        let action = match r.action.as_deref() {
            // "failure" and "error" are not RFC 3464 words, but old MTAs write them.
            Some("failed" | "failure" | "error") => Action::Failed,
            Some("delayed") => Action::Delayed,
            Some(_) => {
                delivered.push(r.recipient.clone());
                continue;
            }
            // Action is required (RFC 3464 §2.3.3); without it, trust the status class.
            None => match code.as_ref().map(|c| c.class).or(basic.map(|b| b / 100)) {
                Some(4 | 5) => Action::Failed,
                _ => continue,
            },
        };
        let diag_low = lower(&format!(
            "{} {}",
            r.diagnostic.as_deref().unwrap_or(""),
            r.status.as_deref().unwrap_or("")
        ));
        let reason = reason_for(code.as_ref(), &diag_low);
        let permanent = match action {
            Action::Delayed => Some(false),
            Action::Failed => decide_permanence(code.as_ref(), basic, reason),
        };
        failures.push(RecipientStatus {
            recipient: r.recipient.clone(),
            action,
            status: code.map(|c| c.text),
            permanent,
            reason,
            diagnostic: r.diagnostic.as_deref().map(|d| shorten(d, 200)),
        });
    }
    if failures.is_empty() {
        c.kind = Kind::Unrelated;
        c.reason = format!(
            "RFC 3464 report: delivered to {} (a success notice, not a bounce)",
            list_or_unknown(&delivered)
        );
        return true;
    }
    // Without any status code or telling diagnostic, the human-readable part's words
    // decide: its reason first, then its general words ("permanent error").
    let human = lower(cap(&main_text(msg, false), 16 * 1024));
    if failures
        .iter()
        .any(|f| f.permanent.is_none() || f.reason == BounceReason::Unknown)
    {
        let reason = reason_in_text(&human);
        let hints = text_hints(&human);
        for f in failures.iter_mut() {
            if f.reason == BounceReason::Unknown {
                f.reason = reason;
            }
            if f.permanent.is_none() && f.action == Action::Failed {
                f.permanent = f.reason.permanent().or(hints.permanent());
            }
        }
    }
    // The first 16 KB of the report are enough to name its writer (a hostile one
    // can list 40,000 recipients).
    c.mta = Some(mta_family(&[&human, &lower(cap(report, 16 * 1024))]));
    let mut original = Original::from_parts(msg);
    if original.message_id.is_none() {
        // Gmail names the original in its per-message fields even when it returns
        // no copy of it.
        original.message_id = report.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("x-original-message-id")
                .then(|| bracket_id(value))?
        });
    }
    finish_bounce(c, original, failures, "RFC 3464 report");
    true
}

pub(super) struct DsnRecord {
    pub(super) recipient: String,
    pub(super) action: Option<String>,
    pub(super) status: Option<String>,
    pub(super) diagnostic: Option<String>,
}

/// Per-recipient groups of an RFC 3464 §2.3 delivery-status body, the first
/// [`MAX_RECIPIENTS`] of them. Tolerates missing blank lines between groups (a new
/// Final-Recipient starts a new record) and fields in any order (Amazon SES writes
/// Action before Final-Recipient).
pub(super) fn dsn_records(report: &str) -> Vec<DsnRecord> {
    #[derive(Default)]
    struct Acc {
        original: Option<String>,
        final_: Option<String>,
        action: Option<String>,
        status: Option<String>,
        diagnostic: Option<String>,
    }
    fn flush(acc: &mut Acc, out: &mut Vec<DsnRecord>) {
        let a = std::mem::take(acc);
        // Original-Recipient (§2.3.1) is the address we gave the MTA; Final-Recipient
        // (§2.3.2) may be a forwarding target. Suppression is about the former.
        if let Some(recipient) = a.original.or(a.final_) {
            out.push(DsnRecord {
                recipient,
                action: a.action,
                status: a.status,
                diagnostic: a.diagnostic,
            });
        }
    }
    fn address_field(value: &str) -> Option<String> {
        // "rfc822; li@example.cn" (address-type ";" generic-address), RFC 3464 §2.3.1.
        let addr = value.split_once(';').map_or(value, |(_, a)| a);
        let addr = strip_address_prefix(
            addr.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim(),
        );
        (addr.contains('@')).then(|| addr.to_lowercase())
    }
    let mut out = Vec::new();
    let mut acc = Acc::default();
    for (name, value) in fields_in(report, MAX_RECIPIENTS + 1) {
        if out.len() >= MAX_RECIPIENTS {
            // The first recipients of a hostile report are enough to name it.
            return out;
        }
        match name.as_str() {
            "" => flush(&mut acc, &mut out),
            "original-recipient" => {
                if acc.original.is_some() || acc.final_.is_some() {
                    flush(&mut acc, &mut out);
                }
                acc.original = address_field(&value);
            }
            "final-recipient" => {
                if acc.final_.is_some() {
                    flush(&mut acc, &mut out);
                }
                acc.final_ = address_field(&value);
            }
            "action" => {
                acc.action = value
                    .split_whitespace()
                    .next()
                    .map(|a| a.to_ascii_lowercase());
            }
            "status" => acc.status = Some(value),
            "diagnostic-code" => {
                let d = value.split_once(';').map_or(value.as_str(), |(_, d)| d);
                acc.diagnostic = Some(d.trim().to_string());
            }
            _ => {}
        }
    }
    if out.len() < MAX_RECIPIENTS {
        flush(&mut acc, &mut out);
    }
    out
}

/// An RFC 3463 enhanced status code.
#[derive(Clone)]
pub(super) struct Code {
    pub(super) class: u16,
    pub(super) subject: u16,
    pub(super) detail: u16,
    pub(super) text: String,
}

/// Permanent or not, from the codes. RFC 3463 §2: class 5 is a permanent failure,
/// class 4 a persistent transient one — which is also what an MTA reports when it
/// gives up after its retry period ("Action: failed" with 4.4.1 and friends): the
/// message is lost but the address may be fine, so such a bounce counts as soft.
/// RFC 3463 §3.3 says X.2.2 (mailbox full) "should be used as a persistent transient
/// failure", so 5.2.2 is temporary too.
pub(super) fn permanence(code: Option<&Code>, basic: Option<u16>) -> Option<bool> {
    if let Some(c) = code {
        return match c.class {
            5 => Some(!(c.subject == 2 && c.detail == 2)),
            4 => Some(false),
            _ => None,
        };
    }
    match basic.map(|b| b / 100) {
        Some(5) => Some(basic != Some(552)),
        Some(4) => Some(false),
        _ => None,
    }
}

/// Permanent or not for one recipient, from its codes and the reason its words give
/// (Sisimai-like: the words decide when no RFC 3463 code does).
/// - A specific enhanced code decides alone (5.1.1 permanent, 5.2.2 and 4.x.x not).
/// - A catch-all class-5 code (5.0.0, 5.5.0, 5.7.1...) with words that mean
///   "temporary" (mailbox full, over quota, too large, expired) is temporary.
/// - A basic 4xx reply is temporary; a basic 5xx follows the words when they say
///   something (552 is "mailbox full" or "too large" as often as a refusal).
/// - Without any code, the words alone.
pub(super) fn decide_permanence(
    code: Option<&Code>,
    basic: Option<u16>,
    reason: BounceReason,
) -> Option<bool> {
    if let Some(c) = code {
        let specific = reason_of_code(c).1;
        if c.class == 5 && !specific && reason.permanent() == Some(false) {
            return Some(false);
        }
        return permanence(Some(c), basic);
    }
    match basic.map(|b| b / 100) {
        Some(4) => Some(false),
        _ => reason.permanent().or(permanence(None, basic)),
    }
}

/// Parses a whole value that starts with an enhanced status code ("5.1.1 (Remote SMTP error)").
pub(super) fn enhanced_code(value: &str) -> Option<Code> {
    let token = value.split_whitespace().next()?;
    first_enhanced_code(token)
}

/// The first RFC 3463 code "class.subject.detail" in lower-cased text: class 4 or 5,
/// subject 0–7 (one digit, so "Exim 4.94.2" is no code), detail 1–3 digits, and not
/// part of a longer dotted number such as an IP address.
pub(super) fn first_enhanced_code(text: &str) -> Option<Code> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let off = b[i..].iter().position(|&c| c == b'4' || c == b'5')?;
        i += off;
        let prev_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.');
        if prev_ok
            && b.get(i + 1) == Some(&b'.')
            && b.get(i + 2).is_some_and(|c| (b'0'..=b'7').contains(c))
            && b.get(i + 3) == Some(&b'.')
        {
            let mut j = i + 4;
            while j < b.len() && j < i + 7 && b[j].is_ascii_digit() {
                j += 1;
            }
            let detail_len = j - (i + 4);
            let next_ok = j >= b.len()
                || !(b[j].is_ascii_digit()
                    || (b[j] == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit)));
            if detail_len > 0 && next_ok {
                let detail = text[i + 4..j].parse().unwrap_or(0);
                return Some(Code {
                    class: u16::from(b[i] - b'0'),
                    subject: u16::from(b[i + 2] - b'0'),
                    detail,
                    text: text[i..j].to_string(),
                });
            }
        }
        i += 1;
    }
    None
}

/// The first basic SMTP reply code (RFC 5321 §4.2) 4xx/5xx standing as a code: at a
/// line start or after ':', ';', '(', '#', "<<<" — not any number in running text.
pub(super) fn basic_code(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 3 <= b.len() {
        let c0 = b[i];
        if (c0 == b'4' || c0 == b'5')
            && b[i + 1].is_ascii_digit()
            && b[i + 1] <= b'5'
            && b[i + 2].is_ascii_digit()
            && (i + 3 == b.len() || matches!(b[i + 3], b' ' | b'-' | b':' | b'\r' | b'\n'))
        {
            let before = text[..i].trim_end_matches([' ', '\t']);
            let prev_ok = before.is_empty()
                || before.ends_with(['\n', ':', ';', '(', '#', '<', '：', ']', '"'])
                || before.ends_with("said")
                || before.ends_with("error");
            let prev_char_ok = i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.';
            if prev_ok && prev_char_ok {
                let v = u16::from(c0 - b'0') * 100
                    + u16::from(b[i + 1] - b'0') * 10
                    + u16::from(b[i + 2] - b'0');
                return Some(v);
            }
        }
        i += 1;
    }
    None
}

/// Shared tail of DSN and text bounces: recipients, overall permanence, reason.
pub(super) fn finish_bounce(
    c: &mut Classification,
    original: Original,
    failures: Vec<RecipientStatus>,
    source: &str,
) {
    c.kind = Kind::Bounce;
    c.references = with_original(original.message_id, &mut c.references);
    let mut recipients = Unique::new(MAX_RECIPIENTS);
    recipients.extend(failures.iter().map(|f| f.recipient.clone()));
    c.recipients = recipients.into_vec();
    let failed: Vec<&RecipientStatus> = failures
        .iter()
        .filter(|f| f.action == Action::Failed)
        .collect();
    c.permanent = if failures.iter().any(|f| f.permanent == Some(true)) {
        Some(true)
    } else if failures.iter().any(|f| f.permanent == Some(false)) {
        Some(false)
    } else {
        None
    };
    c.bounce_reason = failures
        .iter()
        .find(|f| f.permanent == Some(true))
        .or_else(|| failures.first())
        .map(|f| f.reason)
        .or(Some(BounceReason::Unknown));
    c.status = failures
        .iter()
        .find(|f| f.permanent == Some(true) && f.status.is_some())
        .or_else(|| failures.iter().find(|f| f.status.is_some()))
        .and_then(|f| f.status.clone());
    let mut parts: Vec<String> = Vec::new();
    for f in failures.iter().take(3) {
        let what = match (&f.status, f.action) {
            (Some(s), Action::Failed) => s.clone(),
            (Some(s), Action::Delayed) => format!("delayed {s}"),
            (None, Action::Failed) => "failed".to_string(),
            (None, Action::Delayed) => "delayed".to_string(),
        };
        parts.push(format!("{what} for {}", f.recipient));
    }
    if failures.len() > 3 {
        parts.push(format!("and {} more", failures.len() - 3));
    }
    if parts.is_empty() {
        parts.push("no failed address found; match by the returned Message-ID".to_string());
    }
    let mut reason = format!("{source}: {}", parts.join(", "));
    if failures.is_empty() {
        // Nothing to add: the caller fills permanence from the notice's words.
    } else if failed.is_empty() {
        reason.push_str(" (delay warning: still being retried)");
    } else if c.permanent == Some(false) {
        if failed
            .iter()
            .any(|f| f.status.as_deref().is_some_and(|s| s.starts_with("5.2.2")))
        {
            reason.push_str(" (mailbox full: transient, RFC 3463 §3.3)");
        } else if failed
            .iter()
            .any(|f| f.status.as_deref().is_some_and(|s| s.starts_with('4')))
        {
            reason.push_str(" (gave up after retries with a 4.x.x status: temporary)");
        } else {
            reason.push_str(" (temporary)");
        }
    } else if c.permanent.is_none() {
        reason.push_str(" (permanence unknown)");
    } else if c.status.is_none() {
        reason.push_str(" (permanent: the text says so)");
    }
    // The rule's outcome in the fixed vocabulary, for `followup classify` and logs.
    reason.push_str(&format!(
        " [reason {}, mta {}]",
        c.bounce_reason.unwrap_or(BounceReason::Unknown).as_str(),
        c.mta.unwrap_or(MtaFamily::Other).as_str()
    ));
    c.reason = reason;
    c.failures = failures;
}

pub(super) fn list_or_unknown(list: &[String]) -> String {
    if list.is_empty() {
        "an unnamed recipient".to_string()
    } else {
        list.join(", ")
    }
}

/// The returned original's Message-ID first, then the message's own references.
fn with_original(original: Option<String>, refs: &mut Vec<String>) -> Vec<String> {
    let mut out = Unique::new(MAX_REFERENCES);
    out.extend(original);
    out.extend(refs.drain(..));
    out.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_in_text() {
        assert_eq!(
            first_enhanced_code("550 5.1.1 <a@b>: user unknown").map(|c| c.text),
            Some("5.1.1".to_string())
        );
        assert_eq!(
            first_enhanced_code("resolver.adr.recipientnotfound 5.1.10 x").map(|c| c.text),
            Some("5.1.10".to_string())
        );
        assert!(first_enhanced_code("exim 4.94.2 at 10.5.1.1").is_none());
        assert_eq!(first_enhanced_code("(#4.4.1)").map(|c| c.class), Some(4));
        assert_eq!(basic_code("554: delivery error"), Some(554));
        assert_eq!(basic_code("host said: 450 try later"), Some(450));
        assert_eq!(basic_code("we sent 550 emails"), None);
    }
}
