//! The telephony boundary: the [`Provider`] trait, the seed's mock provider, and the independent
//! concurrency [`Tracker`] that tests and benches read to prove the caps held.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dialer_domain::messages::DispatchMessage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::ProviderSettings;

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered after `answered_after`, then talked until hang-up `duration` after dialing;
    /// `media`: what the call's media plan came to (who answered, keys, voicemail).
    Completed { answered_after: Duration, duration: Duration, media: Option<Box<dialer_domain::media::MediaResult>> },
    /// Not connected: `reason` is the outcome's name ([`dialer_domain::outcome::Outcome`]).
    Failed {
        reason: &'static str,
        retryable: bool,
        after: Duration,
        /// The SIP final response behind it (SIP provider only).
        sip: Option<Box<dialer_domain::messages::SipDetail>>,
    },
}

/// A future for one call, owned by the shard that placed it.
pub type CallFuture = Pin<Box<dyn Future<Output = CallOutcome>>>;

/// A placed call, as the shard tracks it.
pub enum Placed {
    /// The outcome comes when the future resolves (a provider that waits on the network).
    Pending(CallFuture),
    /// The provider knows the outcome and when the call ends (the mock): the shard keeps such
    /// calls in its own timer heap, with no future and no timer of their own.
    Scheduled {
        after: Duration,
        outcome: CallOutcome,
        /// Dropped when the call ends (the mock's tracker counts the call down).
        end: CallEnd,
    },
}

/// Places calls. One instance per shard (no lock shared across cores); the future must not
/// borrow the provider.
pub trait Provider {
    fn place_call(&self, msg: &DispatchMessage) -> CallFuture;

    /// Places a call the way the shard tracks it; by default through [`Provider::place_call`].
    fn place(&self, msg: &DispatchMessage) -> Placed {
        Placed::Pending(self.place_call(msg))
    }
}

const RETRYABLE: [&str; 3] = ["busy", "no_answer", "failed"];
const FINAL: [&str; 2] = ["invalid_number", "rejected"];

/// Calls in progress as the far end sees them, per campaign and in all, independent of the
/// limiter. Counters are atomics shared by all shards (a test instrument, like a carrier's view).
#[derive(Debug, Default)]
pub struct Tracker {
    global_cap: AtomicU64,
    global: Counter,
    campaigns: RwLock<HashMap<Uuid, Arc<Counter>>>,
    caps: RwLock<HashMap<Uuid, u32>>,
    violations: AtomicU64,
    calls: AtomicU64,
    /// Optional ledger file: one line per call placed, written with one `write` on an
    /// `O_APPEND` file, so it survives the process being killed (fault runs check it).
    ledger: Option<std::fs::File>,
}

#[derive(Debug, Default)]
pub struct Counter {
    cur: AtomicI64,
    max: AtomicI64,
}

impl Counter {
    fn start(&self) -> i64 {
        let n = self.cur.fetch_add(1, Ordering::AcqRel) + 1;
        self.max.fetch_max(n, Ordering::AcqRel);
        n
    }
    fn end(&self) {
        self.cur.fetch_sub(1, Ordering::AcqRel);
    }
    pub fn current(&self) -> i64 {
        self.cur.load(Ordering::Acquire)
    }
    pub fn max(&self) -> i64 {
        self.max.load(Ordering::Acquire)
    }
}

impl Tracker {
    /// A tracker that counts a violation whenever more than `global_cap` calls are up at once.
    pub fn new(global_cap: u32) -> Arc<Tracker> {
        let t = Tracker::default();
        t.global_cap.store(u64::from(global_cap), Ordering::Relaxed);
        Arc::new(t)
    }

    /// A tracker that also appends every call placed to `path` as
    /// `<call id> <attempt> <campaign id> <start µs> <planned end µs>` (the carrier's view: a
    /// call goes on until its planned end even if the dialer dies), for checks across processes.
    pub fn with_ledger(global_cap: u32, path: &std::path::Path) -> std::io::Result<Arc<Tracker>> {
        let t = Tracker {
            ledger: Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
            ..Tracker::default()
        };
        t.global_cap.store(u64::from(global_cap), Ordering::Relaxed);
        Ok(Arc::new(t))
    }

