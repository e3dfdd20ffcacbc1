//! Webhook endpoints as the API sees them: the requests, their validation into
//! [`EndpointSettings`] (each refusal names its field) and the view. Pure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use dialer_domain::FieldError;
use dialer_domain::events::{EndpointSettings, EventType, Subscription};

/// Most requests in flight to one endpoint, across every control-plane replica.
pub const MAX_CONCURRENCY: u32 = 256;
/// Most requests a second to one endpoint.
pub const MAX_RATE: u32 = 10_000;

/// Body of `POST /api/v1/webhooks`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where events are POSTed: `http://` or `https://`.
    #[schema(max_length = 2000)]
    pub url: String,
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    /// The signing secret (16–200 characters); omitted = one is generated and returned once.
    pub secret: Option<String>,
    /// Event types to send (`call.completed`, …); omitted or `[]` = all.
    pub event_types: Option<Vec<String>>,
    /// Only this campaign's events; omitted = every campaign's.
    pub campaign_id: Option<Uuid>,
    /// Requests in flight at once (1–256, default 16), across every replica.
    #[schema(minimum = 1, maximum = 256)]
    pub max_concurrency: Option<i64>,
    /// Requests per second (1–10,000, default 100).
    #[schema(minimum = 1, maximum = 10000)]
    pub rate_per_sec: Option<i64>,
}

/// Body of `PATCH /api/v1/webhooks/{id}`: omitted fields keep their value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[schema(max_length = 2000)]
    pub url: Option<String>,
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// `null` is not accepted: delete and re-create to widen an endpoint to every campaign.
    pub campaign_id: Option<Uuid>,
    #[schema(minimum = 1, maximum = 256)]
    pub max_concurrency: Option<i64>,
    #[schema(minimum = 1, maximum = 10000)]
    pub rate_per_sec: Option<i64>,
    /// `true` re-enables an endpoint disabled by a 410 (its dead letters stay until replayed).
    pub enabled: Option<bool>,
}

/// Body of `POST /api/v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// The new secret (16–200 characters); omitted = generated.
    pub secret: Option<String>,
    /// Seconds the old secret still signs (0–604,800; default 86,400): deliveries carry both
    /// signatures meanwhile, so receivers can switch without losing one.
    #[schema(minimum = 0, maximum = 604800)]
    pub previous_valid_for_sec: Option<i64>,
}

/// Body of `POST /api/v1/webhooks/{id}/dead-letters/replay`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Log positions (`seq` of the dead letters) to replay; omitted = every dead letter.
    pub seqs: Option<Vec<i64>>,
}

/// A webhook endpoint. The secret is shown only by the create and rotate answers.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    /// `[]` = all.
    pub event_types: Vec<String>,
    pub campaign_id: Option<Uuid>,
    pub max_concurrency: u32,
    pub rate_per_sec: u32,
    pub enabled: bool,
    /// Why it was disabled (a 410 Gone), when it is.
    pub disabled_reason: Option<String>,
    /// Present only in the answers of create and rotate-secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when the previous secret still signs, during a rotation.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How its deliveries have gone lately.
    pub health: EndpointHealth,
}

/// How an endpoint's deliveries have gone: its last success, since when its answers fail and
/// how many in a row; `flagged` once it keeps failing (see [`EndpointHealth::flagged`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndpointHealth {
    pub last_success_at: Option<DateTime<Utc>>,
    /// The first failed answer after the last success (`null` while the last one succeeded).
    pub failing_since: Option<DateTime<Utc>>,
    pub failures_in_a_row: i64,
    /// It keeps failing: at least 5 failures in a row for 10 minutes when it never succeeded,
    /// for an hour when it did (the retry window is a day; this says so well before).
    pub flagged: bool,
}

impl EndpointHealth {
    /// Failures in a row before an endpoint can be flagged.
    pub const MIN_FAILURES: i64 = 5;

    /// The health as stored, `flagged` worked out at `now`.
    pub fn at(
        last_success_at: Option<DateTime<Utc>>,
        failing_since: Option<DateTime<Utc>>,
        failures_in_a_row: i64,
        now: DateTime<Utc>,
    ) -> EndpointHealth {
        let after = match last_success_at {
            None => chrono::TimeDelta::minutes(10),
            Some(_) => chrono::TimeDelta::hours(1),
        };
        let flagged =
            failures_in_a_row >= Self::MIN_FAILURES && failing_since.is_some_and(|since| now - since >= after);
        EndpointHealth { last_success_at, failing_since, failures_in_a_row, flagged }
    }
}

