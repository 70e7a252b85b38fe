//! The order stores on MongoDB.
//!
//! Collections: `orders` (`_id` = order id; `customer_id` and `seq` beside
//! the order blob, indexed `{customer_id: 1, seq: -1}` for newest-first
//! listing), `coupons` (`_id` = code; `usage_limit` and `times_used` as plain
//! integers) and `order_barrier`. A coupon use is a conditional `$inc`
//! (`times_used < usage_limit`), in the same transaction as the order and
//! its barrier record, so concurrent orders never exceed a coupon's limit.
//!
//! `seq` is the top 64 bits of the order's UUIDv7 (its creation millisecond
//! and a per-process counter): ordered like the embedded store's counter
//! without a counter document that every CreateOrder would contend on.

use microshop_storage::{
    StorageError,
    barrier::ActionGate,
    mongo::{
        Barrier, MongoDb, TxnError, blob, drain, index, int, page, storage_error, string, unblob,
    },
};
use mongodb::{
    ClientSession, Collection,
    bson::{Document, doc},
};

use crate::{
    domain::{
        CancelOutcome, Coupon, CouponUpdate, CreateOutcome, NewOrder, Order, OrderPage, PayOutcome,
        ShipOutcome,
    },
    lifecycle::{self, CancelMove, CancelRecord, CreateRecord, StatusMove},
    pricing::PricingRules,
    store::{CouponStore, OrderQueries, OrderStore},
};

const OP_CREATE: &str = "create";
const OP_CANCEL: &str = "cancel";

/// Orders and coupons on MongoDB.
#[derive(Clone, Debug)]
pub struct MongoOrders {
    db: MongoDb,
    orders: Collection<Document>,
    coupons: Collection<Document>,
    barrier: Barrier,
}

impl MongoOrders {
    /// Uses `db`, creating the listing index if missing.
    pub async fn open(db: MongoDb) -> Result<Self, StorageError> {
        db.ensure_indexes(
            "orders",
            vec![
                index(
                    doc! { "customer_id": 1, "seq": -1 },
                    "customer_newest_first",
                ),
                // A cancel finds the order a checkout created by this once
                // the barrier entry has expired; a late CreateOrder replays
                // it.
                index(doc! { "saga_id": 1 }, "by_checkout_saga"),
            ],
        )
        .await?;
        let store = Self {
            orders: db.collection("orders"),
            coupons: db.collection("coupons"),
            barrier: Barrier::open(&db, "order").await?,
            db,
        };
        store.fill_saga_ids().await?;
        Ok(store)
    }

    /// Gives orders stored before they carried their checkout saga's id as
    /// a field that field (from the stored order), in batches.
    async fn fill_saga_ids(&self) -> Result<(), StorageError> {
        loop {
            let cursor = self
                .orders
                .find(doc! { "saga_id": { "$exists": false } })
                .limit(500)
                .await
                .map_err(storage_error)?;
            let docs = drain(cursor).await?;
            if docs.is_empty() {
                return Ok(());
            }
            for d in &docs {
                let order: Order = unblob(d, "data")?;
                self.orders
                    .update_one(
                        doc! { "_id": &order.order_id },
                        doc! { "$set": { "saga_id": &order.saga_id } },
                    )
                    .await
                    .map_err(storage_error)?;
            }
        }
    }

    /// The order checkout `saga_id` created, if any.
    async fn order_of_saga(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
    ) -> Result<Option<String>, TxnError> {
        let found = self
            .orders
            .find_one(doc! { "saga_id": saga_id })
            .projection(doc! { "_id": 1 })
            .session(s)
            .await?;
        Ok(found.as_ref().map(|d| string(d, "_id")).transpose()?)
    }

    async fn load_order(
        &self,
        s: &mut ClientSession,
        order_id: &str,
    ) -> Result<Option<Order>, TxnError> {
        let found = self
            .orders
            .find_one(doc! { "_id": order_id })
            .session(s)
            .await?;
        Ok(found.as_ref().map(|d| unblob(d, "data")).transpose()?)
    }

