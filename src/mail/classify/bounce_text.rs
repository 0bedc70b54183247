//! Bounces in vendors' own words: no delivery-status part, a mail-system sender or
//! a bounce subject, and text that says delivery failed.

use std::collections::{HashMap, HashSet};

use mail_parser::Message;

use super::dsn::{
    basic_code, decide_permanence, finish_bounce, first_enhanced_code, is_list_address, Original,
};
use super::headers::Head;
use super::limits::MAX_RECIPIENTS;
use super::quote::main_text;
use super::reasons::{mta_family, reason_for, BounceReason};
use super::scan::{addresses_in, cap, char_floor, lower};
use super::words::{
    bounce_bodies, bounce_subjects, bounce_subjects_anywhere, copy_markers, failure_hints,
};
use super::{Action, Classification, RecipientStatus};

#[derive(Default, Clone, Copy)]
pub(super) struct Hints {
    pub(super) perm: bool,
    pub(super) retry: bool,
    pub(super) gave_up: bool,
    pub(super) temp: bool,
}

impl Hints {
    /// Permanent wins over the rest: qmail says "This is a permanent error; I've given
    /// up" for hard bounces. The status code, when there is one, outranks all of this.
    pub(super) fn permanent(self) -> Option<bool> {
        if self.perm {
            Some(true)
        } else if self.gave_up || self.temp || self.retry {
            Some(false)
        } else {
            None
        }
    }
}

pub(super) fn text_hints(low: &str) -> Hints {
    let mut h = Hints::default();
    for hit in failure_hints().find_all(low) {
        match hit.label {
            "perm" => h.perm = true,
            "retry" => h.retry = true,
            "gaveup" => h.gave_up = true,
            _ => h.temp = true,
        }
    }
    h
}

/// Recognises a bounce without a delivery-status part and fills `c`.
pub(super) fn looks_like_bounce(
    msg: &Message<'_>,
    head: &Head,
    subject_low: &str,
    c: &mut Classification,
) -> bool {
    let from = c.from.as_deref().unwrap_or("");
    let sender_hint = mail_system_sender(msg, from)
        || !head.failed_recipients.is_empty()
        || head.exchange_ndr
        || head.null_sender;
    let subject = subject_low.trim_start();
    let subject_hit = bounce_subjects()
        .at_start(subject)
        .or_else(|| bounce_subjects_anywhere().first(subject));
    // Every rule below needs a mail-system sender or a bounce subject: without
    // either, the body is not even looked at.
    if !sender_hint && subject_hit.is_none() {
        return false;
    }
    let body = main_text(msg, false);
    let body = body.as_str();
    // Only the part before the returned copy speaks for the bounce.
    let body_low = lower(cap(body, 16 * 1024));
    let region_end = copy_markers()
        .first(&body_low)
        .map_or(body_low.len(), |h| h.start);
    let region = &body_low[..region_end];
    let body_hit = bounce_bodies().first(region);
    // A mail-system sender plus either a bounce subject or bounce words; or, from any
    // sender, both (forwarders rewrite From but keep the rest).
    let (subject_says, body_says) = (subject_hit.is_some(), body_hit.is_some());
    let is_bounce = (sender_hint && (subject_says || body_says)) || (subject_says && body_says);
    if !is_bounce {
        return false;
    }
    let label = body_hit
        .map(|h| h.label)
        .or(subject_hit.map(|h| h.label))
        .unwrap_or("generic");

    let mut original = Original::from_parts(msg);
    if original.message_id.is_none() && region_end < body_low.len() {
        // The copy is pasted inline (qmail, Yahoo, old Exim): read its header block.
        let after = &body[body.len().min(char_floor(body, region_end))..];
        let after = after.split_once('\n').map_or("", |(_, rest)| rest);
        let inline = Original::from_header_text(after);
        original.message_id = inline.message_id;
        if original.to.is_empty() {
            original.to = inline.to;
            original.list = inline.list;
        }
        original.received_for = original.received_for.or(inline.received_for);
        original.senders.extend(inline.senders.into_vec());
    }

    // Failed recipients: Exim names them in a header; otherwise every address the
    // human-readable part mentions that is not ours, the mail system's, or in a
    // header-like line (Message-IDs look like addresses).
    let mut found: Vec<(usize, String)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    // A list whose bounce address we are: "list@d" when the bounce came to
    // "list-bounces@d" (Mailman's VERP base).
    let list_of_ours = |a: &str| {
        a.split_once('@').is_some_and(|(local, domain)| {
            ["-bounces", "-owner", "-admin"]
                .iter()
                .any(|s| head.ours.contains(&format!("{local}{s}@{domain}")))
        })
    };
    // Ours, the mail system's, or a list's: never the address that failed.
    let ours = |a: &str| {
        head.ours.contains(a)
            // A sender of the copy, unless it wrote to itself (a test message).
            || (original.senders.contains(a) && !original.to.contains(a))
            || from == a
            || is_system_address(a)
            || is_list_address(a)
            || (original.list && original.to.contains(a))
            || list_of_ours(a)
    };
    if head.failed_recipients.is_empty() {
        let mut offset = 0;
        for line in region.split_inclusive('\n') {
            let t = line.trim_start_matches([' ', '\t', '>', '<']);
            let header_like = [
                "from:",
                "return-path:",
                "sender:",
                "reply-to:",
                "message-id:",
                "in-reply-to:",
                "references:",
                "received:",
                "date:",
                "mail from:",
                ">>> mail from",
                "dkim-signature:",
                "subject:",
                "to:",
                "cc:",
                "sent:",
                "x-",
            ]
            .iter()
            .any(|p| t.starts_with(p))
                || t.starts_with("<<< 250");
            if !header_like {
                for (pos, a) in addresses_in(line) {
                    if !ours(&a) && seen.insert(a.clone()) {
                        found.push((offset + pos, a));
                    }
                }
            }
            offset += line.len();
        }
    } else {
        // Where the text names each: one scan of the text, not one search per
        // recipient (a header can list a thousand).
        let mut named_at: HashMap<String, usize> = HashMap::new();
        for (pos, a) in addresses_in(region) {
            named_at.entry(a).or_insert(pos);
        }
        for a in head.failed_recipients.iter() {
            let pos = named_at.get(a.as_str()).copied().unwrap_or(usize::MAX);
            found.push((pos, a.clone()));
        }
    }
    // Else the returned copy's To (not a list's), else its envelope recipient.
    if found.is_empty() {
        for a in original.to.iter() {
            if !ours(a) {
                found.push((usize::MAX, a.clone()));
            }
        }
    }
    if found.is_empty() {
        if let Some(a) = original.received_for.as_deref().filter(|a| !ours(a)) {
            found.push((usize::MAX, a.to_string()));
        }
    }
    found.sort_by_key(|(pos, _)| *pos);
    found.truncate(MAX_RECIPIENTS);

    let hints = text_hints(region);
    let global_code = first_enhanced_code(region);
    let global_basic = basic_code(region);
    let mut failures = Vec::new();
    for (k, (pos, addr)) in found.iter().enumerate() {
        // The text after a recipient, up to the next one, holds its own error.
        let seg = if *pos == usize::MAX {
            ""
        } else {
            let end = found
                .get(k + 1)
                .map_or(region.len(), |(p, _)| (*p).min(region.len()));
            region.get(*pos..end.max(*pos)).unwrap_or("")
        };
        // A code outside every recipient's own text applies only when there is one recipient.
        let single = found.len() == 1;
        let code = first_enhanced_code(seg).or_else(|| global_code.clone().filter(|_| single));
        let basic = basic_code(seg).or(global_basic.filter(|_| single));
        let class = code.as_ref().map(|c| c.class).or(basic.map(|b| b / 100));
        let action = if hints.retry && !hints.gave_up && class != Some(5) && !hints.perm {
            Action::Delayed
        } else {
            Action::Failed
        };
        // The recipient's own words first; the whole notice's when it names one.
        let mut reason = reason_for(code.as_ref(), seg);
        if reason == BounceReason::Unknown {
            // The notice's general words apply to every recipient; its code only
            // when it names one.
            reason = reason_for(global_code.as_ref().filter(|_| single), region);
        }
        let permanent = match action {
            Action::Delayed => Some(false),
            Action::Failed => decide_permanence(code.as_ref(), basic, reason).or(hints.permanent()),
        };
        failures.push(RecipientStatus {
            recipient: addr.clone(),
            action,
            status: code.map(|c| c.text),
            permanent,
            reason,
            diagnostic: None,
        });
    }
    c.mta = Some(mta_family(&[region, subject_low, from]));
    let no_recipient = failures.is_empty();
    finish_bounce(c, original, failures, &format!("{label} bounce text"));
    if no_recipient {
        // Nobody named, but the notice still says why and whether for good: the
        // caller matches it by the returned Message-ID.
        let reason = reason_for(global_code.as_ref(), region);
        c.bounce_reason = Some(reason);
        c.permanent =
            decide_permanence(global_code.as_ref(), global_basic, reason).or(hints.permanent());
    }
    true
}

