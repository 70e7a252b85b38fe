//! The saga log on the embedded redb engine (`orchestrator.redb`).
//!
//! Indexes kept beside the records, in the same write: idempotency key →
//! saga, creation order → saga (listing newest first), (state, order) →
//! saga (listing by state without scanning history), the unfinished set
//! (recovery reads only what needs work, so it does not slow down as the
//! log grows), and payment deadlines by due time.

use std::path::Path;

use microshop_storage::{
    StorageError, decode,
    embedded::{Durable, EmbeddedDb},
    encode,
};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::{
    log::{Begin, PaymentDeadline, SagaLog, SagaPage},
    model::{SagaRecord, SagaState},
};

const SAGAS: TableDefinition<&str, &[u8]> = TableDefinition::new("sagas");
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("idempotency_keys");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("sagas_by_seq");
const BY_STATE: TableDefinition<(u8, u64), &str> = TableDefinition::new("sagas_by_state");
const UNFINISHED: TableDefinition<&str, u64> = TableDefinition::new("unfinished_sagas");
const DEADLINES: TableDefinition<(i64, &str), ()> = TableDefinition::new("payment_deadlines");
const DEADLINE_OF: TableDefinition<&str, i64> = TableDefinition::new("payment_deadline_of");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The saga log on redb.
#[derive(Clone, Debug)]
pub struct EmbeddedSagaLog {
    db: EmbeddedDb,
}

