//! Time bounds of the harness and the engine settings the scenarios run
//! the orchestrator with.

use std::time::Duration;

use orchestrator::EngineConfig;

/// How long to wait for a server to accept connections.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(15);
/// Upper bound for any polled condition (sagas settling, expiry, health).
pub const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// Upper bound for a server to stop gracefully.
pub const STOP_WITHIN: Duration = Duration::from_secs(15);
/// Points earned per this much paid (the seed rule: 1 point per 100,000₫).
pub const EARN_AMOUNT_PER_POINT: i64 = 100_000;

/// Engine settings for scenarios where every participant is up: fast
/// retries, budgets generous enough that a loaded test machine does not
/// turn a slow call into a FAILED saga, a fast expiry check.
pub fn test_engine() -> EngineConfig {
    EngineConfig {
        step_attempts: 8,
        step_budget: Duration::from_secs(10),
        compensation_attempts: 8,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        call_timeout: Duration::from_secs(5),
        recovery_interval: Duration::from_secs(1),
        expiry_interval: Duration::from_millis(200),
        max_wait: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

/// Engine settings for outage scenarios: a step gives up after 4 attempts
/// or 1 s, a compensation after 3 attempts, so a saga against a dead
/// participant is FAILED within about a second.
pub fn short_budget_engine() -> EngineConfig {
    EngineConfig {
        step_attempts: 4,
        step_budget: Duration::from_secs(1),
        compensation_attempts: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        call_timeout: Duration::from_secs(1),
        recovery_interval: Duration::from_secs(1),
        max_wait: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}
