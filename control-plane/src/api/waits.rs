//! Why pending calls wait ([`dialer_domain::wait`]): each call a read returns gets its `hold`,
//! and a campaign's stats count its pending calls by reason. Worked out per read from the
//! campaign, its live count and each call's zone key and next attempt; the scheduler's ticks
//! do nothing more for it.

use chrono::{DateTime, Utc};
use dialer_api::views::{Call, Campaign, CampaignStats, HeldCalls, Waiting};
use dialer_domain::campaign::{CallStatus, CampaignStatus};
use dialer_domain::hours::{BusinessHours, Window, parse_tz};
use dialer_domain::rules::{HoldRule, Rules};
use dialer_domain::wait::{self, CampaignNow, HoldReason, PendingCall};
use dialer_store::Corrupt;
use dialer_store::stats::PendingGroup;
use uuid::Uuid;

use super::{ApiError, AppState};

/// What the holds of one campaign's calls are worked out from.
pub(crate) struct Context {
    running: bool,
    hours: BusinessHours,
    rules: Rules,
    live: (u64, u32),
    global: (u64, u32),
}

impl Context {
    pub(crate) async fn of(st: &AppState, campaign_id: Uuid) -> Result<Context, ApiError> {
        let campaign = st.store.get_campaign(campaign_id).await?;
        let stats = st.store.stats(campaign_id).await?;
        Context::new(st, &campaign, &stats).await
    }

    /// From a campaign and its stats the caller has read already.
    pub(crate) async fn new(st: &AppState, campaign: &Campaign, stats: &CampaignStats) -> Result<Context, ApiError> {
        let campaign_id = campaign.id;
        let global_live = if st.global_cap > 0 { st.store.live_calls().await? } else { 0 };
        let corrupt = |c: Corrupt| ApiError::from(dialer_store::StoreError::from(c));
        let rules = campaign
            .calling_rules
            .as_ref()
            .unwrap_or(&st.calling_rules)
            .compile("calling_rules")
            .map_err(|source| corrupt(Corrupt::Rules { campaign: campaign_id, source }))?;
        let hours =
            hours(campaign).map_err(|e| corrupt(Corrupt::Value { what: "business hours", value: e.to_string() }))?;
        Ok(Context {
            running: campaign.status == CampaignStatus::InProgress,
            hours,
            rules,
            live: ((stats.queued_calls + stats.in_progress_calls).max(0) as u64, campaign.max_concurrent_calls),
            global: (global_live, st.global_cap),
        })
    }

    fn now(&self, now: DateTime<Utc>) -> CampaignNow<'_> {
        CampaignNow {
            running: self.running,
            hours: &self.hours,
            rules: &self.rules,
            live: self.live,
            global: self.global,
            now,
        }
    }
}

/// Why a stored campaign's business hours do not read (the API checked them when they were set).
#[derive(Debug, thiserror::Error)]
enum BadHours {
    #[error(transparent)]
    Zone(#[from] dialer_domain::hours::UnknownTimeZone),
    #[error(transparent)]
    Window(#[from] dialer_domain::hours::WindowError),
}

fn hours(c: &Campaign) -> Result<BusinessHours, BadHours> {
    let tz = parse_tz(&c.time_zone)?;
    let windows = c
        .business_hours
        .iter()
        .map(|h| Window::parse(i64::from(h.day_of_week), &h.start, &h.end))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BusinessHours { tz, windows })
}

fn held_for(rule: Option<&str>) -> Option<HoldRule> {
    match rule? {
        "attempt_limit" => Some(HoldRule::AttemptLimit),
        "blackout" => Some(HoldRule::Blackout),
        "window" => Some(HoldRule::Window),
        _ => None,
    }
}

/// Sets `hold` on each pending call of the campaign `ctx` describes.
pub(crate) fn fill(ctx: &Context, calls: &mut [Call], now: DateTime<Utc>) {
    let c = ctx.now(now);
    for call in calls.iter_mut().filter(|c| c.status == CallStatus::Pending) {
        let zone =
            call.zone.clone().unwrap_or_else(|| dialer_domain::recipient::zone_key(&call.phone_number, &call.metadata));
        let p = PendingCall {
            zone: &zone,
            next_attempt_at: call.next_attempt_at,
            held_for: held_for(call.held_for.as_deref()),
        };
        call.hold = wait::hold(&c, &p);
    }
}

/// The campaign's pending calls counted by reason.
pub(crate) fn waiting(ctx: &Context, groups: &[PendingGroup], now: DateTime<Utc>) -> Waiting {
    let c = ctx.now(now);
    let mut w = Waiting {
        held: HoldReason::ALL.iter().map(|r| (r.as_str().to_string(), HeldCalls::default())).collect(),
        ..Waiting::default()
    };
    for g in groups {
        let zone = g.zone.as_deref().unwrap_or("");
        let p = PendingCall { zone, next_attempt_at: g.next_attempt_at, held_for: held_for(g.held_for.as_deref()) };
        let Some(hold) = wait::hold(&c, &p) else {
            w.due += g.calls;
            continue;
        };
        let slot = w.held.entry(hold.reason.as_str().to_string()).or_default();
        slot.calls += g.calls;
        slot.until = soonest(slot.until, hold.until);
        if matches!(hold.reason, HoldReason::BusinessHours | HoldReason::OutsideWindow | HoldReason::Blackout) {
            w.next_window_at = soonest(w.next_window_at, hold.until);
        }
    }
    w
}

fn soonest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
