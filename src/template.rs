//! Templates: what each step says. One file per template, `templates/NAME.hbs`:
//!
//! ```text
//! ---
//! subject: Quick question about {{company}}
//! defaults:
//!   first_name: there
//! ---
//! Hi {{first_name}},
//! ...plain-text body...
//! ```
//!
//! and, optionally, `templates/NAME.html` beside it for the HTML part. Both bodies are
//! Handlebars in strict mode: a field that a contact lacks is an error, unless `defaults`
//! gives a fallback. The HTML part is escaped (contact data can never inject markup); the
//! subject and text part are not (they are not HTML), and the subject is made one line.
//! A message always has both parts: the text is made from the HTML when the `.hbs` has
//! no body, and the HTML from the text when there is no `.html` file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::mail::text::{html_to_text, Style};

/// A template as written: where each part starts in its file, for diagnostics.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub path: PathBuf,
    pub html_path: Option<PathBuf>,
    pub defaults: BTreeMap<String, String>,
    /// Which part is which file and where it starts (line offset), per part.
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
struct Part {
    kind: PartKind,
    path: PathBuf,
    /// Line in the file where the part's first line is (1-based).
    first_line: usize,
    /// Column of the part's first character on that line (1-based); the subject
    /// starts after `subject: `.
    first_column: usize,
    source: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PartKind {
    Subject,
    Text,
    Html,
}

impl PartKind {
    fn suffix(self) -> &'static str {
        match self {
            PartKind::Subject => "subject",
            PartKind::Text => "text",
            PartKind::Html => "html",
        }
    }
}

/// A rendered message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a template could not be rendered for a contact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("unknown template '{0}'")]
    UnknownTemplate(String),
    /// The contact lacks a field the template uses and the template gives no default.
    #[error("missing field '{field}' ({path}:{line}:{column})")]
    MissingField {
        field: String,
        path: String,
        line: usize,
        column: usize,
    },
    #[error("{0}")]
    Other(String),
}

/// A field used by a template with no fallback, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldUse {
    pub field: String,
    pub path: PathBuf,
    pub location: Location,
    pub source: Arc<str>,
}

/// All templates of a project, compiled.
pub struct Templates {
    /// HTML parts: escaped.
    html: Handlebars<'static>,
    /// Subjects and text parts: not escaped (they are not HTML).
    plain: Handlebars<'static>,
    by_name: BTreeMap<String, Template>,
    /// Templates whose files are there but have errors (reported where they are): a
    /// sequence that names one is not also told the template is unknown.
    broken: BTreeSet<String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Field names every render has, whatever the contact: they never need a default.
pub const BUILTIN_FIELDS: &[&str] = &["email", "sender", "unsubscribe_url"];

impl Templates {
    pub fn names(&self) -> BTreeSet<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Every template that has a file, loaded or not: what a sequence may name.
    pub fn known_names(&self) -> BTreeSet<String> {
        self.by_name.keys().chain(&self.broken).cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.by_name.get(name)
    }

    /// Whether any part of the template mentions `{{field}}` (for `check`'s
    /// compliance warnings: is there an unsubscribe link, a postal address).
    pub fn mentions(&self, name: &str, field: &str) -> bool {
        self.by_name.get(name).is_some_and(|t| {
            t.parts.iter().any(|p| {
                p.source.match_indices(field).any(|(i, _)| {
                    let before = p.source[..i].trim_end();
                    before.ends_with("{{") || before.ends_with("{{{") || before.ends_with('(')
                })
            })
        })
    }

    /// Whether any part's text contains `needle` (case-insensitive).
    pub fn contains_text(&self, name: &str, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        self.by_name.get(name).is_some_and(|t| {
            t.parts
                .iter()
                .any(|p| p.source.to_lowercase().contains(&needle))
        })
    }

