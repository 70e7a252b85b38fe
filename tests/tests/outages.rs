//! Participant outages over loopback gRPC, each service on its own
//! listener so it can be stopped and started again on the same port and
//! data: a saga out of its retry budget waits for the participant and is
//! re-driven by itself once it is back (no operator), a checkout hold that
//! ends gives the stock back while the participant is still down, and
//! RetrySaga / AbortSaga act on waiting sagas and say who did it.
//!
//! Every wait is bounded polling; every scenario ends with the invariants
//! of `docs/architecture.md`.

use std::time::Duration;

use microshop::mesh::{MeshAddrs, MeshClients};
use microshop_proto::orchestrator::v1::{
    self as orch, SagaState, StepStatus, checkout_service_client::CheckoutServiceClient,
    saga_admin_service_client::SagaAdminServiceClient,
};
use microshop_runtime::Reason;
use microshop_tests::{
    CONNECT_WITHIN, Participant, SETTLE_WITHIN, Server, Shop, TestMesh, action_attempts,
    action_status, any_port, compensation_status, error_reason, eventually, expect_error,
    health_client, listen, order_request, reserve, saga_id_of, saga_state, short_budget_engine,
    spawn_orchestrator, spawn_participant, step, wait_health,
};
use orchestrator::{EngineConfig, ParticipantUrls};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

const INVENTORY: &str = "microshop.inventory.v1.InventoryService";
const LOYALTY: &str = "microshop.loyalty.v1.LoyaltyService";
const ORDER: &str = "microshop.order.v1.OrderService";
const CHECKOUT: &str = "microshop.orchestrator.v1.CheckoutService";

/// The four services, each on its own listener, over one data directory.
struct Cluster {
    dir: tempfile::TempDir,
    inventory: Option<Server>,
    loyalty: Option<Server>,
    order: Option<Server>,
    orch: Server,
    addrs: MeshAddrs,
    health: HealthClient<Channel>,
}

impl Cluster {
    async fn start(engine: EngineConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let inventory =
            spawn_participant(Participant::Inventory, listen(any_port()).await, dir.path());
        let loyalty = spawn_participant(Participant::Loyalty, listen(any_port()).await, dir.path());
        let order = spawn_participant(Participant::Order, listen(any_port()).await, dir.path());
        let urls = ParticipantUrls {
            inventory: inventory.url(),
            loyalty: loyalty.url(),
            order: order.url(),
        };
        let orch = spawn_orchestrator(listen(any_port()).await, dir.path(), urls, engine);
        let addrs = MeshAddrs {
            orchestrator: orch.addr,
            inventory: inventory.addr,
            loyalty: loyalty.addr,
            order: order.addr,
        };
        let health = health_client(orch.addr);
        for name in [INVENTORY, LOYALTY, ORDER] {
            wait_health(&health, name, ServingStatus::Serving, SETTLE_WITHIN).await;
        }
        Self {
            dir,
            inventory: Some(inventory),
            loyalty: Some(loyalty),
            order: Some(order),
            orch,
            addrs,
            health,
        }
    }

    async fn stop_loyalty(&mut self) {
        if let Some(server) = self.loyalty.take() {
            server.stop().await;
        }
        wait_health(
            &self.health,
            LOYALTY,
            ServingStatus::NotServing,
            SETTLE_WITHIN,
        )
        .await;
    }

    async fn start_loyalty(&mut self) {
        let listener = reserve(self.addrs.loyalty).await.listen();
        self.loyalty = Some(spawn_participant(
            Participant::Loyalty,
            listener,
            self.dir.path(),
        ));
        wait_health(&self.health, LOYALTY, ServingStatus::Serving, SETTLE_WITHIN).await;
    }

    async fn stop(self) {
        self.orch.stop().await;
        for server in [self.inventory, self.loyalty, self.order]
            .into_iter()
            .flatten()
        {
            server.stop().await;
        }
    }
}

