//! The saga driver: runs each saga forward, step by step, and backward
//! through compensations when a step is rejected, writing the log before
//! and after every participant call.
//!
//! What happens between two calls without a call in between shares one
//! write: a step's result, the steps skipped after it and the next call's
//! intent (or the saga's end) are saved together, and a new saga's record
//! already holds its first step's intent. Every call still has its intent
//! durable before it is sent and its result durable before the next one
//! is, with 4 writes for a checkout instead of 9; the write made ahead is
//! remembered as an [`Ahead`] so the next call does not record it again.
//!
//! One task drives a saga at a time in this process (the `active` map);
//! callers waiting for the same saga (duplicates of one idempotency key,
//! admin calls) subscribe to its outcome instead of driving it again. The
//! task is detached from the request that started it, so a client that
//! gives up never leaves a saga half-driven. Recovery and payment expiry
//! are background loops over the log.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use microshop_runtime::{metrics::metrics, telemetry};
use microshop_storage::StorageError;
use tokio::{
    sync::watch,
    time::{Instant, sleep, timeout},
};
use tonic::Code;
use tracing::{Instrument, Span, field::Empty};

use crate::{
    failpoint::Failpoint,
    log::{Begin, PaymentDeadline, SagaLog},
    model::{
        SagaError, SagaInput, SagaRecord, SagaState, SagaType, StepRecord, StepStatus, now_ms,
    },
    participants::{CallError, Participants},
    steps,
};

/// Budgets and periods of the driver.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Attempts of one forward step before the saga is FAILED.
    pub step_attempts: usize,
    /// Time one forward step may take across its attempts.
    pub step_budget: Duration,
    /// Attempts of one compensation before the saga is FAILED.
    pub compensation_attempts: usize,
    /// First retry delay (doubles, with jitter).
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Timeout of one participant call.
    pub call_timeout: Duration,
    /// Unpaid orders are cancelled this long after creation.
    pub payment_ttl: Duration,
    /// How often unfinished sagas are looked for.
    pub recovery_interval: Duration,
    /// How often payment deadlines are checked.
    pub expiry_interval: Duration,
    /// Longest a call waits for its saga when the client set no deadline.
    pub max_wait: Duration,
    /// Sagas recovery drives at once; the rest wait their turn, so a
    /// restart with thousands of unfinished sagas keeps memory bounded.
    pub recovery_concurrency: usize,
    /// Crash point for recovery tests.
    pub failpoint: Option<Failpoint>,
    /// This orchestrator's name as the owner of saga leases (shared log).
    pub instance_id: String,
    /// How long a saga's lease lasts unless renewed; every save renews it.
    /// Must exceed the longest gap between two saves of a saga (a call
    /// timeout plus the largest retry delay), or another orchestrator takes
    /// over sagas still being driven (safe, thanks to fencing, but wasted).
    pub lease: Duration,
}

/// A name for this process as a lease owner: host and process id, plus a
/// random part so a restarted process with a recycled pid is a new owner.
pub fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orchestrator".into());
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &nonce[nonce.len() - 6..]
    )
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            step_attempts: 8,
            step_budget: Duration::from_secs(10),
            compensation_attempts: 12,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            call_timeout: Duration::from_secs(3),
            payment_ttl: Duration::from_secs(600),
            recovery_interval: Duration::from_secs(5),
            expiry_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(25),
            recovery_concurrency: 256,
            failpoint: None,
            instance_id: default_instance_id(),
            lease: Duration::from_secs(15),
        }
    }
}

/// The outcome published to waiters: the saga as it ended, or why driving
/// stopped (the log was unreachable; recovery resumes it later).
pub type Outcome = Result<SagaRecord, String>;

struct Active {
    done: watch::Receiver<Option<Outcome>>,
    abort: Arc<AtomicBool>,
}

