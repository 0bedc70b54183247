//! Restart after SIGKILL: how long from the restarted daemon's exec to the first
//! message arriving at the SMTP sink.
//!
//! The real binary (`followup run`, release build) sends a one-step sequence to
//! Postfix's `smtp-sink` (one mailbox, `connections = 8`, `[send] batch = 100`, the
//! default lease of 2 minutes). While it sends it is killed with SIGKILL, in the middle
//! of a batch; once the sink has taken what was on the wire, a new daemon is started
//! and the time from its spawn to the sink's next message is taken. That daemon sends
//! for a while and is killed in turn, and so on, FOLLOWUP_BENCH_REPEAT times. The
//! restarted daemon must take the dead one's claims over through its liveness lock
//! (not wait out the 2-minute leases), put back what never left and send it.
//!
//! On a fresh SQLite file and, when FOLLOWUP_BENCH_PG or FOLLOWUP_TEST_PG names a
//! server, on a fresh PostgreSQL database. Reports median and max per database.
//!
//! Run: `cargo bench --bench restart`. Knobs, all optional: FOLLOWUP_BENCH_REPEAT
//! (kills and restarts per database, default 10), FOLLOWUP_BENCH_N (contacts, default
//! 100000: enough that the daemon is never out of work), FOLLOWUP_BENCH_RUN_MS (how
//! long each daemon sends before it is killed, default 700).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_usize, ms, thousands, Sink};

const BIN: &str = env!("CARGO_BIN_EXE_followup");

/// Reads the sink's running counter (`mesg=N` records, each ended by `\r`, flushed per
/// message) from where the last read stopped, so that polling stays cheap however many
/// messages the file has counted.
struct Counter {
    file: std::fs::File,
    offset: u64,
    partial: String,
    last: u64,
}

impl Counter {
    fn open(path: &Path) -> Counter {
        Counter {
            file: std::fs::File::open(path).expect("the sink's counter file"),
            offset: 0,
            partial: String::new(),
            last: 0,
        }
    }

    fn messages(&mut self) -> u64 {
        let mut buf = Vec::new();
        self.file.seek(SeekFrom::Start(self.offset)).unwrap();
        self.file.read_to_end(&mut buf).unwrap();
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        if let Some(end) = self.partial.rfind('\r') {
            let complete: String = self.partial.drain(..=end).collect();
            if let Some(n) = complete.rsplit('\r').find_map(|rec| {
                rec.split_whitespace()
                    .find_map(|f| f.strip_prefix("mesg="))
                    .and_then(|n| n.parse().ok())
            }) {
                self.last = n;
            }
        }
        self.last
    }

    /// Waits until the count moves past `from`; returns when it did, or None after
    /// `limit`.
    fn wait_past(&mut self, from: u64, limit: Duration) -> Option<Instant> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.messages() > from {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        None
    }

    /// Waits until the count has not moved for `quiet`; returns it.
    fn settle(&mut self, quiet: Duration) -> u64 {
        let mut n = self.messages();
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            std::thread::sleep(Duration::from_millis(10));
            let m = self.messages();
            if m != n {
                n = m;
                since = Instant::now();
            }
        }
        n
    }
}

fn followup(config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(config)
        .env("FOLLOWUP_LOG", "info")
        .env_remove("FOLLOWUP_CONFIG")
        .env_remove("FOLLOWUP_DATABASE");
    c
}

fn daemon(config: &Path, log: &Path) -> Child {
    followup(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start followup run")
}

/// What the restarted daemon's log says it took over: the `not_sent` of its takeover
/// line (messages the dead daemon had begun but not sent: it died mid-batch).
fn taken_over_unsent(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("took over the claims of daemons that died"))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("not_sent="))
        .and_then(|n| n.parse().ok())
}

struct Figures {
    database: &'static str,
    times: Vec<Duration>,
    mid_batch: usize,
}

/// `url` None: a SQLite file in the project's folder.
fn bench(
    database: &'static str,
    url: Option<&str>,
    n: usize,
    repeat: usize,
    run: Duration,
) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let url = url
        .map(str::to_string)
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("followup.db").display()));
    let sink = Sink::start(dir.path());
    let config = common::write_project(
        dir.path(),
        &url,
        &format!("smtp://127.0.0.1:{}", sink.port),
        8,
        100,
        false,
    );
    let csv = dir.path().join("contacts.csv");
    std::fs::write(&csv, common::contacts_csv(n)).unwrap();
    let t = Instant::now();
    let out = followup(&config)
        .args(["contacts", "import"])
        .arg(&csv)
        .args(["--sequence", "bench"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "{database}: imported and enrolled {} contacts in {:.1} s",
        thousands(n as u64),
        t.elapsed().as_secs_f64()
    );
    let mut counter = Counter::open(&sink_counter(dir.path(), sink.port));

    let log = |i: usize| dir.path().join(format!("daemon-{i}.log"));
    let mut current = daemon(&config, &log(0));
    let mut times = Vec::with_capacity(repeat);
    let mut mid_batch = 0;
    for i in 1..=repeat {
        // Let it send, then kill it while it does.
        let before = counter.messages();
        counter
            .wait_past(before, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{database}: the daemon sent nothing; see {:?}", log(i - 1)));
        std::thread::sleep(run);
        current.kill().unwrap();
        current.wait().unwrap();
        // What was on the wire when it died reaches the sink (or not) first.
        let settled = counter.settle(Duration::from_millis(300));
        let spawned = Instant::now();
        current = daemon(&config, &log(i));
        let Some(first) = counter.wait_past(settled, Duration::from_secs(60)) else {
            let _ = current.kill();
            panic!(
                "{database}: nothing sent within 60 s of the restart; log:\n{}",
                std::fs::read_to_string(log(i)).unwrap_or_default()
            );
        };
        let took = first - spawned;
        let unsent = taken_over_unsent(&log(i));
        if unsent.is_some_and(|u| u > 0) {
            mid_batch += 1;
        }
        println!(
            "  restart {i:>2}: first message after {:>6.0} ms (the dead daemon had begun {} not sent)",
            ms(took),
            unsent.map_or("?".to_string(), |u| u.to_string())
        );
        times.push(took);
    }
    let _ = current.kill();
    let _ = current.wait();
    println!("  sink counted {} messages", thousands(counter.messages()));
    Figures {
        database,
        times,
        mid_batch,
    }
}

/// The counter file [`Sink::start`] writes to.
fn sink_counter(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("smtp-sink-{port}.out"))
}

fn main() {
    let repeat = env_usize("FOLLOWUP_BENCH_REPEAT", 10).max(1);
    let n = env_usize("FOLLOWUP_BENCH_N", 100_000);
    let run = Duration::from_millis(env_usize("FOLLOWUP_BENCH_RUN_MS", 700) as u64);
    println!(
        "followup restart bench: SIGKILL while sending, restart, time to the first message at smtp-sink; {repeat} restarts per database, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut all = Vec::new();
    all.push(bench("SQLite", None, n, repeat, run));
    if let Some(base) = common::pg_base() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, name) = rt.block_on(common::pg_create(&base));
        all.push(bench("PostgreSQL", Some(&url), n, repeat, run));
        rt.block_on(common::pg_drop(&base, &name));
    }
    println!();
    for f in all {
        let mut t = f.times.clone();
        t.sort();
        println!(
            "restart after SIGKILL ({}): first message sent after median {:.0} ms, max {:.0} ms ({} restarts, {} of them mid-batch)",
            f.database,
            ms(t[t.len() / 2]),
            ms(t[t.len() - 1]),
            t.len(),
            f.mid_batch
        );
    }
}
