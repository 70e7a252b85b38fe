//! The mesh on the power-cut filesystem ([`Rig`]): the services as
//! `microshop serve` processes with their data directories on it, the
//! calls that run sagas, every outcome a client was told, the cut, and the
//! checks after one (the invariants, and every outcome told still the
//! answer).

use std::time::Duration;

use microshop::{
    invariants::{self, Universe, all_sagas},
    mesh::MeshClients,
};
use microshop_proto::orchestrator::v1 as orch;
use microshop_runtime::{Reason, errors::reason_of};
use tokio::time::{Instant, sleep};
use tonic::{Code, Status};

use crate::{
    cluster::{Cluster, Svc, process::POLL, shop::*},
    fs::PowerCutFs,
};

/// How long a failpoint may take to be reached.
pub const FAILPOINT_WITHIN: Duration = Duration::from_secs(30);

/// A call that runs a saga.
#[derive(Clone, Debug)]
pub enum Call {
    Place(orch::PlaceOrderRequest),
    Confirm { order_id: String },
    Cancel { order_id: String },
}

/// An answer a client was given: what must survive a cut.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done {
        saga_id: String,
        state: i32,
        order_id: String,
    },
    Refused {
        code: Code,
        reason: Option<Reason>,
    },
}

impl Call {
    pub fn key(&self) -> String {
        match self {
            Self::Place(r) => r.idempotency_key.clone(),
            Self::Confirm { order_id } => format!("confirm:{order_id}"),
            Self::Cancel { order_id } => format!("cancel:{order_id}"),
        }
    }

    /// Sends it once (deadline 20 s).
    pub async fn send(self, c: MeshClients) -> Result<Outcome, Status> {
        let deadline = Duration::from_secs(20);
        let done = |saga_id: String, state: i32, order_id: String| Outcome::Done {
            saga_id,
            state,
            order_id,
        };
        match self {
            Self::Place(r) => c
                .checkout
                .clone()
                .place_order(with_deadline(r, deadline))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    done(r.saga_id, r.state, r.order_id)
                }),
            Self::Confirm { order_id } => c
                .checkout
                .clone()
                .confirm_payment(with_deadline(
                    orch::ConfirmPaymentRequest {
                        order_id: order_id.clone(),
                        payment_ref: "power-cut-pay".into(),
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    done(r.saga_id, r.state, order_id)
                }),
            Self::Cancel { order_id } => c
                .checkout
                .clone()
                .cancel_order(with_deadline(
                    orch::CancelOrderRequest {
                        order_id: order_id.clone(),
                        reason: "power-cut test".into(),
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    done(r.saga_id, r.state, order_id)
                }),
        }
    }

    /// Its outcome as the client was told it, or `None` when the answer
    /// tells no outcome (a lost connection, an unavailable dependency).
    pub async fn told(self, c: MeshClients) -> Option<Outcome> {
        outcome_of(self.send(c).await)
    }
}

pub fn outcome_of(result: Result<Outcome, Status>) -> Option<Outcome> {
    match result {
        Ok(outcome) => Some(outcome),
        Err(s) => matches!(
            s.code(),
            Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound | Code::AlreadyExists
        )
        .then(|| Outcome::Refused {
            code: s.code(),
            reason: reason_of(&s),
        }),
    }
}

/// An outcome a client was told, and when.
#[derive(Clone, Debug)]
pub struct Told {
    pub call: Call,
    pub outcome: Outcome,
    pub when: String,
}

/// The mesh on a power-cut filesystem, with what its clients were told
/// and what the checks found. Fields drop in order: the processes die
/// before the filesystem is unmounted.
pub struct Rig {
    pub cluster: Cluster,
    pub pfs: PowerCutFs,
    _mnt: tempfile::TempDir,
    pub u: Universe,
    pub told: Vec<Told>,
    pub cuts: usize,
    pub checks: usize,
    pub violations: Vec<String>,
}

