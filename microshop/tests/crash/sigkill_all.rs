//! Durability: every service SIGKILLed at once, restarted, nothing that
//! was answered lost.

use super::*;

#[derive(Debug, PartialEq)]
struct Snapshot {
    orders: Vec<ord::Order>,
    product: inv::GetProductResponse,
    balance: loy::GetBalanceResponse,
    coupon: ord::GetCouponResponse,
    sagas: Vec<orch::Saga>,
}

async fn snapshot(c: &MeshClients, customer: &str, sku: &str, code: &str) -> Snapshot {
    Snapshot {
        orders: orders_of(c, customer).await,
        product: product(c, sku).await,
        balance: balance(c, customer).await,
        coupon: coupon(c, code).await,
        sagas: all_sagas(&mut c.admin.clone()).await.expect("ListSagas"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_survives_sigkill() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::builder().orchestrator(MATRIX_ENGINE).start().await;
    let c = cluster.clients();
    let mut u = Universe::default();
    let (sku, code, who) = ("CRASH-DURABLE", "CRASH-KEEP", "durable-customer");
    put_product(&c, &mut u, sku, 10).await;
    put_coupon(&c, &mut u, code, 5).await;
    grant(&c, &mut u, who).await;

    let pending = place_ok(&c, place("durable-1", who, sku, code, REDEEM)).await;
    let paid = place_ok(&c, place("durable-2", who, sku, "", REDEEM)).await;
    c.checkout
        .clone()
        .confirm_payment(orch::ConfirmPaymentRequest {
            order_id: paid.order_id.clone(),
            payment_ref: "durable-pay".into(),
        })
        .await
        .expect("ConfirmPayment");
    check_invariants(&c, &u, "the orders").await;
    let before = snapshot(&c, who, sku, code).await;
    assert_eq!(before.orders.len(), 2);
    assert_eq!(before.sagas.len(), 3);
    assert_eq!(
        (
            before.product.available,
            before.product.reserved,
            before.product.sold
        ),
        (8, 1, 1)
    );
    assert_eq!(before.coupon.times_used, 1);
    drop(c);

    for svc in Svc::START_ORDER {
        cluster.kill(svc);
    }
    for svc in Svc::START_ORDER {
        cluster.start_svc(svc, &[]).await;
    }
    let c = cluster.clients();
    let after = snapshot(&c, who, sku, code).await;
    assert_eq!(before, after, "state changed across SIGKILL and restart");

    // The same key still answers the same order; the mesh still works.
    let again = place_ok(&c, place("durable-1", who, sku, code, REDEEM)).await;
    assert_eq!(again.order_id, pending.order_id);
    assert_eq!(again.saga_id, pending.saga_id);
    let third = place_ok(&c, place("durable-3", who, sku, "", 0)).await;
    assert!(!third.order_id.is_empty());
    check_invariants(&c, &u, "the restart").await;
    eprintln!("durability in {:?}", started.elapsed());
}
