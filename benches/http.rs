//! Tracking endpoint throughput: pixel hits per second with every open recorded, side
//! by side with the same binary's `/healthz` and a bare axum hello-world, all under
//! Debian's `wrk` on loopback, in the same run.
//!
//! A project with `[http]` and a file outbox sends a few mails (`run --once`); the open
//! pixel URL is read from one of the .eml files; then the real daemon (`followup run`)
//! is started and `wrk --latency` hits, in turn, a bare axum hello-world served from
//! this process, the daemon's `/healthz` (a database ping per request) and the pixel (a
//! signature check, a GIF, the hit queued and written in batched transactions). After
//! SIGTERM (which drains the queue) the opens in the database are counted against the
//! requests wrk made, so a pixel that dropped hits could not pass as fast.
//!
//! Run: `cargo bench --bench http` (needs /usr/bin/wrk; `bash .ci/run` installs it).
//! Knobs: FOLLOWUP_BENCH_SECS (per run, default 10), FOLLOWUP_BENCH_CONNECTIONS
//! (default 64), FOLLOWUP_BENCH_THREADS (wrk threads, default 2).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_usize, thousands};

const BIN: &str = env!("CARGO_BIN_EXE_followup");
const WRK: &str = "/usr/bin/wrk";
const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

/// Kills the daemon if the bench panics.
struct Daemon(Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Wrk {
    requests: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `1.23ms`, `850.00us`, `1.02s` → milliseconds.
fn duration_ms(text: &str) -> f64 {
    let t = text.trim();
    let (num, factor) = if let Some(v) = t.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = t.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1e3)
    } else {
        (t, 1.0)
    };
    num.parse::<f64>().map(|n| n * factor).unwrap_or(f64::NAN)
}

