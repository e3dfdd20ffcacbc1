//! Campaign, target and call requests, and the validation that turns them into domain values
//! ([`NewCampaign`], [`CampaignSettings`], [`NewTarget`]).
//!
//! Every rejection is a [`FieldError`] naming the offending field with a JSON-path-like name
//! (`targets[3].phone_number`, `retry_policy.jitter`) and saying what would be accepted.

use std::collections::HashSet;

use dialer_domain::hours::{self, Window};
use dialer_domain::retry::RetryPolicy;
use dialer_domain::rules::CallingRules;
use dialer_domain::settings::{CampaignSettings, NewCampaign, NewTarget, Telephony};
use dialer_domain::{FieldError, duration, phone};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 4000;
pub const DEFAULT_MAX_CONCURRENT_CALLS: u32 = 500;
pub const MAX_CONCURRENT_CALLS_LIMIT: u32 = 1_000_000;
/// Largest campaign weight (see `CampaignSettings::weight`).
pub const WEIGHT_LIMIT: u32 = 1000;
pub const METADATA_MAX_BYTES: usize = 8 * 1024;
pub const BUSINESS_HOURS_MAX: usize = 7 * 24;

/// Body of `POST /api/v1/campaigns`. Unknown fields are refused.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaignRequest {
    /// Unique among campaigns, case-insensitively; 1–200 characters, no control characters.
    #[schema(
        required = true,
        nullable = false,
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"
    )]
    pub name: Option<String>,
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    /// IANA time zone of the business hours; default `UTC`.
    #[schema(example = "America/New_York")]
    pub time_zone: Option<String>,
    /// Most calls of this campaign in progress at once; default 500.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_concurrent_calls: Option<i64>,
    /// Relative weight when the global cap binds: campaigns share it max-min fair by demand,
    /// weighted by this; default 1.
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<i64>,
    #[serde(default, deserialize_with = "object_only")]
    pub retry_policy: Option<RetryPolicyInput>,
    /// How calls are placed over SIP (caller ID, ring timeout, media, REFER); the provider's
    /// settings where omitted.
    #[serde(default, deserialize_with = "object_only")]
    pub telephony: Option<Telephony>,
    /// The recipient's calling rules (local-time window, state rules, blackout dates, attempt
    /// limits); omitted = the process's `[calling_rules]` (lawful US defaults).
    #[serde(default, deserialize_with = "object_only")]
    pub calling_rules: Option<CallingRules>,
    /// Weekly windows in local time; omitted or empty = 24×7.
    pub business_hours: Option<Vec<BusinessHourInput>>,
    /// The complete list of numbers this campaign may call (at least one). A number listed
    /// more than once is merged into its first listing (one target, one call; the answer's
    /// `duplicates_merged` counts them).
    #[schema(required = true, nullable = false, min_items = 1)]
    pub targets: Option<Vec<TargetInput>>,
}

/// Body of `PUT /api/v1/campaigns/{id}`: every field optional; omitted fields keep their value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCampaignRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$")]
    pub name: Option<String>,
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    pub time_zone: Option<String>,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_concurrent_calls: Option<i64>,
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<i64>,
    /// Fields given replace the current ones; omitted ones are kept.
    #[serde(default, deserialize_with = "object_only")]
    pub retry_policy: Option<RetryPolicyInput>,
    /// Replaces the campaign's telephony settings as a whole; `{}` = the provider's.
    #[serde(default, deserialize_with = "object_only")]
    pub telephony: Option<Telephony>,
    /// Replaces the campaign's calling rules as a whole (`{}` = the lawful defaults).
    #[serde(default, deserialize_with = "object_only")]
    pub calling_rules: Option<CallingRules>,
    /// Replaces the whole schedule; `[]` = 24×7.
    pub business_hours: Option<Vec<BusinessHourInput>>,
}

#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyInput {
    /// Attempts in all, the first included; default 5.
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
    /// Default "2s".
    #[schema(example = "2s")]
    pub base_delay: Option<String>,
    /// Default "2m".
    #[schema(example = "2m")]
    pub max_delay: Option<String>,
    /// Fraction 0–1 of the backoff range that is randomised; default 1 (full decorrelated jitter).
    #[schema(minimum = 0, maximum = 1)]
    pub jitter: Option<f64>,
    /// Outcomes that are retried: any of busy, no_answer, rejected, invalid_number, failed,
    /// unknown_outcome; default busy, no_answer, failed, unknown_outcome. A failure the provider
    /// calls final (invalid_number from a 404, say) is not retried whatever this says.
    #[schema(example = json!(["busy", "no_answer", "failed"]))]
    pub retry_on: Option<Vec<String>>,
}

