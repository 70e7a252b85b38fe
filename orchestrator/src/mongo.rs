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
//! Lease times are the database server's clock, never an orchestrator's:
//! `lease_until` is written as `$$NOW + lease` (an update pipeline) and
//! compared with `$$NOW` (`$expr`), so one orchestrator's wrong wall clock
//! cannot make another's live leases look expired (issue 17: one running
//! 30 s ahead took over every saga its live peers were driving) or its own
//! last longer. Every value a pipeline sets is a `$literal`, so a string
//! that starts with `$` is stored as it is, not read as a field path.
//!
//! Payment and cancellation sagas of one order take turns (a cancellation
//! landing between a payment's mark-paid and commit-stock would strand the
//! payment): their documents carry `turn_order`, and claiming one is a
//! transaction that refuses while another unfinished saga of that order is
//! leased by another live orchestrator. Every such claim also writes the
//! order's `order_turns` document, so two claims racing for one order
//! conflict and run one after the other. Within one orchestrator the
//! engine's per-order lock orders them. That claim is the one transaction
//! left on a saga's document (a save and its payment deadline are two
//! ordered writes, see `save_durable`): an orchestrator killed between its
//! claim and its commit holds that saga until the server reaps the
//! transaction (mongod: 60 s).
//!
//! `seq` comes from a counter document (`orchestrator_counters`), taken
//! by one atomic `$inc` before the insert: unique across orchestrators, so
//! paging by it never skips a saga (a key begun twice leaves a gap).

use std::time::Duration;

use microshop_storage::{
    StorageError,
    embedded::{Sync, Synced},
    mongo::{
        MongoDb, blob, drain, index, int, is_duplicate_key, page, storage_error, string, unblob,
        unique_index,
    },
};
use mongodb::{
    Collection,
    bson::{Document, doc},
    options::ReturnDocument,
};

use crate::{
    failpoint::Failpoint,
    log::{Begin, PaymentDeadline, SagaFilter, SagaLog, SagaPage},
    model::{SagaRecord, SagaState},
};

/// The database server's clock, in milliseconds since the epoch.
fn server_now() -> Document {
    doc! { "$toLong": "$$NOW" }
}

/// `$$NOW + ms`: a lease end on the server's clock.
fn server_now_plus(ms: i64) -> Document {
    doc! { "$add": [server_now(), ms] }
}

/// A lease that has run out, by the server's clock (a query clause).
fn lease_expired() -> Document {
    doc! { "$expr": { "$lt": ["$lease_until", server_now()] } }
}

/// A lease still running, by the server's clock (an `$expr`).
fn lease_running() -> Document {
    doc! { "$gte": ["$lease_until", server_now()] }
}

/// `fields` as the `$set` of an update pipeline: every value a literal.
fn literals(fields: Document) -> Document {
    fields
        .into_iter()
        .map(|(k, v)| (k, mongodb::bson::Bson::Document(doc! { "$literal": v })))
        .collect()
}

/// The saga log on MongoDB.
#[derive(Clone, Debug)]
pub struct MongoSagaLog {
    db: MongoDb,
    sagas: Collection<Document>,
    deadlines: Collection<Document>,
    turns: Collection<Document>,
    owner: String,
    lease_ms: i64,
    /// `save:deadline`, for the takeover test (see [`Failpoint`]).
    failpoint: Option<Failpoint>,
}

