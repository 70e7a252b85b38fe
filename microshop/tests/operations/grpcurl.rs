//! `ListSagas` by `orderId` through grpcurl (reflection, plaintext).

use super::*;

/// The grpcurl the test script installs (`GRPCURL` overrides it); `None`
/// (the test is skipped with a note) when it is missing outside CI.
fn grpcurl() -> Option<PathBuf> {
    let path = std::env::var_os("GRPCURL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/grpcurl"),
        PathBuf::from,
    );
    if path.exists() {
        return Some(path);
    }
    assert!(
        !microshop_runtime::testing::is_ci(std::env::var("CI").ok().as_deref()),
        "{} is missing and CI is set: scripts/test.sh installs it",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (scripts/test.sh installs it)",
        path.display()
    );
    None
}

/// `grpcurl -plaintext -d BODY ADDR microshop.orchestrator.v1.SagaAdminService/ListSagas`,
/// by reflection; its JSON answer.
fn list_sagas_grpcurl(grpcurl: &PathBuf, cluster: &Cluster, body: &str) -> serde_json::Value {
    let mut process = Spawn::program("grpcurl", grpcurl)
        .args(["-plaintext", "-d", body])
        .arg(cluster.addr(Svc::Orchestrator).to_string())
        .arg("microshop.orchestrator.v1.SagaAdminService/ListSagas")
        .spawn();
    let out = process
        .exit_within(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("grpcurl still runs: {e}"));
    assert!(out.status.success(), "grpcurl {body}: {out:#?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sagas_by_order_id_through_grpcurl() {
    let Some(grpcurl) = grpcurl() else { return };
    let cluster = Cluster::builder().orchestrator(OPS_ENGINE).start().await;
    let c = cluster.clients();
    let mut u = Universe::default();
    put_product(&c, &mut u, "BIKE", 10).await;
    grant(&c, &mut u, "una").await;
    let placed = place_ok(&c, place("una-1", "una", "BIKE", "", REDEEM)).await;
    let paid = confirm(&c, &placed.order_id, "PAY-1")
        .await
        .expect("the payment");
    let cancelled = cancel(&c, &placed.order_id).await;
    // Another order of the same customer, which must not be listed.
    place_ok(&c, place("una-2", "una", "BIKE", "", 0)).await;

    let order = &placed.order_id;
    let doc = list_sagas_grpcurl(&grpcurl, &cluster, &format!(r#"{{"orderId":"{order}"}}"#));
    let mut listed: Vec<(String, String)> = doc["sagas"]
        .as_array()
        .unwrap_or_else(|| panic!("{doc:#}"))
        .iter()
        .map(|s| {
            assert_eq!(s["orderId"], order.as_str(), "{s:#}");
            (
                s["type"].as_str().expect("a type").to_owned(),
                s["sagaId"].as_str().expect("an id").to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            (
                "SAGA_TYPE_CANCEL_ORDER".to_owned(),
                cancelled.saga_id.clone()
            ),
            ("SAGA_TYPE_CONFIRM_PAYMENT".to_owned(), paid.saga_id.clone()),
            ("SAGA_TYPE_PLACE_ORDER".to_owned(), placed.saga_id.clone()),
        ],
        "{doc:#}"
    );
    // Combined with the other filters.
    let doc = list_sagas_grpcurl(
        &grpcurl,
        &cluster,
        &format!(
            r#"{{"orderId":"{order}","type":"SAGA_TYPE_CANCEL_ORDER","state":"SAGA_STATE_COMPLETED"}}"#
        ),
    );
    assert_eq!(
        ids(&doc, "sagas", "sagaId"),
        vec![cancelled.saga_id],
        "{doc:#}"
    );
    assert_invariants(&c, &u, "ListSagas by order").await;
}
