//! The comparisons of the invariant checker, over plain data: what the
//! services answered ([`Snapshot`]) against what they must have answered.
//! No I/O here, so the unit tests below feed each rule a doctored snapshot
//! (a balance with a duplicated EarnPoints, a stock that is not the sum of
//! its parts, a negative restock) and see it refused.

use std::collections::{BTreeSet, HashMap, HashSet};

use microshop_proto::{
    inventory::v1 as inv,
    orchestrator::v1 as orch,
    order::v1::{self as ord, OrderStatus},
};

use super::{Snapshot, Summary, Universe, Violation};

/// In-doubt earnings beyond this many are judged by their range only (the
/// exact subset sums would take 2^n steps); real runs have one or two.
const MAX_EXACT_IN_DOUBT: usize = 16;

/// Judges `snapshot` against the invariants (see the module list in
/// `invariants`).
pub fn judge(snapshot: &Snapshot, universe: &Universe) -> Result<Summary, Violation> {
    let mut summary = Summary::default();
    let compensated = sagas(&snapshot.sagas, &mut summary).map_err(Violation::Broken)?;
    orders(&snapshot.orders, &compensated, &mut summary).map_err(Violation::Broken)?;
    stock(snapshot, universe, &mut summary).map_err(Violation::Broken)?;
    points(snapshot, universe, &mut summary).map_err(Violation::Broken)?;
    coupons(snapshot, universe, &mut summary).map_err(Violation::Broken)?;
    summary.orders = snapshot.orders.len();
    Ok(summary)
}

/// Every saga ended, FAILED ones say why, one key → one saga. Returns the
/// ids of the compensated checkouts.
fn sagas(sagas: &[orch::Saga], summary: &mut Summary) -> Result<HashSet<String>, String> {
    let mut keys = HashSet::new();
    let mut compensated = HashSet::new();
    for s in sagas {
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
                return Err(format!(
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
            return Err(format!(
                "idempotency key {:?} of customer {:?} has more than one saga",
                s.idempotency_key, s.customer_id
            ));
        }
        if s.r#type == orch::SagaType::PlaceOrder as i32 && state == orch::SagaState::Compensated {
            compensated.insert(s.saga_id.clone());
        }
    }
    Ok(compensated)
}

/// One saga, at most one order; no live order under a compensated checkout.
fn orders(
    orders: &[ord::Order],
    compensated: &HashSet<String>,
    summary: &mut Summary,
) -> Result<(), String> {
    let mut per_saga: HashMap<&str, usize> = HashMap::new();
    for o in orders {
        summary.checks += 1;
        let n = per_saga.entry(o.saga_id.as_str()).or_default();
        *n += 1;
        if *n > 1 {
            return Err(format!("saga {} created more than one order", o.saga_id));
        }
        if is_live(o) && compensated.contains(&o.saga_id) {
            return Err(format!(
                "order {} is live but its checkout saga {} was compensated",
                o.order_id, o.saga_id
            ));
        }
    }
    Ok(())
}

fn is_live(o: &ord::Order) -> bool {
    o.status != OrderStatus::Cancelled as i32
}

/// Whether `o` was ever paid: the order keeps `paid_at` when a paid order
/// is cancelled later.
fn was_paid(o: &ord::Order) -> bool {
    o.paid_at.is_some()
        || matches!(
            OrderStatus::try_from(o.status),
            Ok(OrderStatus::Paid | OrderStatus::Shipped)
        )
}

/// Stock: no negatives, conservation, the shown stock, reconciled with the
/// orders.
fn stock(s: &Snapshot, universe: &Universe, summary: &mut Summary) -> Result<(), String> {
    let mut pending_units: HashMap<&str, i64> = HashMap::new();
    let mut paid_units: HashMap<&str, i64> = HashMap::new();
    for o in &s.orders {
        let bucket = match OrderStatus::try_from(o.status) {
            Ok(OrderStatus::PendingPayment) => &mut pending_units,
            Ok(OrderStatus::Paid | OrderStatus::Shipped) => &mut paid_units,
            _ => continue,
        };
        for l in &o.lines {
            *bucket.entry(l.sku.as_str()).or_default() += l.quantity;
        }
    }
    for (sku, put) in &universe.skus {
        let p = s
            .products
            .get(sku)
            .ok_or_else(|| format!("sku {sku} was not read"))?;
        summary.checks += 4;
        let pending = pending_units.get(sku.as_str()).copied().unwrap_or(0);
        let paid = paid_units.get(sku.as_str()).copied().unwrap_or(0);
        product(sku, *put, p, pending, paid)?;
    }
    Ok(())
}

