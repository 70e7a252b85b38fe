//! Two orchestrators on one saga log (SecantusDB on a host of its own):
//! one cut off from the database mid-burst (scenario 3), and one whose
//! wall clock runs 30 s ahead under libfaketime (scenario 5). The
//! participants keep their embedded stores: only the saga log is shared.
//!
//! Takeovers are counted from the new owner's log line ("saga taken over:
//! its lease had run out"), stale saves fenced out from the old owner's
//! ("saga taken over; following it").

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use microshop::{invariants::Universe, mesh::MeshClients};
use microshop_proto::{orchestrator::v1 as orch, order::v1 as ord};
use tonic::Status;

use crate::{
    cluster::{Cluster, ClusterBuilder, Health, Svc, database::Database, process::POLL, shop::*},
    suite::*,
};

/// The new owner's line for a saga it took over.
const TAKEN_OVER: &str = "saga taken over: its lease had run out";
/// The old owner's line for a save fenced out by the new owner's epoch.
const FENCED: &str = "saga taken over; following it";
/// The peer of these scenarios.
const PEER: Svc = Svc::Peer(0);

/// Budgets of the shared-log scenarios: leases of 4 s (a cut-off owner's
/// sagas are taken over within seconds), renewed by every save (a step's
/// call takes at most its 2 s timeout), steps that never run out of budget
/// in a scenario, recovery every 300 ms.
const SHARED_ENGINE: &[&str] = &[
    "--call-timeout-ms",
    "2000",
    "--step-attempts",
    "1000",
    "--step-budget-ms",
    "120000",
    "--compensation-attempts",
    "1000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "250",
    "--recovery-interval-ms",
    "300",
    "--lease-ms",
    "4000",
];

/// The mesh with every orchestrator's saga log on `db`.
fn shared(hosts: &Hosts, db: &Database) -> ClusterBuilder {
    hosts
        .cluster()
        .orchestrator(SHARED_ENGINE)
        .env(Svc::Orchestrator, "MONGODB_URI", db.uri())
        .env(Svc::Orchestrator, "MICROSHOP_MONGODB_DATABASE", "faults")
}

