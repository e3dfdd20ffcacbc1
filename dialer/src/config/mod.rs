//! Configuration: a TOML file, then environment overrides, then validation; each section handed
//! to the crate that owns its type.
//!
//! Every key has a default, so no file is needed for the embedded mode. Unknown keys are
//! refused. Environment variables override the file; the seed platform's names are honoured
//! (`TELEPHONY_GLOBAL_MAX_CONCURRENCY`, `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`,
//! `TELEPHONY_SEMAPHORE_TTL_SEC`, `MAX_CONCURRENT_CALLS`, `DATABASE_URL`), the rest are
//! `DIALER_<SECTION>_<KEY>` ([`env`]). Errors name the key and the reason ([`validate`]). The data
//! plane's per-machine tuning file is read the same way ([`tuning`]).
//!
//! | section | type | owner |
//! |---|---|---|
//! | `[api]` | [`ApiSettings`] | `dialer-control-plane` |
//! | `[scheduler]` | [`SchedulerSettings`] (the reaper's and recorders' timings too) | `dialer-control-plane` |
//! | `[events]`, `[webhooks]` | [`EventsSettings`], [`WebhookSettings`] | `dialer-control-plane` |
//! | `[store]`, `[timeline]` | [`StoreSettings`], [`TimelineSettings`] | `dialer-store` |
//! | `[limits]` | [`LimitSettings`] | `dialer-limiter` |
//! | `[bus]` | [`BusSettings`] | `dialer-bus` |
//! | `[provider]` | [`ProviderSettings`] | `dialer-dataplane` |
//! | `[calling_rules]` | [`CallingRules`] | `dialer-domain` |
//! | `[telemetry]` | [`TelemetrySettings`] | this binary |

pub mod env;
pub mod tuning;
mod validate;

use std::path::Path;

use dialer_bus::BusSettings;
use dialer_control_plane::{ApiSettings, EventsSettings, SchedulerSettings, WebhookSettings};
use dialer_dataplane::ProviderSettings;
use dialer_domain::rules::CallingRules;
use dialer_limiter::LimitSettings;
use dialer_store::{StoreSettings, TimelineSettings};
use serde::{Deserialize, Serialize};

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

/// A value from the environment that cannot be used, and what to give.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a number: give digits, e.g. 100")]
    NotANumber(String),
    #[error("{0:?} is not HOST:PORT, e.g. 127.0.0.1:8081")]
    NotAnAddress(String),
    #[error("{0:?} is not an IP address, e.g. 10.0.0.5")]
    NotAnIp(String),
    #[error("{value:?} is not one of {known}")]
    NotKnown { value: String, known: &'static str },
    #[error("{0:?}: the level must be one of trace, debug, info, warn, error, off")]
    NotALevel(String),
    #[error("no such key: see config/dialer.toml for the keys")]
    UnknownKey,
}

pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// The whole product's configuration: one section per component, each of its owner's type.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiSettings,
    pub store: StoreSettings,
    pub limits: LimitSettings,
    pub bus: BusSettings,
    pub provider: ProviderSettings,
    pub scheduler: SchedulerSettings,
    pub timeline: TimelineSettings,
    pub telemetry: TelemetrySettings,
    /// The recipient's calling rules of campaigns without their own (lawful US defaults:
    /// 08:00–21:00 recipient local time, Florida and Oklahoma 08:00–20:00, no attempt limits).
    pub calling_rules: CallingRules,
    /// The event log and the live stream.
    pub events: EventsSettings,
    /// Webhook delivery.
    pub webhooks: WebhookSettings,
}

/// Span export (logs always go to stderr): this binary's own section.
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
            span_filter: "info,dialer_control_plane=debug,dialer_store=debug,dialer_dataplane=info,tower_http=debug"
                .into(),
        }
    }
}

impl Config {
    /// Reads `path` (if given), applies overrides from `env`, reads the trunks' passwords from
    /// it, validates.
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
        env::apply(&mut cfg, &env)?;
        env::read_passwords(&mut cfg.provider, &env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text, refusing unknown keys.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Refuses impossible values, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::config(self)
    }

    /// Refuses to serve without keys on an address other machines can reach.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        validate::exposure(&self.api)
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

#[cfg(test)]
mod tests;
