//! Why a pending call is not being dialled, and until when. Worked out when a call or a
//! campaign's stats are read, from what that read has anyway (the campaign, its live count, the
//! call's zone key and next attempt): nothing is added to the scheduler's ticks.
//!
//! The reasons, in the order they are checked (the first that applies is the one shown): the
//! campaign is not running; its business hours are closed; the recipient's window is closed or
//! it is a blackout date in the recipient's zone; the number reached an attempt limit; the retry
//! back-off has not passed; the campaign's or the global cap is reached (the call waits for a
//! token). A pending call none of these hold is due: the next tick claims it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::hours::BusinessHours;
use crate::rules::{Gate, HoldRule, Rules};

/// Why a pending call waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// The campaign is pending (not started) or paused.
    CampaignNotRunning,
    /// The campaign's business hours are closed.
    BusinessHours,
    /// Outside the recipient's calling window in their time zone.
    OutsideWindow,
    /// A blackout date in the recipient's time zone.
    Blackout,
    /// The number reached an attempt limit (per 24 hours or per local day).
    AttemptLimit,
    /// The retry back-off after the last attempt has not passed.
    RetryBackoff,
    /// The campaign's `max_concurrent_calls` are all in progress: waits for one to end.
    CampaignCap,
    /// The global concurrency cap is reached: waits for a call of any campaign to end.
    GlobalCap,
}

impl HoldReason {
    pub const ALL: [HoldReason; 8] = [
        HoldReason::CampaignNotRunning,
        HoldReason::BusinessHours,
        HoldReason::OutsideWindow,
        HoldReason::Blackout,
        HoldReason::AttemptLimit,
        HoldReason::RetryBackoff,
        HoldReason::CampaignCap,
        HoldReason::GlobalCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::CampaignNotRunning => "campaign_not_running",
            HoldReason::BusinessHours => "business_hours",
            HoldReason::OutsideWindow => "outside_window",
            HoldReason::Blackout => "blackout",
            HoldReason::AttemptLimit => "attempt_limit",
            HoldReason::RetryBackoff => "retry_backoff",
            HoldReason::CampaignCap => "campaign_cap",
            HoldReason::GlobalCap => "global_cap",
        }
    }
}

/// Why a pending call is not being dialled now, and until when (`None`: until something else
/// happens, e.g. the campaign is resumed or a call ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hold {
    pub reason: HoldReason,
    pub until: Option<DateTime<Utc>>,
}

/// What a read knows about a campaign, once for all its calls.
#[derive(Clone, Copy, Debug)]
pub struct CampaignNow<'a> {
    /// In progress (not pending, paused or completed).
    pub running: bool,
    pub hours: &'a BusinessHours,
    /// The campaign's recipient rules (or the server's).
    pub rules: &'a Rules,
    /// Calls queued or in progress, and `max_concurrent_calls`.
    pub live: (u64, u32),
    /// Calls queued or in progress in every campaign, and the global cap (0: none).
    pub global: (u64, u32),
    pub now: DateTime<Utc>,
}

/// What a read knows about one pending call.
#[derive(Clone, Copy, Debug)]
pub struct PendingCall<'a> {
    /// Its zone key ([`crate::recipient::zone_key`]).
    pub zone: &'a str,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The rule the scheduler last held it back by, if that set `next_attempt_at`.
    pub held_for: Option<HoldRule>,
}

