//! The loyalty stores on MongoDB.
//!
//! Collections: `accounts` (`_id` = customer id, the ledger as plain
//! integers) and `loyalty_barrier`. Points move only by conditional `$inc`
//! (`member: true, points >= p` for a deduction), never read-then-write, so
//! a balance cannot go negative whatever runs concurrently; each saga op is
//! one transaction with its barrier record.

use microshop_storage::{
    StorageError,
    barrier::ActionGate,
    mongo::{
        Barrier, BarrierRecord, MongoDb, TxnError, drain, int, is_duplicate_key, storage_error,
        string,
    },
};
use mongodb::{
    ClientSession, Collection,
    bson::{Document, doc},
    options::ReturnDocument,
};

use crate::{
    domain::{Account, DeductOutcome, EarnOutcome, OrderPoints, RefundOutcome},
    store::{AccountStore, PointsLedgerStore},
};

const OP_DEDUCT: &str = "deduct";
const OP_REFUND: &str = "refund";
const OP_EARN: &str = "earn";

/// Loyalty on MongoDB.
#[derive(Clone, Debug)]
pub struct MongoLoyalty {
    db: MongoDb,
    accounts: Collection<Document>,
    /// Checkout saga id → its [`OrderPoints`] (business record, kept).
    ledger: Collection<Document>,
    barrier: Barrier,
}

impl MongoLoyalty {
    /// Uses `db` (the `_id` keys are the only unique keys).
    pub async fn open(db: MongoDb) -> Result<Self, StorageError> {
        let store = Self {
            accounts: db.collection("accounts"),
            ledger: db.collection("loyalty_order_points"),
            barrier: Barrier::open(&db, "loyalty").await?,
            db,
        };
        store.ledger_from_barrier().await?;
        Ok(store)
    }

    /// Once, in a database written before the ledger existed: every
    /// deduction, refund and earning the barrier recorded goes into the
    /// ledger, so they outlive the barrier's retention.
    async fn ledger_from_barrier(&self) -> Result<(), StorageError> {
        let meta = self.db.collection("loyalty_meta");
        let flag = doc! { "_id": "ledger_from_barrier" };
        if meta
            .find_one(flag.clone())
            .await
            .map_err(storage_error)?
            .is_some()
        {
            return Ok(());
        }
        let cursor = self
            .db
            .collection("loyalty_barrier")
            .find(doc! {})
            .await
            .map_err(storage_error)?;
        for d in drain(cursor).await? {
            let record = BarrierRecord::from_document(d.clone());
            let mut p = OrderPoints::default();
            if let Some(DeductOutcome::Deducted {
                customer_id,
                points,
                ..
            }) = record.outcome(OP_DEDUCT)?
            {
                p.customer_id = customer_id;
                p.deducted = points;
            }
            if let Some(RefundOutcome::Refunded { points, .. }) = record.outcome(OP_REFUND)? {
                p.refunded = points;
            }
            if let Some(EarnOutcome::Earned {
                customer_id,
                points,
                ..
            }) = record.outcome(OP_EARN)?
            {
                p.customer_id = customer_id;
                p.earned = Some(points);
            }
            if p == OrderPoints::default() {
                continue;
            }
            let id = string(&d, "_id")?;
            self.ledger
                .update_one(doc! { "_id": &id }, doc! { "$setOnInsert": points_doc(&p) })
                .upsert(true)
                .await
                .map_err(storage_error)?;
        }
        meta.insert_one(flag).await.map_err(storage_error)?;
        Ok(())
    }

    async fn load_points(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
    ) -> Result<Option<OrderPoints>, TxnError> {
        let found = self
            .ledger
            .find_one(doc! { "_id": saga_id })
            .session(s)
            .await?;
        Ok(found.as_ref().map(points_from).transpose()?)
    }

    async fn save_points(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
        p: &OrderPoints,
    ) -> Result<(), TxnError> {
        self.ledger
            .update_one(doc! { "_id": saga_id }, doc! { "$set": points_doc(p) })
            .upsert(true)
            .session(s)
            .await?;
        Ok(())
    }

