//! The reaper: no call stays queued or in progress for good. A call whose dispatch message or
//! outcome event was lost (a produce failure, a data plane that died before reporting, the
//! in-process bus of a crashed `dialer up`) would otherwise hold its campaign's budget, block
//! the campaign's completion and keep its number's live-call slot forever.
//!
//! Every control-plane replica may sweep; resolving goes through the recorder's transaction,
//! which locks the calls and applies an event only to the call's live attempt, so a sweep and a
//! late real event (or two sweeps) never both count. A call is resolved only when its attempt
//! cannot be up any more, so that a retry never rings a number whose first call may still be
//! up:
//! - **queued** (never reported started): the data plane dials nothing past the message's
//!   deadline (`dispatch_ttl` after the claim), and a call it dialled at the deadline with its
//!   `started` event lost lasts at most the longest call; so it is resolved
//!   `dispatch_ttl + longest call + grace` after the claim;
//! - **in progress**: `longest call + grace` after its start was recorded.
//!
//! Either is recorded as a retryable failure `unknown_outcome` of its attempt (it may have been
//! dialled): the campaign's retry policy decides, and the attempt number is used up, so its late
//! events change nothing. The embedded mode knows more at start ([`recover_embedded`]).
//!
//! The sweep also deletes the rows of a campaign whose targets' load never finished (its
//! process died mid-load; the campaign was never shown), an hour after the load began.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dialer_domain::lifecycle::{Abandoned, abandoned_event};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::scheduler::Clock;
use dialer_store::campaigns::LOAD_ABANDONED_AFTER;
use dialer_store::{LiveCall, Store, StoreError};

/// When calls count as abandoned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaperConfig {
    /// Time between sweeps.
    pub every: Duration,
    /// How long a dispatch message may wait to be dialled (the scheduler's `dispatch_ttl`).
    pub dispatch_ttl: Duration,
    /// The longest a call may last: ring timeout + maximum call length (provider settings).
    pub longest_call: Duration,
    /// Added to both waits (clock skew between machines, a recorder's lag).
    pub grace: Duration,
    /// Calls resolved per statement.
    pub batch: usize,
}

impl ReaperConfig {
    /// The reaper's timings: `[scheduler]`'s sweep, grace and dispatch deadline, and the
    /// provider's longest call.
    pub fn new(s: &crate::scheduler::SchedulerSettings, longest_call: Duration) -> ReaperConfig {
        ReaperConfig {
            every: s.reap_every,
            dispatch_ttl: s.dispatch_ttl,
            longest_call,
            grace: s.reap_grace,
            batch: 1000,
        }
    }

    /// A queued call claimed before this is abandoned.
    pub fn queued_before(&self, now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
        now - self.dispatch_ttl - self.longest_call - self.grace
    }

    /// A call whose start was recorded before this is abandoned.
    pub fn started_before(&self, now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
        now - self.longest_call - self.grace
    }
}

/// What one sweep resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub queued: u64,
    pub in_progress: u64,
    /// Of those, how many were resolved by this sweep (a late real event may have won).
    pub applied: u64,
    /// Campaign loads found unfinished [`LOAD_ABANDONED_AFTER`] after they began (their process
    /// died mid-load), their rows deleted.
    pub abandoned_loads: u64,
}

#[derive(Debug)]
pub struct Reaper {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub cfg: ReaperConfig,
    pub timeline: Option<dialer_store::timeline::CqlTimeline>,
    pub seed: u64,
}

impl Reaper {
    /// The reaper every `dialer` process runs: these timings, the system clock, `seed` for the
    /// retries' jitter.
    pub fn new(
        store: Store,
        timeline: Option<dialer_store::timeline::CqlTimeline>,
        cfg: ReaperConfig,
        seed: u64,
    ) -> Reaper {
        Reaper { store, clock: Arc::new(crate::scheduler::SystemClock), cfg, timeline, seed }
    }

    /// One sweep: resolves every abandoned call, a batch at a time.
    #[tracing::instrument(name = "reaper_sweep", skip_all, fields(reaped))]
    pub async fn sweep(&self, rng: &mut StdRng) -> Result<ReapReport, StoreError> {
        let mut report = ReapReport::default();
        loop {
            let now = self.clock.now();
            let (queued_before, started_before) = (self.cfg.queued_before(now), self.cfg.started_before(now));
            let stale = self.store.stale_calls(queued_before, started_before, self.cfg.batch).await?;
            if stale.is_empty() {
                break;
            }
            let applied = resolve(&self.store, self.timeline.as_ref(), &stale, &HashSet::new(), now, rng, 0).await?;
            count(&mut report, &stale, applied, "reaper");
            if stale.len() < self.cfg.batch {
                break;
            }
        }
        tracing::Span::current().record("reaped", report.applied);
        if report.applied > 0 {
            tracing::warn!(
                queued = report.queued,
                in_progress = report.in_progress,
                "reaped calls whose dispatch or outcome was lost: recorded as unknown_outcome, the retry policy decides"
            );
        }
        let before = self.clock.now() - chrono::TimeDelta::seconds(LOAD_ABANDONED_AFTER.as_secs() as i64);
        report.abandoned_loads = self.store.discard_abandoned_loads(before).await?;
        Ok(report)
    }

