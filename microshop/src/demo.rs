//! `microshop demo`: the old shop's failures, replayed against a fresh
//! in-process mesh on a temporary embedded store, with a readable report
//! and the invariants of `docs/architecture.md` checked at the end.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use microshop_proto::{
    inventory::v1 as inv,
    loyalty::v1 as loy,
    orchestrator::v1::{self as orch},
    order::v1 as ord,
};
use microshop_runtime::errors::reason_of;
use order_svc::PricingRules;
use tokio::task::JoinSet;

use crate::{
    invariants::{self, Universe, all_sagas},
    mesh::{Mesh, MeshClients, MeshConfig},
};

/// What one PlaceOrder answered, for the report.
struct Outcome {
    label: String,
    result: Result<orch::PlaceOrderResponse, tonic::Status>,
}

impl Outcome {
    fn line(&self) -> String {
        match &self.result {
            Ok(r) => format!(
                "{:<10} OK      order {} total {}",
                self.label,
                short(&r.order_id),
                r.order.as_ref().map_or(0, |o| o.total_price)
            ),
            Err(s) => format!(
                "{:<10} {:<7} {} — {}",
                self.label,
                code_word(s.code()),
                reason_of(s).map_or_else(|| "-".to_owned(), |r| r.to_string()),
                s.message()
            ),
        }
    }
}

fn code_word(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::FailedPrecondition => "REFUSED",
        tonic::Code::InvalidArgument => "INVALID",
        tonic::Code::AlreadyExists => "EXISTS",
        tonic::Code::Unavailable => "UNAVAIL",
        _ => "ERROR",
    }
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

fn request(
    key: &str,
    customer: &str,
    sku: &str,
    qty: i64,
    coupon: &str,
    points: i64,
) -> orch::PlaceOrderRequest {
    orch::PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: vec![orch::LineItem {
            sku: sku.into(),
            quantity: qty,
        }],
        coupon_code: coupon.into(),
        points_to_redeem: points,
        shipping: Some(orch::ShippingAddress {
            name: customer.into(),
            address: "1 Demo Street, Hanoi".into(),
            phone: "+84 900 000 000".into(),
        }),
    }
}

/// A check of the demo's expectations, printed as it is made.
struct Expect {
    failures: usize,
}

impl Expect {
    fn that(&mut self, ok: bool, what: &str) {
        println!("  {} {what}", if ok { "✓" } else { "✗" });
        if !ok {
            self.failures += 1;
        }
    }
}

/// Runs the demo with `pricing`; `Ok(true)` when every expectation and
/// invariant holds.
pub async fn run(data_dir: Option<PathBuf>, pricing: PricingRules) -> anyhow::Result<bool> {
    let tmp = tempfile::tempdir()?;
    let dir = data_dir.unwrap_or_else(|| tmp.path().to_owned());
    let mut config = MeshConfig::ephemeral(&dir);
    config.pricing = pricing;
    let mesh = Mesh::start(config).await?;
    let c = MeshClients::connect(&mesh.addrs, Duration::from_secs(10)).await?;
    let result = scenarios(&c, &pricing).await;
    mesh.shutdown().await?;
    result
}

