//! Plain-text tables of `microshop sagas`: the `list` table (with the
//! step each saga is stuck on) and the per-saga results of `retry` and
//! `abort`, aligned in columns.

use std::time::SystemTime;

use microshop_proto::orchestrator::v1 as pb;

use super::{
    format::{age, service_short, since, state_name, status_name, truncate, type_name},
    outcome::{Outcome, OutcomeKind},
};

/// The longest error shown in a `list` row.
const ERROR_WIDTH: usize = 60;
/// The longest customer id shown in a `list` row.
const CUSTOMER_WIDTH: usize = 24;

/// Whether a run is where its saga is stuck (FAILED or WAITING).
fn stuck(run: &pb::StepRun) -> bool {
    matches!(
        pb::StepStatus::try_from(run.status),
        Ok(pb::StepStatus::Failed | pb::StepStatus::Waiting)
    )
}

/// The step a saga is stuck on, with its last error (a compensation
/// before an action: it is what holds the saga now), else whom it waits
/// for, why it is FAILED, or the error it compensated for; `None` when
/// nothing is wrong.
pub fn problem(saga: &pb::Saga) -> Option<String> {
    let runs = |compensation: bool| {
        saga.steps.iter().filter_map(move |step| {
            if compensation {
                step.compensation.as_ref()
            } else {
                step.action.as_ref()
            }
        })
    };
    let stuck_run = runs(true)
        .find(|r| stuck(r))
        .or_else(|| runs(false).find(|r| stuck(r)));
    if let Some(run) = stuck_run {
        let status = status_name(run.status);
        return Some(if run.last_error.is_empty() {
            format!("{} {status}", run.name)
        } else {
            format!("{} {status}: {}", run.name, run.last_error)
        });
    }
    if !saga.waiting_for.is_empty() {
        let names: Vec<&str> = saga.waiting_for.iter().map(|n| service_short(n)).collect();
        return Some(format!("waiting for {}", names.join(", ")));
    }
    if !saga.failure_reason.is_empty() {
        return Some(saga.failure_reason.clone());
    }
    saga.error
        .as_ref()
        .map(|e| format!("{}: {}", e.reason, e.message))
}

