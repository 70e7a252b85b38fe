//! The participant barrier (ARCHITECTURE §6) on the embedded store.
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

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};

use crate::{StorageError, decode, encode};

/// `(saga_id, op)` → the op's encoded outcome.
pub const BARRIER: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("barrier");

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

/// Creates the barrier table (call from the store's init).
pub fn init(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(BARRIER)?;
    Ok(())
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
    Ok(())
}