/// An optional nested settings object: serde would also read a struct from a JSON array
/// (`[null, null]`), which the API must refuse like any other wrong type. Reads through the
/// same map access, so an error inside still names its field (`retry_policy.jitter`).
fn object_only<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectOrNull<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOrNull<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_option(ObjectOrNull(std::marker::PhantomData))
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BusinessHourInput {
    /// 0 = Sunday … 6 = Saturday.
    #[schema(minimum = 0, maximum = 6)]
    pub day_of_week: i64,
    /// "HH:MM" local time.
    #[schema(example = "09:00", pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start: String,
    /// "HH:MM" local time, up to "24:00"; earlier than start = crosses midnight.
    #[schema(example = "18:00", pattern = "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
    pub end: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetInput {
    /// E.164, e.g. "+15555550001".
    #[schema(example = "+15555550001", pattern = r"^\+[0-9]{2,15}$")]
    pub phone_number: String,
    /// Free-form JSON object kept with the target (at most 8 KiB).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Body of `POST /api/v1/campaigns/{id}/targets`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueTargetsRequest {
    /// Registered numbers to call again (metadata, when given, replaces the target's).
    pub targets: Vec<TargetInput>,
}

/// Body of `POST /api/v1/calls`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCallRequest {
    #[schema(value_type = String, format = Uuid)]
    pub campaign_id: String,
    /// A number registered with the campaign (E.164).
    #[schema(example = "+15555550001", pattern = r"^\+[0-9]{2,15}$")]
    pub phone_number: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

fn check_name(name: &str) -> Result<String, FieldError> {
    let n = name.trim();
    if n.is_empty() {
        return Err(FieldError::new("name", "must not be empty"));
    }
    if n.chars().count() > NAME_MAX_CHARS {
        return Err(FieldError::new("name", format!("must be at most {NAME_MAX_CHARS} characters")));
    }
    if n.chars().any(char::is_control) {
        return Err(FieldError::new("name", "must not contain control characters"));
    }
    Ok(n.to_string())
}

fn check_description(d: &str) -> Result<String, FieldError> {
    if d.chars().count() > DESCRIPTION_MAX_CHARS {
        return Err(FieldError::new("description", format!("must be at most {DESCRIPTION_MAX_CHARS} characters")));
    }
    Ok(d.to_string())
}

fn check_time_zone(tz: &str) -> Result<String, FieldError> {
    hours::parse_tz(tz).map_err(|e| FieldError::new("time_zone", e.to_string()))?;
    Ok(tz.to_string())
}

fn check_max_concurrent(n: i64) -> Result<u32, FieldError> {
    if n < 1 || n > i64::from(MAX_CONCURRENT_CALLS_LIMIT) {
        return Err(FieldError::new(
            "max_concurrent_calls",
            format!("must be between 1 and {MAX_CONCURRENT_CALLS_LIMIT}"),
        ));
    }
    Ok(n as u32)
}

fn check_weight(n: i64) -> Result<u32, FieldError> {
    if !(1..=i64::from(WEIGHT_LIMIT)).contains(&n) {
        return Err(FieldError::new("weight", format!("must be between 1 and {WEIGHT_LIMIT}")));
    }
    Ok(n as u32)
}

fn check_retry(input: &RetryPolicyInput, base: RetryPolicy) -> Result<RetryPolicy, FieldError> {
    let f = |k: &str| format!("retry_policy.{k}");
    let mut p = base;
    if let Some(n) = input.max_attempts {
        if !(1..=i64::from(dialer_domain::retry::MAX_ATTEMPTS_LIMIT)).contains(&n) {
            return Err(FieldError::new(
                f("max_attempts"),
                format!("must be between 1 and {}", dialer_domain::retry::MAX_ATTEMPTS_LIMIT),
            ));
        }
        p.max_attempts = n as u32;
    }
    if let Some(d) = &input.base_delay {
        p.base_delay = duration::parse(d).map_err(|e| FieldError::new(f("base_delay"), e.to_string()))?;
    }
    if let Some(d) = &input.max_delay {
        p.max_delay = duration::parse(d).map_err(|e| FieldError::new(f("max_delay"), e.to_string()))?;
    }
    if let Some(j) = input.jitter {
        p.jitter = j;
    }
    if let Some(names) = &input.retry_on {
        p.retry_on = dialer_domain::outcome::OutcomeSet::parse(names).map_err(|i| {
            FieldError::new(
                f(&format!("retry_on[{i}]")),
                "must be one of busy, no_answer, rejected, invalid_number, failed, unknown_outcome",
            )
        })?;
    }
    p.check().map_err(|(k, m)| FieldError::new(f(k), m))?;
    Ok(p)
}

fn check_hours(input: &[BusinessHourInput]) -> Result<Vec<Window>, FieldError> {
    if input.len() > BUSINESS_HOURS_MAX {
        return Err(FieldError::new("business_hours", format!("at most {BUSINESS_HOURS_MAX} windows")));
    }
    input
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Window::parse(w.day_of_week, &w.start, &w.end)
                .map_err(|e| FieldError::new(format!("business_hours[{i}].{}", e.field()), e.to_string()))
        })
        .collect()
}

