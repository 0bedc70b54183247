//! The send loop: claim due enrollments per mailbox, render, commit `sending`, hand to
//! SMTP, record outcomes. One `Scheduler` owns the in-flight work of its daemon; the
//! database is the truth, so a restart picks up exactly where the last commit left off.
//!
//! Order of durability for each message (see README, "Nothing sent twice"):
//! 1. claim (lease) the enrollment;
//! 2. commit the message row as `sending` in the transaction that re-checks the
//!    enrollment is still active, at that step, and not suppressed;
//! 3. SMTP;
//! 4. commit `sent` (or `deferred` / `failed`), the events and the enrollment's advance.
//!
//! A crash between 2 and 4 leaves `sending`; when its lease runs out the message becomes
//! `in_doubt` and its enrollment is held for an operator: never re-sent blindly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use chrono::{DateTime, Duration, Utc};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::config::Mailbox;
use crate::engine::{self, Command, Context, Input, Outcome, Transition};
use crate::mail::compose::{self, content_hash, new_message_id, subject_for, Draft, Thread};
use crate::mail::send::{Message, SendOutcome, Sender};
use crate::mail::smtp::Told;
use crate::model::{Cause, CauseKind, EventKind, MessageStatus};
use crate::model::{Contact, EnrollmentUpdate};
use crate::project::Project;
use crate::schedule::{mailbox_day, next_in_window, next_slot, MailboxUsage};
use crate::store::{self, Begin, ClaimCursor, Claimed, Finish, MessageUpdate, Store, Wire};
use crate::template::{RenderError, Rendered};
use crate::track::token::KeyClock;

/// How long one mailbox goes on claiming in one round before the round ends and the
/// daemon looks at doubts and ended pauses again (shutdown and mailbox pauses are looked
/// at before every batch), and before claims start again from the head of the due index,
/// taking what fell due behind the cursor. A bound in time rather than in batches: each
/// round starts with an empty pipeline and ends draining it (with rounds of 20 batches,
/// SMTP had no work for a fifth of each round at full speed), while on a slow server 20
/// batches took minutes.
const CLAIMS_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A message that waited longer than this between its `sending` commit and its turn
/// for SMTP is looked at once more (does this daemon still hold its claim?), since a
/// reply or unsubscribe may have stopped the enrollment meanwhile. Below it the
/// `sending` commit's own re-check stands: a read per message would cost a quarter of
/// the send throughput (measured with `cargo bench --bench send`), while a backlog
/// waits only a batch (about 20 ms at full speed) and a slow server waits seconds.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// The most messages one connection carries in a run, each one's end of data with the
/// next one's commands (see `mail::smtp`). Runs are an even share of what is waiting, so
/// this only binds on a backlog; it bounds how long one run holds a connection.
const RUN_AHEAD: usize = 16;

/// How long outcomes wait for a batch to ride with before they are committed on their own.
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// What one round did, for `run --once`, logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub claimed: usize,
    pub sent: usize,
    pub deferred: usize,
    pub failed: usize,
    pub held: usize,
    /// Claimed but not sent now (outside the window, stopped meanwhile).
    pub released: usize,
    /// Steps not sent because their `if:` did not hold.
    pub skipped: usize,
}

impl Round {
    fn add(&mut self, o: Round) {
        self.claimed += o.claimed;
        self.sent += o.sent;
        self.deferred += o.deferred;
        self.failed += o.failed;
        self.held += o.held;
        self.released += o.released;
        self.skipped += o.skipped;
    }
}

/// How often a running daemon looks for dead daemons whose claims to take over.
const TAKEOVER_CHECK: Duration = Duration::milliseconds(500);

/// How often the rules runner looks for new events.
const RULES_CHECK: Duration = Duration::milliseconds(500);

/// Cheap to clone (shared handles), so that a mailbox's stages can run as tasks of
/// their own.
#[derive(Clone)]
pub struct Scheduler {
    project: Arc<Project>,
    links: crate::track::Links,
    store: Store,
    senders: HashMap<String, Arc<Sender>>,
    /// This daemon's name on its claims; unique per process so two daemons on one
    /// database never mistake each other's leases for their own.
    owner: String,
    /// Makes tracking keys; its node is allocated from the database on first use.
    keys: Arc<tokio::sync::OnceCell<KeyClock>>,
    /// The group commit of wire marks, started on the first round: one per scheduler,
    /// so that its journal is opened once and rotates as it grows.
    wire: Arc<std::sync::OnceLock<WireMarks>>,
    /// A reloaded project (SIGHUP), taken between two rounds: a batch is rendered and
    /// sent with one version of the project, never half of each.
    reloads: Option<tokio::sync::watch::Receiver<Arc<Project>>>,
}

/// A claimed and rendered batch on its way to its `sending` commit.
struct Batch {
    prepared: Vec<Prepared>,
    /// The `sending` row of each of `prepared`, in the same order.
    begins: Vec<Begin>,
    /// Claims that send nothing (held, released, skipped): written back with the batch.
    finishes: Vec<Finish>,
}

/// Work prepared for one claimed enrollment.
struct Prepared {
    claimed: Claimed,
    index: usize,
    rendered: Rendered,
    subject: String,
    thread: Option<Thread>,
    variant: Option<String>,
    /// Tracking key, rewritten HTML, link targets, List-Unsubscribe.
    tracked: crate::track::Tracked,
    /// When its `sending` row was committed; see [`RECHECK_AFTER`].
    committed: std::time::Instant,
}

impl Scheduler {
    pub fn new(project: Arc<Project>, store: Store) -> Scheduler {
        let senders = project
            .config
            .mailboxes
            .iter()
            .map(|(n, m)| (n.clone(), Arc::new(Sender::new(m, &project.config.send))))
            .collect();
        let owner = format!(
            "{}:{}:{:08x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..)
        );
        Scheduler {
            links: crate::track::Links::new(project.config.http.as_ref()),
            project,
            store,
            senders,
            owner,
            keys: Arc::default(),
            wire: Arc::default(),
            reloads: None,
        }
    }

