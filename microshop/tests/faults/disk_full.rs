//! Scenario 4: a full disk under a participant's store and under the
//! orchestrator's saga log, with `microshop serve` processes (on loopback:
//! the fault is the disk, not the network).
//!
//! A service's data directory is moved onto a small tmpfs, which the test
//! then fills to the last byte. Writes must answer UNAVAILABLE with reason
//! STORAGE_FULL and a message that says the disk is full, health must turn
//! NOT_SERVING, nothing may panic or be lost; once the space is freed the
//! same process serves again, and the sagas caught in between finish with
//! no operator. Then the invariants hold.
//!
//! Needs root (mount); under CI it fails rather than skips without it.

use std::{
    fs::File,
    io::Write,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    cluster::{
        Cluster, Health, Svc,
        shop::{GRANT, grant, place, place_ok, product, put_product, wait_settled, with_deadline},
    },
    suite::{Scenario, Tally, runtime, serial},
};
use microshop::invariants::Universe;
use microshop_proto::{inventory::v1 as inv, orchestrator::v1 as orch};
use microshop_runtime::errors::{Reason, reason_of};
use tonic::Code;

const ENGINE: &[&str] = &[
    "--step-attempts",
    "5",
    "--step-budget-ms",
    "800",
    "--compensation-attempts",
    "5",
    "--backoff-min-ms",
    "10",
    "--backoff-max-ms",
    "100",
    "--call-timeout-ms",
    "1000",
];

const WITHIN: Duration = Duration::from_secs(20);

fn run(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

/// Stops `svc`, moves its data directory onto a fresh tmpfs of `mib` MiB
/// mounted in its place, and starts it again there. `None` without root.
async fn onto_small_disk(cluster: &mut Cluster, svc: Svc, mib: u32) -> Option<SmallDisk> {
    let dir = cluster.data_dir(svc);
    cluster.stop(svc, Duration::from_secs(10));
    let aside = dir.with_extension("before-tmpfs");
    std::fs::rename(&dir, &aside).expect("move the data directory aside");
    std::fs::create_dir(&dir).expect("mount point");
    let mounted = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(&dir));
    if !mounted {
        assert!(
            !microshop_runtime::testing::is_ci(std::env::var("CI").ok().as_deref()),
            "cannot mount a tmpfs: this suite needs root"
        );
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return None;
    }
    let disk = SmallDisk { dir: dir.clone() };
    assert!(run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", aside.display()))
        .arg(&dir)));
    cluster.start_svc(svc, &[]).await;
    Some(disk)
}

