//! Do-not-call (suppression) lists: the global list and one per campaign, and their checked
//! entries. Reading entries from JSON or CSV is the API's (`dialer_api::dnc`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The id the global list is stored under (campaign lists use the campaign's id).
pub const GLOBAL_LIST: Uuid = Uuid::nil();

/// An entry, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DncEntry {
    pub phone_number: String,
    pub reason: Option<String>,
    pub source: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The name of a list in answers and errors.
pub fn list_name(list: Uuid) -> String {
    if list == GLOBAL_LIST { "global".into() } else { list.to_string() }
}

/// Keeps the last listing of each number (a list upload's later line wins).
pub fn dedup_last(entries: Vec<DncEntry>) -> Vec<DncEntry> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut out: Vec<DncEntry> = entries.into_iter().rev().filter(|e| seen.insert(e.phone_number.clone())).collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_listing_of_a_number_wins() {
        let e = |n: &str, r: &str| DncEntry {
            phone_number: n.into(),
            reason: Some(r.into()),
            source: None,
            expires_at: None,
        };
        let out = dedup_last(vec![e("+1555", "a"), e("+1666", "b"), e("+1555", "c")]);
        assert_eq!(out, vec![e("+1666", "b"), e("+1555", "c")]);
    }
}
