//! `bench e2e`: the seed's load-test shapes through the distributed mode — PostgreSQL, the Kafka
//! broker and Redis (started by the harness unless given), the scheduler and recorder over Kafka,
//! a data plane of `--shards` shards — from "start" until every campaign completes by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_bus::BusSettings;
use dialer_bus::dispatch::KafkaDispatchSink;
use dialer_bus::kafka::{ClientSettings, KafkaTuning};
use dialer_bus::status::KafkaStatusSource;
use dialer_control_plane::recorder::Recorder;
use dialer_control_plane::scheduler::{Scheduler, SchedulerSettings, SystemClock};
use dialer_dataplane::{
    Assignment, BusChoice, Dataplane, DataplaneOptions, LimiterChoice, ProviderSettings, Tracker, Tuning,
};
use dialer_domain::campaign::CampaignAction;
use dialer_store::{Store, StoreSettings};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10)]
    campaigns: usize,
    #[arg(long, default_value_t = 500)]
    targets: usize,
    /// Each campaign's max_concurrent_calls (the per-campaign ceiling is raised to match).
    #[arg(long, default_value_t = 100)]
    campaign_cap: u32,
    /// Mock call length range in ms.
    #[arg(long, default_value = "1-5")]
    call_ms: String,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Scheduler tick, ms.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// PostgreSQL URL (a database) instead of the harness's.
    #[arg(long)]
    database_url: Option<String>,
    /// PostgreSQL without fsync, synchronous commit and full-page writes: faster, not what
    /// operators run.
    #[arg(long)]
    fast_postgres: bool,
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long)]
    redis: Option<String>,
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// A data-plane tuning file (`tuning/*.toml`) to measure; `--shards` and the lease batch
    /// of this bench still apply on top.
    #[arg(long)]
    tuning: Option<std::path::PathBuf>,
    /// Recorders on the status topic (the product's `scheduler.recorder_workers` by default).
    #[arg(long, default_value_t = SchedulerSettings::default().recorder_workers)]
    recorders: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub async fn run(a: Args) -> Result<()> {
    dialer_telemetry::install(&[]);
    let (min_ms, max_ms) = a.call_ms.split_once('-').context("--call-ms is MIN-MAX")?;
    let (min_ms, max_ms): (u64, u64) = (min_ms.parse()?, max_ms.parse()?);
    let db = match &a.database_url {
        Some(u) => u.clone(),
        None => crate::postgres_database(a.fast_postgres)?,
    };
    let (brokers, kafka) = crate::kafka_or(a.brokers.as_ref()).await?;
    let (redis, _redis) = crate::redis_or(a.redis.as_ref())?;
    let store = Store::open(&db, &StoreSettings { max_connections: 32, ..Default::default() }).await?;
    let run = std::process::id();
    let topics = BusSettings {
        brokers: brokers.clone(),
        dispatch_topic: format!("e2e.{run}.dispatch"),
        status_topic: format!("e2e.{run}.status"),
        group_id: format!("e2e-{run}-dp"),
        dead_letter_topic: format!("e2e.{run}.dead_letter"),
        ..BusSettings::default()
    };
    let partitions = (a.shards as i32).max(4);
    dialer_bus::kafka::ensure_topics(
        &brokers,
        &[(&topics.dispatch_topic, partitions), (&topics.status_topic, partitions), (&topics.dead_letter_topic, 1)],
    )
    .await?;
    let ids = create_campaigns(&a, &store).await?;
    let ledger_dir = tempfile::Builder::new().prefix("dialer-e2e-").tempdir()?;
    let tracker = Tracker::with_ledger(1_000_000, &ledger_dir.path().join("ledger-0"))?;
    for id in &ids {
        tracker.set_campaign_cap(*id, a.campaign_cap);
    }
    let calls = ProviderSettings {
        min_call: Duration::from_millis(min_ms),
        max_call: Duration::from_millis(max_ms),
        max_ring: Duration::ZERO,
        ..ProviderSettings::default()
    };
    let dp = start_dataplane(&a, &topics, partitions, redis, calls, &tracker)?;
    let (sched, stop, recorder) = start_pipeline(&a, &store, &topics)?;
    let (cost0, pg0) = (crate::procstat::sample(), crate::procstat::pg_counts(&db).await);
    for id in &ids {
        store.transition(*id, CampaignAction::Start).await?;
    }
    let mut drive = drive(&a, &store, &ids, &sched).await?;
    drive.cost = Some((cost0, crate::procstat::sample(), pg0, crate::procstat::pg_counts(&db).await));
    let _ = stop.send(true);
    let _ = recorder.await;
    dp.shutdown();
    tokio::task::spawn_blocking(move || dp.join()).await??;
    // What the pipeline wrote to the broker (its own broker only: its log directory is ours).
    let broker_bytes = kafka.as_ref().map(|k| (k.log_bytes(&topics.dispatch_topic), k.log_bytes(&topics.status_topic)));
    report(&a, &store, &ids, &drive, ledger_dir.path(), &tracker, broker_bytes).await
}

