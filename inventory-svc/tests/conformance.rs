//! The inventory storage conformance suite (issue 4): one suite, generic
//! over the storage traits, run against the embedded redb store and the
//! MongoDB store. Everything a backend must do the same way is asserted
//! here: the catalog, all-or-nothing reservations, the participant barrier
//! (`docs/architecture.md`), and the stock invariant under concurrency.

use std::time::Instant;

use inventory_svc::{
    EmbeddedInventory, MongoInventory,
    domain::{
        CommitOutcome, Product, ProductUpdate, ReleaseOutcome, ReserveOutcome, ReservedLine,
        StockLine,
    },
    store::{CatalogStore, ReservationStore},
};
use microshop_runtime::testing::mongodb_for_tests;
use microshop_storage::embedded::Durable;
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------
// The two backends
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedInventory::open(dir.path(), Durable::Yes).expect("open the embedded store");
    suite("embedded", store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_conforms() {
    let Some(db) = mongodb_for_tests("mongodb_store_conforms").await else {
        return;
    };
    let store = MongoInventory::open(db)
        .await
        .expect("open the MongoDB store");
    suite("mongodb", store).await;
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

/// Every check, in order; each works on SKUs and sagas of its own.
async fn suite<S: CatalogStore + ReservationStore>(backend: &str, store: S) {
    let started = Instant::now();
    catalog(&store).await;
    reserve_is_all_or_nothing(&store).await;
    reserve_commit_release_barrier(&store).await;
    release_before_reserve_refuses_the_reserve(&store).await;
    concurrent_reserves_never_oversell(&store).await;
    reserve_racing_release_leaves_nothing_reserved(&store).await;
    eprintln!(
        "inventory conformance on {backend}: {:?}",
        started.elapsed()
    );
}

fn update(sku: &str, stock: i64) -> ProductUpdate {
    ProductUpdate {
        sku: sku.to_owned(),
        name: format!("Product {sku}"),
        unit_price: 12_500,
        stock,
    }
}

fn line(sku: &str, quantity: i64) -> StockLine {
    StockLine {
        sku: sku.to_owned(),
        quantity,
    }
}

/// Creates `sku` with `stock` units and checks what put_product returned.
async fn put_new<S: CatalogStore>(store: &S, sku: &str, stock: i64) -> Product {
    let product = store
        .put_product(update(sku, stock))
        .await
        .expect("put_product")
        .expect("a new product has nothing reserved");
    assert_eq!(
        product,
        Product {
            sku: sku.to_owned(),
            name: format!("Product {sku}"),
            unit_price: 12_500,
            available: stock,
            reserved: 0,
            sold: 0,
            restocked: 0,
        }
    );
    product
}

async fn product<S: CatalogStore>(store: &S, sku: &str) -> Product {
    let mut found = store
        .get_products(vec![sku.to_owned()])
        .await
        .expect("get_products");
    assert_eq!(found.len(), 1, "one answer per SKU asked");
    found
        .pop()
        .flatten()
        .unwrap_or_else(|| panic!("{sku} is stored"))
}

/// The stock invariant for one product: put + restocked = available +
/// reserved + sold, no bucket negative.
fn assert_buckets(p: &Product, put: i64) {
    assert!(
        p.available >= 0 && p.reserved >= 0 && p.sold >= 0 && p.restocked >= 0,
        "a bucket went negative: {p:?}"
    );
    assert_eq!(
        put + p.restocked,
        p.available + p.reserved + p.sold,
        "stock put + restocked = available + reserved + sold: {p:?}"
    );
}

/// put_product and get_products: upsert, unknown SKUs, the order asked,
/// and a restock that would go below the reserved units.
async fn catalog<S: CatalogStore + ReservationStore>(store: &S) {
    let a = put_new(store, "CAT-A", 10).await;
    let b = put_new(store, "CAT-B", 3).await;

    let found = store
        .get_products(vec![
            "CAT-B".to_owned(),
            "CAT-UNKNOWN".to_owned(),
            "CAT-A".to_owned(),
        ])
        .await
        .expect("get_products");
    assert_eq!(found, vec![Some(b.clone()), None, Some(a.clone())]);
    assert_eq!(
        store.get_products(Vec::new()).await.expect("get_products"),
        Vec::<Option<Product>>::new()
    );

    // An update renames, reprices and sets the stock on hand.
    let renamed = store
        .put_product(ProductUpdate {
            sku: "CAT-A".to_owned(),
            name: "Renamed".to_owned(),
            unit_price: 9_900,
            stock: 4,
        })
        .await
        .expect("put_product")
        .expect("nothing is reserved");
    assert_eq!(
        renamed,
        Product {
            name: "Renamed".to_owned(),
            unit_price: 9_900,
            available: 4,
            ..a
        }
    );
    assert_eq!(product(store, "CAT-A").await, renamed);

    // With 3 units reserved, stock below 3 is refused and changes nothing;
    // stock of 5 leaves 2 available.
    let reserved = store
        .reserve("cat-saga".to_owned(), vec![line("CAT-B", 3)])
        .await
        .expect("reserve");
    assert!(
        matches!(reserved, Some(ReserveOutcome::Reserved(_))),
        "{reserved:?}"
    );
    let before = product(store, "CAT-B").await;
    assert_eq!((before.available, before.reserved), (0, 3));
    assert_eq!(
        store
            .put_product(update("CAT-B", 2))
            .await
            .expect("put_product"),
        Err(3),
        "stock below the reserved units is refused with the reserved count"
    );
    assert_eq!(
        product(store, "CAT-B").await,
        before,
        "a refused put changes nothing"
    );
    let restocked = store
        .put_product(update("CAT-B", 5))
        .await
        .expect("put_product")
        .expect("5 >= 3 reserved");
    assert_eq!(
        (restocked.available, restocked.reserved, restocked.sold),
        (2, 3, 0)
    );
    assert_eq!(product(store, "CAT-B").await, restocked);
}

/// A reservation with an unknown SKU or a short line reserves nothing, and
/// its rejection is replayed to a repeat even once it would fit.
async fn reserve_is_all_or_nothing<S: CatalogStore + ReservationStore>(store: &S) {
    let a = put_new(store, "AON-A", 10).await;
    let b = put_new(store, "AON-B", 2).await;

    let unknown = store
        .reserve(
            "aon-unknown".to_owned(),
            vec![line("AON-A", 1), line("AON-NOPE", 1)],
        )
        .await
        .expect("reserve");
    assert_eq!(
        unknown,
        Some(ReserveOutcome::UnknownSku("AON-NOPE".to_owned()))
    );
    assert_eq!(
        product(store, "AON-A").await,
        a,
        "an unknown SKU reserves nothing"
    );

    // The first line fits, the second (merged: 2 + 1 = 3 of 2) does not.
    let short = store
        .reserve(
            "aon-short".to_owned(),
            vec![line("AON-A", 4), line("AON-B", 2), line("AON-B", 1)],
        )
        .await
        .expect("reserve");
    assert_eq!(
        short,
        Some(ReserveOutcome::OutOfStock {
            sku: "AON-B".to_owned(),
            requested: 3,
            available: 2,
        })
    );
    assert_eq!(
        product(store, "AON-A").await,
        a,
        "no line of a short reservation is taken"
    );
    assert_eq!(
        product(store, "AON-B").await,
        b,
        "no line of a short reservation is taken"
    );

    // A repeat replays the rejection, even with stock enough now.
    store
        .put_product(update("AON-B", 50))
        .await
        .expect("put_product")
        .expect("nothing reserved");
    let replay = store
        .reserve(
            "aon-short".to_owned(),
            vec![line("AON-A", 4), line("AON-B", 2), line("AON-B", 1)],
        )
        .await
        .expect("reserve");
    assert_eq!(replay, short, "a repeated action replays its first outcome");
    assert_eq!(product(store, "AON-A").await, a);
    assert_eq!(product(store, "AON-B").await.available, 50);
}

/// Reserve, commit and release, each repeated: one effect each, outcomes
/// replayed, and the buckets always adding up.
async fn reserve_commit_release_barrier<S: CatalogStore + ReservationStore>(store: &S) {
    put_new(store, "BAR-A", 10).await;
    put_new(store, "BAR-B", 5).await;
    let saga = "bar-saga".to_owned();
    let lines = vec![line("BAR-A", 2), line("BAR-B", 1), line("BAR-A", 1)];

    let reserved = store
        .reserve(saga.clone(), lines.clone())
        .await
        .expect("reserve");
    let expected = ReserveOutcome::Reserved(vec![
        ReservedLine {
            sku: "BAR-A".to_owned(),
            name: "Product BAR-A".to_owned(),
            quantity: 3,
            unit_price: 12_500,
        },
        ReservedLine {
            sku: "BAR-B".to_owned(),
            name: "Product BAR-B".to_owned(),
            quantity: 1,
            unit_price: 12_500,
        },
    ]);
    assert_eq!(
        reserved,
        Some(expected.clone()),
        "lines merged by SKU, priced"
    );
    let (a, b) = (product(store, "BAR-A").await, product(store, "BAR-B").await);
    assert_eq!((a.available, a.reserved, a.sold), (7, 3, 0));
    assert_eq!((b.available, b.reserved, b.sold), (4, 1, 0));

    // A repeat (even with other lines) replays and takes nothing more.
    let again = store
        .reserve(saga.clone(), vec![line("BAR-A", 5)])
        .await
        .expect("reserve");
    assert_eq!(again, Some(expected));
    assert_eq!(
        product(store, "BAR-A").await,
        a,
        "a repeated reserve has no effect"
    );
    assert_eq!(
        product(store, "BAR-B").await,
        b,
        "a repeated reserve has no effect"
    );

    // Commit moves reserved to sold, once.
    assert_eq!(
        store.commit(saga.clone()).await.expect("commit"),
        CommitOutcome::Committed(4)
    );
    let (a, b) = (product(store, "BAR-A").await, product(store, "BAR-B").await);
    assert_eq!((a.available, a.reserved, a.sold), (7, 0, 3));
    assert_eq!((b.available, b.reserved, b.sold), (4, 0, 1));
    assert_eq!(
        store.commit(saga.clone()).await.expect("commit"),
        CommitOutcome::Committed(4),
        "a repeated commit replays"
    );
    assert_eq!(
        product(store, "BAR-A").await,
        a,
        "a repeated commit has no effect"
    );
    assert_eq!(
        product(store, "BAR-B").await,
        b,
        "a repeated commit has no effect"
    );

    // Release after commit restocks, once.
    assert_eq!(
        store.release(saga.clone()).await.expect("release"),
        ReleaseOutcome::Restocked(4)
    );
    let (a, b) = (product(store, "BAR-A").await, product(store, "BAR-B").await);
    assert_eq!(
        (a.available, a.reserved, a.sold, a.restocked),
        (10, 0, 3, 3)
    );
    assert_eq!((b.available, b.reserved, b.sold, b.restocked), (5, 0, 1, 1));
    assert_eq!(
        store.release(saga.clone()).await.expect("release"),
        ReleaseOutcome::Restocked(4),
        "a repeated release replays"
    );
    assert_eq!(
        product(store, "BAR-A").await,
        a,
        "a repeated release has no effect"
    );
    assert_eq!(
        product(store, "BAR-B").await,
        b,
        "a repeated release has no effect"
    );
    assert_buckets(&a, 10);
    assert_buckets(&b, 5);

    // A plain reserve then release gives the units back.
    let other = "bar-released".to_owned();
    let held = store
        .reserve(other.clone(), vec![line("BAR-B", 2)])
        .await
        .expect("reserve");
    assert!(
        matches!(held, Some(ReserveOutcome::Reserved(_))),
        "{held:?}"
    );
    assert_eq!(
        store.release(other.clone()).await.expect("release"),
        ReleaseOutcome::Released(2)
    );
    assert_eq!(
        product(store, "BAR-B").await,
        b,
        "a release gives every unit back"
    );
    assert_eq!(
        store.commit(other.clone()).await.expect("commit"),
        CommitOutcome::Released,
        "a released reservation cannot be committed"
    );
    assert_eq!(
        product(store, "BAR-B").await,
        b,
        "a refused commit changes nothing"
    );
    assert_eq!(
        store.commit("bar-never".to_owned()).await.expect("commit"),
        CommitOutcome::NothingReserved
    );
}

/// A release that arrives before its reserve records itself (null
/// compensation), and the late reserve is refused (anti-hanging).
async fn release_before_reserve_refuses_the_reserve<S: CatalogStore + ReservationStore>(store: &S) {
    let before = put_new(store, "HANG-A", 5).await;
    let saga = "hang-saga".to_owned();
    assert_eq!(
        store.release(saga.clone()).await.expect("release"),
        ReleaseOutcome::NothingReserved
    );
    assert_eq!(
        store
            .reserve(saga.clone(), vec![line("HANG-A", 2)])
            .await
            .expect("reserve"),
        None,
        "an action after its compensation is refused"
    );
    assert_eq!(
        product(store, "HANG-A").await,
        before,
        "the refused reserve took nothing"
    );
    assert_eq!(
        store.release(saga.clone()).await.expect("release"),
        ReleaseOutcome::NothingReserved,
        "a repeated null compensation replays"
    );
    assert_eq!(
        store
            .reserve(saga, vec![line("HANG-A", 2)])
            .await
            .expect("reserve"),
        None,
        "still refused"
    );
    assert_eq!(product(store, "HANG-A").await, before);
}

/// 20 single-unit reserves of distinct sagas race for 7 units: exactly 7
/// win, the buckets add up.
async fn concurrent_reserves_never_oversell<S: CatalogStore + ReservationStore>(store: &S) {
    put_new(store, "HOT-A", 7).await;
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .reserve(format!("hot-saga-{i}"), vec![line("HOT-A", 1)])
                .await
        });
    }
    let (mut reserved, mut out_of_stock) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task").expect("reserve") {
            Some(ReserveOutcome::Reserved(lines)) => {
                assert_eq!(lines.len(), 1);
                assert_eq!(lines[0].quantity, 1);
                reserved += 1;
            }
            Some(ReserveOutcome::OutOfStock {
                sku,
                requested,
                available,
            }) => {
                assert_eq!((sku.as_str(), requested), ("HOT-A", 1));
                assert_eq!(available, 0, "short only once every unit is taken");
                out_of_stock += 1;
            }
            other => panic!("unexpected reserve outcome {other:?}"),
        }
    }
    assert_eq!((reserved, out_of_stock), (7, 13));
    let hot = product(store, "HOT-A").await;
    assert_eq!((hot.available, hot.reserved, hot.sold), (0, 7, 0));
    assert_buckets(&hot, 7);
}

