//! The writer side of the embedded store: the writer thread's loop, one
//! batch's commits and its group fsync, backpressure on unflushed
//! memtables, and reopening a store a failed write poisoned. Apart from
//! `mod.rs` (the store's API, its tables and its options) because this is
//! the part that decides what is durable when, and is read on its own
//! when that is in question; the rules are in the parent's module docs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, atomic::Ordering, mpsc},
    thread,
    time::{Duration, Instant},
};

use fjall::PersistMode;
use tokio::sync::oneshot;

use super::{
    Completion, Done, Durable, Handles, Job, MAX_BATCH, REOPEN_BACKOFF_MAX, ROOM_BYTES, State,
    Sync, Txn, UNFLUSHED_BYTES, failure_of, fjall_error, free_bytes, open_handles, write_stats,
};
use crate::StorageError;

pub(super) fn commit(
    handles: &Handles,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<(), StorageError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut batch = handles.db.batch();
    for (key, value) in writes {
        match value {
            Some(v) => batch.insert(&handles.ks, key, v),
            None => batch.remove(&handles.ks, key),
        }
    }
    batch.commit().map_err(fjall_error)
}

/// Takes the queued jobs, up to [`MAX_BATCH`], after `first`.
fn take_batch(first: Job, rx: &mpsc::Receiver<Job>) -> Vec<Job> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    batch
}

/// Answers `job` with `failure` without writing anything.
fn refuse(job: Job, failure: &StorageError) {
    let mut txn = Txn {
        ks: Err(failure),
        writes: BTreeMap::new(),
    };
    let done = job(&mut txn);
    if let Some(s) = done.synced {
        let _ = s.send(Err(failure.duplicate()));
    }
    if done.failed {
        (done.answer)(Ok(()));
    } else {
        (done.answer)(Err(failure));
    }
}

/// What the writer thread shares with the store's callers.
pub(super) struct Shared {
    pub(super) state: Arc<RwLock<State>>,
    pub(super) path: PathBuf,
    pub(super) committing: Arc<Mutex<()>>,
    pub(super) durable: Durable,
}

/// The current failure of a store, if it is failed.
fn failure(state: &RwLock<State>) -> Option<StorageError> {
    match &*state.read().unwrap_or_else(|e| e.into_inner()) {
        State::Open(_) => None,
        State::Failed(e) => Some(e.duplicate()),
    }
}

/// A job that writes nothing. Without `synced`: wakes the writer after a
/// caller's own commit failed, so it reopens the store. With it: asks for
/// an fsync of what is committed, and says when it is done.
pub(super) fn empty_job(synced: Option<oneshot::Sender<Result<(), StorageError>>>) -> Job {
    Box::new(move |_| Done {
        answer: Box::new(|_| ()),
        failed: synced.is_none(),
        synced,
        sync: Sync::Durable,
    })
}

/// `job` as the writer runs it, answering through `tx` (and `synced`).
pub(super) fn boxed<R: Send + 'static>(
    job: impl FnOnce(&mut Txn) -> Result<R, StorageError> + Send + 'static,
    tx: oneshot::Sender<Result<R, StorageError>>,
    sync: Sync,
    synced: Option<oneshot::Sender<Result<(), StorageError>>>,
) -> Job {
    Box::new(move |txn| {
        let out = job(txn);
        let failed = out.is_err();
        let answer: Completion = Box::new(move |commit| {
            let result = match commit {
                Ok(()) => out,
                Err(e) => match out {
                    Err(own) => Err(own),
                    Ok(_) => Err(e.duplicate()),
                },
            };
            let _ = tx.send(result);
        });
        Done {
            answer,
            synced,
            failed,
            sync,
        }
    })
}

pub(super) fn writer(mut handles: Handles, shared: &Shared, rx: &mpsc::Receiver<Job>) {
    let Shared {
        state,
        path,
        committing,
        durable,
    } = shared;
    while let Ok(first) = rx.recv() {
        let guard = committing.lock().unwrap_or_else(|e| e.into_inner());
        let failed = match failure(state) {
            // A caller's own commit failed: its wake-up (and anything sent
            // before the store was marked failed) is answered from that.
            Some(failure) => {
                refuse(first, &failure);
                Some(failure)
            }
            None => {
                hold_back(&handles);
                let batch = take_batch(first, rx);
                write_batch(&handles, batch, *durable).err().map(|e| {
                    // fjall poisoned the database: answer from the failure
                    // until it is open again.
                    let failure = failure_of(&e, path);
                    *state.write().unwrap_or_else(|e| e.into_inner()) =
                        State::Failed(failure.duplicate());
                    failure
                })
            }
        };
        drop(guard);
        if let Some(failure) = failed {
            drop(handles);
            match reopen(path, state, rx, failure) {
                Some(open) => handles = open,
                None => break,
            }
        }
    }
    tracing::debug!("store writer stopped");
}

