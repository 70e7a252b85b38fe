//! The suite's idempotency-key checks: one key, one saga, whether begun
//! again or by many callers at once; keys scoped per customer.

use super::*;

/// begin creates once per key; a second key holder gets the first saga.
pub(super) async fn begin_is_idempotent_by_key<L: SagaLog>(log: &L, book: &mut Book) {
    assert_eq!(
        log.get(uuid::Uuid::now_v7().to_string())
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        log.get_by_key(CUSTOMER.to_owned(), "key-unknown".to_owned())
            .await
            .expect("get_by_key"),
        None
    );

    let first = begin_new(log, book, record("key-1")).await;
    assert_eq!(
        log.get_by_key(CUSTOMER.to_owned(), "key-1".to_owned())
            .await
            .expect("get_by_key"),
        Some(first.clone())
    );

    let duplicate = record("key-1");
    match log.begin(duplicate.clone()).await.expect("begin").0 {
        Begin::Existing(found) => assert_eq!(found, first, "the key's saga, unchanged"),
        Begin::Created(created) => panic!("key-1 is taken, yet begin created {created:?}"),
    }
    assert_eq!(
        log.get(duplicate.saga_id).await.expect("get"),
        None,
        "the duplicate stored nothing"
    );

    // Sagas begun one after another list newer and newer.
    let second = begin_new(log, book, record("key-2")).await;
    let third = begin_new(log, book, record("key-3")).await;
    assert!(
        first.seq < second.seq && second.seq < third.seq,
        "a saga begun after another is newer: seqs {}, {}, {}",
        first.seq,
        second.seq,
        third.seq
    );
}

/// Ten begins of one key at once: one saga, which every caller sees.
pub(super) async fn concurrent_begins_make_one_saga<L: SagaLog>(log: &L, book: &mut Book) {
    let records: Vec<SagaRecord> = (0..10).map(|_| record("key-race")).collect();
    let mut tasks = JoinSet::new();
    for r in records.clone() {
        let log = log.clone();
        tasks.spawn(async move { log.begin(r).await.map(|(b, _)| b) });
    }
    let (mut created, mut seen) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task").expect("begin") {
            Begin::Created(r) => {
                seen.push(r.saga_id.clone());
                created.push(r);
            }
            Begin::Existing(r) => seen.push(r.saga_id),
        }
    }
    assert_eq!(created.len(), 1, "one key, one saga: {seen:?}");
    let winner = created.pop().expect("one created");
    assert!(
        seen.iter().all(|id| *id == winner.saga_id),
        "every caller sees the one saga: {seen:?}"
    );
    assert!(records.iter().any(|r| r.saga_id == winner.saga_id));
    assert_eq!(
        log.get_by_key(CUSTOMER.to_owned(), "key-race".to_owned())
            .await
            .expect("get_by_key"),
        Some(winner.clone())
    );
    for r in &records {
        if r.saga_id != winner.saga_id {
            assert_eq!(log.get(r.saga_id.clone()).await.expect("get"), None);
        }
    }
    book.keep(&winner);
}

/// Idempotency keys live per customer: two customers with one key get a
/// saga each, one customer's 20 concurrent begins of a key make one, and
/// order-keyed sagas stay one per order whatever else differs.
pub(super) async fn keys_are_scoped_per_customer<L: SagaLog>(log: &L, book: &mut Book) {
    let alice = begin_new(log, book, record_of("alice", "k-shared")).await;
    let bob = begin_new(log, book, record_of("bob", "k-shared")).await;
    assert_ne!(alice.saga_id, bob.saga_id);
    for (who, theirs) in [("alice", &alice), ("bob", &bob)] {
        assert_eq!(
            log.get_by_key(who.to_owned(), "k-shared".to_owned())
                .await
                .expect("get_by_key")
                .map(|r| r.saga_id),
            Some(theirs.saga_id.clone()),
            "{who}'s key holds {who}'s saga"
        );
    }
    assert_eq!(
        log.get_by_key("carol".to_owned(), "k-shared".to_owned())
            .await
            .expect("get_by_key"),
        None,
        "another customer's key is not visible"
    );
    match log
        .begin(record_of("alice", "k-shared"))
        .await
        .expect("begin")
        .0
    {
        Begin::Existing(found) => assert_eq!(found.saga_id, alice.saga_id),
        Begin::Created(c) => panic!("alice's key is taken, yet begin created {}", c.saga_id),
    }

    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let log = log.clone();
        tasks.spawn(async move {
            log.begin(record_of("dave", "k-twenty"))
                .await
                .map(|(b, _)| b)
        });
    }
    let mut created = Vec::new();
    let mut seen = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task").expect("begin") {
            Begin::Created(r) => {
                seen.insert(r.saga_id.clone());
                created.push(r);
            }
            Begin::Existing(r) => {
                seen.insert(r.saga_id);
            }
        }
    }
    assert_eq!(
        created.len(),
        1,
        "20 begins of one (customer, key): one saga"
    );
    assert_eq!(seen.len(), 1, "every caller sees it: {seen:?}");
    book.keep(&created[0]);

    let confirm = begin_new(log, book, confirm_record("order-scoped")).await;
    let mut again = confirm_record("order-scoped");
    again.outputs.order_customer_id = Some("someone-else".to_owned());
    match log.begin(again).await.expect("begin").0 {
        Begin::Existing(found) => assert_eq!(found.saga_id, confirm.saga_id),
        Begin::Created(c) => panic!("one confirm saga per order, yet a second: {}", c.saga_id),
    }
}
