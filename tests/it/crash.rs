//! Killed with SIGKILL at random moments and restarted, the daemon sends no step twice
//! and skips none, apart from messages the store marks in doubt; those an operator
//! then settles (`in-doubt drop` for what the server got, `release` for what it did
//! not), after which every contact has received every step exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::{Db, Options, Project, Smtp};

const CONTACTS: usize = 100;
const STEPS: usize = 3;

fn open_work(p: &Project) -> i64 {
    let c = p.counts();
    c.values()
        .map(|m| m["scheduled"] + m["sending"] + m["deferred"])
        .sum()
}

fn crash_and_restart(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits: ("1s", "1s"),
            batch: 10,
            connections: 2,
            // Long enough that no lease runs out on a loaded machine: a restarted
            // daemon takes a dead one's claims over through its liveness lock, not by
            // waiting out leases (a lease that runs out while its daemon lives puts
            // that daemon's `sending` messages in doubt, which is not what this counts).
            lease: "30s",
            ..Options::default()
        },
    );
    let emails = p.import_contacts(CONTACTS);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    // Every start ends in a SIGKILL.
    let mut starts = 0;
    let start = Instant::now();
    // Kill at random moments while there is work, at least ten times.
    while kills < 10 || open_work(&p) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "seed {seed}: not done after 4 minutes"
        );
        let d = p.daemon();
        starts += 1;
        if kills < 10 {
            std::thread::sleep(Duration::from_millis(rng.u64(30..600)));
            d.kill();
            kills += 1;
        } else {
            // Let it run to the end of what it can do, then stop it hard as well.
            std::thread::sleep(Duration::from_millis(1500));
            d.kill();
        }
    }
    // One more start marks what the last kill left in `sending` as in doubt.
    std::thread::sleep(Duration::from_millis(1200));
    p.ok(&["run", "--once"]);

    let received = smtp.received();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_step: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &received {
        *ids.entry(r.header("Message-ID").unwrap().to_string())
            .or_default() += 1;
        *per_step.entry((r.to_addr(), r.step())).or_default() += 1;
    }
    let listed = p.ok(&["in-doubt", "list"]);
    let in_doubt: Vec<String> = listed
        .lines()
        .filter(|l| l.starts_with('<'))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    // Only a message whose end of data may have reached the server is in doubt: at
    // most one per connection (2) per kill.
    assert!(
        in_doubt.len() <= starts * 2,
        "seed {seed}: at most one message per connection and kill can be in doubt ({starts} kills), got {}",
        in_doubt.len()
    );
    // Before the operator steps in: nothing twice, and only in-doubt steps missing.
    for (id, n) in &ids {
        assert_eq!(*n, 1, "seed {seed}: {id} received {n} times");
    }
    for ((to, step), n) in &per_step {
        assert_eq!(*n, 1, "seed {seed}: {to} got step {step} {n} times");
    }
    let counts = p.counts();
    let sent: i64 = counts.values().map(|m| m["sent"]).sum();
    let doubt: i64 = counts.values().map(|m| m["in_doubt"]).sum();
    assert_eq!(doubt as usize, in_doubt.len());
    assert_eq!(
        sent as usize + in_doubt.iter().filter(|id| ids.contains_key(*id)).count(),
        received.len(),
        "seed {seed}: every received message is recorded as sent, or is in doubt"
    );

    // The operator settles each doubt by looking at what the server got.
    for id in &in_doubt {
        let verb = if ids.contains_key(id) {
            "drop"
        } else {
            "release"
        };
        p.ok(&["in-doubt", verb, id]);
    }
    let d = p.daemon();
    let all = smtp.wait_for(CONTACTS * STEPS, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    d.stop();
    let all_after = smtp.received();
    assert_eq!(all.len(), all_after.len());
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for r in &all_after {
        assert!(
            seen.insert((r.to_addr(), r.step())),
            "seed {seed}: {} got {} twice",
            r.to_addr(),
            r.step()
        );
    }
    assert_eq!(
        seen.len(),
        CONTACTS * STEPS,
        "seed {seed}: every contact got every step"
    );
    for e in &emails {
        for s in ["first", "bump", "last"] {
            assert!(
                seen.contains(&(e.clone(), s.to_string())),
                "seed {seed}: {e} never got {s}"
            );
        }
    }
    let c = p.counts();
    assert_eq!(
        c["last"]["finished"] as usize, CONTACTS,
        "seed {seed}: {c:?}"
    );
    eprintln!(
        "crash test ({db:?}): seed {seed}, {starts} kills, {} in doubt settled",
        in_doubt.len()
    );
}

