//! The saga log: the orchestrator's only durable state.
//!
//! The trait is shaped by what the driver needs atomically: `begin` claims an
//! idempotency key and creates the saga in one write (a unique key, so
//! concurrent duplicates get one saga), and `save` writes a saga's new
//! state together with its indexes and payment deadline, so a crash never
//! leaves them disagreeing.

use std::future::Future;

use microshop_storage::{
    StorageError,
    embedded::{Sync, Synced},
};

use crate::model::{SagaRecord, SagaState, SagaType};

/// How a save changes the order's payment deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentDeadline {
    /// No change.
    Keep,
    /// The order must be paid by `due_ms` or it is cancelled.
    Set {
        /// The order.
        order_id: String,
        /// Unix millis.
        due_ms: i64,
    },
    /// The order no longer waits for payment (paid or cancelled).
    Clear {
        /// The order.
        order_id: String,
    },
}

/// What `begin` found.
#[derive(Clone, Debug)]
pub enum Begin {
    /// The key was new: this saga was created.
    Created(SagaRecord),
    /// The key was taken: the saga that holds it.
    Existing(SagaRecord),
}

/// What ListSagas asks for: every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaFilter {
    /// In this state.
    pub state: Option<SagaState>,
    /// Of this kind.
    pub saga_type: Option<SagaType>,
    /// Of this customer.
    pub customer_id: Option<String>,
    /// Of this order (its place-order saga once the order exists, and its
    /// confirm and cancel sagas).
    pub order_id: Option<String>,
    /// Last changed before this time (Unix millis).
    pub updated_before_ms: Option<i64>,
}

impl SagaFilter {
    /// Sagas in `state`.
    pub fn state(state: SagaState) -> Self {
        Self {
            state: Some(state),
            ..Self::default()
        }
    }

    /// Whether `record` matches.
    pub fn matches(&self, record: &SagaRecord) -> bool {
        self.state.is_none_or(|s| s == record.state)
            && self.saga_type.is_none_or(|t| t == record.saga_type)
            && self
                .customer_id
                .as_deref()
                .is_none_or(|c| c == record.customer_id())
            && self
                .order_id
                .as_deref()
                .is_none_or(|o| record.order_id() == Some(o))
            && self
                .updated_before_ms
                .is_none_or(|t| record.updated_at_ms < t)
    }
}

/// Most index entries one page of a filtered listing looks at: a page may
/// come back short (even empty) with a cursor to go on from, so a filter
/// that matches little never makes one call scan the whole log.
pub const LIST_SCAN_LIMIT: usize = 2_000;

/// A page of sagas, newest first.
#[derive(Clone, Debug, Default)]
pub struct SagaPage {
    /// The sagas.
    pub sagas: Vec<SagaRecord>,
    /// The cursor of the next page, if any.
    pub next: Option<u64>,
}

/// Durable saga storage.
///
/// With several orchestrators on one store, each saga carries a lease
/// (owner, expiry, epoch): [`SagaLog::claim`] takes it, every `save` renews
/// it and is refused with [`StorageError::Fenced`] once another orchestrator
/// has claimed the saga since, so a slow former owner cannot overwrite the
/// new owner's progress. A store used by one process (the embedded file,
/// which redb locks) grants every claim.
pub trait SagaLog: microshop_storage::Ping + Clone {
    /// Creates `record` unless its idempotency key is taken in its scope
    /// (`(customer, key)` for a checkout); assigns `seq`. Answers once the
    /// creation is visible (the key is taken), with what says when it is
    /// durable: the saga may run its read-only first step meanwhile, and
    /// waits for it before its first effect (`docs/architecture.md`, "Durability").
    fn begin(
        &self,
        record: SagaRecord,
    ) -> impl Future<Output = Result<(Begin, Synced), StorageError>> + Send;

    /// Writes a saga's new state and its payment-deadline change at once,
    /// as durable as `sync` says: a record that recovery can reach again
    /// by replaying steps the participants' barrier holds may be
    /// [`Sync::Buffered`]; what a client may hear without a replay being
    /// able to reproduce it must be [`Sync::Durable`]. A store whose every
    /// write is durable (MongoDB) ignores it.
    fn save(
        &self,
        record: &SagaRecord,
        deadline: PaymentDeadline,
        sync: Sync,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Takes the lease of `saga_id` for this orchestrator unless another
    /// live one holds it, and returns the saga as claimed (its
    /// `lease_epoch` set); `None` when another holds it, when it has ended
    /// (nothing to drive) or when it is unknown.
    fn claim(
        &self,
        saga_id: String,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StorageError>> + Send;

    /// One saga.
    fn get(
        &self,
        saga_id: String,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StorageError>> + Send;

    /// The saga holding idempotency key `key` in `scope` (see
    /// [`SagaRecord::key_scope`]: the customer of a checkout, empty for
    /// order-keyed sagas). Keys stored before keys were scoped are found
    /// too, for the customer whose saga holds them.
    fn get_by_key(
        &self,
        scope: String,
        key: String,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StorageError>> + Send;

    /// Sagas matching `filter`, newest first, from cursor `before`: at most
    /// `limit`, possibly fewer with a next cursor when few match (see
    /// [`LIST_SCAN_LIMIT`]).
    fn list(
        &self,
        filter: SagaFilter,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<SagaPage, StorageError>> + Send;

    /// Ids of sagas that are RUNNING or COMPENSATING and that no other live
    /// orchestrator holds (for recovery).
    fn unfinished(&self) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send;

    /// Removes up to `limit` sagas that ended COMPLETED or COMPENSATED
    /// before `before_ms` (Unix millis), with their idempotency keys and
    /// index entries; returns how many. FAILED and unfinished sagas are
    /// never removed.
    fn purge_ended(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Orders whose payment deadline passed by `now_ms`, at most `limit`.
    fn due_payments(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send;
}
