//! Text and HTML parts encoded in one pass.
//!
//! lettre's `Body::new` chooses the transfer encoding with a scan of its own, turns line
//! ends into CRLF by inserting a byte per line (moving the rest of the text each time)
//! and then quoted-printable encodes through a general encoder: a fifth of the CPU a
//! message costs the send path. Here a count of the bytes to escape and a look at the
//! line ends decide, and one pass writes the encoded body, which lettre then carries
//! as it is (`Body::dangerous_pre_encoded`). The
//! choice is lettre's: 7bit for short-lined ASCII, quoted-printable while at most a
//! third of the bytes need escaping (Latin scripts), base64 beyond (Chinese, Japanese).

use lettre::message::header::ContentTransferEncoding;
use lettre::message::Body;

/// Longest encoded line, without its CRLF (RFC 2045 §6.7).
const QP_LINE: usize = 76;

/// The part's body for `text`, with CRLF line ends, in the cheapest safe encoding.
pub fn text_body(text: &str) -> Body {
    let bytes = text.as_bytes();
    // Simple counting loops, which the compiler vectorises; line ends are few.
    let escapes = bytes.iter().filter(|&&b| needs_escape(b)).count();
    let long_line = {
        let mut last = 0;
        memchr::memchr_iter(b'\n', bytes).any(|i| std::mem::replace(&mut last, i + 1) + QP_LINE < i)
            || last + QP_LINE < bytes.len()
    };
    let bare_cr = memchr::memchr_iter(b'\r', bytes).any(|i| bytes.get(i + 1) != Some(&b'\n'));
    if escapes == 0 && !long_line && !bare_cr {
        return Body::dangerous_pre_encoded(
            crlf(text).into_bytes(),
            ContentTransferEncoding::SevenBit,
        );
    }
    if escapes <= bytes.len() / 3 {
        return Body::dangerous_pre_encoded(
            quoted_printable(bytes),
            ContentTransferEncoding::QuotedPrintable,
        );
    }
    // Mostly non-Latin text: base64 is shorter. lettre's own encoder; the text has
    // CRLF line ends already, so it inserts nothing.
    match Body::new_with_encoding(crlf(text), ContentTransferEncoding::Base64) {
        Ok(body) => body,
        // Base64 takes any input; lettre's signature only allows for 7bit's refusal.
        Err(raw) => Body::new(raw),
    }
}

/// A byte that quoted-printable escapes wherever it stands (line ends aside).
fn needs_escape(b: u8) -> bool {
    !matches!(b, b'\t' | b'\n' | b'\r' | b' '..=b'~')
}

/// A byte copied as it is wherever it stands: printable ASCII but `=`.
const fn literal_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = b'!';
    while b <= b'~' {
        t[b as usize] = b != b'=';
        b += 1;
    }
    t
}
static LITERAL: [bool; 256] = literal_table();

/// `text` with every line end as CRLF.
fn crlf(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 32 + 2);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // An ASCII byte: the cut is on a character boundary.
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push_str(&text[start..i]);
            out.push_str("\r\n");
            start = i + 1;
        }
    }
    out.push_str(&text[start..]);
    out
}

