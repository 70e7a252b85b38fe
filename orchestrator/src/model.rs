//! The saga log's records: what a saga is, what each step did, and why it
//! ended as it did. Kept free of wire types; `conversions` maps them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The kind of saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaType {
    /// quote, reserve-stock, deduct-points, create-order.
    PlaceOrder,
    /// load-order, mark-paid, commit-stock, earn-points.
    ConfirmPayment,
    /// load-order, cancel-order, release-stock, refund-points.
    CancelOrder,
}

impl SagaType {
    /// A stable small number for stored fields.
    pub fn index(self) -> u8 {
        match self {
            Self::PlaceOrder => 1,
            Self::ConfirmPayment => 2,
            Self::CancelOrder => 3,
        }
    }

    /// Its name in metrics and traces.
    pub fn name(self) -> &'static str {
        match self {
            Self::PlaceOrder => "place-order",
            Self::ConfirmPayment => "confirm-payment",
            Self::CancelOrder => "cancel-order",
        }
    }
}

/// The state of a saga (`docs/architecture.md`, "Saga states").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SagaState {
    /// Running forward.
    Running,
    /// Every step succeeded.
    Completed,
    /// Running compensations backward.
    Compensating,
    /// Every attempted step compensated.
    Compensated,
    /// The dead letter: automation cannot finish it (a compensation
    /// refused for a non-transient reason, or an irreversible step done
    /// before a rejection); an operator must retry or abort. A saga that
    /// waits for an unreachable participant stays Running or Compensating
    /// with [`SagaRecord::waiting`] set instead.
    Failed,
}

impl SagaState {
    /// Whether the saga has ended (FAILED counts: it waits for an operator).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }

    /// A stable small number for index keys.
    pub fn index(self) -> u8 {
        match self {
            Self::Running => 1,
            Self::Completed => 2,
            Self::Compensating => 3,
            Self::Compensated => 4,
            Self::Failed => 5,
        }
    }

    /// The state of an [`SagaState::index`].
    pub fn from_index(index: u8) -> Option<Self> {
        [
            Self::Running,
            Self::Completed,
            Self::Compensating,
            Self::Compensated,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.index() == index)
    }
}

/// Where a step's action or compensation is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not started.
    #[default]
    Pending,
    /// Intent recorded, result not yet.
    Running,
    /// Done.
    Succeeded,
    /// Rejected, or out of retries.
    Failed,
    /// Not needed.
    Skipped,
    /// Out of its retry budget against an unreachable participant: run
    /// again once the participant is back (the saga's `waiting` says for
    /// whom). Its last attempt may or may not have been applied.
    Waiting,
}

/// One run of an RPC (an action or a compensation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Operation name.
    pub name: String,
    /// Status.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Last error.
    pub last_error: String,
    /// First attempt start.
    pub started_at_ms: Option<i64>,
    /// End.
    pub finished_at_ms: Option<i64>,
}

impl RunRecord {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }
}

/// A step: its action and, once needed, its compensation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The action.
    pub action: RunRecord,
    /// The compensation, once started.
    pub compensation: Option<RunRecord>,
}

impl StepRecord {
    /// A pending step.
    pub fn new(name: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            action: RunRecord::new(name),
            compensation: None,
        }
    }
}

/// One state transition, or an action on the saga (the audit trail).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// State entered (or kept).
    pub state: SagaState,
    /// When.
    pub at_ms: i64,
    /// Why.
    pub note: String,
    /// Who: an operator's token subject, [`AUTOMATIC`] for the
    /// orchestrator's own decisions, empty for the saga's own steps (and in
    /// records written before actors were kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
}

/// The actor of what the orchestrator decides by itself: a re-drive once a
/// participant is back, a probe, the end of a checkout hold.
pub const AUTOMATIC: &str = "automatic";

