//! Fault injection for participant servers (tests and chaos drills only).
//!
//! A tower layer, enabled by configuration (`--faults SPEC` or
//! `MICROSHOP_FAULTS`) and absent otherwise: with no configuration the
//! server's stack holds no trace of it. It injects, per request and with the
//! configured probabilities, the failures a saga must survive
//! (`docs/architecture.md`, "Retries" and "The participant barrier"):
//!
//! - `unavailable` / `deadline`: UNAVAILABLE or DEADLINE_EXCEEDED *before*
//!   the handler, so nothing happened;
//! - `delay`: the handler runs after a pause of `delay_ms`/2 to `delay_ms`;
//! - `duplicate`: the request is delivered twice (one after the other, or
//!   both at once), the second answer is returned;
//! - `drop`: the handler runs and its effect is applied, then the answer is
//!   lost (UNAVAILABLE), so the caller's retry must hit the barrier;
//! - `late`: a saga action (ReserveStock, DeductPoints, CreateOrder) is held
//!   back for `late_ms` and delivered on its own task, while the caller gets
//!   DEADLINE_EXCEEDED once its own deadline passes; until the held action
//!   lands, the caller's retries of that action for that saga time out too,
//!   so the saga gives up on the step and may be compensated before its
//!   action lands: the barrier must then refuse the action (anti-hanging).
//!
//! Only the RPCs the orchestrator calls on participants are touched
//! (classified by the HTTP/2 path); health, reflection, seeding and reads by
//! operators pass through. Decisions come from a seeded generator indexed by
//! a request counter, so a seed gives the same sequence of decisions.
//! Counters live in a shared [`FaultStats`] that tests read (and use to
//! switch injection off at run time).
//!
//! The spec is comma-separated `key=value` pairs, e.g.
//! `seed=7,unavailable=0.03,deadline=0.03,delay=0.05,delay_ms=20,duplicate=0.04,drop=0.04,late=0.01,late_ms=2000`;
//! probabilities are in `[0, 1]` and sum to at most 1. `only=CommitStock|MarkPaid`
//! restricts injection to those RPCs (a regression test's scalpel).
//!
//! A test may also close a gate ([`FaultStats::close_gate`]): while it is
//! closed, every request faults apply to waits before its handler until
//! the test opens it again. That freezes a saga at one call for as long as
//! the test needs to make something else happen meanwhile, where a delay
//! would only make it likely. Open unless a test closes it: a closed gate
//! is never part of a spec, and an open one costs one atomic load.

use std::{
    collections::HashSet,
    fmt,
    pin::Pin,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tonic::{
    Code, Status,
    body::Body,
    codegen::{Bytes, http},
};
use tower::{Layer, Service, ServiceExt};

use crate::errors::{Reason, reason_of, rich_status};

/// The saga actions a `late` fault may hold back.
const ACTIONS: &[&str] = &[
    "/microshop.inventory.v1.InventoryService/ReserveStock",
    "/microshop.loyalty.v1.LoyaltyService/DeductPoints",
    "/microshop.order.v1.OrderService/CreateOrder",
];

/// Every RPC the orchestrator sends to a participant (steps, compensations
/// and the reads of its steps): the ones faults are injected into.
const SAGA_RPCS: &[&str] = &[
    "/microshop.inventory.v1.InventoryService/ReserveStock",
    "/microshop.inventory.v1.InventoryService/ReleaseStock",
    "/microshop.inventory.v1.InventoryService/CommitStock",
    "/microshop.inventory.v1.InventoryService/GetProducts",
    "/microshop.loyalty.v1.LoyaltyService/DeductPoints",
    "/microshop.loyalty.v1.LoyaltyService/RefundPoints",
    "/microshop.loyalty.v1.LoyaltyService/EarnPoints",
    "/microshop.order.v1.OrderService/CreateOrder",
    "/microshop.order.v1.OrderService/CancelOrder",
    "/microshop.order.v1.OrderService/MarkPaid",
    "/microshop.order.v1.OrderService/QuoteOrder",
    "/microshop.order.v1.OrderService/GetOrder",
];

/// A kind of injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// UNAVAILABLE before the handler.
    Unavailable,
    /// DEADLINE_EXCEEDED before the handler.
    Deadline,
    /// A pause before the handler.
    Delay,
    /// The request delivered twice.
    Duplicate,
    /// The effect applied, the answer lost.
    Drop,
    /// A saga action held back past the caller's deadline.
    Late,
    /// A retry refused (DEADLINE_EXCEEDED) while its action is held back.
    Held,
}