    /// Follows the projects sent on `reloads` (see `ops::reload`).
    pub fn with_reloads(mut self, reloads: tokio::sync::watch::Receiver<Arc<Project>>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// This scheduler on the newest project, if a reload sent one it has not taken yet.
    /// Owner, key clock and wire marks stay: it is the same daemon. Its SMTP senders
    /// are new (the mailbox settings may have changed); the send loop closes the old.
    fn reloaded_project(&self) -> Option<Scheduler> {
        let p = self.reloads.as_ref()?.borrow().clone();
        if Arc::ptr_eq(&p, &self.project) {
            return None;
        }
        let fresh = Scheduler::new(p, self.store.clone());
        Some(Scheduler {
            owner: self.owner.clone(),
            keys: self.keys.clone(),
            wire: self.wire.clone(),
            reloads: self.reloads.clone(),
            ..fresh
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs until `shutdown`, then finishes the batch in hand and returns.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), store::Error> {
        let _alive = self.store.hold_liveness(&self.owner).await?;
        self.take_over_dead(Utc::now()).await?;
        // Dead daemons are looked for in a task of their own, so that a long round on a
        // slow server does not hold their claims up; it stops when this function
        // returns, however it returns.
        let stop_takeovers = shutdown.child_token();
        let _stop_takeovers = stop_takeovers.clone().drop_guard();
        {
            let mut me = self.clone();
            let stop = stop_takeovers;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(TAKEOVER_CHECK.to_std().unwrap_or_default()) => {}
                    }
                    if let Some(next) = me.reloaded_project() {
                        me = next;
                    }
                    if let Err(e) = me.take_over_dead(Utc::now()).await {
                        warn!(error = %e, "cannot look for dead daemons' work; trying again");
                    }
                }
            });
        }
        // The rules runner, too: lifecycle rules follow events within a second,
        // whatever the send loop is doing.
        let stop_rules = shutdown.child_token();
        let _stop_rules = stop_rules.clone().drop_guard();
        {
            let mut me = self.clone();
            let stop = stop_rules;
            tokio::spawn(async move {
                loop {
                    if let Some(next) = me.reloaded_project() {
                        me = next;
                    }
                    if let Err(e) = me.run_rules().await {
                        warn!(error = %e, "cannot run lifecycle rules; trying again");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(RULES_CHECK.to_std().unwrap_or_default()) => {}
                    }
                }
            });
        }
        let mut last_doubt_check = DateTime::<Utc>::MIN_UTC;
        // systemd's watchdog stops being pinged if a round never ends.
        // A round may wait out an SMTP end of data (data_timeout) and the connect and
        // commands around it.
        let beat = crate::ops::notify::Beat::register(
            "scheduler",
            (self.project.config.send.data_timeout + Duration::minutes(5))
                .to_std()
                .unwrap_or_default(),
        );
        let mut me = self.clone();
        // Wakes the loop as soon as a reload arrives (a clone: its own view of what was seen).
        let mut wake_on_reload = self.reloads.clone();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            beat.busy();
            if let Some(next) = me.reloaded_project() {
                for s in me.senders.values() {
                    s.close().await;
                }
                me = next;
                info!("send loop: now on the reloaded project");
            }
            let now = Utc::now();
            if now - last_doubt_check > Duration::seconds(5) {
                me.check_in_doubt(now).await?;
                let resumed = crate::app::operate::end_pauses(&me.store, now).await?;
                if resumed > 0 {
                    info!(resumed, "out-of-office pauses ended");
                }
                last_doubt_check = now;
            }
            let round = me.round_until(now, Some(&shutdown)).await?;
            if round.claimed > 0 {
                continue; // more may be due right away
            }
            let wake = me.next_wake(now).await?;
            let sleep =
                (wake - Utc::now()).clamp(Duration::milliseconds(20), me.project.config.send.poll);
            beat.waiting();
            let reloaded = async {
                match wake_on_reload.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(sleep.to_std().unwrap_or_default()) => {}
                true = reloaded => {}
            }
        }
        me.store.release_claims(&me.owner).await?;
        for s in me.senders.values() {
            s.close().await;
        }
        Ok(())
    }

    /// Does what is due now, round after round, until nothing due is left (or only what
    /// pacing holds back), then returns the totals. For `run --once` and tests.
    pub async fn run_once(&self) -> Result<Round, store::Error> {
        let _alive = self.store.hold_liveness(&self.owner).await?;
        let mut total = Round::default();
        self.take_over_dead(Utc::now()).await?;
        self.check_in_doubt(Utc::now()).await?;
        crate::app::operate::end_pauses(&self.store, Utc::now()).await?;
        loop {
            let r = self.round(Utc::now()).await?;
            total.add(r);
            if r.claimed > 0 && r.sent + r.deferred + r.failed + r.held > 0 {
                continue;
            }
            // Nothing more is due: the rules of what was done run now (once for the
            // whole run, not per round), and may enroll contacts due right away.
            if self.run_rules().await?.enrolled == 0 {
                break;
            }
        }
        for s in self.senders.values() {
            s.close().await;
        }
        Ok(total)
    }

    /// Carries out the lifecycle rules of the events recorded since the last run.
    async fn run_rules(&self) -> Result<crate::app::rules::RulesRun, store::Error> {
        let r = crate::app::rules::run(&self.project, &self.store, Utc::now()).await?;
        if r.rules > 0 {
            info!(
                events = r.events,
                rules = r.rules,
                enrolled = r.enrolled,
                "lifecycle rules applied"
            );
        }
        Ok(r)
    }

    /// Takes over the claims of daemons that died (their liveness lock is free), at
    /// once rather than when their leases run out.
    async fn take_over_dead(&self, now: DateTime<Utc>) -> Result<(), store::Error> {
        let dead = self.store.dead_owners(&self.owner).await?;
        if dead.is_empty() {
            return Ok(());
        }
        let r = self.store.take_over(&dead, now).await?;
        info!(owners = ?dead, in_doubt = r.in_doubt.len(), accepted = r.accepted.len(), not_sent = r.unsent, "took over the claims of daemons that died");
        self.recovered(r, now).await
    }

    async fn check_in_doubt(&self, now: DateTime<Utc>) -> Result<(), store::Error> {
        let r = self.store.mark_in_doubt(now).await?;
        self.recovered(r, now).await?;
        self.settle_through_sent(now).await
    }

    /// What a stopped daemon left in `sending`: what never left is due again (done by
    /// the store); what the server accepted is counted as sent; what may have reached
    /// the server without an answer is in doubt, its enrollment held.
    async fn recovered(&self, r: store::Recovered, now: DateTime<Utc>) -> Result<(), store::Error> {
        if r.unsent > 0 {
            info!(
                messages = r.unsent,
                "messages a stopped daemon had not sent yet are due again"
            );
        }
        for d in &r.accepted {
            match crate::app::doubt::settle_as_sent(
                &self.project,
                &self.store,
                d,
                "the server had accepted it before its daemon stopped",
                now,
            )
            .await
            {
                Ok(()) => {}
                Err(crate::app::doubt::Error::Store(e)) => return Err(e),
                Err(e) => {
                    warn!(message_id = %d.message_id, error = %e, "cannot count an accepted message as sent; it stays in doubt")
                }
            }
        }
        for d in r.in_doubt {
            warn!(
                message_id = %d.message_id, contact = %d.email, sequence = %d.sequence, step = %d.step_id,
                "message in doubt: its daemon stopped before recording the server's reply, and it may have reached the server; \
                 enrollment held (see `followup in-doubt`)"
            );
        }
        Ok(())
    }

    /// For mailboxes whose Sent folder holds every message sent (`append_sent`, or a
    /// server that files them itself), a message in doubt is settled by looking its
    /// Message-ID up there: found, it was sent; not found, it is sent again.
    async fn settle_through_sent(&self, now: DateTime<Utc>) -> Result<(), store::Error> {
        let doubts = self.store.in_doubt().await?;
        for (name, mailbox) in &self.project.config.mailboxes {
            let Some(imap) = &mailbox.imap else { continue };
            if !imap.append_sent {
                continue;
            }
            let mine: Vec<_> = doubts.iter().filter(|d| &d.mailbox == name).collect();
            if mine.is_empty() {
                continue;
            }
            let ids: Vec<String> = mine.iter().map(|d| d.message_id.clone()).collect();
            let found = match crate::mail::watch::find_in_sent(mailbox, &ids).await {
                Ok(f) => f,
                Err(e) => {
                    warn!(mailbox = %name, error = %e, "cannot look in the Sent folder; messages stay in doubt");
                    continue;
                }
            };
            for (d, present) in mine.into_iter().zip(found) {
                let r = if present {
                    crate::app::doubt::settle_as_sent(
                        &self.project,
                        &self.store,
                        d,
                        "found in the Sent folder",
                        now,
                    )
                    .await
                } else {
                    crate::app::doubt::release(&self.store, d, "not in the Sent folder", now).await
                };
                match r {
                    Ok(()) => {
                        info!(message_id = %d.message_id, contact = %d.email, found = present, "in-doubt message settled through the Sent folder")
                    }
                    Err(crate::app::doubt::Error::Store(e)) => return Err(e),
                    Err(e) => {
                        warn!(message_id = %d.message_id, error = %e, "cannot settle in-doubt message")
                    }
                }
            }
        }
        Ok(())
    }

    /// When something may next be due: the earliest enrollment or pacing slot.
    async fn next_wake(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, store::Error> {
        let mut wake = now + self.project.config.send.poll;
        for (name, mailbox) in &self.project.config.mailboxes {
            if let Some(due) = self.store.next_due(name).await? {
                let slot = self
                    .slot(mailbox, now)
                    .await?
                    .map(|(t, _)| t)
                    .unwrap_or(due);
                wake = wake.min(due.max(slot));
            }
        }
        Ok(wake)
    }

    /// The mailbox's next free slot and how many it may send in one go from there.
    async fn slot(
        &self,
        m: &Mailbox,
        now: DateTime<Utc>,
    ) -> Result<Option<(DateTime<Utc>, usize)>, store::Error> {
        let p = &m.pacing;
        if p.daily_limit.is_none() && p.min_gap <= Duration::zero() {
            return Ok(Some((now, self.project.config.send.batch)));
        }
        let day = mailbox_day(p, now);
        let day_start = day
            .and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_local_timezone(p.tz).earliest())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now - Duration::days(1));
        let (sent_today, last_send) = self.store.mailbox_usage(&m.name, day_start).await?;
        let usage = MailboxUsage {
            last_send,
            sent_today: sent_today.max(0) as u32,
        };
        let sample = fastrand::f64() * 2.0 - 1.0;
        Ok(next_slot(p, &usage, now, sample).map(|t| (t, 1)))
    }

    /// One pass over all mailboxes, each in its own pipeline, side by side.
    pub async fn round(&self, now: DateTime<Utc>) -> Result<Round, store::Error> {
        self.round_until(now, None).await
    }

    /// A round that stops claiming new batches once `stop` is cancelled; what was
    /// claimed is finished.
    async fn round_until(
        &self,
        now: DateTime<Utc>,
        stop: Option<&CancellationToken>,
    ) -> Result<Round, store::Error> {
        let runs = self
            .project
            .config
            .mailboxes
            .values()
            .map(|m| self.run_mailbox(m, now, stop));
        let mut total = Round::default();
        for r in futures_util::future::join_all(runs).await {
            total.add(r?);
        }
        Ok(total)
    }

    /// One mailbox's share of a round, as a pipeline of three stages joined by bounded
    /// channels, so that rendering, the database and SMTP work at the same time instead
    /// of taking turns (see README, "Benchmark figures"):
    /// 1. claim a batch and render it (`prepare_batches`);
    /// 2. commit, in one transaction, the outcomes that came back and the next batch's
    ///    `sending` rows (`commit`), then hand the batch on;
    /// 3. hand each message to SMTP, `parallelism` connections at a time (`transmit`).
    ///
    /// The order of durability per message is unchanged: its `sending` row is committed
    /// before it enters stage 3, its outcome after it leaves. At most two batches are
    /// `sending` without being on the wire yet; a crash leaves those in doubt.
    async fn run_mailbox(
        &self,
        mailbox: &Mailbox,
        now: DateTime<Utc>,
        stop: Option<&CancellationToken>,
    ) -> Result<Round, store::Error> {
        let Some(sender) = self.senders.get(&mailbox.name) else {
            return Ok(Round::default());
        };
        let parallel = sender.parallelism().max(1);
        let batch = self.project.config.send.batch.max(1);
        // One rendered batch waits while the one before it is committed.
        let (batches_tx, batches_rx) = mpsc::channel::<Batch>(1);
        // Room for one batch: the next batch is committed while this one is on the wire.
        let (work_tx, work_rx) = mpsc::channel::<(Prepared, store::Begun)>(batch);
        let (done_tx, done_rx) = mpsc::channel::<(Prepared, store::Begun, Outcome)>(batch);

        // A task of its own, so that rendering runs on another core than the stages that
        // drive the database and SMTP.
        let prepare = {
            let me = self.clone();
            let mailbox = mailbox.clone();
            let stop = stop.cloned();
            tokio::spawn(async move {
                me.prepare_batches(&mailbox, now, stop.as_ref(), batches_tx)
                    .await
            })
        };
        // Its own task too: commits go on while this one hands out work.
        let commit = {
            let me = self.clone();
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                me.commit(&mailbox, batch, batches_rx, work_tx, done_rx)
                    .await
            })
        };
        // Marks each message leaving just before its end of data, group-committed across
        // the mailbox's connections (see `WireMarks`).
        let wire = self
            .wire
            .get_or_init(|| WireMarks::start(self.store.clone(), self.owner.clone(), None))
            .clone();
        let transmit = async move {
            // Ends when the work does, or as soon as `commit` has failed: then nothing
            // more is handed to SMTP (what was begun stays `sending`, in doubt later),
            // and dropping `batches_rx` stops `prepare` too.
            //
            // Messages go out in runs, one run per connection at a time: each run is
            // an even share of what is waiting (up to RUN_AHEAD), so that a backlog
            // rides pipelined runs and a trickle still uses every connection.
            stream::unfold((work_rx, done_tx.clone()), move |(mut rx, tx)| async move {
                if tx.is_closed() {
                    return None;
                }
                let first = rx.recv().await?;
                let take = (rx.len() / parallel + 1).min(RUN_AHEAD);
                let mut run = Vec::with_capacity(take);
                run.push(first);
                while run.len() < take {
                    match rx.try_recv() {
                        Ok(w) => run.push(w),
                        Err(_) => break,
                    }
                }
                Some((run, (rx, tx)))
            })
            .map(|run| {
                // Its own task, so that composing and SMTP run on every core while
                // this task hands out and commits.
                let project = self.project.clone();
                let sender = sender.clone();
                let name = mailbox.name.clone();
                let store = self.store.clone();
                let owner = self.owner.clone();
                let wire = wire.clone();
                tokio::spawn(async move {
                    let mailbox = project.config.mailboxes.get(&name);
                    deliver(&name, mailbox, &sender, &store, &owner, &wire, run).await
                })
            })
            .buffer_unordered(parallel)
            .for_each(|done| {
                let tx = done_tx.clone();
                async move {
                    match done {
                        // A closed channel means `commit` failed; its error is returned.
                        Ok(done) => {
                            for d in done {
                                if tx.send(d).await.is_err() {
                                    break;
                                }
                            }
                        }
                        // Its messages stay `sending` and come back as in doubt.
                        Err(e) => warn!(error = %e, "send task failed"),
                    }
                }
            })
            .await;
        };
        let (prepared, (), committed) = tokio::join!(prepare, transmit, commit);
        let mut round = joined(prepared)?;
        round.add(joined(committed)?);
        Ok(round)
    }

    /// Stage 1: claims batches (`claim_batches`, a task of its own, one batch ahead), and
    /// renders each and hands it on. Claims wait for the write connection, which the
    /// commits hold most of the time; claiming ahead lets rendering go on meanwhile.
    async fn prepare_batches(
        &self,
        mailbox: &Mailbox,
        first_now: DateTime<Utc>,
        stop: Option<&CancellationToken>,
        batches: mpsc::Sender<Batch>,
    ) -> Result<Round, store::Error> {
        let (claims_tx, mut claims) = mpsc::channel::<(DateTime<Utc>, Vec<Claimed>)>(1);
        let claiming = {
            let me = self.clone();
            let mailbox = mailbox.clone();
            let stop = stop.cloned();
            tokio::spawn(async move {
                me.claim_batches(&mailbox, first_now, stop.as_ref(), claims_tx)
                    .await
            })
        };
        let rendered = self.render_batches(mailbox, &mut claims, batches).await;
        // Dropping the receiver stops the claims (what was claimed and not rendered is
        // left to its lease).
        drop(claims);
        let mut round = joined(claiming.await)?;
        round.add(rendered?);
        Ok(round)
    }

    /// Claims batch after batch until nothing is due, pacing holds the mailbox back,
    /// `stop` is cancelled or the round has claimed for [`CLAIMS_FOR`].
    async fn claim_batches(
        &self,
        mailbox: &Mailbox,
        first_now: DateTime<Utc>,
        stop: Option<&CancellationToken>,
        claims: mpsc::Sender<(DateTime<Utc>, Vec<Claimed>)>,
    ) -> Result<Round, store::Error> {
        let settings = &self.project.config.send;
        let mut round = Round::default();
        // Each claim of the round starts where the last stopped, so that it does not walk
        // past the leases of the batches still in flight; the next round starts afresh
        // and takes what fell due behind the cursor.
        let mut cursor: Option<ClaimCursor> = None;
        let started = std::time::Instant::now();
        for n in 0.. {
            if stop.is_some_and(|s| s.is_cancelled()) || (n > 0 && started.elapsed() >= CLAIMS_FOR)
            {
                break;
            }
            // Looked at before every batch: the watcher pauses a mailbox whose sends
            // bounce too much while a long round is under way.
            if self.store.mailbox_pause(&mailbox.name).await?.is_some() {
                break;
            }
            let now = if n == 0 { first_now } else { Utc::now() };
            let Some((slot, allowed)) = self.slot(mailbox, now).await? else {
                break;
            };
            if slot > now {
                break;
            }
            let claimed = self
                .store
                .claim(
                    &mailbox.name,
                    now,
                    allowed,
                    now + settings.lease,
                    &self.owner,
                    cursor,
                )
                .await?;
            if claimed.is_empty() {
                break;
            }
            cursor = ClaimCursor::after(&claimed);
            round.claimed += claimed.len();
            if claims.send((now, claimed)).await.is_err() {
                // A later stage failed (its error is returned) or stopped; what this
                // batch claimed is left to its lease.
                break;
            }
            // A paced mailbox sends what its slot allows, then waits for the next one.
            if allowed < settings.batch {
                break;
            }
        }
        Ok(round)
    }

    /// Renders each claimed batch and hands it on.
    async fn render_batches(
        &self,
        mailbox: &Mailbox,
        claims: &mut mpsc::Receiver<(DateTime<Utc>, Vec<Claimed>)>,
        batches: mpsc::Sender<Batch>,
    ) -> Result<Round, store::Error> {
        let mut round = Round::default();
        while let Some((now, claimed)) = claims.recv().await {
            let keys = self
                .keys
                .get_or_try_init(|| async {
                    let node = self.store.allocate_node(&self.owner, Utc::now()).await?;
                    Ok::<_, store::Error>(KeyClock::new(node))
                })
                .await?;
            let mut batch = Batch {
                prepared: Vec::with_capacity(claimed.len()),
                begins: Vec::with_capacity(claimed.len()),
                finishes: Vec::new(),
            };
            // What contacts did with earlier mails, for steps with `if:`; one query.
            let conditional: Vec<i64> = claimed
                .iter()
                .filter(|c| {
                    self.project
                        .sequence(&c.enrollment.sequence)
                        .and_then(|s| s.step(&c.enrollment.step_id))
                        .is_some_and(|(_, st)| st.condition.is_some())
                })
                .map(|c| c.enrollment.id)
                .collect();
            let engagement = if conditional.is_empty() {
                HashMap::new()
            } else {
                self.store.engagement(&conditional).await?
            };
            // The messages already in each thread, for threaded follow-ups; one query.
            let threaded: Vec<i64> = claimed
                .iter()
                .filter(|c| {
                    c.enrollment.thread_message_id.is_some()
                        && self
                            .project
                            .sequence(&c.enrollment.sequence)
                            .and_then(|s| s.step(&c.enrollment.step_id))
                            .is_some_and(|(_, st)| st.thread)
                })
                .map(|c| c.enrollment.id)
                .collect();
            let threads = if threaded.is_empty() {
                HashMap::new()
            } else {
                self.store.sent_message_ids(&threaded).await?
            };
            for (i, c) in claimed.into_iter().enumerate() {
                // Rendering is CPU work: now and then let the runtime's other tasks
                // (SMTP, the commits) run, which matters when it has one thread.
                if i % 16 == 15 {
                    tokio::task::yield_now().await;
                }
                let eng = engagement
                    .get(&c.enrollment.id)
                    .cloned()
                    .unwrap_or_default();
                let earlier = threads.get(&c.enrollment.id).cloned().unwrap_or_default();
                match self.prepare(mailbox, c, now, &eng, earlier, keys) {
                    Ok(p) => {
                        // Here rather than in `commit`, which the whole pipeline waits for.
                        batch.begins.push(Begin {
                            enrollment_id: p.claimed.enrollment.id,
                            step_id: p.claimed.enrollment.step_id.clone(),
                            step_index: p.index as i64,
                            message_id: new_message_id(mailbox.domain()),
                            subject: p.subject.clone(),
                            content_hash: content_hash(&p.subject, &p.rendered),
                            variant: p.variant.clone(),
                            track_key: p.tracked.key.clone(),
                            links: p.tracked.links.clone(),
                        });
                        batch.prepared.push(p);
                    }
                    Err((finish, kind)) => {
                        match kind {
                            Skip::Held => round.held += 1,
                            Skip::Released => round.released += 1,
                            Skip::Skipped => round.skipped += 1,
                        }
                        batch.finishes.push(finish);
                    }
                }
            }
            if batches.send(batch).await.is_err() {
                // The next stage failed (its error is returned) or stopped; what this
                // batch claimed is left to its lease.
                break;
            }
        }
        Ok(round)
    }

    /// Stage 2: the pipeline's one writer. Each transaction carries the outcomes that
    /// came back from SMTP and, when one is ready, the next batch's `sending` rows (group
    /// commit: on SQLite the one write connection is taken once for both, so that the
    /// claims, which need it too, wait behind one transaction per batch instead of two).
    /// A batch is committed as soon as it arrives and the one before it has been handed
    /// on; outcomes without a batch wait at most `RECORD_WAIT`, or until two batches'
    /// worth have gathered.
    ///
    /// Outcomes are taken in while a committed batch waits to be handed on, so that
    /// SMTP never waits for room to report and this stage never waits for SMTP to take
    /// work: neither channel can fill up in a circle.
    async fn commit(
        &self,
        mailbox: &Mailbox,
        batch: usize,
        mut batches: mpsc::Receiver<Batch>,
        work: mpsc::Sender<(Prepared, store::Begun)>,
        mut done: mpsc::Receiver<(Prepared, store::Begun, Outcome)>,
    ) -> Result<Round, store::Error> {
        let mut round = Round::default();
        let mut pending = Pending::default();
        // Committed `sending`, not yet handed to stage 3.
        let mut handoff: std::collections::VecDeque<(Prepared, store::Begun)> =
            std::collections::VecDeque::new();
        // Dropped once no work is left to hand on: that ends stage 3, and then `done`.
        let mut work = Some(work);
        let (mut batches_open, mut done_open) = (true, true);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = tokio::select! {
                // Outcomes first, so that SMTP's tasks never wait on a full channel.
                biased;
                item = done.recv(), if done_open => {
                    match item {
                        Some(item) => pending.outcomes.push(item),
                        None => done_open = false,
                    }
                    None
                }
                permit = reserve(work.as_ref()), if !handoff.is_empty() => {
                    match (permit, handoff.pop_front()) {
                        (Some(permit), Some(item)) => permit.send(item),
                        // Stage 3 is gone; what was begun stays `sending`, in doubt later.
                        _ => handoff.clear(),
                    }
                    None
                }
                b = batches.recv(), if batches_open && handoff.is_empty() => {
                    if b.is_none() {
                        batches_open = false;
                    }
                    b
                }
                _ = sleep_until(deadline), if deadline.is_some() => None,
                // Nothing left to wait for: what is pending is committed below, then the
                // loop ends.
                else => None,
            };
            while let Ok(item) = done.try_recv() {
                pending.outcomes.push(item);
            }
            let waiting = !pending.is_empty();
            if waiting && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + RECORD_WAIT);
            }
            let expired = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
            if next.is_some()
                || (waiting && (expired || !done_open || pending.outcomes.len() >= 2 * batch))
            {
                deadline = None;
                let begun = self
                    .commit_once(mailbox, next, &mut pending, &mut round)
                    .await?;
                handoff.extend(begun);
            }
            if !batches_open && handoff.is_empty() {
                work = None;
            }
            if !batches_open && !done_open && handoff.is_empty() && pending.is_empty() {
                break;
            }
        }
        Ok(round)
    }

    /// One transaction of [`Scheduler::commit`]: what is pending, and `batch`'s `sending`
    /// rows. Returns what may now be sent.
    async fn commit_once(
        &self,
        mailbox: &Mailbox,
        batch: Option<Batch>,
        pending: &mut Pending,
        round: &mut Round,
    ) -> Result<Vec<(Prepared, store::Begun)>, store::Error> {
        let mut finishes = std::mem::take(&mut pending.finishes);
        for (p, b, outcome) in pending.outcomes.drain(..) {
            let e = &p.claimed.enrollment;
            match &outcome {
                Outcome::Sent { reply, .. } => {
                    round.sent += 1;
                    info!(contact = %p.claimed.contact.email, sequence = %e.sequence, step = %e.step_id, message_id = %b.message_id, mailbox = %mailbox.name, reply = %reply, "sent");
                }
                Outcome::Transient {
                    reply, attempts, ..
                } => {
                    round.deferred += 1;
                    warn!(contact = %p.claimed.contact.email, sequence = %e.sequence, step = %e.step_id, message_id = %b.message_id, attempts, reply = %reply, "send failed temporarily; will retry");
                }
                Outcome::Permanent { reply, .. } => {
                    round.failed += 1;
                    warn!(contact = %p.claimed.contact.email, sequence = %e.sequence, step = %e.step_id, message_id = %b.message_id, reply = %reply, "send failed permanently; enrollment stopped");
                }
                Outcome::Held { .. } => round.held += 1,
                Outcome::InDoubt { reply, .. } => {
                    round.failed += 1;
                    warn!(contact = %p.claimed.contact.email, sequence = %e.sequence, step = %e.step_id, message_id = %b.message_id, reply = %reply, "message in doubt: no answer after its end of data; enrollment held (see `followup in-doubt`)");
                }
                Outcome::Cancelled { .. } => {
                    round.released += 1;
                    info!(contact = %p.claimed.contact.email, sequence = %e.sequence, step = %e.step_id, message_id = %b.message_id, "not sent: stopped or paused while waiting to be sent");
                }
            }
            let tr = self.transition(&p, &outcome);
            finishes.push(finish(tr, Some(b.row_id)));
        }
        let (prepared, begins) = match batch {
            None => (Vec::new(), Vec::new()),
            Some(batch) => {
                // Claims that send nothing (held, skipped, outside the window) ride along.
                finishes.extend(batch.finishes);
                (batch.prepared, batch.begins)
            }
        };
        // On an error the stages before and after stop (their channels close with this
        // one): the outcomes in hand have been recorded on their own if they could be,
        // the batch was not begun (its claims go back with their leases), and what is
        // still on the wire stays `sending`, in doubt later.
        let now = Utc::now();
        let begun = self
            .store
            .write_sends(
                &finishes,
                &begins,
                &self.owner,
                now,
                now + self.project.config.send.lease,
            )
            .await?;
        let mut begun_by_enrollment: HashMap<i64, _> =
            begun.into_iter().map(|b| (b.enrollment_id, b)).collect();
        let committed = std::time::Instant::now();
        let mut to_send = Vec::with_capacity(prepared.len());
        for mut p in prepared {
            match begun_by_enrollment.remove(&p.claimed.enrollment.id) {
                Some(b) => {
                    p.committed = committed;
                    to_send.push((p, b));
                }
                // Its claim is written back with the next transaction.
                None => {
                    let f = self.reconcile(&p).await?;
                    round.released += 1;
                    pending.finishes.extend(f);
                }
            }
        }
        Ok(to_send)
    }

    fn context_for<'a>(
        &'a self,
        p: &'a Prepared,
        window: &'a crate::schedule::Window,
        holidays: &'a crate::schedule::Holidays,
        tz: chrono_tz::Tz,
    ) -> Option<Context<'a>> {
        let seq = self.project.sequence(&p.claimed.enrollment.sequence)?;
        Some(Context {
            sequence: seq,
            window,
            tz,
            holidays,
            send: &self.project.config.send,
        })
    }

    fn transition(&self, p: &Prepared, outcome: &Outcome) -> Transition {
        let seq = self.project.sequence(&p.claimed.enrollment.sequence);
        let (window, tz, holidays) = match seq {
            Some(s) => self.project.contact_schedule(s, &p.claimed.contact),
            None => (
                self.project.config.window.clone(),
                self.project.config.timezone,
                self.project.config.holidays.clone(),
            ),
        };
        let scope = self
            .context_for(p, &window, &holidays, tz)
            .map_or(engine::Scope::Nothing, engine::Scope::All);
        let e = &p.claimed.enrollment;
        // Refused only if the sequence is gone, which prepare() checked: left as it is.
        engine::step(scope, e, &Input::Send(outcome.clone()), Utc::now())
            .ok()
            .flatten()
            .unwrap_or_else(|| Transition::unchanged(e))
    }

    /// Renders the step, or says why this enrollment is not sent now.
    fn prepare(
        &self,
        mailbox: &Mailbox,
        c: Claimed,
        now: DateTime<Utc>,
        engagement: &crate::sequence::Engagement,
        earlier: Vec<String>,
        keys: &KeyClock,
    ) -> Result<Prepared, (Finish, Skip)> {
        let e = &c.enrollment;
        let hold = |cause: Cause| {
            warn!(contact = %c.contact.email, sequence = %e.sequence, step = %e.step_id, reason = %cause, "enrollment held");
            let held = Input::Send(Outcome::Held { at: now, cause });
            let tr = engine::step(engine::Scope::Nothing, e, &held, now)
                .ok()
                .flatten()
                .unwrap_or_else(|| Transition::unchanged(e));
            (finish(tr, None), Skip::Held)
        };
        let Some(seq) = self.project.sequence(&e.sequence) else {
            return Err(hold(Cause::with(CauseKind::SequenceGone, &e.sequence)));
        };
        let Some((index, step)) = seq.step(&e.step_id) else {
            return Err(hold(Cause::with(CauseKind::StepGone, &e.step_id)));
        };
        let (window, tz, holidays) = self.project.contact_schedule(seq, &c.contact);
        // A branch is decided when its step is due, on what people did (machine opens
        // and clicks are not in `engagement`).
        if let Some(cond) = &step.condition {
            if !cond.holds(engagement) {
                let cx = Context {
                    sequence: seq,
                    window: &window,
                    tz,
                    holidays: &holidays,
                    send: &self.project.config.send,
                };
                let why = cond.describe();
                info!(contact = %c.contact.email, sequence = %e.sequence, step = %e.step_id, condition = %why, "step skipped: its condition does not hold");
                let skip = Input::Skip { why: why.clone() };
                let tr = engine::step(engine::Scope::All(cx), e, &skip, now)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| Transition::unchanged(e));
                return Err((finish(tr, None), Skip::Skipped));
            }
        }
        // The window is checked again at send time: the clock moved since the enrollment
        // was scheduled, and a retry's backoff may have ended outside it.
        match next_in_window(now, &window, tz, &holidays) {
            Some(t) if t > now => {
                let later = engine::step(engine::Scope::Nothing, e, &Input::Later { at: t }, now)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| Transition::unchanged(e));
                return Err((finish(later, None), Skip::Released));
            }
            None => return Err(hold(Cause::new(CauseKind::NoSendTime))),
            Some(_) => {}
        }
        let key = keys.next();
        let fields = send_fields(&self.project, &self.links, &c.contact, mailbox, key);
        let (variant, template) = step.choose(&seq.name, &c.contact.email);
        let rendered = match self.project.templates.render(template, &fields) {
            Ok(r) => r,
            Err(RenderError::MissingField {
                field,
                path,
                line,
                column,
            }) => {
                let root = &self.project.config.root;
                let path = crate::diagnostic::display_path(root, std::path::Path::new(&path));
                return Err(hold(Cause::with(
                    CauseKind::MissingField,
                    format!(
                        "'{field}' (used at {}:{line}:{column}, no default)",
                        path.display()
                    ),
                )));
            }
            Err(other) => {
                return Err(hold(Cause::with(
                    CauseKind::TemplateError,
                    other.to_string(),
                )))
            }
        };
        let thread = match (step.thread, &e.thread_message_id, &e.thread_subject) {
            (true, Some(id), Some(subject)) => Some(Thread {
                root_message_id: id.clone(),
                root_subject: subject.clone(),
                earlier,
            }),
            _ => None,
        };
        let subject = subject_for(&rendered.subject, thread.as_ref());
        let tracked = self.links.track(seq, key, &mailbox.from, &rendered.html);
        Ok(Prepared {
            claimed: c,
            index,
            rendered,
            subject,
            thread,
            variant: variant.map(String::from),
            tracked,
            committed: std::time::Instant::now(),
        })
    }

    /// A claimed enrollment whose `sending` row could not be written: its step already
    /// has a message (a crash after SMTP but before the advance, or an operator paused
    /// it mid-send), or it was stopped or suppressed meanwhile.
    async fn reconcile(&self, p: &Prepared) -> Result<Option<Finish>, store::Error> {
        let e = &p.claimed.enrollment;
        match self.store.step_message(e.id, &e.step_id).await? {
            Some(m) if m.status == MessageStatus::Sent => {
                // Already sent: advance as if we had just sent it; no second mail.
                let outcome = Outcome::Sent {
                    at: m.sent_at.unwrap_or_else(Utc::now),
                    message_id: m.message_id.clone(),
                    subject: m.subject.clone(),
                    reply: "already sent".into(),
                };
                let mut tr = self.transition(p, &outcome);
                tr.events.retain(|ev| ev.kind != EventKind::Sent);
                tr.message = None;
                Ok(Some(finish(tr, None)))
            }
            _ => {
                if self.store.is_suppressed(&p.claimed.contact.email).await? {
                    let stop = Input::Command(Command::Suppress {
                        cause: CauseKind::Suppressed,
                    });
                    let tr = engine::step(engine::Scope::Nothing, e, &stop, Utc::now())
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| Transition::unchanged(e));
                    return Ok(Some(finish(tr, None)));
                }
                // Stopped, paused or re-claimed meanwhile: only drop our claim, which
                // finish_sends does when it finds the enrollment no longer ours.
                Ok(Some(Finish {
                    message: None,
                    enrollment: e.unchanged(),
                    events: vec![],
                }))
            }
        }
    }
}

