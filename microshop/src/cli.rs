//! The command line of the `microshop` binary: every subcommand's flags
//! and `MICROSHOP_*` variables as clap definitions. The binary parses them
//! ([`Cli`]); `docs/configuration.md` is rendered from them
//! ([`crate::config_doc`]), so the page and `--help` cannot drift.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use microshop_runtime::{
    ServerArgs,
    config::{HOUR_MS, socket_addr, usize_in},
};
use orchestrator::{EngineConfig, failpoint::Failpoint};
use order_svc::PricingArgs;

/// `microshop`: the parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "microshop",
    version,
    about = "A saga-orchestrated checkout mesh over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's command line, exiting with clap's message and
    /// code on an error, as `Cli::parse` does; where the refused value came
    /// from a `MICROSHOP_*` variable and not the flag, it says so (clap's
    /// message names only the flag, which the operator never typed).
    pub fn parse_or_exit() -> Self {
        match Self::try_parse() {
            Ok(cli) => {
                if let Err(why) = cli.check() {
                    <Self as clap::CommandFactory>::command()
                        .error(clap::error::ErrorKind::ValueValidation, why)
                        .exit();
                }
                cli
            }
            Err(err) => {
                let argv: Vec<_> = std::env::args_os().collect();
                let from = variable_of(&err, &argv, |var| std::env::var_os(var).is_some());
                let code = err.exit_code();
                let _ = err.print();
                if let Some(var) = from {
                    eprintln!("\nThe value came from the environment variable {var}.");
                }
                std::process::exit(code);
            }
        }
    }

    /// What clap's per-flag bounds cannot say: settings that contradict
    /// each other.
    fn check(&self) -> Result<(), String> {
        match &self.command {
            Command::Up(args) => args.engine.check(),
            Command::Serve(args) => args.engine.check(),
            _ => Ok(()),
        }
    }
}

/// The variable that supplied the value `err` refuses: the refused flag's
/// `env`, when it is set (`is_set`) and the flag is not on `argv`.
fn variable_of(
    err: &clap::Error,
    argv: &[std::ffi::OsString],
    is_set: impl Fn(&str) -> bool,
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    // "--call-timeout-ms <CALL_TIMEOUT_MS>"
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let typed = argv.iter().any(|a| {
        a.to_str()
            .and_then(|a| a.strip_prefix("--"))
            .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
    });
    if typed {
        return None;
    }
    let mut commands = vec![<Cli as clap::CommandFactory>::command()];
    while let Some(command) = commands.pop() {
        for a in command.get_arguments() {
            if a.get_long() == Some(long)
                && let Some(var) = a.get_env().and_then(|v| v.to_str())
                && is_set(var)
            {
                return Some(var.to_owned());
            }
        }
        commands.extend(command.get_subcommands().cloned());
    }
    None
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole mesh in one process (orchestrator 50051, inventory
    /// 50052, loyalty 50053, order 50054).
    Up(UpArgs),
    /// Run one service, as Kubernetes does.
    Serve(ServeArgs),
    /// Run the old shop's failure cases against a fresh in-process mesh and
    /// check every invariant; exits 0 only if all hold.
    Demo(DemoArgs),
    /// Measure saga throughput and latency against the bare-RPC floor
    /// (release build: `cargo run --release -p microshop -- bench`).
    Bench(BenchArgs),
    /// Find, inspect, retry and abort sagas (operators; talks to the
    /// orchestrator's SagaAdminService).
    Sagas(crate::sagas::SagasArgs),
    /// Convert a data directory of an earlier version (one `NAME.redb` file
    /// per store) to this version's stores, once, before the first start;
    /// each old file is kept as `NAME.redb.migrated`.
    Migrate(MigrateArgs),
}

/// `microshop migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The data directory to convert (stop every service using it first).
    #[arg(long, env = "MICROSHOP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Read and count every row, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Crash point for tests: stop dead once a store is `staged` (written
    /// beside the data, not yet in place) or `placed` (in place, the old
    /// file not yet renamed).
    #[arg(long, hide = true)]
    pub failpoint: Option<crate::migrate::Failpoint>,
}

