//! The inventory stores on MongoDB.
//!
//! Collections: `products` (`_id` = SKU, stock buckets as plain integers so
//! they change by guarded `$inc`), `reservations` (`_id` = saga id, the
//! reservation as a blob) and `barrier`. Every saga op is one transaction:
//! the barrier record, the reservation and the stock move commit together.
//! A reservation's stock moves are conditional updates (`available >= q`),
//! so even a bug in the checks above them could not drive stock negative.

use microshop_storage::{
    StorageError,
    barrier::ActionGate,
    mongo::{Barrier, MongoDb, TxnError, blob, int, storage_error, string, unblob},
};
use mongodb::{
    ClientSession, Collection,
    bson::{Document, doc},
};

use crate::{
    domain::{
        CommitOutcome, Product, ProductUpdate, ReleaseOutcome, Reservation, ReservationState,
        ReserveOutcome, ReservedLine, StockLine, merge_lines,
    },
    store::{CatalogStore, ReservationStore},
};

const OP_RESERVE: &str = "reserve";
const OP_RELEASE: &str = "release";
const OP_COMMIT: &str = "commit";

/// Inventory on MongoDB.
#[derive(Clone, Debug)]
pub struct MongoInventory {
    db: MongoDb,
    products: Collection<Document>,
    reservations: Collection<Document>,
    barrier: Barrier,
}

impl MongoInventory {
    /// Uses `db`; creates nothing (the `_id` keys are the only unique keys).
    pub async fn open(db: MongoDb) -> Result<Self, StorageError> {
        Ok(Self {
            products: db.collection("products"),
            reservations: db.collection("reservations"),
            barrier: Barrier::open(&db, "inventory").await?,
            db,
        })
    }
}

impl microshop_storage::Ping for MongoInventory {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}

fn product_doc(p: &Product) -> Document {
    doc! {
        "_id": &p.sku,
        "name": &p.name,
        "unit_price": p.unit_price,
        "available": p.available,
        "reserved": p.reserved,
        "sold": p.sold,
        "restocked": p.restocked,
    }
}

fn product_from(doc: &Document) -> Result<Product, StorageError> {
    Ok(Product {
        sku: string(doc, "_id")?,
        name: string(doc, "name")?,
        unit_price: int(doc, "unit_price")?,
        available: int(doc, "available")?,
        reserved: int(doc, "reserved")?,
        sold: int(doc, "sold")?,
        restocked: int(doc, "restocked")?,
    })
}

impl MongoInventory {
    async fn load_product(
        &self,
        s: &mut ClientSession,
        sku: &str,
    ) -> Result<Option<Product>, TxnError> {
        let found = self
            .products
            .find_one(doc! { "_id": sku })
            .session(s)
            .await?;
        Ok(found.as_ref().map(product_from).transpose()?)
    }

    async fn load_reservation(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
    ) -> Result<Option<Reservation>, TxnError> {
        let found = self
            .reservations
            .find_one(doc! { "_id": saga_id })
            .session(s)
            .await?;
        Ok(found.as_ref().map(|d| unblob(d, "data")).transpose()?)
    }

    async fn save_reservation(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
        reservation: &Reservation,
    ) -> Result<(), TxnError> {
        let data = blob(reservation)?;
        self.reservations
            .update_one(doc! { "_id": saga_id }, doc! { "$set": { "data": data } })
            .upsert(true)
            .session(s)
            .await?;
        Ok(())
    }

    /// Applies `inc` (bucket → units per line) to every line's product,
    /// guarded by `guard` (a bucket that must hold at least the units).
    async fn move_units(
        &self,
        s: &mut ClientSession,
        lines: &[ReservedLine],
        guard: Option<&str>,
        inc: impl Fn(i64) -> Document,
    ) -> Result<(), TxnError> {
        for line in lines {
            let mut filter = doc! { "_id": &line.sku };
            if let Some(bucket) = guard {
                filter.insert(bucket, doc! { "$gte": line.quantity });
            }
            let done = self
                .products
                .update_one(filter, doc! { "$inc": inc(line.quantity) })
                .session(&mut *s)
                .await?;
            if done.matched_count != 1 {
                // The checks inside this transaction's snapshot said it fits;
                // a concurrent writer would have conflicted instead. Give up
                // with a retryable error rather than apply half of it.
                return Err(StorageError::Unavailable(
                    format!("stock of {} changed under the reservation", line.sku).into(),
                )
                .into());
            }
        }
        Ok(())
    }

    async fn reserve_in(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
        lines: &[StockLine],
    ) -> Result<ReserveOutcome, TxnError> {
        let merged = merge_lines(lines);
        let mut reserved = Vec::with_capacity(merged.len());
        for line in &merged {
            let Some(product) = self.load_product(s, &line.sku).await? else {
                return Ok(ReserveOutcome::UnknownSku(line.sku.clone()));
            };
            if product.available < line.quantity {
                return Ok(ReserveOutcome::OutOfStock {
                    sku: line.sku.clone(),
                    requested: line.quantity,
                    available: product.available,
                });
            }
            reserved.push(ReservedLine {
                sku: product.sku,
                name: product.name,
                quantity: line.quantity,
                unit_price: product.unit_price,
            });
        }
        self.move_units(s, &reserved, Some("available"), |q| {
            doc! { "available": -q, "reserved": q }
        })
        .await?;
        let reservation = Reservation {
            lines: reserved.clone(),
            state: ReservationState::Reserved,
        };
        self.save_reservation(s, saga_id, &reservation).await?;
        Ok(ReserveOutcome::Reserved(reserved))
    }

