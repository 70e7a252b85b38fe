//! The embedded store: one fjall database per service, one writer thread.
//!
//! Why fjall: an LSM tree writes a record about once to its journal and
//! once more when its memtable is flushed, where redb's copy-on-write
//! B-tree rewrote several 4 KiB pages per commit (the measurement is in
//! `docs/performance.md`, the harness in `storage/examples/write_pattern.rs`).
//!
//! Writes: a store's write jobs run on its one writer thread, which takes
//! all queued jobs, runs each in its own [`Txn`] (its reads see its own
//! writes; it commits as one atomic fjall batch, or not at all if it
//! fails, without touching the other jobs), then makes the batch durable
//! with one `fdatasync` of the journal (group commit). A job that waits for
//! no fsync runs on its caller's thread instead when nobody is committing
//! (the writer holds the commit lock for a whole batch, its fsync
//! included; the caller only tries it): the same commit without the two
//! thread wake-ups of a hand-off. Each write says how durable it must be
//! before its caller hears back ([`Sync`]):
//! - [`Sync::Durable`] (every participant answer, a saga's creation, ...):
//!   answered after the fsync that covers it;
//! - [`Sync::Buffered`] (a saga step's intermediate record, which recovery
//!   can redo through the participants' barrier): answered as soon as it is
//!   committed; the next fsync of the store, for anyone, covers it too,
//!   since the journal is one sequential file.
//!
//! Once a batch is committed the writer hands the journal to the OS (one
//! `write`: from then on a killed process loses nothing) and only then
//! answers; only an fsync makes it survive a power cut. Commits take turns
//! on the commit lock, and a caller never waits for it, so nobody waits on
//! fjall's journal lock, which fjall holds through its fsync.
//!
//! Reads run on the caller's task against a snapshot: point reads are
//! answered from memory or the page cache in microseconds. A read may see
//! a write a moment before it is durable; a power cut can take such a
//! write back, never one whose answer was given.
//!
//! A full disk: fjall poisons a database whose journal write or memtable
//! flush failed (its memtable may then hold a batch the journal lacks), so
//! the writer answers that batch with the failure, closes the database and,
//! once the disk has room again, opens it anew from its files (the journal
//! drops its unwritten tail). Until then every read and write answers
//! [`StorageError::Full`] (health: NOT_SERVING); nothing acknowledged is
//! lost, since nothing is acknowledged before it is in the OS.
//!
//! The writer thread, a batch's commits and fsync, backpressure and
//! reopening are in `writer.rs`.
//!
//! Data directories written by earlier versions (one redb file per
//! service) are refused with what to do: `microshop migrate`.

pub mod keys;
mod writer;

use std::{
    collections::BTreeMap,
    ops::RangeBounds,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64, mpsc},
    thread,
    time::Duration,
};

use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable,
    config::{CompressionPolicy, PartitioningPolicy},
};
use tokio::sync::oneshot;

pub use self::keys::{KeyBuf, KeyReader, Table, i64_value, read_i64, read_u64, u64_value};
use self::writer::{Shared, boxed, commit, empty_job, write_batch, writer};
use crate::StorageError;

/// A stored value.
pub type Value = fjall::Slice;

/// Table 250 of every store: written once by `microshop migrate`, saying
/// which earlier store it was converted from (so an interrupted migration
/// is told from a store that already held data).
pub const MIGRATED_FROM: Table = Table::new(250, "migrated_from");

/// Most jobs one batch (one fsync) takes.
const MAX_BATCH: usize = 1024;

/// Per store: fjall's block cache, its memtable (flushed to a table file
/// once this large) and its journals (rotated once this much is written).
/// Small: four stores share a process in `microshop up`, and the whole mesh
/// must stay within 150 MB.
const CACHE_BYTES: u64 = 2 * 1024 * 1024;
const MEMTABLE_BYTES: u64 = 3 * 1024 * 1024;
const JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

/// Most bytes a store holds in memtables not yet flushed (the active one
/// and the sealed ones queued for flushing) before its writer waits for a
/// flush. fjall halts writers only at four sealed memtables, and seals the
/// active one through a message to its workers: while they are busy with
/// a long compaction (after a bulk load of a million sagas) the active
/// memtable grew past 1.5 GB.
const UNFLUSHED_BYTES: u64 = 4 * MEMTABLE_BYTES;

