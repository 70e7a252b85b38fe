//! Starting the whole mesh in one process: `microshop up`, the demo, the
//! benchmark and the scenario tests all go through [`Mesh::start`], so they
//! run the very servers `microshop serve` runs, over real loopback gRPC.

use std::{net::SocketAddr, time::Duration};

use inventory_svc::InventoryConfig;
use loyalty_svc::LoyaltyConfig;
use microshop_proto::{
    inventory::v1::inventory_service_client::InventoryServiceClient,
    loyalty::v1::loyalty_service_client::LoyaltyServiceClient,
    orchestrator::v1::{
        checkout_service_client::CheckoutServiceClient,
        saga_admin_service_client::SagaAdminServiceClient,
    },
    order::v1::order_service_client::OrderServiceClient,
};
use microshop_runtime::{ServeError, ServerArgs};
use microshop_storage::embedded::Durable;
use orchestrator::{EngineConfig, OrchestratorConfig, ParticipantUrls};
use order_svc::{InvalidPricing, OrderConfig, PricingRules};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic::transport::Channel;

/// Where each service of an in-process mesh listens.
#[derive(Clone, Debug)]
pub struct MeshAddrs {
    /// Orchestrator (CheckoutService, SagaAdminService).
    pub orchestrator: SocketAddr,
    /// inventory-svc.
    pub inventory: SocketAddr,
    /// loyalty-svc.
    pub loyalty: SocketAddr,
    /// order-svc.
    pub order: SocketAddr,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Shared server settings (data directory, limits, logs).
    pub server: ServerArgs,
    /// Addresses to bind; port 0 picks a free one.
    pub listen: MeshAddrs,
    /// Saga driver settings.
    pub engine: EngineConfig,
    /// Durable commits (off only for benchmark baselines).
    pub durable: Durable,
    /// Pricing rules of order-svc; loyalty-svc earns by their
    /// `earn_amount_per_point` when a caller gives no rate of its own.
    pub pricing: PricingRules,
}

impl MeshConfig {
    /// Every service on a free loopback port, data under `data_dir`.
    pub fn ephemeral(data_dir: impl Into<std::path::PathBuf>) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            server: ServerArgs::with_data_dir(data_dir),
            listen: MeshAddrs {
                orchestrator: any,
                inventory: any,
                loyalty: any,
                order: any,
            },
            engine: EngineConfig::default(),
            durable: Durable::Yes,
            pricing: PricingRules::default(),
        }
    }
}

/// A running in-process mesh.
#[derive(Debug)]
pub struct Mesh {
    /// Where each service listens.
    pub addrs: MeshAddrs,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(&'static str, Result<(), ServeError>)>,
}

/// The mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A port could not be bound.
    #[error("cannot listen on {addr} for {service}")]
    Bind {
        /// The service.
        service: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pricing settings would misprice orders: nothing was started.
    #[error(transparent)]
    Pricing(#[from] InvalidPricing),
    /// The data directory holds stores of an earlier version: nothing was
    /// started (no store created beside them).
    #[error(
        "{} holds stores of an earlier microshop version ({stores}); convert them once with \
         `microshop migrate --data-dir {}`, then start again (nothing was started)",
        dir.display(),
        dir.display()
    )]
    Unmigrated {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The old files, comma-separated.
        stores: String,
    },
    /// A service stopped with an error.
    #[error("{service} stopped")]
    Service {
        /// The service.
        service: &'static str,
        /// Why.
        #[source]
        source: ServeError,
    },
}

async fn bind(service: &'static str, addr: SocketAddr) -> Result<TcpListener, MeshError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MeshError::Bind {
            service,
            addr,
            source,
        })
}

fn local(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("a bound listener has an address")
}

