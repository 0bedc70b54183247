//! Replies stop sequences, end to end against a real mail world on 127.0.0.1
//! (tests/support/mailworld.sh: Postfix delivering by LMTP to Dovecot with IDLE and
//! Sieve). The real `followup run` sends the first steps through Postfix and watches the
//! rep's INBOX and Sent folders over IMAP; the tests act as the prospects (mail sent
//! through Postfix, delivered by LMTP, seen by the watcher via IDLE) and as the rep (a
//! copy APPENDed to Sent). Auto-replies and bounces are the real ones: Pigeonhole's
//! vacation for ooo@prospect.test, Postfix's RFC 3464 DSN for unknown@prospect.test.
//!
//! Every case changes exactly the enrollment it should: the bystanders (other contacts
//! in the same sequence, one at the prospect's company where the logic allows it, one
//! elsewhere) must still be active on their next step.
//!
//! One world per test (starting one takes ~0.5 s); worlds run in parallel. On failure a
//! case prints the daemon's log and the tails of Dovecot's and Postfix's; `MW_SHOW=1`
//! prints them always.

use std::collections::HashMap;

use followup::model::EnrollmentState;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use followup::model::Enrollment;
use followup::store::{Store, WatchState};

use crate::support::{Daemon, Db, Options, Project};

/// Generous: machines running the suite are noisy.
const TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mailworld.sh");

pub(crate) const REP: &str = "rep@followup.test";
pub(crate) const LI: &str = "li@prospect.test";
const COLLEAGUE: &str = "colleague@prospect.test";
const OOO: &str = "ooo@prospect.test";
const UNKNOWN: &str = "unknown@prospect.test";
/// A contact at another company (the only other domain the world delivers to).
const BUYER: &str = "buyer@followup.test";

/// Polls `f` until it gives a value; panics with `what` and `context()` on timeout.
fn wait<T>(what: &str, context: impl Fn() -> String, f: impl FnMut() -> Option<T>) -> T {
    wait_up_to(TIMEOUT, what, context, f)
}

fn wait_up_to<T>(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------ the world

/// One message as it lies in a maildir.
#[derive(Debug, Clone)]
pub(crate) struct Mail {
    pub(crate) raw: String,
}

impl Mail {
    /// The first header of this name, unfolded.
    fn header(&self, name: &str) -> Option<String> {
        let head = self
            .raw
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .replace("\r\n", "\n");
        let mut found: Option<String> = None;
        for line in head.split('\n') {
            if let Some(v) = found.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    found = Some(v.trim().to_string());
                }
            }
        }
        found
    }

    fn is_from_rep(&self) -> bool {
        self.header("From").is_some_and(|f| f.contains(REP))
    }
}

/// A private Postfix + Dovecot, stopped on drop.
pub(crate) struct World {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl World {
    fn start() -> World {
        World::start_with(&[("MAILWORLD_EXTRA_USERS", BUYER)])
    }

    /// A world started with these variables (MAILWORLD_*, see mailworld.sh).
    pub(crate) fn start_with(vars: &[(&str, &str)]) -> World {
        let dir = tempfile::Builder::new()
            .prefix("mw")
            .tempdir_in("/tmp")
            .expect("temp dir for the mail world");
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(dir.path())
            .envs(vars.iter().copied())
            .output()
            .expect("bash tests/support/mailworld.sh");
        assert!(
            out.status.success(),
            "mailworld.sh start failed (needs root and postfix dovecot-imapd dovecot-lmtpd dovecot-sieve):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World { dir, env }
    }

    fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("mailworld.sh printed no {key}"))
    }

    pub(crate) fn port(&self, key: &str) -> u16 {
        self.get(key).parse().expect("a port number")
    }

    fn script(&self, cmd: &str) {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg(cmd)
            .arg(self.dir.path())
            .output()
            .expect("bash tests/support/mailworld.sh");
        assert!(
            out.status.success(),
            "mailworld.sh {cmd} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub(crate) fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = self.log(name);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- dovecot.log (tail)\n{}\n--- postfix.log (tail)\n{}",
            tail("dovecot.log"),
            tail("postfix.log")
        )
    }