/// Why a saga is not being driven although it has not ended: a step or
/// compensation ran out of its retry budget against unreachable
/// participants. It is re-driven once health reports them back, or at
/// `next_attempt_ms` at the latest (a capped backoff), never in a hot loop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The participants' service names.
    pub participants: Vec<String>,
    /// When it started waiting.
    pub since_ms: i64,
    /// When it is tried again at the latest.
    pub next_attempt_ms: i64,
    /// Whether a participant it waits for is misconfigured: its URL
    /// answers but does not serve it (UNIMPLEMENTED, or health NOT_FOUND).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub misconfigured: bool,
}

/// A business error a saga ended with, kept to answer retries identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaError {
    /// gRPC code number.
    pub code: i32,
    /// Contract reason.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// ErrorInfo metadata.
    pub metadata: BTreeMap<String, String>,
    /// BadRequest field violations.
    pub violations: Vec<(String, String)>,
}

/// A cart line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    /// SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

/// A shipping address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Recipient.
    pub name: String,
    /// Address.
    pub address: String,
    /// Phone.
    pub phone: String,
}

/// A line priced by the catalog (from the reservation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    /// SKU.
    pub sku: String,
    /// Catalog name.
    pub name: String,
    /// Units.
    pub quantity: i64,
    /// Catalog unit price.
    pub unit_price: i64,
}

/// What started the saga; compared on idempotent retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaInput {
    /// PlaceOrder.
    Place {
        /// Customer.
        customer_id: String,
        /// Cart.
        items: Vec<CartLine>,
        /// Coupon, empty for none.
        coupon_code: String,
        /// Points to redeem.
        points_to_redeem: i64,
        /// Shipping.
        shipping: Address,
    },
    /// ConfirmPayment.
    Confirm {
        /// Order.
        order_id: String,
        /// Payment reference.
        payment_ref: String,
    },
    /// CancelOrder (or payment expiry).
    Cancel {
        /// Order.
        order_id: String,
        /// Why.
        reason: String,
        /// Only if still unpaid (payment expiry).
        only_if_unpaid: bool,
    },
}

/// What earlier steps learned, for later steps and for the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaOutputs {
    /// Lines priced by the reservation.
    pub lines: Vec<PricedLine>,
    /// The order created or acted on.
    pub order_id: Option<String>,
    /// The checkout saga of the order (confirm and cancel sagas).
    pub order_saga_id: Option<String>,
    /// The order's customer (confirm and cancel sagas).
    pub order_customer_id: Option<String>,
    /// The order's total (for earning points).
    pub order_total: i64,
    /// The last order snapshot a step returned (hex of its protobuf), so
    /// answers and idempotent replays need no extra call.
    pub order_snapshot: Option<String>,
}