    /// Loads every `*.hbs` in `dir` (and its `.html` sibling), each read through `files`
    /// (inside the project, size-bounded). Problems are collected, and a template with
    /// errors is left out; so is one whose partials (`{{> name}}`) include themselves.
    pub fn load_dir(dir: &Path, reader: &crate::project::Files) -> (Templates, Diagnostics) {
        let mut t = Templates::empty();
        let mut diags = Diagnostics::default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                diags.push(Diagnostic::error(
                    dir,
                    format!("cannot read the templates folder: {e}"),
                ));
                return (t, diags);
            }
        };
        files.sort();
        for path in &files {
            match path.extension().and_then(|e| e.to_str()) {
                Some("hbs") => {
                    let html_path = path.with_extension("html");
                    let html = if files.contains(&html_path) {
                        match reader.read(&html_path) {
                            Ok(h) => Some((html_path, h)),
                            Err(e) => {
                                diags.push(Diagnostic::error(
                                    &html_path,
                                    format!("cannot read: {e}"),
                                ));
                                if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                                    t.broken.insert(name.to_string());
                                }
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                    let added = match reader.read(path) {
                        Ok(text) => t.add(path, &text, html),
                        Err(e) => {
                            let mut d = Diagnostics::default();
                            d.push(Diagnostic::error(path, format!("cannot read: {e}")));
                            d
                        }
                    };
                    if added.has_errors() && !t.by_name.contains_key(name) {
                        t.broken.insert(name.to_string());
                    }
                    diags.extend(added);
                }
                Some("html") if !files.contains(&path.with_extension("hbs")) => {
                    diags.push(Diagnostic::warning(
                        path,
                        "HTML part without a .hbs beside it (which holds the subject): ignored",
                    ));
                }
                _ => {}
            }
        }
        diags.extend(t.check_partials());
        (t, diags)
    }

    /// Partials are other templates' parts (`{{> intro.text}}`) or inline ones
    /// (`{{#*inline "x"}}`). handlebars-rust follows them without a limit, so two that
    /// include each other overflow the stack at render time: refuse, at the `{{>`, a
    /// partial that leads back to itself, chains deeper than [`MAX_PARTIAL_DEPTH`],
    /// names that are computed (they could not be checked) and names that are unknown.
    /// Templates with such a partial are left out.
    fn check_partials(&mut self) -> Diagnostics {
        let mut diags = Diagnostics::default();
        let mut graph = PartialGraph::default();
        for (kind, registry) in [
            (PartialKind::Html, &self.html),
            (PartialKind::Plain, &self.plain),
        ] {
            for (key, tpl) in registry.get_templates() {
                graph.add(kind, key, tpl);
            }
        }
        let mut bad: BTreeSet<String> = BTreeSet::new();
        for (node, refs) in &graph.edges {
            for r in refs {
                let problem = match &r.target {
                    None => Some("a partial's name must be written out, not computed".to_string()),
                    Some(t) if !graph.edges.contains_key(t) => {
                        Some(format!("unknown partial '{}'", t.1))
                    }
                    Some(t) => graph.cycle_or_depth(t, node),
                };
                let Some(problem) = problem else { continue };
                let part_key = node.1.split('#').next().unwrap_or("");
                let template = part_key
                    .rsplit_once('.')
                    .map_or(part_key, |(t, _)| t)
                    .to_string();
                if let Some(d) = self.partial_diagnostic(&template, &node.1, r, problem) {
                    diags.push(d);
                }
                bad.insert(template);
            }
        }
        for name in bad {
            self.by_name.remove(&name);
            self.broken.insert(name);
        }
        diags
    }

    /// The error for a partial reference, at its `{{>` in the template's file.
    fn partial_diagnostic(
        &self,
        template: &str,
        key: &str,
        r: &PartialRef,
        problem: String,
    ) -> Option<Diagnostic> {
        let t = self.by_name.get(template)?;
        let suffix = key.split('#').next()?.rsplit('.').next()?;
        let part = t.parts.iter().find(|p| p.kind.suffix() == suffix)?;
        Some(
            Diagnostic::error(&part.path, problem)
                .at(part.location(r.line, r.column, 3), &part.source)
                .with_help("a partial may include others, but never, through them, itself"),
        )
    }

    fn empty() -> Templates {
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        let mut plain = Handlebars::new();
        plain.set_strict_mode(true);
        plain.register_escape_fn(handlebars::no_escape);
        Templates {
            html,
            plain,
            by_name: BTreeMap::new(),
            broken: BTreeSet::new(),
        }
    }

    /// Adds one template from its `.hbs` text and optional HTML (path, text).
    pub fn add(&mut self, path: &Path, text: &str, html: Option<(PathBuf, String)>) -> Diagnostics {
        let mut diags = Diagnostics::default();
        let source: Arc<str> = Arc::from(text);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let Some(front) = split_front_matter(text) else {
            diags.push(
                Diagnostic::error(
                    path,
                    "a template starts with a '---' line, then `subject: ...`, then '---'",
                )
                .at(Location::new(1, 1, 1), &source)
                .with_help("see `followup init` for an example"),
            );
            return diags;
        };
        let mut subject: Option<(String, Location)> = None;
        let mut defaults = BTreeMap::new();
        let front_yaml = match crate::sequence::too_deep(front.yaml, crate::sequence::MAX_DEPTH) {
            None => marked_yaml::parse_yaml(0, front.yaml).map_err(Some),
            Some((line, column)) => {
                diags.push(crate::sequence::too_deep_error(
                    path,
                    line + front.yaml_first_line - 1,
                    column,
                ));
                Err(None)
            }
        };
        match front_yaml {
            Err(None) => {}
            Err(Some(e)) => {
                let (line, col) = match &e {
                    marked_yaml::LoadError::ScanError(m, _) => (m.line(), m.column()),
                    _ => (1, 1),
                };
                diags.push(Diagnostic::error(path, format!("front matter: {e}")).at(
                    Location::new(line + front.yaml_first_line - 1, col, 1),
                    &source,
                ));
            }
            Ok(node) => {
                let map = node.as_mapping();
                for (key, value) in map.into_iter().flat_map(|m| m.iter()) {
                    let m = key.span().start();
                    let loc = Location::new(
                        m.map(|m| m.line()).unwrap_or(1) + front.yaml_first_line - 1,
                        m.map(|m| m.column()).unwrap_or(1),
                        key.as_str().chars().count(),
                    );
                    match key.as_str() {
                        "subject" => match value.as_scalar() {
                            Some(s) => {
                                let m = s.span().start();
                                let line =
                                    m.map(|m| m.line()).unwrap_or(1) + front.yaml_first_line - 1;
                                let mut column = m.map(|m| m.column()).unwrap_or(1);
                                // A quoted scalar's span starts at its quote; the text one later.
                                let at = text
                                    .lines()
                                    .nth(line - 1)
                                    .and_then(|l| l.chars().nth(column - 1));
                                if matches!(at, Some('"' | '\'')) {
                                    column += 1;
                                }
                                let loc = Location::new(line, column, s.as_str().chars().count());
                                subject = Some((s.as_str().to_string(), loc));
                            }
                            None => diags.push(
                                Diagnostic::error(path, "subject must be one line of text")
                                    .at(loc, &source),
                            ),
                        },
                        "defaults" => match value.as_mapping() {
                            Some(m) => {
                                for (k, v) in m.iter() {
                                    match v.as_scalar() {
                                        Some(v) => {
                                            defaults.insert(
                                                k.as_str().to_string(),
                                                v.as_str().to_string(),
                                            );
                                        }
                                        None => diags.push(
                                            Diagnostic::error(
                                                path,
                                                format!(
                                                    "default for '{}' must be text",
                                                    k.as_str()
                                                ),
                                            )
                                            .at(loc.clone(), &source),
                                        ),
                                    }
                                }
                            }
                            None => diags.push(
                                Diagnostic::error(
                                    path,
                                    "defaults is a mapping: field: fallback text",
                                )
                                .at(loc, &source),
                            ),
                        },
                        "description" => {}
                        other => {
                            let help = match crate::diagnostic::did_you_mean(
                                other,
                                ["subject", "defaults", "description"],
                            ) {
                                Some(s) => format!("did you mean '{s}'?"),
                                None => "expected subject, defaults or description".to_string(),
                            };
                            diags.push(
                                Diagnostic::error(
                                    path,
                                    format!("unknown key '{other}' in template front matter"),
                                )
                                .at(loc, &source)
                                .with_help(help),
                            );
                        }
                    }
                }
            }
        }
        let Some((subject, subject_loc)) = subject else {
            if !diags.has_errors() {
                diags.push(
                    Diagnostic::error(path, "the template has no subject")
                        .at(Location::new(front.yaml_first_line, 1, 1), &source)
                        .with_help("add `subject: ...` between the '---' lines"),
                );
            }
            return diags;
        };
        if subject.contains(['\r', '\n']) {
            diags.push(
                Diagnostic::error(path, "the subject must be one line")
                    .at(subject_loc.clone(), &source),
            );
        }
        let mut parts = vec![Part {
            kind: PartKind::Subject,
            path: path.to_path_buf(),
            first_line: subject_loc.line,
            first_column: subject_loc.column,
            source: source.clone(),
        }];
        let mut bodies = vec![(PartKind::Subject, subject)];
        if !front.body.trim().is_empty() {
            parts.push(Part {
                kind: PartKind::Text,
                path: path.to_path_buf(),
                first_line: front.body_first_line,
                first_column: 1,
                source: source.clone(),
            });
            bodies.push((PartKind::Text, front.body.to_string()));
        }
        let mut html_path = None;
        if let Some((hp, h)) = html {
            parts.push(Part {
                kind: PartKind::Html,
                path: hp.clone(),
                first_line: 1,
                first_column: 1,
                source: Arc::from(h.as_str()),
            });
            bodies.push((PartKind::Html, h));
            html_path = Some(hp);
        }
        if bodies.len() == 1 {
            diags.push(
                Diagnostic::error(path, "the template has no body")
                    .at(Location::new(front.body_first_line.saturating_sub(1).max(1), 1, 3), &source)
                    .with_help(format!("write the text after the closing '---', or put HTML in templates/{name}.html")),
            );
            return diags;
        }
        for (kind, body) in &bodies {
            let registry = if *kind == PartKind::Html {
                &mut self.html
            } else {
                &mut self.plain
            };
            let key = format!("{name}.{}", kind.suffix());
            if let Some((line, col)) = too_deep_blocks(body, MAX_BLOCK_DEPTH) {
                // Handlebars compiles and renders blocks by recursion: 2,000 nested
                // `{{#if}}` overflow the stack. Not registered at all.
                let part = parts
                    .iter()
                    .find(|p| p.kind == *kind)
                    .expect("part registered above");
                // Without the line's text, which may be thousands of `{{#if}}`.
                let mut d = Diagnostic::error(
                    &part.path,
                    format!("blocks or ( ) nested more than {MAX_BLOCK_DEPTH} deep"),
                );
                d.location = Some(part.location(line, col, 2));
                diags.push(d);
                continue;
            }
            if let Err(e) = registry.register_template_string(&key, body) {
                let part = parts
                    .iter()
                    .find(|p| p.kind == *kind)
                    .expect("part registered above");
                let (line, col) = e.pos().unwrap_or((1, 1));
                let reason = e.reason().to_string();
                // pest lists every token it could have accepted; that reads as noise.
                let reason = if reason.contains("expected escape, expression") {
                    "invalid Handlebars syntax: an unclosed {{#block}}, or a stray {{ or }}"
                        .to_string()
                } else {
                    reason
                };
                diags.push(
                    Diagnostic::error(&part.path, format!("template syntax error: {reason}"))
                        .at(part.location(line, col, 1), &part.source),
                );
            }
        }
        if !diags.has_errors() {
            self.by_name.insert(
                name.clone(),
                Template {
                    name,
                    path: path.to_path_buf(),
                    html_path,
                    defaults,
                    parts,
                },
            );
        }
        diags
    }

    /// Renders a template for a contact. `fields` are the contact's fields (empty values
    /// count as missing); the template's defaults fill the gaps.
    pub fn render(&self, name: &str, fields: &Map<String, Value>) -> Result<Rendered, RenderError> {
        let t = self
            .by_name
            .get(name)
            .ok_or_else(|| RenderError::UnknownTemplate(name.to_string()))?;
        let mut data = Map::new();
        for (k, v) in &t.defaults {
            data.insert(k.clone(), Value::String(v.clone()));
        }
        for (k, v) in fields {
            let present = match v {
                Value::Null => false,
                Value::String(s) => !s.trim().is_empty(),
                _ => true,
            };
            if present {
                data.insert(k.clone(), v.clone());
            }
        }
        let data = Value::Object(data);
        let mut out = Rendered {
            subject: String::new(),
            text: String::new(),
            html: String::new(),
        };
        for part in &t.parts {
            let key = format!("{name}.{}", part.kind.suffix());
            let registry = if part.kind == PartKind::Html {
                &self.html
            } else {
                &self.plain
            };
            let rendered = registry.render(&key, &data).map_err(|e| match e.reason() {
                RenderErrorReason::MissingVariable(Some(field)) => {
                    let loc = part.location(
                        e.line_no.unwrap_or(1),
                        e.column_no.unwrap_or(1),
                        field.len(),
                    );
                    RenderError::MissingField {
                        field: field.clone(),
                        path: part.path.display().to_string(),
                        line: loc.line,
                        column: loc.column,
                    }
                }
                _ => RenderError::Other(format!("{}: {e}", part.path.display())),
            })?;
            match part.kind {
                PartKind::Subject => out.subject = one_line(&rendered),
                PartKind::Text => out.text = rendered,
                PartKind::Html => out.html = rendered,
            }
        }
        if out.text.trim().is_empty() {
            out.text = html_to_text(&out.html, Style::Readable);
        }
        if out.html.is_empty() {
            out.html = text_to_html(&out.text);
        }
        Ok(out)
    }

    /// Fields that the template uses and that neither a default nor `available` provides,
    /// each with the place of its first use. Found by rendering in strict mode against
    /// the available fields and adding each missing one until the render succeeds, so it
    /// sees exactly what a real render would need.
    pub fn fields_without_fallback(
        &self,
        name: &str,
        available: &BTreeSet<String>,
    ) -> Vec<FieldUse> {
        let Some(t) = self.by_name.get(name) else {
            return Vec::new();
        };
        let mut fields = Map::new();
        for f in available
            .iter()
            .map(String::as_str)
            .chain(BUILTIN_FIELDS.iter().copied())
        {
            fields.insert(f.to_string(), Value::String("x".into()));
        }
        fields.insert(
            "sender".into(),
            serde_json::json!({"name": "x", "email": "x@example.com"}),
        );
        let mut out = Vec::new();
        // Each round finds one missing field; a template cannot use more fields than it
        // has characters, so this bound only guards against a runaway.
        for _ in 0..256 {
            match self.render(name, &fields) {
                Err(RenderError::MissingField {
                    field,
                    path,
                    line,
                    column,
                }) => {
                    let part = t
                        .parts
                        .iter()
                        .find(|p| p.path.display().to_string() == path);
                    out.push(FieldUse {
                        field: field.clone(),
                        path: PathBuf::from(&path),
                        location: Location::new(line, column, field.chars().count()),
                        source: part
                            .map(|p| p.source.clone())
                            .unwrap_or_else(|| Arc::from("")),
                    });
                    insert_path(&mut fields, &field);
                }
                _ => break,
            }
        }
        out
    }
}

impl Part {
    /// A position inside the part → a position in its file.
    fn location(&self, line: usize, column: usize, len: usize) -> Location {
        let file_line = self.first_line + line.saturating_sub(1);
        let file_col = if line <= 1 {
            self.first_column + column.saturating_sub(1)
        } else {
            column
        };
        Location::new(file_line, file_col, len)
    }
}

/// Sets `a.b.c` in a JSON object to a placeholder, creating the objects on the way.
fn insert_path(fields: &mut Map<String, Value>, path: &str) {
    let mut parts = path.split('.').peekable();
    let mut cur = fields;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), Value::String("x".into()));
            return;
        }
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(m) => cur = m,
            _ => return,
        }
    }
}

