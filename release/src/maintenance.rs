//! Maintenance windows: when a staged update may reboot the host. Written like Zincati's
//! periodic windows, in update.toml:
//!
//! ```toml
//! [maintenance]
//! time_zone = "Europe/Berlin"      # an IANA name; default UTC
//! [[maintenance.window]]
//! days = ["Sat", "Sun"]
//! start_time = "22:30"             # local time in time_zone
//! length_minutes = 90              # may run past midnight
//! ```
//!
//! A window opens on each listed day at `start_time` and stays open `length_minutes`. Time
//! zones come from the system's tzdb, else from the copy built into the binary (the OS image
//! carries none), so DST changes are followed.

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

/// Longest window: a week (a window longer than that is always open).
const MAX_LENGTH_MINUTES: u32 = 7 * 24 * 60;

/// As written in update.toml.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, rename = "window")]
    pub windows: Vec<WindowSettings>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    pub days: Vec<String>,
    pub start_time: String,
    pub length_minutes: u32,
}

/// Checked windows, ready to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maintenance {
    pub time_zone: TimeZone,
    pub time_zone_name: String,
    pub windows: Vec<Window>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub days: Vec<Weekday>,
    pub hour: i8,
    pub minute: i8,
    pub length_minutes: u32,
}

/// Whether a reboot may happen now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Now {
    /// Inside a window that closes at this Unix second.
    Open { closes: i64 },
    /// Outside every window; the next opens at this Unix second.
    Closed { opens: i64 },
}

fn weekday(name: &str) -> Option<Weekday> {
    let all = [
        ("mon", Weekday::Monday),
        ("tue", Weekday::Tuesday),
        ("wed", Weekday::Wednesday),
        ("thu", Weekday::Thursday),
        ("fri", Weekday::Friday),
        ("sat", Weekday::Saturday),
        ("sun", Weekday::Sunday),
    ];
    let lower = name.to_ascii_lowercase();
    let full = |day: Weekday| format!("{day:?}").to_ascii_lowercase();
    all.iter().find(|(short, day)| lower == *short || lower == full(*day)).map(|(_, day)| *day)
}

fn start_time(text: &str) -> Option<(i8, i8)> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some((h, m))
}

impl MaintenanceSettings {
    /// Checks every value; errors name the key (`maintenance.window[1].days: ...`).
    pub fn resolve(&self) -> Result<Maintenance, KeyError> {
        let time_zone_name = self.time_zone.clone().unwrap_or_else(|| "UTC".into());
        let time_zone = jiff::tz::db().get(&time_zone_name).map_err(|e| {
            KeyError::new(
                "time_zone",
                format!("{time_zone_name:?} is not a known time zone (an IANA name like Europe/Berlin): {e}"),
            )
        })?;
        if self.windows.is_empty() {
            return Err(KeyError::new("", "no window (add at least one [[maintenance.window]])"));
        }
        let mut windows = Vec::new();
        for (i, w) in self.windows.iter().enumerate() {
            let key = |name: &str| format!("window[{i}].{name}");
            if w.days.is_empty() {
                return Err(KeyError::new(key("days"), "empty"));
            }
            let days = w
                .days
                .iter()
                .map(|d| {
                    weekday(d)
                        .ok_or_else(|| KeyError::new(key("days"), format!("{d:?} is not a day (Mon, Tue, ... Sun)")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (hour, minute) = start_time(&w.start_time).ok_or_else(|| {
                KeyError::new(key("start_time"), format!("{:?} is not a time of day (HH:MM, 24-hour)", w.start_time))
            })?;
            if !(1..=MAX_LENGTH_MINUTES).contains(&w.length_minutes) {
                let message = format!("{} is not 1 to {MAX_LENGTH_MINUTES}", w.length_minutes);
                return Err(KeyError::new(key("length_minutes"), message));
            }
            windows.push(Window { days, hour, minute, length_minutes: w.length_minutes });
        }
        Ok(Maintenance { time_zone, time_zone_name, windows })
    }
}

/// A bad value and its key inside `[maintenance]` (`window[1].days`; empty: the table itself).
/// Shown as `maintenance.window[1].days: message`; a cloud-config points at the key's node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError { key: key.into(), message: message.into() }
    }
}

impl std::error::Error for KeyError {}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key.as_str() {
            "" => write!(f, "maintenance: {}", self.message),
            key => write!(f, "maintenance.{key}: {}", self.message),
        }
    }
}

