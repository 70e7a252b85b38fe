//! The MongoDB engine shared by every service's MongoDB stores.
//!
//! - [`MongoDb`]: one client and database per service, chosen when
//!   `MONGODB_URI` is set. Every failure maps to [`StorageError`]: a server
//!   that cannot be reached is `Unavailable` (retryable, and the health
//!   probe reports NOT_SERVING), anything else is `Backend`.
//! - [`MongoDb::transaction`]: runs a body in a multi-document transaction
//!   and retries the whole body on `TransientTransactionError` (write
//!   conflicts above all) with jittered exponential backoff, and the commit
//!   alone on `UnknownTransactionCommitResult`, as the driver documentation
//!   prescribes. Immediate retries livelock on a hot document
//!   (`docs/architecture.md`, "Storage"), hence the jitter.
//! - [`Barrier`]: the participant barrier of `docs/architecture.md` as one
//!   document per saga holding each op's outcome. One document, not one
//!   per op, so an action and its compensation racing in two transactions
//!   write the same document and conflict: one of them retries and sees
//!   the other, and a null compensation can never miss its action (no
//!   write skew).
//!
//! Records that are only ever read and written whole are stored as a
//! `data` field of JSON bytes (the encoding the embedded store uses), next
//! to the plain fields that indexes and conditional updates need.

