//! Configuration: a TOML file, then environment overrides, then validation.
//!
//! Every key has a default, so no file is needed for the embedded mode. Unknown keys are
//! refused. Environment variables override the file; the seed platform's names are honoured
//! (`TELEPHONY_GLOBAL_MAX_CONCURRENCY`, `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`,
//! `TELEPHONY_SEMAPHORE_TTL_SEC`, `MAX_CONCURRENT_CALLS`, `DATABASE_URL`), the rest are
//! `DIALER_<SECTION>_<KEY>`. Errors name the key and the reason.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod events;
pub use events::{EventsSettings, WebhookSettings};

/// A refused configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the path given with --config")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("config key {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("config key {key} from ${var}: {source}")]
    Env { key: &'static str, var: &'static str, source: ValueError },
}

/// A value from the environment (or a directive list) that cannot be used, and what to give.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a number: give digits, e.g. 100")]
    NotANumber(String),
    #[error("{0:?} is not HOST:PORT, e.g. 127.0.0.1:8081")]
    NotAnAddress(String),
    #[error("{value:?} is not one of {known}")]
    NotKnown { value: String, known: &'static str },
    #[error(transparent)]
    Unknown(#[from] dialer_bus::settings::UnknownValue),
    #[error("{0:?}: the level must be one of trace, debug, info, warn, error, off")]
    NotALevel(String),
    #[error("no such key: see config/dialer.toml for the keys")]
    UnknownKey,
}

pub use dialer_bus::{BusKind, BusSettings};

/// Which telephony provider places the calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The seed's mock provider (answer rate, call lengths, outcomes drawn from a seed).
    #[default]
    Mock,
    /// Real calls over SIP trunks (`[[provider.trunks]]`), signalling only.
    Sip,
}

impl std::str::FromStr for ProviderKind {
    type Err = ValueError;
    fn from_str(v: &str) -> Result<ProviderKind, ValueError> {
        match v.trim() {
            "mock" => Ok(ProviderKind::Mock),
            "sip" => Ok(ProviderKind::Sip),
            _ => Err(ValueError::NotKnown { value: v.to_string(), known: "\"mock\", \"sip\"" }),
        }
    }
}

/// One SIP trunk (`[[provider.trunks]]`).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkConfig {
    /// Unique name (metrics label, logs).
    pub name: String,
    /// The carrier's SIP proxy, `host:port` (UDP).
    pub proxy: String,
    /// Domain of the Request-URI and To; the proxy's host when empty.
    pub domain: String,
    /// Digest username (401/407); empty = the trunk does not authenticate.
    pub username: String,
    /// The environment variable holding the password (never the password itself).
    pub password_env: String,
    /// The password read from `password_env` at start.
    #[serde(skip)]
    pub password: String,
    pub from_user: String,
    pub from_domain: String,
    /// Caller ID (E.164) presented when the campaign sets none; empty = `from_user`.
    pub caller_id: String,
    /// Prefixes of the caller IDs campaigns may present on this trunk; empty = any.
    pub allowed_caller_ids: Vec<String>,
    /// Calls up at once on this trunk across all data planes.
    pub max_channels: u32,
    /// INVITEs per second on this trunk across all data planes (0 = no limit).
    pub max_cps: u32,
    /// Lower is preferred; the next priority takes calls while these are all out of rotation.
    pub priority: u32,
    /// Share of calls among trunks of one priority.
    pub weight: u32,
}

impl std::fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("proxy", &self.proxy)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("max_channels", &self.max_channels)
            .field("max_cps", &self.max_cps)
            .finish_non_exhaustive()
    }
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            name: String::new(),
            proxy: String::new(),
            domain: String::new(),
            username: String::new(),
            password_env: String::new(),
            password: String::new(),
            from_user: "dialer".into(),
            from_domain: "localhost".into(),
            caller_id: String::new(),
            allowed_caller_ids: Vec::new(),
            max_channels: 100,
            max_cps: 10,
            priority: 1,
            weight: 1,
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub bus: BusSettings,
    pub provider: ProviderConfig,
    pub scheduler: SchedulerSettings,
    pub timeline: TimelineSettings,
    pub telemetry: TelemetrySettings,
    /// The recipient's calling rules of campaigns without their own (lawful US defaults:
    /// 08:00–21:00 recipient local time, Florida and Oklahoma 08:00–20:00, no attempt limits).
    pub calling_rules: dialer_domain::rules::CallingRules,
    /// The event log and the live stream (issue 20).
    pub events: EventsSettings,
    /// Webhook delivery (issue 20).
    pub webhooks: WebhookSettings,
}

