//! `microshop serve` refuses to start without authentication settings
//! unless told `--insecure-no-auth`, and names what is missing. The binary
//! runs under the shared process harness ([`cluster::process`]).

mod cluster;

use std::time::Duration;

use cluster::{
    Svc,
    process::{Exited, free_addr, serve},
};

/// How long a refusal may take; a server still running then has started
/// despite the missing settings.
const REFUSE_WITHIN: Duration = Duration::from_secs(30);

/// Runs `microshop serve inventory` on a free port with `args`, with no
/// `MICROSHOP_*` variable from the environment, until it exits (bounded).
fn serve_inventory(dir: &std::path::Path, args: &[&str]) -> Exited {
    serve(Svc::Inventory, free_addr(), dir)
        .args(args)
        .spawn()
        .exit_within(REFUSE_WITHIN)
        .unwrap_or_else(|stderr| panic!("serve started without its auth settings: {stderr}"))
}

#[test]
fn serve_refuses_to_start_without_authentication() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = serve_inventory(dir.path(), &[]);
    assert!(!out.status.success(), "serve started without auth");
    let stderr = &out.stderr;
    assert!(
        stderr.contains("refusing to serve without authentication")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
}

#[test]
fn serve_names_missing_auth_settings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("write");
    let out = serve_inventory(
        dir.path(),
        &["--auth-hs256-secret-file", secret.to_str().expect("utf-8")],
    );
    assert!(!out.status.success(), "serve started without an issuer");
    let stderr = &out.stderr;
    assert!(stderr.contains("MICROSHOP_AUTH_ISSUER"), "{stderr}");
}

#[test]
fn serve_refuses_contradicting_auth_settings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("write");
    let secret = secret.to_str().expect("utf-8");
    // A key and --insecure-no-auth: which one was meant is not guessed.
    let out = serve_inventory(
        dir.path(),
        &[
            "--auth-hs256-secret-file",
            secret,
            "--auth-issuer",
            "iss",
            "--auth-audience",
            "aud",
            "--insecure-no-auth",
        ],
    );
    assert!(!out.status.success(), "serve started with both");
    assert!(out.stderr.contains("are both set"), "{}", out.stderr);
    // An issuer without a key would leave authentication off unnoticed.
    let out = serve_inventory(dir.path(), &["--auth-issuer", "iss", "--insecure-no-auth"]);
    assert!(
        !out.status.success(),
        "serve started with an issuer and no key"
    );
    assert!(
        out.stderr.contains("no key turns authentication on"),
        "{}",
        out.stderr
    );
}

/// A certificate or key file that is not PEM was reported only once the
/// server started (after its store was created), as "transport error",
/// naming neither the file nor its setting.
#[test]
fn serve_names_a_tls_file_that_is_not_pem_before_creating_its_store() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a PEM file\n").expect("write");
    let bad = bad.to_str().expect("utf-8");
    // A real certificate, so that the key is what is refused.
    let cert = dir.path().join("cert.pem");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("a key");
    let pem = params.self_signed(&key).expect("a certificate").pem();
    std::fs::write(&cert, pem).expect("write");
    let cert = cert.to_str().expect("utf-8");
    let data = dir.path().join("data");
    for (flags, says) in [
        (
            ["--tls-cert-file", bad, "--tls-key-file", bad],
            "(MICROSHOP_TLS_CERT_FILE) holds no PEM certificate",
        ),
        (
            ["--tls-cert-file", cert, "--tls-key-file", bad],
            "(MICROSHOP_TLS_KEY_FILE) holds no PEM private key",
        ),
        (
            ["--tls-ca-file", bad, "--tls-server-name", "x"],
            "(MICROSHOP_TLS_CA_FILE) holds no PEM certificate",
        ),
    ] {
        let out = serve(Svc::Inventory, free_addr(), &data)
            .args(flags)
            .arg("--insecure-no-auth")
            .spawn()
            .exit_within(REFUSE_WITHIN)
            .unwrap_or_else(|stderr| panic!("serve started with {flags:?}: {stderr}"));
        assert!(!out.status.success(), "serve started with {flags:?}");
        assert!(out.stderr.contains(says), "{says:?} not in: {}", out.stderr);
        assert!(out.stderr.contains(bad), "{}", out.stderr);
        assert!(!data.exists(), "{flags:?}: the store was created");
    }
}
