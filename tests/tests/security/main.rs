//! Security over real servers: bearer JWT authentication (HS256 tokens made
//! here), role and ownership checks, and the per-customer PlaceOrder rate
//! limit. The orchestrator calls participants with a `service` token, so
//! sagas run end to end with authentication on.
//!
//! One test binary, a module per concern: `authentication` (bad tokens),
//! `access` (roles, ownership, idempotency keys per customer),
//! `rate_limit` (the PlaceOrder limit, per customer and per peer address)
//! and `mtls` (participants take saga calls only from the orchestrator).
//! The tokens and the secured mesh they share are here.

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

mod access;
mod authentication;
mod mtls;
mod rate_limit;

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

    fn clients_url(&self) -> String {
        self.mesh.as_ref().expect("running").orchestrator_url()
    }
}
