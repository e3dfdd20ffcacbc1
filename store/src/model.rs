//! What the store takes and returns beyond the domain's own values: the scheduler's view of a
//! campaign, claims and their screening, opt-outs to announce, the reaper's live calls, and the
//! answers of batched writes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::StoreError;
use dialer_api::views::Call;

/// Call filters and paging for [`Store::list_calls`].
#[derive(Clone, Debug, Default)]
pub struct CallQuery {
    pub after: Option<Uuid>,
    pub status: Option<dialer_domain::CallStatus>,
    pub limit: u32,
}

/// An in-progress campaign as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveCampaign {
    pub id: Uuid,
    pub time_zone: String,
    pub business_hours: Vec<dialer_domain::Window>,
    pub max_concurrent_calls: u32,
    /// Weight in the fair division of a binding global cap.
    pub weight: u32,
    /// The campaign's SIP settings, carried on every dispatch message.
    pub telephony: dialer_domain::settings::Telephony,
    /// The campaign's own calling rules (`None`: the process's).
    pub calling_rules: Option<dialer_domain::rules::CallingRules>,
    pub pending: i64,
    pub queued: i64,
    pub in_progress: i64,
    /// Answered calls a person picked up, and those of them abandoned (media campaigns).
    pub answered_human: i64,
    pub abandoned: i64,
}

/// A call moved to queued for dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedCall {
    pub id: Uuid,
    pub phone_number: String,
    /// The attempt number this dispatch is.
    pub attempt: u32,
    /// The number's zone key ([`dialer_domain::recipient`]).
    pub zone: String,
    /// The call's last event number, this claim's included.
    pub event_seq: u32,
    /// Its message's deadline: the data plane dials nothing past it.
    pub deadline: DateTime<Utc>,
}

/// A queued call whose claim's messages may not have reached the bus: published again as it was
/// (same attempt, same deadline).
#[derive(Clone, Debug, PartialEq)]
pub struct UnconfirmedClaim {
    pub campaign_id: Uuid,
    /// When it was claimed (its `queued_at`).
    pub claimed_at: DateTime<Utc>,
    pub call: ClaimedCall,
}

/// A claim screened by the recipient's rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Screened {
    /// Queued: publish these.
    pub dial: Vec<ClaimedCall>,
    /// Ended without a dial.
    pub skipped: Vec<(ClaimedCall, dialer_domain::rules::SkipReason)>,
    /// Back to pending until then.
    pub held: Vec<(ClaimedCall, chrono::DateTime<chrono::Utc>, dialer_domain::rules::HoldRule)>,
}

/// A do-not-call entry to announce to the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// Nil: the global list.
    pub list: Uuid,
    pub phone_number: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the recipient's calling rules would do now to a campaign's pending calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub campaign_id: Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
    pub pending_calls: u64,
    /// Would be dialled now (capacity permitting).
    pub dial_now: u64,
    /// Would end without a dial: on a do-not-call list.
    pub skipped_dnc: u64,
    /// Would end without a dial: no zone, and no fallback.
    pub skipped_no_zone: u64,
    /// Wait: outside the recipient's window now.
    pub held_outside_window: u64,
    /// Wait: a blackout date in the recipient's zone.
    pub held_blackout: u64,
    /// Wait: the number reached an attempt limit.
    pub held_attempt_limit: u64,
    /// Distinct zone keys among the pending calls.
    pub zones: u64,
}

impl Preview {
    /// Counts one call by what the rules decide.
    pub fn count(&mut self, v: dialer_domain::rules::Verdict) {
        use dialer_domain::rules::{HoldRule, SkipReason, Verdict};
        self.pending_calls += 1;
        let slot = match v {
            Verdict::Dial => &mut self.dial_now,
            Verdict::Skip(SkipReason::Dnc) => &mut self.skipped_dnc,
            Verdict::Skip(SkipReason::NoZone) => &mut self.skipped_no_zone,
            Verdict::Hold { rule: HoldRule::Window, .. } => &mut self.held_outside_window,
            Verdict::Hold { rule: HoldRule::Blackout, .. } => &mut self.held_blackout,
            Verdict::Hold { rule: HoldRule::AttemptLimit, .. } => &mut self.held_attempt_limit,
        };
        *slot += 1;
    }
}

/// A call whose current attempt is queued or in progress, as the reaper sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveCall {
    pub campaign_id: Uuid,
    pub id: Uuid,
    /// In progress (the data plane reported it started), else queued.
    pub started: bool,
    pub attempt: u32,
}

/// The answer to one `POST /calls` request: the call, and whether it was created (`false`: the
/// number's live call, returned).
pub type CallAnswer = Result<(Call, bool), StoreError>;

/// One `POST /calls` request, for [`Store::create_calls`].
#[derive(Clone, Debug, PartialEq)]
pub struct NewCall {
    pub campaign_id: Uuid,
    pub phone_number: String,
    /// `None` keeps the registered target's metadata.
    pub metadata: Option<Value>,
}

/// What a recorded batch did.
#[derive(Clone, Debug, Default)]
pub struct RecordReport {
    pub applied: u64,
    /// Duplicates, late or stale events: no change.
    pub ignored: u64,
    /// Events of calls this store does not know.
    pub unknown: u64,
    pub retries_scheduled: u64,
    /// Applied outcomes' media: answered by a person, a machine, unknown; voicemails left;
    /// keypress opt-outs; abandoned calls.
    pub media: [u64; 6],
    /// Final failures and why, for the dead-letter topic.
    pub dead_letters: Vec<(dialer_domain::messages::StatusEvent, String)>,
}
