//! Send throughput: followup rendering and sending a one-step sequence to Postfix's
//! `smtp-sink` on loopback, with its per-message state changes on SQLite (or
//! PostgreSQL), side by side with Postfix's own `smtp-source` pushing the same number
//! of messages of the same size into the same sink over the same number of reused
//! sessions.
//!
//! For each session count S, a fresh project (SQLite file or PostgreSQL database, one
//! mailbox with `connections = S`, a ~2 KB template) gets N contacts imported and
//! enrolled through the library; then `Scheduler::run_once` is timed until all N are sent, then
//! `smtp-source -d -s S -m N -l SIZE` against the same sink; that pair is run
//! FOLLOWUP_BENCH_REPEAT times.
//!
//! Then, for one session count, where the time goes: the scheduler's round replayed
//! step by step through the same public API with a timer on each phase (claim, render,
//! commit `sending`, compose + SMTP, commit outcomes); followup's SMTP pool alone (no
//! database); the same run with an `on_finish` rule; and the real binary
//! (`followup run --once`, logging to a file).
//!
//! Run: `cargo bench --bench send` (Postfix installed: /usr/sbin/smtp-sink and
//! /usr/sbin/smtp-source). Knobs, all optional: FOLLOWUP_BENCH_N (messages, default
//! 20000), FOLLOWUP_BENCH_SESSIONS (default "1,8,32"), FOLLOWUP_BENCH_BATCH (`[send]
//! batch`, default 100, followup's default), FOLLOWUP_BENCH_REPEAT (pairs of runs per
//! session count, default 3: the figure is the ratio of the medians, since smtp-source's
//! own rate moves by a fifth from run to run on a shared machine),
//! FOLLOWUP_BENCH_PROFILE_SESSIONS (default 8), FOLLOWUP_BENCH_DB (`sqlite`, the default,
//! or `postgres`: a fresh database per run on the server FOLLOWUP_BENCH_PG or
//! FOLLOWUP_TEST_PG names).

mod common;

// As the binary (src/main.rs), so that the library is measured with its allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use tempfile::TempDir;

use common::{env_usize, rate, thousands, Cpu, Sink};
use followup::engine::{self, Context, Input, Outcome, Scope};
use followup::mail::compose::{self, content_hash, new_message_id, subject_for, Draft};
use followup::mail::send::{SendOutcome, Sender};
use followup::project::Project;
use followup::scheduler::{template_fields, Scheduler};
use followup::store::{Begin, Finish, MessageUpdate, Store};

const BIN: &str = env!("CARGO_BIN_EXE_followup");
const MAILBOX: &str = "sales";

#[derive(Clone, Copy)]
struct Settings {
    n: usize,
    batch: usize,
    /// Pairs of runs (followup, then smtp-source) per session count.
    repeat: usize,
}

/// Databases made on the PostgreSQL server, dropped at the end.
static PG_DATABASES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The PostgreSQL server to bench on when FOLLOWUP_BENCH_DB=postgres (else SQLite).
fn pg_server() -> Option<String> {
    match std::env::var("FOLLOWUP_BENCH_DB").as_deref() {
        Ok("postgres") => Some(
            common::pg_base()
                .expect("FOLLOWUP_BENCH_DB=postgres wants FOLLOWUP_BENCH_PG or FOLLOWUP_TEST_PG"),
        ),
        Ok("sqlite") | Ok("") | Err(_) => None,
        Ok(other) => panic!("FOLLOWUP_BENCH_DB={other:?}: sqlite or postgres"),
    }
}

/// The middle one (of an even count, the upper middle).
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A project with N contacts enrolled and due, and the sink its mailbox sends to.
struct Setup {
    dir: TempDir,
    config: std::path::PathBuf,
    project: Project,
    store: Store,
    took: Duration,
}