    /// Messages in a user's folder ("" is INBOX), oldest first.
    fn mails(&self, user: &str, folder: &str) -> Vec<Mail> {
        let mut root: PathBuf = self.dir.path().join("mail").join(user);
        if !folder.is_empty() {
            root = root.join(format!(".{folder}"));
        }
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = std::fs::read_dir(root.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                files.push((t, e.path()));
            }
        }
        files.sort();
        files
            .iter()
            // A message may move from new/ to cur/ between the listing and the read.
            .filter_map(|(_, p)| std::fs::read(p).ok())
            .map(|b| Mail {
                raw: String::from_utf8_lossy(&b).into_owned(),
            })
            .collect()
    }

    /// Waits for a message in the user's INBOX that satisfies `pred`.
    pub(crate) fn wait_mail(&self, user: &str, what: &str, pred: impl Fn(&Mail) -> bool) -> Mail {
        wait(
            &format!("{what} in {user}'s INBOX"),
            || self.logs(),
            || self.mails(user, "").into_iter().find(|m| pred(m)),
        )
    }

    /// Sends `raw` (CRLF lines) through the world's Postfix, as a mail client would.
    fn send(&self, from: &str, to: &str, raw: &str) {
        let tcp = TcpStream::connect(("127.0.0.1", self.port("SMTP_PORT"))).expect("connect SMTP");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(tcp.try_clone().unwrap());
        let mut w = tcp;
        let expect = |r: &mut BufReader<TcpStream>, code: &str| loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("SMTP reply");
            assert!(
                line.starts_with(code),
                "SMTP: expected {code}, got {line:?}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        };
        expect(&mut r, "220");
        for (cmd, code) in [
            ("EHLO client.prospect.test".to_string(), "250"),
            (format!("MAIL FROM:<{from}>"), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_string(), "354"),
        ] {
            write!(w, "{cmd}\r\n").unwrap();
            expect(&mut r, code);
        }
        for line in raw.trim_end_matches("\r\n").split("\r\n") {
            let dot = if line.starts_with('.') { "." } else { "" };
            write!(w, "{dot}{line}\r\n").unwrap();
        }
        write!(w, ".\r\n").unwrap();
        expect(&mut r, "250");
        write!(w, "QUIT\r\n").unwrap();
        expect(&mut r, "221");
    }

    /// APPENDs `raw` to a folder of `user`, as the rep's mail client does with what it
    /// sends.
    fn append(&self, user: &str, folder: &str, raw: &str) {
        self.append_at(user, folder, raw, None)
    }

    /// APPEND with an internal date (`"15-Mar-2025 10:00:00 +0000"`): mail that has
    /// been in the folder for a long time.
    fn append_at(&self, user: &str, folder: &str, raw: &str, date: Option<&str>) {
        let tcp = TcpStream::connect(("127.0.0.1", self.port("IMAP_PORT"))).expect("connect IMAP");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(tcp.try_clone().unwrap());
        let mut w = tcp;
        let read_line = |r: &mut BufReader<TcpStream>| {
            let mut line = String::new();
            r.read_line(&mut line).expect("IMAP response");
            assert!(!line.is_empty(), "IMAP server closed the connection");
            line
        };
        let tagged = |r: &mut BufReader<TcpStream>, tag: &str| loop {
            let line = read_line(r);
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "IMAP {tag}: {line:?}");
                break;
            }
        };
        read_line(&mut r); // greeting
        write!(w, "a1 LOGIN {user} {}\r\n", self.get("PASSWORD")).unwrap();
        tagged(&mut r, "a1");
        let date = date.map(|d| format!(" \"{d}\"")).unwrap_or_default();
        write!(w, "a2 APPEND {folder} (\\Seen){date} {{{}}}\r\n", raw.len()).unwrap();
        let cont = read_line(&mut r);
        assert!(cont.starts_with('+'), "APPEND: {cont:?}");
        w.write_all(raw.as_bytes()).unwrap();
        write!(w, "\r\n").unwrap();
        tagged(&mut r, "a2");
        write!(w, "a3 LOGOUT\r\n").unwrap();
        tagged(&mut r, "a3");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A message from a prospect (or the rep), CRLF lines.
fn message(from: &str, to: &str, subject: &str, extra: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{:016x}@client.prospect.test>\r\n{extra}MIME-Version: 1.0\r\n{body}",
        chrono::Utc::now().to_rfc2822(),
        fastrand::u64(..)
    )
}

fn text(body: &str) -> String {
    format!("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n")
}

fn threaded(id: &str) -> String {
    format!("In-Reply-To: {id}\r\nReferences: {id}\r\n")
}

// ------------------------------------------------------------------ a case

/// A project whose mailbox `sales` is rep@followup.test in the world, with the daemon
/// running and the contacts enrolled in `intro`.
struct Case {
    // Dropped in this order: the daemon before the world it talks to.
    daemon: Option<Daemon>,
    store: Store,
    p: Project,
    world: World,
    rt: tokio::runtime::Runtime,
}

impl Case {
    /// `waits`: of the second and third steps.
    fn new(db: Db, contacts: &[&str], waits: (&str, &str)) -> Case {
        Case::build(db, contacts, waits, true)
    }

    /// The rep's mailbox watched over `imap+starttls://` or `imaps://`, the server's
    /// certificate checked against the world's private CA (`ca_file`).
    fn over_tls(db: Db, contacts: &[&str], waits: (&str, &str), tls: ImapTls) -> Case {
        Case::make(db, contacts, waits, true, Some(tls))
    }

    /// `run`: start the daemon at once.
    fn build(db: Db, contacts: &[&str], waits: (&str, &str), run: bool) -> Case {
        Case::make(db, contacts, waits, run, None)
    }

    fn make(
        db: Db,
        contacts: &[&str],
        waits: (&str, &str),
        run: bool,
        tls: Option<ImapTls>,
    ) -> Case {
        let world = World::start();
        let imap = match tls {
            None => format!("imap = \"imap://127.0.0.1:{}\"", world.port("IMAP_PORT")),
            Some(tls) => {
                let (scheme, port) = match tls {
                    ImapTls::StartTls => ("imap+starttls", world.port("IMAP_PORT")),
                    ImapTls::Implicit => ("imaps", world.port("IMAPS_PORT")),
                };
                format!(
                    "imap = \"{scheme}://127.0.0.1:{port}\"\nca_file = \"{}\"",
                    world.get("CA_FILE")
                )
            }
        };
        let mut p = Project::new(
            db,
            &Options {
                waits,
                ..Options::default()
            },
        );
        p.env
            .push(("MW_REP_PASSWORD".into(), world.get("PASSWORD").into()));
        p.write(
            "followup.toml",
            &format!(
                "database = \"{}\"\ntimezone = \"Asia/Shanghai\"\nwindow = \"always\"\n\n\
                 [send]\nlease = \"5s\"\nretry_base = \"1s\"\nretry_max = \"2s\"\n\n\
                 [mailboxes.sales]\nfrom = \"Rep <{REP}>\"\nsmtp = \"smtp://127.0.0.1:{}\"\n\
                 {imap}\nuser = \"{REP}\"\npassword_env = \"MW_REP_PASSWORD\"\n\
                 append_sent = true\n",
                p.database,
                world.port("SMTP_PORT"),
            ),
        );
        let mut csv = String::from("email,first_name,company\n");
        for c in contacts {
            csv.push_str(&format!("{c},Li,Acme\n"));
        }
        p.write("contacts.csv", &csv);
        if !contacts.is_empty() {
            p.ok(&[
                "contacts",
                "import",
                p.path("contacts.csv").to_str().unwrap(),
                "--sequence",
                "intro",
            ]);
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = rt
            .block_on(Store::open(&p.database))
            .expect("open the test database");
        let daemon = run.then(|| p.daemon());
        Case {
            daemon,
            store,
            p,
            world,
            rt,
        }
    }

    fn context(&self) -> String {
        format!(
            "--- daemon log\n{}\n{}",
            self.daemon
                .as_ref()
                .map(|d| d.log_text())
                .unwrap_or_default(),
            self.world.logs()
        )
    }

    fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        wait(what, || self.context(), f)
    }

