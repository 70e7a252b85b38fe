//! Tower layers that observe every gRPC call, on both ends.
//!
//! [`ServerObserveLayer`] sits outermost on every port: it counts each call
//! and its latency by service, method and status code, and opens the call's
//! server span (named `package.Service/Method`, with the OpenTelemetry RPC
//! attributes) as a child of the W3C `traceparent` the caller sent. Service
//! and method are those of a method the server registers, or `_OTHER` for
//! any other path ([`crate::methods`]): a caller cannot mint labels, span
//! names or attribute values.
//! [`ClientTraceLayer`] wraps the orchestrator's participant channels: it
//! opens a client span per call and sends its context as `traceparent`, so
//! a participant's server span is a child of the saga step that called it.
//! Handlers never touch trace context. Answers name their trace back to the
//! caller in a `traceresponse` header (W3C Trace Context level 2).
//!
//! When trace export is off ([`crate::telemetry::tracing_enabled`]), no
//! OpenTelemetry context is built: the server layer gives its span a
//! log-only trace id (the caller's `traceparent`'s or a new one, in a
//! task-local), and the client layer passes that on as an unsampled
//! `traceparent`, so the JSON logs of one call still share a `trace_id`
//! across services. The span is disabled (free) when the log filter is
//! above INFO.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use tokio::task::futures::TaskLocalFuture;
use tonic::codegen::http::{HeaderValue, Request, Response, Uri};
use tower::{Layer, Service};
use tracing::{Span, field::Empty};

use crate::{
    methods::{KnownMethods, client_names},
    metrics::metrics,
    telemetry::{self, LogTrace},
};

/// The status of a call from its response headers: a trailers-only answer
/// (every error tonic returns from a handler) carries `grpc-status` there;
/// a successful unary answer carries it in the trailers, after the headers,
/// where it is OK unless the body itself fails.
fn status_of<B>(response: &Response<B>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a server span's status is an error (OpenTelemetry RPC
/// conventions: client errors such as NOT_FOUND are not the server's).
fn server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Calls that are not traced: health checks and reflection run every few
/// seconds and would drown the traces of real work.
fn untraced(service: &str) -> bool {
    service.starts_with("grpc.")
}

fn host_port(uri: &Uri) -> (Option<&str>, Option<u16>) {
    (uri.host(), uri.port_u16())
}

/// Counts, times and traces every call served.
#[derive(Clone, Debug)]
pub struct ServerObserveLayer {
    known: KnownMethods,
}

impl ServerObserveLayer {
    /// For a server answering the methods `known`; other paths are
    /// observed as `_OTHER`.
    pub fn new(known: KnownMethods) -> Self {
        Self { known }
    }
}

impl<S> Layer<S> for ServerObserveLayer {
    type Service = ServerObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerObserve {
            inner,
            known: self.known.clone(),
        }
    }
}

/// See [`ServerObserveLayer`].
#[derive(Clone, Debug)]
pub struct ServerObserve<S> {
    inner: S,
    known: KnownMethods,
}

