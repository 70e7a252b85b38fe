//! The one place wire (prost) types and domain types meet. Every message is
//! destructured field by field, so a field added to the proto breaks the
//! build here until it is handled.
//!
//! Domain timestamps are unix milliseconds; the wire's
//! `google.protobuf.Timestamp` is built and read only here.

use microshop_proto::order::v1 as pb;
use prost_types::Timestamp;

use crate::{
    currency::Currency,
    domain::{Coupon, CouponKind, NewOrder, Order, OrderLine, OrderStatus, Shipping, StatusChange},
    pricing::{Pricing, PricingRules},
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

impl From<PricingRules> for pb::PricingRules {
    fn from(r: PricingRules) -> Self {
        let PricingRules {
            tax_rate_bp,
            shipping_price,
            free_shipping_from,
            point_value,
            earn_amount_per_point,
            currency,
        } = r;
        Self {
            tax_rate_bp,
            shipping_price,
            free_shipping_from,
            point_value,
            earn_amount_per_point,
            currency: currency.to_string(),
        }
    }
}

impl TryFrom<pb::PricingRules> for PricingRules {
    type Error = WireError;

    fn try_from(r: pb::PricingRules) -> Result<Self, WireError> {
        let pb::PricingRules {
            tax_rate_bp,
            shipping_price,
            free_shipping_from,
            point_value,
            earn_amount_per_point,
            currency,
        } = r;
        Ok(Self {
            tax_rate_bp,
            shipping_price,
            free_shipping_from,
            point_value,
            earn_amount_per_point,
            currency: Currency::try_from(currency.as_str()).map_err(|why| WireError {
                field: "pricing_rules.currency",
                why,
            })?,
        })
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
            pricing_rules,
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
            pricing_rules: Some(pricing_rules.into()),
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
            pricing_rules,
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
            // Absent only from a sender that predates recorded rules, whose
            // orders were priced by the seed rules.
            pricing_rules: pricing_rules
                .map(PricingRules::try_from)
                .transpose()?
                .unwrap_or_default(),
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
            pricing_rules: PricingRules {
                tax_rate_bp: 825,
                shipping_price: 599,
                free_shipping_from: 5_000,
                point_value: 1,
                earn_amount_per_point: 250,
                currency: "USD".parse().expect("ISO 4217"),
            },
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

    /// An order exactly as the store wrote it before orders recorded their
    /// pricing rules: it loads with the seed rules it was priced by.
    #[test]
    fn an_order_stored_before_pricing_rules_loads_with_the_seed_rules() {
        let stored = r#"{"order_id":"0190f5c2-7a1b-7c3d-8e4f-123456789abc","customer_id":"cust-1","lines":[{"sku":"SKU-A","name":"Áo thun","quantity":2,"unit_price":150000}],"items_price":300000,"tax_price":30000,"shipping_price":50000,"discount_price":0,"coupon_code":null,"redeemed_points":0,"points_discount_price":0,"total_price":380000,"status":"Paid","status_history":[{"status":"PendingPayment","at_ms":1700000000123,"note":"order created"},{"status":"Paid","at_ms":1700000001456,"note":"payment pay-1 received"}],"created_at_ms":1700000000123,"paid_at_ms":1700000001456,"saga_id":"saga-1","shipping":{"name":"","address":"","phone":""},"payment_ref":"pay-1","cancelled_at_ms":null}"#;
        let order: Order = decode(stored.as_bytes()).expect("an old record decodes");
        assert_eq!(order.total_price, 380_000);
        assert_eq!(order.status, OrderStatus::Paid);
        let seed = PricingRules {
            tax_rate_bp: 1_000,
            shipping_price: 50_000,
            free_shipping_from: 2_000_000,
            point_value: 1_000,
            earn_amount_per_point: 100_000,
            currency: Currency::VND,
        };
        assert_eq!(order.pricing_rules, seed);
        // GetOrder shows them.
        let wire = pb::Order::from(order);
        assert_eq!(
            wire.pricing_rules,
            Some(pb::PricingRules {
                tax_rate_bp: 1_000,
                shipping_price: 50_000,
                free_shipping_from: 2_000_000,
                point_value: 1_000,
                earn_amount_per_point: 100_000,
                currency: "VND".into(),
            })
        );
    }

    #[test]
    fn recorded_rules_round_trip_through_the_wire() {
        let wire = pb::Order::from(full_order());
        let rules = wire.pricing_rules.clone().expect("recorded");
        assert_eq!(rules.tax_rate_bp, 825);
        assert_eq!(rules.currency, "USD");
        assert_eq!(rules.earn_amount_per_point, 250);
        // A sender that predates recorded rules: the seed rules.
        let old = pb::Order {
            pricing_rules: None,
            ..wire.clone()
        };
        let back = Order::try_from(old).expect("valid");
        assert_eq!(back.pricing_rules, PricingRules::default());
        // A malformed currency is refused, not guessed.
        let bad = pb::Order {
            pricing_rules: Some(pb::PricingRules {
                currency: "dollar".into(),
                ..rules
            }),
            ..wire
        };
        assert_eq!(
            Order::try_from(bad).unwrap_err().field,
            "pricing_rules.currency"
        );
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
