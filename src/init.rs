//! `followup init [DIR]`: a starter project that `check` accepts as is and that `run`
//! sends from at once into a file outbox — so a newcomer sees real .eml files within
//! seconds, with no mail server. The files are the repository's own examples.

use std::path::{Path, PathBuf};

/// (path in the project, contents)
pub const FILES: &[(&str, &str)] = &[
    ("followup.toml", include_str!("../deploy/followup.toml")),
    (
        "sequences/intro.yaml",
        include_str!("../sequences/intro.yaml"),
    ),
    (
        "templates/intro.hbs",
        include_str!("../templates/intro.hbs"),
    ),
    (
        "templates/intro.html",
        include_str!("../templates/intro.html"),
    ),
    ("templates/bump.hbs", include_str!("../templates/bump.hbs")),
    (
        "templates/breakup.hbs",
        include_str!("../templates/breakup.hbs"),
    ),
    ("contacts.csv", include_str!("../contacts.csv")),
    (".gitignore", "followup.db*\noutbox/\n"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} already exists; use --force to overwrite the starter files")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the starter files into `dir`. Returns the paths written.
pub fn write(dir: &Path, force: bool) -> Result<Vec<PathBuf>, Error> {
    if !force {
        for (rel, _) in FILES {
            let p = dir.join(rel);
            if p.exists() {
                return Err(Error::Exists(p));
            }
        }
    }
    let mut written = Vec::new();
    for (rel, text) in FILES {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&p, text).map_err(|source| Error::Write {
            path: p.clone(),
            source,
        })?;
        written.push(p);
    }
    Ok(written)
}
