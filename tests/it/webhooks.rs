//! Webhooks through the real daemon: a receiver on 127.0.0.1 that refuses the first
//! deliveries, then takes them; every event arrives signed, once, in order per contact;
//! a replay sends them again; `check` points at a wrong event kind.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::support::{Db, Options, Project, Smtp};

const SECRET: &str = "webhook-secret-0123456789abcdef";

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    body: String,
    ok: bool,
}

/// An HTTP/1.1 receiver (keep-alive) that answers 500 to the first `fail_first`
/// requests and 200 after.
struct Receiver {
    port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let h = h.clone();
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = HashMap::new();
                        loop {
                            let mut l = String::new();
                            if r.read_line(&mut l).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = l.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = l.split_once(':') {
                                headers.insert(k.trim().to_lowercase(), v.trim().to_string());
                            }
                        }
                        let len: usize = headers
                            .get("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let mut hits = h.lock().unwrap();
                        let ok = hits.len() >= fail_first;
                        hits.push(Hit {
                            headers,
                            body: String::from_utf8(body).unwrap(),
                            ok,
                        });
                        drop(hits);
                        let status = if ok {
                            "200 OK"
                        } else {
                            "500 Internal Server Error"
                        };
                        let _ = write!(w, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    }
                });
            }
        });
        Receiver { port, hits }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn wait_ok(&self, n: usize, timeout: Duration) -> Vec<Hit> {
        let start = Instant::now();
        loop {
            let hits = self.hits();
            if hits.iter().filter(|h| h.ok).count() >= n || start.elapsed() > timeout {
                return hits;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signed(h: &Hit) -> bool {
    let ts = &h.headers["x-followup-timestamp"];
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.{}", h.body).as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    h.headers.get("x-followup-signature") == Some(&format!("sha256={want}"))
}

fn project(db: Db, smtp: &Smtp, receiver: &Receiver) -> Project {
    let mut p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            extra_mailbox: &format!(
                "\n[[webhooks]]\nname = \"crm\"\nurl = \"http://127.0.0.1:{}/hook\"\nevents = [\"enrolled\", \"sent\"]\nsecret_env = \"HOOK_SECRET\"\n",
                receiver.port
            ),
            ..Options::default()
        },
    );
    p.env.push(("HOOK_SECRET".into(), SECRET.into()));
    p
}

fn deliveries_in_order_signed_and_retried(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let receiver = Receiver::start(3);
    let p = project(db, &smtp, &receiver);
    p.import_contacts(3);
    let daemon = p.daemon();
    // 3 enrollments and 3 steps sent to each: 12 events, every one delivered.
    let hits = receiver.wait_ok(12, Duration::from_secs(60));
    let ok: Vec<&Hit> = hits.iter().filter(|h| h.ok).collect();
    assert_eq!(ok.len(), 12, "{hits:#?}\n{}", daemon.log_text());
    assert!(hits.iter().all(signed), "every attempt is signed");
    // The refused ones came again under the same delivery id.
    let refused: Vec<&String> = hits
        .iter()
        .filter(|h| !h.ok)
        .map(|h| &h.headers["x-followup-delivery"])
        .collect();
    assert_eq!(refused.len(), 3);
    for id in refused {
        assert!(
            ok.iter().any(|h| &h.headers["x-followup-delivery"] == id),
            "delivery {id} was retried"
        );
    }
    // Each event once, and each contact's events in the order they happened.
    let mut seen = BTreeMap::new();
    let mut by_contact: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for h in &ok {
        let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
        let id = v["event_id"].as_i64().unwrap();
        assert!(seen.insert(id, ()).is_none(), "event {id} delivered twice");
        let kind = v["kind"].as_str().unwrap();
        assert!(kind == "enrolled" || kind == "sent", "{kind}");
        by_contact
            .entry(v["contact"]["email"].as_str().unwrap().to_string())
            .or_default()
            .push(id);
    }
    assert_eq!(by_contact.len(), 3);
    for (c, ids) in &by_contact {
        assert_eq!(ids.len(), 4, "{c}: enrolled and three mails");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{c}: out of order: {ids:?}"
        );
    }
    // `status` shows the queue drained.
    let s = p.status_json();
    assert_eq!(s["webhooks"][0]["webhook"], "crm", "{s}");
    assert_eq!(s["webhooks"][0]["delivered"], 12, "{s}");
    assert_eq!(s["webhooks"][0]["pending"], 0, "{s}");

    // A replay sends them all again, to the running daemon's dispatcher.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let o = p.ok(&["webhooks", "replay", "--since", &today]);
    assert!(o.contains("12 deliveries queued"), "{o}");
    let hits = receiver.wait_ok(24, Duration::from_secs(30));
    assert_eq!(hits.iter().filter(|h| h.ok).count(), 24);
    assert!(daemon.stop().success());
}

#[test]
fn deliveries_in_order_signed_and_retried_sqlite() {
    deliveries_in_order_signed_and_retried(Db::Sqlite);
}

#[test]
fn deliveries_in_order_signed_and_retried_postgres() {
    deliveries_in_order_signed_and_retried(Db::Postgres);
}

#[test]
fn check_points_at_a_wrong_event_kind_and_a_missing_secret() {
    let receiver = Receiver::start(0);
    let p = Project::new(
        Db::Sqlite,
        &Options {
            extra_mailbox: &format!(
                "\n[[webhooks]]\nurl = \"http://127.0.0.1:{}/hook\"\nevents = [\"replyed\"]\n",
                receiver.port
            ),
            ..Options::default()
        },
    );
    let out = p.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("unknown event kind 'replyed'"), "{text}");
    assert!(text.contains("did you mean 'replied'?"), "{text}");
    assert!(text.contains("webhook 'webhook1' needs a secret"), "{text}");
    let line = std::fs::read_to_string(&p.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("events"))
        .unwrap()
        + 1;
    assert!(text.contains(&format!("followup.toml:{line}:")), "{text}");
}
