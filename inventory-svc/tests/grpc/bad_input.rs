//! Bad input: every invalid field is refused as INVALID_ARGUMENT naming it,
//! without effect, and unknown SKUs are NOT_FOUND and reserve nothing.

use microshop_proto::inventory::v1::{
    GetProductRequest, GetProductsRequest, PutProductRequest, ReleaseOutcome, ReleaseStockRequest,
};
use microshop_runtime::{Reason, errors::metadata_of};
use tonic::{Code, Status};

use crate::{Server, assert_rejected, bad_fields, buckets, commit, product, put, release, reserve};

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
