//! Against `microshop up`: list, show, retry, abort and `--json` over
//! completed, compensated, confirmed and cancelled sagas.

use super::*;

#[tokio::test]
async fn list_show_retry_and_abort_on_a_real_mesh() {
    let up = Up::start(&[], &[]).await;
    let url = format!("http://{}", up.addr(Svc::Orchestrator));
    let u = url.as_str();
    let none: &[(&str, &Path)] = &[];

    // Sagas: alice's checkout and payment, bob's checkout and cancel (all
    // COMPLETED), carol's checkout out of stock (COMPENSATED).
    put_product(up.addr(Svc::Inventory), "MUG", 5).await;
    let channel = endpoint(u, None).connect().await.expect("connect");
    let mut checkout = CheckoutServiceClient::new(channel);
    let a = checkout
        .place_order(authed(place("a-1", "alice", "MUG", 1, 0), None))
        .await
        .expect("alice's order")
        .into_inner();
    let a_paid = checkout
        .confirm_payment(authed(
            orch::ConfirmPaymentRequest {
                order_id: a.order_id.clone(),
                payment_ref: "PAY-1".into(),
            },
            None,
        ))
        .await
        .expect("alice pays")
        .into_inner();
    let b = checkout
        .place_order(authed(place("b-1", "bob", "MUG", 1, 0), None))
        .await
        .expect("bob's order")
        .into_inner();
    let b_cancel = checkout
        .cancel_order(authed(
            orch::CancelOrderRequest {
                order_id: b.order_id.clone(),
                reason: "changed my mind".into(),
            },
            None,
        ))
        .await
        .expect("bob cancels")
        .into_inner();
    let rejected = checkout
        .place_order(authed(place("c-1", "carol", "MUG", 50, 0), None))
        .await
        .expect_err("carol's order is out of stock");
    let c = metadata_of(&rejected, "sagaId").expect("the rejection names its saga");
    let completed = [&a.saga_id, &a_paid.saga_id, &b.saga_id, &b_cancel.saga_id];

    // Pointed at a participant's port: it says so, and where to point.
    let inventory = format!("http://{}", up.addr(Svc::Inventory));
    sagas(
        &[("MICROSHOP_ORCHESTRATOR_URL", Path::new(&inventory))],
        &["list"],
    )
    .exits(1)
    .says(&[
        "does not serve microshop.orchestrator.v1.SagaAdminService",
        "MICROSHOP_ORCHESTRATOR_URL",
    ]);

    // Pointed at the metrics port (HTTP/1): it says where to point, not
    // "UNKNOWN: transport error".
    // (The connection fails the h2 handshake, or ends closed, as a broken
    // pipe or before it was ready, by timing: every one says where to
    // point; the variants are the unit test of `sagas::client`.)
    let metrics = format!("http://{}", up.metrics);
    let run = sagas(
        &[("MICROSHOP_ORCHESTRATOR_URL", Path::new(&metrics))],
        &["list"],
    );
    run.exits(1)
        .says(&["point --orchestrator (MICROSHOP_ORCHESTRATOR_URL)"]);
    assert!(!run.stderr.contains("transport error"), "{run:#?}");

    // list: the table, every saga, aligned, carol's failing step shown.
    let run = sagas(&[("MICROSHOP_ORCHESTRATOR_URL", Path::new(u))], &["list"]);
    run.exits(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "a header and 5 sagas: {run:#?}");
    for h in [
        "ID",
        "TYPE",
        "STATE",
        "CUSTOMER",
        "ORDER",
        "AGE",
        "FAILING STEP",
    ] {
        assert!(lines[0].contains(h), "{h} in {}", lines[0]);
    }
    let state_col = lines[0].find("STATE").expect("a STATE column");
    for line in &lines[1..] {
        let state = &line[state_col..];
        assert!(
            state.starts_with("COMPLETED ") || state.starts_with("COMPENSATED "),
            "STATE aligned: {run:#?}"
        );
    }
    let carol = lines
        .iter()
        .find(|l| l.starts_with(c.as_str()))
        .expect("carol's row");
    assert!(
        carol.contains("COMPENSATED")
            && carol.contains("carol")
            && carol.contains("reserve-stock FAILED"),
        "{carol}"
    );
    let placed = lines
        .iter()
        .find(|l| l.starts_with(a.saga_id.as_str()))
        .expect("alice's row");
    assert!(
        placed.contains("place-order") && placed.contains(&a.order_id),
        "{placed}"
    );

    // list --json: proto3 JSON, every saga, no further page.
    let doc = sagas(none, &["list", "--orchestrator", u, "--json"])
        .exits(0)
        .json();
    assert_eq!(doc["nextPageToken"], "", "{doc:#}");
    let all = ids(&doc, "sagas", "sagaId");
    assert_eq!(all.len(), 5, "{doc:#}");
    for s in doc["sagas"].as_array().expect("sagas") {
        assert!(
            s["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("SAGA_TYPE_")),
            "{s:#}"
        );
        assert!(
            s["state"]
                .as_str()
                .is_some_and(|t| t.starts_with("SAGA_STATE_")),
            "{s:#}"
        );
        assert!(
            s["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{s:#}"
        );
        assert!(s["steps"][0]["action"]["startedAt"].is_string(), "{s:#}");
        assert!(
            s["history"].as_array().is_some_and(|h| !h.is_empty()),
            "{s:#}"
        );
        assert!(
            s.get("saga_id").is_none() && s["customerId"].is_string(),
            "{s:#}"
        );
    }

    // Filters.
    let only = |args: &[&str]| {
        let mut all = vec!["list", "--orchestrator", u, "--json"];
        all.extend_from_slice(args);
        let mut got = ids(&sagas(none, &all).exits(0).json(), "sagas", "sagaId");
        got.sort();
        got
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<_>>()
    };
    assert_eq!(only(&["--state", "compensated"]), vec![c.clone()]);
    assert_eq!(only(&["--state", "completed"]), sorted(completed.to_vec()));
    assert_eq!(
        only(&["--type", "confirm-payment"]),
        vec![a_paid.saga_id.clone()]
    );
    assert_eq!(
        only(&["--type", "cancel-order"]),
        vec![b_cancel.saga_id.clone()]
    );
    assert_eq!(
        only(&["--order", &a.order_id]),
        sorted(vec![&a.saga_id, &a_paid.saga_id])
    );
    assert_eq!(
        only(&["--customer", "bob"]),
        sorted(vec![&b.saga_id, &b_cancel.saga_id])
    );
    assert_eq!(
        only(&[
            "--customer",
            "alice",
            "--type",
            "place-order",
            "--state",
            "completed"
        ]),
        vec![a.saga_id.clone()]
    );
    assert!(only(&["--older-than", "1h"]).is_empty());
    assert_eq!(only(&["--older-than", "0s"]).len(), 5);
    sagas(
        none,
        &[
            "list",
            "--orchestrator",
            u,
            "--older-than",
            "2h",
            "--state",
            "failed",
        ],
    )
    .exits(0)
    .says(&["No saga matches (state=failed older-than=7200s)"]);

    // Paging: --limit, then --page-token for the rest, newest first.
    let first = sagas(
        none,
        &["list", "--orchestrator", u, "--limit", "2", "--json"],
    )
    .exits(0)
    .json();
    let token = first["nextPageToken"].as_str().expect("a token").to_owned();
    assert!(!token.is_empty(), "{first:#}");
    let rest = sagas(
        none,
        &[
            "list",
            "--orchestrator",
            u,
            "--page-token",
            &token,
            "--json",
        ],
    )
    .exits(0)
    .json();
    let mut pages = ids(&first, "sagas", "sagaId");
    assert_eq!(pages.len(), 2);
    pages.extend(ids(&rest, "sagas", "sagaId"));
    assert_eq!(pages, all, "two pages make the whole list, in order");

    // show: the timeline, and {"saga": {...}}.
    sagas(none, &["show", &c, "--orchestrator", u])
        .exits(0)
        .says(&[
            "State     COMPENSATED",
            "Trace     ",
            "OUT_OF_STOCK",
            "Steps",
            "reserve-stock  FAILED",
            "undo    release-stock  SUCCEEDED",
            "History",
            "COMPENSATED",
        ]);
    let shown = sagas(none, &["show", &c, "--orchestrator", u, "--json"])
        .exits(0)
        .json();
    let saga = &shown["saga"];
    assert_eq!(saga["sagaId"], c.as_str());
    assert_eq!(saga["state"], "SAGA_STATE_COMPENSATED");
    assert_eq!(saga["customerId"], "carol");
    assert_eq!(saga["error"]["reason"], "OUT_OF_STOCK");
    let reserve = saga["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "reserve-stock"))
        .expect("reserve-stock");
    assert_eq!(
        reserve["action"]["status"], "STEP_STATUS_FAILED",
        "{saga:#}"
    );
    assert_eq!(
        reserve["compensation"]["status"], "STEP_STATUS_SUCCEEDED",
        "{saga:#}"
    );
    assert!(reserve["action"]["attempts"].is_u64(), "{saga:#}");
    let history_len = |id: &str| {
        sagas(none, &["show", id, "--orchestrator", u, "--json"])
            .exits(0)
            .json()["saga"]["history"]
            .as_array()
            .map_or(0, Vec::len)
    };
    sagas(none, &["show", "no-such-saga", "--orchestrator", u])
        .exits(1)
        .says(&["no saga \"no-such-saga\"", "microshop sagas list"]);

    // retry of ended sagas: a reported no-op, exit 0, nothing changed.
    let before = history_len(&a.saga_id);
    sagas(none, &["retry", &a.saga_id, "--orchestrator", u])
        .exits(0)
        .says(&["no-op", "COMPLETED", "1 no-op"]);
    let doc = sagas(
        none,
        &["retry", &a.saga_id, &c, "--orchestrator", u, "--json"],
    )
    .exits(0)
    .json();
    for r in doc["results"].as_array().expect("results") {
        assert_eq!(r["ok"], true, "{doc:#}");
        assert_eq!(r["outcome"], "no-op", "{doc:#}");
        assert!(r["error"].is_null() && r["note"].is_string(), "{doc:#}");
    }
    assert_eq!(doc["results"][0]["state"], "SAGA_STATE_COMPLETED");
    assert_eq!(doc["results"][1]["state"], "SAGA_STATE_COMPENSATED");
    assert_eq!(history_len(&a.saga_id), before, "a no-op changes nothing");
    // An unknown id among them fails the run (exit 1), reported per saga.
    let run = sagas(
        none,
        &["retry", &a.saga_id, "nope", "--orchestrator", u, "--json"],
    );
    let doc = run.exits(1).json();
    assert_eq!(doc["results"][0]["ok"], true);
    assert_eq!(doc["results"][1]["sagaId"], "nope");
    assert_eq!(doc["results"][1]["ok"], false);
    assert!(
        doc["results"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no saga")),
        "{doc:#}"
    );

    // Bulk retry: refused without a terminal or --yes (exit 2, listing
    // what it would touch), a no-op per saga with --yes, --limit honoured.
    let run = sagas(
        none,
        &["retry", "--state", "completed", "--orchestrator", u],
    );
    run.exits(2).says(&["not a terminal", "--yes", "--dry-run"]);
    for id in completed {
        assert!(run.stderr.contains(id.as_str()), "{id} listed: {run:#?}");
    }
    let doc = sagas(
        none,
        &[
            "retry",
            "--state",
            "completed",
            "--yes",
            "--orchestrator",
            u,
            "--json",
        ],
    )
    .exits(0)
    .json();
    let mut touched = ids(&doc, "results", "sagaId");
    touched.sort();
    assert_eq!(touched, sorted(completed.to_vec()));
    assert!(
        doc["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["outcome"] == "no-op")
    );
    let doc = sagas(
        none,
        &[
            "retry",
            "--state",
            "completed",
            "--type",
            "place-order",
            "--limit",
            "1",
            "--yes",
            "--json",
            "--orchestrator",
            u,
        ],
    )
    .exits(0)
    .json();
    assert_eq!(
        ids(&doc, "results", "sagaId"),
        vec![b.saga_id.clone()],
        "the newest one"
    );

    // abort of an ended saga is refused: exit 1, single, bulk and dry run.
    let before = history_len(&c);
    sagas(
        none,
        &["abort", &c, "--reason", "test", "--orchestrator", u],
    )
    .exits(1)
    .says(&["failed", "AbortSaga applies to FAILED and unfinished sagas"]);
    let doc = sagas(
        none,
        &[
            "abort",
            "--state",
            "compensated",
            "--reason",
            "test",
            "--dry-run",
            "--json",
            "--orchestrator",
            u,
        ],
    )
    .exits(1)
    .json();
    assert_eq!(doc["results"][0]["outcome"], "would-fail", "{doc:#}");
    assert_eq!(doc["results"][0]["ok"], false, "{doc:#}");
    let doc = sagas(
        none,
        &[
            "abort",
            "--state",
            "compensated",
            "--reason",
            "test",
            "--yes",
            "--json",
            "--orchestrator",
            u,
        ],
    )
    .exits(1)
    .json();
    assert_eq!(ids(&doc, "results", "sagaId"), vec![c.clone()]);
    assert_eq!(
        doc["results"][0]["state"], "SAGA_STATE_COMPENSATED",
        "{doc:#}"
    );
    assert_eq!(history_len(&c), before, "a refused abort changes nothing");

    // Nothing matches: said, exit 0 (no confirmation needed for nothing).
    sagas(none, &["retry", "--state", "failed", "--orchestrator", u])
        .exits(0)
        .says(&["No saga matches (state=failed): nothing to retry."]);
    let run = sagas(
        none,
        &[
            "abort",
            "--state",
            "running",
            "--reason",
            "x",
            "--json",
            "--orchestrator",
            u,
        ],
    );
    assert_eq!(
        run.exits(0).json()["results"],
        serde_json::json!([]),
        "{run:#?}"
    );
    assert!(run.stderr.contains("No saga matches"), "{run:#?}");
}
