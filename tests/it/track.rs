//! The tracking endpoint through real HTTP against the running daemon: the pixel, the
//! click redirect, tampered and foreign tokens, attempts to redirect elsewhere, GET vs
//! POST unsubscribe (also as a mail provider sends RFC 8058 one-click), idempotency,
//! statistics after real sends and hits, a branch taken after a click, a variant split.

use std::time::{Duration, Instant};

use followup::track::token::{Kind, Signer, Token};

use crate::support::{Daemon, Db, Options, Project, Received, Smtp};

const SECRET: &str = "test-secret-0123456789abcdef0123456789";
const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

struct Tracked {
    p: Project,
    smtp: Smtp,
    base: String,
    /// The admin listener: /healthz and /metrics.
    admin: String,
    _tmp: tempfile::TempDir,
}

/// A project whose first mail has tracked links, sent by a daemon with the endpoint.
fn project(db: Db, sequence_extra: &str, waits: (&str, &str)) -> Tracked {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let mut p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits,
            ..Options::default()
        },
    );
    let port = Smtp::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let admin_port = Smtp::free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let config = std::fs::read_to_string(&p.config).unwrap();
    p.write(
        "followup.toml",
        &format!(
            "postal_address = \"1 Test Road, Shenzhen\"\n{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\npublic_url = \"{base}\"\nsecret_env = \"TEST_TRACK_SECRET\"\n"
        ),
    );
    p.env.push(("TEST_TRACK_SECRET".into(), SECRET.into()));
    p.write(
        "templates/first.html",
        "<html><body><p>Hi {{first_name}} at {{company}}</p>\
         <p><a href=\"https://example.com/pricing?plan=pro&amp;x=1\">Pricing</a> \
         <a href='https://example.com/case-study'>Case</a> \
         <a href=\"mailto:iris@sender.example\">mail me</a> <a href=\"#top\">top</a> \
         <a href=\"https://example.com/skip\" data-track=\"off\">plain</a></p>\
         <p>STEP=first</p><p><a href=\"{{unsubscribe_url}}\">unsubscribe</a> {{postal_address}}</p></body></html>",
    );
    let seq = std::fs::read_to_string(p.path("sequences/intro.yaml")).unwrap();
    p.write(
        "sequences/intro.yaml",
        &seq.replacen(
            "sender: sales\n",
            &format!("sender: sales\n{sequence_extra}"),
            1,
        ),
    );
    Tracked {
        p,
        smtp,
        base,
        admin,
        _tmp: tmp,
    }
}

fn html_of(r: &Received) -> String {
    let m = mail_parser::MessageParser::default()
        .parse(r.raw.as_bytes())
        .unwrap();
    m.body_html(0).unwrap().to_string()
}

/// The values of every `href` and `src` attribute, entities decoded.
fn urls(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\"", "href='"] {
        let quote = attr.chars().last().unwrap();
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find(quote).unwrap();
            out.push(rest[..end].replace("&amp;", "&"));
            rest = &rest[end..];
        }
    }
    out
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(BROWSER)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Waits for the admin listener's /healthz (the public listener has no /healthz).
fn wait_http(admin: &str, d: &Daemon) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = client().get(format!("{admin}/healthz")).send() {
            if r.status() == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("endpoint did not come up; log:\n{}", d.log_text());
}

/// Browsers must not sniff a type into our answers nor leak the token URL onward.
fn hardened(r: &reqwest::blocking::Response) {
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff", "{h:?}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{h:?}");
}

/// Polls until `f` holds (hits are written in batches, a moment after the answer).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// The funnel of one step in `status --json`.
fn funnel(p: &Project, step: &str) -> serde_json::Value {
    let s = p.status_json();
    for seq in s["sequences"].as_array().unwrap() {
        for row in seq["steps"].as_array().unwrap() {
            if row["step"] == step {
                return row.clone();
            }
        }
    }
    panic!("no step {step} in {s}");
}

