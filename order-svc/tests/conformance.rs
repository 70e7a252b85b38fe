//! The order storage conformance suite (issue 4): one suite, generic over
//! the storage traits, run against the embedded redb store and the MongoDB
//! store. Asserted here: coupons, order creation and its rejections, every
//! order field round-tripping, the participant barrier of CreateOrder and
//! CancelOrder (`docs/architecture.md`), coupon uses under concurrency, the
//! status moves, and newest-first paging.

use std::{collections::HashSet, time::Instant};

use microshop_runtime::testing::mongodb_for_tests;
use microshop_storage::embedded::Durable;
use order_svc::{
    EmbeddedOrders, MongoOrders, PricingRules,
    domain::{
        CancelOutcome, Coupon, CouponKind, CouponUpdate, CreateOutcome, NewOrder, Order, OrderLine,
        OrderStatus, PayOutcome, ShipOutcome, Shipping,
    },
    lifecycle::now_ms,
    store::{CouponStore, OrderQueries, OrderStore},
};
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------
// The two backends
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedOrders::open(dir.path(), Durable::Yes).expect("open the embedded store");
    suite("embedded", store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_conforms() {
    let Some(db) = mongodb_for_tests("mongodb_store_conforms").await else {
        return;
    };
    let store = MongoOrders::open(db).await.expect("open the MongoDB store");
    suite("mongodb", store).await;
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

/// What every check needs of a store.
trait Store: CouponStore + OrderStore + OrderQueries {}
impl<S: CouponStore + OrderStore + OrderQueries> Store for S {}

/// Every check, in order; each works on customers, coupons and sagas of its
/// own.
async fn suite<S: Store>(backend: &str, store: S) {
    let started = Instant::now();
    coupons(&store).await;
    rejected_creates_store_nothing(&store).await;
    created_order_round_trips_and_cancels(&store).await;
    concurrent_creates_respect_the_usage_limit(&store).await;
    cancel_before_create_refuses_the_create(&store).await;
    pay_and_ship(&store).await;
    list_orders_pages_newest_first(&store).await;
    eprintln!("order conformance on {backend}: {:?}", started.elapsed());
}

fn lines() -> Vec<OrderLine> {
    vec![
        OrderLine {
            sku: "SKU-A".to_owned(),
            name: "Cà phê sữa đá".to_owned(),
            quantity: 2,
            unit_price: 10_000,
        },
        OrderLine {
            sku: "SKU-B".to_owned(),
            name: "Bánh mì".to_owned(),
            quantity: 1,
            unit_price: 5_000,
        },
    ]
}

fn shipping() -> Shipping {
    Shipping {
        name: "Nguyễn Văn A".to_owned(),
        address: "1 Lê Lợi, Quận 1, TP.HCM".to_owned(),
        phone: "+84 90 123 4567".to_owned(),
    }
}

/// An order of [`lines`]: items 25,000, tax 2,500, shipping 50,000.
fn new_order(saga: &str, customer: &str, coupon: Option<&str>, points: i64) -> NewOrder {
    NewOrder {
        saga_id: saga.to_owned(),
        customer_id: customer.to_owned(),
        lines: lines(),
        coupon_code: coupon.map(str::to_owned),
        redeemed_points: points,
        shipping: shipping(),
    }
}

fn percent(code: &str, value: i64, usage_limit: i64) -> CouponUpdate {
    CouponUpdate {
        code: code.to_owned(),
        kind: CouponKind::Percentage,
        value,
        usage_limit,
    }
}

async fn create<S: Store>(store: &S, order: NewOrder) -> Option<CreateOutcome> {
    store
        .create_order(order, PricingRules::default())
        .await
        .expect("create_order")
}

/// Creates `order`, which must be accepted; the stored order.
async fn created<S: Store>(store: &S, order: NewOrder) -> Order {
    match create(store, order).await {
        Some(CreateOutcome::Created(order)) => *order,
        other => panic!("expected a created order, got {other:?}"),
    }
}

async fn coupon<S: Store>(store: &S, code: &str) -> Coupon {
    store
        .get_coupon(code.to_owned())
        .await
        .expect("get_coupon")
        .unwrap_or_else(|| panic!("coupon {code} is stored"))
}

async fn order<S: Store>(store: &S, order_id: &str) -> Order {
    store
        .get_order(order_id.to_owned())
        .await
        .expect("get_order")
        .unwrap_or_else(|| panic!("order {order_id} is stored"))
}

async fn orders_of<S: Store>(store: &S, customer: &str) -> Vec<Order> {
    let page = store
        .list_orders(customer.to_owned(), 100, None)
        .await
        .expect("list_orders");
    assert_eq!(page.next_after, None, "one page holds them all");
    page.orders
}

/// put_coupon upserts and keeps the uses made; get_coupon of an unknown
/// code is `None`.
async fn coupons<S: Store>(store: &S) {
    assert_eq!(
        store
            .get_coupon("CPN-NOPE".to_owned())
            .await
            .expect("get_coupon"),
        None
    );
    let put = store
        .put_coupon(CouponUpdate {
            code: "CPN-FIX".to_owned(),
            kind: CouponKind::Fixed,
            value: 3_000,
            usage_limit: 2,
        })
        .await
        .expect("put_coupon");
    let expected = Coupon {
        code: "CPN-FIX".to_owned(),
        kind: CouponKind::Fixed,
        value: 3_000,
        usage_limit: 2,
        times_used: 0,
    };
    assert_eq!(put, expected);
    assert_eq!(coupon(store, "CPN-FIX").await, expected);

    // One use, then an update: the use is kept.
    let used = created(store, new_order("cpn-saga", "cpn-cust", Some("CPN-FIX"), 0)).await;
    assert_eq!(used.discount_price, 3_000);
    assert_eq!(coupon(store, "CPN-FIX").await.times_used, 1);
    let updated = store
        .put_coupon(percent("CPN-FIX", 15, 7))
        .await
        .expect("put_coupon");
    let expected = Coupon {
        code: "CPN-FIX".to_owned(),
        kind: CouponKind::Percentage,
        value: 15,
        usage_limit: 7,
        times_used: 1,
    };
    assert_eq!(updated, expected, "put_coupon keeps the uses made");
    assert_eq!(coupon(store, "CPN-FIX").await, expected);
}

/// An unknown coupon or too many points: nothing stored, no coupon use
/// taken, the rejection replayed to a repeat.
async fn rejected_creates_store_nothing<S: Store>(store: &S) {
    let invalid = create(
        store,
        new_order("rej-saga-1", "rej-cust", Some("REJ-NOPE"), 0),
    )
    .await;
    assert_eq!(
        invalid,
        Some(CreateOutcome::CouponInvalid("REJ-NOPE".to_owned()))
    );
    assert_eq!(
        orders_of(store, "rej-cust").await,
        Vec::new(),
        "nothing stored"
    );
    assert_eq!(
        create(
            store,
            new_order("rej-saga-1", "rej-cust", Some("REJ-NOPE"), 0)
        )
        .await,
        invalid,
        "a repeated action replays its first outcome"
    );

    // Payable 25,000 + 2,500 + 50,000 - 2,500 (10 %) = 75,000: at most 75
    // points of 1,000.
    store
        .put_coupon(percent("REJ-PCT10", 10, 5))
        .await
        .expect("put_coupon");
    let over = create(
        store,
        new_order("rej-saga-2", "rej-cust", Some("REJ-PCT10"), 76),
    )
    .await;
    assert_eq!(
        over,
        Some(CreateOutcome::OverRedemption {
            requested: 76,
            max_points: 75,
        })
    );
    assert_eq!(
        orders_of(store, "rej-cust").await,
        Vec::new(),
        "nothing stored"
    );
    assert_eq!(
        coupon(store, "REJ-PCT10").await.times_used,
        0,
        "a rejected order takes no coupon use"
    );

    // A coupon with no use left.
    store
        .put_coupon(percent("REJ-USED", 10, 0))
        .await
        .expect("put_coupon");
    assert_eq!(
        create(
            store,
            new_order("rej-saga-3", "rej-cust", Some("REJ-USED"), 0)
        )
        .await,
        Some(CreateOutcome::CouponExhausted("REJ-USED".to_owned()))
    );
    assert_eq!(coupon(store, "REJ-USED").await.times_used, 0);
    assert_eq!(
        orders_of(store, "rej-cust").await,
        Vec::new(),
        "nothing stored"
    );
}

/// A created order keeps every field; a repeat replays it; a cancel gives
/// the coupon use back, once.
async fn created_order_round_trips_and_cancels<S: Store>(store: &S) {
    store
        .put_coupon(percent("RT-PCT10", 10, 5))
        .await
        .expect("put_coupon");
    let before = now_ms();
    let saga = "rt-saga";
    let order = created(store, new_order(saga, "rt-cust", Some("RT-PCT10"), 20)).await;
    let after = now_ms();

    assert!(
        uuid_v7(&order.order_id),
        "order ids are UUIDv7: {}",
        order.order_id
    );
    assert_eq!(order.customer_id, "rt-cust");
    assert_eq!(order.lines, lines());
    assert_eq!(
        (
            order.items_price,
            order.tax_price,
            order.shipping_price,
            order.discount_price,
            order.redeemed_points,
            order.points_discount_price,
            order.total_price,
        ),
        (25_000, 2_500, 50_000, 2_500, 20, 20_000, 55_000)
    );
    assert_eq!(order.coupon_code.as_deref(), Some("RT-PCT10"));
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(order.status_history.len(), 1);
    assert_eq!(order.status_history[0].status, OrderStatus::PendingPayment);
    assert!((before..=after).contains(&order.created_at_ms), "{order:?}");
    assert_eq!(order.status_history[0].at_ms, order.created_at_ms);
    assert_eq!(
        (
            order.paid_at_ms,
            order.cancelled_at_ms,
            order.payment_ref.as_str()
        ),
        (None, None, "")
    );
    assert_eq!(order.saga_id, saga);
    assert_eq!(order.shipping, shipping());
    assert_eq!(
        order.clone(),
        crate::order(store, &order.order_id).await,
        "every field round-trips"
    );
    assert_eq!(coupon(store, "RT-PCT10").await.times_used, 1);
    assert_eq!(
        store
            .get_order("00000000-0000-7000-8000-000000000000".to_owned())
            .await
            .expect("get_order"),
        None
    );

    // A repeat replays the same order and takes no second use.
    assert_eq!(
        create(store, new_order(saga, "rt-cust", Some("RT-PCT10"), 20)).await,
        Some(CreateOutcome::Created(Box::new(order.clone()))),
        "a repeated create replays the same order"
    );
    assert_eq!(coupon(store, "RT-PCT10").await.times_used, 1);
    assert_eq!(
        orders_of(store, "rt-cust").await,
        vec![order.clone()],
        "one order"
    );

    // Cancelling with another order's id changes nothing.
    let wrong = "00000000-0000-7000-8000-000000000001".to_owned();
    assert_eq!(
        store
            .cancel_order(
                saga.to_owned(),
                Some(wrong.clone()),
                "wrong".to_owned(),
                false
            )
            .await
            .expect("cancel_order"),
        CancelOutcome::WrongOrder { given: wrong }
    );
    assert_eq!(crate::order(store, &order.order_id).await, order);

    // Cancel: the use goes back, once.
    let cancelled = match store
        .cancel_order(
            saga.to_owned(),
            Some(order.order_id.clone()),
            "customer asked".to_owned(),
            false,
        )
        .await
        .expect("cancel_order")
    {
        CancelOutcome::Cancelled(cancelled) => cancelled,
        other => panic!("expected a cancelled order, got {other:?}"),
    };
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert!(cancelled.cancelled_at_ms.is_some());
    assert_eq!(cancelled.status_history.len(), 2);
    assert_eq!(cancelled.status_history[1].status, OrderStatus::Cancelled);
    assert_eq!(cancelled.status_history[1].note, "customer asked");
    assert_eq!(
        Order {
            status: OrderStatus::PendingPayment,
            status_history: order.status_history.clone(),
            cancelled_at_ms: None,
            ..cancelled.clone()
        },
        order,
        "a cancel changes the status only"
    );
    assert_eq!(crate::order(store, &order.order_id).await, cancelled);
    assert_eq!(
        coupon(store, "RT-PCT10").await.times_used,
        0,
        "the use is given back"
    );

    assert_eq!(
        store
            .cancel_order(saga.to_owned(), None, "again".to_owned(), false)
            .await
            .expect("cancel_order"),
        CancelOutcome::Cancelled(cancelled.clone()),
        "a repeated cancel replays"
    );
    assert_eq!(
        coupon(store, "RT-PCT10").await.times_used,
        0,
        "given back once"
    );
    assert_eq!(crate::order(store, &order.order_id).await, cancelled);

    // The saga's create, repeated now, replays the order as it is.
    assert_eq!(
        create(store, new_order(saga, "rt-cust", Some("RT-PCT10"), 20)).await,
        Some(CreateOutcome::Created(Box::new(cancelled.clone())))
    );
    assert_eq!(coupon(store, "RT-PCT10").await.times_used, 0);

    // A cancelled order cannot be paid.
    assert_eq!(
        store
            .mark_paid(
                saga.to_owned(),
                order.order_id.clone(),
                "PAY-LATE".to_owned()
            )
            .await
            .expect("mark_paid"),
        PayOutcome::NotPayable(cancelled.clone())
    );
    assert_eq!(crate::order(store, &order.order_id).await, cancelled);
}

/// A coupon with one use left and five orders at once: exactly one gets it.
async fn concurrent_creates_respect_the_usage_limit<S: Store>(store: &S) {
    store
        .put_coupon(percent("ONCE", 50, 1))
        .await
        .expect("put_coupon");
    let mut tasks = JoinSet::new();
    for i in 0..5 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .create_order(
                    new_order(&format!("once-saga-{i}"), "once-cust", Some("ONCE"), 0),
                    PricingRules::default(),
                )
                .await
        });
    }
    let (mut won, mut exhausted) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task").expect("create_order") {
            Some(CreateOutcome::Created(order)) => won.push(*order),
            Some(CreateOutcome::CouponExhausted(code)) => {
                assert_eq!(code, "ONCE");
                exhausted += 1;
            }
            other => panic!("unexpected create outcome {other:?}"),
        }
    }
    assert_eq!(
        (won.len(), exhausted),
        (1, 4),
        "exactly one order gets the use"
    );
    assert_eq!(
        coupon(store, "ONCE").await,
        Coupon {
            code: "ONCE".to_owned(),
            kind: CouponKind::Percentage,
            value: 50,
            usage_limit: 1,
            times_used: 1,
        }
    );
    assert_eq!(
        orders_of(store, "once-cust").await,
        won,
        "the losers stored nothing"
    );
}