impl MongoSagaLog {
    /// Uses `db` as orchestrator `owner`, holding leases for `lease`;
    /// creates the indexes if missing.
    pub async fn open(db: MongoDb, owner: String, lease: Duration) -> Result<Self, StorageError> {
        // One (customer, key) → one saga: `key_scope` is a checkout's
        // customer and empty for order-keyed sagas (see
        // `SagaRecord::key_scope`). The index replaces the global
        // `idempotency_key_unique {key: 1}` of earlier versions: created
        // first, then the older documents get their scope, then the old
        // index goes, so uniqueness never lapses (see `upgrade_keys`).
        db.ensure_indexes(
            "sagas",
            vec![
                unique_index(doc! { "key_scope": 1, "key": 1 }, "customer_key_unique"),
                index(doc! { "seq": -1 }, "newest_first"),
                index(doc! { "state": 1, "seq": -1 }, "by_state_newest_first"),
                index(doc! { "unfinished": 1, "seq": 1 }, "unfinished"),
                index(doc! { "turn_order": 1, "unfinished": 1 }, "order_turns"),
                index(doc! { "order_id": 1, "seq": -1 }, "by_order_newest_first"),
                index(
                    doc! { "state": 1, "updated_ms": 1 },
                    "by_state_oldest_change",
                ),
                index(
                    doc! { "customer_id": 1, "seq": -1 },
                    "by_customer_newest_first",
                ),
            ],
        )
        .await?;
        db.ensure_indexes(
            "payment_deadlines",
            vec![index(doc! { "due_ms": 1 }, "due_first")],
        )
        .await?;
        let log = Self {
            sagas: db.collection("sagas"),
            deadlines: db.collection("payment_deadlines"),
            turns: db.collection("order_turns"),
            db,
            owner,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            failpoint: None,
        };
        log.upgrade_keys().await?;
        Ok(log)
    }

    /// This log, holding at `failpoint` when it is `save:deadline`.
    #[must_use]
    pub fn with_failpoint(mut self, failpoint: Option<Failpoint>) -> Self {
        self.failpoint = failpoint.filter(|fp| fp.point == "save:deadline");
        self
    }

    /// Moves a database written before keys were scoped per customer to
    /// the scoped key space, idempotently: gives every saga document
    /// without `key_scope` its scope (from its record), then drops the old
    /// global unique index. Documents an older orchestrator writes later
    /// in a rolling upgrade have no scope; `begin` and `get_by_key` look
    /// for those too, so a key they hold is still answered.
    async fn upgrade_keys(&self) -> Result<(), StorageError> {
        let mut scoped = 0_u64;
        loop {
            let cursor = self
                .sagas
                .find(doc! { "key_scope": { "$exists": false } })
                .limit(500)
                .await
                .map_err(storage_error)?;
            let docs = drain(cursor).await?;
            if docs.is_empty() {
                break;
            }
            for d in &docs {
                let record = record_from(d)?;
                self.sagas
                    .update_one(
                        doc! { "_id": &record.saga_id },
                        doc! { "$set": { "key_scope": record.key_scope() } },
                    )
                    .await
                    .map_err(storage_error)?;
                scoped += 1;
            }
        }
        if scoped > 0 {
            tracing::info!(
                sagas = scoped,
                "idempotency keys of older sagas moved to the per-customer key space"
            );
        }
        if self
            .db
            .drop_index_if_exists("sagas", "idempotency_key_unique")
            .await?
        {
            tracing::info!("dropped the global idempotency key index (now per customer)");
        }
        Ok(())
    }

    /// The saga holding `key` in `scope`, or in no scope (a document an
    /// older orchestrator wrote) if it is that scope's.
    async fn find_key(&self, scope: &str, key: &str) -> Result<Option<SagaRecord>, StorageError> {
        let cursor = self
            .sagas
            .find(doc! {
                "key": key,
                "$or": [ { "key_scope": scope }, { "key_scope": { "$exists": false } } ],
            })
            .limit(2)
            .await
            .map_err(storage_error)?;
        let mut found = None;
        for d in drain(cursor).await? {
            let record = record_from(&d)?;
            let scoped = d.get_str("key_scope").is_ok();
            if record.key_scope() == scope && (scoped || found.is_none()) {
                found = Some(record);
            }
        }
        Ok(found)
    }

