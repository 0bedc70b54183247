//! YAML → [`Sequence`], with every problem reported at its `file:line:column`.
//!
//! The YAML is read with marked-yaml, which keeps a span on every node (serde_yaml is
//! archived, and serde-based loaders only place syntax errors). The tree is walked by
//! hand rather than through serde so that *all* problems are collected in one pass and
//! each gets its own position and a did-you-mean.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, Node};

use super::{Behaviour, Condition, Rule, Sequence, Spans, Step, Tracking, Unsubscribe, Variant};
use crate::diagnostic::{did_you_mean, Diagnostic, Diagnostics, Location};
use crate::schedule::{parse_wait, Window};

/// Names a sequence may refer to, so that references are checked as it loads.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub mailboxes: BTreeSet<String>,
    pub templates: BTreeSet<String>,
}

const SEQUENCE_KEYS: &[&str] = &[
    "name",
    "description",
    "sender",
    "window",
    "steps",
    "on_reply",
    "on_finish",
    "stop_on_domain_reply",
    "on_open",
    "on_click",
    "track",
    "unsubscribe",
    "language",
];
const STEP_KEYS: &[&str] = &["id", "wait", "template", "variants", "thread", "if"];
const VARIANT_KEYS: &[&str] = &["id", "template", "weight"];
const RULE_KEYS: &[&str] = &["stage", "tag", "tags", "enroll"];
const CLICK_RULE_KEYS: &[&str] = &["stage", "tag", "tags", "enroll", "url_contains"];
const TRACK_KEYS: &[&str] = &["opens", "clicks"];
const IF_KEYS: &[&str] = &["opened", "not_opened", "clicked", "not_clicked", "step"];
const IF_WORDS: &[&str] = &["opened", "not_opened", "clicked", "not_clicked"];
const UNSUBSCRIBE_MODES: &[&str] = &["one-click", "link", "reply"];

/// Block collections a YAML file may nest. The parser under marked-yaml (yaml-rust2)
/// recurses once per level of block collection, so 50,000 nested `- ` overflow the
/// stack; a sequence needs fewer than ten.
pub const MAX_DEPTH: usize = 64;

/// Where the block nesting of `text` first passes `max` levels, as (line, column),
/// 1-based. A line-based scan, cheap and without recursion: each deeper indentation and
/// each `- ` (or `? `) that opens a nested entry on the same line is one level;
/// the content of block scalars (`|`, `>`) is skipped. Flow collections (`[`, `{`) are
/// left to marked-yaml, which limits their nesting itself.
pub fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut levels: Vec<usize> = Vec::new();
    // Inside a block scalar: lines indented more than this are its text.
    let mut scalar_parent: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        if rest.trim().is_empty() || rest.starts_with('#') {
            continue;
        }
        if let Some(p) = scalar_parent {
            if indent > p {
                continue;
            }
            scalar_parent = None;
        }
        if line.starts_with("---") || line.starts_with("...") {
            levels.clear();
            continue;
        }
        while levels.last().is_some_and(|l| *l >= indent) {
            levels.pop();
        }
        levels.push(indent);
        if levels.len() > max {
            return Some((n + 1, indent + 1));
        }
        let mut col = indent;
        let mut rest = rest;
        while let Some(after) = rest
            .strip_prefix('-')
            .or_else(|| rest.strip_prefix('?'))
            .filter(|a| a.is_empty() || a.starts_with(' '))
        {
            let spaces = after.len() - after.trim_start_matches(' ').len();
            col += 1 + spaces;
            rest = &after[spaces..];
            if rest.is_empty() {
                break;
            }
            levels.push(col);
            if levels.len() > max {
                return Some((n + 1, col + 1));
            }
        }
        // `key: |`, `- >-`, `key: |2 # comment`: the lines after are text.
        let value = rest.split(" #").next().unwrap_or("").trim_end();
        let value = value
            .rsplit_once(": ")
            .map_or(value, |(_, v)| v.trim_start());
        if value.starts_with(['|', '>'])
            && value[1..]
                .chars()
                .all(|c| c.is_ascii_digit() || c == '+' || c == '-')
        {
            scalar_parent = levels.last().copied();
        }
    }
    None
}

/// Parses YAML with marked-yaml once its nesting is known to be bounded.
pub(crate) fn parse_bounded(
    text: &str,
    options: marked_yaml::LoaderOptions,
) -> Result<Node, BoundedError> {
    if let Some((line, column)) = too_deep(text, MAX_DEPTH) {
        return Err(BoundedError::TooDeep(line, column));
    }
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(BoundedError::Load)
}

/// Why [`parse_bounded`] gave no tree.
pub(crate) enum BoundedError {
    /// Nested past [`MAX_DEPTH`] at (line, column).
    TooDeep(usize, usize),
    Load(LoadError),
}

