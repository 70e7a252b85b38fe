//! The saga engine: drives every saga to its end, one task per saga, and
//! resumes what was left unfinished.
//!
//! - `run.rs`: running one claimed saga, step by step and back through
//!   compensations, writing the log before and after every call;
//! - `waiting.rs`: sagas that wait for an unreachable participant, how they
//!   are re-driven by themselves, and the checkout hold;
//! - `config.rs`: the driver's budgets and periods;
//! - here: starting sagas, the one task per saga (the `active` map), leases
//!   and turns, recovery, payment expiry, and the background loops.
//!
//! One task drives a saga at a time in this process; callers waiting for
//! the same saga (duplicates of one idempotency key, admin calls) subscribe
//! to its outcome instead of driving it again. The task is detached from
//! the request that started it, so a client that gives up never leaves a
//! saga half-driven.

mod config;
mod run;
mod waiting;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use microshop_runtime::{metrics::metrics, telemetry};
use microshop_storage::{StorageError, embedded::Synced};
use tokio::{
    sync::watch,
    time::{Instant, sleep, timeout},
};
use tracing::{Instrument, Span, field::Empty};

pub use self::config::{EngineConfig, default_instance_id};
use self::{run::Ahead, waiting::WaitMap};
use crate::{
    log::{Begin, PaymentDeadline, SagaFilter, SagaLog},
    model::{AUTOMATIC, SagaInput, SagaRecord, SagaState, SagaType, StepRecord, now_ms},
    participants::{Participants, PeerHealth},
    steps,
};

/// The outcome published to waiters: the saga as it ended (or as it waits
/// for a participant), or why driving stopped (the log was unreachable;
/// recovery resumes it later).
pub type Outcome = Result<SagaRecord, String>;

/// An operator's request to abort a saga being driven, and who made it.
#[derive(Debug, Default)]
pub(super) struct AbortFlag {
    set: AtomicBool,
    by: Mutex<Option<(String, String)>>,
}

impl AbortFlag {
    fn request(&self, actor: &str, note: &str) {
        *self.by.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((actor.to_owned(), note.to_owned()));
        self.set.store(true, Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// `(actor, note)` once requested.
    fn requested(&self) -> Option<(String, String)> {
        self.is_set().then(|| {
            self.by
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| (String::new(), "aborted by an operator".into()))
        })
    }
}

/// The abort flag of code that runs only while compensating, which an
/// abort request does not change.
static NO_ABORT: AbortFlag = AbortFlag {
    set: AtomicBool::new(false),
    by: Mutex::new(None),
};

/// Who re-drives a waiting saga, for its history.
#[derive(Clone, Debug)]
pub struct Resume {
    /// An operator's token subject, or [`AUTOMATIC`].
    pub actor: String,
    /// What the history says.
    pub note: String,
}

impl Resume {
    /// A re-drive the orchestrator decided.
    pub fn automatic(note: String) -> Self {
        Self {
            actor: AUTOMATIC.to_owned(),
            note,
        }
    }
}

struct Active {
    done: watch::Receiver<Option<Outcome>>,
    abort: Arc<AbortFlag>,
}

/// A saga this process has just created, driven from the record `begin`
/// returned: the first step's intent was saved with the creation, and the
/// creation may not be durable yet (the read-only first step runs
/// meanwhile; the first effect waits for it).
#[derive(Debug)]
pub(super) struct Fresh {
    ahead: Ahead,
    synced: Synced,
}

/// The saga engine.
pub struct Engine<L> {
    log: L,
    participants: Participants,
    config: EngineConfig,
    active: Mutex<HashMap<String, Active>>,
    /// Unfinished sagas whose latest record this process wrote: any other
    /// record read from the log may be older than what an earlier run of
    /// it did (see `start_compensating`).
    wrote_last: Mutex<HashSet<String>>,
    /// Bounds the sagas recovery drives at once.
    recovery_slots: Arc<tokio::sync::Semaphore>,
    /// Whether a recovery pass is under way (passes never overlap).
    recovering: AtomicBool,
    /// One payment or cancellation saga at a time per order (see
    /// [`Engine::order_turn`]).
    order_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What the health watcher sees of the participants.
    health: Arc<PeerHealth>,
    /// The sagas of this process that wait for a participant.
    waiting: WaitMap,
}

impl<L> std::fmt::Debug for Engine<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl<L: SagaLog> Engine<L> {
    /// A new engine over `log` and `participants`.
    pub fn new(log: L, participants: Participants, config: EngineConfig) -> Arc<Self> {
        let recovery_slots = Arc::new(tokio::sync::Semaphore::new(
            config.recovery_concurrency.max(1),
        ));
        Arc::new(Self {
            log,
            participants,
            config,
            active: Mutex::new(HashMap::new()),
            wrote_last: Mutex::new(HashSet::new()),
            recovery_slots,
            recovering: AtomicBool::new(false),
            order_turns: Mutex::new(HashMap::new()),
            health: Arc::new(PeerHealth::default()),
            waiting: WaitMap::default(),
        })
    }