    /// The update (a pipeline) that writes `record` and renews (or, once
    /// it has ended, lets go of) this orchestrator's lease.
    fn record_update(&self, record: &SagaRecord) -> Result<Vec<Document>, StorageError> {
        let mut set = doc! {
            "state": i32::from(record.state.index()),
            "unfinished": !record.state.is_terminal(),
            "data": blob(record)?,
            "lease_owner": &self.owner,
        };
        set.extend(listing_fields(record));
        let mut set = literals(set);
        if record.state.is_terminal() {
            set.insert("lease_until", doc! { "$literal": 0_i64 });
        } else {
            set.insert("lease_until", server_now_plus(self.lease_ms));
        }
        Ok(vec![doc! { "$set": set }])
    }

    /// Writes a payment deadline change on its own.
    async fn apply_deadline(&self, deadline: &PaymentDeadline) -> Result<(), StorageError> {
        match deadline {
            PaymentDeadline::Keep => {}
            PaymentDeadline::Set { order_id, due_ms } => {
                self.deadlines
                    .update_one(
                        doc! { "_id": order_id },
                        doc! { "$set": { "due_ms": *due_ms } },
                    )
                    .upsert(true)
                    .await
                    .map_err(storage_error)?;
            }
            PaymentDeadline::Clear { order_id } => {
                self.deadlines
                    .delete_one(doc! { "_id": order_id })
                    .await
                    .map_err(storage_error)?;
            }
        }
        Ok(())
    }
}

impl MongoSagaLog {
    /// The conditional update that takes an unfinished saga's lease when it
    /// is this orchestrator's or has expired, bumping its epoch. It returns
    /// the document as it was: [`Self::claimed`] makes the record.
    fn claim_update(&self, saga_id: &str) -> mongodb::action::FindOneAndUpdate<'_, Document> {
        self.sagas
            .find_one_and_update(
                doc! {
                    "_id": saga_id,
                    "unfinished": true,
                    "$or": [ { "lease_owner": &self.owner }, lease_expired() ],
                },
                vec![doc! {
                    "$set": {
                        "lease_owner": { "$literal": &self.owner },
                        "lease_until": server_now_plus(self.lease_ms),
                        "epoch": { "$add": [{ "$ifNull": ["$epoch", 0_i64] }, 1_i64] },
                    },
                }],
            )
            .return_document(ReturnDocument::Before)
    }

    /// The record a claim took (the document before it, one epoch on), and
    /// a log line when it was another orchestrator's: a takeover.
    fn claimed(&self, before: Option<&Document>) -> Result<Option<SagaRecord>, StorageError> {
        let Some(before) = before else {
            return Ok(None);
        };
        let mut record = record_from(before)?;
        record.lease_epoch += 1;
        let previous = before.get_str("lease_owner").unwrap_or_default();
        if previous != self.owner {
            tracing::info!(
                saga_id = %record.saga_id,
                from = %previous,
                epoch = record.lease_epoch,
                "saga taken over: its lease had run out"
            );
        }
        Ok(Some(record))
    }
}

impl microshop_storage::Ping for MongoSagaLog {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}

/// The plain fields ListSagas filters on, beside the record's blob.
fn listing_fields(record: &SagaRecord) -> Document {
    let mut fields = doc! {
        "type": i32::from(record.saga_type.index()),
        "updated_ms": record.updated_at_ms,
    };
    let customer = record.customer_id();
    if !customer.is_empty() {
        fields.insert("customer_id", customer);
    }
    if let Some(order_id) = record.order_id() {
        fields.insert("order_id", order_id);
    }
    fields
}

/// The query of a listing filter.
fn filter_query(filter: &SagaFilter, before: Option<u64>) -> Document {
    let mut query = Document::new();
    if let Some(state) = filter.state {
        query.insert("state", i32::from(state.index()));
    }
    if let Some(t) = filter.saga_type {
        query.insert("type", i32::from(t.index()));
    }
    if let Some(c) = &filter.customer_id {
        query.insert("customer_id", c);
    }
    if let Some(o) = &filter.order_id {
        query.insert("order_id", o);
    }
    if let Some(t) = filter.updated_before_ms {
        query.insert("updated_ms", doc! { "$lt": t });
    }
    if let Some(before) = before {
        query.insert(
            "seq",
            doc! { "$lt": i64::try_from(before).unwrap_or(i64::MAX) },
        );
    }
    query
}

