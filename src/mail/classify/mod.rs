//! Classifying inbound mail: raw RFC 5322 bytes in, a [`Classification`] out.
//!
//! This module owns the decision "what is this message?" for the watcher and for
//! `followup classify`: a human reply (and what it asks for), an automatic reply
//! (and when the person is back), a bounce (which addresses failed, and whether for
//! good), a feedback-loop complaint, or something unrelated (newsletters, lists,
//! notifications). It is pure: no I/O, no clock, no async; the same bytes always give
//! the same answer, and every answer carries a `reason` a person can read.
//!
//! The order of the checks is the order of trust:
//! 1. machine-readable reports: ARF (RFC 5965) and DSN (RFC 3464) `multipart/report`s;
//! 2. bounces in the vendors' own text formats (Exim, qmail, Yahoo, Chinese providers...),
//!    accepted only when the sender looks like a mail system *and* the text says so;
//! 3. auto-reply headers (RFC 3834 `Auto-Submitted`, `X-Autoreply`, ...), then list and
//!    newsletter headers (RFC 2369, RFC 2919), then weaker auto-reply signs (Exchange's
//!    `X-Auto-Response-Suppress`, responder `X-Mailer`s, out-of-office subjects);
//! 4. otherwise a human reply, whose intent is read from the new text only (the quoted
//!    original stripped by [`new_text`]).
//!
//! Mistakes are not symmetric: taking a human reply for an auto-reply pauses a sequence
//! that should have stopped, and a follow-up sent after a reply is the worst bug this
//! product can have. So the body-only out-of-office guess is deliberately strict, and a
//! reply that asks to be removed or declines is never taken for an auto-reply on body
//! text alone.
//!
//! Known limits (each a deliberate trade, see the functions for details):
//! - Intent is keyword-based. Negation is checked for English only ("I'm not
//!   unsubscribing", "don't remove me"); "nicht abmelden" still reads as unsubscribe.
//! - A human reply that states two out-of-office phrases, asks nothing and stays
//!   short ("On leave until 8 Dec, will be back then.") is taken for an auto-reply;
//!   an auto-reply without headers, telling subject or two such phrases is a reply.
//! - Text bounces without a status code get `permanent` from their words; one that
//!   says neither is `None`, which the engine treats as soft.
//! - `List-Unsubscribe` without `Precedence` on a threaded message is a reply (sales
//!   tools add it to one-to-one mail); `List-Id` always means list mail.
//! - Return dates: weekdays alone ("back on Monday") are not read; ambiguous "a/b"
//!   needs a return word nearby; year-less dates need a received date (the `Date:`
//!   header, or [`classify_at`]).
//! - Only the first 16 KB of a bounce's text and 2 KB of an auto-reply's new text are
//!   searched for phrases.
//!
//! Speed: the issue asks for 5,000 typical 20 KB messages a second on one core. Keyword
//! lists are matched in one pass per text by [`Lexicon`] (first-byte dispatch, no regex),
//! texts are lower-cased once, and only small windows are scanned: the new text of a
//! reply (which stops at the first quote header), the human-readable part of a bounce
//! (which stops where the returned copy begins), subjects and header values.

//!
//! Layout: [`dsn`] reads machine-readable reports, [`bounce_text`] bounces in prose,
//! [`reasons`] names why a delivery failed (a fixed [`BounceReason`]) and which mail
//! system said so ([`MtaFamily`]),
//! [`auto_reply`] responders and list mail, [`intent`] what a reply asks for, [`quote`]
//! the new text of a reply, [`dates`] return dates; [`words`] holds the phrase lists
//! and [`lexicon`] matches them; [`headers`] and [`scan`] are shared helpers.

mod auto_reply;
mod bounce_text;
mod dates;
mod dsn;
mod headers;
mod intent;
mod lexicon;
pub mod limits;
mod quote;
mod reasons;
mod scan;
mod words;

use chrono::{DateTime, FixedOffset, NaiveDate};
use mail_parser::MessageParser;

pub use dates::return_date;
pub use quote::new_text;
pub use reasons::{BounceReason, MtaFamily};

use auto_reply::{
    auto_reply, auto_reply_header, auto_reply_weak_header, finish_auto_reply, list_mail,
    out_of_office_body, out_of_office_subject,
};
use bounce_text::{is_noreply, looks_like_bounce};
use dsn::{complaint, dsn_bounce, find_report, Report};
use headers::{bracket_id, message_ids, to_chrono, Head};
use intent::read_intent;
use limits::{bounded_input, Unique, MAX_HEADER_BYTES, MAX_REFERENCES};
use quote::{main_text, snippet};
use scan::{cap, lower};

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