/// A sender that is a mail system by its address or display name: MAILER-DAEMON,
/// postmaster, MDaemon, "Mail Delivery System", "System Administrator"...
fn mail_system_sender(msg: &Message<'_>, from: &str) -> bool {
    let local = from.split('@').next().unwrap_or("");
    let squashed: String = local
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .collect();
    if squashed.starts_with("mailerdaemon")
        || squashed.contains("postmaster")
        || squashed == "mdaemon"
        || squashed.contains("maildelivery")
        || squashed.contains("smtpmailservice")
    {
        return true;
    }
    let name = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.name())
        .map(lower)
        .unwrap_or_default();
    // mail-parser gives no address for some old From lines; the raw header still
    // names the mail system, and so may the envelope sender.
    let raw_says = |h: &str| {
        msg.header_raw(h).is_some_and(|v| {
            let v = lower(v);
            v.contains("mailer-daemon") || v.contains("postmaster")
        })
    };
    if (from.is_empty() && raw_says("From")) || raw_says("Return-Path") {
        return true;
    }
    [
        "mail delivery",
        "postmaster",
        "mailer-daemon",
        "system administrator",
        "delivery subsystem",
        "mail system",
        "mailserver",
    ]
    .iter()
    .any(|w| name.contains(w))
        || local.contains("postmaster")
}

pub(super) fn is_system_address(a: &str) -> bool {
    let local = a.split('@').next().unwrap_or("");
    local.starts_with("mailer-daemon")
        || local.starts_with("postmaster")
        || local == "mailerdaemon"
        || is_noreply(a)
}

/// Senders that never read replies: notifications, newsletters.
pub(super) fn is_noreply(addr: &str) -> bool {
    let local = addr.split('@').next().unwrap_or("");
    let squashed: String = local
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .collect();
    squashed.contains("noreply")
        || squashed.contains("donotreply")
        || matches!(
            local,
            "notifications" | "notification" | "newsletter" | "newsletters" | "mailer"
        )
}
