//! How much of a message the classifier reads. Anyone can mail the watched inbox, so
//! every list, part and text the classifier builds from a message is capped here, and
//! the work per message is linear in what is kept. What is cut is always the tail: the
//! first recipients, parts and References are kept, so a bounce listing 40,000 failed
//! addresses still names the first thousand, in the report's order.
//!
//! The caps are far above what a genuine message carries (a DSN lists the recipients
//! of one transaction; RFC 5322 threads rarely reach 100 References; mail clients nest
//! four or five MIME levels) and low enough that any message classifies in a few
//! milliseconds; `cargo bench --bench classify` times the crafted worst cases.

use std::borrow::Cow;
use std::collections::HashSet;

/// Bytes of the raw message handed to the MIME parser. Headers and the first
/// megabytes of text are all classification needs; what follows (attachments, a
/// returned original's body) is not parsed at all.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// MIME parts (multipart children and enclosed messages) parsed. The input is cut
/// before the part past this one.
pub const MAX_PARTS: usize = 100;

/// Nesting of `multipart/*` and `message/rfc822` (or `message/global`) containers.
/// mail-parser keeps its own nesting on the heap, but it walks, copies and drops a
/// nested message recursively; the input is cut before a container that would open
/// past this depth.
pub const MAX_DEPTH: usize = 8;

/// Header fields of the top-level header section that are looked at.
pub const MAX_HEADERS: usize = 1_000;

/// Bytes of one header value considered (a To field of 200,000 addresses is read up to
/// here); also the longest Subject kept.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Bytes of body text (all text parts together, HTML made text) considered.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Bytes of a reply's new text (the quoted original removed) read for its intent,
/// out-of-office phrases and return date.
pub const MAX_NEW_TEXT_BYTES: usize = 64 * 1024;

/// Addresses kept from one list (To/Cc/Delivered-To of our side, the returned
/// original's To and senders, a complaint's recipients).
pub const MAX_ADDRESSES: usize = 1_000;

/// Failed or delayed recipients kept in a bounce (`failures` and `recipients`).
pub const MAX_RECIPIENTS: usize = 1_000;

/// Message-IDs kept in `references` (In-Reply-To first, then References in order).
pub const MAX_REFERENCES: usize = 500;

/// An ordered list without repeats and with a cap: `push` is O(1) (a hash set beside
/// the vector) where `Vec::contains` made 200,000 References take 37 s.
pub(super) struct Unique {
    items: Vec<String>,
    seen: HashSet<String>,
    cap: usize,
}

impl Default for Unique {
    /// A list of addresses: [`MAX_ADDRESSES`].
    fn default() -> Unique {
        Unique::new(MAX_ADDRESSES)
    }
}

impl Unique {
    pub(super) fn new(cap: usize) -> Unique {
        Unique {
            items: Vec::new(),
            seen: HashSet::new(),
            cap,
        }
    }

    /// Adds `item` unless it is there already or the list is full; false when full.
    pub(super) fn push(&mut self, item: String) -> bool {
        if self.items.len() >= self.cap {
            return false;
        }
        if !self.seen.contains(&item) {
            self.seen.insert(item.clone());
            self.items.push(item);
        }
        true
    }

    pub(super) fn extend(&mut self, items: impl IntoIterator<Item = String>) {
        for item in items {
            if !self.push(item) {
                break;
            }
        }
    }

    pub(super) fn contains(&self, item: &str) -> bool {
        self.seen.contains(item)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, String> {
        self.items.iter()
    }

    pub(super) fn into_vec(self) -> Vec<String> {
        self.items
    }
}

/// The part of `raw` the MIME parser gets: at most [`MAX_MESSAGE_BYTES`], and cut at
/// the line that would open the part past [`MAX_PARTS`] or a container past
/// [`MAX_DEPTH`].
///
/// One pass over the lines, tracking just enough MIME (RFC 2046 §5.1.1) to know the
/// depth: whether a line is in a header section, the boundaries of the open
/// multiparts, and the `message/rfc822` parts whose header section comes next. It
/// errs on the side of cutting: a `Content-Type:` line counts wherever a header
/// section may be, and an unclosed multipart stays open to the end.
pub(super) fn bounded_input(raw: &[u8]) -> Cow<'_, [u8]> {
    // Header fields first, so that a 3 MB To field does not push the body out.
    match trim_top_header(raw) {
        Cow::Borrowed(b) => Cow::Borrowed(cut_structure(b)),
        Cow::Owned(mut v) => {
            let keep = cut_structure(&v).len();
            v.truncate(keep);
            Cow::Owned(v)
        }
    }
}