impl Rig {
    /// The mesh on a fresh power-cut filesystem. With `created_long_ago`
    /// the stores' creation is made durable before anything is asked of
    /// them, as a disk would have after any sync since (the creation's own
    /// durability is [`fresh_data_directories_survive_a_power_cut`]'s).
    pub async fn start(created_long_ago: bool) -> Self {
        let mnt = tempfile::tempdir().expect("mount point");
        let pfs = PowerCutFs::mount(mnt.path()).expect("mount the power-cut filesystem");
        let cluster = Cluster::builder()
            .orchestrator(MATRIX_ENGINE)
            .data_root(mnt.path())
            .start()
            .await;
        if created_long_ago {
            pfs.sync_all().expect("sync the new stores");
        }
        Self {
            cluster,
            pfs,
            _mnt: mnt,
            u: Universe::default(),
            told: Vec::new(),
            cuts: 0,
            checks: 0,
            violations: Vec::new(),
        }
    }

    pub fn c(&self) -> MeshClients {
        self.cluster.clients()
    }

    pub fn violation(&mut self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.push(what);
    }

    /// Sends `call`; records its outcome if it told one.
    pub async fn call(&mut self, call: Call, when: &str) -> Option<Outcome> {
        let outcome = call.clone().told(self.c()).await;
        if let Some(outcome) = &outcome {
            self.told.push(Told {
                call,
                outcome: outcome.clone(),
                when: when.to_owned(),
            });
        }
        outcome
    }

    /// The power cut: every process SIGKILLed, then everything not durable
    /// on the filesystem dropped.
    pub fn cut(&mut self, what: &str) {
        for svc in self.cluster.running() {
            self.cluster.kill(svc);
        }
        let dropped = self.pfs.cut().expect("power cut");
        self.cuts += 1;
        eprintln!(
            "cut {} ({what}): {} files and {} directories rolled back",
            self.cuts, dropped.files_rolled_back, dropped.dirs_rolled_back
        );
    }

    pub async fn start_participants(&mut self) {
        for svc in [Svc::Inventory, Svc::Loyalty, Svc::Order] {
            self.cluster.start_svc(svc, &[]).await;
        }
    }

    /// The invariants hold and every outcome told so far is still the
    /// answer, by GetSaga and by a retry with the same key.
    pub async fn check(&mut self, when: &str) {
        let c = self.c();
        self.checks += 1;
        if let Err(v) = invariants::check(&c, &self.u).await {
            self.violation(format!("after {when}: invariant: {v}"));
        }
        let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
        let told = self.told.clone();
        for t in told {
            let key = t.call.key();
            let again = t.call.clone().send(c.clone()).await;
            let again = match again {
                Ok(o) => Ok(o),
                Err(s) => outcome_of(Err(s.clone())).ok_or(s),
            };
            if again.as_ref().ok() != Some(&t.outcome) {
                self.violation(format!(
                    "after {when}: {key} was told {:?} ({}), a retry answers {again:?}",
                    t.outcome, t.when
                ));
            }
            let state = match &t.outcome {
                Outcome::Done { saga_id, .. } => c
                    .admin
                    .clone()
                    .get_saga(orch::GetSagaRequest {
                        saga_id: saga_id.clone(),
                    })
                    .await
                    .map(|r| r.into_inner().saga.map(|s| s.state))
                    .map_err(|s| s.code()),
                Outcome::Refused { .. } => Ok(sagas
                    .iter()
                    .find(|s| s.idempotency_key == key)
                    .map(|s| s.state)),
            };
            let want = match &t.outcome {
                Outcome::Done { state, .. } => Some(*state),
                // A refusal with a saga: the saga ended compensated.
                Outcome::Refused { .. } => match state {
                    Ok(None) => None,
                    _ => Some(orch::SagaState::Compensated as i32),
                },
            };
            if state != Ok(want) {
                self.violation(format!(
                    "after {when}: {key} was told {:?} ({}), GetSaga shows {state:?}",
                    t.outcome, t.when
                ));
            }
        }
    }

    /// Waits until no saga is running or compensating.
    pub async fn settle(&self, when: &str) {
        let c = self.c();
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
            let open: Vec<&orch::Saga> = sagas
                .iter()
                .filter(|s| {
                    matches!(
                        orch::SagaState::try_from(s.state),
                        Ok(orch::SagaState::Running | orch::SagaState::Compensating)
                    )
                })
                .collect();
            if open.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {when}: sagas still open: {:?}",
                open.iter().map(|s| describe(s)).collect::<Vec<_>>()
            );
            sleep(POLL).await;
        }
    }
}
