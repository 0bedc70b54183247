//! The unsubscribe pages, pure: the confirm page that `GET /u/{token}` shows, the page
//! after the POST, and the page for a link that is not valid. A GET never
//! unsubscribes: mail security scanners follow every link, so the page asks for one
//! click on a button, which POSTs the same body a mail provider sends for RFC 8058
//! one-click (`List-Unsubscribe=One-Click`): one code path for both.
//!
//! Plain HTML5 with inline CSS, no script, no external resources, nothing tracked;
//! every dynamic value escaped. The address is shown masked, so that a forwarded link
//! does not hand the address to whoever opens it.

use crate::template::escape_html;

/// The page's language: the sequence's `language:`, English when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
    De,
}

impl Lang {
    /// `zh`, `zh-CN`, `zh_Hans` → Zh; `de`, `de-AT` → De; anything else → En.
    pub fn parse(tag: Option<&str>) -> Lang {
        let primary = tag
            .and_then(|t| t.split(['-', '_']).next())
            .map(|p| p.trim().to_ascii_lowercase());
        match primary.as_deref() {
            Some("zh") => Lang::Zh,
            Some("de") => Lang::De,
            _ => Lang::En,
        }
    }

    /// The BCP 47 tag for `<html lang>`: the pages are written in Simplified Chinese.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-Hans",
            Lang::De => "de",
        }
    }
}

struct Texts {
    title: &'static str,
    /// `{email}` and `{sender}` are replaced (escaped).
    ask: &'static str,
    button: &'static str,
    done_title: &'static str,
    done: &'static str,
    invalid_title: &'static str,
    invalid: &'static str,
}

fn texts(lang: Lang) -> Texts {
    match lang {
        Lang::En => Texts {
            title: "Unsubscribe",
            ask: "Stop emails from {sender} to {email}?",
            button: "Unsubscribe",
            done_title: "You are unsubscribed",
            done: "{email} will get no more emails from {sender}.",
            invalid_title: "Link not valid",
            invalid: "This unsubscribe link is not valid. To stop emails, reply to the message and ask to be removed.",
        },
        Lang::Zh => Texts {
            title: "退订",
            ask: "不再接收 {sender} 发送到 {email} 的邮件？",
            button: "确认退订",
            done_title: "您已退订",
            done: "{email} 将不再收到 {sender} 的邮件。",
            invalid_title: "链接无效",
            invalid: "此退订链接无效。如需停止接收邮件，请直接回复该邮件并说明。",
        },
        Lang::De => Texts {
            title: "Abmelden",
            ask: "Keine E-Mails mehr von {sender} an {email}?",
            button: "Abmelden",
            done_title: "Sie sind abgemeldet",
            done: "{email} erhält keine E-Mails mehr von {sender}.",
            invalid_title: "Link ungültig",
            invalid: "Dieser Abmeldelink ist ungültig. Antworten Sie einfach auf die E-Mail, um keine weiteren Nachrichten zu erhalten.",
        },
    }
}

