//! Sequences: the follow-up plans marketers write as YAML in `sequences/`.
//!
//! This module owns the model (what a sequence is once validated) and its loader, which
//! keeps the line and column of every YAML node so that `followup check` can point at a
//! semantic mistake (an unknown template, a bad wait) and not only at syntax errors.

mod load;

use chrono::Duration;
use sha2::{Digest, Sha256};

use crate::schedule::Window;

pub use load::{load_dir, load_str, too_deep, too_deep_error, Known, MAX_DEPTH};

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
    /// Applied on a person's first open of one of this sequence's messages.
    pub on_open: Vec<Rule>,
    /// Applied on a person's click (each rule may ask for a part of the URL).
    pub on_click: Vec<Rule>,
    /// A reply from someone else at the contact's company (not a free-mail domain)
    /// stops the contact's sequence too.
    pub stop_on_domain_reply: bool,
    pub track: Tracking,
    pub unsubscribe: Unsubscribe,
    /// BCP 47 tag of the language the mails are written in (the unsubscribe page
    /// follows it); None: English.
    pub language: Option<String>,
    /// Where `sender:` and `unsubscribe:` are written, for `check`'s warnings about
    /// the whole sequence (opt-out, volume) to show the line.
    pub spans: Spans,
}

/// Places in the sequence file, with its text.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    pub source: Option<std::sync::Arc<str>>,
    pub sender: Option<crate::diagnostic::Location>,
    pub unsubscribe: Option<crate::diagnostic::Location>,
}

impl Sequence {
    pub fn step(&self, id: &str) -> Option<(usize, &Step)> {
        self.steps.iter().enumerate().find(|(_, s)| s.id == id)
    }

    /// Every template any step may send, for `check`.
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().flat_map(Step::templates)
    }
}

/// What is tracked in this sequence's mails. Both off is plain one-to-one mail: no
/// pixel, no rewritten links (the unsubscribe link still works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracking {
    pub opens: bool,
    pub clicks: bool,
}

impl Default for Tracking {
    fn default() -> Self {
        Tracking {
            opens: true,
            clicks: true,
        }
    }
}

/// How a contact opts out (see README, "Unsubscribe: one-click or a link").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unsubscribe {
    /// `List-Unsubscribe` (https and mailto) with `List-Unsubscribe-Post` (RFC 8058),
    /// and a link in the body: for newsletters and bulk campaigns.
    OneClick,
    /// A link in the body only: one-to-one outreach, where List-* headers would make
    /// the mail look like bulk and silence out-of-office responders.
    #[default]
    Link,
    /// A line inviting a reply to opt out; the reply watcher honours it.
    Reply,
}

impl Unsubscribe {
    pub fn as_str(self) -> &'static str {
        match self {
            Unsubscribe::OneClick => "one-click",
            Unsubscribe::Link => "link",
            Unsubscribe::Reply => "reply",
        }
    }
}

/// One mail of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    /// Time after the previous step's send (for the first step: after enrollment).
    pub wait: Duration,
    /// The template sent when the step has no variants.
    pub template: String,
    /// A/B variants, each with its template and weight; empty: `template` is sent.
    pub variants: Vec<Variant>,
    /// Sent as a reply in the first mail's thread: `Re: ` + its subject, In-Reply-To, References.
    pub thread: bool,
    /// Sent only if this holds when the step is due; otherwise skipped (recorded).
    pub condition: Option<Condition>,
}

impl Step {
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        let single = self.variants.is_empty().then_some(self.template.as_str());
        single
            .into_iter()
            .chain(self.variants.iter().map(|v| v.template.as_str()))
    }

    /// The variant a contact gets, and its template. Stable: the same contact always
    /// gets the same variant of a step, across restarts and daemons, because it is a
    /// hash of the sequence, the step and the contact's address, not a random draw.
    pub fn choose(&self, sequence: &str, email: &str) -> (Option<&str>, &str) {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        if total == 0 {
            return (None, &self.template);
        }
        let mut h = Sha256::new();
        for part in [sequence, &self.id, email] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut n = [0u8; 8];
        n.copy_from_slice(&digest[..8]);
        let mut pick = u64::from_be_bytes(n) % total;
        for v in &self.variants {
            if pick < u64::from(v.weight) {
                return (Some(&v.id), &v.template);
            }
            pick -= u64::from(v.weight);
        }
        (None, &self.template)
    }
}

/// One A/B variant of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub id: String,
    pub template: String,
    pub weight: u32,
}