async fn setup(
    sink: &Sink,
    s: &Settings,
    connections: usize,
    smtp: Option<&str>,
    on_finish: bool,
) -> Setup {
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let database = match pg_server() {
        Some(base) => {
            let (url, name) = common::pg_create(&base).await;
            PG_DATABASES.lock().unwrap().push(name);
            url
        }
        None => format!("sqlite://{}", dir.path().join("followup.db").display()),
    };
    let smtp = smtp
        .map(str::to_string)
        .unwrap_or_else(|| format!("smtp://127.0.0.1:{}", sink.port));
    let config = common::write_project(
        dir.path(),
        &database,
        &smtp,
        connections,
        s.batch,
        on_finish,
    );
    let project = load_project(&config);
    let store = Store::open(&project.config.database).await.unwrap();
    let parsed = followup::contacts::parse_csv(common::contacts_csv(s.n).as_bytes());
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let now = Utc::now();
    let upserted = store.upsert_contacts(&parsed.contacts, now).await.unwrap();
    let emails: Vec<String> = upserted.into_iter().map(|u| u.email).collect();
    let mut stored = Vec::with_capacity(emails.len());
    // Chunked: one IN list per call, and SQLite allows 32,766 bound values.
    for chunk in emails.chunks(10_000) {
        stored.extend(store.contacts_by_email(chunk).await.unwrap());
    }
    let seq = project.sequence("bench").unwrap();
    let enrolled = followup::app::enroll::enroll(&project, &store, seq, &stored, false, now)
        .await
        .unwrap();
    assert_eq!(enrolled.enrolled, s.n);
    Setup {
        dir,
        config,
        project,
        store,
        took: start.elapsed(),
    }
}

fn load_project(config: &Path) -> Project {
    match Project::load(config, true) {
        Ok((p, _warnings)) => p,
        Err(d) => {
            for item in &d.items {
                eprintln!("{item}");
            }
            panic!("the bench project does not load");
        }
    }
}

/// The size of one composed message, as handed to SMTP.
fn message_size(project: &Project, contact: &followup::model::Contact) -> usize {
    let mailbox = &project.config.mailboxes[MAILBOX];
    let rendered = project
        .templates
        .render("pitch", &template_fields(contact, mailbox))
        .unwrap();
    let mid = new_message_id(mailbox.domain());
    let draft = Draft {
        from: &mailbox.from,
        to_email: &contact.email,
        to_name: contact.name.as_deref(),
        message_id: &mid,
        date: SystemTime::now(),
        rendered: &rendered,
        thread: None,
        list_unsubscribe: None,
    };
    compose::compose(&draft).unwrap().formatted().len()
}

/// One S: followup's `run_once`, then smtp-source, into one sink. Returns both times.
async fn compare(s: Settings, sessions: usize) -> (Duration, Duration) {
    let work = tempfile::tempdir().unwrap();
    let sink = Sink::start(work.path());
    let su = setup(&sink, &s, sessions, None, false).await;
    let contact = su.store.contacts_by_id(&[1]).await.unwrap().remove(0);
    let size = message_size(&su.project, &contact);
    println!(
        "S={sessions}: set-up (project, import and enroll {} contacts) {:.1} s; message {} bytes",
        thousands(s.n as u64),
        su.took.as_secs_f64(),
        thousands(size as u64)
    );

    let store = su.store.clone();
    let scheduler = Scheduler::new(Arc::new(su.project), su.store.clone());
    let cpu = Cpu::now(sink.pid());
    let start = Instant::now();
    let round = scheduler.run_once().await.unwrap();
    let ours = start.elapsed();
    let cpu = Cpu::now(sink.pid()).since(cpu);
    store.close().await;
    assert_eq!(round.sent, s.n, "all sent: {round:?}");
    let sunk = sink.messages();
    println!(
        "  followup    {:>7} msgs {:>6.2} s {:>8} msg/s  (sink counted {})",
        thousands(s.n as u64),
        ours.as_secs_f64(),
        rate(s.n, ours),
        thousands(sunk)
    );
    let busy = |c: f64| 100.0 * c / ours.as_secs_f64();
    println!(
        "    CPU: runtime threads (the scheduler task) {:.2} s = {:.0}% of the wall time, \
         SQLite workers {:.2} s = {:.0}%; smtp-sink {:.2} s = {:.0}%",
        cpu.runtime,
        busy(cpu.runtime),
        cpu.sqlite,
        busy(cpu.sqlite),
        cpu.peer,
        busy(cpu.peer)
    );

    let cpu = Cpu::now(sink.pid());
    let theirs = common::smtp_source(sink.port, sessions, s.n, size);
    let cpu = Cpu::now(sink.pid()).since(cpu);
    println!(
        "  smtp-source {:>7} msgs {:>6.2} s {:>8} msg/s  (sink counted {}; -d -s {sessions} -l {size})",
        thousands(s.n as u64),
        theirs.as_secs_f64(),
        rate(s.n, theirs),
        thousands(sink.messages() - sunk)
    );
    let busy = |c: f64| 100.0 * c / theirs.as_secs_f64();
    println!(
        "    CPU: smtp-source {:.2} s = {:.0}% of the wall time, smtp-sink {:.2} s = {:.0}%",
        cpu.children,
        busy(cpu.children),
        cpu.peer,
        busy(cpu.peer)
    );
    drop(su.dir);
    (ours, theirs)
}

