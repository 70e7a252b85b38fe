//! The bad-input table at the public API: each malformed field of each
//! RPC gets its contract code and changes nothing.

use microshop_proto::{
    inventory::v1 as inv,
    loyalty::v1 as loy,
    orchestrator::v1::{self as orch, SagaState},
    order::v1::{self as ord, OrderStatus},
};
use microshop_runtime::Reason;
use microshop_tests::{TestMesh, error_reason, order_request, saga_state, test_engine};
use tonic::{Code, Response, Status};

/// Values no identifier may take: INVALID_ARGUMENT wherever an id goes.
fn bad_ids() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("whitespace only", "   ".into()),
        ("oversized (129 bytes)", "x".repeat(129)),
        ("oversized unicode (130 bytes)", "é".repeat(65)),
        ("huge (64 KiB)", "x".repeat(64 * 1024)),
        ("control char", "a\u{7}b".into()),
        ("NUL", "a\0b".into()),
        ("newline", "a\nb".into()),
        ("ANSI escape", "\u{1b}[31mred".into()),
        ("SQL injection", "'; DROP TABLE orders;--".into()),
    ]
}

/// Well-formed identifiers that name nothing: NOT_FOUND (or the business
/// refusal of the field), never a crash or an effect.
fn odd_ids() -> Vec<(&'static str, String)> {
    vec![
        ("emoji", "😀🛒".into()),
        ("RTL override", "abc\u{202E}fed".into()),
        ("zero-width space", "a\u{200B}b".into()),
        ("lone combining mark", "\u{0301}".into()),
        ("NoSQL operator", "{\"$gt\":\"\"}".into()),
        ("path traversal", "../../etc/passwd".into()),
        ("128 bytes of unicode", "é".repeat(64)),
    ]
}

/// Free text no field may take.
fn bad_texts(max: usize) -> Vec<(&'static str, String)> {
    vec![
        ("oversized", "x".repeat(max + 1)),
        ("control char", "a\u{7}b".into()),
        ("NUL", "a\0b".into()),
        ("ANSI escape", "\u{1b}[31mred".into()),
    ]
}

/// Out-of-range numbers for a positive or non-negative field.
fn bad_numbers(max: i64, zero_ok: bool) -> Vec<(&'static str, i64)> {
    let mut v = vec![
        ("negative", -1),
        ("i64::MIN", i64::MIN),
        ("above the maximum", max + 1),
        ("i64::MAX", i64::MAX),
    ];
    if !zero_ok {
        v.push(("zero", 0));
    }
    v
}

/// The state the table must leave as it found it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    book: (i64, i64, i64),
    points: (i64, i64, i64),
    coupon: i64,
    live_orders: usize,
}

async fn snapshot(m: &TestMesh) -> Snapshot {
    let book = m.product("BOOK").await;
    let olga = m.balance("olga").await;
    let live_orders = m
        .orders_of("olga")
        .await
        .iter()
        .filter(|o| o.status != OrderStatus::Cancelled as i32)
        .count();
    Snapshot {
        book: (book.available, book.reserved, book.sold),
        points: (olga.points, olga.deducted, olga.refunded),
        coupon: m.coupon("ONCE").await.times_used,
        live_orders,
    }
}

/// Collects every case whose answer is not `code` + `reason`.
#[derive(Default)]
struct Table {
    cases: usize,
    failures: Vec<String>,
}

