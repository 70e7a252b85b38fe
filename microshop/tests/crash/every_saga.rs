//! The matrix over every saga type (checkout, payment, cancellation,
//! expiry): a crashed orchestrator, or the participant the next call goes
//! to crashed with it.

use super::*;

/// A saga operation as the failpoints name it: a step's action, or the
/// compensation `name` of step `step`.
#[derive(Clone, Copy, Debug)]
struct Op {
    name: &'static str,
    step: &'static str,
    compensation: bool,
}

const fn act(name: &'static str) -> Op {
    Op {
        name,
        step: name,
        compensation: false,
    }
}

const fn undo(name: &'static str, step: &'static str) -> Op {
    Op {
        name,
        step,
        compensation: true,
    }
}

const PLACE_OPS: &[Op] = &[
    act("quote"),
    act("reserve-stock"),
    act("deduct-points"),
    act("create-order"),
];
/// A checkout whose create-order is rejected (coupon exhausted), then
/// compensated in reverse.
const REJECTED_OPS: &[Op] = &[
    act("quote"),
    act("reserve-stock"),
    act("deduct-points"),
    act("create-order"),
    undo("cancel-order", "create-order"),
    undo("refund-points", "deduct-points"),
    undo("release-stock", "reserve-stock"),
];
const CONFIRM_OPS: &[Op] = &[
    act("load-order"),
    act("mark-paid"),
    act("commit-stock"),
    act("earn-points"),
];
const CANCEL_OPS: &[Op] = &[
    act("load-order"),
    act("cancel-order"),
    act("release-stock"),
    act("refund-points"),
];

/// The participants an operation calls, in call order (quote reads the
/// catalog on inventory-svc, then prices on order-svc).
fn targets(op: &str) -> &'static [Svc] {
    match op {
        "quote" => &[Svc::Inventory, Svc::Order],
        "reserve-stock" | "release-stock" | "commit-stock" => &[Svc::Inventory],
        "deduct-points" | "refund-points" | "earn-points" => &[Svc::Loyalty],
        "create-order" | "cancel-order" | "load-order" | "mark-paid" => &[Svc::Order],
        other => panic!("no operation {other}"),
    }
}

/// A saga type under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A checkout that completes.
    Place,
    /// A checkout rejected at create-order and compensated.
    Rejected,
    /// ConfirmPayment of an unpaid order.
    Confirm,
    /// CancelOrder of an unpaid order.
    Cancel,
    /// The payment expiry of an unpaid order (a cancel saga keyed
    /// `expire:ORDER`), started by the orchestrator itself.
    Expire,
}

impl Kind {
    fn ops(self) -> &'static [Op] {
        match self {
            Self::Place => PLACE_OPS,
            Self::Rejected => REJECTED_OPS,
            Self::Confirm => CONFIRM_OPS,
            Self::Cancel | Self::Expire => CANCEL_OPS,
        }
    }

    /// The operations whose boundaries this kind crashes at (a rejected
    /// checkout's forward steps are a completing checkout's).
    fn crashed_ops(self) -> std::ops::Range<usize> {
        match self {
            Self::Rejected => 3..REJECTED_OPS.len(),
            _ => 0..self.ops().len(),
        }
    }

    fn ends(self) -> orch::SagaState {
        match self {
            Self::Rejected => orch::SagaState::Compensated,
            _ => orch::SagaState::Completed,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Place => "place",
            Self::Rejected => "rejected",
            Self::Confirm => "confirm",
            Self::Cancel => "cancel",
            Self::Expire => "expire",
        }
    }
}

/// What one matrix test works over: a SKU, a coupon with uses to spare
/// and (unless payments expire) a coupon whose only use is spent.
struct Fixture {
    sku: String,
    open: String,
    spent: String,
}

async fn fixture(c: &MeshClients, u: &mut Universe, tag: &str, spent: bool) -> Fixture {
    let fx = Fixture {
        sku: format!("{tag}-SKU"),
        open: format!("{tag}-OPEN"),
        spent: format!("{tag}-SPENT"),
    };
    put_product(c, u, &fx.sku, 100_000).await;
    put_coupon(c, u, &fx.open, 100_000).await;
    if spent {
        put_coupon(c, u, &fx.spent, 1).await;
        let seed = format!("{tag}-seed");
        u.customers.insert(seed.clone());
        place_ok(c, place(&seed, &seed, &fx.sku, &fx.spent, 0)).await;
        assert_eq!(coupon(c, &fx.spent).await.times_used, 1);
    }
    fx
}

