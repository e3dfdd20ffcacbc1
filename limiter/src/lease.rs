//! The per-core lease cache, pure (no I/O, no clock: every call takes `now`).
//!
//! A shard owns one `LeaseCache`; nothing in it is shared with another core. For each campaign it
//! tracks the tokens *held* (granted by the backend), *in use* (calls in progress), the calls
//! *waiting* for a token on this core, and the *target* the pool last computed for this core (its
//! fair share, see [`crate::fair`]). Dials take and return tokens locally, never beyond the
//! target; [`LeaseCache::plan`] says which campaigns need a backend update, and every update
//! reports the campaign's *demand* (in use + waiting) so the pool can divide the caps by it:
//! - **refill at once** when a campaign wants more than it holds and the pool granted all it
//!   asked last time (so the pool, not a stale request, may have room): want
//!   `in_use + waiting + batch`, at most the campaign cap;
//! - **refresh** while a campaign holds, uses or wants tokens: reports the demand, learns the new
//!   target, asks again where the pool was the bound and gives back what is above the target
//!   (tokens in use are never cut: a core above its target starts nothing new, so its calls end
//!   down to the target). Every `refresh_every` (250 ms) when the pool has room; while it is the
//!   bound, every quarter of the calls' mean length (measured: calls in progress ÷ calls ended
//!   per second), at least [`MIN_REFRESH`] apart, since demand on a core changes as fast as its
//!   calls turn over;
//! - **give back** spare tokens of a campaign idle for `idle_give_back`, at its next refresh;
//!   tokens being given back are dropped from the cache when the update is planned, not when it
//!   is answered, so a dial meanwhile cannot take one the pool is already granting to another
//!   core;
//! - **renew** at the latest `renew_every` after the last update, well before expiry.
//!
//! A refused dial asks for an early update only where one can help (no lease yet, or a refill
//! the pool may grant): a core starved by a binding cap waits for its refresh instead of asking
//! the pool again and again.
//!
//! Fail-closed: a lease is good until `expires` (its last successful update + ttl). Past that, no
//! new token is handed out until an update succeeds; tokens in use stay in use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::LimiterError;
use crate::model::{SyncReply, SyncRequest};

/// Tuning of the lease cache (the tuning file's `[lease]`, see `tuning/`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseSettings {
    /// Tokens asked for beyond those in use and waiting when refilling (headroom, granted only
    /// where the caps leave room after every campaign's demand).
    pub batch: u32,
    /// Refill when fewer spare tokens than this are left.
    pub low_water: u32,
    /// Lease lifetime without renewal: a crashed holder's tokens come back after this. At most
    /// `TELEPHONY_SEMAPHORE_TTL_SEC`.
    #[serde(rename = "ttl_ms", with = "dialer_domain::duration::millis")]
    pub ttl: Duration,
    /// Renew this long after the last update at the latest (a third of `ttl` by default).
    #[serde(rename = "renew_every_ms", with = "dialer_domain::duration::millis")]
    pub renew_every: Duration,
    /// Report demand and learn the fair share at least this often while a campaign is active.
    /// While the pool is the bound (caps binding), a core refreshes faster: every quarter of its
    /// calls' mean length, but not more often than [`MIN_REFRESH`]. Shares converge within a
    /// refresh (plus the time calls above a share take to end). One backend call per core per
    /// refresh.
    #[serde(rename = "refresh_every_ms", with = "dialer_domain::duration::millis")]
    pub refresh_every: Duration,
    /// Give spare tokens back after this long without a dial of the campaign.
    #[serde(rename = "idle_give_back_ms", with = "dialer_domain::duration::millis")]
    pub idle_give_back: Duration,
    /// Wait this long before retrying after a failed update (not a tuning key).
    #[serde(skip)]
    pub retry_after: Duration,
}

