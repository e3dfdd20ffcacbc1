//! What the API answers about campaigns, calls and their stats. The store reads these from its
//! rows; the handlers serialize them.

use chrono::{DateTime, Utc};
use dialer_domain::campaign::{CallStatus, CampaignStatus};
use dialer_domain::duration;
use dialer_domain::hours::Window;
use dialer_domain::retry::RetryPolicy;
use dialer_domain::rules::CallingRules;
use dialer_domain::settings::{CampaignSettings, Telephony};
use dialer_domain::wait::Hold;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RetryPolicyView {
    pub max_attempts: u32,
    #[schema(example = "2s")]
    pub base_delay: String,
    #[schema(example = "2m")]
    pub max_delay: String,
    pub jitter: f64,
    /// Outcomes that are retried.
    pub retry_on: Vec<String>,
}

impl From<RetryPolicy> for RetryPolicyView {
    fn from(p: RetryPolicy) -> Self {
        RetryPolicyView {
            max_attempts: p.max_attempts,
            base_delay: duration::format(p.base_delay),
            max_delay: duration::format(p.max_delay),
            jitter: p.jitter,
            retry_on: p.retry_on.names().into_iter().map(str::to_string).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BusinessHourView {
    pub day_of_week: u8,
    pub start: String,
    pub end: String,
}

impl From<&Window> for BusinessHourView {
    fn from(w: &Window) -> Self {
        BusinessHourView { day_of_week: w.day_of_week, start: w.start_hhmm(), end: w.end_hhmm() }
    }
}

/// A campaign as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Campaign {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub time_zone: String,
    pub max_concurrent_calls: u32,
    /// Weight in the fair division of a binding global cap.
    pub weight: u32,
    pub retry_policy: RetryPolicyView,
    /// Empty = 24×7.
    pub business_hours: Vec<BusinessHourView>,
    /// SIP settings of the campaign (`{}` = the provider's).
    pub telephony: Telephony,
    /// The campaign's own calling rules; `null` = the process's `[calling_rules]`.
    pub calling_rules: Option<CallingRules>,
    pub status: CampaignStatus,
    /// Registered numbers.
    pub target_count: i64,
    /// Only in the answer to a create: listings of a number already listed, merged into the
    /// first (one target and one call per number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates_merged: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Campaign {
    pub fn new(id: Uuid, s: &CampaignSettings, status: CampaignStatus, target_count: i64, ts: Timestamps) -> Campaign {
        Campaign {
            id,
            name: s.name.clone(),
            description: s.description.clone(),
            time_zone: s.time_zone.clone(),
            max_concurrent_calls: s.max_concurrent_calls,
            weight: s.weight,
            retry_policy: s.retry_policy.into(),
            business_hours: s.business_hours.iter().map(BusinessHourView::from).collect(),
            telephony: s.telephony.clone(),
            calling_rules: s.calling_rules.clone(),
            status,
            target_count,
            duplicates_merged: None,
            created_at: ts.created_at,
            updated_at: ts.updated_at,
            started_at: ts.started_at,
            completed_at: ts.completed_at,
        }
    }
}

/// The life-cycle timestamps of a campaign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timestamps {
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignList {
    pub campaigns: Vec<Campaign>,
    /// Pass as `after_id` for the next page; absent on the last page.
    pub next_after_id: Option<Uuid>,
}

/// Counts over a campaign's call rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CampaignStats {
    pub campaign_id: Uuid,
    /// All calls (one per registered target at creation, plus re-queued and API calls).
    pub total_calls: i64,
    /// Waiting to be dispatched, including calls waiting for a retry.
    pub pending_calls: i64,
    /// Dispatched to the data plane, not yet dialing.
    pub queued_calls: i64,
    /// Being dialed or talking.
    pub in_progress_calls: i64,
    pub completed_calls: i64,
    pub failed_calls: i64,
    /// Attempts beyond each call's first.
    pub retries_attempted: i64,
    /// Attempts made in all.
    pub attempts_total: i64,
    /// Failed calls by the outcome of their last attempt (the rest of `failed_calls` were
    /// cancelled when the campaign completed).
    pub failed_by_outcome: FailedByOutcome,
    /// Calls ended without a dial by the recipient's calling rules.
    pub skipped_calls: i64,
    pub skipped_by_reason: SkippedByReason,
    /// Answered attempts of a campaign with `telephony.media`, by what their media came to.
    #[serde(default)]
    pub media: MediaStats,
}

/// What answered attempts' media came to (counted when their outcome is recorded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MediaStats {
    /// By detection's decision (`unknown`: no detection, or it was not sure).
    pub answered_human: i64,
    pub answered_machine: i64,
    pub answered_unknown: i64,
    /// Voicemail messages played to their end.
    pub voicemail_left: i64,
    /// Numbers opted out by their keypress.
    pub opted_out: i64,
    /// A person answered and their message started more than 2 s after their greeting ended,
    /// or never (47 CFR 64.1200(a)(7): at most 3 % of the calls people answer).
    pub abandoned: i64,
}