    /// Loads an order a barrier record names: missing means corruption.
    async fn load_recorded_order(
        &self,
        s: &mut ClientSession,
        order_id: &str,
    ) -> Result<Order, TxnError> {
        self.load_order(s, order_id).await?.ok_or_else(|| {
            StorageError::Corrupt(format!(
                "barrier names order {order_id}, which is not stored"
            ))
            .into()
        })
    }

    async fn save_order(&self, s: &mut ClientSession, order: &Order) -> Result<(), TxnError> {
        let data = blob(order)?;
        self.orders
            .update_one(
                doc! { "_id": &order.order_id },
                doc! { "$set": { "data": data } },
            )
            .session(s)
            .await?;
        Ok(())
    }

    async fn load_coupon(
        &self,
        s: &mut ClientSession,
        code: &str,
    ) -> Result<Option<Coupon>, TxnError> {
        let found = self
            .coupons
            .find_one(doc! { "_id": code })
            .session(s)
            .await?;
        Ok(found.as_ref().map(coupon_from).transpose()?)
    }

    async fn create_in(
        &self,
        s: &mut ClientSession,
        new: NewOrder,
        rules: &PricingRules,
        seq: u64,
    ) -> Result<CreateRecord, TxnError> {
        let coupon = match &new.coupon_code {
            None => None,
            Some(code) => Some(self.load_coupon(s, code).await?),
        };
        let order = match lifecycle::build_order(new, coupon.as_ref().map(Option::as_ref), rules) {
            Ok(order) => order,
            Err(rejected) => return Ok(rejected),
        };
        if let Some(Some(c)) = &coupon {
            let used = self
                .coupons
                .update_one(
                    doc! { "_id": &c.code, "times_used": { "$lt": c.usage_limit } },
                    doc! { "$inc": { "times_used": 1_i64 } },
                )
                .session(&mut *s)
                .await?;
            if used.matched_count != 1 {
                return Ok(CreateRecord::CouponExhausted {
                    code: c.code.clone(),
                });
            }
        }
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.orders
            .insert_one(doc! {
                "_id": &order.order_id,
                "customer_id": &order.customer_id,
                "saga_id": &order.saga_id,
                "seq": seq,
                "data": blob(&order)?,
            })
            .session(s)
            .await?;
        Ok(CreateRecord::Created {
            order_id: order.order_id,
        })
    }

    /// The outcome a create record stands for, with the order as it is now.
    async fn create_outcome(
        &self,
        s: &mut ClientSession,
        record: CreateRecord,
    ) -> Result<CreateOutcome, TxnError> {
        Ok(match record {
            CreateRecord::Created { order_id } => {
                CreateOutcome::Created(Box::new(self.load_recorded_order(s, &order_id).await?))
            }
            CreateRecord::CouponInvalid { code } => CreateOutcome::CouponInvalid(code),
            CreateRecord::CouponExhausted { code } => CreateOutcome::CouponExhausted(code),
            CreateRecord::OverRedemption {
                requested,
                max_points,
            } => CreateOutcome::OverRedemption {
                requested,
                max_points,
            },
        })
    }

