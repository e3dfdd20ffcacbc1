//! The called party's rules: a daily window in the recipient's local time (47 CFR 64.1200(c)(1):
//! no solicitation before 08:00 or after 21:00 at the called party's location), stricter windows
//! and contact limits per state or province (Florida: 08:00–20:00, 3 calls per 24 hours),
//! blackout dates, a conservative fallback for numbers that map nowhere, and contact-attempt
//! limits per number across campaigns. Pure: the scheduler passes the instant, the zone key and
//! the number's recent attempts; [`Rules::gate`] says whether a zone is open and until when, and
//! [`Rules::verdict`] what to do with one claimed call.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::recipient::Location;

/// A daily window, `"HH:MM"` to `"HH:MM"` (end exclusive, after start, `"24:00"` allowed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HourRange {
    #[cfg_attr(feature = "openapi", schema(example = "08:00"))]
    pub start: String,
    #[cfg_attr(feature = "openapi", schema(example = "21:00"))]
    pub end: String,
}

/// A state's or province's own rules; each applies where stricter than the campaign's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegionRule {
    #[serde(default)]
    pub window: Option<HourRange>,
    #[serde(default)]
    pub max_attempts_per_24h: Option<u32>,
    #[serde(default)]
    pub max_attempts_per_day: Option<u32>,
}

/// The recipient's calling rules of a campaign (or the process's defaults, `[calling_rules]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CallingRules {
    /// `false` turns recipient windows and blackout dates off (do-not-call lists and attempt
    /// limits still apply); for tests and for lists already screened by another system.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The window in the recipient's local time; `null` turns recipient windows off.
    #[serde(default = "default_window")]
    pub window: Option<HourRange>,
    /// Rules of US states / Canadian provinces by two-letter code, e.g. `"FL"`.
    #[serde(default = "default_regions")]
    pub regions: BTreeMap<String, RegionRule>,
    /// Dates (`YYYY-MM-DD`, the recipient's local date) with no calls at all.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, example = json!(["2026-12-25"])))]
    pub blackout_dates: Vec<NaiveDate>,
    /// Where a number that maps nowhere may be: its window must be open in all of these. Empty =
    /// such numbers are skipped (`no_zone`).
    #[serde(default = "default_fallback")]
    pub fallback_zones: Vec<String>,
    /// Attempts per number in any 24 hours, across campaigns (`null` = no limit).
    #[serde(default)]
    pub max_attempts_per_24h: Option<u32>,
    /// Attempts per number per calendar day in the recipient's zone, across campaigns.
    #[serde(default)]
    pub max_attempts_per_day: Option<u32>,
}

fn yes() -> bool {
    true
}

fn default_window() -> Option<HourRange> {
    Some(HourRange { start: "08:00".into(), end: "21:00".into() })
}

fn default_regions() -> BTreeMap<String, RegionRule> {
    // Florida (Fla. Stat. 501.616) and Oklahoma (15 O.S. 775C.4): 08:00–20:00.
    let rule =
        || RegionRule { window: Some(HourRange { start: "08:00".into(), end: "20:00".into() }), ..Default::default() };
    BTreeMap::from([("FL".to_string(), rule()), ("OK".to_string(), rule())])
}

fn default_fallback() -> Vec<String> {
    [
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Phoenix",
        "America/Los_Angeles",
        "America/Anchorage",
        "Pacific/Honolulu",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for CallingRules {
    fn default() -> Self {
        CallingRules {
            enabled: true,
            window: default_window(),
            regions: default_regions(),
            blackout_dates: vec![],
            fallback_zones: default_fallback(),
            max_attempts_per_24h: None,
            max_attempts_per_day: None,
        }
    }
}

/// A claimed call whose zone closed between the scheduler's plan and its claim (a claim that
/// straddles a window's close) waits this long before it is looked at again; the scheduler
/// claims only open zones, so its next claim after that is inside a window.
const RECHECK_CLOSED: ChronoDuration = ChronoDuration::minutes(15);

/// Why a call ends without being dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The number is on the global or the campaign's do-not-call list.
    Dnc,
    /// The number maps to no zone and the rules have no fallback.
    NoZone,
}

impl SkipReason {
    pub const ALL: [SkipReason; 2] = [SkipReason::Dnc, SkipReason::NoZone];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Dnc => "dnc",
            SkipReason::NoZone => "no_zone",
        }
    }
}

/// Why a call waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldRule {
    Window,
    Blackout,
    AttemptLimit,
}

impl HoldRule {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldRule::Window => "window",
            HoldRule::Blackout => "blackout",
            HoldRule::AttemptLimit => "attempt_limit",
        }
    }
}

/// Whether calls of one zone key may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Open; `until` is when the first of its windows closes (`None`: no window applies).
    Open {
        until: Option<DateTime<Utc>>,
    },
    Closed(HoldRule),
    Skip(SkipReason),
}

