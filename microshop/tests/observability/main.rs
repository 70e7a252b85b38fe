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
//!
//! A module per signal (`traces`, `metrics`, `logs`); the collector and
//! the processes they share are here.

#[path = "../cluster/mod.rs"]
mod cluster;
mod logs;
mod metrics;
mod traces;

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
