//! Clients of the three participants, and how their answers are classified.
//!
//! Channels connect lazily, so the orchestrator starts while participants
//! are down and reconnects by itself when they come back. Each call carries
//! its own timeout, so a hung participant costs one attempt, not the saga.
//!
//! A network can also fail silently: packets vanish, no RST comes back, and
//! a TCP connection stays "open" long after its peer is gone (a partition,
//! a pod deleted without a FIN, a conntrack entry lost). Two settings keep
//! that from costing more than a call's own deadline ([`endpoint`]):
//!
//! - HTTP/2 keepalive: a PING every [`KEEPALIVE_INTERVAL`], also while no
//!   call is open, and the connection is closed when its ack has not come
//!   within [`KEEPALIVE_TIMEOUT`]. A silent connection is given up within
//!   about 6 s (hyper's defaults here were 10 s and 20 s: measured, calls
//!   kept going into a dead connection, each timing out, for 30 s). After
//!   that every call makes a new connection: it fails at once while the
//!   participant is unreachable (UNAVAILABLE, no call timeout spent) and
//!   succeeds as soon as it is back, or reaches whatever now answers at
//!   the URL (a Service's new pod).
//! - [`CONNECT_TIMEOUT`]: a connect whose SYN gets no answer gives up
//!   after 1.5 s, time for the kernel's one SYN retransmission at 1 s.
//!
//! And every call is bounded by its deadline as a whole ([`CallDeadline`]):
//! tonic starts a call's `grpc-timeout` only once a connection is ready, so
//! a call made while the channel was connecting could wait for the connect
//! first and outlive its deadline by up to the connect timeout.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use microshop_runtime::{
    deadline::parse_grpc_timeout,
    observe::{ClientTrace, ClientTraceLayer},
};

use microshop_proto::{
    inventory::v1::inventory_service_client::InventoryServiceClient,
    loyalty::v1::loyalty_service_client::LoyaltyServiceClient,
    order::v1::order_service_client::OrderServiceClient,
};
use tonic::{
    Code, Request, Status,
    codegen::http,
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

/// The participants' transport: a channel whose calls carry the trace
/// context of the saga step making them and end by their deadline.
pub type Transport = ClientTrace<CallDeadline<Channel>>;

/// How long a connect to a participant may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often an HTTP/2 PING checks a participant connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// How long a PING's ack may take before the connection is given up.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The endpoint of a participant at `url` (over TLS when `tls` is set), as
/// the saga calls and the health watcher use it; see the module docs.
pub fn endpoint(
    url: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Ends every call when its `grpc-timeout` has passed, counted from the
/// call, not from when a connection became ready: `DEADLINE_EXCEEDED`.
#[derive(Clone, Debug)]
pub struct CallDeadline<S> {
    inner: S,
}

impl<S> CallDeadline<S> {
    /// `inner`, its calls bounded by their deadlines.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for CallDeadline<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let call = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return call.await.map_err(Into::into);
            };
            match tokio::time::timeout(deadline, call).await {
                Ok(answer) => answer.map_err(|e| {
                    let e: tower::BoxError = e.into();
                    // tonic's own timer may fire first: the same outcome.
                    if timed_out(&*e) {
                        past_deadline(deadline)
                    } else {
                        e
                    }
                }),
                Err(_) => Err(past_deadline(deadline)),
            }
        })
    }
}

/// The error of a call that outlived `deadline`: DEADLINE_EXCEEDED (tonic
/// says CANCELLED when its own timer ends a call).
fn past_deadline(deadline: Duration) -> tower::BoxError {
    Box::new(Status::deadline_exceeded(format!(
        "no answer within the call's deadline of {deadline:?}: the participant is slow or \
         unreachable"
    )))
}

/// Whether `err` (or what caused it) is tonic's call timeout.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Where the participants listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantUrls {
    /// inventory-svc, e.g. `http://127.0.0.1:50052`.
    pub inventory: String,
    /// loyalty-svc.
    pub loyalty: String,
    /// order-svc.
    pub order: String,
}

impl Default for ParticipantUrls {
    fn default() -> Self {
        Self {
            inventory: "http://127.0.0.1:50052".into(),
            loyalty: "http://127.0.0.1:50053".into(),
            order: "http://127.0.0.1:50054".into(),
        }
    }
}

/// One of the three participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// inventory-svc.
    Inventory,
    /// loyalty-svc.
    Loyalty,
    /// order-svc.
    Order,
}

impl Peer {
    /// All of them.
    pub const ALL: [Self; 3] = [Self::Inventory, Self::Loyalty, Self::Order];

    /// Its gRPC service name (what health reports it under).
    pub fn service_name(self) -> &'static str {
        match self {
            Self::Inventory => {
                microshop_proto::inventory::v1::inventory_service_server::SERVICE_NAME
            }
            Self::Loyalty => microshop_proto::loyalty::v1::loyalty_service_server::SERVICE_NAME,
            Self::Order => microshop_proto::order::v1::order_service_server::SERVICE_NAME,
        }
    }

    /// Its name in the orchestrator's `--<name>-url` flag.
    pub fn flag_name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Loyalty => "loyalty",
            Self::Order => "order",
        }
    }

    /// The peer of a service name.
    pub fn from_service_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.service_name() == name)
    }

    fn index(self) -> usize {
        match self {
            Self::Inventory => 0,
            Self::Loyalty => 1,
            Self::Order => 2,
        }
    }
}