/// A cancel that arrives before its create records itself (null
/// compensation), and the late create is refused (anti-hanging).
async fn cancel_before_create_refuses_the_create<S: Store>(store: &S) {
    store
        .put_coupon(percent("HANG-PCT", 10, 5))
        .await
        .expect("put_coupon");
    let saga = "hang-saga";
    assert_eq!(
        store
            .cancel_order(saga.to_owned(), None, "timed out".to_owned(), false)
            .await
            .expect("cancel_order"),
        CancelOutcome::NothingCreated
    );
    assert_eq!(
        create(store, new_order(saga, "hang-cust", Some("HANG-PCT"), 0)).await,
        None,
        "an action after its compensation is refused"
    );
    assert_eq!(
        orders_of(store, "hang-cust").await,
        Vec::new(),
        "nothing stored"
    );
    assert_eq!(
        coupon(store, "HANG-PCT").await.times_used,
        0,
        "no use taken"
    );
    assert_eq!(
        store
            .cancel_order(saga.to_owned(), None, "again".to_owned(), false)
            .await
            .expect("cancel_order"),
        CancelOutcome::NothingCreated,
        "a repeated null compensation replays"
    );
    assert_eq!(
        create(store, new_order(saga, "hang-cust", Some("HANG-PCT"), 0)).await,
        None
    );
    assert_eq!(orders_of(store, "hang-cust").await, Vec::new());
}

