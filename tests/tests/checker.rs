//! The invariant checker against a real mesh: an effect forged on the wire
//! (a participant RPC sent under a saga id no saga owns, as a lost barrier
//! would let a duplicate through) must make `invariants::check` fail, with
//! a message naming what broke. The pure rules are unit-tested with
//! doctored data in `microshop::invariants::rules`; this shows the checker
//! reads what it needs to catch the same faults in a running mesh.

use microshop::invariants::{self, Violation};
use microshop_proto::{inventory::v1 as inv, loyalty::v1 as loy};
use microshop_tests::{EARN_AMOUNT_PER_POINT, TestMesh, order_request, test_engine};

/// Checks the mesh and returns the violation it must find.
async fn violation(m: &TestMesh) -> String {
    m.quiesce().await;
    match invariants::check(&m.clients, &m.universe).await {
        Err(Violation::Broken(why)) => why,
        other => panic!("the checker missed the forged effect: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_earn_points_fails_the_check() {
    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("LAMP", 500_000, 5).await;
    m.grant_points("ann", 100).await;
    let placed = m
        .place_ok(order_request("earn-1", "ann", &[("LAMP", 2)], "", 0))
        .await;
    let paid = m
        .confirm_payment(&placed.order_id, "PAY-1")
        .await
        .expect("paid");
    let total = paid.order.expect("the paid order").total_price;
    let earned = total / EARN_AMOUNT_PER_POINT;
    assert!(earned > 0, "the order earns points: total {total}");
    assert_eq!(m.balance("ann").await.earned, earned);
    m.assert_invariants().await;

    // The payment's EarnPoints once more, under another saga id: loyalty-svc
    // credits it (no barrier entry matches), the ledger still adds up, and
    // only the reconciliation with the paid orders can tell.
    m.clients
        .loyalty
        .clone()
        .earn_points(loy::EarnPointsRequest {
            saga_id: "forged-earn".into(),
            customer_id: "ann".into(),
            amount_paid: total,
            earn_amount_per_point: 0,
        })
        .await
        .expect("the forged EarnPoints lands");
    let b = m.balance("ann").await;
    assert_eq!(b.points, b.granted + b.earned - b.deducted + b.refunded);
    let why = violation(&m).await;
    assert!(
        why.contains(&format!("earned {}", 2 * earned)) && why.contains("ann"),
        "{why}"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_no_order_holds_fails_the_check() {
    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("DESK", 900_000, 5).await;
    m.place_ok(order_request("desk-1", "bea", &[("DESK", 1)], "", 0))
        .await;
    m.assert_invariants().await;

    m.clients
        .inventory
        .clone()
        .reserve_stock(inv::ReserveStockRequest {
            saga_id: "forged-reserve".into(),
            items: vec![inv::StockItem {
                sku: "DESK".into(),
                quantity: 2,
            }],
        })
        .await
        .expect("the forged ReserveStock lands");
    let why = violation(&m).await;
    assert!(why.contains("sku DESK: 3 units reserved"), "{why}");
    m.shutdown().await;
}
