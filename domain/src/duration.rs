//! Human-readable durations as the API speaks them: `"2s"`, `"500ms"`, `"2m"`, `"1m30s"`.

use std::time::Duration;

/// A duration that cannot be read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("must be a duration such as \"2s\", \"500ms\" or \"2m\"")]
    Empty,
    #[error("{0}; use a duration such as \"2s\", \"500ms\" or \"2m\"")]
    Unreadable(#[source] humantime::DurationError),
}

/// Parses a duration such as `"2s"`, `"1m30s"` or `"250ms"`.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    humantime::parse_duration(t).map_err(DurationError::Unreadable)
}

/// A [`Duration`] kept in settings as whole milliseconds (`#[serde(rename = "x_ms", with =
/// "dialer_domain::duration::millis")]`): the key keeps its unit, the code its type.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A [`Duration`] kept in settings as whole seconds (see [`millis`]).
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Formats a duration the way [`parse`] reads it (`120s` → `"2m"`).
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(format(Duration::from_secs(120)), "2m");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(parse(&format(Duration::from_millis(1500))), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "2", "abc", "-2s", "2 parsecs"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
