//! Calls in progress as the far end sees them (the provider's tracker, shared by every core and
//! data plane of the run), sampled every few milliseconds and time-averaged: in all, against the
//! global cap, and per campaign over fixed windows, against each campaign's max-min fair share
//! (the same [`dialer_limiter::fair`] division the limiter makes, from the demand the bench
//! offers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dialer_dataplane::Tracker;
use dialer_limiter::fair::{CampaignDemand, campaign_shares};
use uuid::Uuid;

/// How often the tracker is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// Time-averaged calls in progress over a run.
#[derive(Debug, Default)]
pub struct Occupancy {
    /// Mean calls in progress in all.
    pub global: f64,
    /// Per window (`window` long), each campaign's mean calls in progress.
    pub windows: Vec<Vec<f64>>,
}

/// Samples `tracker` every [`SAMPLE_EVERY`] until `stop`, closing a per-campaign window every
/// `window` (a last partial window counts if it is at least half as long).
pub fn sample(
    tracker: Arc<Tracker>,
    campaigns: Vec<Uuid>,
    window: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Occupancy> {
    std::thread::spawn(move || {
        let mut out = Occupancy::default();
        let (mut total, mut samples) = (0i64, 0u64);
        let (mut sums, mut in_window, mut opened) = (vec![0i64; campaigns.len()], 0u64, Instant::now());
        while !stop.load(Ordering::Relaxed) {
            total += tracker.global().current();
            samples += 1;
            for (sum, c) in sums.iter_mut().zip(&campaigns) {
                *sum += tracker.campaign_current(*c);
            }
            in_window += 1;
            if opened.elapsed() >= window {
                out.windows.push(sums.iter().map(|s| *s as f64 / in_window as f64).collect());
                (sums, in_window, opened) = (vec![0; campaigns.len()], 0, Instant::now());
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        if opened.elapsed() * 2 >= window && in_window > 0 {
            out.windows.push(sums.iter().map(|s| *s as f64 / in_window as f64).collect());
        }
        out.global = total as f64 / samples.max(1) as f64;
        out
    })
}

/// Each campaign's fair share of `global_cap`, given the calls it keeps outstanding (in progress
/// or waiting: its demand) and its cap.
pub fn fair_shares(global_cap: u32, demand: &[u64], cap: u32) -> Vec<f64> {
    let campaigns: Vec<CampaignDemand> = demand
        .iter()
        .map(|&d| CampaignDemand { demand: d as f64, want: d as f64, cap: f64::from(cap), weight: 1.0 })
        .collect();
    campaign_shares(f64::from(global_cap), &campaigns)
}

/// How far the campaigns were from their fair shares: the worst relative deviation over every
/// window (0.05 = 5 %), and how many (campaign, window) pairs were off by more than `tolerance`.
pub fn fairness(windows: &[Vec<f64>], shares: &[f64], tolerance: f64) -> (f64, usize) {
    let mut worst: f64 = 0.0;
    let mut outside = 0;
    for w in windows {
        for (got, share) in w.iter().zip(shares) {
            if *share <= 0.0 {
                continue;
            }
            let dev = (got - share).abs() / share;
            worst = worst.max(dev);
            outside += usize::from(dev > tolerance);
        }
    }
    (worst, outside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_demand_and_caps() {
        let s = fair_shares(100, &[5, 1000, 1000], 60);
        assert_eq!(s, vec![5.0, 47.5, 47.5]);
        let s = fair_shares(1000, &[50; 4], 20);
        assert_eq!(s, vec![20.0; 4], "caps bound when the global cap does not");
    }

    #[test]
    fn fairness_reports_the_worst_window() {
        let windows = vec![vec![10.0, 9.5], vec![11.5, 10.0]];
        let (worst, outside) = fairness(&windows, &[10.0, 10.0], 0.1);
        assert!((worst - 0.15).abs() < 1e-9);
        assert_eq!(outside, 1);
    }
}
