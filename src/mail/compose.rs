//! Builds the RFC 5322 message for one step: From the mailbox, To the contact, a
//! Message-ID at the sender's domain, a Date, multipart/alternative text and HTML, and
//! for threaded steps `Re: ` + the first subject with In-Reply-To and References.
//!
//! Every header goes through lettre's typed API, which encodes (RFC 2047) and folds:
//! nothing a contact's fields hold — CR, LF, quotes, non-ASCII — can add a header.
//! The two headers that carry contact data, Subject and To, are encoded here with the
//! same encoder and two rules more: a word that looks like an encoded-word (`=?…?=`)
//! is encoded again, so that a field cannot make a mail client show text it decoded
//! from something else, and a word too long to fold is encoded too, which splits it,
//! so that no header line passes 998 octets (RFC 5322 §2.1.1).

use std::fmt::Write as _;
use std::time::SystemTime;

use email_encoding::headers::writer::EmailWriter;
use lettre::address::Envelope;
use lettre::message::{header, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use sha2::{Digest, Sha256};

use super::body;
use crate::template::Rendered;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid recipient address '{0}': {1}")]
    Address(String, String),
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// The thread a follow-up belongs to: the first mail's Message-ID and subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub root_message_id: String,
    pub root_subject: String,
    /// Every message of the thread sent so far, oldest first (the root among them);
    /// empty when only the root is known.
    pub earlier: Vec<String>,
}

/// The most Message-IDs a `References` field lists: the root and the latest ones, as
/// RFC 5322 §3.6.4 allows trimming, so that the field stays far below 998 octets.
const MAX_REFERENCES: usize = 10;

impl Thread {
    /// `In-Reply-To`: the latest message of the thread.
    pub fn in_reply_to(&self) -> &str {
        self.earlier
            .last()
            .map_or(self.root_message_id.as_str(), String::as_str)
    }

    /// `References`: the root, then the latest messages, oldest first.
    pub fn references(&self) -> String {
        let mut ids: Vec<&str> = vec![self.root_message_id.as_str()];
        let rest: Vec<&str> = self
            .earlier
            .iter()
            .map(String::as_str)
            .filter(|id| *id != self.root_message_id)
            .collect();
        let skip = rest.len().saturating_sub(MAX_REFERENCES - 1);
        ids.extend(&rest[skip..]);
        ids.join(" ")
    }
}

/// What one outbound mail is made of.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    pub from: &'a Mailbox,
    pub to_email: &'a str,
    pub to_name: Option<&'a str>,
    pub message_id: &'a str,
    pub date: SystemTime,
    pub rendered: &'a Rendered,
    pub thread: Option<&'a Thread>,
    /// `List-Unsubscribe` value (`<https://...>, <mailto:...>`); with an https URL, the
    /// RFC 8058 `List-Unsubscribe-Post` goes with it.
    pub list_unsubscribe: Option<&'a str>,
}

/// RFC 2369 `List-Unsubscribe`. Its value is built by us from the public URL (checked
/// at config load) and a token in base64url: nothing a contact controls.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl header::Header for ListUnsubscribe {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }
    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// RFC 8058: the mail provider may POST `List-Unsubscribe=One-Click` to the https URL.
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl header::Header for ListUnsubscribePost {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }
    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_string())
    }
}

/// Longest word written as it is; longer ones are RFC 2047-encoded, which splits them
/// over lines. RFC 2047 §2 keeps encoded-words to 75 characters likewise.
const MAX_PLAIN_WORD: usize = 76;

/// Subject and To, encoded by [`encode_text`] and [`encode_mailbox`].
#[derive(Debug, Clone)]
struct Encoded {
    raw: String,
    encoded: String,
}

impl Encoded {
    fn subject(text: &str) -> Encoded {
        Encoded {
            raw: text.to_string(),
            encoded: encode_text("Subject", text),
        }
    }

