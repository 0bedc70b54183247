//! Importing contacts from a parsed CSV: storing them, retrying enrollments held for a
//! field the import fills, and enrolling them into a sequence. Large imports go a
//! slice at a time, each slice reported to a progress callback.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::enroll::{enroll, Enrolled};
use crate::contacts::Parsed;
use crate::project::Project;
use crate::sequence::Sequence;
use crate::store::{self, Store};

/// Contacts stored (and enrolled) per slice: small enough for a progress bar to move,
/// large enough that the per-statement cost does not show.
pub const SLICE: usize = 2_000;

/// A phase of an import, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Storing,
    Enrolling,
}

/// Told how far an import is: a phase starts with its total, slices are done, it ends.
pub trait Progress {
    fn start(&mut self, phase: Phase, total: usize);
    fn done(&mut self, n: usize);
    fn finish(&mut self);
}

/// A progress that shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: Phase, _: usize) {}
    fn done(&mut self, _: usize) {}
    fn finish(&mut self) {}
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub stored: usize,
    pub created: usize,
    pub updated: usize,
    /// Enrollments held for a missing field that will be tried again.
    pub retried: u64,
    /// The sequence enrolled into, and the result.
    pub enrolled: Option<(String, Enrolled)>,
}

impl Imported {
    pub fn unchanged(&self) -> usize {
        self.stored - self.created - self.updated
    }
}

/// Stores the parsed contacts (new ones created, known ones updated), lets enrollments
/// held for a field they now have try again, and enrolls them into `enroll` if given
/// (`again`: also those whose enrollment there ended).
pub async fn import(
    project: &Project,
    store: &Store,
    parsed: &Parsed,
    into: Option<(&Sequence, bool)>,
    progress: &mut dyn Progress,
    now: DateTime<Utc>,
) -> Result<Imported, store::Error> {
    progress.start(Phase::Storing, parsed.contacts.len());
    let mut upserted = Vec::with_capacity(parsed.contacts.len());
    for slice in parsed.contacts.chunks(SLICE) {
        upserted.extend(store.upsert_contacts(slice, now).await?);
        progress.done(slice.len());
    }
    progress.finish();
    let changed: Vec<i64> = upserted
        .iter()
        .filter(|u| u.changed && !u.created)
        .map(|u| u.id)
        .collect();
    let mut out = Imported {
        stored: upserted.len(),
        created: upserted.iter().filter(|u| u.created).count(),
        updated: changed.len(),
        retried: super::operate::fields_changed(store, &changed, now).await?,
        enrolled: None,
    };
    if let Some((seq, again)) = into {
        let emails: Vec<String> = upserted.into_iter().map(|u| u.email).collect();
        let stored = store.contacts_by_email(&emails).await?;
        progress.start(Phase::Enrolling, stored.len());
        let mut r = Enrolled::default();
        for slice in stored.chunks(SLICE) {
            r.add(enroll(project, store, seq, slice, again, now).await?);
            progress.done(slice.len());
        }
        progress.finish();
        out.enrolled = Some((seq.name.clone(), r));
    }
    Ok(out)
}

/// What an import would do: how many of the parsed contacts are new. Without a
/// database (not created yet) every one is.
pub async fn dry_run(store: Option<&Store>, parsed: &Parsed) -> Result<usize, store::Error> {
    let Some(store) = store else {
        return Ok(parsed.contacts.len());
    };
    let emails: Vec<String> = parsed.contacts.iter().map(|c| c.email.clone()).collect();
    let known: HashSet<String> = store
        .contacts_by_email(&emails)
        .await?
        .into_iter()
        .map(|c| c.email)
        .collect();
    Ok(emails.iter().filter(|e| !known.contains(*e)).count())
}