/// mark_paid checks the saga, is idempotent, and wins over a payment
/// expiry; a shipped order cannot be cancelled.
async fn pay_and_ship<S: Store>(store: &S) {
    store
        .put_coupon(percent("PAY-PCT", 10, 5))
        .await
        .expect("put_coupon");
    let saga = "pay-saga";
    let pending = created(store, new_order(saga, "pay-cust", Some("PAY-PCT"), 0)).await;
    let id = pending.order_id.clone();

    assert_eq!(
        store
            .mark_paid("pay-other-saga".to_owned(), id.clone(), "PAY-X".to_owned())
            .await
            .expect("mark_paid"),
        PayOutcome::WrongSaga
    );
    assert_eq!(
        order(store, &id).await,
        pending,
        "a wrong saga changes nothing"
    );
    assert_eq!(
        store
            .mark_paid(
                saga.to_owned(),
                "00000000-0000-7000-8000-000000000002".to_owned(),
                "PAY-X".to_owned()
            )
            .await
            .expect("mark_paid"),
        PayOutcome::UnknownOrder
    );
    assert_eq!(
        store.mark_shipped(id.clone()).await.expect("mark_shipped"),
        ShipOutcome::NotShippable(pending.clone()),
        "an unpaid order cannot ship"
    );
    assert_eq!(order(store, &id).await, pending);

    let paid = match store
        .mark_paid(saga.to_owned(), id.clone(), "PAY-1".to_owned())
        .await
        .expect("mark_paid")
    {
        PayOutcome::Paid(paid) => paid,
        other => panic!("expected a paid order, got {other:?}"),
    };
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(paid.payment_ref, "PAY-1");
    assert!(paid.paid_at_ms.is_some());
    assert_eq!(paid.status_history.len(), 2);
    assert_eq!(order(store, &id).await, paid);
    assert_eq!(
        store
            .mark_paid(saga.to_owned(), id.clone(), "PAY-2".to_owned())
            .await
            .expect("mark_paid"),
        PayOutcome::Paid(paid.clone()),
        "a repeated payment changes nothing"
    );
    assert_eq!(order(store, &id).await, paid);

    // A payment expiry after the payment: not cancellable, nothing changes.
    assert_eq!(
        store
            .cancel_order(
                saga.to_owned(),
                Some(id.clone()),
                "payment expired".to_owned(),
                true
            )
            .await
            .expect("cancel_order"),
        CancelOutcome::NotCancellable(paid.clone())
    );
    assert_eq!(order(store, &id).await, paid);
    assert_eq!(
        coupon(store, "PAY-PCT").await.times_used,
        1,
        "the use stays taken"
    );

    let shipped = match store.mark_shipped(id.clone()).await.expect("mark_shipped") {
        ShipOutcome::Shipped(shipped) => shipped,
        other => panic!("expected a shipped order, got {other:?}"),
    };
    assert_eq!(shipped.status, OrderStatus::Shipped);
    assert_eq!(shipped.status_history.len(), 3);
    assert_eq!(order(store, &id).await, shipped);
    assert_eq!(
        store.mark_shipped(id.clone()).await.expect("mark_shipped"),
        ShipOutcome::Shipped(shipped.clone()),
        "a repeated shipment changes nothing"
    );
    assert_eq!(
        store
            .cancel_order(saga.to_owned(), None, "too late".to_owned(), false)
            .await
            .expect("cancel_order"),
        CancelOutcome::NotCancellable(shipped.clone())
    );
    assert_eq!(order(store, &id).await, shipped);
    assert_eq!(coupon(store, "PAY-PCT").await.times_used, 1);
    assert_eq!(
        store
            .mark_shipped("00000000-0000-7000-8000-000000000003".to_owned())
            .await
            .expect("mark_shipped"),
        ShipOutcome::UnknownOrder
    );
}

