//! Faults below gRPC, over the real binary (issue 17): silent network
//! partitions, half-open connections, a wrong clock, a database that is
//! not up yet and a participant URL that reaches the wrong service.
//!
//! Every service is a `microshop serve` process in a network namespace of
//! its own, on one bridge; the test itself is a host of that network, so
//! its clients can be cut off too ([`cluster::netns`]: the cut drops
//! packets in the bridge, silently, and [`the_cut_is_silent`] proves it).
//! The processes are the shared harness's ([`cluster::Cluster`], with each
//! service's namespace address and `ip netns exec` prefix).
//!
//! Scenarios, each followed by the ARCHITECTURE §8 invariant check:
//! 1. orchestrator ↔ inventory partition mid-burst (and, on its own, the
//!    participant channels under a silent cut: keepalive, deadlines);
//! 2. client ↔ orchestrator partition while its sagas run;
//! 7. a participant URL that points at the wrong service.
//!
//! (Scenario 4, a full disk under a store, comes with the embedded storage
//! engine's rewrite.) The regressions of the bugs these found carry their
//! names: `participant_channels_give_up_a_silent_connection_...`. Each
//! test prints its numbers and the suite's so far: the last line printed
//! is the suite's summary (scenarios, faults applied, sagas driven,
//! invariant checks, violations).
//!
//! The suite needs root, `ip` and `nft`; without them it
//! is skipped with a note, except under `CI`, where it fails. Scenarios
//! run one at a time (a file lock), whichever runner runs them: each one
//! starts a whole mesh, and their timings (call timeouts, leases) must not
//! be squeezed by another's load on a 2-core machine.
//!
//! Nothing waits on a sleep for state: every wait is bounded polling (of
//! health, GetSaga/ListSagas, a participant's reads, a process's stderr).
//! Sleeps pace load and hold a fault for a minimum time, nothing else.

mod cluster;

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use cluster::{
    Cluster, ClusterBuilder, Health, Svc,
    netns::{self, Host, Net},
    process::{POLL, endpoint, serve},
    shop::*,
};
use microshop::{
    invariants::{self, Universe, all_sagas},
    mesh::MeshClients,
};
use microshop_proto::{inventory::v1 as inv, orchestrator::v1 as orch};
use microshop_runtime::{Reason, errors::reason_of};
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// The suite: one scenario at a time, its tally, the summary
// ---------------------------------------------------------------------------

/// Held while a scenario runs: scenarios run one at a time, in one process
/// or many (`flock` on a file of the target's temporary directory; the
/// lock goes with the file).
struct Serial {
    _lock: File,
}

fn serial() -> Serial {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults.lock");
    let file = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock().expect("lock the fault suite");
    Serial { _lock: file }
}

/// What one scenario did, for the suite's summary.
#[derive(Debug, Default)]
struct Tally {
    /// Faults applied: cuts, skewed clocks, databases down, bad URLs.
    faults: usize,
    /// Sagas the scenario drove.
    sagas: usize,
    /// Invariant checks passed.
    checks: usize,
    /// Invariant violations found (the scenario fails on the first).
    violations: usize,
}

/// The ledger of this run: one line per scenario that ended. Keyed by the
/// test runner's pid (nextest runs every test in a process of its own).
fn ledger() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "faults-ledger-{}.txt",
        std::os::unix::process::parent_id()
    ))
}