/// The stock rules of one SKU: `put` units were put, orders awaiting
/// payment hold `pending` units and paid ones `paid`.
fn product(
    sku: &str,
    put: i64,
    p: &inv::GetProductResponse,
    pending: i64,
    paid: i64,
) -> Result<(), String> {
    if [p.stock, p.available, p.reserved, p.sold, p.restocked]
        .iter()
        .any(|n| *n < 0)
    {
        return Err(format!(
            "sku {sku}: negative stock (stock {}, available {}, reserved {}, sold {}, restocked {})",
            p.stock, p.available, p.reserved, p.sold, p.restocked
        ));
    }
    if put + p.restocked != p.available + p.reserved + p.sold {
        return Err(format!(
            "sku {sku}: put {put} + restocked {} = {}, but available {} + reserved {} + sold {} = {}",
            p.restocked,
            put + p.restocked,
            p.available,
            p.reserved,
            p.sold,
            p.available + p.reserved + p.sold
        ));
    }
    if p.stock != p.available + p.reserved {
        return Err(format!(
            "sku {sku}: stock shown {}, but available {} + reserved {} = {}",
            p.stock,
            p.available,
            p.reserved,
            p.available + p.reserved
        ));
    }
    if p.reserved != pending {
        return Err(format!(
            "sku {sku}: {} units reserved, but orders awaiting payment hold {pending}",
            p.reserved
        ));
    }
    if p.sold - p.restocked != paid {
        return Err(format!(
            "sku {sku}: sold {} - restocked {} = {}, but paid orders hold {paid}",
            p.sold,
            p.restocked,
            p.sold - p.restocked
        ));
    }
    Ok(())
}

/// Points an order earned when it was paid: what EarnPoints credits for
/// its total at the earn rate the order recorded with its pricing rules
/// (the confirm saga sends that rate), or the universe's for an order
/// without recorded rules.
pub fn points_earned_by(order: &ord::Order, universe: &Universe) -> i64 {
    let rate = order
        .pricing_rules
        .as_ref()
        .map(|r| r.earn_amount_per_point)
        .filter(|r| *r > 0)
        .unwrap_or(universe.earn_amount_per_point);
    loyalty_svc::domain::points_for(order.total_price, rate)
}

/// The points a customer's orders must have earned: `certain` for sure,
/// plus any subset of `in_doubt`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedEarned {
    /// Points earned for sure.
    pub certain: i64,
    /// (order id, points) of orders whose EarnPoints was sent but whose
    /// payment saga ended FAILED before recording an answer: the points
    /// were credited or not, and only loyalty-svc knows.
    pub in_doubt: Vec<(String, i64)>,
}

impl ExpectedEarned {
    /// Whether `earned` is one of the totals this allows.
    pub fn allows(&self, earned: i64) -> bool {
        let extra = earned - self.certain;
        if extra < 0 {
            return false;
        }
        if self.in_doubt.len() > MAX_EXACT_IN_DOUBT {
            return extra <= self.in_doubt.iter().map(|(_, p)| p).sum();
        }
        let mut sums = BTreeSet::from([0]);
        for (_, p) in &self.in_doubt {
            let more: Vec<i64> = sums.iter().map(|s| s + p).collect();
            sums.extend(more);
        }
        sums.contains(&extra)
    }
}

/// What `customer`'s orders must have earned, from the orders and the
/// payment sagas (`member`: whether loyalty-svc has the customer as a
/// member):
///
/// - only members earn (EarnPoints credits a guest nothing), and
///   membership, once granted, is never taken away; the rule takes a
///   member as enrolled before paying, as the scenarios seed them (a
///   member enrolled after paying would be reported as short of points);
/// - an order never paid earned nothing;
/// - an order once paid earned [`points_earned_by`] it, once, when its
///   payment saga's earn-points step succeeded. That holds also when the
///   order was cancelled after payment: the cancel saga (cancel-order,
///   release-or-restock, refund-points) has no clawback, so earned points
///   stay earned;
/// - a paid order whose payment saga is no longer listed earned too: only
///   COMPLETED sagas are purged by retention (FAILED ones never are);
/// - a paid order whose payment saga ended FAILED earned nothing if its
///   earn-points step was never sent, and is in doubt if it was sent
///   without an answer recorded.
pub fn expected_earned(
    customer: &str,
    member: bool,
    orders: &[ord::Order],
    sagas: &[orch::Saga],
    universe: &Universe,
) -> ExpectedEarned {
    let mut expected = ExpectedEarned::default();
    if !member {
        return expected;
    }
    for o in orders
        .iter()
        .filter(|o| o.customer_id == customer && was_paid(o))
    {
        // (status, attempts) of each payment saga's earn-points action.
        let earn_steps: Vec<(i32, u32)> = sagas
            .iter()
            .filter(|s| {
                s.r#type == orch::SagaType::ConfirmPayment as i32 && s.order_id == o.order_id
            })
            .map(|s| {
                s.steps
                    .iter()
                    .find(|st| st.name == "earn-points")
                    .and_then(|st| st.action.as_ref())
                    .map_or((0, 0), |a| (a.status, a.attempts))
            })
            .collect();
        let points = points_earned_by(o, universe);
        let succeeded = earn_steps
            .iter()
            .any(|(status, _)| *status == orch::StepStatus::Succeeded as i32);
        if succeeded || earn_steps.is_empty() {
            expected.certain += points;
        } else if earn_steps.iter().any(|(_, attempts)| *attempts > 0) {
            expected.in_doubt.push((o.order_id.clone(), points));
        }
    }
    expected
}

