//! The per-core lease cache, pure (no I/O, no clock: every call takes `now`).
//!
//! A shard owns one `LeaseCache`; nothing in it is shared with another core. For each campaign it
//! tracks the tokens *held* (granted by the backend) and *in use* (calls in progress). Dials take
//! and return tokens locally; [`LeaseCache::plan`] says which campaigns need a backend update:
//! - **refill**: fewer than `low_water` spare tokens (or a dial was refused) → want
//!   `in_use + batch`, at most the campaign cap;
//! - **give back**: no dial for `idle_give_back` → want `in_use` (return the spare tokens so they
//!   are not stranded on a core with no work for that campaign); tokens being given back are
//!   dropped from the cache when the update is planned, not when it is answered, so a dial
//!   meanwhile cannot take one the pool is already granting to another core;
//! - **renew**: the last update is `renew_every` old → the same count again, well before expiry.
//!
//! Fail-closed: a lease is good until `expires` (its last successful update + ttl). Past that, no
//! new token is handed out until an update succeeds; tokens in use stay in use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::LimiterError;
use crate::model::{SyncReply, SyncRequest};

/// Tuning of the lease cache (see `tuning/`).
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseSettings {
    /// Tokens asked for beyond those in use when refilling.
    pub batch: u32,
    /// Refill when fewer spare tokens than this are left.
    pub low_water: u32,
    /// Lease lifetime without renewal: a crashed holder's tokens come back after this. At most
    /// `TELEPHONY_SEMAPHORE_TTL_SEC`.
    pub ttl: Duration,
    /// Renew this long after the last update (a third of `ttl` by default).
    pub renew_every: Duration,
    /// Give spare tokens back after this long without a dial of the campaign.
    pub idle_give_back: Duration,
    /// Wait this long before retrying after a failed update.
    pub retry_after: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            batch: 64,
            low_water: 16,
            ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            idle_give_back: Duration::from_secs(2),
            retry_after: Duration::from_millis(200),
        }
    }
}

