//! When a tenant and key may be used: key disabled or expired, tenant
//! suspended, outside its `active_from`/`active_until`, or outside its weekly
//! windows in its own timezone.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::records::{Principal, WeeklyWindow};

/// Why a resolved key may not be used right now (all answered with 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this API key is disabled")]
    KeyDisabled,
    #[error("this API key has expired")]
    KeyExpired,
    #[error("the tenant is suspended")]
    TenantSuspended,
    #[error("the tenant is not active yet")]
    NotYetActive,
    #[error("the tenant's access period has ended")]
    AccessEnded,
    #[error("outside the tenant's access hours ({0})")]
    OutsideWindow(String),
}

impl Denied {
    /// The OpenAI-style error code.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::KeyDisabled => "key_disabled",
            Denied::KeyExpired => "key_expired",
            Denied::TenantSuspended => "tenant_suspended",
            Denied::NotYetActive | Denied::AccessEnded => "tenant_inactive",
            Denied::OutsideWindow(_) => "outside_access_window",
        }
    }
}

/// Checks every time-and-status gate at instant `now`.
pub fn check(principal: &Principal, now: Timestamp) -> Result<(), Denied> {
    let now_ms = now.as_millisecond();
    let key = &principal.key;
    if key.disabled {
        return Err(Denied::KeyDisabled);
    }
    if key.expires_at.is_some_and(|t| now_ms >= t) {
        return Err(Denied::KeyExpired);
    }
    let tenant = &principal.tenant;
    if tenant.status == crate::records::TenantStatus::Suspended {
        return Err(Denied::TenantSuspended);
    }
    if tenant.active_from.is_some_and(|t| now_ms < t) {
        return Err(Denied::NotYetActive);
    }
    if tenant.active_until.is_some_and(|t| now_ms >= t) {
        return Err(Denied::AccessEnded);
    }
    if !tenant.weekly_windows.is_empty() {
        let local = now.to_zoned(tenant.zone());
        let (day, time) = (local.weekday(), local.time());
        if !tenant
            .weekly_windows
            .iter()
            .any(|w| window_contains(w, day, time))
        {
            return Err(Denied::OutsideWindow(format!(
                "{} {} in {}",
                day_name(day),
                local.strftime("%H:%M"),
                tenant.timezone
            )));
        }
    }
    Ok(())
}

/// Validates a window as written by an operator; returns why it is wrong.
pub fn validate_window(w: &WeeklyWindow) -> Result<(), String> {
    if w.days.is_empty() {
        return Err("days must name at least one day".into());
    }
    for d in &w.days {
        parse_day(d).ok_or_else(|| format!("{d:?} is not a day name"))?;
    }
    for t in [&w.start, &w.end] {
        parse_time(t).ok_or_else(|| format!("{t:?} is not a HH:MM time"))?;
    }
    Ok(())
}

/// Whether `name` is an IANA timezone this machine knows.
pub fn known_timezone(name: &str) -> bool {
    TimeZone::get(name).is_ok()
}

fn window_contains(w: &WeeklyWindow, day: Weekday, time: Time) -> bool {
    let (Some(start), Some(end)) = (parse_time(&w.start), parse_time(&w.end)) else {
        return false;
    };
    let has = |d: Weekday| w.days.iter().any(|x| parse_day(x) == Some(d));
    if start < end {
        has(day) && time >= start && time < end
    } else {
        // Spans midnight: the evening of a listed day or the morning after it.
        (has(day) && time >= start) || (has(day.previous()) && time < end)
    }
}

fn parse_time(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if h == 24 && m == 0 {
        return Some(Time::MAX);
    }
    Time::new(h, m, 0, 0).ok()
}

fn parse_day(text: &str) -> Option<Weekday> {
    let lower = text.to_ascii_lowercase();
    let day = match lower.get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    };
    (lower.len() == 3 || day_name(day) == lower).then_some(day)
}

