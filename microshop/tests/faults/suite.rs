//! What every scenario of the fault suite shares: running one at a time,
//! its tally and the suite's summary, the network and its hosts, the
//! cluster on them, and the checks of a burst's outcomes.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    time::{Duration, Instant},
};

use microshop::{
    invariants::{self, Universe, all_sagas},
    mesh::MeshClients,
};
use microshop_proto::orchestrator::v1 as orch;
use microshop_runtime::errors::reason_of;
use tonic::{Code, Status};

use crate::cluster::{
    Cluster, ClusterBuilder, Svc,
    database::Database,
    netns::{self, Host, Net},
    process::POLL,
    shop::*,
};

// ---------------------------------------------------------------------------
// One scenario at a time, its tally, the summary
// ---------------------------------------------------------------------------

/// Held while a scenario runs: scenarios run one at a time, in one process
/// or many (`flock` on a file of the target's temporary directory; the
/// lock goes with the file).
pub struct Serial {
    _lock: File,
}

pub fn serial() -> Serial {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults.lock");
    let file = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock().expect("lock the fault suite");
    Serial { _lock: file }
}

/// What a test of the suite is, for the summary: one of the issue's
/// numbered scenarios (1 to 7), or a
/// check of the suite's own tools (the cut is silent, the channels).
#[derive(Clone, Copy, Debug)]
pub enum Scenario {
    Numbered(u8, &'static str),
    Check(&'static str),
}

impl Scenario {
    fn key(self) -> String {
        match self {
            Self::Numbered(n, name) => format!("{n} {name}"),
            Self::Check(name) => format!("- {name}"),
        }
    }
}

/// What one scenario did, for the suite's summary.
#[derive(Debug, Default)]
pub struct Tally {
    /// Faults applied: cuts, skewed clocks, databases down, bad URLs.
    pub faults: usize,
    /// Sagas the scenario drove.
    pub sagas: usize,
    /// Invariant checks passed.
    pub checks: usize,
    /// Invariant violations found (the scenario fails on the first).
    pub violations: usize,
}

/// The ledger of this run: one line per scenario that ended, shared by
/// the test processes of one run (nextest runs every test in a process of
/// its own): keyed by nextest's run id, else by the runner's pid.
pub fn ledger() -> std::path::PathBuf {
    let run = std::env::var("NEXTEST_RUN_ID")
        .unwrap_or_else(|_| std::os::unix::process::parent_id().to_string());
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-ledger-{run}.txt"))
}

impl Tally {
    /// Checks the invariants (`docs/architecture.md`, "Invariants") over
    /// the mesh once nothing is in flight; a violation is counted in the
    /// ledger, then fails the scenario.
    pub async fn invariants(&mut self, c: &MeshClients, u: &Universe, when: &str) {
        quiesce(c).await;
        match invariants::check(c, u).await {
            Ok(summary) => self.checks += summary.checks,
            Err(v) => {
                self.violations += 1;
                self.record("(failed)");
                panic!("after {when}: {v}");
            }
        }
    }

    /// Counts the sagas of the log.
    pub async fn count_sagas(&mut self, c: &MeshClients) {
        self.sagas = all_sagas(&mut c.admin.clone())
            .await
            .expect("ListSagas")
            .len();
    }

    fn record(&self, key: &str) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ledger())
            .expect("open the suite's ledger");
        writeln!(
            file,
            "{key}\t{}\t{}\t{}\t{}",
            self.faults, self.sagas, self.checks, self.violations
        )
        .expect("write the suite's ledger");
    }

    /// Records the scenario, prints its line and then the suite's so far:
    /// the last such line of a run is the suite's summary.
    pub fn finish(self, scenario: Scenario, started: Instant) {
        let key = scenario.key();
        self.record(&key);
        eprintln!(
            "fault scenario {key}: {} faults applied, {} sagas driven, {} invariant checks, \
             {} violations, in {:.1?}",
            self.faults,
            self.sagas,
            self.checks,
            self.violations,
            started.elapsed()
        );
        let file = File::open(ledger()).expect("read the suite's ledger");
        let (mut numbered, mut checks, mut total) = (Vec::new(), 0, Tally::default());
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            let fields: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
            let what = fields[0].split(' ').next().unwrap_or_default();
            match what.parse::<u8>() {
                Ok(number) => numbered.push(number),
                Err(_) if what == "-" => checks += 1,
                Err(_) => {}
            }
            total.faults += n(1);
            total.sagas += n(2);
            total.checks += n(3);
            total.violations += n(4);
        }
        numbered.sort_unstable();
        numbered.dedup();
        let list: Vec<String> = numbered.iter().map(u8::to_string).collect();
        eprintln!(
            "fault suite so far: {} scenarios ({}) and {checks} tool checks, {} faults applied, \
             {} sagas driven, {} invariant checks, {} violations",
            numbered.len(),
            list.join(", "),
            total.faults,
            total.sagas,
            total.checks,
            total.violations
        );
    }
}