fn fill(text: &str, email: &str, sender: &str) -> String {
    escape_html(text)
        .replace(
            "{email}",
            &format!("<strong>{}</strong>", escape_html(email)),
        )
        .replace("{sender}", &escape_html(sender))
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'PingFang SC','Microsoft YaHei',sans-serif;\
background:#f6f7f9;color:#1a1a1a;margin:0;line-height:1.5}\
main{max-width:32rem;margin:3rem auto;padding:1.5rem 2rem;background:#fff;border-radius:8px;border:1px solid #d8dbe0}\
h1{font-size:1.5rem;margin:0 0 1rem}p{font-size:1rem}\
button{font:inherit;font-size:1rem;padding:.6rem 1.4rem;border-radius:6px;border:0;background:#1d4ed8;color:#fff;cursor:pointer}\
button:focus{outline:3px solid #f59e0b;outline-offset:2px}";

fn page(lang: Lang, title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n\
         <body>\n<main>\n<h1>{}</h1>\n{body}\n</main>\n</body>\n</html>\n",
        lang.tag(),
        escape_html(title),
        escape_html(title),
    )
}

/// The confirm page: the masked address, the sender, and one button that POSTs
/// `List-Unsubscribe=One-Click` to `action`.
pub fn confirm(lang: Lang, action: &str, masked_email: &str, sender_name: &str) -> String {
    let t = texts(lang);
    let body = format!(
        "<p>{}</p>\n<form method=\"post\" action=\"{}\">\n\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
         <button type=\"submit\">{}</button>\n</form>",
        fill(t.ask, masked_email, sender_name),
        escape_html(action),
        escape_html(t.button),
    );
    page(lang, t.title, &body)
}

/// After the POST (also when the address already was unsubscribed: same page).
pub fn done(lang: Lang, masked_email: &str, sender_name: &str) -> String {
    let t = texts(lang);
    page(
        lang,
        t.done_title,
        &format!(
            "<p role=\"status\">{}</p>",
            fill(t.done, masked_email, sender_name)
        ),
    )
}

/// For an unknown, tampered or foreign token: no detail.
pub fn not_found(lang: Lang) -> String {
    let t = texts(lang);
    page(
        lang,
        t.invalid_title,
        &format!("<p>{}</p>", escape_html(t.invalid)),
    )
}

/// `li.lei@example.cn` → `l****i@example.cn`: enough for the person to recognise
/// their address, not enough to harvest it from a forwarded link.
pub fn mask_email(email: &str) -> String {
    let (local, domain) = match email.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (email, None),
    };
    let chars: Vec<char> = local.chars().collect();
    let masked: String = match chars.len() {
        0 => String::new(),
        1 => "*".into(),
        2 => format!("{}*", chars[0]),
        n => format!("{}{}{}", chars[0], "*".repeat((n - 2).min(6)), chars[n - 1]),
    };
    match domain {
        Some(d) => format!("{masked}@{d}"),
        None => masked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_parse() {
        assert_eq!(Lang::parse(Some("zh-CN")), Lang::Zh);
        assert_eq!(Lang::parse(Some("ZH_hans")), Lang::Zh);
        assert_eq!(Lang::parse(Some("de-AT")), Lang::De);
        assert_eq!(Lang::parse(Some("fr")), Lang::En);
        assert_eq!(Lang::parse(None), Lang::En);
    }

    #[test]
    fn confirm_page_posts_the_one_click_body() {
        for (lang, tag, button) in [
            (Lang::En, "en", "Unsubscribe"),
            (Lang::Zh, "zh-Hans", "确认退订"),
            (Lang::De, "de", "Abmelden"),
        ] {
            let p = confirm(lang, "/u/TOKEN", "l***i@example.cn", "Iris Zhang");
            assert!(p.starts_with("<!doctype html>"), "{p}");
            assert!(p.contains(&format!("<html lang=\"{tag}\">")), "{p}");
            assert!(
                p.contains("<form method=\"post\" action=\"/u/TOKEN\">"),
                "{p}"
            );
            assert!(
                p.contains("name=\"List-Unsubscribe\" value=\"One-Click\""),
                "{p}"
            );
            assert!(
                p.contains(&format!("<button type=\"submit\">{button}</button>")),
                "{p}"
            );
            assert!(p.contains("<main>") && p.contains("<h1>"), "{p}");
            assert!(p.contains("<strong>l***i@example.cn</strong>"), "{p}");
            assert!(!p.contains("<script"), "{p}");
        }
        assert!(done(Lang::Zh, "l*i@x.cn", "Iris").contains("您已退订"));
        assert!(not_found(Lang::De).contains("ungültig"));
    }

    #[test]
    fn hostile_values_are_escaped() {
        let p = confirm(
            Lang::En,
            "/u/\"><script>x</script>",
            "<img src=x>@e.com",
            "Evil <script>alert(1)</script> \"Co\"",
        );
        assert!(!p.contains("<script>"), "{p}");
        assert!(!p.contains("<img src=x>"), "{p}");
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{p}");
        assert!(p.contains("action=\"/u/&quot;&gt;&lt;script&gt;"), "{p}");
    }

    #[test]
    fn masks_addresses() {
        assert_eq!(mask_email("li.lei@example.cn"), "l****i@example.cn");
        assert_eq!(mask_email("a@example.cn"), "*@example.cn");
        assert_eq!(mask_email("ab@example.cn"), "a*@example.cn");
        assert_eq!(mask_email("李雷雷@example.cn"), "李*雷@example.cn");
        assert_eq!(mask_email("Max.Mustermann@firma.de"), "M******n@firma.de");
        assert_eq!(mask_email("nobody"), "n****y");
        assert_eq!(mask_email(""), "");
    }
}
