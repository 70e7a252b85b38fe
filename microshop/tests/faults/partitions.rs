//! Partitions on the network: the cut itself (silent), the participant
//! channels under it, the orchestrator cut off from inventory-svc mid-burst
//! (scenario 1) and the client cut off from the orchestrator while its
//! sagas run (scenario 2).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use microshop::invariants::{Universe, all_sagas};
use microshop_proto::{inventory::v1 as inv, orchestrator::v1 as orch};
use microshop_runtime::{Reason, errors::reason_of};
use tonic::Code;

use crate::{
    cluster::{
        Health, Svc, netns,
        process::{POLL, endpoint, serve},
        shop::*,
    },
    suite::*,
};

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
    .finish(Scenario::Check("the cut is silent"), begun);
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
        .finish(Scenario::Check("participant channels under a silent cut"), started);
    });
}

// ---------------------------------------------------------------------------
// 1. Orchestrator ↔ inventory, mid-burst
// ---------------------------------------------------------------------------

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
        tally.finish(Scenario::Numbered(1, "orchestrator-inventory partition"), started);
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
        tally.finish(
            Scenario::Numbered(2, "client-orchestrator partition"),
            started,
        );
    });
}
