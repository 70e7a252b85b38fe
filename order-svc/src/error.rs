//! order-svc's errors and their one mapping to `tonic::Status`.

use microshop_runtime::{
    Reason,
    errors::{invalid_request, rich_status, storage_status},
};
use microshop_storage::StorageError;
use tonic::{Code, Status};

use crate::domain::OrderStatus;

/// Everything an order RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Bad fields: (field, why).
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    /// More points asked than the payable total allows.
    #[error("over-redemption: {requested} points asked, at most {max_points}")]
    OverRedemption {
        /// The request field carrying the points.
        field: &'static str,
        /// Points asked.
        requested: i64,
        /// Most points redeemable on this order.
        max_points: i64,
    },
    /// The coupon code is unknown.
    #[error("coupon {0} is invalid")]
    CouponInvalid(String),
    /// The coupon has no use left.
    #[error("coupon {0} is exhausted")]
    CouponExhausted(String),
    /// No such order.
    #[error("unknown order {0}")]
    UnknownOrder(String),
    /// No such coupon (admin lookup).
    #[error("unknown coupon {0}")]
    UnknownCoupon(String),
    /// CreateOrder after its CancelOrder (anti-hanging).
    #[error("saga {0} was already compensated")]
    SagaCompensated(String),
    /// The order belongs to another saga than the one named.
    #[error("order {order_id} was not created by saga {saga_id}")]
    WrongSaga {
        /// The saga named.
        saga_id: String,
        /// The order named.
        order_id: String,
    },
    /// CancelOrder named another order than the one its saga created.
    #[error("saga {saga_id} did not create order {order_id}")]
    WrongOrder {
        /// The saga named.
        saga_id: String,
        /// The order named.
        order_id: String,
    },
    /// The order has shipped (or, for a payment expiry, was paid).
    #[error("order {order_id} cannot be cancelled")]
    NotCancellable {
        /// The order.
        order_id: String,
        /// Its status.
        status: OrderStatus,
    },
    /// The order was cancelled.
    #[error("order {0} cannot be paid")]
    NotPayable(String),
    /// The order is not paid.
    #[error("order {order_id} cannot be shipped")]
    NotShippable {
        /// The order.
        order_id: String,
        /// Its status.
        status: OrderStatus,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<OrderError> for Status {
    fn from(err: OrderError) -> Self {
        match err {
            OrderError::Invalid(violations) => invalid_request(&violations),
            OrderError::OverRedemption {
                field,
                requested,
                max_points,
            } => invalid_request(&[(
                field.to_owned(),
                format!(
                    "{requested} points exceed the payable total; at most {max_points} points \
                     can be redeemed on this order, so redeem fewer"
                ),
            )]),
            OrderError::CouponInvalid(code) => rich_status(
                Code::FailedPrecondition,
                Reason::CouponInvalid,
                format!("coupon {code:?} does not exist; check the code or order without it"),
                [("couponCode", code)],
                None,
            ),
            OrderError::CouponExhausted(code) => rich_status(
                Code::FailedPrecondition,
                Reason::CouponExhausted,
                format!("coupon {code:?} has no uses left; order without it"),
                [("couponCode", code)],
                None,
            ),
            OrderError::UnknownOrder(order_id) => rich_status(
                Code::NotFound,
                Reason::UnknownOrder,
                format!("unknown order {order_id:?}; check the order id"),
                [("orderId", order_id)],
                None,
            ),
            OrderError::UnknownCoupon(code) => rich_status(
                Code::NotFound,
                Reason::UnknownCoupon,
                format!("unknown coupon {code:?}; create it with PutCoupon or fix the code"),
                [("couponCode", code)],
                None,
            ),
            OrderError::SagaCompensated(saga_id) => rich_status(
                Code::FailedPrecondition,
                Reason::SagaAlreadyCompensated,
                format!(
                    "saga {saga_id} was already compensated (its order was cancelled); \
                     the order is refused, start a new checkout"
                ),
                [("sagaId", saga_id)],
                None,
            ),
            OrderError::WrongSaga { saga_id, order_id } => invalid_request(&[(
                "saga_id".to_owned(),
                format!(
                    "order {order_id} was not created by saga {saga_id}; \
                     pass the saga that created it"
                ),
            )]),
            OrderError::WrongOrder { saga_id, order_id } => invalid_request(&[(
                "order_id".to_owned(),
                format!(
                    "saga {saga_id} did not create order {order_id}; \
                     pass that saga's order or leave order_id empty"
                ),
            )]),
            OrderError::NotCancellable { order_id, status } => {
                let (why, name) = if status == OrderStatus::Shipped {
                    ("has shipped and can no longer be cancelled", "shipped")
                } else {
                    ("was paid, so payment expiry no longer applies", "paid")
                };
                rich_status(
                    Code::FailedPrecondition,
                    Reason::OrderNotCancellable,
                    format!("order {order_id} {why}"),
                    [("orderId", order_id), ("status", name.to_owned())],
                    None,
                )
            }
            OrderError::NotPayable(order_id) => rich_status(
                Code::FailedPrecondition,
                Reason::OrderNotPayable,
                format!("order {order_id} was cancelled and cannot be paid; place a new order"),
                [("orderId", order_id), ("status", "cancelled".to_owned())],
                None,
            ),
            OrderError::NotShippable { order_id, status } => rich_status(
                Code::FailedPrecondition,
                Reason::OrderNotShippable,
                format!(
                    "order {order_id} is {}; only paid orders can be shipped, \
                     mark it paid first",
                    status.describe()
                ),
                [
                    ("orderId", order_id),
                    ("status", status.describe().to_owned()),
                ],
                None,
            ),
            OrderError::Storage(e) => storage_status(&e),
        }
    }
}
