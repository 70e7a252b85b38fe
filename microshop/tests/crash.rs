//! Crash tests over the real binary: every service runs as its own
//! `microshop serve <service>` process on a loopback port with its own data
//! directory, and is killed with SIGKILL at the orchestrator's failpoints
//! (`--failpoint PHASE:OP`, which prints `FAILPOINT PHASE:OP reached` and
//! holds) or in the middle of a saga. After a restart on the same port and
//! data directory, every saga must end COMPLETED or COMPENSATED with its
//! effects applied exactly once, a retry with the same idempotency key must
//! answer the same outcome, and the invariants of `docs/architecture.md`
//! must hold.
//!
//! The matrix covers every step boundary (`intent:`, `rpc:`, `result:`) of
//! every saga type: checkout (completing, and rejected then compensated),
//! payment, cancellation and payment expiry. At each, the orchestrator is
//! SIGKILLed; and, separately, the participant the next call goes to (at
//! `rpc:`, the one that just answered) is SIGKILLed with it and comes back
//! only after the resumed saga retried against it. Failpoint names are
//! operation names shared between sagas, so every case runs one saga at a
//! time. Each matrix test prints (uncaptured) the crash points survived by
//! process and the invariant checks passed, for itself and for the binary
//! so far.
//!
//! Nothing waits on a sleep for state: every wait is bounded polling (of
//! health, GetSaga, or a service's stderr).

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use microshop::{
    invariants::{self, Universe, all_sagas},
    mesh::{MeshAddrs, MeshClients},
};
use microshop_proto::{
    inventory::v1::{self as inv, inventory_service_client::InventoryServiceClient},
    loyalty::v1::{self as loy, loyalty_service_client::LoyaltyServiceClient},
    orchestrator::v1::{
        self as orch, checkout_service_client::CheckoutServiceClient,
        saga_admin_service_client::SagaAdminServiceClient,
    },
    order::v1::{self as ord, order_service_client::OrderServiceClient},
};
use microshop_runtime::{Reason, errors::reason_of};
use tempfile::TempDir;
use tokio::{
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    task::JoinHandle,
    time::{Instant, sleep, timeout, timeout_at},
};
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_microshop");

/// How long a service may take to answer health SERVING after its start.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a failpoint may take to be reached.
const FAILPOINT_WITHIN: Duration = Duration::from_secs(30);
/// How long a resumed saga may take to end.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// Interval of every bounded poll.
const POLL: Duration = Duration::from_millis(20);
/// How long a restarted service may keep finding its port taken.
const REBIND_WITHIN: Duration = Duration::from_secs(20);
/// Pause before binding a taken port again.
const REBIND_PAUSE: Duration = Duration::from_millis(250);
/// Stderr lines kept for the failure report.
const TAIL_LINES: usize = 3_000;

/// Unit price of the test products: items 1,000,000 + tax 100,000 +
/// shipping 50,000 = 1,150,000 payable per unit.
const PRICE: i64 = 1_000_000;
/// Points redeemed by every order that redeems (100,000 off).
const REDEEM: i64 = 100;
/// Points granted to every customer.
const GRANT: i64 = 500;

/// Tight budgets for the crash matrices: nothing is transiently failing
/// there, so these only bound how long a bug could keep a saga going.
const MATRIX_ENGINE: &[&str] = &[
    "--step-attempts",
    "20",
    "--step-budget-ms",
    "2000",
    "--compensation-attempts",
    "20",
    "--backoff-min-ms",
    "10",
    "--backoff-max-ms",
    "100",
    "--call-timeout-ms",
    "2000",
    "--recovery-interval-ms",
    "200",
    // A restarted orchestrator is the same owner of saga leases (as a
    // container restarted in its pod), so on a shared MongoDB log it
    // resumes its sagas at once instead of after their leases expire.
    "--orchestrator-id",
    "crash-test-orchestrator",
];

/// Budgets that outlast a participant restart: a step keeps retrying for
/// 15 s (a PlaceOrder client waits 20 s), compensations nearly forever.
const OUTAGE_ENGINE: &[&str] = &[
    "--step-attempts",
    "1000",
    "--step-budget-ms",
    "15000",
    "--compensation-attempts",
    "1000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "200",
    "--call-timeout-ms",
    "2000",
    "--recovery-interval-ms",
    "200",
    // A restarted orchestrator is the same owner of saga leases (as a
    // container restarted in its pod), so on a shared MongoDB log it
    // resumes its sagas at once instead of after their leases expire.
    "--orchestrator-id",
    "crash-test-orchestrator",
];

// ---------------------------------------------------------------------------
// Process harness
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Svc {
    Orchestrator,
    Inventory,
    Loyalty,
    Order,
    /// A further orchestrator sharing the first one's MongoDB saga log.
    Peer(usize),
}

impl Svc {
    /// Participants first, so the orchestrator's recovery finds them up.
    const START_ORDER: [Self; 4] = [
        Self::Inventory,
        Self::Loyalty,
        Self::Order,
        Self::Orchestrator,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Orchestrator | Self::Peer(_) => "orchestrator",
            Self::Inventory => "inventory",
            Self::Loyalty => "loyalty",
            Self::Order => "order",
        }
    }

    /// The gRPC service its health reports. Readiness asks for it, not for
    /// `""`: a port freed by this test and taken by another test's service
    /// of another kind must not pass for this one.
    fn grpc_name(self) -> &'static str {
        match self {
            Self::Orchestrator | Self::Peer(_) => orchestrator::SERVICE_NAME,
            Self::Inventory => inventory_svc::SERVICE_NAME,
            Self::Loyalty => loyalty_svc::SERVICE_NAME,
            Self::Order => order_svc::SERVICE_NAME,
        }
    }

    fn addr(self, addrs: &MeshAddrs, peers: &[SocketAddr]) -> SocketAddr {
        match self {
            Self::Orchestrator => addrs.orchestrator,
            Self::Inventory => addrs.inventory,
            Self::Loyalty => addrs.loyalty,
            Self::Order => addrs.order,
            Self::Peer(i) => peers[i],
        }
    }
}

/// One running `microshop serve` process. Dropping it kills and reaps it.
struct Proc {
    child: Child,
    /// Its stderr, line by line (forwarded by a reader thread).
    lines: UnboundedReceiver<String>,
}

impl Proc {
    /// SIGKILL (what `Child::kill` sends on unix), then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Four services as separate processes over one temporary directory.
/// Dropping it kills every process; on a panic it prints their stderr.
struct Cluster {
    procs: BTreeMap<Svc, Proc>,
    addrs: MeshAddrs,
    engine: Vec<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
    dir: TempDir,
    /// Addresses of further orchestrators ([`Svc::Peer`]).
    peers: Vec<SocketAddr>,
    /// The MongoDB server every store is on; `None`: the embedded stores,
    /// unless the test run sets `MONGODB_URI` (the script's MongoDB pass).
    mongodb: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for proc in self.procs.values_mut() {
            proc.kill();
        }
        self.procs.clear();
        if std::thread::panicking() {
            let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "---- last {} output lines of the services (data in {}) ----",
                tail.len(),
                self.dir.path().display()
            );
            for line in tail.iter() {
                eprintln!("{line}");
            }
            eprintln!("---- end of service output ----");
        }
    }
}

/// Free loopback addresses: bound to port 0, read, released.
fn free_addrs() -> MeshAddrs {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    let addr = |i: usize| listeners[i].local_addr().expect("bound address");
    MeshAddrs {
        orchestrator: addr(0),
        inventory: addr(1),
        loyalty: addr(2),
        order: addr(3),
    }
}

/// Whether the process of `proc`, which exited, said it could not bind its
/// port (reads its stderr to the end: the pipe closes with the process).
async fn could_not_bind(proc: &mut Proc) -> bool {
    let exited = proc.child.try_wait().is_ok_and(|s| s.is_some());
    let said = timeout(Duration::from_secs(5), async {
        while let Some(line) = proc.lines.recv().await {
            if line.contains("cannot listen on") {
                return true;
            }
        }
        false
    });
    exited && said.await.unwrap_or(false)
}

/// Whether the gRPC health service at `addr` answers SERVING.
async fn serving(addr: SocketAddr) -> bool {
    serving_entry(addr, "").await
}

/// Whether the health entry `service` at `addr` answers SERVING.
async fn serving_entry(addr: SocketAddr, service: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_millis(250))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Reads `stream` line by line on a thread until it closes: each line goes
/// to the shared tail (for failure reports) and, if given, to `tx`.
fn forward(
    stream: impl Read + Send + 'static,
    tag: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    tx: Option<UnboundedSender<String>>,
) {
    std::thread::Builder::new()
        .name(tag.clone())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                {
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() >= TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(format!("[{tag}] {line}"));
                }
                if let Some(tx) = &tx {
                    // The test may have stopped listening: keep draining.
                    let _ = tx.send(line);
                }
            }
        })
        .expect("spawn a pipe reader thread");
}

impl Cluster {
    /// Starts the four services on free ports (new ports if one is taken
    /// between picking and binding) and waits until each is SERVING.
    async fn start(engine: &[&str]) -> Self {
        Self::start_on(engine, None).await
    }

