//! No caller can mint Prometheus series: against `microshop up` (the four
//! services in one process, one `/metrics`), 1,000 calls to random made-up
//! methods (`/evil.SvcXXXX/M<i>`), plus unknown methods of real services
//! and real methods sent to the wrong server, add only the `_OTHER`
//! series; and after a real checkout no label carries its customer id,
//! SKU, order id, saga id or idempotency key. `microshop up` runs under the
//! shared process harness ([`cluster::up::Up`]). Every wait is bounded
//! polling.

mod cluster;

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::BuildHasher,
    net::SocketAddr,
    time::{Duration, Instant},
};

use cluster::{Svc, up::Up};
use microshop_proto::{
    inventory::v1::{PutProductRequest, inventory_service_client::InventoryServiceClient},
    loyalty::v1::{GrantPointsRequest, loyalty_service_client::LoyaltyServiceClient},
    orchestrator::v1::{
        LineItem, PlaceOrderRequest, ShippingAddress,
        checkout_service_client::CheckoutServiceClient,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, codegen::http::uri::PathAndQuery, transport::Channel};

const WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);
/// Calls to random unknown paths.
const UNKNOWN_CALLS: usize = 1_000;
/// The most lines the `_OTHER` calls may add to `/metrics`: one counter
/// series and one histogram series (its buckets, `_sum` and `_count`), for
/// the one status code they all get.
const MAX_NEW_LINES: usize = 20;
/// The only label names any series may have.
const LABEL_NAMES: &[&str] = &["service", "method", "code", "saga_type", "step", "le"];

/// `GET /metrics`, the body.
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
    body.to_owned()
}

/// Every sample line of a scrape, by series (name and labels), with its
/// value.
fn series(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.to_owned())
        })
        .collect()
}

/// The labels of a series, `name{a="x",b="y"}` → [(a, x), (b, y)].
fn labels(series: &str) -> Vec<(String, String)> {
    let Some((_, rest)) = series.split_once('{') else {
        return Vec::new();
    };
    let rest = rest.strip_suffix('}').expect("closing brace");
    rest.split("\",")
        .map(|pair| {
            let (name, value) = pair.split_once("=\"").expect("name=\"value\"");
            (name.to_owned(), value.trim_end_matches('"').to_owned())
        })
        .collect()
}

