//! Inventory storage traits, split by capability. Each method is one atomic
//! unit: the embedded and MongoDB backends both implement it as a single
//! transaction (effect + barrier record), and return business outcomes as
//! values and only storage failures as errors.

use std::future::Future;

use microshop_storage::StorageError;

use crate::domain::{
    CommitOutcome, Product, ProductUpdate, ReleaseOutcome, ReserveOutcome, StockLine,
};

/// The catalog: products and prices.
pub trait CatalogStore: Clone + Send + Sync + 'static {
    /// Upserts a product; `Err(Some(reserved))` when the stock asked is below
    /// the units currently reserved.
    fn put_product(
        &self,
        update: ProductUpdate,
    ) -> impl Future<Output = Result<Result<Product, i64>, StorageError>> + Send;

    /// Looks products up, in the order asked; `None` for unknown SKUs.
    fn get_products(
        &self,
        skus: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Option<Product>>, StorageError>> + Send;
}

/// The stock ledger driven by sagas (barrier-protected).
pub trait ReservationStore: Clone + Send + Sync + 'static {
    /// Reserves every line for `saga_id`, or none. `None` when the saga's
    /// release already ran (the action is refused).
    fn reserve(
        &self,
        saga_id: String,
        lines: Vec<StockLine>,
    ) -> impl Future<Output = Result<Option<ReserveOutcome>, StorageError>> + Send;

    /// Gives back what `saga_id` holds (release, or restock once sold).
    fn release(
        &self,
        saga_id: String,
    ) -> impl Future<Output = Result<ReleaseOutcome, StorageError>> + Send;

    /// Moves what `saga_id` holds from reserved to sold.
    fn commit(
        &self,
        saga_id: String,
    ) -> impl Future<Output = Result<CommitOutcome, StorageError>> + Send;
}
