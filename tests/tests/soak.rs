//! Randomized soak under fault injection, and the bad-input table.
//!
//! `randomized_soak_under_faults`: the whole mesh in-process, the
//! participants wrapped in the fault layer (`microshop_runtime::faults`:
//! UNAVAILABLE and DEADLINE_EXCEEDED before the handler, delays, duplicated
//! deliveries, answers lost after the effect, actions landing after their
//! compensation). Concurrent clients place, pay for and cancel orders over
//! random SKUs (a few hot, low-stock ones), coupons (one nearly exhausted)
//! and point redemptions, resend requests with the same idempotency key,
//! race payment against cancellation and against the payment-expiry saga,
//! abort sagas that a held-back action made FAILED. Every answer must be a
//! contract answer (`docs/api.md`, "Errors"); a resent key must answer the
//! same outcome.
//!
//! Then faults are switched off, held-back actions land, FAILED sagas are
//! retried with RetrySaga, unpaid orders expire, and once nothing moves the
//! invariants of `docs/architecture.md` are checked.
//!
//! Seeded: the seed is printed (`SOAK_SEED=<n>` replays its decisions; the
//! interleaving of concurrent clients is up to the scheduler). The default
//! run makes at least 10,000 client calls; `SOAK_LONG=1` makes 200,000
//! (`SOAK_OPS=<n>` sets any count).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use microshop::invariants;
use microshop_proto::{
    inventory::v1 as inv,
    loyalty::v1 as loy,
    orchestrator::v1::{self as orch, SagaState},
    order::v1::{self as ord, OrderStatus},
};
use microshop_runtime::{
    Reason,
    faults::{FaultConfig, FaultKind, FaultStats},
};
use microshop_tests::{
    Shop, TestMesh, error_reason, eventually, order_request, saga_state, test_engine,
};
use orchestrator::EngineConfig;
use tokio::{task::JoinSet, time::Instant};
use tonic::{Code, Response, Status};

/// Client calls of the default run.
const SHORT_OPS: u64 = 10_000;
/// Client calls with `SOAK_LONG=1`.
const LONG_OPS: u64 = 200_000;
/// Faults the default run must inject at least.
const MIN_FAULTS: u64 = 1_000;
/// Concurrent clients.
const CLIENTS: u64 = 24;
/// Bound of the settling phase after the run.
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

/// Unpaid orders are cancelled after this long: short, so the expiry saga
/// races payments and cancellations during the run.
const PAYMENT_TTL: Duration = Duration::from_secs(3);

/// Budgets for a mesh under faults: a transient fault costs one quick
/// retry; only an action held back (all its retries time out) exhausts a
/// step's budget, making the saga FAILED. Compensations outlast any run of
/// bad luck.
fn soak_engine() -> EngineConfig {
    EngineConfig {
        step_attempts: 6,
        step_budget: Duration::from_secs(5),
        compensation_attempts: 60,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(100),
        call_timeout: Duration::from_millis(750),
        payment_ttl: PAYMENT_TTL,
        recovery_interval: Duration::from_millis(500),
        expiry_interval: Duration::from_millis(250),
        max_wait: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

/// The faults of the soak: about one participant call in eight.
fn soak_faults(seed: u64) -> FaultConfig {
    format!(
        "seed={seed},unavailable=0.02,deadline=0.02,delay=0.03,delay_ms=15,\
         duplicate=0.03,drop=0.03,late=0.01,late_ms=2500"
    )
    .parse()
    .expect("the soak's fault spec parses")
}

// ---------------------------------------------------------------------------
// A small seeded generator (SplitMix64).

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo + 1).unwrap_or(1);
        lo + i64::try_from(self.below(span)).unwrap_or(0)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        let i = usize::try_from(self.below(xs.len() as u64)).unwrap_or(0);
        &xs[i]
    }
}

fn seed() -> u64 {
    std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(7)
        })
}

fn target_ops() -> u64 {
    if let Some(n) = std::env::var("SOAK_OPS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return n;
    }
    if std::env::var("SOAK_LONG").is_ok_and(|v| v == "1") {
        LONG_OPS
    } else {
        SHORT_OPS
    }
}

// ---------------------------------------------------------------------------
// What the shop sells and who buys.

#[derive(Clone, Debug)]
struct Catalog {
    /// sku → unit price.
    prices: HashMap<String, i64>,
    hot: Vec<String>,
    cold: Vec<String>,
    members: Vec<String>,
    guests: Vec<String>,
    coupons: Vec<String>,
}

async fn seed_shop(m: &mut TestMesh, rng: &mut Rng) -> Catalog {
    let mut prices = HashMap::new();
    let mut hot = Vec::new();
    let mut cold = Vec::new();
    for i in 0..4 {
        let sku = format!("HOT-{i}");
        let price = rng.range(5, 60) * 10_000;
        m.put_product(&sku, price, rng.range(20, 40)).await;
        prices.insert(sku.clone(), price);
        hot.push(sku);
    }
    for i in 0..24 {
        let sku = format!("SKU-{i:02}");
        let price = rng.range(1, 90) * 10_000;
        m.put_product(&sku, price, 1_000_000).await;
        prices.insert(sku.clone(), price);
        cold.push(sku);
    }
    let mut members = Vec::new();
    for i in 0..30 {
        let c = format!("member-{i:02}");
        m.grant_points(&c, rng.range(200, 2_000)).await;
        members.push(c);
    }
    let guests: Vec<String> = (0..10).map(|i| format!("guest-{i:02}")).collect();
    for g in &guests {
        m.universe.customers.insert(g.clone());
    }
    m.put_coupon("PCT10", ord::CouponKind::Percentage, 10, 1_000_000)
        .await;
    m.put_coupon("FIX20K", ord::CouponKind::Fixed, 20_000, 400)
        .await;
    m.put_coupon("RARE", ord::CouponKind::Fixed, 10_000, 3)
        .await;
    Catalog {
        prices,
        hot,
        cold,
        members,
        guests,
        // NOSUCH does not exist: COUPON_INVALID.
        coupons: vec![
            "PCT10".into(),
            "FIX20K".into(),
            "RARE".into(),
            "NOSUCH".into(),
        ],
    }
}

// ---------------------------------------------------------------------------
// What the clients saw.

/// Outcomes and anomalies of every client call.
#[derive(Debug, Default)]
struct Tally {
    ops: AtomicU64,
    outcomes: Mutex<BTreeMap<String, u64>>,
    anomalies: Mutex<Vec<String>>,
}

