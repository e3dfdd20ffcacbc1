//! Prometheus metrics: one process-wide recorder (`metrics` facade → `metrics-exporter-prometheus`),
//! rendered at `/metrics` by the API (and by the data plane's admin port), and the HTTP middleware
//! that counts requests by route template and status and times them. Labels are bounded: route
//! templates (`/api/v1/campaigns/{id}`), never ids or phone numbers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    describe_data_plane();
}

/// The data plane's part of the catalogue.
fn describe_data_plane() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("dialer_dials_total", "Calls placed by the data plane.");
    describe_counter!(
        "dialer_status_events_reproduced_total",
        "Status events the broker did not take, queued to be produced again after a back-off."
    );
    describe_counter!(
        "dialer_call_outcomes_total",
        "Ended dial attempts by outcome (completed, failed, failed_retryable, expired) and provider reason."
    );
    describe_gauge!(
        "dialer_limiter_global_cap",
        "TELEPHONY_GLOBAL_MAX_CONCURRENCY as this data plane was started with."
    );
    describe_histogram!(
        "dialer_dispatch_to_dial_seconds",
        Unit::Seconds,
        "Wait of a dispatch message inside a shard until its call is placed."
    );
    describe_counter!(
        "dialer_unknown_outcomes_total",
        "Redelivered attempts the journal showed as started before a restart: reported unknown_outcome, not redialed."
    );
    describe_counter!("dialer_dispatch_malformed_total", "Dispatch messages that could not be read and were skipped.");
    describe_pipeline();
}

/// The scheduler's, reaper's and recorder's part of the catalogue (and what follows them).
fn describe_pipeline() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("dialer_scheduler_dispatched_total", "Calls claimed and published by the scheduler.");
    describe_counter!(
        "dialer_scheduler_errors_total",
        "Campaigns whose dispatch failed in a tick (a store error); the others went on."
    );
    describe_counter!(
        "dialer_reaped_calls_total",
        "Calls left queued or in progress with no outcome that the control plane resolved (by: reaper, after their latest possible end; recovery, the embedded mode at start)."
    );
    describe_histogram!("dialer_scheduler_batch_size", "Calls published for one campaign in one tick.");
    describe_histogram!(
        "dialer_scheduler_tick_seconds",
        Unit::Seconds,
        "Duration of one scheduler tick (scheduler lag when above the interval)."
    );
    describe_counter!(
        "dialer_api_call_batches_total",
        "Batches of POST /api/v1/calls requests created in one statement (PostgreSQL group commit)."
    );
    describe_counter!(
        "dialer_api_call_batch_requests_total",
        "POST /api/v1/calls requests that went through a batch (divided by the batches: mean batch size)."
    );
    describe_counter!("dialer_recorder_events_total", "Status events recorded.");
    describe_counter!(
        "dialer_recorder_unrecordable_total",
        "Status events the store refused while it answered (isolated by splitting their batch) and dead-lettered."
    );
    describe_histogram!("dialer_recorder_batch_seconds", Unit::Seconds, "Time to record one batch of status events.");
    describe_counter!("dialer_recorder_malformed_total", "Status events that could not be read and were skipped.");
    describe_counter!("dialer_retries_scheduled_total", "Retries scheduled by the retry policy.");
    describe_counter!("dialer_dead_letters_total", "Calls failed for good, sent to the dead-letter topic.");
    describe_gauge!(
        "dialer_active_calls",
        "Calls queued to or dialing in the data plane, all running and paused campaigns (scheduler's view)."
    );
    describe_gauge!(
        "dialer_kafka_consumer_lag",
        "Messages between a consumer's position and the partition's end, by topic and partition."
    );
    describe_counter!(
        "dialer_kafka_produce_errors_total",
        "Messages the broker refused or did not acknowledge, by topic."
    );
    describe_counter!(
        "dialer_kafka_client_errors_total",
        "Errors reported by a Kafka client (connection, broker, transport)."
    );
    describe_gauge!(
        "dialer_shard_busy_ratio",
        "Share of the last second a data-plane shard's core spent working, by shard."
    );
    describe_gauge!("dialer_shard_calls_in_progress", "Calls a shard has placed and not yet seen end, by shard.");
    describe_gauge!(
        "dialer_shard_messages_waiting",
        "Dispatch messages a shard holds waiting for a token or their time."
    );
    describe_gauge!(
        "dialer_shard_fail_closed",
        "1 while a shard's leases have expired and the limiter does not answer (no new dials), by shard."
    );
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn metrics() -> Response {
    match install() {
        Some(h) => {
            let mut text = h.render();
            render_top(&mut text);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
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

/// The future of one readiness check: `Err` says what is wrong in words an operator can act on.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One dependency `/readyz` checks besides the store.
#[derive(Clone)]
pub struct ReadyCheck {
    pub name: &'static str,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyCheck").field("name", &self.name).finish_non_exhaustive()
    }
}

/// How long one readiness check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl ReadyCheck {
    pub fn new(name: &'static str, check: impl Fn() -> CheckFuture + Send + Sync + 'static) -> ReadyCheck {
        ReadyCheck { name, check: Arc::new(check) }
    }

    pub async fn run(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, (self.check)()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }

    /// The limiter's Redis answers a PING.
    pub fn redis(backend: dialer_limiter::RedisBackend) -> ReadyCheck {
        ReadyCheck::new("redis", move || {
            let b = backend.clone();
            Box::pin(async move { b.ping().await.map_err(|e| e.to_string()) })
        })
    }

    /// The broker answers a metadata request for `topic`.
    pub fn kafka<C: rdkafka::ClientContext + 'static>(
        producer: rdkafka::producer::FutureProducer<C>,
        topic: String,
    ) -> ReadyCheck {
        ReadyCheck::new("kafka", move || {
            let (p, t) = (producer.clone(), topic.clone());
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    use rdkafka::producer::Producer;
                    p.client()
                        .fetch_metadata(Some(&t), CHECK_TIMEOUT)
                        .map(|_| ())
                        .map_err(|e| format!("broker metadata request failed: {e}; check bus.brokers and the broker"))
                })
                .await
                .map_err(|e| e.to_string())?
            })
        })
    }

    /// Every data-plane shard runs, has a fresh heartbeat and unexpired leases.
    pub fn shards(health: Arc<dialer_dataplane::Health>) -> ReadyCheck {
        ReadyCheck::new("shards", move || {
            let h = health.clone();
            Box::pin(async move {
                let bad: Vec<String> = h
                    .status(dialer_dataplane::shard::now_ms())
                    .into_iter()
                    .filter(|s| !s.ready)
                    .map(|s| format!("shard {}: {}", s.shard, s.problems.join("; ")))
                    .collect();
                if bad.is_empty() { Ok(()) } else { Err(bad.join(" | ")) }
            })
        })
    }
}