impl Tally {
    /// Checks ARCHITECTURE §8 over the mesh; a violation is counted, then
    /// fails the scenario.
    async fn invariants(&mut self, c: &MeshClients, u: &Universe, when: &str) {
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
    async fn count_sagas(&mut self, c: &MeshClients) {
        self.sagas = all_sagas(&mut c.admin.clone())
            .await
            .expect("ListSagas")
            .len();
    }

    fn record(&self, scenario: &str) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ledger())
            .expect("open the suite's ledger");
        writeln!(
            file,
            "{scenario}\t{}\t{}\t{}\t{}",
            self.faults, self.sagas, self.checks, self.violations
        )
        .expect("write the suite's ledger");
    }

    /// Records the scenario and prints its line and the suite's so far.
    fn finish(self, scenario: &str, started: Instant) {
        self.record(scenario);
        eprintln!(
            "fault scenario {scenario}: {} faults applied, {} sagas driven, {} invariant checks, \
             {} violations, in {:.1?}",
            self.faults,
            self.sagas,
            self.checks,
            self.violations,
            started.elapsed()
        );
        let file = File::open(ledger()).expect("read the suite's ledger");
        let (mut scenarios, mut total) = (0, Tally::default());
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            let fields: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
            scenarios += usize::from(fields[0] != "(failed)");
            total.faults += n(1);
            total.sagas += n(2);
            total.checks += n(3);
            total.violations += n(4);
        }
        eprintln!(
            "fault suite so far: {scenarios} scenarios, {} faults applied, {} sagas driven, \
             {} invariant checks, {} violations",
            total.faults, total.sagas, total.checks, total.violations
        );
    }
}

/// Waits (bounded) until no saga of the log is running or compensating:
/// the invariants hold only once nothing is in flight (expiry sagas, say).
async fn quiesce(c: &MeshClients) {
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
fn network(test: &str) -> Option<Net> {
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
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The hosts of a mesh: the test's own and one per service.
struct Hosts {
    client: Host,
    orchestrator: Host,
    inventory: Host,
    loyalty: Host,
    order: Host,
}

impl Hosts {
    fn new(net: &mut Net) -> Self {
        Self {
            client: net.host("client"),
            orchestrator: net.host("orch"),
            inventory: net.host("inventory"),
            loyalty: net.host("loyalty"),
            order: net.host("order"),
        }
    }

    fn of(&self, svc: Svc) -> &Host {
        match svc {
            Svc::Orchestrator => &self.orchestrator,
            Svc::Inventory => &self.inventory,
            Svc::Loyalty => &self.loyalty,
            Svc::Order => &self.order,
            Svc::Peer(_) => panic!("a peer has a host of its own"),
        }
    }

    /// Every service on its host, at its default port, embedded stores.
    fn cluster(&self) -> ClusterBuilder {
        let mut builder = Cluster::builder().embedded();
        for (svc, port) in [
            (Svc::Orchestrator, 50051),
            (Svc::Inventory, 50052),
            (Svc::Loyalty, 50053),
            (Svc::Order, 50054),
        ] {
            let host = self.of(svc);
            builder = builder
                .addr(svc, host.addr(port))
                .prefix(svc, host.prefix());
        }
        builder
    }
}

/// Whether `status` is the server's answer (it carries an ErrorInfo), not
/// the client's own deadline or a transport failure.
fn answered(status: &Status) -> bool {
    reason_of(status).is_some()
}

/// Polls ListSagas until every saga of `keys` exists and has ended;
/// returns them by key. Panics after `within`.
async fn wait_all_ended(
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
async fn retries_answer_outcomes(
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
fn code_name(code: Code) -> String {
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
async fn order_count(c: &MeshClients, customers: &[String]) -> usize {
    let mut n = 0;
    for who in customers {
        n += orders_of(c, who).await.len();
    }
    n
}

// ---------------------------------------------------------------------------
// The cut, and the participant channels under it
// ---------------------------------------------------------------------------

/// The cut the suite uses is silent: an established TCP connection stays
/// open through it (a read times out, no RST, no error) and carries on
/// after the heal, and a new connect hangs until its own timeout rather
/// than failing at once (no ENETUNREACH, EHOSTUNREACH or RST).
#[test]
fn the_cut_is_silent() {
    let Some(mut net) = network("the_cut_is_silent") else {
        return;
    };
    let _serial = serial();
    let begun = Instant::now();
    let client = net.host("client");
    let server = net.host("server");
    net.enter(&client);
    let addr = server.addr(7000);
    let listener =
        netns::within(&server, move || TcpListener::bind(addr)).expect("listen on the server");
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0_u8; 64];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => conn.write_all(&buf[..n]).expect("echo"),
            }
        }
    });
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    let wait = Duration::from_millis(1500);
    conn.set_read_timeout(Some(wait)).expect("read timeout");
    let mut buf = [0_u8; 4];
    conn.write_all(b"ping").expect("write");
    conn.read_exact(&mut buf).expect("the echo before the cut");

    net.cut(&client, &server);
    conn.write_all(b"pong")
        .expect("a write is buffered, not refused");
    let started = Instant::now();
    let read = conn.read(&mut buf);
    let waited = started.elapsed();
    match read {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a read through the cut must time out, not end: {other:?}"),
    }
    assert!(waited >= wait, "the read ended after {waited:?}");
    let started = Instant::now();
    let connect = TcpStream::connect_timeout(&addr, wait);
    let waited = started.elapsed();
    match connect {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => panic!("a connect through the cut must time out, not fail: {other:?}"),
    }
    assert!(waited >= wait, "the connect failed after {waited:?}");
    let dropped = net.dropped();
    assert!(dropped > 0, "the cut dropped nothing");

    net.heal(&client, &server);
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    conn.read_exact(&mut buf)
        .expect("the connection carries on after the heal");
    assert_eq!(&buf, b"pong");
    drop(conn);
    echo.join().expect("the echo thread");
    eprintln!(
        "silent cut: a read and a connect each waited their full {wait:?}; {dropped} packets dropped; \
         the connection resumed after the heal"
    );
    Tally {
        faults: net.cuts_made(),
        ..Tally::default()
    }
    .finish("the cut is silent", begun);
}