/// One saga to crash, and the state it starts from.
struct Subject {
    kind: Kind,
    who: String,
    /// The checkout (the call of Place and Rejected; placed beforehand for
    /// Confirm and Cancel; placed under the crashing orchestrator for
    /// Expire).
    req: orch::PlaceOrderRequest,
    /// The order acted on (for Expire, known once placed).
    order_id: String,
    /// The call that runs the saga (none for Expire).
    call: Option<Call>,
    /// The coupon the order uses, if any.
    code: String,
    product: inv::GetProductResponse,
    balance: loy::GetBalanceResponse,
    uses: i64,
}

impl Subject {
    async fn new(kind: Kind, c: &MeshClients, u: &mut Universe, fx: &Fixture, who: &str) -> Self {
        grant(c, u, who).await;
        let code = match kind {
            Kind::Place => "",
            Kind::Rejected => &fx.spent,
            Kind::Confirm | Kind::Cancel | Kind::Expire => &fx.open,
        };
        let req = place(who, who, &fx.sku, code, REDEEM);
        let (order_id, call) = match kind {
            Kind::Place | Kind::Rejected => (String::new(), Some(Call::Place(req.clone()))),
            Kind::Confirm | Kind::Cancel => {
                let order_id = place_ok(c, req.clone()).await.order_id;
                let call = if kind == Kind::Confirm {
                    Call::Confirm {
                        order_id: order_id.clone(),
                    }
                } else {
                    Call::Cancel {
                        order_id: order_id.clone(),
                    }
                };
                (order_id, Some(call))
            }
            Kind::Expire => (String::new(), None),
        };
        let uses = if code.is_empty() {
            0
        } else {
            coupon(c, code).await.times_used
        };
        Self {
            kind,
            who: who.to_owned(),
            req,
            order_id,
            call,
            code: code.to_owned(),
            product: product(c, &fx.sku).await,
            balance: balance(c, who).await,
            uses,
        }
    }

    fn key(&self) -> String {
        match &self.call {
            Some(call) => call.key(),
            None => format!("expire:{}", self.order_id),
        }
    }