struct FrontMatter<'a> {
    yaml: &'a str,
    yaml_first_line: usize,
    body: &'a str,
    body_first_line: usize,
}

/// Blocks (`{{#if}}`, `{{#each}}`, `{{^x}}`) open one inside the other, and
/// subexpressions `( )` inside one `{{ }}`, that a template may have.
pub const MAX_BLOCK_DEPTH: usize = 64;

/// Where block or subexpression nesting in a Handlebars text first passes `max`, as
/// (line, column) of its `{{`, 1-based. A scan without recursion; comments are skipped.
fn too_deep_blocks(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find("{{") {
        let at = offset + i;
        let inner = rest[i + 2..].trim_start_matches(['{', '~']);
        let (close, skip) = if inner.starts_with("!--") {
            ("--}}", 4)
        } else {
            ("}}", 2)
        };
        let end = inner.find(close).map_or(inner.len(), |e| e + skip);
        let mustache = &inner[..end.min(inner.len())];
        match mustache.as_bytes().first() {
            Some(b'#') => depth += 1,
            Some(b'^') if !mustache[1..].trim_start_matches('~').starts_with('}') => depth += 1,
            Some(b'/') => depth = depth.saturating_sub(1),
            _ => {}
        }
        let mut parens = 0usize;
        let mut deepest = 0usize;
        for b in mustache.bytes() {
            match b {
                b'(' => {
                    parens += 1;
                    deepest = deepest.max(parens);
                }
                b')' => parens = parens.saturating_sub(1),
                _ => {}
            }
        }
        if depth > max || deepest > max {
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before[before.rfind('\n').map_or(0, |n| n + 1)..]
                .chars()
                .count()
                + 1;
            return Some((line, column));
        }
        let consumed = text.len() - inner.len() + end.min(inner.len());
        offset = consumed.max(at + 2);
        rest = &text[offset..];
    }
    None
}