/// The fastest refresh (the lease driver's tick).
pub const MIN_REFRESH: Duration = Duration::from_millis(20);

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            batch: 64,
            low_water: 16,
            ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            refresh_every: Duration::from_millis(250),
            idle_give_back: Duration::from_secs(2),
            retry_after: Duration::from_millis(200),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    held: u32,
    in_use: u32,
    /// Calls of the campaign waiting on this core for a token (as the shard last said).
    waiting: u32,
    cap: u32,
    weight: u32,
    /// The pool's fair share for this core (None before the first reply).
    target: Option<u32>,
    /// The last reply granted less than was asked: the pool, not this core, was the bound.
    limited: bool,
    /// The demand the last update reported.
    reported_demand: u32,
    /// Lease good until (fail-closed after).
    expires: Option<Instant>,
    renewed_at: Option<Instant>,
    last_dial: Instant,
    in_flight: bool,
    refused: bool,
    retry_at: Option<Instant>,
}

impl Entry {
    fn new(cap: u32, now: Instant) -> Entry {
        Entry {
            held: 0,
            in_use: 0,
            waiting: 0,
            cap,
            weight: 1,
            target: None,
            limited: false,
            reported_demand: 0,
            expires: None,
            renewed_at: None,
            last_dial: now,
            in_flight: false,
            refused: false,
            retry_at: None,
        }
    }

    fn good(&self, now: Instant) -> bool {
        self.expires.is_some_and(|x| now < x)
    }

    /// Tokens this core may have in use now: what it holds, within the cap and its fair share.
    fn limit(&self, now: Instant) -> u32 {
        if self.good(now) { self.held.min(self.cap).min(self.target.unwrap_or(u32::MAX)) } else { 0 }
    }

    /// Whether a refused dial should bring the next update forward: only where the pool may
    /// grant more now (no lease yet, or the last reply gave all that was asked).
    fn sync_would_help(&self, now: Instant) -> bool {
        if self.in_flight {
            return false;
        }
        if !self.good(now) {
            return true;
        }
        // A target equal to what was held comes from this core's own request when the pool had
        // room; a larger request may get more.
        !self.limited && self.in_use >= self.held && self.held < self.cap
    }

    /// The tokens to ask for now (see the module's rules).
    fn want(&self, s: &LeaseSettings, now: Instant) -> u32 {
        let held = if self.good(now) { self.held } else { 0 };
        let spare = held.saturating_sub(self.in_use);
        let idle = self.waiting == 0 && now.duration_since(self.last_dial) >= s.idle_give_back;
        let ceiling = self.cap.max(self.in_use);
        let want = if idle {
            self.in_use
        } else if spare < s.low_water || self.refused || self.waiting > 0 {
            (self.in_use + self.waiting + s.batch).min(ceiling).max(self.in_use)
        } else {
            held.min(ceiling)
        };
        // Above the fair share: keep what is in use (never more than needed), give the rest back.
        match self.target {
            Some(t) if held > t => want.min(t.max(self.in_use)),
            _ => want,
        }
    }
}

/// Totals over a cache, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheTotals {
    pub held: u64,
    pub in_use: u64,
    pub campaigns: usize,
}

/// What a dial asks of its campaign's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The campaign's effective cap.
    pub cap: u32,
    /// The campaign's weight under a binding global cap.
    pub weight: u32,
    /// Calls of the campaign waiting on this core, counting the one asking.
    pub queued: u32,
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
    /// A refused dial asked for an update before the next tick.
    urgent: bool,
    /// Calls ended since `hold_mark`, and when it was set: the mean time a token is held
    /// (calls in progress ÷ calls ended per second, Little's law) sets the refresh pace.
    released: u64,
    hold_mark: Option<Instant>,
    mean_hold: Option<Duration>,
}

