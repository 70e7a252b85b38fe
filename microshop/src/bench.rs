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

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use hdrhistogram::Histogram;
use microshop_proto::{
    inventory::v1::{
        self as inv,
        inventory_service_client::InventoryServiceClient,
        inventory_service_server::{InventoryService, InventoryServiceServer},
    },
    loyalty::v1::{
        self as loy,
        loyalty_service_client::LoyaltyServiceClient,
        loyalty_service_server::{LoyaltyService, LoyaltyServiceServer},
    },
    orchestrator::v1::{
        self as pb,
        checkout_service_client::CheckoutServiceClient,
        checkout_service_server::{CheckoutService, CheckoutServiceServer},
        saga_admin_service_client::SagaAdminServiceClient,
    },
    order::v1::{
        self as ord,
        order_service_client::OrderServiceClient,
        order_service_server::{OrderService, OrderServiceServer},
    },
};
use microshop_storage::embedded::Durable;
use orchestrator::{
    EmbeddedSagaLog,
    log::SagaLog,
    model::{
        Address, CartLine, PricedLine, SagaInput, SagaOutputs, SagaRecord, SagaState, SagaType,
        StepRecord, StepStatus, now_ms,
    },
    steps,
};
use serde::Serialize;
use tokio::{
    net::TcpListener,
    sync::watch,
    task::JoinSet,
    time::{Instant, sleep, sleep_until},
};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, server::TcpIncoming},
};

use crate::mesh::{Mesh, MeshConfig, connect};

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

/// Latency distribution and counts of one load phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseStats {
    /// Calls answered OK in the measured window.
    pub ok: u64,
    /// Calls that failed in the measured window.
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// OK calls per second.
    pub throughput_per_s: f64,
    /// Offered rate (open loop only).
    pub offered_per_s: Option<f64>,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest call.
    pub max_ms: f64,
    /// Process CPU seconds per OK call, in milliseconds.
    pub cpu_ms_per_call: f64,
}

/// Mean time of one saga step, from GetSaga timestamps (millisecond
/// resolution, averaged over the sample).
#[derive(Clone, Debug, Serialize)]
pub struct StepTime {
    /// Step name (or `between steps` for the rest of the saga's life).
    pub step: String,
    /// Mean milliseconds.
    pub mean_ms: f64,
    /// Sagas it was measured on (0 when skipped in every one).
    pub samples: usize,
}

/// The hot-SKU scenario.
#[derive(Clone, Debug, Serialize)]
pub struct HotReport {
    /// Concurrent callers of both phases.
    pub clients: usize,
    /// Spread SKUs, same callers.
    pub spread: PhaseStats,
    /// One SKU.
    pub hot: PhaseStats,
    /// hot / spread throughput.
    pub hot_spread_throughput_ratio: f64,
}

/// The history scenario.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryReport {
    /// Completed sagas written before measuring.
    pub sagas: u64,
    /// Seconds the pre-fill took.
    pub prefill_s: f64,
    /// Size of the saga log after the pre-fill.
    pub log_bytes: u64,
    /// Closed loop over the full log.
    pub closed_loop: PhaseStats,
    /// One caller over the full log (unloaded: what the log's size alone
    /// adds to a saga).
    pub one_caller: PhaseStats,
    /// One caller's median on the empty log.
    pub empty_one_caller_p50_ms: f64,
    /// full / empty one-caller p50: the figure held to the target, since
    /// without load it moves with the log, not with queueing.
    pub one_caller_p50_ratio: f64,
    /// Open loop at the empty-log half-peak rate over the full log.
    pub half_peak: PhaseStats,
    /// Median at the same rate on the empty log.
    pub empty_p50_ms: f64,
    /// full / empty p50 at half peak.
    pub p50_ratio: f64,
}

/// The recovery scenario.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    /// Unfinished sagas written before the start.
    pub sagas: usize,
    /// Seconds from starting the mesh until none is RUNNING or COMPENSATING.
    pub recovery_s: f64,
    /// How many ended COMPLETED.
    pub completed: usize,
    /// How many ended otherwise (COMPENSATED or FAILED).
    pub not_completed: usize,
    /// Whether every saga ended before the bench gave up waiting.
    pub finished: bool,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario.
    pub scenario: Scenario,
    /// Machine (CPU model, cores, kernel).
    pub machine: String,
    /// `/proc/loadavg` when the run started and ended: other work on the
    /// machine competes with the run.
    pub load_average: [String; 2],
    /// In-process mesh or the target URL.
    pub target: String,
    /// Durable commits (fsync) in the measured saga phases.
    pub durable: bool,
    /// Whether orders redeem points (deduct-points runs) or skip it.
    pub redeem_points: bool,
    /// Measured seconds per phase.
    pub duration_s: f64,
    /// Closed-loop callers.
    pub clients: usize,
    /// Peak (closed-loop) completed sagas per second.
    pub throughput_sagas_per_s: f64,
    /// The closed-loop phase.
    pub closed_loop: PhaseStats,
    /// One caller: latency with no queueing.
    pub unloaded: PhaseStats,
    /// Offered rate of the half-peak phase.
    pub half_peak_rate_per_s: f64,
    /// The open-loop phase at half the peak.
    pub half_peak: PhaseStats,
    /// Median latency at half the peak.
    pub p50_ms: f64,
    /// 90th percentile at half the peak.
    pub p90_ms: f64,
    /// 99th percentile at half the peak.
    pub p99_ms: f64,
    /// 99.9th percentile at half the peak.
    pub p999_ms: f64,
    /// Process CPU per saga in the closed loop (load generator included).
    pub cpu_ms_per_saga: f64,
    /// Floor median at the same offered rate as `p50_ms`.
    pub floor_p50_ms: Option<f64>,
    /// Floor 99th percentile at that rate.
    pub floor_p99_ms: Option<f64>,
    /// Floor closed-loop throughput.
    pub floor_throughput_per_s: Option<f64>,
    /// Floor phases.
    pub floor_closed_loop: Option<PhaseStats>,
    /// Floor with one caller.
    pub floor_unloaded: Option<PhaseStats>,
    /// Floor at the saga's half-peak rate.
    pub floor_half_peak: Option<PhaseStats>,
    /// `p50_ms / floor_p50_ms`.
    pub saga_floor_p50_ratio: Option<f64>,
    /// The same ratio with one caller.
    pub saga_floor_unloaded_p50_ratio: Option<f64>,
    /// Closed-loop throughput with commits not fsync'd.
    pub nondurable_throughput_per_s: Option<f64>,
    /// The non-durable phase.
    pub nondurable_closed_loop: Option<PhaseStats>,
    /// Durable / non-durable throughput.
    pub durable_nondurable_throughput_ratio: Option<f64>,
    /// Mean time per saga step (from a sample of GetSaga answers).
    pub steps: Vec<StepTime>,
    /// Peak resident memory of the whole process, MiB.
    pub rss_peak_mb: f64,
    /// Hot-SKU scenario.
    pub hot: Option<HotReport>,
    /// History scenario.
    pub history: Option<HistoryReport>,
    /// Recovery scenario.
    pub recovery: Option<RecoveryReport>,
}

