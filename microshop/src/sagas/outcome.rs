//! What `retry` and `abort` did, or would do, to each saga, and how an
//! orchestrator answer becomes that [`Outcome`].
//!
//! Outcomes: `retried` / `aborted` (the RPC succeeded; the note says if
//! the saga still waits), `no-op` (a retry of a saga being driven or
//! ended: the orchestrator answered SAGA_NOT_RETRYABLE and changed
//! nothing; this counts as success), `failed` (the RPC failed, or an abort
//! of an ended saga), and under `--dry-run` `would-retry`, `would-abort`,
//! `no-op` and `would-fail`.

use microshop_proto::orchestrator::v1 as pb;
use microshop_runtime::{
    Reason,
    errors::{metadata_of, reason_of},
};
use tonic::Status;

use super::{client::Admin, format};

/// What happened (or would happen) to one saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// RetrySaga succeeded.
    Retried,
    /// AbortSaga succeeded.
    Aborted,
    /// Nothing to do: a retry of a saga being driven or ended.
    NoOp,
    /// `--dry-run`: would be retried.
    WouldRetry,
    /// `--dry-run`: would be aborted.
    WouldAbort,
    /// `--dry-run`: would be refused (an abort of an ended saga).
    WouldFail,
    /// The RPC failed or was refused.
    Failed,
}

impl OutcomeKind {
    /// Every kind, in the order of summaries.
    pub const ALL: [Self; 7] = [
        Self::Retried,
        Self::Aborted,
        Self::WouldRetry,
        Self::WouldAbort,
        Self::NoOp,
        Self::WouldFail,
        Self::Failed,
    ];

    /// Whether it counts as success (for `ok` and the exit code).
    pub fn ok(self) -> bool {
        !matches!(self, Self::Failed | Self::WouldFail)
    }

    /// As printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retried => "retried",
            Self::Aborted => "aborted",
            Self::NoOp => "no-op",
            Self::WouldRetry => "would-retry",
            Self::WouldAbort => "would-abort",
            Self::WouldFail => "would-fail",
            Self::Failed => "failed",
        }
    }
}

/// The result for one saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The saga.
    pub saga_id: String,
    /// What happened.
    pub kind: OutcomeKind,
    /// Its state afterwards (now, for a no-op or a dry run), if known.
    pub state: Option<pb::SagaState>,
    /// Why it failed.
    pub error: Option<String>,
    /// More about a success (still waiting, why a no-op).
    pub note: Option<String>,
}

/// Retry or abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// RetrySaga.
    Retry,
    /// AbortSaga.
    Abort,
}

impl Action {
    /// As on the command line.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Abort => "abort",
        }
    }
}

/// An outcome without error or note.
pub fn outcome(saga_id: &str, kind: OutcomeKind, state: Option<pb::SagaState>) -> Outcome {
    Outcome {
        saga_id: saga_id.to_owned(),
        kind,
        state,
        error: None,
        note: None,
    }
}

/// A failure.
pub fn failed(saga_id: &str, state: Option<pb::SagaState>, error: String) -> Outcome {
    Outcome {
        error: Some(error),
        ..outcome(saga_id, OutcomeKind::Failed, state)
    }
}

/// What the saga still waits for, or why it is FAILED, for a note.
fn after_note(saga: &pb::Saga) -> Option<String> {
    if !saga.waiting_for.is_empty() {
        let names: Vec<&str> = saga
            .waiting_for
            .iter()
            .map(|n| format::service_short(n))
            .collect();
        Some(format!(
            "still waiting for {}; it resumes by itself once that is back",
            names.join(", ")
        ))
    } else if saga.state() == pb::SagaState::Failed {
        Some(format!("FAILED again: {}", saga.failure_reason))
    } else {
        None
    }
}

