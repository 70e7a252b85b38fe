//! Traces: one PlaceOrder is one trace across four processes, retries are
//! events and client spans of their step, a resumed saga continues its
//! trace.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_place_order_is_one_trace_across_four_processes() {
    let (collector, otlp) = Collector::start().await;
    let cluster = start(Some(otlp), None).await;
    seed(&cluster, "TRACE-1", 5, "alice").await;

    let response = checkout(&cluster)
        .place_order(with_deadline(order("trace-ok", "alice", "TRACE-1", 1, 100)))
        .await
        .expect("PlaceOrder");
    let traceresponse = response
        .metadata()
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("the answer names its trace");
    let placed = response.into_inner();
    let saga_id = placed.saga_id.clone();

    let spans = collector
        .wait_for("the checkout's spans from all four processes", |spans| {
            let Some(root) = spans.iter().find(|r| r.span.name == PLACE_ORDER) else {
                return false;
            };
            let has = |name: &str, kind: SpanKind| {
                spans.iter().any(|r| {
                    r.span.trace_id == root.span.trace_id
                        && r.span.name == name
                        && r.span.kind == kind as i32
                })
            };
            has("saga place-order", SpanKind::Internal)
                && [QUOTE_ORDER, RESERVE_STOCK, DEDUCT_POINTS, CREATE_ORDER]
                    .iter()
                    .all(|m| has(m, SpanKind::Client) && has(m, SpanKind::Server))
        })
        .await;

    // One trace: every span of this saga, in every process, carries its id.
    let root = spans
        .iter()
        .find(|r| r.span.name == PLACE_ORDER)
        .expect("the PlaceOrder server span");
    let trace = root.span.trace_id.clone();
    for r in spans
        .iter()
        .filter(|r| attr(&r.span, "saga.id").as_deref() == Some(&saga_id))
    {
        assert_eq!(
            hex(&r.span.trace_id),
            hex(&trace),
            "{:?} of {}",
            r.span.name,
            r.service
        );
    }
    let services: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|r| r.span.trace_id == trace)
        .map(|r| r.service.as_str())
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "microshop-inventory",
            "microshop-loyalty",
            "microshop-orchestrator",
            "microshop-order"
        ],
        "the trace spans the four processes"
    );

    // The checkout's server span: a root (the test sent no traceparent),
    // named back to the caller.
    assert_eq!(
        traceresponse,
        format!("00-{}-{}-01", hex(&trace), hex(&root.span.span_id)),
        "traceresponse names the PlaceOrder span"
    );
    kind(root, SpanKind::Server);
    assert!(
        root.span.parent_span_id.is_empty(),
        "PlaceOrder is the root"
    );
    assert_eq!(root.service, "microshop-orchestrator");
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "microshop.orchestrator.v1.CheckoutService"),
        ("rpc.method", "PlaceOrder"),
        ("rpc.grpc.status_code", "0"),
        ("server.address", "127.0.0.1"),
        ("saga.id", saga_id.as_str()),
        ("order.id", placed.order_id.as_str()),
    ] {
        assert_eq!(
            attr(&root.span, key).as_deref(),
            Some(value),
            "{key} of PlaceOrder"
        );
    }

    // The saga under it, each step under the saga, each call under its step,
    // each participant's server span under the call.
    let saga = one(&spans, &trace, "saga place-order");
    child_of(saga, root);
    assert_eq!(
        attr(&saga.span, "saga.id").as_deref(),
        Some(saga_id.as_str())
    );
    assert_eq!(
        attr(&saga.span, "order.id").as_deref(),
        Some(placed.order_id.as_str())
    );
    assert_eq!(attr(&saga.span, "saga.state").as_deref(), Some("Completed"));
    for (step, method, participant) in [
        ("quote", QUOTE_ORDER, "microshop-order"),
        ("reserve-stock", RESERVE_STOCK, "microshop-inventory"),
        ("deduct-points", DEDUCT_POINTS, "microshop-loyalty"),
        ("create-order", CREATE_ORDER, "microshop-order"),
    ] {
        let step_span = one(&spans, &trace, &format!("action {step}"));
        child_of(step_span, saga);
        kind(step_span, SpanKind::Internal);
        assert_eq!(attr(&step_span.span, "saga.step").as_deref(), Some(step));
        assert_eq!(
            attr(&step_span.span, "saga.id").as_deref(),
            Some(saga_id.as_str())
        );
        assert_eq!(
            attr(&step_span.span, "saga.step.outcome").as_deref(),
            Some("succeeded")
        );

        let calls: Vec<&Received> = spans
            .iter()
            .filter(|r| r.span.trace_id == trace && r.span.name == method)
            .collect();
        let client = calls
            .iter()
            .find(|r| r.span.kind == SpanKind::Client as i32)
            .unwrap_or_else(|| panic!("a client span {method}: {calls:#?}"));
        let server = calls
            .iter()
            .find(|r| r.span.kind == SpanKind::Server as i32)
            .unwrap_or_else(|| panic!("a server span {method}: {calls:#?}"));
        child_of(client, step_span);
        child_of(server, client);
        assert_eq!(client.service, "microshop-orchestrator");
        assert_eq!(server.service, participant);
        let (service, name) = method.split_once('/').expect("service/method");
        for r in [client, server] {
            assert_eq!(attr(&r.span, "rpc.system").as_deref(), Some("grpc"));
            assert_eq!(attr(&r.span, "rpc.service").as_deref(), Some(service));
            assert_eq!(attr(&r.span, "rpc.method").as_deref(), Some(name));
            assert_eq!(attr(&r.span, "rpc.grpc.status_code").as_deref(), Some("0"));
            assert_eq!(
                attr(&r.span, "server.address").as_deref(),
                Some("127.0.0.1")
            );
        }
        if step != "quote" {
            assert_eq!(
                attr(&server.span, "saga.id").as_deref(),
                Some(saga_id.as_str()),
                "{method} server span names the saga"
            );
        }
    }

    // A rejected checkout: the compensation is a span of its own trace.
    let status = checkout(&cluster)
        .place_order(with_deadline(order("trace-out", "alice", "TRACE-1", 99, 0)))
        .await
        .expect_err("out of stock");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.metadata().get("traceresponse").is_some(),
        "a rejection names its trace too"
    );
    let spans = collector
        .wait_for("the compensation's spans", |spans| {
            spans
                .iter()
                .any(|r| r.span.name == RELEASE_STOCK && r.span.kind == SpanKind::Server as i32)
                && spans
                    .iter()
                    .any(|r| r.span.name == "compensation release-stock")
                && spans.iter().filter(|r| r.span.name == PLACE_ORDER).count() == 2
        })
        .await;
    let comp = spans
        .iter()
        .find(|r| r.span.name == "compensation release-stock")
        .expect("compensation span");
    let trace = comp.span.trace_id.clone();
    let root = one(&spans, &trace, PLACE_ORDER);
    assert_eq!(
        attr(&root.span, "rpc.grpc.status_code").as_deref(),
        Some("9")
    );
    let saga = one(&spans, &trace, "saga place-order");
    child_of(saga, root);
    child_of(comp, saga);
    assert_eq!(
        attr(&saga.span, "saga.state").as_deref(),
        Some("Compensated")
    );
    let rejected = one(&spans, &trace, "action reserve-stock");
    assert_eq!(
        attr(&rejected.span, "saga.step.outcome").as_deref(),
        Some("rejected")
    );
    let release = spans
        .iter()
        .find(|r| {
            r.span.trace_id == trace
                && r.span.name == RELEASE_STOCK
                && r.span.kind == SpanKind::Server as i32
        })
        .expect("release server span");
    assert_eq!(release.service, "microshop-inventory");
    let release_client = spans
        .iter()
        .find(|r| r.span.span_id == release.span.parent_span_id)
        .expect("release client span");
    child_of(release_client, comp);

    // JSON logs: a line inside a participant's request carries the trace
    // id and the saga id.
    let first_trace = hex(&one(&spans, &root_trace(&spans, &saga_id), PLACE_ORDER)
        .span
        .trace_id);
    let is_served =
        |v: &serde_json::Value| v["message"] == "served" && v["saga_id"] == saga_id.as_str();
    let inventory = json_lines(&cluster, Svc::Inventory, is_served).await;
    for v in inventory.iter().filter(|v| is_served(v)) {
        assert_eq!(v["trace_id"], first_trace.as_str(), "{v}");
        assert_eq!(v["span"], "grpc.server", "{v}");
    }
    json_lines(&cluster, Svc::Orchestrator, |v| {
        v["saga_id"] == saga_id.as_str() && v["trace_id"] == first_trace.as_str()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_events_and_client_spans_of_their_step() {
    let (collector, otlp) = Collector::start().await;
    // Fault decisions follow the seed and the call count: with this seed
    // the first ReserveStock is refused UNAVAILABLE before its handler, so
    // the step is retried.
    let cluster = start(Some(otlp), Some((Svc::Inventory, &["--faults", FAULTS]))).await;
    seed(&cluster, "TRACE-3", 5, "dave").await;
    let placed = checkout(&cluster)
        .place_order(with_deadline(order("trace-retry", "dave", "TRACE-3", 1, 0)))
        .await
        .expect("PlaceOrder succeeds after retries")
        .into_inner();
    let spans = collector
        .wait_for("the retried checkout", |spans| {
            spans.iter().any(|r| {
                r.span.name == "saga place-order"
                    && attr(&r.span, "saga.id").as_deref() == Some(placed.saga_id.as_str())
            })
        })
        .await;
    let trace = root_trace(&spans, &placed.saga_id);
    let step = one(&spans, &trace, "action reserve-stock");
    let attempts: usize = attr(&step.span, "saga.step.attempts")
        .expect("attempts")
        .parse()
        .expect("a number");
    assert!(attempts >= 2, "the step was retried: {attempts} attempts");
    let retries: Vec<_> = step
        .span
        .events
        .iter()
        .filter(|e| e.name == "transient failure")
        .collect();
    assert_eq!(
        retries.len(),
        attempts - 1,
        "one event per retry: {retries:#?}"
    );
    let calls: Vec<&Received> = spans
        .iter()
        .filter(|r| {
            r.span.trace_id == trace
                && r.span.name == RESERVE_STOCK
                && r.span.kind == SpanKind::Client as i32
        })
        .collect();
    assert_eq!(calls.len(), attempts, "one client span per attempt");
    // inventory exports on its own schedule: wait for its spans too.
    let spans = collector
        .wait_for("inventory's span of every attempt", |spans| {
            spans
                .iter()
                .filter(|r| {
                    r.span.trace_id == trace
                        && r.span.name == RESERVE_STOCK
                        && r.span.kind == SpanKind::Server as i32
                })
                .count()
                >= attempts
        })
        .await;
    for call in &calls {
        child_of(call, step);
    }
    let codes: Vec<String> = calls
        .iter()
        .filter_map(|c| attr(&c.span, "rpc.grpc.status_code"))
        .collect();
    assert!(
        codes.contains(&"14".to_owned()),
        "an UNAVAILABLE attempt: {codes:?}"
    );
    assert!(
        codes.contains(&"0".to_owned()),
        "a successful attempt: {codes:?}"
    );
    let served = spans
        .iter()
        .filter(|r| {
            r.span.trace_id == trace
                && r.span.name == RESERVE_STOCK
                && r.span.kind == SpanKind::Server as i32
        })
        .count();
    assert_eq!(
        served, attempts,
        "inventory traced every attempt, refused or not"
    );
}

/// Inventory's fault injection for the retry test.
const FAULTS: &str = "seed=3,unavailable=0.5,only=ReserveStock";

/// The trace of the saga `saga_id` (from any span naming it).
fn root_trace(spans: &[Received], saga_id: &str) -> Vec<u8> {
    spans
        .iter()
        .find(|r| attr(&r.span, "saga.id").as_deref() == Some(saga_id))
        .map(|r| r.span.trace_id.clone())
        .expect("a span of the saga")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_resumed_after_a_crash_continues_its_trace() {
    let (collector, otlp) = Collector::start().await;
    let mut cluster = start(Some(otlp), None).await;
    seed(&cluster, "TRACE-2", 5, "bob").await;

    // The orchestrator stops for good after reserve-stock's result is saved.
    cluster.kill(Svc::Orchestrator);
    cluster
        .start_svc(Svc::Orchestrator, &["--failpoint", "result:reserve-stock"])
        .await;
    let checkout = checkout(&cluster);
    let call = tokio::spawn(async move {
        let mut checkout = checkout;
        checkout
            .place_order(with_deadline(order("trace-crash", "bob", "TRACE-2", 1, 0)))
            .await
    });
    // Held at the failpoint (so the kill below lands exactly there) ...
    cluster
        .wait_line(
            Svc::Orchestrator,
            "FAILPOINT result:reserve-stock reached",
            SEEN_WITHIN,
        )
        .await;
    // ... after the quote step, whose span ended before: it names the trace
    // (exported while the process is held, before the kill).
    let spans = collector
        .wait_for("the quote step before the crash", |spans| {
            spans.iter().any(|r| r.span.name == "action quote")
        })
        .await;
    let quote = spans
        .iter()
        .find(|r| r.span.name == "action quote")
        .expect("quote span");
    let trace = quote.span.trace_id.clone();
    let saga_id = attr(&quote.span, "saga.id").expect("saga.id of the step");

    cluster.kill(Svc::Orchestrator);
    // The call was held with its saga: it loses its connection, no answer.
    match call.await.expect("the call task") {
        Ok(answer) => panic!("the call answered although its saga was held: {answer:?}"),
        Err(status) => assert!(
            microshop_runtime::errors::reason_of(&status).is_none()
                && status.code() != Code::DeadlineExceeded,
            "the call ended otherwise than by losing its connection: {status:?}"
        ),
    }
    cluster.start_svc(Svc::Orchestrator, &[]).await;

    // Recovery finishes the saga; its later steps join the original trace.
    let mut admin = SagaAdminServiceClient::new(cluster.channel(Svc::Orchestrator));
    let deadline = Instant::now() + SEEN_WITHIN;
    loop {
        let saga = admin
            .get_saga(orch::GetSagaRequest {
                saga_id: saga_id.clone(),
            })
            .await
            .map(|r| r.into_inner().saga.unwrap_or_default());
        if saga
            .as_ref()
            .is_ok_and(|s| s.state == orch::SagaState::Completed as i32)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "saga not completed after recovery: {saga:?}"
        );
        sleep(POLL).await;
    }
    let spans = collector
        .wait_for("create-order after recovery", |spans| {
            spans.iter().any(|r| {
                r.span.name == "action create-order"
                    && attr(&r.span, "saga.id").as_deref() == Some(saga_id.as_str())
            }) && spans
                .iter()
                .any(|r| r.span.name == CREATE_ORDER && r.span.kind == SpanKind::Server as i32)
                && spans.iter().any(|r| {
                    r.span.name == "saga place-order"
                        && attr(&r.span, "saga.id").as_deref() == Some(saga_id.as_str())
                })
        })
        .await;
    let resumed = spans
        .iter()
        .find(|r| {
            r.span.name == "action create-order"
                && attr(&r.span, "saga.id").as_deref() == Some(saga_id.as_str())
        })
        .expect("resumed step");
    assert_eq!(
        hex(&resumed.span.trace_id),
        hex(&trace),
        "the resumed step joins the trace"
    );
    let server = spans
        .iter()
        .find(|r| r.span.name == CREATE_ORDER && r.span.kind == SpanKind::Server as i32)
        .expect("order-svc's span");
    assert_eq!(
        hex(&server.span.trace_id),
        hex(&trace),
        "so does order-svc's span"
    );
    // The resumed saga span hangs under the stored parent (the first
    // process's PlaceOrder server span, never exported: SIGKILL), not at a
    // new root.
    let resumed_saga = spans
        .iter()
        .find(|r| r.span.trace_id == trace && r.span.name == "saga place-order")
        .expect("the resumed saga span");
    assert!(
        !resumed_saga.span.parent_span_id.is_empty(),
        "the resumed saga span has the stored parent"
    );
    child_of(resumed, resumed_saga);
}