    async fn cancel_in(
        &self,
        s: &mut ClientSession,
        saga_id: &str,
        given: Option<String>,
        reason: String,
        only_if_unpaid: bool,
    ) -> Result<CancelOutcome, TxnError> {
        let barrier = self.barrier.load(s, saga_id).await?;
        if let Some(first) = barrier.outcome::<CancelRecord>(OP_CANCEL)? {
            return match first {
                CancelRecord::NothingCreated => Ok(CancelOutcome::NothingCreated),
                CancelRecord::Cancelled { order_id } => match given {
                    Some(given) if given != order_id => Ok(CancelOutcome::WrongOrder { given }),
                    _ => Ok(CancelOutcome::Cancelled(
                        self.load_recorded_order(s, &order_id).await?,
                    )),
                },
            };
        }
        // The order the checkout created: from its barrier entry, or, once
        // that has expired, from the orders' checkout saga ids.
        let created = match barrier.outcome::<CreateRecord>(OP_CREATE)? {
            Some(CreateRecord::Created { order_id }) => Some(order_id),
            Some(_) => None,
            None => self.order_of_saga(s, saga_id).await?,
        };
        let Some(order_id) = created else {
            // Never ran, or rejected: null compensation, recorded so a late
            // CreateOrder is refused (anti-hanging).
            self.barrier
                .record(s, saga_id, OP_CANCEL, &CancelRecord::NothingCreated)
                .await?;
            return Ok(CancelOutcome::NothingCreated);
        };
        if let Some(given) = given
            && given != order_id
        {
            return Ok(CancelOutcome::WrongOrder { given });
        }
        let mut order = self.load_recorded_order(s, &order_id).await?;
        match lifecycle::cancel(&mut order, reason, only_if_unpaid) {
            CancelMove::NotCancellable => return Ok(CancelOutcome::NotCancellable(order)),
            CancelMove::AlreadyCancelled => {}
            CancelMove::Cancelled => {
                if let Some(code) = &order.coupon_code {
                    self.coupons
                        .update_one(
                            doc! { "_id": code, "times_used": { "$gt": 0_i64 } },
                            doc! { "$inc": { "times_used": -1_i64 } },
                        )
                        .session(&mut *s)
                        .await?;
                }
                self.save_order(s, &order).await?;
            }
        }
        self.barrier
            .record(s, saga_id, OP_CANCEL, &CancelRecord::Cancelled { order_id })
            .await?;
        Ok(CancelOutcome::Cancelled(order))
    }
}

impl microshop_storage::Ping for MongoOrders {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}

fn coupon_doc(c: &Coupon) -> Result<Document, StorageError> {
    Ok(doc! {
        "_id": &c.code,
        "usage_limit": c.usage_limit,
        "times_used": c.times_used,
        "data": blob(c)?,
    })
}

/// The coupon, with the use count from its plain field (the blob's is stale
/// once uses were counted by `$inc`).
fn coupon_from(doc: &Document) -> Result<Coupon, StorageError> {
    let mut coupon: Coupon = unblob(doc, "data")?;
    coupon.usage_limit = int(doc, "usage_limit")?;
    coupon.times_used = int(doc, "times_used")?;
    Ok(coupon)
}

impl CouponStore for MongoOrders {
    async fn put_coupon(&self, update: CouponUpdate) -> Result<Coupon, StorageError> {
        self.db
            .transaction(|s| {
                let (this, update) = (self.clone(), update.clone());
                Box::pin(async move {
                    let times_used = this
                        .load_coupon(s, &update.code)
                        .await?
                        .map_or(0, |c| c.times_used);
                    let coupon = update.into_coupon(times_used);
                    this.coupons
                        .replace_one(doc! { "_id": &coupon.code }, coupon_doc(&coupon)?)
                        .upsert(true)
                        .session(s)
                        .await?;
                    Ok(coupon)
                })
            })
            .await
    }

    async fn get_coupon(&self, code: String) -> Result<Option<Coupon>, StorageError> {
        let found = self
            .coupons
            .find_one(doc! { "_id": &code })
            .await
            .map_err(storage_error)?;
        found.as_ref().map(coupon_from).transpose()
    }
}

impl OrderStore for MongoOrders {
    async fn create_order(
        &self,
        order: NewOrder,
        rules: PricingRules,
    ) -> Result<Option<CreateOutcome>, StorageError> {
        let seq = self.db.next_seq("order_counters", "order_seq").await?;
        self.db
            .transaction(|s| {
                let (this, order, rules) = (self.clone(), order.clone(), rules);
                Box::pin(async move {
                    let saga_id = order.saga_id.clone();
                    let barrier = this.barrier.load(s, &saga_id).await?;
                    match barrier.action_gate(OP_CREATE, OP_CANCEL)? {
                        ActionGate::Replay(first) => {
                            return this.create_outcome(s, first).await.map(Some);
                        }
                        ActionGate::Compensated => return Ok(None),
                        ActionGate::Proceed => {}
                    }
                    // Created before, its barrier entry expired since: the
                    // same order, never a second one.
                    if let Some(order_id) = this.order_of_saga(s, &saga_id).await? {
                        return this
                            .create_outcome(s, CreateRecord::Created { order_id })
                            .await
                            .map(Some);
                    }
                    let record = this.create_in(s, order, &rules, seq).await?;
                    this.barrier.record(s, &saga_id, OP_CREATE, &record).await?;
                    this.create_outcome(s, record).await.map(Some)
                })
            })
            .await
    }