/// `microshop up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Orchestrator address.
    #[arg(
        long,
        env = "MICROSHOP_ORCHESTRATOR_LISTEN",
        default_value = "127.0.0.1:50051",
        value_parser = socket_addr
    )]
    pub orchestrator_listen: SocketAddr,
    /// inventory-svc address.
    #[arg(
        long,
        env = "MICROSHOP_INVENTORY_LISTEN",
        default_value = "127.0.0.1:50052",
        value_parser = socket_addr
    )]
    pub inventory_listen: SocketAddr,
    /// loyalty-svc address.
    #[arg(
        long,
        env = "MICROSHOP_LOYALTY_LISTEN",
        default_value = "127.0.0.1:50053",
        value_parser = socket_addr
    )]
    pub loyalty_listen: SocketAddr,
    /// order-svc address.
    #[arg(
        long,
        env = "MICROSHOP_ORDER_LISTEN",
        default_value = "127.0.0.1:50054",
        value_parser = socket_addr
    )]
    pub order_listen: SocketAddr,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub pricing: PricingArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The service `microshop serve` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Orchestrator,
    Inventory,
    Loyalty,
    Order,
}

impl Service {
    /// As on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Orchestrator => "orchestrator",
            Self::Inventory => "inventory",
            Self::Loyalty => "loyalty",
            Self::Order => "order",
        }
    }

    /// The port it listens on by default.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Orchestrator => 50051,
            Self::Inventory => 50052,
            Self::Loyalty => 50053,
            Self::Order => 50054,
        }
    }
}

/// `microshop serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which service.
    #[arg(value_enum)]
    pub service: Service,
    /// Address to listen on (default 0.0.0.0 on the service's port).
    #[arg(long, env = "MICROSHOP_LISTEN", value_parser = socket_addr)]
    pub listen: Option<SocketAddr>,
    /// inventory-svc URL (orchestrator only).
    #[arg(
        long,
        env = "MICROSHOP_INVENTORY_URL",
        default_value = "http://127.0.0.1:50052",
        value_parser = participant_url
    )]
    pub inventory_url: String,
    /// loyalty-svc URL (orchestrator only).
    #[arg(
        long,
        env = "MICROSHOP_LOYALTY_URL",
        default_value = "http://127.0.0.1:50053",
        value_parser = participant_url
    )]
    pub loyalty_url: String,
    /// order-svc URL (orchestrator only).
    #[arg(
        long,
        env = "MICROSHOP_ORDER_URL",
        default_value = "http://127.0.0.1:50054",
        value_parser = participant_url
    )]
    pub order_url: String,
    /// Serve without authentication (local use and scripts only): without
    /// it, `serve` refuses to start unless a token key is configured.
    #[arg(
        long,
        env = "MICROSHOP_INSECURE_NO_AUTH",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Pricing rules (order-svc) and the earn rate (order-svc records it,
    /// loyalty-svc earns by it).
    #[command(flatten)]
    pub pricing: PricingArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `microshop demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub pricing: PricingArgs,
}

/// `microshop bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub options: crate::bench::BenchOptions,
}

