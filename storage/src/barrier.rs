//! The participant barrier (`docs/architecture.md`) on the embedded store.
//!
//! Every mutating saga RPC records `(saga_id, op)` with its outcome in the
//! same write transaction as its business effect. From those records:
//! - a repeated action replays its first outcome and has no second effect;
//! - a repeated compensation replays too (a no-op);
//! - a compensation whose action never ran records itself and succeeds;
//! - an action whose compensation is recorded is refused with no effect.
//!
//! A business rejection of an action is recorded as its outcome as well, so
//! a retry answers the same rejection instead of trying again.
//!
//! Entries expire (`--barrier-retention-secs`): each is indexed by when it
//! was recorded, and [`purge`] removes those older than the retention in
//! bounded batches. Only replay and anti-hanging markers live here; what a
//! later saga still needs (a reservation a cancel releases, a deduction a
//! cancel refunds) is a business record of its service, kept with its order.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};

use crate::{StorageError, decode, encode};

/// `(saga_id, op)` → the op's encoded outcome.
pub const BARRIER: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("barrier");

/// `(recorded at (Unix ms), saga_id, op)` of every barrier entry, oldest
/// first: what [`purge`] walks.
const BARRIER_TIMES: TableDefinition<(i64, &str, &str), ()> = TableDefinition::new("barrier_times");

/// Flags of the barrier's own upgrades.
const BARRIER_META: TableDefinition<&str, u64> = TableDefinition::new("barrier_meta");

/// Set once every entry written before entries were timed has its time.
const TIMES_INDEXED: &str = "times_indexed";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What an action must do, decided from its saga's barrier records.
#[derive(Debug)]
pub enum ActionGate<T> {
    /// First delivery: perform the effect and [`record`] its outcome.
    Proceed,
    /// Repeated delivery: answer the first outcome, change nothing.
    Replay(T),
    /// Its compensation already ran: refuse, change nothing.
    Compensated,
}

/// Creates the barrier tables (call from the store's init). Entries of a
/// store written before they were timed are timed now, once: they expire
/// one retention period after the upgrade.
pub fn init(txn: &WriteTransaction) -> Result<(), StorageError> {
    let barrier = txn.open_table(BARRIER)?;
    let mut times = txn.open_table(BARRIER_TIMES)?;
    let mut meta = txn.open_table(BARRIER_META)?;
    if meta.get(TIMES_INDEXED)?.is_none() {
        let now = now_ms();
        for entry in barrier.iter()? {
            let (key, _) = entry?;
            let (saga_id, op) = key.value();
            times.insert((now, saga_id, op), ())?;
        }
        meta.insert(TIMES_INDEXED, 1)?;
    }
    Ok(())
}

/// Removes up to `limit` barrier entries recorded before `before_ms`;
/// returns how many.
pub fn purge(txn: &WriteTransaction, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
    let mut times = txn.open_table(BARRIER_TIMES)?;
    let mut barrier = txn.open_table(BARRIER)?;
    let old: Vec<(i64, String, String)> = times
        .range(..(before_ms, "", ""))?
        .take(limit)
        .map(|e| {
            e.map(|(k, _)| {
                let (at, saga_id, op) = k.value();
                (at, saga_id.to_owned(), op.to_owned())
            })
        })
        .collect::<Result<_, _>>()?;
    for (at, saga_id, op) in &old {
        barrier.remove((saga_id.as_str(), op.as_str()))?;
        times.remove((*at, saga_id.as_str(), op.as_str()))?;
    }
    Ok(u64::try_from(old.len()).unwrap_or(u64::MAX))
}

/// Decides what `action` of `saga_id` must do, given its `compensation` op.
pub fn action_gate<T: DeserializeOwned>(
    txn: &WriteTransaction,
    saga_id: &str,
    action: &str,
    compensation: &str,
) -> Result<ActionGate<T>, StorageError> {
    let table = txn.open_table(BARRIER)?;
    if let Some(first) = table.get((saga_id, action))? {
        return Ok(ActionGate::Replay(decode(first.value())?));
    }
    if table.get((saga_id, compensation))?.is_some() {
        return Ok(ActionGate::Compensated);
    }
    Ok(ActionGate::Proceed)
}

/// The recorded outcome of `op` for `saga_id`, if it ran.
pub fn outcome<T: DeserializeOwned>(
    txn: &WriteTransaction,
    saga_id: &str,
    op: &str,
) -> Result<Option<T>, StorageError> {
    let table = txn.open_table(BARRIER)?;
    let found = table.get((saga_id, op))?;
    found.map(|v| decode(v.value())).transpose()
}

/// Records the outcome of `op` for `saga_id`.
pub fn record<T: Serialize>(
    txn: &WriteTransaction,
    saga_id: &str,
    op: &str,
    outcome: &T,
) -> Result<(), StorageError> {
    let bytes = encode(outcome)?;
    let mut table = txn.open_table(BARRIER)?;
    table.insert((saga_id, op), bytes.as_slice())?;
    txn.open_table(BARRIER_TIMES)?
        .insert((now_ms(), saga_id, op), ())?;
    Ok(())
}