/// The data plane's admin endpoints: `/metrics`, `/healthz` (the process runs) and `/readyz`
/// (every shard runs with fresh heartbeat, unexpired leases, a working broker; 503 with each
/// shard's problems otherwise).
pub fn dataplane_admin(health: Arc<dialer_dataplane::Health>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    let shards = h.status(dialer_dataplane::shard::now_ms());
                    let ready = shards.iter().all(|s| s.ready);
                    let code =
                        if ready { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
                    let body =
                        serde_json::json!({"status": if ready { "ok" } else { "unavailable" }, "shards": shards});
                    (code, axum::Json(body))
                }
            }),
        )
}

/// Active calls of the busiest campaigns, as the scheduler last saw them; rendered at scrape
/// time so that exactly the current top N have a series (no stale campaign ids pile up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CampaignLoad {
    pub campaign: uuid::Uuid,
    pub active: i64,
    pub cap: u32,
}

static TOP: Mutex<Vec<CampaignLoad>> = Mutex::new(Vec::new());

/// Publishes the scheduler's view: the `n` campaigns with the most active calls (and the total,
/// as the `dialer_active_calls` gauge).
pub fn publish_campaign_load(mut all: Vec<CampaignLoad>, n: usize) {
    let total: i64 = all.iter().map(|c| c.active).sum();
    metrics::gauge!("dialer_active_calls").set(total as f64);
    all.sort_by(|a, b| b.active.cmp(&a.active).then(a.campaign.cmp(&b.campaign)));
    all.truncate(n);
    *TOP.lock().unwrap_or_else(|p| p.into_inner()) = all;
}

fn render_top(out: &mut String) {
    use std::fmt::Write;
    let top = TOP.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if top.is_empty() {
        return;
    }
    out.push_str("# HELP dialer_campaign_active_calls Calls queued to or dialing in the data plane, for the campaigns with the most (top N, scheduler.metrics_top_campaigns).\n");
    out.push_str("# TYPE dialer_campaign_active_calls gauge\n");
    for c in &top {
        let _ = writeln!(out, "dialer_campaign_active_calls{{campaign=\"{}\"}} {}", c.campaign, c.active);
    }
    out.push_str("# HELP dialer_campaign_concurrency_cap Effective concurrency cap of the same top-N campaigns.\n");
    out.push_str("# TYPE dialer_campaign_concurrency_cap gauge\n");
    for c in &top {
        let _ = writeln!(out, "dialer_campaign_concurrency_cap{{campaign=\"{}\"}} {}", c.campaign, c.cap);
    }
}
