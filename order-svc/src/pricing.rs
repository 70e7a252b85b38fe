//! Pricing: the one pure function that turns lines, a coupon and redeemed
//! points into the price breakdown of an order. QuoteOrder and CreateOrder
//! both call it, so a quote and the stored order can never disagree, and
//! prices are always computed server-side.
//!
//! Rules (ARCHITECTURE §3, configurable through [`PricingRules`]):
//! - items = Σ quantity × unit price;
//! - tax = `tax_percent` % of items, **rounded half up** to the smallest
//!   currency unit: `(items × tax_percent + 50) / 100` in integer division;
//! - shipping = `shipping_price`, or 0 when items ≥ `free_shipping_from`
//!   (and 0 for an empty cart);
//! - coupon discount: a percentage coupon takes `value` % of items,
//!   **rounded down** (`items × value / 100`, the shop never gives away more
//!   than the percent); a fixed coupon takes `value`, capped at items. The
//!   discount never exceeds items;
//! - payable = items + tax + shipping − discount;
//! - points discount = points × `point_value`; redeeming more than payable is
//!   refused ([`OverRedemption`] says the most points allowed, payable /
//!   `point_value` rounded down), so the total is never negative;
//! - total = payable − points discount.
//!
//! Arithmetic runs in `i128` and saturates into `i64`: validated inputs (at
//! most 100 lines × 10,000 units × 10¹² per unit) fit in `i64`, and an
//! unvalidated caller gets a saturated price instead of a panic.

use serde::{Deserialize, Serialize};

use crate::domain::{Coupon, CouponKind, OrderLine};

/// The configurable pricing rules. The defaults are the shop's seed rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingRules {
    /// Tax, in percent of the items price.
    pub tax_percent: i64,
    /// Shipping price below the free-shipping threshold.
    pub shipping_price: i64,
    /// Items price from which shipping is free.
    pub free_shipping_from: i64,
    /// Currency units one redeemed point takes off.
    pub point_value: i64,
}

impl Default for PricingRules {
    fn default() -> Self {
        Self {
            tax_percent: 10,
            shipping_price: 50_000,
            free_shipping_from: 2_000_000,
            point_value: 1_000,
        }
    }
}

/// The price breakdown of a cart (all amounts in the smallest currency unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    /// Sum of quantity × unit price.
    pub items_price: i64,
    /// Tax on the items, rounded half up.
    pub tax_price: i64,
    /// Shipping.
    pub shipping_price: i64,
    /// Coupon discount.
    pub discount_price: i64,
    /// Points redeemed.
    pub redeemed_points: i64,
    /// Discount from the redeemed points.
    pub points_discount_price: i64,
    /// What the customer pays.
    pub total_price: i64,
}

