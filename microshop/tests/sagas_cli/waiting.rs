//! Against a lone orchestrator with TLS and JWT on whose loyalty URL
//! nothing listens: waiting sagas retried and aborted, single and bulk,
//! with an admin token.

use super::*;

#[tokio::test]
async fn waiting_sagas_are_retried_and_aborted_over_tls_with_an_admin_token() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tls = make_tls(dir.path(), "mesh");
    let other = make_tls(dir.path(), "other");
    let auth = make_auth(dir.path());
    let up = Up::start(&[], &[]).await;
    put_product(up.addr(Svc::Inventory), "BOOK", 10).await;
    let loyalty = endpoint(&format!("http://{}", up.addr(Svc::Loyalty)), None)
        .connect()
        .await
        .expect("connect to loyalty-svc");
    LoyaltyServiceClient::new(loyalty)
        .grant_points(loy::GrantPointsRequest {
            customer_id: "dave".into(),
            points: 500,
        })
        .await
        .expect("GrantPoints");
    let lone = LoneOrchestrator::start(dir.path(), &up, &auth, &tls).await;
    let u = lone.url.as_str();

    // Three checkouts redeeming points: each waits for loyalty-svc.
    let channel = endpoint(u, Some(&tls.ca_pem))
        .connect()
        .await
        .expect("connect over TLS");
    let mut checkout = CheckoutServiceClient::new(channel);
    let mut waiting = Vec::new();
    for i in 0..3 {
        let status = checkout
            .place_order(authed(
                place(&format!("w-{i}"), "dave", "BOOK", 1, 10),
                Some(&auth.admin_token),
            ))
            .await
            .expect_err("the checkout waits for loyalty-svc");
        waiting.push(
            metadata_of(&status, "sagaId").unwrap_or_else(|| panic!("a saga id: {status:?}")),
        );
    }
    assert_eq!(
        reserved(up.addr(Svc::Inventory), "BOOK").await,
        3,
        "each waiting checkout holds its stock"
    );
    waiting.reverse(); // newest first, as listed
    let (w1, w2, w3) = (&waiting[0], &waiting[1], &waiting[2]);

    // Credentials: none, garbage, a customer's, another CA.
    let ca = tls.ca.as_path();
    let token = auth.admin_file.as_path();
    sagas::<&str>(
        &[],
        &[
            "list",
            "--orchestrator",
            u,
            "--ca-file",
            ca.to_str().expect("utf-8"),
        ],
    )
    .exits(1)
    .says(&["UNAUTHENTICATED", "authentication is on", "--token-file"]);
    for (file, says) in [
        (&auth.garbage_file, "invalid or expired"),
        (&auth.customer_file, "PERMISSION_DENIED"),
    ] {
        sagas(
            &[("MICROSHOP_TOKEN_FILE", file)],
            &[
                "list",
                "--orchestrator",
                u,
                "--ca-file",
                ca.to_str().expect("utf-8"),
            ],
        )
        .exits(1)
        .says(&[says, "admin"]);
    }
    sagas(
        &[("MICROSHOP_TOKEN_FILE", token)],
        &[
            "list",
            "--orchestrator",
            u,
            "--ca-file",
            other.ca.to_str().expect("utf-8"),
        ],
    )
    .exits(1)
    .says(&["cannot reach the orchestrator", "certificate", "--ca-file"]);

    // From here: the admin token (env) and the mesh CA (flag).
    let env: &[(&str, &Path)] = &[("MICROSHOP_TOKEN_FILE", token)];
    let ca_flag = ca.to_str().expect("utf-8");
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--orchestrator", u, "--ca-file", ca_flag]);
        sagas(env, &all)
    };
    let history =
        |id: &str| cli(&["show", id, "--json"]).exits(0).json()["saga"]["history"].clone();

    // list and show say what they wait for.
    let run = cli(&["list", "--state", "running"]);
    run.exits(0);
    for id in &waiting {
        let row = run
            .stdout
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .expect("a row per saga");
        assert!(
            row.contains("RUNNING") && row.contains("deduct-points WAITING"),
            "{row}"
        );
    }
    let doc = cli(&["list", "--state", "running", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "sagas", "sagaId"), waiting);
    for s in doc["sagas"].as_array().expect("sagas") {
        assert_eq!(
            s["waitingFor"],
            serde_json::json!(["microshop.loyalty.v1.LoyaltyService"])
        );
        assert!(s["nextAttemptAt"].is_string(), "{s:#}");
    }
    cli(&["show", w1]).exits(0).says(&[
        "State     RUNNING",
        "Waiting   for microshop.loyalty.v1.LoyaltyService",
        "Next try  ",
        "deduct-points  WAITING",
        "automatic",
    ]);

    // Bulk dry run: would retry all three, changes nothing.
    let before = history(w1);
    let doc = cli(&["retry", "--state", "running", "--dry-run", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "results", "sagaId"), waiting);
    assert!(
        doc["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["outcome"] == "would-retry" && r["ok"] == true),
        "{doc:#}"
    );
    assert_eq!(history(w1), before, "--dry-run changes nothing");

    // Single retry: re-driven now (still waiting), in the token's name.
    let doc = cli(&["retry", w1, "--reason", "loyalty is back", "--json"])
        .exits(0)
        .json();
    let r = &doc["results"][0];
    assert_eq!(
        (r["ok"].clone(), r["outcome"].clone()),
        (true.into(), "retried".into()),
        "{doc:#}"
    );
    assert_eq!(r["state"], "SAGA_STATE_RUNNING", "{doc:#}");
    assert!(
        r["note"]
            .as_str()
            .is_some_and(|n| n.contains("still waiting for loyalty")),
        "{doc:#}"
    );
    let after = history(w1);
    assert!(
        after
            .as_array()
            .expect("history")
            .iter()
            .any(|t| t["actor"] == "ops-alice"
                && t["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("loyalty is back"))),
        "the retry is in the history with its actor: {after:#}"
    );

    // Bulk retry with --yes: all three re-driven.
    let doc = cli(&["retry", "--state", "running", "--yes", "--json"])
        .exits(0)
        .json();
    assert_eq!(ids(&doc, "results", "sagaId"), waiting);
    assert!(
        doc["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["outcome"] == "retried"),
        "{doc:#}"
    );

    // Single abort: compensated as far as it can be; its stock is back,
    // its points refund waits for loyalty-svc.
    let run = cli(&["abort", w1, "--reason", "loyalty is gone for good"]);
    run.exits(0).says(&["aborted", "1 aborted"]);
    let saga = cli(&["show", w1, "--json"]).exits(0).json()["saga"].clone();
    assert_eq!(saga["state"], "SAGA_STATE_COMPENSATING", "{saga:#}");
    let release = saga["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "reserve-stock"))
        .map(|s| s["compensation"]["status"].clone());
    assert_eq!(release, Some("STEP_STATUS_SUCCEEDED".into()), "{saga:#}");
    assert_eq!(
        reserved(up.addr(Svc::Inventory), "BOOK").await,
        2,
        "the aborted checkout's stock is back"
    );
    cli(&["list", "--state", "compensating"])
        .exits(0)
        .says(&[w1.as_str(), "refund-points WAITING"]);
    // A compensation waiting for its participant is retryable too.
    let doc = cli(&["retry", w1, "--json"]).exits(0).json();
    assert_eq!(doc["results"][0]["outcome"], "retried", "{doc:#}");
    assert_eq!(
        doc["results"][0]["state"], "SAGA_STATE_COMPENSATING",
        "{doc:#}"
    );

    // Bulk abort: refused without --yes, then the other two.
    let run = cli(&["abort", "--state", "running", "--reason", "outage"]);
    run.exits(2).says(&[w2.as_str(), w3.as_str(), "--yes"]);
    let doc = cli(&[
        "abort", "--state", "running", "--reason", "outage", "--yes", "--json",
    ])
    .exits(0)
    .json();
    assert_eq!(ids(&doc, "results", "sagaId"), vec![w2.clone(), w3.clone()]);
    for r in doc["results"].as_array().expect("results") {
        assert_eq!(r["outcome"], "aborted", "{doc:#}");
        assert_eq!(r["state"], "SAGA_STATE_COMPENSATING", "{doc:#}");
    }
    assert_eq!(
        reserved(up.addr(Svc::Inventory), "BOOK").await,
        0,
        "every aborted checkout's stock is back"
    );
    cli(&["retry", "--state", "running", "--yes"])
        .exits(0)
        .says(&["No saga matches (state=running): nothing to retry."]);
    let history = history(w2);
    assert!(
        history
            .as_array()
            .expect("history")
            .iter()
            .any(|t| t["actor"] == "ops-alice"
                && t["note"].as_str().is_some_and(|n| n.contains("outage"))),
        "{history:#}"
    );
}
