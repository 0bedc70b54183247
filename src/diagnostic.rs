//! Problems found in the files users write, reported as `path:line:column: message`
//! with the offending line shown, the way a compiler does.
//!
//! Every loader (config, sequences, templates, contacts) pushes [`Diagnostic`]s into a
//! [`Diagnostics`] list instead of stopping at the first problem, so `followup check`
//! can print them all at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How bad a finding is: errors make `check` exit 1 and `run` refuse to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// A place in a file: 1-based line and column (in characters), plus a length to underline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    /// Characters to underline; at least 1 when rendered.
    pub len: usize,
}

impl Location {
    pub fn new(line: usize, column: usize, len: usize) -> Self {
        Location { line, column, len }
    }
}

/// One problem in one file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: PathBuf,
    /// None when the problem concerns the file as a whole (missing, unreadable).
    pub location: Option<Location>,
    pub message: String,
    /// A hint shown under the underline, e.g. "did you mean 'bump'?".
    pub help: Option<String>,
    /// The file's text, kept to show the offending line.
    #[serde(skip)]
    pub source: Option<Arc<str>>,
}

impl Diagnostic {
    pub fn error(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            location: None,
            message: message.into(),
            help: None,
            source: None,
        }
    }

    pub fn warning(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(path, message)
        }
    }

    pub fn at(mut self, location: Location, source: &Arc<str>) -> Self {
        self.location = Some(location);
        self.source = Some(source.clone());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    fn source_line(&self) -> Option<&str> {
        let loc = self.location.as_ref()?;
        self.source
            .as_deref()?
            .lines()
            .nth(loc.line.checked_sub(1)?)
    }
}

impl fmt::Display for Diagnostic {
    /// ```text
    /// sequences/intro.yaml:7:15: error: unknown template 'bumpp'
    ///    |
    ///  7 |     template: bumpp
    ///    |               ^^^^^ did you mean 'bump'?
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let path = self.path.display();
        match &self.location {
            Some(loc) => write!(
                f,
                "{path}:{}:{}: {sev}: {}",
                loc.line, loc.column, self.message
            )?,
            None => write!(f, "{path}: {sev}: {}", self.message)?,
        }
        match (self.source_line(), &self.location) {
            (Some(text), Some(loc)) => {
                let num = loc.line.to_string();
                let pad = " ".repeat(num.len());
                let text = text.trim_end_matches('\r');
                // Columns count characters; tabs are kept so the caret lines up under them.
                let lead: String = text
                    .chars()
                    .take(loc.column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let carets = "^".repeat(loc.len.max(1));
                write!(f, "\n{pad} |\n{num} | {text}\n{pad} | {lead}{carets}")?;
                if let Some(help) = &self.help {
                    write!(f, " {help}")?;
                }
            }
            _ => {
                if let Some(help) = &self.help {
                    write!(f, "\n  = help: {help}")?;
                }
            }
        }
        Ok(())
    }
}

/// Everything found so far, in the order found.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The closest candidate to `name`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len().max(name.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The IANA time zone an unknown name most likely meant: the same name in other case
/// ("asia/shanghai"), a city without its region ("Berlin"), or a near spelling
/// ("Asia/Shangai").
pub fn closest_time_zone(name: &str) -> Option<&'static str> {
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let name = name.trim();
    names()
        .find(|n| n.eq_ignore_ascii_case(name))
        .or_else(|| {
            names().find(|n| {
                n.rsplit('/')
                    .next()
                    .is_some_and(|city| city.eq_ignore_ascii_case(&name.replace(' ', "_")))
            })
        })
        .or_else(|| did_you_mean(name, names()))
}

/// "unknown time zone 'X'", with the name it most likely meant, or an example.
pub fn unknown_time_zone(name: &str) -> (String, String) {
    let help = match closest_time_zone(name) {
        Some(tz) => format!("did you mean '{tz}'?"),
        None => "use an IANA name such as Asia/Shanghai or Europe/Berlin".to_string(),
    };
    (format!("unknown time zone '{name}'"), help)
}

/// Shows `path` relative to `base` when it is inside it, so messages stay short.
pub fn display_path(base: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_caret() {
        let src: Arc<str> = Arc::from("name: intro\nsteps:\n  - id: first\n    template: bumpp\n");
        let d = Diagnostic::error("sequences/intro.yaml", "unknown template 'bumpp'")
            .at(Location::new(4, 15, 5), &src)
            .with_help("did you mean 'bump'?");
        assert_eq!(
            d.to_string(),
            "sequences/intro.yaml:4:15: error: unknown template 'bumpp'\n  |\n4 |     template: bumpp\n  |               ^^^^^ did you mean 'bump'?"
        );
    }

    #[test]
    fn whole_file_problem_has_no_excerpt() {
        let d = Diagnostic::error("followup.toml", "cannot read: No such file")
            .with_help("run `followup init`");
        assert_eq!(
            d.to_string(),
            "followup.toml: error: cannot read: No such file\n  = help: run `followup init`"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("tempalte", ["template", "thread", "wait"]),
            Some("template")
        );
        assert_eq!(did_you_mean("sender", ["steps", "name"]), None);
        assert_eq!(did_you_mean("windw", ["window", "wait"]), Some("window"));
    }

    #[test]
    fn suggests_time_zones() {
        assert_eq!(closest_time_zone("Asia/Shangai"), Some("Asia/Shanghai"));
        assert_eq!(closest_time_zone("europe/berlin"), Some("Europe/Berlin"));
        assert_eq!(closest_time_zone("Berlin"), Some("Europe/Berlin"));
        assert_eq!(closest_time_zone("New York"), Some("America/New_York"));
        assert_eq!(closest_time_zone("Mars/Olympus"), None);
    }
}
