//! The saga log conformance suite (issue 4): one suite, generic over
//! [`SagaLog`], run against the embedded redb log and the MongoDB log, plus
//! the MongoDB-only lease test (several orchestrators on one database).
//!
//! Asserted here: one idempotency key → one saga, however many begin it at
//! once (`docs/architecture.md`, "Invariants"); records round-trip whole;
//! listing newest first, by state, paged without duplicates or misses; the
//! unfinished set that recovery reads; payment deadlines; claims; and, on
//! MongoDB, that a former owner whose lease was taken over is fenced off.
//!
//! One test binary, a module per concern: `mongodb_only` (the key
//! migration and the lease test), and the suite's checks in `keys`
//! (idempotency keys), `records` (saves, the unfinished set, claims,
//! payment deadlines), `listing` (pages and filters) and `retention`
//! (purging). The backends, the suite that runs every check in order and
//! the records it begins are here.

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

mod keys;
mod listing;
mod mongodb_only;
mod records;
mod retention;

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
    keys::begin_is_idempotent_by_key(&log, &mut book).await;
    keys::concurrent_begins_make_one_saga(&log, &mut book).await;
    records::save_round_trips(&log, &mut book).await;
    records::unfinished_and_claims(&log, &mut book).await;
    records::payment_deadlines(&log, &mut book).await;
    listing::list_pages_newest_first(&log, &mut book).await;
    keys::keys_are_scoped_per_customer(&log, &mut book).await;
    listing::list_filters(&log, &mut book).await;
    retention::purge_removes_only_old_ended_sagas(&log, &mut book).await;
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
