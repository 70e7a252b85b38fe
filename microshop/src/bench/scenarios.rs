//! The saga side of the run: the in-process mesh the saga phases run on
//! (durable or not), seeding it (or a `--target`), the mean time per step
//! read back with GetSaga, and the scenarios that need a prepared saga
//! log: `history` (completed sagas bulk-written through the `SagaLog` API,
//! then the latency again) and `recovery` (RUNNING sagas written, then the
//! time from the orchestrator's start until all have ended).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Context;
use microshop_proto::{
    inventory::v1::{self as inv, inventory_service_client::InventoryServiceClient},
    loyalty::v1::{self as loy, loyalty_service_client::LoyaltyServiceClient},
    orchestrator::v1::{self as pb, saga_admin_service_client::SagaAdminServiceClient},
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
use tokio::{
    task::JoinSet,
    time::{Instant, sleep},
};
use tonic::{Status, transport::Channel};

use super::{
    BenchOptions, HistoryReport, RecoveryReport, StepTime,
    load::{Gen, Load, closed_loop, customer, open_loop},
    ratio,
    report::progress,
    secs,
};
use crate::mesh::{Mesh, MeshConfig, connect};

fn mesh_config(dir: &Path, durable: Durable) -> MeshConfig {
    let mut config = MeshConfig::ephemeral(dir);
    config.durable = durable;
    config
}

pub(super) async fn start_mesh(dir: &Path, durable: Durable) -> anyhow::Result<Mesh> {
    Mesh::start(mesh_config(dir, durable))
        .await
        .context("cannot start the in-process mesh")
}

/// Products with a stock no run exhausts, and (if orders redeem points)
/// customers holding plenty of points.
pub(super) async fn seed(
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
    // Points for every customer of an in-process mesh (the critical-path
    // count redeems them whatever `--redeem-points` says), and of a target
    // when its orders redeem.
    if redeem_points || inventory_url.contains("127.0.0.1") {
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

pub(super) async fn seed_mesh(
    mesh: &Mesh,
    skus: &[String],
    redeem_points: bool,
) -> anyhow::Result<()> {
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
pub(super) async fn step_times(url: &str, saga_ids: &[String]) -> anyhow::Result<Vec<StepTime>> {
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

pub(super) async fn recovery_scenario(
    dir: &Path,
    opts: &BenchOptions,
    skus: &[String],
) -> anyhow::Result<RecoveryReport> {
    let mesh = start_mesh(dir, Durable::Yes).await?;
    seed_mesh(&mesh, skus, opts.redeem_points).await?;
    mesh.shutdown().await?;
    let n = opts.recovery_sagas;
    progress(&format!(
        "writing {n} RUNNING sagas to the log (a crash with {n} in flight)"
    ));
    {
        let log = EmbeddedSagaLog::open(dir, Durable::Yes)?;
        bulk_begin(&log, n, |i| {
            running_record("recovery", i, &skus[i % skus.len()], opts.redeem_points)
        })
        .await?;
    }
    progress("restarting the mesh and timing recovery");
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

pub(super) async fn history_scenario(
    dir: &Path,
    opts: &BenchOptions,
    skus: &[String],
    rate: f64,
    empty_p50_ms: f64,
    empty_one_caller_p50_ms: f64,
) -> anyhow::Result<HistoryReport> {
    let n = usize::try_from(opts.history).unwrap_or(usize::MAX);
    progress(&format!(
        "pre-filling the saga log with {n} completed sagas"
    ));
    let started = Instant::now();
    {
        let log = EmbeddedSagaLog::open(dir, Durable::Yes)?;
        bulk_begin(&log, n, |i| completed_record(i, &skus[i % skus.len()])).await?;
        // A log that grew over weeks has been compacted meanwhile; one
        // written in a minute has not, and its compaction would otherwise
        // run through the measurement.
        progress(&format!(
            "compacting the log after {:.1} s of writes",
            started.elapsed().as_secs_f64()
        ));
        tokio::task::spawn_blocking(move || log.compact_blocking())
            .await
            .context("the compaction task failed")?
            .context("cannot compact the pre-filled log")?;
    }
    let prefill_s = started.elapsed().as_secs_f64();
    let log_bytes = dir_bytes(&microshop_storage::embedded::store_path(
        dir,
        "orchestrator",
    ));
    progress(&format!(
        "pre-fill took {prefill_s:.1} s ({log_bytes} bytes); measuring"
    ));
    let mesh = start_mesh(dir, Durable::Yes).await?;
    seed_mesh(&mesh, skus, opts.redeem_points).await?;
    let load = Load::connect(
        &mesh.orchestrator_url(),
        opts.connections,
        Gen::new("history", skus.to_vec(), opts.redeem_points),
    )
    .await?;
    progress(&format!("history, closed loop, {} callers", opts.clients));
    let (closed, _) = closed_loop(
        &load,
        opts.clients,
        secs(opts.warmup),
        secs(opts.duration),
        0,
    )
    .await;
    progress("history, one caller");
    let (one_caller, _) = closed_loop(
        &load,
        1,
        secs(opts.warmup).min(Duration::from_millis(500)),
        secs(opts.duration).min(Duration::from_secs(3)),
        0,
    )
    .await;
    // The empty log's half-peak rate, unless this log's own peak is lower:
    // offering more than a mesh sustains measures only the queue (and its
    // memory), not the latency at half of its peak.
    let rate = rate.min((closed.throughput_per_s * 0.5).max(1.0));
    progress(&format!("history, open loop at {rate:.0}/s"));
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

/// Bytes the files under `dir` take (0 where unreadable).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                Ok(_) => e.metadata().map_or(0, |m| m.len()),
                Err(_) => 0,
            })
            .sum()
    })
}
