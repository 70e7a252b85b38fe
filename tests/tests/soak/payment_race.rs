//! A cancellation landing mid-payment never strands the payment.

use microshop_proto::{
    orchestrator::v1::{self as orch, SagaState},
    order::v1::OrderStatus,
};
use microshop_runtime::faults::FaultConfig;
use microshop_tests::{TestMesh, eventually, order_request, test_engine};

use crate::SETTLE_WITHIN;

/// Caught by the soak: a CancelOrder landing between a payment's mark-paid
/// and its commit-stock released the reservation, so commit-stock was
/// refused and the payment saga ended FAILED ("mark-paid cannot be
/// undone") with the order cancelled under it. Payment and cancellation
/// sagas of one order now take turns.
///
/// The payment is held at CommitStock (the fault layer's gate) until the
/// cancellation's saga is logged, so the cancellation always comes
/// mid-payment: no timing decides whether the test tests anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_racing_a_cancellation_never_strands_the_payment() {
    let faults: FaultConfig = "seed=1,only=CommitStock".parse().expect("a valid spec");
    let stats = faults.stats();
    let mut m = TestMesh::start_with(test_engine(), |c| c.server.faults = Some(faults)).await;
    m.put_product("LAMP", 300_000, 5).await;
    let placed = m
        .place_ok(order_request(
            "race-pay-cancel",
            "rita",
            &[("LAMP", 2)],
            "",
            0,
        ))
        .await;
    let order_id = placed.order_id.clone();

    stats.close_gate();
    let pay = tokio::spawn({
        let shop = m.shop.clone();
        let id = order_id.clone();
        async move { shop.confirm_payment(&id, "pay-race").await }
    });
    eventually(
        "the payment to wait at CommitStock, past mark-paid",
        SETTLE_WITHIN,
        || async {
            match stats.at_gate() {
                0 => Err("nothing at the gate".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    let cancel = tokio::spawn({
        let shop = m.shop.clone();
        let id = order_id.clone();
        async move { shop.cancel_order(&id, "changed my mind").await }
    });
    eventually(
        "the cancellation's saga to be logged",
        SETTLE_WITHIN,
        || async {
            let sagas = m.sagas().await;
            if sagas
                .iter()
                .any(|s| s.r#type == orch::SagaType::CancelOrder as i32)
            {
                Ok(())
            } else {
                Err(format!("{} sagas, no cancellation", sagas.len()))
            }
        },
    )
    .await;
    assert!(!pay.is_finished(), "the payment is still held");
    stats.open_gate();
    let pay = pay.await.expect("the payment task");
    let cancel = cancel.await.expect("the cancellation task");

    let pay = pay.unwrap_or_else(|s| panic!("payment: {s:?}"));
    assert_eq!(pay.state, SagaState::Completed as i32, "{pay:?}");
    let cancel = cancel.unwrap_or_else(|s| panic!("cancellation: {s:?}"));
    assert_eq!(cancel.state, SagaState::Completed as i32, "{cancel:?}");
    assert_eq!(
        m.order(&order_id).await.status,
        OrderStatus::Cancelled as i32
    );
    let lamp = m.product("LAMP").await;
    assert_eq!(
        (lamp.available, lamp.reserved, lamp.sold, lamp.restocked),
        (5, 0, 2, 2),
        "paid, then restocked by the cancellation: {lamp:?}"
    );
    m.assert_invariants().await;
    assert!(m.sagas_in(SagaState::Failed).await.is_empty());
    m.shutdown().await;
}