/// Partials one render may pass through, one inside the other.
pub const MAX_PARTIAL_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PartialKind {
    Html,
    Plain,
}

/// A registered template (or an inline partial, `KEY#NAME`), in its registry.
type PartialNode = (PartialKind, String);

/// One `{{> name}}`: what it names (None when computed) and where.
#[derive(Debug)]
struct PartialRef {
    target: Option<PartialNode>,
    line: usize,
    column: usize,
}

/// Which template includes which, read from the compiled templates.
#[derive(Debug, Default)]
struct PartialGraph {
    edges: BTreeMap<PartialNode, Vec<PartialRef>>,
}

impl PartialGraph {
    fn add(&mut self, kind: PartialKind, key: &str, tpl: &handlebars::template::Template) {
        let mut inline = BTreeMap::new();
        collect_inline(tpl, &mut inline);
        let mut refs = Vec::new();
        collect_refs(kind, key, tpl, &inline, &mut refs);
        for (name, body) in &inline {
            let mut inner = Vec::new();
            collect_refs(kind, key, body, &inline, &mut inner);
            self.edges.insert((kind, format!("{key}#{name}")), inner);
        }
        self.edges.insert((kind, key.to_string()), refs);
    }

    /// Whether following `start` leads back to `origin` or deeper than the limit. An
    /// explicit stack: the walk itself must not be what overflows.
    fn cycle_or_depth(&self, start: &PartialNode, origin: &PartialNode) -> Option<String> {
        let mut stack: Vec<(&PartialNode, usize)> = vec![(start, 1)];
        let mut seen: BTreeSet<&PartialNode> = BTreeSet::new();
        while let Some((node, depth)) = stack.pop() {
            if node == origin {
                return Some(format!(
                    "partial '{}' includes '{}' again: the render would never end",
                    start.1, origin.1
                ));
            }
            if depth > MAX_PARTIAL_DEPTH {
                return Some(format!(
                    "partials nested more than {MAX_PARTIAL_DEPTH} deep through '{}'",
                    start.1
                ));
            }
            if !seen.insert(node) {
                continue;
            }
            for r in self.edges.get(node).into_iter().flatten() {
                if let Some(t) = &r.target {
                    stack.push((t, depth + 1));
                }
            }
        }
        None
    }
}