    /// As [`Cluster::start`], every store on the MongoDB server at `mongodb`.
    async fn start_on(engine: &[&str], mongodb: Option<String>) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let mut cluster = Self {
                procs: BTreeMap::new(),
                addrs: free_addrs(),
                engine: engine.iter().map(|s| (*s).to_owned()).collect(),
                tail: Arc::new(Mutex::new(VecDeque::new())),
                dir: tempfile::tempdir().expect("temporary directory"),
                peers: Vec::new(),
                mongodb: mongodb.clone(),
            };
            let mut started = Ok(());
            for svc in Svc::START_ORDER {
                cluster.spawn(svc, None);
                started = cluster.try_ready(svc).await;
                if started.is_err() {
                    break;
                }
            }
            match started {
                Ok(()) => return cluster,
                Err(why) => {
                    eprintln!("mesh did not start ({why}); retrying on other ports");
                    last = why;
                }
            }
        }
        panic!("the mesh did not start in 3 attempts: {last}");
    }

    fn data_dir(&self, svc: Svc) -> PathBuf {
        match svc {
            Svc::Peer(i) => self.dir.path().join(format!("orchestrator-peer-{i}")),
            _ => self.dir.path().join(svc.name()),
        }
    }

    fn addr(&self, svc: Svc) -> SocketAddr {
        svc.addr(&self.addrs, &self.peers)
    }

    /// Starts one more orchestrator on a free port, named `peer-N` as a
    /// lease owner, and waits for SERVING.
    async fn start_peer(&mut self) -> Svc {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        self.peers
            .push(listener.local_addr().expect("bound address"));
        drop(listener);
        let peer = Svc::Peer(self.peers.len() - 1);
        self.start_svc(peer, None).await;
        peer
    }

    /// Clients with the checkout and admin APIs of `orchestrator`.
    fn clients_of(&self, orchestrator: Svc) -> MeshClients {
        let mut clients = self.clients();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(orchestrator)))
                .expect("a valid url")
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
        clients.checkout = CheckoutServiceClient::new(channel.clone());
        clients.admin = SagaAdminServiceClient::new(channel);
        clients
    }

    /// Spawns `svc` (which must not be running), stderr piped to a reader
    /// thread that keeps a tail and forwards each line to the test.
    fn spawn(&mut self, svc: Svc, failpoint: Option<&str>) {
        assert!(!self.procs.contains_key(&svc), "{svc:?} is already running");
        let url = |s: Svc| format!("http://{}", self.addr(s));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg(svc.name())
            .arg("--listen")
            .arg(self.addr(svc).to_string())
            .arg("--data-dir")
            .arg(self.data_dir(svc))
            .arg("--inventory-url")
            .arg(url(Svc::Inventory))
            .arg("--loyalty-url")
            .arg(url(Svc::Loyalty))
            .arg("--order-url")
            .arg(url(Svc::Order))
            .arg("--insecure-no-auth");
        if let Svc::Peer(i) = svc {
            cmd.args(&self.engine)
                .arg("--orchestrator-id")
                .arg(format!("peer-{i}"));
        } else if svc == Svc::Orchestrator {
            cmd.args(&self.engine);
        }
        if let Some(point) = failpoint {
            cmd.arg("--failpoint").arg(point);
        }
        // Only what this test sets: no MICROSHOP_* from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MICROSHOP_") {
                cmd.env_remove(key);
            }
        }
        // On MongoDB (this cluster's, or the script's MongoDB pass, whose
        // MONGODB_URI the children inherit), a database of its own.
        let mongodb = self
            .mongodb
            .clone()
            .or_else(|| std::env::var("MONGODB_URI").ok());
        if let Some(uri) = mongodb {
            cmd.env("MONGODB_URI", uri).env(
                "MICROSHOP_MONGODB_DATABASE",
                microshop_runtime::testing::database_for(self.dir.path()),
            );
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = unbounded_channel();
        let tag = match failpoint {
            Some(point) => format!("{} pid {} fp {point}", svc.name(), child.id()),
            None => format!("{} pid {}", svc.name(), child.id()),
        };
        // The failpoint announcement is on stderr; the tracing logs are on
        // stdout (runtime's fmt layer writes there): keep both for reports.
        forward(
            stderr,
            format!("{tag} stderr"),
            Arc::clone(&self.tail),
            Some(tx),
        );
        forward(
            stdout,
            format!("{tag} stdout"),
            Arc::clone(&self.tail),
            None,
        );
        self.procs.insert(svc, Proc { child, lines });
    }

    /// Polls `svc`'s health until SERVING; an error if it exits first or
    /// is not serving within [`READY_WITHIN`].
    async fn try_ready(&mut self, svc: Svc) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let addr = self.addr(svc);
        loop {
            let proc = self
                .procs
                .get_mut(&svc)
                .ok_or_else(|| format!("{svc:?} is not running"))?;
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Err(format!("{svc:?} at {addr} exited with {status}"));
            }
            if serving_entry(addr, svc.grpc_name()).await {
                // A process that failed to bind exits at once: if it is
                // still up after answering, the answer was its own.
                if let Ok(Some(status)) = self
                    .procs
                    .get_mut(&svc)
                    .map_or(Ok(None), |p| p.child.try_wait())
                {
                    return Err(format!("{svc:?} at {addr} exited with {status}"));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{svc:?} at {addr} not SERVING within {READY_WITHIN:?}"
                ));
            }
            sleep(POLL).await;
        }
    }

    /// SIGKILLs `svc` and reaps it.
    fn kill(&mut self, svc: Svc) {
        let mut proc = self
            .procs
            .remove(&svc)
            .unwrap_or_else(|| panic!("{svc:?} is not running"));
        proc.kill();
    }

    /// Starts `svc` again on its port and data directory; waits for SERVING.
    /// The port was free while `svc` was down, and every test draws its
    /// connections from the same ephemeral range, so another one may hold
    /// it for a moment: a start that could not bind is tried again on the
    /// same port (the others dial `svc` there) for up to [`REBIND_WITHIN`].
    async fn start_svc(&mut self, svc: Svc, failpoint: Option<&str>) {
        let deadline = Instant::now() + REBIND_WITHIN;
        loop {
            self.spawn(svc, failpoint);
            let Err(why) = self.try_ready(svc).await else {
                return;
            };
            let mut proc = self.procs.remove(&svc).expect("just spawned");
            if !(Instant::now() < deadline && could_not_bind(&mut proc).await) {
                panic!("{why}");
            }
            eprintln!(
                "{svc:?} could not bind {} yet; starting it again",
                self.addr(svc)
            );
            sleep(REBIND_PAUSE).await;
        }
    }

    /// SIGKILLs `svc` (if running) and starts it again.
    async fn restart(&mut self, svc: Svc, failpoint: Option<&str>) {
        if self.procs.contains_key(&svc) {
            self.kill(svc);
        }
        self.start_svc(svc, failpoint).await;
    }

    /// Waits for a stderr line of `svc` containing `needle`.
    async fn wait_line(&mut self, svc: Svc, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let proc = self
            .procs
            .get_mut(&svc)
            .unwrap_or_else(|| panic!("{svc:?} is not running"));
        loop {
            match timeout_at(deadline, proc.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("{svc:?} closed its stderr before printing {needle:?}"),
                Err(_) => panic!("{svc:?} did not print {needle:?} within {within:?}"),
            }
        }
    }

    /// Fresh clients (a restarted service gets a fresh connection). They
    /// connect lazily, so a service that is down fails only its own calls.
    fn clients(&self) -> MeshClients {
        let channel = |svc: Svc| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(svc)))
                .expect("a valid url")
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy()
        };
        let orchestrator = channel(Svc::Orchestrator);
        MeshClients {
            checkout: CheckoutServiceClient::new(orchestrator.clone()),
            admin: SagaAdminServiceClient::new(orchestrator),
            inventory: InventoryServiceClient::new(channel(Svc::Inventory)),
            loyalty: LoyaltyServiceClient::new(channel(Svc::Loyalty)),
            order: OrderServiceClient::new(channel(Svc::Order)),
        }
    }
}

// ---------------------------------------------------------------------------
// Requests and reads
// ---------------------------------------------------------------------------

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

fn place(
    key: &str,
    customer: &str,
    sku: &str,
    coupon: &str,
    points: i64,
) -> orch::PlaceOrderRequest {
    orch::PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: vec![orch::LineItem {
            sku: sku.into(),
            quantity: 1,
        }],
        coupon_code: coupon.into(),
        points_to_redeem: points,
        shipping: Some(orch::ShippingAddress {
            name: customer.into(),
            address: "1 Crash Street, Hanoi".into(),
            phone: "+84 900 000 000".into(),
        }),
    }
}

async fn put_product(c: &MeshClients, u: &mut Universe, sku: &str, stock: i64) {
    c.inventory
        .clone()
        .put_product(inv::PutProductRequest {
            sku: sku.into(),
            name: format!("product {sku}"),
            unit_price: PRICE,
            stock,
        })
        .await
        .expect("PutProduct");
    u.skus.insert(sku.into(), stock);
}

async fn put_coupon(c: &MeshClients, u: &mut Universe, code: &str, limit: i64) {
    c.order
        .clone()
        .put_coupon(ord::PutCouponRequest {
            code: code.into(),
            kind: ord::CouponKind::Fixed.into(),
            value: 50_000,
            usage_limit: limit,
        })
        .await
        .expect("PutCoupon");
    u.coupons.insert(code.into());
}

async fn grant(c: &MeshClients, u: &mut Universe, customer: &str) {
    c.loyalty
        .clone()
        .grant_points(loy::GrantPointsRequest {
            customer_id: customer.into(),
            points: GRANT,
        })
        .await
        .expect("GrantPoints");
    u.customers.insert(customer.into());
}

async fn product(c: &MeshClients, sku: &str) -> inv::GetProductResponse {
    c.inventory
        .clone()
        .get_product(inv::GetProductRequest { sku: sku.into() })
        .await
        .expect("GetProduct")
        .into_inner()
}

async fn balance(c: &MeshClients, customer: &str) -> loy::GetBalanceResponse {
    c.loyalty
        .clone()
        .get_balance(loy::GetBalanceRequest {
            customer_id: customer.into(),
        })
        .await
        .expect("GetBalance")
        .into_inner()
}

async fn coupon(c: &MeshClients, code: &str) -> ord::GetCouponResponse {
    c.order
        .clone()
        .get_coupon(ord::GetCouponRequest { code: code.into() })
        .await
        .expect("GetCoupon")
        .into_inner()
}

/// Every order of `customer` (all pages of ListOrders).
async fn orders_of(c: &MeshClients, customer: &str) -> Vec<ord::Order> {
    invariants::all_orders(&mut c.order.clone(), customer)
        .await
        .unwrap_or_else(|e| panic!("ListOrders {customer}: {e}"))
}

async fn order(c: &MeshClients, order_id: &str) -> ord::Order {
    c.order
        .clone()
        .get_order(ord::GetOrderRequest {
            order_id: order_id.into(),
        })
        .await
        .expect("GetOrder")
        .into_inner()
        .order
        .expect("GetOrder returns the order")
}

