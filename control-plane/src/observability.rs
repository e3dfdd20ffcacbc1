//! The control plane's telemetry: its metric catalogue ([`describe`]), the API's `/metrics`
//! (the process's exposition from `dialer_telemetry`, plus the busiest campaigns' families), the
//! HTTP middleware that counts requests by route template and status and times them, and the
//! readiness checks it adds. Labels are bounded: route templates (`/api/v1/campaigns/{id}`),
//! never ids or phone numbers.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
pub use dialer_telemetry::{CheckError, CheckFuture, ReadyCheck};

/// Installs the process-wide exporter (once) with the catalogues of the crates a control plane
/// runs: the transport's, the limiter's and this crate's. `dialer up` adds the data plane's.
pub fn install() -> Option<dialer_telemetry::Handle> {
    dialer_telemetry::install(&[dialer_bus::metrics::describe, dialer_limiter::metrics::describe, describe])
}

/// This crate's metric catalogue: the API's, scheduler's, reaper's and recorder's metrics. The
/// counters alerts rate() over start at zero.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!("dialer_http_requests_total", "HTTP requests answered, by method, route template and status.");
    describe_histogram!(
        "dialer_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route template."
    );
    describe_counter!("dialer_http_rejections_total", "429 answers by code (rate_limit_exceeded, usage_cap_exceeded).");
    describe_pipeline();
    describe_events();
    for counter in [
        "dialer_dead_letters_total",
        "dialer_recorder_malformed_total",
        "dialer_scheduler_errors_total",
        "dialer_scheduler_claims_total",
        "dialer_scheduler_republished_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    for code in ["rate_limit_exceeded", "usage_cap_exceeded"] {
        metrics::counter!("dialer_http_rejections_total", "code" => code).increment(0);
    }
}

/// The event log's, webhooks' and live stream's part of the catalogue.
fn describe_events() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("dialer_events_logged_total", "Events numbered into the log by this process's sequencer.");
    describe_gauge!("dialer_webhook_queue_depth", "Webhook deliveries waiting or being sent, across endpoints.");
    describe_gauge!("dialer_webhook_dead_letters", "Events in the webhook dead-letter store, across endpoints.");
    describe_gauge!(
        "dialer_webhook_endpoints_flagged",
        "Enabled webhook endpoints that keep failing (5+ failures in a row for 10 minutes when never delivered, an hour otherwise)."
    );
    describe_counter!(
        "dialer_webhook_deliveries_total",
        "Webhook delivery attempts by result (delivered, retry, dead, gone) and code (the HTTP status, timeout, connection)."
    );
    describe_histogram!(
        "dialer_webhook_delivery_latency_seconds",
        Unit::Seconds,
        "From an event's logging to the receiver's 2xx, retries included."
    );
    describe_histogram!("dialer_webhook_request_duration_seconds", Unit::Seconds, "One webhook request's duration.");
    describe_gauge!("dialer_live_clients", "Live-stream (SSE) clients connected to this process.");
    describe_counter!(
        "dialer_live_dropped_total",
        "Live-stream clients dropped for falling behind (they reconnect and resume)."
    );
    for counter in ["dialer_events_logged_total", "dialer_live_dropped_total"] {
        metrics::counter!(counter).increment(0);
    }
}

/// The scheduler's, reaper's and recorder's part of the catalogue.
fn describe_pipeline() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("dialer_scheduler_dispatched_total", "Calls claimed and published by the scheduler.");
    describe_counter!(
        "dialer_calls_skipped_total",
        "Calls ended without a dial by the recipient's calling rules, by reason (dnc, no_zone)."
    );
    describe_counter!(
        "dialer_calls_held_total",
        "Claimed calls sent back to wait by the recipient's calling rules, by rule (attempt_limit, window, blackout)."
    );
    describe_counter!(
        "dialer_scheduler_zones_held_total",
        "Zones of a campaign's pending calls held back in a tick, by rule (window: outside the recipient's local window; blackout)."
    );
    describe_counter!("dialer_dnc_entries_added_total", "Do-not-call entries written through the API.");
    describe_counter!("dialer_dnc_announced_total", "Opt-outs announced to every data-plane shard.");
    describe_counter!(
        "dialer_scheduler_errors_total",
        "Claims (a group of campaigns) or campaigns whose dispatch failed in a tick (a store error, rules that do not compile); the others went on."
    );
    describe_counter!(
        "dialer_scheduler_claims_total",
        "Claim transactions of the scheduler: one per group of campaigns claimed together in a tick (about scheduler.claim_concurrency a tick, however many campaigns)."
    );
    describe_counter!(
        "dialer_reaped_calls_total",
        "Calls left queued or in progress with no outcome that the control plane resolved (by: reaper, after their latest possible end; recovery, the embedded mode at start)."
    );
    describe_histogram!("dialer_scheduler_batch_size", "Calls published for one campaign in one tick.");
    describe_counter!(
        "dialer_scheduler_republished_total",
        "Calls still queued republish_after past their claim (messages maybe never delivered) published again, same attempt and deadline."
    );
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
    describe_histogram!(
        "dialer_timeline_write_seconds",
        Unit::Seconds,
        "Time to write one recorder batch's attempt rows to the CQL timeline (part of dialer_recorder_batch_seconds)."
    );
    describe_counter!("dialer_recorder_malformed_total", "Status events that could not be read and were skipped.");
    describe_counter!("dialer_retries_scheduled_total", "Retries scheduled by the retry policy.");
    describe_counter!("dialer_dead_letters_total", "Calls failed for good, sent to the dead-letter topic.");
    describe_media();
    describe_gauge!(
        "dialer_active_calls",
        "Calls queued to or dialing in the data plane, all running and paused campaigns (scheduler's view)."
    );
}

