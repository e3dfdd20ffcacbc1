//! The data plane's admin endpoints: `/metrics`, `/healthz` (no shard stopped on an error) and `/readyz`
//! (every shard runs with a fresh heartbeat, unexpired leases, a working broker and journal;
//! 503 with each shard's problems otherwise); and the shards' readiness check for a process
//! that serves another `/readyz` (`dialer up`'s API).

use std::sync::Arc;

use dialer_bus::time::now_ms;
use dialer_telemetry::{CheckError, ReadyCheck};

use crate::health::Health;

/// The admin router over the shards' `health`.
pub fn router(health: Arc<Health>) -> axum::Router {
    use axum::routing::get;
    let alive = health.clone();
    axum::Router::new()
        .route("/metrics", get(dialer_telemetry::metrics))
        .route("/healthz", get(move || std::future::ready(liveness(&alive))))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    let shards = h.status(now_ms());
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

/// 200 while no shard stopped on an error; 503 naming each that did and why.
fn liveness(health: &Health) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let failed = health.failed();
    if failed.is_empty() {
        return (axum::http::StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"})));
    }
    let body = serde_json::json!({"status": "unavailable", "failed": failed});
    (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
}

/// No shard stopped on an error (`dialer up`'s `/healthz` and `/readyz`).
pub fn shards_alive_check(health: Arc<Health>) -> ReadyCheck {
    ReadyCheck::liveness("shards_alive", move || {
        let failed = health.failed();
        Box::pin(async move { if failed.is_empty() { Ok(()) } else { Err(CheckError::NotReady(failed)) } })
    })
}

/// Every shard runs, has a fresh heartbeat and unexpired leases.
pub fn shards_check(health: Arc<Health>) -> ReadyCheck {
    ReadyCheck::new("shards", move || {
        let h = health.clone();
        Box::pin(async move {
            let bad: Vec<String> = h
                .status(now_ms())
                .into_iter()
                .filter(|s| !s.ready)
                .map(|s| format!("shard {}: {}", s.shard, s.problems.join("; ")))
                .collect();
            if bad.is_empty() { Ok(()) } else { Err(CheckError::NotReady(bad)) }
        })
    })
}