    /// The log.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The participants' clients.
    pub fn participants(&self) -> &Participants {
        &self.participants
    }

    /// What the health watcher reports of the participants (it writes here).
    pub fn health(&self) -> &PeerHealth {
        &self.health
    }

    /// Starts a saga for `key` or finds the one holding it. A created saga
    /// comes with what says when its creation is durable: hand both to
    /// [`Engine::drive_created`].
    pub async fn begin(
        &self,
        saga_type: SagaType,
        key: String,
        input: SagaInput,
    ) -> Result<(Begin, Synced), StorageError> {
        let now = now_ms();
        let steps = steps::definition(saga_type)
            .iter()
            .map(|d| StepRecord::new(d.name, d.description))
            .collect();
        let mut record = SagaRecord {
            saga_id: uuid::Uuid::now_v7().to_string(),
            saga_type,
            state: SagaState::Running,
            idempotency_key: key,
            input,
            steps,
            outputs: Default::default(),
            history: Vec::new(),
            error: None,
            failure_reason: String::new(),
            failed_from: None,
            created_at_ms: now,
            updated_at_ms: now,
            seq: 0,
            lease_epoch: 0,
            trace_parent: microshop_runtime::telemetry::current_traceparent(),
            waiting: None,
            waits: 0,
        };
        record.transition(SagaState::Running, "saga started");
        // The first step's intent goes in with the creation (see
        // `drive_created`); no saga type skips its first step.
        Ahead::mark(&mut record, 0, false);
        let begun = self.log.begin(record).await?;
        if let (Begin::Created(record), _) = &begun {
            metrics().saga_started(record.saga_type.name());
        }
        Ok(begun)
    }

    /// Makes sure a task drives `saga_id` and returns a receiver of its
    /// outcome. A terminal saga is not driven again; a waiting one only
    /// once its wait is over.
    pub fn drive(self: &Arc<Self>, saga_id: &str) -> watch::Receiver<Option<Outcome>> {
        self.drive_from(saga_id, None, None)
    }

    /// Like [`Engine::drive`], re-driving a waiting saga now, in `resume`'s
    /// name.
    pub fn drive_now(
        self: &Arc<Self>,
        saga_id: &str,
        resume: Resume,
    ) -> watch::Receiver<Option<Outcome>> {
        self.drive_from(saga_id, None, Some(resume))
    }

    /// Drives a saga [`Engine::begin`] just created, from the record it
    /// returned: no read of the log, and the first step's intent, saved
    /// with the creation, is not recorded again; `synced` says when the
    /// creation is durable (its first effect waits for that).
    pub fn drive_created(
        self: &Arc<Self>,
        record: SagaRecord,
        synced: Synced,
    ) -> watch::Receiver<Option<Outcome>> {
        let fresh = Fresh {
            ahead: Ahead::first_of_created(&record),
            synced,
        };
        let id = record.saga_id.clone();
        self.drive_from(&id, Some((record, fresh)), None)
    }

