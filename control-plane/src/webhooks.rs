//! Webhook delivery and the event log's upkeep. Every control-plane replica runs:
//!
//! - the **sequencer** ([`run_sequencer`]): numbers committed events (one sequencer at a time
//!   across replicas, by a row lock), then wakes this process's deliveries and live stream;
//! - the **deliverer** ([`Deliverer::run`]): per enabled endpoint, claims due deliveries (its
//!   retries and waiting events, then events from the log after its cursor) within
//!   the endpoint's concurrency and rate (held in the store, so they bound every replica
//!   together), POSTs each signed event from its own task (one slow receiver holds only its own
//!   slots), and hands the answers to one writer that records them in batches;
//! - the **upkeep** ([`run_upkeep`]): expired leases back to due, the queue gauges, pruning.
//!
//! Delivery is at least once: a replica that stops mid-send leaves a lease that expires, and the
//! event goes again. Receivers de-duplicate by the event's `id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use dialer_api::signature::{SIGNATURE_HEADER, signature_header};
use dialer_domain::duration::{millis, secs};
use dialer_domain::events::{Answer, Next, RetrySchedule};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::live::LiveHub;
use dialer_store::{ActiveEndpoint, ClaimedDelivery, Finished, Store};

/// The event log and the live stream (`[events]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// Log events at all (`DIALER_EVENTS_ENABLED`); off, neither webhooks nor the live stream
    /// see anything.
    pub enabled: bool,
    /// Hours numbered events stay in the log once no delivery needs them: how far back a
    /// live-stream client can resume (`DIALER_EVENTS_KEEP_HOURS`).
    pub keep_hours: u64,
    /// Events a live-stream client may fall behind before it is dropped (it reconnects with
    /// `Last-Event-ID` and resumes from the log).
    pub live_buffer: usize,
    /// Time between stats snapshots on the live stream.
    #[serde(rename = "live_stats_every_ms", with = "millis")]
    pub live_stats_every: Duration,
    /// Time between looks for new events when idle (the sequencer, and live streams of events
    /// another replica numbered).
    #[serde(rename = "poll_ms", with = "millis")]
    pub poll: Duration,
}

impl Default for EventsSettings {
    fn default() -> Self {
        EventsSettings {
            enabled: true,
            keep_hours: 72,
            live_buffer: 4096,
            live_stats_every: Duration::from_secs(5),
            poll: Duration::from_millis(100),
        }
    }
}

/// How deliveries run (`[webhooks]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Deliver from this process (`DIALER_WEBHOOKS_ENABLED`); every replica may, and they share
    /// the work.
    pub enabled: bool,
    /// How long one request may take (`DIALER_WEBHOOKS_TIMEOUT_MS`).
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// The first retry's delay (jittered, doubling each time up to `retry_max_ms`).
    #[serde(rename = "retry_base_ms", with = "millis")]
    pub retry_base: Duration,
    #[serde(rename = "retry_max_ms", with = "millis")]
    pub retry_max: Duration,
    /// How long an event is retried after its first attempt before it goes to the dead-letter
    /// store (`DIALER_WEBHOOKS_RETRY_WINDOW_SEC`; a day by default).
    #[serde(rename = "retry_window_sec", with = "secs")]
    pub retry_window: Duration,
    /// Most deliveries claimed for one endpoint at once.
    pub claim_batch: usize,
    /// How often idle endpoints are asked for due deliveries (new events wake them at once).
    #[serde(rename = "poll_ms", with = "millis")]
    pub poll: Duration,
    /// Whether deliveries may go to loopback, link-local, private, shared or multicast
    /// addresses (`DIALER_WEBHOOKS_ALLOW_PRIVATE_TARGETS`; unset: no, except under `dialer up`,
    /// see [`crate::targets`]).
    pub allow_private_targets: Option<bool>,
    /// Seals the endpoints' signing secrets at rest: from `DIALER_SECRETS_KEY` only, never a
    /// file ([`crate::secrets`]).
    #[serde(skip)]
    pub secrets_key: Option<crate::secrets::SecretsKey>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            enabled: true,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            retry_window: Duration::from_secs(86_400),
            claim_batch: 64,
            poll: Duration::from_millis(250),
            allow_private_targets: None,
            secrets_key: None,
        }
    }
}

impl WebhookSettings {
    /// A claim's lease: the request's timeout and a margin for recording its answer.
    pub fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(10)
    }

    /// Where deliveries may go.
    pub fn targets(&self) -> crate::targets::TargetPolicy {
        crate::targets::TargetPolicy { allow_private: self.allow_private_targets.unwrap_or(false) }
    }

    /// When a failed delivery is tried again.
    pub fn retry(&self) -> RetrySchedule {
        RetrySchedule { base: self.retry_base, max: self.retry_max, window: self.retry_window }
    }
}