    /// After the saga ended: the same call answers the same outcome, and
    /// every effect was applied exactly once (or, compensated, not at all).
    async fn verify(&self, saga: &orch::Saga, c: &MeshClients, what: &str) {
        assert_eq!(
            saga.state,
            self.kind.ends() as i32,
            "{what}: {}",
            describe(saga)
        );
        let sku = &self.product.sku;
        let p = product(c, sku).await;
        let b = balance(c, &self.who).await;
        let b0 = &self.balance;
        let p0 = &self.product;
        let stock = (p.available, p.reserved, p.sold);
        match self.kind {
            Kind::Place => {
                for _ in 0..2 {
                    let again = place_ok(c, self.req.clone()).await;
                    assert_eq!(again.saga_id, saga.saga_id, "{what}");
                    assert_eq!(again.order_id, saga.order_id, "{what}");
                    assert_eq!(again.state, orch::SagaState::Completed as i32, "{what}");
                }
                let orders = orders_of(c, &self.who).await;
                assert_eq!(orders.len(), 1, "{what}: orders {orders:?}");
                assert_eq!(orders[0].order_id, saga.order_id, "{what}");
                assert_eq!(
                    (b.points, b.deducted, b.refunded),
                    (GRANT - REDEEM, REDEEM, 0),
                    "{what}: {b:?}"
                );
                assert_eq!(
                    stock,
                    (p0.available - 1, p0.reserved + 1, p0.sold),
                    "{what}: {p:?}"
                );
            }
            Kind::Rejected => {
                let mut seen = Vec::new();
                for _ in 0..2 {
                    let err = c
                        .checkout
                        .clone()
                        .place_order(with_deadline(self.req.clone(), Duration::from_secs(20)))
                        .await
                        .expect_err("a compensated checkout answers its rejection");
                    assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
                    assert_eq!(reason_of(&err), Some(Reason::CouponExhausted), "{what}");
                    seen.push((err.code(), err.message().to_owned()));
                }
                assert_eq!(seen[0], seen[1], "{what}: retries answered differently");
                assert!(
                    orders_of(c, &self.who).await.is_empty(),
                    "{what}: an order exists"
                );
                assert_eq!(
                    (b.points, b.deducted, b.refunded),
                    (GRANT, REDEEM, REDEEM),
                    "{what}: {b:?}"
                );
                assert_eq!(stock, (p0.available, p0.reserved, p0.sold), "{what}: {p:?}");
            }
            Kind::Confirm => {
                self.retry_call(c, what).await;
                let o = order(c, &self.order_id).await;
                assert_eq!(o.status, ord::OrderStatus::Paid as i32, "{what}: {o:?}");
                assert_eq!(
                    stock,
                    (p0.available, p0.reserved - 1, p0.sold + 1),
                    "{what}: {p:?}"
                );
                let earned = o.total_price / 100_000;
                assert_eq!(
                    (b.points, b.earned, b.deducted, b.refunded),
                    (b0.points + earned, b0.earned + earned, REDEEM, 0),
                    "{what}: {b:?}"
                );
            }
            Kind::Cancel | Kind::Expire => {
                if self.kind == Kind::Cancel {
                    self.retry_call(c, what).await;
                }
                let o = order(c, &self.order_id).await;
                assert_eq!(
                    o.status,
                    ord::OrderStatus::Cancelled as i32,
                    "{what}: {o:?}"
                );
                // An expiry's "before" is read before the order was placed.
                let want = if self.kind == Kind::Cancel {
                    (p0.available + 1, p0.reserved - 1, p0.sold)
                } else {
                    (p0.available, p0.reserved, p0.sold)
                };
                assert_eq!(stock, want, "{what}: {p:?}");
                assert_eq!(
                    (b.points, b.deducted, b.refunded, b.earned),
                    (GRANT, REDEEM, REDEEM, 0),
                    "{what}: {b:?}"
                );
            }
        }
        // The coupon: a cancelled order gave its use back once (an expiry's
        // count was read before the order took it); a paid order keeps it;
        // a rejected checkout never took one.
        if !self.code.is_empty() {
            let want = match self.kind {
                Kind::Cancel => self.uses - 1,
                Kind::Place | Kind::Rejected | Kind::Confirm | Kind::Expire => self.uses,
            };
            assert_eq!(
                coupon(c, &self.code).await.times_used,
                want,
                "{what}: coupon {}",
                self.code
            );
        }
        // One saga per key, and no other payment or cancellation of the order.
        if !self.order_id.is_empty() {
            let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
            let on_order: Vec<&str> = sagas
                .iter()
                .filter(|s| s.order_id == self.order_id && s.idempotency_key != self.who)
                .map(|s| s.idempotency_key.as_str())
                .collect();
            assert_eq!(
                on_order,
                [self.key().as_str()],
                "{what}: sagas of the order"
            );
        }
    }

    async fn retry_call(&self, c: &MeshClients, what: &str) {
        let call = self.call.clone().expect("a call");
        for _ in 0..2 {
            call.clone()
                .send(c.clone())
                .await
                .unwrap_or_else(|s| panic!("{what}: retry: {s:?}"));
        }
    }
}

fn op_run(saga: &orch::Saga, op: Op) -> &orch::StepRun {
    if op.compensation {
        compensation(saga, op.step)
            .unwrap_or_else(|| panic!("{} never ran: {}", op.name, describe(saga)))
    } else {
        action(saga, op.step)
    }
}

/// Every operation ran to its end state, the crashed one (`index`)
/// `attempts_after(phase)` times, the one after it as `attempts_of` says,
/// every other once.
fn assert_resumed(kind: Kind, saga: &orch::Saga, index: usize, phase: &str, what: &str) {
    let calls: Vec<&str> = kind.ops().iter().map(|op| op.name).collect();
    for op in kind.ops() {
        let run = op_run(saga, *op);
        let rejected = kind == Kind::Rejected && op.name == "create-order";
        let status = if rejected {
            orch::StepStatus::Failed
        } else {
            orch::StepStatus::Succeeded
        };
        assert_eq!(
            run.status,
            resumed_status(op.name, calls[index], phase, status),
            "{what}: {}",
            describe(saga)
        );
        let want = attempts_of(op.name, calls[index], phase, &calls);
        assert_eq!(
            run.attempts,
            want,
            "{what}: {}: {}",
            op.name,
            describe(saga)
        );
    }
    if kind != Kind::Rejected {
        assert!(
            saga.steps.iter().all(|s| s.compensation.is_none()),
            "{what}: compensated: {}",
            describe(saga)
        );
    }
}

