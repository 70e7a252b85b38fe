//! The values of `microshop sagas` flags and their parsers: saga states
//! (`--state`), saga types (`--type`), durations (`--older-than 90s`) and
//! counts (`--limit`).

use std::time::Duration;

use clap::ValueEnum;
use microshop_proto::orchestrator::v1 as pb;

/// A saga state, as on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl From<StateArg> for pb::SagaState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Running => Self::Running,
            StateArg::Compensating => Self::Compensating,
            StateArg::Completed => Self::Completed,
            StateArg::Compensated => Self::Compensated,
            StateArg::Failed => Self::Failed,
        }
    }
}

/// A saga type, as on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    PlaceOrder,
    ConfirmPayment,
    CancelOrder,
}

impl From<TypeArg> for pb::SagaType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::PlaceOrder => Self::PlaceOrder,
            TypeArg::ConfirmPayment => Self::ConfirmPayment,
            TypeArg::CancelOrder => Self::CancelOrder,
        }
    }
}

/// `--limit`: at least 1.
pub fn parse_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a count of 1 or more")),
    }
}

/// The command-line name of a value (`place-order`).
pub fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// The longest `--older-than` accepted: 100 years.
const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

/// Parses a duration such as `90s`, `10m`, `2h`, `1d` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let hint = "write a number and a unit: 90s, 10m, 2h or 1d (or 1h30m)";
    if s.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(format!("{s:?} has an unknown unit {c:?}; {hint}")),
        };
        if digits.is_empty() {
            return Err(format!("{s:?} has a unit without a number; {hint}"));
        }
        total = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .and_then(|n| n.checked_add(total))
            .filter(|&n| n <= MAX_DURATION_SECS)
            .ok_or_else(|| format!("{s:?} is longer than 100 years"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{s:?} has no unit; {hint}"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds_minutes_hours_and_days() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        for bad in [
            "",
            "90",
            "s",
            "10x",
            "1.5h",
            "-5m",
            "10 m",
            "99999999999999999999s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(
                err.contains("90s") || err.contains("100 years"),
                "{bad:?}: {err}"
            );
        }
        assert!(parse_duration("36600d").is_err(), "over 100 years");
    }

    #[test]
    fn states_and_types_parse_from_their_command_line_names() {
        let state = |s: &str| StateArg::from_str(s, false).map(pb::SagaState::from);
        assert_eq!(state("running"), Ok(pb::SagaState::Running));
        assert_eq!(state("compensating"), Ok(pb::SagaState::Compensating));
        assert_eq!(state("completed"), Ok(pb::SagaState::Completed));
        assert_eq!(state("compensated"), Ok(pb::SagaState::Compensated));
        assert_eq!(state("failed"), Ok(pb::SagaState::Failed));
        assert!(state("stuck").is_err());
        assert!(state("SAGA_STATE_FAILED").is_err());
        let kind = |s: &str| TypeArg::from_str(s, false).map(pb::SagaType::from);
        assert_eq!(kind("place-order"), Ok(pb::SagaType::PlaceOrder));
        assert_eq!(kind("confirm-payment"), Ok(pb::SagaType::ConfirmPayment));
        assert_eq!(kind("cancel-order"), Ok(pb::SagaType::CancelOrder));
        assert!(kind("place_order").is_err());
    }
}