/// Engine settings of these scenarios: short budgets (a step against a dead
/// participant gives up within about a second) and a recovery pass every
/// 300 ms, so waits end promptly once their cause is gone.
fn outage_engine() -> EngineConfig {
    EngineConfig {
        recovery_interval: Duration::from_millis(300),
        ..short_budget_engine()
    }
}

/// Polls GetSaga until `done` accepts the saga.
async fn saga_until(
    shop: &Shop,
    saga_id: &str,
    what: &str,
    done: impl Fn(&orch::Saga) -> bool,
) -> orch::Saga {
    eventually(what, SETTLE_WITHIN, || {
        let shop = shop.clone();
        let saga_id = saga_id.to_owned();
        let done = &done;
        async move {
            let saga = shop.saga(&saga_id).await;
            if done(&saga) {
                Ok(saga)
            } else {
                Err(format!(
                    "{} {:?} waiting for {:?}",
                    saga_id,
                    saga_state(&saga),
                    saga.waiting_for
                ))
            }
        }
    })
    .await
}

fn has_history(saga: &orch::Saga, actor: &str, note: &str) -> bool {
    saga.history
        .iter()
        .any(|t| t.actor == actor && t.note.contains(note))
}

// ---------------------------------------------------------------------------

/// loyalty-svc goes down: a checkout redeeming points runs out of its
/// budget at deduct-points and waits (RUNNING, not FAILED); an operator
/// aborts a second one; when loyalty-svc is back the first completes with
/// no operator action.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_heals_without_an_operator() {
    let mut cluster = Cluster::start(outage_engine()).await;
    let mut shop = Shop::connect(&cluster.addrs).await;
    shop.put_product("BIKE", 500_000, 10).await;
    shop.grant_points("una", 100).await;
    shop.grant_points("vic", 100).await;
    shop.place_ok(order_request("warm-1", "una", &[("BIKE", 1)], "", 10))
        .await;

    cluster.stop_loyalty().await;

    let status = expect_error(
        shop.place_order(order_request("down-1", "una", &[("BIKE", 2)], "", 20))
            .await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    assert!(
        status.message().contains(LOYALTY),
        "the answer says what it waits for: {}",
        status.message()
    );
    let waiting_id = saga_id_of(&status);
    let saga = shop.saga(&waiting_id).await;
    assert_eq!(saga_state(&saga), SagaState::Running, "{saga:#?}");
    assert_eq!(saga.waiting_for, vec![LOYALTY.to_owned()], "{saga:#?}");
    assert!(saga.next_attempt_at.is_some(), "{saga:#?}");
    assert!(
        saga.failure_reason.is_empty(),
        "not a dead letter: {saga:#?}"
    );
    let deduct = step(&saga, "deduct-points");
    assert_eq!(action_status(deduct), StepStatus::Waiting, "{saga:#?}");
    assert!(
        (1..=4).contains(&action_attempts(deduct)),
        "bounded attempts: {saga:#?}"
    );
    assert_eq!(action_attempts(step(&saga, "create-order")), 0);
    assert!(
        shop.sagas_in(SagaState::Failed).await.is_empty(),
        "no dead letter"
    );
    let listed = shop.sagas_in(SagaState::Running).await;
    assert!(
        listed
            .iter()
            .any(|s| s.saga_id == waiting_id && !s.waiting_for.is_empty()),
        "ListSagas(RUNNING) shows the waiting saga: {listed:#?}"
    );

    // The client's retry while loyalty is away answers at once, still
    // waiting: no new round of calls at a participant that is down.
    let status = expect_error(
        shop.place_order(order_request("down-1", "una", &[("BIKE", 2)], "", 20))
            .await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    assert_eq!(saga_id_of(&status), waiting_id);
    let again = shop.saga(&waiting_id).await;
    assert_eq!(
        action_attempts(step(&again, "deduct-points")),
        action_attempts(deduct),
        "a retry while waiting makes no call: {again:#?}"
    );

    // A second checkout, which an operator aborts while it waits.
    let status = expect_error(
        shop.place_order(order_request("down-2", "vic", &[("BIKE", 3)], "", 30))
            .await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let aborted_id = saga_id_of(&status);
    let bike = shop.product("BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (4, 6),
        "waiting checkouts hold their stock: {bike:?}"
    );
    let aborted = shop
        .clients
        .admin
        .clone()
        .abort_saga(orch::AbortSagaRequest {
            saga_id: aborted_id.clone(),
            reason: "customer gave up".into(),
        })
        .await
        .expect("AbortSaga")
        .into_inner()
        .saga
        .expect("the saga");
    // Its refund waits for loyalty-svc; its stock is released meanwhile.
    let aborted = if saga_state(&aborted) == SagaState::Compensated {
        aborted
    } else {
        saga_until(
            &shop,
            &aborted_id,
            "the aborted saga to wait for loyalty",
            |s| saga_state(s) == SagaState::Compensating && !s.waiting_for.is_empty(),
        )
        .await
    };
    assert_eq!(
        compensation_status(step(&aborted, "reserve-stock")),
        Some(StepStatus::Succeeded),
        "{aborted:#?}"
    );
    assert!(
        has_history(
            &aborted,
            "anonymous",
            "aborted by an operator: customer gave up"
        ),
        "the abort is in the history with who did it: {:#?}",
        aborted.history
    );
    let bike = shop.product("BIKE").await;
    assert_eq!(
        (bike.available, bike.reserved),
        (7, 3),
        "the aborted checkout's stock is back on sale: {bike:?}"
    );

    // loyalty-svc comes back: both sagas finish by themselves.
    cluster.start_loyalty().await;
    shop.clients = MeshClients::connect(&cluster.addrs, CONNECT_WITHIN)
        .await
        .expect("reconnect");
    let done = saga_until(
        &shop,
        &waiting_id,
        "the waiting checkout to complete",
        |s| saga_state(s) == SagaState::Completed,
    )
    .await;
    assert!(done.waiting_for.is_empty(), "{done:#?}");
    assert!(
        has_history(&done, "automatic", "re-driven automatically"),
        "the re-drive is in the history: {:#?}",
        done.history
    );
    let answer = shop
        .place_ok(order_request("down-1", "una", &[("BIKE", 2)], "", 20))
        .await;
    assert_eq!(
        answer.order_id, done.order_id,
        "the retry answers the order"
    );
    assert_eq!(answer.order.expect("the order").redeemed_points, 20);
    let aborted = saga_until(&shop, &aborted_id, "the aborted saga to end", |s| {
        saga_state(s) == SagaState::Compensated
    })
    .await;
    assert_eq!(
        compensation_status(step(&aborted, "deduct-points")),
        Some(StepStatus::Succeeded),
        "the refund ran once loyalty-svc was back: {aborted:#?}"
    );
    let status = shop
        .place_order(order_request("down-2", "vic", &[("BIKE", 3)], "", 30))
        .await
        .expect_err("the aborted checkout answers its abort");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("SAGA_ABORTED"));

    let una = shop.balance("una").await;
    assert_eq!(una.points, 100 - 10 - 20, "{una:?}");
    let vic = shop.balance("vic").await;
    assert_eq!(
        (vic.points, vic.deducted - vic.refunded),
        (100, 0),
        "{vic:?}"
    );
    shop.assert_invariants().await;
    cluster.stop().await;
}

/// The checkout hold ends while loyalty-svc is down: the checkout is
/// compensated, its stock goes back on sale at once, a retry with its key
/// answers CHECKOUT_EXPIRED, and the refund (a null compensation: the
/// deduction never arrived) runs once loyalty-svc is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_hold_gives_the_stock_back_while_a_participant_is_down() {
    let hold = Duration::from_secs(3);
    let mut cluster = Cluster::start(EngineConfig {
        checkout_hold: hold,
        ..outage_engine()
    })
    .await;
    let mut shop = Shop::connect(&cluster.addrs).await;
    shop.put_product("BIKE", 500_000, 10).await;
    shop.grant_points("una", 100).await;

    cluster.stop_loyalty().await;
    let status = expect_error(
        shop.place_order(order_request("hold-1", "una", &[("BIKE", 2)], "", 20))
            .await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let saga_id = saga_id_of(&status);

    // Once the hold has ended, and with loyalty-svc still down, the
    // reservation is released.
    let saga = saga_until(
        &shop,
        &saga_id,
        "the expired checkout to release its stock and wait for loyalty-svc",
        // The release runs at once; the refund spends its budget on the
        // unreachable loyalty-svc first and only then waits for it.
        |s| {
            compensation_status(step(s, "reserve-stock")) == Some(StepStatus::Succeeded)
                && compensation_status(step(s, "deduct-points")) == Some(StepStatus::Waiting)
        },
    )
    .await;
    assert!(cluster.loyalty.is_none(), "loyalty-svc is still down");
    assert_eq!(saga_state(&saga), SagaState::Compensating, "{saga:#?}");
    assert_eq!(saga.waiting_for, vec![LOYALTY.to_owned()], "{saga:#?}");
    assert_eq!(
        saga.error.as_ref().map(|e| e.reason.as_str()),
        Some("CHECKOUT_EXPIRED"),
        "{saga:#?}"
    );
    assert_eq!(
        compensation_status(step(&saga, "deduct-points")),
        Some(StepStatus::Waiting),
        "{saga:#?}"
    );
    assert!(
        has_history(&saga, "automatic", "checkout hold"),
        "{:#?}",
        saga.history
    );
    let bike = shop.product("BIKE").await;
    assert_eq!((bike.available, bike.reserved), (10, 0), "{bike:?}");

    // The outcome is decided: a retry answers it without waiting.
    let status = expect_error(
        shop.place_order(order_request("hold-1", "una", &[("BIKE", 2)], "", 20))
            .await,
        Code::FailedPrecondition,
        Reason::CheckoutExpired,
    );
    assert_eq!(saga_id_of(&status), saga_id);

    cluster.start_loyalty().await;
    shop.clients = MeshClients::connect(&cluster.addrs, CONNECT_WITHIN)
        .await
        .expect("reconnect");
    let saga = saga_until(&shop, &saga_id, "the expired checkout to end", |s| {
        saga_state(s) == SagaState::Compensated
    })
    .await;
    assert_eq!(
        compensation_status(step(&saga, "deduct-points")),
        Some(StepStatus::Succeeded),
        "{saga:#?}"
    );
    expect_error(
        shop.place_order(order_request("hold-1", "una", &[("BIKE", 2)], "", 20))
            .await,
        Code::FailedPrecondition,
        Reason::CheckoutExpired,
    );
    let una = shop.balance("una").await;
    assert_eq!(
        (una.points, una.deducted - una.refunded),
        (100, 0),
        "{una:?}"
    );
    shop.assert_invariants().await;
    cluster.stop().await;
}

/// The orchestrator starts while every participant is down: a checkout
/// waits for them, and completes by itself once they are up, without
/// RetrySaga.
/// The outcome of an expired checkout is decided once its compensation
/// starts: a retry answers CHECKOUT_EXPIRED while the refund is still
/// being retried against the unreachable loyalty-svc, not UNAVAILABLE
/// once its wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_answers_an_expired_checkout_while_its_compensation_retries() {
    let mut cluster = Cluster::start(EngineConfig {
        checkout_hold: Duration::from_secs(3),
        // The refund keeps retrying (not waiting) for the whole test.
        compensation_attempts: 10_000,
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(400),
        ..outage_engine()
    })
    .await;
    let mut shop = Shop::connect(&cluster.addrs).await;
    shop.put_product("BIKE", 500_000, 10).await;
    shop.grant_points("una", 100).await;

    cluster.stop_loyalty().await;
    let request = order_request("hold-2", "una", &[("BIKE", 2)], "", 20);
    let status = expect_error(
        shop.place_order(request.clone()).await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let saga_id = saga_id_of(&status);
    saga_until(
        &shop,
        &saga_id,
        "the expired checkout to release its stock",
        |s| compensation_status(step(s, "reserve-stock")) == Some(StepStatus::Succeeded),
    )
    .await;

    // No deadline: the retry may wait up to the orchestrator's longest
    // wait (20 s here), longer than this test lets the refund retry.
    let status = expect_error(
        shop.place_order(request.clone()).await,
        Code::FailedPrecondition,
        Reason::CheckoutExpired,
    );
    assert_eq!(saga_id_of(&status), saga_id);
    let saga = shop.saga(&saga_id).await;
    assert_eq!(saga_state(&saga), SagaState::Compensating, "{saga:#?}");
    assert_ne!(
        compensation_status(step(&saga, "deduct-points")),
        Some(StepStatus::Waiting),
        "the refund is still retrying, so the answer did not come from a wait: {saga:#?}"
    );

    cluster.start_loyalty().await;
    shop.clients = MeshClients::connect(&cluster.addrs, CONNECT_WITHIN)
        .await
        .expect("reconnect");
    saga_until(&shop, &saga_id, "the expired checkout to end", |s| {
        saga_state(s) == SagaState::Compensated
    })
    .await;
    shop.assert_invariants().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_orchestrator_starts_with_participants_down() {
    let dir = tempfile::tempdir().expect("a temporary data directory");
    // Three ports nothing listens on yet: reserved (connections refused)
    // until the participants come up on them.
    let (inv_port, loy_port, ord_port) = (
        reserve(any_port()).await,
        reserve(any_port()).await,
        reserve(any_port()).await,
    );
    let (inv_addr, loy_addr, ord_addr) = (inv_port.addr(), loy_port.addr(), ord_port.addr());
    let urls = ParticipantUrls {
        inventory: format!("http://{inv_addr}"),
        loyalty: format!("http://{loy_addr}"),
        order: format!("http://{ord_addr}"),
    };
    let orch = spawn_orchestrator(listen(any_port()).await, dir.path(), urls, outage_engine());
    let health = health_client(orch.addr);
    wait_health(&health, "", ServingStatus::Serving, SETTLE_WITHIN).await;
    wait_health(&health, CHECKOUT, ServingStatus::Serving, SETTLE_WITHIN).await;
    for name in [INVENTORY, LOYALTY, ORDER] {
        wait_health(&health, name, ServingStatus::NotServing, SETTLE_WITHIN).await;
    }

    let channel: Channel = microshop::mesh::connect(&orch.url(), CONNECT_WITHIN)
        .await
        .expect("connect to the orchestrator");
    let mut checkout = CheckoutServiceClient::new(channel.clone());
    let admin = SagaAdminServiceClient::new(channel);
    let request = order_request("dark-1", "wes", &[("BIKE", 1)], "", 0);
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(Duration::from_secs(5));
    let status = expect_error(
        checkout.place_order(call).await,
        Code::Unavailable,
        Reason::DependencyUnavailable,
    );
    let saga_id = saga_id_of(&status);
    let saga = admin
        .clone()
        .get_saga(orch::GetSagaRequest {
            saga_id: saga_id.clone(),
        })
        .await
        .expect("GetSaga")
        .into_inner()
        .saga
        .expect("the saga");
    assert_eq!(saga_state(&saga), SagaState::Running, "{saga:#?}");
    assert!(!saga.waiting_for.is_empty(), "{saga:#?}");
    assert!(!orch.is_finished(), "the orchestrator must not stop");

    // inventory-svc first, with the product, then the others: the saga is
    // re-driven once all it waits for are back.
    let inventory = spawn_participant(Participant::Inventory, inv_port.listen(), dir.path());
    let addrs = MeshAddrs {
        orchestrator: orch.addr,
        inventory: inv_addr,
        loyalty: loy_addr,
        order: ord_addr,
    };
    let mut inv_client =
        microshop_proto::inventory::v1::inventory_service_client::InventoryServiceClient::new(
            microshop::mesh::connect(&inventory.url(), CONNECT_WITHIN)
                .await
                .expect("connect to inventory-svc"),
        );
    inv_client
        .put_product(microshop_proto::inventory::v1::PutProductRequest {
            sku: "BIKE".into(),
            name: "Bike".into(),
            unit_price: 500_000,
            stock: 4,
        })
        .await
        .expect("PutProduct");
    let loyalty = spawn_participant(Participant::Loyalty, loy_port.listen(), dir.path());
    let order = spawn_participant(Participant::Order, ord_port.listen(), dir.path());
    let mut shop = Shop::connect(&addrs).await;
    shop.universe.skus.insert("BIKE".into(), 4);
    shop.universe.customers.insert("wes".into());
    let saga = saga_until(&shop, &saga_id, "the checkout to complete by itself", |s| {
        saga_state(s) == SagaState::Completed
    })
    .await;
    let answer = shop.place_ok(request).await;
    assert_eq!(answer.order_id, saga.order_id);
    let bike = shop.product("BIKE").await;
    assert_eq!((bike.available, bike.reserved), (3, 1), "{bike:?}");

    shop.assert_invariants().await;
    orch.stop().await;
    for server in [inventory, loyalty, order] {
        server.stop().await;
    }
}

/// The orchestrator's inventory URL points at loyalty-svc (a swapped port):
/// its health says inventory is NOT_SERVING, a checkout answers UNAVAILABLE
/// / DEPENDENCY_MISCONFIGURED (never a business rejection) and waits; with
/// the URL fixed and the orchestrator restarted on the same log, it
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_url_that_serves_another_service_is_a_misconfiguration() {
    let mut cluster = Cluster::start(outage_engine()).await;
    let mut shop = Shop::connect(&cluster.addrs).await;
    shop.put_product("BIKE", 500_000, 10).await;
    cluster.orch.stop().await;
    let swapped = ParticipantUrls {
        inventory: format!("http://{}", cluster.addrs.loyalty),
        loyalty: format!("http://{}", cluster.addrs.loyalty),
        order: format!("http://{}", cluster.addrs.order),
    };
    cluster.orch = spawn_orchestrator(
        reserve(cluster.addrs.orchestrator).await.listen(),
        cluster.dir.path(),
        swapped,
        outage_engine(),
    );
    wait_health(
        &cluster.health,
        INVENTORY,
        ServingStatus::NotServing,
        SETTLE_WITHIN,
    )
    .await;
    wait_health(
        &cluster.health,
        LOYALTY,
        ServingStatus::Serving,
        SETTLE_WITHIN,
    )
    .await;
    shop.clients = MeshClients::connect(&cluster.addrs, CONNECT_WITHIN)
        .await
        .expect("reconnect");
    let status = expect_error(
        shop.place_order(order_request("swap-1", "una", &[("BIKE", 1)], "", 0))
            .await,
        Code::Unavailable,
        Reason::DependencyMisconfigured,
    );
    assert!(status.message().contains(INVENTORY), "{}", status.message());
    let saga_id = saga_id_of(&status);
    let saga = shop.saga(&saga_id).await;
    assert_eq!(
        saga_state(&saga),
        SagaState::Running,
        "not compensated: {saga:#?}"
    );
    assert_eq!(
        saga.waiting_for.len(),
        2,
        "the quote's participants: {saga:#?}"
    );

    cluster.orch.stop().await;
    let fixed = ParticipantUrls {
        inventory: format!("http://{}", cluster.addrs.inventory),
        loyalty: format!("http://{}", cluster.addrs.loyalty),
        order: format!("http://{}", cluster.addrs.order),
    };
    cluster.orch = spawn_orchestrator(
        reserve(cluster.addrs.orchestrator).await.listen(),
        cluster.dir.path(),
        fixed,
        outage_engine(),
    );
    shop.clients = MeshClients::connect(&cluster.addrs, CONNECT_WITHIN)
        .await
        .expect("reconnect");
    saga_until(
        &shop,
        &saga_id,
        "the checkout to complete once fixed",
        |s| saga_state(s) == SagaState::Completed,
    )
    .await;
    shop.universe.customers.insert("una".into());
    shop.assert_invariants().await;
    cluster.stop().await;
}

/// Regression: a checkout's intermediate records and its end are not
/// fsync'd (recovery replays them through the participants' barrier), so
/// a power cut can leave the log at the saga's creation while the stock
/// was reserved and the order created. If the orchestrator then comes back
/// after the checkout hold, recovery compensates instead of replaying, and
/// it compensated only the steps its record showed as attempted (none):
/// the stock stayed reserved and the order open for a COMPENSATED saga.
/// Now a record this process did not write last has every effectful step
/// compensated; the barrier answers those never called as no-ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_hold_with_records_lost_compensates_every_step() {
    use microshop_storage::embedded::{Durable, Sync};
    use orchestrator::{EmbeddedSagaLog, SagaLog, log::PaymentDeadline, model};

    let mut m = TestMesh::start(outage_engine()).await;
    m.shop.put_product("LAMP", 4_000, 5).await;
    let placed = m
        .shop
        .place_ok(order_request("cut-1", "vera", &[("LAMP", 2)], "", 0))
        .await;
    let order_id = placed.order_id.clone();
    let saga_id = placed.saga_id.clone();
    assert_eq!(m.shop.product("LAMP").await.available, 3);

    // The power cut: the log keeps only what was fsync'd, the creation
    // (the quote's intent); the participants keep their durable effects.
    let hold_over = EngineConfig {
        checkout_hold: Duration::ZERO,
        ..outage_engine()
    };
    let id = saga_id.clone();
    let order = order_id.clone();
    m.restart_after(
        hold_over,
        |_| {},
        async move |dir: &std::path::Path| {
            let log = EmbeddedSagaLog::open(dir, Durable::Yes).expect("open the saga log");
            let mut record = log.get(id.clone()).await.expect("read").expect("the saga");
            record.state = model::SagaState::Running;
            record.outputs = model::SagaOutputs::default();
            record.history.truncate(1);
            record.error = None;
            for (i, step) in record.steps.iter_mut().enumerate() {
                step.compensation = None;
                step.action = model::RunRecord {
                    name: step.action.name.clone(),
                    status: if i == 0 {
                        model::StepStatus::Running
                    } else {
                        model::StepStatus::Pending
                    },
                    attempts: u32::from(i == 0),
                    ..model::RunRecord::default()
                };
            }
            log.save(
                &record,
                PaymentDeadline::Clear { order_id: order },
                Sync::Durable,
            )
            .await
            .expect("write the creation back");
        },
    )
    .await;

    let saga = saga_until(&m.shop, &saga_id, "the checkout to be compensated", |s| {
        saga_state(s) == SagaState::Compensated
    })
    .await;
    assert_eq!(
        m.shop.product("LAMP").await.available,
        5,
        "the stock is back: {saga:#?}"
    );
    assert_eq!(
        m.shop.order(&order_id).await.status,
        microshop_proto::order::v1::OrderStatus::Cancelled as i32,
        "the order is cancelled: {saga:#?}"
    );
    assert!(
        saga.history
            .iter()
            .any(|t| t.note.contains("an earlier run may have called")),
        "{saga:#?}"
    );
    m.shop.universe.customers.insert("vera".into());
    m.shop.assert_invariants().await;
    m.shutdown().await;
}
