//! The pool semantics, pure: what the Redis scripts do, written once in Rust so it can be
//! unit-tested and serve as the in-process backend.
//!
//! State: a global counter, one counter per campaign, and one lease per (holder, campaign)
//! with a token count, the generation of the last update applied and an expiry. A sync item
//! says "holder H wants to hold `want` tokens of campaign C, this is update number `generation`":
//! - `generation` not newer than the lease's → duplicate or late: nothing changes. So a retried or
//!   reordered update, or a release after the lease was reaped, never moves a count below the
//!   truth.
//! - `want` ≤ held → give back the difference (both counters).
//! - `want` > held → take `min(want − held, global room, campaign room)` from both counters at
//!   once: never one without the other.
//! - the lease's expiry becomes now + ttl. Expired leases are reaped first, returning their
//!   tokens to both counters.
//! - tokens the holder reports in use are always counted (a floor under the count), even past a
//!   cap: they are calls in progress, and counting them keeps every other holder out of that room.
//!
//! Data loss (Redis restarted empty): the pool has an *epoch*, created when the first sync finds
//! none, and every reply carries it. A holder that still knows an older epoch proves the pool lost
//! its state while calls were up; that opens a *recovery window* of one lease TTL in which no
//! token beyond those reported in use is granted, so every live holder (they renew well within
//! a TTL) re-registers its calls in progress before anything new is handed out.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::fair::{CampaignDemand, campaign_shares, dither, holder_target};

/// One campaign's part of a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    pub campaign: Uuid,
    /// Tokens the holder wants to hold after this update.
    pub want: u32,
    /// Strictly increasing per holder.
    pub generation: u64,
    /// The campaign's effective cap as the holder knows it.
    pub campaign_cap: u32,
    /// Tokens of the campaign the holder has in use (calls in progress): always counted.
    pub in_use: u32,
    /// Calls in progress plus calls waiting for a token on this holder: what its fair share
    /// is computed from (see [`crate::fair`]).
    pub demand: u32,
    /// The campaign's weight under a binding global cap (0 is taken as 1).
    pub weight: u32,
}

/// The answer for one [`SyncRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncItem {
    /// Tokens the holder holds now.
    pub held: u32,
    /// The campaign cap that applied (a live override wins over the request's).
    pub cap: u32,
    /// The holder's fair share of the campaign now: it starts no call beyond it, and gives back
    /// what it holds above it as its calls end.
    pub target: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReply {
    pub items: Vec<SyncItem>,
    /// Tokens returned to the pools by reaping expired leases during this call.
    pub reaped: u32,
    /// The pool's epoch: the holder sends it back with its next sync (0 before the first reply).
    pub epoch: u64,
    /// True while the pool recovers from lost state: nothing beyond tokens in use is granted.
    pub recovering: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lease {
    count: u32,
    generation: u64,
    expires_ms: u64,
    demand: u32,
    want: u32,
}

/// A campaign's demand summed over its live leases, with the cap and weight last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Demand {
    demand: i64,
    want: i64,
    cap: u32,
    weight: u32,
}

impl Demand {
    fn view(&self) -> CampaignDemand {
        CampaignDemand {
            demand: self.demand as f64,
            want: self.want as f64,
            cap: f64::from(self.cap),
            weight: f64::from(self.weight.max(1)),
        }
    }
}

/// The whole pool.
#[derive(Clone, Debug, Default)]
pub struct PoolState {
    global: i64,
    campaigns: HashMap<Uuid, i64>,
    leases: BTreeMap<(String, Uuid), Lease>,
    /// Demand by campaign (only campaigns with a live lease that reports some).
    demands: BTreeMap<Uuid, Demand>,
    global_limit: Option<u32>,
    campaign_limits: HashMap<Uuid, u32>,
    /// 0 = none yet (a fresh or emptied pool).
    epoch: u64,
    /// The last epoch handed out; survives [`PoolState::lose_everything`] like a clock would.
    last_epoch: u64,
    recover_until_ms: Option<u64>,
}

