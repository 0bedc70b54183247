//! The only module that speaks SQL. One database holds all of followup's state: a SQLite
//! file by default, PostgreSQL when several daemons share the work. The same statements
//! run on both (times are Unix milliseconds, JSON is text, placeholders are `$N`, which
//! SQLite accepts too); where the dialects differ (`FOR UPDATE SKIP LOCKED`) the query
//! says so. Work is batched: per-statement cost, not SQLite itself, bounds throughput
//! (see NOTES.md), so claims, `sending` marks and outcomes each take one statement per
//! batch.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

use crate::model::{Cause, EnrollmentState};
pub use crate::model::{
    Contact, Enrollment, EnrollmentUpdate, NewContact, NewEnrollment, NewEvent, Upserted,
};

/// Errors from the store. Messages name what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported database URL '{0}': use sqlite://FILE or postgres://USER@HOST/DB")]
    Url(String),
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("corrupt {what} in the database: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// An enrollment changed between the read a decision was made on and its write;
    /// nothing was written. Deciding again on a fresh read succeeds.
    #[error("an enrollment changed while this was decided; nothing was written")]
    Moved,
    /// A file the store keeps beside a SQLite database (a daemon's liveness lock or
    /// wire journal, in `FILE.nodes/`) could not be made or written.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// What was being done, as a verb phrase: "create the liveness lock".
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed whatever was asked (the database was
    /// unreachable or its pool overwhelmed), as opposed to a failure the request
    /// itself causes each time.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Db(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Tls(_)
            ),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePools),
    Postgres(PgPool),
}

/// SQLite takes one writer at a time, so a process has one write connection: its
/// writers (claims, `sending` commits, outcome commits, the hit recorder) queue for it
/// in sqlx's pool, first come first served, instead of bumping into each other's lock
/// inside SQLite and sleeping in its busy handler (1, 2, 5 ms...). Reads run beside the
/// writer (WAL) on read-only connections of their own, so a claim's load or a click's
/// look-up never waits for a commit. Another process on the same file is still waited
/// for through `busy_timeout`.
#[derive(Clone)]
struct SqlitePools {
    write: SqlitePool,
    read: SqlitePool,
    /// `checkpoint_wal`'s connection, and what stops it: `close`, or the last handle
    /// on the store going away.
    checkpoint: SqlitePool,
    stop_checkpoints: tokio_util::sync::CancellationToken,
    _stop_on_drop: std::sync::Arc<tokio_util::sync::DropGuard>,
}

/// How long opening a PostgreSQL database may take before `followup` gives up.
const CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(5);

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: StdDuration = StdDuration::from_millis(200);

/// Copies the WAL back into the database file from a connection of its own, so that no
/// commit of the writer pays for it: with SQLite's automatic checkpoint, every thousandth
/// page made one commit take 5–8 ms instead of 0.4 ms, holding up the claim and the
/// `sending` commit queued behind it (`cargo bench --bench send`). A PASSIVE checkpoint
/// runs beside readers and the writer; once the WAL is all copied, the writer's next
/// commit starts it over from the beginning, so it stays small.
async fn checkpoint_wal(pool: SqlitePool, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "WAL checkpoint failed; trying again");
        }
    }
    pool.close().await;
}

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

/// Runs `$body` with `$pool` bound to the concrete pool. The body is compiled once per
/// database, so the same statement text and decoding serve both.
/// Starts a transaction that writes. On SQLite it takes the write lock at BEGIN
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes fails at once
/// with SQLITE_BUSY, without waiting out busy_timeout, when another connection wrote in
/// between, as the scheduler's stages and the watcher do side by side. PostgreSQL's
/// row locks need nothing of the kind.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>,
    > + Send;
}

impl BeginWrite for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>,
    > + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>,
    > + Send {
        self.begin()
    }
}

macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite(pools) => {
                let $pool = &pools.write;
                $body
            }
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Like [`with_pool!`], for statements that only read: on SQLite they take a read
/// connection, beside the writer. They see what has been committed.
macro_rules! with_read_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite(pools) => {
                let $pool = &pools.read;
                $body
            }
            Pool::Postgres($pool) => $body,
        }
    };
}

