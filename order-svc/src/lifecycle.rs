//! The store-independent part of the order life cycle: what CreateOrder and
//! CancelOrder record in the barrier, how a new order is checked and priced,
//! and which status moves are allowed. Both backends call these, so they
//! differ only in how they read and write, never in what they decide.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{
    domain::{Coupon, NewOrder, Order, OrderStatus, StatusChange},
    pricing::{OverRedemption, PricingRules, price},
};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What CreateOrder recorded in the barrier (replayed to repeats).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CreateRecord {
    /// The order was stored.
    Created {
        /// Its id.
        order_id: String,
    },
    /// No such coupon.
    CouponInvalid {
        /// The code.
        code: String,
    },
    /// The coupon had no use left.
    CouponExhausted {
        /// The code.
        code: String,
    },
    /// More points than the payable total.
    OverRedemption {
        /// Points asked.
        requested: i64,
        /// Most points redeemable.
        max_points: i64,
    },
}

/// What CancelOrder recorded in the barrier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CancelRecord {
    /// The saga's order is cancelled.
    Cancelled {
        /// Its id.
        order_id: String,
    },
    /// The saga never created an order (null compensation).
    NothingCreated,
}

/// Checks `new` against its coupon (`None` when it names none; `Some(None)`
/// when the code is unknown) and prices it; the order to store, or the
/// rejection to record. The caller consumes the coupon use.
pub fn build_order(
    new: NewOrder,
    coupon: Option<Option<&Coupon>>,
    rules: &PricingRules,
) -> Result<Order, CreateRecord> {
    let coupon = match (&new.coupon_code, coupon) {
        (Some(code), None | Some(None)) => {
            return Err(CreateRecord::CouponInvalid { code: code.clone() });
        }
        (Some(code), Some(Some(c))) if c.times_used >= c.usage_limit => {
            return Err(CreateRecord::CouponExhausted { code: code.clone() });
        }
        (Some(_), Some(Some(c))) => Some(c),
        (None, _) => None,
    };
    let pricing = price(rules, &new.lines, coupon, new.redeemed_points).map_err(
        |OverRedemption { max_points }| CreateRecord::OverRedemption {
            requested: new.redeemed_points,
            max_points,
        },
    )?;
    let now = now_ms();
    let NewOrder {
        saga_id,
        customer_id,
        lines,
        coupon_code,
        redeemed_points: _, // priced: `pricing.redeemed_points`
        shipping,
    } = new;
    Ok(Order {
        order_id: uuid::Uuid::now_v7().to_string(),
        customer_id,
        lines,
        items_price: pricing.items_price,
        tax_price: pricing.tax_price,
        shipping_price: pricing.shipping_price,
        discount_price: pricing.discount_price,
        coupon_code,
        redeemed_points: pricing.redeemed_points,
        points_discount_price: pricing.points_discount_price,
        total_price: pricing.total_price,
        status: OrderStatus::PendingPayment,
        status_history: vec![StatusChange {
            status: OrderStatus::PendingPayment,
            at_ms: now,
            note: "order created".to_owned(),
        }],
        created_at_ms: now,
        paid_at_ms: None,
        saga_id,
        shipping,
        payment_ref: String::new(),
        cancelled_at_ms: None,
        pricing_rules: *rules,
    })
}

/// What cancelling `order` does.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelMove {
    /// The order was cancelled now: store it, give its coupon use back.
    Cancelled,
    /// It already was: nothing to write.
    AlreadyCancelled,
    /// Shipped, or paid while only an unpaid order may go: nothing changes.
    NotCancellable,
}

/// Cancels `order` in memory if it may be.
pub fn cancel(order: &mut Order, reason: String, only_if_unpaid: bool) -> CancelMove {
    match order.status {
        OrderStatus::Shipped => CancelMove::NotCancellable,
        // A payment expiry racing a payment: the payment wins.
        OrderStatus::Paid if only_if_unpaid => CancelMove::NotCancellable,
        OrderStatus::Cancelled => CancelMove::AlreadyCancelled,
        OrderStatus::PendingPayment | OrderStatus::Paid => {
            let now = now_ms();
            order.enter(OrderStatus::Cancelled, now, reason);
            order.cancelled_at_ms = Some(now);
            CancelMove::Cancelled
        }
    }
}

/// What a status move did.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusMove {
    /// The order changed: store it.
    Changed,
    /// It already was there (or beyond): nothing to write.
    Unchanged,
    /// Its status does not allow the move.
    Refused,
}

/// Marks `order` paid in memory (a cancelled order refuses).
pub fn pay(order: &mut Order, payment_ref: String) -> StatusMove {
    match order.status {
        OrderStatus::PendingPayment => {
            let now = now_ms();
            order.enter(
                OrderStatus::Paid,
                now,
                format!("payment {payment_ref} received"),
            );
            order.paid_at_ms = Some(now);
            order.payment_ref = payment_ref;
            StatusMove::Changed
        }
        OrderStatus::Paid | OrderStatus::Shipped => StatusMove::Unchanged,
        OrderStatus::Cancelled => StatusMove::Refused,
    }
}

/// Marks a paid `order` shipped in memory.
pub fn ship(order: &mut Order) -> StatusMove {
    match order.status {
        OrderStatus::Paid => {
            order.enter(OrderStatus::Shipped, now_ms(), "handed to the carrier");
            StatusMove::Changed
        }
        OrderStatus::Shipped => StatusMove::Unchanged,
        OrderStatus::PendingPayment | OrderStatus::Cancelled => StatusMove::Refused,
    }
}