async fn scenarios(c: &MeshClients, pricing: &PricingRules) -> anyhow::Result<bool> {
    let mut expect = Expect { failures: 0 };
    let mut universe = Universe {
        earn_amount_per_point: pricing.earn_amount_per_point,
        ..Universe::default()
    };
    println!("microshop demo — the old shop's failures against the saga mesh\n");

    // Catalog, members and a coupon.
    let mut inventory = c.inventory.clone();
    for (sku, name, price, stock) in [
        ("TSHIRT", "Cotton T-shirt", 150_000, 10),
        ("MUG", "Ceramic mug", 90_000, 20),
    ] {
        inventory
            .put_product(inv::PutProductRequest {
                sku: sku.into(),
                name: name.into(),
                unit_price: price,
                stock,
            })
            .await?;
        universe.skus.insert(sku.into(), stock);
    }
    let mut loyalty = c.loyalty.clone();
    loyalty
        .grant_points(loy::GrantPointsRequest {
            customer_id: "alice".into(),
            points: 300,
        })
        .await?;
    let mut order = c.order.clone();
    order
        .put_coupon(ord::PutCouponRequest {
            code: "LASTONE".into(),
            kind: ord::CouponKind::Fixed.into(),
            value: 50_000,
            usage_limit: 1,
        })
        .await?;
    universe.coupons.insert("LASTONE".into());
    // Catalog prices are in the configured currency's smallest unit.
    let cur = pricing.currency;
    println!(
        "seeded (amounts in the smallest unit of {cur}): TSHIRT 150,000 ×10, MUG 90,000 ×20; alice has 300 points; coupon LASTONE (50,000 off, 1 use)\n"
    );

    // 1. The oversell race.
    println!("1. fifteen customers order 2 T-shirts each, all at once, against stock 10");
    let mut race = JoinSet::new();
    for i in 1..=15 {
        let mut checkout = c.checkout.clone();
        let customer = format!("c{i:02}");
        race.spawn(async move {
            let req = request(&format!("race-{i}"), &customer, "TSHIRT", 2, "", 0);
            let result = checkout
                .place_order(req)
                .await
                .map(tonic::Response::into_inner);
            Outcome {
                label: customer,
                result,
            }
        });
    }
    let mut outcomes = race.join_all().await;
    outcomes.sort_by(|a, b| a.label.cmp(&b.label));
    for o in &outcomes {
        println!("   {}", o.line());
        universe.customers.insert(o.label.clone());
    }
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_ok()).collect();
    let out_of_stock = outcomes
        .iter()
        .filter(|o| {
            o.result.as_ref().err().and_then(reason_of)
                == Some(microshop_runtime::Reason::OutOfStock)
        })
        .count();
    expect.that(
        ok.len() == 5,
        &format!("{} of 15 orders succeeded (expected 5)", ok.len()),
    );
    expect.that(
        out_of_stock == 10,
        &format!("{out_of_stock} refused OUT_OF_STOCK (expected 10)"),
    );
    let tshirt = product(c, "TSHIRT").await?;
    expect.that(
        tshirt.available == 0,
        &format!(
            "{} T-shirts left available (expected 0, never negative)",
            tshirt.available
        ),
    );

    // 2. A coupon that runs out after stock and points were taken.
    println!(
        "\n2. carol uses the last LASTONE; then alice orders a mug with LASTONE and 50 points"
    );
    let mut checkout = c.checkout.clone();
    let carol = checkout
        .place_order(request("carol-1", "carol", "MUG", 1, "LASTONE", 0))
        .await
        .map(tonic::Response::into_inner);
    let alice = checkout
        .place_order(request("alice-1", "alice", "MUG", 1, "LASTONE", 50))
        .await
        .map(tonic::Response::into_inner);
    universe
        .customers
        .extend(["carol".to_owned(), "alice".to_owned()]);
    for o in [
        Outcome {
            label: "carol".into(),
            result: carol.clone(),
        },
        Outcome {
            label: "alice".into(),
            result: alice.clone(),
        },
    ] {
        println!("   {}", o.line());
    }
    expect.that(carol.is_ok(), "carol's order used the coupon");
    let alice_reason = alice.as_ref().err().and_then(reason_of);
    expect.that(
        alice_reason == Some(microshop_runtime::Reason::CouponExhausted),
        "alice's order was refused COUPON_EXHAUSTED at create-order, after reserve-stock and deduct-points",
    );
    if let Err(status) = &alice
        && let Some(saga_id) = microshop_runtime::errors::metadata_of(status, "sagaId")
    {
        let saga = c
            .admin
            .clone()
            .get_saga(orch::GetSagaRequest { saga_id })
            .await?
            .into_inner()
            .saga
            .unwrap_or_default();
        println!(
            "   alice's saga {} ended {}:",
            short(&saga.saga_id),
            state_name(saga.state)
        );
        print_steps(&saga, "     ");
        expect.that(
            saga.state == orch::SagaState::Compensated as i32,
            "alice's saga ended COMPENSATED",
        );
    }
    let mug = product(c, "MUG").await?;
    let alice_points = balance(c, "alice").await?;
    expect.that(
        mug.reserved == 1 && mug.available == 19,
        &format!(
            "mug stock restored: {} available, {} reserved (carol's)",
            mug.available, mug.reserved
        ),
    );
    expect.that(
        alice_points.points == 300,
        &format!("alice's points restored: {}", alice_points.points),
    );

    // 3. A guest redeeming points.
    println!("\n3. dave, a guest, tries to redeem 10 points");
    let dave = checkout
        .place_order(request("dave-1", "dave", "MUG", 1, "", 10))
        .await
        .map(tonic::Response::into_inner);
    universe.customers.insert("dave".into());
    println!(
        "   {}",
        Outcome {
            label: "dave".into(),
            result: dave.clone()
        }
        .line()
    );
    expect.that(
        dave.as_ref().err().and_then(reason_of) == Some(microshop_runtime::Reason::NotAMember),
        "refused NOT_A_MEMBER and compensated",
    );

    // 4. Idempotent retries.
    println!("\n4. a winner of the race retries with the same idempotency key");
    let winner = ok
        .first()
        .map(|o| o.label.clone())
        .unwrap_or_else(|| "c01".into());
    let key = format!(
        "race-{}",
        winner.trim_start_matches('c').trim_start_matches('0')
    );
    let first_id = ok
        .first()
        .and_then(|o| o.result.as_ref().ok())
        .map(|r| r.order_id.clone())
        .unwrap_or_default();
    let again = checkout
        .place_order(request(&key, &winner, "TSHIRT", 2, "", 0))
        .await
        .map(tonic::Response::into_inner);
    let same = again
        .as_ref()
        .map(|r| r.order_id.clone())
        .unwrap_or_default();
    println!("   retry answered order {}", short(&same));
    expect.that(
        !first_id.is_empty() && same == first_id,
        "the retry returned the same order and ran no step twice",
    );
    let reused = checkout
        .place_order(request(&key, &winner, "TSHIRT", 3, "", 0))
        .await;
    expect.that(
        reused.as_ref().err().map(tonic::Status::code) == Some(tonic::Code::AlreadyExists),
        "the same key with another cart is ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED",
    );

    // 5. Payment and cancellation.
    println!("\n5. one order is paid, another cancelled, and the paid one cancelled too (restock)");
    let ids: Vec<String> = ok
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .map(|r| r.order_id.clone())
        .collect();
    if let [paid, cancelled, ..] = ids.as_slice() {
        let pay = checkout
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: paid.clone(),
                payment_ref: "PAY-1".into(),
            })
            .await?
            .into_inner();
        println!(
            "   order {} paid: saga {}",
            short(paid),
            state_name(pay.state)
        );
        let cancel = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: cancelled.clone(),
                reason: "changed my mind".into(),
            })
            .await?
            .into_inner();
        println!(
            "   order {} cancelled: saga {}",
            short(cancelled),
            state_name(cancel.state)
        );
        let t = product(c, "TSHIRT").await?;
        expect.that(
            t.available == 2 && t.sold == 2 && t.reserved == 6,
            &format!(
                "T-shirts: {} available, {} reserved, {} sold",
                t.available, t.reserved, t.sold
            ),
        );
        let repeat = checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: cancelled.clone(),
                reason: String::new(),
            })
            .await?
            .into_inner();
        expect.that(
            repeat.saga_id == cancel.saga_id,
            "cancelling again is a no-op (same saga)",
        );
        checkout
            .cancel_order(orch::CancelOrderRequest {
                order_id: paid.clone(),
                reason: "returned".into(),
            })
            .await?;
        let t = product(c, "TSHIRT").await?;
        expect.that(
            t.available == 4 && t.restocked == 2,
            &format!(
                "paid order cancelled: {} available, {} restocked",
                t.available, t.restocked
            ),
        );
    } else {
        expect.that(false, "two successful orders to pay and cancel");
    }

    // Report.
    println!("\nfinal stock");
    for sku in universe.skus.keys() {
        let p = product(c, sku).await?;
        println!(
            "   {sku:<7} available {:>3}  reserved {:>3}  sold {:>3}  restocked {:>3}",
            p.available, p.reserved, p.sold, p.restocked
        );
    }
    println!("points");
    for who in ["alice", "dave"] {
        let b = balance(c, who).await?;
        println!("   {who:<7} {:>4} points (member: {})", b.points, b.member);
    }
    let coupon = order
        .get_coupon(ord::GetCouponRequest {
            code: "LASTONE".into(),
        })
        .await?
        .into_inner();
    println!(
        "coupon LASTONE used {} of {}",
        coupon.times_used, coupon.usage_limit
    );

    println!("\nsagas (newest first)");
    let sagas = all_sagas(&mut c.admin.clone()).await?;
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &sagas {
        *by_state.entry(state_name(s.state)).or_default() += 1;
        println!(
            "   {} {:<15} {:<24} {}",
            short(&s.saga_id),
            type_name(s.r#type),
            s.idempotency_key,
            state_name(s.state)
        );
        print_steps(s, "      ");
    }
    println!("   by state: {by_state:?}");

    println!("\ninvariants (docs/architecture.md, Invariants)");
    match invariants::check(c, &universe).await {
        Ok(summary) => expect.that(
            true,
            &format!(
                "all hold ({} checks over {} sagas and {} orders)",
                summary.checks,
                sagas.len(),
                summary.orders
            ),
        ),
        Err(v) => expect.that(false, &v.to_string()),
    }
    println!();
    if expect.failures == 0 {
        println!("demo passed: nothing oversold, lost or applied twice");
    } else {
        println!("demo FAILED: {} expectation(s) not met", expect.failures);
    }
    Ok(expect.failures == 0)
}

