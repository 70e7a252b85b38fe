//! The saga record as the embedded log stores it: compact protobuf (prost)
//! instead of JSON, and without what a saga's definition already says
//! (step names and descriptions, operation names), so a save writes a few
//! hundred bytes instead of 2–6 KB. Fields only ever get added, with new
//! tags, so older records keep loading.
//!
//! A stored record is `[state index][format][protobuf]`: the state byte
//! lets a save move the state index without decoding the record, the
//! format byte names this encoding (1).

use std::collections::BTreeMap;

use microshop_storage::StorageError;
use prost::Message;

use crate::{
    model::{
        Address, CartLine, PricedLine, RunRecord, SagaError, SagaInput, SagaOutputs, SagaRecord,
        SagaState, SagaType, StepRecord, StepStatus, Transition, Waiting,
    },
    steps,
};

/// The format byte of this encoding.
const FORMAT: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(string, tag = "1")]
    saga_id: String,
    #[prost(uint32, tag = "2")]
    saga_type: u32,
    #[prost(uint32, tag = "3")]
    state: u32,
    #[prost(string, tag = "4")]
    idempotency_key: String,
    #[prost(oneof = "Input", tags = "5, 6, 7")]
    input: Option<Input>,
    #[prost(message, repeated, tag = "8")]
    steps: Vec<Step>,
    #[prost(message, optional, tag = "9")]
    outputs: Option<Outputs>,
    #[prost(message, repeated, tag = "10")]
    history: Vec<Change>,
    #[prost(message, optional, tag = "11")]
    error: Option<Error>,
    #[prost(string, tag = "12")]
    failure_reason: String,
    #[prost(uint32, optional, tag = "13")]
    failed_from: Option<u32>,
    #[prost(int64, tag = "14")]
    created_at_ms: i64,
    #[prost(int64, tag = "15")]
    updated_at_ms: i64,
    #[prost(uint64, tag = "16")]
    seq: u64,
    #[prost(string, optional, tag = "17")]
    trace_parent: Option<String>,
    #[prost(message, optional, tag = "18")]
    waiting: Option<Wait>,
    #[prost(uint32, tag = "19")]
    waits: u32,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Input {
    #[prost(message, tag = "5")]
    Place(Place),
    #[prost(message, tag = "6")]
    Confirm(Confirm),
    #[prost(message, tag = "7")]
    Cancel(Cancel),
}

#[derive(Clone, PartialEq, Message)]
struct Place {
    #[prost(string, tag = "1")]
    customer_id: String,
    #[prost(message, repeated, tag = "2")]
    items: Vec<Item>,
    #[prost(string, tag = "3")]
    coupon_code: String,
    #[prost(int64, tag = "4")]
    points_to_redeem: i64,
    #[prost(string, tag = "5")]
    ship_name: String,
    #[prost(string, tag = "6")]
    ship_address: String,
    #[prost(string, tag = "7")]
    ship_phone: String,
}

#[derive(Clone, PartialEq, Message)]
struct Item {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(int64, tag = "2")]
    quantity: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Confirm {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(string, tag = "2")]
    payment_ref: String,
}

#[derive(Clone, PartialEq, Message)]
struct Cancel {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(string, tag = "2")]
    reason: String,
    #[prost(bool, tag = "3")]
    only_if_unpaid: bool,
}

/// A step: its definition's name and description are not stored.
#[derive(Clone, PartialEq, Message)]
struct Step {
    #[prost(message, optional, tag = "1")]
    action: Option<Run>,
    #[prost(message, optional, tag = "2")]
    compensation: Option<Run>,
}

/// A run: its operation's name is not stored.
#[derive(Clone, PartialEq, Message)]
struct Run {
    #[prost(uint32, tag = "1")]
    status: u32,
    #[prost(uint32, tag = "2")]
    attempts: u32,
    #[prost(string, tag = "3")]
    last_error: String,
    #[prost(int64, optional, tag = "4")]
    started_at_ms: Option<i64>,
    #[prost(int64, optional, tag = "5")]
    finished_at_ms: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct Outputs {
    #[prost(message, repeated, tag = "1")]
    lines: Vec<Line>,
    #[prost(string, optional, tag = "2")]
    order_id: Option<String>,
    #[prost(string, optional, tag = "3")]
    order_saga_id: Option<String>,
    #[prost(string, optional, tag = "4")]
    order_customer_id: Option<String>,
    #[prost(int64, tag = "5")]
    order_total: i64,
    /// The order snapshot's protobuf bytes (the in-memory record holds
    /// them hex-encoded).
    #[prost(bytes = "vec", optional, tag = "6")]
    order_snapshot: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(int64, tag = "3")]
    quantity: i64,
    #[prost(int64, tag = "4")]
    unit_price: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Change {
    #[prost(uint32, tag = "1")]
    state: u32,
    #[prost(int64, tag = "2")]
    at_ms: i64,
    #[prost(string, tag = "3")]
    note: String,
    #[prost(string, tag = "4")]
    actor: String,
}

#[derive(Clone, PartialEq, Message)]
struct Error {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    reason: String,
    #[prost(string, tag = "3")]
    message: String,
    #[prost(btree_map = "string, string", tag = "4")]
    metadata: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "5")]
    violations: Vec<Violation>,
}