    async fn release_in(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
    ) -> Result<ReleaseOutcome, TxnError> {
        let Some(mut r) = self.load_reservation(s, saga_id).await? else {
            return Ok(ReleaseOutcome::NothingReserved);
        };
        let units = r.lines.iter().map(|l| l.quantity).sum();
        let outcome = match r.state {
            ReservationState::Reserved => {
                self.move_units(s, &r.lines, Some("reserved"), |q| {
                    doc! { "reserved": -q, "available": q }
                })
                .await?;
                ReleaseOutcome::Released(units)
            }
            ReservationState::Committed => {
                self.move_units(s, &r.lines, None, |q| {
                    doc! { "available": q, "restocked": q }
                })
                .await?;
                ReleaseOutcome::Restocked(units)
            }
            ReservationState::Released => ReleaseOutcome::Released(0),
        };
        r.state = ReservationState::Released;
        self.save_reservation(s, saga_id, &r).await?;
        Ok(outcome)
    }

    async fn commit_in(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
    ) -> Result<CommitOutcome, TxnError> {
        let Some(mut r) = self.load_reservation(s, saga_id).await? else {
            return Ok(CommitOutcome::NothingReserved);
        };
        match r.state {
            ReservationState::Reserved => {}
            // Already committed (its barrier entry expired since): the same
            // answer, no second move. The reservation is the business
            // record; it outlives the barrier.
            ReservationState::Committed => {
                return Ok(CommitOutcome::Committed(
                    r.lines.iter().map(|l| l.quantity).sum(),
                ));
            }
            ReservationState::Released => return Ok(CommitOutcome::Released),
        }
        self.move_units(s, &r.lines, Some("reserved"), |q| {
            doc! { "reserved": -q, "sold": q }
        })
        .await?;
        r.state = ReservationState::Committed;
        self.save_reservation(s, saga_id, &r).await?;
        Ok(CommitOutcome::Committed(
            r.lines.iter().map(|l| l.quantity).sum(),
        ))
    }
}

impl CatalogStore for MongoInventory {
    async fn put_product(
        &self,
        update: ProductUpdate,
    ) -> Result<Result<Product, i64>, StorageError> {
        self.db
            .transaction(|s| {
                let (this, update) = (self.clone(), update.clone());
                Box::pin(async move {
                    let existing = this.load_product(s, &update.sku).await?;
                    let product = match update.apply(existing) {
                        Ok(product) => product,
                        Err(reserved) => return Ok(Err(reserved)),
                    };
                    this.products
                        .replace_one(doc! { "_id": &product.sku }, product_doc(&product))
                        .upsert(true)
                        .session(s)
                        .await?;
                    Ok(Ok(product))
                })
            })
            .await
    }

    async fn get_products(&self, skus: Vec<String>) -> Result<Vec<Option<Product>>, StorageError> {
        let mut out = Vec::with_capacity(skus.len());
        for sku in &skus {
            let found = self
                .products
                .find_one(doc! { "_id": sku })
                .await
                .map_err(storage_error)?;
            out.push(found.as_ref().map(product_from).transpose()?);
        }
        Ok(out)
    }
}

impl ReservationStore for MongoInventory {
    async fn reserve(
        &self,
        saga_id: String,
        lines: Vec<StockLine>,
    ) -> Result<Option<ReserveOutcome>, StorageError> {
        self.db
            .transaction(|s| {
                let (this, saga_id, lines) = (self.clone(), saga_id.clone(), lines.clone());
                Box::pin(async move {
                    let barrier = this.barrier.load(s, &saga_id).await?;
                    match barrier.action_gate(OP_RESERVE, OP_RELEASE)? {
                        ActionGate::Replay(first) => return Ok(Some(first)),
                        ActionGate::Compensated => return Ok(None),
                        ActionGate::Proceed => {}
                    }
                    let outcome = this.reserve_in(s, &saga_id, &lines).await?;
                    this.barrier
                        .record(s, &saga_id, OP_RESERVE, &outcome)
                        .await?;
                    Ok(Some(outcome))
                })
            })
            .await
    }

    async fn release(&self, saga_id: String) -> Result<ReleaseOutcome, StorageError> {
        self.db
            .transaction(|s| {
                let (this, saga_id) = (self.clone(), saga_id.clone());
                Box::pin(async move {
                    let barrier = this.barrier.load(s, &saga_id).await?;
                    if let Some(first) = barrier.outcome(OP_RELEASE)? {
                        return Ok(first);
                    }
                    let outcome = this.release_in(s, &saga_id).await?;
                    this.barrier
                        .record(s, &saga_id, OP_RELEASE, &outcome)
                        .await?;
                    Ok(outcome)
                })
            })
            .await
    }

    async fn commit(&self, saga_id: String) -> Result<CommitOutcome, StorageError> {
        self.db
            .transaction(|s| {
                let (this, saga_id) = (self.clone(), saga_id.clone());
                Box::pin(async move {
                    let barrier = this.barrier.load(s, &saga_id).await?;
                    if let Some(first) = barrier.outcome(OP_COMMIT)? {
                        return Ok(first);
                    }
                    let outcome = this.commit_in(s, &saga_id).await?;
                    this.barrier
                        .record(s, &saga_id, OP_COMMIT, &outcome)
                        .await?;
                    Ok(outcome)
                })
            })
            .await
    }
}

impl microshop_storage::BarrierPurge for MongoInventory {
    async fn purge_barrier(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        self.barrier.purge(before_ms, limit).await
    }
}
