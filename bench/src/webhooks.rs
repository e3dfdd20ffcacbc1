//! `bench webhooks`: what the event log costs the recorder, and how fast webhooks go
//! out. Four recorder runs of the same work, each on a fresh campaign of N claimed calls whose
//! outcomes (`started`, then `completed`, 2 events a call) are recorded in the recorder's batches
//! through `Store::record_events`, the production path:
//!
//! - `off`: `events.enabled = false`, no log;
//! - `log`: the default, each batch also appends its events (4 a call: started, answered,
//!   completed; the claim's `queued` was logged by the claim);
//! - `log+deliver`: the same while the sequencer numbers and a deliverer sends every
//!   event of that campaign to a local receiver as fast as it takes them (`--concurrency`, a rate
//!   of 10,000/s: the worst case, a backlog drained at full speed);
//! - `log+deliver at defaults`: the same with the endpoint at its defaults (concurrency 16,
//!   100 requests/s), as an operator who sets neither runs it.
//!
//! The four runs go in `--rounds` rounds, each in a rotated order (the tables grow from run to run
//! and a shared machine's load drifts): each ratio compares runs of one round, and the table shows
//! the median and every round's.
//!
//! Deliveries per second come first: a campaign of M calls is recorded, then its events are
//! numbered, read from the log by a new endpoint's claims and delivered to the local receiver, timed from the start
//! until the receiver has them all.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_api::webhooks::CreateWebhookRequest;
use dialer_control_plane::Store;
use dialer_control_plane::webhooks::{Deliverer, Summary, WebhookSettings, run_sequencer};
use dialer_domain::campaign::CampaignAction;
use dialer_domain::messages::{EventKind, SCHEMA_VERSION, StatusEvent};
use dialer_testkit::receiver::{Mode, Receiver};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Calls per recorder run.
    #[arg(long, default_value_t = 50_000)]
    calls: usize,
    /// Rounds of the four recorder runs, each round in a rotated order; ratios are per round.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Calls whose events the delivery run sends (4 events a call).
    #[arg(long, default_value_t = 20_000)]
    deliver_calls: usize,
    /// Status events per recorder transaction (`scheduler.recorder_batch_max`'s default).
    #[arg(long, default_value_t = 4000)]
    batch: usize,
    /// The endpoint's concurrency (requests in flight).
    #[arg(long, default_value_t = 64)]
    concurrency: i64,
    #[command(flatten)]
    db: crate::StoreChoice,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The product's delivery settings, but for the receiver: it listens on loopback, which the
/// product refuses by default (`webhooks.allow_private_targets`).
fn settings() -> WebhookSettings {
    WebhookSettings { allow_private_targets: Some(true), ..WebhookSettings::default() }
}

