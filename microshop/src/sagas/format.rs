//! Text formatting shared by the `list` table, the `show` timeline and
//! the results of `retry` and `abort`: short names of states, types,
//! statuses and services, ages and durations, and truncation.

use std::time::{Duration, SystemTime};

use microshop_proto::orchestrator::v1 as pb;
use prost_types::Timestamp;

/// `SAGA_STATE_FAILED` as `FAILED` (the number if unknown).
pub fn state_name(value: i32) -> String {
    pb::SagaState::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| s.as_str_name().trim_start_matches("SAGA_STATE_").to_owned(),
    )
}

/// `SAGA_TYPE_PLACE_ORDER` as `place-order`, as on the command line.
pub fn type_name(value: i32) -> String {
    pb::SagaType::try_from(value).map_or_else(
        |_| value.to_string(),
        |t| {
            t.as_str_name()
                .trim_start_matches("SAGA_TYPE_")
                .to_ascii_lowercase()
                .replace('_', "-")
        },
    )
}

/// `STEP_STATUS_WAITING` as `WAITING`.
pub fn status_name(value: i32) -> String {
    pb::StepStatus::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| {
            s.as_str_name()
                .trim_start_matches("STEP_STATUS_")
                .to_owned()
        },
    )
}

/// `microshop.loyalty.v1.LoyaltyService` as `loyalty`.
pub fn service_short(name: &str) -> &str {
    name.strip_prefix("microshop.")
        .and_then(|rest| rest.split('.').next())
        .unwrap_or(name)
}

/// A timestamp as a [`SystemTime`] (`None` if out of range).
pub fn system_time(ts: &Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*ts).ok()
}

/// How long ago `ts` was, as of `now` (zero if in the future).
pub fn since(ts: Option<&Timestamp>, now: SystemTime) -> Option<Duration> {
    let at = system_time(ts?)?;
    Some(now.duration_since(at).unwrap_or(Duration::ZERO))
}

/// A coarse age: `42s`, `5m`, `3h12m`, `2d4h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h{}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// A finer duration: `850ms`, `3.250s`, else as [`age`].
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        age(d)
    }
}

/// `s` cut to `max` characters, ending with `…` if cut; newlines become
/// spaces so a row stays one line.
pub fn truncate(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_durations_and_truncation() {
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(300)), "5m");
        assert_eq!(age(Duration::from_secs(3 * 3_600 + 720)), "3h12m");
        assert_eq!(age(Duration::from_secs(2 * 86_400 + 4 * 3_600)), "2d4h");
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(3_250)), "3.250s");
        assert_eq!(truncate("héllo wörld", 6), "héllo…");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(
            service_short("microshop.loyalty.v1.LoyaltyService"),
            "loyalty"
        );
        assert_eq!(service_short("other"), "other");
        assert_eq!(
            type_name(pb::SagaType::ConfirmPayment.into()),
            "confirm-payment"
        );
        assert_eq!(state_name(99), "99");
    }
}