    fn to(name: Option<&str>, address: &Address) -> Encoded {
        Encoded {
            raw: match name {
                Some(n) => format!("{n} <{address}>"),
                None => address.to_string(),
            },
            encoded: encode_mailbox("To", name, address),
        }
    }
}

/// A header type per name: lettre keys headers by type.
macro_rules! encoded_header {
    ($ty:ident, $name:literal) => {
        #[derive(Debug, Clone)]
        struct $ty(Encoded);

        impl header::Header for $ty {
            fn name() -> header::HeaderName {
                header::HeaderName::new_from_ascii_str($name)
            }
            fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                Ok($ty(Encoded {
                    raw: s.to_string(),
                    encoded: encode_text($name, s),
                }))
            }
            fn display(&self) -> header::HeaderValue {
                // Encoded and folded by `encode_text` / `encode_mailbox`: printable
                // ASCII only, and every line break is a fold.
                header::HeaderValue::dangerous_new_pre_encoded(
                    Self::name(),
                    self.0.raw.clone(),
                    self.0.encoded.clone(),
                )
            }
        }
    };
}
encoded_header!(SubjectHeader, "Subject");
encoded_header!(ToHeader, "To");

/// Whether a word may be written as it is: printable ASCII, short enough to fold
/// around, and not something a reader would decode as an encoded-word.
fn plain_word(w: &str) -> bool {
    let w = w.trim_end_matches(' ');
    w.len() <= MAX_PLAIN_WORD && w.bytes().all(|b| (0x21..0x7f).contains(&b)) && !w.contains("=?")
}

/// An unstructured header value (RFC 5322 §3.2.5): plain words as they are, folded at
/// spaces; runs of other words RFC 2047-encoded. Control characters never get here
/// (subjects are one line) but would be encoded, not written.
fn encode_text(name: &str, value: &str) -> String {
    encode_with(name, |w| {
        let mut pending = String::new();
        for word in value.split_inclusive(' ') {
            if plain_word(word) {
                flush_encoded(w, &mut pending)?;
                w.folding().write_str(word)?;
            } else {
                pending.push_str(word);
            }
        }
        flush_encoded(w, &mut pending)
    })
}

/// Writes the words gathered in `pending` as encoded-words, keeping trailing spaces.
fn flush_encoded(w: &mut EmailWriter<'_>, pending: &mut String) -> std::fmt::Result {
    if pending.is_empty() {
        return Ok(());
    }
    let text = pending.trim_end_matches(' ');
    email_encoding::headers::rfc2047::encode(text, w)?;
    for _ in 0..pending.len() - text.len() {
        w.space();
    }
    pending.clear();
    Ok(())
}

/// `Name <address>`. A short name of plain words is written (quoted if need be) as
/// lettre would; any other, encoded.
fn encode_mailbox(header: &str, name: Option<&str>, address: &Address) -> String {
    encode_with(header, |w| {
        if let Some(name) = name {
            if name.len() <= MAX_PLAIN_WORD && name.split(' ').all(plain_word) {
                email_encoding::headers::quoted_string::encode(name, w)?;
            } else {
                email_encoding::headers::rfc2047::encode(name, w)?;
            }
            w.space();
            w.folding().write_char('<')?;
            w.write_str(address.as_ref())?;
            w.write_char('>')
        } else {
            w.folding().write_str(address.as_ref())
        }
    })
}

/// A header value written by `write` after `NAME: `.
fn encode_with(
    header: &str,
    write: impl FnOnce(&mut EmailWriter<'_>) -> std::fmt::Result,
) -> String {
    let mut out = String::new();
    {
        let mut w = EmailWriter::new(&mut out, header.len() + 2, 0, false);
        // Writing to a String cannot fail; the encoders' Result is for other writers.
        let _ = write(&mut w);
    }
    out
}

/// A fresh Message-ID at `domain`: time plus 64 random bits, so two daemons never
/// collide and nothing about the contact leaks into it.
pub fn new_message_id(domain: &str) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("<{ts:x}.{:016x}@{domain}>", fastrand::u64(..))
}

