//! Sequences to SMTP: what the server receives, in which order and spacing, and what
//! happens on 451 and 550.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{Db, Options, Project, Smtp};

/// A project sending to a fresh SMTP server that accepts everything.
fn accepting_project() -> (tempfile::TempDir, Smtp, Project) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = Project::new(
        Db::Sqlite,
        &Options {
            smtp_port: smtp.port,
            ..Options::default()
        },
    );
    (tmp, smtp, p)
}

/// `contacts import` of the project's file `rel` into `intro`.
fn import(p: &Project, rel: &str) -> std::process::Output {
    p.run(&[
        "contacts",
        "import",
        p.path(rel).to_str().unwrap(),
        "--sequence",
        "intro",
    ])
}

fn three_steps_to_several_contacts(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits: ("1s", "2s"),
            ..Options::default()
        },
    );
    // A rule when the sequence ends: every contact moves on, in one go per batch.
    let seq = std::fs::read_to_string(p.path("sequences/intro.yaml")).unwrap();
    p.write(
        "sequences/intro.yaml",
        &seq.replacen(
            "sender: sales\n",
            "sender: sales\non_finish: { stage: nurture, tag: done }\n",
            1,
        ),
    );
    let emails = p.import_contacts(5);
    let daemon = p.daemon();
    smtp.wait_for(15, Duration::from_secs(30));
    // Give a wrongly repeated send the chance to show up before stopping.
    std::thread::sleep(Duration::from_millis(500));
    let status = daemon.stop();
    assert!(status.success(), "daemon exit status {status}");
    let got = smtp.received();
    assert_eq!(got.len(), 15, "5 contacts × 3 steps, each once");

    let log = smtp.log();
    let at = |mid: &str| {
        log.iter()
            .find(|l| l["message_id"] == mid)
            .and_then(|l| l["at"].as_f64())
            .unwrap()
    };
    let mut by_contact: BTreeMap<String, Vec<&crate::support::Received>> = BTreeMap::new();
    for r in &got {
        by_contact.entry(r.to_addr()).or_default().push(r);
    }
    assert_eq!(by_contact.keys().cloned().collect::<Vec<_>>(), emails);
    for (email, msgs) in &by_contact {
        let steps: Vec<String> = msgs.iter().map(|m| m.step()).collect();
        assert_eq!(steps, ["first", "bump", "last"], "{email}: steps in order");
        let first = msgs[0];
        let root_id = first.header("Message-ID").unwrap();
        assert!(
            root_id.ends_with("@sender.example>"),
            "Message-ID at the sender's domain: {root_id}"
        );
        assert!(first.header("Date").is_some());
        assert!(first.header("In-Reply-To").is_none());
        let i: usize = email[1..5].parse().unwrap();
        assert_eq!(
            first.header("Subject").unwrap(),
            format!("Samples for Company {i}")
        );
        assert_eq!(
            first.header("From").unwrap(),
            "\"Iris Zhang\" <iris@sender.example>"
        );
        assert_eq!(first.header("To").unwrap(), format!("Name{i} <{email}>"));
        assert!(first.raw.contains("Content-Type: multipart/alternative"));
        assert!(first.raw.contains("Content-Type: text/plain"));
        assert!(
            first
                .raw
                .contains(&format!("<p>Hi Name{i} at Company {i}</p>")),
            "HTML part rendered"
        );
        // Each follow-up replies to the latest message of the thread and refers to
        // every earlier one (RFC 5322 §3.6.4).
        let bump_id = msgs[1].header("Message-ID").unwrap();
        for (k, follow_up) in msgs[1..].iter().enumerate() {
            assert_eq!(
                follow_up.header("Subject").unwrap(),
                format!("Re: Samples for Company {i}")
            );
            assert_ne!(follow_up.header("Message-ID"), Some(root_id));
            if k == 0 {
                assert_eq!(follow_up.header("In-Reply-To"), Some(root_id));
                assert_eq!(follow_up.header("References"), Some(root_id));
            } else {
                assert_eq!(follow_up.header("In-Reply-To"), Some(bump_id));
                assert_eq!(
                    follow_up.header("References"),
                    Some(format!("{root_id} {bump_id}").as_str())
                );
            }
        }
        // Spacing: each follow-up waits its step's wait after the previous send.
        let t: Vec<f64> = msgs
            .iter()
            .map(|m| at(m.header("Message-ID").unwrap()))
            .collect();
        assert!(
            t[1] - t[0] >= 0.95,
            "{email}: bump {:.2}s after first, wait is 1s",
            t[1] - t[0]
        );
        assert!(
            t[2] - t[1] >= 1.95,
            "{email}: last {:.2}s after bump, wait is 2s",
            t[2] - t[1]
        );
        assert!(
            t[2] - t[0] < 15.0,
            "{email}: the sequence took {:.1}s",
            t[2] - t[0]
        );
    }
    let counts = p.counts();
    for step in ["first", "bump", "last"] {
        assert_eq!(counts[step]["sent"], 5, "{step}: {:?}", counts[step]);
        assert_eq!(counts[step]["scheduled"], 0);
    }
    assert_eq!(counts["last"]["finished"], 5);
    for e in &emails {
        let shown = p.ok(&["contacts", "show", e]);
        assert!(shown.contains("stage: nurture"), "{shown}");
        assert!(shown.contains("\"tag\":\"done\""), "{shown}");
    }
}