/// fjall's background threads per store. Three, measured against
/// fjall 3.1's worker pool:
/// - one worker can deadlock: a write to a memtable past its size queues a
///   rotation request on the pool's bounded queue (1,000) on every write,
///   and the worker, rotating, blocks sending a flush into that full queue,
///   which only it drains (a 1M-saga bulk load stopped with every thread
///   parked);
/// - with more than one, worker 0 keeps itself for flushes by sending each
///   compaction request it receives back to the queue, and takes it again
///   at once while the others are busy: with two workers that loop took
///   about 7% of the process's CPU in the closed loop (18% for fjall's
///   threads, 13% with three, lz4 included) and cost 12% of the CPU per
///   saga; with three, one of the other two is usually free to take it.
///
/// With more than one, a memtable is also sealed and flushed while
/// another worker compacts.
const WORKERS: usize = 3;

/// Tables level 0 collects before they are compacted into level 1 (fjall:
/// 4). Each compaction of level 0 into level 1 rewrites the level-1 tables
/// it overlaps (a participant's keys, SKUs and customers, span its whole
/// key range); collecting 12 flushes instead of 4 rewrites them a third as
/// often. Measured, `microshop bench` spread
/// runs on one afternoon: 4 → 10.5 KB written per saga, 8 → 8.7, 12 →
/// 8.1, 16 → 7.8, 20 → 8.0, with CPU and latency within the noise; with
/// 1M sagas in the log one caller stays at 1.02× the empty log. Not
/// higher: fjall slows writes from 20 level-0 runs on and halts them at
/// 30, and a compaction that lags behind the flushes must not get there.
/// Kept per store from its creation, like every table option.
const L0_TABLES: u8 = 12;

/// Level-0 tables from which writes no longer commit on a caller's thread
/// ([`EmbeddedDb::try_inline`]): near fjall's write stall, a commit can
/// spin or sleep in fjall, which only the writer thread may.
const L0_INLINE_MAX: usize = L0_TABLES as usize + 4;

/// Free space a store needs to work: room to flush a full memtable. Below
/// it a failed write is a full disk, and a failed store is not reopened.
const ROOM_BYTES: u64 = MEMTABLE_BYTES + 1024 * 1024;

/// How long a failed store waits between attempts to reopen, at most.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether commits are fsync'd before they are acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durable {
    /// Every acknowledged durable write survives a power cut (the default).
    #[default]
    Yes,
    /// Nothing is fsync'd (benchmark baseline only).
    No,
}

/// How durable a write must be before its caller hears back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// Survives a power cut (fsync'd).
    Durable,
    /// Committed (survives a killed process); the store's next fsync makes
    /// it durable.
    Buffered,
}

/// When a write answered before it was durable ([`EmbeddedDb::write_early`])
/// becomes durable.
#[derive(Debug)]
pub struct Synced(Option<oneshot::Receiver<Result<(), StorageError>>>);

impl Synced {
    /// Already durable (a store whose writes are durable when answered).
    pub fn now() -> Self {
        Self(None)
    }

    /// Waits until the write is durable.
    pub async fn wait(self) -> Result<(), StorageError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(StorageError::Unavailable(
                    "the store stopped before the write was durable".into(),
                ))
            }),
        }
    }
}

/// What the stores of this process did, for the benchmark: counted here,
/// not derived from theory.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Journal fsyncs made.
    pub fsyncs: AtomicU64,
    /// Writes that waited for an fsync.
    pub durable_writes: AtomicU64,
    /// Writes answered before one.
    pub buffered_writes: AtomicU64,
}

/// The counters of every embedded store of this process.
pub fn write_stats() -> &'static WriteStats {
    static STATS: WriteStats = WriteStats {
        fsyncs: AtomicU64::new(0),
        durable_writes: AtomicU64::new(0),
        buffered_writes: AtomicU64::new(0),
    };
    &STATS
}

/// The writes of one job: read through, then committed as one batch.
pub struct Txn<'a> {
    /// The store, or why it cannot be read (a failed store answers every
    /// job with its failure).
    ks: Result<&'a Keyspace, &'a StorageError>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("writes", &self.writes.len())
            .finish()
    }
}

