//! Logs without trace export: JSON log lines share a trace id across
//! services.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_share_a_trace_id_across_services_without_export() {
    let cluster = start(None, None).await;
    seed(&cluster, "LOGS-1", 5, "erin").await;
    let placed = checkout(&cluster)
        .place_order(with_deadline(order("logs-1", "erin", "LOGS-1", 1, 100)))
        .await
        .expect("PlaceOrder")
        .into_inner();
    let saga_id = placed.saga_id.as_str();
    let is_served = |v: &serde_json::Value| v["message"] == "served" && v["saga_id"] == saga_id;

    // The participants' request lines of this saga carry one trace id, a
    // well-formed one, although nothing is exported...
    let mut traces = std::collections::BTreeSet::new();
    for svc in [Svc::Inventory, Svc::Loyalty, Svc::Order] {
        let lines = json_lines(&cluster, svc, is_served).await;
        for v in lines.iter().filter(|v| is_served(v)) {
            let trace = v["trace_id"].as_str().unwrap_or_default().to_owned();
            assert!(
                trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
                "{svc:?}: no trace id: {v}"
            );
            traces.insert(trace);
        }
    }
    assert_eq!(traces.len(), 1, "one trace id for one order: {traces:?}");
    let trace = traces.into_iter().next().expect("a trace id");
    // ...and it is the orchestrator's for the saga (the checkout call and
    // the saga's steps).
    json_lines(&cluster, Svc::Orchestrator, |v| {
        v["saga_id"] == saga_id && v["trace_id"] == trace.as_str()
    })
    .await;
}
