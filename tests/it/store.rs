//! The store's claim order and leases, against SQLite and PostgreSQL.

use chrono::{DateTime, Duration, Utc};
use followup::model::{
    Cause, CauseKind, EnrollmentState, EnrollmentUpdate, EventKind, MessageStatus, NewContact,
    NewEnrollment,
};
use followup::store::Store;

use crate::support::{database_url, Db};

async fn setup(db: Db, dir: &std::path::Path, n: usize) -> (Store, Vec<i64>) {
    setup_at(&database_url(db, dir), n).await
}

/// [`setup`] on the database at `url`.
async fn setup_at(url: &str, n: usize) -> (Store, Vec<i64>) {
    let store = Store::open(url).await.unwrap();
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

/// Each contact in sequence `intro` at its first step, due one minute after the one
/// before it, the first ten minutes ago.
fn first_steps(ids: &[i64], now: DateTime<Utc>) -> Vec<NewEnrollment> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| NewEnrollment {
            contact_id: *id,
            sequence: "intro".into(),
            mailbox: "sales".into(),
            step_id: "first".into(),
            next_run_at: now - Duration::minutes(10 - i as i64),
        })
        .collect()
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
    let items = first_steps(&ids, now);
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

/// Group commit: one transaction records the outcomes of the batch that went out and
/// begins the next batch. Both halves keep their own checks (an enrollment stopped
/// meanwhile is not begun, while the outcomes still land). When the batch's half fails,
/// nothing of the batch is `sending`, so none of it goes out, and the outcomes are
/// recorded on their own: what a server already took is not left to come back in doubt.
async fn outcomes_and_the_next_batch_commit_together(db: Db) {
    use followup::model::NewEvent;
    use followup::store::{Begin, Finish, MessageUpdate};

    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = setup(db, dir.path(), 5).await;
    let now = Utc::now();
    store.enroll(&first_steps(&ids, now), now).await.unwrap();
    let lease = now + Duration::seconds(60);
    let begin = |c: &followup::store::Claimed, n: usize| Begin {
        enrollment_id: c.enrollment.id,
        step_id: c.enrollment.step_id.clone(),
        step_index: 0,
        message_id: format!("<m{n}@sales.example>"),
        subject: "Hello".into(),
        content_hash: "h".into(),
        variant: None,
        track_key: format!("k{n}"),
        links: vec![],
    };
    let sent = |c: &followup::store::Claimed, b: &followup::store::Begun| {
        let mut u = c.enrollment.unchanged();
        u.state = EnrollmentState::Finished;
        u.next_run_at = None;
        Finish {
            message: Some(MessageUpdate {
                row_id: b.row_id,
                status: MessageStatus::Sent,
                smtp_reply: Some("250 ok".into()),
            }),
            enrollment: u,
            events: vec![NewEvent {
                contact_id: Some(c.enrollment.contact_id),
                enrollment_id: Some(c.enrollment.id),
                message_id: Some(b.row_id),
                kind: EventKind::Sent,
                data: serde_json::json!({}),
            }],
        }
    };
    let status = |c: &followup::store::Claimed| {
        let store = store.clone();
        let (id, step) = (c.enrollment.id, c.enrollment.step_id.clone());
        async move {
            store
                .step_message(id, &step)
                .await
                .unwrap()
                .map(|m| m.status)
        }
    };

    // Batch 1 (c0, c1) is on the wire; batch 2 (c2, c3) is claimed, and c3 is stopped
    // (a reply came in) before its `sending` commit.
    let first = store
        .claim("sales", now, 2, lease, "a", None)
        .await
        .unwrap();
    let first_begun = store
        .begin_sends(&[begin(&first[0], 0), begin(&first[1], 1)], "a", now, lease)
        .await
        .unwrap();
    assert_eq!(first_begun.len(), 2);
    let second = store
        .claim(
            "sales",
            now,
            2,
            lease,
            "a",
            followup::store::ClaimCursor::after(&first),
        )
        .await
        .unwrap();
    assert_eq!(second[1].contact.email, "c3@prospect.example");
    change(&store, second[1].enrollment.id, now, |u| {
        u.state = EnrollmentState::Stopped;
        u.cause = Some(Cause::new(CauseKind::Replied));
        u.next_run_at = None;
    })
    .await;

    let finishes: Vec<Finish> = first
        .iter()
        .zip(&first_begun)
        .map(|(c, b)| sent(c, b))
        .collect();
    let begun = store
        .write_sends(
            &finishes,
            &[begin(&second[0], 2), begin(&second[1], 3)],
            "a",
            now,
            lease,
        )
        .await
        .unwrap();
    assert_eq!(
        begun.iter().map(|b| b.enrollment_id).collect::<Vec<_>>(),
        [second[0].enrollment.id],
        "only the enrollment still active is begun"
    );
    for c in &first {
        assert_eq!(status(c).await.map(|s| s.as_str()), Some("sent"));
        let e = store
            .enrollments_by_id(&[c.enrollment.id])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(e.state, EnrollmentState::Finished);
        let kinds: Vec<String> = store
            .timeline(c.enrollment.contact_id)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, kind, _)| kind)
            .collect();
        assert!(kinds.contains(&"sent".to_string()), "{kinds:?}");
    }
    assert_eq!(
        status(&second[0]).await.map(|s| s.as_str()),
        Some("sending")
    );
    assert_eq!(
        status(&second[1]).await,
        None,
        "a stopped enrollment gets no message"
    );

    // c2's outcome rides with batch 3 (c4), whose Message-ID is taken already: the
    // transaction fails, c4 has no message, so it cannot be sent, and c2's outcome (the
    // server took it) is recorded on its own rather than left to come back in doubt.
    let third = store
        .claim(
            "sales",
            now,
            1,
            lease,
            "a",
            followup::store::ClaimCursor::after(&second),
        )
        .await
        .unwrap();
    assert_eq!(third[0].contact.email, "c4@prospect.example");
    let mut clash = begin(&third[0], 4);
    clash.message_id = "<m0@sales.example>".into();
    let finishes = vec![sent(&second[0], &begun[0])];
    assert!(store
        .write_sends(&finishes, &[clash.clone()], "a", now, lease)
        .await
        .is_err());
    assert_eq!(status(&second[0]).await.map(|s| s.as_str()), Some("sent"));
    assert_eq!(status(&third[0]).await, None);
    let e = store
        .enrollments_by_id(&[second[0].enrollment.id])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        e.state,
        EnrollmentState::Finished,
        "c2's outcome was recorded"
    );
    let c2_sent_events = || {
        let store = store.clone();
        let contact = second[0].enrollment.contact_id;
        async move {
            store
                .timeline(contact)
                .await
                .unwrap()
                .into_iter()
                .filter(|(_, kind, _)| kind == "sent")
                .count()
        }
    };
    assert_eq!(c2_sent_events().await, 1);
    // As if that group commit had landed and only its answer was lost: the outcome is
    // handed in once more, its claim is gone, and it is not recorded a second time.
    assert!(store
        .write_sends(&finishes, &[clash.clone()], "a", now, lease)
        .await
        .is_err());
    assert_eq!(c2_sent_events().await, 1, "no second `sent` event");
    // c4's claim still holds; its batch can be begun once the clash is gone.
    let begun = store
        .write_sends(&[], &[begin(&third[0], 4)], "a", now, lease)
        .await
        .unwrap();
    assert_eq!(begun.len(), 1);
    assert_eq!(status(&third[0]).await.map(|s| s.as_str()), Some("sending"));
    store.close().await;
}