/// What a message is, as far as follow-up sequences care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Written by a person (the caller decides whether it matches an enrollment).
    Reply,
    /// An automatic response: out of office, vacation, ticket acknowledgement.
    AutoReply,
    /// A delivery failure or delay report.
    Bounce,
    /// A feedback-loop complaint (RFC 5965): treat as an unsubscribe of `recipients`.
    Complaint,
    /// Newsletters, mailing lists, notifications, success DSNs: nothing to do.
    Unrelated,
}

impl Kind {
    /// The serialized name (`reply`, `auto_reply`, ...), for logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reply => "reply",
            Kind::AutoReply => "auto_reply",
            Kind::Bounce => "bounce",
            Kind::Complaint => "complaint",
            Kind::Unrelated => "unrelated",
        }
    }
}

/// What a human reply asks for, read from its new text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Anything else: stop the sequence with reason `replied`.
    Reply,
    /// "Remove me", "unsubscribe", "不要再发": suppress the address.
    Unsubscribe,
    /// "Not interested", "no thanks": stop with reason `declined`.
    Declined,
}

impl Intent {
    /// The serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Reply => "reply",
            Intent::Unsubscribe => "unsubscribe",
            Intent::Declined => "declined",
        }
    }
}

/// What a delivery report says happened to one recipient (RFC 3464 §2.3.3 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The MTA gave up: a final failure for this message (permanent or not).
    Failed,
    /// A warning: delivery is still being retried.
    Delayed,
}

/// One failed or delayed recipient of a bounce.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecipientStatus {
    /// The address we sent to (Original-Recipient when given, else Final-Recipient), lower-cased.
    pub recipient: String,
    /// Failed or delayed.
    pub action: Action,
    /// Enhanced status code (RFC 3463) such as "5.1.1", when known.
    pub status: Option<String>,
    /// true: the address will not work (5.x.x other than 5.2.2, or text that says so);
    /// false: worth trying again later (4.x.x, mailbox full, delays, gave up after retries).
    pub permanent: Option<bool>,
    /// Why it failed, from a fixed list (status code first, then the words).
    pub reason: BounceReason,
    /// The remote server's words (RFC 3464 §2.3.6 Diagnostic-Code), shortened.
    pub diagnostic: Option<String>,
}

/// The verdict on one message. Serialized as the JSON of `followup classify --json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Classification {
    /// reply | auto_reply | bounce | complaint | unrelated.
    pub kind: Kind,
    /// Replies only: reply | unsubscribe | declined.
    pub intent: Option<Intent>,
    /// Bounces: failed (or delayed) addresses; complaints: the complaining address. Lower-cased.
    pub recipients: Vec<String>,
    /// Bounces: true when any recipient failed for good; false when every failure is
    /// temporary (delays, 4.x.x, gave up after retries, mailbox full); None when unknown.
    pub permanent: Option<bool>,
    /// Bounces: the enhanced status code (RFC 3463), the permanent one first.
    pub status: Option<String>,
    /// Bounces: why, from a fixed list: that of the first permanent failure, else of
    /// the first failure (`user_unknown`, `mailbox_full`, ... `unknown`).
    pub bounce_reason: Option<BounceReason>,
    /// Bounces: the family of the mail system that wrote the notice, when recognised.
    pub mta: Option<MtaFamily>,
    /// Auto-replies: the date the person says they are back (or away until), when readable.
    pub return_date: Option<NaiveDate>,
    /// Message-IDs this message refers to, "<id@host>": for bounces and complaints the
    /// returned original's first, then In-Reply-To, then References.
    pub references: Vec<String>,
    /// Its own Message-ID, "<id@host>".
    pub message_id: Option<String>,
    /// Sender address (From), lower-cased.
    pub from: Option<String>,
    /// Subject, decoded (RFC 2047).
    pub subject: Option<String>,
    /// Date header, as written by the sender.
    pub date: Option<DateTime<FixedOffset>>,
    /// Replies and auto-replies: the first ~200 characters of the new text, whitespace collapsed.
    pub snippet: Option<String>,
    /// Bounces: one entry per failed or delayed recipient.
    pub failures: Vec<RecipientStatus>,
    /// Complaints: the ARF Feedback-Type (RFC 5965 §3), e.g. "abuse".
    pub feedback_type: Option<String>,
    /// A short human explanation of the decision.
    pub reason: String,
}

impl Classification {
    fn new(kind: Kind, reason: impl Into<String>) -> Self {
        Classification {
            kind,
            intent: None,
            recipients: Vec::new(),
            permanent: None,
            status: None,
            bounce_reason: None,
            mta: None,
            return_date: None,
            references: Vec::new(),
            message_id: None,
            from: None,
            subject: None,
            date: None,
            snippet: None,
            failures: Vec::new(),
            feedback_type: None,
            reason: reason.into(),
        }
    }
}