async fn create_campaigns(a: &Args, store: &dialer_control_plane::Store) -> Result<Vec<uuid::Uuid>> {
    println!("creating {} campaigns × {} targets…", a.campaigns, a.targets);
    let run = std::process::id();
    let mut ids = Vec::new();
    for c in 0..a.campaigns {
        let t: Vec<_> = (0..a.targets).map(|k| json!({"phone_number": format!("+1{:03}{k:07}", 200 + c)})).collect();
        let req: CreateCampaignRequest = serde_json::from_value(json!({
            "name": format!("e2e-{run}-{c}"), "max_concurrent_calls": a.campaign_cap,
            "retry_policy": {"max_attempts": 3, "base_delay": "100ms", "max_delay": "1s"}, "targets": t
        }))?;
        ids.push(store.create_campaign(&req.validate(10_000_000).map_err(|e| anyhow::anyhow!("{e}"))?).await?.id);
    }
    Ok(ids)
}

fn start_dataplane(
    a: &Args,
    topics: &BusSettings,
    partitions: i32,
    redis: String,
    mock: ProviderSettings,
    tracker: &std::sync::Arc<Tracker>,
) -> Result<Dataplane> {
    let mut tuning = match &a.tuning {
        Some(p) => dialer::config::tuning::load(p, Duration::from_secs(600))?,
        None => Tuning::default(),
    };
    tuning.shards.count = a.shards;
    if tuning.shards.cpus.len() != tuning.shards.count {
        tuning.shards.cpus.clear(); // the file pins another shard count
    }
    tuning.shards.partitions = partitions;
    tuning.shards.assignment = Assignment::Static;
    tuning.lease.batch = 256;
    tuning.lease.low_water = 64;
    let run = std::process::id();
    Ok(Dataplane::start(DataplaneOptions {
        tuning,
        bus: BusChoice::Kafka(topics.clone()),
        limiter: LimiterChoice::Redis { url: redis, prefix: format!("{{e2e{run}}}:") },
        global_cap: 1_000_000,
        per_campaign_ceiling: a.campaign_cap,
        provider: mock,
        tracker: tracker.clone(),
        instance: format!("e2e-{run}"),
        left_up: 0,
    })?)
}

/// The recorder (running until told to stop) and the scheduler (ticked by [`drive`]).
fn start_pipeline(
    a: &Args,
    store: &dialer_control_plane::Store,
    topics: &BusSettings,
) -> Result<(Scheduler<KafkaDispatchSink>, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)> {
    let tuning = KafkaTuning { linger_ms: 2, ..KafkaTuning::control_plane() };
    let clients = ClientSettings { brokers: topics.brokers.clone(), tuning };
    let producer = clients.producer("e2e")?;
    let sources = KafkaStatusSource::group(
        &clients,
        ("e2e-recorder", &topics.recorder_group(), &topics.status_topic),
        (&producer, &topics.dead_letter_topic),
        a.recorders,
        "",
    )?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let defaults = SchedulerSettings::default();
    let recorders: Vec<_> = sources
        .into_iter()
        .enumerate()
        .map(|(i, source)| {
            // The product's defaults (`[scheduler]` recorder_batch_max, recorder_linger_ms).
            let rec = Recorder::new(store.clone(), source, &defaults, 1 + i as u64, None);
            let mut rx = rx.clone();
            tokio::spawn(rec.run(async move {
                let _ = rx.wait_for(|v| *v).await;
            }))
        })
        .collect();
    let recorder = tokio::spawn(async move {
        for r in recorders {
            let _ = r.await;
        }
    });
    let sched = Scheduler {
        store: store.clone(),
        sink: KafkaDispatchSink::new(producer, &topics.dispatch_topic),
        clock: Arc::new(SystemClock),
        settings: SchedulerSettings { interval: Duration::from_millis(a.tick_ms), ..Default::default() },
        limits: dialer_limiter::LimitSettings { per_campaign_max_concurrency: a.campaign_cap, ..Default::default() },
        // The bench's numbers are fictitious (+1555…): the recipient's windows are off.
        calling_rules: dialer_domain::rules::CallingRules::off(),
    };
    Ok((sched, stop, recorder))
}