/// The error for YAML nested past [`MAX_DEPTH`] at `line`:`column`, without the line's
/// text, which may be 100 KB of dashes.
pub fn too_deep_error(path: &Path, line: usize, column: usize) -> Diagnostic {
    let mut d = Diagnostic::error(
        path,
        format!("YAML nested more than {MAX_DEPTH} levels deep"),
    )
    .with_help("sequences and front matter need a few levels; this file is not one");
    d.location = Some(Location::new(line, column, 1));
    d
}

/// Loads every `*.yaml` / `*.yml` in `dir`, sorted by file name, each read through
/// `files` (inside the project, size-bounded).
pub fn load_dir(
    dir: &Path,
    known: &Known,
    reader: &crate::project::Files,
) -> (Vec<(PathBuf, Sequence)>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
        Err(e) => {
            diags.push(Diagnostic::error(
                dir,
                format!("cannot read the sequences folder: {e}"),
            ));
            return (out, diags);
        }
    };
    files.sort();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    // `enroll:` targets, checked once every sequence is known.
    let mut refs: Vec<(PathBuf, Arc<str>, Location, String, String)> = Vec::new();
    for path in files {
        let text = match reader.read(&path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::error(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        let (seq, d, enrolls) = load_one(&path, &text, known);
        diags.extend(d);
        if let Some(seq) = seq {
            let source: Arc<str> = Arc::from(text.as_str());
            for (loc, target) in enrolls {
                refs.push((path.clone(), source.clone(), loc, target, seq.name.clone()));
            }
            if let Some(other) = names.get(&seq.name) {
                diags.push(Diagnostic::error(
                    &path,
                    format!(
                        "sequence name '{}' is already used by {}",
                        seq.name,
                        other.display()
                    ),
                ));
                continue;
            }
            names.insert(seq.name.clone(), path.clone());
            out.push((path, seq));
        }
    }
    for (path, source, loc, target, from) in refs {
        if target == from {
            diags.push(
                Diagnostic::error(
                    &path,
                    format!("sequence '{from}' cannot enroll into itself"),
                )
                .at(loc, &source),
            );
        } else if !names.contains_key(&target) {
            let mut d =
                Diagnostic::error(&path, format!("unknown sequence '{target}'")).at(loc, &source);
            d.help = Some(
                match did_you_mean(&target, names.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean '{s}'?"),
                    None => "enroll: names another file's `name:` in sequences/".into(),
                },
            );
            diags.push(d);
        }
    }
    (out, diags)
}

/// Parses one sequence file. Returns the sequence only if it has no errors. Which
/// sequences `enroll:` may name is checked by [`load_dir`], which knows them all.
pub fn load_str(path: &Path, text: &str, known: &Known) -> (Option<Sequence>, Diagnostics) {
    let (seq, diags, _) = load_one(path, text, known);
    (seq, diags)
}

type EnrollRefs = Vec<(Location, String)>;

fn load_one(path: &Path, text: &str, known: &Known) -> (Option<Sequence>, Diagnostics, EnrollRefs) {
    let mut cx = Cx {
        path,
        source: Arc::from(text),
        diags: Diagnostics::default(),
        known,
        enrolls: Vec::new(),
    };
    let root = match parse_bounded(
        text,
        marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true),
    ) {
        Ok(n) => n,
        Err(BoundedError::Load(e)) => {
            cx.load_error(e);
            return (None, cx.diags, Vec::new());
        }
        Err(BoundedError::TooDeep(line, column)) => {
            cx.diags.push(too_deep_error(path, line, column));
            return (None, cx.diags, Vec::new());
        }
    };
    let seq = cx.sequence(&root);
    let seq = if cx.diags.has_errors() { None } else { seq };
    (seq, cx.diags, cx.enrolls)
}

struct Cx<'a> {
    path: &'a Path,
    source: Arc<str>,
    diags: Diagnostics,
    known: &'a Known,
    enrolls: EnrollRefs,
}

fn location(node: &Node) -> Location {
    let (line, column) = node
        .span()
        .start()
        .map(|m| (m.line(), m.column()))
        .unwrap_or((1, 1));
    let len = match node {
        Node::Scalar(s) => s.as_str().chars().count().max(1),
        _ => 1,
    };
    Location::new(line, column, len)
}

fn scalar_location(s: &MarkedScalarNode) -> Location {
    let (line, column) = s
        .span()
        .start()
        .map(|m| (m.line(), m.column()))
        .unwrap_or((1, 1));
    Location::new(line, column, s.as_str().chars().count().max(1))
}

