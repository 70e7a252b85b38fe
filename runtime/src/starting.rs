//! What a server answers before its store is open, and how it switches to
//! its services without dropping a connection.
//!
//! A store on MongoDB opens only once its indexes exist, which needs the
//! database. A service started while the database is down must still
//! answer: health (liveness SERVING, the service and `""` NOT_SERVING, so
//! Kubernetes neither restarts the pod nor routes to it) and UNAVAILABLE at
//! once for every other call, with a message that says why.
//!
//! It is one server from the first connection on: [`crate::serve`] routes
//! every call through [`OpenedLayer`], which sends it to the starting
//! routes until the store is open and to the service's routes from then on.
//! An earlier shape served a placeholder server and handed the listener to
//! the real one; the hand-over closed every open connection, and a call a
//! client had just sent on one failed CANCELLED ("connection closed")
//! instead of UNAVAILABLE or an answer.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use tonic::{
    Code,
    body::Body,
    codegen::http::{Request, Response},
    service::Routes,
};
use tower::{Layer, Service, ServiceExt};

use crate::{Reason, rich_status};

/// The answer to a call before the store is open: UNAVAILABLE, retryable.
pub(crate) fn not_open_yet(service: &str) -> Response<Body> {
    rich_status(
        Code::Unavailable,
        Reason::DependencyUnavailable,
        format!(
            "{service} is starting: its store is not open yet (is its database reachable?); \
             nothing was done: retry"
        ),
        [],
        Some(Duration::from_secs(1)),
    )
    .into_http()
}

/// The routes of a server once its store is open, set once.
pub(crate) type OpenedRoutes = Arc<OnceLock<Routes>>;

/// Sends each call to the opened routes once they are set, else to the
/// routes it wraps (the starting ones).
#[derive(Clone)]
pub(crate) struct OpenedLayer {
    opened: OpenedRoutes,
}

impl OpenedLayer {
    pub(crate) fn new(opened: OpenedRoutes) -> Self {
        Self { opened }
    }
}

impl<S> Layer<S> for OpenedLayer {
    type Service = Opened<S>;

    fn layer(&self, starting: S) -> Self::Service {
        Opened {
            starting,
            opened: Arc::clone(&self.opened),
        }
    }
}

/// See [`OpenedLayer`].
#[derive(Clone)]
pub(crate) struct Opened<S> {
    starting: S,
    opened: OpenedRoutes,
}

impl<S> Service<Request<Body>> for Opened<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both kinds of routes are always ready (tonic's router is); the
        // opened ones are driven with `oneshot`, which polls them too.
        self.starting.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.opened.get() {
            Some(routes) => Box::pin(routes.clone().oneshot(request)),
            None => Box::pin(self.starting.call(request)),
        }
    }
}
