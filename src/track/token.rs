//! Tokens in tracking and unsubscribe URLs (`/o/{token}`, `/c/{token}`, `/u/{token}`).
//!
//! A token names a message by its random tracking key (never an address, never a row
//! id that counts up) and, for a click, the index of the link in that message; the URL
//! a click goes to is looked up by them, never read from the request. It is signed with
//! HMAC-SHA256 under the configured secret, truncated to 128 bits, and checked in
//! constant time. While a secret is being rotated, tokens signed with the previous one
//! still verify.
//!
//! Layout before base64url (no padding): kind (1 byte) | key (8) | link (2, big-endian)
//! | tag (16) = 27 bytes, 36 characters.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PAYLOAD: usize = 1 + 8 + 2;
const TAG: usize = 16;
/// Length of an encoded token.
pub const ENCODED_LEN: usize = 36;

/// What a token is for; part of what is signed, so an open token cannot be used as an
/// unsubscribe token for the same message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Click,
    Unsubscribe,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Open => b'o',
            Kind::Click => b'c',
            Kind::Unsubscribe => b'u',
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            b'o' => Some(Kind::Open),
            b'c' => Some(Kind::Click),
            b'u' => Some(Kind::Unsubscribe),
            _ => None,
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    /// The message's tracking key: random, stored with the message at send time.
    pub key: [u8; 8],
    /// The link's index in the message (0 for opens and unsubscribes).
    pub link: u16,
}

/// Signs with the current secret; verifies with the current one and, while rotating,
/// the previous one.
#[derive(Clone)]
pub struct Signer {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// A secret too short to sign with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the tracking secret has {0} bytes; it needs at least 32 (e.g. `openssl rand -hex 32`)")]
pub struct WeakSecret(pub usize);

const MIN_SECRET: usize = 32;

impl Signer {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Result<Signer, WeakSecret> {
        for s in std::iter::once(current).chain(previous) {
            if s.len() < MIN_SECRET {
                return Err(WeakSecret(s.len()));
            }
        }
        Ok(Signer {
            current: current.to_vec(),
            previous: previous.map(<[u8]>::to_vec),
        })
    }

