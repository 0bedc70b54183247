//! Webhook delivery throughput: N events of C contacts on a fresh SQLite file, queued
//! through the dispatcher's cursor and POSTed to a receiver on loopback, until every
//! one is delivered (each contact's in order: one in flight per contact). Beside it,
//! in the same run, the baseline: the same number of POSTs of the same bodies with the
//! same HTTP client, 32 at a time, with no queue and no database.
//!
//! Run: `cargo bench --bench webhooks`. Knobs: FOLLOWUP_BENCH_N (events, default
//! 20000), FOLLOWUP_BENCH_CONTACTS (default 1000).

mod common;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use common::env_usize;
use followup::config::Webhook;
use followup::store::Store;

/// A keep-alive HTTP/1.1 receiver answering 200 to everything; counts requests.
async fn receiver() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    c.fetch_add(1, Ordering::Relaxed);
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

#[tokio::main]
async fn main() {
    let n = env_usize("FOLLOWUP_BENCH_N", 20_000);
    let contacts = env_usize("FOLLOWUP_BENCH_CONTACTS", 1_000).max(1);
    let (port, received) = receiver().await;
    let hook = Webhook {
        name: "bench".into(),
        url: format!("http://127.0.0.1:{port}/hook"),
        events: Vec::new(),
        secret: Some(b"bench-secret-0123456789".to_vec()),
        timeout: Duration::from_secs(10),
    };
    let client = followup::webhook::Client::new().unwrap_or_else(|e| panic!("client: {e}"));

    // Baseline: the same POSTs, 32 at a time, no queue.
    let body = "{\"event_id\":1,\"kind\":\"sent\",\"contact\":{\"id\":1,\"email\":\"c1@example.com\"},\"data\":{\"sequence\":\"intro\",\"step\":\"first\"}}";
    let start = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, hook) = (&client, &hook);
            async move { client.post(hook, i as i64, body).await }
        })
        .buffer_unordered(32)
        .for_each(|_| async {})
        .await;
    let raw = n as f64 / start.elapsed().as_secs_f64();

    // The dispatcher: events in the database, queued through the cursor, delivered.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Store::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
    {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("bench.db")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        for c in 0..contacts {
            sqlx::query("INSERT INTO contacts (id, email, domain, created_at, updated_at) VALUES ($1, $2, 'example.com', 0, 0)")
                .bind(c as i64 + 1)
                .bind(format!("c{c}@example.com"))
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let now = Utc::now().timestamp_millis();
        for i in 0..n {
            sqlx::query("INSERT INTO events (at, contact_id, kind, data) VALUES ($1, $2, 'sent', '{\"sequence\":\"intro\",\"step\":\"first\"}')")
                .bind(now)
                .bind((i % contacts) as i64 + 1)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        pool.close().await;
    }
    let before = received.load(Ordering::Relaxed);
    let hooks = [hook];
    let start = Instant::now();
    let mut delivered = 0;
    while delivered < n {
        let r = followup::app::webhooks::round(&store, &hooks, &client)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        delivered += r.delivered;
        if r.delivered == 0 && r.failed == 0 {
            break;
        }
    }
    let took = start.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed) - before;
    store.close().await;
    let rate = delivered as f64 / took;
    println!(
        "webhooks: {n} events of {contacts} contacts, SQLite: {delivered} delivered ({got} received) in {took:.2} s = {rate:.0}/s; \
         same POSTs with no queue: {raw:.0}/s; ratio {:.0}%",
        rate / raw * 100.0
    );
}