// ---------------------------------------------------------------- load

/// Builds PlaceOrder requests: unique keys, spread or hot SKUs.
struct Gen {
    prefix: String,
    skus: Vec<String>,
    redeem_points: bool,
    seq: AtomicU64,
}

impl Gen {
    fn new(tag: &str, skus: Vec<String>, redeem_points: bool) -> Arc<Self> {
        Arc::new(Self {
            prefix: format!("bench-{}-{tag}", now_ms()),
            skus,
            redeem_points,
            seq: AtomicU64::new(0),
        })
    }

    fn request(&self, caller: usize) -> pb::PlaceOrderRequest {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        // Multiplicative hashing spreads consecutive orders over the SKUs.
        let pick = usize::try_from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32).unwrap_or(0);
        let sku = self.skus[pick % self.skus.len()].clone();
        pb::PlaceOrderRequest {
            idempotency_key: format!("{}-{n}", self.prefix),
            customer_id: customer(caller),
            items: vec![pb::LineItem { sku, quantity: 1 }],
            coupon_code: String::new(),
            points_to_redeem: i64::from(self.redeem_points),
            shipping: Some(pb::ShippingAddress {
                name: "Bench Customer".into(),
                address: "1 Loopback Road".into(),
                phone: "0900000000".into(),
            }),
        }
    }
}

fn customer(caller: usize) -> String {
    format!("bench-customer-{}", caller % 1000)
}

fn sku_names(n: usize) -> Vec<String> {
    (0..n.max(1)).map(|i| format!("BENCH-{i:06}")).collect()
}

/// Callers of one CheckoutService (the mesh's or the floor's).
#[derive(Clone)]
struct Load {
    clients: Vec<CheckoutServiceClient<Channel>>,
    orders: Arc<Gen>,
}

impl Load {
    async fn connect(url: &str, connections: usize, orders: Arc<Gen>) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let endpoint = Endpoint::from_shared(url.to_owned())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(1));
            let deadline = Instant::now() + Duration::from_secs(10);
            let channel = loop {
                match endpoint.connect().await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(e).with_context(|| format!("cannot connect to {url}"));
                    }
                    Err(_) => sleep(Duration::from_millis(20)).await,
                }
            };
            clients.push(CheckoutServiceClient::new(channel));
        }
        Ok(Self { clients, orders })
    }

    fn with_gen(&self, orders: Arc<Gen>) -> Self {
        Self {
            clients: self.clients.clone(),
            orders,
        }
    }

    async fn call(&self, caller: usize) -> Result<Response<pb::PlaceOrderResponse>, tonic::Status> {
        let mut client = self.clients[caller % self.clients.len()].clone();
        let mut request = Request::new(self.orders.request(caller));
        request.set_timeout(Duration::from_secs(30));
        client.place_order(request).await
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// What one caller (or a whole phase, once merged) saw. Latencies are kept
/// as raw samples and put in a histogram only for the phase's statistics:
/// a histogram of this range and precision takes ~200 KiB, so one per
/// caller would make the load generator, not the mesh, dominate the
/// process's peak RSS with 1,000 callers.
struct Tally {
    samples: Vec<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    saga_ids: Vec<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            samples: Vec::new(),
            ok: 0,
            errors: 0,
            first_error: None,
            saga_ids: Vec::new(),
        }
    }

    fn record(
        &mut self,
        took: Duration,
        result: Result<Response<pb::PlaceOrderResponse>, Status>,
        keep_ids: usize,
    ) {
        match result {
            Ok(r) => {
                self.ok += 1;
                self.samples.push(micros(took));
                if self.saga_ids.len() < keep_ids {
                    self.saga_ids.push(r.into_inner().saga_id);
                }
            }
            Err(s) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
            }
        }
    }

    fn merge(&mut self, other: Self) {
        self.samples.extend(other.samples);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.saga_ids.extend(other.saga_ids);
    }

    fn stats(&self, measured: Duration, cpu_s: f64, offered: Option<f64>) -> PhaseStats {
        let mut hist = new_hist();
        for &us in &self.samples {
            hist.saturating_record(us);
        }
        let q = |p: f64| {
            if hist.is_empty() {
                0.0
            } else {
                ms(hist.value_at_quantile(p))
            }
        };
        PhaseStats {
            ok: self.ok,
            errors: self.errors,
            first_error: self.first_error.clone(),
            throughput_per_s: self.ok as f64 / measured.as_secs_f64().max(1e-9),
            offered_per_s: offered,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if hist.is_empty() { 0.0 } else { ms(hist.max()) },
            cpu_ms_per_call: if self.ok == 0 {
                0.0
            } else {
                cpu_s * 1000.0 / self.ok as f64
            },
        }
    }
}