    /// The first step as `email` received it (through Postfix and Dovecot), once the
    /// daemon has also recorded it as sent (its outcome is committed just after the
    /// server accepts it, which may be a moment after delivery on a busy machine).
    fn first(&self, email: &str) -> Mail {
        let mail = self.wait(&format!("the first step in {email}'s INBOX"), || {
            self.world
                .mails(email, "")
                .into_iter()
                .find(|m| m.is_from_rep() && m.raw.contains("STEP=first"))
        });
        self.wait(&format!("{email}'s first step recorded as sent"), || {
            (self.enrollment(email).step_id != "first").then_some(())
        });
        mail
    }

    /// Mail from the rep (the daemon or by hand) in `email`'s INBOX.
    fn sent_by_rep(&self, email: &str) -> Vec<Mail> {
        self.world
            .mails(email, "")
            .into_iter()
            .filter(Mail::is_from_rep)
            .collect()
    }

    fn enrollment(&self, email: &str) -> Enrollment {
        self.rt
            .block_on(self.store.enrollment("intro", email))
            .expect("query the enrollment")
            .unwrap_or_else(|| panic!("{email} is not enrolled"))
    }

    fn suppressed(&self, email: &str) -> bool {
        self.rt
            .block_on(self.store.is_suppressed(email))
            .expect("query suppression")
    }

    fn watchers(&self) -> Vec<WatchState> {
        self.rt
            .block_on(self.store.watch_states())
            .expect("query watch states")
    }

    /// Waits until `email`'s enrollment leaves `active`, and returns it.
    fn changed(&self, email: &str) -> Enrollment {
        self.wait(&format!("{email}'s enrollment to change"), || {
            Some(self.enrollment(email)).filter(|e| e.state != EnrollmentState::Active)
        })
    }

    /// Waits until `email`'s enrollment leaves `active`, asserts it stopped for
    /// `reason`, and returns it.
    fn stopped(&self, email: &str, reason: &str) -> Enrollment {
        let e = self.changed(email);
        assert_eq!(
            (
                e.state.as_str(),
                e.cause.as_ref().map(|c| c.to_string()).as_deref()
            ),
            ("stopped", Some(reason)),
            "{email}"
        );
        e
    }

    /// Active, waiting for its second step: the first went out and nothing else happened.
    fn assert_untouched(&self, email: &str) {
        let e = self.enrollment(email);
        assert_eq!(
            (
                e.state.as_str(),
                e.step_id.as_str(),
                e.cause.as_ref().map(|c| c.to_string()).as_deref()
            ),
            ("active", "bump", None),
            "{email} should be untouched: {e:?}"
        );
        assert!(!self.suppressed(email), "{email} should not be suppressed");
    }

    /// Waits until both watchers (INBOX, Sent) are idling.
    fn wait_idle(&self) {
        self.wait("both IMAP watchers idling", || {
            let w = self.watchers();
            (w.len() == 2 && w.iter().all(|s| s.state == "idle")).then_some(())
        });
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    fn replied_count(&self) -> i64 {
        let s = self.p.status_json();
        s["sequences"]
            .as_array()
            .expect("status lists sequences")
            .iter()
            .filter(|q| q["sequence"] == "intro")
            .flat_map(|q| q["steps"].as_array().cloned().unwrap_or_default())
            .map(|row| row["replied"].as_i64().unwrap_or(0))
            .sum()
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("MW_SHOW").is_some() {
            eprintln!("{}", self.context());
        }
    }
}

/// `li` answers our first mail (from her or from someone else) with `build(id, subject)`.
fn answer(c: &Case, from: &str, build: impl Fn(&str, &str) -> String) {
    let first = c.first(LI);
    let id = first
        .header("Message-ID")
        .expect("our mail has a Message-ID");
    let subject = first.header("Subject").expect("our mail has a Subject");
    c.world.send(from, REP, &build(&id, &subject));
}

/// li answers our first mail in its thread (In-Reply-To, References, `Re:`).
fn li_replies_in_thread(c: &Case, body: &str) {
    answer(c, LI, |id, subject| {
        message(
            "Li Lei <li@prospect.test>",
            "Rep <rep@followup.test>",
            &format!("Re: {subject}"),
            &threaded(id),
            &text(body),
        )
    });
}

// ------------------------------------------------------------------ the cases

/// A threaded reply stops exactly that enrollment, and its follow-up never goes out
/// although the bystander's does.
fn threaded_reply(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("10s", "1h"));
    c.first(BUYER);
    li_replies_in_thread(
        &c,
        "Yes, please send samples and a price list.\r\n\r\n> Hi Li,\r\n> STEP=first",
    );
    let e = c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
    // The bystander's follow-up is sent on time; li's, due at about the same moment, is
    // not: by the time hers was due (10 s after her first step) plus the scheduler's
    // poll and delivery, none has arrived.
    let due = e.last_sent_at.expect("li's first step was sent") + chrono::Duration::seconds(13);
    c.wait("the bystander's follow-up, and li's due time", || {
        let bump = c
            .sent_by_rep(BUYER)
            .iter()
            .any(|m| m.raw.contains("STEP=bump"));
        (bump && chrono::Utc::now() > due).then_some(())
    });
    let to_li = c.sent_by_rep(LI);
    assert_eq!(
        to_li.len(),
        1,
        "li replied, so only the first step: {to_li:?}"
    );
    assert_eq!(c.replied_count(), 1);
}