/// What the orchestrator's health watcher last saw of each participant,
/// shared with the engine: a saga waiting for participants is re-driven
/// once all of them are up again, and compensations against a participant
/// known to be down are put off instead of burning their budget first.
///
/// A participant never checked yet counts as up (the engine tries it).
#[derive(Debug, Default)]
pub struct PeerHealth {
    /// Per peer: 0 while down, else when it was first seen up after being
    /// down (or when first checked), Unix millis.
    up_since_ms: [std::sync::atomic::AtomicI64; 3],
    /// Per peer: whether it was ever checked.
    checked: [std::sync::atomic::AtomicBool; 3],
    /// Per peer: whether its URL answers without serving it.
    misconfigured: [std::sync::atomic::AtomicBool; 3],
}

impl PeerHealth {
    /// Records a health check of `peer`; true when it just came back up.
    pub fn report(&self, peer: Peer, up: bool, now_ms: i64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let i = peer.index();
        let first = !self.checked[i].swap(true, SeqCst);
        let was = self.up_since_ms[i].load(SeqCst);
        if up {
            if was == 0 {
                self.up_since_ms[i].store(now_ms.max(1), SeqCst);
                return !first;
            }
        } else {
            self.up_since_ms[i].store(0, SeqCst);
        }
        false
    }

    /// Records whether `peer`'s URL answers but serves another service.
    pub fn report_misconfigured(&self, peer: Peer, misconfigured: bool) {
        self.misconfigured[peer.index()].store(misconfigured, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether `peer`'s URL was last seen serving another service.
    pub fn is_misconfigured(&self, peer: Peer) -> bool {
        self.misconfigured[peer.index()].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `peer` is known to be down.
    pub fn is_down(&self, peer: Peer) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let i = peer.index();
        self.checked[i].load(SeqCst) && self.up_since_ms[i].load(SeqCst) == 0
    }

    /// Whether `peer` was seen up again after `since_ms` (it went down and
    /// came back since then).
    pub fn back_since(&self, peer: Peer, since_ms: i64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.up_since_ms[peer.index()].load(SeqCst) > since_ms
    }
}

/// A failed participant call, classified (`docs/architecture.md`, "Retries").
#[derive(Clone, Debug)]
pub enum CallError {
    /// Down, slow, overloaded or aborted: retry with backoff.
    Transient(Status),
    /// A business rejection: compensate at once.
    Rejected(Status),
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        match status.code() {
            // INTERNAL and UNKNOWN cover a participant's store failing and
            // transport-level resets; the barrier makes a retry safe.
            // UNAUTHENTICATED means our service token expired or is not yet
            // rotated in: the saga waits rather than telling the customer
            // their order was refused. UNIMPLEMENTED means the URL reaches a
            // server that does not serve this participant (a swapped port
            // in a ConfigMap) or an older version of it: a misconfigured
            // dependency, never the customer's fault.
            Code::Unauthenticated
            | Code::Unimplemented
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Internal
            | Code::Unknown => Self::Transient(status),
            Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::DataLoss => Self::Rejected(status),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, s) = match self {
            Self::Transient(s) => ("transient", s),
            Self::Rejected(s) => ("rejected", s),
        };
        write!(f, "{kind} {:?}: {}", s.code(), s.message())
    }
}

/// The participants' clients (cheap to clone: channels are shared).
#[derive(Clone, Debug)]
pub struct Participants {
    /// inventory-svc.
    pub inventory: InventoryServiceClient<Transport>,
    /// loyalty-svc.
    pub loyalty: LoyaltyServiceClient<Transport>,
    /// order-svc.
    pub order: OrderServiceClient<Transport>,
    call_timeout: Duration,
    /// `Bearer <service token>` sent on every call when authentication is on.
    authorization: Option<AsciiMetadataValue>,
}

fn channel(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Transport, tonic::transport::Error> {
    let endpoint = endpoint(url, tls)?;
    let layer = ClientTraceLayer::new(endpoint.uri());
    let channel = CallDeadline::new(endpoint.connect_lazy());
    Ok(tower::Layer::layer(&layer, channel))
}

impl Participants {
    /// Clients for `urls`; nothing is connected until the first call.
    pub fn connect_lazy(
        urls: &ParticipantUrls,
        call_timeout: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        Self::connect_lazy_with_tls(urls, call_timeout, None)
    }

    /// The same over TLS (`https://` URLs) when `tls` is set: mTLS when it
    /// carries the orchestrator's certificate.
    pub fn connect_lazy_with_tls(
        urls: &ParticipantUrls,
        call_timeout: Duration,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            inventory: InventoryServiceClient::new(channel(&urls.inventory, tls)?),
            loyalty: LoyaltyServiceClient::new(channel(&urls.loyalty, tls)?),
            order: OrderServiceClient::new(channel(&urls.order, tls)?),
            call_timeout,
            authorization: None,
        })
    }

    /// Sends `token` (a JWT with role `service`) as the bearer token of
    /// every participant call.
    pub fn with_service_token(mut self, token: &str) -> Result<Self, InvalidMetadataValue> {
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// A request carrying the per-call timeout.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.call_timeout);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }
}
