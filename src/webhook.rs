//! Webhooks: what a delivery carries (pure: the JSON body, its signature, when to try
//! again) and the HTTP client that POSTs it (the adapter). The queue and its order are
//! the application layer's (`app::webhooks`) and the store's.
//!
//! Each delivery is a POST of one event as JSON with three headers:
//! `X-Followup-Delivery` (the queue row's id: the same on every retry, so a receiver
//! can drop a repeat), `X-Followup-Timestamp` (unix seconds when this attempt was
//! made) and `X-Followup-Signature: sha256=HEX`, the HMAC-SHA256 of
//! `TIMESTAMP.BODY` under the webhook's secret. A receiver recomputes it, compares in
//! constant time and refuses timestamps more than a few minutes old.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::Webhook;
use crate::model::StoredEvent;

/// Attempts before a delivery is given up (about a day with the backoff below).
pub const MAX_ATTEMPTS: i64 = 30;

/// The JSON body of an event's delivery.
pub fn payload(e: &StoredEvent, email: Option<&str>) -> String {
    json!({
        "event_id": e.id,
        "kind": e.kind.as_str(),
        "at": e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "contact": email.map(|m| json!({ "id": e.contact_id, "email": m })).unwrap_or(Value::Null),
        "enrollment_id": e.enrollment_id,
        "machine": e.machine,
        "data": e.data,
    })
    .to_string()
}

/// `sha256=HEX`: the HMAC-SHA256 of `TIMESTAMP.BODY` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + bytes.len() * 2);
    hex.push_str("sha256=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// When to try a delivery again after its `attempts`-th failure: 5 s, doubling, at
/// most an hour.
pub fn retry_at(attempts: i64, now: DateTime<Utc>) -> DateTime<Utc> {
    let secs = 5i64
        .saturating_mul(1i64 << attempts.clamp(0, 20))
        .min(3_600);
    now + chrono::Duration::seconds(secs)
}

/// POSTs deliveries. One client for every webhook: its connection pool keeps one
/// receiver's connections open between deliveries.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    pub fn new() -> Result<Client, reqwest::Error> {
        Ok(Client {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("followup/", env!("CARGO_PKG_VERSION")))
                .build()?,
        })
    }

    /// POSTs one delivery; Err says why it failed, in a sentence.
    pub async fn post(&self, w: &Webhook, id: i64, body: &str) -> Result<(), String> {
        let now = Utc::now().timestamp();
        let mut req = self
            .http
            .post(&w.url)
            .timeout(w.timeout)
            .header("content-type", "application/json")
            .header("x-followup-delivery", id.to_string())
            .header("x-followup-timestamp", now.to_string())
            .body(body.to_string());
        if let Some(secret) = &w.secret {
            req = req.header("x-followup-signature", signature(secret, now, body));
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{} answered {}", w.url, r.status())),
            Err(e) if e.is_timeout() => {
                Err(format!("{} did not answer within {:?}", w.url, w.timeout))
            }
            Err(e) if e.is_connect() => Err(format!("cannot connect to {}", w.url)),
            Err(e) => Err(format!("{}: {e}", w.url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // RFC 4231 test case 2 checks the HMAC itself; here, what it is computed over.
        let a = signature(b"0123456789abcdef", 1_700_000_000, "{\"a\":1}");
        let b = signature(b"0123456789abcdef", 1_700_000_001, "{\"a\":1}");
        let c = signature(b"0123456789abcdeF", 1_700_000_000, "{\"a\":1}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, b, "the timestamp is signed");
        assert_ne!(a, c, "the secret is the key");
        let mut mac =
            Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap_or_else(|_| unreachable!());
        mac.update(b"1700000000.{\"a\":1}");
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("sha256={want}"));
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        let now = DateTime::<Utc>::default();
        let waits: Vec<i64> = (0..12)
            .map(|n| (retry_at(n, now) - now).num_seconds())
            .collect();
        assert_eq!(&waits[..5], &[5, 10, 20, 40, 80]);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(waits[11], 3_600);
        assert_eq!((retry_at(i64::MAX, now) - now).num_seconds(), 3_600);
    }
}
