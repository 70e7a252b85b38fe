//! Cross-service scenarios over loopback gRPC: real servers, real stores,
//! no mocks. Every scenario ends with the invariants of `docs/architecture.md`.
//! State is awaited by bounded polling, never by sleeping.

use std::{collections::HashSet, time::Duration};

use microshop::mesh::{MeshAddrs, MeshClients};
use microshop_proto::{
    orchestrator::v1::{self as orch, SagaState, StepStatus},
    order::v1::{self as ord, OrderStatus},
};
use microshop_runtime::Reason;
use microshop_tests::{
    CONNECT_WITHIN, EARN_AMOUNT_PER_POINT, Participant, SETTLE_WITHIN, Shop, TestMesh,
    action_attempts, action_status, any_port, compensation_status, eventually, expect_error,
    listen, order_request, saga_id_of, saga_state, spawn_orchestrator, spawn_participant, step,
    test_engine,
};
use orchestrator::{EngineConfig, ParticipantUrls};
use order_svc::PricingRules;
use tokio::task::JoinSet;
use tonic::{Code, Response};
use tonic_types::StatusExt;

/// Asserts `saga` ended COMPENSATED because `failed` was rejected, that
/// each of `undone` had succeeded and was compensated, that every
/// compensation that ran SUCCEEDED, and that no step after `failed` ran.
#[track_caller]
fn assert_compensated(saga: &orch::Saga, failed: &str, undone: &[&str]) {
    assert_eq!(
        saga_state(saga),
        SagaState::Compensated,
        "saga should be COMPENSATED: {saga:#?}"
    );
    assert_eq!(
        action_status(step(saga, failed)),
        StepStatus::Failed,
        "{failed} should be FAILED: {saga:#?}"
    );
    for name in undone {
        let s = step(saga, name);
        assert_eq!(action_status(s), StepStatus::Succeeded, "{name}: {saga:#?}");
        assert_eq!(
            compensation_status(s),
            Some(StepStatus::Succeeded),
            "{name} should be compensated: {saga:#?}"
        );
    }
    for s in &saga.steps {
        if let Some(status) = compensation_status(s) {
            assert_eq!(
                status,
                StepStatus::Succeeded,
                "compensation of {}: {saga:#?}",
                s.name
            );
        }
    }
    let after = saga.steps.iter().skip_while(|s| s.name != failed).skip(1);
    for s in after {
        assert_eq!(action_attempts(s), 0, "{} ran after {failed}", s.name);
    }
}

fn order_status(o: &ord::Order) -> OrderStatus {
    OrderStatus::try_from(o.status).unwrap_or(OrderStatus::Unspecified)
}

