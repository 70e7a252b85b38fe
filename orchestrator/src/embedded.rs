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
    log::{Begin, LIST_SCAN_LIMIT, PaymentDeadline, SagaFilter, SagaLog, SagaPage},
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

/// A stored saga: one byte of state (its [`SagaState::index`]), then the
/// JSON record, so a save learns the state it moves the indexes from
/// without decoding the record. Records written before the prefix start
/// with `{` and are read whole.
fn stored(record: &SagaRecord) -> Result<Vec<u8>, StorageError> {
    let json = encode(record)?;
    let mut bytes = Vec::with_capacity(json.len() + 1);
    bytes.push(record.state.index());
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

fn record_of(bytes: &[u8]) -> Result<SagaRecord, StorageError> {
    match bytes.first() {
        Some(b'{') => decode(bytes),
        _ => decode(bytes.get(1..).unwrap_or_default()),
    }
}

fn state_of(bytes: &[u8]) -> Result<SagaState, StorageError> {
    #[derive(serde::Deserialize)]
    struct StateOnly {
        state: SagaState,
    }
    match bytes.first() {
        Some(b'{') => decode::<StateOnly>(bytes).map(|s| s.state),
        Some(&index) => SagaState::from_index(index)
            .ok_or_else(|| StorageError::Corrupt(format!("saga state byte {index}"))),
        None => Err(StorageError::Corrupt("empty saga record".into())),
    }
}

/// The key of an idempotency key in [`KEYS`]: `scope NUL key`, or the key
/// alone in the empty scope. Ids never hold control characters, so the two
/// forms cannot collide, and the order-keyed sagas' keys (and every key
/// written before keys were scoped) keep their old form.
fn key_entry(scope: &str, key: &str) -> String {
    if scope.is_empty() {
        key.to_owned()
    } else {
        format!("{scope}\0{key}")
    }
}

/// The saga holding `key` in `scope`: its scoped entry, else (for a
/// checkout) an entry written before keys were scoped whose saga is this
/// customer's.
fn saga_of_key(
    keys: &impl ReadableTable<&'static str, &'static str>,
    sagas: &impl ReadableTable<&'static str, &'static [u8]>,
    scope: &str,
    key: &str,
) -> Result<Option<SagaRecord>, StorageError> {
    let load = |saga_id: &str| -> Result<SagaRecord, StorageError> {
        let found = sagas.get(saga_id)?.ok_or_else(|| {
            StorageError::Corrupt(format!("key points to missing saga {saga_id}"))
        })?;
        record_of(found.value())
    };
    if let Some(saga_id) = keys.get(key_entry(scope, key).as_str())? {
        return load(saga_id.value()).map(Some);
    }
    if scope.is_empty() {
        return Ok(None);
    }
    match keys.get(key)? {
        Some(saga_id) => {
            let record = load(saga_id.value())?;
            Ok((record.key_scope() == scope).then_some(record))
        }
        None => Ok(None),
    }
}

fn write_record(
    txn: &WriteTransaction,
    record: &SagaRecord,
    is_new: bool,
) -> Result<(), StorageError> {
    let bytes = stored(record)?;
    let old_state = {
        let mut sagas = txn.open_table(SAGAS)?;
        let old = sagas.insert(record.saga_id.as_str(), bytes.as_slice())?;
        match (old, is_new) {
            (None, true) => None,
            (Some(old), false) => Some(state_of(old.value())?),
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
        }
    };
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
    // Most saves keep the deadline: open no table for them (opening and
    // closing a table costs a lookup and a flush of its root in redb).
    if *deadline == PaymentDeadline::Keep {
        return Ok(());
    }
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
                let existing = saga_of_key(
                    &txn.open_table(KEYS)?,
                    &txn.open_table(SAGAS)?,
                    record.key_scope(),
                    &record.idempotency_key,
                )?;
                if let Some(found) = existing {
                    return Ok(Begin::Existing(found));
                }
                let seq = {
                    let mut meta = txn.open_table(META)?;
                    let next = meta.get("seq")?.map_or(1, |v| v.value() + 1);
                    meta.insert("seq", next)?;
                    next
                };
                record.seq = seq;
                txn.open_table(KEYS)?.insert(
                    key_entry(record.key_scope(), &record.idempotency_key).as_str(),
                    record.saga_id.as_str(),
                )?;
                txn.open_table(BY_SEQ)?
                    .insert(seq, record.saga_id.as_str())?;
                write_record(txn, &record, true)?;
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
                write_record(txn, &record, false)?;
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
                found.map(|v| record_of(v.value())).transpose()
            })
            .await
    }

    async fn get_by_key(
        &self,
        scope: String,
        key: String,
    ) -> Result<Option<SagaRecord>, StorageError> {
        self.db
            .read(move |txn| {
                saga_of_key(
                    &txn.open_table(KEYS)?,
                    &txn.open_table(SAGAS)?,
                    &scope,
                    &key,
                )
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
            .read(move |txn| {
                let sagas = txn.open_table(SAGAS)?;
                let upper = before.unwrap_or(u64::MAX);
                // Newest first through the state index when a state is
                // asked, else through creation order; every other filter is
                // checked on the records, within a bounded scan.
                let mut found: Vec<SagaRecord> = Vec::new();
                let mut scanned_to = None;
                let mut visit = |seq: u64, id: &str| -> Result<bool, StorageError> {
                    scanned_to = Some(seq);
                    if let Some(v) = sagas.get(id)? {
                        let record = record_of(v.value())?;
                        if filter.matches(&record) {
                            found.push(record);
                        }
                    }
                    Ok(found.len() > limit)
                };
                let mut scanned = 0;
                let mut exhausted = true;
                match filter.state {
                    None => {
                        let table = txn.open_table(BY_SEQ)?;
                        for entry in table.range(..upper)?.rev() {
                            if scanned == LIST_SCAN_LIMIT {
                                exhausted = false;
                                break;
                            }
                            scanned += 1;
                            let (k, v) = entry?;
                            if visit(k.value(), v.value())? {
                                exhausted = false;
                                break;
                            }
                        }
                    }
                    Some(s) => {
                        let table = txn.open_table(BY_STATE)?;
                        let range = (s.index(), 0)..(s.index(), upper);
                        for entry in table.range(range)?.rev() {
                            if scanned == LIST_SCAN_LIMIT {
                                exhausted = false;
                                break;
                            }
                            scanned += 1;
                            let (k, v) = entry?;
                            if visit(k.value().1, v.value())? {
                                exhausted = false;
                                break;
                            }
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

    async fn purge_ended(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        self.db
            .write(move |txn| {
                // Oldest first by creation order, within a bounded scan: the
                // old ended sagas are at the front; a newer one is passed
                // over.
                let mut old: Vec<SagaRecord> = Vec::new();
                {
                    let sagas = txn.open_table(SAGAS)?;
                    let by_state = txn.open_table(BY_STATE)?;
                    for state in [SagaState::Completed, SagaState::Compensated] {
                        let range = (state.index(), 0)..=(state.index(), u64::MAX);
                        for entry in by_state.range(range)?.take(limit.saturating_mul(8)) {
                            if old.len() >= limit {
                                break;
                            }
                            let (_, id) = entry?;
                            let Some(bytes) = sagas.get(id.value())? else {
                                continue;
                            };
                            let record = record_of(bytes.value())?;
                            if record.updated_at_ms < before_ms {
                                old.push(record);
                            }
                        }
                    }
                }
                let mut sagas = txn.open_table(SAGAS)?;
                let mut by_state = txn.open_table(BY_STATE)?;
                let mut by_seq = txn.open_table(BY_SEQ)?;
                let mut keys = txn.open_table(KEYS)?;
                for r in &old {
                    sagas.remove(r.saga_id.as_str())?;
                    by_state.remove((r.state.index(), r.seq))?;
                    by_seq.remove(r.seq)?;
                    // The key's entry, in its scoped or its older form, if
                    // it is this saga's.
                    for entry in [
                        key_entry(r.key_scope(), &r.idempotency_key),
                        r.idempotency_key.clone(),
                    ] {
                        let ours = keys
                            .get(entry.as_str())?
                            .is_some_and(|v| v.value() == r.saga_id);
                        if ours {
                            keys.remove(entry.as_str())?;
                        }
                    }
                }
                Ok(u64::try_from(old.len()).unwrap_or(u64::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::record;

    #[test]
    fn stored_records_carry_their_state_byte() {
        let mut r = record(None);
        for state in [
            SagaState::Running,
            SagaState::Compensating,
            SagaState::Failed,
        ] {
            r.state = state;
            let bytes = stored(&r).expect("encode");
            assert_eq!(bytes[0], state.index());
            assert_eq!(state_of(&bytes).expect("state"), state);
            assert_eq!(record_of(&bytes).expect("record"), r);
        }
    }

    #[test]
    fn records_written_without_the_state_byte_still_load() {
        let mut r = record(None);
        r.state = SagaState::Compensated;
        let legacy = encode(&r).expect("encode");
        assert_eq!(legacy[0], b'{');
        assert_eq!(state_of(&legacy).expect("state"), SagaState::Compensated);
        assert_eq!(record_of(&legacy).expect("record"), r);
    }

    fn checkout(customer: &str, key: &str) -> SagaRecord {
        let mut r = record(None);
        r.saga_id = uuid::Uuid::now_v7().to_string();
        r.idempotency_key = key.to_owned();
        r.input = crate::model::SagaInput::Place {
            customer_id: customer.to_owned(),
            items: Vec::new(),
            coupon_code: String::new(),
            points_to_redeem: 0,
            shipping: Default::default(),
        };
        r
    }

    /// A data directory written before keys were scoped per customer holds
    /// a checkout's key alone: it still answers its customer's retries, and
    /// another customer may use the same key for a saga of their own.
    #[tokio::test]
    async fn keys_written_before_scoping_still_answer_their_customer() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let old = {
            let log = EmbeddedSagaLog::open(dir.path(), Durable::Yes).expect("open");
            let Begin::Created(old) = log.begin(checkout("alice", "k-old")).await.expect("begin")
            else {
                panic!("a fresh key")
            };
            let id = old.saga_id.clone();
            log.db
                .write(move |txn| {
                    let mut keys = txn.open_table(KEYS)?;
                    keys.remove(key_entry("alice", "k-old").as_str())?;
                    keys.insert("k-old", id.as_str())?;
                    Ok(())
                })
                .await
                .expect("write the key in its old form");
            old
        };
        let log = EmbeddedSagaLog::open(dir.path(), Durable::Yes).expect("reopen");
        assert_eq!(
            log.get_by_key("alice".into(), "k-old".into())
                .await
                .expect("get_by_key"),
            Some(old.clone())
        );
        match log.begin(checkout("alice", "k-old")).await.expect("begin") {
            Begin::Existing(found) => assert_eq!(found.saga_id, old.saga_id),
            Begin::Created(c) => panic!("alice's old key started saga {}", c.saga_id),
        }
        assert_eq!(
            log.get_by_key("bob".into(), "k-old".into())
                .await
                .expect("get_by_key"),
            None
        );
        let Begin::Created(bobs) = log.begin(checkout("bob", "k-old")).await.expect("begin") else {
            panic!("bob's first use of the key is his own saga")
        };
        assert_ne!(bobs.saga_id, old.saga_id);
        assert_eq!(
            log.get_by_key("bob".into(), "k-old".into())
                .await
                .expect("get_by_key")
                .map(|r| r.saga_id),
            Some(bobs.saga_id)
        );
    }

    #[test]
    fn a_bad_state_byte_is_corruption_not_a_panic() {
        assert!(matches!(
            state_of(&[9, b'{']),
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(state_of(&[]), Err(StorageError::Corrupt(_))));
        assert!(record_of(&[1]).is_err());
    }
}
