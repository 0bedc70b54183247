//! Lifecycle rules (`on_reply`, `on_finish`, `on_open`, `on_click`): set the stage, add
//! tags, enroll in another sequence. Stage and tags are one batched store call; an
//! enrollment goes through [`contacts::enroll`], which gives the contact a mailbox and a
//! first send time in its own window, as `followup enroll` does. All of it is
//! idempotent (a stage set twice is one change, a contact is in a sequence at most
//! once), so a rule applied again after a crash changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::contacts;
use crate::project::Project;
use crate::sequence::Rule;
use crate::store::{self, Store};

pub async fn apply(
    project: &Project,
    store: &Store,
    rules: &[(i64, Rule)],
    now: DateTime<Utc>,
) -> Result<(), store::Error> {
    if rules.is_empty() {
        return Ok(());
    }
    store.apply_rules(rules, now).await?;
    let mut by_target: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (contact, rule) in rules {
        if let Some(t) = &rule.enroll {
            by_target.entry(t.as_str()).or_default().push(*contact);
        }
    }
    for (target, mut ids) in by_target {
        ids.sort_unstable();
        ids.dedup();
        let Some(seq) = project.sequence(target) else {
            warn!(
                sequence = target,
                "rule enrolls into a sequence that is gone"
            );
            continue;
        };
        let found = store.contacts_by_id(&ids).await?;
        let r = contacts::enroll(project, store, seq, &found, false, now).await?;
        if r.enrolled > 0 {
            info!(
                sequence = target,
                enrolled = r.enrolled,
                "rule enrolled contacts"
            );
        }
    }
    Ok(())
}