/// What driving the campaigns to their end measured.
struct Drive {
    drain: f64,
    timed_out: bool,
    ticks: Histogram<u64>,
    /// Events persisted in the SQL timeline's rows before the drive.
    persisted_before: i64,
    /// Events the recorders committed, from their counter once a second: (seconds since start,
    /// count). Not counted from the rows while the drive runs: that count scans the attempt
    /// rows (0.2 s of PostgreSQL's CPU at a million), which would be measured as the pipeline's.
    recorded: Vec<(f64, f64)>,
    /// Calls queued and in progress in the store, at each tick: where the calls in flight sit.
    queued: Histogram<u64>,
    in_progress: Histogram<u64>,
    /// /proc and PostgreSQL's counts at the start and the end of the drive.
    cost: Option<Cost>,
}

type Cost = (crate::procstat::Sample, crate::procstat::Sample, Option<[i64; 5]>, Option<[i64; 5]>);

/// Ticks the scheduler until every call is terminal (or `--timeout-s`), with a progress bar.
async fn drive(
    a: &Args,
    store: &dialer_control_plane::Store,
    ids: &[uuid::Uuid],
    sched: &Scheduler<KafkaDispatchSink>,
) -> Result<Drive> {
    let t0 = Instant::now();
    let pb = ProgressBar::new((a.campaigns * a.targets) as u64);
    pb.set_style(
        ProgressStyle::with_template("e2e {bar:40} {pos}/{len} terminal calls {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut ticks = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let deadline = t0 + Duration::from_secs(a.timeout_s);
    let persisted_before = crate::events_persisted(store, ids).await?;
    let mut recorded = vec![(0.0, recorded_events())];
    let mut timed_out = false;
    let mut queued = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3)?;
    let mut in_progress = queued.clone();
    loop {
        let tick0 = Instant::now();
        if let Err(e) = sched.tick().await {
            eprintln!("scheduler tick failed: {e}");
        }
        let _ = ticks.record((tick0.elapsed().as_millis() as u64).max(1));
        let crate::Progress { terminal, open, queued: q, in_progress: p, .. } = crate::progress(store, ids).await?;
        pb.set_position(terminal as u64);
        let _ = (queued.record(q.max(1) as u64), in_progress.record(p.max(1) as u64));
        if recorded.last().is_some_and(|(t, _)| t0.elapsed().as_secs_f64() - t >= 1.0) {
            recorded.push((t0.elapsed().as_secs_f64(), recorded_events()));
        }
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        if let Some(rest) = Duration::from_millis(a.tick_ms).checked_sub(tick0.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let drain = t0.elapsed().as_secs_f64();
    recorded.push((drain, recorded_events()));
    pb.finish_and_clear();
    Ok(Drive { drain, timed_out, ticks, persisted_before, recorded, queued, in_progress, cost: None })
}

/// Audits every call and attempt against the provider's ledger, prints and writes the figures;
/// fails on anything lost, placed twice or inconsistent.
async fn report(
    a: &Args,
    store: &dialer_control_plane::Store,
    ids: &[uuid::Uuid],
    d: &Drive,
    ledgers: &std::path::Path,
    tracker: &Tracker,
    broker_bytes: Option<(u64, u64)>,
) -> Result<()> {
    let total = (a.campaigns * a.targets) as i64;
    let crate::Progress { terminal, .. } = crate::progress(store, ids).await?;
    let mismatched = crate::stats_mismatches(store, ids).await?;
    let placed: Vec<(uuid::Uuid, u32)> =
        crate::chaos::read_ledgers(ledgers)?.into_iter().map(|p| (p.call, p.attempt)).collect();
    let audit = crate::audit_attempts(store, ids, &placed).await?;
    let dials = placed.len() as i64;
    let (drain, p) = (d.drain, &d.recorded);
    let events = crate::events_persisted(store, ids).await? - d.persisted_before;
    let peak = p.windows(2).map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0).max(1e-3)).fold(0.0, f64::max);
    let out = json!({
        "scenario": "e2e",
        "settings": {"campaigns": a.campaigns, "targets": a.targets, "campaign_cap": a.campaign_cap, "call_ms": a.call_ms, "shards": a.shards, "tick_ms": a.tick_ms},
        "cores": crate::cores(),
        "duration_s": drain,
        "drain_seconds": drain,
        "timed_out": d.timed_out,
        "dials": dials,
        "dials_per_sec": dials as f64 / drain,
        "events_persisted": events,
        "events_persisted_per_sec": events as f64 / drain,
        "events_persisted_per_sec_peak_1s": peak,
        "scheduler_tick_p50_ms": d.ticks.value_at_quantile(0.5),
        "scheduler_tick_max_ms": d.ticks.max(),
        "queued_calls_p50_max": [d.queued.value_at_quantile(0.5), d.queued.max()],
        "in_progress_calls_p50_max": [d.in_progress.value_at_quantile(0.5), d.in_progress.max()],
        "calls_not_terminal": total - terminal,
        "calls_attempts_mismatched": audit.calls_mismatched,
        "attempts_placed_twice": audit.placed_twice,
        "cap_violations": tracker.violations(),
        "stats_mismatches": mismatched,
        "recorders": a.recorders,
        "recorder": recorder_load(drain, a.recorders),
        "stage_ms_p50_p99": stage_latencies(store, ids).await?,
        "cpu_per_dial": d.cost.as_ref().map(|(a, b, ..)| crate::procstat::per_dial(a, b, dials)),
        "postgres_per_dial": d.cost.as_ref().map(|(.., p0, p1)| crate::procstat::pg_per_dial(*p0, *p1, dials)),
        // Written once by the producers, read once by the consumers: each byte crosses the
        // network twice (more with replication).
        "kafka_bytes_per_dial": broker_bytes.map(|(dispatch, status)| json!({
            "dispatch": dispatch as f64 / dials.max(1) as f64,
            "status": status as f64 / dials.max(1) as f64,
        })),
    });
    for (k, v) in out.as_object().into_iter().flatten().filter(|(k, _)| *k != "settings") {
        println!("{k:<32} {v}");
    }
    crate::write_json(a.json.as_deref(), &out)?;
    if d.timed_out || terminal != total || audit.calls_mismatched + audit.placed_twice + mismatched > 0 {
        bail!(
            "e2e failed: timed out {}, {} calls not terminal, {} calls' attempts mismatched, {} placed twice, {mismatched} stats mismatches",
            d.timed_out,
            total - terminal,
            audit.calls_mismatched,
            audit.placed_twice
        );
    }
    Ok(())
}

/// What the recorders did, from their own metrics (this process's): batches, events per batch,
/// time per batch, and the share of the drain they spent in transactions (1.0 per recorder busy
/// all the time: the recorders bound the drain).
fn recorder_load(drain: f64, recorders: usize) -> serde_json::Value {
    let text = dialer_telemetry::render().unwrap_or_default();
    let value = |name: &str| metric_value(&text, name);
    let (busy, batches) = (value("dialer_recorder_batch_seconds_sum"), value("dialer_recorder_batch_seconds_count"));
    let events = value("dialer_recorder_events_total");
    json!({
        "batches": batches,
        "events_per_batch": events / batches.max(1.0),
        "ms_per_batch": 1000.0 * busy / batches.max(1.0),
        "busy_share_per_recorder": busy / (drain * recorders.max(1) as f64),
    })
}

/// A series without labels of this process's metrics (`text`: their rendering); 0 when absent.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

/// Events this process's recorders have committed so far.
fn recorded_events() -> f64 {
    metric_value(&dialer_telemetry::render().unwrap_or_default(), "dialer_recorder_events_total")
}

/// Where a call's time goes, per call's last attempt, p50 and p99 in ms, from the rows: claimed
/// (`queued_at`, the scheduler's tick) → dialled (`started_at`, the data plane) → ended
/// (`ended_at`) → recorded (`updated_at`, the recorder's transaction).
async fn stage_latencies(store: &dialer_control_plane::Store, ids: &[uuid::Uuid]) -> Result<serde_json::Value> {
    let dialer_store::Pool::Postgres(pool) = store.pool() else {
        bail!("stage latencies read PostgreSQL");
    };
    let q = |from: &str, to: &str| {
        format!(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM {to} - {from}) * 1000) \
             FROM calls c JOIN call_attempts a ON a.campaign_id = c.campaign_id AND a.call_id = c.id AND a.attempt = c.attempt_count \
             WHERE c.campaign_id = ANY($1) AND a.started_at IS NOT NULL AND a.ended_at IS NOT NULL"
        )
    };
    let mut out = serde_json::Map::new();
    for (name, from, to) in [
        ("claimed_to_dialled", "c.queued_at", "a.started_at"),
        ("dialled_to_ended", "a.started_at", "a.ended_at"),
        ("ended_to_recorded", "a.ended_at", "c.updated_at"),
    ] {
        let v: Option<Vec<f64>> = sqlx::query_scalar(&q(from, to)).bind(ids).fetch_one(pool).await?;
        out.insert(name.into(), json!(v.unwrap_or_default().iter().map(|x| x.round()).collect::<Vec<_>>()));
    }
    Ok(serde_json::Value::Object(out))
}
