//! Small text scanners shared by the classifier: lower-casing for matching, char-safe
//! slicing, addresses in free text.

/// Lower-cases for matching: Unicode lower case, typographic apostrophes and
/// full-width digits and punctuation folded to ASCII, exotic spaces to ' '.
pub(super) fn lower(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            c if c.is_ascii() => out.push(c),
            '\u{2018}' | '\u{2019}' | '\u{02BC}' => out.push('\''),
            '\u{00A0}' | '\u{2002}'..='\u{200A}' | '\u{3000}' => out.push(' '),
            '\u{2013}' | '\u{2014}' => out.push('-'),
            '\u{FF10}'..='\u{FF19}' => {
                out.push(char::from(b'0' + (c as u32 - 0xFF10) as u8));
            }
            '\u{FF0E}' => out.push('.'),
            '\u{FF0F}' => out.push('/'),
            '\u{FF0D}' => out.push('-'),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// The largest char boundary of `s` at or below `i`.
pub(super) fn char_floor(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(super) fn cap(s: &str, max: usize) -> &str {
    &s[..char_floor(s, max)]
}

pub(super) fn shorten(s: &str, max: usize) -> String {
    let t = s.trim();
    if t.len() <= max {
        t.to_string()
    } else {
        format!("{}…", &t[..char_floor(t, max)])
    }
}

/// An address without the transport prefixes some MTAs glue to it: "smtp=a@b"
/// (Lotus, some gateways), "smtp:a@b" (Exchange proxy addresses), "rfc822;a@b".
pub(super) fn strip_address_prefix(a: &str) -> &str {
    let mut a = a.trim();
    for p in ["smtp=", "smtp:", "rfc822;", "rfc822:", "rfc822="] {
        if a.len() > p.len() && a.is_char_boundary(p.len()) && a[..p.len()].eq_ignore_ascii_case(p)
        {
            a = a[p.len()..].trim_start();
        }
    }
    a
}

/// Email addresses in lower-cased text, with their byte offsets. A plain scan around
/// each '@' (local part: RFC 5322 atext and dots; domain: letters, digits, '-', '.'),
/// which also catches "<a@b>", "mailto:a@b" and "收件人(a@b)".
pub(super) fn addresses_in(text: &str) -> Vec<(usize, String)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(off) = b[from..].iter().position(|&c| c == b'@') {
        let at = from + off;
        from = at + 1;
        let local_ok = |c: u8| c.is_ascii_alphanumeric() || b"._%+-=!#$&'*/?^`{|}~".contains(&c);
        let mut s = at;
        while s > 0 && local_ok(b[s - 1]) {
            s -= 1;
        }
        let mut e = at + 1;
        while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'-' || b[e] == b'.') {
            e += 1;
        }
        let local =
            strip_address_prefix(text[s..at].trim_start_matches(['.', '\'', '`', '/', '=']));
        let domain = text[at + 1..e].trim_end_matches(['.', '-']);
        let tld_ok = domain
            .rsplit('.')
            .next()
            .is_some_and(|t| t.len() >= 2 && t.bytes().all(|c| c.is_ascii_alphabetic()));
        if !local.is_empty() && domain.contains('.') && tld_ok {
            out.push((at - local.len(), format!("{local}@{domain}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_and_cleaned() {
        let found: Vec<String> =
            addresses_in("收件人(li@example.cn)地址不存在 <a.b@x.org>. mailto:c@d.co,")
                .into_iter()
                .map(|(_, a)| a)
                .collect();
        assert_eq!(found, ["li@example.cn", "a.b@x.org", "c@d.co"]);
        let found: Vec<String> = addresses_in("  smtp=rita@client.example\n")
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        assert_eq!(found, ["rita@client.example"]);
    }
}
