//! Which daemons are alive. A daemon's claims are leases so that another daemon can
//! take them over when it dies; waiting out a lease (minutes) after a crash, though,
//! holds up every contact the dead daemon had claimed. So each daemon also holds a
//! lock for as long as its process lives, that the operating system or the database
//! drops the moment it dies:
//!
//! - on PostgreSQL a session advisory lock, on a connection of its own (a dead
//!   daemon's connection closes with it, and its locks go);
//! - on SQLite an exclusive `flock` on a file named after it, in a folder beside the
//!   database (`FILE.nodes/`), released by the kernel when the process ends.
//!
//! Another daemon that can take that lock knows the owner is dead, and takes over its
//! claims at once ([`Store::take_over`]). A live daemon's lock cannot be taken, so its
//! claims are never touched; an owner with no lock to probe (a daemon of an older
//! version) is left to its leases.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration as StdDuration;

use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::warn;

use super::{Pool, Result, Store};

/// The first key of followup's advisory locks ("foll"), so that they cannot clash with
/// another application's on the same server.
const PG_NAMESPACE: i32 = 0x666f_6c6c;

/// How often the PostgreSQL lock's connection is checked (and, if lost, made again).
const PG_CHECK: StdDuration = StdDuration::from_secs(5);

/// The lock that says this daemon is alive; held until dropped.
pub struct Liveness {
    _inner: Inner,
}

enum Inner {
    /// An in-memory database: no other process can share it.
    None,
    Sqlite {
        _file: File,
    },
    Postgres {
        _stop: DropGuard,
    },
}

