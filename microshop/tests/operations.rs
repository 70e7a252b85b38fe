//! Operations at scale (issue 15) against real `microshop serve`
//! processes, the shared harness's [`cluster::Cluster`]:
//!
//! - an outage of loyalty-svc longer than the step budget: the checkout
//!   waits (RUNNING, not FAILED), automation keeps probing without a hot
//!   loop, and once loyalty-svc is started again it completes with no
//!   RetrySaga, its history saying it was re-driven automatically;
//! - a checkout hold that ends while loyalty-svc is still down gives the
//!   stock back at once, answers a retry with `CHECKOUT_EXPIRED`, and
//!   compensates the rest once loyalty-svc is back;
//! - retention purges finished sagas and barrier entries (counted on
//!   `/metrics`), keeps a FAILED saga, a cancel after the purge still gives
//!   stock and points back, and a purged checkout's key starts a new one;
//! - `ListSagas` by `orderId` through grpcurl (reflection, plaintext)
//!   lists the order's place, confirm and cancel sagas;
//! - what `sagas_cli/` does not cover of the CLI: dead letters listed,
//!   shown, retried and aborted (single and bulk), and `--limit`'s
//!   default of 50.
//!
//! The outage, hold and retention tests honour `MONGODB_URI` through the
//! harness (the test script's MongoDB pass runs them again). Every wait is
//! bounded polling; every test ends with the invariants of
//! `docs/architecture.md`.

mod cluster;

use std::{path::PathBuf, time::Duration};

use cluster::{
    Cluster, Health, Svc,
    cli::{ids, sagas},
    metrics::wait_at_least,
    process::{POLL, Spawn},
    shop::*,
};
use microshop::{invariants::Universe, mesh::MeshClients};
use microshop_proto::{inventory::v1 as inv, orchestrator::v1 as orch};
use microshop_runtime::{
    Reason,
    errors::{metadata_of, reason_of},
};
use tokio::time::{Instant, sleep};
use tonic::{Code, Status};

const LOYALTY: &str = loyalty_svc::SERVICE_NAME;
/// How long a stopped service may take to exit on SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// How long the orchestrator's health watcher (every 2 s) may take to see
/// a participant go or come back.
const HEALTH_WITHIN: Duration = Duration::from_secs(15);

/// Short budgets: a step against a dead participant gives up (and waits)
/// within about a second, a recovery pass every 300 ms, so every wait in
/// these tests ends promptly once its cause is gone.
const OPS_ENGINE: &[&str] = &[
    "--step-attempts",
    "3",
    "--step-budget-ms",
    "400",
    "--compensation-attempts",
    "2",
    "--backoff-min-ms",
    "10",
    "--backoff-max-ms",
    "50",
    "--call-timeout-ms",
    "400",
    "--recovery-interval-ms",
    "300",
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn get_saga(c: &MeshClients, saga_id: &str) -> Result<orch::Saga, Status> {
    c.admin
        .clone()
        .get_saga(orch::GetSagaRequest {
            saga_id: saga_id.into(),
        })
        .await
        .map(|r| r.into_inner().saga.expect("GetSaga returns the saga"))
}

/// Polls GetSaga until `done` accepts the saga; panics after
/// [`SETTLE_WITHIN`] with what it last saw.
async fn saga_until(
    c: &MeshClients,
    saga_id: &str,
    what: &str,
    done: impl Fn(&orch::Saga) -> bool,
) -> orch::Saga {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = None;
    loop {
        if let Ok(saga) = get_saga(c, saga_id).await {
            if done(&saga) {
                return saga;
            }
            last = Some(saga);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE_WITHIN:?}: {}",
            last.as_ref().map_or_else(|| "never read".into(), describe)
        );
        sleep(POLL).await;
    }
}

fn state(saga: &orch::Saga) -> orch::SagaState {
    orch::SagaState::try_from(saga.state).unwrap_or(orch::SagaState::Unspecified)
}

