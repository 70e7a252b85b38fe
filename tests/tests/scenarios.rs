//! Cross-service scenarios over loopback gRPC: real servers, real stores,
//! no mocks. Every scenario ends with the invariants of ARCHITECTURE §8.
//! State is awaited by bounded polling, never by sleeping.

use std::{collections::HashSet, time::Duration};

use microshop::mesh::{MeshAddrs, MeshClients};
use microshop_proto::{
    orchestrator::v1::{
        self as orch, SagaState, StepStatus, checkout_service_client::CheckoutServiceClient,
        saga_admin_service_client::SagaAdminServiceClient,
    },
    order::v1::{self as ord, OrderStatus},
};
use microshop_runtime::Reason;
use microshop_tests::{
    CONNECT_WITHIN, EARN_AMOUNT_PER_POINT, Participant, SETTLE_WITHIN, Shop, TestMesh,
    action_attempts, action_status, any_port, compensation_status, eventually, expect_error,
    health_client, listen, order_request, reserve, saga_id_of, saga_state, short_budget_engine,
    spawn_orchestrator, spawn_participant, step, test_engine, wait_health,
};
use orchestrator::{EngineConfig, ParticipantUrls};
use tokio::task::JoinSet;
use tonic::{Code, Response, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

const INVENTORY: &str = "microshop.inventory.v1.InventoryService";
const LOYALTY: &str = "microshop.loyalty.v1.LoyaltyService";
const ORDER: &str = "microshop.order.v1.OrderService";
const CHECKOUT: &str = "microshop.orchestrator.v1.CheckoutService";

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
// 7. A participant goes down and comes back.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_outage_fails_then_retries() {
    let dir = tempfile::tempdir().expect("a temporary data directory");
    let inventory = spawn_participant(Participant::Inventory, listen(any_port()).await, dir.path());
    let loyalty = spawn_participant(Participant::Loyalty, listen(any_port()).await, dir.path());
    let order = spawn_participant(Participant::Order, listen(any_port()).await, dir.path());
    let urls = ParticipantUrls {
        inventory: inventory.url(),
        loyalty: loyalty.url(),
        order: order.url(),
    };
    let orch = spawn_orchestrator(
        listen(any_port()).await,
        dir.path(),
        urls,
        short_budget_engine(),
    );
    let addrs = MeshAddrs {
        orchestrator: orch.addr,
        inventory: inventory.addr,
        loyalty: loyalty.addr,
        order: order.addr,
    };
    let mut shop = Shop::connect(&addrs).await;
    let health = health_client(orch.addr);
    wait_health(&health, LOYALTY, ServingStatus::Serving, SETTLE_WITHIN).await;

    shop.put_product("BIKE", 500_000, 10).await;
    shop.grant_points("una", 100).await;
    shop.grant_points("vic", 100).await;
    // The orchestrator talks to loyalty-svc before it goes down.
    shop.place_ok(order_request("warm-1", "una", &[("BIKE", 1)], "", 10))
        .await;

    let loyalty_addr = loyalty.addr;
    loyalty.stop().await;
    // Held, refusing connections as a stopped service does, until loyalty
    // comes back: no other test's socket takes the port meanwhile.
    let loyalty_port = reserve(loyalty_addr).await;

    // A checkout redeeming points: reserve-stock succeeds, deduct-points
    // runs out of its budget, the saga is FAILED (held for an operator).
    let status = expect_error(
        shop.place_order(order_request("down-1", "una", &[("BIKE", 2)], "", 20))
            .await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let retried_id = saga_id_of(&status);
    let saga = shop.saga(&retried_id).await;
    assert_eq!(saga_state(&saga), SagaState::Failed, "{saga:#?}");
    assert!(!saga.failure_reason.is_empty());
    assert_eq!(
        action_status(step(&saga, "reserve-stock")),
        StepStatus::Succeeded
    );
    let deduct = step(&saga, "deduct-points");
    assert_eq!(action_status(deduct), StepStatus::Failed, "{saga:#?}");
    assert!(
        (1..=4).contains(&action_attempts(deduct)),
        "bounded attempts: {saga:#?}"
    );
    assert_eq!(action_attempts(step(&saga, "create-order")), 0);

    // A second one, to be aborted.
    let status = expect_error(
        shop.place_order(order_request("down-2", "vic", &[("BIKE", 3)], "", 30))
            .await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let aborted_id = saga_id_of(&status);

    let failed = shop.sagas_in(SagaState::Failed).await;
    for id in [&retried_id, &aborted_id] {
        let s = failed
            .iter()
            .find(|s| &s.saga_id == id)
            .unwrap_or_else(|| panic!("ListSagas(FAILED) lists {id}: {failed:#?}"));
        assert!(!s.failure_reason.is_empty(), "{s:#?}");
    }
    assert!(
        failed.iter().all(|s| saga_state(s) == SagaState::Failed),
        "the state filter holds"
    );
    let bike = shop.product("BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (4, 6),
        "FAILED sagas hold their reservations until resolved: {bike:?}"
    );

    // The orchestrator reports the outage and keeps serving.
    wait_health(&health, LOYALTY, ServingStatus::NotServing, SETTLE_WITHIN).await;
    wait_health(&health, "", ServingStatus::Serving, SETTLE_WITHIN).await;
    assert!(!orch.is_finished(), "the orchestrator must not stop");

    // loyalty-svc comes back on the same port with the same data.
    let loyalty = spawn_participant(Participant::Loyalty, loyalty_port.listen(), dir.path());
    wait_health(&health, LOYALTY, ServingStatus::Serving, SETTLE_WITHIN).await;
    assert!(!loyalty.is_finished(), "loyalty-svc restarted");
    shop.clients = MeshClients::connect(&addrs, CONNECT_WITHIN)
        .await
        .expect("reconnect");

    // RetrySaga finishes the first checkout.
    let saga = shop
        .clients
        .admin
        .clone()
        .retry_saga(orch::RetrySagaRequest {
            saga_id: retried_id.clone(),
        })
        .await
        .expect("RetrySaga")
        .into_inner()
        .saga
        .expect("the saga");
    assert_eq!(saga_state(&saga), SagaState::Completed, "{saga:#?}");
    assert!(!saga.order_id.is_empty());
    let order_placed = shop.order(&saga.order_id).await;
    assert_eq!(order_status(&order_placed), OrderStatus::PendingPayment);
    assert_eq!(order_placed.redeemed_points, 20);
    // The client's retry with the same key now answers that order.
    let answer = shop
        .place_ok(order_request("down-1", "una", &[("BIKE", 2)], "", 20))
        .await;
    assert_eq!(answer.order_id, saga.order_id);
    let una = shop.balance("una").await;
    assert_eq!(una.points, 100 - 10 - 20, "{una:?}");

    // AbortSaga compensates the second: its reservation is released.
    let saga = shop
        .clients
        .admin
        .clone()
        .abort_saga(orch::AbortSagaRequest {
            saga_id: aborted_id.clone(),
            reason: "customer gave up".into(),
        })
        .await
        .expect("AbortSaga")
        .into_inner()
        .saga
        .expect("the saga");
    assert_eq!(saga_state(&saga), SagaState::Compensated, "{saga:#?}");
    assert_eq!(
        compensation_status(step(&saga, "reserve-stock")),
        Some(StepStatus::Succeeded),
        "{saga:#?}"
    );
    let bike = shop.product("BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (7, 3),
        "the aborted saga's stock is released: {bike:?}"
    );
    let vic = shop.balance("vic").await;
    assert_eq!((vic.points, vic.deducted), (100, 0), "{vic:?}");
    assert!(shop.orders_of("vic").await.is_empty());

    shop.assert_invariants().await;
    orch.stop().await;
    for server in [inventory, loyalty, order] {
        server.stop().await;
    }
}

// ---------------------------------------------------------------------------
// 8. The orchestrator starts with every participant down.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrator_starts_with_participants_down() {
    let dir = tempfile::tempdir().expect("a temporary data directory");
    // Three ports nothing listens on yet: reserved (connections refused)
    // until the participants come up on them.
    let inv_port = reserve(any_port()).await;
    let loy_port = reserve(any_port()).await;
    let ord_port = reserve(any_port()).await;
    let (inv_addr, loy_addr, ord_addr) = (inv_port.addr(), loy_port.addr(), ord_port.addr());
    let urls = ParticipantUrls {
        inventory: format!("http://{inv_addr}"),
        loyalty: format!("http://{loy_addr}"),
        order: format!("http://{ord_addr}"),
    };
    // Budgets long enough that the saga is still retrying when the
    // client's deadline comes: the answer must come from the server.
    let engine = EngineConfig {
        step_attempts: 1_000,
        step_budget: Duration::from_secs(8),
        ..short_budget_engine()
    };
    let orch = spawn_orchestrator(listen(any_port()).await, dir.path(), urls, engine);
    let health = health_client(orch.addr);
    wait_health(&health, "", ServingStatus::Serving, SETTLE_WITHIN).await;
    wait_health(&health, CHECKOUT, ServingStatus::Serving, SETTLE_WITHIN).await;
    for name in [INVENTORY, LOYALTY, ORDER] {
        wait_health(&health, name, ServingStatus::NotServing, SETTLE_WITHIN).await;
    }
    assert!(!orch.is_finished(), "the orchestrator must not stop");

    let channel: Channel = microshop::mesh::connect(&orch.url(), CONNECT_WITHIN)
        .await
        .expect("connect to the orchestrator");
    let mut checkout = CheckoutServiceClient::new(channel.clone());
    let admin = SagaAdminServiceClient::new(channel);
    let request = order_request("dark-1", "wes", &[("BIKE", 1)], "", 0);
    // A 5 s deadline: the server answers 500 ms before it (its largest
    // margin), a wide one for a loaded runner.
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(Duration::from_secs(5));
    // The server's own answer (its reason and saga id), not the client's
    // DEADLINE_EXCEEDED: it answered within the caller's deadline.
    let status = expect_error(
        checkout.place_order(call).await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let saga_id = saga_id_of(&status);

    // The saga runs out of its budget: FAILED with a reason, no crash.
    let sagas = microshop_tests::quiesce(&admin, SETTLE_WITHIN).await;
    let saga = sagas
        .iter()
        .find(|s| s.saga_id == saga_id)
        .expect("the saga is listed");
    assert_eq!(saga_state(saga), SagaState::Failed, "{saga:#?}");
    assert!(!saga.failure_reason.is_empty());
    assert!(!orch.is_finished(), "the orchestrator must not stop");
    wait_health(&health, "", ServingStatus::Serving, SETTLE_WITHIN).await;

    // The participants come up where they were expected: the orchestrator
    // sees them and the held saga completes on retry.
    let inventory = spawn_participant(Participant::Inventory, inv_port.listen(), dir.path());
    let loyalty = spawn_participant(Participant::Loyalty, loy_port.listen(), dir.path());
    let order = spawn_participant(Participant::Order, ord_port.listen(), dir.path());
    for name in [INVENTORY, LOYALTY, ORDER] {
        wait_health(&health, name, ServingStatus::Serving, SETTLE_WITHIN).await;
    }
    let addrs = MeshAddrs {
        orchestrator: orch.addr,
        inventory: inv_addr,
        loyalty: loy_addr,
        order: ord_addr,
    };
    let mut shop = Shop::connect(&addrs).await;
    shop.put_product("BIKE", 500_000, 4).await;
    shop.universe.customers.insert("wes".into());
    let saga = shop
        .clients
        .admin
        .clone()
        .retry_saga(orch::RetrySagaRequest {
            saga_id: saga_id.clone(),
        })
        .await
        .expect("RetrySaga")
        .into_inner()
        .saga
        .expect("the saga");
    assert_eq!(saga_state(&saga), SagaState::Completed, "{saga:#?}");
    let answer = shop.place_ok(request).await;
    assert_eq!(answer.order_id, saga.order_id);
    let bike = shop.product("BIKE").await;
    assert_eq!((bike.available, bike.reserved), (3, 1), "{bike:?}");

    shop.assert_invariants().await;
    orch.stop().await;
    for server in [inventory, loyalty, order] {
        server.stop().await;
    }
}
