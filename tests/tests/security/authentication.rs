//! Authentication: no token, or a forged, expired, wrongly issued or
//! addressed, unknown-role or garbage one, is UNAUTHENTICATED at the
//! orchestrator and the participants alike; health needs no token.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_are_unauthenticated() {
    let shop = Secured::start(None).await;
    let request = || order_request("k-bad", "alice", &[("TSHIRT", 1)], "", 0);
    let no_token = shop.clients.checkout.clone().place_order(request()).await;
    expect_error(no_token, Code::Unauthenticated, Reason::Unauthenticated);

    let forged = token_with(
        "another-secret-0123456789-abcdefghijklmnop",
        "alice",
        "customer",
        ISSUER,
        AUDIENCE,
        600,
    );
    let expired = token_with(SECRET, "alice", "customer", ISSUER, AUDIENCE, -300);
    let wrong_issuer = token_with(SECRET, "alice", "customer", "https://evil", AUDIENCE, 600);
    let wrong_audience = token_with(SECRET, "alice", "customer", ISSUER, "other-app", 600);
    let unknown_role = token_with(SECRET, "alice", "root", ISSUER, AUDIENCE, 600);
    for (what, bad) in [
        ("forged", forged),
        ("expired", expired),
        ("wrong issuer", wrong_issuer),
        ("wrong audience", wrong_audience),
        ("unknown role", unknown_role),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let status = expect_error(
            shop.place(&bad, request()).await,
            Code::Unauthenticated,
            Reason::Unauthenticated,
        );
        assert!(
            status.message().contains("invalid or expired token"),
            "{what}: {}",
            status.message()
        );
        // Participants authenticate too.
        let direct = shop
            .clients
            .order
            .clone()
            .get_order(authed(
                ord::GetOrderRequest {
                    order_id: "any".into(),
                },
                &bad,
            ))
            .await;
        expect_error(direct, Code::Unauthenticated, Reason::Unauthenticated);
    }

    // Health stays open without a token.
    tonic_health::pb::health_client::HealthClient::new(
        microshop::mesh::connect(&shop.clients_url(), CONNECT_WITHIN)
            .await
            .expect("connect"),
    )
    .check(HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("health needs no token");
    shop.stop().await;
}
