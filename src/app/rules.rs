//! The rules runner: reads the events table in order through a durable cursor and
//! carries out the lifecycle rules each event fires (set a stage, add tags, enroll in
//! another sequence). Stages, tags, their events and the cursor commit in one
//! transaction, so a crash neither loses nor repeats them; an enrollment a rule asks
//! for is written just before, and is idempotent (a contact is never enrolled twice
//! by a rule), so running a page again after a crash changes nothing.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::model::{EventKind, StoredEvent};
use crate::project::Project;
use crate::rules::{self, Facts};
use crate::sequence::Rule;
use crate::store::{self, Store};

/// The cursor's name in the `cursors` table.
pub const CURSOR: &str = "rules";

/// Events read per page.
const PAGE: usize = 500;

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RulesRun {
    /// Events read.
    pub events: usize,
    /// Rules carried out.
    pub rules: usize,
    /// Contacts a rule enrolled.
    pub enrolled: usize,
}

/// Reads every event after the cursor, page by page, and carries out their rules.
/// Another daemon's runner on the same database may take a page first: then this one
/// reads on from where that one left off.
pub async fn run(
    project: &Project,
    store: &Store,
    now: DateTime<Utc>,
) -> Result<RulesRun, store::Error> {
    let mut total = RulesRun::default();
    loop {
        let from = store.cursor(CURSOR).await?;
        let page = store.events_after(from, PAGE).await?;
        if page.end == from {
            return Ok(total);
        }
        let fired = fire(project, store, &page.events).await?;
        let enrolled = enroll(project, store, &fired, now).await?;
        match store
            .commit_rules(CURSOR, from, page.end, &fired, now)
            .await
        {
            Ok(()) => {
                total.events += page.events.len();
                total.rules += fired.len();
                total.enrolled += enrolled;
            }
            // Another runner committed this page: what it did stands.
            Err(store::Error::Moved) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The rules a page of events fires, with the contact each applies to, in event order.
async fn fire(
    project: &Project,
    store: &Store,
    events: &[StoredEvent],
) -> Result<Vec<(i64, Rule)>, store::Error> {
    let mut enrollment_ids: Vec<i64> = events.iter().filter_map(|e| e.enrollment_id).collect();
    enrollment_ids.sort_unstable();
    enrollment_ids.dedup();
    let sequences: HashMap<i64, String> = store
        .enrollments_by_id(&enrollment_ids)
        .await?
        .into_iter()
        .map(|e| (e.id, e.sequence))
        .collect();
    let hits: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Opened | EventKind::Clicked) && e.machine.is_none())
        .collect();
    let mut rows: Vec<i64> = hits.iter().filter_map(|e| e.message_id).collect();
    rows.sort_unstable();
    rows.dedup();
    let first = store.first_human_hits(&rows).await?;
    let clicked: Vec<(i64, i64)> = hits
        .iter()
        .filter(|e| e.kind == EventKind::Clicked)
        .filter_map(|e| Some((e.message_id?, e.link?)))
        .collect();
    let urls = store.link_urls(&clicked).await?;
    let mut out = Vec::new();
    for e in events {
        let Some(contact) = e.contact_id else {
            continue;
        };
        let name = e
            .enrollment_id
            .and_then(|id| sequences.get(&id).map(String::as_str))
            .or_else(|| e.data["sequence"].as_str());
        let first_hit = e
            .message_id
            .is_some_and(|m| first.get(&(m, e.kind, e.link)) == Some(&e.cursor));
        let url = match (e.message_id, e.link) {
            (Some(m), Some(l)) => urls.get(&(m, l)).map(String::as_str),
            _ => None,
        };
        let facts = Facts {
            sequence: name.and_then(|n| project.sequence(n)),
            first_hit,
            url,
        };
        out.extend(rules::fired(e, &facts).into_iter().map(|r| (contact, r)));
    }
    Ok(out)
}

/// Enrolls the contacts rules send into other sequences. Returns how many.
async fn enroll(
    project: &Project,
    store: &Store,
    fired: &[(i64, Rule)],
    now: DateTime<Utc>,
) -> Result<usize, store::Error> {
    let mut by_target: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (contact, rule) in fired {
        if let Some(t) = &rule.enroll {
            by_target.entry(t.as_str()).or_default().push(*contact);
        }
    }
    let mut enrolled = 0;
    for (target, mut ids) in by_target {
        ids.sort_unstable();
        ids.dedup();
        let Some(seq) = project.sequence(target) else {
            warn!(
                sequence = target,
                "a rule enrolls into a sequence that is gone"
            );
            continue;
        };
        let found = store.contacts_by_id(&ids).await?;
        // A rule never enrolls anyone twice: run again after a crash, it changes nothing.
        let r = crate::app::enroll::enroll(project, store, seq, &found, false, now).await?;
        if r.enrolled > 0 {
            info!(
                sequence = target,
                enrolled = r.enrolled,
                "rule enrolled contacts"
            );
        }
        enrolled += r.enrolled;
    }
    Ok(enrolled)
}
