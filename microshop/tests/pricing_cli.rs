//! The pricing settings refuse to start the real binary when they would
//! misprice orders: `serve order`, `up` and `demo` exit non-zero, before
//! serving anything, with a message naming the setting, whether it came
//! from a flag or a `MICROSHOP_*` variable. So do numbers outside their
//! bounds (a zero timeout, a huge one), which would start a mesh that
//! refuses every call. The binary runs under the shared process harness
//! ([`cluster::process`]).

mod cluster;

use std::time::Duration;

use cluster::process::{Exited, Spawn};

/// How long a refusal may take; a binary still running then has started
/// despite the bad setting (it is killed and the test fails).
const REFUSE_WITHIN: Duration = Duration::from_secs(30);

/// Runs `microshop ARGS` with `env` (and no other `MICROSHOP_*` variable)
/// and returns how it exited, or panics if it keeps running.
fn run(args: &[&str], env: &[(&str, &str)]) -> Exited {
    let dir = tempfile::tempdir().expect("a temporary directory");
    Spawn::microshop("microshop")
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .envs(env.iter().copied())
        .spawn()
        .exit_within(REFUSE_WITHIN)
        .unwrap_or_else(|stderr| {
            panic!(
                "microshop {args:?} {env:?} is still running after {REFUSE_WITHIN:?}: it \
                 started despite the setting; stderr: {stderr}"
            )
        })
}

#[track_caller]
fn assert_refused(out: &Exited, names: &[&str]) {
    let stderr = &out.stderr;
    assert!(!out.status.success(), "exited 0: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "{name:?} not named in: {stderr}");
    }
}

/// `serve order` on a free port.
const SERVE_ORDER: &[&str] = &[
    "serve",
    "order",
    "--insecure-no-auth",
    "--listen",
    "127.0.0.1:0",
];

/// `up` on free ports, metrics off its default port.
const UP: &[&str] = &[
    "up",
    "--orchestrator-listen",
    "127.0.0.1:0",
    "--inventory-listen",
    "127.0.0.1:0",
    "--loyalty-listen",
    "127.0.0.1:0",
    "--order-listen",
    "127.0.0.1:0",
    "--metrics-addr",
    "127.0.0.1:0",
];