/// Lines of `svc`'s stderr containing `needle`.
fn count_lines(cluster: &mut Cluster, svc: Svc, needle: &str) -> usize {
    cluster
        .process(svc)
        .stderr()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// PlaceOrder on `c` with `deadline`.
async fn place_on(
    c: MeshClients,
    req: orch::PlaceOrderRequest,
    deadline: Duration,
) -> Result<orch::PlaceOrderResponse, Status> {
    c.checkout
        .clone()
        .place_order(with_deadline(req, deadline))
        .await
        .map(tonic::Response::into_inner)
}

// ---------------------------------------------------------------------------
// 3. Orchestrator ↔ MongoDB, with a second orchestrator
// ---------------------------------------------------------------------------

#[test]
fn orchestrator_mongodb_partition_with_a_second_orchestrator() {
    const BURST: usize = 16;
    let test = "orchestrator_mongodb_partition_with_a_second_orchestrator";
    let Some(mut net) = network(test) else {
        return;
    };
    let Some(()) = secantusd_or_skip(test) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let hosts = Hosts::with_peer(&mut net);
    net.enter(&hosts.client);
    runtime().block_on(async move {
        let mut tally = Tally::default();
        let mut db = hosts.database();
        db.up();
        // CreateOrder takes 1.5 s: the burst is mid-flight at the cut.
        let mut cluster = shared(&hosts, &db)
            .args(
                Svc::Order,
                ["--faults", "delay=1,delay_ms=1500,only=CreateOrder"],
            )
            .start()
            .await;
        let peer = cluster.start_peer().await;
        assert_eq!(peer, PEER);
        let a = cluster.clients();
        let b = cluster.clients_of(PEER);
        let mut u = Universe::default();
        let (sku, scarce) = ("P3-SKU", "P3-SCARCE");
        put_product(&a, &mut u, sku, BURST as i64).await;
        put_product(&a, &mut u, scarce, 2).await;
        let who = customers(&a, &mut u, "p3", 4).await;
        let requests: Vec<_> = (0..BURST)
            .map(|i| burst_order("p3", i, &who, sku, scarce))
            .collect();
        let keys: Vec<String> = requests.iter().map(|r| r.idempotency_key.clone()).collect();
        let mut calls = Vec::new();
        for req in requests.iter().cloned() {
            calls.push(tokio::spawn(place_on(
                a.clone(),
                req,
                Duration::from_secs(8),
            )));
        }
        // Cut once every saga is logged, while they wait on CreateOrder.
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        while microshop::invariants::all_sagas(&mut b.admin.clone())
            .await
            .map_or(0, |s| s.len())
            < BURST
        {
            assert!(tokio::time::Instant::now() < until, "the burst never began");
            tokio::time::sleep(POLL).await;
        }
        net.cut(&hosts.orchestrator, hosts.mongodb());
        let cut = Instant::now();
        cluster
            .wait_health(
                Svc::Orchestrator,
                Health::Overall,
                false,
                Duration::from_secs(15),
            )
            .await;
        let not_serving_after = cut.elapsed();

        // The peer takes the cut-off owner's sagas over once their leases
        // run out, and ends every one.
        let ended = wait_all_ended(&b, &keys, Duration::from_secs(60)).await;
        let all_ended_after = cut.elapsed();
        let takeovers = count_lines(&mut cluster, PEER, TAKEN_OVER);
        assert!(takeovers > 0, "the peer took no saga over");
        let held = cut.elapsed();
        net.heal(&hosts.orchestrator, hosts.mongodb());

        // Back on the log, the old owner's saves under its old epochs are
        // refused: it follows the sagas instead.
        cluster
            .wait_health(
                Svc::Orchestrator,
                Health::Overall,
                true,
                Duration::from_secs(30),
            )
            .await;
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        let fenced = loop {
            let fenced = count_lines(&mut cluster, Svc::Orchestrator, FENCED);
            if fenced > 0 || tokio::time::Instant::now() >= until {
                break fenced;
            }
            tokio::time::sleep(POLL).await;
        };
        assert!(
            fenced > 0,
            "no stale save of the cut-off orchestrator was fenced out"
        );
        let mut answered = 0;
        for call in calls {
            answered += usize::from(call.await.expect("the call task").is_ok());
        }

        // One saga per key, every outcome answered to a retry (on either
        // orchestrator), one order per completed saga: the participants'
        // barriers absorbed the new owner's repeated calls.
        retries_answer_outcomes(&b, &requests, &ended).await;
        retries_answer_outcomes(&a, &requests, &ended).await;
        let completed = ended
            .values()
            .filter(|s| s.state == orch::SagaState::Completed as i32)
            .count();
        assert_eq!(
            order_count(&b, &who).await,
            completed,
            "one order per completed saga"
        );
        tally.faults = net.cuts_made();
        tally.count_sagas(&b).await;
        tally
            .invariants(&b, &u, "the orchestrator ↔ MongoDB partition")
            .await;
        eprintln!(
            "scenario 3: {BURST} checkouts on the cut-off orchestrator, cut {held:.1?} ({} packets \
             dropped); it reported NOT_SERVING after {not_serving_after:.1?}; {takeovers} sagas \
             taken over by the peer, all ended {all_ended_after:.1?} into the cut ({completed} \
             completed); after the heal {fenced} stale saves fenced out by epoch; {answered} \
             callers answered before their deadline; one order per completed saga",
            net.dropped()
        );
        tally.finish(
            Scenario::Numbered(3, "orchestrator-MongoDB partition, a second orchestrator"),
            started,
        );
    });
}

// ---------------------------------------------------------------------------
// 5. One of two orchestrators 30 s ahead
// ---------------------------------------------------------------------------

/// How far the peer's clock runs ahead.
const SKEW: Duration = Duration::from_secs(30);
/// The payment window: a little over the skew, so the skewed peer expires
/// the other's orders early by the skew (allowed), 3 s after they are
/// placed, and its own late (after the scenario).
const PAYMENT_TTL: Duration = Duration::from_secs(33);

/// libfaketime's library (Debian's `faketime` package), or `None` (in CI
/// a failure).
fn libfaketime(test: &str) -> Option<String> {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| format!("{dir}/faketime/libfaketime.so.1"))
    .find(|path| std::path::Path::new(path).exists());
    if found.is_none() {
        assert!(
            !microshop_runtime::testing::is_ci(std::env::var("CI").ok().as_deref()),
            "{test}: libfaketime is missing (apt-get install faketime), and CI is set"
        );
        eprintln!("SKIPPED {test}: libfaketime is missing (apt-get install faketime)");
    }
    found
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
}

