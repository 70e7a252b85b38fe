//! loyalty-svc: loyalty members and their point balances. Checkout sagas
//! deduct the points a customer redeems (refunded if the saga compensates),
//! and paid orders earn points; every saga RPC goes through the participant
//! barrier, so retries, null compensations and late actions stay exact.

pub mod conversions;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod mongo;
pub mod service;
pub mod store;

use std::future::Future;

use microshop_proto::loyalty::v1::loyalty_service_server::LoyaltyServiceServer;
use microshop_runtime::{ServeError, ServerArgs, Services};
use microshop_storage::{Ping, StorageError, embedded::Durable, mongo::MongoDb};
use tokio::net::TcpListener;

use crate::{
    domain::DEFAULT_EARN_AMOUNT_PER_POINT,
    store::{AccountStore, PointsLedgerStore},
};

pub use embedded::EmbeddedLoyalty;
pub use mongo::MongoLoyalty;
pub use service::Loyalty;

/// The fully-qualified gRPC service name (health reports it).
pub const SERVICE_NAME: &str = microshop_proto::loyalty::v1::loyalty_service_server::SERVICE_NAME;

/// Settings of loyalty-svc.
#[derive(Clone, Debug)]
pub struct LoyaltyConfig {
    /// Shared server settings.
    pub server: ServerArgs,
    /// Whether commits are fsync'd (always, but for benchmark baselines).
    pub durable: Durable,
    /// Amount paid (smallest currency unit) that earns one point; must be
    /// greater than zero.
    pub earn_amount_per_point: i64,
}

impl LoyaltyConfig {
    /// Defaults with the given server settings.
    pub fn new(server: ServerArgs) -> Self {
        Self {
            server,
            durable: Durable::Yes,
            earn_amount_per_point: DEFAULT_EARN_AMOUNT_PER_POINT,
        }
    }
}

/// Opens the store (MongoDB when `MONGODB_URI` is set, else the embedded
/// file) and serves loyalty-svc on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: LoyaltyConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if config.earn_amount_per_point <= 0 {
        return Err(ServeError::Setup(format!(
            "invalid pricing settings: --earn-amount-per-point \
             (MICROSHOP_EARN_AMOUNT_PER_POINT) must be greater than zero (got {})",
            config.earn_amount_per_point
        )));
    }
    match config.server.resolved_mongodb_uri()? {
        Some(uri) => {
            let opening = async {
                let db = MongoDb::connect(&uri, &config.server.mongodb_database("loyalty")).await?;
                MongoLoyalty::open(db).await
            };
            serve(listener, &config, opening, shutdown).await
        }
        None => {
            let opening = std::future::ready(EmbeddedLoyalty::open(
                &config.server.data_dir,
                config.durable,
            ));
            serve(listener, &config, opening, shutdown).await
        }
    }
}

async fn serve<S: AccountStore + PointsLedgerStore + Ping + microshop_storage::BarrierPurge>(
    listener: TcpListener,
    config: &LoyaltyConfig,
    opening: impl Future<Output = Result<S, StorageError>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let max = config.server.max_message_bytes;
    let earn = config.earn_amount_per_point;
    microshop_runtime::serve_store(
        listener,
        SERVICE_NAME,
        opening,
        |store| {
            Services::new(
                LoyaltyServiceServer::new(
                    Loyalty::new(store.clone()).with_earn_amount_per_point(earn),
                )
                .max_decoding_message_size(max),
            )
        },
        &config.server,
        shutdown,
    )
    .await
}
