//! Authentication and authorization.
//!
//! [`AuthLayer`] is a tower layer in front of every microshop server: it
//! reads a bearer JWT from the `authorization` metadata, verifies it
//! (HS256 shared secret or RS256 public key; signature, issuer, audience and
//! expiry, with a small leeway) and puts the [`Caller`] into the request
//! extensions. A call without a valid token is `UNAUTHENTICATED`; a valid
//! token whose role may not call the method at all (see [`access`]) is
//! `PERMISSION_DENIED`. Health and reflection stay open.
//!
//! Decisions that need the request body (is this customer's id the
//! caller's? does this guest redeem points?) are made by the handlers with
//! [`caller`], [`check_subject`] and [`check_redeem`]. When authentication
//! is off no [`Caller`] is inserted and every check allows the call.

use std::{
    fmt,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::{Code, Status, codegen::http};
use tower::{Layer, Service};

use crate::errors::{Reason, rich_status};

/// The role a token grants (its `role` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A signed-in shopper: its own orders, points and balance.
    Customer,
    /// A checkout without an account: its own orders, never points.
    Guest,
    /// An operator: catalog, coupons, points grants, shipping, saga admin.
    Admin,
    /// Another microshop service (the orchestrator calling participants).
    Service,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(Self::Customer),
            "guest" => Some(Self::Guest),
            "admin" => Some(Self::Admin),
            "service" => Some(Self::Service),
            _ => None,
        }
    }

    /// Whether the role acts on any customer's behalf (admin, service).
    pub fn is_privileged(self) -> bool {
        matches!(self, Self::Admin | Self::Service)
    }
}

/// Who is calling, from a verified token (in the request extensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: the customer id for customers and guests.
    pub subject: String,
    /// The token's `role`.
    pub role: Role,
}

/// Authentication settings (part of [`crate::ServerArgs`]).
#[derive(Clone, Debug, clap::Args)]
pub struct AuthArgs {
    /// File holding the HS256 shared secret that signs tokens (turns
    /// authentication on).
    #[arg(
        long,
        env = "MICROSHOP_AUTH_HS256_SECRET_FILE",
        conflicts_with = "auth_rs256_public_key_file"
    )]
    pub auth_hs256_secret_file: Option<PathBuf>,

    /// PEM file of the RS256 public key that verifies tokens (turns
    /// authentication on).
    #[arg(long, env = "MICROSHOP_AUTH_RS256_PUBLIC_KEY_FILE")]
    pub auth_rs256_public_key_file: Option<PathBuf>,

    /// Required `iss` of tokens.
    #[arg(long, env = "MICROSHOP_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// Required `aud` of tokens.
    #[arg(long, env = "MICROSHOP_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "MICROSHOP_AUTH_LEEWAY_SECS", default_value_t = 30)]
    pub auth_leeway_secs: u64,

    /// File holding the token (role `service`) the orchestrator sends to
    /// participants; read at start.
    #[arg(long, env = "MICROSHOP_AUTH_SERVICE_TOKEN_FILE")]
    pub auth_service_token_file: Option<PathBuf>,
}

impl Default for AuthArgs {
    fn default() -> Self {
        Self {
            auth_hs256_secret_file: None,
            auth_rs256_public_key_file: None,
            auth_issuer: None,
            auth_audience: None,
            auth_leeway_secs: 30,
            auth_service_token_file: None,
        }
    }
}

impl AuthArgs {
    /// Whether a verification key is configured (authentication on).
    pub fn enabled(&self) -> bool {
        self.auth_hs256_secret_file.is_some() || self.auth_rs256_public_key_file.is_some()
    }

