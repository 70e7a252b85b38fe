//! loyalty-svc end to end: the real server (`run`) on a loopback port, a
//! fresh data directory per test, and the generated gRPC client.

use std::path::Path;

use loyalty_svc::{LoyaltyConfig, domain::Account, run};
use microshop_proto::loyalty::v1::{
    DeductPointsRequest, DeductPointsResponse, EarnPointsRequest, EarnPointsResponse,
    GetBalanceRequest, GetBalanceResponse, GrantPointsRequest, RefundPointsRequest,
    RefundPointsResponse, loyalty_service_client::LoyaltyServiceClient,
};
use microshop_runtime::{
    Reason,
    errors::{metadata_of, reason_of},
    testing::TestServer,
};
use tonic::{Code, Status, transport::Channel};

type Client = LoyaltyServiceClient<Channel>;

/// A running server and a client of it.
struct Server {
    client: Client,
    inner: TestServer,
}

impl Server {
    /// Serves `dir` on a fresh loopback port and connects to it.
    async fn start(dir: &Path) -> Self {
        let inner = TestServer::start(|listener, shutdown| {
            run(
                listener,
                LoyaltyConfig::new(microshop_runtime::testing::server_args(dir)),
                shutdown,
            )
        })
        .await;
        Self {
            client: LoyaltyServiceClient::new(inner.channel.clone()),
            inner,
        }
    }

    /// Stops the server gracefully and waits for it to finish.
    async fn stop(self) {
        drop(self.client);
        self.inner.stop().await;
    }
}

async fn balance(client: &mut Client, customer_id: &str) -> GetBalanceResponse {
    let balance = client
        .get_balance(GetBalanceRequest {
            customer_id: customer_id.into(),
        })
        .await
        .expect("get balance")
        .into_inner();
    assert!(
        Account::from(balance.clone()).is_consistent(),
        "ledger invariant broken: {balance:?}"
    );
    balance
}

async fn grant(client: &mut Client, customer_id: &str, points: i64) -> i64 {
    client
        .grant_points(GrantPointsRequest {
            customer_id: customer_id.into(),
            points,
        })
        .await
        .expect("grant points")
        .into_inner()
        .points
}

