//! Concurrency limits of the dialer. Every call needs a token under two caps at once: the global
//! cap (all campaigns) and its campaign's cap. Tokens are not taken one by one from a shared
//! store: a core *leases* a batch for a campaign in one atomic operation and hands tokens out
//! locally, reusing them as calls end, so the shared store sees a tiny fraction of an operation
//! per dial.
//!
//! - [`fair`]: demand-driven fair shares, pure: the global cap split across campaigns max-min
//!   fair by demand (weighted), each campaign's share split across its holders by demand.
//! - [`model`]: the pool semantics, pure: atomic take from both caps, per-holder leases with an
//!   expiry, reaping, idempotent absolute "hold N" updates ordered by a generation number, calls
//!   in progress always counted, and a recovery window when the store lost its state.
//! - [`redis`]: the same semantics as Lua scripts in Redis (fred), loaded once, run by SHA.
//! - [`local`]: the same semantics in-process, for the embedded mode and tests.
//! - [`lease`]: the per-core lease cache (pure): low-water refill, idle give-back, renewal,
//!   fail-closed once the lease in hand expires.
//! - [`driver`]: runs a core's cache against a backend, batching every campaign's update into one
//!   backend call.
//! - [`guard`]: the API-level guard (`MAX_CONCURRENT_CALLS` in-flight requests, daily usage cap).
//! - [`LimitSettings`] (`[limits]`) and [`LeaseSettings`] (the tuning's `[lease]`): the settings
//!   this crate owns.

pub mod driver;
pub mod fair;
pub mod guard;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod model;
pub mod redis;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

pub use driver::{LeaseDriver, LeaseHandle};
pub use guard::{ApiGuard, GuardRejection};
pub use lease::{Ask, LeaseCache, LeaseSettings, MIN_REFRESH};
pub use local::LocalBackend;
pub use model::{SyncItem, SyncReply, SyncRequest};
pub use redis::RedisBackend;
pub use settings::LimitSettings;

/// What the limiter can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("Redis is unavailable: {0}; new tokens are refused until it is back (fail-closed)")]
    Unavailable(#[source] fred::error::Error),
    #[error(
        "Redis answered the {script} script with {values:?}, which this limiter does not understand; \
         check that every process runs the same version"
    )]
    Protocol { script: &'static str, values: Vec<i64> },
    #[error("limiter setting {key}: {reason}")]
    Config { key: &'static str, reason: String },
}

impl LimiterError {
    /// Redis did not answer (down or restarting): worth waiting for, unlike a wrong setting.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LimiterError::Unavailable(_))
    }
}

/// A campaign's effective cap: the lower of its own `max_concurrent_calls` and the operator's
/// per-campaign ceiling (`TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`).
pub fn effective_campaign_cap(campaign_max: u32, per_campaign_ceiling: u32) -> u32 {
    campaign_max.min(per_campaign_ceiling)
}

/// Tokens counted by the backend, for reconciliation, tests and benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub global: i64,
    pub campaign: i64,
}

/// Drift found and corrected by [`Backend::reconcile`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Counter minus the sum of live leases, before correction (0 = no drift).
    pub global_drift: i64,
    /// Sum of |drift| over campaigns.
    pub campaign_drift: i64,
    /// Leases reaped because they had expired.
    pub reaped_tokens: i64,
}

/// Where leases come from.
#[derive(Clone, Debug)]
pub enum Backend {
    Local(Arc<LocalBackend>),
    Redis(RedisBackend),
}

impl Backend {
    /// Sets each requested campaign's lease of `holder` to `want` tokens (as far as the caps
    /// allow), renews them for `ttl`, and reaps expired leases; one round trip for all. `epoch`
    /// is the pool epoch of the holder's last reply (0 = none): see [`model`] on lost state.
    pub async fn sync(
        &self,
        holder: &str,
        ttl: Duration,
        global_cap: u32,
        epoch: u64,
        reqs: &[SyncRequest],
    ) -> Result<SyncReply, LimiterError> {
        ::metrics::counter!("dialer_limiter_backend_calls_total").increment(1);
        let t = std::time::Instant::now();
        let r = match self {
            Backend::Local(l) => Ok(l.sync(holder, ttl, global_cap, epoch, reqs)),
            Backend::Redis(r) => r.sync(holder, ttl, global_cap, epoch, reqs).await,
        };
        ::metrics::histogram!("dialer_limiter_sync_seconds").record(t.elapsed().as_secs_f64());
        if r.is_err() {
            ::metrics::counter!("dialer_limiter_backend_errors_total").increment(1);
        }
        r
    }

    /// Recounts the counters from the leases, corrects drift and reports it.
    pub async fn reconcile(&self) -> Result<Reconciled, LimiterError> {
        let r = match self {
            Backend::Local(l) => Ok(l.reconcile()),
            Backend::Redis(r) => r.reconcile().await,
        }?;
        if r.global_drift != 0 || r.campaign_drift != 0 {
            tracing::warn!(global_drift = r.global_drift, campaign_drift = r.campaign_drift, "limiter drift corrected");
        }
        ::metrics::counter!("dialer_limiter_drift_corrected_total")
            .increment((r.global_drift.unsigned_abs()) + r.campaign_drift.unsigned_abs());
        Ok(r)
    }

    /// Tokens held globally and by `campaign`.
    pub async fn usage(&self, campaign: Uuid) -> Result<Usage, LimiterError> {
        match self {
            Backend::Local(l) => Ok(l.usage(campaign)),
            Backend::Redis(r) => r.usage(campaign).await,
        }
    }

    /// Overrides the global cap live (`None` = use each caller's configured cap).
    pub async fn set_global_limit(&self, limit: Option<u32>) -> Result<(), LimiterError> {
        match self {
            Backend::Local(l) => {
                l.set_global_limit(limit);
                Ok(())
            }
            Backend::Redis(r) => r.set_limit(None, limit).await,
        }
    }

    /// Overrides a campaign's cap live (`None` = use the cap callers send).
    pub async fn set_campaign_limit(&self, campaign: Uuid, limit: Option<u32>) -> Result<(), LimiterError> {
        match self {
            Backend::Local(l) => {
                l.set_campaign_limit(campaign, limit);
                Ok(())
            }
            Backend::Redis(r) => r.set_limit(Some(campaign), limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn effective_cap_is_the_lower() {
        assert_eq!(super::effective_campaign_cap(500, 100), 100);
        assert_eq!(super::effective_campaign_cap(10, 100), 10);
    }
}
