//! The saga log on the embedded engine (`orchestrator.fjall`).
//!
//! Indexes kept beside the records, in the same write: idempotency key →
//! saga, creation order → saga (listing newest first), (state, order) →
//! saga (listing by state without scanning history), the unfinished set
//! (recovery reads only what needs work, so it does not slow down as the
//! log grows), and payment deadlines by due time. Records are compact
//! protobuf ([`crate::record`]).
//!
//! Durability is the caller's choice per save (see [`SagaLog::save`]); a
//! saga's creation answers once it is visible and tells when it is
//! durable.

use std::path::Path;

use microshop_storage::{
    StorageError,
    embedded::{
        Durable, EmbeddedDb, Sync, Synced, Table, Txn, View, i64_value, read_i64, read_u64,
        u64_value,
    },
};

use crate::{
    log::{Begin, LIST_SCAN_LIMIT, PaymentDeadline, SagaFilter, SagaLog, SagaPage},
    model::{SagaRecord, SagaState},
    record,
};

/// Saga id → stored record.
pub const SAGAS: Table = Table::new(1, "sagas");
/// `(key scope, idempotency key)` → saga id.
pub const KEYS: Table = Table::new(2, "idempotency_keys");
/// seq → saga id.
pub const BY_SEQ: Table = Table::new(3, "sagas_by_seq");
/// `(state index, seq)` → saga id.
pub const BY_STATE: Table = Table::new(4, "sagas_by_state");
/// Saga id → seq, for unfinished sagas.
pub const UNFINISHED: Table = Table::new(5, "unfinished_sagas");
/// `(due ms, order id)` → nothing.
pub const DEADLINES: Table = Table::new(6, "payment_deadlines");
/// Order id → due ms.
pub const DEADLINE_OF: Table = Table::new(7, "payment_deadline_of");
/// Counters: `seq`.
pub const META: Table = Table::new(8, "meta");

/// The saga log on the embedded engine.
#[derive(Clone, Debug)]
pub struct EmbeddedSagaLog {
    db: EmbeddedDb,
}

impl EmbeddedSagaLog {
    /// Opens or creates the log under `dir`.
    pub fn open(dir: &Path, durable: Durable) -> Result<Self, StorageError> {
        let db = EmbeddedDb::open(dir, "orchestrator", durable, |_| Ok(()))?;
        Ok(Self { db })
    }

    /// Writes `rows` of an earlier version's log under the keys the live
    /// code writes (a record's key and listing indexes from the record),
    /// for `microshop migrate`. Buffered: [`Self::sync`] makes them
    /// durable. A record this version's format cannot hold unchanged is
    /// refused (nothing of `rows` is written).
    pub async fn import(&self, rows: Vec<ImportRow>) -> Result<(), StorageError> {
        self.db
            .write(Sync::Buffered, move |txn| {
                let seq_key = META.str_key("seq");
                let mut last = txn.get(&seq_key)?.map(|v| read_u64(&v)).transpose()?;
                for row in rows {
                    match row {
                        ImportRow::Saga(record) => {
                            let record = convertible(*record)?;
                            last = last.max(Some(record.seq));
                            txn.put(key_of(&record), record.saga_id.as_bytes().to_vec());
                            txn.put(
                                BY_SEQ.key().u64(record.seq).done(),
                                record.saga_id.as_bytes().to_vec(),
                            );
                            write_record(txn, &record, true)?;
                        }
                        ImportRow::Deadline { order_id, due_ms } => {
                            apply_deadline(txn, &PaymentDeadline::Set { order_id, due_ms })?;
                        }
                        ImportRow::LastSeq(seq) => last = last.max(Some(seq)),
                    }
                }
                if let Some(last) = last {
                    txn.put(seq_key, u64_value(last));
                }
                Ok(())
            })
            .await
    }

    /// Compacts the whole log now, blocking the calling thread (after a
    /// bulk load: see [`EmbeddedDb::compact_blocking`]).
    pub fn compact_blocking(&self) -> Result<(), StorageError> {
        self.db.compact_blocking()
    }

