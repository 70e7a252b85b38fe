//! The load generator: PlaceOrder callers over HTTP/2 connections to one
//! CheckoutService (the mesh's or the floor's), in a closed loop (each
//! caller calls again once answered: the peak) or an open loop (arrivals
//! at a fixed rate whatever the latency: the latency targets), and the
//! tally of what they saw, with the process's CPU time over the window.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use hdrhistogram::Histogram;
use microshop_proto::orchestrator::v1::{
    self as pb, checkout_service_client::CheckoutServiceClient,
};
use orchestrator::model::now_ms;
use tokio::{
    task::JoinSet,
    time::{Instant, sleep, sleep_until},
};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint},
};

use super::PhaseStats;

/// Builds PlaceOrder requests: unique keys, spread or hot SKUs.
pub(super) struct Gen {
    prefix: String,
    skus: Vec<String>,
    redeem_points: bool,
    seq: AtomicU64,
}

impl Gen {
    pub(super) fn new(tag: &str, skus: Vec<String>, redeem_points: bool) -> Arc<Self> {
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

pub(super) fn customer(caller: usize) -> String {
    format!("bench-customer-{}", caller % 1000)
}

pub(super) fn sku_names(n: usize) -> Vec<String> {
    (0..n.max(1)).map(|i| format!("BENCH-{i:06}")).collect()
}

/// Callers of one CheckoutService (the mesh's or the floor's).
#[derive(Clone)]
pub(super) struct Load {
    clients: Vec<CheckoutServiceClient<Channel>>,
    orders: Arc<Gen>,
}

impl Load {
    pub(super) async fn connect(
        url: &str,
        connections: usize,
        orders: Arc<Gen>,
    ) -> anyhow::Result<Self> {
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

    pub(super) fn with_gen(&self, orders: Arc<Gen>) -> Self {
        Self {
            clients: self.clients.clone(),
            orders,
        }
    }

    pub(super) async fn call(
        &self,
        caller: usize,
    ) -> Result<Response<pb::PlaceOrderResponse>, tonic::Status> {
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
            disk_bytes_per_call: 0.0,
            fsyncs_per_call: 0.0,
            context_switches_per_call: 0.0,
            cpu_ms_per_call: if self.ok == 0 {
                0.0
            } else {
                cpu_s * 1000.0 / self.ok as f64
            },
        }
    }
}

/// `callers` callers, each calling again as soon as it is answered.
pub(super) async fn closed_loop(
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
    let written0 = written_bytes();
    let fsyncs0 = fsyncs();
    let switches0 = context_switches();
    sleep_until(end).await;
    let cpu1 = cpu_seconds();
    let written1 = written_bytes();
    let fsyncs1 = fsyncs();
    let switches1 = context_switches();
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(t) = joined {
            total.merge(t);
        }
    }
    let mut stats = total.stats(duration, cpu1 - cpu0, None);
    stats.disk_bytes_per_call = (written1.saturating_sub(written0)) as f64 / stats.ok.max(1) as f64;
    stats.fsyncs_per_call = (fsyncs1.saturating_sub(fsyncs0)) as f64 / stats.ok.max(1) as f64;
    stats.context_switches_per_call =
        (switches1.saturating_sub(switches0)) as f64 / stats.ok.max(1) as f64;
    (stats, total.saga_ids)
}

/// Journal fsyncs the embedded stores of this process made so far.
fn fsyncs() -> u64 {
    microshop_storage::embedded::write_stats()
        .fsyncs
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Bytes this process caused to be written to storage so far
/// (`/proc/self/io` `write_bytes`: the stores' journals, flushes and
/// compactions; a page is counted each time it is dirtied again after an
/// fsync).
pub(super) fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Most calls an open loop keeps in flight before it drops arrivals. At
/// half of the mesh's peak a few dozen are in flight (rate × latency);
/// hundreds mean the mesh is not keeping up with the offered rate, and
/// queueing more only measures the queue while each waiting call holds
/// its buffers in every hop (20,000 of them took 2.5 GB): an arrival
/// beyond this is counted as an error instead.
const MAX_IN_FLIGHT: usize = 512;

/// Calls arriving at `rate` per second whatever the answers' latency.
/// Latency is measured from the moment each call is issued; the issuing
/// loop wakes every millisecond and issues every call due by then.
pub(super) async fn open_loop(
    load: &Load,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> PhaseStats {
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
            cpu0 = Some((cpu_seconds(), fsyncs(), context_switches()));
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
    let (cpu1, fsyncs1, switches1) = (cpu_seconds(), fsyncs(), context_switches());
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
    let (cpu0, fsyncs0, switches0) = cpu0.unwrap_or((cpu1, fsyncs1, switches1));
    let mut stats = tally.stats(duration, cpu1 - cpu0, Some(rate));
    // Per call answered in the window (the fsyncs of calls issued in it).
    stats.fsyncs_per_call = (fsyncs1.saturating_sub(fsyncs0)) as f64 / stats.ok.max(1) as f64;
    stats.context_switches_per_call =
        (switches1.saturating_sub(switches0)) as f64 / stats.ok.max(1) as f64;
    stats
}

// ---------------------------------------------------------------- process

/// Context switches of every thread of this process so far (voluntary and
/// not): the thread hand-offs and wake-ups a phase made, from the
/// difference between two progress lines.
pub(super) fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

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