/// Span export (logs always go to stderr).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is appended);
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`. Empty (the default) = no export.
    pub otlp_endpoint: String,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: String,
    /// Which spans are exported (an `EnvFilter` directive, independent of `RUST_LOG`).
    pub span_filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: String::new(),
            service_name: "dialer".into(),
            span_filter: "info,dialer_control_plane=debug,dialer_dataplane=info,tower_http=debug".into(),
        }
    }
}

/// Where the call-attempt timeline lives.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineSettings {
    /// CQL nodes (`host:port`, ScyllaDB or Cassandra); empty = the SQL `call_attempts` table.
    /// `SCYLLA_HOST` + `SCYLLA_PORT` set one node.
    pub cql_nodes: Vec<String>,
    /// `SCYLLA_KEYSPACE`.
    pub keyspace: String,
    pub replication_factor: u32,
    /// Days an attempt's row is kept on the CQL store (its TTL; the store drops it itself);
    /// 0 = for ever. Operators keep call records as long as their regulator asks (often 2–5
    /// years) and no longer.
    pub ttl_days: u32,
}

impl Default for TimelineSettings {
    fn default() -> Self {
        TimelineSettings { cql_nodes: vec![], keyspace: "dialer".into(), replication_factor: 1, ttl_days: 0 }
    }
}

/// The scheduler's pacing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Milliseconds between ticks.
    pub interval_ms: u64,
    /// Queued + dialing calls of a campaign stay under this many times its cap.
    pub inflight_factor: u32,
    /// Most calls claimed for one campaign per tick.
    pub max_batch: usize,
    /// Campaigns claimed and published at once in a tick (see `SchedulerConfig`).
    pub claim_concurrency: usize,
    /// Seconds a dispatched call may wait for a token before it expires (and is claimed again).
    pub dispatch_ttl_sec: u64,
    /// How many campaigns (those with the most active calls) get a
    /// `dialer_campaign_active_calls{campaign=…}` series; 0 turns the per-campaign series off.
    pub metrics_top_campaigns: usize,
    /// Milliseconds between sweeps of the reaper (calls whose dispatch or outcome was lost).
    pub reap_every_ms: u64,
    /// Milliseconds the reaper waits beyond a call's latest possible end before resolving it
    /// (clock skew between machines, a recorder's lag).
    pub reap_grace_ms: u64,
    /// Most status events the recorder writes in one transaction. Larger batches cost fewer
    /// pages per call (4,000 rather than 1,000 took `dialer up` on SQLite from 9.3k to 13.5k
    /// dials/s on a 300k-target campaign: `bench/up_scale.sh`), and hold the store's write
    /// lock longer.
    pub recorder_batch_max: usize,
    /// Milliseconds a recorder batch read from the broker waits to fill up (see
    /// `Recorder::linger`); 0 = take only what was fetched already.
    pub recorder_linger_ms: u64,
    /// Recorders of this process on the status topic (distributed mode), each its own consumer
    /// in the recorders' group: the broker splits the partitions between them and their
    /// transactions overlap (one recorder waits on its round trips and its commit's WAL flush
    /// most of the time). The in-process bus has one recorder.
    pub recorder_workers: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            interval_ms: 1000,
            inflight_factor: 2,
            max_batch: 5000,
            claim_concurrency: 8,
            dispatch_ttl_sec: 300,
            metrics_top_campaigns: 10,
            reap_every_ms: 10_000,
            reap_grace_ms: 30_000,
            recorder_batch_max: 4000,
            recorder_linger_ms: 20,
            recorder_workers: 2,
        }
    }
}

/// The telephony provider: the seed's mock, or SIP trunks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// `mock` or `sip` (`DIALER_PROVIDER_KIND`); an unknown kind is refused with the known ones.
    pub kind: ProviderKind,
    pub answer_rate: f64,
    pub retryable_share: f64,
    pub min_call_ms: u64,
    pub max_call_ms: u64,
    pub max_ring_ms: u64,
    pub seed: u64,
    /// Mock only: append every call placed to this file (`DIALER_PROVIDER_LEDGER`), the
    /// carrier's view that fault runs (`bench chaos`) check across processes; empty = off.
    pub ledger: String,
    /// SIP: the trunks calls go out on.
    pub trunks: Vec<TrunkConfig>,
    /// SIP: CANCEL an unanswered call after this long ringing (`no_answer`).
    pub ring_timeout_ms: u64,
    /// SIP: the address of this host the shards' UDP sockets bind to and advertise in Via and
    /// Contact (`DIALER_SIP_BIND`): an address the trunks can reach.
    pub sip_bind: String,
    /// SIP: RFC 3261 T1 in ms (Timers A, B, E, F derive from it).
    pub sip_t1_ms: u64,
    /// SIP: where answered calls' audio goes, the RTP `ip:port` of a media server named in the
    /// SDP offer; empty = this host, port 9 (discard).
    pub media_endpoint: String,
    /// SIP: hand answered calls on with REFER to this URI (an IVR, queue or agent); empty = keep
    /// them until either side hangs up or `max_call_ms` passes.
    pub refer_to: String,
    /// SIP: consecutive failures (5xx, timeouts) that take a trunk out of rotation.
    pub trunk_failures: u32,
    /// SIP: first back-off of a trunk out of rotation (doubled at each failure, up to 16 ×).
    pub trunk_backoff_ms: u64,
    /// SIP: a trunk's `max_cps` INVITEs go out over 1 s + this, so jitter up to this much between
    /// our send and the carrier's count never shows it more than `max_cps` in a second.
    pub sip_cps_margin_ms: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: ProviderKind::Mock,
            answer_rate: 0.8,
            retryable_share: 0.7,
            min_call_ms: 1000,
            max_call_ms: 5000,
            max_ring_ms: 500,
            seed: 1,
            ledger: String::new(),
            trunks: Vec::new(),
            ring_timeout_ms: 30_000,
            sip_bind: "127.0.0.1".into(),
            sip_t1_ms: 500,
            media_endpoint: String::new(),
            refer_to: String::new(),
            trunk_failures: 3,
            trunk_backoff_ms: 30_000,
            sip_cps_margin_ms: 100,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (a 1M-target create is about 40 MB).
    pub max_body_bytes: usize,
    /// Most targets in one create or targets request.
    pub max_targets_per_request: usize,
    /// Page size when `limit` is not given.
    pub default_page_size: u32,
    /// Largest `limit` accepted.
    pub max_page_size: u32,
    /// API keys; requests to `/api/v1/…` need `Authorization: Bearer KEY` (`DIALER_API_KEYS`,
    /// comma-separated). Empty = no authentication, which is allowed only while `listen` is a
    /// loopback address (the embedded default: only this machine can connect).
    pub keys: Vec<ApiKey>,
    /// Requests per second each key may make (burst: two seconds' worth); 0 = unlimited.
    pub rate_limit_per_key: u32,
    /// `GET /api/v1/campaigns/{id}` answers from memory for this long after reading the row
    /// (writes through this process drop the entry at once; changes made by other processes
    /// show within this delay); 0 = always read the store.
    pub campaign_cache_ms: u64,
}

/// An API key. Its `Debug` and serialized forms are redacted, so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(redacted)")
    }
}

impl Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("redacted")
    }
}

impl ApiConfig {
    /// Refuses to serve without keys on an address other machines can reach.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "api.keys",
                format!(
                    "the API would listen on {} (not loopback) without authentication; \
                     set DIALER_API_KEYS (or api.keys), or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://PATH`; empty = SQLite file in the data directory.
    pub url: String,
    pub max_connections: u32,
    /// Seconds to wait for a free connection before answering 503.
    pub acquire_timeout_sec: u64,
}