async fn deduct(
    client: &mut Client,
    saga_id: &str,
    customer_id: &str,
    points: i64,
) -> Result<DeductPointsResponse, Status> {
    client
        .deduct_points(DeductPointsRequest {
            saga_id: saga_id.into(),
            customer_id: customer_id.into(),
            points,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn refund(client: &mut Client, saga_id: &str) -> RefundPointsResponse {
    client
        .refund_points(RefundPointsRequest {
            saga_id: saga_id.into(),
        })
        .await
        .expect("refund points")
        .into_inner()
}

async fn earn(
    client: &mut Client,
    saga_id: &str,
    customer_id: &str,
    amount_paid: i64,
) -> EarnPointsResponse {
    earn_at(client, saga_id, customer_id, amount_paid, 0).await
}

/// EarnPoints at the order's recorded `rate` (0: the configured one).
async fn earn_at(
    client: &mut Client,
    saga_id: &str,
    customer_id: &str,
    amount_paid: i64,
    rate: i64,
) -> EarnPointsResponse {
    client
        .earn_points(EarnPointsRequest {
            saga_id: saga_id.into(),
            customer_id: customer_id.into(),
            amount_paid,
            earn_amount_per_point: rate,
        })
        .await
        .expect("earn points")
        .into_inner()
}

fn assert_rejected(status: &Status, code: Code, reason: Reason) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status), Some(reason), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_enrols_and_balance_reports_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;

    let unknown = balance(client, "ann").await;
    assert_eq!(
        unknown,
        GetBalanceResponse {
            customer_id: "ann".into(),
            ..GetBalanceResponse::default()
        }
    );

    assert_eq!(grant(client, "ann", 500).await, 500);
    assert_eq!(grant(client, "ann", 250).await, 750);
    let ann = balance(client, "ann").await;
    assert_eq!(
        ann,
        GetBalanceResponse {
            customer_id: "ann".into(),
            points: 750,
            member: true,
            granted: 750,
            ..GetBalanceResponse::default()
        }
    );

    // A zero grant only enrols.
    let enrol = client
        .grant_points(GrantPointsRequest {
            customer_id: "bob".into(),
            points: 0,
        })
        .await
        .expect("enrol")
        .into_inner();
    assert!(enrol.member);
    assert_eq!(enrol.points, 0);
    assert!(balance(client, "bob").await.member);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deduct_beyond_balance_is_insufficient_points() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    grant(client, "ann", 100).await;

    let status = deduct(client, "saga-1", "ann", 150).await.unwrap_err();
    assert_rejected(
        &status,
        Code::FailedPrecondition,
        Reason::InsufficientPoints,
    );
    assert_eq!(metadata_of(&status, "balance").as_deref(), Some("100"));
    assert_eq!(metadata_of(&status, "requested").as_deref(), Some("150"));
    assert_eq!(balance(client, "ann").await.points, 100);

    // The rejection is the saga's recorded answer: a retry replays it, even
    // once the balance would allow it, and takes nothing.
    grant(client, "ann", 100).await;
    let again = deduct(client, "saga-1", "ann", 150).await.unwrap_err();
    assert_rejected(&again, Code::FailedPrecondition, Reason::InsufficientPoints);
    assert_eq!(metadata_of(&again, "balance").as_deref(), Some("100"));
    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.deducted), (200, 0));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn non_members_cannot_redeem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;

    let status = deduct(client, "saga-1", "guest", 10).await.unwrap_err();
    assert_rejected(&status, Code::FailedPrecondition, Reason::NotAMember);
    assert!(
        status
            .message()
            .contains("only loyalty members can redeem points"),
        "{status:?}"
    );
    let guest = balance(client, "guest").await;
    assert!(!guest.member);
    assert_eq!(guest.points, 0);

    // A refund of the refused saga gives nothing back.
    assert_eq!(refund(client, "saga-1").await.points, 0);
    assert_eq!(balance(client, "guest").await.points, 0);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_deduct_has_one_effect_and_the_same_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    grant(client, "ann", 100).await;

    let first = deduct(client, "saga-1", "ann", 30).await.expect("deduct");
    assert_eq!(
        first,
        DeductPointsResponse {
            saga_id: "saga-1".into(),
            points: 30,
            balance: 70,
        }
    );
    let second = deduct(client, "saga-1", "ann", 30).await.expect("repeat");
    assert_eq!(second, first);
    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.deducted), (70, 30));

    // Refund gives it back once, however often it is delivered.
    assert_eq!(refund(client, "saga-1").await.points, 30);
    assert_eq!(refund(client, "saga-1").await.points, 30);
    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.deducted, ann.refunded), (100, 30, 30));

    // And the deduction, delivered again after its refund, still replays
    // its first answer without taking anything.
    assert_eq!(
        deduct(client, "saga-1", "ann", 30).await.expect("replay"),
        first
    );
    assert_eq!(balance(client, "ann").await.points, 100);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refund_before_deduct_is_a_null_compensation_and_blocks_the_deduct() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    grant(client, "ann", 100).await;

    let null = refund(client, "saga-1").await;
    assert_eq!(
        null,
        RefundPointsResponse {
            saga_id: "saga-1".into(),
            points: 0,
        }
    );

    let late = deduct(client, "saga-1", "ann", 40).await.unwrap_err();
    assert_rejected(
        &late,
        Code::FailedPrecondition,
        Reason::SagaAlreadyCompensated,
    );
    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.deducted, ann.refunded), (100, 0, 0));

    // A repeated refund is a no-op, and the late deduct stays refused.
    assert_eq!(refund(client, "saga-1").await.points, 0);
    let again = deduct(client, "saga-1", "ann", 40).await.unwrap_err();
    assert_rejected(
        &again,
        Code::FailedPrecondition,
        Reason::SagaAlreadyCompensated,
    );
    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.deducted, ann.refunded), (100, 0, 0));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn earn_follows_the_rate_once_per_saga() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    grant(client, "ann", 0).await;

    let first = earn(client, "saga-1", "ann", 250_000).await;
    assert_eq!(
        first,
        EarnPointsResponse {
            saga_id: "saga-1".into(),
            points: 2,
            balance: 2,
        }
    );
    assert_eq!(earn(client, "saga-1", "ann", 250_000).await, first);
    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.earned), (2, 2));

    // Below the rate earns nothing; a guest earns nothing and stays a guest.
    assert_eq!(earn(client, "saga-2", "ann", 99_999).await.points, 0);
    let guest = earn(client, "saga-3", "guest", 1_000_000).await;
    assert_eq!((guest.points, guest.balance), (0, 0));
    let guest = balance(client, "guest").await;
    assert_eq!((guest.points, guest.member), (0, false));
    assert_eq!(balance(client, "ann").await.points, 2);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn earn_uses_the_rate_the_order_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    grant(client, "ann", 0).await;

    // The order recorded 1 point per 100 (cents): 3,798 paid earns 37,
    // whatever the service's own rate (1 per 100,000) says.
    assert_eq!(
        earn_at(client, "saga-1", "ann", 3_798, 100).await.points,
        37
    );
    // A repeat replays the first credit, even with another rate.
    assert_eq!(earn_at(client, "saga-1", "ann", 3_798, 1).await.points, 37);
    // No rate given (a caller from before the field): the configured one.
    assert_eq!(earn_at(client, "saga-2", "ann", 250_000, 0).await.points, 2);
    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.earned), (39, 39));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_inputs_are_refused_without_effect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    grant(client, "ann", 100).await;
    let long_id = "x".repeat(200);

    let refused = [
        client
            .get_balance(GetBalanceRequest {
                customer_id: String::new(),
            })
            .await
            .map(drop),
        client
            .grant_points(GrantPointsRequest {
                customer_id: String::new(),
                points: 10,
            })
            .await
            .map(drop),
        client
            .grant_points(GrantPointsRequest {
                customer_id: "ann".into(),
                points: -5,
            })
            .await
            .map(drop),
        client
            .grant_points(GrantPointsRequest {
                customer_id: long_id.clone(),
                points: 10,
            })
            .await
            .map(drop),
        client
            .grant_points(GrantPointsRequest {
                customer_id: "ann".into(),
                points: 1_000_000_001,
            })
            .await
            .map(drop),
        deduct(client, "saga-1", "ann", -5).await.map(drop),
        deduct(client, "saga-2", "ann", 0).await.map(drop),
        deduct(client, "", "ann", 10).await.map(drop),
        deduct(client, "saga-3", &long_id, 10).await.map(drop),
        client
            .refund_points(RefundPointsRequest {
                saga_id: String::new(),
            })
            .await
            .map(drop),
        client
            .earn_points(EarnPointsRequest {
                saga_id: "saga-4".into(),
                customer_id: "ann".into(),
                amount_paid: -1,
                earn_amount_per_point: 0,
            })
            .await
            .map(drop),
        client
            .earn_points(EarnPointsRequest {
                saga_id: "saga-5".into(),
                customer_id: "ann".into(),
                amount_paid: 100,
                earn_amount_per_point: -1,
            })
            .await
            .map(drop),
    ];
    for (i, result) in refused.into_iter().enumerate() {
        let status = result.expect_err(&format!("request {i} must be refused"));
        assert_rejected(&status, Code::InvalidArgument, Reason::InvalidRequest);
    }

    let ann = balance(client, "ann").await;
    assert_eq!((ann.points, ann.granted, ann.deducted), (100, 100, 0));
    assert_eq!(balance(client, &"x".repeat(128)).await.points, 0);
    // The refused sagas recorded nothing: they still run normally.
    assert_eq!(
        deduct(client, "saga-1", "ann", 10)
            .await
            .expect("deduct")
            .balance,
        90
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deducts_never_overdraw() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    grant(&mut server.client, "ann", 100).await;

    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut client = server.client.clone();
            tokio::spawn(async move { deduct(&mut client, &format!("saga-{i}"), "ann", 10).await })
        })
        .collect();
    let mut succeeded = 0;
    for call in calls {
        match call.await.expect("deduct task") {
            Ok(done) => {
                assert_eq!(done.points, 10);
                succeeded += 1;
            }
            Err(status) => {
                assert_rejected(
                    &status,
                    Code::FailedPrecondition,
                    Reason::InsufficientPoints,
                );
            }
        }
    }
    assert_eq!(succeeded, 10);
    let ann = balance(&mut server.client, "ann").await;
    assert_eq!((ann.points, ann.deducted), (0, 100));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    grant(&mut server.client, "ann", 100).await;
    let deducted = deduct(&mut server.client, "saga-1", "ann", 30)
        .await
        .expect("deduct");
    earn(&mut server.client, "saga-2", "ann", 500_000).await;
    let before = balance(&mut server.client, "ann").await;
    assert_eq!(before.points, 75);
    server.stop().await;

    let mut server = Server::start(dir.path()).await;
    assert_eq!(balance(&mut server.client, "ann").await, before);
    // The barrier survived too: the saga's deduction replays.
    assert_eq!(
        deduct(&mut server.client, "saga-1", "ann", 30)
            .await
            .expect("replay"),
        deducted
    );
    assert_eq!(balance(&mut server.client, "ann").await, before);

    server.stop().await;
}
