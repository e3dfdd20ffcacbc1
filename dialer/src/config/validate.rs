//! Refuses impossible configuration values at start, naming the key and saying what to give.

use std::time::Duration;

use dialer_bus::{BusKind, BusSettings};
use dialer_control_plane::api::auth::KeyEntry;
use dialer_control_plane::{ApiSettings, EventsSettings, SchedulerSettings, WebhookSettings};
use dialer_dataplane::{ProviderKind, ProviderSettings, sip::TrunkSettings};
use dialer_limiter::LimitSettings;
use dialer_store::{StoreSettings, TimelineSettings};

use super::{Config, ConfigError, TelemetrySettings, ValueError, invalid};

type Checked = Result<(), ConfigError>;

/// Every section.
pub(super) fn config(c: &Config) -> Checked {
    c.calling_rules.compile("calling_rules").map_err(|e| invalid(&e.field, e.message))?;
    api(&c.api)?;
    api_keys(&c.api)?;
    store(&c.store)?;
    limits(&c.limits)?;
    bus(&c.bus)?;
    provider(&c.provider)?;
    orphans(&c.provider, &c.limits)?;
    timeline(&c.timeline)?;
    telemetry(&c.telemetry)?;
    events(&c.events, &c.webhooks)?;
    scheduler(&c.scheduler)
}

/// Refuses to serve without keys on an address other machines can reach.
pub(super) fn exposure(a: &ApiSettings) -> Checked {
    if a.keys.is_empty() && !a.listen.ip().is_loopback() {
        return Err(invalid(
            "api.keys",
            format!(
                "the API would listen on {} (not loopback) without authentication; \
                 set DIALER_API_KEYS (or api.keys), or listen on 127.0.0.1",
                a.listen
            ),
        ));
    }
    Ok(())
}

fn api(a: &ApiSettings) -> Checked {
    if a.max_body_bytes < 1024 {
        return Err(invalid("api.max_body_bytes", "must be at least 1024"));
    }
    if a.max_targets_per_request == 0 {
        return Err(invalid("api.max_targets_per_request", "must be at least 1"));
    }
    if a.campaign_cache > Duration::from_secs(60) {
        return Err(invalid("api.campaign_cache_ms", "must be at most 60000 (a minute of staleness)"));
    }
    if dialer_domain::phone::region(&a.default_region).is_none() {
        return Err(invalid(
            "api.default_region",
            "must be an ISO 3166-1 alpha-2 region code with a calling code, e.g. US, GB, DE",
        ));
    }
    if a.max_page_size == 0 || a.max_page_size > 100_000 {
        return Err(invalid("api.max_page_size", "must be between 1 and 100000"));
    }
    if a.default_page_size == 0 || a.default_page_size > a.max_page_size {
        return Err(invalid("api.default_page_size", "must be between 1 and api.max_page_size"));
    }
    if a.max_streams_per_key == 0 {
        return Err(invalid("api.max_streams_per_key", "must be at least 1"));
    }
    if a.max_webhooks == 0 {
        return Err(invalid("api.max_webhooks", "must be at least 1"));
    }
    Ok(())
}

fn api_keys(a: &ApiSettings) -> Checked {
    let mut seen = Vec::new();
    for (i, k) in a.keys.iter().enumerate() {
        let entry = KeyEntry::parse(&k.0).map_err(|reason| invalid(&format!("api.keys[{i}]"), reason.to_string()))?;
        if seen.contains(&entry.digest) {
            return Err(invalid("api.keys", "lists the same key twice"));
        }
        seen.push(entry.digest);
    }
    Ok(())
}

fn store(s: &StoreSettings) -> Checked {
    let u = &s.url;
    if !(u.is_empty() || u.starts_with("postgres://") || u.starts_with("postgresql://") || u.starts_with("sqlite:")) {
        return Err(invalid("store.url", "must start with postgres://, postgresql:// or sqlite:"));
    }
    if s.max_connections == 0 {
        return Err(invalid("store.max_connections", "must be at least 1"));
    }
    if s.acquire_timeout_sec == 0 {
        return Err(invalid("store.acquire_timeout_sec", "must be at least 1"));
    }
    Ok(())
}