/// Regression (issue 17): the participant channels kept a silent
/// connection for 30 s (hyper's keepalive timeout of 20 s after a PING
/// every 10 s), every call meanwhile spending its whole timeout on it; and
/// a call made while a channel was connecting waited for the connect (1 s)
/// before its own timeout started. Now: given up within keepalive interval
/// plus timeout, calls then fail at once (UNAVAILABLE), none outlives its
/// deadline, and the first call after the heal succeeds.
#[test]
fn participant_channels_give_up_a_silent_connection_and_no_call_outlives_its_deadline() {
    let test = "participant_channels_give_up_a_silent_connection_and_no_call_outlives_its_deadline";
    let Some(mut net) = network(test) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let client = net.host("client");
    let inventory = net.host("inventory");
    net.enter(&client);
    runtime().block_on(async move {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let addr = inventory.addr(50052);
        let url = format!("http://{addr}");
        let mut process = serve(Svc::Inventory, addr, dir.path())
            .prefix(inventory.prefix())
            .arg("--insecure-no-auth")
            .spawn();
        process
            .wait_serving(&endpoint(&url, Duration::from_secs(1)), "", Duration::from_secs(30))
            .await
            .expect("inventory-svc serves");
        // Shorter than the connect timeout, so a call that waited for a
        // connect before its own timer started would show it.
        let timeout = Duration::from_millis(400);
        let slack = Duration::from_millis(150);
        let urls = orchestrator::ParticipantUrls {
            inventory: url.clone(),
            loyalty: url.clone(),
            order: url,
        };
        let participants = orchestrator::Participants::connect_lazy(&urls, timeout)
            .expect("the participant clients");
        let call = || {
            let p = participants.clone();
            async move {
                let t = Instant::now();
                let answer = p
                    .inventory
                    .clone()
                    .get_product(p.request(inv::GetProductRequest { sku: "NONE".into() }))
                    .await;
                (t.elapsed(), answer.map(drop))
            }
        };
        let (_, before) = call().await;
        assert_eq!(before.map_err(|s| s.code()), Err(Code::NotFound), "a call before the cut");

        net.cut(&client, &inventory);
        let cut = Instant::now();
        let given_up_within = orchestrator::participants::KEEPALIVE_INTERVAL
            + orchestrator::participants::KEEPALIVE_TIMEOUT
            + Duration::from_secs(1);
        let mut given_up = None;
        let mut calls = 0;
        while cut.elapsed() < given_up_within + Duration::from_secs(2) {
            let (took, answer) = call().await;
            calls += 1;
            let status = answer.expect_err("no answer through the cut");
            assert!(
                took <= timeout + slack,
                "a call through the cut took {took:?}, past its deadline of {timeout:?}: {status:?}"
            );
            match status.code() {
                Code::DeadlineExceeded => {}
                Code::Unavailable => {
                    given_up.get_or_insert(cut.elapsed());
                }
                other => panic!("a call through the cut ended {other:?}: {status:?}"),
            }
        }
        let given_up = given_up.expect("the silent connection was never given up");
        assert!(
            given_up <= given_up_within,
            "the silent connection was given up after {given_up:?}, not within {given_up_within:?}"
        );

        // A connect under way at the heal still waits for its SYN to be
        // sent again; the next one goes through.
        net.heal(&client, &inventory);
        let healed = Instant::now();
        let back_within = orchestrator::participants::CONNECT_TIMEOUT + timeout + slack;
        loop {
            let (took, answer) = call().await;
            assert!(took <= timeout + slack, "a call after the heal took {took:?}");
            match answer {
                Err(s) if s.code() == Code::NotFound => break,
                Err(s) if healed.elapsed() < back_within => {
                    assert!(
                        matches!(s.code(), Code::DeadlineExceeded | Code::Unavailable),
                        "{s:?}"
                    );
                }
                other => panic!("not answered within {back_within:?} of the heal: {other:?}"),
            }
        }
        eprintln!(
            "participant channel: {calls} calls through the cut, none over {timeout:?} + {slack:?}; \
             the silent connection given up after {given_up:.1?}; answered again {:.1?} after \
             the heal",
            healed.elapsed()
        );
        Tally {
            faults: net.cuts_made(),
            ..Tally::default()
        }
        .finish("participant channels", started);
    });
}

