//! order-svc: prices carts, stores orders with every pricing field and their
//! status history, and keeps coupons with their use counts.
//!
//! It is the last participant of a checkout saga: CreateOrder runs after the
//! stock is reserved and the points deducted, prices the order server-side
//! ([`pricing`]) and consumes one coupon use in the same transaction, so
//! concurrent orders can never exceed a coupon's limit. CancelOrder, its
//! compensation, needs only the saga id and gives the coupon use back.

pub mod conversions;
pub mod currency;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod lifecycle;
pub mod mongo;
pub mod pricing;
pub mod service;
pub mod settings;
pub mod store;

use std::future::Future;

use microshop_proto::order::v1::order_service_server::OrderServiceServer;
use microshop_runtime::{ServeError, ServerArgs, Services};
use microshop_storage::{Ping, StorageError, embedded::Durable, mongo::MongoDb};
use tokio::net::TcpListener;

use crate::store::{CouponStore, OrderQueries, OrderStore};

pub use currency::Currency;
pub use embedded::EmbeddedOrders;
pub use mongo::MongoOrders;
pub use pricing::PricingRules;
pub use service::Orders;
pub use settings::{InvalidPricing, PricingArgs};

/// The fully-qualified gRPC service name (health reports it).
pub const SERVICE_NAME: &str = microshop_proto::order::v1::order_service_server::SERVICE_NAME;

/// Settings of order-svc.
#[derive(Clone, Debug)]
pub struct OrderConfig {
    /// Shared server settings.
    pub server: ServerArgs,
    /// Whether commits are fsync'd (always, but for benchmark baselines).
    pub durable: Durable,
    /// Tax, shipping, point and earn rules and the currency, recorded on
    /// every order created; checked by [`run`] before it serves.
    pub pricing: PricingRules,
}

impl OrderConfig {
    /// Defaults (seed pricing rules) with the given server settings.
    pub fn new(server: ServerArgs) -> Self {
        Self {
            server,
            durable: Durable::Yes,
            pricing: PricingRules::default(),
        }
    }
}

/// Opens the store (MongoDB when `MONGODB_URI` is set, else the embedded
/// file) and serves order-svc on `listener` until `shutdown`. Refuses to
/// start on invalid pricing rules ([`settings::check`]).
pub async fn run(
    listener: TcpListener,
    config: OrderConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    settings::check(&config.pricing).map_err(|e| ServeError::Setup(e.to_string()))?;
    match config.server.resolved_mongodb_uri()? {
        Some(uri) => {
            let opening = async {
                let db = MongoDb::connect(&uri, &config.server.mongodb_database("order")).await?;
                MongoOrders::open(db).await
            };
            serve(listener, &config, opening, shutdown).await
        }
        None => {
            let opening = std::future::ready(EmbeddedOrders::open(
                &config.server.data_dir,
                config.durable,
            ));
            serve(listener, &config, opening, shutdown).await
        }
    }
}

async fn serve<
    S: CouponStore + OrderStore + OrderQueries + Ping + microshop_storage::BarrierPurge,
>(
    listener: TcpListener,
    config: &OrderConfig,
    opening: impl Future<Output = Result<S, StorageError>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let max = config.server.max_message_bytes;
    let pricing = config.pricing;
    microshop_runtime::serve_store(
        listener,
        SERVICE_NAME,
        opening,
        |store| {
            Services::new(
                OrderServiceServer::new(Orders::new(store.clone(), pricing))
                    .max_decoding_message_size(max),
            )
        },
        &config.server,
        shutdown,
    )
    .await
}
