//! The saga log conformance suite (issue 4): one suite, generic over
//! [`SagaLog`], run against the embedded redb log and the MongoDB log, plus
//! the MongoDB-only lease test (several orchestrators on one database).
//!
//! Asserted here: one idempotency key → one saga, however many begin it at
//! once (`docs/architecture.md`, "Invariants"); records round-trip whole;
//! listing newest first, by state, paged without duplicates or misses; the
//! unfinished set that recovery reads; payment deadlines; claims; and, on
//! MongoDB, that a former owner whose lease was taken over is fenced off.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use microshop_runtime::testing::mongodb_for_tests;
use microshop_storage::{
    StorageError,
    embedded::{Durable, Sync},
};
use orchestrator::{
    EmbeddedSagaLog, MongoSagaLog, SagaLog,
    log::{Begin, PaymentDeadline, SagaFilter},
    model::{
        Address, CartLine, PricedLine, SagaError, SagaInput, SagaOutputs, SagaRecord, SagaState,
        SagaType, StepRecord, StepStatus, now_ms,
    },
    steps,
};
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------
// The two backends
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = EmbeddedSagaLog::open(dir.path(), Durable::Yes).expect("open the embedded log");
    suite("embedded", log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_conforms() {
    let Some(db) = mongodb_for_tests("mongodb_store_conforms").await else {
        return;
    };
    let log = MongoSagaLog::open(db, "conformance".to_owned(), Duration::from_secs(30))
        .await
        .expect("open the MongoDB log");
    suite("mongodb", log).await;
}

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

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

/// What the log should hold: every saga begun, as last saved (with the
/// lease epoch the next save must carry).
#[derive(Default)]
struct Book {
    sagas: HashMap<String, SagaRecord>,
}

impl Book {
    fn keep(&mut self, record: &SagaRecord) {
        self.sagas.insert(record.saga_id.clone(), record.clone());
    }

    fn get(&self, id: &str) -> SagaRecord {
        self.sagas[id].clone()
    }

    /// Ids of the sagas in `state` (all with `None`), newest first.
    fn newest_first(&self, state: Option<SagaState>) -> Vec<String> {
        let mut found: Vec<&SagaRecord> = self
            .sagas
            .values()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect();
        found.sort_by_key(|r| std::cmp::Reverse(r.seq));
        found.iter().map(|r| r.saga_id.clone()).collect()
    }
}

/// Every check, in order, against one log holding only their sagas.
async fn suite<L: SagaLog>(backend: &str, log: L) {
    let started = Instant::now();
    let mut book = Book::default();
    begin_is_idempotent_by_key(&log, &mut book).await;
    concurrent_begins_make_one_saga(&log, &mut book).await;
    save_round_trips(&log, &mut book).await;
    unfinished_and_claims(&log, &mut book).await;
    payment_deadlines(&log, &mut book).await;
    list_pages_newest_first(&log, &mut book).await;
    keys_are_scoped_per_customer(&log, &mut book).await;
    list_filters(&log, &mut book).await;
    purge_removes_only_old_ended_sagas(&log, &mut book).await;
    eprintln!("saga log conformance on {backend}: {:?}", started.elapsed());
}

/// The customer of the suite's checkouts.
const CUSTOMER: &str = "conformance-customer";

/// A checkout of `customer` under `key`.
fn record_of(customer: &str, key: &str) -> SagaRecord {
    let mut r = record(key);
    if let SagaInput::Place { customer_id, .. } = &mut r.input {
        *customer_id = customer.to_owned();
    }
    r
}

/// A confirm-payment saga of `order`, keyed as the API keys it.
fn confirm_record(order: &str) -> SagaRecord {
    let mut r = record(&format!("confirm:{order}"));
    r.saga_type = SagaType::ConfirmPayment;
    r.input = SagaInput::Confirm {
        order_id: order.to_owned(),
        payment_ref: "pay-1".to_owned(),
    };
    r.steps = steps::definition(SagaType::ConfirmPayment)
        .iter()
        .map(|d| StepRecord::new(d.name, d.description))
        .collect();
    r
}

/// A RUNNING PlaceOrder saga with a fresh UUIDv7 id, as the engine begins
/// one.
fn record(key: &str) -> SagaRecord {
    let now = now_ms();
    let mut record = SagaRecord {
        saga_id: uuid::Uuid::now_v7().to_string(),
        saga_type: SagaType::PlaceOrder,
        state: SagaState::Running,
        idempotency_key: key.to_owned(),
        input: SagaInput::Place {
            customer_id: CUSTOMER.to_owned(),
            items: vec![CartLine {
                sku: "SKU-1".to_owned(),
                quantity: 2,
            }],
            coupon_code: String::new(),
            points_to_redeem: 5,
            shipping: Address {
                name: "Nguyễn Văn A".to_owned(),
                address: "1 Lê Lợi".to_owned(),
                phone: "+84 90".to_owned(),
            },
        },
        steps: steps::definition(SagaType::PlaceOrder)
            .iter()
            .map(|d| StepRecord::new(d.name, d.description))
            .collect(),
        outputs: SagaOutputs::default(),
        history: Vec::new(),
        error: None,
        failure_reason: String::new(),
        failed_from: None,
        created_at_ms: now,
        updated_at_ms: now,
        seq: 0,
        lease_epoch: 0,
        trace_parent: None,
        waiting: None,
        waits: 0,
    };
    record.transition(SagaState::Running, "saga started");
    record
}

/// Begins `record`, which must be created; checks and books it.
async fn begin_new<L: SagaLog>(log: &L, book: &mut Book, record: SagaRecord) -> SagaRecord {
    let (begun, synced) = log.begin(record.clone()).await.expect("begin");
    synced.wait().await.expect("the creation becomes durable");
    let created = match begun {
        Begin::Created(created) => created,
        Begin::Existing(found) => panic!(
            "key {} is fresh, yet begin found saga {}",
            record.idempotency_key, found.saga_id
        ),
    };
    assert!(created.seq > 0, "begin assigns a seq: {created:?}");
    assert_eq!(
        SagaRecord {
            seq: record.seq,
            lease_epoch: record.lease_epoch,
            ..created.clone()
        },
        record,
        "begin stores the record as given, but for seq and lease"
    );
    assert_eq!(
        log.get(created.saga_id.clone()).await.expect("get"),
        Some(created.clone())
    );
    book.keep(&created);
    created
}

/// Saves `record` (which must succeed) and books it.
async fn save<L: SagaLog>(
    log: &L,
    book: &mut Book,
    record: &SagaRecord,
    deadline: PaymentDeadline,
) {
    log.save(record, deadline, Sync::Durable)
        .await
        .unwrap_or_else(|e| panic!("save of {}: {e}", record.saga_id));
    book.keep(record);
}

/// begin creates once per key; a second key holder gets the first saga.
async fn begin_is_idempotent_by_key<L: SagaLog>(log: &L, book: &mut Book) {
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
async fn concurrent_begins_make_one_saga<L: SagaLog>(log: &L, book: &mut Book) {
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

/// A saved record comes back whole, by id and by key.
async fn save_round_trips<L: SagaLog>(log: &L, book: &mut Book) {
    let id = book
        .newest_first(None)
        .pop()
        .expect("the first saga is booked");
    let mut record = book.get(&id);
    assert_eq!(record.idempotency_key, "key-1");

    for step in &mut record.steps {
        step.action.status = StepStatus::Succeeded;
        step.action.attempts = 2;
        step.action.last_error = "deadline exceeded, retried".to_owned();
        step.action.started_at_ms = Some(record.created_at_ms);
        step.action.finished_at_ms = Some(record.created_at_ms + 7);
    }
    if let Some(last) = record.steps.last_mut() {
        last.action.status = StepStatus::Failed;
        // As the engine makes it: named after its operation (the embedded
        // log stores only what the definition does not say).
        last.compensation = Some(orchestrator::model::RunRecord {
            name: "cancel-order".to_owned(),
            ..Default::default()
        });
    }
    record.outputs = SagaOutputs {
        lines: vec![PricedLine {
            sku: "SKU-1".to_owned(),
            name: "Cà phê".to_owned(),
            quantity: 2,
            unit_price: 12_500,
        }],
        order_id: Some("order-1".to_owned()),
        order_saga_id: Some("saga-x".to_owned()),
        order_customer_id: Some("conformance-customer".to_owned()),
        order_total: 77_500,
        order_snapshot: Some("0a0b".repeat(40)),
    };
    record.error = Some(SagaError {
        code: 9,
        reason: "INSUFFICIENT_POINTS".to_owned(),
        message: "not enough points".to_owned(),
        metadata: BTreeMap::from([("balance".to_owned(), "3".to_owned())]),
        violations: vec![("points".to_owned(), "too many".to_owned())],
    });
    record.transition(SagaState::Compensating, "create-order failed");
    save(log, book, &record, PaymentDeadline::Keep).await;
    assert_eq!(
        log.get(id.clone()).await.expect("get"),
        Some(record.clone())
    );
    assert_eq!(
        log.get_by_key(CUSTOMER.to_owned(), "key-1".to_owned())
            .await
            .expect("get_by_key"),
        Some(record.clone())
    );

    // A second save replaces the first.
    record.transition(SagaState::Compensated, "every step compensated");
    save(log, book, &record, PaymentDeadline::Keep).await;
    assert_eq!(log.get(id).await.expect("get"), Some(record));
}

/// unfinished lists RUNNING and COMPENSATING sagas only; claims are
/// granted for those and refused for ended or unknown ones.
async fn unfinished_and_claims<L: SagaLog>(log: &L, book: &mut Book) {
    let mut compensating = begin_new(log, book, record("key-compensating")).await;
    compensating.transition(SagaState::Compensating, "reserve-stock refused");
    save(log, book, &compensating, PaymentDeadline::Keep).await;
    let mut completed = begin_new(log, book, record("key-completed")).await;
    completed.transition(SagaState::Completed, "every step succeeded");
    save(log, book, &completed, PaymentDeadline::Keep).await;
    let mut failed = begin_new(log, book, record("key-failed")).await;
    failed.failure_reason = "out of retries".to_owned();
    failed.failed_from = Some(SagaState::Running);
    failed.transition(SagaState::Failed, "out of retries");
    save(log, book, &failed, PaymentDeadline::Keep).await;
    // A saga that ran and ended, then was saved back to RUNNING (an
    // operator's retry) is unfinished again.
    let mut retried = begin_new(log, book, record("key-retried")).await;
    retried.transition(SagaState::Failed, "out of retries");
    save(log, book, &retried, PaymentDeadline::Keep).await;
    retried.transition(SagaState::Running, "retried by an operator");
    save(log, book, &retried, PaymentDeadline::Keep).await;

    let expected: HashSet<String> = book
        .sagas
        .values()
        .filter(|r| matches!(r.state, SagaState::Running | SagaState::Compensating))
        .map(|r| r.saga_id.clone())
        .collect();
    assert!(expected.contains(&compensating.saga_id) && expected.contains(&retried.saga_id));
    let unfinished = log.unfinished().await.expect("unfinished");
    let listed: HashSet<String> = unfinished.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        unfinished.len(),
        "no saga twice: {unfinished:?}"
    );
    assert_eq!(
        listed, expected,
        "unfinished = the RUNNING and COMPENSATING sagas"
    );

    // Ended or unknown: nothing to claim.
    for ended in [
        &completed,
        &failed,
        &book.get(&book.newest_first(Some(SagaState::Compensated))[0]),
    ] {
        assert_eq!(
            log.claim(ended.saga_id.clone()).await.expect("claim"),
            None,
            "a {:?} saga cannot be claimed",
            ended.state
        );
    }
    assert_eq!(
        log.claim(uuid::Uuid::now_v7().to_string())
            .await
            .expect("claim"),
        None,
        "an unknown saga cannot be claimed"
    );

    // Unfinished and held by no other: the claim is granted, and the
    // claimed copy is the one to save from.
    for held in [&compensating, &retried] {
        let claimed = log
            .claim(held.saga_id.clone())
            .await
            .expect("claim")
            .unwrap_or_else(|| {
                panic!(
                    "the claim of {:?} saga {} is granted",
                    held.state, held.saga_id
                )
            });
        assert!(
            claimed.lease_epoch >= held.lease_epoch,
            "epochs never go back"
        );
        assert_eq!(
            SagaRecord {
                lease_epoch: held.lease_epoch,
                ..claimed.clone()
            },
            *held,
            "a claim returns the saga as saved"
        );
        assert_eq!(
            log.get(held.saga_id.clone()).await.expect("get"),
            Some(claimed.clone())
        );
        let mut next = claimed;
        next.updated_at_ms += 1;
        save(log, book, &next, PaymentDeadline::Keep).await;
        assert_eq!(
            log.get(next.saga_id.clone()).await.expect("get"),
            Some(next)
        );
    }
}

/// Deadlines set with a save show once due, in due order; clearing or
/// moving one takes it out.
async fn payment_deadlines<L: SagaLog>(log: &L, book: &mut Book) {
    let now = now_ms();
    let hour = 3_600_000;
    assert_eq!(
        log.due_payments(now, 10).await.expect("due_payments"),
        Vec::<String>::new()
    );

    let mut placing = begin_new(log, book, record("key-deadlines")).await;
    let set = |order: &str, due_ms: i64| PaymentDeadline::Set {
        order_id: order.to_owned(),
        due_ms,
    };
    placing.outputs.order_id = Some("order-late".to_owned());
    save(log, book, &placing, set("order-late", now - 2_000)).await;
    save(log, book, &placing, set("order-later", now - 1_000)).await;
    save(log, book, &placing, set("order-future", now + hour)).await;
    save(log, book, &placing, set("order-moved", now - 500)).await;
    assert_eq!(
        log.due_payments(now, 10).await.expect("due_payments"),
        vec!["order-late", "order-later", "order-moved"],
        "due deadlines, earliest first; future ones not yet"
    );
    assert_eq!(
        log.due_payments(now, 2).await.expect("due_payments"),
        vec!["order-late", "order-later"],
        "at most `limit`"
    );
    assert_eq!(
        log.due_payments(now - 1_500, 10)
            .await
            .expect("due_payments"),
        vec!["order-late"]
    );

    // Paid: cleared. Moved later: replaced, not doubled.
    save(
        log,
        book,
        &placing,
        PaymentDeadline::Clear {
            order_id: "order-late".to_owned(),
        },
    )
    .await;
    save(log, book, &placing, set("order-moved", now + 2 * hour)).await;
    assert_eq!(
        log.due_payments(now, 10).await.expect("due_payments"),
        vec!["order-later"]
    );
    assert_eq!(
        log.due_payments(now + 3 * hour, 10)
            .await
            .expect("due_payments"),
        vec!["order-later", "order-future", "order-moved"]
    );
    // Keep leaves deadlines alone; clearing an unknown order is harmless.
    save(log, book, &placing, PaymentDeadline::Keep).await;
    save(
        log,
        book,
        &placing,
        PaymentDeadline::Clear {
            order_id: "order-never".to_owned(),
        },
    )
    .await;
    for order in ["order-later", "order-future", "order-moved"] {
        save(
            log,
            book,
            &placing,
            PaymentDeadline::Clear {
                order_id: order.to_owned(),
            },
        )
        .await;
    }
    assert_eq!(
        log.due_payments(now + 3 * hour, 10)
            .await
            .expect("due_payments"),
        Vec::<String>::new()
    );
    assert_eq!(
        log.get(placing.saga_id.clone()).await.expect("get"),
        Some(placing)
    );
}

/// After a burst of sagas begun at once: listing, whole and by state, in
/// pages of 3, gives every saga exactly once, newest first.
async fn list_pages_newest_first<L: SagaLog>(log: &L, book: &mut Book) {
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let log = log.clone();
        let r = record(&format!("key-burst-{i}"));
        tasks.spawn(async move { log.begin(r).await.map(|(b, _)| b) });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task").expect("begin") {
            Begin::Created(r) => book.keep(&r),
            Begin::Existing(r) => panic!("a fresh key found saga {}", r.saga_id),
        }
    }

    let states = [
        None,
        Some(SagaState::Running),
        Some(SagaState::Compensating),
        Some(SagaState::Completed),
        Some(SagaState::Compensated),
        Some(SagaState::Failed),
    ];
    for state in states {
        let expected = book.newest_first(state);
        let mut listed: Vec<SagaRecord> = Vec::new();
        let mut sizes = Vec::new();
        let mut before = None;
        loop {
            let filter = SagaFilter {
                state,
                ..SagaFilter::default()
            };
            let page = log.list(filter, before, 3).await.expect("list");
            assert!(page.sagas.len() <= 3, "at most `limit` per page");
            sizes.push(page.sagas.len());
            listed.extend(page.sagas);
            match page.next {
                Some(next) => {
                    assert!(sizes.len() <= expected.len(), "paging ends");
                    before = Some(next);
                }
                None => break,
            }
        }
        let ids: Vec<String> = listed.iter().map(|r| r.saga_id.clone()).collect();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{state:?}: no saga twice: {ids:?}");
        let missed: Vec<&String> = expected.iter().filter(|id| !unique.contains(id)).collect();
        assert!(
            missed.is_empty(),
            "{state:?}: paging missed {missed:?} (seqs {:?}); pages {sizes:?}",
            missed
                .iter()
                .map(|id| book.sagas[*id].seq)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            unique.len(),
            expected.len(),
            "{state:?}: only sagas in that state"
        );
        let seqs: Vec<u64> = listed.iter().map(|r| r.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] > w[1]),
            "{state:?}: newest first, each seq once (the cursor): {seqs:?}"
        );
        assert_eq!(ids, expected, "{state:?}: newest first");
        for r in &listed {
            assert_eq!(*r, book.get(&r.saga_id), "listed sagas are as saved");
        }
        let full = sizes.len() - 1;
        assert!(
            sizes[..full].iter().all(|n| *n == 3) && (sizes[full] > 0 || expected.is_empty()),
            "{state:?}: full pages, then the rest: {sizes:?}"
        );
    }
}

