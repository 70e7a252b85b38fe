//! The child process: what it runs from its spec, and how the parent spawns
//! it (optionally under `strace -c`), so each configuration's counters
//! belong to it alone.

use std::{path::Path, process::Command};

use crate::{
    Res,
    bonus::{point_read_bonus, retention_bonus},
    measure::open_mesh_and_run,
    options::{Args, Enc, Engine, Knobs, Load, parse_one},
};

pub(crate) fn child_main(spec: &str, dir: &Path, knobs: &Knobs) -> Res<()> {
    let parts: Vec<&str> = spec.split(':').collect();
    let engine = parse_one(&Engine::ALL, Engine::name, parts.get(1).ok_or("spec")?)?;
    let line = match parts.first().copied() {
        Some("run") => {
            let enc = parse_one(&Enc::ALL, Enc::name, parts.get(2).ok_or("spec")?)?;
            let load = parse_one(&Load::ALL, Load::name, parts.get(3).ok_or("spec")?)?;
            let mut r = open_mesh_and_run(engine, enc, load, dir, knobs)?;
            r.engine = engine.name().into();
            r.encoding = enc.name().into();
            r.load = load.name().into();
            serde_json::to_string(&r)?
        }
        Some("point-read") => {
            let n = parts.get(2).ok_or("spec")?.parse()?;
            serde_json::to_string(&point_read_bonus(engine, dir, n, knobs)?)?
        }
        Some("retention") => {
            let secs = parts.get(2).ok_or("spec")?.parse()?;
            serde_json::to_string(&retention_bonus(engine, dir, secs, knobs)?)?
        }
        _ => return Err("bad child spec".into()),
    };
    println!("RESULT {line}");
    // Exit without running destructors: the data directory is removed.
    std::process::exit(0)
}

/// Runs one child process and returns its RESULT line, and (with
/// `strace`) the fsync + fdatasync calls it made.
pub(crate) fn spawn_child(
    args: &Args,
    spec: &str,
    dir: &Path,
    strace: bool,
) -> Res<(String, Option<u64>)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let k = &args.knobs;
    let own = [
        "--child".to_owned(),
        spec.to_owned(),
        "--dir".to_owned(),
        dir.display().to_string(),
        "--secs".to_owned(),
        k.secs.to_string(),
        "--callers".to_owned(),
        k.callers.to_string(),
        "--rate".to_owned(),
        k.rate.to_string(),
        "--fjall-cache-mb".to_owned(),
        k.fjall_cache_mb.to_string(),
        "--fjall-memtable-mb".to_owned(),
        k.fjall_memtable_mb.to_string(),
    ];
    let trace = dir.with_extension("strace");
    let output = if strace {
        Command::new("strace")
            .args([
                "-f",
                "--seccomp-bpf",
                "-c",
                "-e",
                "trace=fsync,fdatasync",
                "-o",
            ])
            .arg(&trace)
            .arg(&exe)
            .args(own)
            .output()?
    } else {
        Command::new(&exe).args(own).output()?
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| {
            format!(
                "{spec}: no result ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?
        .to_owned();
    let calls = if strace {
        let text = std::fs::read_to_string(&trace)?;
        let _ = std::fs::remove_file(&trace);
        Some(
            text.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    match f.last() {
                        Some(&"fsync" | &"fdatasync") => f.get(3)?.parse::<u64>().ok(),
                        _ => None,
                    }
                })
                .sum(),
        )
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(dir);
    Ok((line, calls))
}
