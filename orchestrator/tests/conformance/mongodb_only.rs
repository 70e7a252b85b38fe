//! The MongoDB-only tests: a database whose keys were written before
//! they were scoped per customer migrates on open, and, with several
//! orchestrators on one database, a former owner whose lease was taken
//! over is fenced off.

use super::*;

/// A database written before keys were scoped per customer (the global
/// unique index `idempotency_key_unique {key: 1}`, documents without
/// `key_scope`, as an older orchestrator writes them): opening it moves it
/// to the scoped key space, idempotently; the old key still answers its
/// customer, and another customer may now use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_keys_written_before_scoping_migrate() {
    use microshop_storage::mongo::{blob, unique_index};
    use mongodb::bson::doc;
    let Some(db) = mongodb_for_tests("mongodb_keys_written_before_scoping_migrate").await else {
        return;
    };
    db.ensure_indexes(
        "sagas",
        vec![unique_index(doc! { "key": 1 }, "idempotency_key_unique")],
    )
    .await
    .expect("the old index");
    let mut old = record_of("alice", "k-old");
    old.seq = 1;
    old.lease_epoch = 1;
    db.collection("sagas")
        .insert_one(doc! {
            "_id": &old.saga_id,
            "key": "k-old",
            "seq": 1_i64,
            "state": i32::from(old.state.index()),
            "unfinished": true,
            "data": blob(&old).expect("encode"),
            "lease_owner": "old-orchestrator",
            "lease_until": 0_i64,
            "epoch": 1_i64,
        })
        .await
        .expect("an old document");
    for run in 0..2 {
        // Twice: the upgrade is idempotent.
        let log = MongoSagaLog::open(db.clone(), format!("new-{run}"), Duration::from_secs(30))
            .await
            .expect("open the older database");
        log.backfill_listing_fields().await.expect("backfill");
        let names = db
            .collection("sagas")
            .list_index_names()
            .await
            .expect("index names");
        assert!(
            !names.iter().any(|n| n == "idempotency_key_unique"),
            "the global key index is gone: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "customer_key_unique"),
            "{names:?}"
        );
        assert_eq!(
            log.get_by_key("alice".into(), "k-old".into())
                .await
                .expect("get_by_key")
                .map(|r| r.saga_id),
            Some(old.saga_id.clone())
        );
        match log
            .begin(record_of("alice", "k-old"))
            .await
            .expect("begin")
            .0
        {
            Begin::Existing(found) => assert_eq!(found.saga_id, old.saga_id),
            Begin::Created(c) => panic!("alice's old key started saga {}", c.saga_id),
        }
        let listed = log
            .list(
                SagaFilter {
                    customer_id: Some("alice".into()),
                    ..SagaFilter::default()
                },
                None,
                10,
            )
            .await
            .expect("list");
        assert_eq!(listed.sagas.len(), 1, "the old saga is listed by customer");
    }
    let log = MongoSagaLog::open(db, "new".into(), Duration::from_secs(30))
        .await
        .expect("open");
    match log.begin(record_of("bob", "k-old")).await.expect("begin").0 {
        Begin::Created(bobs) => assert_ne!(bobs.saga_id, old.saga_id),
        Begin::Existing(found) => panic!("bob got alice's saga {}", found.saga_id),
    }
}

