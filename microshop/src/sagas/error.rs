//! The errors of `microshop sagas` at its boundary: each says, in plain
//! English, what went wrong and what to do, and maps to an exit code
//! (2 for usage errors, 1 for everything else).

use std::path::PathBuf;

/// Why a `microshop sagas` command could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong in a way clap cannot tell (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A bulk form would act without a terminal to confirm at (exit 2).
    #[error(
        "refusing to {verb} {count} saga(s) without confirmation: stdin is not a terminal; \
         pass --yes to go ahead, or --dry-run to see what would be done"
    )]
    NeedsConfirmation {
        /// `retry` or `abort`.
        verb: &'static str,
        /// How many sagas matched.
        count: usize,
    },
    /// The operator answered no at the prompt.
    #[error("nothing was changed (not confirmed)")]
    NotConfirmed,
    /// A file named on the command line cannot be read or is unusable.
    #[error("cannot use the {what} {}: {why}", path.display())]
    File {
        /// What the file is for (e.g. "token file").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why not.
        why: String,
    },
    /// No connection to the orchestrator.
    #[error(
        "cannot reach the orchestrator at {url}: {why}; check that it is running and that \
         --orchestrator (MICROSHOP_ORCHESTRATOR_URL) points at its gRPC port{hint}"
    )]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The transport's reason.
        why: String,
        /// A further hint (TLS), empty or starting with "; ".
        hint: String,
    },
    /// The address answers, but is not the orchestrator's gRPC port.
    #[error(
        "{url} {what}: it is not the orchestrator's gRPC port; point --orchestrator \
         (MICROSHOP_ORCHESTRATOR_URL) at the orchestrator (port 50051 by default)"
    )]
    NotAnOrchestrator {
        /// The URL tried.
        url: String,
        /// What it does instead.
        what: &'static str,
    },
    /// The connection closed before any answer: not a gRPC port, or the
    /// orchestrator stopped mid-call.
    #[error(
        "{url} closed the connection without a gRPC answer: if it is the metrics port or \
         another HTTP/1 server, point --orchestrator (MICROSHOP_ORCHESTRATOR_URL) at the \
         orchestrator's gRPC port (50051 by default); if it is the orchestrator, it stopped \
         during the call: try again"
    )]
    NoGrpcAnswer {
        /// The URL tried.
        url: String,
    },
    /// The orchestrator did not accept the token.
    #[error("the orchestrator refused the credentials (UNAUTHENTICATED: {message}); {advice}")]
    Unauthenticated {
        /// The server's message.
        message: String,
        /// What to do, depending on whether a token was sent.
        advice: &'static str,
    },
    /// The token is valid but may not administer sagas.
    #[error(
        "the token may not administer sagas (PERMISSION_DENIED: {0}); use a token whose \
         role is admin (--token-file or MICROSHOP_TOKEN_FILE)"
    )]
    PermissionDenied(String),
    /// No such saga.
    #[error(
        "no saga {0:?} (unknown, or purged after the saga retention period); find sagas with \
         `microshop sagas list`"
    )]
    UnknownSaga(String),
    /// The orchestrator did not answer in time.
    #[error("the orchestrator did not answer {what} within {secs} s; try again")]
    Timeout {
        /// The call.
        what: &'static str,
        /// The budget.
        secs: u64,
    },
    /// Any other gRPC error.
    #[error("{what} failed: {code}: {message}")]
    Rpc {
        /// The call.
        what: &'static str,
        /// The gRPC code name.
        code: String,
        /// The server's message.
        message: String,
    },
    /// Some sagas of a retry or abort failed (already reported per saga).
    #[error("{failed} of {total} saga(s) failed")]
    SomeFailed {
        /// How many failed.
        failed: usize,
        /// How many were asked for.
        total: usize,
    },
}

impl CliError {
    /// The process exit code: 2 for usage errors, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::NeedsConfirmation { .. } => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_the_rest_1() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let confirm = CliError::NeedsConfirmation {
            verb: "retry",
            count: 3,
        };
        assert_eq!(confirm.exit_code(), 2);
        assert!(confirm.to_string().contains("--yes"), "{confirm}");
        assert_eq!(CliError::UnknownSaga("s".into()).exit_code(), 1);
        assert_eq!(CliError::NotConfirmed.exit_code(), 1);
    }
}
