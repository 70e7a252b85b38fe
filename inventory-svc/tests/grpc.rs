//! inventory-svc end to end: the real server (`run`) on a loopback port, a
//! fresh data directory per test, and the generated gRPC client.

use std::{
    collections::HashMap,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use inventory_svc::{InventoryConfig, run};
use microshop_proto::inventory::v1::{
    CommitStockRequest, CommitStockResponse, GetProductRequest, GetProductResponse,
    GetProductsRequest, Product, PutProductRequest, PutProductResponse, ReleaseOutcome,
    ReleaseStockRequest, ReleaseStockResponse, ReserveStockRequest, ReserveStockResponse,
    ReservedLine, StockItem, inventory_service_client::InventoryServiceClient,
};
use microshop_runtime::{
    Reason,
    errors::{metadata_of, reason_of},
    testing::TestServer,
};
use tokio::task::JoinSet;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

type Client = InventoryServiceClient<Channel>;

/// A running server and a client of it.
struct Server {
    client: Client,
    inner: TestServer,
}

impl Server {
    /// Serves `dir` on a fresh loopback port and connects to it.
    async fn start(dir: &Path) -> Self {
        let inner = TestServer::start(|listener, shutdown| {
            run(
                listener,
                InventoryConfig::new(microshop_runtime::testing::server_args(dir)),
                shutdown,
            )
        })
        .await;
        Self {
            client: InventoryServiceClient::new(inner.channel.clone()),
            inner,
        }
    }

    /// Stops the server gracefully and waits for it to finish.
    async fn stop(self) {
        drop(self.client);
        self.inner.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn put(
    client: &mut Client,
    sku: &str,
    name: &str,
    unit_price: i64,
    stock: i64,
) -> Result<PutProductResponse, Status> {
    client
        .put_product(PutProductRequest {
            sku: sku.into(),
            name: name.into(),
            unit_price,
            stock,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Fetches a product and checks the bucket invariants every answer must hold.
async fn product(client: &mut Client, sku: &str) -> GetProductResponse {
    let p = client
        .get_product(GetProductRequest { sku: sku.into() })
        .await
        .unwrap_or_else(|s| panic!("get product {sku}: {s:?}"))
        .into_inner();
    assert_sane(
        &p.sku,
        p.stock,
        p.available,
        p.reserved,
        p.sold,
        p.restocked,
    );
    p
}

fn assert_sane(sku: &str, stock: i64, available: i64, reserved: i64, sold: i64, restocked: i64) {
    assert!(
        available >= 0 && reserved >= 0 && sold >= 0 && restocked >= 0,
        "negative bucket for {sku}: available {available}, reserved {reserved}, \
         sold {sold}, restocked {restocked}"
    );
    assert_eq!(
        stock,
        available + reserved,
        "{sku}: stock must be available + reserved"
    );
}

fn items(lines: &[(&str, i64)]) -> Vec<StockItem> {
    lines
        .iter()
        .map(|&(sku, quantity)| StockItem {
            sku: sku.into(),
            quantity,
        })
        .collect()
}

async fn reserve(
    client: &mut Client,
    saga_id: &str,
    lines: &[(&str, i64)],
) -> Result<ReserveStockResponse, Status> {
    client
        .reserve_stock(ReserveStockRequest {
            saga_id: saga_id.into(),
            items: items(lines),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn release(client: &mut Client, saga_id: &str) -> ReleaseStockResponse {
    client
        .release_stock(ReleaseStockRequest {
            saga_id: saga_id.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("release {saga_id}: {s:?}"))
        .into_inner()
}

async fn commit(client: &mut Client, saga_id: &str) -> Result<CommitStockResponse, Status> {
    client
        .commit_stock(CommitStockRequest {
            saga_id: saga_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn line(sku: &str, name: &str, quantity: i64, unit_price: i64) -> ReservedLine {
    ReservedLine {
        sku: sku.into(),
        name: name.into(),
        quantity,
        unit_price,
    }
}

fn assert_rejected(status: &Status, code: Code, reason: Reason) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status), Some(reason), "{status:?}");
}

/// The fields named by the status's `google.rpc.BadRequest`.
fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|br| {
            br.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// `(available, reserved, sold, restocked)` of a product.
fn buckets(p: &GetProductResponse) -> (i64, i64, i64, i64) {
    (p.available, p.reserved, p.sold, p.restocked)
}

/// A tiny deterministic generator (SplitMix64), so a failing random run can
/// be replayed from its printed seed without another dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `lo..=hi` (for test input only).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The seed of the randomized test: `INVENTORY_TEST_SEED` if set, else the
/// clock. Printed so a failure can be replayed.
fn seed() -> u64 {
    let seed = std::env::var("INVENTORY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos();
            // Truncation is fine: any 64 bits make a seed.
            nanos as u64
        });
    println!("random seed {seed} (replay with INVENTORY_TEST_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------
// 1. Catalog round trip
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn put_and_get_round_trip_and_reput_keeps_reservations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;

    let put_answer = put(client, "tee-black-m", "Black tee (M)", 199_000, 10)
        .await
        .expect("put");
    let expected = PutProductResponse {
        sku: "tee-black-m".into(),
        name: "Black tee (M)".into(),
        unit_price: 199_000,
        stock: 10,
        available: 10,
        reserved: 0,
        sold: 0,
        restocked: 0,
    };
    assert_eq!(put_answer, expected);
    let got = product(client, "tee-black-m").await;
    assert_eq!(
        got,
        GetProductResponse {
            sku: expected.sku.clone(),
            name: expected.name.clone(),
            unit_price: 199_000,
            stock: 10,
            available: 10,
            reserved: 0,
            sold: 0,
            restocked: 0,
        }
    );

    // Hold 4 units, then re-put with a new name, price and stock: the
    // reservation is kept and stock stays available + reserved.
    reserve(client, "saga-1", &[("tee-black-m", 4)])
        .await
        .expect("reserve");
    let reput = put(client, "tee-black-m", "Black tee, M", 149_000, 20)
        .await
        .expect("re-put");
    assert_eq!(
        reput,
        PutProductResponse {
            sku: "tee-black-m".into(),
            name: "Black tee, M".into(),
            unit_price: 149_000,
            stock: 20,
            available: 16,
            reserved: 4,
            sold: 0,
            restocked: 0,
        }
    );
    let got = product(client, "tee-black-m").await;
    assert_eq!((got.stock, got.available, got.reserved), (20, 16, 4));
    assert_eq!(
        (got.name.as_str(), got.unit_price),
        ("Black tee, M", 149_000)
    );

    // Stock below the reserved units is refused and changes nothing.
    let status = put(client, "tee-black-m", "Black tee, M", 149_000, 3)
        .await
        .unwrap_err();
    assert_rejected(
        &status,
        Code::FailedPrecondition,
        Reason::StockBelowReserved,
    );
    assert_eq!(metadata_of(&status, "sku").as_deref(), Some("tee-black-m"));
    assert_eq!(metadata_of(&status, "reserved").as_deref(), Some("4"));
    assert_eq!(product(client, "tee-black-m").await, got);

    // Exactly the reserved units is allowed: nothing left for sale.
    let exact = put(client, "tee-black-m", "Black tee, M", 149_000, 4)
        .await
        .expect("stock = reserved");
    assert_eq!((exact.stock, exact.available, exact.reserved), (4, 0, 4));

    // GetProducts answers in the order asked.
    put(client, "mug", "Mug", 89_000, 7).await.expect("put mug");
    let many = client
        .get_products(GetProductsRequest {
            skus: vec!["mug".into(), "tee-black-m".into()],
        })
        .await
        .expect("get products")
        .into_inner()
        .products;
    let skus: Vec<&str> = many.iter().map(|p: &Product| p.sku.as_str()).collect();
    assert_eq!(skus, ["mug", "tee-black-m"]);
    assert_eq!((many[0].available, many[1].reserved), (7, 4));

    server.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Concurrent reservations never oversell
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reservations_never_oversell() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    put(&mut server.client, "hot", "Hot item", 50_000, 10)
        .await
        .expect("put");

    let mut calls = JoinSet::new();
    for i in 0..15 {
        let mut client = server.client.clone();
        calls.spawn(async move { reserve(&mut client, &format!("saga-{i}"), &[("hot", 2)]).await });
    }
    let (mut succeeded, mut refused) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result.expect("reserve task") {
            Ok(done) => {
                assert_eq!(done.lines, [line("hot", "Hot item", 2, 50_000)]);
                succeeded += 1;
            }
            Err(status) => {
                assert_rejected(&status, Code::FailedPrecondition, Reason::OutOfStock);
                assert_eq!(metadata_of(&status, "sku").as_deref(), Some("hot"));
                // Every reservation takes 2 of 10, so a refusal sees 0 left.
                assert_eq!(metadata_of(&status, "available").as_deref(), Some("0"));
                assert_eq!(metadata_of(&status, "requested").as_deref(), Some("2"));
                refused += 1;
            }
        }
    }
    assert_eq!((succeeded, refused), (5, 10));
    let hot = product(&mut server.client, "hot").await;
    assert_eq!(buckets(&hot), (0, 10, 0, 0));
    assert_eq!(hot.stock, 10);

    server.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Randomized concurrent ledger
// ---------------------------------------------------------------------------

/// What the randomized test does to a reserved saga afterwards.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Left reserved.
    Keep,
    /// Released (back to available).
    Release,
    /// Committed (sold).
    Commit,
    /// Committed, then released (restocked).
    CommitThenRelease,
}

#[tokio::test(flavor = "multi_thread")]
async fn random_concurrent_sagas_keep_the_ledger_balanced() {
    const SKUS: [&str; 3] = ["sku-a", "sku-b", "sku-c"];
    const PUT: i64 = 150;
    const SAGAS: usize = 100;

    let mut rng = SplitMix64(seed());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    for sku in SKUS {
        put(&mut server.client, sku, sku, 10_000, PUT)
            .await
            .expect("put");
    }

    // Carts of 1 to 4 lines (a SKU may repeat) of 1 to 5 units each: about
    // 750 units asked of 450, so some are refused.
    let carts: Vec<Vec<(&'static str, i64)>> = (0..SAGAS)
        .map(|_| {
            (0..rng.range(1, 4))
                .map(|_| {
                    let sku = SKUS[rng.range(0, 2) as usize];
                    (sku, rng.range(1, 5) as i64)
                })
                .collect()
        })
        .collect();

    let mut calls = JoinSet::new();
    for (i, cart) in carts.iter().cloned().enumerate() {
        let mut client = server.client.clone();
        calls.spawn(async move {
            let saga_id = format!("saga-{i}");
            let result = reserve(&mut client, &saga_id, &cart).await;
            (i, result)
        });
    }
    // A reader checks the invariants while the reservations run.
    let mut reader_client = server.client.clone();
    let reader = tokio::spawn(async move {
        for _ in 0..30 {
            let products = reader_client
                .get_products(GetProductsRequest {
                    skus: SKUS.iter().map(|s| (*s).to_owned()).collect(),
                })
                .await
                .expect("get products")
                .into_inner()
                .products;
            for p in products {
                assert_sane(
                    &p.sku,
                    p.stock,
                    p.available,
                    p.reserved,
                    p.sold,
                    p.restocked,
                );
                assert_eq!(p.available + p.reserved + p.sold, PUT + p.restocked);
            }
        }
    });

    // Reserved lines per succeeded saga.
    let mut reserved: HashMap<usize, Vec<(String, i64)>> = HashMap::new();
    let mut refused = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (i, result) = joined.expect("reserve task");
        // The answer is merged by SKU, in first-seen order.
        let mut merged: Vec<(&str, i64)> = Vec::new();
        for &(sku, q) in &carts[i] {
            match merged.iter_mut().find(|(s, _)| *s == sku) {
                Some((_, total)) => *total += q,
                None => merged.push((sku, q)),
            }
        }
        match result {
            Ok(done) => {
                let got: Vec<(&str, i64)> = done
                    .lines
                    .iter()
                    .map(|l| (l.sku.as_str(), l.quantity))
                    .collect();
                assert_eq!(got, merged, "saga-{i} cart {:?}", carts[i]);
                assert!(done.lines.iter().all(|l| l.unit_price == 10_000));
                reserved.insert(i, merged.iter().map(|&(s, q)| (s.to_owned(), q)).collect());
            }
            Err(status) => {
                assert_rejected(&status, Code::FailedPrecondition, Reason::OutOfStock);
                let sku = metadata_of(&status, "sku").expect("sku metadata");
                let available: i64 = metadata_of(&status, "available")
                    .and_then(|a| a.parse().ok())
                    .expect("available metadata");
                let requested: i64 = metadata_of(&status, "requested")
                    .and_then(|a| a.parse().ok())
                    .expect("requested metadata");
                let asked = merged
                    .iter()
                    .find(|(s, _)| *s == sku)
                    .map(|&(_, q)| q)
                    .expect("the short sku is in the cart");
                assert_eq!(requested, asked);
                assert!((0..requested).contains(&available), "{status:?}");
                refused.push(i);
            }
        }
    }
    reader.await.expect("reader task");
    assert_eq!(reserved.len() + refused.len(), SAGAS);
    println!(
        "{} reservations succeeded, {} refused",
        reserved.len(),
        refused.len()
    );

    // Every product: available + reserved == PUT, reserved == sum of sagas.
    let mut expect_reserved: HashMap<&str, i64> = SKUS.iter().map(|s| (*s, 0)).collect();
    for lines in reserved.values() {
        for (sku, q) in lines {
            *expect_reserved.get_mut(sku.as_str()).expect("known sku") += q;
        }
    }
    for sku in SKUS {
        let p = product(&mut server.client, sku).await;
        assert_eq!(
            buckets(&p),
            (PUT - expect_reserved[sku], expect_reserved[sku], 0, 0)
        );
    }

    // Then settle some sagas at random, concurrently, some delivered twice;
    // a refused saga's release is a null compensation.
    let mut fates: HashMap<usize, Fate> = HashMap::new();
    let mut settle = JoinSet::new();
    let mut ids: Vec<usize> = reserved.keys().copied().collect();
    ids.sort_unstable();
    for i in ids {
        let fate = match rng.range(0, 3) {
            0 => Fate::Keep,
            1 => Fate::Release,
            2 => Fate::Commit,
            _ => Fate::CommitThenRelease,
        };
        let twice = rng.range(0, 1) == 1;
        fates.insert(i, fate);
        let units: i64 = reserved[&i].iter().map(|(_, q)| q).sum();
        let mut client = server.client.clone();
        settle.spawn(async move {
            let saga_id = format!("saga-{i}");
            for _ in 0..if twice { 2 } else { 1 } {
                match fate {
                    Fate::Keep => {}
                    Fate::Release => {
                        let r = release(&mut client, &saga_id).await;
                        assert_eq!((r.outcome(), r.units), (ReleaseOutcome::Released, units));
                    }
                    Fate::Commit => {
                        let c = commit(&mut client, &saga_id).await.expect("commit");
                        assert_eq!(c.units, units);
                    }
                    Fate::CommitThenRelease => {
                        let c = commit(&mut client, &saga_id).await.expect("commit");
                        assert_eq!(c.units, units);
                        let r = release(&mut client, &saga_id).await;
                        assert_eq!((r.outcome(), r.units), (ReleaseOutcome::Restocked, units));
                    }
                }
            }
        });
    }
    for i in refused.iter().copied().filter(|i| i % 2 == 0) {
        let mut client = server.client.clone();
        settle.spawn(async move {
            let r = release(&mut client, &format!("saga-{i}")).await;
            assert_eq!((r.outcome(), r.units), (ReleaseOutcome::NothingReserved, 0));
        });
    }
    while let Some(done) = settle.join_next().await {
        done.expect("settle task");
    }

    let mut expect: HashMap<&str, (i64, i64, i64)> = SKUS.iter().map(|s| (*s, (0, 0, 0))).collect();
    for (i, lines) in &reserved {
        for (sku, q) in lines {
            let (still_reserved, sold, restocked) =
                expect.get_mut(sku.as_str()).expect("known sku");
            match fates[i] {
                Fate::Keep => *still_reserved += q,
                Fate::Release => {}
                Fate::Commit => *sold += q,
                Fate::CommitThenRelease => {
                    *sold += q;
                    *restocked += q;
                }
            }
        }
    }
    for sku in SKUS {
        let p = product(&mut server.client, sku).await;
        let (still_reserved, sold, restocked) = expect[sku];
        assert_eq!(
            p.available + p.reserved + p.sold,
            PUT + p.restocked,
            "ledger of {sku}: {p:?}"
        );
        assert_eq!(p.reserved, still_reserved, "reserved of {sku}: {p:?}");
        assert_eq!((p.sold, p.restocked), (sold, restocked), "{sku}: {p:?}");
        assert_eq!(p.available, PUT + restocked - still_reserved - sold);
    }

    server.stop().await;
}

// ---------------------------------------------------------------------------
// 4. All or nothing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_short_line_reserves_nothing_for_the_whole_cart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "plenty", "Plenty", 1_000, 50)
        .await
        .expect("put");
    put(client, "scarce", "Scarce", 2_000, 3)
        .await
        .expect("put");

    let status = reserve(client, "saga-1", &[("plenty", 5), ("scarce", 4)])
        .await
        .unwrap_err();
    assert_rejected(&status, Code::FailedPrecondition, Reason::OutOfStock);
    assert_eq!(metadata_of(&status, "sku").as_deref(), Some("scarce"));
    assert_eq!(metadata_of(&status, "available").as_deref(), Some("3"));
    assert_eq!(metadata_of(&status, "requested").as_deref(), Some("4"));
    assert_eq!(buckets(&product(client, "plenty").await), (50, 0, 0, 0));
    assert_eq!(buckets(&product(client, "scarce").await), (3, 0, 0, 0));

    // A cart that fits still reserves every line.
    let ok = reserve(client, "saga-2", &[("plenty", 5), ("scarce", 3)])
        .await
        .expect("reserve");
    assert_eq!(ok.lines.len(), 2);
    assert_eq!(buckets(&product(client, "plenty").await), (45, 5, 0, 0));
    assert_eq!(buckets(&product(client, "scarce").await), (0, 3, 0, 0));

    server.stop().await;
}

// ---------------------------------------------------------------------------
// 5. The participant barrier
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn repeated_reserve_replays_its_answer_with_one_effect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "x", "Thing", 25_000, 10).await.expect("put");

    let first = reserve(client, "saga-1", &[("x", 3)])
        .await
        .expect("reserve");
    assert_eq!(
        first,
        ReserveStockResponse {
            saga_id: "saga-1".into(),
            lines: vec![line("x", "Thing", 3, 25_000)],
        }
    );
    // A repeat, even after a price change, answers the same lines and prices.
    put(client, "x", "Thing v2", 30_000, 10)
        .await
        .expect("re-put");
    let second = reserve(client, "saga-1", &[("x", 3)])
        .await
        .expect("repeat");
    assert_eq!(second, first);
    assert_eq!(buckets(&product(client, "x").await), (7, 3, 0, 0));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn release_before_reserve_is_a_null_compensation_and_blocks_the_reserve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "x", "Thing", 25_000, 10).await.expect("put");

    let null = release(client, "saga-1").await;
    assert_eq!(null.saga_id, "saga-1");
    assert_eq!(
        (null.outcome(), null.units),
        (ReleaseOutcome::NothingReserved, 0)
    );

    let late = reserve(client, "saga-1", &[("x", 3)]).await.unwrap_err();
    assert_rejected(
        &late,
        Code::FailedPrecondition,
        Reason::SagaAlreadyCompensated,
    );
    assert_eq!(buckets(&product(client, "x").await), (10, 0, 0, 0));

    // A repeated release is a no-op with the same answer; the late reserve
    // stays refused.
    assert_eq!(release(client, "saga-1").await, null);
    let again = reserve(client, "saga-1", &[("x", 3)]).await.unwrap_err();
    assert_rejected(
        &again,
        Code::FailedPrecondition,
        Reason::SagaAlreadyCompensated,
    );
    assert_eq!(buckets(&product(client, "x").await), (10, 0, 0, 0));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_sells_once_and_a_later_release_restocks_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "x", "Thing", 25_000, 10).await.expect("put");
    reserve(client, "saga-1", &[("x", 4)])
        .await
        .expect("reserve");

    let committed = commit(client, "saga-1").await.expect("commit");
    assert_eq!(
        committed,
        CommitStockResponse {
            saga_id: "saga-1".into(),
            units: 4,
        }
    );
    let after_commit = product(client, "x").await;
    assert_eq!(buckets(&after_commit), (6, 0, 4, 0));
    assert_eq!(after_commit.stock, 6);
    assert_eq!(commit(client, "saga-1").await.expect("repeat"), committed);
    assert_eq!(product(client, "x").await, after_commit);

    // Cancelling the paid order restocks the units once.
    let restocked = release(client, "saga-1").await;
    assert_eq!(
        (restocked.outcome(), restocked.units),
        (ReleaseOutcome::Restocked, 4)
    );
    let after_release = product(client, "x").await;
    assert_eq!(buckets(&after_release), (10, 0, 4, 4));
    assert_eq!(release(client, "saga-1").await, restocked);
    assert_eq!(commit(client, "saga-1").await.expect("replay"), committed);
    assert_eq!(product(client, "x").await, after_release);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_after_release_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "x", "Thing", 25_000, 10).await.expect("put");
    reserve(client, "saga-1", &[("x", 4)])
        .await
        .expect("reserve");

    let released = release(client, "saga-1").await;
    assert_eq!(
        (released.outcome(), released.units),
        (ReleaseOutcome::Released, 4)
    );
    assert_eq!(buckets(&product(client, "x").await), (10, 0, 0, 0));

    for _ in 0..2 {
        let status = commit(client, "saga-1").await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(
            reason_of(&status),
            Some(Reason::SagaAlreadyCompensated),
            "{status:?}"
        );
        assert_eq!(buckets(&product(client, "x").await), (10, 0, 0, 0));
    }
    assert_eq!(release(client, "saga-1").await, released);
    assert_eq!(buckets(&product(client, "x").await), (10, 0, 0, 0));

    server.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Catalog prices, merged lines
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn reserve_prices_lines_from_the_catalog_and_merges_duplicate_skus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "shoe", "Running shoe", 1_250_000, 20)
        .await
        .expect("put");
    put(client, "sock", "Sock pair", 45_000, 20)
        .await
        .expect("put");

    let done = reserve(
        client,
        "saga-1",
        &[("shoe", 1), ("sock", 2), ("shoe", 2), ("sock", 1)],
    )
    .await
    .expect("reserve");
    assert_eq!(
        done.lines,
        [
            line("shoe", "Running shoe", 3, 1_250_000),
            line("sock", "Sock pair", 3, 45_000),
        ]
    );
    assert_eq!(buckets(&product(client, "shoe").await), (17, 3, 0, 0));
    assert_eq!(buckets(&product(client, "sock").await), (17, 3, 0, 0));

    // A new catalog price applies to later reservations only.
    put(client, "shoe", "Running shoe II", 990_000, 20)
        .await
        .expect("re-put");
    let later = reserve(client, "saga-2", &[("shoe", 1)])
        .await
        .expect("reserve");
    assert_eq!(later.lines, [line("shoe", "Running shoe II", 1, 990_000)]);

    // Merging happens before the stock check: 11 + 10 > 16 available.
    let status = reserve(client, "saga-3", &[("shoe", 11), ("shoe", 10)])
        .await
        .unwrap_err();
    assert_rejected(&status, Code::FailedPrecondition, Reason::OutOfStock);
    assert_eq!(metadata_of(&status, "requested").as_deref(), Some("21"));
    assert_eq!(metadata_of(&status, "available").as_deref(), Some("16"));

    server.stop().await;
}

// ---------------------------------------------------------------------------
// 7. Bad input
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn invalid_inputs_are_refused_naming_the_field_without_effect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "x", "Thing", 25_000, 10).await.expect("put");
    let before = product(client, "x").await;

    let long_sku = "s".repeat(129);
    let ok_sku = "s".repeat(128);
    let too_many: Vec<(&str, i64)> = vec![("x", 1); 101];

    let put_req = |sku: &str, name: &str, unit_price: i64, stock: i64| PutProductRequest {
        sku: sku.into(),
        name: name.into(),
        unit_price,
        stock,
    };
    let puts = [
        ("empty sku", put_req("", "Thing", 1, 1), "sku"),
        ("129-byte sku", put_req(&long_sku, "Thing", 1, 1), "sku"),
        ("sku with a space", put_req("x y", "Thing", 1, 1), "sku"),
        ("sku with a tab", put_req("x\ty", "Thing", 1, 1), "sku"),
        ("sku with a newline", put_req("x\n", "Thing", 1, 1), "sku"),
        (
            "sku with a control",
            put_req("x\u{7}", "Thing", 1, 1),
            "sku",
        ),
        ("whitespace-only sku", put_req(" ", "Thing", 1, 1), "sku"),
        ("negative stock", put_req("x", "Thing", 25_000, -1), "stock"),
        (
            "zero unit price",
            put_req("x", "Thing", 0, 10),
            "unit_price",
        ),
        (
            "negative unit price",
            put_req("x", "Thing", -5, 10),
            "unit_price",
        ),
        ("empty name", put_req("x", "", 25_000, 10), "name"),
        ("blank name", put_req("x", "   ", 25_000, 10), "name"),
        (
            "257-byte name",
            put_req("x", &"n".repeat(257), 25_000, 10),
            "name",
        ),
        (
            "name with a control",
            put_req("x", "a\u{1b}b", 25_000, 10),
            "name",
        ),
    ];
    let mut refused: Vec<(&str, Result<(), Status>, String)> = Vec::new();
    for (label, req, field) in puts {
        let result = client.put_product(req).await.map(drop);
        refused.push((label, result, field.into()));
    }

    let reserves = [
        ("empty saga id", "", vec![("x", 1)], "saga_id"),
        (
            "129-byte saga id",
            long_sku.as_str(),
            vec![("x", 1)],
            "saga_id",
        ),
        ("saga id with a space", "saga 1", vec![("x", 1)], "saga_id"),
        ("no items", "saga-a", vec![], "items"),
        ("101 items", "saga-b", too_many, "items"),
        (
            "zero quantity",
            "saga-c",
            vec![("x", 0)],
            "items[0].quantity",
        ),
        (
            "negative quantity",
            "saga-d",
            vec![("x", -3)],
            "items[0].quantity",
        ),
        (
            "quantity 10,001",
            "saga-e",
            vec![("x", 10_001)],
            "items[0].quantity",
        ),
        (
            "empty line sku",
            "saga-f",
            vec![("x", 1), ("", 1)],
            "items[1].sku",
        ),
        (
            "129-byte line sku",
            "saga-g",
            vec![(long_sku.as_str(), 1)],
            "items[0].sku",
        ),
        (
            "line sku with a space",
            "saga-h",
            vec![("x y", 1)],
            "items[0].sku",
        ),
        (
            "line sku with a control",
            "saga-i",
            vec![("x\u{0}", 1)],
            "items[0].sku",
        ),
    ];
    for (label, saga_id, lines, field) in reserves {
        let result = reserve(client, saga_id, &lines).await.map(drop);
        refused.push((label, result, field.into()));
    }

    let others = [
        (
            "get: empty sku",
            client
                .get_product(GetProductRequest { sku: String::new() })
                .await
                .map(drop),
            "sku",
        ),
        (
            "get: sku with a space",
            client
                .get_product(GetProductRequest { sku: "x y".into() })
                .await
                .map(drop),
            "sku",
        ),
        (
            "get many: no skus",
            client
                .get_products(GetProductsRequest { skus: vec![] })
                .await
                .map(drop),
            "skus",
        ),
        (
            "get many: empty sku",
            client
                .get_products(GetProductsRequest {
                    skus: vec!["x".into(), String::new()],
                })
                .await
                .map(drop),
            "skus[1]",
        ),
        (
            "release: empty saga id",
            client
                .release_stock(ReleaseStockRequest {
                    saga_id: String::new(),
                })
                .await
                .map(drop),
            "saga_id",
        ),
        (
            "commit: empty saga id",
            commit(client, "").await.map(drop),
            "saga_id",
        ),
        (
            "commit: 129-byte saga id",
            commit(client, &long_sku).await.map(drop),
            "saga_id",
        ),
    ];
    for (label, result, field) in others {
        refused.push((label, result, field.into()));
    }

    for (label, result, field) in refused {
        let status = match result {
            Ok(()) => panic!("{label}: must be refused"),
            Err(status) => status,
        };
        assert_rejected(&status, Code::InvalidArgument, Reason::InvalidRequest);
        let fields = bad_fields(&status);
        assert!(
            fields.contains(&field),
            "{label}: BadRequest must name {field}, got {fields:?} ({status:?})"
        );
    }

    // Nothing changed, no product was created, and the refused sagas
    // recorded nothing: they still run normally.
    assert_eq!(product(client, "x").await, before);
    for sku in ["x y", "x\ty", " "] {
        let status = client
            .get_products(GetProductsRequest {
                skus: vec![sku.into()],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let unknown = client
        .get_product(GetProductRequest {
            sku: ok_sku.clone(),
        })
        .await
        .unwrap_err();
    assert_rejected(&unknown, Code::NotFound, Reason::UnknownSku);
    for saga_id in ["saga-a", "saga-b", "saga-c", "saga-e"] {
        reserve(client, saga_id, &[("x", 1)])
            .await
            .unwrap_or_else(|s| panic!("{saga_id} after its refusal: {s:?}"));
    }
    assert_eq!(buckets(&product(client, "x").await), (6, 4, 0, 0));

    // The boundaries themselves are accepted.
    put(client, &ok_sku, &"n".repeat(256), 1, 0)
        .await
        .expect("128-byte sku, 256-byte name, stock 0");
    put(client, "big", "Big", 1, 20_000).await.expect("put big");
    reserve(client, "saga-max", &[("big", 10_000)])
        .await
        .expect("quantity 10,000");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_skus_are_not_found_and_reserve_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "x", "Thing", 25_000, 10).await.expect("put");

    let status = client
        .get_product(GetProductRequest {
            sku: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_rejected(&status, Code::NotFound, Reason::UnknownSku);
    assert_eq!(metadata_of(&status, "sku").as_deref(), Some("ghost"));

    let status = client
        .get_products(GetProductsRequest {
            skus: vec!["x".into(), "ghost".into()],
        })
        .await
        .unwrap_err();
    assert_rejected(&status, Code::NotFound, Reason::UnknownSku);
    assert_eq!(metadata_of(&status, "sku").as_deref(), Some("ghost"));

    let status = reserve(client, "saga-1", &[("x", 2), ("ghost", 1)])
        .await
        .unwrap_err();
    assert_rejected(&status, Code::NotFound, Reason::UnknownSku);
    assert_eq!(metadata_of(&status, "sku").as_deref(), Some("ghost"));
    assert_eq!(buckets(&product(client, "x").await), (10, 0, 0, 0));

    // Its compensation has nothing to give back.
    let null = release(client, "saga-1").await;
    assert_eq!(
        (null.outcome(), null.units),
        (ReleaseOutcome::NothingReserved, 0)
    );
    assert_eq!(buckets(&product(client, "x").await), (10, 0, 0, 0));

    server.stop().await;
}

// ---------------------------------------------------------------------------
// 8. Durability across a restart
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn data_and_barriers_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put(client, "x", "Thing", 25_000, 10).await.expect("put");
    put(client, "y", "Other", 5_000, 5).await.expect("put");
    let sold = reserve(client, "saga-sold", &[("x", 2), ("y", 1)])
        .await
        .expect("reserve");
    let committed = commit(client, "saga-sold").await.expect("commit");
    let held = reserve(client, "saga-held", &[("x", 3)])
        .await
        .expect("reserve");
    let null = release(client, "saga-null").await;
    let x_before = product(client, "x").await;
    let y_before = product(client, "y").await;
    assert_eq!(buckets(&x_before), (5, 3, 2, 0));
    assert_eq!(buckets(&y_before), (4, 0, 1, 0));
    server.stop().await;

    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    assert_eq!(product(client, "x").await, x_before);
    assert_eq!(product(client, "y").await, y_before);

    // The barrier records survived too.
    assert_eq!(
        reserve(client, "saga-sold", &[("x", 2), ("y", 1)])
            .await
            .expect("replay"),
        sold
    );
    assert_eq!(
        commit(client, "saga-sold").await.expect("replay"),
        committed
    );
    assert_eq!(
        reserve(client, "saga-held", &[("x", 3)])
            .await
            .expect("replay"),
        held
    );
    assert_eq!(release(client, "saga-null").await, null);
    let late = reserve(client, "saga-null", &[("x", 1)]).await.unwrap_err();
    assert_rejected(
        &late,
        Code::FailedPrecondition,
        Reason::SagaAlreadyCompensated,
    );
    assert_eq!(product(client, "x").await, x_before);

    // And the held reservation can still be released after the restart.
    let released = release(client, "saga-held").await;
    assert_eq!(
        (released.outcome(), released.units),
        (ReleaseOutcome::Released, 3)
    );
    assert_eq!(buckets(&product(client, "x").await), (8, 0, 2, 0));

    server.stop().await;
}
