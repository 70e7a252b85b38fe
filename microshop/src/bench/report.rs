//! What a run measured ([`Report`] and its parts, serialised as the
//! `--json` file), the facts about the machine it ran on, and the
//! Markdown table printed at the end (pasteable into the docs).

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::{Scenario, ratio};

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
    /// Bytes the process wrote to storage per OK call (closed loops).
    pub disk_bytes_per_call: f64,
    /// Journal fsyncs the stores of this process made per OK call (0
    /// against a mesh in other processes, and for the floor).
    pub fsyncs_per_call: f64,
    /// Context switches of all threads of this process per OK call: each
    /// is a thread that blocked (a hand-off to another thread, an fsync,
    /// an idle runtime worker parking) or was preempted. Against the floor
    /// it shows what the saga's hand-offs cost one caller in wake-ups.
    pub context_switches_per_call: f64,
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
    /// Seconds the pre-fill took (writing, then compacting the log).
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
    /// Open loop over the full log at the empty log's half-peak rate, or
    /// at half of this log's own closed-loop peak where that is lower (its
    /// `offered_per_s` says which).
    pub half_peak: PhaseStats,
    /// Median at the empty log's half-peak rate on the empty log.
    pub empty_p50_ms: f64,
    /// full / empty p50 at half peak (each at half of its own peak when
    /// the full log's is lower).
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
    /// Median of a 512-byte append and `fdatasync` on the data directory's
    /// disk, measured in this run.
    pub fsync_p50_ms: f64,
    /// Sequential fsyncs one checkout waits for (no points), as the stores
    /// count them with one caller (the creation's overlaps the quote).
    pub critical_path_fsyncs: Option<f64>,
    /// The same for a checkout that redeems points.
    pub critical_path_fsyncs_redeeming: Option<f64>,
    /// Bytes written to disk per completed saga across all stores, in the
    /// closed loop (`/proc/self/io` `write_bytes`).
    pub disk_bytes_per_saga: Option<f64>,
    /// Closed-loop throughput, saga over floor.
    pub ratio_throughput: Option<f64>,
    /// One-caller p50, saga over floor.
    pub ratio_one_caller_p50: Option<f64>,
    /// p50 at the saga's half peak, saga over floor at the same rate.
    pub ratio_half_peak_p50: Option<f64>,
    /// p99 at the saga's half peak, saga over floor at the same rate.
    pub ratio_half_peak_p99: Option<f64>,
    /// CPU per saga over the floor's CPU per call chain.
    pub ratio_cpu: Option<f64>,
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

// ---------------------------------------------------------------- process

/// Peak resident set (VmHWM), MiB.
pub(super) fn rss_peak_mb() -> f64 {
    status_mb("VmHWM:")
}

