//! The `show` view of one saga: a header (type, state, customer, order,
//! what it waits for, its error, its trace id), then its steps and
//! compensations as a timeline (offset from the saga's start, status,
//! attempts, duration, last error), then its history with who acted.

use std::{fmt::Write as _, time::SystemTime};

use microshop_proto::orchestrator::v1 as pb;
use prost_types::Timestamp;

use super::{
    format::{age, duration, since, state_name, status_name, system_time, type_name},
    table::align,
};

/// `2025-01-31T12:00:00.123Z (5m ago)`, or `-`.
fn when(ts: Option<&Timestamp>, now: SystemTime) -> String {
    let Some(ts) = ts else {
        return "-".to_owned();
    };
    let at = ts.to_string();
    match system_time(ts) {
        Some(t) if t > now => match t.duration_since(now) {
            Ok(d) => format!("{at} (in {})", age(d)),
            Err(_) => at,
        },
        Some(_) => match since(Some(ts), now) {
            Some(d) => format!("{at} ({} ago)", age(d)),
            None => at,
        },
        None => at,
    }
}

/// `+1.250s` after `start`, or `-`.
fn offset(ts: Option<&Timestamp>, start: Option<&Timestamp>) -> String {
    let (Some(ts), Some(start)) = (ts.and_then(system_time), start.and_then(system_time)) else {
        return String::new();
    };
    match ts.duration_since(start) {
        Ok(d) => format!("+{}", duration(d)),
        Err(_) => String::new(),
    }
}

/// The row of one run: the step number (actions only), kind, operation,
/// status, attempts, start offset, duration and last error.
fn run_row(
    number: String,
    kind: &str,
    run: &pb::StepRun,
    start: Option<&Timestamp>,
) -> Vec<String> {
    let took = match (
        run.started_at.as_ref().and_then(system_time),
        run.finished_at.as_ref().and_then(system_time),
    ) {
        (Some(a), Some(b)) => b.duration_since(a).map(duration).unwrap_or_default(),
        _ => String::new(),
    };
    vec![
        number,
        kind.to_owned(),
        run.name.clone(),
        status_name(run.status),
        run.attempts.to_string(),
        offset(run.started_at.as_ref(), start),
        took,
        run.last_error.replace('\n', " "),
    ]
}