/// Composes each message of a run with the Message-ID the store gave (a retry keeps its
/// first one), sends the run over one connection ([`Sender::send_all`]) and returns each
/// with its outcome. Each message has a last look just before its commands go out, if
/// it waited: a reply or unsubscribe that came in meanwhile has taken the claim away.
/// (On a database error the `sending` commit's check stands.)
#[allow(clippy::too_many_arguments)]
async fn deliver(
    name: &str,
    mailbox: Option<&Mailbox>,
    sender: &Sender,
    store: &Store,
    owner: &str,
    wire: &WireMarks,
    run: Vec<(Prepared, store::Begun)>,
) -> Vec<(Prepared, store::Begun, Outcome)> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(run.len());
    // One span per message, for its compose, its last look and its outcome.
    let spans: Vec<tracing::Span> = run.iter().map(|(p, b)| send_span(p, b)).collect();
    // (index in `run`, envelope, formatted message) of those that go to SMTP.
    let mut outgoing = Vec::with_capacity(run.len());
    for (i, (p, b)) in run.iter().enumerate() {
        let _entered = spans[i].enter();
        outcomes.push(match mailbox {
            Some(m) => match compose_one(m, p, b) {
                Ok((envelope, raw)) => {
                    outgoing.push((i, envelope, raw));
                    None
                }
                Err(e) => Some(Outcome::Permanent {
                    at: Utc::now(),
                    reply: e.to_string(),
                }),
            },
            None => Some(Outcome::Permanent {
                at: Utc::now(),
                reply: format!("mailbox '{name}' is gone"),
            }),
        });
    }
    if let (Some(mailbox), false) = (mailbox, outgoing.is_empty()) {
        let messages: Vec<Message> = outgoing
            .iter()
            .map(|(i, envelope, raw)| Message {
                envelope,
                raw,
                message_id: &run[*i].1.message_id,
            })
            .collect();
        let wanted = |k: usize| {
            let i = outgoing[k].0;
            let (p, span) = (&run[i].0, spans[i].clone());
            async move {
                p.committed.elapsed() < RECHECK_AFTER
                    || store
                        .holds_claim(p.claimed.enrollment.id, owner)
                        .instrument(span)
                        .await
                        .unwrap_or(true)
            }
        };
        // Before each end of data: this message `left`, and how the one before it on
        // the connection ended, durable together.
        let leaving = |k: Option<usize>, told: Option<Told>| {
            let row = |k: usize| run[outgoing[k].0].1.row_id;
            let mut marks = Vec::with_capacity(2);
            if let Some(t) = told {
                let w = if t.accepted {
                    Wire::Accepted
                } else {
                    Wire::Refused
                };
                marks.push((row(t.index), w));
            }
            let left = k.map(row);
            if let Some(id) = left {
                marks.push((id, Wire::Left));
            }
            wire.mark(marks, left)
        };
        let sent = sender
            .send_all(&messages, wanted, leaving)
            .instrument(info_span!("smtp", mailbox = %name, messages = messages.len()))
            .await;
        for ((i, _, raw), outcome) in outgoing.iter().zip(sent) {
            let (p, b) = &run[*i];
            outcomes[*i] = Some(match outcome {
                Some(outcome) => {
                    outcome_of(store, mailbox, sender, p, b, raw, outcome)
                        .instrument(spans[*i].clone())
                        .await
                }
                None => Outcome::Cancelled {
                    at: Utc::now(),
                    reason: "stopped or paused while waiting to be sent".into(),
                },
            });
        }
    }
    run.into_iter()
        .zip(outcomes)
        .map(|((p, b), o)| {
            // Every message has its outcome by now; one without is not known to have
            // gone out, and is tried again.
            let o = o.unwrap_or_else(|| Outcome::Transient {
                at: Utc::now(),
                reply: "not sent".into(),
                attempts: b.attempts,
            });
            (p, b, o)
        })
        .collect()
}