/// `{{#*inline "name"}}...{{/inline}}` blocks of a template, by name.
fn collect_inline(
    tpl: &handlebars::template::Template,
    out: &mut BTreeMap<String, handlebars::template::Template>,
) {
    use handlebars::template::{Parameter, TemplateElement};
    for el in &tpl.elements {
        if let TemplateElement::DecoratorBlock(d) = el {
            if d.name.as_name() == Some("inline") {
                if let (Some(Parameter::Literal(serde_json::Value::String(n))), Some(body)) =
                    (d.params.first(), &d.template)
                {
                    out.insert(n.clone(), body.clone());
                }
            }
        }
        for inner in nested(el) {
            collect_inline(inner, out);
        }
    }
}

/// The `{{> name}}` of a template, in its blocks too.
fn collect_refs(
    kind: PartialKind,
    key: &str,
    tpl: &handlebars::template::Template,
    inline: &BTreeMap<String, handlebars::template::Template>,
    out: &mut Vec<PartialRef>,
) {
    use handlebars::template::TemplateElement;
    for (i, el) in tpl.elements.iter().enumerate() {
        if let TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) = el {
            let (line, column) = tpl.mapping.get(i).map_or((1, 1), |m| (m.0, m.1));
            let target = d.name.as_name().map(|n| match inline.contains_key(n) {
                // An inline partial shadows a template of the same name.
                true => (kind, format!("{key}#{n}")),
                false => (kind, n.to_string()),
            });
            out.push(PartialRef {
                target,
                line,
                column,
            });
        }
        for inner in nested(el) {
            collect_refs(kind, key, inner, inline, out);
        }
    }
}

