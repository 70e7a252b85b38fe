//! Crash tests over the real binary: every service runs as its own
//! `microshop serve <service>` process on a loopback port with its own data
//! directory, and is killed with SIGKILL at the orchestrator's failpoints
//! (`--failpoint PHASE:OP`, which prints `FAILPOINT PHASE:OP reached` and
//! holds) or in the middle of a saga. After a restart on the same port and
//! data directory, every saga must end COMPLETED or COMPENSATED with its
//! effects applied exactly once, a retry with the same idempotency key must
//! answer the same outcome, and the invariants of `docs/architecture.md`
//! must hold.
//!
//! The matrix covers every step boundary (`intent:`, `rpc:`, `result:`) of
//! every saga type: checkout (completing, and rejected then compensated),
//! payment, cancellation and payment expiry. At each, the orchestrator is
//! SIGKILLed; and, separately, the participant the next call goes to (at
//! `rpc:`, the one that just answered) is SIGKILLed with it and comes back
//! only after the resumed saga retried against it. Failpoint names are
//! operation names shared between sagas, so every case runs one saga at a
//! time. Each matrix test prints (uncaptured) the crash points survived by
//! process and the invariant checks passed, for itself and for the binary
//! so far.
//!
//! The processes are the shared harness's ([`cluster::Cluster`]); the
//! tests that need a MongoDB of their own (several orchestrators on one
//! saga log, the database going away) are in `crash_mongodb.rs`.
//!
//! Nothing waits on a sleep for state: every wait is bounded polling (of
//! health, GetSaga, or a service's stderr).

mod cluster;

