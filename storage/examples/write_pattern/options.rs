//! The command line: the engines, encodings and loads to compare, and the
//! knobs a child run gets on its own command line; apart so the parent and
//! the child parse the same vocabulary from one place.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Res;

const HELP: &str = "write_pattern: our saga write pattern against candidate engines

  --dir PATH          data directory on the real disk (default /var/tmp/write-pattern)
  --engines LIST      redb-now,redb-none,fjall,fjall-side,fjall-sync,append (default: all)
  --encodings LIST    json,compact,delta (default: all)
  --loads LIST        seq,conc,rate (default: all)
  --rate R            sagas started per second by a rate run (default 2000)
  --secs S            seconds of each run (default 3)
  --callers N         concurrent callers of a conc run (default 256)
  --repeats N         repeats of every configuration, interleaved (default 2)
  --json FILE         also write every result as JSON
  --strace            add a pass counting fsync/fdatasync syscalls with strace -c
  --point-read N      bonus: point-read latency after N sagas in the log (redb, fjall)
  --retention S       bonus: S seconds of load with old sagas purged; file growth
  --fjall-cache-mb N  fjall block cache per store (default 4)
  --fjall-memtable-mb N  fjall memtable size per keyspace (default 4)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Engine {
    RedbNow,
    RedbNone,
    Fjall,
    FjallSide,
    FjallSync,
    Append,
}

impl Engine {
    pub(crate) const ALL: [Self; 6] = [
        Self::RedbNow,
        Self::RedbNone,
        Self::Fjall,
        Self::FjallSide,
        Self::FjallSync,
        Self::Append,
    ];
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RedbNow => "redb-now",
            Self::RedbNone => "redb-none",
            Self::Fjall => "fjall",
            Self::FjallSide => "fjall-side",
            Self::FjallSync => "fjall-sync",
            Self::Append => "append",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Enc {
    Json,
    Compact,
    Delta,
}

impl Enc {
    pub(crate) const ALL: [Self; 3] = [Self::Json, Self::Compact, Self::Delta];
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Compact => "compact",
            Self::Delta => "delta",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Load {
    Seq,
    Conc,
    Rate,
}

impl Load {
    pub(crate) const ALL: [Self; 3] = [Self::Seq, Self::Conc, Self::Rate];
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Seq => "seq",
            Self::Conc => "conc",
            Self::Rate => "rate",
        }
    }
}

pub(crate) fn parse_one<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str, s: &str) -> Res<T> {
    all.iter()
        .copied()
        .find(|v| name(*v) == s)
        .ok_or_else(|| format!("unknown value {s:?}").into())
}

fn parse_list<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str + Copy, s: &str) -> Res<Vec<T>> {
    s.split(',')
        .map(|p| parse_one(all, name, p.trim()))
        .collect()
}

/// Knobs a child run needs, passed on its command line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Knobs {
    pub(crate) secs: f64,
    pub(crate) callers: usize,
    /// Sagas started per second by a rate run (open loop).
    pub(crate) rate: f64,
    pub(crate) fjall_cache_mb: u64,
    pub(crate) fjall_memtable_mb: u64,
}

#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) dir: PathBuf,
    pub(crate) engines: Vec<Engine>,
    pub(crate) encodings: Vec<Enc>,
    pub(crate) loads: Vec<Load>,
    pub(crate) repeats: usize,
    pub(crate) json: Option<PathBuf>,
    pub(crate) strace: bool,
    pub(crate) point_read: Option<u64>,
    pub(crate) retention: Option<f64>,
    pub(crate) knobs: Knobs,
    /// Child mode: run one configuration and print its result.
    pub(crate) child: Option<String>,
}

pub(crate) fn parse_args() -> Res<Args> {
    let mut a = Args {
        dir: PathBuf::from("/var/tmp/write-pattern"),
        engines: Engine::ALL.to_vec(),
        encodings: Enc::ALL.to_vec(),
        loads: Load::ALL.to_vec(),
        repeats: 2,
        json: None,
        strace: false,
        point_read: None,
        retention: None,
        knobs: Knobs {
            secs: 3.0,
            callers: 256,
            rate: 2000.0,
            fjall_cache_mb: 4,
            fjall_memtable_mb: 4,
        },
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value()?),
            "--engines" => a.engines = parse_list(&Engine::ALL, Engine::name, &value()?)?,
            "--encodings" => a.encodings = parse_list(&Enc::ALL, Enc::name, &value()?)?,
            "--loads" => a.loads = parse_list(&Load::ALL, Load::name, &value()?)?,
            "--rate" => a.knobs.rate = value()?.parse()?,
            "--secs" => a.knobs.secs = value()?.parse()?,
            "--callers" => a.knobs.callers = value()?.parse()?,
            "--repeats" => a.repeats = value()?.parse()?,
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--strace" => a.strace = true,
            "--point-read" => a.point_read = Some(value()?.parse()?),
            "--retention" => a.retention = Some(value()?.parse()?),
            "--fjall-cache-mb" => a.knobs.fjall_cache_mb = value()?.parse()?,
            "--fjall-memtable-mb" => a.knobs.fjall_memtable_mb = value()?.parse()?,
            "--child" => a.child = Some(value()?),
            "--help" | "-h" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}\n\n{HELP}").into()),
        }
    }
    Ok(a)
}
