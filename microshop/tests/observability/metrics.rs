//! Metrics: `/metrics` counters move as orders succeed and are rejected.

use super::*;

/// `GET /metrics` at `addr`, the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` (name and labels exactly as exposed),
/// 0 when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Waits until every `(service, series, at least)` holds on `/metrics`.
async fn wait_metrics(cluster: &Cluster, expect: &[(Svc, &str, f64)]) {
    let deadline = Instant::now() + SEEN_WITHIN;
    loop {
        let mut missing = Vec::new();
        for (svc, series, want) in expect {
            let body = scrape(cluster.metrics_addr(*svc)).await;
            let got = sample(&body, series);
            if got < *want {
                missing.push(format!("{svc:?} {series} = {got}, want {want}"));
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not move: {missing:#?}"
        );
        sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_orders_succeed_and_fail() {
    let cluster = start(None, None).await;
    seed(&cluster, "METRIC-1", 3, "carol").await;

    let o = Svc::Orchestrator;
    let i = Svc::Inventory;
    let started = r#"microshop_sagas_started_total{saga_type="place-order"}"#;
    let completed = r#"microshop_sagas_completed_total{saga_type="place-order"}"#;
    let compensated = r#"microshop_sagas_compensated_total{saga_type="place-order"}"#;
    let place_ok = r#"microshop_rpc_server_requests_total{service="microshop.orchestrator.v1.CheckoutService",method="PlaceOrder",code="OK"}"#;
    let place_rejected = r#"microshop_rpc_server_requests_total{service="microshop.orchestrator.v1.CheckoutService",method="PlaceOrder",code="FAILED_PRECONDITION"}"#;
    let reserve_ok = r#"microshop_rpc_server_requests_total{service="microshop.inventory.v1.InventoryService",method="ReserveStock",code="OK"}"#;
    let reserve_count = r#"microshop_rpc_server_duration_seconds_count{service="microshop.inventory.v1.InventoryService",method="ReserveStock",code="OK"}"#;
    let stock_outs = "microshop_stock_out_rejections_total";
    let releases =
        r#"microshop_saga_compensations_total{saga_type="place-order",step="release-stock"}"#;
    let step_count = r#"microshop_saga_step_duration_seconds_count{saga_type="place-order",step="reserve-stock"}"#;

    // Nothing yet: a fresh process has no saga series, but it exposes the
    // dead-letter gauge and ends as OpenMetrics does.
    let before = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(sample(&before, started), 0.0, "{before}");
    assert!(before.contains("microshop_sagas_dead_letter 0"), "{before}");
    assert!(before.ends_with("# EOF\n"));

    checkout(&cluster)
        .place_order(with_deadline(order(
            "metrics-ok",
            "carol",
            "METRIC-1",
            1,
            0,
        )))
        .await
        .expect("PlaceOrder");
    wait_metrics(
        &cluster,
        &[
            (o, started, 1.0),
            (o, completed, 1.0),
            (o, place_ok, 1.0),
            (o, step_count, 1.0),
            (i, reserve_ok, 1.0),
            (i, reserve_count, 1.0),
        ],
    )
    .await;
    let body = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(sample(&body, compensated), 0.0);

    let status = checkout(&cluster)
        .place_order(with_deadline(order(
            "metrics-out",
            "carol",
            "METRIC-1",
            50,
            0,
        )))
        .await
        .expect_err("out of stock");
    assert_eq!(status.code(), Code::FailedPrecondition);
    wait_metrics(
        &cluster,
        &[
            (o, started, 2.0),
            (o, compensated, 1.0),
            (o, place_rejected, 1.0),
            (o, releases, 1.0),
            (i, stock_outs, 1.0),
        ],
    )
    .await;
    let body = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(
        sample(&body, completed),
        1.0,
        "the rejection completed nothing"
    );
    assert_eq!(sample(&body, place_ok), 1.0);

    // A retry of the successful order replays it: no new saga.
    checkout(&cluster)
        .place_order(with_deadline(order(
            "metrics-ok",
            "carol",
            "METRIC-1",
            1,
            0,
        )))
        .await
        .expect("replayed PlaceOrder");
    wait_metrics(&cluster, &[(o, place_ok, 2.0)]).await;
    let body = scrape(cluster.metrics_addr(o)).await;
    assert_eq!(sample(&body, started), 2.0, "a replay starts no saga");

    // Anything but GET /metrics is refused.
    let mut stream = tokio::net::TcpStream::connect(cluster.metrics_addr(o))
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 404"));
}
