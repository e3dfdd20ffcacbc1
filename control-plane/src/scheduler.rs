//! The scheduler: every tick, for each in-progress campaign whose business hours are open now in
//! its time zone, claims due calls (retries and new calls side by side) and publishes them to the
//! dispatch topic. It never floods: queued-but-not-finished calls of a campaign stay under
//! `inflight_factor × cap`. Claims are atomic (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several
//! replicas never queue one call twice. A campaign whose every call is terminal completes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dialer_dataplane::MemoryBus;
use dialer_dataplane::kafka::MeteredProducer;
use dialer_domain::hours::{BusinessHours, parse_tz};
use dialer_domain::messages::{DispatchMessage, SCHEMA_VERSION};
use rdkafka::producer::FutureRecord;

use crate::store::{ActiveCampaign, ClaimedCall, Store, StoreError};

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

/// Where dispatch messages go.
#[derive(Clone)]
pub enum DispatchSink {
    Memory(Arc<MemoryBus>),
    Kafka { producer: MeteredProducer, topic: String },
}

impl std::fmt::Debug for DispatchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DispatchSink::Memory(_) => f.write_str("DispatchSink::Memory"),
            DispatchSink::Kafka { topic, .. } => write!(f, "DispatchSink::Kafka({topic})"),
        }
    }
}

impl DispatchSink {
    /// Publishes all messages; returns once the broker has acknowledged them (Kafka).
    pub async fn publish_all(&self, msgs: Vec<DispatchMessage>) -> Result<(), String> {
        match self {
            DispatchSink::Memory(bus) => {
                for m in msgs {
                    bus.publish(m).await.map_err(|_| "in-process bus closed".to_string())?;
                }
                Ok(())
            }
            DispatchSink::Kafka { producer, topic } => {
                let encoded: Vec<(Vec<u8>, [u8; 16])> =
                    msgs.iter().map(|m| (m.encode(), *m.call_id.as_bytes())).collect();
                let mut acks = Vec::with_capacity(msgs.len());
                for (payload, key) in &encoded {
                    acks.push(
                        producer.send(FutureRecord::to(topic).key(&key[..]).payload(payload), Duration::from_secs(5)),
                    );
                }
                for r in futures::future::join_all(acks).await {
                    r.map_err(|(e, _)| {
                        dialer_dataplane::kafka::produce_error(topic);
                        format!("dispatch not acknowledged: {e}")
                    })?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub interval: Duration,
    /// Queued + dialing calls of a campaign stay under this many times its cap.
    pub inflight_factor: u32,
    /// Most calls claimed for one campaign in one tick.
    pub max_batch: usize,
    /// A dispatched call not dialed within this long expires and is claimed again later.
    pub dispatch_ttl: Duration,
    /// `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`.
    pub per_campaign_ceiling: u32,
    /// Campaigns with a per-campaign active-calls series (the busiest N).
    pub top_campaigns: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            interval: Duration::from_secs(1),
            inflight_factor: 2,
            max_batch: 5000,
            dispatch_ttl: Duration::from_secs(300),
            per_campaign_ceiling: 100,
            top_campaigns: 10,
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
}

#[derive(Debug)]
pub struct Scheduler {
    pub store: Store,
    pub sink: DispatchSink,
    pub clock: Arc<dyn Clock>,
    pub cfg: SchedulerConfig,
}

impl Scheduler {
    /// How many calls of `c` may be claimed now.
    pub fn budget(&self, c: &ActiveCampaign) -> usize {
        let cap = c.max_concurrent_calls.min(self.cfg.per_campaign_ceiling) as i64;
        let room = cap * i64::from(self.cfg.inflight_factor) - c.queued - c.in_progress;
        room.clamp(0, c.pending.min(self.cfg.max_batch as i64)) as usize
    }

    #[tracing::instrument(name = "scheduler_tick", skip_all, fields(dispatched))]
    pub async fn tick(&self) -> Result<TickReport, StoreError> {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let mut report = TickReport::default();
        let active = self.store.active_campaigns().await?;
        crate::observability::publish_campaign_load(
            active
                .iter()
                .map(|c| crate::observability::CampaignLoad {
                    campaign: c.id,
                    active: c.queued + c.in_progress,
                    cap: c.max_concurrent_calls.min(self.cfg.per_campaign_ceiling),
                })
                .collect(),
            self.cfg.top_campaigns,
        );
        for c in active {
            let Ok(tz) = parse_tz(&c.time_zone) else { continue };
            let hours = BusinessHours { tz, windows: c.business_hours.clone() };
            if !hours.is_open(now) {
                report.campaigns_closed += 1;
                continue;
            }
            report.campaigns_open += 1;
            let n = self.budget(&c);
            if n == 0 {
                continue;
            }
            let claimed = self.store.claim_calls(c.id, n, Utc::now()).await?;
            if claimed.is_empty() {
                continue;
            }
            let cap = c.max_concurrent_calls.min(self.cfg.per_campaign_ceiling);
            let msgs = messages(&c, cap, &claimed, self.cfg.dispatch_ttl);
            let k = msgs.len();
            if let Err(e) = self.sink.publish_all(msgs).await {
                tracing::warn!(campaign = %c.id, error = %e, "dispatch failed; calls given back");
                self.store.unclaim_calls(c.id, &claimed).await?;
                continue;
            }
            report.dispatched += k;
            metrics::histogram!("dialer_scheduler_batch_size").record(k as f64);
        }
        report.completed_campaigns = self.store.complete_finished().await?.len();
        tracing::Span::current().record("dispatched", report.dispatched);
        metrics::counter!("dialer_scheduler_dispatched_total").increment(report.dispatched as u64);
        metrics::histogram!("dialer_scheduler_tick_seconds").record(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Ticks every `interval` until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut every = tokio::time::interval(self.cfg.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "scheduler tick failed; retrying next tick");
            }
        }
    }
}

fn messages(c: &ActiveCampaign, cap: u32, claimed: &[ClaimedCall], ttl: Duration) -> Vec<DispatchMessage> {
    let now = Utc::now();
    let now_ms = now.timestamp_millis() as u64;
    let now_us = now.timestamp_micros() as u64;
    claimed
        .iter()
        .map(|k| DispatchMessage {
            v: SCHEMA_VERSION,
            call_id: k.id,
            attempt: k.attempt,
            campaign_id: c.id,
            phone_number: k.phone_number.clone(),
            campaign_cap: cap,
            not_before_ms: 0,
            deadline_ms: now_ms + ttl.as_millis() as u64,
            enqueued_at_us: now_us,
        })
        .collect()
}
