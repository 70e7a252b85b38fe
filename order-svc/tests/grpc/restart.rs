//! Across a restart: orders, coupon uses, barriers and the listing sequence
//! survive, and a restart with new pricing settings never changes existing
//! orders.

use microshop_proto::order::v1::{CouponKind, CreateOrderRequest, Order, OrderStatus, Shipping};
use order_svc::PricingRules;

use crate::{
    Server, cancel, coupon, create, get_order, line, list, mark_paid, order_request, put_coupon,
    usd_rules,
};

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    put_coupon(&mut server.client, "KEPT", CouponKind::Percentage, 10, 2).await;
    let order = create(
        &mut server.client,
        CreateOrderRequest {
            coupon_code: "KEPT".into(),
            redeemed_points: 5,
            shipping: Some(Shipping {
                name: "Ann".into(),
                address: "1 Main St".into(),
                phone: "123".into(),
            }),
            ..order_request("saga-keep", "ann")
        },
    )
    .await
    .expect("create");
    let paid = mark_paid(&mut server.client, "saga-keep", &order.order_id, "pay-9")
        .await
        .expect("mark paid");
    server.stop().await;

    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    assert_eq!(get_order(client, &order.order_id).await.expect("get"), paid);
    assert_eq!(coupon(client, "KEPT").await.times_used, 1);
    // The barrier survived too: a redelivery replays, no second use.
    let replay = create(client, order_request("saga-keep", "ann"))
        .await
        .expect("replay");
    assert_eq!(replay, paid);
    assert_eq!(coupon(client, "KEPT").await.times_used, 1);
    // The listing sequence continues: a new order comes first.
    let newer = create(client, order_request("saga-new", "ann"))
        .await
        .expect("create");
    let page = list(client, "ann", 0, "").await.expect("list");
    let ids: Vec<&str> = page.orders.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(ids, [newer.order_id.as_str(), order.order_id.as_str()]);
    server.stop().await;
}

/// Orders keep the rules they were priced with across a restart with other
/// settings: reads, a replayed CreateOrder (what recovery sends), payment
/// and cancellation all use the order's own figures; only new orders get
/// the new rules.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_new_settings_never_changes_existing_orders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_with(dir.path(), usd_rules()).await;
    put_coupon(&mut server.client, "TEN", CouponKind::Percentage, 10, 5).await;
    let request_a = CreateOrderRequest {
        saga_id: "saga-a".into(),
        customer_id: "ann".into(),
        lines: vec![line("SHIRT", 2, 1_299)],
        coupon_code: "TEN".into(),
        redeemed_points: 50,
        ..CreateOrderRequest::default()
    };
    let a = create(&mut server.client, request_a.clone())
        .await
        .expect("create a");
    let b = create(
        &mut server.client,
        CreateOrderRequest {
            saga_id: "saga-b".into(),
            customer_id: "ann".into(),
            lines: vec![line("CAP", 1, 450)],
            ..CreateOrderRequest::default()
        },
    )
    .await
    .expect("create b");
    // 2,598 items; tax 214.335 → 214; shipping 599; coupon 259; 50 points.
    assert_eq!(
        (a.tax_price, a.discount_price, a.total_price),
        (214, 259, 2_598 + 214 + 599 - 259 - 50)
    );
    server.stop().await;

    // Everything changes: rate, shipping, point value, earn rate, currency.
    let new_rules = PricingRules {
        tax_rate_bp: 1_900,
        shipping_price: 0,
        free_shipping_from: 0,
        point_value: 5,
        earn_amount_per_point: 1,
        currency: "EUR".parse().expect("ISO 4217"),
    };
    let mut server = Server::start_with(dir.path(), new_rules).await;
    let client = &mut server.client;
    assert_eq!(get_order(client, &a.order_id).await.expect("get a"), a);
    assert_eq!(get_order(client, &b.order_id).await.expect("get b"), b);

    // Recovery re-sending create-order gets the first order, unchanged, and
    // takes no second coupon use.
    let replay = create(client, request_a).await.expect("replay");
    assert_eq!(replay, a, "the barrier replays the order as first priced");
    assert_eq!(coupon(client, "TEN").await.times_used, 1);

    // Paying and cancelling old orders keep their figures and rules.
    let paid = mark_paid(client, "saga-a", &a.order_id, "pay-1")
        .await
        .expect("pay a");
    assert_eq!(paid.status(), OrderStatus::Paid);
    assert_eq!(
        Order {
            status: a.status,
            status_history: a.status_history.clone(),
            paid_at: None,
            payment_ref: String::new(),
            ..paid.clone()
        },
        a,
        "payment changes the status only"
    );
    let cancelled = cancel(client, "saga-b", "changed my mind")
        .await
        .expect("cancel b")
        .expect("b was created");
    assert_eq!(
        Order {
            status: b.status,
            status_history: b.status_history.clone(),
            cancelled_at: None,
            ..cancelled.clone()
        },
        b,
        "cancelling changes the status only"
    );

    // A new order is priced by the new rules and records them.
    let c = create(
        client,
        CreateOrderRequest {
            saga_id: "saga-c".into(),
            customer_id: "ann".into(),
            lines: vec![line("SHIRT", 2, 1_299)],
            redeemed_points: 10,
            ..CreateOrderRequest::default()
        },
    )
    .await
    .expect("create c");
    // 2,598 items; tax 19% = 493.62 → 494; always free shipping; 10 × 5.
    assert_eq!(
        (c.tax_price, c.shipping_price, c.points_discount_price),
        (494, 0, 50)
    );
    assert_eq!(c.total_price, 2_598 + 494 - 50);
    let recorded = c.pricing_rules.expect("recorded");
    assert_eq!(
        (recorded.currency.as_str(), recorded.tax_rate_bp),
        ("EUR", 1_900)
    );
    assert_eq!(
        a.pricing_rules.as_ref().map(|r| r.currency.as_str()),
        Some("USD")
    );
    server.stop().await;
}