    /// The verifier, or `None` when authentication is off. Errors name the
    /// setting that is missing or unreadable.
    pub fn verifier(&self) -> Result<Option<Verifier>, String> {
        let (key, algorithm) = match (
            &self.auth_hs256_secret_file,
            &self.auth_rs256_public_key_file,
        ) {
            (None, None) => {
                // An issuer or audience without a key would leave
                // authentication off while the operator believes it on.
                let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
                if set(&self.auth_issuer) || set(&self.auth_audience) {
                    return Err(
                        "MICROSHOP_AUTH_ISSUER or MICROSHOP_AUTH_AUDIENCE is set, but \
                         no key turns authentication on: set \
                         MICROSHOP_AUTH_HS256_SECRET_FILE or MICROSHOP_AUTH_RS256_PUBLIC_KEY_FILE, \
                         or unset both (with --insecure-no-auth for `serve`) to serve without \
                         authentication"
                            .into(),
                    );
                }
                return Ok(None);
            }
            (Some(_), Some(_)) => {
                return Err("set only one of MICROSHOP_AUTH_HS256_SECRET_FILE and \
                     MICROSHOP_AUTH_RS256_PUBLIC_KEY_FILE"
                    .into());
            }
            (Some(path), None) => {
                let secret = std::fs::read(path)
                    .map_err(|e| format!("cannot read the HS256 secret {}: {e}", path.display()))?;
                let secret = trim_ascii_end(&secret);
                if secret.len() < 32 {
                    return Err(format!(
                        "the HS256 secret {} is shorter than 32 bytes",
                        path.display()
                    ));
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("cannot read the RS256 public key {}: {e}", path.display())
                })?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    format!("{} is not an RSA public key in PEM: {e}", path.display())
                })?;
                (key, Algorithm::RS256)
            }
        };
        let issuer = self
            .auth_issuer
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or("authentication needs MICROSHOP_AUTH_ISSUER (--auth-issuer)")?;
        let audience = self
            .auth_audience
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or("authentication needs MICROSHOP_AUTH_AUDIENCE (--auth-audience)")?;
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.auth_leeway_secs;
        validation.validate_nbf = true;
        Ok(Some(Verifier { key, validation }))
    }

    /// The service token for participant calls, if configured.
    pub fn service_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.auth_service_token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the service token {}: {e}", path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("the service token {} is empty", path.display()));
        }
        Ok(Some(token.to_owned()))
    }
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Verifies tokens with one key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    role: String,
}

impl Verifier {
    /// The caller a token stands for, or why not (for the server log only).
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| e.to_string())?;
        let role = Role::parse(&data.claims.role)
            .ok_or_else(|| format!("unknown role {:?}", data.claims.role))?;
        if data.claims.sub.is_empty() {
            return Err("empty subject".into());
        }
        Ok(Caller {
            subject: data.claims.sub,
            role,
        })
    }
}

/// Who may call a method at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (health, reflection).
    Open,
    /// Any valid token; handlers check ownership.
    Authenticated,
    /// `admin` tokens only.
    Admin,
    /// `service` tokens only (the saga RPCs of the participants).
    Service,
}

/// Methods only operators may call.
const ADMIN_METHODS: &[&str] = &[
    "/microshop.inventory.v1.InventoryService/PutProduct",
    "/microshop.loyalty.v1.LoyaltyService/GrantPoints",
    "/microshop.order.v1.OrderService/PutCoupon",
    "/microshop.order.v1.OrderService/MarkShipped",
];

/// The participants' saga RPCs: only the orchestrator calls them.
const SERVICE_METHODS: &[&str] = &[
    "/microshop.inventory.v1.InventoryService/ReserveStock",
    "/microshop.inventory.v1.InventoryService/ReleaseStock",
    "/microshop.inventory.v1.InventoryService/CommitStock",
    "/microshop.loyalty.v1.LoyaltyService/DeductPoints",
    "/microshop.loyalty.v1.LoyaltyService/RefundPoints",
    "/microshop.loyalty.v1.LoyaltyService/EarnPoints",
    "/microshop.order.v1.OrderService/QuoteOrder",
    "/microshop.order.v1.OrderService/CreateOrder",
    "/microshop.order.v1.OrderService/CancelOrder",
    "/microshop.order.v1.OrderService/MarkPaid",
];

/// Who may call the gRPC method at `path` (`/package.Service/Method`).
pub fn access(path: &str) -> Access {
    if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
        Access::Open
    } else if path.starts_with("/microshop.orchestrator.v1.SagaAdminService/")
        || ADMIN_METHODS.contains(&path)
    {
        Access::Admin
    } else if SERVICE_METHODS.contains(&path) {
        Access::Service
    } else {
        Access::Authenticated
    }
}

/// UNAUTHENTICATED, saying no more than that the token did not pass.
pub fn unauthenticated() -> Status {
    rich_status(
        Code::Unauthenticated,
        Reason::Unauthenticated,
        "invalid or expired token; send `authorization: Bearer <token>`",
        [],
        None,
    )
}

/// PERMISSION_DENIED, naming nothing of the resource.
pub fn permission_denied() -> Status {
    rich_status(
        Code::PermissionDenied,
        Reason::PermissionDenied,
        "the caller may not do this with its credentials (another customer's order, points \
         redeemed as a guest, an admin or participant call without that role); call with a \
         token (or certificate) that may",
        [],
        None,
    )
}

/// The verified caller of a request; `None` when authentication is off.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

