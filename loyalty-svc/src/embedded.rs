//! The loyalty stores on the embedded redb engine.

use std::path::Path;

use microshop_storage::{
    StorageError,
    barrier::{self, ActionGate},
    decode,
    embedded::{Durable, EmbeddedDb},
    encode,
};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::{
    domain::{Account, DeductOutcome, EarnOutcome, RefundOutcome},
    store::{AccountStore, PointsLedgerStore},
};

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

const OP_DEDUCT: &str = "deduct";
const OP_REFUND: &str = "refund";
const OP_EARN: &str = "earn";

/// Loyalty on redb (`loyalty.redb` in the data directory).
#[derive(Clone, Debug)]
pub struct EmbeddedLoyalty {
    db: EmbeddedDb,
}

impl EmbeddedLoyalty {
    /// Opens or creates the store under `dir`.
    pub fn open(dir: &Path, durable: Durable) -> Result<Self, StorageError> {
        let db = EmbeddedDb::open(dir, "loyalty", durable, |txn| {
            txn.open_table(ACCOUNTS)?;
            barrier::init(txn)
        })?;
        Ok(Self { db })
    }
}

fn load_account(
    txn: &WriteTransaction,
    customer_id: &str,
) -> Result<Option<Account>, StorageError> {
    let table = txn.open_table(ACCOUNTS)?;
    let found = table.get(customer_id)?;
    found.map(|v| decode(v.value())).transpose()
}

fn save_account(txn: &WriteTransaction, account: &Account) -> Result<(), StorageError> {
    let bytes = encode(account)?;
    txn.open_table(ACCOUNTS)?
        .insert(account.customer_id.as_str(), bytes.as_slice())?;
    Ok(())
}

/// A ledger change that would overflow a total: unreachable with validated
/// inputs, reported as a failure (nothing is written) rather than a panic.
fn overflow(customer_id: &str) -> StorageError {
    StorageError::Backend(format!("the points ledger of {customer_id} would overflow"))
}

fn deduct_in(
    txn: &WriteTransaction,
    customer_id: &str,
    points: i64,
) -> Result<DeductOutcome, StorageError> {
    // Every check first: nothing is written unless the deduction applies.
    let account = match load_account(txn, customer_id)? {
        Some(account) if account.member => account,
        _ => return Ok(DeductOutcome::NotAMember),
    };
    if account.points < points {
        return Ok(DeductOutcome::InsufficientPoints {
            balance: account.points,
            requested: points,
        });
    }
    let after = account
        .with_deducted(points)
        .ok_or_else(|| overflow(customer_id))?;
    save_account(txn, &after)?;
    Ok(DeductOutcome::Deducted {
        customer_id: after.customer_id,
        points,
        balance: after.points,
    })
}

fn refund_in(txn: &WriteTransaction, saga_id: &str) -> Result<RefundOutcome, StorageError> {
    let Some(DeductOutcome::Deducted {
        customer_id,
        points,
        ..
    }) = barrier::outcome::<DeductOutcome>(txn, saga_id, OP_DEDUCT)?
    else {
        // Never deducted, or the deduction was refused: null compensation.
        return Ok(RefundOutcome::NothingDeducted);
    };
    let account = load_account(txn, &customer_id)?.ok_or_else(|| {
        StorageError::Corrupt(format!(
            "saga {saga_id} deducted from {customer_id}, who has no account"
        ))
    })?;
    let after = account
        .with_refunded(points)
        .ok_or_else(|| overflow(&customer_id))?;
    save_account(txn, &after)?;
    Ok(RefundOutcome::Refunded {
        customer_id,
        points,
    })
}

fn earn_in(
    txn: &WriteTransaction,
    customer_id: &str,
    points: i64,
) -> Result<EarnOutcome, StorageError> {
    let account = match load_account(txn, customer_id)? {
        Some(account) if account.member => account,
        other => {
            return Ok(EarnOutcome::NotAMember {
                balance: other.map_or(0, |a| a.points),
            });
        }
    };
    let after = account
        .with_earned(points)
        .ok_or_else(|| overflow(customer_id))?;
    save_account(txn, &after)?;
    Ok(EarnOutcome::Earned {
        customer_id: after.customer_id,
        points,
        balance: after.points,
    })
}

impl AccountStore for EmbeddedLoyalty {
    async fn account(&self, customer_id: String) -> Result<Option<Account>, StorageError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(ACCOUNTS)?;
                let found = table.get(customer_id.as_str())?;
                found.map(|v| decode(v.value())).transpose()
            })
            .await
    }

    async fn grant(&self, customer_id: String, points: i64) -> Result<Account, StorageError> {
        self.db
            .write(move |txn| {
                let account = load_account(txn, &customer_id)?
                    .unwrap_or_else(|| Account::guest(&customer_id));
                let after = account
                    .with_granted(points)
                    .ok_or_else(|| overflow(&customer_id))?;
                save_account(txn, &after)?;
                Ok(after)
            })
            .await
    }
}

impl PointsLedgerStore for EmbeddedLoyalty {
    async fn deduct(
        &self,
        saga_id: String,
        customer_id: String,
        points: i64,
    ) -> Result<Option<DeductOutcome>, StorageError> {
        self.db
            .write(move |txn| {
                match barrier::action_gate(txn, &saga_id, OP_DEDUCT, OP_REFUND)? {
                    ActionGate::Replay(first) => return Ok(Some(first)),
                    ActionGate::Compensated => return Ok(None),
                    ActionGate::Proceed => {}
                }
                let outcome = deduct_in(txn, &customer_id, points)?;
                barrier::record(txn, &saga_id, OP_DEDUCT, &outcome)?;
                Ok(Some(outcome))
            })
            .await
    }

    async fn refund(&self, saga_id: String) -> Result<RefundOutcome, StorageError> {
        self.db
            .write(move |txn| {
                if let Some(first) = barrier::outcome(txn, &saga_id, OP_REFUND)? {
                    return Ok(first);
                }
                let outcome = refund_in(txn, &saga_id)?;
                barrier::record(txn, &saga_id, OP_REFUND, &outcome)?;
                Ok(outcome)
            })
            .await
    }

    async fn earn(
        &self,
        saga_id: String,
        customer_id: String,
        points: i64,
    ) -> Result<EarnOutcome, StorageError> {
        self.db
            .write(move |txn| {
                // EarnPoints has no compensation: a repeat replays the first
                // outcome, whatever it was.
                if let Some(first) = barrier::outcome(txn, &saga_id, OP_EARN)? {
                    return Ok(first);
                }
                let outcome = earn_in(txn, &customer_id, points)?;
                barrier::record(txn, &saga_id, OP_EARN, &outcome)?;
                Ok(outcome)
            })
            .await
    }
}

impl microshop_storage::Ping for EmbeddedLoyalty {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}
