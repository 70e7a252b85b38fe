//! The saga log on MongoDB, shared by several orchestrators.
//!
//! `sagas` holds one document per saga: the record as a blob, and beside it
//! what indexes and conditional updates need: `key` (unique: one idempotency
//! key, one saga, however many orchestrators race), `seq` (newest first),
//! `state`, `unfinished`, and the lease (`lease_owner`, `lease_until`,
//! `epoch`). `payment_deadlines` holds `{_id: order_id, due_ms}`.
//!
//! Leases: the orchestrator that begins a saga holds its lease; any other
//! may claim it once `lease_until` has passed, which bumps `epoch`. Every
//! save is conditional on the epoch the saver claimed under and renews the
//! lease; a terminal save lets go of it. A save that finds another epoch is
//! refused with [`StorageError::Fenced`]: its saga has a new owner.
//!
//! Payment and cancellation sagas of one order take turns (a cancellation
//! landing between a payment's mark-paid and commit-stock would strand the
//! payment): their documents carry `turn_order`, and claiming one is a
//! transaction that refuses while another unfinished saga of that order is
//! leased by another live orchestrator. Every such claim also writes the
//! order's `order_turns` document, so two claims racing for one order
//! conflict and run one after the other. Within one orchestrator the
//! engine's per-order lock orders them.
//!
//! `seq` comes from a counter document (`orchestrator_counters`), taken
//! by one atomic `$inc` before the insert: unique across orchestrators, so
//! paging by it never skips a saga (a key begun twice leaves a gap).

use std::time::Duration;

use microshop_storage::{
    StorageError,
    mongo::{
        MongoDb, TxnError, blob, drain, index, int, is_duplicate_key, page, storage_error, string,
        unblob, unique_index,
    },
};
use mongodb::{
    ClientSession, Collection,
    bson::{Document, doc},
    options::ReturnDocument,
};

use crate::{
    log::{Begin, PaymentDeadline, SagaLog, SagaPage},
    model::{SagaRecord, SagaState, now_ms},
};

/// The saga log on MongoDB.
#[derive(Clone, Debug)]
pub struct MongoSagaLog {
    db: MongoDb,
    sagas: Collection<Document>,
    deadlines: Collection<Document>,
    turns: Collection<Document>,
    owner: String,
    lease_ms: i64,
}

