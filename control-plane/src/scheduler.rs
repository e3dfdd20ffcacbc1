//! The scheduler: every tick, for each in-progress campaign whose business hours are open now in
//! its time zone, claims due calls (retries and new calls side by side) and publishes them to the
//! dispatch topic. It never floods: queued-but-not-finished calls of a campaign stay under
//! `inflight_factor × share`, where the share is what the campaign can actually get: its cap,
//! or, when the global cap binds, its max-min fair share of it by demand and weight (the same
//! division the limiter makes, [`dialer_limiter::fair`]). So messages do not pile up in the data
//! plane waiting for tokens their campaign will not get, and a campaign whose share grows gets
//! work at the next tick. Claims are atomic (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several
//! replicas never queue one call twice. A campaign whose every call is terminal completes.
//!
//! A claim commits before its messages are published: a control plane that dies in between (or a
//! delivery in doubt) leaves calls queued with no message. Any replica's tick publishes such
//! calls again once they are `republish_after` old (same attempt and deadline, kept with the
//! call), so their campaigns do not stall until the reaper; the shards' journals dial an attempt
//! once however many messages of it come.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dialer_bus::dispatch::{DispatchSink, PublishError};
use dialer_domain::duration::{millis, secs};
use dialer_domain::hours::{BusinessHours, parse_tz};
use dialer_domain::messages::{DispatchMessage, SCHEMA_VERSION};
use dialer_domain::rules::CallingRules;
use dialer_limiter::LimitSettings;
use dialer_limiter::fair::{CampaignDemand, campaign_shares, round_up};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use dialer_store::{ActiveCampaign, ClaimJob, ClaimedCall, Store, StoreError, UnconfirmedClaim};
use uuid::Uuid;

/// Where "now" comes from (tests drive business hours with a [`ManualClock`]).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(at)))
    }
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The scheduler's pacing, and the reaper's and recorders' timings (`[scheduler]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Time between ticks.
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    /// Queued + dialing calls of a campaign stay under this many times its share.
    pub inflight_factor: u32,
    /// Most calls claimed for one campaign in one tick.
    pub max_batch: usize,
    /// Claims (each a transaction and a publish that waits for the broker's acknowledgement)
    /// run side by side in a tick. Campaigns are claimed in groups, one claim for many small
    /// campaigns (about this many groups; at most `max_batch` calls each), so that a tick of a
    /// thousand campaigns is a few claims, not a thousand.
    pub claim_concurrency: usize,
    /// A dispatched call not dialled within this long expires and is claimed again later.
    #[serde(rename = "dispatch_ttl_sec", with = "secs")]
    pub dispatch_ttl: Duration,
    /// A call still queued this long after its claim (its messages may never have reached the
    /// broker: a control plane killed between the claim's commit and the broker's
    /// acknowledgement, or a delivery in doubt) is published again, same attempt and deadline,
    /// and again every as long while its deadline lasts until the broker acknowledges one of
    /// these publishes; the data plane dials an attempt once
    /// however many of its messages come. 0 = never (the reaper resolves such calls after
    /// `dispatch_ttl` + the longest call + `reap_grace`). Kafka bus only.
    #[serde(rename = "republish_after_ms", with = "millis")]
    pub republish_after: Duration,
    /// How many campaigns (those with the most active calls) get a
    /// `dialer_campaign_active_calls{campaign=…}` series; 0 turns the per-campaign series off.
    pub metrics_top_campaigns: usize,
    /// Time between sweeps of the reaper (calls whose dispatch or outcome was lost).
    #[serde(rename = "reap_every_ms", with = "millis")]
    pub reap_every: Duration,
    /// How long the reaper waits beyond a call's latest possible end before resolving it (clock
    /// skew between machines, a recorder's lag).
    #[serde(rename = "reap_grace_ms", with = "millis")]
    pub reap_grace: Duration,
    /// Most status events the recorder writes in one transaction. Larger batches cost fewer
    /// pages per call, and hold the store's write lock longer.
    pub recorder_batch_max: usize,
    /// How long a recorder batch read from the broker waits to fill up (see
    /// `Recorder::linger`); 0 = take only what was fetched already.
    #[serde(rename = "recorder_linger_ms", with = "millis")]
    pub recorder_linger: Duration,
    /// Recorders of this process on the status topic (distributed mode), each its own consumer
    /// in the recorders' group: the broker splits the partitions between them and their
    /// transactions overlap (one recorder waits on its round trips and its commit's WAL flush
    /// most of the time). The in-process bus has one recorder.
    pub recorder_workers: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            interval: Duration::from_secs(1),
            inflight_factor: 2,
            max_batch: 5000,
            claim_concurrency: 8,
            dispatch_ttl: Duration::from_secs(300),
            republish_after: Duration::from_secs(30),
            metrics_top_campaigns: 10,
            reap_every: Duration::from_secs(10),
            reap_grace: Duration::from_secs(30),
            recorder_batch_max: 4000,
            recorder_linger: Duration::from_millis(20),
            recorder_workers: 2,
        }
    }
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    pub campaigns_open: usize,
    pub campaigns_closed: usize,
    pub dispatched: usize,
    pub completed_campaigns: usize,
    /// A campaign got `max_batch` calls and could take more: the next tick comes at once.
    pub batch_bound: bool,
    /// Calls whose claim's messages were published again ([`SchedulerSettings::republish_after`]).
    pub republished: usize,
    /// Claim transactions made (one per group of campaigns claimed together).
    pub claims: usize,
}

