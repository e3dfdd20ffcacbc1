//! Business-hour windows, evaluated on the campaign's local wall clock.
//!
//! A window is `{day_of_week, start, end}` in local time (0 = Sunday). `end` earlier than `start`
//! means the window crosses midnight into the next day; `end` may be `24:00`. No windows at all
//! means 24×7. Semantics around daylight-saving changes follow the wall clock: in a spring-forward
//! gap the missing local times simply never occur (a window starting inside the gap opens when the
//! clock jumps past it, if the window is still open then); in a fall-back overlap the repeated
//! local hour is open both times it occurs.

use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

/// Minutes in a day; an `end` of 1440 is written `24:00`.
pub const DAY_MINUTES: u16 = 24 * 60;

/// Why a window cannot be built; [`WindowError::field`] names the value at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("must be 0 (Sunday) to 6 (Saturday)")]
    DayOfWeek,
    #[error("must be \"HH:MM\" between 00:00 and 23:59, got {0:?}")]
    Start(String),
    #[error("must be \"HH:MM\" between 00:00 and 24:00, got {0:?}")]
    End(String),
    #[error("must differ from start (use start \"00:00\", end \"24:00\" for a whole day)")]
    Empty,
}

impl WindowError {
    /// The field the error is about: `day_of_week`, `start` or `end`.
    pub fn field(&self) -> &'static str {
        match self {
            WindowError::DayOfWeek => "day_of_week",
            WindowError::Start(_) => "start",
            WindowError::End(_) | WindowError::Empty => "end",
        }
    }
}

/// An IANA time-zone name this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown IANA time zone {0:?}; use a name such as \"America/New_York\" or \"UTC\"")]
pub struct UnknownTimeZone(pub String);

/// One weekly window in local time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// 0 = Sunday … 6 = Saturday.
    pub day_of_week: u8,
    /// Minutes after local midnight, 0..1440.
    pub start: u16,
    /// Minutes after local midnight, 1..=1440; smaller than `start` = crosses midnight.
    pub end: u16,
}

impl Window {
    /// Builds a window from API values, with the reason when they are impossible.
    pub fn parse(day_of_week: i64, start: &str, end: &str) -> Result<Window, WindowError> {
        if !(0..=6).contains(&day_of_week) {
            return Err(WindowError::DayOfWeek);
        }
        let start_m = parse_hhmm(start, false).ok_or_else(|| WindowError::Start(start.to_string()))?;
        let end_m = parse_hhmm(end, true).ok_or_else(|| WindowError::End(end.to_string()))?;
        if start_m == end_m {
            return Err(WindowError::Empty);
        }
        Ok(Window { day_of_week: day_of_week as u8, start: start_m, end: end_m })
    }

    /// True when the window runs past midnight into the next day.
    pub fn crosses_midnight(&self) -> bool {
        self.end < self.start
    }

    /// `"HH:MM"` of the start.
    pub fn start_hhmm(&self) -> String {
        format_hhmm(self.start)
    }

    /// `"HH:MM"` of the end (`"24:00"` for the end of the day).
    pub fn end_hhmm(&self) -> String {
        format_hhmm(self.end)
    }

    fn contains(&self, dow: u8, second_of_day: u32) -> bool {
        let start = u32::from(self.start) * 60;
        let end = u32::from(self.end) * 60;
        if self.crosses_midnight() {
            (dow == self.day_of_week && second_of_day >= start)
                || (dow == (self.day_of_week + 1) % 7 && second_of_day < end)
        } else {
            dow == self.day_of_week && second_of_day >= start && second_of_day < end
        }
    }
}

/// Minutes after midnight of `"HH:MM"` (`"24:00"` only where `allow_24`).
fn parse_hhmm(s: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return None;
    }
    Some(h * 60 + m)
}

fn format_hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// A campaign's weekly schedule in its time zone.
#[derive(Clone, Debug, PartialEq)]
pub struct BusinessHours {
    pub tz: Tz,
    /// Empty = open 24×7.
    pub windows: Vec<Window>,
}

