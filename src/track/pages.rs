//! The pages `/u/{token}` answers: a confirm page for `GET`, a done page for `POST`, a
//! neutral page for a token that does not check out.
//!
//! A `GET` never unsubscribes: mail security scanners fetch every link of a message, and
//! an address that unsubscribes itself whenever a scanner looks would be lost for good.
//! So the confirm page only asks, with a form whose body is the one RFC 8058 one-click
//! clients `POST` (`List-Unsubscribe=One-Click`), and the server has one path for both.
//!
//! The pages are self-contained: inline CSS, no script, no image, no font or other
//! request to anywhere, so they work in any browser, leak nothing to third parties and
//! fit the endpoint's `default-src 'none'` content security policy. They are written in
//! the sequence's language (English, Simplified Chinese and German, because that is who
//! the users write to), English when it is unset or not one of these. Every value that
//! comes from a user — the sender's name, the address, the form action — is escaped.

use crate::template::escape_html;

/// The language a page is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    /// Simplified Chinese.
    Zh,
    /// German, formal ("Sie").
    De,
}

impl Lang {
    /// The page language for a sequence's BCP 47 tag: "zh", "zh-CN", "zh-Hans", "ZH_cn"
    /// → `Zh`; "de", "de-DE", "de-AT" → `De`; anything else, or none, → `En`. Only the
    /// primary subtag counts, case-insensitively, and the three-letter ISO 639-2 codes
    /// are taken too, since that is what some CRMs export. A Traditional Chinese tag
    /// (zh-TW, zh-Hant) gets the Simplified page: closer to its reader than English.
    pub fn parse(tag: Option<&str>) -> Lang {
        let Some(tag) = tag else {
            return Lang::En;
        };
        let primary = tag.trim().split(['-', '_']).next().unwrap_or_default();
        match primary.to_ascii_lowercase().as_str() {
            "zh" | "zho" | "chi" | "cmn" => Lang::Zh,
            "de" | "deu" | "ger" => Lang::De,
            _ => Lang::En,
        }
    }

    /// The tag for `<html lang>`. Chinese is tagged by script (`zh-Hans`), not by
    /// region: the page is in Simplified characters whoever reads it, and that is what
    /// browsers and screen readers pick fonts and voices by.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-Hans",
            Lang::De => "de",
        }
    }
}

/// The name of the form field one-click unsubscribe sends; with its value below the
/// browser sends exactly `List-Unsubscribe=One-Click` (urlencoding leaves both alone).
pub const ONE_CLICK_FIELD: &str = "List-Unsubscribe";
/// The value of [`ONE_CLICK_FIELD`].
pub const ONE_CLICK_VALUE: &str = "One-Click";

/// The confirm page: says which address (masked) will stop getting mail from
/// `sender_name`, with a form that `POST`s `List-Unsubscribe=One-Click` to `action`
/// and one submit button. Nothing happens until the button is pressed.
pub fn confirm(lang: Lang, action: &str, masked_email: &str, sender_name: &str) -> String {
    let email = strong(masked_email);
    let sender = sender(lang, sender_name);
    let (title, lead, button, note) = match lang {
        Lang::En => (
            "Unsubscribe",
            format!("After you confirm, {email} will no longer receive emails from {sender}."),
            "Unsubscribe",
            "If you did not mean to unsubscribe, just close this page.",
        ),
        Lang::Zh => (
            "退订邮件",
            format!("确认后，{email} 将不再收到{sender}发送的邮件。"),
            "确认退订",
            "如果您不想退订，直接关闭此页面即可。",
        ),
        Lang::De => (
            "Abmelden",
            format!("Nach Ihrer Bestätigung erhält {email} keine E-Mails mehr von {sender}."),
            "Abmeldung bestätigen",
            "Wenn Sie sich nicht abmelden möchten, schließen Sie diese Seite einfach.",
        ),
    };
    let body = format!(
        "<p>{lead}</p>\n\
         <form method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"{ONE_CLICK_FIELD}\" value=\"{ONE_CLICK_VALUE}\">\n\
         <button type=\"submit\">{button}</button>\n\
         </form>\n\
         <p class=\"note\">{note}</p>\n",
        action = escape_html(action),
    );
    page(lang, title, title, &body)
}

/// After the `POST`: the address is unsubscribed. The same page whether it just was or
/// already had been, so pressing the button twice, or a one-click client and a person
/// both acting, reads the same and says nothing new.
pub fn done(lang: Lang, masked_email: &str, sender_name: &str) -> String {
    let email = strong(masked_email);
    let sender = sender(lang, sender_name);
    let (title, text, close) = match lang {
        Lang::En => (
            "You are unsubscribed",
            format!("{email} will no longer receive emails from {sender}."),
            "You can close this page now.",
        ),
        Lang::Zh => (
            "您已退订",
            format!("{email} 将不再收到{sender}发送的邮件。"),
            "您现在可以关闭此页面。",
        ),
        Lang::De => (
            "Sie wurden abgemeldet",
            format!("{email} erhält keine E-Mails mehr von {sender}."),
            "Sie können diese Seite jetzt schließen.",
        ),
    };
    let body = format!("<p>{text}</p>\n<p class=\"note\">{close}</p>\n");
    page(lang, title, title, &body)
}

