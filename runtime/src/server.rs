//! Serving one gRPC service the way every microshop port behaves: health
//! (`grpc.health.v1`, driven by a storage probe), reflection v1 and v1alpha,
//! a per-request timeout, a global concurrency bound that sheds load with
//! RESOURCE_EXHAUSTED instead of queueing, and graceful shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::{ServiceBuilder, limit::GlobalConcurrencyLimitLayer};

use tonic::service::Routes;

use crate::{
    config::ServerArgs,
    methods::{KnownMethods, REFLECTED_DESCRIPTOR_SETS, Services},
    starting::{OpenedLayer, OpenedRoutes},
};

/// The gRPC names of health and reflection, which every server routes.
const HEALTH: &str = tonic_health::pb::health_server::SERVICE_NAME;
const REFLECTION_V1: &str = tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME;
const REFLECTION_V1ALPHA: &str =
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME;

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

/// Serves on `listener` from the first call on, opens the service's store
/// meanwhile, and answers with the services `opening` gives once it has;
/// until `shutdown` resolves, then stops accepting, lets in-flight calls
/// finish and returns.
///
/// `service_name` is the fully-qualified gRPC name (e.g.
/// `microshop.inventory.v1.InventoryService`) health reports, with the
/// empty name, SERVING while the probe `opening` gives succeeds; `more`
/// names the other services it routes (the orchestrator's admin API),
/// which health reports alike. Reflection lists these, health and itself:
/// what this port answers, not every service the binary knows.
/// Until the store is open, health answers (NOT_SERVING) and every other
/// call UNAVAILABLE (see [`crate::starting`]); a failed `opening` stops the
/// server and is returned. `health` lets a service report more entries
/// (the orchestrator reports each participant). Metrics and spans name only
/// the methods of the named services, health and reflection; any other
/// path is `_OTHER` (see [`crate::methods`]).
pub async fn serve<P, F>(
    listener: TcpListener,
    service_name: &'static str,
    more: &[&'static str],
    opening: F,
    health: HealthReporter,
    args: &ServerArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    P: StorageProbe,
    F: Future<Output = Result<(Services, P), ServeError>>,
{
    let auth = crate::auth::AuthLayer::from_args(&args.auth).map_err(ServeError::Setup)?;
    let saga_identity = args.tls.identity_layer().map_err(ServeError::Setup)?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = args.tls.server_config().map_err(ServeError::Setup)? {
        builder = builder.tls_config(tls)?;
    }
    let mut named: Vec<&'static str> = std::iter::once(service_name)
        .chain(more.iter().copied())
        .collect();
    named.sort_unstable();
    let all: Vec<&'static str> = named
        .iter()
        .copied()
        .chain([HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA])
        .collect();
    let known = KnownMethods::of_services(&all);
    for undescribed in known.undescribed() {
        tracing::warn!(
            service = undescribed,
            "no embedded descriptor defines this service: its calls are counted as _OTHER"
        );
    }
    let starting = Routes::from(
        with_health_and_reflection(Services::default(), &health, &named)?
            .into_routes()
            .into_axum_router()
            .fallback(move || std::future::ready(crate::starting::not_open_yet(service_name))),
    );

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
    report(&health, &named, ServingStatus::NotServing).await;

    let local = listener.local_addr().ok();
    tracing::info!(service = service_name, addr = ?local, "serving; opening the store");

    let opened = OpenedRoutes::default();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = builder
        .layer(
            ServiceBuilder::new()
                // Outermost: shed, refused, failed and timed-out calls are
                // counted and traced like the rest.
                .layer(crate::observe::ServerObserveLayer::new(known))
                .map_result(crate::deadline::answer_timed_out::<tonic::body::Body>(
                    args.request_timeout(),
                ))
                .timeout(args.request_timeout())
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(
                    args.max_concurrent_requests,
                ))
                .option_layer(auth)
                .option_layer(saga_identity)
                .option_layer(args.limits.layer())
                .map_response(crate::limits::answer_oversized::<tonic::body::Body>(
                    args.max_message_bytes,
                ))
                // Fault injection (tests, chaos drills): absent unless configured.
                .option_layer(args.faults.as_ref().map(crate::faults::FaultConfig::layer))
                .layer(OpenedLayer::new(Arc::clone(&opened)))
                .into_inner(),
        )
        .add_routes(starting)
        .serve_with_incoming_shutdown(incoming(listener), async {
            tokio::select! {
                () = shutdown => {
                    tracing::info!(service = service_name, "draining in-flight calls");
                }
                _ = failed_rx => {}
            }
            let _ = draining_tx.send(());
        });
    // Draining is bounded: no call outlives the request timeout, and a
    // client that keeps an idle connection open past it must not hold the
    // process (a SIGTERM'd pod would wait for its SIGKILL).
    let drain_within = args.request_timeout() + Duration::from_secs(1);
    let serving = async {
        tokio::select! {
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
        }
    };
    tokio::pin!(serving);

    let open = async {
        let (services, probe) = opening.await?;
        // The labels were fixed before the services existed: a service
        // routed but not named would count as `_OTHER`.
        let mut routed = services.names().to_vec();
        routed.sort_unstable();
        if routed != named {
            return Err(ServeError::Setup(format!(
                "the services opened ({routed:?}) are not the ones named ({named:?})"
            )));
        }
        Ok((
            with_health_and_reflection(services, &health, &named)?.into_routes(),
            probe,
        ))
    };
    tokio::pin!(open);
    // The opening is polled first: a store that is open at once (the
    // embedded one) has its routes set, or its failure returned, before the
    // server has accepted anything, so no call hears that it is opening.
    let open = match poll_once(open.as_mut()).await {
        Some(Err(failed)) => return Err(failed),
        Some(opened) => Ok(opened),
        None => tokio::select! {
            biased;
            open = open => Ok(open),
            served = &mut serving => Err(served),
        },
    };
    let (result, prober) = match open {
        // Shut down (or the transport failed) before the store opened.
        Err(served) => (served.map_err(ServeError::from), None),
        Ok(Err(failed)) => {
            let _ = failed_tx.send(());
            if let Err(e) = serving.await {
                tracing::warn!(error = %e, "stopping after the store failed to open");
            }
            (Err(failed), None)
        }
        Ok(Ok((routes, probe))) => {
            let _ = opened.set(routes);
            tracing::info!(service = service_name, "store open");
            let (stop_tx, stop_rx) = watch::channel(false);
            let prober = tokio::spawn(probe_loop(
                probe,
                health.clone(),
                service_name,
                named.clone(),
                stop_rx,
            ));
            (
                serving.await.map_err(ServeError::from),
                Some((stop_tx, prober)),
            )
        }
    };

    if let Some((stop_tx, prober)) = prober {
        let _ = stop_tx.send(true);
        // A probe may hang (a database that does not answer): stop it.
        prober.abort();
        let _ = prober.await;
    }
    report(&health, &named, ServingStatus::NotServing).await;
    tracing::info!(service = service_name, "stopped");
    result
}

/// Opens a participant's store, then serves the services `services` builds
/// on it with [`serve`], and purges its barrier entries meanwhile
/// (`--barrier-retention-secs`).
pub async fn serve_store<S>(
    listener: TcpListener,
    service_name: &'static str,
    opening: impl Future<Output = Result<S, microshop_storage::StorageError>>,
    services: impl FnOnce(&S) -> Services,
    args: &ServerArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: StorageProbe + microshop_storage::BarrierPurge + Clone,
{
    let mut purge = None;
    let served = serve(
        listener,
        service_name,
        &[],
        async {
            let store = opening
                .await
                .map_err(|e| ServeError::Storage(Box::new(e)))?;
            purge = crate::retention::spawn_barrier_purge(&store, args);
            Ok((services(&store), store))
        },
        health_reporter(),
        args,
        shutdown,
    )
    .await;
    if let Some(purge) = purge {
        purge.abort();
    }
    served
}

/// `future`'s output if it is ready at its first poll.
async fn poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut future).poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// Sets the empty name and each of `named` to `status`.
async fn report(health: &HealthReporter, named: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in named {
        health.set_service_status(*name, status).await;
    }
}

/// `services` with health (reporting through `health`) and reflection v1
/// and v1alpha. Reflection lists `named`, health and both reflection
/// services (each version describes the other too, so a client that
/// speaks one finds both), and describes the microshop messages and
/// google.rpc.ErrorInfo, BadRequest, RetryInfo (grpcurl then prints an
/// error's details decoded instead of as raw bytes).
fn with_health_and_reflection(
    services: Services,
    health: &HealthReporter,
    named: &[&'static str],
) -> Result<Services, ServeError> {
    let reflection = || {
        let builder = REFLECTED_DESCRIPTOR_SETS
            .iter()
            .chain([
                &tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                &tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ])
            .fold(tonic_reflection::server::Builder::configure(), |b, set| {
                b.register_encoded_file_descriptor_set(set)
            });
        named
            .iter()
            .chain(&[HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA])
            .fold(builder, |b, name| b.with_service_name(*name))
    };
    Ok(services
        .add_service(HealthServer::new(HealthService::from_health_reporter(
            health.clone(),
        )))
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?))
}

async fn probe_loop<P: StorageProbe>(
    probe: P,
    health: HealthReporter,
    service_name: &'static str,
    named: Vec<&'static str>,
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
            report(&health, &named, status).await;
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
    use std::{convert::Infallible, future::pending, pin::Pin};

    use tonic::{
        Code, Status,
        body::Body,
        codegen::http::{Request, Response},
        server::NamedService,
        transport::Channel,
    };
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus as Status_,
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

    /// A store that always answers.
    struct Answers;

    impl StorageProbe for Answers {
        async fn probe(&self) -> Result<(), String> {
            Ok(())
        }
    }

    /// The smallest service: `/test.v1.Echo/Call` answers an empty message.
    #[derive(Clone)]
    struct Echo;

    impl NamedService for Echo {
        const NAME: &'static str = "test.v1.Echo";
    }

    struct Call;

    impl tonic::server::UnaryService<()> for Call {
        type Response = ();
        type Future = std::future::Ready<Result<tonic::Response<()>, Status>>;

        fn call(&mut self, _: tonic::Request<()>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(())))
        }
    }

    impl tower::Service<Request<Body>> for Echo {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::<(), ()>::default());
                Ok(grpc.unary(Call, request).await)
            })
        }
    }

    async fn echo(channel: &Channel) -> Result<(), Status> {
        let mut client = tonic::client::Grpc::new(channel.clone());
        client
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        client
            .unary(
                tonic::Request::new(()),
                "/test.v1.Echo/Call".parse().expect("path"),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .map(|_| ())
    }

    /// A listener, and a channel over one connection to it made now (it
    /// waits in the listener's backlog until the server accepts it): a
    /// channel that cannot reconnect, so a server that closed the
    /// connection would fail the calls after it.
    async fn bound() -> (TcpListener, Channel) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let channel = connected(&listener).await;
        (listener, channel)
    }

    /// A channel over one connection to `listener`, made now.
    async fn connected(listener: &TcpListener) -> Channel {
        let addr = listener.local_addr().expect("addr");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let one = Arc::new(std::sync::Mutex::new(Some(stream)));
        let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let stream = one.lock().expect("lock").take();
            async move {
                stream
                    .map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the connection was closed"))
            }
        });
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_with_connector_lazy(connector)
    }

    /// Serves Echo on `listener` in a task, with `opening` as its store's
    /// opening, until the returned sender is used or dropped.
    fn spawn_echo<P: StorageProbe>(
        listener: TcpListener,
        opening: impl Future<Output = Result<(Services, P), ServeError>> + Send + 'static,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), ServeError>>,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(
                listener,
                Echo::NAME,
                &[],
                opening,
                health_reporter(),
                &ServerArgs::default(),
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        (stop, server)
    }

    /// Regression: before its first storage probe a server answered
    /// NOT_FOUND for its own name, which the orchestrator takes for a
    /// participant URL that points at another service (it logged a
    /// misconfiguration at every start of `microshop bench`).
    #[tokio::test]
    async fn a_server_that_has_not_probed_its_store_yet_knows_its_own_name() {
        let (listener, channel) = bound().await;
        let (stop, server) = spawn_echo(
            listener,
            std::future::ready(Ok((Services::new(Echo), NeverAnswers))),
        );
        let mut client = HealthClient::new(channel);
        for name in [Echo::NAME, ""] {
            let answer = client
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("health of {name:?}: {s:?}"));
            assert_eq!(
                answer.get_ref().status,
                Status_::NotServing as i32,
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

    /// Regression: with a store that opens in its first poll (the
    /// embedded one), a connection waiting in the backlog was accepted
    /// before the opening was polled, and its first call, served on
    /// another worker meanwhile, heard "not open yet".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_open_at_start_answers_the_first_call() {
        for _ in 0..8 {
            // Several connections wait to be accepted: the server spawns a
            // task for each, and the other worker may run one at once.
            let (listener, first) = bound().await;
            let mut channels = vec![first];
            for _ in 0..3 {
                channels.push(connected(&listener).await);
            }
            let (stop, server) = spawn_echo(listener, async {
                // Opening an embedded store blocks its task for a
                // moment (a sync open in the first poll).
                std::thread::sleep(Duration::from_millis(30));
                Ok((Services::new(Echo), Answers))
            });
            let calls = channels.iter().map(|c| {
                let c = c.clone();
                tokio::spawn(async move { echo(&c).await })
            });
            for call in calls.collect::<Vec<_>>() {
                call.await.expect("join").expect("the first call");
            }
            drop(channels);
            let _ = stop.send(());
            server.await.expect("join").expect("served");
        }
    }

    /// Regression: a server whose store was still opening served a
    /// placeholder, then handed its listener to the real server; the
    /// hand-over closed every connection, so a call just sent on one
    /// failed CANCELLED ("connection closed") and a health watch ended.
    /// Now one server answers UNAVAILABLE, then the service, on the same
    /// connection.
    #[tokio::test]
    async fn a_connection_opened_while_the_store_opens_is_served_once_it_is_open() {
        let (listener, channel) = bound().await;
        let (open, opened) = tokio::sync::oneshot::channel::<()>();
        let (stop, server) = spawn_echo(listener, async {
            opened.await.expect("the test opens the store");
            Ok((Services::new(Echo), Answers))
        });

        let mut health = HealthClient::new(channel.clone());
        let mut watch = health
            .watch(HealthCheckRequest {
                service: Echo::NAME.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = watch.message().await.expect("watch message");
        assert_eq!(
            first.map(|m| m.status),
            Some(Status_::NotServing as i32),
            "while the store opens"
        );
        let status = echo(&channel)
            .await
            .expect_err("a call before the store is open");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("not open yet"), "{status:?}");

        open.send(()).expect("the server waits for its store");
        // The same stream, on the same connection, sees the first probe.
        let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a health update within 10 s")
            .expect("the watch goes on");
        assert_eq!(next.map(|m| m.status), Some(Status_::Serving as i32));
        echo(&channel)
            .await
            .expect("a call once the store is open, on the same channel");

        drop((watch, health, channel));
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .expect("join")
            .expect("served");
    }

    /// A store that cannot open stops the server with its error, and one
    /// that opens with other services than named is refused.
    #[tokio::test]
    async fn a_store_that_fails_to_open_stops_the_server_with_its_error() {
        let args = ServerArgs::default();
        let (listener, _channel) = bound().await;
        let failed = serve(
            listener,
            Echo::NAME,
            &[],
            std::future::ready(Err::<(Services, Answers), _>(ServeError::Setup(
                "the store is locked".into(),
            ))),
            health_reporter(),
            &args,
            pending(),
        );
        let failed = tokio::time::timeout(Duration::from_secs(10), failed)
            .await
            .expect("returns");
        assert!(
            matches!(&failed, Err(ServeError::Setup(m)) if m == "the store is locked"),
            "{failed:?}"
        );

        let (listener, _channel) = bound().await;
        let unnamed = serve(
            listener,
            "test.v1.Other",
            &[],
            std::future::ready(Ok((Services::new(Echo), Answers))),
            health_reporter(),
            &args,
            pending(),
        );
        let unnamed = tokio::time::timeout(Duration::from_secs(10), unnamed)
            .await
            .expect("returns");
        assert!(
            matches!(&unnamed, Err(ServeError::Setup(m)) if m.contains("not the ones named")),
            "{unnamed:?}"
        );
    }
}