    /// Makes everything imported durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.db.write(Sync::Durable, |_| Ok(())).await
    }
}

/// A row of an earlier version's saga log, as `microshop migrate` carries
/// it over.
#[derive(Debug)]
pub enum ImportRow {
    /// A saga record, with its seq.
    Saga(Box<SagaRecord>),
    /// An order's payment deadline.
    Deadline {
        /// The order.
        order_id: String,
        /// When it is due, Unix ms.
        due_ms: i64,
    },
    /// The last seq the earlier version handed out (a purged saga's may be
    /// above every record's): the next saga gets a greater one.
    LastSeq(u64),
}

/// `record` as this version stores it, if its format holds it unchanged:
/// step names and descriptions come from the saga's definition (a changed
/// description is not data), the lease epoch is not the embedded log's.
fn convertible(mut record: SagaRecord) -> Result<SagaRecord, StorageError> {
    record.lease_epoch = 0;
    for (step, def) in record
        .steps
        .iter_mut()
        .zip(crate::steps::definition(record.saga_type))
    {
        def.description.clone_into(&mut step.description);
    }
    let back = record::decode(&record::encode(&record)).map_err(|e| {
        StorageError::Corrupt(format!(
            "saga {} does not fit this version's record format: {e}",
            record.saga_id
        ))
    })?;
    if back != record {
        return Err(StorageError::Corrupt(format!(
            "saga {} would change in this version's record format (its steps do not \
             match its saga's definition?)",
            record.saga_id
        )));
    }
    Ok(record)
}

/// Reads the seq out of a listing index key.
type SeqOf = fn(&[u8]) -> Result<u64, StorageError>;

fn key_of(record: &SagaRecord) -> Vec<u8> {
    KEYS.key()
        .str(record.key_scope())
        .str(&record.idempotency_key)
        .done()
}

fn id_of(bytes: &[u8]) -> Result<String, StorageError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StorageError::Corrupt("an index names a saga id that is not text".into()))
}

fn load(txn: &Txn, saga_id: &str) -> Result<Option<SagaRecord>, StorageError> {
    txn.get(&SAGAS.str_key(saga_id))?
        .map(|v| record::decode(&v))
        .transpose()
}

fn view_load(view: &View, saga_id: &str) -> Result<Option<SagaRecord>, StorageError> {
    view.get(&SAGAS.str_key(saga_id))?
        .map(|v| record::decode(&v))
        .transpose()
}

/// What a save writes: the record encoded on the caller's task (so the
/// store's one writer thread only moves indexes), and what the indexes
/// need of it.
struct Encoded {
    saga_id: String,
    seq: u64,
    state: SagaState,
    bytes: Vec<u8>,
}

impl Encoded {
    fn of(record: &SagaRecord) -> Self {
        Self {
            saga_id: record.saga_id.clone(),
            seq: record.seq,
            state: record.state,
            bytes: record::encode(record),
        }
    }
}

fn write_record(txn: &mut Txn, record: &SagaRecord, is_new: bool) -> Result<(), StorageError> {
    write_encoded(txn, Encoded::of(record), is_new)
}

fn write_encoded(txn: &mut Txn, record: Encoded, is_new: bool) -> Result<(), StorageError> {
    let key = SAGAS.str_key(&record.saga_id);
    let old_state = match (txn.get(&key)?, is_new) {
        (None, true) => None,
        (Some(old), false) => Some(record::state(&old)?),
        (None, false) => {
            return Err(StorageError::Corrupt(format!(
                "save of unknown saga {}",
                record.saga_id
            )));
        }
        (Some(_), true) => {
            return Err(StorageError::Corrupt(format!(
                "saga {} created twice",
                record.saga_id
            )));
        }
    };
    txn.put(key, record.bytes);
    if old_state != Some(record.state) {
        if let Some(old) = old_state {
            txn.remove(BY_STATE.key().u8(old.index()).u64(record.seq).done());
        }
        txn.put(
            BY_STATE
                .key()
                .u8(record.state.index())
                .u64(record.seq)
                .done(),
            record.saga_id.as_bytes().to_vec(),
        );
        let unfinished = UNFINISHED.str_key(&record.saga_id);
        if record.state.is_terminal() {
            txn.remove(unfinished);
        } else {
            txn.put(unfinished, u64_value(record.seq));
        }
    }
    Ok(())
}

