//! Reservations against the stock: 15 concurrent reservations never
//! oversell, random concurrent sagas keep the ledger balanced, and a cart
//! with one short line reserves nothing.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use microshop_proto::inventory::v1::{GetProductsRequest, ReleaseOutcome};
use microshop_runtime::{Reason, errors::metadata_of};
use tokio::task::JoinSet;
use tonic::Code;

use crate::{
    Server, assert_rejected, assert_sane, buckets, commit, line, product, put, release, reserve,
};

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
