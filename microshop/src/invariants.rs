//! The invariants of ARCHITECTURE §8, checked over the services' public
//! APIs after a scenario has quiesced. The first violation is reported
//! precisely: which SKU, customer, coupon or saga, expected against found.
//!
//! Beyond the letter of §8, stock and points are reconciled against the
//! orders themselves: units reserved must equal the units of orders
//! awaiting payment, units sold (net of restocks) those of paid orders, and
//! points deducted (net of refunds) those redeemed by live orders. That is
//! what "nothing reserved or deducted outlives a compensated saga" means
//! in numbers.

use std::collections::{BTreeMap, HashMap, HashSet};

use microshop_proto::{
    inventory::v1 as inv,
    loyalty::v1 as loy,
    orchestrator::v1::{self as orch, saga_admin_service_client::SagaAdminServiceClient},
    order::v1::{self as ord, order_service_client::OrderServiceClient},
};
use tonic::transport::Channel;

use crate::mesh::MeshClients;

/// What the scenario created, so the checker knows what to read.
#[derive(Clone, Debug, Default)]
pub struct Universe {
    /// SKU → units put with PutProduct (the last `stock` set, when set once).
    pub skus: BTreeMap<String, i64>,
    /// Customers that placed orders or hold points.
    pub customers: HashSet<String>,
    /// Coupon codes.
    pub coupons: HashSet<String>,
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

fn broken<T>(msg: String) -> Result<T, Violation> {
    Err(Violation::Broken(msg))
}

fn read_err(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> Violation {
    let what = what.into();
    move |status| Violation::Read { what, status }
}

/// Reads every service and checks §8. Call once nothing is in flight.
pub async fn check(clients: &MeshClients, universe: &Universe) -> Result<Summary, Violation> {
    let mut c = clients.clone();
    let mut summary = Summary::default();

    // Sagas: every one ended, FAILED ones say why, one key → one saga.
    let sagas = all_sagas(&mut c.admin).await?;
    let mut keys = HashSet::new();
    let mut compensated_place = HashSet::new();
    for s in &sagas {
        let state = orch::SagaState::try_from(s.state).unwrap_or(orch::SagaState::Unspecified);
        *summary
            .sagas_by_state
            .entry(state.as_str_name().to_owned())
            .or_default() += 1;
        summary.checks += 1;
        match state {
            orch::SagaState::Completed | orch::SagaState::Compensated => {}
            orch::SagaState::Failed if !s.failure_reason.is_empty() => {}
            other => {
                return broken(format!(
                    "saga {} ended {} (expected COMPLETED, COMPENSATED or FAILED with a reason)",
                    s.saga_id,
                    other.as_str_name()
                ));
            }
        }
        // Keys are scoped per customer for checkouts; payment and cancel
        // sagas are keyed by order whoever calls.
        let scope = if s.r#type == orch::SagaType::PlaceOrder as i32 {
            s.customer_id.clone()
        } else {
            String::new()
        };
        if !keys.insert((scope, s.idempotency_key.clone())) {
            return broken(format!(
                "idempotency key {:?} of customer {:?} has more than one saga",
                s.idempotency_key, s.customer_id
            ));
        }
        if s.r#type == orch::SagaType::PlaceOrder as i32 && state == orch::SagaState::Compensated {
            compensated_place.insert(s.saga_id.clone());
        }
    }

    // Orders of every customer.
    let mut orders = Vec::new();
    for customer in &universe.customers {
        orders.extend(all_orders(&mut c.order, customer).await?);
    }
    summary.orders = orders.len();
    let mut per_saga: HashMap<&str, usize> = HashMap::new();
    for o in &orders {
        summary.checks += 1;
        let n = per_saga.entry(o.saga_id.as_str()).or_default();
        *n += 1;
        if *n > 1 {
            return broken(format!("saga {} created more than one order", o.saga_id));
        }
        let live = o.status != ord::OrderStatus::Cancelled as i32;
        if live && compensated_place.contains(&o.saga_id) {
            return broken(format!(
                "order {} is live but its checkout saga {} was compensated",
                o.order_id, o.saga_id
            ));
        }
    }

