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

/// A failed participant call, classified (ARCHITECTURE §5).
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
            // rotated in: the saga waits (or goes FAILED) rather than
            // telling the customer their order was refused.
            Code::Unauthenticated
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
            | Code::Unimplemented
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