#[test]
fn crash_and_restart_sqlite() {
    crash_and_restart(Db::Sqlite);
}

#[test]
fn crash_and_restart_postgres() {
    crash_and_restart(Db::Postgres);
}

/// Two daemons on one database (two processes on one SQLite file; two on one
/// PostgreSQL, as several instances sharing the work): each step goes out once.
fn two_daemons_share_the_work(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits: ("0s", "1s"),
            batch: 10,
            ..Options::default()
        },
    );
    p.import_contacts(CONTACTS);
    let a = p.daemon();
    let b = p.daemon();
    let got = smtp.wait_for(CONTACTS * STEPS, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let (log_a, log_b) = (a.log_text(), b.log_text());
    assert!(a.stop().success() && b.stop().success());
    let mut seen = BTreeSet::new();
    for r in smtp.received() {
        assert!(
            seen.insert((r.to_addr(), r.step())),
            "{} got {} twice",
            r.to_addr(),
            r.step()
        );
    }
    assert_eq!(got.len(), CONTACTS * STEPS);
    assert_eq!(seen.len(), CONTACTS * STEPS);
    // The "sent" event, whatever the log format (`INFO sent contact=` on a terminal,
    // `<6>sent contact=` in the journal style a file gets).
    let sent_by = |log: &str| log.lines().filter(|l| l.contains("sent contact=")).count();
    assert_eq!(
        sent_by(&log_a) + sent_by(&log_b),
        CONTACTS * STEPS,
        "each send logged once"
    );
    assert!(
        sent_by(&log_a) > 0 && sent_by(&log_b) > 0,
        "both daemons did some of the work"
    );
    let c = p.counts();
    assert_eq!(c.values().map(|m| m["in_doubt"]).sum::<i64>(), 0);
    assert_eq!(c["last"]["finished"] as usize, CONTACTS);
}

#[test]
fn two_daemons_one_sqlite_file() {
    two_daemons_share_the_work(Db::Sqlite);
}

#[test]
fn two_daemons_one_postgres() {
    two_daemons_share_the_work(Db::Postgres);
}

