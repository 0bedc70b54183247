//! Test harness: a project in a temp folder, the real `followup` binary, a real SMTP
//! server (aiosmtpd, tests/support/smtpd.py) and a real database (a SQLite file, or a
//! fresh database on the PostgreSQL server named by FOLLOWUP_TEST_PG).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_followup");

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh database URL for one test.
pub fn database_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("followup.db").display()),
        Db::Postgres => {
            let base = std::env::var("FOLLOWUP_TEST_PG").unwrap_or_else(|_| {
                panic!(
                    "FOLLOWUP_TEST_PG is not set: the PostgreSQL tests need a server \
                     (bash .ci/run starts one; or tests/support/pg.sh start DIR PORT)"
                )
            });
            let name = format!("followup_t{:016x}", fastrand::u64(..));
            let (url, db) = (base.clone(), name.clone());
            block_on_own_thread(async move {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url)
                    .await
                    .expect("connect to FOLLOWUP_TEST_PG");
                sqlx::query(&format!("CREATE DATABASE {db}"))
                    .execute(&mut c)
                    .await
                    .expect("create test database");
            });
            let (prefix, _) = base
                .rsplit_once('/')
                .expect("FOLLOWUP_TEST_PG ends with /DBNAME");
            format!("{prefix}/{name}")
        }
    }
}

/// A real SMTP server on 127.0.0.1, writing what it accepts into a folder.
pub struct Smtp {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Smtp {
    pub fn start(dir: &Path, mode: &str) -> Smtp {
        Smtp::start_on(dir, mode, 0)
    }

    /// A port nothing listens on (yet): bound, read, released.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub fn start_on(dir: &Path, mode: &str, port: u16) -> Smtp {
        Smtp::start_with(dir, mode, &["--port", &port.to_string()])
    }

