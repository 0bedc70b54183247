//! Read-only figures for the admin listener's /metrics and /readyz, and the online
//! backup of a SQLite database.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{from_ms, ms, Pool, Result, Store};

/// What /metrics shows beyond the tracking endpoint's own figures.
#[derive(Debug, Default)]
pub struct OpsGauges {
    /// (mailbox, status, messages).
    pub messages: Vec<(String, String, i64)>,
    /// The longest-waiting active enrollment that is due, if any.
    pub oldest_due: Option<DateTime<Utc>>,
    /// Enrollments claimed by a daemon now.
    pub claims: i64,
}

impl Store {
    pub async fn ops_gauges(&self, now: DateTime<Utc>) -> Result<OpsGauges> {
        with_read_pool!(self, p => {
            let rows = sqlx::query("SELECT mailbox, status, count(*) AS n FROM messages GROUP BY mailbox, status ORDER BY mailbox, status")
                .fetch_all(p)
                .await?;
            let messages = rows
                .iter()
                .map(|r| Ok((r.try_get("mailbox")?, r.try_get("status")?, r.try_get("n")?)))
                .collect::<Result<Vec<_>>>()?;
            let oldest: Option<i64> = sqlx::query_scalar("SELECT min(next_run_at) FROM enrollments WHERE state = 'active' AND next_run_at <= $1")
                .bind(ms(now))
                .fetch_one(p)
                .await?;
            let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM claims").fetch_one(p).await?;
            Ok(OpsGauges {
                messages,
                oldest_due: oldest.map(from_ms),
                claims,
            })
        })
    }

    /// SQLite: a consistent copy of the database in `file` (which must not exist), taken
    /// with `VACUUM INTO` while the daemon goes on writing: it reads one snapshot.
    /// PostgreSQL: None (use pg_dump).
    pub async fn backup_into(&self, file: &std::path::Path) -> Result<Option<()>> {
        match &self.pool {
            Pool::Sqlite(pools) => {
                sqlx::query("VACUUM INTO $1")
                    .bind(file.to_string_lossy().to_string())
                    .execute(&pools.read)
                    .await?;
                Ok(Some(()))
            }
            Pool::Postgres(_) => Ok(None),
        }
    }
}

impl Store {
    /// Migrations this binary carries that the database has not applied: (version,
    /// description), oldest first.
    pub async fn pending_migrations(&self) -> Result<Vec<(i64, String)>> {
        let (migrator, applied): (sqlx::migrate::Migrator, Vec<i64>) = match &self.pool {
            Pool::Sqlite(p) => {
                let exists: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(&p.read)
                .await?;
                let applied = if exists > 0 {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(&p.read)
                        .await?
                } else {
                    Vec::new()
                };
                (sqlx::migrate!("migrations/sqlite"), applied)
            }
            Pool::Postgres(p) => {
                let exists: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                        .fetch_one(p)
                        .await?;
                let applied = if exists {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(p)
                        .await?
                } else {
                    Vec::new()
                };
                (sqlx::migrate!("migrations/postgres"), applied)
            }
        };
        Ok(migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect())
    }
}

/// SQLite's `PRAGMA integrity_check` of a database file ("ok" when sound), opened read
/// only, after checking that it is a followup database at all.
pub async fn sqlite_integrity(file: &std::path::Path) -> Result<String> {
    use sqlx::Connection as _;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut c)
        .await?;
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut c)
        .await?;
    c.close().await?;
    Ok(rows.join("; "))
}