/// The scheduler of one control-plane process, publishing through its dispatch sink `S`.
#[derive(Debug)]
pub struct Scheduler<S: DispatchSink> {
    pub store: Store,
    pub sink: S,
    pub clock: Arc<dyn Clock>,
    pub settings: SchedulerSettings,
    /// The caps campaigns are dispatched to (their fair shares of the global cap).
    pub limits: LimitSettings,
    /// `[calling_rules]`: the recipient's rules of campaigns without their own.
    pub calling_rules: CallingRules,
}

/// How many calls of each campaign may be claimed now (`open`: whose business hours are open):
/// `inflight_factor × share − live calls`, at most its pending calls and `max_batch`. A campaign's
/// share is its max-min fair share of the global cap, by demand (live calls, plus pending ones
/// where open) and weight, within its effective cap; rounded up, so a small share still dials.
pub fn budgets(
    s: &SchedulerSettings,
    limits: &LimitSettings,
    campaigns: &[ActiveCampaign],
    open: &[bool],
) -> Vec<usize> {
    let demands: Vec<CampaignDemand> = campaigns
        .iter()
        .zip(open)
        .map(|(c, open)| {
            let live = (c.queued + c.in_progress) as f64;
            let demand = live + if *open { c.pending as f64 } else { 0.0 };
            CampaignDemand {
                demand,
                want: demand,
                cap: f64::from(limits.campaign_cap(c.max_concurrent_calls)),
                weight: f64::from(c.weight.max(1)),
            }
        })
        .collect();
    let shares = campaign_shares(f64::from(limits.global_max_concurrency), &demands);
    campaigns
        .iter()
        .zip(open)
        .zip(shares)
        .map(|((c, open), share)| {
            if !open {
                return 0;
            }
            let room = i64::from(round_up(share)) * i64::from(s.inflight_factor) - c.queued - c.in_progress;
            room.clamp(0, c.pending.min(s.max_batch as i64)) as usize
        })
        .collect()
}

