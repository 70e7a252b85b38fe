//! `microshop sagas` over the real binary against real processes.
//!
//! - Without a server: usage errors exit 2, an unreachable orchestrator
//!   and an unreadable token file exit 1 with a message saying what to do.
//! - Against `microshop up`: COMPLETED place, confirm and cancel sagas and
//!   a COMPENSATED (out of stock) one; `list` with every filter and
//!   paging, `show`, `--json` shapes, retry as a reported no-op, abort of
//!   an ended saga refused (exit 1), `--dry-run`, the no-terminal refusal
//!   (exit 2) and "nothing matches" (exit 0).
//! - Against a second orchestrator (`microshop serve orchestrator`, TLS
//!   and JWT authentication on) that uses `up`'s inventory and order
//!   services but a loyalty URL nothing listens on: checkouts redeeming
//!   points wait for loyalty-svc (RUNNING with `waitingFor`). Retry and
//!   abort them, single and bulk, with the admin token's `sub` in their
//!   history; the CA is checked and bad tokens are refused.
//!
//! The processes and the CLI runs go through the shared harness
//! (`cluster`). Every wait is bounded polling (health, or the CLI process
//! exiting); the CLI runs with stdin from /dev/null, so it never has a
//! terminal.
//!
//! A module per case (`usage`, `on_up`, `waiting`); the processes,
//! credentials and gRPC helpers they share are here.

#[path = "../cluster/mod.rs"]
mod cluster;
mod on_up;
mod usage;
mod waiting;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use cluster::{
    READY_WITHIN, Svc,
    cli::{ids, sagas_with as sagas},
    process::{Process, free_addr, serve, start_on_free_port_with},
    up::Up,
};
use microshop_proto::{
    inventory::v1::{self as inv, inventory_service_client::InventoryServiceClient},
    loyalty::v1::{self as loy, loyalty_service_client::LoyaltyServiceClient},
    orchestrator::v1::{self as orch, checkout_service_client::CheckoutServiceClient},
};
use microshop_runtime::errors::metadata_of;
use tonic::{
    Request,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

// ---------------------------------------------------------------------------
// Processes: `microshop up` is the shared harness's; the lone orchestrator
// (TLS, JWT, a dead loyalty URL) is spawned and awaited through it too.
// ---------------------------------------------------------------------------

/// A channel to `url`, TLS-verified against `ca` for `https://`.
fn endpoint(url: &str, ca: Option<&[u8]>) -> Endpoint {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .expect("a TLS config");
    }
    endpoint
}

/// A lone orchestrator against `up`'s inventory and order services and a
/// loyalty URL nothing listens on, with TLS and HS256 authentication, and
/// budgets that make a checkout redeeming points wait within a second.
/// Recovery passes are 10 minutes apart, so nothing but the CLI drives a
/// waiting saga during the test.
struct LoneOrchestrator {
    _proc: Process,
    url: String,
}