impl Txn<'_> {
    /// The value of `key`, as this job left it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        match self.writes.get(key) {
            Some(Some(v)) => Ok(Some(Value::from(v.as_slice()))),
            Some(None) => Ok(None),
            None => self
                .ks
                .map_err(StorageError::duplicate)?
                .get(key)
                .map_err(fjall_error),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key, Some(value.into()));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Up to `limit` entries of `range` as committed before this job (the
    /// job's own writes are not merged in: scan first, then write).
    pub fn scan_committed(
        &self,
        range: impl RangeBounds<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Value, Value)>, StorageError> {
        scan(
            self.ks.map_err(StorageError::duplicate)?.range(range),
            limit,
            false,
        )
    }
}

/// A consistent read of a store.
pub struct View {
    snapshot: fjall::Snapshot,
    ks: Keyspace,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").finish_non_exhaustive()
    }
}

impl View {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        self.snapshot.get(&self.ks, key).map_err(fjall_error)
    }

    /// Up to `limit` entries of `range`, in key order (newest-last) or
    /// reversed.
    pub fn scan(
        &self,
        range: impl RangeBounds<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Value, Value)>, StorageError> {
        scan(self.snapshot.range(&self.ks, range), limit, reverse)
    }
}

fn scan(
    iter: fjall::Iter,
    limit: usize,
    reverse: bool,
) -> Result<Vec<(Value, Value)>, StorageError> {
    let mut out = Vec::new();
    let mut push = |g: fjall::Guard| -> Result<bool, StorageError> {
        out.push(g.into_inner().map_err(fjall_error)?);
        Ok(out.len() < limit)
    };
    if limit == 0 {
        return Ok(out);
    }
    if reverse {
        for g in iter.rev() {
            if !push(g)? {
                break;
            }
        }
    } else {
        for g in iter {
            if !push(g)? {
                break;
            }
        }
    }
    Ok(out)
}

/// Maps an I/O error: a full disk is [`StorageError::Full`].
pub fn io_error(err: &std::io::Error, doing: &str) -> StorageError {
    if err.kind() == std::io::ErrorKind::StorageFull || err.raw_os_error() == Some(28) {
        StorageError::Full(format!("the disk is full while {doing}"))
    } else {
        StorageError::Backend(format!("{doing}: {err}"))
    }
}

fn fjall_error(err: fjall::Error) -> StorageError {
    match &err {
        fjall::Error::Io(io) => io_error(io, "writing the store"),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => io_error(io, "writing the store"),
        _ => StorageError::Backend(err.to_string()),
    }
}

/// `err`, if it is a full disk, naming the store and the room it needs:
/// it serves again once that much is free (not as soon as a byte is).
fn full_at(err: StorageError, path: &Path) -> StorageError {
    match err {
        StorageError::Full(m) => StorageError::Full(format!(
            "{m}, under {}: free at least {} MiB there",
            path.display(),
            ROOM_BYTES >> 20
        )),
        other => other,
    }
}

/// A write job that ended without an answer: it was dropped without
/// running (the store shut down with it queued).
fn not_run() -> StorageError {
    StorageError::Unavailable("the store could not run the write".into())
}

/// Bytes free for us on the file system holding `path` (`None` if unknown).
fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What a write that left the database unusable means for its callers: a
/// full disk when there is no room under the store (fjall reports a
/// failed flush only as a poisoned database), else the store is
/// unavailable while it reopens. Logged in full here.
fn failure_of(err: &StorageError, path: &Path) -> StorageError {
    tracing::error!(error = %err, path = %path.display(), "store write failed; reopening the store");
    match (err, free_bytes(path)) {
        (StorageError::Full(m), _) => full_at(StorageError::Full(m.clone()), path),
        (_, Some(free)) if free < ROOM_BYTES => full_at(
            StorageError::Full(format!("the disk is full ({free} bytes free)")),
            path,
        ),
        _ => StorageError::Unavailable("the store failed a write and is reopening".into()),
    }
}

type Completion = Box<dyn FnOnce(Result<(), &StorageError>) + Send>;
type Job = Box<dyn FnOnce(&mut Txn) -> Done + Send>;