#[tokio::test]
async fn outcomes_and_the_next_batch_commit_together_sqlite() {
    outcomes_and_the_next_batch_commit_together(Db::Sqlite).await;
}

#[tokio::test]
async fn outcomes_and_the_next_batch_commit_together_postgres() {
    outcomes_and_the_next_batch_commit_together(Db::Postgres).await;
}

/// What a dead daemon left in `sending` after a takeover: a message it began and never
/// marked as leaving is due again; one it marked `left` is in doubt; one it began whose
/// claim had passed to it from an earlier daemon Z (Z began the message, its lease ran
/// out, the dead daemon claimed the enrollment again) is in doubt too, since it may
/// have left under Z.
async fn takeover_sends_again_only_what_never_left(db: Db) {
    use followup::store::{Begin, Wire};

    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = setup(db, dir.path(), 3).await;
    let now = Utc::now();
    store.enroll(&first_steps(&ids, now), now).await.unwrap();
    let begin = |c: &followup::store::Claimed, n: usize| Begin {
        enrollment_id: c.enrollment.id,
        step_id: c.enrollment.step_id.clone(),
        step_index: 0,
        message_id: format!("<t{n}@sales.example>"),
        subject: "Hello".into(),
        content_hash: "h".into(),
        variant: None,
        track_key: format!("t{n}"),
        links: vec![],
    };
    // Z begins c0's message, then its lease runs out.
    let short = now + Duration::milliseconds(10);
    let z = store
        .claim("sales", now, 1, short, "z", None)
        .await
        .unwrap();
    store
        .begin_sends(&[begin(&z[0], 0)], "z", now, short)
        .await
        .unwrap();
    let later = now + Duration::seconds(1);
    let lease = later + Duration::minutes(10);
    // The dead daemon "a" claims all three (c0's lease expired), begins c1 and c2.
    let a = store
        .claim("sales", later, 3, lease, "a", None)
        .await
        .unwrap();
    assert_eq!(a.len(), 3, "c0's expired lease is taken over");
    let begun = store
        .begin_sends(&[begin(&a[1], 1), begin(&a[2], 2)], "a", later, lease)
        .await
        .unwrap();
    assert_eq!(begun.len(), 2, "c0's message is still Z's `sending` row");
    // "a" marked c2's message as leaving before it died (on SQLite, in its journal).
    let left = begun
        .iter()
        .find(|b| b.message_id == "<t2@sales.example>")
        .unwrap()
        .row_id;
    match store.wire_journal("a").unwrap() {
        Some(mut j) => j.append(&[(left, Wire::Left)]).unwrap(),
        None => {
            store
                .mark_wire(&[(left, Wire::Left)], "a", later)
                .await
                .unwrap();
        }
    }
    let r = store.take_over(&["a".to_string()], later).await.unwrap();
    assert_eq!(r.unsent, 1, "c1's never left: due again");
    let doubts: Vec<&str> = r.in_doubt.iter().map(|d| d.message_id.as_str()).collect();
    assert!(doubts.contains(&"<t2@sales.example>"), "{doubts:?}");
    assert!(
        doubts.contains(&"<t0@sales.example>"),
        "Z's may have left: {doubts:?}"
    );
    let status = |id: i64| {
        let store = store.clone();
        async move {
            store
                .step_message(id, "first")
                .await
                .unwrap()
                .map(|m| m.status)
        }
    };
    assert_eq!(
        status(a[1].enrollment.id).await.map(|s| s.as_str()),
        Some("deferred")
    );
    assert_eq!(
        status(a[0].enrollment.id).await.map(|s| s.as_str()),
        Some("in_doubt")
    );
}

