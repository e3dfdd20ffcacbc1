//! The API's settings (`[api]`). Read and layered by the binary; this crate owns the type and
//! its defaults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The REST API (`[api]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (a 1M-target create is about 40 MB).
    pub max_body_bytes: usize,
    /// Most targets in one create or targets request.
    pub max_targets_per_request: usize,
    /// Numbers in a CSV list written without `+` or an international prefix are national
    /// numbers of this region (ISO 3166-1 alpha-2; a request's `region` overrides it).
    pub default_region: String,
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
    #[serde(rename = "campaign_cache_ms", with = "dialer_domain::duration::millis")]
    pub campaign_cache: Duration,
    /// Live streams (`/api/v1/events`, `/api/v1/campaigns/{id}/events`) one API key may hold
    /// open at once (without keys: all clients together).
    pub max_streams_per_key: usize,
    /// Webhook endpoints at most.
    pub max_webhooks: usize,
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

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_body_bytes: 64 * 1024 * 1024,
            max_targets_per_request: 1_000_000,
            default_region: "US".into(),
            default_page_size: 100,
            max_page_size: 1000,
            keys: Vec::new(),
            rate_limit_per_key: 1000,
            campaign_cache: Duration::from_millis(250),
            max_streams_per_key: 32,
            max_webhooks: 100,
        }
    }
}
