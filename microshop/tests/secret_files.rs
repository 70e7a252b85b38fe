//! Secrets as files: `microshop serve` takes its MongoDB connection string
//! from the file `MONGODB_URI_FILE` names (how Kubernetes mounts a Secret),
//! and refuses to start when it is given both that and `MONGODB_URI`, or a
//! file it cannot use, naming the settings and never the secret.
//!
//! The MongoDB test runs against the server of `MICROSHOP_TEST_MONGODB_URI`
//! (SecantusDB, started by `scripts/test.sh`); it is skipped without one,
//! except under `CI=true`. Every wait is bounded polling.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use microshop_proto::inventory::v1::{
    GetProductRequest, PutProductRequest, inventory_service_client::InventoryServiceClient,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_microshop");
/// How long `serve` may take to answer SERVING (it creates its indexes
/// first) or to exit on a bad setting.
const WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);
/// In every secret this file writes: it must never show up in an error.
const PASSWORD: &str = "hunter2-never-printed";

/// `microshop serve inventory` with no `MICROSHOP_*` or `MONGODB_*`
/// variable inherited (the test script's MongoDB pass sets `MONGODB_URI`),
/// its stderr in `log`.
fn serve_inventory(listen: SocketAddr, data_dir: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "inventory", "--insecure-no-auth", "--listen"])
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the log file"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("MICROSHOP_") || key.starts_with("MONGODB_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("bound address")
}

/// A child process killed when dropped, printing its log on a failure.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {}:\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Polls health until the overall entry ("", which follows MongoDB) is
/// SERVING; panics if the process exits or time runs out.
async fn wait_serving(served: &mut Served, addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid url")
        .connect_timeout(Duration::from_millis(250))
        .timeout(Duration::from_secs(2));
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(status) = served.child.try_wait().expect("poll the child") {
            panic!("serve exited before serving: {status}");
        }
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                return channel;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never reported SERVING");
        tokio::time::sleep(POLL).await;
    }
}

/// Starts `serve inventory` with the connection string in `uri_file`.
async fn start_on_mongodb(
    dir: &Path,
    name: &str,
    uri_file: &Path,
    database: &str,
) -> (Served, Channel) {
    let addr = free_addr();
    let log = dir.join(format!("{name}.log"));
    let data_dir = dir.join(name);
    let child = serve_inventory(addr, &data_dir, &log)
        .env("MONGODB_URI_FILE", uri_file)
        .env("MICROSHOP_MONGODB_DATABASE", database)
        .spawn()
        .expect("start microshop serve");
    let mut served = Served { child, log };
    let channel = wait_serving(&mut served, addr).await;
    (served, channel)
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
    let log = dir.join("refused.log");
    let mut cmd = serve_inventory(free_addr(), &dir.join("data"), &log);
    for (key, value) in env {
        cmd.env(key, value);
    }
    if let Some(uri) = inline_uri {
        cmd.env("MONGODB_URI", uri);
    }
    let mut served = Served {
        child: cmd.spawn().expect("start microshop serve"),
        log: log.clone(),
    };
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = served.child.try_wait().expect("poll the child") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running with a bad secret setting"
        );
        std::thread::sleep(POLL);
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
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