impl PoolState {
    /// Applies a batch of updates from `holder`, which last saw the pool at `epoch` (0 = never),
    /// at `now_ms`: records each campaign's demand, computes the fair shares, then gives back
    /// or grants (up to the holder's target and both caps' room).
    pub fn sync(
        &mut self,
        now_ms: u64,
        holder: &str,
        ttl_ms: u64,
        global_cap: u32,
        epoch: u64,
        reqs: &[SyncRequest],
    ) -> SyncReply {
        let reaped = self.reap(now_ms);
        let lost = if self.epoch == 0 {
            self.last_epoch = now_ms.max(self.last_epoch + 1);
            self.epoch = self.last_epoch;
            epoch != 0
        } else {
            epoch != 0 && epoch != self.epoch
        };
        if lost && !self.recovering(now_ms) {
            self.recover_until_ms = Some(now_ms + ttl_ms);
        }
        let recovering = self.recovering(now_ms);
        let gcap = self.global_limit.unwrap_or(global_cap);
        let fresh: Vec<bool> = reqs.iter().map(|r| self.record_demand(holder, r, now_ms + ttl_ms)).collect();
        let shares = self.shares(gcap);
        let mut items = Vec::with_capacity(reqs.len());
        for (r, fresh) in reqs.iter().zip(fresh) {
            let key = (holder.to_string(), r.campaign);
            let lease = self.leases.get(&key).copied().unwrap_or_default();
            let d = self.demands.get(&r.campaign).copied().unwrap_or_default();
            let share = shares.get(&r.campaign).copied().unwrap_or(0.0);
            let dither = dither(&format!("{holder}|{}", r.campaign));
            let target = holder_target(share, &d.view(), f64::from(lease.demand), f64::from(lease.want), dither);
            let cap = self.campaign_limits.get(&r.campaign).copied().unwrap_or(r.campaign_cap);
            if !fresh {
                items.push(SyncItem { held: lease.count, cap, target });
                continue;
            }
            let count = self.apply(r, lease.count, i64::from(gcap), cap, target, recovering);
            self.leases.insert(key, Lease { count, generation: r.generation, ..lease });
            items.push(SyncItem { held: count, cap, target });
        }
        SyncReply { items, reaped, epoch: self.epoch, recovering }
    }

    /// Records a fresh request's demand on its lease and the campaign's totals; false for a
    /// duplicate or late update (generation not newer), which changes nothing.
    fn record_demand(&mut self, holder: &str, r: &SyncRequest, expires_ms: u64) -> bool {
        let key = (holder.to_string(), r.campaign);
        let old = self.leases.get(&key).copied();
        if old.is_some_and(|l| r.generation <= l.generation) {
            return false;
        }
        let old = old.unwrap_or_default();
        let want = r.want.max(r.demand);
        let d = self.demands.entry(r.campaign).or_default();
        d.demand += i64::from(r.demand) - i64::from(old.demand);
        d.want += i64::from(want) - i64::from(old.want);
        d.cap = self.campaign_limits.get(&r.campaign).copied().unwrap_or(r.campaign_cap);
        d.weight = r.weight.max(1);
        if d.demand == 0 && d.want == 0 {
            self.demands.remove(&r.campaign);
        }
        self.leases.insert(key, Lease { demand: r.demand, want, expires_ms, ..old });
        true
    }

    /// Takes a lease that is going away out of its campaign's demand.
    fn forget_demand(&mut self, campaign: Uuid, l: &Lease) {
        if let Some(d) = self.demands.get_mut(&campaign) {
            d.demand -= i64::from(l.demand);
            d.want -= i64::from(l.want);
            if d.demand <= 0 && d.want <= 0 {
                self.demands.remove(&campaign);
            }
        }
    }

    /// Every campaign's fair share of the global cap, from the demands recorded.
    fn shares(&self, global_cap: u32) -> HashMap<Uuid, f64> {
        let views: Vec<CampaignDemand> = self.demands.values().map(Demand::view).collect();
        let shares = campaign_shares(f64::from(global_cap), &views);
        self.demands.keys().copied().zip(shares).collect()
    }

    /// Moves a lease of `cur` tokens to what `r` asks for: a give-back, or a grant bounded by the
    /// holder's target and both caps' room. Returns the new count.
    fn apply(&mut self, r: &SyncRequest, cur: u32, gcap: i64, cap: u32, target: u32, recovering: bool) -> u32 {
        let ccount = self.campaigns.entry(r.campaign).or_insert(0);
        if r.want <= cur {
            let d = i64::from(cur - r.want);
            self.global -= d;
            *ccount -= d;
            return r.want;
        }
        // Calls in progress are counted first, whatever the room.
        let base = cur.max(r.in_use.min(r.want));
        let registered = i64::from(base - cur);
        self.global += registered;
        *ccount += registered;
        let grant = if recovering {
            0
        } else {
            i64::from(r.want - base)
                .min((gcap - self.global).max(0))
                .min((i64::from(cap) - *ccount).max(0))
                .min(i64::from(target.saturating_sub(base)))
        };
        self.global += grant;
        *ccount += grant;
        base + grant as u32
    }

