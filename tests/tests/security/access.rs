//! Roles and ownership: customers act only on their own orders and
//! points, admin RPCs need the admin role, and idempotency keys are scoped
//! per customer; no refusal leaks what it protects.

use super::*;

/// Asserts nothing of `secrets` appears in the status's message or details.
#[track_caller]
fn assert_leaks_nothing(status: &Status, secrets: &[&str]) {
    let details = String::from_utf8_lossy(status.details()).into_owned();
    for secret in secrets {
        assert!(
            !status.message().contains(secret) && !details.contains(secret),
            "the error leaks {secret:?}: {:?} / {details:?}",
            status.message()
        );
    }
}

impl Secured {
    /// Asserts (reading with `admin`'s token) that the shop is as
    /// [`Secured::seed`] left it, with nothing the denied calls of
    /// `admin_rpcs_need_the_admin_role` would have made.
    async fn assert_untouched(&self, admin: &str) {
        let c = &self.clients;
        let tshirt = c
            .inventory
            .clone()
            .get_product(authed(
                inv::GetProductRequest {
                    sku: "TSHIRT".into(),
                },
                admin,
            ))
            .await
            .expect("admin reads the product")
            .into_inner();
        assert_eq!(
            (tshirt.stock, tshirt.available, tshirt.reserved, tshirt.sold),
            (100, 100, 0, 0),
            "a denied ReserveStock reserved nothing: {tshirt:?}"
        );
        let free = c
            .inventory
            .clone()
            .get_product(authed(inv::GetProductRequest { sku: "FREE".into() }, admin))
            .await;
        expect_error(free, Code::NotFound, Reason::UnknownSku);
        let alice = c
            .loyalty
            .clone()
            .get_balance(authed(
                loy::GetBalanceRequest {
                    customer_id: "alice".into(),
                },
                admin,
            ))
            .await
            .expect("admin reads a balance")
            .into_inner();
        assert_eq!(
            (alice.points, alice.granted),
            (100, 100),
            "a denied GrantPoints granted nothing: {alice:?}"
        );
        let coupon = c
            .order
            .clone()
            .get_coupon(authed(
                ord::GetCouponRequest {
                    code: "ALL100".into(),
                },
                admin,
            ))
            .await;
        expect_error(coupon, Code::NotFound, Reason::UnknownCoupon);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customers_act_only_on_their_own_orders_and_points() {
    let shop = Secured::start(None).await;
    shop.seed().await;
    let alice = token("alice", "customer");
    let bob = token("bob", "customer");

    // Alice's own order, redeeming her own points: the saga runs end to end
    // (the orchestrator's service token is accepted by the participants).
    let placed = shop
        .place(
            &alice,
            order_request("a-1", "alice", &[("TSHIRT", 1)], "", 10),
        )
        .await
        .expect("alice places her own order");
    let order_id = placed.order_id.clone();
    assert!(!order_id.is_empty());

    // Alice ordering (and spending points) for Bob.
    let status = expect_error(
        shop.place(
            &alice,
            order_request("a-2", "bob", &[("TSHIRT", 1)], "", 10),
        )
        .await,
        Code::PermissionDenied,
        Reason::PermissionDenied,
    );
    assert_leaks_nothing(&status, &["bob"]);

    // Bob reading, cancelling and paying Alice's order.
    let read = shop
        .clients
        .order
        .clone()
        .get_order(authed(
            ord::GetOrderRequest {
                order_id: order_id.clone(),
            },
            &bob,
        ))
        .await;
    let status = expect_error(read, Code::PermissionDenied, Reason::PermissionDenied);
    assert_leaks_nothing(&status, &[&order_id, "alice", "TSHIRT"]);
    let list = shop
        .clients
        .order
        .clone()
        .list_orders(authed(
            ord::ListOrdersRequest {
                customer_id: "alice".into(),
                page_size: 0,
                page_token: String::new(),
            },
            &bob,
        ))
        .await;
    expect_error(list, Code::PermissionDenied, Reason::PermissionDenied);
    let cancel = shop
        .clients
        .checkout
        .clone()
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: order_id.clone(),
                reason: "not mine".into(),
            },
            &bob,
        ))
        .await;
    let status = expect_error(cancel, Code::PermissionDenied, Reason::PermissionDenied);
    assert_leaks_nothing(&status, &[&order_id, "alice", "TSHIRT"]);
    let pay = shop
        .clients
        .checkout
        .clone()
        .confirm_payment(authed(
            orch::ConfirmPaymentRequest {
                order_id: order_id.clone(),
                payment_ref: "PAY-BOB".into(),
            },
            &bob,
        ))
        .await;
    let status = expect_error(pay, Code::PermissionDenied, Reason::PermissionDenied);
    assert_leaks_nothing(&status, &[&order_id, "alice", "TSHIRT"]);
    // An unknown order looks the same as another customer's.
    let unknown = shop
        .clients
        .checkout
        .clone()
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: "no-such-order".into(),
                reason: String::new(),
            },
            &bob,
        ))
        .await;
    expect_error(unknown, Code::PermissionDenied, Reason::PermissionDenied);
    // Bob reading Alice's balance.
    let balance = shop
        .clients
        .loyalty
        .clone()
        .get_balance(authed(
            loy::GetBalanceRequest {
                customer_id: "alice".into(),
            },
            &bob,
        ))
        .await;
    expect_error(balance, Code::PermissionDenied, Reason::PermissionDenied);

    // Alice's order is untouched, and she can read and cancel it.
    let order = shop
        .clients
        .order
        .clone()
        .get_order(authed(
            ord::GetOrderRequest {
                order_id: order_id.clone(),
            },
            &alice,
        ))
        .await
        .expect("alice reads her order")
        .into_inner()
        .order
        .expect("an order");
    assert_eq!(order.status, ord::OrderStatus::PendingPayment as i32);
    shop.clients
        .checkout
        .clone()
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: order_id.clone(),
                reason: "changed my mind".into(),
            },
            &alice,
        ))
        .await
        .expect("alice cancels her own order");

    // A guest checks out for itself but never redeems points.
    let guest = token("guest-42", "guest");
    let status = expect_error(
        shop.place(
            &guest,
            order_request("g-1", "guest-42", &[("TSHIRT", 1)], "", 1),
        )
        .await,
        Code::PermissionDenied,
        Reason::PermissionDenied,
    );
    assert_leaks_nothing(&status, &["guest-42"]);
    shop.place(
        &guest,
        order_request("g-2", "guest-42", &[("TSHIRT", 1)], "", 0),
    )
    .await
    .expect("a guest checks out without points");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_rpcs_need_the_admin_role() {
    let shop = Secured::start(None).await;
    shop.seed().await;
    let alice = token("alice", "customer");
    let admin = token("ops", "admin");
    let c = &shop.clients;

    let denied = |r: Result<(), Status>| {
        expect_error(r, Code::PermissionDenied, Reason::PermissionDenied);
    };
    denied(
        c.inventory
            .clone()
            .put_product(authed(
                inv::PutProductRequest {
                    sku: "FREE".into(),
                    name: "Free".into(),
                    unit_price: 1,
                    stock: 1_000,
                },
                &alice,
            ))
            .await
            .map(drop),
    );
    denied(
        c.loyalty
            .clone()
            .grant_points(authed(
                loy::GrantPointsRequest {
                    customer_id: "alice".into(),
                    points: 1_000_000,
                },
                &alice,
            ))
            .await
            .map(drop),
    );
    let coupon = || ord::PutCouponRequest {
        code: "ALL100".into(),
        kind: ord::CouponKind::Percentage as i32,
        value: 100,
        usage_limit: 10,
    };
    denied(
        c.order
            .clone()
            .put_coupon(authed(coupon(), &alice))
            .await
            .map(drop),
    );
    denied(
        c.order
            .clone()
            .mark_shipped(authed(
                ord::MarkShippedRequest {
                    order_id: "x".into(),
                },
                &alice,
            ))
            .await
            .map(drop),
    );
    denied(
        c.admin
            .clone()
            .list_sagas(authed(orch::ListSagasRequest::default(), &alice))
            .await
            .map(drop),
    );
    // Saga RPCs belong to the orchestrator's service identity only.
    for who in [&alice, &admin] {
        denied(
            c.inventory
                .clone()
                .reserve_stock(authed(
                    inv::ReserveStockRequest {
                        saga_id: "forged-saga".into(),
                        items: vec![inv::StockItem {
                            sku: "TSHIRT".into(),
                            quantity: 100,
                        }],
                    },
                    who,
                ))
                .await
                .map(drop),
        );
    }

    // The denied calls changed nothing: no FREE product, Alice's points as
    // granted, TSHIRT's stock unreserved, no ALL100 coupon.
    shop.assert_untouched(&admin).await;

    // The admin can.
    c.order
        .clone()
        .put_coupon(authed(coupon(), &admin))
        .await
        .expect("admin puts a coupon");
    c.admin
        .clone()
        .list_sagas(authed(orch::ListSagasRequest::default(), &admin))
        .await
        .expect("admin lists sagas");
    shop.stop().await;
}