/// An enrollment's claim priority: follow-ups (0) before first steps (1), so that when a
/// daily limit binds, threads already started are continued.
pub(crate) fn priority(step_index: i64) -> i64 {
    if step_index == 0 {
        1
    } else {
        0
    }
}

/// Writes enrollment updates with one multi-row `UPDATE ... FROM (VALUES ...)` per chunk
/// (both SQLite ≥ 3.33 and PostgreSQL take it; VALUES columns are `column1..N` in both).
/// The claim lease is released by the same statement. A macro rather than a function so
/// that it compiles against each database's concrete transaction type.
macro_rules! update_enrollments {
    ($tx:expr, $updates:expr, $now:expr, $owner:expr) => {
        update_enrollments!($tx, $updates, $now, $owner, None::<&mut Vec<i64>>)
    };
    ($tx:expr, $updates:expr, $now:expr, $owner:expr, $applied:expr) => {
        for chunk in $updates.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(
                "UPDATE enrollments SET state = v.column2, reason = v.column3, step_index = v.column4, \
                 step_id = v.column5, priority = v.column6, next_run_at = v.column7, paused_until = v.column8, \
                 attempts = v.column9, thread_message_id = v.column10, thread_subject = v.column11, \
                 last_sent_at = v.column12, updated_at = v.column13, cause = v.column14, \
                 cause_detail = v.column15 FROM (",
            );
            qb.push_values(chunk.iter(), |mut b, u: &EnrollmentUpdate| {
                b.push_bind(u.id)
                    .push_bind(u.state.as_str())
                    .push_bind(u.cause.as_ref().map(|c| c.to_string()))
                    .push_bind(u.step_index)
                    .push_bind(u.step_id.clone())
                    .push_bind($crate::store::priority(u.step_index))
                    .push_bind(u.next_run_at.map(ms))
                    .push_bind(u.paused_until.map(ms))
                    .push_bind(u.attempts)
                    .push_bind(u.thread_message_id.clone())
                    .push_bind(u.thread_subject.clone())
                    .push_bind(u.last_sent_at.map(ms))
                    .push_bind(ms($now))
                    .push_bind(u.cause.as_ref().map(|c| c.kind.as_str()))
                    .push_bind(u.cause.as_ref().and_then(|c| c.detail.clone()))
                    .push_bind(u.from.as_str());
            });
            qb.push(") AS v WHERE enrollments.id = v.column1");
            let owner: Option<&str> = $owner;
            match owner {
                // A daemon only writes back enrollments it still holds: an operator or
                // the reply watcher may have stopped or paused one while its mail was
                // in flight, and whoever changes an enrollment drops its claim.
                Some(owner) => {
                    qb.push(" AND EXISTS (SELECT 1 FROM claims k WHERE k.enrollment_id = enrollments.id AND k.owner = ")
                        .push_bind(owner.to_string())
                        .push(")");
                }
                // Anyone else writes only if the enrollment is still in the state the
                // engine decided from: a change computed on a stale read (an operator
                // and the reply watcher at once) is dropped, never laid over the other.
                None => {
                    qb.push(" AND enrollments.state = v.column16");
                }
            }
            // Which were written, where the caller asks: the send path, whose guard
            // is its claim, does not, and saves the rows coming back.
            let applied: Option<&mut Vec<i64>> = $applied;
            match applied {
                Some(applied) => {
                    qb.push(" RETURNING enrollments.id");
                    let ids: Vec<i64> = qb.build_query_scalar().fetch_all(&mut *$tx).await?;
                    applied.extend(ids);
                }
                None => {
                    qb.build().execute(&mut *$tx).await?;
                }
            }
            // Then the leases go: the daemon's own, or, for a change made by anyone
            // else, whoever's, so that a send in flight cannot write over that change.
            let mut qb = QueryBuilder::new("DELETE FROM claims WHERE enrollment_id IN (");
            let mut sep = qb.separated(", ");
            for u in chunk {
                sep.push_bind(u.id);
            }
            qb.push(")");
            if let Some(owner) = owner {
                qb.push(" AND owner = ").push_bind(owner.to_string());
            }
            qb.build().execute(&mut *$tx).await?;
        }
    };
}

