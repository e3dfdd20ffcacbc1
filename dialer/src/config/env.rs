//! Environment overrides: which variable sets which key, and how its text becomes the value.

use std::str::FromStr;
use std::time::Duration;

use dialer_control_plane::ApiKey;
use dialer_dataplane::ProviderSettings;

use super::{Config, ConfigError, ValueError, invalid};

/// Environment variable → config key.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("DIALER_CALLING_RULES_ENABLED", "calling_rules.enabled"),
    ("DIALER_CALLING_RULES_MAX_ATTEMPTS_PER_24H", "calling_rules.max_attempts_per_24h"),
    ("DIALER_CALLING_RULES_MAX_ATTEMPTS_PER_DAY", "calling_rules.max_attempts_per_day"),
    ("DIALER_API_LISTEN", "api.listen"),
    ("DIALER_API_MAX_BODY_BYTES", "api.max_body_bytes"),
    ("DIALER_API_MAX_TARGETS_PER_REQUEST", "api.max_targets_per_request"),
    ("DIALER_API_DEFAULT_PAGE_SIZE", "api.default_page_size"),
    ("DIALER_API_MAX_PAGE_SIZE", "api.max_page_size"),
    ("DIALER_DEFAULT_REGION", "api.default_region"),
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
    ("DIALER_BUS_INSTANCE_ID", "bus.instance_id"),
    ("DIALER_PROVIDER_SEED", "provider.seed"),
    ("DIALER_PROVIDER_KIND", "provider.kind"),
    ("DIALER_SIP_BIND", "provider.sip_bind"),
    ("DIALER_PROMPTS_URL", "provider.prompts_url"),
    ("DIALER_PROVIDER_RING_TIMEOUT_MS", "provider.ring_timeout_ms"),
    ("DIALER_SCHEDULER_REAP_EVERY_MS", "scheduler.reap_every_ms"),
    ("DIALER_SCHEDULER_REAP_GRACE_MS", "scheduler.reap_grace_ms"),
    ("DIALER_SCHEDULER_REPUBLISH_AFTER_MS", "scheduler.republish_after_ms"),
    ("DIALER_RECORDER_BATCH_MAX", "scheduler.recorder_batch_max"),
    ("DIALER_RECORDER_LINGER_MS", "scheduler.recorder_linger_ms"),
    ("DIALER_RECORDER_WORKERS", "scheduler.recorder_workers"),
    ("DIALER_SCHEDULER_CLAIM_CONCURRENCY", "scheduler.claim_concurrency"),
    ("DIALER_PROVIDER_LEDGER", "provider.ledger"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("OTEL_SERVICE_NAME", "telemetry.service_name"),
    ("DIALER_EVENTS_ENABLED", "events.enabled"),
    ("DIALER_EVENTS_KEEP_HOURS", "events.keep_hours"),
    ("DIALER_WEBHOOKS_ENABLED", "webhooks.enabled"),
    ("DIALER_WEBHOOKS_TIMEOUT_MS", "webhooks.timeout_ms"),
    ("DIALER_WEBHOOKS_RETRY_WINDOW_SEC", "webhooks.retry_window_sec"),
    ("DIALER_WEBHOOKS_ALLOW_PRIVATE_TARGETS", "webhooks.allow_private_targets"),
];

/// Applies every override `env` holds; `SCYLLA_HOST` (with `SCYLLA_PORT`) and `SCYLLA_KEYSPACE`
/// set the timeline.
pub(super) fn apply(cfg: &mut Config, env: &[(String, String)]) -> Result<(), ConfigError> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Some(host) = get("SCYLLA_HOST") {
        cfg.timeline.cql_nodes = vec![format!("{host}:{}", get("SCYLLA_PORT").unwrap_or_else(|| "9042".into()))];
    }
    if let Some(ks) = get("SCYLLA_KEYSPACE") {
        cfg.timeline.keyspace = ks;
    }
    // Secrets come from the environment only (no config key holds them).
    if let Some(key) = get("DIALER_SECRETS_KEY").filter(|k| !k.trim().is_empty()) {
        let key = dialer_control_plane::secrets::SecretsKey::from_hex(&key)
            .map_err(|e| ConfigError::Invalid { key: "DIALER_SECRETS_KEY".into(), reason: e.to_string() })?;
        cfg.webhooks.secrets_key = Some(key);
    }
    for (var, key) in ENV_KEYS {
        if let Some((_, value)) = env.iter().find(|(k, _)| k == var) {
            set(cfg, key, value).map_err(|source| ConfigError::Env { key, var, source })?;
        }
    }
    Ok(())
}