#[test]
fn three_steps_sqlite() {
    three_steps_to_several_contacts(Db::Sqlite);
}

#[test]
fn three_steps_postgres() {
    three_steps_to_several_contacts(Db::Postgres);
}

fn tempfail_then_accept(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "tempfail-first");
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits: ("0s", "0s"),
            ..Options::default()
        },
    );
    p.import_contacts(2);
    let daemon = p.daemon();
    let got = smtp.wait_for(6, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(300));
    daemon.stop();
    assert_eq!(got.len(), 6, "every step delivered after its 451");
    let log = smtp.log();
    let mut per_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in &log {
        per_id
            .entry(l["message_id"].as_str().unwrap().to_string())
            .or_default()
            .push(l["result"].as_str().unwrap().to_string());
    }
    assert_eq!(per_id.len(), 6, "a retry keeps its Message-ID: {per_id:?}");
    for (id, results) in &per_id {
        assert_eq!(results, &["451", "250"], "{id}");
    }
    let counts = p.counts();
    assert_eq!(counts["first"]["sent"], 2);
    assert_eq!(counts["last"]["finished"], 2);
}

#[test]
fn tempfail_then_accept_sqlite() {
    tempfail_then_accept(Db::Sqlite);
}

#[test]
fn tempfail_then_accept_postgres() {
    tempfail_then_accept(Db::Postgres);
}

#[test]
fn permanent_failure_stops_with_the_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "reject");
    let p = Project::new(
        Db::Sqlite,
        &Options {
            smtp_port: smtp.port,
            ..Options::default()
        },
    );
    p.import_contacts(2);
    let out = p.run(&["run", "--once"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("send failed permanently"), "{stderr}");
    assert!(
        stderr.contains("contact=c0000@prospect.example"),
        "{stderr}"
    );
    assert!(smtp.received().is_empty());
    assert_eq!(smtp.log().len(), 2, "one attempt each, no retry of a 5xx");
    let counts = p.counts();
    assert_eq!(counts["first"]["failed"], 2);
    assert_eq!(counts["first"]["stopped"], 2);
    let text = p.ok(&["status", "intro"]);
    assert!(
        text.contains("stopped x1: smtp: permanent error (550): 5.1.1 <c0000@prospect.example>"),
        "{text}"
    );
    assert!(text.contains("User unknown"), "{text}");
}

