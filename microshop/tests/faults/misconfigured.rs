//! Scenario 7: a participant URL that reaches another of the mesh's
//! services (a swapped port in a ConfigMap).

use std::time::{Duration, Instant};

use microshop::invariants::Universe;
use microshop_proto::orchestrator::v1 as orch;
use microshop_runtime::{Reason, errors::reason_of};
use tonic::Code;

use crate::{
    cluster::{Health, Svc, shop::*},
    suite::*,
};

// ---------------------------------------------------------------------------
// 7. A participant URL that reaches the wrong service
// ---------------------------------------------------------------------------

#[test]
fn participant_url_pointing_at_the_wrong_service() {
    const DEADLINE: Duration = Duration::from_secs(8);
    let test = "participant_url_pointing_at_the_wrong_service";
    let Some(mut net) = network(test) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let hosts = Hosts::new(&mut net);
    net.enter(&hosts.client);
    runtime().block_on(async move {
        let mut tally = Tally::default();
        // A swapped port: inventory-svc's URL is loyalty-svc's.
        let wrong = format!("http://{}", hosts.loyalty.addr(50053));
        let mut cluster = hosts
            .cluster()
            .orchestrator(PARTITION_ENGINE)
            .participant_url(Svc::Inventory, wrong.clone())
            .start()
            .await;
        tally.faults = 1;
        let c = cluster.clients();
        let mut u = Universe::default();
        let sku = "P7-SKU";
        put_product(&c, &mut u, sku, 5).await;
        let who = customers(&c, &mut u, "p7", 1).await;
        let inventory = inventory_svc::SERVICE_NAME;

        // Where an operator looks: the dependency's health, and a log line
        // naming the URL and what it does not serve.
        cluster
            .wait_health(
                Svc::Orchestrator,
                Health::Entry(inventory),
                false,
                Duration::from_secs(10),
            )
            .await;
        let line = cluster
            .wait_line(Svc::Orchestrator, "does not serve", Duration::from_secs(10))
            .await;
        assert!(
            line.contains(&wrong) && line.contains(inventory) && line.contains("--inventory-url"),
            "the log line names the URL, the service it does not serve and the flag: {line}"
        );
        assert!(
            cluster.serving(Svc::Orchestrator, Health::Service).await,
            "the orchestrator's own service stays SERVING"
        );

        // A checkout is never refused as the customer's fault: UNAVAILABLE,
        // DEPENDENCY_MISCONFIGURED, within the caller's deadline; its saga
        // waits.
        let req = place("p7-0", &who[0], sku, "", REDEEM);
        let sent = Instant::now();
        let refused = c
            .checkout
            .clone()
            .place_order(with_deadline(req.clone(), DEADLINE))
            .await
            .expect_err("a checkout through a misconfigured URL");
        assert!(sent.elapsed() < DEADLINE, "answered after {:?}", sent.elapsed());
        assert_eq!(
            (refused.code(), reason_of(&refused)),
            (Code::Unavailable, Some(Reason::DependencyMisconfigured)),
            "{refused:?}"
        );
        let saga = saga_by_key(&c, "p7-0").await.expect("the checkout's saga");
        assert_eq!(saga.state, orch::SagaState::Running as i32, "{}", describe(&saga));
        // (The quote step asks inventory-svc and order-svc: it waits for
        // both.)
        assert!(
            saga.waiting_for.iter().any(|w| w == inventory),
            "{}",
            describe(&saga)
        );

        // The URL fixed (a restart with the right one), the saga resumes by
        // itself and completes.
        cluster.reset_participant_url(Svc::Inventory);
        cluster.restart(Svc::Orchestrator, &[]).await;
        cluster
            .wait_health(
                Svc::Orchestrator,
                Health::Entry(inventory),
                true,
                Duration::from_secs(10),
            )
            .await;
        let c = cluster.clients();
        let ended = wait_all_ended(&c, &["p7-0".to_owned()], Duration::from_secs(30)).await;
        assert_eq!(
            ended["p7-0"].state,
            orch::SagaState::Completed as i32,
            "{}",
            describe(&ended["p7-0"])
        );
        retries_answer_outcomes(&c, &[req], &ended).await;
        tally.count_sagas(&c).await;
        tally.invariants(&c, &u, "the misconfigured participant URL").await;
        eprintln!(
            "scenario 7: --inventory-url {wrong} (loyalty-svc): health NOT_SERVING for {inventory}, \
             logged \"{}\", PlaceOrder UNAVAILABLE/DEPENDENCY_MISCONFIGURED in {:.1?}, the saga \
             waited and completed once the URL was fixed",
            line.trim(),
            sent.elapsed()
        );
        tally.finish(Scenario::Numbered(7, "participant URL of another service"), started);
    });
}
