//! An order's life: every field kept through CreateOrder and MarkPaid,
//! MarkShipped, cancelling or paying in the wrong state refused, and
//! ListOrders' pages, newest first.

use microshop_proto::order::v1::{
    CouponKind, CreateOrderRequest, ListOrdersResponse, Order, OrderLine, OrderStatus,
    PricingRules as WireRules, Shipping, StatusChange,
};
use microshop_runtime::{Reason, errors::metadata_of};
use tonic::Code;

use crate::{
    Server, assert_invalid, assert_rejected, cancel, coupon, create, get_order, list, mark_paid,
    mark_shipped, ms_of, now_ms, order_request, put_coupon,
};

#[tokio::test(flavor = "multi_thread")]
async fn order_round_trip_keeps_every_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "SAVE10", CouponKind::Percentage, 10, 5).await;

    let lines = vec![
        OrderLine {
            sku: "SKU-A".into(),
            name: "Áo thun".into(),
            quantity: 2,
            unit_price: 150_000,
        },
        OrderLine {
            sku: "SKU-B".into(),
            name: "Giày".into(),
            quantity: 1,
            unit_price: 500_000,
        },
    ];
    let shipping = Shipping {
        name: "Nguyễn Văn A".into(),
        address: "1 Lê Lợi, Quận 1, TP.HCM".into(),
        phone: "+84 90 123 4567".into(),
    };
    let before = now_ms();
    let created = create(
        client,
        CreateOrderRequest {
            saga_id: "saga-full".into(),
            customer_id: "ann".into(),
            lines: lines.clone(),
            coupon_code: "SAVE10".into(),
            redeemed_points: 20,
            shipping: Some(shipping.clone()),
        },
    )
    .await
    .expect("create");
    let after_create = now_ms();
    assert_eq!(created.status(), OrderStatus::PendingPayment);
    assert!(created.paid_at.is_none());

    let paid = mark_paid(client, "saga-full", &created.order_id, "pay-42")
        .await
        .expect("mark paid");
    let after_pay = now_ms();
    let order = get_order(client, &created.order_id)
        .await
        .expect("get order");
    assert_eq!(order, paid, "GetOrder answers what MarkPaid stored");

    // Items 800,000; tax 80,000; shipping 50,000; coupon 10% = 80,000;
    // 20 points = 20,000; total 830,000.
    let Order {
        order_id,
        customer_id,
        lines: got_lines,
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
        shipping: got_shipping,
        payment_ref,
        cancelled_at,
        pricing_rules,
    } = order;
    assert_eq!(order_id, created.order_id);
    assert!(uuid_like(&order_id), "order id {order_id}");
    assert_eq!(customer_id, "ann");
    assert_eq!(got_lines, lines);
    assert_eq!(items_price, 800_000);
    assert_eq!(tax_price, 80_000);
    assert_eq!(shipping_price, 50_000);
    assert_eq!(discount_price, 80_000);
    assert_eq!(coupon_code, "SAVE10");
    assert_eq!(redeemed_points, 20);
    assert_eq!(points_discount_price, 20_000);
    assert_eq!(total_price, 830_000);
    assert_eq!(
        total_price,
        items_price + tax_price + shipping_price - discount_price - points_discount_price
    );
    assert_eq!(status, i32::from(OrderStatus::Paid));
    let created_ms = ms_of(created_at.as_ref());
    assert!((before..=after_create).contains(&created_ms));
    let paid_ms = ms_of(paid_at.as_ref());
    assert!((created_ms..=after_pay).contains(&paid_ms));
    assert_eq!(
        status_history,
        vec![
            StatusChange {
                status: OrderStatus::PendingPayment.into(),
                at: created_at,
                note: "order created".into(),
            },
            StatusChange {
                status: OrderStatus::Paid.into(),
                at: paid_at,
                note: "payment pay-42 received".into(),
            },
        ]
    );
    assert_eq!(saga_id, "saga-full");
    assert_eq!(got_shipping, Some(shipping));
    assert_eq!(payment_ref, "pay-42");
    assert_eq!(cancelled_at, None);
    assert_eq!(
        pricing_rules,
        Some(seed_rules()),
        "priced by the seed rules"
    );

    // The created order carried the same pricing and creation time.
    assert_eq!(created.created_at, created_at);
    assert_eq!(created.total_price, 830_000);
    assert_eq!(coupon(client, "SAVE10").await.times_used, 1);

    // MarkPaid again is idempotent: same payment time and reference.
    let again = mark_paid(client, "saga-full", &created.order_id, "pay-other")
        .await
        .expect("repeated mark paid");
    assert_eq!(again, paid);
    server.stop().await;
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shipped_order_cannot_be_cancelled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    let order = create(client, order_request("saga-ship", "ann"))
        .await
        .expect("create");

    let early = mark_shipped(client, &order.order_id).await.unwrap_err();
    assert_rejected(&early, Code::FailedPrecondition, Reason::OrderNotShippable);

    mark_paid(client, "saga-ship", &order.order_id, "pay-1")
        .await
        .expect("mark paid");
    let shipped = mark_shipped(client, &order.order_id)
        .await
        .expect("mark shipped");
    assert_eq!(shipped.status(), OrderStatus::Shipped);
    assert_eq!(shipped.status_history.len(), 3);
    // Repeated: idempotent.
    assert_eq!(
        mark_shipped(client, &order.order_id).await.expect("again"),
        shipped
    );
    // Paying a shipped order is an idempotent success too.
    assert_eq!(
        mark_paid(client, "saga-ship", &order.order_id, "pay-1")
            .await
            .expect("mark paid"),
        shipped
    );

    let err = cancel(client, "saga-ship", "too late").await.unwrap_err();
    assert_rejected(&err, Code::FailedPrecondition, Reason::OrderNotCancellable);
    assert_eq!(
        metadata_of(&err, "orderId").as_deref(),
        Some(order.order_id.as_str())
    );
    assert_eq!(
        get_order(client, &order.order_id).await.expect("get"),
        shipped
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mark_paid_checks_the_order_and_its_saga() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    let order = create(client, order_request("saga-pay", "ann"))
        .await
        .expect("create");

    let unknown = mark_paid(client, "saga-pay", "no-such-order", "pay-1")
        .await
        .unwrap_err();
    assert_rejected(&unknown, Code::NotFound, Reason::UnknownOrder);

    let wrong = mark_paid(client, "saga-other", &order.order_id, "pay-1")
        .await
        .unwrap_err();
    assert_invalid(&wrong, "saga_id");

    cancel(client, "saga-pay", "")
        .await
        .expect("cancel")
        .expect("the order");
    let cancelled = get_order(client, &order.order_id).await.expect("get");
    assert_eq!(
        cancelled.status_history.last().expect("history").note,
        "cancelled"
    );

    let err = mark_paid(client, "saga-pay", &order.order_id, "pay-1")
        .await
        .unwrap_err();
    assert_rejected(&err, Code::FailedPrecondition, Reason::OrderNotPayable);
    assert_eq!(
        get_order(client, &order.order_id).await.expect("get"),
        cancelled
    );

    let unknown = get_order(client, "no-such-order").await.unwrap_err();
    assert_rejected(&unknown, Code::NotFound, Reason::UnknownOrder);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_orders_pages_newest_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    let mut ids = Vec::new();
    for i in 0..5 {
        let order = create(client, order_request(&format!("saga-list-{i}"), "ann"))
            .await
            .expect("create");
        ids.push(order.order_id);
        create(client, order_request(&format!("saga-other-{i}"), "bob"))
            .await
            .expect("create");
    }
    ids.reverse();

    let ids_of = |page: &ListOrdersResponse| -> Vec<String> {
        page.orders.iter().map(|o| o.order_id.clone()).collect()
    };
    let first = list(client, "ann", 2, "").await.expect("page 1");
    assert_eq!(ids_of(&first), ids[0..2]);
    assert!(!first.next_page_token.is_empty());
    let second = list(client, "ann", 2, &first.next_page_token)
        .await
        .expect("page 2");
    assert_eq!(ids_of(&second), ids[2..4]);
    assert!(!second.next_page_token.is_empty());
    let third = list(client, "ann", 2, &second.next_page_token)
        .await
        .expect("page 3");
    assert_eq!(ids_of(&third), ids[4..5]);
    assert!(third.next_page_token.is_empty(), "last page has no token");

    // Page size 0 means the default (20): everything on one page.
    let all = list(client, "ann", 0, "").await.expect("all");
    assert_eq!(ids_of(&all), ids);
    assert!(all.next_page_token.is_empty());
    // Exactly a full page: no token either.
    let exact = list(client, "ann", 5, "").await.expect("exact");
    assert!(exact.next_page_token.is_empty());

    assert!(
        list(client, "nobody", 0, "")
            .await
            .expect("empty")
            .orders
            .is_empty()
    );

    for token in ["abc", "-1", "0", "1.5"] {
        let err = list(client, "ann", 2, token).await.unwrap_err();
        assert_invalid(&err, "page_token");
    }
    for size in [-1, 101] {
        let err = list(client, "ann", size, "").await.unwrap_err();
        assert_invalid(&err, "page_size");
    }
    server.stop().await;
}

/// The seed rules as GetOrder shows them.
fn seed_rules() -> WireRules {
    WireRules {
        tax_rate_bp: 1_000,
        shipping_price: 50_000,
        free_shipping_from: 2_000_000,
        point_value: 1_000,
        earn_amount_per_point: 100_000,
        currency: "VND".into(),
    }
}