#[test]
fn header_injection_through_contact_fields_is_impossible() {
    let (_tmp, smtp, p) = accepting_project();
    // A quoted CSV cell may hold line breaks: a name and a company that try to add a Bcc.
    p.write(
        "evil.csv",
        "email,name,first_name,company\r\nli@prospect.example,\"Li\r\nBcc: victim@elsewhere.example\",Li,\"Acme\r\nBcc: victim@elsewhere.example\"\r\n",
    );
    assert!(import(&p, "evil.csv").status.success());
    p.ok(&["run", "--once"]);
    let got = smtp.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].envelope_to,
        ["li@prospect.example"],
        "no extra recipient"
    );
    assert!(got[0].header("Bcc").is_none(), "{}", got[0].raw);
    let head = got[0].raw.split("\r\n\r\n").next().unwrap();
    assert!(!head.contains("\r\nBcc:"), "{head}");
}

#[test]
fn chinese_and_german_names_round_trip() {
    let (_tmp, smtp, p) = accepting_project();
    p.write(
        "intl.csv",
        "\u{feff}email,name,first_name,company,timezone\r\nli.lei@prospect.example,李雷,雷,深圳远航贸易,Asia/Shanghai\r\njuergen@prospect.example,Jürgen Müller,Jürgen,Müller GmbH,Europe/Berlin\r\n",
    );
    assert!(import(&p, "intl.csv").status.success());
    p.ok(&["run", "--once"]);
    let got = smtp.received();
    assert_eq!(got.len(), 2);
    let li = got
        .iter()
        .find(|r| r.to_addr() == "li.lei@prospect.example")
        .unwrap();
    assert_eq!(
        li.header("To").unwrap(),
        "=?utf-8?b?5p2O6Zu3?= <li.lei@prospect.example>",
        "RFC 2047"
    );
    let subject = li.header("Subject").unwrap();
    assert!(subject.contains("=?utf-8?b?"), "{subject}");
    let show = p.ok(&["contacts", "show", "li.lei@prospect.example"]);
    assert!(show.contains("li.lei@prospect.example (李雷)"), "{show}");
    assert!(show.contains("company: 深圳远航贸易"), "{show}");
    let de = got
        .iter()
        .find(|r| r.to_addr() == "juergen@prospect.example")
        .unwrap();
    assert!(de.raw.contains("Hi J=C3=BCrgen"), "{}", de.raw);
}

#[test]
fn server_down_then_up_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let port = Smtp::free_port();
    let p = Project::new(
        Db::Sqlite,
        &Options {
            smtp_port: port,
            waits: ("0s", "0s"),
            ..Options::default()
        },
    );
    p.import_contacts(3);
    let daemon = p.daemon();
    // Nothing listens yet: connection refused is a temporary failure.
    std::thread::sleep(Duration::from_millis(800));
    let counts = p.counts();
    assert_eq!(counts["first"]["deferred"], 3, "{counts:?}");
    assert_eq!(counts["first"]["sent"], 0);
    let smtp = Smtp::start_on(&tmp.path().join("smtp"), "accept", port);
    let got = smtp.wait_for(9, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let log = daemon.log_text();
    daemon.stop();
    assert_eq!(
        got.len(),
        9,
        "all three steps for all three contacts once the server is up"
    );
    assert!(log.contains("send failed temporarily; will retry"), "{log}");
    assert!(
        log.contains("Connection refused") || log.contains("connection refused"),
        "{log}"
    );
    assert_eq!(p.counts()["last"]["finished"], 3);
}

/// A contact stopped while their mail waits its turn for a slow SMTP server is not
/// mailed: the daemon looks at its claim once more just before SMTP. The stop comes
/// from another process (`followup suppress`), as a reply seen by another daemon would.
#[test]
fn stopped_while_waiting_for_smtp_is_not_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "slow");
    let p = Project::new(
        Db::Sqlite,
        &Options {
            smtp_port: smtp.port,
            waits: ("1h", "1h"),
            connections: 1,
            lease: "1m",
            ..Options::default()
        },
    );
    let emails = p.import_contacts(3);
    let daemon = p.daemon();
    // The first message is on the wire (1.5 s each); the third waits behind it.
    smtp.wait_for(1, Duration::from_secs(30));
    p.ok(&["suppress", &emails[2]]);
    std::thread::sleep(Duration::from_secs(5));
    let got = smtp.received();
    let log = daemon.log_text();
    daemon.stop();
    let to: Vec<String> = got.iter().map(|r| r.to_addr()).collect();
    assert!(
        !to.contains(&emails[2]),
        "suppressed while queued, yet sent: {to:?}\n{log}"
    );
    assert_eq!(to.len(), 2, "{to:?}\n{log}");
    assert!(
        log.contains("not sent: stopped or paused while waiting to be sent"),
        "{log}"
    );
    assert_eq!(p.counts()["first"]["cancelled"], 1);
}

