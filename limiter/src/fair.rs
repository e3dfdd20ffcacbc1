//! Demand-driven fair shares, pure (the Doorman idea: holders report what they want, the pool
//! computes shares and grants leases up to them; `sync.lua` mirrors this file line for line).
//!
//! Two levels, each max-min fair:
//! - **Campaigns share the global cap.** Each campaign claims `min(cap, demand)` first, weighted
//!   by its `weight`; what is left of the global cap then goes, the same way, to headroom (spare
//!   tokens a holder keeps so that a new message starts without a round trip). So headroom is
//!   only ever handed out when every campaign's demand is met: under a binding cap, shares
//!   follow demand alone.
//! - **A campaign's share is split across its holders** (cores) in proportion to their demand,
//!   and, beyond the campaign's demand, in proportion to their headroom.
//!
//! Demand is what a holder could start now: calls in progress plus messages waiting for a token.
//! Shares are real numbers; a holder's *target* is its share rounded to whole tokens with a
//! fixed dither per lease (a hash of `holder|campaign`): unbiased, so a campaign's targets sum to
//! its share on average (rounding every holder up would give a campaign split over two cores up
//! to two tokens more than its share, and another campaign less); a holder with any share gets at
//! least one token.
//! Targets are ceilings for grants, never a reason to cut a call: a holder above its target
//! starts nothing new and gives tokens back as its calls end.

/// One campaign as the pool sees it, summed over its live leases.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CampaignDemand {
    /// Calls in progress plus calls waiting, over all holders.
    pub demand: f64,
    /// Demand plus the headroom the holders would like (≥ `demand`).
    pub want: f64,
    /// The campaign's effective cap.
    pub cap: f64,
    /// Relative weight under a binding global cap (≥ 1).
    pub weight: f64,
}

/// Max-min fair division of `total` over claims of `(bound, weight)` (water-filling): each claim
/// gets `min(bound, weight × level)` for the one level at which the shares sum to `total`, or its
/// whole bound when the bounds sum to less.
pub fn waterfill(total: f64, claims: &[(f64, f64)]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..claims.len()).filter(|&i| claims[i].0 > 0.0).collect();
    order.sort_by(|&a, &b| (claims[a].0 / claims[a].1).total_cmp(&(claims[b].0 / claims[b].1)));
    let mut shares = vec![0.0; claims.len()];
    let mut weights: f64 = order.iter().map(|&i| claims[i].1).sum();
    let mut left = total.max(0.0);
    for i in order {
        let (bound, weight) = claims[i];
        let level = left / weights;
        shares[i] = if bound / weight <= level { bound } else { weight * level };
        left -= shares[i];
        weights -= weight;
    }
    shares
}

/// What a campaign claims of the global cap: `min(cap, demand)` in the first round, then headroom up
/// to `min(cap, want)` in the second (the bounds [`campaign_shares`] fills).
pub fn claim(c: &CampaignDemand) -> f64 {
    let first = c.cap.min(c.demand);
    first.max(0.0) + (c.cap.min(c.want) - first).max(0.0)
}

/// The shares when every campaign's claim fits under `global_cap`: each campaign's claim, exactly
/// what both rounds of water-filling give then (each claim in full; whole numbers are exact in
/// doubles). The pool keeps the sum of the claims, so a sync that fits costs its own requests, not
/// the number of campaigns (`shares_of` in `reap.lua`). `None` when the cap binds.
pub fn shares_fit(global_cap: f64, campaigns: &[CampaignDemand]) -> Option<Vec<f64>> {
    let claims: Vec<f64> = campaigns.iter().map(claim).collect();
    (claims.iter().sum::<f64>() <= global_cap).then_some(claims)
}

