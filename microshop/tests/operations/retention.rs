//! Retention: finished sagas and barrier entries purged, FAILED ones
//! kept.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_finished_sagas_and_barrier_entries_and_keeps_failed_ones() {
    let barrier = ["--barrier-retention-secs", "1"];
    let cluster = Cluster::builder()
        .metrics()
        .orchestrator(OPS_ENGINE)
        .orchestrator(["--saga-retention-secs", "2"])
        .args(Svc::Inventory, barrier)
        .args(Svc::Loyalty, barrier)
        .args(Svc::Order, barrier)
        .start()
        .await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 20).await;
    grant(&c, &mut u, "una").await;

    // The dead letter first: it is older than every saga purged below.
    let (_, dead) = dead_letter(&c, "DEAD", "dora").await;

    // Finished sagas: a checkout and its payment (COMPLETED), a checkout
    // out of stock (COMPENSATED), and a checkout redeeming points that
    // stays unpaid (COMPLETED; its order is cancelled after the purge).
    let paid_req = place("una-paid", "una", "BIKE", "", 0);
    let paid = place_ok(&c, paid_req.clone()).await;
    let payment = confirm(&c, &paid.order_id, "PAY-1")
        .await
        .expect("the payment");
    let rejected = expect_reason(
        place_err(&c, place_units("una-big", "una", "BIKE", 99, "", 0)).await,
        Code::FailedPrecondition,
        Reason::OutOfStock,
    );
    let unpaid = place_ok(&c, place_units("una-unpaid", "una", "BIKE", 2, "", REDEEM)).await;
    let finished = [
        paid.saga_id.clone(),
        payment.saga_id.clone(),
        saga_id_of(&rejected),
        unpaid.saga_id.clone(),
    ];

    // Purged: the finished sagas are gone (NOT_FOUND / UNKNOWN_SAGA) and
    // each store counted what it purged.
    let o = cluster.metrics_addr(Svc::Orchestrator);
    wait_at_least(o, "microshop_sagas_purged_total", 5.0, SETTLE_WITHIN).await;
    for saga_id in &finished {
        let deadline = Instant::now() + SETTLE_WITHIN;
        let status = loop {
            match get_saga(&c, saga_id).await {
                Err(status) => break status,
                Ok(saga) => assert!(Instant::now() < deadline, "not purged: {}", describe(&saga)),
            }
            sleep(POLL).await;
        };
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(reason_of(&status), Some(Reason::UnknownSaga), "{status:?}");
    }
    // At least the checkouts' reservations, the one deduction and the
    // orders created (their sagas' entries go together once all are old).
    for (svc, at_least) in [
        (Svc::Inventory, 3.0),
        (Svc::Loyalty, 1.0),
        (Svc::Order, 3.0),
    ] {
        wait_at_least(
            cluster.metrics_addr(svc),
            "microshop_barrier_entries_purged_total",
            at_least,
            SETTLE_WITHIN,
        )
        .await;
    }

    // Kept: the FAILED saga, older than all of them, as it was.
    let kept = get_saga(&c, &dead.saga_id)
        .await
        .expect("the dead letter is kept");
    assert_eq!(state(&kept), orch::SagaState::Failed, "{}", describe(&kept));
    assert_eq!(kept.failure_reason, dead.failure_reason);

    // The unpaid order is cancelled after its checkout's saga is gone, and
    // its barrier entries with it (past their 1 s retention a second
    // before the saga's 2 s, and purged every 0.5 s): the reservation and
    // the points ledger (business records, kept) still say what to give
    // back.
    cancel(&c, &unpaid.order_id).await;
    let bike = product(&c, "BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved, bike.sold),
        (19, 0, 1),
        "{bike:?}"
    );
    let una = balance(&c, "una").await;
    assert_eq!(
        (una.points, una.deducted - una.refunded),
        (GRANT + una.earned, 0),
        "{una:?}"
    );

    // A purged checkout's key starts a new checkout (one key, one saga
    // holds within the retention window).
    let again = place_ok(&c, paid_req).await;
    assert_ne!(again.order_id, paid.order_id, "a new order");
    assert_ne!(again.saga_id, paid.saga_id, "a new saga");
    assert_invariants(&c, &u, "retention").await;
}
