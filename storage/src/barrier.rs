//! The participant barrier (`docs/architecture.md`) on the embedded store.
//!
//! Every mutating saga RPC records `(saga_id, op)` with its outcome in the
//! same write job as its business effect. From those records:
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
//!
//! Tables 240–242 of a participant's store are the barrier's.

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    StorageError, decode,
    embedded::{Table, Txn},
    encode,
};

/// `(saga_id, op)` → the op's encoded outcome.
pub const BARRIER: Table = Table::new(240, "barrier");

/// `(recorded at (Unix ms), saga_id, op)` of every barrier entry, oldest
/// first: what [`purge`] walks.
const BARRIER_TIMES: Table = Table::new(241, "barrier_times");

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn entry_key(saga_id: &str, op: &str) -> Vec<u8> {
    BARRIER.key().str(saga_id).str(op).done()
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

/// Decides what `action` of `saga_id` must do, given its `compensation` op.
pub fn action_gate<T: DeserializeOwned>(
    txn: &Txn,
    saga_id: &str,
    action: &str,
    compensation: &str,
) -> Result<ActionGate<T>, StorageError> {
    if let Some(first) = txn.get(&entry_key(saga_id, action))? {
        return Ok(ActionGate::Replay(decode(&first)?));
    }
    if txn.get(&entry_key(saga_id, compensation))?.is_some() {
        return Ok(ActionGate::Compensated);
    }
    Ok(ActionGate::Proceed)
}

/// The recorded outcome of `op` for `saga_id`, if it ran.
pub fn outcome<T: DeserializeOwned>(
    txn: &Txn,
    saga_id: &str,
    op: &str,
) -> Result<Option<T>, StorageError> {
    txn.get(&entry_key(saga_id, op))?
        .map(|v| decode(&v))
        .transpose()
}

/// Records the outcome of `op` for `saga_id`.
pub fn record<T: Serialize>(
    txn: &mut Txn,
    saga_id: &str,
    op: &str,
    outcome: &T,
) -> Result<(), StorageError> {
    txn.put(entry_key(saga_id, op), encode(outcome)?);
    txn.put(
        BARRIER_TIMES
            .key()
            .i64(now_ms())
            .str(saga_id)
            .str(op)
            .done(),
        Vec::new(),
    );
    Ok(())
}

/// Every barrier entry: `(saga_id, op, outcome bytes)`, for store upgrades.
pub fn entries(txn: &Txn) -> Result<Vec<(String, String, Vec<u8>)>, StorageError> {
    txn.scan_committed(BARRIER.all(), usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            let mut r = BARRIER.read(&k)?;
            Ok((r.str()?, r.str()?, v.to_vec()))
        })
        .collect()
}

/// Removes up to `limit` barrier entries recorded before `before_ms`;
/// returns how many.
pub fn purge(txn: &mut Txn, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
    let old = txn.scan_committed(
        BARRIER_TIMES.all().start..BARRIER_TIMES.key().i64(before_ms).done(),
        limit,
    )?;
    for (key, _) in &old {
        let mut r = BARRIER_TIMES.read(key)?;
        let _at = r.i64()?;
        let (saga_id, op) = (r.str()?, r.str()?);
        txn.remove(entry_key(&saga_id, &op));
        txn.remove(key.to_vec());
    }
    Ok(u64::try_from(old.len()).unwrap_or(u64::MAX))
}
