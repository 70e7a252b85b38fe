//! Proto3 JSON of the saga messages, for `--json`, written by hand over
//! `serde_json::Value` (the prost types have no serde).
//!
//! Each message is destructured field by field, so a field added to the
//! proto is a compile error here until it is printed. The mapping is the
//! proto3 JSON one: lowerCamelCase names, enum values by their proto name
//! (`SAGA_STATE_FAILED`; the number if unknown), timestamps as RFC 3339
//! strings in UTC (`2025-01-31T12:00:00.123Z`), `uint32` as a number
//! (64-bit integers, had a saga any, would be strings). Scalars and lists
//! are always printed, even at their default, so scripts see every key;
//! an unset message field is left out.

use microshop_proto::orchestrator::v1 as pb;
use prost_types::Timestamp;
use serde_json::{Map, Value, json};

use super::outcome::Outcome;

/// An enum value by its proto name, or its number if unknown.
fn enum_value<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> Value {
    E::try_from(value).map_or_else(|_| json!(value), |e| json!(name(&e)))
}

fn state(value: i32) -> Value {
    enum_value(value, pb::SagaState::as_str_name)
}

/// A timestamp as proto3 JSON: RFC 3339, `Z`, 0, 3, 6 or 9 fractional digits.
pub fn timestamp(ts: &Timestamp) -> Value {
    let mut ts = *ts;
    ts.normalize();
    json!(ts.to_string())
}

/// Inserts `value` under `key` when present (unset message fields).
fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn step_run(run: &pb::StepRun) -> Value {
    let pb::StepRun {
        name,
        status,
        attempts,
        last_error,
        started_at,
        finished_at,
    } = run;
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert(
        "status".into(),
        enum_value(*status, pb::StepStatus::as_str_name),
    );
    m.insert("attempts".into(), json!(attempts));
    m.insert("lastError".into(), json!(last_error));
    insert_some(&mut m, "startedAt", started_at.as_ref().map(timestamp));
    insert_some(&mut m, "finishedAt", finished_at.as_ref().map(timestamp));
    Value::Object(m)
}

fn step(step: &pb::SagaStep) -> Value {
    let pb::SagaStep {
        name,
        description,
        action,
        compensation,
    } = step;
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("description".into(), json!(description));
    insert_some(&mut m, "action", action.as_ref().map(step_run));
    insert_some(&mut m, "compensation", compensation.as_ref().map(step_run));
    Value::Object(m)
}

fn transition(t: &pb::SagaTransition) -> Value {
    let pb::SagaTransition {
        state: s,
        at,
        note,
        actor,
    } = t;
    let mut m = Map::new();
    m.insert("state".into(), state(*s));
    insert_some(&mut m, "at", at.as_ref().map(timestamp));
    m.insert("note".into(), json!(note));
    m.insert("actor".into(), json!(actor));
    Value::Object(m)
}

fn saga_error(e: &pb::SagaError) -> Value {
    let pb::SagaError {
        code,
        reason,
        message,
    } = e;
    json!({ "code": code, "reason": reason, "message": message })
}

