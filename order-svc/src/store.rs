//! Order storage traits, split by capability. Each method is one atomic
//! unit: the embedded and MongoDB backends both implement it as a single
//! transaction (effect + barrier record), and return business outcomes as
//! values and only storage failures as errors.

use std::future::Future;

use microshop_storage::StorageError;

use crate::{
    domain::{
        CancelOutcome, Coupon, CouponUpdate, CreateOutcome, NewOrder, Order, OrderPage, PayOutcome,
        ShipOutcome,
    },
    pricing::PricingRules,
};

/// Coupons and their use counts.
pub trait CouponStore: Clone + Send + Sync + 'static {
    /// Upserts a coupon, keeping the uses already made.
    fn put_coupon(
        &self,
        update: CouponUpdate,
    ) -> impl Future<Output = Result<Coupon, StorageError>> + Send;

    /// Looks a coupon up; `None` when unknown.
    fn get_coupon(
        &self,
        code: String,
    ) -> impl Future<Output = Result<Option<Coupon>, StorageError>> + Send;
}

/// The order life cycle driven by sagas (create and cancel are
/// barrier-protected; pay and ship are idempotent by status).
pub trait OrderStore: Clone + Send + Sync + 'static {
    /// Prices `order` with `rules`, consumes one use of its coupon and stores
    /// it, or stores nothing and returns the rejection. A repeated delivery
    /// replays the first outcome (with the order as it is now). `None` when
    /// the saga's CancelOrder already ran (the action is refused).
    fn create_order(
        &self,
        order: NewOrder,
        rules: PricingRules,
    ) -> impl Future<Output = Result<Option<CreateOutcome>, StorageError>> + Send;

    /// Cancels the order `saga_id` created and gives its coupon use back.
    /// `order_id`, when given, must be that order. With `only_if_unpaid`,
    /// a paid order is not cancellable (payment expiry).
    fn cancel_order(
        &self,
        saga_id: String,
        order_id: Option<String>,
        reason: String,
        only_if_unpaid: bool,
    ) -> impl Future<Output = Result<CancelOutcome, StorageError>> + Send;

    /// Marks an order of `saga_id` paid with `payment_ref`.
    fn mark_paid(
        &self,
        saga_id: String,
        order_id: String,
        payment_ref: String,
    ) -> impl Future<Output = Result<PayOutcome, StorageError>> + Send;

    /// Marks a paid order shipped.
    fn mark_shipped(
        &self,
        order_id: String,
    ) -> impl Future<Output = Result<ShipOutcome, StorageError>> + Send;
}

/// Reading orders.
pub trait OrderQueries: Clone + Send + Sync + 'static {
    /// One order; `None` when unknown.
    fn get_order(
        &self,
        order_id: String,
    ) -> impl Future<Output = Result<Option<Order>, StorageError>> + Send;

    /// Up to `page_size` orders of `customer_id`, newest first, after the
    /// order numbered `after` (from [`OrderPage::next_after`]) if given.
    fn list_orders(
        &self,
        customer_id: String,
        page_size: usize,
        after: Option<u64>,
    ) -> impl Future<Output = Result<OrderPage, StorageError>> + Send;
}
