//! The saga orchestrator: drives every checkout through reserve-stock,
//! deduct-points and create-order, confirm-payment and cancel through their
//! steps, persisting each saga before and after every participant call, so
//! a crash anywhere resumes where it stopped and a rejected step is undone
//! by compensations in reverse order.

pub mod api;
pub mod conversions;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod log;
pub mod model;
pub mod mongo;
pub mod participants;
pub mod record;
pub mod steps;

use std::{future::Future, sync::Arc, time::Duration};

use microshop_proto::orchestrator::v1::{
    checkout_service_server::CheckoutServiceServer,
    saga_admin_service_server::SagaAdminServiceServer,
};
use microshop_runtime::{HealthReporter, ServeError, ServerArgs, Services};
use microshop_storage::{StorageError, embedded::Durable, mongo::MongoDb};
use tokio::{net::TcpListener, sync::watch};
use tonic_health::{ServingStatus, pb::health_client::HealthClient};

pub use api::Api;
pub use embedded::EmbeddedSagaLog;
pub use engine::{Engine, EngineConfig};
pub use log::SagaLog;
pub use mongo::MongoSagaLog;
pub use participants::{ParticipantUrls, Participants, Peer};

/// The fully-qualified name of the checkout service (health reports it).
pub const SERVICE_NAME: &str =
    microshop_proto::orchestrator::v1::checkout_service_server::SERVICE_NAME;

/// The fully-qualified gRPC name of the admin API, served on the same port.
pub const ADMIN_SERVICE_NAME: &str =
    microshop_proto::orchestrator::v1::saga_admin_service_server::SERVICE_NAME;

/// Settings of the orchestrator.
#[derive(Clone, Debug)]
pub struct OrchestratorConfig {
    /// Shared server settings.
    pub server: ServerArgs,
    /// Where the participants are.
    pub participants: ParticipantUrls,
    /// Driver budgets.
    pub engine: EngineConfig,
    /// Whether commits are fsync'd (always, but for benchmark baselines).
    pub durable: Durable,
}

impl OrchestratorConfig {
    /// Defaults with the given server settings and participants.
    pub fn new(server: ServerArgs, participants: ParticipantUrls) -> Self {
        Self {
            server,
            participants,
            engine: EngineConfig::default(),
            durable: Durable::Yes,
        }
    }
}

/// Opens the saga log (MongoDB when `MONGODB_URI` is set, else the
/// embedded file), resumes unfinished sagas and serves the checkout and
/// admin APIs on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: OrchestratorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    match config.server.resolved_mongodb_uri()? {
        Some(uri) => {
            tracing::info!(instance = %config.engine.instance_id, "saga log on MongoDB, shared with other orchestrators");
            let opening = async {
                let db =
                    MongoDb::connect(&uri, &config.server.mongodb_database("orchestrator")).await?;
                let log =
                    MongoSagaLog::open(db, config.engine.instance_id.clone(), config.engine.lease)
                        .await?
                        .with_failpoint(config.engine.failpoint.clone());
                let backfill = log.clone();
                tokio::spawn(async move {
                    match backfill.backfill_listing_fields().await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(
                                sagas = n,
                                "gave older saga documents their listing fields"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot backfill the listing fields of older sagas; filters by customer, order or type may miss them until the next start")
                        }
                    }
                });
                Ok(log)
            };
            serve(listener, &config, opening, shutdown).await
        }
        None => {
            let opening = std::future::ready(EmbeddedSagaLog::open(
                &config.server.data_dir,
                config.durable,
            ));
            serve(listener, &config, opening, shutdown).await
        }
    }
}