/// Validates one target's number and metadata; `field` prefixes the field names.
pub fn check_target(field: &str, t: &TargetInput) -> Result<NewTarget, FieldError> {
    phone::check_e164(&t.phone_number).map_err(|e| FieldError::new(format!("{field}.phone_number"), e.to_string()))?;
    let metadata = check_metadata(&format!("{field}.metadata"), t.metadata.as_ref())?;
    Ok(NewTarget { phone_number: t.phone_number.clone(), metadata })
}

/// Metadata must be a JSON object (null/absent = `{}`) of bounded size.
pub fn check_metadata(field: &str, m: Option<&Value>) -> Result<Value, FieldError> {
    match m {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(v @ Value::Object(_)) => {
            if v.to_string().len() > METADATA_MAX_BYTES {
                return Err(FieldError::new(field, format!("must be at most {METADATA_MAX_BYTES} bytes of JSON")));
            }
            Ok(v.clone())
        }
        Some(_) => Err(FieldError::new(field, "must be a JSON object")),
    }
}

/// Validates a list of targets. A number listed more than once (after normalization) is merged:
/// one target, the first listing's metadata; the second value counts the listings merged.
pub fn check_targets(targets: &[TargetInput], max: usize) -> Result<(Vec<NewTarget>, u64), FieldError> {
    if targets.is_empty() {
        return Err(FieldError::new("targets", "must list at least one target"));
    }
    if targets.len() > max {
        return Err(FieldError::new(
            "targets",
            format!("at most {max} targets per request; send the rest in further requests"),
        ));
    }
    let mut seen = HashSet::with_capacity(targets.len());
    let mut out = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let t = check_target(&format!("targets[{i}]"), t)?;
        if seen.insert(t.phone_number.clone()) {
            out.push(t);
        }
    }
    let merged = (targets.len() - out.len()) as u64;
    Ok((out, merged))
}

impl CreateCampaignRequest {
    /// Validates the request and fills in the defaults.
    pub fn validate(&self, max_targets: usize) -> Result<NewCampaign, FieldError> {
        let settings = self.validate_settings()?;
        let (targets, duplicates_merged) = check_targets(
            self.targets
                .as_deref()
                .ok_or_else(|| FieldError::new("targets", "is required: list the numbers this campaign may call"))?,
            max_targets,
        )?;
        Ok(NewCampaign { settings, targets, duplicates_merged })
    }

    /// Validates everything but the targets (a campaign whose targets come as a CSV list).
    pub fn validate_settings(&self) -> Result<CampaignSettings, FieldError> {
        let name = check_name(self.name.as_deref().ok_or_else(|| FieldError::new("name", "is required"))?)?;
        let description = check_description(self.description.as_deref().unwrap_or(""))?;
        let time_zone = check_time_zone(self.time_zone.as_deref().unwrap_or("UTC"))?;
        let max_concurrent_calls =
            self.max_concurrent_calls.map_or(Ok(DEFAULT_MAX_CONCURRENT_CALLS), check_max_concurrent)?;
        let weight = self.weight.map_or(Ok(1), check_weight)?;
        let retry_policy =
            check_retry(self.retry_policy.as_ref().unwrap_or(&RetryPolicyInput::default()), RetryPolicy::default())?;
        let business_hours = check_hours(self.business_hours.as_deref().unwrap_or(&[]))?;
        let telephony = self.telephony.clone().unwrap_or_default();
        telephony.check()?;
        if let Some(r) = &self.calling_rules {
            r.compile("calling_rules")?;
        }
        Ok(CampaignSettings {
            name,
            description,
            time_zone,
            max_concurrent_calls,
            weight,
            retry_policy,
            business_hours,
            telephony,
            calling_rules: self.calling_rules.clone(),
        })
    }
}

