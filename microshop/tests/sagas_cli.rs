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

mod cluster;

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

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2_and_a_dead_orchestrator_exits_1() {
    let none: &[(&str, &Path)] = &[];
    for (args, says) in [
        (&["list", "--state", "stuck"][..], "running"),
        (&["list", "--type", "refund"], "place-order"),
        (&["list", "--older-than", "10"], "has no unit"),
        (&["list", "--limit", "0"], "1 or more"),
        (&["retry"], "SAGA_ID"),
        (&["retry", "s-1", "--state", "failed"], "--state"),
        (&["retry", "--customer", "alice"], "--state"),
        (&["abort", "s-1"], "--reason"),
        (&["abort", "s-1", "--reason", "  "], "--reason must say why"),
        (&["show"], "SAGA_ID"),
        (&["frobnicate"], "frobnicate"),
        (
            &["list", "--orchestrator", "https://127.0.0.1:1"],
            "--ca-file",
        ),
        (
            &[
                "list",
                "--orchestrator",
                "http://127.0.0.1:1",
                "--ca-file",
                "ca.pem",
            ],
            "https://",
        ),
        (&["list", "--orchestrator", "ftp://127.0.0.1:1"], "http://"),
    ] {
        sagas(none, args).exits(2).says(&[says]);
    }

    let dead = format!("http://{}", free_addr());
    let run = sagas(none, &["list", "--orchestrator", &dead]);
    run.exits(1).says(&[
        &format!("cannot reach the orchestrator at {dead}"),
        "MICROSHOP_ORCHESTRATOR_URL",
    ]);
    assert!(run.stdout.is_empty(), "{run:#?}");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("no-such-token");
    sagas(
        &[("MICROSHOP_TOKEN_FILE", &missing)],
        &["show", "s-1", "--orchestrator", &dead],
    )
    .exits(1)
    .says(&["cannot use the token file", "no-such-token"]);
    // A CA file without a certificate used to fail only at the handshake,
    // as an unknown issuer.
    let not_pem = dir.path().join("ca.txt");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let tls_dead = format!("https://{}", free_addr());
    let not_pem = not_pem.to_str().expect("utf-8");
    sagas(
        none,
        &["list", "--orchestrator", &tls_dead, "--ca-file", not_pem],
    )
    .exits(1)
    .says(&["cannot use the CA file", "holds no PEM certificate"]);
}