#[tokio::test]
async fn takeover_sends_again_only_what_never_left_sqlite() {
    takeover_sends_again_only_what_never_left(Db::Sqlite).await;
}

#[tokio::test]
async fn takeover_sends_again_only_what_never_left_postgres() {
    takeover_sends_again_only_what_never_left(Db::Postgres).await;
}

/// Runs statements on the database at `url` with a connection of its own.
async fn exec(url: &str, statements: &[String]) {
    macro_rules! run {
        ($pool:expr) => {{
            let pool = $pool.await.unwrap();
            for s in statements {
                sqlx::query(s).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }};
    }
    if url.starts_with("sqlite:") {
        run!(sqlx::SqlitePool::connect(url))
    } else {
        run!(sqlx::PgPool::connect(url))
    }
}

/// Enrollments written by a version that stored only a sentence are given the cause
/// the sentence stood for by migration 0009, and `status` counts them by kind: the
/// hundred messages in doubt a crash could leave are one line, not a hundred.
async fn old_reasons_become_causes(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(db, dir.path());
    let now = Utc::now();
    let (store, ids) = setup_at(&url, 8).await;
    store.enroll(&first_steps(&ids, now), now).await.unwrap();
    let old = [
        (
            "held",
            "missing field 'company' (used at templates/first.txt:3:5, no default)",
        ),
        (
            "held",
            "missing field 'company' (used at templates/first.txt:3:5, no default)",
        ),
        ("held", "in doubt: <a1@followup> may have been sent"),
        ("held", "in doubt: <a2@followup> may have been sent"),
        ("paused", "paused by operator"),
        ("active", "retrying: 451 4.7.1 try later"),
        ("stopped", "smtp: 550 5.1.1 unknown user"),
        ("stopped", "something an old version wrote"),
    ];
    let mut statements = Vec::new();
    for (id, (state, reason)) in ids.iter().zip(old) {
        statements.push(format!(
            "UPDATE enrollments SET state = '{state}', reason = '{}', cause = NULL, cause_detail = NULL \
             WHERE contact_id = {id}",
            reason.replace('\'', "''")
        ));
    }
    // The migration's data step, as it ran on upgrade (its ALTERs have run already).
    let migration = match db {
        Db::Sqlite => include_str!("../../migrations/sqlite/0009_causes.sql"),
        Db::Postgres => include_str!("../../migrations/postgres/0009_causes.sql"),
    };
    let update = &migration[migration.find("UPDATE enrollments").unwrap()..];
    statements.push(update.to_string());
    exec(&url, &statements).await;

    let mut by_contact = std::collections::HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let email = format!("c{i}@prospect.example");
        let e = store.enrollment("intro", &email).await.unwrap().unwrap();
        by_contact.insert(*id, e);
    }
    let cause = |i: usize| by_contact[&ids[i]].cause.clone().unwrap();
    assert_eq!(cause(0).kind, CauseKind::MissingField);
    assert_eq!(
        cause(0).to_string(),
        "missing field 'company' (used at templates/first.txt:3:5, no default)"
    );
    assert_eq!(cause(2), Cause::with(CauseKind::InDoubt, "<a1@followup>"));
    assert_eq!(cause(4), Cause::new(CauseKind::Operator));
    assert_eq!(
        cause(5),
        Cause::with(CauseKind::Retrying, "451 4.7.1 try later")
    );
    assert_eq!(
        cause(6),
        Cause::with(CauseKind::Rejected, "550 5.1.1 unknown user")
    );
    assert_eq!(
        cause(7),
        Cause::with(CauseKind::Other, "something an old version wrote")
    );
    assert_eq!(by_contact[&ids[2]].state, EnrollmentState::Held);

    let status = store.status(Some("intro")).await.unwrap();
    let line = |label: &str| {
        status
            .reasons
            .iter()
            .find(|r| r.2 == label)
            .map(|r| (r.1.clone(), r.3))
    };
    assert_eq!(
        line("in doubt"),
        Some(("held".into(), 2)),
        "{:?}",
        status.reasons
    );
    assert_eq!(
        line("missing field 'company' (used at templates/first.txt:3:5, no default)"),
        Some(("held".into(), 2))
    );
    assert_eq!(line("paused by operator"), Some(("paused".into(), 1)));
    assert_eq!(
        line("something an old version wrote"),
        Some(("stopped".into(), 1))
    );
    assert_eq!(status.reasons.len(), 6, "{:?}", status.reasons);
}

