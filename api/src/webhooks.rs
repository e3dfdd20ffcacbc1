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
}

/// A checked secret: 16–200 printable characters.
pub fn check_secret(field: &str, s: &str) -> Result<(), FieldError> {
    if !(16..=200).contains(&s.len()) || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::new(field, "must be 16–200 characters without spaces or control characters"));
    }
    Ok(())
}

fn check_url(u: &str) -> Result<String, FieldError> {
    let rest = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://"));
    let host = rest.and_then(|r| r.split(['/', '?', '#']).next()).unwrap_or("");
    if u.len() > 2000 || host.is_empty() || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::new("url", "must be an http:// or https:// URL with a host, up to 2,000 characters"));
    }
    Ok(u.to_string())
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
            (CreateWebhookRequest { secret: Some("short".into()), ..req("http://h") }, "secret"),
            (CreateWebhookRequest { max_concurrency: Some(0), ..req("http://h") }, "max_concurrency"),
            (CreateWebhookRequest { rate_per_sec: Some(10_001), ..req("http://h") }, "rate_per_sec"),
            (CreateWebhookRequest { event_types: Some(vec!["call.done".into()]), ..req("http://h") }, "event_types[0]"),
        ] {
            assert_eq!(r.validate().expect_err("refused").field, field);
        }
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
