//! The test's own MongoDB: a SecantusDB server (`MICROSHOP_TEST_SECANTUSD`)
//! on a port and data directory of its own, so a test can stop it the way
//! an operator does and start it again where the services expect it.
//! Tests that only need a MongoDB share the script's server
//! (`MICROSHOP_TEST_MONGODB_URI`) instead: this one is for outages.
//!
//! The fault suite runs it on a host of its network ([`Database::on`]):
//! in that host's namespace, listening on its address.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use tempfile::TempDir;

use super::{
    netns::Host,
    process::{Process, Spawn, free_addr},
};

/// How long the server may take to listen after its start.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);
/// How long a SIGTERMed server may take to exit before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A SecantusDB server; dropping it SIGKILLs it.
pub struct Database {
    command: String,
    ip: IpAddr,
    port: u16,
    /// `ip netns exec NS` on a host of the fault suite's network.
    prefix: Vec<String>,
    dir: TempDir,
    process: Option<Process>,
}

impl Database {
    /// Starts `command` (the `secantusd-py` path) on a free loopback port
    /// and waits until it accepts connections.
    pub fn start(command: String) -> Self {
        let mut db = Self {
            command,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: free_addr().port(),
            prefix: Vec::new(),
            dir: tempfile::tempdir().expect("temporary directory"),
            process: None,
        };
        db.listen(true);
        db
    }

    /// A server for `host` of a fault-suite network, on `port` of its
    /// address, not started yet ([`Database::up`] starts it): the
    /// services may be started against it first.
    pub fn on(command: String, host: &Host, port: u16) -> Self {
        Self {
            command,
            ip: IpAddr::V4(host.ip),
            port,
            prefix: host.prefix(),
            dir: tempfile::tempdir().expect("temporary directory"),
            process: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection string of the services.
    pub fn uri(&self) -> String {
        format!("mongodb://{}:{}/?directConnection=true", self.ip, self.port)
    }

    fn spawn(&self) -> Process {
        Spawn::program("secantusd", &self.command)
            .prefix(&self.prefix)
            .args(["--host".to_owned(), self.ip.to_string()])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.path())
            .args(["--log-level", "WARNING"])
            .spawn()
    }

    /// Starts the server (again) and waits until it accepts connections.
    /// Its port was free while it was down, so another test's connection
    /// may hold it for a moment: a server that exits before listening (it
    /// could not bind) is started again on the same port, within the same
    /// 30 s.
    pub fn up(&mut self) {
        self.listen(false);
    }

    /// [`Database::up`]; on its first start (`fresh`: nobody was told its
    /// port yet) a server that could not bind moves to another free port,
    /// since another test's server may hold that one for good.
    fn listen(&mut self, fresh: bool) {
        // Kept in `self` at once, so a failed wait still kills it on drop.
        self.process = Some(self.spawn());
        let deadline = std::time::Instant::now() + LISTEN_WITHIN;
        let addr = |db: &Self| std::net::SocketAddr::new(db.ip, db.port);
        while std::net::TcpStream::connect_timeout(&addr(self), Duration::from_millis(500)).is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the database did not listen within {LISTEN_WITHIN:?}"
            );
            let exited = self.process.as_mut().is_some_and(|p| p.exited().is_some());
            if exited {
                eprintln!(
                    "the database exited before listening on {}; again",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(250));
                if fresh {
                    self.port = free_addr().port();
                }
                self.process = Some(self.spawn());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the way an operator does (SIGTERM, SIGKILL after
    /// 20 s) and reaps it.
    pub fn down(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(STOP_WITHIN);
        }
    }

    /// [`Database::down`], then [`Database::up`]: same port, same data.
    pub fn restart(&mut self) {
        self.down();
        self.up();
    }
}
