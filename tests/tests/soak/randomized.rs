//! The randomized soak under faults (the suite's docs are in `main.rs`)
//! and the rule a resent request's answer is held to.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use microshop::invariants;
use microshop_proto::{
    orchestrator::v1::{self as orch, SagaState},
    order::v1::{self as ord, OrderStatus},
};
use microshop_runtime::{
    Reason,
    faults::{FaultConfig, FaultKind, FaultStats},
};
use microshop_tests::{Shop, TestMesh, error_reason, eventually, order_request, saga_state};
use orchestrator::EngineConfig;

use crate::SETTLE_WITHIN;
use tokio::{task::JoinSet, time::Instant};
use tonic::{Code, Response, Status};

/// Client calls of the default run.
const SHORT_OPS: u64 = 10_000;
/// Client calls with `SOAK_LONG=1`.
const LONG_OPS: u64 = 200_000;
/// Faults the default run must inject at least.
const MIN_FAULTS: u64 = 1_000;
/// Concurrent clients.
const CLIENTS: u64 = 24;

/// Unpaid orders are cancelled after this long: short, so the expiry saga
/// races payments and cancellations during the run.
const PAYMENT_TTL: Duration = Duration::from_secs(3);

/// Budgets for a mesh under faults: a transient fault costs one quick
/// retry; only an action held back (all its retries time out) exhausts a
/// step's budget, making the saga FAILED. Compensations outlast any run of
/// bad luck.
fn soak_engine() -> EngineConfig {
    EngineConfig {
        step_attempts: 6,
        step_budget: Duration::from_secs(5),
        compensation_attempts: 60,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(100),
        call_timeout: Duration::from_millis(750),
        payment_ttl: PAYMENT_TTL,
        recovery_interval: Duration::from_millis(500),
        expiry_interval: Duration::from_millis(250),
        max_wait: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

/// The faults of the soak: about one participant call in eight.
fn soak_faults(seed: u64) -> FaultConfig {
    format!(
        "seed={seed},unavailable=0.02,deadline=0.02,delay=0.03,delay_ms=15,\
         duplicate=0.03,drop=0.03,late=0.01,late_ms=2500"
    )
    .parse()
    .expect("the soak's fault spec parses")
}

// ---------------------------------------------------------------------------
// A small seeded generator (SplitMix64).

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo + 1).unwrap_or(1);
        lo + i64::try_from(self.below(span)).unwrap_or(0)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        let i = usize::try_from(self.below(xs.len() as u64)).unwrap_or(0);
        &xs[i]
    }
}

fn seed() -> u64 {
    std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(7)
        })
}

fn target_ops() -> u64 {
    if let Some(n) = std::env::var("SOAK_OPS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return n;
    }
    if std::env::var("SOAK_LONG").is_ok_and(|v| v == "1") {
        LONG_OPS
    } else {
        SHORT_OPS
    }
}

// ---------------------------------------------------------------------------
// What the shop sells and who buys.

#[derive(Clone, Debug)]
struct Catalog {
    /// sku → unit price.
    prices: HashMap<String, i64>,
    hot: Vec<String>,
    cold: Vec<String>,
    members: Vec<String>,
    guests: Vec<String>,
    coupons: Vec<String>,
}

async fn seed_shop(m: &mut TestMesh, rng: &mut Rng) -> Catalog {
    let mut prices = HashMap::new();
    let mut hot = Vec::new();
    let mut cold = Vec::new();
    for i in 0..4 {
        let sku = format!("HOT-{i}");
        let price = rng.range(5, 60) * 10_000;
        m.put_product(&sku, price, rng.range(20, 40)).await;
        prices.insert(sku.clone(), price);
        hot.push(sku);
    }
    for i in 0..24 {
        let sku = format!("SKU-{i:02}");
        let price = rng.range(1, 90) * 10_000;
        m.put_product(&sku, price, 1_000_000).await;
        prices.insert(sku.clone(), price);
        cold.push(sku);
    }
    let mut members = Vec::new();
    for i in 0..30 {
        let c = format!("member-{i:02}");
        m.grant_points(&c, rng.range(200, 2_000)).await;
        members.push(c);
    }
    let guests: Vec<String> = (0..10).map(|i| format!("guest-{i:02}")).collect();
    for g in &guests {
        m.universe.customers.insert(g.clone());
    }
    m.put_coupon("PCT10", ord::CouponKind::Percentage, 10, 1_000_000)
        .await;
    m.put_coupon("FIX20K", ord::CouponKind::Fixed, 20_000, 400)
        .await;
    m.put_coupon("RARE", ord::CouponKind::Fixed, 10_000, 3)
        .await;
    Catalog {
        prices,
        hot,
        cold,
        members,
        guests,
        // NOSUCH does not exist: COUPON_INVALID.
        coupons: vec![
            "PCT10".into(),
            "FIX20K".into(),
            "RARE".into(),
            "NOSUCH".into(),
        ],
    }
}

