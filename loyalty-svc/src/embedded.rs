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
    domain::{Account, DeductOutcome, EarnOutcome, OrderPoints, RefundOutcome},
    store::{AccountStore, PointsLedgerStore},
};

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// Checkout saga id → its [`OrderPoints`] (business record, kept).
const LEDGER: TableDefinition<&str, &[u8]> = TableDefinition::new("order_points");
/// Flags of this store's upgrades.
const META: TableDefinition<&str, u64> = TableDefinition::new("loyalty_meta");
/// Set once the ledger holds what the barrier recorded before it existed.
const LEDGER_FROM_BARRIER: &str = "ledger_from_barrier";

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
            txn.open_table(LEDGER)?;
            barrier::init(txn)?;
            ledger_from_barrier(txn)
        })?;
        Ok(Self { db })
    }
}

fn load_points(txn: &WriteTransaction, saga_id: &str) -> Result<Option<OrderPoints>, StorageError> {
    let table = txn.open_table(LEDGER)?;
    let found = table.get(saga_id)?;
    found.map(|v| decode(v.value())).transpose()
}

fn save_points(txn: &WriteTransaction, saga_id: &str, p: &OrderPoints) -> Result<(), StorageError> {
    let bytes = encode(p)?;
    txn.open_table(LEDGER)?.insert(saga_id, bytes.as_slice())?;
    Ok(())
}

/// Once, in a store written before the ledger existed: every deduction,
/// refund and earning the barrier recorded goes into the ledger, so they
/// outlive the barrier's retention.
fn ledger_from_barrier(txn: &WriteTransaction) -> Result<(), StorageError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(LEDGER_FROM_BARRIER)?.is_some() {
        return Ok(());
    }
    let mut ledger: std::collections::BTreeMap<String, OrderPoints> = Default::default();
    {
        let table = txn.open_table(barrier::BARRIER)?;
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (saga_id, op) = key.value();
            match op {
                OP_DEDUCT => {
                    if let DeductOutcome::Deducted {
                        customer_id,
                        points,
                        ..
                    } = decode(value.value())?
                    {
                        let p = ledger.entry(saga_id.to_owned()).or_default();
                        p.customer_id = customer_id;
                        p.deducted = points;
                    }
                }
                OP_REFUND => {
                    if let RefundOutcome::Refunded { points, .. } = decode(value.value())? {
                        ledger.entry(saga_id.to_owned()).or_default().refunded = points;
                    }
                }
                OP_EARN => {
                    if let EarnOutcome::Earned {
                        customer_id,
                        points,
                        ..
                    } = decode(value.value())?
                    {
                        let p = ledger.entry(saga_id.to_owned()).or_default();
                        p.customer_id = customer_id;
                        p.earned = Some(points);
                    }
                }
                _ => {}
            }
        }
    }
    for (saga_id, p) in &ledger {
        if load_points(txn, saga_id)?.is_none() {
            save_points(txn, saga_id, p)?;
        }
    }
    meta.insert(LEDGER_FROM_BARRIER, 1)?;
    Ok(())
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
    saga_id: &str,
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
    save_points(
        txn,
        saga_id,
        &OrderPoints {
            customer_id: customer_id.to_owned(),
            deducted: points,
            ..OrderPoints::default()
        },
    )?;
    Ok(DeductOutcome::Deducted {
        customer_id: after.customer_id,
        points,
        balance: after.points,
    })
}

fn refund_in(txn: &WriteTransaction, saga_id: &str) -> Result<RefundOutcome, StorageError> {
    let Some(mut p) = load_points(txn, saga_id)? else {
        // Never deducted, or the deduction was refused: null compensation.
        return Ok(RefundOutcome::NothingDeducted);
    };
    if p.deducted == 0 {
        return Ok(RefundOutcome::NothingDeducted);
    }
    if p.refunded > 0 {
        // Refunded before (its barrier entry expired since): no second one.
        return Ok(RefundOutcome::Refunded {
            customer_id: p.customer_id,
            points: p.refunded,
        });
    }
    let account = load_account(txn, &p.customer_id)?.ok_or_else(|| {
        StorageError::Corrupt(format!(
            "saga {saga_id} deducted from {}, who has no account",
            p.customer_id
        ))
    })?;
    let after = account
        .with_refunded(p.deducted)
        .ok_or_else(|| overflow(&p.customer_id))?;
    save_account(txn, &after)?;
    p.refunded = p.deducted;
    save_points(txn, saga_id, &p)?;
    Ok(RefundOutcome::Refunded {
        customer_id: p.customer_id,
        points: p.refunded,
    })
}

fn earn_in(
    txn: &WriteTransaction,
    saga_id: &str,
    customer_id: &str,
    points: i64,
) -> Result<EarnOutcome, StorageError> {
    let mut p = load_points(txn, saga_id)?.unwrap_or_else(|| OrderPoints {
        customer_id: customer_id.to_owned(),
        ..OrderPoints::default()
    });
    let account = match load_account(txn, customer_id)? {
        Some(account) if account.member => account,
        other => {
            return Ok(EarnOutcome::NotAMember {
                balance: other.map_or(0, |a| a.points),
            });
        }
    };
    if let Some(earned) = p.earned {
        // Earned before (its barrier entry expired since): no second time.
        return Ok(EarnOutcome::Earned {
            customer_id: account.customer_id,
            points: earned,
            balance: account.points,
        });
    }
    let after = account
        .with_earned(points)
        .ok_or_else(|| overflow(customer_id))?;
    save_account(txn, &after)?;
    p.earned = Some(points);
    save_points(txn, saga_id, &p)?;
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
                let outcome = deduct_in(txn, &saga_id, &customer_id, points)?;
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
                let outcome = earn_in(txn, &saga_id, &customer_id, points)?;
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

impl microshop_storage::BarrierPurge for EmbeddedLoyalty {
    async fn purge_barrier(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        self.db
            .write(move |txn| barrier::purge(txn, before_ms, limit))
            .await
    }
}
