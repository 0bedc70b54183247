//! Contacts from CSV: parsing (pure: rows in, contacts and per-row problems out). The
//! import and enrollment that store them are use cases in `app`.
//!
//! A CSV has a header row and an `email` column; `timezone`, `country` and `name` have
//! meaning to followup, and every column (those too) becomes a template field. Empty
//! cells are absent fields, so templates fall back to their defaults. A bad row is
//! reported with its row number (as a spreadsheet shows it: the header is row 1) and
//! reason while the good rows go in.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::address::EmailAddress;
use crate::config::Limits;
use crate::model::NewContact;

/// A problem with one CSV row (or with the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    /// Spreadsheet row number (header = 1); 0 for the file as a whole.
    pub row: usize,
    pub message: String,
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.row == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "row {}: {}", self.row, self.message)
        }
    }
}

/// What a CSV holds once parsed.
#[derive(Debug, Default)]
pub struct Parsed {
    pub contacts: Vec<NewContact>,
    /// Rows left out, with why.
    pub rejected: Vec<RowProblem>,
    /// Rows merged into an earlier row with the same address.
    pub merged: Vec<RowProblem>,
    /// Column names as given (lower-cased, trimmed).
    pub columns: Vec<String>,
    /// Columns that are non-empty in every accepted row.
    pub always_present: BTreeSet<String>,
}

/// Normalises and validates an address with [`EmailAddress::parse`], for callers that
/// want the text (the command line, the CSV below).
pub fn normalise_email(raw: &str) -> Result<String, String> {
    EmailAddress::parse(raw)
        .map(EmailAddress::into_string)
        .map_err(|e| e.to_string())
}

/// Parses CSV bytes with the default [`Limits`].
pub fn parse_csv(bytes: &[u8]) -> Parsed {
    parse_csv_with(bytes, &Limits::default())
}

/// Parses CSV bytes. A UTF-8 BOM and CRLF line ends are accepted. A row with a cell
/// longer than `limits.max_field_length` characters is rejected: fields end up in
/// headers and bodies, and a megabyte of text in one is a mistake or an attack.
pub fn parse_csv_with(bytes: &[u8], limits: &Limits) -> Parsed {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut parsed = Parsed::default();
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = match rdr.headers() {
        Ok(h) => h
            .iter()
            .map(|h| h.trim().to_lowercase())
            .collect::<Vec<_>>(),
        Err(e) => {
            parsed.rejected.push(RowProblem {
                row: 0,
                message: format!("cannot read the header row: {e}"),
            });
            return parsed;
        }
    };
    let Some(email_col) = headers.iter().position(|h| h == "email") else {
        parsed.rejected.push(RowProblem {
            row: 1,
            message: format!("no 'email' column (columns: {})", headers.join(", ")),
        });
        return parsed;
    };
    if let Some(dup) = headers
        .iter()
        .enumerate()
        .find(|(i, h)| headers[..*i].contains(h))
        .map(|(_, h)| h)
    {
        parsed.rejected.push(RowProblem {
            row: 1,
            message: format!("column '{dup}' appears twice"),
        });
        return parsed;
    }
    parsed.columns = headers.clone();
    let mut index: HashMap<String, (usize, usize)> = HashMap::new(); // email -> (position, row)
    let mut present_counts: HashMap<String, usize> = HashMap::new();
    for (i, record) in rdr.records().enumerate() {
        let row = i + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                parsed.rejected.push(RowProblem {
                    row,
                    message: format!("unreadable: {e}"),
                });
                continue;
            }
        };
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if record.len() > headers.len() {
            parsed.rejected.push(RowProblem {
                row,
                message: format!(
                    "{} cells but the header has {} columns",
                    record.len(),
                    headers.len()
                ),
            });
            continue;
        }
        if let Some((col, n)) = headers
            .iter()
            .zip(record.iter())
            .map(|(h, c)| (h, c.chars().count()))
            .find(|(_, n)| *n > limits.max_field_length)
        {
            parsed.rejected.push(RowProblem {
                row,
                message: format!(
                    "column '{col}' has {n} characters, more than max_field_length ({})",
                    limits.max_field_length
                ),
            });
            continue;
        }
        let email = match normalise_email(record.get(email_col).unwrap_or("")) {
            Ok(e) => e,
            Err(msg) => {
                parsed.rejected.push(RowProblem { row, message: msg });
                continue;
            }
        };
        let mut fields = Map::new();
        let mut timezone = None;
        let mut country = None;
        let mut name = None;
        let mut bad = None;
        for (col, cell) in headers.iter().zip(record.iter()) {
            let cell = cell.trim();
            if cell.is_empty() || col == "email" {
                continue;
            }
            match col.as_str() {
                "timezone" => match cell.parse::<Tz>() {
                    Ok(_) => timezone = Some(cell.to_string()),
                    Err(_) => {
                        let (message, help) = crate::diagnostic::unknown_time_zone(cell);
                        bad = Some(format!("{message} ({help})"))
                    }
                },
                "country" => country = Some(cell.to_ascii_uppercase()),
                "name" => name = Some(cell.to_string()),
                _ => {}
            }
            fields.insert(col.clone(), Value::String(cell.to_string()));
        }
        if let Some(message) = bad {
            parsed.rejected.push(RowProblem { row, message });
            continue;
        }
        if name.is_none() {
            let first = fields
                .get("first_name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let last = fields
                .get("last_name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let joined = format!("{first} {last}").trim().to_string();
            name = (!joined.is_empty()).then_some(joined);
        }
        let contact = NewContact {
            email: email.clone(),
            name,
            fields,
            timezone,
            country,
        };
        match index.get(&email) {
            Some(&(pos, first_row)) => {
                // Later rows win field by field, like a re-import would.
                let existing = &mut parsed.contacts[pos];
                for (k, v) in contact.fields {
                    existing.fields.insert(k, v);
                }
                existing.name = contact.name.or(existing.name.take());
                existing.timezone = contact.timezone.or(existing.timezone.take());
                existing.country = contact.country.or(existing.country.take());
                parsed.merged.push(RowProblem {
                    row,
                    message: format!("same address as row {first_row} ({email}): merged"),
                });
            }
            None => {
                index.insert(email, (parsed.contacts.len(), row));
                parsed.contacts.push(contact);
            }
        }
    }
    for c in &parsed.contacts {
        for k in c.fields.keys() {
            *present_counts.entry(k.clone()).or_default() += 1;
        }
    }
    parsed.always_present = present_counts
        .into_iter()
        .filter(|(_, n)| *n == parsed.contacts.len())
        .map(|(k, _)| k)
        .collect();
    parsed.always_present.insert("email".into());
    parsed
}