/// Time spent in each phase of the scheduler's round, replayed through the public API.
#[derive(Default)]
struct Phases {
    rounds: usize,
    sent: usize,
    claim: Duration,
    render: Duration,
    begin: Duration,
    send: Duration,
    finish: Duration,
}

/// The scheduler's round (scheduler.rs `round` and `process`) phase by phase: claim a
/// batch, render it, commit `sending` for the batch, compose and send with the
/// mailbox's parallelism, let the engine decide, commit the outcomes.
async fn replay(su: &Setup, batch: usize) -> Phases {
    let project = &su.project;
    let store = &su.store;
    let mailbox = &project.config.mailboxes[MAILBOX];
    let settings = &project.config.send;
    let seq = project.sequence("bench").unwrap();
    let sender = Sender::new(mailbox, &su.project.config.send);
    let owner = "bench-replay";
    let mut ph = Phases::default();
    loop {
        let now = Utc::now();
        let t = Instant::now();
        let claimed = store
            .claim(MAILBOX, now, batch, now + settings.lease, owner, None)
            .await
            .unwrap();
        ph.claim += t.elapsed();
        if claimed.is_empty() {
            break;
        }
        ph.rounds += 1;

        let t = Instant::now();
        let mut work = Vec::with_capacity(claimed.len());
        let mut begins = Vec::with_capacity(claimed.len());
        for c in claimed {
            let (index, step) = seq.step(&c.enrollment.step_id).unwrap();
            let rendered = project
                .templates
                .render(&step.template, &template_fields(&c.contact, mailbox))
                .unwrap();
            let subject = subject_for(&rendered.subject, None);
            begins.push(Begin {
                enrollment_id: c.enrollment.id,
                step_id: c.enrollment.step_id.clone(),
                step_index: index as i64,
                message_id: new_message_id(mailbox.domain()),
                subject: subject.clone(),
                content_hash: content_hash(&subject, &rendered),
                variant: None,
                track_key: followup::track::key_hex(followup::track::token::new_key()),
                links: Vec::new(),
            });
            work.push((c, index, rendered, subject));
        }
        ph.render += t.elapsed();

        let t = Instant::now();
        let begun = store
            .begin_sends(&begins, owner, now, now + settings.lease)
            .await
            .unwrap();
        ph.begin += t.elapsed();
        assert_eq!(begun.len(), work.len());

        let t = Instant::now();
        let sender = &sender;
        let results: Vec<_> = stream::iter(work.into_iter().zip(begun))
            .map(|((c, index, rendered, subject), b)| async move {
                let draft = Draft {
                    from: &mailbox.from,
                    to_email: &c.contact.email,
                    to_name: c.contact.name.as_deref(),
                    message_id: &b.message_id,
                    date: SystemTime::now(),
                    rendered: &rendered,
                    thread: None,
                    list_unsubscribe: None,
                };
                let message = compose::compose(&draft).unwrap();
                let raw = message.formatted();
                let out = sender.send(message.envelope(), &raw, &b.message_id).await;
                (c, index, subject, b, out)
            })
            .buffer_unordered(sender.parallelism())
            .collect()
            .await;
        ph.send += t.elapsed();

        let t = Instant::now();
        let mut finishes = Vec::with_capacity(results.len());
        for (c, _index, subject, b, out) in results {
            let SendOutcome::Sent { reply } = out else {
                panic!("the sink refused a message: {out:?}");
            };
            let (window, tz, holidays) = project.contact_schedule(seq, &c.contact);
            let cx = Context {
                sequence: seq,
                window: &window,
                tz,
                holidays: &holidays,
                send: settings,
            };
            let outcome = Outcome::Sent {
                at: Utc::now(),
                message_id: b.message_id.clone(),
                subject,
                reply,
            };
            let tr = engine::step(
                Scope::All(cx),
                &c.enrollment,
                &Input::Send(outcome),
                Utc::now(),
            )
            .unwrap()
            .unwrap();
            let m = tr.message.unwrap();
            finishes.push(Finish {
                message: Some(MessageUpdate {
                    row_id: b.row_id,
                    status: m.status,
                    smtp_reply: m.reply,
                }),
                enrollment: tr.enrollment,
                events: tr
                    .events
                    .into_iter()
                    .map(|mut e| {
                        e.message_id = Some(b.row_id);
                        e
                    })
                    .collect(),
            });
        }
        ph.sent += finishes.len();
        store
            .finish_sends(&finishes, Some(owner), Utc::now())
            .await
            .unwrap();
        ph.finish += t.elapsed();
    }
    sender.close().await;
    ph
}