#[derive(Clone, PartialEq, Message)]
struct Violation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    description: String,
}

#[derive(Clone, PartialEq, Message)]
struct Wait {
    #[prost(string, repeated, tag = "1")]
    participants: Vec<String>,
    #[prost(int64, tag = "2")]
    since_ms: i64,
    #[prost(int64, tag = "3")]
    next_attempt_ms: i64,
    #[prost(bool, tag = "4")]
    misconfigured: bool,
}

fn status_index(s: StepStatus) -> u32 {
    match s {
        StepStatus::Pending => 1,
        StepStatus::Running => 2,
        StepStatus::Succeeded => 3,
        StepStatus::Failed => 4,
        StepStatus::Skipped => 5,
        StepStatus::Waiting => 6,
    }
}

fn status_of(i: u32) -> Result<StepStatus, StorageError> {
    Ok(match i {
        1 => StepStatus::Pending,
        2 => StepStatus::Running,
        3 => StepStatus::Succeeded,
        4 => StepStatus::Failed,
        5 => StepStatus::Skipped,
        6 => StepStatus::Waiting,
        other => return Err(corrupt(&format!("step status {other}"))),
    })
}

fn state_of(i: u32) -> Result<SagaState, StorageError> {
    u8::try_from(i)
        .ok()
        .and_then(SagaState::from_index)
        .ok_or_else(|| corrupt(&format!("saga state {i}")))
}

fn type_of(i: u32) -> Result<SagaType, StorageError> {
    [
        SagaType::PlaceOrder,
        SagaType::ConfirmPayment,
        SagaType::CancelOrder,
    ]
    .into_iter()
    .find(|t| u32::from(t.index()) == i)
    .ok_or_else(|| corrupt(&format!("saga type {i}")))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("a stored saga has a bad {what}"))
}

fn run_of(r: &RunRecord) -> Run {
    let RunRecord {
        name: _, // from the definition
        status,
        attempts,
        last_error,
        started_at_ms,
        finished_at_ms,
    } = r;
    Run {
        status: status_index(*status),
        attempts: *attempts,
        last_error: last_error.clone(),
        started_at_ms: *started_at_ms,
        finished_at_ms: *finished_at_ms,
    }
}

fn run_from(r: Run, name: &str) -> Result<RunRecord, StorageError> {
    let Run {
        status,
        attempts,
        last_error,
        started_at_ms,
        finished_at_ms,
    } = r;
    Ok(RunRecord {
        name: name.to_owned(),
        status: status_of(status)?,
        attempts,
        last_error,
        started_at_ms,
        finished_at_ms,
    })
}

