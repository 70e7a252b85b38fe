//! Readers of a saga as the SagaAdminService returns it: its state, its
//! steps, their action and compensation.

use microshop_proto::orchestrator::v1 as orch;

/// A saga state's enum value.
pub fn saga_state(s: &orch::Saga) -> orch::SagaState {
    orch::SagaState::try_from(s.state).unwrap_or(orch::SagaState::Unspecified)
}

/// A step of `saga` by name.
#[track_caller]
pub fn step<'a>(saga: &'a orch::Saga, name: &str) -> &'a orch::SagaStep {
    saga.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("saga {} has no step {name}", saga.saga_id))
}

/// A step's action status.
pub fn action_status(step: &orch::SagaStep) -> orch::StepStatus {
    step.action
        .as_ref()
        .and_then(|a| orch::StepStatus::try_from(a.status).ok())
        .unwrap_or(orch::StepStatus::Unspecified)
}

/// A step's action attempts.
pub fn action_attempts(step: &orch::SagaStep) -> u32 {
    step.action.as_ref().map_or(0, |a| a.attempts)
}

/// A step's compensation status, if one ran.
pub fn compensation_status(step: &orch::SagaStep) -> Option<orch::StepStatus> {
    step.compensation
        .as_ref()
        .map(|c| orch::StepStatus::try_from(c.status).unwrap_or(orch::StepStatus::Unspecified))
}