    // Stock: conservation, no negatives, reconciled with orders.
    let mut pending_units: HashMap<&str, i64> = HashMap::new();
    let mut paid_units: HashMap<&str, i64> = HashMap::new();
    for o in &orders {
        let bucket = match ord::OrderStatus::try_from(o.status) {
            Ok(ord::OrderStatus::PendingPayment) => &mut pending_units,
            Ok(ord::OrderStatus::Paid | ord::OrderStatus::Shipped) => &mut paid_units,
            _ => continue,
        };
        for l in &o.lines {
            *bucket.entry(l.sku.as_str()).or_default() += l.quantity;
        }
    }
    for (sku, put) in &universe.skus {
        let p = c
            .inventory
            .get_product(inv::GetProductRequest { sku: sku.clone() })
            .await
            .map_err(read_err(format!("product {sku}")))?
            .into_inner();
        summary.checks += 3;
        if p.available < 0 || p.reserved < 0 || p.sold < 0 {
            return broken(format!(
                "sku {sku}: negative stock (available {}, reserved {}, sold {})",
                p.available, p.reserved, p.sold
            ));
        }
        if put + p.restocked != p.available + p.reserved + p.sold {
            return broken(format!(
                "sku {sku}: put {put} + restocked {} = {}, but available {} + reserved {} + sold {} = {}",
                p.restocked,
                put + p.restocked,
                p.available,
                p.reserved,
                p.sold,
                p.available + p.reserved + p.sold
            ));
        }
        let pending = pending_units.get(sku.as_str()).copied().unwrap_or(0);
        if p.reserved != pending {
            return broken(format!(
                "sku {sku}: {} units reserved, but orders awaiting payment hold {pending}",
                p.reserved
            ));
        }
        let paid = paid_units.get(sku.as_str()).copied().unwrap_or(0);
        if p.sold - p.restocked != paid {
            return broken(format!(
                "sku {sku}: sold {} - restocked {} = {}, but paid orders hold {paid}",
                p.sold,
                p.restocked,
                p.sold - p.restocked
            ));
        }
    }

    // Points: ledger consistent, never negative, reconciled with orders.
    for customer in &universe.customers {
        let b = c
            .loyalty
            .get_balance(loy::GetBalanceRequest {
                customer_id: customer.clone(),
            })
            .await
            .map_err(read_err(format!("balance of {customer}")))?
            .into_inner();
        summary.checks += 2;
        let ledger = b.granted + b.earned - b.deducted + b.refunded;
        if b.points != ledger || b.points < 0 {
            return broken(format!(
                "customer {customer}: balance {} but granted {} + earned {} - deducted {} + refunded {} = {ledger}",
                b.points, b.granted, b.earned, b.deducted, b.refunded
            ));
        }
        let redeemed: i64 = orders
            .iter()
            .filter(|o| {
                &o.customer_id == customer && o.status != ord::OrderStatus::Cancelled as i32
            })
            .map(|o| o.redeemed_points)
            .sum();
        if b.deducted - b.refunded != redeemed {
            return broken(format!(
                "customer {customer}: deducted {} - refunded {} = {}, but live orders redeemed {redeemed}",
                b.deducted,
                b.refunded,
                b.deducted - b.refunded
            ));
        }
    }

    // Coupons: within limit, and equal to the live orders using them.
    for code in &universe.coupons {
        let coupon = c
            .order
            .get_coupon(ord::GetCouponRequest { code: code.clone() })
            .await
            .map_err(read_err(format!("coupon {code}")))?
            .into_inner();
        summary.checks += 2;
        if coupon.times_used > coupon.usage_limit {
            return broken(format!(
                "coupon {code}: timesUsed {} > usageLimit {}",
                coupon.times_used, coupon.usage_limit
            ));
        }
        let live = orders
            .iter()
            .filter(|o| &o.coupon_code == code && o.status != ord::OrderStatus::Cancelled as i32)
            .count();
        if usize::try_from(coupon.times_used).ok() != Some(live) {
            return broken(format!(
                "coupon {code}: timesUsed {} but {live} live orders use it",
                coupon.times_used
            ));
        }
    }
    Ok(summary)
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

async fn all_orders(
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
