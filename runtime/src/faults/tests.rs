//! Unit tests of the parent module.

use super::*;

#[test]
fn spec_round_trips_and_rejects_nonsense() {
    let c: FaultConfig =
        "seed=7, unavailable=0.1,deadline=0.1,delay=0.1,delay_ms=5,duplicate=0.1,drop=0.1,late=0.05,late_ms=900,only=CommitStock|MarkPaid"
            .parse()
            .expect("a valid spec");
    assert_eq!(c.seed, 7);
    assert_eq!(c.late_delay, Duration::from_millis(900));
    let again: FaultConfig = c.to_string().parse().expect("display parses back");
    assert_eq!(again.to_string(), c.to_string());
    for bad in [
        "unavailable=2",
        "drop=0.6,duplicate=0.6",
        "nope=1",
        "seed",
        "seed=-1",
        "only=PutProduct",
    ] {
        assert!(
            bad.parse::<FaultConfig>().is_err(),
            "{bad} should not parse"
        );
    }
}

#[test]
fn decisions_follow_the_seed_and_the_probabilities() {
    let c: FaultConfig = "seed=42,unavailable=0.1,drop=0.1,late=0.1"
        .parse()
        .expect("a valid spec");
    let run = |action| (0..10_000).map(|n| c.decide(n, action)).collect::<Vec<_>>();
    assert_eq!(run(true), run(true), "same seed, same decisions");
    let count = |kind| {
        run(true)
            .iter()
            .filter(|d| d.map(|d| d.0) == Some(kind))
            .count()
    };
    for kind in [FaultKind::Unavailable, FaultKind::Drop, FaultKind::Late] {
        let n = count(kind);
        assert!((800..1200).contains(&n), "{kind:?}: {n} of 10,000");
    }
    assert!(
        run(false)
            .iter()
            .all(|d| d.map(|d| d.0) != Some(FaultKind::Late)),
        "only saga actions are held back"
    );
}

#[tokio::test]
async fn a_closed_gate_holds_requests_until_opened() {
    let stats = Arc::new(FaultStats::default());
    // Open: no wait.
    tokio::time::timeout(Duration::from_secs(5), stats.pass_gate())
        .await
        .expect("an open gate lets through");
    stats.close_gate();
    let waiting = tokio::spawn({
        let stats = Arc::clone(&stats);
        async move { stats.pass_gate().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.at_gate() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never at the gate");
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "held while closed");
    // A request given up at the gate is not counted any more.
    let dropped = tokio::spawn({
        let stats = Arc::clone(&stats);
        async move { stats.pass_gate().await }
    });
    while stats.at_gate() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never at the gate");
        tokio::task::yield_now().await;
    }
    dropped.abort();
    let _ = dropped.await;
    assert_eq!(stats.at_gate(), 1);
    stats.open_gate();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("opening lets it through")
        .expect("no panic");
    assert_eq!(stats.at_gate(), 0);
}

#[test]
fn saga_id_is_read_from_a_grpc_frame() {
    use prost::Message;
    let msg = SagaIdOnly {
        saga_id: "s-1".into(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&msg);
    assert_eq!(saga_id_of(&Bytes::from(frame)).as_deref(), Some("s-1"));
    assert_eq!(saga_id_of(&Bytes::from_static(b"\x01\0\0\0\0")), None);
}