/// The span that follows one message from the claim's batch to SMTP.
fn send_span(p: &Prepared, b: &store::Begun) -> tracing::Span {
    info_span!(
        "send",
        contact = %p.claimed.contact.email,
        sequence = %p.claimed.enrollment.sequence,
        step = %p.claimed.enrollment.step_id,
        message_id = %b.message_id,
    )
}

/// The message as it goes on the wire: its envelope and formatted bytes.
fn compose_one(
    mailbox: &Mailbox,
    p: &Prepared,
    b: &store::Begun,
) -> Result<(lettre::address::Envelope, Vec<u8>), compose::Error> {
    let c = &p.claimed.contact;
    let rendered = Rendered {
        subject: p.subject.clone(),
        text: p.rendered.text.clone(),
        html: p.tracked.html.clone(),
    };
    let draft = Draft {
        from: &mailbox.from,
        to_email: &c.email,
        to_name: c.name.as_deref(),
        message_id: &b.message_id,
        date: SystemTime::now(),
        rendered: &rendered,
        thread: p.thread.as_ref(),
        list_unsubscribe: p.tracked.list_unsubscribe.as_deref(),
    };
    let message = compose::compose(&draft)?;
    Ok((message.envelope().clone(), message.formatted()))
}

/// What SMTP's answer means for the message.
async fn outcome_of(
    store: &Store,
    mailbox: &Mailbox,
    sender: &Sender,
    p: &Prepared,
    b: &store::Begun,
    raw: &[u8],
    outcome: SendOutcome,
) -> Outcome {
    match outcome {
        SendOutcome::Sent { reply } => {
            // Before `sent` is committed, so that a message in doubt is in Sent if
            // and only if it reached the server (but for the instant in between).
            if let Err(e) = sender.append_sent(raw).await {
                warn!(mailbox = %mailbox.name, message_id = %b.message_id, error = %e, "cannot append to the Sent folder");
            }
            Outcome::Sent {
                at: Utc::now(),
                message_id: b.message_id.clone(),
                subject: p.subject.clone(),
                reply,
            }
        }
        SendOutcome::Transient { reply } => Outcome::Transient {
            at: Utc::now(),
            reply,
            attempts: b.attempts,
        },
        SendOutcome::Permanent { reply } => Outcome::Permanent {
            at: Utc::now(),
            reply,
        },
        SendOutcome::InDoubt { reply } => Outcome::InDoubt {
            at: Utc::now(),
            message_id: b.message_id.clone(),
            reply,
        },
        SendOutcome::LoginRefused { reply } => {
            // The mailbox's problem, not the contact's: the mailbox pauses (the pause
            // the bounce rate uses; `status` shows why) and the message waits for it,
            // without the refusal counting as one of its attempts.
            let reason = format!(
                "{reply}; fix its login, then `followup resume --mailbox {}`",
                mailbox.name
            );
            match store
                .pause_mailbox(&mailbox.name, &reason, Utc::now())
                .await
            {
                Ok(true) => warn!(mailbox = %mailbox.name, "mailbox paused: {reason}"),
                Ok(false) => {}
                Err(e) => {
                    warn!(mailbox = %mailbox.name, error = %e, "cannot record the mailbox pause")
                }
            }
            Outcome::Transient {
                at: Utc::now(),
                reply,
                attempts: (b.attempts - 1).max(0),
            }
        }
    }
}

