//! The checkout hold: stock given back while loyalty-svc is down, the
//! rest compensated once it is back.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_hold_releases_stock_while_loyalty_is_down_then_compensates_the_rest() {
    let mut cluster = Cluster::builder()
        .orchestrator(OPS_ENGINE)
        .orchestrator(["--checkout-hold-secs", "3"])
        .start()
        .await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 10).await;
    grant(&c, &mut u, "una").await;

    stop_loyalty(&mut cluster).await;
    let request = place_units("hold-1", "una", "BIKE", 2, "", REDEEM);
    let status = expect_reason(
        place_err(&c, request.clone()).await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let saga_id = saga_id_of(&status);

    // The hold ends with loyalty-svc still down: the release runs at once,
    // the refund spends its budget on the dead loyalty-svc and then waits.
    let saga = saga_until(
        &c,
        &saga_id,
        "the expired checkout to release its stock and wait for loyalty-svc",
        |s| {
            comp_status(s, "reserve-stock") == Some(orch::StepStatus::Succeeded)
                && comp_status(s, "deduct-points") == Some(orch::StepStatus::Waiting)
        },
    )
    .await;
    assert!(
        !cluster.running().contains(&Svc::Loyalty),
        "loyalty-svc is still down"
    );
    assert_eq!(
        state(&saga),
        orch::SagaState::Compensating,
        "{}",
        describe(&saga)
    );
    assert_eq!(saga.waiting_for, vec![LOYALTY.to_owned()], "{saga:#?}");
    assert_eq!(
        saga.error.as_ref().map(|e| e.reason.as_str()),
        Some("CHECKOUT_EXPIRED"),
        "{saga:#?}"
    );
    assert!(
        saga.history
            .iter()
            .any(|t| t.actor == "automatic" && t.note.contains("checkout hold")),
        "{:#?}",
        saga.history
    );
    let bike = product(&c, "BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (10, 0),
        "the stock is back on sale: {bike:?}"
    );
    let retried = expect_reason(
        place_err(&c, request.clone()).await,
        Code::FailedPrecondition,
        Reason::CheckoutExpired,
    );
    assert_eq!(saga_id_of(&retried), saga_id);

    // loyalty-svc is back: the refund (a null compensation, the deduction
    // never arrived) runs and the saga ends COMPENSATED.
    cluster.start_svc(Svc::Loyalty, &[]).await;
    let c = cluster.clients();
    let saga = saga_until(
        &c,
        &saga_id,
        "the expired checkout to end",
        is(orch::SagaState::Compensated),
    )
    .await;
    assert_eq!(
        comp_status(&saga, "deduct-points"),
        Some(orch::StepStatus::Succeeded),
        "{}",
        describe(&saga)
    );
    expect_reason(
        place_err(&c, request).await,
        Code::FailedPrecondition,
        Reason::CheckoutExpired,
    );
    let una = balance(&c, "una").await;
    assert_eq!(
        (una.points, una.deducted - una.refunded),
        (GRANT, 0),
        "{una:?}"
    );
    assert_invariants(&c, &u, "the checkout hold").await;
}
