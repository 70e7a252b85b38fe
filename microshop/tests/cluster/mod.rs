//! The process harness of the integration tests that run the real binary:
//! the four services as `microshop serve` processes ([`Cluster`]), one
//! `microshop up` ([`Up`]), any single process ([`Spawn`], [`Process`]),
//! the test's own SecantusDB ([`Database`]), and the requests and reads the
//! suites share ([`shop`]).
//!
//! Each test file includes it with `mod cluster;` (the shared-module form
//! of integration tests: a `mod.rs` in a folder is not a test binary of its
//! own). It is one module so that no two suites carry their own spawning,
//! health polling, killing, restarting and log reading.
//!
//! A [`Cluster`] is built by a [`ClusterBuilder`]: arguments and variables
//! for every service or for one, a metrics port each, authentication,
//! MongoDB, the log filter, and, per service, fixed addresses and a command
//! prefix. The last two are there for suites that put each service in a
//! network namespace of its own (`ip netns exec NS` as the prefix, the
//! namespace's address as the service's): the harness dials and passes
//! whatever address a service has, never assuming loopback.
//!
//! For the fault suite, [`netns`] builds the namespaces, the bridge and
//! the silent cuts; the test thread joins the network itself, so the
//! harness's clients dial the services' namespace addresses as they are.
//!
//! Ports: a service's first start takes free loopback ports, and if one was
//! taken between picking and binding (every test draws from the same
//! ephemeral range) it starts again on others: nothing dials a service
//! before it first serves. A restart keeps the port and data directory (the
//! others dial it there) and, if the port is briefly held by someone else,
//! tries the same port again for a bounded time.
//!
//! Nothing waits on a sleep for state: every wait is bounded polling (of
//! health or of an exit) or a bounded wait for a line.

// Each test binary uses a part of this module; what one leaves unused is
// used by another, so dead-code warnings here say nothing.
#![allow(dead_code)]

pub mod cli;
pub mod database;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod shop;
pub mod up;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    process::ExitStatus,
    sync::Arc,
    time::Duration,
};

use microshop::mesh::{MeshAddrs, MeshClients};
use microshop_proto::{
    inventory::v1::inventory_service_client::InventoryServiceClient,
    loyalty::v1::loyalty_service_client::LoyaltyServiceClient,
    orchestrator::v1::{
        checkout_service_client::CheckoutServiceClient,
        saga_admin_service_client::SagaAdminServiceClient,
    },
    order::v1::order_service_client::OrderServiceClient,
};
use tempfile::TempDir;
use tokio::time::{Instant, sleep};
use tonic::transport::Channel;

use process::{POLL, Process, Tail, endpoint, free_addr, lazy_channel, serve};

/// Clients of the services at `addrs`, each connecting on first use.
pub fn clients_at(addrs: &MeshAddrs) -> MeshClients {
    let orchestrator = lazy_channel(addrs.orchestrator);
    MeshClients {
        checkout: CheckoutServiceClient::new(orchestrator.clone()),
        admin: SagaAdminServiceClient::new(orchestrator),
        inventory: InventoryServiceClient::new(lazy_channel(addrs.inventory)),
        loyalty: LoyaltyServiceClient::new(lazy_channel(addrs.loyalty)),
        order: OrderServiceClient::new(lazy_channel(addrs.order)),
    }
}

/// How long a service may take to answer health SERVING after its start.
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a restarted service may keep finding its port taken.
const REBIND_WITHIN: Duration = Duration::from_secs(20);
/// Pause before binding a taken port again.
const REBIND_PAUSE: Duration = Duration::from_millis(250);
/// Starts on other ports a service's first start may take.
const FIRST_START_ATTEMPTS: usize = 3;

/// A service of the mesh as a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Svc {
    Orchestrator,
    Inventory,
    Loyalty,
    Order,
    /// A further orchestrator ([`Cluster::start_peer`]), sharing the first
    /// one's participants (and, on MongoDB, its saga log).
    Peer(usize),
}

