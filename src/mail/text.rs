//! HTML made text: one renderer for the text part of sent mail (made from an HTML-only
//! template) and for classifying arriving mail, in two styles.

use std::borrow::Cow;

/// The deepest quote prefix written for nested `<blockquote>`s.
const QUOTE_PREFIX_MAX: usize = 8;

/// What the text is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A text part a person reads: a blank line between blocks, "- " before list
    /// items, a link's address after its text ("our case (https://...)"), ending with
    /// one newline.
    Readable,
    /// For classification: blocks become lines, `<blockquote>` content is prefixed
    /// with "> " so `classify::new_text` drops it like a plain quote. With
    /// `stop_at_quote`, rendering stops at the quote containers mail clients wrap the
    /// original in (Gmail's `gmail_quote`, Outlook's `divRplyFwdMsg`/`appendonsend`,
    /// Thunderbird's `moz-cite-prefix`, Yahoo's `yahoo_quoted`, NetEase's
    /// `isReplyContent`).
    Classify { stop_at_quote: bool },
}

/// HTML to plain text: tags dropped, `<br>` and block elements become line breaks,
/// table cells are spaced, whitespace collapsed, entities decoded, comments and
/// `<script>`/`<style>`/`<head>`/`<title>` skipped; the rest as [`Style`] says. One
/// pass, linear in the input.
pub fn html_to_text(html: &str, style: Style) -> String {
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
    let readable = style == Style::Readable;
    let stop_at_quote = style
        == Style::Classify {
            stop_at_quote: true,
        };
    let b = html.as_bytes();
    let mut out = String::with_capacity(html.len() / 3);
    let mut i = 0;
    let mut depth = 0usize;
    let mut line_start = true;
    let mut space = false;
    let mut skip: Option<&'static str> = None;
    // Readable: link targets of the open <a> elements; a list item's "- " to write
    // before its first character.
    let mut hrefs: Vec<Option<String>> = Vec::new();
    let mut bullet = false;
    // A line break; between blocks of a readable text, a blank line (never two).
    let newline = |out: &mut String, line_start: &mut bool, space: &mut bool, hard: bool| {
        if hard || !*line_start {
            out.push('\n');
        }
        if readable && !hard && !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        *line_start = true;
        *space = false;
    };
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
                    if readable {
                        // A blank line around it is quote enough for a reader.
                    } else if closing {
                        depth = depth.saturating_sub(1);
                    } else {
                        depth += 1;
                    }
                }
                // A readable list item is a line starting "- "; its end changes nothing.
                "li" if readable && !closing => {
                    if !line_start {
                        out.push('\n');
                        line_start = true;
                    }
                    space = false;
                    bullet = true;
                }
                "li" if readable => {}
                "p" | "div" | "tr" | "li" | "ul" | "ol" | "table" | "hr" | "pre" | "h1" | "h2"
                | "h3" | "h4" | "h5" | "h6" => {
                    newline(&mut out, &mut line_start, &mut space, false)
                }
                "td" | "th" => space = true,
                "a" if readable => {
                    if !closing {
                        hrefs.push(attr(tag, "href"));
                    } else if let Some(Some(href)) = hrefs.pop() {
                        if href.starts_with("http") && !out.ends_with(href.as_str()) {
                            out.push_str(" (");
                            out.push_str(&href);
                            out.push(')');
                            line_start = false;
                        }
                    }
                }
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
                if bullet {
                    out.push_str("- ");
                    bullet = false;
                }
                line_start = false;
            } else if space {
                out.push(' ');
            }
            space = false;
            out.push(ch);
        }
    }
    if readable {
        // At most one blank line in a row (runs of <br>), and one newline at the end.
        let mut text = String::with_capacity(out.len() + 1);
        let mut blank = true;
        for line in out.trim().lines() {
            let line = line.trim_end();
            if line.is_empty() && blank {
                continue;
            }
            blank = line.is_empty();
            text.push_str(line);
            text.push('\n');
        }
        if text.is_empty() {
            text.push('\n');
        }
        return text;
    }
    out
}

/// The value of attribute `name` in a tag's text, entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let i = lower.find(&format!("{name}="))?;
    let v = &tag[i + name.len() + 1..];
    let (q, v) = match v.chars().next()? {
        c @ ('"' | '\'') => (c, &v[1..]),
        _ => (' ', v),
    };
    let end = v.find(q).unwrap_or(v.len());
    Some(decode_entities(&v[..end]).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_text_keeps_lists_links_and_paragraphs() {
        let html = "<ul><li>a</li><li>b</li></ul><p>x<br><br><br>y</p><!-- c > d -->\
            <table><tr><td>1</td><td>2</td></tr></table><p><a href=\"https://e.co/x\">see</a></p>";
        assert_eq!(
            html_to_text(html, Style::Readable),
            "- a\n- b\n\nx\n\ny\n\n1 2\n\nsee (https://e.co/x)\n"
        );
    }

    #[test]
    fn classify_text_marks_quotes_and_stops_at_the_quoted_original() {
        let html = "<p>Yes</p><blockquote>old<blockquote>older</blockquote></blockquote>\
            <div class=\"gmail_quote\">On Mon wrote</div>";
        assert_eq!(
            html_to_text(
                html,
                Style::Classify {
                    stop_at_quote: false
                }
            ),
            "Yes\n> old\n> > older\nOn Mon wrote\n"
        );
        assert_eq!(
            html_to_text(
                html,
                Style::Classify {
                    stop_at_quote: true
                }
            ),
            "Yes\n> old\n> > older\n"
        );
    }
}