    fn record(&self, msg: &DispatchMessage, wait: Duration) {
        if let Some(mut f) = self.ledger.as_ref() {
            use std::io::Write;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            let line = format!(
                "{} {} {} {} {}\n",
                msg.call_id,
                msg.attempt,
                msg.campaign_id,
                now,
                now + wait.as_micros() as u64
            );
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::error!(error = %e, "provider ledger not written");
            }
        }
    }

    /// The cap a campaign's calls must stay under (checked on every call start).
    pub fn set_campaign_cap(&self, campaign: Uuid, cap: u32) {
        self.caps.write().unwrap_or_else(|p| p.into_inner()).insert(campaign, cap);
    }

    fn counter(&self, campaign: Uuid) -> (Arc<Counter>, Option<u32>) {
        let cap = self.caps.read().unwrap_or_else(|p| p.into_inner()).get(&campaign).copied();
        if let Some(c) = self.campaigns.read().unwrap_or_else(|p| p.into_inner()).get(&campaign) {
            return (c.clone(), cap);
        }
        let mut w = self.campaigns.write().unwrap_or_else(|p| p.into_inner());
        (w.entry(campaign).or_default().clone(), cap)
    }

    pub fn global(&self) -> &Counter {
        &self.global
    }

    /// Highest number of simultaneous calls of `campaign` seen.
    pub fn campaign_max(&self, campaign: Uuid) -> i64 {
        self.campaigns.read().unwrap_or_else(|p| p.into_inner()).get(&campaign).map_or(0, |c| c.max())
    }

    pub fn campaign_current(&self, campaign: Uuid) -> i64 {
        self.campaigns.read().unwrap_or_else(|p| p.into_inner()).get(&campaign).map_or(0, |c| c.current())
    }

    /// Call starts that found a cap already full.
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Acquire)
    }

    /// Calls placed in all.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Acquire)
    }
}

/// Marks a call up in the tracker until dropped (also when the call's future is cancelled).
pub struct CallEnd {
    campaign: Arc<Counter>,
    tracker: Arc<Tracker>,
}

impl std::fmt::Debug for CallEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallEnd")
    }
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placed::Pending(_) => f.write_str("Placed::Pending"),
            Placed::Scheduled { after, outcome, .. } => {
                f.debug_struct("Placed::Scheduled").field("after", after).field("outcome", outcome).finish()
            }
        }
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        self.campaign.end();
        self.tracker.global.end();
    }
}

type CampaignCounter = (Arc<Counter>, Option<u32>);

/// The mock provider for one shard: its own random generator, the shared tracker.
#[derive(Debug)]
pub struct MockProvider {
    settings: ProviderSettings,
    rng: RefCell<StdRng>,
    tracker: Arc<Tracker>,
    /// This shard's view of the tracker's counters and caps (filled on a campaign's first call).
    counters: RefCell<HashMap<Uuid, CampaignCounter>>,
}

impl MockProvider {
    /// The provider of shard `shard`; its random stream is fixed by the settings' seed.
    pub fn new(settings: ProviderSettings, tracker: Arc<Tracker>, shard: usize) -> MockProvider {
        let rng = StdRng::seed_from_u64(settings.seed.wrapping_mul(1_000_003).wrapping_add(shard as u64));
        MockProvider { settings, rng: RefCell::new(rng), tracker, counters: RefCell::new(HashMap::new()) }
    }

    fn draw(&self) -> CallOutcome {
        let s = &self.settings;
        let mut rng = self.rng.borrow_mut();
        let dur = |rng: &mut StdRng| {
            let (lo, hi) = (s.min_call.as_micros() as u64, s.max_call.as_micros() as u64);
            Duration::from_micros(if hi > lo { rng.random_range(lo..=hi) } else { lo })
        };
        if rng.random_bool(s.answer_rate.clamp(0.0, 1.0)) {
            let duration = dur(&mut rng);
            let ring = s.max_ring.min(duration).as_micros() as u64;
            let answered_after = Duration::from_micros(if ring > 0 { rng.random_range(0..=ring) } else { 0 });
            CallOutcome::Completed { answered_after, duration, media: None }
        } else {
            let after = dur(&mut rng);
            if rng.random_bool(s.retryable_share.clamp(0.0, 1.0)) {
                CallOutcome::Failed {
                    reason: RETRYABLE[rng.random_range(0..RETRYABLE.len())],
                    retryable: true,
                    after,
                    sip: None,
                }
            } else {
                CallOutcome::Failed {
                    reason: FINAL[rng.random_range(0..FINAL.len())],
                    retryable: false,
                    after,
                    sip: None,
                }
            }
        }
    }
}

impl Provider for MockProvider {
    fn place_call(&self, msg: &DispatchMessage) -> CallFuture {
        match self.place(msg) {
            Placed::Scheduled { after, outcome, end } => Box::pin(async move {
                let _end = end;
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                outcome
            }),
            Placed::Pending(f) => f,
        }
    }

