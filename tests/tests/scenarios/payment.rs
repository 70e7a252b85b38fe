//! After a checkout: payment and cancellation, and unpaid orders that
//! expire.

use super::*;

// ---------------------------------------------------------------------------
// 5. Payment and cancellation.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_and_cancellation() {
    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("TV", 1_000_000, 5).await;
    m.put_product("RADIO", 100_000, 5).await;
    m.grant_points("paula", 100).await;
    m.grant_points("quinn", 200).await;
    m.put_coupon("TENOFF", ord::CouponKind::Percentage, 10, 5)
        .await;

    // paula: 1,000,000 + 100,000 tax + 50,000 shipping - 100 points.
    let placed = m
        .place_ok(order_request("paula-1", "paula", &[("TV", 1)], "", 100))
        .await;
    let order = placed.order.clone().expect("the order");
    assert_eq!(
        (
            order.items_price,
            order.tax_price,
            order.shipping_price,
            order.discount_price,
            order.redeemed_points,
            order.points_discount_price,
            order.total_price
        ),
        (1_000_000, 100_000, 50_000, 0, 100, 100_000, 1_050_000)
    );
    assert_eq!(m.balance("paula").await.points, 0);

    // ConfirmPayment: reserved → sold, points earned at 1 per 100,000 paid.
    let paid = m
        .confirm_payment(&placed.order_id, "PAY-1")
        .await
        .expect("payment confirmed");
    assert_eq!(paid.state, SagaState::Completed as i32);
    let order = m.order(&placed.order_id).await;
    assert_eq!(order_status(&order), OrderStatus::Paid);
    assert!(order.paid_at.is_some());
    let tv = m.product("TV").await;
    assert_eq!((tv.available, tv.reserved, tv.sold), (4, 0, 1), "{tv:?}");
    let earned = 1_050_000 / EARN_AMOUNT_PER_POINT;
    let paula = m.balance("paula").await;
    assert_eq!((paula.points, paula.earned), (earned, earned), "{paula:?}");

    // Confirming again is a no-op.
    let again = m
        .confirm_payment(&placed.order_id, "PAY-1")
        .await
        .expect("a repeated confirmation answers the first");
    assert_eq!(again.saga_id, paid.saga_id);
    assert_eq!(m.balance("paula").await, paula);
    assert_eq!(m.product("TV").await, tv);
    // A second payment reference for the paid order is refused, saying so.
    let status = expect_error(
        m.confirm_payment(&placed.order_id, "PAY-OTHER").await,
        Code::AlreadyExists,
        Reason::IdempotencyKeyReused,
    );
    assert_eq!(saga_id_of(&status), paid.saga_id);
    assert!(
        status
            .message()
            .contains("already confirmed with another paymentRef"),
        "{status:?}"
    );
    assert_eq!(m.balance("paula").await, paula);

    // quinn: 2 × 100,000, 10% coupon, 50 points → cancelled while pending.
    let pending = m
        .place_ok(order_request(
            "quinn-1",
            "quinn",
            &[("RADIO", 2)],
            "TENOFF",
            50,
        ))
        .await;
    let order = pending.order.clone().expect("the order");
    assert_eq!(
        (
            order.discount_price,
            order.points_discount_price,
            order.total_price
        ),
        (20_000, 50_000, 200_000)
    );
    assert_eq!(m.coupon("TENOFF").await.times_used, 1);
    assert_eq!(m.balance("quinn").await.points, 150);
    assert_eq!(m.product("RADIO").await.reserved, 2);

    let cancelled = m
        .cancel_order(&pending.order_id, "changed my mind")
        .await
        .expect("a pending order is cancelled");
    assert_eq!(cancelled.state, SagaState::Completed as i32);
    assert_eq!(
        order_status(&m.order(&pending.order_id).await),
        OrderStatus::Cancelled
    );
    let radio = m.product("RADIO").await;
    assert_eq!(
        (radio.available, radio.reserved, radio.sold),
        (5, 0, 0),
        "{radio:?}"
    );
    let quinn = m.balance("quinn").await;
    assert_eq!((quinn.points, quinn.refunded), (200, 50), "{quinn:?}");
    let coupon = m.coupon("TENOFF").await;
    assert_eq!(coupon.times_used, 0, "the coupon use is given back");

    // Cancelling again is a no-op.
    let again = m
        .cancel_order(&pending.order_id, "")
        .await
        .expect("a repeated cancel answers the first");
    assert_eq!(again.saga_id, cancelled.saga_id);
    assert_eq!(m.product("RADIO").await, radio);
    assert_eq!(m.balance("quinn").await, quinn);
    assert_eq!(m.coupon("TENOFF").await, coupon);

    // A cancelled order cannot be paid.
    expect_error(
        m.confirm_payment(&pending.order_id, "PAY-2").await,
        Code::FailedPrecondition,
        Reason::OrderNotPayable,
    );
    assert_eq!(
        order_status(&m.order(&pending.order_id).await),
        OrderStatus::Cancelled
    );
    assert_eq!(m.product("RADIO").await, radio);

    // Cancelling the paid order restocks its units.
    m.cancel_order(&placed.order_id, "returned")
        .await
        .expect("a paid order is cancelled");
    assert_eq!(
        order_status(&m.order(&placed.order_id).await),
        OrderStatus::Cancelled
    );
    let tv = m.product("TV").await;
    assert_eq!(
        (tv.available, tv.reserved, tv.sold, tv.restocked),
        (5, 0, 1, 1),
        "{tv:?}"
    );
    assert_eq!(m.balance("paula").await.refunded, 100);

    // A shipped order cannot be cancelled.
    let shipped = m
        .place_ok(order_request("rita-1", "rita", &[("RADIO", 1)], "", 0))
        .await;
    m.confirm_payment(&shipped.order_id, "PAY-3")
        .await
        .expect("paid");
    let order = m
        .clients
        .order
        .clone()
        .mark_shipped(ord::MarkShippedRequest {
            order_id: shipped.order_id.clone(),
        })
        .await
        .expect("a paid order ships")
        .into_inner()
        .order
        .expect("the order");
    assert_eq!(order_status(&order), OrderStatus::Shipped);
    expect_error(
        m.cancel_order(&shipped.order_id, "too late").await,
        Code::FailedPrecondition,
        Reason::OrderNotCancellable,
    );
    assert_eq!(
        order_status(&m.order(&shipped.order_id).await),
        OrderStatus::Shipped
    );
    let radio = m.product("RADIO").await;
    assert_eq!(
        (radio.available, radio.reserved, radio.sold, radio.restocked),
        (4, 0, 1, 0),
        "{radio:?}"
    );

    m.assert_invariants().await;
    m.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Unpaid orders expire.

