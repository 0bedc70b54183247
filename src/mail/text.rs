//! HTML made text, for classifying mail and for the text part of sent mail.

use std::borrow::Cow;

/// The deepest quote prefix written for nested `<blockquote>`s.
const QUOTE_PREFIX_MAX: usize = 8;

/// HTML to plain text, for classification only: tags dropped, blocks become lines,
/// `<blockquote>` content is prefixed with "> " so `classify::new_text` drops it like a plain
/// quote, `<script>`/`<style>`/`<head>` are skipped. With `stop_at_quote`, rendering
/// stops at the quote containers mail clients wrap the original in (Gmail's
/// `gmail_quote`, Outlook's `divRplyFwdMsg`/`appendonsend`, Thunderbird's
/// `moz-cite-prefix`, Yahoo's `yahoo_quoted`, NetEase's `isReplyContent`).
pub(crate) fn html_to_text(html: &str, stop_at_quote: bool) -> String {
    const QUOTE_CONTAINERS: &[&str] = &[
        "gmail_quote",
        "divrplyfwdmsg",
        "appendonsend",
        "mail-editor-reference-message-container",
        "moz-cite-prefix",
        "yahoo_quoted",
        "isreplycontent",
        "isforwardcontent",
    ];
    let b = html.as_bytes();
    let mut out = String::with_capacity(html.len() / 3);
    let mut i = 0;
    let mut depth = 0usize;
    let mut line_start = true;
    let mut space = false;
    let mut skip: Option<&'static str> = None;
    fn newline(out: &mut String, line_start: &mut bool, space: &mut bool, hard: bool) {
        if hard || !*line_start {
            out.push('\n');
        }
        *line_start = true;
        *space = false;
    }
    while i < b.len() {
        if b[i] == b'<' {
            if b[i..].starts_with(b"<!--") {
                i = html[i..].find("-->").map_or(b.len(), |p| i + p + 3);
                continue;
            }
            let Some(close) = b[i..].iter().position(|&c| c == b'>') else {
                break;
            };
            let tag = &html[i + 1..i + close];
            i += close + 1;
            let closing = tag.starts_with('/');
            let name_src = tag.trim_start_matches('/');
            let name_len = name_src
                .bytes()
                .take_while(u8::is_ascii_alphanumeric)
                .count();
            let name = name_src[..name_len].to_ascii_lowercase();
            if let Some(s) = skip {
                if closing && name == s {
                    skip = None;
                }
                continue;
            }
            match name.as_str() {
                "script" | "style" | "head" | "title" if !closing => {
                    skip = Some(match name.as_str() {
                        "script" => "script",
                        "style" => "style",
                        "head" => "head",
                        _ => "title",
                    });
                }
                "br" => newline(&mut out, &mut line_start, &mut space, true),
                "blockquote" => {
                    newline(&mut out, &mut line_start, &mut space, false);
                    if closing {
                        depth = depth.saturating_sub(1);
                    } else {
                        depth += 1;
                    }
                }
                "p" | "div" | "tr" | "li" | "ul" | "ol" | "table" | "hr" | "pre" | "h1" | "h2"
                | "h3" | "h4" | "h5" | "h6" => {
                    newline(&mut out, &mut line_start, &mut space, false)
                }
                "td" | "th" => space = true,
                _ => {}
            }
            if stop_at_quote && !closing && tag.len() > name_len + 1 {
                let attrs = tag.to_ascii_lowercase();
                if QUOTE_CONTAINERS.iter().any(|q| attrs.contains(q)) {
                    break;
                }
            }
            continue;
        }
        let end = b[i..]
            .iter()
            .position(|&c| c == b'<')
            .map_or(b.len(), |p| i + p);
        let run = &html[i..end];
        i = end;
        if skip.is_some() {
            continue;
        }
        let decoded = decode_entities(run);
        for ch in decoded.chars() {
            if ch.is_whitespace() {
                space = true;
                continue;
            }
            if line_start {
                // One "> " per level, up to a few: a quote is a quote to `new_text`,
                // and 100,000 unclosed <blockquote>s must not mean 200 KB per line.
                for _ in 0..depth.min(QUOTE_PREFIX_MAX) {
                    out.push_str("> ");
                }
                line_start = false;
            } else if space {
                out.push(' ');
            }
            space = false;
            out.push(ch);
        }
    }
    out
}

fn decode_entities(run: &str) -> Cow<'_, str> {
    if !run.contains('&') {
        return Cow::Borrowed(run);
    }
    let mut out = String::with_capacity(run.len());
    let mut rest = run;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let end = tail.bytes().take(12).position(|c| c == b';').filter(|&e| {
            e > 1
                && tail[1..e]
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'#')
        });
        match end {
            Some(e) => {
                mail_parser::decoders::html::add_html_token(
                    &mut out,
                    &tail.as_bytes()[..=e],
                    false,
                );
                rest = &tail[e + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}