/// Encodes `record` as the embedded log stores it.
pub fn encode(record: &SagaRecord) -> Vec<u8> {
    let SagaRecord {
        saga_id,
        saga_type,
        state,
        idempotency_key,
        input,
        steps,
        outputs,
        history,
        error,
        failure_reason,
        failed_from,
        created_at_ms,
        updated_at_ms,
        seq,
        lease_epoch: _, // kept by stores that lease, beside the record
        trace_parent,
        waiting,
        waits,
    } = record;
    let input = match input {
        SagaInput::Place {
            customer_id,
            items,
            coupon_code,
            points_to_redeem,
            shipping,
        } => Input::Place(Place {
            customer_id: customer_id.clone(),
            items: items
                .iter()
                .map(|CartLine { sku, quantity }| Item {
                    sku: sku.clone(),
                    quantity: *quantity,
                })
                .collect(),
            coupon_code: coupon_code.clone(),
            points_to_redeem: *points_to_redeem,
            ship_name: shipping.name.clone(),
            ship_address: shipping.address.clone(),
            ship_phone: shipping.phone.clone(),
        }),
        SagaInput::Confirm {
            order_id,
            payment_ref,
        } => Input::Confirm(Confirm {
            order_id: order_id.clone(),
            payment_ref: payment_ref.clone(),
        }),
        SagaInput::Cancel {
            order_id,
            reason,
            only_if_unpaid,
        } => Input::Cancel(Cancel {
            order_id: order_id.clone(),
            reason: reason.clone(),
            only_if_unpaid: *only_if_unpaid,
        }),
    };
    let SagaOutputs {
        lines,
        order_id,
        order_saga_id,
        order_customer_id,
        order_total,
        order_snapshot,
    } = outputs;
    let r = Record {
        saga_id: saga_id.clone(),
        saga_type: u32::from(saga_type.index()),
        state: u32::from(state.index()),
        idempotency_key: idempotency_key.clone(),
        input: Some(input),
        steps: steps
            .iter()
            .map(|s| Step {
                action: Some(run_of(&s.action)),
                compensation: s.compensation.as_ref().map(run_of),
            })
            .collect(),
        outputs: Some(Outputs {
            lines: lines
                .iter()
                .map(|l| Line {
                    sku: l.sku.clone(),
                    name: l.name.clone(),
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                })
                .collect(),
            order_id: order_id.clone(),
            order_saga_id: order_saga_id.clone(),
            order_customer_id: order_customer_id.clone(),
            order_total: *order_total,
            order_snapshot: order_snapshot.as_deref().and_then(steps::hex_decode),
        }),
        history: history
            .iter()
            .map(|t| Change {
                state: u32::from(t.state.index()),
                at_ms: t.at_ms,
                note: t.note.clone(),
                actor: t.actor.clone(),
            })
            .collect(),
        error: error.as_ref().map(|e| Error {
            code: e.code,
            reason: e.reason.clone(),
            message: e.message.clone(),
            metadata: e.metadata.clone(),
            violations: e
                .violations
                .iter()
                .map(|(field, description)| Violation {
                    field: field.clone(),
                    description: description.clone(),
                })
                .collect(),
        }),
        failure_reason: failure_reason.clone(),
        failed_from: failed_from.map(|s| u32::from(s.index())),
        created_at_ms: *created_at_ms,
        updated_at_ms: *updated_at_ms,
        seq: *seq,
        trace_parent: trace_parent.clone(),
        waiting: waiting.as_ref().map(|w| Wait {
            participants: w.participants.clone(),
            since_ms: w.since_ms,
            next_attempt_ms: w.next_attempt_ms,
            misconfigured: w.misconfigured,
        }),
        waits: *waits,
    };
    let mut out = Vec::with_capacity(2 + r.encoded_len());
    out.push(state.index());
    out.push(FORMAT);
    r.encode(&mut out)
        .expect("a Vec grows to take any protobuf message");
    out
}

/// The state of a stored record, from its first byte.
pub fn state(bytes: &[u8]) -> Result<SagaState, StorageError> {
    bytes
        .first()
        .and_then(|i| SagaState::from_index(*i))
        .ok_or_else(|| corrupt("state byte"))
}