/// The owner name a daemon logged when it started.
fn owner_of(log: &str) -> Option<String> {
    let rest = log.split("daemon started owner=\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

/// Two daemons on one database; one is killed while it holds claims whose leases last
/// ten minutes. The other sees at once that it died (its liveness lock is free) and
/// takes its claims over, never while it lived; every contact gets the first step
/// exactly once, apart from the one message the dead daemon may have had on the wire.
fn dead_daemons_claims_taken_over(db: Db) {
    // At 1.5 s a message, what the second daemon sends takes a while: keep it short.
    const N: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    // 1.5 s per message: the first daemon still holds most of its batch when killed.
    let smtp = Smtp::start(&tmp.path().join("smtp"), "slow");
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits: ("1h", "1h"),
            batch: 4,
            connections: 1,
            lease: "10m",
            ..Options::default()
        },
    );
    p.import_contacts(N);
    let a = p.daemon();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the first daemon to log its owner", &|| {
        owner_of(&a.log_text()).is_some()
    });
    let owner_a = owner_of(&a.log_text()).unwrap();
    let held_by_a = || {
        p.sql_count(&format!(
            "SELECT count(*) FROM claims WHERE owner = '{owner_a}'"
        ))
    };
    wait("the first daemon to claim", &|| held_by_a() > 0);
    let b = p.daemon();
    // The second daemon looks for dead daemons every half second: while the first
    // lives, it leaves its claims alone.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(held_by_a() > 0, "a live daemon's claims were taken");
    assert!(!b.log_text().contains("took over"), "{}", b.log_text());
    a.kill();
    let killed = Instant::now();
    wait("the dead daemon's claims to be taken over", &|| {
        held_by_a() == 0
    });
    // Its leases had ten minutes to run: only the liveness lock explains this. The bound
    // is loose for a busy machine; the check itself runs every 500 ms.
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "taken over after {:?}",
        killed.elapsed()
    );
    let in_doubt =
        || p.sql_count("SELECT count(*) FROM messages WHERE status = 'in_doubt'") as usize;
    wait("every first step recorded sent or in doubt", &|| {
        p.sql_count("SELECT count(*) FROM messages WHERE status IN ('sent', 'in_doubt')") as usize
            >= N
    });
    let log_b = b.log_text();
    assert!(b.stop().success());
    assert!(
        log_b.contains("took over the claims of daemons that died"),
        "{log_b}"
    );
    // Only the message on the dead daemon's one connection may have left.
    assert!(
        in_doubt() <= 1,
        "at most one message in doubt: {}",
        in_doubt()
    );
    let mut seen = BTreeSet::new();
    for r in smtp.received() {
        assert!(
            seen.insert(r.to_addr()),
            "{} got the first step twice",
            r.to_addr()
        );
    }
    // Every contact got it once, but for the one in doubt, which may or may not have
    // arrived.
    assert!(
        seen.len() <= N && seen.len() + in_doubt() >= N,
        "{} received",
        seen.len()
    );
}

#[test]
fn dead_daemons_claims_taken_over_sqlite() {
    dead_daemons_claims_taken_over(Db::Sqlite);
}

#[test]
fn dead_daemons_claims_taken_over_postgres() {
    dead_daemons_claims_taken_over(Db::Postgres);
}

/// A server that takes a message and hangs up instead of answering its end of data:
/// the message is in doubt (it may have arrived, and here it did), never retried as a
/// temporary failure; the next message goes out normally. The operator's `drop`
/// settles it.
fn hangup_after_end_of_data(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "hangup-once");
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            waits: ("1h", "1h"),
            batch: 10,
            connections: 1,
            ..Options::default()
        },
    );
    let emails = p.import_contacts(3);
    let d = p.daemon();
    // Each of the three first steps: the first hung up on, all taken by the server.
    smtp.wait_for(3, Duration::from_secs(30));
    let start = Instant::now();
    while p.sql_count("SELECT count(*) FROM messages WHERE status IN ('sent', 'in_doubt')") < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Retries come after 1 s (retry_base): give them time to happen if they would.
    std::thread::sleep(Duration::from_secs(3));
    let log = d.log_text();
    assert!(d.stop().success());
    let received = smtp.received();
    assert_eq!(received.len(), 3, "nothing sent twice: {received:?}");
    let in_doubt: Vec<String> = p
        .ok(&["in-doubt", "list"])
        .lines()
        .filter(|l| l.starts_with('<'))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(in_doubt.len(), 1, "{log}");
    assert!(
        log.contains("message in doubt: no answer after its end of data"),
        "{log}"
    );
    let first = &received[0];
    assert_eq!(first.header("Message-ID"), Some(in_doubt[0].as_str()));
    // The server did get it: the operator counts it as sent, and the contact moves on.
    p.ok(&["in-doubt", "drop", &in_doubt[0]]);
    let counts = p.counts();
    assert_eq!(counts["first"]["sent"], 3, "{counts:?}");
    assert_eq!(emails.len(), 3);
}

#[test]
fn hangup_after_end_of_data_sqlite() {
    hangup_after_end_of_data(Db::Sqlite);
}

#[test]
fn hangup_after_end_of_data_postgres() {
    hangup_after_end_of_data(Db::Postgres);
}
