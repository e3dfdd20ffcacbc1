//! Helpers shared by the control plane's integration tests (and the whole product's, in
//! `dialer/tests`, which include this file).
#![allow(dead_code, unused_macros)]

use dialer_control_plane::{Config, Store, open_store};
use dialer_domain::messages::{EventKind, StatusEvent};
use dialer_domain::validate::{Campaign, CreateCampaignRequest};
use serde_json::json;
use uuid::Uuid;

/// Runs each named `async fn(Backend)` as a test on PostgreSQL and on SQLite (the test file
/// imports `Backend`).
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Sqlite).await } )*
        }
    };
}

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

pub fn event(campaign_id: Uuid, k: &dialer_store::ClaimedCall, kind: EventKind) -> StatusEvent {
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
        sip: None,
    }
}

/// Each call's dialled attempts, from the ledger in `dir`: exactly `1..=attempt_count` (each
/// counted attempt placed, none placed twice, none placed beyond the count).
pub async fn assert_each_attempt_dialled_once(s: &Store, campaigns: &[Uuid], dir: &std::path::Path) {
    let mut placed: std::collections::HashMap<Uuid, Vec<u32>> = std::collections::HashMap::new();
    for line in std::fs::read_to_string(dir.join("ledger")).expect("ledger").lines() {
        let f: Vec<&str> = line.split(' ').collect();
        placed.entry(f[0].parse().expect("call id")).or_default().push(f[1].parse().expect("attempt"));
    }
    let mut calls = 0;
    for c in campaigns {
        let q = dialer_store::CallQuery { limit: 100_000, ..Default::default() };
        for k in s.list_calls(*c, &q).await.expect("calls") {
            let mut got = placed.remove(&k.id).unwrap_or_default();
            got.sort_unstable();
            let want: Vec<u32> = (1..=k.attempt_count).collect();
            assert_eq!(got, want, "call {}: attempts placed vs counted", k.id);
            calls += 1;
        }
    }
    assert!(placed.is_empty(), "{} calls placed that no campaign has", placed.len());
    assert!(calls > 0);
}