/// What to do with one claimed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Dial,
    Skip(SkipReason),
    /// Back to pending, its next attempt at `until` (not an attempt; not failed).
    Hold {
        until: DateTime<Utc>,
        rule: HoldRule,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Minutes {
    start: u16,
    end: u16,
}

#[derive(Clone, Debug, PartialEq)]
struct Region {
    window: Option<Minutes>,
    per_24h: Option<u32>,
    per_day: Option<u32>,
}

/// [`CallingRules`] checked and ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    window: Option<Minutes>,
    regions: BTreeMap<String, Region>,
    blackout: BTreeSet<NaiveDate>,
    fallback: Option<Location>,
    per_24h: Option<u32>,
    per_day: Option<u32>,
}

fn range(field: &str, r: &HourRange) -> Result<Minutes, FieldError> {
    let w = crate::hours::Window::parse(0, &r.start, &r.end)
        .map_err(|e| FieldError::new(format!("{field}.{}", e.field()), e.to_string()))?;
    if w.crosses_midnight() {
        return Err(FieldError::new(
            format!("{field}.end"),
            "must be after start (a recipient window stays within one day)",
        ));
    }
    Ok(Minutes { start: w.start, end: w.end })
}

fn limit(field: &str, v: Option<u32>) -> Result<Option<u32>, FieldError> {
    match v {
        Some(0) => Err(FieldError::new(field, "must be at least 1 (null = no limit)")),
        v => Ok(v),
    }
}

impl CallingRules {
    /// No recipient windows or blackout dates (lists and limits still apply).
    pub fn off() -> CallingRules {
        CallingRules { enabled: false, ..CallingRules::default() }
    }

    /// Checks every field (errors name it under `field`) and compiles the rules.
    pub fn compile(&self, field: &str) -> Result<Rules, FieldError> {
        let window = self.window.as_ref().map(|w| range(&format!("{field}.window"), w)).transpose()?;
        let mut regions = BTreeMap::new();
        for (code, r) in &self.regions {
            let f = format!("{field}.regions.{code}");
            if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(FieldError::new(f, "must be a two-letter state or province code such as \"FL\""));
            }
            let region = Region {
                window: r.window.as_ref().map(|w| range(&format!("{f}.window"), w)).transpose()?,
                per_24h: limit(&format!("{f}.max_attempts_per_24h"), r.max_attempts_per_24h)?,
                per_day: limit(&format!("{f}.max_attempts_per_day"), r.max_attempts_per_day)?,
            };
            regions.insert(code.clone(), region);
        }
        let mut zones = Vec::new();
        for (i, z) in self.fallback_zones.iter().enumerate() {
            zones.push(
                crate::hours::parse_tz(z)
                    .map_err(|e| FieldError::new(format!("{field}.fallback_zones[{i}]"), e.to_string()))?,
            );
        }
        zones.sort_by_key(|z| z.name());
        zones.dedup();
        let on = self.enabled;
        Ok(Rules {
            window: window.filter(|_| on),
            regions,
            blackout: if on { self.blackout_dates.iter().copied().collect() } else { BTreeSet::new() },
            fallback: (!zones.is_empty()).then_some(Location { regions: vec![], zones }),
            per_24h: limit(&format!("{field}.max_attempts_per_24h"), self.max_attempts_per_24h)?,
            per_day: limit(&format!("{field}.max_attempts_per_day"), self.max_attempts_per_day)?,
        })
    }
}

/// The UTC instant of local `date` + `minute` in `tz` (the earlier one in a fall-back overlap,
/// the first after the gap in a spring-forward one).
fn local_instant(tz: Tz, date: NaiveDate, minute: u16) -> DateTime<Utc> {
    let mut local = NaiveDateTime::from(date) + ChronoDuration::minutes(i64::from(minute));
    loop {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => return t.with_timezone(&Utc),
            LocalResult::None => local += ChronoDuration::minutes(1),
        }
    }
}

impl Rules {
    /// Whether any rule limits attempts (then claims read the numbers' recent attempts).
    pub fn limits_attempts(&self) -> bool {
        self.per_24h.is_some()
            || self.per_day.is_some()
            || self.regions.values().any(|r| r.per_24h.is_some() || r.per_day.is_some())
    }

    /// Where a call with this zone key may be (`None`: nowhere known, no fallback).
    fn place(&self, key: &str) -> Option<Location> {
        Location::from_key(key).or_else(|| self.fallback.clone())
    }

    /// The window that applies to `loc`: the campaign's, narrowed by each of its regions'.
    fn window_for(&self, loc: &Location) -> Option<Minutes> {
        let mut w = self.window?;
        for r in loc.regions.iter().filter_map(|r| self.regions.get(r)).filter_map(|r| r.window) {
            w = Minutes { start: w.start.max(r.start), end: w.end.min(r.end) };
        }
        Some(w)
    }

