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
}

/// The answer for one [`SyncRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncItem {
    /// Tokens the holder holds now.
    pub held: u32,
    /// The campaign cap that applied (a live override wins over the request's).
    pub cap: u32,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease {
    count: u32,
    generation: u64,
    expires_ms: u64,
}

/// The whole pool.
#[derive(Clone, Debug, Default)]
pub struct PoolState {
    global: i64,
    campaigns: HashMap<Uuid, i64>,
    leases: BTreeMap<(String, Uuid), Lease>,
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
    /// at `now_ms`.
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
        let gcap = i64::from(self.global_limit.unwrap_or(global_cap));
        let mut items = Vec::with_capacity(reqs.len());
        for r in reqs {
            let cap = self.campaign_limits.get(&r.campaign).copied().unwrap_or(r.campaign_cap);
            let key = (holder.to_string(), r.campaign);
            let lease = self.leases.get(&key).copied();
            if let Some(l) = lease.filter(|l| r.generation <= l.generation) {
                items.push(SyncItem { held: l.count, cap });
                continue;
            }
            let cur = lease.map_or(0, |l| l.count);
            let ccount = self.campaigns.entry(r.campaign).or_insert(0);
            let count = if r.want <= cur {
                let d = i64::from(cur - r.want);
                self.global -= d;
                *ccount -= d;
                r.want
            } else {
                // Calls in progress are counted first, whatever the room.
                let base = cur.max(r.in_use.min(r.want));
                let registered = i64::from(base - cur);
                self.global += registered;
                *ccount += registered;
                let grant = if recovering {
                    0
                } else {
                    i64::from(r.want - base).min((gcap - self.global).max(0)).min((i64::from(cap) - *ccount).max(0))
                };
                self.global += grant;
                *ccount += grant;
                base + grant as u32
            };
            self.leases.insert(key, Lease { count, generation: r.generation, expires_ms: now_ms + ttl_ms });
            items.push(SyncItem { held: count, cap });
        }
        SyncReply { items, reaped, epoch: self.epoch, recovering }
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
        SyncRequest { campaign, want, generation, campaign_cap: cap, in_use: 0 }
    }

    #[test]
    fn grants_up_to_both_caps() {
        let mut p = PoolState::default();
        let r = p.sync(0, "a", 1000, 10, 0, &[req(c(1), 8, 1, 5), req(c(2), 8, 2, 100)]);
        assert_eq!(
            r.items,
            vec![SyncItem { held: 5, cap: 5 }, SyncItem { held: 5, cap: 100 }],
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
        assert_eq!(r.items[0], SyncItem { held: 3, cap: 3 });
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
        // reaped; its 2 calls in progress are counted and the room left (10 - 4 - 2) granted.
        let r = p.sync(1100, "a", 1000, 100, r.epoch, &[SyncRequest { in_use: 2, ..req(c(1), 10, 3, 10) }]);
        assert!(!r.recovering);
        assert_eq!((r.reaped, r.items[0].held), (6, 6));
        let r = p.sync(1100, "b", 1000, 100, r.epoch, &[SyncRequest { in_use: 0, ..req(c(1), 0, 3, 10) }]);
        assert_eq!(r.items[0].held, 0);
        assert_eq!(p.sync(1100, "a", 1000, 100, r.epoch, &[req(c(1), 10, 4, 10)]).items[0].held, 10);
    }
}
