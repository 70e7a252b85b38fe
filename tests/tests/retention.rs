//! Retention over loopback gRPC (issue 15 §2): finished sagas and barrier
//! entries are purged once past their retention (seconds here, days in
//! production), and purging never removes what a later saga still needs:
//! a cancel after the checkout's barrier entries are gone still gives the
//! stock and the points back, and a second payment after the first
//! payment's saga is gone earns nothing twice. Every wait is bounded
//! polling; every scenario ends with the invariants.

use std::time::Duration;

use microshop_proto::orchestrator::v1::{self as orch, SagaState};
use microshop_runtime::{Reason, metrics::metrics};
use microshop_tests::{
    SETTLE_WITHIN, TestMesh, eventually, expect_error, order_request, saga_state, test_engine,
};
use orchestrator::EngineConfig;
use tonic::Code;

/// The value of counter `name` in this process's `/metrics` (the in-process
/// mesh's services share one registry; nextest runs each test in its own
/// process).
fn counter(name: &str) -> u64 {
    metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn purged_at_least(name: &'static str, n: u64) {
    eventually(
        &format!("{name} to reach {n}"),
        SETTLE_WITHIN,
        || async move {
            match counter(name) {
                got if got >= n => Ok(()),
                got => Err(format!("{got}")),
            }
        },
    )
    .await;
}

/// Barrier entries purged after 1 s; sagas kept.
async fn short_barrier_mesh(saga_retention: Option<Duration>) -> TestMesh {
    TestMesh::start_with(
        EngineConfig {
            saga_retention,
            ..test_engine()
        },
        |c| c.server.barrier_retention_secs = 1,
    )
    .await
}

/// A checkout redeeming points, its barrier entries purged, then cancelled:
/// the reservation (inventory's business record) and the points ledger
/// (loyalty's) still say what to undo, so stock and points both come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_after_the_barrier_is_purged_gives_stock_and_points_back() {
    let mut m = short_barrier_mesh(None).await;
    m.put_product("LAMP", 300_000, 5).await;
    m.grant_points("hana", 200).await;
    let placed = m
        .place_ok(order_request("hana-1", "hana", &[("LAMP", 2)], "", 50))
        .await;
    let lamp = m.product("LAMP").await;
    assert_eq!((lamp.available, lamp.reserved), (3, 2), "{lamp:?}");
    // reserve, deduct and create each left one entry: all three purged.
    purged_at_least("microshop_barrier_entries_purged_total", 3).await;

    m.cancel_order(&placed.order_id, "changed my mind")
        .await
        .expect("the cancel");
    let lamp = m.product("LAMP").await;
    assert_eq!(
        (lamp.available, lamp.reserved),
        (5, 0),
        "the stock is back: {lamp:?}"
    );
    let hana = m.balance("hana").await;
    assert_eq!(
        (hana.points, hana.deducted, hana.refunded),
        (200, 50, 50),
        "the points are back: {hana:?}"
    );
    m.assert_invariants().await;
    m.shutdown().await;
}

/// Sagas purged 1 s after they ended, barrier entries too: GetSaga of a
/// purged saga is NOT_FOUND; paying an order again once its payment saga
/// is gone starts a new payment saga that changes nothing (the order is
/// paid, its stock committed, its points earned: each participant's
/// business record says so); and a key reused after the retention starts a
/// new checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purged_sagas_are_gone_and_nothing_runs_twice() {
    let mut m = short_barrier_mesh(Some(Duration::from_secs(1))).await;
    m.put_product("DESK", 2_500_000, 5).await;
    m.grant_points("ivo", 10).await;
    let placed = m
        .place_ok(order_request("ivo-1", "ivo", &[("DESK", 1)], "", 0))
        .await;
    let paid = m
        .confirm_payment(&placed.order_id, "PAY-1")
        .await
        .expect("the payment");
    let earned = m.balance("ivo").await.earned;
    assert!(earned > 0, "the order earned points");

    purged_at_least("microshop_sagas_purged_total", 2).await;
    // reserve, create, commit and earn.
    purged_at_least("microshop_barrier_entries_purged_total", 4).await;
    for saga_id in [&placed.saga_id, &paid.saga_id] {
        let status = expect_error(
            m.clients
                .admin
                .clone()
                .get_saga(orch::GetSagaRequest {
                    saga_id: saga_id.clone(),
                })
                .await,
            Code::NotFound,
            Reason::UnknownSaga,
        );
        assert!(status.message().contains(saga_id.as_str()));
    }

    // Paying again: a new payment saga, and no second effect.
    let again = m
        .confirm_payment(&placed.order_id, "PAY-1")
        .await
        .expect("paying an order again");
    assert_ne!(
        again.saga_id, paid.saga_id,
        "a new saga after the retention"
    );
    let ivo = m.balance("ivo").await;
    assert_eq!(ivo.earned, earned, "earned once: {ivo:?}");
    let desk = m.product("DESK").await;
    assert_eq!(
        (desk.available, desk.reserved, desk.sold),
        (4, 0, 1),
        "{desk:?}"
    );

    // The purged checkout's key starts a new checkout (one key, one saga
    // holds within the saga retention window).
    let reused = m
        .place_ok(order_request("ivo-1", "ivo", &[("DESK", 1)], "", 0))
        .await;
    assert_ne!(reused.order_id, placed.order_id, "a second order");
    assert_ne!(reused.saga_id, placed.saga_id);
    let listed = m.sagas().await;
    assert!(
        listed.iter().all(|s| saga_state(s) != SagaState::Failed),
        "{listed:#?}"
    );
    m.assert_invariants().await;
    m.shutdown().await;
}