impl BusinessHours {
    /// Whether calls may be placed at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let local = at.with_timezone(&self.tz);
        let dow = local.weekday().num_days_from_sunday() as u8;
        let sod = local.num_seconds_from_midnight();
        self.windows.iter().any(|w| w.contains(dow, sod))
    }

    /// The first instant at or after `at` when the schedule is open, or `None` when it never
    /// opens (which validation prevents). 24×7 schedules return `at`.
    pub fn next_open(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_open(at) {
            return Some(at);
        }
        let today = at.with_timezone(&self.tz).date_naive();
        let mut best: Option<DateTime<Utc>> = None;
        for offset in 0..=7 {
            let date = today + ChronoDuration::days(offset);
            let dow = date.weekday().num_days_from_sunday() as u8;
            for w in self.windows.iter().filter(|w| w.day_of_week == dow) {
                for candidate in self.resolve_start(date, w.start).into_iter().flatten() {
                    if candidate > at && self.is_open(candidate) && best.is_none_or(|b| candidate < b) {
                        best = Some(candidate);
                    }
                }
            }
        }
        best
    }

    /// When the schedule, open at `at`, next closes (`None`: 24×7, or not open at `at`).
    pub fn closes_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.windows.is_empty() || !self.is_open(at) {
            return None;
        }
        let today = at.with_timezone(&self.tz).date_naive();
        let mut ends: Vec<DateTime<Utc>> = Vec::new();
        for offset in -1..=8 {
            let date = today + ChronoDuration::days(offset);
            let dow = date.weekday().num_days_from_sunday() as u8;
            for w in self.windows.iter().filter(|w| w.day_of_week == dow) {
                let end_date = if w.crosses_midnight() { date + ChronoDuration::days(1) } else { date };
                let (d, m) =
                    if w.end == DAY_MINUTES { (end_date + ChronoDuration::days(1), 0) } else { (end_date, w.end) };
                ends.extend(self.resolve_start(d, m).into_iter().flatten().filter(|t| *t > at));
            }
        }
        ends.sort();
        ends.into_iter().find(|t| !self.is_open(*t))
    }

    /// The UTC instants of local `date` + `minute`: one normally, both occurrences in a fall-back
    /// overlap, and the first instant after the gap for a time inside a spring-forward gap.
    fn resolve_start(&self, date: NaiveDate, minute: u16) -> [Option<DateTime<Utc>>; 2] {
        let Some(time) = NaiveTime::from_hms_opt(u32::from(minute / 60), u32::from(minute % 60), 0) else {
            return [None, None];
        };
        let mut local = NaiveDateTime::new(date, time);
        for _ in 0..=(4 * 60) {
            match self.tz.from_local_datetime(&local) {
                LocalResult::Single(t) => return [Some(t.with_timezone(&Utc)), None],
                LocalResult::Ambiguous(a, b) => {
                    return [Some(a.with_timezone(&Utc)), Some(b.with_timezone(&Utc))];
                }
                LocalResult::None => local += ChronoDuration::minutes(1),
            }
        }
        [None, None]
    }
}