/// Idempotency keys live per customer: two customers with one key get a
/// saga each, one customer's 20 concurrent begins of a key make one, and
/// order-keyed sagas stay one per order whatever else differs.
async fn keys_are_scoped_per_customer<L: SagaLog>(log: &L, book: &mut Book) {
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

/// ListSagas filters (type, customer, order, updated before) combine with
/// the state and page as the book says, newest first, every match once.
async fn list_filters<L: SagaLog>(log: &L, book: &mut Book) {
    // An order with its checkout (order id known once created) and its
    // confirm saga; a checkout of another customer.
    let mut placed = begin_new(log, book, record_of("erin", "k-filter-1")).await;
    placed.outputs.order_id = Some("order-filtered".to_owned());
    placed.transition(SagaState::Completed, "every step succeeded");
    save(log, book, &placed, PaymentDeadline::Keep).await;
    let confirm = begin_new(log, book, confirm_record("order-filtered")).await;
    let _other = begin_new(log, book, record_of("frank", "k-filter-2")).await;
    let cutoff = now_ms() + 1;

    let filters = [
        SagaFilter {
            order_id: Some("order-filtered".to_owned()),
            ..SagaFilter::default()
        },
        SagaFilter {
            customer_id: Some("erin".to_owned()),
            ..SagaFilter::default()
        },
        SagaFilter {
            saga_type: Some(SagaType::ConfirmPayment),
            ..SagaFilter::default()
        },
        SagaFilter {
            saga_type: Some(SagaType::PlaceOrder),
            state: Some(SagaState::Completed),
            ..SagaFilter::default()
        },
        SagaFilter {
            updated_before_ms: Some(placed.updated_at_ms),
            ..SagaFilter::default()
        },
        SagaFilter {
            updated_before_ms: Some(cutoff),
            customer_id: Some("frank".to_owned()),
            ..SagaFilter::default()
        },
    ];
    for filter in filters {
        let mut expected: Vec<&SagaRecord> =
            book.sagas.values().filter(|r| filter.matches(r)).collect();
        expected.sort_by_key(|r| std::cmp::Reverse(r.seq));
        let expected: Vec<String> = expected.iter().map(|r| r.saga_id.clone()).collect();
        let mut listed = Vec::new();
        let mut before = None;
        for _ in 0..1_000 {
            let page = log.list(filter.clone(), before, 2).await.expect("list");
            assert!(page.sagas.len() <= 2, "at most `limit` per page");
            listed.extend(page.sagas.into_iter().map(|r| r.saga_id));
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        assert_eq!(
            listed, expected,
            "{filter:?}: every match once, newest first"
        );
    }
    let by_order: HashSet<String> = book
        .sagas
        .values()
        .filter(|r| r.order_id() == Some("order-filtered"))
        .map(|r| r.saga_id.clone())
        .collect();
    assert_eq!(
        by_order,
        HashSet::from([placed.saga_id.clone(), confirm.saga_id.clone()]),
        "an order's checkout and confirm sagas"
    );
}

/// Retention: purging removes COMPLETED and COMPENSATED sagas that ended
/// before the cutoff, with their keys (a later begin of the key is a new
/// saga), in bounded batches; FAILED, unfinished and newer ones stay.
async fn purge_removes_only_old_ended_sagas<L: SagaLog>(log: &L, book: &mut Book) {
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
