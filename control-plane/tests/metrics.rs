//! `/metrics` is valid Prometheus exposition (`promtool check metrics`, Debian package
//! `prometheus`), with the HTTP, 429 and limiter metrics present and no unbounded labels.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use dialer_control_plane::app_with_guard;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

#[tokio::test]
async fn metrics_pass_promtool() {
    dialer_control_plane::observability::install().expect("recorder installed");
    let dir = tempfile::tempdir().expect("tmp");
    let limits = dialer_limiter::LimitSettings { max_concurrent_calls: 1, ..Default::default() };
    let store = dialer_testkit::fixtures::open(&format!("sqlite://{}", dir.path().join("m.db").display())).await;
    let guard = limits.api_guard();
    let app = app_with_guard(&Default::default(), store, guard.clone());
    let send = |method: Method, uri: &str, body: Option<serde_json::Value>| {
        let app = app.clone();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .expect("request");
        async move {
            let r = app.oneshot(req).await.expect("answer");
            let s = r.status();
            (s, String::from_utf8(r.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8"))
        }
    };
    let (s, body) = send(
        Method::POST,
        "/api/v1/campaigns",
        Some(json!({"name": "m", "targets": [{"phone_number": "+15550009999"}]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = serde_json::from_str::<serde_json::Value>(&body).expect("json")["id"].as_str().expect("id").to_string();
    send(Method::GET, &format!("/api/v1/campaigns/{id}"), None).await;
    send(Method::GET, "/api/v1/campaigns/not-an-id", None).await;
    // A 429 from the API guard.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let held = guard.try_enter(now).expect("permit");
    let (s, _) =
        send(Method::POST, "/api/v1/calls", Some(json!({"campaign_id": id, "phone_number": "+15550009999"}))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    drop(held);
    // The busiest campaigns get a series each (top N), the others only count in the total.
    let loads: Vec<_> = (1..=12u128)
        .map(|i| dialer_control_plane::observability::CampaignLoad {
            campaign: uuid::Uuid::from_u128(i),
            active: i as i64,
            cap: 20,
            // Campaign 1 (not in the top N by load) plays media: 2 of its 40 people abandoned.
            answered_human: if i == 1 { 40 } else { 0 },
            abandoned: if i == 1 { 2 } else { 0 },
        })
        .collect();
    dialer_control_plane::observability::publish_campaign_load(loads, 10);
    // Limiter metrics.
    let b = dialer_limiter::Backend::Local(Arc::new(dialer_limiter::LocalBackend::default()));
    b.sync("h", std::time::Duration::from_secs(5), 10, 0, &[]).await.expect("sync");

    let (s, text) = send(Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    for name in [
        "dialer_http_requests_total",
        "dialer_http_request_duration_seconds_bucket",
        "dialer_http_rejections_total",
        "dialer_limiter_backend_calls_total",
        "dialer_limiter_sync_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(text.contains("route=\"/api/v1/campaigns/{id}\""), "routes are templates");
    assert!(!text.contains(&id), "no id in any label");
    let per_campaign: Vec<&str> = text.lines().filter(|l| l.starts_with("dialer_campaign_active_calls{")).collect();
    assert_eq!(per_campaign.len(), 10, "top 10 only: {per_campaign:?}");
    assert!(
        per_campaign.contains(&"dialer_campaign_active_calls{campaign=\"00000000-0000-0000-0000-00000000000c\"} 12")
    );
    assert!(!text.contains("00000000-0000-0000-0000-000000000002\""), "campaigns outside the top N have no series");
    let abandoned: Vec<&str> = text.lines().filter(|l| l.starts_with("dialer_campaign_abandoned_ratio{")).collect();
    assert_eq!(
        abandoned,
        ["dialer_campaign_abandoned_ratio{campaign=\"00000000-0000-0000-0000-000000000001\"} 0.05"],
        "every running campaign people answered has its abandoned share, whatever its load"
    );
    assert!(text.contains("dialer_active_calls 78"), "the total counts every campaign");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.contains("campaign=") {
            assert!(
                line.starts_with("dialer_campaign_active_calls{")
                    || line.starts_with("dialer_campaign_concurrency_cap{")
                    || line.starts_with("dialer_campaign_abandoned_ratio{"),
                "only the per-campaign families carry a campaign label: {line}"
            );
        }
    }
    assert!(!text.contains("+1555"), "no phone number in any label");

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool not runnable ({e}); install it with: apt-get install -y prometheus"));
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dashboards() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../dashboards")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dashboards())
        .output()
        .unwrap_or_else(|e| panic!("promtool not runnable ({e}); install it with: apt-get install -y prometheus"));
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
}