    /// With more of smtpd.py's options (`--tls`, `--auth`, ...).
    pub fn start_with(dir: &Path, mode: &str, args: &[&str]) -> Smtp {
        std::fs::create_dir_all(dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtpd.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--dir",
                dir.to_str().unwrap(),
                "--mode",
                mode,
                "--exit-on-stdin-eof",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 tests/support/smtpd.py (pip install aiosmtpd)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("smtpd.py said {line:?}"));
        Smtp {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// Messages accepted so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| Received::parse(&std::fs::read(p).unwrap()))
            .collect()
    }

    /// The server's transaction log: (result code, Message-ID, unix time).
    pub fn log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("log.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let r = self.received();
            if r.len() >= n || start.elapsed() > timeout {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as the SMTP server got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope_to: Vec<String>,
    /// Header name (lower-case) → unfolded values.
    pub headers: BTreeMap<String, Vec<String>>,
    pub raw: String,
}

impl Received {
    fn parse(bytes: &[u8]) -> Received {
        let raw = String::from_utf8_lossy(bytes).to_string();
        let (head, _) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut envelope_to = Vec::new();
        let mut last: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(k) = &last {
                    let v = headers.get_mut(k).unwrap().last_mut().unwrap();
                    v.push_str(line);
                }
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let k = k.trim().to_ascii_lowercase();
            if k == "x-envelope-to" {
                envelope_to.push(v.trim().to_string());
            }
            headers
                .entry(k.clone())
                .or_default()
                .push(v.trim().to_string());
            last = Some(k);
        }
        Received {
            envelope_to,
            headers,
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The text that tells the test templates' steps apart: `STEP=<id>` in the body.
    pub fn step(&self) -> String {
        let i = self
            .raw
            .find("STEP=")
            .expect("test templates put STEP= in the body");
        self.raw[i + 5..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect()
    }

    pub fn to_addr(&self) -> String {
        self.envelope_to.first().cloned().unwrap_or_default()
    }
}

/// A project directory with the test sequence and templates.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The database URL written into followup.toml (for tests that write their own).
    pub database: String,
    /// Extra environment for every `followup` command (e.g. a mailbox's password_env).
    pub env: Vec<(String, String)>,
}

pub struct Options<'a> {
    pub smtp_port: u16,
    /// Waits of steps 2 and 3.
    pub waits: (&'a str, &'a str),
    pub batch: usize,
    pub connections: usize,
    pub lease: &'a str,
    pub extra_mailbox: &'a str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            smtp_port: 0,
            waits: ("1s", "1s"),
            batch: 100,
            connections: 4,
            lease: "5s",
            extra_mailbox: "",
        }
    }
}

impl Project {
    pub fn new(db: Db, o: &Options<'_>) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let database = database_url(db, dir.path());
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "followup.toml",
            &format!(
                "database = \"{database}\"\ntimezone = \"Asia/Shanghai\"\nwindow = \"always\"\n\n\
                 [send]\nbatch = {}\nlease = \"{}\"\nretry_base = \"1s\"\nretry_max = \"2s\"\nmax_attempts = 5\n\n\
                 [mailboxes.sales]\nfrom = \"Iris Zhang <iris@sender.example>\"\nsmtp = \"smtp://127.0.0.1:{}\"\nconnections = {}\n{}",
                o.batch, o.lease, o.smtp_port, o.connections, o.extra_mailbox
            ),
        );
        write(
            "sequences/intro.yaml",
            &format!(
                "name: intro\nsender: sales\nsteps:\n  - id: first\n    template: first\n  - id: bump\n    wait: {}\n    template: bump\n    thread: true\n  - id: last\n    wait: {}\n    template: last\n    thread: true\n",
                o.waits.0, o.waits.1
            ),
        );
        write(
            "templates/first.hbs",
            "---\nsubject: \"Samples for {{company}}\"\ndefaults:\n  first_name: there\n---\nHi {{first_name}},\nSTEP=first\n",
        );
        write(
            "templates/first.html",
            "<p>Hi {{first_name}} at {{company}}</p><p>STEP=first</p>",
        );
        write(
            "templates/bump.hbs",
            "---\nsubject: Following up\n---\nHi again {{first_name}}\nSTEP=bump\n",
        );
        write(
            "templates/last.hbs",
            "---\nsubject: Closing\n---\nLast one\nSTEP=last\n",
        );
        let config = dir.path().join("followup.toml");
        Project {
            dir,
            config,
            database,
            env: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("FOLLOWUP_LOG", "info")
            .env_remove("FOLLOWUP_CONFIG");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "followup {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Writes a CSV of `n` contacts c0001@… and imports it into `intro`.
    pub fn import_contacts(&self, n: usize) -> Vec<String> {
        let mut csv = String::from("email,first_name,company\n");
        let mut emails = Vec::new();
        for i in 0..n {
            let e = format!("c{i:04}@prospect.example");
            csv.push_str(&format!("{e},Name{i},Company {i}\n"));
            emails.push(e);
        }
        self.write("contacts.csv", &csv);
        self.ok(&[
            "contacts",
            "import",
            self.path("contacts.csv").to_str().unwrap(),
            "--sequence",
            "intro",
        ]);
        emails
    }

    /// Starts the daemon.
    pub fn daemon(&self) -> Daemon {
        Daemon::spawn(self, self.cmd(&["run"]))
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// (step → column → count) for sequence `intro`.
    pub fn counts(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        let s = self.status_json();
        let mut out = BTreeMap::new();
        for seq in s["sequences"].as_array().unwrap() {
            if seq["sequence"] != "intro" {
                continue;
            }
            for row in seq["steps"].as_array().unwrap() {
                let mut m = BTreeMap::new();
                for (k, v) in row.as_object().unwrap() {
                    if let Some(n) = v.as_i64() {
                        m.insert(k.clone(), n);
                    }
                }
                out.insert(row["step"].as_str().unwrap().to_string(), m);
            }
        }
        out
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (a `followup run` of `p`, with what a test adds) logging to a file.
    pub fn spawn(p: &Project, mut cmd: Command) -> Daemon {
        let log = p.path(&format!("daemon-{:08x}.log", fastrand::u32(..)));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!(
                    "daemon did not stop on SIGTERM; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Project {
    /// Runs one SQL statement against the project's database; returns the rows changed.
    /// For tests that set up a moment (a message sent a minute ago) or read one back.
    pub fn sql(&self, q: &str) -> u64 {
        self.query(q, false) as u64
    }

    /// One integer from the database (`SELECT count(*) ...`).
    pub fn sql_count(&self, q: &str) -> i64 {
        self.query(q, true)
    }

    fn query(&self, q: &str, scalar: bool) -> i64 {
        let (url, q) = (self.database.clone(), q.to_string());
        block_on_own_thread(async move {
            macro_rules! run {
                ($pool:expr) => {{
                    let pool = $pool.await.unwrap();
                    let n = if scalar {
                        sqlx::query_scalar::<_, i64>(&q)
                            .fetch_one(&pool)
                            .await
                            .unwrap()
                    } else {
                        sqlx::query(&q)
                            .execute(&pool)
                            .await
                            .unwrap()
                            .rows_affected() as i64
                    };
                    pool.close().await;
                    n
                }};
            }
            if url.starts_with("sqlite:") {
                run!(sqlx::SqlitePool::connect(&url))
            } else {
                run!(sqlx::PgPool::connect(&url))
            }
        })
    }
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own: callers may
/// already be inside a tokio runtime, which cannot block on another future.
fn block_on_own_thread<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}
