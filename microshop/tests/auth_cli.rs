//! `microshop serve` refuses to start without authentication settings
//! unless told `--insecure-no-auth`, and names what is missing.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_microshop");

/// Runs `microshop serve inventory` on a free port with `args`, with no
/// `MICROSHOP_*` variable from the environment, and a short-lived process.
fn serve(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("inventory")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir)
        .args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MICROSHOP_") {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("the binary runs")
}

#[test]
fn serve_refuses_to_start_without_authentication() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = serve(dir.path(), &[]);
    assert!(!out.status.success(), "serve started without auth");
    let stderr = String::from_utf8_lossy(&out.stderr);
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
    let out = serve(
        dir.path(),
        &["--auth-hs256-secret-file", secret.to_str().expect("utf-8")],
    );
    assert!(!out.status.success(), "serve started without an issuer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MICROSHOP_AUTH_ISSUER"), "{stderr}");
}