/// Quoted-printable for text (RFC 2045 §6.7): LF and CRLF are hard line breaks, a bare
/// CR is escaped, as are `=`, bytes outside printable ASCII and a space or tab that
/// would end a line; lines longer than 76 are cut with soft breaks, never inside an
/// escape.
fn quoted_printable(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2 + 16);
    let mut col = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        // The common case: a run of bytes that are copied as they are, as far as the
        // line has room (keeping one column for a soft break). A space or tab is one
        // of them unless a line end follows it.
        let end = bytes.len().min(i + (QP_LINE - 1).saturating_sub(col));
        let mut j = i;
        while j < end {
            let b = bytes[j];
            let plain = LITERAL[usize::from(b)]
                || (matches!(b, b' ' | b'\t')
                    && j + 1 < bytes.len()
                    && !matches!(bytes[j + 1], b'\n' | b'\r'));
            if !plain {
                break;
            }
            j += 1;
        }
        if j > i {
            out.extend_from_slice(&bytes[i..j]);
            col += j - i;
            i = j;
            continue;
        }
        let b = bytes[i];
        let line_break = match b {
            b'\n' => 1,
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => 2,
            _ => 0,
        };
        if line_break > 0 {
            out.extend_from_slice(b"\r\n");
            col = 0;
            i += line_break;
            continue;
        }
        let ends_line = match bytes.get(i + 1) {
            None | Some(b'\n') => true,
            Some(b'\r') => bytes.get(i + 2) == Some(&b'\n'),
            Some(_) => false,
        };
        let literal = match b {
            b' ' | b'\t' => !ends_line,
            b'=' => false,
            b'!'..=b'~' => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // Room for the soft break's `=`, unless this is the line's last character.
        let room = if ends_line { QP_LINE } else { QP_LINE - 1 };
        if col + width > room {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        col += width;
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(text: &str) -> (ContentTransferEncoding, String) {
        let body = text_body(text);
        let enc = body.encoding();
        (enc, String::from_utf8(body.into_vec()).unwrap())
    }

    fn decode_qp(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' {
                if b.get(i + 1) == Some(&b'\r') {
                    i += 3;
                    continue;
                }
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    fn well_formed(s: &str) {
        assert!(s.is_ascii(), "{s}");
        for line in s.split("\r\n") {
            assert!(line.len() <= QP_LINE, "line of {}: {line:?}", line.len());
            assert!(!line.contains(['\r', '\n']), "bare line end in {line:?}");
            assert!(
                !line.ends_with([' ', '\t']),
                "whitespace ends a line: {line:?}"
            );
        }
    }

    #[test]
    fn the_encoding_follows_the_script() {
        assert_eq!(
            encoded("Hi Anna,\nsee you.\n"),
            (
                ContentTransferEncoding::SevenBit,
                "Hi Anna,\r\nsee you.\r\n".into()
            )
        );
        let (enc, body) = encoded("Grüße aus Köln, Jürgen = Müller \n");
        assert_eq!(enc, ContentTransferEncoding::QuotedPrintable);
        assert_eq!(
            body,
            "Gr=C3=BC=C3=9Fe aus K=C3=B6ln, J=C3=BCrgen =3D M=C3=BCller=20\r\n"
        );
        let (enc, _) = encoded("王经理您好，我们是一家出口企业。\n期待您的回复。\n");
        assert_eq!(enc, ContentTransferEncoding::Base64);
        // Long ASCII lines are wrapped rather than sent as 7bit.
        let (enc, body) = encoded(&"word ".repeat(40));
        assert_eq!(enc, ContentTransferEncoding::QuotedPrintable);
        well_formed(&body);
    }

    #[test]
    fn quoted_printable_round_trips_any_text() {
        let pieces = [
            "a",
            "word",
            " ",
            "  ",
            "\t",
            "=",
            "==",
            ".",
            "\n",
            "\r\n",
            "\r",
            "\n\n",
            "ü",
            "é",
            "中",
            "😀",
            "=C3",
            "x".repeat(80).leak(),
            "\u{0}",
            "~",
            "!",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let n = rng.usize(0..60);
            let text: String = (0..n).map(|_| pieces[rng.usize(..pieces.len())]).collect();
            let out = String::from_utf8(quoted_printable(text.as_bytes())).unwrap();
            well_formed(&out);
            // What a reader gets back: the text with CRLF line ends.
            assert_eq!(
                decode_qp(&out),
                crlf(&text).into_bytes(),
                "{text:?} -> {out:?}"
            );
        }
    }

    #[test]
    fn the_parts_decode_in_a_mail_reader() {
        for text in [
            "Hello,\n\nplain ASCII.\n",
            "Sehr geehrte Frau Müller,\r\nvielen Dank für Ihr Interesse an unseren Maschinen. \r\n",
            "王经理您好：\n\n感谢您的关注。\n",
            &format!("{} end\n", "lange Zeile mit Umlauten äöü ".repeat(10)),
        ] {
            use lettre::message::{header::ContentType, MultiPart, SinglePart};
            let message = lettre::Message::builder()
                .from("a@example.com".parse().unwrap())
                .to("b@example.com".parse().unwrap())
                .subject("s")
                .multipart(
                    MultiPart::alternative()
                        .singlepart(
                            SinglePart::builder()
                                .header(ContentType::TEXT_PLAIN)
                                .body(text_body(text)),
                        )
                        .singlepart(
                            SinglePart::builder()
                                .header(ContentType::TEXT_HTML)
                                .body(text_body(&format!("<p>{text}</p>"))),
                        ),
                )
                .unwrap();
            let raw = message.formatted();
            let parsed = mail_parser::MessageParser::default()
                .parse(&raw)
                .expect("parses");
            let html = parsed
                .body_html(0)
                .expect("an HTML body")
                .replace("\r\n", "\n");
            assert_eq!(html, format!("<p>{}</p>", text.replace("\r\n", "\n")));
            let got = parsed
                .body_text(0)
                .expect("a text body")
                .replace("\r\n", "\n");
            assert_eq!(
                got,
                text.replace("\r\n", "\n"),
                "{}",
                String::from_utf8_lossy(&raw)
            );
        }
    }
}
