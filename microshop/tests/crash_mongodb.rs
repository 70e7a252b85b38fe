//! Crash tests over the real binary that need a MongoDB: several
//! orchestrators as `microshop serve orchestrator` processes on one saga
//! log, one SIGKILLed while it holds sagas mid-burst (the others take them
//! over: every saga ends once, the invariants of `docs/architecture.md` hold), and the database
//! itself stopped and started again under the mesh (health and errors
//! degrade to UNAVAILABLE, nothing exits, everything resumes), and an
//! orchestrator killed between the two writes of a checkout's last save.
//!
//! They run against `MICROSHOP_TEST_MONGODB_URI` and a SecantusDB of their
//! own (`MICROSHOP_TEST_SECANTUSD`), both set by `scripts/test.sh`; without
//! them they are skipped, except in CI. Unlike `crash/` they make no
//! sense on the embedded stores, so the script's MongoDB pass (every store
//! on MongoDB) does not run them again.
//!
//! Nothing waits on a sleep for state: every wait is bounded polling (of
//! health, GetSaga, or a service's stderr).

mod cluster;

use std::{collections::BTreeMap, time::Duration};

use cluster::{Cluster, Health, Svc, database::Database, process::POLL, shop::*};
use microshop::{
    invariants::{Universe, all_sagas},
    mesh::MeshClients,
};
use microshop_proto::{inventory::v1 as inv, orchestrator::v1 as orch, order::v1 as ord};
use microshop_runtime::{Reason, errors::reason_of};
use tokio::time::{Instant, sleep};
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// 4. Several orchestrators on one MongoDB, and the database going away
// ---------------------------------------------------------------------------

/// Budgets of the shared-log tests: short leases so a dead orchestrator's
/// sagas are taken over within seconds.
const SHARED_ENGINE: &[&str] = &[
    "--step-attempts",
    "100",
    "--step-budget-ms",
    "60000",
    "--compensation-attempts",
    "1000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "500",
    // SecantusDB is one Python process: under a burst from three
    // orchestrators a participant call may take seconds.
    "--call-timeout-ms",
    "5000",
    "--recovery-interval-ms",
    "200",
    // Longer than a call timeout plus the largest retry delay, so a live
    // owner renews its leases in time (README, "Several orchestrators").
    "--lease-ms",
    "8000",
];

/// How long the fallback in [`place_via`] keeps asking: the step budget
/// and a lease of [`SHARED_ENGINE`], and slack for the recovery interval.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(60 + 8 + 12);

