//! `microshop`: the one binary of the mesh. A thin CLI over the library
//! crates: it parses layered configuration (defaults, `MICROSHOP_*`
//! environment, flags) into typed structs and hands them to each service's
//! `run`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use microshop::mesh::{Mesh, MeshAddrs, MeshConfig};
use microshop_runtime::{ServerArgs, metrics::serve_metrics, shutdown_signal, telemetry};
use microshop_storage::embedded::Durable;
use orchestrator::{EngineConfig, OrchestratorConfig, ParticipantUrls, failpoint::Failpoint};
use order_svc::PricingArgs;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "microshop",
    version,
    about = "A saga-orchestrated checkout mesh over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    Sagas(microshop::sagas::SagasArgs),
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Orchestrator address.
    #[arg(
        long,
        env = "MICROSHOP_ORCHESTRATOR_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    orchestrator_listen: SocketAddr,
    /// inventory-svc address.
    #[arg(
        long,
        env = "MICROSHOP_INVENTORY_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    inventory_listen: SocketAddr,
    /// loyalty-svc address.
    #[arg(
        long,
        env = "MICROSHOP_LOYALTY_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    loyalty_listen: SocketAddr,
    /// order-svc address.
    #[arg(
        long,
        env = "MICROSHOP_ORDER_LISTEN",
        default_value = "127.0.0.1:50054"
    )]
    order_listen: SocketAddr,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    pricing: PricingArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Service {
    Orchestrator,
    Inventory,
    Loyalty,
    Order,
}

