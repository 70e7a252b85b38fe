//! `microshop`: the one binary of the mesh. A thin CLI over the library
//! crates: it parses layered configuration (defaults, `MICROSHOP_*`
//! environment, flags; defined in `microshop::cli`) into typed structs and
//! hands them to each service's `run`.

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use microshop::{
    cli::{Cli, Command, ServeArgs, Service, UpArgs},
    mesh::{Mesh, MeshAddrs, MeshConfig},
};
use microshop_runtime::{metrics::serve_metrics, shutdown_signal, telemetry};
use microshop_storage::embedded::Durable;
use orchestrator::{OrchestratorConfig, ParticipantUrls};
use tokio::net::TcpListener;

/// jemalloc, not glibc's malloc. Measured with `microshop bench`: glibc
/// kept freed memory in per-thread arenas (a 1M-saga history run peaked at
/// 186 MiB with 50 MiB live; `MALLOC_ARENA_MAX=2` bounded it at 110 MiB
/// but cost 15-19% of the throughput), where jemalloc, returning dirty
/// pages after 1 s (`.cargo/config.toml`), peaked at 142 MiB there and 132
/// MiB in the hot scenario, and ran the saga 30-50% faster. The figures
/// are in `docs/performance.md`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Runs the command; an error it ends with is printed as `Error: ` and its
/// causes, one per line, and exits 1. Not through `main`'s `Result`: that
/// prints anyhow's `Debug` form, a stack trace under `RUST_BACKTRACE=1`
/// (common in operators' shells and CI), for what is a message to read.
fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err}");
            let mut causes = err.chain().skip(1).peekable();
            if causes.peek().is_some() {
                eprintln!("\nCaused by:");
                for cause in causes {
                    eprintln!("    {cause}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse_or_exit();
    // The blocking pool runs only occasional work (the operator CLI's
    // confirmation prompt, the bench's compaction): 16 threads are
    // plenty, and every further thread only adds an allocator heap and a
    // stack under a burst (tokio's default is 512).
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
            Command::Migrate(args) => Ok(match microshop::migrate::run(&args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("microshop migrate: {err:#}");
                    ExitCode::FAILURE
                }
            }),
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
    args.server.check().map_err(anyhow::Error::msg)?;
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
    // Where the stores are: the data directory is not used on MongoDB.
    let stores = if config.server.mongodb_uri.is_some() {
        "MongoDB (MONGODB_URI)".to_owned()
    } else {
        config.server.data_dir.display().to_string()
    };
    let mesh = Mesh::start(config).await?;
    let a = &mesh.addrs;
    tracing::info!(
        orchestrator = %a.orchestrator,
        inventory = %a.inventory,
        loyalty = %a.loyalty,
        order = %a.order,
        stores = %stores,
        currency = %pricing.currency,
        tax_rate_bp = pricing.tax_rate_bp,
        "microshop mesh is up; Ctrl-C to stop"
    );
    mesh.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    // Before anything binds a port (the metrics port too): a bad secret
    // file or key, contradicting authentication settings or a pricing rule
    // that would misprice orders stop the start.
    args.server.load_secret_files()?;
    args.server.check().map_err(anyhow::Error::msg)?;
    if args.server.auth.enabled() && args.insecure_no_auth {
        // Which one the operator meant is not ours to guess: with a key,
        // callers without a token would be refused by a server its
        // operator believes open.
        anyhow::bail!(
            "--insecure-no-auth (MICROSHOP_INSECURE_NO_AUTH) and a token key \
             (MICROSHOP_AUTH_HS256_SECRET_FILE or MICROSHOP_AUTH_RS256_PUBLIC_KEY_FILE) \
             are both set: remove the key to serve without authentication, or \
             --insecure-no-auth to serve with it"
        );
    }
    if !args.server.auth.enabled() && !args.insecure_no_auth {
        anyhow::bail!(
            "refusing to serve without authentication: set \
             MICROSHOP_AUTH_HS256_SECRET_FILE or MICROSHOP_AUTH_RS256_PUBLIC_KEY_FILE \
             (with MICROSHOP_AUTH_ISSUER and MICROSHOP_AUTH_AUDIENCE), or pass \
             --insecure-no-auth (MICROSHOP_INSECURE_NO_AUTH=1) for local use"
        );
    }
    // Only order-svc prices; loyalty-svc checks its earn rate itself.
    let order_pricing = args.pricing.rules();
    if args.service == Service::Order
        && let Err(invalid) = &order_pricing
    {
        anyhow::bail!("{invalid}");
    }
    let _telemetry = telemetry::init(
        args.server.log_format,
        &format!("microshop-{}", args.service.name()),
    );
    if let Some(addr) = args.server.metrics_addr {
        start_metrics(addr).await?;
    }
    if !args.server.auth.enabled() {
        warn_no_auth("serve");
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
