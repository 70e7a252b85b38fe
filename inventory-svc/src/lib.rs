//! inventory-svc: the catalog (names, authoritative unit prices) and the
//! stock ledger. Checkout sagas reserve stock here before an order exists,
//! atomically for every line, so concurrent orders can never oversell.

pub mod conversions;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod mongo;
pub mod service;
pub mod store;

use std::future::Future;

use microshop_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use microshop_runtime::{ServeError, ServerArgs, Services};
use microshop_storage::{Ping, StorageError, embedded::Durable, mongo::MongoDb};
use tokio::net::TcpListener;

use crate::store::{CatalogStore, ReservationStore};

pub use embedded::EmbeddedInventory;
pub use mongo::MongoInventory;
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

/// Opens the store (MongoDB when `MONGODB_URI` is set, else the embedded
/// file) and serves inventory-svc on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: InventoryConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    match config.server.resolved_mongodb_uri()? {
        Some(uri) => {
            let opening = async {
                let db =
                    MongoDb::connect(&uri, &config.server.mongodb_database("inventory")).await?;
                MongoInventory::open(db).await
            };
            serve(listener, &config, opening, shutdown).await
        }
        None => {
            let opening = std::future::ready(EmbeddedInventory::open(
                &config.server.data_dir,
                config.durable,
            ));
            serve(listener, &config, opening, shutdown).await
        }
    }
}

async fn serve<S: CatalogStore + ReservationStore + Ping + microshop_storage::BarrierPurge>(
    listener: TcpListener,
    config: &InventoryConfig,
    opening: impl Future<Output = Result<S, StorageError>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let max = config.server.max_message_bytes;
    microshop_runtime::serve_store(
        listener,
        SERVICE_NAME,
        opening,
        |store| {
            Services::new(
                InventoryServiceServer::new(Inventory::new(store.clone()))
                    .max_decoding_message_size(max),
            )
        },
        &config.server,
        shutdown,
    )
    .await
}
