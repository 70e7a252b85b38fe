//! The order stores on the embedded engine (`order.fjall`).
//!
//! Tables: orders by id, coupons by code, a per-customer index keyed
//! `(customer_id, u64::MAX - seq)` so a forward range scan lists a
//! customer's orders newest first, the orders by checkout saga (what a
//! cancel finds its order by once the barrier entry has expired), and a
//! meta table holding the last `seq` handed out (monotonic, so it is also
//! the opaque page token). CreateOrder and CancelOrder record their barrier
//! outcome in the same write job as their effect; every job checks
//! everything before its first write, and every write (a participant's
//! answer) is durable before it is answered.

use std::path::Path;

use microshop_storage::{
    StorageError,
    barrier::{self, ActionGate},
    decode,
    embedded::{Durable, EmbeddedDb, Sync, Table, Txn, read_u64, u64_value},
    encode,
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

/// Order id → order.
pub const ORDERS: Table = Table::new(1, "orders");
/// Coupon code → coupon.
pub const COUPONS: Table = Table::new(2, "coupons");
/// `(customer_id, u64::MAX - seq)` → order id.
pub const CUSTOMER_ORDERS: Table = Table::new(3, "customer_orders");
/// Counters.
pub const META: Table = Table::new(4, "meta");
/// Checkout saga id → the order it created: the business record a cancel
/// finds its order by (and a late CreateOrder replays), which outlives the
/// barrier's retention.
pub const SAGA_ORDERS: Table = Table::new(5, "saga_orders");

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
        let db = EmbeddedDb::open(dir, "order", durable, |_| Ok(()))?;
        Ok(Self { db })
    }
}

/// The order checkout `saga_id` created, if any.
fn order_of_saga(txn: &Txn, saga_id: &str) -> Result<Option<String>, StorageError> {
    txn.get(&SAGA_ORDERS.str_key(saga_id))?
        .map(|v| {
            String::from_utf8(v.to_vec())
                .map_err(|_| StorageError::Corrupt(format!("saga {saga_id}'s order id")))
        })
        .transpose()
}

fn load_order(txn: &Txn, order_id: &str) -> Result<Option<Order>, StorageError> {
    txn.get(&ORDERS.str_key(order_id))?
        .map(|v| decode(&v))
        .transpose()
}

/// Loads an order a barrier record names: missing means corruption.
fn load_recorded_order(txn: &Txn, order_id: &str) -> Result<Order, StorageError> {
    load_order(txn, order_id)?.ok_or_else(|| {
        StorageError::Corrupt(format!(
            "barrier names order {order_id}, which is not stored"
        ))
    })
}

fn save_order(txn: &mut Txn, order: &Order) -> Result<(), StorageError> {
    txn.put(ORDERS.str_key(&order.order_id), encode(order)?);
    Ok(())
}

fn load_coupon(txn: &Txn, code: &str) -> Result<Option<Coupon>, StorageError> {
    txn.get(&COUPONS.str_key(code))?
        .map(|v| decode(&v))
        .transpose()
}

fn save_coupon(txn: &mut Txn, coupon: &Coupon) -> Result<(), StorageError> {
    txn.put(COUPONS.str_key(&coupon.code), encode(coupon)?);
    Ok(())
}

/// Hands out the next order sequence number (1, 2, ...).
fn next_seq(txn: &mut Txn) -> Result<u64, StorageError> {
    let key = META.str_key(ORDER_SEQ);
    let last = txn
        .get(&key)?
        .map(|v| read_u64(&v))
        .transpose()?
        .unwrap_or(0);
    let seq = last + 1;
    txn.put(key, u64_value(seq));
    Ok(seq)
}

/// Checks the coupon and prices the order, then stores it; writes nothing
/// unless every check passed.
fn create_in(
    txn: &mut Txn,
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
    txn.put(
        SAGA_ORDERS.str_key(&order.saga_id),
        order.order_id.as_bytes().to_vec(),
    );
    txn.put(
        CUSTOMER_ORDERS
            .key()
            .str(&order.customer_id)
            .u64(u64::MAX - seq)
            .done(),
        order.order_id.as_bytes().to_vec(),
    );
    Ok(CreateRecord::Created {
        order_id: order.order_id,
    })
}

/// The outcome a create record stands for, with the order as it is now.
fn create_outcome(txn: &mut Txn, record: CreateRecord) -> Result<CreateOutcome, StorageError> {
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
fn give_coupon_back(txn: &mut Txn, code: &str) -> Result<(), StorageError> {
    if let Some(mut coupon) = load_coupon(txn, code)?
        && coupon.times_used > 0
    {
        coupon.times_used -= 1;
        save_coupon(txn, &coupon)?;
    }
    Ok(())
}

fn cancel_in(
    txn: &mut Txn,
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
            .write(Sync::Durable, move |txn| {
                let times_used = load_coupon(txn, &update.code)?.map_or(0, |c| c.times_used);
                let coupon = update.into_coupon(times_used);
                save_coupon(txn, &coupon)?;
                Ok(coupon)
            })
            .await
    }

    async fn get_coupon(&self, code: String) -> Result<Option<Coupon>, StorageError> {
        self.db
            .read(move |view| {
                view.get(&COUPONS.str_key(&code))?
                    .map(|v| decode(&v))
                    .transpose()
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
            .write(Sync::Durable, move |txn| {
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
            .write(Sync::Durable, move |txn| {
                cancel_in(txn, &saga_id, order_id, reason, only_if_unpaid)
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
            .write(Sync::Durable, move |txn| {
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
            .write(Sync::Durable, move |txn| {
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
            .read(move |view| {
                view.get(&ORDERS.str_key(&order_id))?
                    .map(|v| decode(&v))
                    .transpose()
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
            .read(move |view| {
                // Keys hold u64::MAX - seq: the entry after `seq` is the next key.
                let start = after.map_or(0, |seq| (u64::MAX - seq).saturating_add(1));
                let range = CUSTOMER_ORDERS.key().str(&customer_id).u64(start).done()
                    ..CUSTOMER_ORDERS
                        .starting(CUSTOMER_ORDERS.key().str(&customer_id))
                        .end;
                let entries = view.scan(range, page_size + 1, false)?;
                let mut page = Vec::with_capacity(page_size);
                let mut next_after = None;
                for (i, (key, order_id)) in entries.iter().enumerate() {
                    let mut r = CUSTOMER_ORDERS.read(key)?;
                    let _customer = r.str()?;
                    let seq = u64::MAX - r.u64()?;
                    if i == page_size {
                        break;
                    }
                    if entries.len() > page_size && i + 1 == page_size {
                        next_after = Some(seq);
                    }
                    let order_id = String::from_utf8_lossy(order_id).into_owned();
                    let order: Order = view
                        .get(&ORDERS.str_key(&order_id))?
                        .map(|v| decode(&v))
                        .transpose()?
                        .ok_or_else(|| {
                            StorageError::Corrupt(format!(
                                "customer index names order {order_id}, which is not stored"
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
            // Lost in a power cut, it is simply purged again.
            .write(Sync::Buffered, move |txn| {
                barrier::purge(txn, before_ms, limit)
            })
            .await
    }
}
