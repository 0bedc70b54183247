//! What arriving mail does to enrollments, through `inbound::handle` on a real database
//! (the IMAP path is tested in `mailworld.rs` against a real Postfix and Dovecot). Each case changes
//! exactly the enrollments it should and no other.

use chrono::Utc;
use followup::inbound::{self, Arrival, Folder};
use followup::model::EnrollmentState;
use followup::project::Project as Loaded;
use followup::store::{Checkpoint, Store};

use crate::support::{Db, Options, Project, Smtp};

struct World {
    _tmp: tempfile::TempDir,
    _smtp: Smtp,
    p: Project,
    loaded: Loaded,
    store: Store,
    /// (contact, Message-ID, subject) of the first mails sent.
    sent: Vec<(String, String, String)>,
    uid: i64,
}

impl World {
    async fn new(db: Db, emails: &[&str]) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
        let p = Project::new(
            db,
            &Options {
                smtp_port: smtp.port,
                waits: ("1h", "1h"),
                ..Options::default()
            },
        );
        let mut csv = String::from("email,first_name,company\n");
        for e in emails {
            csv.push_str(&format!("{e},X,Acme\n"));
        }
        p.write("c.csv", &csv);
        p.ok(&[
            "contacts",
            "import",
            p.path("c.csv").to_str().unwrap(),
            "--sequence",
            "intro",
        ]);
        p.ok(&["run", "--once"]);
        let sent = smtp
            .received()
            .iter()
            .map(|r| {
                (
                    r.to_addr(),
                    r.header("Message-ID").unwrap().to_string(),
                    r.header("Subject").unwrap().to_string(),
                )
            })
            .collect();
        let (loaded, _) = Loaded::load(&p.config, false).unwrap();
        let store = Store::open(&loaded.config.database).await.unwrap();
        World {
            _tmp: tmp,
            _smtp: smtp,
            p,
            loaded,
            store,
            sent,
            uid: 0,
        }
    }

    fn first(&self, email: &str) -> (String, String) {
        let s = self.sent.iter().find(|s| s.0 == email).unwrap();
        (s.1.clone(), s.2.clone())
    }

    async fn deliver(&mut self, folder: Folder, raw: &str) -> inbound::Handled {
        self.uid += 1;
        let mailbox = &self.loaded.config.mailboxes["sales"];
        let name = if folder == Folder::Inbox {
            "INBOX"
        } else {
            "Sent"
        };
        let a = Arrival {
            folder,
            folder_name: name,
            uid: self.uid,
            raw: raw.as_bytes().into(),
            checkpoint: Checkpoint {
                uidvalidity: 1,
                last_uid: self.uid,
            },
        };
        inbound::handle(&self.loaded, &self.store, mailbox, a, Utc::now())
            .await
            .unwrap()
    }

    async fn state(&self, email: &str) -> (String, Option<String>) {
        let e = self
            .store
            .enrollment("intro", email)
            .await
            .unwrap()
            .unwrap();
        (e.state.to_string(), e.cause.as_ref().map(|c| c.to_string()))
    }
}

fn reply(from: &str, in_reply_to: Option<&str>, subject: &str, body: &str) -> String {
    let threading = in_reply_to
        .map(|id| format!("In-Reply-To: {id}\r\nReferences: {id}\r\n"))
        .unwrap_or_default();
    format!(
        "From: {from}\r\nTo: Iris Zhang <iris@sender.example>\r\nSubject: {subject}\r\nMessage-ID: <{}@client.example>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0800\r\n{threading}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        fastrand::u64(..)
    )
}

