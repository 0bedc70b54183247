//! SQLite schema changes that its `ALTER TABLE` cannot make and a migration file cannot
//! write without naming every column (which other migrations may add meanwhile).

use sqlx::{Connection, SqliteConnection};

use super::Result;

/// The table constraint that kept a contact out of a sequence it had ever been in;
/// `enrollments_live` (migration 0012) now keeps only live enrollments unique.
const OLD_UNIQUE: &str = "UNIQUE (contact_id, sequence)";

/// Rebuilds `enrollments` without [`OLD_UNIQUE`], keeping its columns, rows, ids and
/// indexes: SQLite's way of dropping a table constraint (a new table, copy, drop,
/// rename). Does nothing once done. `conn` must have foreign keys off, so that dropping
/// the old table leaves the messages that refer to it alone.
pub(super) async fn drop_enrollments_unique(conn: &mut SqliteConnection) -> Result<()> {
    let table: Option<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'enrollments'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(table) = table else { return Ok(()) };
    let Some(at) = table.find(OLD_UNIQUE) else {
        return Ok(());
    };
    let corrupt = |detail: &str| super::Error::Corrupt {
        what: "enrollments table definition",
        detail: detail.to_string(),
    };
    // `, UNIQUE (...)` goes, with the comma before it; the columns stay as they are.
    let head = table[..at]
        .trim_end()
        .strip_suffix(',')
        .ok_or_else(|| corrupt("no comma before its UNIQUE constraint"))?;
    let open = head.find('(').ok_or_else(|| corrupt("no column list"))?;
    let create = format!(
        "CREATE TABLE enrollments_new {}{}",
        &head[open..],
        &table[at + OLD_UNIQUE.len()..]
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'enrollments' AND sql IS NOT NULL",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(&create).execute(&mut *tx).await?;
    sqlx::query("INSERT INTO enrollments_new SELECT * FROM enrollments")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DROP TABLE enrollments")
        .execute(&mut *tx)
        .await?;
    sqlx::query("ALTER TABLE enrollments_new RENAME TO enrollments")
        .execute(&mut *tx)
        .await?;
    for index in &indexes {
        sqlx::query(index).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