/// A saga as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// Id.
    pub saga_id: String,
    /// Kind.
    pub saga_type: SagaType,
    /// State.
    pub state: SagaState,
    /// The idempotency key (derived for confirm and cancel sagas).
    pub idempotency_key: String,
    /// What started it.
    pub input: SagaInput,
    /// Steps in order.
    pub steps: Vec<StepRecord>,
    /// Outputs of steps so far.
    pub outputs: SagaOutputs,
    /// Transitions, oldest first.
    pub history: Vec<Transition>,
    /// The business error that made it compensate.
    pub error: Option<SagaError>,
    /// Why it is FAILED.
    pub failure_reason: String,
    /// The state it failed from (to resume on RetrySaga).
    pub failed_from: Option<SagaState>,
    /// Creation time.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
    /// Creation order (for listing newest first).
    pub seq: u64,
    /// The lease epoch this copy was read or claimed under: a save is
    /// refused once another orchestrator has claimed the saga since
    /// (fencing). Kept by the store beside the record, not inside it.
    #[serde(skip)]
    pub lease_epoch: u64,
    /// The W3C `traceparent` of the request that started the saga, so steps
    /// driven later (by recovery, after a restart) join the same trace.
    /// Absent when traces were not exported, and in records written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// Set while the saga waits for unreachable participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// How many times it has had to wait (sets the probe backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waits: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SagaRecord {
    /// The order a payment or cancellation saga acts on (none for
    /// checkout): such sagas of one order take turns.
    pub fn acted_order(&self) -> Option<&str> {
        match &self.input {
            SagaInput::Confirm { order_id, .. } | SagaInput::Cancel { order_id, .. } => {
                Some(order_id)
            }
            SagaInput::Place { .. } => None,
        }
    }

    /// Moves to `state`, appending to the history.
    pub fn transition(&mut self, state: SagaState, note: impl Into<String>) {
        self.transition_by(state, note, "");
    }

    /// Moves to `state` (or stays), appending `actor`'s action to the
    /// history. An entry repeating the last one (same state, note and
    /// actor: a probe of a participant still down) only moves its time, so
    /// a long outage does not grow the record.
    pub fn transition_by(&mut self, state: SagaState, note: impl Into<String>, actor: &str) {
        let at_ms = now_ms();
        let note = note.into();
        self.state = state;
        self.updated_at_ms = at_ms;
        if let Some(last) = self.history.last_mut()
            && last.state == state
            && last.note == note
            && last.actor == actor
        {
            last.at_ms = at_ms;
            return;
        }
        self.history.push(Transition {
            state,
            at_ms,
            note,
            actor: actor.to_owned(),
        });
    }

    /// The order, whatever the kind: acted on, or created (once it is).
    pub fn order_id(&self) -> Option<&str> {
        self.acted_order().or(self.outputs.order_id.as_deref())
    }

    /// The space its idempotency key lives in: a checkout's key is its
    /// customer's (two customers never collide on a key); payment and
    /// cancellation sagas are keyed by order whoever calls, in the empty
    /// scope.
    pub fn key_scope(&self) -> &str {
        match &self.input {
            SagaInput::Place { customer_id, .. } => customer_id,
            SagaInput::Confirm { .. } | SagaInput::Cancel { .. } => "",
        }
    }

    /// The customer, whatever the kind.
    pub fn customer_id(&self) -> &str {
        match &self.input {
            SagaInput::Place { customer_id, .. } => customer_id,
            _ => self.outputs.order_customer_id.as_deref().unwrap_or(""),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small saga record for unit tests.
    pub(crate) fn record(trace_parent: Option<String>) -> SagaRecord {
        SagaRecord {
            saga_id: "s-1".into(),
            saga_type: SagaType::PlaceOrder,
            state: SagaState::Running,
            idempotency_key: "k-1".into(),
            input: SagaInput::Confirm {
                order_id: "o-1".into(),
                payment_ref: "p-1".into(),
            },
            steps: vec![StepRecord::new("quote", "price")],
            outputs: SagaOutputs::default(),
            history: Vec::new(),
            error: None,
            failure_reason: String::new(),
            failed_from: None,
            created_at_ms: 1,
            updated_at_ms: 2,
            seq: 3,
            lease_epoch: 0,
            trace_parent,
            waiting: None,
            waits: 0,
        }
    }

    #[test]
    fn records_written_before_trace_context_still_load() {
        let json = serde_json::to_string(&record(None)).expect("encode");
        assert!(!json.contains("trace_parent"), "absent, not null: {json}");
        let back: SagaRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, record(None));
    }

    #[test]
    fn trace_context_round_trips() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        let json = serde_json::to_string(&record(Some(tp.clone()))).expect("encode");
        let back: SagaRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.trace_parent, Some(tp));
    }

    #[test]
    fn state_indexes_round_trip() {
        for state in [
            SagaState::Running,
            SagaState::Completed,
            SagaState::Compensating,
            SagaState::Compensated,
            SagaState::Failed,
        ] {
            assert_eq!(SagaState::from_index(state.index()), Some(state));
        }
        assert_eq!(SagaState::from_index(0), None);
        assert_eq!(SagaState::from_index(b'{'), None);
    }
}
