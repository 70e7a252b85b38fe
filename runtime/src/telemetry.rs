//! Log and trace set-up: human-readable logs by default, one JSON object
//! per line with `--log-format json` (each line inside a request or saga
//! carrying `trace_id` and `saga_id`), filtered by `RUST_LOG` (default
//! `info`), on stderr so a command's own output (the demo's report) stays
//! clean.
//!
//! Traces go to an OpenTelemetry collector over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables
//! tune the exporter and batching). When it is not set no OpenTelemetry
//! layer is installed and [`tracing_enabled`] is false, so no span is
//! exported and no OpenTelemetry context is built. Logs still correlate
//! then: each call gets a trace id (its caller's `traceparent`, or a new
//! one), kept in a task-local, recorded on the call's span and passed on as
//! an unsampled `traceparent` to the participants and into the saga record
//! (see [`LogTrace`]), so JSON lines of one order share one `trace_id`
//! across the four services. That is a header parse or a random id per
//! call, nothing more.

use std::{
    collections::HashMap,
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tracing::{Event, Span, Subscriber, field::Field, span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::LevelFilter,
    fmt::{
        self, FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    layer::Context as LayerContext,
    prelude::*,
    registry::LookupSpan,
};

use crate::config::LogFormat;

/// The environment variable that turns trace export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

tokio::task_local! {
    /// The trace id of the call or saga this task works for, when spans are
    /// not exported (see [`LogTrace`]).
    static LOG_TRACE: Option<LogTrace>;
}

/// A trace id kept for log correlation only (32 lowercase hex digits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogTrace(std::sync::Arc<str>);

impl LogTrace {
    /// The trace id of an incoming call: its `traceparent`'s, or a new one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(Self::from_traceparent)
            .unwrap_or_else(Self::new_random)
    }

    /// The trace id of a W3C `traceparent` value, if well formed.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.split('-');
        let (_version, trace) = (parts.next()?, parts.next()?);
        let valid = trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
            && trace.bytes().any(|b| b != b'0');
        valid.then(|| Self(trace.to_ascii_lowercase().into()))
    }

    /// A new random trace id.
    pub fn new_random() -> Self {
        use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
        Self(
            RandomIdGenerator::default()
                .new_trace_id()
                .to_string()
                .into(),
        )
    }

    /// The id, as logs show it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A `traceparent` naming this trace with a new span id, unsampled
    /// (nothing is exported).
    pub fn traceparent(&self) -> String {
        use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
        format!(
            "00-{}-{}-00",
            self.0,
            RandomIdGenerator::default().new_span_id()
        )
    }

    /// Runs `future` with this as the task's log trace.
    pub fn scope<F: std::future::Future>(
        this: Option<Self>,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Option<LogTrace>, F> {
        LOG_TRACE.scope(this, future)
    }

    /// The log trace of the current task, if any.
    pub fn current() -> Option<Self> {
        LOG_TRACE.try_with(Clone::clone).ok().flatten()
    }
}

/// Whether spans are exported (an OpenTelemetry layer is installed).
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether trace context is propagated and spans exported in this process.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Flushes and stops the trace exporter when dropped (at the end of `main`),
/// so the spans of the last requests reach the collector.
#[must_use = "dropping it stops trace export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("cannot flush traces: {err}");
        }
    }
}

/// Installs the global subscriber once; later calls (tests, `up` starting
/// several services) are no-ops.
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

/// Like [`init_logging`] with another default level (when `RUST_LOG` is unset).
pub fn init_logging_at(format: LogFormat, default_level: &str) {
    install(format, default_level, None);
}

/// Logs as [`init_logging`], and traces exported over OTLP as `service_name`
/// (unless `OTEL_SERVICE_NAME` names it) when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set. Must run inside the tokio runtime (the exporter's gRPC channel
/// lives on it). Keep the returned guard until the process ends.
pub fn init(format: LogFormat, service_name: &str) -> Telemetry {
    let exporting = std::env::var_os(OTLP_ENDPOINT_ENV).is_some_and(|v| !v.is_empty());
    let provider = if exporting {
        match tracer_provider(service_name) {
            Ok(provider) => Some(provider),
            Err(err) => {
                // Logs are not up yet: say it on stderr, run without traces.
                eprintln!("cannot set up trace export to {OTLP_ENDPOINT_ENV}: {err}");
                None
            }
        }
    } else {
        None
    };
    let installed = install(format, "info", provider.clone());
    if installed && provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint = std::env::var(OTLP_ENDPOINT_ENV).unwrap_or_default(),
            "exporting traces over OTLP"
        );
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    // Batching (OTEL_BSP_* variables) keeps export off the request path.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs the subscriber; false if one was installed before.
fn install(format: LogFormat, default_level: &str, provider: Option<SdkTracerProvider>) -> bool {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Spans at INFO and above are exported whatever RUST_LOG says, so
    // quiet logs do not cut traces short.
    let otel = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("microshop"))
            .with_filter(LevelFilter::INFO)
    });
    // Colours only for a person at a terminal, never in files or pipes.
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(otel);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                LogIdsLayer
                    .and_then(
                        fmt::layer()
                            .event_format(JsonLine)
                            .with_writer(std::io::stderr),
                    )
                    .with_filter(filter),
            )
            .try_init(),
    };
    result.is_ok()
}

