//! The one place wire (prost) types and domain types meet. Every message is
//! destructured field by field, so a field added to the proto breaks the
//! build here until it is handled.
//!
//! Domain timestamps are unix milliseconds; the wire's
//! `google.protobuf.Timestamp` is built and read only here.

use microshop_proto::order::v1 as pb;
use prost_types::Timestamp;

use crate::{
    domain::{Coupon, CouponKind, NewOrder, Order, OrderLine, OrderStatus, Shipping, StatusChange},
    pricing::Pricing,
};

/// A wire message that cannot be a domain value (an unset enum, a missing
/// timestamp).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct WireError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: String,
}

/// The wire timestamp of unix milliseconds.
pub fn timestamp(ms: i64) -> Timestamp {
    let nanos = i32::try_from(ms.rem_euclid(1_000) * 1_000_000).unwrap_or(0);
    Timestamp {
        seconds: ms.div_euclid(1_000),
        nanos,
    }
}

/// Unix milliseconds of a wire timestamp (sub-millisecond digits dropped).
pub fn millis(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000)
        .saturating_add(i64::from(ts.nanos / 1_000_000))
}

impl From<pb::OrderLine> for OrderLine {
    fn from(line: pb::OrderLine) -> Self {
        let pb::OrderLine {
            sku,
            name,
            quantity,
            unit_price,
        } = line;
        Self {
            sku,
            name,
            quantity,
            unit_price,
        }
    }
}

impl From<OrderLine> for pb::OrderLine {
    fn from(line: OrderLine) -> Self {
        let OrderLine {
            sku,
            name,
            quantity,
            unit_price,
        } = line;
        Self {
            sku,
            name,
            quantity,
            unit_price,
        }
    }
}

impl From<pb::Shipping> for Shipping {
    fn from(s: pb::Shipping) -> Self {
        let pb::Shipping {
            name,
            address,
            phone,
        } = s;
        Self {
            name,
            address,
            phone,
        }
    }
}

impl From<Shipping> for pb::Shipping {
    fn from(s: Shipping) -> Self {
        let Shipping {
            name,
            address,
            phone,
        } = s;
        Self {
            name,
            address,
            phone,
        }
    }
}