/// `callers` callers, each calling again as soon as it is answered.
async fn closed_loop(
    load: &Load,
    callers: usize,
    warmup: Duration,
    duration: Duration,
    keep_ids: usize,
) -> (PhaseStats, Vec<String>) {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let per_caller = keep_ids.div_ceil(callers.max(1));
    let mut tasks = JoinSet::new();
    for caller in 0..callers.max(1) {
        let load = load.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let result = load.call(caller).await;
                if t >= measure_from {
                    tally.record(t.elapsed(), result, per_caller);
                }
            }
            tally
        });
    }
    sleep_until(measure_from).await;
    let cpu0 = cpu_seconds();
    sleep_until(end).await;
    let cpu1 = cpu_seconds();
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(t) = joined {
            total.merge(t);
        }
    }
    let stats = total.stats(duration, cpu1 - cpu0, None);
    (stats, total.saga_ids)
}

/// Most calls an open loop keeps in flight before it drops arrivals.
const MAX_IN_FLIGHT: usize = 20_000;

/// Calls arriving at `rate` per second whatever the answers' latency.
/// Latency is measured from the moment each call is issued; the issuing
/// loop wakes every millisecond and issues every call due by then.
async fn open_loop(load: &Load, rate: f64, warmup: Duration, duration: Duration) -> PhaseStats {
    let rate = rate.max(1.0);
    let shared = Arc::new(Mutex::new(Tally::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut issued: u64 = 0;
    let mut dropped: u64 = 0;
    let mut tasks = JoinSet::new();
    let mut cpu0 = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let measured = now >= measure_from;
        if measured && cpu0.is_none() {
            cpu0 = Some(cpu_seconds());
        }
        let due = ((now - start).as_secs_f64() * rate) as u64;
        while issued < due {
            issued += 1;
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                dropped += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let load = load.clone();
            let shared = Arc::clone(&shared);
            let in_flight = Arc::clone(&in_flight);
            let caller = usize::try_from(issued).unwrap_or(0);
            tasks.spawn(async move {
                let t = Instant::now();
                let result = load.call(caller).await;
                let took = t.elapsed();
                in_flight.fetch_sub(1, Ordering::Relaxed);
                if measured {
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(took, result, 0);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
        sleep(Duration::from_micros(500)).await;
    }
    let cpu1 = cpu_seconds();
    let drain = Instant::now() + Duration::from_secs(35);
    while Instant::now() < drain {
        match tokio::time::timeout_at(drain, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    tasks.abort_all();
    let mut tally = shared.lock().unwrap_or_else(|e| e.into_inner());
    if dropped > 0 {
        tally.errors += dropped;
        tally.first_error.get_or_insert_with(|| {
            format!("{dropped} arrivals dropped: {MAX_IN_FLIGHT} calls already in flight")
        });
    }
    tally.stats(duration, cpu1 - cpu0.unwrap_or(cpu1), Some(rate))
}

// ---------------------------------------------------------------- process

/// utime + stime of this process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Field 14 (utime) and 15 (stime); `rest` starts at field 3.
    (tick(11) + tick(12)) as f64 / 100.0
}

/// Peak resident set (VmHWM), MiB.
fn rss_peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cores} cores, Linux {kernel}")
}

// ---------------------------------------------------------------- floor

fn unused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the floor"))
}

#[derive(Clone, Copy)]
struct NoopInventory;

#[tonic::async_trait]
impl InventoryService for NoopInventory {
    async fn put_product(
        &self,
        _: Request<inv::PutProductRequest>,
    ) -> Result<Response<inv::PutProductResponse>, Status> {
        unused()
    }
    async fn get_product(
        &self,
        _: Request<inv::GetProductRequest>,
    ) -> Result<Response<inv::GetProductResponse>, Status> {
        unused()
    }
    async fn get_products(
        &self,
        _: Request<inv::GetProductsRequest>,
    ) -> Result<Response<inv::GetProductsResponse>, Status> {
        Ok(Response::new(inv::GetProductsResponse::default()))
    }
    async fn reserve_stock(
        &self,
        _: Request<inv::ReserveStockRequest>,
    ) -> Result<Response<inv::ReserveStockResponse>, Status> {
        Ok(Response::new(inv::ReserveStockResponse::default()))
    }
    async fn release_stock(
        &self,
        _: Request<inv::ReleaseStockRequest>,
    ) -> Result<Response<inv::ReleaseStockResponse>, Status> {
        unused()
    }
    async fn commit_stock(
        &self,
        _: Request<inv::CommitStockRequest>,
    ) -> Result<Response<inv::CommitStockResponse>, Status> {
        unused()
    }
}

#[derive(Clone, Copy)]
struct NoopLoyalty;

#[tonic::async_trait]
impl LoyaltyService for NoopLoyalty {
    async fn get_balance(
        &self,
        _: Request<loy::GetBalanceRequest>,
    ) -> Result<Response<loy::GetBalanceResponse>, Status> {
        unused()
    }
    async fn grant_points(
        &self,
        _: Request<loy::GrantPointsRequest>,
    ) -> Result<Response<loy::GrantPointsResponse>, Status> {
        unused()
    }
    async fn deduct_points(
        &self,
        _: Request<loy::DeductPointsRequest>,
    ) -> Result<Response<loy::DeductPointsResponse>, Status> {
        Ok(Response::new(loy::DeductPointsResponse::default()))
    }
    async fn refund_points(
        &self,
        _: Request<loy::RefundPointsRequest>,
    ) -> Result<Response<loy::RefundPointsResponse>, Status> {
        unused()
    }
    async fn earn_points(
        &self,
        _: Request<loy::EarnPointsRequest>,
    ) -> Result<Response<loy::EarnPointsResponse>, Status> {
        unused()
    }
}

#[derive(Clone, Copy)]
struct NoopOrder;

#[tonic::async_trait]
impl OrderService for NoopOrder {
    async fn quote_order(
        &self,
        _: Request<ord::QuoteOrderRequest>,
    ) -> Result<Response<ord::QuoteOrderResponse>, Status> {
        Ok(Response::new(ord::QuoteOrderResponse::default()))
    }
    async fn create_order(
        &self,
        _: Request<ord::CreateOrderRequest>,
    ) -> Result<Response<ord::CreateOrderResponse>, Status> {
        Ok(Response::new(ord::CreateOrderResponse::default()))
    }
    async fn cancel_order(
        &self,
        _: Request<ord::CancelOrderRequest>,
    ) -> Result<Response<ord::CancelOrderResponse>, Status> {
        unused()
    }
    async fn mark_paid(
        &self,
        _: Request<ord::MarkPaidRequest>,
    ) -> Result<Response<ord::MarkPaidResponse>, Status> {
        unused()
    }
    async fn mark_shipped(
        &self,
        _: Request<ord::MarkShippedRequest>,
    ) -> Result<Response<ord::MarkShippedResponse>, Status> {
        unused()
    }
    async fn get_order(
        &self,
        _: Request<ord::GetOrderRequest>,
    ) -> Result<Response<ord::GetOrderResponse>, Status> {
        unused()
    }
    async fn list_orders(
        &self,
        _: Request<ord::ListOrdersRequest>,
    ) -> Result<Response<ord::ListOrdersResponse>, Status> {
        unused()
    }
    async fn put_coupon(
        &self,
        _: Request<ord::PutCouponRequest>,
    ) -> Result<Response<ord::PutCouponResponse>, Status> {
        unused()
    }
    async fn get_coupon(
        &self,
        _: Request<ord::GetCouponRequest>,
    ) -> Result<Response<ord::GetCouponResponse>, Status> {
        unused()
    }
}

/// The floor's orchestrator: PlaceOrder makes the saga's participant calls
/// in the saga's order, with the same per-call timeout header, and nothing
/// else.
#[derive(Clone)]
struct FloorCheckout {
    inventory: InventoryServiceClient<Channel>,
    loyalty: LoyaltyServiceClient<Channel>,
    order: OrderServiceClient<Channel>,
}

fn timed<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(Duration::from_secs(3));
    r
}

#[tonic::async_trait]
impl CheckoutService for FloorCheckout {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let req = request.into_inner();
        let skus = req.items.iter().map(|i| i.sku.clone()).collect();
        self.inventory
            .clone()
            .get_products(timed(inv::GetProductsRequest { skus }))
            .await?;
        self.order
            .clone()
            .quote_order(timed(ord::QuoteOrderRequest {
                lines: Vec::new(),
                coupon_code: req.coupon_code.clone(),
                points_to_redeem: req.points_to_redeem,
            }))
            .await?;
        let items = req
            .items
            .iter()
            .map(|i| inv::StockItem {
                sku: i.sku.clone(),
                quantity: i.quantity,
            })
            .collect();
        self.inventory
            .clone()
            .reserve_stock(timed(inv::ReserveStockRequest {
                saga_id: req.idempotency_key.clone(),
                items,
            }))
            .await?;
        if req.points_to_redeem > 0 {
            self.loyalty
                .clone()
                .deduct_points(timed(loy::DeductPointsRequest {
                    saga_id: req.idempotency_key.clone(),
                    customer_id: req.customer_id.clone(),
                    points: req.points_to_redeem,
                }))
                .await?;
        }
        self.order
            .clone()
            .create_order(timed(ord::CreateOrderRequest {
                saga_id: req.idempotency_key.clone(),
                customer_id: req.customer_id,
                lines: Vec::new(),
                coupon_code: req.coupon_code,
                redeemed_points: req.points_to_redeem,
                shipping: None,
            }))
            .await?;
        Ok(Response::new(pb::PlaceOrderResponse {
            saga_id: req.idempotency_key,
            state: pb::SagaState::Completed.into(),
            ..Default::default()
        }))
    }

    async fn confirm_payment(
        &self,
        _: Request<pb::ConfirmPaymentRequest>,
    ) -> Result<Response<pb::ConfirmPaymentResponse>, Status> {
        unused()
    }

    async fn cancel_order(
        &self,
        _: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        unused()
    }
}

/// The floor's four servers on loopback.
struct Floor {
    url: String,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

fn lazy_channel(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Floor {
    async fn start() -> anyhow::Result<Self> {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for _ in 0..4 {
            addrs.push(TcpListener::bind(any).await?);
        }
        let orch = addrs.pop().expect("four listeners");
        let ord_l = addrs.pop().expect("four listeners");
        let loy_l = addrs.pop().expect("four listeners");
        let inv_l = addrs.pop().expect("four listeners");
        let url = format!("http://{}", orch.local_addr()?);
        let checkout = FloorCheckout {
            inventory: InventoryServiceClient::new(lazy_channel(inv_l.local_addr()?)?),
            loyalty: LoyaltyServiceClient::new(lazy_channel(loy_l.local_addr()?)?),
            order: OrderServiceClient::new(lazy_channel(ord_l.local_addr()?)?),
        };
        let serve = |listener: TcpListener, router: tonic::service::Routes| {
            let mut rx = stop_rx.clone();
            async move {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let _ = tonic::transport::Server::builder()
                    .add_routes(router)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }
        };
        use tonic::service::Routes;
        tasks.spawn(serve(
            inv_l,
            Routes::new(InventoryServiceServer::new(NoopInventory)),
        ));
        tasks.spawn(serve(
            loy_l,
            Routes::new(LoyaltyServiceServer::new(NoopLoyalty)),
        ));
        tasks.spawn(serve(
            ord_l,
            Routes::new(OrderServiceServer::new(NoopOrder)),
        ));
        tasks.spawn(serve(
            orch,
            Routes::new(CheckoutServiceServer::new(checkout)),
        ));
        Ok(Self { url, stop, tasks })
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

// ---------------------------------------------------------------- mesh

fn mesh_config(dir: &Path, durable: Durable) -> MeshConfig {
    let mut config = MeshConfig::ephemeral(dir);
    config.durable = durable;
    config
}

async fn start_mesh(dir: &Path, durable: Durable) -> anyhow::Result<Mesh> {
    Mesh::start(mesh_config(dir, durable))
        .await
        .context("cannot start the in-process mesh")
}

/// Products with a stock no run exhausts, and (if orders redeem points)
/// customers holding plenty of points.
async fn seed(
    inventory_url: &str,
    loyalty_url: &str,
    skus: &[String],
    redeem_points: bool,
) -> anyhow::Result<()> {
    let inventory =
        InventoryServiceClient::new(connect(inventory_url, Duration::from_secs(10)).await?);
    let mut tasks = JoinSet::new();
    for chunk in skus.chunks(64) {
        let mut client = inventory.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for sku in chunk {
                client
                    .put_product(inv::PutProductRequest {
                        sku: sku.clone(),
                        name: format!("Bench item {sku}"),
                        unit_price: 10_000,
                        stock: 1_000_000_000,
                    })
                    .await?;
            }
            Ok::<_, Status>(())
        });
    }
    if redeem_points {
        let loyalty =
            LoyaltyServiceClient::new(connect(loyalty_url, Duration::from_secs(10)).await?);
        for c in 0..1000 {
            let mut client = loyalty.clone();
            tasks.spawn(async move {
                client
                    .grant_points(loy::GrantPointsRequest {
                        customer_id: customer(c),
                        points: 1_000_000_000,
                    })
                    .await?;
                Ok(())
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined?.context("seeding failed")?;
    }
    Ok(())
}

async fn seed_mesh(mesh: &Mesh, skus: &[String], redeem_points: bool) -> anyhow::Result<()> {
    seed(
        &format!("http://{}", mesh.addrs.inventory),
        &format!("http://{}", mesh.addrs.loyalty),
        skus,
        redeem_points,
    )
    .await
}

/// A protobuf timestamp's `(seconds, nanos)` in milliseconds.
fn millis(ts: Option<(i64, i32)>) -> Option<f64> {
    ts.map(|(s, n)| s as f64 * 1000.0 + f64::from(n) / 1e6)
}

/// Mean time per step over `saga_ids`, read back with GetSaga.
async fn step_times(url: &str, saga_ids: &[String]) -> anyhow::Result<Vec<StepTime>> {
    let admin = SagaAdminServiceClient::new(connect(url, Duration::from_secs(10)).await?);
    let mut sums: BTreeMap<usize, (String, f64, usize)> = BTreeMap::new();
    let mut rest = (0.0, 0usize);
    for id in saga_ids {
        let saga = admin
            .clone()
            .get_saga(pb::GetSagaRequest {
                saga_id: id.clone(),
            })
            .await?
            .into_inner()
            .saga
            .context("GetSaga answered no saga")?;
        let mut in_steps = 0.0;
        for (i, step) in saga.steps.iter().enumerate() {
            let entry = sums.entry(i).or_insert((step.name.clone(), 0.0, 0));
            let Some(run) = &step.action else { continue };
            if let (Some(a), Some(b)) = (
                millis(run.started_at.as_ref().map(|t| (t.seconds, t.nanos))),
                millis(run.finished_at.as_ref().map(|t| (t.seconds, t.nanos))),
            ) {
                entry.1 += b - a;
                entry.2 += 1;
                in_steps += b - a;
            }
        }
        if let (Some(a), Some(b)) = (
            millis(saga.created_at.as_ref().map(|t| (t.seconds, t.nanos))),
            millis(saga.updated_at.as_ref().map(|t| (t.seconds, t.nanos))),
        ) {
            rest.0 += (b - a) - in_steps;
            rest.1 += 1;
        }
    }
    let mut out: Vec<StepTime> = sums
        .into_values()
        .map(|(step, sum, n)| StepTime {
            step,
            mean_ms: if n == 0 { 0.0 } else { sum / n as f64 },
            samples: n,
        })
        .collect();
    out.push(StepTime {
        step: "outside steps (begin, result and completion writes)".into(),
        mean_ms: if rest.1 == 0 {
            0.0
        } else {
            rest.0 / rest.1 as f64
        },
        samples: rest.1,
    });
    Ok(out)
}

// ---------------------------------------------------------------- scenarios

fn place_input(sku: &str, caller: usize, redeem_points: bool) -> SagaInput {
    SagaInput::Place {
        customer_id: customer(caller),
        items: vec![CartLine {
            sku: sku.to_owned(),
            quantity: 1,
        }],
        coupon_code: String::new(),
        points_to_redeem: i64::from(redeem_points),
        shipping: Address {
            name: "Bench Customer".into(),
            address: "1 Loopback Road".into(),
            phone: "0900000000".into(),
        },
    }
}

/// A saga as `Engine::begin` creates it: RUNNING, every step pending.
fn running_record(tag: &str, i: usize, sku: &str, redeem_points: bool) -> SagaRecord {
    let now = now_ms();
    let mut record = SagaRecord {
        saga_id: format!("{tag}-{now}-{i:08}"),
        saga_type: SagaType::PlaceOrder,
        state: SagaState::Running,
        idempotency_key: format!("{tag}-key-{now}-{i}"),
        input: place_input(sku, i, redeem_points),
        steps: steps::definition(SagaType::PlaceOrder)
            .iter()
            .map(|d| StepRecord::new(d.name, d.description))
            .collect(),
        outputs: SagaOutputs::default(),
        history: Vec::new(),
        error: None,
        failure_reason: String::new(),
        failed_from: None,
        created_at_ms: now,
        updated_at_ms: now,
        seq: 0,
        lease_epoch: 0,
        trace_parent: None,
        waiting: None,
        waits: 0,
    };
    record.transition(SagaState::Running, "saga started");
    record
}

/// A PlaceOrder saga as it looks once COMPLETED (same shape and size as
/// the engine's: every step's run, the priced line, the order snapshot).
fn completed_record(i: usize, sku: &str) -> SagaRecord {
    let mut record = running_record("history", i, sku, false);
    for step in &mut record.steps {
        if step.name == "deduct-points" {
            step.action.status = StepStatus::Skipped;
        } else {
            step.action.status = StepStatus::Succeeded;
            step.action.attempts = 1;
            step.action.started_at_ms = Some(record.created_at_ms);
        }
        step.action.finished_at_ms = Some(record.created_at_ms);
    }
    record.outputs = SagaOutputs {
        lines: vec![PricedLine {
            sku: sku.to_owned(),
            name: format!("Bench item {sku}"),
            quantity: 1,
            unit_price: 10_000,
        }],
        order_id: Some(format!("ORD-history-{i:010}")),
        order_saga_id: None,
        order_customer_id: None,
        order_total: 61_000,
        // A real order's protobuf is ~250 bytes, kept hex-encoded.
        order_snapshot: Some("0a".repeat(250)),
    };
    record.transition(SagaState::Completed, "every step succeeded");
    record
}

/// Writes `records` through the `SagaLog` API, many at a time so the
/// group-commit writer packs them into few transactions.
async fn bulk_begin(
    log: &EmbeddedSagaLog,
    count: usize,
    make: impl Fn(usize) -> SagaRecord,
) -> anyhow::Result<()> {
    const IN_FLIGHT: usize = 4096;
    let mut i = 0;
    while i < count {
        let mut tasks = JoinSet::new();
        for j in i..(i + IN_FLIGHT).min(count) {
            let log = log.clone();
            let record = make(j);
            tasks.spawn(async move { log.begin(record).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined?.context("cannot write a saga to the log")?;
        }
        i += IN_FLIGHT;
    }
    Ok(())
}

async fn count_in_state(
    admin: &SagaAdminServiceClient<Channel>,
    state: pb::SagaState,
    at_most: usize,
) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut token = String::new();
    loop {
        let page = admin
            .clone()
            .list_sagas(pb::ListSagasRequest {
                state: state.into(),
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        count += page.sagas.len();
        if page.next_page_token.is_empty() || count >= at_most {
            return Ok(count);
        }
        token = page.next_page_token;
    }
}

async fn recovery_scenario(
    dir: &Path,
    opts: &BenchOptions,
    skus: &[String],
) -> anyhow::Result<RecoveryReport> {
    let mesh = start_mesh(dir, Durable::Yes).await?;
    seed_mesh(&mesh, skus, opts.redeem_points).await?;
    mesh.shutdown().await?;
    let n = opts.recovery_sagas;
    eprintln!("bench: writing {n} RUNNING sagas to the log (a crash with {n} in flight)");
    {
        let log = EmbeddedSagaLog::open(dir, Durable::Yes)?;
        bulk_begin(&log, n, |i| {
            running_record("recovery", i, &skus[i % skus.len()], opts.redeem_points)
        })
        .await?;
    }
    eprintln!("bench: restarting the mesh and timing recovery");
    let started = Instant::now();
    let mesh = start_mesh(dir, Durable::Yes).await?;
    let admin = SagaAdminServiceClient::new(
        connect(&mesh.orchestrator_url(), Duration::from_secs(10)).await?,
    );
    let give_up = started + Duration::from_secs(300);
    let mut finished = false;
    while Instant::now() < give_up {
        let busy = count_in_state(&admin, pb::SagaState::Running, 1).await?
            + count_in_state(&admin, pb::SagaState::Compensating, 1).await?;
        if busy == 0 {
            finished = true;
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    let recovery_s = started.elapsed().as_secs_f64();
    let completed = count_in_state(&admin, pb::SagaState::Completed, usize::MAX).await?;
    mesh.shutdown().await?;
    Ok(RecoveryReport {
        sagas: n,
        recovery_s,
        completed,
        not_completed: n.saturating_sub(completed),
        finished,
    })
}

async fn history_scenario(
    dir: &Path,
    opts: &BenchOptions,
    skus: &[String],
    rate: f64,
    empty_p50_ms: f64,
    empty_one_caller_p50_ms: f64,
) -> anyhow::Result<HistoryReport> {
    let n = usize::try_from(opts.history).unwrap_or(usize::MAX);
    eprintln!("bench: pre-filling the saga log with {n} completed sagas");
    let started = Instant::now();
    {
        let log = EmbeddedSagaLog::open(dir, Durable::Yes)?;
        bulk_begin(&log, n, |i| completed_record(i, &skus[i % skus.len()])).await?;
    }
    let prefill_s = started.elapsed().as_secs_f64();
    let log_bytes = std::fs::metadata(dir.join("orchestrator.redb")).map_or(0, |m| m.len());
    eprintln!("bench: pre-fill took {prefill_s:.1} s ({log_bytes} bytes); measuring");
    let mesh = start_mesh(dir, Durable::Yes).await?;
    seed_mesh(&mesh, skus, opts.redeem_points).await?;
    let load = Load::connect(
        &mesh.orchestrator_url(),
        opts.connections,
        Gen::new("history", skus.to_vec(), opts.redeem_points),
    )
    .await?;
    let (closed, _) = closed_loop(
        &load,
        opts.clients,
        secs(opts.warmup),
        secs(opts.duration),
        0,
    )
    .await;
    let (one_caller, _) = closed_loop(
        &load,
        1,
        secs(opts.warmup).min(Duration::from_millis(500)),
        secs(opts.duration).min(Duration::from_secs(3)),
        0,
    )
    .await;
    let half_peak = open_loop(&load, rate, secs(opts.warmup), secs(opts.duration)).await;
    mesh.shutdown().await?;
    Ok(HistoryReport {
        sagas: opts.history,
        prefill_s,
        log_bytes,
        one_caller_p50_ratio: ratio(one_caller.p50_ms, empty_one_caller_p50_ms),
        one_caller,
        empty_one_caller_p50_ms,
        p50_ratio: ratio(half_peak.p50_ms, empty_p50_ms),
        closed_loop: closed,
        half_peak,
        empty_p50_ms,
    })
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
    eprintln!("bench: saga, closed loop, {clients} callers");
    let (closed, ids) = closed_loop(&load, clients, warmup, duration, opts.step_sample).await;
    eprintln!("bench: saga, one caller");
    let short = duration.min(Duration::from_secs(3));
    let (unloaded, _) =
        closed_loop(&load, 1, warmup.min(Duration::from_millis(500)), short, 0).await;
    let half_rate = (closed.throughput_per_s * 0.5).max(1.0);
    eprintln!("bench: saga, open loop at {half_rate:.0}/s");
    let half = open_loop(&load, half_rate, warmup, duration).await;
    let steps = step_times(&url, &ids).await?;
    let hot = if opts.scenario == Scenario::Hot {
        let n = opts.hot_clients.max(1);
        eprintln!("bench: spread SKUs, {n} callers");
        let (spread, _) = closed_loop(&load, n, warmup, duration, 0).await;
        eprintln!("bench: one hot SKU, {n} callers");
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
        eprintln!("bench: floor, closed loop, {clients} callers");
        let (fc, _) = closed_loop(&load, clients, warmup, duration, 0).await;
        eprintln!("bench: floor, one caller");
        let (fu, _) = closed_loop(&load, 1, warmup.min(Duration::from_millis(500)), short, 0).await;
        eprintln!("bench: floor, open loop at {half_rate:.0}/s");
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
        eprintln!("bench: saga without fsync, closed loop, {clients} callers");
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
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(report)
}

/// Fills in the ratios.
fn finish(mut r: Report) -> Report {
    r.saga_floor_unloaded_p50_ratio = r
        .floor_unloaded
        .as_ref()
        .map(|f| ratio(r.unloaded.p50_ms, f.p50_ms));
    r.durable_nondurable_throughput_ratio = r
        .nondurable_throughput_per_s
        .map(|n| ratio(r.throughput_sagas_per_s, n));
    r
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.2}{unit}"))
}

fn lat(p: &PhaseStats) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2} ms",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms
    )
}

/// The results as a Markdown table (pasteable into `docs/performance.md`).
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "microshop bench: scenario {:?}, {}, durable commits, {}; {} s per phase, {} callers",
        r.scenario,
        r.target,
        if r.redeem_points {
            "orders redeem 1 point (deduct-points runs)"
        } else {
            "customers redeem no points (deduct-points skipped)"
        },
        r.duration_s,
        r.clients
    );
    let _ = writeln!(
        out,
        "machine: {}; load average {} at the start, {} at the end\n",
        r.machine, r.load_average[0], r.load_average[1]
    );
    let _ = writeln!(out, "| metric | measured | target | |");
    let _ = writeln!(out, "|---|---|---|---|");
    let mut row = |m: &str, v: String, t: &str, ok: Option<bool>| {
        let _ = writeln!(out, "| {m} | {v} | {t} | {} |", ok.map_or("", verdict));
    };
    row(
        &format!("throughput, closed loop ({} callers)", r.clients),
        format!("{:.0} sagas/s", r.throughput_sagas_per_s),
        "≥ 5,000/s",
        Some(r.throughput_sagas_per_s >= 5000.0),
    );
    row(
        &format!(
            "p50 at half peak ({:.0}/s, open loop)",
            r.half_peak_rate_per_s
        ),
        format!("{:.2} ms", r.p50_ms),
        "≤ 2 ms",
        Some(r.p50_ms <= 2.0),
    );
    row(
        "p99 at half peak",
        format!("{:.2} ms", r.p99_ms),
        "≤ 10 ms",
        Some(r.p99_ms <= 10.0),
    );
    row(
        "p90 / p99.9 at half peak",
        format!("{:.2} / {:.2} ms", r.p90_ms, r.p999_ms),
        "",
        None,
    );
    row(
        "saga p50 / floor p50, same rate",
        format!(
            "{} (floor p50 {}, p99 {})",
            opt(r.saga_floor_p50_ratio, "×"),
            opt(r.floor_p50_ms, " ms"),
            opt(r.floor_p99_ms, " ms")
        ),
        "≤ 1.5×",
        r.saga_floor_p50_ratio.map(|x| x <= 1.5),
    );
    row(
        "saga p50 / floor p50, one caller",
        format!(
            "{} ({:.2} ms vs {})",
            opt(r.saga_floor_unloaded_p50_ratio, "×"),
            r.unloaded.p50_ms,
            opt(r.floor_unloaded.as_ref().map(|f| f.p50_ms), " ms")
        ),
        "",
        None,
    );
    row(
        "floor throughput, closed loop",
        opt(r.floor_throughput_per_s, " calls/s"),
        "",
        None,
    );
    row(
        "durable / non-durable throughput",
        format!(
            "{} (non-durable {})",
            opt(r.durable_nondurable_throughput_ratio, "×"),
            opt(r.nondurable_throughput_per_s, " sagas/s")
        ),
        "",
        None,
    );
    row(
        "closed loop p50 / p90 / p99 / p99.9",
        lat(&r.closed_loop),
        "",
        None,
    );
    row(
        "one caller p50 / p90 / p99 / p99.9",
        lat(&r.unloaded),
        "",
        None,
    );
    row(
        "CPU per saga (whole process, load generator included)",
        format!(
            "{:.3} ms (floor {})",
            r.cpu_ms_per_saga,
            opt(
                r.floor_closed_loop.as_ref().map(|f| f.cpu_ms_per_call),
                " ms"
            )
        ),
        "",
        None,
    );
    row(
        "peak RSS (VmHWM, whole run)",
        format!("{:.1} MiB", r.rss_peak_mb),
        "≤ 150 MB",
        Some(r.rss_peak_mb <= 150.0),
    );
    if let Some(h) = &r.hot {
        row(
            &format!("hot SKU / spread throughput ({} callers)", h.clients),
            format!(
                "{:.0}% ({:.0} vs {:.0} sagas/s; hot p50 {:.1} ms, p99 {:.1} ms)",
                h.hot_spread_throughput_ratio * 100.0,
                h.hot.throughput_per_s,
                h.spread.throughput_per_s,
                h.hot.p50_ms,
                h.hot.p99_ms
            ),
            "≥ 50%",
            Some(h.hot_spread_throughput_ratio >= 0.5),
        );
    }
    if let Some(h) = &r.history {
        row(
            &format!(
                "p50 with {} sagas in the log / empty log, one caller",
                h.sagas
            ),
            format!(
                "{:.2}× ({:.2} vs {:.2} ms; pre-fill {:.1} s, log {:.0} MiB)",
                h.one_caller_p50_ratio,
                h.one_caller.p50_ms,
                h.empty_one_caller_p50_ms,
                h.prefill_s,
                h.log_bytes as f64 / 1_048_576.0
            ),
            "≤ 1.2×",
            Some(h.one_caller_p50_ratio <= 1.2),
        );
        row(
            &format!(
                "p50 with {} sagas in the log / empty log, half peak",
                h.sagas
            ),
            format!(
                "{:.2}× ({:.2} vs {:.2} ms; p99 {:.2} ms; closed loop {:.0}/s)",
                h.p50_ratio,
                h.half_peak.p50_ms,
                h.empty_p50_ms,
                h.half_peak.p99_ms,
                h.closed_loop.throughput_per_s,
            ),
            "",
            None,
        );
    }
    if let Some(rec) = &r.recovery {
        row(
            &format!("recovery of {} unfinished sagas", rec.sagas),
            format!(
                "{:.2} s ({} completed, {} not{})",
                rec.recovery_s,
                rec.completed,
                rec.not_completed,
                if rec.finished {
                    ""
                } else {
                    "; gave up waiting"
                }
            ),
            "≤ 10 s",
            Some(rec.finished && rec.recovery_s <= 10.0),
        );
    }
    let errors = r.closed_loop.errors + r.half_peak.errors + r.unloaded.errors;
    if errors > 0 {
        let why = [&r.closed_loop, &r.half_peak, &r.unloaded]
            .iter()
            .find_map(|p| p.first_error.clone())
            .unwrap_or_default();
        row(
            "failed calls",
            format!("{errors} ({why})"),
            "0",
            Some(false),
        );
    }
    let _ = writeln!(
        out,
        "\nTime per step (mean of {} sagas, from GetSaga timestamps; a step runs from its intent write to its RPC's answer):\n",
        r.steps.last().map_or(0, |s| s.samples)
    );
    let _ = writeln!(out, "| step | mean ms |");
    let _ = writeln!(out, "|---|---|");
    for s in &r.steps {
        if s.samples == 0 {
            let _ = writeln!(out, "| {} | skipped |", s.step);
        } else {
            let _ = writeln!(out, "| {} | {:.2} |", s.step, s.mean_ms);
        }
    }
    out
}

fn print_table(r: &Report) {
    println!("{}", table(r));
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
        ] {
            assert!(
                value.get(key).is_some_and(|v| !v.is_null()),
                "{key} missing or null"
            );
        }
        let steps: Vec<&str> = report.steps.iter().map(|s| s.step.as_str()).collect();
        assert!(steps.contains(&"reserve-stock"), "{steps:?}");
    }
}