impl Service {
    /// As on the command line.
    fn name(self) -> &'static str {
        match self {
            Self::Orchestrator => "orchestrator",
            Self::Inventory => "inventory",
            Self::Loyalty => "loyalty",
            Self::Order => "order",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Orchestrator => 50051,
            Self::Inventory => 50052,
            Self::Loyalty => 50053,
            Self::Order => 50054,
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Which service.
    #[arg(value_enum)]
    service: Service,
    /// Address to listen on (default 0.0.0.0 on the service's port).
    #[arg(long, env = "MICROSHOP_LISTEN")]
    listen: Option<SocketAddr>,
    /// inventory-svc URL (orchestrator only).
    #[arg(
        long,
        env = "MICROSHOP_INVENTORY_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    inventory_url: String,
    /// loyalty-svc URL (orchestrator only).
    #[arg(
        long,
        env = "MICROSHOP_LOYALTY_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    loyalty_url: String,
    /// order-svc URL (orchestrator only).
    #[arg(
        long,
        env = "MICROSHOP_ORDER_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    order_url: String,
    /// Serve without authentication (local use and scripts only): without
    /// it, `serve` refuses to start unless a token key is configured.
    #[arg(
        long,
        env = "MICROSHOP_INSECURE_NO_AUTH",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure_no_auth: bool,
    #[command(flatten)]
    engine: EngineArgs,
    /// Pricing rules (order-svc) and the earn rate (order-svc records it,
    /// loyalty-svc earns by it).
    #[command(flatten)]
    pricing: PricingArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Keep the demo's data here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    pricing: PricingArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    options: microshop::bench::BenchOptions,
}

/// Saga driver settings.
#[derive(Clone, Debug, Args)]
struct EngineArgs {
    /// Unpaid orders are cancelled this many seconds after creation.
    #[arg(long, env = "MICROSHOP_PAYMENT_TTL_SECS", default_value_t = 600)]
    payment_ttl_secs: u64,
    /// A checkout not completed this many seconds after it started is
    /// compensated (CHECKOUT_EXPIRED) and its stock goes back on sale, even
    /// while a participant it waits for is still down (default: the
    /// payment TTL).
    #[arg(long, env = "MICROSHOP_CHECKOUT_HOLD_SECS")]
    checkout_hold_secs: Option<u64>,
    /// COMPLETED and COMPENSATED sagas are purged this many seconds after
    /// they ended, with their idempotency keys (so "one key, one saga"
    /// holds within this window); FAILED and unfinished sagas are kept.
    /// 0 keeps every saga forever.
    #[arg(long, env = "MICROSHOP_SAGA_RETENTION_SECS", default_value_t = 604_800)]
    saga_retention_secs: u64,
    /// Attempts of one saga step before the saga waits for its participant.
    #[arg(long, env = "MICROSHOP_STEP_ATTEMPTS", default_value_t = 8)]
    step_attempts: usize,
    /// Time budget of one saga step across its attempts, in milliseconds.
    #[arg(long, env = "MICROSHOP_STEP_BUDGET_MS", default_value_t = 10_000)]
    step_budget_ms: u64,
    /// Attempts of one compensation before it waits for its participant.
    #[arg(long, env = "MICROSHOP_COMPENSATION_ATTEMPTS", default_value_t = 12)]
    compensation_attempts: usize,
    /// First retry delay, in milliseconds (doubles with jitter).
    #[arg(long, env = "MICROSHOP_BACKOFF_MIN_MS", default_value_t = 20)]
    backoff_min_ms: u64,
    /// Largest retry delay, in milliseconds.
    #[arg(long, env = "MICROSHOP_BACKOFF_MAX_MS", default_value_t = 2_000)]
    backoff_max_ms: u64,
    /// Timeout of one participant call, in milliseconds.
    #[arg(long, env = "MICROSHOP_CALL_TIMEOUT_MS", default_value_t = 3_000)]
    call_timeout_ms: u64,
    /// How often unfinished sagas are resumed, in milliseconds.
    #[arg(long, env = "MICROSHOP_RECOVERY_INTERVAL_MS", default_value_t = 5_000)]
    recovery_interval_ms: u64,
    /// How often payment deadlines are checked, in milliseconds.
    #[arg(long, env = "MICROSHOP_EXPIRY_INTERVAL_MS", default_value_t = 1_000)]
    expiry_interval_ms: u64,
    /// This orchestrator's name as the owner of saga leases on a shared
    /// MongoDB log (default: host name, process id and a random suffix).
    #[arg(long, env = "MICROSHOP_ORCHESTRATOR_ID")]
    orchestrator_id: Option<String>,
    /// How long an orchestrator's lease on a saga lasts unless renewed, in
    /// milliseconds; a dead orchestrator's sagas are taken over after it.
    #[arg(long, env = "MICROSHOP_LEASE_MS", default_value_t = 15_000)]
    lease_ms: u64,
    /// Crash point for recovery tests: PHASE:OP[=hold|abort], PHASE one of
    /// intent, rpc, result (e.g. `result:reserve-stock`).
    #[arg(long, env = "MICROSHOP_FAILPOINT", hide = true)]
    failpoint: Option<Failpoint>,
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            step_attempts: self.step_attempts.max(1),
            step_budget: Duration::from_millis(self.step_budget_ms),
            compensation_attempts: self.compensation_attempts.max(1),
            backoff_min: Duration::from_millis(self.backoff_min_ms.max(1)),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_min_ms.max(1))),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            payment_ttl: Duration::from_secs(self.payment_ttl_secs),
            checkout_hold: Duration::from_secs(
                self.checkout_hold_secs.unwrap_or(self.payment_ttl_secs),
            ),
            saga_retention: microshop_runtime::retention::retention_of(
                "saga-retention-secs",
                self.saga_retention_secs,
            ),
            recovery_interval: Duration::from_millis(self.recovery_interval_ms.max(10)),
            expiry_interval: Duration::from_millis(self.expiry_interval_ms.max(10)),
            failpoint: self.failpoint.clone(),
            instance_id: self
                .orchestrator_id
                .clone()
                .unwrap_or_else(orchestrator::engine::default_instance_id),
            lease: Duration::from_millis(self.lease_ms.max(100)),
            ..EngineConfig::default()
        }
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The blocking pool runs redb reads, which the page cache answers in
    // microseconds: 16 threads keep two cores busy, and every further
    // thread only adds an allocator heap and a stack under a burst
    // (tokio's default is 512).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up(args).await.map(|()| ExitCode::SUCCESS),
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Sagas(args) => Ok(microshop::sagas::run(args).await),
            Command::Demo(args) => {
                microshop_runtime::telemetry::init_logging_at(
                    microshop_runtime::LogFormat::Text,
                    "warn",
                );
                warn_no_auth("demo");
                let pricing = args.pricing.rules()?;
                let ok = microshop::demo::run(args.data_dir, pricing).await?;
                if !ok {
                    anyhow::bail!("the demo found an invariant violation");
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Bench(args) => {
                microshop_runtime::telemetry::init_logging_at(
                    microshop_runtime::LogFormat::Text,
                    "warn",
                );
                microshop::bench::run(args.options)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
        }
    })
}