/// More points were asked than the payable total allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at most {max_points} points can be redeemed on this order")]
pub struct OverRedemption {
    /// The most points that can be redeemed on this cart.
    pub max_points: i64,
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// Prices `lines` with an optional `coupon` and `points` redeemed.
///
/// Whether the coupon still has a use left is not checked here: CreateOrder
/// decides that atomically with consuming the use.
pub fn price(
    rules: &PricingRules,
    lines: &[OrderLine],
    coupon: Option<&Coupon>,
    points: i64,
) -> Result<Pricing, OverRedemption> {
    let items: i128 = lines
        .iter()
        .map(|l| i128::from(l.quantity) * i128::from(l.unit_price))
        .sum();
    let tax = (items * i128::from(rules.tax_percent) + 50).div_euclid(100);
    let shipping = if items == 0 || items >= i128::from(rules.free_shipping_from) {
        0
    } else {
        i128::from(rules.shipping_price)
    };
    let discount = match coupon {
        None => 0,
        Some(c) => match c.kind {
            CouponKind::Percentage => (items * i128::from(c.value)).div_euclid(100),
            CouponKind::Fixed => i128::from(c.value),
        }
        .clamp(0, items.max(0)),
    };
    let payable = items + tax + shipping - discount;
    let point_value = i128::from(rules.point_value.max(1));
    let points_discount = i128::from(points) * point_value;
    if points_discount > payable {
        return Err(OverRedemption {
            max_points: saturate(payable.max(0) / point_value),
        });
    }
    Ok(Pricing {
        items_price: saturate(items),
        tax_price: saturate(tax),
        shipping_price: saturate(shipping),
        discount_price: saturate(discount),
        redeemed_points: points,
        points_discount_price: saturate(points_discount),
        total_price: saturate(payable - points_discount),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn line(quantity: i64, unit_price: i64) -> OrderLine {
        OrderLine {
            sku: "sku".into(),
            name: "name".into(),
            quantity,
            unit_price,
        }
    }

    fn coupon(kind: CouponKind, value: i64) -> Coupon {
        Coupon {
            code: "C".into(),
            kind,
            value,
            usage_limit: 1,
            times_used: 0,
        }
    }

    fn quote(lines: &[OrderLine], coupon: Option<&Coupon>, points: i64) -> Pricing {
        price(&PricingRules::default(), lines, coupon, points).expect("priced")
    }

    #[test]
    fn seed_example_with_shipping() {
        let p = quote(&[line(2, 150_000)], None, 0);
        assert_eq!(
            p,
            Pricing {
                items_price: 300_000,
                tax_price: 30_000,
                shipping_price: 50_000,
                discount_price: 0,
                redeemed_points: 0,
                points_discount_price: 0,
                total_price: 380_000,
            }
        );
    }

    #[test]
    fn free_shipping_from_threshold() {
        assert_eq!(quote(&[line(1, 2_000_000)], None, 0).shipping_price, 0);
        assert_eq!(quote(&[line(1, 1_999_999)], None, 0).shipping_price, 50_000);
    }

    #[test]
    fn tax_rounds_half_up() {
        assert_eq!(quote(&[line(1, 5)], None, 0).tax_price, 1); // 0.5 -> 1
        assert_eq!(quote(&[line(1, 4)], None, 0).tax_price, 0); // 0.4 -> 0
        assert_eq!(quote(&[line(1, 15)], None, 0).tax_price, 2); // 1.5 -> 2
    }

    #[test]
    fn percentage_coupon_rounds_down() {
        let c = coupon(CouponKind::Percentage, 15);
        let p = quote(&[line(1, 999)], Some(&c), 0);
        assert_eq!(p.discount_price, 149); // 149.85 -> 149
    }

    #[test]
    fn fixed_coupon_is_capped_at_items() {
        let c = coupon(CouponKind::Fixed, 500_000);
        let p = quote(&[line(1, 100_000)], Some(&c), 0);
        assert_eq!(p.discount_price, 100_000);
        assert_eq!(p.total_price, 10_000 + 50_000);
    }

    #[test]
    fn points_take_point_value_each() {
        let p = quote(&[line(2, 150_000)], None, 30);
        assert_eq!(p.points_discount_price, 30_000);
        assert_eq!(p.total_price, 350_000);
    }

    #[test]
    fn over_redemption_reports_max_points() {
        let err = price(&PricingRules::default(), &[line(2, 150_000)], None, 381).unwrap_err();
        assert_eq!(err, OverRedemption { max_points: 380 });
        // Exactly the payable total is allowed and leaves nothing to pay.
        assert_eq!(quote(&[line(2, 150_000)], None, 380).total_price, 0);
    }

    fn arb_coupon() -> impl Strategy<Value = Option<Coupon>> {
        prop_oneof![
            Just(None),
            (1..=100_i64).prop_map(|v| Some(coupon(CouponKind::Percentage, v))),
            (1..=5_000_000_i64).prop_map(|v| Some(coupon(CouponKind::Fixed, v))),
        ]
    }

    proptest! {
        #[test]
        fn total_is_the_sum_of_its_parts(
            lines in prop::collection::vec((1..=10_000_i64, 1..=10_000_000_i64), 1..=20),
            coupon in arb_coupon(),
            points in 0..=100_000_i64,
        ) {
            let lines: Vec<OrderLine> = lines.into_iter().map(|(q, p)| line(q, p)).collect();
            let rules = PricingRules::default();
            match price(&rules, &lines, coupon.as_ref(), points) {
                Ok(p) => {
                    let items: i64 = lines.iter().map(|l| l.quantity * l.unit_price).sum();
                    prop_assert_eq!(p.items_price, items);
                    prop_assert_eq!(
                        p.total_price,
                        p.items_price + p.tax_price + p.shipping_price
                            - p.discount_price - p.points_discount_price
                    );
                    prop_assert!(p.total_price >= 0);
                    prop_assert!(p.discount_price <= p.items_price);
                    prop_assert_eq!(p.points_discount_price, points * rules.point_value);
                }
                Err(OverRedemption { max_points }) => {
                    prop_assert!(max_points < points);
                    // The reported maximum is itself accepted.
                    let p = price(&rules, &lines, coupon.as_ref(), max_points);
                    prop_assert!(p.is_ok_and(|p| p.total_price >= 0));
                }
            }
        }
    }
}
