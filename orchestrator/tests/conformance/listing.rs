//! The suite's listing checks: newest first, whole and by state, paged
//! without duplicates or misses, and under every filter.

use super::*;

/// After a burst of sagas begun at once: listing, whole and by state, in
/// pages of 3, gives every saga exactly once, newest first.
pub(super) async fn list_pages_newest_first<L: SagaLog>(log: &L, book: &mut Book) {
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

/// ListSagas filters (type, customer, order, updated before) combine with
/// the state and page as the book says, newest first, every match once.
pub(super) async fn list_filters<L: SagaLog>(log: &L, book: &mut Book) {
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