/// A checked secret: 16–200 printable characters.
pub fn check_secret(field: &str, s: &str) -> Result<(), FieldError> {
    if !(16..=200).contains(&s.len()) || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::new(field, "must be 16–200 characters without spaces or control characters"));
    }
    Ok(())
}

/// A checked endpoint URL: parsed as a URL (WHATWG), `http` or `https`, a host, a numeric port,
/// no credentials, up to 2,000 characters. Where it may point is [`not_public`]'s (and the
/// control plane's setting's) business.
pub fn check_url(u: &str) -> Result<String, FieldError> {
    const WHAT: &str = "must be an http:// or https:// URL with a host, up to 2,000 characters";
    // A URL parser forgives `https:///path` (the host becomes `path`); an endpoint's URL is
    // written out, so it is refused.
    let written_host = u.split_once("://").is_some_and(|(_, rest)| !rest.starts_with('/'));
    if u.len() > 2000 || !written_host || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::new("url", WHAT));
    }
    let parsed = url::Url::parse(u).map_err(|e| FieldError::new("url", format!("{WHAT} ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::new("url", WHAT));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(FieldError::new(
            "url",
            "must not carry credentials (user:password@); deliveries are signed with the endpoint's secret",
        ));
    }
    Ok(u.to_string())
}

pub use url::Host;

/// The host of a URL [`check_url`] accepted, and its port (the scheme's when none is written).
pub fn host_port(u: &str) -> Option<(url::Host<String>, u16)> {
    let parsed = url::Url::parse(u).ok()?;
    Some((parsed.host()?.to_owned(), parsed.port_or_known_default()?))
}

/// Why deliveries may not go to `ip` by default (`None`: a public address): loopback,
/// link-local (169.254.0.0/16 holds the cloud metadata address), private, shared (carrier NAT),
/// multicast, broadcast or unspecified; IPv4 inside IPv6 (`::ffff:127.0.0.1`) as its IPv4.
pub fn not_public(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local (the cloud metadata address is one)")
            } else if v4.is_private() {
                Some("private")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() || o[0] == 0 || o[0] >= 240 {
                Some("unspecified, broadcast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return not_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified, broadcast or reserved")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local (the cloud metadata address is one)")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Event type names to types; `field` names the offending index.
pub fn parse_types(names: &[String]) -> Result<Vec<EventType>, FieldError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            EventType::parse(n).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                FieldError::new(
                    format!("event_types[{i}]"),
                    format!("unknown event type {n:?}; known: {}", known.join(", ")),
                )
            })
        })
        .collect()
}

fn in_range(field: &str, v: Option<i64>, default: u32, max: u32) -> Result<u32, FieldError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=i64::from(max)).contains(&n) => Ok(n as u32),
        Some(_) => Err(FieldError::new(field, format!("must be between 1 and {max}"))),
    }
}

impl CreateWebhookRequest {
    /// The settings, or the first field refused.
    pub fn validate(&self) -> Result<EndpointSettings, FieldError> {
        if let Some(s) = &self.secret {
            check_secret("secret", s)?;
        }
        let description = self.description.clone().unwrap_or_default();
        if description.len() > 4000 {
            return Err(FieldError::new("description", "must be at most 4,000 characters"));
        }
        Ok(EndpointSettings {
            url: check_url(&self.url)?,
            description,
            subscription: Subscription {
                types: parse_types(self.event_types.as_deref().unwrap_or(&[]))?,
                campaign: self.campaign_id,
            },
            max_concurrency: in_range("max_concurrency", self.max_concurrency, 16, MAX_CONCURRENCY)?,
            rate_per_sec: in_range("rate_per_sec", self.rate_per_sec, 100, MAX_RATE)?,
        })
    }
}

impl UpdateWebhookRequest {
    /// `current` with this patch applied, or the first field refused.
    pub fn apply(&self, current: &EndpointSettings) -> Result<EndpointSettings, FieldError> {
        let mut s = current.clone();
        if let Some(u) = &self.url {
            s.url = check_url(u)?;
        }
        if let Some(d) = &self.description {
            if d.len() > 4000 {
                return Err(FieldError::new("description", "must be at most 4,000 characters"));
            }
            s.description = d.clone();
        }
        if let Some(t) = &self.event_types {
            s.subscription.types = parse_types(t)?;
        }
        if self.campaign_id.is_some() {
            s.subscription.campaign = self.campaign_id;
        }
        s.max_concurrency = in_range("max_concurrency", self.max_concurrency, s.max_concurrency, MAX_CONCURRENCY)?;
        s.rate_per_sec = in_range("rate_per_sec", self.rate_per_sec, s.rate_per_sec, MAX_RATE)?;
        Ok(s)
    }
}