/// One saga.
pub fn saga(s: &pb::Saga) -> Value {
    let pb::Saga {
        saga_id,
        r#type,
        state: saga_state,
        idempotency_key,
        order_id,
        customer_id,
        steps,
        history,
        error,
        failure_reason,
        created_at,
        updated_at,
        waiting_for,
        next_attempt_at,
        trace_id,
    } = s;
    let mut m = Map::new();
    m.insert("sagaId".into(), json!(saga_id));
    m.insert(
        "type".into(),
        enum_value(*r#type, pb::SagaType::as_str_name),
    );
    m.insert("state".into(), state(*saga_state));
    m.insert("idempotencyKey".into(), json!(idempotency_key));
    m.insert("orderId".into(), json!(order_id));
    m.insert("customerId".into(), json!(customer_id));
    m.insert("steps".into(), steps.iter().map(step).collect());
    m.insert("history".into(), history.iter().map(transition).collect());
    insert_some(&mut m, "error", error.as_ref().map(saga_error));
    m.insert("failureReason".into(), json!(failure_reason));
    insert_some(&mut m, "createdAt", created_at.as_ref().map(timestamp));
    insert_some(&mut m, "updatedAt", updated_at.as_ref().map(timestamp));
    m.insert("waitingFor".into(), json!(waiting_for));
    insert_some(
        &mut m,
        "nextAttemptAt",
        next_attempt_at.as_ref().map(timestamp),
    );
    m.insert("traceId".into(), json!(trace_id));
    Value::Object(m)
}

/// `list --json`: `{"sagas": [...], "nextPageToken": "..."}`.
pub fn list(sagas: &[pb::Saga], next_page_token: &str) -> Value {
    json!({
        "sagas": sagas.iter().map(saga).collect::<Vec<_>>(),
        "nextPageToken": next_page_token,
    })
}

/// `show --json`: `{"saga": {...}}`.
pub fn show(s: &pb::Saga) -> Value {
    json!({ "saga": saga(s) })
}

/// `retry --json` / `abort --json`: `{"results": [{"sagaId", "ok",
/// "outcome", "state", "error", "note"}]}`, `state`, `error` and `note`
/// `null` when there is none.
pub fn results(outcomes: &[Outcome]) -> Value {
    let results: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "sagaId": o.saga_id,
                "ok": o.kind.ok(),
                "outcome": o.kind.as_str(),
                "state": o.state.map_or(Value::Null, |s| json!(s.as_str_name())),
                "error": o.error,
                "note": o.note,
            })
        })
        .collect();
    json!({ "results": results })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sagas::outcome::OutcomeKind;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn sample() -> pb::Saga {
        pb::Saga {
            saga_id: "s-1".into(),
            r#type: pb::SagaType::PlaceOrder.into(),
            state: pb::SagaState::Running.into(),
            idempotency_key: "k-1".into(),
            order_id: String::new(),
            customer_id: "alice".into(),
            steps: vec![pb::SagaStep {
                name: "deduct-points".into(),
                description: "deduct the points redeemed".into(),
                action: Some(pb::StepRun {
                    name: "deduct-points".into(),
                    status: pb::StepStatus::Waiting.into(),
                    attempts: 3,
                    last_error: "UNAVAILABLE: connection refused".into(),
                    started_at: ts(1_700_000_000, 0),
                    finished_at: ts(1_700_000_001, 250_000_000),
                }),
                compensation: None,
            }],
            history: vec![pb::SagaTransition {
                state: pb::SagaState::Running.into(),
                at: ts(1_700_000_000, 0),
                note: "retried by an operator".into(),
                actor: "ops".into(),
            }],
            error: None,
            failure_reason: String::new(),
            created_at: ts(1_700_000_000, 0),
            updated_at: ts(1_700_000_001, 250_000_000),
            waiting_for: vec!["microshop.loyalty.v1.LoyaltyService".into()],
            next_attempt_at: None,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    #[test]
    fn a_saga_is_proto3_json_with_camel_case_names() {
        let v = show(&sample());
        let s = &v["saga"];
        assert_eq!(s["sagaId"], "s-1");
        assert_eq!(s["type"], "SAGA_TYPE_PLACE_ORDER");
        assert_eq!(s["state"], "SAGA_STATE_RUNNING");
        assert_eq!(s["idempotencyKey"], "k-1");
        assert_eq!(s["orderId"], "", "defaults are printed");
        assert_eq!(s["customerId"], "alice");
        assert_eq!(s["createdAt"], "2023-11-14T22:13:20Z");
        assert_eq!(s["updatedAt"], "2023-11-14T22:13:21.250Z");
        assert_eq!(s["waitingFor"][0], "microshop.loyalty.v1.LoyaltyService");
        assert!(
            s.get("nextAttemptAt").is_none(),
            "unset messages are left out"
        );
        assert!(s.get("error").is_none());
        assert_eq!(s["traceId"], "0af7651916cd43dd8448eb211c80319c");
        let run = &s["steps"][0]["action"];
        assert_eq!(run["status"], "STEP_STATUS_WAITING");
        assert_eq!(run["attempts"], 3);
        assert_eq!(run["lastError"], "UNAVAILABLE: connection refused");
        assert_eq!(run["startedAt"], "2023-11-14T22:13:20Z");
        assert!(s["steps"][0].get("compensation").is_none());
        assert_eq!(s["history"][0]["actor"], "ops");
        assert_eq!(s["history"][0]["state"], "SAGA_STATE_RUNNING");
        let keys: Vec<&str> = s
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert!(keys.iter().all(|k| !k.contains('_')), "camelCase: {keys:?}");
    }

    #[test]
    fn unknown_enum_values_print_as_numbers() {
        let mut s = sample();
        s.state = 42;
        s.error = Some(pb::SagaError {
            code: "FAILED_PRECONDITION".into(),
            reason: "OUT_OF_STOCK".into(),
            message: "only 1 left".into(),
        });
        let v = saga(&s);
        assert_eq!(v["state"], 42);
        assert_eq!(v["error"]["reason"], "OUT_OF_STOCK");
    }

    #[test]
    fn timestamps_are_normalized() {
        let t = Timestamp {
            seconds: 10,
            nanos: -1_000_000,
        };
        assert_eq!(timestamp(&t), "1970-01-01T00:00:09.999Z");
    }

    #[test]
    fn list_and_results_documents() {
        let v = list(&[sample()], "123");
        assert_eq!(v["sagas"][0]["sagaId"], "s-1");
        assert_eq!(v["nextPageToken"], "123");
        let v = results(&[
            Outcome {
                saga_id: "s-1".into(),
                kind: OutcomeKind::NoOp,
                state: Some(pb::SagaState::Completed),
                error: None,
                note: Some("already completed".into()),
            },
            Outcome {
                saga_id: "s-2".into(),
                kind: OutcomeKind::Failed,
                state: None,
                error: Some("no saga".into()),
                note: None,
            },
        ]);
        let r = &v["results"];
        assert_eq!(r[0]["sagaId"], "s-1");
        assert_eq!(r[0]["ok"], true);
        assert_eq!(r[0]["outcome"], "no-op");
        assert_eq!(r[0]["state"], "SAGA_STATE_COMPLETED");
        assert_eq!(r[0]["error"], Value::Null);
        assert_eq!(r[1]["ok"], false);
        assert_eq!(r[1]["state"], Value::Null);
        assert_eq!(r[1]["error"], "no saga");
    }
}
