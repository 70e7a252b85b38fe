//! Checkouts: concurrent orders never oversell, business rejections
//! compensate and restore, invalid requests have no effect, one
//! idempotency key makes one order.

use super::*;

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
