//! Link rewriting for click tracking, pure: finds each `<a href>` in an HTML part,
//! keeps the URL the browser would have followed (entities decoded) and puts a
//! tracking URL in its place; adds the open pixel. Only http(s) links are tracked:
//! `mailto:`, `tel:`, anchors, the unsubscribe link and links marked
//! `data-track="off"` stay as they are. The stored URLs are the only places a click can
//! lead, so nothing in a request ever chooses a redirect target.

use crate::template::{decode_entities, escape_html};

/// An HTML part after rewriting, and the original URLs by link index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub html: String,
    pub links: Vec<String>,
}

/// Rewrites `html`: the n-th tracked link's href becomes `click(n)`; the pixel (an
/// `<img>` of `pixel_url`), when given, goes before `</body>` or at the end.
pub fn rewrite(
    html: &str,
    unsubscribe_url: Option<&str>,
    click: impl Fn(usize) -> String,
    pixel_url: Option<&str>,
) -> Rewritten {
    let mut out = String::with_capacity(html.len() + 256);
    let mut links = Vec::new();
    let mut rest = html;
    while let Some(start) = find_tag(rest, "a") {
        let Some(end) = tag_end(&rest[start..]) else {
            break;
        };
        let tag = &rest[start..start + end];
        out.push_str(&rest[..start]);
        match href(tag) {
            Some((range, raw)) if !skipped(tag) => {
                let url = decode_entities(raw.trim());
                if trackable(&url, unsubscribe_url) {
                    out.push_str(&tag[..range.start]);
                    out.push('"');
                    out.push_str(&escape_html(&click(links.len())));
                    out.push('"');
                    out.push_str(&tag[range.end..]);
                    links.push(url);
                } else {
                    out.push_str(tag);
                }
            }
            _ => out.push_str(tag),
        }
        rest = &rest[start + end..];
    }
    out.push_str(rest);
    if let Some(pixel) = pixel_url {
        let img = format!(
            "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
            escape_html(pixel)
        );
        match out.to_ascii_lowercase().rfind("</body") {
            Some(at) => out.insert_str(at, &img),
            None => out.push_str(&img),
        }
    }
    Rewritten { html: out, links }
}

/// Byte offset of the next `<NAME` tag (case-insensitive, followed by whitespace, `>`
/// or `/`), skipping comments.
fn find_tag(s: &str, name: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(off) = s[i..].find('<') {
        let at = i + off;
        if s[at..].starts_with("<!--") {
            i = match s[at..].find("-->") {
                Some(e) => at + e + 3,
                None => return None,
            };
            continue;
        }
        let after = at + 1 + name.len();
        if after <= s.len()
            && bytes[at + 1..after].eq_ignore_ascii_case(name.as_bytes())
            && bytes
                .get(after)
                .is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
        {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// Length of the tag at the start of `s`, up to and including its `>`, minding quotes.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, b) in s.bytes().enumerate() {
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The value of the `name` attribute in a tag: the byte range of the whole value as
/// written (with its quotes) and the value itself.
fn attr<'a>(tag: &'a str, name: &str) -> Option<(std::ops::Range<usize>, &'a str)> {
    let bytes = tag.as_bytes();
    let mut i = 0;
    // Past the tag name.
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
        i += 1;
    }
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] == b'>' {
            return None;
        }
        let name_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let this = &tag[name_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            continue; // an attribute without a value
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        let (value, end) = match bytes.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                let close = tag[i + 1..].find(q as char)? + i + 1;
                (&tag[i + 1..close], close + 1)
            }
            _ => {
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                    i += 1;
                }
                (&tag[value_start..i], i)
            }
        };
        if this.eq_ignore_ascii_case(name) {
            return Some((value_start..end, value));
        }
        i = end;
    }
}

fn href(tag: &str) -> Option<(std::ops::Range<usize>, &str)> {
    attr(tag, "href")
}

fn skipped(tag: &str) -> bool {
    attr(tag, "data-track").is_some_and(|(_, v)| v.eq_ignore_ascii_case("off"))
}

