//! The caller's deadline as gRPC carries it: the `grpc-timeout` header.
//! Read by the orchestrator (to answer before the caller gives up) and by
//! the fault layer (to hold an action past it), so it is parsed in one place.

use std::time::Duration;

/// Parses a `grpc-timeout` value (`1500m`, `2S`, ...): at most 8 digits and
/// a unit. `None` for anything malformed, never a panic.
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    // Checked: a non-ASCII value must not split inside a character.
    let (digits, unit) = s.split_at_checked(s.len() - 1)?;
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