impl Table {
    fn expect<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<T, Status>,
        code: Code,
        reason: Reason,
    ) {
        self.cases += 1;
        match result {
            Ok(v) => self.failures.push(format!(
                "{what}: expected {code:?} {reason}, got success {v:?}"
            )),
            Err(s) => {
                let got = error_reason(&s);
                if s.code() != code || got.as_deref() != Some(reason.as_str()) {
                    self.failures.push(format!(
                        "{what}: expected {code:?} {reason}, got {:?} {got:?}: {}",
                        s.code(),
                        s.message()
                    ));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_table_has_contract_codes_and_no_effect() {
    use Code::{FailedPrecondition, InvalidArgument, NotFound};
    use Reason::{InvalidRequest, UnknownOrder, UnknownSaga, UnknownSku};

    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("BOOK", 100_000, 10).await;
    m.grant_points("olga", 1_000).await;
    m.put_coupon("ONCE", ord::CouponKind::Fixed, 10_000, 5)
        .await;
    // A real, unpaid order for the order-level RPCs to aim at.
    let real = m
        .place_ok(order_request(
            "table-real",
            "olga",
            &[("BOOK", 1)],
            "ONCE",
            10,
        ))
        .await;
    let real_order = real.order_id.clone();
    m.assert_invariants().await;
    let before = snapshot(&m).await;
    let sagas_before = m.sagas().await.len();
    // Cases that run a saga which is then refused and compensated.
    let mut refused_sagas = 0;

    let base = || order_request("table-base", "olga", &[("BOOK", 1)], "", 0);
    let mut checkout = m.clients.checkout.clone();
    let mut admin = m.clients.admin.clone();
    let mut t = Table::default();
    let place = |req: orch::PlaceOrderRequest| {
        let mut c = checkout.clone();
        async move { c.place_order(req).await.map(Response::into_inner) }
    };

    // PlaceOrder: every identifier field.
    for (what, v) in bad_ids() {
        let mut r = base();
        r.idempotency_key = v.clone();
        t.expect(
            &format!("PlaceOrder.idempotencyKey {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let mut r = base();
        r.customer_id = v.clone();
        t.expect(
            &format!("PlaceOrder.customerId {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let mut r = base();
        r.items[0].sku = v.clone();
        t.expect(
            &format!("PlaceOrder.items.sku {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (i, (what, v)) in odd_ids().into_iter().enumerate() {
        // An odd key is only a key: with an unknown SKU the saga is refused.
        let mut r = base();
        r.idempotency_key = v.clone();
        r.items[0].sku = "NO-SUCH-SKU".into();
        t.expect(
            &format!("PlaceOrder.idempotencyKey {what}"),
            place(r).await,
            NotFound,
            UnknownSku,
        );
        // An odd customer is a guest: redeeming points is refused.
        let mut r = base();
        r.idempotency_key = format!("odd-customer-{i}");
        r.customer_id = v.clone();
        r.points_to_redeem = 10;
        t.expect(
            &format!("PlaceOrder.customerId {what}"),
            place(r).await,
            FailedPrecondition,
            Reason::NotAMember,
        );
        let mut r = base();
        r.idempotency_key = format!("odd-sku-{i}");
        r.items[0].sku = v.clone();
        t.expect(
            &format!("PlaceOrder.items.sku {what}"),
            place(r).await,
            NotFound,
            UnknownSku,
        );
        let mut r = base();
        r.idempotency_key = format!("odd-coupon-{i}");
        r.coupon_code = v.clone();
        // Coupon codes are at most 64 bytes.
        if v.len() > 64 {
            t.expect(
                &format!("PlaceOrder.couponCode {what}"),
                place(r).await,
                InvalidArgument,
                InvalidRequest,
            );
            refused_sagas += 3;
        } else {
            t.expect(
                &format!("PlaceOrder.couponCode {what}"),
                place(r).await,
                FailedPrecondition,
                Reason::CouponInvalid,
            );
            refused_sagas += 4;
        }
    }
    for (what, v) in bad_ids().into_iter().skip(1) {
        let mut r = base();
        r.coupon_code = v;
        t.expect(
            &format!("PlaceOrder.couponCode {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, q) in bad_numbers(microshop_runtime::validate::MAX_QUANTITY, false) {
        let mut r = base();
        r.items[0].quantity = q;
        t.expect(
            &format!("PlaceOrder.items.quantity {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, p) in bad_numbers(microshop_runtime::validate::MAX_AMOUNT, true) {
        let mut r = base();
        r.points_to_redeem = p;
        t.expect(
            &format!("PlaceOrder.pointsToRedeem {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    {
        let mut r = base();
        r.items.clear();
        t.expect(
            "PlaceOrder.items empty",
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let mut r = base();
        r.items = vec![
            orch::LineItem {
                sku: "BOOK".into(),
                quantity: 1
            };
            101
        ];
        t.expect(
            "PlaceOrder.items 101 lines",
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        // Many lines of one SKU whose sum overflows nothing but exceeds stock.
        let mut r = base();
        r.idempotency_key = "sum-of-lines".into();
        r.items = vec![
            orch::LineItem {
                sku: "BOOK".into(),
                quantity: 10_000
            };
            100
        ];
        t.expect(
            "PlaceOrder 100 lines of 10,000 units",
            place(r).await,
            FailedPrecondition,
            Reason::OutOfStock,
        );
        // Over-redemption: refused at the quote.
        let mut r = base();
        r.idempotency_key = "over-redeem".into();
        r.points_to_redeem = 1_000;
        t.expect(
            "PlaceOrder.pointsToRedeem over the payable",
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        refused_sagas += 2;
    }
    for (field, max) in [("name", 256), ("address", 1024), ("phone", 32)] {
        for (what, v) in bad_texts(max) {
            let mut r = base();
            let s = r.shipping.as_mut().expect("base has shipping");
            match field {
                "name" => s.name = v,
                "address" => s.address = v,
                _ => s.phone = v,
            }
            t.expect(
                &format!("PlaceOrder.shipping.{field} {what}"),
                place(r).await,
                InvalidArgument,
                InvalidRequest,
            );
        }
    }
    // Past the server's message limit (256 KiB): refused by the decoder,
    // answered with the code and reason of any oversized field.
    let mut r = base();
    r.shipping.as_mut().expect("base has shipping").name = "x".repeat(300 * 1024);
    t.expect(
        "PlaceOrder over --max-message-bytes",
        place(r).await,
        InvalidArgument,
        InvalidRequest,
    );

    // ConfirmPayment and CancelOrder.
    for (what, v) in bad_ids() {
        let r = checkout
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: v.clone(),
                payment_ref: "pay-1".into(),
            })
            .await;
        t.expect(
            &format!("ConfirmPayment.orderId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = checkout
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: real_order.clone(),
                payment_ref: v.clone(),
            })
            .await;
        t.expect(
            &format!("ConfirmPayment.paymentRef {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: v.clone(),
                reason: String::new(),
            })
            .await;
        t.expect(
            &format!("CancelOrder.orderId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in odd_ids() {
        let r = checkout
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: v.clone(),
                payment_ref: v.clone(),
            })
            .await;
        t.expect(
            &format!("ConfirmPayment.orderId {what}"),
            r,
            NotFound,
            UnknownOrder,
        );
        let r = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: v.clone(),
                reason: v.clone(),
            })
            .await;
        t.expect(
            &format!("CancelOrder.orderId {what}"),
            r,
            NotFound,
            UnknownOrder,
        );
        refused_sagas += 2;
    }
    for (what, v) in bad_texts(256) {
        let r = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: real_order.clone(),
                reason: v,
            })
            .await;
        t.expect(
            &format!("CancelOrder.reason {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }

    // SagaAdminService.
    for (what, v) in bad_ids() {
        let r = admin
            .get_saga(orch::GetSagaRequest { saga_id: v.clone() })
            .await;
        t.expect(
            &format!("GetSaga.sagaId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = admin
            .retry_saga(orch::RetrySagaRequest {
                saga_id: v.clone(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("RetrySaga.sagaId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = admin
            .abort_saga(orch::AbortSagaRequest {
                saga_id: v.clone(),
                reason: String::new(),
            })
            .await;
        t.expect(
            &format!("AbortSaga.sagaId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in odd_ids() {
        let r = admin
            .get_saga(orch::GetSagaRequest { saga_id: v.clone() })
            .await;
        t.expect(&format!("GetSaga.sagaId {what}"), r, NotFound, UnknownSaga);
        let r = admin
            .retry_saga(orch::RetrySagaRequest {
                saga_id: v.clone(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("RetrySaga.sagaId {what}"),
            r,
            NotFound,
            UnknownSaga,
        );
        let r = admin
            .abort_saga(orch::AbortSagaRequest {
                saga_id: v.clone(),
                reason: v.clone(),
            })
            .await;
        t.expect(
            &format!("AbortSaga.sagaId {what}"),
            r,
            NotFound,
            UnknownSaga,
        );
    }
    for (what, v) in bad_texts(256) {
        let r = admin
            .abort_saga(orch::AbortSagaRequest {
                saga_id: real.saga_id.clone(),
                reason: v,
            })
            .await;
        t.expect(
            &format!("AbortSaga.reason {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, size) in [
        ("negative", -1),
        ("101", 101),
        ("i32::MIN", i32::MIN),
        ("i32::MAX", i32::MAX),
    ] {
        let r = admin
            .list_sagas(orch::ListSagasRequest {
                state: 0,
                page_size: size,
                page_token: String::new(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("ListSagas.pageSize {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, state) in [("negative", -1), ("unknown", 99), ("i32::MAX", i32::MAX)] {
        let r = admin
            .list_sagas(orch::ListSagasRequest {
                state,
                page_size: 0,
                page_token: String::new(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("ListSagas.state {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, token) in [
        ("letters", "abc"),
        ("negative", "-1"),
        ("u64 overflow", "18446744073709551616"),
        ("SQL injection", "'; DROP TABLE sagas;--"),
        ("NoSQL operator", "{\"$gt\":\"\"}"),
        ("NUL", "1\0"),
    ] {
        let r = admin
            .list_sagas(orch::ListSagasRequest {
                state: 0,
                page_size: 0,
                page_token: token.into(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("ListSagas.pageToken {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }

    // The participants' admin RPCs (seeding the catalog, points, coupons).
    let mut inventory = m.clients.inventory.clone();
    let mut loyalty = m.clients.loyalty.clone();
    let mut order = m.clients.order.clone();
    let product = |sku: &str| inv::PutProductRequest {
        sku: sku.into(),
        name: "Book".into(),
        unit_price: 1_000,
        stock: 1,
    };
    for (what, v) in bad_ids() {
        let r = inventory.put_product(product(&v)).await;
        t.expect(
            &format!("PutProduct.sku {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = loyalty
            .grant_points(loy::GrantPointsRequest {
                customer_id: v.clone(),
                points: 1,
            })
            .await;
        t.expect(
            &format!("GrantPoints.customerId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: v.clone(),
                kind: ord::CouponKind::Fixed.into(),
                value: 1,
                usage_limit: 1,
            })
            .await;
        t.expect(
            &format!("PutCoupon.code {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in bad_texts(256).into_iter().chain([("empty", String::new())]) {
        let mut r = product("BOOK");
        r.name = v;
        t.expect(
            &format!("PutProduct.name {what}"),
            inventory.put_product(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    let max = microshop_runtime::validate::MAX_AMOUNT;
    for (what, n) in bad_numbers(max, false) {
        let mut r = product("BOOK");
        r.unit_price = n;
        t.expect(
            &format!("PutProduct.unitPrice {what}"),
            inventory.put_product(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: "ONCE".into(),
                kind: ord::CouponKind::Fixed.into(),
                value: n,
                usage_limit: 5,
            })
            .await;
        t.expect(
            &format!("PutCoupon.value {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: "ONCE".into(),
                kind: ord::CouponKind::Fixed.into(),
                value: 10_000,
                usage_limit: n,
            })
            .await;
        t.expect(
            &format!("PutCoupon.usageLimit {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, n) in bad_numbers(max, true) {
        let mut r = product("BOOK");
        r.stock = n;
        t.expect(
            &format!("PutProduct.stock {what}"),
            inventory.put_product(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let r = loyalty
            .grant_points(loy::GrantPointsRequest {
                customer_id: "olga".into(),
                points: n,
            })
            .await;
        t.expect(
            &format!("GrantPoints.points {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, kind, value) in [
        ("percentage over 100", 1, 101),
        ("unspecified kind", 0, 10),
        ("unknown kind", 99, 10),
    ] {
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: "ONCE".into(),
                kind,
                value,
                usage_limit: 5,
            })
            .await;
        t.expect(
            &format!("PutCoupon {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in odd_ids() {
        let r = inventory
            .get_product(inv::GetProductRequest { sku: v.clone() })
            .await;
        t.expect(&format!("GetProduct.sku {what}"), r, NotFound, UnknownSku);
        let r = order
            .get_coupon(ord::GetCouponRequest { code: v.clone() })
            .await;
        if v.len() > 64 {
            t.expect(
                &format!("GetCoupon.code {what}"),
                r,
                InvalidArgument,
                InvalidRequest,
            );
        } else {
            t.expect(
                &format!("GetCoupon.code {what}"),
                r,
                NotFound,
                Reason::UnknownCoupon,
            );
        }
    }

    assert!(
        t.failures.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        t.failures.len(),
        t.cases,
        t.failures.join("\n")
    );
    // Nothing changed: same stock, points, coupon use and live orders; the
    // only new sagas are the refused ones, all compensated.
    m.quiesce().await;
    assert_eq!(
        snapshot(&m).await,
        before,
        "the bad inputs changed the shop"
    );
    let sagas = m.sagas().await;
    assert_eq!(
        sagas.len(),
        sagas_before + refused_sagas,
        "validation refusals must start no saga; refused ones start exactly one"
    );
    for s in &sagas {
        if s.saga_id != real.saga_id {
            assert_eq!(saga_state(s), SagaState::Compensated, "{s:#?}");
        }
    }
    assert_eq!(
        m.order(&real_order).await.status,
        OrderStatus::PendingPayment as i32
    );
    let summary = m.assert_invariants().await;
    println!(
        "bad-input table: {} cases, {} with the wrong answer; invariant checks passed: {}",
        t.cases,
        t.failures.len(),
        summary.checks
    );
    assert!(
        t.failures.is_empty(),
        "{} cases answered wrongly:\n{}",
        t.failures.len(),
        t.failures.join("\n")
    );
    m.shutdown().await;
}

// ---------------------------------------------------------------------------
// Regressions the soak caught.