/// What the deliveries did, for `/metrics/summary` (the same figures as the metrics).
#[derive(Debug, Default)]
pub struct Summary {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub gone: AtomicU64,
    pub queue_depth: AtomicU64,
    pub dead_letters: AtomicU64,
    pub events_logged: AtomicU64,
    /// Event creation → delivery, milliseconds, since the process started.
    latency_ms: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Summary {
    fn record_latency(&self, ms: u64) {
        let mut h = self.latency_ms.lock().unwrap_or_else(|p| p.into_inner());
        let h = h.get_or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 86_400_000 * 7, 2).expect("valid bounds")
        });
        let _ = h.record(ms.clamp(1, 86_400_000 * 7));
    }

    /// The JSON of `/metrics/summary`.
    pub fn json(&self) -> serde_json::Value {
        let q = |v: f64| {
            let h = self.latency_ms.lock().unwrap_or_else(|p| p.into_inner());
            h.as_ref().map(|h| h.value_at_quantile(v))
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "queue_depth": n(&self.queue_depth),
            "dead_letters": n(&self.dead_letters),
            "events_logged": n(&self.events_logged),
            "deliveries": {
                "delivered": n(&self.delivered),
                "retried": n(&self.retried),
                "dead_lettered": n(&self.dead),
                "gone": n(&self.gone),
            },
            "delivery_latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": q(1.0)},
        })
    }
}