/// Waits (bounded) until no saga of the log is running or compensating:
/// the invariants hold only once nothing is in flight (expiry sagas, say).
pub async fn quiesce(c: &MeshClients) {
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    loop {
        let sagas = all_sagas(&mut c.admin.clone()).await.unwrap_or_default();
        let going: Vec<_> = sagas
            .iter()
            .filter(|s| {
                matches!(
                    orch::SagaState::try_from(s.state),
                    Ok(orch::SagaState::Running | orch::SagaState::Compensating)
                )
            })
            .map(describe)
            .collect();
        if !sagas.is_empty() && going.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sagas still in flight after {SETTLE_WITHIN:?}: {going:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The network of a scenario, or `None` (skipped, with a note) when the
/// machine lacks root, `ip` or `nft`; in CI that fails instead.
pub fn network(test: &str) -> Option<Net> {
    if let Some(missing) = netns::missing_tools() {
        assert!(
            !microshop_runtime::testing::is_ci(std::env::var("CI").ok().as_deref()),
            "{test}: the fault suite needs {missing}, and CI is set: it must not be skipped"
        );
        eprintln!("SKIPPED {test}: the fault suite needs {missing}");
        return None;
    }
    Some(Net::new())
}

/// The runtime of a scenario: built after the test thread entered the
/// network, so its threads are the client host's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The hosts of a mesh: the test's own, one per service, and for the
/// scenarios on a shared MongoDB a second orchestrator's and the
/// database's.
pub struct Hosts {
    pub client: Host,
    pub orchestrator: Host,
    pub inventory: Host,
    pub loyalty: Host,
    pub order: Host,
    pub peer: Option<Host>,
    pub mongodb: Option<Host>,
}

/// Where the services listen on their hosts.
const PORTS: [(Svc, u16); 4] = [
    (Svc::Orchestrator, 50051),
    (Svc::Inventory, 50052),
    (Svc::Loyalty, 50053),
    (Svc::Order, 50054),
];
/// Where the database listens on its host.
pub const MONGODB_PORT: u16 = 27017;

impl Hosts {
    pub fn new(net: &mut Net) -> Self {
        Self {
            client: net.host("client"),
            orchestrator: net.host("orch"),
            inventory: net.host("inventory"),
            loyalty: net.host("loyalty"),
            order: net.host("order"),
            peer: None,
            mongodb: None,
        }
    }

    /// [`Hosts::new`] and a host for the database.
    pub fn with_mongodb(net: &mut Net) -> Self {
        Self {
            mongodb: Some(net.host("mongodb")),
            ..Self::new(net)
        }
    }

    /// [`Hosts::with_mongodb`] and a host for a second orchestrator.
    pub fn with_peer(net: &mut Net) -> Self {
        Self {
            peer: Some(net.host("peer")),
            ..Self::with_mongodb(net)
        }
    }

    pub fn of(&self, svc: Svc) -> &Host {
        match svc {
            Svc::Orchestrator => &self.orchestrator,
            Svc::Inventory => &self.inventory,
            Svc::Loyalty => &self.loyalty,
            Svc::Order => &self.order,
            Svc::Peer(0) => self.peer.as_ref().expect("Hosts::with_peer"),
            Svc::Peer(_) => panic!("one peer per mesh"),
        }
    }

    pub fn mongodb(&self) -> &Host {
        self.mongodb.as_ref().expect("Hosts::with_mongodb")
    }

    /// Every service on its host, at its default port, embedded stores
    /// (and the peer, if any, on its own host).
    pub fn cluster(&self) -> ClusterBuilder {
        let mut builder = Cluster::builder().embedded();
        let peer = self.peer.as_ref().map(|_| (Svc::Peer(0), 50051));
        for (svc, port) in PORTS.into_iter().chain(peer) {
            let host = self.of(svc);
            builder = builder
                .addr(svc, host.addr(port))
                .prefix(svc, host.prefix());
        }
        builder
    }

    /// The SecantusDB server of the database host, not started yet.
    pub fn database(&self) -> Database {
        Database::on(secantusd(), self.mongodb(), MONGODB_PORT)
    }
}

/// The SecantusDB command (`MICROSHOP_TEST_SECANTUSD`, set by
/// `scripts/test.sh`); the scenarios on MongoDB need it, in CI they fail
/// without it, elsewhere they are skipped (`None`).
pub fn secantusd_or_skip(test: &str) -> Option<()> {
    if std::env::var_os("MICROSHOP_TEST_SECANTUSD").is_some() {
        return Some(());
    }
    assert!(
        !microshop_runtime::testing::is_ci(std::env::var("CI").ok().as_deref()),
        "{test}: MICROSHOP_TEST_SECANTUSD is not set, and CI is set: it must not be skipped"
    );
    eprintln!("SKIPPED {test}: MICROSHOP_TEST_SECANTUSD is not set (scripts/test.sh sets it)");
    None
}

fn secantusd() -> String {
    std::env::var("MICROSHOP_TEST_SECANTUSD").expect("MICROSHOP_TEST_SECANTUSD")
}

/// Whether `status` is the server's answer (it carries an ErrorInfo), not
/// the client's own deadline or a transport failure.
pub fn answered(status: &Status) -> bool {
    reason_of(status).is_some()
}

/// Polls ListSagas until every saga of `keys` exists and has ended;
/// returns them by key. Panics after `within`.
pub async fn wait_all_ended(
    c: &MeshClients,
    keys: &[String],
    within: Duration,
) -> BTreeMap<String, orch::Saga> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut ended = BTreeMap::new();
        let mut pending = Vec::new();
        if let Ok(sagas) = all_sagas(&mut c.admin.clone()).await {
            for key in keys {
                match sagas.iter().find(|s| &s.idempotency_key == key) {
                    Some(s)
                        if matches!(
                            orch::SagaState::try_from(s.state),
                            Ok(orch::SagaState::Completed | orch::SagaState::Compensated)
                        ) =>
                    {
                        ended.insert(key.clone(), s.clone());
                    }
                    Some(s) => pending.push(describe(s)),
                    None => pending.push(format!("{key}: no saga")),
                }
            }
            if pending.is_empty() {
                return ended;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sagas not ended within {within:?}: {pending:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One saga per key, and a retry of each key answers its outcome: the
/// same saga and order when it completed, its rejection when compensated.
pub async fn retries_answer_outcomes(
    c: &MeshClients,
    requests: &[orch::PlaceOrderRequest],
    ended: &BTreeMap<String, orch::Saga>,
) {
    let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
    for req in requests {
        let key = &req.idempotency_key;
        let logged = sagas.iter().filter(|s| &s.idempotency_key == key).count();
        assert_eq!(logged, 1, "one saga for key {key}");
        let saga = &ended[key];
        let again = c
            .checkout
            .clone()
            .place_order(with_deadline(req.clone(), Duration::from_secs(10)))
            .await;
        match (orch::SagaState::try_from(saga.state), again) {
            (Ok(orch::SagaState::Completed), Ok(r)) => {
                let r = r.into_inner();
                assert_eq!(
                    (r.saga_id.as_str(), r.order_id.as_str()),
                    (saga.saga_id.as_str(), saga.order_id.as_str()),
                    "the retry of {key} answers its order"
                );
            }
            (Ok(orch::SagaState::Compensated), Err(s)) => {
                let error = saga.error.as_ref().expect("a compensated checkout's error");
                assert_eq!(
                    (
                        code_name(s.code()),
                        reason_of(&s).map(|r| r.as_str().to_owned())
                    ),
                    (error.code.clone(), Some(error.reason.clone())),
                    "the retry of {key} answers its rejection: {s:?}"
                );
            }
            (state, again) => panic!("{key}: {state:?} answered {again:?}"),
        }
    }
}

/// A status code's name as the saga log records it (`FAILED_PRECONDITION`).
pub fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(ch.to_ascii_uppercase());
    }
    name
}

/// The orders of `customers`, all of them.
pub async fn order_count(c: &MeshClients, customers: &[String]) -> usize {
    let mut n = 0;
    for who in customers {
        n += orders_of(c, who).await.len();
    }
    n
}
/// Budgets of the partition scenarios: 1 s calls, a step out of budget
/// after 2.5 s (then the saga waits for its participant), recovery and
/// probes every 500 ms.
pub const PARTITION_ENGINE: &[&str] = &[
    "--call-timeout-ms",
    "1000",
    "--step-attempts",
    "1000",
    "--step-budget-ms",
    "2500",
    "--compensation-attempts",
    "1000",
    "--backoff-min-ms",
    "20",
    "--backoff-max-ms",
    "250",
    "--recovery-interval-ms",
    "500",
];

/// Customers of a burst, each granted [`GRANT`] points.
pub async fn customers(c: &MeshClients, u: &mut Universe, prefix: &str, n: usize) -> Vec<String> {
    let mut who = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        grant(c, u, &name).await;
        who.push(name);
    }
    who
}

/// Checkout `i` of a burst: one unit, every fourth of the scarce SKU (so
/// some are refused and compensate), every third redeeming points.
pub fn burst_order(
    prefix: &str,
    i: usize,
    who: &[String],
    sku: &str,
    scarce: &str,
) -> orch::PlaceOrderRequest {
    let sku = if i % 4 == 3 { scarce } else { sku };
    let points = if i.is_multiple_of(3) { REDEEM } else { 0 };
    place(
        &format!("{prefix}-{i}"),
        &who[i % who.len()],
        sku,
        "",
        points,
    )
}