use std::{future::Future, pin::Pin, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use mongodb::{
    Client, ClientSession, Collection, Database, IndexModel,
    bson::{Binary, Bson, Document, doc, spec::BinarySubtype},
    error::{
        Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR,
        UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
    },
    options::{ClientOptions, IndexOptions, ReadConcern, WriteConcern},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{StorageError, barrier::ActionGate, decode, encode};

/// Server error code of a unique-index violation.
pub const DUPLICATE_KEY: i32 = 11000;
/// Server error code of a write conflict between transactions.
const WRITE_CONFLICT: i32 = 112;

/// Attempts of one transaction before it is reported unavailable.
const TXN_ATTEMPTS: usize = 60;

/// A transaction body's future: it borrows the session for one attempt.
pub type TxnFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TxnError>> + Send + 'a>>;

/// Why a transaction body stopped.
#[derive(Debug)]
pub enum TxnError {
    /// The server refused or could not be reached; may be retried.
    Mongo(MongoError),
    /// Stored data was bad, or the body gave up; never retried.
    Storage(StorageError),
}

impl From<MongoError> for TxnError {
    fn from(err: MongoError) -> Self {
        Self::Mongo(err)
    }
}

impl From<StorageError> for TxnError {
    fn from(err: StorageError) -> Self {
        Self::Storage(err)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Maps a driver error to a [`StorageError`].
pub fn storage_error(err: MongoError) -> StorageError {
    match *err.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => {
            tracing::debug!(error = %err, "mongodb unreachable");
            StorageError::Unavailable("the database cannot be reached".into())
        }
        ErrorKind::BsonDeserialization(_) => StorageError::Corrupt(err.to_string()),
        _ if err.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
            StorageError::Unavailable("the database is busy, retry".into())
        }
        _ => StorageError::Backend(err.to_string()),
    }
}

/// The server error code of `err`, if the server answered with one.
pub fn error_code(err: &MongoError) -> Option<i32> {
    match &*err.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// Whether `err` is a unique-index violation.
pub fn is_duplicate_key(err: &MongoError) -> bool {
    error_code(err) == Some(DUPLICATE_KEY)
}

/// Whether a failed transaction attempt may succeed if run again: a write
/// conflict, or a duplicate key that a concurrent transaction inserted
/// after this one's snapshot was taken (its retry sees the document).
fn retry_transaction(err: &MongoError) -> bool {
    err.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || matches!(error_code(err), Some(WRITE_CONFLICT | DUPLICATE_KEY))
}

/// A service's MongoDB database.
#[derive(Clone, Debug)]
pub struct MongoDb {
    client: Client,
    db: Database,
}

impl MongoDb {
    /// Connects lazily to `uri` (the driver connects in the background, so a
    /// service starts even while the database is down and reports
    /// NOT_SERVING until it answers) and uses database `name`.
    ///
    /// A `mongodb+srv://` string is resolved through DNS here: a lookup
    /// that fails is retried (a DNS or network outage at start is the
    /// database being away, not a bad setting), so the service waits
    /// NOT_SERVING instead of exiting.
    pub async fn connect(uri: &str, name: &str) -> Result<Self, StorageError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .build();
        let mut options = loop {
            match ClientOptions::parse(uri).await {
                Ok(options) => break options,
                Err(e) if matches!(*e.kind, ErrorKind::DnsResolve { .. }) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(
                        error = %e,
                        retry_in = ?delay,
                        "cannot resolve the MongoDB connection string's DNS records yet"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    return Err(StorageError::Backend(format!(
                        "bad MongoDB connection string (MONGODB_URI or MONGODB_URI_FILE): {e}"
                    )));
                }
            }
        };
        options.app_name.get_or_insert_with(|| "microshop".into());
        // Fail a call fast while the server is away instead of queueing it
        // for the driver's default 30 s; callers get UNAVAILABLE and retry.
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(2));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(2));
        // An acknowledged write must survive the loss of the primary.
        options
            .write_concern
            .get_or_insert(WriteConcern::majority());
        let client = Client::with_options(options).map_err(|e| {
            StorageError::Backend(format!(
                "bad MongoDB connection string (MONGODB_URI or MONGODB_URI_FILE): {e}"
            ))
        })?;
        let db = client.database(name);
        Ok(Self { client, db })
    }

    /// A collection of raw documents.
    pub fn collection(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Checks the server answers.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map(drop)
            .map_err(storage_error)
    }

    /// Creates `indexes` on `collection` (idempotent: an index that exists
    /// with the same keys and options is left as it is). While the server
    /// cannot be reached it keeps trying: the stores rely on their unique
    /// indexes, so a service does not serve before they exist.
    pub async fn ensure_indexes(
        &self,
        collection: &str,
        indexes: Vec<IndexModel>,
    ) -> Result<(), StorageError> {
        let coll = self.collection(collection);
        let mut attempt = 0_u32;
        loop {
            match coll
                .create_indexes(indexes.clone())
                .await
                .map_err(storage_error)
            {
                Ok(_) => return Ok(()),
                Err(StorageError::Unavailable(why)) => {
                    attempt += 1;
                    if attempt == 1 || attempt.is_multiple_of(30) {
                        tracing::warn!(%collection, %why, "cannot create indexes yet; waiting for the database");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Drops index `name` of `collection` if it exists (an index replaced
    /// by another: create the new one first, so uniqueness never lapses).
    pub async fn drop_index_if_exists(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<bool, StorageError> {
        /// Server error code of a missing index.
        const INDEX_NOT_FOUND: i32 = 27;
        match self.collection(collection).drop_index(name).await {
            Ok(()) => Ok(true),
            Err(e) if error_code(&e) == Some(INDEX_NOT_FOUND) => Ok(false),
            // Some servers answer a missing index (or collection) with
            // another code and this message.
            Err(e) if e.to_string().contains("index not found") => Ok(false),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// The next number of the counter `name` in `collection` (1, 2, ...):
    /// one atomic `$inc`, outside any transaction, so concurrent callers
    /// each get their own number and never conflict. Listing keys come from
    /// it: two records made in the same millisecond, even by two processes,
    /// never share one, so a page cursor cannot skip either.
    pub async fn next_seq(&self, collection: &str, name: &str) -> Result<u64, StorageError> {
        let coll = self.collection(collection);
        for _ in 0..10 {
            let after = coll
                .find_one_and_update(doc! { "_id": name }, doc! { "$inc": { "seq": 1_i64 } })
                .return_document(mongodb::options::ReturnDocument::After)
                .await
                .map_err(storage_error)?;
            if let Some(after) = after {
                return u64::try_from(int(&after, "seq")?)
                    .map_err(|_| StorageError::Corrupt(format!("counter {name} is negative")));
            }
            // No counter yet: create it, then take a number from it. Two
            // first callers racing both try; the loser's duplicate key is
            // fine. (Not an upsert: under that race some servers answer
            // "no document" instead of either outcome.)
            match coll.insert_one(doc! { "_id": name, "seq": 0_i64 }).await {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(storage_error(e)),
            }
        }
        Err(StorageError::Unavailable(
            format!("counter {name} could not be created").into(),
        ))
    }

    /// Runs `body` in a transaction until it commits, retrying as the
    /// module docs say. The body must be safe to run again from scratch: it
    /// reads what it needs inside the transaction.
    pub async fn transaction<T, F>(&self, mut body: F) -> Result<T, StorageError>
    where
        T: Send,
        F: for<'a> FnMut(&'a mut ClientSession) -> TxnFuture<'a, T> + Send,
    {
        let mut session = self.client.start_session().await.map_err(storage_error)?;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(200))
            .with_max_times(TXN_ATTEMPTS)
            .with_jitter()
            .build();
        let mut last = None;
        let mut rechecked = false;
        loop {
            if let Err(err) = session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .await
            {
                match self.cannot_start_transaction(err, rechecked).await {
                    Some(err) => return Err(err),
                    None => {
                        rechecked = true;
                        continue;
                    }
                }
            }
            let err = match body(&mut session).await {
                Ok(value) => match commit(&mut session).await {
                    Ok(()) => return Ok(value),
                    Err(err) => err,
                },
                Err(TxnError::Storage(err)) => {
                    let _ = session.abort_transaction().await;
                    return Err(err);
                }
                Err(TxnError::Mongo(err)) => {
                    let _ = session.abort_transaction().await;
                    err
                }
            };
            if !retry_transaction(&err) {
                return Err(storage_error(err));
            }
            match delays.next() {
                Some(delay) => {
                    last = Some(err);
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tracing::warn!(error = ?last.as_ref().unwrap_or(&err), "transaction kept conflicting");
                    return Err(StorageError::Unavailable(
                        "the database is too busy with conflicting writes, retry".into(),
                    ));
                }
            }
        }
    }
}

impl MongoDb {
    /// Why a transaction could not start, or `None` when starting it again
    /// may work. While the server cannot be reached (at start-up, or in an
    /// outage) the driver does not know the deployment yet and refuses
    /// transactions as "not supported": that is an outage (UNAVAILABLE,
    /// retry), not a configuration error. The ping that tells them apart
    /// also lets the driver learn the deployment: a server that has just
    /// come up answers it, and only a second refusal after that (`again`)
    /// means the server is not a replica set. (Without that second look, a
    /// call made as the database came up answered INTERNAL, "Transactions
    /// are not supported by this deployment": issue 17.)
    async fn cannot_start_transaction(&self, err: MongoError, again: bool) -> Option<StorageError> {
        if !matches!(*err.kind, ErrorKind::Transaction { .. }) {
            return Some(storage_error(err));
        }
        match self.ping().await {
            Err(unreachable @ StorageError::Unavailable(_)) => Some(unreachable),
            Ok(()) if !again => None,
            _ => {
                tracing::error!(error = %err, "the MongoDB deployment refuses transactions");
                Some(StorageError::Backend(format!(
                    "MongoDB refuses transactions ({err}): the stores need a replica set \
                     (a one-member set is fine: mongod --replSet rs0, then rs.initiate())"
                )))
            }
        }
    }
}

/// Commits, retrying the commit alone while its result is unknown.
async fn commit(session: &mut ClientSession) -> Result<(), MongoError> {
    let mut tries = 0;
    loop {
        match session.commit_transaction().await {
            Err(err) if err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10 << tries)).await;
            }
            other => return other,
        }
    }
}

/// A unique index on `keys` named `name`.
pub fn unique_index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .unique(true)
                .name(name.to_owned())
                .build(),
        )
        .build()
}

/// A plain index on `keys` named `name`.
pub fn index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_owned()).build())
        .build()
}