fn num<T: FromStr>(v: &str) -> Result<T, ValueError> {
    v.trim().parse().map_err(|_| ValueError::NotANumber(v.to_string()))
}

fn ms(v: &str) -> Result<Duration, ValueError> {
    num(v).map(Duration::from_millis)
}

fn secs(v: &str) -> Result<Duration, ValueError> {
    num(v).map(Duration::from_secs)
}

fn boolean(v: &str) -> Result<bool, ValueError> {
    v.trim().parse().map_err(|_| ValueError::NotKnown { value: v.to_string(), known: "true, false" })
}

/// An optional limit: empty = none.
fn limit(v: &str) -> Result<Option<u32>, ValueError> {
    if v.trim().is_empty() { Ok(None) } else { num(v).map(Some) }
}

/// Sets one key from its environment variable's text.
fn set(c: &mut Config, key: &str, v: &str) -> Result<(), ValueError> {
    match key.split_once('.').map_or("", |(section, _)| section) {
        "api" => set_api(c, key, v),
        "store" | "limits" => set_store_and_limits(c, key, v),
        "bus" | "provider" => set_bus_and_provider(c, key, v),
        "scheduler" => set_scheduler(c, key, v),
        _ => set_rest(c, key, v),
    }
}

fn set_api(c: &mut Config, key: &str, v: &str) -> Result<(), ValueError> {
    let a = &mut c.api;
    match key {
        "api.listen" => a.listen = v.parse().map_err(|_| ValueError::NotAnAddress(v.to_string()))?,
        "api.max_body_bytes" => a.max_body_bytes = num(v)?,
        "api.max_targets_per_request" => a.max_targets_per_request = num(v)?,
        "api.default_page_size" => a.default_page_size = num(v)?,
        "api.max_page_size" => a.max_page_size = num(v)?,
        "api.default_region" => a.default_region = v.to_string(),
        "api.keys" => {
            a.keys = v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(|k| ApiKey(k.to_string())).collect()
        }
        "api.rate_limit_per_key" => a.rate_limit_per_key = num(v)?,
        "api.campaign_cache_ms" => a.campaign_cache = ms(v)?,
        _ => return Err(ValueError::UnknownKey),
    }
    Ok(())
}

fn set_store_and_limits(c: &mut Config, key: &str, v: &str) -> Result<(), ValueError> {
    let l = &mut c.limits;
    match key {
        "store.url" => c.store.url = v.to_string(),
        "store.max_connections" => c.store.max_connections = num(v)?,
        "store.acquire_timeout_sec" => c.store.acquire_timeout_sec = num(v)?,
        "limits.global_max_concurrency" => l.global_max_concurrency = num(v)?,
        "limits.per_campaign_max_concurrency" => l.per_campaign_max_concurrency = num(v)?,
        "limits.semaphore_ttl_sec" => l.semaphore_ttl = secs(v)?,
        "limits.max_concurrent_calls" => l.max_concurrent_calls = num(v)?,
        "limits.daily_usage_cap" => l.daily_usage_cap = num(v)?,
        "limits.redis_url" => l.redis_url = v.to_string(),
        "limits.redis_key_prefix" => l.redis_key_prefix = v.to_string(),
        "limits.reconcile_every_sec" => l.reconcile_every = secs(v)?,
        _ => return Err(ValueError::UnknownKey),
    }
    Ok(())
}