/// Every scheduler start takes a node number from the `nodes` table; the rows of starts
/// older than 30 days go, so that `run --once` from cron does not grow it for ever, while
/// new starts still get numbers no start had before.
fn old_node_rows_are_pruned(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits: ("0s", "0s"),
            ..Options::default()
        },
    );
    p.import_contacts(1);
    // A start 31 days ago and one an hour ago, as earlier runs left them.
    let now = chrono::Utc::now().timestamp_millis();
    p.sql(&format!(
        "INSERT INTO nodes (owner, started_at) VALUES ('old', {}), ('recent', {})",
        now - 31 * 86_400_000,
        now - 3_600_000
    ));
    let before = p.sql_count("SELECT max(id) FROM nodes");
    p.ok(&["run", "--once"]);
    assert!(
        !smtp.received().is_empty(),
        "the run sent, so it took a node"
    );
    assert_eq!(
        p.sql_count("SELECT count(*) FROM nodes WHERE owner = 'old'"),
        0
    );
    assert_eq!(
        p.sql_count("SELECT count(*) FROM nodes WHERE owner = 'recent'"),
        1
    );
    assert!(p.sql_count("SELECT max(id) FROM nodes") > before);
}

#[test]
fn old_node_rows_are_pruned_sqlite() {
    old_node_rows_are_pruned(Db::Sqlite);
}

#[test]
fn old_node_rows_are_pruned_postgres() {
    old_node_rows_are_pruned(Db::Postgres);
}

/// Addresses are parsed strictly at import: each bad one is refused with its row
/// number (not accepted and failed at send), an international domain is stored as
/// A-labels, an overlong field rejects its row, and the contacts already stored stay.
#[test]
fn import_refuses_bad_addresses_and_long_fields_by_row() {
    let (_tmp, smtp, p) = accepting_project();
    p.import_contacts(2);
    let long = "x".repeat(1001);
    p.write(
        "more.csv",
        &format!(
            "email,first_name,company\n\
             \"\"\"a@b\"\"@prospect.example\",A,Acme\n\
             c@[192.0.2.1],C,Cee\n\
             moc.elgoog\u{202E}@prospect.example,D,Dee\n\
             e@prospect.example,E,{long}\n\
             Kim@Bücher.Example,Kim,Bücher AG\n"
        ),
    );
    let out = import(&p, "more.csv");
    assert_eq!(out.status.code(), Some(1), "rows were rejected");
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "more.csv: row 2: '\"a@b\"@prospect.example' has more than one '@'",
        "more.csv: row 3: 'c@[192.0.2.1]': address literals such as [192.0.2.1] are not accepted",
        "more.csv: row 4: 'moc.elgoog\\u{202e}@prospect.example' contains spaces, control or invisible formatting characters",
        "more.csv: row 5: column 'company' has 1001 characters, more than max_field_length (1000)",
    ] {
        assert!(err.contains(expected), "expected\n{expected}\nin\n{err}");
    }
    assert!(
        !err.contains('\u{202E}'),
        "the override is never echoed raw"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("imported 1 contact(s): 1 new"), "{stdout}");
    p.ok(&["run", "--once"]);
    let mut to: Vec<String> = smtp.received().iter().map(|r| r.to_addr()).collect();
    to.sort();
    assert_eq!(
        to,
        [
            "c0000@prospect.example",
            "c0001@prospect.example",
            "kim@xn--bcher-kva.example"
        ]
    );
    assert_eq!(p.counts()["first"]["sent"], 3);
}

