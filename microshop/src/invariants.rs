//! The invariants of `docs/architecture.md` ("Invariants"), checked over the
//! services' public APIs after a scenario has quiesced. The first violation is
//! reported precisely: which SKU, customer, coupon or saga, expected against
//! found.
//!
//! [`check`] reads everything into a [`Snapshot`] of plain data first and
//! then judges it with [`judge`] (in [`rules`]), so the comparisons can be
//! fed doctored data in unit tests: each rule is shown to catch the fault
//! it guards against.
//!
//! What is checked (the documented list, and beyond its letter stock and points
//! are reconciled against the orders themselves; that is what "nothing
//! reserved or deducted outlives a compensated saga" means in numbers):
//! - every saga ended COMPLETED or COMPENSATED, or FAILED with a reason;
//!   one idempotency key, one saga; one saga, at most one order; no live
//!   order under a compensated checkout;
//! - per SKU: none of stock, available, reserved, sold, restocked negative;
//!   put + restocked = available + reserved + sold; stock shown =
//!   available + reserved; reserved = units of orders awaiting payment;
//!   sold − restocked = units of paid (or shipped) orders;
//! - per customer: balance = granted + earned − deducted + refunded ≥ 0;
//!   deducted − refunded = points redeemed by live orders; earned = what
//!   the customer's paid orders earned at the rate (see
//!   [`rules::expected_earned`] for the exact rule, so a duplicated or
//!   forged EarnPoints is caught);
//! - per coupon: timesUsed ≤ usageLimit, and = live orders using it.

mod rules;

use std::collections::{BTreeMap, HashSet};

use microshop_proto::{
    inventory::v1 as inv,
    loyalty::v1 as loy,
    orchestrator::v1::{self as orch, saga_admin_service_client::SagaAdminServiceClient},
    order::v1::{self as ord, order_service_client::OrderServiceClient},
};
use tonic::transport::Channel;

pub use rules::{ExpectedEarned, expected_earned, judge, points_earned_by};

use crate::mesh::MeshClients;

/// The earn rate of the seed rules: 1 point per 100,000 paid (loyalty-svc's
/// default, and `--earn-amount-per-point`'s).
pub const DEFAULT_EARN_AMOUNT_PER_POINT: i64 = loyalty_svc::domain::DEFAULT_EARN_AMOUNT_PER_POINT;

/// What the scenario created, so the checker knows what to read.
#[derive(Clone, Debug)]
pub struct Universe {
    /// SKU → units put with PutProduct (the last `stock` set, when set once).
    pub skus: BTreeMap<String, i64>,
    /// Customers that placed orders or hold points.
    pub customers: HashSet<String>,
    /// Coupon codes.
    pub coupons: HashSet<String>,
    /// The mesh's earn rate: one point per this much paid. Set it wherever
    /// the mesh's loyalty-svc runs with another `earn_amount_per_point`.
    pub earn_amount_per_point: i64,
}

impl Default for Universe {
    fn default() -> Self {
        Self {
            skus: BTreeMap::new(),
            customers: HashSet::new(),
            coupons: HashSet::new(),
            earn_amount_per_point: DEFAULT_EARN_AMOUNT_PER_POINT,
        }
    }
}

/// What a passing check looked at.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Invariant checks made.
    pub checks: usize,
    /// Sagas seen, by final state name.
    pub sagas_by_state: BTreeMap<String, usize>,
    /// Orders seen.
    pub orders: usize,
}

/// The first invariant found broken, or a read that failed.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// An invariant does not hold.
    #[error("invariant violated: {0}")]
    Broken(String),
    /// A service could not be read.
    #[error("cannot read {what}: {status}")]
    Read {
        /// What was read.
        what: String,
        /// The error.
        status: tonic::Status,
    },
}

/// Everything the checker reads, as the services answered it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every saga of the log.
    pub sagas: Vec<orch::Saga>,
    /// Every order of the universe's customers.
    pub orders: Vec<ord::Order>,
    /// GetProduct of each SKU of the universe.
    pub products: BTreeMap<String, inv::GetProductResponse>,
    /// GetBalance of each customer of the universe.
    pub balances: BTreeMap<String, loy::GetBalanceResponse>,
    /// GetCoupon of each coupon of the universe.
    pub coupons: BTreeMap<String, ord::GetCouponResponse>,
}

fn read_err(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> Violation {
    let what = what.into();
    move |status| Violation::Read { what, status }
}

/// Reads every service and checks the invariants. Call once nothing is in
/// flight.
pub async fn check(clients: &MeshClients, universe: &Universe) -> Result<Summary, Violation> {
    let snapshot = read(clients, universe).await?;
    judge(&snapshot, universe)
}

/// Reads what [`judge`] needs about `universe`.
pub async fn read(clients: &MeshClients, universe: &Universe) -> Result<Snapshot, Violation> {
    let mut c = clients.clone();
    let mut snapshot = Snapshot {
        sagas: all_sagas(&mut c.admin).await?,
        ..Snapshot::default()
    };
    for customer in &universe.customers {
        snapshot
            .orders
            .extend(all_orders(&mut c.order, customer).await?);
    }
    for sku in universe.skus.keys() {
        let p = c
            .inventory
            .get_product(inv::GetProductRequest { sku: sku.clone() })
            .await
            .map_err(read_err(format!("product {sku}")))?
            .into_inner();
        snapshot.products.insert(sku.clone(), p);
    }
    for customer in &universe.customers {
        let b = c
            .loyalty
            .get_balance(loy::GetBalanceRequest {
                customer_id: customer.clone(),
            })
            .await
            .map_err(read_err(format!("balance of {customer}")))?
            .into_inner();
        snapshot.balances.insert(customer.clone(), b);
    }
    for code in &universe.coupons {
        let coupon = c
            .order
            .get_coupon(ord::GetCouponRequest { code: code.clone() })
            .await
            .map_err(read_err(format!("coupon {code}")))?
            .into_inner();
        snapshot.coupons.insert(code.clone(), coupon);
    }
    Ok(snapshot)
}

/// Every saga, paging through ListSagas.
pub async fn all_sagas(
    admin: &mut SagaAdminServiceClient<Channel>,
) -> Result<Vec<orch::Saga>, Violation> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_sagas(orch::ListSagasRequest {
                state: 0,
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .map_err(read_err("sagas"))?
            .into_inner();
        out.extend(page.sagas);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Every order of `customer`, paging through ListOrders.
pub async fn all_orders(
    order: &mut OrderServiceClient<Channel>,
    customer: &str,
) -> Result<Vec<ord::Order>, Violation> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = order
            .list_orders(ord::ListOrdersRequest {
                customer_id: customer.to_owned(),
                page_size: 100,
                page_token: token,
            })
            .await
            .map_err(read_err(format!("orders of {customer}")))?
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}