/// Sets stages and adds tags as `rules` say, with their events, in transaction `$tx`
/// (a macro, as [`update_enrollments!`], for both databases' transaction types). A
/// stage set twice is one change and a tag added twice is one tag.
macro_rules! apply_rules_in_tx {
    ($tx:expr, $rules:expr, $now:expr) => {{
        let rules: &[(i64, crate::sequence::Rule)] = $rules;
        let now: DateTime<Utc> = $now;
        let mut ids: Vec<i64> = rules.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
            let mut current: std::collections::HashMap<i64, (String, Vec<String>)> =
                std::collections::HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(CHUNK) {
                let mut qb = QueryBuilder::new("SELECT id, stage, tags FROM contacts WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for row in qb.build().fetch_all(&mut *$tx).await? {
                    let tags_text: String = row.try_get("tags")?;
                    current.insert(
                        row.try_get("id")?,
                        (row.try_get("stage")?, serde_json::from_str(&tags_text).unwrap_or_default()),
                    );
                }
            }
            let mut events = Vec::new();
            let mut changed = std::collections::BTreeSet::new();
            for (contact_id, rule) in rules {
                let Some((stage, tags)) = current.get_mut(contact_id) else { continue };
                if let Some(to) = &rule.stage {
                    if to != stage {
                        events.push($crate::model::NewEvent { contact_id: Some(*contact_id), enrollment_id: None, message_id: None, kind: $crate::model::EventKind::StageChanged, data: serde_json::json!({ "from": stage.clone(), "to": to }) });
                        *stage = to.clone();
                        changed.insert(*contact_id);
                    }
                }
                for t in &rule.tags {
                    if !tags.contains(t) {
                        tags.push(t.clone());
                        events.push($crate::model::NewEvent { contact_id: Some(*contact_id), enrollment_id: None, message_id: None, kind: $crate::model::EventKind::Tagged, data: serde_json::json!({ "tag": t }) });
                        changed.insert(*contact_id);
                    }
                }
            }
            let changed: Vec<i64> = changed.into_iter().collect();
            for chunk in changed.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(
                    "UPDATE contacts SET stage = v.column2, tags = v.column3, updated_at = v.column4 FROM (",
                );
                qb.push_values(chunk.iter(), |mut b, id| {
                    let (stage, tags) = &current[id];
                    b.push_bind(*id)
                        .push_bind(stage.clone())
                        .push_bind(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()))
                        .push_bind(ms(now));
                });
                qb.push(") AS v WHERE contacts.id = v.column1");
                qb.build().execute(&mut *$tx).await?;
            }
            insert_events!($tx, events, now);
    }};
}

/// Appends events, one multi-row INSERT per chunk.
macro_rules! insert_events {
    ($tx:expr, $events:expr, $now:expr) => {
        for chunk in $events.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO events (at, contact_id, enrollment_id, message_id, kind, data) ",
            );
            qb.push_values(chunk.iter(), |mut b, e: &$crate::model::NewEvent| {
                b.push_bind(ms($now))
                    .push_bind(e.contact_id)
                    .push_bind(e.enrollment_id)
                    .push_bind(e.message_id)
                    .push_bind(e.kind.as_str())
                    .push_bind(e.data.to_string());
            });
            qb.build().execute(&mut *$tx).await?;
        }
    };
}

/// The events to record with `updates` of which `applied` were written: an update
/// dropped because the enrollment moved meanwhile takes its events with it, since
/// they describe a change that did not happen.
pub(crate) fn events_of_applied(
    events: &[NewEvent],
    updates: &[EnrollmentUpdate],
    applied: &[i64],
) -> Vec<NewEvent> {
    let changed: std::collections::HashSet<i64> = updates.iter().map(|u| u.id).collect();
    let kept: std::collections::HashSet<i64> = applied.iter().copied().collect();
    events
        .iter()
        .filter(|e| {
            e.enrollment_id
                .is_none_or(|id| !changed.contains(&id) || kept.contains(&id))
        })
        .cloned()
        .collect()
}

