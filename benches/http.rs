//! Tracking endpoint throughput: pixel hits per second with every open recorded, from
//! Debian's `wrk` on loopback against the real binary, side by side with the same
//! binary's `/healthz` and with a bare axum hello-world, all in the same run.
//!
//! Set-up: a project in a tempdir (SQLite file, one mailbox writing `.eml` files, a
//! one-step sequence whose HTML part has one link, `[http]` on a free loopback port,
//! its admin listener with `/healthz` and `/metrics` on another);
//! C contacts imported and enrolled with `followup contacts import`, sent with
//! `followup run --once`; the open pixel and the "pricing" click URL of each message
//! taken from the decoded HTML part of its `.eml` (mail-parser).
//!
//! Then the daemon (`followup run`, FOLLOWUP_LOG=warn, stderr to a file) and, each for
//! SECS with CONNS connections and THREADS wrk threads (`--latency`): `/healthz` (a
//! database ping), `/o/{token}` cycling through the C pixels (each hit is queued and
//! written by the recorder in batched transactions), `/c/{token}` cycling through the
//! C click URLs (a database read per hit, then queued). Every wrk run, the hello-world
//! included, uses the same Lua script (prebuilt requests, one per path, taken in turn)
//! and a mail client's User-Agent, so wrk does the same work in each. While the pixel
//! runs, `/metrics` is read every 500 ms for the event queue's depth; afterwards for
//! recorded and dropped hits. Then SIGTERM (the daemon writes what is still queued
//! before it exits) and the `opened` rows in the SQLite file are counted with sqlx.
//! Last, an axum 0.8 `GET / -> "hello"` on a multi-thread tokio runtime in this
//! process, daemon stopped, with the same wrk settings.
//!
//! CPU (from /proc, clock ticks of 1/100 s): the server's (the daemon's process, or
//! this process's threads for the hello-world) and wrk's, as a share of one core over
//! the wall time. Machines are shared and noisy: only ratios within one run mean much.
//!
//! Run: `cargo bench --bench http` (Debian package wrk: /usr/bin/wrk). Knobs, all
//! optional: FOLLOWUP_BENCH_SECS (per route, default 10), FOLLOWUP_BENCH_CONNECTIONS
//! (64), FOLLOWUP_BENCH_THREADS (wrk threads, 2), FOLLOWUP_BENCH_CONTACTS (messages
//! whose pixels are cycled through, 50), FOLLOWUP_BENCH_CLICK (1; 0 skips the click
//! route), FOLLOWUP_WRK (the wrk binary, default wrk on PATH).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection;

use common::{env_usize, thousands, Cpu};

const BIN: &str = env!("CARGO_BIN_EXE_followup");
const SECRET_ENV: &str = "BENCH_SECRET";
const SECRET: &str = "followup-http-bench-secret-0123456789abcdef";
/// Thunderbird's: a real mail client's user agent, so the hits go through the same
/// classification as people's (they are still labelled machine: too soon after sending).
const USER_AGENT: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0";

#[derive(Clone, Copy)]
struct Settings {
    secs: usize,
    connections: usize,
    threads: usize,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wrk_bin() -> String {
    std::env::var("FOLLOWUP_WRK")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "wrk".into())
}

/// Fails early and clearly when wrk is not there.
fn check_wrk() {
    let bin = wrk_bin();
    // `wrk -v` prints its version and exits 1.
    match Command::new(&bin).arg("-v").output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            let version = text.lines().next().unwrap_or("").trim().to_string();
            println!("load generator: {version}");
        }
        Err(e) => panic!(
            "cannot run `{bin}`: {e}. This bench needs wrk: `apt-get install -y wrk` \
             (Debian), or point FOLLOWUP_WRK at the binary"
        ),
    }
}