/// Every document `cursor` yields, in order (callers bound their queries
/// with `limit`).
pub async fn drain(mut cursor: mongodb::Cursor<Document>) -> Result<Vec<Document>, StorageError> {
    let mut docs = Vec::new();
    while cursor.advance().await.map_err(storage_error)? {
        docs.push(cursor.deserialize_current().map_err(storage_error)?);
    }
    Ok(docs)
}

/// One page of documents read newest first with `limit + 1` asked: the
/// first `limit`, and the `seq` of the last of them as the next page's
/// cursor when more followed.
pub fn page(
    mut docs: Vec<Document>,
    limit: usize,
) -> Result<(Vec<Document>, Option<u64>), StorageError> {
    if docs.len() <= limit {
        return Ok((docs, None));
    }
    docs.truncate(limit);
    let next = match docs.last() {
        Some(last) => Some(u64::try_from(int(last, "seq")?).unwrap_or(0)),
        None => None,
    };
    Ok((docs, next))
}

/// `value` as JSON bytes in a BSON binary (see the module docs).
pub fn blob<T: Serialize>(value: &T) -> Result<Bson, StorageError> {
    Ok(Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: encode(value)?,
    }))
}

/// Decodes the blob in `field` of `doc`.
pub fn unblob<T: DeserializeOwned>(doc: &Document, field: &str) -> Result<T, StorageError> {
    match doc.get(field) {
        Some(Bson::Binary(b)) => decode(&b.bytes),
        _ => Err(StorageError::Corrupt(format!(
            "document {:?} has no {field} blob",
            doc.get("_id")
        ))),
    }
}

