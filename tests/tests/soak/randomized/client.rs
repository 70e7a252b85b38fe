//! The soak's clients: what each call may answer, what a resent key must
//! answer again, and the tally of outcomes and anomalies.

use super::*;

/// Outcomes and anomalies of every client call.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) ops: AtomicU64,
    pub(super) outcomes: Mutex<BTreeMap<String, u64>>,
    pub(super) anomalies: Mutex<Vec<String>>,
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
pub(super) enum Seen {
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
pub(super) fn resend_consistent(first: &Seen, again: &Seen, aborted_by_soak: bool) -> bool {
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
pub(super) fn check_refusal(
    tally: &Tally,
    op: &str,
    status: &Status,
    allowed: &[(Code, &[Reason])],
) {
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

pub(super) const PLACE_REFUSALS: &[(Code, &[Reason])] = &[
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

pub(super) const ORDER_REFUSALS: &[(Code, &[Reason])] = &[
    (
        Code::FailedPrecondition,
        &[Reason::OrderNotPayable, Reason::OrderNotCancellable],
    ),
    (Code::NotFound, &[Reason::UnknownOrder]),
    (Code::Unavailable, &[Reason::DependencyUnavailable]),
];

pub(super) const ADMIN_REFUSALS: &[(Code, &[Reason])] = &[
    (Code::FailedPrecondition, &[Reason::SagaNotRetryable]),
    (Code::Unavailable, &[Reason::DependencyUnavailable]),
];

/// Checks an order a successful PlaceOrder returned against its request.
pub(super) fn check_order(
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

pub(super) struct Client {
    pub(super) id: u64,
    pub(super) rng: Rng,
    pub(super) shop: Shop,
    pub(super) catalog: Arc<Catalog>,
    pub(super) tally: Arc<Tally>,
    pub(super) target: u64,
    /// Ids of the orders this client placed.
    pub(super) orders: Vec<String>,
    /// Keys sent: request and first outcome.
    pub(super) keys: Vec<(orch::PlaceOrderRequest, Seen)>,
    /// FAILED sagas seen.
    pub(super) failed: Vec<String>,
    /// Idempotency key → the saga its answers named.
    pub(super) sagas: HashMap<String, String>,
    /// Sagas this client asked AbortSaga to abort.
    pub(super) aborted: HashSet<String>,
    pub(super) next_key: u64,
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

    pub(super) async fn run(mut self) -> Self {
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