    fn drive_from(
        self: &Arc<Self>,
        saga_id: &str,
        first: Option<(SagaRecord, Fresh)>,
        resume: Option<Resume>,
    ) -> watch::Receiver<Option<Outcome>> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = active.get(saga_id) {
            return a.done.clone();
        }
        let (tx, rx) = watch::channel(None);
        let abort = Arc::new(AbortFlag::default());
        active.insert(
            saga_id.to_owned(),
            Active {
                done: rx.clone(),
                abort: Arc::clone(&abort),
            },
        );
        drop(active);
        let engine = Arc::clone(self);
        let id = saga_id.to_owned();
        tokio::spawn(async move {
            let outcome = engine.drive_task(&id, &abort, first, resume).await;
            if let Err(e) = &outcome {
                tracing::warn!(saga_id = %id, error = %e, "saga driving stopped; recovery will resume it");
            }
            engine
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    /// Drives `saga_id` under one of the recovery slots, which it keeps
    /// until the saga ends or waits; `Err` when the engine shuts down.
    async fn drive_in_slot(
        self: &Arc<Self>,
        saga_id: &str,
        resume: Option<Resume>,
    ) -> Result<(), ()> {
        let slot = Arc::clone(&self.recovery_slots)
            .acquire_owned()
            .await
            .map_err(|_| ())?;
        if self.is_active(saga_id) {
            return Ok(());
        }
        let mut done = self.drive_from(saga_id, None, resume);
        tokio::spawn(async move {
            let _ = done.wait_for(Option::is_some).await;
            drop(slot);
        });
        Ok(())
    }

    /// Claims `saga_id` and drives it to its end (or until it waits). While
    /// another orchestrator holds the saga (a shared log), follows it
    /// instead until it ends or its lease runs out, then claims it; gives
    /// up after `max_wait` (recovery, here or there, finishes it).
    async fn drive_task(
        &self,
        id: &str,
        abort: &AbortFlag,
        mut first: Option<(SagaRecord, Fresh)>,
        mut resume: Option<Resume>,
    ) -> Outcome {
        let started = Instant::now();
        let mut poll = Duration::from_millis(20);
        loop {
            // A saga this process just created is held under the lease its
            // creation took.
            let claimed = match first.take() {
                Some((record, fresh)) => Some((record, Some(fresh))),
                None => self
                    .log
                    .claim(id.to_owned())
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|record| (record, None)),
            };
            if let Some((record, fresh)) = claimed {
                match self.run_in_turn(record, abort, fresh, resume.take()).await {
                    Err(StorageError::Fenced(why)) => {
                        tracing::info!(saga_id = %id, %why, "saga taken over; following it");
                    }
                    other => return other.map_err(|e| e.to_string()),
                }
            }
            match self
                .log
                .get(id.to_owned())
                .await
                .map_err(|e| e.to_string())?
            {
                None => return Err(format!("no saga {id}")),
                Some(record) if record.state.is_terminal() || record.waiting.is_some() => {
                    return Ok(record);
                }
                Some(_) if started.elapsed() >= self.config.max_wait => {
                    return Err("another orchestrator is still driving the saga".into());
                }
                Some(_) => {
                    sleep(poll).await;
                    poll = (poll * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Runs a saga in its span, and records on the span how it ended.
    async fn run_traced(
        &self,
        record: SagaRecord,
        abort: &AbortFlag,
        fresh: Option<Fresh>,
        resume: Option<Resume>,
    ) -> Result<SagaRecord, StorageError> {
        let span = saga_span(&record);
        // Without export, the saga's logs and its participant calls keep
        // the trace id of the request that started it (a log-only one).
        let log_trace = if telemetry::tracing_enabled() {
            None
        } else {
            record
                .trace_parent
                .as_deref()
                .and_then(telemetry::LogTrace::from_traceparent)
        };
        if let Some(trace) = &log_trace {
            span.record("trace_id", trace.as_str());
        }
        let outcome = telemetry::LogTrace::scope(
            log_trace,
            self.run(record, abort, fresh, resume)
                .instrument(span.clone()),
        )
        .await;
        if let Ok(record) = &outcome {
            if let Some(order_id) = &record.outputs.order_id {
                span.record("order.id", order_id.as_str());
            }
            span.record("saga.state", tracing::field::debug(record.state));
            if record.state == SagaState::Failed {
                span.record("otel.status_code", "error");
            }
        }
        outcome
    }

    /// Runs a claimed saga, in its order's turn if it acts on an order.
    async fn run_in_turn(
        &self,
        record: SagaRecord,
        abort: &AbortFlag,
        fresh: Option<Fresh>,
        resume: Option<Resume>,
    ) -> Result<SagaRecord, StorageError> {
        let Some(order_id) = record.acted_order().map(str::to_owned) else {
            return self.run_traced(record, abort, fresh, resume).await;
        };
        let turn = self.order_turn(&order_id);
        let held = turn.lock().await;
        // Reload: the saga may have been changed by an operator while this
        // task waited for its turn.
        let epoch = record.lease_epoch;
        let mut record = self
            .log
            .get(record.saga_id.clone())
            .await?
            .unwrap_or(record);
        // Saves stay fenced by the epoch this task claimed under.
        record.lease_epoch = epoch;
        // The creation is made durable either way; its first intent holds
        // only if nobody changed the saga meanwhile.
        let fresh = match fresh {
            Some(f) if f.ahead.still_in(&record) => Some(f),
            Some(f) => {
                f.synced.wait().await?;
                None
            }
            None => None,
        };
        let outcome = self.run_traced(record, abort, fresh, resume).await;
        drop(held);
        drop(turn);
        self.end_order_turn(&order_id);
        outcome
    }

    /// The turn of `order_id`: payment and cancellation sagas of one order
    /// run one after the other. Interleaved, a cancellation could release
    /// the reservation between a payment's mark-paid and its commit-stock,
    /// leaving the payment FAILED with an order paid and nothing to commit.
    fn order_turn(&self, order_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.order_turns.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(turns.entry(order_id.to_owned()).or_default())
    }

    /// Forgets the turn of `order_id` once no saga holds or awaits it.
    fn end_order_turn(&self, order_id: &str) {
        let mut turns = self.order_turns.lock().unwrap_or_else(|e| e.into_inner());
        if turns
            .get(order_id)
            .is_some_and(|t| Arc::strong_count(t) == 1)
        {
            turns.remove(order_id);
        }
    }

    /// Asks the task driving `saga_id` to compensate, in `actor`'s name;
    /// false if none is.
    pub fn request_abort(&self, saga_id: &str, actor: &str, note: &str) -> bool {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.get(saga_id).is_some_and(|a| {
            a.abort.request(actor, note);
            true
        })
    }

    /// Whether the latest record of `saga_id` is one this process wrote.
    pub(super) fn wrote_last_record(&self, saga_id: &str) -> bool {
        self.wrote_last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(saga_id)
    }

    /// After a run of `saga_id`: it ended (forgotten), or stopped with
    /// `record` last written (kept), or failed, in which case the log may
    /// be behind (forgotten, so the next run takes it as inherited).
    pub(super) fn note_last_record(&self, saga_id: &str, record: Option<&SagaRecord>) {
        let mut wrote = self.wrote_last.lock().unwrap_or_else(|e| e.into_inner());
        match record {
            Some(r)
                if !matches!(
                    r.state,
                    SagaState::Completed | SagaState::Compensated | SagaState::Failed
                ) =>
            {
                wrote.insert(saga_id.to_owned());
            }
            _ => {
                wrote.remove(saga_id);
            }
        }
    }

    /// Whether a task of this process drives `saga_id` now.
    pub fn is_active(&self, saga_id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(saga_id)
    }

    /// Waits up to `wait` for an outcome; `None` if the saga is still going.
    pub async fn wait(mut rx: watch::Receiver<Option<Outcome>>, wait: Duration) -> Option<Outcome> {
        match timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone(),
            Ok(Err(_)) => Some(Err("saga driver stopped".into())),
            Err(_) => None,
        }
    }

    /// Resumes every unfinished saga of the log (at start and periodically),
    /// at most `recovery_concurrency` at a time. Sagas waiting for a
    /// participant are left alone until their wait is over.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, StorageError> {
        let ids = self.log.unfinished().await?;
        let mut started = 0;
        for id in ids {
            if self.is_active(&id) || self.waits_undisturbed(&id) {
                continue;
            }
            self.drive_in_slot(&id, None)
                .await
                .map_err(|()| StorageError::Unavailable("the engine is shutting down".into()))?;
            started += 1;
        }
        if started > 0 {
            tracing::debug!(sagas = started, "recovery drove unfinished sagas");
        }
        Ok(started)
    }

    /// Sagas FAILED in the log now (dead letters), for the gauge.
    pub async fn count_failed(&self) -> Result<i64, StorageError> {
        let mut count = 0_i64;
        let mut cursor = None;
        loop {
            let page = self
                .log
                .list(SagaFilter::state(SagaState::Failed), cursor, 1_000)
                .await?;
            count += i64::try_from(page.sagas.len()).unwrap_or(i64::MAX);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(count),
            }
        }
    }

    /// Starts cancel sagas for orders unpaid past their deadline.
    pub async fn expire_unpaid(self: &Arc<Self>) -> Result<usize, StorageError> {
        let due = self.log.due_payments(now_ms(), 256).await?;
        let mut started = 0;
        for order_id in due {
            let key = format!("expire:{order_id}");
            let input = SagaInput::Cancel {
                order_id: order_id.clone(),
                reason: "payment expired".into(),
                only_if_unpaid: true,
            };
            match self.begin(SagaType::CancelOrder, key, input).await? {
                (Begin::Created(record), synced) => {
                    tracing::info!(order_id = %order_id, saga_id = %record.saga_id, "payment expired: cancelling");
                    drop(self.drive_created(record, synced));
                    started += 1;
                }
                (Begin::Existing(mut record), _) if record.state.is_terminal() => {
                    // Ended without clearing (e.g. FAILED): stop re-checking.
                    self.save(&mut record, PaymentDeadline::Clear { order_id })
                        .await?;
                }
                (Begin::Existing(record), _) => drop(self.drive(&record.saga_id)),
            }
        }
        Ok(started)
    }

    /// Runs recovery, expiry and retention until `stop` flips.
    pub async fn background(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut recovery = tokio::time::interval(self.config.recovery_interval);
        let mut expiry = tokio::time::interval(self.config.expiry_interval);
        let purge = self.config.saga_retention.map(|retention| {
            let log = self.log.clone();
            tokio::spawn(microshop_runtime::retention::purge_loop(
                "finished sagas",
                retention,
                move |before, limit| {
                    let log = log.clone();
                    async move { log.purge_ended(before, limit).await }
                },
                |n| metrics().sagas_purged(n),
            ))
        });
        let _purge = AbortOnDrop(purge);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = recovery.tick() => {
                    // A long pass runs on its own task, so payment expiry
                    // and the next ticks are not held up behind it.
                    if !self.recovering.swap(true, Ordering::SeqCst) {
                        let engine = Arc::clone(&self);
                        tokio::spawn(async move {
                            if let Err(e) = engine.recover().await {
                                tracing::warn!(error = %e, "recovery pass failed");
                            }
                            match engine.count_failed().await {
                                Ok(n) => metrics().set_dead_letters(n),
                                Err(e) => tracing::warn!(error = %e, "cannot count FAILED sagas"),
                            }
                            engine.recovering.store(false, Ordering::SeqCst);
                        });
                    }
                }
                _ = expiry.tick() => {
                    if let Err(e) = self.expire_unpaid().await {
                        tracing::warn!(error = %e, "payment expiry pass failed");
                    }
                }
            }
        }
    }
}

/// Aborts its task when dropped (the background loops stop together).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The span a saga's driving runs in: a child of the request that started
/// the saga, also when recovery drives it in another process lifetime.
fn saga_span(record: &SagaRecord) -> Span {
    let order_id = record
        .acted_order()
        .map(str::to_owned)
        .or_else(|| record.outputs.order_id.clone());
    let span = tracing::info_span!(
        parent: None,
        "saga",
        otel.name = %format_args!("saga {}", record.saga_type.name()),
        saga.id = %record.saga_id,
        saga.type = record.saga_type.name(),
        order.id = order_id,
        saga.state = Empty,
        otel.status_code = Empty,
        trace_id = Empty,
    );
    if telemetry::tracing_enabled() {
        telemetry::continue_from_traceparent(&span, record.trace_parent.as_deref());
    }
    span
}

/// The span of one step's action or compensation, across its attempts
/// (each attempt's participant call is a client span inside it, and each
/// retry an event).
fn step_span(record: &SagaRecord, index: usize, compensation: bool) -> Span {
    let def = steps::definition(record.saga_type)[index];
    let (kind, name) = match (compensation, def.compensation) {
        (true, Some(undo)) => ("compensation", undo),
        _ => ("action", def.name),
    };
    tracing::info_span!(
        "saga.step",
        otel.name = %format_args!("{kind} {name}"),
        otel.status_code = Empty,
        saga.id = %record.saga_id,
        saga.type = record.saga_type.name(),
        saga.step = name,
        saga.step.kind = kind,
        saga.step.attempts = Empty,
        saga.step.outcome = Empty,
    )
}

/// Records how a step or compensation ended, on its span and in metrics.
fn step_ended(
    record: &SagaRecord,
    name: &'static str,
    started: Instant,
    outcome: &'static str,
    attempts: u32,
) {
    metrics().step_finished(record.saga_type.name(), name, started.elapsed());
    let span = Span::current();
    span.record("saga.step.attempts", attempts);
    span.record("saga.step.outcome", outcome);
    if outcome != "succeeded" {
        span.record("otel.status_code", "error");
    }
}