/// Idempotency keys are scoped per customer (the old shop's keys were
/// `order_${userId}_${Date.now()}`, easy to guess): with authentication
/// on, bob's checkout under the key alice used gets his own order, and the
/// refusal of a reused key never says another customer used it; alice
/// reusing her key with another cart still gets ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_customers_may_use_one_idempotency_key() {
    let secured = Secured::start(None).await;
    secured.seed().await;
    let (alice, bob) = (token("alice", "customer"), token("bob", "customer"));
    let hers = secured
        .place(
            &alice,
            order_request("k-shared", "alice", &[("TSHIRT", 1)], "", 0),
        )
        .await
        .expect("alice's checkout");
    let his = secured
        .place(
            &bob,
            order_request("k-shared", "bob", &[("TSHIRT", 2)], "", 0),
        )
        .await
        .expect("bob's checkout under the same key is his own");
    assert_ne!(hers.saga_id, his.saga_id);
    assert_ne!(hers.order_id, his.order_id);
    assert_eq!(his.order.expect("his order").customer_id, "bob");
    // Each retry answers its own customer's order.
    let again = secured
        .place(
            &alice,
            order_request("k-shared", "alice", &[("TSHIRT", 1)], "", 0),
        )
        .await
        .expect("alice's retry");
    assert_eq!(again.order_id, hers.order_id);
    let again = secured
        .place(
            &bob,
            order_request("k-shared", "bob", &[("TSHIRT", 2)], "", 0),
        )
        .await
        .expect("bob's retry");
    assert_eq!(again.order_id, his.order_id);
    // Alice's key with another cart is still a conflict.
    let status = secured
        .place(
            &alice,
            order_request("k-shared", "alice", &[("TSHIRT", 3)], "", 0),
        )
        .await
        .expect_err("a reused key with another cart");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(
        microshop_runtime::errors::reason_of(&status),
        Some(Reason::IdempotencyKeyReused)
    );
    assert!(
        !status.message().contains("bob") && !status.message().contains(&his.saga_id),
        "{}",
        status.message()
    );
    secured.stop().await;
}