    fn recovering(&self, now_ms: u64) -> bool {
        self.recover_until_ms.is_some_and(|u| now_ms < u)
    }

    /// Forgets everything but the clock, as a Redis restarted without persistence does (tests).
    #[doc(hidden)]
    pub fn lose_everything(&mut self) {
        *self = PoolState { last_epoch: self.last_epoch, ..PoolState::default() };
    }

    /// Returns the tokens of every lease expired at `now_ms`; how many tokens came back.
    pub fn reap(&mut self, now_ms: u64) -> u32 {
        let expired: Vec<(String, Uuid)> =
            self.leases.iter().filter(|(_, l)| l.expires_ms <= now_ms).map(|(k, _)| k.clone()).collect();
        let mut back = 0;
        for k in expired {
            if let Some(l) = self.leases.remove(&k) {
                self.global -= i64::from(l.count);
                *self.campaigns.entry(k.1).or_insert(0) -= i64::from(l.count);
                self.forget_demand(k.1, &l);
                back += l.count;
            }
        }
        back
    }

    /// Recomputes the counters from the leases; returns (global drift, sum of campaign drifts).
    pub fn reconcile(&mut self) -> (i64, i64) {
        let mut truth: HashMap<Uuid, i64> = HashMap::new();
        for ((_, c), l) in &self.leases {
            *truth.entry(*c).or_insert(0) += i64::from(l.count);
        }
        let total: i64 = truth.values().sum();
        let gdrift = self.global - total;
        let mut cdrift = 0;
        for (c, n) in &self.campaigns {
            cdrift += (n - truth.get(c).copied().unwrap_or(0)).abs();
        }
        for (c, n) in &truth {
            if !self.campaigns.contains_key(c) {
                cdrift += n.abs();
            }
        }
        self.global = total;
        self.campaigns = truth;
        let mut demands: BTreeMap<Uuid, Demand> = BTreeMap::new();
        for ((_, c), l) in &self.leases {
            let old = self.demands.get(c).copied().unwrap_or_default();
            let d = demands.entry(*c).or_insert(Demand { demand: 0, want: 0, ..old });
            d.demand += i64::from(l.demand);
            d.want += i64::from(l.want);
        }
        demands.retain(|_, d| d.demand > 0 || d.want > 0);
        self.demands = demands;
        (gdrift, cdrift)
    }

    pub fn global(&self) -> i64 {
        self.global
    }

    pub fn campaign(&self, c: Uuid) -> i64 {
        self.campaigns.get(&c).copied().unwrap_or(0)
    }

    pub fn set_global_limit(&mut self, limit: Option<u32>) {
        self.global_limit = limit;
    }

    pub fn set_campaign_limit(&mut self, c: Uuid, limit: Option<u32>) {
        match limit {
            Some(l) => self.campaign_limits.insert(c, l),
            None => self.campaign_limits.remove(&c),
        };
    }