fn trackable(url: &str, unsubscribe_url: Option<&str>) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")) && unsubscribe_url != Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(n: usize) -> String {
        format!("https://t.example/c/TOKEN{n}")
    }

    #[test]
    fn http_links_are_rewritten_in_order_and_their_urls_kept() {
        let html = r#"<p>See <a href="https://shop.example/led?x=1&amp;y=2">panels</a> and <A class=x HREF='http://shop.example/b'>B</A>.</p>"#;
        let r = rewrite(html, None, click, None);
        assert_eq!(
            r.links,
            vec!["https://shop.example/led?x=1&y=2", "http://shop.example/b"]
        );
        assert_eq!(
            r.html,
            r#"<p>See <a href="https://t.example/c/TOKEN0">panels</a> and <A class=x HREF="https://t.example/c/TOKEN1">B</A>.</p>"#
        );
    }

    #[test]
    fn mailto_tel_anchors_unsubscribe_and_marked_links_stay() {
        let html = concat!(
            r#"<a href="mailto:iris@example.com">mail</a>"#,
            r#"<a href="tel:+861012345678">call</a>"#,
            r##"<a href="#top">top</a>"##,
            r#"<a href="https://t.example/u/UNSUB">unsubscribe</a>"#,
            r#"<a data-track="off" href="https://private.example/">p</a>"#,
            r#"<a name="x">no href</a>"#,
            r#"<a href="https://tracked.example/">t</a>"#,
        );
        let r = rewrite(html, Some("https://t.example/u/UNSUB"), click, None);
        assert_eq!(r.links, vec!["https://tracked.example/"]);
        assert!(r.html.contains(r#"<a href="mailto:iris@example.com">"#));
        assert!(r.html.contains(r#"<a href="tel:+861012345678">"#));
        assert!(r.html.contains(r##"<a href="#top">"##));
        assert!(r.html.contains(r#"<a href="https://t.example/u/UNSUB">"#));
        assert!(r.html.contains(r#"href="https://private.example/""#));
        assert!(r
            .html
            .contains(r#"<a href="https://t.example/c/TOKEN0">t</a>"#));
    }

    #[test]
    fn tricky_markup_is_left_alone_or_handled() {
        // A '>' inside a quoted attribute, a comment with a link, <abbr> and <area>.
        let html = r#"<!-- <a href="https://old.example/"> --><abbr title="a>b">x</abbr><a title="1 > 0" href=https://u.example/p>u</a><a href="https://broken.example/"#;
        let r = rewrite(html, None, click, None);
        assert_eq!(r.links, vec!["https://u.example/p"]);
        assert!(r
            .html
            .starts_with(r#"<!-- <a href="https://old.example/"> -->"#));
        assert!(r
            .html
            .contains(r#"<a title="1 > 0" href="https://t.example/c/TOKEN0">u</a>"#));
        // An unterminated tag at the end is kept as it was.
        assert!(r.html.ends_with(r#"<a href="https://broken.example/"#));
    }

    #[test]
    fn the_pixel_goes_before_the_body_end_or_at_the_end() {
        let r = rewrite(
            "<html><body><p>Hi</p></BODY></html>",
            None,
            click,
            Some("https://t.example/o/P"),
        );
        assert!(r
            .html
            .contains(r#"<p>Hi</p><img src="https://t.example/o/P" width="1" height="1""#));
        assert!(r.html.ends_with("</BODY></html>"));
        let r = rewrite("<p>Hi</p>", None, click, Some("https://t.example/o/P"));
        assert!(r.html.starts_with("<p>Hi</p><img "));
    }

    #[test]
    fn text_in_any_script_passes_through() {
        let html = "<p>李雷，<é <a href=\"https://例え.jp/パス?q=&#x540D;\">見る</a> &éé;&amp</p>";
        let r = rewrite(html, None, click, None);
        assert_eq!(r.links, vec!["https://例え.jp/パス?q=名"]);
        assert_eq!(
            r.html,
            "<p>李雷，<é <a href=\"https://t.example/c/TOKEN0\">見る</a> &éé;&amp</p>"
        );
    }

    #[test]
    fn every_truncation_of_awkward_markup_is_handled() {
        let html = "<!--x--><a title='>' href=\"https://a.example/?a=1&amp;b=李\" data-track=on>一</a><a href=https://b.example/>b</a></body>&#x1F600;&#99999999;";
        for (end, _) in html.char_indices() {
            let r = rewrite(
                &html[..end],
                Some("x"),
                click,
                Some("https://t.example/o/P"),
            );
            assert!(r.links.len() <= 2);
            assert!(r.html.contains("https://t.example/o/P"));
        }
    }

    #[test]
    fn entities_decode_as_a_browser_would() {
        assert_eq!(decode_entities("a&amp;b&#38;c&#x26;d&quot;"), "a&b&c&d\"");
        assert_eq!(decode_entities("a&b&unknown;c&"), "a&b&unknown;c&");
    }
}