/// A `/proc/self/status` figure given in kB, in MiB (0 where unreadable).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Says on stderr which phase starts, with the memory the run holds now
/// and at its peak so far: a peak over the target is then pinned to the
/// phase that made it.
pub(super) fn progress(what: &str) {
    eprintln!(
        "bench: {what} (resident {:.0} MiB, peak so far {:.0} MiB; {} context switches so far)",
        status_mb("VmRSS:"),
        rss_peak_mb(),
        super::load::context_switches()
    );
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(super) fn machine() -> String {
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

// ---------------------------------------------------------------- report

/// Fills in the ratios.
pub(super) fn finish(mut r: Report) -> Report {
    r.saga_floor_unloaded_p50_ratio = r
        .floor_unloaded
        .as_ref()
        .map(|f| ratio(r.unloaded.p50_ms, f.p50_ms));
    r.durable_nondurable_throughput_ratio = r
        .nondurable_throughput_per_s
        .map(|n| ratio(r.throughput_sagas_per_s, n));
    r.ratio_throughput = r
        .floor_throughput_per_s
        .map(|f| ratio(r.throughput_sagas_per_s, f));
    r.ratio_one_caller_p50 = r.saga_floor_unloaded_p50_ratio;
    r.ratio_half_peak_p50 = r
        .floor_half_peak
        .as_ref()
        .map(|f| ratio(r.half_peak.p50_ms, f.p50_ms));
    r.ratio_half_peak_p99 = r
        .floor_half_peak
        .as_ref()
        .map(|f| ratio(r.half_peak.p99_ms, f.p99_ms));
    r.ratio_cpu = r
        .floor_closed_loop
        .as_ref()
        .map(|f| ratio(r.cpu_ms_per_saga, f.cpu_ms_per_call));
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

/// A row of the table: metric, measured, target, met.
type Row<'a> = dyn FnMut(&str, String, &str, Option<bool>) + 'a;

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
    let ratio_row = |row: &mut Row<'_>,
                     m: &str,
                     v: Option<f64>,
                     detail: String,
                     target: &str,
                     ok: fn(f64) -> bool| {
        row(m, format!("{} ({detail})", opt(v, "×")), target, v.map(ok));
    };
    ratio_row(
        &mut row,
        &format!(
            "throughput, closed loop ({} callers), saga / floor",
            r.clients
        ),
        r.ratio_throughput,
        format!(
            "{:.0} sagas/s vs {}",
            r.throughput_sagas_per_s,
            opt(r.floor_throughput_per_s, " calls/s")
        ),
        "≥ 0.6× (halfway 0.5×)",
        |x| x >= 0.6,
    );
    ratio_row(
        &mut row,
        "one caller p50, saga / floor",
        r.ratio_one_caller_p50,
        format!(
            "{:.2} ms vs {}",
            r.unloaded.p50_ms,
            opt(r.floor_unloaded.as_ref().map(|f| f.p50_ms), " ms")
        ),
        "≤ 2× (halfway 3×)",
        |x| x <= 2.0,
    );
    ratio_row(
        &mut row,
        &format!(
            "p50 at half peak ({:.0}/s), saga / floor at the same rate",
            r.half_peak_rate_per_s
        ),
        r.ratio_half_peak_p50,
        format!("{:.2} ms vs {}", r.p50_ms, opt(r.floor_p50_ms, " ms")),
        "≤ 3× (halfway 6×)",
        |x| x <= 3.0,
    );
    ratio_row(
        &mut row,
        "p99 at half peak, saga / floor at the same rate",
        r.ratio_half_peak_p99,
        format!("{:.2} ms vs {}", r.p99_ms, opt(r.floor_p99_ms, " ms")),
        "≤ 4×",
        |x| x <= 4.0,
    );
    ratio_row(
        &mut row,
        "CPU per saga / floor CPU per call chain",
        r.ratio_cpu,
        format!(
            "{:.3} ms vs {}; whole process, load generator included",
            r.cpu_ms_per_saga,
            opt(
                r.floor_closed_loop.as_ref().map(|f| f.cpu_ms_per_call),
                " ms"
            )
        ),
        "≤ 1.6×",
        |x| x <= 1.6,
    );
    row(
        "bytes written per saga, all stores",
        r.disk_bytes_per_saga
            .map_or_else(|| "n/a".into(), |b| format!("{:.1} KB", b / 1000.0)),
        "≤ 8 KB (halfway 16 KB)",
        r.disk_bytes_per_saga.map(|b| b <= 8_000.0),
    );
    row(
        "sequential fsyncs per checkout (counted; the creation's overlaps the quote)",
        format!(
            "{} without points, {} redeeming; fdatasync p50 {:.3} ms",
            opt(r.critical_path_fsyncs, ""),
            opt(r.critical_path_fsyncs_redeeming, ""),
            r.fsync_p50_ms
        ),
        "",
        None,
    );
    row(
        "fsyncs per saga, all stores (group commit: one fsync covers every write queued behind it)",
        format!(
            "{:.2} closed loop, {:.2} at half peak",
            r.closed_loop.fsyncs_per_call, r.half_peak.fsyncs_per_call
        ),
        "",
        None,
    );
    let floor_switches = |f: &Option<PhaseStats>| {
        f.as_ref().map_or_else(String::new, |f| {
            format!(" vs floor {:.1}", f.context_switches_per_call)
        })
    };
    row(
        "context switches per saga (hand-offs, fsyncs, parked workers), one caller / closed loop",
        format!(
            "{:.1}{} / {:.1}{}",
            r.unloaded.context_switches_per_call,
            floor_switches(&r.floor_unloaded),
            r.closed_loop.context_switches_per_call,
            floor_switches(&r.floor_closed_loop),
        ),
        "",
        None,
    );
    row(
        "p50 / p99 / p90 / p99.9 at half peak",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} ms",
            r.p50_ms, r.p99_ms, r.p90_ms, r.p999_ms
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
                "{:.2}× ({:.2} vs {:.2} ms at {:.0}/s; p99 {:.2} ms; closed loop {:.0}/s)",
                h.p50_ratio,
                h.half_peak.p50_ms,
                h.empty_p50_ms,
                h.half_peak.offered_per_s.unwrap_or_default(),
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

pub(super) fn print_table(r: &Report) {
    println!("{}", table(r));
}

/// Writes `report` as pretty JSON to `path`.
pub(super) fn write_json(report: &Report, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    progress(&format!("wrote {}", path.display()));
    Ok(())
}
