//! `microshop sagas`: the operator's CLI over the orchestrator's
//! `SagaAdminService` (issue 15 §4; `docs/operations.md`).
//!
//! ```text
//! microshop sagas list  [--state S] [--type T] [--customer ID] [--order ID] [--older-than DUR] [--limit N] [--json]
//! microshop sagas show  SAGA_ID [--json]
//! microshop sagas retry SAGA_ID... | --state S [filters] [--dry-run] [--yes]
//! microshop sagas abort SAGA_ID... | --state S [filters] --reason TEXT [--dry-run] [--yes]
//! ```
//!
//! Modules: [`args`] and [`values`] (the command line), [`client`]
//! (connection, token, TLS, errors), [`table`], [`timeline`] and
//! [`format`] (text output), [`json`] (proto3 JSON output), [`bulk`] and
//! [`outcome`] (retry and abort). Exit codes: 0 when
//! everything asked for succeeded (a retry no-op included), 1 when
//! anything failed, 2 for usage errors.

pub mod args;
pub mod bulk;
pub mod client;
pub mod error;
pub mod format;
pub mod json;
pub mod outcome;
pub mod table;
pub mod timeline;
pub mod values;

use std::{io::Write as _, process::ExitCode, time::SystemTime};

pub use args::SagasArgs;
use args::{ListArgs, SagasCommand, ShowArgs};
use client::Admin;
pub use error::CliError;
use outcome::{Action, Outcome};

/// Runs `microshop sagas …`; errors go to stderr as one plain sentence.
pub async fn run(args: SagasArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// `value` as one JSON document on stdout.
fn out_json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    out(&format!("{text}\n"));
}

async fn execute(args: SagasArgs) -> Result<(), CliError> {
    // Usage errors first: no connection for a command that cannot run.
    if let SagasCommand::Abort(a) = &args.command
        && a.reason.trim().is_empty()
    {
        return Err(CliError::Usage(
            "--reason must say why the sagas are aborted (it is kept in their history)".into(),
        ));
    }
    let admin = Admin::connect(&args.connection).await?;
    match args.command {
        SagasCommand::List(a) => list(&admin, a).await,
        SagasCommand::Show(a) => show(&admin, a).await,
        SagasCommand::Retry(a) => {
            let json = a.act.json;
            let outcomes = bulk::run(
                &admin,
                bulk::Request {
                    action: Action::Retry,
                    saga_ids: a.saga_ids,
                    selection: a.selection,
                    reason: a.reason.unwrap_or_default(),
                    act: a.act,
                },
            )
            .await?;
            report(&outcomes, json)
        }
        SagasCommand::Abort(a) => {
            let json = a.act.json;
            let outcomes = bulk::run(
                &admin,
                bulk::Request {
                    action: Action::Abort,
                    saga_ids: a.saga_ids,
                    selection: a.selection,
                    reason: a.reason,
                    act: a.act,
                },
            )
            .await?;
            report(&outcomes, json)
        }
    }
}

async fn list(admin: &Admin, a: ListArgs) -> Result<(), CliError> {
    let now = SystemTime::now();
    let (sagas, next) = admin.list(&a.filters, a.page_token, now).await?;
    if a.json {
        out_json(&json::list(&sagas, &next));
    } else if sagas.is_empty() {
        out(&format!("No saga matches ({}).\n", a.filters.describe()));
    } else {
        out(&table::sagas(&sagas, now));
        if !next.is_empty() {
            eprintln!(
                "(first {} shown; more with --page-token {next} or a higher --limit)",
                sagas.len()
            );
        }
    }
    Ok(())
}

async fn show(admin: &Admin, a: ShowArgs) -> Result<(), CliError> {
    let saga = admin.get(&a.saga_id).await?;
    if a.json {
        out_json(&json::show(&saga));
    } else {
        out(&timeline::render(&saga, SystemTime::now()));
    }
    Ok(())
}

/// Prints the per-saga outcomes; an error if any failed.
fn report(outcomes: &[Outcome], json: bool) -> Result<(), CliError> {
    if json {
        out_json(&json::results(outcomes));
    } else if !outcomes.is_empty() {
        out(&table::results(outcomes));
    }
    let failed = outcomes.iter().filter(|o| !o.kind.ok()).count();
    if failed > 0 {
        return Err(CliError::SomeFailed {
            failed,
            total: outcomes.len(),
        });
    }
    Ok(())
}
