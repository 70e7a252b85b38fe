//! The PlaceOrder rate limit: per customer with authentication on (it
//! kicks in and recovers), per peer address without.

use super::*;

/// Rate of the limit test: one call per 10 s after a burst of 2, so the
/// three calls that empty a bucket (cheap, refused by validation) fit in
/// its refill time on any runner. The refill arithmetic itself is tested
/// on a controlled clock (`runtime::limits` unit tests); here only that
/// the served limit refills at all.
const TEST_RATE: f64 = 0.1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn place_order_rate_limit_kicks_in_and_recovers() {
    let shop = Secured::start(Some(TEST_RATE)).await;
    let alice = token("alice", "customer");
    let bob = token("bob", "customer");
    // An empty cart is refused by the handler, after the limit: cheap calls.
    let empty = |who: &str| order_request("rl", who, &[], "", 0);
    for _ in 0..2 {
        expect_error(
            shop.place(&alice, empty("alice")).await,
            Code::InvalidArgument,
            Reason::InvalidRequest,
        );
    }
    let status = expect_error(
        shop.place(&alice, empty("alice")).await,
        Code::ResourceExhausted,
        Reason::RateLimited,
    );
    let retry = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs_f64(1.0 / TEST_RATE),
        "{retry:?}"
    );
    // Another customer has its own bucket.
    expect_error(
        shop.place(&bob, empty("bob")).await,
        Code::InvalidArgument,
        Reason::InvalidRequest,
    );
    // Alice is let through again once a token is back (refused calls take
    // none, so polling does not delay it).
    eventually(
        "alice's bucket refills",
        retry + Duration::from_secs(30),
        || async {
            match shop.place(&alice, empty("alice")).await {
                Err(s) if s.code() == Code::InvalidArgument => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_authentication_the_rate_limit_is_per_peer_ip() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = MeshConfig::ephemeral(dir.path());
    config.engine = test_engine();
    // One call per hour: no runner is slow enough to refill between the
    // two calls.
    config.server.limits.place_order_rate = 1.0 / 3600.0;
    config.server.limits.place_order_burst = 1;
    let mesh = Mesh::start(config).await.expect("the mesh starts");
    let clients = MeshClients::connect(&mesh.addrs, CONNECT_WITHIN)
        .await
        .expect("clients connect");
    let mut checkout = clients.checkout.clone();
    expect_error(
        checkout
            .place_order(order_request("ip-1", "alice", &[], "", 0))
            .await,
        Code::InvalidArgument,
        Reason::InvalidRequest,
    );
    // Another customer id from the same address shares the bucket.
    expect_error(
        checkout
            .place_order(order_request("ip-2", "bob", &[], "", 0))
            .await,
        Code::ResourceExhausted,
        Reason::RateLimited,
    );
    tokio::time::timeout(Duration::from_secs(15), mesh.shutdown())
        .await
        .expect("the mesh stops")
        .expect("no service failed");
}
