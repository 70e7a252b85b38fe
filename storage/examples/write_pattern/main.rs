//! Replays the checkout saga's write pattern against candidate storage
//! engines, to pick the engine (and the saga record's shape) of the new
//! durable write path (issue 14) from numbers rather than from theory.
//!
//! One "saga" is what a checkout without points writes today:
//! - the saga log (orchestrator store): begin (record + idempotency key +
//!   seq counter + creation index + state index + unfinished set), then 3
//!   saves of the record (the last one moves the state indexes);
//! - inventory reserve: barrier check, read-modify-write of 1 product among
//!   1,000, the reservation, the barrier record;
//! - order create: barrier check, coupon read, the order (~1 KB JSON), the
//!   customer index, the order seq counter, the barrier record.
//!
//! Each store is its own database (files) as in the mesh, and each of the 6
//! writes is durable (fsync'd) before the caller goes on, as the durability
//! rule asks today. Engines:
//! - `redb-now`: the mesh's redb group-commit writer before the move to
//!   fjall (`redb_group.rs`: writer thread, group commit,
//!   durable commits), with the stores' table layout and barrier of then:
//!   what the mesh ran when this measurement picked its engine;
//! - `redb-none`: redb written from the calling task with
//!   `Durability::None` commits; a sync thread makes every commit so far
//!   durable with one empty `Durability::Immediate` commit, shared by every
//!   waiter (group fsync);
//! - `fjall`: fjall 3 `SingleWriterTxDatabase`, one keyspace per table,
//!   transactions committed from the calling task with no persist, and the
//!   same group fsync through one `persist(PersistMode::SyncData)`;
//! - `fjall-side`: fjall as above, but the group sync only moves the
//!   journal's buffer to the OS under fjall's journal lock
//!   (`persist(PersistMode::Buffer)`) and runs `fdatasync` on its own handle
//!   of the active journal file outside it, so writers never wait behind an
//!   fsync (`persist(SyncData)` holds the journal mutex during the fsync).
//!   Relies on the journal's file naming (`<db>/<n>.jnl`) and on a journal
//!   rotation syncing the sealed journal itself: a measurement of what the
//!   lock costs, not an API;
//! - `fjall-sync`: fjall with `PersistMode::SyncData` on every transaction;
//! - `append`: an append-only file per store (+ in-memory state for what is
//!   read back) with group `fdatasync`: the lower bound of any engine.
//!
//! Saga record encodings: `json` (today: a state byte + the ~2-6 KB JSON
//! record rewritten whole on each save), `compact` (a prost record of a few
//! hundred bytes, rewritten whole), `delta` (the compact record at begin,
//! then ~20-50 B prost deltas appended under `(saga_id, n)`). Participant
//! records stay JSON in every case.
//!
//! Loads: `seq` (1 caller; latency of each durable write) and `conc` (256
//! tokio tasks for a few seconds: sagas/s, CPU µs/saga from
//! `/proc/self/stat`, bytes written per saga from `/proc/self/io`, fsyncs
//! per saga, peak RSS). Each configuration runs in its own child process,
//! so counters and VmHWM belong to it alone; repeats interleave the
//! configurations. The disk's own `fdatasync` latency is measured in the
//! same run.
//!
//! A third load, `rate`, starts sagas open loop at a fixed rate (default
//! 2,000/s), so engines are compared at the same throughput: group sizes,
//! and with them CPU and bytes per saga, depend on the rate.
//!
//! Columns: `B/saga` is `/proc/self/io` `write_bytes` during the run (page
//! granular: every fsync that re-dirties a file's tail page counts 4 KiB
//! again); `B/saga+flush` adds what fjall still held in memtables at the end,
//! flushed after the run; `fsync/saga` is counted in process (group syncs,
//! per-write syncs, redb `sync_data` calls through a counting backend; none
//! for `redb-now`, whose file `EmbeddedDb` opens itself); `strace` is the
//! fsync + fdatasync syscalls of the whole process under `strace -c` (seq
//! counts are exact; under load strace slows each fsync and changes the
//! group sizes); `log B` is the saga log record bytes per saga.
//!
//! fjall knobs (per database, i.e. per store): block cache 4 MiB (default
//! 32 MiB), memtable 4 MiB per keyspace (default 64 MiB), journals at most
//! 64 MiB (the minimum; default 512 MiB), 1 background worker (default
//! min(cores, 4)), `manual_journal_persist` (no write(2) per transaction),
//! no lz4 (the crate's only default feature: journal and block compression
//! off).
//!
//! Left out: gRPC and everything else the mesh spends CPU on, the quote's
//! reads, the loyalty store (no points), reads outside write transactions,
//! leases, payment deadlines, recovery.
//!
//! ```text
//! cargo run --release -p microshop-storage --example write_pattern -- \
//!     --dir /var/tmp/wp --secs 3 --repeats 3 --json /tmp/wp.json
//! ```
//! `--help` lists the options; `--strace` adds a pass counting the fsync
//! system calls of every configuration with `strace -c`; `--point-read N`
//! and `--retention S` run the bonus measurements.

