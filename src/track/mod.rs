//! Open and click tracking and unsubscribe links. `token` signs and checks the tokens
//! that tracking and unsubscribe URLs carry; `links` rewrites HTML parts; `machine`
//! tells image proxies and link scanners from people; `pages` renders the unsubscribe
//! pages; `http` is the endpoint that serves them (and the admin pages), on `serve`'s
//! listeners with their timeouts and connection caps.

pub mod http;
pub mod links;
pub mod machine;
pub mod pages;
pub mod record;
pub mod serve;
pub mod token;

use crate::config::Http;
use crate::sequence::{Sequence, Unsubscribe};
use token::{Kind, Signer, Token};

/// The link index of the hidden honeypot link: no person sees it, so whatever follows
/// it is a machine (a security scanner that fetches every link of a message).
pub const HONEYPOT: u16 = u16::MAX;

/// Everything tracking adds to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// The message's tracking key, stored with it (hex).
    pub key: String,
    /// The HTML part with tracked links, honeypot and pixel.
    pub html: String,
    /// The original URLs of tracked links, by index.
    pub links: Vec<String>,
    /// `List-Unsubscribe` header value, for `unsubscribe: one-click`.
    pub list_unsubscribe: Option<String>,
}

/// How one daemon (or `preview`) builds tracking URLs.
#[derive(Debug, Clone)]
pub struct Links {
    http: Option<(String, Signer)>,
}

impl Links {
    /// With no `[http]`, mails carry no tracking and the unsubscribe link is a mailto:
    /// to the sender. Without a secret (only `check` and `preview` load the config
    /// that way) a throw-away one signs: such links are shown, never sent.
    pub fn new(http: Option<&Http>) -> Links {
        Links {
            http: http.map(|h| {
                let signer = h
                    .secrets
                    .as_ref()
                    .and_then(|s| Signer::new(&s.current, s.previous.as_deref()).ok())
                    .unwrap_or_else(|| {
                        let mut secret = [0u8; 32];
                        for b in &mut secret {
                            *b = fastrand::u8(..);
                        }
                        // 32 bytes is the minimum Signer::new asks for.
                        Signer::new(&secret, None).unwrap_or_else(|_| unreachable!())
                    });
                (h.public_url.clone(), signer)
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.http.is_some()
    }

    fn url(&self, kind: Kind, key: [u8; 8], link: u16) -> Option<String> {
        let (base, signer) = self.http.as_ref()?;
        let path = match kind {
            Kind::Open => "o",
            Kind::Click => "c",
            Kind::Unsubscribe => "u",
        };
        Some(format!(
            "{base}/{path}/{}",
            signer.sign(&Token { kind, key, link })
        ))
    }

    /// The mailto: that opts out by mail; the reply watcher reads its subject.
    pub fn mailto(from: &lettre::message::Mailbox) -> String {
        format!("mailto:{}?subject=unsubscribe", from.email)
    }

    /// What `{{unsubscribe_url}}` becomes in a message with this key.
    pub fn unsubscribe_url(&self, key: [u8; 8], from: &lettre::message::Mailbox) -> String {
        self.url(Kind::Unsubscribe, key, 0)
            .unwrap_or_else(|| Self::mailto(from))
    }

    /// Adds tracking to a rendered HTML part as the sequence asks.
    pub fn track(
        &self,
        seq: &Sequence,
        key: [u8; 8],
        from: &lettre::message::Mailbox,
        html: &str,
    ) -> Tracked {
        let unsubscribe = self.unsubscribe_url(key, from);
        let hex = key_hex(key);
        let list_unsubscribe = (seq.unsubscribe == Unsubscribe::OneClick).then(|| {
            match self.url(Kind::Unsubscribe, key, 0) {
                Some(https) => format!("<{https}>, <{}>", Self::mailto(from)),
                None => format!("<{}>", Self::mailto(from)),
            }
        });
        if !self.enabled() || !(seq.track.opens || seq.track.clicks) {
            return Tracked {
                key: hex,
                html: html.to_string(),
                links: Vec::new(),
                list_unsubscribe,
            };
        }
        let pixel = seq
            .track
            .opens
            .then(|| self.url(Kind::Open, key, 0))
            .flatten();
        let rewritten = if seq.track.clicks {
            links::rewrite(
                html,
                Some(&unsubscribe),
                |i| {
                    self.url(Kind::Click, key, i.min(usize::from(HONEYPOT - 1)) as u16)
                        .unwrap_or_default()
                },
                None,
            )
        } else {
            links::Rewritten {
                html: html.to_string(),
                links: Vec::new(),
            }
        };
        let mut html = rewritten.html;
        let mut extra = String::new();
        if seq.track.clicks && !rewritten.links.is_empty() {
            if let Some(trap) = self.url(Kind::Click, key, HONEYPOT) {
                // Invisible to people and to screen readers; scanners follow it.
                extra.push_str(&format!(
                    "<a href=\"{trap}\" style=\"display:none\" aria-hidden=\"true\" tabindex=\"-1\"></a>"
                ));
            }
        }
        if let Some(p) = pixel {
            extra.push_str(&format!(
                "<img src=\"{p}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">"
            ));
        }
        if !extra.is_empty() {
            match html.to_ascii_lowercase().rfind("</body") {
                Some(at) => html.insert_str(at, &extra),
                None => html.push_str(&extra),
            }
        }
        Tracked {
            key: hex,
            html,
            links: rewritten.links,
            list_unsubscribe,
        }
    }
}

/// A stored key (hex) back to bytes.
pub fn parse_key(hex: &str) -> Option<[u8; 8]> {
    if hex.len() != 16 {
        return None;
    }
    let mut key = [0u8; 8];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

pub fn key_hex(key: [u8; 8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}
