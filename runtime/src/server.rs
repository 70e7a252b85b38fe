//! Serving one gRPC service the way every microshop port behaves: health
//! (`grpc.health.v1`, driven by a storage probe), reflection v1 and v1alpha,
//! a per-request timeout, a global concurrency bound that sheds load with
//! RESOURCE_EXHAUSTED instead of queueing, and graceful shutdown.

use std::{future::Future, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::{ServiceBuilder, limit::GlobalConcurrencyLimitLayer};

use crate::{
    config::ServerArgs,
    methods::{REFLECTED_DESCRIPTOR_SETS, Services},
};

/// How often storage health is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Serving failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("grpc transport failed")]
    Transport(#[from] tonic::transport::Error),
    /// The service's storage could not be opened.
    #[error("cannot open storage")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A setting cannot be used as given.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The service could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// The health entry that is SERVING whenever the server runs, whatever its
/// storage says (for liveness and startup probes).
pub const LIVENESS: &str = "liveness";

/// Checks whether a service can do its work (its storage answers).
pub trait StorageProbe: Send + Sync + 'static {
    /// `Ok` when usable; `Err` says why not, for the log.
    fn probe(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Every store answers the probe by pinging itself.
impl<S: microshop_storage::Ping> StorageProbe for S {
    async fn probe(&self) -> Result<(), String> {
        self.ping().await.map_err(|e| e.to_string())
    }
}

/// Serves `services` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight calls finish and returns.
///
/// `service_name` is the fully-qualified gRPC name (e.g.
/// `microshop.inventory.v1.InventoryService`); health reports it and the
/// empty name together, SERVING while `probe` succeeds. `health` lets a
/// service report more entries (the orchestrator reports each participant).
/// Metrics and spans name only the methods of `services`, health and
/// reflection; any other path is `_OTHER` (see [`crate::methods`]).
pub async fn serve<P: StorageProbe>(
    listener: TcpListener,
    service_name: &'static str,
    services: Services,
    probe: P,
    health: HealthReporter,
    args: &ServerArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let auth = crate::auth::AuthLayer::from_args(&args.auth).map_err(ServeError::Setup)?;
    let saga_identity = args.tls.identity_layer().map_err(ServeError::Setup)?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = args.tls.server_config().map_err(ServeError::Setup)? {
        builder = builder.tls_config(tls)?;
    }
    // The microshop services, health, and google.rpc.ErrorInfo, BadRequest,
    // RetryInfo (grpcurl then prints an error's details decoded instead of
    // as raw bytes).
    let reflection = || {
        REFLECTED_DESCRIPTOR_SETS
            .iter()
            .fold(tonic_reflection::server::Builder::configure(), |b, set| {
                b.register_encoded_file_descriptor_set(set)
            })
    };
    let services = services
        .add_service(HealthServer::new(HealthService::from_health_reporter(
            health.clone(),
        )))
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let known = services.known_methods();
    for undescribed in known.undescribed() {
        tracing::warn!(
            service = undescribed,
            "no embedded descriptor defines this service: its calls are counted as _OTHER"
        );
    }

    // Liveness asks only whether the server answers: unlike "" and the
    // service's own name, it stays SERVING while the storage is away, so a
    // database outage never gets a process restarted (Kubernetes probes it
    // with `grpc: {service: liveness}`).
    health
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    // The service's own entries exist from the first call on, NOT_SERVING
    // until the first probe: a name the server does not know answers
    // NOT_FOUND, which the orchestrator takes for a URL that points at
    // another service.
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(service_name, ServingStatus::NotServing)
        .await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let prober = tokio::spawn(probe_loop(probe, health.clone(), service_name, stop_rx));

    let local = listener.local_addr().ok();
    tracing::info!(service = service_name, addr = ?local, "serving");

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = builder
        .timeout(args.request_timeout())
        .layer(
            ServiceBuilder::new()
                // Outermost: shed, refused and failed calls are counted
                // and traced like the rest.
                .layer(crate::observe::ServerObserveLayer::new(known))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(
                    args.max_concurrent_requests,
                ))
                .option_layer(auth)
                .option_layer(saga_identity)
                .option_layer(args.limits.layer())
                // Fault injection (tests, chaos drills): absent unless configured.
                .option_layer(args.faults.as_ref().map(crate::faults::FaultConfig::layer))
                .into_inner(),
        )
        .add_routes(services.into_routes())
        .serve_with_incoming_shutdown(incoming(listener), async {
            shutdown.await;
            tracing::info!(service = service_name, "draining in-flight calls");
            let _ = draining_tx.send(());
        });
    // Draining is bounded: no call outlives the request timeout, and a
    // client that keeps an idle connection open past it must not hold the
    // process (a SIGTERM'd pod would wait for its SIGKILL).
    let drain_within = args.request_timeout() + Duration::from_secs(1);
    let result = tokio::select! {
        result = serving => result,
        () = async {
            if draining_rx.await.is_ok() {
                tokio::time::sleep(drain_within).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(
                service = service_name,
                "connections still open {drain_within:?} after shutdown began; closing them"
            );
            Ok(())
        }
    };

    let _ = stop_tx.send(true);
    // A probe may hang (a database that does not answer): stop it.
    prober.abort();
    let _ = prober.await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(service_name, ServingStatus::NotServing)
        .await;
    tracing::info!(service = service_name, "stopped");
    result.map_err(ServeError::from)
}

async fn probe_loop<P: StorageProbe>(
    probe: P,
    health: HealthReporter,
    service_name: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<bool> = None;
    loop {
        let result = probe.probe().await;
        let ok = result.is_ok();
        if last != Some(ok) {
            let status = if ok {
                tracing::info!(service = service_name, "storage usable: SERVING");
                ServingStatus::Serving
            } else {
                tracing::warn!(
                    service = service_name,
                    reason = result.err().unwrap_or_default(),
                    "storage unusable: NOT_SERVING"
                );
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health.set_service_status(service_name, status).await;
            last = Some(ok);
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Accepted connections with Nagle off: gRPC writes small frames, and
/// Nagle plus delayed ACKs would add ~40 ms to many calls.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%err, "cannot set TCP_NODELAY");
            }
        })
    })
}

/// A new health reporter for [`serve`].
pub fn health_reporter() -> HealthReporter {
    HealthReporter::new()
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus as Status,
        health_client::HealthClient,
    };

    use super::*;

    /// A store that has not answered its first probe yet.
    struct NeverAnswers;

    impl StorageProbe for NeverAnswers {
        async fn probe(&self) -> Result<(), String> {
            pending().await
        }
    }

    /// Regression: before its first storage probe a server answered
    /// NOT_FOUND for its own name, which the orchestrator takes for a
    /// participant URL that points at another service (it logged a
    /// misconfiguration at every start of `microshop bench`).
    #[tokio::test]
    async fn a_server_that_has_not_probed_its_store_yet_knows_its_own_name() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(
                listener,
                "test.v1.NotYetProbed",
                Services::default(),
                NeverAnswers,
                health_reporter(),
                &ServerArgs::default(),
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        // The listener is bound: the connection waits in its backlog until
        // the server accepts it.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::new(channel);
        for name in ["test.v1.NotYetProbed", ""] {
            let answer = client
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("health of {name:?}: {s:?}"));
            assert_eq!(
                answer.get_ref().status,
                Status::NotServing as i32,
                "{name:?}"
            );
        }
        drop(client);
        let _ = stop.send(());
        // Ends although its probe never answered.
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .expect("join")
            .expect("served");
    }
}