/// What `action` would do to `saga` (`--dry-run`).
pub fn predict(action: Action, saga: &pb::Saga) -> Outcome {
    use pb::SagaState as S;
    let state = saga.state();
    let id = &saga.saga_id;
    let ended = matches!(state, S::Completed | S::Compensated);
    let waiting = !saga.waiting_for.is_empty();
    let with = |kind, note: String| Outcome {
        note: Some(note),
        ..outcome(id, kind, Some(state))
    };
    match action {
        Action::Retry if state == S::Failed => with(
            OutcomeKind::WouldRetry,
            format!("FAILED: {}", saga.failure_reason),
        ),
        Action::Retry if ended => with(OutcomeKind::NoOp, "it has ended".into()),
        Action::Retry if waiting => with(
            OutcomeKind::WouldRetry,
            format!("waiting for {}", saga.waiting_for.join(", ")),
        ),
        Action::Retry => with(
            OutcomeKind::NoOp,
            "it is not waiting: being driven now".into(),
        ),
        Action::Abort if ended => Outcome {
            error: Some(format!(
                "it is {}: only FAILED and unfinished sagas can be aborted",
                format::state_name(saga.state)
            )),
            ..outcome(id, OutcomeKind::WouldFail, Some(state))
        },
        Action::Abort => outcome(id, OutcomeKind::WouldAbort, Some(state)),
    }
}

/// The outcome of one RetrySaga or AbortSaga answer.
pub fn settle(
    action: Action,
    saga_id: &str,
    reply: Result<pb::Saga, Status>,
    admin: &Admin,
) -> Outcome {
    match reply {
        Ok(saga) => Outcome {
            note: after_note(&saga),
            ..outcome(
                saga_id,
                match action {
                    Action::Retry => OutcomeKind::Retried,
                    Action::Abort => OutcomeKind::Aborted,
                },
                Some(saga.state()),
            )
        },
        Err(status) if reason_of(&status) == Some(Reason::SagaNotRetryable) => {
            let state =
                metadata_of(&status, "sagaState").and_then(|s| pb::SagaState::from_str_name(&s));
            match action {
                Action::Retry => Outcome {
                    note: Some(status.message().to_owned()),
                    ..outcome(saga_id, OutcomeKind::NoOp, state)
                },
                Action::Abort => {
                    let hint = if state == Some(pb::SagaState::Completed) {
                        "; to undo a completed checkout, cancel its order"
                    } else {
                        ""
                    };
                    failed(saga_id, state, format!("{}{hint}", status.message()))
                }
            }
        }
        Err(status) => {
            let what = match action {
                Action::Retry => "RetrySaga",
                Action::Abort => "AbortSaga",
            };
            failed(
                saga_id,
                None,
                admin.error(what, Some(saga_id), &status).to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(state: pb::SagaState, waiting: bool) -> pb::Saga {
        pb::Saga {
            saga_id: "s-1".into(),
            state: state.into(),
            waiting_for: if waiting {
                vec!["microshop.loyalty.v1.LoyaltyService".into()]
            } else {
                Vec::new()
            },
            failure_reason: if state == pb::SagaState::Failed {
                "refund-points refused".into()
            } else {
                String::new()
            },
            ..pb::Saga::default()
        }
    }

    #[test]
    fn dry_runs_predict_what_the_orchestrator_would_do() {
        use OutcomeKind as K;
        use pb::SagaState as S;
        for (state, waiting, retry, abort) in [
            (S::Failed, false, K::WouldRetry, K::WouldAbort),
            (S::Running, true, K::WouldRetry, K::WouldAbort),
            (S::Compensating, true, K::WouldRetry, K::WouldAbort),
            (S::Running, false, K::NoOp, K::WouldAbort),
            (S::Completed, false, K::NoOp, K::WouldFail),
            (S::Compensated, false, K::NoOp, K::WouldFail),
        ] {
            let s = saga(state, waiting);
            let r = predict(Action::Retry, &s);
            assert_eq!(r.kind, retry, "retry {state:?} waiting={waiting}");
            assert_eq!(r.state, Some(state));
            assert!(r.kind.ok());
            let a = predict(Action::Abort, &s);
            assert_eq!(a.kind, abort, "abort {state:?} waiting={waiting}");
            assert_eq!(a.kind.ok(), a.error.is_none(), "{a:?}");
        }
    }

    #[test]
    fn only_failures_are_not_ok() {
        for kind in OutcomeKind::ALL {
            assert_eq!(
                kind.ok(),
                !matches!(kind, OutcomeKind::Failed | OutcomeKind::WouldFail),
                "{kind:?}"
            );
        }
    }
}