/// The advisory lock key of an owner.
fn pg_key(owner: &str) -> i32 {
    let digest = Sha256::digest(owner.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The lock file of an owner. Owners are `host:pid:random`; anything else in a name
/// is replaced, so an owner cannot name a path outside the folder.
fn lock_path(dir: &Path, owner: &str) -> PathBuf {
    let name: String = owner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{name}.lock"))
}

/// `FILE.nodes` for a SQLite database file; None for an in-memory one.
fn nodes_dir_of(file: &Path) -> Option<PathBuf> {
    if file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:") {
        return None;
    }
    let mut dir = file.to_path_buf().into_os_string();
    dir.push(".nodes");
    Some(PathBuf::from(dir))
}

/// For `followup check`: whether a daemon on the SQLite database `url` can keep its
/// lock file and wire journal in the folder beside it (made here if missing, as the
/// daemon would). Nothing to check for PostgreSQL or an in-memory database.
pub fn check_nodes_dir(url: &str) -> Result<()> {
    let Ok(opts) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        return Ok(());
    };
    let Some(dir) = nodes_dir_of(opts.get_filename()) else {
        return Ok(());
    };
    create_nodes_dir(&dir)?;
    let probe = dir.join(format!(".check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|source| super::Error::File {
        action: "write a file in the folder of daemons' lock files",
        path: dir.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl Store {
    /// The folder of SQLite lock files, or None for an in-memory database.
    fn lock_dir(&self) -> Option<PathBuf> {
        let Pool::Sqlite(p) = &self.pool else {
            return None;
        };
        nodes_dir_of(p.write.connect_options().get_filename())
    }

    /// Takes this daemon's liveness lock; call before claiming anything.
    pub async fn hold_liveness(&self, owner: &str) -> Result<Liveness> {
        let inner = match &self.pool {
            Pool::Sqlite(_) => match self.lock_dir() {
                None => Inner::None,
                Some(dir) => Inner::Sqlite {
                    _file: lock_file(&dir, owner)?,
                },
            },
            Pool::Postgres(pool) => {
                let opts = (*pool.connect_options()).clone();
                let key = pg_key(owner);
                let conn = pg_lock(&opts, key).await?;
                let stop = CancellationToken::new();
                tokio::spawn(keep_pg_lock(opts, key, conn, stop.clone()));
                Inner::Postgres {
                    _stop: stop.drop_guard(),
                }
            }
        };
        Ok(Liveness { _inner: inner })
    }

    /// Owners holding claims, other than `me`, whose daemon is dead.
    pub async fn dead_owners(&self, me: &str) -> Result<Vec<String>> {
        let owners: Vec<String> = with_read_pool!(self, p => {
            sqlx::query_scalar("SELECT DISTINCT owner FROM claims WHERE owner <> $1")
                .bind(me)
                .fetch_all(p)
                .await?
        });
        if owners.is_empty() {
            return Ok(owners);
        }
        let mut dead = Vec::new();
        match &self.pool {
            Pool::Sqlite(_) => {
                let Some(dir) = self.lock_dir() else {
                    return Ok(dead);
                };
                for owner in owners {
                    let path = lock_path(&dir, &owner);
                    // No file: a daemon that keeps no lock (an older version): its leases
                    // decide.
                    let Ok(file) = File::open(&path) else {
                        continue;
                    };
                    match file.try_lock() {
                        Ok(()) => {
                            let _ = std::fs::remove_file(&path);
                            dead.push(owner);
                        }
                        Err(TryLockError::WouldBlock) => {}
                        Err(TryLockError::Error(e)) => {
                            warn!(path = %path.display(), error = %e, "cannot probe a daemon's lock file");
                        }
                    }
                }
            }
            Pool::Postgres(pool) => {
                // Taken and given back on one connection: advisory locks belong to the
                // session that took them.
                let mut conn = pool.acquire().await?;
                for owner in owners {
                    let key = pg_key(&owner);
                    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                        .bind(PG_NAMESPACE)
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await?;
                    if got {
                        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                            .bind(PG_NAMESPACE)
                            .bind(key)
                            .execute(&mut *conn)
                            .await?;
                        dead.push(owner);
                    }
                }
            }
        }
        Ok(dead)
    }
}

/// Creates and locks an owner's file. It is locked under a temporary name and then
/// renamed into place, so that a probe never finds it unlocked while its daemon lives.
fn lock_file(dir: &Path, owner: &str) -> Result<File> {
    create_nodes_dir(dir)?;
    let path = lock_path(dir, owner);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let failed = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| super::Error::File {
            action,
            path,
            source,
        }
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)
        .map_err(failed("create the liveness lock file", &tmp))?;
    file.lock()
        .map_err(failed("lock the liveness lock file", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(failed("rename the liveness lock file to", &path))?;
    Ok(file)
}

impl Store {
    /// On SQLite, an exclusive lock that one process at a time holds while it migrates
    /// the file: sqlx's SQLite migrator takes none, so a `status` run while a daemon
    /// starts on a new database could apply the same migration twice and fail ("table
    /// already exists"). The other waits, then finds nothing left to do. PostgreSQL's
    /// migrator takes an advisory lock itself.
    pub(super) async fn migration_lock(&self) -> Result<Option<File>> {
        let Some(dir) = self.lock_dir() else {
            return Ok(None);
        };
        create_nodes_dir(&dir)?;
        let path = dir.join("migrations.lock");
        let locked = tokio::task::spawn_blocking(move || {
            let failed = |action| {
                let path = path.clone();
                move |source| super::Error::File {
                    action,
                    path,
                    source,
                }
            };
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(failed("create the migrations lock file"))?;
            file.lock()
                .map_err(failed("lock the migrations lock file"))?;
            Ok(file)
        })
        .await;
        match locked {
            Ok(r) => r.map(Some),
            Err(e) => Err(super::Error::File {
                action: "lock the migrations lock file",
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            }),
        }
    }
}

/// Makes the folder of lock files and journals beside a SQLite database.
fn create_nodes_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| super::Error::File {
        action: "create the folder of daemons' lock files",
        path: dir.to_path_buf(),
        source,
    })
}

async fn pg_lock(opts: &sqlx::postgres::PgConnectOptions, key: i32) -> Result<PgConnection> {
    let mut conn = opts.connect().await?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(PG_NAMESPACE)
        .bind(key)
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Holds the PostgreSQL lock's connection; if it is lost (a server restart), makes it
/// again. Meanwhile another daemon may take this one's claims for those of a dead one:
/// that costs no duplicate, since every send re-checks its claim before it begins.
async fn keep_pg_lock(
    opts: sqlx::postgres::PgConnectOptions,
    key: i32,
    mut conn: PgConnection,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(PG_CHECK) => {}
        }
        if conn.ping().await.is_ok() {
            continue;
        }
        warn!("lost the database connection that shows this daemon is alive; making it again");
        match pg_lock(&opts, key).await {
            Ok(c) => conn = c,
            Err(e) => warn!(error = %e, "cannot take the liveness lock again; retrying"),
        }
    }
    let _ = conn.close().await;
}

/// Where a daemon on SQLite records its wire marks ([`super::Wire`]): a journal file
/// beside its lock file, appended to before each end of data. On SQLite every
/// statement waits for the one write connection, which the group commits hold most
/// of the time, so a mark in the database would hold each connection's next message
/// up by a commit (measured: a third of the send rate); an append to a file costs a
/// few microseconds and survives the process as the database does. Only a daemon that
/// took over from a dead one reads it, on the same host, since every daemon of one
/// SQLite file runs there. On PostgreSQL the marks go to the `wire` column.
pub struct WireJournal {
    file: File,
    path: PathBuf,
    /// Bytes in the current file.
    written: u64,
    /// Past this size the file is started afresh ([`JOURNAL_ROTATE`]).
    rotate_at: u64,
}

/// A journal is started afresh past this size (the one before kept as `.old`): the
/// marks of a message are written within its send, so the last two files hold every
/// mark of what is still in flight.
const JOURNAL_ROTATE: u64 = 4 << 20;

fn journal_path(dir: &Path, owner: &str) -> PathBuf {
    lock_path(dir, owner).with_extension("wire")
}

fn old_journal_path(dir: &Path, owner: &str) -> PathBuf {
    lock_path(dir, owner).with_extension("wire.old")
}

impl WireJournal {
    /// Opens (or creates) the journal at `path` for appending.
    fn open(path: PathBuf) -> Result<WireJournal> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| super::Error::File {
                action: "open the wire journal",
                path: path.clone(),
                source,
            })?;
        // A journal reopened by the same owner goes on counting from its size.
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(WireJournal {
            file,
            path,
            written,
            rotate_at: JOURNAL_ROTATE,
        })
    }

    /// Rotates past `bytes` instead of [`JOURNAL_ROTATE`] (for tests).
    pub fn rotate_at(mut self, bytes: u64) -> WireJournal {
        self.rotate_at = bytes;
        self
    }

    /// The file the marks go to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends marks, one line each (`L 42`, `A 42`, `R 42`), in one write.
    pub fn append(&mut self, marks: &[(i64, super::Wire)]) -> Result<()> {
        use std::io::Write;
        if self.written > self.rotate_at {
            let mut old = self.path.clone().into_os_string();
            old.push(".old");
            std::fs::rename(&self.path, PathBuf::from(old)).map_err(|source| {
                super::Error::File {
                    action: "rotate the wire journal",
                    path: self.path.clone(),
                    source,
                }
            })?;
            *self = WireJournal::open(self.path.clone())?.rotate_at(self.rotate_at);
        }
        let mut text = String::with_capacity(marks.len() * 16);
        for (id, w) in marks {
            let tag = match w {
                super::Wire::Left => 'L',
                super::Wire::Accepted => 'A',
                super::Wire::Refused => 'R',
            };
            text.push_str(&format!("{tag} {id}\n"));
        }
        self.file
            .write_all(text.as_bytes())
            .map_err(|source| super::Error::File {
                action: "append to the wire journal",
                path: self.path.clone(),
                source,
            })?;
        self.written += text.len() as u64;
        Ok(())
    }
}