/// An enrollment state as stored; a name this version does not know is corruption.
pub(crate) fn stored_state(s: String) -> Result<EnrollmentState> {
    EnrollmentState::parse(&s).ok_or(Error::Corrupt {
        what: "enrollment state",
        detail: format!("'{s}' is not one this version knows"),
    })
}

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Rows per multi-row statement: well under both databases' bind-parameter limits.
const CHUNK: usize = 200;

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database.
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens without migrating.
    pub async fn connect(url: &str) -> Result<Store> {
        let connect_err = |source| Error::Connect {
            url: redact(url),
            source,
        };
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(connect_err)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                // 16 MiB of page cache per connection (SQLite's default is 2 MiB): a claim
                // touches index and table pages all over a large file.
                .pragma("cache_size", "-16384")
                // Two processes on one file take turns; a writer waits rather than fails.
                .busy_timeout(StdDuration::from_secs(30));
            let file = opts.get_filename().to_path_buf();
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            if !memory {
                create_private(&file).map_err(|e| connect_err(sqlx::Error::Io(e)))?;
            }
            // The writer first: it creates the file and switches it to WAL. It leaves
            // checkpoints to `checkpoint_wal`, but for a backstop far above what that
            // task lets pile up (10,000 pages, 40 MB), should it ever stall.
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(StdDuration::from_secs(60))
                .connect_with(opts.clone().pragma("wal_autocheckpoint", "10000"))
                .await
                .map_err(connect_err)?;
            let checkpointer = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone().create_if_missing(false))
                .await
                .map_err(connect_err)?;
            let read = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts.create_if_missing(false).read_only(true))
                .await
                .map_err(connect_err)?;
            if !memory {
                // SQLite gives the WAL and shared-memory files the database file's mode;
                // set it again in case they were left behind by an older version.
                for suffix in ["-wal", "-shm"] {
                    let mut side = file.clone().into_os_string();
                    side.push(suffix);
                    set_private(std::path::Path::new(&side))
                        .map_err(|e| connect_err(sqlx::Error::Io(e)))?;
                }
            }
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(checkpoint_wal(checkpointer.clone(), stop.clone()));
            Ok(Store {
                pool: Pool::Sqlite(SqlitePools {
                    write,
                    read,
                    checkpoint: checkpointer,
                    stop_checkpoints: stop.clone(),
                    _stop_on_drop: std::sync::Arc::new(stop.drop_guard()),
                }),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url).map_err(connect_err)?;
            // The first connection within CONNECT_TIMEOUT: a server that does not
            // answer (a firewall dropping packets, a wrong port that accepts and
            // stays silent) is reported at once, not after the pool's 30 s.
            let pool = tokio::time::timeout(
                CONNECT_TIMEOUT,
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(StdDuration::from_secs(30))
                    .connect_with(opts),
            )
            .await
            .map_err(|_| {
                connect_err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                )))
            })?
            .map_err(connect_err)?;
            Ok(Store {
                pool: Pool::Postgres(pool),
            })
        } else {
            Err(Error::Url(redact(url)))
        }
    }

    pub fn kind(&self) -> Kind {
        match self.pool {
            Pool::Sqlite(_) => Kind::Sqlite,
            Pool::Postgres(_) => Kind::Postgres,
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => {
                // Held until this arm ends: one process migrates at a time.
                let _lock = self.migration_lock().await?;
                sqlx::migrate!("migrations/sqlite").run(&p.write).await?;
                // With foreign keys off, as SQLite's way of changing a table's
                // constraints (build a new one, copy, drop, rename) needs when other
                // tables refer to it; the pragma is a no-op inside a transaction.
                let mut conn = p.write.acquire().await?;
                sqlx::query("PRAGMA foreign_keys = OFF")
                    .execute(&mut *conn)
                    .await?;
                let rebuilt = schema::drop_enrollments_unique(&mut conn).await;
                sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *conn)
                    .await?;
                rebuilt?;
            }
            Pool::Postgres(p) => sqlx::migrate!("migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => {
                p.stop_checkpoints.cancel();
                p.checkpoint.close().await;
                p.read.close().await;
                // A connection on its way back to its pool when `close` ran (sqlx
                // returns them from a task of their own) can land among the idle ones
                // afterwards and stay open; closing again closes it. A read-only
                // connection that closes after the writer leaves the WAL behind.
                let deadline = tokio::time::Instant::now() + StdDuration::from_secs(2);
                while p.read.size() + p.checkpoint.size() > 0
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(StdDuration::from_millis(1)).await;
                    p.read.close().await;
                    p.checkpoint.close().await;
                }
                // Last: as the file's last connection it copies the WAL back and
                // removes it.
                p.write.close().await;
            }
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// True when the database answers (for health checks).
    pub async fn ping(&self) -> bool {
        with_read_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.is_ok())
    }
}