// ---------------------------------------------------------------------------
// W3C trace context in gRPC metadata
// ---------------------------------------------------------------------------

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the W3C trace context in `headers` (if any) and
/// records its `trace_id` field.
pub fn continue_from_headers(span: &Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    adopt(span, parent);
}

/// Writes `span`'s trace context into `headers` as `traceparent`.
pub fn inject_headers(span: &Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Names `span` in a response's `traceresponse` header (W3C Trace Context
/// level 2, the same format as `traceparent`), so a caller can find the
/// trace of its call.
pub fn inject_response(span: &Span, headers: &mut HeaderMap) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return;
    }
    let value = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("traceresponse"), value);
    }
}

/// The current span's trace context as a W3C `traceparent` value, to store
/// with work that outlives the request (a saga); without export, the
/// task's [`LogTrace`] as an unsampled one.
pub fn current_traceparent() -> Option<String> {
    if !tracing_enabled() {
        return LogTrace::current().map(|t| t.traceparent());
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of a stored `traceparent` (see
/// [`current_traceparent`]) and records its `trace_id` field.
pub fn continue_from_traceparent(span: &Span, traceparent: Option<&str>) {
    let mut carrier: HashMap<String, String> = HashMap::new();
    if let Some(tp) = traceparent {
        carrier.insert("traceparent".into(), tp.to_owned());
    }
    adopt(span, TraceContextPropagator::new().extract(&carrier));
}

fn adopt(span: &Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Only fails for a span already started or disabled: then it keeps
        // its own parent, which is the best left to do.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

// ---------------------------------------------------------------------------
// JSON log lines with trace_id and saga_id
// ---------------------------------------------------------------------------

/// The correlation ids a span declared (`trace_id`, `saga.id`), kept in the
/// span's extensions for the JSON formatter.
#[derive(Default)]
struct LogIds {
    trace_id: Option<String>,
    saga_id: Option<String>,
}

impl tracing::field::Visit for LogIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = Some(value.to_owned()),
            "saga.id" | "saga_id" => self.saga_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "saga.id" | "saga_id") {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// Keeps each span's [`LogIds`] up to date.
struct LogIdsLayer;

impl<S> Layer<S> for LogIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: LayerContext<'_, S>) {
        let mut ids = LogIds::default();
        attrs.record(&mut ids);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(ids) = span.extensions_mut().get_mut::<LogIds>()
        {
            values.record(ids);
        }
    }
}

/// Event fields as JSON values.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`,
/// the event's fields, the innermost `span`, and the `trace_id` and
/// `saga_id` of the nearest enclosing spans that carry them.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut map = serde_json::Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        map.insert("timestamp".into(), timestamp.into());
        let meta = event.metadata();
        map.insert("level".into(), meta.level().as_str().into());
        map.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut map));
        if let Some(scope) = ctx.event_scope() {
            let (mut trace_id, mut saga_id, mut name) = (None, None, None);
            for span in scope {
                name.get_or_insert(span.name());
                if let Some(ids) = span.extensions().get::<LogIds>() {
                    if trace_id.is_none() {
                        trace_id.clone_from(&ids.trace_id);
                    }
                    if saga_id.is_none() {
                        saga_id.clone_from(&ids.saga_id);
                    }
                }
                if trace_id.is_some() && saga_id.is_some() {
                    break;
                }
            }
            if let Some(name) = name {
                map.insert("span".into(), name.into());
            }
            if let Some(id) = trace_id {
                map.insert("trace_id".into(), id.into());
            }
            if let Some(id) = saga_id {
                map.insert("saga_id".into(), id.into());
            }
        }
        let line = serde_json::to_string(&map).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}
