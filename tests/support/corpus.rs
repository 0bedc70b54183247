//! The labelled classifier corpus (`tests/fixtures/classify/corpus/labels.json`):
//! every message with the answer it should get. Shared by `tests/classify.rs` (which
//! scores the classifier against it) and `benches/classify.rs` (which times it).

#![allow(dead_code)] // the test and the bench use different parts

use std::path::{Path, PathBuf};

use followup::mail::classify::Classification;

/// One labelled message.
pub struct Labelled {
    /// Path relative to `corpus/`, as written in labels.json.
    pub name: String,
    /// Where it comes from: flufl, golden, written (see PROVENANCE.md).
    pub source: String,
    pub label: serde_json::Value,
    pub raw: Vec<u8>,
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify/corpus")
}

/// Every labelled message, in the order of labels.json.
pub fn load() -> Vec<Labelled> {
    let dir = corpus_dir();
    let path = dir.join("labels.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let labels: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    labels
        .into_iter()
        .map(|(name, label)| {
            let file = dir.join(&name);
            let raw = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let source = label["source"].as_str().unwrap_or("?").to_string();
            Labelled {
                name,
                source,
                label,
                raw,
            }
        })
        .collect()
}

/// Why `c` is not the labelled answer, or None when it is. Right means: the kind;
/// for bounces every failed recipient (as a set) and the permanence; for auto-replies
/// the return date; for replies the intent; for complaints the recipients.
pub fn wrong(label: &serde_json::Value, c: &Classification) -> Option<String> {
    let actual = serde_json::to_value(c).unwrap_or_default();
    let kind = label["kind"].as_str().unwrap_or("");
    if actual["kind"] != label["kind"] {
        return Some(format!("kind {} (want {kind})", actual["kind"]));
    }
    let mut why = Vec::new();
    let set = |v: &serde_json::Value| {
        let mut s: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_lowercase))
                    .collect()
            })
            .unwrap_or_default();
        s.sort();
        s.dedup();
        s
    };
    let null = serde_json::Value::Null;
    let field = |v: &'_ serde_json::Value, k: &str| v.get(k).cloned().unwrap_or(null.clone());
    match kind {
        "bounce" | "complaint" => {
            if set(&label["recipients"]) != set(&actual["recipients"]) {
                why.push(format!(
                    "recipients {:?} (want {:?})",
                    set(&actual["recipients"]),
                    set(&label["recipients"])
                ));
            }
            if kind == "bounce" && field(label, "permanent") != field(&actual, "permanent") {
                why.push(format!(
                    "permanent {} (want {})",
                    field(&actual, "permanent"),
                    field(label, "permanent")
                ));
            }
        }
        "auto_reply" | "reply" => {
            let key = if kind == "reply" {
                "intent"
            } else {
                "return_date"
            };
            if field(label, key) != field(&actual, key) {
                why.push(format!(
                    "{key} {} (want {})",
                    field(&actual, key),
                    field(label, key)
                ));
            }
        }
        _ => {}
    }
    (!why.is_empty()).then(|| why.join("; "))
}
