//! The orchestrator crash matrix over the checkout saga: SIGKILLed at
//! every step boundary, then restarted and recovered.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrator_crash_matrix() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("orchestrator_crash_matrix");
    let mut cluster = Cluster::builder().orchestrator(MATRIX_ENGINE).start().await;
    let mut c = cluster.clients();
    let mut u = Universe::default();
    let sku = "CRASH-WIDGET";
    let code = "CRASH-LASTONE";
    put_product(&c, &mut u, sku, 1_000).await;
    put_coupon(&c, &mut u, code, 1).await;
    // The coupon's only use goes to this order, so any later create-order
    // with it is rejected (COUPON_EXHAUSTED) and the saga compensates.
    u.customers.insert("crash-seed".into());
    place_ok(&c, place("crash-seed", "crash-seed", sku, code, 0)).await;
    assert_eq!(coupon(&c, code).await.times_used, 1);

    // Forward path: crash at every boundary of every step; the saga resumes
    // where it stopped and completes, each effect applied once.
    for step in PLACE_STEPS {
        for phase in PHASES {
            let point = format!("{phase}:{step}");
            let who = format!("fwd-{phase}-{step}");
            grant(&c, &mut u, &who).await;
            let stock_before = product(&c, sku).await;
            let req = place(&who, &who, sku, "", REDEEM);
            let (saga, c2) = crash_at(&mut cluster, &point, Call::Place(req.clone())).await;
            c = c2;
            assert_eq!(
                saga.state,
                orch::SagaState::Completed as i32,
                "{point}: {}",
                describe(&saga)
            );
            assert!(!saga.order_id.is_empty(), "{point}: no order id");
            // Resumed where it stopped: earlier steps were not run again.
            for s in PLACE_STEPS {
                let run = action(&saga, s);
                assert_eq!(
                    run.status,
                    resumed_status(s, step, phase, orch::StepStatus::Succeeded),
                    "{point}: {}",
                    describe(&saga)
                );
                let want = attempts_of(s, step, phase, &PLACE_STEPS);
                assert_eq!(run.attempts, want, "{point}: {s}: {}", describe(&saga));
                assert!(
                    compensation(&saga, s).is_none(),
                    "{point}: {s} compensated: {}",
                    describe(&saga)
                );
            }
            // A retry with the same key answers the same order, twice.
            for _ in 0..2 {
                let again = place_ok(&c, req.clone()).await;
                assert_eq!(again.saga_id, saga.saga_id, "{point}");
                assert_eq!(again.order_id, saga.order_id, "{point}");
                assert_eq!(again.state, orch::SagaState::Completed as i32, "{point}");
                let o = again.order.expect("PlaceOrder returns the order");
                assert_eq!(o.redeemed_points, REDEEM, "{point}");
            }
            // Effects exactly once.
            let orders = orders_of(&c, &who).await;
            assert_eq!(orders.len(), 1, "{point}: orders {orders:?}");
            assert_eq!(orders[0].order_id, saga.order_id, "{point}");
            let b = balance(&c, &who).await;
            assert_eq!(
                (b.points, b.deducted, b.refunded),
                (GRANT - REDEEM, REDEEM, 0),
                "{point}: {b:?}"
            );
            let p = product(&c, sku).await;
            assert_eq!(p.reserved, stock_before.reserved + 1, "{point}: {p:?}");
            assert_eq!(p.available, stock_before.available - 1, "{point}: {p:?}");
            tally.check(&c, &u, &point).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("forward {point}: ok at {:?}", started.elapsed());
        }
    }

    // Compensation path: create-order is rejected (coupon exhausted), so
    // cancel-order, refund-points and release-stock run; crash at every
    // boundary of the rejected step and of each compensation. The saga must
    // end COMPENSATED with nothing held.
    for comp in COMPENSATION_CALLS {
        for phase in PHASES {
            let point = format!("{phase}:{comp}");
            let who = format!("comp-{phase}-{comp}");
            grant(&c, &mut u, &who).await;
            let stock_before = product(&c, sku).await;
            let req = place(&who, &who, sku, code, REDEEM);
            let (saga, c2) = crash_at(&mut cluster, &point, Call::Place(req.clone())).await;
            c = c2;
            assert_eq!(
                saga.state,
                orch::SagaState::Compensated as i32,
                "{point}: {}",
                describe(&saga)
            );
            assert_eq!(
                saga.error.as_ref().map(|e| e.reason.as_str()),
                Some("COUPON_EXHAUSTED"),
                "{point}: {}",
                describe(&saga)
            );
            for (step, undo) in [
                ("reserve-stock", "release-stock"),
                ("deduct-points", "refund-points"),
                ("create-order", "cancel-order"),
            ] {
                let run = compensation(&saga, step)
                    .unwrap_or_else(|| panic!("{point}: {undo} never ran: {}", describe(&saga)));
                assert_eq!(
                    run.status,
                    orch::StepStatus::Succeeded as i32,
                    "{point}: {}",
                    describe(&saga)
                );
                let want = attempts_of(undo, comp, phase, &COMPENSATION_CALLS);
                assert_eq!(run.attempts, want, "{point}: {undo}: {}", describe(&saga));
            }
            let rejected = action(&saga, "create-order");
            assert_eq!(
                rejected.status,
                orch::StepStatus::Failed as i32,
                "{point}: {}",
                describe(&saga)
            );
            let want = attempts_of("create-order", comp, phase, &COMPENSATION_CALLS);
            assert_eq!(rejected.attempts, want, "{point}: {}", describe(&saga));
            // A retry answers the same rejection, every time.
            let mut seen = Vec::new();
            for _ in 0..2 {
                let err = c
                    .checkout
                    .clone()
                    .place_order(with_deadline(req.clone(), Duration::from_secs(20)))
                    .await
                    .expect_err("a compensated checkout answers its rejection");
                assert_eq!(err.code(), Code::FailedPrecondition, "{point}: {err:?}");
                assert_eq!(reason_of(&err), Some(Reason::CouponExhausted), "{point}");
                seen.push((err.code(), err.message().to_owned()));
            }
            assert_eq!(seen[0], seen[1], "{point}: retries answered differently");
            // Nothing held: stock, points and the coupon are as before.
            assert!(
                orders_of(&c, &who).await.is_empty(),
                "{point}: an order exists"
            );
            let b = balance(&c, &who).await;
            assert_eq!(
                (b.points, b.deducted, b.refunded),
                (GRANT, REDEEM, REDEEM),
                "{point}: {b:?}"
            );
            let p = product(&c, sku).await;
            assert_eq!(
                (p.available, p.reserved, p.sold),
                (
                    stock_before.available,
                    stock_before.reserved,
                    stock_before.sold
                ),
                "{point}: {p:?}"
            );
            assert_eq!(coupon(&c, code).await.times_used, 1, "{point}");
            tally.check(&c, &u, &point).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("compensation {point}: ok at {:?}", started.elapsed());
        }
    }
    eprintln!(
        "orchestrator crash matrix: 24 crashes in {:?}",
        started.elapsed()
    );
    tally.report();
}
