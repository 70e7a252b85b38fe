//! Harness of the cross-service scenario tests: the real servers over
//! loopback gRPC on a temporary data directory, seed helpers, bounded
//! polling (never a blind sleep), and the invariants of `docs/architecture.md`.
//!
//! Two ways to get a mesh:
//! - [`TestMesh::start`]: all four services in one call
//!   ([`microshop::mesh::Mesh`]), with a tunable [`EngineConfig`];
//! - [`spawn_participant`] / [`spawn_orchestrator`]: each service on its own
//!   listener with its own stop switch, for outage scenarios.
//!
//! Either way, [`Shop`] holds the clients and the [`Universe`] of what was
//! seeded, so [`Shop::assert_invariants`] knows what to read.

use std::{
    fmt::Debug,
    future::Future,
    net::SocketAddr,
    ops::{Deref, DerefMut},
    path::Path,
    time::Duration,
};

pub use microshop::invariants::{Summary, Universe};
use microshop::{
    invariants,
    mesh::{Mesh, MeshAddrs, MeshClients, MeshConfig},
};
use microshop_proto::{
    inventory::v1 as inv,
    loyalty::v1 as loy,
    orchestrator::v1::{self as orch, saga_admin_service_client::SagaAdminServiceClient},
    order::v1 as ord,
};
use microshop_runtime::{Reason, ServeError, errors::reason_of, validate::id_problem};
use orchestrator::{EngineConfig, OrchestratorConfig, ParticipantUrls};
use tempfile::TempDir;
use tokio::{
    net::TcpListener,
    sync::oneshot,
    task::JoinHandle,
    time::{Instant, timeout},
};
use tonic::{Code, Response, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How long to wait for a server to accept connections.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(15);
/// Upper bound for any polled condition (sagas settling, expiry, health).
pub const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// Upper bound for a server to stop gracefully.
pub const STOP_WITHIN: Duration = Duration::from_secs(15);
/// Points earned per this much paid (the seed rule: 1 point per 100,000₫).
pub const EARN_AMOUNT_PER_POINT: i64 = 100_000;

/// Engine settings for scenarios where every participant is up: fast
/// retries, budgets generous enough that a loaded test machine does not
/// turn a slow call into a FAILED saga, a fast expiry check.
pub fn test_engine() -> EngineConfig {
    EngineConfig {
        step_attempts: 8,
        step_budget: Duration::from_secs(10),
        compensation_attempts: 8,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        call_timeout: Duration::from_secs(5),
        recovery_interval: Duration::from_secs(1),
        expiry_interval: Duration::from_millis(200),
        max_wait: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

/// Engine settings for outage scenarios: a step gives up after 4 attempts
/// or 1 s, a compensation after 3 attempts, so a saga against a dead
/// participant is FAILED within about a second.
pub fn short_budget_engine() -> EngineConfig {
    EngineConfig {
        step_attempts: 4,
        step_budget: Duration::from_secs(1),
        compensation_attempts: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        call_timeout: Duration::from_secs(1),
        recovery_interval: Duration::from_secs(1),
        max_wait: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Polling

/// Polls `probe` until it returns `Ok`, for at most `within`; panics with
/// `what` and the last `Err` (the state seen) when the deadline passes.
/// The pause between polls grows from 10 ms to 200 ms.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Requests and error assertions

/// A PlaceOrder request for `items` (sku, quantity) with a shipping address.
pub fn order_request(
    key: &str,
    customer: &str,
    items: &[(&str, i64)],
    coupon: &str,
    points: i64,
) -> orch::PlaceOrderRequest {
    orch::PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: items
            .iter()
            .map(|(sku, quantity)| orch::LineItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        coupon_code: coupon.into(),
        points_to_redeem: points,
        shipping: Some(orch::ShippingAddress {
            name: customer.into(),
            address: "1 Test Street, Hanoi".into(),
            phone: "+84 900 000 000".into(),
        }),
    }
}

/// Asserts `result` is an error with `code` and ErrorInfo `reason`, and
/// returns the status.
#[track_caller]
pub fn expect_error<T: Debug>(result: Result<T, Status>, code: Code, reason: Reason) -> Status {
    let status = match result {
        Ok(v) => panic!("expected {code:?} {reason}, got success: {v:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "expected {code:?} {reason}, got {:?} {:?}: {}",
        status.code(),
        reason_of(&status),
        status.message()
    );
    assert_eq!(
        reason_of(&status),
        Some(reason),
        "expected reason {reason} in ErrorInfo, got {:?} ({:?}: {})",
        reason_of(&status),
        status.code(),
        status.message()
    );
    status
}

/// The raw `ErrorInfo.reason` of `status` (also reasons outside
/// [`Reason`], such as `SAGA_ABORTED`), if it carries one in domain
/// `microshop`.
pub fn error_reason(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .filter(|i| i.domain == microshop_runtime::DOMAIN)
        .map(|i| i.reason.clone())
}

/// The saga id a checkout error carries in its ErrorInfo metadata.
#[track_caller]
pub fn saga_id_of(status: &Status) -> String {
    microshop_runtime::errors::metadata_of(status, "sagaId").unwrap_or_else(|| {
        panic!(
            "no sagaId in the ErrorInfo metadata of {:?}: {}",
            status.code(),
            status.message()
        )
    })
}

/// A saga state's enum value.
pub fn saga_state(s: &orch::Saga) -> orch::SagaState {
    orch::SagaState::try_from(s.state).unwrap_or(orch::SagaState::Unspecified)
}

/// A step of `saga` by name.
#[track_caller]
pub fn step<'a>(saga: &'a orch::Saga, name: &str) -> &'a orch::SagaStep {
    saga.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("saga {} has no step {name}", saga.saga_id))
}

/// A step's action status.
pub fn action_status(step: &orch::SagaStep) -> orch::StepStatus {
    step.action
        .as_ref()
        .and_then(|a| orch::StepStatus::try_from(a.status).ok())
        .unwrap_or(orch::StepStatus::Unspecified)
}

/// A step's action attempts.
pub fn action_attempts(step: &orch::SagaStep) -> u32 {
    step.action.as_ref().map_or(0, |a| a.attempts)
}

/// A step's compensation status, if one ran.
pub fn compensation_status(step: &orch::SagaStep) -> Option<orch::StepStatus> {
    step.compensation
        .as_ref()
        .map(|c| orch::StepStatus::try_from(c.status).unwrap_or(orch::StepStatus::Unspecified))
}

// ---------------------------------------------------------------------------
// The shop: clients plus what was seeded

/// Clients of a mesh and the universe of what a scenario created.
#[derive(Clone, Debug)]
pub struct Shop {
    /// Clients of every service.
    pub clients: MeshClients,
    /// SKUs, customers and coupons to check.
    pub universe: Universe,
}

impl Shop {
    /// A shop over `clients`, nothing seeded.
    pub fn new(clients: MeshClients) -> Self {
        Self {
            clients,
            universe: Universe::default(),
        }
    }

    /// Connects to every service of `addrs`.
    pub async fn connect(addrs: &MeshAddrs) -> Self {
        let clients = MeshClients::connect(addrs, CONNECT_WITHIN)
            .await
            .expect("connect to every service of the mesh");
        Self::new(clients)
    }

    /// Puts a product (sku, name = sku, price, stock) and records its stock.
    pub async fn put_product(
        &mut self,
        sku: &str,
        unit_price: i64,
        stock: i64,
    ) -> inv::PutProductResponse {
        let resp = self
            .clients
            .inventory
            .clone()
            .put_product(inv::PutProductRequest {
                sku: sku.into(),
                name: format!("product {sku}"),
                unit_price,
                stock,
            })
            .await
            .unwrap_or_else(|e| panic!("PutProduct {sku}: {e:?}"))
            .into_inner();
        self.universe.skus.insert(sku.into(), stock);
        resp
    }

    /// Grants `points` to `customer` (making them a member).
    pub async fn grant_points(&mut self, customer: &str, points: i64) -> loy::GrantPointsResponse {
        let resp = self
            .clients
            .loyalty
            .clone()
            .grant_points(loy::GrantPointsRequest {
                customer_id: customer.into(),
                points,
            })
            .await
            .unwrap_or_else(|e| panic!("GrantPoints {customer}: {e:?}"))
            .into_inner();
        self.universe.customers.insert(customer.into());
        resp
    }

    /// Puts a coupon.
    pub async fn put_coupon(
        &mut self,
        code: &str,
        kind: ord::CouponKind,
        value: i64,
        usage_limit: i64,
    ) -> ord::PutCouponResponse {
        let resp = self
            .clients
            .order
            .clone()
            .put_coupon(ord::PutCouponRequest {
                code: code.into(),
                kind: kind.into(),
                value,
                usage_limit,
            })
            .await
            .unwrap_or_else(|e| panic!("PutCoupon {code}: {e:?}"))
            .into_inner();
        self.universe.coupons.insert(code.into());
        resp
    }

    /// PlaceOrder through the CheckoutService (a well-formed customer id
    /// joins the universe whatever the outcome).
    pub async fn place_order(
        &mut self,
        request: orch::PlaceOrderRequest,
    ) -> Result<orch::PlaceOrderResponse, Status> {
        if id_problem(&request.customer_id).is_none() {
            self.universe.customers.insert(request.customer_id.clone());
        }
        self.clients
            .checkout
            .clone()
            .place_order(request)
            .await
            .map(Response::into_inner)
    }

    /// PlaceOrder that must succeed.
    pub async fn place_ok(&mut self, request: orch::PlaceOrderRequest) -> orch::PlaceOrderResponse {
        let key = request.idempotency_key.clone();
        self.place_order(request)
            .await
            .unwrap_or_else(|e| panic!("PlaceOrder {key}: {e:?}"))
    }

    /// ConfirmPayment.
    pub async fn confirm_payment(
        &self,
        order_id: &str,
        payment_ref: &str,
    ) -> Result<orch::ConfirmPaymentResponse, Status> {
        self.clients
            .checkout
            .clone()
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: order_id.into(),
                payment_ref: payment_ref.into(),
            })
            .await
            .map(Response::into_inner)
    }

    /// CancelOrder.
    pub async fn cancel_order(
        &self,
        order_id: &str,
        reason: &str,
    ) -> Result<orch::CancelOrderResponse, Status> {
        self.clients
            .checkout
            .clone()
            .cancel_order(orch::CancelOrderRequest {
                order_id: order_id.into(),
                reason: reason.into(),
            })
            .await
            .map(Response::into_inner)
    }

    /// A product's stock ledger.
    pub async fn product(&self, sku: &str) -> inv::GetProductResponse {
        self.clients
            .inventory
            .clone()
            .get_product(inv::GetProductRequest { sku: sku.into() })
            .await
            .unwrap_or_else(|e| panic!("GetProduct {sku}: {e:?}"))
            .into_inner()
    }

    /// A customer's points ledger.
    pub async fn balance(&self, customer: &str) -> loy::GetBalanceResponse {
        self.clients
            .loyalty
            .clone()
            .get_balance(loy::GetBalanceRequest {
                customer_id: customer.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetBalance {customer}: {e:?}"))
            .into_inner()
    }

    /// A coupon and its use count.
    pub async fn coupon(&self, code: &str) -> ord::GetCouponResponse {
        self.clients
            .order
            .clone()
            .get_coupon(ord::GetCouponRequest { code: code.into() })
            .await
            .unwrap_or_else(|e| panic!("GetCoupon {code}: {e:?}"))
            .into_inner()
    }

    /// An order, read from order-svc.
    pub async fn order(&self, order_id: &str) -> ord::Order {
        self.clients
            .order
            .clone()
            .get_order(ord::GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetOrder {order_id}: {e:?}"))
            .into_inner()
            .order
            .unwrap_or_else(|| panic!("GetOrder {order_id} returned no order"))
    }

    /// Every order of `customer` (all pages).
    pub async fn orders_of(&self, customer: &str) -> Vec<ord::Order> {
        let mut client = self.clients.order.clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_orders(ord::ListOrdersRequest {
                    customer_id: customer.into(),
                    page_size: 100,
                    page_token: token,
                })
                .await
                .unwrap_or_else(|e| panic!("ListOrders {customer}: {e:?}"))
                .into_inner();
            out.extend(page.orders);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// One saga, from the SagaAdminService.
    pub async fn saga(&self, saga_id: &str) -> orch::Saga {
        self.clients
            .admin
            .clone()
            .get_saga(orch::GetSagaRequest {
                saga_id: saga_id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetSaga {saga_id}: {e:?}"))
            .into_inner()
            .saga
            .unwrap_or_else(|| panic!("GetSaga {saga_id} returned no saga"))
    }

    /// Every saga (all pages of ListSagas).
    pub async fn sagas(&self) -> Vec<orch::Saga> {
        invariants::all_sagas(&mut self.clients.admin.clone())
            .await
            .unwrap_or_else(|e| panic!("ListSagas: {e}"))
    }

    /// Sagas in `state` (all pages of ListSagas with a state filter).
    pub async fn sagas_in(&self, state: orch::SagaState) -> Vec<orch::Saga> {
        let mut admin = self.clients.admin.clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = admin
                .list_sagas(orch::ListSagasRequest {
                    state: state.into(),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("ListSagas {}: {e:?}", state.as_str_name()))
                .into_inner();
            out.extend(page.sagas);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// Waits (bounded) until no saga is RUNNING or COMPENSATING; returns
    /// every saga as last listed.
    pub async fn quiesce(&self) -> Vec<orch::Saga> {
        quiesce(&self.clients.admin, SETTLE_WITHIN).await
    }

    /// Quiesces, then checks the invariants over everything seeded;
    /// panics with the first violation.
    pub async fn assert_invariants(&self) -> Summary {
        self.quiesce().await;
        invariants::check(&self.clients, &self.universe)
            .await
            .unwrap_or_else(|v| panic!("{v}\nuniverse: {:?}", self.universe))
    }
}

/// Polls ListSagas until no saga is RUNNING or COMPENSATING, for at most
/// `within`; returns every saga as last listed.
pub async fn quiesce(admin: &SagaAdminServiceClient<Channel>, within: Duration) -> Vec<orch::Saga> {
    eventually("every saga to settle", within, || {
        let mut admin = admin.clone();
        async move {
            let sagas = invariants::all_sagas(&mut admin)
                .await
                .map_err(|e| e.to_string())?;
            let busy: Vec<String> = sagas
                .iter()
                .filter(|s| {
                    matches!(
                        saga_state(s),
                        orch::SagaState::Running | orch::SagaState::Compensating
                    )
                })
                .map(|s| format!("{} {}", s.saga_id, saga_state(s).as_str_name()))
                .collect();
            if busy.is_empty() {
                Ok(sagas)
            } else {
                Err(format!("still busy: {busy:?}"))
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// The whole mesh in one call

/// A mesh on a temporary directory, with its [`Shop`] (deref).
#[derive(Debug)]
pub struct TestMesh {
    /// Clients and universe.
    pub shop: Shop,
    mesh: Option<Mesh>,
    addrs: MeshAddrs,
    dir: TempDir,
}

impl TestMesh {
    /// Starts the four services on free loopback ports with `engine`.
    pub async fn start(engine: EngineConfig) -> Self {
        Self::start_with(engine, |_| {}).await
    }

    /// Starts the four services with `engine`, after `configure` has had
    /// its say on the rest (e.g. `server.faults` to inject faults into the
    /// participants' saga RPCs: see `microshop_runtime::faults`).
    pub async fn start_with(engine: EngineConfig, configure: impl FnOnce(&mut MeshConfig)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mesh = start_mesh(dir.path(), engine, configure).await;
        let addrs = mesh.addrs.clone();
        let shop = Shop::connect(&addrs).await;
        Self {
            shop,
            mesh: Some(mesh),
            addrs,
            dir,
        }
    }

    /// Stops every service gracefully, then starts them again on the same
    /// data with `engine` and `configure`'s settings (new ports; the shop
    /// reconnects and keeps its universe): what an operator's restart with
    /// changed settings does.
    pub async fn restart_with(
        &mut self,
        engine: EngineConfig,
        configure: impl FnOnce(&mut MeshConfig),
    ) {
        self.restart_after(engine, configure, async |_| {}).await;
    }

    /// Like [`Self::restart_with`], with `meanwhile` run on the data
    /// directory while every service is stopped (to leave the stores as a
    /// power cut would).
    pub async fn restart_after(
        &mut self,
        engine: EngineConfig,
        configure: impl FnOnce(&mut MeshConfig),
        meanwhile: impl AsyncFnOnce(&Path),
    ) {
        if let Some(mesh) = self.mesh.take() {
            timeout(STOP_WITHIN, mesh.shutdown())
                .await
                .expect("the mesh stops within its bound")
                .expect("no service stopped with an error");
        }
        meanwhile(self.dir.path()).await;
        let mesh = start_mesh(self.dir.path(), engine, configure).await;
        self.addrs = mesh.addrs.clone();
        self.shop.clients = MeshClients::connect(&self.addrs, CONNECT_WITHIN)
            .await
            .expect("reconnect to the restarted mesh");
        self.mesh = Some(mesh);
    }

    /// Where each service listens.
    pub fn addrs(&self) -> &MeshAddrs {
        &self.addrs
    }

    /// Stops every service gracefully (bounded) and checks none failed.
    pub async fn shutdown(mut self) {
        if let Some(mesh) = self.mesh.take() {
            timeout(STOP_WITHIN, mesh.shutdown())
                .await
                .expect("the mesh stops within its bound")
                .expect("no service stopped with an error");
        }
    }
}

impl Deref for TestMesh {
    type Target = Shop;
    fn deref(&self) -> &Shop {
        &self.shop
    }
}

impl DerefMut for TestMesh {
    fn deref_mut(&mut self) -> &mut Shop {
        &mut self.shop
    }
}

/// The test mesh's settings on `dir`, adjusted by `configure`, started.
async fn start_mesh(
    dir: &Path,
    engine: EngineConfig,
    configure: impl FnOnce(&mut MeshConfig),
) -> Mesh {
    let mut config = MeshConfig::ephemeral(dir);
    config.server = microshop_runtime::testing::server_args(dir);
    config.engine = engine;
    config.pricing.earn_amount_per_point = EARN_AMOUNT_PER_POINT;
    configure(&mut config);
    let mesh = Mesh::start(config).await.expect("the mesh starts");
    // A store on MongoDB opens once its indexes exist; meanwhile its
    // service answers UNAVAILABLE (health NOT_SERVING). The tests start
    // from a serving mesh.
    let addrs = &mesh.addrs;
    for addr in [
        addrs.inventory,
        addrs.loyalty,
        addrs.order,
        addrs.orchestrator,
    ] {
        wait_health(
            &health_client(addr),
            "",
            ServingStatus::Serving,
            Duration::from_secs(30),
        )
        .await;
    }
    mesh
}

// ---------------------------------------------------------------------------
// Services one by one

/// A participant service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Participant {
    /// inventory-svc.
    Inventory,
    /// loyalty-svc.
    Loyalty,
    /// order-svc.
    Order,
}

/// One service running on its own task, stopped through its oneshot.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    fn spawn<F>(addr: SocketAddr, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), ServeError>> + Send + 'static,
    {
        let (stop, rx) = oneshot::channel();
        Self {
            addr,
            stop: Some(stop),
            task: tokio::spawn(run(rx)),
        }
    }

    /// Waits (bounded) until its health is SERVING: a store on MongoDB
    /// opens once its indexes exist, and the service answers UNAVAILABLE
    /// until then.
    pub async fn wait_serving(&self) {
        wait_health(
            &health_client(self.addr),
            "",
            ServingStatus::Serving,
            Duration::from_secs(30),
        )
        .await;
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether it stopped by itself (crashed or failed to start).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Signals its oneshot and waits (bounded) for it to stop cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(STOP_WITHIN, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("server on {} did not stop in time", self.addr))
            .expect("the server task did not panic")
            .unwrap_or_else(|e| panic!("server on {} stopped with an error: {e:?}", self.addr));
    }
}

async fn until(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// Binds `addr` (port 0 for a free one).
pub async fn listen(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// A free loopback address.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A port held for a service that is down: bound but not listening, so a
/// connection to it is refused, as by a stopped service, while no other
/// socket can take the port until [`Reserved::listen`] serves on it.
#[derive(Debug)]
pub struct Reserved {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl Reserved {
    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening on the reserved port.
    pub fn listen(self) -> TcpListener {
        self.socket
            .listen(1024)
            .unwrap_or_else(|e| panic!("listen on {}: {e}", self.addr))
    }
}

/// Reserves `addr` (port 0 for a free one). A port a server has just
/// released may be held for a moment by a connection of another test (all
/// draw from the same ephemeral range): the bind is tried again, for up to
/// [`CONNECT_WITHIN`].
pub async fn reserve(addr: SocketAddr) -> Reserved {
    let deadline = Instant::now() + CONNECT_WITHIN;
    loop {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        // As TcpListener::bind does: the released server's connections in
        // TIME_WAIT do not keep the port.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr) {
            Ok(()) => {
                let addr = socket.local_addr().expect("a bound socket has an address");
                return Reserved { socket, addr };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reserve {addr}: {e}"),
        }
    }
}

/// Starts a participant on `listener` with its store under `data_dir`.
pub fn spawn_participant(kind: Participant, listener: TcpListener, data_dir: &Path) -> Server {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let server = microshop_runtime::testing::server_args(data_dir);
    match kind {
        Participant::Inventory => {
            let config = inventory_svc::InventoryConfig::new(server);
            Server::spawn(addr, |rx| inventory_svc::run(listener, config, until(rx)))
        }
        Participant::Loyalty => {
            let mut config = loyalty_svc::LoyaltyConfig::new(server);
            config.earn_amount_per_point = EARN_AMOUNT_PER_POINT;
            Server::spawn(addr, |rx| loyalty_svc::run(listener, config, until(rx)))
        }
        Participant::Order => {
            let config = order_svc::OrderConfig::new(server);
            Server::spawn(addr, |rx| order_svc::run(listener, config, until(rx)))
        }
    }
}

/// Starts the orchestrator on `listener`, its saga log under `data_dir`,
/// calling the participants at `participants`.
pub fn spawn_orchestrator(
    listener: TcpListener,
    data_dir: &Path,
    participants: ParticipantUrls,
    engine: EngineConfig,
) -> Server {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let mut config = OrchestratorConfig::new(
        microshop_runtime::testing::server_args(data_dir),
        participants,
    );
    config.engine = engine;
    Server::spawn(addr, |rx| orchestrator::run(listener, config, until(rx)))
}

// ---------------------------------------------------------------------------
// Health

/// A lazily connecting health client of the server at `addr`.
pub fn health_client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid url")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    HealthClient::new(channel)
}

/// Polls `grpc.health.v1.Health/Check` for `service` until it answers
/// `want`, for at most `within`.
pub async fn wait_health(
    client: &HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    within: Duration,
) {
    let what = format!("health of {service:?} to be {}", want.as_str_name());
    eventually(&what, within, || {
        let mut client = client.clone();
        let service = service.to_owned();
        async move {
            let mut request = tonic::Request::new(HealthCheckRequest { service });
            request.set_timeout(Duration::from_secs(2));
            match client.check(request).await {
                Ok(r) if r.get_ref().status == want as i32 => Ok(()),
                Ok(r) => Err(format!(
                    "status {:?}",
                    ServingStatus::try_from(r.get_ref().status)
                )),
                Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
            }
        }
    })
    .await;
}
