//! Pricing: the one pure function that turns lines, a coupon and redeemed
//! points into the price breakdown of an order. QuoteOrder and CreateOrder
//! both call it, so a quote and the stored order can never disagree, and
//! prices are always computed server-side.
//!
//! Rules (`docs/api.md`, "Pricing"; configurable through
//! [`PricingRules`]; every amount is in the smallest unit of
//! [`PricingRules::currency`]):
//! - items = Σ quantity × unit price;
//! - tax = `tax_rate_bp` basis points of items (1000 = 10%, 825 = 8.25%),
//!   **rounded half up** to the smallest currency unit:
//!   `(items × tax_rate_bp + 5000) / 10000` in integer division. Tax is on
//!   the items before any discount; shipping is not taxed;
//! - shipping = `shipping_price`, or 0 when items ≥ `free_shipping_from`
//!   (so `free_shipping_from = 0` means always free), and 0 for an empty
//!   cart;
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
//! Every order records the rules it was priced with, so a later change of
//! settings never reprices it, and its payment earns points at
//! `earn_amount_per_point` as it stood when the order was made.
//!
//! Arithmetic runs in `i128` and saturates into `i64`: validated inputs (at
//! most 100 lines × 10,000 units × 10¹² per unit) fit in `i64`, and an
//! unvalidated caller gets a saturated price instead of a panic.

use serde::{Deserialize, Serialize};

use crate::{
    currency::Currency,
    domain::{Coupon, CouponKind, OrderLine},
};

/// Basis points in one whole (100%).
pub const BASIS_POINTS: i64 = 10_000;

/// The configurable pricing rules. The defaults are the shop's seed rules;
/// a stored order without recorded rules (written before they were
/// recorded) was priced by them, so they are also its serde default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PricingRules {
    /// Tax, in basis points of the items price (1000 = 10%), 0 to 10,000.
    pub tax_rate_bp: i64,
    /// Shipping price below the free-shipping threshold.
    pub shipping_price: i64,
    /// Items price from which shipping is free (0: always free).
    pub free_shipping_from: i64,
    /// Currency units one redeemed point takes off (greater than zero).
    pub point_value: i64,
    /// Amount paid that earns one loyalty point (greater than zero). The
    /// order records it so that its payment earns at this rate even after a
    /// change of settings; loyalty-svc does the earning.
    pub earn_amount_per_point: i64,
    /// The currency every amount is in, in its smallest unit. A label: no
    /// amount is ever converted.
    pub currency: Currency,
}

impl Default for PricingRules {
    fn default() -> Self {
        Self {
            tax_rate_bp: 1_000,
            shipping_price: 50_000,
            free_shipping_from: 2_000_000,
            point_value: 1_000,
            earn_amount_per_point: 100_000,
            currency: Currency::VND,
        }
    }
}

