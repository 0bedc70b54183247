//! A message's main text and a reply's new text (the quoted original removed).

use std::borrow::Cow;

use mail_parser::{Message, PartType};

use super::limits::{MAX_BODY_BYTES, MAX_NEW_TEXT_BYTES, MAX_PARTS};
use super::scan::{cap, char_floor, lower};
use crate::mail::text::{html_to_text, Style};

/// The message's main text: its text/plain body parts, else its HTML made text; at most
/// [`MAX_BODY_BYTES`] of it, from at most [`MAX_PARTS`] parts.
/// With `stop_at_quote` the HTML is cut at the client's quote container (see
/// [`html_to_text`]); plain text is returned whole either way.
pub(super) fn main_text(msg: &Message<'_>, stop_at_quote: bool) -> String {
    let mut out = String::new();
    let take = |ids: &[u32], out: &mut String| {
        for id in ids.iter().take(MAX_PARTS) {
            let room = MAX_BODY_BYTES.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            let Some(part) = msg.parts.get(*id as usize) else {
                continue;
            };
            let text = match &part.body {
                PartType::Text(t) => Cow::Borrowed(cap(t, room)),
                PartType::Html(h) => Cow::Owned(html_to_text(
                    cap(h, MAX_BODY_BYTES),
                    Style::Classify { stop_at_quote },
                )),
                _ => continue,
            };
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(cap(&text, room));
        }
    };
    take(&msg.text_body, &mut out);
    if out.trim().is_empty() {
        out.clear();
        take(&msg.html_body, &mut out);
    }
    out
}

