//! Prometheus metrics of the mesh: one registry per process (so `microshop
//! up` exposes its four services on one endpoint), served as OpenMetrics
//! text on `GET /metrics`.
//!
//! Every name starts with `microshop_`. Labels are `&'static str`, so
//! counting a request hashes a few pointers' worth of text and allocates
//! nothing, and every label takes a bounded set of values: an RPC's service
//! and method are a method its server registers or `_OTHER`
//! ([`crate::methods`]), codes the 17 gRPC codes, saga types and steps the
//! names in the saga definitions. No label carries a customer id, SKU,
//! order or saga id, so a caller cannot grow the series (or the memory
//! behind them) without bound.
//!
//! The endpoint is a minimal HTTP/1.1 responder on a tokio socket rather
//! than a web framework: it answers one GET and closes, which is all a
//! Prometheus scrape needs, and keeps an HTTP stack out of the build.

use std::{future::Future, sync::OnceLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Longest scrape request read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A scrape that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Labels of one RPC served.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// Fully-qualified gRPC service, e.g. `microshop.inventory.v1.InventoryService`,
    /// or `_OTHER` for a method the server does not register.
    pub service: &'static str,
    /// Method, e.g. `ReserveStock`, or `_OTHER`.
    pub method: &'static str,
    /// gRPC status code name, e.g. `OK`, `FAILED_PRECONDITION`.
    pub code: &'static str,
}

/// Labels of a saga count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SagaLabels {
    /// `place-order`, `confirm-payment` or `cancel-order`.
    pub saga_type: &'static str,
}