/// The saga engine.
pub struct Engine<L> {
    log: L,
    participants: Participants,
    config: EngineConfig,
    active: Mutex<HashMap<String, Active>>,
    /// Bounds the sagas recovery drives at once.
    recovery_slots: Arc<tokio::sync::Semaphore>,
    /// Whether a recovery pass is under way (passes never overlap).
    recovering: AtomicBool,
    /// One payment or cancellation saga at a time per order (see
    /// [`Engine::order_turn`]).
    order_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<L> std::fmt::Debug for Engine<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A call whose intent was saved ahead, in the write before it (the
/// previous call's result or the saga's creation): its next attempt is
/// already counted and durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ahead {
    /// The step.
    index: usize,
    /// Its compensation rather than its action.
    compensation: bool,
    /// The attempt recorded.
    attempts: u32,
}

impl Ahead {
    /// Records the intent of a new attempt of step `index` (or of its
    /// compensation) in `record`, not yet saved.
    fn mark(record: &mut SagaRecord, index: usize, compensation: bool) -> Self {
        let run = if compensation {
            let name = steps::definition(record.saga_type)[index]
                .compensation
                .unwrap_or_default();
            record.steps[index]
                .compensation
                .get_or_insert_with(|| crate::model::RunRecord {
                    name: name.to_owned(),
                    ..Default::default()
                })
        } else {
            &mut record.steps[index].action
        };
        run.status = StepStatus::Running;
        run.attempts += 1;
        run.started_at_ms.get_or_insert_with(now_ms);
        Self {
            index,
            compensation,
            attempts: run.attempts,
        }
    }

    /// The first step's intent, which [`Engine::begin`] saves with a new
    /// saga.
    fn first_of_created(record: &SagaRecord) -> Self {
        Self {
            index: 0,
            compensation: false,
            attempts: record.steps.first().map_or(0, |s| s.action.attempts),
        }
    }

    /// Whether `record` (as stored now) still holds this intent unacted on.
    fn still_in(self, record: &SagaRecord) -> bool {
        let step = record.steps.get(self.index);
        let run = if self.compensation {
            step.and_then(|s| s.compensation.as_ref())
        } else {
            step.map(|s| &s.action)
        };
        run.is_some_and(|r| r.status == StepStatus::Running && r.attempts == self.attempts)
    }

    /// Whether this is the intent of the call about to be made.
    fn is(ahead: Option<Self>, index: usize, compensation: bool) -> bool {
        ahead.is_some_and(|a| a.index == index && a.compensation == compensation)
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
            recovery_slots,
            recovering: AtomicBool::new(false),
            order_turns: Mutex::new(HashMap::new()),
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

    /// Starts a saga for `key` or finds the one holding it.
    pub async fn begin(
        &self,
        saga_type: SagaType,
        key: String,
        input: SagaInput,
    ) -> Result<Begin, StorageError> {
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
        };
        record.transition(SagaState::Running, "saga started");
        // The first step's intent goes in with the creation (see
        // `drive_created`); no saga type skips its first step.
        Ahead::mark(&mut record, 0, false);
        let begun = self.log.begin(record).await?;
        if let Begin::Created(record) = &begun {
            metrics().saga_started(record.saga_type.name());
        }
        Ok(begun)
    }

    /// Makes sure a task drives `saga_id` and returns a receiver of its
    /// outcome. A terminal saga is not driven again.
    pub fn drive(self: &Arc<Self>, saga_id: &str) -> watch::Receiver<Option<Outcome>> {
        self.drive_from(saga_id, None)
    }

    /// Drives a saga [`Engine::begin`] just created, from the record it
    /// returned: no read of the log, and the first step's intent, saved
    /// with the creation, is not recorded again.
    pub fn drive_created(self: &Arc<Self>, record: SagaRecord) -> watch::Receiver<Option<Outcome>> {
        let ahead = Ahead::first_of_created(&record);
        let id = record.saga_id.clone();
        self.drive_from(&id, Some((record, ahead)))
    }