/// Allows the call when `customer_id` is the caller's own (or the caller
/// is admin or service, or authentication is off).
pub fn check_subject(caller: Option<&Caller>, customer_id: &str) -> Result<(), Status> {
    match caller {
        None => Ok(()),
        Some(c) if c.role.is_privileged() || c.subject == customer_id => Ok(()),
        Some(_) => Err(permission_denied()),
    }
}

/// Refuses a guest redeeming points.
pub fn check_redeem(caller: Option<&Caller>, points: i64) -> Result<(), Status> {
    match caller {
        Some(c) if c.role == Role::Guest && points > 0 => Err(permission_denied()),
        _ => Ok(()),
    }
}

/// Whether `caller`'s role may call a method of `access`.
fn role_allowed(access: Access, role: Role) -> bool {
    match access {
        Access::Open | Access::Authenticated => true,
        Access::Admin => role == Role::Admin,
        Access::Service => role == Role::Service,
    }
}

/// The layer that authenticates every call.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
}

impl AuthLayer {
    /// A layer verifying with `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier: Arc::new(verifier),
        }
    }

    /// The layer for `args`, or `None` when authentication is off.
    pub fn from_args(args: &AuthArgs) -> Result<Option<Self>, String> {
        Ok(args.verifier()?.map(Self::new))
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: Arc::clone(&self.verifier),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

impl<S> Auth<S> {
    fn authenticate<B>(&self, request: &http::Request<B>) -> Result<Option<Caller>, Status> {
        let path = request.uri().path();
        let access = access(path);
        if access == Access::Open {
            return Ok(None);
        }
        let token = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or_else(|| {
                tracing::debug!(path, "no bearer token");
                unauthenticated()
            })?;
        let caller = self.verifier.verify(token).map_err(|why| {
            tracing::debug!(path, why, "token refused");
            unauthenticated()
        })?;
        if !role_allowed(access, caller.role) {
            tracing::info!(path, subject = caller.subject, role = ?caller.role, "role may not call this method");
            return Err(permission_denied());
        }
        Ok(Some(caller))
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.authenticate(&request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => {
                let response = status.into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_table() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::Open
        );
        assert_eq!(
            access("/microshop.orchestrator.v1.SagaAdminService/ListSagas"),
            Access::Admin
        );
        assert_eq!(
            access("/microshop.inventory.v1.InventoryService/PutProduct"),
            Access::Admin
        );
        assert_eq!(
            access("/microshop.loyalty.v1.LoyaltyService/DeductPoints"),
            Access::Service
        );
        assert_eq!(
            access("/microshop.orchestrator.v1.CheckoutService/PlaceOrder"),
            Access::Authenticated
        );
    }

    #[test]
    fn subject_and_redeem_checks() {
        let alice = Caller {
            subject: "alice".into(),
            role: Role::Customer,
        };
        let guest = Caller {
            subject: "g-1".into(),
            role: Role::Guest,
        };
        let admin = Caller {
            subject: "ops".into(),
            role: Role::Admin,
        };
        assert!(check_subject(None, "bob").is_ok());
        assert!(check_subject(Some(&alice), "alice").is_ok());
        assert_eq!(
            check_subject(Some(&alice), "bob").unwrap_err().code(),
            Code::PermissionDenied
        );
        assert!(check_subject(Some(&admin), "bob").is_ok());
        assert!(check_redeem(Some(&alice), 10).is_ok());
        assert!(check_redeem(Some(&guest), 0).is_ok());
        assert!(check_redeem(Some(&guest), 1).is_err());
    }

    #[test]
    fn missing_settings_are_named() {
        // A directory of its own (not a name another process could guess
        // or share), removed when dropped.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let mut args = AuthArgs {
            auth_hs256_secret_file: Some(secret),
            ..AuthArgs::default()
        };
        assert!(args.verifier().unwrap_err().contains("ISSUER"));
        args.auth_issuer = Some("iss".into());
        assert!(args.verifier().unwrap_err().contains("AUDIENCE"));
        args.auth_audience = Some("aud".into());
        assert!(args.verifier().unwrap().is_some());
        assert!(AuthArgs::default().verifier().unwrap().is_none());
        // Without a key, an issuer or audience is a mistake, not "off".
        for (issuer, audience) in [(Some("iss"), None), (None, Some("aud"))] {
            let keyless = AuthArgs {
                auth_issuer: issuer.map(Into::into),
                auth_audience: audience.map(Into::into),
                ..AuthArgs::default()
            };
            let error = keyless.verifier().unwrap_err();
            assert!(error.contains("no key"), "{error}");
        }
    }
}
