//! The caps' settings (`[limits]`), with the operator guide's names and defaults. Read and
//! layered by the binary; this crate owns the type and its defaults.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ApiGuard;

/// Concurrency caps and where they are kept (`[limits]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// `TELEPHONY_GLOBAL_MAX_CONCURRENCY`: calls in progress across all campaigns.
    pub global_max_concurrency: u32,
    /// `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`: ceiling of any campaign's own cap.
    pub per_campaign_max_concurrency: u32,
    /// `TELEPHONY_SEMAPHORE_TTL_SEC`: reclamation window of a lost concurrency slot.
    #[serde(rename = "semaphore_ttl_sec", with = "dialer_domain::duration::secs")]
    pub semaphore_ttl: Duration,
    /// `MAX_CONCURRENT_CALLS`: in-flight `POST /api/v1/calls` requests before 429.
    pub max_concurrent_calls: u32,
    /// `DAILY_USAGE_CAP`: accepted `POST /api/v1/calls` per UTC day and API process; 0 = off.
    pub daily_usage_cap: u64,
    /// `REDIS_URL`: the shared limiter (`redis://HOST:PORT`); empty = in-process limiter.
    pub redis_url: String,
    /// Key prefix of the limiter in Redis; its `{hash tag}` keeps the keys in one Cluster slot.
    pub redis_key_prefix: String,
    /// Seconds between reconciliations of the limiter's counters with its leases.
    #[serde(rename = "reconcile_every_sec", with = "dialer_domain::duration::secs")]
    pub reconcile_every: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            global_max_concurrency: 10_000,
            per_campaign_max_concurrency: 100,
            semaphore_ttl: Duration::from_secs(600),
            max_concurrent_calls: 200,
            daily_usage_cap: 0,
            redis_url: String::new(),
            redis_key_prefix: "{dialer}:".into(),
            reconcile_every: Duration::from_secs(60),
        }
    }
}

impl LimitSettings {
    /// The API's guard (`MAX_CONCURRENT_CALLS`, `DAILY_USAGE_CAP`).
    pub fn api_guard(&self) -> Arc<ApiGuard> {
        Arc::new(ApiGuard::new(self.max_concurrent_calls, self.daily_usage_cap))
    }

    /// A campaign's effective cap under these limits.
    pub fn campaign_cap(&self, campaign_max: u32) -> u32 {
        crate::effective_campaign_cap(campaign_max, self.per_campaign_max_concurrency)
    }
}
