//! The limiter's metric catalogue (its part of `/metrics`).

/// Describes this crate's metrics to the installed recorder, and starts the error counter at
/// zero so that its rate is defined before the first error.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "dialer_limiter_backend_calls_total",
        "Lease updates sent to the limiter backend (one per batch of campaigns)."
    );
    describe_counter!("dialer_limiter_backend_errors_total", "Lease updates that failed (Redis unreachable or slow).");
    metrics::counter!("dialer_limiter_backend_errors_total").increment(0);
    describe_histogram!("dialer_limiter_sync_seconds", Unit::Seconds, "Latency of one batched lease update.");
    describe_counter!("dialer_limiter_drift_corrected_total", "Tokens of drift found and corrected by reconciliation.");
    describe_counter!("dialer_limiter_tokens_leased_total", "Tokens leased by this process's cores.");
    describe_counter!("dialer_limiter_tokens_given_back_total", "Tokens given back by this process's cores.");
    describe_counter!("dialer_limiter_tokens_reaped_total", "Tokens of expired leases returned to the pools.");
    describe_gauge!(
        "dialer_limiter_failing_seconds",
        Unit::Seconds,
        "How long a core's lease updates have been failing (fail-closed once its lease expires)."
    );
    describe_gauge!("dialer_limiter_tokens_held", "Tokens a core holds under its leases.");
    describe_gauge!("dialer_limiter_tokens_in_use", "Tokens a core has handed to calls in progress.");
}
