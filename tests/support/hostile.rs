//! Crafted hostile messages for the classifier: what anyone who can mail the watched
//! inbox could send. Shared by `tests/classify.rs` (which asserts the bounded answer)
//! and `benches/classify.rs` (which times each one).

#![allow(dead_code)] // the test and the bench use different parts

use std::fmt::Write;

/// One crafted message and what it is meant to break.
pub struct Case {
    pub name: &'static str,
    pub what: &'static str,
    pub raw: Vec<u8>,
}

const HEAD: &str = "From: Iris Zhang <iris@example.com>\r\n\
    Date: Mon, 1 Dec 2025 10:00:00 +0000\r\n\
    Message-ID: <hostile@example.com>\r\n\
    MIME-Version: 1.0\r\n";

/// The header of a reply to our "Intro", with room for `more` bytes after it.
fn reply_head(more: usize) -> String {
    let mut s = String::with_capacity(more + 1024);
    s.push_str(HEAD);
    s.push_str("To: bob@sales.example\r\nSubject: Re: Intro\r\n");
    s
}

/// A plain reply from a person: the baseline every case is compared with.
pub fn small_reply() -> Vec<u8> {
    format!(
        "{HEAD}To: bob@sales.example\r\nSubject: Re: Intro\r\n\
         In-Reply-To: <step1@sales.example>\r\nReferences: <step1@sales.example>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Tuesday works for me.\r\n\r\nOn Mon, Dec 1, 2025 Bob wrote:\r\n> Hi Iris\r\n"
    )
    .into_bytes()
}

/// 200,000 To addresses in one folded header (2.6 MB).
pub fn many_to(n: usize) -> Vec<u8> {
    let mut to = String::with_capacity(n * 14);
    for i in 0..n {
        if i > 0 {
            to.push_str(if i % 8 == 0 { ",\r\n " } else { ", " });
        }
        let _ = write!(to, "u{i}@e.co");
    }
    format!(
        "{HEAD}To: {to}\r\nSubject: Re: Intro\r\nIn-Reply-To: <step1@sales.example>\r\n\
         Content-Type: text/plain\r\n\r\nPlease remove me from your list.\r\n"
    )
    .into_bytes()
}

/// 200,000 Message-IDs in References (3.4 MB).
pub fn many_references(n: usize) -> Vec<u8> {
    let mut refs = String::with_capacity(n * 17);
    for i in 0..n {
        if i > 0 {
            refs.push_str("\r\n ");
        }
        let _ = write!(refs, "<r{i}@e.co>");
    }
    format!(
        "{HEAD}To: bob@sales.example\r\nSubject: Re: Intro\r\n\
         In-Reply-To: <step1@sales.example>\r\nReferences: {refs}\r\n\
         Content-Type: text/plain\r\n\r\nSounds good.\r\n"
    )
    .into_bytes()
}

const DSN_HEAD: &str = "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n\
    To: bob@sales.example\r\n\
    Subject: Undelivered Mail Returned to Sender\r\n\
    Date: Mon, 1 Dec 2025 10:00:00 +0000\r\n\
    Message-ID: <dsn@mx.example.net>\r\n\
    MIME-Version: 1.0\r\n\
    Content-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n\
    --R\r\nContent-Type: text/plain\r\n\r\nDelivery failed for the recipients below.\r\n\r\n";