async fn place_ok(c: &MeshClients, req: orch::PlaceOrderRequest) -> orch::PlaceOrderResponse {
    let key = req.idempotency_key.clone();
    c.checkout
        .clone()
        .place_order(with_deadline(req, Duration::from_secs(20)))
        .await
        .unwrap_or_else(|s| panic!("PlaceOrder {key}: {s:?}"))
        .into_inner()
}

async fn check_invariants(c: &MeshClients, u: &Universe, when: &str) {
    if let Err(v) = invariants::check(c, u).await {
        panic!("after {when}: {v}");
    }
    CHECKS.fetch_add(1, Ordering::SeqCst);
}

/// The saga holding idempotency key `key`, if logged.
async fn saga_by_key(c: &MeshClients, key: &str) -> Option<orch::Saga> {
    let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
    sagas.into_iter().find(|s| s.idempotency_key == key)
}

fn state_name(state: i32) -> &'static str {
    orch::SagaState::try_from(state).map_or("?", |s| s.as_str_name())
}

fn describe(saga: &orch::Saga) -> String {
    let steps: Vec<String> = saga
        .steps
        .iter()
        .map(|s| {
            let run = |r: Option<&orch::StepRun>| {
                r.map_or_else(
                    || "-".to_owned(),
                    |r| {
                        format!(
                            "{}x{} {}",
                            orch::StepStatus::try_from(r.status).map_or("?", |s| s.as_str_name()),
                            r.attempts,
                            r.last_error
                        )
                    },
                )
            };
            format!(
                "{}: {} / comp {}",
                s.name,
                run(s.action.as_ref()),
                run(s.compensation.as_ref())
            )
        })
        .collect();
    format!(
        "saga {} {} key {} reason {:?} steps [{}]",
        saga.saga_id,
        state_name(saga.state),
        saga.idempotency_key,
        saga.failure_reason,
        steps.join("; ")
    )
}

/// Polls GetSaga until the saga is COMPLETED or COMPENSATED; panics if it
/// goes FAILED or does not end within [`SETTLE_WITHIN`].
async fn wait_settled(c: &MeshClients, saga_id: &str) -> orch::Saga {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = None;
    loop {
        let got = c
            .admin
            .clone()
            .get_saga(orch::GetSagaRequest {
                saga_id: saga_id.into(),
            })
            .await;
        if let Ok(resp) = got {
            let saga = resp.into_inner().saga.expect("GetSaga returns the saga");
            match orch::SagaState::try_from(saga.state) {
                Ok(orch::SagaState::Completed | orch::SagaState::Compensated) => return saga,
                Ok(orch::SagaState::Failed) => {
                    panic!("the saga went FAILED after recovery: {}", describe(&saga))
                }
                _ => last = Some(saga),
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "saga {saga_id} did not end within {SETTLE_WITHIN:?}: {}",
                last.as_ref().map_or_else(|| "never read".into(), describe)
            );
        }
        sleep(POLL).await;
    }
}

/// Polls until the saga under `key` exists and `step`'s action (or its
/// compensation) has been attempted at least `n` times.
async fn wait_attempts(c: &MeshClients, key: &str, step: &str, compensation: bool, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    loop {
        if let Ok(sagas) = all_sagas(&mut c.admin.clone()).await
            && let Some(saga) = sagas.into_iter().find(|s| s.idempotency_key == key)
        {
            let run = saga.steps.iter().find(|s| s.name == step).and_then(|s| {
                if compensation {
                    s.compensation.as_ref()
                } else {
                    s.action.as_ref()
                }
            });
            if run.is_some_and(|r| r.attempts >= n) {
                return;
            }
            last = Some(saga);
        }
        if Instant::now() >= deadline {
            panic!(
                "{step} (compensation: {compensation}) of {key} not attempted {n} times: {}",
                last.as_ref().map_or_else(|| "no saga".into(), describe)
            );
        }
        sleep(POLL).await;
    }
}

fn action<'a>(saga: &'a orch::Saga, step: &str) -> &'a orch::StepRun {
    saga.steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.action.as_ref())
        .unwrap_or_else(|| panic!("no step {step}: {}", describe(saga)))
}

fn compensation<'a>(saga: &'a orch::Saga, step: &str) -> Option<&'a orch::StepRun> {
    saga.steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.compensation.as_ref())
}

/// A call that runs a saga.
#[derive(Clone, Debug)]
enum Call {
    Place(orch::PlaceOrderRequest),
    Confirm { order_id: String },
    Cancel { order_id: String },
}

impl Call {
    /// The idempotency key of its saga.
    fn key(&self) -> String {
        match self {
            Self::Place(r) => r.idempotency_key.clone(),
            Self::Confirm { order_id } => format!("confirm:{order_id}"),
            Self::Cancel { order_id } => format!("cancel:{order_id}"),
        }
    }

    /// Sends it once (deadline 20 s); the error, if any.
    async fn send(self, c: MeshClients) -> Result<(), Status> {
        let deadline = Duration::from_secs(20);
        match self {
            Self::Place(r) => c
                .checkout
                .clone()
                .place_order(with_deadline(r, deadline))
                .await
                .map(drop),
            Self::Confirm { order_id } => c
                .checkout
                .clone()
                .confirm_payment(with_deadline(
                    orch::ConfirmPaymentRequest {
                        order_id,
                        payment_ref: "crash-pay".into(),
                    },
                    deadline,
                ))
                .await
                .map(drop),
            Self::Cancel { order_id } => c
                .checkout
                .clone()
                .cancel_order(with_deadline(
                    orch::CancelOrderRequest {
                        order_id,
                        reason: "crash test".into(),
                    },
                    deadline,
                ))
                .await
                .map(drop),
        }
    }

    fn spawn(self, c: MeshClients) -> JoinHandle<Result<(), Status>> {
        tokio::spawn(self.send(c))
    }
}

/// Restarts the orchestrator with `--failpoint point`, sends `call`, waits
/// for the failpoint, SIGKILLs the orchestrator, restarts it without the
/// failpoint (same port and data) and waits for the saga to end. Returns
/// the ended saga and clients connected to the new orchestrator.
async fn crash_at(cluster: &mut Cluster, point: &str, call: Call) -> (orch::Saga, MeshClients) {
    cluster.restart(Svc::Orchestrator, Some(point)).await;
    let key = call.key();
    let pending = call.spawn(cluster.clients());
    cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {point} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    cluster.kill(Svc::Orchestrator);
    expect_cut_off(pending, &key, point).await;
    cluster.start_svc(Svc::Orchestrator, None).await;
    let c = cluster.clients();
    let saga = saga_by_key(&c, &key)
        .await
        .unwrap_or_else(|| panic!("{key}: no saga logged before the crash at {point}"));
    let saga = wait_settled(&c, &saga.saga_id).await;
    (saga, c)
}

/// The call `pending` (key `key`) was held at failpoint `point` when the
/// orchestrator was SIGKILLed: it must end with the transport's error (the
/// connection died under it), never with an answer of the server's (those
/// carry an ErrorInfo reason).
async fn expect_cut_off(pending: JoinHandle<Result<(), Status>>, key: &str, point: &str) {
    match timeout(Duration::from_secs(10), pending).await {
        Ok(Ok(Ok(()))) => panic!("{key}: the call succeeded although the saga was held at {point}"),
        Ok(Ok(Err(status))) => assert!(
            reason_of(&status).is_none() && status.code() != Code::DeadlineExceeded,
            "{key}: killed at {point}, the call ended {:?} ({:?}) instead of losing its \
             connection: {}",
            status.code(),
            reason_of(&status),
            status.message()
        ),
        Ok(Err(e)) => panic!("{key}: the call task failed: {e}"),
        Err(_) => panic!("{key}: the call did not end after the orchestrator was killed"),
    }
}

const PLACE_STEPS: [&str; 4] = ["quote", "reserve-stock", "deduct-points", "create-order"];
const PHASES: [&str; 3] = ["intent", "rpc", "result"];
/// The calls of a checkout whose create-order is rejected, in order.
const COMPENSATION_CALLS: [&str; 4] = [
    "create-order",
    "cancel-order",
    "refund-points",
    "release-stock",
];

/// Attempts the crashed operation must show: an intent or rpc crash lost
/// the result, so the operation ran once more; a result crash did not.
fn attempts_after(phase: &str) -> u32 {
    if phase == "result" { 1 } else { 2 }
}

/// Attempts operation `op` must show after a crash at `phase:crashed`, the
/// saga's calls being `calls` in order. Besides the crashed operation
/// itself, a result is saved in one write with the next call's intent, so
/// a crash right after it replays that next call: a second attempt.
fn attempts_of(op: &str, crashed: &str, phase: &str, calls: &[&str]) -> u32 {
    if op == crashed {
        attempts_after(phase)
    } else if phase == "result" && calls.windows(2).any(|w| w == [crashed, op]) {
        2
    } else {
        1
    }
}