/// PlaceOrder on `c`, retried on `fallback` with the same key when `c`'s
/// orchestrator is gone (what a load balancer in front of several does).
async fn place_via(
    c: MeshClients,
    fallback: MeshClients,
    req: orch::PlaceOrderRequest,
) -> Result<orch::PlaceOrderResponse, Status> {
    let first = c
        .checkout
        .clone()
        .place_order(with_deadline(req.clone(), Duration::from_secs(30)))
        .await;
    match first {
        Err(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) =>
        {
            // As long as the engine may legitimately keep a saga going: a
            // step retries for up to its budget (`--step-budget-ms`), after
            // a lease (`--lease-ms`) has run out. SecantusDB on a loaded
            // 2-core CI machine makes that real: one run saw a saga still
            // RUNNING 50 s in.
            let deadline = Instant::now() + TAKEOVER_WITHIN;
            loop {
                let again = fallback
                    .checkout
                    .clone()
                    .place_order(with_deadline(req.clone(), Duration::from_secs(30)))
                    .await;
                match again {
                    // Still being finished by its new owner: ask again.
                    Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                        sleep(Duration::from_millis(100)).await;
                    }
                    other => return other.map(tonic::Response::into_inner),
                }
            }
        }
        other => other.map(tonic::Response::into_inner),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_orchestrators_take_over_a_killed_ones_sagas() {
    /// Orders placed at once, a third through each orchestrator (kept
    /// small: SecantusDB is one Python process on a 2-core machine).
    const BURST: usize = 18;
    let test = "three_orchestrators_take_over_a_killed_ones_sagas";
    let Some(uri) = microshop_runtime::testing::mongodb_uri_for_tests(test) else {
        return;
    };
    let started = std::time::Instant::now();
    let mut cluster = Cluster::builder()
        .orchestrator(SHARED_ENGINE)
        .mongodb(uri)
        .start()
        .await;
    let second = cluster.start_peer().await;
    let third = cluster.start_peer().await;
    let c = cluster.clients_of(second);
    let mut u = Universe::default();
    let (sku, code) = ("SHARED-SKU", "SHARED-COUPON");
    // A unit for every order, so every saga gets past reserve-stock and
    // the first orchestrator's redeeming sagas surely reach its failpoint
    // (with fewer units they could all be refused before it, and it would
    // never hold a saga); a coupon of few uses makes some sagas compensate
    // after deduct-points, so takeover covers both directions.
    put_product(&c, &mut u, sku, BURST as i64).await;
    put_coupon(&c, &mut u, code, 2).await;
    let customers: Vec<String> = (0..6).map(|i| format!("shared-{i}")).collect();
    for who in &customers {
        grant(&c, &mut u, who).await;
    }

    // The first orchestrator holds every redeeming saga right after its
    // points are deducted, so it dies owning sagas half done.
    cluster
        .restart(Svc::Orchestrator, &["--failpoint", "result:deduct-points"])
        .await;
    let targets = [Svc::Orchestrator, second, third];
    let mut calls = Vec::new();
    for i in 0..BURST {
        let target = targets[i % 3];
        let who = &customers[i % customers.len()];
        let coupon = if i % 5 == 0 { code } else { "" };
        let points = if i % 2 == 0 { REDEEM } else { 0 };
        let req = place(&format!("shared-{i}"), who, sku, coupon, points);
        calls.push(tokio::spawn(place_via(
            cluster.clients_of(target),
            cluster.clients_of(if target == second { third } else { second }),
            req,
        )));
    }
    cluster
        .wait_line(Svc::Orchestrator, "FAILPOINT", Duration::from_secs(90))
        .await;
    cluster.kill(Svc::Orchestrator);

    let mut completed = 0;
    let mut rejected = 0;
    let mut failures = Vec::new();
    for call in calls {
        match call.await.expect("the call task") {
            Ok(_) => completed += 1,
            Err(s) if s.code() == Code::FailedPrecondition => rejected += 1,
            Err(s) => failures.push(s),
        }
    }
    if !failures.is_empty() {
        // Every saga not ended, step by step and with its history, so a
        // failure says what held it.
        let unended: Vec<String> = all_sagas(&mut c.admin.clone())
            .await
            .unwrap_or_default()
            .iter()
            .filter(|saga| {
                !matches!(
                    orch::SagaState::try_from(saga.state),
                    Ok(orch::SagaState::Completed | orch::SagaState::Compensated)
                )
            })
            .map(|saga| format!("{}\n    history: {:?}", describe(saga), saga.history))
            .collect();
        panic!(
            "PlaceOrder failed after the takeover: {failures:?}\nsagas not ended:\n  {}",
            unended.join("\n  ")
        );
    }
    let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for saga in &sagas {
        *by_key.entry(saga.idempotency_key.as_str()).or_default() += 1;
        let state = orch::SagaState::try_from(saga.state);
        assert!(
            matches!(
                state,
                Ok(orch::SagaState::Completed | orch::SagaState::Compensated)
            ),
            "a saga did not finish: {}",
            describe(saga)
        );
    }
    assert_eq!(by_key.len(), BURST, "one saga per key");
    assert!(by_key.values().all(|n| *n == 1), "one saga per key");
    let orders: usize = {
        let mut n = 0;
        for who in &customers {
            n += orders_of(&c, who).await.len();
        }
        n
    };
    assert_eq!(orders, completed, "exactly one order per completed saga");
    assert!(rejected > 0, "the burst was meant to exhaust the coupon");
    assert_invariants(&c, &u, "the takeover").await;
    eprintln!(
        "takeover: {BURST} sagas over 3 orchestrators, one SIGKILLed holding sagas: \
         {completed} completed, {rejected} compensated, in {:?}",
        started.elapsed()
    );
}

/// An orchestrator killed inside a checkout's last save, after its payment
/// deadline is written and before its `COMPLETED` record (`save:deadline`):
/// a peer takes the saga over and completes it, and the order, never paid,
/// is cancelled once that deadline passes. While the two writes were one
/// transaction, the kill left the saga's document locked by a transaction
/// nobody would finish (SecantusDB never reaps it, mongod after 60 s), and
/// no claim of the saga got through: the takeover test failed in CI on a
/// saga that stayed RUNNING for as long as it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_cut_between_its_deadline_and_its_record_is_taken_over() {
    let test = "a_saga_cut_between_its_deadline_and_its_record_is_taken_over";
    let Some(uri) = microshop_runtime::testing::mongodb_uri_for_tests(test) else {
        return;
    };
    // A deadline well after the takeover (a lease, 8 s, and a recovery
    // pass; slower on a loaded machine), so the expiry cancels a completed
    // checkout's order.
    let engine = SHARED_ENGINE.iter().copied().chain([
        "--payment-ttl-secs",
        "30",
        "--expiry-interval-ms",
        "200",
    ]);
    let mut cluster = Cluster::builder()
        .orchestrator(engine)
        .mongodb(uri)
        .start()
        .await;
    let peer = cluster.start_peer().await;
    let c = cluster.clients_of(peer);
    let mut u = Universe::default();
    let (sku, who, key) = ("CUT-SKU", "cut-customer", "cut-at-deadline");
    put_product(&c, &mut u, sku, 3).await;
    grant(&c, &mut u, who).await;
    cluster
        .restart(Svc::Orchestrator, &["--failpoint", "save:deadline"])
        .await;
    let call = tokio::spawn(place_via(
        cluster.clients(),
        cluster.clients_of(peer),
        place(key, who, sku, "", 0),
    ));
    cluster
        .wait_line(
            Svc::Orchestrator,
            "FAILPOINT save:deadline reached",
            Duration::from_secs(60),
        )
        .await;
    cluster.kill(Svc::Orchestrator);

    let placed = call
        .await
        .expect("the call task")
        .expect("the checkout completes on the peer");
    let saga = saga_by_key(&c, key).await.expect("the saga");
    assert_eq!(
        saga.state,
        orch::SagaState::Completed as i32,
        "{}",
        describe(&saga)
    );
    // The deadline was set: the expiry's cancellation starts once it passes
    // (keyed by the order) and ends with the order cancelled.
    let expiry = format!("expire:{}", placed.order_id);
    let deadline = Instant::now() + Duration::from_secs(90);
    let expired = loop {
        if let Some(saga) = saga_by_key(&c, &expiry).await {
            break saga;
        }
        assert!(
            Instant::now() < deadline,
            "no expiry saga for the unpaid order: its deadline was lost"
        );
        sleep(POLL).await;
    };
    let expired = wait_settled(&c, &expired.saga_id).await;
    assert_eq!(
        expired.state,
        orch::SagaState::Completed as i32,
        "{}",
        describe(&expired)
    );
    let status = order(&c, &placed.order_id).await.status;
    assert_eq!(
        status,
        ord::OrderStatus::Cancelled as i32,
        "the order's status"
    );
    assert_invariants(&c, &u, "a saga cut between its deadline and its record").await;
}

