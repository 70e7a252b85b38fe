//! `retry` and `abort`, single and bulk: which sagas (the ids given, or
//! `--state` and filters paged up to `--limit`), confirmation at a
//! terminal for the bulk forms, `--dry-run`, and the RPCs (a few at
//! once), giving one [`Outcome`] per saga.

use std::{
    io::{BufRead as _, IsTerminal as _, Write as _},
    sync::Arc,
    time::SystemTime,
};

use microshop_proto::orchestrator::v1 as pb;
use tokio::{sync::Semaphore, task::JoinSet};

use super::{
    args::{ActFlags, Selection},
    client::Admin,
    error::CliError,
    outcome::{Action, Outcome, failed, predict, settle},
    table,
};

/// RPCs in flight at once (a retry may take a step's whole budget).
const CONCURRENCY: usize = 8;

/// One retry or abort command.
#[derive(Clone, Debug)]
pub struct Request {
    /// Retry or abort.
    pub action: Action,
    /// The sagas named; empty for the bulk form.
    pub saga_ids: Vec<String>,
    /// The bulk form's selection.
    pub selection: Selection,
    /// Kept in each saga's history.
    pub reason: String,
    /// `--dry-run`, `--yes`, `--json`.
    pub act: ActFlags,
}

/// Prints `text` to stdout, or to stderr under `--json` (stdout then
/// holds only the JSON document).
fn say(json: bool, text: &str) {
    if json {
        eprintln!("{text}");
    } else {
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

/// Asks at the terminal whether to `action` the `sagas` shown.
async fn confirm(action: Action, sagas: &[pb::Saga], now: SystemTime) -> Result<(), CliError> {
    eprint!("{}", table::sagas(sagas, now));
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NeedsConfirmation {
            verb: action.verb(),
            count: sagas.len(),
        });
    }
    eprint!("{} these {} saga(s)? [y/N] ", action.verb(), sagas.len());
    let _ = std::io::stderr().flush();
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(CliError::NotConfirmed),
    }
}

/// Runs `f` on every item, [`CONCURRENCY`] at a time, results in order.
async fn each<T, F, Fut>(items: Vec<T>, f: F) -> Vec<Outcome>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    let count = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let gate = Arc::clone(&gate);
        let fut = f(item);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (i, fut.await)
        });
    }
    let mut slots: Vec<Option<Outcome>> = vec![None; count];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, o)) = joined {
            slots[i] = Some(o);
        }
    }
    slots.into_iter().flatten().collect()
}

/// Ids once each, in the order given.
fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// Runs a retry or abort command: one outcome per saga (none when the
/// selection matched nothing, which it says).
pub async fn run(admin: &Admin, req: Request) -> Result<Vec<Outcome>, CliError> {
    let Request {
        action,
        saga_ids,
        selection,
        reason,
        act,
    } = req;
    let now = SystemTime::now();
    let by_id = !saga_ids.is_empty();
    let listed = if by_id {
        Vec::new()
    } else {
        let filters = selection.filters();
        let (sagas, next) = admin.list(&filters, None, now).await?;
        if sagas.is_empty() {
            say(
                act.json,
                &format!(
                    "No saga matches ({}): nothing to {}.",
                    filters.describe(),
                    action.verb()
                ),
            );
            return Ok(Vec::new());
        }
        if !next.is_empty() {
            eprintln!(
                "note: only the first {} matching sagas are taken (--limit); more may match",
                filters.limit
            );
        }
        sagas
    };

    if act.dry_run {
        if by_id {
            let ids = dedup(saga_ids);
            return Ok(each(ids, |id| {
                let admin = admin.clone();
                async move {
                    match admin.get(&id).await {
                        Ok(saga) => predict(action, &saga),
                        Err(e) => failed(&id, None, e.to_string()),
                    }
                }
            })
            .await);
        }
        return Ok(listed.iter().map(|s| predict(action, s)).collect());
    }

    if !by_id && !act.yes {
        confirm(action, &listed, now).await?;
    }
    let ids = if by_id {
        dedup(saga_ids)
    } else {
        listed.into_iter().map(|s| s.saga_id).collect()
    };
    Ok(each(ids, |id| {
        let admin = admin.clone();
        let reason = reason.clone();
        async move {
            let reply = match action {
                Action::Retry => admin.retry(&id, &reason).await,
                Action::Abort => admin.abort(&id, &reason).await,
            };
            settle(action, &id, reply, &admin)
        }
    })
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sagas::outcome::{OutcomeKind, outcome};

    #[test]
    fn ids_are_deduplicated_in_order() {
        let ids = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(dedup(ids), ["b", "a", "c"]);
    }

    #[tokio::test]
    async fn many_sagas_run_a_few_at_a_time_in_order() {
        let ids: Vec<String> = (0..25).map(|i| format!("s-{i}")).collect();
        let out = each(ids.clone(), |id| async move {
            outcome(&id, OutcomeKind::Retried, None)
        })
        .await;
        let got: Vec<String> = out.into_iter().map(|o| o.saga_id).collect();
        assert_eq!(got, ids);
    }
}