    /// Applies `inc` to the account matching `filter` in the transaction and
    /// returns it after, or `None` when no account matches.
    async fn apply(
        &self,
        s: &mut ClientSession,
        filter: Document,
        inc: Document,
    ) -> Result<Option<Account>, TxnError> {
        let after = self
            .accounts
            .find_one_and_update(filter, doc! { "$inc": inc })
            .return_document(ReturnDocument::After)
            .session(s)
            .await?;
        Ok(after.as_ref().map(account_from).transpose()?)
    }

    async fn load(&self, s: &mut ClientSession, id: &str) -> Result<Option<Account>, TxnError> {
        let found = self
            .accounts
            .find_one(doc! { "_id": id })
            .session(s)
            .await?;
        Ok(found.as_ref().map(account_from).transpose()?)
    }
}

impl microshop_storage::Ping for MongoLoyalty {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}

fn points_doc(p: &OrderPoints) -> Document {
    let mut d = doc! {
        "customer_id": &p.customer_id,
        "deducted": p.deducted,
        "refunded": p.refunded,
    };
    if let Some(earned) = p.earned {
        d.insert("earned", earned);
    }
    d
}

fn points_from(doc: &Document) -> Result<OrderPoints, StorageError> {
    Ok(OrderPoints {
        customer_id: string(doc, "customer_id")?,
        deducted: int(doc, "deducted")?,
        refunded: int(doc, "refunded")?,
        earned: doc
            .contains_key("earned")
            .then(|| int(doc, "earned"))
            .transpose()?,
    })
}

fn account_from(doc: &Document) -> Result<Account, StorageError> {
    Ok(Account {
        customer_id: string(doc, "_id")?,
        points: int(doc, "points")?,
        member: doc.get_bool("member").unwrap_or(false),
        granted: int(doc, "granted")?,
        earned: int(doc, "earned")?,
        deducted: int(doc, "deducted")?,
        refunded: int(doc, "refunded")?,
    })
}

impl AccountStore for MongoLoyalty {
    async fn account(&self, customer_id: String) -> Result<Option<Account>, StorageError> {
        let found = self
            .accounts
            .find_one(doc! { "_id": &customer_id })
            .await
            .map_err(storage_error)?;
        found.as_ref().map(account_from).transpose()
    }

    async fn grant(&self, customer_id: String, points: i64) -> Result<Account, StorageError> {
        // One upserting update: creates the account with zeroed counters if
        // needed, then adds the grant, atomically. Two first grants racing
        // both try to insert; the loser's duplicate key means the account
        // exists now, and its second try updates it.
        let mut tries = 0;
        loop {
            let result = self
                .accounts
                .find_one_and_update(
                    doc! { "_id": &customer_id },
                    doc! {
                        "$set": { "member": true },
                        "$inc": {
                            "points": points, "granted": points,
                            "earned": 0_i64, "deducted": 0_i64, "refunded": 0_i64,
                        },
                    },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match result {
                // Some servers answer "no document" to the loser instead.
                Err(e) if is_duplicate_key(&e) && tries < 3 => tries += 1,
                Ok(None) if tries < 3 => tries += 1,
                Err(e) => return Err(storage_error(e)),
                Ok(None) => {
                    return Err(StorageError::Backend(
                        "the grant upsert returned nothing".into(),
                    ));
                }
                Ok(Some(after)) => return account_from(&after),
            }
        }
    }
}

impl PointsLedgerStore for MongoLoyalty {
    async fn deduct(
        &self,
        saga_id: String,
        customer_id: String,
        points: i64,
    ) -> Result<Option<DeductOutcome>, StorageError> {
        self.db
            .transaction(|s| {
                let (this, saga_id, customer_id) =
                    (self.clone(), saga_id.clone(), customer_id.clone());
                Box::pin(async move {
                    let barrier = this.barrier.load(s, &saga_id).await?;
                    match barrier.action_gate(OP_DEDUCT, OP_REFUND)? {
                        ActionGate::Replay(first) => return Ok(Some(first)),
                        ActionGate::Compensated => return Ok(None),
                        ActionGate::Proceed => {}
                    }
                    let filter =
                        doc! { "_id": &customer_id, "member": true, "points": { "$gte": points } };
                    let inc = doc! { "points": -points, "deducted": points };
                    let outcome = match this.apply(s, filter, inc).await? {
                        Some(after) => {
                            this.save_points(
                                s,
                                &saga_id,
                                &OrderPoints {
                                    customer_id: after.customer_id.clone(),
                                    deducted: points,
                                    ..OrderPoints::default()
                                },
                            )
                            .await?;
                            DeductOutcome::Deducted {
                                customer_id: after.customer_id,
                                points,
                                balance: after.points,
                            }
                        }
                        None => match this.load(s, &customer_id).await? {
                            Some(account) if account.member => DeductOutcome::InsufficientPoints {
                                balance: account.points,
                                requested: points,
                            },
                            _ => DeductOutcome::NotAMember,
                        },
                    };
                    this.barrier
                        .record(s, &saga_id, OP_DEDUCT, &outcome)
                        .await?;
                    Ok(Some(outcome))
                })
            })
            .await
    }