// ---------------------------------------------------------------------------
// 1. Orchestrator crash matrix over the checkout saga
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrator_crash_matrix() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("orchestrator_crash_matrix");
    let mut cluster = Cluster::start(MATRIX_ENGINE).await;
    let mut c = cluster.clients();
    let mut u = Universe::default();
    let sku = "CRASH-WIDGET";
    let code = "CRASH-LASTONE";
    put_product(&c, &mut u, sku, 1_000).await;
    put_coupon(&c, &mut u, code, 1).await;
    // The coupon's only use goes to this order, so any later create-order
    // with it is rejected (COUPON_EXHAUSTED) and the saga compensates.
    u.customers.insert("crash-seed".into());
    place_ok(&c, place("crash-seed", "crash-seed", sku, code, 0)).await;
    assert_eq!(coupon(&c, code).await.times_used, 1);

    // Forward path: crash at every boundary of every step; the saga resumes
    // where it stopped and completes, each effect applied once.
    for step in PLACE_STEPS {
        for phase in PHASES {
            let point = format!("{phase}:{step}");
            let who = format!("fwd-{phase}-{step}");
            grant(&c, &mut u, &who).await;
            let stock_before = product(&c, sku).await;
            let req = place(&who, &who, sku, "", REDEEM);
            let (saga, c2) = crash_at(&mut cluster, &point, Call::Place(req.clone())).await;
            c = c2;
            assert_eq!(
                saga.state,
                orch::SagaState::Completed as i32,
                "{point}: {}",
                describe(&saga)
            );
            assert!(!saga.order_id.is_empty(), "{point}: no order id");
            // Resumed where it stopped: earlier steps were not run again.
            for s in PLACE_STEPS {
                let run = action(&saga, s);
                assert_eq!(
                    run.status,
                    orch::StepStatus::Succeeded as i32,
                    "{point}: {}",
                    describe(&saga)
                );
                let want = attempts_of(s, step, phase, &PLACE_STEPS);
                assert_eq!(run.attempts, want, "{point}: {s}: {}", describe(&saga));
                assert!(
                    compensation(&saga, s).is_none(),
                    "{point}: {s} compensated: {}",
                    describe(&saga)
                );
            }
            // A retry with the same key answers the same order, twice.
            for _ in 0..2 {
                let again = place_ok(&c, req.clone()).await;
                assert_eq!(again.saga_id, saga.saga_id, "{point}");
                assert_eq!(again.order_id, saga.order_id, "{point}");
                assert_eq!(again.state, orch::SagaState::Completed as i32, "{point}");
                let o = again.order.expect("PlaceOrder returns the order");
                assert_eq!(o.redeemed_points, REDEEM, "{point}");
            }
            // Effects exactly once.
            let orders = orders_of(&c, &who).await;
            assert_eq!(orders.len(), 1, "{point}: orders {orders:?}");
            assert_eq!(orders[0].order_id, saga.order_id, "{point}");
            let b = balance(&c, &who).await;
            assert_eq!(
                (b.points, b.deducted, b.refunded),
                (GRANT - REDEEM, REDEEM, 0),
                "{point}: {b:?}"
            );
            let p = product(&c, sku).await;
            assert_eq!(p.reserved, stock_before.reserved + 1, "{point}: {p:?}");
            assert_eq!(p.available, stock_before.available - 1, "{point}: {p:?}");
            tally.check(&c, &u, &point).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("forward {point}: ok at {:?}", started.elapsed());
        }
    }

    // Compensation path: create-order is rejected (coupon exhausted), so
    // cancel-order, refund-points and release-stock run; crash at every
    // boundary of the rejected step and of each compensation. The saga must
    // end COMPENSATED with nothing held.
    for comp in COMPENSATION_CALLS {
        for phase in PHASES {
            let point = format!("{phase}:{comp}");
            let who = format!("comp-{phase}-{comp}");
            grant(&c, &mut u, &who).await;
            let stock_before = product(&c, sku).await;
            let req = place(&who, &who, sku, code, REDEEM);
            let (saga, c2) = crash_at(&mut cluster, &point, Call::Place(req.clone())).await;
            c = c2;
            assert_eq!(
                saga.state,
                orch::SagaState::Compensated as i32,
                "{point}: {}",
                describe(&saga)
            );
            assert_eq!(
                saga.error.as_ref().map(|e| e.reason.as_str()),
                Some("COUPON_EXHAUSTED"),
                "{point}: {}",
                describe(&saga)
            );
            for (step, undo) in [
                ("reserve-stock", "release-stock"),
                ("deduct-points", "refund-points"),
                ("create-order", "cancel-order"),
            ] {
                let run = compensation(&saga, step)
                    .unwrap_or_else(|| panic!("{point}: {undo} never ran: {}", describe(&saga)));
                assert_eq!(
                    run.status,
                    orch::StepStatus::Succeeded as i32,
                    "{point}: {}",
                    describe(&saga)
                );
                let want = attempts_of(undo, comp, phase, &COMPENSATION_CALLS);
                assert_eq!(run.attempts, want, "{point}: {undo}: {}", describe(&saga));
            }
            let rejected = action(&saga, "create-order");
            assert_eq!(
                rejected.status,
                orch::StepStatus::Failed as i32,
                "{point}: {}",
                describe(&saga)
            );
            let want = attempts_of("create-order", comp, phase, &COMPENSATION_CALLS);
            assert_eq!(rejected.attempts, want, "{point}: {}", describe(&saga));
            // A retry answers the same rejection, every time.
            let mut seen = Vec::new();
            for _ in 0..2 {
                let err = c
                    .checkout
                    .clone()
                    .place_order(with_deadline(req.clone(), Duration::from_secs(20)))
                    .await
                    .expect_err("a compensated checkout answers its rejection");
                assert_eq!(err.code(), Code::FailedPrecondition, "{point}: {err:?}");
                assert_eq!(reason_of(&err), Some(Reason::CouponExhausted), "{point}");
                seen.push((err.code(), err.message().to_owned()));
            }
            assert_eq!(seen[0], seen[1], "{point}: retries answered differently");
            // Nothing held: stock, points and the coupon are as before.
            assert!(
                orders_of(&c, &who).await.is_empty(),
                "{point}: an order exists"
            );
            let b = balance(&c, &who).await;
            assert_eq!(
                (b.points, b.deducted, b.refunded),
                (GRANT, REDEEM, REDEEM),
                "{point}: {b:?}"
            );
            let p = product(&c, sku).await;
            assert_eq!(
                (p.available, p.reserved, p.sold),
                (
                    stock_before.available,
                    stock_before.reserved,
                    stock_before.sold
                ),
                "{point}: {p:?}"
            );
            assert_eq!(coupon(&c, code).await.times_used, 1, "{point}");
            tally.check(&c, &u, &point).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("compensation {point}: ok at {:?}", started.elapsed());
        }
    }
    eprintln!(
        "orchestrator crash matrix: 24 crashes in {:?}",
        started.elapsed()
    );
    tally.report();
}

// ---------------------------------------------------------------------------
// 2. The matrix over every saga type: a crashed orchestrator or participant
// ---------------------------------------------------------------------------

/// Crash points survived, by the process SIGKILLed at the point (indexed
/// like [`svc_index`]), and invariant checks passed, over every test of
/// this binary.
static SURVIVED: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
static CHECKS: AtomicUsize = AtomicUsize::new(0);

fn svc_index(svc: Svc) -> usize {
    match svc {
        Svc::Orchestrator | Svc::Peer(_) => 0,
        Svc::Inventory => 1,
        Svc::Loyalty => 2,
        Svc::Order => 3,
    }
}

/// One matrix test's count of crash points survived and checks passed.
struct Tally {
    test: &'static str,
    survived: [usize; 4],
    checks: usize,
}

impl Tally {
    fn new(test: &'static str) -> Self {
        Self {
            test,
            survived: [0; 4],
            checks: 0,
        }
    }

    /// A crash point where `svc` was SIGKILLed ended with its invariants.
    fn survived(&mut self, svc: Svc) {
        self.survived[svc_index(svc)] += 1;
        SURVIVED[svc_index(svc)].fetch_add(1, Ordering::SeqCst);
    }

    /// Checks the invariants and counts the check.
    async fn check(&mut self, c: &MeshClients, u: &Universe, when: &str) {
        check_invariants(c, u, when).await;
        self.checks += 1;
    }

    /// Prints this test's counts and the running totals of the binary.
    /// Straight to the stderr handle, which the test harness does not
    /// capture, so the summary shows in a plain `cargo test`.
    fn report(&self) {
        let line = |n: [usize; 4], checks: usize| {
            format!(
                "{} crash points survived (orchestrator: {}, inventory: {}, loyalty: {}, order: {}), \
                 invariant checks: {checks}, violations: 0",
                n.iter().sum::<usize>(),
                n[0],
                n[1],
                n[2],
                n[3]
            )
        };
        let total = std::array::from_fn(|i| SURVIVED[i].load(Ordering::SeqCst));
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}: {}", self.test, line(self.survived, self.checks));
        let _ = writeln!(
            err,
            "crash matrix: {}",
            line(total, CHECKS.load(Ordering::SeqCst))
        );
    }
}

/// A saga operation as the failpoints name it: a step's action, or the
/// compensation `name` of step `step`.
#[derive(Clone, Copy, Debug)]
struct Op {
    name: &'static str,
    step: &'static str,
    compensation: bool,
}

const fn act(name: &'static str) -> Op {
    Op {
        name,
        step: name,
        compensation: false,
    }
}

const fn undo(name: &'static str, step: &'static str) -> Op {
    Op {
        name,
        step,
        compensation: true,
    }
}

const PLACE_OPS: &[Op] = &[
    act("quote"),
    act("reserve-stock"),
    act("deduct-points"),
    act("create-order"),
];
/// A checkout whose create-order is rejected (coupon exhausted), then
/// compensated in reverse.
const REJECTED_OPS: &[Op] = &[
    act("quote"),
    act("reserve-stock"),
    act("deduct-points"),
    act("create-order"),
    undo("cancel-order", "create-order"),
    undo("refund-points", "deduct-points"),
    undo("release-stock", "reserve-stock"),
];
const CONFIRM_OPS: &[Op] = &[
    act("load-order"),
    act("mark-paid"),
    act("commit-stock"),
    act("earn-points"),
];
const CANCEL_OPS: &[Op] = &[
    act("load-order"),
    act("cancel-order"),
    act("release-stock"),
    act("refund-points"),
];

/// The participants an operation calls, in call order (quote reads the
/// catalog on inventory-svc, then prices on order-svc).
fn targets(op: &str) -> &'static [Svc] {
    match op {
        "quote" => &[Svc::Inventory, Svc::Order],
        "reserve-stock" | "release-stock" | "commit-stock" => &[Svc::Inventory],
        "deduct-points" | "refund-points" | "earn-points" => &[Svc::Loyalty],
        "create-order" | "cancel-order" | "load-order" | "mark-paid" => &[Svc::Order],
        other => panic!("no operation {other}"),
    }
}