/// Reads and parses a CSV file.
pub fn read_csv(path: &Path, limits: &Limits) -> std::io::Result<Parsed> {
    Ok(parse_csv_with(&std::fs::read(path)?, limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_addresses_and_long_fields_are_row_errors() {
        let long = "x".repeat(1001);
        let csv = format!(
            "email,company\n\"a@b\"@example.com,A\nc@[192.0.2.1],C\nd@example.com,{long}\nE@Bücher.example,E\n"
        );
        let p = parse_csv(csv.as_bytes());
        let rejected: Vec<String> = p.rejected.iter().map(|r| r.to_string()).collect();
        assert!(
            rejected[0].starts_with("row 2: ") && rejected[0].contains("more than one '@'"),
            "{rejected:?}"
        );
        assert!(
            rejected[1].starts_with("row 3: ") && rejected[1].contains("address literals"),
            "{rejected:?}"
        );
        assert_eq!(
            rejected[2],
            "row 4: column 'company' has 1001 characters, more than max_field_length (1000)"
        );
        assert_eq!(p.contacts.len(), 1);
        assert_eq!(p.contacts[0].email, "e@xn--bcher-kva.example");
    }

    #[test]
    fn parses_bom_crlf_utf8_and_reports_bad_rows() {
        let csv = "\u{feff}email,first_name,company,timezone\r\n\
                   li@example.cn,李雷,深圳贸易,Asia/Shanghai\r\n\
                   not-an-address,Bad,X,\r\n\
                   jürgen@beispiel.de,Jürgen,Müller GmbH,Europe/Berlin\r\n\
                   LI@example.cn,,Shenzhen Trading,\r\n\
                   x@y.com,X,Y,Mars/Olympus\r\n";
        let p = parse_csv(csv.as_bytes());
        assert_eq!(p.columns, ["email", "first_name", "company", "timezone"]);
        assert_eq!(p.contacts.len(), 2, "{:?}", p.contacts);
        assert_eq!(p.contacts[0].email, "li@example.cn");
        assert_eq!(p.contacts[0].fields["first_name"], "李雷");
        assert_eq!(
            p.contacts[0].fields["company"], "Shenzhen Trading",
            "later duplicate row wins per field"
        );
        assert_eq!(p.contacts[0].name.as_deref(), Some("李雷"));
        assert_eq!(p.contacts[0].timezone.as_deref(), Some("Asia/Shanghai"));
        assert_eq!(p.contacts[1].fields["company"], "Müller GmbH");
        assert_eq!(
            p.rejected.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            [
                "row 3: 'not-an-address' has no '@'",
                "row 6: unknown time zone 'Mars/Olympus' (use an IANA name such as Asia/Shanghai or Europe/Berlin)"
            ]
        );
        assert_eq!(
            p.merged[0].to_string(),
            "row 5: same address as row 2 (li@example.cn): merged"
        );
        assert!(p.always_present.contains("company"));
    }

    #[test]
    fn missing_email_column_is_reported() {
        let p = parse_csv(b"mail,name\nx@y.com,X\n");
        assert_eq!(
            p.rejected[0].to_string(),
            "row 1: no 'email' column (columns: mail, name)"
        );
        assert!(p.contacts.is_empty());
    }

    #[test]
    fn empty_cells_are_absent_fields() {
        let p = parse_csv(b"email,first_name,company\na@b.com,,Acme\nc@d.com,Cy,Acme\n");
        assert!(!p.contacts[0].fields.contains_key("first_name"));
        assert!(!p.always_present.contains("first_name"));
        assert!(p.always_present.contains("company"));
    }
}