/// Regression (issue 17): lease expiry compared one orchestrator's wall
/// clock with another's. An orchestrator running 30 s ahead saw every
/// lease its live peer had just renewed as expired and took the sagas
/// over mid-run (the peer's saves were then fenced out). Lease times are
/// now the database server's (`$$NOW`).
#[test]
fn a_clock_30s_ahead_takes_over_nothing_from_a_live_owner() {
    const EACH: usize = 8;
    let test = "a_clock_30s_ahead_takes_over_nothing_from_a_live_owner";
    let Some(mut net) = network(test) else {
        return;
    };
    let Some(()) = secantusd_or_skip(test) else {
        return;
    };
    let Some(lib) = libfaketime(test) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let hosts = Hosts::with_peer(&mut net);
    net.enter(&hosts.client);
    runtime().block_on(async move {
        let mut tally = Tally::default();
        let mut db = hosts.database();
        db.up();
        let ttl = PAYMENT_TTL.as_secs().to_string();
        // Steps of 0.8 s (CreateOrder): every saga lives through several
        // of the peer's recovery scans.
        let mut cluster = shared(&hosts, &db)
            .orchestrator(["--payment-ttl-secs", &ttl, "--expiry-interval-ms", "200"])
            .args(
                Svc::Order,
                ["--faults", "delay=1,delay_ms=800,only=CreateOrder"],
            )
            .env_of(PEER, "LD_PRELOAD", &lib)
            .env_of(PEER, "FAKETIME", format!("+{}s", SKEW.as_secs()))
            .env_of(PEER, "FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .start()
            .await;
        cluster.start_peer().await;
        tally.faults = 1;
        let a = cluster.clients();
        let b = cluster.clients_of(PEER);
        let mut u = Universe::default();
        let sku = "P5-SKU";
        put_product(&a, &mut u, sku, 2 * EACH as i64 + 1).await;
        let who = customers(&a, &mut u, "p5", 4).await;

        // The skew is real: a saga the peer creates is stamped 30 s ahead.
        let probe = place_ok(&b, place("p5-probe", &who[0], sku, "", 0)).await;
        let saga = b
            .admin
            .clone()
            .get_saga(orch::GetSagaRequest {
                saga_id: probe.saga_id.clone(),
            })
            .await
            .expect("GetSaga")
            .into_inner()
            .saga
            .expect("the saga");
        let stamped = saga.created_at.expect("created_at").seconds;
        let ahead = stamped - i64::try_from(unix_now().as_secs()).expect("seconds");
        assert!(
            (25..=35).contains(&ahead),
            "the peer's clock is {ahead} s ahead, not about {SKEW:?}: is libfaketime in effect?"
        );

        // Both drive sagas at once, each renewing its own leases.
        let mut calls = Vec::new();
        for i in 0..2 * EACH {
            let (c, on) = if i % 2 == 0 { (a.clone(), "a") } else { (b.clone(), "b") };
            let req = place(&format!("p5-{on}-{i}"), &who[i % who.len()], sku, "", 0);
            calls.push(tokio::spawn(async move {
                let sent = Instant::now();
                let answer = place_on(c, req, Duration::from_secs(20)).await;
                (on, sent, answer)
            }));
        }
        let mut placed = Vec::new();
        for call in calls {
            let (on, sent, answer) = call.await.expect("the call task");
            let answer = answer.unwrap_or_else(|s| panic!("PlaceOrder on {on}: {s:?}"));
            placed.push((on, sent, answer.order_id));
        }
        let takeovers = count_lines(&mut cluster, Svc::Orchestrator, TAKEN_OVER)
            + count_lines(&mut cluster, PEER, TAKEN_OVER);
        let fenced = count_lines(&mut cluster, Svc::Orchestrator, FENCED)
            + count_lines(&mut cluster, PEER, FENCED);
        assert_eq!(
            (takeovers, fenced),
            (0, 0),
            "sagas were taken over from a live owner (takeovers, fenced saves)"
        );

        // Payment deadlines: the peer expires the first orchestrator's
        // orders early, by no more than the skew; its own orders are not
        // expired early at all (they are still awaiting payment).
        let earliest = PAYMENT_TTL - SKEW - Duration::from_millis(250);
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut expired_after = Vec::new();
        for (on, sent, order_id) in placed.iter().filter(|(on, ..)| *on == "a") {
            loop {
                let status = order(&a, order_id).await.status;
                if status == ord::OrderStatus::Cancelled as i32 {
                    let after = sent.elapsed();
                    assert!(
                        after >= earliest,
                        "order {order_id} (placed on {on}) expired {after:?} after it was placed, \
                         earlier than the payment window less the skew"
                    );
                    expired_after.push(after);
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < until,
                    "order {order_id} never expired"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for (_, sent, order_id) in placed.iter().filter(|(on, ..)| *on == "b") {
            let status = order(&a, order_id).await.status;
            assert!(
                status == ord::OrderStatus::PendingPayment as i32 || sent.elapsed() >= PAYMENT_TTL,
                "order {order_id}, placed on the skewed peer, expired early: {status}"
            );
        }
        let first_expiry = expired_after.iter().min().copied().unwrap_or_default();

        let takeovers = count_lines(&mut cluster, Svc::Orchestrator, TAKEN_OVER)
            + count_lines(&mut cluster, PEER, TAKEN_OVER);
        assert_eq!(takeovers, 0, "an expiry was taken over from a live owner");
        tally.count_sagas(&a).await;
        tally.invariants(&a, &u, "the clock 30 s ahead").await;
        eprintln!(
            "scenario 5: the peer {ahead} s ahead (libfaketime); {} checkouts on the two, {takeovers} \
             takeovers, {fenced} fenced saves; the peer expired the other's {} orders from \
             {first_expiry:.1?} after placing (payment window {PAYMENT_TTL:?}, early by at most \
             the skew); its own {EACH} orders still awaiting payment",
            2 * EACH + 1,
            expired_after.len()
        );
        tally.finish(
            Scenario::Numbered(5, "one orchestrator's clock 30 s ahead"),
            started,
        );
    });
}
