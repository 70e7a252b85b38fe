//! The participant barrier: a repeated CreateOrder replays the first order;
//! CancelOrder before CreateOrder is a null compensation that refuses the
//! late create; a cancel gives the coupon use back, once.

use microshop_proto::order::v1::{CancelOrderRequest, CouponKind, CreateOrderRequest, OrderStatus};
use microshop_runtime::{Reason, errors::metadata_of};
use tonic::Code;

use crate::{
    Server, assert_invalid, assert_rejected, cancel, coupon, create, get_order, list, mark_paid,
    ms_of, now_ms, order_request, put_coupon,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_create_replays_the_first_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "TWICE", CouponKind::Percentage, 5, 10).await;
    let request = CreateOrderRequest {
        coupon_code: "TWICE".into(),
        ..order_request("saga-dup", "ann")
    };

    let first = create(client, request.clone()).await.expect("create");
    let second = create(client, request.clone()).await.expect("repeat");
    assert_eq!(second, first);
    // A redelivery with another payload still answers the first order.
    let third = create(
        client,
        CreateOrderRequest {
            redeemed_points: 10,
            ..request
        },
    )
    .await
    .expect("repeat");
    assert_eq!(third.order_id, first.order_id);
    assert_eq!(third.redeemed_points, 0);

    assert_eq!(coupon(client, "TWICE").await.times_used, 1);
    assert_eq!(
        list(client, "ann", 0, "").await.expect("list").orders.len(),
        1
    );

    // A replay answers the order as it is now.
    mark_paid(client, "saga-dup", &first.order_id, "pay-1")
        .await
        .expect("mark paid");
    let replay = create(client, order_request("saga-dup", "ann"))
        .await
        .expect("repeat");
    assert_eq!(replay.status(), OrderStatus::Paid);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_before_create_is_a_null_compensation_and_refuses_the_create() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "LATE", CouponKind::Fixed, 1_000, 1).await;

    assert_eq!(cancel(client, "saga-late", "").await.expect("cancel"), None);
    // Repeated: still a no-op.
    assert_eq!(cancel(client, "saga-late", "").await.expect("cancel"), None);

    let err = create(
        client,
        CreateOrderRequest {
            coupon_code: "LATE".into(),
            ..order_request("saga-late", "ann")
        },
    )
    .await
    .unwrap_err();
    assert_rejected(
        &err,
        Code::FailedPrecondition,
        Reason::SagaAlreadyCompensated,
    );
    assert_eq!(metadata_of(&err, "sagaId").as_deref(), Some("saga-late"));
    assert!(
        list(client, "ann", 0, "")
            .await
            .expect("list")
            .orders
            .is_empty()
    );
    assert_eq!(coupon(client, "LATE").await.times_used, 0);

    // The compensation of a rejected create is a null compensation too.
    let rejected = create(
        client,
        CreateOrderRequest {
            coupon_code: "MISSING".into(),
            ..order_request("saga-rejected", "ann")
        },
    )
    .await
    .unwrap_err();
    assert_rejected(&rejected, Code::FailedPrecondition, Reason::CouponInvalid);
    assert_eq!(
        cancel(client, "saga-rejected", "").await.expect("cancel"),
        None
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_gives_the_coupon_use_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "ONE", CouponKind::Percentage, 20, 1).await;

    let order = create(
        client,
        CreateOrderRequest {
            coupon_code: "ONE".into(),
            ..order_request("saga-1", "ann")
        },
    )
    .await
    .expect("create");
    assert_eq!(coupon(client, "ONE").await.times_used, 1);
    let exhausted = create(
        client,
        CreateOrderRequest {
            coupon_code: "ONE".into(),
            ..order_request("saga-2", "ann")
        },
    )
    .await
    .unwrap_err();
    assert_rejected(
        &exhausted,
        Code::FailedPrecondition,
        Reason::CouponExhausted,
    );

    // Another saga's order id is refused, and nothing changes.
    let wrong = client
        .cancel_order(CancelOrderRequest {
            saga_id: "saga-1".into(),
            order_id: "not-this-order".into(),
            reason: String::new(),
            only_if_unpaid: false,
        })
        .await
        .unwrap_err();
    assert_invalid(&wrong, "order_id");
    assert_eq!(coupon(client, "ONE").await.times_used, 1);

    let before = now_ms();
    let cancelled = client
        .cancel_order(CancelOrderRequest {
            saga_id: "saga-1".into(),
            order_id: order.order_id.clone(),
            reason: "payment expired".into(),
            only_if_unpaid: false,
        })
        .await
        .expect("cancel")
        .into_inner()
        .order
        .expect("the cancelled order");
    assert_eq!(cancelled.order_id, order.order_id);
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    let cancelled_ms = ms_of(cancelled.cancelled_at.as_ref());
    assert!(cancelled_ms >= before);
    let last = cancelled.status_history.last().expect("history");
    assert_eq!(last.status(), OrderStatus::Cancelled);
    assert_eq!(last.note, "payment expired");
    assert_eq!(cancelled.status_history.len(), 2);
    assert_eq!(coupon(client, "ONE").await.times_used, 0);

    // Repeated: no second effect.
    let again = cancel(client, "saga-1", "again").await.expect("cancel");
    assert_eq!(again.as_ref(), Some(&cancelled));
    assert_eq!(coupon(client, "ONE").await.times_used, 0);
    assert_eq!(
        get_order(client, &order.order_id).await.expect("get"),
        cancelled
    );

    // The use given back can be taken by another order.
    create(
        client,
        CreateOrderRequest {
            coupon_code: "ONE".into(),
            ..order_request("saga-3", "ann")
        },
    )
    .await
    .expect("create with the freed use");
    assert_eq!(coupon(client, "ONE").await.times_used, 1);
    server.stop().await;
}