/// For an unknown, tampered or expired token: the link is not valid, and no more than
/// that (which of these it was would help someone probing tokens, not the reader). It
/// names the way out that always works: replying stops a sequence.
pub fn not_found(lang: Lang) -> String {
    let (title, heading, text) = match lang {
        Lang::En => (
            "Link not valid",
            "This link is not valid",
            "It may be incomplete or out of date. If you want to stop receiving these \
             emails, reply to the email you received and say so.",
        ),
        Lang::Zh => (
            "链接无效",
            "此链接无效",
            "该链接可能不完整或已过期。如果您不想再收到这些邮件，请直接回复您收到的邮件告知我们。",
        ),
        Lang::De => (
            "Link ungültig",
            "Dieser Link ist ungültig",
            "Er ist möglicherweise unvollständig oder nicht mehr aktuell. Wenn Sie diese \
             E-Mails nicht mehr erhalten möchten, antworten Sie bitte einfach auf die \
             E-Mail, die Sie erhalten haben.",
        ),
    };
    page(lang, title, heading, &format!("<p>{text}</p>\n"))
}

/// Masks an address for the page: "li.lei@example.cn" → "l****i@example.cn". Enough for
/// its owner to recognise it, not enough to harvest it from a forwarded link or a
/// screenshot. The mask is always four stars, so it does not tell the length either,
/// and never more than half of the local part shows: its first and last character
/// from four characters on, only the first for two or three, none for one. Characters
/// are counted as chars, not bytes ("李雷@example.cn" → "李****@example.cn"). The
/// domain stays: it is what the reader recognises first, and it is not secret. Without
/// an '@' the whole text is masked as a local part.
pub fn mask_email(email: &str) -> String {
    let email = email.trim();
    // The last '@': a quoted local part may hold one, a domain never does.
    let (local, domain) = match email.rfind('@') {
        Some(at) => (&email[..at], Some(&email[at + 1..])),
        None => (email, None),
    };
    let chars: Vec<char> = local.chars().collect();
    let mut out = String::new();
    match chars.as_slice() {
        [] | [_] => {}
        [first, _] | [first, _, _] => out.push(*first),
        [first, .., last] => {
            out.push(*first);
            out.push_str("****");
            out.push(*last);
        }
    }
    if chars.len() < 4 {
        out.push_str("****");
    }
    if let Some(domain) = domain {
        out.push('@');
        out.push_str(domain);
    }
    out
}

/// A user value, escaped and emphasised.
fn strong(text: &str) -> String {
    format!("<strong>{}</strong>", escape_html(text))
}

/// The sender as the sentence names it: the escaped name, or "this sender" when there
/// is none (a mailbox removed from the config since the mail went out). In Chinese a
/// name stands between spaces, as Latin text within Chinese usually does, while the
/// Chinese fallback runs on without them; so the Chinese sentences leave the spacing
/// to this.
fn sender(lang: Lang, name: &str) -> String {
    let name = name.trim();
    if !name.is_empty() {
        return match lang {
            Lang::Zh => format!(" {} ", strong(name)),
            Lang::En | Lang::De => strong(name),
        };
    }
    match lang {
        Lang::En => "this sender",
        Lang::Zh => "该发件人",
        Lang::De => "diesem Absender",
    }
    .to_string()
}

/// Colours meet WCAG AA with room to spare (text 16:1, note 8.6:1, button 6.7:1);
/// sizes are relative and nothing has a fixed width, so the page reflows at 200% zoom
/// and on a phone; long addresses and names wrap instead of overflowing. Fonts are the
/// system's own, with the usual CJK faces named so Chinese does not fall back to a
/// mismatched one.
const STYLE: &str = "body{margin:0;background:#fff;color:#1a1a1a;\
font:100%/1.6 system-ui,-apple-system,\"Segoe UI\",Roboto,\"PingFang SC\",\"Microsoft YaHei\",\
\"Noto Sans CJK SC\",sans-serif}\
main{max-width:36rem;margin:0 auto;padding:2.5rem 1.25rem;overflow-wrap:anywhere}\
h1{font-size:1.6rem;line-height:1.3;margin:0 0 1rem}\
.note{color:#444}\
button{font:inherit;font-weight:600;color:#fff;background:#1d4ed8;border:2px solid #1d4ed8;\
border-radius:.375rem;padding:.6em 1.4em;cursor:pointer}\
button:hover{background:#1e40af;border-color:#1e40af}\
button:focus-visible{outline:3px solid #1a1a1a;outline-offset:2px}";