/// What the writer does once a job ran.
struct Done {
    /// Answers the caller: at commit (buffered, early) or after the fsync.
    answer: Completion,
    /// Tells an early caller the write is durable.
    synced: Option<oneshot::Sender<Result<(), StorageError>>>,
    failed: bool,
    sync: Sync,
}

/// A fjall database with a group-commit writer.
#[derive(Clone)]
pub struct EmbeddedDb {
    inner: Arc<Inner>,
}

/// The fjall handles of an open store.
#[derive(Clone)]
struct Handles {
    db: Database,
    ks: Keyspace,
}

/// Whether a store serves (see the module docs on a full disk).
enum State {
    Open(Handles),
    Failed(StorageError),
}

struct Inner {
    /// Shared with the writer, which replaces it when the store fails and
    /// when it is reopened.
    state: Arc<RwLock<State>>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<thread::JoinHandle<()>>,
    path: PathBuf,
    durable: Durable,
    /// Held by whoever commits: the writer for a whole batch (its fsync
    /// included), or a caller committing a buffered write on its own
    /// thread ([`EmbeddedDb::try_inline`]).
    committing: Arc<Mutex<()>>,
}

impl Drop for Inner {
    /// Closes the queue and waits for the writer to finish its batch, so a
    /// service restarted in the same process (or a test reopening the
    /// directory) finds the store unlocked.
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

/// The directory of store `name` under `dir`.
pub fn store_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.fjall"))
}

/// The file an earlier version kept store `name` in.
pub fn legacy_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.redb"))
}

/// Whether store `name` under `dir` is still an earlier version's file,
/// not converted yet (`NAME.redb` without a `NAME.fjall`): a service
/// refuses to start on it, and names `microshop migrate`.
pub fn unmigrated(dir: &Path, name: &str) -> bool {
    legacy_path(dir, name).exists() && !store_path(dir, name).exists()
}