fn day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "monday",
        Weekday::Tuesday => "tuesday",
        Weekday::Wednesday => "wednesday",
        Weekday::Thursday => "thursday",
        Weekday::Friday => "friday",
        Weekday::Saturday => "saturday",
        Weekday::Sunday => "sunday",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::*;

    /// An enabled key of an active tenant in Berlin, without limits or
    /// windows, as the hot cache holds it.
    fn principal() -> Principal {
        serde_json::from_value(serde_json::json!({
            "key": {
                "id": "k", "tenant_id": "t", "name": "k", "prefix": "obk_", "disabled": false,
                "weight": 100, "expires_at": null, "max_in_flight": null,
                "tokens_per_minute": null, "budget_tokens": null, "budget_usd": null
            },
            "tenant": {
                "id": "t", "name": "t", "group": "default", "group_weight": 100, "weight": 100,
                "tokens_per_minute": 0, "max_in_flight": null, "status": "active",
                "timezone": "Europe/Berlin", "active_from": null, "active_until": null,
                "weekly_windows": [], "budget_tokens": null, "budget_usd": null,
                "budget_period": "lifetime", "allowed_models": []
            }
        }))
        .expect("a principal")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn key_and_tenant_status_gates() {
        let now = at("2026-11-23T10:00:00Z");
        let mut p = principal();
        assert_eq!(check(&p, now), Ok(()));
        p.key.expires_at = Some(now.as_millisecond());
        assert_eq!(check(&p, now), Err(Denied::KeyExpired));
        p.key.expires_at = None;
        p.key.disabled = true;
        assert_eq!(check(&p, now), Err(Denied::KeyDisabled));
        p.key.disabled = false;
        p.tenant.status = TenantStatus::Suspended;
        assert_eq!(check(&p, now), Err(Denied::TenantSuspended));
        p.tenant.status = TenantStatus::Active;
        p.tenant.active_from = Some(now.as_millisecond() + 1);
        assert_eq!(check(&p, now), Err(Denied::NotYetActive));
        p.tenant.active_from = None;
        p.tenant.active_until = Some(now.as_millisecond());
        assert_eq!(check(&p, now), Err(Denied::AccessEnded));
    }

    #[test]
    fn weekly_windows_are_read_in_the_tenants_timezone() {
        let mut p = principal();
        p.tenant.weekly_windows = vec![WeeklyWindow {
            days: vec!["mon".into(), "tuesday".into()],
            start: "09:00".into(),
            end: "17:00".into(),
        }];
        // Monday 08:30 UTC is 09:30 in Berlin (CET, UTC+1).
        assert_eq!(check(&p, at("2026-11-23T08:30:00Z")), Ok(()));
        // Monday 07:30 UTC is 08:30 in Berlin: too early.
        assert!(matches!(
            check(&p, at("2026-11-23T07:30:00Z")),
            Err(Denied::OutsideWindow(_))
        ));
        // Wednesday is not listed.
        assert!(check(&p, at("2026-11-25T10:00:00Z")).is_err());
    }

    #[test]
    fn windows_may_span_midnight() {
        let mut p = principal();
        p.tenant.timezone = "UTC".into();
        p.tenant.weekly_windows = vec![WeeklyWindow {
            days: vec!["fri".into()],
            start: "22:00".into(),
            end: "02:00".into(),
        }];
        assert_eq!(
            check(&p, at("2026-11-27T23:00:00Z")),
            Ok(()),
            "friday night"
        );
        assert_eq!(
            check(&p, at("2026-11-28T01:00:00Z")),
            Ok(()),
            "saturday small hours"
        );
        assert!(check(&p, at("2026-11-28T03:00:00Z")).is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let w = |days: &[&str], start: &str| WeeklyWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: "10:00".into(),
        };
        assert!(validate_window(&w(&["mon"], "09:00")).is_ok());
        assert!(validate_window(&w(&["someday"], "09:00")).is_err());
        assert!(validate_window(&w(&["mon"], "9am")).is_err());
        assert!(validate_window(&w(&[], "09:00")).is_err());
        assert!(known_timezone("America/New_York"));
        assert!(!known_timezone("Mars/Olympus"));
    }
}
