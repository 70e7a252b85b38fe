//! The whole mesh in one call: all four services on a temporary data
//! directory, stopped and restarted together.

use std::{
    ops::{Deref, DerefMut},
    path::Path,
    time::Duration,
};

use microshop::mesh::{Mesh, MeshAddrs, MeshClients, MeshConfig};
use orchestrator::EngineConfig;
use tempfile::TempDir;
use tokio::time::timeout;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    poll::{health_client, wait_health},
    settings::{CONNECT_WITHIN, EARN_AMOUNT_PER_POINT, STOP_WITHIN},
    shop::Shop,
};

/// A mesh on a temporary directory, with its [`Shop`] (deref).
#[derive(Debug)]
pub struct TestMesh {
    /// Clients and universe.
    pub shop: Shop,
    mesh: Option<Mesh>,
    addrs: MeshAddrs,
    dir: TempDir,
}

impl TestMesh {
    /// Starts the four services on free loopback ports with `engine`.
    pub async fn start(engine: EngineConfig) -> Self {
        Self::start_with(engine, |_| {}).await
    }

    /// Starts the four services with `engine`, after `configure` has had
    /// its say on the rest (e.g. `server.faults` to inject faults into the
    /// participants' saga RPCs: see `microshop_runtime::faults`).
    pub async fn start_with(engine: EngineConfig, configure: impl FnOnce(&mut MeshConfig)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mesh = start_mesh(dir.path(), engine, configure).await;
        let addrs = mesh.addrs.clone();
        let shop = Shop::connect(&addrs).await;
        Self {
            shop,
            mesh: Some(mesh),
            addrs,
            dir,
        }
    }

    /// Stops every service gracefully, then starts them again on the same
    /// data with `engine` and `configure`'s settings (new ports; the shop
    /// reconnects and keeps its universe): what an operator's restart with
    /// changed settings does.
    pub async fn restart_with(
        &mut self,
        engine: EngineConfig,
        configure: impl FnOnce(&mut MeshConfig),
    ) {
        self.restart_after(engine, configure, async |_| {}).await;
    }

    /// Like [`Self::restart_with`], with `meanwhile` run on the data
    /// directory while every service is stopped (to leave the stores as a
    /// power cut would).
    pub async fn restart_after(
        &mut self,
        engine: EngineConfig,
        configure: impl FnOnce(&mut MeshConfig),
        meanwhile: impl AsyncFnOnce(&Path),
    ) {
        if let Some(mesh) = self.mesh.take() {
            timeout(STOP_WITHIN, mesh.shutdown())
                .await
                .expect("the mesh stops within its bound")
                .expect("no service stopped with an error");
        }
        meanwhile(self.dir.path()).await;
        let mesh = start_mesh(self.dir.path(), engine, configure).await;
        self.addrs = mesh.addrs.clone();
        self.shop.clients = MeshClients::connect(&self.addrs, CONNECT_WITHIN)
            .await
            .expect("reconnect to the restarted mesh");
        self.mesh = Some(mesh);
    }

    /// Where each service listens.
    pub fn addrs(&self) -> &MeshAddrs {
        &self.addrs
    }

    /// Stops every service gracefully (bounded) and checks none failed.
    pub async fn shutdown(mut self) {
        if let Some(mesh) = self.mesh.take() {
            timeout(STOP_WITHIN, mesh.shutdown())
                .await
                .expect("the mesh stops within its bound")
                .expect("no service stopped with an error");
        }
    }
}

impl Deref for TestMesh {
    type Target = Shop;
    fn deref(&self) -> &Shop {
        &self.shop
    }
}

impl DerefMut for TestMesh {
    fn deref_mut(&mut self) -> &mut Shop {
        &mut self.shop
    }
}

/// The test mesh's settings on `dir`, adjusted by `configure`, started.
async fn start_mesh(
    dir: &Path,
    engine: EngineConfig,
    configure: impl FnOnce(&mut MeshConfig),
) -> Mesh {
    let mut config = MeshConfig::ephemeral(dir);
    config.server = microshop_runtime::testing::server_args(dir);
    config.engine = engine;
    config.pricing.earn_amount_per_point = EARN_AMOUNT_PER_POINT;
    configure(&mut config);
    let mesh = Mesh::start(config).await.expect("the mesh starts");
    // A store on MongoDB opens once its indexes exist; meanwhile its
    // service answers UNAVAILABLE (health NOT_SERVING). The tests start
    // from a serving mesh.
    let addrs = &mesh.addrs;
    for addr in [
        addrs.inventory,
        addrs.loyalty,
        addrs.order,
        addrs.orchestrator,
    ] {
        wait_health(
            &health_client(addr),
            "",
            ServingStatus::Serving,
            Duration::from_secs(30),
        )
        .await;
    }
    mesh
}
