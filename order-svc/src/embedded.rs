//! The order stores on the embedded redb engine.
//!
//! Tables: orders by id, coupons by code, a per-customer index keyed
//! `(customer_id, u64::MAX - seq)` so a forward range scan lists a
//! customer's orders newest first, and a meta table holding the last `seq`
//! handed out (monotonic, so it is also the opaque page token). CreateOrder
//! and CancelOrder record their barrier outcome in the same write job as
//! their effect; every job checks everything before its first write.

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
    domain::{
        CancelOutcome, Coupon, CouponUpdate, CreateOutcome, NewOrder, Order, OrderPage, PayOutcome,
        ShipOutcome,
    },
    lifecycle::{self, CancelMove, CancelRecord, CreateRecord, StatusMove},
    pricing::PricingRules,
    store::{CouponStore, OrderQueries, OrderStore},
};

const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const COUPONS: TableDefinition<&str, &[u8]> = TableDefinition::new("coupons");
const CUSTOMER_ORDERS: TableDefinition<(&str, u64), &str> = TableDefinition::new("customer_orders");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Checkout saga id → the order it created: the business record a cancel
/// finds its order by (and a late CreateOrder replays), which outlives the
/// barrier's retention.
const SAGA_ORDERS: TableDefinition<&str, &str> = TableDefinition::new("saga_orders");

/// Key in [`META`] set once every order is in [`SAGA_ORDERS`].
const SAGA_ORDERS_FILLED: &str = "saga_orders_filled";

/// Key in [`META`] of the last order sequence number handed out.
const ORDER_SEQ: &str = "order_seq";

const OP_CREATE: &str = "create";
const OP_CANCEL: &str = "cancel";

/// Orders and coupons on redb (`order.redb` in the data directory).
#[derive(Clone, Debug)]
pub struct EmbeddedOrders {
    db: EmbeddedDb,
}

impl EmbeddedOrders {
    /// Opens or creates the store under `dir`.
    pub fn open(dir: &Path, durable: Durable) -> Result<Self, StorageError> {
        let db = EmbeddedDb::open(dir, "order", durable, |txn| {
            txn.open_table(ORDERS)?;
            txn.open_table(COUPONS)?;
            txn.open_table(CUSTOMER_ORDERS)?;
            txn.open_table(META)?;
            txn.open_table(SAGA_ORDERS)?;
            barrier::init(txn)?;
            fill_saga_orders(txn)
        })?;
        Ok(Self { db })
    }
}

/// Once, in a store written before [`SAGA_ORDERS`] existed: every order is
/// indexed by its checkout saga.
fn fill_saga_orders(txn: &WriteTransaction) -> Result<(), StorageError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(SAGA_ORDERS_FILLED)?.is_some() {
        return Ok(());
    }
    let orders = txn.open_table(ORDERS)?;
    let mut index = txn.open_table(SAGA_ORDERS)?;
    for entry in orders.iter()? {
        let (_, value) = entry?;
        let order: Order = decode(value.value())?;
        index.insert(order.saga_id.as_str(), order.order_id.as_str())?;
    }
    meta.insert(SAGA_ORDERS_FILLED, 1)?;
    Ok(())
}

/// The order checkout `saga_id` created, if any.
fn order_of_saga(txn: &WriteTransaction, saga_id: &str) -> Result<Option<String>, StorageError> {
    let table = txn.open_table(SAGA_ORDERS)?;
    let found = table.get(saga_id)?;
    Ok(found.map(|v| v.value().to_owned()))
}

fn load_order(txn: &WriteTransaction, order_id: &str) -> Result<Option<Order>, StorageError> {
    let table = txn.open_table(ORDERS)?;
    let found = table.get(order_id)?;
    found.map(|v| decode(v.value())).transpose()
}

/// Loads an order a barrier record names: missing means corruption.
fn load_recorded_order(txn: &WriteTransaction, order_id: &str) -> Result<Order, StorageError> {
    load_order(txn, order_id)?.ok_or_else(|| {
        StorageError::Corrupt(format!(
            "barrier names order {order_id}, which is not stored"
        ))
    })
}

fn save_order(txn: &WriteTransaction, order: &Order) -> Result<(), StorageError> {
    let bytes = encode(order)?;
    txn.open_table(ORDERS)?
        .insert(order.order_id.as_str(), bytes.as_slice())?;
    Ok(())
}

fn load_coupon(txn: &WriteTransaction, code: &str) -> Result<Option<Coupon>, StorageError> {
    let table = txn.open_table(COUPONS)?;
    let found = table.get(code)?;
    found.map(|v| decode(v.value())).transpose()
}

fn save_coupon(txn: &WriteTransaction, coupon: &Coupon) -> Result<(), StorageError> {
    let bytes = encode(coupon)?;
    txn.open_table(COUPONS)?
        .insert(coupon.code.as_str(), bytes.as_slice())?;
    Ok(())
}