async fn serve<L: SagaLog>(
    listener: TcpListener,
    config: &OrchestratorConfig,
    opening: impl Future<Output = Result<L, StorageError>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = config
        .server
        .tls
        .client_config()
        .map_err(ServeError::Setup)?;
    if tls.is_some() {
        let urls = &config.participants;
        if let Some(url) = [&urls.inventory, &urls.loyalty, &urls.order]
            .into_iter()
            .find(|u| !u.starts_with("https://"))
        {
            return Err(ServeError::Setup(format!(
                "with MICROSHOP_TLS_CA_FILE set, participant URLs must be https:// (got {url})"
            )));
        }
    }
    let participants = Participants::connect_lazy_with_tls(
        &config.participants,
        config.engine.call_timeout,
        tls.as_ref(),
    )
    .map_err(|e| ServeError::Setup(format!("bad participant url: {e}")))?;
    let participants = match config
        .server
        .auth
        .service_token()
        .map_err(ServeError::Setup)?
    {
        Some(token) => participants
            .with_service_token(&token)
            .map_err(|_| ServeError::Setup("the service token is not valid ASCII".into()))?,
        None => {
            if config.server.auth.enabled() {
                tracing::warn!(
                    "authentication is on but no service token is set \
                     (MICROSHOP_AUTH_SERVICE_TOKEN_FILE): participants with \
                     authentication on will refuse saga calls"
                );
            }
            participants
        }
    };
    let health = microshop_runtime::health_reporter();
    // The participants' entries exist from the first call on, NOT_SERVING
    // until the monitor's first check (which starts once the log is open,
    // seconds later on a database still starting): NOT_FOUND would say the
    // orchestrator does not know them at all.
    for peer in [Peer::Inventory, Peer::Loyalty, Peer::Order] {
        health
            .set_service_status(peer.service_name(), ServingStatus::NotServing)
            .await;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    // The engine's background work and the participant monitor, started
    // once the log is open, stopped once serving ends.
    let mut tasks = Vec::new();
    let opened = async {
        let log = opening
            .await
            .map_err(|e| ServeError::Storage(Box::new(e)))?;
        let engine = Engine::new(log.clone(), participants, config.engine.clone());
        tasks.push(tokio::spawn(
            Arc::clone(&engine).background(stop_rx.clone()),
        ));
        tasks.push(tokio::spawn(watch_participants(
            config.participants.clone(),
            tls,
            health.clone(),
            Arc::clone(&engine),
            stop_rx,
        )));
        let api = Api::new(engine);
        let max = config.server.max_message_bytes;
        let routes =
            Services::new(CheckoutServiceServer::new(api.clone()).max_decoding_message_size(max))
                .add_service(SagaAdminServiceServer::new(api).max_decoding_message_size(max));
        Ok((routes, log))
    };
    let result = microshop_runtime::serve(
        listener,
        SERVICE_NAME,
        &[ADMIN_SERVICE_NAME],
        opened,
        health.clone(),
        &config.server,
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    result
}

/// What the last health check of a participant found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Not checked yet.
    Never,
    /// Down at the first check: a mesh started in one process checks its
    /// participants while they still open their stores, so this is only
    /// worth a warning if the next check finds it down too.
    DownAtStart,
    Up,
    Down,
}

/// Reports each participant's health under its service name on the
/// orchestrator's own health service, so `grpc.health.v1.Health/Check`
/// with e.g. `microshop.loyalty.v1.LoyaltyService` says which is down, and
/// tells the engine, which re-drives the sagas waiting for a participant
/// as soon as it is back.
async fn watch_participants<L: SagaLog>(
    urls: ParticipantUrls,
    tls: Option<tonic::transport::ClientTlsConfig>,
    health: HealthReporter,
    engine: Arc<Engine<L>>,
    mut stop: watch::Receiver<bool>,
) {
    let targets = [
        (Peer::Inventory, urls.inventory),
        (Peer::Loyalty, urls.loyalty),
        (Peer::Order, urls.order),
    ];
    let mut clients = Vec::new();
    for (peer, url) in targets {
        // The saga calls' settings (keepalive, connect timeout, the whole
        // call bounded by its deadline): a participant cut off silently
        // is reported down within a check, and back as soon as it is.
        match participants::endpoint(&url, tls.as_ref()) {
            Ok(ep) => clients.push((
                peer,
                url,
                HealthClient::new(participants::CallDeadline::new(ep.connect_lazy())),
                Seen::Never,
            )),
            Err(e) => tracing::error!(%url, error = %e, "bad participant url"),
        }
    }
    loop {
        for (peer, url, client, seen) in &mut clients {
            let name = peer.service_name();
            // Ask for the participant's own service, not the server as a
            // whole: a URL that reaches another of our services (a swapped
            // port) answers NOT_FOUND for it, and must not count as up.
            let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: name.to_owned(),
            });
            request.set_timeout(Duration::from_secs(1));
            let answer = client.check(request).await;
            let up = matches!(
                &answer,
                Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
            let misconfigured = matches!(&answer, Err(s) if s.code() == tonic::Code::NotFound);
            engine.health().report_misconfigured(*peer, misconfigured);
            if misconfigured && matches!(*seen, Seen::Never | Seen::Up) {
                tracing::error!(
                    participant = %name,
                    %url,
                    "{url} answers but does not serve {name}: the participant URL points at \
                     another service; fix the orchestrator's --{}-url",
                    peer.flag_name()
                );
            }
            if engine.health().report(*peer, up, model::now_ms()) {
                engine.participant_back(*peer);
            }
            let now = match (up, *seen) {
                (true, _) => Seen::Up,
                (false, Seen::Never) => Seen::DownAtStart,
                (false, _) => Seen::Down,
            };
            if now != *seen {
                match now {
                    Seen::Up => tracing::info!(participant = %name, %url, "participant reachable"),
                    Seen::DownAtStart if !misconfigured => tracing::info!(
                        participant = %name,
                        %url,
                        "participant not serving yet; checking again in 2 s"
                    ),
                    Seen::Down if !misconfigured => tracing::warn!(
                        participant = %name,
                        %url,
                        "participant unreachable or not serving; sagas will wait for it"
                    ),
                    _ => {}
                }
                let status = if up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health.set_service_status(name, status).await;
                *seen = now;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
