//! Running as a service: the systemd notify protocol against a socket the test
//! listens on, log formats, the unit file under systemd-analyze.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Daemon, Db, Options, Project, Smtp};

/// Datagrams from the daemon until `want` arrives (or 30 s pass: then the test fails
/// with what did arrive and the daemon's log).
fn until(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>, d: &Daemon) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return;
            }
        }
    }
    panic!(
        "no {want} from the daemon; got {seen:?}; log:\n{}",
        d.log_text()
    );
}

fn daemon_with(p: &Project, env: &[(&str, &str)], args: &[&str]) -> Daemon {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let mut cmd = p.cmd(&all);
    cmd.envs(env.iter().copied());
    Daemon::spawn(p, cmd)
}

/// Waits for `text` in the daemon's log.
fn wait_log(d: &Daemon, text: &str) {
    let start = Instant::now();
    while !d.log_text().contains(text) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {text:?} in the log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A SQLite project whose mailbox sends to a fresh SMTP server in `mode`; `tune` sets
/// the options beyond the port. The temp folder holds the server's files.
fn sending(
    mode: &str,
    tune: impl FnOnce(&mut Options<'static>),
) -> (tempfile::TempDir, Smtp, Project) {
    sending_on(Db::Sqlite, mode, tune)
}

fn sending_on(
    db: Db,
    mode: &str,
    tune: impl FnOnce(&mut Options<'static>),
) -> (tempfile::TempDir, Smtp, Project) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), mode);
    let mut o = Options {
        smtp_port: smtp.port,
        ..Options::default()
    };
    tune(&mut o);
    let p = Project::new(db, &o);
    (tmp, smtp, p)
}

#[test]
fn notify_ready_watchdog_stopping_then_exit_0() {
    let (tmp, smtp, p) = sending("accept", |_| {});
    p.import_contacts(3);
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let d = daemon_with(
        &p,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            // 2 s: pinged every second while the loops are alive.
            ("WATCHDOG_USEC", "2000000"),
        ],
        &[],
    );
    let mut seen = Vec::new();
    until(&sock, "READY=1", &mut seen, &d);
    // READY comes once the database is migrated: the contacts imported are there and
    // the daemon sends them.
    smtp.wait_for(3, Duration::from_secs(30));
    until(&sock, "WATCHDOG=1", &mut seen, &d);
    let _ = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status();
    until(&sock, "STOPPING=1", &mut seen, &d);
    let status = d.stop();
    assert!(status.success(), "exit status {status:?}");
    let ready = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    let stopping = seen.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(ready < stopping, "{seen:?}");
}

#[test]
fn journald_lines_have_a_priority_and_no_timestamp_json_lines_parse() {
    let p = Project::new(Db::Sqlite, &Options::default());
    // Not a terminal (a file), as under systemd: journald style by default.
    let d = daemon_with(&p, &[], &[]);
    wait_log(&d, "followup daemon started");
    let path = d.log.clone();
    d.stop();
    let log = std::fs::read_to_string(path).unwrap();
    for line in log.lines() {
        assert!(
            line.starts_with("<3>")
                || line.starts_with("<4>")
                || line.starts_with("<6>")
                || line.starts_with("<7>"),
            "no priority prefix: {line:?}"
        );
        // No timestamp: the journal stamps lines itself.
        assert!(!line.contains("Z "), "timestamp in {line:?}");
        assert!(!line.contains('\u{1b}'), "colour in {line:?}");
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>") && l.contains("followup daemon started")),
        "{log}"
    );

    let d = daemon_with(&p, &[], &["--log-format", "json"]);
    wait_log(&d, "followup daemon started");
    let text = d.log_text();
    d.stop();
    let started = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["message"] == "followup daemon started")
        .unwrap();
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string());
    assert!(started["mailboxes"].is_number(), "{started}");
}