impl<S, B, R> Service<Request<B>> for ServerObserve<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (service, method) = self.known.names(request.uri().path());
        let span = if untraced(service) {
            Span::none()
        } else {
            let (host, port) = host_port(request.uri());
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = %format_args!("{service}/{method}"),
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
                server.address = host,
                server.port = port,
                trace_id = Empty,
                saga.id = Empty,
                order.id = Empty,
            );
            if telemetry::tracing_enabled() {
                telemetry::continue_from_headers(&span, request.headers());
            }
            span
        };
        // Without export, a trace id for the logs only (see `telemetry`).
        let log_trace = (!telemetry::tracing_enabled() && !span.is_disabled()).then(|| {
            let trace = LogTrace::from_headers(request.headers());
            span.record("trace_id", trace.as_str());
            trace
        });
        let future = {
            let _entered = span.enter();
            LogTrace::scope(log_trace, self.inner.call(request))
        };
        ServerFuture {
            inner: future,
            span,
            service,
            method,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ServerObserve`].
    pub struct ServerFuture<F> {
        #[pin]
        inner: TaskLocalFuture<Option<LogTrace>, F>,
        span: Span,
        service: &'static str,
        method: &'static str,
        started: Instant,
    }
}

impl<F, R, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        if telemetry::tracing_enabled()
            && !this.span.is_disabled()
            && let Ok(response) = &mut result
        {
            telemetry::inject_response(this.span, response.headers_mut());
        }
        // A transport-level failure never reached a handler: tonic turns it
        // into UNKNOWN for the client.
        let code = result.as_ref().map_or(2, status_of);
        let took = this.started.elapsed();
        metrics().observe_rpc(this.service, this.method, code, took);
        if !this.span.is_disabled() {
            this.span.record("rpc.grpc.status_code", code);
            if server_error(code) {
                this.span.record("otel.status_code", "error");
            }
            // The access log, at debug: inside the span, so a JSON line
            // carries the call's trace_id and saga_id.
            let _entered = this.span.enter();
            tracing::debug!(
                code = crate::metrics::code_name(code),
                took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                "served"
            );
        }
        Poll::Ready(result)
    }
}

/// Opens a client span per outgoing call and sends its context as
/// `traceparent` (only while traces are exported).
#[derive(Clone, Debug, Default)]
pub struct ClientTraceLayer {
    target: Target,
}

/// The server a channel calls (the request URIs a client layer sees carry
/// only the path: the channel adds the origin beneath it).
#[derive(Clone, Debug, Default)]
struct Target {
    host: Option<Arc<str>>,
    port: Option<u16>,
}

impl ClientTraceLayer {
    /// For a channel to `uri` (e.g. `http://127.0.0.1:50052`).
    pub fn new(uri: &Uri) -> Self {
        Self {
            target: Target {
                host: uri.host().map(Arc::from),
                port: uri.port_u16(),
            },
        }
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace {
            inner,
            target: self.target.clone(),
        }
    }
}

/// See [`ClientTraceLayer`].
#[derive(Clone, Debug)]
pub struct ClientTrace<S> {
    inner: S,
    target: Target,
}

