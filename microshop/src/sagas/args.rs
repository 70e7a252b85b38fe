//! The command line of `microshop sagas`: its subcommands, the connection
//! flags every subcommand takes, and the filters with the ListSagas
//! request they make (the values' parsers are in [`super::values`]).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::{Args, Subcommand};
use microshop_proto::orchestrator::v1 as pb;

use super::{
    error::CliError,
    values::{StateArg, TypeArg, parse_duration, parse_limit, value_name},
};

/// `microshop sagas`: find, inspect, retry and abort sagas.
#[derive(Debug, Args)]
pub struct SagasArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: SagasCommand,
}

/// Where the orchestrator is and how to authenticate to it.
#[derive(Clone, Debug, Args)]
pub struct Connection {
    /// The orchestrator's gRPC URL (`https://` needs --ca-file).
    #[arg(
        long = "orchestrator",
        value_name = "URL",
        env = "MICROSHOP_ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub url: String,
    /// File holding an admin JWT, sent as `authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE", env = "MICROSHOP_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate that the orchestrator's TLS certificate must be
    /// signed by (with an `https://` URL).
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// List sagas, newest first, as a table: id, type, state, customer,
    /// order, age and the failing step with its last error.
    List(ListArgs),
    /// Show one saga: its steps and compensations as a timeline, what it
    /// waits for, its trace id and its history.
    Show(ShowArgs),
    /// Re-drive FAILED sagas and sagas waiting for a participant (a saga
    /// being driven or ended is a reported no-op).
    Retry(RetryArgs),
    /// Compensate unfinished or FAILED sagas.
    Abort(AbortArgs),
}

/// The filters of `list`.
#[derive(Clone, Debug, Default, Args)]
pub struct ListFilters {
    /// Only sagas in this state.
    #[arg(long, value_enum, value_name = "S")]
    pub state: Option<StateArg>,
    /// Only sagas of this type.
    #[arg(long = "type", value_enum, value_name = "T")]
    pub saga_type: Option<TypeArg>,
    /// Only sagas of this customer.
    #[arg(long, value_name = "ID")]
    pub customer: Option<String>,
    /// Only sagas of this order (its place, confirm and cancel sagas).
    #[arg(long, value_name = "ID")]
    pub order: Option<String>,
    /// Only sagas last changed longer ago than this (`90s`, `10m`, `2h`, `1d`).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// At most this many sagas (pages are fetched until it is reached).
    #[arg(long, value_name = "N", default_value = "50", value_parser = parse_limit)]
    pub limit: usize,
}

/// The selection of a bulk `retry` or `abort`: `--state` and filters.
#[derive(Clone, Debug, Default, Args)]
pub struct Selection {
    /// Act on the sagas in this state (instead of SAGA_IDs).
    #[arg(long, value_enum, value_name = "S")]
    pub state: Option<StateArg>,
    /// With --state: only sagas of this type.
    #[arg(
        long = "type",
        value_enum,
        value_name = "T",
        requires = "state",
        conflicts_with = "saga_ids"
    )]
    pub saga_type: Option<TypeArg>,
    /// With --state: only sagas of this customer.
    #[arg(
        long,
        value_name = "ID",
        requires = "state",
        conflicts_with = "saga_ids"
    )]
    pub customer: Option<String>,
    /// With --state: only sagas of this order.
    #[arg(
        long,
        value_name = "ID",
        requires = "state",
        conflicts_with = "saga_ids"
    )]
    pub order: Option<String>,
    /// With --state: only sagas last changed longer ago than this.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "state",
        conflicts_with = "saga_ids")]
    pub older_than: Option<Duration>,
    /// With --state: act on at most this many sagas.
    #[arg(
        long,
        value_name = "N",
        default_value = "50",
        value_parser = parse_limit,
        conflicts_with = "saga_ids"
    )]
    pub limit: usize,
}

impl Selection {
    /// The same selection as list filters.
    pub fn filters(&self) -> ListFilters {
        ListFilters {
            state: self.state,
            saga_type: self.saga_type,
            customer: self.customer.clone(),
            order: self.order.clone(),
            older_than: self.older_than,
            limit: self.limit,
        }
    }
}

impl ListFilters {
    /// The first ListSagas request of these filters, `now` being the
    /// reference of `--older-than`.
    pub fn request(&self, now: SystemTime) -> Result<pb::ListSagasRequest, CliError> {
        let updated_before = self
            .older_than
            .map(|d| {
                now.checked_sub(d)
                    .map(prost_types::Timestamp::from)
                    .ok_or_else(|| {
                        CliError::Usage(format!("--older-than {d:?} reaches too far back"))
                    })
            })
            .transpose()?;
        Ok(pb::ListSagasRequest {
            state: self
                .state
                .map_or(pb::SagaState::Unspecified, Into::into)
                .into(),
            page_size: 0,
            page_token: String::new(),
            r#type: self
                .saga_type
                .map_or(pb::SagaType::Unspecified, Into::into)
                .into(),
            customer_id: self.customer.clone().unwrap_or_default(),
            order_id: self.order.clone().unwrap_or_default(),
            updated_before,
        })
    }

