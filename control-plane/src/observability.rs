//! Prometheus metrics: one process-wide recorder (`metrics` facade → `metrics-exporter-prometheus`),
//! rendered at `/metrics` by the API (and by the data plane's admin port), and the HTTP middleware
//! that counts requests by route template and status and times them. Labels are bounded: route
//! templates (`/api/v1/campaigns/{id}`), never ids or phone numbers.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets, in seconds (every histogram here is a duration but the batch size, which
/// uses the same boundaries as counts).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0,
    1000.0, 5000.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once); `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    describe_all();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Every metric of the product, with its help text: the catalogue operators read.
fn describe_all() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("dialer_http_requests_total", "HTTP requests answered, by method, route template and status.");
    describe_histogram!(
        "dialer_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route template."
    );
    describe_counter!("dialer_http_rejections_total", "429 answers by code (rate_limit_exceeded, usage_cap_exceeded).");
    describe_counter!(
        "dialer_limiter_backend_calls_total",
        "Lease updates sent to the limiter backend (one per batch of campaigns)."
    );
    describe_counter!("dialer_limiter_backend_errors_total", "Lease updates that failed (Redis unreachable or slow).");
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
    describe_counter!("dialer_dials_total", "Calls placed by the data plane.");
    describe_histogram!(
        "dialer_dispatch_to_dial_seconds",
        Unit::Seconds,
        "Wait of a dispatch message inside a shard until its call is placed."
    );
    describe_counter!("dialer_dispatch_malformed_total", "Dispatch messages that could not be read and were skipped.");
    describe_counter!("dialer_scheduler_dispatched_total", "Calls claimed and published by the scheduler.");
    describe_histogram!("dialer_scheduler_batch_size", "Calls published for one campaign in one tick.");
    describe_histogram!(
        "dialer_scheduler_tick_seconds",
        Unit::Seconds,
        "Duration of one scheduler tick (scheduler lag when above the interval)."
    );
    describe_counter!("dialer_recorder_events_total", "Status events recorded.");
    describe_histogram!("dialer_recorder_batch_seconds", Unit::Seconds, "Time to record one batch of status events.");
    describe_counter!("dialer_recorder_malformed_total", "Status events that could not be read and were skipped.");
    describe_counter!("dialer_retries_scheduled_total", "Retries scheduled by the retry policy.");
    describe_counter!("dialer_dead_letters_total", "Calls failed for good, sent to the dead-letter topic.");
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn metrics() -> Response {
    match install() {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], h.render()).into_response(),
        None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed").into_response(),
    }
}

/// Counts and times every request by method, route template and status.
pub async fn track_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("dialer_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("dialer_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