impl Tally {
    fn outcome(&self, op: &str, result: &Result<(), &Status>) {
        self.ops.fetch_add(1, Ordering::SeqCst);
        let key = match result {
            Ok(()) => format!("{op} OK"),
            Err(s) => format!(
                "{op} {:?} {}",
                s.code(),
                error_reason(s).unwrap_or_else(|| "(no reason)".into())
            ),
        };
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    fn anomaly(&self, what: String) {
        eprintln!("ANOMALY: {what}");
        self.anomalies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// What a PlaceOrder key answered first.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// An order.
    Order(String),
    /// A final refusal (the saga compensated): the same on every resend.
    Refused(Code, Option<String>),
    /// Not final (UNAVAILABLE: FAILED or still running).
    Open,
}

/// Whether a resend answering `again` is consistent with its key's first
/// answer `first` (its first final one, once there is one). A final answer
/// (an order, a refusal: the saga ended) is repeated by every resend. Only
/// while the first answer was open (UNAVAILABLE: the saga FAILED or still
/// running) may a resend answer otherwise, and ABORTED only when the soak
/// itself aborted the key's saga (`aborted_by_soak`): nothing else does.
fn resend_consistent(first: &Seen, again: &Seen, aborted_by_soak: bool) -> bool {
    if first == again {
        return true;
    }
    match (first, again) {
        (Seen::Open, Seen::Refused(_, Some(reason))) if reason == "SAGA_ABORTED" => aborted_by_soak,
        (Seen::Open, _) => true,
        _ => false,
    }
}

/// Checks that `status` is a contract answer allowed for `op`; records the
/// rest.
fn check_refusal(tally: &Tally, op: &str, status: &Status, allowed: &[(Code, &[Reason])]) {
    let reason = error_reason(status);
    let known = allowed.iter().any(|(code, reasons)| {
        *code == status.code()
            && reason
                .as_deref()
                .is_some_and(|r| reasons.iter().any(|x| x.as_str() == r))
    });
    // An operator's abort answers FAILED_PRECONDITION SAGA_ABORTED to every
    // later call.
    let aborted =
        status.code() == Code::FailedPrecondition && reason.as_deref() == Some("SAGA_ABORTED");
    if !known && !aborted {
        tally.anomaly(format!(
            "{op}: unexpected {:?} {:?}: {}",
            status.code(),
            reason,
            status.message()
        ));
    }
}

const PLACE_REFUSALS: &[(Code, &[Reason])] = &[
    (
        Code::FailedPrecondition,
        &[
            Reason::OutOfStock,
            Reason::InsufficientPoints,
            Reason::NotAMember,
            Reason::CouponInvalid,
            Reason::CouponExhausted,
        ],
    ),
    (Code::InvalidArgument, &[Reason::InvalidRequest]),
    (Code::Unavailable, &[Reason::DependencyUnavailable]),
];

const ORDER_REFUSALS: &[(Code, &[Reason])] = &[
    (
        Code::FailedPrecondition,
        &[Reason::OrderNotPayable, Reason::OrderNotCancellable],
    ),
    (Code::NotFound, &[Reason::UnknownOrder]),
    (Code::Unavailable, &[Reason::DependencyUnavailable]),
];

const ADMIN_REFUSALS: &[(Code, &[Reason])] = &[
    (Code::FailedPrecondition, &[Reason::SagaNotRetryable]),
    (Code::Unavailable, &[Reason::DependencyUnavailable]),
];

/// Checks an order a successful PlaceOrder returned against its request.
fn check_order(
    tally: &Tally,
    catalog: &Catalog,
    req: &orch::PlaceOrderRequest,
    order: &ord::Order,
) {
    let mut problems = Vec::new();
    if order.customer_id != req.customer_id {
        problems.push("customer differs".to_owned());
    }
    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
    for i in &req.items {
        *want.entry(i.sku.as_str()).or_default() += i.quantity;
    }
    let mut got: BTreeMap<&str, i64> = BTreeMap::new();
    let mut items = 0;
    for l in &order.lines {
        *got.entry(l.sku.as_str()).or_default() += l.quantity;
        if catalog.prices.get(&l.sku) != Some(&l.unit_price) {
            problems.push(format!("{} priced {} (catalog)", l.sku, l.unit_price));
        }
        items += l.quantity * l.unit_price;
    }
    if want != got {
        problems.push(format!("lines {got:?}, asked {want:?}"));
    }
    if items != order.items_price {
        problems.push(format!("itemsPrice {} ≠ lines {items}", order.items_price));
    }
    if order.redeemed_points != req.points_to_redeem {
        problems.push(format!("redeemedPoints {}", order.redeemed_points));
    }
    let total = order.items_price + order.tax_price + order.shipping_price
        - order.discount_price
        - order.points_discount_price;
    if order.total_price != total || order.total_price < 0 {
        problems.push(format!("totalPrice {} ≠ {total}", order.total_price));
    }
    if !problems.is_empty() {
        tally.anomaly(format!("order {}: {}", order.order_id, problems.join("; ")));
    }
}

// ---------------------------------------------------------------------------
// One client.

struct Client {
    id: u64,
    rng: Rng,
    shop: Shop,
    catalog: Arc<Catalog>,
    tally: Arc<Tally>,
    target: u64,
    /// Ids of the orders this client placed.
    orders: Vec<String>,
    /// Keys sent: request and first outcome.
    keys: Vec<(orch::PlaceOrderRequest, Seen)>,
    /// FAILED sagas seen.
    failed: Vec<String>,
    /// Idempotency key → the saga its answers named.
    sagas: HashMap<String, String>,
    /// Sagas this client asked AbortSaga to abort.
    aborted: HashSet<String>,
    next_key: u64,
}

impl Client {
    /// Whether the run still needs calls.
    fn claim(&self) -> bool {
        self.tally.ops.load(Ordering::SeqCst) < self.target
    }

    fn new_request(&mut self) -> orch::PlaceOrderRequest {
        let rng = &mut self.rng;
        let member = rng.chance(75);
        let customer = if member {
            rng.pick(&self.catalog.members).clone()
        } else {
            rng.pick(&self.catalog.guests).clone()
        };
        let lines = rng.range(1, 3);
        let mut items = Vec::new();
        for _ in 0..lines {
            let sku = if rng.chance(40) {
                rng.pick(&self.catalog.hot).clone()
            } else {
                rng.pick(&self.catalog.cold).clone()
            };
            items.push((sku, rng.range(1, 3)));
        }
        let coupon = if rng.chance(25) {
            rng.pick(&self.catalog.coupons).clone()
        } else {
            String::new()
        };
        let points = match rng.below(100) {
            0..=24 => rng.range(1, 60),
            25..=27 => 1_000_000, // over-redemption: INVALID_ARGUMENT
            _ => 0,
        };
        self.next_key += 1;
        let key = format!("c{}-k{}", self.id, self.next_key);
        let items: Vec<(&str, i64)> = items.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        order_request(&key, &customer, &items, &coupon, points)
    }

    async fn place(&mut self, req: orch::PlaceOrderRequest, resend: Option<Seen>) -> Seen {
        let result = self
            .shop
            .clients
            .checkout
            .clone()
            .place_order(req.clone())
            .await
            .map(Response::into_inner);
        let op = if resend.is_some() {
            "PlaceOrder(resend)"
        } else {
            "PlaceOrder"
        };
        self.tally.outcome(op, &result.as_ref().map(|_| ()));
        let saga_id = match &result {
            Ok(r) => Some(r.saga_id.clone()).filter(|id| !id.is_empty()),
            Err(status) => microshop_runtime::errors::metadata_of(status, "sagaId"),
        };
        if let Some(id) = saga_id {
            self.sagas.insert(req.idempotency_key.clone(), id);
        }
        let seen = match &result {
            Ok(r) => {
                match &r.order {
                    Some(order) if r.state == SagaState::Completed as i32 => {
                        check_order(&self.tally, &self.catalog, &req, order);
                    }
                    _ => self.tally.anomaly(format!(
                        "PlaceOrder {}: OK without an order: {r:?}",
                        req.idempotency_key
                    )),
                }
                Seen::Order(r.order_id.clone())
            }
            Err(status) => {
                check_refusal(&self.tally, op, status, PLACE_REFUSALS);
                if status.code() == Code::Unavailable {
                    // A dead letter, or a saga waiting for a participant
                    // (out of budget against a held-back call): an operator
                    // may abort either.
                    let failed = microshop_runtime::errors::metadata_of(status, "sagaState")
                        .is_some_and(|s| s == SagaState::Failed.as_str_name())
                        || microshop_runtime::errors::metadata_of(status, "waitingFor").is_some();
                    if failed
                        && let Some(id) = microshop_runtime::errors::metadata_of(status, "sagaId")
                    {
                        self.failed.push(id);
                    }
                    Seen::Open
                } else {
                    Seen::Refused(status.code(), error_reason(status))
                }
            }
        };
        if let Some(first) = resend {
            let aborted_by_soak = self
                .sagas
                .get(&req.idempotency_key)
                .is_some_and(|id| self.aborted.contains(id));
            if !resend_consistent(&first, &seen, aborted_by_soak) {
                self.tally.anomaly(format!(
                    "key {} answered {first:?}, then {seen:?}",
                    req.idempotency_key
                ));
            }
        }
        if let Seen::Order(id) = &seen {
            self.orders.push(id.clone());
        }
        seen
    }

    async fn confirm(&mut self, order_id: String) {
        let result = self
            .shop
            .confirm_payment(&order_id, &format!("pay-{order_id}"))
            .await;
        self.tally
            .outcome("ConfirmPayment", &result.as_ref().map(|_| ()));
        if let Err(status) = &result {
            check_refusal(&self.tally, "ConfirmPayment", status, ORDER_REFUSALS);
        }
    }

    async fn cancel(&mut self, order_id: String) {
        let result = self.shop.cancel_order(&order_id, "changed my mind").await;
        self.tally
            .outcome("CancelOrder", &result.as_ref().map(|_| ()));
        if let Err(status) = &result {
            check_refusal(&self.tally, "CancelOrder", status, ORDER_REFUSALS);
        }
    }

    async fn abort(&mut self, saga_id: String) {
        // Counted as the soak's abort even if the answer is lost.
        self.aborted.insert(saga_id.clone());
        let result = self
            .shop
            .clients
            .admin
            .clone()
            .abort_saga(orch::AbortSagaRequest {
                saga_id,
                reason: "soak: give up on a stuck checkout".into(),
            })
            .await;
        self.tally
            .outcome("AbortSaga", &result.as_ref().map(|_| ()));
        if let Err(status) = &result {
            check_refusal(&self.tally, "AbortSaga", status, ADMIN_REFUSALS);
        }
    }

    async fn run(mut self) -> Self {
        while self.claim() {
            // A FAILED saga first: an operator aborts most, leaves the rest
            // for RetrySaga after the run.
            if let Some(saga_id) = self.failed.pop()
                && self.rng.chance(70)
            {
                self.abort(saga_id).await;
                continue;
            }
            let roll = self.rng.below(100);
            let pick_order = |c: &mut Self| {
                (!c.orders.is_empty()).then(|| {
                    let recent = c.orders.len().saturating_sub(8);
                    let i = recent
                        + usize::try_from(c.rng.below((c.orders.len() - recent) as u64))
                            .unwrap_or(0);
                    c.orders[i].clone()
                })
            };
            match roll {
                0..=51 => {
                    let req = self.new_request();
                    let seen = self.place(req.clone(), None).await;
                    self.keys.push((req, seen));
                }
                52..=71 => match pick_order(&mut self) {
                    Some(id) => self.confirm(id).await,
                    None => continue,
                },
                72..=81 => match pick_order(&mut self) {
                    Some(id) => self.cancel(id).await,
                    None => continue,
                },
                82..=84 => {
                    // Payment and cancellation race on one order.
                    let Some(id) = pick_order(&mut self) else {
                        continue;
                    };
                    let mut other = Client {
                        id: self.id,
                        rng: self.rng.clone(),
                        shop: self.shop.clone(),
                        catalog: Arc::clone(&self.catalog),
                        tally: Arc::clone(&self.tally),
                        target: self.target,
                        orders: Vec::new(),
                        keys: Vec::new(),
                        failed: Vec::new(),
                        sagas: HashMap::new(),
                        aborted: HashSet::new(),
                        next_key: 0,
                    };
                    let id2 = id.clone();
                    tokio::join!(self.confirm(id), other.cancel(id2));
                }
                85..=93 => {
                    // Resend a key: the same outcome, never a second order.
                    if self.keys.is_empty() {
                        continue;
                    }
                    let i = usize::try_from(self.rng.below(self.keys.len() as u64)).unwrap_or(0);
                    let (req, first) = self.keys[i].clone();
                    let seen = self.place(req, Some(first.clone())).await;
                    if first == Seen::Open {
                        self.keys[i].1 = seen;
                    }
                }
                94..=95 => {
                    // The same key for another cart: ALREADY_EXISTS.
                    if self.keys.is_empty() {
                        continue;
                    }
                    let i = usize::try_from(self.rng.below(self.keys.len() as u64)).unwrap_or(0);
                    let mut req = self.keys[i].0.clone();
                    req.items[0].quantity += 1;
                    let result = self.shop.clients.checkout.clone().place_order(req).await;
                    self.tally
                        .outcome("PlaceOrder(key reused)", &result.as_ref().map(|_| ()));
                    match result {
                        Err(s)
                            if s.code() == Code::AlreadyExists
                                && error_reason(&s).as_deref()
                                    == Some(Reason::IdempotencyKeyReused.as_str()) => {}
                        other => self.tally.anomaly(format!(
                            "reused key with another cart answered {:?}",
                            other.map(|r| r.into_inner().order_id)
                        )),
                    }
                }
                96..=97 => {
                    // An order that does not exist.
                    let id = format!("no-such-order-{}", self.rng.below(1_000_000));
                    if self.rng.chance(50) {
                        self.confirm(id).await;
                    } else {
                        self.cancel(id).await;
                    }
                }
                _ => {
                    // An operator looks at a saga.
                    let result = self
                        .shop
                        .clients
                        .admin
                        .clone()
                        .list_sagas(orch::ListSagasRequest {
                            state: SagaState::Failed.into(),
                            page_size: 10,
                            page_token: String::new(),
                            ..Default::default()
                        })
                        .await;
                    self.tally
                        .outcome("ListSagas", &result.as_ref().map(|_| ()));
                    if let Err(s) = result {
                        self.tally.anomaly(format!("ListSagas: {s:?}"));
                    }
                }
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------
// Settling after the run.

/// Switches faults off and waits until nothing moves: held-back actions
/// landed, FAILED sagas retried, unpaid orders expired, no saga RUNNING or
/// COMPENSATING. Returns the number of RetrySaga calls.
async fn settle(shop: &Shop, stats: &FaultStats) -> u64 {
    stats.set_enabled(false);
    eventually("held-back actions to land", SETTLE_WITHIN, || async {
        match stats.snapshot().late_in_flight {
            0 => Ok(()),
            n => Err(format!("{n} in flight")),
        }
    })
    .await;
    let retries = AtomicU64::new(0);
    eventually("the mesh to settle", SETTLE_WITHIN, || async {
        let sagas = invariants::all_sagas(&mut shop.clients.admin.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut busy = 0;
        for s in &sagas {
            match saga_state(s) {
                SagaState::Running | SagaState::Compensating => busy += 1,
                SagaState::Failed => {
                    busy += 1;
                    retries.fetch_add(1, Ordering::SeqCst);
                    let result = shop
                        .clients
                        .admin
                        .clone()
                        .retry_saga(orch::RetrySagaRequest {
                            saga_id: s.saga_id.clone(),
                            ..Default::default()
                        })
                        .await;
                    if let Err(st) = result
                        && st.code() != Code::FailedPrecondition
                    {
                        return Err(format!("RetrySaga {}: {st:?}", s.saga_id));
                    }
                }
                _ => {}
            }
        }
        if busy > 0 {
            let first: Vec<String> = sagas
                .iter()
                .filter(|s| {
                    saga_state(s) != SagaState::Completed && saga_state(s) != SagaState::Compensated
                })
                .take(3)
                .map(describe_saga)
                .collect();
            return Err(format!(
                "{busy} sagas not ended, e.g. {}",
                first.join(" | ")
            ));
        }
        // Unpaid orders: the expiry saga cancels them after the TTL.
        let mut pending = 0;
        for customer in &shop.universe.customers {
            pending += shop
                .orders_of(customer)
                .await
                .iter()
                .filter(|o| o.status == OrderStatus::PendingPayment as i32)
                .count();
        }
        if pending > 0 {
            return Err(format!("{pending} orders still awaiting payment"));
        }
        Ok(())
    })
    .await;
    retries.load(Ordering::SeqCst)
}

/// A saga in one line: type, state, reason, steps, last transitions.
fn describe_saga(s: &orch::Saga) -> String {
    let steps: Vec<String> = s
        .steps
        .iter()
        .map(|st| {
            let run = |r: &Option<orch::StepRun>| {
                r.as_ref().map_or("-".to_owned(), |r| {
                    format!(
                        "{}x{} {}",
                        orch::StepStatus::try_from(r.status)
                            .map_or("?", |x| x.as_str_name())
                            .trim_start_matches("STEP_STATUS_"),
                        r.attempts,
                        r.last_error
                    )
                })
            };
            format!(
                "{}[{} / {}]",
                st.name,
                run(&st.action),
                run(&st.compensation)
            )
        })
        .collect();
    let history: Vec<String> = s
        .history
        .iter()
        .rev()
        .take(4)
        .map(|h| format!("{h:?}"))
        .collect();
    format!(
        "saga {} {:?} {} ({}): steps {} history {}",
        s.saga_id,
        orch::SagaType::try_from(s.r#type).map_or("?", |t| t.as_str_name()),
        saga_state(s).as_str_name(),
        s.failure_reason,
        steps.join(", "),
        history.join(" <- ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_soak_under_faults() {
    let seed = seed();
    let target = target_ops();
    println!("SOAK_SEED={seed} (set it to replay this run's decisions); {target} client calls");
    let faults = soak_faults(seed);
    let stats = faults.stats();
    let mut m = TestMesh::start_with(soak_engine(), |c| {
        c.server.faults = Some(faults);
        // The soak is about interleavings, not fsync (the crash matrix
        // covers durability): commits skip the fsync, like the benchmark.
        c.durable = microshop_storage::embedded::Durable::No;
    })
    .await;
    let mut rng = Rng(seed);
    let catalog = Arc::new(seed_shop(&mut m, &mut rng).await);
    let tally = Arc::new(Tally::default());

    let started = Instant::now();
    let mut clients = JoinSet::new();
    for id in 0..CLIENTS {
        let client = Client {
            id,
            rng: Rng(seed ^ (id + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
            shop: m.shop.clone(),
            catalog: Arc::clone(&catalog),
            tally: Arc::clone(&tally),
            target,
            orders: Vec::new(),
            keys: Vec::new(),
            failed: Vec::new(),
            sagas: HashMap::new(),
            aborted: HashSet::new(),
            next_key: 0,
        };
        clients.spawn(client.run());
    }
    let mut keys = 0;
    let mut placed = 0;
    while let Some(done) = clients.join_next().await {
        let client = done.expect("a client task panicked");
        keys += client.keys.len();
        placed += client.orders.len();
    }
    let run_time = started.elapsed();
    println!("run phase: {:.1} s", run_time.as_secs_f64());
    let during = stats.snapshot();

    let retries = settle(&m, &stats).await;
    let after = stats.snapshot();
    let summary = invariants::check(&m.clients, &m.universe)
        .await
        .unwrap_or_else(|v| panic!("SOAK_SEED={seed}: {v}"));
    let sagas = m.sagas().await;
    let not_ended: Vec<String> = sagas
        .iter()
        .filter(|s| !matches!(saga_state(s), SagaState::Completed | SagaState::Compensated))
        .map(|s| {
            format!(
                "{} {}: {}",
                s.saga_id,
                saga_state(s).as_str_name(),
                s.failure_reason
            )
        })
        .collect();

    let calls: u64 = tally.outcomes.lock().map_or(0, |o| o.values().sum());
    let mut report = String::new();
    let _ = writeln!(report, "=== soak summary (SOAK_SEED={seed}) ===");
    let _ = writeln!(
        report,
        "client calls: {calls} in {:.1} s ({keys} idempotency keys, {placed} orders placed), {retries} RetrySaga calls while settling",
        run_time.as_secs_f64()
    );
    for (outcome, n) in tally.outcomes.lock().map(|o| o.clone()).unwrap_or_default() {
        let _ = writeln!(report, "  {n:>6}  {outcome}");
    }
    let _ = writeln!(report, "faults: {after}");
    let _ = writeln!(
        report,
        "  during the run: {} of {} participant saga calls",
        during.total(),
        during.seen
    );
    let _ = writeln!(
        report,
        "sagas: {:?}; orders {}; invariant checks passed: {}",
        summary.sagas_by_state, summary.orders, summary.checks
    );
    let _ = writeln!(
        report,
        "crash points: covered by microshop/tests/crash.rs (separate processes), not counted here"
    );
    let anomalies = tally
        .anomalies
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    let _ = writeln!(report, "anomalies: {}", anomalies.len());
    println!("{report}");

    assert!(
        anomalies.is_empty(),
        "SOAK_SEED={seed}: {} anomalies, first: {}",
        anomalies.len(),
        anomalies[0]
    );
    assert!(
        not_ended.is_empty(),
        "SOAK_SEED={seed}: sagas not COMPLETED or COMPENSATED after settling: {not_ended:?}"
    );
    assert!(
        calls >= target,
        "SOAK_SEED={seed}: only {calls} client calls"
    );
    if target >= SHORT_OPS {
        assert!(
            after.total() >= MIN_FAULTS,
            "SOAK_SEED={seed}: only {} faults injected",
            after.total()
        );
        for kind in FaultKind::ALL {
            assert!(
                after.of(kind) > 0,
                "SOAK_SEED={seed}: no {} fault",
                kind.as_str()
            );
        }
        assert!(
            after.late_refused > 0,
            "SOAK_SEED={seed}: no action landed after its compensation"
        );
    }
    m.shutdown().await;
}

#[test]
fn a_resend_must_repeat_a_final_answer() {
    let order = Seen::Order("o-1".into());
    let refused = Seen::Refused(Code::FailedPrecondition, Some("OUT_OF_STOCK".into()));
    let aborted = Seen::Refused(Code::FailedPrecondition, Some("SAGA_ABORTED".into()));
    let others = [
        Seen::Open,
        aborted.clone(),
        Seen::Order("o-2".into()),
        Seen::Refused(Code::FailedPrecondition, Some("COUPON_EXHAUSTED".into())),
    ];
    for first in [&order, &refused] {
        for by_soak in [false, true] {
            assert!(resend_consistent(first, first, by_soak), "{first:?} again");
            for again in &others {
                assert!(
                    !resend_consistent(first, again, by_soak),
                    "{first:?} then {again:?} (aborted by the soak: {by_soak})"
                );
            }
        }
    }
    // An open first answer: the saga may have ended since, either way...
    for again in [&Seen::Open, &order, &refused] {
        assert!(resend_consistent(&Seen::Open, again, false), "{again:?}");
    }
    // ... but aborted only by the soak's own AbortSaga.
    assert!(!resend_consistent(&Seen::Open, &aborted, false));
    assert!(resend_consistent(&Seen::Open, &aborted, true));
    // Once aborted, aborted it stays.
    assert!(resend_consistent(&aborted, &aborted, true));
    assert!(!resend_consistent(&aborted, &Seen::Open, true));
}

// ---------------------------------------------------------------------------
// The bad-input table at the public API.

/// Values no identifier may take: INVALID_ARGUMENT wherever an id goes.
fn bad_ids() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("whitespace only", "   ".into()),
        ("oversized (129 bytes)", "x".repeat(129)),
        ("oversized unicode (130 bytes)", "é".repeat(65)),
        ("huge (64 KiB)", "x".repeat(64 * 1024)),
        ("control char", "a\u{7}b".into()),
        ("NUL", "a\0b".into()),
        ("newline", "a\nb".into()),
        ("ANSI escape", "\u{1b}[31mred".into()),
        ("SQL injection", "'; DROP TABLE orders;--".into()),
    ]
}

/// Well-formed identifiers that name nothing: NOT_FOUND (or the business
/// refusal of the field), never a crash or an effect.
fn odd_ids() -> Vec<(&'static str, String)> {
    vec![
        ("emoji", "😀🛒".into()),
        ("RTL override", "abc\u{202E}fed".into()),
        ("zero-width space", "a\u{200B}b".into()),
        ("lone combining mark", "\u{0301}".into()),
        ("NoSQL operator", "{\"$gt\":\"\"}".into()),
        ("path traversal", "../../etc/passwd".into()),
        ("128 bytes of unicode", "é".repeat(64)),
    ]
}

/// Free text no field may take.
fn bad_texts(max: usize) -> Vec<(&'static str, String)> {
    vec![
        ("oversized", "x".repeat(max + 1)),
        ("control char", "a\u{7}b".into()),
        ("NUL", "a\0b".into()),
        ("ANSI escape", "\u{1b}[31mred".into()),
    ]
}

/// Out-of-range numbers for a positive or non-negative field.
fn bad_numbers(max: i64, zero_ok: bool) -> Vec<(&'static str, i64)> {
    let mut v = vec![
        ("negative", -1),
        ("i64::MIN", i64::MIN),
        ("above the maximum", max + 1),
        ("i64::MAX", i64::MAX),
    ];
    if !zero_ok {
        v.push(("zero", 0));
    }
    v
}

/// The state the table must leave as it found it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    book: (i64, i64, i64),
    points: (i64, i64, i64),
    coupon: i64,
    live_orders: usize,
}

async fn snapshot(m: &TestMesh) -> Snapshot {
    let book = m.product("BOOK").await;
    let olga = m.balance("olga").await;
    let live_orders = m
        .orders_of("olga")
        .await
        .iter()
        .filter(|o| o.status != OrderStatus::Cancelled as i32)
        .count();
    Snapshot {
        book: (book.available, book.reserved, book.sold),
        points: (olga.points, olga.deducted, olga.refunded),
        coupon: m.coupon("ONCE").await.times_used,
        live_orders,
    }
}

/// Collects every case whose answer is not `code` + `reason`.
#[derive(Default)]
struct Table {
    cases: usize,
    failures: Vec<String>,
}

impl Table {
    fn expect<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<T, Status>,
        code: Code,
        reason: Reason,
    ) {
        self.cases += 1;
        match result {
            Ok(v) => self.failures.push(format!(
                "{what}: expected {code:?} {reason}, got success {v:?}"
            )),
            Err(s) => {
                let got = error_reason(&s);
                if s.code() != code || got.as_deref() != Some(reason.as_str()) {
                    self.failures.push(format!(
                        "{what}: expected {code:?} {reason}, got {:?} {got:?}: {}",
                        s.code(),
                        s.message()
                    ));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_table_has_contract_codes_and_no_effect() {
    use Code::{FailedPrecondition, InvalidArgument, NotFound};
    use Reason::{InvalidRequest, UnknownOrder, UnknownSaga, UnknownSku};

    let mut m = TestMesh::start(test_engine()).await;
    m.put_product("BOOK", 100_000, 10).await;
    m.grant_points("olga", 1_000).await;
    m.put_coupon("ONCE", ord::CouponKind::Fixed, 10_000, 5)
        .await;
    // A real, unpaid order for the order-level RPCs to aim at.
    let real = m
        .place_ok(order_request(
            "table-real",
            "olga",
            &[("BOOK", 1)],
            "ONCE",
            10,
        ))
        .await;
    let real_order = real.order_id.clone();
    m.assert_invariants().await;
    let before = snapshot(&m).await;
    let sagas_before = m.sagas().await.len();
    // Cases that run a saga which is then refused and compensated.
    let mut refused_sagas = 0;

    let base = || order_request("table-base", "olga", &[("BOOK", 1)], "", 0);
    let mut checkout = m.clients.checkout.clone();
    let mut admin = m.clients.admin.clone();
    let mut t = Table::default();
    let place = |req: orch::PlaceOrderRequest| {
        let mut c = checkout.clone();
        async move { c.place_order(req).await.map(Response::into_inner) }
    };

    // PlaceOrder: every identifier field.
    for (what, v) in bad_ids() {
        let mut r = base();
        r.idempotency_key = v.clone();
        t.expect(
            &format!("PlaceOrder.idempotencyKey {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let mut r = base();
        r.customer_id = v.clone();
        t.expect(
            &format!("PlaceOrder.customerId {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let mut r = base();
        r.items[0].sku = v.clone();
        t.expect(
            &format!("PlaceOrder.items.sku {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (i, (what, v)) in odd_ids().into_iter().enumerate() {
        // An odd key is only a key: with an unknown SKU the saga is refused.
        let mut r = base();
        r.idempotency_key = v.clone();
        r.items[0].sku = "NO-SUCH-SKU".into();
        t.expect(
            &format!("PlaceOrder.idempotencyKey {what}"),
            place(r).await,
            NotFound,
            UnknownSku,
        );
        // An odd customer is a guest: redeeming points is refused.
        let mut r = base();
        r.idempotency_key = format!("odd-customer-{i}");
        r.customer_id = v.clone();
        r.points_to_redeem = 10;
        t.expect(
            &format!("PlaceOrder.customerId {what}"),
            place(r).await,
            FailedPrecondition,
            Reason::NotAMember,
        );
        let mut r = base();
        r.idempotency_key = format!("odd-sku-{i}");
        r.items[0].sku = v.clone();
        t.expect(
            &format!("PlaceOrder.items.sku {what}"),
            place(r).await,
            NotFound,
            UnknownSku,
        );
        let mut r = base();
        r.idempotency_key = format!("odd-coupon-{i}");
        r.coupon_code = v.clone();
        // Coupon codes are at most 64 bytes.
        if v.len() > 64 {
            t.expect(
                &format!("PlaceOrder.couponCode {what}"),
                place(r).await,
                InvalidArgument,
                InvalidRequest,
            );
            refused_sagas += 3;
        } else {
            t.expect(
                &format!("PlaceOrder.couponCode {what}"),
                place(r).await,
                FailedPrecondition,
                Reason::CouponInvalid,
            );
            refused_sagas += 4;
        }
    }
    for (what, v) in bad_ids().into_iter().skip(1) {
        let mut r = base();
        r.coupon_code = v;
        t.expect(
            &format!("PlaceOrder.couponCode {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, q) in bad_numbers(microshop_runtime::validate::MAX_QUANTITY, false) {
        let mut r = base();
        r.items[0].quantity = q;
        t.expect(
            &format!("PlaceOrder.items.quantity {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, p) in bad_numbers(microshop_runtime::validate::MAX_AMOUNT, true) {
        let mut r = base();
        r.points_to_redeem = p;
        t.expect(
            &format!("PlaceOrder.pointsToRedeem {what}"),
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    {
        let mut r = base();
        r.items.clear();
        t.expect(
            "PlaceOrder.items empty",
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let mut r = base();
        r.items = vec![
            orch::LineItem {
                sku: "BOOK".into(),
                quantity: 1
            };
            101
        ];
        t.expect(
            "PlaceOrder.items 101 lines",
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        // Many lines of one SKU whose sum overflows nothing but exceeds stock.
        let mut r = base();
        r.idempotency_key = "sum-of-lines".into();
        r.items = vec![
            orch::LineItem {
                sku: "BOOK".into(),
                quantity: 10_000
            };
            100
        ];
        t.expect(
            "PlaceOrder 100 lines of 10,000 units",
            place(r).await,
            FailedPrecondition,
            Reason::OutOfStock,
        );
        // Over-redemption: refused at the quote.
        let mut r = base();
        r.idempotency_key = "over-redeem".into();
        r.points_to_redeem = 1_000;
        t.expect(
            "PlaceOrder.pointsToRedeem over the payable",
            place(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        refused_sagas += 2;
    }
    for (field, max) in [("name", 256), ("address", 1024), ("phone", 32)] {
        for (what, v) in bad_texts(max) {
            let mut r = base();
            let s = r.shipping.as_mut().expect("base has shipping");
            match field {
                "name" => s.name = v,
                "address" => s.address = v,
                _ => s.phone = v,
            }
            t.expect(
                &format!("PlaceOrder.shipping.{field} {what}"),
                place(r).await,
                InvalidArgument,
                InvalidRequest,
            );
        }
    }
    // Past the server's message limit (256 KiB): refused by the decoder,
    // answered with the code and reason of any oversized field.
    let mut r = base();
    r.shipping.as_mut().expect("base has shipping").name = "x".repeat(300 * 1024);
    t.expect(
        "PlaceOrder over --max-message-bytes",
        place(r).await,
        InvalidArgument,
        InvalidRequest,
    );

    // ConfirmPayment and CancelOrder.
    for (what, v) in bad_ids() {
        let r = checkout
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: v.clone(),
                payment_ref: "pay-1".into(),
            })
            .await;
        t.expect(
            &format!("ConfirmPayment.orderId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = checkout
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: real_order.clone(),
                payment_ref: v.clone(),
            })
            .await;
        t.expect(
            &format!("ConfirmPayment.paymentRef {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: v.clone(),
                reason: String::new(),
            })
            .await;
        t.expect(
            &format!("CancelOrder.orderId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in odd_ids() {
        let r = checkout
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: v.clone(),
                payment_ref: v.clone(),
            })
            .await;
        t.expect(
            &format!("ConfirmPayment.orderId {what}"),
            r,
            NotFound,
            UnknownOrder,
        );
        let r = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: v.clone(),
                reason: v.clone(),
            })
            .await;
        t.expect(
            &format!("CancelOrder.orderId {what}"),
            r,
            NotFound,
            UnknownOrder,
        );
        refused_sagas += 2;
    }
    for (what, v) in bad_texts(256) {
        let r = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: real_order.clone(),
                reason: v,
            })
            .await;
        t.expect(
            &format!("CancelOrder.reason {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }

    // SagaAdminService.
    for (what, v) in bad_ids() {
        let r = admin
            .get_saga(orch::GetSagaRequest { saga_id: v.clone() })
            .await;
        t.expect(
            &format!("GetSaga.sagaId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = admin
            .retry_saga(orch::RetrySagaRequest {
                saga_id: v.clone(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("RetrySaga.sagaId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = admin
            .abort_saga(orch::AbortSagaRequest {
                saga_id: v.clone(),
                reason: String::new(),
            })
            .await;
        t.expect(
            &format!("AbortSaga.sagaId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in odd_ids() {
        let r = admin
            .get_saga(orch::GetSagaRequest { saga_id: v.clone() })
            .await;
        t.expect(&format!("GetSaga.sagaId {what}"), r, NotFound, UnknownSaga);
        let r = admin
            .retry_saga(orch::RetrySagaRequest {
                saga_id: v.clone(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("RetrySaga.sagaId {what}"),
            r,
            NotFound,
            UnknownSaga,
        );
        let r = admin
            .abort_saga(orch::AbortSagaRequest {
                saga_id: v.clone(),
                reason: v.clone(),
            })
            .await;
        t.expect(
            &format!("AbortSaga.sagaId {what}"),
            r,
            NotFound,
            UnknownSaga,
        );
    }
    for (what, v) in bad_texts(256) {
        let r = admin
            .abort_saga(orch::AbortSagaRequest {
                saga_id: real.saga_id.clone(),
                reason: v,
            })
            .await;
        t.expect(
            &format!("AbortSaga.reason {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, size) in [
        ("negative", -1),
        ("101", 101),
        ("i32::MIN", i32::MIN),
        ("i32::MAX", i32::MAX),
    ] {
        let r = admin
            .list_sagas(orch::ListSagasRequest {
                state: 0,
                page_size: size,
                page_token: String::new(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("ListSagas.pageSize {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, state) in [("negative", -1), ("unknown", 99), ("i32::MAX", i32::MAX)] {
        let r = admin
            .list_sagas(orch::ListSagasRequest {
                state,
                page_size: 0,
                page_token: String::new(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("ListSagas.state {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, token) in [
        ("letters", "abc"),
        ("negative", "-1"),
        ("u64 overflow", "18446744073709551616"),
        ("SQL injection", "'; DROP TABLE sagas;--"),
        ("NoSQL operator", "{\"$gt\":\"\"}"),
        ("NUL", "1\0"),
    ] {
        let r = admin
            .list_sagas(orch::ListSagasRequest {
                state: 0,
                page_size: 0,
                page_token: token.into(),
                ..Default::default()
            })
            .await;
        t.expect(
            &format!("ListSagas.pageToken {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }

    // The participants' admin RPCs (seeding the catalog, points, coupons).
    let mut inventory = m.clients.inventory.clone();
    let mut loyalty = m.clients.loyalty.clone();
    let mut order = m.clients.order.clone();
    let product = |sku: &str| inv::PutProductRequest {
        sku: sku.into(),
        name: "Book".into(),
        unit_price: 1_000,
        stock: 1,
    };
    for (what, v) in bad_ids() {
        let r = inventory.put_product(product(&v)).await;
        t.expect(
            &format!("PutProduct.sku {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = loyalty
            .grant_points(loy::GrantPointsRequest {
                customer_id: v.clone(),
                points: 1,
            })
            .await;
        t.expect(
            &format!("GrantPoints.customerId {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: v.clone(),
                kind: ord::CouponKind::Fixed.into(),
                value: 1,
                usage_limit: 1,
            })
            .await;
        t.expect(
            &format!("PutCoupon.code {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in bad_texts(256).into_iter().chain([("empty", String::new())]) {
        let mut r = product("BOOK");
        r.name = v;
        t.expect(
            &format!("PutProduct.name {what}"),
            inventory.put_product(r).await,
            InvalidArgument,
            InvalidRequest,
        );
    }
    let max = microshop_runtime::validate::MAX_AMOUNT;
    for (what, n) in bad_numbers(max, false) {
        let mut r = product("BOOK");
        r.unit_price = n;
        t.expect(
            &format!("PutProduct.unitPrice {what}"),
            inventory.put_product(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: "ONCE".into(),
                kind: ord::CouponKind::Fixed.into(),
                value: n,
                usage_limit: 5,
            })
            .await;
        t.expect(
            &format!("PutCoupon.value {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: "ONCE".into(),
                kind: ord::CouponKind::Fixed.into(),
                value: 10_000,
                usage_limit: n,
            })
            .await;
        t.expect(
            &format!("PutCoupon.usageLimit {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, n) in bad_numbers(max, true) {
        let mut r = product("BOOK");
        r.stock = n;
        t.expect(
            &format!("PutProduct.stock {what}"),
            inventory.put_product(r).await,
            InvalidArgument,
            InvalidRequest,
        );
        let r = loyalty
            .grant_points(loy::GrantPointsRequest {
                customer_id: "olga".into(),
                points: n,
            })
            .await;
        t.expect(
            &format!("GrantPoints.points {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, kind, value) in [
        ("percentage over 100", 1, 101),
        ("unspecified kind", 0, 10),
        ("unknown kind", 99, 10),
    ] {
        let r = order
            .put_coupon(ord::PutCouponRequest {
                code: "ONCE".into(),
                kind,
                value,
                usage_limit: 5,
            })
            .await;
        t.expect(
            &format!("PutCoupon {what}"),
            r,
            InvalidArgument,
            InvalidRequest,
        );
    }
    for (what, v) in odd_ids() {
        let r = inventory
            .get_product(inv::GetProductRequest { sku: v.clone() })
            .await;
        t.expect(&format!("GetProduct.sku {what}"), r, NotFound, UnknownSku);
        let r = order
            .get_coupon(ord::GetCouponRequest { code: v.clone() })
            .await;
        if v.len() > 64 {
            t.expect(
                &format!("GetCoupon.code {what}"),
                r,
                InvalidArgument,
                InvalidRequest,
            );
        } else {
            t.expect(
                &format!("GetCoupon.code {what}"),
                r,
                NotFound,
                Reason::UnknownCoupon,
            );
        }
    }

    assert!(
        t.failures.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        t.failures.len(),
        t.cases,
        t.failures.join("\n")
    );
    // Nothing changed: same stock, points, coupon use and live orders; the
    // only new sagas are the refused ones, all compensated.
    m.quiesce().await;
    assert_eq!(
        snapshot(&m).await,
        before,
        "the bad inputs changed the shop"
    );
    let sagas = m.sagas().await;
    assert_eq!(
        sagas.len(),
        sagas_before + refused_sagas,
        "validation refusals must start no saga; refused ones start exactly one"
    );
    for s in &sagas {
        if s.saga_id != real.saga_id {
            assert_eq!(saga_state(s), SagaState::Compensated, "{s:#?}");
        }
    }
    assert_eq!(
        m.order(&real_order).await.status,
        OrderStatus::PendingPayment as i32
    );
    let summary = m.assert_invariants().await;
    println!(
        "bad-input table: {} cases, {} with the wrong answer; invariant checks passed: {}",
        t.cases,
        t.failures.len(),
        summary.checks
    );
    assert!(
        t.failures.is_empty(),
        "{} cases answered wrongly:\n{}",
        t.failures.len(),
        t.failures.join("\n")
    );
    m.shutdown().await;
}

// ---------------------------------------------------------------------------
// Regressions the soak caught.

/// Caught by the soak: a CancelOrder landing between a payment's mark-paid
/// and its commit-stock released the reservation, so commit-stock was
/// refused and the payment saga ended FAILED ("mark-paid cannot be
/// undone") with the order cancelled under it. Payment and cancellation
/// sagas of one order now take turns.
///
/// The payment is held at CommitStock (the fault layer's gate) until the
/// cancellation's saga is logged, so the cancellation always comes
/// mid-payment: no timing decides whether the test tests anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_racing_a_cancellation_never_strands_the_payment() {
    let faults: FaultConfig = "seed=1,only=CommitStock".parse().expect("a valid spec");
    let stats = faults.stats();
    let mut m = TestMesh::start_with(test_engine(), |c| c.server.faults = Some(faults)).await;
    m.put_product("LAMP", 300_000, 5).await;
    let placed = m
        .place_ok(order_request(
            "race-pay-cancel",
            "rita",
            &[("LAMP", 2)],
            "",
            0,
        ))
        .await;
    let order_id = placed.order_id.clone();

    stats.close_gate();
    let pay = tokio::spawn({
        let shop = m.shop.clone();
        let id = order_id.clone();
        async move { shop.confirm_payment(&id, "pay-race").await }
    });
    eventually(
        "the payment to wait at CommitStock, past mark-paid",
        SETTLE_WITHIN,
        || async {
            match stats.at_gate() {
                0 => Err("nothing at the gate".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    let cancel = tokio::spawn({
        let shop = m.shop.clone();
        let id = order_id.clone();
        async move { shop.cancel_order(&id, "changed my mind").await }
    });
    eventually(
        "the cancellation's saga to be logged",
        SETTLE_WITHIN,
        || async {
            let sagas = m.sagas().await;
            if sagas
                .iter()
                .any(|s| s.r#type == orch::SagaType::CancelOrder as i32)
            {
                Ok(())
            } else {
                Err(format!("{} sagas, no cancellation", sagas.len()))
            }
        },
    )
    .await;
    assert!(!pay.is_finished(), "the payment is still held");
    stats.open_gate();
    let pay = pay.await.expect("the payment task");
    let cancel = cancel.await.expect("the cancellation task");

    let pay = pay.unwrap_or_else(|s| panic!("payment: {s:?}"));
    assert_eq!(pay.state, SagaState::Completed as i32, "{pay:?}");
    let cancel = cancel.unwrap_or_else(|s| panic!("cancellation: {s:?}"));
    assert_eq!(cancel.state, SagaState::Completed as i32, "{cancel:?}");
    assert_eq!(
        m.order(&order_id).await.status,
        OrderStatus::Cancelled as i32
    );
    let lamp = m.product("LAMP").await;
    assert_eq!(
        (lamp.available, lamp.reserved, lamp.sold, lamp.restocked),
        (5, 0, 2, 2),
        "paid, then restocked by the cancellation: {lamp:?}"
    );
    m.assert_invariants().await;
    assert!(m.sagas_in(SagaState::Failed).await.is_empty());
    m.shutdown().await;
}