#[tokio::test]
async fn old_reasons_become_causes_sqlite() {
    old_reasons_become_causes(Db::Sqlite).await;
}

#[tokio::test]
async fn old_reasons_become_causes_postgres() {
    old_reasons_become_causes(Db::Postgres).await;
}

/// On PostgreSQL an event's id is handed out before its transaction commits, so a
/// transaction that began first can commit last with the smaller id. The events a
/// consumer reads stop before every transaction still running: the late commit is
/// read in its place, never skipped by a cursor that already moved past its id.
#[tokio::test]
async fn event_cursor_never_passes_a_transaction_still_running_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(Db::Postgres, dir.path());
    let (store, ids) = setup_at(&url, 1).await;
    let start = store.cursor("test").await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let insert = |kind: &'static str| {
        format!(
            "INSERT INTO events (at, contact_id, kind, data) VALUES (0, {}, '{kind}', '{{}}') RETURNING id",
            ids[0]
        )
    };
    // The slow writer takes the smaller id and has not committed yet.
    let mut slow = pool.begin().await.unwrap();
    let early: i64 = sqlx::query_scalar(&insert("tagged"))
        .fetch_one(&mut *slow)
        .await
        .unwrap();
    let late: i64 = sqlx::query_scalar(&insert("stage_changed"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(early < late);
    let page = store.events_after(start, 100).await.unwrap();
    assert!(
        page.events.is_empty() && page.end == start,
        "nothing is read while an older transaction runs: {page:?}"
    );
    slow.commit().await.unwrap();
    // Transaction ids are the server's, across its databases: another test's open
    // transaction may hold the horizon back a moment longer.
    let mut page = store.events_after(start, 100).await.unwrap();
    for _ in 0..200 {
        if page.events.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        page = store.events_after(start, 100).await.unwrap();
    }
    let read: Vec<i64> = page.events.iter().map(|e| e.id).collect();
    assert_eq!(read, [early, late], "both, in commit order");
    // A consumer commits its cursor once; a second one at the old position is refused.
    store
        .commit_rules("test", start, page.end, &[], Utc::now())
        .await
        .unwrap();
    assert!(matches!(
        store
            .commit_rules("test", start, page.end, &[], Utc::now())
            .await,
        Err(followup::store::Error::Moved)
    ));
    assert_eq!(store.cursor("test").await.unwrap(), page.end);
    pool.close().await;
}

/// Two writers decide on the same read (the reply watcher and an operator): the
/// second change, decided from a state the enrollment has left, is not written, and
/// its events go with it, so neither undoes the other.
async fn a_stale_change_is_not_laid_over_a_newer_one(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let (store, ids) = setup(db, dir.path(), 1).await;
    store.enroll(&first_steps(&ids, now), now).await.unwrap();
    let read = store
        .enrollment("intro", "c0@prospect.example")
        .await
        .unwrap()
        .unwrap();
    let mut paused = read.unchanged();
    paused.state = EnrollmentState::Paused;
    paused.cause = Some(Cause::new(CauseKind::Operator));
    let mut stopped = read.unchanged();
    stopped.state = EnrollmentState::Stopped;
    stopped.cause = Some(Cause::new(CauseKind::Replied));
    let event = |kind| followup::model::NewEvent {
        contact_id: Some(read.contact_id),
        enrollment_id: Some(read.id),
        message_id: None,
        kind,
        data: serde_json::json!({}),
    };
    let first = store
        .apply(&[paused], &[event(EventKind::Paused)], now)
        .await
        .unwrap();
    assert_eq!(first, [read.id]);
    let second = store
        .apply(&[stopped], &[event(EventKind::Stopped)], now)
        .await
        .unwrap();
    assert!(second.is_empty(), "decided from 'active', which it left");
    let now_is = store
        .enrollment("intro", "c0@prospect.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now_is.state, EnrollmentState::Paused);
    let shown = store.timeline(read.contact_id).await.unwrap();
    let kinds: Vec<&str> = shown.iter().map(|(_, k, _)| k.as_str()).collect();
    assert!(
        kinds.contains(&"paused") && !kinds.contains(&"stopped"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_stale_change_is_not_laid_over_a_newer_one_sqlite() {
    a_stale_change_is_not_laid_over_a_newer_one(Db::Sqlite).await;
}

#[tokio::test]
async fn a_stale_change_is_not_laid_over_a_newer_one_postgres() {
    a_stale_change_is_not_laid_over_a_newer_one(Db::Postgres).await;
}
