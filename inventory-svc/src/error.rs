//! inventory-svc's errors and their one mapping to `tonic::Status`.

use microshop_runtime::{
    Reason,
    errors::{invalid_request, rich_status, storage_status},
};
use microshop_storage::StorageError;
use tonic::{Code, Status};

/// Everything an inventory RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Bad fields: (field, why).
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    /// No such product.
    #[error("unknown sku {0}")]
    UnknownSku(String),
    /// Not enough stock for a line.
    #[error("out of stock: {sku}")]
    OutOfStock {
        /// The SKU short.
        sku: String,
        /// Units asked.
        requested: i64,
        /// Units available.
        available: i64,
    },
    /// PutProduct asked for less stock than is reserved.
    #[error("stock below reserved for {sku}")]
    StockBelowReserved {
        /// The SKU.
        sku: String,
        /// Units reserved now.
        reserved: i64,
    },
    /// ReserveStock after its ReleaseStock (anti-hanging).
    #[error("saga {0} was already compensated")]
    SagaCompensated(String),
    /// CommitStock for a reservation released before payment.
    #[error("reservation of saga {0} was released")]
    ReservationReleased(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<InventoryError> for Status {
    fn from(err: InventoryError) -> Self {
        match err {
            InventoryError::Invalid(violations) => invalid_request(&violations),
            InventoryError::UnknownSku(sku) => rich_status(
                Code::NotFound,
                Reason::UnknownSku,
                format!("unknown sku {sku:?}; add it with PutProduct or fix the cart"),
                [("sku", sku)],
                None,
            ),
            InventoryError::OutOfStock {
                sku,
                requested,
                available,
            } => rich_status(
                Code::FailedPrecondition,
                Reason::OutOfStock,
                format!(
                    "out of stock: sku {sku:?} has {available} available, {requested} requested; \
                     lower the quantity or try later"
                ),
                [
                    ("sku", sku),
                    ("requested", requested.to_string()),
                    ("available", available.to_string()),
                ],
                None,
            ),
            InventoryError::StockBelowReserved { sku, reserved } => rich_status(
                Code::FailedPrecondition,
                Reason::StockBelowReserved,
                format!("sku {sku:?} has {reserved} units reserved; stock must be at least that"),
                [("sku", sku), ("reserved", reserved.to_string())],
                None,
            ),
            InventoryError::SagaCompensated(saga_id) => rich_status(
                Code::FailedPrecondition,
                Reason::SagaAlreadyCompensated,
                format!("saga {saga_id} was already compensated; the reservation is refused"),
                [("sagaId", saga_id)],
                None,
            ),
            InventoryError::ReservationReleased(saga_id) => rich_status(
                Code::FailedPrecondition,
                Reason::SagaAlreadyCompensated,
                format!("the reservation of saga {saga_id} was released; it cannot be committed"),
                [("sagaId", saga_id)],
                None,
            ),
            InventoryError::Storage(e) => storage_status(&e),
        }
    }
}
