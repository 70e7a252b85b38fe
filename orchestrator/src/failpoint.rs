//! Crash points for recovery tests: the driver calls [`Failpoint::hit`] at
//! every write boundary of every step (`intent:OP` after the intent is
//! recorded, `rpc:OP` after the participant answered but before the result
//! is recorded, `result:OP` after the result is recorded, in the same
//! write as the next call's intent or the saga's end). When the
//! configured one is reached, the process announces it on stderr and then
//! holds (so a test can SIGKILL it at exactly that point) or aborts.
//!
//! One more lies inside a save of the MongoDB saga log: `save:deadline`,
//! after a checkout's payment deadline is written and before the record it
//! belongs with (the two are separate writes there, and a takeover must
//! not depend on the second).
//!
//! Off unless `--failpoint` / `MICROSHOP_FAILPOINT` is set; the check is a
//! string comparison, so it costs nothing measurable when off.

use std::{str::FromStr, time::Duration};

/// What to do at the failpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailAction {
    /// Announce and block forever (the test kills the process).
    Hold,
    /// Announce and abort the process.
    Abort,
}

/// A configured crash point, written `PHASE:OP` or `PHASE:OP=abort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failpoint {
    /// `PHASE:OP`, e.g. `intent:reserve-stock`.
    pub point: String,
    /// What to do there.
    pub action: FailAction,
}

impl FromStr for Failpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (point, action) = match s.split_once('=') {
            None => (s, FailAction::Hold),
            Some((p, "hold")) => (p, FailAction::Hold),
            Some((p, "abort")) => (p, FailAction::Abort),
            Some((_, other)) => return Err(format!("unknown failpoint action {other:?}")),
        };
        let valid = point.split_once(':').is_some_and(|(phase, op)| {
            (matches!(phase, "intent" | "rpc" | "result") && !op.is_empty())
                || (phase, op) == ("save", "deadline")
        });
        if !valid {
            return Err(format!(
                "failpoint {point:?} must look like intent:OP, rpc:OP or result:OP, or be \
                 save:deadline"
            ));
        }
        Ok(Self {
            point: point.to_owned(),
            action,
        })
    }
}

impl Failpoint {
    /// Stops here if this is the configured point.
    pub async fn hit(this: Option<&Self>, phase: &str, op: &str) {
        let Some(fp) = this else { return };
        let Some((p, o)) = fp.point.split_once(':') else {
            return;
        };
        if p != phase || o != op {
            return;
        }
        eprintln!("FAILPOINT {} reached", fp.point);
        tracing::warn!(point = %fp.point, "failpoint reached");
        match fp.action {
            FailAction::Abort => std::process::abort(),
            FailAction::Hold => loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_and_bad_ones_are_refused() {
        for (text, point, action) in [
            (
                "result:reserve-stock",
                "result:reserve-stock",
                FailAction::Hold,
            ),
            (
                "intent:create-order=abort",
                "intent:create-order",
                FailAction::Abort,
            ),
            ("rpc:quote=hold", "rpc:quote", FailAction::Hold),
            ("save:deadline", "save:deadline", FailAction::Hold),
        ] {
            let fp: Failpoint = text.parse().expect(text);
            assert_eq!((fp.point.as_str(), fp.action), (point, action), "{text}");
        }
        for bad in [
            "",
            "reserve-stock",
            "result:",
            "commit:reserve-stock",
            "save:record",
            "result:quote=later",
        ] {
            assert!(bad.parse::<Failpoint>().is_err(), "{bad:?} was accepted");
        }
    }
}