/// Creates the SQLite file with mode 0600 if it does not exist yet, before SQLite
/// would create it with 0644 under the usual umask: it holds every contact and every
/// mail sent. The mode is set where the file is made rather than through a process-wide
/// umask, which would also apply to the project files `init` writes for a team to share.
fn create_private(file: &std::path::Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Mode 0600 on `file` if it exists.
fn set_private(file: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// A database URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    crate::config::mask_url(url)
}

// ---------------------------------------------------------------------------------------
// Contacts

fn parse_fields(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) | Err(_) => Err(Error::Corrupt {
            what: "contact fields",
            detail: text.chars().take(80).collect(),
        }),
    }
}

fn contact_from_row<R: Row>(row: &R) -> Result<Contact>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let fields: String = row.try_get("fields")?;
    Ok(Contact {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        fields: parse_fields(&fields)?,
        timezone: row.try_get("timezone")?,
        country: row.try_get("country")?,
        stage: row.try_get("stage")?,
        owner_mailbox: row.try_get("owner_mailbox")?,
        suppressed_reason: row.try_get("suppressed_reason")?,
    })
}

const CONTACT_COLUMNS: &str =
    "id, email, name, fields, timezone, country, stage, owner_mailbox, suppressed_reason";

impl Store {
    /// Inserts new contacts and merges fields into existing ones (a column present in
    /// the import overwrites; fields the import lacks are kept). One round trip per
    /// chunk for the lookup and one for the write.
    pub async fn upsert_contacts(
        &self,
        contacts: &[NewContact],
        now: DateTime<Utc>,
    ) -> Result<Vec<Upserted>> {
        let mut out = Vec::with_capacity(contacts.len());
        for chunk in contacts.chunks(CHUNK) {
            let existing: HashMap<String, Contact> = self
                .contacts_by_email(&chunk.iter().map(|c| c.email.clone()).collect::<Vec<_>>())
                .await?
                .into_iter()
                .map(|c| (c.email.clone(), c))
                .collect();
            let mut rows = Vec::with_capacity(chunk.len());
            for c in chunk {
                let (fields, name, tz, country, created, changed) = match existing.get(&c.email) {
                    Some(old) => {
                        let mut merged = old.fields.clone();
                        for (k, v) in &c.fields {
                            merged.insert(k.clone(), v.clone());
                        }
                        let name = c.name.clone().or_else(|| old.name.clone());
                        let tz = c.timezone.clone().or_else(|| old.timezone.clone());
                        let country = c.country.clone().or_else(|| old.country.clone());
                        let changed = merged != old.fields
                            || name != old.name
                            || tz != old.timezone
                            || country != old.country;
                        (merged, name, tz, country, false, changed)
                    }
                    None => (
                        c.fields.clone(),
                        c.name.clone(),
                        c.timezone.clone(),
                        c.country.clone(),
                        true,
                        true,
                    ),
                };
                rows.push((
                    c.email.clone(),
                    domain_of(&c.email),
                    name,
                    Value::Object(fields).to_string(),
                    tz,
                    country,
                    created,
                    changed,
                ));
            }
            let to_write: Vec<_> = rows.iter().filter(|r| r.7).collect();
            // Ids: of rows left alone from the look-up above, of rows written from the
            // INSERT's RETURNING (no second look-up per chunk).
            let mut ids: HashMap<String, i64> =
                existing.iter().map(|(e, c)| (e.clone(), c.id)).collect();
            if !to_write.is_empty() {
                with_pool!(self, p => {
                    let mut qb = QueryBuilder::new(
                        "INSERT INTO contacts (email, domain, name, fields, timezone, country, created_at, updated_at) ",
                    );
                    qb.push_values(to_write.iter(), |mut b, r| {
                        b.push_bind(&r.0).push_bind(&r.1).push_bind(&r.2).push_bind(&r.3)
                            .push_bind(&r.4).push_bind(&r.5).push_bind(ms(now)).push_bind(ms(now));
                    });
                    qb.push(
                        " ON CONFLICT (email) DO UPDATE SET name = excluded.name, fields = excluded.fields, \
                         timezone = excluded.timezone, country = excluded.country, updated_at = excluded.updated_at \
                         RETURNING id, email",
                    );
                    for r in qb.build().fetch_all(p).await? {
                        ids.insert(r.try_get("email")?, r.try_get("id")?);
                    }
                });
            }
            for r in rows {
                let id = *ids.get(&r.0).ok_or(Error::Corrupt {
                    what: "contact",
                    detail: format!("{} vanished", r.0),
                })?;
                out.push(Upserted {
                    id,
                    email: r.0,
                    created: r.6,
                    changed: r.7,
                });
            }
        }
        Ok(out)
    }

