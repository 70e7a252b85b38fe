//! `microshop migrate` on a data directory of the last redb release (the
//! `fixtures/redb-v1` shop, written by that binary): the services refuse
//! it with what to do, a dry run changes nothing, the migration prints its
//! counts, and the four services then serve the old shop (stock, points,
//! orders, coupons, sagas and their indexes, replays of old idempotency
//! keys, a FAILED saga the new engine finishes) with every invariant
//! holding. A second run is a no-op; a store in use, or a new store that
//! already holds data, is refused and left alone; a migration killed at
//! either of its crash points is finished by the next run.
//!
//! Real processes only, through the shared harness ([`cluster::process`]).

mod cluster;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use cluster::{
    READY_WITHIN, Svc, clients_at,
    process::{Exited, Process, Spawn, free_addr, serve, start_on_free_port},
    shop::{balance, coupon, orders_of, place_units, product, wait_settled},
};
use microshop::{
    invariants::{self, Universe, all_sagas},
    mesh::{MeshAddrs, MeshClients},
};
use microshop_proto::orchestrator::v1 as orch;
use tempfile::TempDir;

/// How long one `microshop migrate` (or a refused start) may take.
const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// A checkout hold and payment deadline no fixture outlives.
const TEN_YEARS: &str = "315360000";

const STORES: [&str; 4] = ["inventory", "loyalty", "order", "orchestrator"];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redb-v1")
}

/// A temporary directory holding `data/`, a copy of the fixture's stores.
fn data_dir() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).expect("create the data directory");
    for name in STORES {
        copy_store(name, &data);
    }
    (tmp, data)
}

fn copy_store(name: &str, data: &Path) {
    let file = format!("{name}.redb");
    std::fs::copy(fixture().join(&file), data.join(&file))
        .unwrap_or_else(|e| panic!("copy the fixture's {file}: {e}"));
}

/// Every file under `dir` with its bytes: what "changes nothing" compares.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                out.insert(path.clone(), Vec::new());
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read a file");
                out.insert(path, bytes);
            }
        }
    }
    out
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the data directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn run(name: &str, args: &[&str]) -> Exited {
    Spawn::microshop(name)
        .args(args)
        .spawn()
        .exit_within(EXIT_WITHIN)
        .unwrap_or_else(|stderr| panic!("microshop {args:?} still runs: {stderr}"))
}

fn migrate(data: &Path, extra: &[&str]) -> Exited {
    let data = data.to_str().expect("a UTF-8 path");
    let mut args = vec!["migrate", "--data-dir", data];
    args.extend(extra);
    run("migrate", &args)
}

#[track_caller]
fn assert_ok(out: &Exited) {
    assert!(
        out.status.success(),
        "exited {}: stdout {}\nstderr {}",
        out.status,
        out.stdout,
        out.stderr
    );
}

#[track_caller]
fn assert_refused(out: &Exited, says: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "not refused with exit 1: stdout {}\nstderr {}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains(says), "{says:?} not in: {}", out.stderr);
}

/// The per-store count lines the fixture gives (rows per table read).
const COUNTS: [&str; 4] = [
    "products 3, reservations 4, barrier 8",
    "accounts 2, barrier 5, order_points (from the barrier) 3",
    "orders 3, coupons 1, customer_orders 3, meta 1, barrier 4",
    "sagas 7, idempotency_keys 7, sagas_by_seq 7, sagas_by_state 7, unfinished_sagas 0, \
     payment_deadlines 1, payment_deadline_of 1, meta 1",
];

/// The four services as `microshop serve` processes over one data
/// directory (each opens only its own store), on free ports.
struct Mesh {
    procs: Vec<Process>,
    addrs: MeshAddrs,
}

impl Mesh {
    async fn start(data: &Path) -> Self {
        let mut addrs = MeshAddrs {
            orchestrator: free_addr(),
            inventory: free_addr(),
            loyalty: free_addr(),
            order: free_addr(),
        };
        let mut procs = Vec::new();
        // The participants first, each on a port it could bind: the
        // orchestrator is given the ones they got.
        for svc in Svc::START_ORDER {
            let participants = addrs.clone();
            let started = start_on_free_port(
                |addr| {
                    // Nothing of the old shop is purged or expired under
                    // the test, however long ago the fixture was written.
                    let spawn = serve(svc, addr, data)
                        .args(["--insecure-no-auth", "--barrier-retention-secs", "0"])
                        .args(["--saga-retention-secs", "0"])
                        .args(["--checkout-hold-secs", TEN_YEARS])
                        .args(["--payment-ttl-secs", TEN_YEARS]);
                    if svc != Svc::Orchestrator {
                        return spawn;
                    }
                    spawn
                        .args([
                            "--inventory-url",
                            &format!("http://{}", participants.inventory),
                        ])
                        .args(["--loyalty-url", &format!("http://{}", participants.loyalty)])
                        .args(["--order-url", &format!("http://{}", participants.order)])
                },
                svc.grpc_name(),
                READY_WITHIN,
            )
            .await;
            let (proc, addr) = started.unwrap_or_else(|why| panic!("{why}"));
            match svc {
                Svc::Inventory => addrs.inventory = addr,
                Svc::Loyalty => addrs.loyalty = addr,
                Svc::Order => addrs.order = addr,
                _ => addrs.orchestrator = addr,
            }
            procs.push(proc);
        }
        Self { procs, addrs }
    }