/// An `i64` field of a document (BSON may hold it as int32 or int64).
pub fn int(doc: &Document, field: &str) -> Result<i64, StorageError> {
    match doc.get(field) {
        Some(Bson::Int64(v)) => Ok(*v),
        Some(Bson::Int32(v)) => Ok(i64::from(*v)),
        other => Err(StorageError::Corrupt(format!(
            "field {field} of {:?} is {other:?}, not an integer",
            doc.get("_id")
        ))),
    }
}

/// A string field of a document.
pub fn string(doc: &Document, field: &str) -> Result<String, StorageError> {
    doc.get_str(field).map(str::to_owned).map_err(|_| {
        StorageError::Corrupt(format!(
            "field {field} of {:?} is not a string",
            doc.get("_id")
        ))
    })
}

/// A barrier collection: `{_id: saga_id, <op>: <outcome blob>, ...}`.
#[derive(Clone, Debug)]
pub struct Barrier {
    coll: Collection<Document>,
}

/// A saga's barrier record as read inside a transaction.
#[derive(Debug, Default)]
pub struct BarrierRecord(Option<Document>);

impl Barrier {
    /// The barrier of `service` in `db` (collection `<service>_barrier`, so
    /// services sharing one database keep theirs apart; `_id` is its unique
    /// key), with the index its purge walks. Records written before records
    /// were timed get the time of this upgrade, so they expire one
    /// retention period after it.
    pub async fn open(db: &MongoDb, service: &str) -> Result<Self, StorageError> {
        let name = format!("{service}_barrier");
        db.ensure_indexes(&name, vec![index(doc! { "updated_ms": 1 }, "oldest_first")])
            .await?;
        let coll: Collection<Document> = db.collection(&name);
        coll.update_many(
            doc! { "updated_ms": { "$exists": false } },
            doc! { "$set": { "updated_ms": now_ms() } },
        )
        .await
        .map_err(storage_error)?;
        Ok(Self { coll })
    }