use std::{
    io::Write,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use cluster::{Cluster, Svc, shop::*};
use microshop::{
    invariants::{Universe, all_sagas},
    mesh::MeshClients,
};
use microshop_proto::{
    inventory::v1 as inv, loyalty::v1 as loy, orchestrator::v1 as orch, order::v1 as ord,
};
use microshop_runtime::{Reason, errors::reason_of};
use tokio::{task::JoinHandle, time::timeout};
use tonic::{Code, Status};

/// How long a failpoint may take to be reached.
const FAILPOINT_WITHIN: Duration = Duration::from_secs(30);

/// Budgets that outlast a participant restart: a step keeps retrying for
/// 15 s (a PlaceOrder client waits 20 s), compensations nearly forever.
const OUTAGE_ENGINE: &[&str] = &[
    "--step-attempts",
    "1000",
    "--step-budget-ms",
    "15000",
    "--compensation-attempts",
    "1000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "200",
    "--call-timeout-ms",
    "2000",
    "--recovery-interval-ms",
    "200",
    // A restarted orchestrator is the same owner of saga leases (as a
    // container restarted in its pod), so on a shared MongoDB log it
    // resumes its sagas at once instead of after their leases expire.
    "--orchestrator-id",
    "crash-test-orchestrator",
];

/// [`assert_invariants`], counted for the matrix summary ([`CHECKS`]).
async fn check_invariants(c: &MeshClients, u: &Universe, when: &str) {
    assert_invariants(c, u, when).await;
    CHECKS.fetch_add(1, Ordering::SeqCst);
}

/// A call that runs a saga.
#[derive(Clone, Debug)]
enum Call {
    Place(orch::PlaceOrderRequest),
    Confirm { order_id: String },
    Cancel { order_id: String },
}

impl Call {
    /// The idempotency key of its saga.
    fn key(&self) -> String {
        match self {
            Self::Place(r) => r.idempotency_key.clone(),
            Self::Confirm { order_id } => format!("confirm:{order_id}"),
            Self::Cancel { order_id } => format!("cancel:{order_id}"),
        }
    }

    /// Sends it once (deadline 20 s); the error, if any.
    async fn send(self, c: MeshClients) -> Result<(), Status> {
        let deadline = Duration::from_secs(20);
        match self {
            Self::Place(r) => c
                .checkout
                .clone()
                .place_order(with_deadline(r, deadline))
                .await
                .map(drop),
            Self::Confirm { order_id } => c
                .checkout
                .clone()
                .confirm_payment(with_deadline(
                    orch::ConfirmPaymentRequest {
                        order_id,
                        payment_ref: "crash-pay".into(),
                    },
                    deadline,
                ))
                .await
                .map(drop),
            Self::Cancel { order_id } => c
                .checkout
                .clone()
                .cancel_order(with_deadline(
                    orch::CancelOrderRequest {
                        order_id,
                        reason: "crash test".into(),
                    },
                    deadline,
                ))
                .await
                .map(drop),
        }
    }

    fn spawn(self, c: MeshClients) -> JoinHandle<Result<(), Status>> {
        tokio::spawn(self.send(c))
    }
}

/// Restarts the orchestrator with `--failpoint point`, sends `call`, waits
/// for the failpoint, SIGKILLs the orchestrator, restarts it without the
/// failpoint (same port and data) and waits for the saga to end. Returns
/// the ended saga and clients connected to the new orchestrator.
async fn crash_at(cluster: &mut Cluster, point: &str, call: Call) -> (orch::Saga, MeshClients) {
    cluster
        .restart(Svc::Orchestrator, &["--failpoint", point])
        .await;
    let key = call.key();
    let pending = call.spawn(cluster.clients());
    cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {point} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    cluster.kill(Svc::Orchestrator);
    expect_cut_off(pending, &key, point).await;
    cluster.start_svc(Svc::Orchestrator, &[]).await;
    let c = cluster.clients();
    let saga = saga_by_key(&c, &key)
        .await
        .unwrap_or_else(|| panic!("{key}: no saga logged before the crash at {point}"));
    let saga = wait_settled(&c, &saga.saga_id).await;
    (saga, c)
}

/// The call `pending` (key `key`) was held at failpoint `point` when the
/// orchestrator was SIGKILLed: it must end with the transport's error (the
/// connection died under it), never with an answer of the server's (those
/// carry an ErrorInfo reason).
async fn expect_cut_off(pending: JoinHandle<Result<(), Status>>, key: &str, point: &str) {
    match timeout(Duration::from_secs(10), pending).await {
        Ok(Ok(Ok(()))) => panic!("{key}: the call succeeded although the saga was held at {point}"),
        Ok(Ok(Err(status))) => assert!(
            reason_of(&status).is_none() && status.code() != Code::DeadlineExceeded,
            "{key}: killed at {point}, the call ended {:?} ({:?}) instead of losing its \
             connection: {}",
            status.code(),
            reason_of(&status),
            status.message()
        ),
        Ok(Err(e)) => panic!("{key}: the call task failed: {e}"),
        Err(_) => panic!("{key}: the call did not end after the orchestrator was killed"),
    }
}

const PLACE_STEPS: [&str; 4] = ["quote", "reserve-stock", "deduct-points", "create-order"];
const PHASES: [&str; 3] = ["intent", "rpc", "result"];
/// The calls of a checkout whose create-order is rejected, in order.
const COMPENSATION_CALLS: [&str; 4] = [
    "create-order",
    "cancel-order",
    "refund-points",
    "release-stock",
];

/// Attempts the crashed operation must show: an intent or rpc crash lost
/// the result, so the operation ran once more; a result crash did not.
fn attempts_after(phase: &str) -> u32 {
    if phase == "result" { 1 } else { 2 }
}

/// Whether operation `op` is not asked again when the saga resumes after a
/// crash at `phase:crashed`: the checkout's quote, whose answer no
/// participant keeps, is skipped when its answer was not recorded
/// (create-order repeats its checks).
fn skipped_on_resume(op: &str, crashed: &str, phase: &str) -> bool {
    op == "quote" && crashed == "quote" && phase != "result"
}

/// The status operation `op` ends with in a saga resumed after a crash at
/// `phase:crashed` that otherwise ends as `status` says.
fn resumed_status(op: &str, crashed: &str, phase: &str, status: orch::StepStatus) -> i32 {
    if skipped_on_resume(op, crashed, phase) {
        orch::StepStatus::Skipped as i32
    } else {
        status as i32
    }
}

/// Attempts operation `op` must show after a crash at `phase:crashed`, the
/// saga's calls being `calls` in order. Besides the crashed operation
/// itself, a result is saved in one write with the next call's intent, so
/// a crash right after it replays that next call: a second attempt.
fn attempts_of(op: &str, crashed: &str, phase: &str, calls: &[&str]) -> u32 {
    if skipped_on_resume(op, crashed, phase) {
        1
    } else if op == crashed {
        attempts_after(phase)
    } else if phase == "result" && calls.windows(2).any(|w| w == [crashed, op]) {
        2
    } else {
        1
    }
}

// ---------------------------------------------------------------------------
// 1. Orchestrator crash matrix over the checkout saga
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrator_crash_matrix() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("orchestrator_crash_matrix");
    let mut cluster = Cluster::builder().orchestrator(MATRIX_ENGINE).start().await;
    let mut c = cluster.clients();
    let mut u = Universe::default();
    let sku = "CRASH-WIDGET";
    let code = "CRASH-LASTONE";
    put_product(&c, &mut u, sku, 1_000).await;
    put_coupon(&c, &mut u, code, 1).await;
    // The coupon's only use goes to this order, so any later create-order
    // with it is rejected (COUPON_EXHAUSTED) and the saga compensates.
    u.customers.insert("crash-seed".into());
    place_ok(&c, place("crash-seed", "crash-seed", sku, code, 0)).await;
    assert_eq!(coupon(&c, code).await.times_used, 1);

    // Forward path: crash at every boundary of every step; the saga resumes
    // where it stopped and completes, each effect applied once.
    for step in PLACE_STEPS {
        for phase in PHASES {
            let point = format!("{phase}:{step}");
            let who = format!("fwd-{phase}-{step}");
            grant(&c, &mut u, &who).await;
            let stock_before = product(&c, sku).await;
            let req = place(&who, &who, sku, "", REDEEM);
            let (saga, c2) = crash_at(&mut cluster, &point, Call::Place(req.clone())).await;
            c = c2;
            assert_eq!(
                saga.state,
                orch::SagaState::Completed as i32,
                "{point}: {}",
                describe(&saga)
            );
            assert!(!saga.order_id.is_empty(), "{point}: no order id");
            // Resumed where it stopped: earlier steps were not run again.
            for s in PLACE_STEPS {
                let run = action(&saga, s);
                assert_eq!(
                    run.status,
                    resumed_status(s, step, phase, orch::StepStatus::Succeeded),
                    "{point}: {}",
                    describe(&saga)
                );
                let want = attempts_of(s, step, phase, &PLACE_STEPS);
                assert_eq!(run.attempts, want, "{point}: {s}: {}", describe(&saga));
                assert!(
                    compensation(&saga, s).is_none(),
                    "{point}: {s} compensated: {}",
                    describe(&saga)
                );
            }
            // A retry with the same key answers the same order, twice.
            for _ in 0..2 {
                let again = place_ok(&c, req.clone()).await;
                assert_eq!(again.saga_id, saga.saga_id, "{point}");
                assert_eq!(again.order_id, saga.order_id, "{point}");
                assert_eq!(again.state, orch::SagaState::Completed as i32, "{point}");
                let o = again.order.expect("PlaceOrder returns the order");
                assert_eq!(o.redeemed_points, REDEEM, "{point}");
            }
            // Effects exactly once.
            let orders = orders_of(&c, &who).await;
            assert_eq!(orders.len(), 1, "{point}: orders {orders:?}");
            assert_eq!(orders[0].order_id, saga.order_id, "{point}");
            let b = balance(&c, &who).await;
            assert_eq!(
                (b.points, b.deducted, b.refunded),
                (GRANT - REDEEM, REDEEM, 0),
                "{point}: {b:?}"
            );
            let p = product(&c, sku).await;
            assert_eq!(p.reserved, stock_before.reserved + 1, "{point}: {p:?}");
            assert_eq!(p.available, stock_before.available - 1, "{point}: {p:?}");
            tally.check(&c, &u, &point).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("forward {point}: ok at {:?}", started.elapsed());
        }
    }

    // Compensation path: create-order is rejected (coupon exhausted), so
    // cancel-order, refund-points and release-stock run; crash at every
    // boundary of the rejected step and of each compensation. The saga must
    // end COMPENSATED with nothing held.
    for comp in COMPENSATION_CALLS {
        for phase in PHASES {
            let point = format!("{phase}:{comp}");
            let who = format!("comp-{phase}-{comp}");
            grant(&c, &mut u, &who).await;
            let stock_before = product(&c, sku).await;
            let req = place(&who, &who, sku, code, REDEEM);
            let (saga, c2) = crash_at(&mut cluster, &point, Call::Place(req.clone())).await;
            c = c2;
            assert_eq!(
                saga.state,
                orch::SagaState::Compensated as i32,
                "{point}: {}",
                describe(&saga)
            );
            assert_eq!(
                saga.error.as_ref().map(|e| e.reason.as_str()),
                Some("COUPON_EXHAUSTED"),
                "{point}: {}",
                describe(&saga)
            );
            for (step, undo) in [
                ("reserve-stock", "release-stock"),
                ("deduct-points", "refund-points"),
                ("create-order", "cancel-order"),
            ] {
                let run = compensation(&saga, step)
                    .unwrap_or_else(|| panic!("{point}: {undo} never ran: {}", describe(&saga)));
                assert_eq!(
                    run.status,
                    orch::StepStatus::Succeeded as i32,
                    "{point}: {}",
                    describe(&saga)
                );
                let want = attempts_of(undo, comp, phase, &COMPENSATION_CALLS);
                assert_eq!(run.attempts, want, "{point}: {undo}: {}", describe(&saga));
            }
            let rejected = action(&saga, "create-order");
            assert_eq!(
                rejected.status,
                orch::StepStatus::Failed as i32,
                "{point}: {}",
                describe(&saga)
            );
            let want = attempts_of("create-order", comp, phase, &COMPENSATION_CALLS);
            assert_eq!(rejected.attempts, want, "{point}: {}", describe(&saga));
            // A retry answers the same rejection, every time.
            let mut seen = Vec::new();
            for _ in 0..2 {
                let err = c
                    .checkout
                    .clone()
                    .place_order(with_deadline(req.clone(), Duration::from_secs(20)))
                    .await
                    .expect_err("a compensated checkout answers its rejection");
                assert_eq!(err.code(), Code::FailedPrecondition, "{point}: {err:?}");
                assert_eq!(reason_of(&err), Some(Reason::CouponExhausted), "{point}");
                seen.push((err.code(), err.message().to_owned()));
            }
            assert_eq!(seen[0], seen[1], "{point}: retries answered differently");
            // Nothing held: stock, points and the coupon are as before.
            assert!(
                orders_of(&c, &who).await.is_empty(),
                "{point}: an order exists"
            );
            let b = balance(&c, &who).await;
            assert_eq!(
                (b.points, b.deducted, b.refunded),
                (GRANT, REDEEM, REDEEM),
                "{point}: {b:?}"
            );
            let p = product(&c, sku).await;
            assert_eq!(
                (p.available, p.reserved, p.sold),
                (
                    stock_before.available,
                    stock_before.reserved,
                    stock_before.sold
                ),
                "{point}: {p:?}"
            );
            assert_eq!(coupon(&c, code).await.times_used, 1, "{point}");
            tally.check(&c, &u, &point).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("compensation {point}: ok at {:?}", started.elapsed());
        }
    }
    eprintln!(
        "orchestrator crash matrix: 24 crashes in {:?}",
        started.elapsed()
    );
    tally.report();
}