/// Sets every message's send time a minute back, so that hits are not taken for the
/// scanners that follow links within seconds of delivery.
fn age_messages(p: &Project) {
    p.sql("UPDATE messages SET sent_at = sent_at - 60000 WHERE sent_at IS NOT NULL");
}

fn endpoint(db: Db) {
    let t = project(
        db,
        "unsubscribe: one-click\nlanguage: zh-CN\non_open: { tag: opened, enroll: nurture }\n",
        ("1h", "1h"),
    );
    t.p.write(
        "sequences/nurture.yaml",
        "name: nurture\nsender: sales\nsteps:\n  - id: news\n    wait: 1h\n    template: last\n",
    );
    let emails = t.p.import_contacts(3);
    let daemon = t.p.daemon();
    wait_http(&t.admin, &daemon);
    let got = t.smtp.wait_for(3, Duration::from_secs(30));
    assert_eq!(got.len(), 3);
    age_messages(&t.p);
    let mail = got.iter().find(|r| r.to_addr() == emails[0]).unwrap();
    let html = html_of(mail);
    let links = urls(&html);
    let click: Vec<&String> = links
        .iter()
        .filter(|u| u.starts_with(&format!("{}/c/", t.base)))
        .collect();
    // Two tracked links and the hidden trap; mailto, the anchor, the marked link and
    // the unsubscribe link stay as written.
    assert_eq!(click.len(), 3, "{html}");
    for kept in [
        "mailto:iris@sender.example",
        "#top",
        "https://example.com/skip",
    ] {
        assert!(links.iter().any(|u| u == kept), "{kept} kept in {html}");
    }
    let pixel = links
        .iter()
        .find(|u| u.starts_with(&format!("{}/o/", t.base)))
        .expect("open pixel");
    let unsub = links
        .iter()
        .find(|u| u.starts_with(&format!("{}/u/", t.base)))
        .expect("unsubscribe link in the body");
    assert!(html.contains("1 Test Road, Shenzhen"), "{html}");
    // One-click headers (RFC 8058): https and mailto, and the POST header.
    let lu = mail.header("List-Unsubscribe").unwrap();
    assert!(lu.contains(&format!("<{unsub}>")), "{lu}");
    assert!(
        lu.contains("<mailto:iris@sender.example?subject=unsubscribe>"),
        "{lu}"
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    // The text part carries no tracking, only the links as written.
    let text = mail_parser::MessageParser::default()
        .parse(mail.raw.as_bytes())
        .unwrap()
        .body_text(0)
        .unwrap()
        .to_string();
    assert!(!text.contains("/c/") && !text.contains("/o/"), "{text}");

    let c = client();
    let events = || {
        t.p.sql_count("SELECT count(*) FROM events WHERE kind IN ('opened', 'clicked')")
    };

    // The pixel: a GIF that is never cached.
    let r = c.get(pixel.as_str()).send().unwrap();
    assert_eq!(r.status(), 200);
    hardened(&r);
    assert_eq!(r.headers()["content-type"], "image/gif");
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
    assert_eq!(r.bytes().unwrap()[..6], *b"GIF89a");
    eventually("the open recorded", || events() == 1);
    // A person's open runs on_open: tagged, and enrolled in another sequence.
    let nurtured = || {
        t.p.sql_count("SELECT count(*) FROM enrollments WHERE sequence = 'nurture'")
    };
    eventually("on_open enrolled the contact", || nurtured() == 1);
    // Apple's privacy proxy fetching another contact's pixel is recorded but drives
    // no rule.
    let other = got.iter().find(|r| r.to_addr() == emails[1]).unwrap();
    let other_pixel = urls(&html_of(other))
        .into_iter()
        .find(|u| u.contains("/o/"))
        .unwrap();
    let r = c
        .get(&other_pixel)
        .header("user-agent", "Mozilla/5.0")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("the proxy's open recorded", || events() == 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(nurtured(), 1, "a machine open enrolled nobody");

    // A click goes to the stored URL, whatever the request adds.
    let r = c.get(click[0].as_str()).send().unwrap();
    assert_eq!(r.status(), 302);
    hardened(&r);
    assert_eq!(
        r.headers()["location"],
        "https://example.com/pricing?plan=pro&x=1"
    );
    for evil in [
        format!("{}?url=https://evil.example", click[0]),
        format!("{}?next=%2F%2Fevil.example", click[0]),
        format!("{}#https://evil.example", click[0]),
    ] {
        let r = c.get(&evil).send().unwrap();
        assert_eq!(r.status(), 302, "{evil}");
        assert_eq!(
            r.headers()["location"],
            "https://example.com/pricing?plan=pro&x=1",
            "{evil}"
        );
    }
    eventually("four clicks recorded", || events() == 6);
    let before = events();

    // Tampered, truncated, kind-confused, foreign and made-up tokens: a bare 404 and
    // no database write.
    let token = click[0].rsplit('/').next().unwrap().to_string();
    let mut tampered = token.clone().into_bytes();
    tampered[12] = if tampered[12] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let open_token = pixel.rsplit('/').next().unwrap();
    let foreign = Signer::new(b"another-secret-0123456789abcdef0123456789", None)
        .unwrap()
        .sign(&Token {
            kind: Kind::Click,
            key: [7; 8],
            link: 0,
        });
    let ours_unknown = Signer::new(SECRET.as_bytes(), None).unwrap().sign(&Token {
        kind: Kind::Click,
        key: [9; 8],
        link: 0,
    });
    for bad in [
        format!("{}/c/{tampered}", t.base),
        format!("{}/c/{}", t.base, &token[..token.len() - 1]),
        format!("{}/c/{token}x", t.base),
        format!("{}/c/{open_token}", t.base),
        format!("{}/c/{foreign}", t.base),
        format!("{}/c/{ours_unknown}", t.base),
        format!("{}/c/%2F%2Fevil.example", t.base),
        format!("{}//evil.example", t.base),
        format!("{}/c/https:%2F%2Fevil.example", t.base),
        format!("{}/o/{tampered}", t.base),
        format!("{}/u/{token}", t.base),
    ] {
        let r = c.get(&bad).send().unwrap();
        assert_eq!(r.status(), 404, "{bad}");
        hardened(&r);
        assert!(r.headers().get("location").is_none(), "{bad}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(events(), before, "bad tokens wrote nothing");

    // Machines: a HEAD probe and a scanner's user agent count in `total` only.
    let r = c.head(click[1].as_str()).send().unwrap();
    assert_eq!(r.status(), 302);
    let r = c
        .get(click[1].as_str())
        .header("user-agent", "python-requests/2.31")
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    // The hidden trap link answers nothing a person could see.
    let r = c.get(click[2].as_str()).send().unwrap();
    assert_eq!(r.status(), 204);
    eventually("machine hits recorded", || events() == before + 3);
    assert_eq!(
        t.p.sql_count("SELECT count(*) FROM events WHERE machine IS NOT NULL"),
        4
    );

    // Unsubscribe: GET shows a page and changes nothing (link scanners follow GETs).
    let r = c.get(unsub.as_str()).send().unwrap();
    assert_eq!(r.status(), 200);
    hardened(&r);
    let page = r.text().unwrap();
    assert!(page.contains("method=\"post\""), "{page}");
    // The form posts back to the page's own URL (relative, so a public_url with a path
    // prefix behind a proxy works too).
    let unsub_token = unsub.rsplit('/').next().unwrap();
    assert!(
        page.contains(&format!("action=\"{unsub_token}\"")),
        "{page}"
    );
    assert!(
        page.contains("lang=\"zh-Hans\"") && page.contains("确认退订"),
        "the sequence's language: {page}"
    );
    assert!(page.contains("List-Unsubscribe"), "{page}");
    assert!(!page.contains(&emails[0]), "the address is masked: {page}");
    let suppressed = || {
        t.p.sql_count(&format!(
            "SELECT count(*) FROM suppressions WHERE pattern = '{}'",
            emails[0]
        ))
    };
    assert_eq!(suppressed(), 0);
    // POST as a mail provider sends RFC 8058 one-click.
    for _ in 0..2 {
        let r = c
            .post(unsub.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        hardened(&r);
    }
    assert_eq!(suppressed(), 1);
    assert_eq!(
        t.p.sql_count("SELECT count(*) FROM events WHERE kind = 'unsubscribed'"),
        1,
        "idempotent: one unsubscribe"
    );
    let stopped = t.p.ok(&["contacts", "show", &emails[0]]);
    assert!(stopped.contains("suppressed: unsubscribed"), "{stopped}");
    assert!(
        stopped.contains("https://example.com/pricing?plan=pro&x=1  [person]"),
        "{stopped}"
    );
    assert!(stopped.contains("[machine:"), "{stopped}");

    // Answers that no handler gives are counted too: axum's 405, the fallback's 404.
    let r = c.post(format!("{}/o/anything", t.base)).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = c.get(format!("{}/nowhere", t.base)).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    hardened(&r);
    // The admin pages are not on the public listener.
    for page in ["metrics", "healthz", "readyz"] {
        let r = c.get(format!("{}/{page}", t.base)).send().unwrap();
        assert_eq!(r.status().as_u16(), 404, "/{page} on the public listener");
    }

    // /metrics in Prometheus text, on the admin listener.
    let m = c
        .get(format!("{}/metrics", t.admin))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("followup_http_requests_total{route=\"click\",status=\"404\"}"),
        "{m}"
    );
    assert!(
        m.contains("followup_http_requests_total{route=\"open\",status=\"405\"} 1"),
        "{m}"
    );
    // Request durations, a histogram per route; the figures of the admin listener too.
    assert!(
        m.contains("followup_http_request_duration_seconds_bucket{route=\"open\",le=\"+Inf\"}"),
        "{m}"
    );
    assert!(
        m.contains("followup_mailbox_messages{mailbox=\"sales\""),
        "{m}"
    );
    assert!(
        m.contains("followup_http_requests_total{route=\"other\",status=\"404\"}"),
        "{m}"
    );
    assert!(
        m.contains("followup_events_total{kind=\"opened\",source=\"human\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("followup_events_total{kind=\"opened\",source=\"machine\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("followup_events_total{kind=\"opened\",source=\"machine\"} 1"),
        "{m}"
    );
    assert!(m.contains("followup_hits_dropped_total 0"), "{m}");
    assert!(m.contains("followup_messages{status=\"sent\"} 3"), "{m}");

    // A hit answered just before SIGTERM is written on the way out.
    let third = got.iter().find(|r| r.to_addr() == emails[2]).unwrap();
    let third_pixel = urls(&html_of(third))
        .into_iter()
        .find(|u| u.contains("/o/"))
        .unwrap();
    let opens = || {
        t.p.sql_count("SELECT count(*) FROM events WHERE kind = 'opened'")
    };
    let opens_before = opens();
    assert_eq!(c.get(&third_pixel).send().unwrap().status(), 200);
    let log = daemon.log_text();
    let status = daemon.stop();
    assert!(status.success(), "{log}");
    assert_eq!(opens(), opens_before + 1, "flushed on shutdown");
    assert!(!log.contains(SECRET), "the secret never reaches the log");

    // Honest numbers per step: people apart from machines, unique per message.
    let row = funnel(&t.p, "first");
    let f = &row["funnel"];
    assert_eq!(f["sent"], 3, "{row}");
    assert_eq!(f["opened_human"], 2, "{row}");
    assert_eq!(f["opened_total"], 3, "{row}");
    assert_eq!(f["clicked_human"], 1, "{row}");
    assert_eq!(f["clicked_total"], 1, "{row}");
    assert_eq!(f["unsubscribed"], 1, "{row}");
    assert_eq!(f["rates"]["clicked_human"], 0.3333, "{row}");
    let links = row["links"].as_array().unwrap();
    let pricing = links
        .iter()
        .find(|l| l["url"] == "https://example.com/pricing?plan=pro&x=1")
        .unwrap();
    assert_eq!(pricing["clicked_human"], 1, "{row}");
    let case = links
        .iter()
        .find(|l| l["url"] == "https://example.com/case-study")
        .unwrap();
    assert_eq!(case["clicked_human"], 0, "machines only: {row}");
    assert_eq!(case["clicked_total"], 1, "{row}");
}

#[test]
fn endpoint_sqlite() {
    endpoint(Db::Sqlite);
}

#[test]
fn endpoint_postgres() {
    endpoint(Db::Postgres);
}

/// What a prospect clicked drives the next mail: `bump` goes only to those who
/// clicked the pricing link, `last` only to those who did not click at all. A click
/// also runs `on_click` (tag, stage).
fn branch_after_click(db: Db) {
    let t = project(
        db,
        "on_click: { url_contains: pricing, tag: pricing, stage: interested }\n",
        ("4s", "1s"),
    );
    let seq = std::fs::read_to_string(t.p.path("sequences/intro.yaml")).unwrap();
    let seq = seq
        .replace(
            "    template: bump\n",
            "    template: bump\n    if: { clicked: pricing }\n",
        )
        .replace(
            "    template: last\n",
            "    template: last\n    if: { not_clicked: pricing, step: first }\n",
        );
    t.p.write("sequences/intro.yaml", &seq);
    let check = t.p.run(&["check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let emails = t.p.import_contacts(2);
    let daemon = t.p.daemon();
    wait_http(&t.admin, &daemon);
    let got = t.smtp.wait_for(2, Duration::from_secs(30));
    age_messages(&t.p);
    let mail = got.iter().find(|r| r.to_addr() == emails[0]).unwrap();
    let pricing = urls(&html_of(mail))
        .into_iter()
        .find(|u| u.contains("/c/"))
        .unwrap();
    let r = client().get(&pricing).send().unwrap();
    assert_eq!(r.status(), 302);
    // Contact 0: first, bump (clicked), no last. Contact 1: first, last.
    let all = t.smtp.wait_for(4, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let all_now = t.smtp.received();
    daemon.stop();
    assert_eq!(all.len(), 4);
    assert_eq!(all_now.len(), 4, "nothing more was sent");
    let steps = |e: &str| -> Vec<String> {
        all_now
            .iter()
            .filter(|r| r.to_addr() == e)
            .map(|r| r.step())
            .collect()
    };
    assert_eq!(steps(&emails[0]), ["first", "bump"]);
    assert_eq!(steps(&emails[1]), ["first", "last"]);
    let bump = funnel(&t.p, "bump");
    assert_eq!(bump["skipped"], 1, "{bump}");
    assert_eq!(funnel(&t.p, "last")["skipped"], 1);
    let shown = t.p.ok(&["contacts", "show", &emails[0]]);
    assert!(shown.contains("stage: interested"), "{shown}");
    assert!(shown.contains("\"tag\":\"pricing\""), "{shown}");
    let other = t.p.ok(&["contacts", "show", &emails[1]]);
    assert!(other.contains("skipped"), "{other}");
}

#[test]
fn branch_after_click_sqlite() {
    branch_after_click(Db::Sqlite);
}

#[test]
fn branch_after_click_postgres() {
    branch_after_click(Db::Postgres);
}

/// A 70/30 split over 300 contacts lands close to its weights, `status` compares the
/// variants, and a contact keeps its variant.
#[test]
fn variant_split() {
    let t = project(Db::Sqlite, "", ("1h", "1h"));
    t.p.write(
        "templates/first-b.hbs",
        "---\nsubject: \"Another angle for {{company}}\"\n---\nHi {{first_name}},\nSTEP=first-b\n",
    );
    let seq = std::fs::read_to_string(t.p.path("sequences/intro.yaml")).unwrap();
    t.p.write(
        "sequences/intro.yaml",
        &seq.replacen(
            "    template: first\n",
            "    variants:\n      - { id: a, template: first, weight: 70 }\n      - { id: b, template: first-b, weight: 30 }\n",
            1,
        ),
    );
    t.p.import_contacts(300);
    t.p.ok(&["run", "--once"]);
    let got = t.smtp.wait_for(300, Duration::from_secs(60));
    assert_eq!(got.len(), 300);
    let b = got.iter().filter(|r| r.step() == "first-b").count();
    assert!(
        (60..=120).contains(&b),
        "variant b got {b} of 300 (weight 30%)"
    );
    let row = funnel(&t.p, "first");
    let variants = row["variants"].as_array().unwrap();
    let sent = |v: &str| {
        variants
            .iter()
            .find(|x| x["variant"] == v)
            .map(|x| x["sent"].as_i64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(sent("b"), b as i64, "{row}");
    assert_eq!(sent("a") + sent("b"), 300, "{row}");
    // The same contact gets the same variant in a preview.
    let first_b = got.iter().find(|r| r.step() == "first-b").unwrap();
    let preview =
        t.p.run(&["preview", "intro", "--contact", &first_b.to_addr()]);
    assert!(
        String::from_utf8_lossy(&preview.stdout).contains("STEP=first-b"),
        "{}",
        String::from_utf8_lossy(&preview.stderr)
    );
}

/// When the database cannot keep up, the endpoint still answers every pixel at once,
/// counts what it could not queue, and records the rest when the database is back.
/// (A writer holding SQLite's lock stands in for a slow database.)
#[test]
fn full_queue_still_answers_and_counts_drops() {
    // The recorder holds what it gathered in its first few milliseconds (its batch)
    // besides the 16 queued; every later hit finds the queue full.
    const HITS: u64 = 1_000;
    let t = project(
        Db::Sqlite,
        "track: { opens: true, clicks: false }\n",
        ("1h", "1h"),
    );
    let config = std::fs::read_to_string(&t.p.config).unwrap();
    t.p.write("followup.toml", &format!("{config}queue = 16\n"));
    t.p.import_contacts(1);
    let daemon = t.p.daemon();
    wait_http(&t.admin, &daemon);
    let got = t.smtp.wait_for(1, Duration::from_secs(30));
    let html = html_of(&got[0]);
    assert!(!html.contains("/c/"), "clicks not tracked: {html}");
    let pixel = urls(&html).into_iter().find(|u| u.contains("/o/")).unwrap();
    eventually("the first step recorded", || {
        t.p.sql_count("SELECT count(*) FROM messages WHERE status = 'sent'") == 1
    });
    // Another writer takes SQLite's write lock and holds it.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let url = t.p.database.clone();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .unwrap();
            held_tx.send(()).unwrap();
            let _ = hold_rx.recv();
            sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
        });
    });
    held_rx.recv().unwrap();
    let c = client();
    let start = Instant::now();
    for _ in 0..HITS {
        assert_eq!(c.get(&pixel).send().unwrap().status(), 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "answered without waiting for the database"
    );
    let metrics = c
        .get(format!("{}/metrics", t.admin))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("followup_hits_dropped_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        dropped >= HITS - 200,
        "most of {HITS} hits dropped with a queue of 16: {metrics}"
    );
    hold_tx.send(()).unwrap();
    holder.join().unwrap();
    let opens = || {
        t.p.sql_count("SELECT count(*) FROM events WHERE kind = 'opened'")
    };
    eventually("the queued hits recorded", || {
        opens() as u64 == HITS - dropped
    });
    daemon.stop();
    assert_eq!(opens() as u64, HITS - dropped, "nothing queued was lost");
}
