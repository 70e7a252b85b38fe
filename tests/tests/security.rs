//! Security over real servers: bearer JWT authentication (HS256 tokens made
//! here), role and ownership checks, and the per-customer PlaceOrder rate
//! limit. The orchestrator calls participants with a `service` token, so
//! sagas run end to end with authentication on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use microshop::mesh::{Mesh, MeshClients, MeshConfig};
use microshop_proto::{
    inventory::v1 as inv, loyalty::v1 as loy, orchestrator::v1 as orch, order::v1 as ord,
};
use microshop_runtime::Reason;
use microshop_tests::{CONNECT_WITHIN, eventually, expect_error, order_request, test_engine};
use tempfile::TempDir;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

const SECRET: &str = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz";
const ISSUER: &str = "https://auth.test.microshop";
const AUDIENCE: &str = "microshop-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// A token signed with `secret`; `exp` is `now + ttl` (negative: past).
fn token_with(secret: &str, sub: &str, role: &str, iss: &str, aud: &str, ttl: i64) -> String {
    let exp = now().saturating_add_signed(ttl);
    let claims = serde_json::json!({
        "sub": sub,
        "role": role,
        "iss": iss,
        "aud": aud,
        "iat": now(),
        "exp": exp,
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("the token encodes")
}

fn token(sub: &str, role: &str) -> String {
    token_with(SECRET, sub, role, ISSUER, AUDIENCE, 600)
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

struct Secured {
    mesh: Option<Mesh>,
    clients: MeshClients,
    _dir: TempDir,
}

impl Secured {
    /// A mesh with authentication on; `rate` turns on the PlaceOrder limit
    /// (calls per second, burst 2).
    async fn start(rate: Option<f64>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let secret = dir.path().join("jwt-secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("write the secret");
        let service_token = dir.path().join("service-token");
        std::fs::write(&service_token, token("orchestrator", "service"))
            .expect("write the service token");
        let mut config = MeshConfig::ephemeral(dir.path().join("data"));
        config.engine = test_engine();
        let auth = &mut config.server.auth;
        auth.auth_hs256_secret_file = Some(secret);
        auth.auth_issuer = Some(ISSUER.into());
        auth.auth_audience = Some(AUDIENCE.into());
        auth.auth_service_token_file = Some(service_token);
        if let Some(rate) = rate {
            config.server.limits.place_order_rate = rate;
            config.server.limits.place_order_burst = 2;
        }
        let mesh = Mesh::start(config).await.expect("the mesh starts");
        let clients = MeshClients::connect(&mesh.addrs, CONNECT_WITHIN)
            .await
            .expect("clients connect");
        Self {
            mesh: Some(mesh),
            clients,
            _dir: dir,
        }
    }

    async fn seed(&self) {
        let admin = token("ops", "admin");
        self.clients
            .inventory
            .clone()
            .put_product(authed(
                inv::PutProductRequest {
                    sku: "TSHIRT".into(),
                    name: "Cotton T-shirt".into(),
                    unit_price: 150_000,
                    stock: 100,
                },
                &admin,
            ))
            .await
            .expect("admin puts a product");
        for customer in ["alice", "bob"] {
            self.clients
                .loyalty
                .clone()
                .grant_points(authed(
                    loy::GrantPointsRequest {
                        customer_id: customer.into(),
                        points: 100,
                    },
                    &admin,
                ))
                .await
                .expect("admin grants points");
        }
    }

    async fn place(
        &self,
        token: &str,
        request: orch::PlaceOrderRequest,
    ) -> Result<orch::PlaceOrderResponse, Status> {
        self.clients
            .checkout
            .clone()
            .place_order(authed(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn stop(mut self) {
        if let Some(mesh) = self.mesh.take() {
            tokio::time::timeout(Duration::from_secs(15), mesh.shutdown())
                .await
                .expect("the mesh stops")
                .expect("no service failed");
        }
    }
}

/// Asserts nothing of `secrets` appears in the status's message or details.
#[track_caller]
fn assert_leaks_nothing(status: &Status, secrets: &[&str]) {
    let details = String::from_utf8_lossy(status.details()).into_owned();
    for secret in secrets {
        assert!(
            !status.message().contains(secret) && !details.contains(secret),
            "the error leaks {secret:?}: {:?} / {details:?}",
            status.message()
        );
    }
}

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

impl Secured {
    fn clients_url(&self) -> String {
        self.mesh.as_ref().expect("running").orchestrator_url()
    }

    /// Asserts (reading with `admin`'s token) that the shop is as
    /// [`Secured::seed`] left it, with nothing the denied calls of
    /// `admin_rpcs_need_the_admin_role` would have made.
    async fn assert_untouched(&self, admin: &str) {
        let c = &self.clients;
        let tshirt = c
            .inventory
            .clone()
            .get_product(authed(
                inv::GetProductRequest {
                    sku: "TSHIRT".into(),
                },
                admin,
            ))
            .await
            .expect("admin reads the product")
            .into_inner();
        assert_eq!(
            (tshirt.stock, tshirt.available, tshirt.reserved, tshirt.sold),
            (100, 100, 0, 0),
            "a denied ReserveStock reserved nothing: {tshirt:?}"
        );
        let free = c
            .inventory
            .clone()
            .get_product(authed(inv::GetProductRequest { sku: "FREE".into() }, admin))
            .await;
        expect_error(free, Code::NotFound, Reason::UnknownSku);
        let alice = c
            .loyalty
            .clone()
            .get_balance(authed(
                loy::GetBalanceRequest {
                    customer_id: "alice".into(),
                },
                admin,
            ))
            .await
            .expect("admin reads a balance")
            .into_inner();
        assert_eq!(
            (alice.points, alice.granted),
            (100, 100),
            "a denied GrantPoints granted nothing: {alice:?}"
        );
        let coupon = c
            .order
            .clone()
            .get_coupon(authed(
                ord::GetCouponRequest {
                    code: "ALL100".into(),
                },
                admin,
            ))
            .await;
        expect_error(coupon, Code::NotFound, Reason::UnknownCoupon);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customers_act_only_on_their_own_orders_and_points() {
    let shop = Secured::start(None).await;
    shop.seed().await;
    let alice = token("alice", "customer");
    let bob = token("bob", "customer");

    // Alice's own order, redeeming her own points: the saga runs end to end
    // (the orchestrator's service token is accepted by the participants).
    let placed = shop
        .place(
            &alice,
            order_request("a-1", "alice", &[("TSHIRT", 1)], "", 10),
        )
        .await
        .expect("alice places her own order");
    let order_id = placed.order_id.clone();
    assert!(!order_id.is_empty());

    // Alice ordering (and spending points) for Bob.
    let status = expect_error(
        shop.place(
            &alice,
            order_request("a-2", "bob", &[("TSHIRT", 1)], "", 10),
        )
        .await,
        Code::PermissionDenied,
        Reason::PermissionDenied,
    );
    assert_leaks_nothing(&status, &["bob"]);

    // Bob reading, cancelling and paying Alice's order.
    let read = shop
        .clients
        .order
        .clone()
        .get_order(authed(
            ord::GetOrderRequest {
                order_id: order_id.clone(),
            },
            &bob,
        ))
        .await;
    let status = expect_error(read, Code::PermissionDenied, Reason::PermissionDenied);
    assert_leaks_nothing(&status, &[&order_id, "alice", "TSHIRT"]);
    let list = shop
        .clients
        .order
        .clone()
        .list_orders(authed(
            ord::ListOrdersRequest {
                customer_id: "alice".into(),
                page_size: 0,
                page_token: String::new(),
            },
            &bob,
        ))
        .await;
    expect_error(list, Code::PermissionDenied, Reason::PermissionDenied);
    let cancel = shop
        .clients
        .checkout
        .clone()
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: order_id.clone(),
                reason: "not mine".into(),
            },
            &bob,
        ))
        .await;
    let status = expect_error(cancel, Code::PermissionDenied, Reason::PermissionDenied);
    assert_leaks_nothing(&status, &[&order_id, "alice", "TSHIRT"]);
    let pay = shop
        .clients
        .checkout
        .clone()
        .confirm_payment(authed(
            orch::ConfirmPaymentRequest {
                order_id: order_id.clone(),
                payment_ref: "PAY-BOB".into(),
            },
            &bob,
        ))
        .await;
    let status = expect_error(pay, Code::PermissionDenied, Reason::PermissionDenied);
    assert_leaks_nothing(&status, &[&order_id, "alice", "TSHIRT"]);
    // An unknown order looks the same as another customer's.
    let unknown = shop
        .clients
        .checkout
        .clone()
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: "no-such-order".into(),
                reason: String::new(),
            },
            &bob,
        ))
        .await;
    expect_error(unknown, Code::PermissionDenied, Reason::PermissionDenied);
    // Bob reading Alice's balance.
    let balance = shop
        .clients
        .loyalty
        .clone()
        .get_balance(authed(
            loy::GetBalanceRequest {
                customer_id: "alice".into(),
            },
            &bob,
        ))
        .await;
    expect_error(balance, Code::PermissionDenied, Reason::PermissionDenied);

    // Alice's order is untouched, and she can read and cancel it.
    let order = shop
        .clients
        .order
        .clone()
        .get_order(authed(
            ord::GetOrderRequest {
                order_id: order_id.clone(),
            },
            &alice,
        ))
        .await
        .expect("alice reads her order")
        .into_inner()
        .order
        .expect("an order");
    assert_eq!(order.status, ord::OrderStatus::PendingPayment as i32);
    shop.clients
        .checkout
        .clone()
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: order_id.clone(),
                reason: "changed my mind".into(),
            },
            &alice,
        ))
        .await
        .expect("alice cancels her own order");

    // A guest checks out for itself but never redeems points.
    let guest = token("guest-42", "guest");
    let status = expect_error(
        shop.place(
            &guest,
            order_request("g-1", "guest-42", &[("TSHIRT", 1)], "", 1),
        )
        .await,
        Code::PermissionDenied,
        Reason::PermissionDenied,
    );
    assert_leaks_nothing(&status, &["guest-42"]);
    shop.place(
        &guest,
        order_request("g-2", "guest-42", &[("TSHIRT", 1)], "", 0),
    )
    .await
    .expect("a guest checks out without points");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_rpcs_need_the_admin_role() {
    let shop = Secured::start(None).await;
    shop.seed().await;
    let alice = token("alice", "customer");
    let admin = token("ops", "admin");
    let c = &shop.clients;

    let denied = |r: Result<(), Status>| {
        expect_error(r, Code::PermissionDenied, Reason::PermissionDenied);
    };
    denied(
        c.inventory
            .clone()
            .put_product(authed(
                inv::PutProductRequest {
                    sku: "FREE".into(),
                    name: "Free".into(),
                    unit_price: 1,
                    stock: 1_000,
                },
                &alice,
            ))
            .await
            .map(drop),
    );
    denied(
        c.loyalty
            .clone()
            .grant_points(authed(
                loy::GrantPointsRequest {
                    customer_id: "alice".into(),
                    points: 1_000_000,
                },
                &alice,
            ))
            .await
            .map(drop),
    );
    let coupon = || ord::PutCouponRequest {
        code: "ALL100".into(),
        kind: ord::CouponKind::Percentage as i32,
        value: 100,
        usage_limit: 10,
    };
    denied(
        c.order
            .clone()
            .put_coupon(authed(coupon(), &alice))
            .await
            .map(drop),
    );
    denied(
        c.order
            .clone()
            .mark_shipped(authed(
                ord::MarkShippedRequest {
                    order_id: "x".into(),
                },
                &alice,
            ))
            .await
            .map(drop),
    );
    denied(
        c.admin
            .clone()
            .list_sagas(authed(orch::ListSagasRequest::default(), &alice))
            .await
            .map(drop),
    );
    // Saga RPCs belong to the orchestrator's service identity only.
    for who in [&alice, &admin] {
        denied(
            c.inventory
                .clone()
                .reserve_stock(authed(
                    inv::ReserveStockRequest {
                        saga_id: "forged-saga".into(),
                        items: vec![inv::StockItem {
                            sku: "TSHIRT".into(),
                            quantity: 100,
                        }],
                    },
                    who,
                ))
                .await
                .map(drop),
        );
    }

    // The denied calls changed nothing: no FREE product, Alice's points as
    // granted, TSHIRT's stock unreserved, no ALL100 coupon.
    shop.assert_untouched(&admin).await;

    // The admin can.
    c.order
        .clone()
        .put_coupon(authed(coupon(), &admin))
        .await
        .expect("admin puts a coupon");
    c.admin
        .clone()
        .list_sagas(authed(orch::ListSagasRequest::default(), &admin))
        .await
        .expect("admin lists sagas");
    shop.stop().await;
}

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

// ---------------------------------------------------------------------------
// mTLS between the orchestrator and the participants

/// Test PKI made now (no private key is checked in): a CA, the
/// participants' server certificate (localhost, 127.0.0.1), the
/// orchestrator's certificate (`orchestrator.microshop`, also localhost
/// for its own port), and a rogue client signed by the same CA.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write");
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, sans) in [
            ("participant", vec!["localhost", "127.0.0.1"]),
            (
                "orchestrator",
                vec!["orchestrator.microshop", "localhost", "127.0.0.1"],
            ),
            ("rogue", vec!["rogue.microshop"]),
        ] {
            let mut params =
                CertificateParams::new(sans.into_iter().map(str::to_owned).collect::<Vec<_>>())
                    .expect("params");
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())
                .expect("write");
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).expect("read")
    }

    fn server_args(&self, data_dir: &std::path::Path, who: &str) -> microshop_runtime::ServerArgs {
        let mut args = microshop_runtime::ServerArgs::with_data_dir(data_dir);
        args.tls.tls_cert_file = Some(self.path(&format!("{who}.pem")));
        args.tls.tls_key_file = Some(self.path(&format!("{who}.key")));
        args.tls.tls_ca_file = Some(self.path("ca.pem"));
        if who == "participant" {
            args.tls.tls_saga_client_name = Some("orchestrator.microshop".into());
        }
        args
    }

    /// A TLS channel to `addr`, presenting `client` (a cert name) if any.
    async fn channel(
        &self,
        addr: std::net::SocketAddr,
        client: Option<&str>,
    ) -> tonic::transport::Channel {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .domain_name("localhost");
        if let Some(name) = client {
            tls = tls.identity(Identity::from_pem(
                self.read(&format!("{name}.pem")),
                self.read(&format!("{name}.key")),
            ));
        }
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls config");
        let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
        loop {
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("cannot connect to {addr} over TLS: {e:?}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_participants_take_saga_calls_only_from_the_orchestrator() {
    use microshop_proto::{
        inventory::v1::inventory_service_client::InventoryServiceClient,
        orchestrator::v1::checkout_service_client::CheckoutServiceClient,
    };
    use microshop_tests::{any_port, listen};
    use orchestrator::{OrchestratorConfig, ParticipantUrls};
    use tokio::sync::watch;

    let pki = Pki::new();
    let data = tempfile::tempdir().expect("a data directory");
    let (stop, stopped) = watch::channel(false);
    let until = || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let inv_l = listen(any_port()).await;
    let loy_l = listen(any_port()).await;
    let ord_l = listen(any_port()).await;
    let orch_l = listen(any_port()).await;
    let (inv_a, loy_a, ord_a, orch_a) = (
        inv_l.local_addr().expect("addr"),
        loy_l.local_addr().expect("addr"),
        ord_l.local_addr().expect("addr"),
        orch_l.local_addr().expect("addr"),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let args = pki.server_args(data.path(), "participant");
    tasks.spawn(inventory_svc::run(
        inv_l,
        inventory_svc::InventoryConfig::new(args.clone()),
        until(),
    ));
    tasks.spawn(loyalty_svc::run(
        loy_l,
        loyalty_svc::LoyaltyConfig::new(args.clone()),
        until(),
    ));
    tasks.spawn(order_svc::run(
        ord_l,
        order_svc::OrderConfig::new(args),
        until(),
    ));
    let mut config = OrchestratorConfig::new(
        pki.server_args(data.path(), "orchestrator"),
        ParticipantUrls {
            inventory: format!("https://{inv_a}"),
            loyalty: format!("https://{loy_a}"),
            order: format!("https://{ord_a}"),
        },
    );
    config.engine = test_engine();
    tasks.spawn(orchestrator::run(orch_l, config, until()));

    // Admin RPCs need no client certificate (authentication is off here).
    let mut inventory = InventoryServiceClient::new(pki.channel(inv_a, None).await);
    inventory
        .put_product(inv::PutProductRequest {
            sku: "TSHIRT".into(),
            name: "Cotton T-shirt".into(),
            unit_price: 150_000,
            stock: 10,
        })
        .await
        .expect("put a product over TLS");

    // The orchestrator's saga calls go through, over mTLS.
    let mut checkout = CheckoutServiceClient::new(pki.channel(orch_a, None).await);
    checkout
        .place_order(order_request("m-1", "alice", &[("TSHIRT", 1)], "", 0))
        .await
        .expect("the saga runs over mTLS");

    // A direct saga call without the orchestrator's certificate is refused:
    // without a client certificate, and with another one from the same CA.
    let reserve = || inv::ReserveStockRequest {
        saga_id: "forged-saga".into(),
        items: vec![inv::StockItem {
            sku: "TSHIRT".into(),
            quantity: 9,
        }],
    };
    for client in [None, Some("rogue")] {
        let mut direct = InventoryServiceClient::new(pki.channel(inv_a, client).await);
        expect_error(
            direct.reserve_stock(reserve()).await,
            Code::PermissionDenied,
            Reason::PermissionDenied,
        );
    }
    // The stock is untouched by the refused calls: 10 - 1 sold-pending.
    let product = inventory
        .get_product(inv::GetProductRequest {
            sku: "TSHIRT".into(),
        })
        .await
        .expect("get the product")
        .into_inner();
    assert_eq!(product.available, 9, "{product:?}");

    let _ = stop.send(true);
    while let Some(joined) = tasks.join_next().await {
        joined.expect("no panic").expect("no service failed");
    }
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

/// Idempotency keys are scoped per customer (the old shop's keys were
/// `order_${userId}_${Date.now()}`, easy to guess): with authentication
/// on, bob's checkout under the key alice used gets his own order, and the
/// refusal of a reused key never says another customer used it; alice
/// reusing her key with another cart still gets ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_customers_may_use_one_idempotency_key() {
    let secured = Secured::start(None).await;
    secured.seed().await;
    let (alice, bob) = (token("alice", "customer"), token("bob", "customer"));
    let hers = secured
        .place(
            &alice,
            order_request("k-shared", "alice", &[("TSHIRT", 1)], "", 0),
        )
        .await
        .expect("alice's checkout");
    let his = secured
        .place(
            &bob,
            order_request("k-shared", "bob", &[("TSHIRT", 2)], "", 0),
        )
        .await
        .expect("bob's checkout under the same key is his own");
    assert_ne!(hers.saga_id, his.saga_id);
    assert_ne!(hers.order_id, his.order_id);
    assert_eq!(his.order.expect("his order").customer_id, "bob");
    // Each retry answers its own customer's order.
    let again = secured
        .place(
            &alice,
            order_request("k-shared", "alice", &[("TSHIRT", 1)], "", 0),
        )
        .await
        .expect("alice's retry");
    assert_eq!(again.order_id, hers.order_id);
    let again = secured
        .place(
            &bob,
            order_request("k-shared", "bob", &[("TSHIRT", 2)], "", 0),
        )
        .await
        .expect("bob's retry");
    assert_eq!(again.order_id, his.order_id);
    // Alice's key with another cart is still a conflict.
    let status = secured
        .place(
            &alice,
            order_request("k-shared", "alice", &[("TSHIRT", 3)], "", 0),
        )
        .await
        .expect_err("a reused key with another cart");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(
        microshop_runtime::errors::reason_of(&status),
        Some(Reason::IdempotencyKeyReused)
    );
    assert!(
        !status.message().contains("bob") && !status.message().contains(&his.saga_id),
        "{}",
        status.message()
    );
    secured.stop().await;
}
