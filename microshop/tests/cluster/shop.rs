//! Requests and reads over the mesh's APIs that the process suites share
//! (`crash/`, `crash_mongodb.rs`): seeding a product, a coupon or a
//! member into the [`Universe`] the invariant check walks, a checkout
//! request, reading stock, balances, orders and sagas back, and waiting
//! (bounded polling) for a saga to end or a step to be retried.
//!
//! Every seeding call records what it created in the `Universe`, so
//! [`assert_invariants`] checks exactly what a test put in.

use std::time::Duration;

use microshop::{
    invariants::{self, Universe, all_sagas},
    mesh::MeshClients,
};
use microshop_proto::{
    inventory::v1 as inv, loyalty::v1 as loy, orchestrator::v1 as orch, order::v1 as ord,
};
use tokio::time::{Instant, sleep};

use super::process::POLL;

/// Unit price of the test products: items 1,000,000 + tax 100,000 +
/// shipping 50,000 = 1,150,000 payable per unit.
pub const PRICE: i64 = 1_000_000;
/// Points redeemed by every order that redeems (100,000 off).
pub const REDEEM: i64 = 100;
/// Points granted to every customer.
pub const GRANT: i64 = 500;
/// How long a resumed saga may take to end.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// Tight budgets for the crash matrices: nothing is transiently failing
/// there, so these only bound how long a bug could keep a saga going.
pub const MATRIX_ENGINE: &[&str] = &[
    "--step-attempts",
    "20",
    "--step-budget-ms",
    "2000",
    "--compensation-attempts",
    "20",
    "--backoff-min-ms",
    "10",
    "--backoff-max-ms",
    "100",
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

pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// A checkout of one unit of `sku` under idempotency key `key`.
pub fn place(
    key: &str,
    customer: &str,
    sku: &str,
    coupon: &str,
    points: i64,
) -> orch::PlaceOrderRequest {
    place_units(key, customer, sku, 1, coupon, points)
}

/// A checkout of `quantity` units of `sku`, with `coupon` (or `""`) and
/// `points` redeemed.
pub fn place_units(
    key: &str,
    customer: &str,
    sku: &str,
    quantity: i64,
    coupon: &str,
    points: i64,
) -> orch::PlaceOrderRequest {
    orch::PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: vec![orch::LineItem {
            sku: sku.into(),
            quantity,
        }],
        coupon_code: coupon.into(),
        points_to_redeem: points,
        shipping: Some(orch::ShippingAddress {
            name: customer.into(),
            address: "1 Test Street, Hanoi".into(),
            phone: "+84 900 000 000".into(),
        }),
    }
}

pub async fn put_product(c: &MeshClients, u: &mut Universe, sku: &str, stock: i64) {
    c.inventory
        .clone()
        .put_product(inv::PutProductRequest {
            sku: sku.into(),
            name: format!("product {sku}"),
            unit_price: PRICE,
            stock,
        })
        .await
        .expect("PutProduct");
    u.skus.insert(sku.into(), stock);
}

pub async fn put_coupon(c: &MeshClients, u: &mut Universe, code: &str, limit: i64) {
    c.order
        .clone()
        .put_coupon(ord::PutCouponRequest {
            code: code.into(),
            kind: ord::CouponKind::Fixed.into(),
            value: 50_000,
            usage_limit: limit,
        })
        .await
        .expect("PutCoupon");
    u.coupons.insert(code.into());
}

pub async fn grant(c: &MeshClients, u: &mut Universe, customer: &str) {
    c.loyalty
        .clone()
        .grant_points(loy::GrantPointsRequest {
            customer_id: customer.into(),
            points: GRANT,
        })
        .await
        .expect("GrantPoints");
    u.customers.insert(customer.into());
}

pub async fn product(c: &MeshClients, sku: &str) -> inv::GetProductResponse {
    c.inventory
        .clone()
        .get_product(inv::GetProductRequest { sku: sku.into() })
        .await
        .expect("GetProduct")
        .into_inner()
}

pub async fn balance(c: &MeshClients, customer: &str) -> loy::GetBalanceResponse {
    c.loyalty
        .clone()
        .get_balance(loy::GetBalanceRequest {
            customer_id: customer.into(),
        })
        .await
        .expect("GetBalance")
        .into_inner()
}

pub async fn coupon(c: &MeshClients, code: &str) -> ord::GetCouponResponse {
    c.order
        .clone()
        .get_coupon(ord::GetCouponRequest { code: code.into() })
        .await
        .expect("GetCoupon")
        .into_inner()
}

/// Every order of `customer` (all pages of ListOrders).
pub async fn orders_of(c: &MeshClients, customer: &str) -> Vec<ord::Order> {
    invariants::all_orders(&mut c.order.clone(), customer)
        .await
        .unwrap_or_else(|e| panic!("ListOrders {customer}: {e}"))
}

