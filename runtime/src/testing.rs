//! A served service for integration tests (feature `testing`): binds a
//! fresh loopback port, runs a service's `run` with a oneshot shutdown, and
//! waits until its health answers SERVING, by bounded polling only.
//!
//! Every participant's tests start servers the same way, so the way lives
//! here once.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::ServeError;

/// The shutdown future handed to a service's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts: a server that stops before serving is started again (once its
/// reason is printed), at most this many times.
const START_ATTEMPTS: u32 = 20;
/// Readiness polls per start.
const READY_ATTEMPTS: u32 = 200;

/// A running server and what stops it.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A connected channel to it.
    pub channel: Channel,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Serves with `run(listener, shutdown)` on a fresh loopback port and
    /// returns once the server reports SERVING.
    pub async fn start<F, Fut>(mut run: F) -> Self
    where
        F: FnMut(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = Result<(), ServeError>> + Send + 'static,
    {
        for _ in 0..START_ATTEMPTS {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            let addr = listener.local_addr().expect("local address");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(run(
                listener,
                Box::pin(async {
                    let _ = stopped.await;
                }),
            ));
            if let Some(channel) = ready(addr, &task).await {
                return Self {
                    addr,
                    channel,
                    stop,
                    task,
                };
            }
            let result = task.await.expect("server task panicked");
            eprintln!("server at {addr} did not start: {result:?}");
        }
        panic!("the server did not start after {START_ATTEMPTS} attempts");
    }

    /// Stops the server gracefully and waits for it to finish.
    pub async fn stop(self) {
        drop(self.channel);
        self.stop.send(()).expect("server still running");
        self.task
            .await
            .expect("server task panicked")
            .expect("server stopped cleanly");
    }
}

/// Polls health until SERVING; `None` if the server task ends first.
async fn ready(addr: SocketAddr, task: &JoinHandle<Result<(), ServeError>>) -> Option<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("a valid url");
    for attempt in 0..READY_ATTEMPTS {
        if task.is_finished() {
            return None;
        }
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                return Some(channel);
            }
        }
        // Back off between failed polls only.
        tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1).min(20))).await;
    }
    panic!("{addr} never reported SERVING");
}

/// Server settings for a test whose data lives under `data_dir`: the
/// embedded store there, or, when the test run has `MONGODB_URI` set (the
/// test script's MongoDB pass), MongoDB with a database named after
/// `data_dir`, so each test has its own and a restarted server finds its
/// data again.
pub fn server_args(data_dir: &std::path::Path) -> crate::ServerArgs {
    let mut args = crate::ServerArgs::with_data_dir(data_dir);
    if let Ok(uri) = std::env::var("MONGODB_URI") {
        args.mongodb_uri = Some(uri);
        args.mongodb_database = Some(database_for(data_dir));
    }
    args
}

/// A database name unique to `data_dir` (MongoDB caps names at 63 bytes).
pub fn database_for(data_dir: &std::path::Path) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(data_dir);
    format!("t_{hash:016x}")
}

/// The MongoDB server of the MongoDB-only tests (conformance, takeover):
/// `MICROSHOP_TEST_MONGODB_URI`, which the test script sets once it has
/// started SecantusDB. Without it such a test is skipped with a note, but
/// never in CI (`CI` set, see [`is_ci`]): there a missing server fails the
/// run.
pub fn mongodb_uri_for_tests(test: &str) -> Option<String> {
    required_env("MICROSHOP_TEST_MONGODB_URI", test)
}

/// The `secantusd-py` command for tests that stop and restart a server of
/// their own (`MICROSHOP_TEST_SECANTUSD`), under the same rule.
pub fn secantusd_for_tests(test: &str) -> Option<String> {
    required_env("MICROSHOP_TEST_SECANTUSD", test)
}

/// Whether `CI` (its value, if set) says this is a CI run: any non-empty
/// value but `false` and `0` (CI systems set `true`, `1`, `yes`, ...).
pub fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        !v.is_empty() && !v.eq_ignore_ascii_case("false") && v != "0"
    })
}

fn required_env(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if is_ci(std::env::var("CI").ok().as_deref()) => {
            panic!("{test}: {var} is not set and CI is set: MongoDB tests must not be skipped")
        }
        _ => {
            eprintln!(
                "SKIPPED {test}: {var} is not set (scripts/test.sh starts SecantusDB and sets it)"
            );
            None
        }
    }
}

/// A fresh database on the MongoDB server of the MongoDB-only tests, or
/// `None` as [`mongodb_uri_for_tests`] says.
pub async fn mongodb_for_tests(test: &str) -> Option<microshop_storage::mongo::MongoDb> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let uri = mongodb_uri_for_tests(test)?;
    let unique = std::env::temp_dir().join(format!(
        "{test}-{}-{}-{:?}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
    ));
    let db = microshop_storage::mongo::MongoDb::connect(&uri, &database_for(&unique))
        .await
        .unwrap_or_else(|e| panic!("{test}: cannot connect to MongoDB at {uri}: {e}"));
    Some(db)
}

#[cfg(test)]
mod tests {
    use super::is_ci;

    #[test]
    fn any_ci_value_but_false_or_0_is_ci() {
        for on in ["true", "TRUE", "1", "yes", "github-actions"] {
            assert!(is_ci(Some(on)), "{on}");
        }
        for off in [
            None,
            Some(""),
            Some("  "),
            Some("false"),
            Some("False"),
            Some("0"),
        ] {
            assert!(!is_ci(off), "{off:?}");
        }
    }
}