fn apply_deadline(txn: &mut Txn, deadline: &PaymentDeadline) -> Result<(), StorageError> {
    let (order_id, due) = match deadline {
        PaymentDeadline::Keep => return Ok(()),
        PaymentDeadline::Set { order_id, due_ms } => (order_id, Some(*due_ms)),
        PaymentDeadline::Clear { order_id } => (order_id, None),
    };
    let of = DEADLINE_OF.str_key(order_id);
    if let Some(old) = txn.get(&of)? {
        txn.remove(DEADLINES.key().i64(read_i64(&old)?).str(order_id).done());
    }
    match due {
        Some(due) => {
            txn.put(of, i64_value(due));
            txn.put(DEADLINES.key().i64(due).str(order_id).done(), Vec::new());
        }
        None => txn.remove(of),
    }
    Ok(())
}

impl SagaLog for EmbeddedSagaLog {
    async fn begin(&self, mut record: SagaRecord) -> Result<(Begin, Synced), StorageError> {
        let (begun, synced) = self
            .db
            .write_early(move |txn| {
                if let Some(saga_id) = txn.get(&key_of(&record))? {
                    let saga_id = id_of(&saga_id)?;
                    let found = load(txn, &saga_id)?.ok_or_else(|| {
                        StorageError::Corrupt(format!("key points to missing saga {saga_id}"))
                    })?;
                    return Ok(Begin::Existing(found));
                }
                let seq_key = META.str_key("seq");
                let seq = txn
                    .get(&seq_key)?
                    .map(|v| read_u64(&v))
                    .transpose()?
                    .map_or(1, |s| s + 1);
                txn.put(seq_key, u64_value(seq));
                record.seq = seq;
                txn.put(key_of(&record), record.saga_id.as_bytes().to_vec());
                txn.put(
                    BY_SEQ.key().u64(seq).done(),
                    record.saga_id.as_bytes().to_vec(),
                );
                write_record(txn, &record, true)?;
                Ok(Begin::Created(record))
            })
            .await?;
        // A saga found is not this caller's to make durable.
        match begun {
            Begin::Created(_) => Ok((begun, synced)),
            Begin::Existing(_) => Ok((begun, Synced::now())),
        }
    }

    async fn save(
        &self,
        record: &SagaRecord,
        deadline: PaymentDeadline,
        sync: Sync,
    ) -> Result<(), StorageError> {
        let encoded = Encoded::of(record);
        self.db
            .write(sync, move |txn| {
                write_encoded(txn, encoded, false)?;
                apply_deadline(txn, &deadline)
            })
            .await
    }

    async fn claim(&self, saga_id: String) -> Result<Option<SagaRecord>, StorageError> {
        // One process owns the store (fjall locks it): every claim of an
        // unfinished saga is granted.
        Ok(self.get(saga_id).await?.filter(|r| !r.state.is_terminal()))
    }

    async fn get(&self, saga_id: String) -> Result<Option<SagaRecord>, StorageError> {
        self.db.read(move |view| view_load(view, &saga_id)).await
    }

    async fn get_by_key(
        &self,
        scope: String,
        key: String,
    ) -> Result<Option<SagaRecord>, StorageError> {
        self.db
            .read(move |view| {
                let Some(saga_id) = view.get(&KEYS.key().str(&scope).str(&key).done())? else {
                    return Ok(None);
                };
                view_load(view, &id_of(&saga_id)?)
            })
            .await
    }

