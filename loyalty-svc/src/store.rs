//! Loyalty storage traits, split by capability. Each method is one atomic
//! unit: the embedded and MongoDB backends both implement it as a single
//! transaction (effect + barrier record), and return business outcomes as
//! values and only storage failures as errors.

use std::future::Future;

use microshop_storage::StorageError;

use crate::domain::{Account, DeductOutcome, EarnOutcome, RefundOutcome};

/// Accounts and their administration.
pub trait AccountStore: Clone + Send + Sync + 'static {
    /// Looks an account up; `None` for a customer never seen.
    fn account(
        &self,
        customer_id: String,
    ) -> impl Future<Output = Result<Option<Account>, StorageError>> + Send;

    /// Adds `points` to the customer (creating the account) and enrols them
    /// as a member; returns the account after the grant.
    fn grant(
        &self,
        customer_id: String,
        points: i64,
    ) -> impl Future<Output = Result<Account, StorageError>> + Send;
}

/// The points ledger driven by sagas (barrier-protected).
pub trait PointsLedgerStore: Clone + Send + Sync + 'static {
    /// Takes `points` from a member for `saga_id`. `None` when the saga's
    /// refund already ran (the action is refused).
    fn deduct(
        &self,
        saga_id: String,
        customer_id: String,
        points: i64,
    ) -> impl Future<Output = Result<Option<DeductOutcome>, StorageError>> + Send;

    /// Gives back what `saga_id` deducted, if anything.
    fn refund(
        &self,
        saga_id: String,
    ) -> impl Future<Output = Result<RefundOutcome, StorageError>> + Send;

    /// Credits `points` to a member for `saga_id` (non-members get none).
    fn earn(
        &self,
        saga_id: String,
        customer_id: String,
        points: i64,
    ) -> impl Future<Output = Result<EarnOutcome, StorageError>> + Send;
}
