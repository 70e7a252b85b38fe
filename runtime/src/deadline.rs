//! Deadlines: the caller's, as gRPC carries it (the `grpc-timeout`
//! header, read by the orchestrator to answer before the caller gives up
//! and by the fault layer to hold an action past it, so it is parsed in
//! one place), and the server's own bound on a request
//! (`--request-timeout-ms`, [`RequestTimeoutLayer`]).
//!
//! The server's bound is a layer of ours rather than tonic's
//! `Server::timeout`, which answers a request past it `CANCELLED`: a code
//! clients do not retry, for a call that is safe to retry with the same
//! key. Ours answers `DEADLINE_EXCEEDED` / `DEPENDENCY_UNAVAILABLE`, as
//! the contract answers anything slow. (Tonic still applies the caller's
//! `grpc-timeout`; past it the caller has given up anyway.)

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tonic::{Code, codegen::http};
use tower::{Layer, Service};

use crate::errors::{Reason, rich_status};

/// Bounds every request to a time, answering DEADLINE_EXCEEDED past it.
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeoutLayer {
    timeout: Duration,
}

impl RequestTimeoutLayer {
    /// Requests that take longer than `timeout` are answered
    /// DEADLINE_EXCEEDED (and dropped, which cancels their work).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service made by [`RequestTimeoutLayer`].
#[derive(Clone, Debug)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
}

/// DEADLINE_EXCEEDED / DEPENDENCY_UNAVAILABLE for a request past `timeout`.
pub fn request_timed_out(timeout: Duration) -> tonic::Status {
    rich_status(
        Code::DeadlineExceeded,
        Reason::DependencyUnavailable,
        format!(
            "the request took longer than this server's limit of {} ms \
             (--request-timeout-ms); retry with the same idempotency key",
            timeout.as_millis()
        ),
        [],
        None,
    )
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for RequestTimeout<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(answer) => answer,
                Err(_) => Ok(request_timed_out(timeout).into_http::<ResBody>()),
            }
        })
    }
}

/// Parses a `grpc-timeout` value (`1500m`, `2S`, ...): at most 8 digits and
/// a unit. `None` for anything malformed, never a panic.
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    // Checked: a non-ASCII value must not split inside a character.
    let (digits, unit) = s.split_at_checked(s.len() - 1)?;
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_past_the_bound_is_answered_deadline_exceeded() {
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = RequestTimeoutLayer::new(Duration::from_millis(20)).layer(slow);
        let answer = svc.call(http::Request::new(())).await.expect("answered");
        let status = tonic::Status::from_header_map(answer.headers()).expect("a status");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(
            crate::errors::reason_of(&status),
            Some(Reason::DependencyUnavailable)
        );
        assert!(status.message().contains("20 ms"), "{}", status.message());
    }
}