/// A mounted tmpfs, unmounted on drop (lazily: a process may still hold it).
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Fills the disk to the last byte; the file to remove to free it.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = File::create(&path).expect("filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
        while f.write(&[0x5a; 512]).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn assert_full(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert_eq!(
        reason_of(status),
        Some(Reason::StorageFull),
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains("disk") && status.message().contains("full"),
        "{what}: the message says the disk is full: {status:?}"
    );
}

async fn place_answer(
    cluster: &Cluster,
    req: orch::PlaceOrderRequest,
) -> Result<orch::PlaceOrderResponse, tonic::Status> {
    cluster
        .clients()
        .checkout
        .clone()
        .place_order(with_deadline(req, Duration::from_secs(10)))
        .await
        .map(tonic::Response::into_inner)
}

fn still_running(cluster: &mut Cluster, svc: Svc) {
    assert!(
        cluster.exited(svc).is_none(),
        "{svc:?} exited on a full disk: {:?}",
        cluster.process(svc).stderr()
    );
}

#[test]
fn a_full_disk_under_a_participant_refuses_writes_and_heals_when_space_is_freed() {
    let _serial = serial();
    let started = Instant::now();
    runtime().block_on(async move {
    let mut tally = Tally { faults: 1, ..Tally::default() };
    let mut cluster = Cluster::builder().orchestrator(ENGINE).start().await;
    let mut u = Universe::default();
    let Some(disk) = onto_small_disk(&mut cluster, Svc::Inventory, 48).await else {
        return;
    };
    let c = cluster.clients();
    put_product(&c, &mut u, "FULL-A", 100).await;
    grant(&c, &mut u, "full-a").await;
    let mut told = Vec::new();
    for i in 0..5 {
        let key = format!("full-before-{i}");
        let answer = place_ok(&c, place(&key, "full-a", "FULL-A", "", 0)).await;
        told.push((key, answer.order_id));
    }

    let filler = disk.fill();
    // Writes straight to inventory-svc: the last page of its journal may
    // still take a few; the first that needs room is refused, and so is
    // every one after it.
    let mut stored = 0;
    let refused = loop {
        let sku = format!("FULL-NEW-{stored}");
        match c
            .inventory
            .clone()
            .put_product(inv::PutProductRequest {
                sku: sku.clone(),
                name: "stored before the disk was full".into(),
                unit_price: 1_000,
                stock: 1,
            })
            .await
        {
            Ok(_) => {
                u.skus.insert(sku, 1);
                stored += 1;
                assert!(stored < 500, "writes never failed on a full disk");
            }
            Err(status) => break status,
        }
    };
    assert_full(&refused, "PutProduct on a full disk");
    cluster
        .wait_health(Svc::Inventory, Health::Overall, false, WITHIN)
        .await;
    // A checkout now: its reservation cannot be stored; it waits for
    // inventory-svc rather than failing the customer.
    let caught = place_answer(&cluster, place("full-caught", "full-a", "FULL-A", "", 0))
        .await
        .expect_err("a checkout cannot reserve while inventory-svc's disk is full");
    assert_eq!(caught.code(), Code::Unavailable, "{caught:?}");
    still_running(&mut cluster, Svc::Inventory);

    std::fs::remove_file(&filler).expect("free the space");
    let freed = Instant::now();
    cluster
        .wait_health(Svc::Inventory, Health::Overall, true, WITHIN)
        .await;
    let freed = freed.elapsed();
    let saga = crate::cluster::shop::saga_by_key(&c, "full-caught")
        .await
        .expect("the caught checkout is logged");
    let saga = wait_settled(&c, &saga.saga_id).await;
    assert_eq!(
        orch::SagaState::try_from(saga.state),
        Ok(orch::SagaState::Completed),
        "the caught checkout finished by itself: {}",
        crate::cluster::shop::describe(&saga)
    );
    let retried = place_ok(&c, place("full-caught", "full-a", "FULL-A", "", 0)).await;
    assert_eq!(retried.order_id, saga.order_id);
    for (key, order_id) in &told {
        let again = place_ok(&c, place(key, "full-a", "FULL-A", "", 0)).await;
        assert_eq!(&again.order_id, order_id, "{key} keeps its outcome");
    }
    let a = product(&c, "FULL-A").await;
    assert_eq!((a.available, a.reserved), (100 - 6, 6), "{a:?}");
    let unknown = c
        .inventory
        .clone()
        .get_product(inv::GetProductRequest {
            sku: format!("FULL-NEW-{stored}"),
        })
        .await
        .expect_err("the refused PutProduct stored nothing");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(GRANT, crate::cluster::shop::balance(&c, "full-a").await.points);
    tally.count_sagas(&c).await;
    tally.invariants(&c, &u, "a full disk under inventory-svc").await;
    eprintln!(
        "scenario 4 (inventory-svc): {stored} writes still fit, then STORAGE_FULL and NOT_SERVING; \
         serving again {:.1?} after the space was freed; the caught checkout completed",
        freed
    );
    drop(cluster);
    drop(disk);
    tally.finish(Scenario::Numbered(4, "a full disk under inventory-svc"), started);
    });
}

#[test]
fn a_full_disk_under_the_saga_log_refuses_checkouts_and_heals_when_space_is_freed() {
    let _serial = serial();
    let started = Instant::now();
    runtime().block_on(async move {
        let mut tally = Tally {
            faults: 1,
            ..Tally::default()
        };
        let mut cluster = Cluster::builder().orchestrator(ENGINE).start().await;
        let mut u = Universe::default();
        let Some(disk) = onto_small_disk(&mut cluster, Svc::Orchestrator, 48).await else {
            return;
        };
        let c = cluster.clients();
        put_product(&c, &mut u, "FULL-B", 100).await;
        grant(&c, &mut u, "full-b").await;
        let before = place_ok(&c, place("log-before", "full-b", "FULL-B", "", 0)).await;

        // A checkout caught mid-way: it waits for inventory-svc (down), and the
        // log fills before inventory-svc is back.
        cluster.stop(Svc::Inventory, Duration::from_secs(10));
        let waiting = place_answer(&cluster, place("log-caught", "full-b", "FULL-B", "", 0))
            .await
            .expect_err("inventory-svc is down");
        assert_eq!(waiting.code(), Code::Unavailable, "{waiting:?}");
        let filler = disk.fill();
        cluster.start_svc(Svc::Inventory, &[]).await;

        // Checkouts on the full log: a few may still fit in its journal's
        // last page; one may get its begin in and then fail a later save (it
        // is caught in between); at the latest the next is refused at once.
        let mut tried = Vec::new();
        loop {
            let key = format!("log-full-{}", tried.len());
            tried.push(key.clone());
            match place_answer(&cluster, place(&key, "full-b", "FULL-B", "", 0)).await {
                Ok(_) => assert!(tried.len() < 200, "checkouts never failed on a full log"),
                Err(status) if reason_of(&status) == Some(Reason::StorageFull) => {
                    assert_full(&status, "PlaceOrder on a full saga log");
                    break;
                }
                Err(status) => assert_eq!(status.code(), Code::Unavailable, "{key}: {status:?}"),
            }
        }
        cluster
            .wait_health(Svc::Orchestrator, Health::Overall, false, WITHIN)
            .await;
        still_running(&mut cluster, Svc::Orchestrator);

        std::fs::remove_file(&filler).expect("free the space");
        let freed = Instant::now();
        cluster
            .wait_health(Svc::Orchestrator, Health::Overall, true, WITHIN)
            .await;
        let freed = freed.elapsed();
        let caught = crate::cluster::shop::saga_by_key(&c, "log-caught")
            .await
            .expect("the caught checkout is logged");
        let caught = wait_settled(&c, &caught.saga_id).await;
        assert_eq!(
            orch::SagaState::try_from(caught.state),
            Ok(orch::SagaState::Completed),
            "{}",
            crate::cluster::shop::describe(&caught)
        );
        // Every checkout tried on the full log ends by itself, or was never
        // begun; a retry of each answers an outcome.
        for key in &tried {
            if let Some(saga) = crate::cluster::shop::saga_by_key(&c, key).await {
                wait_settled(&c, &saga.saga_id).await;
            }
            let answer = place_ok(&c, place(key, "full-b", "FULL-B", "", 0)).await;
            assert!(!answer.order_id.is_empty(), "{key}: {answer:?}");
        }
        let again = place_ok(&c, place("log-before", "full-b", "FULL-B", "", 0)).await;
        assert_eq!(again.order_id, before.order_id);
        tally.count_sagas(&c).await;
        tally
            .invariants(&c, &u, "a full disk under the saga log")
            .await;
        eprintln!(
            "scenario 4 (saga log): {} checkouts tried on the full log, the last refused with \
             STORAGE_FULL; serving again {:.1?} after the space was freed; every one ended or \
             was never begun",
            tried.len(),
            freed
        );
        drop(cluster);
        drop(disk);
        tally.finish(
            Scenario::Numbered(4, "a full disk under the saga log"),
            started,
        );
    });
}