    pub async fn contacts_by_email(&self, emails: &[String]) -> Result<Vec<Contact>> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        // In chunks: the addresses may come from a message (a bounce can list
        // thousands), and one `IN (…)` over SQLite's variable limit fails.
        let mut out = Vec::new();
        for chunk in emails.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE email IN ("));
                let mut sep = qb.separated(", ");
                for e in chunk {
                    sep.push_bind(e);
                }
                qb.push(")");
                for row in qb.build().fetch_all(p).await? {
                    out.push(contact_from_row(&row)?);
                }
            });
        }
        Ok(out)
    }

    pub async fn contact(&self, email: &str) -> Result<Option<Contact>> {
        Ok(self
            .contacts_by_email(&[email.to_string()])
            .await?
            .into_iter()
            .next())
    }

    /// Field names (and how many contacts have a non-empty value) across stored contacts.
    pub async fn contact_count(&self) -> Result<i64> {
        with_read_pool!(self, p => Ok(sqlx::query_scalar("SELECT count(*) FROM contacts").fetch_one(p).await?))
    }
}

pub fn domain_of(email: &str) -> String {
    email
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Enrollments

const ENROLLMENT_COLUMNS: &str = "e.id, e.contact_id, c.email, e.sequence, e.mailbox, e.state, e.reason, \
     e.cause, e.cause_detail, \
     e.step_index, e.step_id, e.next_run_at, e.paused_until, e.thread_message_id, e.thread_subject, \
     e.last_sent_at, e.attempts";

fn enrollment_from_row<R: Row>(row: &R) -> Result<Enrollment>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let opt_time = |v: Option<i64>| v.map(from_ms);
    Ok(Enrollment {
        id: row.try_get("id")?,
        contact_id: row.try_get("contact_id")?,
        email: row.try_get("email")?,
        sequence: row.try_get("sequence")?,
        mailbox: row.try_get("mailbox")?,
        state: stored_state(row.try_get("state")?)?,
        cause: Cause::from_stored(
            row.try_get::<Option<String>, _>("cause")?.as_deref(),
            row.try_get("cause_detail")?,
            row.try_get("reason")?,
        ),
        step_index: row.try_get("step_index")?,
        step_id: row.try_get("step_id")?,
        next_run_at: opt_time(row.try_get("next_run_at")?),
        paused_until: opt_time(row.try_get("paused_until")?),
        thread_message_id: row.try_get("thread_message_id")?,
        thread_subject: row.try_get("thread_subject")?,
        last_sent_at: opt_time(row.try_get("last_sent_at")?),
        attempts: row.try_get("attempts")?,
    })
}

