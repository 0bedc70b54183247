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