/// Hands out the next order sequence number (1, 2, ...).
fn next_seq(txn: &WriteTransaction) -> Result<u64, StorageError> {
    let mut meta = txn.open_table(META)?;
    let last = meta.get(ORDER_SEQ)?.map_or(0, |v| v.value());
    let seq = last + 1;
    meta.insert(ORDER_SEQ, seq)?;
    Ok(seq)
}

/// Checks the coupon and prices the order, then stores it; writes nothing
/// unless every check passed.
fn create_in(
    txn: &WriteTransaction,
    new: NewOrder,
    rules: &PricingRules,
) -> Result<CreateRecord, StorageError> {
    let coupon = match &new.coupon_code {
        None => None,
        Some(code) => Some(load_coupon(txn, code)?),
    };
    let order = match lifecycle::build_order(new, coupon.as_ref().map(Option::as_ref), rules) {
        Ok(order) => order,
        Err(rejected) => return Ok(rejected),
    };
    if let Some(Some(mut c)) = coupon {
        c.times_used += 1;
        save_coupon(txn, &c)?;
    }
    let seq = next_seq(txn)?;
    save_order(txn, &order)?;
    txn.open_table(SAGA_ORDERS)?
        .insert(order.saga_id.as_str(), order.order_id.as_str())?;
    txn.open_table(CUSTOMER_ORDERS)?.insert(
        (order.customer_id.as_str(), u64::MAX - seq),
        order.order_id.as_str(),
    )?;
    Ok(CreateRecord::Created {
        order_id: order.order_id,
    })
}