impl RotateSecretRequest {
    /// The new secret (or `None`: generate one) and how long the old one stays valid.
    pub fn validate(&self) -> Result<(Option<String>, std::time::Duration), FieldError> {
        if let Some(s) = &self.secret {
            check_secret("secret", s)?;
        }
        let secs = self.previous_valid_for_sec.unwrap_or(86_400);
        if !(0..=604_800).contains(&secs) {
            return Err(FieldError::new("previous_valid_for_sec", "must be between 0 and 604800"));
        }
        Ok((self.secret.clone(), std::time::Duration::from_secs(secs as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str) -> CreateWebhookRequest {
        CreateWebhookRequest { url: url.into(), ..Default::default() }
    }

    #[test]
    fn defaults_and_refusals_name_the_field() {
        let s = req("https://example.com/hook").validate().expect("valid");
        assert_eq!((s.max_concurrency, s.rate_per_sec, s.subscription.types.len()), (16, 100, 0));
        for (r, field) in [
            (req("ftp://x"), "url"),
            (req("https:///path"), "url"),
            (req("http://:8080/hook"), "url"),
            (req("http://example.com:80a/hook"), "url"),
            (req("http://user:pw@example.com/hook"), "url"),
            (req("http://example.com:99999/hook"), "url"),
            (CreateWebhookRequest { secret: Some("short".into()), ..req("http://h") }, "secret"),
            (CreateWebhookRequest { max_concurrency: Some(0), ..req("http://h") }, "max_concurrency"),
            (CreateWebhookRequest { rate_per_sec: Some(10_001), ..req("http://h") }, "rate_per_sec"),
            (CreateWebhookRequest { event_types: Some(vec!["call.done".into()]), ..req("http://h") }, "event_types[0]"),
        ] {
            assert_eq!(r.validate().expect_err("refused").field, field);
        }
    }

    #[test]
    fn an_endpoint_that_never_succeeded_is_flagged_after_ten_minutes_of_failures() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z").expect("time").to_utc();
        let min = chrono::TimeDelta::minutes;
        let h = |success: Option<DateTime<Utc>>, failures, at| EndpointHealth::at(success, Some(t0), failures, at);
        assert!(!h(None, 20, t0 + min(9)).flagged, "not yet ten minutes");
        assert!(h(None, 20, t0 + min(10)).flagged, "never succeeded, failing for ten minutes");
        assert!(!h(None, 4, t0 + min(60)).flagged, "too few failures: a quiet endpoint is not flagged");
        assert!(!h(Some(t0 - min(1)), 20, t0 + min(59)).flagged, "it worked before: an hour");
        assert!(h(Some(t0 - min(1)), 20, t0 + min(60)).flagged);
        assert!(!EndpointHealth::at(Some(t0), None, 0, t0 + min(600)).flagged, "healthy");
    }

    #[test]
    fn only_public_addresses_are_public() {
        let class = |s: &str| not_public(s.parse().expect("an address"));
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "unspecified"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
        ] {
            assert!(class(ip).is_some_and(|c| c.starts_with(why)), "{ip}: {:?}", class(ip));
        }
        for ip in ["93.184.216.34", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2606:4700::1111"] {
            assert_eq!(class(ip), None, "{ip}");
        }
        let (host, port) = host_port("https://[::1]/h").expect("parsed");
        assert_eq!((host.to_string(), port), ("[::1]".to_string(), 443));
    }

    #[test]
    fn a_patch_keeps_what_it_omits() {
        let s = req("http://h/a").validate().expect("valid");
        let p = UpdateWebhookRequest {
            rate_per_sec: Some(5),
            event_types: Some(vec!["call.failed".into()]),
            ..Default::default()
        };
        let t = p.apply(&s).expect("valid");
        assert_eq!((t.url.as_str(), t.rate_per_sec, t.max_concurrency), ("http://h/a", 5, 16));
        assert_eq!(t.subscription.types, vec![EventType::CallFailed]);
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_a_day_unless_told() {
        let (s, d) = RotateSecretRequest::default().validate().expect("valid");
        assert_eq!((s, d.as_secs()), (None, 86_400));
        let bad = RotateSecretRequest { previous_valid_for_sec: Some(-1), ..Default::default() };
        assert_eq!(bad.validate().expect_err("refused").field, "previous_valid_for_sec");
    }
}
