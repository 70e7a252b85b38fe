//! One configuration's run in a child process: the process counters read
//! from /proc, the disk probe, and the driver of the `seq`, `conc` and
//! `rate` loads; apart from the engines so each is measured the same way.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::{FileExt, MetadataExt},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    Res,
    append_store::AppendStore,
    fjall_store::{FjallStore, FjallSync},
    kv::{
        INVENTORY_TABLES, KvMesh, LOG_TABLES, ORDER_TABLES, T_COUPONS, T_INV_BARRIER, T_KEYS,
        T_META, T_ORDER_BARRIER, T_ORDER_META, T_PRODUCTS,
    },
    options::{Enc, Engine, Knobs, Load},
    redb_mesh::{RedbNone, RedbNow},
    saga::{Gen, Mesh, run_saga},
};

/// Process counters from /proc/self.
#[derive(Clone, Copy, Debug)]
struct Proc {
    cpu_ticks: u64,
    write_bytes: u64,
}

fn proc_now() -> Res<Proc> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').ok_or("bad /proc/self/stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); `after` starts at field 3.
    let cpu_ticks = f.get(11).ok_or("no utime")?.parse::<u64>()?
        + f.get(12).ok_or("no stime")?.parse::<u64>()?;
    let io = std::fs::read_to_string("/proc/self/io")?;
    let write_bytes = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .ok_or("no write_bytes")?
        .trim()
        .parse()?;
    Ok(Proc {
        cpu_ticks,
        write_bytes,
    })
}

/// Clock ticks per second of /proc/self/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Disk blocks allocated under `dir` (sparse preallocation not counted).
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    total += disk_usage(&e.path());
                } else {
                    total += m.blocks() * 512;
                }
            }
        }
    }
    total
}

/// Disk blocks of the saga log alone (`orchestrator*` under `dir`).
pub(crate) fn log_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("orchestrator"))
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        disk_usage(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.blocks() * 512)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

pub(crate) fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// p50 and p99 (µs) of `small write + fdatasync` on `dir`'s disk: in place
/// (pwrite at offset 0) and appending.
pub(crate) fn fdatasync_probe(dir: &Path, n: usize) -> Res<(f64, f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fdatasync-probe");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [7u8; 512];
    f.write_all(&block)?;
    f.sync_all()?;
    let mut in_place = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all_at(&block, 0)?;
        f.sync_data()?;
        in_place.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let mut append = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        append.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    drop(f);
    std::fs::remove_file(&path)?;
    in_place.sort_unstable();
    append.sort_unstable();
    Ok((pct(&in_place, 0.5), pct(&in_place, 0.99), pct(&append, 0.5)))
}

/// The result of one configuration's run (one child process).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RunResult {
    pub(crate) engine: String,
    pub(crate) encoding: String,
    pub(crate) load: String,
    pub(crate) repeat: usize,
    pub(crate) sagas: u64,
    elapsed_s: f64,
    pub(crate) sagas_per_s: f64,
    pub(crate) cpu_us_per_saga: f64,
    pub(crate) bytes_per_saga: f64,
    /// Also counting what the engine still held in memory at the end
    /// (fjall memtables, flushed after the run).
    pub(crate) bytes_per_saga_flushed: f64,
    pub(crate) fsyncs_per_saga: Option<f64>,
    /// Saga log record bytes per saga (all 4 writes).
    pub(crate) log_record_bytes: f64,
    pub(crate) write_p50_us: f64,
    pub(crate) write_p99_us: f64,
    pub(crate) saga_p50_us: f64,
    pub(crate) saga_p99_us: f64,
    pub(crate) peak_rss_mb: f64,
    disk_mb: f64,
    /// fsync + fdatasync syscalls per saga, from strace -c (strace pass).
    pub(crate) strace_fsyncs_per_saga: Option<f64>,
    /// The machine's 1-minute load average when the run started.
    pub(crate) loadavg: f64,
}

pub(crate) fn open_mesh_and_run(
    engine: Engine,
    enc: Enc,
    load: Load,
    dir: &Path,
    knobs: &Knobs,
) -> Res<RunResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match engine {
            Engine::RedbNow => drive(Arc::new(RedbNow::open(dir)?), enc, load, dir, knobs).await,
            Engine::RedbNone => drive(Arc::new(RedbNone::open(dir)?), enc, load, dir, knobs).await,
            Engine::Fjall | Engine::FjallSide | Engine::FjallSync => {
                let mesh = fjall_mesh(dir, FjallSync::of(engine), knobs)?;
                drive(Arc::new(mesh), enc, load, dir, knobs).await
            }
            Engine::Append => {
                let mesh = KvMesh {
                    log: AppendStore::open(
                        dir,
                        "orchestrator",
                        LOG_TABLES.len(),
                        &[T_KEYS, T_META],
                    )?,
                    inventory: AppendStore::open(
                        dir,
                        "inventory",
                        INVENTORY_TABLES.len(),
                        &[T_PRODUCTS, T_INV_BARRIER],
                    )?,
                    orders: AppendStore::open(
                        dir,
                        "order",
                        ORDER_TABLES.len(),
                        &[T_COUPONS, T_ORDER_META, T_ORDER_BARRIER],
                    )?,
                };
                drive(Arc::new(mesh), enc, load, dir, knobs).await
            }
        }
    })
}