impl<S: DispatchSink> Scheduler<S> {
    #[tracing::instrument(name = "scheduler_tick", skip_all, fields(dispatched))]
    pub async fn tick(&self) -> Result<TickReport, StoreError> {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let mut report = TickReport::default();
        self.rules_upkeep(now).await;
        let active = self.store.active_campaigns().await?;
        crate::observability::publish_campaign_load(
            active
                .iter()
                .map(|c| crate::observability::CampaignLoad {
                    campaign: c.id,
                    active: c.queued + c.in_progress,
                    cap: self.limits.campaign_cap(c.max_concurrent_calls),
                    answered_human: c.answered_human,
                    abandoned: c.abandoned,
                })
                .collect(),
            self.settings.metrics_top_campaigns,
        );
        let open: Vec<bool> = active.iter().map(|c| is_open(c, now)).collect();
        report.campaigns_open = open.iter().filter(|o| **o).count();
        report.campaigns_closed = open.len() - report.campaigns_open;
        let budgets = budgets(&self.settings, &self.limits, &active, &open);
        self.dispatch_all(&active, budgets, now, &mut report).await;
        report.republished = self.republish(&active, now).await;
        report.completed_campaigns = self.store.complete_finished().await?.len();
        tracing::Span::current().record("dispatched", report.dispatched);
        metrics::counter!("dialer_scheduler_dispatched_total").increment(report.dispatched as u64);
        metrics::histogram!("dialer_scheduler_tick_seconds").record(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Claims and publishes each campaign with a budget, in groups ([`groups`]),
    /// `claim_concurrency` groups at a time.
    async fn dispatch_all(
        &self,
        active: &[ActiveCampaign],
        budgets: Vec<usize>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) {
        // Collected first: no closure is held across the awaits below (the tick's future must
        // be `Send` for any lifetime, which iterator adapters' closures cannot promise).
        let due: Vec<(&ActiveCampaign, usize)> = active.iter().zip(budgets).filter(|(_, n)| *n > 0).collect();
        let concurrency = self.settings.claim_concurrency.max(1);
        let mut groups = groups(&due, concurrency, self.settings.max_batch).into_iter();
        let mut dispatches = futures::stream::FuturesUnordered::new();
        loop {
            while dispatches.len() < concurrency {
                let Some(group) = groups.next() else { break };
                dispatches.push(self.dispatch_group(group, now));
            }
            let Some((group, result)) = dispatches.next().await else { break };
            // One group's store error does not hold up the others.
            match result {
                Ok((delivered, claimed)) => {
                    report.claims += usize::from(claimed);
                    for ((_, n), k) in group.iter().zip(delivered) {
                        report.dispatched += k;
                        report.batch_bound |= *n == self.settings.max_batch && k == *n;
                    }
                }
                Err(e) => {
                    metrics::counter!("dialer_scheduler_errors_total").increment(1);
                    tracing::warn!(campaigns = group.len(), error = %e, "dispatching these campaigns failed; retrying next tick");
                }
            }
        }
    }

    /// Claims up to its budget of each campaign of `group` (one claim for them all) and publishes
    /// the calls (one publish); gives back only those the bus did not acknowledge (a delivered
    /// one will be dialled: giving it back would dial it twice). Returns how many of each
    /// campaign were dispatched, in the group's order, and whether a claim was made.
    async fn dispatch_group<'g>(
        &self,
        group: &'g [(&'g ActiveCampaign, usize)],
        now: DateTime<Utc>,
    ) -> (&'g [(&'g ActiveCampaign, usize)], Result<(Vec<usize>, bool), StoreError>) {
        (group, self.claim_and_publish(group, now).await)
    }

    async fn claim_and_publish(
        &self,
        group: &[(&ActiveCampaign, usize)],
        now: DateTime<Utc>,
    ) -> Result<(Vec<usize>, bool), StoreError> {
        let ids: Vec<Uuid> = group.iter().map(|(c, _)| c.id).collect();
        let zones = self.store.pending_zones_of(&ids).await?;
        let plans: Vec<Option<ClaimPlan>> =
            group.iter().zip(&zones).map(|((c, n), zones)| self.claim_plan(c, *n, zones, now)).collect();
        let jobs: Vec<ClaimJob<'_>> = plans.iter().flatten().map(ClaimPlan::job).collect();
        if jobs.is_empty() {
            return Ok((vec![0; group.len()], false));
        }
        metrics::counter!("dialer_scheduler_claims_total").increment(1);
        let mut screened = self.store.claim_many(&jobs, now).await?.into_iter();
        let mut claimed: Vec<Vec<ClaimedCall>> = Vec::with_capacity(group.len());
        for plan in &plans {
            let Some(s) = plan.as_ref().and_then(|_| screened.next()) else {
                claimed.push(vec![]);
                continue;
            };
            for (_, reason) in &s.skipped {
                metrics::counter!("dialer_calls_skipped_total", "reason" => reason.as_str()).increment(1);
            }
            for (_, _, rule) in &s.held {
                metrics::counter!("dialer_calls_held_total", "rule" => rule.as_str()).increment(1);
            }
            claimed.push(s.dial);
        }
        let delivered = self.publish_claimed(group, &claimed, now).await?;
        for k in &delivered {
            if *k > 0 {
                metrics::histogram!("dialer_scheduler_batch_size").record(*k as f64);
            }
        }
        Ok((delivered, true))
    }

    /// What to claim of campaign `c` now (`zones`: those of its pending calls): its open zones,
    /// soonest to close first, with their messages' deadlines; `None` when none is open or its
    /// rules no longer compile (logged; the other campaigns go on).
    fn claim_plan(&self, c: &ActiveCampaign, n: usize, zones: &[String], now: DateTime<Utc>) -> Option<ClaimPlan> {
        let rules = match c.calling_rules.as_ref().unwrap_or(&self.calling_rules).compile("calling_rules") {
            Ok(r) => r,
            Err(source) => {
                let e = StoreError::from(dialer_store::Corrupt::Rules { campaign: c.id, source });
                metrics::counter!("dialer_scheduler_errors_total").increment(1);
                tracing::warn!(campaign = %c.id, error = %e, "this campaign's calling rules do not compile; not dispatching it");
                return None;
            }
        };
        let plan = crate::calling_rules::plan(&rules, zones, now);
        for (_, rule) in &plan.closed {
            metrics::counter!("dialer_scheduler_zones_held_total", "rule" => rule.as_str()).increment(1);
        }
        if plan.claim.is_empty() {
            return None;
        }
        let hours_close = parse_tz(&c.time_zone)
            .ok()
            .and_then(|tz| BusinessHours { tz, windows: c.business_hours.clone() }.closes_after(now));
        let zones = plan.claims(now, self.settings.dispatch_ttl, hours_close);
        Some(ClaimPlan { campaign_id: c.id, n, zones, rules })
    }

    /// Publishes the claimed calls of a group's campaigns in one go; gives back to each campaign
    /// those the bus did not acknowledge. How many of each were delivered.
    async fn publish_claimed(
        &self,
        group: &[(&ActiveCampaign, usize)],
        claimed: &[Vec<ClaimedCall>],
        now: DateTime<Utc>,
    ) -> Result<Vec<usize>, StoreError> {
        let mut msgs = Vec::new();
        let mut owner = Vec::new();
        for (i, ((c, _), calls)) in group.iter().zip(claimed).enumerate() {
            let cap = self.limits.campaign_cap(c.max_concurrent_calls);
            msgs.extend(calls.iter().map(|k| message(c, cap, k, now)));
            owner.extend((0..calls.len()).map(|j| (i, j)));
        }
        let mut delivered: Vec<usize> = claimed.iter().map(Vec::len).collect();
        if msgs.is_empty() {
            return Ok(delivered);
        }
        let Err(e) = self.sink.publish_all(msgs).await else { return Ok(delivered) };
        tracing::warn!(campaigns = group.len(), error = %e, "dispatch partly failed; the unacknowledged calls are given back");
        let mut back: Vec<Vec<ClaimedCall>> = claimed.iter().map(|_| Vec::new()).collect();
        for m in &e.unacked {
            let (i, j) = owner[*m];
            back[i].push(claimed[i][j].clone());
        }
        for (i, calls) in back.iter().enumerate().filter(|(_, b)| !b.is_empty()) {
            self.store.unclaim_calls(group[i].0.id, calls).await?;
            delivered[i] -= calls.len();
        }
        Ok(delivered)
    }

    /// Publishes again the messages of calls still queued `republish_after` after their claim
    /// (at most [`REPUBLISH_BATCH`] a tick, oldest first): same attempt, same deadline, so that
    /// a control plane that died between a claim's commit and the broker's acknowledgement
    /// strands nothing until the reaper. Again every `republish_after` until the broker
    /// acknowledges one of these publishes; then the call is left to the data plane (and the
    /// reaper), so a call whose message waits in the topic is published once more at most. The message may have been delivered (the
    /// acknowledgement was lost, or it waits in a shard for a token): the shards' journals dial
    /// an attempt once however many of its messages come. Calls of campaigns no longer in
    /// progress are left to the reaper. Returns how many were published.
    async fn republish(&self, active: &[ActiveCampaign], now: DateTime<Utc>) -> usize {
        let after = self.settings.republish_after;
        if !S::MAY_STRAND_CLAIMS || after.is_zero() {
            return 0;
        }
        let claimed = now - self.settings.dispatch_ttl..now - after;
        let stranded = match self.store.unconfirmed_claims(claimed, now, now + after, REPUBLISH_BATCH).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "looking for unconfirmed claims failed; retrying next tick");
                return 0;
            }
        };
        let mut by_campaign: HashMap<Uuid, Vec<UnconfirmedClaim>> = HashMap::new();
        for u in stranded {
            by_campaign.entry(u.campaign_id).or_default().push(u);
        }
        let mut published = 0;
        for c in active {
            let Some(calls) = by_campaign.remove(&c.id) else { continue };
            let cap = self.limits.campaign_cap(c.max_concurrent_calls);
            let msgs: Vec<DispatchMessage> = calls.iter().map(|u| message(c, cap, &u.call, u.claimed_at)).collect();
            let k = msgs.len();
            match self.sink.publish_all(msgs).await {
                Ok(()) => {
                    published += k;
                    // In the topic now: not published again (a failure here only means they may be).
                    let ids: Vec<Uuid> = calls.iter().map(|u| u.call.id).collect();
                    if let Err(e) = self.store.confirm_claims(&ids).await {
                        tracing::warn!(campaign = %c.id, error = %e, "marking calls published again as delivered failed; they may be published once more");
                    }
                }
                // Nothing is given back: the first message may be out there.
                Err(e) => {
                    tracing::warn!(campaign = %c.id, error = %e, "publishing unconfirmed claims again failed; trying again after scheduler.republish_after_ms")
                }
            }
        }
        if published > 0 {
            tracing::warn!(
                calls = published,
                "calls still queued long after their claim (their messages may never have reached the broker) published again, same attempt and deadline"
            );
            metrics::counter!("dialer_scheduler_republished_total").increment(published as u64);
        }
        published
    }

    /// The calling rules' chores of a tick: opt-outs announced to every shard (so calls already
    /// queued to those numbers are not dialled), calls not yet located given their zone, and
    /// per-number attempts older than any limit looks back forgotten (each bounded per tick). A failure is logged and tried
    /// again next tick; claims screen by the lists anyway.
    async fn rules_upkeep(&self, now: DateTime<Utc>) {
        if let Err(e) = self.announce(now).await {
            tracing::warn!(error = %e, "announcing opt-outs to the data plane failed; retrying next tick");
        }
        if let Err(e) = self.store.locate_unzoned(LOCATE_BATCH).await {
            tracing::warn!(error = %e, "locating calls failed; retrying next tick");
        }
        if let Err(e) = self.store.prune_attempts(now, LOCATE_BATCH).await {
            tracing::warn!(error = %e, "pruning old contact attempts failed; retrying next tick");
        }
    }

    async fn announce(&self, now: DateTime<Utc>) -> Result<(), AnnounceError> {
        let pending = self.store.unannounced(ANNOUNCE_BATCH).await?;
        if pending.is_empty() {
            return Ok(());
        }
        let msgs: Vec<DispatchMessage> = pending
            .iter()
            .map(|s| crate::calling_rules::suppress_message(s, now, self.settings.dispatch_ttl))
            .collect();
        self.sink.broadcast(&msgs).await?;
        self.store.mark_announced(&pending).await?;
        metrics::counter!("dialer_dnc_announced_total").increment(pending.len() as u64);
        Ok(())
    }

    /// Ticks every `interval` until `shutdown` resolves; while a tick is bound by `max_batch`
    /// (a campaign could take more), the next one comes at once: `max_batch` bounds a claim's
    /// transaction, not the dial rate.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut every = tokio::time::interval(self.settings.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut catch_up = false;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                _ = every.tick(), if !catch_up => {}
                _ = tokio::task::yield_now(), if catch_up => {}
            }
            catch_up = match self.tick().await {
                Ok(r) => r.batch_bound,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler tick failed; retrying next tick");
                    false
                }
            };
        }
    }
}

