//! `microshop bench`: what one checkout saga costs, measured against the
//! bare-RPC floor.
//!
//! Phases of one run (each `--duration` seconds after `--warmup`):
//! 1. the durable saga on an in-process mesh (or `--target`): closed loop
//!    with `--clients` callers (peak throughput), one caller (unloaded
//!    latency), then open loop at half the peak (the latency targets);
//! 2. the floor: the same chain of gRPC hops (client → an orchestrator-like
//!    server → GetProducts, QuoteOrder, ReserveStock, [DeductPoints],
//!    CreateOrder on no-op participant servers), no storage, in-process over
//!    loopback: closed loop, one caller, and open loop at the saga's
//!    half-peak rate;
//! 3. the saga with commits not fsync'd (`Durable::No`): closed loop;
//! 4. the scenario: `spread` (nothing more), `hot` (one SKU under
//!    `--hot-clients` callers, against spread SKUs under as many),
//!    `history` (`--history` completed sagas bulk-written to the log through
//!    the `SagaLog` API, then the half-peak latency again), `recovery`
//!    (`--recovery-sagas` RUNNING sagas written to the log, then the time
//!    from the orchestrator's start until all have ended).
//!
//! CPU time is the whole process's (`/proc/self/stat` utime + stime, so the
//! load generator's share is included) over the closed-loop window; peak RSS
//! is `VmHWM` from `/proc/self/status` at the end of the run.
//!
//! The module is split by what each part measures or builds, so a change
//! to one phase touches one file: [`load`] (the load generator: closed and
//! open loops over a CheckoutService, latency tallies, the process's CPU
//! time), [`floor`] (the bare-RPC chain the saga is compared with),
//! [`scenarios`] (the in-process mesh, seeding, step times, and the hot,
//! history and recovery scenarios) and [`report`] (what a run measured,
//! its Markdown table and JSON). This file holds the options and [`run`],
//! which strings the phases together.

mod floor;
mod load;
mod report;
mod scenarios;

use std::{path::PathBuf, time::Duration};

use microshop_storage::embedded::Durable;
use serde::Serialize;

pub use self::report::{
    HistoryReport, HotReport, PhaseStats, RecoveryReport, Report, StepTime, table,
};
use self::{
    floor::Floor,
    load::{Gen, Load, closed_loop, open_loop, sku_names},
    report::{finish, load_average, machine, print_table, progress, rss_peak_mb, write_json},
    scenarios::{history_scenario, recovery_scenario, seed, seed_mesh, start_mesh, step_times},
};

/// What the run adds to the baseline phases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Orders spread over `--skus` SKUs (the baseline phases only).
    #[default]
    Spread,
    /// One hot SKU under `--hot-clients` concurrent callers.
    Hot,
    /// `--history` completed sagas already in the log.
    History,
    /// Recovery of `--recovery-sagas` unfinished sagas.
    Recovery,
}

/// Settings of `microshop bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Measured seconds of each load phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds before each load phase.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Concurrent callers of the closed-loop phases (enough to fill the
    /// group commits: fewer callers measure latency, not the peak).
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// HTTP/2 connections the load generator spreads its calls over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Scenario.
    #[arg(long, value_enum, default_value_t = Scenario::Spread)]
    pub scenario: Scenario,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// SKUs orders are spread over.
    #[arg(long, default_value_t = 1000)]
    pub skus: usize,
    /// Concurrent callers of the hot-SKU scenario.
    #[arg(long, default_value_t = 1000)]
    pub hot_clients: usize,
    /// Completed sagas written to the log before the history scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub history: u64,
    /// Unfinished sagas the recovery scenario resumes.
    #[arg(long, default_value_t = 10_000)]
    pub recovery_sagas: usize,
    /// Customers hold points and redeem one per order (deduct-points runs);
    /// by default they have none and the step is skipped.
    #[arg(long)]
    pub redeem_points: bool,
    /// Sagas whose step timestamps are read back with GetSaga.
    #[arg(long, default_value_t = 200)]
    pub step_sample: usize,
    /// Benchmark a running orchestrator at this URL instead of an
    /// in-process mesh (no non-durable baseline, no history or recovery).
    #[arg(long)]
    pub target: Option<String>,
    /// inventory-svc URL for seeding (with `--target`).
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub inventory_url: String,
    /// loyalty-svc URL for seeding (with `--target`).
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    pub loyalty_url: String,
    /// Do not seed products and points (with `--target`).
    #[arg(long)]
    pub no_seed: bool,
    /// Skip the floor and non-durable baselines.
    #[arg(long)]
    pub skip_baselines: bool,
    /// Keep the in-process mesh's data under this directory (default: a
    /// temporary one, on the same disk as /tmp).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            duration: 10.0,
            warmup: 1.0,
            clients: 256,
            connections: 4,
            scenario: Scenario::Spread,
            json: None,
            skus: 1000,
            hot_clients: 1000,
            history: 1_000_000,
            recovery_sagas: 10_000,
            redeem_points: false,
            step_sample: 200,
            target: None,
            inventory_url: "http://127.0.0.1:50052".into(),
            loyalty_url: "http://127.0.0.1:50053".into(),
            no_seed: false,
            skip_baselines: false,
            data_dir: None,
        }
    }
}

