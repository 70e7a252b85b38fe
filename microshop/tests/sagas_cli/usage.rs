//! Without a server: usage errors exit 2, an unreachable orchestrator and
//! an unreadable token file exit 1 saying what to do.

use super::*;

#[test]
fn usage_errors_exit_2_and_a_dead_orchestrator_exits_1() {
    let none: &[(&str, &Path)] = &[];
    for (args, says) in [
        (&["list", "--state", "stuck"][..], "running"),
        (&["list", "--type", "refund"], "place-order"),
        (&["list", "--older-than", "10"], "has no unit"),
        (&["list", "--limit", "0"], "1 or more"),
        (&["retry"], "SAGA_ID"),
        (&["retry", "s-1", "--state", "failed"], "--state"),
        (&["retry", "--customer", "alice"], "--state"),
        (&["abort", "s-1"], "--reason"),
        (&["abort", "s-1", "--reason", "  "], "--reason must say why"),
        (&["show"], "SAGA_ID"),
        (&["frobnicate"], "frobnicate"),
        (
            &["list", "--orchestrator", "https://127.0.0.1:1"],
            "--ca-file",
        ),
        (
            &[
                "list",
                "--orchestrator",
                "http://127.0.0.1:1",
                "--ca-file",
                "ca.pem",
            ],
            "https://",
        ),
        (&["list", "--orchestrator", "ftp://127.0.0.1:1"], "http://"),
    ] {
        sagas(none, args).exits(2).says(&[says]);
    }

    let dead = format!("http://{}", free_addr());
    let run = sagas(none, &["list", "--orchestrator", &dead]);
    run.exits(1).says(&[
        &format!("cannot reach the orchestrator at {dead}"),
        "MICROSHOP_ORCHESTRATOR_URL",
    ]);
    assert!(run.stdout.is_empty(), "{run:#?}");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("no-such-token");
    sagas(
        &[("MICROSHOP_TOKEN_FILE", &missing)],
        &["show", "s-1", "--orchestrator", &dead],
    )
    .exits(1)
    .says(&["cannot use the token file", "no-such-token"]);
    // A CA file without a certificate used to fail only at the handshake,
    // as an unknown issuer.
    let not_pem = dir.path().join("ca.txt");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let tls_dead = format!("https://{}", free_addr());
    let not_pem = not_pem.to_str().expect("utf-8");
    sagas(
        none,
        &["list", "--orchestrator", &tls_dead, "--ca-file", not_pem],
    )
    .exits(1)
    .says(&["cannot use the CA file", "holds no PEM certificate"]);
}
