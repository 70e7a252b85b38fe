//! Secrets as files: `microshop serve` takes its MongoDB connection string
//! from the file `MONGODB_URI_FILE` names (how Kubernetes mounts a Secret),
//! and refuses to start when it is given both that and `MONGODB_URI`, or a
//! file it cannot use, naming the settings and never the secret.
//!
//! The MongoDB test runs against the server of `MICROSHOP_TEST_MONGODB_URI`
//! (SecantusDB, started by `scripts/test.sh`); it is skipped without one,
//! except under `CI=true`. The processes run under the shared harness
//! ([`cluster::process`]). Every wait is bounded polling.

mod cluster;

use std::{net::SocketAddr, path::Path, process::ExitStatus, time::Duration};

use cluster::{
    Svc,
    process::{Process, Spawn, free_addr, lazy_channel, serve, start_on_free_port},
};
use microshop_proto::inventory::v1::{
    GetProductRequest, PutProductRequest, inventory_service_client::InventoryServiceClient,
};
use tonic::transport::Channel;

/// How long `serve` may take to answer SERVING (it creates its indexes
/// first) or to exit on a bad setting.
const WITHIN: Duration = Duration::from_secs(60);
/// In every secret this file writes: it must never show up in an error.
const PASSWORD: &str = "hunter2-never-printed";

/// `microshop serve inventory` without authentication, with no
/// `MICROSHOP_*` or `MONGODB_*` variable inherited (the test script's
/// MongoDB pass sets `MONGODB_URI`).
fn serve_inventory(name: &str, data_dir: &Path, addr: SocketAddr) -> Spawn {
    serve(Svc::Inventory, addr, data_dir)
        .name(name)
        .arg("--insecure-no-auth")
}

/// Starts `serve inventory` with the connection string in `uri_file` and
/// waits until the overall health entry ("", which follows MongoDB) is
/// SERVING.
async fn start_on_mongodb(
    dir: &Path,
    name: &str,
    uri_file: &Path,
    database: &str,
) -> (Process, Channel) {
    let data = dir.join(name);
    let (served, addr) = start_on_free_port(
        |addr| {
            serve_inventory(name, &data, addr)
                .env("MONGODB_URI_FILE", uri_file)
                .env("MICROSHOP_MONGODB_DATABASE", database)
        },
        "",
        WITHIN,
    )
    .await
    .unwrap_or_else(|why| panic!("serve did not come up on MongoDB: {why}"));
    (served, lazy_channel(addr))
}

#[tokio::test]
async fn serve_takes_the_mongodb_uri_from_a_file() {
    let test = "serve_takes_the_mongodb_uri_from_a_file";
    let Some(uri) = microshop_runtime::testing::mongodb_uri_for_tests(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    // As Kubernetes mounts it: one line with a trailing newline.
    let uri_file = dir.path().join("uri");
    std::fs::write(&uri_file, format!("{uri}\n")).expect("write the uri file");
    let database = microshop_runtime::testing::database_for(dir.path());

    let (first, channel) = start_on_mongodb(dir.path(), "first", &uri_file, &database).await;
    let mut inventory = InventoryServiceClient::new(channel);
    let put = inventory
        .put_product(PutProductRequest {
            sku: "FILE-SKU".into(),
            name: "Mounted secret".into(),
            unit_price: 150_000,
            stock: 7,
        })
        .await
        .expect("PutProduct")
        .into_inner();
    assert_eq!((put.sku.as_str(), put.available), ("FILE-SKU", 7));
    drop(inventory);
    drop(first);

    // A second server with a fresh data directory finds the product: it
    // was written to MongoDB, not to the embedded store.
    let (_second, channel) = start_on_mongodb(dir.path(), "second", &uri_file, &database).await;
    let got = InventoryServiceClient::new(channel)
        .get_product(GetProductRequest {
            sku: "FILE-SKU".into(),
        })
        .await
        .expect("GetProduct on the second server")
        .into_inner();
    assert_eq!((got.name.as_str(), got.stock), ("Mounted secret", 7));
}

/// Runs `serve` with `env` until it exits (bounded); its status and stderr.
fn exit_of(dir: &Path, env: &[(&str, &Path)], inline_uri: Option<&str>) -> (ExitStatus, String) {
    let mut spawn = serve_inventory("refused", &dir.join("data"), free_addr());
    for (key, value) in env {
        spawn = spawn.env(key, value);
    }
    if let Some(uri) = inline_uri {
        spawn = spawn.env("MONGODB_URI", uri);
    }
    let exited = spawn
        .spawn()
        .exit_within(WITHIN)
        .unwrap_or_else(|stderr| panic!("serve kept running with a bad secret setting: {stderr}"));
    (exited.status, exited.stderr)
}

#[test]
fn both_forms_or_an_unusable_file_stop_the_start_naming_the_settings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let uri = format!("mongodb://microshop:{PASSWORD}@127.0.0.1:1/?replicaSet=rs0");
    let uri_file = dir.path().join("uri");
    std::fs::write(&uri_file, format!("{uri}\n")).expect("write the uri file");

    let (status, stderr) = exit_of(dir.path(), &[("MONGODB_URI_FILE", &uri_file)], Some(&uri));
    assert!(!status.success(), "serve started with both: {stderr}");
    assert!(
        stderr.contains("MONGODB_URI (--mongodb-uri)")
            && stderr.contains("MONGODB_URI_FILE (--mongodb-uri-file)")
            && stderr.contains("set only one"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(PASSWORD),
        "the secret was printed: {stderr}"
    );

    let missing = dir.path().join("no-such-file");
    let (status, stderr) = exit_of(dir.path(), &[("MONGODB_URI_FILE", &missing)], None);
    assert!(!status.success(), "serve started without its uri file");
    assert!(
        stderr.contains("cannot read MONGODB_URI_FILE") && stderr.contains("no-such-file"),
        "{stderr}"
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write the empty file");
    let (status, stderr) = exit_of(dir.path(), &[("MONGODB_URI_FILE", &empty)], None);
    assert!(!status.success(), "serve started with an empty uri file");
    assert!(
        stderr.contains("MONGODB_URI_FILE") && stderr.contains("is empty"),
        "{stderr}"
    );
}
