//! Running one claimed saga: forward step by step, backward through
//! compensations when a step is rejected, writing the log before and after
//! every participant call.
//!
//! What happens between two calls without a call in between shares one
//! write: a step's result, the steps skipped after it and the next call's
//! intent (or the saga's end) are saved together, and a new saga's record
//! already holds its first step's intent. Every call still has its intent
//! durable before it is sent and its result durable before the next one
//! is; the write made ahead is remembered as an [`Ahead`] so the next call
//! does not record it again.
//!
//! A step or compensation that runs out of its retry budget against an
//! unreachable participant does not fail the saga: it is marked
//! [`StepStatus::Waiting`] and the saga waits (see `waiting.rs`). While
//! compensating, the other compensations go on meanwhile (they are
//! independent effects), so a checkout's stock goes back on sale even while
//! loyalty-svc is down.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use microshop_runtime::metrics::metrics;
use microshop_storage::{StorageError, embedded::Sync};
use tokio::time::{Instant, sleep};
use tonic::Code;
use tracing::Instrument;

use super::{AbortFlag, Engine, Fresh, NO_ABORT, Resume, step_ended, step_span};
use crate::{
    failpoint::Failpoint,
    log::{PaymentDeadline, SagaLog},
    model::{
        AUTOMATIC, RunRecord, SagaError, SagaInput, SagaRecord, SagaState, SagaType, StepStatus,
        now_ms,
    },
    participants::{CallError, Peer},
    steps,
};

