//! order-svc end to end: the real server (`run`) on a loopback port, a fresh
//! data directory per test, and the generated gRPC client.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use microshop_proto::order::v1::{
    CancelOrderRequest, CouponKind, CreateOrderRequest, GetCouponRequest, GetCouponResponse,
    GetOrderRequest, ListOrdersRequest, ListOrdersResponse, MarkPaidRequest, MarkShippedRequest,
    Order, OrderLine, OrderStatus, Pricing, PricingRules as WireRules, PutCouponRequest,
    QuoteOrderRequest, Shipping, StatusChange, order_service_client::OrderServiceClient,
};
use microshop_runtime::{
    Reason,
    errors::{metadata_of, reason_of},
    testing::TestServer,
};
use order_svc::{OrderConfig, PricingRules, run};
use prost_types::Timestamp;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

type Client = OrderServiceClient<Channel>;

/// A running server and a client of it.
struct Server {
    client: Client,
    inner: TestServer,
}

impl Server {
    /// Serves `dir` on a fresh loopback port with the seed pricing rules and
    /// connects to it.
    async fn start(dir: &Path) -> Self {
        Self::start_with(dir, PricingRules::default()).await
    }

    /// Serves `dir` pricing by `rules`.
    async fn start_with(dir: &Path, rules: PricingRules) -> Self {
        let mut config = OrderConfig::new(microshop_runtime::testing::server_args(dir));
        config.pricing = rules;
        let inner =
            TestServer::start(|listener, shutdown| run(listener, config.clone(), shutdown)).await;
        Self {
            client: OrderServiceClient::new(inner.channel.clone()),
            inner,
        }
    }

    /// Stops the server gracefully and waits for it to finish.
    async fn stop(self) {
        drop(self.client);
        self.inner.stop().await;
    }
}

fn now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    i64::try_from(ms).expect("millis fit in i64")
}

fn ms_of(ts: Option<&Timestamp>) -> i64 {
    let ts = ts.expect("timestamp set");
    ts.seconds * 1_000 + i64::from(ts.nanos / 1_000_000)
}

fn line(sku: &str, quantity: i64, unit_price: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        name: format!("product {sku}"),
        quantity,
        unit_price,
    }
}

fn assert_rejected(status: &Status, code: Code, reason: Reason) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status), Some(reason), "{status:?}");
}

/// The fields a `BadRequest` detail names.
fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn assert_invalid(status: &Status, field: &str) {
    assert_rejected(status, Code::InvalidArgument, Reason::InvalidRequest);
    assert!(
        bad_fields(status).iter().any(|f| f == field),
        "expected a violation of {field}: {status:?}"
    );
}

async fn put_coupon(client: &mut Client, code: &str, kind: CouponKind, value: i64, limit: i64) {
    client
        .put_coupon(PutCouponRequest {
            code: code.into(),
            kind: kind.into(),
            value,
            usage_limit: limit,
        })
        .await
        .expect("put coupon");
}

async fn coupon(client: &mut Client, code: &str) -> GetCouponResponse {
    client
        .get_coupon(GetCouponRequest { code: code.into() })
        .await
        .expect("get coupon")
        .into_inner()
}

async fn quote(
    client: &mut Client,
    lines: Vec<OrderLine>,
    coupon_code: &str,
    points: i64,
) -> Result<Pricing, Status> {
    client
        .quote_order(QuoteOrderRequest {
            lines,
            coupon_code: coupon_code.into(),
            points_to_redeem: points,
        })
        .await
        .map(|r| r.into_inner().pricing.expect("pricing set"))
}

/// A plain order request: 2 x 150,000 for `customer`, no coupon or points.
fn order_request(saga_id: &str, customer_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        saga_id: saga_id.into(),
        customer_id: customer_id.into(),
        lines: vec![line("SKU-A", 2, 150_000)],
        ..CreateOrderRequest::default()
    }
}

