//! inventory-svc: the catalog (names, authoritative unit prices) and the
//! stock ledger. Checkout sagas reserve stock here before an order exists,
//! atomically for every line, so concurrent orders can never oversell.

pub mod conversions;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod service;
pub mod store;

use std::future::Future;

use microshop_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use microshop_runtime::{ServeError, ServerArgs, StorageProbe};
use microshop_storage::embedded::Durable;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use embedded::EmbeddedInventory;
pub use service::Inventory;

/// The fully-qualified gRPC service name (health reports it).
pub const SERVICE_NAME: &str =
    microshop_proto::inventory::v1::inventory_service_server::SERVICE_NAME;

/// Settings of inventory-svc.
#[derive(Clone, Debug)]
pub struct InventoryConfig {
    /// Shared server settings.
    pub server: ServerArgs,
    /// Whether commits are fsync'd (always, but for benchmark baselines).
    pub durable: Durable,
}

impl InventoryConfig {
    /// Defaults with the given server settings.
    pub fn new(server: ServerArgs) -> Self {
        Self {
            server,
            durable: Durable::Yes,
        }
    }
}

/// Opens the store and serves inventory-svc on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: InventoryConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let store = EmbeddedInventory::open(&config.server.data_dir, config.durable)
        .map_err(|e| ServeError::Storage(Box::new(e)))?;
    let server = InventoryServiceServer::new(Inventory::new(store.clone()))
        .max_decoding_message_size(config.server.max_message_bytes);
    microshop_runtime::serve(
        listener,
        SERVICE_NAME,
        Routes::new(server),
        Probe(store),
        microshop_runtime::health_reporter(),
        &config.server,
        shutdown,
    )
    .await
}

struct Probe(EmbeddedInventory);

impl StorageProbe for Probe {
    async fn probe(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}
