//! The bonus measurements (`--point-read`, `--retention`): apart because
//! they load the engines differently from the main configurations.

use std::{
    fmt::Write as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    Res,
    fjall_store::FjallSync,
    measure::{disk_usage, fjall_mesh, log_usage, pct, peak_rss_mb},
    options::{Enc, Engine, Knobs},
    records::NewOrder,
    redb_mesh::{RedbNone, RedbNow},
    saga::{BeginRec, Gen, Mesh, SaveRec, run_saga},
};

/// Point reads of saga records after `n` sagas are in the log (compact
/// records, filled by batches of non-durable writes), then the one-caller
/// durable write latency at that size.
pub(crate) fn point_read_bonus(engine: Engine, dir: &Path, n: u64, knobs: &Knobs) -> Res<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match engine {
            Engine::RedbNone => {
                point_read_on(Arc::new(RedbNone::open(dir)?), engine, dir, n, knobs).await
            }
            Engine::Fjall | Engine::FjallSide => {
                let mesh = fjall_mesh(dir, FjallSync::of(engine), knobs)?;
                point_read_on(Arc::new(mesh), engine, dir, n, knobs).await
            }
            _ => Err("point-read bonus runs on redb-none and fjall".into()),
        }
    })
}

/// Captures a saga's begin and last save instead of writing them.
#[derive(Default)]
struct Recorder {
    begin: Mutex<Option<BeginRec>>,
    save: Mutex<Option<SaveRec>>,
}

impl Mesh for Recorder {
    async fn seed(&self) -> Res<()> {
        Ok(())
    }
    async fn begin(&self, b: BeginRec) -> Res<u64> {
        *self.begin.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
        Ok(0)
    }
    async fn save(&self, s: SaveRec) -> Res<()> {
        *self.save.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        Ok(())
    }
    async fn reserve(&self, _: String, _: String, _: i64) -> Res<()> {
        Ok(())
    }
    async fn create_order(&self, _: NewOrder) -> Res<()> {
        Ok(())
    }
    fn syncs(&self) -> Option<u64> {
        None
    }
}

async fn one_caller_p50(mesh: &impl Mesh, gen_: &Gen, secs: f64) -> Res<(f64, f64)> {
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let t = Instant::now();
        run_saga(mesh, Enc::Compact, gen_, 0, None).await?;
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    lat.sort_unstable();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

async fn point_read_on<M: Mesh>(
    mesh: Arc<M>,
    engine: Engine,
    dir: &Path,
    n: u64,
    knobs: &Knobs,
) -> Res<String> {
    mesh.seed().await?;
    let gen_ = Gen::new();
    let empty = one_caller_p50(&*mesh, &gen_, knobs.secs).await?;
    // Fill: compact records (begin + final save of each saga), 1,000 sagas
    // per transaction, durable per batch.
    let t = Instant::now();
    let rec = Recorder::default();
    let mut ids = Vec::new();
    let mut filled = 0;
    while filled < n {
        let mut batch = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let (_, id, ..) = run_saga(&rec, Enc::Compact, &gen_, 0, None).await?;
            let b = rec.begin.lock().unwrap_or_else(|e| e.into_inner()).take();
            let s = rec.save.lock().unwrap_or_else(|e| e.into_inner()).take();
            batch.push((b.ok_or("no begin")?, s.ok_or("no save")?));
            if filled % 64 == 0 {
                ids.push(id);
            }
            filled += 1;
        }
        mesh.fill(batch).await?;
    }
    let fill_s = t.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = &ids[usize::try_from(x % ids.len() as u64).unwrap_or(0)];
        let t = Instant::now();
        mesh.get_saga(id)?.ok_or("saga not found")?;
        lat.push(u32::try_from(t.elapsed().as_nanos() / 100).unwrap_or(u32::MAX));
    }
    lat.sort_unstable();
    let full = one_caller_p50(&*mesh, &gen_, knobs.secs).await?;
    // Again once background work of the fill (fjall's compactions) had
    // 30 s to catch up.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let later = one_caller_p50(&*mesh, &gen_, knobs.secs).await?;
    Ok(format!(
        "{}: {filled} sagas filled in {fill_s:.0} s, {:.0} MB on disk; point read of a saga record p50 {:.1} µs p99 {:.1} µs; one-caller saga p50/p99 {:.0}/{:.0} µs empty, {:.0}/{:.0} µs right after the fill (ratio {:.2}), {:.0}/{:.0} µs 30 s later (ratio {:.2}); peak RSS {:.0} MB",
        engine.name(),
        disk_usage(dir) as f64 / 1e6,
        pct(&lat, 0.5) / 10.0,
        pct(&lat, 0.99) / 10.0,
        empty.0,
        empty.1,
        full.0,
        full.1,
        full.0 / empty.0.max(1.0),
        later.0,
        later.1,
        later.0 / empty.0.max(1.0),
        peak_rss_mb(),
    ))
}

fn g_count(g: &Gen) -> u64 {
    g.n.load(Ordering::Relaxed)
}

/// Constant load (64 callers, JSON records) with the saga log purged down
/// to its newest 20,000 sagas; prints the log's and all files' size
/// (participant records are never purged here, so "all" grows).
pub(crate) fn retention_bonus(engine: Engine, dir: &Path, secs: f64, knobs: &Knobs) -> Res<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match engine {
            Engine::RedbNow => retention_on(Arc::new(RedbNow::open(dir)?), engine, dir, secs).await,
            Engine::RedbNone => {
                retention_on(Arc::new(RedbNone::open(dir)?), engine, dir, secs).await
            }
            Engine::Fjall | Engine::FjallSide => {
                let mesh = fjall_mesh(dir, FjallSync::of(engine), knobs)?;
                retention_on(Arc::new(mesh), engine, dir, secs).await
            }
            _ => Err("retention bonus runs on redb-now, redb-none and fjall".into()),
        }
    })
}

async fn retention_on<M: Mesh>(mesh: Arc<M>, engine: Engine, dir: &Path, secs: f64) -> Res<String> {
    const KEEP: usize = 20_000;
    mesh.seed().await?;
    let gen_ = Arc::new(Gen::new());
    let done = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for caller in 0..64 {
        let (mesh, gen_, done, stop) = (
            Arc::clone(&mesh),
            Arc::clone(&gen_),
            Arc::clone(&done),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (_, id, key, seq) = run_saga(&*mesh, Enc::Json, &gen_, caller, None).await?;
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((id, key, seq));
            }
            Res::Ok(())
        }));
    }
    let mut out = format!("{} (json records, keep newest {KEEP}):", engine.name());
    let start = Instant::now();
    let mut next = 1.0;
    while start.elapsed().as_secs_f64() < secs {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let old: Vec<_> = {
            let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
            let extra = d.len().saturating_sub(KEEP);
            d.drain(..extra).collect()
        };
        if !old.is_empty() {
            mesh.purge(old).await?;
        }
        if start.elapsed().as_secs_f64() >= next {
            let _ = write!(
                out,
                " {:.0}s:{} sagas/log {:.1} MB/all {:.1} MB",
                next,
                g_count(&gen_),
                log_usage(dir) as f64 / 1e6,
                disk_usage(dir) as f64 / 1e6
            );
            next += (secs / 6.0).max(1.0);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(out)
}
