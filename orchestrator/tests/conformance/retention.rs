//! The suite's retention check: a purge removes only old ended sagas,
//! with their keys.

use super::*;

/// Retention: purging removes COMPLETED and COMPENSATED sagas that ended
/// before the cutoff, with their keys (a later begin of the key is a new
/// saga), in bounded batches; FAILED, unfinished and newer ones stay.
pub(super) async fn purge_removes_only_old_ended_sagas<L: SagaLog>(log: &L, book: &mut Book) {
    let hour = 3_600_000;
    let long_ago = now_ms() - 48 * hour;
    let mut aged = Vec::new();
    for (i, end) in [
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
        SagaState::Running,
        SagaState::Completed,
        SagaState::Compensated,
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = record_of("gina", &format!("k-aged-{i}"));
        r.created_at_ms = long_ago;
        let mut r = begin_new(log, book, r).await;
        if end != SagaState::Running {
            r.transition(end, "ended long ago");
        }
        r.updated_at_ms = long_ago + i64::try_from(i).unwrap_or(0);
        log.save(&r, PaymentDeadline::Keep, Sync::Durable)
            .await
            .expect("save an aged saga");
        book.keep(&r);
        aged.push(r);
    }
    let fresh = {
        let mut r = begin_new(log, book, record_of("gina", "k-fresh")).await;
        r.transition(SagaState::Completed, "ended just now");
        save(log, book, &r, PaymentDeadline::Keep).await;
        r
    };
    let cutoff = now_ms() - hour;
    // Bounded: two at most per call, then the rest.
    let first = log.purge_ended(cutoff, 2).await.expect("purge");
    assert_eq!(first, 2, "a batch stops at its limit");
    let mut total = first;
    for _ in 0..10 {
        match log.purge_ended(cutoff, 2).await.expect("purge") {
            0 => break,
            n => total += n,
        }
    }
    let old_ended: Vec<&SagaRecord> = aged
        .iter()
        .filter(|r| matches!(r.state, SagaState::Completed | SagaState::Compensated))
        .collect();
    assert_eq!(total, old_ended.len() as u64, "every old ended saga, once");
    for r in &aged {
        let found = log.get(r.saga_id.clone()).await.expect("get");
        if old_ended.iter().any(|o| o.saga_id == r.saga_id) {
            assert_eq!(found, None, "{:?} saga purged", r.state);
            assert_eq!(
                log.get_by_key("gina".into(), r.idempotency_key.clone())
                    .await
                    .expect("get_by_key"),
                None,
                "its key went with it"
            );
            book.sagas.remove(&r.saga_id);
        } else {
            assert!(found.is_some(), "{:?} saga kept", r.state);
        }
    }
    assert!(
        log.get(fresh.saga_id.clone()).await.expect("get").is_some(),
        "a saga ended after the cutoff stays"
    );
    // A purged saga's key is free again: "one key, one saga" holds within
    // the retention window only.
    let reused = old_ended[0].idempotency_key.clone();
    begin_new(log, book, record_of("gina", &reused)).await;
    let page = log
        .list(SagaFilter::default(), None, 100)
        .await
        .expect("list");
    assert!(
        page.sagas
            .iter()
            .all(|s| !old_ended.iter().any(|o| o.saga_id == s.saga_id)),
        "purged sagas are not listed"
    );
}