    pub fn sign(&self, t: &Token) -> String {
        let payload = payload(t);
        let mut raw = [0u8; PAYLOAD + TAG];
        raw[..PAYLOAD].copy_from_slice(&payload);
        raw[PAYLOAD..].copy_from_slice(&tag(&self.current, &payload)[..TAG]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The token's contents if it is well formed and signed by one of our secrets;
    /// `None` for anything else (tampered, truncated, foreign, garbage), without
    /// saying which.
    pub fn verify(&self, text: &str) -> Option<Token> {
        if text.len() != ENCODED_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        if raw.len() != PAYLOAD + TAG {
            return None;
        }
        let (payload, given) = raw.split_at(PAYLOAD);
        let ok = |secret: &[u8]| {
            let mut mac = mac(secret);
            mac.update(payload);
            // Constant time, on the truncated tag.
            mac.verify_truncated_left(given).is_ok()
        };
        if !(ok(&self.current) || self.previous.as_deref().is_some_and(ok)) {
            return None;
        }
        let kind = Kind::from_byte(payload[0])?;
        let mut key = [0u8; 8];
        key.copy_from_slice(&payload[1..9]);
        let link = u16::from_be_bytes([payload[9], payload[10]]);
        Some(Token { kind, key, link })
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn payload(t: &Token) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[0] = t.kind.byte();
    p[1..9].copy_from_slice(&t.key);
    p[9..11].copy_from_slice(&t.link.to_be_bytes());
    p
}

fn tag(secret: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut mac = mac(secret);
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

/// A fresh random tracking key, for a message that is never stored (`preview`).
pub fn new_key() -> [u8; 8] {
    fastrand::u64(..).to_be_bytes()
}

/// Makes the tracking keys of one scheduler: 42 bits of milliseconds since 1970 (until
/// 2109), 12 bits counting within a millisecond, 10 bits of node. Keys in time order go
/// into the unique index at its right edge, where random ones landed on a random page
/// each: that index was the costliest write of a send. The clock never goes back
/// (a step back of the system clock, or more than 4,096 keys in a millisecond, borrow
/// from the next millisecond), so a scheduler never makes a key twice, and the node,
/// allocated from the database at start, keeps two schedulers apart. A key is signed
/// inside every token, so that it is guessable does not matter.
pub struct KeyClock {
    node: u64,
    last: std::sync::atomic::AtomicU64,
}

impl KeyClock {
    pub fn new(node: u16) -> KeyClock {
        KeyClock {
            node: u64::from(node & 0x3ff),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> [u8; 8] {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.at(now_ms)
    }

    fn at(&self, now_ms: u64) -> [u8; 8] {
        use std::sync::atomic::Ordering::Relaxed;
        let now = (now_ms & ((1 << 42) - 1)) << 12;
        let mut prev = self.last.load(Relaxed);
        let tick = loop {
            let next = now.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Relaxed, Relaxed)
            {
                Ok(_) => break next,
                Err(p) => prev = p,
            }
        };
        ((tick << 10) | self.node).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn token(kind: Kind, link: u16) -> Token {
        Token {
            kind,
            key: [1, 2, 3, 4, 5, 6, 7, 8],
            link,
        }
    }

    #[test]
    fn keys_follow_the_clock_never_repeat_and_carry_their_node() {
        let c = KeyClock::new(5);
        let t = 1_796_000_000_000u64;
        let a = u64::from_be_bytes(c.at(t));
        assert_eq!((a >> 22, a & 0x3ff), (t, 5));
        // 5,000 keys in one millisecond: they borrow from the next, still in order.
        let mut prev = a;
        for _ in 0..5000 {
            let k = u64::from_be_bytes(c.at(t));
            assert!(k > prev);
            prev = k;
        }
        // The system clock steps back by a second: keys still go forward.
        let back = u64::from_be_bytes(c.at(t - 1000));
        assert!(back > prev);
        // Another node at the same instant makes other keys.
        let other = u64::from_be_bytes(KeyClock::new(6).at(t));
        assert_ne!(other, a);
        // And hex text sorts as the numbers do (the column is TEXT).
        assert!(format!("{a:016x}") < format!("{back:016x}"));
    }

    #[test]
    fn a_signed_token_verifies_and_says_what_it_names() {
        let s = Signer::new(A, None).unwrap();
        for (kind, link) in [(Kind::Open, 0), (Kind::Click, 7), (Kind::Unsubscribe, 0)] {
            let t = token(kind, link);
            let text = s.sign(&t);
            assert_eq!(text.len(), ENCODED_LEN);
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(s.verify(&text), Some(t));
        }
    }

    #[test]
    fn any_changed_character_is_refused() {
        let s = Signer::new(A, None).unwrap();
        let text = s.sign(&token(Kind::Click, 3));
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..text.len() {
            for &c in alphabet {
                let mut b = text.clone().into_bytes();
                if b[i] == c {
                    continue;
                }
                b[i] = c;
                let changed = String::from_utf8(b).unwrap();
                // The last character carries 2 unused bits: some changes decode to the
                // same bytes, and those are the same token.
                if let Some(t) = s.verify(&changed) {
                    assert_eq!(i, text.len() - 1, "{changed}");
                    assert_eq!(t, token(Kind::Click, 3));
                }
            }
        }
    }

    #[test]
    fn truncated_padded_and_garbage_tokens_are_refused() {
        let s = Signer::new(A, None).unwrap();
        let text = s.sign(&token(Kind::Open, 0));
        assert_eq!(s.verify(&text[..ENCODED_LEN - 1]), None);
        assert_eq!(s.verify(&format!("{text}=")), None);
        assert_eq!(s.verify(&format!("{text}A")), None);
        assert_eq!(s.verify(""), None);
        assert_eq!(s.verify(&"é".repeat(18)), None);
        assert_eq!(s.verify("../../etc/passwd%2F%2Fevil.example/xx"), None);
    }

    #[test]
    fn a_token_of_another_secret_is_refused_and_rotation_keeps_old_links_working() {
        let old = Signer::new(B, None).unwrap();
        let text = old.sign(&token(Kind::Click, 1));
        assert_eq!(Signer::new(A, None).unwrap().verify(&text), None);
        let rotating = Signer::new(A, Some(B)).unwrap();
        assert_eq!(rotating.verify(&text), Some(token(Kind::Click, 1)));
        // New tokens are signed with the new secret only.
        let new = rotating.sign(&token(Kind::Click, 1));
        assert_eq!(old.verify(&new), None);
        assert_eq!(
            Signer::new(A, None).unwrap().verify(&new).map(|t| t.link),
            Some(1)
        );
    }

    #[test]
    fn the_kind_is_signed() {
        let s = Signer::new(A, None).unwrap();
        let text = s.sign(&token(Kind::Open, 0));
        let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        raw[0] = b'u';
        assert_eq!(s.verify(&URL_SAFE_NO_PAD.encode(raw)), None);
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert_eq!(Signer::new(b"short", None).unwrap_err(), WeakSecret(5));
        assert_eq!(Signer::new(A, Some(b"x")).unwrap_err(), WeakSecret(1));
        let debug = format!("{:?}", Signer::new(A, Some(B)).unwrap());
        assert!(
            !debug.contains("0123") && !debug.contains("fedc"),
            "{debug}"
        );
    }
}
