//! Sequences: the follow-up plans marketers write as YAML in `sequences/`.
//!
//! This module owns the model (what a sequence is once validated) and its loader, which
//! keeps the line and column of every YAML node so that `followup check` can point at a
//! semantic mistake (an unknown template, a bad wait) and not only at syntax errors.

mod load;

use chrono::Duration;

use crate::schedule::Window;

pub use load::{load_dir, load_str, Known};

/// A validated sequence.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub name: String,
    pub description: Option<String>,
    /// Mailboxes that send it; each contact is given one at enrollment and keeps it.
    pub senders: Vec<String>,
    /// Send window in the contact's time zone; None means the config's default window.
    pub window: Option<Window>,
    pub steps: Vec<Step>,
    /// What happens to the contact when they reply (applied by the reply watcher).
    pub on_reply: Option<Rule>,
    /// What happens when the last step has been sent.
    pub on_finish: Option<Rule>,
    /// A reply from someone else at the contact's company (not a free-mail domain)
    /// stops the contact's sequence too.
    pub stop_on_domain_reply: bool,
}

impl Sequence {
    pub fn step(&self, id: &str) -> Option<(usize, &Step)> {
        self.steps.iter().enumerate().find(|(_, s)| s.id == id)
    }
}

/// One mail of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    /// Time after the previous step's send (for the first step: after enrollment).
    pub wait: Duration,
    pub template: String,
    /// Sent as a reply in the first mail's thread: `Re: ` + its subject, In-Reply-To, References.
    pub thread: bool,
}

/// A lifecycle change: set the stage, add tags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    pub stage: Option<String>,
    pub tags: Vec<String>,
}