/// Numbers committed events, back to back while there is a backlog, every
/// `poll` when idle, until `shutdown`; wakes `deliveries` and `live` after each batch. Only while
/// someone reads the log: an enabled endpoint (any replica's deliverer), or a live client of this
/// process (each replica numbers for its own clients). Numbering later is as right as numbering
/// at once (positions follow the order of commits seen by the run that numbers them), and
/// `dialer up` with no reader pays the log's appends only (`bench/up_scale.sh`).
pub async fn run_sequencer(
    store: Store,
    poll: Duration,
    deliveries: Arc<Notify>,
    live: Option<Arc<LiveHub>>,
    summary: Arc<Summary>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    const BATCH: usize = 2000;
    tokio::pin!(shutdown);
    let mut readers = Readers::default();
    loop {
        let full = readers.any(&store, live.as_deref()).await
            && sequence(&store, BATCH, &deliveries, live.as_deref(), &summary).await;
        if full {
            continue;
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Whether anyone reads the log, the endpoints' part looked up at most once a second.
#[derive(Debug, Default)]
struct Readers {
    endpoints: bool,
    checked: Option<Instant>,
}

impl Readers {
    async fn any(&mut self, store: &Store, live: Option<&LiveHub>) -> bool {
        if self.checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            // On an error, number anyway: a reader may exist.
            self.endpoints = store.any_webhook_enabled().await.unwrap_or(true);
            self.checked = Some(Instant::now());
        }
        self.endpoints || live.is_some_and(|l| l.clients() > 0)
    }
}

/// One batch numbered; `true` when it was full (more wait).
async fn sequence(store: &Store, batch: usize, deliveries: &Notify, live: Option<&LiveHub>, summary: &Summary) -> bool {
    match store.sequence_events(batch).await {
        Ok(s) => {
            if s.events > 0 {
                metrics::counter!("dialer_events_logged_total").increment(s.events);
                summary.events_logged.fetch_add(s.events, Ordering::Relaxed);
                deliveries.notify_one();
                if let Some(l) = live {
                    l.wake();
                }
            }
            s.events as usize >= batch
        }
        Err(e) => {
            tracing::warn!(error = %e, "numbering events failed; will retry");
            false
        }
    }
}

/// Expired leases back to due (every second), the queue gauges (every 5 s), events older than
/// `keep` that no delivery needs pruned (every minute), until `shutdown`.
pub async fn run_upkeep(
    store: Store,
    keep: Duration,
    summary: Arc<Summary>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = store.reclaim_expired_deliveries().await {
            tracing::warn!(error = %e, "reclaiming expired webhook leases failed; will retry");
        }
        if tick.is_multiple_of(5) {
            gauges(&store, &summary).await;
        }
        if tick.is_multiple_of(60) {
            let before = Utc::now() - keep;
            match store.prune_events(before, 20_000).await {
                Ok(n) if n > 0 => tracing::debug!(n, "pruned events past events.keep_hours"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the event log failed; will retry"),
            }
        }
        tick += 1;
    }
}

async fn gauges(store: &Store, summary: &Summary) {
    match store.delivery_counts().await {
        Ok(c) => {
            let depth = (c.pending + c.sending) as f64;
            metrics::gauge!("dialer_webhook_queue_depth").set(depth);
            metrics::gauge!("dialer_webhook_dead_letters").set(c.dead as f64);
            summary.queue_depth.store((c.pending + c.sending) as u64, Ordering::Relaxed);
            summary.dead_letters.store(c.dead as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "counting webhook deliveries failed; will retry"),
    }
}

/// Sends claimed deliveries and records their answers.
#[derive(Debug)]
pub struct Deliverer {
    pub store: Store,
    pub settings: WebhookSettings,
    pub client: reqwest::Client,
    pub summary: Arc<Summary>,
    /// Opens the secrets the claims read.
    pub secrets: Arc<crate::secrets::Sealer>,
}

/// One endpoint as the deliverer holds it: its settings and its requests in flight here.
#[derive(Debug)]
struct Slot {
    endpoint: ActiveEndpoint,
    in_flight: Arc<AtomicUsize>,
}

/// How many answers wait for the writer at most (bounded: senders wait when it is full).
const ANSWERS: usize = 4096;

impl Deliverer {
    /// The HTTP client: pooled keep-alive connections, the request timeout; names resolved
    /// under the target policy, redirects not followed (a 3xx is a failed delivery: a
    /// redirect could lead where the policy would not let the endpoint be registered).
    pub fn client(settings: &WebhookSettings) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(crate::targets::Resolver(settings.targets())))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_max_idle_per_host(64)
            .user_agent(concat!("dialer-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// Delivers until `shutdown`; woken by `wake` when new events were numbered.
    pub async fn run(self, wake: Arc<Notify>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let this = Arc::new(self);
        let (answers, rx) = mpsc::channel(ANSWERS);
        let done = Arc::new(Notify::new());
        let writer = tokio::spawn(write_answers(this.clone(), rx, done.clone()));
        let mut slots: HashMap<Uuid, Slot> = HashMap::new();
        let mut refreshed: Option<Instant> = None;
        loop {
            if refreshed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                this.refresh(&mut slots).await;
                refreshed = Some(Instant::now());
            }
            for slot in slots.values() {
                this.claim_and_send(slot, &answers, &done).await;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wake.notified() => {}
                _ = done.notified() => {}
                _ = tokio::time::sleep(this.settings.poll) => {}
            }
        }
        drop(answers);
        let _ = writer.await;
    }

    /// The enabled endpoints, keeping the in-flight counts of those that stay.
    async fn refresh(&self, slots: &mut HashMap<Uuid, Slot>) {
        let Ok(endpoints) = self.store.active_endpoints().await.inspect_err(|e| {
            tracing::warn!(error = %e, "reading webhook endpoints failed; will retry");
        }) else {
            return;
        };
        let mut next = HashMap::new();
        for e in endpoints {
            let old = slots.remove(&e.id);
            let was_flagged = old.as_ref().is_some_and(|s| s.endpoint.health.flagged);
            if e.health.flagged && !was_flagged {
                let h = e.health;
                tracing::warn!(endpoint = %e.id, failures_in_a_row = h.failures_in_a_row, failing_since = ?h.failing_since,
                    never_succeeded = h.last_success_at.is_none(),
                    "webhook endpoint keeps failing; its events go to the dead-letter store when the retry window ends");
            }
            let in_flight = old.map(|s| s.in_flight).unwrap_or_default();
            next.insert(e.id, Slot { endpoint: e, in_flight });
        }
        let flagged = next.values().filter(|s| s.endpoint.health.flagged).count();
        metrics::gauge!("dialer_webhook_endpoints_flagged").set(flagged as f64);
        *slots = next;
    }

    /// Claims what the endpoint may send now and starts one task per delivery.
    async fn claim_and_send(&self, slot: &Slot, answers: &mpsc::Sender<(ClaimedDelivery, Answer)>, done: &Arc<Notify>) {
        let max = slot.endpoint.max_concurrency as usize;
        let in_flight = slot.in_flight.load(Ordering::Relaxed);
        let free = max.saturating_sub(in_flight);
        // A claim is a write transaction: wait for half the slots to free up rather than claim
        // one delivery per answer, which would make the claims the bound of delivery.
        if free == 0 || (in_flight > 0 && free < (max / 2).max(1)) {
            return;
        }
        let lease = Utc::now() + self.settings.lease();
        let claim =
            match self.store.claim_deliveries(slot.endpoint.id, free.min(self.settings.claim_batch), lease).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed; will retry");
                    return;
                }
            };
        // The URL and secrets as the claim read them: a rotation applies from the next claim.
        let (secrets, sealed) = self.open_secrets(&claim.secrets);
        let refused = self.settings.targets().check_literal(&claim.url).err().map(|e| e.to_string()).or(sealed);
        let target = Arc::new(Target { url: claim.url, secrets, refused });
        for d in claim.deliveries {
            slot.in_flight.fetch_add(1, Ordering::Relaxed);
            let (client, target, answers, done, in_flight) =
                (self.client.clone(), target.clone(), answers.clone(), done.clone(), slot.in_flight.clone());
            tokio::spawn(async move {
                let answer = send(&client, &target, &d).await;
                let _ = answers.send((d, answer)).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                done.notify_one();
            });
        }
    }
}

impl Deliverer {
    /// The secrets a claim read, opened; a secret that does not open (another key) sends
    /// nothing unsigned: the deliveries fail with why.
    fn open_secrets(&self, stored: &[String]) -> (Vec<String>, Option<String>) {
        match stored.iter().map(|s| self.secrets.open(s)).collect::<Result<Vec<_>, _>>() {
            Ok(secrets) => (secrets, None),
            Err(e) => {
                tracing::error!(error = %e, "a webhook secret does not open; its deliveries fail until the key is right");
                (Vec::new(), Some(e.to_string()))
            }
        }
    }
}

/// Where a claim's deliveries go and the secrets that sign them, as the claim read them.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub secrets: Vec<String>,
    /// Why the policy refuses the URL's address (nothing is sent; the delivery fails with it).
    pub refused: Option<String>,
}