impl From<OrderStatus> for pb::OrderStatus {
    fn from(status: OrderStatus) -> Self {
        match status {
            OrderStatus::PendingPayment => Self::PendingPayment,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Shipped => Self::Shipped,
            OrderStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// The domain status of a wire enum value.
pub fn status_from_wire(value: i32) -> Result<OrderStatus, WireError> {
    match pb::OrderStatus::try_from(value) {
        Ok(pb::OrderStatus::PendingPayment) => Ok(OrderStatus::PendingPayment),
        Ok(pb::OrderStatus::Paid) => Ok(OrderStatus::Paid),
        Ok(pb::OrderStatus::Shipped) => Ok(OrderStatus::Shipped),
        Ok(pb::OrderStatus::Cancelled) => Ok(OrderStatus::Cancelled),
        Ok(pb::OrderStatus::Unspecified) | Err(_) => Err(WireError {
            field: "status",
            why: format!("{value} is not an order status"),
        }),
    }
}

impl From<CouponKind> for pb::CouponKind {
    fn from(kind: CouponKind) -> Self {
        match kind {
            CouponKind::Percentage => Self::Percentage,
            CouponKind::Fixed => Self::Fixed,
        }
    }
}

/// The domain coupon kind of a wire enum value; `None` when unset or unknown.
pub fn coupon_kind_from_wire(value: i32) -> Option<CouponKind> {
    match pb::CouponKind::try_from(value) {
        Ok(pb::CouponKind::Percentage) => Some(CouponKind::Percentage),
        Ok(pb::CouponKind::Fixed) => Some(CouponKind::Fixed),
        Ok(pb::CouponKind::Unspecified) | Err(_) => None,
    }
}

impl From<StatusChange> for pb::StatusChange {
    fn from(change: StatusChange) -> Self {
        let StatusChange {
            status,
            at_ms,
            note,
        } = change;
        Self {
            status: pb::OrderStatus::from(status).into(),
            at: Some(timestamp(at_ms)),
            note,
        }
    }
}

impl TryFrom<pb::StatusChange> for StatusChange {
    type Error = WireError;

    fn try_from(change: pb::StatusChange) -> Result<Self, WireError> {
        let pb::StatusChange { status, at, note } = change;
        Ok(Self {
            status: status_from_wire(status)?,
            at_ms: at.as_ref().map(millis).ok_or(WireError {
                field: "status_history.at",
                why: "is missing".to_owned(),
            })?,
            note,
        })
    }
}

impl From<Pricing> for pb::Pricing {
    fn from(p: Pricing) -> Self {
        let Pricing {
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            redeemed_points,
            points_discount_price,
            total_price,
        } = p;
        Self {
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            redeemed_points,
            points_discount_price,
            total_price,
        }
    }
}

impl From<pb::Pricing> for Pricing {
    fn from(p: pb::Pricing) -> Self {
        let pb::Pricing {
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            redeemed_points,
            points_discount_price,
            total_price,
        } = p;
        Self {
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            redeemed_points,
            points_discount_price,
            total_price,
        }
    }
}

impl From<Order> for pb::Order {
    fn from(order: Order) -> Self {
        let Order {
            order_id,
            customer_id,
            lines,
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            coupon_code,
            redeemed_points,
            points_discount_price,
            total_price,
            status,
            status_history,
            created_at_ms,
            paid_at_ms,
            saga_id,
            shipping,
            payment_ref,
            cancelled_at_ms,
        } = order;
        Self {
            order_id,
            customer_id,
            lines: lines.into_iter().map(Into::into).collect(),
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            coupon_code: coupon_code.unwrap_or_default(),
            redeemed_points,
            points_discount_price,
            total_price,
            status: pb::OrderStatus::from(status).into(),
            status_history: status_history.into_iter().map(Into::into).collect(),
            created_at: Some(timestamp(created_at_ms)),
            paid_at: paid_at_ms.map(timestamp),
            saga_id,
            shipping: Some(shipping.into()),
            payment_ref,
            cancelled_at: cancelled_at_ms.map(timestamp),
        }
    }
}

impl TryFrom<pb::Order> for Order {
    type Error = WireError;

    fn try_from(order: pb::Order) -> Result<Self, WireError> {
        let pb::Order {
            order_id,
            customer_id,
            lines,
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            coupon_code,
            redeemed_points,
            points_discount_price,
            total_price,
            status,
            status_history,
            created_at,
            paid_at,
            saga_id,
            shipping,
            payment_ref,
            cancelled_at,
        } = order;
        Ok(Self {
            order_id,
            customer_id,
            lines: lines.into_iter().map(Into::into).collect(),
            items_price,
            tax_price,
            shipping_price,
            discount_price,
            coupon_code: Some(coupon_code).filter(|c| !c.is_empty()),
            redeemed_points,
            points_discount_price,
            total_price,
            status: status_from_wire(status)?,
            status_history: status_history
                .into_iter()
                .map(StatusChange::try_from)
                .collect::<Result<_, _>>()?,
            created_at_ms: created_at.as_ref().map(millis).ok_or(WireError {
                field: "created_at",
                why: "is missing".to_owned(),
            })?,
            paid_at_ms: paid_at.as_ref().map(millis),
            saga_id,
            shipping: shipping.map(Into::into).unwrap_or_default(),
            payment_ref,
            cancelled_at_ms: cancelled_at.as_ref().map(millis),
        })
    }
}

impl From<pb::CreateOrderRequest> for NewOrder {
    fn from(req: pb::CreateOrderRequest) -> Self {
        let pb::CreateOrderRequest {
            saga_id,
            customer_id,
            lines,
            coupon_code,
            redeemed_points,
            shipping,
        } = req;
        Self {
            saga_id,
            customer_id,
            lines: lines.into_iter().map(Into::into).collect(),
            coupon_code: Some(coupon_code).filter(|c| !c.is_empty()),
            redeemed_points,
            shipping: shipping.map(Into::into).unwrap_or_default(),
        }
    }
}

impl From<Coupon> for pb::Coupon {
    fn from(c: Coupon) -> Self {
        let Coupon {
            code,
            kind,
            value,
            usage_limit,
            times_used,
        } = c;
        Self {
            code,
            kind: pb::CouponKind::from(kind).into(),
            value,
            usage_limit,
            times_used,
        }
    }
}

impl From<Coupon> for pb::PutCouponResponse {
    fn from(c: Coupon) -> Self {
        let pb::Coupon {
            code,
            kind,
            value,
            usage_limit,
            times_used,
        } = c.into();
        Self {
            code,
            kind,
            value,
            usage_limit,
            times_used,
        }
    }
}

impl From<Coupon> for pb::GetCouponResponse {
    fn from(c: Coupon) -> Self {
        let pb::Coupon {
            code,
            kind,
            value,
            usage_limit,
            times_used,
        } = c.into();
        Self {
            code,
            kind,
            value,
            usage_limit,
            times_used,
        }
    }
}

#[cfg(test)]
mod tests {
    use microshop_storage::{decode, encode};

    use super::*;

    /// An order with every field set to a distinct, non-default value.
    fn full_order() -> Order {
        Order {
            order_id: "0190f5c2-7a1b-7c3d-8e4f-123456789abc".into(),
            customer_id: "cust-1".into(),
            lines: vec![
                OrderLine {
                    sku: "SKU-A".into(),
                    name: "Áo thun".into(),
                    quantity: 2,
                    unit_price: 150_000,
                },
                OrderLine {
                    sku: "SKU-B".into(),
                    name: "Quần".into(),
                    quantity: 1,
                    unit_price: 99_999,
                },
            ],
            items_price: 399_999,
            tax_price: 40_000,
            shipping_price: 50_000,
            discount_price: 39_999,
            coupon_code: Some("SAVE10".into()),
            redeemed_points: 7,
            points_discount_price: 7_000,
            total_price: 443_000,
            status: OrderStatus::Cancelled,
            status_history: vec![
                StatusChange {
                    status: OrderStatus::PendingPayment,
                    at_ms: 1_700_000_000_123,
                    note: "order created".into(),
                },
                StatusChange {
                    status: OrderStatus::Paid,
                    at_ms: 1_700_000_001_456,
                    note: "payment pay-1 received".into(),
                },
                StatusChange {
                    status: OrderStatus::Cancelled,
                    at_ms: 1_700_000_002_789,
                    note: "customer changed their mind".into(),
                },
            ],
            created_at_ms: 1_700_000_000_123,
            paid_at_ms: Some(1_700_000_001_456),
            saga_id: "saga-1".into(),
            shipping: Shipping {
                name: "Nguyễn Văn A".into(),
                address: "1 Lê Lợi, Q1, TP.HCM".into(),
                phone: "+84 90 000 0000".into(),
            },
            payment_ref: "pay-1".into(),
            cancelled_at_ms: Some(1_700_000_002_789),
        }
    }

    #[test]
    fn order_round_trips_through_storage_encoding() {
        let order = full_order();
        let bytes = encode(&order).expect("encode");
        let back: Order = decode(&bytes).expect("decode");
        assert_eq!(back, order);
    }

    #[test]
    fn order_round_trips_through_the_wire() {
        let order = full_order();
        let wire = pb::Order::from(order.clone());
        assert_eq!(wire.coupon_code, "SAVE10");
        assert_eq!(wire.redeemed_points, 7);
        assert_eq!(wire.points_discount_price, 7_000);
        assert_eq!(
            wire.paid_at,
            Some(Timestamp {
                seconds: 1_700_000_001,
                nanos: 456_000_000
            })
        );
        let back = Order::try_from(wire).expect("valid wire order");
        assert_eq!(back, order);
    }

    #[test]
    fn order_without_optionals_round_trips() {
        let order = Order {
            coupon_code: None,
            paid_at_ms: None,
            cancelled_at_ms: None,
            shipping: Shipping::default(),
            payment_ref: String::new(),
            status: OrderStatus::PendingPayment,
            ..full_order()
        };
        let back = Order::try_from(pb::Order::from(order.clone())).expect("valid");
        assert_eq!(back, order);
    }

    #[test]
    fn timestamps_round_trip_before_the_epoch() {
        for ms in [-1_001, -1, 0, 1, 999, 1_000, 1_700_000_000_123] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
    }

    #[test]
    fn unset_status_is_rejected() {
        let wire = pb::Order {
            status: 0,
            ..pb::Order::from(full_order())
        };
        assert_eq!(Order::try_from(wire).unwrap_err().field, "status");
    }
}