impl EmbeddedDb {
    /// Opens (or creates) store `name` under `dir` and runs `init` once,
    /// durably (to create what readers expect, or to upgrade records).
    pub fn open(
        dir: &Path,
        name: &str,
        durable: Durable,
        init: impl FnOnce(&mut Txn) -> Result<(), StorageError>,
    ) -> Result<Self, StorageError> {
        let path = store_path(dir, name);
        let legacy = legacy_path(dir, name);
        if unmigrated(dir, name) {
            return Err(StorageError::Backend(format!(
                "{} holds the {name} store of an earlier microshop version (redb); convert \
                 it once with `microshop migrate --data-dir {}` (it keeps the old file as \
                 {name}.redb.migrated), then start again",
                legacy.display(),
                dir.display()
            )));
        }
        let existed = path.exists();
        // The nearest ancestor that exists now: a new directory's entry in
        // it is durable only once it is fsync'd.
        let mut root = dir.to_owned();
        while !root.exists() {
            match root.parent() {
                Some(p) => root = p.to_owned(),
                None => break,
            }
        }
        if dir.is_file() {
            return Err(StorageError::Backend(format!(
                "the data directory {} is a file; --data-dir (MICROSHOP_DATA_DIR) must name a \
                 directory",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(&e, &format!("creating {}", dir.display())))?;
        let handles = open_handles(&path).map_err(|e| match e {
            // Say which store (a permission error says only what failed).
            StorageError::Backend(m) if !m.contains(&*path.to_string_lossy()) => {
                StorageError::Backend(format!("opening {}: {m}", path.display()))
            }
            other => full_at(other, &path),
        })?;
        if !existed && durable == Durable::Yes {
            sync_new_dirs(&path, &root)?;
        }
        let mut txn = Txn {
            ks: Ok(&handles.ks),
            writes: BTreeMap::new(),
        };
        init(&mut txn)?;
        commit(&handles, txn.writes)?;
        handles
            .db
            .persist(if durable == Durable::Yes {
                PersistMode::SyncData
            } else {
                PersistMode::Buffer
            })
            .map_err(fjall_error)?;
        let state = Arc::new(RwLock::new(State::Open(handles.clone())));
        let (jobs, rx) = mpsc::channel::<Job>();
        let committing = Arc::new(Mutex::new(()));
        let shared = Shared {
            state: Arc::clone(&state),
            path: path.clone(),
            committing: Arc::clone(&committing),
            durable,
        };
        let writer = thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || writer(handles, &shared, &rx))
            .map_err(|e| StorageError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                jobs: Some(jobs),
                writer: Some(writer),
                path,
                durable,
                committing,
            }),
        })
    }

    /// The open store's handles, or why it is not open.
    fn handles(&self) -> Result<Handles, StorageError> {
        match &*self.inner.state.read().unwrap_or_else(|e| e.into_inner()) {
            State::Open(h) => Ok(h.clone()),
            State::Failed(e) => Err(e.duplicate()),
        }
    }

    /// Runs `job` on the writer thread in its own [`Txn`] and returns its
    /// result once it is as durable as `sync` asks. A job that fails
    /// writes nothing. A job does every check before its first write and
    /// returns a business rejection as a value (written with it, e.g. a
    /// barrier record of the rejection).
    pub async fn write<R: Send + 'static>(
        &self,
        sync: Sync,
        job: impl FnOnce(&mut Txn) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        self.submit(sync, false, job).await.map(|(r, _)| r)
    }

    /// Like a [`Sync::Durable`] write, but answered as soon as it is
    /// committed (visible), with what says when it is durable: a caller
    /// may do what needs no durability meanwhile (a saga's creation, then
    /// the read-only quote), and wait before what does.
    pub async fn write_early<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Txn) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<(R, Synced), StorageError> {
        self.submit(Sync::Durable, true, job).await
    }

    async fn submit<R: Send + 'static>(
        &self,
        sync: Sync,
        early: bool,
        job: impl FnOnce(&mut Txn) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<(R, Synced), StorageError> {
        let job = match self.try_inline(sync, early, job) {
            Ok(done) => return done,
            Err(job) => job,
        };
        let (tx, rx) = oneshot::channel::<Result<R, StorageError>>();
        let (synced_tx, synced_rx) = if early {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        self.send(boxed(job, tx, sync, synced_tx))?;
        let out = rx.await.map_err(|_| not_run())??;
        Ok((out, Synced(synced_rx)))
    }

    fn send(&self, job: Job) -> Result<(), StorageError> {
        self.inner
            .jobs
            .as_ref()
            .ok_or_else(|| StorageError::Unavailable("the store is shut down".into()))?
            .send(job)
            .map_err(|_| StorageError::Unavailable("the store is shut down".into()))
    }

    /// Commits `job` right here, on the caller's thread, when nobody else
    /// is committing: a hand-off to the writer thread costs two thread
    /// wake-ups (tens of microseconds each on a small VM, most of what one
    /// caller pays for a write), the commit itself a few. Only the commit:
    /// a job that must be durable before it is answered goes to the writer,
    /// and an early one is answered here and made durable by the writer's
    /// next fsync (asked for by an empty job; the journal is one file, so
    /// that fsync covers this commit). Gives `job` back when the writer or
    /// another caller is committing (the writer holds the lock through its
    /// fsync, and fjall its journal's), or when the store's memtables or
    /// level 0 are full enough that a commit could stall in fjall.
    fn try_inline<R: Send + 'static, J>(
        &self,
        sync: Sync,
        early: bool,
        job: J,
    ) -> Result<Result<(R, Synced), StorageError>, J>
    where
        J: FnOnce(&mut Txn) -> Result<R, StorageError> + Send + 'static,
    {
        let durable = self.inner.durable;
        if sync == Sync::Durable && durable == Durable::Yes && !early {
            return Err(job);
        }
        let Ok(guard) = self.inner.committing.try_lock() else {
            return Err(job);
        };
        // Under the lock: the writer changes the state only while holding
        // it, or while the store is failed (then this does not run).
        let handles = match self.handles() {
            Ok(h)
                if h.db.write_buffer_size() <= UNFLUSHED_BYTES / 2
                    // (fjall documents this count as hidden; it reads the
                    // current version's level 0.)
                    && h.ks.l0_table_count() < L0_INLINE_MAX =>
            {
                h
            }
            _ => return Err(job),
        };
        let (tx, mut rx) = oneshot::channel::<Result<R, StorageError>>();
        let committed = write_batch(
            &handles,
            vec![boxed(job, tx, Sync::Buffered, None)],
            durable,
        );
        drop(handles);
        if let Err(e) = &committed {
            // Poisoned, as a failed batch of the writer's leaves it: the
            // store answers from the failure, and the writer (woken by an
            // empty job) reopens it once it can.
            let failure = failure_of(e, &self.inner.path);
            *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = State::Failed(failure);
        }
        drop(guard);
        if committed.is_err() && self.send(empty_job(None)).is_err() {
            tracing::debug!("store shut down while failing");
        }
        let out = match rx.try_recv() {
            Ok(out) => out,
            Err(_) => Err(not_run()),
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => return Ok(Err(e)),
        };
        if !early || durable == Durable::No {
            return Ok(Ok((out, Synced::now())));
        }
        let (synced_tx, synced_rx) = oneshot::channel();
        // A store shut down meanwhile answers the wait with that.
        let _ = self.send(empty_job(Some(synced_tx)));
        Ok(Ok((out, Synced(Some(synced_rx)))))
    }

    /// Runs `f` against a snapshot of the store, on the caller's task.
    pub async fn read<R>(
        &self,
        f: impl FnOnce(&View) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let Handles { db, ks } = self.handles()?;
        let view = View {
            snapshot: db.snapshot(),
            ks,
        };
        f(&view)
    }

    /// Checks the store answers (for health).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.read(|v| v.get(&[0]).map(drop)).await
    }

    /// Compacts the whole store now, blocking the calling thread (after a
    /// bulk load, so what follows meets a settled tree, as a log grown over
    /// weeks would be).
    pub fn compact_blocking(&self) -> Result<(), StorageError> {
        self.handles()?.ks.major_compact().map_err(fjall_error)
    }

    /// Bytes the store's files take on disk.
    pub fn disk_space(&self) -> Result<u64, StorageError> {
        self.handles()?.db.disk_space().map_err(fjall_error)
    }
}