    async fn cancel_order(
        &self,
        saga_id: String,
        order_id: Option<String>,
        reason: String,
        only_if_unpaid: bool,
    ) -> Result<CancelOutcome, StorageError> {
        self.db
            .transaction(|s| {
                let (this, saga_id, order_id, reason) = (
                    self.clone(),
                    saga_id.clone(),
                    order_id.clone(),
                    reason.clone(),
                );
                Box::pin(async move {
                    this.cancel_in(s, &saga_id, order_id, reason, only_if_unpaid)
                        .await
                })
            })
            .await
    }

    async fn mark_paid(
        &self,
        saga_id: String,
        order_id: String,
        payment_ref: String,
    ) -> Result<PayOutcome, StorageError> {
        self.db
            .transaction(|s| {
                let (this, saga_id, order_id, payment_ref) = (
                    self.clone(),
                    saga_id.clone(),
                    order_id.clone(),
                    payment_ref.clone(),
                );
                Box::pin(async move {
                    let Some(mut order) = this.load_order(s, &order_id).await? else {
                        return Ok(PayOutcome::UnknownOrder);
                    };
                    if order.saga_id != saga_id {
                        return Ok(PayOutcome::WrongSaga);
                    }
                    match lifecycle::pay(&mut order, payment_ref) {
                        StatusMove::Changed => this.save_order(s, &order).await?,
                        StatusMove::Unchanged => {}
                        StatusMove::Refused => return Ok(PayOutcome::NotPayable(order)),
                    }
                    Ok(PayOutcome::Paid(order))
                })
            })
            .await
    }

    async fn mark_shipped(&self, order_id: String) -> Result<ShipOutcome, StorageError> {
        self.db
            .transaction(|s| {
                let (this, order_id) = (self.clone(), order_id.clone());
                Box::pin(async move {
                    let Some(mut order) = this.load_order(s, &order_id).await? else {
                        return Ok(ShipOutcome::UnknownOrder);
                    };
                    match lifecycle::ship(&mut order) {
                        StatusMove::Changed => this.save_order(s, &order).await?,
                        StatusMove::Unchanged => {}
                        StatusMove::Refused => return Ok(ShipOutcome::NotShippable(order)),
                    }
                    Ok(ShipOutcome::Shipped(order))
                })
            })
            .await
    }
}

impl OrderQueries for MongoOrders {
    async fn get_order(&self, order_id: String) -> Result<Option<Order>, StorageError> {
        let found = self
            .orders
            .find_one(doc! { "_id": &order_id })
            .await
            .map_err(storage_error)?;
        found.as_ref().map(|d| unblob(d, "data")).transpose()
    }

    async fn list_orders(
        &self,
        customer_id: String,
        page_size: usize,
        after: Option<u64>,
    ) -> Result<OrderPage, StorageError> {
        let mut filter = doc! { "customer_id": &customer_id };
        if let Some(after) = after {
            filter.insert(
                "seq",
                doc! { "$lt": i64::try_from(after).unwrap_or(i64::MAX) },
            );
        }
        let cursor = self
            .orders
            .find(filter)
            .sort(doc! { "seq": -1 })
            .limit(i64::try_from(page_size.saturating_add(1)).unwrap_or(i64::MAX))
            .await
            .map_err(storage_error)?;
        let (docs, next_after) = page(drain(cursor).await?, page_size)?;
        let orders = docs
            .iter()
            .map(|d| unblob(d, "data"))
            .collect::<Result<_, _>>()?;
        Ok(OrderPage { orders, next_after })
    }
}

impl microshop_storage::BarrierPurge for MongoOrders {
    async fn purge_barrier(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        self.barrier.purge(before_ms, limit).await
    }
}