/// Each campaign's share of `global_cap`: demand first, then headroom, both max-min fair by weight.
pub fn campaign_shares(global_cap: f64, campaigns: &[CampaignDemand]) -> Vec<f64> {
    if let Some(claims) = shares_fit(global_cap, campaigns) {
        return claims;
    }
    let first: Vec<(f64, f64)> = campaigns.iter().map(|c| (c.cap.min(c.demand), c.weight)).collect();
    let shares = waterfill(global_cap, &first);
    let left = global_cap - shares.iter().sum::<f64>();
    let headroom: Vec<(f64, f64)> =
        campaigns.iter().zip(&first).map(|(c, f)| ((c.cap.min(c.want) - f.0).max(0.0), c.weight)).collect();
    let extra = waterfill(left, &headroom);
    shares.iter().zip(extra).map(|(s, e)| s + e).collect()
}

/// A holder's target in a campaign whose share is `share`, given the holder's demand and want
/// and the campaign's totals of both, rounded with the lease's `dither` ([`dither`]).
pub fn holder_target(share: f64, campaign: &CampaignDemand, demand: f64, want: f64, dither: f64) -> u32 {
    let t = if share <= campaign.demand {
        if campaign.demand > 0.0 { share * demand / campaign.demand } else { 0.0 }
    } else {
        let room = campaign.want - campaign.demand;
        let extra = if room > 0.0 { (share - campaign.demand) * (want - demand) / room } else { 0.0 };
        demand + extra
    };
    round_dithered(t, dither)
}

/// The rounding offset of lease `member` (`holder|campaign`) in [0, 1): a polynomial hash of its
/// bytes, computed the same way in Lua (exact in doubles: every value stays below 2^53).
pub fn dither(member: &str) -> f64 {
    const M: u64 = 1_000_003;
    let h = member.bytes().fold(0u64, |h, b| (h * 31 + u64::from(b)) % M);
    h as f64 / M as f64
}