/// Classifies one raw message (as fetched over IMAP, CRLF or LF).
///
/// Year-less return dates in auto-replies are read relative to the message's own
/// `Date:` header; use [`classify_at`] when the arrival date is known.
pub fn classify(raw: &[u8]) -> Classification {
    classify_inner(raw, None)
}

/// Like [`classify`], with the date the message arrived (IMAP INTERNALDATE), which
/// anchors year-less return dates ("back on 3 December") instead of the `Date:` header.
pub fn classify_at(raw: &[u8], received: NaiveDate) -> Classification {
    classify_inner(raw, Some(received))
}

fn classify_inner(raw: &[u8], received: Option<NaiveDate>) -> Classification {
    let input = bounded_input(raw);
    let parsed = MessageParser::new().parse(input.as_ref());
    let Some(msg) = parsed.filter(|m| !m.parts.is_empty()) else {
        return Classification::new(Kind::Unrelated, "no header section: not a mail message");
    };
    let head = Head::read(&msg);
    let mut c = Classification::new(Kind::Reply, String::new());
    c.message_id = msg.message_id().and_then(bracket_id);
    c.from = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase());
    c.subject = msg
        .subject()
        .map(|s| cap(s.trim(), MAX_HEADER_BYTES).to_string());
    c.date = msg.date().and_then(to_chrono);
    let mut refs = Unique::new(MAX_REFERENCES);
    refs.extend(message_ids(msg.in_reply_to()));
    refs.extend(message_ids(msg.references()));
    c.references = refs.into_vec();
    let received = received.or_else(|| c.date.map(|d| d.date_naive()));
    let subject_low = lower(c.subject.as_deref().unwrap_or(""));

    // 1. Machine-readable reports (RFC 6522 multipart/report and its parts).
    if let Some(report) = find_report(&msg) {
        match report {
            Report::Feedback(text) => {
                complaint(&msg, &text, &mut c);
                return c;
            }
            Report::Delivery(text) => {
                if dsn_bounce(&msg, &text, &mut c) {
                    return c;
                }
            }
        }
    }

    // 2. Bounces in vendors' own text.
    if looks_like_bounce(&msg, &head, &subject_low, &mut c) {
        return c;
    }

    // 3. Auto-replies and list mail, headers first. The new text is computed only on
    // the paths that use it: list mail, the bulk of a mailbox, never needs it.
    if let Some(reason) = auto_reply_header(&head) {
        return auto_reply(&msg, c, reason, &subject_low, received);
    }
    if let Some(reason) = list_mail(&head, !c.references.is_empty()) {
        c.kind = Kind::Unrelated;
        c.reason = reason;
        return c;
    }
    if let Some(reason) = auto_reply_weak_header(&msg, &head) {
        return auto_reply(&msg, c, reason, &subject_low, received);
    }
    if let Some(reason) = out_of_office_subject(c.subject.as_deref().unwrap_or(""), &subject_low) {
        return auto_reply(&msg, c, reason, &subject_low, received);
    }
    if let Some(from) = c.from.as_deref() {
        if is_noreply(from) {
            c.kind = Kind::Unrelated;
            c.reason = format!("no-reply sender {from}: a notification, not a person");
            return c;
        }
    }
    if let Some(p) = head.precedence.as_deref() {
        // RFC 3834 §3: responders may send "Precedence: bulk|junk"; so do bulk
        // senders. Only a response (threaded, or a reply-style subject) counts as one.
        let responds = !c.references.is_empty()
            || subject_low.starts_with("re:")
            || subject_low.starts_with("auto:");
        if matches!(p, "bulk" | "junk") && responds {
            let reason = format!("Precedence: {p} on a response without List-* headers");
            return auto_reply(&msg, c, reason, &subject_low, received);
        }
        if matches!(p, "bulk" | "junk" | "list") {
            c.kind = Kind::Unrelated;
            c.reason = format!("Precedence: {p} and not a response: bulk mail");
            return c;
        }
    }

    // 4. A person wrote it. What do they ask for?
    let fresh = new_text(&main_text(&msg, true));
    let fresh_low = lower(&fresh);
    let mut intent = read_intent(&fresh, &fresh_low);
    // A `List-Unsubscribe: <mailto:...?subject=unsubscribe>` followed by a mail client
    // sends a new message whose subject is the word and whose body is empty or says
    // nothing else: that is a request to be removed, not a conversation.
    if intent.is_none() {
        let subj = subject_low.trim().trim_end_matches(['.', '!']);
        if matches!(
            subj,
            "unsubscribe" | "退订" | "abmelden" | "remove" | "remove me"
        ) {
            intent = Some((
                Intent::Unsubscribe,
                format!("Subject: {}", subject_low.trim()),
            ));
        }
    }
    if intent.is_none() {
        if let Some(reason) = out_of_office_body(&fresh_low) {
            return finish_auto_reply(c, reason, &subject_low, &fresh, &fresh_low, received);
        }
    }
    c.kind = Kind::Reply;
    c.snippet = snippet(&fresh);
    let threading = if c.references.is_empty() {
        "no In-Reply-To or References: the caller matches by sender"
    } else {
        "threaded"
    };
    match intent {
        Some((Intent::Unsubscribe, said)) => {
            c.intent = Some(Intent::Unsubscribe);
            c.reason = format!("reply: asks to be removed ('{said}')");
        }
        Some((Intent::Declined, said)) => {
            c.intent = Some(Intent::Declined);
            c.reason = format!("reply: declines ('{said}')");
        }
        _ => {
            c.intent = Some(Intent::Reply);
            c.reason = format!("reply from a person ({threading})");
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn not_a_message() {
        assert_eq!(classify(b"").kind, Kind::Unrelated);
        let c = classify(b"garbage without headers");
        assert!(matches!(c.kind, Kind::Unrelated | Kind::Reply));
    }

    // Golden corpus: tests/fixtures/classify/NAME.eml against NAME.json. Each key of
    // the JSON is compared with the same key of the serialized Classification, except
    // "reason_contains" (a substring of `reason`). Every fixture runs twice, with LF
    // and with CRLF line ends (IMAP gives CRLF). A mismatch writes NAME.failed.json.
    fn fixtures_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify")
    }

    fn with_line_ends(raw: &[u8], crlf: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
        for (i, &b) in raw.iter().enumerate() {
            if b == b'\r' && raw.get(i + 1) == Some(&b'\n') {
                continue;
            }
            if b == b'\n' && crlf {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    }

    /// Truncated and mangled fixtures: whatever arrives, classify answers.
    #[test]
    fn never_panics_on_broken_input() {
        let dir = fixtures_dir();
        let mut ran = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "eml") {
                continue;
            }
            let raw = std::fs::read(&path).unwrap_or_default();
            let step = raw.len() / 24 + 1;
            for cut in (0..raw.len()).step_by(step) {
                let _ = classify(&raw[..cut]);
            }
            let mangled: Vec<u8> = raw
                .iter()
                .enumerate()
                .map(|(i, &b)| if i % 7 == 3 { 0xFF } else { b })
                .collect();
            let _ = classify(&mangled);
            ran += 1;
        }
        assert!(ran > 0);
    }

    #[test]
    fn golden_fixtures() {
        let dir = fixtures_dir();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        let mut ran = 0;
        let mut failed = Vec::new();
        for eml in names {
            let json = eml.with_extension("json");
            let failed_path = eml.with_extension("failed.json");
            let raw = std::fs::read(&eml).unwrap_or_else(|e| panic!("{}: {e}", eml.display()));
            let expected: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display())),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", json.display()));
            let serde_json::Value::Object(expected) = expected else {
                panic!("{}: expected a JSON object", json.display());
            };
            let mut mismatches = Vec::new();
            let mut actual_json = serde_json::Value::Null;
            for crlf in [false, true] {
                let actual = classify(&with_line_ends(&raw, crlf));
                let actual = serde_json::to_value(&actual).unwrap_or_default();
                for (key, want) in &expected {
                    if key == "reason_contains" {
                        let reason = actual["reason"].as_str().unwrap_or("");
                        if !want.as_str().is_some_and(|w| reason.contains(w)) {
                            mismatches.push(format!(
                                "{}: reason {reason:?} lacks {want}",
                                if crlf { "CRLF" } else { "LF" }
                            ));
                        }
                    } else if actual.get(key) != Some(want) {
                        mismatches.push(format!(
                            "{}: {key}: expected {want}, got {}",
                            if crlf { "CRLF" } else { "LF" },
                            actual.get(key).cloned().unwrap_or_default()
                        ));
                    }
                }
                actual_json = actual;
            }
            if mismatches.is_empty() {
                let _ = std::fs::remove_file(&failed_path);
            } else {
                let report = serde_json::json!({ "mismatches": mismatches, "actual": actual_json });
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                let _ = std::fs::write(&failed_path, text);
                failed.push(format!("{}: {}", eml.display(), mismatches.join("; ")));
            }
            ran += 1;
        }
        assert!(ran > 0, "no fixtures found in {}", dir.display());
        assert!(
            failed.is_empty(),
            "{} of {ran} fixtures failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
}