impl Svc {
    /// Participants first, so the orchestrator's recovery finds them up.
    pub const START_ORDER: [Self; 4] = [
        Self::Inventory,
        Self::Loyalty,
        Self::Order,
        Self::Orchestrator,
    ];

    /// Its name on the command line (`microshop serve NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Orchestrator | Self::Peer(_) => "orchestrator",
            Self::Inventory => "inventory",
            Self::Loyalty => "loyalty",
            Self::Order => "order",
        }
    }

    /// The gRPC service its health reports. Readiness asks for it, not for
    /// `""`: a port freed by one test and taken by another test's service
    /// of another kind must not pass for this one.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Self::Orchestrator | Self::Peer(_) => orchestrator::SERVICE_NAME,
            Self::Inventory => inventory_svc::SERVICE_NAME,
            Self::Loyalty => loyalty_svc::SERVICE_NAME,
            Self::Order => order_svc::SERVICE_NAME,
        }
    }

    /// What it runs as: a peer is an orchestrator.
    pub fn kind(self) -> Self {
        match self {
            Self::Peer(_) => Self::Orchestrator,
            other => other,
        }
    }
}

/// Which health entry to ask a service for.
#[derive(Clone, Copy, Debug)]
pub enum Health<'a> {
    /// `""`: the process as a whole (it follows the storage, MongoDB's
    /// reachability included).
    Overall,
    /// The service's own gRPC name ([`Svc::grpc_name`]).
    Service,
    /// Any other entry (`microshop_runtime::LIVENESS`).
    Entry(&'a str),
}

/// How to run a [`Cluster`]. Arguments and variables keyed by a service
/// apply to what runs as that service ([`Svc::kind`]: an orchestrator's
/// apply to its peers too); address and prefix to the one service.
#[must_use]
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    args: Vec<(Option<Svc>, String)>,
    env: Vec<(Option<Svc>, String, String)>,
    /// Variables of one service alone (one peer, not every orchestrator).
    own_env: Vec<(Svc, String, String)>,
    /// Participant URLs the orchestrators dial instead of the cluster's.
    urls: BTreeMap<Svc, String>,
    addrs: BTreeMap<Svc, SocketAddr>,
    metrics_addrs: BTreeMap<Svc, SocketAddr>,
    prefixes: BTreeMap<Svc, Vec<String>>,
    metrics: bool,
    insecure_no_auth: bool,
    mongodb: Option<String>,
    /// The embedded stores even when the run sets `MONGODB_URI`.
    embedded: bool,
    log_filter: String,
    data_root: Option<PathBuf>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            own_env: Vec::new(),
            urls: BTreeMap::new(),
            addrs: BTreeMap::new(),
            metrics_addrs: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            metrics: false,
            insecure_no_auth: true,
            mongodb: None,
            embedded: false,
            log_filter: "info".to_owned(),
            data_root: None,
        }
    }
}