/// Parses an IANA time-zone name such as `America/New_York`.
pub fn parse_tz(name: &str) -> Result<Tz, UnknownTimeZone> {
    name.parse::<Tz>().map_err(|_| UnknownTimeZone(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("test instant").with_timezone(&Utc)
    }

    fn hours(tz: &str, w: &[(i64, &str, &str)]) -> BusinessHours {
        BusinessHours {
            tz: parse_tz(tz).expect("tz"),
            windows: w.iter().map(|(d, s, e)| Window::parse(*d, s, e).expect("window")).collect(),
        }
    }

    #[test]
    fn parses_and_rejects_windows() {
        assert!(Window::parse(1, "09:00", "18:00").is_ok());
        assert!(Window::parse(5, "22:00", "02:00").expect("crosses").crosses_midnight());
        assert_eq!(Window::parse(0, "00:00", "24:00").expect("whole day").end_hhmm(), "24:00");
        assert_eq!(Window::parse(7, "09:00", "18:00").unwrap_err().field(), "day_of_week");
        assert_eq!(Window::parse(-1, "09:00", "18:00").unwrap_err().field(), "day_of_week");
        assert_eq!(Window::parse(1, "9:00", "18:00").unwrap_err().field(), "start");
        assert_eq!(Window::parse(1, "24:00", "18:00").unwrap_err().field(), "start");
        assert_eq!(Window::parse(1, "09:60", "18:00").unwrap_err().field(), "start");
        assert_eq!(Window::parse(1, "09:00", "24:01").unwrap_err().field(), "end");
        assert_eq!(Window::parse(1, "09:00", "09:00").unwrap_err().field(), "end");
        assert_eq!(Window::parse(1, "09:00", "xx").unwrap_err().field(), "end");
    }

    #[test]
    fn empty_schedule_is_always_open() {
        let h = hours("Asia/Tokyo", &[]);
        let t = utc("2026-11-21T03:04:05Z");
        assert!(h.is_open(t));
        assert_eq!(h.next_open(t), Some(t));
    }

    #[test]
    fn monday_window_in_new_york() {
        // 2026-11-23 is a Monday; New York is UTC-5 in November.
        let h = hours("America/New_York", &[(1, "09:00", "18:00")]);
        assert!(!h.is_open(utc("2026-11-23T13:59:59Z")));
        assert!(h.is_open(utc("2026-11-23T14:00:00Z")));
        assert!(h.is_open(utc("2026-11-23T22:59:59Z")));
        assert!(!h.is_open(utc("2026-11-23T23:00:00Z")), "end is exclusive");
        // Tuesday: next opening is the following Monday 09:00 local.
        assert_eq!(h.next_open(utc("2026-11-24T15:00:00Z")), Some(utc("2026-11-30T14:00:00Z")));
        // Monday before opening: same day.
        assert_eq!(h.next_open(utc("2026-11-23T05:00:00Z")), Some(utc("2026-11-23T14:00:00Z")));
    }

    #[test]
    fn window_crossing_midnight() {
        // Friday 22:00 → Saturday 02:00, UTC. 2026-11-20 is a Friday.
        let h = hours("UTC", &[(5, "22:00", "02:00")]);
        assert!(!h.is_open(utc("2026-11-20T21:59:00Z")));
        assert!(h.is_open(utc("2026-11-20T22:00:00Z")));
        assert!(h.is_open(utc("2026-11-21T01:30:00Z")), "Saturday early morning belongs to Friday's window");
        assert!(!h.is_open(utc("2026-11-21T02:00:00Z")));
        assert!(!h.is_open(utc("2026-11-22T01:30:00Z")), "Sunday early morning is not open");
        assert_eq!(h.next_open(utc("2026-11-21T03:00:00Z")), Some(utc("2026-11-27T22:00:00Z")));
    }

    #[test]
    fn saturday_window_crossing_into_sunday() {
        let h = hours("UTC", &[(6, "23:00", "01:00")]);
        // 2026-11-22 is a Sunday.
        assert!(h.is_open(utc("2026-11-22T00:30:00Z")));
        assert!(!h.is_open(utc("2026-11-23T00:30:00Z")));
    }

    #[test]
    fn dst_gap_opens_when_clock_jumps_past_it() {
        // New York springs forward on Sunday 2026-03-08 at 02:00 EST → 03:00 EDT (07:00Z).
        let h = hours("America/New_York", &[(0, "02:00", "04:00")]);
        assert!(!h.is_open(utc("2026-03-08T06:59:00Z")), "01:59 EST");
        assert!(h.is_open(utc("2026-03-08T07:00:00Z")), "03:00 EDT");
        assert!(!h.is_open(utc("2026-03-08T08:00:00Z")), "04:00 EDT");
        assert_eq!(h.next_open(utc("2026-03-08T05:00:00Z")), Some(utc("2026-03-08T07:00:00Z")));
        // A window entirely inside the gap does not open that day at all.
        let gap_only = hours("America/New_York", &[(0, "02:10", "02:50")]);
        assert_eq!(gap_only.next_open(utc("2026-03-08T05:00:00Z")), Some(utc("2026-03-15T06:10:00Z")));
    }

    #[test]
    fn dst_overlap_is_open_both_times() {
        // New York falls back on Sunday 2026-11-01 at 02:00 EDT → 01:00 EST.
        let h = hours("America/New_York", &[(0, "01:00", "01:30")]);
        assert!(h.is_open(utc("2026-11-01T05:15:00Z")), "01:15 EDT");
        assert!(!h.is_open(utc("2026-11-01T05:45:00Z")), "01:45 EDT");
        assert!(h.is_open(utc("2026-11-01T06:15:00Z")), "01:15 EST");
        assert_eq!(h.next_open(utc("2026-11-01T04:00:00Z")), Some(utc("2026-11-01T05:00:00Z")), "earlier occurrence");
        assert_eq!(
            h.next_open(utc("2026-11-01T05:45:00Z")),
            Some(utc("2026-11-01T06:00:00Z")),
            "opens again after fall-back"
        );
    }

    #[test]
    fn closes_after_finds_the_end_of_chained_windows() {
        // Monday 09:00–18:00 and 18:00–20:00 in New York (UTC-5): open at 15:00Z, closes at 01:00Z.
        let h = hours("America/New_York", &[(1, "09:00", "18:00"), (1, "18:00", "20:00")]);
        assert_eq!(h.closes_after(utc("2026-11-23T15:00:00Z")), Some(utc("2026-11-24T01:00:00Z")));
        assert_eq!(h.closes_after(utc("2026-11-23T02:00:00Z")), None, "closed");
        assert_eq!(hours("UTC", &[]).closes_after(utc("2026-11-23T02:00:00Z")), None, "24x7");
        let late = hours("UTC", &[(5, "22:00", "02:00")]);
        assert_eq!(late.closes_after(utc("2026-11-20T23:00:00Z")), Some(utc("2026-11-21T02:00:00Z")));
    }

    #[test]
    fn rejects_unknown_time_zone() {
        assert!(parse_tz("America/New_York").is_ok());
        assert!(parse_tz("Mars/Olympus_Mons").is_err());
        assert!(parse_tz("").is_err());
    }
}