// ---------------------------------------------------------------- run

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Runs the benchmark, prints the table on stdout, writes the JSON if
/// asked, and returns the report.
pub async fn run(opts: BenchOptions) -> anyhow::Result<Report> {
    if opts.target.is_some() && matches!(opts.scenario, Scenario::History | Scenario::Recovery) {
        anyhow::bail!("the history and recovery scenarios need the in-process mesh: drop --target");
    }
    let tmp = match &opts.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new()
                .prefix("microshop-bench-")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new()
            .prefix("microshop-bench-")
            .tempdir()?,
    };
    let base = tmp.path();
    let load_before = load_average();
    let fsync_p50_ms = measure_fsync(base)?;
    let skus = sku_names(opts.skus);
    let warmup = secs(opts.warmup);
    let duration = secs(opts.duration);
    let clients = opts.clients.max(1);

    // 1. The durable saga.
    let (mesh, url) = match &opts.target {
        Some(url) => {
            if !opts.no_seed {
                seed(
                    &opts.inventory_url,
                    &opts.loyalty_url,
                    &skus,
                    opts.redeem_points,
                )
                .await?;
            }
            (None, url.clone())
        }
        None => {
            let mesh = start_mesh(&base.join("durable"), Durable::Yes).await?;
            seed_mesh(&mesh, &skus, opts.redeem_points).await?;
            let url = mesh.orchestrator_url();
            (Some(mesh), url)
        }
    };
    let load = Load::connect(
        &url,
        opts.connections,
        Gen::new("spread", skus.clone(), opts.redeem_points),
    )
    .await?;
    progress(&format!("saga, closed loop, {clients} callers"));
    let (closed, ids) = closed_loop(&load, clients, warmup, duration, opts.step_sample).await;
    progress("saga, one caller");
    let short = duration.min(Duration::from_secs(3));
    let (unloaded, _) =
        closed_loop(&load, 1, warmup.min(Duration::from_millis(500)), short, 0).await;
    // Fsyncs a checkout waits for, counted by the stores of this process
    // (one caller: no fsync is shared), without points and redeeming.
    let (critical_path_fsyncs, critical_path_fsyncs_redeeming) = if mesh.is_some() {
        let plain = count_fsyncs(&load, 40).await?;
        let redeeming =
            count_fsyncs(&load.with_gen(Gen::new("fsyncs", skus.clone(), true)), 40).await?;
        (Some(plain), Some(redeeming))
    } else {
        (None, None)
    };
    let half_rate = (closed.throughput_per_s * 0.5).max(1.0);
    progress(&format!("saga, open loop at {half_rate:.0}/s"));
    let half = open_loop(&load, half_rate, warmup, duration).await;
    let steps = step_times(&url, &ids).await?;
    let hot = if opts.scenario == Scenario::Hot {
        let n = opts.hot_clients.max(1);
        progress(&format!("spread SKUs, {n} callers"));
        let (spread, _) = closed_loop(&load, n, warmup, duration, 0).await;
        progress(&format!("one hot SKU, {n} callers"));
        let hot_load = load.with_gen(Gen::new("hot", vec![skus[0].clone()], opts.redeem_points));
        let (hot, _) = closed_loop(&hot_load, n, warmup, duration, 0).await;
        Some(HotReport {
            clients: n,
            hot_spread_throughput_ratio: ratio(hot.throughput_per_s, spread.throughput_per_s),
            spread,
            hot,
        })
    } else {
        None
    };
    drop(load);
    if let Some(mesh) = mesh {
        mesh.shutdown().await?;
    }

    // 2. The floor.
    let (floor_closed, floor_unloaded, floor_half) = if opts.skip_baselines {
        (None, None, None)
    } else {
        let floor = Floor::start().await?;
        let load = Load::connect(
            &floor.url,
            opts.connections,
            Gen::new("floor", skus.clone(), opts.redeem_points),
        )
        .await?;
        progress(&format!("floor, closed loop, {clients} callers"));
        let (fc, _) = closed_loop(&load, clients, warmup, duration, 0).await;
        progress("floor, one caller");
        let (fu, _) = closed_loop(&load, 1, warmup.min(Duration::from_millis(500)), short, 0).await;
        progress(&format!("floor, open loop at {half_rate:.0}/s"));
        let fh = open_loop(&load, half_rate, warmup, duration).await;
        drop(load);
        floor.stop().await;
        (Some(fc), Some(fu), Some(fh))
    };

    // 3. The saga without fsync.
    let nondurable = if opts.skip_baselines || opts.target.is_some() {
        None
    } else {
        let mesh = start_mesh(&base.join("nondurable"), Durable::No).await?;
        seed_mesh(&mesh, &skus, opts.redeem_points).await?;
        let load = Load::connect(
            &mesh.orchestrator_url(),
            opts.connections,
            Gen::new("nondurable", skus.clone(), opts.redeem_points),
        )
        .await?;
        progress(&format!(
            "saga without fsync, closed loop, {clients} callers"
        ));
        let (nd, _) = closed_loop(&load, clients, warmup, duration, 0).await;
        drop(load);
        mesh.shutdown().await?;
        Some(nd)
    };

    // 4. The scenario.
    let history = if opts.scenario == Scenario::History {
        Some(
            history_scenario(
                &base.join("history"),
                &opts,
                &skus,
                half_rate,
                half.p50_ms,
                unloaded.p50_ms,
            )
            .await?,
        )
    } else {
        None
    };
    let recovery = if opts.scenario == Scenario::Recovery {
        Some(recovery_scenario(&base.join("recovery"), &opts, &skus).await?)
    } else {
        None
    };

    let report = Report {
        scenario: opts.scenario,
        machine: machine(),
        load_average: [load_before, load_average()],
        target: opts
            .target
            .clone()
            .unwrap_or_else(|| "in-process mesh".into()),
        durable: true,
        redeem_points: opts.redeem_points,
        duration_s: opts.duration,
        clients,
        throughput_sagas_per_s: closed.throughput_per_s,
        cpu_ms_per_saga: closed.cpu_ms_per_call,
        fsync_p50_ms,
        critical_path_fsyncs,
        critical_path_fsyncs_redeeming,
        disk_bytes_per_saga: mesh_bytes(&opts, closed.disk_bytes_per_call),
        ratio_throughput: None,
        ratio_one_caller_p50: None,
        ratio_half_peak_p50: None,
        ratio_half_peak_p99: None,
        ratio_cpu: None,
        unloaded,
        half_peak_rate_per_s: half_rate,
        p50_ms: half.p50_ms,
        p90_ms: half.p90_ms,
        p99_ms: half.p99_ms,
        p999_ms: half.p999_ms,
        floor_p50_ms: floor_half.as_ref().map(|f| f.p50_ms),
        floor_p99_ms: floor_half.as_ref().map(|f| f.p99_ms),
        floor_throughput_per_s: floor_closed.as_ref().map(|f| f.throughput_per_s),
        saga_floor_p50_ratio: floor_half.as_ref().map(|f| ratio(half.p50_ms, f.p50_ms)),
        saga_floor_unloaded_p50_ratio: None,
        half_peak: half,
        closed_loop: closed,
        floor_closed_loop: floor_closed,
        floor_unloaded,
        floor_half_peak: floor_half,
        nondurable_throughput_per_s: nondurable.as_ref().map(|n| n.throughput_per_s),
        durable_nondurable_throughput_ratio: None,
        nondurable_closed_loop: nondurable,
        steps,
        rss_peak_mb: rss_peak_mb(),
        hot,
        history,
        recovery,
    };
    let report = finish(report);
    print_table(&report);
    if let Some(path) = &opts.json {
        write_json(&report, path)?;
    }
    stores_closed(STORES_CLOSE_WITHIN).await;
    drop(tmp);
    Ok(report)
}