// ---------------------------------------------------------------------------
// What the clients saw.

mod client;
use client::*;

/// Switches faults off and waits until nothing moves: held-back actions
/// landed, FAILED sagas retried, unpaid orders expired, no saga RUNNING or
/// COMPENSATING. Returns the number of RetrySaga calls.
async fn settle(shop: &Shop, stats: &FaultStats) -> u64 {
    stats.set_enabled(false);
    eventually("held-back actions to land", SETTLE_WITHIN, || async {
        match stats.snapshot().late_in_flight {
            0 => Ok(()),
            n => Err(format!("{n} in flight")),
        }
    })
    .await;
    let retries = AtomicU64::new(0);
    eventually("the mesh to settle", SETTLE_WITHIN, || async {
        let sagas = invariants::all_sagas(&mut shop.clients.admin.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut busy = 0;
        for s in &sagas {
            match saga_state(s) {
                SagaState::Running | SagaState::Compensating => busy += 1,
                SagaState::Failed => {
                    busy += 1;
                    retries.fetch_add(1, Ordering::SeqCst);
                    let result = shop
                        .clients
                        .admin
                        .clone()
                        .retry_saga(orch::RetrySagaRequest {
                            saga_id: s.saga_id.clone(),
                            ..Default::default()
                        })
                        .await;
                    if let Err(st) = result
                        && st.code() != Code::FailedPrecondition
                    {
                        return Err(format!("RetrySaga {}: {st:?}", s.saga_id));
                    }
                }
                _ => {}
            }
        }
        if busy > 0 {
            let first: Vec<String> = sagas
                .iter()
                .filter(|s| {
                    saga_state(s) != SagaState::Completed && saga_state(s) != SagaState::Compensated
                })
                .take(3)
                .map(describe_saga)
                .collect();
            return Err(format!(
                "{busy} sagas not ended, e.g. {}",
                first.join(" | ")
            ));
        }
        // Unpaid orders: the expiry saga cancels them after the TTL.
        let mut pending = 0;
        for customer in &shop.universe.customers {
            pending += shop
                .orders_of(customer)
                .await
                .iter()
                .filter(|o| o.status == OrderStatus::PendingPayment as i32)
                .count();
        }
        if pending > 0 {
            return Err(format!("{pending} orders still awaiting payment"));
        }
        Ok(())
    })
    .await;
    retries.load(Ordering::SeqCst)
}

/// A saga in one line: type, state, reason, steps, last transitions.
fn describe_saga(s: &orch::Saga) -> String {
    let steps: Vec<String> = s
        .steps
        .iter()
        .map(|st| {
            let run = |r: &Option<orch::StepRun>| {
                r.as_ref().map_or("-".to_owned(), |r| {
                    format!(
                        "{}x{} {}",
                        orch::StepStatus::try_from(r.status)
                            .map_or("?", |x| x.as_str_name())
                            .trim_start_matches("STEP_STATUS_"),
                        r.attempts,
                        r.last_error
                    )
                })
            };
            format!(
                "{}[{} / {}]",
                st.name,
                run(&st.action),
                run(&st.compensation)
            )
        })
        .collect();
    let history: Vec<String> = s
        .history
        .iter()
        .rev()
        .take(4)
        .map(|h| format!("{h:?}"))
        .collect();
    format!(
        "saga {} {:?} {} ({}): steps {} history {}",
        s.saga_id,
        orch::SagaType::try_from(s.r#type).map_or("?", |t| t.as_str_name()),
        saga_state(s).as_str_name(),
        s.failure_reason,
        steps.join(", "),
        history.join(" <- ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_soak_under_faults() {
    let seed = seed();
    let target = target_ops();
    println!("SOAK_SEED={seed} (set it to replay this run's decisions); {target} client calls");
    let faults = soak_faults(seed);
    let stats = faults.stats();
    let mut m = TestMesh::start_with(soak_engine(), |c| {
        c.server.faults = Some(faults);
        // The soak is about interleavings, not fsync (the crash matrix
        // covers durability): commits skip the fsync, like the benchmark.
        c.durable = microshop_storage::embedded::Durable::No;
    })
    .await;
    let mut rng = Rng(seed);
    let catalog = Arc::new(seed_shop(&mut m, &mut rng).await);
    let tally = Arc::new(Tally::default());

    let started = Instant::now();
    let mut clients = JoinSet::new();
    for id in 0..CLIENTS {
        let client = Client {
            id,
            rng: Rng(seed ^ (id + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
            shop: m.shop.clone(),
            catalog: Arc::clone(&catalog),
            tally: Arc::clone(&tally),
            target,
            orders: Vec::new(),
            keys: Vec::new(),
            failed: Vec::new(),
            sagas: HashMap::new(),
            aborted: HashSet::new(),
            next_key: 0,
        };
        clients.spawn(client.run());
    }
    let mut keys = 0;
    let mut placed = 0;
    while let Some(done) = clients.join_next().await {
        let client = done.expect("a client task panicked");
        keys += client.keys.len();
        placed += client.orders.len();
    }
    let run_time = started.elapsed();
    println!("run phase: {:.1} s", run_time.as_secs_f64());
    let during = stats.snapshot();

    let retries = settle(&m, &stats).await;
    let after = stats.snapshot();
    let summary = invariants::check(&m.clients, &m.universe)
        .await
        .unwrap_or_else(|v| panic!("SOAK_SEED={seed}: {v}"));
    let sagas = m.sagas().await;
    let not_ended: Vec<String> = sagas
        .iter()
        .filter(|s| !matches!(saga_state(s), SagaState::Completed | SagaState::Compensated))
        .map(|s| {
            format!(
                "{} {}: {}",
                s.saga_id,
                saga_state(s).as_str_name(),
                s.failure_reason
            )
        })
        .collect();

    let calls: u64 = tally.outcomes.lock().map_or(0, |o| o.values().sum());
    let mut report = String::new();
    let _ = writeln!(report, "=== soak summary (SOAK_SEED={seed}) ===");
    let _ = writeln!(
        report,
        "client calls: {calls} in {:.1} s ({keys} idempotency keys, {placed} orders placed), {retries} RetrySaga calls while settling",
        run_time.as_secs_f64()
    );
    for (outcome, n) in tally.outcomes.lock().map(|o| o.clone()).unwrap_or_default() {
        let _ = writeln!(report, "  {n:>6}  {outcome}");
    }
    let _ = writeln!(report, "faults: {after}");
    let _ = writeln!(
        report,
        "  during the run: {} of {} participant saga calls",
        during.total(),
        during.seen
    );
    let _ = writeln!(
        report,
        "sagas: {:?}; orders {}; invariant checks passed: {}",
        summary.sagas_by_state, summary.orders, summary.checks
    );
    let _ = writeln!(
        report,
        "crash points: covered by microshop/tests/crash/ (separate processes), not counted here"
    );
    let anomalies = tally
        .anomalies
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    let _ = writeln!(report, "anomalies: {}", anomalies.len());
    println!("{report}");

    assert!(
        anomalies.is_empty(),
        "SOAK_SEED={seed}: {} anomalies, first: {}",
        anomalies.len(),
        anomalies[0]
    );
    assert!(
        not_ended.is_empty(),
        "SOAK_SEED={seed}: sagas not COMPLETED or COMPENSATED after settling: {not_ended:?}"
    );
    assert!(
        calls >= target,
        "SOAK_SEED={seed}: only {calls} client calls"
    );
    if target >= SHORT_OPS {
        assert!(
            after.total() >= MIN_FAULTS,
            "SOAK_SEED={seed}: only {} faults injected",
            after.total()
        );
        for kind in FaultKind::ALL {
            assert!(
                after.of(kind) > 0,
                "SOAK_SEED={seed}: no {} fault",
                kind.as_str()
            );
        }
        assert!(
            after.late_refused > 0,
            "SOAK_SEED={seed}: no action landed after its compensation"
        );
    }
    m.shutdown().await;
}

#[test]
fn a_resend_must_repeat_a_final_answer() {
    let order = Seen::Order("o-1".into());
    let refused = Seen::Refused(Code::FailedPrecondition, Some("OUT_OF_STOCK".into()));
    let aborted = Seen::Refused(Code::FailedPrecondition, Some("SAGA_ABORTED".into()));
    let others = [
        Seen::Open,
        aborted.clone(),
        Seen::Order("o-2".into()),
        Seen::Refused(Code::FailedPrecondition, Some("COUPON_EXHAUSTED".into())),
    ];
    for first in [&order, &refused] {
        for by_soak in [false, true] {
            assert!(resend_consistent(first, first, by_soak), "{first:?} again");
            for again in &others {
                assert!(
                    !resend_consistent(first, again, by_soak),
                    "{first:?} then {again:?} (aborted by the soak: {by_soak})"
                );
            }
        }
    }
    // An open first answer: the saga may have ended since, either way...
    for again in [&Seen::Open, &order, &refused] {
        assert!(resend_consistent(&Seen::Open, again, false), "{again:?}");
    }
    // ... but aborted only by the soak's own AbortSaga.
    assert!(!resend_consistent(&Seen::Open, &aborted, false));
    assert!(resend_consistent(&Seen::Open, &aborted, true));
    // Once aborted, aborted it stays.
    assert!(resend_consistent(&aborted, &aborted, true));
    assert!(!resend_consistent(&aborted, &Seen::Open, true));
}