    /// The filters in words, for "nothing matches" (`state=failed type=…`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.state {
            parts.push(format!("state={}", value_name(s)));
        }
        if let Some(t) = self.saga_type {
            parts.push(format!("type={}", value_name(t)));
        }
        if let Some(c) = &self.customer {
            parts.push(format!("customer={c}"));
        }
        if let Some(o) = &self.order {
            parts.push(format!("order={o}"));
        }
        if let Some(d) = self.older_than {
            parts.push(format!("older-than={}s", d.as_secs()));
        }
        if parts.is_empty() {
            "any".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: ListFilters,
    /// Continue after a previous listing (its `nextPageToken`).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Print one JSON document (proto3 JSON) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The saga.
    #[arg(value_name = "SAGA_ID")]
    pub saga_id: String,
    /// Print one JSON document (proto3 JSON) instead of a timeline.
    #[arg(long)]
    pub json: bool,
}

/// What `retry` and `abort` share besides their selection.
#[derive(Clone, Debug, Args)]
pub struct ActFlags {
    /// Change nothing: print what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (bulk forms).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print one JSON document of per-saga results.
    #[arg(long)]
    pub json: bool,
}

/// `retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The sagas to retry (or select them with --state and filters).
    #[arg(
        value_name = "SAGA_ID",
        required_unless_present = "state",
        conflicts_with = "state"
    )]
    pub saga_ids: Vec<String>,
    #[command(flatten)]
    pub selection: Selection,
    /// Why, kept in each saga's history with your identity.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub act: ActFlags,
}

/// `abort`.
#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The sagas to abort (or select them with --state and filters).
    #[arg(
        value_name = "SAGA_ID",
        required_unless_present = "state",
        conflicts_with = "state"
    )]
    pub saga_ids: Vec<String>,
    #[command(flatten)]
    pub selection: Selection,
    /// Why, kept in each saga's history with your identity.
    #[arg(long, value_name = "TEXT", required = true)]
    pub reason: String,
    #[command(flatten)]
    pub act: ActFlags,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_a_list_request() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let filters = ListFilters {
            state: Some(StateArg::Failed),
            saga_type: Some(TypeArg::CancelOrder),
            customer: Some("alice".into()),
            order: Some("o-1".into()),
            older_than: Some(Duration::from_secs(600)),
            limit: 5,
        };
        let req = filters.request(now).expect("a request");
        assert_eq!(req.state(), pb::SagaState::Failed);
        assert_eq!(req.r#type(), pb::SagaType::CancelOrder);
        assert_eq!(req.customer_id, "alice");
        assert_eq!(req.order_id, "o-1");
        assert_eq!(req.updated_before.map(|t| t.seconds), Some(9_400));
        assert_eq!(
            filters.describe(),
            "state=failed type=cancel-order customer=alice order=o-1 older-than=600s"
        );
        let none = ListFilters::default().request(now).expect("a request");
        assert_eq!(none.state(), pb::SagaState::Unspecified);
        assert!(none.updated_before.is_none());
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sagas: SagasArgs,
    }

    fn parse(args: &[&str]) -> Result<SagasArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("sagas").chain(args.iter().copied())).map(|c| c.sagas)
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn ids_or_a_state_selection_but_not_both() {
        let ok = |args: &[&str]| {
            parse(args).unwrap_or_else(|e| panic!("{args:?} should parse: {e}"));
        };
        let usage = |args: &[&str]| {
            let err = parse(args).expect_err(&format!("{args:?} should not parse"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        };
        ok(&["retry", "s-1", "s-2"]);
        ok(&[
            "retry",
            "--state",
            "failed",
            "--type",
            "place-order",
            "--limit",
            "5",
        ]);
        ok(&[
            "retry",
            "s-1",
            "--orchestrator",
            "https://o:1",
            "--ca-file",
            "ca.pem",
        ]);
        ok(&["abort", "s-1", "--reason", "gone", "--dry-run"]);
        ok(&[
            "abort",
            "--state",
            "running",
            "--older-than",
            "10m",
            "--reason",
            "x",
            "--yes",
        ]);
        ok(&[
            "list",
            "--older-than",
            "2h",
            "--customer",
            "alice",
            "--json",
        ]);
        ok(&["--orchestrator", "http://o:1", "show", "s-1"]);
        usage(&["retry"]);
        usage(&["retry", "s-1", "--state", "failed"]);
        usage(&["retry", "--type", "place-order"]);
        usage(&["retry", "s-1", "--customer", "alice"]);
        usage(&["abort", "s-1", "--reason", "x", "--limit", "3"]);
        usage(&["abort", "s-1"]);
        usage(&["abort", "--state", "failed"]);
        usage(&["list", "--state", "stuck"]);
        usage(&["list", "--older-than", "10"]);
        usage(&["list", "--limit", "0"]);
        usage(&["show"]);
    }
}
