//! The wall clock as messages carry it (milliseconds and microseconds since the Unix epoch).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 on a clock before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Microseconds since the Unix epoch (0 on a clock before 1970).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_units_read_the_same_clock() {
        let (ms, us) = (super::now_ms(), super::now_us());
        assert!(ms > 1_700_000_000_000, "after 2023: {ms}");
        assert!(us / 1000 >= ms && us / 1000 - ms < 1000, "{us} µs vs {ms} ms");
    }
}