    /// Corrupts the global counter (tests of reconciliation).
    #[doc(hidden)]
    pub fn skew_global(&mut self, by: i64) {
        self.global += by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn req(campaign: Uuid, want: u32, generation: u64, cap: u32) -> SyncRequest {
        SyncRequest { campaign, want, generation, campaign_cap: cap, in_use: 0, demand: want, weight: 1 }
    }

    #[test]
    fn a_binding_global_cap_is_shared_by_demand_not_by_who_came_first() {
        let mut p = PoolState::default();
        // a's campaign comes first and takes the whole global cap of 100.
        let r = p.sync(0, "a", 1000, 100, 0, &[req(c(1), 100, 1, 100)]);
        assert_eq!((r.items[0].held, r.items[0].target), (100, 100));
        // b's campaign arrives: its fair share is half, but there is no room yet.
        let r = p.sync(1, "b", 1000, 100, 0, &[req(c(2), 100, 1, 100)]);
        assert_eq!((r.items[0].held, r.items[0].target), (0, 50));
        // a learns its target at its next refresh and gives back what its ended calls freed.
        let r = p.sync(2, "a", 1000, 100, 0, &[SyncRequest { demand: 100, ..req(c(1), 50, 2, 100) }]);
        assert_eq!((r.items[0].held, r.items[0].target), (50, 50), "a's demand still counts");
        let r = p.sync(3, "b", 1000, 100, 0, &[req(c(2), 100, 2, 100)]);
        assert_eq!(r.items[0].held, 50, "b gets its share");
        assert_eq!(p.global(), 100);
    }

    #[test]
    fn weights_and_holders_split_the_cap() {
        let mut p = PoolState::default();
        let heavy = SyncRequest { weight: 3, ..req(c(1), 100, 1, 100) };
        p.sync(0, "a", 1000, 100, 0, &[heavy, req(c(2), 100, 2, 100)]);
        let r = p.sync(0, "a", 1000, 100, 0, &[SyncRequest { generation: 3, ..heavy }, req(c(2), 100, 4, 100)]);
        assert_eq!((r.items[0].target, r.items[1].target), (75, 25), "weights 3:1");
        // A second holder of campaign 2 with three times a's demand gets three quarters of it.
        let r = p.sync(0, "b", 1000, 100, 0, &[req(c(2), 300, 1, 100)]);
        assert_eq!(r.items[0].target, 19, "25 × 300/400, rounded up");
        let r = p.sync(0, "a", 1000, 100, 0, &[req(c(2), 100, 5, 100)]);
        assert_eq!(r.items[0].target, 7, "25 × 100/400, rounded up");
    }

    #[test]
    fn a_dead_holders_demand_goes_with_its_lease() {
        let mut p = PoolState::default();
        p.sync(0, "dead", 100, 100, 0, &[req(c(1), 100, 1, 100)]);
        let r = p.sync(0, "alive", 1000, 100, 0, &[req(c(2), 100, 1, 100)]);
        assert_eq!((r.items[0].held, r.items[0].target), (0, 50));
        let r = p.sync(150, "alive", 1000, 100, 0, &[req(c(2), 100, 2, 100)]);
        assert_eq!(r.reaped, 100);
        assert_eq!((r.items[0].held, r.items[0].target), (100, 100), "the whole cap once the lease expired");
    }

    #[test]
    fn grants_up_to_both_caps() {
        let mut p = PoolState::default();
        let r = p.sync(0, "a", 1000, 10, 0, &[req(c(1), 8, 1, 5), req(c(2), 8, 2, 100)]);
        assert_eq!(
            r.items,
            vec![SyncItem { held: 5, cap: 5, target: 5 }, SyncItem { held: 5, cap: 100, target: 5 }],
            "campaign cap, then global room"
        );
        assert_eq!((p.global(), p.campaign(c(1)), p.campaign(c(2))), (10, 5, 5));
        // Another holder finds the global pool empty.
        let r = p.sync(0, "b", 1000, 10, 0, &[req(c(3), 4, 1, 100)]);
        assert_eq!(r.items[0].held, 0);
        assert_eq!(p.campaign(c(3)), 0, "nothing taken from the campaign when the global pool is empty");
    }

    #[test]
    fn gives_back_and_ignores_stale_updates() {
        let mut p = PoolState::default();
        p.sync(0, "a", 1000, 100, 0, &[req(c(1), 10, 1, 100)]);
        p.sync(0, "a", 1000, 100, 0, &[req(c(1), 4, 2, 100)]);
        assert_eq!((p.global(), p.campaign(c(1))), (4, 4));
        // A duplicate of update 2 and a late update 1 change nothing.
        assert_eq!(p.sync(0, "a", 1000, 100, 0, &[req(c(1), 4, 2, 100)]).items[0].held, 4);
        assert_eq!(p.sync(0, "a", 1000, 100, 0, &[req(c(1), 10, 1, 100)]).items[0].held, 4);
        assert_eq!(p.global(), 4);
        p.sync(0, "a", 1000, 100, 0, &[req(c(1), 0, 3, 100)]);
        assert_eq!((p.global(), p.campaign(c(1))), (0, 0));
    }

    #[test]
    fn expired_leases_are_reaped_alone() {
        let mut p = PoolState::default();
        p.sync(0, "dead", 100, 100, 0, &[req(c(1), 7, 1, 100)]);
        p.sync(0, "alive", 1000, 100, 0, &[req(c(1), 5, 1, 100)]);
        assert_eq!(p.global(), 12);
        let r = p.sync(150, "alive", 1000, 100, 0, &[req(c(1), 5, 2, 100)]);
        assert_eq!(r.reaped, 7);
        assert_eq!((p.global(), p.campaign(c(1))), (5, 5), "only the dead holder's tokens came back");
        // A late release from the reaped holder cannot push counts below the truth.
        p.sync(160, "dead", 100, 100, 0, &[req(c(1), 0, 2, 100)]);
        assert_eq!((p.global(), p.campaign(c(1))), (5, 5));
    }

    #[test]
    fn live_limits_override_and_reconcile_fixes_drift() {
        let mut p = PoolState::default();
        p.set_campaign_limit(c(1), Some(3));
        let r = p.sync(0, "a", 1000, 100, 0, &[req(c(1), 10, 1, 50)]);
        assert_eq!(r.items[0], SyncItem { held: 3, cap: 3, target: 3 });
        p.set_global_limit(Some(4));
        assert_eq!(p.sync(0, "a", 1000, 100, 0, &[req(c(2), 10, 2, 50)]).items[0].held, 1);
        p.skew_global(5);
        assert_eq!(p.reconcile(), (5, 0));
        assert_eq!(p.global(), 4);
        assert_eq!(p.reconcile(), (0, 0));
    }

    #[test]
    fn calls_in_progress_are_counted_even_over_the_cap() {
        let mut p = PoolState::default();
        p.sync(0, "a", 1000, 100, 0, &[req(c(1), 10, 1, 10)]);
        // "b" lost its lease (reaped while it could not reach the pool) but has 4 calls up.
        let r = p.sync(0, "b", 1000, 100, 0, &[SyncRequest { in_use: 4, ..req(c(1), 6, 1, 10) }]);
        assert_eq!(r.items[0].held, 4, "its calls in progress, nothing more");
        assert_eq!(p.campaign(c(1)), 14, "the count tells the truth: 4 over the cap");
        // Nobody is granted anything until the campaign is back under its cap.
        assert_eq!(p.sync(0, "c", 1000, 100, 0, &[req(c(1), 5, 1, 10)]).items[0].held, 0);
    }

    #[test]
    fn lost_state_opens_a_recovery_window_for_calls_in_progress() {
        let mut p = PoolState::default();
        let r = p.sync(0, "a", 1000, 100, 0, &[req(c(1), 6, 1, 10)]);
        let epoch = r.epoch;
        assert!(epoch != 0 && !r.recovering, "a fresh pool creates its epoch without a window");
        p.sync(0, "b", 1000, 100, 0, &[req(c(1), 4, 1, 10)]);
        assert_eq!(p.campaign(c(1)), 10);
        // The pool loses everything while a holds 6 calls and b holds 4.
        p.lose_everything();
        // a comes first, with the old epoch: its 6 calls are counted, no more is granted.
        let r = p.sync(100, "a", 1000, 100, epoch, &[SyncRequest { in_use: 6, ..req(c(1), 10, 2, 10) }]);
        assert!(r.recovering && r.epoch != epoch, "{r:?}");
        assert_eq!(r.items[0].held, 6, "no grant beyond the calls in progress during recovery");
        // A newcomer in the window gets nothing either, and b re-registers its 4.
        assert_eq!(p.sync(200, "n", 1000, 100, 0, &[req(c(1), 5, 1, 10)]).items[0].held, 0);
        let r = p.sync(300, "b", 1000, 100, epoch, &[SyncRequest { in_use: 4, ..req(c(1), 8, 2, 10) }]);
        assert_eq!(r.items[0].held, 4);
        assert_eq!(p.campaign(c(1)), 10, "the truth again");
        // After one TTL, normal granting resumes. a's lease of t=100 has just expired and is
        // reaped; its 2 calls in progress are counted, and it is granted up to its fair share
        // of the campaign (10 × 10/23: b and the newcomer still ask for 8 and 5).
        let r = p.sync(1100, "a", 1000, 100, r.epoch, &[SyncRequest { in_use: 2, ..req(c(1), 10, 3, 10) }]);
        assert!(!r.recovering);
        assert_eq!((r.reaped, r.items[0].held, r.items[0].target), (6, 5, 5));
        let r = p.sync(1100, "b", 1000, 100, r.epoch, &[SyncRequest { in_use: 0, ..req(c(1), 0, 3, 10) }]);
        assert_eq!(r.items[0].held, 0);
        // Once the newcomer's lease has expired too, a is alone and gets the whole cap.
        assert_eq!(p.sync(1300, "a", 1000, 100, r.epoch, &[req(c(1), 10, 4, 10)]).items[0].held, 10);
    }
}