/// A started campaign of `n` claimed calls (named `name` and a fresh id: runs repeat); the outcome
/// events of its calls.
async fn claimed_campaign(s: &Store, name: &str, n: usize) -> Result<(Uuid, Vec<StatusEvent>)> {
    let targets: Vec<_> =
        (0..n).map(|i| json!({"phone_number": format!("+1202{:03}{:04}", 200 + i / 10_000, i % 10_000)})).collect();
    let req: CreateCampaignRequest = serde_json::from_value(json!({
        "name": format!("{name} {}", Uuid::now_v7()), "max_concurrent_calls": 1000, "targets": targets, "calling_rules": {"enabled": false}
    }))?;
    let c = s.create_campaign(&req.validate(10_000_000).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
    s.transition(c.id, CampaignAction::Start).await?;
    let mut events = Vec::with_capacity(2 * n);
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis() as u64;
    while events.len() < 2 * n {
        let claimed = s.claim_due(c.id, 5000, now).await?;
        if claimed.is_empty() {
            bail!("claimed {} of {n} calls", events.len() / 2);
        }
        for k in claimed {
            let e = |kind, at_ms| StatusEvent {
                media: None,
                v: SCHEMA_VERSION,
                call_id: k.id,
                attempt: k.attempt,
                campaign_id: c.id,
                kind,
                at_ms,
                started_at_ms: Some(ms),
                answered_at_ms: (kind == EventKind::Completed).then_some(ms + 500),
                duration_ms: (kind == EventKind::Completed).then_some(30_000),
                reason: None,
                retryable: None,
                shard: 0,
                dispatch_latency_us: None,
                sip: None,
            };
            events.push(e(EventKind::Started, ms));
            events.push(e(EventKind::Completed, ms + 30_500));
        }
    }
    // Starts first, then outcomes, as a recorder sees them.
    events.sort_by_key(|e| e.kind != EventKind::Started);
    Ok((c.id, events))
}

/// Records `events` in batches of `batch`; events per second.
async fn record(s: &Store, events: &[StatusEvent], batch: usize, label: &str) -> Result<f64> {
    let bar = indicatif::ProgressBar::new(events.len() as u64).with_message(label.to_string());
    let t0 = Instant::now();
    for chunk in events.chunks(batch) {
        let r = s.record_events(chunk, &mut || 0.5, None).await?;
        if r.applied != chunk.len() as u64 {
            bail!("{label}: {} of {} events applied", r.applied, chunk.len());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(events.len() as f64 / t0.elapsed().as_secs_f64())
}

/// An endpoint for one campaign's events at `rx`: this concurrency and a rate of 10,000/s, or the
/// defaults.
async fn endpoint(s: &Store, rx: &Receiver, campaign: Uuid, concurrency: Option<i64>) -> Result<Uuid> {
    let req = CreateWebhookRequest {
        url: rx.url("/bench"),
        campaign_id: Some(campaign),
        max_concurrency: concurrency,
        rate_per_sec: concurrency.map(|_| 10_000),
        ..Default::default()
    };
    Ok(s.create_webhook(&req.validate().map_err(|e| anyhow::anyhow!("{e}"))?, "bench-secret-0123456789").await?.id)
}

/// The sequencer and a deliverer on `s` until the returned sender is dropped or set.
fn pipeline(s: &Store, summary: Arc<Summary>) -> Result<tokio::sync::watch::Sender<bool>> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let d = Deliverer {
        store: s.clone(),
        settings: settings(),
        client: Deliverer::client(&settings())?,
        summary: summary.clone(),
        secrets: Default::default(),
    };
    tokio::spawn(run_sequencer(
        s.clone(),
        Duration::from_millis(50),
        wake.clone(),
        None,
        summary,
        until(stopped.clone()),
    ));
    tokio::spawn(d.run(wake, until(stopped)));
    Ok(stop)
}

/// Waits until `rx` has `n` requests; seconds taken.
async fn drained(rx: &Receiver, n: usize, t0: Instant) -> Result<f64> {
    let bar = indicatif::ProgressBar::new(n as u64).with_message("delivering");
    let mut last = (0, Instant::now());
    while rx.count() < n {
        bar.set_position(rx.count() as u64);
        if rx.count() > last.0 {
            last = (rx.count(), Instant::now());
        }
        if last.1.elapsed() > Duration::from_secs(60) || t0.elapsed() > Duration::from_secs(1800) {
            bail!("{} of {n} events delivered, none in the last minute: see webhook_deliveries.last_error", rx.count());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    Ok(t0.elapsed().as_secs_f64())
}

/// A recorder run on a fresh campaign while the sequencer and a deliverer send its events to a
/// local receiver through an endpoint of `concurrency` (`None`: the defaults); events per second.
async fn beside_deliveries(s: &Store, args: &Args, concurrency: Option<i64>, label: &str) -> Result<f64> {
    let rx = Receiver::start(Mode::Ok, 2);
    let (campaign, ev) = claimed_campaign(s, label, args.calls).await?;
    let id = endpoint(s, &rx, campaign, concurrency).await?;
    let stop = pipeline(s, Arc::new(Summary::default()))?;
    let rate = record(s, &ev, args.batch, label).await?;
    let _ = stop.send(true);
    // Its backlog must not be drained beside the next run.
    s.delete_webhook(id).await?;
    Ok(rate)
}

/// The recorder runs compared, in the order of the first round.
#[derive(Clone, Copy, Debug)]
enum Run {
    Off,
    Log,
    Busy,
    Defaults,
}

const RUNS: [(Run, &str); 4] = [
    (Run::Off, "off (events.enabled = false)"),
    (Run::Log, "log (the default)"),
    (Run::Busy, "log + delivering at full speed"),
    (Run::Defaults, "log + delivering, endpoint defaults"),
];

/// One recorder run; events per second. The log's backlog is numbered first, untimed: a run
/// beside deliveries numbers only its own events, as a sequencer that keeps up does.
async fn recorder_run(s: &Store, args: &Args, run: Run) -> Result<f64> {
    while s.sequence_events(10_000).await?.events > 0 {}
    match run {
        Run::Off => {
            dialer_store::set_events_enabled(false);
            let (_, ev) = claimed_campaign(s, "off", args.calls).await?;
            let rate = record(s, &ev, args.batch, "off").await;
            dialer_store::set_events_enabled(true);
            rate
        }
        Run::Log => {
            let (_, ev) = claimed_campaign(s, "log", args.calls).await?;
            record(s, &ev, args.batch, "log").await
        }
        Run::Busy => beside_deliveries(s, args, Some(args.concurrency), "log+deliver").await,
        Run::Defaults => beside_deliveries(s, args, None, "log+deliver at defaults").await,
    }
}

/// Deliveries per second: a campaign's events, numbered once its endpoint exists (an endpoint
/// reads the log from its head when it was created; the backlog before is numbered first,
/// untimed), sent to a local receiver.
async fn delivery_run(s: &Store, args: &Args) -> Result<Delivered> {
    let rx = Receiver::start(Mode::Ok, 1);
    while s.sequence_events(10_000).await?.events > 0 {}
    let (logged, ev) = claimed_campaign(s, "deliveries", args.deliver_calls).await?;
    record(s, &ev, args.batch, "deliveries").await?;
    let id = endpoint(s, &rx, logged, Some(args.concurrency)).await?;
    let summary = Arc::new(Summary::default());
    let t0 = Instant::now();
    let stop = pipeline(s, summary.clone())?;
    let per_call = 4 + 1; // queued, started, answered, completed; + the campaign's start
    let want = args.deliver_calls * per_call - args.deliver_calls + 1;
    let secs = drained(&rx, want, t0).await?;
    let _ = stop.send(true);
    s.delete_webhook(id).await?;
    Ok(Delivered { events: want, secs, peak: rx.peak_concurrency(), summary: summary.json() })
}

/// What the delivery run measured: events delivered, seconds, peak in flight at the receiver,
/// the deliverer's `/metrics/summary` figures.
struct Delivered {
    events: usize,
    secs: f64,
    peak: u64,
    summary: serde_json::Value,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub async fn run(args: Args) -> Result<()> {
    // A durable PostgreSQL, not the tests' shared server, which runs without fsync for speed:
    // on that one the recorder is bound by CPU rather than by its commits, and the figures would
    // not be an operator's.
    let (url, _dir) = args.db.database()?;
    let s = dialer_testkit::fixtures::open(&url).await;
    let delivered = delivery_run(&s, &args).await?;
    // Rounds of the four runs, each round in another order (the tables grow from run to run, and
    // the machine's load drifts): a ratio compares the runs of one round.
    let mut rates = vec![[0.0; 4]; args.rounds];
    for (r, round) in rates.iter_mut().enumerate() {
        for k in 0..RUNS.len() {
            let i = (k + r) % RUNS.len();
            round[i] = recorder_run(&s, &args, RUNS[i].0).await?;
        }
    }
    report(&args, &s, &rates, delivered)
}

/// Prints the table and writes the JSON.
fn report(args: &Args, s: &Store, rates: &[[f64; 4]], d: Delivered) -> Result<()> {
    let (want, secs, peak, figures) = (d.events, d.secs, d.peak, d.summary);
    println!(
        "bench webhooks: {} calls a recorder run, {} rounds of the four runs (rotated), {} calls' events delivered, recorder batches of {}, store {}",
        args.calls,
        args.rounds,
        args.deliver_calls,
        args.batch,
        s.kind().as_str()
    );
    println!("{:<38} {:>10} {:>10} {:>20}", "recorder (status events/s)", "median/s", "vs off", "vs off, each round");
    let mut ratios = serde_json::Map::new();
    for (i, (_, name)) in RUNS.iter().enumerate() {
        let each: Vec<f64> = rates.iter().map(|r| r[i] / r[0]).collect();
        let shown: Vec<String> = each.iter().map(|v| format!("{v:.2}")).collect();
        let rate = median(rates.iter().map(|r| r[i]).collect());
        println!("{name:<38} {rate:>10.0} {:>10.2} {:>20}", median(each.clone()), shown.join(" "));
        ratios.insert(name.to_string(), json!({"median_events_per_s": rate, "vs_off_median": median(each.clone()), "vs_off_each_round": each, "events_per_s_each_round": rates.iter().map(|r| r[i]).collect::<Vec<_>>()}));
    }
    let deliveries = want as f64 / secs;
    println!(
        "deliveries: {want} events to one endpoint (concurrency {}) in {secs:.1} s = {deliveries:.0}/s; peak in flight at the receiver {peak}",
        args.concurrency
    );
    let out = json!({
        "calls": args.calls, "rounds": args.rounds, "deliver_calls": args.deliver_calls, "batch": args.batch, "store": s.kind().as_str(),
        "recorder": ratios, "deliveries": want, "deliveries_per_s": deliveries, "concurrency": args.concurrency,
        "receiver_peak_in_flight": peak, "summary": figures,
    });
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