    fn clients(&self) -> MeshClients {
        clients_at(&self.addrs)
    }

    /// Kills the services: every answer they gave was durable, and a
    /// graceful stop would wait for the test's idle connections.
    fn stop(mut self) {
        for p in self.procs.iter_mut().rev() {
            p.kill();
        }
    }
}

/// A checkout as `make.sh` placed it (the fixture's shipping address: a
/// retry must be the same request).
fn as_written(
    key: &str,
    customer: &str,
    sku: &str,
    quantity: i64,
    coupon: &str,
    points: i64,
) -> orch::PlaceOrderRequest {
    orch::PlaceOrderRequest {
        shipping: Some(orch::ShippingAddress {
            name: "Alice".into(),
            address: "1 Main St".into(),
            phone: "0900000000".into(),
        }),
        ..place_units(key, customer, sku, quantity, coupon, points)
    }
}

/// The saga under `key`, from ListSagas.
fn by_key<'a>(sagas: &'a [orch::Saga], key: &str) -> &'a orch::Saga {
    sagas
        .iter()
        .find(|s| s.idempotency_key == key)
        .unwrap_or_else(|| panic!("no saga holds key {key}"))
}

fn state(s: &orch::Saga) -> orch::SagaState {
    orch::SagaState::try_from(s.state).expect("a known state")
}