/// Group commit of wire marks ([`Store::mark_wire`]) for a mailbox's connections: each
/// asks before a message's end of data and waits; what piles up meanwhile goes in the
/// next statement. One statement rather than a transaction: each mark stands alone.
#[derive(Clone)]
struct WireMarks {
    tx: mpsc::UnboundedSender<WireRequest>,
}

struct WireRequest {
    marks: Vec<(i64, Wire)>,
    /// The message marked `left`, if any: the answer says whether it was.
    left: Option<i64>,
    answer: tokio::sync::oneshot::Sender<bool>,
}

impl WireMarks {
    /// Starts the group commit; it ends when the last handle on it goes. `rotate_at`
    /// overrides the journal's rotation size (tests).
    fn start(store: Store, owner: String, rotate_at: Option<u64>) -> WireMarks {
        let (tx, mut rx) = mpsc::unbounded_channel::<WireRequest>();
        // On SQLite, a journal file (see `store::WireJournal`), opened once; on
        // PostgreSQL, the database. Without its journal no end of data goes out.
        let open = move |store: &Store, owner: &str| {
            store
                .wire_journal(owner)
                .map(|j| {
                    j.map(|j| match rotate_at {
                        Some(n) => j.rotate_at(n),
                        None => j,
                    })
                })
                .transpose()
        };
        let mut journal = open(&store, &owner);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                if matches!(journal, Some(Err(_))) {
                    // It could not be opened (a full disk, a permission): try again.
                    journal = open(&store, &owner);
                }
                let mut requests = vec![first];
                while let Ok(r) = rx.try_recv() {
                    requests.push(r);
                }
                let marks: Vec<(i64, Wire)> = requests
                    .iter()
                    .flat_map(|r| r.marks.iter().copied())
                    .collect();
                let marked = match journal.as_mut() {
                    Some(Ok(j)) => j.append(&marks).map_err(|e| e.to_string()).map(|()| {
                        marks
                            .iter()
                            .filter(|(_, w)| *w == Wire::Left)
                            .map(|(id, _)| *id)
                            .collect()
                    }),
                    Some(Err(e)) => Err(e.to_string()),
                    None => store
                        .mark_wire(&marks, &owner, Utc::now())
                        .await
                        .map_err(|e| e.to_string()),
                };
                let left: std::collections::HashSet<i64> = match marked {
                    Ok(left) => left,
                    Err(e) => {
                        // Nothing marked: no end of data goes out (its message is tried
                        // again later); the daemon goes on.
                        warn!(error = %e, "cannot record that messages are leaving; they wait");
                        Default::default()
                    }
                };
                for r in requests {
                    let _ = r.answer.send(r.left.is_none_or(|id| left.contains(&id)));
                }
            }
        });
        WireMarks { tx }
    }

    /// Records `marks`; true once `left` (if any) is durably marked.
    fn mark(
        &self,
        marks: Vec<(i64, Wire)>,
        left: Option<i64>,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let sent = self
            .tx
            .send(WireRequest {
                marks,
                left,
                answer,
            })
            .is_ok();
        async move { sent && answered.await.unwrap_or(false) }
    }
}

