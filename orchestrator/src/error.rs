//! The orchestrator's errors and their one mapping to `tonic::Status`.
//!
//! A business rejection from a participant is answered as the participant
//! gave it (code, reason, details), with the saga id and final state added
//! to the ErrorInfo metadata, so a client can look the saga up.

use std::time::Duration;

use microshop_runtime::{
    Reason,
    errors::{invalid_request, rich_status, status_with_details, storage_status},
};
use microshop_storage::StorageError;
use tonic::{Code, Status};

use crate::{
    conversions::state_name,
    model::{SagaError, SagaState},
};

/// Everything an orchestrator RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// Bad fields: (field, why).
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    /// No such saga.
    #[error("unknown saga {0}")]
    UnknownSaga(String),
    /// The key was used with another payload.
    #[error("idempotency key {key} reused")]
    KeyReused {
        /// The key.
        key: String,
        /// The saga holding it.
        saga_id: String,
    },
    /// The admin operation does not fit the saga's state.
    #[error("saga {saga_id} is {state:?}")]
    NotRetryable {
        /// The saga.
        saga_id: String,
        /// Its state.
        state: SagaState,
        /// What was asked.
        operation: &'static str,
        /// The sagas it applies to.
        applies_to: &'static str,
    },
    /// The saga compensated (or compensates) for a rejection.
    #[error("saga {saga_id} was rejected")]
    Rejected {
        /// The saga.
        saga_id: String,
        /// COMPENSATED, or COMPENSATING while a compensation waits.
        state: SagaState,
        /// The rejection.
        error: Box<SagaError>,
    },
    /// The saga is FAILED and waits for an operator.
    #[error("saga {saga_id} failed")]
    SagaFailed {
        /// The saga.
        saga_id: String,
        /// Why.
        reason: String,
    },
    /// The saga did not end within the caller's deadline, or waits for
    /// unreachable participants.
    #[error("saga {saga_id} still running")]
    StillRunning {
        /// The saga.
        saga_id: String,
        /// Its state.
        state: SagaState,
        /// The participants it waits for (none: still being driven).
        waiting_for: Vec<String>,
        /// Whether one of them is misconfigured (its URL serves another
        /// service).
        misconfigured: bool,
    },
    /// Driving stopped (the log became unreachable).
    #[error("saga {saga_id} interrupted: {why}")]
    Interrupted {
        /// The saga.
        saga_id: String,
        /// Why.
        why: String,
    },
    /// The saga log failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<OrchestratorError> for Status {
    fn from(err: OrchestratorError) -> Self {
        match err {
            OrchestratorError::Invalid(violations) => invalid_request(&violations),
            OrchestratorError::UnknownSaga(saga_id) => rich_status(
                Code::NotFound,
                Reason::UnknownSaga,
                format!("unknown saga {saga_id:?}; list sagas with ListSagas"),
                [("sagaId", saga_id)],
                None,
            ),
            OrchestratorError::KeyReused { key, saga_id } => rich_status(
                Code::AlreadyExists,
                Reason::IdempotencyKeyReused,
                match key.strip_prefix(crate::api::CONFIRM_KEY_PREFIX) {
                    Some(order_id) => format!(
                        "order {order_id} was already confirmed with another paymentRef \
                         (saga {saga_id}); an order is paid once, so repeat the confirmation \
                         with its first paymentRef"
                    ),
                    None => format!(
                        "idempotency key {key:?} was already used for a different request; \
                         use a new key for a new order"
                    ),
                },
                [("idempotencyKey", key), ("sagaId", saga_id)],
                None,
            ),
            OrchestratorError::NotRetryable {
                saga_id,
                state,
                operation,
                applies_to,
            } => rich_status(
                Code::FailedPrecondition,
                Reason::SagaNotRetryable,
                format!(
                    "saga {saga_id} is {}{}; {operation} applies to {applies_to} only",
                    state_name(state),
                    if state.is_terminal() {
                        ""
                    } else {
                        " and being driven"
                    }
                ),
                [
                    ("sagaId", saga_id),
                    ("sagaState", state_name(state).to_owned()),
                ],
                None,
            ),
            OrchestratorError::Rejected {
                saga_id,
                state,
                error,
            } => {
                let SagaError {
                    code,
                    reason,
                    message,
                    metadata,
                    violations,
                } = *error;
                let mut metadata: Vec<(String, String)> = metadata.into_iter().collect();
                metadata.push(("sagaId".into(), saga_id));
                metadata.push(("sagaState".into(), state_name(state).to_owned()));
                status_with_details(
                    Code::from_i32(code),
                    &reason,
                    message,
                    metadata,
                    &violations,
                    None,
                )
            }
            OrchestratorError::SagaFailed { saga_id, reason } => rich_status(
                Code::Unavailable,
                Reason::DependencyUnavailable,
                format!("checkout could not finish and is held for an operator: {reason}"),
                [
                    ("sagaId", saga_id),
                    ("sagaState", state_name(SagaState::Failed).to_owned()),
                ],
                Some(Duration::from_secs(1)),
            ),
            OrchestratorError::StillRunning {
                saga_id,
                state,
                waiting_for,
                misconfigured: true,
            } => rich_status(
                Code::Unavailable,
                Reason::DependencyMisconfigured,
                format!(
                    "saga {saga_id} is {} and waits for {}: {} (the orchestrator is \
                     misconfigured; an operator must fix its participant URLs, and its log \
                     names the URL); the saga resumes by itself once that \
                     is fixed; retry with the same idempotency key for its outcome",
                    state_name(state),
                    waiting_for.join(", "),
                    if waiting_for.len() > 1 {
                        "the URL of at least one of them reaches a server that does not serve it"
                    } else {
                        "its URL reaches a server that does not serve it"
                    }
                ),
                [
                    ("sagaId", saga_id),
                    ("sagaState", state_name(state).to_owned()),
                    ("waitingFor", waiting_for.join(",")),
                ],
                Some(Duration::from_secs(5)),
            ),
            OrchestratorError::StillRunning {
                saga_id,
                state,
                waiting_for,
                misconfigured: false,
            } => rich_status(
                Code::Unavailable,
                Reason::DependencyUnavailable,
                if waiting_for.is_empty() {
                    format!(
                        "saga {saga_id} is still {} (a participant is slow or down); \
                         retry with the same idempotency key for its outcome",
                        state_name(state)
                    )
                } else {
                    format!(
                        "saga {saga_id} is {} and waits for {}, which cannot be reached; it \
                         resumes by itself once that is back; retry with the same idempotency \
                         key for its outcome",
                        state_name(state),
                        waiting_for.join(", ")
                    )
                },
                [
                    ("sagaId", saga_id),
                    ("sagaState", state_name(state).to_owned()),
                    ("waitingFor", waiting_for.join(",")),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty()),
                Some(Duration::from_millis(500)),
            ),
            OrchestratorError::Interrupted { saga_id, why } => {
                tracing::warn!(%saga_id, %why, "saga interrupted");
                rich_status(
                    Code::Unavailable,
                    Reason::DependencyUnavailable,
                    format!(
                        "saga {saga_id} was interrupted and will be resumed; \
                         retry with the same idempotency key"
                    ),
                    [("sagaId", saga_id)],
                    Some(Duration::from_secs(1)),
                )
            }
            OrchestratorError::Storage(e) => storage_status(&e),
        }
    }
}