impl EmbeddedSagaLog {
    /// Opens or creates the log under `dir`.
    pub fn open(dir: &Path, durable: Durable) -> Result<Self, StorageError> {
        let db = EmbeddedDb::open(dir, "orchestrator", durable, |txn| {
            txn.open_table(SAGAS)?;
            txn.open_table(KEYS)?;
            txn.open_table(BY_SEQ)?;
            txn.open_table(BY_STATE)?;
            txn.open_table(UNFINISHED)?;
            txn.open_table(DEADLINES)?;
            txn.open_table(DEADLINE_OF)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(Self { db })
    }
}

fn load(txn: &WriteTransaction, saga_id: &str) -> Result<Option<SagaRecord>, StorageError> {
    let table = txn.open_table(SAGAS)?;
    let found = table.get(saga_id)?;
    found.map(|v| decode(v.value())).transpose()
}

/// The stored state of a saga, without decoding the rest of its record
/// (`save` needs only that to move the state index; serde skips the other
/// fields without building them).
fn load_state(txn: &WriteTransaction, saga_id: &str) -> Result<Option<SagaState>, StorageError> {
    #[derive(serde::Deserialize)]
    struct StateOnly {
        state: SagaState,
    }
    let table = txn.open_table(SAGAS)?;
    let found = table.get(saga_id)?;
    found
        .map(|v| decode::<StateOnly>(v.value()).map(|s| s.state))
        .transpose()
}

fn write_record(
    txn: &WriteTransaction,
    record: &SagaRecord,
    old_state: Option<SagaState>,
) -> Result<(), StorageError> {
    let bytes = encode(record)?;
    txn.open_table(SAGAS)?
        .insert(record.saga_id.as_str(), bytes.as_slice())?;
    if old_state != Some(record.state) {
        let mut by_state = txn.open_table(BY_STATE)?;
        if let Some(old) = old_state {
            by_state.remove((old.index(), record.seq))?;
        }
        by_state.insert((record.state.index(), record.seq), record.saga_id.as_str())?;
        let mut unfinished = txn.open_table(UNFINISHED)?;
        if record.state.is_terminal() {
            unfinished.remove(record.saga_id.as_str())?;
        } else {
            unfinished.insert(record.saga_id.as_str(), record.seq)?;
        }
    }
    Ok(())
}

fn apply_deadline(txn: &WriteTransaction, deadline: &PaymentDeadline) -> Result<(), StorageError> {
    let mut of = txn.open_table(DEADLINE_OF)?;
    let mut by_due = txn.open_table(DEADLINES)?;
    match deadline {
        PaymentDeadline::Keep => {}
        PaymentDeadline::Set { order_id, due_ms } => {
            if let Some(old) = of.insert(order_id.as_str(), *due_ms)? {
                by_due.remove((old.value(), order_id.as_str()))?;
            }
            by_due.insert((*due_ms, order_id.as_str()), ())?;
        }
        PaymentDeadline::Clear { order_id } => {
            if let Some(old) = of.remove(order_id.as_str())? {
                by_due.remove((old.value(), order_id.as_str()))?;
            }
        }
    }
    Ok(())
}

impl SagaLog for EmbeddedSagaLog {
    async fn begin(&self, mut record: SagaRecord) -> Result<Begin, StorageError> {
        self.db
            .write(move |txn| {
                let existing = {
                    let keys = txn.open_table(KEYS)?;
                    let found = keys.get(record.idempotency_key.as_str())?;
                    found.map(|v| v.value().to_owned())
                };
                if let Some(saga_id) = existing {
                    let found = load(txn, &saga_id)?.ok_or_else(|| {
                        StorageError::Corrupt(format!("key points to missing saga {saga_id}"))
                    })?;
                    return Ok(Begin::Existing(found));
                }
                let seq = {
                    let mut meta = txn.open_table(META)?;
                    let next = meta.get("seq")?.map_or(1, |v| v.value() + 1);
                    meta.insert("seq", next)?;
                    next
                };
                record.seq = seq;
                txn.open_table(KEYS)?
                    .insert(record.idempotency_key.as_str(), record.saga_id.as_str())?;
                txn.open_table(BY_SEQ)?
                    .insert(seq, record.saga_id.as_str())?;
                write_record(txn, &record, None)?;
                Ok(Begin::Created(record))
            })
            .await
    }

    async fn save(
        &self,
        record: SagaRecord,
        deadline: PaymentDeadline,
    ) -> Result<(), StorageError> {
        self.db
            .write(move |txn| {
                let old = load_state(txn, &record.saga_id)?.ok_or_else(|| {
                    StorageError::Corrupt(format!("save of unknown saga {}", record.saga_id))
                })?;
                write_record(txn, &record, Some(old))?;
                apply_deadline(txn, &deadline)
            })
            .await
    }

    async fn claim(&self, saga_id: String) -> Result<Option<SagaRecord>, StorageError> {
        // One process owns the file (redb locks it): every claim of an
        // unfinished saga is granted.
        Ok(self.get(saga_id).await?.filter(|r| !r.state.is_terminal()))
    }

    async fn get(&self, saga_id: String) -> Result<Option<SagaRecord>, StorageError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(SAGAS)?;
                let found = table.get(saga_id.as_str())?;
                found.map(|v| decode(v.value())).transpose()
            })
            .await
    }

    async fn get_by_key(&self, key: String) -> Result<Option<SagaRecord>, StorageError> {
        self.db
            .read(move |txn| {
                let keys = txn.open_table(KEYS)?;
                let Some(saga_id) = keys.get(key.as_str())? else {
                    return Ok(None);
                };
                let table = txn.open_table(SAGAS)?;
                let found = table.get(saga_id.value())?;
                found.map(|v| decode(v.value())).transpose()
            })
            .await
    }

    async fn list(
        &self,
        state: Option<SagaState>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<SagaPage, StorageError> {
        self.db
            .read(move |txn| {
                let sagas = txn.open_table(SAGAS)?;
                let upper = before.unwrap_or(u64::MAX);
                let mut ids: Vec<(u64, String)> = Vec::with_capacity(limit + 1);
                match state {
                    None => {
                        let table = txn.open_table(BY_SEQ)?;
                        for entry in table.range(..upper)?.rev().take(limit + 1) {
                            let (k, v) = entry?;
                            ids.push((k.value(), v.value().to_owned()));
                        }
                    }
                    Some(s) => {
                        let table = txn.open_table(BY_STATE)?;
                        let range = (s.index(), 0)..(s.index(), upper);
                        for entry in table.range(range)?.rev().take(limit + 1) {
                            let (k, v) = entry?;
                            ids.push((k.value().1, v.value().to_owned()));
                        }
                    }
                }
                let next = if ids.len() > limit {
                    ids.truncate(limit);
                    ids.last().map(|(seq, _)| *seq)
                } else {
                    None
                };
                let mut page = Vec::with_capacity(ids.len());
                for (_, id) in ids {
                    if let Some(v) = sagas.get(id.as_str())? {
                        page.push(decode(v.value())?);
                    }
                }
                Ok(SagaPage { sagas: page, next })
            })
            .await
    }

    async fn unfinished(&self) -> Result<Vec<String>, StorageError> {
        self.db
            .read(|txn| {
                let table = txn.open_table(UNFINISHED)?;
                let mut ids: Vec<(u64, String)> = Vec::new();
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    ids.push((v.value(), k.value().to_owned()));
                }
                ids.sort_unstable();
                Ok(ids.into_iter().map(|(_, id)| id).collect())
            })
            .await
    }

    async fn due_payments(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StorageError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(DEADLINES)?;
                let mut due = Vec::new();
                for entry in table.iter()?.take(limit) {
                    let (k, ()) = (entry?.0, ());
                    let (at, order_id) = k.value();
                    if at > now_ms {
                        break;
                    }
                    due.push(order_id.to_owned());
                }
                Ok(due)
            })
            .await
    }
}

impl microshop_storage::Ping for EmbeddedSagaLog {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}