// ---------------------------------------------------------------------------
// 1. Orchestrator ↔ inventory, mid-burst
// ---------------------------------------------------------------------------

/// Budgets of the partition scenarios: 1 s calls, a step out of budget
/// after 2.5 s (then the saga waits for its participant), recovery and
/// probes every 500 ms.
const PARTITION_ENGINE: &[&str] = &[
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
async fn customers(c: &MeshClients, u: &mut Universe, prefix: &str, n: usize) -> Vec<String> {
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
fn burst_order(
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

#[test]
fn orchestrator_inventory_partition_mid_burst() {
    const BURST: usize = 24;
    const DEADLINE: Duration = Duration::from_secs(4);
    let test = "orchestrator_inventory_partition_mid_burst";
    let Some(mut net) = network(test) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let hosts = Hosts::new(&mut net);
    net.enter(&hosts.client);
    runtime().block_on(async move {
        let mut tally = Tally::default();
        let mut cluster = hosts.cluster().orchestrator(PARTITION_ENGINE).start().await;
        let c = cluster.clients();
        let mut u = Universe::default();
        let (sku, scarce) = ("P1-SKU", "P1-SCARCE");
        put_product(&c, &mut u, sku, BURST as i64).await;
        put_product(&c, &mut u, scarce, 3).await;
        let who = customers(&c, &mut u, "p1", 6).await;
        let requests: Vec<_> = (0..BURST)
            .map(|i| burst_order("p1", i, &who, sku, scarce))
            .collect();
        let keys: Vec<String> = requests.iter().map(|r| r.idempotency_key.clone()).collect();

        // The burst, paced (one checkout every 80 ms), each caller with a
        // 4 s deadline.
        let mut calls = Vec::new();
        for (i, req) in requests.iter().cloned().enumerate() {
            let c = cluster.clients();
            calls.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(80) * i as u32).await;
                let sent = Instant::now();
                let answer = c
                    .checkout
                    .clone()
                    .place_order(with_deadline(req, DEADLINE))
                    .await;
                (sent.elapsed(), answer)
            }));
        }
        // Cut once a third of the burst has begun: some checkouts are
        // done, some are in their inventory steps, the rest come during
        // the cut.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while all_sagas(&mut c.admin.clone())
            .await
            .map_or(0, |s| s.len())
            < BURST / 3
        {
            assert!(tokio::time::Instant::now() < deadline, "the burst never began");
            tokio::time::sleep(POLL).await;
        }
        net.cut(&hosts.orchestrator, &hosts.inventory);
        let cut = Instant::now();
        // Held until the whole burst is in and some saga ran out of its
        // step budget against the cut (it waits for inventory-svc), and
        // for longer than the channels' keepalive takes to give up a
        // silent connection, so the heal finds them reconnecting.
        let hold = orchestrator::participants::KEEPALIVE_INTERVAL
            + orchestrator::participants::KEEPALIVE_TIMEOUT
            + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let sagas = all_sagas(&mut c.admin.clone()).await.unwrap_or_default();
            let waiting = sagas.iter().any(|s| {
                s.waiting_for
                    .iter()
                    .any(|w| w == inventory_svc::SERVICE_NAME)
            });
            if sagas.len() == BURST && waiting && cut.elapsed() >= hold {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no saga waited for inventory-svc under the cut: {} sagas",
                sagas.len()
            );
            tokio::time::sleep(POLL).await;
        }
        let inventory = inventory_svc::SERVICE_NAME;
        assert!(
            !cluster
                .serving(Svc::Orchestrator, Health::Entry(inventory))
                .await,
            "the orchestrator's health still reports inventory-svc SERVING under the cut"
        );
        net.heal(&hosts.orchestrator, &hosts.inventory);
        let healed = Instant::now();
        let held = cut.elapsed();
        let ended = wait_all_ended(&c, &keys, Duration::from_secs(30)).await;
        let settled = healed.elapsed();

        // Every caller had an answer of the orchestrator's within its
        // deadline: the order, a rejection, or "still running, retry".
        let (mut ok, mut still, mut refused) = (0, 0, 0);
        for call in calls {
            let (took, answer) = call.await.expect("the call task");
            assert!(took < DEADLINE, "PlaceOrder took {took:?}, past its {DEADLINE:?}");
            match answer {
                Ok(_) => ok += 1,
                Err(s) if s.code() == Code::Unavailable && answered(&s) => {
                    assert_eq!(reason_of(&s), Some(Reason::DependencyUnavailable), "{s:?}");
                    still += 1;
                }
                Err(s) if s.code() == Code::FailedPrecondition && answered(&s) => refused += 1,
                Err(s) => panic!("PlaceOrder was not answered within its deadline: {s:?}"),
            }
        }
        assert!(still > 0, "no caller was told to retry: the cut caught no saga");
        retries_answer_outcomes(&c, &requests, &ended).await;
        let completed = ended
            .values()
            .filter(|s| s.state == orch::SagaState::Completed as i32)
            .count();
        assert_eq!(order_count(&c, &who).await, completed, "one order per completed saga");
        let timed_out = cluster
            .process(Svc::Orchestrator)
            .stderr()
            .iter()
            .filter(|l| l.contains("transient failure") && l.contains("DeadlineExceeded"))
            .count();
        tally.faults = net.cuts_made();
        tally.count_sagas(&c).await;
        tally.invariants(&c, &u, "the orchestrator ↔ inventory partition").await;
        eprintln!(
            "scenario 1: {BURST} checkouts, cut {held:.1?} ({} packets dropped); answered in time: \
             {ok} orders, {refused} refused, {still} still running; {timed_out} participant calls \
             ended at their deadline; all ended {settled:.1?} after the heal ({completed} completed, \
             {} compensated), with no operator action",
            net.dropped(),
            BURST - completed
        );
        tally.finish("1 orchestrator-inventory partition", started);
    });
}