/// The subject a step goes out with: threaded steps reply to the first subject.
pub fn subject_for(rendered_subject: &str, thread: Option<&Thread>) -> String {
    match thread {
        Some(t) => {
            let s = t.root_subject.trim();
            // `get`: a subject in Cyrillic or Greek has no char boundary at byte 3.
            if s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:")) {
                s.to_string()
            } else {
                format!("Re: {s}")
            }
        }
        None => rendered_subject.to_string(),
    }
}

/// A hash of what the contact reads (subject, text, HTML), stored with the message so
/// that what was sent can be compared with what a template renders now.
pub fn content_hash(subject: &str, r: &Rendered) -> String {
    let mut h = Sha256::new();
    for part in [subject, &r.text, &r.html] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A display name safe to put in a header: control characters (CR, LF, tabs) dropped,
/// whitespace collapsed. lettre quotes and encodes the rest.
fn clean_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Builds the message.
pub fn compose(d: &Draft<'_>) -> Result<Message, Error> {
    let to_addr: Address = d
        .to_email
        .parse()
        .map_err(|e: lettre::address::AddressError| {
            Error::Address(d.to_email.to_string(), e.to_string())
        })?;
    let to_name = d.to_name.and_then(clean_name);
    let envelope = Envelope::new(Some(d.from.email.clone()), vec![to_addr.clone()])
        .map_err(|e| Error::Build(e.to_string()))?;
    let mut b = Message::builder()
        .from(d.from.clone())
        .header(ToHeader(Encoded::to(to_name.as_deref(), &to_addr)))
        .envelope(envelope)
        .header(SubjectHeader(Encoded::subject(&subject_for(
            &d.rendered.subject,
            d.thread,
        ))))
        .message_id(Some(d.message_id.to_string()))
        .date(d.date);
    if let Some(t) = d.thread {
        b = b
            .in_reply_to(t.in_reply_to().to_string())
            .references(t.references());
    }
    if let Some(v) = d.list_unsubscribe {
        // Defence in depth: the value is ours, but a header line never carries CR/LF.
        if v.chars().any(char::is_control) {
            return Err(Error::Build(
                "List-Unsubscribe holds a control character".into(),
            ));
        }
        b = b.header(ListUnsubscribe(v.to_string()));
        if v.contains("<https://") || v.contains("<http://") {
            b = b.header(ListUnsubscribePost);
        }
    }
    b.header(header::MIME_VERSION_1_0)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(header::ContentType::TEXT_PLAIN)
                        .body(body::text_body(&d.rendered.text)),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(header::ContentType::TEXT_HTML)
                        .body(body::text_body(&d.rendered.html)),
                ),
        )
        .map_err(|e| Error::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(subject: &str) -> Rendered {
        Rendered {
            subject: subject.into(),
            text: "Hello\n".into(),
            html: "<p>Hello</p>".into(),
        }
    }

    fn raw(d: &Draft<'_>) -> String {
        String::from_utf8(compose(d).unwrap().formatted()).unwrap()
    }

    fn headers(raw: &str) -> Vec<&str> {
        raw.split("\r\n\r\n")
            .next()
            .unwrap()
            .split("\r\n")
            .collect()
    }

    #[test]
    fn threaded_subjects_in_any_script() {
        let t = |root: &str| Thread {
            root_message_id: "<a@b>".into(),
            root_subject: root.into(),
            earlier: Vec::new(),
        };
        assert_eq!(subject_for("x", Some(&t("Привет"))), "Re: Привет");
        assert_eq!(subject_for("x", Some(&t("ÄÖÜ"))), "Re: ÄÖÜ");
        assert_eq!(subject_for("x", Some(&t("RE: Angebot"))), "RE: Angebot");
        assert_eq!(subject_for("x", Some(&t("报价"))), "Re: 报价");
    }

    #[test]
    fn first_step_has_ids_and_both_parts() {
        let from: Mailbox = "Iris Zhang <iris@example.com>".parse().unwrap();
        let r = rendered("Quick question");
        let raw = raw(&Draft {
            from: &from,
            to_email: "li@example.cn",
            to_name: Some("李雷"),
            message_id: "<1.2@example.com>",
            date: SystemTime::UNIX_EPOCH,
            rendered: &r,
            thread: None,
            list_unsubscribe: None,
        });
        let h = headers(&raw);
        assert!(h.contains(&"Message-ID: <1.2@example.com>"), "{raw}");
        assert!(
            h.contains(&"Date: Thu, 01 Jan 1970 00:00:00 +0000"),
            "{raw}"
        );
        assert!(
            h.contains(&"To: =?utf-8?b?5p2O6Zu3?= <li@example.cn>"),
            "{raw}"
        );
        assert!(raw.contains("Content-Type: multipart/alternative"), "{raw}");
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Type: text/html; charset=utf-8"),
            "{raw}"
        );
        assert!(!raw.contains("In-Reply-To"), "{raw}");
    }

    #[test]
    fn threaded_step_replies_to_the_first() {
        let from: Mailbox = "iris@example.com".parse().unwrap();
        let r = rendered("ignored for threads");
        let t = Thread {
            root_message_id: "<root@example.com>".into(),
            root_subject: "Quick question".into(),
            earlier: Vec::new(),
        };
        let raw = raw(&Draft {
            from: &from,
            to_email: "li@example.cn",
            to_name: None,
            message_id: "<2@example.com>",
            date: SystemTime::UNIX_EPOCH,
            rendered: &r,
            thread: Some(&t),
            list_unsubscribe: None,
        });
        let h = headers(&raw);
        assert!(h.contains(&"Subject: Re: Quick question"), "{raw}");
        assert!(h.contains(&"In-Reply-To: <root@example.com>"), "{raw}");
        assert!(h.contains(&"References: <root@example.com>"), "{raw}");
        assert_eq!(
            subject_for(
                "x",
                Some(&Thread {
                    root_message_id: String::new(),
                    root_subject: "RE: hi".into(),
                    earlier: Vec::new(),
                })
            ),
            "RE: hi"
        );
    }

    #[test]
    fn a_later_step_refers_to_every_earlier_message_and_replies_to_the_latest() {
        let from: Mailbox = "iris@example.com".parse().unwrap();
        let r = rendered("ignored for threads");
        let t = Thread {
            root_message_id: "<1@example.com>".into(),
            root_subject: "Quick question".into(),
            earlier: vec!["<1@example.com>".into(), "<2@example.com>".into()],
        };
        let raw = raw(&Draft {
            from: &from,
            to_email: "li@example.cn",
            to_name: None,
            message_id: "<3@example.com>",
            date: SystemTime::UNIX_EPOCH,
            rendered: &r,
            thread: Some(&t),
            list_unsubscribe: None,
        });
        let h = headers(&raw);
        assert!(h.contains(&"In-Reply-To: <2@example.com>"), "{raw}");
        assert!(
            h.contains(&"References: <1@example.com> <2@example.com>"),
            "{raw}"
        );
        // A long thread keeps the root and the latest nine.
        let long = Thread {
            earlier: (1..=30).map(|i| format!("<{i}@example.com>")).collect(),
            ..t
        };
        let refs = long.references();
        let ids: Vec<&str> = refs.split(' ').collect();
        assert_eq!(ids.len(), MAX_REFERENCES);
        assert_eq!(ids[0], "<1@example.com>");
        assert_eq!(ids[1], "<22@example.com>");
        assert_eq!(ids[9], "<30@example.com>");
        assert_eq!(long.in_reply_to(), "<30@example.com>");
    }

    #[test]
    fn contact_data_cannot_inject_headers() {
        let from: Mailbox = "iris@example.com".parse().unwrap();
        let r = rendered("Hello\r\nBcc: victim@example.org");
        let raw = raw(&Draft {
            from: &from,
            to_email: "li@example.cn",
            to_name: Some("Li\r\nBcc: victim@example.org"),
            message_id: "<3@example.com>",
            date: SystemTime::UNIX_EPOCH,
            rendered: &r,
            thread: None,
            list_unsubscribe: None,
        });
        for line in headers(&raw) {
            assert!(!line.starts_with("Bcc:"), "injected header line in\n{raw}");
        }
        assert!(compose(&Draft {
            from: &from,
            to_email: "li@example.cn\r\nBcc: x@y.z",
            to_name: None,
            message_id: "<4@example.com>",
            date: SystemTime::UNIX_EPOCH,
            rendered: &r,
            thread: None,
            list_unsubscribe: None,
        })
        .is_err());
    }

    #[test]
    fn contact_fields_cannot_smuggle_encoded_words_or_overlong_lines() {
        let from: Mailbox = "iris@example.com".parse().unwrap();
        // "=?utf-8?b?UGF5IG5vdw==?=" decodes to "Pay now".
        let smuggled = "=?utf-8?b?UGF5IG5vdw==?=";
        let r = rendered(&format!("Hello {smuggled} {}", "x".repeat(3000)));
        let name = format!("{smuggled} {}", "名".repeat(1000));
        let raw = raw(&Draft {
            from: &from,
            to_email: "li@example.cn",
            to_name: Some(&name),
            message_id: "<6@example.com>",
            date: SystemTime::UNIX_EPOCH,
            rendered: &r,
            thread: None,
            list_unsubscribe: None,
        });
        let head = raw.split("\r\n\r\n").next().unwrap();
        assert!(!head.contains(smuggled), "passed raw:\n{head}");
        for line in head.split("\r\n") {
            assert!(line.len() <= 998, "{} octets: {}", line.len(), &line[..80]);
        }
        // What a reader decodes is the text the field held, encoded-word and all.
        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(parsed.subject(), Some(r.subject.as_str()));
        let to = parsed.to().and_then(|a| a.first()).unwrap();
        assert_eq!(to.name(), Some(name.as_str()));
        assert_eq!(to.address(), Some("li@example.cn"));
    }

    #[test]
    fn one_click_headers() {
        let from: Mailbox = "iris@example.com".parse().unwrap();
        let r = rendered("Hello");
        let v = "<https://t.example.com/u/abc>, <mailto:iris@example.com?subject=unsubscribe>";
        let draft = |lu| Draft {
            from: &from,
            to_email: "li@example.cn",
            to_name: None,
            message_id: "<5@example.com>",
            date: SystemTime::UNIX_EPOCH,
            rendered: &r,
            thread: None,
            list_unsubscribe: lu,
        };
        // Folded at the comma as RFC 5322 allows; unfolded it is the value we gave.
        let raw = raw(&draft(Some(v))).replace("\r\n ", " ");
        let h = headers(&raw);
        assert!(
            h.contains(&format!("List-Unsubscribe: {v}").as_str()),
            "{raw}"
        );
        assert!(
            h.contains(&"List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{raw}"
        );
        // mailto only (no endpoint): no POST header, RFC 8058 needs https.
        let raw2 = super::tests::raw(&draft(Some(
            "<mailto:iris@example.com?subject=unsubscribe>",
        )));
        assert!(!raw2.contains("List-Unsubscribe-Post"), "{raw2}");
        assert!(compose(&draft(Some("<https://x>\r\nBcc: a@b.c"))).is_err());
    }

    #[test]
    fn message_ids_are_unique_and_at_the_domain() {
        let a = new_message_id("example.com");
        let b = new_message_id("example.com");
        assert_ne!(a, b);
        assert!(a.starts_with('<') && a.ends_with("@example.com>"), "{a}");
    }
}