fn limits(l: &LimitSettings) -> Checked {
    if l.global_max_concurrency == 0 {
        return Err(invalid("limits.global_max_concurrency", "must be at least 1 (TELEPHONY_GLOBAL_MAX_CONCURRENCY)"));
    }
    if l.per_campaign_max_concurrency == 0 {
        return Err(invalid(
            "limits.per_campaign_max_concurrency",
            "must be at least 1 (TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY)",
        ));
    }
    if l.semaphore_ttl < Duration::from_secs(5) {
        return Err(invalid("limits.semaphore_ttl_sec", "must be at least 5 seconds (TELEPHONY_SEMAPHORE_TTL_SEC)"));
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
    if l.reconcile_every.is_zero() {
        return Err(invalid("limits.reconcile_every_sec", "must be at least 1"));
    }
    Ok(())
}

fn bus(b: &BusSettings) -> Checked {
    for (k, v) in [
        ("bus.dispatch_topic", &b.dispatch_topic),
        ("bus.status_topic", &b.status_topic),
        ("bus.dead_letter_topic", &b.dead_letter_topic),
        ("bus.group_id", &b.group_id),
    ] {
        if v.is_empty() || v.len() > 249 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(invalid(k, "must be 1–249 characters of letters, digits, '.', '_' and '-'"));
        }
    }
    if b.kind == BusKind::Kafka && b.brokers.is_empty() {
        return Err(invalid("bus.brokers", "must list the bootstrap servers, e.g. 127.0.0.1:9092"));
    }
    for (k, v) in [
        ("bus.dispatch_partitions", b.dispatch_partitions),
        ("bus.replication_factor", b.replication_factor),
        ("bus.status_partitions", b.status_partitions),
    ] {
        if v < 1 {
            return Err(invalid(k, "must be at least 1"));
        }
    }
    Ok(())
}

fn provider(p: &ProviderSettings) -> Checked {
    for (k, v) in [("provider.answer_rate", p.answer_rate), ("provider.retryable_share", p.retryable_share)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(k, "must be between 0 and 1"));
        }
    }
    if p.max_call < p.min_call {
        return Err(invalid("provider.max_call_ms", "must be at least provider.min_call_ms"));
    }
    if p.kind == ProviderKind::Sip { sip(p) } else { Ok(()) }
}

/// A data plane killed with calls up hangs up none of them: its limiter lease is kept (its calls
/// counted against the caps) for at least the longest call, which the reclamation window must
/// therefore cover.
fn orphans(p: &ProviderSettings, l: &LimitSettings) -> Checked {
    let longest = p.longest_call();
    if longest > l.semaphore_ttl {
        return Err(invalid(
            "provider.max_call_ms",
            format!(
                "the longest call ({} s: ring timeout + max_call_ms + the SIP timers) exceeds \
                 TELEPHONY_SEMAPHORE_TTL_SEC ({} s), the window in which a crashed data plane's calls \
                 stay counted against the caps; raise TELEPHONY_SEMAPHORE_TTL_SEC or lower max_call_ms",
                longest.as_secs_f64().ceil(),
                l.semaphore_ttl.as_secs()
            ),
        ));
    }
    Ok(())
}

fn sip(p: &ProviderSettings) -> Checked {
    if p.trunks.is_empty() {
        return Err(invalid("provider.trunks", "provider.kind = \"sip\" needs at least one [[provider.trunks]]"));
    }
    if p.bind_ip.is_unspecified() {
        return Err(invalid("provider.sip_bind", "must be an IP address of this host the trunks can reach"));
    }
    if p.ring_timeout.is_zero() || p.t1.is_zero() || p.max_call.is_zero() {
        return Err(invalid("provider.ring_timeout_ms", "ring_timeout_ms, sip_t1_ms and max_call_ms must be above 0"));
    }
    if let Some(r) = &p.refer_to
        && !r.starts_with("sip:")
        && !r.starts_with("sips:")
    {
        return Err(invalid("provider.refer_to", "must be a SIP URI, e.g. sip:queue@ivr.example.com"));
    }
    if p.rtp_port_min < 1024 || p.rtp_port_max < p.rtp_port_min.saturating_add(1) {
        return Err(invalid(
            "provider.rtp_port_min",
            "RTP ports must be a range above 1023 (rtp_port_min < rtp_port_max)",
        ));
    }
    if !p.prompts_url.is_empty() && !p.prompts_url.starts_with("http://") && !p.prompts_url.starts_with("https://") {
        return Err(invalid("provider.prompts_url", "must be the control plane's http(s):// base URL"));
    }
    let mut names = std::collections::HashSet::new();
    for (i, t) in p.trunks.iter().enumerate() {
        trunk(t).map_err(|(k, reason)| invalid(&format!("provider.trunks[{i}].{k}"), reason))?;
        if !names.insert(t.name.as_str()) {
            return Err(invalid(&format!("provider.trunks[{i}].name"), format!("{:?} names two trunks", t.name)));
        }
    }
    Ok(())
}