fn wrk(url: &str, secs: usize, connections: usize, threads: usize) -> Wrk {
    let out = Command::new(WRK)
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_string())
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Wrk {
        requests,
        per_sec: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: field("50%").map(|v| duration_ms(&v)).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(|v| duration_ms(&v)).unwrap_or(f64::NAN),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

fn get(url: &str) -> Option<String> {
    // A tiny HTTP/1.0 GET, so that the bench needs no HTTP client of its own.
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.lines().next().unwrap_or_default();
    (status.starts_with("HTTP/1.") && status.contains(" 200 "))
        .then(|| buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))
        .flatten()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    assert!(
        std::path::Path::new(WRK).exists(),
        "{WRK} is missing: apt-get install wrk (bash .ci/run does)"
    );
    let secs = env_usize("FOLLOWUP_BENCH_SECS", 10);
    let connections = env_usize("FOLLOWUP_BENCH_CONNECTIONS", 64);
    let threads = env_usize("FOLLOWUP_BENCH_THREADS", 2);

    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write(
        "followup.toml",
        &format!(
            "database = \"sqlite://followup.db\"\ntimezone = \"UTC\"\nwindow = \"always\"\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\nsecret_env = \"BENCH_SECRET\"\n\n\
             [mailboxes.sales]\nfrom = \"Iris <iris@sender.example>\"\nsmtp = \"file://outbox\"\n"
        ),
    );
    write(
        "sequences/intro.yaml",
        "name: intro\nsender: sales\nsteps:\n  - id: first\n    template: first\n",
    );
    write(
        "templates/first.hbs",
        "---\nsubject: Hi\n---\nHi {{first_name}}\n",
    );
    write(
        "templates/first.html",
        "<html><body><p>Hi {{first_name}}</p><p><a href=\"https://example.com/pricing\">pricing</a></p></body></html>",
    );
    let mut csv = String::from("email,first_name\n");
    for i in 0..10 {
        csv.push_str(&format!("c{i}@prospect.example,C{i}\n"));
    }
    write("contacts.csv", &csv);
    let config = dir.path().join("followup.toml");
    let followup = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("BENCH_SECRET", SECRET)
            .env("FOLLOWUP_LOG", "warn")
            .output()
            .expect("run followup");
        assert!(
            out.status.success(),
            "followup {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let csv_path = dir.path().join("contacts.csv");
    followup(&[
        "contacts",
        "import",
        csv_path.to_str().expect("utf-8 path"),
        "--sequence",
        "intro",
    ]);
    followup(&["run", "--once"]);
    let eml = std::fs::read_dir(dir.path().join("outbox"))
        .expect("outbox")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .expect("an .eml in the outbox");
    let raw = std::fs::read(&eml).expect("read .eml");
    let html = mail_parser::MessageParser::default()
        .parse(&raw)
        .and_then(|m| m.body_html(0).map(|h| h.to_string()))
        .expect("an HTML part");
    let pixel = html
        .split("src=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .find(|u| u.contains("/o/"))
        .expect("the open pixel")
        .to_string();

    // A bare axum hello-world in this process, on a runtime of its own.
    let hello_port = free_port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
            let l = tokio::net::TcpListener::bind(("127.0.0.1", hello_port))
                .await
                .expect("bind hello");
            axum::serve(l, app).await.expect("serve hello");
        });
    });

    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
    let mut daemon = Daemon(Some(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("BENCH_SECRET", SECRET)
            .env("FOLLOWUP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon"),
    ));
    let start = Instant::now();
    while get(&format!("{base}/healthz")).is_none()
        || get(&format!("http://127.0.0.1:{hello_port}/")).is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "servers did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    println!(
        "wrk -t{threads} -c{connections} -d{secs}s --latency, loopback, 2 cores shared by wrk and the server"
    );
    let hello = wrk(
        &format!("http://127.0.0.1:{hello_port}/"),
        secs,
        connections,
        threads,
    );
    let health = wrk(&format!("{base}/healthz"), secs, connections, threads);
    let px = wrk(&pixel, secs, connections, threads);
    let metrics = get(&format!("{base}/metrics")).unwrap_or_default();

    // SIGTERM: the daemon drains the queue before it exits.
    if let Some(child) = daemon.0.as_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let t = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            assert!(t.elapsed() < Duration::from_secs(60), "daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    daemon.0 = None;
    let db = format!("sqlite://{}", dir.path().join("followup.db").display());
    let recorded: i64 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(&db).await.expect("open db");
            sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'opened'")
                .fetch_one(&pool)
                .await
                .expect("count opens")
        });

    println!();
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>11} {:>11}",
        "route", "req/s", "p50 ms", "p99 ms", "vs healthz", "vs hello"
    );
    for (name, w) in [
        ("hello (axum)", &hello),
        ("/healthz", &health),
        ("/o pixel", &px),
    ] {
        println!(
            "{:<14} {:>10} {:>9.2} {:>9.2} {:>10.0}% {:>10.0}%",
            name,
            thousands(w.per_sec.round() as u64),
            w.p50_ms,
            w.p99_ms,
            w.per_sec / health.per_sec * 100.0,
            w.per_sec / hello.per_sec * 100.0
        );
        if w.non_2xx > 0 {
            println!("  !! {} responses were not 2xx/3xx", w.non_2xx);
        }
    }
    let dropped = metric(&metrics, "followup_hits_dropped_total");
    println!();
    println!(
        "pixel requests {} (wrk, completed), opens in the database after shutdown {}, dropped {}",
        thousands(px.requests),
        thousands(recorded.max(0) as u64),
        thousands(dropped)
    );
    println!(
        "pixel/healthz = {:.0}% (target >= 50%), pixel p99 = {:.2} ms (target < 10 ms), pixel/hello = {:.0}%",
        px.per_sec / health.per_sec * 100.0,
        px.p99_ms,
        px.per_sec / hello.per_sec * 100.0
    );
    if (recorded.max(0) as u64) + dropped < px.requests {
        println!("  !! fewer opens recorded than pixel requests answered");
    }
}
