//! Retry policy and backoff with decorrelated jitter.
//!
//! The delay before retry *n* follows the "decorrelated jitter" rule
//! `sleep = min(max_delay, random(base_delay, previous_sleep × 3))`, with the first retry waiting
//! `base_delay`. The policy's `jitter` (0‥1) is the fraction of that range that is randomised:
//! the draw is uniform in `[hi − jitter·(hi − base), hi]` where `hi = min(max_delay, previous × 3)`.
//! `jitter = 1` is the classic full decorrelated jitter; `jitter = 0` is plain ×3 exponential
//! growth capped at `max_delay`. The random sample is a parameter, so the arithmetic is pure.

use std::time::Duration;

/// Defaults from the platform contract.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(120);
pub const DEFAULT_JITTER: f64 = 1.0;
/// Upper bounds accepted by validation.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
pub const MAX_DELAY_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a campaign retries retryable failures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 = never retry).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Fraction 0‥1 of the backoff range that is randomised.
    pub jitter: f64,
    /// Which outcomes are retried (default busy, no_answer, failed, unknown_outcome); an
    /// outcome the provider calls final (invalid_number, say) is never retried.
    pub retry_on: crate::outcome::OutcomeSet,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            jitter: DEFAULT_JITTER,
            retry_on: crate::outcome::OutcomeSet::DEFAULT_RETRY_ON,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy, returning the offending field and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(("max_attempts", format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}")));
        }
        if self.base_delay < Duration::from_millis(1) {
            return Err(("base_delay", "must be at least 1ms".into()));
        }
        if self.max_delay > MAX_DELAY_LIMIT {
            return Err(("max_delay", "must be at most 7 days".into()));
        }
        if self.max_delay < self.base_delay {
            return Err(("max_delay", "must be at least base_delay".into()));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(("jitter", "must be between 0 and 1".into()));
        }
        Ok(())
    }

    /// Whether a failure of attempt number `attempt` (1-based) gets another attempt.
    pub fn should_retry(&self, attempt: u32, retryable: bool) -> bool {
        retryable && attempt < self.max_attempts
    }

    /// Whether the campaign retries a failure named `reason` (an outcome's name; a reason that
    /// names no outcome, from an older producer, is left to the event's own `retryable`).
    pub fn retries(&self, reason: &str) -> bool {
        crate::outcome::Outcome::parse(reason).is_none_or(|o| self.retry_on.contains(o))
    }

    /// The delay before the next attempt, given the previous delay (`None` before the first
    /// retry) and a uniform sample `u` in `[0, 1)`.
    pub fn next_delay(&self, previous: Option<Duration>, u: f64) -> Duration {
        let base = self.base_delay.as_secs_f64();
        let cap = self.max_delay.as_secs_f64();
        let hi = match previous {
            None => base,
            Some(p) => (p.as_secs_f64() * 3.0).clamp(base, cap),
        };
        let lo = hi - self.jitter * (hi - base);
        let sleep = lo + u.clamp(0.0, 1.0) * (hi - lo);
        Duration::from_secs_f64(sleep.clamp(base, cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            jitter,
            retry_on: crate::outcome::OutcomeSet::DEFAULT_RETRY_ON,
        }
    }

    #[test]
    fn first_retry_waits_base_delay() {
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(policy(1.0).next_delay(None, u), Duration::from_secs(2));
        }
    }

    #[test]
    fn without_jitter_grows_threefold_up_to_cap() {
        let p = policy(0.0);
        let mut d = None;
        let mut seen = vec![];
        for _ in 0..5 {
            let next = p.next_delay(d, 0.3);
            seen.push(next.as_secs());
            d = Some(next);
        }
        assert_eq!(seen, vec![2, 6, 18, 30, 30]);
    }

    #[test]
    fn delays_stay_within_bounds_for_every_sample() {
        for jitter in [0.0, 0.2, 0.5, 1.0] {
            let p = policy(jitter);
            let mut prev = None;
            for i in 0..1000 {
                let u = (i as f64 * 0.618_033_988_75).fract();
                let d = p.next_delay(prev, u);
                assert!(d >= p.base_delay && d <= p.max_delay, "{d:?} out of bounds");
                if let Some(prev) = prev {
                    let hi = (prev * 3).min(p.max_delay);
                    assert!(d <= hi, "decorrelated rule: at most 3× the previous sleep");
                }
                prev = Some(d);
            }
        }
    }

    #[test]
    fn jitter_spreads_draws_over_its_fraction_of_the_range() {
        let prev = Some(Duration::from_secs(8)); // hi = 24s, base = 2s
        let full = policy(1.0);
        assert_eq!(full.next_delay(prev, 0.0), Duration::from_secs(2));
        assert_eq!(full.next_delay(prev, 1.0), Duration::from_secs(24));
        let fifth = policy(0.2); // range [24 - 0.2*22, 24] = [19.6, 24]
        assert!((fifth.next_delay(prev, 0.0).as_secs_f64() - 19.6).abs() < 1e-9);
        // The mean of uniform draws sits in the middle of the range.
        let n = 10_000;
        let mean: f64 =
            (0..n).map(|i| full.next_delay(prev, (i as f64 + 0.5) / n as f64).as_secs_f64()).sum::<f64>() / n as f64;
        assert!((mean - 13.0).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn cap_is_monotone() {
        let p = policy(0.0);
        let mut prev = Duration::from_millis(1);
        for i in 1..200u64 {
            let d = p.next_delay(Some(Duration::from_millis(i * 100)), 0.5);
            assert!(d >= prev, "non-decreasing in the previous delay without jitter");
            prev = d;
        }
    }

    #[test]
    fn retry_decision_counts_attempts() {
        let p = policy(1.0);
        assert!(p.should_retry(1, true));
        assert!(p.should_retry(4, true));
        assert!(!p.should_retry(5, true));
        assert!(!p.should_retry(1, false));
    }

    #[test]
    fn check_rejects_bad_policies() {
        assert!(policy(1.0).check().is_ok());
        assert_eq!(policy(1.5).check().unwrap_err().0, "jitter");
        assert_eq!(policy(f64::NAN).check().unwrap_err().0, "jitter");
        let mut p = policy(1.0);
        p.max_attempts = 0;
        assert_eq!(p.check().unwrap_err().0, "max_attempts");
        let mut p = policy(1.0);
        p.max_delay = Duration::from_secs(1);
        assert_eq!(p.check().unwrap_err().0, "max_delay");
    }
}
