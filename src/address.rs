//! One strict parser for contact addresses, used wherever an address enters followup
//! (the contacts CSV, the command line), so that what is accepted at import is what an
//! SMTP server accepts at send time.
//!
//! An RFC 5321 mailbox, narrowed: a dot-atom local part (no quoted local parts, so no
//! `@` or spaces in it), a domain name (no address literals such as `[1.2.3.4]`), no
//! control characters and no invisible formatting characters (bidirectional overrides,
//! zero-width spaces) that would make an address read differently than it routes.
//! International domains are stored as A-labels (`bücher.example` →
//! `xn--bcher-kva.example`), so the same domain is one domain; a non-ASCII local part
//! is kept (it needs a server with SMTPUTF8, which the SMTP client checks).

use std::fmt;

/// Why an address was refused. The input is shown with control and formatting
/// characters escaped, so the message cannot rearrange a terminal line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty email")]
    Empty,
    #[error("'{0}' contains spaces, control or invisible formatting characters")]
    Invisible(String),
    #[error("'{0}' has no '@'")]
    NoAt(String),
    #[error("'{0}' has more than one '@' (quoted local parts are not accepted)")]
    ManyAt(String),
    #[error("'{0}' has nothing before '@'")]
    EmptyLocal(String),
    #[error("'{0}': quoted local parts are not accepted")]
    Quoted(String),
    #[error("'{0}': '{1}' is not allowed in the part before '@'")]
    LocalChar(String, char),
    #[error("'{0}': dots in the part before '@' must separate words")]
    LocalDots(String),
    #[error("'{0}': address literals such as [192.0.2.1] are not accepted; use a domain name")]
    Literal(String),
    #[error("'{0}': '{1}' is not a mail domain")]
    Domain(String, String),
    #[error("'{0}' is too long")]
    TooLong(String),
}

/// A contact's address, normalised: local part lower-cased (mailbox providers treat it
/// case-insensitively, and duplicates that differ only in case are the commonest CSV
/// mistake), domain as lower-case A-labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress(String);

/// Characters that do not show but change how text reads: bidirectional marks,
/// embeddings, overrides and isolates, zero-width characters, the BOM, soft hyphen.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

/// `s` with control and invisible characters written as escapes (`\u{202e}`), the
/// rest as it is: what an error message may show of an address.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || invisible(c) || (c.is_whitespace() && c != ' ') {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// RFC 5322 atext, plus any other non-ASCII character (RFC 6531).
fn local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

impl EmailAddress {
    /// Parses and normalises. Surrounding spaces, a `mailto:` prefix and angle brackets
    /// are forgiven (they come with copied addresses); nothing else is.
    pub fn parse(raw: &str) -> Result<EmailAddress, AddressError> {
        let s = raw.trim();
        let s = s.strip_prefix("mailto:").unwrap_or(s);
        let s = s.trim_start_matches('<').trim_end_matches('>').trim();
        let shown = || escape(s);
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || invisible(c))
        {
            return Err(AddressError::Invisible(shown()));
        }
        // RFC 5321 §4.5.3.1.3: a path is at most 256 octets, so an address 254.
        if s.len() > 254 {
            return Err(AddressError::TooLong(
                s.chars().take(40).collect::<String>() + "…",
            ));
        }
        let (local, domain) = match s.split_once('@') {
            None => return Err(AddressError::NoAt(shown())),
            Some((_, d)) if d.contains('@') => return Err(AddressError::ManyAt(shown())),
            Some(parts) => parts,
        };
        if local.is_empty() {
            return Err(AddressError::EmptyLocal(shown()));
        }
        if local.starts_with('"') {
            return Err(AddressError::Quoted(shown()));
        }
        if let Some(c) = local.chars().find(|c| *c != '.' && !local_char(*c)) {
            return Err(AddressError::LocalChar(shown(), c));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(AddressError::LocalDots(shown()));
        }
        if local.len() > 64 {
            return Err(AddressError::TooLong(shown()));
        }
        if domain.starts_with('[') {
            return Err(AddressError::Literal(shown()));
        }
        let bad_domain = || AddressError::Domain(shown(), escape(domain));
        // UTS 46 with the STD3 rules: maps case and width, refuses what DNS cannot hold.
        let ascii = idna::domain_to_ascii_strict(domain).map_err(|_| bad_domain())?;
        let labels: Vec<&str> = ascii.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let tld_ok = labels
            .last()
            .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_digit()));
        if labels.len() < 2 || !labels.iter().all(label_ok) || !tld_ok || ascii.len() > 253 {
            return Err(bad_domain());
        }
        let address = format!("{}@{ascii}", local.to_lowercase());
        if address.len() > 254 {
            return Err(AddressError::TooLong(shown()));
        }
        Ok(EmailAddress(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        EmailAddress::parse(s)
            .map(EmailAddress::into_string)
            .unwrap()
    }

    fn err(s: &str) -> String {
        EmailAddress::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn normalises_case_brackets_and_idn() {
        assert_eq!(ok("  Li.Lei@Example.CN "), "li.lei@example.cn");
        assert_eq!(ok("<hans@beispiel.de>"), "hans@beispiel.de");
        assert_eq!(ok("mailto:x@y.com"), "x@y.com");
        assert_eq!(ok("kim@Bücher.Example"), "kim@xn--bcher-kva.example");
        assert_eq!(ok("o'brien+tag@example.ie"), "o'brien+tag@example.ie");
        assert_eq!(ok("李雷@例子.中国"), "李雷@xn--fsqu00a.xn--fiqs8s");
    }

    #[test]
    fn refuses_what_smtp_would_refuse_or_misread() {
        assert_eq!(err(""), "empty email");
        assert!(err("no-at-sign").contains("has no '@'"));
        assert!(err("a@localhost").contains("is not a mail domain"));
        assert!(err("\"a@b\"@example.com").contains("more than one '@'"));
        assert!(err("\"ab\"@example.com").contains("quoted local parts"));
        assert!(err("a@[192.0.2.1]").contains("address literals"));
        assert!(err("a@192.0.2.1").contains("is not a mail domain"));
        assert!(err("a b@c.com").contains("spaces"));
        assert!(err("a@b.com\r\nBcc: x@y.z").contains("control"));
        // U+202E RIGHT-TO-LEFT OVERRIDE: shown escaped, never raw.
        let e = err("moc.elgoog\u{202E}@evil.example");
        assert!(e.contains("\\u{202e}") && !e.contains('\u{202E}'), "{e}");
        assert!(err("a\u{200B}b@example.com").contains("invisible"));
        assert!(err(".a@example.com").contains("dots"));
        assert!(err("a..b@example.com").contains("dots"));
        assert!(err("a(b)@example.com").contains("'(' is not allowed"));
        assert!(err("a@-x.example").contains("not a mail domain"));
        assert!(err("a@x_y.example").contains("not a mail domain"));
        assert!(err(&format!("{}@example.com", "a".repeat(65))).contains("too long"));
    }
}