/// followup's SMTP pool alone: one message, N times, S at a time, no database, no
/// per-batch pause.
async fn pool_alone(su: &Setup, n: usize) -> Duration {
    let mailbox = &su.project.config.mailboxes[MAILBOX];
    let contact = su.store.contacts_by_id(&[1]).await.unwrap().remove(0);
    let rendered = su
        .project
        .templates
        .render("pitch", &template_fields(&contact, mailbox))
        .unwrap();
    let mid = new_message_id(mailbox.domain());
    let message = compose::compose(&Draft {
        from: &mailbox.from,
        to_email: &contact.email,
        to_name: contact.name.as_deref(),
        message_id: &mid,
        date: SystemTime::now(),
        rendered: &rendered,
        thread: None,
        list_unsubscribe: None,
    })
    .unwrap();
    let raw = message.formatted();
    let envelope = message.envelope().clone();
    let sender = Sender::new(mailbox, &su.project.config.send);
    let start = Instant::now();
    let (sender_ref, raw, envelope, mid) = (&sender, &raw, &envelope, &mid);
    let failures = stream::iter(0..n)
        .map(|_| async move { sender_ref.send(envelope, raw, mid).await })
        .buffer_unordered(sender.parallelism())
        .filter(|o| std::future::ready(!matches!(o, SendOutcome::Sent { .. })))
        .count()
        .await;
    let took = start.elapsed();
    sender.close().await;
    assert_eq!(failures, 0);
    took
}

/// CPU of rendering and composing alone, on one thread.
fn render_compose_alone(su: &Setup, contacts: &[followup::model::Contact]) -> Duration {
    let mailbox = &su.project.config.mailboxes[MAILBOX];
    let start = Instant::now();
    let mut bytes = 0;
    for c in contacts {
        let rendered = su
            .project
            .templates
            .render("pitch", &template_fields(c, mailbox))
            .unwrap();
        let subject = subject_for(&rendered.subject, None);
        let hash = content_hash(&subject, &rendered);
        let mid = new_message_id(mailbox.domain());
        let m = compose::compose(&Draft {
            from: &mailbox.from,
            to_email: &c.email,
            to_name: c.name.as_deref(),
            message_id: &mid,
            date: SystemTime::now(),
            rendered: &rendered,
            thread: None,
            list_unsubscribe: None,
        })
        .unwrap();
        bytes += m.formatted().len() + hash.len();
    }
    assert!(bytes > 0);
    start.elapsed()
}