/// The loud warning of a mesh running without authentication.
fn warn_no_auth(command: &str) {
    let line = format!(
        "WARNING: microshop {command} runs WITHOUT AUTHENTICATION: anyone who can reach \
         its ports can place, read and cancel any order and call admin RPCs. \
         For local use only; see the README's Security section."
    );
    tracing::warn!("{line}");
    eprintln!("{line}");
}

/// Where `microshop up` serves metrics unless `--metrics-addr` says otherwise.
const UP_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Binds the metrics endpoint and serves it for the life of the process.
async fn start_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    tokio::spawn(serve_metrics(listener, std::future::pending()));
    Ok(())
}

async fn up(mut args: UpArgs) -> anyhow::Result<()> {
    // Checked before anything starts: a wrong rule would misprice orders,
    // and a bad secret file stops the start.
    let pricing = args.pricing.rules()?;
    args.server.load_secret_files()?;
    // One process, one trace resource: spans tell the services apart by
    // their rpc.service attribute.
    let _telemetry = telemetry::init(args.server.log_format, "microshop");
    match args.server.metrics_addr {
        Some(addr) => start_metrics(addr).await?,
        // The default port may be taken (a second mesh): run without.
        None => {
            if let Err(err) = start_metrics(UP_METRICS_ADDR).await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "metrics are off; set --metrics-addr"
                );
            }
        }
    }
    if !args.server.auth.enabled() {
        warn_no_auth("up");
    }
    let config = MeshConfig {
        server: args.server,
        listen: MeshAddrs {
            orchestrator: args.orchestrator_listen,
            inventory: args.inventory_listen,
            loyalty: args.loyalty_listen,
            order: args.order_listen,
        },
        engine: args.engine.config(),
        durable: Durable::Yes,
        pricing,
    };
    let data_dir = config.server.data_dir.clone();
    let mesh = Mesh::start(config).await?;
    let a = &mesh.addrs;
    tracing::info!(
        orchestrator = %a.orchestrator,
        inventory = %a.inventory,
        loyalty = %a.loyalty,
        order = %a.order,
        data_dir = %data_dir.display(),
        currency = %pricing.currency,
        tax_rate_bp = pricing.tax_rate_bp,
        "microshop mesh is up; Ctrl-C to stop"
    );
    mesh.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    // Before anything binds a port: a bad secret file stops the start.
    args.server.load_secret_files()?;
    let _telemetry = telemetry::init(
        args.server.log_format,
        &format!("microshop-{}", args.service.name()),
    );
    if let Some(addr) = args.server.metrics_addr {
        start_metrics(addr).await?;
    }
    if !args.server.auth.enabled() {
        if !args.insecure_no_auth {
            anyhow::bail!(
                "refusing to serve without authentication: set \
                 MICROSHOP_AUTH_HS256_SECRET_FILE or MICROSHOP_AUTH_RS256_PUBLIC_KEY_FILE \
                 (with MICROSHOP_AUTH_ISSUER and MICROSHOP_AUTH_AUDIENCE), or pass \
                 --insecure-no-auth (MICROSHOP_INSECURE_NO_AUTH=1) for local use"
            );
        }
        warn_no_auth("serve");
    }
    // Checked before the port is bound: a wrong rule would misprice every
    // order. Only order-svc prices; loyalty-svc checks its earn rate itself.
    let order_pricing = args.pricing.rules();
    if args.service == Service::Order
        && let Err(invalid) = &order_pricing
    {
        anyhow::bail!("{invalid}");
    }
    let addr = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], args.service.default_port())));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let shutdown = shutdown_signal();
    match args.service {
        Service::Inventory => {
            inventory_svc::run(
                listener,
                inventory_svc::InventoryConfig::new(args.server),
                shutdown,
            )
            .await?;
        }
        Service::Loyalty => {
            let mut config = loyalty_svc::LoyaltyConfig::new(args.server);
            config.earn_amount_per_point = args.pricing.earn_amount_per_point;
            loyalty_svc::run(listener, config, shutdown).await?;
        }
        Service::Order => {
            let mut config = order_svc::OrderConfig::new(args.server);
            config.pricing = order_pricing?;
            order_svc::run(listener, config, shutdown).await?;
        }
        Service::Orchestrator => {
            let urls = ParticipantUrls {
                inventory: args.inventory_url,
                loyalty: args.loyalty_url,
                order: args.order_url,
            };
            let mut config = OrchestratorConfig::new(args.server, urls);
            config.engine = args.engine.config();
            orchestrator::run(listener, config, shutdown).await?;
        }
    }
    Ok(())
}
