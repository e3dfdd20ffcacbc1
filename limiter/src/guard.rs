//! The API-level guard of the operator guide: at most `MAX_CONCURRENT_CALLS` call-creating
//! requests in flight at once (429 `rate_limit_exceeded` beyond), and an optional daily usage
//! cap (429 `usage_cap_exceeded`), counted per API process and UTC day. It never waits on Redis
//! or the database, so a slow dependency cannot turn it into a 5xx.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardRejection {
    /// Too many requests in flight; retry in about a second.
    RateLimit,
    /// The day's usage cap is reached; retry after this many seconds (next UTC midnight).
    UsageCap { retry_after_secs: u64 },
}

#[derive(Debug)]
pub struct ApiGuard {
    in_flight: Arc<Semaphore>,
    daily_cap: u64,
    usage: Mutex<(u64, u64)>,
}

impl ApiGuard {
    /// `daily_cap` 0 = no daily cap.
    pub fn new(max_in_flight: u32, daily_cap: u64) -> ApiGuard {
        ApiGuard { in_flight: Arc::new(Semaphore::new(max_in_flight as usize)), daily_cap, usage: Mutex::new((0, 0)) }
    }

    /// Admits one request at `unix_secs`; hold the permit while the request runs.
    pub fn try_enter(&self, unix_secs: u64) -> Result<OwnedSemaphorePermit, GuardRejection> {
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| GuardRejection::RateLimit)?;
        if self.daily_cap > 0 {
            let day = unix_secs / 86_400;
            let mut u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            if u.0 != day {
                *u = (day, 0);
            }
            if u.1 >= self.daily_cap {
                return Err(GuardRejection::UsageCap { retry_after_secs: (day + 1) * 86_400 - unix_secs });
            }
            u.1 += 1;
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_requests_in_flight() {
        let g = ApiGuard::new(2, 0);
        let a = g.try_enter(0).expect("first");
        let _b = g.try_enter(0).expect("second");
        assert_eq!(g.try_enter(0).unwrap_err(), GuardRejection::RateLimit);
        drop(a);
        assert!(g.try_enter(0).is_ok(), "a finished request frees its place");
    }

    #[test]
    fn daily_cap_resets_at_utc_midnight() {
        let g = ApiGuard::new(100, 2);
        let noon = 86_400 * 20_000 + 43_200;
        assert!(g.try_enter(noon).is_ok());
        assert!(g.try_enter(noon).is_ok());
        assert_eq!(g.try_enter(noon).unwrap_err(), GuardRejection::UsageCap { retry_after_secs: 43_200 });
        assert!(g.try_enter(noon + 43_200).is_ok(), "next day");
    }
}