// ---------------------------------------------------------------------------
// 1. The old shop's oversell race.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_never_oversell() {
    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("TSHIRT", 150_000, 10).await;

    let mut race = JoinSet::new();
    for i in 0..15 {
        let customer = format!("racer-{i:02}");
        m.universe.customers.insert(customer.clone());
        let mut checkout = m.clients.checkout.clone();
        race.spawn(async move {
            let request = order_request(&format!("race-{i}"), &customer, &[("TSHIRT", 2)], "", 0);
            checkout
                .place_order(request)
                .await
                .map(Response::into_inner)
        });
    }
    let results = race.join_all().await;

    let mut order_ids = HashSet::new();
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(r) => {
                assert_eq!(r.state, SagaState::Completed as i32);
                let order = r.order.expect("a successful PlaceOrder returns the order");
                assert_eq!(order.order_id, r.order_id);
                assert_eq!(order_status(&order), OrderStatus::PendingPayment);
                // 2 × 150,000 + 10% tax + 50,000 shipping, priced server-side.
                assert_eq!(order.items_price, 300_000);
                assert_eq!(order.total_price, 380_000);
                assert!(order_ids.insert(r.order_id), "two winners got one order id");
            }
            Err(status) => refused.push(expect_error(
                Err::<(), _>(status),
                Code::FailedPrecondition,
                Reason::OutOfStock,
            )),
        }
    }
    assert_eq!(order_ids.len(), 5, "exactly 5 orders of 2 fit in stock 10");
    assert_eq!(refused.len(), 10, "the other 10 are refused OUT_OF_STOCK");

    let tshirt = m.product("TSHIRT").await;
    assert_eq!(
        (tshirt.available, tshirt.reserved, tshirt.sold),
        (0, 10, 0),
        "{tshirt:?}"
    );

    // Every refusal was compensated (a null release: nothing was reserved).
    for status in &refused {
        let saga = m.saga(&saga_id_of(status)).await;
        assert_compensated(&saga, "reserve-stock", &[]);
    }

    m.assert_invariants().await;
    m.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Business rejections after effects: compensated, everything restored.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejections_compensate_and_restore() {
    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("MUG", 90_000, 20).await;
    m.grant_points("ivy", 10).await;
    m.grant_points("alice", 300).await;
    m.put_coupon("LASTONE", ord::CouponKind::Fixed, 50_000, 1)
        .await;

    // Insufficient points: reserve-stock done, deduct-points refused.
    let status = expect_error(
        m.place_order(order_request("ivy-1", "ivy", &[("MUG", 1)], "", 50))
            .await,
        Code::FailedPrecondition,
        Reason::InsufficientPoints,
    );
    let saga = m.saga(&saga_id_of(&status)).await;
    assert_compensated(&saga, "deduct-points", &["reserve-stock"]);
    let mug = m.product("MUG").await;
    assert_eq!((mug.available, mug.reserved), (20, 0), "{mug:?}");
    let ivy = m.balance("ivy").await;
    assert_eq!((ivy.points, ivy.deducted), (10, 0), "{ivy:?}");

    // A guest redeeming points.
    let status = expect_error(
        m.place_order(order_request("gus-1", "gus", &[("MUG", 1)], "", 10))
            .await,
        Code::FailedPrecondition,
        Reason::NotAMember,
    );
    let saga = m.saga(&saga_id_of(&status)).await;
    assert_compensated(&saga, "deduct-points", &["reserve-stock"]);
    let mug = m.product("MUG").await;
    assert_eq!((mug.available, mug.reserved), (20, 0), "{mug:?}");
    let gus = m.balance("gus").await;
    assert!(!gus.member && gus.points == 0, "{gus:?}");

    // The coupon's only use goes to carol; alice's order then gets through
    // reserve-stock and deduct-points and is refused at create-order.
    let carol = m
        .place_ok(order_request(
            "carol-1",
            "carol",
            &[("MUG", 1)],
            "LASTONE",
            0,
        ))
        .await;
    assert_eq!(carol.order.as_ref().map(|o| o.discount_price), Some(50_000));
    assert_eq!(m.coupon("LASTONE").await.times_used, 1);
    let status = expect_error(
        m.place_order(order_request(
            "alice-1",
            "alice",
            &[("MUG", 1)],
            "LASTONE",
            50,
        ))
        .await,
        Code::FailedPrecondition,
        Reason::CouponExhausted,
    );
    let saga = m.saga(&saga_id_of(&status)).await;
    assert_compensated(&saga, "create-order", &["reserve-stock", "deduct-points"]);
    let mug = m.product("MUG").await;
    assert_eq!(
        (mug.available, mug.reserved),
        (19, 1),
        "only carol's unit stays reserved: {mug:?}"
    );
    let alice = m.balance("alice").await;
    assert_eq!(
        (alice.points, alice.deducted, alice.refunded),
        (300, 50, 50),
        "{alice:?}"
    );
    let coupon = m.coupon("LASTONE").await;
    assert_eq!((coupon.times_used, coupon.usage_limit), (1, 1));
    assert!(
        m.orders_of("alice").await.is_empty(),
        "a compensated checkout leaves no order"
    );

    m.assert_invariants().await;
    m.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Invalid requests: refused before any effect.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_have_no_effect() {
    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("BOOK", 200_000, 5).await;
    m.grant_points("olga", 1_000).await;

    // Payable is 200,000 + 20,000 + 50,000 = 270,000: 1,000 points
    // (1,000,000₫) is an over-redemption, refused at the quote.
    let status = expect_error(
        m.place_order(order_request("olga-1", "olga", &[("BOOK", 1)], "", 1_000))
            .await,
        Code::InvalidArgument,
        Reason::InvalidRequest,
    );
    let fields: Vec<String> = status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert!(
        fields.iter().any(|f| f.contains("points_to_redeem")),
        "BadRequest names points_to_redeem: {fields:?}"
    );
    let saga = m.saga(&saga_id_of(&status)).await;
    assert_eq!(saga_state(&saga), SagaState::Compensated, "{saga:#?}");
    for s in &saga.steps {
        if s.name == "quote" {
            assert_eq!(action_status(s), StepStatus::Failed, "{saga:#?}");
            assert!(action_attempts(s) >= 1);
        } else {
            assert_eq!(action_attempts(s), 0, "{} ran: {saga:#?}", s.name);
            assert_eq!(compensation_status(s), None, "{}: {saga:#?}", s.name);
        }
    }
    let book = m.product("BOOK").await;
    assert_eq!((book.available, book.reserved), (5, 0), "{book:?}");
    let olga = m.balance("olga").await;
    assert_eq!((olga.points, olga.deducted), (1_000, 0), "{olga:?}");

    // Malformed requests: refused by validation, no saga at all.
    let sagas_before = m.sagas().await.len();
    let bad = [
        ("empty cart", order_request("bad-1", "olga", &[], "", 0)),
        (
            "empty customer id",
            order_request("bad-2", "", &[("BOOK", 1)], "", 0),
        ),
        (
            "customer id with whitespace",
            order_request("bad-3", "olga smith", &[("BOOK", 1)], "", 0),
        ),
        (
            "empty idempotency key",
            order_request("", "olga", &[("BOOK", 1)], "", 0),
        ),
        (
            "sku with whitespace",
            order_request("bad-5", "olga", &[("BO OK", 1)], "", 0),
        ),
        (
            "zero quantity",
            order_request("bad-6", "olga", &[("BOOK", 0)], "", 0),
        ),
        (
            "negative points",
            order_request("bad-7", "olga", &[("BOOK", 1)], "", -5),
        ),
    ];
    for (what, request) in bad {
        let status = m.place_order(request).await;
        let status = expect_error(status, Code::InvalidArgument, Reason::InvalidRequest);
        assert!(
            microshop_runtime::errors::metadata_of(&status, "sagaId").is_none(),
            "{what}: no saga should be started"
        );
        assert!(
            status
                .get_error_details()
                .bad_request()
                .is_some_and(|b| !b.field_violations.is_empty()),
            "{what}: BadRequest names the field"
        );
    }
    assert_eq!(
        m.sagas().await.len(),
        sagas_before,
        "no saga was created for a malformed request"
    );
    let book = m.product("BOOK").await;
    assert_eq!((book.available, book.reserved), (5, 0), "{book:?}");

    m.assert_invariants().await;
    m.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. One idempotency key, one saga, at most one order.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_one_order() {
    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("LAMP", 300_000, 10).await;
    m.universe.customers.insert("dora".into());

    let mut dupes = JoinSet::new();
    for _ in 0..6 {
        let mut checkout = m.clients.checkout.clone();
        dupes.spawn(async move {
            checkout
                .place_order(order_request("dup-1", "dora", &[("LAMP", 3)], "", 0))
                .await
                .map(Response::into_inner)
        });
    }
    let answers: Vec<orch::PlaceOrderResponse> = dupes
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("every duplicate gets the order"))
        .collect();
    let first = &answers[0];
    assert!(!first.order_id.is_empty());
    for a in &answers {
        assert_eq!(a.order_id, first.order_id, "one key, one order");
        assert_eq!(a.saga_id, first.saga_id, "one key, one saga");
    }
    let orders = m.orders_of("dora").await;
    assert_eq!(orders.len(), 1, "exactly one order exists: {orders:#?}");
    assert_eq!(orders[0].order_id, first.order_id);
    let lamp = m.product("LAMP").await;
    assert_eq!(
        (lamp.available, lamp.reserved),
        (7, 3),
        "stock taken once: {lamp:?}"
    );
    let sagas = m.sagas().await;
    assert_eq!(
        sagas
            .iter()
            .filter(|s| s.idempotency_key == "dup-1")
            .count(),
        1
    );

    // The same key with another cart.
    let status = expect_error(
        m.place_order(order_request("dup-1", "dora", &[("LAMP", 4)], "", 0))
            .await,
        Code::AlreadyExists,
        Reason::IdempotencyKeyReused,
    );
    assert_eq!(saga_id_of(&status), first.saga_id);
    let lamp = m.product("LAMP").await;
    assert_eq!((lamp.available, lamp.reserved), (7, 3), "{lamp:?}");

    // A rejected key answers its retry with the same error, from the same
    // saga, running nothing again.
    let rejected = order_request("dup-2", "dora", &[("LAMP", 50)], "", 0);
    let first_refusal = expect_error(
        m.place_order(rejected.clone()).await,
        Code::FailedPrecondition,
        Reason::OutOfStock,
    );
    let saga_before = m.saga(&saga_id_of(&first_refusal)).await;
    let again = expect_error(
        m.place_order(rejected).await,
        Code::FailedPrecondition,
        Reason::OutOfStock,
    );
    assert_eq!(saga_id_of(&again), saga_id_of(&first_refusal));
    let saga_after = m.saga(&saga_id_of(&again)).await;
    assert_eq!(
        action_attempts(step(&saga_after, "reserve-stock")),
        action_attempts(step(&saga_before, "reserve-stock")),
        "the retry ran no step"
    );
    let sagas = m.sagas().await;
    assert_eq!(
        sagas
            .iter()
            .filter(|s| s.idempotency_key == "dup-2")
            .count(),
        1
    );
    assert_eq!(m.orders_of("dora").await.len(), 1);
    let lamp = m.product("LAMP").await;
    assert_eq!((lamp.available, lamp.reserved), (7, 3), "{lamp:?}");

    m.assert_invariants().await;
    m.shutdown().await;
}

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