/// Two orchestrators, "a" and "b", on one database: b cannot take a's
/// live saga, takes it once the lease has passed, and a, still holding its
/// old copy, is fenced off from overwriting b's progress.
///
/// a holds a 10-minute lease while b is shown it cannot claim, so no
/// answer of a slow (Python) database can outlast it; then a saves the saga
/// once more under a 100 ms lease (a's lease is whatever its last save
/// set) and b's claims poll until it has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_leases_fence_a_former_owner() {
    let Some(db) = mongodb_for_tests("mongodb_leases_fence_a_former_owner").await else {
        return;
    };
    let started = Instant::now();
    let a = MongoSagaLog::open(db.clone(), "a".to_owned(), Duration::from_secs(600))
        .await
        .expect("open the log as a");
    let a_briefly = MongoSagaLog::open(db.clone(), "a".to_owned(), Duration::from_millis(100))
        .await
        .expect("open the log as a, with short leases");
    let b = MongoSagaLog::open(db, "b".to_owned(), Duration::from_secs(600))
        .await
        .expect("open the log as b");

    // a begins a saga, so a holds its lease: b can neither claim it nor
    // see it as unfinished.
    let theirs = match a.begin(record("lease-key")).await.expect("begin").0 {
        Begin::Created(r) => r,
        Begin::Existing(r) => panic!("a fresh key found saga {}", r.saga_id),
    };
    let id = theirs.saga_id.clone();
    assert_eq!(
        b.claim(id.clone()).await.expect("claim"),
        None,
        "b cannot claim a saga a holds"
    );
    assert!(
        !b.unfinished().await.expect("unfinished").contains(&id),
        "b's recovery skips a saga a holds"
    );
    assert!(
        a.unfinished().await.expect("unfinished").contains(&id),
        "a's recovery sees its own saga"
    );
    // a's last save before it stops renewing: a short lease.
    a_briefly
        .save(&theirs, PaymentDeadline::Keep, Sync::Durable)
        .await
        .expect("a renews its lease");
    let key = theirs.idempotency_key.clone();

    // Once the lease has passed, b takes the saga over.
    let mut claimed = None;
    for _ in 0..100 {
        if let Some(r) = b.claim(id.clone()).await.expect("claim") {
            claimed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mine = claimed.expect("b claims the saga within 5 s of a's 100 ms lease");
    assert!(
        mine.lease_epoch > theirs.lease_epoch,
        "a takeover moves the epoch on: {} after {}",
        mine.lease_epoch,
        theirs.lease_epoch
    );
    assert_eq!(
        SagaRecord {
            lease_epoch: theirs.lease_epoch,
            ..mine.clone()
        },
        theirs,
        "b claims the saga as a left it"
    );

    // a, slow, saves from its old copy: fenced, with or without a deadline.
    let mut stale = theirs.clone();
    stale.transition(SagaState::Compensating, "a is behind");
    match a.save(&stale, PaymentDeadline::Keep, Sync::Durable).await {
        Err(StorageError::Fenced(_)) => {}
        other => panic!("a's save after the takeover must be fenced, got {other:?}"),
    }
    let deadline = PaymentDeadline::Set {
        order_id: "lease-order".to_owned(),
        due_ms: 1,
    };
    match a.save(&stale, deadline, Sync::Durable).await {
        Err(StorageError::Fenced(_)) => {}
        other => {
            panic!("a's save with a deadline after the takeover must be fenced, got {other:?}")
        }
    }
    assert_eq!(
        a.due_payments(now_ms(), 10).await.expect("due_payments"),
        Vec::<String>::new(),
        "a fenced save changes no deadline"
    );
    assert_eq!(
        a.get(id.clone()).await.expect("get"),
        Some(mine.clone()),
        "a fenced save changes nothing"
    );

    // b drives it on; everyone sees b's progress.
    let mut progressed = mine.clone();
    progressed.outputs.order_id = Some("lease-order".to_owned());
    progressed.transition(SagaState::Completed, "b finished it");
    b.save(&progressed, PaymentDeadline::Keep, Sync::Durable)
        .await
        .expect("the new owner saves");
    assert_eq!(
        a.get(id.clone()).await.expect("get"),
        Some(progressed.clone())
    );
    assert_eq!(
        a.get_by_key(CUSTOMER.to_owned(), key)
            .await
            .expect("get_by_key"),
        Some(progressed)
    );
    assert_eq!(
        a.claim(id.clone()).await.expect("claim"),
        None,
        "it has ended"
    );
    assert_eq!(
        b.claim(id.clone()).await.expect("claim"),
        None,
        "it has ended"
    );
    assert!(!a.unfinished().await.expect("unfinished").contains(&id));
    assert!(!b.unfinished().await.expect("unfinished").contains(&id));
    eprintln!("saga log lease test on mongodb: {:?}", started.elapsed());
}
