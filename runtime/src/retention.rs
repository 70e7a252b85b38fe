//! Retention: finished sagas (orchestrator) and participant barrier
//! entries (`--saga-retention-secs`, `--barrier-retention-secs`) are purged
//! once they are older than their retention, by one background loop per
//! store.
//!
//! The loop wakes at least once a minute (more often for a short retention,
//! as tests use), and purges in bounded batches, each its own small write,
//! yielding between them, so a backlog never holds up checkouts: the
//! embedded stores' group commits interleave other writes between batches.

use std::{future::Future, time::Duration};

use microshop_storage::StorageError;

/// Entries one purge write removes at most.
pub const PURGE_BATCH: usize = 500;

/// The retention below which a warning is logged at start: a barrier entry
/// must outlive any call that can still arrive for its saga (a call in
/// flight lasts at most its timeout, 3 s by default, and a cut-off
/// orchestrator's stale calls at most its lease, 15 s), and a saga must
/// outlive its client's retries; a day leaves a wide margin for both.
pub const SAFE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often a store with `retention` is purged: at least once a minute,
/// at least twice per retention period, at most every 100 ms.
pub fn purge_interval(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// The retention of a `*_retention_secs` setting (`None`: keep forever),
/// warning when it is below [`SAFE_RETENTION`].
pub fn retention_of(setting: &str, secs: u64) -> Option<Duration> {
    let retention = Duration::from_secs(secs);
    if secs == 0 {
        return None;
    }
    if retention < SAFE_RETENTION {
        tracing::warn!(
            setting,
            secs,
            "retention is below a day: fine for tests, but a late retry could then start a \
             second saga for one idempotency key, or a late call pass the barrier"
        );
    }
    Some(retention)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Purges what is older than `retention` every [`purge_interval`], for as
/// long as it runs (spawn it, and abort it when the store closes).
/// `purge(before_ms, limit)` removes up to `limit` entries older than
/// `before_ms` and says how many; `counted` is told each batch's count.
pub async fn purge_loop<P, F>(
    what: &'static str,
    retention: Duration,
    mut purge: P,
    counted: fn(u64),
) where
    P: FnMut(i64, usize) -> F + Send,
    F: Future<Output = Result<u64, StorageError>> + Send,
{
    let mut tick = tokio::time::interval(purge_interval(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let mut total = 0_u64;
        loop {
            match purge(before, PURGE_BATCH).await {
                Ok(n) => {
                    counted(n);
                    total += n;
                    if n < PURGE_BATCH as u64 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(what, error = %e, "purge failed; retrying at the next interval");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(what, purged = total, "purged entries past their retention");
        }
    }
}

/// Starts purging `store`'s barrier as `server`'s `--barrier-retention-secs`
/// says; the task to abort when the service stops (`None`: kept forever).
pub fn spawn_barrier_purge<S: microshop_storage::BarrierPurge + Clone>(
    store: &S,
    server: &crate::ServerArgs,
) -> Option<tokio::task::JoinHandle<()>> {
    let retention = retention_of("barrier-retention-secs", server.barrier_retention_secs)?;
    let store = store.clone();
    Some(tokio::spawn(purge_loop(
        "barrier entries",
        retention,
        move |before, limit| {
            let store = store.clone();
            async move { store.purge_barrier(before, limit).await }
        },
        |n| crate::metrics::metrics().barrier_entries_purged(n),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_at_least_once_a_minute_and_twice_per_retention() {
        assert_eq!(
            purge_interval(Duration::from_secs(604_800)),
            Duration::from_secs(60)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(
            purge_interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn zero_keeps_forever() {
        assert_eq!(retention_of("x", 0), None);
        assert_eq!(retention_of("x", 5), Some(Duration::from_secs(5)));
    }
}
