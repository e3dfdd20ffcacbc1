//! The in-process backend: [`PoolState`] behind a mutex. The mutex is taken once per batched
//! sync of a core (never per dial), so it is not a lock on the hot path.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::model::{PoolState, SyncReply, SyncRequest};
use crate::{Reconciled, Usage};

#[derive(Debug)]
pub struct LocalBackend {
    state: Mutex<PoolState>,
    epoch: Instant,
}

impl Default for LocalBackend {
    fn default() -> Self {
        LocalBackend { state: Mutex::new(PoolState::default()), epoch: Instant::now() }
    }
}

impl LocalBackend {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves a consistent state (every update is applied
        // whole before any await or panic point), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn sync(&self, holder: &str, ttl: Duration, global_cap: u32, epoch: u64, reqs: &[SyncRequest]) -> SyncReply {
        let now = self.now_ms();
        self.state().sync(now, holder, ttl.as_millis() as u64, global_cap, epoch, reqs)
    }

    pub fn reconcile(&self) -> Reconciled {
        let now = self.now_ms();
        let mut s = self.state();
        let reaped = s.reap(now);
        let (g, c) = s.reconcile();
        Reconciled { global_drift: g, campaign_drift: c, reaped_tokens: i64::from(reaped) }
    }

    pub fn usage(&self, campaign: Uuid) -> Usage {
        let s = self.state();
        Usage { global: s.global(), campaign: s.campaign(campaign) }
    }

    pub fn set_global_limit(&self, limit: Option<u32>) {
        self.state().set_global_limit(limit);
    }

    pub fn set_campaign_limit(&self, campaign: Uuid, limit: Option<u32>) {
        self.state().set_campaign_limit(campaign, limit);
    }

    /// Corrupts the global counter (tests of reconciliation).
    #[doc(hidden)]
    pub fn skew_global(&self, by: i64) {
        self.state().skew_global(by);
    }
}
