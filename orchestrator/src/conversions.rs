//! The one place saga records and wire types meet.

use microshop_proto::orchestrator::v1 as pb;
use prost_types::Timestamp;

use crate::model::{
    RunRecord, SagaError, SagaRecord, SagaState, SagaType, StepRecord, StepStatus, Transition,
    Waiting,
};

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id_of(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// The domain type of a wire filter; `None` for unspecified.
pub fn type_filter(t: pb::SagaType) -> Option<SagaType> {
    match t {
        pb::SagaType::Unspecified => None,
        pb::SagaType::PlaceOrder => Some(SagaType::PlaceOrder),
        pb::SagaType::ConfirmPayment => Some(SagaType::ConfirmPayment),
        pb::SagaType::CancelOrder => Some(SagaType::CancelOrder),
    }
}

/// Unix millis of a protobuf timestamp.
pub fn millis_of(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos.clamp(0, 999_999_999) / 1_000_000))
}

/// Unix millis as a protobuf timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The wire name of a state (as grpcurl prints it).
pub fn state_name(state: SagaState) -> &'static str {
    pb::SagaState::from(state).as_str_name()
}

impl From<SagaState> for pb::SagaState {
    fn from(s: SagaState) -> Self {
        match s {
            SagaState::Running => Self::Running,
            SagaState::Completed => Self::Completed,
            SagaState::Compensating => Self::Compensating,
            SagaState::Compensated => Self::Compensated,
            SagaState::Failed => Self::Failed,
        }
    }
}

/// The domain state of a wire filter; `None` for unspecified.
pub fn state_filter(s: pb::SagaState) -> Option<SagaState> {
    match s {
        pb::SagaState::Unspecified => None,
        pb::SagaState::Running => Some(SagaState::Running),
        pb::SagaState::Completed => Some(SagaState::Completed),
        pb::SagaState::Compensating => Some(SagaState::Compensating),
        pb::SagaState::Compensated => Some(SagaState::Compensated),
        pb::SagaState::Failed => Some(SagaState::Failed),
    }
}

impl From<SagaType> for pb::SagaType {
    fn from(t: SagaType) -> Self {
        match t {
            SagaType::PlaceOrder => Self::PlaceOrder,
            SagaType::ConfirmPayment => Self::ConfirmPayment,
            SagaType::CancelOrder => Self::CancelOrder,
        }
    }
}

impl From<StepStatus> for pb::StepStatus {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Pending => Self::Pending,
            StepStatus::Running => Self::Running,
            StepStatus::Succeeded => Self::Succeeded,
            StepStatus::Failed => Self::Failed,
            StepStatus::Skipped => Self::Skipped,
            StepStatus::Waiting => Self::Waiting,
        }
    }
}

impl From<RunRecord> for pb::StepRun {
    fn from(r: RunRecord) -> Self {
        let RunRecord {
            name,
            status,
            attempts,
            last_error,
            started_at_ms,
            finished_at_ms,
        } = r;
        Self {
            name,
            status: pb::StepStatus::from(status).into(),
            attempts,
            last_error,
            started_at: started_at_ms.map(timestamp),
            finished_at: finished_at_ms.map(timestamp),
        }
    }
}

impl From<StepRecord> for pb::SagaStep {
    fn from(s: StepRecord) -> Self {
        let StepRecord {
            name,
            description,
            action,
            compensation,
        } = s;
        Self {
            name,
            description,
            action: Some(action.into()),
            compensation: compensation.map(Into::into),
        }
    }
}

impl From<Transition> for pb::SagaTransition {
    fn from(t: Transition) -> Self {
        let Transition {
            state,
            at_ms,
            note,
            actor,
        } = t;
        Self {
            state: pb::SagaState::from(state).into(),
            at: Some(timestamp(at_ms)),
            note,
            actor,
        }
    }
}

impl From<SagaError> for pb::SagaError {
    fn from(e: SagaError) -> Self {
        let SagaError {
            code,
            reason,
            message,
            metadata: _,
            violations: _,
        } = e;
        Self {
            code: code_name(tonic::Code::from_i32(code)).to_owned(),
            reason,
            message,
        }
    }
}

/// The canonical upper-case name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<SagaRecord> for pb::Saga {
    fn from(r: SagaRecord) -> Self {
        let customer_id = r.customer_id().to_owned();
        let SagaRecord {
            saga_id,
            saga_type,
            state,
            idempotency_key,
            input: _,
            steps,
            outputs,
            history,
            error,
            failure_reason,
            failed_from: _,
            created_at_ms,
            updated_at_ms,
            seq: _,
            lease_epoch: _,
            trace_parent,
            waiting,
            waits: _,
        } = r;
        let (waiting_for, next_attempt_at) = match waiting {
            Some(Waiting {
                participants,
                since_ms: _,
                next_attempt_ms,
                misconfigured: _,
            }) => (participants, Some(timestamp(next_attempt_ms))),
            None => (Vec::new(), None),
        };
        Self {
            saga_id,
            r#type: pb::SagaType::from(saga_type).into(),
            state: pb::SagaState::from(state).into(),
            idempotency_key,
            order_id: outputs.order_id.unwrap_or_default(),
            customer_id,
            steps: steps.into_iter().map(Into::into).collect(),
            history: history.into_iter().map(Into::into).collect(),
            error: error.map(Into::into),
            failure_reason,
            created_at: Some(timestamp(created_at_ms)),
            updated_at: Some(timestamp(updated_at_ms)),
            waiting_for,
            next_attempt_at,
            trace_id: trace_parent
                .as_deref()
                .and_then(trace_id_of)
                .unwrap_or_default(),
        }
    }
}