impl UpdateCampaignRequest {
    /// Applies the patch to `current`, validating what changes.
    pub fn apply(&self, current: &CampaignSettings) -> Result<CampaignSettings, FieldError> {
        let mut s = current.clone();
        if let Some(n) = &self.name {
            s.name = check_name(n)?;
        }
        if let Some(d) = &self.description {
            s.description = check_description(d)?;
        }
        if let Some(tz) = &self.time_zone {
            s.time_zone = check_time_zone(tz)?;
        }
        if let Some(n) = self.max_concurrent_calls {
            s.max_concurrent_calls = check_max_concurrent(n)?;
        }
        if let Some(n) = self.weight {
            s.weight = check_weight(n)?;
        }
        if let Some(r) = &self.retry_policy {
            s.retry_policy = check_retry(r, current.retry_policy)?;
        }
        if let Some(h) = &self.business_hours {
            s.business_hours = check_hours(h)?;
        }
        if let Some(t) = &self.telephony {
            t.check()?;
            s.telephony = t.clone();
        }
        if let Some(r) = &self.calling_rules {
            r.compile("calling_rules")?;
            s.calling_rules = Some(r.clone());
        }
        Ok(s)
    }

    /// True when the body changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.time_zone.is_none()
            && self.max_concurrent_calls.is_none()
            && self.weight.is_none()
            && self.retry_policy.is_none()
            && self.business_hours.is_none()
            && self.telephony.is_none()
            && self.calling_rules.is_none()
    }
}