impl ClusterBuilder {
    /// Arguments of every service.
    pub fn args_all<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| (None, a.as_ref().to_owned())));
        self
    }

    /// Arguments of `svc` (of every orchestrator for [`Svc::Orchestrator`]).
    pub fn args<S: AsRef<str>>(mut self, svc: Svc, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(
            args.into_iter()
                .map(|a| (Some(svc.kind()), a.as_ref().to_owned())),
        );
        self
    }

    /// Arguments of every orchestrator: the engine's budgets.
    pub fn orchestrator<S: AsRef<str>>(self, args: impl IntoIterator<Item = S>) -> Self {
        self.args(Svc::Orchestrator, args)
    }

    /// A variable of every service.
    pub fn env_all(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((None, key.into(), value.into()));
        self
    }

    /// A variable of `svc`.
    pub fn env(mut self, svc: Svc, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((Some(svc.kind()), key.into(), value.into()));
        self
    }

    /// A variable of `svc` alone: of one peer, not of every orchestrator
    /// as [`Self::env`] (a clock shifted under one orchestrator).
    pub fn env_of(mut self, svc: Svc, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.own_env.push((svc, key.into(), value.into()));
        self
    }

    /// The orchestrators dial `participant` at `url` instead of where the
    /// cluster runs it (a URL pointing at the wrong service).
    pub fn participant_url(mut self, participant: Svc, url: impl Into<String>) -> Self {
        assert!(
            matches!(participant, Svc::Inventory | Svc::Loyalty | Svc::Order),
            "{participant:?} is not a participant"
        );
        self.urls.insert(participant, url.into());
        self
    }

    /// Where `svc` listens and is dialled, instead of a free loopback port.
    /// A fixed address is never moved: a start that finds it taken tries it
    /// again, as a restart does.
    pub fn addr(mut self, svc: Svc, addr: SocketAddr) -> Self {
        self.addrs.insert(svc, addr);
        self
    }

    /// Where `svc` serves `/metrics` (with [`ClusterBuilder::metrics`]),
    /// instead of a free loopback port; never moved, as [`Self::addr`].
    pub fn metrics_addr(mut self, svc: Svc, addr: SocketAddr) -> Self {
        self.metrics_addrs.insert(svc, addr);
        self
    }

    /// Runs `svc` under `wrapper` (`["ip", "netns", "exec", "NS"]`).
    pub fn prefix<S: AsRef<str>>(mut self, svc: Svc, wrapper: impl IntoIterator<Item = S>) -> Self {
        self.prefixes.insert(
            svc,
            wrapper.into_iter().map(|s| s.as_ref().to_owned()).collect(),
        );
        self
    }

    /// Each service serves `/metrics` on a free loopback port of its own
    /// ([`Cluster::metrics_addr`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Without `--insecure-no-auth`: the test passes the authentication
    /// settings itself (as arguments or variables).
    pub fn with_auth(mut self) -> Self {
        self.insecure_no_auth = false;
        self
    }

    /// Every store on the MongoDB server at `uri`, a database of this
    /// cluster's own. Without it the embedded stores, unless the test run
    /// sets `MONGODB_URI` (the test script's MongoDB pass): then that
    /// server, the same way.
    pub fn mongodb(mut self, uri: impl Into<String>) -> Self {
        self.mongodb = Some(uri.into());
        self.embedded = false;
        self
    }

    /// The embedded stores, even when the test run sets `MONGODB_URI` (the
    /// script's MongoDB pass): its server listens on the loopback of the
    /// namespace the run started in, which a service in a namespace of its
    /// own cannot reach.
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self.mongodb = None;
        self
    }

    /// The services' data directories under `root` (the power-cut test's
    /// filesystem) instead of the cluster's temporary directory.
    pub fn data_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.data_root = Some(root.into());
        self
    }

    /// `RUST_LOG` of every service (default `info`).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Starts the four services and waits until each is SERVING.
    pub async fn start(self) -> Cluster {
        let mut cluster = self.cluster();
        for svc in Svc::START_ORDER {
            cluster.start_svc(svc, &[]).await;
        }
        cluster
    }

    /// Spawns the four services without waiting for any to serve (their
    /// database is not up yet, say); [`Cluster::wait_ready`] waits.
    pub fn spawn(self) -> Cluster {
        let mut cluster = self.cluster();
        for svc in Svc::START_ORDER {
            cluster.spawn(svc, &[]);
        }
        cluster
    }

    fn cluster(self) -> Cluster {
        let mut cluster = Cluster {
            procs: BTreeMap::new(),
            addrs: BTreeMap::new(),
            metrics: BTreeMap::new(),
            started: BTreeSet::new(),
            tail: Tail::new(),
            dir: tempfile::tempdir().expect("temporary directory"),
            peers: 0,
            config: self,
        };
        for svc in Svc::START_ORDER {
            cluster.pick_ports(svc);
        }
        cluster
    }
}