    async fn refund(&self, saga_id: String) -> Result<RefundOutcome, StorageError> {
        self.db
            .transaction(|s| {
                let (this, saga_id) = (self.clone(), saga_id.clone());
                Box::pin(async move {
                    let barrier = this.barrier.load(s, &saga_id).await?;
                    if let Some(first) = barrier.outcome(OP_REFUND)? {
                        return Ok(first);
                    }
                    let outcome = match this.load_points(s, &saga_id).await? {
                        // Refunded before (its barrier entry expired since).
                        Some(p) if p.deducted > 0 && p.refunded > 0 => RefundOutcome::Refunded {
                            customer_id: p.customer_id,
                            points: p.refunded,
                        },
                        Some(mut p) if p.deducted > 0 => {
                            let inc = doc! { "points": p.deducted, "refunded": p.deducted };
                            if this
                                .apply(s, doc! { "_id": &p.customer_id }, inc)
                                .await?
                                .is_none()
                            {
                                return Err(StorageError::Corrupt(format!(
                                    "saga {saga_id} deducted from {}, who has no account",
                                    p.customer_id
                                ))
                                .into());
                            }
                            p.refunded = p.deducted;
                            this.save_points(s, &saga_id, &p).await?;
                            RefundOutcome::Refunded {
                                customer_id: p.customer_id,
                                points: p.refunded,
                            }
                        }
                        // Never deducted, or refused: null compensation.
                        _ => RefundOutcome::NothingDeducted,
                    };
                    this.barrier
                        .record(s, &saga_id, OP_REFUND, &outcome)
                        .await?;
                    Ok(outcome)
                })
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
            .transaction(|s| {
                let (this, saga_id, customer_id) =
                    (self.clone(), saga_id.clone(), customer_id.clone());
                Box::pin(async move {
                    let barrier = this.barrier.load(s, &saga_id).await?;
                    // No compensation: a repeat replays the first outcome.
                    if let Some(first) = barrier.outcome(OP_EARN)? {
                        return Ok(first);
                    }
                    let mut p =
                        this.load_points(s, &saga_id)
                            .await?
                            .unwrap_or_else(|| OrderPoints {
                                customer_id: customer_id.clone(),
                                ..OrderPoints::default()
                            });
                    if let Some(earned) = p.earned {
                        // Earned before (its barrier entry expired since).
                        let balance = this.load(s, &customer_id).await?.map_or(0, |a| a.points);
                        return Ok(EarnOutcome::Earned {
                            customer_id,
                            points: earned,
                            balance,
                        });
                    }
                    let filter = doc! { "_id": &customer_id, "member": true };
                    let inc = doc! { "points": points, "earned": points };
                    let outcome = match this.apply(s, filter, inc).await? {
                        Some(after) => {
                            p.earned = Some(points);
                            this.save_points(s, &saga_id, &p).await?;
                            EarnOutcome::Earned {
                                customer_id: after.customer_id,
                                points,
                                balance: after.points,
                            }
                        }
                        None => EarnOutcome::NotAMember {
                            balance: this.load(s, &customer_id).await?.map_or(0, |a| a.points),
                        },
                    };
                    this.barrier.record(s, &saga_id, OP_EARN, &outcome).await?;
                    Ok(outcome)
                })
            })
            .await
    }
}

impl microshop_storage::BarrierPurge for MongoLoyalty {
    async fn purge_barrier(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        self.barrier.purge(before_ms, limit).await
    }
}