/// The project: followup.toml with `[http]` on `port` (admin pages on `admin`), sequence
/// `intro` of one step, its template with an HTML part holding one link, and `n`
/// contacts in contacts.csv.
fn write_project(dir: &Path, port: u16, admin: u16, n: usize) -> PathBuf {
    let write = |rel: &str, text: &str| common::write_file(dir, rel, text);
    write(
        "followup.toml",
        &format!(
            "database = \"sqlite://{db}\"\ntimezone = \"UTC\"\nwindow = \"always\"\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
             secret_env = \"{SECRET_ENV}\"\n\n\
             [mailboxes.sales]\nfrom = \"Iris <iris@sender.example>\"\nsmtp = \"file://{outbox}\"\n",
            db = dir.join("followup.db").display(),
            outbox = dir.join("outbox").display(),
        ),
    );
    write(
        "sequences/intro.yaml",
        "name: intro\nsender: sales\nsteps:\n  - id: first\n    template: first\n",
    );
    write(
        "templates/first.hbs",
        "---\nsubject: Hi\n---\nHi {{first_name}},\n\nour prices are on the website.\n\n\
         Iris\n\nUnsubscribe: {{unsubscribe_url}}\n",
    );
    write(
        "templates/first.html",
        "<html><body><p>Hi {{first_name}},</p>\n\
         <p>our <a href=\"https://example.com/pricing\">pricing</a> is on the website.</p>\n\
         <p>Iris</p>\n<p><a href=\"{{unsubscribe_url}}\">unsubscribe</a></p></body></html>\n",
    );
    let mut csv = String::from("email,first_name\n");
    for i in 0..n {
        csv.push_str(&format!("c{i:05}@prospect.example,Name{i}\n"));
    }
    write("contacts.csv", &csv);
    dir.join("followup.toml")
}

/// `followup --config CONFIG ARGS...`, which must succeed; returns its stdout.
fn followup(dir: &Path, config: &Path, args: &[&str]) -> String {
    let out = clean_env(Command::new(BIN))
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert!(
        out.status.success(),
        "followup {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn clean_env(mut cmd: Command) -> Command {
    for v in [
        "FOLLOWUP_CONFIG",
        "FOLLOWUP_DATABASE",
        "FOLLOWUP_LOG",
        "FOLLOWUP_HTTP_LISTEN",
        "FOLLOWUP_HTTP_PUBLIC_URL",
        "FOLLOWUP_HTTP_SECRET",
        "FOLLOWUP_HTTP_PREVIOUS_SECRET",
    ] {
        cmd.env_remove(v);
    }
    cmd.env(SECRET_ENV, SECRET).env("FOLLOWUP_LOG", "warn");
    cmd
}

/// The value of attribute `name` in the tag text `tag` (`<a href="..." ...`).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[at..].find('"')?;
    Some(&tag[at..at + end])
}

