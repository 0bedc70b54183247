//! A contact's whole story, as data: who they are, then every event in time order
//! (enrollments, messages, opens and clicks with whether a person or a machine made
//! them, replies, bounces, stage changes). `followup contacts show` prints it; with
//! `--json` (and in a later HTTP API) it is this type's serialisation.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::store::{self, Store};
use crate::track::machine::Reason;

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub email: String,
    pub name: Option<String>,
    pub stage: String,
    pub owner: Option<String>,
    pub suppressed: Option<String>,
    pub timezone: Option<String>,
    pub fields: Map<String, Value>,
    pub events: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub kind: String,
    /// The event as recorded; opens and clicks also carry the link's `url` and, for a
    /// machine, the `machine` reason.
    pub data: Value,
}

impl Timeline {
    /// The zone the contact's times read in: its own, else `default`.
    pub fn zone(&self, default: Tz) -> Tz {
        self.timezone
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(default)
    }
}

impl Entry {
    /// One line saying what happened: opens and clicks read as what they were (which
    /// step, which link, person or machine and why), other events as recorded.
    pub fn describe(&self) -> String {
        let d = &self.data;
        match self.kind.as_str() {
            "opened" | "clicked" => {
                let mut w = format!(
                    "{}/{}",
                    d["sequence"].as_str().unwrap_or("?"),
                    d["step"].as_str().unwrap_or("?")
                );
                if let Some(u) = d["url"].as_str() {
                    w.push_str(&format!(" {u}"));
                } else if self.kind == "clicked" {
                    // Recorded by versions that put a hidden trap link in the HTML.
                    w.push_str(" (hidden trap link)");
                }
                match d["machine"].as_str() {
                    Some(m) => {
                        let why = m
                            .parse::<Reason>()
                            .map(|r| r.describe().to_string())
                            .unwrap_or_else(|_| m.to_string());
                        w.push_str(&format!("  [machine: {why}]"));
                    }
                    None => w.push_str("  [person]"),
                }
                w
            }
            _ => d.to_string(),
        }
    }
}

/// The timeline of the contact with this (normalised) address, if there is one.
pub async fn of(store: &Store, email: &str) -> Result<Option<Timeline>, store::Error> {
    let Some(c) = store.contact(email).await? else {
        return Ok(None);
    };
    let events = store
        .timeline(c.id)
        .await?
        .into_iter()
        .map(|(at, kind, data)| Entry { at, kind, data })
        .collect();
    Ok(Some(Timeline {
        email: c.email,
        name: c.name,
        stage: c.stage,
        owner: c.owner_mailbox,
        suppressed: c.suppressed_reason,
        timezone: c.timezone,
        fields: c.fields,
        events,
    }))
}
