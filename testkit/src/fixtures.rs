//! What the tests build over and over: a fresh store on either database, campaigns, dispatch
//! messages and status events, a scheduler, and the ledger check of dials per attempt. Every
//! crate's tests and the benches use these; none includes another crate's files.

use std::collections::HashMap;
use std::sync::Arc;

use dialer_api::campaigns::CreateCampaignRequest;
use dialer_api::views::Campaign;
use dialer_bus::dispatch::DispatchSink;
use dialer_control_plane::scheduler::{Scheduler, SystemClock};
use dialer_domain::messages::{DispatchMessage, EventKind, SCHEMA_VERSION, StatusEvent};
use dialer_domain::rules::CallingRules;
use dialer_domain::settings::NewCampaign;
use dialer_store::{CallQuery, ClaimedCall, Store, StoreSettings};
use serde_json::{Value, json};
use uuid::Uuid;

/// Runs each named `async fn(Backend)` as a test on PostgreSQL and on SQLite (the test file
/// imports `Backend`).
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::fixtures::Backend::Postgres).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::fixtures::Backend::Sqlite).await } )*
        }
    };
}

/// The database a store test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A fresh, migrated store on `b` (SQLite in a temporary directory the caller keeps).
pub async fn store(b: Backend) -> (Store, Option<tempfile::TempDir>) {
    let (url, dir) = match b {
        Backend::Postgres => (crate::postgres_database(), None),
        Backend::Sqlite => {
            let d = tempfile::tempdir().expect("tmp");
            (format!("sqlite://{}", d.path().join("t.db").display()), Some(d))
        }
    };
    (open(&url).await, dir)
}

/// The store at `url` with the product's settings, migrated.
pub async fn open(url: &str) -> Store {
    Store::open(url, &StoreSettings::default()).await.unwrap_or_else(|e| panic!("store at {url}: {e}"))
}

/// A campaign request of `targets` numbers (`+1777…`, a block per name length), cap `cap`,
/// three quick attempts, business hours `hours`, validated.
pub fn new_campaign(name: &str, targets: usize, cap: u32, hours: Value) -> NewCampaign {
    let targets: Vec<_> =
        (0..targets).map(|i| json!({"phone_number": format!("+1777{:03}{i:05}", name.len())})).collect();
    let req: CreateCampaignRequest = serde_json::from_value(json!({
        "name": name, "time_zone": "America/New_York", "max_concurrent_calls": cap,
        "retry_policy": {"max_attempts": 3, "base_delay": "20ms", "max_delay": "100ms", "jitter": 1.0},
        "business_hours": hours, "targets": targets
    }))
    .expect("request");
    req.validate(1_000_000).expect("valid")
}

/// [`new_campaign`], created in `s`.
pub async fn campaign(s: &Store, name: &str, targets: usize, cap: u32, hours: Value) -> Campaign {
    s.create_campaign(&new_campaign(name, targets, cap, hours)).await.expect("created")
}

/// The status event of kind `kind` for claimed call `k` (a failure: `busy`, retryable).
pub fn event(campaign_id: Uuid, k: &ClaimedCall, kind: EventKind) -> StatusEvent {
    StatusEvent {
        media: None,
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

/// A dispatch message for tests: [`Dispatch::call`] is call `n`'s first attempt for campaign 7
/// at cap 10, to `+15555550100`; each method changes one field.
#[derive(Clone, Debug)]
pub struct Dispatch(DispatchMessage);

impl Dispatch {
    pub fn call(n: u128) -> Dispatch {
        Dispatch(DispatchMessage {
            v: SCHEMA_VERSION,
            call_id: Uuid::from_u128(n),
            attempt: 1,
            campaign_id: Uuid::from_u128(7),
            phone_number: "+15555550100".into(),
            campaign_cap: 10,
            campaign_weight: 1,
            not_before_ms: 0,
            deadline_ms: 0,
            enqueued_at_us: 0,
            telephony: None,
            kind: Default::default(),
        })
    }

    pub fn id(mut self, call: Uuid) -> Dispatch {
        self.0.call_id = call;
        self
    }

    pub fn campaign(mut self, campaign: Uuid) -> Dispatch {
        self.0.campaign_id = campaign;
        self
    }

    pub fn cap(mut self, cap: u32) -> Dispatch {
        self.0.campaign_cap = cap;
        self
    }

    pub fn weight(mut self, weight: u32) -> Dispatch {
        self.0.campaign_weight = weight;
        self
    }

    pub fn number(mut self, number: &str) -> Dispatch {
        self.0.phone_number = number.into();
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Dispatch {
        self.0.attempt = attempt;
        self
    }

    pub fn not_before_ms(mut self, ms: u64) -> Dispatch {
        self.0.not_before_ms = ms;
        self
    }

    pub fn deadline_ms(mut self, ms: u64) -> Dispatch {
        self.0.deadline_ms = ms;
        self
    }

    pub fn build(self) -> DispatchMessage {
        self.0
    }
}

impl From<Dispatch> for DispatchMessage {
    fn from(d: Dispatch) -> DispatchMessage {
        d.0
    }
}

/// A scheduler as the tests run it: the product's settings, caps and clock, but the recipient's
/// calling rules off (the tests' numbers are fictitious). Change what a test needs with struct
/// update: `Scheduler { clock, ..scheduler(store, sink) }`.
pub fn scheduler<S: DispatchSink>(store: Store, sink: S) -> Scheduler<S> {
    Scheduler {
        store,
        sink,
        clock: Arc::new(SystemClock),
        settings: Default::default(),
        limits: Default::default(),
        calling_rules: CallingRules::off(),
    }
}

/// Each call's dialled attempts, from the ledger in `dir`: exactly `1..=attempt_count` (each
/// counted attempt placed, none placed twice, none placed beyond the count).
pub async fn assert_each_attempt_dialled_once(s: &Store, campaigns: &[Uuid], dir: &std::path::Path) {
    let mut placed: HashMap<Uuid, Vec<u32>> = HashMap::new();
    for line in std::fs::read_to_string(dir.join("ledger")).expect("ledger").lines() {
        let f: Vec<&str> = line.split(' ').collect();
        placed.entry(f[0].parse().expect("call id")).or_default().push(f[1].parse().expect("attempt"));
    }
    let mut calls = 0;
    for c in campaigns {
        let q = CallQuery { limit: 100_000, ..Default::default() };
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
