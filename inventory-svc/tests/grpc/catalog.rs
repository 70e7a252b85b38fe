//! The catalog: PutProduct and GetProduct(s) round trip, a re-put keeps the
//! reservations, and ReserveStock prices its lines from the catalog,
//! merging duplicate SKUs.

use microshop_proto::inventory::v1::{
    GetProductResponse, GetProductsRequest, Product, PutProductResponse,
};
use microshop_runtime::{Reason, errors::metadata_of};
use tonic::Code;

use crate::{Server, assert_rejected, buckets, line, product, put, reserve};

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