/// Why `call` waits, or `None` when it is due.
pub fn hold(c: &CampaignNow<'_>, call: &PendingCall<'_>) -> Option<Hold> {
    let now = c.now;
    if !c.running {
        return Some(Hold { reason: HoldReason::CampaignNotRunning, until: None });
    }
    if !c.hours.is_open(now) {
        return Some(Hold { reason: HoldReason::BusinessHours, until: c.hours.next_open(now) });
    }
    if let Gate::Closed(rule) = c.rules.gate(call.zone, now) {
        let reason = if rule == HoldRule::Blackout { HoldReason::Blackout } else { HoldReason::OutsideWindow };
        return Some(Hold { reason, until: c.rules.opens_at(call.zone, now) });
    }
    if let Some(at) = call.next_attempt_at.filter(|t| *t > now) {
        let reason = match call.held_for {
            Some(HoldRule::AttemptLimit) => HoldReason::AttemptLimit,
            // Held while its zone was closed; open now, it is claimed at the recheck.
            Some(HoldRule::Window | HoldRule::Blackout) => HoldReason::OutsideWindow,
            None => HoldReason::RetryBackoff,
        };
        return Some(Hold { reason, until: Some(at) });
    }
    if c.live.0 >= u64::from(c.live.1) {
        return Some(Hold { reason: HoldReason::CampaignCap, until: None });
    }
    if c.global.1 > 0 && c.global.0 >= u64::from(c.global.1) {
        return Some(Hold { reason: HoldReason::GlobalCap, until: None });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hours::Window;
    use crate::rules::CallingRules;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("instant").with_timezone(&Utc)
    }

    fn ny() -> String {
        crate::recipient::zone_key("+12125550100", &serde_json::json!({}))
    }

    fn check(hours: &BusinessHours, rules: &Rules, at: &str, call: PendingCall<'_>) -> Option<Hold> {
        let c = CampaignNow { running: true, hours, rules, live: (3, 10), global: (50, 100), now: utc(at) };
        hold(&c, &call)
    }

    #[test]
    fn each_reason_in_its_order_with_when_it_ends() {
        let rules = CallingRules::default().compile("r").expect("rules");
        let always = BusinessHours { tz: chrono_tz::UTC, windows: vec![] };
        let zone = ny();
        let due = PendingCall { zone: &zone, next_attempt_at: None, held_for: None };
        // 07:35 in New York: the window opens at 08:00 (13:00Z).
        assert_eq!(
            check(&always, &rules, "2026-11-23T12:35:00Z", due),
            Some(Hold { reason: HoldReason::OutsideWindow, until: Some(utc("2026-11-23T13:00:00Z")) })
        );
        assert_eq!(check(&always, &rules, "2026-11-23T15:00:00Z", due), None, "due");
        // Business hours first: Monday 09:00–17:00 UTC only, read on Sunday.
        let weekdays =
            BusinessHours { tz: chrono_tz::UTC, windows: vec![Window::parse(1, "09:00", "17:00").expect("window")] };
        assert_eq!(
            check(&weekdays, &rules, "2026-11-22T15:00:00Z", due),
            Some(Hold { reason: HoldReason::BusinessHours, until: Some(utc("2026-11-23T09:00:00Z")) })
        );
        let later = Some(utc("2026-11-23T15:30:00Z"));
        let backoff = PendingCall { next_attempt_at: later, ..due };
        assert_eq!(
            check(&always, &rules, "2026-11-23T15:00:00Z", backoff),
            Some(Hold { reason: HoldReason::RetryBackoff, until: later })
        );
        let limited = PendingCall { next_attempt_at: later, held_for: Some(HoldRule::AttemptLimit), ..due };
        assert_eq!(
            check(&always, &rules, "2026-11-23T15:00:00Z", limited),
            Some(Hold { reason: HoldReason::AttemptLimit, until: later })
        );
    }

    #[test]
    fn a_call_that_may_start_waits_for_a_token_or_a_running_campaign() {
        let rules = CallingRules::off().compile("r").expect("rules");
        let hours = BusinessHours { tz: chrono_tz::UTC, windows: vec![] };
        let call = PendingCall { zone: "", next_attempt_at: None, held_for: None };
        let now = utc("2026-11-23T12:00:00Z");
        let c = CampaignNow { running: true, hours: &hours, rules: &rules, live: (10, 10), global: (10, 100), now };
        assert_eq!(hold(&c, &call), Some(Hold { reason: HoldReason::CampaignCap, until: None }));
        let c = CampaignNow { live: (4, 10), global: (100, 100), ..c };
        assert_eq!(hold(&c, &call).map(|h| h.reason), Some(HoldReason::GlobalCap));
        let c = CampaignNow { global: (100, 0), ..c };
        assert_eq!(hold(&c, &call), None, "no global cap");
        let c = CampaignNow { running: false, ..c };
        assert_eq!(hold(&c, &call).map(|h| h.reason), Some(HoldReason::CampaignNotRunning));
    }
}