/// How long the end of a run waits for the stores' background threads.
const STORES_CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// Waits (bounded polling of this process's thread names) until no fjall
/// background thread runs any more, so the data directory is removed
/// after the last compaction, not under it (which fjall reports as a
/// crashed worker). A store closes when its last handle goes, and a shut
/// down mesh's tasks may drop theirs a moment later; after `within` the
/// directory goes anyway.
async fn stores_closed(within: Duration) {
    let running = || {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|name| name.starts_with("fjall"))
                })
            })
            .unwrap_or(false)
    };
    let deadline = tokio::time::Instant::now() + within;
    while running() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if running() {
        tracing::warn!(
            "the stores' background threads still run after {within:?}; removing the data \
             directory anyway"
        );
    }
}

/// Bytes written per saga, when the stores run in this process.
fn mesh_bytes(opts: &BenchOptions, per_call: f64) -> Option<f64> {
    opts.target.is_none().then_some(per_call)
}

/// Journal-like fsyncs on the data directory's disk: the median of 200
/// appends of 512 bytes, each followed by `fdatasync`, in milliseconds.
fn measure_fsync(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5a_u8; 512];
    let mut took = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = std::time::Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    took.sort_by(f64::total_cmp);
    Ok(took[took.len() / 2])
}

/// Fsyncs per checkout with one caller, as the stores count them.
async fn count_fsyncs(load: &Load, sagas: u64) -> anyhow::Result<f64> {
    use std::sync::atomic::Ordering;
    let stats = microshop_storage::embedded::write_stats();
    let before = stats.fsyncs.load(Ordering::SeqCst);
    for _ in 0..sagas {
        load.call(0).await?;
    }
    let after = stats.fsyncs.load(Ordering::SeqCst);
    Ok((after - before) as f64 / sagas as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run writes JSON with every key the issue names, and its
    /// sagas complete. Nothing here depends on how fast the machine is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_run_writes_the_required_json() {
        let dir = tempfile::tempdir().expect("temp dir");
        let json = dir.path().join("bench.json");
        let opts = BenchOptions {
            duration: 0.5,
            warmup: 0.0,
            clients: 4,
            connections: 1,
            skus: 8,
            step_sample: 4,
            json: Some(json.clone()),
            data_dir: Some(dir.path().to_owned()),
            ..BenchOptions::default()
        };
        let report = run(opts).await.expect("bench runs");
        assert!(report.closed_loop.ok > 0, "no saga completed");
        assert_eq!(
            report.closed_loop.errors, 0,
            "{:?}",
            report.closed_loop.first_error
        );
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
        for key in [
            "throughput_sagas_per_s",
            "p50_ms",
            "p99_ms",
            "floor_p50_ms",
            "floor_throughput_per_s",
            "nondurable_throughput_per_s",
            "rss_peak_mb",
            "saga_floor_p50_ratio",
            "durable_nondurable_throughput_ratio",
            "cpu_ms_per_saga",
            "steps",
            "fsync_p50_ms",
            "critical_path_fsyncs",
            "critical_path_fsyncs_redeeming",
            "disk_bytes_per_saga",
            "ratio_throughput",
            "ratio_one_caller_p50",
            "ratio_half_peak_p50",
            "ratio_half_peak_p99",
            "ratio_cpu",
        ] {
            assert!(
                value.get(key).is_some_and(|v| !v.is_null()),
                "{key} missing or null"
            );
        }
        for path in [
            "unloaded.p50_ms",
            "floor_unloaded.p50_ms",
            "half_peak.p50_ms",
            "half_peak.p99_ms",
            "floor_half_peak.p50_ms",
            "floor_half_peak.p99_ms",
            "floor_closed_loop.cpu_ms_per_call",
            "closed_loop.fsyncs_per_call",
            "half_peak.fsyncs_per_call",
            "unloaded.context_switches_per_call",
            "floor_unloaded.context_switches_per_call",
        ] {
            let found = path
                .split('.')
                .try_fold(&value, |v, k| v.get(k))
                .is_some_and(|v| !v.is_null());
            assert!(found, "{path} missing or null");
        }
        // Counted by the stores: the creation, the reservation and the
        // order (and the deduction when redeeming), never fewer.
        let fsyncs = report.critical_path_fsyncs.expect("counted in process");
        let redeeming = report
            .critical_path_fsyncs_redeeming
            .expect("counted in process");
        assert!((2.5..=3.5).contains(&fsyncs), "{fsyncs}");
        // Durable stores fsync under load too, at most once per write.
        let per_saga = report.closed_loop.fsyncs_per_call;
        assert!(per_saga > 0.0 && per_saga <= 5.0, "{per_saga}");
        assert!((3.5..=4.5).contains(&redeeming), "{redeeming}");
        // Every saga blocks some thread at least once (its fsyncs).
        let switches = report.unloaded.context_switches_per_call;
        assert!(switches >= 1.0, "{switches}");
        let steps: Vec<&str> = report.steps.iter().map(|s| s.step.as_str()).collect();
        assert!(steps.contains(&"reserve-stock"), "{steps:?}");
    }
}