/// Makes a new store's directories durable: fjall fsyncs the files it
/// creates and their folders, but not the store's own directory entry,
/// nor those of the data directories created for it (a power cut right
/// after the first answers would take the whole store away).
fn sync_new_dirs(path: &Path, root: &Path) -> Result<(), StorageError> {
    let mut dirs = vec![path.join("keyspaces"), path.to_owned()];
    let mut d = path.parent();
    while let Some(p) = d {
        dirs.push(p.to_owned());
        if p == root {
            break;
        }
        d = p.parent();
    }
    for d in dirs {
        if d.is_dir() {
            std::fs::File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error(&e, &format!("syncing {}", d.display())))?;
        }
    }
    Ok(())
}

/// Opens the fjall database at `path` (recovering its journal) and its
/// keyspace.
fn open_handles(path: &Path) -> Result<Handles, StorageError> {
    // The writer flushes the journal to the OS once per batch (not once per
    // commit), then fsyncs it when a write of the batch needs it.
    let db = Database::builder(path)
        .cache_size(CACHE_BYTES)
        .max_journaling_size(JOURNALING_BYTES)
        .worker_threads(WORKERS)
        .manual_journal_persist(true)
        .open()
        .map_err(|e| match e {
            fjall::Error::Locked => {
                StorageError::Backend(format!("{} is in use by another process", path.display()))
            }
            other => fjall_error(other),
        })?;
    let ks = db
        .keyspace("data", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .manual_journal_persist(true)
                // lz4 on every level: flushes and compactions write about
                // half the bytes (21 -> 10 KB per saga, all stores), for
                // CPU within the run-to-run noise.
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
                // Index and filter blocks in 4 KiB partitions on every level
                // (fjall: from L3 on): a point read then loads one small
                // partition into the 2 MiB cache, not a table's whole filter
                // and index. Compressed tables hold twice the keys, and with
                // whole blocks a log of 1M sagas read and checksummed them
                // on nearly every lookup.
                .filter_block_partitioning_policy(PartitioningPolicy::all(true))
                .index_block_partitioning_policy(PartitioningPolicy::all(true))
                .compaction_strategy(Arc::new(
                    fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES),
                ))
        })
        .map_err(fjall_error)?;
    Ok(Handles { db, ks })
}