/// A stage's result from its task: a panic goes on up, as it would have in place. (A
/// task is only ever cancelled by the runtime shutting down, when nobody awaits this.)
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What [`Scheduler::commit`] has yet to write: outcomes back from SMTP, and claims
/// that send nothing.
#[derive(Default)]
struct Pending {
    outcomes: Vec<(Prepared, store::Begun, Outcome)>,
    finishes: Vec<Finish>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.outcomes.is_empty() && self.finishes.is_empty()
    }
}

/// Room in the channel to stage 3; None if it is gone.
async fn reserve<T>(tx: Option<&mpsc::Sender<T>>) -> Option<mpsc::Permit<'_, T>> {
    tx?.reserve().await.ok()
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Skip {
    Held,
    Released,
    Skipped,
}

fn finish(tr: Transition, row_id: Option<i64>) -> Finish {
    let message = match (row_id, tr.message) {
        (Some(row_id), Some(m)) => Some(MessageUpdate {
            row_id,
            status: m.status,
            smtp_reply: m.reply,
        }),
        _ => None,
    };
    let events = tr
        .events
        .into_iter()
        .map(|mut ev| {
            ev.message_id = ev.message_id.or(row_id);
            ev
        })
        .collect();
    Finish {
        message,
        enrollment: tr.enrollment,
        events,
    }
}