impl<S, B, R> Service<Request<B>> for ClientTrace<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !telemetry::tracing_enabled() {
            // Log correlation only: the caller's trace id, unsampled.
            if let Some(trace) = LogTrace::current()
                && let Ok(value) = HeaderValue::from_str(&trace.traceparent())
            {
                request.headers_mut().insert("traceparent", value);
            }
            return ClientFuture {
                inner: self.inner.call(request),
                span: Span::none(),
            };
        }
        let (service, method) = client_names(request.uri().path());
        let (host, port) = (self.target.host.as_deref(), self.target.port);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            server.address = host,
            server.port = port,
        );
        telemetry::inject_headers(&span, request.headers_mut());
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ClientFuture {
            inner: future,
            span,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ClientTrace`].
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F, R, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.span.is_none() {
            return this.inner.poll(cx);
        }
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        // No answer at all (connection refused, timeout): UNAVAILABLE.
        let code = result.as_ref().map_or(14, status_of);
        this.span.record("rpc.grpc.status_code", code);
        if code != 0 {
            // A client span is an error for any status but OK.
            this.span.record("otel.status_code", "error");
        }
        Poll::Ready(result)
    }
}

/// Records the saga a call works for on the current (server) span, for the
/// trace and the logs; participants call it with the request's `saga_id`.
pub fn record_saga_id(saga_id: &str) {
    if !saga_id.is_empty() {
        Span::current().record("saga.id", saga_id);
    }
}

/// Records the order a call concerns on the current (server) span.
pub fn record_order_id(order_id: &str) {
    if !order_id.is_empty() {
        Span::current().record("order.id", order_id);
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt, service_fn};

    use super::*;

    fn request(path: &str) -> Request<()> {
        Request::builder()
            .uri(path)
            .body(())
            .expect("a valid request")
    }

    #[tokio::test]
    async fn without_export_calls_pass_through_untouched() {
        assert!(!telemetry::tracing_enabled());
        let svc = ClientTraceLayer::default().layer(service_fn(|req: Request<()>| async move {
            assert!(req.headers().get("traceparent").is_none());
            Ok::<_, Infallible>(Response::new(()))
        }));
        svc.oneshot(request("/a.B/C")).await.expect("answered");
    }

    const LOYALTY: &str = "microshop.loyalty.v1.LoyaltyService";

    fn observed() -> ServerObserveLayer {
        ServerObserveLayer::new(KnownMethods::of_services(&[LOYALTY]))
    }

    #[tokio::test]
    async fn served_calls_are_counted_by_status() {
        let svc = observed().layer(service_fn(|_: Request<()>| async {
            let mut response = Response::new(());
            // A trailers-only error, as tonic answers a handler's Err.
            response
                .headers_mut()
                .insert("grpc-status", "5".parse().expect("a header value"));
            Ok::<_, Infallible>(response)
        }));
        svc.oneshot(request("/microshop.loyalty.v1.LoyaltyService/RefundPoints"))
            .await
            .expect("answered");
        let ok = observed().layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
        ok.oneshot(request("/microshop.loyalty.v1.LoyaltyService/GetBalance"))
            .await
            .expect("answered");
        let text = metrics().encode();
        assert!(
            text.contains(r#"microshop_rpc_server_requests_total{service="microshop.loyalty.v1.LoyaltyService",method="RefundPoints",code="NOT_FOUND"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"microshop_rpc_server_requests_total{service="microshop.loyalty.v1.LoyaltyService",method="GetBalance",code="OK"} 1"#),
            "{text}"
        );
    }

    /// The `rpc.service`, `rpc.method` and `otel.name` of every span
    /// opened while it is the subscriber.
    #[derive(Clone, Default)]
    struct SpanFields(Arc<std::sync::Mutex<Vec<[String; 3]>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanFields {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Visit([String; 3]);
            impl tracing::field::Visit for Visit {
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    self.record_debug(field, &format_args!("{value}"));
                }
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    let slot = match field.name() {
                        "rpc.service" => 0,
                        "rpc.method" => 1,
                        "otel.name" => 2,
                        _ => return,
                    };
                    self.0[slot] = format!("{value:?}");
                }
            }
            let mut visit = Visit(Default::default());
            attrs.record(&mut visit);
            self.0.lock().expect("not poisoned").push(visit.0);
        }
    }

    #[tokio::test]
    async fn unknown_methods_are_other_in_labels_and_spans() {
        use tracing_subscriber::layer::SubscriberExt;

        let fields = SpanFields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        let _guard = tracing::subscriber::set_default(subscriber);
        for path in [
            "/evil.SvcObserveTest/M1",
            "/microshop.loyalty.v1.LoyaltyService/EvilObserveTest",
            "/microshop.order.v1.OrderService/GetOrder",
        ] {
            let svc = observed().layer(service_fn(|_: Request<()>| async {
                let mut response = Response::new(());
                response
                    .headers_mut()
                    .insert("grpc-status", "12".parse().expect("a header value"));
                Ok::<_, Infallible>(response)
            }));
            svc.oneshot(request(path)).await.expect("answered");
        }
        let spans = fields.0.lock().expect("not poisoned").clone();
        assert_eq!(spans.len(), 3, "{spans:?}");
        for span in &spans {
            assert_eq!(
                span,
                &["_OTHER", "_OTHER", "_OTHER/_OTHER"].map(String::from)
            );
        }
        let text = metrics().encode();
        assert!(
            !text.contains("ObserveTest") && !text.contains("OrderService"),
            "{text}"
        );
        assert!(
            text.contains(r#"microshop_rpc_server_requests_total{service="_OTHER",method="_OTHER",code="UNIMPLEMENTED"}"#),
            "{text}"
        );
    }
}