/// A saga type under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A checkout that completes.
    Place,
    /// A checkout rejected at create-order and compensated.
    Rejected,
    /// ConfirmPayment of an unpaid order.
    Confirm,
    /// CancelOrder of an unpaid order.
    Cancel,
    /// The payment expiry of an unpaid order (a cancel saga keyed
    /// `expire:ORDER`), started by the orchestrator itself.
    Expire,
}

impl Kind {
    fn ops(self) -> &'static [Op] {
        match self {
            Self::Place => PLACE_OPS,
            Self::Rejected => REJECTED_OPS,
            Self::Confirm => CONFIRM_OPS,
            Self::Cancel | Self::Expire => CANCEL_OPS,
        }
    }

    /// The operations whose boundaries this kind crashes at (a rejected
    /// checkout's forward steps are a completing checkout's).
    fn crashed_ops(self) -> std::ops::Range<usize> {
        match self {
            Self::Rejected => 3..REJECTED_OPS.len(),
            _ => 0..self.ops().len(),
        }
    }

    fn ends(self) -> orch::SagaState {
        match self {
            Self::Rejected => orch::SagaState::Compensated,
            _ => orch::SagaState::Completed,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Place => "place",
            Self::Rejected => "rejected",
            Self::Confirm => "confirm",
            Self::Cancel => "cancel",
            Self::Expire => "expire",
        }
    }
}

/// What one matrix test works over: a SKU, a coupon with uses to spare
/// and (unless payments expire) a coupon whose only use is spent.
struct Fixture {
    sku: String,
    open: String,
    spent: String,
}

async fn fixture(c: &MeshClients, u: &mut Universe, tag: &str, spent: bool) -> Fixture {
    let fx = Fixture {
        sku: format!("{tag}-SKU"),
        open: format!("{tag}-OPEN"),
        spent: format!("{tag}-SPENT"),
    };
    put_product(c, u, &fx.sku, 100_000).await;
    put_coupon(c, u, &fx.open, 100_000).await;
    if spent {
        put_coupon(c, u, &fx.spent, 1).await;
        let seed = format!("{tag}-seed");
        u.customers.insert(seed.clone());
        place_ok(c, place(&seed, &seed, &fx.sku, &fx.spent, 0)).await;
        assert_eq!(coupon(c, &fx.spent).await.times_used, 1);
    }
    fx
}

/// One saga to crash, and the state it starts from.
struct Subject {
    kind: Kind,
    who: String,
    /// The checkout (the call of Place and Rejected; placed beforehand for
    /// Confirm and Cancel; placed under the crashing orchestrator for
    /// Expire).
    req: orch::PlaceOrderRequest,
    /// The order acted on (for Expire, known once placed).
    order_id: String,
    /// The call that runs the saga (none for Expire).
    call: Option<Call>,
    /// The coupon the order uses, if any.
    code: String,
    product: inv::GetProductResponse,
    balance: loy::GetBalanceResponse,
    uses: i64,
}

impl Subject {
    async fn new(kind: Kind, c: &MeshClients, u: &mut Universe, fx: &Fixture, who: &str) -> Self {
        grant(c, u, who).await;
        let code = match kind {
            Kind::Place => "",
            Kind::Rejected => &fx.spent,
            Kind::Confirm | Kind::Cancel | Kind::Expire => &fx.open,
        };
        let req = place(who, who, &fx.sku, code, REDEEM);
        let (order_id, call) = match kind {
            Kind::Place | Kind::Rejected => (String::new(), Some(Call::Place(req.clone()))),
            Kind::Confirm | Kind::Cancel => {
                let order_id = place_ok(c, req.clone()).await.order_id;
                let call = if kind == Kind::Confirm {
                    Call::Confirm {
                        order_id: order_id.clone(),
                    }
                } else {
                    Call::Cancel {
                        order_id: order_id.clone(),
                    }
                };
                (order_id, Some(call))
            }
            Kind::Expire => (String::new(), None),
        };
        let uses = if code.is_empty() {
            0
        } else {
            coupon(c, code).await.times_used
        };
        Self {
            kind,
            who: who.to_owned(),
            req,
            order_id,
            call,
            code: code.to_owned(),
            product: product(c, &fx.sku).await,
            balance: balance(c, who).await,
            uses,
        }
    }

    fn key(&self) -> String {
        match &self.call {
            Some(call) => call.key(),
            None => format!("expire:{}", self.order_id),
        }
    }

    /// After the saga ended: the same call answers the same outcome, and
    /// every effect was applied exactly once (or, compensated, not at all).
    async fn verify(&self, saga: &orch::Saga, c: &MeshClients, what: &str) {
        assert_eq!(
            saga.state,
            self.kind.ends() as i32,
            "{what}: {}",
            describe(saga)
        );
        let sku = &self.product.sku;
        let p = product(c, sku).await;
        let b = balance(c, &self.who).await;
        let b0 = &self.balance;
        let p0 = &self.product;
        let stock = (p.available, p.reserved, p.sold);
        match self.kind {
            Kind::Place => {
                for _ in 0..2 {
                    let again = place_ok(c, self.req.clone()).await;
                    assert_eq!(again.saga_id, saga.saga_id, "{what}");
                    assert_eq!(again.order_id, saga.order_id, "{what}");
                    assert_eq!(again.state, orch::SagaState::Completed as i32, "{what}");
                }
                let orders = orders_of(c, &self.who).await;
                assert_eq!(orders.len(), 1, "{what}: orders {orders:?}");
                assert_eq!(orders[0].order_id, saga.order_id, "{what}");
                assert_eq!(
                    (b.points, b.deducted, b.refunded),
                    (GRANT - REDEEM, REDEEM, 0),
                    "{what}: {b:?}"
                );
                assert_eq!(
                    stock,
                    (p0.available - 1, p0.reserved + 1, p0.sold),
                    "{what}: {p:?}"
                );
            }
            Kind::Rejected => {
                let mut seen = Vec::new();
                for _ in 0..2 {
                    let err = c
                        .checkout
                        .clone()
                        .place_order(with_deadline(self.req.clone(), Duration::from_secs(20)))
                        .await
                        .expect_err("a compensated checkout answers its rejection");
                    assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
                    assert_eq!(reason_of(&err), Some(Reason::CouponExhausted), "{what}");
                    seen.push((err.code(), err.message().to_owned()));
                }
                assert_eq!(seen[0], seen[1], "{what}: retries answered differently");
                assert!(
                    orders_of(c, &self.who).await.is_empty(),
                    "{what}: an order exists"
                );
                assert_eq!(
                    (b.points, b.deducted, b.refunded),
                    (GRANT, REDEEM, REDEEM),
                    "{what}: {b:?}"
                );
                assert_eq!(stock, (p0.available, p0.reserved, p0.sold), "{what}: {p:?}");
            }
            Kind::Confirm => {
                self.retry_call(c, what).await;
                let o = order(c, &self.order_id).await;
                assert_eq!(o.status, ord::OrderStatus::Paid as i32, "{what}: {o:?}");
                assert_eq!(
                    stock,
                    (p0.available, p0.reserved - 1, p0.sold + 1),
                    "{what}: {p:?}"
                );
                let earned = o.total_price / 100_000;
                assert_eq!(
                    (b.points, b.earned, b.deducted, b.refunded),
                    (b0.points + earned, b0.earned + earned, REDEEM, 0),
                    "{what}: {b:?}"
                );
            }
            Kind::Cancel | Kind::Expire => {
                if self.kind == Kind::Cancel {
                    self.retry_call(c, what).await;
                }
                let o = order(c, &self.order_id).await;
                assert_eq!(
                    o.status,
                    ord::OrderStatus::Cancelled as i32,
                    "{what}: {o:?}"
                );
                // An expiry's "before" is read before the order was placed.
                let want = if self.kind == Kind::Cancel {
                    (p0.available + 1, p0.reserved - 1, p0.sold)
                } else {
                    (p0.available, p0.reserved, p0.sold)
                };
                assert_eq!(stock, want, "{what}: {p:?}");
                assert_eq!(
                    (b.points, b.deducted, b.refunded, b.earned),
                    (GRANT, REDEEM, REDEEM, 0),
                    "{what}: {b:?}"
                );
            }
        }
        // The coupon: a cancelled order gave its use back once (an expiry's
        // count was read before the order took it); a paid order keeps it;
        // a rejected checkout never took one.
        if !self.code.is_empty() {
            let want = match self.kind {
                Kind::Cancel => self.uses - 1,
                Kind::Place | Kind::Rejected | Kind::Confirm | Kind::Expire => self.uses,
            };
            assert_eq!(
                coupon(c, &self.code).await.times_used,
                want,
                "{what}: coupon {}",
                self.code
            );
        }
        // One saga per key, and no other payment or cancellation of the order.
        if !self.order_id.is_empty() {
            let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
            let on_order: Vec<&str> = sagas
                .iter()
                .filter(|s| s.order_id == self.order_id && s.idempotency_key != self.who)
                .map(|s| s.idempotency_key.as_str())
                .collect();
            assert_eq!(
                on_order,
                [self.key().as_str()],
                "{what}: sagas of the order"
            );
        }
    }

    async fn retry_call(&self, c: &MeshClients, what: &str) {
        let call = self.call.clone().expect("a call");
        for _ in 0..2 {
            call.clone()
                .send(c.clone())
                .await
                .unwrap_or_else(|s| panic!("{what}: retry: {s:?}"));
        }
    }
}

fn op_run(saga: &orch::Saga, op: Op) -> &orch::StepRun {
    if op.compensation {
        compensation(saga, op.step)
            .unwrap_or_else(|| panic!("{} never ran: {}", op.name, describe(saga)))
    } else {
        action(saga, op.step)
    }
}

