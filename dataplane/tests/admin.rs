//! The data plane's admin port: `/healthz` answers while the process runs, `/readyz` follows
//! each shard's health, `/metrics` serves the process's exposition.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[tokio::test]
async fn dataplane_readyz_follows_the_shards() {
    let health = Arc::new(dialer_dataplane::Health::new(2));
    let app = dialer_dataplane::admin::router(health.clone());
    let get = |uri: &'static str| {
        let app = app.clone();
        async move {
            let r = app.oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("answer");
            let s = r.status();
            let body = r.into_body().collect().await.expect("body").to_bytes();
            (s, serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default())
        }
    };
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    let (s, body) = get("/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "starting shards are not ready");
    assert_eq!(body["shards"][0]["ready"], false);
    let now = dialer_bus::time::now_ms();
    health.shard(0).running(now);
    health.shard(1).running(now);
    assert_eq!(get("/readyz").await.0, StatusCode::OK);
    health.shard(1).set_fail_closed(true);
    let (s, body) = get("/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["shards"][1]["problems"][0].as_str().unwrap_or_default().contains("limiter"), "{body}");
    assert_eq!(body["shards"][0]["ready"], true);
}