use std::fmt::Write as _;

mod append_store;
mod bonus;
mod child;
mod fjall_store;
mod group_sync;
mod kv;
mod measure;
mod options;
mod records;
mod redb_group;
mod redb_mesh;
mod saga;

use self::{
    child::{child_main, spawn_child},
    measure::{RunResult, fdatasync_probe},
    options::{Enc, Engine, Load, parse_args},
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

fn fmt_range(
    rs: &[&RunResult],
    f: impl Fn(&RunResult) -> f64,
    scale: f64,
    digits: usize,
) -> String {
    let (lo, hi) = range(rs.iter().map(|r| f(r) / scale));
    if !lo.is_finite() {
        return "-".into();
    }
    if (hi - lo).abs() < 0.5 * 10f64.powi(-i32::try_from(digits).unwrap_or(0)) {
        format!("{lo:.digits$}")
    } else {
        format!("{lo:.digits$}–{hi:.digits$}")
    }
}

fn main() -> Res<()> {
    let args = parse_args()?;
    if let Some(spec) = &args.child {
        return child_main(spec, &args.dir, &args.knobs);
    }
    std::fs::create_dir_all(&args.dir)?;
    let probe_before = fdatasync_probe(&args.dir, 300)?;
    println!(
        "disk fdatasync (512 B): in place p50 {:.0} µs p99 {:.0} µs, append p50 {:.0} µs",
        probe_before.0, probe_before.1, probe_before.2
    );
    let mut results: Vec<RunResult> = Vec::new();
    let (engines, encodings) = (&args.engines, &args.encodings);
    let configs: Vec<(Engine, Enc, Load)> = args
        .loads
        .iter()
        .flat_map(|&l| {
            engines
                .iter()
                .flat_map(move |&e| encodings.iter().map(move |&c| (e, c, l)))
        })
        .collect();
    for repeat in 0..args.repeats {
        for &(e, c, l) in &configs {
            let spec = format!("run:{}:{}:{}", e.name(), c.name(), l.name());
            let dir = args
                .dir
                .join(format!("{}-{}-{}", e.name(), c.name(), l.name()));
            let (line, _) = spawn_child(&args, &spec, &dir, false)?;
            let mut r: RunResult = serde_json::from_str(&line)?;
            r.repeat = repeat;
            eprintln!(
                "[{}] {} {} {}: {:.0} sagas/s, {:.0} µs CPU, {:.0} B/saga, fsyncs {:?}, write p50 {:.0} µs, rss {:.0} MB",
                repeat,
                r.engine,
                r.encoding,
                r.load,
                r.sagas_per_s,
                r.cpu_us_per_saga,
                r.bytes_per_saga,
                r.fsyncs_per_saga,
                r.write_p50_us,
                r.peak_rss_mb
            );
            results.push(r);
        }
    }
    if args.strace {
        for &(e, c, l) in &configs {
            let spec = format!("run:{}:{}:{}", e.name(), c.name(), l.name());
            let dir = args
                .dir
                .join(format!("{}-{}-{}", e.name(), c.name(), l.name()));
            let (line, calls) = spawn_child(&args, &spec, &dir, true)?;
            let mut r: RunResult = serde_json::from_str(&line)?;
            r.repeat = usize::MAX;
            r.strace_fsyncs_per_saga = calls.map(|c| c as f64 / r.sagas.max(1) as f64);
            eprintln!(
                "[strace] {} {} {}: {:?} fsync+fdatasync per saga ({:.0} sagas/s under strace)",
                r.engine, r.encoding, r.load, r.strace_fsyncs_per_saga, r.sagas_per_s
            );
            results.push(r);
        }
    }
    let probe_after = fdatasync_probe(&args.dir, 300)?;

    // The table: ranges over the repeats.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ndisk fdatasync p50: {:.0} µs before, {:.0} µs after (p99 {:.0}/{:.0} µs; appending 512 B: {:.0}/{:.0} µs)",
        probe_before.0, probe_after.0, probe_before.1, probe_after.1, probe_before.2, probe_after.2
    );
    for &load in &args.loads {
        let _ = writeln!(
            out,
            "\nload {} ({}):",
            load.name(),
            match load {
                Load::Seq => {
                    "1 caller, each write durable before the next; latency columns: one durable write"
                    .to_owned()
                }
                Load::Conc => format!(
                    "{} callers; latency columns: whole saga",
                    args.knobs.callers
                ),
                Load::Rate => format!(
                    "open loop, {} sagas/s started; latency columns: whole saga",
                    args.knobs.rate
                ),
            }
        );
        let _ = writeln!(
            out,
            "{:<11} {:<8} {:>12} {:>11} {:>12} {:>13} {:>10} {:>9} {:>13} {:>13} {:>7} {:>8} {:>10}",
            "engine",
            "record",
            "sagas/s",
            "CPU µs/saga",
            "B/saga",
            "B/saga+flush",
            "fsync/saga",
            "strace",
            "p50 µs",
            "p99 µs",
            "log B",
            "RSS MB",
            "loadavg"
        );
        for &e in &args.engines {
            for &c in &args.encodings {
                let rs: Vec<&RunResult> = results
                    .iter()
                    .filter(|r| {
                        r.engine == e.name()
                            && r.encoding == c.name()
                            && r.load == load.name()
                            && r.repeat != usize::MAX
                    })
                    .collect();
                let traced = results
                    .iter()
                    .find(|r| {
                        r.engine == e.name()
                            && r.encoding == c.name()
                            && r.load == load.name()
                            && r.repeat == usize::MAX
                    })
                    .and_then(|r| r.strace_fsyncs_per_saga)
                    .map_or("-".to_owned(), |v| format!("{v:.2}"));
                let fs = if rs.iter().all(|r| r.fsyncs_per_saga.is_some()) {
                    fmt_range(&rs, |r| r.fsyncs_per_saga.unwrap_or(0.0), 1.0, 2)
                } else {
                    "-".into()
                };
                let (lat50, lat99) = match load {
                    Load::Seq => (
                        fmt_range(&rs, |r| r.write_p50_us, 1.0, 0),
                        fmt_range(&rs, |r| r.write_p99_us, 1.0, 0),
                    ),
                    Load::Conc | Load::Rate => (
                        fmt_range(&rs, |r| r.saga_p50_us, 1.0, 0),
                        fmt_range(&rs, |r| r.saga_p99_us, 1.0, 0),
                    ),
                };
                let _ = writeln!(
                    out,
                    "{:<11} {:<8} {:>12} {:>11} {:>12} {:>13} {:>10} {:>9} {:>13} {:>13} {:>7} {:>8} {:>10}",
                    e.name(),
                    c.name(),
                    fmt_range(&rs, |r| r.sagas_per_s, 1.0, 0),
                    fmt_range(&rs, |r| r.cpu_us_per_saga, 1.0, 0),
                    fmt_range(&rs, |r| r.bytes_per_saga, 1.0, 0),
                    fmt_range(&rs, |r| r.bytes_per_saga_flushed, 1.0, 0),
                    fs,
                    traced,
                    lat50,
                    lat99,
                    fmt_range(&rs, |r| r.log_record_bytes, 1.0, 0),
                    fmt_range(&rs, |r| r.peak_rss_mb, 1.0, 0),
                    fmt_range(&rs, |r| r.loadavg, 1.0, 1),
                );
            }
        }
    }
    print!("{out}");

    let mut bonus = Vec::new();
    if let Some(n) = args.point_read {
        for e in [Engine::RedbNone, Engine::FjallSide]
            .into_iter()
            .filter(|e| args.engines.contains(e))
        {
            let dir = args.dir.join(format!("point-read-{}", e.name()));
            let (line, _) =
                spawn_child(&args, &format!("point-read:{}:{n}", e.name()), &dir, false)?;
            let s: String = serde_json::from_str(&line)?;
            println!("point read: {s}");
            bonus.push(s);
        }
    }
    if let Some(secs) = args.retention {
        for e in [Engine::RedbNow, Engine::RedbNone, Engine::FjallSide]
            .into_iter()
            .filter(|e| args.engines.contains(e))
        {
            let dir = args.dir.join(format!("retention-{}", e.name()));
            let (line, _) = spawn_child(
                &args,
                &format!("retention:{}:{secs}", e.name()),
                &dir,
                false,
            )?;
            let s: String = serde_json::from_str(&line)?;
            println!("retention: {s}");
            bonus.push(s);
        }
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "fdatasync_p50_us_before": probe_before.0,
            "fdatasync_p50_us_after": probe_after.0,
            "fdatasync_append_p50_us": probe_before.2,
            "knobs": args.knobs,
            "results": results,
            "bonus": bonus,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}