/// A participant URL the orchestrator can dial: http(s), a host and a
/// valid port, checked at start (a typo would otherwise only show up as a
/// participant that never answers).
fn participant_url(s: &str) -> Result<String, String> {
    let example = "e.g. http://inventory:50052";
    let uri: tonic::codegen::http::Uri = s
        .parse()
        .map_err(|e| format!("not a URL ({e}); {example}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("must start with http:// or https://; {example}"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("names no host; {example}"));
    }
    // `Uri` keeps a port it cannot read as "none" (`:99999`).
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let after_host = host_port.rsplit(']').next().unwrap_or(host_port);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && !matches!(port.parse::<u16>(), Ok(1..))
    {
        return Err(format!("its port {port:?} is not 1 to 65535; {example}"));
    }
    Ok(s.to_owned())
}

/// A day in milliseconds: the longest step budget and interval.
const DAY_MS: u64 = 86_400_000;
/// A century in seconds: the longest payment TTL and checkout hold (tests
/// and fixtures use ten years for "never").
const CENTURY_SECS: u64 = 3_153_600_000;

/// Saga driver settings.
#[derive(Clone, Debug, Args)]
pub struct EngineArgs {
    /// Unpaid orders are cancelled this many seconds after creation.
    #[arg(
        long,
        env = "MICROSHOP_PAYMENT_TTL_SECS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=CENTURY_SECS)
    )]
    pub payment_ttl_secs: u64,
    /// A checkout not completed this many seconds after it started is
    /// compensated (CHECKOUT_EXPIRED) and its stock goes back on sale, even
    /// while a participant it waits for is still down (default: the
    /// payment TTL).
    #[arg(
        long,
        env = "MICROSHOP_CHECKOUT_HOLD_SECS",
        value_parser = clap::value_parser!(u64).range(1..=CENTURY_SECS)
    )]
    pub checkout_hold_secs: Option<u64>,
    /// COMPLETED and COMPENSATED sagas are purged this many seconds after
    /// they ended, with their idempotency keys (so "one key, one saga"
    /// holds within this window); FAILED and unfinished sagas are kept.
    /// 0 keeps every saga forever.
    #[arg(long, env = "MICROSHOP_SAGA_RETENTION_SECS", default_value_t = 604_800)]
    pub saga_retention_secs: u64,
    /// Attempts of one saga step before the saga waits for its participant.
    #[arg(
        long,
        env = "MICROSHOP_STEP_ATTEMPTS",
        default_value_t = 8,
        value_parser = usize_in(1, 1_000_000)
    )]
    pub step_attempts: usize,
    /// Time budget of one saga step across its attempts, in milliseconds.
    #[arg(
        long,
        env = "MICROSHOP_STEP_BUDGET_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=DAY_MS)
    )]
    pub step_budget_ms: u64,
    /// Attempts of one compensation before it waits for its participant.
    #[arg(
        long,
        env = "MICROSHOP_COMPENSATION_ATTEMPTS",
        default_value_t = 12,
        value_parser = usize_in(1, 1_000_000)
    )]
    pub compensation_attempts: usize,
    /// First retry delay, in milliseconds (doubles with jitter).
    #[arg(
        long,
        env = "MICROSHOP_BACKOFF_MIN_MS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..=HOUR_MS)
    )]
    pub backoff_min_ms: u64,
    /// Largest retry delay, in milliseconds.
    #[arg(
        long,
        env = "MICROSHOP_BACKOFF_MAX_MS",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(1..=HOUR_MS)
    )]
    pub backoff_max_ms: u64,
    /// Timeout of one participant call, in milliseconds.
    #[arg(
        long,
        env = "MICROSHOP_CALL_TIMEOUT_MS",
        default_value_t = 3_000,
        value_parser = clap::value_parser!(u64).range(1..=HOUR_MS)
    )]
    pub call_timeout_ms: u64,
    /// How often unfinished sagas are resumed, in milliseconds.
    #[arg(
        long,
        env = "MICROSHOP_RECOVERY_INTERVAL_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(10..=DAY_MS)
    )]
    pub recovery_interval_ms: u64,
    /// How often payment deadlines are checked, in milliseconds.
    #[arg(
        long,
        env = "MICROSHOP_EXPIRY_INTERVAL_MS",
        default_value_t = 1_000,
        value_parser = clap::value_parser!(u64).range(10..=DAY_MS)
    )]
    pub expiry_interval_ms: u64,
    /// This orchestrator's name as the owner of saga leases on a shared
    /// MongoDB log (default: host name, process id and a random suffix).
    #[arg(long, env = "MICROSHOP_ORCHESTRATOR_ID")]
    pub orchestrator_id: Option<String>,
    /// How long an orchestrator's lease on a saga lasts unless renewed, in
    /// milliseconds; a dead orchestrator's sagas are taken over after it.
    #[arg(
        long,
        env = "MICROSHOP_LEASE_MS",
        default_value_t = 15_000,
        value_parser = clap::value_parser!(u64).range(100..=HOUR_MS)
    )]
    pub lease_ms: u64,
    /// Crash point for recovery tests: PHASE:OP[=hold|abort], PHASE one of
    /// intent, rpc, result (e.g. `result:reserve-stock`), or save:deadline
    /// (MongoDB saga log: a checkout's payment deadline written, its record
    /// not yet).
    #[arg(long, env = "MICROSHOP_FAILPOINT", hide = true)]
    pub failpoint: Option<Failpoint>,
}