/// Budgets that outlast a database outage: steps and compensations keep
/// retrying for two minutes.
const DB_OUTAGE_ENGINE: &[&str] = &[
    "--step-attempts",
    "100000",
    "--step-budget-ms",
    "120000",
    "--compensation-attempts",
    "100000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "200",
    "--call-timeout-ms",
    "2000",
    "--recovery-interval-ms",
    "200",
    "--orchestrator-id",
    "outage-test-orchestrator",
];

/// Polls the overall health of `svc` until it is `want`.
async fn wait_health(cluster: &Cluster, svc: Svc, want: bool) {
    cluster
        .wait_health(svc, Health::Overall, want, Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_degrades_and_recovers() {
    let test = "database_outage_degrades_and_recovers";
    let Some(command) = microshop_runtime::testing::secantusd_for_tests(test) else {
        return;
    };
    let started = std::time::Instant::now();
    let mut db = Database::start(command);
    let mut cluster = Cluster::builder()
        .orchestrator(DB_OUTAGE_ENGINE)
        .mongodb(db.uri())
        .start()
        .await;
    let c = cluster.clients();
    let mut u = Universe::default();
    let (sku, who) = ("OUTAGE-SKU", "outage-customer");
    put_product(&c, &mut u, sku, 10).await;
    grant(&c, &mut u, who).await;
    place_ok(&c, place("outage-before", who, sku, "", REDEEM)).await;

    // A saga in flight when the database goes: loyalty-svc is down, so it
    // waits in deduct-points' retries, holding stock.
    cluster.kill(Svc::Loyalty);
    let in_flight = tokio::spawn({
        let c = cluster.clients();
        async move {
            c.checkout
                .clone()
                .place_order(with_deadline(
                    place("outage-in-flight", who, sku, "", REDEEM),
                    Duration::from_secs(60),
                ))
                .await
        }
    });
    let deadline = Instant::now() + SETTLE_WITHIN;
    while saga_by_key(&c, "outage-in-flight").await.is_none_or(|s| {
        s.steps.iter().all(|st| {
            st.name != "deduct-points" || st.action.as_ref().is_none_or(|a| a.attempts == 0)
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "the saga never reached deduct-points"
        );
        sleep(POLL).await;
    }

    db.down();
    for svc in [Svc::Inventory, Svc::Order, Svc::Orchestrator] {
        wait_health(&cluster, svc, false).await;
    }
    // Calls fail with UNAVAILABLE meanwhile, and nothing exits.
    let refused = c
        .checkout
        .clone()
        .place_order(with_deadline(
            place("outage-during", who, sku, "", 0),
            Duration::from_secs(10),
        ))
        .await
        .expect_err("PlaceOrder without a database");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let read = c
        .inventory
        .clone()
        .get_product(inv::GetProductRequest { sku: sku.into() })
        .await
        .expect_err("GetProduct without a database");
    assert_eq!(read.code(), Code::Unavailable, "{read:?}");
    for svc in cluster.running() {
        assert!(
            cluster.exited(svc).is_none(),
            "{svc:?} exited during the outage"
        );
    }
    // Liveness (what Kubernetes restarts on) stays SERVING meanwhile.
    for svc in [Svc::Inventory, Svc::Order, Svc::Orchestrator] {
        assert!(
            cluster
                .serving(svc, Health::Entry(microshop_runtime::LIVENESS))
                .await,
            "{svc:?} liveness went down with the database"
        );
    }

    db.up();
    cluster.start_svc(Svc::Loyalty, &[]).await;
    for svc in [Svc::Inventory, Svc::Loyalty, Svc::Order, Svc::Orchestrator] {
        wait_health(&cluster, svc, true).await;
    }
    // The saga in flight finishes (recovery resumes it), the refused call
    // succeeds when retried with its key, and nothing was lost.
    let saga = saga_by_key(&c, "outage-in-flight")
        .await
        .expect("the in-flight saga is still logged");
    let saga = wait_settled(&c, &saga.saga_id).await;
    assert_eq!(
        saga.state,
        orch::SagaState::Completed as i32,
        "{}",
        describe(&saga)
    );
    // Its first call saw the database go: either it was still waiting when
    // recovery finished the saga (the order), or the driver's save failed
    // under it and it was told to retry (UNAVAILABLE, naming the saga).
    match in_flight.await.expect("the in-flight call task") {
        Ok(answer) => {
            let answer = answer.into_inner();
            assert_eq!(
                (answer.saga_id.as_str(), answer.order_id.as_str()),
                (saga.saga_id.as_str(), saga.order_id.as_str()),
                "{answer:?}"
            );
        }
        Err(status) => {
            assert_eq!(
                (status.code(), reason_of(&status)),
                (Code::Unavailable, Some(Reason::DependencyUnavailable)),
                "the in-flight call: {status:?}"
            );
            assert_eq!(
                microshop_runtime::errors::metadata_of(&status, "sagaId").as_deref(),
                Some(saga.saga_id.as_str()),
                "the in-flight call's error names its saga: {status:?}"
            );
        }
    }
    let again = place_ok(&c, place("outage-in-flight", who, sku, "", REDEEM)).await;
    assert_eq!(again.saga_id, saga.saga_id);
    place_ok(&c, place("outage-during", who, sku, "", 0)).await;
    assert_eq!(orders_of(&c, who).await.len(), 3);
    assert_invariants(&c, &u, "the database outage").await;
    eprintln!("database outage survived in {:?}", started.elapsed());
}