/// What a template sees: the contact's fields, its address, and the sender.
pub fn template_fields(c: &Contact, mailbox: &Mailbox) -> Map<String, Value> {
    let mut fields = c.fields.clone();
    fields.insert("email".into(), Value::String(c.email.clone()));
    fields.insert(
        "sender".into(),
        json!({ "name": mailbox.from.name.clone().unwrap_or_default(), "email": mailbox.from.email.to_string() }),
    );
    fields
}

/// What a template sees when it is sent: [`template_fields`] plus the message's
/// unsubscribe URL and the sender's postal address.
pub fn send_fields(
    project: &Project,
    links: &crate::track::Links,
    c: &Contact,
    mailbox: &Mailbox,
    key: [u8; 8],
) -> Map<String, Value> {
    let mut fields = template_fields(c, mailbox);
    fields.insert(
        "unsubscribe_url".into(),
        Value::String(links.unsubscribe_url(key, &mailbox.from)),
    );
    if let Some(a) = &project.config.postal_address {
        fields.insert("postal_address".into(), Value::String(a.clone()));
    }
    fields
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "followup".into())
}

/// For callers that need an `EnrollmentUpdate` without the engine (operator commands).
pub fn unchanged(e: &crate::model::Enrollment) -> EnrollmentUpdate {
    e.unchanged()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal is opened once per group commit, so it grows across requests and
    /// rotates; the latest marks stay readable by a daemon taking over.
    #[tokio::test]
    async fn wire_marks_rotate_their_journal() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let db = tmp.path().join("followup.db");
        let store = Store::open(&format!("sqlite://{}", db.display()))
            .await
            .expect("open the store");
        let wire = WireMarks::start(store.clone(), "h:1:1".into(), Some(64));
        for id in 1..=40 {
            assert!(wire.mark(vec![(id, Wire::Left)], Some(id)).await);
        }
        let nodes = tmp.path().join("followup.db.nodes");
        assert!(nodes.join("h_1_1.wire.old").exists(), "rotated");
        assert!(
            std::fs::metadata(nodes.join("h_1_1.wire"))
                .expect("journal")
                .len()
                < 80
        );
        let marks = store.dead_journals(&["h:1:1".to_string()]);
        assert!(marks.contains(&(40, Wire::Left)), "{marks:?}");
        store.close().await;
    }
}