/// Every operation ran to its end state, the crashed one (`index`)
/// `attempts_after(phase)` times, the one after it as `attempts_of` says,
/// every other once.
fn assert_resumed(kind: Kind, saga: &orch::Saga, index: usize, phase: &str, what: &str) {
    let calls: Vec<&str> = kind.ops().iter().map(|op| op.name).collect();
    for op in kind.ops() {
        let run = op_run(saga, *op);
        let rejected = kind == Kind::Rejected && op.name == "create-order";
        let status = if rejected {
            orch::StepStatus::Failed
        } else {
            orch::StepStatus::Succeeded
        };
        assert_eq!(run.status, status as i32, "{what}: {}", describe(saga));
        let want = attempts_of(op.name, calls[index], phase, &calls);
        assert_eq!(
            run.attempts,
            want,
            "{what}: {}: {}",
            op.name,
            describe(saga)
        );
    }
    if kind != Kind::Rejected {
        assert!(
            saga.steps.iter().all(|s| s.compensation.is_none()),
            "{what}: compensated: {}",
            describe(saga)
        );
    }
}

/// Parks the saga of `s` at failpoint `point` (restarting the orchestrator
/// with it and sending the call, or for an expiry placing the order and
/// letting it expire), SIGKILLs `down` (a participant, or none but the
/// orchestrator) and the orchestrator, restarts the orchestrator without
/// the failpoint. A killed participant is restarted on its port and data
/// once `wait` (an operation and its attempt count) was reached, or once
/// the saga ended when the saga needs it no more. Returns the ended saga.
async fn crash_case(
    cluster: &mut Cluster,
    s: &mut Subject,
    point: &str,
    down: Svc,
    wait: Option<(Op, u32)>,
) -> (orch::Saga, MeshClients) {
    cluster.restart(Svc::Orchestrator, Some(point)).await;
    let pending = match &s.call {
        Some(call) => Some(call.clone().spawn(cluster.clients())),
        None => {
            // Placing passes none of the cancel saga's points.
            s.order_id = place_ok(&cluster.clients(), s.req.clone()).await.order_id;
            None
        }
    };
    let key = s.key();
    cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {point} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    if down != Svc::Orchestrator {
        cluster.kill(down);
    }
    cluster.kill(Svc::Orchestrator);
    if let Some(pending) = pending {
        match timeout(Duration::from_secs(10), pending).await {
            Ok(Ok(Ok(()))) => {
                panic!("{key}: the call succeeded although the saga was held at {point}")
            }
            Ok(Ok(Err(_))) => {}
            Ok(Err(e)) => panic!("{key}: the call task failed: {e}"),
            Err(_) => panic!("{key}: the call did not end after the orchestrator was killed"),
        }
    }
    cluster.start_svc(Svc::Orchestrator, None).await;
    let c = cluster.clients();
    let saga = saga_by_key(&c, &key)
        .await
        .unwrap_or_else(|| panic!("{key}: no saga logged before the crash at {point}"));
    if down != Svc::Orchestrator {
        match wait {
            Some((op, n)) => wait_attempts(&c, &key, op.step, op.compensation, n).await,
            None => drop(wait_settled(&c, &saga.saga_id).await),
        }
        cluster.start_svc(down, None).await;
    }
    let c = cluster.clients();
    let saga = wait_settled(&c, &saga.saga_id).await;
    (saga, c)
}

/// Runs the orchestrator crash matrix of `kind`: every boundary of every
/// operation, one fresh customer each.
async fn orchestrator_cases(
    cluster: &mut Cluster,
    u: &mut Universe,
    fx: &Fixture,
    kind: Kind,
    tally: &mut Tally,
) {
    let started = std::time::Instant::now();
    for i in kind.crashed_ops() {
        let op = kind.ops()[i];
        for phase in PHASES {
            let point = format!("{phase}:{}", op.name);
            let what = format!("{} orchestrator killed at {point}", kind.tag());
            let who = format!("o-{}-{phase}-{}", kind.tag(), op.name);
            let c = cluster.clients();
            let mut s = Subject::new(kind, &c, u, fx, &who).await;
            let (saga, c) = crash_case(cluster, &mut s, &point, Svc::Orchestrator, None).await;
            assert_resumed(kind, &saga, i, phase, &what);
            s.verify(&saga, &c, &what).await;
            tally.check(&c, u, &what).await;
            tally.survived(Svc::Orchestrator);
            eprintln!("{what}: ok at {:?}", started.elapsed());
        }
    }
}

/// Runs the participant crash matrix of `kind`: at every boundary of every
/// operation, the participant the next call goes to (at `rpc:`, the one
/// that just answered) is SIGKILLed with the orchestrator, and comes back
/// only after the resumed saga retried against it.
async fn participant_cases(
    cluster: &mut Cluster,
    u: &mut Universe,
    fx: &Fixture,
    kind: Kind,
    tally: &mut Tally,
) {
    let started = std::time::Instant::now();
    let ops = kind.ops();
    for i in kind.crashed_ops() {
        let op = ops[i];
        for phase in PHASES {
            // (who is killed, which operation then retries against it and
            // to how many attempts; its index)
            let (downs, wait): (&[Svc], Option<(Op, u32, usize)>) = match (phase, ops.get(i + 1)) {
                ("result", Some(next)) => (targets(next.name), Some((*next, 2, i + 1))),
                // Nothing calls out after the last result: kill the one
                // that answered last; the saga ends without it.
                ("result", None) => (&targets(op.name)[targets(op.name).len() - 1..], None),
                _ => (targets(op.name), Some((op, 3, i))),
            };
            for &down in downs {
                let point = format!("{phase}:{}", op.name);
                let what = format!("{} {} killed at {point}", kind.tag(), down.name());
                let who = format!("p-{}-{phase}-{}-{}", kind.tag(), op.name, down.name());
                let c = cluster.clients();
                let mut s = Subject::new(kind, &c, u, fx, &who).await;
                let (saga, c) = crash_case(
                    cluster,
                    &mut s,
                    &point,
                    down,
                    wait.map(|(op, n, _)| (op, n)),
                )
                .await;
                // Resumed where it stopped; the operation that met the dead
                // participant retried until it was back.
                let retried = wait.map(|(_, n, j)| (j, n));
                for (j, o) in ops.iter().enumerate() {
                    let run = op_run(&saga, *o);
                    let done_before = if phase == "result" { j <= i } else { j < i };
                    if done_before {
                        assert_eq!(run.attempts, 1, "{what}: {}: {}", o.name, describe(&saga));
                    }
                    if let Some((r, n)) = retried
                        && r == j
                    {
                        assert!(run.attempts >= n, "{what}: {}: {}", o.name, describe(&saga));
                        // It met the dead participant (the error stays).
                        assert!(
                            !run.last_error.is_empty(),
                            "{what}: {} never failed: {}",
                            o.name,
                            describe(&saga)
                        );
                    }
                }
                s.verify(&saga, &c, &what).await;
                tally.check(&c, u, &what).await;
                tally.survived(down);
                eprintln!("{what}: ok at {:?}", started.elapsed());
            }
        }
    }
}

/// Engine flags of the expiry tests: orders go unpaid for 1 s, checked
/// every 100 ms.
const EXPIRY_FLAGS: &[&str] = &["--payment-ttl-secs", "1", "--expiry-interval-ms", "100"];