/// `deploy/followup.service` as systemd itself judges it: `verify` passes and
/// `security --offline=yes` rates its exposure at most 2.0 ("OK").
#[test]
fn unit_file_verifies_and_rates_ok() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    };
    assert!(out.status.success());
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/followup.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", unit])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for followup.service:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
    // `verify` checks that ExecStart= names an executable: the one cargo built stands in
    // for /usr/local/bin/followup.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("followup.service");
    std::fs::write(
        &copy,
        std::fs::read_to_string(unit)
            .unwrap()
            .replace("/usr/local/bin/followup", crate::support::BIN),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Secrets that followup.toml names no source for come from systemd credentials
/// ($CREDENTIALS_DIRECTORY, LoadCredential=), by the name README gives.
#[test]
fn secrets_come_from_systemd_credentials() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let config = std::fs::read_to_string(&p.config).unwrap();
    let port = Smtp::free_port();
    p.write(
        "followup.toml",
        &format!(
            "{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://t.example.com\"\n"
        ),
    );
    let out = p.run(&["check"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(
        creds.path().join("http-secret"),
        "0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let out = p
        .cmd(&["check"])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Imports one contact into `intro` while the daemon runs.
fn enroll_one(p: &Project, email: &str) {
    let file = p.path(&format!("{email}.csv"));
    std::fs::write(
        &file,
        format!("email,first_name,company\n{email},Ann,Acme\n"),
    )
    .unwrap();
    p.ok(&[
        "contacts",
        "import",
        file.to_str().unwrap(),
        "--sequence",
        "intro",
    ]);
}

/// The message sent to `email`, once it arrives.
fn mail_to(smtp: &Smtp, email: &str, d: &Daemon) -> crate::support::Received {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(r) = smtp.received().into_iter().find(|r| r.to_addr() == email) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing sent to {email}; log:\n{}", d.log_text());
}

#[test]
fn reload_takes_a_valid_project_and_keeps_the_old_one_on_errors() {
    // Only first steps go out during the test.
    let (_tmp, smtp, p) = sending("accept", |o| o.waits = ("1d", "1d"));
    let d = p.daemon();
    wait_log(&d, "followup daemon started");
    enroll_one(&p, "before@prospect.example");
    assert!(mail_to(&smtp, "before@prospect.example", &d)
        .raw
        .contains("STEP=first"));

    // A valid edit: `followup reload` signals the daemon through its pid file.
    let first = std::fs::read_to_string(p.path("templates/first.hbs")).unwrap();
    p.write(
        "templates/first.hbs",
        &first.replace("STEP=first", "STEP=first VERSION=2"),
    );
    let out = p.ok(&["reload"]);
    assert!(out.contains("asked the daemon"), "{out}");
    wait_log(&d, "send loop: now on the reloaded project");
    enroll_one(&p, "after@prospect.example");
    assert!(mail_to(&smtp, "after@prospect.example", &d)
        .raw
        .contains("VERSION=2"));

    // The CLI refuses a broken project too: contacts are imported below through a
    // copy of the valid one on the same database.
    let shadow = p.path("shadow");
    for rel in [
        "followup.toml",
        "sequences/intro.yaml",
        "templates/first.hbs",
        "templates/first.html",
        "templates/bump.hbs",
        "templates/last.hbs",
    ] {
        let to = shadow.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(p.path(rel), to).unwrap();
    }
    // A broken template and an unknown one: `followup reload` refuses to signal...
    p.write(
        "templates/first.hbs",
        "---\nsubject: \"Samples\"\n---\n{{#each items}}\nVERSION=3\n",
    );
    let seq = std::fs::read_to_string(p.path("sequences/intro.yaml")).unwrap();
    p.write(
        "sequences/intro.yaml",
        &seq.replace("template: last", "template: lastt"),
    );
    let out = p.run(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // ...and a SIGHUP anyway is refused by the daemon, every error logged.
    let _ = Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status();
    wait_log(&d, "reload refused");
    let log = d.log_text();
    assert!(log.contains("templates/first.hbs"), "{log}");
    assert!(log.contains("lastt"), "{log}");
    let csv = p.path("broken.csv");
    std::fs::write(
        &csv,
        "email,first_name,company\nbroken@prospect.example,Bo,Acme\n",
    )
    .unwrap();
    let out = Command::new(crate::support::BIN)
        .arg("--config")
        .arg(shadow.join("followup.toml"))
        .args([
            "contacts",
            "import",
            csv.to_str().unwrap(),
            "--sequence",
            "intro",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = mail_to(&smtp, "broken@prospect.example", &d);
    assert!(r.raw.contains("VERSION=2") && !r.raw.contains("VERSION=3"));

    let status = d.stop();
    assert!(status.success(), "exit status {status:?}");
    // The pid file goes with the daemon.
    assert!(!p.path("followup.pid").exists());
}

/// A server that takes 1.5 s per message, one connection, batches of 2, first steps
/// only: the daemon always has messages in hand.
fn slow_sending() -> (tempfile::TempDir, Smtp, Project) {
    sending("slow", |o| {
        o.waits = ("1d", "1d");
        o.connections = 1;
        o.batch = 2;
    })
}

/// SIGTERM while a slow server takes its time: the daemon stops claiming, lets the
/// transactions in hand finish, records them, releases its claims and exits 0.
#[test]
fn sigterm_drains_what_is_in_hand_and_exits_0() {
    let (_tmp, smtp, p) = slow_sending();
    p.import_contacts(20);
    let d = p.daemon();
    smtp.wait_for(1, Duration::from_secs(30));
    let status = d.stop();
    assert!(status.success(), "exit status {status:?}");
    let received = smtp.received().len() as i64;
    assert!(received < 20, "stopped before the end: {received} sent");
    assert_eq!(
        p.sql_count("SELECT count(*) FROM messages WHERE status = 'sent'"),
        received
    );
    assert_eq!(
        p.sql_count("SELECT count(*) FROM messages WHERE status = 'sending'"),
        0
    );
    assert_eq!(p.sql_count("SELECT count(*) FROM claims"), 0);
    // What was not sent goes out at the next start.
    p.ok(&["run", "--once"]);
    assert_eq!(smtp.received().len(), 20);
}

fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?;
    Some((r.status().as_u16(), r.text().unwrap_or_default()))
}

/// Without tracking configured, the admin listener still serves /healthz, /readyz and
/// /metrics; /readyz says what keeps the daemon from its work.
fn admin_listener_without_tracking(db: Db) {
    let (_tmp, smtp, p) = sending_on(db, "accept", |o| o.waits = ("1d", "1d"));
    let port = Smtp::free_port();
    let config = std::fs::read_to_string(&p.config).unwrap();
    p.write(
        "followup.toml",
        &format!("admin_listen = \"127.0.0.1:{port}\"\n{config}"),
    );
    p.import_contacts(2);
    let d = p.daemon();
    smtp.wait_for(2, Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let mut metrics = String::new();
    // The figures are read from the database: the second send shows once recorded.
    while start.elapsed() < Duration::from_secs(30) {
        metrics = get(&format!("{base}/metrics"))
            .map(|r| r.1)
            .unwrap_or_default();
        if metrics.contains("followup_mailbox_messages{mailbox=\"sales\",status=\"sent\"} 2") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        metrics.contains("followup_mailbox_messages{mailbox=\"sales\",status=\"sent\"} 2"),
        "{metrics}\n{}",
        d.log_text()
    );
    for name in [
        "followup_messages{status=\"sent\"} 2",
        "followup_enrollments_due",
        "followup_queue_oldest_due_seconds",
        "followup_claims",
        "followup_reloads_total{result=\"taken\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert_eq!(get(&format!("{base}/healthz")).unwrap().0, 200);
    assert_eq!(
        get(&format!("{base}/readyz")).unwrap(),
        (200, "ready\n".to_string())
    );
    // A mailbox paused for bouncing: not ready, and why.
    p.sql("INSERT INTO mailbox_pauses (mailbox, reason, at) VALUES ('sales', 'bounce rate 9%', 0)");
    let (status, body) = get(&format!("{base}/readyz")).unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains("mailbox sales paused: bounce rate 9%"),
        "{body}"
    );
    assert_eq!(get(&format!("{base}/nothing")).unwrap().0, 404);
    assert!(d.stop().success());
}

/// A backup taken while the daemon sends is a sound database; restore refuses while a
/// daemon runs, then brings the backup back and keeps the file it replaced.
#[test]
fn backup_while_sending_then_restore() {
    let (_tmp, smtp, p) = slow_sending();
    p.import_contacts(8);
    let d = p.daemon();
    smtp.wait_for(2, Duration::from_secs(30));
    let backup = p.path("backup.db");
    let out = p.ok(&["backup", backup.to_str().unwrap()]);
    assert!(out.contains("backed up to"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "backup readable by others: {mode:o}");
    }
    // Never over an existing file.
    assert!(!p
        .run(&["backup", backup.to_str().unwrap()])
        .status
        .success());
    // Not under a running daemon.
    let out = p.run(&["restore", backup.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is running"),
        "{out:?}"
    );
    assert!(d.stop().success());
    let sent_at_stop = p.sql_count("SELECT count(*) FROM messages WHERE status = 'sent'");
    p.ok(&["restore", backup.to_str().unwrap()]);
    let sent = p.sql_count("SELECT count(*) FROM messages WHERE status = 'sent'");
    assert!(
        (1..=sent_at_stop).contains(&sent),
        "restored {sent} sent, {sent_at_stop} at stop"
    );
    assert_eq!(p.sql_count("SELECT count(*) FROM contacts"), 8);
    assert!(std::fs::read_dir(p.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("followup.before-restore-")));
    // A file that is not a database is refused before anything is replaced.
    p.write("junk.db", "not a database");
    assert!(!p
        .run(&["restore", p.path("junk.db").to_str().unwrap()])
        .status
        .success());
    assert_eq!(p.sql_count("SELECT count(*) FROM contacts"), 8);
}

#[test]
fn admin_listener_without_tracking_sqlite() {
    admin_listener_without_tracking(Db::Sqlite);
}

#[test]
fn admin_listener_without_tracking_postgres() {
    admin_listener_without_tracking(Db::Postgres);
}

fn migrate_check_lists_what_would_run(db: Db) {
    let p = Project::new(db, &Options::default());
    let out = p.ok(&["migrate", "--check"]);
    assert!(out.contains("migration(s) would run"), "{out}");
    assert!(out.contains("0001 foundation"), "{out}");
    p.ok(&["migrate"]);
    assert_eq!(
        p.ok(&["migrate", "--check"]).trim(),
        "database is up to date"
    );
}

#[test]
fn migrate_check_lists_what_would_run_sqlite() {
    migrate_check_lists_what_would_run(Db::Sqlite);
}

#[test]
fn migrate_check_lists_what_would_run_postgres() {
    migrate_check_lists_what_would_run(Db::Postgres);
}
