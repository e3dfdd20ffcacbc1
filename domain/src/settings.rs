//! A campaign's validated settings and targets: what the API's validation produces and the store
//! keeps. The values here are already checked; building them from a request is the API's job
//! (`dialer-api`), checking a nested part (telephony, calling rules) is the part's own.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::FieldError;
use crate::hours::Window;
use crate::retry::RetryPolicy;
use crate::rules::CallingRules;

/// A campaign's configurable settings, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignSettings {
    pub name: String,
    pub description: String,
    pub time_zone: String,
    pub max_concurrent_calls: u32,
    /// Weight in the fair division of a binding global cap (1..=1000).
    pub weight: u32,
    pub retry_policy: RetryPolicy,
    pub business_hours: Vec<Window>,
    pub telephony: Telephony,
    /// `None` = the process's `[calling_rules]`.
    pub calling_rules: Option<CallingRules>,
}

/// A target, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTarget {
    pub phone_number: String,
    pub metadata: Value,
}

/// A create request, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCampaign {
    pub settings: CampaignSettings,
    pub targets: Vec<NewTarget>,
    /// Listings of a number already listed, merged into its first.
    pub duplicates_merged: u64,
}

/// How a campaign's calls are placed over SIP (the mock provider ignores it). Every field is
/// optional; the provider's setting applies where one is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Telephony {
    /// Caller ID presented in From (E.164); used when the trunk allows it
    /// (`allowed_caller_ids`), else the trunk's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(example = "+15005550006"))]
    pub caller_id: Option<String>,
    /// Ring timeout in ms (1000–300000): CANCEL after this long unanswered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 300000))]
    pub ring_timeout_ms: Option<u64>,
    /// Where answered calls' audio goes: the RTP `IP:PORT` of a media server, named in the SDP offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(example = "203.0.113.20:40000"))]
    pub media_endpoint: Option<String>,
    /// Hand answered calls on with REFER to this SIP URI (IVR, queue, agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(example = "sip:queue@ivr.example.com"))]
    pub refer_to: Option<String>,
    /// What an answered call plays and listens for (prompts, detection, keys); absent = nothing
    /// (signalling only, or `refer_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::media::MediaPlan>,
}

impl Telephony {
    pub fn is_empty(&self) -> bool {
        *self == Telephony::default()
    }

    /// Checks each field; the error names `telephony.<field>`.
    pub fn check(&self) -> Result<(), FieldError> {
        let f = |k: &str| format!("telephony.{k}");
        if let Some(c) = &self.caller_id {
            crate::phone::check_e164(c).map_err(|e| FieldError::new(f("caller_id"), e.to_string()))?;
        }
        if let Some(ms) = self.ring_timeout_ms
            && !(1000..=300_000).contains(&ms)
        {
            return Err(FieldError::new(f("ring_timeout_ms"), "must be between 1000 and 300000"));
        }
        if let Some(m) = &self.media_endpoint
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(FieldError::new(f("media_endpoint"), "must be IP:PORT, e.g. 203.0.113.20:40000"));
        }
        if let Some(r) = &self.refer_to {
            let ok = (r.starts_with("sip:") || r.starts_with("sips:"))
                && r.len() <= 512
                && !r.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
            if !ok {
                return Err(FieldError::new(f("refer_to"), "must be a SIP URI, e.g. sip:queue@ivr.example.com"));
            }
        }
        if let Some(m) = &self.media {
            m.check()?;
            if self.refer_to.is_some() {
                return Err(FieldError::new(
                    f("media"),
                    "an answered call either plays media or is referred: drop refer_to or media",
                ));
            }
        }
        Ok(())
    }
}
