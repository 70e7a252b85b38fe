//! The suite's checks of what a save keeps: records round-trip whole;
//! the unfinished set and the claims that recovery reads; payment
//! deadlines.

use super::*;

/// A saved record comes back whole, by id and by key.
pub(super) async fn save_round_trips<L: SagaLog>(log: &L, book: &mut Book) {
    let id = book
        .newest_first(None)
        .pop()
        .expect("the first saga is booked");
    let mut record = book.get(&id);
    assert_eq!(record.idempotency_key, "key-1");

    for step in &mut record.steps {
        step.action.status = StepStatus::Succeeded;
        step.action.attempts = 2;
        step.action.last_error = "deadline exceeded, retried".to_owned();
        step.action.started_at_ms = Some(record.created_at_ms);
        step.action.finished_at_ms = Some(record.created_at_ms + 7);
    }
    if let Some(last) = record.steps.last_mut() {
        last.action.status = StepStatus::Failed;
        // As the engine makes it: named after its operation (the embedded
        // log stores only what the definition does not say).
        last.compensation = Some(orchestrator::model::RunRecord {
            name: "cancel-order".to_owned(),
            ..Default::default()
        });
    }
    record.outputs = SagaOutputs {
        lines: vec![PricedLine {
            sku: "SKU-1".to_owned(),
            name: "Cà phê".to_owned(),
            quantity: 2,
            unit_price: 12_500,
        }],
        order_id: Some("order-1".to_owned()),
        order_saga_id: Some("saga-x".to_owned()),
        order_customer_id: Some("conformance-customer".to_owned()),
        order_total: 77_500,
        order_snapshot: Some("0a0b".repeat(40)),
    };
    record.error = Some(SagaError {
        code: 9,
        reason: "INSUFFICIENT_POINTS".to_owned(),
        message: "not enough points".to_owned(),
        metadata: BTreeMap::from([("balance".to_owned(), "3".to_owned())]),
        violations: vec![("points".to_owned(), "too many".to_owned())],
    });
    record.transition(SagaState::Compensating, "create-order failed");
    save(log, book, &record, PaymentDeadline::Keep).await;
    assert_eq!(
        log.get(id.clone()).await.expect("get"),
        Some(record.clone())
    );
    assert_eq!(
        log.get_by_key(CUSTOMER.to_owned(), "key-1".to_owned())
            .await
            .expect("get_by_key"),
        Some(record.clone())
    );

    // A second save replaces the first.
    record.transition(SagaState::Compensated, "every step compensated");
    save(log, book, &record, PaymentDeadline::Keep).await;
    assert_eq!(log.get(id).await.expect("get"), Some(record));
}

/// unfinished lists RUNNING and COMPENSATING sagas only; claims are
/// granted for those and refused for ended or unknown ones.
pub(super) async fn unfinished_and_claims<L: SagaLog>(log: &L, book: &mut Book) {
    let mut compensating = begin_new(log, book, record("key-compensating")).await;
    compensating.transition(SagaState::Compensating, "reserve-stock refused");
    save(log, book, &compensating, PaymentDeadline::Keep).await;
    let mut completed = begin_new(log, book, record("key-completed")).await;
    completed.transition(SagaState::Completed, "every step succeeded");
    save(log, book, &completed, PaymentDeadline::Keep).await;
    let mut failed = begin_new(log, book, record("key-failed")).await;
    failed.failure_reason = "out of retries".to_owned();
    failed.failed_from = Some(SagaState::Running);
    failed.transition(SagaState::Failed, "out of retries");
    save(log, book, &failed, PaymentDeadline::Keep).await;
    // A saga that ran and ended, then was saved back to RUNNING (an
    // operator's retry) is unfinished again.
    let mut retried = begin_new(log, book, record("key-retried")).await;
    retried.transition(SagaState::Failed, "out of retries");
    save(log, book, &retried, PaymentDeadline::Keep).await;
    retried.transition(SagaState::Running, "retried by an operator");
    save(log, book, &retried, PaymentDeadline::Keep).await;

    let expected: HashSet<String> = book
        .sagas
        .values()
        .filter(|r| matches!(r.state, SagaState::Running | SagaState::Compensating))
        .map(|r| r.saga_id.clone())
        .collect();
    assert!(expected.contains(&compensating.saga_id) && expected.contains(&retried.saga_id));
    let unfinished = log.unfinished().await.expect("unfinished");
    let listed: HashSet<String> = unfinished.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        unfinished.len(),
        "no saga twice: {unfinished:?}"
    );
    assert_eq!(
        listed, expected,
        "unfinished = the RUNNING and COMPENSATING sagas"
    );

    // Ended or unknown: nothing to claim.
    for ended in [
        &completed,
        &failed,
        &book.get(&book.newest_first(Some(SagaState::Compensated))[0]),
    ] {
        assert_eq!(
            log.claim(ended.saga_id.clone()).await.expect("claim"),
            None,
            "a {:?} saga cannot be claimed",
            ended.state
        );
    }
    assert_eq!(
        log.claim(uuid::Uuid::now_v7().to_string())
            .await
            .expect("claim"),
        None,
        "an unknown saga cannot be claimed"
    );

    // Unfinished and held by no other: the claim is granted, and the
    // claimed copy is the one to save from.
    for held in [&compensating, &retried] {
        let claimed = log
            .claim(held.saga_id.clone())
            .await
            .expect("claim")
            .unwrap_or_else(|| {
                panic!(
                    "the claim of {:?} saga {} is granted",
                    held.state, held.saga_id
                )
            });
        assert!(
            claimed.lease_epoch >= held.lease_epoch,
            "epochs never go back"
        );
        assert_eq!(
            SagaRecord {
                lease_epoch: held.lease_epoch,
                ..claimed.clone()
            },
            *held,
            "a claim returns the saga as saved"
        );
        assert_eq!(
            log.get(held.saga_id.clone()).await.expect("get"),
            Some(claimed.clone())
        );
        let mut next = claimed;
        next.updated_at_ms += 1;
        save(log, book, &next, PaymentDeadline::Keep).await;
        assert_eq!(
            log.get(next.saga_id.clone()).await.expect("get"),
            Some(next)
        );
    }
}