#[derive(Clone, Copy)]
enum ImapTls {
    StartTls,
    Implicit,
}

/// A reply over TLS, with the world's CA in `ca_file`: the daemon's copy goes into Sent
/// and li's reply stops her sequence, and every login Dovecot saw came over TLS.
fn reply_over_tls(db: Db, tls: ImapTls) {
    let c = Case::over_tls(db, &[LI, BUYER], ("1h", "1h"), tls);
    c.first(BUYER);
    li_replies_in_thread(&c, "Yes, please call me.");
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
    let log = c.world.log("dovecot.log");
    let logins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("imap-login: Info: Login: user=<rep@followup.test>"))
        .collect();
    assert!(!logins.is_empty(), "{}", c.context());
    assert!(
        logins.iter().all(|l| l.contains(", TLS")),
        "every login over TLS: {logins:#?}"
    );
}

fn reply_over_starttls(db: Db) {
    reply_over_tls(db, ImapTls::StartTls);
}

/// imaps:// goes through the same TLS set-up; one database is enough for it.
#[test]
fn reply_over_imaps() {
    reply_over_tls(Db::Sqlite, ImapTls::Implicit);
}

/// No In-Reply-To, only "Re:" and the address.
fn unthreaded_reply(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    c.first(BUYER);
    answer(&c, LI, |_, subject| {
        message(
            "li@prospect.test",
            "rep@followup.test",
            &format!("Re: {subject}"),
            "",
            &text("Call me tomorrow, please."),
        )
    });
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
}

/// A reply with only an HTML part (webmail, Outlook).
fn html_only_reply(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    c.first(BUYER);
    answer(&c, LI, |id, subject| {
        message(
            "Li Lei <li@prospect.test>",
            "Rep <rep@followup.test>",
            &format!("RE: {subject}"),
            &threaded(id),
            "Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Thanks, <b>interested</b>. What is your MOQ?</p>\
             <blockquote><p>Hi Li,</p><p>STEP=first</p></blockquote></body></html>\r\n",
        )
    });
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
}

/// A colleague answers in li's thread: li stops, the contact elsewhere does not.
fn colleague_reply(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    c.first(BUYER);
    answer(&c, COLLEAGUE, |id, subject| {
        message(
            "Zhao Min <colleague@prospect.test>",
            "Rep <rep@followup.test>",
            &format!("Re: {subject}"),
            &threaded(id),
            &text("I handle purchasing for Li. Please send me the catalogue."),
        )
    });
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
}

/// "Please remove me": stopped and the address suppressed for good.
fn remove_me(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    c.first(BUYER);
    answer(&c, LI, |id, subject| {
        message(
            "li@prospect.test",
            "rep@followup.test",
            &format!("Re: {subject}"),
            &threaded(id),
            &text("Please remove me from your list."),
        )
    });
    c.stopped(LI, "unsubscribed");
    assert!(c.suppressed(LI), "li asked to be removed");
    c.assert_untouched(BUYER);
}

/// The daemon's first mail to ooo@ triggers Pigeonhole's vacation reply: paused until
/// the return date, not stopped; li at the same company is not paused with her.
fn vacation(db: Db) {
    let c = Case::new(db, &[OOO, LI, BUYER], ("1h", "1h"));
    c.first(LI);
    c.first(BUYER);
    let e = c.changed(OOO);
    assert_eq!(
        e.state,
        EnrollmentState::Paused,
        "an auto-reply pauses: {e:?}"
    );
    assert_eq!(e.step_id, "bump", "resumes where it was: {e:?}");
    let until = e.paused_until.expect("paused until a date");
    // "I am back on 15 December": read from the responder's text, in the contact's time zone
    // (the project's, Asia/Shanghai); not the default pause.
    let local = until.with_timezone(&chrono_tz::Asia::Shanghai);
    assert!(
        until > chrono::Utc::now()
            && matches!(
                local.format("%m-%d").to_string().as_str(),
                "12-15" | "12-16"
            ),
        "paused until the return date (15 December): {local}"
    );
    // It was the real responder's mail.
    let ooo = c.world.wait_mail(REP, "the vacation reply", |m| {
        m.header("From").is_some_and(|f| f.contains(OOO))
    });
    assert!(
        ooo.header("Auto-Submitted")
            .is_some_and(|v| v.contains("auto-replied")),
        "{}",
        ooo.raw
    );
    c.assert_untouched(LI);
    c.assert_untouched(BUYER);
}

/// Postfix bounces the first mail to unknown@ with an RFC 3464 report: suppressed, and
/// stopped `bounced`.
fn bounce(db: Db) {
    let c = Case::new(db, &[UNKNOWN, LI, BUYER], ("1h", "1h"));
    c.first(LI);
    c.first(BUYER);
    c.stopped(UNKNOWN, "bounced");
    assert!(c.suppressed(UNKNOWN));
    let dsn = c.world.wait_mail(REP, "the bounce", |m| {
        m.header("Content-Type")
            .is_some_and(|t| t.contains("report-type=delivery-status"))
    });
    assert!(dsn.raw.contains(UNKNOWN), "{}", dsn.raw);
    c.assert_untouched(LI);
    c.assert_untouched(BUYER);
}

