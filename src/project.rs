//! A project directory as a whole: `followup.toml`, `templates/`, `sequences/` and the
//! contacts CSV, loaded and checked together so that `followup check` reports every
//! problem at once and `followup run` refuses to start on the same ones.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;

use crate::config::{self, Config};
use crate::contacts;
use crate::diagnostic::{display_path, Diagnostic, Diagnostics};
use crate::model::Contact;
use crate::schedule::{Holidays, Window};
use crate::sequence::{self, Known, Sequence};
use crate::template::Templates;

/// Why a project file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A symlink (or `..`) leading out of the project folder: a pull request could
    /// otherwise make `check` in CI print lines of any file the runner can read.
    #[error("it leads outside the project folder (to {}); only files inside it are read", .0.display())]
    Outside(PathBuf),
    #[error("not a regular file")]
    NotAFile,
    #[error("larger than {limit} bytes ([limits] max_file_size); refused")]
    TooLarge { limit: u64 },
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads the files of one project folder: only files inside it (symlinks resolved),
/// only regular files, and at most `max_size` bytes of each, so that a template
/// symlinked to `/dev/zero` or a huge file is refused at once instead of read whole.
#[derive(Debug, Clone)]
pub struct Files {
    /// The project folder, resolved.
    root: PathBuf,
    max_size: u64,
}

impl Files {
    pub fn new(root: &Path, max_size: u64) -> Files {
        Files {
            root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
            max_size,
        }
    }

    /// `path` resolved, if it stays inside the project folder.
    pub fn inside(&self, path: &Path) -> Result<PathBuf, FileError> {
        let real = path.canonicalize()?;
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(FileError::Outside(real))
        }
    }

    /// The text of a file inside the project.
    pub fn read(&self, path: &Path) -> Result<String, FileError> {
        let real = self.inside(path)?;
        read_bounded(&real, self.max_size)
    }
}

/// Reads a regular file of at most `limit` bytes as UTF-8, never more than `limit + 1`.
pub fn read_bounded(path: &Path, limit: u64) -> Result<String, FileError> {
    // Looked at before opening: opening a FIFO would block.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(FileError::NotAFile);
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    String::from_utf8(bytes).map_err(|_| FileError::NotUtf8)
}

/// Everything the daemon and the commands need from the files users write.
#[derive(Debug)]
pub struct Project {
    pub config: Config,
    pub templates: Templates,
    pub sequences: BTreeMap<String, Sequence>,
    /// Where each sequence was read from.
    pub sequence_paths: BTreeMap<String, PathBuf>,
}

