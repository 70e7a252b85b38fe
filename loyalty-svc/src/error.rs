//! loyalty-svc's errors and their one mapping to `tonic::Status`.

use microshop_runtime::{
    Reason,
    errors::{invalid_request, rich_status, storage_status},
};
use microshop_storage::StorageError;
use tonic::{Code, Status};

/// Everything a loyalty RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LoyaltyError {
    /// Bad fields: (field, why).
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    /// DeductPoints for a customer who is not a member (or unknown).
    #[error("customer {0} is not a loyalty member")]
    NotAMember(String),
    /// DeductPoints for more points than the customer has.
    #[error("customer {customer_id} has insufficient points")]
    InsufficientPoints {
        /// The customer.
        customer_id: String,
        /// Points the customer had.
        balance: i64,
        /// Points asked.
        requested: i64,
    },
    /// DeductPoints after its RefundPoints (anti-hanging).
    #[error("saga {0} was already compensated")]
    SagaCompensated(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<LoyaltyError> for Status {
    fn from(err: LoyaltyError) -> Self {
        match err {
            LoyaltyError::Invalid(violations) => invalid_request(&violations),
            LoyaltyError::NotAMember(customer_id) => rich_status(
                Code::FailedPrecondition,
                Reason::NotAMember,
                format!(
                    "only loyalty members can redeem points; customer {customer_id:?} is not \
                     one: enrol them with GrantPoints or check out without points"
                ),
                [("customerId", customer_id)],
                None,
            ),
            LoyaltyError::InsufficientPoints {
                customer_id,
                balance,
                requested,
            } => rich_status(
                Code::FailedPrecondition,
                Reason::InsufficientPoints,
                format!(
                    "insufficient points: customer {customer_id:?} has {balance}, {requested} \
                     requested; redeem fewer points"
                ),
                [
                    ("customerId", customer_id),
                    ("balance", balance.to_string()),
                    ("requested", requested.to_string()),
                ],
                None,
            ),
            LoyaltyError::SagaCompensated(saga_id) => rich_status(
                Code::FailedPrecondition,
                Reason::SagaAlreadyCompensated,
                format!("saga {saga_id} was already compensated; the deduction is refused"),
                [("sagaId", saga_id)],
                None,
            ),
            LoyaltyError::Storage(e) => storage_status(&e),
        }
    }
}