pub async fn order(c: &MeshClients, order_id: &str) -> ord::Order {
    c.order
        .clone()
        .get_order(ord::GetOrderRequest {
            order_id: order_id.into(),
        })
        .await
        .expect("GetOrder")
        .into_inner()
        .order
        .expect("GetOrder returns the order")
}

pub async fn place_ok(c: &MeshClients, req: orch::PlaceOrderRequest) -> orch::PlaceOrderResponse {
    let key = req.idempotency_key.clone();
    c.checkout
        .clone()
        .place_order(with_deadline(req, Duration::from_secs(20)))
        .await
        .unwrap_or_else(|s| panic!("PlaceOrder {key}: {s:?}"))
        .into_inner()
}

/// The invariants (`docs/architecture.md`, "Invariants") hold over the mesh's APIs; panics naming `when`.
pub async fn assert_invariants(c: &MeshClients, u: &Universe, when: &str) {
    if let Err(v) = invariants::check(c, u).await {
        panic!("after {when}: {v}");
    }
}

/// The saga holding idempotency key `key`, if logged.
pub async fn saga_by_key(c: &MeshClients, key: &str) -> Option<orch::Saga> {
    let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
    sagas.into_iter().find(|s| s.idempotency_key == key)
}

pub fn state_name(state: i32) -> &'static str {
    orch::SagaState::try_from(state).map_or("?", |s| s.as_str_name())
}

pub fn describe(saga: &orch::Saga) -> String {
    let steps: Vec<String> = saga
        .steps
        .iter()
        .map(|s| {
            let run = |r: Option<&orch::StepRun>| {
                r.map_or_else(
                    || "-".to_owned(),
                    |r| {
                        format!(
                            "{}x{} {}",
                            orch::StepStatus::try_from(r.status).map_or("?", |s| s.as_str_name()),
                            r.attempts,
                            r.last_error
                        )
                    },
                )
            };
            format!(
                "{}: {} / comp {}",
                s.name,
                run(s.action.as_ref()),
                run(s.compensation.as_ref())
            )
        })
        .collect();
    format!(
        "saga {} {} key {} reason {:?} steps [{}]",
        saga.saga_id,
        state_name(saga.state),
        saga.idempotency_key,
        saga.failure_reason,
        steps.join("; ")
    )
}

/// Polls GetSaga until the saga is COMPLETED or COMPENSATED; panics if it
/// goes FAILED or does not end within [`SETTLE_WITHIN`].
pub async fn wait_settled(c: &MeshClients, saga_id: &str) -> orch::Saga {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = None;
    loop {
        let got = c
            .admin
            .clone()
            .get_saga(orch::GetSagaRequest {
                saga_id: saga_id.into(),
            })
            .await;
        if let Ok(resp) = got {
            let saga = resp.into_inner().saga.expect("GetSaga returns the saga");
            match orch::SagaState::try_from(saga.state) {
                Ok(orch::SagaState::Completed | orch::SagaState::Compensated) => return saga,
                Ok(orch::SagaState::Failed) => {
                    panic!("the saga went FAILED after recovery: {}", describe(&saga))
                }
                _ => last = Some(saga),
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "saga {saga_id} did not end within {SETTLE_WITHIN:?}: {}",
                last.as_ref().map_or_else(|| "never read".into(), describe)
            );
        }
        sleep(POLL).await;
    }
}

/// Polls until the saga under `key` exists and `step`'s action (or its
/// compensation) has been attempted at least `n` times.
pub async fn wait_attempts(c: &MeshClients, key: &str, step: &str, compensation: bool, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    loop {
        if let Ok(sagas) = all_sagas(&mut c.admin.clone()).await
            && let Some(saga) = sagas.into_iter().find(|s| s.idempotency_key == key)
        {
            let run = saga.steps.iter().find(|s| s.name == step).and_then(|s| {
                if compensation {
                    s.compensation.as_ref()
                } else {
                    s.action.as_ref()
                }
            });
            if run.is_some_and(|r| r.attempts >= n) {
                return;
            }
            last = Some(saga);
        }
        if Instant::now() >= deadline {
            panic!(
                "{step} (compensation: {compensation}) of {key} not attempted {n} times: {}",
                last.as_ref().map_or_else(|| "no saga".into(), describe)
            );
        }
        sleep(POLL).await;
    }
}

pub fn action<'a>(saga: &'a orch::Saga, step: &str) -> &'a orch::StepRun {
    saga.steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.action.as_ref())
        .unwrap_or_else(|| panic!("no step {step}: {}", describe(saga)))
}

pub fn compensation<'a>(saga: &'a orch::Saga, step: &str) -> Option<&'a orch::StepRun> {
    saga.steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.compensation.as_ref())
}