    async fn list(
        &self,
        filter: SagaFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<SagaPage, StorageError> {
        self.db
            .read(move |view| {
                // Newest first through the state index when a state is
                // asked, else through creation order; every other filter is
                // checked on the records, within a bounded scan.
                let upper = before.unwrap_or(u64::MAX);
                let (range, seq_of): (_, SeqOf) = match filter.state {
                    None => (BY_SEQ.all().start..BY_SEQ.key().u64(upper).done(), |k| {
                        BY_SEQ.read(k)?.u64()
                    }),
                    Some(s) => (
                        BY_STATE.key().u8(s.index()).done()
                            ..BY_STATE.key().u8(s.index()).u64(upper).done(),
                        |k| {
                            let mut r = BY_STATE.read(k)?;
                            r.u8()?;
                            r.u64()
                        },
                    ),
                };
                let entries = view.scan(range, LIST_SCAN_LIMIT, true)?;
                let exhausted = entries.len() < LIST_SCAN_LIMIT;
                let mut found: Vec<SagaRecord> = Vec::new();
                let mut scanned_to = None;
                for (key, id) in &entries {
                    scanned_to = Some(seq_of(key)?);
                    if let Some(record) = view_load(view, &id_of(id)?)?
                        && filter.matches(&record)
                    {
                        found.push(record);
                        if found.len() > limit {
                            break;
                        }
                    }
                }
                let next = if found.len() > limit {
                    found.truncate(limit);
                    found.last().map(|r| r.seq)
                } else if exhausted {
                    None
                } else {
                    scanned_to
                };
                Ok(SagaPage { sagas: found, next })
            })
            .await
    }

    async fn unfinished(&self) -> Result<Vec<String>, StorageError> {
        self.db
            .read(|view| {
                let mut ids: Vec<(u64, String)> = view
                    .scan(UNFINISHED.all(), usize::MAX, false)?
                    .iter()
                    .map(|(k, v)| Ok((read_u64(v)?, UNFINISHED.read(k)?.str()?)))
                    .collect::<Result<_, StorageError>>()?;
                ids.sort_unstable();
                Ok(ids.into_iter().map(|(_, id)| id).collect())
            })
            .await
    }

    async fn purge_ended(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        // Lost in a power cut, a purge is simply made again.
        self.db
            .write(Sync::Buffered, move |txn| {
                // Oldest first by creation order, within a bounded scan:
                // the old ended sagas are at the front; a newer one is
                // passed over.
                let mut old: Vec<SagaRecord> = Vec::new();
                for state in [SagaState::Completed, SagaState::Compensated] {
                    let range = BY_STATE.starting(BY_STATE.key().u8(state.index()));
                    for (_, id) in txn.scan_committed(range, limit.saturating_mul(8))? {
                        if old.len() >= limit {
                            break;
                        }
                        if let Some(record) = load(txn, &id_of(&id)?)?
                            && record.updated_at_ms < before_ms
                        {
                            old.push(record);
                        }
                    }
                }
                for r in &old {
                    txn.remove(SAGAS.str_key(&r.saga_id));
                    txn.remove(BY_STATE.key().u8(r.state.index()).u64(r.seq).done());
                    txn.remove(BY_SEQ.key().u64(r.seq).done());
                    let key = key_of(r);
                    if txn
                        .get(&key)?
                        .is_some_and(|v| v.as_ref() == r.saga_id.as_bytes())
                    {
                        txn.remove(key);
                    }
                }
                Ok(u64::try_from(old.len()).unwrap_or(u64::MAX))
            })
            .await
    }

    async fn due_payments(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StorageError> {
        self.db
            .read(move |view| {
                view.scan(
                    DEADLINES.all().start..DEADLINES.key().i64(now_ms.saturating_add(1)).done(),
                    limit,
                    false,
                )?
                .iter()
                .map(|(k, _)| {
                    let mut r = DEADLINES.read(k)?;
                    r.i64()?;
                    r.str()
                })
                .collect()
            })
            .await
    }
}

impl microshop_storage::Ping for EmbeddedSagaLog {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}
