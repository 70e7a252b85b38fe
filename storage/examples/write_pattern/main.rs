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

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::{File, OpenOptions},
    future::Future,
    io::Write as _,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
    SingleWriterWriteTx,
};
use microshop_storage::{StorageError, decode, encode};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
    WriteTransaction, backends::FileBackend,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::redb_group::{
    Durable, EmbeddedDb,
    barrier::{self, ActionGate},
};

mod redb_group;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------- options

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
enum Engine {
    RedbNow,
    RedbNone,
    Fjall,
    FjallSide,
    FjallSync,
    Append,
}

impl Engine {
    const ALL: [Self; 6] = [
        Self::RedbNow,
        Self::RedbNone,
        Self::Fjall,
        Self::FjallSide,
        Self::FjallSync,
        Self::Append,
    ];
    fn name(self) -> &'static str {
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
enum Enc {
    Json,
    Compact,
    Delta,
}

impl Enc {
    const ALL: [Self; 3] = [Self::Json, Self::Compact, Self::Delta];
    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Compact => "compact",
            Self::Delta => "delta",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Load {
    Seq,
    Conc,
    Rate,
}

impl Load {
    const ALL: [Self; 3] = [Self::Seq, Self::Conc, Self::Rate];
    fn name(self) -> &'static str {
        match self {
            Self::Seq => "seq",
            Self::Conc => "conc",
            Self::Rate => "rate",
        }
    }
}

fn parse_one<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str, s: &str) -> Res<T> {
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
struct Knobs {
    secs: f64,
    callers: usize,
    /// Sagas started per second by a rate run (open loop).
    rate: f64,
    fjall_cache_mb: u64,
    fjall_memtable_mb: u64,
}

#[derive(Debug)]
struct Args {
    dir: PathBuf,
    engines: Vec<Engine>,
    encodings: Vec<Enc>,
    loads: Vec<Load>,
    repeats: usize,
    json: Option<PathBuf>,
    strace: bool,
    point_read: Option<u64>,
    retention: Option<f64>,
    knobs: Knobs,
    /// Child mode: run one configuration and print its result.
    child: Option<String>,
}

fn parse_args() -> Res<Args> {
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

// ---------------------------------------------------------------- records
//
// Mirrors of the stored types (orchestrator::model::SagaRecord,
// inventory/order domain types), serialized the same way, so JSON sizes and
// encoding CPU match what the services store.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum SagaState {
    Running,
    Completed,
}

impl SagaState {
    fn index(self) -> u8 {
        match self {
            Self::Running => 1,
            Self::Completed => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
enum StepStatus {
    #[default]
    Pending,
    Running,
    Succeeded,
    Skipped,
}

impl StepStatus {
    fn code(self) -> u32 {
        match self {
            Self::Pending => 0,
            Self::Running => 1,
            Self::Succeeded => 2,
            Self::Skipped => 4,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
struct RunRecord {
    name: String,
    status: StepStatus,
    attempts: u32,
    last_error: String,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
struct StepRecord {
    name: String,
    description: String,
    action: RunRecord,
    compensation: Option<RunRecord>,
}

#[derive(Clone, Debug, Serialize)]
struct Transition {
    state: SagaState,
    at_ms: i64,
    note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CartLine {
    sku: String,
    quantity: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Address {
    name: String,
    address: String,
    phone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PricedLine {
    sku: String,
    name: String,
    quantity: i64,
    unit_price: i64,
}

#[derive(Clone, Debug, Serialize)]
enum SagaInput {
    Place {
        customer_id: String,
        items: Vec<CartLine>,
        coupon_code: String,
        points_to_redeem: i64,
        shipping: Address,
    },
}

#[derive(Clone, Debug, Default, Serialize)]
struct SagaOutputs {
    lines: Vec<PricedLine>,
    order_id: Option<String>,
    order_saga_id: Option<String>,
    order_customer_id: Option<String>,
    order_total: i64,
    order_snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct SagaRecord {
    saga_id: String,
    saga_type: &'static str,
    state: SagaState,
    idempotency_key: String,
    input: SagaInput,
    steps: Vec<StepRecord>,
    outputs: SagaOutputs,
    history: Vec<Transition>,
    error: Option<String>,
    failure_reason: String,
    failed_from: Option<SagaState>,
    created_at_ms: i64,
    updated_at_ms: i64,
    seq: u64,
}

const STEPS: [(&str, &str); 4] = [
    (
        "quote",
        "price the cart from the catalog and check the coupon and points redemption",
    ),
    ("reserve-stock", "reserve every cart line on inventory-svc"),
    (
        "deduct-points",
        "deduct the redeemed points on loyalty-svc (skipped when none are redeemed)",
    ),
    (
        "create-order",
        "create the order and consume the coupon use on order-svc",
    ),
];

/// The compact saga record: what recovery and GetSaga need, with ids as
/// bytes, steps as status codes and no order snapshot (order-svc keeps it).
#[derive(Clone, PartialEq, prost::Message)]
struct CompactSaga {
    #[prost(bytes = "vec", tag = "1")]
    saga_id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    saga_type: u32,
    #[prost(uint32, tag = "3")]
    state: u32,
    #[prost(string, tag = "4")]
    idempotency_key: String,
    #[prost(string, tag = "5")]
    customer_id: String,
    #[prost(message, repeated, tag = "6")]
    lines: Vec<CompactLine>,
    #[prost(string, tag = "7")]
    coupon_code: String,
    #[prost(int64, tag = "8")]
    points_to_redeem: i64,
    #[prost(string, tag = "9")]
    ship_name: String,
    #[prost(string, tag = "10")]
    ship_address: String,
    #[prost(string, tag = "11")]
    ship_phone: String,
    /// One status code per step.
    #[prost(uint32, repeated, tag = "12")]
    step_status: Vec<u32>,
    #[prost(uint32, repeated, tag = "13")]
    step_attempts: Vec<u32>,
    /// Started and finished time of each step, as offsets from creation.
    #[prost(int64, repeated, tag = "14")]
    step_times: Vec<i64>,
    #[prost(int64, tag = "15")]
    created_at_ms: i64,
    #[prost(int64, tag = "16")]
    updated_at_ms: i64,
    #[prost(uint64, tag = "17")]
    seq: u64,
    #[prost(bytes = "vec", tag = "18")]
    order_id: Vec<u8>,
    #[prost(int64, tag = "19")]
    order_total: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CompactLine {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(int64, tag = "2")]
    quantity: i64,
    #[prost(int64, tag = "3")]
    unit_price: i64,
}

/// One step's result (and the next step's intent), appended under
/// `(saga_id, n)`.
#[derive(Clone, PartialEq, prost::Message)]
struct SagaDelta {
    #[prost(uint32, tag = "1")]
    step: u32,
    #[prost(uint32, tag = "2")]
    status: u32,
    #[prost(uint32, tag = "3")]
    next_step: u32,
    #[prost(int64, tag = "4")]
    at_ms: i64,
    #[prost(uint32, tag = "5")]
    state: u32,
    #[prost(message, repeated, tag = "6")]
    lines: Vec<CompactLine>,
    #[prost(bytes = "vec", tag = "7")]
    order_id: Vec<u8>,
    #[prost(int64, tag = "8")]
    order_total: i64,
}

/// The order as the saga's snapshot holds it (hex of its proto encoding).
#[derive(Clone, PartialEq, prost::Message)]
struct OrderSnapshot {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(string, tag = "2")]
    customer_id: String,
    #[prost(message, repeated, tag = "3")]
    lines: Vec<CompactLine>,
    #[prost(string, repeated, tag = "4")]
    line_names: Vec<String>,
    #[prost(int64, tag = "5")]
    items_price: i64,
    #[prost(int64, tag = "6")]
    tax_price: i64,
    #[prost(int64, tag = "7")]
    shipping_price: i64,
    #[prost(int64, tag = "8")]
    total_price: i64,
    #[prost(string, tag = "9")]
    status: String,
    #[prost(int64, tag = "10")]
    created_at: i64,
    #[prost(string, tag = "11")]
    saga_id: String,
    #[prost(string, tag = "12")]
    ship_name: String,
    #[prost(string, tag = "13")]
    ship_address: String,
    #[prost(string, tag = "14")]
    ship_phone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Product {
    sku: String,
    name: String,
    unit_price: i64,
    available: i64,
    reserved: i64,
    sold: i64,
    restocked: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReservedLine {
    sku: String,
    name: String,
    quantity: i64,
    unit_price: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum ReservationState {
    Reserved,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Reservation {
    lines: Vec<ReservedLine>,
    state: ReservationState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum ReserveOutcome {
    Reserved(Vec<ReservedLine>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum CouponKind {
    Percentage,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Coupon {
    code: String,
    kind: CouponKind,
    value: i64,
    usage_limit: i64,
    times_used: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StatusChange {
    status: &'static str,
    at_ms: i64,
    note: String,
}

#[derive(Clone, Debug, Serialize)]
struct Order {
    order_id: String,
    customer_id: String,
    lines: Vec<PricedLine>,
    items_price: i64,
    tax_price: i64,
    shipping_price: i64,
    discount_price: i64,
    coupon_code: Option<String>,
    redeemed_points: i64,
    points_discount_price: i64,
    total_price: i64,
    status: &'static str,
    status_history: Vec<StatusChange>,
    created_at_ms: i64,
    paid_at_ms: Option<i64>,
    saga_id: String,
    shipping: Address,
    payment_ref: String,
    cancelled_at_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum CreateRecord {
    Created { order_id: String },
}

/// What CreateOrder receives.
#[derive(Clone, Debug)]
struct NewOrder {
    saga_id: String,
    customer_id: String,
    lines: Vec<PricedLine>,
    coupon_code: String,
    shipping: Address,
}

const COUPON: &str = "BENCH10";
const PRODUCTS_N: usize = 1_000;

fn sku_name(i: usize) -> String {
    format!("BENCH-{i:06}")
}

fn seed_products() -> Vec<Product> {
    (0..PRODUCTS_N)
        .map(|i| Product {
            sku: sku_name(i),
            name: format!("Bench product {i}"),
            unit_price: 150_000,
            available: 1_000_000_000_000,
            reserved: 0,
            sold: 0,
            restocked: 0,
        })
        .collect()
}

fn seed_coupon() -> Coupon {
    Coupon {
        code: COUPON.into(),
        kind: CouponKind::Percentage,
        value: 10,
        usage_limit: 1_000_000_000,
        times_used: 0,
    }
}

/// Prices the order as order-svc's lifecycle does (roughly: the CPU is in
/// the encoding, not in the arithmetic).
fn build_order(new: NewOrder, coupon: Option<&Coupon>, at_ms: i64) -> Order {
    let items_price: i64 = new.lines.iter().map(|l| l.quantity * l.unit_price).sum();
    let discount_price = coupon.map_or(0, |c| items_price * c.value / 100);
    let tax_price = (items_price - discount_price) / 10;
    let shipping_price = 30_000;
    Order {
        order_id: uuid::Uuid::now_v7().to_string(),
        customer_id: new.customer_id,
        lines: new.lines,
        items_price,
        tax_price,
        shipping_price,
        discount_price: 0,
        coupon_code: if new.coupon_code.is_empty() {
            None
        } else {
            Some(new.coupon_code)
        },
        redeemed_points: 0,
        points_discount_price: 0,
        total_price: items_price + tax_price + shipping_price,
        status: "PendingPayment",
        status_history: vec![StatusChange {
            status: "PendingPayment",
            at_ms,
            note: "order created by checkout".into(),
        }],
        created_at_ms: at_ms,
        paid_at_ms: None,
        saga_id: new.saga_id,
        shipping: new.shipping,
        payment_ref: String::new(),
        cancelled_at_ms: None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------- the saga

/// A begin of the saga log.
#[derive(Clone, Debug)]
struct BeginRec {
    saga_id: String,
    key: String,
    state: u8,
    /// The stored record: a state byte, then the encoded record.
    bytes: Vec<u8>,
}

/// A save of the saga log.
#[derive(Clone, Debug)]
struct SaveRec {
    saga_id: String,
    seq: u64,
    /// The state the indexes move from. redb-now reads it from the old
    /// record, as the orchestrator does; the other engines take the
    /// caller's word (the driver knows it).
    old_state: u8,
    new_state: u8,
    body: SaveBody,
}

#[derive(Clone, Debug)]
enum SaveBody {
    /// The whole record, replacing the stored one.
    Full(Vec<u8>),
    /// Delta `n` of the saga, added beside the others.
    Delta(u8, Vec<u8>),
}

/// The four stores' operations, each durable when its future completes.
trait Mesh: Send + Sync + 'static {
    fn seed(&self) -> impl Future<Output = Res<()>> + Send;
    fn begin(&self, b: BeginRec) -> impl Future<Output = Res<u64>> + Send;
    fn save(&self, s: SaveRec) -> impl Future<Output = Res<()>> + Send;
    fn reserve(
        &self,
        saga_id: String,
        sku: String,
        qty: i64,
    ) -> impl Future<Output = Res<()>> + Send;
    fn create_order(&self, order: NewOrder) -> impl Future<Output = Res<()>> + Send;
    /// fsyncs issued so far, where the harness can count them.
    fn syncs(&self) -> Option<u64>;
    /// Flushes what sits in memory only (fjall memtables) to its files.
    fn settle(&self) -> Res<()> {
        Ok(())
    }
    /// Reads one saga log record (point-read bonus).
    fn get_saga(&self, _saga_id: &str) -> Res<Option<usize>> {
        Ok(None)
    }
    /// Writes whole sagas to the log in one transaction (point-read bonus).
    fn fill(&self, _sagas: Vec<(BeginRec, SaveRec)>) -> impl Future<Output = Res<()>> + Send {
        async { Err("no bulk fill".into()) }
    }
    /// Deletes sagas of the log (retention bonus).
    fn purge(&self, _sagas: Vec<(String, String, u64)>) -> impl Future<Output = Res<()>> + Send {
        async { Ok(()) }
    }
}

/// Makes the ids and inputs of sagas as `microshop bench` does.
struct Gen {
    prefix: String,
    n: AtomicU64,
}

impl Gen {
    fn new() -> Self {
        Self {
            prefix: format!("bench-{}-spread", now_ms()),
            n: AtomicU64::new(0),
        }
    }
}

/// What one saga wrote to its log, for the record-size column.
#[derive(Default, Clone, Copy)]
struct SagaBytes {
    log: usize,
}

fn stored(state: SagaState, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(state.index());
    v.extend_from_slice(body);
    v
}

fn compact_of(r: &SagaRecord, order_id: &[u8]) -> CompactSaga {
    let SagaInput::Place {
        customer_id,
        items,
        coupon_code,
        points_to_redeem,
        shipping,
    } = &r.input;
    CompactSaga {
        saga_id: uuid_bytes(&r.saga_id),
        saga_type: 1,
        state: u32::from(r.state.index()),
        idempotency_key: r.idempotency_key.clone(),
        customer_id: customer_id.clone(),
        lines: items
            .iter()
            .map(|l| CompactLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: r
                    .outputs
                    .lines
                    .iter()
                    .find(|p| p.sku == l.sku)
                    .map_or(0, |p| p.unit_price),
            })
            .collect(),
        coupon_code: coupon_code.clone(),
        points_to_redeem: *points_to_redeem,
        ship_name: shipping.name.clone(),
        ship_address: shipping.address.clone(),
        ship_phone: shipping.phone.clone(),
        step_status: r.steps.iter().map(|s| s.action.status.code()).collect(),
        step_attempts: r.steps.iter().map(|s| s.action.attempts).collect(),
        step_times: r
            .steps
            .iter()
            .flat_map(|s| {
                [
                    s.action.started_at_ms.map_or(0, |t| t - r.created_at_ms),
                    s.action.finished_at_ms.map_or(0, |t| t - r.created_at_ms),
                ]
            })
            .collect(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        seq: r.seq,
        order_id: order_id.to_vec(),
        order_total: r.outputs.order_total,
    }
}

fn uuid_bytes(s: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(s).map_or_else(|_| s.as_bytes().to_vec(), |u| u.as_bytes().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Encodes save `n` (1..=3) of `r` in `enc`.
fn save_body(enc: Enc, r: &SagaRecord, n: u8, order_id: &[u8]) -> SaveBody {
    match enc {
        Enc::Json => SaveBody::Full(stored(r.state, &serde_json::to_vec(r).unwrap_or_default())),
        Enc::Compact => SaveBody::Full(stored(
            r.state,
            &prost::Message::encode_to_vec(&compact_of(r, order_id)),
        )),
        Enc::Delta => {
            let step = usize::from(n - 1);
            let d = SagaDelta {
                step: u32::from(n - 1),
                status: r.steps[step].action.status.code(),
                next_step: u32::from(n),
                at_ms: r.updated_at_ms,
                state: u32::from(r.state.index()),
                lines: if n == 1 {
                    r.outputs
                        .lines
                        .iter()
                        .map(|l| CompactLine {
                            sku: l.sku.clone(),
                            quantity: l.quantity,
                            unit_price: l.unit_price,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                order_id: order_id.to_vec(),
                order_total: r.outputs.order_total,
            };
            SaveBody::Delta(n, prost::Message::encode_to_vec(&d))
        }
    }
}

fn body_len(b: &SaveBody) -> usize {
    match b {
        SaveBody::Full(v) | SaveBody::Delta(_, v) => v.len(),
    }
}

/// Times `fut` into `lat` (µs) when given.
async fn timed<T>(lat: &mut Option<&mut Vec<u32>>, fut: impl Future<Output = Res<T>>) -> Res<T> {
    let t = Instant::now();
    let out = fut.await?;
    if let Some(l) = lat.as_deref_mut() {
        l.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    Ok(out)
}

/// Runs one checkout's writes, in the saga's order.
async fn run_saga<M: Mesh>(
    m: &M,
    enc: Enc,
    g: &Gen,
    caller: usize,
    mut lat: Option<&mut Vec<u32>>,
) -> Res<(SagaBytes, String, String, u64)> {
    let n = g.n.fetch_add(1, Ordering::Relaxed);
    let pick = usize::try_from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32).unwrap_or(0);
    let sku = sku_name(pick % PRODUCTS_N);
    let customer_id = format!("bench-customer-{}", caller % 1000);
    let shipping = Address {
        name: "Bench Customer".into(),
        address: "1 Loopback Road".into(),
        phone: "0900000000".into(),
    };
    let now = now_ms();
    let mut r = SagaRecord {
        saga_id: uuid::Uuid::now_v7().to_string(),
        saga_type: "PlaceOrder",
        state: SagaState::Running,
        idempotency_key: format!("{}-{n}", g.prefix),
        input: SagaInput::Place {
            customer_id: customer_id.clone(),
            items: vec![CartLine {
                sku: sku.clone(),
                quantity: 1,
            }],
            coupon_code: String::new(),
            points_to_redeem: 0,
            shipping: shipping.clone(),
        },
        steps: STEPS
            .iter()
            .map(|(name, description)| StepRecord {
                name: (*name).into(),
                description: (*description).into(),
                action: RunRecord {
                    name: (*name).into(),
                    ..RunRecord::default()
                },
                compensation: None,
            })
            .collect(),
        outputs: SagaOutputs::default(),
        history: vec![Transition {
            state: SagaState::Running,
            at_ms: now,
            note: "saga started".into(),
        }],
        error: None,
        failure_reason: String::new(),
        failed_from: None,
        created_at_ms: now,
        updated_at_ms: now,
        seq: 0,
    };
    // The first step's intent goes in with the creation.
    r.steps[0].action.status = StepStatus::Running;
    r.steps[0].action.attempts = 1;
    r.steps[0].action.started_at_ms = Some(now);
    let mut bytes = SagaBytes::default();
    let body = match enc {
        Enc::Json => serde_json::to_vec(&r)?,
        Enc::Compact | Enc::Delta => prost::Message::encode_to_vec(&compact_of(&r, &[])),
    };
    let begin = BeginRec {
        saga_id: r.saga_id.clone(),
        key: r.idempotency_key.clone(),
        state: r.state.index(),
        bytes: stored(r.state, &body),
    };
    bytes.log += begin.bytes.len();
    let seq = timed(&mut lat, m.begin(begin)).await?;
    r.seq = seq;

    // 1: the quote's result and the reserve's intent.
    let t = now_ms();
    r.outputs.lines = vec![PricedLine {
        sku: sku.clone(),
        name: format!("Bench product {}", pick % PRODUCTS_N),
        quantity: 1,
        unit_price: 150_000,
    }];
    r.steps[0].action.status = StepStatus::Succeeded;
    r.steps[0].action.finished_at_ms = Some(t);
    r.steps[1].action.status = StepStatus::Running;
    r.steps[1].action.attempts = 1;
    r.steps[1].action.started_at_ms = Some(t);
    r.updated_at_ms = t;
    let running = SagaState::Running.index();
    let save = |r: &SagaRecord, n: u8, new_state: u8, order_id: &[u8]| SaveRec {
        saga_id: r.saga_id.clone(),
        seq,
        old_state: running,
        new_state,
        body: save_body(enc, r, n, order_id),
    };
    let s = save(&r, 1, running, &[]);
    bytes.log += body_len(&s.body);
    timed(&mut lat, m.save(s)).await?;

    timed(&mut lat, m.reserve(r.saga_id.clone(), sku.clone(), 1)).await?;

    // 2: the reserve's result, deduct-points skipped, the create's intent.
    let t = now_ms();
    r.steps[1].action.status = StepStatus::Succeeded;
    r.steps[1].action.finished_at_ms = Some(t);
    r.steps[2].action.status = StepStatus::Skipped;
    r.steps[3].action.status = StepStatus::Running;
    r.steps[3].action.attempts = 1;
    r.steps[3].action.started_at_ms = Some(t);
    r.updated_at_ms = t;
    let s = save(&r, 2, running, &[]);
    bytes.log += body_len(&s.body);
    timed(&mut lat, m.save(s)).await?;

    let new = NewOrder {
        saga_id: r.saga_id.clone(),
        customer_id: customer_id.clone(),
        lines: r.outputs.lines.clone(),
        coupon_code: String::new(),
        shipping,
    };
    timed(&mut lat, m.create_order(new.clone())).await?;

    // 3: the create's result and the saga's end.
    let t = now_ms();
    let order = build_order(new, None, t);
    r.outputs.order_id = Some(order.order_id.clone());
    r.outputs.order_saga_id = Some(r.saga_id.clone());
    r.outputs.order_customer_id = Some(customer_id);
    r.outputs.order_total = order.total_price;
    let snap = OrderSnapshot {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        lines: vec![CompactLine {
            sku,
            quantity: 1,
            unit_price: 150_000,
        }],
        line_names: vec![r.outputs.lines[0].name.clone()],
        items_price: order.items_price,
        tax_price: order.tax_price,
        shipping_price: order.shipping_price,
        total_price: order.total_price,
        status: "ORDER_STATUS_PENDING_PAYMENT".into(),
        created_at: t,
        saga_id: r.saga_id.clone(),
        ship_name: order.shipping.name.clone(),
        ship_address: order.shipping.address.clone(),
        ship_phone: order.shipping.phone.clone(),
    };
    r.outputs.order_snapshot = Some(hex(&prost::Message::encode_to_vec(&snap)));
    r.steps[3].action.status = StepStatus::Succeeded;
    r.steps[3].action.finished_at_ms = Some(t);
    r.state = SagaState::Completed;
    r.history.push(Transition {
        state: SagaState::Completed,
        at_ms: t,
        note: "every step succeeded".into(),
    });
    r.updated_at_ms = t;
    let s = save(
        &r,
        3,
        SagaState::Completed.index(),
        &uuid_bytes(&order.order_id),
    );
    bytes.log += body_len(&s.body);
    timed(&mut lat, m.save(s)).await?;
    Ok((bytes, r.saga_id, r.idempotency_key, seq))
}

// ---------------------------------------------------------------- group fsync

/// Group fsync: writers take a ticket after their write is in the engine;
/// one sync thread makes everything written so far durable with one call
/// and wakes every waiter whose ticket it covered.
struct GroupSync {
    written: AtomicU64,
    synced: watch::Sender<u64>,
    pending: Mutex<bool>,
    wake: Condvar,
    syncs: AtomicU64,
}

impl GroupSync {
    fn start(name: &str, mut sync: impl FnMut() -> Res<()> + Send + 'static) -> Res<Arc<Self>> {
        let me = Arc::new(Self {
            written: AtomicU64::new(0),
            synced: watch::channel(0).0,
            pending: Mutex::new(false),
            wake: Condvar::new(),
            syncs: AtomicU64::new(0),
        });
        let this = Arc::clone(&me);
        std::thread::Builder::new()
            .name(format!("{name}-sync"))
            .spawn(move || {
                loop {
                    {
                        let mut p = this.pending.lock().unwrap_or_else(|e| e.into_inner());
                        while !*p {
                            p = this.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                        }
                        *p = false;
                    }
                    let target = this.written.load(Ordering::SeqCst);
                    if let Err(e) = sync() {
                        eprintln!("sync failed: {e}");
                        std::process::exit(2);
                    }
                    this.syncs.fetch_add(1, Ordering::Relaxed);
                    this.synced.send_replace(target);
                }
            })?;
        Ok(me)
    }

    /// Waits until everything written before the call is durable.
    async fn durable(&self) {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.synced.subscribe();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            *p = true;
        }
        self.wake.notify_one();
        let _ = rx.wait_for(|s| *s >= ticket).await;
    }
}

// ---------------------------------------------------------------- redb

const SAGAS: TableDefinition<&str, &[u8]> = TableDefinition::new("sagas");
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("idempotency_keys");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("sagas_by_seq");
const BY_STATE: TableDefinition<(u8, u64), &str> = TableDefinition::new("sagas_by_state");
const UNFINISHED: TableDefinition<&str, u64> = TableDefinition::new("unfinished_sagas");
const SAGA_META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SAGA_DELTAS: TableDefinition<(&str, u8), &[u8]> = TableDefinition::new("saga_deltas");
const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const COUPONS: TableDefinition<&str, &[u8]> = TableDefinition::new("coupons");
const CUSTOMER_ORDERS: TableDefinition<(&str, u64), &str> = TableDefinition::new("customer_orders");
const ORDER_META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn rb_init_log(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(SAGAS)?;
    txn.open_table(KEYS)?;
    txn.open_table(BY_SEQ)?;
    txn.open_table(BY_STATE)?;
    txn.open_table(UNFINISHED)?;
    txn.open_table(SAGA_META)?;
    txn.open_table(SAGA_DELTAS)?;
    Ok(())
}

fn rb_init_inventory(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(PRODUCTS)?;
    txn.open_table(RESERVATIONS)?;
    barrier::init(txn)
}

fn rb_init_orders(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(ORDERS)?;
    txn.open_table(COUPONS)?;
    txn.open_table(CUSTOMER_ORDERS)?;
    txn.open_table(ORDER_META)?;
    barrier::init(txn)
}

fn rb_seed_inventory(txn: &WriteTransaction) -> Result<(), StorageError> {
    let mut t = txn.open_table(PRODUCTS)?;
    for p in seed_products() {
        t.insert(p.sku.as_str(), encode(&p)?.as_slice())?;
    }
    Ok(())
}

fn rb_seed_orders(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(COUPONS)?
        .insert(COUPON, encode(&seed_coupon())?.as_slice())?;
    Ok(())
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_owned())
}

/// The orchestrator's begin (orchestrator/src/embedded.rs), minus the
/// record decoding of a duplicate key.
fn rb_begin(txn: &WriteTransaction, b: &BeginRec) -> Result<u64, StorageError> {
    if txn.open_table(KEYS)?.get(b.key.as_str())?.is_some() {
        return Err(corrupt("duplicate idempotency key"));
    }
    let seq = {
        let mut meta = txn.open_table(SAGA_META)?;
        let next = meta.get("seq")?.map_or(1, |v| v.value() + 1);
        meta.insert("seq", next)?;
        next
    };
    let id = b.saga_id.as_str();
    txn.open_table(KEYS)?.insert(b.key.as_str(), id)?;
    txn.open_table(BY_SEQ)?.insert(seq, id)?;
    if txn
        .open_table(SAGAS)?
        .insert(id, b.bytes.as_slice())?
        .is_some()
    {
        return Err(corrupt("saga created twice"));
    }
    txn.open_table(BY_STATE)?.insert((b.state, seq), id)?;
    txn.open_table(UNFINISHED)?.insert(id, seq)?;
    Ok(seq)
}

/// The orchestrator's save: the old state comes from the replaced record.
fn rb_save(txn: &WriteTransaction, s: &SaveRec) -> Result<(), StorageError> {
    let id = s.saga_id.as_str();
    let old = match &s.body {
        SaveBody::Full(bytes) => {
            let mut sagas = txn.open_table(SAGAS)?;
            let old = sagas.insert(id, bytes.as_slice())?;
            old.and_then(|v| v.value().first().copied())
                .ok_or_else(|| corrupt("save of unknown saga"))?
        }
        SaveBody::Delta(n, bytes) => {
            txn.open_table(SAGA_DELTAS)?
                .insert((id, *n), bytes.as_slice())?;
            s.old_state
        }
    };
    if old != s.new_state {
        let mut by_state = txn.open_table(BY_STATE)?;
        by_state.remove((old, s.seq))?;
        by_state.insert((s.new_state, s.seq), id)?;
        let mut unfinished = txn.open_table(UNFINISHED)?;
        if s.new_state == SagaState::Completed.index() {
            unfinished.remove(id)?;
        } else {
            unfinished.insert(id, s.seq)?;
        }
    }
    Ok(())
}

fn rb_purge(txn: &WriteTransaction, sagas: &[(String, String, u64)]) -> Result<(), StorageError> {
    let mut t = txn.open_table(SAGAS)?;
    let mut keys = txn.open_table(KEYS)?;
    let mut by_seq = txn.open_table(BY_SEQ)?;
    let mut by_state = txn.open_table(BY_STATE)?;
    let mut deltas = txn.open_table(SAGA_DELTAS)?;
    for (id, key, seq) in sagas {
        t.remove(id.as_str())?;
        keys.remove(key.as_str())?;
        by_seq.remove(*seq)?;
        by_state.remove((SagaState::Completed.index(), *seq))?;
        for n in 1..=3 {
            deltas.remove((id.as_str(), n))?;
        }
    }
    Ok(())
}

/// Inventory's ReserveStock (inventory-svc/src/embedded.rs) for one line.
fn rb_reserve(
    txn: &WriteTransaction,
    saga_id: &str,
    sku: &str,
    qty: i64,
) -> Result<(), StorageError> {
    match barrier::action_gate::<ReserveOutcome>(txn, saga_id, "reserve", "release")? {
        ActionGate::Proceed => {}
        _ => return Err(corrupt("reserve delivered twice")),
    }
    let mut product: Product = {
        let t = txn.open_table(PRODUCTS)?;
        let found = t.get(sku)?.ok_or_else(|| corrupt("unknown sku"))?;
        decode(found.value())?
    };
    if product.available < qty {
        return Err(corrupt("out of stock"));
    }
    product.available -= qty;
    product.reserved += qty;
    txn.open_table(PRODUCTS)?
        .insert(sku, encode(&product)?.as_slice())?;
    let line = ReservedLine {
        sku: product.sku,
        name: product.name,
        quantity: qty,
        unit_price: product.unit_price,
    };
    let reservation = Reservation {
        lines: vec![line.clone()],
        state: ReservationState::Reserved,
    };
    txn.open_table(RESERVATIONS)?
        .insert(saga_id, encode(&reservation)?.as_slice())?;
    barrier::record(
        txn,
        saga_id,
        "reserve",
        &ReserveOutcome::Reserved(vec![line]),
    )
}

/// Order's CreateOrder (order-svc/src/embedded.rs).
fn rb_create(txn: &WriteTransaction, new: NewOrder) -> Result<(), StorageError> {
    let saga_id = new.saga_id.clone();
    match barrier::action_gate::<CreateRecord>(txn, &saga_id, "create", "cancel")? {
        ActionGate::Proceed => {}
        _ => return Err(corrupt("create delivered twice")),
    }
    let coupon: Option<Coupon> = {
        let t = txn.open_table(COUPONS)?;
        let found = t.get(COUPON)?;
        found.map(|v| decode(v.value())).transpose()?
    };
    let order = build_order(new, coupon.as_ref(), now_ms());
    let seq = {
        let mut meta = txn.open_table(ORDER_META)?;
        let last = meta.get("order_seq")?.map_or(0, |v| v.value());
        meta.insert("order_seq", last + 1)?;
        last + 1
    };
    txn.open_table(ORDERS)?
        .insert(order.order_id.as_str(), encode(&order)?.as_slice())?;
    txn.open_table(CUSTOMER_ORDERS)?.insert(
        (order.customer_id.as_str(), u64::MAX - seq),
        order.order_id.as_str(),
    )?;
    barrier::record(
        txn,
        &saga_id,
        "create",
        &CreateRecord::Created {
            order_id: order.order_id,
        },
    )
}

/// redb-now: the crate's own EmbeddedDb, as every service opens it.
struct RedbNow {
    log: EmbeddedDb,
    inventory: EmbeddedDb,
    orders: EmbeddedDb,
}

impl RedbNow {
    fn open(dir: &Path) -> Res<Self> {
        Ok(Self {
            log: EmbeddedDb::open(dir, "orchestrator", Durable::Yes, rb_init_log)?,
            inventory: EmbeddedDb::open(dir, "inventory", Durable::Yes, rb_init_inventory)?,
            orders: EmbeddedDb::open(dir, "order", Durable::Yes, rb_init_orders)?,
        })
    }
}

impl Mesh for RedbNow {
    async fn seed(&self) -> Res<()> {
        self.inventory.write(rb_seed_inventory).await?;
        self.orders.write(rb_seed_orders).await?;
        Ok(())
    }
    async fn begin(&self, b: BeginRec) -> Res<u64> {
        Ok(self.log.write(move |txn| rb_begin(txn, &b)).await?)
    }
    async fn save(&self, s: SaveRec) -> Res<()> {
        Ok(self.log.write(move |txn| rb_save(txn, &s)).await?)
    }
    async fn reserve(&self, saga_id: String, sku: String, qty: i64) -> Res<()> {
        Ok(self
            .inventory
            .write(move |txn| rb_reserve(txn, &saga_id, &sku, qty))
            .await?)
    }
    async fn create_order(&self, order: NewOrder) -> Res<()> {
        Ok(self.orders.write(move |txn| rb_create(txn, order)).await?)
    }
    fn syncs(&self) -> Option<u64> {
        None
    }
    async fn purge(&self, sagas: Vec<(String, String, u64)>) -> Res<()> {
        Ok(self.log.write(move |txn| rb_purge(txn, &sagas)).await?)
    }
}

/// A redb file backend that counts its `sync_data` calls.
#[derive(Debug)]
struct CountingBackend {
    inner: FileBackend,
    syncs: Arc<AtomicU64>,
}

type Bound = std::ops::Bound<u64>;

impl StorageBackend for CountingBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound, end: Bound) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound, end: Bound) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound, end: Bound) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound, end: Bound) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound, end: Bound) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound, end: Bound) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// One redb file written from the calling task with non-durable commits,
/// made durable by a group sync (an empty durable commit).
struct RedbNoneStore {
    db: Arc<Database>,
    sync: Arc<GroupSync>,
}

impl RedbNoneStore {
    fn open(
        dir: &Path,
        name: &str,
        syncs: &Arc<AtomicU64>,
        init: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{name}.redb")))?;
        let backend = CountingBackend {
            inner: FileBackend::new(file)?,
            syncs: Arc::clone(syncs),
        };
        let db = Arc::new(
            Database::builder()
                .set_cache_size(16 * 1024 * 1024)
                .create_with_backend(backend)?,
        );
        let txn = db.begin_write()?;
        init(&txn)?;
        txn.commit()?;
        let sync_db = Arc::clone(&db);
        let sync = GroupSync::start(name, move || {
            // Durability::Immediate (the default): persists every
            // Durability::None commit before it.
            let txn = sync_db.begin_write()?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(Self { db, sync })
    }

    fn apply<R>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R, StorageError>) -> Res<R> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        match f(&txn) {
            Ok(r) => {
                txn.commit()?;
                Ok(r)
            }
            Err(e) => {
                txn.abort()?;
                Err(e.into())
            }
        }
    }

    async fn write<R>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StorageError>,
    ) -> Res<R> {
        let r = self.apply(f)?;
        self.sync.durable().await;
        Ok(r)
    }
}

struct RedbNone {
    log: RedbNoneStore,
    inventory: RedbNoneStore,
    orders: RedbNoneStore,
    syncs: Arc<AtomicU64>,
}

impl RedbNone {
    fn open(dir: &Path) -> Res<Self> {
        let syncs = Arc::new(AtomicU64::new(0));
        Ok(Self {
            log: RedbNoneStore::open(dir, "orchestrator", &syncs, rb_init_log)?,
            inventory: RedbNoneStore::open(dir, "inventory", &syncs, rb_init_inventory)?,
            orders: RedbNoneStore::open(dir, "order", &syncs, rb_init_orders)?,
            syncs,
        })
    }
}

impl Mesh for RedbNone {
    async fn seed(&self) -> Res<()> {
        self.inventory.write(rb_seed_inventory).await?;
        self.orders.write(rb_seed_orders).await?;
        Ok(())
    }
    async fn begin(&self, b: BeginRec) -> Res<u64> {
        self.log.write(|txn| rb_begin(txn, &b)).await
    }
    async fn save(&self, s: SaveRec) -> Res<()> {
        self.log.write(|txn| rb_save(txn, &s)).await
    }
    async fn reserve(&self, saga_id: String, sku: String, qty: i64) -> Res<()> {
        self.inventory
            .write(|txn| rb_reserve(txn, &saga_id, &sku, qty))
            .await
    }
    async fn create_order(&self, order: NewOrder) -> Res<()> {
        self.orders.write(|txn| rb_create(txn, order)).await
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.syncs.load(Ordering::Relaxed))
    }
    fn get_saga(&self, saga_id: &str) -> Res<Option<usize>> {
        let txn = self.log.db.begin_read()?;
        let t = txn.open_table(SAGAS)?;
        Ok(t.get(saga_id)?.map(|v| v.value().len()))
    }
    async fn purge(&self, sagas: Vec<(String, String, u64)>) -> Res<()> {
        self.log.write(|txn| rb_purge(txn, &sagas)).await
    }
    async fn fill(&self, sagas: Vec<(BeginRec, SaveRec)>) -> Res<()> {
        self.log
            .write(|txn| {
                for (b, mut s) in sagas {
                    s.seq = rb_begin(txn, &b)?;
                    rb_save(txn, &s)?;
                }
                Ok(())
            })
            .await
    }
}

// ---------------------------------------------------------------- byte KV (fjall, append)

/// A write transaction over numbered tables of byte keys and values.
trait KvTx {
    fn get(&mut self, table: usize, key: &[u8]) -> Res<Option<Vec<u8>>>;
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]);
    fn del(&mut self, table: usize, key: &[u8]);
}

// Saga log tables.
const T_SAGAS: usize = 0;
const T_KEYS: usize = 1;
const T_BY_SEQ: usize = 2;
const T_BY_STATE: usize = 3;
const T_UNFINISHED: usize = 4;
const T_META: usize = 5;
const T_DELTAS: usize = 6;
const LOG_TABLES: [&str; 7] = [
    "sagas",
    "idempotency_keys",
    "sagas_by_seq",
    "sagas_by_state",
    "unfinished_sagas",
    "meta",
    "saga_deltas",
];
// Inventory tables.
const T_PRODUCTS: usize = 0;
const T_RESERVATIONS: usize = 1;
const T_INV_BARRIER: usize = 2;
const INVENTORY_TABLES: [&str; 3] = ["products", "reservations", "barrier"];
// Order tables.
const T_ORDERS: usize = 0;
const T_COUPONS: usize = 1;
const T_CUSTOMER_ORDERS: usize = 2;
const T_ORDER_META: usize = 3;
const T_ORDER_BARRIER: usize = 4;
const ORDER_TABLES: [&str; 5] = ["orders", "coupons", "customer_orders", "meta", "barrier"];

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(0);
        }
        v.extend_from_slice(p);
    }
    v
}

fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

fn delta_key(saga_id: &[u8], n: u8) -> Vec<u8> {
    let mut v = saga_id.to_vec();
    v.push(n);
    v
}

fn kv_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn kv_begin(tx: &mut dyn KvTx, b: &BeginRec) -> Res<u64> {
    if tx.get(T_KEYS, b.key.as_bytes())?.is_some() {
        return Err("duplicate idempotency key".into());
    }
    let seq = kv_u64(tx.get(T_META, b"seq")?) + 1;
    tx.put(T_META, b"seq", &seq.to_be_bytes());
    let id = b.saga_id.as_bytes();
    tx.put(T_KEYS, b.key.as_bytes(), id);
    tx.put(T_BY_SEQ, &seq.to_be_bytes(), id);
    tx.put(T_SAGAS, id, &b.bytes);
    tx.put(T_BY_STATE, &seq_key(&[b.state], seq), id);
    tx.put(T_UNFINISHED, id, &seq.to_be_bytes());
    Ok(seq)
}

fn kv_save(tx: &mut dyn KvTx, s: &SaveRec) -> Res<()> {
    let id = s.saga_id.as_bytes();
    match &s.body {
        SaveBody::Full(bytes) => tx.put(T_SAGAS, id, bytes),
        SaveBody::Delta(n, bytes) => tx.put(T_DELTAS, &delta_key(id, *n), bytes),
    }
    if s.old_state != s.new_state {
        tx.del(T_BY_STATE, &seq_key(&[s.old_state], s.seq));
        tx.put(T_BY_STATE, &seq_key(&[s.new_state], s.seq), id);
        if s.new_state == SagaState::Completed.index() {
            tx.del(T_UNFINISHED, id);
        } else {
            tx.put(T_UNFINISHED, id, &s.seq.to_be_bytes());
        }
    }
    Ok(())
}

fn kv_purge(tx: &mut dyn KvTx, sagas: &[(String, String, u64)]) {
    for (id, key, seq) in sagas {
        tx.del(T_SAGAS, id.as_bytes());
        tx.del(T_KEYS, key.as_bytes());
        tx.del(T_BY_SEQ, &seq.to_be_bytes());
        tx.del(T_BY_STATE, &seq_key(&[SagaState::Completed.index()], *seq));
        for n in 1..=3u8 {
            tx.del(T_DELTAS, &delta_key(id.as_bytes(), n));
        }
    }
}

/// The barrier gate: `action` must not have run, nor its compensation.
fn kv_gate(tx: &mut dyn KvTx, table: usize, saga_id: &str, action: &str, comp: &str) -> Res<()> {
    if tx
        .get(table, &cat(&[saga_id.as_bytes(), action.as_bytes()]))?
        .is_some()
        || tx
            .get(table, &cat(&[saga_id.as_bytes(), comp.as_bytes()]))?
            .is_some()
    {
        return Err("delivered twice".into());
    }
    Ok(())
}

fn kv_reserve(tx: &mut dyn KvTx, saga_id: &str, sku: &str, qty: i64) -> Res<()> {
    kv_gate(tx, T_INV_BARRIER, saga_id, "reserve", "release")?;
    let mut product: Product =
        serde_json::from_slice(&tx.get(T_PRODUCTS, sku.as_bytes())?.ok_or("unknown sku")?)?;
    if product.available < qty {
        return Err("out of stock".into());
    }
    product.available -= qty;
    product.reserved += qty;
    tx.put(T_PRODUCTS, sku.as_bytes(), &serde_json::to_vec(&product)?);
    let line = ReservedLine {
        sku: product.sku,
        name: product.name,
        quantity: qty,
        unit_price: product.unit_price,
    };
    let reservation = Reservation {
        lines: vec![line.clone()],
        state: ReservationState::Reserved,
    };
    tx.put(
        T_RESERVATIONS,
        saga_id.as_bytes(),
        &serde_json::to_vec(&reservation)?,
    );
    tx.put(
        T_INV_BARRIER,
        &cat(&[saga_id.as_bytes(), b"reserve"]),
        &serde_json::to_vec(&ReserveOutcome::Reserved(vec![line]))?,
    );
    Ok(())
}

fn kv_create(tx: &mut dyn KvTx, new: NewOrder) -> Res<()> {
    let saga_id = new.saga_id.clone();
    kv_gate(tx, T_ORDER_BARRIER, &saga_id, "create", "cancel")?;
    let coupon: Option<Coupon> = tx
        .get(T_COUPONS, COUPON.as_bytes())?
        .map(|v| serde_json::from_slice(&v))
        .transpose()?;
    let order = build_order(new, coupon.as_ref(), now_ms());
    let seq = kv_u64(tx.get(T_ORDER_META, b"order_seq")?) + 1;
    tx.put(T_ORDER_META, b"order_seq", &seq.to_be_bytes());
    tx.put(
        T_ORDERS,
        order.order_id.as_bytes(),
        &serde_json::to_vec(&order)?,
    );
    let mut customer = order.customer_id.as_bytes().to_vec();
    customer.push(0);
    tx.put(
        T_CUSTOMER_ORDERS,
        &seq_key(&customer, u64::MAX - seq),
        order.order_id.as_bytes(),
    );
    tx.put(
        T_ORDER_BARRIER,
        &cat(&[saga_id.as_bytes(), b"create"]),
        &serde_json::to_vec(&CreateRecord::Created {
            order_id: order.order_id,
        })?,
    );
    Ok(())
}

fn kv_seed_inventory(tx: &mut dyn KvTx) -> Res<()> {
    for p in seed_products() {
        tx.put(T_PRODUCTS, p.sku.as_bytes(), &serde_json::to_vec(&p)?);
    }
    Ok(())
}

fn kv_seed_orders(tx: &mut dyn KvTx) -> Res<()> {
    tx.put(
        T_COUPONS,
        COUPON.as_bytes(),
        &serde_json::to_vec(&seed_coupon())?,
    );
    Ok(())
}

/// A byte-KV store of the mesh: one of fjall or the append file.
trait KvStore: Send + Sync + 'static {
    fn write<R: Send>(
        &self,
        f: impl FnOnce(&mut dyn KvTx) -> Res<R> + Send,
    ) -> impl Future<Output = Res<R>> + Send;
    fn syncs(&self) -> u64;
    fn settle(&self) -> Res<()> {
        Ok(())
    }
    fn get(&self, _table: usize, _key: &[u8]) -> Res<Option<usize>> {
        Ok(None)
    }
}

struct KvMesh<S> {
    log: S,
    inventory: S,
    orders: S,
}

impl<S: KvStore> Mesh for KvMesh<S> {
    async fn seed(&self) -> Res<()> {
        self.inventory.write(kv_seed_inventory).await?;
        self.orders.write(kv_seed_orders).await
    }
    async fn begin(&self, b: BeginRec) -> Res<u64> {
        self.log.write(|tx| kv_begin(tx, &b)).await
    }
    async fn save(&self, s: SaveRec) -> Res<()> {
        self.log.write(|tx| kv_save(tx, &s)).await
    }
    async fn reserve(&self, saga_id: String, sku: String, qty: i64) -> Res<()> {
        self.inventory
            .write(|tx| kv_reserve(tx, &saga_id, &sku, qty))
            .await
    }
    async fn create_order(&self, order: NewOrder) -> Res<()> {
        self.orders.write(|tx| kv_create(tx, order)).await
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.log.syncs() + self.inventory.syncs() + self.orders.syncs())
    }
    fn settle(&self) -> Res<()> {
        self.log.settle()?;
        self.inventory.settle()?;
        self.orders.settle()
    }
    fn get_saga(&self, saga_id: &str) -> Res<Option<usize>> {
        self.log.get(T_SAGAS, saga_id.as_bytes())
    }
    async fn purge(&self, sagas: Vec<(String, String, u64)>) -> Res<()> {
        self.log
            .write(|tx| {
                kv_purge(tx, &sagas);
                Ok(())
            })
            .await
    }
    async fn fill(&self, sagas: Vec<(BeginRec, SaveRec)>) -> Res<()> {
        self.log
            .write(|tx| {
                for (b, mut s) in sagas {
                    s.seq = kv_begin(tx, &b)?;
                    kv_save(tx, &s)?;
                }
                Ok(())
            })
            .await
    }
}

// ---------------------------------------------------------------- fjall

struct FjallTx<'a> {
    tx: SingleWriterWriteTx<'a>,
    ks: &'a [SingleWriterTxKeyspace],
}

impl KvTx for FjallTx<'_> {
    fn get(&mut self, table: usize, key: &[u8]) -> Res<Option<Vec<u8>>> {
        Ok(self.tx.get(&self.ks[table], key)?.map(|v| v.to_vec()))
    }
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        self.tx.insert(&self.ks[table], key, value);
    }
    fn del(&mut self, table: usize, key: &[u8]) {
        self.tx.remove(&self.ks[table], key);
    }
}

/// One fjall database (a store of the mesh): transactions from the calling
/// task; durability by group `persist(SyncData)`, or per transaction.
struct FjallStore {
    db: SingleWriterTxDatabase,
    ks: Vec<SingleWriterTxKeyspace>,
    sync: Option<Arc<GroupSync>>,
    per_write_syncs: AtomicU64,
}

/// How a fjall store makes its writes durable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FjallSync {
    /// Group `persist(SyncData)`.
    Group,
    /// Group `persist(Buffer)` + `fdatasync` of the journal outside the lock.
    Side,
    /// `SyncData` on every transaction.
    PerWrite,
}

impl FjallSync {
    fn of(engine: Engine) -> Self {
        match engine {
            Engine::FjallSide => Self::Side,
            Engine::FjallSync => Self::PerWrite,
            _ => Self::Group,
        }
    }
}

/// The active journal of a fjall database: the highest `<n>.jnl`.
fn active_journal(dir: &Path) -> Res<(u64, File)> {
    let id = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".jnl")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .ok_or("no journal file")?;
    Ok((id, File::open(dir.join(format!("{id}.jnl")))?))
}

impl FjallStore {
    fn open(dir: &Path, name: &str, tables: &[&str], mode: FjallSync, knobs: &Knobs) -> Res<Self> {
        let path = dir.join(name);
        let db = SingleWriterTxDatabase::builder(&path)
            .cache_size(knobs.fjall_cache_mb * 1024 * 1024)
            .max_journaling_size(64 * 1024 * 1024)
            .worker_threads(1)
            .manual_journal_persist(true)
            .open()?;
        let memtable = knobs.fjall_memtable_mb * 1024 * 1024;
        let ks = tables
            .iter()
            .map(|t| {
                db.keyspace(t, || {
                    KeyspaceCreateOptions::default()
                        .max_memtable_size(memtable)
                        .manual_journal_persist(true)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sync_db = db.clone();
        let sync = match mode {
            FjallSync::Group => Some(GroupSync::start(name, move || {
                sync_db.persist(PersistMode::SyncData)?;
                Ok(())
            })?),
            FjallSync::Side => {
                let mut journal = active_journal(&path)?;
                Some(GroupSync::start(name, move || {
                    sync_db.persist(PersistMode::Buffer)?;
                    // A rotation since syncs the sealed journal itself;
                    // follow it to the new one.
                    loop {
                        let next = path.join(format!("{}.jnl", journal.0 + 1));
                        if !next.exists() {
                            break;
                        }
                        journal = (journal.0 + 1, File::open(next)?);
                    }
                    journal.1.sync_data()?;
                    Ok(())
                })?)
            }
            FjallSync::PerWrite => None,
        };
        Ok(Self {
            db,
            ks,
            sync,
            per_write_syncs: AtomicU64::new(0),
        })
    }

    fn apply<R>(&self, f: impl FnOnce(&mut dyn KvTx) -> Res<R>) -> Res<R> {
        let mut tx = self.db.write_tx();
        if self.sync.is_none() {
            tx = tx.durability(Some(PersistMode::SyncData));
            self.per_write_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let mut w = FjallTx { tx, ks: &self.ks };
        let r = f(&mut w)?;
        w.tx.commit()?;
        Ok(r)
    }
}

impl KvStore for FjallStore {
    async fn write<R: Send>(&self, f: impl FnOnce(&mut dyn KvTx) -> Res<R> + Send) -> Res<R> {
        let r = self.apply(f)?;
        if let Some(sync) = &self.sync {
            sync.durable().await;
        }
        Ok(r)
    }
    fn syncs(&self) -> u64 {
        self.sync
            .as_ref()
            .map_or(0, |s| s.syncs.load(Ordering::Relaxed))
            + self.per_write_syncs.load(Ordering::Relaxed)
    }
    fn settle(&self) -> Res<()> {
        for k in &self.ks {
            k.inner().rotate_memtable_and_wait()?;
        }
        Ok(())
    }
    fn get(&self, table: usize, key: &[u8]) -> Res<Option<usize>> {
        Ok(self.ks[table].get(key)?.map(|v| v.len()))
    }
}

// ---------------------------------------------------------------- append

/// An append-only log per store, with in-memory maps of the tables that
/// are read back (products, coupons, counters, barrier, keys): the least
/// any engine can do for the same records.
struct AppendState {
    maps: Vec<HashMap<Vec<u8>, Vec<u8>>>,
    kept: &'static [usize],
    buf: Vec<u8>,
}

struct AppendTx<'a>(&'a mut AppendState);

impl KvTx for AppendTx<'_> {
    fn get(&mut self, table: usize, key: &[u8]) -> Res<Option<Vec<u8>>> {
        Ok(self.0.maps[table].get(key).cloned())
    }
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        if self.0.kept.contains(&table) {
            self.0.maps[table].insert(key.to_vec(), value.to_vec());
        }
        let b = &mut self.0.buf;
        b.push(u8::try_from(table).unwrap_or(u8::MAX));
        b.extend_from_slice(&u32::try_from(key.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(value);
    }
    fn del(&mut self, table: usize, key: &[u8]) {
        self.0.maps[table].remove(key);
        let b = &mut self.0.buf;
        b.push(0x80 | u8::try_from(table).unwrap_or(0x7f));
        b.extend_from_slice(&u32::try_from(key.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(key);
    }
}

struct AppendStore {
    state: Arc<Mutex<AppendState>>,
    sync: Arc<GroupSync>,
}

impl AppendStore {
    fn open(dir: &Path, name: &str, tables: usize, kept: &'static [usize]) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let state = Arc::new(Mutex::new(AppendState {
            maps: (0..tables).map(|_| HashMap::new()).collect(),
            kept,
            buf: Vec::new(),
        }));
        let st = Arc::clone(&state);
        let sync = GroupSync::start(name, move || {
            let buf = std::mem::take(&mut st.lock().unwrap_or_else(|e| e.into_inner()).buf);
            file.write_all(&buf)?;
            file.sync_data()?;
            Ok(())
        })?;
        Ok(Self { state, sync })
    }
}

impl KvStore for AppendStore {
    async fn write<R: Send>(&self, f: impl FnOnce(&mut dyn KvTx) -> Res<R> + Send) -> Res<R> {
        let r = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut AppendTx(&mut st))?
        };
        self.sync.durable().await;
        Ok(r)
    }
    fn syncs(&self) -> u64 {
        self.sync.syncs.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------- measuring

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

fn peak_rss_mb() -> f64 {
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
fn disk_usage(dir: &Path) -> u64 {
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
fn log_usage(dir: &Path) -> u64 {
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

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// p50 and p99 (µs) of `small write + fdatasync` on `dir`'s disk: in place
/// (pwrite at offset 0) and appending.
fn fdatasync_probe(dir: &Path, n: usize) -> Res<(f64, f64, f64)> {
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
struct RunResult {
    engine: String,
    encoding: String,
    load: String,
    repeat: usize,
    sagas: u64,
    elapsed_s: f64,
    sagas_per_s: f64,
    cpu_us_per_saga: f64,
    bytes_per_saga: f64,
    /// Also counting what the engine still held in memory at the end
    /// (fjall memtables, flushed after the run).
    bytes_per_saga_flushed: f64,
    fsyncs_per_saga: Option<f64>,
    /// Saga log record bytes per saga (all 4 writes).
    log_record_bytes: f64,
    write_p50_us: f64,
    write_p99_us: f64,
    saga_p50_us: f64,
    saga_p99_us: f64,
    peak_rss_mb: f64,
    disk_mb: f64,
    /// fsync + fdatasync syscalls per saga, from strace -c (strace pass).
    strace_fsyncs_per_saga: Option<f64>,
    /// The machine's 1-minute load average when the run started.
    loadavg: f64,
}

fn open_mesh_and_run(
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

fn fjall_mesh(dir: &Path, mode: FjallSync, knobs: &Knobs) -> Res<KvMesh<FjallStore>> {
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

// ---------------------------------------------------------------- bonus runs

/// Point reads of saga records after `n` sagas are in the log (compact
/// records, filled by batches of non-durable writes), then the one-caller
/// durable write latency at that size.
fn point_read_bonus(engine: Engine, dir: &Path, n: u64, knobs: &Knobs) -> Res<String> {
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
fn retention_bonus(engine: Engine, dir: &Path, secs: f64, knobs: &Knobs) -> Res<String> {
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

// ---------------------------------------------------------------- parent

fn child_main(spec: &str, dir: &Path, knobs: &Knobs) -> Res<()> {
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
fn spawn_child(args: &Args, spec: &str, dir: &Path, strace: bool) -> Res<(String, Option<u64>)> {
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
