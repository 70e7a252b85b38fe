//! A participant SIGKILLed mid-saga, before or during a call, and
//! restarted while the orchestrator retries against it.

use super::*;

/// SIGKILLs `down`, sends PlaceOrder, waits until `step` has been tried at
/// least twice against the dead participant, restarts it on its port and
/// data: the PlaceOrder (still waiting) must succeed.
async fn outage_before_call(
    cluster: &mut Cluster,
    u: &mut Universe,
    c: &MeshClients,
    down: Svc,
    step: &str,
    sku: &str,
) {
    let who = format!("outage-{}", down.name());
    grant(c, u, &who).await;
    let before = product(c, sku).await;
    cluster.kill(down);
    let req = place(&who, &who, sku, "", REDEEM);
    let pending = Call::Place(req.clone()).spawn(c.clone());
    wait_attempts(c, &who, step, false, 2).await;
    assert!(
        !pending.is_finished(),
        "{who}: PlaceOrder ended while {down:?} was down"
    );
    cluster.start_svc(down, &[]).await;
    let c = cluster.clients();
    match timeout(Duration::from_secs(25), pending).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("{who}: PlaceOrder after {down:?} came back: {other:?}"),
    }
    let saga = saga_by_key(&c, &who).await.expect("saga logged");
    assert_eq!(
        saga.state,
        orch::SagaState::Completed as i32,
        "{}",
        describe(&saga)
    );
    assert!(action(&saga, step).attempts >= 2, "{}", describe(&saga));
    let again = place_ok(&c, req).await;
    assert_eq!(again.order_id, saga.order_id);
    assert_eq!(orders_of(&c, &who).await.len(), 1);
    let b = balance(&c, &who).await;
    assert_eq!(
        (b.points, b.deducted, b.refunded),
        (GRANT - REDEEM, REDEEM, 0),
        "{b:?}"
    );
    let p = product(&c, sku).await;
    assert_eq!(p.reserved, before.reserved + 1, "{p:?}");
    check_invariants(&c, u, &format!("{down:?} outage at {step}")).await;
}

/// Parks a checkout at `park` (a failpoint), SIGKILLs `down` and the
/// orchestrator, restarts the orchestrator: recovery retries `step` (an
/// action, or a compensation) against the dead participant; once it was
/// tried twice the participant comes back and the saga must end `expect`.
#[allow(clippy::too_many_arguments)]
async fn outage_mid_saga(
    cluster: &mut Cluster,
    u: &mut Universe,
    park: &str,
    down: Svc,
    step: &str,
    is_compensation: bool,
    req: orch::PlaceOrderRequest,
    expect: orch::SagaState,
) -> (orch::Saga, MeshClients) {
    let key = req.idempotency_key.clone();
    u.customers.insert(req.customer_id.clone());
    cluster
        .restart(Svc::Orchestrator, &["--failpoint", park])
        .await;
    let pending = Call::Place(req.clone()).spawn(cluster.clients());
    cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {park} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    cluster.kill(down);
    cluster.kill(Svc::Orchestrator);
    expect_cut_off(pending, &key, park).await;
    cluster.start_svc(Svc::Orchestrator, &[]).await;
    let c = cluster.clients();
    wait_attempts(&c, &key, step, is_compensation, 2).await;
    cluster.start_svc(down, &[]).await;
    let c = cluster.clients();
    let saga = saga_by_key(&c, &key).await.expect("saga logged");
    let saga = wait_settled(&c, &saga.saga_id).await;
    assert_eq!(saga.state, expect as i32, "{}", describe(&saga));
    (saga, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_killed_mid_saga() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::builder().orchestrator(OUTAGE_ENGINE).start().await;
    let mut c = cluster.clients();
    let mut u = Universe::default();
    let sku = "CRASH-GIZMO";
    put_product(&c, &mut u, sku, 100).await;

    // Down before the call: the first step that needs it retries until it
    // is back (quote reads inventory and order-svc first).
    for (down, step) in [
        (Svc::Loyalty, "deduct-points"),
        (Svc::Inventory, "quote"),
        (Svc::Order, "quote"),
    ] {
        outage_before_call(&mut cluster, &mut u, &c, down, step, sku).await;
        c = cluster.clients();
        eprintln!("{down:?} down at {step}: ok at {:?}", started.elapsed());
    }

    // Down mid-saga: the checkout parked after an earlier step, the
    // orchestrator restarted, recovery retries the step until it is back.
    for (park, down, step) in [
        ("result:quote", Svc::Inventory, "reserve-stock"),
        ("result:deduct-points", Svc::Order, "create-order"),
    ] {
        let who = format!("midsaga-{step}");
        grant(&c, &mut u, &who).await;
        let req = place(&who, &who, sku, "", REDEEM);
        let (saga, c2) = outage_mid_saga(
            &mut cluster,
            &mut u,
            park,
            down,
            step,
            false,
            req.clone(),
            orch::SagaState::Completed,
        )
        .await;
        c = c2;
        assert!(action(&saga, step).attempts >= 2, "{}", describe(&saga));
        assert_eq!(place_ok(&c, req).await.order_id, saga.order_id);
        assert_eq!(orders_of(&c, &who).await.len(), 1);
        let b = balance(&c, &who).await;
        assert_eq!((b.deducted, b.refunded), (REDEEM, 0), "{b:?}");
        check_invariants(&c, &u, &format!("{down:?} down at {step}")).await;
        eprintln!(
            "{down:?} down mid-saga at {step}: ok at {:?}",
            started.elapsed()
        );
    }

    // Down during compensation: refund-points retries until loyalty is back.
    let code = "CRASH-GONE";
    put_coupon(&c, &mut u, code, 1).await;
    u.customers.insert("outage-seed".into());
    place_ok(&c, place("outage-seed", "outage-seed", sku, code, 0)).await;
    let who = "midsaga-refund";
    grant(&c, &mut u, who).await;
    let before = product(&c, sku).await;
    let req = place(who, who, sku, code, REDEEM);
    let (saga, c2) = outage_mid_saga(
        &mut cluster,
        &mut u,
        "result:cancel-order",
        Svc::Loyalty,
        "deduct-points",
        true,
        req,
        orch::SagaState::Compensated,
    )
    .await;
    c = c2;
    let refund = compensation(&saga, "deduct-points").expect("refund-points ran");
    assert!(refund.attempts >= 2, "{}", describe(&saga));
    let b = balance(&c, who).await;
    assert_eq!(
        (b.points, b.deducted, b.refunded),
        (GRANT, REDEEM, REDEEM),
        "{b:?}"
    );
    let p = product(&c, sku).await;
    assert_eq!(
        (p.available, p.reserved),
        (before.available, before.reserved),
        "{p:?}"
    );
    check_invariants(&c, &u, "loyalty down at refund-points").await;
    eprintln!("participant outages in {:?}", started.elapsed());
}