/// The last mark of each message in a dead daemon's journal (both files).
fn read_journal(dir: &Path, owner: &str) -> std::collections::HashMap<i64, super::Wire> {
    let mut out = std::collections::HashMap::new();
    for path in [old_journal_path(dir, owner), journal_path(dir, owner)] {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some(tag), Some(id)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(id) = id.parse::<i64>() else { continue };
            let w = match tag {
                "L" => super::Wire::Left,
                "A" => super::Wire::Accepted,
                "R" => super::Wire::Refused,
                _ => continue,
            };
            out.insert(id, w);
        }
    }
    out
}

impl Store {
    /// This daemon's wire journal on SQLite; None on PostgreSQL (marks go to the
    /// database) or for an in-memory database.
    pub fn wire_journal(&self, owner: &str) -> Result<Option<WireJournal>> {
        let Some(dir) = self.lock_dir() else {
            return Ok(None);
        };
        create_nodes_dir(&dir)?;
        WireJournal::open(journal_path(&dir, owner)).map(Some)
    }

    /// The marks dead daemons left in their journals (SQLite), to be written into the
    /// `wire` column before their work is taken over.
    pub(crate) fn dead_journals(&self, dead: &[String]) -> Vec<(i64, super::Wire)> {
        let Some(dir) = self.lock_dir() else {
            return Vec::new();
        };
        dead.iter()
            .flat_map(|owner| read_journal(&dir, owner))
            .collect()
    }

