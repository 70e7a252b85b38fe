//! Sagas that wait for a participant, and the checkout hold.
//!
//! A step or compensation out of its retry budget against an unreachable
//! participant parks its saga: the saga stays RUNNING or COMPENSATING, its
//! record says whom it waits for and when it is tried again at the latest,
//! and no task drives it. It is re-driven by itself, never in a hot loop:
//! - as soon as the health watcher sees every participant it waits for come
//!   back ([`Engine::participant_back`]);
//! - else at `next_attempt_ms`, a backoff from `recovery_interval` doubling
//!   up to `probe_max` per wait of the same saga (a participant that health
//!   reports up while its calls still fail, e.g. a rejected service token);
//! - and a checkout waiting past its hold is compensated then.
//!
//! The checkout hold: a place-order saga not completed within
//! `checkout_hold` of its start is compensated with `CHECKOUT_EXPIRED`, so
//! its stock goes back on sale even while another participant is down; the
//! compensations against that participant wait for it.
//!
//! Which sagas wait is kept in memory ([`Engine::waiting`]) so recovery
//! passes skip them without reading the log; after a restart each is tried
//! once, then waits again if its participant is still away.

use std::{collections::HashMap, sync::Arc};

use microshop_runtime::{Reason, metrics::metrics};
use microshop_storage::StorageError;
use tonic::Code;

use super::{Engine, Resume};
use crate::{
    log::{PaymentDeadline, SagaLog},
    model::{AUTOMATIC, SagaError, SagaRecord, SagaState, SagaType, StepStatus, Waiting, now_ms},
    participants::Peer,
};

/// What recovery needs to know of a waiting saga without reading it.
#[derive(Clone, Debug)]
pub(super) struct WaitEntry {
    peers: Vec<Peer>,
    since_ms: i64,
    next_attempt_ms: i64,
    /// When its checkout hold ends (place-order sagas still running).
    hold_until_ms: Option<i64>,
}