/// Concurrency caps, with the operator guide's names and defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `TELEPHONY_GLOBAL_MAX_CONCURRENCY`: calls in progress across all campaigns.
    pub global_max_concurrency: u32,
    /// `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`: ceiling of any campaign's own cap.
    pub per_campaign_max_concurrency: u32,
    /// `TELEPHONY_SEMAPHORE_TTL_SEC`: reclamation window of a lost concurrency slot.
    pub semaphore_ttl_sec: u64,
    /// `MAX_CONCURRENT_CALLS`: in-flight `POST /api/v1/calls` requests before 429.
    pub max_concurrent_calls: u32,
    /// `DAILY_USAGE_CAP`: accepted `POST /api/v1/calls` per UTC day and API process; 0 = off.
    pub daily_usage_cap: u64,
    /// `REDIS_URL`: the shared limiter (`redis://HOST:PORT`); empty = in-process limiter.
    pub redis_url: String,
    /// Key prefix of the limiter in Redis; its `{hash tag}` keeps the keys in one Cluster slot.
    pub redis_key_prefix: String,
    /// Seconds between reconciliations of the limiter's counters with its leases.
    pub reconcile_every_sec: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_body_bytes: 64 * 1024 * 1024,
            max_targets_per_request: 1_000_000,
            default_page_size: 100,
            max_page_size: 1000,
            keys: Vec::new(),
            rate_limit_per_key: 1000,
            campaign_cache_ms: 250,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { url: String::new(), max_connections: 16, acquire_timeout_sec: 5 }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            global_max_concurrency: 10_000,
            per_campaign_max_concurrency: 100,
            semaphore_ttl_sec: 600,
            max_concurrent_calls: 200,
            daily_usage_cap: 0,
            redis_url: String::new(),
            redis_key_prefix: "{dialer}:".into(),
            reconcile_every_sec: 60,
        }
    }
}

impl Config {
    /// The scheduler settings in the form the scheduler takes.
    pub fn scheduler_config(&self) -> crate::scheduler::SchedulerConfig {
        crate::scheduler::SchedulerConfig {
            interval: std::time::Duration::from_millis(self.scheduler.interval_ms),
            inflight_factor: self.scheduler.inflight_factor,
            max_batch: self.scheduler.max_batch,
            claim_concurrency: self.scheduler.claim_concurrency,
            dispatch_ttl: std::time::Duration::from_secs(self.scheduler.dispatch_ttl_sec),
            per_campaign_ceiling: self.limits.per_campaign_max_concurrency,
            global_cap: self.limits.global_max_concurrency,
            top_campaigns: self.scheduler.metrics_top_campaigns,
            calling_rules: self.calling_rules.clone(),
        }
    }

    /// The reaper's settings: the scheduler's dispatch deadline, the provider's longest call.
    pub fn reaper_config(&self) -> crate::reaper::ReaperConfig {
        crate::reaper::ReaperConfig {
            every: std::time::Duration::from_millis(self.scheduler.reap_every_ms),
            dispatch_ttl: std::time::Duration::from_secs(self.scheduler.dispatch_ttl_sec),
            longest_call: self.provider.longest_call(),
            grace: std::time::Duration::from_millis(self.scheduler.reap_grace_ms),
            batch: 1000,
        }
    }
}

impl ProviderConfig {
    /// The longest a call may last: the ring timeout plus the maximum call length (SIP: plus
    /// the wait for a channel and CPS slot, bounded by the dispatch deadline's reaper grace, and
    /// Timer B or F of the INVITE and the BYE).
    pub fn longest_call(&self) -> std::time::Duration {
        let ms = match self.kind {
            ProviderKind::Mock => self.max_ring_ms.saturating_add(self.max_call_ms),
            ProviderKind::Sip => {
                self.ring_timeout_ms.saturating_add(self.max_call_ms).saturating_add(self.sip_t1_ms.saturating_mul(128))
            }
        };
        std::time::Duration::from_millis(ms)
    }