    fn drive_from(
        self: &Arc<Self>,
        saga_id: &str,
        first: Option<(SagaRecord, Ahead)>,
    ) -> watch::Receiver<Option<Outcome>> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = active.get(saga_id) {
            return a.done.clone();
        }
        let (tx, rx) = watch::channel(None);
        let abort = Arc::new(AtomicBool::new(false));
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
            let outcome = engine.drive_task(&id, &abort, first).await;
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

    /// Claims `saga_id` and drives it to its end. While another
    /// orchestrator holds the saga (a shared log), follows it instead until
    /// it ends or its lease runs out, then claims it; gives up after
    /// `max_wait` (recovery, here or there, finishes it).
    async fn drive_task(
        &self,
        id: &str,
        abort: &AtomicBool,
        mut first: Option<(SagaRecord, Ahead)>,
    ) -> Outcome {
        let started = Instant::now();
        let mut poll = Duration::from_millis(20);
        loop {
            // A saga this process just created is held under the lease its
            // creation took.
            let claimed = match first.take() {
                Some((record, ahead)) => Some((record, Some(ahead))),
                None => self
                    .log
                    .claim(id.to_owned())
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|record| (record, None)),
            };
            if let Some((record, ahead)) = claimed {
                match self.run_in_turn(record, abort, ahead).await {
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
                Some(record) if record.state.is_terminal() => return Ok(record),
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
        abort: &AtomicBool,
        ahead: Option<Ahead>,
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
            self.run(record, abort, ahead).instrument(span.clone()),
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
        abort: &AtomicBool,
        ahead: Option<Ahead>,
    ) -> Result<SagaRecord, StorageError> {
        let Some(order_id) = record.acted_order().map(str::to_owned) else {
            return self.run_traced(record, abort, ahead).await;
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
        let ahead = ahead.filter(|a| a.still_in(&record));
        let outcome = self.run_traced(record, abort, ahead).await;
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

    /// Asks the task driving `saga_id` to compensate; false if none is.
    pub fn request_abort(&self, saga_id: &str) -> bool {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.get(saga_id).is_some_and(|a| {
            a.abort.store(true, Ordering::SeqCst);
            true
        })
    }

    /// Waits up to `wait` for an outcome; `None` if the saga is still going.
    pub async fn wait(mut rx: watch::Receiver<Option<Outcome>>, wait: Duration) -> Option<Outcome> {
        match timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone(),
            Ok(Err(_)) => Some(Err("saga driver stopped".into())),
            Err(_) => None,
        }
    }

    async fn save(
        &self,
        record: &mut SagaRecord,
        deadline: PaymentDeadline,
    ) -> Result<(), StorageError> {
        record.updated_at_ms = now_ms();
        self.log.save(record.clone(), deadline).await
    }

    async fn run(
        &self,
        mut record: SagaRecord,
        abort: &AtomicBool,
        mut ahead: Option<Ahead>,
    ) -> Result<SagaRecord, StorageError> {
        loop {
            let saved_ahead = ahead.take();
            match record.state {
                SagaState::Running => {
                    if abort.load(Ordering::SeqCst) {
                        ahead = self
                            .start_compensating(
                                &mut record,
                                aborted_error(),
                                "aborted by an operator",
                            )
                            .await?;
                        continue;
                    }
                    match next_forward(&record) {
                        Some(i) => {
                            let span = step_span(&record, i, false);
                            let written = Ahead::is(saved_ahead, i, false);
                            ahead = self
                                .forward_step(&mut record, i, abort, written)
                                .instrument(span)
                                .await?;
                        }
                        // Every step done but the end not saved (a
                        // record from before folding): save the end now.
                        // The abort was checked just above.
                        None => {
                            self.save_folding(&mut record, &NO_ABORT).await?;
                        }
                    }
                }
                SagaState::Compensating => match next_compensation(&record) {
                    Some(i) => {
                        let span = step_span(&record, i, true);
                        let written = Ahead::is(saved_ahead, i, true);
                        ahead = self
                            .compensation_step(&mut record, i, written)
                            .instrument(span)
                            .await?;
                    }
                    None => {
                        self.save_folding(&mut record, &NO_ABORT).await?;
                    }
                },
                SagaState::Completed | SagaState::Compensated | SagaState::Failed => {
                    return Ok(record);
                }
            }
        }
    }

    fn deadline_on_completion(&self, record: &SagaRecord) -> PaymentDeadline {
        let Some(order_id) = record.outputs.order_id.clone() else {
            return PaymentDeadline::Keep;
        };
        match record.saga_type {
            SagaType::PlaceOrder => PaymentDeadline::Set {
                order_id,
                due_ms: record.created_at_ms.saturating_add(
                    i64::try_from(self.config.payment_ttl.as_millis()).unwrap_or(i64::MAX),
                ),
            },
            SagaType::ConfirmPayment | SagaType::CancelOrder => PaymentDeadline::Clear { order_id },
        }
    }

    fn deadline_on_compensated(&self, record: &SagaRecord) -> PaymentDeadline {
        match (&record.saga_type, &record.input) {
            // An expiry that found the order paid (or shipped) stops waiting.
            (SagaType::CancelOrder, SagaInput::Cancel { order_id, .. }) => PaymentDeadline::Clear {
                order_id: order_id.clone(),
            },
            _ => PaymentDeadline::Keep,
        }
    }

    /// Ends a compensating saga whose compensations are all done:
    /// COMPENSATED, or FAILED when a step that cannot be undone succeeded.
    fn end_compensation(&self, record: &mut SagaRecord) -> PaymentDeadline {
        let deadline = self.deadline_on_compensated(record);
        if let Some(step) = irreversible_step(record) {
            record.failure_reason =
                format!("step {step} succeeded and cannot be undone; resolve by hand");
            record.failed_from = Some(SagaState::Compensating);
            record.transition(SagaState::Failed, record.failure_reason.clone());
        } else {
            record.transition(SagaState::Compensated, "every attempted step compensated");
        }
        deadline
    }

    /// Saves `record` together with what follows it without a call in
    /// between: skipped steps and the next call's intent, or the saga's
    /// end. Returns the intent saved ahead, if any. An abort requested
    /// while running stops the folding, so the run loop sees it first
    /// (compensating is not aborted).
    async fn save_folding(
        &self,
        record: &mut SagaRecord,
        abort: &AtomicBool,
    ) -> Result<Option<Ahead>, StorageError> {
        let mut deadline = PaymentDeadline::Keep;
        let mut ahead = None;
        match record.state {
            SagaState::Running if !abort.load(Ordering::SeqCst) => loop {
                match next_forward(record) {
                    Some(i) if steps::skipped(record, i) => skip(record, i),
                    Some(i) => {
                        ahead = Some(Ahead::mark(record, i, false));
                        break;
                    }
                    None => {
                        record.transition(SagaState::Completed, "every step succeeded");
                        deadline = self.deadline_on_completion(record);
                        break;
                    }
                }
            },
            SagaState::Compensating => match next_compensation(record) {
                Some(i) => ahead = Some(Ahead::mark(record, i, true)),
                None => deadline = self.end_compensation(record),
            },
            _ => {}
        }
        self.save(record, deadline).await?;
        count_end(record);
        Ok(ahead)
    }

    async fn start_compensating(
        &self,
        record: &mut SagaRecord,
        error: SagaError,
        note: &str,
    ) -> Result<Option<Ahead>, StorageError> {
        record.error.get_or_insert(error);
        record.transition(SagaState::Compensating, note);
        self.save_folding(record, &NO_ABORT).await
    }

    fn backoff(&self, attempts: usize) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.config.backoff_min)
            .with_max_delay(self.config.backoff_max)
            .with_max_times(attempts.saturating_sub(1))
            .with_jitter()
            .build()
    }

    /// Runs step `index` until it succeeds, is rejected or runs out of
    /// budget; `written` when its intent was saved ahead.
    async fn forward_step(
        &self,
        record: &mut SagaRecord,
        index: usize,
        abort: &AtomicBool,
        mut written: bool,
    ) -> Result<Option<Ahead>, StorageError> {
        let def = steps::definition(record.saga_type)[index];
        if steps::skipped(record, index) {
            skip(record, index);
            return self.save_folding(record, abort).await;
        }
        let started = Instant::now();
        let mut delays = self.backoff(self.config.step_attempts);
        let fp = self.config.failpoint.as_ref();
        loop {
            if !std::mem::take(&mut written) {
                Ahead::mark(record, index, false);
                self.save(record, PaymentDeadline::Keep).await?;
            }
            Failpoint::hit(fp, "intent", def.name).await;
            let result = steps::act(&self.participants, record, def.name).await;
            Failpoint::hit(fp, "rpc", def.name).await;
            match result {
                Ok(output) => {
                    steps::apply(&mut record.outputs, output);
                    let step = &mut record.steps[index].action;
                    step.status = StepStatus::Succeeded;
                    step.finished_at_ms = Some(now_ms());
                    let attempts = step.attempts;
                    let ahead = self.save_folding(record, abort).await?;
                    step_ended(record, def.name, started, "succeeded", attempts);
                    Failpoint::hit(fp, "result", def.name).await;
                    return Ok(ahead);
                }
                Err(CallError::Rejected(status)) => {
                    let step = &mut record.steps[index].action;
                    step.status = StepStatus::Failed;
                    step.last_error = describe(&status);
                    step.finished_at_ms = Some(now_ms());
                    let attempts = step.attempts;
                    let note = format!("{} rejected: {}", def.name, status.message());
                    let ahead = self
                        .start_compensating(record, saga_error(&status), &note)
                        .await?;
                    step_ended(record, def.name, started, "rejected", attempts);
                    Failpoint::hit(fp, "result", def.name).await;
                    return Ok(ahead);
                }
                Err(CallError::Transient(status)) => {
                    record.steps[index].action.last_error = describe(&status);
                    tracing::info!(
                        step = def.name,
                        attempt = record.steps[index].action.attempts,
                        code = ?status.code(),
                        error = %status.message(),
                        "transient failure"
                    );
                    if abort.load(Ordering::SeqCst) {
                        record.steps[index].action.status = StepStatus::Failed;
                        let attempts = record.steps[index].action.attempts;
                        let ahead = self
                            .start_compensating(record, aborted_error(), "aborted by an operator")
                            .await?;
                        step_ended(record, def.name, started, "aborted", attempts);
                        return Ok(ahead);
                    }
                    match delays.next() {
                        Some(delay) if started.elapsed() + delay < self.config.step_budget => {
                            metrics().step_retried(record.saga_type.name(), def.name);
                            sleep(delay).await;
                        }
                        _ => {
                            let step = &mut record.steps[index].action;
                            step.status = StepStatus::Failed;
                            step.finished_at_ms = Some(now_ms());
                            record.failure_reason = format!(
                                "{} did not succeed within its retry budget ({} attempts): {}; \
                                 RetrySaga once the participant is back, or AbortSaga",
                                def.name,
                                step.attempts,
                                status.message()
                            );
                            record.failed_from = Some(SagaState::Running);
                            let attempts = step.attempts;
                            record.transition(SagaState::Failed, record.failure_reason.clone());
                            self.save(record, PaymentDeadline::Keep).await?;
                            step_ended(record, def.name, started, "failed", attempts);
                            count_end(record);
                            tracing::warn!(saga_id = %record.saga_id, step = def.name, "saga FAILED: step out of budget");
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// Runs the compensation of step `index` until it succeeds or runs out
    /// of attempts; `written` when its intent was saved ahead.
    async fn compensation_step(
        &self,
        record: &mut SagaRecord,
        index: usize,
        mut written: bool,
    ) -> Result<Option<Ahead>, StorageError> {
        let def = steps::definition(record.saga_type)[index];
        let Some(name) = def.compensation else {
            return Ok(None);
        };
        let mut delays = self.backoff(self.config.compensation_attempts);
        let fp = self.config.failpoint.as_ref();
        let started = Instant::now();
        metrics().compensation_started(record.saga_type.name(), name);
        loop {
            if !std::mem::take(&mut written) {
                Ahead::mark(record, index, true);
                self.save(record, PaymentDeadline::Keep).await?;
            }
            Failpoint::hit(fp, "intent", name).await;
            let result = steps::compensate(&self.participants, record, name).await;
            Failpoint::hit(fp, "rpc", name).await;
            let comp = record.steps[index]
                .compensation
                .as_mut()
                .expect("compensation record was just created");
            match result {
                Ok(()) => {
                    comp.status = StepStatus::Succeeded;
                    comp.finished_at_ms = Some(now_ms());
                    let attempts = comp.attempts;
                    let ahead = self.save_folding(record, &NO_ABORT).await?;
                    step_ended(record, name, started, "succeeded", attempts);
                    Failpoint::hit(fp, "result", name).await;
                    return Ok(ahead);
                }
                Err(err) => {
                    let (status, transient) = match &err {
                        CallError::Transient(s) => (s, true),
                        CallError::Rejected(s) => (s, false),
                    };
                    comp.last_error = describe(status);
                    let delay = if transient { delays.next() } else { None };
                    match delay {
                        Some(delay) => {
                            tracing::info!(
                                compensation = name,
                                attempt = comp.attempts,
                                code = ?status.code(),
                                error = %status.message(),
                                "transient failure"
                            );
                            metrics().step_retried(record.saga_type.name(), name);
                            sleep(delay).await;
                        }
                        None => {
                            comp.status = StepStatus::Failed;
                            comp.finished_at_ms = Some(now_ms());
                            record.failure_reason = format!(
                                "compensation {name} failed after {} attempts: {}; \
                                 RetrySaga once the participant is back",
                                comp.attempts,
                                status.message()
                            );
                            record.failed_from = Some(SagaState::Compensating);
                            let attempts = comp.attempts;
                            record.transition(SagaState::Failed, record.failure_reason.clone());
                            self.save(record, PaymentDeadline::Keep).await?;
                            step_ended(record, name, started, "failed", attempts);
                            count_end(record);
                            tracing::error!(saga_id = %record.saga_id, compensation = name, "saga FAILED: compensation out of budget");
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// Resumes every unfinished saga of the log (at start and periodically),
    /// at most `recovery_concurrency` at a time.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, StorageError> {
        let ids = self.log.unfinished().await?;
        let mut started = 0;
        for id in ids {
            if self.is_active(&id) {
                continue;
            }
            let slot = Arc::clone(&self.recovery_slots)
                .acquire_owned()
                .await
                .map_err(|_| StorageError::Unavailable("the engine is shutting down".into()))?;
            // A client may have resumed it while this pass waited.
            if self.is_active(&id) {
                continue;
            }
            let mut done = self.drive(&id);
            tokio::spawn(async move {
                let _ = done.wait_for(Option::is_some).await;
                drop(slot);
            });
            started += 1;
        }
        if started > 0 {
            tracing::info!(sagas = started, "recovery resumed unfinished sagas");
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
                .list(Some(SagaState::Failed), cursor, 1_000)
                .await?;
            count += i64::try_from(page.sagas.len()).unwrap_or(i64::MAX);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(count),
            }
        }
    }

    fn is_active(&self, saga_id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(saga_id)
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
                Begin::Created(record) => {
                    tracing::info!(order_id = %order_id, saga_id = %record.saga_id, "payment expired: cancelling");
                    drop(self.drive_created(record));
                    started += 1;
                }
                Begin::Existing(mut record) if record.state.is_terminal() => {
                    // Ended without clearing (e.g. FAILED): stop re-checking.
                    self.save(&mut record, PaymentDeadline::Clear { order_id })
                        .await?;
                }
                Begin::Existing(record) => drop(self.drive(&record.saga_id)),
            }
        }
        Ok(started)
    }

    /// Runs recovery and expiry until `stop` flips.
    pub async fn background(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut recovery = tokio::time::interval(self.config.recovery_interval);
        let mut expiry = tokio::time::interval(self.config.expiry_interval);
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

/// The abort flag of code that runs only while compensating, which an
/// abort request does not change.
static NO_ABORT: AtomicBool = AtomicBool::new(false);

/// Marks step `index` skipped (not yet saved).
fn skip(record: &mut SagaRecord, index: usize) {
    let step = &mut record.steps[index].action;
    step.status = StepStatus::Skipped;
    step.finished_at_ms = Some(now_ms());
}

/// Counts a saga that has just been saved in an end state.
fn count_end(record: &SagaRecord) {
    let kind = record.saga_type.name();
    match record.state {
        SagaState::Completed => metrics().saga_completed(kind),
        SagaState::Compensated => metrics().saga_compensated(kind),
        SagaState::Failed => metrics().saga_failed(kind),
        SagaState::Running | SagaState::Compensating => {}
    }
}

/// The first forward step not yet done.
fn next_forward(record: &SagaRecord) -> Option<usize> {
    record
        .steps
        .iter()
        .position(|s| !matches!(s.action.status, StepStatus::Succeeded | StepStatus::Skipped))
}

/// The last attempted step with a compensation not yet done.
fn next_compensation(record: &SagaRecord) -> Option<usize> {
    let defs = steps::definition(record.saga_type);
    (0..record.steps.len()).rev().find(|&i| {
        let s = &record.steps[i];
        defs[i].compensation.is_some()
            && s.action.attempts > 0
            && s.compensation
                .as_ref()
                .is_none_or(|c| c.status != StepStatus::Succeeded)
    })
}

/// An effectful step that succeeded and has no compensation.
fn irreversible_step(record: &SagaRecord) -> Option<&'static str> {
    let defs = steps::definition(record.saga_type);
    defs.iter().zip(&record.steps).find_map(|(d, s)| {
        (d.effectful && d.compensation.is_none() && s.action.status == StepStatus::Succeeded)
            .then_some(d.name)
    })
}

fn describe(status: &tonic::Status) -> String {
    let reason = microshop_runtime::errors::reason_of(status)
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    format!("{:?}{reason}: {}", status.code(), status.message())
}

/// Keeps a participant's rejection to answer retries with the same error.
fn saga_error(status: &tonic::Status) -> SagaError {
    use tonic_types_ext::details;
    let (reason, metadata, violations) = details(status);
    SagaError {
        code: status.code() as i32,
        reason,
        message: status.message().to_owned(),
        metadata,
        violations,
    }
}

fn aborted_error() -> SagaError {
    SagaError {
        code: Code::Aborted as i32,
        reason: "SAGA_ABORTED".into(),
        message: "the saga was aborted by an operator".into(),
        metadata: Default::default(),
        violations: Vec::new(),
    }
}

mod tonic_types_ext {
    use std::collections::BTreeMap;

    use tonic_types::StatusExt;

    /// Reason, ErrorInfo metadata and BadRequest violations of a status.
    pub fn details(
        status: &tonic::Status,
    ) -> (String, BTreeMap<String, String>, Vec<(String, String)>) {
        let d = status.get_error_details();
        let (reason, metadata) = d.error_info().map_or_else(
            || (String::new(), BTreeMap::new()),
            |i| (i.reason.clone(), i.metadata.clone().into_iter().collect()),
        );
        let violations = d
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| (v.field.clone(), v.description.clone()))
                    .collect()
            })
            .unwrap_or_default();
        (reason, metadata, violations)
    }
}