/// Parks the saga of `s` at failpoint `point` (restarting the orchestrator
/// with it and sending the call, or for an expiry placing the order and
/// letting it expire), SIGKILLs `down` (a participant, or none but the
/// orchestrator) and the orchestrator, restarts the orchestrator without
/// the failpoint. A killed participant is restarted on its port and data
/// once `wait` (an operation and its attempt count) was reached, or once
/// the saga ended when the saga needs it no more. Returns the ended saga.
async fn crash_case(
    cluster: &mut Cluster,
    s: &mut Subject,
    point: &str,
    down: Svc,
    wait: Option<(Op, u32)>,
) -> (orch::Saga, MeshClients) {
    cluster
        .restart(Svc::Orchestrator, &["--failpoint", point])
        .await;
    let pending = match &s.call {
        Some(call) => Some(call.clone().spawn(cluster.clients())),
        None => {
            // Placing passes none of the cancel saga's points.
            s.order_id = place_ok(&cluster.clients(), s.req.clone()).await.order_id;
            None
        }
    };
    let key = s.key();
    cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {point} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    if down != Svc::Orchestrator {
        cluster.kill(down);
    }
    cluster.kill(Svc::Orchestrator);
    if let Some(pending) = pending {
        match timeout(Duration::from_secs(10), pending).await {
            Ok(Ok(Ok(()))) => {
                panic!("{key}: the call succeeded although the saga was held at {point}")
            }
            Ok(Ok(Err(_))) => {}
            Ok(Err(e)) => panic!("{key}: the call task failed: {e}"),
            Err(_) => panic!("{key}: the call did not end after the orchestrator was killed"),
        }
    }
    cluster.start_svc(Svc::Orchestrator, &[]).await;
    let c = cluster.clients();
    let saga = saga_by_key(&c, &key)
        .await
        .unwrap_or_else(|| panic!("{key}: no saga logged before the crash at {point}"));
    if down != Svc::Orchestrator {
        match wait {
            Some((op, n)) => wait_attempts(&c, &key, op.step, op.compensation, n).await,
            None => drop(wait_settled(&c, &saga.saga_id).await),
        }
        cluster.start_svc(down, &[]).await;
    }
    let c = cluster.clients();
    let saga = wait_settled(&c, &saga.saga_id).await;
    (saga, c)
}

/// Runs the orchestrator crash matrix of `kind`: every boundary of every
/// operation, one fresh customer each.
async fn orchestrator_cases(
    cluster: &mut Cluster,
    u: &mut Universe,
    fx: &Fixture,
    kind: Kind,
    tally: &mut Tally,
) {
    let started = std::time::Instant::now();
    for i in kind.crashed_ops() {
        let op = kind.ops()[i];
        for phase in PHASES {
            let point = format!("{phase}:{}", op.name);
            let what = format!("{} orchestrator killed at {point}", kind.tag());
            let who = format!("o-{}-{phase}-{}", kind.tag(), op.name);
            let c = cluster.clients();
            let mut s = Subject::new(kind, &c, u, fx, &who).await;
            let (saga, c) = crash_case(cluster, &mut s, &point, Svc::Orchestrator, None).await;
            assert_resumed(kind, &saga, i, phase, &what);
            s.verify(&saga, &c, &what).await;
            tally.check(&c, u, &what).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("{what}: ok at {:?}", started.elapsed());
        }
    }
}