/// What a tick claims of one campaign.
struct ClaimPlan {
    campaign_id: Uuid,
    n: usize,
    zones: Vec<(String, DateTime<Utc>)>,
    rules: dialer_domain::rules::Rules,
}

impl ClaimPlan {
    fn job(&self) -> ClaimJob<'_> {
        ClaimJob { campaign_id: self.campaign_id, n: self.n, zones: &self.zones, rules: &self.rules }
    }
}

/// The due campaigns (with their budgets) split into groups claimed together: about
/// `concurrency` groups, so that they run side by side, each of at most `max_batch` calls (a
/// campaign of a larger budget alone), so that no claim's transaction grows past what one
/// campaign's may.
fn groups<T>(due: &[(T, usize)], concurrency: usize, max_batch: usize) -> Vec<&[(T, usize)]> {
    let per_group = due.len().div_ceil(concurrency.max(1)).max(1);
    let mut out = Vec::new();
    let (mut start, mut calls) = (0, 0);
    for (i, (_, n)) in due.iter().enumerate() {
        let full = i - start == per_group || (i > start && calls + n > max_batch);
        if full {
            out.push(&due[start..i]);
            (start, calls) = (i, 0);
        }
        calls += n;
    }
    if start < due.len() {
        out.push(&due[start..]);
    }
    out
}