/// Points: ledger consistent, never negative, reconciled with the orders.
fn points(s: &Snapshot, universe: &Universe, summary: &mut Summary) -> Result<(), String> {
    for customer in &universe.customers {
        let b = s
            .balances
            .get(customer)
            .ok_or_else(|| format!("the balance of {customer} was not read"))?;
        summary.checks += 3;
        let ledger = b.granted + b.earned - b.deducted + b.refunded;
        if b.points != ledger || b.points < 0 {
            return Err(format!(
                "customer {customer}: balance {} but granted {} + earned {} - deducted {} + refunded {} = {ledger}",
                b.points, b.granted, b.earned, b.deducted, b.refunded
            ));
        }
        let redeemed: i64 = s
            .orders
            .iter()
            .filter(|o| &o.customer_id == customer && is_live(o))
            .map(|o| o.redeemed_points)
            .sum();
        if b.deducted - b.refunded != redeemed {
            return Err(format!(
                "customer {customer}: deducted {} - refunded {} = {}, but live orders redeemed {redeemed}",
                b.deducted,
                b.refunded,
                b.deducted - b.refunded
            ));
        }
        let expected = expected_earned(customer, b.member, &s.orders, &s.sagas, universe);
        if !expected.allows(b.earned) {
            return Err(format!(
                "customer {customer}: earned {}, but paid orders earned {} at 1 point per {}{}",
                b.earned,
                expected.certain,
                universe.earn_amount_per_point,
                if expected.in_doubt.is_empty() {
                    String::new()
                } else {
                    format!(" plus any of the in-doubt earnings {:?}", expected.in_doubt)
                }
            ));
        }
    }
    Ok(())
}