/// The daemon's own messages, appended to Sent, stop nothing; a mail the rep writes by
/// hand to li (sent, and its copy appended to Sent by the mail client) stops li's.
fn manual(db: Db) {
    let c = Case::new(db, &[LI, COLLEAGUE, BUYER], ("1h", "1h"));
    for who in [LI, COLLEAGUE, BUYER] {
        c.first(who);
    }
    // The Sent watcher has looked at all three of our own messages.
    c.wait("the Sent watcher to pass our 3 messages", || {
        let sent = c.world.mails(REP, "Sent");
        let w = c.watchers();
        let last = w.iter().find(|s| s.folder == "Sent").map(|s| s.last_uid);
        (sent.len() == 3 && last == Some(3)).then_some(())
    });
    for who in [LI, COLLEAGUE, BUYER] {
        c.assert_untouched(who);
    }
    let by_hand = message(
        "Rep <rep@followup.test>",
        "Li Lei <li@prospect.test>",
        "Lunch at the Canton Fair?",
        "",
        &text("Hi Li, shall we meet at booth 12.1 on Tuesday?"),
    );
    c.world.send(REP, LI, &by_hand);
    c.world.append(REP, "Sent", &by_hand);
    c.stopped(LI, "manual");
    c.assert_untouched(COLLEAGUE);
    c.assert_untouched(BUYER);
}

/// Dovecot restarts while the watchers idle: they reconnect, and a reply sent after the
/// restart is handled.
fn imap_restart(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    c.first(BUYER);
    c.first(LI);
    c.wait_idle();
    c.world.script("restart-imap");
    // Both watchers notice and come back (they set their state once connected again).
    c.wait("both watchers to reconnect", || {
        let log = c.daemon.as_ref()?.log_text();
        (log.matches("IMAP watcher reconnected").count() >= 2).then_some(())
    });
    answer(&c, LI, |id, subject| {
        message(
            "li@prospect.test",
            "rep@followup.test",
            &format!("Re: {subject}"),
            &threaded(id),
            &text("Got it, thanks. Send the offer."),
        )
    });
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
    let log = c.daemon().log_text();
    assert!(
        !log.contains("UIDVALIDITY changed"),
        "nothing was renumbered:\n{log}"
    );
}

/// The daemon is down while li replies: started again, it catches up from its
/// checkpoint, handles the reply once and sends nothing twice.
fn catch_up(db: Db) {
    let mut c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    c.first(BUYER);
    c.first(LI);
    c.wait_idle();
    let daemon = c.daemon.take().expect("the daemon runs");
    let first_log = daemon.log_text();
    let status = daemon.stop();
    assert!(status.success(), "daemon exit: {status}");
    answer(&c, LI, |id, subject| {
        message(
            "li@prospect.test",
            "rep@followup.test",
            &format!("Re: {subject}"),
            &threaded(id),
            &text("Yes, interested. Call me."),
        )
    });
    // Delivered while nobody watches.
    let delivered = c.world.wait_mail(REP, "li's reply", |m| {
        m.header("From").is_some_and(|f| f.contains(LI))
    });
    let reply_id = delivered.header("Message-ID").unwrap_or_default();
    assert_eq!(
        c.enrollment(LI).state,
        EnrollmentState::Active,
        "nobody watched yet"
    );
    c.daemon = Some(c.p.daemon());
    let e = c.changed(LI);
    assert_eq!(
        (
            e.state.as_str(),
            e.cause.as_ref().map(|c| c.to_string()).as_deref()
        ),
        ("stopped", Some("replied")),
        "reply {reply_id}"
    );
    c.assert_untouched(BUYER);
    c.wait_idle();
    assert_eq!(c.replied_count(), 1, "handled once");
    assert_eq!(c.sent_by_rep(LI).len(), 1, "nothing sent twice");
    // Nothing was renumbered: no alarming rescan warning, before or after the restart.
    for log in [first_log, c.daemon().log_text()] {
        assert!(log.contains("IMAP watcher connected"), "{log}");
        assert!(!log.contains("UIDVALIDITY changed"), "{log}");
    }
}

/// The watcher's first start leaves the mail long in the folder alone: an old
/// conversation with someone enrolled today is no reply to the sequence. Mail that
/// arrives afterwards is handled.
fn first_start_skips_old_mail(db: Db) {
    let mut c = Case::build(db, &[LI, BUYER], ("1h", "1h"), false);
    // Li and the rep wrote to each other last year, long before followup.
    c.world.append_at(
        REP,
        "INBOX",
        &message(
            "li@prospect.test",
            "rep@followup.test",
            "Re: our meeting at the Canton Fair",
            "",
            &text("Thanks, see you next year."),
        ),
        Some("15-Mar-2025 10:00:00 +0000"),
    );
    c.daemon = Some(c.p.daemon());
    c.first(LI);
    c.first(BUYER);
    c.wait_idle();
    c.wait("li's first step recorded as sent", || {
        (c.enrollment(LI).step_id == "bump").then_some(())
    });
    c.assert_untouched(LI);
    c.assert_untouched(BUYER);
    // A real reply now is seen and stops her, and only it is counted.
    answer(&c, LI, |id, subject| {
        message(
            "li@prospect.test",
            "rep@followup.test",
            &format!("Re: {subject}"),
            &threaded(id),
            &text("Interested, please call."),
        )
    });
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
    assert_eq!(c.replied_count(), 1);
}

