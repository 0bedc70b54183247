//! The store's claim order and leases, against SQLite and PostgreSQL.

use chrono::{DateTime, Duration, Utc};
use followup::model::{EnrollmentUpdate, NewContact, NewEnrollment};
use followup::store::Store;

use crate::support::{database_url, Db};

async fn setup(db: Db, dir: &std::path::Path, n: usize) -> (Store, Vec<i64>) {
    let store = Store::open(&database_url(db, dir)).await.unwrap();
    let contacts: Vec<NewContact> = (0..n)
        .map(|i| NewContact {
            email: format!("c{i}@prospect.example"),
            name: None,
            fields: Default::default(),
            timezone: None,
            country: None,
        })
        .collect();
    let up = store.upsert_contacts(&contacts, Utc::now()).await.unwrap();
    let ids = up.iter().map(|u| u.id).collect();
    (store, ids)
}

/// Changes one enrollment as the engine would, through `Store::apply`.
async fn change(store: &Store, id: i64, now: DateTime<Utc>, f: impl FnOnce(&mut EnrollmentUpdate)) {
    let e = store.enrollments_by_id(&[id]).await.unwrap().remove(0);
    let mut u = e.unchanged();
    f(&mut u);
    store.apply(&[u], &[], now).await.unwrap();
}

/// The enrollment has had its first mail: its follow-up (step `bump`) is due at `due`.
async fn follow_up_due(store: &Store, id: i64, due: DateTime<Utc>, now: DateTime<Utc>) {
    change(store, id, now, |u| {
        u.step_index = 1;
        u.step_id = "bump".into();
        u.next_run_at = Some(due);
    })
    .await;
}

/// When a daily limit binds, follow-ups go before first steps: a follow-up due later
/// is claimed before a first step due earlier.
async fn follow_ups_first(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = setup(db, dir.path(), 3).await;
    let now = Utc::now();
    let items: Vec<NewEnrollment> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NewEnrollment {
            contact_id: *id,
            sequence: "intro".into(),
            mailbox: "sales".into(),
            step_id: "first".into(),
            next_run_at: now - Duration::minutes(10 - i as i64),
        })
        .collect();
    let created = store.enroll(&items, now).await.unwrap();
    assert_eq!(created.len(), 3);
    assert!(
        store.enroll(&items, now).await.unwrap().is_empty(),
        "a contact is in a sequence at most once"
    );
    // The last contact has had its first mail: its follow-up is due, but later than the others' first steps.
    follow_up_due(&store, created[2].0, now - Duration::minutes(1), now).await;

    let lease = now + Duration::seconds(60);
    let got = store
        .claim("sales", now, 1, lease, "a", None)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].enrollment.step_id, "bump",
        "the follow-up goes first"
    );
    // Claimed rows are leased: another daemon gets the others, oldest first.
    let got = store
        .claim("sales", now, 10, lease, "b", None)
        .await
        .unwrap();
    let emails: Vec<&str> = got.iter().map(|c| c.contact.email.as_str()).collect();
    assert_eq!(emails, ["c0@prospect.example", "c1@prospect.example"]);
    assert!(store
        .claim("sales", now, 10, lease, "c", None)
        .await
        .unwrap()
        .is_empty());
    // After the lease, they can be claimed again.
    let later = lease + Duration::seconds(1);
    assert_eq!(
        store
            .claim("sales", later, 10, later + Duration::seconds(60), "c", None)
            .await
            .unwrap()
            .len(),
        3
    );
    // Another mailbox's work is not touched.
    assert!(store
        .claim("other", later, 10, later, "c", None)
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

#[tokio::test]
async fn follow_ups_first_sqlite() {
    follow_ups_first(Db::Sqlite).await;
}

#[tokio::test]
async fn follow_ups_first_postgres() {
    follow_ups_first(Db::Postgres).await;
}

/// Within a round each claim starts after the last one (a cursor), so it does not walk
/// past the leases still in flight: claims of one row at a time through a follow-up and
/// first steps that share a due time take each enrollment once, in order. A row that
/// falls due behind the cursor waits for a claim without one: the next round.
async fn claims_continue_after_the_cursor(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = setup(db, dir.path(), 6).await;
    let now = Utc::now();
    // c0..c3 share one due time (ties are broken by id, so none is passed over);
    // c4 is due a minute later; c5 only later on.
    let due = now - Duration::minutes(10);
    let items: Vec<NewEnrollment> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NewEnrollment {
            contact_id: *id,
            sequence: "intro".into(),
            mailbox: "sales".into(),
            step_id: "first".into(),
            next_run_at: match i {
                0..=3 => due,
                4 => due + Duration::minutes(1),
                _ => now + Duration::hours(1),
            },
        })
        .collect();
    let created = store.enroll(&items, now).await.unwrap();
    assert_eq!(created.len(), 6);
    // c3 has had its first mail; its follow-up is due last of all, but goes first.
    follow_up_due(&store, created[3].0, now - Duration::seconds(1), now).await;

    let lease = now + Duration::seconds(60);
    let mut cursor = None;
    let mut order = Vec::new();
    loop {
        let got = store
            .claim("sales", now, 1, lease, "a", cursor)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        assert_eq!(got.len(), 1);
        cursor = followup::store::ClaimCursor::after(&got);
        order.push(got[0].contact.email.clone());
    }
    assert_eq!(
        order,
        [
            "c3@prospect.example",
            "c0@prospect.example",
            "c1@prospect.example",
            "c2@prospect.example",
            "c4@prospect.example",
        ],
        "the follow-up first, then first steps by due time and id, each once"
    );

    // c5 is moved to a due time behind the cursor: a claim after the cursor does not
    // see it, a fresh claim does.
    change(&store, created[5].0, now, |u| {
        u.next_run_at = Some(due - Duration::minutes(1))
    })
    .await;
    assert!(store
        .claim("sales", now, 10, lease, "a", cursor)
        .await
        .unwrap()
        .is_empty());
    let got = store
        .claim("sales", now, 10, lease, "a", None)
        .await
        .unwrap();
    let emails: Vec<&str> = got.iter().map(|c| c.contact.email.as_str()).collect();
    assert_eq!(emails, ["c5@prospect.example"]);
    store.close().await;
}