/// The pixel URL and the "pricing" link's click URL of each message in `outbox`,
/// from the decoded HTML part.
fn tracking_urls(outbox: &Path) -> Vec<(String, String)> {
    let mut urls = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox)
        .unwrap_or_else(|e| panic!("no outbox at {}: {e}", outbox.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    for path in files {
        let raw = std::fs::read(&path).unwrap();
        let message = mail_parser::MessageParser::default()
            .parse(&raw)
            .unwrap_or_else(|| panic!("{}: not a message", path.display()));
        let html = message
            .body_html(0)
            .unwrap_or_else(|| panic!("{}: no HTML part", path.display()));
        let pixel = html
            .split("<img")
            .skip(1)
            .filter_map(|t| attr(&t[..t.find('>').unwrap_or(t.len())], "src"))
            .find(|u| u.contains("/o/"))
            .unwrap_or_else(|| panic!("{}: no open pixel in:\n{html}", path.display()));
        // The visible link (the hidden honeypot link has no text).
        let click = html
            .split("<a ")
            .skip(1)
            .find_map(|t| {
                let (tag, rest) = t.split_once('>')?;
                let text = &rest[..rest.find("</a>")?];
                (text == "pricing").then(|| attr(&format!(" {tag}"), "href").map(str::to_string))
            })
            .flatten()
            .filter(|u| u.contains("/c/"))
            .unwrap_or_else(|| panic!("{}: no tracked pricing link in:\n{html}", path.display()));
        urls.push((pixel.to_string(), click));
    }
    urls
}

/// The daemon; killed if still running when dropped (a panic on the way).
struct Daemon {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl Daemon {
    /// Waits for `/healthz` on the admin listener at `admin`.
    fn start(dir: &Path, config: &Path, admin: &str) -> Daemon {
        let log = dir.join("daemon.log");
        let child = clean_env(Command::new(BIN))
            .current_dir(dir)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let mut d = Daemon {
            pid: child.id(),
            child: Some(child),
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                d.child = None;
                panic!(
                    "the daemon exited at start ({status}); log:\n{}",
                    d.log_text()
                );
            }
            if get(&format!("{admin}/healthz")).is_some_and(|(s, b)| s == 200 && b == "ok\n") {
                return d;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "/healthz did not answer within 30 s; log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit (it writes the queued hits first).
    fn stop(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("the daemon is running");
        let start = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return (s, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A GET with a short timeout: status and body, or None if it could not be made.
fn get(url: &str) -> Option<(u16, String)> {
    thread_local! {
        static CLIENT: reqwest::blocking::Client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            // Holds no idle connection: wrk's -c64 against /healthz must not find the
            // admin listener's 64 taken by one of ours.
            .pool_max_idle_per_host(0)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
    }
    CLIENT.with(|c| {
        let r = c.get(url).send().ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().ok()?))
    })
}

/// One sample of a Prometheus text page: the value of the line that starts with
/// `series` (name and labels exactly as printed).
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics_page(base: &str) -> String {
    match get(&format!("{base}/metrics")) {
        Some((200, body)) => body,
        other => panic!("/metrics: {other:?}"),
    }
}

const OPENS_SERVED: &str = "followup_http_requests_total{route=\"open\",status=\"200\"}";
const OPENS_HUMAN: &str = "followup_events_total{kind=\"opened\",source=\"human\"}";
const OPENS_MACHINE: &str = "followup_events_total{kind=\"opened\",source=\"machine\"}";
const DROPPED: &str = "followup_hits_dropped_total";
const UNKNOWN: &str = "followup_hits_unknown_total";
const QUEUE: &str = "followup_event_queue_depth";

/// The counters that matter for the pixel, from /metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Opens {
    served: u64,
    human: u64,
    machine: u64,
    dropped: u64,
    unknown: u64,
    queue: u64,
}

impl Opens {
    fn read(base: &str) -> Opens {
        let page = metrics_page(base);
        let m = |s| metric(&page, s).unwrap_or(0.0) as u64;
        Opens {
            served: m(OPENS_SERVED),
            human: m(OPENS_HUMAN),
            machine: m(OPENS_MACHINE),
            dropped: m(DROPPED),
            unknown: m(UNKNOWN),
            queue: m(QUEUE),
        }
    }

    fn recorded(&self) -> u64 {
        self.human + self.machine
    }
}

/// What wrk printed, and the CPU spent while it ran.
#[derive(Debug, Clone)]
struct Run {
    route: String,
    requests: u64,
    wall: f64,
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    bad_status: u64,
    socket_errors: Option<String>,
    /// The server's CPU seconds and wrk's, over the run.
    server_cpu: f64,
    wrk_cpu: f64,
}

/// `812.00us`, `3.53ms`, `1.02s`, `1.00m` as wrk prints them.
fn wrk_duration(s: &str) -> Duration {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        panic!("wrk printed a duration without a unit: {s:?}")
    };
    let v: f64 = num.parse().unwrap_or_else(|_| panic!("wrk printed {s:?}"));
    Duration::from_secs_f64(v * scale)
}

/// Requests, wall time, req/s, p50, p99, max latency, non-2xx/3xx, socket errors.
#[allow(clippy::type_complexity)]
fn parse_wrk(
    out: &str,
) -> (
    u64,
    f64,
    f64,
    Duration,
    Duration,
    Duration,
    u64,
    Option<String>,
) {
    let fail = |what: &str| -> ! { panic!("wrk's output has no {what}:\n{out}") };
    let mut requests = None;
    let mut wall = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut max = None;
    let mut bad = 0;
    let mut errors = None;
    for line in out.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Latency", _avg, _stdev, m, ..] => max = Some(wrk_duration(m)),
            ["50%", v] => p50 = Some(wrk_duration(v)),
            ["99%", v] => p99 = Some(wrk_duration(v)),
            [n, "requests", "in", t, ..] => {
                requests = n.parse().ok();
                wall = Some(wrk_duration(t.trim_end_matches(',')).as_secs_f64());
            }
            ["Requests/sec:", v] => rps = v.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => bad = n.parse().unwrap_or(0),
            ["Socket", "errors:", ..] => errors = Some(line.to_string()),
            _ => {}
        }
    }
    (
        requests.unwrap_or_else(|| fail("request count")),
        wall.unwrap_or_else(|| fail("duration")),
        rps.unwrap_or_else(|| fail("Requests/sec")),
        p50.unwrap_or_else(|| fail("50% latency (--latency)")),
        p99.unwrap_or_else(|| fail("99% latency (--latency)")),
        max.unwrap_or_else(|| fail("Latency line")),
        bad,
        errors,
    )
}

/// The Lua script every run uses: wrk's requests prebuilt, one per path, taken in
/// turn (each thread starting at its own place), all with [`USER_AGENT`].
fn wrk_script(dir: &Path, name: &str, paths: &[String]) -> PathBuf {
    let mut lua = format!(
        "-- written by benches/http.rs\nwrk.headers[\"User-Agent\"] = \"{USER_AGENT}\"\n\
         local paths = {{\n"
    );
    for p in paths {
        assert!(!p.contains('"') && !p.contains('\\'));
        lua.push_str(&format!("  \"{p}\",\n"));
    }
    lua.push_str(
        "}\nlocal reqs = {}\nlocal i = 0\n\
         function init(args)\n  for k, p in ipairs(paths) do reqs[k] = wrk.format(\"GET\", p) end\n  \
         i = math.random(#reqs) - 1\nend\n\
         function request()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n",
    );
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, lua).unwrap();
    path
}

