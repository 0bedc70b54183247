//! Small pieces the commands share: finding a sequence by name with a did-you-mean,
//! and telling who was left out of an enrollment and why.

use anyhow::bail;

use crate::contacts::Enrolled;
use crate::diagnostic::did_you_mean;
use crate::project::Project;
use crate::sequence::Sequence;

/// The sequence named `name`, or an error that suggests the closest name.
pub(super) fn sequence<'a>(p: &'a Project, name: &str) -> anyhow::Result<&'a Sequence> {
    if let Some(s) = p.sequence(name) {
        return Ok(s);
    }
    let known: Vec<&str> = p.sequences.keys().map(String::as_str).collect();
    match did_you_mean(name, known.iter().copied()) {
        Some(close) => bail!("unknown sequence '{name}': did you mean '{close}'?"),
        None if known.is_empty() => {
            bail!("unknown sequence '{name}': there are none in sequences/ yet")
        }
        None => bail!("unknown sequence '{name}' (known: {})", known.join(", ")),
    }
}

/// For an import: how many were left out because they are or were in the sequence, and
/// how `--again` would take those who ended it. The first few are named.
pub(super) fn print_not_again_summary(r: &Enrolled) {
    const NAMED: usize = 5;
    let ended: Vec<_> = r.not_again.iter().filter(|n| n.ended()).collect();
    for n in ended.iter().take(NAMED) {
        eprintln!("{n}");
    }
    if ended.len() > NAMED {
        eprintln!(
            "... and {} more who stopped or finished it; use --again to enroll them again",
            ended.len() - NAMED
        );
    }
}
