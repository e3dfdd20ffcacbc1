//! Helpers shared by the control plane's integration tests.
#![allow(dead_code)]

use dialer_control_plane::{Config, Store, open_store};
use dialer_domain::messages::{EventKind, StatusEvent};
use dialer_domain::validate::{Campaign, CreateCampaignRequest};
use serde_json::json;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Postgres,
    Sqlite,
}

pub async fn store(b: Backend) -> (Store, Option<tempfile::TempDir>) {
    let (url, dir) = match b {
        Backend::Postgres => (dialer_testkit::postgres_database(), None),
        Backend::Sqlite => {
            let d = tempfile::tempdir().expect("tmp");
            (format!("sqlite://{}", d.path().join("t.db").display()), Some(d))
        }
    };
    (open_store(&Config::default(), &url).await.expect("store"), dir)
}

pub async fn campaign(s: &Store, name: &str, targets: usize, cap: u32, hours: serde_json::Value) -> Campaign {
    let targets: Vec<_> =
        (0..targets).map(|i| json!({"phone_number": format!("+1777{:03}{i:05}", name.len())})).collect();
    let req: CreateCampaignRequest = serde_json::from_value(json!({
        "name": name, "time_zone": "America/New_York", "max_concurrent_calls": cap,
        "retry_policy": {"max_attempts": 3, "base_delay": "20ms", "max_delay": "100ms", "jitter": 1.0},
        "business_hours": hours, "targets": targets
    }))
    .expect("request");
    s.create_campaign(&req.validate(1_000_000).expect("valid")).await.expect("created")
}

pub fn event(campaign_id: Uuid, k: &dialer_control_plane::store::ClaimedCall, kind: EventKind) -> StatusEvent {
    StatusEvent {
        v: 1,
        call_id: k.id,
        attempt: k.attempt,
        campaign_id,
        kind,
        at_ms: 1,
        started_at_ms: Some(1),
        answered_at_ms: (kind == EventKind::Completed).then_some(2),
        duration_ms: Some(3),
        reason: (kind == EventKind::Failed).then(|| "busy".into()),
        retryable: (kind == EventKind::Failed).then_some(true),
        shard: 0,
        dispatch_latency_us: None,
    }
}