/// A reserve and the release of the same saga delivered at once (a retried
/// action racing its compensation), 10 sagas: whichever runs first, nothing
/// stays reserved.
async fn reserve_racing_release_leaves_nothing_reserved<S: CatalogStore + ReservationStore>(
    store: &S,
) {
    put_new(store, "RACE-A", 100).await;
    let mut pairs = JoinSet::new();
    for i in 0..10 {
        let (reserver, releaser) = (store.clone(), store.clone());
        let saga = format!("race-saga-{i}");
        pairs.spawn(async move {
            let reserve = tokio::spawn({
                let saga = saga.clone();
                async move { reserver.reserve(saga, vec![line("RACE-A", 3)]).await }
            });
            let release = tokio::spawn(async move { releaser.release(saga).await });
            let reserve = reserve.await.expect("task").expect("reserve");
            let release = release.await.expect("task").expect("release");
            (reserve, release)
        });
    }
    while let Some(joined) = pairs.join_next().await {
        let (reserve, release) = joined.expect("task");
        match (&reserve, &release) {
            // The reserve ran first, and the release gave it back.
            (Some(ReserveOutcome::Reserved(_)), ReleaseOutcome::Released(3)) => {}
            // The release ran first: the reserve is refused.
            (None, ReleaseOutcome::NothingReserved) => {}
            _ => panic!("reserve {reserve:?} racing release {release:?}: a hanging reservation"),
        }
    }
    let race = product(store, "RACE-A").await;
    assert_eq!(
        race.reserved, 0,
        "nothing reserved outlives its release: {race:?}"
    );
    assert_eq!(race.available, 100);
    assert_buckets(&race, 100);
}