/// A reply's new text: the body with the quoted original removed.
///
/// Drops `>`-quoted lines (RFC 3676 §4.5) wherever they are, so interleaved answers
/// survive, and cuts everything from the first of:
/// - an attribution line: "On ... wrote:", "Am ... schrieb ...:", "Le ... a écrit :",
///   "El ... escribió:", "Em ... escreveu:", "Il ... ha scritto:", "Op ... schreef ...:",
///   "... 写道：", Gmail's Japanese "2025年12月1日(月) 10:00 Name <a@b>:" (also when
///   the client wrapped it over two or three lines);
/// - a separator: "-----Original Message-----" and its translations, QQ Mail's
///   "------------------ 原始邮件 ------------------", Outlook's underscore rule;
/// - a header block: "From:"/"Von:"/"De :"/"Da:"/"Van:"/"发件人:"/"寄件者:"/"差出人:"
///   followed within four lines by "Sent:"/"Date:"/"To:"/"Subject:" (or theirs);
/// - the signature delimiter "-- " (RFC 3676 §4.3);
/// - [`MAX_NEW_TEXT_BYTES`] of new text.
pub fn new_text(body: &str) -> String {
    let lines: Vec<&str> = body.lines().collect();
    let mut out = String::with_capacity(body.len().min(4096));
    for (i, line) in lines.iter().enumerate() {
        if out.len() >= MAX_NEW_TEXT_BYTES {
            // What a person asks for is said at the start; the rest is not read.
            break;
        }
        let t = line.trim();
        if t.starts_with('>') {
            continue;
        }
        if *line == "-- " || t == "--" {
            break;
        }
        if is_separator(t) || is_attribution(&lines, i) || is_header_block(&lines, i) {
            break;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let trimmed = out.trim_matches(|c: char| c == '\n' || c.is_whitespace());
    trimmed.to_string()
}

pub(super) fn is_separator(t: &str) -> bool {
    if !(t.starts_with("---") || t.starts_with("___") || t.starts_with("===")) {
        return false;
    }
    if t.len() >= 20 && t.bytes().all(|c| c == b'_') {
        // Outlook's divider above its "From: ... Sent: ..." block.
        return true;
    }
    const WORDS: &[&str] = &[
        "original message",
        "original-nachricht",
        "ursprüngliche nachricht",
        "message d'origine",
        "message original",
        "mensaje original",
        "mensagem original",
        "messaggio originale",
        "oorspronkelijk bericht",
        "origineel bericht",
        "forwarded message",
        "weitergeleitete nachricht",
        "原始邮件",
        "原始郵件",
        "原邮件",
        "元のメッセージ",
        "転送メッセージ",
        "original",
    ];
    let low = lower(t);
    WORDS.iter().any(|w| low.contains(w))
}

pub(super) fn is_attribution(lines: &[&str], i: usize) -> bool {
    const OPENERS: &[&str] = &["on ", "am ", "le ", "el ", "em ", "il ", "op ", "den "];
    let t = lines[i].trim();
    if t.is_empty() || t.len() > 400 {
        return false;
    }
    if attribution_line(t) {
        return true;
    }
    // Clients wrap long attributions: "On Mon, Dec 1, 2025 at 10:00 AM Iris <" /
    // "iris@example.com> wrote:". Join only lines that open like an attribution, so a
    // paragraph above a real attribution is not swallowed.
    let low_start = lower(&t[..char_floor(t, 8)]);
    let opens = OPENERS.iter().any(|o| low_start.starts_with(o))
        || t.chars().next().is_some_and(|c| c.is_ascii_digit());
    if !opens {
        return false;
    }
    let mut joined = t.to_string();
    for next in lines.iter().skip(i + 1).take(2) {
        let n = next.trim();
        if n.is_empty() || n.starts_with('>') || joined.len() + n.len() > 400 {
            break;
        }
        joined.push(' ');
        joined.push_str(n);
        if attribution_line(&joined) {
            return true;
        }
    }
    false
}

pub(super) fn attribution_line(t: &str) -> bool {
    let ends = t.ends_with(':') || t.ends_with('：');
    if !ends {
        return false;
    }
    const VERBS: &[&str] = &[
        " wrote",
        "wrote:",
        " writes:",
        "schrieb",
        "schreef",
        "a écrit",
        "escribió",
        "escreveu",
        "ha scritto",
        "写道",
        "寫道",
        "skrev",
        "napisał",
        "kirjoitti",
    ];
    let low = lower(t);
    if VERBS.iter().any(|v| low.contains(v)) {
        return true;
    }
    // Gmail in Japanese: "2025年12月1日(月) 10:00 Iris Zhang <iris@example.com>:".
    t.chars().next().is_some_and(|c| c.is_ascii_digit())
        && t.contains('年')
        && t.contains('@')
        && t.trim_end_matches([':', '：']).ends_with('>')
}

pub(super) fn is_header_block(lines: &[&str], i: usize) -> bool {
    const FROM: &[&str] = &[
        "from",
        "von",
        "de",
        "da",
        "van",
        "发件人",
        "寄件者",
        "寄件人",
        "差出人",
        "送信者",
    ];
    const OTHER: &[&str] = &[
        "sent",
        "date",
        "to",
        "subject",
        "cc",
        "gesendet",
        "datum",
        "an",
        "betreff",
        "envoyé",
        "à",
        "objet",
        "enviado",
        "enviado el",
        "fecha",
        "para",
        "asunto",
        "assunto",
        "inviato",
        "data",
        "a",
        "oggetto",
        "verzonden",
        "aan",
        "onderwerp",
        "发送时间",
        "日期",
        "时间",
        "收件人",
        "主题",
        "抄送",
        "寄件日期",
        "收件者",
        "主旨",
        "送信日時",
        "宛先",
        "件名",
        "日時",
    ];
    let Some(key) = header_key(lines[i]) else {
        return false;
    };
    if !FROM.contains(&key.as_str()) {
        return false;
    }
    lines
        .iter()
        .skip(i + 1)
        .filter(|l| !l.trim().is_empty())
        .take(4)
        .any(|l| header_key(l).is_some_and(|k| OTHER.contains(&k.as_str())))
}

/// "From: x" → "from"; "*Von:* x" → "von"; "发件人：x" → "发件人". None for other lines.
pub(super) fn header_key(line: &str) -> Option<String> {
    let t = line.trim().trim_start_matches('*');
    let head = &t[..char_floor(t, 40)];
    let colon = head.find([':', '：'])?;
    let key = head[..colon].trim().trim_end_matches('*').trim();
    if key.is_empty() || key.chars().count() > 12 {
        return None;
    }
    Some(lower(key))
}

pub(super) fn snippet(fresh: &str) -> Option<String> {
    let mut out = String::with_capacity(220);
    let mut count = 0;
    for word in fresh.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
            count += 1;
        }
        for ch in word.chars() {
            if count >= 200 {
                return Some(out);
            }
            out.push(ch);
            count += 1;
        }
        if count >= 200 {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::text::{html_to_text, Style};

    #[test]
    fn new_text_strips_quotes_in_many_clients() {
        let cases: &[(&str, &str)] = &[
            (
                "Sounds good.\n\nOn Mon, Dec 1, 2025 at 10:00 AM Iris Zhang <iris@example.com> wrote:\n> Hi Li,\n> unsubscribe here",
                "Sounds good.",
            ),
            (
                "Sounds good.\n\nOn Mon, Dec 1, 2025 at 10:00 AM Iris Zhang <\niris@example.com> wrote:\n\n> Hi",
                "Sounds good.",
            ),
            (
                "Yes.\n\n-----Original Message-----\nFrom: Iris\nunsubscribe",
                "Yes.",
            ),
            (
                "Yes please.\n\n________________________________\nFrom: Iris Zhang <iris@example.com>\nSent: Monday, December 1, 2025 10:00 AM\nTo: Bob\nSubject: Intro",
                "Yes please.",
            ),
            (
                "Ja gerne.\n\nVon: Iris Zhang <iris@example.com>\nGesendet: Montag, 1. Dezember 2025 10:00\nAn: Bob\nBetreff: Intro",
                "Ja gerne.",
            ),
            (
                "好的。\n\n------------------ 原始邮件 ------------------\n发件人: \"Iris\"<iris@example.com>;\n发送时间: 2025年12月1日",
                "好的。",
            ),
            (
                "好的。\n\n发件人：Iris <iris@example.com>\n发送时间：2025年12月1日 10:00\n收件人：li@example.cn\n主题：Intro",
                "好的。",
            ),
            ("Ja.\n\nAm 01.12.25 um 10:00 schrieb Iris Zhang:\n> Hallo", "Ja."),
            (
                "Oui.\n\nLe lun. 1 déc. 2025 à 10:00, Iris Zhang <iris@example.com> a écrit :\n> Bonjour",
                "Oui.",
            ),
            (
                "Sí.\n\nEl lun, 1 dic 2025 a las 10:00, Iris Zhang (<iris@example.com>) escribió:\n> Hola",
                "Sí.",
            ),
            (
                "Sim.\n\nEm seg., 1 de dez. de 2025 às 10:00, Iris Zhang <iris@example.com> escreveu:\n> Olá",
                "Sim.",
            ),
            (
                "Sì.\n\nIl giorno lun 1 dic 2025 alle ore 10:00 Iris Zhang <iris@example.com> ha scritto:\n> Ciao",
                "Sì.",
            ),
            (
                "Ja.\n\nOp ma 1 dec 2025 om 10:00 schreef Iris Zhang <iris@example.com>:\n> Hoi",
                "Ja.",
            ),
            (
                "はい。\n\n2025年12月1日(月) 10:00 Iris Zhang <iris@example.com>:\n> こんにちは",
                "はい。",
            ),
            (
                "好的\n\nIris Zhang <iris@example.com> 于2025年12月1日周一 10:00写道：\n> 你好",
                "好的",
            ),
            (
                "> Can we meet?\nYes, Tuesday.\n> Price?\nFine.",
                "Yes, Tuesday.\nFine.",
            ),
            ("Thanks\n-- \nBob Smith\nunsubscribe", "Thanks"),
        ];
        for (body, want) in cases {
            assert_eq!(new_text(body), *want, "{body}");
        }
    }

    #[test]
    fn html_quotes_are_dropped() {
        let html = "<div dir=\"ltr\">Tuesday works.<br>Bob</div><br><div class=\"gmail_quote\"><div class=\"gmail_attr\">On Mon wrote:</div><blockquote>unsubscribe</blockquote></div>";
        assert_eq!(
            new_text(&html_to_text(
                html,
                Style::Classify {
                    stop_at_quote: true
                }
            )),
            "Tuesday works.\nBob"
        );
        let apple = "<html><body>Yes&nbsp;please<div><blockquote type=\"cite\">Hi &amp; unsubscribe</blockquote></div></body></html>";
        let text = html_to_text(
            apple,
            Style::Classify {
                stop_at_quote: false,
            },
        );
        assert!(text.contains("> Hi & unsubscribe"), "{text}");
        assert_eq!(new_text(&text), "Yes please");
    }
}