pub(crate) fn fjall_mesh(dir: &Path, mode: FjallSync, knobs: &Knobs) -> Res<KvMesh<FjallStore>> {
    Ok(KvMesh {
        log: FjallStore::open(dir, "orchestrator", &LOG_TABLES, mode, knobs)?,
        inventory: FjallStore::open(dir, "inventory", &INVENTORY_TABLES, mode, knobs)?,
        orders: FjallStore::open(dir, "order", &ORDER_TABLES, mode, knobs)?,
    })
}

async fn drive<M: Mesh>(
    mesh: Arc<M>,
    enc: Enc,
    load: Load,
    dir: &Path,
    knobs: &Knobs,
) -> Res<RunResult> {
    mesh.seed().await?;
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let gen_ = Arc::new(Gen::new());
    let secs = Duration::from_secs_f64(knobs.secs);
    let before = proc_now()?;
    let syncs_before = mesh.syncs();
    let start = Instant::now();
    let mut writes = Vec::new();
    let mut sagas_lat = Vec::new();
    let mut log_bytes = 0usize;
    let mut sagas = 0u64;
    match load {
        Load::Seq => {
            while start.elapsed() < secs {
                let t = Instant::now();
                let (b, ..) = run_saga(&*mesh, enc, &gen_, 0, Some(&mut writes)).await?;
                sagas_lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                log_bytes += b.log;
                sagas += 1;
            }
        }
        Load::Conc => {
            let mut tasks = Vec::with_capacity(knobs.callers);
            for caller in 0..knobs.callers {
                let mesh = Arc::clone(&mesh);
                let gen_ = Arc::clone(&gen_);
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut bytes = 0usize;
                    let mut lat = Vec::new();
                    while start.elapsed() < secs {
                        let t = Instant::now();
                        let (b, ..) = run_saga(&*mesh, enc, &gen_, caller, None).await?;
                        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                        bytes += b.log;
                        n += 1;
                    }
                    Res::Ok((n, bytes, lat))
                }));
            }
            for t in tasks {
                let (n, b, lat) = t.await??;
                sagas += n;
                log_bytes += b;
                sagas_lat.extend(lat);
            }
        }
        Load::Rate => {
            // Open loop: a saga starts every 1/rate s whatever the others
            // do (at most 2,048 in flight; the rest are not started).
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / knobs.rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let in_flight = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            let mut caller = 0;
            while start.elapsed() < secs {
                ticker.tick().await;
                if in_flight.load(Ordering::Relaxed) >= 2048 {
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (mesh, gen_, in_flight) =
                    (Arc::clone(&mesh), Arc::clone(&gen_), Arc::clone(&in_flight));
                caller += 1;
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let out = run_saga(&*mesh, enc, &gen_, caller, None).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let (b, ..) = out?;
                    Res::Ok((
                        b.log,
                        u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX),
                    ))
                }));
            }
            for t in tasks {
                let (b, lat) = t.await??;
                sagas += 1;
                log_bytes += b;
                sagas_lat.push(lat);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = proc_now()?;
    let syncs = mesh.syncs().zip(syncs_before).map(|(a, b)| a - b);
    mesh.settle()?;
    let settled = proc_now()?;
    writes.sort_unstable();
    sagas_lat.sort_unstable();
    let n = sagas.max(1) as f64;
    Ok(RunResult {
        sagas,
        elapsed_s: elapsed,
        sagas_per_s: sagas as f64 / elapsed,
        cpu_us_per_saga: (after.cpu_ticks - before.cpu_ticks) as f64 / TICKS * 1e6 / n,
        bytes_per_saga: (after.write_bytes - before.write_bytes) as f64 / n,
        bytes_per_saga_flushed: (settled.write_bytes - before.write_bytes) as f64 / n,
        fsyncs_per_saga: syncs.map(|s| s as f64 / n),
        log_record_bytes: log_bytes as f64 / n,
        write_p50_us: pct(&writes, 0.5),
        write_p99_us: pct(&writes, 0.99),
        saga_p50_us: pct(&sagas_lat, 0.5),
        saga_p99_us: pct(&sagas_lat, 0.99),
        peak_rss_mb: peak_rss_mb(),
        disk_mb: disk_usage(dir) as f64 / 1e6,
        loadavg,
        ..RunResult::default()
    })
}