/// What a contact did with earlier mails of the enrollment, for a step's `if:`. Only
/// people count: opens and clicks labelled as machines never take a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub negate: bool,
    pub behaviour: Behaviour,
    /// An earlier step whose mail it is about; None: any earlier step.
    pub step: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    Opened,
    /// Clicked a link; with a URL part, a link whose URL contains it.
    Clicked(Option<String>),
}

/// What the contact did, as the store reports it for one enrollment (human hits only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engagement {
    /// Step ids with a human open.
    pub opened: Vec<String>,
    /// (step id, URL) of human clicks.
    pub clicked: Vec<(String, String)>,
}

impl Condition {
    pub fn holds(&self, e: &Engagement) -> bool {
        let on_step = |s: &str| self.step.as_deref().is_none_or(|want| want == s);
        let hit = match &self.behaviour {
            // A click implies the mail was seen, even when images were blocked.
            Behaviour::Opened => {
                e.opened.iter().any(|s| on_step(s)) || e.clicked.iter().any(|(s, _)| on_step(s))
            }
            Behaviour::Clicked(part) => e
                .clicked
                .iter()
                .any(|(s, url)| on_step(s) && part.as_deref().is_none_or(|p| url.contains(p))),
        };
        hit != self.negate
    }

    /// How `status` and the logs name it: `opened`, `not_clicked "pricing" in first`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if self.negate {
            s.push_str("not_");
        }
        match &self.behaviour {
            Behaviour::Opened => s.push_str("opened"),
            Behaviour::Clicked(None) => s.push_str("clicked"),
            Behaviour::Clicked(Some(p)) => s.push_str(&format!("clicked \"{p}\"")),
        }
        if let Some(step) = &self.step {
            s.push_str(&format!(" in {step}"));
        }
        s
    }
}

/// A lifecycle change: set the stage, add tags, enroll in another sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    pub stage: Option<String>,
    pub tags: Vec<String>,
    /// Another sequence to put the contact into.
    pub enroll: Option<String>,
    /// For `on_click`: only clicks on a URL containing this.
    pub url_contains: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(weights: &[u32]) -> Step {
        Step {
            id: "first".into(),
            wait: Duration::zero(),
            template: "t".into(),
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Variant {
                    id: format!("v{i}"),
                    template: format!("t{i}"),
                    weight: *w,
                })
                .collect(),
            thread: false,
            condition: None,
        }
    }

    #[test]
    fn variants_are_stable_and_follow_weights() {
        let s = step(&[70, 30]);
        let mut counts = [0usize; 2];
        for i in 0..10_000 {
            let email = format!("c{i}@example.com");
            let (v, t) = s.choose("intro", &email);
            assert_eq!(s.choose("intro", &email), (v, t), "stable per contact");
            match v {
                Some("v0") => counts[0] += 1,
                Some("v1") => counts[1] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!((6_700..7_300).contains(&counts[0]), "{counts:?}");
        // A weight of zero is never chosen; no variants: the step's template.
        let s = step(&[0, 1]);
        assert!((0..200).all(|i| s.choose("x", &format!("{i}@a.b")).0 == Some("v1")));
        assert_eq!(step(&[]).choose("x", "a@b.c"), (None, "t"));
    }

    #[test]
    fn conditions_read_human_engagement() {
        let e = Engagement {
            opened: vec!["first".into()],
            clicked: vec![("bump".into(), "https://example.com/pricing?x=1".into())],
        };
        let c = |negate, behaviour, step: Option<&str>| Condition {
            negate,
            behaviour,
            step: step.map(String::from),
        };
        assert!(c(false, Behaviour::Opened, None).holds(&e));
        assert!(
            c(false, Behaviour::Opened, Some("bump")).holds(&e),
            "a click is an open"
        );
        assert!(!c(false, Behaviour::Opened, Some("third")).holds(&e));
        assert!(c(true, Behaviour::Opened, Some("third")).holds(&e));
        assert!(c(false, Behaviour::Clicked(Some("pricing".into())), None).holds(&e));
        assert!(!c(
            false,
            Behaviour::Clicked(Some("pricing".into())),
            Some("first")
        )
        .holds(&e));
        assert!(!c(false, Behaviour::Clicked(Some("careers".into())), None).holds(&e));
        assert!(c(true, Behaviour::Clicked(None), Some("first")).holds(&e));
        assert!(!c(false, Behaviour::Clicked(None), None).holds(&Engagement::default()));
        assert_eq!(
            c(
                true,
                Behaviour::Clicked(Some("pricing".into())),
                Some("first")
            )
            .describe(),
            "not_clicked \"pricing\" in first"
        );
    }
}