/// Tax on `items` at `tax_rate_bp`, rounded half up to the smallest unit.
pub fn tax(items: i128, tax_rate_bp: i64) -> i128 {
    let bp = i128::from(BASIS_POINTS);
    (items * i128::from(tax_rate_bp) + bp / 2).div_euclid(bp)
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
    let tax = tax(items, rules.tax_rate_bp);
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

    fn usd(tax_rate_bp: i64) -> PricingRules {
        PricingRules {
            tax_rate_bp,
            shipping_price: 599,
            free_shipping_from: 5_000,
            point_value: 1,
            earn_amount_per_point: 100,
            currency: "USD".parse().expect("USD is ISO 4217"),
        }
    }

    #[test]
    fn tax_in_basis_points_rounds_half_up_at_8_25_percent() {
        let rules = usd(825);
        let tax_of = |cents| {
            price(&rules, &[line(1, cents)], None, 0)
                .expect("priced")
                .tax_price
        };
        assert_eq!(tax_of(200), 17); // 16.5 -> 17 (half up)
        assert_eq!(tax_of(1_999), 165); // 164.9175 -> 165
        assert_eq!(tax_of(1_000), 83); // 82.5 -> 83
        assert_eq!(tax_of(60), 5); // 4.95 -> 5
        assert_eq!(tax_of(6), 0); // 0.495 -> 0
        assert_eq!(tax_of(7), 1); // 0.5775 -> 1
    }

    #[test]
    fn usd_cart_at_8_25_percent() {
        // 2 × $12.99 + 1 × $4.50 = $30.48; tax 251.46¢ -> 251¢; shipping
        // $5.99 below $50; 100 points at 1¢ take $1.00 off.
        let p = price(&usd(825), &[line(2, 1_299), line(1, 450)], None, 100).expect("priced");
        assert_eq!(
            p,
            Pricing {
                items_price: 3_048,
                tax_price: 251,
                shipping_price: 599,
                discount_price: 0,
                redeemed_points: 100,
                points_discount_price: 100,
                total_price: 3_048 + 251 + 599 - 100,
            }
        );
        // From $50.00 of items shipping is free.
        assert_eq!(
            price(&usd(825), &[line(1, 5_000)], None, 0)
                .expect("priced")
                .shipping_price,
            0
        );
    }

    #[test]
    fn tax_is_on_items_before_discounts_and_shipping_is_untaxed() {
        let c = coupon(CouponKind::Fixed, 1_000);
        let p = price(&usd(1_000), &[line(1, 2_000)], Some(&c), 500).expect("priced");
        assert_eq!(p.tax_price, 200, "10% of the items, not of items - coupon");
        assert_eq!(p.shipping_price, 599, "shipping adds no tax");
        assert_eq!(p.total_price, 2_000 + 200 + 599 - 1_000 - 500);
    }

    #[test]
    fn free_shipping_from_zero_is_always_free() {
        let rules = PricingRules {
            free_shipping_from: 0,
            ..PricingRules::default()
        };
        let p = price(&rules, &[line(1, 1)], None, 0).expect("priced");
        assert_eq!(p.shipping_price, 0);
    }

    #[test]
    fn zero_and_full_tax_rates() {
        let at = |bp| {
            let rules = PricingRules {
                tax_rate_bp: bp,
                ..PricingRules::default()
            };
            price(&rules, &[line(3, 333)], None, 0)
                .expect("priced")
                .tax_price
        };
        assert_eq!(at(0), 0);
        assert_eq!(at(BASIS_POINTS), 999);
    }

    fn arb_coupon() -> impl Strategy<Value = Option<Coupon>> {
        prop_oneof![
            Just(None),
            (1..=100_i64).prop_map(|v| Some(coupon(CouponKind::Percentage, v))),
            (1..=5_000_000_i64).prop_map(|v| Some(coupon(CouponKind::Fixed, v))),
        ]
    }

    /// Any rules a shop can set (what start-up validation lets through).
    fn arb_rules() -> impl Strategy<Value = PricingRules> {
        (
            0..=BASIS_POINTS,
            0..=10_000_000_i64,
            0..=50_000_000_i64,
            1..=100_000_i64,
            1..=1_000_000_i64,
        )
            .prop_map(
                |(tax_rate_bp, shipping_price, free_shipping_from, point_value, earn)| {
                    PricingRules {
                        tax_rate_bp,
                        shipping_price,
                        free_shipping_from,
                        point_value,
                        earn_amount_per_point: earn,
                        currency: Currency::VND,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn total_is_the_sum_of_its_parts_and_never_negative(
            rules in arb_rules(),
            lines in prop::collection::vec((1..=10_000_i64, 1..=10_000_000_i64), 1..=20),
            coupon in arb_coupon(),
            points in 0..=100_000_i64,
        ) {
            let lines: Vec<OrderLine> = lines.into_iter().map(|(q, p)| line(q, p)).collect();
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
                    prop_assert!(p.tax_price >= 0 && p.shipping_price >= 0);
                    prop_assert!(p.discount_price <= p.items_price);
                    prop_assert_eq!(p.points_discount_price, points * rules.point_value);
                    let free = items >= rules.free_shipping_from;
                    prop_assert_eq!(p.shipping_price, if free { 0 } else { rules.shipping_price });
                }
                Err(OverRedemption { max_points }) => {
                    prop_assert!(max_points < points);
                    // The reported maximum is itself accepted, and one more
                    // point is not.
                    let p = price(&rules, &lines, coupon.as_ref(), max_points);
                    prop_assert!(p.is_ok_and(|p| p.total_price >= 0));
                    prop_assert!(price(&rules, &lines, coupon.as_ref(), max_points + 1).is_err());
                }
            }
        }

        /// The stated rounding, checked from its definition rather than
        /// the formula: the tax is the whole number of smallest units
        /// nearest to items × rate, and an exact half goes up. In integers:
        /// −½ < tax − items × bp / 10000 ≤ ½.
        #[test]
        fn tax_rounds_half_up_at_any_rate(
            items in 0..=1_000_000_000_000_i64,
            bp in 0..=BASIS_POINTS,
        ) {
            let rules = PricingRules { tax_rate_bp: bp, ..PricingRules::default() };
            let p = price(&rules, &[line(1, items)], None, 0).expect("no points, no over-redemption");
            let error = i128::from(p.tax_price) * i128::from(BASIS_POINTS)
                - i128::from(items) * i128::from(bp);
            let half = i128::from(BASIS_POINTS / 2);
            prop_assert!(error > -half && error <= half, "tax {} on {} at {} bp", p.tax_price, items, bp);
        }
    }
}
