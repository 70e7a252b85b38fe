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
//!
//! One test binary, a module per part: `checkout_matrix` (the orchestrator
//! crashed at each boundary of the checkout), `every_saga` (the matrix over
//! every saga type, a crashed orchestrator or participant), `participant_killed`
//! (a participant SIGKILLed mid-saga), `sigkill_all` (everything SIGKILLed,
//! nothing lost). What they share is here.

mod checkout_matrix;
#[path = "../cluster/mod.rs"]
mod cluster;
mod every_saga;
mod participant_killed;
mod sigkill_all;

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