// ---------------------------------------------------------------------------
// 2. The matrix over every saga type: a crashed orchestrator or participant
// ---------------------------------------------------------------------------

/// Crash points survived, by the process SIGKILLed at the point (indexed
/// like [`svc_index`]), and invariant checks passed, over every test of
/// this binary.
static SURVIVED: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
static CHECKS: AtomicUsize = AtomicUsize::new(0);

fn svc_index(svc: Svc) -> usize {
    match svc {
        Svc::Orchestrator | Svc::Peer(_) => 0,
        Svc::Inventory => 1,
        Svc::Loyalty => 2,
        Svc::Order => 3,
    }
}

/// One matrix test's count of crash points survived and checks passed.
struct Tally {
    test: &'static str,
    survived: [usize; 4],
    checks: usize,
}

impl Tally {
    fn new(test: &'static str) -> Self {
        Self {
            test,
            survived: [0; 4],
            checks: 0,
        }
    }

    /// A crash point where `svc` was SIGKILLed ended with its invariants.
    fn survived(&mut self, svc: Svc) {
        self.survived[svc_index(svc)] += 1;
        SURVIVED[svc_index(svc)].fetch_add(1, Ordering::SeqCst);
    }

    /// Checks the invariants and counts the check.
    async fn check(&mut self, c: &MeshClients, u: &Universe, when: &str) {
        check_invariants(c, u, when).await;
        self.checks += 1;
    }