impl Cx<'_> {
    fn error_at(&mut self, loc: Location, msg: impl Into<String>) -> &mut Diagnostic {
        let d = Diagnostic::error(self.path, msg).at(loc, &self.source);
        self.diags.push(d);
        self.diags.items.last_mut().expect("just pushed")
    }

    fn error(&mut self, node: &Node, msg: impl Into<String>) -> &mut Diagnostic {
        self.error_at(location(node), msg)
    }

    fn load_error(&mut self, e: LoadError) {
        let (marker, msg) = match &e {
            LoadError::ScanError(m, se) => (*m, format!("YAML syntax error: {}", se.info())),
            LoadError::TopLevelMustBeMapping(m) => (
                *m,
                "a sequence file is a mapping (name:, steps: ...)".into(),
            ),
            LoadError::TopLevelMustBeSequence(m) => (*m, "expected a list".into()),
            LoadError::UnexpectedAnchor(m) => {
                (*m, "YAML anchors and aliases are not supported here".into())
            }
            LoadError::MappingKeyMustBeScalar(m) => (*m, "a key must be a plain word".into()),
            LoadError::UnexpectedTag(m) => {
                (*m, "YAML tags (!something) are not supported here".into())
            }
            LoadError::DuplicateKey(inner) => {
                let first = inner.prev_key.span().start().map(|m| m.line()).unwrap_or(0);
                let m = inner
                    .key
                    .span()
                    .start()
                    .copied()
                    .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1));
                (
                    m,
                    format!(
                        "duplicate key '{}' (first given on line {first})",
                        inner.key.as_str()
                    ),
                )
            }
        };
        let loc = Location::new(marker.line(), marker.column(), 1);
        self.error_at(loc, msg);
    }

    /// Checks a mapping's keys against the allowed ones; unknown keys are errors with a
    /// did-you-mean.
    fn check_keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let loc = scalar_location(key);
                let msg = format!("unknown key '{}' in {what}", key.as_str());
                let help = match did_you_mean(key.as_str(), allowed.iter().copied()) {
                    Some(s) => format!("did you mean '{s}'?"),
                    None => format!("expected one of: {}", allowed.join(", ")),
                };
                self.error_at(loc, msg).help = Some(help);
            }
        }
    }

    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedMappingNode> {
        match node.as_mapping() {
            Some(m) => Some(m),
            None => {
                self.error(node, format!("{what} must be a mapping of keys to values"));
                None
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_scalar() {
            Some(s) if !s.as_str().trim().is_empty() => Some(s.as_str().to_string()),
            Some(_) => {
                self.error(node, format!("{what} is empty"));
                None
            }
            None => {
                self.error(
                    node,
                    format!("{what} must be a single value, not a list or mapping"),
                );
                None
            }
        }
    }

    fn sequence(&mut self, root: &Node) -> Option<Sequence> {
        let map = self.mapping(root, "a sequence")?;
        self.check_keys(map, SEQUENCE_KEYS, "sequence");

        let name = match map.get_node("name") {
            Some(n) => self.string(n, "name"),
            None => {
                self.error(root, "missing 'name'");
                None
            }
        };
        if let Some(n) = &name {
            if !n
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            {
                let node = map.get_node("name").expect("present");
                self.error(
                    node,
                    format!("name '{n}' may contain only letters, digits, '-' and '_'"),
                )
                .help = Some("it is used on the command line: followup enroll NAME".into());
            }
        }
        let description = map
            .get_scalar("description")
            .map(|s| s.as_str().to_string());

        let senders = match map.get_node("sender") {
            None => {
                self.error(
                    root,
                    "missing 'sender': the mailbox (or list of mailboxes) that sends this sequence",
                );
                Vec::new()
            }
            Some(node) => self.senders(node),
        };

        let window = map.get_node("window").and_then(|node| {
            let text = self.string(node, "window")?;
            match text.parse::<Window>() {
                Ok(w) => Some(w),
                Err(e) => {
                    self.error(node, e.to_string()).help =
                        Some("for example \"Mon-Fri 09:00-17:00\", \"Mon-Fri 09:00-12:00,14:00-17:00\" or \"always\"".into());
                    None
                }
            }
        });

        let steps = match map.get_node("steps") {
            None => {
                self.error(root, "missing 'steps'");
                Vec::new()
            }
            Some(node) => self.steps(node),
        };

        let on_reply = map
            .get_node("on_reply")
            .and_then(|n| self.rule(n, "on_reply", RULE_KEYS));
        let on_finish = map
            .get_node("on_finish")
            .and_then(|n| self.rule(n, "on_finish", RULE_KEYS));
        let on_open = map
            .get_node("on_open")
            .map(|n| self.rules(n, "on_open", RULE_KEYS))
            .unwrap_or_default();
        let on_click = map
            .get_node("on_click")
            .map(|n| self.rules(n, "on_click", CLICK_RULE_KEYS))
            .unwrap_or_default();
        let track = map
            .get_node("track")
            .map(|n| self.track(n))
            .unwrap_or_default();
        let unsubscribe = match map.get_node("unsubscribe") {
            None => Unsubscribe::default(),
            Some(n) => match self.string(n, "unsubscribe").as_deref() {
                Some("one-click") => Unsubscribe::OneClick,
                Some("link") => Unsubscribe::Link,
                Some("reply") => Unsubscribe::Reply,
                Some(other) => {
                    let help = match did_you_mean(other, UNSUBSCRIBE_MODES.iter().copied()) {
                        Some(s) => format!("did you mean '{s}'?"),
                        None => "one-click (bulk mail, RFC 8058 headers), link (a link in the body) or reply (a line inviting a reply)".into(),
                    };
                    self.error(n, format!("unknown unsubscribe mode '{other}'"))
                        .help = Some(help);
                    Unsubscribe::default()
                }
                None => Unsubscribe::default(),
            },
        };
        let language = map.get_node("language").and_then(|n| {
            let l = self.string(n, "language")?;
            let ok = l.len() <= 35
                && l.split(['-', '_'])
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
            if !ok {
                self.error(n, format!("'{l}' is not a language tag")).help =
                    Some("for example en, zh, zh-CN or de".into());
            }
            Some(l)
        });
        let stop_on_domain_reply = match map.get_node("stop_on_domain_reply") {
            None => true,
            Some(n) => match n.as_scalar().and_then(|s| s.as_bool()) {
                Some(b) => b,
                None => {
                    self.error(n, "'stop_on_domain_reply' is true or false");
                    true
                }
            },
        };

        Some(Sequence {
            name: name?,
            description,
            senders,
            window,
            steps,
            on_reply,
            on_finish,
            on_open,
            on_click,
            stop_on_domain_reply,
            track,
            unsubscribe,
            language,
            spans: Spans {
                source: Some(self.source.clone()),
                sender: map.get_node("sender").map(location),
                unsubscribe: map.get_node("unsubscribe").map(location),
            },
        })
    }

    fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        let b = node.as_scalar().and_then(|s| s.as_bool());
        if b.is_none() {
            self.error(node, format!("'{what}' is true or false"));
        }
        b
    }

    /// `track: false`, `track: true` or `track: { opens: true, clicks: false }`.
    fn track(&mut self, node: &Node) -> Tracking {
        if let Some(s) = node.as_scalar() {
            return match s.as_bool() {
                Some(on) => Tracking {
                    opens: on,
                    clicks: on,
                },
                None => {
                    self.error(
                        node,
                        "'track' is true, false or { opens: ..., clicks: ... }",
                    );
                    Tracking::default()
                }
            };
        }
        let Some(map) = self.mapping(node, "'track'") else {
            return Tracking::default();
        };
        self.check_keys(map, TRACK_KEYS, "track");
        let mut t = Tracking::default();
        if let Some(n) = map.get_node("opens") {
            t.opens = self.bool(n, "opens").unwrap_or(true);
        }
        if let Some(n) = map.get_node("clicks") {
            t.clicks = self.bool(n, "clicks").unwrap_or(true);
        }
        t
    }

    fn senders(&mut self, node: &Node) -> Vec<String> {
        let items: Vec<&Node> = match node {
            Node::Sequence(s) => s.iter().collect(),
            other => vec![other],
        };
        if items.is_empty() {
            self.error(node, "'sender' lists no mailbox");
        }
        let mut out = Vec::new();
        for item in items {
            let Some(name) = self.string(item, "sender") else {
                continue;
            };
            if !self.known.mailboxes.contains(&name) {
                let help =
                    match did_you_mean(&name, self.known.mailboxes.iter().map(String::as_str)) {
                        Some(s) => format!("did you mean '{s}'?"),
                        None if self.known.mailboxes.is_empty() => {
                            "followup.toml defines no mailbox".to_string()
                        }
                        None => format!(
                            "mailboxes in followup.toml: {}",
                            self.known
                                .mailboxes
                                .iter()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                self.error(item, format!("unknown mailbox '{name}'")).help = Some(help);
            } else if out.contains(&name) {
                self.error(item, format!("mailbox '{name}' is listed twice"));
            } else {
                out.push(name);
            }
        }
        out
    }

    fn steps(&mut self, node: &Node) -> Vec<Step> {
        let Some(list) = node.as_sequence() else {
            self.error(
                node,
                "'steps' must be a list (each item starting with '- id: ...')",
            );
            return Vec::new();
        };
        if list.is_empty() {
            self.error(node, "'steps' is empty: a sequence needs at least one step");
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut steps = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let Some(map) = self.mapping(item, "a step") else {
                continue;
            };
            self.check_keys(map, STEP_KEYS, "step");
            let id = match map.get_node("id") {
                Some(n) => self.string(n, "id"),
                None => {
                    self.error(item, format!("step {} has no 'id'", i + 1));
                    None
                }
            };
            if let (Some(id), Some(node)) = (&id, map.get_node("id")) {
                if let Some(first) = seen.get(id) {
                    let first = *first;
                    self.error(
                        node,
                        format!("duplicate step id '{id}' (first used on line {first})"),
                    )
                    .help = Some("step ids name the steps in status and must be unique".into());
                } else {
                    seen.insert(id.clone(), location(node).line);
                }
            }
            let wait = match map.get_node("wait") {
                None => chrono::Duration::zero(),
                Some(n) => {
                    let text = self.string(n, "wait").unwrap_or_default();
                    match parse_wait(&text) {
                        Ok(d) => d,
                        Err(e) => {
                            self.error(n, e.to_string()).help =
                                Some("a number and a unit: 30s, 10m, 2h, 3d or 2w".into());
                            chrono::Duration::zero()
                        }
                    }
                }
            };
            let variants = match map.get_node("variants") {
                Some(n) => self.variants(n),
                None => Vec::new(),
            };
            let template = match (map.get_node("template"), map.get_node("variants")) {
                (None, None) => {
                    self.error(
                        item,
                        format!("step {} has no 'template'", id.as_deref().unwrap_or("?")),
                    )
                    .help = Some("give it `template: NAME`, or `variants:` for an A/B test".into());
                    None
                }
                (Some(n), Some(_)) => {
                    self.error(n, "a step has either 'template' or 'variants', not both")
                        .help = Some("each variant names its own template".into());
                    None
                }
                (None, Some(_)) => variants.first().map(|v| v.template.clone()),
                (Some(n), None) => self.template_ref(n),
            };
            let condition = map
                .get_node("if")
                .and_then(|n| self.condition(n, i, &steps));
            if condition.is_some() && i == 0 {
                let n = map.get_node("if").expect("present");
                self.error(
                    n,
                    "the first step cannot have 'if': there is no earlier mail to look at",
                );
            }
            let thread = match map.get_node("thread") {
                None => false,
                Some(n) => match n.as_scalar().and_then(|s| s.as_bool()) {
                    Some(b) => b,
                    None => {
                        self.error(n, "'thread' is true or false");
                        false
                    }
                },
            };
            if thread && i == 0 {
                let n = map.get_node("thread").expect("present");
                self.error(
                    n,
                    "the first step cannot be threaded: there is no earlier mail to reply to",
                );
            }
            if let (Some(id), Some(template)) = (id, template) {
                steps.push(Step {
                    id,
                    wait,
                    template,
                    variants,
                    thread,
                    condition,
                });
            }
        }
        steps
    }

    /// A template name, checked against templates/.
    fn template_ref(&mut self, n: &Node) -> Option<String> {
        let t = self.string(n, "template");
        if let Some(t) = &t {
            if !self.known.templates.contains(t) {
                let help = match did_you_mean(t, self.known.templates.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean '{s}'?"),
                    None => format!("no templates/{t}.hbs"),
                };
                self.error(n, format!("unknown template '{t}'")).help = Some(help);
            }
        }
        t
    }

    fn variants(&mut self, node: &Node) -> Vec<Variant> {
        let Some(list) = node.as_sequence() else {
            self.error(
                node,
                "'variants' must be a list (- id: a, template: ..., weight: 50)",
            );
            return Vec::new();
        };
        if list.len() < 2 {
            self.error(node, "'variants' needs at least two variants to compare")
                .help = Some("for a single mail, use `template:`".into());
        }
        let mut out: Vec<Variant> = Vec::new();
        for item in list.iter() {
            let Some(map) = self.mapping(item, "a variant") else {
                continue;
            };
            self.check_keys(map, VARIANT_KEYS, "variant");
            let id = match map.get_node("id") {
                Some(n) => self.string(n, "id"),
                None => {
                    self.error(item, "a variant has no 'id'");
                    None
                }
            };
            if let (Some(v), Some(n)) = (&id, map.get_node("id")) {
                if out.iter().any(|o| &o.id == v) {
                    self.error(n, format!("duplicate variant id '{v}'"));
                }
            }
            let template = match map.get_node("template") {
                Some(n) => self.template_ref(n),
                None => {
                    self.error(item, "a variant has no 'template'");
                    None
                }
            };
            let weight = match map.get_node("weight") {
                None => Some(1),
                Some(n) => match n.as_scalar().and_then(|s| s.as_str().parse::<u32>().ok()) {
                    Some(w) if w <= 1_000_000 => Some(w),
                    _ => {
                        self.error(n, "'weight' is a whole number from 0 to 1000000");
                        None
                    }
                },
            };
            if let (Some(id), Some(template), Some(weight)) = (id, template, weight) {
                out.push(Variant {
                    id,
                    template,
                    weight,
                });
            }
        }
        if !out.is_empty() && out.iter().all(|v| v.weight == 0) {
            self.error(node, "every variant has weight 0: none would ever be sent");
        }
        out
    }

    /// `if: opened` (or not_opened, clicked, not_clicked: any earlier step), or
    /// `if: { clicked: pricing, step: first }`, `if: { opened: first }`.
    fn condition(&mut self, node: &Node, index: usize, earlier: &[Step]) -> Option<Condition> {
        let word = |w: &str| match w {
            "opened" => Some((false, false)),
            "not_opened" => Some((true, false)),
            "clicked" => Some((false, true)),
            "not_clicked" => Some((true, true)),
            _ => None,
        };
        let make =
            |negate: bool, click: bool, part: Option<String>, step: Option<String>| Condition {
                negate,
                behaviour: if click {
                    Behaviour::Clicked(part)
                } else {
                    Behaviour::Opened
                },
                step,
            };
        let _ = index;
        if let Some(s) = node.as_scalar() {
            return match word(s.as_str()) {
                Some((negate, click)) => Some(make(negate, click, None, None)),
                None => {
                    let help = match did_you_mean(s.as_str(), IF_WORDS.iter().copied()) {
                        Some(w) => format!("did you mean '{w}'?"),
                        None => "opened, not_opened, clicked, not_clicked, or { clicked: \"url part\", step: ID }".into(),
                    };
                    self.error(node, format!("unknown condition '{}'", s.as_str()))
                        .help = Some(help);
                    None
                }
            };
        }
        let map = self.mapping(node, "'if'")?;
        self.check_keys(map, IF_KEYS, "if");
        let present: Vec<&str> = IF_WORDS
            .iter()
            .copied()
            .filter(|w| map.get_node(w).is_some())
            .collect();
        let [w] = present[..] else {
            self.error(
                node,
                "'if' names exactly one of opened, not_opened, clicked, not_clicked",
            );
            return None;
        };
        let (negate, click) = word(w)?;
        let value = map.get_node(w).and_then(|n| self.string(n, w));
        let mut step = map.get_node("step").and_then(|n| self.string(n, "step"));
        let mut part = None;
        if click {
            part = value;
        } else if step.is_some() && value.is_some() {
            self.error(node, format!("'{w}' names the step; 'step' is not needed"));
        } else {
            step = step.or(value);
        }
        if let Some(id) = &step {
            if !earlier.iter().any(|s| &s.id == id) {
                let at = map
                    .get_node("step")
                    .or_else(|| map.get_node(w))
                    .unwrap_or(node);
                self.error(
                    at,
                    format!("'{id}' is not an earlier step of this sequence"),
                )
                .help = Some(
                    match did_you_mean(id, earlier.iter().map(|s| s.id.as_str())) {
                        Some(s) => format!("did you mean '{s}'?"),
                        None => {
                            "a condition looks at mails already sent: name a step above this one"
                                .into()
                        }
                    },
                );
                return None;
            }
        }
        Some(make(negate, click, part, step))
    }

    /// One rule, or a list of them (`on_click` may react differently per link).
    fn rules(&mut self, node: &Node, what: &str, keys: &[&str]) -> Vec<Rule> {
        match node {
            Node::Sequence(list) => list
                .iter()
                .filter_map(|n| self.rule(n, what, keys))
                .collect(),
            n => self.rule(n, what, keys).into_iter().collect(),
        }
    }

    fn rule(&mut self, node: &Node, what: &str, keys: &[&str]) -> Option<Rule> {
        let map = self.mapping(node, what)?;
        self.check_keys(map, keys, what);
        let stage = map.get_node("stage").and_then(|n| self.string(n, "stage"));
        let enroll = map.get_node("enroll").and_then(|n| {
            let s = self.string(n, "enroll")?;
            self.enrolls.push((location(n), s.clone()));
            Some(s)
        });
        let url_contains = map
            .get_node("url_contains")
            .and_then(|n| self.string(n, "url_contains"));
        let mut tags = Vec::new();
        for key in ["tag", "tags"] {
            match map.get_node(key) {
                Some(Node::Sequence(list)) => {
                    for t in list.iter() {
                        tags.extend(self.string(t, "tag"));
                    }
                }
                Some(n) => tags.extend(self.string(n, "tag")),
                None => {}
            }
        }
        if stage.is_none() && tags.is_empty() && enroll.is_none() {
            self.error(
                node,
                format!("'{what}' does nothing: give it a stage, tags or enroll"),
            );
        }
        Some(Rule {
            stage,
            tags,
            enroll,
            url_contains,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        Known {
            mailboxes: ["sales".to_string(), "support".to_string()].into(),
            templates: [
                "intro".to_string(),
                "bump".to_string(),
                "breakup".to_string(),
            ]
            .into(),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        let (_, d) = load_str(Path::new("sequences/intro.yaml"), text, &known());
        d.items.iter().map(|d| d.to_string()).collect()
    }

    const GOOD: &str = "name: intro\nsender: sales\nwindow: Mon-Fri 09:00-17:00\nsteps:\n  - id: first\n    template: intro\n  - id: bump\n    wait: 3d\n    template: bump\n    thread: true\n";

    #[test]
    fn loads_a_good_sequence() {
        let (s, d) = load_str(Path::new("x.yaml"), GOOD, &known());
        assert!(d.is_empty(), "{:?}", d.items);
        let s = s.unwrap();
        assert_eq!(s.name, "intro");
        assert_eq!(s.senders, vec!["sales"]);
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[1].wait, chrono::Duration::days(3));
        assert!(s.steps[1].thread);
    }

    #[test]
    fn unknown_key_points_at_the_key_with_did_you_mean() {
        let e = errors(&GOOD.replace("    wait: 3d", "    wiat: 3d"));
        assert_eq!(
            e,
            vec!["sequences/intro.yaml:8:5: error: unknown key 'wiat' in step\n  |\n8 |     wiat: 3d\n  |     ^^^^ did you mean 'wait'?"]
        );
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let text = GOOD
            .replace("template: bump", "template: bumpp")
            .replace("3d", "3x")
            .replace("sender: sales", "sender: sale");
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            e[0].starts_with("sequences/intro.yaml:2:9: error: unknown mailbox 'sale'"),
            "{}",
            e[0]
        );
        assert!(e[0].ends_with("^^^^ did you mean 'sales'?"), "{}", e[0]);
        assert!(
            e[1].starts_with("sequences/intro.yaml:8:11: error: bad wait '3x'"),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("sequences/intro.yaml:9:15: error: unknown template 'bumpp'"),
            "{}",
            e[2]
        );
        assert!(
            e[2].contains("9 |     template: bumpp\n  |               ^^^^^ did you mean 'bump'?"),
            "{}",
            e[2]
        );
    }

    #[test]
    fn duplicate_step_ids() {
        let e = errors(&GOOD.replace("id: bump", "id: first"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "sequences/intro.yaml:7:9: error: duplicate step id 'first' (first used on line 5)"
            ),
            "{}",
            e[0]
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errors("name: intro\nsteps:\n  - id: [first\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("sequences/intro.yaml:4:1: error: YAML syntax error"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn bad_window_and_missing_parts() {
        let e = errors("name: intro\nsender: sales\nwindow: Mon-Fri 9-5\nsteps: []\n");
        assert!(
            e[0].starts_with("sequences/intro.yaml:3:9: error:"),
            "{}",
            e[0]
        );
        assert!(e[1].contains("'steps' is empty"), "{}", e[1]);
    }

    #[test]
    fn sender_list_and_rules() {
        let text = "name: intro\nsender: [sales, support]\non_reply: { stage: replied, tag: warm }\nsteps:\n  - id: a\n    template: intro\n";
        let (s, d) = load_str(Path::new("x.yaml"), text, &known());
        assert!(d.is_empty(), "{:?}", d.items);
        let s = s.unwrap();
        assert_eq!(s.senders, vec!["sales", "support"]);
        assert_eq!(
            s.on_reply,
            Some(Rule {
                stage: Some("replied".into()),
                tags: vec!["warm".into()],
                ..Rule::default()
            })
        );
    }

    #[test]
    fn duplicate_yaml_keys_are_errors() {
        let e = errors(
            "name: intro\nname: other\nsender: sales\nsteps:\n  - id: a\n    template: intro\n",
        );
        assert!(
            e[0].starts_with(
                "sequences/intro.yaml:2:1: error: duplicate key 'name' (first given on line 1)"
            ),
            "{}",
            e[0]
        );
    }

    #[test]
    fn tracking_unsubscribe_variants_and_branches_load() {
        let text = "name: intro\nsender: sales\ntrack: { opens: false }\nunsubscribe: one-click\nlanguage: zh-CN\n\
on_open: { tag: opened }\non_click:\n  - { url_contains: pricing, stage: interested }\n  - { tag: clicked }\n\
steps:\n  - id: a\n    variants:\n      - { id: x, template: intro, weight: 70 }\n      - { id: y, template: bump, weight: 30 }\n  - id: b\n    template: bump\n    if: { clicked: pricing, step: a }\n  - id: c\n    template: breakup\n    if: not_opened\n";
        let (s, d) = load_str(Path::new("x.yaml"), text, &known());
        assert!(d.is_empty(), "{:?}", d.items);
        let s = s.unwrap();
        assert_eq!(
            s.track,
            Tracking {
                opens: false,
                clicks: true
            }
        );
        assert_eq!(s.unsubscribe, Unsubscribe::OneClick);
        assert_eq!(s.language.as_deref(), Some("zh-CN"));
        assert_eq!(s.on_click.len(), 2);
        assert_eq!(s.on_click[0].url_contains.as_deref(), Some("pricing"));
        assert_eq!(s.steps[0].variants.len(), 2);
        assert_eq!(s.steps[0].variants[1].weight, 30);
        assert_eq!(
            s.steps[1].condition,
            Some(Condition {
                negate: false,
                behaviour: Behaviour::Clicked(Some("pricing".into())),
                step: Some("a".into())
            })
        );
        assert_eq!(
            s.steps[2].condition,
            Some(Condition {
                negate: true,
                behaviour: Behaviour::Opened,
                step: None
            })
        );
        let off = load_str(
            Path::new("x.yaml"),
            &GOOD.replace("steps:", "track: false\nsteps:"),
            &known(),
        )
        .0
        .unwrap();
        assert_eq!(
            off.track,
            Tracking {
                opens: false,
                clicks: false
            }
        );
    }

    #[test]
    fn tracking_mistakes_point_at_their_line() {
        let e = errors(&GOOD.replace("steps:", "unsubscribe: oneclick\nsteps:"));
        assert!(
            e[0].starts_with(
                "sequences/intro.yaml:4:14: error: unknown unsubscribe mode 'oneclick'"
            ),
            "{}",
            e[0]
        );
        assert!(e[0].ends_with("did you mean 'one-click'?"), "{}", e[0]);
        let e = errors(&GOOD.replace("    thread: true\n", "    thread: true\n    if: clickd\n"));
        assert!(
            e[0].starts_with("sequences/intro.yaml:11:9: error: unknown condition 'clickd'"),
            "{}",
            e[0]
        );
        assert!(e[0].ends_with("did you mean 'clicked'?"), "{}", e[0]);
        let e = errors(&GOOD.replace(
            "    thread: true\n",
            "    thread: true\n    if: { opened: later }\n",
        ));
        assert!(
            e[0].contains("'later' is not an earlier step of this sequence"),
            "{}",
            e[0]
        );
        let e = errors(&GOOD.replace(
            "    template: intro\n",
            "    template: intro\n    if: opened\n",
        ));
        assert!(e[0].contains("the first step cannot have 'if'"), "{}", e[0]);
        let e = errors(&GOOD.replace("    template: bump\n", "    template: bump\n    variants:\n      - { id: a, template: bump }\n      - { id: b, template: bumpp }\n"));
        assert!(
            e.iter()
                .any(|e| e.contains("either 'template' or 'variants'")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|e| e.contains("unknown template 'bumpp'")),
            "{e:#?}"
        );
        let e = errors(&GOOD.replace("steps:", "on_click: { url_contain: x, tag: y }\nsteps:"));
        assert!(
            e[0].contains("unknown key 'url_contain' in on_click"),
            "{}",
            e[0]
        );
        assert!(e[0].ends_with("did you mean 'url_contains'?"), "{}", e[0]);
    }

    #[test]
    fn enroll_targets_are_checked_across_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            GOOD.replace("steps:", "on_click: { enroll: demoo }\nsteps:"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            GOOD.replace("name: intro", "name: demo"),
        )
        .unwrap();
        let files = crate::project::Files::new(dir.path(), 1 << 20);
        let (_, d) = load_dir(dir.path(), &known(), &files);
        let e: Vec<String> = d.items.iter().map(|d| d.to_string()).collect();
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("a.yaml:4:21: error: unknown sequence 'demoo'"),
            "{}",
            e[0]
        );
        assert!(e[0].ends_with("did you mean 'demo'?"), "{}", e[0]);
    }

    #[test]
    fn nesting_is_measured_without_recursion() {
        assert_eq!(too_deep(GOOD, MAX_DEPTH), None);
        assert_eq!(too_deep(&"- ".repeat(50_000), 64), Some((1, 129)));
        let stairs: String = (0..100).map(|i| format!("{}-\n", " ".repeat(i))).collect();
        assert_eq!(too_deep(&stairs, 64), Some((65, 65)));
        // Deep indentation inside a block scalar is text, not nesting.
        let text: String = (0..100)
            .map(|i| format!("   {}line\n", " ".repeat(i)))
            .collect();
        let doc = format!("name: x\ndescription: |\n{text}steps: []\n");
        assert_eq!(too_deep(&doc, 64), None);
        let (_, d) = load_str(Path::new("x.yaml"), &"- ".repeat(50_000), &known());
        assert_eq!(
            d.items[0].to_string().lines().next(),
            Some("x.yaml:1:129: error: YAML nested more than 64 levels deep")
        );
    }

    /// A bounded property test: random edits of a good sequence, with now and then a
    /// piece repeated thousands of times, never panic the loader or overflow its stack.
    /// Fixed seeds, so that a failure is reproducible.
    #[test]
    fn mutated_yaml_never_panics() {
        const PIECES: &[&str] = &[
            "- ",
            "  ",
            "\n",
            ":",
            ": ",
            " ",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "'",
            "#",
            "|",
            ">-",
            "&a ",
            "*a",
            "!t ",
            "? ",
            ",",
            "x",
            "steps",
            "id",
            "template",
            "wait",
            "if",
            "variants",
            "---\n",
            "\t",
            "é",
            "\u{202E}",
            "- - - - ",
            "{{",
            "0x1",
            "~",
            "\r",
            "on_click",
            "enroll",
            "weight: -1",
            "9999999999999999999d",
        ];
        let known = known();
        for seed in 0..1500u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut text: Vec<char> = GOOD.chars().collect();
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(..=text.len());
                match rng.u8(..10) {
                    0..=5 => {
                        let piece = PIECES[rng.usize(..PIECES.len())];
                        text.splice(at..at, piece.chars());
                    }
                    6..=7 if !text.is_empty() => {
                        let end = (at + rng.usize(1..20)).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                    8 => {
                        let piece = PIECES[rng.usize(..PIECES.len())];
                        let many: String = piece.repeat(rng.usize(100..5000));
                        text.splice(at..at, many.chars());
                    }
                    _ => {
                        let line = rng.usize(..12);
                        let copy: String = GOOD.lines().nth(line).unwrap_or("").to_string() + "\n";
                        text.splice(at..at, copy.chars());
                    }
                }
            }
            let text: String = text.into_iter().collect();
            let (_, d) = load_str(Path::new("x.yaml"), &text, &known);
            for item in &d.items {
                // Rendering reads the line the diagnostic points at: never out of range.
                let _ = item.to_string();
            }
        }
    }
}