/// Puts a sent step back into the state that a daemon killed between the SMTP
/// server's acceptance and its own commit leaves behind: the message `sending`, its end
/// of data written (`wire = 'left'`), with its
/// lease run out, the enrollment still at that step and claimed by the dead daemon.
/// `new_id` renames the message, as if the copy in Sent were not there.
fn crash_after_smtp(c: &Case, message_id: &str, new_id: &str) {
    let statements = [
        format!(
            "UPDATE messages SET status = 'sending', wire = 'left', sent_at = NULL, locked_until = 1, \
             message_id = '{new_id}' WHERE message_id = '{message_id}'"
        ),
        format!(
            "UPDATE enrollments SET step_id = 'first', step_index = 0, priority = 1, \
             state = 'active', next_run_at = 1, \
             thread_message_id = NULL, thread_subject = NULL \
             WHERE id = (SELECT enrollment_id FROM messages WHERE message_id = '{new_id}')"
        ),
        format!(
            "INSERT INTO claims (enrollment_id, owner, until) \
             SELECT enrollment_id, 'dead', 1 FROM messages WHERE message_id = '{new_id}'"
        ),
    ];
    c.rt.block_on(async {
        if c.p.database.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&c.p.database).await.unwrap();
            for q in &statements {
                assert_eq!(
                    sqlx::query(q).execute(&pool).await.unwrap().rows_affected(),
                    1,
                    "{q}"
                );
            }
            pool.close().await;
        } else {
            let pool = sqlx::PgPool::connect(&c.p.database).await.unwrap();
            for q in &statements {
                assert_eq!(
                    sqlx::query(q).execute(&pool).await.unwrap().rows_affected(),
                    1,
                    "{q}"
                );
            }
            pool.close().await;
        }
    });
}