impl Maintenance {
    /// Where `now` (Unix seconds) stands against the windows.
    pub fn at(&self, now: i64) -> Now {
        let today =
            Timestamp::from_second(now).map(|t| t.to_zoned_datetime(self.time_zone.clone()).date()).unwrap_or_default();
        let mut closes: Option<i64> = None;
        let mut opens: Option<i64> = None;
        // A window is at most a week long, so one that is open now started within the last 7
        // days; one opens within the next 7 days.
        for offset in -7i64..=7 {
            let Ok(date) = today.checked_add(offset.days()) else { continue };
            for w in &self.windows {
                if !w.days.contains(&date.weekday()) {
                    continue;
                }
                let Some(start) = self.start_of(w, date) else { continue };
                let end = start + i64::from(w.length_minutes) * 60;
                if start <= now && now < end {
                    closes = Some(closes.map_or(end, |c| c.max(end)));
                } else if start > now {
                    opens = Some(opens.map_or(start, |o| o.min(start)));
                }
            }
        }
        match (closes, opens) {
            (Some(closes), _) => Now::Open { closes },
            (None, Some(opens)) => Now::Closed { opens },
            // Unreachable with at least one day per window; stay safe: open.
            (None, None) => Now::Open { closes: now },
        }
    }

    /// The window's start on `date` (a start inside a DST gap moves forward, as clocks do).
    fn start_of(&self, w: &Window, date: Date) -> Option<i64> {
        let local = date.at(w.hour, w.minute, 0, 0);
        Some(local.to_zoned_datetime(self.time_zone.clone()).ok()?.timestamp().as_second())
    }

    /// `2026-11-28 22:30 Europe/Berlin`, for status lines.
    pub fn local(&self, at: i64) -> String {
        match Timestamp::from_second(at) {
            Ok(t) => format!(
                "{} {}",
                t.to_zoned_datetime(self.time_zone.clone()).strftime("%a %Y-%m-%d %H:%M"),
                self.time_zone_name
            ),
            Err(_) => at.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maintenance(tz: Option<&str>, windows: &[(&[&str], &str, u32)]) -> Result<Maintenance, KeyError> {
        MaintenanceSettings {
            time_zone: tz.map(String::from),
            windows: windows
                .iter()
                .map(|(days, start, len)| WindowSettings {
                    days: days.iter().map(|d| d.to_string()).collect(),
                    start_time: start.to_string(),
                    length_minutes: *len,
                })
                .collect(),
        }
        .resolve()
    }

    fn utc(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn opens_on_the_listed_days_and_runs_past_midnight() {
        // 2026-11-28 is a Saturday.
        let m = maintenance(None, &[(&["Sat", "sunday"], "23:30", 60)]).unwrap();
        assert_eq!(m.at(utc("2026-11-28T23:29:59Z")), Now::Closed { opens: utc("2026-11-28T23:30:00Z") });
        assert_eq!(m.at(utc("2026-11-28T23:30:00Z")), Now::Open { closes: utc("2026-11-29T00:30:00Z") });
        assert_eq!(m.at(utc("2026-11-29T00:15:00Z")), Now::Open { closes: utc("2026-11-29T00:30:00Z") });
        assert_eq!(m.at(utc("2026-11-29T00:30:00Z")), Now::Closed { opens: utc("2026-11-29T23:30:00Z") });
        // Monday: the next window is Saturday's.
        assert_eq!(m.at(utc("2026-11-30T12:00:00Z")), Now::Closed { opens: utc("2026-12-05T23:30:00Z") });
    }

    #[test]
    fn follows_the_named_time_zone_and_its_dst() {
        // 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer.
        let m =
            maintenance(Some("Europe/Berlin"), &[(&["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], "03:00", 30)])
                .unwrap();
        assert_eq!(m.at(utc("2026-11-26T02:10:00Z")), Now::Open { closes: utc("2026-11-26T02:30:00Z") });
        assert_eq!(m.at(utc("2026-07-01T01:10:00Z")), Now::Open { closes: utc("2026-07-01T01:30:00Z") });
        assert_eq!(m.at(utc("2026-07-01T02:10:00Z")), Now::Closed { opens: utc("2026-07-02T01:00:00Z") });
        assert_eq!(m.local(utc("2026-07-02T01:00:00Z")), "Thu 2026-07-02 03:00 Europe/Berlin");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = |r: Result<Maintenance, KeyError>| r.unwrap_err().to_string();
        assert!(
            err(maintenance(Some("Mars/Olympus"), &[(&["Sat"], "22:00", 60)])).starts_with("maintenance.time_zone:")
        );
        assert!(err(maintenance(None, &[])).contains("no window"));
        assert!(
            err(maintenance(None, &[(&["Sat"], "22:00", 60), (&["Caturday"], "22:00", 60)]))
                .starts_with("maintenance.window[1].days: \"Caturday\"")
        );
        assert!(err(maintenance(None, &[(&[], "22:00", 60)])).starts_with("maintenance.window[0].days: empty"));
        assert!(err(maintenance(None, &[(&["Sat"], "24:00", 60)])).starts_with("maintenance.window[0].start_time"));
        assert!(err(maintenance(None, &[(&["Sat"], "7:00", 60)])).starts_with("maintenance.window[0].start_time"));
        assert!(err(maintenance(None, &[(&["Sat"], "22:00", 0)])).starts_with("maintenance.window[0].length_minutes"));
        assert!(err(maintenance(None, &[(&["Sat"], "22:00", 20_000)])).contains("length_minutes"));
    }
}