#[tokio::test]
async fn list_show_retry_and_abort_on_a_real_mesh() {
    let up = Up::start(&[], &[]).await;
    let url = format!("http://{}", up.addr(Svc::Orchestrator));
    let u = url.as_str();
    let none: &[(&str, &Path)] = &[];

    // Sagas: alice's checkout and payment, bob's checkout and cancel (all
    // COMPLETED), carol's checkout out of stock (COMPENSATED).
    put_product(up.addr(Svc::Inventory), "MUG", 5).await;
    let channel = endpoint(u, None).connect().await.expect("connect");
    let mut checkout = CheckoutServiceClient::new(channel);
    let a = checkout
        .place_order(authed(place("a-1", "alice", "MUG", 1, 0), None))
        .await
        .expect("alice's order")
        .into_inner();
    let a_paid = checkout
        .confirm_payment(authed(
            orch::ConfirmPaymentRequest {
                order_id: a.order_id.clone(),
                payment_ref: "PAY-1".into(),
            },
            None,
        ))
        .await
        .expect("alice pays")
        .into_inner();
    let b = checkout
        .place_order(authed(place("b-1", "bob", "MUG", 1, 0), None))
        .await
        .expect("bob's order")
        .into_inner();
    let b_cancel = checkout
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: b.order_id.clone(),
                reason: "changed my mind".into(),
            },
            None,
        ))
        .await
        .expect("bob cancels")
        .into_inner();
    let rejected = checkout
        .place_order(authed(place("c-1", "carol", "MUG", 50, 0), None))
        .await
        .expect_err("carol's order is out of stock");
    let c = metadata_of(&rejected, "sagaId").expect("the rejection names its saga");
    let completed = [&a.saga_id, &a_paid.saga_id, &b.saga_id, &b_cancel.saga_id];

    // Pointed at a participant's port: it says so, and where to point.
    let inventory = format!("http://{}", up.addr(Svc::Inventory));
    sagas(
        &[("MICROSHOP_ORCHESTRATOR_URL", Path::new(&inventory))],
        &["list"],
    )
    .exits(1)
    .says(&[
        "does not serve microshop.orchestrator.v1.SagaAdminService",
        "MICROSHOP_ORCHESTRATOR_URL",
    ]);

    // Pointed at the metrics port (HTTP/1): it says where to point, not
    // "UNKNOWN: transport error".
    // (The connection either fails the h2 handshake or is closed: both
    // answers say where to point.)
    let metrics = format!("http://{}", up.metrics);
    let run = sagas(
        &[("MICROSHOP_ORCHESTRATOR_URL", Path::new(&metrics))],
        &["list"],
    );
    run.exits(1)
        .says(&["point --orchestrator (MICROSHOP_ORCHESTRATOR_URL)"]);
    assert!(!run.stderr.contains("transport error"), "{run:#?}");

    // list: the table, every saga, aligned, carol's failing step shown.
    let run = sagas(&[("MICROSHOP_ORCHESTRATOR_URL", Path::new(u))], &["list"]);
    run.exits(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "a header and 5 sagas: {run:#?}");
    for h in [
        "ID",
        "TYPE",
        "STATE",
        "CUSTOMER",
        "ORDER",
        "AGE",
        "FAILING STEP",
    ] {
        assert!(lines[0].contains(h), "{h} in {}", lines[0]);
    }
    let state_col = lines[0].find("STATE").expect("a STATE column");
    for line in &lines[1..] {
        let state = &line[state_col..];
        assert!(
            state.starts_with("COMPLETED ") || state.starts_with("COMPENSATED "),
            "STATE aligned: {run:#?}"
        );
    }
    let carol = lines
        .iter()
        .find(|l| l.starts_with(c.as_str()))
        .expect("carol's row");
    assert!(
        carol.contains("COMPENSATED")
            && carol.contains("carol")
            && carol.contains("reserve-stock FAILED"),
        "{carol}"
    );
    let placed = lines
        .iter()
        .find(|l| l.starts_with(a.saga_id.as_str()))
        .expect("alice's row");
    assert!(
        placed.contains("place-order") && placed.contains(&a.order_id),
        "{placed}"
    );

    // list --json: proto3 JSON, every saga, no further page.
    let doc = sagas(none, &["list", "--orchestrator", u, "--json"])
        .exits(0)
        .json();
    assert_eq!(doc["nextPageToken"], "", "{doc:#}");
    let all = ids(&doc, "sagas", "sagaId");
    assert_eq!(all.len(), 5, "{doc:#}");
    for s in doc["sagas"].as_array().expect("sagas") {
        assert!(
            s["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("SAGA_TYPE_")),
            "{s:#}"
        );
        assert!(
            s["state"]
                .as_str()
                .is_some_and(|t| t.starts_with("SAGA_STATE_")),
            "{s:#}"
        );
        assert!(
            s["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{s:#}"
        );
        assert!(s["steps"][0]["action"]["startedAt"].is_string(), "{s:#}");
        assert!(
            s["history"].as_array().is_some_and(|h| !h.is_empty()),
            "{s:#}"
        );
        assert!(
            s.get("saga_id").is_none() && s["customerId"].is_string(),
            "{s:#}"
        );
    }

    // Filters.
    let only = |args: &[&str]| {
        let mut all = vec!["list", "--orchestrator", u, "--json"];
        all.extend_from_slice(args);
        let mut got = ids(&sagas(none, &all).exits(0).json(), "sagas", "sagaId");
        got.sort();
        got
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<_>>()
    };
    assert_eq!(only(&["--state", "compensated"]), vec![c.clone()]);
    assert_eq!(only(&["--state", "completed"]), sorted(completed.to_vec()));
    assert_eq!(
        only(&["--type", "confirm-payment"]),
        vec![a_paid.saga_id.clone()]
    );
    assert_eq!(
        only(&["--type", "cancel-order"]),
        vec![b_cancel.saga_id.clone()]
    );
    assert_eq!(
        only(&["--order", &a.order_id]),
        sorted(vec![&a.saga_id, &a_paid.saga_id])
    );
    assert_eq!(
        only(&["--customer", "bob"]),
        sorted(vec![&b.saga_id, &b_cancel.saga_id])
    );
    assert_eq!(
        only(&[
            "--customer",
            "alice",
            "--type",
            "place-order",
            "--state",
            "completed"
        ]),
        vec![a.saga_id.clone()]
    );
    assert!(only(&["--older-than", "1h"]).is_empty());
    assert_eq!(only(&["--older-than", "0s"]).len(), 5);
    sagas(
        none,
        &[
            "list",
            "--orchestrator",
            u,
            "--older-than",
            "2h",
            "--state",
            "failed",
        ],
    )
    .exits(0)
    .says(&["No saga matches (state=failed older-than=7200s)"]);

    // Paging: --limit, then --page-token for the rest, newest first.
    let first = sagas(
        none,
        &["list", "--orchestrator", u, "--limit", "2", "--json"],
    )
    .exits(0)
    .json();
    let token = first["nextPageToken"].as_str().expect("a token").to_owned();
    assert!(!token.is_empty(), "{first:#}");
    let rest = sagas(
        none,
        &[
            "list",
            "--orchestrator",
            u,
            "--page-token",
            &token,
            "--json",
        ],
    )
    .exits(0)
    .json();
    let mut pages = ids(&first, "sagas", "sagaId");
    assert_eq!(pages.len(), 2);
    pages.extend(ids(&rest, "sagas", "sagaId"));
    assert_eq!(pages, all, "two pages make the whole list, in order");

    // show: the timeline, and {"saga": {...}}.
    sagas(none, &["show", &c, "--orchestrator", u])
        .exits(0)
        .says(&[
            "State     COMPENSATED",
            "Trace     ",
            "OUT_OF_STOCK",
            "Steps",
            "reserve-stock  FAILED",
            "undo    release-stock  SUCCEEDED",
            "History",
            "COMPENSATED",
        ]);
    let shown = sagas(none, &["show", &c, "--orchestrator", u, "--json"])
        .exits(0)
        .json();
    let saga = &shown["saga"];
    assert_eq!(saga["sagaId"], c.as_str());
    assert_eq!(saga["state"], "SAGA_STATE_COMPENSATED");
    assert_eq!(saga["customerId"], "carol");
    assert_eq!(saga["error"]["reason"], "OUT_OF_STOCK");
    let reserve = saga["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "reserve-stock"))
        .expect("reserve-stock");
    assert_eq!(
        reserve["action"]["status"], "STEP_STATUS_FAILED",
        "{saga:#}"
    );
    assert_eq!(
        reserve["compensation"]["status"], "STEP_STATUS_SUCCEEDED",
        "{saga:#}"
    );
    assert!(reserve["action"]["attempts"].is_u64(), "{saga:#}");
    let history_len = |id: &str| {
        sagas(none, &["show", id, "--orchestrator", u, "--json"])
            .exits(0)
            .json()["saga"]["history"]
            .as_array()
            .map_or(0, Vec::len)
    };
    sagas(none, &["show", "no-such-saga", "--orchestrator", u])
        .exits(1)
        .says(&["no saga \"no-such-saga\"", "microshop sagas list"]);

    // retry of ended sagas: a reported no-op, exit 0, nothing changed.
    let before = history_len(&a.saga_id);
    sagas(none, &["retry", &a.saga_id, "--orchestrator", u])
        .exits(0)
        .says(&["no-op", "COMPLETED", "1 no-op"]);
    let doc = sagas(
        none,
        &["retry", &a.saga_id, &c, "--orchestrator", u, "--json"],
    )
    .exits(0)
    .json();
    for r in doc["results"].as_array().expect("results") {
        assert_eq!(r["ok"], true, "{doc:#}");
        assert_eq!(r["outcome"], "no-op", "{doc:#}");
        assert!(r["error"].is_null() && r["note"].is_string(), "{doc:#}");
    }
    assert_eq!(doc["results"][0]["state"], "SAGA_STATE_COMPLETED");
    assert_eq!(doc["results"][1]["state"], "SAGA_STATE_COMPENSATED");
    assert_eq!(history_len(&a.saga_id), before, "a no-op changes nothing");
    // An unknown id among them fails the run (exit 1), reported per saga.
    let run = sagas(
        none,
        &["retry", &a.saga_id, "nope", "--orchestrator", u, "--json"],
    );
    let doc = run.exits(1).json();
    assert_eq!(doc["results"][0]["ok"], true);
    assert_eq!(doc["results"][1]["sagaId"], "nope");
    assert_eq!(doc["results"][1]["ok"], false);
    assert!(
        doc["results"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no saga")),
        "{doc:#}"
    );

    // Bulk retry: refused without a terminal or --yes (exit 2, listing
    // what it would touch), a no-op per saga with --yes, --limit honoured.
    let run = sagas(
        none,
        &["retry", "--state", "completed", "--orchestrator", u],
    );
    run.exits(2).says(&["not a terminal", "--yes", "--dry-run"]);
    for id in completed {
        assert!(run.stderr.contains(id.as_str()), "{id} listed: {run:#?}");
    }
    let doc = sagas(
        none,
        &[
            "retry",
            "--state",
            "completed",
            "--yes",
            "--orchestrator",
            u,
            "--json",
        ],
    )
    .exits(0)
    .json();
    let mut touched = ids(&doc, "results", "sagaId");
    touched.sort();
    assert_eq!(touched, sorted(completed.to_vec()));
    assert!(
        doc["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["outcome"] == "no-op")
    );
    let doc = sagas(
        none,
        &[
            "retry",
            "--state",
            "completed",
            "--type",
            "place-order",
            "--limit",
            "1",
            "--yes",
            "--json",
            "--orchestrator",
            u,
        ],
    )
    .exits(0)
    .json();
    assert_eq!(
        ids(&doc, "results", "sagaId"),
        vec![b.saga_id.clone()],
        "the newest one"
    );

    // abort of an ended saga is refused: exit 1, single, bulk and dry run.
    let before = history_len(&c);
    sagas(
        none,
        &["abort", &c, "--reason", "test", "--orchestrator", u],
    )
    .exits(1)
    .says(&["failed", "AbortSaga applies to FAILED and unfinished sagas"]);
    let doc = sagas(
        none,
        &[
            "abort",
            "--state",
            "compensated",
            "--reason",
            "test",
            "--dry-run",
            "--json",
            "--orchestrator",
            u,
        ],
    )
    .exits(1)
    .json();
    assert_eq!(doc["results"][0]["outcome"], "would-fail", "{doc:#}");
    assert_eq!(doc["results"][0]["ok"], false, "{doc:#}");
    let doc = sagas(
        none,
        &[
            "abort",
            "--state",
            "compensated",
            "--reason",
            "test",
            "--yes",
            "--json",
            "--orchestrator",
            u,
        ],
    )
    .exits(1)
    .json();
    assert_eq!(ids(&doc, "results", "sagaId"), vec![c.clone()]);
    assert_eq!(
        doc["results"][0]["state"], "SAGA_STATE_COMPENSATED",
        "{doc:#}"
    );
    assert_eq!(history_len(&c), before, "a refused abort changes nothing");

    // Nothing matches: said, exit 0 (no confirmation needed for nothing).
    sagas(none, &["retry", "--state", "failed", "--orchestrator", u])
        .exits(0)
        .says(&["No saga matches (state=failed): nothing to retry."]);
    let run = sagas(
        none,
        &[
            "abort",
            "--state",
            "running",
            "--reason",
            "x",
            "--json",
            "--orchestrator",
            u,
        ],
    );
    assert_eq!(
        run.exits(0).json()["results"],
        serde_json::json!([]),
        "{run:#?}"
    );
    assert!(run.stderr.contains("No saga matches"), "{run:#?}");
}

#[tokio::test]
async fn waiting_sagas_are_retried_and_aborted_over_tls_with_an_admin_token() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tls = make_tls(dir.path(), "mesh");
    let other = make_tls(dir.path(), "other");
    let auth = make_auth(dir.path());
    let up = Up::start(&[], &[]).await;
    put_product(up.addr(Svc::Inventory), "BOOK", 10).await;
    let loyalty = endpoint(&format!("http://{}", up.addr(Svc::Loyalty)), None)
        .connect()
        .await
        .expect("connect to loyalty-svc");
    LoyaltyServiceClient::new(loyalty)
        .grant_points(loy::GrantPointsRequest {
            customer_id: "dave".into(),
            points: 500,
        })
        .await
        .expect("GrantPoints");
    let lone = LoneOrchestrator::start(dir.path(), &up, &auth, &tls).await;
    let u = lone.url.as_str();

    // Three checkouts redeeming points: each waits for loyalty-svc.
    let channel = endpoint(u, Some(&tls.ca_pem))
        .connect()
        .await
        .expect("connect over TLS");
    let mut checkout = CheckoutServiceClient::new(channel);
    let mut waiting = Vec::new();
    for i in 0..3 {
        let status = checkout
            .place_order(authed(
                place(&format!("w-{i}"), "dave", "BOOK", 1, 10),
                Some(&auth.admin_token),
            ))
            .await
            .expect_err("the checkout waits for loyalty-svc");
        waiting.push(
            metadata_of(&status, "sagaId").unwrap_or_else(|| panic!("a saga id: {status:?}")),
        );
    }
    assert_eq!(
        reserved(up.addr(Svc::Inventory), "BOOK").await,
        3,
        "each waiting checkout holds its stock"
    );
    waiting.reverse(); // newest first, as listed
    let (w1, w2, w3) = (&waiting[0], &waiting[1], &waiting[2]);

    // Credentials: none, garbage, a customer's, another CA.
    let ca = tls.ca.as_path();
    let token = auth.admin_file.as_path();
    sagas::<&str>(
        &[],
        &[
            "list",
            "--orchestrator",
            u,
            "--ca-file",
            ca.to_str().expect("utf-8"),
        ],
    )
    .exits(1)
    .says(&["UNAUTHENTICATED", "authentication is on", "--token-file"]);
    for (file, says) in [
        (&auth.garbage_file, "invalid or expired"),
        (&auth.customer_file, "PERMISSION_DENIED"),
    ] {
        sagas(
            &[("MICROSHOP_TOKEN_FILE", file)],
            &[
                "list",
                "--orchestrator",
                u,
                "--ca-file",
                ca.to_str().expect("utf-8"),
            ],
        )
        .exits(1)
        .says(&[says, "admin"]);
    }
    sagas(
        &[("MICROSHOP_TOKEN_FILE", token)],
        &[
            "list",
            "--orchestrator",
            u,
            "--ca-file",
            other.ca.to_str().expect("utf-8"),
        ],
    )
    .exits(1)
    .says(&["cannot reach the orchestrator", "certificate", "--ca-file"]);

    // From here: the admin token (env) and the mesh CA (flag).
    let env: &[(&str, &Path)] = &[("MICROSHOP_TOKEN_FILE", token)];
    let ca_flag = ca.to_str().expect("utf-8");
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--orchestrator", u, "--ca-file", ca_flag]);
        sagas(env, &all)
    };
    let history =
        |id: &str| cli(&["show", id, "--json"]).exits(0).json()["saga"]["history"].clone();

    // list and show say what they wait for.
    let run = cli(&["list", "--state", "running"]);
    run.exits(0);
    for id in &waiting {
        let row = run
            .stdout
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .expect("a row per saga");
        assert!(
            row.contains("RUNNING") && row.contains("deduct-points WAITING"),
            "{row}"
        );
    }
    let doc = cli(&["list", "--state", "running", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "sagas", "sagaId"), waiting);
    for s in doc["sagas"].as_array().expect("sagas") {
        assert_eq!(
            s["waitingFor"],
            serde_json::json!(["microshop.loyalty.v1.LoyaltyService"])
        );
        assert!(s["nextAttemptAt"].is_string(), "{s:#}");
    }
    cli(&["show", w1]).exits(0).says(&[
        "State     RUNNING",
        "Waiting   for microshop.loyalty.v1.LoyaltyService",
        "Next try  ",
        "deduct-points  WAITING",
        "automatic",
    ]);

    // Bulk dry run: would retry all three, changes nothing.
    let before = history(w1);
    let doc = cli(&["retry", "--state", "running", "--dry-run", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "results", "sagaId"), waiting);
    assert!(
        doc["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["outcome"] == "would-retry" && r["ok"] == true),
        "{doc:#}"
    );
    assert_eq!(history(w1), before, "--dry-run changes nothing");

    // Single retry: re-driven now (still waiting), in the token's name.
    let doc = cli(&["retry", w1, "--reason", "loyalty is back", "--json"])
        .exits(0)
        .json();
    let r = &doc["results"][0];
    assert_eq!(
        (r["ok"].clone(), r["outcome"].clone()),
        (true.into(), "retried".into()),
        "{doc:#}"
    );
    assert_eq!(r["state"], "SAGA_STATE_RUNNING", "{doc:#}");
    assert!(
        r["note"]
            .as_str()
            .is_some_and(|n| n.contains("still waiting for loyalty")),
        "{doc:#}"
    );
    let after = history(w1);
    assert!(
        after
            .as_array()
            .expect("history")
            .iter()
            .any(|t| t["actor"] == "ops-alice"
                && t["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("loyalty is back"))),
        "the retry is in the history with its actor: {after:#}"
    );

    // Bulk retry with --yes: all three re-driven.
    let doc = cli(&["retry", "--state", "running", "--yes", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "results", "sagaId"), waiting);
    assert!(
        doc["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["outcome"] == "retried"),
        "{doc:#}"
    );

    // Single abort: compensated as far as it can be; its stock is back,
    // its points refund waits for loyalty-svc.
    let run = cli(&["abort", w1, "--reason", "loyalty is gone for good"]);
    run.exits(0).says(&["aborted", "1 aborted"]);
    let saga = cli(&["show", w1, "--json"]).exits(0).json()["saga"].clone();
    assert_eq!(saga["state"], "SAGA_STATE_COMPENSATING", "{saga:#}");
    let release = saga["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "reserve-stock"))
        .map(|s| s["compensation"]["status"].clone());
    assert_eq!(release, Some("STEP_STATUS_SUCCEEDED".into()), "{saga:#}");
    assert_eq!(
        reserved(up.addr(Svc::Inventory), "BOOK").await,
        2,
        "the aborted checkout's stock is back"
    );
    cli(&["list", "--state", "compensating"])
        .exits(0)
        .says(&[w1.as_str(), "refund-points WAITING"]);
    // A compensation waiting for its participant is retryable too.
    let doc = cli(&["retry", w1, "--json"]).exits(0).json();
    assert_eq!(doc["results"][0]["outcome"], "retried", "{doc:#}");
    assert_eq!(
        doc["results"][0]["state"], "SAGA_STATE_COMPENSATING",
        "{doc:#}"
    );

    // Bulk abort: refused without --yes, then the other two.
    let run = cli(&["abort", "--state", "running", "--reason", "outage"]);
    run.exits(2).says(&[w2.as_str(), w3.as_str(), "--yes"]);
    let doc = cli(&[
        "abort", "--state", "running", "--reason", "outage", "--yes", "--json",
    ])
    .exits(0)
    .json();
    assert_eq!(ids(&doc, "results", "sagaId"), vec![w2.clone(), w3.clone()]);
    for r in doc["results"].as_array().expect("results") {
        assert_eq!(r["outcome"], "aborted", "{doc:#}");
        assert_eq!(r["state"], "SAGA_STATE_COMPENSATING", "{doc:#}");
    }
    assert_eq!(
        reserved(up.addr(Svc::Inventory), "BOOK").await,
        0,
        "every aborted checkout's stock is back"
    );
    cli(&["retry", "--state", "running", "--yes"])
        .exits(0)
        .says(&["No saga matches (state=running): nothing to retry."]);
    let history = history(w2);
    assert!(
        history
            .as_array()
            .expect("history")
            .iter()
            .any(|t| t["actor"] == "ops-alice"
                && t["note"].as_str().is_some_and(|n| n.contains("outage"))),
        "{history:#}"
    );
}