/// The outcome a create record stands for, with the order as it is now.
fn create_outcome(
    txn: &WriteTransaction,
    record: CreateRecord,
) -> Result<CreateOutcome, StorageError> {
    Ok(match record {
        CreateRecord::Created { order_id } => {
            CreateOutcome::Created(Box::new(load_recorded_order(txn, &order_id)?))
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

/// Gives one use of `code` back (a cancelled order no longer uses it).
fn give_coupon_back(txn: &WriteTransaction, code: &str) -> Result<(), StorageError> {
    if let Some(mut coupon) = load_coupon(txn, code)?
        && coupon.times_used > 0
    {
        coupon.times_used -= 1;
        save_coupon(txn, &coupon)?;
    }
    Ok(())
}

fn cancel_in(
    txn: &WriteTransaction,
    saga_id: &str,
    given: Option<String>,
    reason: String,
    only_if_unpaid: bool,
) -> Result<CancelOutcome, StorageError> {
    if let Some(first) = barrier::outcome::<CancelRecord>(txn, saga_id, OP_CANCEL)? {
        return match first {
            CancelRecord::NothingCreated => Ok(CancelOutcome::NothingCreated),
            CancelRecord::Cancelled { order_id } => match given {
                Some(given) if given != order_id => Ok(CancelOutcome::WrongOrder { given }),
                _ => Ok(CancelOutcome::Cancelled(load_recorded_order(
                    txn, &order_id,
                )?)),
            },
        };
    }
    // The order the checkout created: from its barrier entry, or, once
    // that has expired, from the saga's order index.
    let created = match barrier::outcome::<CreateRecord>(txn, saga_id, OP_CREATE)? {
        Some(CreateRecord::Created { order_id }) => Some(order_id),
        Some(_) => None,
        None => order_of_saga(txn, saga_id)?,
    };
    let Some(order_id) = created else {
        // The action never ran, or was rejected: null compensation. The
        // record also refuses a CreateOrder arriving later (anti-hanging).
        barrier::record(txn, saga_id, OP_CANCEL, &CancelRecord::NothingCreated)?;
        return Ok(CancelOutcome::NothingCreated);
    };
    if let Some(given) = given
        && given != order_id
    {
        return Ok(CancelOutcome::WrongOrder { given });
    }
    let mut order = load_recorded_order(txn, &order_id)?;
    match lifecycle::cancel(&mut order, reason, only_if_unpaid) {
        CancelMove::NotCancellable => return Ok(CancelOutcome::NotCancellable(order)),
        CancelMove::AlreadyCancelled => {}
        CancelMove::Cancelled => {
            if let Some(code) = &order.coupon_code {
                give_coupon_back(txn, code)?;
            }
            save_order(txn, &order)?;
        }
    }
    barrier::record(
        txn,
        saga_id,
        OP_CANCEL,
        &CancelRecord::Cancelled { order_id },
    )?;
    Ok(CancelOutcome::Cancelled(order))
}

impl CouponStore for EmbeddedOrders {
    async fn put_coupon(&self, update: CouponUpdate) -> Result<Coupon, StorageError> {
        self.db
            .write(move |txn| {
                let times_used = load_coupon(txn, &update.code)?.map_or(0, |c| c.times_used);
                let coupon = update.into_coupon(times_used);
                save_coupon(txn, &coupon)?;
                Ok(coupon)
            })
            .await
    }

    async fn get_coupon(&self, code: String) -> Result<Option<Coupon>, StorageError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(COUPONS)?;
                let found = table.get(code.as_str())?;
                found.map(|v| decode(v.value())).transpose()
            })
            .await
    }
}

impl OrderStore for EmbeddedOrders {
    async fn create_order(
        &self,
        order: NewOrder,
        rules: PricingRules,
    ) -> Result<Option<CreateOutcome>, StorageError> {
        self.db
            .write(move |txn| {
                let saga_id = order.saga_id.clone();
                match barrier::action_gate(txn, &saga_id, OP_CREATE, OP_CANCEL)? {
                    ActionGate::Replay(first) => return create_outcome(txn, first).map(Some),
                    ActionGate::Compensated => return Ok(None),
                    ActionGate::Proceed => {}
                }
                // Created before, its barrier entry expired since: the same
                // order, never a second one.
                if let Some(order_id) = order_of_saga(txn, &saga_id)? {
                    return create_outcome(txn, CreateRecord::Created { order_id }).map(Some);
                }
                let record = create_in(txn, order, &rules)?;
                barrier::record(txn, &saga_id, OP_CREATE, &record)?;
                create_outcome(txn, record).map(Some)
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
            .write(move |txn| cancel_in(txn, &saga_id, order_id, reason, only_if_unpaid))
            .await
    }

    async fn mark_paid(
        &self,
        saga_id: String,
        order_id: String,
        payment_ref: String,
    ) -> Result<PayOutcome, StorageError> {
        self.db
            .write(move |txn| {
                let Some(mut order) = load_order(txn, &order_id)? else {
                    return Ok(PayOutcome::UnknownOrder);
                };
                if order.saga_id != saga_id {
                    return Ok(PayOutcome::WrongSaga);
                }
                match lifecycle::pay(&mut order, payment_ref) {
                    StatusMove::Changed => save_order(txn, &order)?,
                    StatusMove::Unchanged => {}
                    StatusMove::Refused => return Ok(PayOutcome::NotPayable(order)),
                }
                Ok(PayOutcome::Paid(order))
            })
            .await
    }

    async fn mark_shipped(&self, order_id: String) -> Result<ShipOutcome, StorageError> {
        self.db
            .write(move |txn| {
                let Some(mut order) = load_order(txn, &order_id)? else {
                    return Ok(ShipOutcome::UnknownOrder);
                };
                match lifecycle::ship(&mut order) {
                    StatusMove::Changed => save_order(txn, &order)?,
                    StatusMove::Unchanged => {}
                    StatusMove::Refused => return Ok(ShipOutcome::NotShippable(order)),
                }
                Ok(ShipOutcome::Shipped(order))
            })
            .await
    }
}

impl OrderQueries for EmbeddedOrders {
    async fn get_order(&self, order_id: String) -> Result<Option<Order>, StorageError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(ORDERS)?;
                let found = table.get(order_id.as_str())?;
                found.map(|v| decode(v.value())).transpose()
            })
            .await
    }

    async fn list_orders(
        &self,
        customer_id: String,
        page_size: usize,
        after: Option<u64>,
    ) -> Result<OrderPage, StorageError> {
        self.db
            .read(move |txn| {
                let index = txn.open_table(CUSTOMER_ORDERS)?;
                let orders = txn.open_table(ORDERS)?;
                // Keys hold u64::MAX - seq: the entry after `seq` is the next key.
                let start = after.map_or(0, |seq| (u64::MAX - seq).saturating_add(1));
                let customer = customer_id.as_str();
                let mut page = Vec::with_capacity(page_size);
                let mut last_seq = None;
                let mut next_after = None;
                for entry in index.range((customer, start)..=(customer, u64::MAX))? {
                    let (key, order_id) = entry?;
                    if page.len() == page_size {
                        next_after = last_seq;
                        break;
                    }
                    let (_, reversed) = key.value();
                    last_seq = Some(u64::MAX - reversed);
                    let found = orders.get(order_id.value())?;
                    let order: Order =
                        found
                            .map(|v| decode(v.value()))
                            .transpose()?
                            .ok_or_else(|| {
                                StorageError::Corrupt(format!(
                                    "customer index names order {}, which is not stored",
                                    order_id.value()
                                ))
                            })?;
                    page.push(order);
                }
                Ok(OrderPage {
                    orders: page,
                    next_after,
                })
            })
            .await
    }
}

impl microshop_storage::Ping for EmbeddedOrders {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}

impl microshop_storage::BarrierPurge for EmbeddedOrders {
    async fn purge_barrier(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        self.db
            .write(move |txn| barrier::purge(txn, before_ms, limit))
            .await
    }
}