impl Store {
    /// Live enrollments per mailbox in a sequence, to give new contacts the least busy one.
    pub async fn mailbox_loads(&self, sequence: &str) -> Result<HashMap<String, i64>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT mailbox, count(*) AS n FROM enrollments WHERE sequence = $1 AND state IN ('active', 'paused', 'held') GROUP BY mailbox",
            )
            .bind(sequence)
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| Ok((r.try_get("mailbox")?, r.try_get("n")?))).collect()
        })
    }

    /// Enrolls contacts; a contact already in the sequence (in any state) is left alone.
    /// Returns the (enrollment id, contact id) of those newly enrolled. The contact's
    /// owner becomes the mailbox if it had none, so replies stay with one rep.
    pub async fn enroll(
        &self,
        items: &[NewEnrollment],
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, i64)>> {
        self.enroll_with(items, false, now).await
    }

    /// [`Store::enroll`], or with `again`, enrolls contacts whose enrollment in the
    /// sequence stopped or finished once more: then only a live enrollment there
    /// (active, paused, held) keeps a contact out, and the ended one stays as history.
    pub async fn enroll_with(
        &self,
        items: &[NewEnrollment],
        again: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, i64)>> {
        let mut created = Vec::new();
        for chunk in items.chunks(CHUNK) {
            with_pool!(self, p => {
                let mut tx = p.begin_write().await?;
                // Never twice without `again`: looked at inside the write transaction,
                // so that a contact's enrollment ending meanwhile cannot slip through.
                let mut ever: Vec<(i64, String)> = Vec::new();
                if !again {
                    let mut qb = QueryBuilder::new("SELECT contact_id, sequence FROM enrollments WHERE contact_id IN (");
                    let mut sep = qb.separated(", ");
                    for e in chunk {
                        sep.push_bind(e.contact_id);
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&mut *tx).await? {
                        ever.push((r.try_get("contact_id")?, r.try_get("sequence")?));
                    }
                }
                let chunk: Vec<&NewEnrollment> = chunk
                    .iter()
                    .filter(|e| !ever.iter().any(|(c, s)| *c == e.contact_id && *s == e.sequence))
                    .collect();
                if chunk.is_empty() {
                    tx.commit().await?;
                    continue;
                }
                let mut qb = QueryBuilder::new(
                    "INSERT INTO enrollments (contact_id, sequence, mailbox, state, step_index, step_id, priority, next_run_at, created_at, updated_at) ",
                );
                qb.push_values(chunk.iter(), |mut b, e| {
                    b.push_bind(e.contact_id).push_bind(&e.sequence).push_bind(&e.mailbox).push_bind("active")
                        .push_bind(0i64).push_bind(&e.step_id).push_bind(priority(0)).push_bind(ms(e.next_run_at))
                        .push_bind(ms(now)).push_bind(ms(now));
                });
                // Live enrollments are unique per contact and sequence (a partial index).
                qb.push(" ON CONFLICT (contact_id, sequence) WHERE state IN ('active', 'paused', 'held') DO NOTHING RETURNING id, contact_id");
                let rows = qb.build().fetch_all(&mut *tx).await?;
                let mut new_ids = Vec::new();
                for r in &rows {
                    new_ids.push((r.try_get::<i64, _>("id")?, r.try_get::<i64, _>("contact_id")?));
                }
                if !new_ids.is_empty() {
                    let mut qb = QueryBuilder::new("INSERT INTO events (at, contact_id, enrollment_id, kind, data) ");
                    qb.push_values(new_ids.iter(), |mut b, (eid, cid)| {
                        let seq = chunk.iter().find(|e| e.contact_id == *cid).map(|e| e.sequence.as_str()).unwrap_or("");
                        b.push_bind(ms(now)).push_bind(*cid).push_bind(*eid).push_bind("enrolled")
                            .push_bind(serde_json::json!({ "sequence": seq }).to_string());
                    });
                    qb.build().execute(&mut *tx).await?;
                    // One statement per chunk, not one per contact (a 100,000-row
                    // import spent most of its time here).
                    let owners: Vec<&&NewEnrollment> = chunk
                        .iter()
                        .filter(|e| new_ids.iter().any(|(_, c)| *c == e.contact_id))
                        .collect();
                    let mut qb = QueryBuilder::new("UPDATE contacts SET owner_mailbox = v.column2 FROM (");
                    qb.push_values(owners.iter(), |mut b, e| {
                        b.push_bind(e.contact_id).push_bind(&e.mailbox);
                    });
                    qb.push(") AS v WHERE contacts.id = v.column1 AND contacts.owner_mailbox IS NULL");
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                created.extend(new_ids);
            });
        }
        Ok(created)
    }

    /// A contact's latest enrollment in a sequence (earlier ones, ended, are history).
    pub async fn enrollment(&self, sequence: &str, email: &str) -> Result<Option<Enrollment>> {
        with_read_pool!(self, p => {
            let row = sqlx::query(&format!(
                "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN contacts c ON c.id = e.contact_id WHERE e.sequence = $1 AND c.email = $2 ORDER BY e.id DESC LIMIT 1"
            ))
            .bind(sequence)
            .bind(email)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(enrollment_from_row).transpose()
        })
    }

    pub async fn enrollments_by_id(&self, ids: &[i64]) -> Result<Vec<Enrollment>> {
        self.enrollments_where("e.id", ids).await
    }

    /// Enrollments whose `column` is one of `ids`, by id; in chunks, since the ids may
    /// come from a message.
    pub(crate) async fn enrollments_where(
        &self,
        column: &'static str,
        ids: &[i64],
    ) -> Result<Vec<Enrollment>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN contacts c ON c.id = e.contact_id WHERE {column} IN ("
                ));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                for row in qb.build().fetch_all(p).await? {
                    out.push(enrollment_from_row(&row)?);
                }
            });
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Applies enrollment changes as the engine computed them, and appends their events,
    /// in one transaction. Returns the enrollments changed: one that left the state its
    /// change was computed from is left alone.
    pub async fn apply(
        &self,
        updates: &[EnrollmentUpdate],
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let mut applied = Vec::new();
            update_enrollments!(tx, updates, now, None, Some(&mut applied));
            let events = events_of_applied(events, updates, &applied);
            insert_events!(tx, events, now);
            tx.commit().await?;
            Ok(applied)
        })
    }
}

