//! The telephony provider's settings (`[provider]`): which provider, the seed mock's draws, and
//! the SIP provider's trunks and timers. One flat section, as operators write it; the mock reads
//! its keys, the SIP provider its own. Read and layered by the binary; this crate owns the type
//! and its defaults.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dialer_domain::duration::millis;
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::sip::TrunkSettings;

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

/// A name that is not one of the providers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of \"mock\", \"sip\"")]
pub struct UnknownProvider(pub String);

impl std::str::FromStr for ProviderKind {
    type Err = UnknownProvider;
    fn from_str(v: &str) -> Result<ProviderKind, UnknownProvider> {
        match v.trim() {
            "mock" => Ok(ProviderKind::Mock),
            "sip" => Ok(ProviderKind::Sip),
            _ => Err(UnknownProvider(v.to_string())),
        }
    }
}

/// The telephony provider (`[provider]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// `mock` or `sip` (`DIALER_PROVIDER_KIND`).
    pub kind: ProviderKind,
    /// Mock: share of calls answered (seed: 0.8).
    pub answer_rate: f64,
    /// Mock: share of failures that may be retried (seed: 0.7).
    pub retryable_share: f64,
    /// Mock: call length, uniform in `[min_call, max_call]` (seed: 1–5 s); failures take as long.
    #[serde(rename = "min_call_ms", with = "millis")]
    pub min_call: Duration,
    /// Mock: the longest call; SIP: the longest talk time (BYE after this long answered).
    #[serde(rename = "max_call_ms", with = "millis")]
    pub max_call: Duration,
    /// Mock: time to answer within an answered call, at most this (0 = at once).
    #[serde(rename = "max_ring_ms", with = "millis")]
    pub max_ring: Duration,
    /// Mock: the draws' seed (each shard its own stream of it).
    pub seed: u64,
    /// Mock: append every call placed to this file (`DIALER_PROVIDER_LEDGER`), the carrier's view
    /// that fault runs (`bench chaos`) check across processes; empty = off.
    pub ledger: String,
    /// SIP: the trunks calls go out on.
    pub trunks: Vec<TrunkSettings>,
    /// SIP: CANCEL an unanswered call after this long ringing (`no_answer`).
    #[serde(rename = "ring_timeout_ms", with = "millis")]
    pub ring_timeout: Duration,
    /// SIP: the address of this host the shards' UDP sockets bind to (each shard its own port)
    /// and advertise in Via and Contact (`DIALER_SIP_BIND`): an address the trunks can reach.
    #[serde(rename = "sip_bind")]
    pub bind_ip: IpAddr,
    /// SIP: RFC 3261 T1 (round-trip estimate); Timers A, B, E, F derive from it (B and F are
    /// 64 × T1).
    #[serde(rename = "sip_t1_ms", with = "millis")]
    pub t1: Duration,
    /// SIP: where answered calls' audio goes, the RTP `ip:port` of a media server named in the
    /// SDP offer; empty = this host, port 9 (discard).
    #[serde(rename = "media_endpoint", deserialize_with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub media: Option<SocketAddr>,
    /// SIP: hand answered calls on with REFER to this URI (an IVR, queue or agent); empty = keep
    /// them until either side hangs up or `max_call_ms` passes.
    #[serde(deserialize_with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub refer_to: Option<String>,
    /// SIP: consecutive failures (5xx, timeouts) that take a trunk out of rotation.
    pub trunk_failures: u32,
    /// SIP: first back-off of a trunk out of rotation (doubled at each failure, up to 16 ×).
    #[serde(rename = "trunk_backoff_ms", with = "millis")]
    pub trunk_backoff: Duration,
    /// SIP: a trunk's `max_cps` INVITEs go out over 1 s + this, so jitter up to this much between
    /// our send and the carrier's count (scheduling, network) never shows it more than
    /// `max_cps` in a second.
    #[serde(rename = "sip_cps_margin_ms", with = "millis")]
    pub cps_margin: Duration,
    /// SIP: the UDP ports for the RTP of calls with a media plan (one even port a call, split
    /// over every shard of the host).
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// SIP: the control plane's base URL the shards fetch prompts from
    /// (`GET /api/v1/prompts/{id}/audio`, `DIALER_PROMPTS_URL`); `dialer up` uses its own API.
    pub prompts_url: String,
    /// SIP: the environment variable holding the API key for `prompts_url` (when the API needs
    /// one); `dialer up` uses its first configured key.
    pub prompts_api_key_env: String,
    /// The API key, read from `prompts_api_key_env` at start (never in a file).
    #[serde(skip)]
    pub prompts_api_key: Option<String>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            kind: ProviderKind::Mock,
            answer_rate: 0.8,
            retryable_share: 0.7,
            min_call: Duration::from_secs(1),
            max_call: Duration::from_secs(5),
            max_ring: Duration::from_millis(500),
            seed: 1,
            ledger: String::new(),
            trunks: Vec::new(),
            ring_timeout: Duration::from_secs(30),
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            t1: Duration::from_millis(500),
            media: None,
            refer_to: None,
            trunk_failures: 3,
            trunk_backoff: Duration::from_secs(30),
            cps_margin: Duration::from_millis(100),
            rtp_port_min: 20_000,
            rtp_port_max: 29_999,
            prompts_url: String::new(),
            prompts_api_key_env: String::new(),
            prompts_api_key: None,
        }
    }
}

impl ProviderSettings {
    /// The longest a call may last: the ring timeout plus the maximum call length (SIP: plus
    /// the wait for a channel and CPS slot, bounded by the dispatch deadline's reaper grace, and
    /// Timer B or F of the INVITE and the BYE).
    pub fn longest_call(&self) -> Duration {
        match self.kind {
            ProviderKind::Mock => self.max_ring.saturating_add(self.max_call),
            ProviderKind::Sip => {
                self.ring_timeout.saturating_add(self.max_call).saturating_add(self.t1.saturating_mul(128))
            }
        }
    }
}

/// An optional value whose absence operators may also write as `""`.
fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_units_and_empty_means_none() {
        let p: ProviderSettings = toml::from_str(
            "kind = \"sip\"\nmin_call_ms = 2\nsip_t1_ms = 100\nsip_bind = \"10.0.0.5\"\nmedia_endpoint = \"\"\nrefer_to = \"sip:q@ivr\"\n",
        )
        .expect("parses");
        assert_eq!(
            (p.kind, p.min_call, p.t1),
            (ProviderKind::Sip, Duration::from_millis(2), Duration::from_millis(100))
        );
        assert_eq!(p.bind_ip, IpAddr::from([10, 0, 0, 5]));
        assert_eq!((p.media, p.refer_to.as_deref()), (None, Some("sip:q@ivr")));
        assert!(toml::from_str::<ProviderSettings>("media_endpoint = \"nowhere\"\n").is_err());
        assert!(toml::from_str::<ProviderSettings>("ring_timout_ms = 5\n").is_err(), "unknown keys refused");
    }

    #[test]
    fn the_longest_call_covers_the_providers_own_timers() {
        let mock = ProviderSettings::default();
        assert_eq!(mock.longest_call(), Duration::from_millis(5500));
        let sip = ProviderSettings { kind: ProviderKind::Sip, ..ProviderSettings::default() };
        assert_eq!(sip.longest_call(), Duration::from_millis(30_000 + 5_000 + 64_000));
    }
}