impl LoneOrchestrator {
    async fn start(dir: &Path, up: &Up, auth: &Auth, tls: &TlsFiles) -> Self {
        let dead_loyalty = free_addr();
        let path = |p: &Path| p.display().to_string();
        let args: Vec<String> = [
            "--inventory-url",
            &format!("http://{}", up.addr(Svc::Inventory)),
            "--order-url",
            &format!("http://{}", up.addr(Svc::Order)),
            "--loyalty-url",
            &format!("http://{dead_loyalty}"),
            "--auth-hs256-secret-file",
            &path(&auth.secret_file),
            "--auth-issuer",
            ISSUER,
            "--auth-audience",
            AUDIENCE,
            "--tls-cert-file",
            &path(&tls.cert),
            "--tls-key-file",
            &path(&tls.key),
            "--step-attempts",
            "3",
            "--step-budget-ms",
            "300",
            "--backoff-min-ms",
            "10",
            "--backoff-max-ms",
            "50",
            "--call-timeout-ms",
            "300",
            "--compensation-attempts",
            "2",
            "--recovery-interval-ms",
            "600000",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut attempt = 0;
        let (proc, addr) = start_on_free_port_with(
            |addr| {
                attempt += 1;
                serve(
                    Svc::Orchestrator,
                    addr,
                    &dir.join(format!("lone-{attempt}")),
                )
                .args(&args)
                .name(format!("lone-orchestrator-{attempt}"))
            },
            |addr| endpoint(&format!("https://{addr}"), Some(&tls.ca_pem)),
            orchestrator::SERVICE_NAME,
            READY_WITHIN,
        )
        .await
        .unwrap_or_else(|why| panic!("the lone orchestrator did not start: {why}"));
        Self {
            _proc: proc,
            url: format!("https://{addr}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Credentials: a CA and a server certificate, HS256 tokens
// ---------------------------------------------------------------------------

const SECRET: &str = "sagas-cli-test-secret-0123456789-abcdefghij";
const ISSUER: &str = "https://auth.test.microshop";
const AUDIENCE: &str = "microshop-test";

/// PEM files of a CA and of a server certificate it signed for 127.0.0.1.
struct TlsFiles {
    ca: PathBuf,
    ca_pem: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA (self-signed) and a certificate for `localhost` / `127.0.0.1` it
/// signed, written under `dir` as `NAME-*`.
fn make_tls(dir: &Path, name: &str) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let files = TlsFiles {
        ca: dir.join(format!("{name}-ca.pem")),
        ca_pem: ca_cert.pem().into_bytes(),
        cert: dir.join(format!("{name}-server.pem")),
        key: dir.join(format!("{name}-server.key")),
    };
    std::fs::write(&files.ca, &files.ca_pem).expect("write the CA");
    std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
    std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
    files
}

/// The HS256 secret file and token files of the test.
struct Auth {
    secret_file: PathBuf,
    /// `sub` ops-alice, role admin.
    admin_token: String,
    admin_file: PathBuf,
    /// `sub` dave, role customer.
    customer_file: PathBuf,
    /// Not a JWT.
    garbage_file: PathBuf,
}

fn token(sub: &str, role: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = serde_json::json!({
        "sub": sub, "role": role, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3_600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token")
}

fn make_auth(dir: &Path) -> Auth {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a credential file");
        path
    };
    let admin_token = token("ops-alice", "admin");
    Auth {
        secret_file: write("jwt-secret", &format!("{SECRET}\n")),
        admin_file: write("admin.jwt", &format!("{admin_token}\n")),
        admin_token,
        customer_file: write("customer.jwt", &token("dave", "customer")),
        garbage_file: write("garbage.jwt", "not-a-token\n"),
    }
}

// ---------------------------------------------------------------------------
// Making sagas over gRPC
// ---------------------------------------------------------------------------

fn place(
    key: &str,
    customer: &str,
    sku: &str,
    quantity: i64,
    points: i64,
) -> orch::PlaceOrderRequest {
    orch::PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: vec![orch::LineItem {
            sku: sku.into(),
            quantity,
        }],
        coupon_code: String::new(),
        points_to_redeem: points,
        shipping: Some(orch::ShippingAddress {
            name: customer.into(),
            address: "1 Main St".into(),
            phone: "0900000000".into(),
        }),
    }
}

async fn put_product(inventory: SocketAddr, sku: &str, stock: i64) {
    let channel = endpoint(&format!("http://{inventory}"), None)
        .connect()
        .await
        .expect("connect to inventory-svc");
    InventoryServiceClient::new(channel)
        .put_product(inv::PutProductRequest {
            sku: sku.into(),
            name: sku.into(),
            unit_price: 100_000,
            stock,
        })
        .await
        .expect("PutProduct");
}

async fn reserved(inventory: SocketAddr, sku: &str) -> i64 {
    let channel = endpoint(&format!("http://{inventory}"), None)
        .connect()
        .await
        .expect("connect to inventory-svc");
    InventoryServiceClient::new(channel)
        .get_product(inv::GetProductRequest { sku: sku.into() })
        .await
        .expect("GetProduct")
        .into_inner()
        .reserved
}

/// A request with `authorization: Bearer <token>`, if given.
fn authed<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    request.set_timeout(Duration::from_secs(20));
    request
}