impl MongoSagaLog {
    /// Uses `db` as orchestrator `owner`, holding leases for `lease`;
    /// creates the indexes if missing.
    pub async fn open(db: MongoDb, owner: String, lease: Duration) -> Result<Self, StorageError> {
        db.ensure_indexes(
            "sagas",
            vec![
                unique_index(doc! { "key": 1 }, "idempotency_key_unique"),
                index(doc! { "seq": -1 }, "newest_first"),
                index(doc! { "state": 1, "seq": -1 }, "by_state_newest_first"),
                index(doc! { "unfinished": 1, "seq": 1 }, "unfinished"),
                index(doc! { "turn_order": 1, "unfinished": 1 }, "order_turns"),
            ],
        )
        .await?;
        db.ensure_indexes(
            "payment_deadlines",
            vec![index(doc! { "due_ms": 1 }, "due_first")],
        )
        .await?;
        Ok(Self {
            sagas: db.collection("sagas"),
            deadlines: db.collection("payment_deadlines"),
            turns: db.collection("order_turns"),
            db,
            owner,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// The update that writes `record` and renews (or, once it has ended,
    /// lets go of) this orchestrator's lease.
    fn record_update(&self, record: &SagaRecord) -> Result<Document, StorageError> {
        let lease_until = if record.state.is_terminal() {
            0
        } else {
            now_ms().saturating_add(self.lease_ms)
        };
        Ok(doc! { "$set": {
            "state": i32::from(record.state.index()),
            "unfinished": !record.state.is_terminal(),
            "data": blob(record)?,
            "lease_owner": &self.owner,
            "lease_until": lease_until,
        }})
    }

    async fn apply_deadline(
        &self,
        s: &mut ClientSession,
        deadline: &PaymentDeadline,
    ) -> Result<(), TxnError> {
        match deadline {
            PaymentDeadline::Keep => {}
            PaymentDeadline::Set { order_id, due_ms } => {
                self.deadlines
                    .update_one(
                        doc! { "_id": order_id },
                        doc! { "$set": { "due_ms": *due_ms } },
                    )
                    .upsert(true)
                    .session(s)
                    .await?;
            }
            PaymentDeadline::Clear { order_id } => {
                self.deadlines
                    .delete_one(doc! { "_id": order_id })
                    .session(s)
                    .await?;
            }
        }
        Ok(())
    }
}

impl MongoSagaLog {
    /// The conditional update that takes an unfinished saga's lease when it
    /// is this orchestrator's or has expired, bumping its epoch.
    fn claim_update(&self, saga_id: &str) -> mongodb::action::FindOneAndUpdate<'_, Document> {
        let now = now_ms();
        self.sagas
            .find_one_and_update(
                doc! {
                    "_id": saga_id,
                    "unfinished": true,
                    "$or": [ { "lease_owner": &self.owner }, { "lease_until": { "$lt": now } } ],
                },
                doc! {
                    "$set": { "lease_owner": &self.owner, "lease_until": now.saturating_add(self.lease_ms) },
                    "$inc": { "epoch": 1_i64 },
                },
            )
            .return_document(ReturnDocument::After)
    }
}

impl microshop_storage::Ping for MongoSagaLog {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}

/// The record of a saga document, with the epoch it is stored under.
fn record_from(doc: &Document) -> Result<SagaRecord, StorageError> {
    let mut record: SagaRecord = unblob(doc, "data")?;
    record.lease_epoch = u64::try_from(int(doc, "epoch")?).unwrap_or(0);
    Ok(record)
}

fn fenced(saga_id: &str) -> StorageError {
    StorageError::Fenced(format!(
        "saga {saga_id} was taken over by another orchestrator"
    ))
}

impl SagaLog for MongoSagaLog {
    async fn begin(&self, mut record: SagaRecord) -> Result<Begin, StorageError> {
        record.seq = self
            .db
            .next_seq("orchestrator_counters", "saga_seq")
            .await?;
        record.lease_epoch = 1;
        let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
        let mut document = doc! {
            "_id": &record.saga_id,
            "key": &record.idempotency_key,
            "seq": seq,
            "state": i32::from(record.state.index()),
            "unfinished": !record.state.is_terminal(),
            "data": blob(&record)?,
            "lease_owner": &self.owner,
            "lease_until": now_ms().saturating_add(self.lease_ms),
            "epoch": 1_i64,
        };
        if let Some(order_id) = record.acted_order() {
            document.insert("turn_order", order_id);
        }
        match self.sagas.insert_one(document).await {
            Ok(_) => Ok(Begin::Created(record)),
            Err(e) if is_duplicate_key(&e) => {
                let existing = self.get_by_key(record.idempotency_key.clone()).await?;
                existing.map(Begin::Existing).ok_or_else(|| {
                    StorageError::Corrupt(format!(
                        "idempotency key {} is taken by no saga",
                        record.idempotency_key
                    ))
                })
            }
            Err(e) => Err(storage_error(e)),
        }
    }

    async fn save(
        &self,
        record: SagaRecord,
        deadline: PaymentDeadline,
    ) -> Result<(), StorageError> {
        let filter = doc! {
            "_id": &record.saga_id,
            "epoch": i64::try_from(record.lease_epoch).unwrap_or(i64::MAX),
        };
        let update = self.record_update(&record)?;
        if deadline == PaymentDeadline::Keep {
            let done = self
                .sagas
                .update_one(filter, update)
                .await
                .map_err(storage_error)?;
            return if done.matched_count == 1 {
                Ok(())
            } else {
                Err(fenced(&record.saga_id))
            };
        }
        self.db
            .transaction(|s| {
                let (this, filter, update, deadline, id) = (
                    self.clone(),
                    filter.clone(),
                    update.clone(),
                    deadline.clone(),
                    record.saga_id.clone(),
                );
                Box::pin(async move {
                    let done = this
                        .sagas
                        .update_one(filter, update)
                        .session(&mut *s)
                        .await?;
                    if done.matched_count != 1 {
                        return Err(fenced(&id).into());
                    }
                    this.apply_deadline(s, &deadline).await
                })
            })
            .await
    }

    async fn claim(&self, saga_id: String) -> Result<Option<SagaRecord>, StorageError> {
        let found = self
            .sagas
            .find_one(doc! { "_id": &saga_id })
            .projection(doc! { "turn_order": 1 })
            .await
            .map_err(storage_error)?;
        let Some(found) = found else {
            return Ok(None);
        };
        let Ok(order_id) = found.get_str("turn_order").map(str::to_owned) else {
            let claimed = self.claim_update(&saga_id).await.map_err(storage_error)?;
            return claimed.as_ref().map(record_from).transpose();
        };
        self.db
            .transaction(|s| {
                let (this, saga_id, order_id) = (self.clone(), saga_id.clone(), order_id.clone());
                Box::pin(async move {
                    this.turns
                        .update_one(
                            doc! { "_id": &order_id },
                            doc! { "$inc": { "claims": 1_i64 } },
                        )
                        .upsert(true)
                        .session(&mut *s)
                        .await?;
                    let busy = this
                        .sagas
                        .find_one(doc! {
                            "turn_order": &order_id,
                            "unfinished": true,
                            "_id": { "$ne": &saga_id },
                            "lease_owner": { "$ne": &this.owner },
                            "lease_until": { "$gte": now_ms() },
                        })
                        .projection(doc! { "_id": 1 })
                        .session(&mut *s)
                        .await?;
                    if busy.is_some() {
                        return Ok(None);
                    }
                    let claimed = this.claim_update(&saga_id).session(s).await?;
                    Ok(claimed.as_ref().map(record_from).transpose()?)
                })
            })
            .await
    }

    async fn get(&self, saga_id: String) -> Result<Option<SagaRecord>, StorageError> {
        let found = self
            .sagas
            .find_one(doc! { "_id": &saga_id })
            .await
            .map_err(storage_error)?;
        found.as_ref().map(record_from).transpose()
    }

    async fn get_by_key(&self, key: String) -> Result<Option<SagaRecord>, StorageError> {
        let found = self
            .sagas
            .find_one(doc! { "key": &key })
            .await
            .map_err(storage_error)?;
        found.as_ref().map(record_from).transpose()
    }

    async fn list(
        &self,
        state: Option<SagaState>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<SagaPage, StorageError> {
        let mut filter = Document::new();
        if let Some(state) = state {
            filter.insert("state", i32::from(state.index()));
        }
        if let Some(before) = before {
            filter.insert(
                "seq",
                doc! { "$lt": i64::try_from(before).unwrap_or(i64::MAX) },
            );
        }
        let cursor = self
            .sagas
            .find(filter)
            .sort(doc! { "seq": -1 })
            .limit(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX))
            .await
            .map_err(storage_error)?;
        let (docs, next) = page(drain(cursor).await?, limit)?;
        let sagas = docs.iter().map(record_from).collect::<Result<_, _>>()?;
        Ok(SagaPage { sagas, next })
    }

    async fn unfinished(&self) -> Result<Vec<String>, StorageError> {
        let now = now_ms();
        let cursor = self
            .sagas
            .find(doc! {
                "unfinished": true,
                "$or": [ { "lease_owner": &self.owner }, { "lease_until": { "$lt": now } } ],
            })
            .projection(doc! { "_id": 1 })
            .sort(doc! { "seq": 1 })
            .await
            .map_err(storage_error)?;
        drain(cursor)
            .await?
            .iter()
            .map(|d| string(d, "_id"))
            .collect()
    }

    async fn due_payments(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StorageError> {
        let cursor = self
            .deadlines
            .find(doc! { "due_ms": { "$lte": now_ms } })
            .sort(doc! { "due_ms": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(storage_error)?;
        drain(cursor)
            .await?
            .iter()
            .map(|d| string(d, "_id"))
            .collect()
    }
}