/// Five orders of one customer, interleaved with two of another: pages of
/// two, newest (last created) first, each order exactly once, the other
/// customer's never. Created one after another, so "newest" is defined;
/// orders created at the same moment may list in either order.
async fn list_orders_pages_newest_first<S: Store>(store: &S) {
    let mut mine = Vec::new();
    for i in 0..7 {
        let customer = if i % 3 == 1 {
            "list-other"
        } else {
            "list-cust"
        };
        let order = created(
            store,
            new_order(&format!("list-saga-{i}"), customer, None, 0),
        )
        .await;
        if order.customer_id == "list-cust" {
            mine.push(order);
        }
    }
    assert_eq!(mine.len(), 5);
    mine.reverse();
    let newest_first: Vec<String> = mine.iter().map(|o| o.order_id.clone()).collect();

    let mut listed = Vec::new();
    let mut sizes = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_orders("list-cust".to_owned(), 2, after)
            .await
            .expect("list_orders");
        assert!(page.orders.len() <= 2, "a page holds at most page_size");
        sizes.push(page.orders.len());
        listed.extend(page.orders);
        match page.next_after {
            Some(next) => {
                assert!(sizes.len() < 10, "paging ends");
                after = Some(next);
            }
            None => break,
        }
    }
    let listed_ids: Vec<String> = listed.iter().map(|o| o.order_id.clone()).collect();
    let unique: HashSet<&String> = listed_ids.iter().collect();
    assert_eq!(
        unique.len(),
        listed_ids.len(),
        "no order twice: {listed_ids:?}"
    );
    assert!(
        listed.iter().all(|o| o.customer_id == "list-cust"),
        "only the customer's orders: {listed_ids:?}"
    );
    let missed: Vec<&String> = newest_first
        .iter()
        .filter(|id| !unique.contains(id))
        .collect();
    assert!(
        missed.is_empty(),
        "paging missed {missed:?}; listed {listed_ids:?} (pages {sizes:?}), expected {newest_first:?}"
    );
    assert_eq!(listed_ids, newest_first, "newest first");
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(listed, mine, "listed orders are the stored ones");

    // One page of exactly all, and a page past the end.
    let all = store
        .list_orders("list-cust".to_owned(), 5, None)
        .await
        .expect("list_orders");
    assert_eq!(
        all.orders
            .iter()
            .map(|o| o.order_id.clone())
            .collect::<Vec<_>>(),
        newest_first
    );
    assert_eq!(all.next_after, None, "no cursor when nothing follows");
    let nobody = store
        .list_orders("list-nobody".to_owned(), 2, None)
        .await
        .expect("list_orders");
    assert_eq!((nobody.orders.len(), nobody.next_after), (0, None));
}

/// Whether `id` is a UUID of version 7 in its hyphenated lowercase form.
fn uuid_v7(id: &str) -> bool {
    id.len() == 36
        && id.as_bytes()[14] == b'7'
        && id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
}