/// The media of answered calls, as the recorder counts them (zero from the start: alerts take
/// their rates).
fn describe_media() {
    use metrics::describe_counter;
    describe_counter!(
        "dialer_calls_answered_by_total",
        "Answered calls of campaigns with media, by who answered (human, machine, unknown)."
    );
    for who in ["human", "machine", "unknown"] {
        metrics::counter!("dialer_calls_answered_by_total", "answered_by" => who).increment(0);
    }
    describe_counter!("dialer_voicemails_left_total", "Voicemail messages played to their end.");
    describe_counter!("dialer_dnc_keypress_opt_outs_total", "Numbers opted out by their callee's keypress.");
    describe_counter!(
        "dialer_calls_abandoned_total",
        "Calls a person answered whose message started more than 2 s after their greeting ended, or never."
    );
    for c in ["dialer_voicemails_left_total", "dialer_dnc_keypress_opt_outs_total", "dialer_calls_abandoned_total"] {
        metrics::counter!(c).increment(0);
    }
}

/// `GET /metrics`: the Prometheus text exposition, with the busiest campaigns' families.
pub async fn metrics() -> Response {
    dialer_telemetry::exposition(dialer_telemetry::render().map(|mut text| {
        render_top(&mut text);
        render_abandoned(&mut text);
        text
    }))
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

/// `/readyz`'s Redis check: the limiter's Redis answers a PING.
pub fn redis_check(backend: dialer_limiter::RedisBackend) -> ReadyCheck {
    ReadyCheck::new("redis", move || {
        let b = backend.clone();
        Box::pin(async move {
            b.ping().await.map_err(|e| CheckError::Unreachable {
                what: "the limiter's Redis",
                hint: "check limits.redis_url and that Redis runs",
                source: Box::new(e),
            })
        })
    })
}

/// Active calls of the busiest campaigns, as the scheduler last saw them; rendered at scrape
/// time so that exactly the current top N have a series (no stale campaign ids pile up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CampaignLoad {
    pub campaign: uuid::Uuid,
    pub active: i64,
    pub cap: u32,
    /// Calls a person answered, and those abandoned (campaigns with media).
    pub answered_human: i64,
    pub abandoned: i64,
}

static TOP: Mutex<Vec<CampaignLoad>> = Mutex::new(Vec::new());
/// Running campaigns a person has answered, the highest abandoned share first (at most
/// [`ABANDON_SERIES`]).
static ABANDON: Mutex<Vec<CampaignLoad>> = Mutex::new(Vec::new());
const ABANDON_SERIES: usize = 100;

/// Publishes the scheduler's view: the `n` campaigns with the most active calls (and the total,
/// as the `dialer_active_calls` gauge).
pub fn publish_campaign_load(mut all: Vec<CampaignLoad>, n: usize) {
    let total: i64 = all.iter().map(|c| c.active).sum();
    metrics::gauge!("dialer_active_calls").set(total as f64);
    let mut answered: Vec<CampaignLoad> = all.iter().filter(|c| c.answered_human > 0).cloned().collect();
    answered.sort_by(|a, b| abandoned_share(b).total_cmp(&abandoned_share(a)).then(a.campaign.cmp(&b.campaign)));
    answered.truncate(ABANDON_SERIES);
    *ABANDON.lock().unwrap_or_else(|p| p.into_inner()) = answered;
    all.sort_by(|a, b| b.active.cmp(&a.active).then(a.campaign.cmp(&b.campaign)));
    all.truncate(n);
    *TOP.lock().unwrap_or_else(|p| p.into_inner()) = all;
}

fn abandoned_share(c: &CampaignLoad) -> f64 {
    if c.answered_human > 0 { c.abandoned as f64 / c.answered_human as f64 } else { 0.0 }
}

/// `dialer_campaign_abandoned_ratio`: each running campaign's abandoned calls over the calls
/// people answered (47 CFR 64.1200(a)(7) allows 3 %).
fn render_abandoned(out: &mut String) {
    use std::fmt::Write;
    let all = ABANDON.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if all.is_empty() {
        return;
    }
    out.push_str("# HELP dialer_campaign_abandoned_ratio Abandoned calls over calls a person answered, per running campaign with media (47 CFR 64.1200(a)(7): at most 0.03).\n");
    out.push_str("# TYPE dialer_campaign_abandoned_ratio gauge\n");
    for c in &all {
        let _ = writeln!(out, "dialer_campaign_abandoned_ratio{{campaign=\"{}\"}} {}", c.campaign, abandoned_share(c));
    }
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