fn trunk(t: &TrunkSettings) -> Result<(), (&'static str, String)> {
    if t.name.is_empty() || !t.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(("name", "must be letters, digits, '.', '_' and '-'".into()));
    }
    if t.proxy_addr().is_none() {
        return Err(("proxy", format!("{:?} is not a reachable host:port, e.g. sip.carrier.example:5060", t.proxy)));
    }
    if !t.username.is_empty() && t.password_env.is_empty() {
        return Err(("password_env", "a trunk with a username needs the variable holding its password".into()));
    }
    if !t.caller_id.is_empty() && dialer_domain::phone::check_e164(&t.caller_id).is_err() {
        return Err(("caller_id", format!("{:?} is not an E.164 number, e.g. +15551234567", t.caller_id)));
    }
    if t.max_channels == 0 {
        return Err(("max_channels", "must be at least 1".into()));
    }
    if t.from_user.is_empty() || t.from_domain.is_empty() {
        return Err(("from_user", "from_user and from_domain must be set".into()));
    }
    Ok(())
}

fn timeline(t: &TimelineSettings) -> Checked {
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
    Ok(())
}

fn telemetry(te: &TelemetrySettings) -> Checked {
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
    filter_directives(&te.span_filter).map_err(|e| invalid("telemetry.span_filter", e.to_string()))
}

/// A light check of an `EnvFilter` directive list (`target=level,…`), so that a typo is refused
/// at start rather than silently exporting nothing.
fn filter_directives(directives: &str) -> Result<(), ValueError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for d in directives.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(ValueError::NotALevel(d.to_string()));
        }
    }
    Ok(())
}

fn events(e: &EventsSettings, w: &WebhookSettings) -> Checked {
    let within = |d: Duration, lo: u64, hi: u64| (lo..=hi).contains(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if !(1..=24 * 365).contains(&e.keep_hours) {
        return Err(invalid("events.keep_hours", "must be between 1 and 8760"));
    }
    if !(16..=1_000_000).contains(&e.live_buffer) {
        return Err(invalid("events.live_buffer", "must be between 16 and 1000000"));
    }
    if !within(e.live_stats_every, 100, 3_600_000) {
        return Err(invalid("events.live_stats_every_ms", "must be between 100 and 3600000"));
    }
    if !within(e.poll, 10, 10_000) {
        return Err(invalid("events.poll_ms", "must be between 10 and 10000"));
    }
    if !within(w.timeout, 100, 120_000) {
        return Err(invalid("webhooks.timeout_ms", "must be between 100 and 120000"));
    }
    if w.retry_base.is_zero() || w.retry_base > w.retry_max {
        return Err(invalid("webhooks.retry_base_ms", "must be at least 1 and at most webhooks.retry_max_ms"));
    }
    if !(1..=7 * 86_400).contains(&w.retry_window.as_secs()) {
        return Err(invalid("webhooks.retry_window_sec", "must be between 1 and 604800 (a week)"));
    }
    if !(1..=1000).contains(&w.claim_batch) {
        return Err(invalid("webhooks.claim_batch", "must be between 1 and 1000"));
    }
    if !within(w.poll, 10, 60_000) {
        return Err(invalid("webhooks.poll_ms", "must be between 10 and 60000"));
    }
    Ok(())
}

fn scheduler(sc: &SchedulerSettings) -> Checked {
    if sc.interval < Duration::from_millis(10) {
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
    if sc.recorder_linger > Duration::from_secs(1) {
        return Err(invalid("scheduler.recorder_linger_ms", "must be at most 1000 (outcomes would wait that long)"));
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
    if sc.dispatch_ttl.is_zero() {
        return Err(invalid("scheduler.dispatch_ttl_sec", "must be at least 1"));
    }
    if !sc.republish_after.is_zero()
        && (sc.republish_after < Duration::from_secs(1) || sc.republish_after >= sc.dispatch_ttl)
    {
        return Err(invalid(
            "scheduler.republish_after_ms",
            "must be 0 (never) or from 1000 up to below scheduler.dispatch_ttl_sec (a claim is published again only while its deadline lasts)",
        ));
    }
    if sc.reap_every < Duration::from_millis(100) {
        return Err(invalid("scheduler.reap_every_ms", "must be at least 100"));
    }
    Ok(())
}