/// Messages left in doubt by a crash are settled through the Sent folder: one found
/// there counts as sent and is not sent again; one missing is sent again under its
/// Message-ID. Nothing waits for an operator.
fn in_doubt_settled_through_sent(db: Db) {
    let mut c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    let li_first = c.first(LI);
    c.first(BUYER);
    c.wait("both first steps recorded", || {
        (c.enrollment(LI).step_id == "bump" && c.enrollment(BUYER).step_id == "bump").then_some(())
    });
    let li_id = li_first.header("Message-ID").expect("a Message-ID");
    let buyer_id = c.first(BUYER).header("Message-ID").expect("a Message-ID");
    // Both copies are in the rep's Sent folder (append_sent).
    c.wait("our two messages in Sent", || {
        let sent = c.world.mails(REP, "Sent");
        let has = |id: &str| {
            sent.iter()
                .any(|m| m.header("Message-ID").as_deref() == Some(id))
        };
        (has(&li_id) && has(&buyer_id)).then_some(())
    });
    // ...and the Sent watcher has passed them (else, renamed below, the buyer's copy
    // would look like a mail the rep wrote by hand).
    c.wait("the Sent watcher past our two messages", || {
        c.rt.block_on(c.store.checkpoint("sales", "Sent"))
            .expect("query the checkpoint")
            .filter(|k| k.last_uid >= 2)
    });
    let status = c.daemon.take().expect("the daemon runs").stop();
    assert!(status.success(), "daemon exit: {status}");

    let missing = "<never-reached.1@followup.test>";
    crash_after_smtp(&c, &li_id, &li_id);
    crash_after_smtp(&c, &buyer_id, missing);
    c.daemon = Some(c.p.daemon());

    // Li's was in Sent: counted as sent, her sequence goes on, no second mail.
    c.wait("li's in-doubt message settled", || {
        let e = c.enrollment(LI);
        (e.state == EnrollmentState::Active && e.step_id == "bump").then_some(())
    });
    // The buyer's was not: sent again, under the Message-ID it had.
    let again = c.wait("the buyer's message sent again", || {
        c.sent_by_rep(BUYER)
            .into_iter()
            .find(|m| m.header("Message-ID").as_deref() == Some(missing))
    });
    assert!(
        again.raw.contains("STEP=first"),
        "the same step: {}",
        again.raw
    );
    c.wait("the buyer's enrollment advanced", || {
        (c.enrollment(BUYER).step_id == "bump").then_some(())
    });
    c.assert_untouched(LI);
    c.assert_untouched(BUYER);
    assert_eq!(c.sent_by_rep(LI).len(), 1, "li's message is not sent twice");
    let log = c.daemon().log_text();
    assert!(
        log.contains("in-doubt message settled through the Sent folder"),
        "{log}"
    );
    let s = c.p.status_json();
    let in_doubt: i64 = s["sequences"]
        .as_array()
        .expect("status lists sequences")
        .iter()
        .flat_map(|q| q["steps"].as_array().cloned().unwrap_or_default())
        .map(|row| row["in_doubt"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(in_doubt, 0, "nothing left for an operator: {s}");
}

/// Why `unsubscribe: link` is the default for one-to-one outreach, shown with
/// followup's own mail: with `one-click`, the first mail carries List-Unsubscribe
/// (RFC 8058) and the real Sieve vacation responder stays silent, so the prospect's
/// return date is never learnt and the sequence goes on; the `vacation` case shows the
/// same responder answering the same mail sent with `link`.
fn one_click_silences_vacation(db: Db) {
    let mut c = Case::build(db, &[OOO, LI], ("1h", "1h"), false);
    let seq = std::fs::read_to_string(c.p.path("sequences/intro.yaml")).unwrap();
    c.p.write(
        "sequences/intro.yaml",
        &seq.replacen(
            "sender: sales\n",
            "sender: sales\nunsubscribe: one-click\n",
            1,
        ),
    );
    c.daemon = Some(c.p.daemon());
    let mail = c.first(OOO);
    let lu = mail.header("List-Unsubscribe").expect("one-click header");
    assert!(
        lu.contains("mailto:rep@followup.test?subject=unsubscribe"),
        "{lu}"
    );
    c.first(LI);
    c.wait("Dovecot to discard the vacation reply", || {
        c.world
            .log("dovecot.log")
            .contains("discarding vacation response to mailinglist recipient")
            .then_some(())
    });
    c.wait_idle();
    let answered = c
        .world
        .mails(REP, "")
        .into_iter()
        .any(|m| m.header("From").is_some_and(|f| f.contains(OOO)));
    assert!(
        !answered,
        "no vacation reply to a mail with List-Unsubscribe"
    );
    // So nothing pauses the contact: the sequence would go on as if they were there.
    let e = c.enrollment(OOO);
    assert_eq!(e.state, EnrollmentState::Active, "{e:?}");
    assert!(e.paused_until.is_none(), "{e:?}");
}

/// With `append_sent`, each message the server takes is copied to the rep's Sent
/// folder over one IMAP login kept open, not a login per message.
fn sent_copies_over_one_login(db: Db) {
    let c = Case::new(db, &[LI, BUYER, COLLEAGUE], ("1h", "1h"));
    for who in [LI, BUYER, COLLEAGUE] {
        c.first(who);
    }
    c.wait("three copies in Sent", || {
        (c.world.mails(REP, "Sent").len() >= 3).then_some(())
    });
    c.wait_idle();
    let log = c.world.log("dovecot.log");
    let logins = log
        .lines()
        .filter(|l| l.contains("Login: user=<rep@followup.test>"))
        .count();
    // INBOX's watcher, Sent's watcher, and the copies' one session.
    assert_eq!(logins, 3, "{log}");
}

// ------------------------------------------------------------------ hostile mail

/// A delivery-status report listing `n` failed recipients (RFC 3464), as a bounce from
/// a hostile or broken server might.
fn huge_bounce(n: usize) -> String {
    let mut report = String::with_capacity(n * 72);
    report.push_str("Reporting-MTA: dns; mx.prospect.test\r\n");
    for i in 0..n {
        report.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; user{i}@nowhere.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
    }
    message(
        "MAILER-DAEMON@prospect.test",
        REP,
        "Undelivered Mail Returned to Sender",
        "Auto-Submitted: auto-replied\r\n",
        &format!(
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\n{report}\r\n--b--\r\n"
        ),
    )
}

/// A bounce listing 40,000 failed recipients (2.8 MB), then li's reply: the bounce
/// neither wedges the watcher nor is fetched again forever; the reply stops li.
fn huge_bounce_then_reply(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    c.first(BUYER);
    c.wait_idle();
    let bounce = huge_bounce(40_000);
    assert!(bounce.len() > 2_500_000, "{}", bounce.len());
    c.world.append(REP, "INBOX", &bounce);
    li_replies_in_thread(&c, "Yes, interested. Call me.");
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
    c.wait_idle();
    let st = c.p.status_json();
    assert_eq!(st["set_aside"], serde_json::json!([]), "{st}");
}

/// A message that fails every time it is recorded (here a trigger in the database
/// refuses it) is tried a bounded number of times, then set aside with its UID and
/// error, shown in `status`; li's reply after it stops her sequence.
fn poisoned_message_set_aside(db: Db) {
    let c = Case::new(db, &[LI, BUYER], ("1h", "1h"));
    const POISON: &str = "<poison@prospect.test>";
    match db {
        Db::Sqlite => {
            c.p.sql(&format!(
                "CREATE TRIGGER poison BEFORE INSERT ON inbound WHEN NEW.message_id = '{POISON}' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END"
            ));
        }
        Db::Postgres => {
            c.p.sql(&format!(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.message_id = '{POISON}' THEN RAISE EXCEPTION 'poisoned by the test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            ));
            c.p.sql("CREATE TRIGGER poison BEFORE INSERT ON inbound FOR EACH ROW EXECUTE FUNCTION poison()");
        }
    }
    c.first(BUYER);
    c.wait_idle();
    let poison = format!(
        "From: someone@elsewhere.test\r\nTo: {REP}\r\nSubject: Hello\r\nMessage-ID: {POISON}\r\n\
         MIME-Version: 1.0\r\n{}",
        text("Hi")
    );
    c.world.append(REP, "INBOX", &poison);
    li_replies_in_thread(&c, "Yes, interested. Call me.");
    c.stopped(LI, "replied");
    c.assert_untouched(BUYER);
    let st = c.p.status_json();
    let aside = st["set_aside"]
        .as_array()
        .expect("status lists set-aside messages");
    assert_eq!(aside.len(), 1, "{st}");
    assert_eq!(aside[0]["folder"], "INBOX", "{st}");
    assert_eq!(aside[0]["attempts"], 3, "{st}");
    assert!(
        aside[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("poisoned by the test")),
        "{st}"
    );
    // The reply came after the poison, and the checkpoint is past both.
    let uid = aside[0]["uid"].as_i64().expect("a UID");
    let last = c
        .watchers()
        .into_iter()
        .find(|w| w.folder == "INBOX")
        .expect("the INBOX watcher")
        .last_uid;
    assert!(last > uid, "checkpoint {last} past the set-aside UID {uid}");
    let text = c.p.ok(&["status"]);
    assert!(
        text.contains(&format!("set aside: sales/INBOX UID {uid}")),
        "{text}"
    );
    // Tried three times in all: two failures to try again, the third sets it aside.
    let log = c.daemon().log_text();
    assert_eq!(
        log.matches("could not handle the message").count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("message set aside").count(), 1, "{log}");
}

/// Twenty-five 10 MB mails arrive while the daemon is down: catching up, it reads a
/// bounded part of each, a few at a time, and its peak memory stays under 200 MB.
fn large_messages_bounded_memory(db: Db) {
    let mut c = Case::new(db, &[LI], ("1h", "1h"));
    c.first(LI);
    c.wait_idle();
    let daemon = c.daemon.take().expect("the daemon runs");
    assert!(daemon.stop().success());
    let line = "x".repeat(76);
    let mut body = String::with_capacity(10 << 20);
    while body.len() < 10 << 20 {
        body.push_str(&line);
        body.push_str("\r\n");
    }
    for i in 0..25 {
        let m = message(BUYER, REP, &format!("Catalogue {i}"), "", &text(&body));
        c.world.append(REP, "INBOX", &m);
    }
    li_replies_in_thread(&c, "Yes, interested. Call me.");
    c.daemon = Some(c.p.daemon());
    // Reading 25 large mails takes a while in a debug build on a busy machine: this
    // test is about memory, not speed (benches/classify.rs measures that).
    let e = wait_up_to(
        Duration::from_secs(300),
        "li's reply after the large mails",
        || c.context(),
        || Some(c.enrollment(LI)).filter(|e| e.state != EnrollmentState::Active),
    );
    assert_eq!(
        e.cause.as_ref().map(|c| c.to_string()).as_deref(),
        Some("replied"),
        "{e:?}"
    );
    c.wait_idle();
    let pid = c.daemon().child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    assert!(
        peak_kb < 200 * 1024,
        "peak RSS {} MB while catching up with 250 MB of mail",
        peak_kb / 1024
    );
    let log = c.daemon().log_text();
    assert!(
        log.contains("large message: classified on its first 2 MB"),
        "{log}"
    );
}

macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $case() { super::$case(crate::support::Db::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $case() { super::$case(crate::support::Db::Postgres) })*
        }
    };
}

on_both!(
    first_start_skips_old_mail,
    in_doubt_settled_through_sent,
    threaded_reply,
    reply_over_starttls,
    unthreaded_reply,
    html_only_reply,
    colleague_reply,
    remove_me,
    vacation,
    one_click_silences_vacation,
    bounce,
    manual,
    imap_restart,
    catch_up,
    huge_bounce_then_reply,
    poisoned_message_set_aside,
    sent_copies_over_one_login,
);

#[test]
fn large_messages_bounded_memory_sqlite() {
    large_messages_bounded_memory(Db::Sqlite)
}

/// A mailbox whose password both servers refuse: `status` says so in sentences that
/// name each server and quote its answer (Dovecot's IMAP login, aiosmtpd's SMTP AUTH),
/// not in Rust's debug notation.
#[test]
fn refused_logins_read_as_sentences_in_status() {
    let world = World::start();
    let tmp = tempfile::tempdir().unwrap();
    let smtp = crate::support::Smtp::start_with(
        &tmp.path().join("smtp"),
        "accept",
        &["--auth", &format!("{REP}:{}", world.get("PASSWORD"))],
    );
    let mut p = Project::new(Db::Sqlite, &Options::default());
    p.env
        .push(("MW_REP_PASSWORD".into(), "not-the-password".into()));
    let imap_port = world.port("IMAP_PORT");
    p.write(
        "followup.toml",
        &format!(
            "database = \"{}\"\ntimezone = \"UTC\"\nwindow = \"always\"\n\n\
             [mailboxes.sales]\nfrom = \"Rep <{REP}>\"\nsmtp = \"smtp://127.0.0.1:{}\"\n\
             imap = \"imap://127.0.0.1:{imap_port}\"\nuser = \"{REP}\"\n\
             password_env = \"MW_REP_PASSWORD\"\n",
            p.database, smtp.port,
        ),
    );
    p.import_contacts(1);
    let daemon = p.daemon();
    let context = || format!("--- daemon log\n{}\n{}", daemon.log_text(), world.logs());
    let imap = format!(
        "login as {REP} refused by 127.0.0.1:{imap_port}: [AUTHENTICATIONFAILED] Authentication failed."
    );
    let smtp_refusal = format!(
        "mailbox sales PAUSED: login refused by 127.0.0.1:{}: 535 ",
        smtp.port
    );
    let status = wait("both refusals in status", context, || {
        let status = p.ok(&["status"]);
        (status.contains(&imap) && status.contains(&smtp_refusal)).then_some(status)
    });
    for debug in ["Some(", "code: ", "info: ", "\\\""] {
        assert!(!status.contains(debug), "no debug notation: {status}");
    }
    let log = daemon.log_text();
    assert!(log.contains(&imap), "{log}");
    assert!(!log.contains("info: Some("), "{log}");
    daemon.stop();
}

/// What the tracking issue depends on: Pigeonhole's vacation does not answer mail that
/// carries a List-Unsubscribe header (RFC 5230), but does answer the same mail without.
#[test]
fn vacation_ignores_list_unsubscribe() {
    let w = World::start();
    let listed = message(
        "li@prospect.test",
        "ooo@prospect.test",
        "Samples for Acme",
        "List-Unsubscribe: <mailto:unsubscribe@prospect.test>\r\n",
        &text("Hi Olivia"),
    );
    let plain = message(
        "colleague@prospect.test",
        "ooo@prospect.test",
        "Samples for Acme",
        "",
        &text("Hi Olivia"),
    );
    w.send(LI, OOO, &listed);
    w.send(COLLEAGUE, OOO, &plain);
    w.wait_mail(COLLEAGUE, "the vacation reply", |m| {
        m.header("From").is_some_and(|f| f.contains(OOO))
    });
    wait(
        "Dovecot to discard the vacation reply to li",
        || w.logs(),
        || {
            w.log("dovecot.log")
                .contains("discarding vacation response to mailinglist recipient")
                .then_some(())
        },
    );
    let to_li = w.mails(LI, "");
    assert!(
        to_li.is_empty(),
        "no vacation reply to list mail: {to_li:?}"
    );
}