/// Whether `c`'s business hours are open at `now` (a time zone that no longer parses: closed).
fn is_open(c: &ActiveCampaign, now: DateTime<Utc>) -> bool {
    parse_tz(&c.time_zone).is_ok_and(|tz| BusinessHours { tz, windows: c.business_hours.clone() }.is_open(now))
}

/// Why opt-outs were not announced this tick (the next tick tries again).
#[derive(Debug, thiserror::Error)]
enum AnnounceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Unconfirmed claims published again per tick (a control plane's crash strands at most a
/// tick's claims; a larger backlog takes a few ticks).
const REPUBLISH_BATCH: usize = 5000;

/// Opt-outs announced per tick.
const ANNOUNCE_BATCH: usize = 1000;
/// Calls located, and old per-number attempts forgotten, per tick (above any dial rate: 20,000
/// a second at the default 1 s tick).
const LOCATE_BATCH: usize = 20_000;

/// The dispatch message of a claimed call, claimed at `claimed_at`.
fn message(c: &ActiveCampaign, cap: u32, k: &ClaimedCall, claimed_at: DateTime<Utc>) -> DispatchMessage {
    DispatchMessage {
        v: SCHEMA_VERSION,
        call_id: k.id,
        attempt: k.attempt,
        campaign_id: c.id,
        phone_number: k.phone_number.clone(),
        campaign_cap: cap,
        campaign_weight: c.weight,
        not_before_ms: 0,
        deadline_ms: k.deadline.timestamp_millis().max(0) as u64,
        enqueued_at_us: claimed_at.timestamp_micros().max(0) as u64,
        telephony: (!c.telephony.is_empty()).then(|| Box::new(c.telephony.clone())),
        kind: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(cap: u32, weight: u32, pending: i64, queued: i64, in_progress: i64) -> ActiveCampaign {
        ActiveCampaign {
            id: uuid::Uuid::now_v7(),
            time_zone: "UTC".into(),
            business_hours: vec![],
            max_concurrent_calls: cap,
            weight,
            telephony: Default::default(),
            calling_rules: None,
            pending,
            queued,
            in_progress,
            answered_human: 0,
            abandoned: 0,
        }
    }

    fn limits(global_cap: u32) -> LimitSettings {
        LimitSettings { global_max_concurrency: global_cap, per_campaign_max_concurrency: 1000, ..Default::default() }
    }

    fn budgets(limits: LimitSettings, cs: &[ActiveCampaign], open: &[bool]) -> Vec<usize> {
        super::budgets(&SchedulerSettings::default(), &limits, cs, open)
    }

    #[test]
    fn without_a_binding_global_cap_each_campaign_dispatches_to_its_cap() {
        let cs = [campaign(50, 1, 5000, 0, 0), campaign(50, 1, 5000, 60, 30)];
        assert_eq!(budgets(limits(2000), &cs, &[true, true]), vec![100, 10], "2 × cap − live calls");
        assert_eq!(budgets(limits(2000), &[campaign(50, 1, 7, 0, 0)], &[true]), vec![7], "at most its pending calls");
    }

    #[test]
    fn under_a_binding_global_cap_each_campaign_dispatches_to_its_fair_share() {
        // 20 campaigns of cap 50 under a global cap of 300: a share of 15 each, not 50.
        let cs: Vec<ActiveCampaign> = (0..20).map(|_| campaign(50, 1, 5000, 0, 0)).collect();
        let b = budgets(limits(300), &cs, &[true; 20]);
        assert!(b.iter().all(|n| *n == 30), "{b:?}");
        // Weights 3:1; a campaign with little demand keeps what it needs and the rest goes on.
        let cs = [campaign(500, 3, 5000, 0, 0), campaign(500, 1, 5000, 0, 0), campaign(500, 1, 4, 0, 0)];
        assert_eq!(budgets(limits(100), &cs, &[true; 3]), vec![144, 48, 4]);
    }

    #[test]
    fn many_small_campaigns_are_claimed_in_about_concurrency_groups_and_a_large_one_alone() {
        let sizes = |due: &[(u32, usize)], c, max| groups(due, c, max).iter().map(|g| g.len()).collect::<Vec<_>>();
        let small: Vec<(u32, usize)> = (0..1000).map(|i| (i, 40)).collect();
        assert_eq!(sizes(&small, 8, 5000), vec![125; 8], "1,000 campaigns of 40 calls: 8 groups");
        assert_eq!(sizes(&small[..3], 8, 5000), vec![1, 1, 1], "fewer campaigns than groups: one each");
        // 125 campaigns of 40 would be 5,000 calls: at most max_batch calls a group.
        assert_eq!(sizes(&small, 8, 1000), [vec![25; 40]].concat());
        let mixed = [(0, 5000), (1, 10), (2, 10), (3, 5000), (4, 10)];
        assert_eq!(sizes(&mixed, 1, 5000), vec![1, 2, 1, 1], "a campaign of max_batch calls is claimed alone");
        let flat: Vec<u32> = groups(&mixed, 1, 5000).concat().iter().map(|(c, _)| *c).collect();
        assert_eq!(flat, vec![0, 1, 2, 3, 4], "every campaign once, in order");
        assert!(groups::<u32>(&[], 8, 5000).is_empty());
    }

    #[test]
    fn a_closed_campaign_dispatches_nothing_and_its_live_calls_still_count() {
        let cs = [campaign(500, 1, 5000, 0, 60), campaign(500, 1, 5000, 0, 0)];
        // The closed one's 60 calls in progress are its demand: the open one's fair share is 50.
        assert_eq!(budgets(limits(100), &cs, &[false, true]), vec![0, 100]);
    }
}
