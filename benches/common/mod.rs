//! Set-up shared by the benches: a throw-away project directory, Postfix's `smtp-sink`
//! on a free loopback port, a fresh PostgreSQL database, and number formatting.

#![allow(dead_code)] // each bench binary uses a different part of this module

use std::io::BufRead;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

/// A number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

/// `1,000,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Messages per second, rounded to a whole number, with separators.
pub fn rate(n: usize, d: Duration) -> String {
    thousands((n as f64 / d.as_secs_f64()).round() as u64)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The PostgreSQL server to bench against: FOLLOWUP_BENCH_PG, else FOLLOWUP_TEST_PG.
pub fn pg_base() -> Option<String> {
    ["FOLLOWUP_BENCH_PG", "FOLLOWUP_TEST_PG"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
}

/// Creates a fresh database on the server `base` names; returns its URL and name.
pub async fn pg_create(base: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("followup_bench_{:016x}", fastrand::u64(..));
    let mut c = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to the PostgreSQL server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .expect("create the bench database");
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("the PostgreSQL URL ends with /DBNAME");
    (format!("{prefix}/{name}"), name)
}

pub async fn pg_drop(base: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut c) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}

/// Postfix's `smtp-sink` on 127.0.0.1: accepts every message and throws it away (no
/// per-message files). `-c` keeps a running count, read back by [`Sink::messages`].
pub struct Sink {
    pub port: u16,
    child: Child,
    counter: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path) -> Sink {
        let port = free_port();
        let counter = dir.join(format!("smtp-sink-{port}.out"));
        let mut cmd = Command::new(SMTP_SINK);
        cmd.arg("-c");
        if effective_uid() == Some(0) {
            // smtp-sink refuses to keep root privileges.
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(std::fs::File::create(&counter).expect("smtp-sink counter file"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SMTP_SINK} (Debian package postfix): {e}"));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "smtp-sink did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sink {
            port,
            child,
            counter,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Messages the sink has accepted so far (its `-c` counter).
    pub fn messages(&self) -> u64 {
        let text = std::fs::read(&self.counter).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        text.rsplit('\r')
            .find_map(|rec| {
                rec.split_whitespace()
                    .find_map(|f| f.strip_prefix("mesg="))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs Postfix's `smtp-source` against the sink: `messages` messages of `size` bytes
/// of payload over `sessions` parallel sessions, each reusing its connection (`-d`).
/// Returns the wall time.
pub fn smtp_source(port: u16, sessions: usize, messages: usize, size: usize) -> Duration {
    let start = Instant::now();
    let out = Command::new(SMTP_SOURCE)
        .args(["-d", "-s", &sessions.to_string()])
        .args(["-m", &messages.to_string(), "-l", &size.to_string()])
        .args(["-f", "bench@sender.example", "-t", "rcpt@prospect.example"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SMTP_SOURCE}: {e}"));
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "smtp-source failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn effective_uid() -> Option<u32> {
    let f = std::fs::File::open("/proc/self/status").ok()?;
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .and_then(|r| r.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
}

/// Writes `text` to `dir/rel`, making the folders on the way.
pub fn write_file(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// The project files: one mailbox pointed at `smtp`, a one-step sequence `bench` and a
/// template of about 2 KB of text (its HTML part is derived from the text). Returns
/// the path of followup.toml.
pub fn write_project(
    dir: &Path,
    database: &str,
    smtp: &str,
    connections: usize,
    batch: usize,
    on_finish: bool,
) -> PathBuf {
    let write = |rel: &str, text: &str| write_file(dir, rel, text);
    write(
        "followup.toml",
        &format!(
            "database = \"{database}\"\ntimezone = \"UTC\"\nwindow = \"always\"\n\n\
             [send]\nbatch = {batch}\n\n\
             [mailboxes.sales]\nfrom = \"Iris Zhang <iris@sender.example>\"\n\
             smtp = \"{smtp}\"\nconnections = {connections}\n"
        ),
    );
    write(
        "sequences/bench.yaml",
        &format!(
            "name: bench\nsender: sales\nwindow: always\nsteps:\n  - id: only\n    template: pitch\n{}",
            if on_finish {
                "on_finish: { stage: nurture, tag: bench }\n"
            } else {
                ""
            }
        ),
    );
    write("templates/pitch.hbs", &template_2k());
    dir.join("followup.toml")
}

/// About 2 KB of cold-mail text with the usual fields.
fn template_2k() -> String {
    let mut t = String::from(
        "---\nsubject: \"{{product}} for {{company}}\"\ndefaults:\n  first_name: there\n---\n\
         Hi {{first_name}},\n\n\
         I noticed {{company}} imports {{product}}. We make them in Shenzhen and ship to\n\
         importers in 30 countries, with samples in 5 days.\n\n",
    );
    let para = "Our factory runs three lines for {{product}}, each audited twice a year, and we\n\
                keep a bonded warehouse in Rotterdam, so {{company}} would see European lead\n\
                times with factory prices. Most importers start with a mixed pallet to test.\n\n";
    while t.len() < 1850 {
        t.push_str(para);
    }
    t.push_str("Would a short call next week be useful?\n\n{{sender.name}}\n");
    t
}

/// `email,first_name,company,product` for `n` contacts.
pub fn contacts_csv(n: usize) -> String {
    let mut csv = String::from("email,first_name,company,product\n");
    for i in 0..n {
        csv.push_str(&format!(
            "c{i:07}@prospect{}.example,Name{i},Company {i},LED panels\n",
            i % 97
        ));
    }
    csv
}

/// CPU seconds (user + system) of this process's threads by kind, of its waited-for
/// children, and of one other process, from /proc (clock ticks of 1/100 s).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    /// The runtime's threads (and the main thread, idle in `block_on`). The scheduler is
    /// one task, so it runs on one of them at a time.
    pub runtime: f64,
    /// sqlx's SQLite worker threads (one per pooled connection).
    pub sqlite: f64,
    /// Waited-for children (smtp-source), from /proc/self/stat.
    pub children: f64,
    /// The process given to [`Cpu::now`] (smtp-sink).
    pub peer: f64,
}

const TICK: f64 = 0.01;

/// The comm and the fields after it (field 3 onwards of proc(5)) of a /proc stat file.
fn stat_fields(path: &Path) -> Option<(String, Vec<u64>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // Non-numeric fields (the state) become 0.
    let rest = text[close + 1..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some((comm, rest))
}

impl Cpu {
    pub fn now(peer: u32) -> Cpu {
        let mut cpu = Cpu::default();
        // utime, stime are fields 14 and 15; cutime, cstime 16 and 17.
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                let Some((comm, f)) = stat_fields(&t.path().join("stat")) else {
                    continue;
                };
                let secs = (f[11] + f[12]) as f64 * TICK;
                if comm.starts_with("sqlx-sqlite") {
                    cpu.sqlite += secs;
                } else {
                    cpu.runtime += secs;
                }
            }
        }
        if let Some((_, f)) = stat_fields(Path::new("/proc/self/stat")) {
            cpu.children = (f[13] + f[14]) as f64 * TICK;
        }
        if let Some((_, f)) = stat_fields(Path::new(&format!("/proc/{peer}/stat"))) {
            cpu.peer = (f[11] + f[12]) as f64 * TICK;
        }
        cpu
    }

    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            runtime: self.runtime - before.runtime,
            sqlite: self.sqlite - before.sqlite,
            children: self.children - before.children,
            peer: self.peer - before.peer,
        }
    }
}