/// Runs the participant crash matrix of `kind`: at every boundary of every
/// operation, the participant the next call goes to (at `rpc:`, the one
/// that just answered) is SIGKILLed with the orchestrator, and comes back
/// only after the resumed saga retried against it.
async fn participant_cases(
    cluster: &mut Cluster,
    u: &mut Universe,
    fx: &Fixture,
    kind: Kind,
    tally: &mut Tally,
) {
    let started = std::time::Instant::now();
    let ops = kind.ops();
    for i in kind.crashed_ops() {
        let op = ops[i];
        for phase in PHASES {
            // (who is killed, which operation then retries against it and
            // to how many attempts; its index)
            let (downs, wait): (&[Svc], Option<(Op, u32, usize)>) = match (phase, ops.get(i + 1)) {
                ("result", Some(next)) => (targets(next.name), Some((*next, 2, i + 1))),
                // Nothing calls out after the last result: kill the one
                // that answered last; the saga ends without it.
                ("result", None) => (&targets(op.name)[targets(op.name).len() - 1..], None),
                _ => (targets(op.name), Some((op, 3, i))),
            };
            for &down in downs {
                // A quote not asked again on resume: the first later
                // operation on the killed participant meets it instead.
                let wait = match wait {
                    Some((o, _, j)) if skipped_on_resume(o.name, op.name, phase) => ops
                        .iter()
                        .enumerate()
                        .skip(j + 1)
                        .find(|(_, later)| targets(later.name).contains(&down))
                        .map(|(k, later)| (*later, 2, k)),
                    other => other,
                };
                let point = format!("{phase}:{}", op.name);
                let what = format!("{} {} killed at {point}", kind.tag(), down.name());
                let who = format!("p-{}-{phase}-{}-{}", kind.tag(), op.name, down.name());
                let c = cluster.clients();
                let mut s = Subject::new(kind, &c, u, fx, &who).await;
                let (saga, c) = crash_case(
                    cluster,
                    &mut s,
                    &point,
                    down,
                    wait.map(|(op, n, _)| (op, n)),
                )
                .await;
                // Resumed where it stopped; the operation that met the dead
                // participant retried until it was back.
                let retried = wait.map(|(_, n, j)| (j, n));
                for (j, o) in ops.iter().enumerate() {
                    let run = op_run(&saga, *o);
                    let done_before = if phase == "result" { j <= i } else { j < i };
                    if done_before {
                        assert_eq!(run.attempts, 1, "{what}: {}: {}", o.name, describe(&saga));
                    }
                    if let Some((r, n)) = retried
                        && r == j
                    {
                        assert!(run.attempts >= n, "{what}: {}: {}", o.name, describe(&saga));
                        // It met the dead participant (the error stays).
                        assert!(
                            !run.last_error.is_empty(),
                            "{what}: {} never failed: {}",
                            o.name,
                            describe(&saga)
                        );
                    }
                }
                s.verify(&saga, &c, &what).await;
                tally.check(&c, u, &what).await;
                tally.survived(down);
                eprintln!("{what}: ok at {:?}", started.elapsed());
            }
        }
    }
}

/// Engine flags of the expiry tests: orders go unpaid for 1 s, checked
/// every 100 ms.
const EXPIRY_FLAGS: &[&str] = &["--payment-ttl-secs", "1", "--expiry-interval-ms", "100"];

fn with_expiry(engine: &[&'static str]) -> Vec<&'static str> {
    engine.iter().chain(EXPIRY_FLAGS).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_and_cancel_resume_after_crash() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("confirm_and_cancel_resume_after_crash");
    let mut cluster = Cluster::builder().orchestrator(MATRIX_ENGINE).start().await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-OCC", false).await;
    for kind in [Kind::Confirm, Kind::Cancel] {
        orchestrator_cases(&mut cluster, &mut u, &fx, kind, &mut tally).await;
    }
    eprintln!("confirm and cancel crashes in {:?}", started.elapsed());
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_resumes_after_crash() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("expiry_resumes_after_crash");
    let mut cluster = Cluster::builder()
        .orchestrator(with_expiry(MATRIX_ENGINE))
        .start()
        .await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-OEX", false).await;
    orchestrator_cases(&mut cluster, &mut u, &fx, Kind::Expire, &mut tally).await;
    eprintln!("expiry crashes in {:?}", started.elapsed());
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_crash_matrix_checkout() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("participant_crash_matrix_checkout");
    let mut cluster = Cluster::builder().orchestrator(OUTAGE_ENGINE).start().await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-PCK", true).await;
    for kind in [Kind::Place, Kind::Rejected] {
        participant_cases(&mut cluster, &mut u, &fx, kind, &mut tally).await;
    }
    eprintln!("checkout participant crashes in {:?}", started.elapsed());
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_crash_matrix_confirm_cancel() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("participant_crash_matrix_confirm_cancel");
    let mut cluster = Cluster::builder().orchestrator(OUTAGE_ENGINE).start().await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-PCC", false).await;
    for kind in [Kind::Confirm, Kind::Cancel] {
        participant_cases(&mut cluster, &mut u, &fx, kind, &mut tally).await;
    }
    eprintln!(
        "confirm/cancel participant crashes in {:?}",
        started.elapsed()
    );
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_crash_matrix_expiry() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("participant_crash_matrix_expiry");
    let mut cluster = Cluster::builder()
        .orchestrator(with_expiry(OUTAGE_ENGINE))
        .start()
        .await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-PEX", false).await;
    participant_cases(&mut cluster, &mut u, &fx, Kind::Expire, &mut tally).await;
    eprintln!("expiry participant crashes in {:?}", started.elapsed());
    tally.report();
}