/// The frame every page shares. `title`, `heading` and `body` are trusted here: the
/// callers write them from fixed texts and escaped values.
fn page(lang: Lang, title: &str, heading: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n\
         <html lang=\"{lang}\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title}</title>\n\
         <style>{STYLE}</style>\n\
         </head>\n\
         <body>\n\
         <main>\n\
         <h1>{heading}</h1>\n\
         {body}\
         </main>\n\
         </body>\n\
         </html>\n",
        lang = lang.tag(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Lang; 3] = [Lang::En, Lang::Zh, Lang::De];
    const HOSTILE: &str = "<script>alert(\"x\")</script> O'Brien & Co";

    /// Checks that the non-void elements nest and close: a cheap guard against a
    /// template edit that breaks the markup.
    fn assert_balanced(html: &str) {
        const VOID: [&str; 3] = ["meta", "input", "br"];
        let mut open: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(lt) = rest.find('<') {
            let gt = rest[lt..].find('>').expect("unclosed tag") + lt;
            let tag = &rest[lt + 1..gt];
            rest = &rest[gt + 1..];
            if tag.starts_with('!') {
                continue;
            }
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if VOID.contains(&name.as_str()) {
                continue;
            }
            if tag.starts_with('/') {
                assert_eq!(open.pop().as_deref(), Some(name.as_str()), "{html}");
            } else {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "unclosed {open:?} in {html}");
    }

    fn assert_frame(html: &str, lang: Lang) {
        assert!(html.starts_with("<!doctype html>\n"), "{html}");
        assert!(
            html.contains(&format!("<html lang=\"{}\">", lang.tag())),
            "{html}"
        );
        for needle in [
            "<meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<meta name=\"robots\" content=\"noindex\">",
            "<main>",
            "<h1>",
        ] {
            assert!(html.contains(needle), "no {needle} in {html}");
        }
        // One title, not empty.
        let title = html
            .split_once("<title>")
            .and_then(|(_, t)| t.split_once("</title>"))
            .map(|(t, _)| t)
            .expect("no title");
        assert!(!title.trim().is_empty());
        assert_eq!(html.matches("<h1>").count(), 1);
        // Nothing that runs or loads: no script, no external resource, no tracking.
        for banned in [
            "<script", "<img", "<link", "<iframe", "src=", "http:", "https:", "url(",
        ] {
            assert!(!html.contains(banned), "{banned} in {html}");
        }
        assert_balanced(html);
    }

    #[test]
    fn each_language_has_its_lang_attribute_and_a_post_form_with_the_one_click_field() {
        for lang in ALL {
            let html = confirm(lang, "/u/abc_DEF-123", "l****i@example.cn", "ACME GmbH");
            assert_frame(&html, lang);
            assert!(
                html.contains("<form method=\"post\" action=\"/u/abc_DEF-123\">"),
                "{html}"
            );
            assert!(
                html.contains(
                    "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
                ),
                "{html}"
            );
            assert_eq!(html.matches("<button").count(), 1, "{html}");
            let label = html
                .split_once("<button type=\"submit\">")
                .and_then(|(_, b)| b.split_once("</button>"))
                .map(|(b, _)| b)
                .expect("no submit button");
            assert!(!label.trim().is_empty());
            assert!(
                html.contains("<strong>l****i@example.cn</strong>"),
                "{html}"
            );
            assert!(html.contains("<strong>ACME GmbH</strong>"), "{html}");
        }
    }

    #[test]
    fn texts_are_in_their_language() {
        let zh = confirm(Lang::Zh, "/u/t", "a@b.cn", "ACME");
        assert!(
            zh.contains("退订") && zh.contains(">确认退订</button>"),
            "{zh}"
        );
        assert!(done(Lang::Zh, "a@b.cn", "ACME").contains("<h1>您已退订</h1>"));
        let de = confirm(Lang::De, "/u/t", "a@b.de", "ACME");
        assert!(de.contains(">Abmeldung bestätigen</button>"), "{de}");
        assert!(de.contains("Sie ") && !de.contains(" du "), "{de}");
        assert!(done(Lang::De, "a@b.de", "ACME").contains("Sie wurden abgemeldet"));
        let en = confirm(Lang::En, "/u/t", "a@b.com", "ACME");
        assert!(en.contains(">Unsubscribe</button>"), "{en}");
        // Each language is its own text, not English with another lang attribute.
        let bodies: Vec<String> = ALL
            .iter()
            .map(|&l| not_found(l).split_once("<main>").unwrap().1.to_string())
            .collect();
        assert_ne!(bodies[0], bodies[1]);
        assert_ne!(bodies[0], bodies[2]);
        assert_ne!(bodies[1], bodies[2]);
    }

    #[test]
    fn hostile_sender_names_addresses_and_actions_are_escaped() {
        let action = "/u/x\"><script>alert(1)</script><a href='";
        for lang in ALL {
            for html in [
                confirm(lang, action, HOSTILE, HOSTILE),
                done(lang, HOSTILE, HOSTILE),
            ] {
                assert!(!html.contains("<script"), "{html}");
                assert!(!html.contains("O'Brien"), "{html}");
                assert!(!html.contains("alert(\""), "{html}");
                assert!(
                    html.contains(
                        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; O&#39;Brien &amp; Co"
                    ),
                    "{html}"
                );
                assert_balanced(&html);
            }
            let html = confirm(lang, action, "a@b", "ACME");
            assert!(
                html.contains(
                    "action=\"/u/x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;a href=&#39;\">"
                ),
                "{html}"
            );
        }
    }

    #[test]
    fn a_missing_sender_name_reads_as_this_sender() {
        let html = done(Lang::En, "a****@b.com", "  ");
        assert!(html.contains("emails from this sender."), "{html}");
        assert!(!html.contains("<strong></strong>"), "{html}");
        assert!(confirm(Lang::Zh, "/u/t", "a@b", "").contains("该发件人"));
        assert!(confirm(Lang::De, "/u/t", "a@b", "").contains("von diesem Absender"));
    }

    #[test]
    fn done_and_not_found_pages_are_complete_and_have_no_form() {
        for lang in ALL {
            let d = done(lang, "l****i@example.cn", "ACME");
            assert_frame(&d, lang);
            assert!(!d.contains("<form") && !d.contains("<button"), "{d}");
            let n = not_found(lang);
            assert_frame(&n, lang);
            assert!(!n.contains("<form") && !n.contains("<strong>"), "{n}");
        }
    }

    #[test]
    fn mask_email_keeps_enough_to_recognise_and_no_more() {
        assert_eq!(mask_email("li.lei@example.cn"), "l****i@example.cn");
        assert_eq!(mask_email("abcd@example.com"), "a****d@example.com");
        assert_eq!(mask_email("bob@example.com"), "b****@example.com");
        assert_eq!(mask_email("li@example.cn"), "l****@example.cn");
        assert_eq!(mask_email("x@example.com"), "****@example.com");
        assert_eq!(mask_email("@example.com"), "****@example.com");
        // The same mask for every length: it does not tell how long the address is.
        assert_eq!(
            mask_email("averyveryverylongname@example.com"),
            "a****e@example.com"
        );
        assert_eq!(mask_email("  li.lei@example.cn\n"), "l****i@example.cn");
    }

    #[test]
    fn mask_email_counts_chars_not_bytes_keeps_case_and_copes_without_at() {
        assert_eq!(mask_email("李雷@example.cn"), "李****@example.cn");
        assert_eq!(mask_email("李小雷明@例子.中国"), "李****明@例子.中国");
        assert_eq!(mask_email("Jürgen.Müller@Firma.DE"), "J****r@Firma.DE");
        assert_eq!(mask_email("ö@x.de"), "****@x.de");
        assert_eq!(mask_email("Li.Lei@Example.CN"), "L****i@Example.CN");
        assert_eq!(mask_email("postmaster"), "p****r");
        assert_eq!(mask_email("ab"), "a****");
        assert_eq!(mask_email(""), "****");
        // A quoted local part with an '@': the domain is after the last one.
        assert_eq!(mask_email("\"a@b\"@example.com"), "\"****\"@example.com");
    }

    #[test]
    fn lang_parse_reads_the_primary_subtag() {
        for tag in [
            "zh",
            "zh-CN",
            "zh-Hans",
            "ZH_cn",
            "zh-Hans-CN",
            "zh-TW",
            " zh ",
            "zho",
        ] {
            assert_eq!(Lang::parse(Some(tag)), Lang::Zh, "{tag}");
        }
        for tag in ["de", "de-DE", "DE-at", "de_CH", "deu", "ger"] {
            assert_eq!(Lang::parse(Some(tag)), Lang::De, "{tag}");
        }
        for tag in [
            "en", "en-GB", "fr", "", "-", "zhx", "d", "dex", "german", "x-zh",
        ] {
            assert_eq!(Lang::parse(Some(tag)), Lang::En, "{tag}");
        }
        assert_eq!(Lang::parse(None), Lang::En);
    }

    #[test]
    fn lang_tags_are_bcp47() {
        assert_eq!(Lang::En.tag(), "en");
        assert_eq!(Lang::Zh.tag(), "zh-Hans");
        assert_eq!(Lang::De.tag(), "de");
        for lang in ALL {
            assert_eq!(Lang::parse(Some(lang.tag())), lang);
        }
    }
}
