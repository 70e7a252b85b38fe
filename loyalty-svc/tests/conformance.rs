//! The loyalty storage conformance suite (issue 4): one suite, generic over
//! the storage traits, run against the embedded redb store and the MongoDB
//! store. Asserted here: accounts and grants, deduct/refund/earn under the
//! participant barrier (`docs/architecture.md`), and the points invariant
//! under concurrency (its "Invariants").

use std::time::Instant;

use loyalty_svc::{
    EmbeddedLoyalty, MongoLoyalty,
    domain::{Account, DeductOutcome, EarnOutcome, RefundOutcome},
    store::{AccountStore, PointsLedgerStore},
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
    let store = EmbeddedLoyalty::open(dir.path(), Durable::Yes).expect("open the embedded store");
    suite("embedded", store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_conforms() {
    let Some(db) = mongodb_for_tests("mongodb_store_conforms").await else {
        return;
    };
    let store = MongoLoyalty::open(db)
        .await
        .expect("open the MongoDB store");
    suite("mongodb", store).await;
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

/// Every check, in order; each works on customers and sagas of its own.
async fn suite<S: AccountStore + PointsLedgerStore>(backend: &str, store: S) {
    let started = Instant::now();
    accounts_and_grants(&store).await;
    deduct_and_refund_barrier(&store).await;
    refund_before_deduct_refuses_the_deduct(&store).await;
    earn(&store).await;
    concurrent_deducts_never_overdraw(&store).await;
    eprintln!("loyalty conformance on {backend}: {:?}", started.elapsed());
}

async fn account<S: AccountStore>(store: &S, customer: &str) -> Option<Account> {
    let found = store.account(customer.to_owned()).await.expect("account");
    if let Some(a) = &found {
        assert_eq!(a.customer_id, customer);
        assert!(a.is_consistent(), "the ledger invariant holds: {a:?}");
    }
    found
}

async fn member<S: AccountStore>(store: &S, customer: &str) -> Account {
    account(store, customer)
        .await
        .unwrap_or_else(|| panic!("{customer} has an account"))
}

/// Grants `points` to a new customer and checks the account it created.
async fn new_member<S: AccountStore>(store: &S, customer: &str, points: i64) -> Account {
    assert_eq!(account(store, customer).await, None, "{customer} is new");
    let created = store
        .grant(customer.to_owned(), points)
        .await
        .expect("grant");
    assert_eq!(
        created,
        Account {
            points,
            member: true,
            granted: points,
            ..Account::guest(customer)
        }
    );
    assert_eq!(member(store, customer).await, created);
    created
}

/// Unknown customers, a grant creating a member, grants adding up.
async fn accounts_and_grants<S: AccountStore + PointsLedgerStore>(store: &S) {
    assert_eq!(account(store, "acc-unknown").await, None);
    let first = new_member(store, "acc-alice", 50).await;
    let second = store
        .grant("acc-alice".to_owned(), 30)
        .await
        .expect("grant");
    assert_eq!(
        second,
        Account {
            points: 80,
            granted: 80,
            ..first
        },
        "grants add up"
    );
    assert_eq!(member(store, "acc-alice").await, second);
    assert_eq!(
        account(store, "acc-bob").await,
        None,
        "a grant touches its customer only"
    );
}

/// Deduct (refused and accepted) and refund, each repeated: one effect
/// each, outcomes replayed.
async fn deduct_and_refund_barrier<S: AccountStore + PointsLedgerStore>(store: &S) {
    let start = new_member(store, "ded-carol", 80).await;

    // A customer never seen is not a member; nothing is created.
    assert_eq!(
        store
            .deduct("ded-saga-nobody".to_owned(), "ded-nobody".to_owned(), 10)
            .await
            .expect("deduct"),
        Some(DeductOutcome::NotAMember)
    );
    assert_eq!(account(store, "ded-nobody").await, None, "nothing changed");

    // Short: refused, nothing taken, and a repeat replays the refusal even
    // once the balance would cover it.
    let short = store
        .deduct("ded-saga-short".to_owned(), "ded-carol".to_owned(), 1_000)
        .await
        .expect("deduct");
    assert_eq!(
        short,
        Some(DeductOutcome::InsufficientPoints {
            balance: 80,
            requested: 1_000,
        })
    );
    assert_eq!(member(store, "ded-carol").await, start, "nothing taken");
    let rich = store
        .grant("ded-carol".to_owned(), 1_000)
        .await
        .expect("grant");
    assert_eq!(rich.points, 1_080);
    assert_eq!(
        store
            .deduct("ded-saga-short".to_owned(), "ded-carol".to_owned(), 1_000)
            .await
            .expect("deduct"),
        short,
        "a repeated action replays its first outcome"
    );
    assert_eq!(
        member(store, "ded-carol").await,
        rich,
        "the replay took nothing"
    );
    // Refunding a refused deduction gives nothing back.
    assert_eq!(
        store
            .refund("ded-saga-short".to_owned())
            .await
            .expect("refund"),
        RefundOutcome::NothingDeducted
    );
    assert_eq!(member(store, "ded-carol").await, rich);

    // Accepted, once.
    let saga = "ded-saga-ok".to_owned();
    let deducted = store
        .deduct(saga.clone(), "ded-carol".to_owned(), 30)
        .await
        .expect("deduct");
    assert_eq!(
        deducted,
        Some(DeductOutcome::Deducted {
            customer_id: "ded-carol".to_owned(),
            points: 30,
            balance: 1_050,
        })
    );
    let after = member(store, "ded-carol").await;
    assert_eq!(
        after,
        Account {
            points: 1_050,
            deducted: 30,
            ..rich.clone()
        }
    );
    assert_eq!(
        store
            .deduct(saga.clone(), "ded-carol".to_owned(), 30)
            .await
            .expect("deduct"),
        deducted,
        "a repeated deduct replays"
    );
    assert_eq!(
        member(store, "ded-carol").await,
        after,
        "a repeated deduct takes nothing"
    );

    // Refunded, once.
    let refunded = RefundOutcome::Refunded {
        customer_id: "ded-carol".to_owned(),
        points: 30,
    };
    assert_eq!(store.refund(saga.clone()).await.expect("refund"), refunded);
    let restored = member(store, "ded-carol").await;
    assert_eq!(
        restored,
        Account {
            points: 1_080,
            refunded: 30,
            ..after
        }
    );
    assert_eq!(
        store.refund(saga.clone()).await.expect("refund"),
        refunded,
        "a repeated refund replays"
    );
    assert_eq!(
        member(store, "ded-carol").await,
        restored,
        "a repeated refund is a no-op"
    );
    // The refunded saga's deduct replays its first outcome, taking nothing.
    assert_eq!(
        store
            .deduct(saga, "ded-carol".to_owned(), 30)
            .await
            .expect("deduct"),
        deducted
    );
    assert_eq!(member(store, "ded-carol").await, restored);
}

/// A refund that arrives before its deduct records itself (null
/// compensation), and the late deduct is refused (anti-hanging).
async fn refund_before_deduct_refuses_the_deduct<S: AccountStore + PointsLedgerStore>(store: &S) {
    let start = new_member(store, "hang-dave", 40).await;
    let saga = "hang-saga".to_owned();
    assert_eq!(
        store.refund(saga.clone()).await.expect("refund"),
        RefundOutcome::NothingDeducted
    );
    assert_eq!(
        store
            .deduct(saga.clone(), "hang-dave".to_owned(), 10)
            .await
            .expect("deduct"),
        None,
        "an action after its compensation is refused"
    );
    assert_eq!(
        member(store, "hang-dave").await,
        start,
        "the refused deduct took nothing"
    );
    assert_eq!(
        store.refund(saga.clone()).await.expect("refund"),
        RefundOutcome::NothingDeducted,
        "a repeated null compensation replays"
    );
    assert_eq!(
        store
            .deduct(saga, "hang-dave".to_owned(), 10)
            .await
            .expect("deduct"),
        None
    );
    assert_eq!(member(store, "hang-dave").await, start);
}

/// Earn credits members once per saga; non-members get nothing.
async fn earn<S: AccountStore + PointsLedgerStore>(store: &S) {
    let start = new_member(store, "earn-erin", 5).await;
    let earned = EarnOutcome::Earned {
        customer_id: "earn-erin".to_owned(),
        points: 7,
        balance: 12,
    };
    assert_eq!(
        store
            .earn("earn-saga".to_owned(), "earn-erin".to_owned(), 7)
            .await
            .expect("earn"),
        earned
    );
    let after = member(store, "earn-erin").await;
    assert_eq!(
        after,
        Account {
            points: 12,
            earned: 7,
            ..start
        }
    );
    assert_eq!(
        store
            .earn("earn-saga".to_owned(), "earn-erin".to_owned(), 7)
            .await
            .expect("earn"),
        earned,
        "a repeated earn replays"
    );
    assert_eq!(
        member(store, "earn-erin").await,
        after,
        "a repeated earn credits nothing"
    );

    assert_eq!(
        store
            .earn("earn-saga-nobody".to_owned(), "earn-nobody".to_owned(), 7)
            .await
            .expect("earn"),
        EarnOutcome::NotAMember { balance: 0 }
    );
    assert_eq!(
        account(store, "earn-nobody").await,
        None,
        "earning creates no account"
    );
}

/// 20 deducts of 10 from 100 points, distinct sagas, at once: exactly 10
/// succeed and the balance ends at 0, never below.
async fn concurrent_deducts_never_overdraw<S: AccountStore + PointsLedgerStore>(store: &S) {
    new_member(store, "hot-frank", 100).await;
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .deduct(format!("hot-saga-{i}"), "hot-frank".to_owned(), 10)
                .await
        });
    }
    let (mut deducted, mut short) = (0, 0);
    let mut balances = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task").expect("deduct") {
            Some(DeductOutcome::Deducted {
                customer_id,
                points,
                balance,
            }) => {
                assert_eq!((customer_id.as_str(), points), ("hot-frank", 10));
                balances.push(balance);
                deducted += 1;
            }
            Some(DeductOutcome::InsufficientPoints { balance, requested }) => {
                assert_eq!(
                    (balance, requested),
                    (0, 10),
                    "short only once all is taken"
                );
                short += 1;
            }
            other => panic!("unexpected deduct outcome {other:?}"),
        }
    }
    assert_eq!((deducted, short), (10, 10));
    balances.sort_unstable();
    assert_eq!(
        balances,
        vec![0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
        "each deduction saw the balance the one before left"
    );
    let end = member(store, "hot-frank").await;
    assert_eq!(
        (
            end.points,
            end.granted,
            end.deducted,
            end.refunded,
            end.earned
        ),
        (0, 100, 100, 0, 0)
    );
    assert!(end.is_consistent(), "{end:?}");
}