impl Project {
    /// Loads and validates everything. `need_secrets`: passwords and the tracking
    /// secret must resolve (`check`, `run`).
    /// Warnings come back with the project; any error means no project.
    pub fn load(
        config_path: &Path,
        need_secrets: bool,
    ) -> Result<(Project, Diagnostics), Diagnostics> {
        let mut diags = Diagnostics::default();
        let config = match config::load(config_path, need_secrets) {
            Ok((c, warnings)) => {
                diags.extend(warnings);
                c
            }
            Err(d) => {
                diags.extend(d);
                // Templates and sequences are still checked so that every problem shows.
                let root = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
                let root = if root.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    root
                };
                let files = Files::new(&root, config::Limits::default().max_file_size);
                let (templates, d) = Templates::load_dir(&root.join("templates"), &files);
                diags.extend(d);
                let known = Known {
                    mailboxes: Default::default(),
                    templates: templates.known_names(),
                };
                let (_, d) = sequence::load_dir(&root.join("sequences"), &known, &files);
                // Without a config, every sender is unknown: those errors would be noise.
                diags.items.extend(
                    d.items
                        .into_iter()
                        .filter(|d| !d.message.starts_with("unknown mailbox")),
                );
                for d in &mut diags.items {
                    d.path = display_path(&root, &d.path);
                }
                return Err(diags);
            }
        };
        let files = Files::new(&config.root, config.limits.max_file_size);
        let (templates, d) = Templates::load_dir(&config.templates_dir(), &files);
        diags.extend(d);
        let known = Known {
            mailboxes: config.mailboxes.keys().cloned().collect(),
            templates: templates.known_names(),
        };
        let (seqs, d) = sequence::load_dir(&config.sequences_dir(), &known, &files);
        diags.extend(d);
        if seqs.is_empty() && !diags.has_errors() {
            diags.push(Diagnostic::warning(
                config.sequences_dir(),
                "no sequences (*.yaml) yet",
            ));
        }
        let mut sequences = BTreeMap::new();
        let mut sequence_paths = BTreeMap::new();
        for (path, s) in seqs {
            sequence_paths.insert(s.name.clone(), path);
            sequences.insert(s.name.clone(), s);
        }
        let project = Project {
            config,
            templates,
            sequences,
            sequence_paths,
        };
        let csv = project.project_csv(&files, &mut diags);
        project.check_contact_fields(csv.as_ref(), &mut diags);
        project.check_compliance(csv.as_ref(), &mut diags);
        // Paths relative to the project read better.
        for d in &mut diags.items {
            d.path = display_path(&project.config.root, &d.path);
        }
        if diags.has_errors() {
            Err(diags)
        } else {
            Ok((project, diags))
        }
    }

    /// The project's contacts CSV (`contacts =`), read once for the checks below: only
    /// from inside the project folder, since its rows are echoed in warnings.
    fn project_csv(&self, files: &Files, diags: &mut Diagnostics) -> Option<contacts::Parsed> {
        let csv_path = self.config.contacts.as_ref()?;
        // Not size-bounded: a list may rightly be large. But only a regular file: a
        // FIFO would block `check`.
        let read = files
            .inside(csv_path)
            .and_then(|p| match std::fs::metadata(&p)?.is_file() {
                true => Ok(p),
                false => Err(FileError::NotAFile),
            })
            .map_err(|e| e.to_string())
            .and_then(|p| contacts::read_csv(&p, &self.config.limits).map_err(|e| e.to_string()));
        match read {
            Ok(p) => Some(p),
            Err(e) => {
                diags.push(Diagnostic::error(
                    csv_path,
                    format!("cannot read the contacts CSV: {e}"),
                ));
                None
            }
        }
    }

    /// Fields a template uses with no default where the project's contacts CSV lacks
    /// them: the column is missing, or empty in some rows.
    fn check_contact_fields(&self, parsed: Option<&contacts::Parsed>, diags: &mut Diagnostics) {
        let (Some(csv_path), Some(parsed)) = (&self.config.contacts, parsed) else {
            return;
        };
        let csv_name = display_path(&self.config.root, csv_path);
        for p in &parsed.rejected {
            diags.push(Diagnostic::warning(csv_path, p.to_string()));
        }
        // Every template, not only those of sequences that loaded: a sequence with an
        // error elsewhere still sends these templates once it is fixed.
        let used_templates = self.templates.names();
        let columns: std::collections::BTreeSet<String> = parsed.columns.iter().cloned().collect();
        let mut available = parsed.always_present.clone();
        if self.config.postal_address.is_some() {
            available.insert("postal_address".into());
        }
        for name in &used_templates {
            for use_ in self.templates.fields_without_fallback(name, &available) {
                let msg = if columns.contains(&use_.field) {
                    let empty: Vec<String> = parsed
                        .contacts
                        .iter()
                        .filter(|c| !c.fields.contains_key(&use_.field))
                        .take(3)
                        .map(|c| c.email.clone())
                        .collect();
                    format!(
                        "field '{}' has no default and is empty for some contacts in {} (e.g. {})",
                        use_.field,
                        csv_name.display(),
                        empty.join(", ")
                    )
                } else {
                    format!(
                        "field '{}' has no default and {} has no '{}' column",
                        use_.field,
                        csv_name.display(),
                        use_.field
                    )
                };
                diags.push(
                    Diagnostic::error(&use_.path, msg)
                        .at(use_.location.clone(), &use_.source)
                        .with_help(format!("add `defaults: {{ {}: \"...\" }}` to the template's front matter, or fill the column", use_.field)),
                );
            }
        }
    }

    /// Warnings about opting out and bulk-mail rules: a sequence with no way to opt
    /// out, no postal address where many contacts get it (CAN-SPAM), and mailboxes that
    /// may send near the Gmail and Yahoo bulk-sender threshold without one-click.
    fn check_compliance(&self, parsed: Option<&contacts::Parsed>, diags: &mut Diagnostics) {
        use crate::sequence::Unsubscribe;
        /// Gmail's and Yahoo's bulk-sender rules apply from 5,000 a day to their users.
        const BULK: u64 = 5_000;
        let csv_rows = parsed.map(|p| p.contacts.len()).unwrap_or(0);
        for (name, seq) in &self.sequences {
            let Some(path) = self.sequence_paths.get(name) else {
                continue;
            };
            let templates: Vec<&str> = seq.templates().collect();
            // Point at `unsubscribe:` (or `sender:` when it is not written) in the file.
            let warn = |msg: String, at: Option<&crate::diagnostic::Location>| {
                let d = Diagnostic::warning(path, msg);
                match (at.or(seq.spans.sender.as_ref()), &seq.spans.source) {
                    (Some(loc), Some(src)) => d.at(loc.clone(), src),
                    _ => d,
                }
            };
            let at_unsub = seq.spans.unsubscribe.as_ref();
            let at_sender = seq.spans.sender.as_ref();
            let has_link = templates
                .iter()
                .all(|t| self.templates.mentions(t, "unsubscribe_url"));
            match seq.unsubscribe {
                Unsubscribe::Link if !has_link => diags.push(
                    warn(format!("sequence '{name}' has no way to opt out: not every template has {{{{unsubscribe_url}}}}"), at_unsub)
                        .with_help("put a link such as <a href=\"{{unsubscribe_url}}\">unsubscribe</a> in each template's footer, or set `unsubscribe: reply` and invite a reply"),
                ),
                Unsubscribe::OneClick if !has_link => diags.push(
                    warn(format!("sequence '{name}' opts out only through the List-Unsubscribe header: not every template has {{{{unsubscribe_url}}}}"), at_unsub)
                        .with_help("mail clients that hide the header leave no way out; add the link to each template's footer"),
                ),
                _ => {}
            }
            // The daily volume the sequence's mailboxes allow: None is no limit.
            let volume: Option<u64> = seq.senders.iter().try_fold(0u64, |acc, m| {
                let mb = self.config.mailboxes.get(m)?;
                if matches!(mb.transport, crate::config::Transport::File { .. }) {
                    return Some(acc);
                }
                mb.pacing.daily_limit.map(|l| acc + u64::from(l))
            });
            let many = csv_rows >= 50 || volume.is_none_or(|v| v >= 100);
            let has_address = templates.iter().all(|t| {
                self.templates.mentions(t, "postal_address")
                    || self
                        .config
                        .postal_address
                        .as_deref()
                        .is_some_and(|a| self.templates.contains_text(t, a))
            });
            if many && !has_address {
                diags.push(
                    warn(format!("sequence '{name}' may reach many contacts and not every template has a postal address (CAN-SPAM asks for one)"), at_sender)
                        .with_help("set postal_address = \"...\" in followup.toml and put {{postal_address}} in each template's footer"),
                );
            }
            if seq.unsubscribe != Unsubscribe::OneClick {
                let near = match volume {
                    Some(v) => v >= BULK * 8 / 10,
                    None => seq.senders.iter().any(|m| {
                        self.config.mailboxes.get(m).is_some_and(|mb| {
                            !matches!(mb.transport, crate::config::Transport::File { .. })
                                && mb.pacing.daily_limit.is_none()
                        })
                    }),
                };
                if near {
                    let allowed = volume
                        .map(|v| format!("{v} a day"))
                        .unwrap_or_else(|| "no daily limit".into());
                    diags.push(
                        warn(format!("sequence '{name}': its mailboxes allow {allowed}, near or past the 5,000 a day to one provider from which Gmail and Yahoo require one-click unsubscribe"), at_sender)
                            .with_help("set `unsubscribe: one-click` for bulk sending, or a daily_limit on each mailbox for one-to-one outreach"),
                    );
                }
            }
        }
    }

    pub fn sequence(&self, name: &str) -> Option<&Sequence> {
        self.sequences.get(name)
    }

    /// Window, time zone and days off that apply to a contact in a sequence.
    pub fn contact_schedule(&self, seq: &Sequence, c: &Contact) -> (Window, Tz, Holidays) {
        let window = seq
            .window
            .clone()
            .unwrap_or_else(|| self.config.window.clone());
        let tz = c
            .timezone
            .as_deref()
            .and_then(|t| t.parse::<Tz>().ok())
            .unwrap_or(self.config.timezone);
        (window, tz, self.config.holidays_for(c.country.as_deref()))
    }
}