async fn list_state(c: &MeshClients, state: orch::SagaState) -> Vec<String> {
    let resp = c
        .admin
        .clone()
        .list_sagas(orch::ListSagasRequest {
            state: state as i32,
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("ListSagas by state")
        .into_inner();
    resp.sagas.into_iter().map(|s| s.idempotency_key).collect()
}

#[tokio::test]
async fn an_old_data_directory_is_refused_then_migrated_and_served() {
    let (_tmp, data) = data_dir();
    let shown = data.to_str().expect("a UTF-8 path");

    // Every service refuses the old store, naming the command.
    for svc in STORES {
        let out = run(
            svc,
            &[
                "serve",
                svc,
                "--insecure-no-auth",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                shown,
            ],
        );
        assert!(!out.status.success(), "serve {svc} started on a redb store");
        let wanted = format!("microshop migrate --data-dir {shown}");
        assert!(out.stderr.contains(&wanted), "serve {svc}: {}", out.stderr);
    }

    // A dry run reads and counts everything and changes nothing.
    let before = snapshot(&data);
    let dry = migrate(&data, &["--dry-run"]);
    assert_ok(&dry);
    for counts in COUNTS {
        assert!(
            dry.stdout.contains(counts),
            "{counts:?} not in: {}",
            dry.stdout
        );
    }
    assert!(dry.stdout.contains("dry run: nothing was changed"));
    assert!(
        snapshot(&data) == before,
        "the dry run changed the directory"
    );

    // The migration: the same counts, every store converted, the old
    // files kept byte for byte under their new names.
    let out = migrate(&data, &[]);
    assert_ok(&out);
    for counts in COUNTS {
        assert!(
            out.stdout.contains(counts),
            "{counts:?} not in: {}",
            out.stdout
        );
    }
    let mut expected: Vec<String> = STORES
        .iter()
        .flat_map(|s| [format!("{s}.fjall"), format!("{s}.redb.migrated")])
        .collect();
    expected.sort();
    assert_eq!(names(&data), expected);
    for name in STORES {
        let kept = std::fs::read(data.join(format!("{name}.redb.migrated"))).expect("kept");
        let original = std::fs::read(fixture().join(format!("{name}.redb"))).expect("fixture");
        assert!(kept == original, "{name}.redb was changed by the migration");
    }

    let mesh = Mesh::start(&data).await;
    let c = mesh.clients();

    // Stock, points and coupon as the old shop left them.
    let stock = |p: &microshop_proto::inventory::v1::GetProductResponse| {
        (p.stock, p.available, p.reserved, p.sold)
    };
    assert_eq!(stock(&product(&c, "TSHIRT").await), (10, 7, 3, 0));
    assert_eq!(stock(&product(&c, "MUG").await), (4, 4, 0, 1));
    assert_eq!(stock(&product(&c, "POSTER").await), (2, 2, 0, 0));
    let alice = balance(&c, "alice").await;
    assert_eq!(
        (alice.points, alice.granted, alice.deducted),
        (430, 500, 70)
    );
    let bob = balance(&c, "bob").await;
    assert_eq!((bob.points, bob.deducted, bob.refunded), (100, 10, 10));
    assert_eq!(coupon(&c, "SAVE10").await.times_used, 1);

    // Orders, through the per-customer index.
    let status = |o: &microshop_proto::order::v1::Order| {
        microshop_proto::order::v1::OrderStatus::try_from(o.status)
            .expect("a known status")
            .as_str_name()
    };
    let alices: Vec<&str> = orders_of(&c, "alice").await.iter().map(status).collect();
    assert_eq!(
        alices,
        ["ORDER_STATUS_PAID", "ORDER_STATUS_PENDING_PAYMENT"]
    );
    let bobs: Vec<&str> = orders_of(&c, "bob").await.iter().map(status).collect();
    assert_eq!(bobs, ["ORDER_STATUS_CANCELLED"]);

    // Sagas: all seven, newest first, by state, by id.
    let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
    assert_eq!(sagas.len(), 7, "sagas: {sagas:?}");
    let o1 = by_key(&sagas, "order-1").clone();
    assert_eq!(state(&o1), orch::SagaState::Completed);
    assert_eq!(
        state(by_key(&sagas, "order-4")),
        orch::SagaState::Compensated
    );
    let failed = by_key(&sagas, "order-5").clone();
    assert_eq!(state(&failed), orch::SagaState::Failed);
    assert_eq!(
        sagas.last().map(|s| s.idempotency_key.as_str()),
        Some("order-1"),
        "not newest first"
    );
    assert_eq!(list_state(&c, orch::SagaState::Failed).await, ["order-5"]);
    assert_eq!(
        list_state(&c, orch::SagaState::Compensated).await,
        ["order-4"]
    );
    let got = c
        .admin
        .clone()
        .get_saga(orch::GetSagaRequest {
            saga_id: o1.saga_id.clone(),
        })
        .await
        .expect("GetSaga")
        .into_inner()
        .saga
        .expect("the saga");
    assert_eq!(got, o1);

    // An old idempotency key replays its outcome: the same saga and order,
    // nothing reserved twice.
    let replay = c
        .checkout
        .clone()
        .place_order(as_written("order-1", "alice", "TSHIRT", 2, "SAVE10", 50))
        .await
        .expect("PlaceOrder order-1 again")
        .into_inner();
    assert_eq!(replay.saga_id, o1.saga_id);
    assert_eq!(
        replay.order.as_ref().map(|o| o.order_id.as_str()),
        Some(o1.order_id.as_str())
    );
    let refused = c
        .checkout
        .clone()
        .place_order(as_written("order-4", "bob", "MUG", 99, "", 0))
        .await
        .expect_err("order-4 again is the same stock-out");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(stock(&product(&c, "TSHIRT").await), (10, 7, 3, 0));

    // Cancelling an old order refunds its points from the ledger the
    // migration derived from the barrier, and gives back its stock and
    // coupon use.
    let cancelled = c
        .checkout
        .clone()
        .cancel_order(orch::CancelOrderRequest {
            order_id: o1.order_id.clone(),
            reason: "after the upgrade".into(),
        })
        .await
        .expect("CancelOrder order-1")
        .into_inner();
    assert_eq!(
        orch::SagaState::try_from(cancelled.state),
        Ok(orch::SagaState::Completed)
    );
    let alice = balance(&c, "alice").await;
    assert_eq!((alice.points, alice.refunded), (480, 50));
    assert_eq!(stock(&product(&c, "TSHIRT").await), (10, 9, 1, 0));
    assert_eq!(coupon(&c, "SAVE10").await.times_used, 0);

    // The new engine finishes the old FAILED saga (loyalty-svc is up now)
    // and takes new checkouts after the old ones.
    let retried = c
        .admin
        .clone()
        .retry_saga(orch::RetrySagaRequest {
            saga_id: failed.saga_id.clone(),
            reason: "loyalty-svc is back".into(),
        })
        .await
        .expect("RetrySaga");
    drop(retried);
    let done = wait_settled(&c, &failed.saga_id).await;
    assert_eq!(state(&done), orch::SagaState::Completed);
    let new = c
        .checkout
        .clone()
        .place_order(place_units("order-6", "bob", "MUG", 1, "", 0))
        .await
        .expect("a new checkout")
        .into_inner();
    let sagas = all_sagas(&mut c.admin.clone()).await.expect("ListSagas");
    assert_eq!(sagas.len(), 9);
    assert_eq!(
        sagas[0].saga_id, new.saga_id,
        "the new saga is not the newest"
    );

    let universe = Universe {
        skus: [("TSHIRT", 10), ("MUG", 5), ("POSTER", 2)]
            .into_iter()
            .map(|(s, n)| (s.to_owned(), n))
            .collect(),
        customers: ["alice", "bob"].into_iter().map(str::to_owned).collect(),
        coupons: ["SAVE10".to_owned()].into_iter().collect(),
        ..Universe::default()
    };
    if let Err(v) = invariants::check(&c, &universe).await {
        panic!("after the migration: {v}");
    }
    mesh.stop();

    // Once is enough: the second run finds nothing to do.
    let before = snapshot(&data);
    let second = migrate(&data, &[]);
    assert_ok(&second);
    assert!(
        second.stdout.contains("nothing to migrate"),
        "{}",
        second.stdout
    );
    assert!(
        snapshot(&data) == before,
        "the second run changed the directory"
    );
}

/// `serve inventory` alone on `data`, SERVING (`what` it serves, for the
/// failure message), and clients whose inventory is it.
async fn inventory_alone(data: &Path, what: &str) -> (Process, MeshClients) {
    let (inventory, addr) = start_on_free_port(
        |addr| serve(Svc::Inventory, addr, data).arg("--insecure-no-auth"),
        Svc::Inventory.grpc_name(),
        READY_WITHIN,
    )
    .await
    .unwrap_or_else(|why| panic!("inventory serves {what}: {why}"));
    let c = clients_at(&MeshAddrs {
        orchestrator: addr,
        inventory: addr,
        loyalty: addr,
        order: addr,
    });
    (inventory, c)
}

#[tokio::test]
async fn a_store_in_use_or_already_holding_data_is_refused_and_left_alone() {
    // An old service holds inventory.redb (its writer lock, as redb takes it).
    let (_tmp, data) = data_dir();
    let held = redb::Database::open(data.join("inventory.redb")).expect("open the old store");
    let before = snapshot(&data);
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = migrate(&data, extra);
        assert_refused(
            &out,
            "inventory.redb is in use: stop the service using it first",
        );
        assert!(
            snapshot(&data) == before,
            "a refused run changed the directory"
        );
    }
    drop(held);

    // A new store that holds data already is never merged into, whether
    // its service runs (it is in use) or not.
    let (_tmp2, data) = data_dir();
    std::fs::remove_file(data.join("inventory.redb")).expect("remove");
    let (mut inventory, c) = inventory_alone(&data, "a fresh store").await;
    c.inventory
        .clone()
        .put_product(microshop_proto::inventory::v1::PutProductRequest {
            sku: "NEW".into(),
            name: "written by this version".into(),
            unit_price: 100,
            stock: 1,
        })
        .await
        .expect("PutProduct");
    copy_store("inventory", &data);
    let out = migrate(&data, &[]);
    assert_refused(
        &out,
        "inventory.fjall is in use: stop the service using it first",
    );
    inventory.kill();
    // Telling whether a store holds data opens it, as its service does
    // (fjall may rewrite its journal): outside it nothing may change, and
    // its data stays.
    let outside = |data: &Path| {
        let store = data.join("inventory.fjall");
        let mut s = snapshot(data);
        s.retain(|p, _| !p.starts_with(&store));
        s
    };
    let before = outside(&data);
    let out = migrate(&data, &[]);
    assert_refused(&out, "already holds data written by this version");
    assert!(out.stderr.contains("never merges"), "{}", out.stderr);
    assert!(
        outside(&data) == before,
        "a refused run changed the directory"
    );
    let (mut inventory, c) = inventory_alone(&data, "its store again").await;
    assert_eq!(product(&c, "NEW").await.stock, 1);
    let old = c
        .inventory
        .clone()
        .get_product(microshop_proto::inventory::v1::GetProductRequest {
            sku: "TSHIRT".into(),
        })
        .await
        .expect_err("nothing of the old store was merged in");
    assert_eq!(old.code(), tonic::Code::NotFound, "{old:?}");
    inventory.kill();
}

#[tokio::test]
async fn a_migration_killed_at_either_crash_point_is_finished_by_the_next_run() {
    let (_tmp, data) = data_dir();

    // Killed once the new store is staged: it is not in place, the old
    // file still is, so the services still refuse to start.
    let out = migrate(&data, &["--failpoint", "staged"]);
    assert!(!out.status.success(), "the failpoint did not stop it");
    assert!(
        out.stderr.contains("migrate failpoint staged"),
        "{}",
        out.stderr
    );
    assert!(data.join("inventory.redb").exists());
    assert!(!data.join("inventory.fjall").exists());
    assert!(data.join(".inventory.migrating").exists());

    // Killed once it is in place: the old file is still there too; the
    // next run sees the store is its own and only renames the file.
    let out = migrate(&data, &["--failpoint", "placed"]);
    assert!(!out.status.success(), "the failpoint did not stop it");
    assert!(
        out.stderr.contains("migrate failpoint placed"),
        "{}",
        out.stderr
    );
    assert!(data.join("inventory.redb").exists());
    assert!(data.join("inventory.fjall").exists());
    let dry = migrate(&data, &["--dry-run"]);
    assert_ok(&dry);
    assert!(
        dry.stdout
            .contains("inventory: an interrupted migration would be finished"),
        "{}",
        dry.stdout
    );

    let out = migrate(&data, &[]);
    assert_ok(&out);
    assert!(
        out.stdout
            .contains("inventory: an interrupted migration finished"),
        "{}",
        out.stdout
    );
    for counts in &COUNTS[1..] {
        assert!(
            out.stdout.contains(counts),
            "{counts:?} not in: {}",
            out.stdout
        );
    }
    assert!(!data.join(".inventory.migrating").exists());
    let mesh = Mesh::start(&data).await;
    let c = mesh.clients();
    let tshirt = product(&c, "TSHIRT").await;
    assert_eq!((tshirt.available, tshirt.reserved), (7, 3));
    assert_eq!(balance(&c, "alice").await.points, 430);
    mesh.stop();
}

#[test]
fn up_on_a_partly_old_directory_refuses_before_creating_any_store() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).expect("create the data directory");
    copy_store("loyalty", &data);
    let before = snapshot(&data);
    let shown = data.to_str().expect("a UTF-8 path");
    let any = "127.0.0.1:0";
    let out = run(
        "up",
        &[
            "up",
            "--data-dir",
            shown,
            "--orchestrator-listen",
            any,
            "--inventory-listen",
            any,
            "--loyalty-listen",
            any,
            "--order-listen",
            any,
            "--metrics-addr",
            any,
        ],
    );
    assert_refused(&out, "(loyalty.redb)");
    assert!(
        out.stderr
            .contains(&format!("microshop migrate --data-dir {shown}")),
        "{}",
        out.stderr
    );
    // Not one of the three new stores was created beside the old file.
    assert!(snapshot(&data) == before, "up changed {:?}", names(&data));
}