/// Decodes a stored record.
pub fn decode(bytes: &[u8]) -> Result<SagaRecord, StorageError> {
    match bytes.get(1) {
        Some(&FORMAT) => {}
        _ => return Err(corrupt("format byte")),
    }
    let r = Record::decode(&bytes[2..]).map_err(|e| corrupt(&format!("record ({e})")))?;
    let Record {
        saga_id,
        saga_type,
        state,
        idempotency_key,
        input,
        steps: stored_steps,
        outputs,
        history,
        error,
        failure_reason,
        failed_from,
        created_at_ms,
        updated_at_ms,
        seq,
        trace_parent,
        waiting,
        waits,
    } = r;
    let saga_type = type_of(saga_type)?;
    let defs = steps::definition(saga_type);
    if stored_steps.len() != defs.len() {
        return Err(corrupt("step count"));
    }
    let steps = defs
        .iter()
        .zip(stored_steps)
        .map(|(d, s)| {
            Ok(StepRecord {
                name: d.name.to_owned(),
                description: d.description.to_owned(),
                action: run_from(s.action.unwrap_or_default(), d.name)?,
                compensation: s
                    .compensation
                    .map(|c| run_from(c, d.compensation.unwrap_or_default()))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let input = match input.ok_or_else(|| corrupt("input"))? {
        Input::Place(p) => SagaInput::Place {
            customer_id: p.customer_id,
            items: p
                .items
                .into_iter()
                .map(|i| CartLine {
                    sku: i.sku,
                    quantity: i.quantity,
                })
                .collect(),
            coupon_code: p.coupon_code,
            points_to_redeem: p.points_to_redeem,
            shipping: Address {
                name: p.ship_name,
                address: p.ship_address,
                phone: p.ship_phone,
            },
        },
        Input::Confirm(c) => SagaInput::Confirm {
            order_id: c.order_id,
            payment_ref: c.payment_ref,
        },
        Input::Cancel(c) => SagaInput::Cancel {
            order_id: c.order_id,
            reason: c.reason,
            only_if_unpaid: c.only_if_unpaid,
        },
    };
    let o = outputs.unwrap_or_default();
    Ok(SagaRecord {
        saga_id,
        saga_type,
        state: state_of(state)?,
        idempotency_key,
        input,
        steps,
        outputs: SagaOutputs {
            lines: o
                .lines
                .into_iter()
                .map(|l| PricedLine {
                    sku: l.sku,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                })
                .collect(),
            order_id: o.order_id,
            order_saga_id: o.order_saga_id,
            order_customer_id: o.order_customer_id,
            order_total: o.order_total,
            order_snapshot: o.order_snapshot.as_deref().map(steps::hex_encode),
        },
        history: history
            .into_iter()
            .map(|c| {
                Ok(Transition {
                    state: state_of(c.state)?,
                    at_ms: c.at_ms,
                    note: c.note,
                    actor: c.actor,
                })
            })
            .collect::<Result<_, StorageError>>()?,
        error: error.map(|e| SagaError {
            code: e.code,
            reason: e.reason,
            message: e.message,
            metadata: e.metadata,
            violations: e
                .violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect(),
        }),
        failure_reason,
        failed_from: failed_from.map(state_of).transpose()?,
        created_at_ms,
        updated_at_ms,
        seq,
        lease_epoch: 0,
        trace_parent,
        waiting: waiting.map(|w| Waiting {
            participants: w.participants,
            since_ms: w.since_ms,
            next_attempt_ms: w.next_attempt_ms,
            misconfigured: w.misconfigured,
        }),
        waits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::record;

    fn full() -> SagaRecord {
        let mut r = record(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ));
        r.saga_type = SagaType::PlaceOrder;
        r.steps = steps::definition(SagaType::PlaceOrder)
            .iter()
            .map(|d| StepRecord::new(d.name, d.description))
            .collect();
        r.input = SagaInput::Place {
            customer_id: "alice".into(),
            items: vec![CartLine {
                sku: "TSHIRT".into(),
                quantity: 2,
            }],
            coupon_code: "WELCOME10".into(),
            points_to_redeem: 50,
            shipping: Address {
                name: "Alice".into(),
                address: "1 Main St".into(),
                phone: "0900".into(),
            },
        };
        r.steps[1].action.status = StepStatus::Succeeded;
        r.steps[1].action.attempts = 2;
        r.steps[1].action.started_at_ms = Some(5);
        r.steps[1].action.finished_at_ms = Some(9);
        r.steps[1].compensation = Some(RunRecord {
            name: "release-stock".into(),
            status: StepStatus::Waiting,
            attempts: 3,
            last_error: "Unavailable: down".into(),
            started_at_ms: Some(10),
            finished_at_ms: None,
        });
        r.outputs = SagaOutputs {
            lines: vec![PricedLine {
                sku: "TSHIRT".into(),
                name: "Cotton T-shirt".into(),
                quantity: 2,
                unit_price: 150_000,
            }],
            order_id: Some("o-1".into()),
            order_saga_id: Some("s-1".into()),
            order_customer_id: Some("alice".into()),
            order_total: 380_000,
            order_snapshot: Some("0a0b0c".into()),
        };
        r.transition_by(SagaState::Compensating, "aborted", "ops");
        r.error = Some(SagaError {
            code: 9,
            reason: "OUT_OF_STOCK".into(),
            message: "short".into(),
            metadata: BTreeMap::from([("sku".into(), "TSHIRT".into())]),
            violations: vec![("items".into(), "empty".into())],
        });
        r.failed_from = Some(SagaState::Running);
        r.waiting = Some(Waiting {
            participants: vec!["microshop.loyalty.v1.LoyaltyService".into()],
            since_ms: 11,
            next_attempt_ms: 22,
            misconfigured: true,
        });
        r.waits = 2;
        r
    }

    #[test]
    fn every_field_round_trips() {
        let r = full();
        let bytes = encode(&r);
        assert_eq!(state(&bytes).expect("state"), r.state);
        assert_eq!(decode(&bytes).expect("decode"), r);
        let json = serde_json::to_vec(&r).expect("json");
        assert!(
            bytes.len() * 3 < json.len(),
            "compact: {} bytes against {} as JSON",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn bad_bytes_are_corruption_not_a_panic() {
        for bad in [
            &[][..],
            &[1][..],
            &[1, 9, 1, 2][..],
            &[1, FORMAT, 0xff, 0xff][..],
        ] {
            assert!(
                matches!(decode(bad), Err(StorageError::Corrupt(_))),
                "{bad:?}"
            );
        }
        assert!(state(&[9]).is_err());
    }
}