impl MediaStats {
    /// Abandoned calls per answered-by-a-person call (0 when none was).
    pub fn abandoned_share(&self) -> f64 {
        if self.answered_human == 0 { 0.0 } else { self.abandoned as f64 / self.answered_human as f64 }
    }
}

/// Skipped calls by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SkippedByReason {
    /// On the global or the campaign's do-not-call list.
    pub dnc: i64,
    /// The number maps to no time zone and the rules have no fallback.
    pub no_zone: i64,
}

/// Failed calls by their last attempt's outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailedByOutcome {
    pub busy: i64,
    pub no_answer: i64,
    pub rejected: i64,
    pub invalid_number: i64,
    pub failed: i64,
    pub unknown_outcome: i64,
}

/// One call as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Call {
    pub id: Uuid,
    pub campaign_id: Uuid,
    pub phone_number: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub status: CallStatus,
    /// Attempts made so far.
    pub attempt_count: u32,
    /// When the next attempt may start (pending calls).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A pending call's reason for not being dialled now, and until when (`until` absent: until
    /// something else changes, e.g. a call ends or the campaign is resumed). Absent when the call
    /// is due (the next tick claims it) or not pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Its zone key and the rule its last hold was by (what `hold` is worked out from).
    #[serde(skip)]
    #[schema(ignore)]
    pub zone: Option<String>,
    #[serde(skip)]
    #[schema(ignore)]
    pub held_for: Option<String>,
}

/// `GET /api/v1/campaigns/{id}/stats`: the counts, and why the pending calls wait now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CampaignStatsView {
    #[serde(flatten)]
    pub stats: CampaignStats,
    pub waiting: Waiting,
}

/// How a campaign's pending calls wait now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Waiting {
    /// Pending calls nothing holds back: the next tick claims them.
    pub due: u64,
    /// Every reason ([`dialer_domain::wait::HoldReason`]): how many calls it holds, and the
    /// soonest any of them may go.
    pub held: std::collections::BTreeMap<String, HeldCalls>,
    /// When the soonest closed window opens: business hours, or a recipient's window or
    /// blackout day (`null`: none is closed).
    pub next_window_at: Option<DateTime<Utc>>,
}

/// Calls held for one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeldCalls {
    pub calls: u64,
    /// The soonest any of them may go (`null`: when something else changes).
    pub until: Option<DateTime<Utc>>,
}

/// One attempt of a call, from the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallAttempt {
    pub attempt: u32,
    /// started, answered, completed, failed or unknown.
    pub outcome: String,
    pub started_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub reason: Option<String>,
    pub retryable: Option<bool>,
    /// The SIP final response of the attempt (SIP provider): its status code (absent when none
    /// came, e.g. Timer B) and reason phrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_reason: Option<String>,
    /// What the attempt's media came to (a campaign with `telephony.media`): who answered
    /// (`answered_by`), detection's reason, the key pressed (`dtmf`), `opted_out`,
    /// `voicemail_left`, when the message started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<dialer_domain::media::MediaResult>,
}

/// `GET /api/v1/calls/{id}`: the call and its attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: Call,
    pub attempts: Vec<CallAttempt>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CallList {
    pub calls: Vec<Call>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Answer of `POST /api/v1/campaigns/{id}/targets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueTargetsResponse {
    /// New calls created.
    pub queued: u64,
    /// Numbers that already had a call waiting or in progress (no second call was created).
    pub already_queued: u64,
    /// Listings of a number already listed in this request, merged into the first.
    #[serde(default)]
    pub duplicates_merged: u64,
}

/// A prompt (`POST /api/v1/prompts`): audio an answered call plays, named by a campaign's
/// `telephony.media`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Prompt {
    pub id: Uuid,
    pub name: String,
    /// Its length, at 8 kHz.
    pub duration_ms: u64,
    /// SHA-256 of the stored audio (8 kHz mono 16-bit PCM WAV), hex.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PromptList {
    pub prompts: Vec<Prompt>,
}

/// One change in the audit log: who (the key's id, never the key; `open` without keys;
/// `console:ID` through the console), what (method, path, the answer's status), when, and for
/// settings changes the settings before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub key_id: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// A page of the audit log, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<i64>,
}
