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
//!
//! A module per case (`outage`, `hold`, `retention`, `grpcurl`,
//! `dead_letters`); the helpers they share are here.

#[path = "../cluster/mod.rs"]
mod cluster;
mod dead_letters;
mod grpcurl;
mod hold;
mod outage;
mod retention;

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
