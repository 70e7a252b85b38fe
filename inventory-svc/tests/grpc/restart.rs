//! Durability: products and barrier records survive a restart.

use microshop_proto::inventory::v1::ReleaseOutcome;
use microshop_runtime::Reason;
use tonic::Code;

use crate::{Server, assert_rejected, buckets, commit, product, put, release, reserve};

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
