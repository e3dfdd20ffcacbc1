//! `dialer`: the one command of the product.
//!
//! - `dialer up`: everything in one process with no servers (SQLite in `--data-dir`).
//! - `dialer control-plane`: the REST API against the configured store (PostgreSQL in production).
//! - `dialer dataplane`: the thread-per-core dialer.
//! - `dialer migrate`: applies the SQL migrations and exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dialer::config::{Config, TelemetrySettings, tuning};
use dialer_store::{Store, redact};
use opentelemetry_sdk::trace::SdkTracerProvider;

#[derive(Debug, Parser)]
#[command(name = "dialer", version, about = "High-throughput outbound voice dialer")]
struct Cli {
    /// TOML configuration file (every key optional; environment variables override it).
    #[arg(long, global = true, env = "DIALER_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "DIALER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Embedded all-in-one: API, scheduler and data plane in one process, SQLite, no servers.
    Up {
        /// Directory holding the SQLite database.
        #[arg(long, default_value = "./data", env = "DIALER_DATA_DIR")]
        data_dir: PathBuf,
        /// Address of the REST API (overrides api.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data-plane tuning file; default: one shard per CPU, no pinning.
        #[arg(long, env = "DIALER_TUNING")]
        tuning: Option<PathBuf>,
    },
    /// The control plane: REST API against the configured store.
    ControlPlane {
        /// Address of the REST API (overrides api.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// The data plane: thread-per-core dialer reading the dispatch topic, leasing from Redis.
    Dataplane {
        /// Per-machine tuning file (see tuning/).
        #[arg(long, default_value = "tuning/laptop.toml", env = "DIALER_TUNING")]
        tuning: PathBuf,
        /// Validate the tuning file, print the effective settings and exit.
        #[arg(long)]
        check: bool,
        /// Admin address serving /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9101", env = "DIALER_DATAPLANE_ADMIN")]
        admin: SocketAddr,
        /// Directory of the attempt journal when the tuning file sets none (journal.dir).
        #[arg(long, default_value = "data/journal", env = "DIALER_JOURNAL_DIR")]
        journal_dir: PathBuf,
        /// With static assignment over several processes: this process's index (shards.instance).
        #[arg(long, env = "DIALER_INSTANCE")]
        instance: Option<usize>,
        /// With static assignment over several processes: how many there are (shards.instances).
        #[arg(long, env = "DIALER_INSTANCES")]
        instances: Option<usize>,
    },
    /// Show or change the live concurrency caps in the shared (Redis) limiter, without restarting
    /// anything: overrides take effect at the next lease update of every core.
    Limits {
        /// Override the global cap (TELEPHONY_GLOBAL_MAX_CONCURRENCY) live.
        #[arg(long)]
        global: Option<u32>,
        /// Remove the live global override (back to each process's configured cap).
        #[arg(long, conflicts_with = "global")]
        clear_global: bool,
        /// Campaign whose cap to override (with --cap or --clear).
        #[arg(long)]
        campaign: Option<uuid::Uuid>,
        #[arg(long, requires = "campaign")]
        cap: Option<u32>,
        #[arg(long, requires = "campaign", conflicts_with = "cap")]
        clear: bool,
        /// Recount the counters from the leases and report drift.
        #[arg(long)]
        reconcile: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// Directory of the SQLite database when no store URL is configured.
        #[arg(long, default_value = "./data", env = "DIALER_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// Logs (text or JSON lines, `RUST_LOG` filter) and, when `telemetry.otlp_endpoint` is set,
/// spans exported over OTLP/HTTP; the returned provider flushes them at exit. Runs before the
/// tokio runtime exists: the OTLP exporter's blocking HTTP client must not live inside it.
fn init_logging(json: bool, t: &TelemetrySettings) -> Result<Option<SdkTracerProvider>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed()
    };
    let fmt = fmt.with_filter(filter);
    if t.otlp_endpoint.is_empty() {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(None);
    }
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = if t.otlp_endpoint.ends_with("/v1/traces") {
        t.otlp_endpoint.clone()
    } else {
        format!("{}/v1/traces", t.otlp_endpoint.trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&endpoint)
        .build()
        .with_context(|| format!("telemetry.otlp_endpoint: cannot build the OTLP exporter for {endpoint}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(t.service_name.clone()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("dialer"))
        .with_filter(tracing_subscriber::EnvFilter::new(&t.span_filter));
    tracing_subscriber::registry().with(fmt).with(spans).init();
    tracing::info!(%endpoint, service = %t.service_name, "exporting spans over OTLP/HTTP");
    Ok(Some(provider))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

/// `dialer up`'s provider: its shards fetch prompts from this process's own API (its first
/// key, when it has keys) unless `provider.prompts_url` says otherwise.
fn embedded_provider(cfg: &Config) -> dialer_dataplane::ProviderSettings {
    let mut p = cfg.provider.clone();
    if p.prompts_url.is_empty() {
        let mut at = cfg.api.listen;
        if at.ip().is_unspecified() {
            at.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
        }
        p.prompts_url = format!("http://{at}");
        if p.prompts_api_key.is_none() {
            p.prompts_api_key = cfg.api.keys.first().map(|k| k.0.clone());
        }
    }
    p
}

/// `dialer up`: API, scheduler, data plane and recorder in one process over the in-process bus
/// and limiter.
async fn run_embedded(cfg: &Config, url: &str, tuning_path: Option<&Path>, data_dir: &Path) -> Result<()> {
    let store = open_store(cfg, url).await?;
    let timeline = open_timeline(cfg).await?;
    let tuning = match tuning_path {
        Some(p) => tuning::load(p, cfg.limits.semaphore_ttl).context("refusing to start")?,
        None => {
            let mut t = dialer_dataplane::Tuning::default();
            t.shards.count = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
            t.shards.partitions = (t.shards.count as i32).max(8);
            t
        }
    };
    let mut tuning = tuning;
    if tuning.journal.dir.is_empty() {
        tuning.journal.dir = data_dir.join("journal").display().to_string();
    }
    // Only its own SQLite file tells it that nothing else is dialling these calls; on a shared
    // PostgreSQL another process may be, and the reaper resolves what was abandoned instead.
    let may_be_up = if store.kind() == dialer_store::StoreKind::Sqlite {
        recover(cfg, &store, timeline.as_ref(), Path::new(&tuning.journal.dir)).await?
    } else {
        tracing::info!("store is not the embedded SQLite: no recovery at start, the reaper resolves abandoned calls");
        Default::default()
    };
    let ends = dialer_bus::MemoryBus::open(tuning.shards.count, tuning.shards.partitions, 65_536, 65_536);
    let limiter = std::sync::Arc::new(dialer_limiter::LocalBackend::default());
    hold_for_previous_run(&limiter, cfg, &may_be_up);
    let dp = dialer_dataplane::Dataplane::start(dialer_dataplane::DataplaneOptions {
        tuning: tuning.clone(),
        bus: dialer_dataplane::BusChoice::Memory { sources: ends.shard_sources, status: ends.status_sink },
        limiter: dialer_dataplane::LimiterChoice::Local(limiter.clone()),
        global_cap: cfg.limits.global_max_concurrency,
        per_campaign_ceiling: cfg.limits.per_campaign_max_concurrency,
        provider: embedded_provider(cfg),
        tracker: tracker(cfg)?,
        instance: format!("up-{}", std::process::id()),
        left_up: may_be_up.values().map(|&n| n as usize).sum(),
    })?;
    // Stopped in dependency order: the scheduler (and reaper), then the data plane (its calls
    // finish within the grace period), then the recorder (it drains every outcome), then the store.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (stop_recorder, recorder_stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let reaper = tokio::spawn(reaper(cfg, &store, &timeline).run(wait(stopped.clone())));
    let scheduler = tokio::spawn(scheduler(cfg, &store, ends.dispatch).run(wait(stopped.clone())));
    let recorder = dialer_control_plane::recorder::Recorder::new(
        store.clone(),
        ends.status_source,
        &cfg.scheduler,
        cfg.provider.seed,
        timeline.clone(),
    );
    let recorder = tokio::spawn(recorder.run(wait(recorder_stopped)));
    let reconciler = tokio::spawn(dialer_control_plane::run_reconciler(
        dialer_limiter::Backend::Local(limiter),
        cfg.limits.reconcile_every,
        wait(stopped.clone()),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.api.listen).await.with_context(|| {
        format!("cannot listen on {}; is another process using it? pick another with --listen", cfg.api.listen)
    })?;
    tracing::info!(listen = %cfg.api.listen, shards = tuning.shards.count, "dialer up: API, scheduler, data plane and recorder running");
    let checks = vec![
        dialer_dataplane::admin::shards_alive_check(dp.health()),
        dialer_dataplane::admin::shards_check(dp.health()),
    ];
    seal_secrets(cfg, &store).await?;
    let app = api_app(cfg, &store, timeline, checks, || wait(stopped.clone()))?;
    dialer_control_plane::serve(listener, app, shutdown_signal()).await?;
    // Stop dispatching, let the data plane finish its calls, record their outcomes.
    let _ = stop.send(true);
    let _ = scheduler.await;
    let _ = reaper.await;
    dp.shutdown();
    let reports = tokio::task::spawn_blocking(move || dp.join()).await??;
    let unfinished: u64 = reports.iter().map(|r| r.unfinished).sum();
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "calls still waiting or up at the end of the grace period: resolved at the next start"
        );
    }
    let _ = stop_recorder.send(true);
    let _ = recorder.await;
    let _ = reconciler.await;
    store.close().await;
    Ok(())
}

/// Webhook secrets at rest: every stored secret opens with `DIALER_SECRETS_KEY`, and those
/// stored before it was set are sealed now; a secret that does not open refuses the start.
async fn seal_secrets(cfg: &Config, store: &Store) -> Result<()> {
    let sealer = dialer_control_plane::secrets::Sealer::new(cfg.webhooks.secrets_key.as_ref());
    let n = dialer_control_plane::secrets::prepare(store, &sealer).await.context("refusing to start")?;
    if n > 0 {
        tracing::info!(endpoints = n, "webhook secrets stored before DIALER_SECRETS_KEY was set are sealed now");
    }
    Ok(())
}

/// The API with the event pipeline (webhooks, the live stream) running until `shutdown()`.
fn api_app<F>(
    cfg: &Config,
    store: &Store,
    timeline: Option<dialer_store::CqlTimeline>,
    checks: Vec<dialer_control_plane::observability::ReadyCheck>,
    shutdown: impl Fn() -> F,
) -> Result<axum::Router>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let events = dialer_control_plane::spawn_events(&cfg.events, &cfg.webhooks, store, shutdown)
        .context("starting webhook delivery (its HTTP client)")?;
    let serving = dialer_control_plane::Serving {
        api: cfg.api.clone(),
        calling_rules: cfg.calling_rules.clone(),
        guard: cfg.limits.api_guard(),
        timeline,
        checks,
        events,
        global_cap: cfg.limits.global_max_concurrency,
    };
    Ok(dialer_control_plane::app_serving(store.clone(), serving))
}

/// The scheduler of `[scheduler]`, `[limits]` and `[calling_rules]`, publishing to `sink`.
fn scheduler<S: dialer_bus::dispatch::DispatchSink>(
    cfg: &Config,
    store: &Store,
    sink: S,
) -> dialer_control_plane::scheduler::Scheduler<S> {
    dialer_control_plane::scheduler::Scheduler {
        store: store.clone(),
        sink,
        clock: std::sync::Arc::new(dialer_control_plane::scheduler::SystemClock),
        settings: cfg.scheduler.clone(),
        limits: cfg.limits.clone(),
        calling_rules: cfg.calling_rules.clone(),
    }
}

/// The reaper of `[scheduler]`'s timings and the provider's longest call.
fn reaper(
    cfg: &Config,
    store: &Store,
    timeline: &Option<dialer_store::CqlTimeline>,
) -> dialer_control_plane::reaper::Reaper {
    let timings = dialer_control_plane::reaper::ReaperConfig::new(&cfg.scheduler, cfg.provider.longest_call());
    dialer_control_plane::reaper::Reaper::new(store.clone(), timeline.clone(), timings, cfg.provider.seed)
}

/// Counts the previous run's calls that may still be up (a killed process hangs up nothing)
/// against the caps, under a lease of their own that expires when none of them can be up any
/// more (the longest call from now): the new run never takes a campaign or the whole over its cap
/// at the carrier.
fn hold_for_previous_run(
    limiter: &dialer_limiter::LocalBackend,
    cfg: &Config,
    may_be_up: &std::collections::HashMap<uuid::Uuid, u32>,
) {
    if may_be_up.is_empty() {
        return;
    }
    let reqs: Vec<dialer_limiter::SyncRequest> = may_be_up
        .iter()
        .map(|(campaign, n)| dialer_limiter::SyncRequest {
            campaign: *campaign,
            want: *n,
            generation: 1,
            campaign_cap: cfg.limits.per_campaign_max_concurrency,
            in_use: *n,
            demand: *n,
            weight: 1,
        })
        .collect();
    let ttl = cfg.provider.longest_call();
    limiter.sync("previous-run", ttl, cfg.limits.global_max_concurrency, 0, &reqs);
}

/// The embedded mode's recovery at start: the previous run's calls still queued or in progress
/// are resolved at once (its bus and calls died with it), the journal saying which were dialled;
/// then its journal is retired. Returns, per campaign, the calls that may still be up.
async fn recover(
    cfg: &Config,
    store: &Store,
    timeline: Option<&dialer_store::CqlTimeline>,
    journal: &Path,
) -> Result<std::collections::HashMap<uuid::Uuid, u32>> {
    let t = std::time::Instant::now();
    let dialled = dialer_dataplane::journal::dialled_attempts(journal).context("reading the attempt journal")?;
    let longest = cfg.provider.longest_call();
    let r = dialer_control_plane::reaper::recover_embedded(store, timeline, &dialled, longest, cfg.provider.seed)
        .await
        .context("resolving the previous run's calls")?;
    dialer_dataplane::journal::retire(journal).context("retiring the previous run's journal")?;
    if r.given_back + r.unknown_outcome > 0 {
        tracing::warn!(
            given_back = r.given_back,
            unknown_outcome = r.unknown_outcome,
            ms = t.elapsed().as_millis() as u64,
            "recovered the previous run's calls: never dialled ones given back; dialled ones recorded as unknown_outcome (retried by policy once they cannot be up, and counted against the caps until then)"
        );
    }
    Ok(r.may_be_up)
}

/// The store at `url`, migrated; a PostgreSQL that is not answering yet is waited for
/// ([`dialer_telemetry::startup::until_up`]). A SQLite file is not a server: a path that
/// cannot be opened stops the process at once.
async fn open_store(cfg: &Config, url: &str) -> Result<Store> {
    let server = !url.starts_with("sqlite:");
    let transient = |e: &dialer_store::StoreError| {
        server && matches!(e, dialer_store::StoreError::Unavailable(_)) && !e.is_refusal()
    };
    dialer_telemetry::startup::until_up("the store", dialer_telemetry::startup::STARTUP_WAIT, transient, || {
        Store::open(url, &cfg.store)
    })
    .await
    .with_context(|| format!("opening the store at {}", redact(url)))
}

/// The CQL timeline of `[timeline]`, if any; a node that is not answering yet (restarting) is
/// waited for, a wrong setting is not.
async fn open_timeline(cfg: &Config) -> Result<Option<dialer_store::CqlTimeline>> {
    let transient =
        |e: &dialer_store::timeline::TimelineError| !matches!(e, dialer_store::timeline::TimelineError::Config { .. });
    dialer_telemetry::startup::until_up(
        "the CQL timeline store",
        dialer_telemetry::startup::STARTUP_WAIT,
        transient,
        || dialer_store::CqlTimeline::open(&cfg.timeline),
    )
    .await
    .context("connecting the CQL timeline store")
}

async fn serve_api(cfg: &Config, url: &str) -> Result<()> {
    let store = open_store(cfg, url).await?;
    let mut checks = Vec::new();
    if !cfg.limits.redis_url.is_empty() {
        let r = dialer_telemetry::startup::until_up(
            "the limiter's Redis",
            dialer_telemetry::startup::STARTUP_WAIT,
            dialer_limiter::LimiterError::is_unavailable,
            || {
                dialer_limiter::RedisBackend::connect(
                    &cfg.limits.redis_url,
                    &cfg.limits.redis_key_prefix,
                    std::time::Duration::from_secs(2),
                )
            },
        )
        .await
        .context("connecting to the limiter's Redis (limits.redis_url)")?;
        checks.push(dialer_control_plane::observability::redis_check(r.clone()));
        let every = cfg.limits.reconcile_every;
        tokio::spawn(dialer_control_plane::run_reconciler(dialer_limiter::Backend::Redis(r), every, shutdown_signal()));
    }
    let timeline = open_timeline(cfg).await?;
    if cfg.bus.kind == dialer_bus::BusKind::Kafka {
        checks.push(spawn_kafka_pipeline(cfg, &store, timeline.clone()).await?);
    } else {
        tracing::warn!(
            "bus.kind is \"memory\": the control plane serves the API only; set bus.kind = \"kafka\" to schedule and record"
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.api.listen).await.with_context(|| {
        format!("cannot listen on {}; is another process using it? pick another with --listen", cfg.api.listen)
    })?;
    tracing::info!(listen = %cfg.api.listen, store = store.kind().as_str(), "API listening");
    seal_secrets(cfg, &store).await?;
    let app = api_app(cfg, &store, timeline, checks, shutdown_signal)?;
    dialer_control_plane::serve(listener, app, shutdown_signal()).await?;
    store.close().await;
    Ok(())
}

/// The scheduler (dispatch topic) and the recorder (status topic) of the distributed mode; the
/// broker's readiness check.
async fn spawn_kafka_pipeline(
    cfg: &Config,
    store: &Store,
    timeline: Option<dialer_store::CqlTimeline>,
) -> Result<dialer_control_plane::observability::ReadyCheck> {
    let b = &cfg.bus;
    dialer_bus::kafka::create_topics(&b.brokers, &cfg.bus.topics())
        .await
        .with_context(|| format!("creating topics on {}", b.brokers))?;
    let clients = dialer_bus::kafka::ClientSettings::new(&b.brokers);
    let producer = clients.producer("dialer-control-plane").context("Kafka producer")?;
    let sink = dialer_bus::dispatch::KafkaDispatchSink::new(producer.clone(), &b.dispatch_topic);
    tokio::spawn(scheduler(cfg, store, sink).run(shutdown_signal()));
    tokio::spawn(reaper(cfg, store, &timeline).run(shutdown_signal()));
    let ready = dialer_bus::kafka::ready_check(&producer, &b.dispatch_topic);
    let sources = dialer_bus::status::KafkaStatusSource::group(
        &clients,
        ("dialer-recorder", &b.recorder_group(), &b.status_topic),
        (&producer, &b.dead_letter_topic),
        cfg.scheduler.recorder_workers,
        &b.instance_id,
    )
    .context("Kafka consumers of the status topic")?;
    for (i, source) in sources.into_iter().enumerate() {
        let seed = cfg.provider.seed.wrapping_add(i as u64);
        let recorder = dialer_control_plane::recorder::Recorder::new(
            store.clone(),
            source,
            &cfg.scheduler,
            seed,
            timeline.clone(),
        );
        tokio::spawn(recorder.run(shutdown_signal()));
    }
    Ok(ready)
}

/// Where a data-plane process sits: its journal, its slice of a static assignment.
#[derive(Debug)]
struct Placement {
    journal_dir: PathBuf,
    instance: Option<usize>,
    instances: Option<usize>,
}

/// The provider's independent tracker, with its ledger file when `provider.ledger` is set.
fn tracker(cfg: &Config) -> Result<std::sync::Arc<dialer_dataplane::Tracker>> {
    let cap = cfg.limits.global_max_concurrency;
    if cfg.provider.ledger.is_empty() {
        return Ok(dialer_dataplane::Tracker::new(cap));
    }
    dialer_dataplane::Tracker::with_ledger(cap, Path::new(&cfg.provider.ledger))
        .with_context(|| format!("provider.ledger: cannot append to {}", cfg.provider.ledger))
}

async fn run_dataplane(
    cfg: &Config,
    tuning_path: &Path,
    check: bool,
    admin: SocketAddr,
    placement: &Placement,
) -> Result<()> {
    let ttl = cfg.limits.semaphore_ttl;
    let mut tuning = tuning::load(tuning_path, ttl).context("refusing to start")?;
    if tuning.journal.dir.is_empty() {
        tuning.journal.dir = placement.journal_dir.display().to_string();
    }
    if let Some(i) = placement.instance {
        tuning.shards.instance = i;
    }
    if let Some(n) = placement.instances {
        tuning.shards.instances = n;
    }
    tuning::validate(&tuning, ttl).context("refusing to start")?;
    if check {
        println!("# effective settings of {}\n{}", tuning_path.display(), toml::to_string_pretty(&tuning)?);
        return Ok(());
    }
    anyhow::ensure!(
        cfg.bus.kind == dialer_bus::BusKind::Kafka,
        "the data plane reads the dispatch topic: set bus.kind = \"kafka\" and bus.brokers (KAFKA_BROKERS); \
         the in-process bus exists only inside `dialer up`"
    );
    dialer_bus::kafka::create_topics(&cfg.bus.brokers, &cfg.bus.topics())
        .await
        .with_context(|| format!("creating topics on {}", cfg.bus.brokers))?;
    let partitions = dialer_bus::kafka::partition_count(&cfg.bus.brokers, &cfg.bus.dispatch_topic)
        .await
        .with_context(|| format!("reading the dispatch topic's metadata on {}", cfg.bus.brokers))?;
    match tuning.check_dispatch_partitions(partitions) {
        Ok(None) => {}
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Err(e) => anyhow::bail!("refusing to start: {e}"),
    }
    let limiter = if cfg.limits.redis_url.is_empty() {
        tracing::warn!("limits.redis_url is empty: caps hold for this process only (in-process limiter)");
        dialer_dataplane::LimiterChoice::Local(std::sync::Arc::new(dialer_limiter::LocalBackend::default()))
    } else {
        dialer_dataplane::LimiterChoice::Redis {
            url: cfg.limits.redis_url.clone(),
            prefix: cfg.limits.redis_key_prefix.clone(),
        }
    };
    let instance = format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
    );
    let dp = dialer_dataplane::Dataplane::start(dialer_dataplane::DataplaneOptions {
        tuning: tuning.clone(),
        bus: dialer_dataplane::BusChoice::Kafka(cfg.bus.clone()),
        limiter,
        global_cap: cfg.limits.global_max_concurrency,
        per_campaign_ceiling: cfg.limits.per_campaign_max_concurrency,
        provider: cfg.provider.clone(),
        tracker: tracker(cfg)?,
        instance,
        left_up: 0,
    })?;
    let admin_app = dialer_dataplane::admin::router(dp.health());
    let listener = tokio::net::TcpListener::bind(admin)
        .await
        .with_context(|| format!("cannot listen on the admin address {admin}; pick another with --admin"))?;
    tokio::spawn(dialer_control_plane::serve(listener, admin_app, shutdown_signal()));
    tracing::info!(shards = tuning.shards.count, brokers = %cfg.bus.brokers, %admin, "data plane running");
    shutdown_signal().await;
    dp.shutdown();
    let reports = tokio::task::spawn_blocking(move || dp.join()).await??;
    for r in reports {
        tracing::info!(
            shard = r.shard,
            received = r.received,
            dialed = r.dialed,
            unfinished = r.unfinished,
            "shard stopped"
        );
    }
    Ok(())
}

fn sqlite_dir(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data directory {}", data_dir.display()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref(), std::env::vars()).context("refusing to start")?;
    let spans = init_logging(cli.log_json, &cfg.telemetry)?;
    dialer_telemetry::install(catalogues(&cli.command));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    let r = rt.block_on(run(cli.command, cfg));
    drop(rt);
    if let Some(p) = spans
        && let Err(e) = p.shutdown()
    {
        eprintln!("spans not flushed to the OTLP endpoint: {e}");
    }
    r
}

/// The metric catalogues of the crates a command runs (each process exports what it runs).
fn catalogues(command: &Command) -> &'static [dialer_telemetry::Catalogue] {
    use dialer_telemetry::Catalogue;
    const BUS: Catalogue = dialer_bus::metrics::describe;
    const LIMITER: Catalogue = dialer_limiter::metrics::describe;
    const DATA: Catalogue = dialer_dataplane::metrics::describe;
    const CONTROL: Catalogue = dialer_control_plane::observability::describe;
    match command {
        Command::Up { .. } => &[BUS, LIMITER, DATA, CONTROL],
        Command::Dataplane { .. } => &[BUS, LIMITER, DATA],
        _ => &[BUS, LIMITER, CONTROL],
    }
}

async fn run(command: Command, mut cfg: Config) -> Result<()> {
    match command {
        Command::Up { data_dir, listen, tuning } => {
            if let Some(l) = listen {
                cfg.api.listen = l;
            }
            cfg.check_exposure().context("refusing to start")?;
            // One host, its API on loopback by default: webhook receivers beside it are the
            // common case, so private targets are allowed unless the settings say otherwise.
            cfg.webhooks.allow_private_targets.get_or_insert(true);
            let url = cfg.store_url(&data_dir);
            if url.starts_with("sqlite:") {
                sqlite_dir(&data_dir)?;
            }
            run_embedded(&cfg, &url, tuning.as_deref(), &data_dir).await
        }
        Command::ControlPlane { listen } => {
            if let Some(l) = listen {
                cfg.api.listen = l;
            }
            cfg.check_exposure().context("refusing to start")?;
            anyhow::ensure!(
                !cfg.store.url.is_empty(),
                "the control plane needs store.url (or DATABASE_URL), e.g. postgres://campaign@localhost:5432/campaign; \
                 use `dialer up` for the embedded SQLite mode"
            );
            let url = cfg.store.url.clone();
            serve_api(&cfg, &url).await
        }
        Command::Dataplane { tuning, check, admin, journal_dir, instance, instances } => {
            let placement = Placement { journal_dir, instance, instances };
            run_dataplane(&cfg, &tuning, check, admin, &placement).await
        }
        Command::Limits { global, clear_global, campaign, cap, clear, reconcile } => {
            anyhow::ensure!(
                !cfg.limits.redis_url.is_empty(),
                "live caps live in the shared limiter: set limits.redis_url (or REDIS_URL), e.g. redis://127.0.0.1:6379"
            );
            let r = dialer_limiter::RedisBackend::connect(
                &cfg.limits.redis_url,
                &cfg.limits.redis_key_prefix,
                std::time::Duration::from_secs(2),
            )
            .await
            .context("connecting to the limiter's Redis")?;
            let b = dialer_limiter::Backend::Redis(r);
            if global.is_some() || clear_global {
                b.set_global_limit(global).await?;
            }
            if let Some(c) = campaign {
                if cap.is_some() || clear {
                    b.set_campaign_limit(c, cap).await?;
                }
                let u = b.usage(c).await?;
                println!("campaign {c}: {} tokens held; global: {} tokens held", u.campaign, u.global);
            }
            if reconcile {
                let d = b.reconcile().await?;
                println!(
                    "reconciled: global drift {}, campaign drift {}, expired tokens reaped {}",
                    d.global_drift, d.campaign_drift, d.reaped_tokens
                );
            }
            Ok(())
        }
        Command::Migrate { data_dir } => {
            let url = cfg.store_url(&data_dir);
            if url.starts_with("sqlite:") {
                sqlite_dir(&data_dir)?;
            }
            let store = Store::open(&url, &cfg.store).await.with_context(|| format!("migrating {}", redact(&url)))?;
            println!("migrations applied to {} ({})", redact(&url), store.kind().as_str());
            store.close().await;
            Ok(())
        }
    }
}