/// A call whose intent was saved ahead, in the write before it (the
/// previous call's result or the saga's creation): its next attempt is
/// already counted and durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ahead {
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
    pub(super) fn mark(record: &mut SagaRecord, index: usize, compensation: bool) -> Self {
        let run = if compensation {
            compensation_run(record, index)
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
    pub(super) fn first_of_created(record: &SagaRecord) -> Self {
        Self {
            index: 0,
            compensation: false,
            attempts: record.steps.first().map_or(0, |s| s.action.attempts),
        }
    }

    /// Whether `record` (as stored now) still holds this intent unacted on.
    pub(super) fn still_in(self, record: &SagaRecord) -> bool {
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

/// The compensation run of step `index`, created (pending) if missing.
fn compensation_run(record: &mut SagaRecord, index: usize) -> &mut RunRecord {
    let name = steps::definition(record.saga_type)[index]
        .compensation
        .unwrap_or_default();
    record.steps[index]
        .compensation
        .get_or_insert_with(|| RunRecord {
            name: name.to_owned(),
            ..Default::default()
        })
}

/// How a step or compensation ended.
enum Flow {
    /// Go on; the next call's intent may have been saved ahead.
    Next(Option<Ahead>),
    /// Out of budget against an unreachable participant: marked waiting.
    Waiting,
}

/// How durable a save of `record` must be (the durability rule,
/// `docs/architecture.md`, "Durability"). A client hears an outcome only once it survives a
/// power cut: COMPENSATED and FAILED ends, and a saga that waits (whose
/// recorded error a retry is answered with), are fsync'd; every other save
/// (intents, results, a COMPLETED end) is buffered, because recovery
/// reaches the same outcome by replaying steps whose results the
/// participants hold durably (their barrier and business records): the
/// checkout's quote, whose answer is the only one no participant keeps, is
/// not asked again on a resume (see [`skip_unrecorded_quote`]).
fn sync_of(record: &SagaRecord) -> Sync {
    match record.state {
        SagaState::Compensated | SagaState::Failed => Sync::Durable,
        _ if record.waiting.is_some() => Sync::Durable,
        _ => Sync::Buffered,
    }
}

/// On resuming a checkout whose quote was asked but whose answer was not
/// recorded (a crash or power cut in between): the quote is not asked
/// again, as a later answer could differ from the lost one (the coupon's
/// last use may be this very order's); the saga goes on to reserve-stock,
/// and create-order repeats every check the quote makes.
fn skip_unrecorded_quote(record: &mut SagaRecord) {
    let defs = steps::definition(record.saga_type);
    for (def, step) in defs.iter().zip(&mut record.steps) {
        if def.skip_when_resumed && step.action.status == StepStatus::Running {
            step.action.status = StepStatus::Skipped;
            step.action.last_error =
                "not asked again on resume: its answer was not recorded, and a later step \
                 repeats its checks"
                    .into();
            step.action.finished_at_ms = Some(now_ms());
        }
    }
}

impl<L: SagaLog> Engine<L> {
    pub(super) async fn save(
        &self,
        record: &mut SagaRecord,
        deadline: PaymentDeadline,
    ) -> Result<(), StorageError> {
        record.updated_at_ms = now_ms();
        self.log.save(record, deadline, sync_of(record)).await
    }

    /// Drives `record` until it ends or waits. `resume` names who re-drives
    /// a waiting saga; without it a waiting saga is driven only once its
    /// wait is over (a participant back, the probe due, the hold ended).
    pub(super) async fn run(
        &self,
        record: SagaRecord,
        abort: &AbortFlag,
        fresh: Option<Fresh>,
        resume: Option<Resume>,
    ) -> Result<SagaRecord, StorageError> {
        let saga_id = record.saga_id.clone();
        let inherited = fresh.is_none() && !self.wrote_last_record(&saga_id);
        let ran = self
            .run_record(record, abort, fresh, resume, inherited)
            .await;
        self.note_last_record(&saga_id, ran.as_ref().ok());
        ran
    }

    async fn run_record(
        &self,
        mut record: SagaRecord,
        abort: &AbortFlag,
        fresh: Option<Fresh>,
        resume: Option<Resume>,
        inherited: bool,
    ) -> Result<SagaRecord, StorageError> {
        let (mut ahead, mut created) = match fresh {
            Some(Fresh { ahead, synced }) => (Some(ahead), Some(synced)),
            None => {
                if record.state == SagaState::Running {
                    skip_unrecorded_quote(&mut record);
                }
                (None, None)
            }
        };
        if record.waiting.is_some() {
            let resume = match resume {
                Some(resume) => resume,
                None if self.wait_over(&record) => Resume::automatic(self.why_resumed(&record)),
                None => {
                    self.still_waiting(&record);
                    return Ok(record);
                }
            };
            // Not saved here: the next write (an intent, or the end of the
            // compensation) carries it.
            self.resume_waiting(&mut record, &resume);
        }
        loop {
            if record.waiting.is_some() {
                return Ok(record);
            }
            let saved_ahead = ahead.take();
            match record.state {
                SagaState::Running => {
                    if let Some((actor, note)) = abort.requested() {
                        ahead = self
                            .start_compensating(
                                &mut record,
                                aborted_error(),
                                &note,
                                &actor,
                                inherited,
                            )
                            .await?;
                        continue;
                    }
                    if self.hold_expired(&record) {
                        let (error, note) = self.checkout_expired();
                        ahead = self
                            .start_compensating(&mut record, error, &note, AUTOMATIC, inherited)
                            .await?;
                        continue;
                    }
                    match next_forward(&record) {
                        Some(i) => {
                            // The creation is durable before the first
                            // effect (a power cut must not leave an effect
                            // that no saga owns).
                            if steps::definition(record.saga_type)[i].effectful
                                && let Some(synced) = created.take()
                            {
                                synced.wait().await?;
                            }
                            let span = step_span(&record, i, false);
                            let written = Ahead::is(saved_ahead, i, false);
                            match self
                                .forward_step(&mut record, i, abort, written, inherited)
                                .instrument(span)
                                .await?
                            {
                                Flow::Next(next) => ahead = next,
                                Flow::Waiting => {
                                    let peers = steps::definition(record.saga_type)[i].peers;
                                    self.park(&mut record, peers).await?;
                                }
                            }
                        }
                        // Every step done but the end not saved (a
                        // record from before folding): save the end now.
                        None => {
                            self.save_folding(&mut record, &NO_ABORT).await?;
                        }
                    }
                }
                SagaState::Compensating => match self.next_compensation(&record) {
                    Some(i) => {
                        let span = step_span(&record, i, true);
                        let written = Ahead::is(saved_ahead, i, true);
                        if let Flow::Next(next) = self
                            .compensation_step(&mut record, i, written)
                            .instrument(span)
                            .await?
                        {
                            ahead = next;
                        }
                    }
                    None => match waiting_compensation_peers(&record) {
                        peers if !peers.is_empty() => self.park(&mut record, &peers).await?,
                        _ => {
                            self.save_folding(&mut record, &NO_ABORT).await?;
                        }
                    },
                },
                SagaState::Completed | SagaState::Compensated | SagaState::Failed => {
                    // A saga that ended before its first effect still
                    // holds its key durably.
                    if let Some(synced) = created.take() {
                        synced.wait().await?;
                    }
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
    pub(super) async fn save_folding(
        &self,
        record: &mut SagaRecord,
        abort: &AbortFlag,
    ) -> Result<Option<Ahead>, StorageError> {
        let mut deadline = PaymentDeadline::Keep;
        let mut ahead = None;
        match record.state {
            SagaState::Running if !abort.is_set() && !self.hold_expired(record) => loop {
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
            SagaState::Compensating => {
                match self.next_compensation(record) {
                    Some(i) => ahead = Some(Ahead::mark(record, i, true)),
                    // Some wait for their participant: the run loop parks
                    // the saga.
                    None if !waiting_compensation_peers(record).is_empty() => {}
                    None => deadline = self.end_compensation(record),
                }
            }
            _ => {}
        }
        self.save(record, deadline).await?;
        count_end(record);
        Ok(ahead)
    }

    /// Turns `record` to compensating. `inherited`: the record came from
    /// the log without this process having written it last, so it may be
    /// older than what an earlier run did (intermediate records are not
    /// fsync'd: a power cut takes back the intents of calls that were
    /// made); every effectful step not recorded as attempted is then
    /// compensated too, which the participants' barrier answers as a null
    /// compensation where the call never came.
    pub(super) async fn start_compensating(
        &self,
        record: &mut SagaRecord,
        error: SagaError,
        note: &str,
        actor: &str,
        inherited: bool,
    ) -> Result<Option<Ahead>, StorageError> {
        record.error.get_or_insert(error);
        let maybe_called = if inherited {
            mark_maybe_called(record)
        } else {
            Vec::new()
        };
        let note = if maybe_called.is_empty() {
            note.to_owned()
        } else {
            format!(
                "{note}; also compensating {}: an earlier run may have called it before a \
                 restart, with its record lost",
                maybe_called.join(", ")
            )
        };
        record.transition_by(SagaState::Compensating, &note, actor);
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
        abort: &AbortFlag,
        mut written: bool,
        inherited: bool,
    ) -> Result<Flow, StorageError> {
        let def = steps::definition(record.saga_type)[index];
        if steps::skipped(record, index) {
            skip(record, index);
            return self.save_folding(record, abort).await.map(Flow::Next);
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
                    return Ok(Flow::Next(ahead));
                }
                Err(CallError::Rejected(status)) => {
                    let step = &mut record.steps[index].action;
                    step.status = StepStatus::Failed;
                    step.last_error = describe(&status);
                    step.finished_at_ms = Some(now_ms());
                    let attempts = step.attempts;
                    let note = format!("{} rejected: {}", def.name, status.message());
                    // Rejected now, so rejected (or never called) by any
                    // earlier run too: no later step was called.
                    let ahead = self
                        .start_compensating(record, saga_error(&status), &note, "", false)
                        .await?;
                    step_ended(record, def.name, started, "rejected", attempts);
                    Failpoint::hit(fp, "result", def.name).await;
                    return Ok(Flow::Next(ahead));
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
                    // An abort or the end of the checkout hold stops the
                    // retries: what this step may have applied is
                    // compensated with the rest.
                    let stop = match abort.requested() {
                        Some((actor, note)) => Some((aborted_error(), note, actor, "aborted")),
                        None if self.hold_expired(record) => {
                            let (error, note) = self.checkout_expired();
                            Some((error, note, AUTOMATIC.to_owned(), "expired"))
                        }
                        None => None,
                    };
                    if let Some((error, note, actor, outcome)) = stop {
                        record.steps[index].action.status = StepStatus::Failed;
                        let attempts = record.steps[index].action.attempts;
                        let ahead = self
                            .start_compensating(record, error, &note, &actor, inherited)
                            .await?;
                        step_ended(record, def.name, started, outcome, attempts);
                        return Ok(Flow::Next(ahead));
                    }
                    match delays.next() {
                        Some(delay) if started.elapsed() + delay < self.config.step_budget => {
                            metrics().step_retried(record.saga_type.name(), def.name);
                            sleep(delay).await;
                        }
                        _ => {
                            let step = &mut record.steps[index].action;
                            step.status = StepStatus::Waiting;
                            let attempts = step.attempts;
                            step_ended(record, def.name, started, "waiting", attempts);
                            tracing::warn!(
                                saga_id = %record.saga_id,
                                step = def.name,
                                attempts,
                                error = %status.message(),
                                "step out of its retry budget: the saga waits for its participant"
                            );
                            return Ok(Flow::Waiting);
                        }
                    }
                }
            }
        }
    }

    /// Runs the compensation of step `index` until it succeeds, is refused
    /// (the saga is FAILED) or runs out of budget (it waits); `written`
    /// when its intent was saved ahead.
    async fn compensation_step(
        &self,
        record: &mut SagaRecord,
        index: usize,
        mut written: bool,
    ) -> Result<Flow, StorageError> {
        let def = steps::definition(record.saga_type)[index];
        let Some(name) = def.compensation else {
            return Ok(Flow::Next(None));
        };
        let mut delays = self.backoff(self.config.compensation_attempts);
        let fp = self.config.failpoint.as_ref();
        let started = Instant::now();
        let kind = record.saga_type.name();
        metrics().compensation_started(kind, name);
        loop {
            if !std::mem::take(&mut written) {
                Ahead::mark(record, index, true);
                self.save(record, PaymentDeadline::Keep).await?;
            }
            Failpoint::hit(fp, "intent", name).await;
            let result = steps::compensate(&self.participants, record, name).await;
            Failpoint::hit(fp, "rpc", name).await;
            let comp = compensation_run(record, index);
            match result {
                Ok(()) => {
                    comp.status = StepStatus::Succeeded;
                    comp.finished_at_ms = Some(now_ms());
                    let attempts = comp.attempts;
                    let ahead = self.save_folding(record, &NO_ABORT).await?;
                    step_ended(record, name, started, "succeeded", attempts);
                    Failpoint::hit(fp, "result", name).await;
                    return Ok(Flow::Next(ahead));
                }
                Err(CallError::Transient(status)) => {
                    comp.last_error = describe(&status);
                    if let Some(delay) = delays.next() {
                        tracing::info!(
                            compensation = name,
                            attempt = comp.attempts,
                            code = ?status.code(),
                            error = %status.message(),
                            "transient failure"
                        );
                        metrics().step_retried(kind, name);
                        sleep(delay).await;
                        continue;
                    }
                    // Out of budget: this one waits for its participant,
                    // the others go on (saved with the next write).
                    comp.status = StepStatus::Waiting;
                    let attempts = comp.attempts;
                    tracing::warn!(
                        saga_id = %record.saga_id,
                        compensation = name,
                        attempts,
                        error = %status.message(),
                        "compensation out of its retry budget: it waits for its participant"
                    );
                    step_ended(record, name, started, "waiting", attempts);
                    return Ok(Flow::Waiting);
                }
                Err(CallError::Rejected(status)) => {
                    comp.last_error = describe(&status);
                    comp.status = StepStatus::Failed;
                    comp.finished_at_ms = Some(now_ms());
                    record.failure_reason = format!(
                        "compensation {name} was refused: {}; fix the cause, then RetrySaga",
                        status.message()
                    );
                    record.failed_from = Some(SagaState::Compensating);
                    let attempts = compensation_run(record, index).attempts;
                    record.transition(SagaState::Failed, record.failure_reason.clone());
                    self.save(record, PaymentDeadline::Keep).await?;
                    step_ended(record, name, started, "failed", attempts);
                    count_end(record);
                    tracing::error!(saga_id = %record.saga_id, compensation = name, "saga FAILED: compensation refused");
                    return Ok(Flow::Next(None));
                }
            }
        }
    }
}

/// Marks step `index` skipped (not yet saved).
fn skip(record: &mut SagaRecord, index: usize) {
    let step = &mut record.steps[index].action;
    step.status = StepStatus::Skipped;
    step.finished_at_ms = Some(now_ms());
}

/// Counts a saga that has just been saved in an end state.
pub(super) fn count_end(record: &SagaRecord) {
    let kind = record.saga_type.name();
    match record.state {
        SagaState::Completed => metrics().saga_completed(kind),
        SagaState::Compensated => metrics().saga_compensated(kind),
        SagaState::Failed => {
            metrics().saga_failed(kind);
            metrics().dead_letters_changed(1);
        }
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

/// Whether step `i` was attempted, has a compensation, and that
/// compensation has not succeeded.
/// Marks every effectful step of `record` that is not recorded as
/// attempted (nor skipped) as attempted, result unknown; returns their
/// names.
fn mark_maybe_called(record: &mut SagaRecord) -> Vec<&'static str> {
    let defs = steps::definition(record.saga_type);
    let mut marked = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        if def.effectful
            && def.compensation.is_some()
            && record.steps[i].action.attempts == 0
            && !steps::skipped(record, i)
        {
            Ahead::mark(record, i, false);
            marked.push(def.name);
        }
    }
    marked
}

fn needs_compensation(record: &SagaRecord, i: usize) -> bool {
    let s = &record.steps[i];
    steps::definition(record.saga_type)[i]
        .compensation
        .is_some()
        && s.action.attempts > 0
        && s.compensation
            .as_ref()
            .is_none_or(|c| c.status != StepStatus::Succeeded)
}

impl<L: SagaLog> Engine<L> {
    /// The next compensation to run: the last attempted step whose
    /// compensation is still to run (not done, not waiting for its
    /// participant), passing over those whose participant health reports
    /// down while another one can run: the compensations are independent
    /// effects, so a checkout's stock goes back on sale without waiting for
    /// an unreachable loyalty-svc's retry budget first.
    fn next_compensation(&self, record: &SagaRecord) -> Option<usize> {
        let defs = steps::definition(record.saga_type);
        let mut pending = (0..record.steps.len()).rev().filter(|&i| {
            needs_compensation(record, i)
                && record.steps[i]
                    .compensation
                    .as_ref()
                    .is_none_or(|c| c.status != StepStatus::Waiting)
        });
        let first = pending.next()?;
        let reachable = |i: usize| {
            defs[i]
                .compensation_peer
                .is_none_or(|p: Peer| !self.health.is_down(p))
        };
        if reachable(first) {
            return Some(first);
        }
        pending.find(|&i| reachable(i)).or(Some(first))
    }
}

/// The participants that compensations marked waiting wait for.
fn waiting_compensation_peers(record: &SagaRecord) -> Vec<crate::participants::Peer> {
    let defs = steps::definition(record.saga_type);
    let mut peers = Vec::new();
    for (def, step) in defs.iter().zip(&record.steps) {
        if step
            .compensation
            .as_ref()
            .is_some_and(|c| c.status == StepStatus::Waiting)
            && let Some(peer) = def.compensation_peer
            && !peers.contains(&peer)
        {
            peers.push(peer);
        }
    }
    peers
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
        code: Code::FailedPrecondition as i32,
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