impl EngineArgs {
    /// Refuses a largest retry delay below the first one (it used to be
    /// raised to the first one without a word).
    pub fn check(&self) -> Result<(), String> {
        if self.backoff_max_ms < self.backoff_min_ms {
            return Err(format!(
                "--backoff-max-ms (MICROSHOP_BACKOFF_MAX_MS) is {} ms, below \
                 --backoff-min-ms (MICROSHOP_BACKOFF_MIN_MS) {} ms: the largest retry delay \
                 must be at least the first",
                self.backoff_max_ms, self.backoff_min_ms
            ));
        }
        Ok(())
    }

    /// The engine configuration these settings make (their bounds are
    /// clap's, their consistency [`EngineArgs::check`]'s).
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            step_attempts: self.step_attempts,
            step_budget: Duration::from_millis(self.step_budget_ms),
            compensation_attempts: self.compensation_attempts,
            backoff_min: Duration::from_millis(self.backoff_min_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            payment_ttl: Duration::from_secs(self.payment_ttl_secs),
            checkout_hold: Duration::from_secs(
                self.checkout_hold_secs.unwrap_or(self.payment_ttl_secs),
            ),
            saga_retention: microshop_runtime::retention::retention_of(
                "saga-retention-secs",
                self.saga_retention_secs,
            ),
            recovery_interval: Duration::from_millis(self.recovery_interval_ms),
            expiry_interval: Duration::from_millis(self.expiry_interval_ms),
            failpoint: self.failpoint.clone(),
            instance_id: self
                .orchestrator_id
                .clone()
                .unwrap_or_else(orchestrator::engine::default_instance_id),
            lease: Duration::from_millis(self.lease_ms),
            ..EngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error clap gives for `--call-timeout-ms 0` on `up`.
    fn refused() -> clap::Error {
        Cli::try_parse_from(["microshop", "up", "--call-timeout-ms", "0"])
            .expect_err("a zero timeout is refused")
    }

    #[test]
    fn a_refused_value_is_traced_to_its_variable_only_when_the_flag_was_not_typed() {
        let argv = |args: &[&str]| args.iter().map(Into::into).collect::<Vec<_>>();
        let err = refused();
        assert_eq!(
            variable_of(&err, &argv(&["microshop", "up"]), |_| true).as_deref(),
            Some("MICROSHOP_CALL_TIMEOUT_MS")
        );
        assert_eq!(
            variable_of(&err, &argv(&["microshop", "up"]), |_| false),
            None
        );
        for typed in [
            &["microshop", "up", "--call-timeout-ms", "0"][..],
            &["microshop", "up", "--call-timeout-ms=0"][..],
        ] {
            assert_eq!(variable_of(&err, &argv(typed), |_| true), None, "{typed:?}");
        }
        // Not a refused value at all.
        let unknown = Cli::try_parse_from(["microshop", "up", "--no-such-flag"])
            .expect_err("an unknown flag");
        assert_eq!(
            variable_of(&unknown, &argv(&["microshop", "up"]), |_| true),
            None
        );
    }
}
