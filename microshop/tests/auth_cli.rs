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