/// `x` rounded down after adding `dither`; at least 1 when `x` is above 0.
pub fn round_dithered(x: f64, dither: f64) -> u32 {
    if x <= 1e-9 {
        return 0;
    }
    (x + dither + 1e-9).floor().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// Rounds a share up to whole tokens, ignoring floating-point noise (Lua does the same).
pub fn round_up(x: f64) -> u32 {
    (x - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(demand: f64, want: f64, cap: f64, weight: f64) -> CampaignDemand {
        CampaignDemand { demand, want, cap, weight }
    }

    #[test]
    fn waterfill_gives_small_claims_all_and_splits_the_rest() {
        let s = waterfill(100.0, &[(10.0, 1.0), (200.0, 1.0), (200.0, 1.0)]);
        assert_eq!(s, vec![10.0, 45.0, 45.0]);
        let s = waterfill(100.0, &[(10.0, 1.0), (20.0, 1.0)]);
        assert_eq!(s, vec![10.0, 20.0], "bounds below the total are met whole");
        let s = waterfill(90.0, &[(100.0, 2.0), (100.0, 1.0), (0.0, 1.0)]);
        assert_eq!(s, vec![60.0, 30.0, 0.0], "weights 2:1; no demand, no share");
        assert_eq!(waterfill(0.0, &[(5.0, 1.0)]), vec![0.0]);
    }

    #[test]
    fn headroom_only_once_every_demand_is_met() {
        // Binding: 3 campaigns want 50 each (demand 40) under a global cap of 90.
        let s = campaign_shares(90.0, &[c(40.0, 50.0, 100.0, 1.0); 3]);
        assert_eq!(s, vec![30.0; 3]);
        // Not binding: demand 40 each, 30 left over for headroom, 10 each.
        let s = campaign_shares(150.0, &[c(40.0, 50.0, 100.0, 1.0); 3]);
        assert_eq!(s, vec![50.0; 3]);
        // The campaign cap bounds both tiers.
        let s = campaign_shares(1000.0, &[c(40.0, 80.0, 50.0, 1.0), c(5.0, 10.0, 100.0, 1.0)]);
        assert_eq!(s, vec![50.0, 10.0]);
    }

    /// The water-filling of both rounds, without the shortcut.
    fn filled(global_cap: f64, campaigns: &[CampaignDemand]) -> Vec<f64> {
        let first: Vec<(f64, f64)> = campaigns.iter().map(|c| (c.cap.min(c.demand), c.weight)).collect();
        let shares = waterfill(global_cap, &first);
        let left = global_cap - shares.iter().sum::<f64>();
        let headroom: Vec<(f64, f64)> =
            campaigns.iter().zip(&first).map(|(c, f)| ((c.cap.min(c.want) - f.0).max(0.0), c.weight)).collect();
        shares.iter().zip(waterfill(left, &headroom)).map(|(s, e)| s + e).collect()
    }

    #[test]
    fn claims_that_fit_are_the_shares_water_filling_gives_exactly() {
        // A small generator (no dependency): whole demands, wants, caps and weights as the pool
        // keeps them, a negative demand among them (a drift a reconcile has not fixed yet).
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m) as f64
        };
        let (mut fit, mut bound) = (0, 0);
        for _ in 0..2_000 {
            let n = 1 + next(40) as usize;
            let cs: Vec<CampaignDemand> = (0..n)
                .map(|_| {
                    let demand = next(60) - 2.0;
                    c(demand, demand.max(0.0) + next(30), next(50), 1.0 + next(4))
                })
                .collect();
            let gcap = next(2_000);
            match shares_fit(gcap, &cs) {
                Some(s) => {
                    fit += 1;
                    assert_eq!(s, filled(gcap, &cs), "{cs:?} under {gcap}");
                }
                None => {
                    bound += 1;
                    assert_eq!(campaign_shares(gcap, &cs), filled(gcap, &cs));
                }
            }
        }
        assert!(fit > 100 && bound > 100, "both cases drawn: {fit} fit, {bound} bound");
    }

    #[test]
    fn hot_and_cold_campaigns_get_max_min_fair_shares() {
        // 90 cold campaigns need 8 each, 10 hot ones need 80 each; the global cap is 1000.
        let mut all = vec![c(8.0, 8.0, 100.0, 1.0); 90];
        all.extend(vec![c(80.0, 80.0, 100.0, 1.0); 10]);
        let s = campaign_shares(1000.0, &all);
        assert!(s[..90].iter().all(|&x| x == 8.0), "cold ones get their demand");
        assert!(s[90..].iter().all(|&x| (x - 28.0).abs() < 1e-9), "hot ones split the rest: {}", s[95]);
        assert!((s.iter().sum::<f64>() - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn holders_split_a_campaign_by_demand() {
        let camp = c(30.0, 60.0, 100.0, 1.0);
        // Share below demand: proportional to demand (6.67 and 13.33), rounded with the dither.
        assert_eq!(holder_target(20.0, &camp, 10.0, 20.0, 0.2), 6);
        assert_eq!(holder_target(20.0, &camp, 10.0, 20.0, 0.5), 7);
        assert_eq!(holder_target(20.0, &camp, 20.0, 40.0, 0.5), 13);
        // Share above demand: demand plus a part of the headroom.
        assert_eq!(holder_target(45.0, &camp, 10.0, 20.0, 0.9), 15);
        assert_eq!(holder_target(45.0, &camp, 20.0, 40.0, 0.0), 30);
        // No demand at all: nothing; any share at all: at least one token.
        assert_eq!(holder_target(0.0, &c(0.0, 0.0, 10.0, 1.0), 0.0, 0.0, 0.9), 0);
        assert_eq!(round_dithered(0.2, 0.0), 1);
        assert_eq!(round_dithered(9.999_999_999_9, 0.0), 10, "noise does not cost a token");
    }

    #[test]
    fn dithered_targets_sum_to_the_share_on_average() {
        // 1000 campaigns, each split over two holders 37:63 of a share of 10 (3.7 and 6.3).
        let camp = c(100.0, 100.0, 100.0, 1.0);
        let total: u32 = (0..1000)
            .map(|i| {
                let (a, b) = (dither(&format!("core-a|{i}")), dither(&format!("core-b|{i}")));
                holder_target(10.0, &camp, 37.0, 37.0, a) + holder_target(10.0, &camp, 63.0, 63.0, b)
            })
            .sum();
        assert!((9_900..=10_100).contains(&total), "{total} tokens for 1000 shares of 10");
        assert!((0.0..1.0).contains(&dither("x|y")));
    }
}