async fn create(client: &mut Client, request: CreateOrderRequest) -> Result<Order, Status> {
    client
        .create_order(request)
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

async fn cancel(client: &mut Client, saga_id: &str, reason: &str) -> Result<Option<Order>, Status> {
    client
        .cancel_order(CancelOrderRequest {
            saga_id: saga_id.into(),
            order_id: String::new(),
            reason: reason.into(),
            only_if_unpaid: false,
        })
        .await
        .map(|r| r.into_inner().order)
}

async fn mark_paid(
    client: &mut Client,
    saga_id: &str,
    order_id: &str,
    payment_ref: &str,
) -> Result<Order, Status> {
    client
        .mark_paid(MarkPaidRequest {
            saga_id: saga_id.into(),
            order_id: order_id.into(),
            payment_ref: payment_ref.into(),
        })
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

async fn mark_shipped(client: &mut Client, order_id: &str) -> Result<Order, Status> {
    client
        .mark_shipped(MarkShippedRequest {
            order_id: order_id.into(),
        })
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

async fn get_order(client: &mut Client, order_id: &str) -> Result<Order, Status> {
    client
        .get_order(GetOrderRequest {
            order_id: order_id.into(),
        })
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

async fn list(
    client: &mut Client,
    customer_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListOrdersResponse, Status> {
    client
        .list_orders(ListOrdersRequest {
            customer_id: customer_id.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread")]
async fn quote_applies_the_seed_pricing_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "PCT10", CouponKind::Percentage, 10, 5).await;
    put_coupon(client, "FIX100K", CouponKind::Fixed, 100_000, 5).await;
    put_coupon(client, "BIGFIX", CouponKind::Fixed, 10_000_000, 5).await;
    let cart = || vec![line("SKU-A", 2, 150_000)];

    assert_eq!(
        quote(client, cart(), "", 0).await.expect("quote"),
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

    // Free shipping from 2,000,000 of items; 1,999,999 still pays it.
    let big = quote(client, vec![line("SKU-B", 4, 500_000)], "", 0)
        .await
        .expect("quote");
    assert_eq!(
        (
            big.items_price,
            big.tax_price,
            big.shipping_price,
            big.total_price
        ),
        (2_000_000, 200_000, 0, 2_200_000)
    );
    let below = quote(client, vec![line("SKU-B", 1, 1_999_999)], "", 0)
        .await
        .expect("quote");
    assert_eq!(below.shipping_price, 50_000);
    assert_eq!(below.tax_price, 200_000); // 199,999.9 rounded half up

    let pct = quote(client, cart(), "PCT10", 0).await.expect("quote");
    assert_eq!((pct.discount_price, pct.total_price), (30_000, 350_000));

    let fixed = quote(client, cart(), "FIX100K", 0).await.expect("quote");
    assert_eq!(
        (fixed.discount_price, fixed.total_price),
        (100_000, 280_000)
    );

    // A fixed coupon is capped at the items price.
    let capped = quote(client, cart(), "BIGFIX", 0).await.expect("quote");
    assert_eq!(
        (capped.discount_price, capped.total_price),
        (300_000, 80_000)
    );

    let points = quote(client, cart(), "PCT10", 50).await.expect("quote");
    assert_eq!(
        points,
        Pricing {
            items_price: 300_000,
            tax_price: 30_000,
            shipping_price: 50_000,
            discount_price: 30_000,
            redeemed_points: 50,
            points_discount_price: 50_000,
            total_price: 300_000,
        }
    );

    // Redeeming the whole payable total leaves nothing to pay.
    let all = quote(client, cart(), "", 380).await.expect("quote");
    assert_eq!(all.total_price, 0);

    let unknown = quote(client, cart(), "NOPE", 0).await.unwrap_err();
    assert_rejected(&unknown, Code::FailedPrecondition, Reason::CouponInvalid);
    assert_eq!(metadata_of(&unknown, "couponCode").as_deref(), Some("NOPE"));

    // A quote stores nothing: no coupon use was taken.
    assert_eq!(coupon(client, "PCT10").await.times_used, 0);

    // An exhausted coupon still quotes: CreateOrder decides atomically.
    put_coupon(client, "ONCE", CouponKind::Percentage, 10, 1).await;
    create(
        client,
        CreateOrderRequest {
            coupon_code: "ONCE".into(),
            ..order_request("saga-once", "ann")
        },
    )
    .await
    .expect("create");
    assert!(quote(client, cart(), "ONCE", 0).await.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_redemption_is_invalid_argument() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;

    let err = quote(client, vec![line("SKU-A", 2, 150_000)], "", 381)
        .await
        .unwrap_err();
    assert_invalid(&err, "points_to_redeem");
    assert!(err.message().contains("380"), "says the maximum: {err:?}");

    let request = CreateOrderRequest {
        redeemed_points: 381,
        ..order_request("saga-over", "ann")
    };
    let err = create(client, request.clone()).await.unwrap_err();
    assert_invalid(&err, "redeemed_points");
    // The rejection is recorded: a retry answers the same.
    let again = create(client, request).await.unwrap_err();
    assert_invalid(&again, "redeemed_points");
    assert!(
        list(client, "ann", 0, "")
            .await
            .expect("list")
            .orders
            .is_empty()
    );
    server.stop().await;
}

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
async fn a_coupon_with_one_use_is_used_once_under_concurrency() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    put_coupon(&mut server.client, "ONLYONE", CouponKind::Fixed, 10_000, 1).await;

    let mut calls = Vec::new();
    for i in 0..10 {
        let mut client = server.client.clone();
        calls.push(tokio::spawn(async move {
            create(
                &mut client,
                CreateOrderRequest {
                    coupon_code: "ONLYONE".into(),
                    ..order_request(&format!("saga-race-{i}"), &format!("cust-{i}"))
                },
            )
            .await
        }));
    }
    let mut created = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(order) => {
                assert_eq!(order.discount_price, 10_000);
                created += 1;
            }
            Err(status) => {
                assert_rejected(&status, Code::FailedPrecondition, Reason::CouponExhausted);
                assert_eq!(
                    metadata_of(&status, "couponCode").as_deref(),
                    Some("ONLYONE")
                );
            }
        }
    }
    assert_eq!(created, 1);
    let used = coupon(&mut server.client, "ONLYONE").await;
    assert_eq!((used.times_used, used.usage_limit), (1, 1));
    server.stop().await;
}

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

#[tokio::test(flavor = "multi_thread")]
async fn invalid_inputs_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "KEEP", CouponKind::Fixed, 5_000, 3).await;

    let base = || CreateOrderRequest {
        coupon_code: "KEEP".into(),
        ..order_request("saga-bad", "ann")
    };
    let cases: Vec<(CreateOrderRequest, &str)> = vec![
        (
            CreateOrderRequest {
                lines: vec![],
                ..base()
            },
            "lines",
        ),
        (
            CreateOrderRequest {
                lines: (0..101).map(|i| line(&format!("S{i}"), 1, 1)).collect(),
                ..base()
            },
            "lines",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("SKU-A", 0, 150_000)],
                ..base()
            },
            "lines[0].quantity",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("SKU-A", 10_001, 150_000)],
                ..base()
            },
            "lines[0].quantity",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("SKU-A", 1, -5)],
                ..base()
            },
            "lines[0].unit_price",
        ),
        (
            CreateOrderRequest {
                lines: vec![OrderLine {
                    name: String::new(),
                    ..line("SKU-A", 1, 5)
                }],
                ..base()
            },
            "lines[0].name",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("bad sku", 1, 5)],
                ..base()
            },
            "lines[0].sku",
        ),
        (
            CreateOrderRequest {
                saga_id: String::new(),
                ..base()
            },
            "saga_id",
        ),
        (
            CreateOrderRequest {
                customer_id: "x".repeat(129),
                ..base()
            },
            "customer_id",
        ),
        (
            CreateOrderRequest {
                redeemed_points: -1,
                ..base()
            },
            "redeemed_points",
        ),
        (
            CreateOrderRequest {
                shipping: Some(Shipping {
                    phone: "9".repeat(33),
                    ..Shipping::default()
                }),
                ..base()
            },
            "shipping.phone",
        ),
        (
            CreateOrderRequest {
                shipping: Some(Shipping {
                    address: "a".repeat(1025),
                    ..Shipping::default()
                }),
                ..base()
            },
            "shipping.address",
        ),
    ];
    for (request, field) in cases {
        let err = create(client, request).await.unwrap_err();
        assert_invalid(&err, field);
    }
    // Nothing was stored, and the saga is still free to create its order.
    assert!(
        list(client, "ann", 0, "")
            .await
            .expect("list")
            .orders
            .is_empty()
    );
    assert_eq!(coupon(client, "KEEP").await.times_used, 0);

    let err = quote(client, vec![], "", -1).await.unwrap_err();
    assert_invalid(&err, "lines");
    assert_invalid(&err, "points_to_redeem");

    let bad_coupons = [
        (CouponKind::Unspecified as i32, 10, 1, "kind"),
        (99, 10, 1, "kind"),
        (CouponKind::Percentage as i32, 101, 1, "value"),
        (CouponKind::Percentage as i32, 0, 1, "value"),
        (CouponKind::Fixed as i32, -1, 1, "value"),
        (CouponKind::Fixed as i32, 1_000, 0, "usage_limit"),
    ];
    for (kind, value, usage_limit, field) in bad_coupons {
        let err = client
            .put_coupon(PutCouponRequest {
                code: "KEEP".into(),
                kind,
                value,
                usage_limit,
            })
            .await
            .unwrap_err();
        assert_invalid(&err, field);
    }
    let long_code = client
        .put_coupon(PutCouponRequest {
            code: "C".repeat(65),
            kind: CouponKind::Fixed.into(),
            value: 1,
            usage_limit: 1,
        })
        .await
        .unwrap_err();
    assert_invalid(&long_code, "code");
    let kept = coupon(client, "KEEP").await;
    assert_eq!(
        (kept.kind(), kept.value, kept.usage_limit),
        (CouponKind::Fixed, 5_000, 3)
    );

    let unknown = client
        .get_coupon(GetCouponRequest {
            code: "NEVER".into(),
        })
        .await
        .unwrap_err();
    assert_rejected(&unknown, Code::NotFound, Reason::UnknownCoupon);

    let err = cancel(client, "", "").await.unwrap_err();
    assert_invalid(&err, "saga_id");
    let err = mark_paid(client, "saga-bad", "some-order", "")
        .await
        .unwrap_err();
    assert_invalid(&err, "payment_ref");

    // After all the refusals the saga can still create its order.
    create(client, base()).await.expect("valid create");
    assert_eq!(coupon(client, "KEEP").await.times_used, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn put_coupon_keeps_the_uses_made() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "UPD", CouponKind::Fixed, 5_000, 3).await;
    create(
        client,
        CreateOrderRequest {
            coupon_code: "UPD".into(),
            ..order_request("saga-upd", "ann")
        },
    )
    .await
    .expect("create");
    put_coupon(client, "UPD", CouponKind::Percentage, 15, 10).await;
    let updated = coupon(client, "UPD").await;
    assert_eq!(
        updated,
        GetCouponResponse {
            code: "UPD".into(),
            kind: CouponKind::Percentage.into(),
            value: 15,
            usage_limit: 10,
            times_used: 1,
        }
    );
    server.stop().await;
}

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

