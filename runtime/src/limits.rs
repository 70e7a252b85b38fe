//! Limits on what a caller may send, as tower layers.
//!
//! Rate: one token bucket per caller on `PlaceOrder`, keyed by the token's
//! subject when authentication is on (the [`Caller`] the auth layer
//! inserted), else by the peer IP. An empty bucket answers
//! `RESOURCE_EXHAUSTED` (reason `RATE_LIMITED`) with a `RetryInfo` saying
//! when the next token arrives.
//!
//! Size: a request message over `--max-message-bytes` is refused by tonic's
//! decoder with a bare `OUT_OF_RANGE`; [`answer_oversized`] answers it as the
//! contract says oversized input is answered, `INVALID_ARGUMENT` /
//! `INVALID_REQUEST` with a `BadRequest`, saying what the limit is.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tonic::{Code, Status, codegen::http, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use crate::{
    auth::Caller,
    errors::{Reason, invalid_request, rich_status},
};

/// The rate-limited method.
pub const PLACE_ORDER_PATH: &str = "/microshop.orchestrator.v1.CheckoutService/PlaceOrder";

/// Buckets kept before idle (full) ones are dropped.
const MAX_BUCKETS: usize = 100_000;

/// Rate-limit settings (part of [`crate::ServerArgs`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LimitArgs {
    /// PlaceOrder calls per second allowed to one customer (token subject,
    /// or peer IP without authentication); 0 turns the limit off.
    #[arg(long, env = "MICROSHOP_PLACE_ORDER_RATE", default_value_t = 0.0)]
    pub place_order_rate: f64,

    /// PlaceOrder calls one customer may make in a burst.
    #[arg(long, env = "MICROSHOP_PLACE_ORDER_BURST", default_value_t = 10)]
    pub place_order_burst: u32,
}

impl LimitArgs {
    /// The layer, or `None` when the limit is off.
    pub fn layer(&self) -> Option<RateLimitLayer> {
        (self.place_order_rate > 0.0 && self.place_order_rate.is_finite()).then(|| {
            RateLimitLayer::new(
                PLACE_ORDER_PATH,
                self.place_order_rate,
                self.place_order_burst.max(1),
            )
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Subject(String),
    Ip(IpAddr),
    Unknown,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets {
    rate: f64,
    burst: f64,
    map: Mutex<HashMap<Key, Bucket>>,
}

impl Buckets {
    /// Takes a token for `key`, or says how long until one is there.
    fn take(&self, key: Key, now: Instant) -> Result<(), Duration> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_BUCKETS && !map.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Duration::from_secs_f64(wait.min(3600.0)).max(Duration::from_millis(1)))
        }
    }
}

/// The layer limiting one method per caller.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    path: &'static str,
    buckets: Arc<Buckets>,
}

impl RateLimitLayer {
    /// `rate` calls per second with bursts of `burst`, on `path`.
    pub fn new(path: &'static str, rate: f64, burst: u32) -> Self {
        Self {
            path,
            buckets: Arc::new(Buckets {
                rate,
                burst: f64::from(burst),
                map: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

fn key_of<B>(request: &http::Request<B>) -> Key {
    if let Some(caller) = request.extensions().get::<Caller>() {
        return Key::Subject(caller.subject.clone());
    }
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map_or(Key::Unknown, |a| Key::Ip(a.ip()))
}

/// RESOURCE_EXHAUSTED / RATE_LIMITED with a `RetryInfo`.
pub fn rate_limited(retry_after: Duration) -> Status {
    rich_status(
        Code::ResourceExhausted,
        Reason::RateLimited,
        format!(
            "too many orders from this customer; retry in {} ms",
            retry_after.as_millis().max(1)
        ),
        [],
        Some(retry_after),
    )
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for RateLimit<S>
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
        if request.uri().path() == self.layer.path
            && let Err(wait) = self.layer.buckets.take(key_of(&request), Instant::now())
        {
            let response = rate_limited(wait).into_http::<ResBody>();
            return Box::pin(async move { Ok(response) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

/// Whether `response` is tonic's refusal of a request message over its
/// decoding limit (a trailers-only answer, so the status is in the headers).
fn is_oversized<B>(response: &http::Response<B>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11")
        && Status::from_header_map(response.headers())
            .is_some_and(|s| s.message().contains("decoded message length too large"))
}

/// INVALID_ARGUMENT / INVALID_REQUEST for a request over `max_bytes`.
pub fn oversized(max_bytes: usize) -> Status {
    invalid_request(&[(
        "request".to_owned(),
        format!(
            "the request message is larger than the {max_bytes} bytes this server accepts \
             (--max-message-bytes); send less, e.g. fewer items or shorter fields"
        ),
    )])
}

/// Answers tonic's refusal of an oversized request message as the
/// contract answers oversized input; for `ServiceBuilder::map_response`.
pub fn answer_oversized<B: Default>(
    max_bytes: usize,
) -> impl Fn(http::Response<B>) -> http::Response<B> + Clone {
    move |response| {
        if is_oversized(&response) {
            oversized(max_bytes).into_http()
        } else {
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_decoding_limit_is_rewritten() {
        let answer = |status: Status| status.into_http::<tonic::body::Body>();
        let limit = Status::out_of_range(
            "Error, decoded message length too large: found 300039 bytes, the limit is: 262144 bytes",
        );
        assert!(is_oversized(&answer(limit)));
        assert!(!is_oversized(&answer(Status::out_of_range(
            "Error, encoded message length too large: found 9 bytes, the limit is: 8 bytes"
        ))));
        assert!(!is_oversized(&answer(Status::out_of_range(
            "page past the end"
        ))));
        assert!(!is_oversized(&answer(Status::invalid_argument(
            "decoded message length too large"
        ))));
        let status = oversized(262_144);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            crate::errors::reason_of(&status),
            Some(Reason::InvalidRequest)
        );
        assert!(
            status.message().contains("262144 bytes"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn bucket_empties_and_refills() {
        let buckets = Buckets {
            rate: 2.0,
            burst: 2.0,
            map: Mutex::new(HashMap::new()),
        };
        let t0 = Instant::now();
        let key = || Key::Subject("alice".into());
        assert!(buckets.take(key(), t0).is_ok());
        assert!(buckets.take(key(), t0).is_ok());
        let wait = buckets.take(key(), t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500));
        assert!(buckets.take(Key::Subject("bob".into()), t0).is_ok());
        assert!(buckets.take(key(), t0 + Duration::from_millis(500)).is_ok());
    }
}