/// A DSN whose delivery-status part lists `n` failed recipients (40,000: 2.8 MB).
pub fn dsn_many_recipients(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 72 + 1024);
    s.push_str(DSN_HEAD);
    s.push_str("--R\r\nContent-Type: message/delivery-status\r\n\r\n");
    s.push_str("Reporting-MTA: dns; mx.example.net\r\n\r\n");
    for i in 0..n {
        let _ = write!(
            s,
            "Final-Recipient: rfc822; user{i}@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        );
    }
    s.push_str("--R\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    s.push_str("Message-ID: <step1@sales.example>\r\nFrom: bob@sales.example\r\n\r\n--R--\r\n");
    s.into_bytes()
}

/// A reply whose first part is its text and whose second part opens `n` nested
/// multiparts (5,000: 250 KB).
pub fn nested_multiparts(n: usize) -> Vec<u8> {
    let mut s = reply_head(n * 60);
    s.push_str("Content-Type: multipart/mixed; boundary=\"top\"\r\n\r\n");
    s.push_str("--top\r\nContent-Type: text/plain\r\n\r\nPlease remove me from your list.\r\n");
    s.push_str("--top\r\n");
    for i in 0..n {
        let _ = write!(
            s,
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        );
    }
    s.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    for i in (0..n).rev() {
        let _ = write!(s, "--b{i}--\r\n");
    }
    s.push_str("--top--\r\n");
    s.into_bytes()
}

/// `n` sibling parts in one multipart (each a small text part).
pub fn many_parts(n: usize) -> Vec<u8> {
    let mut s = reply_head(n * 40);
    s.push_str("Content-Type: multipart/mixed; boundary=\"top\"\r\n\r\n");
    s.push_str("--top\r\nContent-Type: text/plain\r\n\r\nNot interested, thanks.\r\n");
    for i in 0..n {
        let _ = write!(s, "--top\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n");
    }
    s.push_str("--top--\r\n");
    s.into_bytes()
}

/// A DSN whose returned original is `n` message/rfc822 parts nested in each other.
pub fn nested_rfc822(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 80 + 2048);
    s.push_str(DSN_HEAD);
    s.push_str("--R\r\nContent-Type: message/delivery-status\r\n\r\n");
    s.push_str("Reporting-MTA: dns; mx.example.net\r\n\r\n");
    s.push_str("Final-Recipient: rfc822; li@example.cn\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n");
    s.push_str("--R\r\nContent-Type: message/rfc822\r\n\r\n");
    for i in 0..n {
        let _ = write!(
            s,
            "Message-ID: <n{i}@e.co>\r\nSubject: level {i}\r\nContent-Type: message/rfc822\r\n\r\n"
        );
    }
    s.push_str("Subject: innermost\r\n\r\nhello\r\n--R--\r\n");
    s.into_bytes()
}

/// A reply whose text body is `bytes` long, the request on its first line.
pub fn huge_body(bytes: usize) -> Vec<u8> {
    let mut s = reply_head(bytes);
    s.push_str("Content-Type: text/plain\r\n\r\nPlease remove me from your list.\r\n");
    let line = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod 1/2\r\n";
    while s.len() < bytes {
        s.push_str(line);
    }
    s.into_bytes()
}

/// An HTML reply with `n` unclosed nested blockquotes and `n` lines inside them.
pub fn deep_blockquotes(n: usize) -> Vec<u8> {
    let mut s = reply_head(n * 20);
    s.push_str("Content-Type: text/html\r\n\r\n<p>Not interested, thanks.</p>");
    for _ in 0..n {
        s.push_str("<blockquote>");
    }
    for _ in 0..n {
        s.push_str("x<br>");
    }
    s.into_bytes()
}

/// An out-of-office reply whose Subject is `bytes` long.
pub fn huge_header(bytes: usize) -> Vec<u8> {
    let mut subject = String::from("Out of office until 15 December");
    while subject.len() < bytes {
        subject.push_str(" padding");
    }
    format!(
        "{HEAD}To: bob@sales.example\r\nSubject: {subject}\r\n\
         Content-Type: text/plain\r\n\r\nI am away.\r\n"
    )
    .into_bytes()
}

/// An auto-reply with `n` header fields after its Auto-Submitted.
pub fn many_headers(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 16 + 1024);
    s.push_str(HEAD);
    s.push_str("Auto-Submitted: auto-replied\r\nTo: bob@sales.example\r\nSubject: Re: Intro\r\n");
    for i in 0..n {
        let _ = write!(s, "X-Pad-{i}: v\r\n");
    }
    s.push_str("Content-Type: text/plain\r\n\r\nI am away until 15 December.\r\n");
    s.into_bytes()
}

/// Every crafted case at the sizes the issue names.
pub fn all() -> Vec<Case> {
    vec![
        Case {
            name: "to_200k",
            what: "200,000 To addresses",
            raw: many_to(200_000),
        },
        Case {
            name: "references_200k",
            what: "200,000 References",
            raw: many_references(200_000),
        },
        Case {
            name: "dsn_40k_recipients",
            what: "DSN with 40,000 Final-Recipient fields",
            raw: dsn_many_recipients(40_000),
        },
        Case {
            name: "multipart_nested_5000",
            what: "5,000 nested multiparts",
            raw: nested_multiparts(5_000),
        },
        Case {
            name: "parts_20000",
            what: "20,000 sibling parts",
            raw: many_parts(20_000),
        },
        Case {
            name: "rfc822_nested_200",
            what: "200 nested message/rfc822",
            raw: nested_rfc822(200),
        },
        Case {
            name: "body_10mb",
            what: "10 MB text body",
            raw: huge_body(10 * 1024 * 1024),
        },
        Case {
            name: "html_blockquotes_100k",
            what: "100,000 nested HTML blockquotes",
            raw: deep_blockquotes(100_000),
        },
        Case {
            name: "header_1mb",
            what: "a 1 MB Subject",
            raw: huge_header(1024 * 1024),
        },
        Case {
            name: "headers_100k",
            what: "100,000 header fields",
            raw: many_headers(100_000),
        },
    ]
}
