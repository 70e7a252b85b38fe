//! Scenario 6: a database that is down when the services start (the old
//! shop's "stop Redis, restart the services, start Redis" test). Every
//! service is started with `MONGODB_URI` pointing at a SecantusDB that is
//! not up yet; every call made meanwhile must answer UNAVAILABLE (never
//! INTERNAL: the driver, not knowing the deployment yet, refuses
//! transactions as "not supported", which read as a configuration error),
//! no health SERVING, then SERVING once the database is up, and calls
//! made while it comes up answer UNAVAILABLE or succeed.

use std::time::{Duration, Instant};

use microshop::{invariants::Universe, mesh::MeshClients};
use microshop_proto::{inventory::v1 as inv, loyalty::v1 as loy, order::v1 as ord};
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    cluster::{Cluster, Svc, shop::*},
    suite::*,
};

/// One write and one read of each participant; the codes they answered.
async fn participant_calls(c: &MeshClients) -> Vec<(&'static str, Result<(), Status>)> {
    let deadline = Duration::from_secs(5);
    vec![
        (
            "PutProduct",
            c.inventory
                .clone()
                .put_product(with_deadline(
                    inv::PutProductRequest {
                        sku: "P6-EARLY".into(),
                        name: "early".into(),
                        unit_price: PRICE,
                        stock: 1,
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
        (
            "GetProduct",
            c.inventory
                .clone()
                .get_product(with_deadline(
                    inv::GetProductRequest {
                        sku: "P6-EARLY".into(),
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
        (
            "GrantPoints",
            c.loyalty
                .clone()
                .grant_points(with_deadline(
                    loy::GrantPointsRequest {
                        customer_id: "p6-early".into(),
                        points: 1,
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
        (
            "PutCoupon",
            c.order
                .clone()
                .put_coupon(with_deadline(
                    ord::PutCouponRequest {
                        code: "P6EARLY".into(),
                        kind: ord::CouponKind::Fixed.into(),
                        value: 1,
                        usage_limit: 1,
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
        (
            "PlaceOrder",
            c.checkout
                .clone()
                .place_order(with_deadline(
                    place("p6-early", "p6-early", "P6-NONE", "", 0),
                    deadline,
                ))
                .await
                .map(drop),
        ),
    ]
}

/// The health `svc` answers for its own service, `None` while it does not
/// listen or answer.
async fn health(cluster: &Cluster, svc: Svc) -> Option<ServingStatus> {
    health_of(cluster, svc, svc.grpc_name()).await.ok()
}

/// The health `at` answers for service `name`: `Err` with the code it
/// answered (`UNKNOWN` when it does not listen).
async fn health_of(cluster: &Cluster, at: Svc, name: &str) -> Result<ServingStatus, Code> {
    let channel = crate::cluster::process::endpoint(&cluster.url(at), Duration::from_secs(1))
        .connect()
        .await
        .map_err(|_| Code::Unknown)?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: name.to_owned(),
        })
        .await
        .map_err(|s| s.code())?;
    ServingStatus::try_from(answer.into_inner().status).map_err(|_| Code::Unknown)
}

/// Regression: a service started before its MongoDB bound its port but
/// served nothing until its indexes existed, so calls and health checks
/// hung to their deadline (liveness too); now it serves health and
/// UNAVAILABLE while its store opens (`microshop_runtime::starting`).
#[test]
fn a_database_down_at_start_answers_unavailable_until_it_is_up() {
    let test = "a_database_down_at_start_answers_unavailable_until_it_is_up";
    let Some(mut net) = network(test) else {
        return;
    };
    let Some(()) = secantusd_or_skip(test) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let hosts = Hosts::with_mongodb(&mut net);
    net.enter(&hosts.client);
    runtime().block_on(async move {
        let mut tally = Tally::default();
        let mut db = hosts.database();
        let mut cluster = hosts.cluster().mongodb(db.uri()).spawn();
        tally.faults = 1;
        let c = cluster.clients();

        // Down: each service waits for its database (it does not serve
        // before its store's unique indexes exist: a store without them
        // could break an invariant), reports nothing SERVING, and every
        // call answers UNAVAILABLE.
        for svc in Svc::START_ORDER {
            cluster
                .wait_line(svc, "waiting for the database", Duration::from_secs(30))
                .await;
        }
        let mut down_health = Vec::new();
        for svc in Svc::START_ORDER {
            let status = health(&cluster, svc).await;
            assert_ne!(
                status,
                Some(ServingStatus::Serving),
                "{svc:?} with its database down"
            );
            down_health.push(format!("{svc:?} {status:?}"));
        }
        // The orchestrator's entries for its participants exist before its
        // log opens (NOT_FOUND would mean "not one of mine").
        for svc in [Svc::Inventory, Svc::Loyalty, Svc::Order] {
            assert_eq!(
                health_of(&cluster, Svc::Orchestrator, svc.grpc_name()).await,
                Ok(ServingStatus::NotServing),
                "the orchestrator's health for {svc:?} before its log opened"
            );
        }
        let mut down_calls = 0;
        for _ in 0..2 {
            for (call, answer) in participant_calls(&c).await {
                down_calls += 1;
                let status = answer.expect_err("a call with the database down");
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "{call} with the database down: {status:?}"
                );
            }
        }

        // Up: every call while it comes up answers UNAVAILABLE or succeeds,
        // until each service is SERVING.
        db.up();
        let up = Instant::now();
        let mut coming_up_calls = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut serving = 0;
            for svc in Svc::START_ORDER {
                serving += usize::from(health(&cluster, svc).await == Some(ServingStatus::Serving));
            }
            if serving == Svc::START_ORDER.len() {
                break;
            }
            for (call, answer) in participant_calls(&c).await {
                coming_up_calls += 1;
                if let Err(status) = answer {
                    // PlaceOrder's product does not exist: refused, once
                    // the mesh can tell.
                    let refused = call == "PlaceOrder"
                        && matches!(status.code(), Code::FailedPrecondition | Code::NotFound);
                    let absent = call == "GetProduct" && status.code() == Code::NotFound;
                    assert!(
                        status.code() == Code::Unavailable || refused || absent,
                        "{call} while the database came up: {status:?}"
                    );
                }
            }
            assert!(
                tokio::time::Instant::now() < until,
                "not every service SERVING 30 s after the database came up"
            );
        }
        let serving_after = up.elapsed();
        for svc in Svc::START_ORDER {
            cluster.wait_ready(svc).await;
        }

        // Then the mesh works: a few checkouts, the invariants.
        let mut u = Universe::default();
        put_product(&c, &mut u, "P6-SKU", 10).await;
        let who = customers(&c, &mut u, "p6", 2).await;
        // What the early calls may have made, made for sure, so that the
        // check reads it.
        let early: Vec<_> = participant_calls(&c).await.into_iter().take(4).collect();
        for (call, answer) in early {
            answer.unwrap_or_else(|s| panic!("{call} once every service is SERVING: {s:?}"));
        }
        u.skus.insert("P6-EARLY".into(), 1);
        u.customers.insert("p6-early".into());
        u.coupons.insert("P6EARLY".into());
        for i in 0..4 {
            let sent = place(&format!("p6-{i}"), &who[i % 2], "P6-SKU", "", 0);
            place_ok(&c, sent).await;
        }
        tally.count_sagas(&c).await;
        tally.invariants(&c, &u, "the database down at start").await;
        eprintln!(
            "scenario 6: services started with their database down: health {} (None: not \
             listening yet), {down_calls} calls all UNAVAILABLE; {coming_up_calls} calls while it \
             came up, none INTERNAL; every service SERVING {serving_after:.1?} after the database \
             was up",
            down_health.join(", ")
        );
        tally.finish(
            Scenario::Numbered(6, "database down when the services start"),
            started,
        );
    });
}
