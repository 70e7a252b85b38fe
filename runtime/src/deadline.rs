//! Deadlines: the caller's, as gRPC carries it (the `grpc-timeout`
//! header, read by the orchestrator to answer before the caller gives up
//! and by the fault layer to hold an action past it, so it is parsed in
//! one place), and the server's own bound on a request
//! (`--request-timeout-ms`, [`answer_timed_out`] over tower's `timeout`).
//!
//! The server's bound is tower's `timeout` with our answer rather than
//! tonic's `Server::timeout`, which answers a request past it `CANCELLED`: a code
//! clients do not retry, for a call that is safe to retry with the same
//! key. Ours answers `DEADLINE_EXCEEDED` / `DEPENDENCY_UNAVAILABLE`, as
//! the contract answers anything slow. (Tonic still applies the caller's
//! `grpc-timeout`; past it the caller has given up anyway.)

use std::time::Duration;

use tonic::{Code, codegen::http};
use tower::BoxError;

use crate::errors::{Reason, rich_status};

/// DEADLINE_EXCEEDED / DEPENDENCY_UNAVAILABLE for a request past `timeout`.
pub fn request_timed_out(timeout: Duration) -> tonic::Status {
    rich_status(
        Code::DeadlineExceeded,
        Reason::DependencyUnavailable,
        format!(
            "the request took longer than this server's limit of {} ms \
             (--request-timeout-ms); retry (PlaceOrder with the same idempotency key is \
             applied at most once; another write may have taken effect already)",
            timeout.as_millis()
        ),
        [],
        None,
    )
}

/// Answers a request that tower's `timeout` layer cut off at `timeout`
/// with [`request_timed_out`]; for `ServiceBuilder::map_result` above
/// that layer. Other errors pass through.
pub fn answer_timed_out<B: Default>(
    timeout: Duration,
) -> impl Fn(Result<http::Response<B>, BoxError>) -> Result<http::Response<B>, BoxError> + Clone {
    move |result| match result {
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => {
            Ok(request_timed_out(timeout).into_http())
        }
        other => other,
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
        let timeout = Duration::from_millis(20);
        let svc = tower::ServiceBuilder::new()
            .map_result(answer_timed_out(timeout))
            .timeout(timeout)
            .service(slow);
        let answer = tower::ServiceExt::oneshot(svc, http::Request::new(()))
            .await
            .expect("answered");
        let status = tonic::Status::from_header_map(answer.headers()).expect("a status");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(
            crate::errors::reason_of(&status),
            Some(Reason::DependencyUnavailable)
        );
        assert!(status.message().contains("20 ms"), "{}", status.message());
    }
}