/// Contact fields that look like RFC 2047 encoded-words are encoded again (a mail
/// client shows the text as written, not what it would decode to), and a long field
/// is folded so that no header line passes 998 octets.
#[test]
fn encoded_words_and_long_fields_in_headers_are_encoded_and_folded() {
    let (_tmp, smtp, p) = accepting_project();
    // "=?utf-8?b?UGF5IG5vdw==?=" decodes to "Pay now".
    let smuggled = "=?utf-8?b?UGF5IG5vdw==?=";
    let company = format!("{smuggled}{}", "y".repeat(970));
    p.write(
        "c.csv",
        &format!("email,name,company\nli@prospect.example,{smuggled} Li,{company}\n"),
    );
    assert!(import(&p, "c.csv").status.success());
    p.ok(&["run", "--once"]);
    let got = smtp.received();
    assert_eq!(got.len(), 1);
    let head = got[0].raw.split("\r\n\r\n").next().unwrap();
    assert!(!head.contains(smuggled), "passed raw:\n{head}");
    for line in head.split("\r\n") {
        assert!(line.len() <= 998, "a {}-octet header line", line.len());
    }
    let parsed = mail_parser::MessageParser::default()
        .parse(got[0].raw.as_bytes())
        .unwrap();
    assert_eq!(
        parsed.subject(),
        Some(format!("Samples for {company}").as_str())
    );
    let to = parsed.to().and_then(|a| a.first()).unwrap();
    assert_eq!(to.name(), Some(format!("{smuggled} Li").as_str()));
}

/// The database, its WAL and shared-memory files and the outbox hold every contact
/// and mail: private to the user whatever the umask (here none at all).
#[cfg(unix)]
#[test]
fn database_and_outbox_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new(Db::Sqlite, &Options::default());
    let config = std::fs::read_to_string(&p.config).unwrap();
    let (head, rest) = config.split_once("smtp = \"smtp://").unwrap();
    let rest = rest.split_once('\n').unwrap().1;
    std::fs::write(&p.config, format!("{head}smtp = \"file://outbox\"\n{rest}")).unwrap();
    let under_umask_0 = |args: &[&str]| {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(crate::support::BIN)
            .arg("--config")
            .arg(&p.config)
            .args(args)
            .env_remove("FOLLOWUP_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    p.write("c.csv", "email,company\nli@prospect.example,Acme\n");
    let csv = p.path("c.csv");
    let import = [
        "contacts",
        "import",
        csv.to_str().unwrap(),
        "--sequence",
        "intro",
    ];
    assert!(under_umask_0(&import).status().unwrap().success());
    let mode = |rel: &str| {
        std::fs::metadata(p.path(rel))
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
    };
    // The daemon keeps the WAL and shared-memory files while it runs: look at them then.
    let mut daemon = under_umask_0(&["run"]).spawn().unwrap();
    let mut sent = false;
    for _ in 0..100 {
        sent = std::fs::read_dir(p.path("outbox")).is_ok_and(|d| d.count() > 0);
        if sent && mode("followup.db-wal").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let modes = [
        mode("followup.db"),
        mode("followup.db-wal"),
        mode("followup.db-shm"),
    ];
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(sent, "the daemon wrote the first step to the outbox");
    assert_eq!(modes, [Some(0o600); 3], "database, WAL, shared memory");
    assert_eq!(mode("outbox"), Some(0o700));
    let emls: Vec<_> = std::fs::read_dir(p.path("outbox"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(emls.len(), 1);
    assert_eq!(
        emls[0].metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A 100,000-row import with `--sequence` stores and enrolls every row (it used to
/// store the contacts, then fail with "too many SQL variables" and enroll none).
#[test]
fn a_hundred_thousand_rows_are_imported_and_enrolled() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let emails = p.import_contacts(100_000);
    assert_eq!(emails.len(), 100_000);
    assert_eq!(p.sql_count("SELECT count(*) FROM contacts"), 100_000);
    assert_eq!(
        p.sql_count(
            "SELECT count(*) FROM enrollments WHERE sequence = 'intro' AND state = 'active'"
        ),
        100_000
    );
}