impl FaultKind {
    /// Every kind, in counter order.
    pub const ALL: [Self; 7] = [
        Self::Unavailable,
        Self::Deadline,
        Self::Delay,
        Self::Duplicate,
        Self::Drop,
        Self::Late,
        Self::Held,
    ];

    /// Its name in specs and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Deadline => "deadline",
            Self::Delay => "delay",
            Self::Duplicate => "duplicate",
            Self::Drop => "drop",
            Self::Late => "late",
            Self::Held => "held",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one fault configuration, shared by every server using it.
#[derive(Debug, Default)]
pub struct FaultStats {
    disabled: AtomicBool,
    next: AtomicU64,
    seen: AtomicU64,
    injected: [AtomicU64; 7],
    late_in_flight: AtomicU64,
    late_refused: AtomicU64,
    late_accepted: AtomicU64,
    late_rejected: AtomicU64,
    held: Mutex<HashSet<(&'static str, String)>>,
    gate_closed: AtomicBool,
    at_gate: AtomicU64,
    gate: Notify,
}

/// A snapshot of [`FaultStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests eligible for a fault while injection was on.
    pub seen: u64,
    /// Faults injected, by [`FaultKind`] order.
    pub injected: [u64; 7],
    /// Held actions not yet delivered.
    pub late_in_flight: u64,
    /// Held actions that landed after their compensation and were refused
    /// (SAGA_ALREADY_COMPENSATED): the anti-hanging rule at work.
    pub late_refused: u64,
    /// Held actions that landed first (applied, or replayed by the barrier).
    pub late_accepted: u64,
    /// Held actions that landed and were rejected for a business reason.
    pub late_rejected: u64,
}

impl FaultCounts {
    /// Faults of `kind`.
    pub fn of(&self, kind: FaultKind) -> u64 {
        self.injected[kind.index()]
    }

    /// Every injected fault.
    pub fn total(&self) -> u64 {
        self.injected.iter().sum()
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} faults in {} eligible requests (",
            self.total(),
            self.seen
        )?;
        for (i, kind) in FaultKind::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", kind.as_str(), self.of(*kind))?;
        }
        write!(
            f,
            "); late actions: {} refused after their compensation, {} accepted, {} rejected, {} in flight",
            self.late_refused, self.late_accepted, self.late_rejected, self.late_in_flight
        )
    }
}

impl FaultStats {
    /// Whether faults are being injected.
    pub fn enabled(&self) -> bool {
        !self.disabled.load(Ordering::SeqCst)
    }

    /// Switches injection on or off (held actions still land on time).
    pub fn set_enabled(&self, on: bool) {
        self.disabled.store(!on, Ordering::SeqCst);
    }

    /// Current counters.
    pub fn snapshot(&self) -> FaultCounts {
        let mut injected = [0; 7];
        for (slot, counter) in injected.iter_mut().zip(&self.injected) {
            *slot = counter.load(Ordering::SeqCst);
        }
        FaultCounts {
            seen: self.seen.load(Ordering::SeqCst),
            injected,
            late_in_flight: self.late_in_flight.load(Ordering::SeqCst),
            late_refused: self.late_refused.load(Ordering::SeqCst),
            late_accepted: self.late_accepted.load(Ordering::SeqCst),
            late_rejected: self.late_rejected.load(Ordering::SeqCst),
        }
    }