async fn cases(db: Db) {
    let mut w = World::new(
        db,
        &[
            "li@prospect.example",
            "wang@prospect.example",
            "anna@other.example",
            "bob@third.example",
            "carl@fourth.example",
            "dora@gmail.com",
            "eve@gmail.com",
        ],
    )
    .await;
    assert_eq!(w.sent.len(), 7);

    // A threaded reply stops exactly that contact, and the on_reply-free test sequence
    // records it.
    let (id, subject) = w.first("anna@other.example");
    let h = w
        .deliver(
            Folder::Inbox,
            &reply(
                "Anna <anna@other.example>",
                Some(&id),
                &format!("Re: {subject}"),
                "Yes, send samples.\r\n\r\n> quoted",
            ),
        )
        .await;
    assert_eq!(h.changed.len(), 1, "{h:?}");
    assert_eq!(
        w.state("anna@other.example").await,
        ("stopped".into(), Some("replied".into()))
    );
    assert_eq!(w.state("bob@third.example").await.0, "active");

    // The same message again (a UIDVALIDITY change re-lists it): nothing twice.
    w.uid += 100;
    let again = reply(
        "Anna <anna@other.example>",
        Some(&id),
        &format!("Re: {subject}"),
        "Yes",
    );
    let first = w.deliver(Folder::Inbox, &again).await;
    let second = w.deliver(Folder::Inbox, &again).await;
    assert!(first.new && !second.new);

    // Unthreaded: no In-Reply-To, only "Re:" and the address.
    let h = w
        .deliver(
            Folder::Inbox,
            &reply("bob@third.example", None, "Re: samples", "Call me"),
        )
        .await;
    assert_eq!(h.changed.len(), 1, "{h:?}");
    assert_eq!(
        w.state("bob@third.example").await.1.as_deref(),
        Some("replied")
    );

    // A colleague at li's company answers: li and wang (same company domain) stop.
    let (id, _) = w.first("li@prospect.example");
    let h = w
        .deliver(
            Folder::Inbox,
            &reply(
                "Zhao <zhao@prospect.example>",
                Some(&id),
                "Re: x",
                "我是李雷的同事，请联系我。",
            ),
        )
        .await;
    assert_eq!(h.changed.len(), 2, "{h:?}");
    assert_eq!(
        w.state("wang@prospect.example").await.1.as_deref(),
        Some("replied")
    );
    // ... but never for free-mail domains: dora's reply leaves eve alone.
    let h = w
        .deliver(
            Folder::Inbox,
            &reply("dora@gmail.com", None, "Re: hi", "Interested"),
        )
        .await;
    assert_eq!(h.changed.len(), 1);
    assert_eq!(w.state("eve@gmail.com").await.0, "active");

    // "Please remove me" suppresses the address for good.
    let h = w
        .deliver(
            Folder::Inbox,
            &reply(
                "carl@fourth.example",
                None,
                "Re: hi",
                "Please remove me from your list.",
            ),
        )
        .await;
    assert_eq!(h.changed.len(), 1, "{h:?}");
    assert_eq!(
        w.state("carl@fourth.example").await.1.as_deref(),
        Some("unsubscribed")
    );
    assert!(w.store.is_suppressed("carl@fourth.example").await.unwrap());

    // Our own follow-up seen in Sent is never a reply or a manual mail.
    let (eve_id, eve_subject) = w.first("eve@gmail.com");
    let own = format!("From: Iris Zhang <iris@sender.example>\r\nTo: eve@gmail.com\r\nSubject: {eve_subject}\r\nMessage-ID: {eve_id}\r\n\r\nHi\r\n");
    let h = w.deliver(Folder::Sent, &own).await;
    assert!(h.changed.is_empty());
    assert_eq!(h.decision, "our own message");
    assert_eq!(w.state("eve@gmail.com").await.0, "active");
    // The rep writes to eve by hand: her sequence stops with reason `manual`.
    let by_hand = "From: Iris Zhang <iris@sender.example>\r\nTo: eve@gmail.com\r\nSubject: lunch?\r\nMessage-ID: <hand-1@sender.example>\r\n\r\nShall we meet?\r\n";
    let h = w.deliver(Folder::Sent, by_hand).await;
    assert_eq!(h.changed.len(), 1);
    assert_eq!(w.state("eve@gmail.com").await.1.as_deref(), Some("manual"));

    let status = w.p.ok(&["status", "intro", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let first_row = &v["sequences"][0]["steps"][0];
    assert_eq!(
        first_row["replied"], 5,
        "anna, bob, li, wang, dora: {first_row}"
    );
    assert_eq!(first_row["unsubscribed"], 1, "{first_row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_change_exactly_their_enrollments_sqlite() {
    cases(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_change_exactly_their_enrollments_postgres() {
    cases(Db::Postgres).await;
}

async fn auto_reply_and_bounce(db: Db) {
    let mut w = World::new(
        db,
        &[
            "ooo@prospect.example",
            "gone@prospect.example",
            "soft@prospect.example",
        ],
    )
    .await;
    let (id, subject) = w.first("ooo@prospect.example");
    // Dates relative to today: a return date already past would give the default pause.
    let shanghai = chrono_tz::Asia::Shanghai;
    let back = Utc::now().with_timezone(&shanghai).date_naive() + chrono::Days::new(10);
    let ooo = format!(
        "From: ooo@prospect.example\r\nTo: iris@sender.example\r\nSubject: Auto: {subject}\r\nAuto-Submitted: auto-replied\r\nIn-Reply-To: {id}\r\nMessage-ID: <ooo-1@prospect.example>\r\nDate: {}\r\n\r\nI am out of the office until {back}.\r\n",
        Utc::now().to_rfc2822()
    );
    let h = w.deliver(Folder::Inbox, &ooo).await;
    assert_eq!(h.changed.len(), 1, "{h:?}");
    let e = w
        .store
        .enrollment("intro", "ooo@prospect.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.state, EnrollmentState::Paused);
    assert_eq!(e.step_id, "bump", "resumes where it was");
    // Back on day D → resumes on D + 1, 00:00 in the contact's zone (Asia/Shanghai here,
    // so 16:00 UTC on D): the date read from the text, not the default pause.
    let resumes = format!("{back}T16:00:00+00:00");
    assert_eq!(e.paused_until.unwrap().to_rfc3339(), resumes);

    // A permanent bounce (RFC 3464) suppresses the address and stops the enrollment.
    let (id, _) = w.first("gone@prospect.example");
    let dsn = format!(
        "From: MAILER-DAEMON@mx.prospect.example\r\nTo: iris@sender.example\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-1@mx.prospect.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.prospect.example\r\n\r\nFinal-Recipient: rfc822; gone@prospect.example\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {id}\r\nTo: gone@prospect.example\r\n\r\n--B--\r\n"
    );
    let h = w.deliver(Folder::Inbox, &dsn).await;
    assert_eq!(h.changed.len(), 1, "{h:?}");
    assert_eq!(
        w.state("gone@prospect.example").await,
        ("stopped".into(), Some("bounced".into()))
    );
    assert!(w
        .store
        .is_suppressed("gone@prospect.example")
        .await
        .unwrap());
    assert_eq!(w.state("soft@prospect.example").await.0, "active");

    // Soft bounces are counted; the third suppresses (soft_bounce_limit = 3).
    for i in 0..3 {
        let soft = format!(
            "From: MAILER-DAEMON@mx.prospect.example\r\nTo: iris@sender.example\r\nSubject: Delayed Mail (still being retried)\r\nMessage-ID: <soft-{i}@mx.prospect.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nDelayed.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.prospect.example\r\n\r\nFinal-Recipient: rfc822; soft@prospect.example\r\nAction: delayed\r\nStatus: 4.2.2\r\n\r\n--B--\r\n"
        );
        w.deliver(Folder::Inbox, &soft).await;
        let expect = if i < 2 { "active" } else { "stopped" };
        assert_eq!(
            w.state("soft@prospect.example").await.0,
            expect,
            "after soft bounce {}",
            i + 1
        );
    }
    // Suppression is checked when a step is claimed: running now sends nothing to them.
    let before = w._smtp.received().len();
    w.p.ok(&["run", "--once"]);
    assert_eq!(w._smtp.received().len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_reply_pauses_and_bounces_suppress_sqlite() {
    auto_reply_and_bounce(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_reply_pauses_and_bounces_suppress_postgres() {
    auto_reply_and_bounce(Db::Postgres).await;
}

/// A mailbox whose recent sends bounce too much is paused: nothing more goes out from
/// it, `status` says why, and `resume --mailbox` lifts it.
async fn bouncing_mailbox(db: Db) {
    let emails: Vec<String> = (0..10).map(|i| format!("p{i}@prospect.example")).collect();
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    let mut w = World::new(db, &refs).await;
    // Judged over the last 10 sends: one hard bounce is 10%, over the 5% allowed.
    let mut toml = std::fs::read_to_string(&w.p.config).unwrap();
    toml.push_str("\n[replies]\nbounce_window = 10\nbounce_max_rate = 0.05\n");
    std::fs::write(&w.p.config, toml).unwrap();
    w.loaded = Loaded::load(&w.p.config, false).unwrap().0;
    assert!(w.p.status_json()["paused_mailboxes"]
        .as_array()
        .unwrap()
        .is_empty());

    let (id, _) = w.first("p0@prospect.example");
    let dsn = format!(
        "From: MAILER-DAEMON@mx.prospect.example\r\nTo: iris@sender.example\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-rate@mx.prospect.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nNot delivered.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.prospect.example\r\n\r\nFinal-Recipient: rfc822; p0@prospect.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {id}\r\n\r\n--B--\r\n"
    );
    w.deliver(Folder::Inbox, &dsn).await;
    let paused = w.p.status_json()["paused_mailboxes"].clone();
    assert_eq!(paused[0]["mailbox"], "sales", "{paused}");
    let reason = paused[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("1 of its last 10 sends bounced"),
        "{reason}"
    );

    // A contact due now is not mailed while the mailbox is paused...
    w.p.write(
        "new.csv",
        "email,first_name,company\nnew@prospect.example,N,Acme\n",
    );
    w.p.ok(&[
        "contacts",
        "import",
        w.p.path("new.csv").to_str().unwrap(),
        "--sequence",
        "intro",
    ]);
    let before = w._smtp.received().len();
    w.p.ok(&["run", "--once"]);
    assert_eq!(w._smtp.received().len(), before, "paused: nothing sent");
    // ...and is once an operator lifts the pause.
    w.p.ok(&["resume", "--mailbox", "sales"]);
    assert!(w.p.status_json()["paused_mailboxes"]
        .as_array()
        .unwrap()
        .is_empty());
    w.p.ok(&["run", "--once"]);
    let got = w._smtp.received();
    assert_eq!(got.len(), before + 1);
    assert_eq!(got[before].to_addr(), "new@prospect.example");
}

#[tokio::test(flavor = "multi_thread")]
async fn bouncing_mailbox_is_paused_sqlite() {
    bouncing_mailbox(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bouncing_mailbox_is_paused_postgres() {
    bouncing_mailbox(Db::Postgres).await;
}

/// The sequence's `on_reply` rule moves the contact who answered to its stage and adds
/// its tags, in the contact's timeline; the others keep theirs.
async fn on_reply_rule(db: Db) {
    let mut w = World::new(db, &["li@prospect.example", "wang@other.example"]).await;
    let path = w.p.path("sequences/intro.yaml");
    let seq = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        seq.replacen(
            "sender: sales\n",
            "sender: sales\non_reply: { stage: replied, tags: [warm, samples] }\n",
            1,
        ),
    )
    .unwrap();
    w.loaded = Loaded::load(&w.p.config, false).unwrap().0;
    let (id, subject) = w.first("li@prospect.example");
    let h = w
        .deliver(
            Folder::Inbox,
            &reply(
                "li@prospect.example",
                Some(&id),
                &format!("Re: {subject}"),
                "Yes, samples please.",
            ),
        )
        .await;
    assert_eq!(h.changed.len(), 1, "{h:?}");
    // The rule follows from the reply's event, through the runner's cursor, once,
    // though two daemons' runners go at it together.
    let (a, b) = tokio::join!(
        followup::app::rules::run(&w.loaded, &w.store, Utc::now()),
        followup::app::rules::run(&w.loaded, &w.store, Utc::now()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.rules + b.rules, 1, "{a:?} {b:?}");
    let again = followup::app::rules::run(&w.loaded, &w.store, Utc::now())
        .await
        .unwrap();
    assert_eq!(again.rules, 0, "nothing runs twice: {again:?}");
    let li = w
        .store
        .contact("li@prospect.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(li.stage, "replied");
    let wang = w
        .store
        .contact("wang@other.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wang.stage, "lead");
    let shown = w.p.ok(&["contacts", "show", "li@prospect.example"]);
    for needle in [
        "stage: replied",
        "stage_changed",
        "\"tag\":\"warm\"",
        "\"tag\":\"samples\"",
    ] {
        assert_eq!(
            shown.matches(needle).count(),
            1,
            "{needle} once in:\n{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_reply_rule_sqlite() {
    on_reply_rule(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_reply_rule_postgres() {
    on_reply_rule(Db::Postgres).await;
}