    fn place(&self, msg: &DispatchMessage) -> Placed {
        let (counter, cap) = self
            .counters
            .borrow_mut()
            .entry(msg.campaign_id)
            .or_insert_with(|| self.tracker.counter(msg.campaign_id))
            .clone();
        let t = &self.tracker;
        t.calls.fetch_add(1, Ordering::Relaxed);
        let g = t.global.start();
        let c = counter.start();
        if g > t.global_cap.load(Ordering::Relaxed) as i64 || cap.is_some_and(|cap| c > i64::from(cap)) {
            t.violations.fetch_add(1, Ordering::Relaxed);
        }
        let end = CallEnd { campaign: counter, tracker: t.clone() };
        let mut outcome = self.draw();
        if let (CallOutcome::Completed { media, .. }, Some(plan)) =
            (&mut outcome, msg.telephony.as_deref().and_then(|t| t.media.as_ref()))
        {
            *media = Some(Box::new(crate::mock_media::draw(plan, &mut *self.rng.borrow_mut())));
        }
        let wait = match &outcome {
            CallOutcome::Completed { duration, .. } => *duration,
            CallOutcome::Failed { after, .. } => *after,
        };
        t.record(msg, wait);
        Placed::Scheduled { after: wait, outcome, end }
    }
}

/// A provider whose calls each wait on a future, as a provider on the network does (a SIP
/// dialog, an HTTP request): it wraps another provider and hands the shard that provider's
/// calls as [`Placed::Pending`] futures. The tests run shards through it, so the path a real
/// provider takes (the shard's `FuturesUnordered` of calls) is exercised as well as the mock's
/// timer heap.
#[derive(Debug)]
pub struct OverNetwork<P>(pub P);

impl<P: Provider> Provider for OverNetwork<P> {
    fn place_call(&self, msg: &DispatchMessage) -> CallFuture {
        self.0.place_call(msg)
    }
}

#[cfg(test)]
mod tests {
    use dialer_testkit::fixtures::Dispatch;

    use super::*;

    fn msg(c: u128) -> DispatchMessage {
        Dispatch::call(9).campaign(Uuid::from_u128(c)).number("+15555550001").build()
    }

    #[test]
    fn outcome_mix_follows_the_seed() {
        let p = MockProvider::new(ProviderSettings::default(), Tracker::new(u32::MAX), 0);
        let n = 20_000;
        let (mut answered, mut retryable, mut failed) = (0, 0, 0);
        for _ in 0..n {
            match p.draw() {
                CallOutcome::Completed { duration, answered_after, .. } => {
                    answered += 1;
                    assert!(duration >= Duration::from_secs(1) && duration <= Duration::from_secs(5));
                    assert!(answered_after <= duration);
                }
                CallOutcome::Failed { retryable: r, .. } => {
                    failed += 1;
                    retryable += usize::from(r);
                }
            }
        }
        let rate = answered as f64 / n as f64;
        assert!((rate - 0.8).abs() < 0.02, "answer rate {rate}");
        let share = retryable as f64 / failed as f64;
        assert!((share - 0.7).abs() < 0.04, "retryable share {share}");
    }

    #[test]
    fn same_seed_same_outcomes() {
        let a = MockProvider::new(ProviderSettings::default(), Tracker::new(10), 3);
        let b = MockProvider::new(ProviderSettings::default(), Tracker::new(10), 3);
        for _ in 0..100 {
            assert_eq!(a.draw(), b.draw());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tracker_counts_calls_up_and_flags_violations() {
        let t = Tracker::new(2);
        t.set_campaign_cap(Uuid::from_u128(1), 1);
        let p = MockProvider::new(
            ProviderSettings {
                min_call: Duration::from_millis(10),
                max_call: Duration::from_millis(10),
                ..Default::default()
            },
            t.clone(),
            0,
        );
        let a = p.place_call(&msg(1));
        assert_eq!((t.global().current(), t.violations()), (1, 0));
        let b = p.place_call(&msg(1));
        assert_eq!(t.violations(), 1, "second call of a campaign capped at 1");
        let c = p.place_call(&msg(2));
        assert_eq!(t.violations(), 2, "third call over the global cap of 2");
        a.await;
        drop(b);
        c.await;
        assert_eq!(t.global().current(), 0, "ended and cancelled calls are down");
        assert_eq!((t.global().max(), t.campaign_max(Uuid::from_u128(1))), (3, 2));
    }
}