/// POSTs one event, signed; what came back.
pub async fn send(client: &reqwest::Client, target: &Target, d: &ClaimedDelivery) -> Answer {
    if let Some(why) = &target.refused {
        return Answer::Connection(why.chars().take(300).collect());
    }
    let t = Utc::now().timestamp();
    let secrets: Vec<&str> = target.secrets.iter().map(String::as_str).collect();
    let started = Instant::now();
    let sent = client
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature_header(t, d.body.as_bytes(), &secrets))
        .header("Dialer-Delivery-Attempt", d.attempts.to_string())
        .header("Dialer-Event-Seq", d.seq.to_string())
        .body(d.body.clone())
        .send()
        .await;
    let answer = match sent {
        // The body is read (and dropped) so the connection goes back to the pool.
        Ok(r) => {
            let code = r.status().as_u16();
            let _ = r.bytes().await;
            Answer::Status(code)
        }
        Err(e) if e.is_timeout() => Answer::Timeout,
        Err(e) => Answer::Connection(short(&e)),
    };
    metrics::histogram!("dialer_webhook_request_duration_seconds").record(started.elapsed().as_secs_f64());
    answer
}

/// An error's message chain, bounded (it is stored with the delivery).
fn short(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s.chars().take(300).collect()
}

/// Records answers in batches (up to 500, or what arrived within 20 ms), retrying while the store
/// is down; the leases of answers not yet written expire and those events go again. Wakes the
/// claims after each batch: the slots it freed and the streams' next events are claimable only
/// once it is written.
async fn write_answers(d: Arc<Deliverer>, mut rx: mpsc::Receiver<(ClaimedDelivery, Answer)>, written: Arc<Notify>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 500).await > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while batch.len() < 500 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(a)) => batch.push(a),
                _ => break,
            }
        }
        let finished: Vec<Finished> = batch.drain(..).map(|(delivery, answer)| d.decide(delivery, answer)).collect();
        let mut wait = Duration::from_millis(100);
        while let Err(e) = d.store.finish_deliveries(&finished).await {
            tracing::warn!(error = %e, n = finished.len(), "recording webhook answers failed; will retry");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        written.notify_one();
    }
}

impl Deliverer {
    /// What follows from an answer, counted.
    fn decide(&self, delivery: ClaimedDelivery, answer: Answer) -> Finished {
        let now = Utc::now();
        let next =
            self.settings.retry().next(&answer, delivery.attempts, delivery.window_start, now, rand::random::<f64>());
        let (result, counter) = match next {
            Next::Delivered => ("delivered", &self.summary.delivered),
            Next::Retry(_) => ("retry", &self.summary.retried),
            Next::Dead => ("dead", &self.summary.dead),
            Next::Gone => ("gone", &self.summary.gone),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("dialer_webhook_deliveries_total", "result" => result, "code" => answer.label()).increment(1);
        if next == Next::Delivered {
            let ms = (now - delivery.created_at).num_milliseconds().max(0) as u64;
            metrics::histogram!("dialer_webhook_delivery_latency_seconds").record(ms as f64 / 1000.0);
            self.summary.record_latency(ms);
        }
        if matches!(next, Next::Dead | Next::Gone) {
            tracing::warn!(endpoint = %delivery.endpoint_id, seq = delivery.seq, result, error = ?answer.error(), "webhook event to the dead-letter store");
        }
        Finished { delivery, answer, next }
    }
}