/// A 1 s payment TTL, and no expiry pass before the test is ready: the
/// orders are placed (and one paid) under an orchestrator whose expiry
/// runs only at its start, then another one over the same saga log, with
/// expiry every 100 ms, finds the unpaid order's deadline passed. So the
/// payment never races the TTL, however slow the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unpaid_orders_expire() {
    let engine = |expiry_interval| EngineConfig {
        payment_ttl: Duration::from_secs(1),
        expiry_interval,
        ..test_engine()
    };
    let dir = tempfile::tempdir().expect("a temporary data directory");
    let inventory = spawn_participant(Participant::Inventory, listen(any_port()).await, dir.path());
    let loyalty = spawn_participant(Participant::Loyalty, listen(any_port()).await, dir.path());
    let order = spawn_participant(Participant::Order, listen(any_port()).await, dir.path());
    let urls = ParticipantUrls {
        inventory: inventory.url(),
        loyalty: loyalty.url(),
        order: order.url(),
    };
    // Its expiry pass runs once, at start (nothing is due), then not for
    // an hour.
    let quiet = spawn_orchestrator(
        listen(any_port()).await,
        dir.path(),
        urls.clone(),
        engine(Duration::from_secs(3600)),
    );
    let mut addrs = MeshAddrs {
        orchestrator: quiet.addr,
        inventory: inventory.addr,
        loyalty: loyalty.addr,
        order: order.addr,
    };
    for server in [&inventory, &loyalty, &order, &quiet] {
        server.wait_serving().await;
    }
    let mut m = Shop::connect(&addrs).await;
    m.put_product("FAN", 400_000, 10).await;
    m.grant_points("xena", 50).await;
    m.put_coupon("TTL", ord::CouponKind::Fixed, 100_000, 5)
        .await;

    // Paid: must never be cancelled by expiry.
    let paid = m
        .place_ok(order_request("ttl-paid", "xena", &[("FAN", 2)], "", 0))
        .await;
    m.confirm_payment(&paid.order_id, "PAY-TTL")
        .await
        .expect("paid: no expiry pass ran since the start");
    // Never paid: cancelled once its TTL has passed.
    let unpaid = m
        .place_ok(order_request(
            "ttl-unpaid",
            "xena",
            &[("FAN", 3)],
            "TTL",
            20,
        ))
        .await;
    let fan = m.product("FAN").await;
    assert_eq!(
        (fan.available, fan.reserved, fan.sold),
        (5, 3, 2),
        "{fan:?}"
    );
    assert_eq!(m.coupon("TTL").await.times_used, 1);

    // The deadlines are in the saga log: the next orchestrator acts on them.
    quiet.stop().await;
    let orch = spawn_orchestrator(
        listen(any_port()).await,
        dir.path(),
        urls,
        engine(Duration::from_millis(100)),
    );
    orch.wait_serving().await;
    addrs.orchestrator = orch.addr;
    m.clients = MeshClients::connect(&addrs, CONNECT_WITHIN)
        .await
        .expect("connect to the new orchestrator");

    let expired = eventually("the unpaid order to expire", SETTLE_WITHIN, || {
        let shop = m.clone();
        let id = unpaid.order_id.clone();
        async move {
            let o = shop.order(&id).await;
            if order_status(&o) == OrderStatus::Cancelled {
                Ok(o)
            } else {
                Err(format!("status {:?}", order_status(&o)))
            }
        }
    })
    .await;
    assert!(expired.cancelled_at.is_some());

    let sagas = m.quiesce().await;
    let expiry = sagas
        .iter()
        .find(|s| s.idempotency_key == format!("expire:{}", unpaid.order_id))
        .expect("an expiry saga cancelled the unpaid order");
    assert_eq!(expiry.r#type, orch::SagaType::CancelOrder as i32);
    assert_eq!(saga_state(expiry), SagaState::Completed, "{expiry:#?}");

    // The paid order's deadline was due before the unpaid one's, so the
    // expiry passes have been past it: its payment cleared it, it is still
    // paid, and no cancel of it completed.
    assert_eq!(
        order_status(&m.order(&paid.order_id).await),
        OrderStatus::Paid
    );
    assert!(
        !sagas.iter().any(|s| {
            s.idempotency_key == format!("expire:{}", paid.order_id)
                && saga_state(s) == SagaState::Completed
        }),
        "a paid order was cancelled by expiry"
    );

    let fan = m.product("FAN").await;
    assert_eq!(
        (fan.available, fan.reserved, fan.sold, fan.restocked),
        (8, 0, 2, 0),
        "the expired order's stock is released: {fan:?}"
    );
    let xena = m.balance("xena").await;
    assert_eq!(
        (xena.deducted, xena.refunded),
        (20, 20),
        "the expired order's points are refunded: {xena:?}"
    );
    assert_eq!(
        m.coupon("TTL").await.times_used,
        0,
        "the expired order's coupon use is given back"
    );

    m.assert_invariants().await;
    orch.stop().await;
    for server in [inventory, loyalty, order] {
        server.stop().await;
    }
}
