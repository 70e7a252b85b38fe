//! Storage plumbing shared by every microshop service.
//!
//! - [`StorageError`]: the one error every storage trait returns, whatever
//!   the backend, so services map it to a status in one place.
//! - [`embedded`]: the fjall engine. All writes of a service go through one
//!   writer thread that commits queued jobs together (group commit): each
//!   job keeps its own atomicity, and one fsync covers many requests;
//!   writes that recovery can redo need not wait for it.
//! - [`mongo`]: the MongoDB engine (chosen when `MONGODB_URI` is set):
//!   transactions retried with jitter, and the barrier as one document per
//!   saga.
//! - [`barrier`]: the participant barrier of `docs/architecture.md` as
//!   functions over a write transaction, so the record and the business
//!   effect commit together.

pub mod barrier;
pub mod embedded;
pub mod mongo;

use std::{borrow::Cow, future::Future};

/// Why a storage operation failed. No business outcomes here: those are
/// values returned by the store methods.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store cannot be reached or is shutting down; retrying may work.
    #[error("storage unavailable: {0}")]
    Unavailable(Cow<'static, str>),
    /// The store answered but failed (I/O error, full disk, bad state).
    #[error("storage failed: {0}")]
    Backend(String),
    /// The disk under the store is full: nothing was written; writes work
    /// again once space is freed (health reports NOT_SERVING meanwhile).
    #[error("storage full: {0}")]
    Full(String),
    /// Stored data could not be decoded: a bug or corruption.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A conditional write lost to another writer that owns the record now
    /// (a saga whose lease another orchestrator took over).
    #[error("fenced off: {0}")]
    Fenced(String),
}

impl StorageError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Full(_))
    }

    /// The same error, for another caller of a write that failed for all
    /// of them (one fsync answers many writes).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            Self::Backend(m) => Self::Backend(m.clone()),
            Self::Full(m) => Self::Full(m.clone()),
            Self::Corrupt(m) => Self::Corrupt(m.clone()),
            Self::Fenced(m) => Self::Fenced(m.clone()),
        }
    }
}

macro_rules! backend_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(err: $t) -> Self {
                Self::Backend(err.to_string())
            }
        }
    )*};
}
backend_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<serde_json::Error> for StorageError {
    fn from(err: serde_json::Error) -> Self {
        Self::Corrupt(err.to_string())
    }
}

/// A participant store whose barrier entries expire
/// (`--barrier-retention-secs`).
pub trait BarrierPurge: Send + Sync + 'static {
    /// Removes up to `limit` barrier entries recorded before `before_ms`
    /// (Unix millis); returns how many.
    fn purge_barrier(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;
}

/// A store that can say whether it answers (the health probe's question).
pub trait Ping: Send + Sync + 'static {
    /// `Ok` when the store can serve requests.
    fn ping(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Encodes a record for storage.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| StorageError::Backend(format!("cannot encode: {e}")))
}

/// Decodes a stored record.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    Ok(serde_json::from_slice(bytes)?)
}
