//! The redb group-commit writer the mesh ran before its stores moved to
//! fjall, and the barrier on it, kept here as the `redb-now` baseline of
//! the measurement (the mesh itself no longer has them): one writer thread
//! per store commits every queued job in one durable redb transaction.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};
use tokio::sync::oneshot;

use microshop_storage::StorageError;

/// Most jobs committed by one transaction.
const MAX_BATCH: usize = 512;

type Completion = Box<dyn FnOnce(Result<(), &StorageError>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool) + Send>;

/// Whether commits are fsync'd before they are acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durable {
    /// Every acknowledged commit survives a power cut (the default).
    #[default]
    Yes,
    /// Commits are not fsync'd (benchmark baseline only).
    No,
}

/// A redb database with a group-commit writer.
#[derive(Clone)]
pub struct EmbeddedDb {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for Inner {
    /// Closes the queue and waits for the writer to finish its batch and
    /// let go of the file, so a service restarted in the same process (or
    /// a test reopening the directory) finds the file unlocked.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDb")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl EmbeddedDb {
    /// Opens (or creates) `dir/name.redb` and runs `init` once in a write
    /// transaction (to create tables, so readers never meet a missing one).
    pub fn open(
        dir: &Path,
        name: &str,
        durable: Durable,
        init: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{name}.redb"));
        let db = Database::builder()
            .set_cache_size(16 * 1024 * 1024)
            .create(&path)
            .map_err(|e| StorageError::Backend(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write()?;
        init(&txn)?;
        txn.commit()?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel::<Job>();
        let writer_db = Arc::clone(&db);
        let writer = thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || writer(writer_db, &rx, durable))
            .map_err(|e| StorageError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                jobs: Some(jobs),
                writer: Some(writer),
                path,
            }),
        })
    }

    /// Runs `job` in a write transaction shared with other queued jobs and
    /// returns its result once that transaction is committed.
    pub async fn write<R: Send + 'static>(
        &self,
        job: impl FnOnce(&WriteTransaction) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let (tx, rx) = oneshot::channel::<Result<R, StorageError>>();
        let boxed: Job = Box::new(move |txn| {
            let out = job(txn);
            let failed = out.is_err();
            let completion: Completion = Box::new(move |commit| {
                let result = match commit {
                    Ok(()) => out,
                    Err(e) => match out {
                        Err(own) => Err(own),
                        Ok(_) => Err(StorageError::Backend(format!("batch not committed: {e}"))),
                    },
                };
                let _ = tx.send(result);
            });
            (completion, failed)
        });
        self.inner
            .jobs
            .as_ref()
            .ok_or_else(|| StorageError::Unavailable("the store is shut down".into()))?
            .send(boxed)
            .map_err(|_| StorageError::Unavailable("the store is shut down".into()))?;
        rx.await
            .map_err(|_| StorageError::Unavailable("the store could not run the write".into()))?
    }

    /// Runs `f` against a read snapshot on the blocking pool.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let db = Arc::clone(&self.inner.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            f(&txn)
        })
        .await
        .map_err(|e| StorageError::Backend(format!("read task failed: {e}")))?
    }

    /// Checks the store answers (for health).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.read(|_| Ok(())).await
    }
}

fn writer(db: Arc<Database>, rx: &mpsc::Receiver<Job>, durable: Durable) {
    let db = &*db;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(db, batch, durable);
    }
    tracing::debug!("store writer stopped");
}

fn run_batch(db: &Database, batch: Vec<Job>, durable: Durable) {
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            // Dropping the jobs drops their reply channels: each caller
            // gets Unavailable and may retry.
            tracing::error!(error = %e, jobs = batch.len(), "cannot begin a write transaction");
            return;
        }
    };
    if durable == Durable::No {
        let _ = txn.set_durability(Durability::None);
    }
    let mut completions = Vec::with_capacity(batch.len());
    let mut poisoned = false;
    for job in batch {
        let (completion, failed) = job(&txn);
        poisoned |= failed;
        completions.push(completion);
    }
    let result = if poisoned {
        let _ = txn.abort();
        Err(StorageError::Backend(
            "another write of the same batch failed".into(),
        ))
    } else {
        txn.commit().map_err(StorageError::from)
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, jobs = completions.len(), "store batch not committed");
    }
    for completion in completions {
        completion(result.as_ref().map(|_| ()));
    }
}

/// The participant barrier on redb, as the mesh had it.
pub mod barrier {
    use redb::{ReadableTable, TableDefinition, WriteTransaction};
    use serde::{Serialize, de::DeserializeOwned};

    use microshop_storage::{StorageError, decode, encode};

    /// `(saga_id, op)` → the op's encoded outcome.
    pub const BARRIER: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("barrier");

    /// What an action must do, decided from its saga's barrier records.
    #[derive(Debug)]
    pub enum ActionGate<T> {
        /// First delivery: perform the effect and [`record`] its outcome.
        Proceed,
        /// Repeated delivery: answer the first outcome, change nothing.
        Replay(T),
        /// Its compensation already ran: refuse, change nothing.
        Compensated,
    }

    /// Creates the barrier table (call from the store's init).
    pub fn init(txn: &WriteTransaction) -> Result<(), StorageError> {
        txn.open_table(BARRIER)?;
        Ok(())
    }

    /// Decides what `action` of `saga_id` must do, given its `compensation` op.
    pub fn action_gate<T: DeserializeOwned>(
        txn: &WriteTransaction,
        saga_id: &str,
        action: &str,
        compensation: &str,
    ) -> Result<ActionGate<T>, StorageError> {
        let table = txn.open_table(BARRIER)?;
        if let Some(first) = table.get((saga_id, action))? {
            return Ok(ActionGate::Replay(decode(first.value())?));
        }
        if table.get((saga_id, compensation))?.is_some() {
            return Ok(ActionGate::Compensated);
        }
        Ok(ActionGate::Proceed)
    }

    /// The recorded outcome of `op` for `saga_id`, if it ran.
    pub fn outcome<T: DeserializeOwned>(
        txn: &WriteTransaction,
        saga_id: &str,
        op: &str,
    ) -> Result<Option<T>, StorageError> {
        let table = txn.open_table(BARRIER)?;
        let found = table.get((saga_id, op))?;
        found.map(|v| decode(v.value())).transpose()
    }

    /// Records the outcome of `op` for `saga_id`.
    pub fn record<T: Serialize>(
        txn: &WriteTransaction,
        saga_id: &str,
        op: &str,
        outcome: &T,
    ) -> Result<(), StorageError> {
        let bytes = encode(outcome)?;
        let mut table = txn.open_table(BARRIER)?;
        table.insert((saga_id, op), bytes.as_slice())?;
        Ok(())
    }
}