/// Rows aligned under `header`, two spaces apart; the last column is not
/// padded. An empty cell prints as `-`.
pub fn align(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let all: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows.iter().map(|r| r.iter().map(|c| cell(c)).collect()))
        .collect();
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            all.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `list` table.
pub fn sagas(sagas: &[pb::Saga], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = sagas
        .iter()
        .map(|s| {
            vec![
                s.saga_id.clone(),
                type_name(s.r#type),
                state_name(s.state),
                truncate(&s.customer_id, CUSTOMER_WIDTH),
                s.order_id.clone(),
                since(s.created_at.as_ref(), now)
                    .map(age)
                    .unwrap_or_default(),
                problem(s)
                    .map(|p| truncate(&p, ERROR_WIDTH))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    align(
        &[
            "ID",
            "TYPE",
            "STATE",
            "CUSTOMER",
            "ORDER",
            "AGE",
            "FAILING STEP",
        ],
        &rows,
    )
}

/// The per-saga results of `retry` and `abort`, and a summary line.
pub fn results(outcomes: &[Outcome]) -> String {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            vec![
                o.saga_id.clone(),
                o.kind.as_str().to_owned(),
                o.state.map(|s| state_name(s.into())).unwrap_or_default(),
                o.error
                    .clone()
                    .or_else(|| o.note.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = align(&["SAGA", "OUTCOME", "STATE", "DETAIL"], &rows);
    out.push_str(&summary(outcomes));
    out.push('\n');
    out
}

/// `2 retried, 1 no-op, 1 failed`, in a fixed order of outcomes.
pub fn summary(outcomes: &[Outcome]) -> String {
    let parts: Vec<String> = OutcomeKind::ALL
        .iter()
        .filter_map(|kind| {
            let n = outcomes.iter().filter(|o| o.kind == *kind).count();
            (n > 0).then(|| format!("{n} {}", kind.as_str()))
        })
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost_types::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn run(name: &str, status: pb::StepStatus, error: &str) -> Option<pb::StepRun> {
        Some(pb::StepRun {
            name: name.into(),
            status: status.into(),
            attempts: 1,
            last_error: error.into(),
            started_at: at(1_000),
            finished_at: at(1_001),
        })
    }

    fn saga(id: &str, state: pb::SagaState, steps: Vec<pb::SagaStep>) -> pb::Saga {
        pb::Saga {
            saga_id: id.into(),
            r#type: pb::SagaType::PlaceOrder.into(),
            state: state.into(),
            customer_id: "alice".into(),
            order_id: "o-1".into(),
            steps,
            created_at: at(1_000),
            updated_at: at(1_001),
            ..pb::Saga::default()
        }
    }

    fn step(name: &str, action: Option<pb::StepRun>, comp: Option<pb::StepRun>) -> pb::SagaStep {
        pb::SagaStep {
            name: name.into(),
            description: String::new(),
            action,
            compensation: comp,
        }
    }

    #[test]
    fn the_list_table_is_aligned_with_the_failing_step() {
        let long_error = format!("UNAVAILABLE: {}", "x".repeat(200));
        let list = vec![
            saga(
                "s-1",
                pb::SagaState::Compensating,
                vec![
                    step(
                        "reserve-stock",
                        run("reserve-stock", pb::StepStatus::Succeeded, ""),
                        run("release-stock", pb::StepStatus::Succeeded, ""),
                    ),
                    step(
                        "deduct-points",
                        run("deduct-points", pb::StepStatus::Waiting, "refused"),
                        run("refund-points", pb::StepStatus::Waiting, &long_error),
                    ),
                ],
            ),
            pb::Saga {
                waiting_for: vec!["microshop.loyalty.v1.LoyaltyService".into()],
                order_id: String::new(),
                ..saga("saga-number-2", pb::SagaState::Running, vec![])
            },
            saga("s-3", pb::SagaState::Completed, vec![]),
        ];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + 3_725);
        let table = sagas(&list, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("ID             TYPE         STATE"),
            "{table}"
        );
        // Every column starts at the same offset on every line.
        let offset = |line: &str, needle: &str| line.find(needle).expect(needle);
        assert_eq!(offset(lines[0], "STATE"), offset(lines[1], "COMPENSATING"));
        assert_eq!(offset(lines[0], "AGE"), offset(lines[2], "1h2m"));
        assert!(
            lines[1].contains("refund-points WAITING: UNAVAILABLE: xxx"),
            "{table}"
        );
        assert!(lines[1].ends_with('…'), "a long error is cut: {table}");
        assert!(lines[1].chars().count() < 160, "{table}");
        assert!(
            lines[2].contains("saga-number-2  place-order  RUNNING"),
            "{table}"
        );
        assert!(lines[2].ends_with("waiting for loyalty"), "{table}");
        assert!(
            lines[2].contains(" - "),
            "an empty order prints as -: {table}"
        );
        assert!(lines[3].ends_with('-'), "nothing wrong: {table}");
    }

    #[test]
    fn problems_fall_back_to_failure_reason_and_error() {
        let failed = pb::Saga {
            failure_reason: "release-stock refused".into(),
            ..saga("s", pb::SagaState::Failed, vec![])
        };
        assert_eq!(problem(&failed).as_deref(), Some("release-stock refused"));
        let rejected = pb::Saga {
            error: Some(pb::SagaError {
                code: "FAILED_PRECONDITION".into(),
                reason: "OUT_OF_STOCK".into(),
                message: "only 1 left".into(),
            }),
            ..saga("s", pb::SagaState::Compensated, vec![])
        };
        assert_eq!(
            problem(&rejected).as_deref(),
            Some("OUT_OF_STOCK: only 1 left")
        );
    }

    #[test]
    fn results_have_a_summary() {
        let outcomes = vec![
            Outcome {
                saga_id: "s-1".into(),
                kind: OutcomeKind::Retried,
                state: Some(pb::SagaState::Running),
                error: None,
                note: Some("still waiting for loyalty".into()),
            },
            Outcome {
                saga_id: "s-2".into(),
                kind: OutcomeKind::NoOp,
                state: Some(pb::SagaState::Completed),
                error: None,
                note: None,
            },
            Outcome {
                saga_id: "s-3".into(),
                kind: OutcomeKind::Failed,
                state: None,
                error: Some("no saga \"s-3\"".into()),
                note: None,
            },
        ];
        let text = results(&outcomes);
        assert!(
            text.contains("s-1   retried  RUNNING    still waiting for loyalty"),
            "{text}"
        );
        assert!(
            text.contains("s-3   failed   -          no saga \"s-3\""),
            "{text}"
        );
        assert!(text.ends_with("1 retried, 1 no-op, 1 failed\n"), "{text}");
    }
}