    /// Prints this test's counts and the running totals of the binary.
    /// Straight to the stderr handle, which the test harness does not
    /// capture, so the summary shows in a plain `cargo test`.
    fn report(&self) {
        let line = |n: [usize; 4], checks: usize| {
            format!(
                "{} crash points survived (orchestrator: {}, inventory: {}, loyalty: {}, order: {}), \
                 invariant checks: {checks}, violations: 0",
                n.iter().sum::<usize>(),
                n[0],
                n[1],
                n[2],
                n[3]
            )
        };
        let total = std::array::from_fn(|i| SURVIVED[i].load(Ordering::SeqCst));
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}: {}", self.test, line(self.survived, self.checks));
        let _ = writeln!(
            err,
            "crash matrix: {}",
            line(total, CHECKS.load(Ordering::SeqCst))
        );
    }
}

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

// ---------------------------------------------------------------------------
// 3. A participant SIGKILLed mid-saga
// ---------------------------------------------------------------------------

/// SIGKILLs `down`, sends PlaceOrder, waits until `step` has been tried at
/// least twice against the dead participant, restarts it on its port and
/// data: the PlaceOrder (still waiting) must succeed.
async fn outage_before_call(
    cluster: &mut Cluster,
    u: &mut Universe,
    c: &MeshClients,
    down: Svc,
    step: &str,
    sku: &str,
) {
    let who = format!("outage-{}", down.name());
    grant(c, u, &who).await;
    let before = product(c, sku).await;
    cluster.kill(down);
    let req = place(&who, &who, sku, "", REDEEM);
    let pending = Call::Place(req.clone()).spawn(c.clone());
    wait_attempts(c, &who, step, false, 2).await;
    assert!(
        !pending.is_finished(),
        "{who}: PlaceOrder ended while {down:?} was down"
    );
    cluster.start_svc(down, &[]).await;
    let c = cluster.clients();
    match timeout(Duration::from_secs(25), pending).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("{who}: PlaceOrder after {down:?} came back: {other:?}"),
    }
    let saga = saga_by_key(&c, &who).await.expect("saga logged");
    assert_eq!(
        saga.state,
        orch::SagaState::Completed as i32,
        "{}",
        describe(&saga)
    );
    assert!(action(&saga, step).attempts >= 2, "{}", describe(&saga));
    let again = place_ok(&c, req).await;
    assert_eq!(again.order_id, saga.order_id);
    assert_eq!(orders_of(&c, &who).await.len(), 1);
    let b = balance(&c, &who).await;
    assert_eq!(
        (b.points, b.deducted, b.refunded),
        (GRANT - REDEEM, REDEEM, 0),
        "{b:?}"
    );
    let p = product(&c, sku).await;
    assert_eq!(p.reserved, before.reserved + 1, "{p:?}");
    check_invariants(&c, u, &format!("{down:?} outage at {step}")).await;
}

