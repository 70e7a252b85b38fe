//! An outage of loyalty-svc longer than the step budget heals without an
//! operator.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_step_budget_heals_without_an_operator() {
    let mut cluster = Cluster::builder().orchestrator(OPS_ENGINE).start().await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 10).await;
    grant(&c, &mut u, "una").await;

    stop_loyalty(&mut cluster).await;
    let request = place_units("down-1", "una", "BIKE", 2, "", REDEEM);
    let status = expect_reason(
        place_err(&c, request.clone()).await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    assert!(status.message().contains(LOYALTY), "{status:?}");
    let saga_id = saga_id_of(&status);
    let saga = get_saga(&c, &saga_id).await.expect("GetSaga");
    assert_eq!(
        state(&saga),
        orch::SagaState::Running,
        "{}",
        describe(&saga)
    );
    assert_eq!(saga.waiting_for, vec![LOYALTY.to_owned()], "{saga:#?}");
    assert!(
        saga.failure_reason.is_empty(),
        "not a dead letter: {saga:#?}"
    );
    assert_eq!(
        action_status(&saga, "deduct-points"),
        Some(orch::StepStatus::Waiting),
        "{}",
        describe(&saga)
    );
    let first_budget = action(&saga, "deduct-points").attempts;

    // The outage outlasts the budget: automation probes loyalty-svc again
    // on its backoff (a fresh, bounded budget each time), and the saga
    // keeps waiting, never FAILED.
    let probed = saga_until(&c, &saga_id, "a probe while loyalty-svc is down", |s| {
        action(s, "deduct-points").attempts > first_budget
            && action_status(s, "deduct-points") == Some(orch::StepStatus::Waiting)
    })
    .await;
    assert_eq!(
        state(&probed),
        orch::SagaState::Running,
        "{}",
        describe(&probed)
    );
    assert!(
        probed.history.iter().any(|t| t.actor == "automatic"
            && t.note == "re-driven automatically: retrying after waiting"),
        "{:#?}",
        probed.history
    );
    let bike = product(&c, "BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (8, 2),
        "held while it waits"
    );

    // loyalty-svc is back: the saga completes with no RetrySaga.
    cluster.start_svc(Svc::Loyalty, &[]).await;
    let c = cluster.clients();
    let done = saga_until(
        &c,
        &saga_id,
        "the waiting checkout to complete by itself",
        is(orch::SagaState::Completed),
    )
    .await;
    assert!(done.waiting_for.is_empty(), "{done:#?}");
    assert!(
        done.history
            .iter()
            .any(|t| t.actor == "automatic" && t.note.starts_with("re-driven automatically")),
        "the history says it was re-driven automatically: {:#?}",
        done.history
    );
    assert!(
        done.history
            .iter()
            .all(|t| t.actor.is_empty() || t.actor == "automatic"),
        "no operator acted: {:#?}",
        done.history
    );
    let answer = place_ok(&c, request).await;
    assert_eq!(
        answer.order_id, done.order_id,
        "the retry answers the order"
    );
    assert_eq!(balance(&c, "una").await.points, GRANT - REDEEM);
    assert_invariants(&c, &u, "the outage healed").await;
}
