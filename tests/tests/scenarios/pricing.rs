//! A shop's own pricing rules (a US shop, in cents), and a restart with
//! new settings that keeps each order's own rules.

use super::*;

// ---------------------------------------------------------------------------
// 9. A shop's own pricing rules, and a change of them.

/// A US shop: 8.25% tax, $5.99 shipping below $50, 1 point = 1¢ off, one
/// point earned per $1 paid; every amount in cents.
fn usd_rules() -> PricingRules {
    PricingRules {
        tax_rate_bp: 825,
        shipping_price: 599,
        free_shipping_from: 5_000,
        point_value: 1,
        earn_amount_per_point: 100,
        currency: "USD".parse().expect("ISO 4217"),
    }
}

fn figures(o: &ord::Order) -> (i64, i64, i64, i64, i64, i64, i64) {
    (
        o.items_price,
        o.tax_price,
        o.shipping_price,
        o.discount_price,
        o.redeemed_points,
        o.points_discount_price,
        o.total_price,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_us_shop_prices_at_8_25_percent_in_cents() {
    let mut m = TestMesh::start_with(test_engine(), |c| c.pricing = usd_rules()).await;
    m.put_product("SHIRT", 1_299, 10).await;
    m.put_product("CAP", 450, 10).await;
    m.put_product("COAT", 5_000, 2).await;
    m.grant_points("ann", 500).await;
    m.put_coupon("TENOFF", ord::CouponKind::Percentage, 10, 5)
        .await;

    // $25.98 + $4.50 = $30.48; tax 8.25% = 251.46¢ → 251¢; shipping $5.99;
    // 100 points = $1.00 off; total $37.98.
    let placed = m
        .place_ok(order_request(
            "ann-1",
            "ann",
            &[("SHIRT", 2), ("CAP", 1)],
            "",
            100,
        ))
        .await;
    let order = placed.order.clone().expect("the order");
    assert_eq!(figures(&order), (3_048, 251, 599, 0, 100, 100, 3_798));
    assert_eq!(
        order.pricing_rules,
        Some(ord::PricingRules {
            tax_rate_bp: 825,
            shipping_price: 599,
            free_shipping_from: 5_000,
            point_value: 1,
            earn_amount_per_point: 100,
            currency: "USD".into(),
        })
    );
    assert_eq!(m.order(&placed.order_id).await, order, "GetOrder agrees");

    // Paying earns at the order's rate: 3,798¢ / 100¢ = 37 points.
    m.confirm_payment(&placed.order_id, "PAY-1")
        .await
        .expect("paid");
    let ann = m.balance("ann").await;
    assert_eq!((ann.earned, ann.points), (37, 500 - 100 + 37), "{ann:?}");

    // From $50.00 of items shipping is free; the coupon does not lower the
    // tax: 412.5¢ → 413¢ on $50.00, minus $5.00.
    let coat = m
        .place_ok(order_request("ann-2", "ann", &[("COAT", 1)], "TENOFF", 0))
        .await;
    assert_eq!(
        figures(&coat.order.expect("the order")),
        (5_000, 413, 0, 500, 0, 0, 4_913)
    );

    // A cap costs 450 + 37 (37.125¢) + 599 = 1,086¢: 1,087 points (¢) is an
    // over-redemption, refused at the quote.
    expect_error(
        m.place_order(order_request("ann-3", "ann", &[("CAP", 1)], "", 1_087))
            .await,
        Code::InvalidArgument,
        Reason::InvalidRequest,
    );

    m.assert_invariants().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_new_settings_keeps_each_orders_own_rules() {
    let mut m = TestMesh::start_with(test_engine(), |c| c.pricing = usd_rules()).await;
    m.put_product("SHIRT", 1_299, 10).await;
    m.put_product("CAP", 450, 10).await;
    m.grant_points("ann", 10).await;
    m.grant_points("bob", 10).await;
    // 2,598 + 214 (214.335) + 599 = 3,411¢.
    let first = m
        .place_ok(order_request("ann-1", "ann", &[("SHIRT", 2)], "", 0))
        .await;
    let first_order = first.order.clone().expect("the order");
    assert_eq!(figures(&first_order), (2_598, 214, 599, 0, 0, 0, 3_411));
    let second = m
        .place_ok(order_request("bob-1", "bob", &[("CAP", 1)], "", 5))
        .await;
    let second_order = second.order.clone().expect("the order");

    // New settings: 19%, shipping always free, a point is worth 5, one
    // point per 1,000 paid, euros. Catalog prices are not converted.
    let new_rules = PricingRules {
        tax_rate_bp: 1_900,
        shipping_price: 250,
        free_shipping_from: 0,
        point_value: 5,
        earn_amount_per_point: 1_000,
        currency: "EUR".parse().expect("ISO 4217"),
    };
    m.restart_with(test_engine(), |c| c.pricing = new_rules)
        .await;

    // Existing orders read as they were priced.
    assert_eq!(m.order(&first.order_id).await, first_order);
    assert_eq!(m.order(&second.order_id).await, second_order);
    // A retry of the checkout answers the first order, unchanged.
    let again = m
        .place_ok(order_request("ann-1", "ann", &[("SHIRT", 2)], "", 0))
        .await;
    assert_eq!(
        (again.order_id.as_str(), again.order.as_ref()),
        (first.order_id.as_str(), Some(&first_order))
    );

    // Paying the old order earns by its own rate: 3,411 / 100 = 34 points
    // (the new rate would give 3).
    m.confirm_payment(&first.order_id, "PAY-1")
        .await
        .expect("paid");
    let paid = m.order(&first.order_id).await;
    assert_eq!(order_status(&paid), OrderStatus::Paid);
    assert_eq!(figures(&paid), figures(&first_order));
    assert_eq!(paid.pricing_rules, first_order.pricing_rules);
    assert_eq!(m.balance("ann").await.earned, 34);

    // Cancelling the old one refunds what it redeemed, figures untouched.
    m.cancel_order(&second.order_id, "changed my mind")
        .await
        .expect("cancelled");
    let cancelled = m.order(&second.order_id).await;
    assert_eq!(order_status(&cancelled), OrderStatus::Cancelled);
    assert_eq!(figures(&cancelled), figures(&second_order));
    assert_eq!(cancelled.pricing_rules, second_order.pricing_rules);
    let bob = m.balance("bob").await;
    assert_eq!((bob.points, bob.refunded), (10, 5), "{bob:?}");

    // A new order is priced by the new rules: 2,598 + 494 (493.62), free
    // shipping; it earns 3,092 / 1,000 = 3 points when paid.
    let newer = m
        .place_ok(order_request("ann-2", "ann", &[("SHIRT", 2)], "", 0))
        .await;
    let newer_order = newer.order.clone().expect("the order");
    assert_eq!(figures(&newer_order), (2_598, 494, 0, 0, 0, 0, 3_092));
    assert_eq!(
        newer_order.pricing_rules.map(|r| r.currency),
        Some("EUR".to_owned())
    );
    m.confirm_payment(&newer.order_id, "PAY-2")
        .await
        .expect("paid");
    assert_eq!(m.balance("ann").await.earned, 34 + 3);

    m.assert_invariants().await;
    m.shutdown().await;
}