/// A unary call with an empty message to any path; its status code.
async fn call(channel: Channel, path: String) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let path = PathAndQuery::try_from(path).expect("a valid path");
    grpc.unary::<(), (), _>(
        tonic::Request::new(()),
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err("a made-up method is answered with an error")
    .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_unknown_methods_add_only_the_other_series() {
    let up = Up::start(&[], &[]).await;
    let orchestrator = up.channel(Svc::Orchestrator);
    let inventory = up.channel(Svc::Inventory);
    let loyalty = up.channel(Svc::Loyalty);
    let order = up.channel(Svc::Order);

    // A real checkout first, so that its ids would show if any label took
    // them.
    let (sku, customer, key) = ("CARD-SKU-7F3A", "card-customer-91", "card-idem-key-5");
    InventoryServiceClient::new(inventory.clone())
        .put_product(PutProductRequest {
            sku: sku.into(),
            name: "Cardinality mug".into(),
            unit_price: 120_000,
            stock: 5,
        })
        .await
        .expect("PutProduct");
    LoyaltyServiceClient::new(loyalty.clone())
        .grant_points(GrantPointsRequest {
            customer_id: customer.into(),
            points: 10,
        })
        .await
        .expect("GrantPoints");
    let mut place = tonic::Request::new(PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: vec![LineItem {
            sku: sku.into(),
            quantity: 1,
        }],
        coupon_code: String::new(),
        points_to_redeem: 0,
        shipping: Some(ShippingAddress {
            name: "Card Holder".into(),
            address: "1 Label Street, Hanoi".into(),
            phone: "+84 900 000 001".into(),
        }),
    });
    place.set_timeout(Duration::from_secs(30));
    let placed = CheckoutServiceClient::new(orchestrator.clone())
        .place_order(place)
        .await
        .expect("PlaceOrder")
        .into_inner();
    assert!(!placed.saga_id.is_empty() && !placed.order_id.is_empty());

    let before = scrape(up.metrics).await;
    let placed_ok = r#"microshop_rpc_server_requests_total{service="microshop.orchestrator.v1.CheckoutService",method="PlaceOrder",code="OK"}"#;
    assert_eq!(
        series(&before).get(placed_ok).map(String::as_str),
        Some("1"),
        "a method the server registers keeps its labels: {before}"
    );

    // 1,000 random made-up methods, spread over the four servers, and
    // the near misses: an unknown method of a real service, a real method
    // sent to a server that does not register it.
    let random = std::hash::RandomState::new();
    let channels = [&orchestrator, &inventory, &loyalty, &order];
    let mut paths: Vec<(Channel, String)> = (0..UNKNOWN_CALLS)
        .map(|i| {
            let svc = random.hash_one(i) & 0xffff_ffff;
            (channels[i % 4].clone(), format!("/evil.Svc{svc:08x}/M{i}"))
        })
        .collect();
    for i in 0..10 {
        paths.push((
            inventory.clone(),
            format!("/microshop.inventory.v1.InventoryService/Evil{i}"),
        ));
        paths.push((
            inventory.clone(),
            "/microshop.order.v1.OrderService/GetOrder".to_owned(),
        ));
    }
    let sent = paths.len();
    let mut calls = tokio::task::JoinSet::new();
    for chunk in paths.chunks(50) {
        let chunk = chunk.to_vec();
        calls.spawn(async move {
            for (channel, path) in chunk {
                assert_eq!(call(channel, path).await, Code::Unimplemented);
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("the calls ran");
    }

    // The counter is bumped before the answer leaves the server; poll
    // anyway rather than trust that ordering.
    let other = r#"microshop_rpc_server_requests_total{service="_OTHER",method="_OTHER",code="UNIMPLEMENTED"}"#;
    let deadline = Instant::now() + WITHIN;
    let after = loop {
        let body = scrape(up.metrics).await;
        if series(&body).get(other).map(String::as_str) == Some(&sent.to_string()) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "{other} never reached {sent}: {body}"
        );
        tokio::time::sleep(POLL).await;
    };

    let (before, after) = (series(&before), series(&after));
    let new: BTreeSet<&String> = after.keys().filter(|s| !before.contains_key(*s)).collect();
    eprintln!(
        "{sent} calls to unknown methods: /metrics went from {} to {} series, {} new: {new:#?}",
        before.len(),
        after.len(),
        new.len()
    );
    assert!(
        new.len() <= MAX_NEW_LINES,
        "{} new series for {sent} unknown calls: {new:#?}",
        new.len()
    );
    for s in &new {
        assert!(
            s.contains(r#"service="_OTHER",method="_OTHER""#),
            "a new series not under _OTHER: {s}"
        );
    }
    let label_sets: BTreeSet<Vec<(String, String)>> = new
        .iter()
        .map(|s| labels(s).into_iter().filter(|(n, _)| n != "le").collect())
        .collect();
    assert_eq!(label_sets.len(), 1, "{label_sets:#?}");

    // Every label is bounded: only the known label names, no value that
    // came from a request.
    let body = scrape(up.metrics).await;
    for needle in [
        sku,
        customer,
        key,
        placed.saga_id.as_str(),
        placed.order_id.as_str(),
        "evil",
        "Evil",
        "OrderService\",method=\"GetOrder\",code=\"UNIMPLEMENTED",
    ] {
        assert!(
            !body.contains(needle),
            "/metrics carries {needle:?}: {body}"
        );
    }
    for s in series(&body).keys() {
        for (name, value) in labels(s) {
            assert!(LABEL_NAMES.contains(&name.as_str()), "label {name} on {s}");
            if name == "service" {
                assert!(
                    value == "_OTHER"
                        || value.starts_with("microshop.")
                        || value.starts_with("grpc."),
                    "{s}"
                );
            }
        }
    }
}
