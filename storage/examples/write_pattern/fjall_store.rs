//! The fjall engines (`fjall`, `fjall-side`, `fjall-sync`): one database per
//! store and the ways it makes its writes durable.

use std::{
    fs::File,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
    SingleWriterWriteTx,
};

use crate::{
    Res,
    group_sync::GroupSync,
    kv::{KvStore, KvTx},
    options::{Engine, Knobs},
};

struct FjallTx<'a> {
    tx: SingleWriterWriteTx<'a>,
    ks: &'a [SingleWriterTxKeyspace],
}

impl KvTx for FjallTx<'_> {
    fn get(&mut self, table: usize, key: &[u8]) -> Res<Option<Vec<u8>>> {
        Ok(self.tx.get(&self.ks[table], key)?.map(|v| v.to_vec()))
    }
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        self.tx.insert(&self.ks[table], key, value);
    }
    fn del(&mut self, table: usize, key: &[u8]) {
        self.tx.remove(&self.ks[table], key);
    }
}

/// One fjall database (a store of the mesh): transactions from the calling
/// task; durability by group `persist(SyncData)`, or per transaction.
pub(crate) struct FjallStore {
    db: SingleWriterTxDatabase,
    ks: Vec<SingleWriterTxKeyspace>,
    sync: Option<Arc<GroupSync>>,
    per_write_syncs: AtomicU64,
}

/// How a fjall store makes its writes durable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FjallSync {
    /// Group `persist(SyncData)`.
    Group,
    /// Group `persist(Buffer)` + `fdatasync` of the journal outside the lock.
    Side,
    /// `SyncData` on every transaction.
    PerWrite,
}

impl FjallSync {
    pub(crate) fn of(engine: Engine) -> Self {
        match engine {
            Engine::FjallSide => Self::Side,
            Engine::FjallSync => Self::PerWrite,
            _ => Self::Group,
        }
    }
}

/// The active journal of a fjall database: the highest `<n>.jnl`.
fn active_journal(dir: &Path) -> Res<(u64, File)> {
    let id = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".jnl")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .ok_or("no journal file")?;
    Ok((id, File::open(dir.join(format!("{id}.jnl")))?))
}

impl FjallStore {
    pub(crate) fn open(
        dir: &Path,
        name: &str,
        tables: &[&str],
        mode: FjallSync,
        knobs: &Knobs,
    ) -> Res<Self> {
        let path = dir.join(name);
        let db = SingleWriterTxDatabase::builder(&path)
            .cache_size(knobs.fjall_cache_mb * 1024 * 1024)
            .max_journaling_size(64 * 1024 * 1024)
            .worker_threads(1)
            .manual_journal_persist(true)
            .open()?;
        let memtable = knobs.fjall_memtable_mb * 1024 * 1024;
        let ks = tables
            .iter()
            .map(|t| {
                db.keyspace(t, || {
                    KeyspaceCreateOptions::default()
                        .max_memtable_size(memtable)
                        .manual_journal_persist(true)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sync_db = db.clone();
        let sync = match mode {
            FjallSync::Group => Some(GroupSync::start(name, move || {
                sync_db.persist(PersistMode::SyncData)?;
                Ok(())
            })?),
            FjallSync::Side => {
                let mut journal = active_journal(&path)?;
                Some(GroupSync::start(name, move || {
                    sync_db.persist(PersistMode::Buffer)?;
                    // A rotation since syncs the sealed journal itself;
                    // follow it to the new one.
                    loop {
                        let next = path.join(format!("{}.jnl", journal.0 + 1));
                        if !next.exists() {
                            break;
                        }
                        journal = (journal.0 + 1, File::open(next)?);
                    }
                    journal.1.sync_data()?;
                    Ok(())
                })?)
            }
            FjallSync::PerWrite => None,
        };
        Ok(Self {
            db,
            ks,
            sync,
            per_write_syncs: AtomicU64::new(0),
        })
    }

    fn apply<R>(&self, f: impl FnOnce(&mut dyn KvTx) -> Res<R>) -> Res<R> {
        let mut tx = self.db.write_tx();
        if self.sync.is_none() {
            tx = tx.durability(Some(PersistMode::SyncData));
            self.per_write_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let mut w = FjallTx { tx, ks: &self.ks };
        let r = f(&mut w)?;
        w.tx.commit()?;
        Ok(r)
    }
}

impl KvStore for FjallStore {
    async fn write<R: Send>(&self, f: impl FnOnce(&mut dyn KvTx) -> Res<R> + Send) -> Res<R> {
        let r = self.apply(f)?;
        if let Some(sync) = &self.sync {
            sync.durable().await;
        }
        Ok(r)
    }
    fn syncs(&self) -> u64 {
        self.sync
            .as_ref()
            .map_or(0, |s| s.syncs.load(Ordering::Relaxed))
            + self.per_write_syncs.load(Ordering::Relaxed)
    }
    fn settle(&self) -> Res<()> {
        for k in &self.ks {
            k.inner().rotate_memtable_and_wait()?;
        }
        Ok(())
    }
    fn get(&self, table: usize, key: &[u8]) -> Res<Option<usize>> {
        Ok(self.ks[table].get(key)?.map(|v| v.len()))
    }
}
