//! Classifier speed on hostile and on real messages.
//!
//! 1. Baseline: `classify` of a small plain reply (the common case), many times.
//! 2. Each crafted hostile message of `tests/support/hostile.rs` (200,000 To addresses,
//!    200,000 References, a DSN with 40,000 recipients, 5,000 nested multiparts,
//!    20,000 parts, 200 nested message/rfc822, a 10 MB body, 100,000 nested HTML
//!    blockquotes, a 1 MB header, 100,000 headers): the median and the slowest of
//!    several runs, each including the MIME parse. The target is under 50 ms each.
//! 3. The labelled corpus (`tests/fixtures/classify/corpus/labels.json`, 304 messages),
//!    parsed and classified in a loop: messages per second on one core (target 5,000),
//!    and the slowest single message (target under 10 ms).
//!
//! Run: `cargo bench --bench classify`. Knobs: FOLLOWUP_BENCH_RUNS (runs per crafted
//! case, default 7), FOLLOWUP_BENCH_CORPUS_SECS (seconds over the corpus, default 3).

mod common;

#[path = "../tests/support/corpus.rs"]
mod corpus;
#[path = "../tests/support/hostile.rs"]
mod hostile;

use std::time::{Duration, Instant};

use followup::mail::classify::classify;

use common::{env_usize, ms, rate, thousands};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs = env_usize("FOLLOWUP_BENCH_RUNS", 7).max(1);
    let corpus_secs = env_usize("FOLLOWUP_BENCH_CORPUS_SECS", 3).max(1);

    // 1. Baseline.
    let small = hostile::small_reply();
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(classify(std::hint::black_box(&small)));
    }
    let base = started.elapsed();
    println!(
        "baseline: small plain reply ({} bytes): {:.1} µs each, {} msg/s",
        small.len(),
        base.as_secs_f64() * 1e6 / n as f64,
        rate(n, base)
    );

    // 2. Crafted cases.
    println!();
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10}  what",
        "case", "bytes", "median ms", "max ms", "msg/s"
    );
    let mut worst = Duration::ZERO;
    for case in hostile::all() {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            std::hint::black_box(classify(std::hint::black_box(&case.raw)));
            times.push(started.elapsed());
        }
        let max = times.iter().copied().max().unwrap_or_default();
        worst = worst.max(max);
        let med = median(times);
        println!(
            "{:<24} {:>10} {:>10.2} {:>10.2} {:>10}  {}",
            case.name,
            thousands(case.raw.len() as u64),
            ms(med),
            ms(max),
            rate(1, med),
            case.what
        );
    }
    println!(
        "slowest crafted message: {:.2} ms (target: under 50 ms){}",
        ms(worst),
        if worst < Duration::from_millis(50) {
            ""
        } else {
            "  ** OVER TARGET **"
        }
    );

    // 3. The labelled corpus (tests/fixtures/classify/corpus/labels.json: flufl.bounce's
    // real bounces, the golden fixtures, the written messages), parsed and classified
    // in a loop on one core; then each message timed alone, for the slowest.
    let corpus: Vec<Vec<u8>> = corpus::load().into_iter().map(|m| m.raw).collect();
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let mut done = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(corpus_secs as u64) {
        for raw in &corpus {
            std::hint::black_box(classify(std::hint::black_box(raw)));
        }
        done += corpus.len();
    }
    let took = started.elapsed();
    let mut slowest = Duration::ZERO;
    for raw in &corpus {
        for _ in 0..runs {
            let started = Instant::now();
            std::hint::black_box(classify(std::hint::black_box(raw)));
            slowest = slowest.max(started.elapsed());
        }
    }
    println!();
    println!(
        "labelled corpus: {} messages ({} KB average), {} classified in {:.1} s: {} msg/s, {:.1} µs each (target: 5,000 msg/s){}",
        corpus.len(),
        bytes / corpus.len().max(1) / 1024,
        thousands(done as u64),
        took.as_secs_f64(),
        rate(done, took),
        took.as_secs_f64() * 1e6 / done.max(1) as f64,
        if done as f64 / took.as_secs_f64() >= 5_000.0 {
            ""
        } else {
            "  ** UNDER TARGET **"
        }
    );
    println!(
        "slowest corpus message: {:.3} ms (target: under 10 ms){}",
        ms(slowest),
        if slowest < Duration::from_millis(10) {
            ""
        } else {
            "  ** OVER TARGET **"
        }
    );
}