/// The templates inside a block element.
fn nested(
    el: &handlebars::template::TemplateElement,
) -> impl Iterator<Item = &handlebars::template::Template> {
    use handlebars::template::TemplateElement;
    let (a, b) = match el {
        TemplateElement::HelperBlock(h) => (h.template.as_ref(), h.inverse.as_ref()),
        TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
            (d.template.as_ref(), None)
        }
        _ => (None, None),
    };
    a.into_iter().chain(b)
}

/// `---\n<yaml>\n---\n<body>`: a BOM and CRLF line ends are fine.
fn split_front_matter(text: &str) -> Option<FrontMatter<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    let first = lines.next()?;
    if first.trim_end() != "---" {
        return None;
    }
    let yaml_start = first.len();
    let mut offset = yaml_start;
    let mut line_no = 1;
    for line in lines {
        line_no += 1;
        if line.trim_end() == "---" {
            return Some(FrontMatter {
                yaml: &text[yaml_start..offset],
                yaml_first_line: 2,
                body: &text[offset + line.len()..],
                body_first_line: line_no + 1,
            });
        }
        offset += line.len();
    }
    None
}

/// Subjects are one line: any line break or control character a field brings in
/// becomes a space (lettre would encode it anyway; this keeps the subject readable).
fn one_line(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The HTML part made from a text part: escaped, paragraphs and line breaks kept.
pub fn text_to_html(text: &str) -> String {
    let text: std::borrow::Cow<'_, str> = if text.contains('\r') {
        text.replace("\r\n", "\n").into()
    } else {
        text.into()
    };
    let mut html = String::with_capacity(text.len() + text.len() / 8 + 64);
    html.push_str("<!DOCTYPE html>\n<html><body>\n");
    for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        html.push_str("<p>");
        for (i, line) in para.trim_matches('\n').lines().enumerate() {
            if i > 0 {
                html.push_str("<br>\n");
            }
            escape_html_into(&mut html, line);
        }
        html.push_str("</p>\n");
    }
    html.push_str("</body></html>\n");
    html
}