#[tokio::test]
async fn claims_continue_after_the_cursor_sqlite() {
    claims_continue_after_the_cursor(Db::Sqlite).await;
}

#[tokio::test]
async fn claims_continue_after_the_cursor_postgres() {
    claims_continue_after_the_cursor(Db::Postgres).await;
}

/// On SQLite the WAL is copied back into the database file by the store's own
/// checkpointer while the daemon keeps writing: the file holds the data within a
/// fraction of a second, and the WAL stays small instead of growing with every commit
/// (the write connection itself only checkpoints as a backstop, at 40 MB).
#[tokio::test]
async fn sqlite_wal_is_copied_back_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("followup.db");
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let before = size(&db);
    // About 3 MB of contacts in 30 commits: far below the backstop's 10,000 pages.
    for batch in 0..30 {
        let contacts: Vec<NewContact> = (0..200)
            .map(|i| NewContact {
                email: format!("c{batch}-{i}@prospect.example"),
                name: Some("x".repeat(200)),
                fields: [("note".to_string(), "y".repeat(200).into())]
                    .into_iter()
                    .collect(),
                timezone: None,
                country: None,
            })
            .collect();
        store.upsert_contacts(&contacts, Utc::now()).await.unwrap();
    }
    let mut copied = size(&db);
    for _ in 0..50 {
        if copied > before + 2_000_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        copied = size(&db);
    }
    assert!(
        copied > before + 2_000_000,
        "the database file grew from {before} to only {copied} bytes: the WAL was not checkpointed"
    );
    assert_eq!(store.contact_count().await.unwrap(), 6000);
    store.close().await;
    assert!(
        !dir.path().join("followup.db-wal").exists(),
        "closing the store folds the WAL into the file and removes it"
    );
}