/// The top-level header section with at most [`MAX_HEADERS`] fields of at most
/// [`MAX_HEADER_BYTES`] each: the parser would otherwise build 200,000 addresses from
/// one To field. Copies only when something is cut.
fn trim_top_header(raw: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let (mut fields, mut field_len) = (0usize, 0usize);
    let mut pos = 0;
    while pos < raw.len() {
        let end = memchr::memchr(b'\n', &raw[pos..]).map_or(raw.len(), |i| pos + i + 1);
        let line = &raw[pos..end];
        if trim_eol(line).is_empty() {
            break;
        }
        if !matches!(line[0], b' ' | b'\t') {
            fields += 1;
            field_len = 0;
        }
        let room = if fields > MAX_HEADERS {
            0
        } else {
            MAX_HEADER_BYTES.saturating_sub(field_len)
        };
        field_len += line.len();
        if line.len() > room {
            let out = out.get_or_insert_with(|| raw[..pos].to_vec());
            if room > 0 {
                out.extend_from_slice(&line[..room]);
                out.extend_from_slice(b"\r\n");
            }
        } else if let Some(out) = out.as_mut() {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    match out {
        Some(mut out) => {
            out.extend_from_slice(&raw[pos..]);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(raw),
    }
}

/// `raw` cut at [`MAX_MESSAGE_BYTES`] and before the part past [`MAX_PARTS`] or the
/// container past [`MAX_DEPTH`].
fn cut_structure(raw: &[u8]) -> &[u8] {
    let raw = &raw[..raw.len().min(MAX_MESSAGE_BYTES)];
    // The open containers: Some(boundary) for a multipart, None for an enclosed message
    // (which ends with its parent's next delimiter).
    let mut open: Vec<Option<&[u8]>> = Vec::new();
    let mut parts = 1usize;
    let mut in_header = true;
    // A header section's Content-Type opened an enclosed message: its own header
    // section starts after this one's blank line.
    let mut message_next = false;
    let mut pos = 0;
    while pos < raw.len() {
        let end = memchr::memchr(b'\n', &raw[pos..]).map_or(raw.len(), |i| pos + i + 1);
        let line = trim_eol(&raw[pos..end]);
        let start = pos;
        pos = end;
        if in_header {
            if line.is_empty() {
                in_header = message_next;
                message_next = false;
                continue;
            }
            if !starts_with_ignore_case(line, b"content-type:") {
                continue;
            }
            // The value may be folded over the following lines (the boundary often is).
            let mut value_end = end;
            while value_end < raw.len() && matches!(raw[value_end], b' ' | b'\t') {
                value_end = memchr::memchr(b'\n', &raw[value_end..])
                    .map_or(raw.len(), |i| value_end + i + 1);
            }
            let value = &raw[start + b"content-type:".len()..value_end];
            let container = match container_of(value) {
                Some(c) => c,
                None => continue,
            };
            if open.len() >= MAX_DEPTH {
                return &raw[..start];
            }
            if container.is_none() {
                message_next = true;
                parts += 1;
                if parts > MAX_PARTS {
                    return &raw[..start];
                }
            }
            open.push(container);
            continue;
        }
        if line.len() < 2 || !line.starts_with(b"--") {
            continue;
        }
        // A delimiter of an open multipart ("--B", or "--B--" closing it) also ends
        // whatever was open inside it.
        let Some((level, closing)) = open.iter().enumerate().rev().find_map(|(k, b)| {
            let after = line[2..].strip_prefix((*b)?)?;
            let closing = after.starts_with(b"--");
            let rest = if closing { &after[2..] } else { after };
            rest.iter()
                .all(|c| matches!(c, b' ' | b'\t'))
                .then_some((k, closing))
        }) else {
            continue;
        };
        open.truncate(level + 1);
        if closing {
            open.pop();
        } else {
            parts += 1;
            if parts > MAX_PARTS {
                return &raw[..start];
            }
            in_header = true;
        }
    }
    raw
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// For a Content-Type value: Some(Some(boundary)) for a multipart, Some(None) for an
/// enclosed message, None for a leaf.
fn container_of(value: &[u8]) -> Option<Option<&[u8]>> {
    let start = value.iter().position(|c| !c.is_ascii_whitespace())?;
    let v = &value[start..];
    if starts_with_ignore_case(v, b"message/rfc822")
        || starts_with_ignore_case(v, b"message/global")
    {
        return Some(None);
    }
    if !starts_with_ignore_case(v, b"multipart/") {
        return None;
    }
    // boundary=value or boundary="value" (RFC 2045 §5.1), the parameter name in any case.
    let at = v
        .windows(9)
        .position(|w| w.eq_ignore_ascii_case(b"boundary="))?;
    let rest = &v[at + 9..];
    let b = if let Some(quoted) = rest.strip_prefix(b"\"") {
        &quoted[..memchr::memchr(b'"', quoted).unwrap_or(quoted.len())]
    } else {
        let end = rest
            .iter()
            .position(|c| matches!(c, b';' | b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(rest.len());
        &rest[..end]
    };
    // A multipart without a usable boundary is parsed as text by mail-parser.
    (!b.is_empty()).then_some(Some(b))
}