    fn count(&self, kind: FaultKind) {
        self.injected[kind.index()].fetch_add(1, Ordering::SeqCst);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<(&'static str, String)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the gate: from now on, requests faults apply to wait before
    /// their handler until [`FaultStats::open_gate`].
    pub fn close_gate(&self) {
        self.gate_closed.store(true, Ordering::SeqCst);
    }

    /// Opens the gate and lets every waiting request through.
    pub fn open_gate(&self) {
        self.gate_closed.store(false, Ordering::SeqCst);
        self.gate.notify_waiters();
    }

    /// Requests waiting at the closed gate now.
    pub fn at_gate(&self) -> u64 {
        self.at_gate.load(Ordering::SeqCst)
    }

    /// Waits while the gate is closed.
    async fn pass_gate(&self) {
        if !self.gate_closed.load(Ordering::SeqCst) {
            return;
        }
        // Counted while waiting, also when the caller gives up and the
        // request is dropped here.
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.at_gate.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.at_gate);
        loop {
            // Registered before the check, so an opening in between is
            // not missed.
            let mut opened = std::pin::pin!(self.gate.notified());
            opened.as_mut().enable();
            if !self.gate_closed.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

/// What to inject, with the shared counters. Cloning shares the counters.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Seed of the decisions.
    pub seed: u64,
    /// Probability of UNAVAILABLE before the handler.
    pub unavailable: f64,
    /// Probability of DEADLINE_EXCEEDED before the handler.
    pub deadline: f64,
    /// Probability of a pause before the handler.
    pub delay: f64,
    /// Longest pause.
    pub max_delay: Duration,
    /// Probability of a duplicated delivery.
    pub duplicate: f64,
    /// Probability of a lost answer after the effect.
    pub drop: f64,
    /// Probability (on saga actions only) of a late delivery.
    pub late: f64,
    /// How long a late action is held back.
    pub late_delay: Duration,
    /// Method names (e.g. `CommitStock`) to restrict injection to; empty
    /// for every saga RPC.
    pub only: Vec<String>,
    stats: Arc<FaultStats>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            unavailable: 0.0,
            deadline: 0.0,
            delay: 0.0,
            max_delay: Duration::from_millis(20),
            duplicate: 0.0,
            drop: 0.0,
            late: 0.0,
            late_delay: Duration::from_secs(2),
            only: Vec::new(),
            stats: Arc::default(),
        }
    }
}

/// A fault spec that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad fault spec {spec:?}: {why}")]
pub struct FaultSpecError {
    spec: String,
    why: String,
}

impl FromStr for FaultConfig {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |why: String| FaultSpecError {
            spec: spec.to_owned(),
            why,
        };
        let mut c = Self::default();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| err(format!("{pair:?} is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            let prob = || -> Result<f64, FaultSpecError> {
                match value.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(err(format!("{key} must be a probability in [0, 1]"))),
                }
            };
            let int = || -> Result<u64, FaultSpecError> {
                value
                    .parse::<u64>()
                    .map_err(|_| err(format!("{key} must be a whole number")))
            };
            match key {
                "seed" => c.seed = int()?,
                "unavailable" => c.unavailable = prob()?,
                "deadline" => c.deadline = prob()?,
                "delay" => c.delay = prob()?,
                "delay_ms" => c.max_delay = Duration::from_millis(int()?),
                "duplicate" => c.duplicate = prob()?,
                "drop" => c.drop = prob()?,
                "late" => c.late = prob()?,
                "late_ms" => c.late_delay = Duration::from_millis(int()?),
                "only" => {
                    c.only = value
                        .split('|')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if let Some(m) = c.only.iter().find(|m| {
                        !SAGA_RPCS
                            .iter()
                            .any(|p| p.rsplit('/').next() == Some(m.as_str()))
                    }) {
                        return Err(err(format!("{m:?} is not a saga RPC of a participant")));
                    }
                }
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        let sum = c.unavailable + c.deadline + c.delay + c.duplicate + c.drop + c.late;
        if sum > 1.0 + 1e-9 {
            return Err(err(format!("probabilities sum to {sum}, more than 1")));
        }
        Ok(c)
    }
}

impl fmt::Display for FaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={},unavailable={},deadline={},delay={},delay_ms={},duplicate={},drop={},late={},late_ms={}",
            self.seed,
            self.unavailable,
            self.deadline,
            self.delay,
            self.max_delay.as_millis(),
            self.duplicate,
            self.drop,
            self.late,
            self.late_delay.as_millis()
        )?;
        if !self.only.is_empty() {
            write!(f, ",only={}", self.only.join("|"))?;
        }
        Ok(())
    }
}