impl MongoSagaLog {
    /// Gives saga documents written before the listing fields existed (or
    /// by an older orchestrator during a rolling upgrade) those fields, from
    /// their records, in batches; run at start.
    pub async fn backfill_listing_fields(&self) -> Result<u64, StorageError> {
        let mut filled = 0;
        loop {
            let cursor = self
                .sagas
                .find(doc! { "type": { "$exists": false } })
                .limit(500)
                .await
                .map_err(storage_error)?;
            let docs = drain(cursor).await?;
            if docs.is_empty() {
                return Ok(filled);
            }
            for d in &docs {
                let record = record_from(d)?;
                self.sagas
                    .update_one(
                        doc! { "_id": &record.saga_id },
                        doc! { "$set": listing_fields(&record) },
                    )
                    .await
                    .map_err(storage_error)?;
                filled += 1;
            }
        }
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

impl MongoSagaLog {
    async fn begin_durable(&self, mut record: SagaRecord) -> Result<Begin, StorageError> {
        // A key an older orchestrator took without a scope (rolling
        // upgrade) still holds it for its customer.
        if let Some(existing) = self
            .find_key(record.key_scope(), &record.idempotency_key)
            .await?
        {
            return Ok(Begin::Existing(existing));
        }
        record.seq = self
            .db
            .next_seq("orchestrator_counters", "saga_seq")
            .await?;
        record.lease_epoch = 1;
        let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
        let mut document = doc! {
            "key": &record.idempotency_key,
            "key_scope": record.key_scope(),
            "seq": seq,
            "state": i32::from(record.state.index()),
            "unfinished": !record.state.is_terminal(),
            "data": blob(&record)?,
            "lease_owner": &self.owner,
            "epoch": 1_i64,
        };
        document.extend(listing_fields(&record));
        if let Some(order_id) = record.acted_order() {
            document.insert("turn_order", order_id);
        }
        let mut set = literals(document);
        set.insert("lease_until", server_now_plus(self.lease_ms));
        // An insert cannot read the server's clock: an upsert of the new
        // saga id (never taken) with a pipeline can. A key already taken
        // fails it on the unique index as an insert would.
        let created = self
            .sagas
            .update_one(doc! { "_id": &record.saga_id }, vec![doc! { "$set": set }])
            .upsert(true)
            .await;
        match created {
            Ok(_) => Ok(Begin::Created(record)),
            Err(e) if is_duplicate_key(&e) => {
                let existing = self
                    .find_key(record.key_scope(), &record.idempotency_key)
                    .await?;
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

    /// Saves `record` (fenced by its epoch) and its payment deadline, as
    /// two writes and not one transaction: an orchestrator killed inside a
    /// transaction leaves the saga's document locked by it until the
    /// server reaps it (mongod: `transactionLifetimeLimitSeconds`, 60 s by
    /// default; SecantusDB 0.7: never), and every claim of the saga waits
    /// for that, so no peer could take over the very saga that needs it.
    /// Their order makes either half alone harmless:
    /// - a deadline is set (on a checkout's completion) before the record,
    ///   and only by a saver still holding the saga (one fenced out between
    ///   that check and its write sets what its successor sets too: the due
    ///   time comes from the saga's creation); whoever completes the saga
    ///   after a saver cut short sets the same one;
    /// - it is cleared (payment, cancellation) after the record: a deadline
    ///   a cut left behind starts an expiry that cancels only an unpaid
    ///   order, and ends, either way, by clearing it.
    async fn save_durable(
        &self,
        record: &SagaRecord,
        deadline: PaymentDeadline,
    ) -> Result<(), StorageError> {
        let filter = doc! {
            "_id": &record.saga_id,
            "epoch": i64::try_from(record.lease_epoch).unwrap_or(i64::MAX),
        };
        if matches!(deadline, PaymentDeadline::Set { .. }) {
            // A saver fenced out already sets no deadline.
            let held = self
                .sagas
                .find_one(filter.clone())
                .projection(doc! { "_id": 1 })
                .await
                .map_err(storage_error)?;
            if held.is_none() {
                return Err(fenced(&record.saga_id));
            }
            self.apply_deadline(&deadline).await?;
            Failpoint::hit(self.failpoint.as_ref(), "save", "deadline").await;
        }
        let done = self
            .sagas
            .update_one(filter, self.record_update(record)?)
            .await
            .map_err(storage_error)?;
        if done.matched_count != 1 {
            return Err(fenced(&record.saga_id));
        }
        if let PaymentDeadline::Clear { order_id } = &deadline {
            // The outcome is saved: a deadline left behind is the expiry's
            // to clear, so its caller hears the outcome, not this failure.
            if let Err(e) = self.apply_deadline(&deadline).await {
                tracing::warn!(
                    error = %e,
                    saga_id = %record.saga_id,
                    order_id = %order_id,
                    "cannot clear the order's payment deadline; its expiry will find the order settled and clear it"
                );
            }
        }
        Ok(())
    }
}

impl SagaLog for MongoSagaLog {
    async fn begin(&self, record: SagaRecord) -> Result<(Begin, Synced), StorageError> {
        // Acknowledged writes are durable (write concern majority).
        self.begin_durable(record).await.map(|b| (b, Synced::now()))
    }

    async fn save(
        &self,
        record: &SagaRecord,
        deadline: PaymentDeadline,
        _sync: Sync,
    ) -> Result<(), StorageError> {
        self.save_durable(record, deadline).await
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
            return self.claimed(claimed.as_ref());
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
                            "$expr": lease_running(),
                        })
                        .projection(doc! { "_id": 1 })
                        .session(&mut *s)
                        .await?;
                    if busy.is_some() {
                        return Ok(None);
                    }
                    let claimed = this.claim_update(&saga_id).session(s).await?;
                    Ok(this.claimed(claimed.as_ref())?)
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

    async fn get_by_key(
        &self,
        scope: String,
        key: String,
    ) -> Result<Option<SagaRecord>, StorageError> {
        self.find_key(&scope, &key).await
    }

    async fn list(
        &self,
        filter: SagaFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<SagaPage, StorageError> {
        let cursor = self
            .sagas
            .find(filter_query(&filter, before))
            .sort(doc! { "seq": -1 })
            .limit(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX))
            .await
            .map_err(storage_error)?;
        let (docs, next) = page(drain(cursor).await?, limit)?;
        let sagas = docs.iter().map(record_from).collect::<Result<_, _>>()?;
        Ok(SagaPage { sagas, next })
    }

    async fn unfinished(&self) -> Result<Vec<String>, StorageError> {
        let cursor = self
            .sagas
            .find(doc! {
                "unfinished": true,
                "$or": [ { "lease_owner": &self.owner }, lease_expired() ],
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

    async fn purge_ended(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        let ended = doc! { "$in": [i32::from(SagaState::Completed.index()), i32::from(SagaState::Compensated.index())] };
        let cursor = self
            .sagas
            .find(doc! { "state": ended.clone(), "updated_ms": { "$lt": before_ms } })
            .projection(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(storage_error)?;
        let ids: Vec<String> = drain(cursor)
            .await?
            .iter()
            .map(|d| string(d, "_id"))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(0);
        }
        // The key lives in the saga's own document (unique index), so one
        // delete takes it too.
        let done = self
            .sagas
            .delete_many(doc! { "_id": { "$in": ids }, "state": ended })
            .await
            .map_err(storage_error)?;
        Ok(done.deleted_count)
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
