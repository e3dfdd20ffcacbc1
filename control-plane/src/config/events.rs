//! `[events]` (the event log and the live stream) and `[webhooks]` (their delivery), issue 20.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, ValueError, invalid};

/// The event log and the live stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Milliseconds between stats snapshots on the live stream.
    pub live_stats_every_ms: u64,
    /// Milliseconds between looks for new events when idle (the sequencer, and live streams of
    /// events another replica numbered).
    pub poll_ms: u64,
}

impl Default for EventsSettings {
    fn default() -> Self {
        EventsSettings { enabled: true, keep_hours: 72, live_buffer: 4096, live_stats_every_ms: 5000, poll_ms: 100 }
    }
}

/// Webhook delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Deliver from this process (`DIALER_WEBHOOKS_ENABLED`); every replica may, and they share
    /// the work.
    pub enabled: bool,
    /// Milliseconds one request may take (`DIALER_WEBHOOKS_TIMEOUT_MS`).
    pub timeout_ms: u64,
    /// The first retry's delay (jittered, doubling each time up to `retry_max_ms`).
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Seconds an event is retried after its first attempt before it goes to the dead-letter
    /// store (`DIALER_WEBHOOKS_RETRY_WINDOW_SEC`; a day by default).
    pub retry_window_sec: u64,
    /// Most deliveries claimed for one endpoint at once.
    pub claim_batch: usize,
    /// Milliseconds between looks for due retries when idle.
    pub poll_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            enabled: true,
            timeout_ms: 10_000,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
            retry_window_sec: 86_400,
            claim_batch: 64,
            poll_ms: 250,
        }
    }
}

impl WebhookSettings {
    pub fn delivery(&self) -> crate::webhooks::DeliverySettings {
        crate::webhooks::DeliverySettings {
            timeout: Duration::from_millis(self.timeout_ms),
            retry: dialer_domain::events::RetrySchedule {
                base: Duration::from_millis(self.retry_base_ms),
                max: Duration::from_millis(self.retry_max_ms),
                window: Duration::from_secs(self.retry_window_sec),
            },
            claim_batch: self.claim_batch,
            poll: Duration::from_millis(self.poll_ms),
        }
    }
}

/// Environment variable → config key.
pub(super) const ENV_KEYS: &[(&str, &str)] = &[
    ("DIALER_EVENTS_ENABLED", "events.enabled"),
    ("DIALER_EVENTS_KEEP_HOURS", "events.keep_hours"),
    ("DIALER_WEBHOOKS_ENABLED", "webhooks.enabled"),
    ("DIALER_WEBHOOKS_TIMEOUT_MS", "webhooks.timeout_ms"),
    ("DIALER_WEBHOOKS_RETRY_WINDOW_SEC", "webhooks.retry_window_sec"),
];

fn boolean(v: &str) -> Result<bool, ValueError> {
    v.trim().parse().map_err(|_| ValueError::NotKnown { value: v.to_string(), known: "true, false" })
}

fn num<T: std::str::FromStr>(v: &str) -> Result<T, ValueError> {
    v.trim().parse().map_err(|_| ValueError::NotANumber(v.to_string()))
}

/// Sets one `events.*` or `webhooks.*` key from the environment.
pub(super) fn set(e: &mut EventsSettings, w: &mut WebhookSettings, key: &str, v: &str) -> Result<(), ValueError> {
    match key {
        "events.enabled" => e.enabled = boolean(v)?,
        "events.keep_hours" => e.keep_hours = num(v)?,
        "webhooks.enabled" => w.enabled = boolean(v)?,
        "webhooks.timeout_ms" => w.timeout_ms = num(v)?,
        "webhooks.retry_window_sec" => w.retry_window_sec = num(v)?,
        _ => return Err(ValueError::UnknownKey),
    }
    Ok(())
}

/// Refuses impossible values, naming the key.
pub(super) fn validate(e: &EventsSettings, w: &WebhookSettings) -> Result<(), ConfigError> {
    if !(1..=24 * 365).contains(&e.keep_hours) {
        return Err(invalid("events.keep_hours", "must be between 1 and 8760"));
    }
    if !(16..=1_000_000).contains(&e.live_buffer) {
        return Err(invalid("events.live_buffer", "must be between 16 and 1000000"));
    }
    if !(100..=3_600_000).contains(&e.live_stats_every_ms) {
        return Err(invalid("events.live_stats_every_ms", "must be between 100 and 3600000"));
    }
    if !(10..=10_000).contains(&e.poll_ms) {
        return Err(invalid("events.poll_ms", "must be between 10 and 10000"));
    }
    if !(100..=120_000).contains(&w.timeout_ms) {
        return Err(invalid("webhooks.timeout_ms", "must be between 100 and 120000"));
    }
    if w.retry_base_ms == 0 || w.retry_base_ms > w.retry_max_ms {
        return Err(invalid("webhooks.retry_base_ms", "must be at least 1 and at most webhooks.retry_max_ms"));
    }
    if !(1..=7 * 86_400).contains(&w.retry_window_sec) {
        return Err(invalid("webhooks.retry_window_sec", "must be between 1 and 604800 (a week)"));
    }
    if !(1..=1000).contains(&w.claim_batch) {
        return Err(invalid("webhooks.claim_batch", "must be between 1 and 1000"));
    }
    if !(10..=60_000).contains(&w.poll_ms) {
        return Err(invalid("webhooks.poll_ms", "must be between 10 and 60000"));
    }
    Ok(())
}
