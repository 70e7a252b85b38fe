//! Observability over the real binary: the four services run as separate
//! `microshop serve <service>` processes, exporting traces over OTLP/gRPC to
//! a collector this test runs (a tonic server implementing the OTLP
//! `TraceService`), with JSON logs, and serving Prometheus metrics.
//!
//! - one PlaceOrder is one trace across the four processes, with the saga,
//!   each step, each client call and each participant's server span in
//!   their parent/child places and the RPC semantic-convention attributes;
//! - a compensation is a span of the same trace as its checkout;
//! - a saga the orchestrator resumes after a SIGKILL continues its trace;
//! - JSON log lines inside a request carry its `trace_id` and `saga_id`;
//! - `/metrics` counters move as orders succeed and are rejected.
//!
//! The processes are the shared harness's ([`cluster::Cluster`]). Export
//! batches every 50 ms (`OTEL_BSP_SCHEDULE_DELAY`); nothing waits on a
//! sleep for state: every wait is bounded polling (of health, of the spans
//! received, of `/metrics`) or a bounded wait for a log line.

mod cluster;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use cluster::{Cluster, Svc, shop::place_units};
use microshop_proto::{
    inventory::v1::{self as inv, inventory_service_client::InventoryServiceClient},
    loyalty::v1::{self as loy, loyalty_service_client::LoyaltyServiceClient},
    orchestrator::v1::{
        self as orch, checkout_service_client::CheckoutServiceClient,
        saga_admin_service_client::SagaAdminServiceClient,
    },
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::{Instant, sleep},
};
use tonic::{Code, transport::Channel};

/// How long spans or metrics may take to show up.
const SEEN_WITHIN: Duration = Duration::from_secs(30);
/// Interval of every bounded poll.
const POLL: Duration = Duration::from_millis(25);

const PLACE_ORDER: &str = "microshop.orchestrator.v1.CheckoutService/PlaceOrder";
const RESERVE_STOCK: &str = "microshop.inventory.v1.InventoryService/ReserveStock";
const RELEASE_STOCK: &str = "microshop.inventory.v1.InventoryService/ReleaseStock";
const DEDUCT_POINTS: &str = "microshop.loyalty.v1.LoyaltyService/DeductPoints";
const QUOTE_ORDER: &str = "microshop.order.v1.OrderService/QuoteOrder";
const CREATE_ORDER: &str = "microshop.order.v1.OrderService/CreateOrder";

// ---------------------------------------------------------------------------
// The in-test OTLP collector
// ---------------------------------------------------------------------------

