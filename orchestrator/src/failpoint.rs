//! Crash points for recovery tests: the driver calls [`Failpoint::hit`] at
//! every write boundary of every step (`intent:OP` after the intent is
//! recorded, `rpc:OP` after the participant answered but before the result
//! is recorded, `result:OP` after the result is recorded, in the same
//! write as the next call's intent or the saga's end). When the
//! configured one is reached, the process announces it on stderr and then
//! holds (so a test can SIGKILL it at exactly that point) or aborts.
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
            matches!(phase, "intent" | "rpc" | "result") && !op.is_empty()
        });
        if !valid {
            return Err(format!(
                "failpoint {point:?} must look like intent:OP, rpc:OP or result:OP"
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