/// A US shop: 8.25% tax, $5.99 shipping below $50, 1 point = 1¢, one point
/// earned per $1 paid; amounts in cents.
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

#[tokio::test(flavor = "multi_thread")]
async fn quote_and_create_price_by_the_configured_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_with(dir.path(), usd_rules()).await;
    let client = &mut server.client;
    // 2 × $12.99 + $4.50 = $30.48; tax 8.25% = 251.46¢ → 251¢; shipping
    // $5.99; 100 points = $1.00; total $39.98.
    let lines = vec![line("SHIRT", 2, 1_299), line("CAP", 1, 450)];
    let quoted = client
        .quote_order(QuoteOrderRequest {
            lines: lines.clone(),
            coupon_code: String::new(),
            points_to_redeem: 100,
        })
        .await
        .expect("quote")
        .into_inner();
    let want = Pricing {
        items_price: 3_048,
        tax_price: 251,
        shipping_price: 599,
        discount_price: 0,
        redeemed_points: 100,
        points_discount_price: 100,
        total_price: 3_798,
    };
    assert_eq!(quoted.pricing, Some(want));
    let rules = WireRules {
        tax_rate_bp: 825,
        shipping_price: 599,
        free_shipping_from: 5_000,
        point_value: 1,
        earn_amount_per_point: 100,
        currency: "USD".into(),
    };
    assert_eq!(quoted.pricing_rules, Some(rules.clone()));

    let order = create(
        client,
        CreateOrderRequest {
            saga_id: "saga-usd".into(),
            customer_id: "ann".into(),
            lines,
            redeemed_points: 100,
            ..CreateOrderRequest::default()
        },
    )
    .await
    .expect("create");
    assert_eq!(
        (order.items_price, order.tax_price, order.shipping_price),
        (3_048, 251, 599)
    );
    assert_eq!(order.total_price, 3_798);
    assert_eq!(order.pricing_rules, Some(rules));
    // From $50.00 of items shipping is free.
    let free = quote(client, vec![line("COAT", 1, 5_000)], "", 0)
        .await
        .expect("quote");
    assert_eq!((free.tax_price, free.shipping_price), (413, 0)); // 412.5 → 413
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

#[tokio::test(flavor = "multi_thread")]
async fn invalid_pricing_rules_refuse_to_serve() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (rules, setting) in [
        (
            PricingRules {
                tax_rate_bp: 10_001,
                ..PricingRules::default()
            },
            "--tax-rate-bp",
        ),
        (
            PricingRules {
                point_value: 0,
                ..PricingRules::default()
            },
            "--point-value",
        ),
        (
            PricingRules {
                shipping_price: -1,
                ..PricingRules::default()
            },
            "--shipping-price",
        ),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut config = OrderConfig::new(microshop_runtime::testing::server_args(dir.path()));
        config.pricing = rules;
        let err = run(listener, config, std::future::pending())
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(setting), "{err}");
    }
}
