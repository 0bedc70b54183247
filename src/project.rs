//! A project directory as a whole: `followup.toml`, `templates/`, `sequences/` and the
//! contacts CSV, loaded and checked together so that `followup check` reports every
//! problem at once and `followup run` refuses to start on the same ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;

use crate::config::{self, Config};
use crate::contacts;
use crate::diagnostic::{display_path, Diagnostic, Diagnostics};
use crate::model::Contact;
use crate::schedule::{Holidays, Window};
use crate::sequence::{self, Known, Sequence};
use crate::template::Templates;

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
    /// Loads and validates everything. `need_secrets`: passwords must resolve (run).
    /// Warnings come back with the project; any error means no project.
    pub fn load(
        config_path: &Path,
        need_secrets: bool,
    ) -> Result<(Project, Diagnostics), Diagnostics> {
        let mut diags = Diagnostics::default();
        let config = match config::load(config_path, need_secrets) {
            Ok(c) => c,
            Err(d) => {
                diags.extend(d);
                // Templates and sequences are still checked so that every problem shows.
                let root = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
                let (templates, d) = Templates::load_dir(&root.join("templates"));
                diags.extend(d);
                let known = Known {
                    mailboxes: Default::default(),
                    templates: templates.names(),
                };
                let (_, d) = sequence::load_dir(&root.join("sequences"), &known);
                // Without a config, every sender is unknown: those errors would be noise.
                diags.items.extend(
                    d.items
                        .into_iter()
                        .filter(|d| !d.message.starts_with("unknown mailbox")),
                );
                return Err(diags);
            }
        };
        let (templates, d) = Templates::load_dir(&config.templates_dir());
        diags.extend(d);
        let known = Known {
            mailboxes: config.mailboxes.keys().cloned().collect(),
            templates: templates.names(),
        };
        let (seqs, d) = sequence::load_dir(&config.sequences_dir(), &known);
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
        project.check_contact_fields(&mut diags);
        project.check_compliance(&mut diags);
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

    /// Fields a template uses with no default where the project's contacts CSV lacks
    /// them: the column is missing, or empty in some rows.
    fn check_contact_fields(&self, diags: &mut Diagnostics) {
        let Some(csv_path) = &self.config.contacts else {
            return;
        };
        let parsed = match contacts::read_csv(csv_path) {
            Ok(p) => p,
            Err(e) => {
                diags.push(Diagnostic::error(
                    csv_path,
                    format!("cannot read the contacts CSV: {e}"),
                ));
                return;
            }
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
    fn check_compliance(&self, diags: &mut Diagnostics) {
        use crate::sequence::Unsubscribe;
        /// Gmail's and Yahoo's bulk-sender rules apply from 5,000 a day to their users.
        const BULK: u64 = 5_000;
        let csv_rows = self
            .config
            .contacts
            .as_ref()
            .and_then(|p| contacts::read_csv(p).ok())
            .map(|p| p.contacts.len())
            .unwrap_or(0);
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