/// Deadlines set with a save show once due, in due order; clearing or
/// moving one takes it out.
pub(super) async fn payment_deadlines<L: SagaLog>(log: &L, book: &mut Book) {
    let now = now_ms();
    let hour = 3_600_000;
    assert_eq!(
        log.due_payments(now, 10).await.expect("due_payments"),
        Vec::<String>::new()
    );

    let mut placing = begin_new(log, book, record("key-deadlines")).await;
    let set = |order: &str, due_ms: i64| PaymentDeadline::Set {
        order_id: order.to_owned(),
        due_ms,
    };
    placing.outputs.order_id = Some("order-late".to_owned());
    save(log, book, &placing, set("order-late", now - 2_000)).await;
    save(log, book, &placing, set("order-later", now - 1_000)).await;
    save(log, book, &placing, set("order-future", now + hour)).await;
    save(log, book, &placing, set("order-moved", now - 500)).await;
    assert_eq!(
        log.due_payments(now, 10).await.expect("due_payments"),
        vec!["order-late", "order-later", "order-moved"],
        "due deadlines, earliest first; future ones not yet"
    );
    assert_eq!(
        log.due_payments(now, 2).await.expect("due_payments"),
        vec!["order-late", "order-later"],
        "at most `limit`"
    );
    assert_eq!(
        log.due_payments(now - 1_500, 10)
            .await
            .expect("due_payments"),
        vec!["order-late"]
    );

    // Paid: cleared. Moved later: replaced, not doubled.
    save(
        log,
        book,
        &placing,
        PaymentDeadline::Clear {
            order_id: "order-late".to_owned(),
        },
    )
    .await;
    save(log, book, &placing, set("order-moved", now + 2 * hour)).await;
    assert_eq!(
        log.due_payments(now, 10).await.expect("due_payments"),
        vec!["order-later"]
    );
    assert_eq!(
        log.due_payments(now + 3 * hour, 10)
            .await
            .expect("due_payments"),
        vec!["order-later", "order-future", "order-moved"]
    );
    // Keep leaves deadlines alone; clearing an unknown order is harmless.
    save(log, book, &placing, PaymentDeadline::Keep).await;
    save(
        log,
        book,
        &placing,
        PaymentDeadline::Clear {
            order_id: "order-never".to_owned(),
        },
    )
    .await;
    for order in ["order-later", "order-future", "order-moved"] {
        save(
            log,
            book,
            &placing,
            PaymentDeadline::Clear {
                order_id: order.to_owned(),
            },
        )
        .await;
    }
    assert_eq!(
        log.due_payments(now + 3 * hour, 10)
            .await
            .expect("due_payments"),
        Vec::<String>::new()
    );
    assert_eq!(
        log.get(placing.saga_id.clone()).await.expect("get"),
        Some(placing)
    );
}
