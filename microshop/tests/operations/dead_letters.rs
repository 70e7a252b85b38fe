//! The CLI on dead letters (listed, shown, retried, aborted) and its
//! default `--limit` of 50.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acts_on_dead_letters_and_lists_fifty_by_default() {
    let cluster = Cluster::builder().orchestrator(OPS_ENGINE).start().await;
    let c = cluster.clients();
    let url = cluster.url(Svc::Orchestrator);
    let u_flag = ["--orchestrator", url.as_str()];
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&u_flag);
        sagas(&all)
    };
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 100).await;
    let (dead_order, dead) = dead_letter(&c, "DEAD", "dora").await;
    let d = dead.saga_id.as_str();

    // list and show say what failed and why.
    let run = cli(&["list", "--state", "failed"]);
    let row = run
        .exits(0)
        .stdout
        .lines()
        .find(|l| l.starts_with(d))
        .unwrap_or_else(|| panic!("a row for {d}: {run:#?}"));
    assert!(
        row.contains("confirm-payment")
            && row.contains("FAILED")
            && row.contains("dora")
            && row.contains(&dead_order)
            && row.contains("commit-stock FAILED"),
        "{row}"
    );
    cli(&["show", d]).exits(0).says(&[
        "State     FAILED",
        "cannot be undone",
        "commit-stock",
        "mark-paid",
    ]);
    let doc = cli(&["show", d, "--json"]).exits(0).json();
    assert_eq!(doc["saga"]["state"], "SAGA_STATE_FAILED", "{doc:#}");
    assert_eq!(doc["saga"]["failureReason"], dead.failure_reason.as_str());

    // retry of a dead letter is not a no-op: it is re-driven (and goes
    // FAILED again, its cause being still there), in the history.
    let doc = cli(&["retry", d, "--reason", "stock fixed", "--json"])
        .exits(0)
        .json();
    let r = &doc["results"][0];
    assert_eq!(
        (r["sagaId"].as_str(), r["ok"].as_bool()),
        (Some(d), Some(true)),
        "{doc:#}"
    );
    assert_eq!(r["outcome"], "retried", "{doc:#}");
    let saga = saga_until(&c, d, "the retried dead letter to end", |s| {
        state(s) == orch::SagaState::Failed
            && s.history
                .iter()
                .any(|t| t.actor == "anonymous" && t.note.contains("stock fixed"))
    })
    .await;
    assert!(
        saga.failure_reason.contains("cannot be undone"),
        "{}",
        describe(&saga)
    );

    // Bulk abort of the dead letters: refused without --yes, a dry run
    // changes nothing, then with --yes.
    let bulk = ["abort", "--state", "failed", "--reason", "resolved by hand"];
    cli(&bulk).exits(2).says(&[d, "--yes"]);
    let mut args = bulk.to_vec();
    args.extend(["--dry-run", "--json"]);
    let doc = cli(&args).exits(0).json();
    assert_eq!(
        ids(&doc, "results", "sagaId"),
        vec![d.to_owned()],
        "{doc:#}"
    );
    assert_eq!(doc["results"][0]["outcome"], "would-abort", "{doc:#}");
    let unchanged = get_saga(&c, d).await.expect("GetSaga");
    assert_eq!(
        unchanged.history.len(),
        saga.history.len(),
        "a dry run changes nothing"
    );
    let mut args = bulk.to_vec();
    args.extend(["--yes", "--json"]);
    let doc = cli(&args).exits(0).json();
    assert_eq!(
        ids(&doc, "results", "sagaId"),
        vec![d.to_owned()],
        "{doc:#}"
    );
    assert_eq!(doc["results"][0]["outcome"], "aborted", "{doc:#}");
    let aborted = get_saga(&c, d).await.expect("GetSaga");
    assert!(
        aborted
            .history
            .iter()
            .any(|t| t.actor == "anonymous" && t.note.contains("resolved by hand")),
        "{:#?}",
        aborted.history
    );

    // --limit is 50 by default, for list and for the bulk forms.
    let mut placing = tokio::task::JoinSet::new();
    for i in 0..51 {
        let c = c.clone();
        placing.spawn(async move {
            place_ok(&c, place(&format!("bulk-{i}"), "bulk", "BIKE", "", 0)).await
        });
    }
    while let Some(done) = placing.join_next().await {
        done.expect("a checkout");
    }
    u.customers.insert("bulk".into());
    let doc = cli(&["list", "--state", "completed", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "sagas", "sagaId").len(), 50, "{doc:#}");
    assert!(
        doc["nextPageToken"].as_str().is_some_and(|t| !t.is_empty()),
        "more than a page: {doc:#}"
    );
    let doc = cli(&["retry", "--state", "completed", "--yes", "--json"])
        .exits(0)
        .json();
    let results = doc["results"].as_array().expect("results");
    assert_eq!(results.len(), 50, "{doc:#}");
    assert!(results.iter().all(|r| r["outcome"] == "no-op"), "{doc:#}");
    assert_invariants(&c, &u, "the CLI").await;
}