async fn product(c: &MeshClients, sku: &str) -> anyhow::Result<inv::GetProductResponse> {
    Ok(c.inventory
        .clone()
        .get_product(inv::GetProductRequest { sku: sku.into() })
        .await?
        .into_inner())
}

async fn balance(c: &MeshClients, customer: &str) -> anyhow::Result<loy::GetBalanceResponse> {
    Ok(c.loyalty
        .clone()
        .get_balance(loy::GetBalanceRequest {
            customer_id: customer.into(),
        })
        .await?
        .into_inner())
}

fn state_name(state: i32) -> &'static str {
    orch::SagaState::try_from(state)
        .unwrap_or(orch::SagaState::Unspecified)
        .as_str_name()
        .trim_start_matches("SAGA_STATE_")
}

fn type_name(t: i32) -> &'static str {
    orch::SagaType::try_from(t)
        .unwrap_or(orch::SagaType::Unspecified)
        .as_str_name()
        .trim_start_matches("SAGA_TYPE_")
}

fn millis(run: &orch::StepRun) -> String {
    match (&run.started_at, &run.finished_at) {
        (Some(a), Some(b)) => {
            let ms = (b.seconds - a.seconds) * 1000 + i64::from(b.nanos - a.nanos) / 1_000_000;
            format!("{ms}ms")
        }
        _ => "-".into(),
    }
}

fn step_word(status: i32) -> &'static str {
    orch::StepStatus::try_from(status)
        .unwrap_or(orch::StepStatus::Unspecified)
        .as_str_name()
        .trim_start_matches("STEP_STATUS_")
}

fn print_steps(saga: &orch::Saga, indent: &str) {
    for step in &saga.steps {
        let Some(action) = &step.action else { continue };
        if action.status == orch::StepStatus::Pending as i32 {
            continue;
        }
        let mut line = format!(
            "{indent}{:<14} {:<9} {:>5}",
            step.name,
            step_word(action.status),
            millis(action)
        );
        if !action.last_error.is_empty() {
            line.push_str(&format!("  ({})", action.last_error));
        }
        if let Some(comp) = &step.compensation {
            line.push_str(&format!(
                "  ↩ {} {} {}",
                comp.name,
                step_word(comp.status),
                millis(comp)
            ));
        }
        println!("{line}");
    }
}