fn set_bus_and_provider(c: &mut Config, key: &str, v: &str) -> Result<(), ValueError> {
    let (b, p) = (&mut c.bus, &mut c.provider);
    let known = |known: &'static str| ValueError::NotKnown { value: v.to_string(), known };
    match key {
        "bus.kind" => b.kind = v.parse().map_err(|_| known("\"memory\", \"kafka\""))?,
        "bus.brokers" => b.brokers = v.to_string(),
        "bus.group_id" => b.group_id = v.to_string(),
        "bus.dispatch_partitions" => b.dispatch_partitions = num(v)?,
        "bus.status_partitions" => b.status_partitions = num(v)?,
        "bus.replication_factor" => b.replication_factor = num(v)?,
        "bus.instance_id" => b.instance_id = v.to_string(),
        "provider.seed" => p.seed = num(v)?,
        "provider.kind" => p.kind = v.parse().map_err(|_| known("\"mock\", \"sip\""))?,
        "provider.sip_bind" => p.bind_ip = v.trim().parse().map_err(|_| ValueError::NotAnIp(v.to_string()))?,
        "provider.ring_timeout_ms" => p.ring_timeout = ms(v)?,
        "provider.ledger" => p.ledger = v.to_string(),
        "provider.prompts_url" => p.prompts_url = v.trim().to_string(),
        _ => return Err(ValueError::UnknownKey),
    }
    Ok(())
}

fn set_scheduler(c: &mut Config, key: &str, v: &str) -> Result<(), ValueError> {
    let s = &mut c.scheduler;
    match key {
        "scheduler.reap_every_ms" => s.reap_every = ms(v)?,
        "scheduler.reap_grace_ms" => s.reap_grace = ms(v)?,
        "scheduler.republish_after_ms" => s.republish_after = ms(v)?,
        "scheduler.recorder_batch_max" => s.recorder_batch_max = num(v)?,
        "scheduler.recorder_linger_ms" => s.recorder_linger = ms(v)?,
        "scheduler.recorder_workers" => s.recorder_workers = num(v)?,
        "scheduler.claim_concurrency" => s.claim_concurrency = num(v)?,
        _ => return Err(ValueError::UnknownKey),
    }
    Ok(())
}

fn set_rest(c: &mut Config, key: &str, v: &str) -> Result<(), ValueError> {
    match key {
        "calling_rules.enabled" => c.calling_rules.enabled = boolean(v)?,
        "calling_rules.max_attempts_per_24h" => c.calling_rules.max_attempts_per_24h = limit(v)?,
        "calling_rules.max_attempts_per_day" => c.calling_rules.max_attempts_per_day = limit(v)?,
        "telemetry.otlp_endpoint" => c.telemetry.otlp_endpoint = v.to_string(),
        "telemetry.service_name" => c.telemetry.service_name = v.to_string(),
        "events.enabled" => c.events.enabled = boolean(v)?,
        "events.keep_hours" => c.events.keep_hours = num(v)?,
        "webhooks.enabled" => c.webhooks.enabled = boolean(v)?,
        "webhooks.timeout_ms" => c.webhooks.timeout = ms(v)?,
        "webhooks.retry_window_sec" => c.webhooks.retry_window = secs(v)?,
        _ => return Err(ValueError::UnknownKey),
    }
    Ok(())
}

/// Reads each trunk's password from its `password_env` variable in `env`, and the prompts' API
/// key from `prompts_api_key_env`.
pub(super) fn read_passwords(p: &mut ProviderSettings, env: &[(String, String)]) -> Result<(), ConfigError> {
    if !p.prompts_api_key_env.is_empty() {
        match env.iter().find(|(k, _)| *k == p.prompts_api_key_env) {
            Some((_, v)) if !v.is_empty() => p.prompts_api_key = Some(v.clone()),
            _ => {
                return Err(invalid(
                    "provider.prompts_api_key_env",
                    format!("the variable {} is not set: export the API key in it", p.prompts_api_key_env),
                ));
            }
        }
    }
    for (i, t) in p.trunks.iter_mut().enumerate() {
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
