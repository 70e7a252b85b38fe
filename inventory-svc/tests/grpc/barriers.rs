//! The participant barrier: a repeated ReserveStock replays its answer with
//! one effect, a release before the reserve is a null compensation that
//! blocks it, a commit sells once and a later release restocks once, and a
//! commit after a release is refused.

use microshop_proto::inventory::v1::{CommitStockResponse, ReleaseOutcome, ReserveStockResponse};
use microshop_runtime::{Reason, errors::reason_of};
use tonic::Code;

use crate::{Server, assert_rejected, buckets, commit, line, product, put, release, reserve};

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