/// Waits, before the next batch, until the store's memtables hold at most
/// [`UNFLUSHED_BYTES`] not yet flushed: backpressure on the store's
/// callers (their jobs wait in the queue), so its memory stays bounded
/// whatever its workers are busy with. Seals the active memtable first, so
/// that its flush is queued even if fjall's own request to seal it is
/// still waiting behind a compaction.
pub(super) fn hold_back(handles: &Handles) {
    if handles.db.write_buffer_size() <= UNFLUSHED_BYTES {
        return;
    }
    if let Err(e) = handles.ks.rotate_memtable() {
        // The next commit reports what is wrong with the journal.
        tracing::warn!(error = %e, "cannot seal the store's memtable");
        return;
    }
    let started = Instant::now();
    while handles.db.write_buffer_size() > UNFLUSHED_BYTES {
        thread::sleep(Duration::from_millis(2));
        if started.elapsed() > FLUSH_WAIT_MAX {
            tracing::warn!(
                unflushed = handles.db.write_buffer_size(),
                "the store's memtables are still not flushed; writing on"
            );
            return;
        }
    }
}

/// Longest a writer waits for a flush before it writes one batch anyway:
/// while flushes are stuck (a full disk fails them) the store still
/// answers, at most one batch a second, and the failure shows up as a
/// failed write rather than as a silent stall.
const FLUSH_WAIT_MAX: Duration = Duration::from_secs(1);

/// While the store is failed: answers every job with `failure` and, on a
/// capped backoff, opens the store again once the disk has room. `None`
/// when the store shuts down meanwhile.
pub(super) fn reopen(
    path: &Path,
    state: &RwLock<State>,
    rx: &mpsc::Receiver<Job>,
    mut failure: StorageError,
) -> Option<Handles> {
    let mut delay = Duration::from_millis(50);
    let mut next_try = Instant::now() + delay;
    loop {
        match rx.recv_timeout(next_try.saturating_duration_since(Instant::now())) {
            Ok(job) => {
                refuse(job, &failure);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        delay = (delay * 2).min(REOPEN_BACKOFF_MAX);
        next_try = Instant::now() + delay;
        if free_bytes(path).is_some_and(|free| free < ROOM_BYTES) {
            continue;
        }
        // Readers may still hold the old database for a moment (its lock):
        // then this fails, and the next attempt succeeds.
        match open_handles(path).and_then(|h| {
            h.db.persist(PersistMode::SyncData).map_err(fjall_error)?;
            Ok(h)
        }) {
            Ok(handles) => {
                tracing::info!(path = %path.display(), "store reopened; serving again");
                *state.write().unwrap_or_else(|e| e.into_inner()) = State::Open(handles.clone());
                return Some(handles);
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "store not reopened yet");
                if matches!(e, StorageError::Full(_)) {
                    failure = e;
                }
            }
        }
    }
}

/// Runs one batch of jobs and answers them; `Err` when a commit or the
/// journal's flush or fsync failed, which leaves the database poisoned
/// (every job of the batch not answered yet is answered with it).
pub(super) fn write_batch(
    handles: &Handles,
    batch: Vec<Job>,
    durable: Durable,
) -> Result<(), StorageError> {
    let stats = write_stats();
    // Answered once the batch is in the OS (buffered writes: a killed
    // process loses nothing), or once its fsync is done (durable writes,
    // and the durability of early ones).
    let mut buffered: Vec<Completion> = Vec::new();
    let mut waiting: Vec<Completion> = Vec::new();
    let mut early: Vec<oneshot::Sender<Result<(), StorageError>>> = Vec::new();
    let mut jobs = batch.into_iter();
    let mut broken: Option<StorageError> = None;
    for job in jobs.by_ref() {
        let mut txn = Txn {
            ks: Ok(&handles.ks),
            writes: BTreeMap::new(),
        };
        let done = job(&mut txn);
        if done.failed {
            (done.answer)(Ok(()));
            continue;
        }
        match commit(handles, txn.writes) {
            Err(e) => {
                if let Some(s) = done.synced {
                    let _ = s.send(Err(e.duplicate()));
                }
                (done.answer)(Err(&e));
                broken = Some(e);
                break;
            }
            Ok(()) if done.sync == Sync::Durable && durable == Durable::Yes => match done.synced {
                Some(s) => {
                    buffered.push(done.answer);
                    early.push(s);
                }
                None => waiting.push(done.answer),
            },
            Ok(()) => {
                stats.buffered_writes.fetch_add(1, Ordering::Relaxed);
                buffered.push(done.answer);
                if let Some(s) = done.synced {
                    early.push(s);
                }
            }
        }
    }
    let flushed = match broken {
        Some(e) => Err(e),
        None => handles.db.persist(PersistMode::Buffer).map_err(fjall_error),
    };
    if let Err(e) = flushed {
        // Nothing of this batch was acknowledged: answer all of it (and
        // what is still queued in it) with the failure.
        for answer in buffered.into_iter().chain(waiting) {
            answer(Err(&e));
        }
        for s in early {
            let _ = s.send(Err(e.duplicate()));
        }
        for job in jobs {
            refuse(job, &e);
        }
        return Err(e);
    }
    for answer in buffered {
        answer(Ok(()));
    }
    if waiting.is_empty() && early.is_empty() {
        return Ok(());
    }
    let synced = if durable == Durable::Yes {
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        stats
            .durable_writes
            .fetch_add((waiting.len() + early.len()) as u64, Ordering::Relaxed);
        handles
            .db
            .persist(PersistMode::SyncData)
            .map_err(fjall_error)
    } else {
        Ok(())
    };
    for answer in waiting {
        answer(synced.as_ref().map(|_| ()));
    }
    for s in early {
        let _ = s.send(synced.as_ref().map(|_| ()).map_err(StorageError::duplicate));
    }
    synced
}