impl FaultConfig {
    /// The shared counters (and on/off switch).
    pub fn stats(&self) -> Arc<FaultStats> {
        Arc::clone(&self.stats)
    }

    /// The layer injecting these faults.
    pub fn layer(&self) -> FaultLayer {
        FaultLayer {
            config: Arc::new(self.clone()),
        }
    }

    /// The fault (if any) for the `n`-th eligible request.
    fn decide(&self, n: u64, action: bool) -> Option<(FaultKind, u64)> {
        let r = splitmix64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // 53 random bits as a float in [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let u = (r >> 11) as f64 / (1u64 << 53) as f64;
        let extra = splitmix64(r);
        let table = [
            (FaultKind::Unavailable, self.unavailable),
            (FaultKind::Deadline, self.deadline),
            (FaultKind::Delay, self.delay),
            (FaultKind::Duplicate, self.duplicate),
            (FaultKind::Drop, self.drop),
            (FaultKind::Late, if action { self.late } else { 0.0 }),
        ];
        let mut edge = 0.0;
        for (kind, p) in table {
            edge += p;
            if u < edge {
                return Some((kind, extra));
            }
        }
        None
    }
}

/// SplitMix64: a tiny, well-mixed generator (no dependency needed).
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The tower layer of [`FaultConfig`].
#[derive(Clone, Debug)]
pub struct FaultLayer {
    config: Arc<FaultConfig>,
}

impl<S> Layer<S> for FaultLayer {
    type Service = Faults<S>;
    fn layer(&self, inner: S) -> Faults<S> {
        Faults {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service injecting faults in front of `S`.
#[derive(Clone, Debug)]
pub struct Faults<S> {
    inner: S,
    config: Arc<FaultConfig>,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

/// `saga_id` (field 1) of a participant step request; other fields are
/// skipped by prost.
#[derive(Clone, PartialEq, prost::Message)]
struct SagaIdOnly {
    #[prost(string, tag = "1")]
    saga_id: String,
}

impl<S> Service<Request> for Faults<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The readied service handles this request; a fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        let path = SAGA_RPCS
            .iter()
            .copied()
            .find(|p| *p == req.uri().path())
            .filter(|p| {
                config.only.is_empty()
                    || config
                        .only
                        .iter()
                        .any(|m| p.rsplit('/').next() == Some(m.as_str()))
            });
        match path {
            Some(path) if config.stats.enabled() => Box::pin(inject(config, path, inner, req)),
            _ => {
                let mut inner = inner;
                Box::pin(async move { inner.call(req).await })
            }
        }
    }
}

async fn call<S>(mut svc: S, req: Request) -> Result<Response, S::Error>
where
    S: Service<Request, Response = Response>,
{
    svc.ready().await?;
    svc.call(req).await
}

fn injected(kind: FaultKind, path: &str) -> Response {
    let (code, reason, message) = match kind {
        FaultKind::Unavailable | FaultKind::Drop => (
            Code::Unavailable,
            Reason::DependencyUnavailable,
            "injected fault: unavailable; retry",
        ),
        _ => (
            Code::DeadlineExceeded,
            Reason::DeadlineExceeded,
            "injected fault: deadline exceeded; retry",
        ),
    };
    rich_status(
        code,
        reason,
        message,
        [
            ("fault", kind.as_str().to_owned()),
            ("rpc", path.to_owned()),
        ],
        None,
    )
    .into_http()
}

/// Buffers the body so the request can be delivered more than once.
async fn buffer(req: Request) -> Result<(http::request::Parts, Bytes), Status> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok((parts, bytes))
}

fn rebuild(parts: &http::request::Parts, bytes: &Bytes) -> Request {
    http::Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())))
}

/// The saga id of a buffered unary gRPC request (5-byte frame header, then
/// the message; uncompressed, as the orchestrator sends it).
fn saga_id_of(bytes: &Bytes) -> Option<String> {
    use prost::Message;
    let (header, message) = (bytes.get(..5)?, bytes.get(5..)?);
    if header[0] != 0 {
        return None;
    }
    SagaIdOnly::decode(message).ok().map(|m| m.saga_id)
}

