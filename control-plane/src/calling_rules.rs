//! The scheduler's side of the recipient's calling rules: which zones of a campaign may be claimed
//! now and until when (pure), the dispatch deadline that keeps a late message inside its window,
//! and the opt-outs announced to every shard (`suppress` messages).

use chrono::{DateTime, Utc};
use dialer_domain::messages::{DispatchKind, DispatchMessage, SCHEMA_VERSION};
use dialer_domain::rules::{Gate, HoldRule, Rules};
use uuid::Uuid;

use dialer_store::Suppression;

/// The zones of a campaign's pending calls as this tick sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZonePlan {
    /// Zones to claim from, soonest to close first (then those with no closing), with when each
    /// closes; zones whose calls end skipped are claimed last (`until` = `None`).
    pub claim: Vec<(String, Option<DateTime<Utc>>)>,
    /// Zones held back now, by rule.
    pub closed: Vec<(String, HoldRule)>,
}

impl ZonePlan {
    /// The zones to claim from, in order, each with its calls' message deadline ([`deadline`]).
    pub fn claims(
        &self,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
        hours_close: Option<DateTime<Utc>>,
    ) -> Vec<(String, DateTime<Utc>)> {
        self.claim.iter().map(|(k, until)| (k.clone(), deadline(now, ttl, *until, hours_close))).collect()
    }
}

/// Splits zones into those open now (ordered by closing time) and those held back.
pub fn plan(rules: &Rules, zones: &[String], now: DateTime<Utc>) -> ZonePlan {
    let mut p = ZonePlan::default();
    let mut skips = Vec::new();
    for z in zones {
        match rules.gate(z, now) {
            Gate::Open { until } => p.claim.push((z.clone(), until)),
            Gate::Closed(rule) => p.closed.push((z.clone(), rule)),
            Gate::Skip(_) => skips.push((z.clone(), None)),
        }
    }
    p.claim.sort_by_key(|(_, until)| until.unwrap_or(DateTime::<Utc>::MAX_UTC));
    p.claim.extend(skips);
    p
}

/// The deadline of a message: the dispatch TTL, but never past the recipient's window or the
/// campaign's business hours' close (a message dialled late would fall outside them).
pub fn deadline(
    now: DateTime<Utc>,
    ttl: std::time::Duration,
    window_until: Option<DateTime<Utc>>,
    hours_close: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let ttl_end = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    [Some(ttl_end), window_until, hours_close].into_iter().flatten().min().unwrap_or(ttl_end)
}

/// The `suppress` message of an opt-out: shards do not dial the number's calls (of the list's
/// campaign, or any for the global list) until the dispatch TTL has passed.
pub fn suppress_message(s: &Suppression, now: DateTime<Utc>, ttl: std::time::Duration) -> DispatchMessage {
    let mut until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    if let Some(e) = s.expires_at {
        until = until.min(e);
    }
    DispatchMessage {
        v: SCHEMA_VERSION,
        call_id: Uuid::now_v7(),
        attempt: 0,
        campaign_id: s.list,
        phone_number: s.phone_number.clone(),
        campaign_cap: 0,
        campaign_weight: 1,
        not_before_ms: 0,
        deadline_ms: until.timestamp_millis().max(0) as u64,
        enqueued_at_us: now.timestamp_micros().max(0) as u64,
        telephony: None,
        kind: DispatchKind::Suppress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialer_domain::hours::BusinessHours;
    use dialer_domain::recipient::zone_key;
    use dialer_domain::rules::CallingRules;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("instant").with_timezone(&Utc)
    }

    #[test]
    fn open_zones_are_claimed_soonest_to_close_first_and_closed_ones_held() {
        let rules = CallingRules::default().compile("r").expect("rules");
        let k = |n: &str| zone_key(n, &serde_json::Value::Null);
        let (ny, la, hnl) = (k("+12125550100"), k("+12135550100"), k("+18085550100"));
        // 17:00Z: 12:00 in New York, 09:00 in Los Angeles, 07:00 in Honolulu.
        let p = plan(&rules, &[la.clone(), hnl.clone(), ny.clone()], utc("2026-11-23T17:00:00Z"));
        assert_eq!(p.closed, vec![(hnl, HoldRule::Window)]);
        let d = p.claims(utc("2026-11-23T17:00:00Z"), std::time::Duration::from_secs(86_400), None);
        let zones: Vec<&String> = d.iter().map(|(z, _)| z).collect();
        assert_eq!(zones, vec![&ny, &la]);
        assert_eq!(d[0].1, utc("2026-11-24T02:00:00Z"), "New York's 21:00, before the TTL");
    }

    #[test]
    fn the_deadline_never_passes_the_window_or_the_business_hours() {
        let now = utc("2026-11-23T17:00:00Z");
        let ttl = std::time::Duration::from_secs(300);
        assert_eq!(deadline(now, ttl, None, None), utc("2026-11-23T17:05:00Z"));
        assert_eq!(deadline(now, ttl, Some(utc("2026-11-23T17:01:00Z")), None), utc("2026-11-23T17:01:00Z"));
        let h = BusinessHours {
            tz: chrono_tz::UTC,
            windows: vec![dialer_domain::Window::parse(1, "09:00", "17:02").expect("window")],
        };
        assert_eq!(deadline(now, ttl, None, h.closes_after(now)), utc("2026-11-23T17:02:00Z"));
    }
}