    /// Removes dead daemons' journals once their work is taken over.
    pub(crate) fn remove_journals(&self, dead: &[String]) {
        let Some(dir) = self.lock_dir() else { return };
        for owner in dead {
            let _ = std::fs::remove_file(journal_path(&dir, owner));
            let _ = std::fs::remove_file(old_journal_path(&dir, owner));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_stay_in_their_folder() {
        let dir = Path::new("/var/lib/followup/db.sqlite.nodes");
        assert_eq!(
            lock_path(dir, "../../etc/passwd"),
            dir.join(".._.._etc_passwd.lock")
        );
        assert_eq!(
            lock_path(dir, "vm:22472:62a92ded"),
            dir.join("vm_22472_62a92ded.lock")
        );
    }

    #[test]
    fn a_journal_gives_each_messages_last_mark_across_a_rotation() {
        use super::super::Wire;
        let tmp = tempfile::tempdir().expect("temp dir");
        // Rotated past 10 bytes: the third append starts a new file.
        let mut j = WireJournal::open(journal_path(tmp.path(), "a:1:1"))
            .expect("open")
            .rotate_at(10);
        j.append(&[(1, Wire::Left)]).expect("append");
        j.append(&[(1, Wire::Accepted), (2, Wire::Left)])
            .expect("append");
        assert!(!old_journal_path(tmp.path(), "a:1:1").exists());
        j.append(&[(2, Wire::Refused), (3, Wire::Left)])
            .expect("append");
        let marks = read_journal(tmp.path(), "a:1:1");
        assert_eq!(marks.get(&1), Some(&Wire::Accepted));
        assert_eq!(marks.get(&2), Some(&Wire::Refused));
        assert_eq!(marks.get(&3), Some(&Wire::Left));
        assert!(old_journal_path(tmp.path(), "a:1:1").exists());
    }

    #[test]
    fn a_held_lock_file_is_seen_as_alive_and_a_released_one_as_dead() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let file = lock_file(tmp.path(), "a:1:1").expect("lock");
        let probe = File::open(lock_path(tmp.path(), "a:1:1")).expect("open");
        assert!(matches!(probe.try_lock(), Err(TryLockError::WouldBlock)));
        drop(file);
        assert!(probe.try_lock().is_ok());
    }
}
