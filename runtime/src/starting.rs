//! What a service answers before its store is open.
//!
//! A store on MongoDB opens only once its indexes exist, which needs the
//! database; a service started while the database is down used to bind its
//! port and then answer nothing until the caller's deadline (health and
//! liveness included, so Kubernetes restarted the pod). [`while_opening`]
//! serves the port meanwhile: liveness SERVING, the service and `""`
//! NOT_SERVING, and every other call UNAVAILABLE at once with a message
//! that says why. Once the store is open it hands the listener back for
//! [`crate::serve`].

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::net::TcpListener;
use tonic::{Code, body::Body, codegen::http};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{LIVENESS, Reason, ServeError, ServerArgs, rich_status};

/// How long the placeholder lets its calls finish once the store is open.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(2);

/// Serves health (and UNAVAILABLE for every other call) on `listener` while
/// `opening` runs; then returns the listener and what `opening` gave.
/// `None` when `shutdown` came first.
pub async fn while_opening<T>(
    listener: TcpListener,
    service_name: &'static str,
    args: &ServerArgs,
    opening: impl Future<Output = T>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<(TcpListener, T)>, ServeError> {
    let health = HealthReporter::new();
    health
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(service_name, ServingStatus::NotServing)
        .await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = args.tls.server_config().map_err(ServeError::Setup)? {
        builder = builder.tls_config(tls)?;
    }
    let shared = Arc::new(listener);
    let accepted = accept_shared(Arc::clone(&shared));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut placeholder = Box::pin(
        builder
            .layer(tower::layer::layer_fn(|inner| NotYet {
                inner,
                service: service_name,
            }))
            .add_service(HealthServer::new(HealthService::from_health_reporter(
                health,
            )))
            .serve_with_incoming_shutdown(accepted, async {
                let _ = stopped.await;
            }),
    );
    tokio::pin!(opening);
    tracing::info!(
        service = service_name,
        "store not open yet: health NOT_SERVING, calls UNAVAILABLE"
    );
    let outcome = tokio::select! {
        value = &mut opening => Some(value),
        () = &mut *shutdown => None,
        served = &mut placeholder => {
            served?;
            return Err(ServeError::Setup("the starting server stopped".into()));
        }
    };
    let _ = stop.send(());
    // Its connections are told to go away; a client that keeps one open
    // reconnects to the real server.
    let _ = tokio::time::timeout(HAND_OVER_WITHIN, &mut placeholder).await;
    // (Dropping it drops its share of the listener.)
    drop(placeholder);
    let Some(value) = outcome else {
        return Ok(None);
    };
    let listener = Arc::try_unwrap(shared)
        .map_err(|_| ServeError::Setup("the listener is still in use".into()))?;
    tracing::info!(service = service_name, "store open");
    Ok(Some((listener, value)))
}

/// The connections `listener` accepts, as a stream, while sharing it: the
/// stream holds the only other share, and gives it up when dropped.
fn accept_shared(listener: Arc<TcpListener>) -> Accepted {
    Accepted { listener }
}

struct Accepted {
    listener: Arc<TcpListener>,
}

impl tokio_stream::Stream for Accepted {
    type Item = std::io::Result<tokio::net::TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener.poll_accept(cx).map(|conn| {
            Some(conn.map(|(stream, _)| {
                let _ = stream.set_nodelay(true);
                stream
            }))
        })
    }
}

/// Passes health through and answers every other call UNAVAILABLE.
#[derive(Clone)]
struct NotYet<S> {
    inner: S,
    service: &'static str,
}

impl<S> tower::Service<http::Request<Body>> for NotYet<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Box::pin(self.inner.call(request));
        }
        let status = rich_status(
            Code::Unavailable,
            Reason::DependencyUnavailable,
            format!(
                "{} is starting: its database is not reachable yet; retry with the same \
                 idempotency key",
                self.service
            ),
            [],
            Some(Duration::from_secs(1)),
        );
        Box::pin(async move { Ok(status.into_http()) })
    }
}
