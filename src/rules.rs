//! Which lifecycle rules an event fires (`on_reply`, `on_finish`, `on_open`,
//! `on_click`). Pure: the rules runner (`app::rules`) reads the events table in order
//! and hands each event here with what it looked up.

use crate::model::{EventKind, StoredEvent};
use crate::sequence::{Rule, Sequence};

/// What the runner looked up for one event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The sequence of the event's enrollment or message, if it still exists.
    pub sequence: Option<&'a Sequence>,
    /// For an open or a click: it is a person's first on that message (and link).
    pub first_hit: bool,
    /// For a click: the URL of the link.
    pub url: Option<&'a str>,
}

/// The rules `e` fires, in the order the sequence lists them.
pub fn fired(e: &StoredEvent, f: &Facts<'_>) -> Vec<Rule> {
    let Some(seq) = f.sequence else {
        return Vec::new();
    };
    match e.kind {
        // A warm answer from the contact, not a no and not a colleague's.
        EventKind::Replied => {
            let colleague = e.data["colleague"].as_bool().unwrap_or(false);
            let declined = e.data["intent"].as_str() == Some("declined");
            if colleague || declined {
                Vec::new()
            } else {
                seq.on_reply.iter().cloned().collect()
            }
        }
        EventKind::Finished => seq.on_finish.iter().cloned().collect(),
        EventKind::Opened if e.machine.is_none() && f.first_hit => seq.on_open.clone(),
        EventKind::Clicked if e.machine.is_none() && f.first_hit => match f.url {
            Some(url) => seq
                .on_click
                .iter()
                .filter(|r| r.url_contains.as_deref().is_none_or(|p| url.contains(p)))
                .cloned()
                .collect(),
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventCursor;
    use serde_json::json;

    fn seq() -> Sequence {
        let rule = |tag: &str, url: Option<&str>| Rule {
            tags: vec![tag.into()],
            url_contains: url.map(Into::into),
            ..Rule::default()
        };
        Sequence {
            name: "intro".into(),
            description: None,
            senders: vec!["sales".into()],
            window: None,
            steps: vec![],
            on_reply: Some(rule("warm", None)),
            stop_on_domain_reply: true,
            on_finish: Some(rule("done", None)),
            on_open: vec![rule("opened", None)],
            on_click: vec![rule("pricing", Some("/pricing")), rule("any", None)],
            track: Default::default(),
            unsubscribe: Default::default(),
            language: None,
            spans: Default::default(),
        }
    }

    fn ev(kind: EventKind, data: serde_json::Value, machine: Option<&str>) -> StoredEvent {
        StoredEvent {
            at: chrono::DateTime::default(),
            id: 1,
            cursor: EventCursor { tx: 0, id: 1 },
            kind,
            contact_id: Some(3),
            enrollment_id: Some(7),
            message_id: Some(11),
            link: Some(0),
            machine: machine.map(Into::into),
            data,
        }
    }

    fn tags(rules: Vec<Rule>) -> Vec<String> {
        rules.into_iter().flat_map(|r| r.tags).collect()
    }

    #[test]
    fn each_event_fires_its_rules_once_and_only_for_people() {
        let s = seq();
        let with = |first_hit, url| Facts {
            sequence: Some(&s),
            first_hit,
            url,
        };
        let reply = ev(
            EventKind::Replied,
            json!({ "intent": "reply", "colleague": false }),
            None,
        );
        assert_eq!(tags(fired(&reply, &with(false, None))), ["warm"]);
        let no = ev(
            EventKind::Replied,
            json!({ "intent": "declined", "colleague": false }),
            None,
        );
        assert!(
            fired(&no, &with(false, None)).is_empty(),
            "a no is not a warm lead"
        );
        let colleague = ev(
            EventKind::Replied,
            json!({ "intent": "reply", "colleague": true }),
            None,
        );
        assert!(fired(&colleague, &with(false, None)).is_empty());
        let finished = ev(EventKind::Finished, json!({}), None);
        assert_eq!(tags(fired(&finished, &with(false, None))), ["done"]);
        let open = ev(EventKind::Opened, json!({}), None);
        assert_eq!(tags(fired(&open, &with(true, None))), ["opened"]);
        assert!(
            fired(&open, &with(false, None)).is_empty(),
            "only the first open"
        );
        let scanner = ev(EventKind::Opened, json!({}), Some("link scanner"));
        assert!(fired(&scanner, &with(true, None)).is_empty());
        let click = ev(EventKind::Clicked, json!({}), None);
        assert_eq!(
            tags(fired(
                &click,
                &with(true, Some("https://x.example/pricing"))
            )),
            ["pricing", "any"]
        );
        assert_eq!(
            tags(fired(&click, &with(true, Some("https://x.example/about")))),
            ["any"]
        );
        let sent = ev(EventKind::Sent, json!({}), None);
        assert!(fired(&sent, &with(true, None)).is_empty());
        let gone = Facts::default();
        assert!(fired(&reply, &gone).is_empty(), "its sequence is gone");
    }
}
