//! `followup backup FILE`, `followup restore FILE` and `followup migrate --check`.
//!
//! A backup of a SQLite database is taken with `VACUUM INTO`, which reads one snapshot
//! while the daemon goes on writing: the copy is consistent, and compact. PostgreSQL
//! has its own tools (pg_dump, or the server's base backups), which followup does not
//! redo. A restore replaces the database file with a checked copy of the backup while no
//! daemon runs, keeping the file it replaces.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use crate::store::Store;

/// The file of a `sqlite://` database URL; None for PostgreSQL or in-memory databases.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or(rest);
    (!file.is_empty() && !file.contains(":memory:")).then(|| PathBuf::from(file))
}

/// Makes `file` empty with mode 0600 before SQLite writes the backup into it: it holds
/// every contact, like the database itself.
fn create_private(file: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(file).map(drop)
}

pub async fn backup(database: &str, file: &Path) -> anyhow::Result<ExitCode> {
    if sqlite_file(database).is_none() {
        eprintln!(
            "followup: the database is PostgreSQL: back it up with its own tools, e.g.\n  pg_dump --format=custom --file=followup.dump 'postgres://…/followup'\nand restore with pg_restore --clean --dbname=… followup.dump (README, \"Backup and restore\")"
        );
        return Ok(ExitCode::from(2));
    }
    if file.exists() {
        bail!(
            "{} exists; a backup never overwrites a file",
            file.display()
        );
    }
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    create_private(&file).with_context(|| format!("cannot create {}", file.display()))?;
    let store = Store::connect(database)
        .await
        .context("opening the database")?;
    let r = store.backup_into(&file).await;
    store.close().await;
    if let Err(e) = r {
        let _ = std::fs::remove_file(&file);
        return Err(e).context("backup failed");
    }
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    println!("backed up to {} ({size} bytes)", file.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(database: &str, config: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let Some(target) = sqlite_file(database) else {
        eprintln!("followup: the database is PostgreSQL: restore with pg_restore (README, \"Backup and restore\")");
        return Ok(ExitCode::from(2));
    };
    // A daemon writing to the file would be writing to the one replaced.
    let pid_path = crate::ops::pidfile::path(config);
    if let Some(pid) = crate::ops::pidfile::running(&pid_path) {
        bail!(
            "a followup daemon (pid {pid}) is running on this project; stop it first (systemctl stop followup)"
        );
    }
    // The backup must be a whole, sound SQLite database before anything is replaced.
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    match crate::store::sqlite_integrity(file).await {
        Ok(report) if report == "ok" => {}
        Ok(report) => bail!("the backup failed SQLite's integrity check: {report}"),
        Err(e) => return Err(e).context("the backup is not a followup database"),
    }
    let staged = target.with_extension("restoring");
    let _ = std::fs::remove_file(&staged);
    create_private(&staged).with_context(|| format!("cannot create {}", staged.display()))?;
    std::fs::copy(file, &staged).with_context(|| format!("cannot copy to {}", staged.display()))?;
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", staged.display()))?;
    let kept = target.with_extension(format!(
        "before-restore-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    if target.exists() {
        std::fs::rename(&target, &kept)
            .with_context(|| format!("cannot move {} aside", target.display()))?;
    }
    // The old file's write-ahead log belongs to it, not to the restored one.
    for suffix in ["-wal", "-shm"] {
        let mut side = target.clone().into_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    std::fs::rename(&staged, &target)
        .with_context(|| format!("cannot move the restored copy to {}", target.display()))?;
    println!(
        "restored {} from {}; the replaced database is kept as {}",
        target.display(),
        file.display(),
        kept.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `followup migrate --check`: what `migrate` (or `run`) would apply; changes nothing.
pub async fn migrate_check(database: &str) -> anyhow::Result<ExitCode> {
    let store = Store::connect(database)
        .await
        .context("opening the database")?;
    let pending = store.pending_migrations().await;
    store.close().await;
    let pending = pending.context("reading the applied migrations")?;
    if pending.is_empty() {
        println!("database is up to date");
    } else {
        println!("{} migration(s) would run:", pending.len());
        for (version, description) in pending {
            println!("  {version:04} {description}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
