//! Order domain types, free of wire and storage concerns.
//!
//! Timestamps are unix milliseconds here; the wire's
//! `google.protobuf.Timestamp` is built in `conversions` only. Every pricing
//! field of an order is a typed field of [`Order`], so storage and the wire
//! carry all of them (the old shop silently dropped two).

use serde::{Deserialize, Serialize};

use crate::pricing::PricingRules;

/// One priced line of an order (prices from the inventory reservation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Product name at order time.
    pub name: String,
    /// Units ordered.
    pub quantity: i64,
    /// Catalog unit price at order time (smallest currency unit).
    pub unit_price: i64,
}

/// Where an order ships to. Every field is optional text (empty = not given).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipping {
    /// Recipient name.
    pub name: String,
    /// Postal address.
    pub address: String,
    /// Phone number.
    pub phone: String,
}

/// The life of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Created; stock is reserved until payment or expiry.
    PendingPayment,
    /// Paid; stock is sold.
    Paid,
    /// Handed to the carrier; can no longer be cancelled.
    Shipped,
    /// Cancelled (a failed checkout, the customer, or payment expiry).
    Cancelled,
}

impl OrderStatus {
    /// A plain-English name for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending payment",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One entry of an order's status history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The status entered.
    pub status: OrderStatus,
    /// When, in unix milliseconds.
    pub at_ms: i64,
    /// Why, in plain words.
    pub note: String,
}

/// A stored order with every pricing field.
/// Invariant: `total_price = items_price + tax_price + shipping_price -
/// discount_price - points_discount_price >= 0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Order id (a UUID v7, so ids sort by creation time).
    pub order_id: String,
    /// Who placed it.
    pub customer_id: String,
    /// Priced lines.
    pub lines: Vec<OrderLine>,
    /// Sum of quantity x unit price.
    pub items_price: i64,
    /// Tax on the items.
    pub tax_price: i64,
    /// Shipping.
    pub shipping_price: i64,
    /// Coupon discount.
    pub discount_price: i64,
    /// Coupon used, if any.
    pub coupon_code: Option<String>,
    /// Points redeemed.
    pub redeemed_points: i64,
    /// Discount from redeemed points.
    pub points_discount_price: i64,
    /// What the customer pays.
    pub total_price: i64,
    /// Current status.
    pub status: OrderStatus,
    /// Every status the order went through, oldest first.
    pub status_history: Vec<StatusChange>,
    /// When it was created (unix milliseconds).
    pub created_at_ms: i64,
    /// When it was paid, if it was.
    pub paid_at_ms: Option<i64>,
    /// The checkout saga that created it.
    pub saga_id: String,
    /// Where it ships.
    pub shipping: Shipping,
    /// Payment reference given at MarkPaid (empty until paid).
    pub payment_ref: String,
    /// When it was cancelled, if it was.
    pub cancelled_at_ms: Option<i64>,
    /// The rules it was priced with, kept for its whole life: a later
    /// change of settings never reprices it, and its payment earns points
    /// at its own `earn_amount_per_point`. Orders stored before the rules
    /// were recorded were priced by the seed rules, hence the default.
    #[serde(default)]
    pub pricing_rules: PricingRules,
}

impl Order {
    /// Moves the order to `status` at `at_ms`, appending to its history.
    pub fn enter(&mut self, status: OrderStatus, at_ms: i64, note: impl Into<String>) {
        self.status = status;
        self.status_history.push(StatusChange {
            status,
            at_ms,
            note: note.into(),
        });
    }
}

/// What CreateOrder asks for (prices are recomputed server-side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// The checkout saga creating the order.
    pub saga_id: String,
    /// Who places it.
    pub customer_id: String,
    /// Lines priced from the inventory reservation.
    pub lines: Vec<OrderLine>,
    /// Coupon to consume, if any.
    pub coupon_code: Option<String>,
    /// Points already deducted for this order.
    pub redeemed_points: i64,
    /// Where it ships.
    pub shipping: Shipping,
}

/// How a coupon discounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CouponKind {
    /// `value` percent of the items price (1 to 100).
    Percentage,
    /// `value` off, capped at the items price.
    Fixed,
}

/// A coupon and how often live orders use it.
/// Invariant: `times_used <= usage_limit` when a use is taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    /// Code.
    pub code: String,
    /// Percentage or fixed.
    pub kind: CouponKind,
    /// Percent or amount.
    pub value: i64,
    /// Maximum uses.
    pub usage_limit: i64,
    /// Uses by live (not cancelled) orders.
    pub times_used: i64,
}

/// What PutCoupon sets (the use count is kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CouponUpdate {
    /// Code.
    pub code: String,
    /// Percentage or fixed.
    pub kind: CouponKind,
    /// Percent or amount.
    pub value: i64,
    /// Maximum uses.
    pub usage_limit: i64,
}

impl CouponUpdate {
    /// The coupon this update makes, keeping the `times_used` uses already
    /// made (0 for a new coupon).
    pub fn into_coupon(self, times_used: i64) -> Coupon {
        let Self {
            code,
            kind,
            value,
            usage_limit,
        } = self;
        Coupon {
            code,
            kind,
            value,
            usage_limit,
            times_used,
        }
    }
}

/// The outcome of CreateOrder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The order (as it is now, when a repeated delivery replays); boxed,
    /// as it is far larger than the rejections.
    Created(Box<Order>),
    /// No such coupon: nothing stored.
    CouponInvalid(String),
    /// The coupon has no use left: nothing stored.
    CouponExhausted(String),
    /// More points than the payable total: nothing stored.
    OverRedemption {
        /// Points asked.
        requested: i64,
        /// Most points that could be redeemed on this order.
        max_points: i64,
    },
}

/// The outcome of CancelOrder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The order is cancelled (now, or already was).
    Cancelled(Order),
    /// The saga never created an order (null compensation, recorded).
    NothingCreated,
    /// The order id given is not the one the saga created.
    WrongOrder {
        /// The id given.
        given: String,
    },
    /// The order has shipped; nothing changed.
    NotCancellable(Order),
}

/// The outcome of MarkPaid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayOutcome {
    /// The order is paid (now, or already was, or has shipped since).
    Paid(Order),
    /// No such order.
    UnknownOrder,
    /// The order was created by another saga; nothing changed.
    WrongSaga,
    /// The order was cancelled; nothing changed.
    NotPayable(Order),
}

/// The outcome of MarkShipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShipOutcome {
    /// The order is shipped (now, or already was).
    Shipped(Order),
    /// No such order.
    UnknownOrder,
    /// The order is not paid; nothing changed.
    NotShippable(Order),
}

/// One page of a customer's orders, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPage {
    /// The orders.
    pub orders: Vec<Order>,
    /// Sequence number of the last order returned when more follow.
    pub next_after: Option<u64>,
}
