//! Clients of the three participants, and how their answers are classified.
//!
//! Channels connect lazily, so the orchestrator starts while participants
//! are down and reconnects by itself when they come back. Each call carries
//! its own timeout, so a hung participant costs one attempt, not the saga.

use std::time::Duration;

use microshop_runtime::observe::{ClientTrace, ClientTraceLayer};

use microshop_proto::{
    inventory::v1::inventory_service_client::InventoryServiceClient,
    loyalty::v1::loyalty_service_client::LoyaltyServiceClient,
    order::v1::order_service_client::OrderServiceClient,
};
use tonic::{
    Code, Request, Status,
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

/// The participants' transport: a channel whose calls carry the trace
/// context of the saga step making them.
pub type Transport = ClientTrace<Channel>;

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
    let mut endpoint = Endpoint::from_shared(url.to_owned())?;
    let layer = ClientTraceLayer::new(endpoint.uri());
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy();
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