mod history;
mod inbound;
mod liveness;
mod ops;
#[macro_use]
mod rules;
mod schema;
mod send;
mod status;
mod track;
mod webhooks;
pub use ops::{sqlite_integrity, OpsGauges};

pub use history::Existing;
pub use inbound::{Checkpoint, InboundRecord, SetAside, WatchState};
pub use liveness::{check_nodes_dir, Liveness, WireJournal};
pub use rules::EventPage;
pub use send::{
    Begin, Begun, ClaimCursor, Claimed, Finish, InDoubt, MessageUpdate, Recovered, Wire,
};
pub use status::{Count, Funnel, LinkClicks, Status};
pub use track::{HitEvent, TrackedMessage, Unsubscribed};
pub use webhooks::{Delivery, DeliveryOutcome, NewDelivery, WebhookQueue};

// ---------------------------------------------------------------------------------------
// Lifecycle and suppression

impl Store {
    /// Whether an address (or its whole domain) must never be mailed.
    pub async fn is_suppressed(&self, email: &str) -> Result<bool> {
        let domain = format!("@{}", domain_of(email));
        with_read_pool!(self, p => {
            let n: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM suppressions WHERE pattern = $1 OR pattern = $2) + \
                 (SELECT count(*) FROM contacts WHERE email = $1 AND suppressed_at IS NOT NULL)",
            )
            .bind(email)
            .bind(&domain)
            .fetch_one(p)
            .await?;
            Ok(n > 0)
        })
    }
}

impl Store {
    /// A contact's history, oldest first: (when, kind, data). Opens and clicks carry
    /// the clicked URL (`url`) and, for machine hits, the reason (`machine`) in data.
    pub async fn timeline(&self, contact_id: i64) -> Result<Vec<(DateTime<Utc>, String, Value)>> {
        with_read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT ev.at, ev.kind, ev.data, ev.machine, l.url FROM events ev \
                 LEFT JOIN links l ON l.message_id = ev.message_id AND l.idx = ev.link \
                 WHERE ev.contact_id = $1 ORDER BY ev.at, ev.id",
            )
                .bind(contact_id)
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    let data: String = r.try_get("data")?;
                    let mut v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut v {
                        if let Some(url) = r.try_get::<Option<String>, _>("url")? {
                            m.insert("url".into(), Value::String(url));
                        }
                        if let Some(why) = r.try_get::<Option<String>, _>("machine")? {
                            m.insert("machine".into(), Value::String(why));
                        }
                    }
                    Ok((from_ms(r.try_get("at")?), r.try_get("kind")?, v))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://followup:secret@127.0.0.1/db"),
            "postgres://followup:***@127.0.0.1/db"
        );
        assert_eq!(redact("sqlite://followup.db"), "sqlite://followup.db");
    }
}