/// The sagas of this process that wait, by id.
pub(super) type WaitMap = std::sync::Mutex<HashMap<String, WaitEntry>>;

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<L: SagaLog> Engine<L> {
    /// Whether `record` is a checkout whose hold has ended.
    pub(super) fn hold_expired(&self, record: &SagaRecord) -> bool {
        record.saga_type == SagaType::PlaceOrder
            && record.state == SagaState::Running
            && now_ms() >= self.hold_until(record)
    }

    fn hold_until(&self, record: &SagaRecord) -> i64 {
        record
            .created_at_ms
            .saturating_add(millis(self.config.checkout_hold))
    }

    /// The error and history note of a checkout whose hold ended.
    pub(super) fn checkout_expired(&self) -> (SagaError, String) {
        let secs = self.config.checkout_hold.as_secs();
        let error = SagaError {
            code: Code::FailedPrecondition as i32,
            reason: Reason::CheckoutExpired.as_str().to_owned(),
            message: format!(
                "the checkout could not be completed within its hold of {secs} s (a service it \
                 needs was unavailable); nothing was charged and its stock is back on sale; \
                 place the order again with a new idempotency key"
            ),
            metadata: Default::default(),
            violations: Vec::new(),
        };
        (
            error,
            format!("checkout hold of {secs} s ended before the saga completed"),
        )
    }

    /// Parks `record`, out of budget against `peers`: saves it waiting.
    pub(super) async fn park(
        &self,
        record: &mut SagaRecord,
        peers: &[Peer],
    ) -> Result<(), StorageError> {
        let now = now_ms();
        record.waits = record.waits.saturating_add(1);
        let delay = self.probe_delay(record.waits);
        let names: Vec<String> = peers.iter().map(|p| p.service_name().to_owned()).collect();
        let misconfigured = peers.iter().any(|p| self.health.is_misconfigured(*p))
            || record.steps.iter().any(|s| {
                [Some(&s.action), s.compensation.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        r.status == StepStatus::Waiting && r.last_error.starts_with("Unimplemented")
                    })
            });
        record.waiting = Some(Waiting {
            participants: names.clone(),
            since_ms: now,
            next_attempt_ms: now.saturating_add(millis(delay)),
            misconfigured,
        });
        let state = record.state;
        record.transition_by(
            state,
            format!(
                "waiting for {} (unreachable); resumes by itself once it is back",
                names.join(", ")
            ),
            AUTOMATIC,
        );
        self.save(record, PaymentDeadline::Keep).await?;
        if misconfigured {
            tracing::error!(
                saga_id = %record.saga_id,
                waiting_for = %names.join(", "),
                "saga waits: a participant URL reaches a server that does not serve that \
                 participant; fix the orchestrator's participant URLs"
            );
        } else {
            tracing::warn!(
                saga_id = %record.saga_id,
                waiting_for = %names.join(", "),
                retry_in_ms = millis(delay),
                "saga waits for unreachable participants"
            );
        }
        self.still_waiting(record);
        Ok(())
    }

    /// The probe backoff of a saga's `waits`-th wait.
    fn probe_delay(&self, waits: u32) -> std::time::Duration {
        let base = self
            .config
            .recovery_interval
            .max(std::time::Duration::from_millis(10));
        let factor = 1_u32 << waits.saturating_sub(1).min(16);
        base.saturating_mul(factor)
            .min(self.config.probe_max.max(base))
    }

    /// Remembers that `record` waits (for recovery passes to skip it).
    pub(super) fn still_waiting(&self, record: &SagaRecord) {
        let Some(w) = &record.waiting else {
            return;
        };
        let entry = WaitEntry {
            peers: w
                .participants
                .iter()
                .filter_map(|name| Peer::from_service_name(name))
                .collect(),
            since_ms: w.since_ms,
            next_attempt_ms: w.next_attempt_ms,
            hold_until_ms: (record.saga_type == SagaType::PlaceOrder
                && record.state == SagaState::Running)
                .then(|| self.hold_until(record)),
        };
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.insert(record.saga_id.clone(), entry);
        metrics().set_waiting(i64::try_from(waiting.len()).unwrap_or(i64::MAX));
    }

    /// Forgets that `saga_id` waits (it is being driven again).
    pub(super) fn forget_waiting(&self, saga_id: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.remove(saga_id).is_some() {
            metrics().set_waiting(i64::try_from(waiting.len()).unwrap_or(i64::MAX));
        }
    }

    fn entry_due(&self, e: &WaitEntry, now: i64) -> bool {
        now >= e.next_attempt_ms
            || e.hold_until_ms.is_some_and(|h| now >= h)
            || (!e.peers.is_empty()
                && e.peers
                    .iter()
                    .all(|p| self.health.back_since(*p, e.since_ms)))
    }

    /// Whether recovery should leave `saga_id` alone for now: it waits and
    /// nothing it waits for has changed.
    pub(super) fn waits_undisturbed(&self, saga_id: &str) -> bool {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting
            .get(saga_id)
            .is_some_and(|e| !self.entry_due(e, now_ms()))
    }

    /// Whether a waiting `record` should be driven now.
    pub(super) fn wait_over(&self, record: &SagaRecord) -> bool {
        let Some(w) = &record.waiting else {
            return true;
        };
        let now = now_ms();
        now >= w.next_attempt_ms
            || self.hold_expired(record)
            || (!w.participants.is_empty()
                && w.participants.iter().all(|name| {
                    Peer::from_service_name(name)
                        .is_none_or(|p| self.health.back_since(p, w.since_ms))
                }))
    }

    /// The history note of an automatic re-drive of `record`.
    pub(super) fn why_resumed(&self, record: &SagaRecord) -> String {
        let Some(w) = &record.waiting else {
            return "re-driven automatically".into();
        };
        if self.hold_expired(record) {
            "re-driven automatically: the checkout hold ended".into()
        } else if w.participants.iter().all(|name| {
            Peer::from_service_name(name).is_none_or(|p| self.health.back_since(p, w.since_ms))
        }) {
            format!(
                "re-driven automatically: {} back",
                w.participants.join(", ")
            )
        } else {
            "re-driven automatically: retrying after waiting".into()
        }
    }

    /// Takes `record` out of waiting (in memory): every waiting run is
    /// pending again, with a fresh budget, and the history says who did it.
    pub(super) fn resume_waiting(&self, record: &mut SagaRecord, resume: &Resume) {
        record.waiting = None;
        for step in &mut record.steps {
            if step.action.status == StepStatus::Waiting {
                step.action.status = StepStatus::Pending;
            }
            if let Some(c) = &mut step.compensation
                && c.status == StepStatus::Waiting
            {
                c.status = StepStatus::Pending;
            }
        }
        let state = record.state;
        record.transition_by(state, resume.note.clone(), &resume.actor);
        self.forget_waiting(&record.saga_id);
    }

    /// Called by the health watcher when `peer` comes back: re-drives the
    /// sagas of this process that waited for it (and for nothing else
    /// still down), at most `recovery_concurrency` at a time.
    pub fn participant_back(self: &Arc<Self>, peer: Peer) {
        let now = now_ms();
        let due: Vec<String> = {
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting
                .iter()
                .filter(|(_, e)| e.peers.contains(&peer) && self.entry_due(e, now))
                .map(|(id, _)| id.clone())
                .collect()
        };
        if due.is_empty() {
            return;
        }
        tracing::info!(
            participant = peer.service_name(),
            sagas = due.len(),
            "participant is back: re-driving the sagas waiting for it"
        );
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            for id in due {
                let note = format!("re-driven automatically: {} is back", peer.service_name());
                if engine
                    .drive_in_slot(&id, Some(Resume::automatic(note)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}
