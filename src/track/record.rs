//! Writes the endpoint's opens and clicks: drains the hit channel in batches, finds
//! each hit's message by its key, labels machine hits with their reason, appends the
//! events in one transaction per batch. The sequences' `on_open` and `on_click` rules
//! follow from those events through the rules runner (machines never drive rules).
//!
//! A batch is whatever has queued up while the previous one was being written, so
//! under load batches grow and commits stay few; when idle a hit is written at once.
//! On shutdown the channel is drained before the task returns.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::http::{Metrics, RawHit};
use super::machine::{self, Bursts, Hit, HitKind};
use super::{key_hex, HONEYPOT};
use crate::model::EventKind;
use crate::project::Project;
use crate::store::{self, HitEvent, Store, TrackedMessage};

/// Hits taken into one transaction at most.
const MAX_BATCH: usize = 20_000;

pub struct Recorder {
    pub project: Arc<Project>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    bursts: Bursts,
}

impl Recorder {
    pub fn new(project: Arc<Project>, store: Store, metrics: Arc<Metrics>) -> Recorder {
        Recorder {
            project,
            store,
            metrics,
            bursts: Bursts::default(),
        }
    }

    /// Runs until every sender is gone (the HTTP server stopped), writing what remains.
    pub async fn run(mut self, mut hits: mpsc::Receiver<RawHit>) {
        let flush = self
            .project
            .config
            .http
            .as_ref()
            .map(|h| h.flush)
            .unwrap_or_else(|| chrono::Duration::seconds(1))
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(1));
        let mut batch = Vec::with_capacity(256);
        while let Some(first) = hits.recv().await {
            batch.push(first);
            // Take what is already queued; wait a moment for more only while the
            // batch is small, never longer than `flush` after its first hit.
            let deadline =
                tokio::time::Instant::now() + flush.min(std::time::Duration::from_millis(5));
            while batch.len() < MAX_BATCH {
                match hits.try_recv() {
                    Ok(h) => batch.push(h),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(deadline, hits.recv()).await {
                            Ok(Some(h)) => batch.push(h),
                            _ => break,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            // A failed write is retried a few times: the hits are only in memory.
            let mut tries = 0;
            loop {
                match self.write(&batch).await {
                    Ok(()) => break,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        warn!(error = %e, hits = batch.len(), tries, "cannot record hits; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
                    }
                    Err(e) => {
                        warn!(error = %e, hits = batch.len(), "cannot record hits; dropped");
                        self.metrics
                            .dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        break;
                    }
                }
            }
            batch.clear();
        }
    }

    /// Resolves, labels and writes one batch, then applies rules.
    pub async fn write(&mut self, batch: &[RawHit]) -> Result<(), store::Error> {
        let mut keys: Vec<String> = batch.iter().map(|h| key_hex(h.key)).collect();
        keys.sort_unstable();
        keys.dedup();
        let messages: HashMap<String, TrackedMessage> = self
            .store
            .tracked_messages(&keys)
            .await?
            .into_iter()
            .map(|m| (m.key.clone(), m))
            .collect();
        let mut events = Vec::with_capacity(batch.len());
        for h in batch {
            let Some(m) = messages.get(&key_hex(h.key)) else {
                self.metrics.unknown.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let honeypot = h.kind == HitKind::Click && h.link == HONEYPOT;
            let mut reason = machine::classify(&Hit {
                kind: h.kind,
                at: h.at,
                head: h.head,
                user_agent: h.user_agent.as_deref(),
                ip: h.ip,
                sent_at: m.sent_at,
                honeypot,
            });
            if h.kind == HitKind::Click {
                let burst = self
                    .bursts
                    .click(h.key, h.link, m.links.max(0) as usize, h.at);
                if burst && reason.is_none() {
                    reason = Some(machine::Reason::AllLinksAtOnce);
                }
            }
            let human = reason.is_none();
            let (kind, counter) = match (h.kind, human) {
                (HitKind::Open, true) => (EventKind::Opened, &self.metrics.opened_human),
                (HitKind::Open, false) => (EventKind::Opened, &self.metrics.opened_machine),
                (HitKind::Click, true) => (EventKind::Clicked, &self.metrics.clicked_human),
                (HitKind::Click, false) => (EventKind::Clicked, &self.metrics.clicked_machine),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            events.push(HitEvent {
                message_row: m.row_id,
                contact_id: m.contact_id,
                enrollment_id: m.enrollment_id,
                kind,
                link: (h.kind == HitKind::Click).then_some(i64::from(h.link)),
                machine: reason.map(|r| r.as_str().to_string()),
                at: h.at,
                data: json!({
                    "sequence": m.sequence,
                    "step": m.step_id,
                    "user_agent": h.user_agent,
                    "ip": h.ip.map(|i| i.to_string()),
                    "head": h.head,
                }),
            });
        }
        self.store.insert_hits(&events).await?;
        debug!(hits = events.len(), "recorded hits");
        // A person's first open or click fires the sequence's `on_open` / `on_click`
        // through the rules runner, which reads these events in order.
        Ok(())
    }
}