/// The caller's deadline from `grpc-timeout`, if it sent one.
fn caller_deadline(parts: &http::request::Parts) -> Option<Duration> {
    let s = parts.headers.get("grpc-timeout")?.to_str().ok()?;
    crate::deadline::parse_grpc_timeout(s)
}

async fn inject<S>(
    config: Arc<FaultConfig>,
    path: &'static str,
    inner: S,
    req: Request,
) -> Result<Response, S::Error>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
{
    let stats = &config.stats;
    stats.pass_gate().await;
    let action = ACTIONS.contains(&path);
    let (parts, bytes) = match buffer(req).await {
        Ok(buffered) => buffered,
        Err(status) => return Ok(status.into_http()),
    };
    let saga_id = if action { saga_id_of(&bytes) } else { None };

    // A retry of an action held back: it times out as the first try did.
    if let Some(id) = &saga_id
        && stats.held().contains(&(path, id.clone()))
    {
        stats.count(FaultKind::Held);
        return Ok(injected(FaultKind::Held, path));
    }

    stats.seen.fetch_add(1, Ordering::SeqCst);
    let n = stats.next.fetch_add(1, Ordering::SeqCst);
    let Some((kind, extra)) = config.decide(n, saga_id.is_some()) else {
        return call(inner, rebuild(&parts, &bytes)).await;
    };
    stats.count(kind);
    tracing::debug!(rpc = path, fault = kind.as_str(), "injecting a fault");
    match kind {
        FaultKind::Unavailable | FaultKind::Deadline | FaultKind::Held => Ok(injected(kind, path)),
        FaultKind::Delay => {
            // Between half the longest pause and the longest.
            let max = u64::try_from(config.max_delay.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let pause = max / 2 + extra % (max - max / 2 + 1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            call(inner, rebuild(&parts, &bytes)).await
        }
        FaultKind::Duplicate => {
            if extra % 2 == 0 {
                // One after the other: the second is a replay.
                drop(call(inner.clone(), rebuild(&parts, &bytes)).await?);
                call(inner, rebuild(&parts, &bytes)).await
            } else {
                // Both at once: the barrier's unique record decides.
                let first = tokio::spawn(call(inner.clone(), rebuild(&parts, &bytes)));
                let second = call(inner, rebuild(&parts, &bytes)).await;
                drop(first.await);
                second
            }
        }
        FaultKind::Drop => {
            drop(call(inner, rebuild(&parts, &bytes)).await?);
            Ok(injected(kind, path))
        }
        FaultKind::Late => {
            let Some(id) = saga_id else {
                return call(inner, rebuild(&parts, &bytes)).await;
            };
            stats.held().insert((path, id.clone()));
            stats.late_in_flight.fetch_add(1, Ordering::SeqCst);
            let hold = config.late_delay;
            let late = rebuild(&parts, &bytes);
            let config2 = Arc::clone(&config);
            // Detached: the caller giving up must not cancel the delivery.
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let stats = &config2.stats;
                let outcome = call(inner, late).await;
                let status = match &outcome {
                    Ok(resp) => Status::from_header_map(resp.headers()),
                    Err(_) => Some(Status::unavailable("transport")),
                };
                match status {
                    None => stats.late_accepted.fetch_add(1, Ordering::SeqCst),
                    Some(s) if s.code() == Code::Ok => {
                        stats.late_accepted.fetch_add(1, Ordering::SeqCst)
                    }
                    Some(s) if reason_of(&s) == Some(Reason::SagaAlreadyCompensated) => {
                        stats.late_refused.fetch_add(1, Ordering::SeqCst)
                    }
                    Some(_) => stats.late_rejected.fetch_add(1, Ordering::SeqCst),
                };
                stats.held().remove(&(path, id));
                stats.late_in_flight.fetch_sub(1, Ordering::SeqCst);
            });
            // The caller sees its call time out, as when the network holds
            // a request: wait out its deadline (never longer than the hold).
            if let Some(wait) = caller_deadline(&parts) {
                tokio::time::sleep(wait.min(hold)).await;
            }
            Ok(injected(kind, path))
        }
    }
}

#[cfg(test)]
mod tests;
