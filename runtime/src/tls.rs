//! TLS between the services (rustls through tonic).
//!
//! With a certificate and key, a server speaks TLS. With a CA as well, it
//! asks clients for a certificate (optional, so shoppers without one still
//! reach the public RPCs) and verifies any it gets against that CA; the
//! orchestrator presents the same certificate to the participants and
//! trusts that CA for theirs (mTLS). A participant given
//! `--tls-saga-client-name` accepts its saga RPCs (see
//! [`crate::auth::Access::Service`]) only from a verified client
//! certificate valid for that DNS name: the orchestrator's identity.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tonic::{
    Status,
    codegen::http,
    transport::{
        Certificate, ClientTlsConfig, Identity, ServerTlsConfig,
        server::{TcpConnectInfo, TlsConnectInfo},
    },
};
use tower::{Layer, Service};

use crate::auth::{Access, access, permission_denied};

/// TLS settings (part of [`crate::ServerArgs`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this service: its server certificate, and
    /// the orchestrator's client certificate towards participants.
    #[arg(long, env = "MICROSHOP_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of `--tls-cert-file`.
    #[arg(long, env = "MICROSHOP_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA that signs the mesh's certificates: verifies client
    /// certificates here and the participants' certificates (orchestrator).
    #[arg(long, env = "MICROSHOP_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Participants: accept saga RPCs only from a client certificate valid
    /// for this DNS name (the orchestrator's), e.g. `orchestrator.microshop`.
    #[arg(long, env = "MICROSHOP_TLS_SAGA_CLIENT_NAME", requires = "tls_ca_file")]
    pub tls_saga_client_name: Option<String>,

    /// Orchestrator: the DNS name the participants' certificates must carry
    /// (default: the host of each participant URL).
    #[arg(long, env = "MICROSHOP_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
}

/// The PEM certificates of `path` (the file of setting `var`), checked
/// here as rustls will parse them: tonic only reports a bad file once the
/// server starts, as "transport error", naming neither file nor setting.
fn read_certs(path: &Path, what: &str, var: &str) -> Result<Vec<u8>, String> {
    let pem = read(path, what)?;
    check_certificates(&pem)
        .map_err(|why| format!("the TLS {what} {} ({var}) {why}", path.display()))?;
    Ok(pem)
}

/// Whether `pem` holds at least one PEM certificate and nothing rustls
/// would refuse; `Err` says what is wrong, to follow a file's name. (A
/// file without any PEM block passes tonic's parsing as no certificate at
/// all, and fails only at the first handshake.)
pub fn check_certificates(pem: &[u8]) -> Result<(), String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()),
        Err(e) => Err(format!("is not valid PEM: {e}")),
    }
}

/// The PEM private key of `path` (`MICROSHOP_TLS_KEY_FILE`), checked as
/// [`read_certs`] checks certificates.
fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path, "key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "the TLS key {} (MICROSHOP_TLS_KEY_FILE) holds no PEM private key (PKCS#8, \
             PKCS#1 or SEC1): {e}",
            path.display()
        )
    })?;
    Ok(pem)
}

impl TlsArgs {
    /// Whether this service has a certificate (serves TLS).
    pub fn enabled(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_key_file.is_some()
    }

    fn identity(&self) -> Result<Option<Identity>, String> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(
                read_certs(cert, "certificate", "MICROSHOP_TLS_CERT_FILE")?,
                read_key(key)?,
            ))),
            (None, None) => Ok(None),
            _ => Err("set both MICROSHOP_TLS_CERT_FILE and MICROSHOP_TLS_KEY_FILE".into()),
        }
    }

    fn ca(&self) -> Result<Option<Certificate>, String> {
        self.tls_ca_file
            .as_deref()
            .map(|p| read_certs(p, "CA", "MICROSHOP_TLS_CA_FILE").map(Certificate::from_pem))
            .transpose()
    }

    /// The server's TLS configuration, or `None` without a certificate.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, String> {
        if self.tls_saga_client_name.is_some() && self.tls_ca_file.is_none() {
            return Err("MICROSHOP_TLS_SAGA_CLIENT_NAME needs MICROSHOP_TLS_CA_FILE".into());
        }
        let Some(identity) = self.identity()? else {
            if self.tls_saga_client_name.is_some() {
                return Err("MICROSHOP_TLS_SAGA_CLIENT_NAME needs a server certificate".into());
            }
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = self.ca()? {
            config = config.client_ca_root(ca).client_auth_optional(true);
        }
        Ok(Some(config))
    }

    /// The client TLS configuration of the orchestrator's participant
    /// channels (CA to trust, certificate to present), or `None` without
    /// a CA (plaintext `http://` URLs).
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, String> {
        let Some(ca) = self.ca()? else {
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        if let Some(name) = &self.tls_server_name {
            config = config.domain_name(name.clone());
        }
        Ok(Some(config))
    }

    /// The layer checking the saga caller's certificate, if configured.
    pub fn identity_layer(&self) -> Result<Option<SagaIdentityLayer>, String> {
        self.tls_saga_client_name
            .as_deref()
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .map(|name| SagaIdentityLayer {
                        name: Arc::new(name),
                    })
                    .map_err(|e| format!("bad MICROSHOP_TLS_SAGA_CLIENT_NAME {name:?}: {e}"))
            })
            .transpose()
    }
}

/// Lets saga RPCs through only from a client certificate valid for one
/// DNS name (already verified against the CA by the TLS handshake).
#[derive(Clone, Debug)]
pub struct SagaIdentityLayer {
    name: Arc<ServerName<'static>>,
}

impl<S> Layer<S> for SagaIdentityLayer {
    type Service = SagaIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SagaIdentity {
            inner,
            name: Arc::clone(&self.name),
        }
    }
}

/// The service made by [`SagaIdentityLayer`].
#[derive(Clone, Debug)]
pub struct SagaIdentity<S> {
    inner: S,
    name: Arc<ServerName<'static>>,
}

impl<S> SagaIdentity<S> {
    fn check<B>(&self, request: &http::Request<B>) -> Result<(), Status> {
        let path = request.uri().path();
        if access(path) != Access::Service {
            return Ok(());
        }
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let valid = certs
            .as_deref()
            .and_then(|c| c.first())
            .is_some_and(|leaf| {
                webpki::EndEntityCert::try_from(leaf)
                    .and_then(|cert| cert.verify_is_valid_for_subject_name(&self.name))
                    .is_ok()
            });
        if valid {
            Ok(())
        } else {
            tracing::info!(path, "saga call without the orchestrator's certificate");
            Err(permission_denied())
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for SagaIdentity<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Err(status) = self.check(&request) {
            let response = status.into_http::<ResBody>();
            return Box::pin(async move { Ok(response) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}