    /// Reads each trunk's password from its `password_env` variable in `env`.
    fn read_passwords(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        for (i, t) in self.trunks.iter_mut().enumerate() {
            if t.password_env.is_empty() {
                continue;
            }
            match env.iter().find(|(k, _)| *k == t.password_env) {
                Some((_, v)) if !v.is_empty() => t.password = v.clone(),
                _ => {
                    return Err(invalid(
                        &format!("provider.trunks[{i}].password_env"),
                        format!("the variable {} is not set: export the trunk's password in it", t.password_env),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_sip(&self) -> Result<(), ConfigError> {
        if self.kind != ProviderKind::Sip {
            return Ok(());
        }
        if self.trunks.is_empty() {
            return Err(invalid("provider.trunks", "provider.kind = \"sip\" needs at least one [[provider.trunks]]"));
        }
        if self.sip_bind.parse::<std::net::IpAddr>().map_or(true, |ip| ip.is_unspecified()) {
            return Err(invalid("provider.sip_bind", "must be an IP address of this host the trunks can reach"));
        }
        if self.ring_timeout_ms == 0 || self.sip_t1_ms == 0 || self.max_call_ms == 0 {
            return Err(invalid(
                "provider.ring_timeout_ms",
                "ring_timeout_ms, sip_t1_ms and max_call_ms must be above 0",
            ));
        }
        if !self.media_endpoint.is_empty() && self.media_endpoint.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("provider.media_endpoint", "must be IP:PORT of the media server's RTP port"));
        }
        if !self.refer_to.is_empty() && !self.refer_to.starts_with("sip:") && !self.refer_to.starts_with("sips:") {
            return Err(invalid("provider.refer_to", "must be a SIP URI, e.g. sip:queue@ivr.example.com"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.trunks.iter().enumerate() {
            t.validate().map_err(|(k, reason)| invalid(&format!("provider.trunks[{i}].{k}"), reason))?;
            if !names.insert(t.name.as_str()) {
                return Err(invalid(&format!("provider.trunks[{i}].name"), format!("{:?} names two trunks", t.name)));
            }
        }
        Ok(())
    }
}

impl TrunkConfig {
    /// The proxy's address (resolved once at start).
    pub fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        self.proxy.to_socket_addrs().ok()?.next()
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(("name", "must be letters, digits, '.', '_' and '-'".into()));
        }
        if self.proxy_addr().is_none() {
            return Err((
                "proxy",
                format!("{:?} is not a reachable host:port, e.g. sip.carrier.example:5060", self.proxy),
            ));
        }
        if !self.username.is_empty() && self.password_env.is_empty() {
            return Err(("password_env", "a trunk with a username needs the variable holding its password".into()));
        }
        if !self.caller_id.is_empty() && dialer_domain::phone::check_e164(&self.caller_id).is_err() {
            return Err(("caller_id", format!("{:?} is not an E.164 number, e.g. +15551234567", self.caller_id)));
        }
        if self.max_channels == 0 {
            return Err(("max_channels", "must be at least 1".into()));
        }
        if self.from_user.is_empty() || self.from_domain.is_empty() {
            return Err(("from_user", "from_user and from_domain must be set".into()));
        }
        Ok(())
    }
}

/// Environment variable → config key.
const ENV_KEYS: &[(&str, &str)] = &[
    ("DIALER_CALLING_RULES_ENABLED", "calling_rules.enabled"),
    ("DIALER_CALLING_RULES_MAX_ATTEMPTS_PER_24H", "calling_rules.max_attempts_per_24h"),
    ("DIALER_CALLING_RULES_MAX_ATTEMPTS_PER_DAY", "calling_rules.max_attempts_per_day"),
    ("DIALER_API_LISTEN", "api.listen"),
    ("DIALER_API_MAX_BODY_BYTES", "api.max_body_bytes"),
    ("DIALER_API_MAX_TARGETS_PER_REQUEST", "api.max_targets_per_request"),
    ("DIALER_API_DEFAULT_PAGE_SIZE", "api.default_page_size"),
    ("DIALER_API_MAX_PAGE_SIZE", "api.max_page_size"),
    ("DIALER_API_KEYS", "api.keys"),
    ("DIALER_API_RATE_LIMIT_PER_KEY", "api.rate_limit_per_key"),
    ("DIALER_API_CAMPAIGN_CACHE_MS", "api.campaign_cache_ms"),
    ("DATABASE_URL", "store.url"),
    ("DIALER_STORE_URL", "store.url"),
    ("DIALER_STORE_MAX_CONNECTIONS", "store.max_connections"),
    ("DIALER_STORE_ACQUIRE_TIMEOUT_SEC", "store.acquire_timeout_sec"),
    ("TELEPHONY_GLOBAL_MAX_CONCURRENCY", "limits.global_max_concurrency"),
    ("TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY", "limits.per_campaign_max_concurrency"),
    ("TELEPHONY_SEMAPHORE_TTL_SEC", "limits.semaphore_ttl_sec"),
    ("MAX_CONCURRENT_CALLS", "limits.max_concurrent_calls"),
    ("DAILY_USAGE_CAP", "limits.daily_usage_cap"),
    ("REDIS_URL", "limits.redis_url"),
    ("DIALER_LIMITS_REDIS_KEY_PREFIX", "limits.redis_key_prefix"),
    ("DIALER_LIMITS_RECONCILE_EVERY_SEC", "limits.reconcile_every_sec"),
    ("DIALER_BUS_KIND", "bus.kind"),
    ("KAFKA_BROKERS", "bus.brokers"),
    ("DIALER_BUS_GROUP_ID", "bus.group_id"),
    ("DIALER_BUS_DISPATCH_PARTITIONS", "bus.dispatch_partitions"),
    ("DIALER_BUS_STATUS_PARTITIONS", "bus.status_partitions"),
    ("DIALER_BUS_REPLICATION_FACTOR", "bus.replication_factor"),
    ("DIALER_PROVIDER_SEED", "provider.seed"),
    ("DIALER_PROVIDER_KIND", "provider.kind"),
    ("DIALER_SIP_BIND", "provider.sip_bind"),
    ("DIALER_PROVIDER_RING_TIMEOUT_MS", "provider.ring_timeout_ms"),
    ("DIALER_SCHEDULER_REAP_EVERY_MS", "scheduler.reap_every_ms"),
    ("DIALER_SCHEDULER_REAP_GRACE_MS", "scheduler.reap_grace_ms"),
    ("DIALER_RECORDER_BATCH_MAX", "scheduler.recorder_batch_max"),
    ("DIALER_RECORDER_LINGER_MS", "scheduler.recorder_linger_ms"),
    ("DIALER_RECORDER_WORKERS", "scheduler.recorder_workers"),
    ("DIALER_SCHEDULER_CLAIM_CONCURRENCY", "scheduler.claim_concurrency"),
    ("DIALER_PROVIDER_LEDGER", "provider.ledger"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("OTEL_SERVICE_NAME", "telemetry.service_name"),
];

impl Config {
    /// Reads `path` (if given), applies overrides from `env`, validates.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
                Config::from_toml(&text)
                    .map_err(|source| ConfigError::Parse { path: p.display().to_string(), source })?
            }
            None => Config::default(),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some(host) = get("SCYLLA_HOST") {
            cfg.timeline.cql_nodes = vec![format!("{host}:{}", get("SCYLLA_PORT").unwrap_or_else(|| "9042".into()))];
        }
        if let Some(ks) = get("SCYLLA_KEYSPACE") {
            cfg.timeline.keyspace = ks;
        }
        for (var, key) in ENV_KEYS.iter().chain(events::ENV_KEYS) {
            if let Some((_, value)) = env.iter().find(|(k, _)| k == var) {
                cfg.set(key, value).map_err(|source| ConfigError::Env { key, var, source })?;
            }
        }
        cfg.provider.read_passwords(&env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text, refusing unknown keys.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), ValueError> {
        fn num<T: std::str::FromStr>(v: &str) -> Result<T, ValueError> {
            v.trim().parse().map_err(|_| ValueError::NotANumber(v.to_string()))
        }
        fn limit(v: &str) -> Result<Option<u32>, ValueError> {
            if v.trim().is_empty() { Ok(None) } else { num(v).map(Some) }
        }
        match key {
            "api.listen" => self.api.listen = v.parse().map_err(|_| ValueError::NotAnAddress(v.to_string()))?,
            "api.max_body_bytes" => self.api.max_body_bytes = num(v)?,
            "api.max_targets_per_request" => self.api.max_targets_per_request = num(v)?,
            "api.default_page_size" => self.api.default_page_size = num(v)?,
            "api.max_page_size" => self.api.max_page_size = num(v)?,
            "api.keys" => {
                self.api.keys =
                    v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(|k| ApiKey(k.to_string())).collect()
            }
            "api.rate_limit_per_key" => self.api.rate_limit_per_key = num(v)?,
            "api.campaign_cache_ms" => self.api.campaign_cache_ms = num(v)?,
            "store.url" => self.store.url = v.to_string(),
            "calling_rules.enabled" => {
                self.calling_rules.enabled =
                    v.trim().parse().map_err(|_| ValueError::NotKnown { value: v.to_string(), known: "true, false" })?
            }
            "calling_rules.max_attempts_per_24h" => self.calling_rules.max_attempts_per_24h = limit(v)?,
            "calling_rules.max_attempts_per_day" => self.calling_rules.max_attempts_per_day = limit(v)?,
            "store.max_connections" => self.store.max_connections = num(v)?,
            "store.acquire_timeout_sec" => self.store.acquire_timeout_sec = num(v)?,
            "limits.global_max_concurrency" => self.limits.global_max_concurrency = num(v)?,
            "limits.per_campaign_max_concurrency" => self.limits.per_campaign_max_concurrency = num(v)?,
            "limits.semaphore_ttl_sec" => self.limits.semaphore_ttl_sec = num(v)?,
            "limits.max_concurrent_calls" => self.limits.max_concurrent_calls = num(v)?,
            "limits.daily_usage_cap" => self.limits.daily_usage_cap = num(v)?,
            "limits.redis_url" => self.limits.redis_url = v.to_string(),
            "limits.redis_key_prefix" => self.limits.redis_key_prefix = v.to_string(),
            "limits.reconcile_every_sec" => self.limits.reconcile_every_sec = num(v)?,
            "bus.kind" => self.bus.kind = v.parse()?,
            "bus.brokers" => self.bus.brokers = v.to_string(),
            "bus.group_id" => self.bus.group_id = v.to_string(),
            "bus.dispatch_partitions" => self.bus.dispatch_partitions = num(v)?,
            "bus.status_partitions" => self.bus.status_partitions = num(v)?,
            "bus.replication_factor" => self.bus.replication_factor = num(v)?,
            "scheduler.reap_every_ms" => self.scheduler.reap_every_ms = num(v)?,
            "scheduler.reap_grace_ms" => self.scheduler.reap_grace_ms = num(v)?,
            "scheduler.recorder_batch_max" => self.scheduler.recorder_batch_max = num(v)?,
            "scheduler.recorder_linger_ms" => self.scheduler.recorder_linger_ms = num(v)?,
            "scheduler.recorder_workers" => self.scheduler.recorder_workers = num(v)?,
            "scheduler.claim_concurrency" => self.scheduler.claim_concurrency = num(v)?,
            "provider.seed" => self.provider.seed = num(v)?,
            "provider.kind" => self.provider.kind = v.parse()?,
            "provider.sip_bind" => self.provider.sip_bind = v.to_string(),
            "provider.ring_timeout_ms" => self.provider.ring_timeout_ms = num(v)?,
            "provider.ledger" => self.provider.ledger = v.to_string(),
            "telemetry.otlp_endpoint" => self.telemetry.otlp_endpoint = v.to_string(),
            "telemetry.service_name" => self.telemetry.service_name = v.to_string(),
            k => events::set(&mut self.events, &mut self.webhooks, k, v)?,
        }
        Ok(())
    }

    /// Refuses impossible values, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.calling_rules.compile("calling_rules").map_err(|e| invalid(&e.field, e.message))?;
        self.validate_api_and_store()?;
        self.validate_limits()?;
        self.validate_bus_and_provider()?;
        self.validate_timeline_and_telemetry()?;
        events::validate(&self.events, &self.webhooks)?;
        self.validate_scheduler()
    }

    fn validate_api_and_store(&self) -> Result<(), ConfigError> {
        let a = &self.api;
        if a.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024"));
        }
        if a.max_targets_per_request == 0 {
            return Err(invalid("api.max_targets_per_request", "must be at least 1"));
        }
        if a.campaign_cache_ms > 60_000 {
            return Err(invalid("api.campaign_cache_ms", "must be at most 60000 (a minute of staleness)"));
        }
        if a.max_page_size == 0 || a.max_page_size > 100_000 {
            return Err(invalid("api.max_page_size", "must be between 1 and 100000"));
        }
        if a.default_page_size == 0 || a.default_page_size > a.max_page_size {
            return Err(invalid("api.default_page_size", "must be between 1 and api.max_page_size"));
        }
        let u = &self.store.url;
        if !(u.is_empty() || u.starts_with("postgres://") || u.starts_with("postgresql://") || u.starts_with("sqlite:"))
        {
            return Err(invalid("store.url", "must start with postgres://, postgresql:// or sqlite:"));
        }
        if self.store.max_connections == 0 {
            return Err(invalid("store.max_connections", "must be at least 1"));
        }
        if self.store.acquire_timeout_sec == 0 {
            return Err(invalid("store.acquire_timeout_sec", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.global_max_concurrency == 0 {
            return Err(invalid(
                "limits.global_max_concurrency",
                "must be at least 1 (TELEPHONY_GLOBAL_MAX_CONCURRENCY)",
            ));
        }
        if l.per_campaign_max_concurrency == 0 {
            return Err(invalid(
                "limits.per_campaign_max_concurrency",
                "must be at least 1 (TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY)",
            ));
        }
        if l.semaphore_ttl_sec < 5 {
            return Err(invalid(
                "limits.semaphore_ttl_sec",
                "must be at least 5 seconds (TELEPHONY_SEMAPHORE_TTL_SEC)",
            ));
        }
        if l.max_concurrent_calls == 0 {
            return Err(invalid("limits.max_concurrent_calls", "must be at least 1 (MAX_CONCURRENT_CALLS)"));
        }
        if !(l.redis_url.is_empty() || l.redis_url.starts_with("redis://") || l.redis_url.starts_with("rediss://")) {
            return Err(invalid(
                "limits.redis_url",
                "must start with redis:// or rediss:// (or be empty for the in-process limiter)",
            ));
        }
        if l.redis_key_prefix.is_empty() {
            return Err(invalid("limits.redis_key_prefix", "must not be empty, e.g. \"{dialer}:\""));
        }
        if l.reconcile_every_sec == 0 {
            return Err(invalid("limits.reconcile_every_sec", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_bus_and_provider(&self) -> Result<(), ConfigError> {
        self.bus.check().map_err(|(key, reason)| invalid(&format!("bus.{key}"), reason))?;
        let p = &self.provider;
        for (k, v) in [("provider.answer_rate", p.answer_rate), ("provider.retryable_share", p.retryable_share)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(k, "must be between 0 and 1"));
            }
        }
        if p.max_call_ms < p.min_call_ms {
            return Err(invalid("provider.max_call_ms", "must be at least provider.min_call_ms"));
        }
        p.validate_sip()
    }

    fn validate_timeline_and_telemetry(&self) -> Result<(), ConfigError> {
        let t = &self.timeline;
        if t.keyspace.is_empty() || !t.keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid("timeline.keyspace", "must be letters, digits and '_' (SCYLLA_KEYSPACE)"));
        }
        if t.replication_factor == 0 {
            return Err(invalid("timeline.replication_factor", "must be at least 1"));
        }
        if t.ttl_days > 24_855 {
            return Err(invalid(
                "timeline.ttl_days",
                "must be at most 24855 (CQL's TTL is under 68 years), or 0 to keep rows",
            ));
        }
        if let Some(n) = t.cql_nodes.iter().find(|n| !n.contains(':')) {
            return Err(invalid("timeline.cql_nodes", format!("{n:?} is not host:port")));
        }
        for (i, k) in self.api.keys.iter().enumerate() {
            if k.0.len() < 16 || k.0.len() > 256 || !k.0.chars().all(|c| c.is_ascii_graphic() && c != ',') {
                return Err(invalid(
                    &format!("api.keys[{i}]"),
                    "an API key must be 16–256 visible ASCII characters without commas \
                     (e.g. the output of `openssl rand -hex 24`)",
                ));
            }
        }
        if self.api.keys.iter().enumerate().any(|(i, k)| self.api.keys[..i].contains(k)) {
            return Err(invalid("api.keys", "lists the same key twice"));
        }
        let te = &self.telemetry;
        if !te.otlp_endpoint.is_empty() && !te.otlp_endpoint.starts_with("http://") {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// URL of an OTLP/HTTP collector (e.g. http://127.0.0.1:4318); \
                 TLS is not built in: run the collector as a local agent or sidecar",
            ));
        }
        if te.service_name.is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        if let Err(e) = check_filter_directives(&te.span_filter) {
            return Err(invalid("telemetry.span_filter", e.to_string()));
        }
        Ok(())
    }

    fn validate_scheduler(&self) -> Result<(), ConfigError> {
        let sc = &self.scheduler;
        if sc.interval_ms < 10 {
            return Err(invalid("scheduler.interval_ms", "must be at least 10"));
        }
        if sc.inflight_factor == 0 {
            return Err(invalid("scheduler.inflight_factor", "must be at least 1"));
        }
        if sc.max_batch == 0 {
            return Err(invalid("scheduler.max_batch", "must be at least 1"));
        }
        if !(1..=50_000).contains(&sc.recorder_batch_max) {
            return Err(invalid("scheduler.recorder_batch_max", "must be between 1 and 50000"));
        }
        if sc.recorder_linger_ms > 1000 {
            return Err(invalid(
                "scheduler.recorder_linger_ms",
                "must be at most 1000 (outcomes would wait that long)",
            ));
        }
        if !(1..=256).contains(&sc.claim_concurrency) {
            return Err(invalid(
                "scheduler.claim_concurrency",
                "must be between 1 and 256 (each claim in flight holds a store connection)",
            ));
        }
        if !(1..=64).contains(&sc.recorder_workers) {
            return Err(invalid(
                "scheduler.recorder_workers",
                "must be between 1 and 64 (more than the status topic's partitions stay idle)",
            ));
        }
        if sc.dispatch_ttl_sec == 0 {
            return Err(invalid("scheduler.dispatch_ttl_sec", "must be at least 1"));
        }
        if sc.reap_every_ms < 100 {
            return Err(invalid("scheduler.reap_every_ms", "must be at least 100"));
        }
        Ok(())
    }

    /// The store URL, defaulting to `sqlite://<data_dir>/dialer.db`.
    pub fn store_url(&self, data_dir: &Path) -> String {
        if self.store.url.is_empty() {
            format!("sqlite://{}", data_dir.join("dialer.db").display())
        } else {
            self.store.url.clone()
        }
    }
}

/// A light check of an `EnvFilter` directive list (`target=level,…`), so that a typo is refused
/// at start rather than silently exporting nothing.
fn check_filter_directives(directives: &str) -> Result<(), ValueError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for d in directives.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(ValueError::NotALevel(d.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_the_operator_guide_s() {
        let c = Config::load(None, env(&[])).expect("defaults");
        assert_eq!(c.limits.global_max_concurrency, 10_000);
        assert_eq!(c.limits.per_campaign_max_concurrency, 100);
        assert_eq!(c.limits.semaphore_ttl_sec, 600);
        assert_eq!(c.limits.max_concurrent_calls, 200);
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8081");
    }

    #[test]
    fn topics_take_their_partitions_and_replication_from_configuration() {
        let c = Config::load(
            None,
            env(&[("DIALER_BUS_DISPATCH_PARTITIONS", "48"), ("DIALER_BUS_REPLICATION_FACTOR", "3")]),
        )
        .expect("config");
        let t = c.bus.topics();
        assert_eq!((t[0].name.as_str(), t[0].partitions, t[0].replication), ("dialer.dispatch", 48, 3));
        assert!(t[1..].iter().all(|t| t.partitions == 8 && t.replication == 3), "{t:?}");
        let e = Config::from_toml("[bus]\ndispatch_partitions = 0\n").expect("parses").validate().expect_err("refused");
        assert!(e.to_string().contains("bus.dispatch_partitions"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[limits]\nglobal_max_concurrency = 50\n[api]\nlisten = \"127.0.0.1:9000\"\n")
            .expect("write");
        let c =
            Config::load(Some(&p), env(&[("TELEPHONY_GLOBAL_MAX_CONCURRENCY", "70"), ("MAX_CONCURRENT_CALLS", "9")]))
                .expect("valid");
        assert_eq!(c.limits.global_max_concurrency, 70);
        assert_eq!(c.limits.max_concurrent_calls, 9);
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn sip_trunks_are_checked_at_start_with_the_key_and_passwords_come_from_the_environment() {
        let trunk = |extra: &str| {
            format!(
                "[provider]\nkind = \"sip\"\n[[provider.trunks]]\nname = \"carrier\"\nproxy = \"127.0.0.1:5060\"\n\
                 username = \"acme\"\npassword_env = \"TRUNK_PW\"\n{extra}"
            )
        };
        let load = |text: &str, vars: &[(&str, &str)]| {
            let f = tempfile::NamedTempFile::new().expect("temp file");
            std::fs::write(f.path(), text).expect("written");
            Config::load(Some(f.path()), env(vars))
        };
        let c = load(&trunk(""), &[("TRUNK_PW", "s3cret")]).expect("a good trunk");
        assert_eq!((c.provider.kind, c.provider.trunks[0].password.as_str()), (ProviderKind::Sip, "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "the password stays out of Debug");
        let refused = |text: &str, vars: &[(&str, &str)], key: &str| {
            let e = load(text, vars).expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        };
        refused(&trunk(""), &[], "provider.trunks[0].password_env");
        refused("[provider]\nkind = \"sip\"\n", &[], "provider.trunks");
        refused(&trunk("max_channels = 0\n"), &[("TRUNK_PW", "x")], "provider.trunks[0].max_channels");
        refused(&trunk("caller_id = \"555\"\n"), &[("TRUNK_PW", "x")], "provider.trunks[0].caller_id");
        let bad_proxy = trunk("").replace("127.0.0.1:5060", "no port");
        refused(&bad_proxy, &[("TRUNK_PW", "x")], "provider.trunks[0].proxy");
        let twice = format!("{}[[provider.trunks]]\nname = \"carrier\"\nproxy = \"127.0.0.1:5061\"\n", trunk(""));
        refused(&twice, &[("TRUNK_PW", "x")], "provider.trunks[1].name");
        refused(&trunk(""), &[("TRUNK_PW", "x"), ("DIALER_SIP_BIND", "0.0.0.0")], "provider.sip_bind");
        let c = load(&trunk(""), &[("TRUNK_PW", "x"), ("DIALER_PROVIDER_KIND", "mock")]).expect("mock");
        assert_eq!(c.provider.kind, ProviderKind::Mock, "DIALER_PROVIDER_KIND overrides the file");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        let e = Config::from_toml("[api]\nlisten_port = 1\n").expect_err("unknown key").to_string();
        assert!(e.contains("listen_port"), "{e}");
        let e = Config::from_toml("[limits]\nglobal_max_concurrency = \"many\"\n").expect_err("bad type").to_string();
        assert!(e.contains("global_max_concurrency"), "{e}");
        let e = Config::from_toml("[bus]\nkind = \"kafak\"\n").expect_err("unknown bus").to_string();
        assert!(e.contains("kafak") && e.contains("memory") && e.contains("kafka"), "the known kinds: {e}");
        let e = Config::from_toml("[provider]\nkind = \"isdn\"\n").expect_err("unknown provider").to_string();
        assert!(e.contains("isdn") && e.contains("mock") && e.contains("sip"), "the known kinds: {e}");
        let e = Config::load(None, env(&[("DIALER_BUS_KIND", "rabbit")])).expect_err("bad env kind").to_string();
        assert!(e.contains("bus.kind") && e.contains("rabbit") && e.contains("\"kafka\""), "{e}");
        let e = Config::load(None, env(&[("TELEPHONY_SEMAPHORE_TTL_SEC", "soon")])).expect_err("bad env");
        assert!(
            e.to_string().contains("limits.semaphore_ttl_sec") && e.to_string().contains("TELEPHONY_SEMAPHORE_TTL_SEC"),
            "{e}"
        );
        let e = Config::load(None, env(&[("TELEPHONY_GLOBAL_MAX_CONCURRENCY", "0")])).expect_err("zero");
        assert!(e.to_string().contains("limits.global_max_concurrency"), "{e}");
        let e = Config::load(None, env(&[("DATABASE_URL", "mysql://x")])).expect_err("bad url");
        assert!(e.to_string().contains("store.url"), "{e}");
        let e = Config::load(None, env(&[("DIALER_API_CAMPAIGN_CACHE_MS", "600000")])).expect_err("a long cache");
        assert!(e.to_string().contains("api.campaign_cache_ms"), "{e}");
        for (var, key) in [
            ("DIALER_RECORDER_WORKERS", "scheduler.recorder_workers"),
            ("DIALER_SCHEDULER_CLAIM_CONCURRENCY", "scheduler.claim_concurrency"),
        ] {
            let e = Config::load(None, env(&[(var, "0")])).expect_err("none at all").to_string();
            assert!(e.contains(key), "{e}");
            let c = Config::load(None, env(&[(var, "3")])).expect("three").scheduler;
            let set = if key.ends_with("recorder_workers") { c.recorder_workers } else { c.claim_concurrency };
            assert_eq!(set, 3, "{var} sets {key}");
        }
    }

    #[test]
    fn example_configs_parse() {
        for f in ["embedded.toml", "production.toml"] {
            let p = std::path::PathBuf::from(
                std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
            )
            .join("../config")
            .join(f);
            Config::load(Some(&p), env(&[])).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn api_keys_are_validated_redacted_and_required_off_loopback() {
        let key = "k3y-0123456789abcdef";
        let c =
            Config::load(None, env(&[("DIALER_API_KEYS", &format!("{key}, other-0123456789abcdef"))])).expect("keys");
        assert_eq!(c.api.keys.len(), 2);
        assert!(!format!("{c:?}").contains(key), "Debug never shows a key");
        assert!(!toml::to_string(&c).expect("toml").contains(key), "nor does the serialized form");
        let e = Config::load(None, env(&[("DIALER_API_KEYS", "short")])).expect_err("short key");
        assert!(e.to_string().contains("api.keys[0]"), "{e}");
        let e = Config::load(None, env(&[("DIALER_API_KEYS", &format!("{key},{key}"))])).expect_err("duplicate");
        assert!(e.to_string().contains("twice"), "{e}");
        let mut open = Config::default();
        assert!(open.api.check_exposure().is_ok(), "no keys on loopback: the embedded default");
        open.api.listen = "0.0.0.0:8081".parse().expect("addr");
        let e = open.api.check_exposure().expect_err("no keys off loopback");
        assert!(e.to_string().contains("DIALER_API_KEYS"), "{e}");
        open.api.keys = vec![ApiKey(key.into())];
        assert!(open.api.check_exposure().is_ok());
    }

    #[test]
    fn telemetry_settings_are_checked() {
        let c = Config::load(None, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")])).expect("otlp");
        assert_eq!(c.telemetry.otlp_endpoint, "http://127.0.0.1:4318");
        assert!(Config::default().telemetry.otlp_endpoint.is_empty(), "off by default");
        let e = Config::load(None, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])).expect_err("no scheme");
        assert!(e.to_string().contains("telemetry.otlp_endpoint"), "{e}");
        let e = Config::from_toml("[telemetry]\nspan_filter = \"dialer=loud\"\n")
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
            .expect_err("bad level");
        assert!(e.contains("telemetry.span_filter"), "{e}");
    }
}