    /// Whether calls with zone key `key` may start at `now`, and until when.
    pub fn gate(&self, key: &str, now: DateTime<Utc>) -> Gate {
        if self.window.is_none() && self.blackout.is_empty() {
            return Gate::Open { until: None };
        }
        let Some(loc) = self.place(key) else { return Gate::Skip(SkipReason::NoZone) };
        let window = self.window_for(&loc);
        let mut until: Option<DateTime<Utc>> = None;
        for tz in &loc.zones {
            let local = now.with_timezone(tz);
            if self.blackout.contains(&local.date_naive()) {
                return Gate::Closed(HoldRule::Blackout);
            }
            let Some(w) = window else { continue };
            let minute = (local.hour() * 60 + local.minute()) as u16;
            if w.start >= w.end || minute < w.start || minute >= w.end {
                return Gate::Closed(HoldRule::Window);
            }
            let end = local_instant(*tz, local.date_naive(), w.end);
            until = Some(until.map_or(end, |u| u.min(end)));
        }
        Gate::Open { until }
    }

    /// When calls with zone key `key`, closed at `now`, may start again: the first window start
    /// or blackout day's end (in any of the key's zones, within two weeks) at which the gate is
    /// open. `None` when open now, skipped, or closed for longer than that.
    pub fn opens_at(&self, key: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !matches!(self.gate(key, now), Gate::Closed(_)) {
            return None;
        }
        let loc = self.place(key)?;
        let start = self.window_for(&loc).map_or(0, |w| w.start);
        let mut candidates: Vec<DateTime<Utc>> = loc
            .zones
            .iter()
            .flat_map(|tz| {
                let today = now.with_timezone(tz).date_naive();
                (0..=14).flat_map(move |d| {
                    let day = today + ChronoDuration::days(d);
                    [local_instant(*tz, day, start), local_instant(*tz, day, 0)]
                })
            })
            .filter(|t| *t > now)
            .collect();
        candidates.sort_unstable();
        candidates.into_iter().find(|t| matches!(self.gate(key, *t), Gate::Open { .. }))
    }

    /// The attempt limits that apply to `loc` (the strictest of the campaign's and its regions').
    fn limits_for(&self, loc: Option<&Location>) -> (Option<u32>, Option<u32>) {
        let regions = loc.into_iter().flat_map(|l| &l.regions).filter_map(|r| self.regions.get(r));
        let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        regions.fold((self.per_24h, self.per_day), |(h, d), r| (min(h, r.per_24h), min(d, r.per_day)))
    }

    /// When a number with these earlier attempts (any campaign, any order) may be tried again
    /// under the attempt limits, if not now.
    pub fn attempt_hold(&self, key: &str, attempts: &[DateTime<Utc>], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let loc = self.place(key);
        let (per_24h, per_day) = self.limits_for(loc.as_ref());
        let mut recent: Vec<DateTime<Utc>> =
            attempts.iter().copied().filter(|t| *t > now - ChronoDuration::hours(24) && *t <= now).collect();
        recent.sort();
        let mut hold: Option<DateTime<Utc>> = None;
        if let Some(n) = per_24h.map(|n| n as usize)
            && recent.len() >= n
        {
            hold = Some(recent[recent.len() - n] + ChronoDuration::hours(24));
        }
        if let Some(m) = per_day {
            let tz = loc.as_ref().and_then(|l| l.zones.first().copied()).unwrap_or(Tz::UTC);
            let today = now.with_timezone(&tz).date_naive();
            let count = attempts.iter().filter(|t| t.with_timezone(&tz).date_naive() == today).count();
            if count >= m as usize {
                let midnight = local_instant(tz, today + ChronoDuration::days(1), 0);
                hold = Some(hold.map_or(midnight, |h| h.max(midnight)));
            }
        }
        hold
    }

    /// What to do with a claimed call: skip it (on a do-not-call list, or nowhere known), hold it
    /// (an attempt limit, or its zone closed since the claim began), or dial it.
    pub fn verdict(&self, key: &str, on_dnc: bool, attempts: &[DateTime<Utc>], now: DateTime<Utc>) -> Verdict {
        if on_dnc {
            return Verdict::Skip(SkipReason::Dnc);
        }
        match self.gate(key, now) {
            Gate::Skip(r) => return Verdict::Skip(r),
            Gate::Closed(rule) => return Verdict::Hold { until: now + RECHECK_CLOSED, rule },
            Gate::Open { .. } => {}
        }
        match self.attempt_hold(key, attempts, now) {
            Some(until) => Verdict::Hold { until, rule: HoldRule::AttemptLimit },
            None => Verdict::Dial,
        }
    }
}

#[cfg(test)]
mod tests;