    /// Removes the records of sagas whose last op was recorded before
    /// `before_ms`, up to `limit` of them; returns how many entries (ops)
    /// they held, as the embedded barrier counts.
    pub async fn purge(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        let cursor = self
            .coll
            .find(doc! { "updated_ms": { "$lt": before_ms } })
            .sort(doc! { "updated_ms": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(storage_error)?;
        let docs = drain(cursor).await?;
        let entries = |d: &Document| {
            d.keys()
                .filter(|k| !matches!(k.as_str(), "_id" | "updated_ms"))
                .count() as u64
        };
        let mut purged = 0;
        for d in &docs {
            let Some(id) = d.get("_id") else { continue };
            // Only if still old: an op recorded meanwhile keeps its saga.
            let done = self
                .coll
                .delete_one(doc! { "_id": id, "updated_ms": { "$lt": before_ms } })
                .await
                .map_err(storage_error)?;
            if done.deleted_count == 1 {
                purged += entries(d);
            }
        }
        Ok(purged)
    }

    /// Reads the record of `saga_id` in the transaction.
    pub async fn load(
        &self,
        session: &mut ClientSession,
        saga_id: &str,
    ) -> Result<BarrierRecord, MongoError> {
        let found = self
            .coll
            .find_one(doc! { "_id": saga_id })
            .session(session)
            .await?;
        Ok(BarrierRecord(found))
    }

    /// Records `outcome` of `op` for `saga_id` in the transaction.
    pub async fn record<T: Serialize>(
        &self,
        session: &mut ClientSession,
        saga_id: &str,
        op: &str,
        outcome: &T,
    ) -> Result<(), TxnError> {
        let value = blob(outcome)?;
        self.coll
            .update_one(
                doc! { "_id": saga_id },
                doc! { "$set": { op: value, "updated_ms": now_ms() } },
            )
            .upsert(true)
            .session(session)
            .await?;
        Ok(())
    }
}

impl BarrierRecord {
    /// The record of a barrier document read outside a transaction (store
    /// upgrades).
    pub fn from_document(doc: Document) -> Self {
        Self(Some(doc))
    }

    /// The recorded outcome of `op`, if it ran.
    pub fn outcome<T: DeserializeOwned>(&self, op: &str) -> Result<Option<T>, StorageError> {
        match &self.0 {
            Some(doc) if doc.contains_key(op) => unblob(doc, op).map(Some),
            _ => Ok(None),
        }
    }

    /// What `action` must do, given its `compensation` op (the barrier).
    pub fn action_gate<T: DeserializeOwned>(
        &self,
        action: &str,
        compensation: &str,
    ) -> Result<ActionGate<T>, StorageError> {
        if let Some(first) = self.outcome(action)? {
            return Ok(ActionGate::Replay(first));
        }
        match &self.0 {
            Some(doc) if doc.contains_key(compensation) => Ok(ActionGate::Compensated),
            _ => Ok(ActionGate::Proceed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 17): a transaction asked for while the database
    /// cannot be reached (a service started before its MongoDB) answered
    /// INTERNAL, "Transactions are not supported by this deployment",
    /// because the driver did not know the deployment yet. It is an outage:
    /// UNAVAILABLE. (`microshop/tests/faults/database_down.rs`, "a database
    /// that is down when the services start", covers the moment it comes
    /// up.)
    #[tokio::test]
    async fn a_transaction_while_the_database_is_unreachable_is_unavailable() {
        // A port nothing listens on: bound, read, released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let uri = format!(
            "mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=300"
        );
        let db = MongoDb::connect(&uri, "unreachable")
            .await
            .expect("connect lazily");
        let outcome = db.transaction(|_| Box::pin(async { Ok(()) })).await;
        match outcome {
            Err(StorageError::Unavailable(why)) => {
                assert!(why.contains("cannot be reached"), "{why}");
            }
            other => panic!("a transaction with the database down: {other:?}"),
        }
    }
}