/// The services as separate processes over one temporary directory.
/// Dropping it kills every process; on a panic it prints their last lines.
pub struct Cluster {
    config: ClusterBuilder,
    procs: BTreeMap<Svc, Process>,
    addrs: BTreeMap<Svc, SocketAddr>,
    metrics: BTreeMap<Svc, SocketAddr>,
    /// Services that served once: others may dial them, so they keep their
    /// ports.
    started: BTreeSet<Svc>,
    tail: Arc<Tail>,
    dir: TempDir,
    peers: usize,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for proc in self.procs.values_mut() {
            proc.kill();
        }
        self.procs.clear();
        if std::thread::panicking() {
            self.tail.print(&format!(
                "the services (data in {})",
                self.dir.path().display()
            ));
        }
    }
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Where `svc` listens.
    pub fn addr(&self, svc: Svc) -> SocketAddr {
        *self
            .addrs
            .get(&svc)
            .unwrap_or_else(|| panic!("{svc:?} is not part of this cluster"))
    }

    pub fn url(&self, svc: Svc) -> String {
        format!("http://{}", self.addr(svc))
    }

    /// Where `svc` serves `/metrics` ([`ClusterBuilder::metrics`]).
    pub fn metrics_addr(&self, svc: Svc) -> SocketAddr {
        *self
            .metrics
            .get(&svc)
            .unwrap_or_else(|| panic!("{svc:?} serves no metrics: ClusterBuilder::metrics"))
    }

    /// The cluster's temporary directory (the data directories are in it).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn data_dir(&self, svc: Svc) -> PathBuf {
        let root = self.config.data_root.as_deref().unwrap_or(self.dir.path());
        match svc {
            Svc::Peer(i) => root.join(format!("orchestrator-peer-{i}")),
            _ => root.join(svc.name()),
        }
    }

    /// A channel to `svc` that connects on first use.
    pub fn channel(&self, svc: Svc) -> Channel {
        lazy_channel(self.addr(svc))
    }

    /// Fresh clients (a restarted service gets a fresh connection). They
    /// connect lazily, so a service that is down fails only its own calls.
    pub fn clients(&self) -> MeshClients {
        self.clients_of(Svc::Orchestrator)
    }

    /// Clients with the checkout and admin APIs of `orchestrator` (the
    /// first one or a peer).
    pub fn clients_of(&self, orchestrator: Svc) -> MeshClients {
        clients_at(&MeshAddrs {
            orchestrator: self.addr(orchestrator),
            inventory: self.addr(Svc::Inventory),
            loyalty: self.addr(Svc::Loyalty),
            order: self.addr(Svc::Order),
        })
    }

    /// Starts one more orchestrator on a free port, named `peer-N` as a
    /// lease owner, and waits for SERVING.
    pub async fn start_peer(&mut self) -> Svc {
        let peer = Svc::Peer(self.peers);
        self.peers += 1;
        self.pick_ports(peer);
        self.start_svc(peer, &[]).await;
        peer
    }

    /// Free ports for `svc` (unless its address is fixed).
    fn pick_ports(&mut self, svc: Svc) {
        let addr = self
            .config
            .addrs
            .get(&svc)
            .copied()
            .unwrap_or_else(free_addr);
        self.addrs.insert(svc, addr);
        if self.config.metrics {
            let metrics = self
                .config
                .metrics_addrs
                .get(&svc)
                .copied()
                .unwrap_or_else(free_addr);
            self.metrics.insert(svc, metrics);
        }
    }

    /// Spawns `svc` (which must not be running) with `extra` arguments
    /// after the configured ones.
    fn spawn(&mut self, svc: Svc, extra: &[&str]) {
        assert!(!self.procs.contains_key(&svc), "{svc:?} is already running");
        let config = &self.config;
        let applies = |key: &Option<Svc>| key.is_none_or(|k| k == svc.kind());
        let url = |participant: Svc| {
            config
                .urls
                .get(&participant)
                .cloned()
                .unwrap_or_else(|| self.url(participant))
        };
        let mut spawn = serve(svc, self.addr(svc), &self.data_dir(svc))
            .arg("--inventory-url")
            .arg(url(Svc::Inventory))
            .arg("--loyalty-url")
            .arg(url(Svc::Loyalty))
            .arg("--order-url")
            .arg(url(Svc::Order));
        if let Some(metrics) = self.metrics.get(&svc) {
            spawn = spawn.arg("--metrics-addr").arg(metrics.to_string());
        }
        if config.insecure_no_auth {
            spawn = spawn.arg("--insecure-no-auth");
        }
        spawn = spawn.args(
            config
                .args
                .iter()
                .filter(|(key, _)| applies(key))
                .map(|(_, arg)| arg),
        );
        if let Svc::Peer(i) = svc {
            spawn = spawn.arg("--orchestrator-id").arg(format!("peer-{i}"));
        }
        spawn = spawn.args(extra.iter().copied());
        if let Some(wrapper) = config.prefixes.get(&svc) {
            spawn = spawn.prefix(wrapper);
        }
        // On MongoDB (this cluster's, or the script's MongoDB pass, whose
        // MONGODB_URI the test sees), a database of the cluster's own.
        let mongodb = config
            .mongodb
            .clone()
            .or_else(|| std::env::var("MONGODB_URI").ok())
            .filter(|_| !config.embedded);
        if let Some(uri) = mongodb {
            spawn = spawn.env("MONGODB_URI", uri).env(
                "MICROSHOP_MONGODB_DATABASE",
                microshop_runtime::testing::database_for(self.dir.path()),
            );
        }
        spawn = spawn
            .env("RUST_LOG", &config.log_filter)
            .envs(
                config
                    .env
                    .iter()
                    .filter(|(key, _, _)| applies(key))
                    .map(|(_, k, v)| (k, v)),
            )
            .envs(
                config
                    .own_env
                    .iter()
                    .filter(|(key, _, _)| *key == svc)
                    .map(|(_, k, v)| (k, v)),
            );
        let name = match (svc, extra.is_empty()) {
            (Svc::Peer(i), _) => format!("orchestrator-peer-{i}"),
            (_, true) => svc.name().to_owned(),
            (_, false) => format!("{} {}", svc.name(), extra.join(" ")),
        };
        let process = spawn.name(name).tail(&self.tail).spawn();
        self.procs.insert(svc, process);
    }

    /// Polls `svc`'s own health entry until SERVING; an error if it exits
    /// first or is not serving within [`READY_WITHIN`].
    async fn try_ready(&mut self, svc: Svc) -> Result<(), String> {
        let endpoint = endpoint(&self.url(svc), Duration::from_secs(1));
        self.procs
            .get_mut(&svc)
            .ok_or_else(|| format!("{svc:?} is not running"))?
            .wait_serving(&endpoint, svc.grpc_name(), READY_WITHIN)
            .await
    }

    /// Starts `svc` with `extra` arguments (`["--failpoint", POINT]`) and
    /// waits for SERVING. A start that could not bind its port is tried
    /// again: on other ports if `svc` never served (nothing dials it yet)
    /// and its address is not fixed, else on the same port (the others dial
    /// it there) for up to [`REBIND_WITHIN`]. Any other failure panics.
    pub async fn start_svc(&mut self, svc: Svc, extra: &[&str]) {
        let deadline = Instant::now() + REBIND_WITHIN;
        let mut moves = 1;
        loop {
            self.spawn(svc, extra);
            let Err(why) = self.try_ready(svc).await else {
                self.started.insert(svc);
                return;
            };
            let mut proc = self.procs.remove(&svc).expect("just spawned");
            if !proc.could_not_bind().await {
                panic!("{why}");
            }
            let fixed = self.config.addrs.contains_key(&svc)
                || self.config.metrics_addrs.contains_key(&svc);
            let movable = !self.started.contains(&svc) && !fixed;
            if movable && moves < FIRST_START_ATTEMPTS {
                moves += 1;
                self.pick_ports(svc);
                eprintln!("{svc:?} could not bind its ports; starting it on others");
                continue;
            }
            if movable || Instant::now() >= deadline {
                panic!("{why}");
            }
            eprintln!(
                "{svc:?} could not bind {} yet; starting it again",
                self.addr(svc)
            );
            sleep(REBIND_PAUSE).await;
        }
    }

    /// From now on the orchestrators dial `participant` where the cluster
    /// runs it again (undoes [`ClusterBuilder::participant_url`]; a
    /// restart picks it up).
    pub fn reset_participant_url(&mut self, participant: Svc) {
        self.config.urls.remove(&participant);
    }

    /// Waits until `svc`, spawned by [`ClusterBuilder::spawn`], is SERVING
    /// (within [`READY_WITHIN`]); panics if it exits first.
    pub async fn wait_ready(&mut self, svc: Svc) {
        if let Err(why) = self.try_ready(svc).await {
            panic!("{why}");
        }
        self.started.insert(svc);
    }

    /// SIGKILLs `svc` and reaps it.
    pub fn kill(&mut self, svc: Svc) {
        self.procs
            .remove(&svc)
            .unwrap_or_else(|| panic!("{svc:?} is not running"))
            .kill();
    }

    /// SIGTERMs `svc`, SIGKILL after `within`; how it ended.
    pub fn stop(&mut self, svc: Svc, within: Duration) -> ExitStatus {
        self.procs
            .remove(&svc)
            .unwrap_or_else(|| panic!("{svc:?} is not running"))
            .stop(within)
    }

    /// SIGKILLs `svc` (if running) and starts it again on its port and data
    /// directory with `extra` arguments.
    pub async fn restart(&mut self, svc: Svc, extra: &[&str]) {
        if self.procs.contains_key(&svc) {
            self.kill(svc);
        }
        self.start_svc(svc, extra).await;
    }

    /// The running services.
    pub fn running(&self) -> Vec<Svc> {
        self.procs.keys().copied().collect()
    }

    /// The exit status of `svc` if its process has ended on its own.
    pub fn exited(&mut self, svc: Svc) -> Option<ExitStatus> {
        self.process(svc).exited()
    }

    /// The process of `svc`, which must be running.
    pub fn process(&mut self, svc: Svc) -> &mut Process {
        self.procs
            .get_mut(&svc)
            .unwrap_or_else(|| panic!("{svc:?} is not running"))
    }

    /// Whether `svc` answers SERVING for `entry`.
    pub async fn serving(&self, svc: Svc, entry: Health<'_>) -> bool {
        let name = match entry {
            Health::Overall => "",
            Health::Service => svc.grpc_name(),
            Health::Entry(name) => name,
        };
        process::serving(&endpoint(&self.url(svc), Duration::from_secs(1)), name).await
    }

    /// Polls `svc`'s health `entry` until it is SERVING (`want`) or not;
    /// panics after `within`.
    pub async fn wait_health(&self, svc: Svc, entry: Health<'_>, want: bool, within: Duration) {
        let deadline = Instant::now() + within;
        while self.serving(svc, entry).await != want {
            assert!(
                Instant::now() < deadline,
                "{svc:?} did not report {} ({entry:?}) within {within:?}",
                if want { "SERVING" } else { "NOT_SERVING" }
            );
            sleep(POLL).await;
        }
    }

    /// Waits for a stderr line of the running `svc` containing `needle`
    /// (after any an earlier wait returned).
    pub async fn wait_line(&mut self, svc: Svc, needle: &str, within: Duration) -> String {
        self.process(svc).wait_line(needle, within).await
    }

    /// Waits until `done` holds for the stderr lines of the running `svc`.
    pub async fn wait_lines(
        &self,
        svc: Svc,
        what: &str,
        within: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        self.procs
            .get(&svc)
            .unwrap_or_else(|| panic!("{svc:?} is not running"))
            .wait_lines(what, within, done)
            .await
    }
}