fn with(base: &[&'static str], more: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(more).copied().collect()
}

#[test]
fn serve_order_refuses_bad_pricing_flags() {
    for (flags, named) in [
        (&["--tax-rate-bp", "10001"][..], "--tax-rate-bp"),
        (&["--tax-rate-bp", "-1"], "must not be negative"),
        (&["--shipping-price", "-599"], "--shipping-price"),
        (&["--free-shipping-from", "-1"], "--free-shipping-from"),
        (&["--point-value", "0"], "--point-value"),
        (&["--earn-amount-per-point", "0"], "--earn-amount-per-point"),
        (&["--currency", "XYZ"], "--currency"),
    ] {
        let out = run(&with(SERVE_ORDER, flags), &[]);
        assert_refused(&out, &[named]);
    }
}

#[test]
fn serve_order_refuses_bad_pricing_variables() {
    for (var, value) in [
        ("MICROSHOP_TAX_RATE_BP", "20000"),
        ("MICROSHOP_SHIPPING_PRICE", "-1"),
        ("MICROSHOP_FREE_SHIPPING_FROM", "-2000000"),
        ("MICROSHOP_POINT_VALUE", "0"),
        ("MICROSHOP_CURRENCY", "dollars"),
    ] {
        let out = run(SERVE_ORDER, &[(var, value)]);
        assert_refused(&out, &[var]);
    }
}

#[test]
fn up_refuses_bad_pricing_settings_naming_each() {
    let out = run(
        &with(UP, &["--tax-rate-bp", "12000", "--currency", "usdollar"]),
        &[("MICROSHOP_POINT_VALUE", "0")],
    );
    assert_refused(
        &out,
        &["--tax-rate-bp", "--currency", "MICROSHOP_POINT_VALUE"],
    );
}

#[test]
fn demo_refuses_an_unknown_currency() {
    let out = run(&["demo", "--currency", "ABC"], &[]);
    assert_refused(
        &out,
        &["--currency", "\"ABC\" is not an ISO 4217 currency code"],
    );
}

#[test]
fn serve_loyalty_refuses_a_zero_earn_rate() {
    let out = run(
        &[
            "serve",
            "loyalty",
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
        ],
        &[("MICROSHOP_EARN_AMOUNT_PER_POINT", "0")],
    );
    assert_refused(&out, &["--earn-amount-per-point"]);
}

#[test]
fn up_refuses_numbers_outside_their_bounds() {
    for (flag, value) in [
        ("--call-timeout-ms", "0"),
        // tonic panicked on a call timeout this large.
        ("--call-timeout-ms", "18446744073709551615"),
        ("--request-timeout-ms", "0"),
        ("--max-concurrent-requests", "0"),
        ("--max-message-bytes", "0"),
        ("--payment-ttl-secs", "0"),
        ("--step-attempts", "0"),
    ] {
        let out = run(&with(UP, &[flag, value]), &[]);
        assert_refused(&out, &[flag, "is not in"]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", out.stderr);
        assert!(
            !out.stderr.contains("environment variable"),
            "{}",
            out.stderr
        );
    }
    // From a variable, the message names it: the operator never typed the
    // flag clap names.
    let out = run(UP, &[("MICROSHOP_CALL_TIMEOUT_MS", "0")]);
    assert_refused(
        &out,
        &[
            "--call-timeout-ms",
            "is not in",
            "came from the environment variable MICROSHOP_CALL_TIMEOUT_MS",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    // A largest retry delay below the first was raised to it silently.
    let out = run(
        &with(UP, &["--backoff-min-ms", "500", "--backoff-max-ms", "100"]),
        &[],
    );
    assert_refused(&out, &["--backoff-max-ms", "below", "--backoff-min-ms"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    // The flag wins over the variable; a bad flag is the flag's fault.
    let out = run(
        &with(UP, &["--call-timeout-ms", "0"]),
        &[("MICROSHOP_CALL_TIMEOUT_MS", "0")],
    );
    assert_refused(&out, &["--call-timeout-ms", "is not in"]);
    assert!(
        !out.stderr.contains("environment variable"),
        "{}",
        out.stderr
    );
}

/// An unusable key or connection string stops `up` before it binds a
/// port or creates a store (it used to log "mesh is up", create all four
/// stores, then exit).
#[test]
fn up_refuses_an_unusable_key_or_connection_string_before_creating_stores() {
    for (flag, value, says) in [
        (
            "--auth-hs256-secret-file",
            "/nonexistent/secret",
            "cannot read the HS256 secret",
        ),
        ("--mongodb-uri", "notaurl", "must start with mongodb://"),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let out = Spawn::microshop("microshop")
            .args(with(UP, &[flag, value]))
            .arg("--data-dir")
            .arg(&data)
            .spawn()
            .exit_within(REFUSE_WITHIN)
            .unwrap_or_else(|stderr| panic!("{flag} {value}: still running; stderr: {stderr}"));
        assert_refused(&out, &[says]);
        assert!(!out.stderr.contains("mesh is up"), "{}", out.stderr);
        assert!(
            !data.exists(),
            "{flag} {value}: the data directory was created"
        );
    }
}

#[test]
fn serve_orchestrator_refuses_a_participant_url_it_cannot_dial() {
    for (url, says) in [
        ("notaurl", "must start with http:// or https://"),
        (
            "ftp://127.0.0.1:50052",
            "must start with http:// or https://",
        ),
        ("http://127.0.0.1:99999", "is not 1 to 65535"),
        ("", "not a URL"),
    ] {
        let out = run(
            &[
                "serve",
                "orchestrator",
                "--insecure-no-auth",
                "--listen",
                "127.0.0.1:0",
                "--inventory-url",
                url,
            ],
            &[],
        );
        assert_refused(&out, &["--inventory-url", says]);
    }
}

#[test]
fn a_listen_address_that_is_not_ip_and_port_is_refused_with_an_example() {
    let out = run(
        &[
            "serve",
            "inventory",
            "--insecure-no-auth",
            "--listen",
            "localhost:50052",
        ],
        &[],
    );
    assert_refused(&out, &["--listen", "expected IP:PORT", "0.0.0.0:50051"]);
}
