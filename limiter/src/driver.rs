//! Runs one core's [`LeaseCache`] against a [`Backend`]. Everything here lives on the core's
//! single-threaded runtime (`Rc`, not `Arc`): the dial path calls [`LeaseHandle::try_acquire`]
//! and [`LeaseHandle::release`], which touch only local memory; the driver task batches every
//! campaign's due update into one backend call, triggered by a refused dial or a short tick.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::Backend;
use crate::lease::{Ask, CacheTotals, LeaseCache, LeaseSettings};

/// The dial path's side of a core's leases.
#[derive(Clone, Debug)]
pub struct LeaseHandle {
    cache: Rc<RefCell<LeaseCache>>,
    wake: Rc<Notify>,
    updated: Rc<Notify>,
}

impl LeaseHandle {
    /// Takes a token for a call of `campaign`, or refuses; a refusal that an early update may
    /// satisfy wakes the driver, one that only the next refresh can change does not.
    pub fn try_acquire(&self, campaign: Uuid, ask: Ask) -> bool {
        let mut cache = self.cache.borrow_mut();
        let ok = cache.try_acquire(campaign, ask, Instant::now());
        if !ok && cache.take_urgent() {
            self.wake.notify_one();
        }
        ok
    }

    /// Notes how many calls of `campaign` wait on this core (its queue changed without a dial).
    pub fn set_waiting(&self, campaign: Uuid, waiting: u32) {
        self.cache.borrow_mut().set_waiting(campaign, waiting);
    }

    /// Returns the token of an ended call.
    pub fn release(&self, campaign: Uuid) {
        self.cache.borrow_mut().release(campaign);
    }

    /// Spare tokens of `campaign` right now.
    pub fn available(&self, campaign: Uuid) -> u32 {
        self.cache.borrow().available(campaign, Instant::now())
    }

    pub fn totals(&self) -> CacheTotals {
        self.cache.borrow().totals()
    }

    /// True when lease updates have failed for longer than the lease TTL: every lease has expired
    /// and the core starts no call (fail-closed) until the backend answers again.
    pub fn fail_closed(&self) -> bool {
        let c = self.cache.borrow();
        c.failing_since().is_some_and(|since| since.elapsed() >= c.settings().ttl)
    }

    /// Resolves after a backend update that lets some campaign start calls it could not before
    /// (refused dials may retry then). One caller (the shard's loop): an update that comes while
    /// it is busy elsewhere is kept for its next call.
    pub async fn updated(&self) {
        self.updated.notified().await;
    }
}

/// The task that keeps a core's leases up to date.
#[derive(Debug)]
pub struct LeaseDriver {
    cache: Rc<RefCell<LeaseCache>>,
    backend: Backend,
    holder: String,
    global_cap: u32,
    tick: Duration,
    wake: Rc<Notify>,
    updated: Rc<Notify>,
}

impl LeaseDriver {
    /// A driver for holder id `holder` (unique per core and process start) and its handle.
    pub fn new(
        backend: Backend,
        holder: String,
        settings: LeaseSettings,
        global_cap: u32,
    ) -> (LeaseDriver, LeaseHandle) {
        // Generations start at the wall-clock microseconds so a restarted holder's updates are
        // newer than anything it sent before.
        let gen_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let cache = Rc::new(RefCell::new(LeaseCache::new(settings, gen_base)));
        let wake = Rc::new(Notify::new());
        let updated = Rc::new(Notify::new());
        let handle = LeaseHandle { cache: cache.clone(), wake: wake.clone(), updated: updated.clone() };
        (LeaseDriver { cache, backend, holder, global_cap, tick: crate::lease::MIN_REFRESH, wake, updated }, handle)
    }

    /// How often due updates are looked for without a refused dial (default 20 ms).
    pub fn with_tick(mut self, tick: Duration) -> LeaseDriver {
        self.tick = tick;
        self
    }

    /// Runs until `shutdown` resolves, then gives back every token not in use.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.tick) => {}
            }
            self.step().await;
        }
        let reqs = self.cache.borrow_mut().release_all();
        if !reqs.is_empty() {
            let sent = Instant::now();
            let (ttl, epoch) = (self.cache.borrow().settings().ttl, self.cache.borrow().epoch());
            let r = self.backend.sync(&self.holder, ttl, self.global_cap, epoch, &reqs).await;
            self.cache.borrow_mut().complete(&reqs, r.as_ref(), sent);
        }
    }

    /// One round: send the due updates, if any, in one backend call.
    pub async fn step(&self) {
        let now = Instant::now();
        let reqs = self.cache.borrow_mut().plan(now);
        if reqs.is_empty() {
            return;
        }
        let (ttl, epoch) = (self.cache.borrow().settings().ttl, self.cache.borrow().epoch());
        let r = self.backend.sync(&self.holder, ttl, self.global_cap, epoch, &reqs).await;
        let before = self.cache.borrow().totals();
        let (more, failing) = {
            let mut c = self.cache.borrow_mut();
            let more = c.complete(&reqs, r.as_ref(), now);
            (more, c.failing_since())
        };
        let after = self.cache.borrow().totals();
        match &r {
            Ok(reply) => {
                if after.held > before.held {
                    metrics::counter!("dialer_limiter_tokens_leased_total").increment(after.held - before.held);
                } else {
                    metrics::counter!("dialer_limiter_tokens_given_back_total").increment(before.held - after.held);
                }
                metrics::counter!("dialer_limiter_tokens_reaped_total").increment(u64::from(reply.reaped));
            }
            Err(e) => {
                tracing::warn!(error = %e, holder = %self.holder, "lease update failed; handing out only unexpired leases");
                if let Some(since) = failing {
                    metrics::gauge!("dialer_limiter_failing_seconds", "holder" => self.holder.clone())
                        .set(now.duration_since(since).as_secs_f64());
                }
            }
        }
        metrics::gauge!("dialer_limiter_tokens_held", "holder" => self.holder.clone()).set(after.held as f64);
        metrics::gauge!("dialer_limiter_tokens_in_use", "holder" => self.holder.clone()).set(after.in_use as f64);
        if more {
            // One waiter (the shard): `notify_one` keeps a permit when the shard is busy
            // elsewhere at this instant, so the news is never lost (`notify_waiters` would drop
            // it, and a parked campaign would wait for a call end that may never come).
            self.updated.notify_one();
        }
    }
}