#[test]
fn migrate_reports_every_store_it_cannot_convert_and_converts_none() {
    let (_tmp, data) = data_dir();
    // Two old files that are not redb files at all.
    for name in ["loyalty", "orchestrator"] {
        std::fs::write(data.join(format!("{name}.redb")), b"not a redb file").expect("overwrite");
    }
    let before = snapshot(&data);
    let out = migrate(&data, &[]);
    assert_refused(&out, "loyalty, orchestrator not ready to migrate");
    assert!(
        out.stderr.contains("nothing was converted"),
        "{}",
        out.stderr
    );
    for name in ["loyalty", "orchestrator"] {
        assert!(
            out.stderr
                .contains(&format!("{name}: not ready: cannot open")),
            "{name}: {}",
            out.stderr
        );
    }
    // Not even the readable stores: a rollback to the old binary must
    // still find every old file where it was.
    assert!(snapshot(&data) == before, "changed: {:?}", names(&data));
}

/// A `NAME.redb.migrated` already beside `NAME.redb` used to be found only
/// after the stores before it were converted and this one put in place.
#[test]
fn a_retired_file_in_the_way_refuses_the_run_before_anything_is_converted() {
    let (_tmp, data) = data_dir();
    std::fs::copy(data.join("order.redb"), data.join("order.redb.migrated"))
        .expect("copy a retired file in the way");
    let before = snapshot(&data);
    let out = migrate(&data, &[]);
    assert_refused(&out, "order.redb.migrated exists already beside");
    assert!(
        out.stderr.contains("order not ready to migrate"),
        "{}",
        out.stderr
    );
    assert!(snapshot(&data) == before, "changed: {:?}", names(&data));
}