/// Parks a checkout at `park` (a failpoint), SIGKILLs `down` and the
/// orchestrator, restarts the orchestrator: recovery retries `step` (an
/// action, or a compensation) against the dead participant; once it was
/// tried twice the participant comes back and the saga must end `expect`.
#[allow(clippy::too_many_arguments)]
async fn outage_mid_saga(
    cluster: &mut Cluster,
    u: &mut Universe,
    park: &str,
    down: Svc,
    step: &str,
    is_compensation: bool,
    req: orch::PlaceOrderRequest,
    expect: orch::SagaState,
) -> (orch::Saga, MeshClients) {
    let key = req.idempotency_key.clone();
    u.customers.insert(req.customer_id.clone());
    cluster
        .restart(Svc::Orchestrator, &["--failpoint", park])
        .await;
    let pending = Call::Place(req.clone()).spawn(cluster.clients());
    cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {park} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    cluster.kill(down);
    cluster.kill(Svc::Orchestrator);
    expect_cut_off(pending, &key, park).await;
    cluster.start_svc(Svc::Orchestrator, &[]).await;
    let c = cluster.clients();
    wait_attempts(&c, &key, step, is_compensation, 2).await;
    cluster.start_svc(down, &[]).await;
    let c = cluster.clients();
    let saga = saga_by_key(&c, &key).await.expect("saga logged");
    let saga = wait_settled(&c, &saga.saga_id).await;
    assert_eq!(saga.state, expect as i32, "{}", describe(&saga));
    (saga, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_killed_mid_saga() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::builder().orchestrator(OUTAGE_ENGINE).start().await;
    let mut c = cluster.clients();
    let mut u = Universe::default();
    let sku = "CRASH-GIZMO";
    put_product(&c, &mut u, sku, 100).await;

    // Down before the call: the first step that needs it retries until it
    // is back (quote reads inventory and order-svc first).
    for (down, step) in [
        (Svc::Loyalty, "deduct-points"),
        (Svc::Inventory, "quote"),
        (Svc::Order, "quote"),
    ] {
        outage_before_call(&mut cluster, &mut u, &c, down, step, sku).await;
        c = cluster.clients();
        eprintln!("{down:?} down at {step}: ok at {:?}", started.elapsed());
    }

    // Down mid-saga: the checkout parked after an earlier step, the
    // orchestrator restarted, recovery retries the step until it is back.
    for (park, down, step) in [
        ("result:quote", Svc::Inventory, "reserve-stock"),
        ("result:deduct-points", Svc::Order, "create-order"),
    ] {
        let who = format!("midsaga-{step}");
        grant(&c, &mut u, &who).await;
        let req = place(&who, &who, sku, "", REDEEM);
        let (saga, c2) = outage_mid_saga(
            &mut cluster,
            &mut u,
            park,
            down,
            step,
            false,
            req.clone(),
            orch::SagaState::Completed,
        )
        .await;
        c = c2;
        assert!(action(&saga, step).attempts >= 2, "{}", describe(&saga));
        assert_eq!(place_ok(&c, req).await.order_id, saga.order_id);
        assert_eq!(orders_of(&c, &who).await.len(), 1);
        let b = balance(&c, &who).await;
        assert_eq!((b.deducted, b.refunded), (REDEEM, 0), "{b:?}");
        check_invariants(&c, &u, &format!("{down:?} down at {step}")).await;
        eprintln!(
            "{down:?} down mid-saga at {step}: ok at {:?}",
            started.elapsed()
        );
    }

    // Down during compensation: refund-points retries until loyalty is back.
    let code = "CRASH-GONE";
    put_coupon(&c, &mut u, code, 1).await;
    u.customers.insert("outage-seed".into());
    place_ok(&c, place("outage-seed", "outage-seed", sku, code, 0)).await;
    let who = "midsaga-refund";
    grant(&c, &mut u, who).await;
    let before = product(&c, sku).await;
    let req = place(who, who, sku, code, REDEEM);
    let (saga, c2) = outage_mid_saga(
        &mut cluster,
        &mut u,
        "result:cancel-order",
        Svc::Loyalty,
        "deduct-points",
        true,
        req,
        orch::SagaState::Compensated,
    )
    .await;
    c = c2;
    let refund = compensation(&saga, "deduct-points").expect("refund-points ran");
    assert!(refund.attempts >= 2, "{}", describe(&saga));
    let b = balance(&c, who).await;
    assert_eq!(
        (b.points, b.deducted, b.refunded),
        (GRANT, REDEEM, REDEEM),
        "{b:?}"
    );
    let p = product(&c, sku).await;
    assert_eq!(
        (p.available, p.reserved),
        (before.available, before.reserved),
        "{p:?}"
    );
    check_invariants(&c, &u, "loyalty down at refund-points").await;
    eprintln!("participant outages in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 4. Durability: SIGKILL everything, restart, nothing lost
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Snapshot {
    orders: Vec<ord::Order>,
    product: inv::GetProductResponse,
    balance: loy::GetBalanceResponse,
    coupon: ord::GetCouponResponse,
    sagas: Vec<orch::Saga>,
}

async fn snapshot(c: &MeshClients, customer: &str, sku: &str, code: &str) -> Snapshot {
    Snapshot {
        orders: orders_of(c, customer).await,
        product: product(c, sku).await,
        balance: balance(c, customer).await,
        coupon: coupon(c, code).await,
        sagas: all_sagas(&mut c.admin.clone()).await.expect("ListSagas"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_survives_sigkill() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::builder().orchestrator(MATRIX_ENGINE).start().await;
    let c = cluster.clients();
    let mut u = Universe::default();
    let (sku, code, who) = ("CRASH-DURABLE", "CRASH-KEEP", "durable-customer");
    put_product(&c, &mut u, sku, 10).await;
    put_coupon(&c, &mut u, code, 5).await;
    grant(&c, &mut u, who).await;

    let pending = place_ok(&c, place("durable-1", who, sku, code, REDEEM)).await;
    let paid = place_ok(&c, place("durable-2", who, sku, "", REDEEM)).await;
    c.checkout
        .clone()
        .confirm_payment(orch::ConfirmPaymentRequest {
            order_id: paid.order_id.clone(),
            payment_ref: "durable-pay".into(),
        })
        .await
        .expect("ConfirmPayment");
    check_invariants(&c, &u, "the orders").await;
    let before = snapshot(&c, who, sku, code).await;
    assert_eq!(before.orders.len(), 2);
    assert_eq!(before.sagas.len(), 3);
    assert_eq!(
        (
            before.product.available,
            before.product.reserved,
            before.product.sold
        ),
        (8, 1, 1)
    );
    assert_eq!(before.coupon.times_used, 1);
    drop(c);

    for svc in Svc::START_ORDER {
        cluster.kill(svc);
    }
    for svc in Svc::START_ORDER {
        cluster.start_svc(svc, &[]).await;
    }
    let c = cluster.clients();
    let after = snapshot(&c, who, sku, code).await;
    assert_eq!(before, after, "state changed across SIGKILL and restart");

    // The same key still answers the same order; the mesh still works.
    let again = place_ok(&c, place("durable-1", who, sku, code, REDEEM)).await;
    assert_eq!(again.order_id, pending.order_id);
    assert_eq!(again.saga_id, pending.saga_id);
    let third = place_ok(&c, place("durable-3", who, sku, "", 0)).await;
    assert!(!third.order_id.is_empty());
    check_invariants(&c, &u, "the restart").await;
    eprintln!("durability in {:?}", started.elapsed());
}