/// Coupons: within limit, and equal to the live orders using them.
fn coupons(s: &Snapshot, universe: &Universe, summary: &mut Summary) -> Result<(), String> {
    for code in &universe.coupons {
        let coupon = s
            .coupons
            .get(code)
            .ok_or_else(|| format!("coupon {code} was not read"))?;
        summary.checks += 2;
        if coupon.times_used > coupon.usage_limit {
            return Err(format!(
                "coupon {code}: timesUsed {} > usageLimit {}",
                coupon.times_used, coupon.usage_limit
            ));
        }
        let live = s
            .orders
            .iter()
            .filter(|o| &o.coupon_code == code && is_live(o))
            .count();
        if usize::try_from(coupon.times_used).ok() != Some(live) {
            return Err(format!(
                "coupon {code}: timesUsed {} but {live} live orders use it",
                coupon.times_used
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use microshop_proto::loyalty::v1 as loy;

    use super::*;

    const RATE: i64 = 100_000;

    fn step(name: &str, status: orch::StepStatus, attempts: u32) -> orch::SagaStep {
        orch::SagaStep {
            name: name.into(),
            action: Some(orch::StepRun {
                name: name.into(),
                status: status as i32,
                attempts,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn saga(
        id: &str,
        kind: orch::SagaType,
        order_id: &str,
        steps: Vec<orch::SagaStep>,
    ) -> orch::Saga {
        orch::Saga {
            saga_id: id.into(),
            r#type: kind as i32,
            state: orch::SagaState::Completed as i32,
            idempotency_key: format!("key-{id}"),
            order_id: order_id.into(),
            customer_id: "ann".into(),
            steps,
            ..Default::default()
        }
    }

    /// A payment saga of `order_id` whose earn-points step ended `earn`.
    fn payment(id: &str, order_id: &str, earn: orch::StepStatus, attempts: u32) -> orch::Saga {
        use orch::StepStatus::Succeeded;
        let mut s = saga(
            id,
            orch::SagaType::ConfirmPayment,
            order_id,
            vec![
                step("load-order", Succeeded, 1),
                step("mark-paid", Succeeded, 1),
                step("commit-stock", Succeeded, 1),
                step("earn-points", earn, attempts),
            ],
        );
        if earn != Succeeded {
            s.state = orch::SagaState::Failed as i32;
            s.failure_reason = "earn-points did not succeed within its retry budget".into();
        }
        s
    }

    fn order(id: &str, checkout: &str, status: OrderStatus, units: i64, total: i64) -> ord::Order {
        ord::Order {
            order_id: id.into(),
            customer_id: "ann".into(),
            saga_id: checkout.into(),
            lines: vec![ord::OrderLine {
                sku: "LAMP".into(),
                quantity: units,
                ..Default::default()
            }],
            total_price: total,
            status: status as i32,
            paid_at: matches!(status, OrderStatus::Paid).then(Default::default),
            ..Default::default()
        }
    }

    /// A consistent shop: LAMP (10 put), ann (500 granted) with one paid
    /// order of 2 lamps for 1,150,000 (11 points) and one awaiting payment
    /// of 1 lamp.
    fn shop() -> (Snapshot, Universe) {
        let universe = Universe {
            skus: [("LAMP".to_owned(), 10)].into(),
            customers: ["ann".to_owned()].into(),
            coupons: HashSet::new(),
            earn_amount_per_point: RATE,
        };
        let snapshot = Snapshot {
            sagas: vec![
                saga("p1", orch::SagaType::PlaceOrder, "o1", Vec::new()),
                saga("p2", orch::SagaType::PlaceOrder, "o2", Vec::new()),
                payment("c1", "o1", orch::StepStatus::Succeeded, 1),
            ],
            orders: vec![
                order("o1", "p1", OrderStatus::Paid, 2, 1_150_000),
                order("o2", "p2", OrderStatus::PendingPayment, 1, 600_000),
            ],
            products: [(
                "LAMP".to_owned(),
                inv::GetProductResponse {
                    sku: "LAMP".into(),
                    stock: 8,
                    available: 7,
                    reserved: 1,
                    sold: 2,
                    restocked: 0,
                    ..Default::default()
                },
            )]
            .into(),
            balances: [(
                "ann".to_owned(),
                loy::GetBalanceResponse {
                    customer_id: "ann".into(),
                    points: 511,
                    member: true,
                    granted: 500,
                    earned: 11,
                    deducted: 0,
                    refunded: 0,
                },
            )]
            .into(),
            coupons: Default::default(),
        };
        (snapshot, universe)
    }

    fn broken(snapshot: &Snapshot, universe: &Universe) -> String {
        match judge(snapshot, universe) {
            Err(Violation::Broken(why)) => why,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    fn balance(s: &mut Snapshot) -> &mut loy::GetBalanceResponse {
        s.balances.get_mut("ann").expect("ann's balance")
    }

    fn lamp(s: &mut Snapshot) -> &mut inv::GetProductResponse {
        s.products.get_mut("LAMP").expect("the lamp")
    }

    #[test]
    fn a_consistent_shop_passes() {
        let (s, u) = shop();
        let summary = judge(&s, &u).expect("consistent");
        assert_eq!(summary.orders, 2);
        assert!(summary.checks > 0);
    }

    #[test]
    fn a_duplicated_earn_points_is_caught() {
        // The same EarnPoints applied twice (its barrier lost): 22, not 11,
        // and the balance ledger itself still adds up.
        let (mut s, u) = shop();
        let b = balance(&mut s);
        b.earned += 11;
        b.points += 11;
        let why = broken(&s, &u);
        assert!(
            why.contains("earned 22") && why.contains("earned 11"),
            "{why}"
        );
    }

    #[test]
    fn points_earned_without_a_paid_order_are_caught() {
        let (mut s, u) = shop();
        // Earned for the unpaid order too.
        let b = balance(&mut s);
        b.earned += 6;
        b.points += 6;
        assert!(broken(&s, &u).contains("earned 17"));
        // Or not earned at all for the paid one.
        let (mut s, u) = shop();
        let b = balance(&mut s);
        b.earned = 0;
        b.points = 500;
        assert!(broken(&s, &u).contains("earned 0"));
    }

    #[test]
    fn a_guest_earns_nothing() {
        let (mut s, u) = shop();
        let b = balance(&mut s);
        b.member = false;
        assert!(broken(&s, &u).contains("paid orders earned 0"));
        let b = balance(&mut s);
        b.earned = 0;
        b.points = 500;
        judge(&s, &u).expect("a guest's payment credits nothing");
    }

    #[test]
    fn the_earn_rate_comes_from_the_universe() {
        let (mut s, mut u) = shop();
        u.earn_amount_per_point = 50_000;
        assert!(
            broken(&s, &u).contains("earned 11"),
            "23 expected at 50,000"
        );
        let b = balance(&mut s);
        b.earned = 23;
        b.points = 523;
        judge(&s, &u).expect("1,150,000 / 50,000 = 23 points");
    }

    #[test]
    fn a_paid_then_cancelled_order_keeps_its_points() {
        // Cancelled after payment: restocked, and no clawback of points.
        let (mut s, u) = shop();
        s.orders[0].status = OrderStatus::Cancelled as i32;
        let p = lamp(&mut s);
        p.restocked = 2;
        p.available = 9;
        p.stock = 10;
        judge(&s, &u).expect("earned points stay earned");
        let b = balance(&mut s);
        b.earned = 0;
        b.points = 500;
        assert!(broken(&s, &u).contains("earned 0"), "a clawback is no rule");
    }

    #[test]
    fn a_purged_payment_saga_still_earned() {
        let (mut s, u) = shop();
        s.sagas.retain(|x| x.saga_id != "c1");
        judge(&s, &u).expect("the COMPLETED payment saga was purged");
    }

    #[test]
    fn an_earn_in_doubt_allows_either_outcome_only() {
        use orch::StepStatus::{Failed, Pending};
        // FAILED after sending EarnPoints: 0 or 11, nothing else.
        let (mut s, u) = shop();
        s.sagas[2] = payment("c1", "o1", Failed, 3);
        judge(&s, &u).expect("credited");
        let b = balance(&mut s);
        b.earned = 0;
        b.points = 500;
        judge(&s, &u).expect("not credited");
        let b = balance(&mut s);
        b.earned = 22;
        b.points = 522;
        assert!(broken(&s, &u).contains("in-doubt"));
        // FAILED before sending it: nothing earned.
        let (mut s, u) = shop();
        s.sagas[2] = payment("c1", "o1", Pending, 0);
        assert!(broken(&s, &u).contains("earned 11"));
    }

    #[test]
    fn in_doubt_sums_are_exact() {
        let e = ExpectedEarned {
            certain: 5,
            in_doubt: vec![("a".into(), 3), ("b".into(), 10)],
        };
        for ok in [5, 8, 15, 18] {
            assert!(e.allows(ok), "{ok}");
        }
        for bad in [4, 6, 13, 19, 21] {
            assert!(!e.allows(bad), "{bad}");
        }
    }

    #[test]
    fn a_stock_that_is_not_its_parts_is_caught() {
        let (mut s, u) = shop();
        lamp(&mut s).stock = 9;
        let why = broken(&s, &u);
        assert!(why.contains("stock shown 9"), "{why}");
    }

    #[test]
    fn negative_counters_are_caught() {
        for field in 0..5 {
            let (mut s, u) = shop();
            let p = lamp(&mut s);
            match field {
                0 => p.stock = -1,
                1 => p.available = -1,
                2 => p.reserved = -1,
                3 => p.sold = -1,
                _ => p.restocked = -1,
            }
            let why = broken(&s, &u);
            assert!(why.contains("negative stock"), "field {field}: {why}");
        }
    }

    #[test]
    fn stock_reconciles_with_the_orders() {
        // A reservation no order holds (a leaked reserve).
        let (mut s, u) = shop();
        let p = lamp(&mut s);
        p.available -= 1;
        p.reserved += 1;
        assert!(broken(&s, &u).contains("units reserved"));
        // A sale no paid order holds.
        let (mut s, u) = shop();
        let p = lamp(&mut s);
        p.available -= 1;
        p.stock -= 1;
        p.sold += 1;
        assert!(broken(&s, &u).contains("paid orders hold"));
        // Units that appeared from nowhere.
        let (mut s, u) = shop();
        let p = lamp(&mut s);
        p.available += 1;
        p.stock += 1;
        assert!(broken(&s, &u).contains("put 10"));
    }

    #[test]
    fn points_deducted_for_no_live_order_are_caught() {
        let (mut s, u) = shop();
        let b = balance(&mut s);
        b.deducted = 20;
        b.points -= 20;
        assert!(broken(&s, &u).contains("live orders redeemed 0"));
    }
}