/// The timeline of `saga` as of `now`.
pub fn render(saga: &pb::Saga, now: SystemTime) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let value = if value.is_empty() { "-" } else { value };
        let _ = writeln!(out, "{name:<10}{value}");
    };
    field("Saga", &saga.saga_id);
    field("Type", &type_name(saga.r#type));
    field("State", &state_name(saga.state));
    field("Customer", &saga.customer_id);
    field("Order", &saga.order_id);
    field("Key", &saga.idempotency_key);
    field("Created", &when(saga.created_at.as_ref(), now));
    field("Updated", &when(saga.updated_at.as_ref(), now));
    field("Trace", &saga.trace_id);
    if !saga.waiting_for.is_empty() {
        field("Waiting", &format!("for {}", saga.waiting_for.join(", ")));
        field("Next try", &when(saga.next_attempt_at.as_ref(), now));
    }
    if let Some(e) = &saga.error {
        field("Error", &format!("{} {}: {}", e.code, e.reason, e.message));
    }
    if !saga.failure_reason.is_empty() {
        field("Failed", &saga.failure_reason);
    }

    let start = saga.created_at.as_ref();
    let mut rows = Vec::new();
    for (i, step) in saga.steps.iter().enumerate() {
        if let Some(action) = &step.action {
            rows.push(run_row((i + 1).to_string(), "action", action, start));
        }
        if let Some(comp) = &step.compensation {
            // A blank (not empty: that prints as `-`) step number.
            rows.push(run_row(" ".to_owned(), "undo", comp, start));
        }
    }
    out.push_str("\nSteps (AT: from the saga's start)\n");
    if rows.is_empty() {
        out.push_str("  none\n");
    } else {
        let table = align(
            &[
                "#",
                "RUN",
                "OPERATION",
                "STATUS",
                "ATTEMPTS",
                "AT",
                "TOOK",
                "LAST ERROR",
            ],
            &rows,
        );
        for line in table.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }

    out.push_str("\nHistory\n");
    let history: Vec<Vec<String>> = saga
        .history
        .iter()
        .map(|t| {
            vec![
                t.at.as_ref().map(ToString::to_string).unwrap_or_default(),
                state_name(t.state),
                t.actor.clone(),
                t.note.replace('\n', " "),
            ]
        })
        .collect();
    if history.is_empty() {
        out.push_str("  none\n");
    } else {
        for line in align(&["AT", "STATE", "BY", "NOTE"], &history).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: i64, millis: i32) -> Option<Timestamp> {
        Some(Timestamp {
            seconds,
            nanos: millis * 1_000_000,
        })
    }

    #[test]
    fn a_timeline_shows_runs_waiting_and_history() {
        let saga = pb::Saga {
            saga_id: "s-1".into(),
            r#type: pb::SagaType::PlaceOrder.into(),
            state: pb::SagaState::Compensating.into(),
            idempotency_key: "k-1".into(),
            customer_id: "alice".into(),
            steps: vec![
                pb::SagaStep {
                    name: "reserve-stock".into(),
                    description: String::new(),
                    action: Some(pb::StepRun {
                        name: "reserve-stock".into(),
                        status: pb::StepStatus::Succeeded.into(),
                        attempts: 1,
                        last_error: String::new(),
                        started_at: at(1_000, 10),
                        finished_at: at(1_000, 22),
                    }),
                    compensation: Some(pb::StepRun {
                        name: "release-stock".into(),
                        status: pb::StepStatus::Succeeded.into(),
                        attempts: 2,
                        last_error: String::new(),
                        started_at: at(1_005, 0),
                        finished_at: at(1_006, 500),
                    }),
                },
                pb::SagaStep {
                    name: "deduct-points".into(),
                    description: String::new(),
                    action: Some(pb::StepRun {
                        name: "deduct-points".into(),
                        status: pb::StepStatus::Waiting.into(),
                        attempts: 3,
                        last_error: "UNAVAILABLE: connection refused".into(),
                        started_at: at(1_000, 30),
                        finished_at: None,
                    }),
                    compensation: None,
                },
            ],
            history: vec![
                pb::SagaTransition {
                    state: pb::SagaState::Running.into(),
                    at: at(1_000, 0),
                    note: "started".into(),
                    actor: String::new(),
                },
                pb::SagaTransition {
                    state: pb::SagaState::Compensating.into(),
                    at: at(1_005, 0),
                    note: "aborted by an operator: loyalty is gone".into(),
                    actor: "ops-alice".into(),
                },
            ],
            created_at: at(1_000, 0),
            updated_at: at(1_006, 500),
            waiting_for: vec!["microshop.loyalty.v1.LoyaltyService".into()],
            next_attempt_at: at(1_100, 0),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            ..pb::Saga::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_060);
        let text = render(&saga, now);
        assert!(text.contains("State     COMPENSATING"), "{text}");
        assert!(text.contains("Order     -"), "{text}");
        assert!(
            text.contains("Trace     0af7651916cd43dd8448eb211c80319c"),
            "{text}"
        );
        assert!(
            text.contains("Waiting   for microshop.loyalty.v1.LoyaltyService"),
            "{text}"
        );
        assert!(
            text.contains("Next try  1970-01-01T00:18:20Z (in 40s)"),
            "{text}"
        );
        assert!(
            text.contains("Created   1970-01-01T00:16:40Z (1m ago)"),
            "{text}"
        );
        let steps: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Steps"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(steps.len(), 4, "{text}");
        assert!(steps[0].trim_start().starts_with("#  RUN"), "{text}");
        assert!(
            steps[1].contains("1  action  reserve-stock  SUCCEEDED  1         +10ms    12ms    -"),
            "{text}"
        );
        assert!(
            steps[2].ends_with("   undo    release-stock  SUCCEEDED  2         +5.000s  1.500s  -"),
            "{text}"
        );
        assert!(
            steps[3]
                .ends_with("WAITING    3         +30ms    -       UNAVAILABLE: connection refused"),
            "{text}"
        );
        assert!(
            text.contains("1970-01-01T00:16:45Z  COMPENSATING  ops-alice  aborted by an operator"),
            "{text}"
        );
        assert!(
            text.contains("1970-01-01T00:16:40Z  RUNNING       -          started"),
            "{text}"
        );
    }
}