/// Parses an id from a path or body; the error names `field`.
pub fn parse_id(field: &str, s: &str) -> Result<Uuid, FieldError> {
    Uuid::try_parse(s).map_err(|_| {
        FieldError::new(field, format!("{s:?} is not a valid id (a UUID such as 0192f0c1-7a5e-7c3b-9a61-1f2e3d4c5b6a)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn create(v: Value) -> Result<NewCampaign, FieldError> {
        serde_json::from_value::<CreateCampaignRequest>(v).expect("shape").validate(1000)
    }

    fn seed_body() -> Value {
        json!({
            "name": "test-campaign",
            "description": "Sample outbound campaign",
            "time_zone": "America/New_York",
            "max_concurrent_calls": 10,
            "retry_policy": {"max_attempts": 3, "base_delay": "2s", "max_delay": "30s", "jitter": 0.2},
            "business_hours": [{"day_of_week": 1, "start": "09:00", "end": "18:00"}],
            "targets": [{"phone_number": "+15555550001"}, {"phone_number": "+15555550002"}]
        })
    }

    #[test]
    fn seed_request_validates() {
        let c = create(seed_body()).expect("valid");
        assert_eq!(c.settings.max_concurrent_calls, 10);
        assert_eq!(c.settings.retry_policy.max_delay, Duration::from_secs(30));
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[0].metadata, json!({}));
    }

    #[test]
    fn defaults_fill_in() {
        let c = create(json!({"name": "x", "targets": [{"phone_number": "+15555550001"}]})).expect("valid");
        assert_eq!(c.settings.max_concurrent_calls, 500);
        assert_eq!(c.settings.weight, 1);
        assert_eq!(c.settings.retry_policy, RetryPolicy::default());
        assert_eq!(c.settings.time_zone, "UTC");
        assert!(c.settings.business_hours.is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"name": null}), "name"),
            (json!({"name": "  "}), "name"),
            (json!({"time_zone": "Nowhere/Land"}), "time_zone"),
            (json!({"max_concurrent_calls": 0}), "max_concurrent_calls"),
            (json!({"max_concurrent_calls": -5}), "max_concurrent_calls"),
            (json!({"weight": 0}), "weight"),
            (json!({"weight": 5000}), "weight"),
            (json!({"retry_policy": {"jitter": 2.0}}), "retry_policy.jitter"),
            (json!({"retry_policy": {"max_attempts": 0}}), "retry_policy.max_attempts"),
            (json!({"retry_policy": {"base_delay": "soon"}}), "retry_policy.base_delay"),
            (json!({"retry_policy": {"base_delay": "1m", "max_delay": "30s"}}), "retry_policy.max_delay"),
            (json!({"retry_policy": {"retry_on": ["busy", "answered"]}}), "retry_policy.retry_on[1]"),
            (json!({"retry_policy": {"retry_on": ["network_error"]}}), "retry_policy.retry_on[0]"),
            (json!({"telephony": {"caller_id": "555"}}), "telephony.caller_id"),
            (json!({"telephony": {"ring_timeout_ms": 10}}), "telephony.ring_timeout_ms"),
            (json!({"telephony": {"media_endpoint": "media:1"}}), "telephony.media_endpoint"),
            (json!({"telephony": {"refer_to": "tel:+15551234567"}}), "telephony.refer_to"),
            (json!({"telephony": {"refer_to": "sip:a@b>\r\nX: y"}}), "telephony.refer_to"),
            (
                json!({"business_hours": [{"day_of_week": 9, "start": "09:00", "end": "18:00"}]}),
                "business_hours[0].day_of_week",
            ),
            (
                json!({"business_hours": [{"day_of_week": 1, "start": "09:00", "end": "25:00"}]}),
                "business_hours[0].end",
            ),
            (json!({"targets": []}), "targets"),
            (json!({"targets": null}), "targets"),
            (json!({"targets": [{"phone_number": "555-0001"}]}), "targets[0].phone_number"),
            (json!({"targets": [{"phone_number": "+15555550001", "metadata": [1]}]}), "targets[0].metadata"),
        ];
        for (patch, field) in cases {
            let mut body = seed_body();
            for (k, v) in patch.as_object().expect("object") {
                body[k] = v.clone();
            }
            let err = create(body).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn a_number_listed_twice_is_merged_into_its_first_listing() {
        let mut body = seed_body();
        body["targets"] = json!([
            {"phone_number": "+15555550001", "metadata": {"n": 1}},
            {"phone_number": "+15555550002"},
            {"phone_number": "+15555550001", "metadata": {"n": 2}},
            {"phone_number": "+15555550001"},
        ]);
        let c = create(body).expect("merged, not refused");
        assert_eq!(c.duplicates_merged, 2);
        let numbers: Vec<_> = c.targets.iter().map(|t| (t.phone_number.as_str(), t.metadata.clone())).collect();
        assert_eq!(numbers, [("+15555550001", json!({"n": 1})), ("+15555550002", json!({}))]);
    }

    #[test]
    fn too_many_targets_is_refused() {
        let targets: Vec<Value> = (0..1001).map(|i| json!({"phone_number": format!("+1555{i:07}")})).collect();
        let mut body = seed_body();
        body["targets"] = Value::Array(targets);
        assert_eq!(create(body).expect_err("too many").field, "targets");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut body = seed_body();
        body["max_concurent_calls"] = json!(5);
        assert!(serde_json::from_value::<CreateCampaignRequest>(body).is_err());
    }

    #[test]
    fn update_merges_retry_policy_and_replaces_hours() {
        let current = create(seed_body()).expect("valid").settings;
        let patch: UpdateCampaignRequest = serde_json::from_value(json!({
            "description": "Evening calling window",
            "retry_policy": {"max_attempts": 4},
            "business_hours": []
        }))
        .expect("shape");
        let next = patch.apply(&current).expect("valid");
        assert_eq!(next.description, "Evening calling window");
        assert_eq!(next.retry_policy.max_attempts, 4);
        assert_eq!(next.retry_policy.max_delay, Duration::from_secs(30), "kept");
        assert!(next.business_hours.is_empty());
        assert_eq!(next.name, current.name);
        let bad: UpdateCampaignRequest = serde_json::from_value(json!({"max_concurrent_calls": 0})).expect("shape");
        assert_eq!(bad.apply(&current).expect_err("bad").field, "max_concurrent_calls");
    }

    #[test]
    fn ids_parse() {
        assert!(parse_id("id", "0192f0c1-7a5e-7c3b-9a61-1f2e3d4c5b6a").is_ok());
        assert_eq!(parse_id("id", "nope").expect_err("bad").field, "id");
    }
}