impl Mesh {
    /// Checks the pricing rules, binds every port, then starts the four
    /// services.
    pub async fn start(config: MeshConfig) -> Result<Self, MeshError> {
        order_svc::settings::check(&config.pricing)?;
        // Each service would refuse only its own old file, after the others
        // had created their new stores beside theirs: refuse them all first.
        let server = &config.server;
        if server.mongodb_uri.is_none() && server.mongodb_uri_file.is_none() {
            let old = crate::migrate::unmigrated(&server.data_dir);
            if !old.is_empty() {
                return Err(MeshError::Unmigrated {
                    dir: server.data_dir.clone(),
                    stores: old.join(", "),
                });
            }
        }
        let inv = bind("inventory", config.listen.inventory).await?;
        let loy = bind("loyalty", config.listen.loyalty).await?;
        let ord = bind("order", config.listen.order).await?;
        let orch = bind("orchestrator", config.listen.orchestrator).await?;
        let addrs = MeshAddrs {
            orchestrator: local(&orch),
            inventory: local(&inv),
            loyalty: local(&loy),
            order: local(&ord),
        };
        let (stop, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = JoinSet::new();

        let mut inv_cfg = InventoryConfig::new(config.server.clone());
        inv_cfg.durable = config.durable;
        tasks.spawn({
            let s = stopped();
            async move { ("inventory", inventory_svc::run(inv, inv_cfg, s).await) }
        });

        let mut loy_cfg = LoyaltyConfig::new(config.server.clone());
        loy_cfg.durable = config.durable;
        loy_cfg.earn_amount_per_point = config.pricing.earn_amount_per_point;
        tasks.spawn({
            let s = stopped();
            async move { ("loyalty", loyalty_svc::run(loy, loy_cfg, s).await) }
        });

        let mut ord_cfg = OrderConfig::new(config.server.clone());
        ord_cfg.durable = config.durable;
        ord_cfg.pricing = config.pricing;
        tasks.spawn({
            let s = stopped();
            async move { ("order", order_svc::run(ord, ord_cfg, s).await) }
        });

        let urls = ParticipantUrls {
            inventory: format!("http://{}", addrs.inventory),
            loyalty: format!("http://{}", addrs.loyalty),
            order: format!("http://{}", addrs.order),
        };
        let mut orch_cfg = OrchestratorConfig::new(config.server.clone(), urls);
        orch_cfg.engine = config.engine.clone();
        orch_cfg.durable = config.durable;
        tasks.spawn({
            let s = stopped();
            async move { ("orchestrator", orchestrator::run(orch, orch_cfg, s).await) }
        });

        Ok(Self { addrs, stop, tasks })
    }

    /// The orchestrator's URL.
    pub fn orchestrator_url(&self) -> String {
        format!("http://{}", self.addrs.orchestrator)
    }

    /// Waits until a service stops by itself (an error) or `shutdown`
    /// resolves, then stops everything gracefully.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), MeshError> {
        let early = tokio::select! {
            () = shutdown => None,
            Some(joined) = self.tasks.join_next() => Some(joined),
        };
        let _ = self.stop.send(true);
        let mut first_error = None;
        if let Some(Ok((service, Err(source)))) = early {
            first_error = Some(MeshError::Service { service, source });
        }
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok((service, Err(source))) = joined {
                tracing::error!(service, error = %source, "service stopped with an error");
                first_error.get_or_insert(MeshError::Service { service, source });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every service and waits for them (in-flight calls finish).
    pub async fn shutdown(self) -> Result<(), MeshError> {
        self.run_until(async {}).await
    }
}

/// Clients of every service of a mesh.
#[derive(Clone, Debug)]
pub struct MeshClients {
    /// CheckoutService.
    pub checkout: CheckoutServiceClient<Channel>,
    /// SagaAdminService.
    pub admin: SagaAdminServiceClient<Channel>,
    /// inventory-svc.
    pub inventory: InventoryServiceClient<Channel>,
    /// loyalty-svc.
    pub loyalty: LoyaltyServiceClient<Channel>,
    /// order-svc.
    pub order: OrderServiceClient<Channel>,
}

impl MeshClients {
    /// Connects to every service, waiting up to `within` for each.
    pub async fn connect(
        addrs: &MeshAddrs,
        within: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        let orch = connect(&format!("http://{}", addrs.orchestrator), within).await?;
        Ok(Self {
            checkout: CheckoutServiceClient::new(orch.clone()),
            admin: SagaAdminServiceClient::new(orch),
            inventory: InventoryServiceClient::new(
                connect(&format!("http://{}", addrs.inventory), within).await?,
            ),
            loyalty: LoyaltyServiceClient::new(
                connect(&format!("http://{}", addrs.loyalty), within).await?,
            ),
            order: OrderServiceClient::new(
                connect(&format!("http://{}", addrs.order), within).await?,
            ),
        })
    }
}

/// Polls `url` until a gRPC channel connects, for at most `within`.
pub async fn connect(
    url: &str,
    within: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_millis(500));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