/// wrk against `base` cycling through `paths`; `server_pid` None means this process
/// is the server (its runtime threads are counted).
fn wrk(
    s: &Settings,
    dir: &Path,
    route: &str,
    base: &str,
    paths: &[String],
    server_pid: Option<u32>,
) -> Run {
    let script = wrk_script(
        dir,
        &route.replace(|c: char| !c.is_alphanumeric(), "_"),
        paths,
    );
    let peer = server_pid.unwrap_or(std::process::id());
    let before = Cpu::now(peer);
    let out = Command::new(wrk_bin())
        .args([
            "-t",
            &s.threads.to_string(),
            "-c",
            &s.connections.to_string(),
        ])
        .args(["-d", &format!("{}s", s.secs), "--latency", "-s"])
        .arg(&script)
        .arg(format!("{base}/"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (apt-get install -y wrk)", wrk_bin()));
    let cpu = Cpu::now(peer).since(before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk on {route}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (requests, wall, rps, p50, p99, max, bad_status, socket_errors) = parse_wrk(&text);
    Run {
        route: route.to_string(),
        requests,
        wall,
        rps,
        p50,
        p99,
        max,
        bad_status,
        socket_errors,
        server_cpu: if server_pid.is_some() {
            cpu.peer
        } else {
            cpu.runtime
        },
        wrk_cpu: cpu.children,
    }
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn pct(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.0}%", 100.0 * a / b)
    } else {
        "-".into()
    }
}

/// Polls the event queue's depth every 500 ms until stopped; returns the largest seen.
fn watch_queue(base: String, stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if let Some((200, page)) = get(&format!("{base}/metrics")) {
            let q = metric(&page, QUEUE).unwrap_or(0.0) as u64;
            peak.fetch_max(q, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

async fn db_opens(db: &Path) -> (i64, i64, Vec<(String, i64)>) {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut c = sqlx::SqliteConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    let opened: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'opened'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let clicked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'clicked'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let by_reason: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(machine, 'human'), count(*) FROM events WHERE kind = 'opened' \
         GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    (opened, clicked, by_reason)
}

fn print_run(r: &Run) {
    let busy = |c: f64| 100.0 * c / r.wall;
    println!(
        "  {:<22} {:>9} requests in {:.2} s = {:>8} req/s, p50 {}, p99 {}, max {}; \
         CPU: server {:.0}% of a core, wrk {:.0}%{}{}",
        r.route,
        thousands(r.requests),
        r.wall,
        thousands(r.rps.round() as u64),
        ms(r.p50),
        ms(r.p99),
        ms(r.max),
        busy(r.server_cpu),
        busy(r.wrk_cpu),
        if r.bad_status > 0 {
            format!("; {} non-2xx/3xx answers", thousands(r.bad_status))
        } else {
            String::new()
        },
        r.socket_errors
            .as_deref()
            .map(|e| format!("; {e}"))
            .unwrap_or_default(),
    );
}

fn main() {
    let s = Settings {
        secs: env_usize("FOLLOWUP_BENCH_SECS", 10).max(1),
        connections: env_usize("FOLLOWUP_BENCH_CONNECTIONS", 64).max(1),
        threads: env_usize("FOLLOWUP_BENCH_THREADS", 2).max(1),
    };
    let contacts = env_usize("FOLLOWUP_BENCH_CONTACTS", 50).max(1);
    let with_click = env_usize("FOLLOWUP_BENCH_CLICK", 1) > 0;
    let threads = s.threads.min(s.connections);
    let s = Settings { threads, ..s };
    println!(
        "followup http bench: wrk -t{} -c{} -d{}s --latency on loopback, {} messages' \
         tracking URLs, SQLite, {} CPUs",
        s.threads,
        s.connections,
        s.secs,
        contacts,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    check_wrk();

    // The project, its messages and their tracking URLs.
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // /healthz and /metrics are not on the public listener.
    let admin_port = free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let config = write_project(dir.path(), port, admin_port, contacts);
    followup(
        dir.path(),
        &config,
        &["contacts", "import", "contacts.csv", "--sequence", "intro"],
    );
    let sent = followup(dir.path(), &config, &["run", "--once"]);
    let urls = tracking_urls(&dir.path().join("outbox"));
    assert_eq!(urls.len(), contacts, "run --once: {sent}");
    let path_of = |u: &str| {
        u.strip_prefix(&base)
            .unwrap_or_else(|| panic!("{u} is not under {base}"))
            .to_string()
    };
    let pixels: Vec<String> = urls.iter().map(|(p, _)| path_of(p)).collect();
    let clicks: Vec<String> = urls.iter().map(|(_, c)| path_of(c)).collect();
    println!(
        "set-up (project, import, run --once: {} message(s)) {:.1} s; pixel e.g. {}, click e.g. {}",
        urls.len(),
        start.elapsed().as_secs_f64(),
        pixels[0],
        clicks[0]
    );

    // The daemon.
    let mut daemon = Daemon::start(dir.path(), &config, &admin);
    match get(&format!("{base}{}", pixels[0])) {
        Some((200, _)) => {}
        other => panic!("the pixel does not answer 200: {other:?}"),
    }
    if with_click {
        match get(&format!("{base}{}", clicks[0])) {
            Some((302, _)) => {}
            other => panic!("the click URL does not answer 302: {other:?}"),
        }
    }
    println!("\nroutes (daemon pid {}, FOLLOWUP_LOG=warn):", daemon.pid);

    let mut runs = Vec::new();
    let healthz = wrk(
        &s,
        dir.path(),
        "/healthz",
        &admin,
        &["/healthz".to_string()],
        Some(daemon.pid),
    );
    print_run(&healthz);
    runs.push(healthz.clone());

    let before = Opens::read(&admin);
    let stop_watch = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (b, st, pk) = (admin.clone(), stop_watch.clone(), peak.clone());
        std::thread::spawn(move || watch_queue(b, st, pk))
    };
    let pixel = wrk(
        &s,
        dir.path(),
        "/o/{token} (pixel)",
        &base,
        &pixels,
        Some(daemon.pid),
    );
    stop_watch.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let at_end = Opens::read(&admin);
    print_run(&pixel);
    runs.push(pixel.clone());
    // Let the recorder catch up before the next route, and time it.
    let drain = Instant::now();
    let mut after = at_end;
    while after.queue > 0 && drain.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
        after = Opens::read(&admin);
    }
    let drained_in = drain.elapsed();
    let served = after.served - before.served;
    let recorded = after.recorded() - before.recorded();
    let dropped = after.dropped - before.dropped;
    println!(
        "    opens: wrk counted {} answers; the daemon served {} (wrk stops counting the \
         ones in flight at the end), recorded {} ({} human, {} machine), dropped {}, unknown {}",
        thousands(pixel.requests),
        thousands(served),
        thousands(recorded),
        thousands(after.human - before.human),
        thousands(after.machine - before.machine),
        thousands(dropped),
        thousands(after.unknown - before.unknown),
    );
    println!(
        "    event queue: peak depth seen {} (sampled every 500 ms), {} when wrk stopped, \
         empty {:.0} ms later",
        thousands(peak.load(Ordering::Relaxed)),
        thousands(at_end.queue),
        drained_in.as_secs_f64() * 1e3
    );
    if dropped > 0 {
        println!(
            "    !! {} pixel hits were answered but NOT recorded (event queue full)",
            thousands(dropped)
        );
    }

    let mut click_run = None;
    if with_click {
        let r = wrk(
            &s,
            dir.path(),
            "/c/{token} (click)",
            &base,
            &clicks,
            Some(daemon.pid),
        );
        print_run(&r);
        runs.push(r.clone());
        click_run = Some(r);
    }
    let final_metrics = Opens::read(&admin);

    let (status, stopped_in) = daemon.stop();
    let log = daemon.log_text();
    assert!(status.success(), "the daemon exited {status}; log:\n{log}");
    drop(daemon);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (opened_rows, clicked_rows, by_reason) =
        rt.block_on(db_opens(&dir.path().join("followup.db")));
    // One sanity GET of a pixel before the run, besides wrk's.
    let expected = final_metrics.served;
    let lost = expected as i64 - opened_rows - final_metrics.dropped as i64;
    println!(
        "    SIGTERM: exited in {:.0} ms ({status}); in the database: {} `opened` rows \
         (pixel answers served: {}, wrk's count {} + 1 sanity GET), {} `clicked` rows{}",
        stopped_in.as_secs_f64() * 1e3,
        thousands(opened_rows as u64),
        thousands(expected),
        thousands(pixel.requests),
        thousands(clicked_rows as u64),
        if lost != 0 {
            format!("; !! {lost} served opens are neither in the database nor counted dropped")
        } else {
            String::new()
        }
    );
    println!(
        "    opened rows by machine label: {}",
        by_reason
            .iter()
            .map(|(r, n)| format!("{r} {}", thousands(*n as u64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let warnings: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if !warnings.is_empty() {
        println!(
            "    daemon log ({} lines), first: {}",
            warnings.len(),
            warnings[0]
        );
    }

    // A bare axum hello-world in this process, the daemon stopped.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.set_nonblocking(true).unwrap();
    let hello_base = format!("http://{}", listener.local_addr().unwrap());
    let server = rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        axum::serve(listener, app).await.unwrap();
    });
    match get(&format!("{hello_base}/")) {
        Some((200, b)) if b == "hello" => {}
        other => panic!("the hello-world does not answer: {other:?}"),
    }
    let hello = wrk(
        &s,
        dir.path(),
        "hello-world (axum)",
        &hello_base,
        &["/".to_string()],
        None,
    );
    print_run(&hello);
    server.abort();
    drop(rt);
    runs.push(hello.clone());

    // The table.
    println!(
        "\n| route | req/s | p50 | p99 | vs /healthz | vs hello-world |\n|---|---|---|---|---|---|"
    );
    for r in [
        Some(&hello),
        Some(&healthz),
        Some(&pixel),
        click_run.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.route,
            thousands(r.rps.round() as u64),
            ms(r.p50),
            ms(r.p99),
            pct(r.rps, healthz.rps),
            pct(r.rps, hello.rps)
        );
    }
    println!(
        "\npixel/healthz = {} (target >= 50%), pixel p99 = {} (target < 10 ms); \
         pixel/hello-world = {}; opens recorded {} of {} served, dropped {}{}",
        pct(pixel.rps, healthz.rps),
        ms(pixel.p99),
        pct(pixel.rps, hello.rps),
        thousands(opened_rows as u64),
        thousands(expected),
        thousands(final_metrics.dropped),
        if final_metrics.dropped > 0 || lost != 0 {
            "  !! NOT every hit recorded"
        } else {
            ""
        }
    );
    for r in &runs {
        if r.bad_status > 0 || r.socket_errors.is_some() {
            println!(
                "note: {}: {} non-2xx/3xx answers; {}",
                r.route,
                thousands(r.bad_status),
                r.socket_errors.as_deref().unwrap_or("no socket errors")
            );
        }
    }
}