/// Escapes text for HTML: the five characters that matter, nothing else (handlebars'
/// own escaper also encodes `=` and backticks, which makes plain text ugly).
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_html_into(&mut out, s);
    out
}

/// `escape_html` appending to `out`. It copies the runs between special characters
/// whole: the five are ASCII, so every cut is on a character boundary.
pub(crate) fn escape_html_into(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let entity = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(entity);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Decodes the character references HTML text and attributes commonly carry; anything
/// else is kept as written.
pub(crate) fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        // Bytes, not a str slice: the 12th byte may fall inside a character.
        let end = tail.as_bytes()[..tail.len().min(12)]
            .iter()
            .position(|b| *b == b';');
        let decoded = end.and_then(|e| {
            let ent = &tail[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" | "#x27" => Some('\''),
                "nbsp" => Some(' '),
                _ if ent.starts_with("#x") => u32::from_str_radix(&ent[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &tail[e + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_ampersand_before_chinese_text_is_kept() {
        // Used to slice 12 bytes after the '&', inside the fourth character: a panic at
        // send time for an HTML template like this one.
        assert_eq!(
            html_to_text("<p>售后&服务保障</p>", Style::Readable).trim(),
            "售后&服务保障"
        );
        assert_eq!(decode_entities("&李雷雷雷"), "&李雷雷雷");
    }
    use serde_json::json;

    fn templates(hbs: &str, html: Option<&str>) -> (Templates, Diagnostics) {
        let mut t = Templates::empty();
        let d = t.add(
            Path::new("templates/intro.hbs"),
            hbs,
            html.map(|h| (PathBuf::from("templates/intro.html"), h.to_string())),
        );
        (t, d)
    }

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    const HBS: &str = "---\nsubject: Hello {{first_name}} at {{company}}\ndefaults:\n  first_name: there\n---\nHi {{first_name}},\n\n{{company}} & us.\n";

    #[test]
    fn renders_with_fields_and_defaults() {
        let (t, d) = templates(HBS, Some("<p>Hi {{first_name}} from {{company}}</p>"));
        assert!(d.is_empty(), "{:?}", d.items);
        let r = t
            .render(
                "intro",
                &fields(json!({"company": "AT&T <Labs>", "first_name": ""})),
            )
            .unwrap();
        assert_eq!(r.subject, "Hello there at AT&T <Labs>");
        assert_eq!(
            r.text, "Hi there,\n\nAT&T <Labs> & us.\n",
            "text is not HTML-escaped"
        );
        assert_eq!(
            r.html, "<p>Hi there from AT&amp;T &lt;Labs&gt;</p>",
            "HTML is escaped"
        );
    }

    #[test]
    fn missing_field_is_an_error_with_its_place() {
        let (t, _) = templates(HBS, None);
        let e = t
            .render("intro", &fields(json!({"first_name": "Li"})))
            .unwrap_err();
        assert_eq!(
            e,
            RenderError::MissingField {
                field: "company".into(),
                path: "templates/intro.hbs".into(),
                line: 2,
                column: 34
            }
        );
    }

    #[test]
    fn subject_cannot_carry_line_breaks() {
        let (t, _) = templates(HBS, None);
        let r = t
            .render(
                "intro",
                &fields(json!({"company": "X\r\nBcc: evil@example.com"})),
            )
            .unwrap();
        assert_eq!(r.subject, "Hello there at X Bcc: evil@example.com");
    }

    #[test]
    fn text_made_from_html_and_html_from_text() {
        let (t, d) = templates(
            "---\nsubject: Hi\n---\n",
            Some("<html><head><style>p{}</style></head><body><p>Hello &amp; welcome,</p><p>See <a href=\"https://example.com/case\">our case</a>.<br>Bye</p></body></html>"),
        );
        assert!(d.is_empty(), "{:?}", d.items);
        let r = t.render("intro", &Map::new()).unwrap();
        assert_eq!(
            r.text,
            "Hello & welcome,\n\nSee our case (https://example.com/case).\nBye\n"
        );
        let (t, _) = templates(
            "---\nsubject: Hi\n---\nLine <one>\nline two\n\nPara\n",
            None,
        );
        let r = t.render("intro", &Map::new()).unwrap();
        assert!(
            r.html
                .contains("<p>Line &lt;one&gt;<br>\nline two</p>\n<p>Para</p>"),
            "{}",
            r.html
        );
    }

    #[test]
    fn html_made_from_text_escapes_any_script_and_line_end() {
        assert_eq!(
            escape_html("王小明 & 'Müller' <b>\"x\"</b>"),
            "王小明 &amp; &#39;Müller&#39; &lt;b&gt;&quot;x&quot;&lt;/b&gt;"
        );
        assert_eq!(escape_html("plain"), "plain");
        assert_eq!(
            text_to_html("您好 <王>,\r\nzweite Zeile\r\n\r\n\r\nGrüße & bye\r\n"),
            "<!DOCTYPE html>\n<html><body>\n<p>您好 &lt;王&gt;,<br>\nzweite Zeile</p>\n\
             <p>Grüße &amp; bye</p>\n</body></html>\n"
        );
    }

    #[test]
    fn deep_blocks_are_refused_at_their_place() {
        assert_eq!(too_deep_blocks("{{#if a}}x{{/if}}{{! {{#if}} }}", 1), None);
        let deep = format!("Hi\n  {}{}", "{{#if x}}".repeat(65), "{{/if}}".repeat(65));
        assert_eq!(too_deep_blocks(&deep, 64), Some((2, 3 + 64 * 9)));
        let parens = format!("{{{{x {}{}}}}}", "(y ".repeat(65), ")".repeat(65));
        assert_eq!(too_deep_blocks(&parens, 64), Some((1, 1)));
        // Siblings are not nesting.
        assert_eq!(too_deep_blocks(&"{{#if x}}a{{/if}}".repeat(1000), 64), None);
        let (_, d) = templates(&format!("---\nsubject: Hi\n---\n{deep}\n"), None);
        assert_eq!(
            d.items[0].to_string().lines().next(),
            Some("templates/intro.hbs:5:579: error: blocks or ( ) nested more than 64 deep")
        );
    }

    #[test]
    fn syntax_errors_point_into_the_file() {
        let (_, d) = templates("---\nsubject: Hi\n---\nHello\n{{#if x}}oops\n", None);
        let e = d.items[0].to_string();
        assert!(e.starts_with("templates/intro.hbs:"), "{e}");
        assert!(e.contains("template syntax error"), "{e}");
    }

    #[test]
    fn front_matter_problems() {
        let (_, d) = templates("Hello\n", None);
        assert!(d.items[0]
            .to_string()
            .starts_with("templates/intro.hbs:1:1: error: a template starts with a '---' line"));
        let (_, d) = templates("---\nsubjet: Hi\n---\nBody\n", None);
        let e = d.items[0].to_string();
        assert!(
            e.starts_with(
                "templates/intro.hbs:2:1: error: unknown key 'subjet' in template front matter"
            ),
            "{e}"
        );
        assert!(e.contains("did you mean 'subject'?"), "{e}");
    }

    #[test]
    fn finds_fields_without_fallback() {
        let (t, _) = templates(HBS, Some("<p>{{title}} {{first_name}}</p>"));
        let available: BTreeSet<String> = ["email".to_string()].into();
        let uses = t.fields_without_fallback("intro", &available);
        let got: Vec<(String, String, usize, usize)> = uses
            .iter()
            .map(|u| {
                (
                    u.field.clone(),
                    u.path.display().to_string(),
                    u.location.line,
                    u.location.column,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("company".into(), "templates/intro.hbs".into(), 2, 34),
                ("title".into(), "templates/intro.html".into(), 1, 4),
            ]
        );
        let available: BTreeSet<String> = ["company".to_string(), "title".to_string()].into();
        assert!(t.fields_without_fallback("intro", &available).is_empty());
    }
}