impl LeaseSettings {
    /// Checks the settings against each other and the reclamation window.
    pub fn check(&self, semaphore_ttl: Duration) -> Result<(), LimiterError> {
        let bad = |key: &'static str, reason: &str| Err(LimiterError::Config { key, reason: reason.into() });
        if self.batch == 0 {
            return bad("lease_batch", "must be at least 1");
        }
        if self.low_water > self.batch {
            return bad("lease_low_water", "must not exceed lease_batch");
        }
        if self.ttl < Duration::from_secs(1) {
            return bad("lease_ttl", "must be at least 1s");
        }
        if self.ttl > semaphore_ttl {
            return bad("lease_ttl", "must not exceed TELEPHONY_SEMAPHORE_TTL_SEC (the reclamation window)");
        }
        if self.renew_every.is_zero() || self.renew_every * 2 > self.ttl {
            return bad(
                "lease_renew_every",
                "must be above 0 and at most half of lease_ttl, so a lease is renewed well before it expires",
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct Entry {
    held: u32,
    in_use: u32,
    cap: u32,
    /// Lease good until (fail-closed after).
    expires: Option<Instant>,
    renewed_at: Option<Instant>,
    last_dial: Instant,
    in_flight: bool,
    refused: bool,
    retry_at: Option<Instant>,
}

/// Totals over a cache, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheTotals {
    pub held: u64,
    pub in_use: u64,
    pub campaigns: usize,
}

/// One core's leases.
#[derive(Debug)]
pub struct LeaseCache {
    settings: LeaseSettings,
    generation: u64,
    entries: HashMap<Uuid, Entry>,
    /// When the backend last failed and has not succeeded since.
    failing_since: Option<Instant>,
    /// The pool epoch of the last reply (0 = none yet).
    epoch: u64,
}

impl LeaseCache {
    /// `gen_base` must exceed every generation this holder id used before (e.g. the start time
    /// in microseconds), so a restarted holder's updates are never taken for stale ones.
    pub fn new(settings: LeaseSettings, gen_base: u64) -> LeaseCache {
        LeaseCache { settings, generation: gen_base, entries: HashMap::new(), failing_since: None, epoch: 0 }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Takes a token of `campaign` if one is held and the lease is good. On refusal the
    /// campaign is marked for an immediate refill.
    pub fn try_acquire(&mut self, campaign: Uuid, campaign_cap: u32, now: Instant) -> bool {
        let e = self.entries.entry(campaign).or_insert_with(|| Entry {
            held: 0,
            in_use: 0,
            cap: campaign_cap,
            expires: None,
            renewed_at: None,
            last_dial: now,
            in_flight: false,
            refused: false,
            retry_at: None,
        });
        e.cap = campaign_cap;
        e.last_dial = now;
        let good = e.expires.is_some_and(|x| now < x);
        if good && e.in_use < e.held && e.in_use < e.cap {
            e.in_use += 1;
            true
        } else {
            e.refused = true;
            false
        }
    }

    /// Returns a token at the end of a call.
    pub fn release(&mut self, campaign: Uuid) {
        if let Some(e) = self.entries.get_mut(&campaign) {
            e.in_use = e.in_use.saturating_sub(1);
        }
    }

    /// The updates due at `now`; they are marked in flight until [`LeaseCache::complete`].
    pub fn plan(&mut self, now: Instant) -> Vec<SyncRequest> {
        let s = &self.settings;
        let mut out = Vec::new();
        let mut drop = Vec::new();
        for (c, e) in self.entries.iter_mut() {
            if e.in_flight || e.retry_at.is_some_and(|r| now < r) {
                continue;
            }
            let good = e.expires.is_some_and(|x| now < x);
            let held = if good { e.held } else { 0 };
            let spare = held.saturating_sub(e.in_use);
            let idle = now.duration_since(e.last_dial) >= s.idle_give_back;
            let ceiling = e.cap.max(e.in_use);
            let want = if idle {
                e.in_use
            } else if spare < s.low_water || e.refused {
                (e.in_use + s.batch).min(ceiling).max(e.in_use)
            } else {
                held.min(ceiling)
            };
            let renew_due = e.renewed_at.is_none_or(|r| now.duration_since(r) >= s.renew_every);
            if want == 0 && e.in_use == 0 && held == 0 {
                // Nothing held, nothing in use, no demand: forget the campaign.
                drop.push(*c);
                continue;
            }
            // Changing the count, renewing a lease in use, or re-establishing an expired one.
            let needed = want != held || (renew_due && (held > 0 || e.in_use > 0)) || (!good && e.in_use > 0);
            if needed {
                self.generation += 1;
                e.in_flight = true;
                // Tokens being given back are no longer ours to hand out: the pool may grant
                // them to another core before the reply comes (and, if the update fails, it may
                // still have applied). Until the next grant, this core has only `want`.
                e.held = e.held.min(want);
                out.push(SyncRequest {
                    campaign: *c,
                    want,
                    generation: self.generation,
                    campaign_cap: e.cap,
                    in_use: e.in_use,
                });
            }
        }
        for c in drop {
            if self.entries.get(&c).is_some_and(|e| !e.in_flight) {
                self.entries.remove(&c);
            }
        }
        out
    }

    /// Applies the backend's answer to updates sent at `sent_at`.
    pub fn complete(&mut self, reqs: &[SyncRequest], reply: Result<&SyncReply, &LimiterError>, sent_at: Instant) {
        match reply {
            Ok(r) => {
                self.failing_since = None;
                if self.epoch != 0 && r.epoch != self.epoch {
                    // The pool lost its state: re-register every campaign's calls in progress
                    // at the next plan, not at its next renewal.
                    // Until then only calls in progress are counted: no spare tokens.
                    for e in self.entries.values_mut() {
                        e.renewed_at = None;
                        e.held = e.held.min(e.in_use);
                    }
                }
                self.epoch = r.epoch;
                for (req, item) in reqs.iter().zip(&r.items) {
                    if let Some(e) = self.entries.get_mut(&req.campaign) {
                        e.in_flight = false;
                        e.refused = false;
                        e.retry_at = None;
                        e.held = item.held;
                        e.cap = item.cap;
                        // Counted from when the update was sent: the backend's expiry is later.
                        e.expires = Some(sent_at + self.settings.ttl);
                        e.renewed_at = Some(sent_at);
                    }
                }
            }
            Err(_) => {
                self.failing_since.get_or_insert(sent_at);
                for req in reqs {
                    if let Some(e) = self.entries.get_mut(&req.campaign) {
                        e.in_flight = false;
                        e.retry_at = Some(sent_at + self.settings.retry_after);
                    }
                }
            }
        }
    }

    /// Gives everything back: the updates for a graceful shutdown (want = tokens still in use).
    pub fn release_all(&mut self) -> Vec<SyncRequest> {
        let mut out = Vec::new();
        for (c, e) in self.entries.iter_mut() {
            if e.held > 0 {
                self.generation += 1;
                e.in_flight = true;
                out.push(SyncRequest {
                    campaign: *c,
                    want: e.in_use,
                    generation: self.generation,
                    campaign_cap: e.cap,
                    in_use: e.in_use,
                });
            }
        }
        out
    }

    /// Spare tokens of a campaign that can be handed out now.
    pub fn available(&self, campaign: Uuid, now: Instant) -> u32 {
        self.entries.get(&campaign).map_or(0, |e| {
            if e.expires.is_some_and(|x| now < x) { e.held.min(e.cap).saturating_sub(e.in_use) } else { 0 }
        })
    }

    pub fn in_use(&self, campaign: Uuid) -> u32 {
        self.entries.get(&campaign).map_or(0, |e| e.in_use)
    }

    pub fn totals(&self) -> CacheTotals {
        CacheTotals {
            held: self.entries.values().map(|e| u64::from(e.held)).sum(),
            in_use: self.entries.values().map(|e| u64::from(e.in_use)).sum(),
            campaigns: self.entries.len(),
        }
    }

    /// The pool epoch of the last reply, sent with the next sync (0 = none yet).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Since when the backend has been failing (fail-closed once leases expire).
    pub fn failing_since(&self) -> Option<Instant> {
        self.failing_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PoolState, SyncItem};

    fn c(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn settings() -> LeaseSettings {
        LeaseSettings {
            batch: 10,
            low_water: 3,
            ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            idle_give_back: Duration::from_secs(2),
            retry_after: Duration::from_millis(200),
        }
    }

    /// Runs one plan/complete round against a pure pool.
    fn round(cache: &mut LeaseCache, pool: &mut PoolState, now: Instant, t0: Instant) -> Vec<SyncRequest> {
        let reqs = cache.plan(now);
        if !reqs.is_empty() {
            let ms = now.duration_since(t0).as_millis() as u64;
            let reply = pool.sync(ms, "h", 30_000, 1000, cache.epoch(), &reqs);
            cache.complete(&reqs, Ok(&reply), now);
        }
        reqs
    }

    #[test]
    fn first_dial_is_refused_then_a_batch_is_leased() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        assert!(!cache.try_acquire(c(1), 100, t0), "nothing held yet");
        let reqs = round(&mut cache, &mut pool, t0, t0);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].want, 10, "in_use + batch");
        for _ in 0..10 {
            assert!(cache.try_acquire(c(1), 100, t0));
        }
        assert!(!cache.try_acquire(c(1), 100, t0), "batch used up");
        assert_eq!(pool.global(), 10);
    }

    #[test]
    fn refills_below_low_water_and_never_beyond_the_cap() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), 15, t0);
        round(&mut cache, &mut pool, t0, t0);
        for _ in 0..8 {
            assert!(cache.try_acquire(c(1), 15, t0));
        }
        // 2 spare < low water 3: refill to in_use + batch = 18, capped at 15.
        let reqs = round(&mut cache, &mut pool, t0, t0);
        assert_eq!(reqs[0].want, 15);
        assert_eq!(cache.available(c(1), t0), 7);
        // At the cap with spare below low water: nothing more to ask for, no churn.
        for _ in 0..6 {
            cache.try_acquire(c(1), 15, t0);
        }
        assert!(round(&mut cache, &mut pool, t0 + Duration::from_millis(10), t0).is_empty());
    }

    #[test]
    fn tokens_are_reused_locally_without_backend_calls() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), 100, t0);
        round(&mut cache, &mut pool, t0, t0);
        let mut calls = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i);
            assert!(cache.try_acquire(c(1), 100, now));
            cache.release(c(1));
            calls += usize::from(!round(&mut cache, &mut pool, now, t0).is_empty());
        }
        assert_eq!(calls, 0, "a second of dials reusing one token needs no backend update");
    }

    #[test]
    fn tokens_being_given_back_are_not_handed_out() {
        // Seen in a chaos run: a core's give-back was in flight when a dial came; the dial took a
        // token the pool was handing to another core, and the two cores were over the cap.
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut a = LeaseCache::new(settings(), 0);
        a.try_acquire(c(1), 5, t0);
        round(&mut a, &mut pool, t0, t0);
        assert_eq!(a.available(c(1), t0), 5);
        let idle = t0 + Duration::from_secs(3);
        let reqs = a.plan(idle);
        assert_eq!(reqs[0].want, 0, "idle: everything back");
        assert!(!a.try_acquire(c(1), 5, idle), "a token being given back is not handed out");
        let reply = pool.sync(3000, "a", 30_000, 1000, a.epoch(), &reqs);
        a.complete(&reqs, Ok(&reply), idle);
        let mut b = LeaseCache::new(settings(), 0);
        b.try_acquire(c(1), 5, idle);
        round(&mut b, &mut pool, idle, t0);
        assert!((0..5).all(|_| b.try_acquire(c(1), 5, idle)), "the other core gets the whole cap");
        assert_eq!(a.in_use(c(1)) + b.in_use(c(1)), 5, "never over the cap of 5");
        // A give-back that fails may still have been applied: the tokens stay given back.
        let later = idle + Duration::from_secs(1);
        a.try_acquire(c(2), 5, later);
        round(&mut a, &mut pool, later, t0);
        let reqs = a.plan(later + Duration::from_secs(3));
        assert_eq!(reqs[0].want, 0);
        a.complete(&reqs, Err(&LimiterError::Config { key: "test", reason: "down".into() }), later);
        assert_eq!(a.available(c(2), later + Duration::from_secs(3)), 0);
    }

    #[test]
    fn idle_campaign_gives_back_its_spare_tokens() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), 100, t0);
        round(&mut cache, &mut pool, t0, t0);
        assert!(cache.try_acquire(c(1), 100, t0));
        let later = t0 + Duration::from_secs(3);
        let reqs = round(&mut cache, &mut pool, later, t0);
        assert_eq!(reqs[0].want, 1, "keeps only what is in use");
        assert_eq!(pool.global(), 1);
        cache.release(c(1));
        round(&mut cache, &mut pool, later + Duration::from_millis(1), t0);
        assert_eq!(pool.global(), 0);
        round(&mut cache, &mut pool, later + Duration::from_millis(2), t0);
        assert_eq!(cache.totals().campaigns, 0, "an empty idle entry is dropped");
    }

    #[test]
    fn renews_before_expiry() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), 100, t0);
        round(&mut cache, &mut pool, t0, t0);
        assert!(cache.try_acquire(c(1), 100, t0));
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_secs(1);
            cache.try_acquire(c(1), 100, t);
            cache.release(c(1));
            round(&mut cache, &mut pool, t, t0);
        }
        assert!(cache.available(c(1), t) > 0, "lease still good after 10s thanks to renewal at ~10s");
    }

    #[test]
    fn fails_closed_when_the_backend_is_down_and_recovers() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), 100, t0);
        round(&mut cache, &mut pool, t0, t0);
        // Backend down: updates fail; tokens of the unexpired lease are still handed out.
        let down = LimiterError::Unavailable("test".into());
        // A dial at 10 s keeps the campaign busy, so the update at 11 s is a renewal.
        assert!(cache.try_acquire(c(1), 100, t0 + Duration::from_secs(10)));
        cache.release(c(1));
        let mut t = t0 + Duration::from_secs(11);
        let reqs = cache.plan(t);
        assert_eq!(reqs[0].want, 10, "a renewal of the whole lease");
        cache.complete(&reqs, Err(&down), t);
        assert!(cache.try_acquire(c(1), 100, t));
        // Past the lease's expiry nothing is handed out.
        t = t0 + Duration::from_secs(31);
        assert!(!cache.try_acquire(c(1), 100, t));
        assert_eq!(cache.available(c(1), t), 0);
        assert!(cache.failing_since().is_some());
        // Back up: the next update re-establishes the lease.
        t += Duration::from_secs(1);
        let reqs = cache.plan(t);
        assert_eq!(reqs.len(), 1);
        let reply = pool.sync(t.duration_since(t0).as_millis() as u64, "h", 30_000, 1000, cache.epoch(), &reqs);
        cache.complete(&reqs, Ok(&reply), t);
        assert!(cache.try_acquire(c(1), 100, t));
        assert!(cache.failing_since().is_none());
    }

    #[test]
    fn lowered_cap_gives_tokens_back() {
        let t0 = Instant::now();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), 100, t0);
        let reqs = cache.plan(t0);
        cache.complete(
            &reqs,
            Ok(&SyncReply { items: vec![SyncItem { held: 10, cap: 100 }], reaped: 0, epoch: 1, recovering: false }),
            t0,
        );
        assert!(cache.try_acquire(c(1), 4, t0));
        let reqs = cache.plan(t0);
        assert_eq!(reqs[0].want, 4, "held above the new cap is given back");
        assert_eq!(reqs[0].campaign_cap, 4);
    }

    #[test]
    fn settings_are_checked() {
        let ttl = Duration::from_secs(600);
        assert!(LeaseSettings::default().check(ttl).is_ok());
        let mut s = LeaseSettings::default();
        s.low_water = s.batch + 1;
        assert!(s.check(ttl).is_err());
        let s = LeaseSettings { ttl: Duration::from_secs(700), ..LeaseSettings::default() };
        assert!(s.check(ttl).is_err());
        let mut s = LeaseSettings::default();
        s.renew_every = s.ttl;
        assert!(s.check(ttl).is_err());
    }
}