fn with_expiry(engine: &[&'static str]) -> Vec<&'static str> {
    engine.iter().chain(EXPIRY_FLAGS).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_and_cancel_resume_after_crash() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("confirm_and_cancel_resume_after_crash");
    let mut cluster = Cluster::start(MATRIX_ENGINE).await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-OCC", false).await;
    for kind in [Kind::Confirm, Kind::Cancel] {
        orchestrator_cases(&mut cluster, &mut u, &fx, kind, &mut tally).await;
    }
    eprintln!("confirm and cancel crashes in {:?}", started.elapsed());
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_resumes_after_crash() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("expiry_resumes_after_crash");
    let mut cluster = Cluster::start(&with_expiry(MATRIX_ENGINE)).await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-OEX", false).await;
    orchestrator_cases(&mut cluster, &mut u, &fx, Kind::Expire, &mut tally).await;
    eprintln!("expiry crashes in {:?}", started.elapsed());
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_crash_matrix_checkout() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("participant_crash_matrix_checkout");
    let mut cluster = Cluster::start(OUTAGE_ENGINE).await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-PCK", true).await;
    for kind in [Kind::Place, Kind::Rejected] {
        participant_cases(&mut cluster, &mut u, &fx, kind, &mut tally).await;
    }
    eprintln!("checkout participant crashes in {:?}", started.elapsed());
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_crash_matrix_confirm_cancel() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("participant_crash_matrix_confirm_cancel");
    let mut cluster = Cluster::start(OUTAGE_ENGINE).await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-PCC", false).await;
    for kind in [Kind::Confirm, Kind::Cancel] {
        participant_cases(&mut cluster, &mut u, &fx, kind, &mut tally).await;
    }
    eprintln!(
        "confirm/cancel participant crashes in {:?}",
        started.elapsed()
    );
    tally.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_crash_matrix_expiry() {
    let started = std::time::Instant::now();
    let mut tally = Tally::new("participant_crash_matrix_expiry");
    let mut cluster = Cluster::start(&with_expiry(OUTAGE_ENGINE)).await;
    let mut u = Universe::default();
    let fx = fixture(&cluster.clients(), &mut u, "CRASH-PEX", false).await;
    participant_cases(&mut cluster, &mut u, &fx, Kind::Expire, &mut tally).await;
    eprintln!("expiry participant crashes in {:?}", started.elapsed());
    tally.report();
}

// ---------------------------------------------------------------------------
// 3. A participant SIGKILLed mid-saga
// ---------------------------------------------------------------------------

/// SIGKILLs `down`, sends PlaceOrder, waits until `step` has been tried at
/// least twice against the dead participant, restarts it on its port and
/// data: the PlaceOrder (still waiting) must succeed.
async fn outage_before_call(
    cluster: &mut Cluster,
    u: &mut Universe,
    c: &MeshClients,
    down: Svc,
    step: &str,
    sku: &str,
) {
    let who = format!("outage-{}", down.name());
    grant(c, u, &who).await;
    let before = product(c, sku).await;
    cluster.kill(down);
    let req = place(&who, &who, sku, "", REDEEM);
    let pending = Call::Place(req.clone()).spawn(c.clone());
    wait_attempts(c, &who, step, false, 2).await;
    assert!(
        !pending.is_finished(),
        "{who}: PlaceOrder ended while {down:?} was down"
    );
    cluster.start_svc(down, None).await;
    let c = cluster.clients();
    match timeout(Duration::from_secs(25), pending).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("{who}: PlaceOrder after {down:?} came back: {other:?}"),
    }
    let saga = saga_by_key(&c, &who).await.expect("saga logged");
    assert_eq!(
        saga.state,
        orch::SagaState::Completed as i32,
        "{}",
        describe(&saga)
    );
    assert!(action(&saga, step).attempts >= 2, "{}", describe(&saga));
    let again = place_ok(&c, req).await;
    assert_eq!(again.order_id, saga.order_id);
    assert_eq!(orders_of(&c, &who).await.len(), 1);
    let b = balance(&c, &who).await;
    assert_eq!(
        (b.points, b.deducted, b.refunded),
        (GRANT - REDEEM, REDEEM, 0),
        "{b:?}"
    );
    let p = product(&c, sku).await;
    assert_eq!(p.reserved, before.reserved + 1, "{p:?}");
    check_invariants(&c, u, &format!("{down:?} outage at {step}")).await;
}

/// Parks a checkout at `park` (a failpoint), SIGKILLs `down` and the
/// orchestrator, restarts the orchestrator: recovery retries `step` (an
/// action, or a compensation) against the dead participant; once it was
/// tried twice the participant comes back and the saga must end `expect`.
#[allow(clippy::too_many_arguments)]
async fn outage_mid_saga(
    cluster: &mut Cluster,
    u: &mut Universe,
    park: &str,
    down: Svc,
    step: &str,
    is_compensation: bool,
    req: orch::PlaceOrderRequest,
    expect: orch::SagaState,
) -> (orch::Saga, MeshClients) {
    let key = req.idempotency_key.clone();
    u.customers.insert(req.customer_id.clone());
    cluster.restart(Svc::Orchestrator, Some(park)).await;
    let pending = Call::Place(req.clone()).spawn(cluster.clients());
    cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {park} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    cluster.kill(down);
    cluster.kill(Svc::Orchestrator);
    expect_cut_off(pending, &key, park).await;
    cluster.start_svc(Svc::Orchestrator, None).await;
    let c = cluster.clients();
    wait_attempts(&c, &key, step, is_compensation, 2).await;
    cluster.start_svc(down, None).await;
    let c = cluster.clients();
    let saga = saga_by_key(&c, &key).await.expect("saga logged");
    let saga = wait_settled(&c, &saga.saga_id).await;
    assert_eq!(saga.state, expect as i32, "{}", describe(&saga));
    (saga, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participant_killed_mid_saga() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start(OUTAGE_ENGINE).await;
    let mut c = cluster.clients();
    let mut u = Universe::default();
    let sku = "CRASH-GIZMO";
    put_product(&c, &mut u, sku, 100).await;

    // Down before the call: the first step that needs it retries until it
    // is back (quote reads inventory and order-svc first).
    for (down, step) in [
        (Svc::Loyalty, "deduct-points"),
        (Svc::Inventory, "quote"),
        (Svc::Order, "quote"),
    ] {
        outage_before_call(&mut cluster, &mut u, &c, down, step, sku).await;
        c = cluster.clients();
        eprintln!("{down:?} down at {step}: ok at {:?}", started.elapsed());
    }

    // Down mid-saga: the checkout parked after an earlier step, the
    // orchestrator restarted, recovery retries the step until it is back.
    for (park, down, step) in [
        ("result:quote", Svc::Inventory, "reserve-stock"),
        ("result:deduct-points", Svc::Order, "create-order"),
    ] {
        let who = format!("midsaga-{step}");
        grant(&c, &mut u, &who).await;
        let req = place(&who, &who, sku, "", REDEEM);
        let (saga, c2) = outage_mid_saga(
            &mut cluster,
            &mut u,
            park,
            down,
            step,
            false,
            req.clone(),
            orch::SagaState::Completed,
        )
        .await;
        c = c2;
        assert!(action(&saga, step).attempts >= 2, "{}", describe(&saga));
        assert_eq!(place_ok(&c, req).await.order_id, saga.order_id);
        assert_eq!(orders_of(&c, &who).await.len(), 1);
        let b = balance(&c, &who).await;
        assert_eq!((b.deducted, b.refunded), (REDEEM, 0), "{b:?}");
        check_invariants(&c, &u, &format!("{down:?} down at {step}")).await;
        eprintln!(
            "{down:?} down mid-saga at {step}: ok at {:?}",
            started.elapsed()
        );
    }

    // Down during compensation: refund-points retries until loyalty is back.
    let code = "CRASH-GONE";
    put_coupon(&c, &mut u, code, 1).await;
    u.customers.insert("outage-seed".into());
    place_ok(&c, place("outage-seed", "outage-seed", sku, code, 0)).await;
    let who = "midsaga-refund";
    grant(&c, &mut u, who).await;
    let before = product(&c, sku).await;
    let req = place(who, who, sku, code, REDEEM);
    let (saga, c2) = outage_mid_saga(
        &mut cluster,
        &mut u,
        "result:cancel-order",
        Svc::Loyalty,
        "deduct-points",
        true,
        req,
        orch::SagaState::Compensated,
    )
    .await;
    c = c2;
    let refund = compensation(&saga, "deduct-points").expect("refund-points ran");
    assert!(refund.attempts >= 2, "{}", describe(&saga));
    let b = balance(&c, who).await;
    assert_eq!(
        (b.points, b.deducted, b.refunded),
        (GRANT, REDEEM, REDEEM),
        "{b:?}"
    );
    let p = product(&c, sku).await;
    assert_eq!(
        (p.available, p.reserved),
        (before.available, before.reserved),
        "{p:?}"
    );
    check_invariants(&c, &u, "loyalty down at refund-points").await;
    eprintln!("participant outages in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 4. Durability: SIGKILL everything, restart, nothing lost
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Snapshot {
    orders: Vec<ord::Order>,
    product: inv::GetProductResponse,
    balance: loy::GetBalanceResponse,
    coupon: ord::GetCouponResponse,
    sagas: Vec<orch::Saga>,
}

async fn snapshot(c: &MeshClients, customer: &str, sku: &str, code: &str) -> Snapshot {
    Snapshot {
        orders: orders_of(c, customer).await,
        product: product(c, sku).await,
        balance: balance(c, customer).await,
        coupon: coupon(c, code).await,
        sagas: all_sagas(&mut c.admin.clone()).await.expect("ListSagas"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_survives_sigkill() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start(MATRIX_ENGINE).await;
    let c = cluster.clients();
    let mut u = Universe::default();
    let (sku, code, who) = ("CRASH-DURABLE", "CRASH-KEEP", "durable-customer");
    put_product(&c, &mut u, sku, 10).await;
    put_coupon(&c, &mut u, code, 5).await;
    grant(&c, &mut u, who).await;

    let pending = place_ok(&c, place("durable-1", who, sku, code, REDEEM)).await;
    let paid = place_ok(&c, place("durable-2", who, sku, "", REDEEM)).await;
    c.checkout
        .clone()
        .confirm_payment(orch::ConfirmPaymentRequest {
            order_id: paid.order_id.clone(),
            payment_ref: "durable-pay".into(),
        })
        .await
        .expect("ConfirmPayment");
    check_invariants(&c, &u, "the orders").await;
    let before = snapshot(&c, who, sku, code).await;
    assert_eq!(before.orders.len(), 2);
    assert_eq!(before.sagas.len(), 3);
    assert_eq!(
        (
            before.product.available,
            before.product.reserved,
            before.product.sold
        ),
        (8, 1, 1)
    );
    assert_eq!(before.coupon.times_used, 1);
    drop(c);

    for svc in Svc::START_ORDER {
        cluster.kill(svc);
    }
    for svc in Svc::START_ORDER {
        cluster.start_svc(svc, None).await;
    }
    let c = cluster.clients();
    let after = snapshot(&c, who, sku, code).await;
    assert_eq!(before, after, "state changed across SIGKILL and restart");

    // The same key still answers the same order; the mesh still works.
    let again = place_ok(&c, place("durable-1", who, sku, code, REDEEM)).await;
    assert_eq!(again.order_id, pending.order_id);
    assert_eq!(again.saga_id, pending.saga_id);
    let third = place_ok(&c, place("durable-3", who, sku, "", 0)).await;
    assert!(!third.order_id.is_empty());
    check_invariants(&c, &u, "the restart").await;
    eprintln!("durability in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 4. Several orchestrators on one MongoDB, and the database going away
// ---------------------------------------------------------------------------

/// Budgets of the shared-log tests: short leases so a dead orchestrator's
/// sagas are taken over within seconds.
const SHARED_ENGINE: &[&str] = &[
    "--step-attempts",
    "100",
    "--step-budget-ms",
    "60000",
    "--compensation-attempts",
    "1000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "500",
    // SecantusDB is one Python process: under a burst from three
    // orchestrators a participant call may take seconds.
    "--call-timeout-ms",
    "5000",
    "--recovery-interval-ms",
    "200",
    // Longer than a call timeout plus the largest retry delay, so a live
    // owner renews its leases in time (`docs/architecture.md`, "Recovery
    // and leases").
    "--lease-ms",
    "8000",
];

/// PlaceOrder on `c`, retried on `fallback` with the same key when `c`'s
/// orchestrator is gone (what a load balancer in front of several does).
async fn place_via(
    c: MeshClients,
    fallback: MeshClients,
    req: orch::PlaceOrderRequest,
) -> Result<orch::PlaceOrderResponse, Status> {
    let first = c
        .checkout
        .clone()
        .place_order(with_deadline(req.clone(), Duration::from_secs(30)))
        .await;
    match first {
        Err(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) =>
        {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let again = fallback
                    .checkout
                    .clone()
                    .place_order(with_deadline(req.clone(), Duration::from_secs(30)))
                    .await;
                match again {
                    // Still being finished by its new owner: ask again.
                    Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                        sleep(Duration::from_millis(100)).await;
                    }
                    other => return other.map(tonic::Response::into_inner),
                }
            }
        }
        other => other.map(tonic::Response::into_inner),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_orchestrators_take_over_a_killed_ones_sagas() {
    /// Orders placed at once, a third through each orchestrator (kept
    /// small: SecantusDB is one Python process on a 2-core machine).
    const BURST: usize = 18;
    let test = "three_orchestrators_take_over_a_killed_ones_sagas";
    let Some(uri) = microshop_runtime::testing::mongodb_uri_for_tests(test) else {
        return;
    };
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start_on(SHARED_ENGINE, Some(uri)).await;
    let second = cluster.start_peer().await;
    let third = cluster.start_peer().await;
    let c = cluster.clients_of(second);
    let mut u = Universe::default();
    let (sku, code) = ("SHARED-SKU", "SHARED-COUPON");
    // A unit for every order, so every saga gets past reserve-stock and
    // the first orchestrator's redeeming sagas surely reach its failpoint
    // (with fewer units they could all be refused before it, and it would
    // never hold a saga); a coupon of few uses makes some sagas compensate
    // after deduct-points, so takeover covers both directions.
    put_product(&c, &mut u, sku, BURST as i64).await;
    put_coupon(&c, &mut u, code, 2).await;
    let customers: Vec<String> = (0..6).map(|i| format!("shared-{i}")).collect();
    for who in &customers {
        grant(&c, &mut u, who).await;
    }

    // The first orchestrator holds every redeeming saga right after its
    // points are deducted, so it dies owning sagas half done.
    cluster
        .restart(Svc::Orchestrator, Some("result:deduct-points"))
        .await;
    let targets = [Svc::Orchestrator, second, third];
    let mut calls = Vec::new();
    for i in 0..BURST {
        let target = targets[i % 3];
        let who = &customers[i % customers.len()];
        let coupon = if i % 5 == 0 { code } else { "" };
        let points = if i % 2 == 0 { REDEEM } else { 0 };
        let req = place(&format!("shared-{i}"), who, sku, coupon, points);
        calls.push(tokio::spawn(place_via(
            cluster.clients_of(target),
            cluster.clients_of(if target == second { third } else { second }),
            req,
        )));
    }
    cluster
        .wait_line(Svc::Orchestrator, "FAILPOINT", Duration::from_secs(90))
        .await;
    cluster.kill(Svc::Orchestrator);

    let mut completed = 0;
    let mut rejected = 0;
    for call in calls {
        match call.await.expect("the call task") {
            Ok(_) => completed += 1,
            Err(s) if s.code() == Code::FailedPrecondition => rejected += 1,
            Err(s) => panic!("PlaceOrder failed after the takeover: {s:?}"),
        }
    }
    let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for saga in &sagas {
        *by_key.entry(saga.idempotency_key.as_str()).or_default() += 1;
        let state = orch::SagaState::try_from(saga.state);
        assert!(
            matches!(
                state,
                Ok(orch::SagaState::Completed | orch::SagaState::Compensated)
            ),
            "a saga did not finish: {}",
            describe(saga)
        );
    }
    assert_eq!(by_key.len(), BURST, "one saga per key");
    assert!(by_key.values().all(|n| *n == 1), "one saga per key");
    let orders: usize = {
        let mut n = 0;
        for who in &customers {
            n += orders_of(&c, who).await.len();
        }
        n
    };
    assert_eq!(orders, completed, "exactly one order per completed saga");
    assert!(rejected > 0, "the burst was meant to exhaust the coupon");
    check_invariants(&c, &u, "the takeover").await;
    eprintln!(
        "takeover: {BURST} sagas over 3 orchestrators, one SIGKILLed holding sagas: \
         {completed} completed, {rejected} compensated, in {:?}",
        started.elapsed()
    );
}

/// Budgets that outlast a database outage: steps and compensations keep
/// retrying for two minutes.
const DB_OUTAGE_ENGINE: &[&str] = &[
    "--step-attempts",
    "100000",
    "--step-budget-ms",
    "120000",
    "--compensation-attempts",
    "100000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "200",
    "--call-timeout-ms",
    "2000",
    "--recovery-interval-ms",
    "200",
    "--orchestrator-id",
    "outage-test-orchestrator",
];

/// A SecantusDB server of the test's own, so it can be stopped and
/// started again on the same port and data.
struct Database {
    command: String,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Database {
    fn start(command: String) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut db = Self {
            command,
            port,
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        };
        db.up();
        db
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    fn spawn(&self) -> Child {
        Command::new(&self.command)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.path())
            .arg("--log-level")
            .arg("WARNING")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.command))
    }

    /// Starts the server and waits until it accepts connections. Its port
    /// was free while it was down, so another test's connection may hold
    /// it for a moment: a server that exits before listening (it could not
    /// bind) is started again on the same port, within the same 30 s.
    fn up(&mut self) {
        // Kept in `self` at once, so a failed wait still kills it on drop.
        self.child = Some(self.spawn());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the database did not listen within 30 s"
            );
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                eprintln!(
                    "the database exited before listening on {}; again",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(250));
                self.child = Some(self.spawn());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the way an operator does (SIGTERM) and reaps it.
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls the overall health of `svc` until it is `want`.
async fn wait_health(cluster: &Cluster, svc: Svc, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while serving(cluster.addr(svc)).await != want {
        assert!(
            Instant::now() < deadline,
            "{svc:?} did not report {} within 30 s",
            if want { "SERVING" } else { "NOT_SERVING" }
        );
        sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_degrades_and_recovers() {
    let test = "database_outage_degrades_and_recovers";
    let Some(command) = microshop_runtime::testing::secantusd_for_tests(test) else {
        return;
    };
    let started = std::time::Instant::now();
    let mut db = Database::start(command);
    let mut cluster = Cluster::start_on(DB_OUTAGE_ENGINE, Some(db.uri())).await;
    let c = cluster.clients();
    let mut u = Universe::default();
    let (sku, who) = ("OUTAGE-SKU", "outage-customer");
    put_product(&c, &mut u, sku, 10).await;
    grant(&c, &mut u, who).await;
    place_ok(&c, place("outage-before", who, sku, "", REDEEM)).await;

    // A saga in flight when the database goes: loyalty-svc is down, so it
    // waits in deduct-points' retries, holding stock.
    cluster.kill(Svc::Loyalty);
    let in_flight = tokio::spawn({
        let c = cluster.clients();
        async move {
            c.checkout
                .clone()
                .place_order(with_deadline(
                    place("outage-in-flight", who, sku, "", REDEEM),
                    Duration::from_secs(60),
                ))
                .await
        }
    });
    let deadline = Instant::now() + SETTLE_WITHIN;
    while saga_by_key(&c, "outage-in-flight").await.is_none_or(|s| {
        s.steps.iter().all(|st| {
            st.name != "deduct-points" || st.action.as_ref().is_none_or(|a| a.attempts == 0)
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "the saga never reached deduct-points"
        );
        sleep(POLL).await;
    }

    db.down();
    for svc in [Svc::Inventory, Svc::Order, Svc::Orchestrator] {
        wait_health(&cluster, svc, false).await;
    }
    // Calls fail with UNAVAILABLE meanwhile, and nothing exits.
    let refused = c
        .checkout
        .clone()
        .place_order(with_deadline(
            place("outage-during", who, sku, "", 0),
            Duration::from_secs(10),
        ))
        .await
        .expect_err("PlaceOrder without a database");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let read = c
        .inventory
        .clone()
        .get_product(inv::GetProductRequest { sku: sku.into() })
        .await
        .expect_err("GetProduct without a database");
    assert_eq!(read.code(), Code::Unavailable, "{read:?}");
    for (svc, proc) in &mut cluster.procs {
        assert!(
            proc.child.try_wait().expect("try_wait").is_none(),
            "{svc:?} exited during the outage"
        );
    }
    // Liveness (what Kubernetes restarts on) stays SERVING meanwhile.
    for svc in [Svc::Inventory, Svc::Order, Svc::Orchestrator] {
        assert!(
            serving_entry(cluster.addr(svc), microshop_runtime::LIVENESS).await,
            "{svc:?} liveness went down with the database"
        );
    }

    db.up();
    cluster.start_svc(Svc::Loyalty, None).await;
    for svc in [Svc::Inventory, Svc::Loyalty, Svc::Order, Svc::Orchestrator] {
        wait_health(&cluster, svc, true).await;
    }
    // The saga in flight finishes (recovery resumes it), the refused call
    // succeeds when retried with its key, and nothing was lost.
    let saga = saga_by_key(&c, "outage-in-flight")
        .await
        .expect("the in-flight saga is still logged");
    let saga = wait_settled(&c, &saga.saga_id).await;
    assert_eq!(
        saga.state,
        orch::SagaState::Completed as i32,
        "{}",
        describe(&saga)
    );
    // Its first call saw the database go: either it was still waiting when
    // recovery finished the saga (the order), or the driver's save failed
    // under it and it was told to retry (UNAVAILABLE, naming the saga).
    match in_flight.await.expect("the in-flight call task") {
        Ok(answer) => {
            let answer = answer.into_inner();
            assert_eq!(
                (answer.saga_id.as_str(), answer.order_id.as_str()),
                (saga.saga_id.as_str(), saga.order_id.as_str()),
                "{answer:?}"
            );
        }
        Err(status) => {
            assert_eq!(
                (status.code(), reason_of(&status)),
                (Code::Unavailable, Some(Reason::DependencyUnavailable)),
                "the in-flight call: {status:?}"
            );
            assert_eq!(
                microshop_runtime::errors::metadata_of(&status, "sagaId").as_deref(),
                Some(saga.saga_id.as_str()),
                "the in-flight call's error names its saga: {status:?}"
            );
        }
    }
    let again = place_ok(&c, place("outage-in-flight", who, sku, "", REDEEM)).await;
    assert_eq!(again.saga_id, saga.saga_id);
    place_ok(&c, place("outage-during", who, sku, "", 0)).await;
    assert_eq!(orders_of(&c, who).await.len(), 3);
    check_invariants(&c, &u, "the database outage").await;
    eprintln!("database outage survived in {:?}", started.elapsed());
}
