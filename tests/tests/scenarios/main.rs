//! Cross-service scenarios over loopback gRPC: real servers, real stores,
//! no mocks. Every scenario ends with the invariants of `docs/architecture.md`.
//! State is awaited by bounded polling, never by sleeping.
//!
//! One test binary, a module per concern: `checkout` (scenarios 1 to 4:
//! the oversell race, compensations, invalid requests, idempotency),
//! `payment` (5 and 6: payment and cancellation, payment expiry) and
//! `pricing` (9: a shop's own pricing rules). What they share is here.

use std::{collections::HashSet, time::Duration};

use microshop::mesh::{MeshAddrs, MeshClients};
use microshop_proto::{
    orchestrator::v1::{self as orch, SagaState, StepStatus},
    order::v1::{self as ord, OrderStatus},
};
use microshop_runtime::Reason;
use microshop_tests::{
    CONNECT_WITHIN, EARN_AMOUNT_PER_POINT, Participant, SETTLE_WITHIN, Shop, TestMesh,
    action_attempts, action_status, any_port, compensation_status, eventually, expect_error,
    listen, order_request, saga_id_of, saga_state, spawn_orchestrator, spawn_participant, step,
    test_engine,
};
use orchestrator::{EngineConfig, ParticipantUrls};
use order_svc::PricingRules;
use tokio::task::JoinSet;
use tonic::{Code, Response};
use tonic_types::StatusExt;

mod checkout;
mod payment;
mod pricing;

fn order_status(o: &ord::Order) -> OrderStatus {
    OrderStatus::try_from(o.status).unwrap_or(OrderStatus::Unspecified)
}