    /// Sweeps every `every` until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed_4ea9);
        let mut every = tokio::time::interval(self.cfg.every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.sweep(&mut rng).await {
                tracing::warn!(error = %e, "reaper sweep failed; retrying at the next one");
            }
        }
    }
}

fn count(report: &mut ReapReport, stale: &[LiveCall], applied: u64, by: &'static str) {
    let started = stale.iter().filter(|c| c.started).count() as u64;
    report.in_progress += started;
    report.queued += stale.len() as u64 - started;
    report.applied += applied;
    metrics::counter!("dialer_reaped_calls_total", "by" => by).increment(applied);
}

/// Records the abandoned attempts of `calls` (`dialled`: those that may have been dialled even
/// if queued); a retry is due no earlier than `retry_not_before_ms`. Returns how many applied.
async fn resolve(
    store: &Store,
    timeline: Option<&dialer_store::timeline::CqlTimeline>,
    calls: &[LiveCall],
    never_dialled: &HashSet<(Uuid, u32)>,
    now: chrono::DateTime<Utc>,
    rng: &mut StdRng,
    retry_not_before_ms: u64,
) -> Result<u64, StoreError> {
    let now_ms = now.timestamp_millis() as u64;
    let events: Vec<_> = calls
        .iter()
        .map(|c| {
            let may_have_dialled = c.started || !never_dialled.contains(&(c.id, c.attempt));
            abandoned_event(
                &Abandoned { campaign_id: c.campaign_id, call_id: c.id, attempt: c.attempt, may_have_dialled },
                now_ms,
            )
        })
        .collect();
    let mut samples = || rng.random::<f64>();
    let r = store.resolve_abandoned(&events, &mut samples, timeline, retry_not_before_ms).await?;
    metrics::counter!("dialer_dead_letters_total").increment(r.dead_letters.len() as u64);
    for (e, why) in &r.dead_letters {
        tracing::info!(call = %e.call_id, attempt = e.attempt, reason = %why, "call failed for good");
    }
    Ok(r.applied)
}

/// What [`recover_embedded`] resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Queued calls never dialled: given back, due at once.
    pub given_back: u64,
    /// Attempts that were (or may have been) dialled: `unknown_outcome`, the retry policy decides.
    pub unknown_outcome: u64,
    /// Of those, per campaign: calls that may still be up at the carrier for up to the longest
    /// call (a killed process hangs up nothing), to be counted against the caps meanwhile.
    pub may_be_up: std::collections::HashMap<Uuid, u32>,
}

/// The embedded mode's recovery at start, before anything dispatches: its bus and its calls
/// lived in the previous process, so nothing still queued or in progress will ever be reported.
/// `dialled` holds every attempt the previous run's journal recorded as started. A queued call
/// whose attempt is not in it was never dialled: given back at once. Every other one (in
/// progress, or queued with a journal record) may have been dialled: `unknown_outcome`, and its
/// retry waits `longest_call` from now, by when any call the previous process placed is over.
pub async fn recover_embedded(
    store: &Store,
    timeline: Option<&dialer_store::timeline::CqlTimeline>,
    dialled: &HashSet<(Uuid, u32)>,
    longest_call: Duration,
    seed: u64,
) -> Result<Recovery, StoreError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x04ec_07e4);
    let mut out = Recovery::default();
    let far = Utc::now() + chrono::Duration::days(365 * 100);
    loop {
        let now = Utc::now();
        let live = store.stale_calls(far, far, 1000).await?;
        if live.is_empty() {
            return Ok(out);
        }
        let never: HashSet<(Uuid, u32)> = live
            .iter()
            .filter(|c| !c.started && !dialled.contains(&(c.id, c.attempt)))
            .map(|c| (c.id, c.attempt))
            .collect();
        let not_before = (now + longest_call).timestamp_millis() as u64;
        let applied = resolve(store, timeline, &live, &never, now, &mut rng, not_before).await?;
        out.given_back += never.len() as u64;
        out.unknown_outcome += live.len() as u64 - never.len() as u64;
        for c in live.iter().filter(|c| !never.contains(&(c.id, c.attempt))) {
            *out.may_be_up.entry(c.campaign_id).or_default() += 1;
        }
        metrics::counter!("dialer_reaped_calls_total", "by" => "recovery").increment(applied);
        if applied == 0 {
            // Nothing moved (should not happen: every live call's own attempt applies).
            return Err(dialer_store::Conflict::Unresolved(live.len()).into());
        }
    }
}
