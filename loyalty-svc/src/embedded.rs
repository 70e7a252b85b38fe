//! The loyalty stores on the embedded engine (`loyalty.fjall`).
//!
//! Tables: accounts by customer, the points ledger by checkout saga (what
//! it deducted, refunded and earned: the business record a refund reads and
//! a second earn is refused by, kept), and the barrier. Every write is a
//! participant's answer, so every write is durable before it is answered.

use std::path::Path;

use microshop_storage::{
    StorageError,
    barrier::{self, ActionGate},
    decode,
    embedded::{Durable, EmbeddedDb, Sync, Table, Txn},
    encode,
};

use crate::{
    domain::{Account, DeductOutcome, EarnOutcome, OrderPoints, RefundOutcome},
    store::{AccountStore, PointsLedgerStore},
};

/// Customer id → account.
pub const ACCOUNTS: Table = Table::new(1, "accounts");
/// Checkout saga id → its [`OrderPoints`] (business record, kept).
pub const LEDGER: Table = Table::new(2, "order_points");

/// Barrier op names.
pub const OP_DEDUCT: &str = "deduct";
/// Refund, the compensation of a deduction.
pub const OP_REFUND: &str = "refund";
/// Earning for a paid order.
pub const OP_EARN: &str = "earn";

/// Loyalty on the embedded engine (`loyalty.fjall` in the data directory).
#[derive(Clone, Debug)]
pub struct EmbeddedLoyalty {
    db: EmbeddedDb,
}

impl EmbeddedLoyalty {
    /// Opens or creates the store under `dir`.
    pub fn open(dir: &Path, durable: Durable) -> Result<Self, StorageError> {
        let db = EmbeddedDb::open(dir, "loyalty", durable, |_| Ok(()))?;
        Ok(Self { db })
    }
}

fn load_points(txn: &Txn, saga_id: &str) -> Result<Option<OrderPoints>, StorageError> {
    txn.get(&LEDGER.str_key(saga_id))?
        .map(|v| decode(&v))
        .transpose()
}

fn save_points(txn: &mut Txn, saga_id: &str, p: &OrderPoints) -> Result<(), StorageError> {
    txn.put(LEDGER.str_key(saga_id), encode(p)?);
    Ok(())
}

fn load_account(txn: &Txn, customer_id: &str) -> Result<Option<Account>, StorageError> {
    txn.get(&ACCOUNTS.str_key(customer_id))?
        .map(|v| decode(&v))
        .transpose()
}

fn save_account(txn: &mut Txn, account: &Account) -> Result<(), StorageError> {
    txn.put(ACCOUNTS.str_key(&account.customer_id), encode(account)?);
    Ok(())
}

/// A ledger change that would overflow a total: unreachable with validated
/// inputs, reported as a failure (nothing is written) rather than a panic.
fn overflow(customer_id: &str) -> StorageError {
    StorageError::Backend(format!("the points ledger of {customer_id} would overflow"))
}

fn deduct_in(
    txn: &mut Txn,
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

fn refund_in(txn: &mut Txn, saga_id: &str) -> Result<RefundOutcome, StorageError> {
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
    txn: &mut Txn,
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
            .read(move |view| {
                view.get(&ACCOUNTS.str_key(&customer_id))?
                    .map(|v| decode(&v))
                    .transpose()
            })
            .await
    }

    async fn grant(&self, customer_id: String, points: i64) -> Result<Account, StorageError> {
        self.db
            .write(Sync::Durable, move |txn| {
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
            .write(Sync::Durable, move |txn| {
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
            .write(Sync::Durable, move |txn| {
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
            .write(Sync::Durable, move |txn| {
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
            // Lost in a power cut, it is simply purged again.
            .write(Sync::Buffered, move |txn| {
                barrier::purge(txn, before_ms, limit)
            })
            .await
    }
}
