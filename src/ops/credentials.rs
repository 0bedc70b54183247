//! systemd credentials (`LoadCredential=`, `LoadCredentialEncrypted=`): files in
//! `$CREDENTIALS_DIRECTORY`, readable by the service alone and never on disk in clear
//! when encrypted.
//!
//! A secret that followup.toml names no source for is looked up there under the name of
//! its `FOLLOWUP_*` variable, lower-cased, without `FOLLOWUP_`, `_` written `-`:
//! `mailbox-sales-password` for mailbox `sales`, `http-secret`, `http-previous-secret`.
//! A `*_file` path may also start with `$CREDENTIALS_DIRECTORY/`.

use std::path::PathBuf;

/// The credential standing for the variable `FOLLOWUP_...`.
pub fn name_for(env_var: &str) -> String {
    env_var
        .strip_prefix("FOLLOWUP_")
        .unwrap_or(env_var)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// The credential's text, if systemd passed one by that name. A trailing newline is an
/// artefact of `echo > file`, never part of a secret.
pub fn read(name: &str) -> Option<String> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let text = std::fs::read_to_string(PathBuf::from(dir).join(name)).ok()?;
    let text = text.trim_end_matches(['\r', '\n']).to_string();
    (!text.is_empty()).then_some(text)
}

/// `path` with a leading `$CREDENTIALS_DIRECTORY` or `${CREDENTIALS_DIRECTORY}` put in.
pub fn expand(path: &str) -> PathBuf {
    for prefix in ["${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
                return PathBuf::from(dir).join(rest.trim_start_matches('/'));
            }
        }
    }
    PathBuf::from(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_variables() {
        assert_eq!(
            name_for("FOLLOWUP_MAILBOX_SALES_PASSWORD"),
            "mailbox-sales-password"
        );
        assert_eq!(name_for("FOLLOWUP_HTTP_SECRET"), "http-secret");
        assert_eq!(
            name_for("FOLLOWUP_HTTP_PREVIOUS_SECRET"),
            "http-previous-secret"
        );
    }
}