/// A received span with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a loopback port for the rest of the test.
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("the collector serves");
        });
        (collector, addr)
    }

    fn snapshot(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `done` holds for the spans received; returns them.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + SEEN_WITHIN;
        loop {
            let spans = self.snapshot();
            if done(&spans) {
                return spans;
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = spans
                    .iter()
                    .map(|r| format!("{} {} {}", r.service, r.span.name, hex(&r.span.trace_id)))
                    .collect();
                panic!("{what}: not received within {SEEN_WITHIN:?}; got {names:#?}");
            }
            sleep(POLL).await;
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span named `name` with `saga.id` (its own or, for client spans,
/// none) in `trace`; panics unless exactly one.
fn one<'a>(spans: &'a [Received], trace: &[u8], name: &str) -> &'a Received {
    let found: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.trace_id == trace && r.span.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one span {name:?} in trace {}: {found:#?}",
        hex(trace)
    );
    found[0]
}

fn child_of(child: &Received, parent: &Received) {
    assert_eq!(
        hex(&child.span.parent_span_id),
        hex(&parent.span.span_id),
        "{:?} ({}) is a child of {:?} ({})",
        child.span.name,
        child.service,
        parent.span.name,
        parent.service
    );
}

fn kind(r: &Received, kind: SpanKind) {
    assert_eq!(r.span.kind, kind as i32, "kind of {:?}", r.span.name);
}

// ---------------------------------------------------------------------------
// Four processes
// ---------------------------------------------------------------------------

/// The mesh as four `microshop serve` processes with JSON logs and a
/// `/metrics` port each, exporting traces to `otlp` if given; `extra`
/// arguments for one service.
async fn start(otlp: Option<SocketAddr>, extra: Option<(Svc, &[&str])>) -> Cluster {
    let mut builder = Cluster::builder()
        .metrics()
        .args_all(["--log-format", "json"])
        .orchestrator(["--recovery-interval-ms", "200"])
        .log_filter("info,microshop_runtime::observe=debug,orchestrator=debug");
    if let Some(otlp) = otlp {
        builder = builder
            .env_all("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
            .env_all("OTEL_BSP_SCHEDULE_DELAY", "50");
    }
    if let Some((svc, args)) = extra {
        builder = builder.args(svc, args);
    }
    builder.start().await
}

fn checkout(cluster: &Cluster) -> CheckoutServiceClient<Channel> {
    CheckoutServiceClient::new(cluster.channel(Svc::Orchestrator))
}

/// A product of `stock` units at 1,000,000 and a member with 500 points.
async fn seed(cluster: &Cluster, sku: &str, stock: i64, customer: &str) {
    InventoryServiceClient::new(cluster.channel(Svc::Inventory))
        .put_product(inv::PutProductRequest {
            sku: sku.into(),
            name: format!("product {sku}"),
            unit_price: 1_000_000,
            stock,
        })
        .await
        .expect("PutProduct");
    LoyaltyServiceClient::new(cluster.channel(Svc::Loyalty))
        .grant_points(loy::GrantPointsRequest {
            customer_id: customer.into(),
            points: 500,
        })
        .await
        .expect("GrantPoints");
}

/// The JSON lines `svc` wrote, once one satisfies `want` (the reader
/// thread may still be behind the process).
async fn json_lines(
    cluster: &Cluster,
    svc: Svc,
    want: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let parse = |lines: &[String]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let lines = cluster
        .wait_lines(svc, "such a log line", SEEN_WITHIN, |lines| {
            parse(lines).iter().any(&want)
        })
        .await;
    parse(&lines)
}

/// A checkout of `quantity` units, no coupon.
fn order(
    key: &str,
    customer: &str,
    sku: &str,
    quantity: i64,
    points: i64,
) -> orch::PlaceOrderRequest {
    place_units(key, customer, sku, quantity, "", points)
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(20));
    request
}

// ---------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// `GET /metrics` at `addr`, the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` (name and labels exactly as exposed),
/// 0 when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Waits until every `(service, series, at least)` holds on `/metrics`.
async fn wait_metrics(cluster: &Cluster, expect: &[(Svc, &str, f64)]) {
    let deadline = Instant::now() + SEEN_WITHIN;
    loop {
        let mut missing = Vec::new();
        for (svc, series, want) in expect {
            let body = scrape(cluster.metrics_addr(*svc)).await;
            let got = sample(&body, series);
            if got < *want {
                missing.push(format!("{svc:?} {series} = {got}, want {want}"));
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not move: {missing:#?}"
        );
        sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_orders_succeed_and_fail() {
    let cluster = start(None, None).await;
    seed(&cluster, "METRIC-1", 3, "carol").await;

    let o = Svc::Orchestrator;
    let i = Svc::Inventory;
    let started = r#"microshop_sagas_started_total{saga_type="place-order"}"#;
    let completed = r#"microshop_sagas_completed_total{saga_type="place-order"}"#;
    let compensated = r#"microshop_sagas_compensated_total{saga_type="place-order"}"#;
    let place_ok = r#"microshop_rpc_server_requests_total{service="microshop.orchestrator.v1.CheckoutService",method="PlaceOrder",code="OK"}"#;
    let place_rejected = r#"microshop_rpc_server_requests_total{service="microshop.orchestrator.v1.CheckoutService",method="PlaceOrder",code="FAILED_PRECONDITION"}"#;
    let reserve_ok = r#"microshop_rpc_server_requests_total{service="microshop.inventory.v1.InventoryService",method="ReserveStock",code="OK"}"#;
    let reserve_count = r#"microshop_rpc_server_duration_seconds_count{service="microshop.inventory.v1.InventoryService",method="ReserveStock",code="OK"}"#;
    let stock_outs = "microshop_stock_out_rejections_total";
    let releases =
        r#"microshop_saga_compensations_total{saga_type="place-order",step="release-stock"}"#;
    let step_count = r#"microshop_saga_step_duration_seconds_count{saga_type="place-order",step="reserve-stock"}"#;

    // Nothing yet: a fresh process has no saga series, but it exposes the
    // dead-letter gauge and ends as OpenMetrics does.
    let before = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(sample(&before, started), 0.0, "{before}");
    assert!(before.contains("microshop_sagas_dead_letter 0"), "{before}");
    assert!(before.ends_with("# EOF\n"));

    checkout(&cluster)
        .place_order(with_deadline(order(
            "metrics-ok",
            "carol",
            "METRIC-1",
            1,
            0,
        )))
        .await
        .expect("PlaceOrder");
    wait_metrics(
        &cluster,
        &[
            (o, started, 1.0),
            (o, completed, 1.0),
            (o, place_ok, 1.0),
            (o, step_count, 1.0),
            (i, reserve_ok, 1.0),
            (i, reserve_count, 1.0),
        ],
    )
    .await;
    let body = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(sample(&body, compensated), 0.0);

    let status = checkout(&cluster)
        .place_order(with_deadline(order(
            "metrics-out",
            "carol",
            "METRIC-1",
            50,
            0,
        )))
        .await
        .expect_err("out of stock");
    assert_eq!(status.code(), Code::FailedPrecondition);
    wait_metrics(
        &cluster,
        &[
            (o, started, 2.0),
            (o, compensated, 1.0),
            (o, place_rejected, 1.0),
            (o, releases, 1.0),
            (i, stock_outs, 1.0),
        ],
    )
    .await;
    let body = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(
        sample(&body, completed),
        1.0,
        "the rejection completed nothing"
    );
    assert_eq!(sample(&body, place_ok), 1.0);

    // A retry of the successful order replays it: no new saga.
    checkout(&cluster)
        .place_order(with_deadline(order(
            "metrics-ok",
            "carol",
            "METRIC-1",
            1,
            0,
        )))
        .await
        .expect("replayed PlaceOrder");
    wait_metrics(&cluster, &[(o, place_ok, 2.0)]).await;
    let body = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(sample(&body, started), 2.0, "a replay starts no saga");

    // Anything but GET /metrics is refused.
    let mut stream = tokio::net::TcpStream::connect(cluster.metrics_addr(o))
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 404"));
}

// ---------------------------------------------------------------------------
// Logs without trace export
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_share_a_trace_id_across_services_without_export() {
    let cluster = start(None, None).await;
    seed(&cluster, "LOGS-1", 5, "erin").await;
    let placed = checkout(&cluster)
        .place_order(with_deadline(order("logs-1", "erin", "LOGS-1", 1, 100)))
        .await
        .expect("PlaceOrder")
        .into_inner();
    let saga_id = placed.saga_id.as_str();
    let is_served = |v: &serde_json::Value| v["message"] == "served" && v["saga_id"] == saga_id;

    // The participants' request lines of this saga carry one trace id, a
    // well-formed one, although nothing is exported...
    let mut traces = std::collections::BTreeSet::new();
    for svc in [Svc::Inventory, Svc::Loyalty, Svc::Order] {
        let lines = json_lines(&cluster, svc, is_served).await;
        for v in lines.iter().filter(|v| is_served(v)) {
            let trace = v["trace_id"].as_str().unwrap_or_default().to_owned();
            assert!(
                trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
                "{svc:?}: no trace id: {v}"
            );
            traces.insert(trace);
        }
    }
    assert_eq!(traces.len(), 1, "one trace id for one order: {traces:?}");
    let trace = traces.into_iter().next().expect("a trace id");
    // ...and it is the orchestrator's for the saga (the checkout call and
    // the saga's steps).
    json_lines(&cluster, Svc::Orchestrator, |v| {
        v["saga_id"] == saga_id && v["trace_id"] == trace.as_str()
    })
    .await;
}