impl LeaseCache {
    /// `gen_base` must exceed every generation this holder id used before (e.g. the start time
    /// in microseconds), so a restarted holder's updates are never taken for stale ones.
    pub fn new(settings: LeaseSettings, gen_base: u64) -> LeaseCache {
        LeaseCache {
            settings,
            generation: gen_base,
            entries: HashMap::new(),
            failing_since: None,
            epoch: 0,
            urgent: false,
            released: 0,
            hold_mark: None,
            mean_hold: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Takes a token of `campaign` if the lease is good and this core is under its holding, the
    /// cap and its fair share. On refusal the campaign's demand is noted for the next update,
    /// which is brought forward where it can help ([`LeaseCache::take_urgent`]).
    pub fn try_acquire(&mut self, campaign: Uuid, ask: Ask, now: Instant) -> bool {
        let e = self.entries.entry(campaign).or_insert_with(|| Entry::new(ask.cap, now));
        e.cap = ask.cap;
        e.weight = ask.weight;
        e.last_dial = now;
        let granted = e.in_use < e.limit(now);
        if granted {
            e.in_use += 1;
            e.waiting = ask.queued.saturating_sub(1);
        } else {
            e.waiting = ask.queued;
            e.refused = true;
            self.urgent |= e.sync_would_help(now);
        }
        granted
    }

    /// True once after a refused dial that an early update may satisfy.
    pub fn take_urgent(&mut self) -> bool {
        std::mem::take(&mut self.urgent)
    }

    /// Notes how many calls of `campaign` wait on this core (when its queue changed without a
    /// dial: emptied by expiry or a rebalance).
    pub fn set_waiting(&mut self, campaign: Uuid, waiting: u32) {
        if let Some(e) = self.entries.get_mut(&campaign) {
            e.waiting = waiting;
        }
    }

    /// Returns a token at the end of a call.
    pub fn release(&mut self, campaign: Uuid) {
        if let Some(e) = self.entries.get_mut(&campaign) {
            e.in_use = e.in_use.saturating_sub(1);
        }
        self.released += 1;
    }

    /// How often campaigns refresh now: `refresh_every`, or, while the pool was the bound of
    /// some campaign, a quarter of the mean call length (at least [`MIN_REFRESH`]), so shares
    /// follow demand as fast as tokens turn over.
    pub fn refresh_interval(&self) -> Duration {
        let max = self.settings.refresh_every;
        let contended = self.entries.values().any(|e| e.limited);
        match self.mean_hold {
            Some(hold) if contended => (hold / 4).clamp(MIN_REFRESH, max),
            _ => max,
        }
    }

    /// Updates the mean token hold time from the calls ended since the last estimate.
    fn estimate_hold(&mut self, now: Instant) {
        let Some(mark) = self.hold_mark else {
            (self.hold_mark, self.released) = (Some(now), 0);
            return;
        };
        let span = now.duration_since(mark);
        if span < Duration::from_millis(100) {
            return;
        }
        let in_use: u64 = self.entries.values().map(|e| u64::from(e.in_use)).sum();
        if self.released > 0 && in_use > 0 {
            let hold = span.mul_f64(in_use as f64 / self.released as f64);
            self.mean_hold = Some(match self.mean_hold {
                Some(old) => old.mul_f64(0.7) + hold.mul_f64(0.3),
                None => hold,
            });
        }
        (self.hold_mark, self.released) = (Some(now), 0);
    }

    /// The updates due at `now`; they are marked in flight until [`LeaseCache::complete`].
    pub fn plan(&mut self, now: Instant) -> Vec<SyncRequest> {
        self.estimate_hold(now);
        let refresh_every = self.refresh_interval();
        let s = &self.settings;
        let mut out = Vec::new();
        let mut drop = Vec::new();
        for (c, e) in self.entries.iter_mut() {
            if e.in_flight || e.retry_at.is_some_and(|r| now < r) {
                continue;
            }
            let good = e.good(now);
            let held = if good { e.held } else { 0 };
            let want = e.want(s, now);
            let demand = e.in_use + e.waiting;
            if want == 0 && e.in_use == 0 && held == 0 && demand == 0 && e.reported_demand == 0 {
                // Nothing held, in use or wanted, and the pool knows: forget the campaign.
                drop.push(*c);
                continue;
            }
            let since = |at: Option<Instant>, every: Duration| at.is_none_or(|t| now.duration_since(t) >= every);
            // The refresh (never longer than `renew_every`, checked in the settings) also renews.
            let refresh_due = since(e.renewed_at, refresh_every);
            // A refill the pool may grant now; otherwise report, learn, give back and renew at
            // the refresh; re-establish a lease in use.
            let needed = (want > held && !e.limited)
                || (refresh_due && (want != held || demand != e.reported_demand || held > 0 || e.in_use > 0))
                || (!good && e.in_use > 0);
            if needed {
                self.generation += 1;
                e.in_flight = true;
                // Tokens being given back are no longer ours to hand out: the pool may grant
                // them to another core before the reply comes (and, if the update fails, it may
                // still have applied). Until the next grant, this core has only `want`.
                e.held = e.held.min(want);
                e.reported_demand = demand;
                out.push(SyncRequest {
                    campaign: *c,
                    want,
                    generation: self.generation,
                    campaign_cap: e.cap,
                    in_use: e.in_use,
                    demand,
                    weight: e.weight,
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

    /// Applies the backend's answer to updates sent at `sent_at`. True when some campaign may now
    /// start calls it could not start before (more held, a higher target, a lease re-established).
    pub fn complete(
        &mut self,
        reqs: &[SyncRequest],
        reply: Result<&SyncReply, &LimiterError>,
        sent_at: Instant,
    ) -> bool {
        let r = match reply {
            Ok(r) => r,
            Err(_) => {
                self.failing_since.get_or_insert(sent_at);
                for req in reqs {
                    if let Some(e) = self.entries.get_mut(&req.campaign) {
                        e.in_flight = false;
                        e.retry_at = Some(sent_at + self.settings.retry_after);
                    }
                }
                return false;
            }
        };
        self.failing_since = None;
        if self.epoch != 0 && r.epoch != self.epoch {
            // The pool lost its state: re-register every campaign's calls in progress at the
            // next plan, not at its next renewal. Until then only calls in progress are
            // counted: no spare tokens.
            for e in self.entries.values_mut() {
                e.renewed_at = None;
                e.held = e.held.min(e.in_use);
            }
        }
        self.epoch = r.epoch;
        let mut more = false;
        for (req, item) in reqs.iter().zip(&r.items) {
            if let Some(e) = self.entries.get_mut(&req.campaign) {
                let before = e.limit(sent_at);
                e.in_flight = false;
                e.refused = false;
                e.retry_at = None;
                e.held = item.held;
                e.cap = item.cap;
                e.target = Some(item.target);
                e.limited = item.held < req.want;
                // Counted from when the update was sent: the backend's expiry is later.
                e.expires = Some(sent_at + self.settings.ttl);
                e.renewed_at = Some(sent_at);
                more |= e.limit(sent_at) > before;
            }
        }
        more
    }

    /// Gives everything back: the updates for a graceful shutdown (want = tokens still in use).
    pub fn release_all(&mut self) -> Vec<SyncRequest> {
        let mut out = Vec::new();
        for (c, e) in self.entries.iter_mut() {
            if e.held > 0 || e.reported_demand > 0 {
                self.generation += 1;
                e.in_flight = true;
                out.push(SyncRequest {
                    campaign: *c,
                    want: e.in_use,
                    generation: self.generation,
                    campaign_cap: e.cap,
                    in_use: e.in_use,
                    demand: e.in_use,
                    weight: e.weight,
                });
            }
        }
        out
    }

    /// Spare tokens of a campaign that can be handed out now (within the fair share).
    pub fn available(&self, campaign: Uuid, now: Instant) -> u32 {
        self.entries.get(&campaign).map_or(0, |e| e.limit(now).saturating_sub(e.in_use))
    }

    /// The pool's last fair share for this core in `campaign` (None before the first reply).
    pub fn target(&self, campaign: Uuid) -> Option<u32> {
        self.entries.get(&campaign).and_then(|e| e.target)
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

    fn ask(cap: u32) -> Ask {
        Ask { cap, weight: 1, queued: 1 }
    }

    fn settings() -> LeaseSettings {
        LeaseSettings {
            batch: 10,
            low_water: 3,
            ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            refresh_every: Duration::from_millis(250),
            idle_give_back: Duration::from_secs(2),
            retry_after: Duration::from_millis(200),
        }
    }

    /// Runs one plan/complete round of holder `h` against a pure pool with a global cap.
    fn sync_with(
        cache: &mut LeaseCache,
        pool: &mut PoolState,
        h: &str,
        gcap: u32,
        now: Instant,
        t0: Instant,
    ) -> Vec<SyncRequest> {
        let reqs = cache.plan(now);
        if !reqs.is_empty() {
            let ms = now.duration_since(t0).as_millis() as u64;
            let reply = pool.sync(ms, h, 30_000, gcap, cache.epoch(), &reqs);
            cache.complete(&reqs, Ok(&reply), now);
        }
        reqs
    }

    fn round(cache: &mut LeaseCache, pool: &mut PoolState, now: Instant, t0: Instant) -> Vec<SyncRequest> {
        sync_with(cache, pool, "h", 1000, now, t0)
    }

    #[test]
    fn first_dial_is_refused_then_a_batch_is_leased() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        assert!(!cache.try_acquire(c(1), ask(100), t0), "nothing held yet");
        assert!(cache.take_urgent(), "no lease yet: ask at once");
        let reqs = round(&mut cache, &mut pool, t0, t0);
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].want, reqs[0].demand), (11, 1), "in_use + waiting + batch; demand = waiting");
        for _ in 0..11 {
            assert!(cache.try_acquire(c(1), ask(100), t0));
        }
        assert!(!cache.try_acquire(c(1), ask(100), t0), "batch used up");
        assert!(cache.take_urgent(), "the pool gave all that was asked: a refill may succeed");
        assert_eq!(pool.global(), 11);
    }

    #[test]
    fn refills_below_low_water_and_never_beyond_the_cap() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), ask(15), t0);
        round(&mut cache, &mut pool, t0, t0);
        for _ in 0..9 {
            assert!(cache.try_acquire(c(1), ask(15), t0));
        }
        // 2 spare < low water 3: refill to in_use + batch = 19, capped at 15.
        let reqs = round(&mut cache, &mut pool, t0, t0);
        assert_eq!(reqs[0].want, 15);
        assert_eq!(cache.available(c(1), t0), 6);
        // At the cap with spare below low water: nothing more to ask for, no churn.
        for _ in 0..6 {
            cache.try_acquire(c(1), ask(15), t0);
        }
        cache.take_urgent();
        assert!(!cache.try_acquire(c(1), ask(15), t0));
        assert!(!cache.take_urgent(), "at the cap an update cannot help");
        assert!(round(&mut cache, &mut pool, t0 + Duration::from_millis(10), t0).is_empty());
    }

    #[test]
    fn tokens_are_reused_locally_and_the_pool_hears_only_refreshes() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), ask(100), t0);
        round(&mut cache, &mut pool, t0, t0);
        let mut calls = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i);
            assert!(cache.try_acquire(c(1), ask(100), now));
            cache.release(c(1));
            calls += usize::from(!round(&mut cache, &mut pool, now, t0).is_empty());
        }
        assert_eq!(calls, 3, "a second of dials reusing one token: one refresh per 250 ms");
    }

    #[test]
    fn a_starved_core_waits_for_its_refresh_instead_of_asking_again() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let (mut a, mut b) = (LeaseCache::new(settings(), 0), LeaseCache::new(settings(), 0));
        let many = Ask { cap: 100, weight: 1, queued: 50 };
        a.try_acquire(c(1), many, t0);
        sync_with(&mut a, &mut pool, "a", 10, t0, t0);
        assert_eq!(a.available(c(1), t0), 10, "alone, a takes the whole global cap");
        assert!(!b.try_acquire(c(2), many, t0));
        assert!(b.take_urgent(), "no lease yet");
        let reqs = sync_with(&mut b, &mut pool, "b", 10, t0, t0);
        assert_eq!(reqs.len(), 1);
        assert_eq!((b.available(c(2), t0), b.target(c(2))), (0, Some(5)), "no room yet; its share is 5");
        for ms in 1..250 {
            let now = t0 + Duration::from_millis(ms);
            assert!(!b.try_acquire(c(2), many, now));
            assert!(!b.take_urgent(), "the pool was the bound: no early update");
            assert!(sync_with(&mut b, &mut pool, "b", 10, now, t0).is_empty(), "nothing before the refresh");
        }
        assert_eq!(sync_with(&mut b, &mut pool, "b", 10, t0 + Duration::from_millis(250), t0).len(), 1);
    }

    #[test]
    fn cores_converge_to_fair_shares_as_calls_end_and_never_exceed_the_cap() {
        // Three cores, four campaigns, every call 40 ms, endless work; global cap 60.
        // Core 0 starts alone and takes everything; the others join at 100 ms.
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cores: Vec<LeaseCache> = (0..3).map(|_| LeaseCache::new(settings(), 0)).collect();
        let campaigns = [(c(1), 0usize), (c(2), 1), (c(3), 2), (c(4), 2)];
        let mut calls: Vec<(usize, Uuid, u64)> = Vec::new(); // (core, campaign, ends at ms)
        let mut in_use_at_end = std::collections::HashMap::new();
        for ms in 0..3000u64 {
            let now = t0 + Duration::from_millis(ms);
            calls.retain(|&(k, camp, end)| {
                if end <= ms {
                    cores[k].release(camp);
                }
                end > ms
            });
            for &(camp, k) in &campaigns {
                if ms < 100 && k != 0 {
                    continue;
                }
                while cores[k].try_acquire(camp, Ask { cap: 100, weight: 1, queued: 100 }, now) {
                    calls.push((k, camp, ms + 40));
                }
            }
            for (k, core) in cores.iter_mut().enumerate() {
                sync_with(core, &mut pool, &format!("core{k}"), 60, now, t0);
            }
            assert!(calls.len() <= 60, "{} calls up at {ms} ms over the global cap of 60", calls.len());
            if ms == 2999 {
                for &(camp, k) in &campaigns {
                    in_use_at_end.insert(camp, cores[k].in_use(camp));
                }
            }
        }
        for (camp, n) in in_use_at_end {
            assert_eq!(n, 15, "campaign {camp} holds its fair share of 60 / 4");
        }
    }

    #[test]
    fn tokens_being_given_back_are_not_handed_out() {
        // Seen in a chaos run: a core's give-back was in flight when a dial came; the dial took a
        // token the pool was handing to another core, and the two cores were over the cap.
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut a = LeaseCache::new(settings(), 0);
        a.try_acquire(c(1), ask(5), t0);
        round(&mut a, &mut pool, t0, t0);
        assert_eq!(a.available(c(1), t0), 5);
        a.set_waiting(c(1), 0);
        let idle = t0 + Duration::from_secs(3);
        let reqs = a.plan(idle);
        assert_eq!(reqs[0].want, 0, "idle: everything back");
        assert!(!a.try_acquire(c(1), ask(5), idle), "a token being given back is not handed out");
        let reply = pool.sync(3000, "a", 30_000, 1000, a.epoch(), &reqs);
        a.complete(&reqs, Ok(&reply), idle);
        let mut b = LeaseCache::new(settings(), 0);
        b.try_acquire(c(1), ask(5), idle);
        round(&mut b, &mut pool, idle, t0);
        assert!((0..5).all(|_| b.try_acquire(c(1), ask(5), idle)), "the other core gets the whole cap");
        assert_eq!(a.in_use(c(1)) + b.in_use(c(1)), 5, "never over the cap of 5");
        // A give-back that fails may still have been applied: the tokens stay given back.
        let later = idle + Duration::from_secs(1);
        a.try_acquire(c(2), ask(5), later);
        round(&mut a, &mut pool, later, t0);
        a.set_waiting(c(2), 0);
        let reqs = a.plan(later + Duration::from_secs(3));
        assert_eq!(reqs.iter().find(|r| r.campaign == c(2)).map(|r| r.want), Some(0), "idle: everything back");
        a.complete(&reqs, Err(&LimiterError::Config { key: "test", reason: "down".into() }), later);
        assert_eq!(a.available(c(2), later + Duration::from_secs(3)), 0);
    }

    #[test]
    fn idle_campaign_gives_back_its_spare_tokens_then_is_forgotten() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), ask(100), t0);
        round(&mut cache, &mut pool, t0, t0);
        assert!(cache.try_acquire(c(1), ask(100), t0));
        let later = t0 + Duration::from_secs(3);
        let reqs = round(&mut cache, &mut pool, later, t0);
        assert_eq!(reqs[0].want, 1, "keeps only what is in use");
        assert_eq!(pool.global(), 1);
        cache.release(c(1));
        round(&mut cache, &mut pool, later + Duration::from_millis(300), t0);
        assert_eq!(pool.global(), 0);
        round(&mut cache, &mut pool, later + Duration::from_millis(600), t0);
        assert_eq!(cache.totals().campaigns, 0, "an empty idle entry is dropped once the pool knows");
    }

    #[test]
    fn renews_before_expiry() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), ask(100), t0);
        round(&mut cache, &mut pool, t0, t0);
        assert!(cache.try_acquire(c(1), ask(100), t0));
        let mut t = t0;
        for _ in 0..40 {
            t += Duration::from_secs(1);
            cache.try_acquire(c(1), ask(100), t);
            cache.release(c(1));
            round(&mut cache, &mut pool, t, t0);
        }
        assert!(cache.available(c(1), t) > 0, "lease still good after 40 s thanks to refreshes");
    }

    #[test]
    fn fails_closed_when_the_backend_is_down_and_recovers() {
        let t0 = Instant::now();
        let mut pool = PoolState::default();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), ask(100), t0);
        round(&mut cache, &mut pool, t0, t0);
        // Backend down: updates fail; tokens of the unexpired lease are still handed out.
        let down = LimiterError::Unavailable(fred::error::Error::new(fred::error::ErrorKind::IO, "test"));
        assert!(cache.try_acquire(c(1), ask(100), t0 + Duration::from_secs(10)));
        cache.release(c(1));
        let mut t = t0 + Duration::from_secs(11);
        let reqs = cache.plan(t);
        assert_eq!(reqs[0].want, 11, "a refresh of the whole lease");
        cache.complete(&reqs, Err(&down), t);
        assert!(cache.try_acquire(c(1), ask(100), t));
        // Past the lease's expiry nothing is handed out.
        t = t0 + Duration::from_secs(31);
        assert!(!cache.try_acquire(c(1), ask(100), t));
        assert_eq!(cache.available(c(1), t), 0);
        assert!(cache.failing_since().is_some());
        // Back up: the next update re-establishes the lease.
        t += Duration::from_secs(1);
        let reqs = cache.plan(t);
        assert_eq!(reqs.len(), 1);
        let reply = pool.sync(t.duration_since(t0).as_millis() as u64, "h", 30_000, 1000, cache.epoch(), &reqs);
        assert!(cache.complete(&reqs, Ok(&reply), t), "tokens may be handed out again");
        assert!(cache.try_acquire(c(1), ask(100), t));
        assert!(cache.failing_since().is_none());
    }

    #[test]
    fn lowered_cap_gives_tokens_back() {
        let t0 = Instant::now();
        let mut cache = LeaseCache::new(settings(), 0);
        cache.try_acquire(c(1), ask(100), t0);
        let reqs = cache.plan(t0);
        cache.complete(
            &reqs,
            Ok(&SyncReply {
                items: vec![SyncItem { held: 10, cap: 100, target: 10 }],
                reaped: 0,
                epoch: 1,
                recovering: false,
            }),
            t0,
        );
        assert!(cache.try_acquire(c(1), ask(4), t0));
        let reqs = cache.plan(t0 + Duration::from_millis(250));
        assert_eq!(reqs[0].want, 4, "held above the new cap is given back");
        assert_eq!(reqs[0].campaign_cap, 4);
    }
}