fn is(s: orch::SagaState) -> impl Fn(&orch::Saga) -> bool {
    move |saga| state(saga) == s
}

fn comp_status(saga: &orch::Saga, step: &str) -> Option<orch::StepStatus> {
    compensation(saga, step).and_then(|r| orch::StepStatus::try_from(r.status).ok())
}

fn action_status(saga: &orch::Saga, step: &str) -> Option<orch::StepStatus> {
    orch::StepStatus::try_from(action(saga, step).status).ok()
}

#[track_caller]
fn expect_reason(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    reason: Reason,
) -> Status {
    let status = result.expect_err("an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status), Some(reason), "{status:?}");
    status
}

fn saga_id_of(status: &Status) -> String {
    metadata_of(status, "sagaId").unwrap_or_else(|| panic!("no sagaId in {status:?}"))
}

async fn place_err(c: &MeshClients, req: orch::PlaceOrderRequest) -> Result<(), Status> {
    c.checkout
        .clone()
        .place_order(with_deadline(req, Duration::from_secs(20)))
        .await
        .map(drop)
}

/// ConfirmPayment of `order_id` (deadline 20 s).
async fn confirm(
    c: &MeshClients,
    order_id: &str,
    payment_ref: &str,
) -> Result<orch::ConfirmPaymentResponse, Status> {
    let request = orch::ConfirmPaymentRequest {
        order_id: order_id.into(),
        payment_ref: payment_ref.into(),
    };
    c.checkout
        .clone()
        .confirm_payment(with_deadline(request, Duration::from_secs(20)))
        .await
        .map(tonic::Response::into_inner)
}

/// CancelOrder of `order_id` (deadline 20 s).
async fn cancel(c: &MeshClients, order_id: &str) -> orch::CancelOrderResponse {
    let request = orch::CancelOrderRequest {
        order_id: order_id.into(),
        reason: "changed my mind".into(),
    };
    c.checkout
        .clone()
        .cancel_order(with_deadline(request, Duration::from_secs(20)))
        .await
        .expect("the cancel")
        .into_inner()
}

/// Stops loyalty-svc the way an operator does and waits until the
/// orchestrator's health reports it NOT_SERVING.
async fn stop_loyalty(cluster: &mut Cluster) {
    cluster.stop(Svc::Loyalty, STOP_WITHIN);
    cluster
        .wait_health(
            Svc::Orchestrator,
            Health::Entry(LOYALTY),
            false,
            HEALTH_WITHIN,
        )
        .await;
}

/// The sagas of `order_id` of type `t` (ListSagas's filters).
async fn sagas_of(c: &MeshClients, order_id: &str, t: orch::SagaType) -> Vec<orch::Saga> {
    c.admin
        .clone()
        .list_sagas(orch::ListSagasRequest {
            order_id: order_id.into(),
            r#type: t.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("ListSagas")
        .into_inner()
        .sagas
}

/// A dead letter made on purpose: `customer` buys one unit of `sku`, its
/// reservation is released behind the saga's back (a stray ReleaseStock on
/// inventory-svc's public API), and the payment then marks the order paid
/// (which cannot be undone) before CommitStock is refused. The payment
/// saga goes FAILED, "resolve by hand". Its SKU and customer are out of
/// line by construction (a paid order with no stock sold), so callers keep
/// them out of the [`Universe`] the invariants check. Returns the order id
/// and the FAILED saga.
async fn dead_letter(c: &MeshClients, sku: &str, customer: &str) -> (String, orch::Saga) {
    c.inventory
        .clone()
        .put_product(inv::PutProductRequest {
            sku: sku.into(),
            name: format!("product {sku}"),
            unit_price: PRICE,
            stock: 5,
        })
        .await
        .expect("PutProduct");
    let placed = place_ok(c, place(&format!("{customer}-dead"), customer, sku, "", 0)).await;
    c.inventory
        .clone()
        .release_stock(inv::ReleaseStockRequest {
            saga_id: placed.saga_id.clone(),
        })
        .await
        .expect("the stray ReleaseStock");
    let paid = confirm(c, &placed.order_id, "PAY-DEAD").await;
    assert!(
        paid.is_err(),
        "the payment cannot commit the stock: {paid:?}"
    );
    let confirm = sagas_of(c, &placed.order_id, orch::SagaType::ConfirmPayment).await;
    assert_eq!(confirm.len(), 1, "{confirm:#?}");
    let failed = saga_until(
        c,
        &confirm[0].saga_id,
        "the payment saga to go FAILED",
        is(orch::SagaState::Failed),
    )
    .await;
    assert!(
        failed.failure_reason.contains("mark-paid")
            && failed.failure_reason.contains("cannot be undone"),
        "{}",
        describe(&failed)
    );
    (placed.order_id, failed)
}

// ---------------------------------------------------------------------------
// 1. An outage heals by itself
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_step_budget_heals_without_an_operator() {
    let mut cluster = Cluster::builder().orchestrator(OPS_ENGINE).start().await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 10).await;
    grant(&c, &mut u, "una").await;

    stop_loyalty(&mut cluster).await;
    let request = place_units("down-1", "una", "BIKE", 2, "", REDEEM);
    let status = expect_reason(
        place_err(&c, request.clone()).await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    assert!(status.message().contains(LOYALTY), "{status:?}");
    let saga_id = saga_id_of(&status);
    let saga = get_saga(&c, &saga_id).await.expect("GetSaga");
    assert_eq!(
        state(&saga),
        orch::SagaState::Running,
        "{}",
        describe(&saga)
    );
    assert_eq!(saga.waiting_for, vec![LOYALTY.to_owned()], "{saga:#?}");
    assert!(
        saga.failure_reason.is_empty(),
        "not a dead letter: {saga:#?}"
    );
    assert_eq!(
        action_status(&saga, "deduct-points"),
        Some(orch::StepStatus::Waiting),
        "{}",
        describe(&saga)
    );
    let first_budget = action(&saga, "deduct-points").attempts;

    // The outage outlasts the budget: automation probes loyalty-svc again
    // on its backoff (a fresh, bounded budget each time), and the saga
    // keeps waiting, never FAILED.
    let probed = saga_until(&c, &saga_id, "a probe while loyalty-svc is down", |s| {
        action(s, "deduct-points").attempts > first_budget
            && action_status(s, "deduct-points") == Some(orch::StepStatus::Waiting)
    })
    .await;
    assert_eq!(
        state(&probed),
        orch::SagaState::Running,
        "{}",
        describe(&probed)
    );
    assert!(
        probed.history.iter().any(|t| t.actor == "automatic"
            && t.note == "re-driven automatically: retrying after waiting"),
        "{:#?}",
        probed.history
    );
    let bike = product(&c, "BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (8, 2),
        "held while it waits"
    );

    // loyalty-svc is back: the saga completes with no RetrySaga.
    cluster.start_svc(Svc::Loyalty, &[]).await;
    let c = cluster.clients();
    let done = saga_until(
        &c,
        &saga_id,
        "the waiting checkout to complete by itself",
        is(orch::SagaState::Completed),
    )
    .await;
    assert!(done.waiting_for.is_empty(), "{done:#?}");
    assert!(
        done.history
            .iter()
            .any(|t| t.actor == "automatic" && t.note.starts_with("re-driven automatically")),
        "the history says it was re-driven automatically: {:#?}",
        done.history
    );
    assert!(
        done.history
            .iter()
            .all(|t| t.actor.is_empty() || t.actor == "automatic"),
        "no operator acted: {:#?}",
        done.history
    );
    let answer = place_ok(&c, request).await;
    assert_eq!(
        answer.order_id, done.order_id,
        "the retry answers the order"
    );
    assert_eq!(balance(&c, "una").await.points, GRANT - REDEEM);
    assert_invariants(&c, &u, "the outage healed").await;
}

// ---------------------------------------------------------------------------
// 2. The checkout hold
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_hold_releases_stock_while_loyalty_is_down_then_compensates_the_rest() {
    let mut cluster = Cluster::builder()
        .orchestrator(OPS_ENGINE)
        .orchestrator(["--checkout-hold-secs", "3"])
        .start()
        .await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 10).await;
    grant(&c, &mut u, "una").await;

    stop_loyalty(&mut cluster).await;
    let request = place_units("hold-1", "una", "BIKE", 2, "", REDEEM);
    let status = expect_reason(
        place_err(&c, request.clone()).await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let saga_id = saga_id_of(&status);

    // The hold ends with loyalty-svc still down: the release runs at once,
    // the refund spends its budget on the dead loyalty-svc and then waits.
    let saga = saga_until(
        &c,
        &saga_id,
        "the expired checkout to release its stock and wait for loyalty-svc",
        |s| {
            comp_status(s, "reserve-stock") == Some(orch::StepStatus::Succeeded)
                && comp_status(s, "deduct-points") == Some(orch::StepStatus::Waiting)
        },
    )
    .await;
    assert!(
        !cluster.running().contains(&Svc::Loyalty),
        "loyalty-svc is still down"
    );
    assert_eq!(
        state(&saga),
        orch::SagaState::Compensating,
        "{}",
        describe(&saga)
    );
    assert_eq!(saga.waiting_for, vec![LOYALTY.to_owned()], "{saga:#?}");
    assert_eq!(
        saga.error.as_ref().map(|e| e.reason.as_str()),
        Some("CHECKOUT_EXPIRED"),
        "{saga:#?}"
    );
    assert!(
        saga.history
            .iter()
            .any(|t| t.actor == "automatic" && t.note.contains("checkout hold")),
        "{:#?}",
        saga.history
    );
    let bike = product(&c, "BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (10, 0),
        "the stock is back on sale: {bike:?}"
    );
    let retried = expect_reason(
        place_err(&c, request.clone()).await,
        Code::FailedPrecondition,
        Reason::CheckoutExpired,
    );
    assert_eq!(saga_id_of(&retried), saga_id);

    // loyalty-svc is back: the refund (a null compensation, the deduction
    // never arrived) runs and the saga ends COMPENSATED.
    cluster.start_svc(Svc::Loyalty, &[]).await;
    let c = cluster.clients();
    let saga = saga_until(
        &c,
        &saga_id,
        "the expired checkout to end",
        is(orch::SagaState::Compensated),
    )
    .await;
    assert_eq!(
        comp_status(&saga, "deduct-points"),
        Some(orch::StepStatus::Succeeded),
        "{}",
        describe(&saga)
    );
    expect_reason(
        place_err(&c, request).await,
        Code::FailedPrecondition,
        Reason::CheckoutExpired,
    );
    let una = balance(&c, "una").await;
    assert_eq!(
        (una.points, una.deducted - una.refunded),
        (GRANT, 0),
        "{una:?}"
    );
    assert_invariants(&c, &u, "the checkout hold").await;
}

// ---------------------------------------------------------------------------
// 3. Retention
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_finished_sagas_and_barrier_entries_and_keeps_failed_ones() {
    let barrier = ["--barrier-retention-secs", "1"];
    let cluster = Cluster::builder()
        .metrics()
        .orchestrator(OPS_ENGINE)
        .orchestrator(["--saga-retention-secs", "2"])
        .args(Svc::Inventory, barrier)
        .args(Svc::Loyalty, barrier)
        .args(Svc::Order, barrier)
        .start()
        .await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 20).await;
    grant(&c, &mut u, "una").await;

    // The dead letter first: it is older than every saga purged below.
    let (_, dead) = dead_letter(&c, "DEAD", "dora").await;

    // Finished sagas: a checkout and its payment (COMPLETED), a checkout
    // out of stock (COMPENSATED), and a checkout redeeming points that
    // stays unpaid (COMPLETED; its order is cancelled after the purge).
    let paid_req = place("una-paid", "una", "BIKE", "", 0);
    let paid = place_ok(&c, paid_req.clone()).await;
    let payment = confirm(&c, &paid.order_id, "PAY-1")
        .await
        .expect("the payment");
    let rejected = expect_reason(
        place_err(&c, place_units("una-big", "una", "BIKE", 99, "", 0)).await,
        Code::FailedPrecondition,
        Reason::OutOfStock,
    );
    let unpaid = place_ok(&c, place_units("una-unpaid", "una", "BIKE", 2, "", REDEEM)).await;
    let finished = [
        paid.saga_id.clone(),
        payment.saga_id.clone(),
        saga_id_of(&rejected),
        unpaid.saga_id.clone(),
    ];

    // Purged: the finished sagas are gone (NOT_FOUND / UNKNOWN_SAGA) and
    // each store counted what it purged.
    let o = cluster.metrics_addr(Svc::Orchestrator);
    wait_at_least(o, "microshop_sagas_purged_total", 5.0, SETTLE_WITHIN).await;
    for saga_id in &finished {
        let deadline = Instant::now() + SETTLE_WITHIN;
        let status = loop {
            match get_saga(&c, saga_id).await {
                Err(status) => break status,
                Ok(saga) => assert!(Instant::now() < deadline, "not purged: {}", describe(&saga)),
            }
            sleep(POLL).await;
        };
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(reason_of(&status), Some(Reason::UnknownSaga), "{status:?}");
    }
    // At least the checkouts' reservations, the one deduction and the
    // orders created (their sagas' entries go together once all are old).
    for (svc, at_least) in [
        (Svc::Inventory, 3.0),
        (Svc::Loyalty, 1.0),
        (Svc::Order, 3.0),
    ] {
        wait_at_least(
            cluster.metrics_addr(svc),
            "microshop_barrier_entries_purged_total",
            at_least,
            SETTLE_WITHIN,
        )
        .await;
    }

    // Kept: the FAILED saga, older than all of them, as it was.
    let kept = get_saga(&c, &dead.saga_id)
        .await
        .expect("the dead letter is kept");
    assert_eq!(state(&kept), orch::SagaState::Failed, "{}", describe(&kept));
    assert_eq!(kept.failure_reason, dead.failure_reason);

    // The unpaid order is cancelled after its checkout's saga is gone, and
    // its barrier entries with it (past their 1 s retention a second
    // before the saga's 2 s, and purged every 0.5 s): the reservation and
    // the points ledger (business records, kept) still say what to give
    // back.
    cancel(&c, &unpaid.order_id).await;
    let bike = product(&c, "BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved, bike.sold),
        (19, 0, 1),
        "{bike:?}"
    );
    let una = balance(&c, "una").await;
    assert_eq!(
        (una.points, una.deducted - una.refunded),
        (GRANT + una.earned, 0),
        "{una:?}"
    );

    // A purged checkout's key starts a new checkout (one key, one saga
    // holds within the retention window).
    let again = place_ok(&c, paid_req).await;
    assert_ne!(again.order_id, paid.order_id, "a new order");
    assert_ne!(again.saga_id, paid.saga_id, "a new saga");
    assert_invariants(&c, &u, "retention").await;
}

// ---------------------------------------------------------------------------
// 4. ListSagas by orderId through grpcurl
// ---------------------------------------------------------------------------

/// The grpcurl the test script installs (`GRPCURL` overrides it); `None`
/// (the test is skipped with a note) when it is missing outside CI.
fn grpcurl() -> Option<PathBuf> {
    let path = std::env::var_os("GRPCURL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/grpcurl"),
        PathBuf::from,
    );
    if path.exists() {
        return Some(path);
    }
    assert!(
        !microshop_runtime::testing::is_ci(std::env::var("CI").ok().as_deref()),
        "{} is missing and CI is set: scripts/test.sh installs it",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (scripts/test.sh installs it)",
        path.display()
    );
    None
}

/// `grpcurl -plaintext -d BODY ADDR microshop.orchestrator.v1.SagaAdminService/ListSagas`,
/// by reflection; its JSON answer.
fn list_sagas_grpcurl(grpcurl: &PathBuf, cluster: &Cluster, body: &str) -> serde_json::Value {
    let mut process = Spawn::program("grpcurl", grpcurl)
        .args(["-plaintext", "-d", body])
        .arg(cluster.addr(Svc::Orchestrator).to_string())
        .arg("microshop.orchestrator.v1.SagaAdminService/ListSagas")
        .spawn();
    let out = process
        .exit_within(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("grpcurl still runs: {e}"));
    assert!(out.status.success(), "grpcurl {body}: {out:#?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sagas_by_order_id_through_grpcurl() {
    let Some(grpcurl) = grpcurl() else { return };
    let cluster = Cluster::builder().orchestrator(OPS_ENGINE).start().await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 10).await;
    grant(&c, &mut u, "una").await;
    let placed = place_ok(&c, place("una-1", "una", "BIKE", "", REDEEM)).await;
    let paid = confirm(&c, &placed.order_id, "PAY-1")
        .await
        .expect("the payment");
    let cancelled = cancel(&c, &placed.order_id).await;
    // Another order of the same customer, which must not be listed.
    place_ok(&c, place("una-2", "una", "BIKE", "", 0)).await;

    let order = &placed.order_id;
    let doc = list_sagas_grpcurl(&grpcurl, &cluster, &format!(r#"{{"orderId":"{order}"}}"#));
    let mut listed: Vec<(String, String)> = doc["sagas"]
        .as_array()
        .unwrap_or_else(|| panic!("{doc:#}"))
        .iter()
        .map(|s| {
            assert_eq!(s["orderId"], order.as_str(), "{s:#}");
            (
                s["type"].as_str().expect("a type").to_owned(),
                s["sagaId"].as_str().expect("an id").to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            (
                "SAGA_TYPE_CANCEL_ORDER".to_owned(),
                cancelled.saga_id.clone()
            ),
            ("SAGA_TYPE_CONFIRM_PAYMENT".to_owned(), paid.saga_id.clone()),
            ("SAGA_TYPE_PLACE_ORDER".to_owned(), placed.saga_id.clone()),
        ],
        "{doc:#}"
    );
    // Combined with the other filters.
    let doc = list_sagas_grpcurl(
        &grpcurl,
        &cluster,
        &format!(
            r#"{{"orderId":"{order}","type":"SAGA_TYPE_CANCEL_ORDER","state":"SAGA_STATE_COMPLETED"}}"#
        ),
    );
    assert_eq!(
        ids(&doc, "sagas", "sagaId"),
        vec![cancelled.saga_id],
        "{doc:#}"
    );
    assert_invariants(&c, &u, "ListSagas by order").await;
}

// ---------------------------------------------------------------------------
// 5. The CLI on dead letters, and its default limit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acts_on_dead_letters_and_lists_fifty_by_default() {
    let cluster = Cluster::builder().orchestrator(OPS_ENGINE).start().await;
    let c = cluster.clients();
    let url = cluster.url(Svc::Orchestrator);
    let u_flag = ["--orchestrator", url.as_str()];
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&u_flag);
        sagas(&all)
    };
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 100).await;
    let (dead_order, dead) = dead_letter(&c, "DEAD", "dora").await;
    let d = dead.saga_id.as_str();

    // list and show say what failed and why.
    let run = cli(&["list", "--state", "failed"]);
    let row = run
        .exits(0)
        .stdout
        .lines()
        .find(|l| l.starts_with(d))
        .unwrap_or_else(|| panic!("a row for {d}: {run:#?}"));
    assert!(
        row.contains("confirm-payment")
            && row.contains("FAILED")
            && row.contains("dora")
            && row.contains(&dead_order)
            && row.contains("commit-stock FAILED"),
        "{row}"
    );
    cli(&["show", d]).exits(0).says(&[
        "State     FAILED",
        "cannot be undone",
        "commit-stock",
        "mark-paid",
    ]);
    let doc = cli(&["show", d, "--json"]).exits(0).json();
    assert_eq!(doc["saga"]["state"], "SAGA_STATE_FAILED", "{doc:#}");
    assert_eq!(doc["saga"]["failureReason"], dead.failure_reason.as_str());

    // retry of a dead letter is not a no-op: it is re-driven (and goes
    // FAILED again, its cause being still there), in the history.
    let doc = cli(&["retry", d, "--reason", "stock fixed", "--json"])
        .exits(0)
        .json();
    let r = &doc["results"][0];
    assert_eq!(
        (r["sagaId"].as_str(), r["ok"].as_bool()),
        (Some(d), Some(true)),
        "{doc:#}"
    );
    assert_eq!(r["outcome"], "retried", "{doc:#}");
    let saga = saga_until(&c, d, "the retried dead letter to end", |s| {
        state(s) == orch::SagaState::Failed
            && s.history
                .iter()
                .any(|t| t.actor == "anonymous" && t.note.contains("stock fixed"))
    })
    .await;
    assert!(
        saga.failure_reason.contains("cannot be undone"),
        "{}",
        describe(&saga)
    );

    // Bulk abort of the dead letters: refused without --yes, a dry run
    // changes nothing, then with --yes.
    let bulk = ["abort", "--state", "failed", "--reason", "resolved by hand"];
    cli(&bulk).exits(2).says(&[d, "--yes"]);
    let mut args = bulk.to_vec();
    args.extend(["--dry-run", "--json"]);
    let doc = cli(&args).exits(0).json();
    assert_eq!(
        ids(&doc, "results", "sagaId"),
        vec![d.to_owned()],
        "{doc:#}"
    );
    assert_eq!(doc["results"][0]["outcome"], "would-abort", "{doc:#}");
    let unchanged = get_saga(&c, d).await.expect("GetSaga");
    assert_eq!(
        unchanged.history.len(),
        saga.history.len(),
        "a dry run changes nothing"
    );
    let mut args = bulk.to_vec();
    args.extend(["--yes", "--json"]);
    let doc = cli(&args).exits(0).json();
    assert_eq!(
        ids(&doc, "results", "sagaId"),
        vec![d.to_owned()],
        "{doc:#}"
    );
    assert_eq!(doc["results"][0]["outcome"], "aborted", "{doc:#}");
    let aborted = get_saga(&c, d).await.expect("GetSaga");
    assert!(
        aborted
            .history
            .iter()
            .any(|t| t.actor == "anonymous" && t.note.contains("resolved by hand")),
        "{:#?}",
        aborted.history
    );

    // --limit is 50 by default, for list and for the bulk forms.
    let mut placing = tokio::task::JoinSet::new();
    for i in 0..51 {
        let c = c.clone();
        placing.spawn(async move {
            place_ok(&c, place(&format!("bulk-{i}"), "bulk", "BIKE", "", 0)).await
        });
    }
    while let Some(done) = placing.join_next().await {
        done.expect("a checkout");
    }
    u.customers.insert("bulk".into());
    let doc = cli(&["list", "--state", "completed", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "sagas", "sagaId").len(), 50, "{doc:#}");
    assert!(
        doc["nextPageToken"].as_str().is_some_and(|t| !t.is_empty()),
        "more than a page: {doc:#}"
    );
    let doc = cli(&["retry", "--state", "completed", "--yes", "--json"])
        .exits(0)
        .json();
    let results = doc["results"].as_array().expect("results");
    assert_eq!(results.len(), 50, "{doc:#}");
    assert!(results.iter().all(|r| r["outcome"] == "no-op"), "{doc:#}");
    assert_invariants(&c, &u, "the CLI").await;
}