async fn breakdown(s: Settings, sessions: usize, smtp_source_rate: String) -> Vec<String> {
    let s = &s;
    let n = s.n;
    let work = tempfile::tempdir().unwrap();
    let sink = Sink::start(work.path());
    let secs = |d: Duration| d.as_secs_f64();
    println!("\nWhere the time goes, S={sessions}, batch {}:", s.batch);

    // The round, phase by phase.
    let su = setup(&sink, s, sessions, None, false).await;
    let start = Instant::now();
    let ph = replay(&su, s.batch).await;
    let total = start.elapsed();
    assert_eq!(ph.sent, n);
    let db = ph.claim + ph.begin + ph.finish;
    println!(
        "  replayed round: {} msgs in {} rounds, {:.2} s = {} msg/s",
        thousands(n as u64),
        ph.rounds,
        secs(total),
        rate(n, total)
    );
    for (name, d) in [
        ("claim (lease + load enrollments, contacts)", ph.claim),
        ("render (+ hash, Message-ID)", ph.render),
        ("commit `sending` (begin_sends)", ph.begin),
        ("compose + SMTP, S in flight", ph.send),
        ("engine + commit outcomes (finish_sends)", ph.finish),
    ] {
        println!(
            "    {name:<44} {:>6.2} s {:>4.0}%  {:>6.1} µs/msg",
            secs(d),
            100.0 * secs(d) / secs(total),
            1e6 * secs(d) / n as f64
        );
    }
    println!(
        "    database, all statements                     {:>6.2} s {:>4.0}%  {:>6.1} µs/msg",
        secs(db),
        100.0 * secs(db) / secs(total),
        1e6 * secs(db) / n as f64
    );
    let contacts: Vec<_> = {
        let ids: Vec<i64> = (1..=n.min(5000) as i64).collect();
        su.store.contacts_by_id(&ids).await.unwrap()
    };
    su.store.close().await;

    // SMTP alone, and render + compose alone.
    let su = setup(&sink, s, sessions, None, false).await;
    let cpu = Cpu::now(sink.pid());
    let pool = pool_alone(&su, n).await;
    let cpu = Cpu::now(sink.pid()).since(cpu);
    let rc = render_compose_alone(&su, &contacts);
    let rc_per = secs(rc) / contacts.len() as f64;
    println!(
        "  followup's SMTP pool alone (same message N times, no DB): {:.2} s = {} msg/s (smtp-source: {smtp_source_rate})",
        secs(pool),
        rate(n, pool)
    );
    println!(
        "    CPU: runtime threads (the sending task) {:.2} s = {:.0}% of the wall time; smtp-sink {:.2} s = {:.0}%",
        cpu.runtime,
        100.0 * cpu.runtime / secs(pool),
        cpu.peer,
        100.0 * cpu.peer / secs(pool)
    );
    println!(
        "  render + hash + compose alone, one thread: {:.1} µs/msg = {} msg/s per core",
        1e6 * rc_per,
        thousands((1.0 / rc_per) as u64)
    );
    su.store.close().await;

    // Everything but SMTP: the real scheduler into a file outbox on tmpfs-like storage.
    let outbox = work.path().join("outbox");
    let su = setup(
        &sink,
        s,
        sessions,
        Some(&format!("file://{}", outbox.display())),
        false,
    )
    .await;
    let sched = Scheduler::new(Arc::new(su.project), su.store.clone());
    let start = Instant::now();
    let r = sched.run_once().await.unwrap();
    let file_time = start.elapsed();
    su.store.close().await;
    assert_eq!(r.sent, n);
    println!(
        "  run_once into a file outbox (no SMTP; writes one file per message, one at a time): {:.2} s = {} msg/s",
        secs(file_time),
        rate(n, file_time)
    );
    drop(su.dir);

    // The same run with an `on_finish` rule on the sequence.
    let su = setup(&sink, s, sessions, None, true).await;
    let sched = Scheduler::new(Arc::new(su.project), su.store.clone());
    let start = Instant::now();
    let r = sched.run_once().await.unwrap();
    let rule_time = start.elapsed();
    su.store.close().await;
    assert_eq!(r.sent, n);
    println!(
        "  run_once with `on_finish: {{ stage, tag }}` on the sequence: {:.2} s = {} msg/s",
        secs(rule_time),
        rate(n, rule_time)
    );

    // The real binary, logging one line per message to a file.
    let su = setup(&sink, s, sessions, None, false).await;
    su.store.close().await;
    let log = su.dir.path().join("run.log");
    let start = Instant::now();
    let status = Command::new(BIN)
        .arg("--config")
        .arg(&su.config)
        .args(["run", "--once"])
        .env_remove("FOLLOWUP_CONFIG")
        .env_remove("FOLLOWUP_DATABASE")
        .env_remove("FOLLOWUP_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let bin_time = start.elapsed();
    assert!(status.success(), "followup run --once: {status}");
    let lines = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    println!(
        "  `followup run --once` (binary; {} log lines to a file): {:.2} s = {} msg/s",
        thousands(lines as u64),
        secs(bin_time),
        rate(n, bin_time)
    );
    vec![
        format!(
            "send S={sessions}: SMTP {:.0}%, database {:.0}%, render {:.0}% of the round",
            100.0 * secs(ph.send) / secs(total),
            100.0 * secs(db) / secs(total),
            100.0 * secs(ph.render) / secs(total)
        ),
        format!(
            "send S={sessions}: followup's SMTP pool alone {} msg/s; with on_finish rule {} msg/s; binary run --once {} msg/s",
            rate(n, pool),
            rate(n, rule_time),
            rate(n, bin_time)
        ),
    ]
}

fn main() {
    let s = Settings {
        n: env_usize("FOLLOWUP_BENCH_N", 20_000),
        batch: env_usize("FOLLOWUP_BENCH_BATCH", 100),
        repeat: env_usize("FOLLOWUP_BENCH_REPEAT", 3).max(1),
    };
    let sessions: Vec<usize> = std::env::var("FOLLOWUP_BENCH_SESSIONS")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .map(|v| v.trim().parse().expect("FOLLOWUP_BENCH_SESSIONS: numbers"))
        .collect();
    let profile = env_usize("FOLLOWUP_BENCH_PROFILE_SESSIONS", 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "followup send bench: {} messages per run, [send] batch = {}, {}, smtp-sink on loopback, {} CPUs",
        thousands(s.n as u64),
        s.batch,
        if pg_server().is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut summary = Vec::new();
    let mut source_rate = String::from("not measured");
    for &sessions in &sessions {
        // Pairs, one after the other: each pair is followup then smtp-source, so that both
        // sides meet the same load on the machine; the figure is the ratio of the medians.
        let pairs: Vec<(Duration, Duration)> = (0..s.repeat)
            .map(|_| {
                // In a spawned task, as the daemon runs its scheduler.
                rt.block_on(rt.spawn(compare(s, sessions))).unwrap()
            })
            .collect();
        let each: Vec<String> = pairs
            .iter()
            .map(|(ours, theirs)| {
                format!("{:.0}%", 100.0 * theirs.as_secs_f64() / ours.as_secs_f64())
            })
            .collect();
        let ours = median(pairs.iter().map(|p| p.0).collect());
        let theirs = median(pairs.iter().map(|p| p.1).collect());
        if sessions == profile {
            source_rate = format!("{} msg/s", rate(s.n, theirs));
        }
        summary.push(format!(
            "send: followup {} msg/s vs smtp-source {} msg/s with {sessions} session{} = {:.0}% \
             (medians of {} pairs; each pair: {})",
            rate(s.n, ours),
            rate(s.n, theirs),
            if sessions == 1 { "" } else { "s" },
            100.0 * theirs.as_secs_f64() / ours.as_secs_f64(),
            pairs.len(),
            each.join(", ")
        ));
    }
    if profile > 0 {
        summary.extend(
            rt.block_on(rt.spawn(breakdown(s, profile, source_rate)))
                .unwrap(),
        );
    }
    if let Some(base) = pg_server() {
        let names = std::mem::take(&mut *PG_DATABASES.lock().unwrap());
        rt.block_on(async {
            for name in names {
                common::pg_drop(&base, &name).await;
            }
        });
    }
    println!();
    for line in summary {
        println!("{line}");
    }
}