/// Labels of a saga step (an action or a compensation).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The saga type.
    pub saga_type: &'static str,
    /// The step's operation, e.g. `reserve-stock` or `release-stock`.
    pub step: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    sagas_started: Family<SagaLabels, Counter>,
    sagas_completed: Family<SagaLabels, Counter>,
    sagas_compensated: Family<SagaLabels, Counter>,
    sagas_failed: Family<SagaLabels, Counter>,
    step_duration: HistogramFamily<StepLabels>,
    step_retries: Family<StepLabels, Counter>,
    compensations: Family<StepLabels, Counter>,
    failed_sagas: Gauge,
    waiting_sagas: Gauge,
    sagas_purged: Counter,
    barrier_entries_purged: Counter,
    stock_out_rejections: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn rpc_histogram() -> Histogram {
    // 0.25 ms .. ~4 s: loopback calls take well under a millisecond, a
    // checkout tens of milliseconds, a saga waiting on retries seconds.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The process's metrics (created on first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let rpc_requests = Family::default();
        registry.register(
            "microshop_rpc_server_requests",
            "gRPC calls served, by service, method and status code",
            rpc_requests.clone(),
        );
        let rpc_duration: HistogramFamily<RpcLabels> = Family::new_with_constructor(rpc_histogram);
        registry.register(
            "microshop_rpc_server_duration_seconds",
            "Time to serve a gRPC call (until its response headers), by service, method and status code",
            rpc_duration.clone(),
        );
        let sagas_started = Family::default();
        registry.register(
            "microshop_sagas_started",
            "Sagas started, by type",
            sagas_started.clone(),
        );
        let sagas_completed = Family::default();
        registry.register(
            "microshop_sagas_completed",
            "Sagas ended COMPLETED, by type",
            sagas_completed.clone(),
        );
        let sagas_compensated = Family::default();
        registry.register(
            "microshop_sagas_compensated",
            "Sagas ended COMPENSATED (a step was rejected and every effect undone), by type",
            sagas_compensated.clone(),
        );
        let sagas_failed = Family::default();
        registry.register(
            "microshop_sagas_failed",
            "Sagas that went FAILED (the dead letter: automation cannot finish them; an operator must retry or abort), by type",
            sagas_failed.clone(),
        );
        let step_duration: HistogramFamily<StepLabels> =
            Family::new_with_constructor(rpc_histogram);
        registry.register(
            "microshop_saga_step_duration_seconds",
            "Time of one saga step or compensation across its attempts, by saga type and step",
            step_duration.clone(),
        );
        let step_retries = Family::default();
        registry.register(
            "microshop_saga_step_retries",
            "Attempts of saga steps and compensations retried after a transient failure",
            step_retries.clone(),
        );
        let compensations = Family::default();
        registry.register(
            "microshop_saga_compensations",
            "Compensations started, by saga type and compensating operation",
            compensations.clone(),
        );
        let failed_sagas = Gauge::default();
        registry.register(
            "microshop_sagas_dead_letter",
            "Sagas now FAILED in the saga log (dead letters waiting for RetrySaga or AbortSaga)",
            failed_sagas.clone(),
        );
        let waiting_sagas = Gauge::default();
        registry.register(
            "microshop_sagas_waiting",
            "Sagas this orchestrator holds waiting for an unreachable participant (re-driven by themselves once it is back)",
            waiting_sagas.clone(),
        );
        let sagas_purged = Counter::default();
        registry.register(
            "microshop_sagas_purged",
            "Finished sagas removed from the saga log after the retention period",
            sagas_purged.clone(),
        );
        let barrier_entries_purged = Counter::default();
        registry.register(
            "microshop_barrier_entries_purged",
            "Participant barrier entries removed after the retention period",
            barrier_entries_purged.clone(),
        );
        let stock_out_rejections = Counter::default();
        registry.register(
            "microshop_stock_out_rejections",
            "ReserveStock calls refused with OUT_OF_STOCK",
            stock_out_rejections.clone(),
        );
        Self {
            registry,
            rpc_requests,
            rpc_duration,
            sagas_started,
            sagas_completed,
            sagas_compensated,
            sagas_failed,
            step_duration,
            step_retries,
            compensations,
            failed_sagas,
            waiting_sagas,
            sagas_purged,
            barrier_entries_purged,
            stock_out_rejections,
        }
    }

    /// Counts one served call and its duration.
    pub fn observe_rpc(
        &self,
        service: &'static str,
        method: &'static str,
        code: i32,
        took: Duration,
    ) {
        let labels = RpcLabels {
            service,
            method,
            code: code_name(code),
        };
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// A saga began.
    pub fn saga_started(&self, saga_type: &'static str) {
        self.sagas_started
            .get_or_create(&SagaLabels { saga_type })
            .inc();
    }

    /// A saga ended COMPLETED.
    pub fn saga_completed(&self, saga_type: &'static str) {
        self.sagas_completed
            .get_or_create(&SagaLabels { saga_type })
            .inc();
    }

    /// A saga ended COMPENSATED.
    pub fn saga_compensated(&self, saga_type: &'static str) {
        self.sagas_compensated
            .get_or_create(&SagaLabels { saga_type })
            .inc();
    }

    /// A saga went FAILED.
    pub fn saga_failed(&self, saga_type: &'static str) {
        self.sagas_failed
            .get_or_create(&SagaLabels { saga_type })
            .inc();
    }

    /// A step or compensation ended (either way) after `took`.
    pub fn step_finished(&self, saga_type: &'static str, step: &'static str, took: Duration) {
        self.step_duration
            .get_or_create(&StepLabels { saga_type, step })
            .observe(took.as_secs_f64());
    }

    /// A step or compensation is retried after a transient failure.
    pub fn step_retried(&self, saga_type: &'static str, step: &'static str) {
        self.step_retries
            .get_or_create(&StepLabels { saga_type, step })
            .inc();
    }

    /// A compensation started.
    pub fn compensation_started(&self, saga_type: &'static str, step: &'static str) {
        self.compensations
            .get_or_create(&StepLabels { saga_type, step })
            .inc();
    }

    /// How many sagas the log holds FAILED now.
    pub fn set_dead_letters(&self, count: i64) {
        self.failed_sagas.set(count);
    }

    /// A saga went FAILED (+1) or left FAILED (-1): the gauge follows at
    /// once; the periodic count corrects what other orchestrators did.
    pub fn dead_letters_changed(&self, delta: i64) {
        let now = self.failed_sagas.inc_by(delta) + delta;
        if now < 0 {
            self.failed_sagas.set(0);
        }
    }

    /// How many sagas wait for a participant in this process.
    pub fn set_waiting(&self, count: i64) {
        self.waiting_sagas.set(count);
    }

    /// Finished sagas purged.
    pub fn sagas_purged(&self, count: u64) {
        self.sagas_purged.inc_by(count);
    }

    /// Barrier entries purged.
    pub fn barrier_entries_purged(&self, count: u64) {
        self.barrier_entries_purged.inc_by(count);
    }

    /// ReserveStock refused for want of stock.
    pub fn stock_out(&self) {
        self.stock_out_rejections.inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The canonical name of a gRPC status code number.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off a little
                    // rather than spin on accept.
                    tracing::warn!(%err, "metrics endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Answers one HTTP/1.x request and closes the connection.
async fn answer(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0_u8; 1024];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_REQUEST_BYTES {
                return true;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if !matches!(head, Ok(true)) {
        return;
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let response = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let body = metrics().encode();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        (Some(b"GET"), _) => not_found(),
        _ => "HTTP/1.1 405 Method Not Allowed\r\nallow: GET\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn not_found() -> String {
    let body = "not found: metrics are at /metrics\n";
    format!(
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_has_the_prefixed_names() {
        let m = metrics();
        m.observe_rpc("s.S", "M", 9, Duration::from_millis(3));
        m.saga_started("place-order");
        let text = m.encode();
        assert!(
            text.contains(
                r#"microshop_rpc_server_requests_total{service="s.S",method="M",code="FAILED_PRECONDITION"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"microshop_sagas_started_total{saga_type="place-order"}"#));
        assert!(text.ends_with("# EOF\n"));
    }
}
