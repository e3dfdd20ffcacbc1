//! Do-not-call entries as the API takes and shows them: JSON (one entry, or `{"entries": [...]}`)
//! or CSV (`phone_number[,reason,source,expires_at]`, header optional); each is checked here into
//! a [`DncEntry`], and a bad one is refused naming its field or line.

use chrono::{DateTime, Utc};
use dialer_domain::FieldError;
use dialer_domain::dnc::DncEntry;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest `reason` or `source` kept.
pub const TEXT_MAX: usize = 200;

/// One number to suppress.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DncEntryInput {
    #[schema(example = "+15555550001", pattern = r"^\+[0-9]{2,15}$")]
    pub phone_number: String,
    /// Why (e.g. `opt_out`, `litigator`); at most 200 characters.
    #[schema(example = "opt_out", max_length = 200)]
    pub reason: Option<String>,
    /// Where the entry came from (e.g. `ivr`, `national_registry`); at most 200 characters.
    #[schema(example = "ivr", max_length = 200)]
    pub source: Option<String>,
    /// When the entry lapses (RFC 3339); absent = never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Body of `POST …/dnc` as JSON: one entry (`phone_number`, …), or many (`entries`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DncRequest {
    /// Many entries at once (then leave the single-entry fields out).
    pub entries: Option<Vec<DncEntryInput>>,
    #[schema(example = "+15555550001", pattern = r"^\+[0-9]{2,15}$")]
    pub phone_number: Option<String>,
    #[schema(example = "opt_out", max_length = 200)]
    pub reason: Option<String>,
    #[schema(max_length = 200)]
    pub source: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An entry as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct DncView {
    /// `global`, or the campaign's id.
    pub list: String,
    pub phone_number: String,
    pub reason: Option<String>,
    pub source: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Answer of `POST …/dnc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct DncAdded {
    pub list: String,
    /// Entries in the request (a number listed twice counts once, its last listing kept).
    pub received: u64,
    /// Whether the data plane was told at once (queued calls to these numbers are not dialled);
    /// bulk imports above the announce limit apply at the next claim of each call.
    pub announced: bool,
}

fn text(field: &str, v: Option<&str>) -> Result<Option<String>, FieldError> {
    match v.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) if s.chars().count() > TEXT_MAX || s.chars().any(char::is_control) => {
            Err(FieldError::new(field, format!("must be at most {TEXT_MAX} characters, no control characters")))
        }
        Some(s) => Ok(Some(s.to_string())),
    }
}

/// Checks one entry; `field` prefixes the field names.
pub fn check_entry(field: &str, e: &DncEntryInput) -> Result<DncEntry, FieldError> {
    dialer_domain::phone::check_e164(&e.phone_number)
        .map_err(|m| FieldError::new(format!("{field}phone_number"), m.to_string()))?;
    Ok(DncEntry {
        phone_number: e.phone_number.clone(),
        reason: text(&format!("{field}reason"), e.reason.as_deref())?,
        source: text(&format!("{field}source"), e.source.as_deref())?,
        expires_at: e.expires_at,
    })
}

impl DncRequest {
    /// Checks every entry, at most `max`.
    pub fn check(&self, max: usize) -> Result<Vec<DncEntry>, FieldError> {
        let Some(entries) = &self.entries else {
            let phone_number = self
                .phone_number
                .clone()
                .ok_or_else(|| FieldError::new("phone_number", "is required (or list several under entries)"))?;
            let one = DncEntryInput {
                phone_number,
                reason: self.reason.clone(),
                source: self.source.clone(),
                expires_at: self.expires_at,
            };
            return Ok(vec![check_entry("", &one)?]);
        };
        if self.phone_number.is_some() || self.reason.is_some() || self.source.is_some() || self.expires_at.is_some() {
            return Err(FieldError::new("entries", "give either entries or one entry's fields, not both"));
        }
        if entries.is_empty() {
            return Err(FieldError::new("entries", "must list at least one entry"));
        }
        if entries.len() > max {
            return Err(FieldError::new("entries", format!("at most {max} entries per request")));
        }
        entries.iter().enumerate().map(|(i, e)| check_entry(&format!("entries[{i}]."), e)).collect()
    }
}

/// Reads CSV: `phone_number[,reason[,source[,expires_at]]]` per line, an optional header line
/// naming those columns. Errors name the line (`line 12.phone_number`).
pub fn parse_csv(body: &[u8], max: usize) -> Result<Vec<DncEntry>, FieldError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(body);
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 1;
        let r = record.map_err(|e| FieldError::new(format!("line {line}"), format!("is not CSV: {e}")))?;
        let first = r.get(0).unwrap_or("");
        if line == 1 && first.eq_ignore_ascii_case("phone_number") {
            continue;
        }
        if r.len() > 4 {
            return Err(FieldError::new(
                format!("line {line}"),
                "has more than 4 columns (phone_number,reason,source,expires_at)",
            ));
        }
        let input = DncEntryInput {
            phone_number: first.to_string(),
            reason: r.get(1).map(str::to_string),
            source: r.get(2).map(str::to_string),
            expires_at: None,
        };
        let mut entry = check_entry(&format!("line {line}."), &input)?;
        if let Some(s) = r.get(3).filter(|s| !s.is_empty()) {
            let t = DateTime::parse_from_rfc3339(s).map_err(|_| {
                FieldError::new(
                    format!("line {line}.expires_at"),
                    "must be an RFC 3339 instant, e.g. 2027-01-01T00:00:00Z",
                )
            })?;
            entry.expires_at = Some(t.with_timezone(&Utc));
        }
        out.push(entry);
        if out.len() > max {
            return Err(FieldError::new("body", format!("at most {max} entries per request")));
        }
    }
    if out.is_empty() {
        return Err(FieldError::new("body", "lists no numbers: one phone_number per line"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_or_without_header_and_optional_columns() {
        let body = b"phone_number,reason,source,expires_at\n+15555550001,opt_out,ivr,2027-01-01T00:00:00Z\n+15555550002\n\"+15555550003\",\"asked, twice\"\n";
        let e = parse_csv(body, 10).expect("parses");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].reason.as_deref(), Some("opt_out"));
        assert_eq!(e[0].expires_at.map(|t| t.to_rfc3339()), Some("2027-01-01T00:00:00+00:00".into()));
        assert_eq!(e[1].reason, None);
        assert_eq!(e[2].reason.as_deref(), Some("asked, twice"));
        assert_eq!(parse_csv(b"+15555550001\n", 10).expect("no header").len(), 1);
    }

    #[test]
    fn bad_csv_names_the_line_and_field() {
        assert_eq!(parse_csv(b"+15555550001\n5555\n", 10).unwrap_err().field, "line 2.phone_number");
        assert_eq!(parse_csv(b"+15555550001,a,b,tomorrow\n", 10).unwrap_err().field, "line 1.expires_at");
        assert_eq!(parse_csv(b"+15555550001,a,b,c,d\n", 10).unwrap_err().field, "line 1");
        assert_eq!(parse_csv(b"phone_number\n", 10).unwrap_err().field, "body");
        assert_eq!(parse_csv(b"+15555550001\n+15555550002\n", 1).unwrap_err().field, "body");
    }

    #[test]
    fn json_entries_are_checked_by_index() {
        let one: DncRequest =
            serde_json::from_str(r#"{"phone_number":"+15555550001","reason":"opt_out"}"#).expect("one");
        assert_eq!(one.check(10).expect("ok").len(), 1);
        let many: DncRequest =
            serde_json::from_str(r#"{"entries":[{"phone_number":"+15555550001"},{"phone_number":"555"}]}"#)
                .expect("many");
        assert_eq!(many.check(10).unwrap_err().field, "entries[1].phone_number");
        let long = "x".repeat(TEXT_MAX + 1);
        let both: DncRequest = serde_json::from_str(r#"{"entries":[],"phone_number":"+15555550001"}"#).expect("both");
        assert_eq!(both.check(10).unwrap_err().field, "entries");
        let none: DncRequest = serde_json::from_str(r#"{"reason":"x"}"#).expect("none");
        assert_eq!(none.check(10).unwrap_err().field, "phone_number");
        let bad =
            DncEntryInput { phone_number: "+15555550001".into(), reason: Some(long), source: None, expires_at: None };
        assert_eq!(check_entry("", &bad).unwrap_err().field, "reason");
    }
}
