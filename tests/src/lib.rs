//! Harness of the cross-service scenario tests: the real servers over
//! loopback gRPC on a temporary data directory, seed helpers, bounded
//! polling (never a blind sleep), and the invariants of `docs/architecture.md`.
//!
//! Two ways to get a mesh:
//! - [`TestMesh::start`]: all four services in one call
//!   ([`microshop::mesh::Mesh`]), with a tunable
//!   [`EngineConfig`](orchestrator::EngineConfig);
//! - [`spawn_participant`] / [`spawn_orchestrator`]: each service on its own
//!   listener with its own stop switch, for outage scenarios.
//!
//! Either way, [`Shop`] holds the clients and the [`Universe`] of what was
//! seeded, so [`Shop::assert_invariants`] knows what to read.
//!
//! The harness is split by concern, every item re-exported here: `settings`
//! (time bounds, engine settings), `poll` (bounded polling, health),
//! `requests` (request builders, error assertions), `saga` (saga readers),
//! `shop` ([`Shop`]), `mesh` ([`TestMesh`]) and `servers` (services one by
//! one, ports).

mod mesh;
mod poll;
mod requests;
mod saga;
mod servers;
mod settings;
mod shop;

pub use microshop::invariants::{Summary, Universe};

pub use mesh::TestMesh;
pub use poll::{eventually, health_client, quiesce, wait_health};
pub use requests::{error_reason, expect_error, order_request, saga_id_of};
pub use saga::{action_attempts, action_status, compensation_status, saga_state, step};
pub use servers::{
    Participant, Reserved, Server, any_port, listen, reserve, spawn_orchestrator, spawn_participant,
};
pub use settings::{
    CONNECT_WITHIN, EARN_AMOUNT_PER_POINT, SETTLE_WITHIN, STOP_WITHIN, short_budget_engine,
    test_engine,
};
pub use shop::Shop;