// ---------------------------------------------------------------------------
// 2. Client ↔ orchestrator, while its sagas run
// ---------------------------------------------------------------------------

#[test]
fn client_orchestrator_partition_while_sagas_run() {
    const BURST: usize = 12;
    const DEADLINE: Duration = Duration::from_secs(5);
    let test = "client_orchestrator_partition_while_sagas_run";
    let Some(mut net) = network(test) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let hosts = Hosts::new(&mut net);
    net.enter(&hosts.client);
    runtime().block_on(async move {
        let mut tally = Tally::default();
        // CreateOrder takes 1.5 to 3 s, so the sagas are still running
        // when their client is cut off.
        let cluster = hosts
            .cluster()
            .orchestrator(["--call-timeout-ms", "5000", "--recovery-interval-ms", "500"])
            .args(
                Svc::Order,
                ["--faults", "delay=1,delay_ms=3000,only=CreateOrder"],
            )
            .start()
            .await;
        let c = cluster.clients();
        let mut u = Universe::default();
        let (sku, scarce) = ("P2-SKU", "P2-SCARCE");
        put_product(&c, &mut u, sku, BURST as i64).await;
        put_product(&c, &mut u, scarce, 1).await;
        let who = customers(&c, &mut u, "p2", 4).await;
        let requests: Vec<_> = (0..BURST)
            .map(|i| burst_order("p2", i, &who, sku, scarce))
            .collect();
        let keys: Vec<String> = requests.iter().map(|r| r.idempotency_key.clone()).collect();
        let mut calls = Vec::new();
        for req in requests.iter().cloned() {
            let c = cluster.clients();
            calls.push(tokio::spawn(async move {
                c.checkout
                    .clone()
                    .place_order(with_deadline(req, DEADLINE))
                    .await
            }));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while all_sagas(&mut c.admin.clone()).await.map_or(0, |s| s.len()) < BURST {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the burst never began"
            );
            tokio::time::sleep(POLL).await;
        }
        net.cut(&hosts.client, &hosts.orchestrator);
        let cut = Instant::now();
        assert!(
            !cluster.serving(Svc::Orchestrator, Health::Overall).await,
            "the client still reaches the orchestrator through the cut"
        );

        // The sagas finish without their client: the participants (which
        // the client still reaches) show every order and reservation.
        let expected_orders = requests.iter().filter(|r| r.items[0].sku == sku).count() + 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let orders = order_count(&c, &who).await;
            let reserved = product(&c, sku).await.reserved + product(&c, scarce).await.reserved;
            if orders == expected_orders && reserved == expected_orders as i64 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sagas did not finish while their client was cut off: {orders} orders, \
                 {reserved} units reserved, {expected_orders} expected"
            );
            tokio::time::sleep(POLL).await;
        }
        let finished_after = cut.elapsed();
        // The callers gave up at their own deadlines, no answer came back.
        let mut lost = 0;
        for call in calls {
            match call.await.expect("the call task") {
                Err(s) if !answered(&s) => lost += 1,
                _ => {}
            }
        }
        assert!(lost > 0, "every answer got through: the cut came too late");
        net.heal(&hosts.client, &hosts.orchestrator);
        let held = cut.elapsed();

        // A retry with each key after the heal, on a fresh connection as a
        // client would make, answers the outcome.
        let c = cluster.clients();
        let ended = wait_all_ended(&c, &keys, Duration::from_secs(10)).await;
        retries_answer_outcomes(&c, &requests, &ended).await;
        tally.faults = net.cuts_made();
        tally.count_sagas(&c).await;
        tally
            .invariants(&c, &u, "the client ↔ orchestrator partition")
            .await;
        eprintln!(
            "scenario 2: {BURST} checkouts, the client cut off {held:.1?} ({} packets dropped); \
             {lost} answers lost; the sagas finished {finished_after:.1?} into the cut \
             ({expected_orders} orders); every retry after the heal answered its outcome",
            net.dropped()
        );
        tally.finish("2 client-orchestrator partition", started);
    });
}

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
        tally.finish("7 participant URL of another service", started);
    });
}
