//! The driver's budgets and periods ([`EngineConfig`]), apart from the
//! driver itself: the binary's flags and the tests fill it in, the engine
//! only reads it.

use std::time::Duration;

use crate::failpoint::Failpoint;

/// Budgets and periods of the driver.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Attempts of one forward step before the saga waits.
    pub step_attempts: usize,
    /// Time one forward step may take across its attempts.
    pub step_budget: Duration,
    /// Attempts of one compensation before it waits.
    pub compensation_attempts: usize,
    /// First retry delay (doubles, with jitter).
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Timeout of one participant call.
    pub call_timeout: Duration,
    /// Unpaid orders are cancelled this long after creation.
    pub payment_ttl: Duration,
    /// A checkout not completed this long after it started is compensated
    /// (`CHECKOUT_EXPIRED`), so its stock goes back on sale.
    pub checkout_hold: Duration,
    /// COMPLETED and COMPENSATED sagas are purged this long after they
    /// ended, with their idempotency keys (`None`: kept forever).
    pub saga_retention: Option<Duration>,
    /// How often unfinished sagas are looked for.
    pub recovery_interval: Duration,
    /// Longest pause between two tries of a saga waiting for a participant
    /// that health does not report back (the first is `recovery_interval`,
    /// doubling per wait).
    pub probe_max: Duration,
    /// How often payment deadlines are checked.
    pub expiry_interval: Duration,
    /// Longest a call waits for its saga when the client set no deadline.
    pub max_wait: Duration,
    /// Sagas recovery drives at once; the rest wait their turn, so a
    /// restart with thousands of unfinished sagas keeps memory bounded.
    pub recovery_concurrency: usize,
    /// Crash point for recovery tests.
    pub failpoint: Option<Failpoint>,
    /// This orchestrator's name as the owner of saga leases (shared log).
    pub instance_id: String,
    /// How long a saga's lease lasts unless renewed; every save renews it.
    /// Must exceed the longest gap between two saves of a saga (a call
    /// timeout plus the largest retry delay), or another orchestrator takes
    /// over sagas still being driven (safe, thanks to fencing, but wasted).
    pub lease: Duration,
}

/// A name for this process as a lease owner: host and process id, plus a
/// random part so a restarted process with a recycled pid is a new owner.
pub fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orchestrator".into());
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &nonce[nonce.len() - 6..]
    )
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            step_attempts: 8,
            step_budget: Duration::from_secs(10),
            compensation_attempts: 12,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            call_timeout: Duration::from_secs(3),
            payment_ttl: Duration::from_secs(600),
            checkout_hold: Duration::from_secs(600),
            saga_retention: Some(Duration::from_secs(604_800)),
            recovery_interval: Duration::from_secs(5),
            probe_max: Duration::from_secs(60),
            expiry_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(25),
            recovery_concurrency: 256,
            failpoint: None,
            instance_id: default_instance_id(),
            lease: Duration::from_secs(15),
        }
    }
}
